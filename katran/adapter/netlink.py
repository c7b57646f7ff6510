"""Netlink helpers (pyroute2): interfaces, addresses, neighbours, clsact + tc BPF filters.

Every helper takes an optional ``netns`` (a name under /var/run/netns); it is never
created implicitly.  ``in_netns`` switches the calling thread into a namespace, for
calls that act on the current namespace (XDP attach through libbpf).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
from collections.abc import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from katran.errors import KernelError, NotFoundError, ValidationError

from .libbpf import ffi, libc


def _teach_pyroute2_bpf_ids() -> None:
    """pyroute2's cls_bpf options stop at TCA_BPF_FLAGS (8): add TCA_BPF_FLAGS_GEN, TCA_BPF_TAG
    and TCA_BPF_ID (uapi/linux/pkt_cls.h) so a filter's program id can be read."""
    from pyroute2.netlink.rtnl.tcmsg import sched_bpf

    names = [n for n, _ in sched_bpf.options.nla_map]
    if "TCA_BPF_ID" not in names and len(names) == 9:
        sched_bpf.options.nla_map = tuple(sched_bpf.options.nla_map) + (
            ("TCA_BPF_FLAGS_GEN", "uint32"), ("TCA_BPF_TAG", "hex"), ("TCA_BPF_ID", "uint32"))


_teach_pyroute2_bpf_ids()

CLONE_NEWNET = 0x40000000
TC_H_CLSACT = 0xFFFFFFF1
TC_PARENT = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}
ETH_P_ALL = 0x0003
NETNS_DIR = "/var/run/netns"
NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20


def netns_path(netns: str) -> str:
    """NETNS_DIR/<name> for a name; a path (``/proc/1/ns/net``) is taken as it is."""
    return netns if netns.startswith("/") else os.path.join(NETNS_DIR, netns)


def iproute(netns: str | None = None) -> IPRoute:
    """A netlink socket in ``netns`` (None: ours). Made by this thread inside the namespace:
    pyroute2's own ``IPRoute(netns=)`` forks a helper process that times out under load."""
    if netns is None:
        return IPRoute()
    with in_netns(netns):
        return IPRoute()




def _nl_error(operation: str, exc: NetlinkError) -> KernelError:
    return KernelError(operation, exc.code or errno.EIO)


@contextlib.contextmanager
def in_netns(netns: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside ``netns``, a name or a path (None: stay)."""
    if netns is None:
        yield
        return
    path = netns_path(netns)
    if not os.path.exists(path):
        raise NotFoundError("network namespace", netns)
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise KernelError(f"enter netns {netns}", ffi.errno)
        finally:
            os.close(target)
        try:
            yield
        finally:
            if libc.setns(here, CLONE_NEWNET) != 0:  # pragma: no cover - would be fatal
                raise KernelError("return to the original netns", ffi.errno)
    finally:
        os.close(here)


def ifindex(name: str, netns: str | None = None) -> int:
    """Index of interface ``name``; NotFoundError if there is none."""
    with iproute(netns) as ipr:
        found = ipr.link_lookup(ifname=name)
    if not found:
        raise NotFoundError("interface", name)
    return int(found[0])


def ifname(index: int, netns: str | None = None) -> str:
    """Name of interface ``index``."""
    with iproute(netns) as ipr:
        try:
            link = ipr.link("get", index=index)[0]
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                raise NotFoundError("interface index", index) from None
            raise _nl_error(f"get link {index}", exc) from None
    return str(link.get_attr("IFLA_IFNAME"))


def mac_address(name: str, netns: str | None = None) -> str:
    """MAC of interface ``name`` as 'aa:bb:cc:dd:ee:ff'."""
    with iproute(netns) as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise NotFoundError("interface", name)
        link = ipr.link("get", index=found[0])[0]
    mac = link.get_attr("IFLA_ADDRESS")
    if not mac:
        raise NotFoundError("MAC address of interface", name)
    return str(mac).lower()


def interface_addresses(name: str, netns: str | None = None, family: int | None = None) -> list[str]:
    """IP addresses (no prefix length) on ``name``; ``family`` 4 or 6 filters."""
    fam = {None: None, 4: socket.AF_INET, 6: socket.AF_INET6}.get(family, -1)
    if fam == -1:
        raise ValidationError("family", family, "must be 4, 6 or None")
    with iproute(netns) as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise NotFoundError("interface", name)
        msgs = ipr.addr("dump", index=found[0])
        out = []
        for m in msgs:
            if fam is not None and m["family"] != fam:
                continue
            a = m.get_attr("IFA_ADDRESS") or m.get_attr("IFA_LOCAL")
            if a:
                out.append(str(a))
    return out


def neighbour_mac(ip: str, ifname_: str, netns: str | None = None) -> str:
    """MAC of neighbour ``ip`` on ``ifname_`` from the neighbour table (e.g. the gateway)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise ValidationError("ip", ip, "not an IP address") from None
    idx = ifindex(ifname_, netns)
    fam = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    with iproute(netns) as ipr:
        for n in ipr.neigh("dump", ifindex=idx, family=fam):
            dst = n.get_attr("NDA_DST")
            mac = n.get_attr("NDA_LLADDR")
            # NUD_INCOMPLETE / NUD_FAILED entries carry no usable lladdr
            if dst and mac and ipaddress.ip_address(dst) == addr and n["state"] not in (NUD_INCOMPLETE, NUD_FAILED):
                return str(mac).lower()
    raise NotFoundError("neighbour", f"{ip} on {ifname_}")


def default_gateway(family: int = 4, netns: str | None = None) -> tuple[str, str] | None:
    """(gateway ip, interface name) of the default route, or None."""
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    with iproute(netns) as ipr:
        for r in ipr.route("dump", family=fam):
            if r["dst_len"] != 0 or r.get_attr("RTA_DST") is not None:
                continue
            gw = r.get_attr("RTA_GATEWAY")
            oif = r.get_attr("RTA_OIF")
            if gw and oif:
                name = ipr.link("get", index=oif)[0].get_attr("IFLA_IFNAME")
                return str(gw), str(name)
    return None


def _has_clsact(ipr: IPRoute, index: int) -> bool:
    for q in ipr.tc("dump", index=index):
        if q["index"] == index and q.get_attr("TCA_KIND") == "clsact":
            return True
    return False


def ensure_clsact(index: int, netns: str | None = None) -> None:
    """Add the clsact qdisc to ``index`` unless it is there already."""
    with iproute(netns) as ipr:
        if _has_clsact(ipr, index):
            return
        try:
            ipr.tc("add", "clsact", index)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _nl_error(f"add clsact to ifindex {index}", exc) from None


def remove_clsact(index: int, netns: str | None = None) -> None:
    """Delete the clsact qdisc (and with it all its filters); no error if absent."""
    with iproute(netns) as ipr:
        if not _has_clsact(ipr, index):
            return
        try:
            ipr.tc("del", "clsact", index)
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL):
                raise _nl_error(f"delete clsact of ifindex {index}", exc) from None


