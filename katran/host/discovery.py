"""Host facts for the balancer, read from a HostRoot (/proc, /sys) and a netlink source.

Every function here only reads; the verdicts are made in ``report.py``.
"""

from __future__ import annotations

import re
import resource
import time
from typing import Callable, Optional, Sequence

import attrs

from .root import HostRoot

MAIN_TABLE = 254

# drivers with native XDP (in-driver XDP_TX / XDP_REDIRECT support) in mainline kernels
NATIVE_XDP_DRIVERS = frozenset({
    "veth", "virtio_net", "tun", "netdevsim", "bond",
    "mlx5_core", "mlx4_en", "i40e", "ice", "ixgbe", "ixgbevf", "igb", "igc", "idpf", "bnxt_en",
    "nfp", "qede", "ena", "thunder_nicvf", "nicvf", "hv_netvsc", "xen-netfront", "sfc", "sfc_ef100",
    "mvneta", "mvpp2", "stmmac", "dpaa2-eth", "dpaa_eth", "enetc", "fec", "lan743x", "atlantic",
    "cpsw", "am65-cpsw-nuss", "rvu_nicpf", "octeontx2-nicpf", "gve", "ionic", "mana", "bcmgenet",
    "tsnep", "txgbe", "ngbe",
})
# virtual devices without queues of their own: XDP runs on the CPU that hands them the packet
SOFTWARE_QUEUE_KINDS = frozenset({"veth", "tun", "netdevsim", "bond", "macvlan", "ipvlan", "vxlan",
                                  "geneve", "bridge", "dummy", "ifb", "wireguard", "team", "vrf"})


def check_ifname(name: str, field: str = "intf") -> str:
    """``name`` if it can be an interface name (1-15 characters, no '/', no whitespace);
    else ValidationError naming ``field`` (the value truncated, ASCII-safe)."""
    from katran.errors import ValidationError

    if not isinstance(name, str) or not 0 < len(name) < 16 or "/" in name or name in (".", "..") \
            or any(ch.isspace() or ch == ":" for ch in name):
        shown = name[:40].encode("ascii", "backslashreplace").decode() if isinstance(name, str) else ascii(name)
        raise ValidationError(field, shown, "not an interface name (1-15 characters, no '/', ':' or spaces)")
    return name


# ------------------------------------------------------------------ cpu lists
def parse_cpu_list(text: str) -> list[int]:
    """'0-3,6,8-9' -> [0, 1, 2, 3, 6, 8, 9] (ValueError on bad text)."""
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return sorted(set(out))


def parse_cpu_mask(text: str) -> list[int]:
    """smp_affinity's hex mask ('00000000,0000000f' or 'f') -> CPU numbers."""
    value = int(text.replace(",", "").strip() or "0", 16)
    return [i for i in range(value.bit_length()) if value >> i & 1]


def format_cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in cpus)


def format_cpu_ranges(cpus: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the form of smp_affinity_list)."""
    out, cpus = [], sorted(cpus)
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


def format_cpu_mask(cpus: Sequence[int]) -> str:
    """CPU numbers -> smp_affinity's form: 32-bit hex groups joined by commas."""
    value = 0
    for c in cpus:
        value |= 1 << c
    groups = []
    while True:
        groups.append(f"{value & 0xFFFFFFFF:08x}")
        value >>= 32
        if not value:
            break
    return ",".join(reversed(groups))


def online_cpus(root: HostRoot) -> list[int]:
    text = root.read("sys/devices/system/cpu/online")
    if text:
        try:
            return parse_cpu_list(text)
        except ValueError:
            pass
    cpus = [int(n[3:]) for n in root.listdir("sys/devices/system/cpu") if re.fullmatch(r"cpu\d+", n)]
    return sorted(cpus)


def cpu_numa_nodes(root: HostRoot, cpus: Sequence[int]) -> tuple[dict[int, int], str]:
    """CPU -> NUMA node, and where it was read ('' when the host shows no NUMA topology)."""
    nodes: dict[int, int] = {}
    for cpu in cpus:
        for name in root.listdir(f"sys/devices/system/cpu/cpu{cpu}"):
            m = re.fullmatch(r"node(\d+)", name)
            if m:
                nodes[cpu] = int(m.group(1))
                break
    if len(nodes) == len(cpus) and cpus:
        return nodes, "/sys/devices/system/cpu/cpuN/nodeM"
    nodes = {}
    for name in root.listdir("sys/devices/system/node"):
        m = re.fullmatch(r"node(\d+)", name)
        text = root.read(f"sys/devices/system/node/{name}/cpulist") if m else None
        if m and text:
            try:
                for cpu in parse_cpu_list(text):
                    nodes.setdefault(cpu, int(m.group(1)))
            except ValueError:
                continue
    nodes = {c: n for c, n in nodes.items() if c in cpus}
    if len(nodes) == len(cpus) and cpus:
        return nodes, "/sys/devices/system/node/nodeM/cpulist"
    return {}, ""


