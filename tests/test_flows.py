"""The flow table (katran.flows through KatranLb): listing, search, delete and purge of the
connection tables, and the side-effect-free get_real_for_flow checked against the program.

Runs the real balancer in testing mode: entries are made by packets through the loaded
program (BPF_PROG_TEST_RUN), and every answer is compared with what the program does.
"""

from __future__ import annotations

import ipaddress
import os
import random

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from conftest import lb_config
from katran import Flow, KatranConfig, KatranLb, ModifyAction, NotFoundError, Real, ValidationError, VipFlag, VipKey
from katran.packets import build_flow_packet


root = pytest.mark.privileged  # BPF programs (and namespaces): needs root


def config(**kw) -> KatranConfig:
    kw.setdefault("max_vips", 16)
    kw.setdefault("max_reals", 64)
    return lb_config(**kw)


def live_real(lb: KatranLb, flow: Flow):
    """The real the program sends the flow's packet to (None: not XDP_TX)."""
    res = lb.run_packet(build_flow_packet(flow))
    if res.verdict != "XDP_TX":
        return None
    pkt = Ether(res.data)
    return (pkt[IPv6] if pkt.type == 0x86DD else pkt[IP]).dst


def counters(lb: KatranLb) -> tuple:
    return (lb.get_xdp_total_stats(), lb.get_lru_stats(), lb.get_lru_miss_stats(),
            [lb.get_stats_for_vip(v) for v in lb.get_all_vips()], lb.list_lru(limit=0).total)


def flows_for(vip: VipKey, n: int, seed: int) -> list:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        # client addresses (the program drops martian sources: 0/8, 127/8, multicast, ff00::/8)
        if vip.is_v6:
            src = str(ipaddress.IPv6Address((0xFC00 << 112) | rnd.getrandbits(112)))
        else:
            first = rnd.choice([b for b in range(1, 224) if b != 127])
            src = str(ipaddress.IPv4Address((first << 24) | rnd.getrandbits(24)))
        dport = vip.port or rnd.randrange(1, 65536)
        out.append(Flow(src, str(vip.address), rnd.randrange(1, 65536), dport, vip.proto))
    return out


@pytest.fixture
def lb():
    with KatranLb(config()) as lb:
        yield lb


def _vip_with_reals(lb: KatranLb, vip: VipKey, reals: list, flags: int = 0) -> None:
    lb.add_vip(vip, flags)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(r) for r in reals], vip)


VARIANTS = [
    (VipKey("10.200.1.1", 80, "tcp"), 0),
    (VipKey("10.200.1.2", 443, "udp"), 0),
    (VipKey("fc00:1::1", 80, "tcp"), 0),
    (VipKey("10.200.1.3", 80, "tcp"), VipFlag.NO_SPORT),
    (VipKey("10.200.1.4", 0, "tcp"), 0),  # any port
    (VipKey("10.200.1.5", 0, "udp"), VipFlag.DPORT_HASH),
    (VipKey("fc00:1::2", 53, "udp"), VipFlag.NO_LRU),
]


@root
@pytest.mark.parametrize("vip,flags", VARIANTS, ids=[f"{v}-{int(f)}" for v, f in VARIANTS])
def test_side_effect_free_matches_the_program_on_the_ring(lb, vip, flags):
    reals = [f"fc00:2::{i}" for i in range(1, 6)] if vip.is_v6 else [f"10.0.0.{i}" for i in range(1, 6)]
    _vip_with_reals(lb, vip, reals, flags)
    flows = flows_for(vip, 150, seed=hash((str(vip), int(flags))) & 0xFFFF)
    before = counters(lb)
    predicted = [lb.get_real_for_flow(f, side_effect_free=True) for f in flows]
    assert counters(lb) == before  # nothing counted, no LRU entry made
    assert all(lb.lookup_flow(f).source == "ring" for f in flows[:10])
    assert [live_real(lb, f) for f in flows] == predicted
    assert len(set(predicted)) > (1 if flags & (VipFlag.NO_SPORT | VipFlag.DPORT_HASH) == 0 else 0)