def _parent(direction: str) -> int:
    try:
        return TC_PARENT[direction]
    except KeyError:
        raise ValidationError("direction", direction, "must be 'ingress' or 'egress'") from None


def attach_tc_bpf(index: int, prog_fd: int, direction: str = "egress", prio: int = 1,
                  handle: int = 1, name: str = "katran", netns: str | None = None,
                  replace: bool = False) -> None:
    """Attach a SCHED_CLS program as a direct-action bpf filter on clsact (created if missing).
    ``replace``: put it in place of the filter at ``prio``/``handle`` in one netlink request
    (the filter's program is swapped, no packet goes unfiltered)."""
    parent = _parent(direction)
    ensure_clsact(index, netns)
    with iproute(netns) as ipr:
        try:
            ipr.tc("replace-filter" if replace else "add-filter", "bpf", index, handle, fd=prog_fd, name=name,
                   parent=parent, prio=prio, protocol=ETH_P_ALL, classid=1, direct_action=True)
        except NetlinkError as exc:
            raise _nl_error(f"attach tc bpf {name} to ifindex {index} {direction}", exc) from None


def detach_tc_bpf(index: int, direction: str = "egress", prio: int = 1, handle: int = 1,
                  netns: str | None = None) -> None:
    """Remove the bpf filter (``prio``/``handle``) from clsact ``direction``; no error if absent."""
    parent = _parent(direction)
    with iproute(netns) as ipr:
        if not _has_clsact(ipr, index):
            return
        try:
            ipr.tc("del-filter", "bpf", index, handle, parent=parent, prio=prio, protocol=ETH_P_ALL)
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL):
                raise _nl_error(f"detach tc bpf from ifindex {index} {direction}", exc) from None


def tc_bpf_filters(index: int, direction: str = "egress", netns: str | None = None) -> list[dict[str, object]]:
    """bpf filters on clsact ``direction``: [{'name', 'prio', 'handle', 'id' (program id)}]."""
    parent = _parent(direction)
    out: list[dict[str, object]] = []
    with iproute(netns) as ipr:
        if not _has_clsact(ipr, index):
            return out
        for f in ipr.get_filters(index=index, parent=parent):
            if f.get_attr("TCA_KIND") != "bpf":
                continue
            opts = f.get_attr("TCA_OPTIONS")
            if opts is None:
                continue
            out.append({
                "name": opts.get_attr("TCA_BPF_NAME"),
                "prio": f["info"] >> 16,
                "handle": f["handle"],
                "id": opts.get_attr("TCA_BPF_ID") or 0,
            })
    return out
