"""Network namespaces and veth pairs for the lab and the tests (pyroute2), always cleaned up.

``veth_link()`` builds two namespaces joined by a veth pair with addresses on both
ends; ``inside(netns)`` switches the *calling thread* into a namespace (sockets,
netlink and BPF attach calls made there act on that namespace); ``run()`` runs a
command in a namespace.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import subprocess
import threading
from pathlib import Path
from typing import Iterator, Sequence

import attrs
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from katran.adapter.netlink import NETNS_DIR as _NETNS_DIR, in_netns, iproute as _iproute
from katran.errors import KernelError, NotFoundError

NETNS_DIR = Path(_NETNS_DIR)  # where named namespaces live (the one constant, from the adapter)

_counter = itertools.count()
_lock = threading.Lock()


def iproute(netns: str) -> IPRoute:
    """Netlink socket in the existing namespace ``netns`` (never creates it)."""
    return _iproute(netns)


def add_netns(name: str) -> None:
    # iproute2, not pyroute2's netns.create: that forks a helper process which a loaded
    # machine can make time out ("child process is dead")
    res = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if res.returncode != 0:
        code = errno.EEXIST if "exists" in res.stderr else errno.EIO
        raise KernelError(f"create netns {name}", code, res.stderr.strip())


def del_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True)


def inside(netns: str):
    """Run the body with the calling thread in ``netns`` (a name under ``NETNS_DIR``)."""
    return in_netns(netns)


def run(netns: str, argv: Sequence[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    """``ip netns exec netns argv...`` (output captured as text unless told otherwise)."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(["ip", "netns", "exec", netns, *argv], check=check, **kw)


def popen(netns: str, argv: Sequence[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", netns, *argv], **kw)


def sysctl(netns: str, key: str, value: str) -> None:
    """Write /proc/sys/<key with dots as slashes> inside ``netns``."""
    path = "/proc/sys/" + key.replace(".", "/")
    with inside(netns):
        # /proc/sys/net follows the namespace of the opening thread
        with open(path, "w") as f:
            f.write(value)


def unique_name(prefix: str) -> str:
    with _lock:
        n = next(_counter)
    return f"{prefix}{os.getpid() % 100000}{n}"


@attrs.frozen
class VethEnd:
    """One end of a veth pair: its namespace, name, index, MAC and addresses (with prefix)."""

    netns: str
    ifname: str
    ifindex: int
    mac: str
    addrs: tuple

    @property
    def ip4(self) -> str | None:
        return next((a.split("/")[0] for a in self.addrs if ":" not in a), None)

    @property
    def ip6(self) -> str | None:
        return next((a.split("/")[0] for a in self.addrs if ":" in a), None)


@attrs.frozen
class VethLink:
    a: VethEnd
    b: VethEnd


IFA_F_NODAD = 0x02  # IPv6 addresses usable at once, no duplicate address detection


def configure(ns: str, ifname: str, addrs: Sequence[str]) -> VethEnd:
    """Put ``addrs`` (``a.b.c.d/len``, ``x::y/len``) on ``ifname`` and bring it up."""
    with iproute(ns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise NotFoundError("interface", f"{ifname} in {ns}")
        idx = found[0]
        for a in addrs:
            addr, plen = a.split("/")
            flags = IFA_F_NODAD if ":" in addr else 0
            try:
                ipr.addr("add", index=idx, address=addr, prefixlen=int(plen), flags=flags)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise KernelError(f"add {a} to {ifname} in {ns}", exc.code) from None
        ipr.link("set", index=idx, state="up")
        mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
    return VethEnd(ns, ifname, idx, str(mac).lower(), tuple(addrs))



@contextlib.contextmanager
def netns(prefix: str = "kt") -> Iterator[str]:
    """A fresh, empty network namespace, removed on exit."""
    name = unique_name(prefix)
    add_netns(name)
    try:
        yield name
    finally:
        del_netns(name)


@contextlib.contextmanager
def veth_link(
    prefix: str = "kt",
    addrs_a: Sequence[str] = ("10.99.0.1/24", "fd99::1/64"),
    addrs_b: Sequence[str] = ("10.99.0.2/24", "fd99::2/64"),
    mtu: int = 1500,
) -> Iterator[VethLink]:
    """Two new namespaces joined by a veth pair (``<ns>-a`` / ``<ns>-b`` ends), both up.

    Everything (namespaces, hence the veth pair) is removed on exit, also on error.
    """
    with netns(prefix + "a") as ns_a, netns(prefix + "b") as ns_b:
        if_a, if_b = "veth-" + ns_a[-8:], "veth-" + ns_b[-8:]
        with IPRoute() as ipr:
            ipr.link("add", ifname=if_a, kind="veth", peer=if_b)
            try:
                for ifname, ns in ((if_a, ns_a), (if_b, ns_b)):
                    idx = ipr.link_lookup(ifname=ifname)[0]
                    ipr.link("set", index=idx, net_ns_fd=ns, mtu=mtu)
            except Exception:
                with contextlib.suppress(Exception):
                    ipr.link("del", ifname=if_a)
                raise
        yield VethLink(configure(ns_a, if_a, addrs_a), configure(ns_b, if_b, addrs_b))
