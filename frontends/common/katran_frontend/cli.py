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
* TLS (``-tls_ca``, ``-tls_cert``, ``-tls_key``) and a call ``-timeout``.

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
from .client import KatranClient, KatranClientError, OperationFailed, RpcFailed
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
    fs.string("r", "", "Address of the real server")
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
    def parse_vip(self, addr: str, proto: int) -> VipKey:
        if "[" in addr:
            m = re.search(r"\[(.*?)\]:(.*)", addr)
            if m is None:
                raise self.fatal(f"invalid v6 address {addr}")
            host, port = m.group(1), m.group(2)
        else:
            parts = addr.split(":")
            if len(parts) != 2:
                raise self.fatal(f"incorrect v4 address: {addr}")
            host, port = parts
        try:
            port_num = int(port, 10)
        except ValueError:
            raise self.fatal(f'Error: strconv.ParseInt: parsing "{port}": invalid syntax') from None
        return self.model(VipKey, host, port_num, proto)

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
        self.log(f"Mac address is {self.check(self.kc.get_mac)}")

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

    def update_server_for_vip(self, vip_addr: str, proto: int, real_addr: str, weight: int, real_flags: str,
                              delete: bool) -> None:
        vip = self.parse_vip(vip_addr, proto)
        flags = 0
        if real_flags:
            flags = self.parse_flags(real_flags, RealFlag)
            if flags is None:
                return
        real = self.model(Real, real_addr, weight, flags)
        action = ModifyAction.DEL if delete else ModifyAction.ADD
        self.update(self.kc.modify_reals_for_vip, action, [real], vip)
        self.log("Reals modified")

    def modify_quic_mappings(self, mapping: str, delete: bool) -> None:
        parts = mapping.split("=")
        if len(parts) != 2:
            raise self.fatal("quic mapping must be in <addr>=<id> format")
        try:
            qid = int(parts[1], 10)
        except ValueError:
            raise self.fatal(f'Error: strconv.ParseInt: parsing "{parts[1]}": invalid syntax') from None
        qreal = self.model(QuicReal, parts[0], qid)
        action = ModifyAction.DEL if delete else ModifyAction.ADD
        self.update(self.kc.modify_quic_reals_mapping, action, [qreal])
        self.log("Quic mapping modified")

    def list_vip_and_reals(self, vip: VipKey) -> None:
        reals = self.check(self.kc.get_reals_for_vip, vip)
        proto = "tcp" if vip.proto == IPPROTO_TCP else "udp"
        self.printf(f"VIP: {format_address(vip.address):>20} Port: {vip.port:>6} Protocol: {proto}\n")
        flags = self.check(self.kc.get_vip_flags, vip)
        self.printf(f"Vip's flags: {_vip_flags_text(flags)}\n")
        for real in reals:
            self.printf(f"{' ->' + format_address(real.address):<20} weight: {real.weight} flags: {_real_flags_text(real.flags)}\n")

    def list(self) -> None:
        vips = self.check(self.kc.get_all_vips)
        self.log(f"vips len {len(vips)}")
        for vip in vips:
            self.list_vip_and_reals(vip)

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
        self.printf("printing address to quic's connection id mapping\n")
        for qr in self.check(self.kc.get_quic_reals_mapping):
            self.printf(f"real: {format_address(qr.address):>20} = connection id: {qr.id:>6}\n")

    def add_hc(self, addr: str, somark: int) -> None:
        self.update(self.kc.add_healthchecker_dst, somark & 0xFFFFFFFF, addr)

    def del_hc(self, somark: int) -> None:
        self.update(self.kc.del_healthchecker_dst, somark & 0xFFFFFFFF)

    def list_hc(self) -> None:
        hcs = self.check(self.kc.get_healthcheckers_dst)
        for somark in sorted(hcs):
            self.printf(f"somark: {somark:>10} addr: {hcs[somark]:>10}\n")

    # ------------------------------------------------------------ stats loops
    def loop(self, one_round: Callable[[], None]) -> None:
        """Run a stats round every -interval seconds; -count rounds if given."""
        rounds = 0
        while True:
            one_round()
            rounds += 1
            if self.ns.count and rounds >= self.ns.count:
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
            self.printf(f'ICMP "packet too big": v4 {_diff(icmp.v1, old[0])} pkts/sec '
                        f"v6: {_diff(icmp.v2, old[1])} pkts/sec\n")
            old[:] = [icmp.v1, icmp.v2]

        self.loop(one_round)

    # ------------------------------------------------------------ extensions
    def show_real_stats(self, vip: Optional[VipKey], real_addr: str) -> None:
        if real_addr:
            addresses = [format_address(self.model(Real, real_addr).address)]
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
        self.printf(f"hash function: {func.name.lower()}\n")

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

    def real_for_flow(self, vip: VipKey, src: str) -> None:
        srcs = [s.strip() for s in src.split(",") if s.strip()]
        if not srcs:
            raise self.fatal("-flow needs <addr>:<port>[,<addr>:<port>...]")
        flows = []
        for one in srcs:
            src_vip = self.parse_vip(one, vip.proto)  # same <addr>:<port> syntax
            flows.append((one, self.model(Flow, src_vip.address, vip.address, src_vip.port, vip.port, vip.proto)))
        for one, flow in flows:
            real = self.check(self.kc.get_real_for_flow, flow)
            text = f"real: {real}" if real is not None else "no real for this flow"
            self.printf(f"{text}\n" if len(flows) == 1 else f"flow {one} {text}\n")

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
        self.log(f"src routing rules len {self.check(self.kc.get_src_routing_rule_size)}")
        rules = self.check(self.kc.get_src_routing_rule)
        for src in sorted(rules):
            self.printf(f"src: {src:>24} -> real: {rules[src]}\n")

    def modify_decap_dst(self, addr: str, delete: bool) -> None:
        if delete:
            self.check(self.kc.del_inline_decap_dst, self.need(addr, "-decap_dst <addr>", "-del_decap_dst"))
        else:
            self.check(self.kc.add_inline_decap_dst, addr)
        self.log("Decap dst modified")

    def list_decap_dst(self) -> None:
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
                for pkt in self.kc.capture(vip=vip, real=ns.r or None, src=ns.src or None, count=ns.count,
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
            self.update_server_for_vip(service, proto, ns.r, ns.w, ns.rf, False)
        elif ns.d:
            self.update_server_for_vip(service, proto, ns.r, ns.w, ns.rf, True)
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
                self.show_real_stats(self.parse_vip(service, proto) if service else None, ns.r)
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
        elif ns.rf and ns.r:
            self.modify_real(ns.r, ns.rf, not ns.unset)
        elif ns.real_info:
            self.real_info(ns.r)
        elif ns.hash:
            self.change_hash(self.parse_vip(service, proto), ns.hash)
        elif ns.show_hash:
            self.show_hash(self.parse_vip(service, proto))
        elif ns.flow:
            self.real_for_flow(self.parse_vip(service, proto), ns.flow)
        elif ns.src_route:
            self.add_src_route(ns.r)
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
            self.modify_down_real(self.parse_vip(service, proto), ns.r, ns.del_down_real)
        elif ns.clear_down_reals:
            self.clear_down_reals(self.parse_vip(service, proto))
        elif ns.list_down_reals:
            self.list_down_reals(self.parse_vip(service, proto))
        elif ns.drain or ns.undrain:
            self.drain(ns.undrain, ns.drain_timeout)
        self.printf("exiting\n")


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
        fs.usage()
        return 0
    except FlagError as exc:
        print(exc, file=sys.stderr)
        fs.usage()
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
