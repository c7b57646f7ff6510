"""The per-cpu flow cache in front of the connection table (not in Katran; lb_flow_cache.h).

Every test runs the real balancer in testing mode on one CPU that has its own connection
table (the process is pinned to it: BPF_PROG_TEST_RUN runs on the calling CPU), and checks
that the cache routes exactly as the connection table would: after a control-plane delete,
after a SYN that reuses a 5-tuple, across UDP ageing; the same run with the cache off
(``flow_cache=False``) is the reference. The Katran fixtures run through it at the end.
"""

from __future__ import annotations

import os
import struct
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP
from scapy.layers.l2 import Ether

from conftest import lb_config
from katran import Flow, KatranLb, LbStats, ModifyAction, QuicReal, Real, VipFlag, VipKey, structs
from katran.contract import FLOW_CACHE_SLOTS, VIP_FILTER_WORDS
from katran.packets import build_flow_packet, outer_destination

pytestmark = pytest.mark.privileged

VIP_TCP = VipKey("10.200.1.1", 80, "tcp")
VIP_UDP = VipKey("10.200.1.1", 80, "udp")
REALS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]


@pytest.fixture
def cpu():
    """Pin the test to one CPU: the one whose connection table (and flow cache) we use."""
    old = os.sched_getaffinity(0)
    cpu = min(old)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, old)


def make_lb(cpu: int, **kw) -> KatranLb:
    lb = KatranLb(lb_config(forwarding_cores=(cpu,), max_vips=8, max_reals=16, ch_ring_size=13,
                            lru_size=4096, **kw))
    lb.start()
    for vip in (VIP_TCP, VIP_UDP):
        lb.add_vip(vip)
        for r in REALS:
            lb.add_real_for_vip(Real(r, 1), vip)
    return lb


@pytest.fixture(params=[True, False], ids=["cache", "no-cache"])
def lb(request, cpu):
    lb = make_lb(cpu, flow_cache=request.param)
    try:
        yield lb
    finally:
        lb.close()


def send(lb: KatranLb, frame: bytes) -> str:
    res = lb.run_packet(frame)
    assert res.verdict == "XDP_TX", res.verdict
    return outer_destination(res.data)


def syn(flow: Flow) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src=str(flow.src), dst=str(flow.dst))
                 / TCP(sport=flow.src_port, dport=flow.dst_port, flags="S"))


def cache_stats(lb: KatranLb) -> tuple[int, int]:
    s = lb.get_flow_cache_stats()
    return s.v1, s.v2


def epoch(lb: KatranLb) -> int:
    """The epoch the data plane uses: 0 when off (never written, or the off bit)."""
    raw = lb._obj.map("ctl_array").lookup(structs.u32(structs.CTL_FLOW_CACHE_EPOCH))
    value = int.from_bytes(raw[:8], "little")
    return 0 if value & structs.FLOW_CACHE_OFF else value & 0xFFFFFFFF


def move_flow(lb: KatranLb, vip: VipKey, real: str) -> None:
    """Take `real` off the VIP: the ring no longer picks it (the LRU still does)."""
    lb.del_real_for_vip(Real(real, 1), vip)


def test_a_hot_flow_is_routed_from_the_cache(lb):
    flow = Flow("192.0.2.7", "10.200.1.1", 40001, 80, "tcp")
    frame = build_flow_packet(flow)
    first = lb.run_packet(frame)
    outs = [lb.run_packet(frame) for _ in range(5)]
    assert first.verdict == "XDP_TX" and all(o.data == first.data for o in outs)
    # one miss (the pick), then LRU hits: the first fills the slot, the rest are cache hits
    assert lb.get_lru_stats() == LbStats(6, 1)
    if lb.config.flow_cache:
        assert epoch(lb) >= 1
        assert cache_stats(lb) == (4, 1)
    else:
        assert epoch(lb) == 0
        assert cache_stats(lb) == (0, 0)


def test_a_deleted_connection_is_not_served_from_the_cache(lb):
    """delete_lru bumps the epoch: the next packet is a miss and the ring picks again."""
    flow = Flow("192.0.2.8", "10.200.1.1", 40002, 80, "tcp")
    frame = build_flow_packet(flow)
    real = send(lb, frame)
    assert {send(lb, frame) for _ in range(3)} == {real}
    move_flow(lb, VIP_TCP, real)
    assert send(lb, frame) == real  # the connection keeps its real (LRU, and the cache)
    assert lb.delete_lru(VIP_TCP, "192.0.2.8", 40002)
    misses = lb.get_lru_stats().v2
    moved = send(lb, frame)
    assert moved != real and lb.get_lru_stats().v2 == misses + 1
    assert {send(lb, frame) for _ in range(3)} == {moved}


def test_purge_empties_the_cache_too(lb):
    flows = [Flow("192.0.2.9", "10.200.1.1", 41000 + i, 80, "tcp") for i in range(40)]
    before = {f.src_port: send(lb, build_flow_packet(f)) for f in flows}
    for f in flows:
        send(lb, build_flow_packet(f))
        send(lb, build_flow_packet(f))
    move_flow(lb, VIP_TCP, REALS[0])
    assert {f.src_port: send(lb, build_flow_packet(f)) for f in flows} == before
    lb.purge_vip_lru(VIP_TCP)
    after = {f.src_port: send(lb, build_flow_packet(f)) for f in flows}
    assert REALS[0] in before.values() and REALS[0] not in after.values()