@root
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_side_effect_free_follows_lru_entries_that_differ_from_the_ring(lb, proto):
    vip = VipKey("10.200.2.1", 80, proto)
    _vip_with_reals(lb, vip, [f"10.0.1.{i}" for i in range(1, 5)])
    flows = flows_for(vip, 200, seed=7)
    for f in flows:  # the program makes an LRU entry for every flow
        live_real(lb, f)
    assert lb.list_lru(vip).total == len(flows)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(f"10.0.1.{i}") for i in range(5, 9)], vip)
    routes = [lb.lookup_flow(f) for f in flows]
    assert {r.source for r in routes} == {"lru"} and {r.lru_source for r in routes} == {"fallback"}
    before = counters(lb)
    predicted = [lb.get_real_for_flow(f, side_effect_free=True) for f in flows]
    assert counters(lb) == before
    assert [live_real(lb, f) for f in flows] == predicted
    # now without the entries: the ring's choice, which moved for part of the flows
    assert sum(lb.purge_vip_lru(vip).values()) == len(flows)
    ring = [lb.get_real_for_flow(f, side_effect_free=True) for f in flows]
    assert {lb.lookup_flow(f).source for f in flows} == {"ring"}
    assert [live_real(lb, f) for f in flows] == ring
    moved = sum(a != b for a, b in zip(predicted, ring))
    assert 0 < moved < len(flows)


@root
def test_side_effect_free_udp_flow_migration_and_idle_entries():
    with KatranLb(config(lru_udp_timeout_ns=10**15)) as lb:
        vip = VipKey("10.200.3.1", 53, "udp")
        _vip_with_reals(lb, vip, [f"10.0.2.{i}" for i in range(1, 5)], VipFlag.UDP_FLOW_MIGRATION)
        flows = flows_for(vip, 60, seed=3)
        first = [live_real(lb, f) for f in flows]
        down = first[0]
        # drained from the ring and marked down: its UDP flows leave their LRU entries
        lb.modify_reals_for_vip(ModifyAction.ADD, [Real(down, weight=0)], vip)
        assert lb.lookup_flow(flows[0]).source == "lru"
        lb.add_down_real(vip, down)
        predicted = [lb.get_real_for_flow(f, side_effect_free=True) for f in flows]
        assert all(p != down for p in predicted)
        assert [live_real(lb, f) for f in flows] == predicted
    with KatranLb(config(lru_udp_timeout_ns=1)) as lb:  # every UDP entry is idle at once
        vip = VipKey("10.200.3.2", 53, "udp")
        _vip_with_reals(lb, vip, ["10.0.2.1"])
        f = flows_for(vip, 1, seed=4)[0]
        live_real(lb, f)
        assert lb.list_lru(vip).total == 1
        assert lb.lookup_flow(f).source == "ring"


@root
def test_side_effect_free_source_routing():
    with KatranLb(config(lpm_src_lookup=True)) as lb:
        vip = VipKey("10.200.4.1", 80, "tcp")
        _vip_with_reals(lb, vip, ["10.0.3.1", "10.0.3.2"], VipFlag.SRC_ROUTING)
        lb.add_src_routing_rule(["192.168.0.0/16"], "10.0.3.9")
        lb.add_src_routing_rule(["192.168.7.0/24"], "10.0.3.8")
        for src, want in (("192.168.1.1", "10.0.3.9"), ("192.168.7.7", "10.0.3.8")):
            route = lb.lookup_flow(Flow(src, "10.200.4.1", 1234, 80, "tcp"))
            assert (route.source, str(route.real)) == ("src_routing", want)
            assert live_real(lb, Flow(src, "10.200.4.1", 1234, 80, "tcp")) == want
        route = lb.lookup_flow(Flow("172.16.0.1", "10.200.4.1", 1234, 80, "tcp"))
        assert route.source == "ring" and str(route.real) in ("10.0.3.1", "10.0.3.2")


