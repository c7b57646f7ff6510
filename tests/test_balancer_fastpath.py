"""The balancer's per-packet shortcuts keep behaviour: RST, new-connection rate limit,
the IPv4 outer checksum, and disabled feature knobs pruned by the verifier."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from katran import structs

from test_balancer_prog import ALL_KNOBS, IP, OBJ, TCP, XDP_TX, Balancer, Ether, outer_dst, tcp4, udp4  # noqa: F401

CLOCK_MONOTONIC_COARSE = 6  # <linux/time.h>; Python's time module does not name it

pytestmark = [pytest.mark.privileged, pytest.mark.skipif(not OBJ.is_file(), reason=f"{OBJ} not built (python -m katran.build)")]


@pytest.fixture
def lb():
    b = Balancer()
    yield b
    b.close()


def test_rst_of_a_new_flow_is_balanced_but_not_remembered(lb):
    lb.real(1, "10.0.0.1")
    lb.vip("10.200.1.1", 80, 6, 0, ring=1)
    verdict, out = lb.run(tcp4(flags="R"))
    assert verdict == XDP_TX and outer_dst(out) == "10.0.0.1"
    assert lb.lru("192.168.1.1", "10.200.1.1", 31337, 80, 6) is None
    lb.run(tcp4(flags="S"))
    assert lb.lru("192.168.1.1", "10.200.1.1", 31337, 80, 6) == (1, 0)


def test_new_connection_rate_limit_stops_lru_writes():
    b = Balancer(max_conn_rate=2)
    try:
        b.real(1, "10.0.0.1")
        b.vip("10.200.1.1", 80, 6, 0, ring=1)
        for sport in (1001, 1002, 1003):
            assert b.run(tcp4(sport=sport, flags="S"))[0] == XDP_TX
        stored = [b.lru("192.168.1.1", "10.200.1.1", p, 80, 6) is not None for p in (1001, 1002, 1003)]
        assert stored == [True, True, False]
        assert b.gstat(structs.NEW_CONN_RATE_CNTR)[0] == 3
    finally:
        b.close()


def test_udp_entries_keep_a_coarse_monotonic_access_time(lb):
    """UDP entries carry CLOCK_MONOTONIC ns at tick precision (bpf_ktime_get_coarse_ns: no
    clock-source read per packet); the control plane ages them against the same clock."""
    lb.real(1, "10.0.0.1")
    lb.vip("10.200.1.1", 80, 17, 0, ring=1)
    before = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)
    lb.run(udp4())
    first = lb.lru("192.168.1.1", "10.200.1.1", 31337, 80, 17)[1]
    after = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)
    assert before <= first <= after
    assert abs(first - time.monotonic_ns()) < 1_000_000_000  # the monotonic clock, not the wall clock
    time.sleep(0.02)  # more than a tick
    lb.run(udp4())
    second = lb.lru("192.168.1.1", "10.200.1.1", 31337, 80, 17)[1]
    assert second > first  # refreshed on use


def test_udp_entry_stamped_ahead_of_the_coarse_clock_is_fresh(lb):
    """After a hitless upgrade from a build that stamped UDP entries with the precise clock, an
    entry may be up to a tick ahead of the coarse clock: it is fresh (its real kept), not a
    wrapped-around age beyond the timeout."""
    lb.real(1, "10.0.0.1")
    lb.real(2, "10.0.0.2")
    lb.vip("10.200.1.1", 80, 17, 0, ring=1)
    key = structs.flow_key("192.168.1.1", "10.200.1.1", 31337, 80, 17)
    ahead = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 50_000_000  # 50 ms ahead of any tick
    lb.map("fallback_cache").update(key, structs.real_pos_lru(1, ahead))
    lb.ring(0, 2)  # a re-hash would pick real 2
    _, out = lb.run(udp4())
    assert outer_dst(out) == "10.0.0.1"


@pytest.mark.parametrize("real", ["10.0.0.1", "255.255.255.254", "0.0.0.1", "172.16.255.255"])
@pytest.mark.parametrize("tos,size", [(0, 0), (0xFF, 7), (0x2E, 1400), (0x01, 333)])
def test_ipv4_outer_header_checksum(lb, real, tos, size):
    lb.real(1, real)
    lb.vip("10.200.1.1", 80, 6, 0, ring=1)
    frame = Ether() / IP(src="203.0.113.250", dst="10.200.1.1", tos=tos) / TCP(sport=65535, dport=80) / (b"y" * size)
    verdict, out = lb.run(frame)
    assert verdict == XDP_TX
    outer = Ether(out)[IP]
    got = outer.chksum
    del outer.chksum
    assert got == IP(bytes(outer)).chksum
    assert outer.dst == real and outer.tos == tos


def _xlated_insns(prog) -> int:
    out = subprocess.run(["bpftool", "prog", "show", "id", str(prog.id), "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["bytes_xlated"] // 8


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed")
def test_disabled_knobs_are_pruned_by_the_verifier():
    off = Balancer()
    on = Balancer(**ALL_KNOBS)
    try:
        n_off, n_on = _xlated_insns(off.prog), _xlated_insns(on.prog)
    finally:
        off.close()
        on.close()
    # the features' code (TPR, stable routing, LPM, global LRU, decap, ICMP too-big, GUE) is gone
    assert n_on > 1.5 * n_off, (n_off, n_on)


def test_default_ring_size_slot_without_division():
    """ring_size 65537 takes the division-free slot path: it must pick hash % 65537."""
    import ipaddress
    import random
    import struct

    from katran.adapter import bpf
    from katran.maglev import jhash_2words

    ring, max_vips, n_reals = 65537, 32, 4000
    spec = bpf.ObjectSpec.open(OBJ)
    try:
        spec.set_max_entries("vip_map", max_vips)
        spec.set_max_entries("stats", 2 * max_vips)
        spec.set_max_entries("ch_rings", max_vips * ring)
        spec.set_max_entries("server_id_map", 1 << 16)
        spec.set_rodata("max_vips", max_vips)
        spec.set_rodata("ring_size", ring)
        obj = spec.load()
    finally:
        spec.close()
    try:
        obj.map("ctl_array").update(structs.u32(0), structs.ctl_value_mac(bytes.fromhex("0000deadbeaf")))
        for i in range(n_reals):
            obj.map("reals").update(structs.u32(i + 1), structs.real_definition(f"10.{i >> 8}.{i & 255}.1"))
        vip_num = 5
        obj.map("vip_map").update(structs.vip_definition("10.200.1.1", 80, 6), structs.vip_meta(0, vip_num))
        keys = [structs.u32(vip_num * ring + s) for s in range(ring)]
        obj.map("ch_rings").update_batch(keys, [structs.u32(s % n_reals + 1) for s in range(ring)])
        rnd = random.Random(7)
        client_first_bytes = [b for b in range(1, 224) if b != 127]  # martian sources are dropped
        for _ in range(300):
            src = str(ipaddress.IPv4Address(rnd.choice(client_first_bytes) << 24 | rnd.getrandbits(24)))
            sport = rnd.randrange(1, 65536)
            frame = Ether() / IP(src=src, dst="10.200.1.1") / TCP(sport=sport, dport=80, flags="S")
            res = obj.program("balancer_ingress").test_run(bytes(frame))
            s = int.from_bytes(ipaddress.ip_address(src).packed, "little")
            ports = int.from_bytes(struct.pack("!HH", sport, 80), "little")
            i = jhash_2words(s, ports, ring * max_vips) % ring % n_reals
            assert res.retval == XDP_TX
            assert outer_dst(res.data) == f"10.{i >> 8}.{i & 255}.1", (src, sport)
    finally:
        obj.close()