def test_a_syn_reusing_a_5_tuple_replaces_the_cached_real(lb):
    """The SYN path writes the connection table without consulting the cache: it marks the
    flow's slot stale, so the next ACK sees the new entry."""
    flow = Flow("192.0.2.10", "10.200.1.1", 40003, 80, "tcp")
    frame = build_flow_packet(flow)
    real = send(lb, frame)
    send(lb, frame)
    send(lb, frame)
    move_flow(lb, VIP_TCP, real)
    new = send(lb, syn(flow))
    assert new != real
    assert {send(lb, frame) for _ in range(3)} == {new}


def test_udp_idle_time_counts_the_packets_the_cache_served(cpu):
    """UDP ageing is Katran's: packets routed from the cache are uses of the connection-table
    entry. The entry's own atime is made old behind the cache's back; the slot's last-seen
    time, handed to the entry when the slot is refreshed, keeps the flow."""
    lb = make_lb(cpu)
    try:
        flow = Flow("192.0.2.11", "10.200.1.1", 40004, 80, "udp")
        frame = build_flow_packet(flow)
        real = send(lb, frame)
        send(lb, frame)  # fills the slot
        move_flow(lb, VIP_UDP, real)
        lru = lb._kernel.map_by_id(lb._obj.map("lru_mapping").inner_map_id(cpu))
        try:
            key = structs.flow_key("192.0.2.11", "10.200.1.1", 40004, 80, 17)
            pos, atime = structs.real_pos_lru_unpack(lru.lookup(key))
            lru.update(key, structs.real_pos_lru(pos, atime - 60 * 10**9))  # 60 s idle, to the entry
            hits = cache_stats(lb)[0]
            assert send(lb, frame) == real
            assert cache_stats(lb)[0] == hits + 1
            time.sleep(0.7)  # past the slot's refresh (64 jiffies <= 640 ms): the entry is read again
            assert send(lb, frame) == real
            pos, atime = structs.real_pos_lru_unpack(lru.lookup(key))
            assert time.clock_gettime_ns(time.CLOCK_MONOTONIC) - atime < 10**9
        finally:
            lru.close()
    finally:
        lb.close()


def test_udp_flows_idle_past_the_timeout_are_picked_again(cpu):
    lb = make_lb(cpu, lru_udp_timeout_ns=30_000_000)  # 30 ms, below the slot's refresh time
    try:
        flow = Flow("192.0.2.12", "10.200.1.1", 40005, 80, "udp")
        frame = build_flow_packet(flow)
        real = send(lb, frame)
        send(lb, frame)
        move_flow(lb, VIP_UDP, real)
        time.sleep(0.1)
        misses = lb.get_lru_stats().v2
        assert send(lb, frame) != real
        assert lb.get_lru_stats().v2 == misses + 1
    finally:
        lb.close()


def test_the_epoch_is_new_at_every_start_and_zero_when_off(cpu):
    lb = make_lb(cpu)
    try:
        first = epoch(lb)
        flow = Flow("192.0.2.1", "10.200.1.1", 1, 80, "tcp")
        send(lb, build_flow_packet(flow))
        assert lb.delete_lru(VIP_TCP, "192.0.2.1", 1)
        assert epoch(lb) == first + 1
        send(lb, build_flow_packet(flow))
        lb.purge_vip_lru(VIP_TCP)
        assert epoch(lb) == first + 2
        lb.purge_vip_lru(VIP_TCP)  # nothing deleted: nothing can be cached either
        assert epoch(lb) == first + 2
    finally:
        lb.close()
    off = make_lb(cpu, flow_cache=False)
    try:
        assert epoch(off) == 0
        flow = Flow("192.0.2.13", "10.200.1.1", 40006, 80, "tcp")
        for _ in range(4):
            send(off, build_flow_packet(flow))
        assert cache_stats(off) == (0, 0)
    finally:
        off.close()


def test_katran_fixtures_through_the_cache(cpu):
    """Katran's base set with a per-cpu connection table, every case sent three times in a
    row (the third is a cache hit where the connection table would hit): the first copy is
    Katran's output byte for byte, and every copy matches the same run with the cache off."""
    katran_fixtures = pytest.importorskip("katran_fixtures")
    if not katran_fixtures.FIXTURES_DIR.is_dir():
        pytest.fail(f"fixtures not found at {katran_fixtures.FIXTURES_DIR}")
    cases = katran_fixtures.load_set("base")
    outputs = {}
    for on in (True, False):
        lb = KatranLb(katran_fixtures.base_config(forwarding_cores=(cpu,), flow_cache=on))
        lb.start()
        try:
            assert not katran_fixtures.provision_base(lb)
            outs = []
            for case in cases:
                for _ in range(3):
                    res = lb.run_packet(case.input)
                    outs.append((case.n, res.verdict, res.data))
            outputs[on] = outs
            hits = cache_stats(lb)[0]
        finally:
            lb.close()
        if on:
            assert hits > 0
    assert outputs[True] == outputs[False]
    first = {n: (v, d) for n, v, d in outputs[True][::3]}
    wrong = [c.n for c in cases if first[c.n] != (c.expected_action, c.expected)]
    assert not wrong, f"cases differing from Katran's output: {wrong}"


def test_switched_off_and_on_while_running(cpu):
    """set_flow_cache(False): no packet is routed from the cache (the connection table serves
    them, same reals); on again, the cache starts empty and fills from the LRU."""
    lb = make_lb(cpu)
    try:
        flows = [Flow("192.0.2.14", "10.200.1.1", 42000 + i, 80, "tcp") for i in range(20)]
        first = {f.src_port: send(lb, build_flow_packet(f)) for f in flows}
        for f in flows:
            send(lb, build_flow_packet(f))
        lb.set_flow_cache(False)
        hits = cache_stats(lb)
        assert {f.src_port: send(lb, build_flow_packet(f)) for f in flows} == first
        assert cache_stats(lb) == hits and epoch(lb) == 0
        lb.set_flow_cache(True)
        assert {f.src_port: send(lb, build_flow_packet(f)) for f in flows} == first
        assert cache_stats(lb) == (hits[0], hits[1] + len(flows))  # refilled, none served
        assert {f.src_port: send(lb, build_flow_packet(f)) for f in flows} == first
        assert cache_stats(lb)[0] == hits[0] + len(flows)
    finally:
        lb.close()


