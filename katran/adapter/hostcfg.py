"""Host configuration for the real servers: addresses on an interface, rp_filter (pyroute2, /proc/sys)."""

from __future__ import annotations

import errno
import ipaddress
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from katran.errors import KernelError, NotFoundError

_SYS_CONF = Path("/proc/sys/net/ipv4/conf")


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NotFoundError("interface", ifname)
    return found[0]


def _host(addr: str) -> tuple[str, int]:
    ip = ipaddress.ip_address(addr)
    return str(ip), 32 if ip.version == 4 else 128


def add_host_address(ifname: str, addr: str) -> bool:
    """Put ``addr`` (/32 or /128) on ``ifname``; False when it was there already."""
    ip, plen = _host(addr)
    with IPRoute() as ipr:
        idx = _index(ipr, ifname)
        try:
            ipr.addr("add", index=idx, address=ip, prefixlen=plen)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            raise KernelError(f"add address {ip}/{plen} to {ifname}", exc.code) from None
    return True


def del_host_address(ifname: str, addr: str) -> bool:
    """Remove ``addr`` from ``ifname``; False when it was not there."""
    ip, plen = _host(addr)
    with IPRoute() as ipr:
        idx = _index(ipr, ifname)
        try:
            ipr.addr("del", index=idx, address=ip, prefixlen=plen)
        except NetlinkError as exc:
            if exc.code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                return False
            raise KernelError(f"delete address {ip}/{plen} from {ifname}", exc.code) from None
    return True


def host_addresses(ifname: str) -> list[str]:
    """Addresses on ``ifname`` without prefix length."""
    with IPRoute() as ipr:
        idx = _index(ipr, ifname)
        return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx)]


def rp_filter(ifname: str) -> dict[str, int]:
    """rp_filter of ``all`` and ``ifname`` (the kernel applies the larger one)."""
    out = {}
    for name in ("all", ifname):
        path = _SYS_CONF / name / "rp_filter"
        if not path.exists():
            raise NotFoundError("interface", name)
        out[name] = int(path.read_text())
    return out


def set_rp_filter(ifname: str, value: int) -> None:
    """Write rp_filter of ``ifname`` (0 off, 1 strict, 2 loose)."""
    path = _SYS_CONF / ifname / "rp_filter"
    try:
        path.write_text(str(value))
    except OSError as exc:
        raise KernelError(f"write {path}", exc.errno or errno.EIO) from None
