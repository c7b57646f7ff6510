"""The flags both RPC servers share (Katran's example-server flags plus ours), and
their translation to a KatranConfig.  No RPC library is imported here.
"""

from __future__ import annotations

import sys
from typing import Optional

from katran.config import KatranConfig
from katran.errors import ValidationError
from katran.models import HashFunction

from .goflags import FlagError, FlagSet, HelpRequested, VersionRequested

# KatranConfig field -> the flag that sets it, to name the flag in start-up errors
FLAG_OF_FIELD = {
    "main_interface": "intf",
    "hc_interface": "hc_intf",
    "v4_tun_interface": "ipip_intf",
    "v6_tun_interface": "ipip6_intf",
    "balancer_prog_path": "balancer_prog",
    "healthchecking_prog_path": "healthchecker_prog",
    "root_map_path": "map_path",
    "root_map_pos": "prog_pos",
    "enable_hc": "hc_forwarding",
    "xdp_attach_mode": "xdp_mode",
}


def add_server_flags(fs: FlagSet, default_server: str, server_help: str) -> FlagSet:
    """Katran's katran_server_grpc flags (names, defaults), then our extensions.

    Katran's servers parse their flags with gflags: ``fs`` is switched to gflags'
    syntax (``-noflag``, ``--flagfile=FILE``, ...; see katran_frontend.goflags).
    """
    fs.gflags = True
    fs.string("server", default_server, server_help)
    fs.string("intf", "eth0", "main interface")
    fs.string("hc_intf", "", "interface for healthchecking")
    fs.string("ipip_intf", "ipip0", "ipip (v4) encap interface")
    fs.string("ipip6_intf", "ipip60", "ip(6)ip6 (v6) encap interface")
    fs.string("balancer_prog", "", "path to balancer bpf prog (default: the packaged balancer.bpf.o)")
    fs.string("healthchecker_prog", "", "path to healthchecking bpf prog (default: the packaged object)")
    fs.string("default_mac", "00:00:00:00:00:01", "mac address of default router. must be in format: xx:xx:xx:xx:xx:xx"
              " (or auto: the default gateway's, as katran-preflight finds it)")
    fs.int("priority", 2307, "tc's priority for bpf progs")
    fs.string("map_path", "", "path to pinned map from root xdp prog. default path forces to work in standalone mode")
    fs.int("prog_pos", 2, "katran's position inside root xdp array")
    fs.bool("hc_forwarding", True, "turn on forwarding path for healthchecks (default off with -testing)")
    fs.int("shutdown_delay", 10000, "shutdown delay in milliseconds")
    fs.int("lru_size", 8000000, "size of LRU table")
    fs.string("forwarding_cores", "", "comma separated list of forwarding cores (default: every CPU; "
              "auto: the CPUs of -intf's queue IRQs)")
    fs.string("numa_nodes", "", "comma separated list of numa nodes to forwarding cores mapping (auto: from /sys)")
    # ours
    fs.bool("testing", False, "load and provision the programs without attaching them")
    fs.string("hash_function", "maglev_v2",
              "default hash function of new VIPs: maglev or maglev_v2 (as Katran's example server)")
    fs.int("max_vips", 512, "maximum number of VIPs")
    fs.int("max_reals", 4096, "maximum number of reals")
    fs.int("ch_ring_size", 65537, "consistent hashing ring size per VIP")
    fs.int("max_server_ids", 65536, "entries of the QUIC/TPR server id table: ids 1..N-1 (Katran: 16777214)")
    fs.string("katran_src_v4", "", "source address of forwarded healthchecks / GUE, v4 (default: from -hc_intf/-intf)")
    fs.string("katran_src_v6", "", "source address of forwarded healthchecks / GUE, v6 (default: from -hc_intf/-intf)")
    fs.string("xdp_mode", "native", "XDP attach mode: native, generic or offload")
    fs.string("log_format", "text", "log lines: text, or json (one object per line: time, level, logger, message, "
              "fields)")
    fs.string("log_level", "info", "least severe level logged: debug, info, warning or error")
    fs.string("config", "", "declarative file (YAML): balancer options, VIPs, reals, health checks, ...; "
              "applied at start and again on SIGHUP (flags given explicitly win over its balancer section)")
    # state that survives restarts (docs/operations.md)
    fs.bool("persist", True, "pin maps and programs, keep a state file, adopt the running data plane on restart "
            "(standalone and shared mode; off with -testing)")
    fs.string("state_dir", "", "directory of the state file and the instance lock (default /var/lib/katran/<intf>)")
    fs.string("pin_dir", "", "bpffs directory of the pinned maps and programs (default /sys/fs/bpf/katran/<intf>)")
    fs.bool("force", False, "replace an XDP program or tc filter on the interface that is not this instance's")
    fs.bool("force_reload", False, "when the running data plane cannot be adopted (other sizes, no state file), "
            "load a fresh one in its place: the LRU and the saved state are lost")
    fs.bool("teardown_on_exit", False, "on SIGTERM/SIGINT detach and remove programs, filters, pins and the state "
            "file (default: leave the data plane forwarding for the next start to adopt)")
    fs.string("metrics_addr", "", "serve Prometheus metrics at http://HOST:PORT/metrics "
              "(off when empty; PORT or :PORT alone: loopback)")
    fs.int("drain_timeout", 10000, "with a bgp section: on SIGTERM/SIGINT withdraw the VIPs and wait at most this "
           "many milliseconds for their traffic to leave before stopping")
    return fs


