"""katran-cli: the command line of Katran's Go client (katranc), in Python.

Same flags, same dispatch order, same output: ``fmt.Printf`` lines go to
stdout, ``log.Printf`` lines to stderr with Go's ``YYYY/MM/DD HH:MM:SS``
prefix, and "exiting" is printed last.  Differences, all additive:

* a refused Bool RPC (status CANCELLED, as Katran's server answers) is fatal
  as in the Go client: ``Error: rpc error: code = Canceled desc = <reason>``
  on stderr, exit status 1 (our server puts the reason in the details);
  failures the Go client is silent about get a reason line on stderr and
  exit status 1 (fatal errors: 1, bad flags: 2); stats loops sleep before
  retrying instead of spinning, and stop after ``-count N`` rounds;
* ``-vf``/``-rf`` take every flag name of katran.models (comma separated);
* extra commands for lb.katran.ext.KatranExtService (see ``-help``): per-real,
  XDP, per-CPU and feature counters (``-s -quic|-tpr|-stable_rt|-decap|...``),
  source routing (``-src_route``), inline decap dsts (``-decap_dst``), down
  reals (``-down_real``), hash functions, the real of a flow;
* TLS (``-tls_ca``, ``-tls_cert``, ``-tls_key``) and a call ``-timeout``;
* one command per call, checked before anything is sent (``usage_problem``): no
  command, a stray argument, two commands, a stats view without ``-s``, ``-t``
  with ``-u``, ``-r`` for a command without reals: exit status 2 and a short
  usage; an unknown flag gets "did you mean -xyz?" (difflib);
* address errors say what to type (a missing port, ``[v6]:port``), never Go's
  ``strconv`` text;
* several reals in one ``modifyRealsForVip`` (``-r A -r B``, ``-r A,B``,
  ``-reals_file F`` of ``<addr> [weight]`` lines);
* ``-json`` on every listing and stats command: stdout holds only JSON documents
  (stable keys, README "katran-cli for scripts and people"), one per stats round
  with the absolute counters; ``-count`` defaults to 1;
* ``-l`` shows each checked real's health (`` health: up|down (reason)`` after its
  flags) when the server runs health checks (ext RPC getHealthCheckStates);
  without checks, or against a server without the RPC, Katran's lines as they are;
* ``-version``/``--version``, ``-completion bash|zsh`` (a generated script).

The transport is a ``katran_frontend.client.KatranClient`` chosen by name from
``TRANSPORTS`` (gRPC unless ``-thrift``/``-thrift_server``) and imported only
then, so the CLI starts without numpy, the native module or ``katran.lb``;
``register_transport`` adds one, ``client_factory`` passed to ``main`` overrides
the choice.
"""

from __future__ import annotations

import importlib
import re
import sys
import time
from typing import Callable, Optional

from katran.errors import KatranError
from katran.models import Flow, HashFunction, ModifyAction, QuicReal, Real, RealFlag, VipFlag, VipKey, format_address

from . import GRPC_DEFAULT_SERVER as DEFAULT_SERVER
from .client import KatranClient, KatranClientError, OperationFailed, RealHealth, RpcFailed
from .goflags import FlagError, FlagSet, HelpRequested, VersionRequested

PROG = "katran-cli"

ClientFactory = Callable[[object], KatranClient]

# transport name -> ("module:function" making a KatranClient from the parsed flags, the extra it needs)
TRANSPORTS: dict[str, tuple[str, str]] = {
    "grpc": ("katran_grpc.client:client_from_flags", "grpc"),
    "thrift": ("katran_thrift.client:client_from_flags", "thrift"),
}


def register_transport(name: str, factory: str, extra: str = "") -> None:
    """Make ``factory`` ("module:function", imported when chosen) the transport ``name``."""
    TRANSPORTS[name] = (factory, extra)


def transport_factory(name: str) -> ClientFactory:
    """Import the transport ``name`` (KatranError naming the extra when it is not installed)."""
    try:
        target, extra = TRANSPORTS[name]
    except KeyError:
        raise KatranError(f"unknown transport {name!r} (known: {', '.join(sorted(TRANSPORTS))})") from None
    module, _, func = target.partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except ImportError as exc:
        hint = f" (pip install katran[{extra}])" if extra else ""
        flag = "-thrift" if name == "thrift" else f"the {name} transport"
        raise KatranError(f"{flag} needs the {extra or name} extra{hint}: {exc}") from None
IPPROTO_TCP = 6
IPPROTO_UDP = 17
_MASK64 = (1 << 64) - 1

# Go's codes.Code.String() for each grpc.StatusCode name
_GO_CODES = {
    "OK": "OK", "CANCELLED": "Canceled", "UNKNOWN": "Unknown", "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded", "NOT_FOUND": "NotFound", "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied", "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition", "ABORTED": "Aborted", "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented", "INTERNAL": "Internal", "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss", "UNAUTHENTICATED": "Unauthenticated",
}


class Fatal(Exception):
    """log.Fatalf: message already logged, exit status 1."""


EXAMPLES = """\
Examples:
  katran-cli -A -t 10.0.0.1:80                        add a TCP VIP (-u: UDP; IPv6: -t [fc00::1]:80)
  katran-cli -a -t 10.0.0.1:80 -r 10.1.1.1 -r 10.1.1.2 -w 2
                                                      add reals in one call (or -r A,B, or -reals_file FILE)
  katran-cli -d -t 10.0.0.1:80 -r 10.1.1.1            delete a real
  katran-cli -l                                       list VIPs, reals (and their health when checks run)
  katran-cli -s -lru -count 3                         LRU stats, 3 rounds
  katran-cli -l -json | jq .                          any listing or stats command as JSON
  katran-cli -server 127.0.0.1:50051 -token_file F -l
                                                      a TCP server
"""

SHORT_USAGE = f"""\
usage: {PROG} [-server ADDR] COMMAND [OPTIONS]   (one command per call)
{EXAMPLES}Run '{PROG} -h' for every flag."""

# the commands, in katranc's dispatch order, then ours; each maps to the flag a user types
_COMMANDS = ("change_mac", "list_mac", "A", "l", "D", "E", "a", "e", "d", "quic_mapping", "list_qm", "C", "new_hc",
             "del_hc", "list_hc", "s", "rf", "real_info", "hash", "show_hash", "flow", "src_route", "del_src_route",
             "clear_src_routes", "list_src_routes", "decap_dst", "list_decap_dst", "down_real", "del_down_real",
             "clear_down_reals", "list_down_reals", "drain", "undrain", "capture", "dump", "apply",
             "list_lru", "search_lru", "delete_lru", "purge_lru")
# views of -s (at most one)
_STATS_VIEWS = ("sum", "lru", "icmp", "reals", "xdp", "cores", "hc_stats", "quic", "tpr", "stable_rt", "decap",
                "src_route", "flow_migration", "global_lru")
_NEEDS_VIP = {"A", "E", "D", "a", "e", "d", "hash", "show_hash", "flow", "down_real", "del_down_real",
              "search_lru", "delete_lru",
              "clear_down_reals", "list_down_reals"}
_TAKES_REALS = {"a", "e", "d", "rf", "real_info", "src_route", "down_real", "del_down_real", "s", "capture",
                "list_lru", "purge_lru"}
_ONE_REAL = {"rf", "real_info", "src_route", "down_real", "del_down_real", "capture", "list_lru", "purge_lru"}
# the commands -json applies to: listings and stats
_JSON_COMMANDS = {"list_mac", "l", "list_qm", "list_hc", "s", "real_info", "show_hash", "flow", "list_src_routes",
                  "list_decap_dst", "list_down_reals", "list_lru", "search_lru", "delete_lru", "purge_lru"}


def commands_given(ns) -> list[str]:
    """The commands the flags ask for (a valid call has exactly one)."""
    given = []
    for name in _COMMANDS:
        if name == "quic_mapping":
            on = bool(ns.quic_mapping) or ns.del_qm
        elif name == "decap_dst":
            on = bool(ns.decap_dst) or ns.del_decap_dst
        elif name == "rf":  # -rf with -r and no -a/-e/-d: modify the real's flags
            on = bool(ns.rf) and not (ns.a or ns.e or ns.d)
        elif name == "src_route":  # with -s it is a stats view
            on = ns.src_route and not ns.s
        else:
            on = bool(getattr(ns, name))
        if on:
            given.append(name)
    return given