# --- the fast path (forward_cached, lb_pipeline.h): no VIP lookup for a flow in its slot ----
def key_of(flow: Flow) -> bytes:
    return structs.flow_key(flow.src, flow.dst, flow.src_port, flow.dst_port, flow.proto)


def slot_entry(lb: KatranLb, cpu: int, slot: int) -> tuple:
    """(key, real_index, epoch, filled, fast, seen) of a flow_cache slot of `cpu`."""
    return structs.flow_cache_entry_unpack(
        lb._obj.map("flow_cache").lookup(structs.u32(cpu * FLOW_CACHE_SLOTS + slot)))


WAYS = ("home", "other", "third", "fourth")  # the ways of a set: home, home ^ 1, ^ 2, ^ 3


def way_of(lb: KatranLb, cpu: int, flow: Flow):
    """The way of the flow's set that holds it in the current epoch (a name of WAYS), None
    when none does."""
    key = key_of(flow)
    assert len(structs.flow_cache_ways(key)) == len(WAYS) == structs.FLOW_CACHE_WAYS
    for name, slot in zip(WAYS, structs.flow_cache_ways(key)):
        got, _real, slot_epoch, *_ = slot_entry(lb, cpu, slot)
        if got == key and slot_epoch == epoch(lb):
            return name
    return None


def slot_of(lb: KatranLb, cpu: int, flow: Flow):
    """(real index, fast) of the flow's slot on `cpu`; None when no slot of its set holds a
    live entry of it (other flows, or an older epoch)."""
    way = way_of(lb, cpu, flow)
    if way is None:
        return None
    slot = structs.flow_cache_ways(key_of(flow))[WAYS.index(way)]
    _key, real, _epoch, _filled, fast, _seen = slot_entry(lb, cpu, slot)
    return real, fast


def test_the_fast_path_counts_what_the_vip_lookup_path_counts(lb):
    """Every counter of a routed packet -- the VIP's, the real's, the LRU's, the XDP
    verdict's -- is the same whether the packet took the fast path or not."""
    flow = Flow("192.0.2.20", "10.200.1.1", 43000, 80, "tcp")
    frame = build_flow_packet(flow)
    real = send(lb, frame)
    for _ in range(9):
        assert send(lb, frame) == real
    ip_len = len(frame) - 14
    assert lb.get_stats_for_vip(VIP_TCP) == LbStats(10, 10 * ip_len)
    assert lb.get_real_stats(lb.get_index_for_real(real)) == LbStats(10, 10 * ip_len)
    assert lb.get_lru_stats() == LbStats(10, 1)
    assert lb.get_xdp_tx_stats() == LbStats(10, 10 * (len(frame)))
    assert lb.get_xdp_total_stats() == LbStats(10, 10 * (len(frame)))
    assert cache_stats(lb) == ((8, 1) if lb.config.flow_cache else (0, 0))


def test_a_deleted_vip_is_not_forwarded_from_its_flows_slots(lb):
    """del_vip makes a new epoch: a flow of the VIP routed from its slot a moment ago is
    passed, as a packet to no VIP -- also when its VIP-filter bit stays set (here: every
    bit, as when another VIP's hash shares it)."""
    flow = Flow("192.0.2.21", "10.200.1.1", 43001, 80, "tcp")
    frame = build_flow_packet(flow)
    for _ in range(3):
        send(lb, frame)
    lb.del_vip(VIP_TCP)
    set_vip_filter(lb, [2**64 - 1] * VIP_FILTER_WORDS)
    assert lb.run_packet(frame).verdict == "XDP_PASS"


def test_a_flag_change_takes_the_vips_flows_off_the_fast_path(lb):
    """modify_vip makes a new epoch: with NO_SPORT set the flow's connection-table key has
    no source port, so its next packet is an LRU miss (not a slot hit)."""
    flow = Flow("192.0.2.22", "10.200.1.1", 43002, 80, "tcp")
    frame = build_flow_packet(flow)
    for _ in range(3):
        send(lb, frame)
    misses = lb.get_lru_stats().v2
    lb.modify_vip(VIP_TCP, VipFlag.NO_SPORT)
    send(lb, frame)
    assert lb.get_lru_stats().v2 == misses + 1
    send(lb, frame)
    assert lb.get_lru_stats().v2 == misses + 1


def test_which_flows_the_fast_path_takes(cpu):
    """A slot is fast (vip_num kept) for a flow of a VIP found with its own port and without
    a flag that routes by more than the 5-tuple; NO_SPORT and port-0 VIPs' flows are not."""
    lb = make_lb(cpu)
    try:
        any_port = VipKey("10.200.1.2", 0, "tcp")
        no_sport = VipKey("10.200.1.3", 80, "tcp")
        for vip, flags in ((any_port, 0), (no_sport, VipFlag.NO_SPORT)):
            lb.add_vip(vip, flags)
            lb.add_real_for_vip(Real(REALS[0], 1), vip)
        client = "192.0.2.23"
        # VIP -> (the packet's flow, its connection-table key: the flow cache's key)
        cases = {
            VIP_TCP: (Flow(client, "10.200.1.1", 43003, 80, "tcp"),) * 2,
            VIP_UDP: (Flow(client, "10.200.1.1", 43003, 80, "udp"),) * 2,
            any_port: (Flow(client, "10.200.1.2", 43003, 8080, "tcp"), Flow(client, "10.200.1.2", 43003, 0, "tcp")),
            no_sport: (Flow(client, "10.200.1.3", 43003, 80, "tcp"), Flow(client, "10.200.1.3", 0, 80, "tcp")),
        }
        for flow, _key in cases.values():
            frame = build_flow_packet(flow)
            send(lb, frame)
            send(lb, frame)  # the LRU hit that fills the slot
        fast = {vip: slot_of(lb, cpu, key)[1] for vip, (_flow, key) in cases.items()}
        assert fast == {VIP_TCP: structs.FLOW_CACHE_FAST | lb._vips[VIP_TCP].num,
                        VIP_UDP: structs.FLOW_CACHE_FAST | lb._vips[VIP_UDP].num,
                        any_port: 0, no_sport: 0}
    finally:
        lb.close()