def config_from_flags_and_file(ns, desired, netns: Optional[str] = None) -> KatranConfig:
    """The KatranConfig of the flags and a declarative file: the file's ``balancer`` section
    gives what no flag set explicitly (a flag on the command line wins)."""
    import attrs

    flags = config_from_flags(ns, netns)
    merged = {a.name: getattr(flags, a.name) for a in attrs.fields(KatranConfig)}
    for field, value in desired.balancer.items():
        flag = FLAG_OF_FIELD.get(field, field)
        if flag in vars(ns) and ns.is_set(flag):
            continue
        merged[field] = value
    return KatranConfig(**merged)


def hash_function_from_flag(value: str) -> HashFunction:
    names = {"maglev": HashFunction.MAGLEV, "maglev_v2": HashFunction.MAGLEV_V2,
             "0": HashFunction.MAGLEV, "1": HashFunction.MAGLEV_V2}
    try:
        return names[value.strip().lower()]
    except KeyError:
        raise ValidationError("hash_function", value, "expected maglev or maglev_v2") from None


def config_from_flags(ns, netns: Optional[str] = None) -> KatranConfig:
    """Parsed server flags -> KatranConfig (raises ValidationError).  ``auto`` values of
    -default_mac / -forwarding_cores / -numa_nodes are discovered on the host (in ``netns``)."""
    from katran.host import resolve_auto_flags

    auto = resolve_auto_flags(ns.intf, ns.default_mac, ns.forwarding_cores, ns.numa_nodes, netns=netns)
    return KatranConfig(
        main_interface=ns.intf,
        hc_interface=ns.hc_intf,
        v4_tun_interface=ns.ipip_intf,
        v6_tun_interface=ns.ipip6_intf,
        balancer_prog_path=ns.balancer_prog or None,
        healthchecking_prog_path=ns.healthchecker_prog or None,
        default_mac=auto.default_mac,
        priority=ns.priority,
        root_map_path=ns.map_path or None,
        root_map_pos=ns.prog_pos,
        # -testing attaches nothing and has no interface to take a source address from:
        # healthcheck forwarding is off there unless asked for explicitly
        enable_hc=ns.hc_forwarding if (ns.is_set("hc_forwarding") or not ns.testing) else False,
        lru_size=ns.lru_size,
        forwarding_cores=auto.forwarding_cores or None,  # empty: one LRU per CPU
        numa_nodes=auto.numa_nodes or None,
        hash_function=hash_function_from_flag(ns.hash_function),
        max_vips=ns.max_vips,
        max_reals=ns.max_reals,
        ch_ring_size=ns.ch_ring_size,
        max_server_ids=ns.max_server_ids,
        xdp_attach_mode=ns.xdp_mode,
        katran_src_v4=ns.katran_src_v4 or None,
        katran_src_v6=ns.katran_src_v6 or None,
        testing=ns.testing,
        persist=ns.persist,
        state_dir=ns.state_dir or None,
        pin_dir=ns.pin_dir or None,
        force=ns.force,
        force_reload=ns.force_reload,
    )


def parse_server_flags(fs: FlagSet, argv, prog: str):
    """(namespace, None) for good flags; (None, exit status) after printing help or a usage error."""
    try:
        ns = fs.parse(list(argv))
        if ns.args:
            raise FlagError(f"unexpected argument: {ns.args[0]}")
    except VersionRequested:
        print(version_line(prog))
        return None, 0
    except HelpRequested:
        fs.usage()
        return None, 0
    except FlagError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        fs.usage()
        return None, 2
    return ns, None


def version_line(prog: str) -> str:
    """What ``-version`` / ``--version`` prints (one version source: ``katran.__version__``)."""
    from katran import version_line as line

    return line(prog)


def error_line(prog: str, exc: BaseException) -> str:
    """One start-up error line; a bad config value also names its flag."""
    text = str(exc)
    if isinstance(exc, ValidationError):
        flag = FLAG_OF_FIELD.get(exc.field, exc.field)
        if flag in vars(add_server_flags(FlagSet(prog, ""), "", "").parse([])):
            text += f" (flag -{flag})"
    return f"{prog}: error: {text}"