# ------------------------------------------------------------------- the NIC
@attrs.frozen
class Nic:
    """The interface: its driver, device, queues and where each fact came from."""

    name: str
    driver: str  # virtio_net, mlx5_core, veth, ... ("" unknown)
    device: str = ""  # virtio2, 0000:03:00.0 ("" for a virtual device)
    bus: str = ""  # virtio, pci
    virtual: bool = False
    rx_queues: int = 0
    queues_source: str = ""
    numa_node: Optional[int] = None
    mac: str = ""
    source: str = "sysfs"  # sysfs or netlink


def _device_numa(root: HostRoot, base: str) -> Optional[int]:
    n = root.read_int(f"{base}/numa_node")
    return n if n is not None and n >= 0 else None


def discover_nic(root: HostRoot, net, ifname: str) -> Optional[Nic]:
    """The interface ``ifname``, or None when it does not exist.

    On a real root, /sys/class/net shows the namespace that mounted sysfs, which need not
    be the one asked: sysfs is used when its ifindex and MAC match netlink's, else the
    device is found through netlink's parent device under /sys/bus.  A test tree's
    /sys/class/net is taken as it is (netlink only for an interface it lacks).
    """
    link = net.link(ifname) if net is not None else None
    if root.is_real and net is not None and link is None:
        return None
    base = f"sys/class/net/{ifname}"
    sysfs_ok = root.exists(base)
    if sysfs_ok and link is not None and root.is_real:
        sysfs_ok = (root.read_int(f"{base}/ifindex") == link.index
                    and (root.read(f"{base}/address") or "").lower() == link.mac)
    if sysfs_ok:
        device = root.link_name(f"{base}/device") or ""
        driver = root.link_name(f"{base}/device/driver") or ""
        bus = root.link_name(f"{base}/device/subsystem") or ""
        virtual = not device
        if virtual and link is not None:
            driver = link.kind or driver
        rx = len([q for q in root.listdir(f"{base}/queues") if q.startswith("rx-")])
        return Nic(ifname, driver, device, bus, virtual, rx, f"/sys/class/net/{ifname}/queues",
                   _device_numa(root, f"{base}/device") if device else None,
                   (root.read(f"{base}/address") or "").lower(), "sysfs")
    if link is None:
        return None
    if link.parent_dev:
        dev_base = f"sys/bus/{link.parent_bus}/devices/{link.parent_dev}"
        driver = root.link_name(f"{dev_base}/driver") or ""
        return Nic(ifname, driver, link.parent_dev, link.parent_bus, False, link.num_rx_queues,
                   "netlink (IFLA_NUM_RX_QUEUES)", _device_numa(root, dev_base), link.mac, "netlink")
    return Nic(ifname, link.kind, "", "", True, link.num_rx_queues, "netlink (IFLA_NUM_RX_QUEUES)",
               None, link.mac, "netlink")


def rx_queue_count(root: HostRoot, net, nic: Nic) -> tuple[int, str]:
    """Receive queues in use: ethtool's channels on a real root, else what ``nic`` counted."""
    if root.is_real and net is not None:
        got = net.channels(nic.name)
        if got is not None:
            return got
    return nic.rx_queues, nic.queues_source


# ---------------------------------------------------------------------- IRQs
@attrs.frozen
class QueueIrq:
    queue: int
    irq: int
    name: str
    cpus: tuple  # CPUs the IRQ may run on (its smp_affinity)


def irq_patterns(nic: Nic) -> list[re.Pattern]:
    """Names /proc/interrupts gives the NIC's receive-queue IRQs (group 1: the queue)."""
    ifn = re.escape(nic.name)
    pats = [
        rf"(?:[\w.]+-)?{ifn}-(?:TxRx|RxTx|rx|combined|fp)-(\d+)",  # ixgbe/i40e/ice/bnxt/qede
        rf"{ifn}-(\d+)",  # NICs naming vectors IF-N
        rf"{ifn}()",  # one IRQ for the whole NIC (the seed's enp0s3 on IO-APIC 19)
    ]
    if nic.device.startswith("virtio"):
        pats.append(rf"{re.escape(nic.device)}-input\.(\d+)")
    if nic.bus == "pci" and nic.device:
        pats.append(rf"mlx5_comp(\d+)@pci:{re.escape(nic.device)}")
    return [re.compile(p, re.IGNORECASE) for p in pats]


def irq_affinity(root: HostRoot, irq: int) -> tuple:
    text = root.read(f"proc/irq/{irq}/smp_affinity_list")
    try:
        if text is not None:
            return tuple(parse_cpu_list(text))
        text = root.read(f"proc/irq/{irq}/smp_affinity")
        if text is not None:
            return tuple(parse_cpu_mask(text))
    except ValueError:
        pass
    return ()