def vip_filter_words(lb: KatranLb) -> list[int]:
    ctl = lb._obj.map("ctl_array")
    return [int.from_bytes(ctl.lookup(structs.u32(structs.CTL_VIP_FILTER + i))[:8], "little")
            for i in range(VIP_FILTER_WORDS)]


def set_vip_filter(lb: KatranLb, words: list[int]) -> None:
    """Behind the control plane's back (a test's stand-in for hash collisions / a lost write)."""
    for i, w in enumerate(words):
        lb._obj.map("ctl_array").update(structs.u32(structs.CTL_VIP_FILTER + i), structs.ctl_value_u64(w))


def filter_of(*vips: VipKey) -> list[int]:
    words = [0] * VIP_FILTER_WORDS
    for v in vips:
        bit = structs.vip_filter_bit(v.address, v.port, v.proto)
        words[bit // 64] |= 1 << (bit % 64)
    return words


def test_the_vip_filter_has_a_bit_per_vip_with_a_port(cpu):
    lb = make_lb(cpu)
    try:
        assert vip_filter_words(lb) == filter_of(VIP_TCP, VIP_UDP) != [0] * VIP_FILTER_WORDS
        lb.add_vip(VipKey("10.200.1.9", 0, "tcp"))  # port 0: never fast, no bit
        assert vip_filter_words(lb) == filter_of(VIP_TCP, VIP_UDP)
        lb.del_vip(VIP_UDP)
        assert vip_filter_words(lb) == filter_of(VIP_TCP)
    finally:
        lb.close()


def test_a_clear_bit_is_trusted_only_while_the_filter_is_marked_whole(cpu):
    """With CTL_VIP_FILTER_DONE set (by start) a packet whose bit is clear is no VIP with a
    port: passed without the vip_map lookup. Unmarked (a hitless upgrade clears the mark
    until the new control plane has written the filter), it is looked up: routed, through
    the VIP-lookup path's slot hits."""
    lb = make_lb(cpu)
    try:
        ctl = lb._obj.map("ctl_array")
        done = structs.u32(structs.CTL_VIP_FILTER_DONE)
        assert ctl.lookup(done)[:8] == structs.ctl_value_u64(1)
        frame = build_flow_packet(Flow("192.0.2.24", "10.200.1.1", 43004, 80, "tcp"))
        real = send(lb, frame)
        set_vip_filter(lb, [0] * VIP_FILTER_WORDS)  # as if the VIP's bit were lost
        assert lb.run_packet(frame).verdict == "XDP_PASS"
        ctl.update(done, structs.ctl_value_u64(0))
        hits = cache_stats(lb)[0]
        assert {send(lb, frame) for _ in range(3)} == {real}
        assert cache_stats(lb)[0] == hits + 2  # the first fills the slot, then slot hits of the VIP-lookup path
    finally:
        lb.close()


def test_a_vips_bit_is_set_before_it_is_in_vip_map_and_cleared_after(cpu):
    """The order that makes a clear bit trustworthy, seen from the kernel's write log."""
    lb = make_lb(cpu)
    try:
        vip = VipKey("10.200.1.7", 443, "tcp")
        bit = structs.vip_filter_bit(vip.address, vip.port, vip.proto)
        word_key = structs.u32(structs.CTL_VIP_FILTER + bit // 64)
        vip_key = structs.vip_definition(vip.address, vip.port, vip.proto)
        ctl, vips = lb._obj.map("ctl_array"), lb._obj.map("vip_map")
        seen = []
        real_update, real_delete = type(ctl).update, type(ctl).delete

        def update(m, key, value, *a, **kw):
            if (m.name, key) in (("ctl_array", word_key), ("vip_map", vip_key)):
                seen.append(("update", m.name, bool(m.name == "vip_map" or
                                                     int.from_bytes(bytes(value)[:8], "little") >> (bit % 64) & 1)))
            return real_update(m, key, value, *a, **kw)

        def delete(m, key, *a, **kw):
            if (m.name, key) == ("vip_map", vip_key):
                seen.append(("delete", m.name, False))
            return real_delete(m, key, *a, **kw)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(type(ctl), "update", update)
            mp.setattr(type(ctl), "delete", delete)
            lb.add_vip(vip)
            lb.del_vip(vip)
        assert seen == [("update", "ctl_array", True), ("update", "vip_map", True),
                        ("delete", "vip_map", False), ("update", "ctl_array", False)]
    finally:
        lb.close()


def test_the_fast_path_skips_the_vip_lookup(cpu):
    """The VIP's vip_map entry removed behind the control plane's back (no new epoch): the
    flow whose slot is fast is still forwarded -- the fast path did not look the VIP up --
    while a flow without a slot is passed. The control plane never does this (del_vip
    makes a new epoch, above)."""
    lb = make_lb(cpu)
    try:
        hot = build_flow_packet(Flow("192.0.2.25", "10.200.1.1", 43005, 80, "tcp"))
        cold = build_flow_packet(Flow("192.0.2.25", "10.200.1.1", 43006, 80, "tcp"))
        real = send(lb, hot)
        send(lb, hot)  # fills the slot
        send(lb, cold)
        lb._obj.map("vip_map").delete(structs.vip_definition(VIP_TCP.address, VIP_TCP.port, VIP_TCP.proto))
        assert send(lb, hot) == real
        assert lb.run_packet(cold).verdict == "XDP_PASS"
    finally:
        lb.close()


def _jiffies64() -> int:
    with open("/proc/timer_list") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name.strip().endswith("jiffies") and value.strip().isdigit():
                return int(value)
    raise AssertionError("no jiffies in /proc/timer_list")


def test_slots_of_a_build_before_the_fast_path_are_never_fast(cpu):
    """A hitless upgrade from the build before the fast path keeps flow_cache: its slots hold
    a 64-bit fill time where `filled` and `fast` are now, and jiffies' high word never has
    bit 31, so such a slot is routed by the VIP-lookup path only (here: with the VIP removed
    behind the control plane's back, the packet is passed, not forwarded)."""
    lb = make_lb(cpu)
    try:
        flow = Flow("192.0.2.26", "10.200.1.1", 43007, 80, "tcp")
        frame = build_flow_packet(flow)
        send(lb, frame)
        send(lb, frame)  # fills the slot, fast
        key = key_of(flow)
        assert way_of(lb, cpu, flow) == "home"
        index = structs.u32(cpu * FLOW_CACHE_SLOTS + structs.flow_cache_slot(key))
        got, real, slot_epoch, filled, fast, seen = structs.flow_cache_entry_unpack(
            lb._obj.map("flow_cache").lookup(index))
        assert got == key and fast & structs.FLOW_CACHE_FAST
        older = struct.pack("<40sIIQQ", got, real, slot_epoch, (_jiffies64() & ~0xFFFFFFFF) | filled, seen)
        lb._obj.map("flow_cache").update(index, older)
        lb._obj.map("vip_map").delete(structs.vip_definition(VIP_TCP.address, VIP_TCP.port, VIP_TCP.proto))
        assert lb.run_packet(frame).verdict == "XDP_PASS"
    finally:
        lb.close()


# --- four ways a set (lb_flow_cache.h): flows whose slots collide ------------------------------
def same_home(n: int, first_port: int = 44000) -> list[Flow]:
    """n TCP flows to VIP_TCP with one home slot (different clients and ports)."""
    found: dict[int, list[Flow]] = {}
    for host in range(1, 255):
        for port in range(first_port, first_port + 400):
            flow = Flow(f"198.51.100.{host}", VIP_TCP.address, port, 80, "tcp")
            group = found.setdefault(structs.flow_cache_slot(key_of(flow)), [])
            group.append(flow)
            if len(group) == n:
                return group
    raise AssertionError(f"no {n} flows with one home slot")


def test_four_flows_with_one_home_slot_are_all_routed_from_the_cache(cpu):
    """Each next flow of one home slot fills the next way of the set (home ^ 1, ^ 2, ^ 3);
    sent in turn, none evicts another (a direct-mapped table missed on every one of these
    packets, two ways on half of them)."""
    lb = make_lb(cpu)
    try:
        flows = same_home(4)
        frames = {f: build_flow_packet(f) for f in flows}
        reals = {f: send(lb, frames[f]) for f in flows}
        for f in flows:
            send(lb, frames[f])  # the LRU hits that fill the slots
        assert [way_of(lb, cpu, f) for f in flows] == list(WAYS)
        hits, fills = cache_stats(lb)
        for _ in range(5):
            assert {f: send(lb, frames[f]) for f in flows} == reals
        assert cache_stats(lb) == (hits + 20, fills)
    finally:
        lb.close()


def use_counts(lb: KatranLb, cpu: int, flow: Flow) -> list[int]:
    """The use counts (FLOW_CACHE_USE in `filled`, the second chance) of the ways of the
    flow's set on `cpu`, in WAYS order."""
    return [structs.flow_cache_use_count(slot_entry(lb, cpu, s)[3])
            for s in structs.flow_cache_ways(key_of(flow))]


def last_bits(lb: KatranLb, cpu: int, flow: Flow) -> list[bool]:
    """FLOW_CACHE_LAST (the way of its set filled last) of the ways of the flow's set."""
    return [bool(slot_entry(lb, cpu, s)[3] & structs.FLOW_CACHE_LAST)
            for s in structs.flow_cache_ways(key_of(flow))]


def fill_set(lb: KatranLb, cpu: int, flows: list[Flow]) -> dict:
    """Connection-table entries for every flow, then the first four fill the ways in order:
    {flow: its frame}, {flow: its real}."""
    frames = {f: build_flow_packet(f) for f in flows}
    reals = {f: send(lb, frames[f]) for f in flows}
    for f in flows[:4]:
        send(lb, frames[f])
    assert [way_of(lb, cpu, f) for f in flows[:4]] == list(WAYS)
    return frames, reals


@pytest.mark.parametrize("flags", [0, VipFlag.QUIC_VIP], ids=["fast", "slow"])
def test_five_and_six_flows_of_one_set_in_turn_keep_four_in_the_cache(cpu, flags):
    """Every way routing with a use count above 0: a fifth flow is not filled (it takes the
    connection table) and takes one from each count; the four, sent again, are back at 2.
    In turn, five keep four in the cache (FIFO refilled on every packet), every packet to
    its own flow's real; six too (the sixth takes the counts to 0, but the four send before
    the next newcomer comes; with one chance six kept none). "slow": a VIP flag that keeps
    its slots off the fast path (a slot hit in the connection-table step counts too)."""
    lb = make_lb(cpu)
    try:
        if flags:
            lb.modify_vip(VIP_TCP, flags)
        flows = same_home(6)
        e, f = flows[4], flows[5]
        frames, reals = fill_set(lb, cpu, flows)
        assert use_counts(lb, cpu, e) == [2] * 4 and last_bits(lb, cpu, e) == [False] * 3 + [True]
        hits, fills = cache_stats(lb)
        assert send(lb, frames[e]) == reals[e]
        assert [way_of(lb, cpu, x) for x in flows[:5]] == list(WAYS) + [None]
        assert use_counts(lb, cpu, e) == [1] * 4 and cache_stats(lb) == (hits, fills)
        for _ in range(4):
            assert {x: send(lb, frames[x]) for x in flows[:5]} == {x: reals[x] for x in flows[:5]}
        assert cache_stats(lb) == (hits + 16, fills)  # the four hit, e is never filled
        assert use_counts(lb, cpu, e) == [1] * 4  # e came last
        assert send(lb, frames[f]) == reals[f] and use_counts(lb, cpu, e) == [0] * 4
        hits, fills = cache_stats(lb)
        for _ in range(3):
            assert {x: send(lb, frames[x]) for x in flows} == reals
        assert cache_stats(lb) == (hits + 12, fills)
        assert [way_of(lb, cpu, x) for x in flows] == list(WAYS) + [None, None]
    finally:
        lb.close()


def test_a_way_whose_flow_stopped_goes_to_a_newcomers_third_packet(cpu):
    """a, b, c, d fill the set (d last) and only a, b, c keep sending: each of e's first two
    packets takes one from every count, theirs are back at 2 in between, and e's third
    packet replaces d, the one way at 0, although it was filled last. With ways at 0, the
    first of them from home that was not filled last goes; the one filled last only when it
    alone is at 0."""
    lb = make_lb(cpu)
    try:
        flows = same_home(8)
        a, b, c, d, e, f, g, h = flows
        frames, reals = fill_set(lb, cpu, flows)
        assert send(lb, frames[e]) == reals[e]  # kept out: every count 2 -> 1
        for x in (a, b, c):
            assert send(lb, frames[x]) == reals[x]
        assert use_counts(lb, cpu, e) == [2, 2, 2, 1]
        assert send(lb, frames[e]) == reals[e] and way_of(lb, cpu, e) is None  # kept out again
        assert use_counts(lb, cpu, e) == [1, 1, 1, 0]
        assert send(lb, frames[e]) == reals[e]
        assert [way_of(lb, cpu, x) for x in (a, b, c, d, e)] == ["home", "other", "third", None, "fourth"]
        assert use_counts(lb, cpu, e) == [1, 1, 1, 2]  # a fill counts as a use
        assert last_bits(lb, cpu, e) == [False, False, False, True]
        hits, fills = cache_stats(lb)
        assert send(lb, frames[e]) == reals[e] and cache_stats(lb) == (hits + 1, fills)
        # f: kept out once (nothing at 0), then home, the first at 0 not filled last, goes
        assert send(lb, frames[f]) == reals[f] and way_of(lb, cpu, f) is None
        assert use_counts(lb, cpu, e) == [0, 0, 0, 1]
        assert send(lb, frames[f]) == reals[f]
        assert [way_of(lb, cpu, x) for x in (a, b, c, e, f)] == [None, "other", "third", "fourth", "home"]
        assert last_bits(lb, cpu, e) == [True, False, False, False]
        # g and h: other (b) and third (c) are at 0, the first of them goes each time
        assert send(lb, frames[g]) == reals[g]
        assert [way_of(lb, cpu, x) for x in (b, c, e, f, g)] == [None, "third", "fourth", "home", "other"]
        assert send(lb, frames[h]) == reals[h]
        assert [way_of(lb, cpu, x) for x in (c, e, f, g, h)] == [None, "fourth", "home", "other", "third"]
        # the way filled last (h's) goes only when it alone is at 0: e sends, a (a newcomer
        # again) is kept out twice with f, g and e sending in between, and takes third
        assert send(lb, frames[e]) == reals[e]
        assert send(lb, frames[a]) == reals[a] and use_counts(lb, cpu, e) == [1, 1, 1, 1]
        assert send(lb, frames[e]) == reals[e]
        assert send(lb, frames[a]) == reals[a] and use_counts(lb, cpu, e) == [0, 0, 0, 1]
        for x in (f, g, e):
            assert send(lb, frames[x]) == reals[x]
        assert use_counts(lb, cpu, e) == [2, 2, 0, 2] and last_bits(lb, cpu, e)[2]
        assert send(lb, frames[a]) == reals[a]
        assert [way_of(lb, cpu, x) for x in (a, e, f, g, h)] == ["third", "fourth", "home", "other", None]
        # and not while another is at 0: b is kept out twice, f and g send, b takes fourth
        # (e's), not third (a's, filled last)
        for _ in range(2):
            assert send(lb, frames[b]) == reals[b] and way_of(lb, cpu, b) is None
        for x in (f, g):
            assert send(lb, frames[x]) == reals[x]
        assert use_counts(lb, cpu, e) == [2, 2, 0, 0] and last_bits(lb, cpu, e)[2]
        assert send(lb, frames[b]) == reals[b]
        assert [way_of(lb, cpu, x) for x in (a, b, e, f, g)] == ["third", "fourth", None, "home", "other"]
    finally:
        lb.close()


def test_a_way_that_does_not_route_goes_first_to_a_newcomer(cpu):
    """A SYN reusing d's 5-tuple marks d's whole set stale; a, b and c refill their own ways
    (each still held: their next packets take the connection table once), d does not send.
    Every way was used since, yet newcomer e's first packet fills d's way: a way that does
    not route (stale here; an older epoch or past its refresh alike) is taken before any
    second chance is looked at."""
    lb = make_lb(cpu)
    try:
        flows = same_home(5, first_port=46000)
        a, b, c, d, e = flows
        frames, reals = fill_set(lb, cpu, flows)
        assert send(lb, syn(d)) == reals[d]  # the same real: the ring did not change
        for x in (a, b, c):
            assert send(lb, frames[x]) == reals[x]
        assert [way_of(lb, cpu, x) for x in (a, b, c, d)] == list(WAYS)
        assert use_counts(lb, cpu, e) == [2] * 4
        hits, fills = cache_stats(lb)
        assert send(lb, frames[e]) == reals[e]
        assert [way_of(lb, cpu, x) for x in (a, b, c, d, e)] == ["home", "other", "third", None, "fourth"]
        assert cache_stats(lb) == (hits, fills + 1)
    finally:
        lb.close()


@pytest.mark.parametrize("first", ["moved", "other"])
def test_a_connection_write_forgets_every_way_of_the_set(lb, first):
    """A SYN reusing the 5-tuple of a flow held in the last way of its set (the SYN path
    marks the flow's whole set stale, not its home slot only): the next ACK sees the new
    entry. "other": the home slot's flow sends first and refills its slot (its stale bit
    cleared), so the moved flow's way is stale beside a live one (the fast path reads that
    way's own bit)."""
    flows = same_home(4, first_port=45000)
    a, d = flows[0], flows[3]
    frames = {f: build_flow_packet(f) for f in flows}
    reals = {f: send(lb, frames[f]) for f in flows}
    for f in flows:
        send(lb, frames[f])
    if lb.config.flow_cache:
        assert way_of(lb, min(os.sched_getaffinity(0)), d) == "fourth"
    move_flow(lb, VIP_TCP, reals[d])
    new = send(lb, syn(d))
    assert new != reals[d]
    if first == "other":
        assert send(lb, frames[a]) == reals[a]
    assert {send(lb, frames[d]) for _ in range(3)} == {new}
    assert {f: send(lb, frames[f]) for f in flows[:3]} == {f: reals[f] for f in flows[:3]}


# --- forward_cached_v4 (lb_pipeline.h): an IPv4 flow's home slot, straight from the headers --
def _with_ip_option(frame: bytes, option: bytes) -> bytes:
    """The IPv4 frame with `option` (4 bytes) after its header: ihl 6, tot_len + 4."""
    ihl_tos, tot_len = frame[14:16], struct.unpack("!H", frame[16:18])[0]
    hdr = bytes([0x46]) + ihl_tos[1:] + struct.pack("!H", tot_len + 4) + frame[18:34]
    return frame[:14] + hdr + option + frame[34:]


def _v4_variants(flow: Flow) -> dict[str, bytes]:
    """Frames of a hot IPv4 flow that the register fast path must leave to the pipeline (or
    route exactly as it would): the same 5-tuple each time."""
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    ip = dict(src=str(flow.src), dst=str(flow.dst))
    tcp = flow.proto == 6
    l4 = TCP(sport=flow.src_port, dport=flow.dst_port, flags="A") if tcp else UDP(sport=flow.src_port, dport=flow.dst_port)
    plain = bytes(eth / IP(**ip) / l4 / b"payload")
    out = {
        "plain": plain,
        "fragment": bytes(eth / IP(flags="MF", **ip) / l4 / b"payload"),
        "later fragment": bytes(eth / IP(frag=8, **ip) / l4 / b"payload"),
        "ip options": bytes(eth / IP(options=[IPOption_NOP()] * 4, **ip) / l4 / b"payload"),
        # options whose bytes are the ports: read at the header's fixed offset, the 5-tuple
        # would be the flow's
        "ip options that look like its ports": _with_ip_option(plain, plain[34:38]),
        "ip length beyond the frame": plain[:16] + struct.pack("!H", len(plain) - 14 + 8) + plain[18:],
        "ip length below its header": plain[:16] + struct.pack("!H", 12) + plain[18:],
        "truncated l4 header": plain[:14 + 20 + 6],
        "above max_pckt_size": bytes(eth / IP(**ip) / l4 / (b"x" * 1500)),
    }
    if tcp:
        out["syn"] = bytes(eth / IP(**ip) / TCP(sport=flow.src_port, dport=flow.dst_port, flags="S"))
        out["rst"] = bytes(eth / IP(**ip) / TCP(sport=flow.src_port, dport=flow.dst_port, flags="R"))
    return out


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_odd_frames_of_a_hot_ipv4_flow_get_the_pipelines_verdict(cpu, proto):
    """Every variant of a flow held in its fast home slot gets the verdict, bytes and
    counters a balancer without the flow cache gives it, and the flow's next plain packet
    still does too."""
    flow = Flow("192.0.2.40", "10.200.1.1", 46000, 80, proto)
    variants = _v4_variants(flow)
    lbs = {on: make_lb(cpu, flow_cache=on) for on in (True, False)}
    try:
        for name, frame in variants.items():
            got = {}
            for on, lb in lbs.items():
                for _ in range(3):
                    send(lb, variants["plain"])
                if on:
                    assert slot_of(lb, cpu, flow)[1] & structs.FLOW_CACHE_FAST, name
                res = lb.run_packet(frame)
                after = lb.run_packet(variants["plain"])
                got[on] = (res.verdict, res.data, after.verdict, after.data, lb.get_stats_for_vip(
                    VIP_TCP if proto == "tcp" else VIP_UDP), lb.get_lru_stats(), lb.get_xdp_total_stats(),
                    lb.get_xdp_tx_stats(), lb.get_xdp_drop_stats(), lb.get_xdp_pass_stats())
            assert got[True] == got[False], name
    finally:
        for lb in lbs.values():
            lb.close()


def test_a_capture_records_the_packets_of_a_hot_ipv4_flow(cpu):
    """Capture on: no packet skips it through the register fast path."""
    lb = make_lb(cpu)
    try:
        frame = build_flow_packet(Flow("192.0.2.41", "10.200.1.1", 46100, 80, "tcp"))
        for _ in range(3):
            send(lb, frame)
        with lb.capture(vip=VIP_TCP) as cap:
            for _ in range(4):
                send(lb, frame)
            got = cap.poll(1.0)
        assert [p.direction for p in got] == ["in", "out"] * 4
    finally:
        lb.close()


def test_a_tpr_option_of_a_hot_flow_is_read(cpu):
    """tcp_server_id_routing: every TCP segment is routed by its server-id option when it
    has one (the connection table follows, lru_sync), also in a flow with a fast slot: with
    the knob no TCP slot is filled fast, but one left by a build without it (a hitless
    upgrade keeps flow_cache; here written behind the control plane's back) is not used."""
    lb = make_lb(cpu, tcp_server_id_routing=True)
    try:
        lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal(r, 1000 + i) for i, r in enumerate(REALS)])
        flow = Flow("192.0.2.42", "10.200.1.1", 46200, 80, "tcp")
        plain = build_flow_packet(flow)
        real = send(lb, plain)
        for _ in range(3):
            assert send(lb, plain) == real
        other = next(r for r in REALS if r != real)
        forge_fast_slot(lb, cpu, flow, VIP_TCP, real)
        opt = [(0xB7, struct.pack("<I", 1000 + REALS.index(other)))]
        tagged = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                       / IP(src=str(flow.src), dst=str(flow.dst))
                       / TCP(sport=flow.src_port, dport=flow.dst_port, flags="A", options=opt))
        assert send(lb, tagged) == other
        assert send(lb, plain) == other  # the connection table now says `other`
    finally:
        lb.close()


