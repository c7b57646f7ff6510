"""The live sources of host facts that are not files: netlink (links, default routes,
neighbours) through pyroute2, ethtool channel counts, and the gateway probe.

``KernelNet(netns)`` is the one object the discovery asks; tests of the parsing logic
pass another object with the same methods.  Everything here acts in ``netns`` (a name
under /run/netns) or, for None, in the caller's own namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import socket
import subprocess
from typing import Iterator, Optional

import attrs
from pyroute2 import IPRoute

from katran.adapter.netlink import in_netns, iproute, netns_path
from katran.errors import KernelError, NotFoundError

INIT_NETNS = "/proc/1/ns/net"  # the initial network namespace (the BPF JIT sysctls live there)
SO_BINDTODEVICE = 25
PROBE_PORT = 9  # discard: any datagram toward the gateway makes the kernel resolve it

# neighbour states (NUD_*) whose lladdr is usable
NUD = {0x01: "INCOMPLETE", 0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY", 0x10: "PROBE",
       0x20: "FAILED", 0x40: "NOARP", 0x80: "PERMANENT"}
NUD_VALID = 0x02 | 0x04 | 0x08 | 0x10 | 0x80

def outer_netns_candidates() -> Iterator[str]:
    """Namespaces other than ours to read initial-namespace-only sysctls in: the initial
    one (/proc/1/ns/net), then those of our ancestor processes, nearest first."""
    yield INIT_NETNS
    try:
        here = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return
    pid = os.getppid()
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        path = f"/proc/{pid}/ns/net"
        try:
            if os.stat(path).st_ino != here:
                yield path
        except OSError:
            pass
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return


@attrs.frozen
class Link:
    """An interface as netlink sees it in the namespace asked."""

    name: str
    index: int
    mac: str
    kind: str = ""  # IFLA_INFO_KIND: veth, bridge, ... ("" for a physical device)
    parent_dev: str = ""  # IFLA_PARENT_DEV_NAME: virtio2, 0000:03:00.0
    parent_bus: str = ""  # IFLA_PARENT_DEV_BUS_NAME: virtio, pci
    num_rx_queues: int = 0


@attrs.frozen
class Route:
    """A default route: its gateways (several for a multipath route), device, metric, table."""

    family: int
    gateways: tuple
    oif: str
    metric: int = 0
    table: int = 254


@attrs.frozen
class Neighbour:
    ip: str
    mac: str
    state: str

    @property
    def usable(self) -> bool:
        return bool(self.mac) and self.state in ("REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT")


def _state_name(state: int) -> str:
    names = [name for bit, name in NUD.items() if state & bit]
    return "|".join(names) or "NONE"


class KernelNet:
    """Netlink and ethtool facts of one network namespace (None: the caller's)."""

    def __init__(self, netns: Optional[str] = None) -> None:
        if netns is not None and not os.path.exists(netns_path(netns)):
            raise NotFoundError("network namespace", netns)
        self.netns = netns

    def _ipr(self) -> IPRoute:
        return iproute(self.netns)

    # ------------------------------------------------------------------ links
    def link(self, ifname: str) -> Optional[Link]:
        with self._ipr() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                return None
            msg = ipr.link("get", index=found[0])[0]
        info = msg.get_attr("IFLA_LINKINFO")
        kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
        return Link(
            name=ifname, index=int(msg["index"]), mac=str(msg.get_attr("IFLA_ADDRESS") or "").lower(),
            kind=str(kind), parent_dev=str(msg.get_attr("IFLA_PARENT_DEV_NAME") or ""),
            parent_bus=str(msg.get_attr("IFLA_PARENT_DEV_BUS_NAME") or ""),
            num_rx_queues=int(msg.get_attr("IFLA_NUM_RX_QUEUES") or 0),
        )

    # ----------------------------------------------------------------- routes
    def default_routes(self, family: int) -> list[Route]:
        """Default routes (dst_len 0, unicast) of ``family`` 4 or 6 in every table but local."""
        fam = socket.AF_INET if family == 4 else socket.AF_INET6
        out = []
        with self._ipr() as ipr:
            names = {int(m["index"]): str(m.get_attr("IFLA_IFNAME")) for m in ipr.get_links()}
            for r in ipr.route("dump", family=fam):
                if r["dst_len"] != 0 or r["type"] != 1:  # RTN_UNICAST
                    continue
                table = r.get_attr("RTA_TABLE") or r["table"]
                if table == 255:  # local
                    continue
                metric = int(r.get_attr("RTA_PRIORITY") or 0)
                multipath = r.get_attr("RTA_MULTIPATH")
                if multipath:
                    hops = [(h.get_attr("RTA_GATEWAY"), names.get(h["oif"], str(h["oif"]))) for h in multipath]
                    for oif in sorted({o for _, o in hops}):
                        gws = tuple(str(g) for g, o in hops if o == oif and g)
                        out.append(Route(family, gws, oif, metric, int(table)))
                    continue
                gw = r.get_attr("RTA_GATEWAY")
                oif = names.get(int(r.get_attr("RTA_OIF") or 0), "")
                out.append(Route(family, (str(gw),) if gw else (), oif, metric, int(table)))
        return out

    # ------------------------------------------------------------- neighbours
    def neighbour(self, ip: str, ifname: str) -> Optional[Neighbour]:
        addr = ipaddress.ip_address(ip)
        fam = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        with self._ipr() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                return None
            for n in ipr.neigh("dump", ifindex=found[0], family=fam):
                dst = n.get_attr("NDA_DST")
                if dst and ipaddress.ip_address(dst) == addr:
                    mac = str(n.get_attr("NDA_LLADDR") or "").lower()
                    return Neighbour(str(addr), mac, _state_name(int(n["state"])))
        return None

    def probe(self, ip: str, ifname: str) -> None:
        """Send one UDP datagram to ``ip`` out of ``ifname``: the kernel resolves its address
        (ARP / neighbour solicitation) to send it.  Errors (no route yet, ...) are ignored."""
        addr = ipaddress.ip_address(ip)
        fam = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        with in_netns(self.netns):
            s = socket.socket(fam, socket.SOCK_DGRAM)
        with contextlib.closing(s):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode())
            dest = (str(addr), PROBE_PORT)
            if fam == socket.AF_INET6:
                dest = (str(addr), PROBE_PORT, 0, socket.if_nametoindex(ifname) if self.netns is None
                        else self._index(ifname))
            with contextlib.suppress(OSError):
                s.sendto(b"katran-preflight", dest)

    def _index(self, ifname: str) -> int:
        link = self.link(ifname)
        if link is None:
            raise NotFoundError("interface", ifname)
        return link.index

    # --------------------------------------------------------------- channels
    def channels(self, ifname: str) -> Optional[tuple[int, str]]:
        """(receive queues in use, how it was read): ethtool through pyroute2, else the
        ``ethtool -l`` command; None when the driver reports no channels."""
        got = self._channels_pyroute2(ifname)
        if got is not None:
            return got, "ethtool (pyroute2)"
        got = self._channels_command(ifname)
        if got is not None:
            return got, "ethtool -l"
        return None

    def _channels_pyroute2(self, ifname: str) -> Optional[int]:
        try:
            from pyroute2 import Ethtool
        except ImportError:  # pragma: no cover - pyroute2 without ethtool
            return None
        try:
            with in_netns(self.netns):
                eth = Ethtool()
            try:
                ch = eth.get_channels(ifname)
            finally:
                eth.close()
        except Exception:  # pyroute2's own errors (NoSuchDevice, ...), EOPNOTSUPP: fall back
            return None
        n = int(ch.combined_count) + int(ch.rx_count)
        return n or None

    def _channels_command(self, ifname: str) -> Optional[int]:
        exe = shutil.which("ethtool")
        if exe is None:
            return None
        argv = [exe, "-l", ifname]
        if self.netns is not None:
            argv = ["nsenter", f"--net={netns_path(self.netns)}", "--", *argv]
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if res.returncode != 0:
            return None
        return parse_ethtool_channels(res.stdout)


def parse_ethtool_channels(text: str) -> Optional[int]:
    """Receive queues in use (RX + Combined of "Current hardware settings") from ``ethtool -l``."""
    _, sep, current = text.partition("Current hardware settings:")
    if not sep:
        return None
    total = 0
    for key in ("RX", "Combined"):
        m = re.search(rf"^\s*{key}:\s*(\d+)", current, re.MULTILINE)
        if m:
            total += int(m.group(1))
    return total or None
