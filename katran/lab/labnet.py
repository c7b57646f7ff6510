"""Kernel side of the lab topology (pyroute2): named namespaces, veth pairs, routes.

Extends ``katran.lab.netns`` (which builds throw-away two-namespace links) with
what a multi-host topology needs: namespaces with chosen names, veth pairs whose
ends get chosen names inside their namespaces, static routes and a dummy XDP
program for veth peers (frames sent with XDP_TX reach a veth peer only when that
peer has an XDP program).  Neighbour lookups are ``katran.adapter.netlink``'s.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
from pathlib import Path
from typing import Iterable, Optional

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from katran.errors import KernelError, NotFoundError

from .netns import NETNS_DIR, add_netns, configure, del_netns, inside, iproute, sysctl, unique_name

XDP_PASS_OBJECT = Path(__file__).resolve().parents[1] / "bpf" / "obj" / "xdp_pass.bpf.o"


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_netns(prefix: str = "") -> list[str]:
    """Names under ``NETNS_DIR`` starting with ``prefix``."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def create_netns(name: str) -> None:
    """Create namespace ``name`` (KernelError EEXIST when it exists)."""
    if netns_exists(name):
        raise KernelError(f"create netns {name}", errno.EEXIST, "it exists already")
    add_netns(name)
    with iproute(name) as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")


def remove_netns(name: str) -> bool:
    """Remove namespace ``name`` (its veth ends go with it); False when absent."""
    if not netns_exists(name):
        return False
    with contextlib.suppress(OSError):
        del_netns(name)
    return True


def veth_pair(ns_a: str, if_a: str, ns_b: str, if_b: str, mtu: int = 1500) -> None:
    """A veth pair with end ``if_a`` in ``ns_a`` and ``if_b`` in ``ns_b`` (both down, no address)."""
    tmp_a, tmp_b = unique_name("klv"), unique_name("klv")
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=tmp_a, kind="veth", peer=tmp_b)
        except NetlinkError as exc:
            raise KernelError(f"create veth {if_a}/{if_b}", exc.code) from None
        try:
            for tmp, ns in ((tmp_a, ns_a), (tmp_b, ns_b)):
                idx = ipr.link_lookup(ifname=tmp)[0]
                ipr.link("set", index=idx, net_ns_fd=ns)
        except Exception:
            with contextlib.suppress(Exception):
                ipr.link("del", ifname=tmp_a)
            raise
    for tmp, name, ns in ((tmp_a, if_a, ns_a), (tmp_b, if_b, ns_b)):
        with iproute(ns) as ipr:
            idx = ipr.link_lookup(ifname=tmp)[0]
            ipr.link("set", index=idx, ifname=name, mtu=mtu)


def add_route(ns: str, dst: str, gateway: str) -> None:
    """Route ``dst`` (prefix, or ``default``/``default6``) via ``gateway`` in ``ns``."""
    gw = ipaddress.ip_address(gateway)
    family = socket.AF_INET6 if gw.version == 6 else socket.AF_INET
    kw = {"family": family, "gateway": str(gw)}
    if dst not in ("default", "default6"):
        net = ipaddress.ip_network(dst, strict=False)
        kw.update(dst=str(net.network_address), dst_len=net.prefixlen)
    with iproute(ns) as ipr:
        try:
            ipr.route("add", **kw)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise KernelError(f"route {dst} via {gateway} in {ns}", exc.code) from None


def add_local_address(ns: str, ifname: str, addr: str) -> None:
    """A host address (/32, /128) on ``ifname`` (e.g. a VIP on ``lo``); no-op if present."""
    ip = ipaddress.ip_address(addr)
    configure(ns, ifname, [f"{ip}/{32 if ip.version == 4 else 128}"])


def set_sysctls(ns: str, values: dict) -> None:
    for key, value in values.items():
        sysctl(ns, key, str(value))


def attach_xdp_pass(ns: str, ifname: str, obj_path: Optional[os.PathLike] = None) -> int:
    """Attach the empty ``xdp_pass`` program to ``ifname`` in ``ns``; returns its id.

    The attachment keeps the program alive; it goes away with the interface.
    """
    from katran.adapter import bpf

    spec = bpf.ObjectSpec.open(obj_path or XDP_PASS_OBJECT)
    try:
        obj = spec.load()
    finally:
        spec.close()
    try:
        prog = obj.program("xdp_pass")
        with inside(ns):
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=ifname)[0]
            prog.attach_xdp(idx, "native", replace=True)
        return prog.id
    finally:
        obj.close()


def xdp_prog_id(ns: str, ifname: str) -> int:
    """Id of the native XDP program on ``ifname`` in ``ns`` (0: none)."""
    from katran.adapter import bpf

    with inside(ns):
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise NotFoundError("interface", f"{ifname} in {ns}")
        return bpf.xdp_attached_prog_id(found[0], "native")


def remove_all(names: Iterable[str]) -> list[str]:
    """Remove the namespaces that exist among ``names``; returns those removed."""
    return [n for n in names if remove_netns(n)]


def disable_tx_checksum(ns: str, ifname: str) -> None:
    """Compute checksums in software on ``ifname`` (ethtool -K tx off).

    A veth otherwise hands on packets with only a partial (pseudo-header) checksum;
    once an XDP program turns such a packet into a frame (XDP_TX, decap) that state
    is lost and the receiver sees a bad checksum.
    """
    from pyroute2 import Ethtool

    with inside(ns):
        eth = Ethtool()
        try:
            feats = eth.get_features(ifname)
            for name in ("tx-checksum-ip-generic", "tx-checksum-ipv4", "tx-checksum-ipv6", "tx-checksum-sctp"):
                if name in feats.features:
                    feats.features[name].enable = False
            eth.set_features(ifname, feats)
        finally:
            eth.close()