CLOCK_MONOTONIC_COARSE = 6  # linux/time.h (the time module does not name it)


def forge_fast_slot(lb: KatranLb, cpu: int, flow: Flow, vip: VipKey, real: str) -> None:
    """A live fast slot routing `flow` of `vip` to `real`, written behind the control plane's
    back into the flow's home slot (fresh, UDP: seen now)."""
    key = key_of(flow)
    seen = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE) if flow.proto == 17 else 0  # conn_now()'s clock
    slot = struct.pack("<40sIIIIQ", key, lb.get_index_for_real(real), epoch(lb), _jiffies64() & 0xFFFFFFFE,
                       structs.FLOW_CACHE_FAST | lb._vips[vip].num, seen)
    lb._obj.map("flow_cache").update(structs.u32(cpu * FLOW_CACHE_SLOTS + structs.flow_cache_slot(key)), slot)
    assert slot_of(lb, cpu, flow) == (lb.get_index_for_real(real), structs.FLOW_CACHE_FAST | lb._vips[vip].num)


def test_gue_to_its_port_is_decapsulated_even_with_a_fast_slot(cpu):
    """inline_decap_gue: a UDP frame to gue_dport goes to the decapsulation path before any
    flow-cache slot is read -- also one whose 5-tuple has a fast slot (left by a build without
    the knob: a hitless upgrade keeps flow_cache; here written behind the control plane's
    back)."""
    lb = make_lb(cpu, inline_decap_gue=True, gue_dport=6080)
    try:
        vip = VipKey("10.200.1.5", 6080, "udp")
        lb.add_vip(vip)
        lb.add_real_for_vip(Real(REALS[0], 1), vip)
        flow = Flow("192.0.2.43", "10.200.1.5", 46300, 6080, "udp")
        frame = build_flow_packet(flow)
        before = lb.run_packet(frame)
        assert before.verdict != "XDP_TX"  # not ours to decapsulate, not balanced either
        key = key_of(flow)
        home = structs.flow_cache_slot(key)
        forge_fast_slot(lb, cpu, flow, vip, REALS[0])
        after = lb.run_packet(frame)
        assert (after.verdict, after.data) == (before.verdict, before.data)
    finally:
        lb.close()


def test_a_flow_is_not_routed_from_a_slot_of_another_source_port(cpu):
    """Two flows of one client whose only difference is the source port, with one home slot
    and different reals: the second is routed to its own real, not from the first's fast
    slot (the register compare reads the ports word too)."""
    lbs = {on: make_lb(cpu, flow_cache=on) for on in (True, False)}
    try:
        ref = lbs[False]
        first = Flow("192.0.2.44", "10.200.1.1", 47000, 80, "tcp")
        home = structs.flow_cache_slot(key_of(first))
        real = send(ref, build_flow_packet(first))
        second = next(f for f in (Flow("192.0.2.44", "10.200.1.1", p, 80, "tcp") for p in range(47001, 65536))
                      if structs.flow_cache_slot(key_of(f)) == home and send(ref, build_flow_packet(f)) != real)
        lb = lbs[True]
        for _ in range(3):
            assert send(lb, build_flow_packet(first)) == real
        assert slot_of(lb, cpu, first)[1] & structs.FLOW_CACHE_FAST
        assert {send(lb, build_flow_packet(second)) for _ in range(3)} == {send(ref, build_flow_packet(second))}
    finally:
        for lb in lbs.values():
            lb.close()
