"""Healthcheck forwarding on the wire: probes with SO_MARK leave encapsulated toward their real."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from katran.lab.services import Capture
from conftest import skip_kernel_module

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.netns,
]

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "katran" / "lab" / "examples" / "hc_it_client.py"
VIP4, VIP6, PORT = "10.100.0.1", "fd00:100::1", 5353
# somark -> real: two v4 reals, one v6 real for a v4 probe (4in6), one v6 real for the v6 VIP
REALS = {1: "10.200.0.1", 2: "10.200.0.2", 3: "fd00:200::3", 4: "fd00:200::4"}


@pytest.fixture(scope="module")
def hc_obj(tmp_path_factory):
    from katran.build import BPF_DIR, compile_one

    return compile_one(BPF_DIR / "healthchecking.bpf.c", tmp_path_factory.mktemp("hcnet"))


@pytest.fixture
def lab():
    """a = the LB host sending probes, b = its gateway (capture side)."""
    from katran.lab import netns

    with netns.veth_link("kthc") as link:
        ns = link.a.netns
        netns.run(ns, ["ip", "route", "add", "10.100.0.0/24", "via", link.b.ip4])
        netns.run(ns, ["ip", "-6", "route", "add", "fd00:100::/64", "via", link.b.ip6])
        yield link


def _probes(frames: list[bytes]) -> list[dict]:
    """Decode encapsulated probes: outer family/src/dst, inner dst and payload."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    out = []
    for raw in frames:
        eth = Ether(raw)
        outer = eth.payload
        if not isinstance(outer, (IP, IPv6)):
            continue
        proto = outer.proto if isinstance(outer, IP) else outer.nh
        if proto not in (4, 41):
            continue
        inner = outer.payload
        if UDP not in inner:
            continue
        out.append({
            "eth_dst": eth.dst, "eth_src": eth.src, "outer_v": outer.version, "proto": proto,
            "outer_src": outer.src, "outer_dst": outer.dst, "inner_v": inner.version,
            "inner_dst": inner.dst, "dport": inner[UDP].dport, "payload": bytes(inner[UDP].payload),
        })
    return out


def _client(netns_name: str, vip: str, marks: list[int], count: int = 2) -> None:
    from katran.lab import netns

    argv = [sys.executable, str(CLIENT), "--vip", vip, "--port", str(PORT), "--count", str(count)]
    for m in marks:
        argv += ["--mark", str(m)]
    res = netns.run(netns_name, argv)
    assert f"sent {count * len(marks)} probes" in res.stdout


def test_probes_are_encapsulated_toward_their_real(lab, hc_obj):
    from katran.healthcheck import HcManager

    a, b = lab.a, lab.b
    hc = HcManager(interface=a.ifname, gateway_mac=b.mac, prog_path=hc_obj, netns=a.netns)
    hc.start()
    try:
        # discovered from the interface
        assert (str(hc.src_v4), str(hc.src_v6)) == (a.ip4, a.ip6)
        for somark, real in REALS.items():
            hc.add_dst(somark, real)
        cap = Capture(b.netns, b.ifname)
        _client(a.netns, VIP4, [1, 2, 3])
        _client(a.netns, VIP6, [4])
        _client(a.netns, VIP4, [99], count=1)  # unknown mark: leaves untouched
        probes = _probes([frame for _, frame in cap.stop()])
        stats = hc.stats()
    finally:
        hc.close()

    by_mark: dict[int, list[dict]] = {}
    for p in probes:
        mark = int(p["payload"].split(b"mark=")[1].split()[0])
        by_mark.setdefault(mark, []).append(p)
    assert sorted(by_mark) == [1, 2, 3, 4], probes
    for mark, real in REALS.items():
        got = by_mark[mark]
        assert len(got) == 2
        for p in got:
            v6_real = ":" in real
            assert p["outer_dst"] == real
            assert p["outer_src"] == (a.ip6 if v6_real else a.ip4)
            assert p["outer_v"] == (6 if v6_real else 4)
            assert p["inner_dst"] == (VIP6 if mark == 4 else VIP4)
            assert p["proto"] == (41 if mark == 4 else 4)
            assert p["dport"] == PORT
            assert (p["eth_dst"], p["eth_src"]) == (b.mac, a.mac)
    assert stats.processed == 8
    assert stats.skipped >= 1  # the mark-99 probe (and any unmarked traffic)


def test_clsact_is_reused_and_filter_removed(lab, hc_obj):
    from katran.adapter import netlink
    from katran.healthcheck import HC_FILTER_NAME, HcManager

    a, b = lab.a, lab.b
    netlink.ensure_clsact(a.ifindex, netns=a.netns)  # present before: reused silently
    hc = HcManager(interface=a.ifname, gateway_mac=b.mac, prog_path=hc_obj, netns=a.netns)
    hc.start()
    try:
        filters = netlink.tc_bpf_filters(a.ifindex, "egress", netns=a.netns)
        assert any(HC_FILTER_NAME in str(f["name"]) for f in filters), filters
    finally:
        hc.close()
    assert not any(HC_FILTER_NAME in str(f["name"]) for f in netlink.tc_bpf_filters(a.ifindex, "egress", netns=a.netns))


def test_tunnel_mode(lab, hc_obj):
    """Katran's tunnel mode: the program sets the tunnel key, ipip0 / ipip60 encapsulate."""
    from katran.lab import netns
    from katran.healthcheck import HcManager

    a, b = lab.a, lab.b
    for argv in (["ip", "link", "add", "ipip0", "type", "ipip", "external"],
                 ["ip", "link", "add", "ipip60", "type", "ip6tnl", "external"]):
        res = netns.run(a.netns, argv, check=False)
        if res.returncode != 0:
            skip_kernel_module("ipip/ip6tnl", f"Katran's tunnel-device hc mode: {res.stderr.strip()}")
        netns.run(a.netns, ["ip", "link", "set", argv[3], "up"])
    netns.run(a.netns, ["ip", "route", "add", "10.200.0.0/24", "via", b.ip4])
    hc = HcManager(interface=a.ifname, encap="tunnel", prog_path=hc_obj, netns=a.netns)
    hc.start()
    try:
        hc.add_dst(1, REALS[1])
        cap = Capture(b.netns, b.ifname)
        _client(a.netns, VIP4, [1])
        probes = _probes([frame for _, frame in cap.stop()])
    finally:
        hc.close()
    assert [p["outer_dst"] for p in probes] == [REALS[1]] * 2