def _flag(name: str) -> str:
    return {"quic_mapping": "-quic_mapping/-del_qm", "decap_dst": "-decap_dst/-del_decap_dst"}.get(name, f"-{name}")


def usage_problem(ns) -> Optional[str]:
    """What makes the command line unusable (exit 2), or None."""
    if ns.args:
        arg = ns.args[0]
        hint = f", e.g. -t {arg}" if re.fullmatch(r"\[?[0-9A-Fa-f.:]+\]?:\d+", arg) else ""
        return (f"unexpected argument {_quote(arg)}: every value belongs to a flag (-flag value{hint}); "
                f"the flags after it were not read")
    if not ns.s:
        for view in _STATS_VIEWS:
            if view != "src_route" and getattr(ns, view):
                return f"-{view} is a view of the stats: use it with -s (-s -{view})"
    commands = commands_given(ns)
    if not commands:
        return "no command given"
    if len(commands) > 1:
        return f"conflicting commands {' and '.join(_flag(c) for c in commands)}: one command per call"
    (command,) = commands
    if ns.s:
        views = [v for v in _STATS_VIEWS if getattr(ns, v)]
        if len(views) > 1:
            return f"conflicting stats views {' and '.join('-' + v for v in views)}: one per call"
    if ns.t and ns.u:
        return "-t and -u both given: a VIP is either TCP (-t) or UDP (-u)"
    if command in _NEEDS_VIP and not (ns.t or ns.u):
        return f"-{command} needs the VIP: -t <addr>:<port> (TCP) or -u <addr>:<port> (UDP)"
    if (ns.r or ns.reals_file) and command not in _TAKES_REALS:
        used = "-r" if ns.r else "-reals_file"
        return f"{used} is not used by {_flag(command)}" + (" (to add reals: -a -t VIP -r REAL)" if command in ("A", "E") else "")
    if command in _ONE_REAL and (ns.reals_file or sum(len(v.split(",")) for v in ns.r) > 1):
        return f"-{command} takes one real (-r <addr>)"
    if command == "s" and (ns.r or ns.reals_file) and not ns.reals:
        return f"{'-r' if ns.r else '-reals_file'} goes with -s -reals (per-real stats)"
    if ns.json and command not in _JSON_COMMANDS:
        return f"-json is for the listing and stats commands (-l, -list_*, -s, ...), not {_flag(command)}"
    return None