def queue_irqs(root: HostRoot, nic: Nic) -> list[QueueIrq]:
    """The NIC's receive-queue IRQs from /proc/interrupts with their affinity, by queue."""
    text = root.read("proc/interrupts") or ""
    lines = text.splitlines()
    pats = irq_patterns(nic)
    found: dict[int, QueueIrq] = {}
    for line in lines[1:]:
        head, sep, rest = line.partition(":")
        if not sep or not head.strip().isdigit():
            continue
        irq = int(head)
        for token in rest.split():
            token = token.rstrip(",")
            for p in pats:
                m = p.fullmatch(token)
                if m:
                    queue = int(m.group(1)) if m.group(1) else 0
                    if queue not in found:
                        found[queue] = QueueIrq(queue, irq, token, irq_affinity(root, irq))
                    break
            else:
                continue
            break
    return [found[q] for q in sorted(found)]


# --------------------------------------------------------------- the rest
def irqbalance_pids(root: HostRoot) -> list[int]:
    pids = []
    for name in root.listdir("proc"):
        if name.isdigit() and root.read(f"proc/{name}/comm") == "irqbalance":
            pids.append(int(name))
    return pids


def jit_sysctls(root: HostRoot) -> dict[str, Optional[int]]:
    return {name: root.read_int(f"proc/sys/net/core/{name}", init_netns=True)
            for name in ("bpf_jit_enable", "bpf_jit_harden", "bpf_jit_kallsyms")}


def rp_filter(root: HostRoot, ifname: str) -> dict[str, Optional[int]]:
    return {name: root.read_int(f"proc/sys/net/ipv4/conf/{name}/rp_filter") for name in ("all", ifname)}


def bpffs_mounts(root: HostRoot) -> list[str]:
    out = []
    for line in (root.read("proc/mounts") or "").splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "bpf":
            out.append(fields[1])
    return out


def kernel_release(root: HostRoot) -> str:
    return root.read("proc/sys/kernel/osrelease") or ""


def kernel_version(release: str) -> tuple:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def memlock_limit(getrlimit: Callable = resource.getrlimit) -> tuple[int, int]:
    """(soft, hard) RLIMIT_MEMLOCK in bytes; resource.RLIM_INFINITY for unlimited."""
    return getrlimit(resource.RLIMIT_MEMLOCK)


# ------------------------------------------------------------------ gateway
@attrs.frozen
class Gateway:
    """The default gateway of the interface and its MAC; ``error`` says why there is none."""

    ip: str = ""
    family: int = 0
    mac: str = ""
    state: str = ""
    probes: int = 0
    error: str = ""
    ambiguous: bool = False


def _describe(routes) -> str:
    return "; ".join(
        "default " + " ".join(f"via {g}" for g in r.gateways) + f" dev {r.oif or '?'}"
        + (f" metric {r.metric}" if r.metric else "") for r in routes)


def find_gateway(net, ifname: str, *, probe: bool = True, timeout: float = 3.0,
                 interval: float = 0.1) -> Gateway:
    """The default route's gateway on ``ifname`` (v4, else v6) and its neighbour entry,
    resolved by probing when missing; two default routes or no MAC -> ``error``."""
    elsewhere = []
    for family in (4, 6):
        routes = [r for r in net.default_routes(family) if r.table == MAIN_TABLE]
        mine = [r for r in routes if r.oif == ifname]
        elsewhere += [r for r in routes if r.oif != ifname]
        if not mine:
            continue
        gws = sorted({g for r in mine for g in r.gateways})
        if len(gws) > 1:
            return Gateway(family=family, ambiguous=True,
                           error=f"ambiguous: {len(gws)} IPv{family} default gateways on {ifname} "
                                 f"({_describe(mine)}); katran sends everything to one MAC: "
                                 f"keep one default route or give -default_mac explicitly")
        if not gws:
            return Gateway(family=family, error=f"the IPv{family} default route on {ifname} has no gateway "
                                                f"({_describe(mine)}): give -default_mac explicitly")
        gw = gws[0]
        nb = net.neighbour(gw, ifname)
        probes = 0
        if (nb is None or not nb.usable) and probe:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                net.probe(gw, ifname)
                probes += 1
                time.sleep(interval)
                nb = net.neighbour(gw, ifname)
                if nb is not None and nb.usable:
                    break
        if nb is not None and nb.usable:
            return Gateway(gw, family, nb.mac, nb.state, probes)
        state = nb.state if nb is not None else "no entry"
        how = (f"after resolving ({probes} probes in {timeout:g} s)" if probe else "(not resolved: --no-probe)")
        return Gateway(gw, family, "", state, probes,
                       error=f"no neighbour entry for gateway {gw} on {ifname} {how}; state: {state}")
    if elsewhere:
        return Gateway(error=f"no default route via {ifname} ({_describe(elsewhere)})")
    return Gateway(error="no default route (ip route / ip -6 route show none)")
