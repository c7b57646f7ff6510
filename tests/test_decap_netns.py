"""Decap on a real: an encapsulated packet reaches a socket bound to the VIP (netns)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.netns,
]

VIP4, VIP6, PORT = "10.100.0.1", "fd00:100::1", 7777
CLIENT4, CLIENT6 = "192.0.2.10", "2001:db8::10"
ETH_P_ALL = 0x0003


@pytest.fixture(scope="module")
def decap_obj(tmp_path_factory):
    from katran.build import BPF_DIR, compile_one

    return compile_one(BPF_DIR / "decap.bpf.c", tmp_path_factory.mktemp("decapnet"))


@pytest.fixture
def lab():
    """a = the load balancer side (sends encapsulated frames), b = the real."""
    from katran.lab import netns

    pin_root = Path(f"/sys/fs/bpf/katran-test-{os.getpid()}")
    with netns.veth_link("ktdc") as link:
        try:
            yield link, pin_root
        finally:
            shutil.rmtree(pin_root, ignore_errors=True)


def _inject(link, frame: bytes) -> None:
    from katran.lab import netns

    with netns.inside(link.a.netns):
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
            s.bind((link.a.ifname, 0))
            s.send(frame)


def _frames(link):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    a, b = link.a, link.b
    eth = Ether(src=a.mac, dst=b.mac)
    inner4 = IP(src=CLIENT4, dst=VIP4) / UDP(sport=40000, dport=PORT)
    inner6 = IPv6(src=CLIENT6, dst=VIP6) / UDP(sport=40000, dport=PORT)
    return {
        "ipip": bytes(eth / IP(src=a.ip4, dst=b.ip4) / inner4 / b"ipip"),
        "ip6ip6": bytes(eth / IPv6(src=a.ip6, dst=b.ip6) / inner6 / b"ip6ip6"),
        "4in6": bytes(eth / IPv6(src=a.ip6, dst=b.ip6) / inner4 / b"4in6"),
    }


def _listen(netns_name: str):
    from katran.lab import netns

    with netns.inside(netns_name):
        s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s4.bind((VIP4, PORT))
        s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s6.bind((VIP6, PORT))
    for s in (s4, s6):
        s.settimeout(0.5)
    return s4, s6


def _recv(s):
    try:
        data, peer = s.recvfrom(2048)
        return data, peer[0]
    except socket.timeout:
        return None


def test_encapsulated_packets_reach_the_vip_socket(lab, decap_obj):
    from katran import decap
    from katran.adapter import bpf, hostcfg
    from katran.lab import netns

    link, pin_root = lab
    b = link.b
    with netns.inside(b.netns):
        st = decap.install(b.ifname, [VIP4, VIP6], prog_path=decap_obj, pin_root=pin_root, fix_rp_filter=0)
        assert st.newly_attached and set(st.vips_added) == {VIP4, VIP6}
        assert st.rp_filter[b.ifname] == 0 and st.warnings == ()
        assert {VIP4, VIP6} <= set(hostcfg.host_addresses("lo"))
        again = decap.install(b.ifname, [VIP4, VIP6], prog_path=decap_obj, pin_root=pin_root)
        assert not again.newly_attached and again.vips_added == () and again.prog_id == st.prog_id
        assert bpf.xdp_attached_prog_id(b.ifindex) == st.prog_id
    s4, s6 = _listen(b.netns)
    try:
        frames = _frames(link)
        _inject(link, frames["ipip"])
        assert _recv(s4) == (b"ipip", CLIENT4)
        _inject(link, frames["ip6ip6"])
        assert _recv(s6) == (b"ip6ip6", CLIENT6)
        _inject(link, frames["4in6"])
        assert _recv(s4) == (b"4in6", CLIENT4)
        counters = decap.stats(b.ifname, pin_root=pin_root)
        assert (counters.decap_v4, counters.decap_v6, counters.total) == (1, 2, 3)

        # uninstalled: the same frames are no longer decapsulated, the VIPs are gone
        with netns.inside(b.netns):
            assert decap.uninstall(b.ifname, [VIP4, VIP6], pin_root=pin_root)
            assert bpf.xdp_attached_prog_id(b.ifindex) == 0
            assert VIP4 not in hostcfg.host_addresses("lo")
            assert not decap.uninstall(b.ifname, [VIP4, VIP6], pin_root=pin_root)
        _inject(link, frames["ipip"])
        assert _recv(s4) is None
    finally:
        s4.close()
        s6.close()


def test_strict_rp_filter_is_reported(lab, decap_obj):
    from katran import decap
    from katran.adapter import hostcfg
    from katran.lab import netns

    link, pin_root = lab
    b = link.b
    with netns.inside(b.netns):
        hostcfg.set_rp_filter(b.ifname, 1)
        try:
            st = decap.install(b.ifname, [], prog_path=decap_obj, pin_root=pin_root)
            assert st.rp_filter[b.ifname] == 1
            assert any("rp_filter is strict" in w for w in st.warnings)
        finally:
            decap.uninstall(b.ifname, pin_root=pin_root)


def test_stats_of_missing_install(lab):
    from katran import decap
    from katran.errors import NotFoundError

    link, pin_root = lab
    with pytest.raises(NotFoundError, match=link.b.ifname):
        decap.stats(link.b.ifname, pin_root=pin_root)
