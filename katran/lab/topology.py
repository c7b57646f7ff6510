"""The lab topology: client, router, load balancer "on a stick", reals — network namespaces.

::

    client ──── router ──── lb        (VIP prefixes routed to the lb; lb XDP_TXes back)
                  ├──────── real1     (decap XDP, VIPs on lo, answers the client directly)
                  └──────── real2 ...

Every host is a namespace ``<prefix>-<role>`` with one interface ``eth0``; the router
has ``to-<role>`` toward each. ``build()`` makes it, ``Topology.teardown()`` / ``teardown(prefix)``
removes it (namespaces, veth pairs, and the bpffs pin directory ``pin_root``).
Reusable as a pytest fixture::

    with topology(TopologySpec(prefix="kte1")) as topo: ...
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import attrs

from katran.adapter import netlink
from katran.errors import KatranError, NotFoundError, ValidationError

from . import labnet
from .netns import inside

STATE_DIR = Path("/run/katran-lab")
BPFFS = Path("/sys/fs/bpf")


@attrs.frozen
class TopologySpec:
    """What to build. ``prefix`` names the namespaces (keep it short: ≤ 8 chars)."""

    prefix: str = "klab"
    n_reals: int = 2
    vip4_net: str = "10.100.1.0/24"
    vip6_net: str = "fc00:100::/64"
    client_mtu: int = 1500
    # inside the "data centre" there is room for the encapsulation overhead
    inner_mtu: int = 1600

    def __attrs_post_init__(self) -> None:
        if not self.prefix or len(self.prefix) > 8 or not self.prefix.replace("-", "").isalnum():
            raise ValidationError("prefix", self.prefix, "1-8 letters/digits")
        if not 1 <= self.n_reals <= 16:
            raise ValidationError("n_reals", self.n_reals, "expected 1..16")


@attrs.frozen
class Host:
    """A host namespace with its one interface ``eth0`` and the router's end facing it."""

    role: str
    netns: str
    ifname: str
    mac: str
    ip4: str
    ip6: str
    gw4: str  # the router's addresses on this link
    gw6: str
    router_if: str
    router_mac: str