def _is_v6(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _quote(text: str, limit: int = 60) -> str:
    """A user's value, ASCII-safe and truncated, in double quotes."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return '"' + shown.encode("ascii", "backslashreplace").decode("ascii") + '"'


def suggest_flag(fs: FlagSet, message: str) -> str:
    """ " (did you mean -xyz?)" for an unknown flag close to a known one."""
    m = re.match(r"flag provided but not defined: -(\S+)", message)
    if m is None:
        return ""
    import difflib

    name = m.group(1).lstrip("-").split("=", 1)[0]
    close = difflib.get_close_matches(name.replace("-", "_"), fs.names(), n=1, cutoff=0.6)
    return f" (did you mean -{close[0]}?)" if close else ""


def completion_script(fs: FlagSet, shell: str) -> str:
    """A completion script for ``shell`` (bash; zsh through bashcompinit) from the flag set."""
    if shell not in ("bash", "zsh"):
        raise KatranError(f"-completion={_quote(shell)}: expected bash or zsh")
    names = fs.names()
    words = " ".join(f"-{n}" for n in sorted(names + ["h", "version"]))
    valued = [n for n in names if fs.kind(n) != "bool"]
    files = ["reals_file", "token_file", "tls_ca", "tls_cert", "tls_key"]
    choices = {"vf": " ".join(f.name for f in VipFlag), "rf": "LOCAL_REAL", "hash": "maglev maglev_v2",
               "thrift_transport": "header framed buffered", "thrift_protocol": "compact binary",
               "completion": "bash zsh"}
    lines = [f"# {PROG} completion ({shell}): source <({PROG} -completion {shell})"]
    if shell == "zsh":
        lines.append("autoload -U +X bashcompinit && bashcompinit")
    lines += ["_katran_cli() {",
              '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
              '    case "${prev#-}" in']
    lines.append(f"        {'|'.join(['-' + f for f in files] + files)})")
    lines.append('            COMPREPLY=($(compgen -f -- "$cur")); return;;')
    for name, values in choices.items():
        lines.append(f"        {name}|-{name})")
        lines.append(f'            COMPREPLY=($(compgen -W "{values}" -- "$cur")); return;;')
    rest = [n for n in valued if n not in files and n not in choices]
    lines.append(f"        {'|'.join(rest + ['-' + n for n in rest])})")
    lines.append("            COMPREPLY=(); return;;")
    lines += ["    esac",
              f'    COMPREPLY=($(compgen -W "{words}" -- "$cur"))',
              "}",
              f"complete -F _katran_cli {PROG}", ""]
    return "\n".join(lines)


def build_flags() -> FlagSet:
    """katranc's flags (names, defaults) plus our extensions."""
    fs = FlagSet(PROG, "katran command line client (flags of Katran's Go client katranc)")
    fs.bool("A", False, "Add new virtual service")
    fs.bool("E", False, "Edit existing virtual service")
    fs.bool("D", False, "Delete existing virtual service")
    fs.bool("a", False, "Add real server")
    fs.bool("e", False, "Edit real server")
    fs.bool("d", False, "Delete real server")
    fs.string("t", "", "Tcp service address. must be in format: <addr>:<port>")
    fs.string("u", "", "Udp service addr. must be in format: <addr>:<port>")
    fs.strings("r", "Address of the real server (repeat -r or give A,B,... for several, one call)")
    fs.string("reals_file", "", "file of reals for -a/-e/-d: one '<addr> [weight]' per line, # comments")
    fs.int("w", 1, "Weight (capacity) of real server")
    fs.bool("s", False, "Show stats/counters")
    fs.bool("sum", False, "Show summary stats")
    fs.bool("lru", False, "Show LRU related stats")
    fs.bool("icmp", False, "Show ICMP 'packet too big' related stats")
    fs.bool("l", False, "List configured services")
    fs.string("vf", "", "change vip flags. Possible values: " + ", ".join(f.name for f in VipFlag))
    fs.string("rf", "", "change real flags. Possible values: LOCAL_REAL (with -r alone: modify the real)")
    fs.bool("unset", False, "Unset specified flags")
    fs.string("new_hc", "", "Address of new backend to healtcheck")
    fs.uint("somark", 0, "Socket mark to specified backend")
    fs.bool("del_hc", False, "Delete backend w/ specified somark")
    fs.bool("list_hc", False, "List configured healthchecks")
    fs.bool("list_mac", False, "List configured mac address of default router")
    fs.string("change_mac", "", "Change configured mac address of default router")
    fs.bool("C", False, "Clear all configs")
    fs.string("quic_mapping", "", "mapping of real to connectionId. must be in <addr>=<id> format")
    fs.bool("list_qm", False, "List current quic's mappings")
    fs.bool("del_qm", False, "Delete instead of adding specified quic mapping")
    fs.string("server", DEFAULT_SERVER, "Katran server listen address (host:port or unix:PATH)")
    # extensions (lb.katran.ext.KatranExtService and client options)
    fs.bool("reals", False, "with -s: per-real stats (reals of -t/-u, or -r, or of every VIP)")
    fs.bool("xdp", False, "with -s: XDP verdict totals")
    fs.bool("cores", False, "with -s: packets per CPU")
    fs.bool("hc_stats", False, "with -s: healthcheck program counters")
    fs.bool("real_info", False, "show index and flags of the real -r")
    fs.string("hash", "", "set the hash function of the VIP -t/-u: maglev or maglev_v2")
    fs.bool("show_hash", False, "show the hash function of the VIP -t/-u")
    fs.string("flow", "", "show the real a flow from <addr>:<port> to the VIP -t/-u goes to "
              "(several: <addr>:<port>,<addr>:<port>,... one line each)")
    fs.int("count", 0, "stats: stop after this many rounds (0: until interrupted)", aliases=("iterations",))
    # feature parity: source routing, inline decap, down reals, feature counters
    fs.bool("src_route", False, "add a source routing rule: packets from the -src prefixes to SRC_ROUTING VIPs "
            "go to the real -r\n(with -s: source routing counters)")
    fs.bool("del_src_route", False, "delete the source routing rules of the -src prefixes")
    fs.bool("clear_src_routes", False, "delete every source routing rule")
    fs.bool("list_src_routes", False, "list the source routing rules")
    fs.string("src", "", "source prefixes for -src_route / -del_src_route, comma separated (10.0.0.0/8,fc00::/64)")
    fs.string("decap_dst", "", "add an inline decap destination address (with -del_decap_dst: delete it)")
    fs.bool("del_decap_dst", False, "delete the inline decap destination -decap_dst")
    fs.bool("list_decap_dst", False, "list the inline decap destinations")
    fs.bool("down_real", False, "mark the real -r of the VIP -t/-u down (UDP flow migration)")
    fs.bool("del_down_real", False, "mark the real -r of the VIP -t/-u up again")
    fs.bool("clear_down_reals", False, "mark every down real of the VIP -t/-u up again")
    fs.bool("list_down_reals", False, "list the down reals of the VIP -t/-u")
    fs.bool("drain", False, "bgp: withdraw every VIP and wait for its traffic to leave (-drain_timeout ms)")
    fs.bool("undrain", False, "bgp: announce the VIPs again after -drain")
    fs.int("drain_timeout", 0, "with -drain: wait at most this many ms (0: the server's -drain_timeout)")
    # the flow table (connection-table entries, as Katran's listLru / searchLru / deleteLru / purgeVipLru)
    fs.bool("list_lru", False, "list connection-table entries (filters: -t/-u VIP, -r real, -src client prefix; "
            "-limit N)")
    fs.string("client", "", "with -search_lru / -delete_lru: the client <addr>:<port> ([v6]:port)")
    fs.bool("search_lru", False, "the entries of one flow: -t/-u VIP -client <addr>:<port>")
    fs.bool("delete_lru", False, "delete one flow's entries (every CPU's table): -t/-u VIP -client <addr>:<port>")
    fs.bool("purge_lru", False, "delete the entries matching -t/-u VIP, -r real, -src prefix (at least one)")
    fs.int("limit", 1000, "with -list_lru: at most this many entries (0: all)")
    # the declarative file (docs/config.md)
    fs.bool("dump", False, "print the live state as a declarative file (YAML), like ipvsadm-save")
    fs.string("apply", "", "apply a declarative FILE: the minimal difference, all or nothing; prints each change")
    fs.bool("dry_run", False, "with -apply: print the changes without making them")
    fs.bool("quic", False, "with -s: QUIC routing counters and QUIC ICMP counters")
    fs.bool("tpr", False, "with -s: TCP server id routing counters (with -t/-u: also the VIP's)")
    fs.bool("stable_rt", False, "with -s: UDP stable routing counters")
    fs.bool("decap", False, "with -s: decap counters (with -t/-u: also the VIP's)")
    fs.bool("flow_migration", False, "with -s: UDP flow migration counters")
    fs.bool("global_lru", False, "with -s: global LRU counters")
    # packet capture (katran-cli -capture [-vip V] [-r R] [-src CIDR] [-count N] [-snaplen B] -w FILE)
    fs.bool("capture", False, "record the packets the balancer balances (in, and out encapsulated) as pcap to -w "
            "FILE ('-': stdout, e.g. | tcpdump -r -);\nfilters: -vip (or -t/-u), -r real, -src prefix; "
            "-count packets (0: until interrupted), -snaplen bytes")
    fs.string("vip", "", "with -capture: the VIP <addr>:<port>[/tcp|/udp] (default tcp)")
    fs.int("snaplen", 0, "with -capture: bytes kept of each packet (0: all, up to 4096)")
    fs.string("write", "", "with -capture: the pcap file ('-': stdout); -w FILE after -capture is the same")
    fs.float("interval", 1.0, "stats: seconds between rounds", hidden=True)
    fs.float("timeout", 30.0, "deadline of each call, seconds")
    fs.string("tls_ca", "", "PEM CA bundle to verify the server (enables TLS)")
    fs.string("tls_cert", "", "PEM client certificate (mTLS)")
    fs.string("tls_key", "", "PEM key of -tls_cert")
    fs.string("tls_server_name", "", "expected server name in its certificate")
    fs.string("token_file", "", "file holding the bearer token of a TCP server started with -token_file")
    fs.bool("thrift", False, "talk to katran-server-thrift instead of the gRPC server")
    fs.string("thrift_server", "", "thrift server address, host:port or unix:PATH "
              "(implies -thrift; default unix:/run/katran/katran-thrift.sock)")
    fs.string("thrift_transport", "header", "thrift transport: header, framed or buffered")
    fs.string("thrift_protocol", "compact", "thrift protocol: compact or binary")
    fs.bool("json", False, "print listings and stats as JSON (one document per stats round; -count defaults to 1)")
    fs.string("completion", "", "print a shell completion script and exit (bash): "
              "source <(katran-cli -completion bash)")
    fs.examples = EXAMPLES
    return fs


def transport_name(ns) -> str:
    """gRPC unless -thrift / -thrift_server asks for the thrift server."""
    return "thrift" if ns.thrift or ns.thrift_server else "grpc"


def make_client(ns) -> KatranClient:
    """The client of the transport the flags choose."""
    return transport_factory(transport_name(ns))(ns)


def go_error(exc: KatranClientError) -> str:
    """How Go's grpc prints a failed call."""
    return f"rpc error: code = {_GO_CODES.get(exc.code, exc.code)} desc = {exc.message}"


def _diff(new: int, old: int) -> int:
    """uint64 subtraction, as the Go client computes rates."""
    return (new - old) & _MASK64


def _vip_flags_text(flags: int) -> str:
    return "".join(f" {f.name} " for f in VipFlag if flags & f)


def _real_flags_text(flags: int) -> str:
    return " LOCAL_REAL " if flags & RealFlag.LOCAL_REAL else ""


def _flag_names(flags: int, table) -> list[str]:
    return [f.name for f in table if flags & f]


def _proto_name(proto: int) -> str:
    return {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}.get(proto, str(proto))


def _vip_json(vip: VipKey) -> dict:
    return {"address": format_address(vip.address), "port": vip.port, "proto": _proto_name(vip.proto)}


def _stats_json(stats) -> dict:
    return {"packets": stats.v1, "bytes": stats.v2}


def _health_text(h: RealHealth) -> str:
    return f" health: {'up' if h.healthy else 'down'} ({h.reason})"


def _health_json(h: Optional[RealHealth]) -> Optional[dict]:
    if h is None:
        return None
    return {"state": "up" if h.healthy else "down", "reason": h.reason, "mode": h.mode, "somark": h.somark,
            "checks": h.checks, "successes": h.successes, "failures": h.failures, "transitions": h.transitions,
            "since": h.since, "applied": h.applied, "last_latency": h.last_latency}


class Cli:
    """One katran-cli run: the Go client's commands over a KatranClient."""

    def __init__(self, client: KatranClient, ns, out=None, err=None) -> None:
        self.kc = client
        self.ns = ns
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.failed = False

    # ------------------------------------------------------------ output
    def printf(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    @property
    def json(self) -> bool:
        return bool(getattr(self.ns, "json", False))

    def emit(self, doc) -> None:
        """One JSON document on one line (-json)."""
        import json

        self.printf(json.dumps(doc, separators=(", ", ": ")) + "\n")

    def log(self, text: str) -> None:
        """Go's log.Printf: timestamp prefix, stderr, newline added if missing."""
        stamp = time.strftime("%Y/%m/%d %H:%M:%S")
        self.err.write(f"{stamp} {text}" + ("" if text.endswith("\n") else "\n"))
        self.err.flush()

    def fatal(self, text: str) -> Fatal:
        self.log(text)
        return Fatal(text)

    def check(self, call: Callable, *args):
        """Go's checkError around an RPC: a failed call is fatal."""
        try:
            return call(*args)
        except KatranClientError as exc:
            raise self.fatal(f"Error: {go_error(exc)}") from None

    def update(self, call: Callable, *args) -> None:
        """A Bool RPC: a refusal is fatal, printed as the Go client prints Katran's CANCELLED."""
        try:
            call(*args)
        except OperationFailed as exc:
            raise self.fatal(f"Error: rpc error: code = {_GO_CODES['CANCELLED']} desc = {exc.message}") from None
        except RpcFailed as exc:
            raise self.fatal(f"Error: {go_error(exc)}") from None

    def model(self, build: Callable, *args):
        """Build a katran.models value; bad input is fatal with katran's message."""
        try:
            return build(*args)
        except KatranError as exc:
            raise self.fatal(f"Error: {exc}") from None

    # ------------------------------------------------------------ parsing
    def parse_vip(self, addr: str, proto: int, flag: str = "") -> VipKey:
        """``<v4>:<port>`` or ``[<v6>]:<port>``; a bad one is fatal with a message saying what to type."""
        flag = flag or ("-t" if proto == IPPROTO_TCP else "-u")
        shown = _quote(addr)
        if "[" in addr or "]" in addr:
            m = re.fullmatch(r"\[([^\]]*)\](?::(.*))?", addr)
            if m is None:
                raise self.fatal(f"{flag} {shown}: expected [<v6 address>]:<port>, e.g. [fc00::1]:80")
            host, port = m.group(1), m.group(2)
            if port is None:
                raise self.fatal(f"{flag} {shown}: missing port (expected [{host}]:<port>, e.g. [{host}]:80)")
        elif addr.count(":") > 1:
            host, _, port = addr.rpartition(":")
            example = f"[{host}]:{port}" if port.isdigit() and _is_v6(host) else f"[{addr}]:<port>"
            raise self.fatal(f"{flag} {shown}: an IPv6 address needs brackets: {example}")
        elif ":" not in addr:
            raise self.fatal(f"{flag} {shown}: missing port (expected <addr>:<port>, e.g. {addr or '10.0.0.1'}:80)")
        else:
            host, _, port = addr.partition(":")
        if not port.isdigit() or not port.isascii():
            raise self.fatal(f"{flag} {shown}: the port {_quote(port)} is not a number")
        return self.model(VipKey, host, int(port, 10), proto)

    def parse_flags(self, text: str, table) -> Optional[int]:
        value = 0
        for name in (n.strip() for n in text.split(",") if n.strip()):
            if name not in table.__members__:
                self.log(f"unrecognized flag: {text}")
                self.failed = True
                return None
            value |= table[name]
        return int(value)

    # ------------------------------------------------------------ katranc commands
    def change_mac(self, mac: str) -> None:
        self.update(self.kc.change_mac, mac)
        self.log("Mac address changed!")

    def get_mac(self) -> None:
        mac = self.check(self.kc.get_mac)
        if self.json:
            self.emit({"mac": mac})
            return
        self.log(f"Mac address is {mac}")

    def add_or_modify_service(self, addr: str, flags_text: str, proto: int, modify: bool, set_flags: bool) -> None:
        self.log(f"Adding service: {addr} {proto}")
        vip = self.parse_vip(addr, proto)
        flags = 0
        if flags_text:
            flags = self.parse_flags(flags_text, VipFlag)
            if flags is None:
                return
        if modify:
            self.update(self.kc.modify_vip, vip, flags, set_flags)
        else:
            self.update(self.kc.add_vip, vip, flags)
        self.log("Vip modified")

    def del_service(self, addr: str, proto: int) -> None:
        self.log(f"Deleting service: {addr} {proto}")
        vip = self.parse_vip(addr, proto)
        self.update(self.kc.del_vip, vip)
        self.log("Vip modified")

    def real_specs(self) -> list[tuple[str, int, str]]:
        """(address, weight, where) of every real of -r (repeated, or A,B,...) and -reals_file."""
        specs = []
        for value in self.ns.r:
            for part in value.split(","):
                if not part.strip():
                    raise self.fatal(f"-r {_quote(value)}: an empty address (expected -r A or -r A,B,...)")
                specs.append((part.strip(), self.ns.w, "-r"))
        if self.ns.reals_file:
            specs += self.reals_file(self.ns.reals_file)
        return specs

    def reals_file(self, path: str) -> list[tuple[str, int, str]]:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise self.fatal(f"-reals_file {_quote(path)}: cannot read: {reason}") from None
        specs = []
        for number, line in enumerate(lines, 1):
            words = line.split("#", 1)[0].replace(",", " ").split()
            if not words:
                continue
            where = f"{path}:{number}"
            if len(words) > 2 or (len(words) == 2 and not (words[1].isascii() and words[1].isdigit())):
                raise self.fatal(f"{where}: expected '<addr> [weight]', got {_quote(line.strip())}")
            specs.append((words[0], int(words[1]) if len(words) == 2 else self.ns.w, where))
        if not specs:
            raise self.fatal(f"-reals_file {_quote(path)}: no real in the file")
        return specs

    def update_server_for_vip(self, vip_addr: str, proto: int, weight_unused: int, real_flags: str,
                              delete: bool) -> None:
        vip = self.parse_vip(vip_addr, proto)
        flags = 0
        if real_flags:
            flags = self.parse_flags(real_flags, RealFlag)
            if flags is None:
                return
        specs = self.real_specs()
        if not specs:
            raise self.fatal("no real given: -r <addr> (repeat -r, or -r A,B, or -reals_file FILE)")
        reals, seen = [], {}
        for address, weight, where in specs:
            try:
                real = Real(address, weight, flags)
            except KatranError as exc:
                raise self.fatal(f"Error: {where}: {exc}") from None
            key = format_address(real.address)
            if key in seen:
                raise self.fatal(f"Error: {where}: real {key} given twice (first at {seen[key]})")
            seen[key] = where
            reals.append(real)
        action = ModifyAction.DEL if delete else ModifyAction.ADD
        self.update(self.kc.modify_reals_for_vip, action, reals, vip)  # one RPC for all of them
        self.log("Reals modified")

    def modify_quic_mappings(self, mapping: str, delete: bool) -> None:
        parts = mapping.split("=")
        if len(parts) != 2:
            raise self.fatal("quic mapping must be in <addr>=<id> format")
        if not (parts[1].isascii() and parts[1].isdigit()):
            raise self.fatal(f"-quic_mapping {_quote(mapping)}: the id {_quote(parts[1])} is not a number")
        qid = int(parts[1], 10)
        qreal = self.model(QuicReal, parts[0], qid)
        action = ModifyAction.DEL if delete else ModifyAction.ADD
        self.update(self.kc.modify_quic_reals_mapping, action, [qreal])
        self.log("Quic mapping modified")

    def list_vip_and_reals(self, vip: VipKey, health: Optional[dict] = None) -> Optional[dict]:
        """Katran's listing of one VIP; with health checks running, each real's health after its flags."""
        health = health or {}
        reals = self.check(self.kc.get_reals_for_vip, vip)
        if self.json:
            flags = self.check(self.kc.get_vip_flags, vip)
            doc = _vip_json(vip)
            doc["flags"] = _flag_names(flags, VipFlag)
            doc["reals"] = [{"address": format_address(r.address), "weight": r.weight,
                             "flags": _flag_names(r.flags, RealFlag),
                             "health": _health_json(health.get((vip, format_address(r.address))))} for r in reals]
            return doc
        proto = "tcp" if vip.proto == IPPROTO_TCP else "udp"
        self.printf(f"VIP: {format_address(vip.address):>20} Port: {vip.port:>6} Protocol: {proto}\n")
        flags = self.check(self.kc.get_vip_flags, vip)
        self.printf(f"Vip's flags: {_vip_flags_text(flags)}\n")
        for real in reals:
            h = health.get((vip, format_address(real.address)))
            self.printf(f"{' ->' + format_address(real.address):<20} weight: {real.weight} flags: "
                        f"{_real_flags_text(real.flags)}{_health_text(h) if h is not None else ''}\n")
        return None

    def health_states(self) -> Optional[dict]:
        """{(vip, real address): RealHealth} when the server runs health checks, else None
        (also for a server without the RPC: Katran's, or the thrift frontend)."""
        try:
            states = self.kc.get_health_check_states()
        except RpcFailed as exc:
            if exc.code == "UNIMPLEMENTED":
                return None
            raise self.fatal(f"Error: {go_error(exc)}") from None
        if states is None:
            return None
        return {(h.vip, format_address(Real(h.real).address)): h for h in states}

    def list(self) -> None:
        vips = self.check(self.kc.get_all_vips)
        self.log(f"vips len {len(vips)}")
        health = self.health_states()
        docs = [self.list_vip_and_reals(vip, health) for vip in vips]
        if self.json:
            self.emit({"vips": docs, "health_checks": health is not None})

    def clear_all(self) -> None:
        self.printf("Deleting Vips\n")
        for vip in self.check(self.kc.get_all_vips):
            try:
                self.kc.del_vip(vip)
            except KatranClientError as exc:
                self.failed = True
                self.printf(f"error while deleting vip: {format_address(vip.address)}\n")
                self.log(f"{exc.rpc} failed: {exc.code}: {exc.message}")
        self.printf("Deleting Healthchecks\n")
        for somark in self.check(self.kc.get_healthcheckers_dst):
            try:
                self.kc.del_healthchecker_dst(somark)
            except KatranClientError as exc:
                self.failed = True
                self.printf(f"error while deleting hc w/ somark: {somark}\n")
                self.log(f"{exc.rpc} failed: {exc.code}: {exc.message}")

    def list_qm(self) -> None:
        if self.json:
            qrs = self.check(self.kc.get_quic_reals_mapping)
            self.emit({"quic_reals": [{"address": format_address(q.address), "id": q.id} for q in qrs]})
            return
        self.printf("printing address to quic's connection id mapping\n")
        for qr in self.check(self.kc.get_quic_reals_mapping):
            self.printf(f"real: {format_address(qr.address):>20} = connection id: {qr.id:>6}\n")

    def add_hc(self, addr: str, somark: int) -> None:
        self.update(self.kc.add_healthchecker_dst, somark & 0xFFFFFFFF, addr)

    def del_hc(self, somark: int) -> None:
        self.update(self.kc.del_healthchecker_dst, somark & 0xFFFFFFFF)

    def list_hc(self) -> None:
        hcs = self.check(self.kc.get_healthcheckers_dst)
        if self.json:
            self.emit({"healthchecks": [{"somark": m, "address": hcs[m]} for m in sorted(hcs)]})
            return
        for somark in sorted(hcs):
            self.printf(f"somark: {somark:>10} addr: {hcs[somark]:>10}\n")

    # ------------------------------------------------------------ stats loops
    def loop(self, one_round: Callable[[], None]) -> None:
        """Run a stats round every -interval seconds; -count rounds if given (-json: 1 unless given)."""
        rounds = 0
        count = self.ns.count
        if self.json and not self.ns.is_set("count"):
            count = 1
        while True:
            one_round()
            rounds += 1
            if count and rounds >= count:
                return
            time.sleep(self.ns.interval)

    def retry_later(self, exc: KatranClientError) -> None:
        # the Go client retries at once (a busy loop); we report and wait a round
        self.log(f"Error: {go_error(exc)}")

    def show_sum_stats(self) -> None:
        vips = self.check(self.kc.get_all_vips)
        old = [0, 0]

        def one_round() -> None:
            pkts = nbytes = 0
            for vip in vips:
                try:
                    stats = self.kc.get_stats_for_vip(vip)
                except KatranClientError:
                    continue
                pkts += stats.v1
                nbytes += stats.v2
            if self.json:
                self.emit({"packets": pkts, "bytes": nbytes})
                return
            self.printf(f"summary: {_diff(pkts, old[0])} pkts/sec {_diff(nbytes, old[1])} bytes/sec\n")
            old[:] = [pkts, nbytes]

        self.loop(one_round)

    def show_lru_stats(self) -> None:
        old = [0, 0, 0, 0, 0]  # total, miss, tcp syn miss, tcp non-syn miss, fallback hits

        def one_round() -> None:
            try:
                lru = self.kc.get_lru_stats()
                miss = self.kc.get_lru_miss_stats()
                fallback = self.kc.get_lru_fallback_stats()
            except KatranClientError as exc:
                self.retry_later(exc)
                return
            if self.json:
                self.emit({"total": lru.v1, "miss": lru.v2, "tcp_syn_miss": miss.v1, "tcp_non_syn_miss": miss.v2,
                           "fallback_hit": fallback.v1})
                return
            total = _diff(lru.v1, old[0])
            d_miss = _diff(lru.v2, old[1])
            d_syn = _diff(miss.v1, old[2])
            d_non_syn = _diff(miss.v2, old[3])
            d_fallback = _diff(fallback.v1, old[4])
            lru_miss = tcp_miss = tcp_non_syn = udp_miss = lru_hit = 0.0
            if total:
                lru_miss = d_miss / total
                tcp_miss = d_syn / total
                tcp_non_syn = d_non_syn / total
                udp_miss = 1 - (tcp_miss + tcp_non_syn)
                lru_hit = 1 - lru_miss
            # Katran prints the tcp/udp shares as fractions followed by "%"; kept as is.
            self.printf(
                f"summary: {total} pkts/sec. lru hit: {lru_hit * 100:.2f}% lru miss: {lru_miss * 100:.2f}% "
                f"(tcp syn: {tcp_miss:.2f}% tcp non-syn: {tcp_non_syn:.2f}% udp: {udp_miss:.2f}%)"
                f" fallback lru hit: {d_fallback} pkts/sec\n"
            )
            old[:] = [lru.v1, lru.v2, miss.v1, miss.v2, fallback.v1]

        self.loop(one_round)

    def show_per_vip_stats(self) -> None:
        vips = self.check(self.kc.get_all_vips)
        old = {vip: (0, 0) for vip in vips}

        def one_round() -> None:
            if self.json:
                docs = []
                for vip in vips:
                    try:
                        docs.append({**_vip_json(vip), **_stats_json(self.kc.get_stats_for_vip(vip))})
                    except KatranClientError:
                        continue
                self.emit({"vips": docs})
                return
            for vip in vips:
                try:
                    stats = self.kc.get_stats_for_vip(vip)
                except KatranClientError:
                    continue
                key = f"{format_address(vip.address)}:{vip.port}:{vip.proto}"
                self.printf(f"vip: {key:>16} : {_diff(stats.v1, old[vip][0]):>8} pkts/sec "
                            f"{_diff(stats.v2, old[vip][1]):>8} bytes/sec\n")
                old[vip] = (stats.v1, stats.v2)

        self.loop(one_round)

    def show_icmp_stats(self) -> None:
        old = [0, 0]

        def one_round() -> None:
            icmp = self.check(self.kc.get_icmp_too_big_stats)
            if self.json:
                self.emit({"v4": icmp.v1, "v6": icmp.v2})
                return
            self.printf(f'ICMP "packet too big": v4 {_diff(icmp.v1, old[0])} pkts/sec '
                        f"v6: {_diff(icmp.v2, old[1])} pkts/sec\n")
            old[:] = [icmp.v1, icmp.v2]

        self.loop(one_round)

    # ------------------------------------------------------------ extensions
    def show_real_stats(self, vip: Optional[VipKey], real_addrs: list[str]) -> None:
        if real_addrs:
            addresses = []
            for addr in real_addrs:
                if format_address(self.model(Real, addr).address) not in addresses:
                    addresses.append(format_address(self.model(Real, addr).address))
        else:
            vips = [vip] if vip is not None else self.check(self.kc.get_all_vips)
            addresses = []
            for v in vips:
                for real in self.check(self.kc.get_reals_for_vip, v):
                    if format_address(real.address) not in addresses:
                        addresses.append(format_address(real.address))
        index = {addr: self.check(self.kc.get_index_for_real, addr) for addr in addresses}
        old = {addr: (0, 0) for addr in addresses}

        def one_round() -> None:
            if self.json:
                docs = []
                for addr in addresses:
                    try:
                        docs.append({"address": addr, "index": index[addr],
                                     **_stats_json(self.kc.get_real_stats(index[addr]))})
                    except KatranClientError as exc:
                        self.retry_later(exc)
                self.emit({"reals": docs})
                return
            for addr in addresses:
                try:
                    stats = self.kc.get_real_stats(index[addr])
                except KatranClientError as exc:
                    self.retry_later(exc)
                    continue
                self.printf(f"real: {addr:>16} : {_diff(stats.v1, old[addr][0]):>8} pkts/sec "
                            f"{_diff(stats.v2, old[addr][1]):>8} bytes/sec\n")
                old[addr] = (stats.v1, stats.v2)

        self.loop(one_round)

    def show_xdp_stats(self) -> None:
        old = [0, 0, 0, 0, 0]

        def one_round() -> None:
            try:
                total = self.kc.get_xdp_total_stats()
                tx = self.kc.get_xdp_tx_stats()
                drop = self.kc.get_xdp_drop_stats()
                pss = self.kc.get_xdp_pass_stats()
            except KatranClientError as exc:
                self.retry_later(exc)
                return
            if self.json:
                self.emit({"total": _stats_json(total), "tx": _stats_json(tx), "drop": _stats_json(drop),
                           "pass": _stats_json(pss)})
                return
            now = [total.v1, total.v2, tx.v1, drop.v1, pss.v1]
            d = [_diff(n, o) for n, o in zip(now, old)]
            self.printf(f"xdp total: {d[0]} pkts/sec {d[1]} bytes/sec tx: {d[2]} pkts/sec "
                        f"drop: {d[3]} pkts/sec pass: {d[4]} pkts/sec\n")
            old[:] = now

        self.loop(one_round)

    def show_core_stats(self) -> None:
        old: list[int] = []

        def one_round() -> None:
            try:
                counts = self.kc.get_per_core_packets_stats()
            except KatranClientError as exc:
                self.retry_later(exc)
                return
            if self.json:
                self.emit({"cores": [{"cpu": cpu, "packets": n} for cpu, n in enumerate(counts)]})
                return
            prev = old + [0] * (len(counts) - len(old))
            for cpu, (n, o) in enumerate(zip(counts, prev)):
                self.printf(f"cpu {cpu}: {_diff(n, o)} pkts/sec\n")
            old[:] = counts

        self.loop(one_round)

    def show_hc_stats(self) -> None:
        old = [0, 0, 0, 0]

        def one_round() -> None:
            try:
                s = self.kc.get_hc_program_stats()
            except KatranClientError as exc:
                self.retry_later(exc)
                return
            if self.json:
                self.emit({"processed": s.processed, "dropped": s.dropped, "skipped": s.skipped,
                           "too_big": s.too_big, "dst_matched": s.dst_matched, "src_matched": s.src_matched})
                return
            now = [s.processed, s.dropped, s.skipped, s.too_big]
            d = [_diff(n, o) for n, o in zip(now, old)]
            self.printf(f"hc: processed: {d[0]} pkts/sec dropped: {d[1]} pkts/sec skipped: {d[2]} pkts/sec "
                        f"too big: {d[3]} pkts/sec\n")
            old[:] = now

        self.loop(one_round)

    def modify_real(self, addr: str, flags_text: str, set_flag: bool) -> None:
        flags = self.parse_flags(flags_text, RealFlag)
        if flags is None:
            return
        self.update(self.kc.modify_real, addr, flags, set_flag)
        self.log("Real modified")

    def real_info(self, addr: str) -> None:
        index = self.check(self.kc.get_index_for_real, addr)
        flags = self.check(self.kc.get_real_flags, addr)
        if self.json:
            self.emit({"address": format_address(self.model(Real, addr).address), "index": index,
                       "flags": _flag_names(flags, RealFlag)})
            return
        self.printf(f"real: {addr} index: {index} flags: {_real_flags_text(flags)}\n")

    def change_hash(self, vip: VipKey, name: str) -> None:
        try:
            func = HashFunction[name.strip().upper()]
        except KeyError:
            raise self.fatal(f"unknown hash function: {name} (expected maglev or maglev_v2)") from None
        self.check(self.kc.change_hash_function_for_vip, vip, func)
        self.log("Vip modified")

    def show_hash(self, vip: VipKey) -> None:
        func = self.check(self.kc.get_hash_function_for_vip, vip)
        if self.json:
            self.emit({"vip": _vip_json(vip), "hash_function": func.name.lower()})
            return
        self.printf(f"hash function: {func.name.lower()}\n")

    def flow_table(self, service: str, proto: int) -> None:
        """-list_lru / -search_lru / -delete_lru / -purge_lru (side-effect free reads; deletes per CPU)."""
        ns = self.ns
        vip = self.parse_vip(service, proto) if service else None
        real, src = self.one_real() or None, ns.src or None
        if ns.search_lru or ns.delete_lru:
            if not ns.client:
                raise self.fatal("Error: -search_lru / -delete_lru need -client <addr>:<port>")
            client = self.parse_vip(ns.client, vip.proto, "-client")  # the same <addr>:<port> syntax
            if ns.delete_lru:
                sources = self.check(self.kc.delete_lru, vip, str(client.address), client.port)
                if self.json:
                    self.emit({"vip": _vip_json(vip), "deleted_from": sources})
                else:
                    self.printf(f"deleted from: {', '.join(sources) or 'nothing (no entry)'}\n")
                return
            entries = self.check(self.kc.search_lru, vip, str(client.address), client.port)
            self._print_lru(entries, len(entries), {})
            return
        if ns.purge_lru:
            if vip is None and real is None and src is None:
                raise self.fatal("Error: -purge_lru needs a filter: -t/-u VIP, -r real or -src prefix")
            per = self.check(lambda: self.kc.purge_vip_lru(vip, real=real, src=src))
            if self.json:
                self.emit({"purged": per, "total": sum(per.values())})
            else:
                self.printf(f"purged {sum(per.values())} entries"
                            + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(per.items()))})" if per else "") + "\n")
            return
        if ns.limit < 0:
            raise self.fatal(f"Error: -limit={ns.limit}: expected 0 (all) or more")
        listing = self.check(lambda: self.kc.list_lru(vip, real=real, src=src, limit=ns.limit or None))
        self._print_lru(listing.entries, listing.total, listing.per_source)

    def _print_lru(self, entries: list, total: int, per_source: dict) -> None:
        rows = []
        for e in entries:
            rows.append({"table": e.source, "vip": _vip_json(e.vip) if e.vip else None,
                         "client": format_address(e.src), "client_port": e.src_port,
                         "real": format_address(e.real) if e.real else None,
                         "age_seconds": e.age_s})
        if self.json:
            self.emit({"entries": rows, "total": total, "per_table": per_source})
            return
        for r, e in zip(rows, entries):
            vip = str(e.vip) if e.vip else "(gone)"
            age = f" age {r['age_seconds']:.1f}s" if r["age_seconds"] is not None else ""
            self.printf(f"{r['table']:<9} {vip:<28} client {r['client']}:{r['client_port']:<6} "
                        f"-> {r['real'] or '(none)'}{age}\n")
        shown = f"{len(entries)} of {total}" if total > len(entries) else f"{total}"
        self.printf(f"entries: {shown}" + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(per_source.items()))})"
                                         if per_source else "") + "\n")

    def apply_file(self, path: str, dry_run: bool) -> None:
        """-apply FILE [-dry_run]: the file goes whole to the server, which names FILE:LINE in errors."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise self.fatal(f"Error: -apply {path}: {getattr(exc, 'strerror', None) or exc}") from None
        changes, restart = self.check(self.kc.apply_config, text, dry_run, path)
        verb = "would change" if dry_run else "changed"
        for line in changes:
            self.printf(f"{verb}: {line}\n")
        for line in restart:
            self.printf(f"needs a restart (not applied): {line}\n")
        if not changes:
            self.printf(f"{path}: no change\n")

    def drain(self, undo: bool, timeout_ms: int) -> None:
        if timeout_ms < 0 or timeout_ms > 3_600_000:
            raise self.fatal(f"-drain_timeout={timeout_ms}: expected 0..3600000 ms")
        if undo:
            draining, waited, announced = self.check(self.kc.undrain)
        else:
            draining, waited, announced = self.check(self.kc.drain, timeout_ms)
        state = "draining" if draining else "announcing"
        self.printf(f"bgp: {state}; announced: {', '.join(announced) or 'nothing'}"
                    + (f"; traffic quiet after {waited:.2f} s" if not undo else "") + "\n")

    def real_of(self, flow) -> Optional[str]:
        """The real of a flow, computed without side effects (lookupFlow: not counted as traffic,
        no connection-table entry; an unknown VIP is an error); a transport without it (thrift)
        runs the program as Katran's simulator does."""
        try:
            route = self.kc.lookup_flow(flow)
        except KatranClientError as exc:
            if "UNIMPLEMENTED" not in str(exc):
                raise self.fatal(f"Error: {go_error(exc)}") from None
            return self.check(self.kc.get_real_for_flow, flow)
        return format_address(route.real) if route.real is not None else None

    def real_for_flow(self, vip: VipKey, src: str) -> None:
        srcs = [s.strip() for s in src.split(",") if s.strip()]
        if not srcs:
            raise self.fatal("-flow needs <addr>:<port>[,<addr>:<port>...]")
        flows = []
        for one in srcs:
            src_vip = self.parse_vip(one, vip.proto, "-flow")  # same <addr>:<port> syntax
            flows.append((one, src_vip, self.model(Flow, src_vip.address, vip.address, src_vip.port, vip.port,
                                                   vip.proto)))
        docs = []
        for one, src_vip, flow in flows:
            real = self.real_of(flow)
            if self.json:
                docs.append({"src": format_address(src_vip.address), "src_port": src_vip.port, "real": real})
                continue
            text = f"real: {real}" if real is not None else "no real for this flow"
            self.printf(f"{text}\n" if len(flows) == 1 else f"flow {one} {text}\n")
        if self.json:
            self.emit({"vip": _vip_json(vip), "flows": docs})

    # ------------------------------------------------------------ feature parity
    def need(self, value: str, flag: str, command: str) -> str:
        if not value:
            raise self.fatal(f"{command} needs {flag}")
        return value

    def prefixes(self, command: str) -> list[str]:
        srcs = [s.strip() for s in self.ns.src.split(",") if s.strip()]
        if not srcs:
            raise self.fatal(f"{command} needs -src <prefix>[,<prefix>...]")
        return srcs

    def add_src_route(self, real: str) -> None:
        srcs = self.prefixes("-src_route")
        self.check(self.kc.add_src_routing_rule, srcs, self.need(real, "-r <real>", "-src_route"))
        self.log("Src routing rules modified")

    def del_src_route(self) -> None:
        self.check(self.kc.del_src_routing_rule, self.prefixes("-del_src_route"))
        self.log("Src routing rules modified")

    def clear_src_routes(self) -> None:
        self.check(self.kc.clear_all_src_routing_rules)
        self.log("Src routing rules cleared")

    def list_src_routes(self) -> None:
        size = self.check(self.kc.get_src_routing_rule_size)
        rules = self.check(self.kc.get_src_routing_rule)
        if self.json:
            self.emit({"src_routes": [{"src": src, "real": rules[src]} for src in sorted(rules)]})
            return
        self.log(f"src routing rules len {size}")
        for src in sorted(rules):
            self.printf(f"src: {src:>24} -> real: {rules[src]}\n")

    def modify_decap_dst(self, addr: str, delete: bool) -> None:
        if delete:
            self.check(self.kc.del_inline_decap_dst, self.need(addr, "-decap_dst <addr>", "-del_decap_dst"))
        else:
            self.check(self.kc.add_inline_decap_dst, addr)
        self.log("Decap dst modified")

    def list_decap_dst(self) -> None:
        if self.json:
            self.emit({"decap_dsts": list(self.check(self.kc.get_inline_decap_dst))})
            return
        for addr in self.check(self.kc.get_inline_decap_dst):
            self.printf(f"decap dst: {addr}\n")

    def modify_down_real(self, vip: VipKey, real: str, delete: bool) -> None:
        command = "-del_down_real" if delete else "-down_real"
        real = self.need(real, "-r <real>", command)
        self.check(self.kc.remove_down_real if delete else self.kc.add_down_real, vip, real)
        self.log("Down reals modified")

    def clear_down_reals(self, vip: VipKey) -> None:
        self.check(self.kc.clear_down_reals, vip)
        self.log("Down reals modified")

    def list_down_reals(self, vip: VipKey) -> None:
        if self.json:
            self.emit({"vip": _vip_json(vip), "down_reals": list(self.check(self.kc.get_down_reals, vip))})
            return
        for addr in self.check(self.kc.get_down_reals, vip):
            self.printf(f"down real: {addr}\n")

    def show_counters(self, fetch: Callable[[], dict]) -> None:
        """Stats loop over named counters: one "<name>: N pkts/sec" line each."""
        old: dict = {}

        def one_round() -> None:
            try:
                now = fetch()
            except KatranClientError as exc:
                self.retry_later(exc)
                return
            if self.json:
                self.emit({"counters": now})
                return
            for name, value in now.items():
                self.printf(f"{name}: {_diff(value, old.get(name, 0))} pkts/sec\n")
            old.clear()
            old.update(now)

        self.loop(one_round)

    def quic_counters(self) -> dict:
        out = {f"quic {name}": n for name, n in self.kc.get_lb_quic_packets_stats().items()}
        icmp = self.kc.get_quic_icmp_stats()
        out.update({"quic icmp": icmp.v1, "quic icmp ignorable": icmp.v2})
        return out

    def tpr_counters(self, vip: Optional[VipKey]) -> dict:
        out = {f"tpr {name}": n for name, n in self.kc.get_tcp_server_id_routing_stats().items()}
        if vip is not None:
            sid = self.kc.get_sid_routing_stats_for_vip(vip)
            key = f"{format_address(vip.address)}:{vip.port}:{vip.proto}"
            out.update({f"tpr vip {key} new conns": sid.v1, f"tpr vip {key} dst_mismatch_in_lru": sid.v2})
        return out

    def stable_rt_counters(self) -> dict:
        return {f"stable_rt {name}": n for name, n in self.kc.get_udp_stable_routing_stats().items()}

    def decap_counters(self, vip: Optional[VipKey]) -> dict:
        decap = self.kc.get_decap_stats()
        inline = self.kc.get_inline_decap_stats()
        xpop = self.kc.get_xpop_decap_successful_stats()
        out = {"decap v4": decap.v1, "decap v6": decap.v2, "inline decap": inline.v1,
               "xpop decap v4": xpop.v1, "xpop decap v6": xpop.v2}
        if vip is not None:
            out[f"decap vip {format_address(vip.address)}:{vip.port}:{vip.proto}"] = self.kc.get_decap_stats_for_vip(vip).v1
        return out

    def src_route_counters(self) -> dict:
        s = self.kc.get_src_routing_stats()
        return {"src routing no match": s.v1, "src routing routed": s.v2}

    def flow_migration_counters(self) -> dict:
        return {"udp flow migration invalidated": self.kc.get_udp_flow_migration_stats().v1}

    def global_lru_counters(self) -> dict:
        s = self.kc.get_global_lru_stats()
        return {"global lru no map": s.v1, "global lru routed": s.v2}

    # ------------------------------------------------------------ dispatch
    # ------------------------------------------------------------ packet capture
    def capture(self, service: str, proto: int) -> None:
        """-capture: stream the server's capture into a pcap file (or stdout); the summary on stderr."""
        from katran.capture import PcapWriter  # only this command needs it

        ns = self.ns
        vip = None
        if ns.vip:
            addr, _, proto_name = ns.vip.partition("/")
            protos = {"": IPPROTO_TCP, "tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}
            if proto_name.lower() not in protos:
                raise self.fatal(f"Error: -vip {ns.vip}: protocol must be tcp or udp")
            vip = self.parse_vip(addr, protos[proto_name.lower()])
        elif service:
            vip = self.parse_vip(service, proto)
        if not ns.write:
            raise self.fatal("Error: -capture needs -w FILE (or -w - for stdout)")
        if ns.count < 0 or ns.snaplen < 0:
            raise self.fatal(f"Error: -count and -snaplen must be >= 0 (got {ns.count}, {ns.snaplen})")
        to_stdout = ns.write == "-"
        try:
            out = sys.stdout.buffer if to_stdout else open(ns.write, "wb")
        except OSError as exc:
            raise self.fatal(f"Error: cannot write {ns.write}: {exc.strerror}") from None
        n = 0
        try:
            writer = PcapWriter(out)
            writer.flush()
            try:
                for pkt in self.kc.capture(vip=vip, real=self.one_real() or None, src=ns.src or None, count=ns.count,
                                           snaplen=ns.snaplen):
                    writer.write(pkt)
                    writer.flush()
                    n += 1
            except KatranClientError as exc:
                raise self.fatal(f"Error: {go_error(exc)}") from None
        finally:
            if not to_stdout:
                out.close()
            lost = getattr(self.kc, "capture_lost", 0)
            self.err.write(f"{n} packets captured, {lost} lost (ring buffer full)\n")
            self.err.flush()

    def run(self) -> None:
        """katranc's main(): the first matching command runs."""
        ns = self.ns
        service, proto = "", 0
        if ns.t:
            service, proto = ns.t, IPPROTO_TCP
        elif ns.u:
            service, proto = ns.u, IPPROTO_UDP
        if ns.capture:
            # the pcap may be stdout: nothing else is printed there (no "exiting")
            self.capture(service, proto)
            return
        if ns.list_lru or ns.search_lru or ns.delete_lru or ns.purge_lru:
            self.flow_table(service, proto)
            return
        if ns.dump:  # stdout holds only the file (no "exiting"), so it can be saved and re-applied
            self.printf(self.check(self.kc.dump_config))
            return
        if ns.apply:
            self.apply_file(ns.apply, ns.dry_run)
            return
        if ns.change_mac:
            self.change_mac(ns.change_mac)
        elif ns.list_mac:
            self.get_mac()
        elif ns.A:
            self.add_or_modify_service(service, ns.vf, proto, False, True)
        elif ns.l:
            self.list()
        elif ns.D:
            self.del_service(service, proto)
        elif ns.E:
            self.add_or_modify_service(service, ns.vf, proto, True, not ns.unset)
        elif ns.a or ns.e:
            self.update_server_for_vip(service, proto, ns.w, ns.rf, False)
        elif ns.d:
            self.update_server_for_vip(service, proto, ns.w, ns.rf, True)
        elif ns.del_qm:
            self.modify_quic_mappings(ns.quic_mapping, True)
        elif ns.quic_mapping:
            self.modify_quic_mappings(ns.quic_mapping, False)
        elif ns.list_qm:
            self.list_qm()
        elif ns.C:
            self.clear_all()
        elif ns.new_hc:
            self.add_hc(ns.new_hc, ns.somark)
        elif ns.del_hc:
            self.del_hc(ns.somark)
        elif ns.list_hc:
            self.list_hc()
        elif ns.s:
            if ns.sum:
                self.show_sum_stats()
            elif ns.lru:
                self.show_lru_stats()
            elif ns.icmp:
                self.show_icmp_stats()
            elif ns.reals:
                self.show_real_stats(self.parse_vip(service, proto) if service else None,
                                     [a for a, _, _ in self.real_specs()])
            elif ns.xdp:
                self.show_xdp_stats()
            elif ns.cores:
                self.show_core_stats()
            elif ns.hc_stats:
                self.show_hc_stats()
            elif ns.quic:
                self.show_counters(self.quic_counters)
            elif ns.tpr:
                vip = self.parse_vip(service, proto) if service else None
                self.show_counters(lambda: self.tpr_counters(vip))
            elif ns.stable_rt:
                self.show_counters(self.stable_rt_counters)
            elif ns.decap:
                vip = self.parse_vip(service, proto) if service else None
                self.show_counters(lambda: self.decap_counters(vip))
            elif ns.src_route:
                self.show_counters(self.src_route_counters)
            elif ns.flow_migration:
                self.show_counters(self.flow_migration_counters)
            elif ns.global_lru:
                self.show_counters(self.global_lru_counters)
            else:
                self.show_per_vip_stats()
        # extensions: none of them is a katranc command line
        elif ns.rf:
            self.modify_real(self.need(self.one_real(), "-r <real>", "-rf"), ns.rf, not ns.unset)
        elif ns.real_info:
            self.real_info(self.need(self.one_real(), "-r <real>", "-real_info"))
        elif ns.hash:
            self.change_hash(self.parse_vip(service, proto), ns.hash)
        elif ns.show_hash:
            self.show_hash(self.parse_vip(service, proto))
        elif ns.flow:
            self.real_for_flow(self.parse_vip(service, proto), ns.flow)
        elif ns.src_route:
            self.add_src_route(self.one_real())
        elif ns.del_src_route:
            self.del_src_route()
        elif ns.clear_src_routes:
            self.clear_src_routes()
        elif ns.list_src_routes:
            self.list_src_routes()
        elif ns.del_decap_dst:
            self.modify_decap_dst(ns.decap_dst, True)
        elif ns.decap_dst:
            self.modify_decap_dst(ns.decap_dst, False)
        elif ns.list_decap_dst:
            self.list_decap_dst()
        elif ns.down_real or ns.del_down_real:
            self.modify_down_real(self.parse_vip(service, proto), self.one_real(), ns.del_down_real)
        elif ns.clear_down_reals:
            self.clear_down_reals(self.parse_vip(service, proto))
        elif ns.list_down_reals:
            self.list_down_reals(self.parse_vip(service, proto))
        elif ns.drain or ns.undrain:
            self.drain(ns.undrain, ns.drain_timeout)
        if not self.json:
            self.printf("exiting\n")

    def one_real(self) -> str:
        """The real of -r for commands taking one ("" when not given)."""
        return self.ns.r[-1].strip() if self.ns.r else ""


def capture_argv(argv: list[str]) -> list[str]:
    """With -capture, ``-w FILE`` is the pcap file (-write), not katranc's integer weight."""
    if not any(a.lstrip("-").split("=")[0] == "capture" for a in argv if a.startswith("-")):
        return list(argv)
    out = []
    for a in argv:
        name, eq, value = a.lstrip("-").partition("=")
        if a.startswith("-") and name == "w":
            out.append("-write" + (eq + value))
        else:
            out.append(a)
    return out


def main(argv: Optional[list[str]] = None, *, client_factory: Optional[ClientFactory] = None) -> int:
    """Entry point of katran-cli; returns the exit status."""
    fs = build_flags()
    try:
        ns = fs.parse(capture_argv(sys.argv[1:] if argv is None else argv))
    except VersionRequested:
        from katran import version_line

        print(version_line(PROG))
        return 0
    except HelpRequested:
        fs.usage(sys.stdout)
        return 0
    except FlagError as exc:
        print(f"{PROG}: {exc}{suggest_flag(fs, str(exc))}", file=sys.stderr)
        print(SHORT_USAGE, file=sys.stderr)
        return 2
    if ns.completion:
        try:
            sys.stdout.write(completion_script(fs, ns.completion))
        except KatranError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
        return 0
    problem = usage_problem(ns)
    if problem is not None:
        print(f"{PROG}: {problem}", file=sys.stderr)
        print(SHORT_USAGE, file=sys.stderr)
        return 2
    try:
        client = (client_factory or make_client)(ns)
    except KatranError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    cli = Cli(client, ns)
    try:
        cli.run()
    except Fatal:
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
    return 1 if cli.failed else 0


if __name__ == "__main__":
    sys.exit(main())