@root
def test_unknown_vip_is_an_error_in_side_effect_free_mode(lb):
    _vip_with_reals(lb, VipKey("10.200.5.1", 80, "tcp"), ["10.0.4.1"])
    with pytest.raises(NotFoundError, match="vip"):
        lb.get_real_for_flow(Flow("1.2.3.4", "10.200.5.1", 1, 81, "tcp"), side_effect_free=True)
    with pytest.raises(NotFoundError, match="vip"):
        lb.lookup_flow(Flow("1.2.3.4", "10.9.9.9", 1, 80, "tcp"))
    with pytest.raises(ValidationError, match="flow.src"):
        lb.lookup_flow(Flow("fc00::1", "10.200.5.1", 1, 80, "tcp"))
    # a martian source: dropped by the program, no real here either
    for src in ("127.0.0.1", "224.0.0.5", "0.1.2.3", "255.255.255.255"):
        f = Flow(src, "10.200.5.1", 1, 80, "tcp")
        assert lb.lookup_flow(f).source == "martian" and live_real(lb, f) is None
    assert lb.lookup_flow(Flow("240.0.0.1", "10.200.5.1", 1, 80, "tcp")).source == "ring"
    # a VIP without reals: no real, not an error
    lb.add_vip(VipKey("10.200.5.2", 80, "tcp"))
    route = lb.lookup_flow(Flow("1.2.3.4", "10.200.5.2", 1, 80, "tcp"))
    assert route.real is None and route.source == "none"


@root
def test_list_search_delete_purge(lb):
    vip_a, vip_b = VipKey("10.200.6.1", 80, "tcp"), VipKey("10.200.6.2", 53, "udp")
    _vip_with_reals(lb, vip_a, ["10.0.5.1", "10.0.5.2"])
    _vip_with_reals(lb, vip_b, ["10.0.5.2", "10.0.5.3"])
    flows_a = [Flow(f"192.168.{i % 2}.{i}", "10.200.6.1", 1000 + i, 80, "tcp") for i in range(1, 41)]
    flows_b = [Flow(f"172.16.0.{i}", "10.200.6.2", 2000 + i, 53, "udp") for i in range(1, 21)]
    sent = {f: live_real(lb, f) for f in flows_a + flows_b}

    everything = lb.list_lru(limit=None)
    assert everything.total == 60 and everything.per_source == {"fallback": 60}
    by_key = {(e.src, e.src_port, e.dst, e.dst_port): e for e in everything.entries}
    for f, real in sent.items():
        e = by_key[(f.src, f.src_port, f.dst, f.dst_port)]
        assert (e.vip, str(e.real), e.proto, e.source) == (VipKey(f.dst, f.dst_port, f.proto), real, f.proto,
                                                           "fallback")
        assert e.real_index == lb.get_index_for_real(real)
        if f.proto == 17:  # UDP entries carry their last access time
            assert e.atime > 0 and 0 <= e.age_s < 60
        else:
            assert e.atime == 0 and e.age_s is None

    assert lb.list_lru(vip_a, limit=None).total == 40
    limited = lb.list_lru(vip_a, limit=5)
    assert len(limited.entries) == 5 and limited.total == 40 and limited.truncated
    on_real = lb.list_lru(real="10.0.5.2", limit=None)
    assert on_real.total == sum(1 for r in sent.values() if r == "10.0.5.2")
    assert {str(e.real) for e in on_real.entries} == {"10.0.5.2"}
    odd = lb.list_lru(vip_a, src="192.168.1.0/24", limit=None)
    assert odd.total == 20 and all(e.src in ipaddress.ip_network("192.168.1.0/24") for e in odd.entries)
    assert lb.list_lru(src="172.16.0.5", limit=None).total == 1
    assert lb.list_lru(src="fc00::/16").total == 0

    f = flows_a[0]
    [hit] = lb.search_lru(vip_a, str(f.src), f.src_port)
    assert (str(hit.real), hit.source) == (sent[f], "fallback")
    assert lb.delete_lru(vip_a, str(f.src), f.src_port) == ["fallback"]
    assert lb.search_lru(vip_a, str(f.src), f.src_port) == []
    assert lb.delete_lru(vip_a, str(f.src), f.src_port) == []

    n_on_real = lb.list_lru(vip_b, real="10.0.5.3", limit=None).total
    assert lb.purge_vip_lru(vip_b, real="10.0.5.3") == {"fallback": n_on_real}
    assert lb.list_lru(vip_b, limit=None).total == 20 - n_on_real
    assert lb.purge_vip_lru(vip_a) == {"fallback": 39}
    assert lb.list_lru(limit=None).total == 20 - n_on_real

    with pytest.raises(ValidationError, match="filter"):
        lb.purge_vip_lru()
    with pytest.raises(NotFoundError, match="real"):
        lb.list_lru(real="10.9.9.9")
    with pytest.raises(ValidationError, match="src"):
        lb.list_lru(src="not-a-prefix")
    with pytest.raises(ValidationError, match="src"):
        lb.search_lru(vip_a, "fc00::1", 1)
    with pytest.raises(ValidationError, match="limit"):
        lb.list_lru(limit=-1)
    with pytest.raises(ValidationError, match="vip"):
        lb.list_lru("10.200.6.1:80")