@attrs.frozen
class Topology:
    spec: TopologySpec
    router: str  # namespace of the router
    client: Host
    lb: Host
    reals: tuple
    client_extra4: str  # a second client address (for source-prefix tests)

    @property
    def prefix(self) -> str:
        return self.spec.prefix

    @property
    def namespaces(self) -> list[str]:
        return [self.client.netns, self.router, self.lb.netns, *(r.netns for r in self.reals)]

    @property
    def pin_root(self) -> Path:
        """bpffs directory for everything the lab pins (bpffs is shared by all netns)."""
        return BPFFS / f"katran-lab-{self.prefix}"

    def host(self, role: str) -> Host:
        for h in (self.client, self.lb, *self.reals):
            if h.role == role:
                return h
        raise ValidationError("role", role, "no such host in the topology")

    # -------------------------------------------------------------- processes
    def argv(self, netns: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run in ``netns`` (only the network namespace changes: bpffs pins stay visible)."""
        return ["nsenter", f"--net={labnet.NETNS_DIR / netns}", "--", *argv]

    def run(self, netns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
            env: Optional[dict] = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(netns, argv), capture_output=True, text=True, check=check,
                              timeout=timeout, env=env)

    def popen(self, netns: str, argv: Sequence[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(netns, argv), **kw)

    def socket(self, netns: str, family: int, type_: int) -> socket.socket:
        """A socket living in ``netns`` (usable from any thread afterwards)."""
        with inside(netns):
            return socket.socket(family, type_)

    # ---------------------------------------------------------------- facts
    def gateway_mac(self, timeout: float = 3.0) -> str:
        """The router's MAC as the load balancer sees it: resolve the default gateway, read the neighbour table."""
        gw = self.lb.gw4
        deadline = time.monotonic() + timeout
        while True:
            try:
                return netlink.neighbour_mac(gw, self.lb.ifname, self.lb.netns)
            except NotFoundError:
                pass
            if time.monotonic() > deadline:
                raise KatranError(f"gateway {gw} of {self.lb.netns} did not resolve")
            # any packet toward the gateway triggers ARP
            with contextlib.closing(self.socket(self.lb.netns, socket.AF_INET, socket.SOCK_DGRAM)) as s:
                s.sendto(b"arp", (gw, 9))
            time.sleep(0.05)

    def to_dict(self) -> dict:
        return attrs.asdict(self)

    def save(self, state_dir: Path = STATE_DIR) -> Path:
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / f"{self.prefix}.json"
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def teardown(self) -> list[str]:
        return teardown(self.prefix)

    def describe(self) -> str:
        lines = [f"topology {self.prefix}: VIP prefixes {self.spec.vip4_net}, {self.spec.vip6_net} routed to the lb"]
        lines.append(f"  router   netns {self.router}")
        for h in (self.client, self.lb, *self.reals):
            lines.append(f"  {h.role:<8} netns {h.netns:<14} {h.ifname} {h.mac} {h.ip4} {h.ip6}"
                         f"  <-> router {h.router_if} {h.router_mac} {h.gw4} {h.gw6}")
        lines.append(f"  client also has {self.client_extra4}")
        return "\n".join(lines)


def _link_addrs(role_index: int, kind: str) -> tuple[str, str, str, str]:
    """(host v4, router v4, host v6, router v6) of a link; reals get 10.200.<i>.0/24."""
    if kind == "real":
        return (f"10.200.{role_index}.2", f"10.200.{role_index}.1",
                f"fc00:200:{role_index}::2", f"fc00:200:{role_index}::1")
    return (f"10.10.{role_index}.2", f"10.10.{role_index}.1", f"fc00:10:{role_index}::2", f"fc00:10:{role_index}::1")


_ROUTER_SYSCTLS = {
    "net.ipv4.ip_forward": 1,
    "net.ipv6.conf.all.forwarding": 1,
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
    "net.ipv6.conf.all.accept_dad": 0,
    "net.ipv6.conf.default.accept_dad": 0,
}
# a real receives (decapsulated) packets from clients it has no route to via eth0 in
# rp_filter's sense, and answers from the VIP on lo: reverse-path filtering off
_HOST_SYSCTLS = {"net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0,
                 # no duplicate address detection (link-locals usable at once)
                 "net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0}


def build(spec: TopologySpec = TopologySpec()) -> Topology:
    """Create the namespaces and links of ``spec``; on failure everything made is removed."""
    p = spec.prefix
    leftovers = labnet.list_netns(p + "-")
    if leftovers:
        raise KatranError(f"namespaces of a previous lab '{p}' exist ({', '.join(leftovers)}): "
                          f"run `katran-lab down --prefix {p}` first")
    router = f"{p}-router"
    made: list[str] = []
    try:
        labnet.create_netns(router)
        made.append(router)
        labnet.set_sysctls(router, _ROUTER_SYSCTLS)
        links = [("client", 1, "link", spec.client_mtu), ("lb", 2, "link", spec.inner_mtu)]
        links += [(f"real{i}", i, "real", spec.inner_mtu) for i in range(1, spec.n_reals + 1)]
        hosts = {}
        for role, idx, kind, mtu in links:
            ns = f"{p}-{role}"
            labnet.create_netns(ns)
            made.append(ns)
            labnet.set_sysctls(ns, _HOST_SYSCTLS)
            h4, r4, h6, r6 = _link_addrs(idx, kind)
            rif = f"to-{role}"
            labnet.veth_pair(ns, "eth0", router, rif, mtu=mtu)
            host_end = labnet.configure(ns, "eth0", [f"{h4}/24", f"{h6}/64"])
            router_end = labnet.configure(router, rif, [f"{r4}/24", f"{r6}/64"])
            labnet.set_sysctls(router, {f"net.ipv4.conf.{rif}.rp_filter": 0})
            labnet.set_sysctls(ns, {"net.ipv4.conf.eth0.rp_filter": 0})
            labnet.disable_tx_checksum(ns, "eth0")
            labnet.add_route(ns, "default", r4)
            labnet.add_route(ns, "default6", r6)
            hosts[role] = Host(role, ns, "eth0", host_end.mac, h4, h6, r4, r6, rif, router_end.mac)
        lb = hosts["lb"]
        labnet.add_route(router, spec.vip4_net, lb.ip4)
        labnet.add_route(router, spec.vip6_net, lb.ip6)
        # the lb sends its XDP_TX frames back to the router: a veth peer needs an XDP program to get them
        labnet.attach_xdp_pass(router, lb.router_if)
        extra = "10.10.1.66"
        labnet.configure(hosts["client"].netns, "eth0", [f"{extra}/24"])
        return Topology(spec, router, hosts["client"], lb,
                        tuple(hosts[f"real{i}"] for i in range(1, spec.n_reals + 1)), extra)
    except BaseException:
        labnet.remove_all(reversed(made))
        raise


def teardown(prefix: str, state_dir: Path = STATE_DIR) -> list[str]:
    """Remove the namespaces ``<prefix>-*``, the pin directory and the state file; returns what went."""
    removed = labnet.remove_all(labnet.list_netns(prefix + "-"))
    pins = BPFFS / f"katran-lab-{prefix}"
    if pins.exists():
        shutil.rmtree(pins, ignore_errors=True)
        removed.append(str(pins))
    if state_dir.is_dir():
        for f in [state_dir / f"{prefix}.json", *state_dir.glob(f"{prefix}-*")]:  # state, server log, socket
            if f.exists():
                f.unlink()
                removed.append(str(f))
    return removed


@contextlib.contextmanager
def topology(spec: TopologySpec = TopologySpec()) -> Iterator[Topology]:
    """Build ``spec``; tear it down on exit (also on error or Ctrl-C)."""
    topo = build(spec)
    try:
        yield topo
    finally:
        teardown(spec.prefix)


def load_saved(prefix: str, state_dir: Path = STATE_DIR) -> Optional[dict]:
    path = state_dir / f"{prefix}.json"
    return json.loads(path.read_text()) if path.exists() else None


def ensure_bpffs() -> None:
    """Mount bpffs at /sys/fs/bpf when it is not mounted."""
    from katran.adapter import bpf

    bpf.ensure_bpffs()


def pids_alive(pids: Sequence[int]) -> list[int]:
    return [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