@root
def test_per_cpu_tables_are_listed_and_searched_per_cpu():
    cpus = sorted(os.sched_getaffinity(0))
    first, second = cpus[0], (cpus[1] if len(cpus) > 1 else None)  # a one-CPU machine: one table
    cores = (first,) if second is None else (first, second)
    with KatranLb(config(forwarding_cores=cores, lru_size=2000)) as lb:
        vip = VipKey("10.200.7.1", 80, "tcp")
        _vip_with_reals(lb, vip, [f"10.0.6.{i}" for i in range(1, 5)])
        old = os.sched_getaffinity(0)
        flows = flows_for(vip, 40, seed=11)
        parts = [(first, flows[:25])] + ([] if second is None else [(second, flows[25:])])
        try:
            for cpu, part in parts:
                os.sched_setaffinity(0, {cpu})
                for f in part:
                    live_real(lb, f)
        finally:
            os.sched_setaffinity(0, old)
        want = {f"cpu{cpu}": len(part) for cpu, part in parts}
        want["fallback"] = 0
        listing = lb.list_lru(vip, limit=None)
        assert listing.per_source == want and listing.total == sum(want.values())
        f = flows[0]
        assert [e.source for e in lb.search_lru(vip, str(f.src), f.src_port)] == [f"cpu{first}"]
        assert lb.lookup_flow(f, cpu=first).lru_source == f"cpu{first}"
        other = second if second is not None else first + 1  # its table (or the fallback) has no entry
        assert lb.lookup_flow(f, cpu=other).source == "ring"
        assert lb.lookup_flow(f).lru_source == f"cpu{first}"
        assert lb.purge_vip_lru(vip) == want


@root
def test_purge_and_delete_are_all_or_nothing_when_the_kernel_fails(lb, monkeypatch):
    from katran.adapter import bpf
    from katran.errors import KernelError

    vip = VipKey("10.200.8.1", 53, "udp")
    _vip_with_reals(lb, vip, ["10.0.7.1", "10.0.7.2"])
    for f in flows_for(vip, 30, seed=5):
        live_real(lb, f)
    before = {(e.src, e.src_port, e.real_index) for e in lb.list_lru(vip, limit=None).entries}
    original, calls = bpf.Map.delete, []

    def failing_delete(self, key):
        calls.append(key)
        if len(calls) == 12:
            raise KernelError("delete from fallback_cache", 28, "injected")
        return original(self, key)

    monkeypatch.setattr(bpf.Map, "delete", failing_delete)
    with pytest.raises(KernelError, match="injected"):
        lb.purge_vip_lru(vip)
    monkeypatch.setattr(bpf.Map, "delete", original)
    after = {(e.src, e.src_port, e.real_index) for e in lb.list_lru(vip, limit=None).entries}
    assert after == before and len(calls) == 12  # 11 deleted, written back
    assert lb.purge_vip_lru(vip) == {"fallback": 30}
