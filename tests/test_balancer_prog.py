"""Focused BPF_PROG_TEST_RUN tests of balancer.bpf.o (behaviour beyond the fixtures).

The object is loaded through the adapter with small maps (max_vips 32, ring 13)
and provisioned by hand, so each test controls rings, knobs and LRU state.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import time
from pathlib import Path

import pytest

from katran import structs

scapy_all = pytest.importorskip("scapy.all")
from scapy.all import ICMP, IP, TCP, UDP, Ether, ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, Raw  # noqa: E402

OBJ_DIR = Path(__file__).resolve().parents[1] / "katran" / "bpf" / "obj"
OBJ = OBJ_DIR / "balancer.bpf.o"

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(not OBJ.is_file(), reason=f"{OBJ} not built (python -m katran.build)"),
]

MAX_VIPS = 32  # stats holds max_vips + 22 global counters within 2 * max_vips
RING = 13
GW_MAC = bytes.fromhex("0000deadbeaf")
IN_DST_MAC = "02:00:00:00:00:02"
IN_SRC_MAC = "02:00:00:00:00:01"
XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
ALL_KNOBS = {
    "gue_encap": 1, "gue_dport": 9886, "tcp_server_id_routing": 1, "udp_stable_routing": 1,
    "lpm_src_lookup": 1, "global_lru": 1, "local_delivery": 1, "icmp_toobig_generation": 1,
    "inline_decap_ipip": 1, "inline_decap_gue": 1, "decap_strict_destination": 1,
}


class Balancer:
    """A loaded balancer with tiny maps and helpers to provision and run frames."""

    def __init__(self, **knobs):
        from katran.adapter import bpf

        spec = bpf.ObjectSpec.open(OBJ)
        try:
            spec.set_max_entries("vip_map", MAX_VIPS)
            spec.set_max_entries("stats", 2 * MAX_VIPS)
            spec.set_max_entries("ch_rings", MAX_VIPS * RING)
            spec.set_max_entries("server_id_map", 1 << 16)
            spec.set_rodata("max_vips", MAX_VIPS)
            spec.set_rodata("ring_size", RING)
            for k, v in knobs.items():
                spec.set_rodata(k, v)
            self.obj = spec.load()
        finally:
            spec.close()
        self.prog = self.obj.program("balancer_ingress")
        self.map = self.obj.map
        self.map("ctl_array").update(structs.u32(0), structs.ctl_value_mac(GW_MAC))
        self.inner_maps = []

    def close(self):
        for m in self.inner_maps:
            m.close()
        self.obj.close()

    def real(self, idx: int, addr: str, flags: int = 0):
        self.map("reals").update(structs.u32(idx), structs.real_definition(addr, flags))

    def vip(self, addr: str, port: int, proto: int, num: int, flags: int = 0, ring=None):
        self.map("vip_map").update(structs.vip_definition(addr, port, proto), structs.vip_meta(flags, num))
        self.map("vip_addrs").update(structs.address(addr), structs.u32(1))
        if ring is not None:
            self.ring(num, ring)

    def ring(self, num: int, ring):
        if isinstance(ring, int):
            ring = [ring] * RING
        assert len(ring) == RING
        for i, r in enumerate(ring):
            self.map("ch_rings").update(structs.u32(num * RING + i), structs.u32(r))

    def run(self, frame) -> tuple[int, bytes]:
        res = self.prog.test_run(bytes(frame))
        return res.retval, res.data

    def gstat(self, which: int) -> tuple[int, int]:
        """A global counter: its stats slot plus its hot_stats pair (dataplane.percpu_global)."""
        v1, v2 = structs.lb_stats_sum(self.map("stats").lookup(structs.u32(MAX_VIPS + which)))
        hot = [structs.lb_stats_unpack(v[16 * which:16 * which + 16])
               for v in self.map("hot_stats").lookup(structs.u32(0))]
        return v1 + sum(h[0] for h in hot), v2 + sum(h[1] for h in hot)

    def vip_stat(self, num: int) -> tuple[int, int]:
        return structs.lb_stats_sum(self.map("stats").lookup(structs.u32(num)))

    def lru(self, src, dst, sport, dport, proto):
        raw = self.map("fallback_cache").lookup(structs.flow_key(src, dst, sport, dport, proto))
        return None if raw is None else structs.real_pos_lru_unpack(raw)


@pytest.fixture
def lb():
    b = Balancer()
    yield b
    b.close()


def eth():
    return Ether(src=IN_SRC_MAC, dst=IN_DST_MAC)


def tcp4(src="192.168.1.1", dst="10.200.1.1", sport=31337, dport=80, flags="A", **ip):
    return eth() / IP(src=src, dst=dst, **ip) / TCP(sport=sport, dport=dport, flags=flags) / Raw(b"katran test pkt")


def udp4(src="192.168.1.1", dst="10.200.1.1", sport=31337, dport=80, payload=b"katran test pkt"):
    return eth() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)


def tcp6(src="fc00:2::1", dst="fc00:1::1", sport=31337, dport=80, flags="A", **ip):
    return eth() / IPv6(src=src, dst=dst, **ip) / TCP(sport=sport, dport=dport, flags=flags) / Raw(b"katran test pkt")


def outer_dst(frame: bytes) -> str:
    pkt = Ether(frame)
    return pkt[IPv6].dst if IPv6 in pkt and pkt.type == 0x86DD else pkt[IP].dst


# ----------------------------------------------------------------------------- loading
def test_loads_with_every_knob_on():
    b = Balancer(**ALL_KNOBS)
    try:
        b.real(1, "10.0.0.1")
        b.vip("10.200.1.1", 80, 6, 0, ring=1)
        b.map("pckt_srcs").update(structs.u32(0), structs.real_definition("10.0.13.37"))
        verdict, out = b.run(tcp4())
        assert verdict == XDP_TX
        assert Ether(out)[UDP].dport == 9886  # GUE
    finally:
        b.close()


def test_xdp_pass_object_loads_and_passes():
    from katran.adapter import bpf

    spec = bpf.ObjectSpec.open(OBJ_DIR / "xdp_pass.bpf.o")
    try:
        obj = spec.load()
    finally:
        spec.close()
    try:
        frame = bytes(tcp4())
        res = obj.program("xdp_pass").test_run(frame)
        assert res.retval == XDP_PASS and res.data == frame
    finally:
        obj.close()


# ----------------------------------------------------------------------------- verdicts
def test_non_vip_passes_and_is_counted(lb):
    lb.real(1, "10.0.0.1")
    lb.vip("10.200.1.1", 80, 6, 0, ring=1)
    for frame in (tcp4(dport=82), tcp6(), udp4(dst="10.9.9.9"), eth() / Raw(b"\x00" * 50)):
        frame = bytes(frame)
        verdict, out = lb.run(frame)
        assert verdict == XDP_PASS and out == frame
    assert lb.gstat(structs.XDP_PASS_CNTR)[0] == 4
    assert lb.gstat(structs.XDP_TOTAL_CNTR)[0] == 4
    assert lb.gstat(structs.LRU_CNTRS) == (0, 0)


@pytest.mark.parametrize(
    "frame",
    [
        eth() / IP(src="192.168.1.1", dst="10.200.1.1", flags="MF") / TCP(dport=80),
        eth() / IP(src="192.168.1.1", dst="10.200.1.1", frag=10) / TCP(dport=80),
        eth() / IP(src="192.168.1.1", dst="10.200.1.1", options=[b"\x01\x01\x01\x01"]) / TCP(dport=80),
        eth() / IPv6(src="fc00:2::1", dst="fc00:1::1") / IPv6ExtHdrFragment() / TCP(dport=80),
        eth() / IP(src="192.168.1.1", dst="10.200.1.1", proto=6) / Raw(b"\x00\x01"),  # truncated TCP
    ],
    ids=["v4-more-fragments", "v4-offset", "v4-options", "v6-fragment", "truncated-tcp"],
)
def test_dropped_frames(lb, frame):
    lb.real(1, "10.0.0.1")
    lb.vip("10.200.1.1", 80, 6, 0, ring=1)
    lb.vip("fc00:1::1", 80, 6, 1, ring=1)
    verdict, _ = lb.run(frame)
    assert verdict == XDP_DROP
    assert lb.gstat(structs.XDP_DROP_CNTR) == (1, len(frame))


def test_oversized_frame_to_vip_dropped_but_not_to_others(lb):
    lb.real(1, "10.0.0.1")
    lb.vip("10.200.1.1", 80, 17, 0, ring=1)
    big = udp4(payload=b"x" * (1515 - 42))
    assert len(big) == 1515
    assert lb.run(big)[0] == XDP_DROP
    assert lb.run(udp4(payload=b"x" * (1514 - 42)))[0] == XDP_TX
    assert lb.run(udp4(dst="10.200.1.7", payload=b"x" * (1515 - 42)))[0] == XDP_PASS
    assert lb.gstat(structs.LRU_CNTRS)[0] == 1  # the oversized frame never reached the LRU


def test_icmp_too_big_generation_v4():
    b = Balancer(icmp_toobig_generation=1, max_pckt_size=600)
    try:
        b.real(1, "10.0.0.1")
        b.vip("10.200.1.1", 80, 17, 0, ring=1)
        frame = udp4(payload=b"y" * 700)
        verdict, out = b.run(frame)
        assert verdict == XDP_TX
        rep = Ether(out)
        assert rep.dst == IN_SRC_MAC and rep.src == IN_DST_MAC
        assert rep[IP].src == "10.200.1.1" and rep[IP].dst == "192.168.1.1" and rep[IP].ttl == 64
        assert rep[ICMP].type == 3 and rep[ICMP].code == 4 and rep[ICMP].nexthopmtu == 600 - 14
        assert len(out) == 98 + 28
        # checksums as a receiver would verify them
        fixed = Ether(out)
        del fixed[IP].chksum
        del fixed[ICMP].chksum
        fixed = Ether(bytes(fixed))
        assert fixed[IP].chksum == rep[IP].chksum and fixed[ICMP].chksum == rep[ICMP].chksum
        assert b.gstat(structs.ICMP_TOOBIG_CNTRS) == (1, 0)
    finally:
        b.close()


# ----------------------------------------------------------------------------- encapsulation
def test_ipip_v4_encap_headers(lb):
    lb.real(1, "10.0.0.2")
    lb.vip("10.200.1.1", 80, 6, 0, ring=1)
    frame = tcp4(tos=0x8C)
    verdict, out = lb.run(frame)
    assert verdict == XDP_TX
    pkt = Ether(out)
    assert pkt.dst == "00:00:de:ad:be:af" and pkt.src == IN_DST_MAC
    outer = pkt[IP]
    assert outer.proto == 4 and outer.ttl == 64 and outer.tos == 0x8C and outer.id == 0 and outer.flags == 0
    # 172.16.(sport_lo ^ src[2]).(sport_hi ^ src[3]) for 192.168.1.1:31337 (0x7a69)
    assert outer.src == f"172.16.{0x69 ^ 1}.{0x7A ^ 1}" and outer.dst == "10.0.0.2"
    assert outer.len == len(frame) - 14 + 20
    recomputed = IP(bytes(outer))
    del recomputed.chksum
    assert IP(bytes(recomputed)).chksum == outer.chksum
    assert out[14 + 20:] == bytes(frame)[14:]  # inner packet untouched


def test_v4_vip_with_v6_real(lb):
    lb.real(1, "fc00::1")
    lb.vip("10.200.1.3", 80, 6, 0, ring=1)
    frame = tcp4(dst="10.200.1.3", tos=0x20)
    verdict, out = lb.run(frame)
    assert verdict == XDP_TX
    pkt = Ether(out)
    assert pkt.type == 0x86DD
    ip6 = pkt[IPv6]
    assert ip6.nh == 4 and ip6.hlim == 64 and ip6.tc == 0x20 and ip6.fl == 0
    assert ip6.dst == "fc00::1"
    # 0100:: then src ^ [sport_hi, sport_lo, 0, 0]
    src = ipaddress.ip_address("192.168.1.1").packed
    want = bytes([1, 0]) + bytes(10) + bytes([src[0] ^ 0x7A, src[1] ^ 0x69, src[2], src[3]])
    assert ipaddress.ip_address(ip6.src).packed == want
    assert ip6.plen == len(frame) - 14
    assert out[54:] == bytes(frame)[14:]


def test_v6_vip_ip6ip6_encap(lb):
    lb.real(1, "fc00::3")
    lb.vip("fc00:1::1", 80, 6, 0, ring=1)
    frame = tcp6(tc=0x8C)
    verdict, out = lb.run(frame)
    assert verdict == XDP_TX
    ip6 = Ether(out)[IPv6]
    assert ip6.nh == 41 and ip6.tc == 0x8C and ip6.plen == len(frame) - 14 and ip6.src == "100::7a69:1"


def test_gue_encap_checksum_is_valid():
    b = Balancer(gue_encap=1, gue_dport=9886)
    try:
        b.map("pckt_srcs").update(structs.u32(0), structs.real_definition("10.0.13.37"))
        b.map("pckt_srcs").update(structs.u32(1), structs.real_definition("fc00:2307::1337"))
        b.real(1, "10.0.0.1")
        b.real(2, "fc00::2")
        b.vip("10.200.1.1", 80, 6, 0, ring=1)
        b.vip("10.200.1.1", 80, 17, 1, ring=2)
        b.vip("fc00:1::1", 80, 6, 2, ring=2)
        for frame in (tcp4(), udp4(), tcp6()):
            frame = Ether(bytes(frame))  # inner checksums filled in by scapy
            verdict, out = b.run(frame)
            assert verdict == XDP_TX
            pkt = Ether(out)
            udp = pkt[UDP]
            assert udp.dport == 9886
            got = udp.chksum
            del pkt[UDP].chksum
            assert Ether(bytes(pkt))[UDP].chksum == got, f"bad outer UDP checksum for {frame.summary()}"
            src = pkt[IPv6].src if pkt.type == 0x86DD else pkt[IP].src
            assert src in ("10.0.13.37", "fc00:2307::1337")
    finally:
        b.close()


# ----------------------------------------------------------------------------- hashing
def _v4_slot(src: str, sport: int, dport: int) -> int:
    from katran.maglev import jhash_2words

    s = int.from_bytes(ipaddress.ip_address(src).packed, "little")
    ports = int.from_bytes(struct.pack("!HH", sport, dport), "little")
    return jhash_2words(s, ports, RING * MAX_VIPS) % RING


def _v6_slot(src: str, sport: int, dport: int) -> int:
    from katran.maglev import jhash, jhash_2words

    h = jhash(ipaddress.ip_address(src).packed, MAX_VIPS)
    ports = int.from_bytes(struct.pack("!HH", sport, dport), "little")
    return jhash_2words(h, ports, RING * MAX_VIPS) % RING


def _slot_ring(lb: Balancer, num: int):
    """Ring whose slot i holds real i+1 (reals 1..RING all defined)."""
    for i in range(RING):
        lb.real(i + 1, f"10.0.1.{i + 1}")
    lb.ring(num, list(range(1, RING + 1)))


def test_flow_hash_picks_the_jhash_slot(lb):
    lb.vip("10.200.1.1", 80, 6, 3)
    _slot_ring(lb, 3)
    for sport in (1000, 31337, 40000, 55555):
        verdict, out = lb.run(tcp4(sport=sport))
        assert verdict == XDP_TX
        assert outer_dst(out) == f"10.0.1.{_v4_slot('192.168.1.1', sport, 80) + 1}"


def test_flow_hash_v6(lb):
    lb.vip("fc00:1::1", 80, 6, 2)
    _slot_ring(lb, 2)
    for src in ("fc00:2::1", "fc00:2::77", "2001:db8::5"):
        verdict, out = lb.run(tcp6(src=src))
        assert verdict == XDP_TX
        assert outer_dst(out) == f"10.0.1.{_v6_slot(src, 31337, 80) + 1}"


def test_port0_vip_hashes_without_dport_and_dport_hash(lb):
    lb.vip("10.200.1.2", 0, 6, 0)
    lb.vip("10.200.1.4", 0, 6, 1, flags=8)  # DPORT_HASH
    _slot_ring(lb, 0)
    lb.ring(1, list(range(1, RING + 1)))
    _, out = lb.run(tcp4(dst="10.200.1.2", dport=42))
    assert outer_dst(out) == f"10.0.1.{_v4_slot('192.168.1.1', 31337, 0) + 1}"
    _, out = lb.run(tcp4(dst="10.200.1.4", dport=42))
    assert outer_dst(out) == f"10.0.1.{_v4_slot('0.0.0.0', 42, 42) + 1}"
    # DPORT_HASH: the outer source uses a zeroed client address but the real source port
    assert Ether(out)[IP].src == f"172.16.{0x69}.{0x7A}"


def test_port0_vips_are_looked_up_unless_known_to_be_none(lb):
    """ctl_array[CTL_ANY_PORT_VIPS] holds 1 + the number of port-0 VIPs (KatranLb keeps it).
    0, never written (this harness, another control plane), means not known: the program looks
    port 0 up, as Katran. 1 (none) skips that lookup, so a port-0 VIP the count does not know
    is not found."""
    slot = structs.u32(structs.CTL_ANY_PORT_VIPS)
    lb.real(1, "10.0.0.1")
    lb.vip("10.200.1.2", 0, 6, 0, ring=1)
    assert lb.run(tcp4(dst="10.200.1.2", dport=42))[0] == XDP_TX  # slot 0: not known
    lb.map("ctl_array").update(slot, structs.ctl_value_u64(2))  # one port-0 VIP
    assert lb.run(tcp4(dst="10.200.1.2", dport=42))[0] == XDP_TX
    lb.map("ctl_array").update(slot, structs.ctl_value_u64(1))  # none
    assert lb.run(tcp4(dst="10.200.1.2", dport=42))[0] == XDP_PASS
    assert lb.run(tcp4(dst="10.9.9.9", dport=42))[0] == XDP_PASS


def test_no_sport_flag_ignores_source_port(lb):
    lb.vip("10.200.1.1", 80, 6, 0, flags=1)  # NO_SPORT
    _slot_ring(lb, 0)
    for sport in (1, 2222, 65000):
        _, out = lb.run(tcp4(sport=sport))
        assert outer_dst(out) == f"10.0.1.{_v4_slot('192.168.1.1', 0, 80) + 1}"


def test_empty_ring_slot_is_ch_drop(lb):
    lb.vip("10.200.1.99", 80, 6, 0)  # no ring: every slot is real 0
    assert lb.run(tcp4(dst="10.200.1.99"))[0] == XDP_DROP
    assert lb.gstat(structs.CH_DROP_STATS) == (0, 1)
    lb.vip("10.200.1.98", 80, 6, 1, ring=5000)  # beyond max_reals: invalid index
    assert lb.run(tcp4(dst="10.200.1.98"))[0] == XDP_DROP
    assert lb.gstat(structs.CH_DROP_STATS) == (1, 1)


# ----------------------------------------------------------------------------- LRU
def test_lru_keeps_flow_and_syn_repicks(lb):
    lb.real(1, "10.0.0.1")
    lb.real(2, "10.0.0.2")
    lb.vip("10.200.1.1", 80, 6, 0, ring=1)
    _, out = lb.run(tcp4(flags="S"))
    assert outer_dst(out) == "10.0.0.1"
    assert lb.lru("192.168.1.1", "10.200.1.1", 31337, 80, 6) == (1, 0)
    lb.ring(0, 2)
    _, out = lb.run(tcp4(flags="A"))
    assert outer_dst(out) == "10.0.0.1"  # LRU hit
    _, out = lb.run(tcp4(flags="S"))
    assert outer_dst(out) == "10.0.0.2"  # SYN skips the LRU
    assert lb.gstat(structs.LRU_CNTRS) == (3, 2)
    assert lb.gstat(structs.LRU_MISS_CNTR) == (2, 0)
    assert lb.gstat(structs.FALLBACK_LRU_CNTR)[0] == 3


def test_lru_bypass_vip_writes_no_entry(lb):
    lb.real(1, "10.0.0.1")
    lb.real(2, "10.0.0.2")
    lb.vip("10.200.1.1", 80, 6, 0, flags=2, ring=1)  # NO_LRU
    lb.run(tcp4())
    assert lb.lru("192.168.1.1", "10.200.1.1", 31337, 80, 6) is None
    lb.ring(0, 2)
    _, out = lb.run(tcp4())
    assert outer_dst(out) == "10.0.0.2"


@pytest.mark.parametrize("timeout_ns,expect", [(30_000_000_000, "10.0.0.1"), (1000, "10.0.0.2")])
def test_udp_lru_entries_age(timeout_ns, expect):
    b = Balancer(lru_udp_timeout_ns=timeout_ns)
    try:
        b.real(1, "10.0.0.1")
        b.real(2, "10.0.0.2")
        b.vip("10.200.1.1", 80, 17, 0, ring=1)
        _, out = b.run(udp4())
        assert outer_dst(out) == "10.0.0.1"
        pos, atime = b.lru("192.168.1.1", "10.200.1.1", 31337, 80, 17)
        assert pos == 1 and atime > 0
        b.ring(0, 2)
        time.sleep(0.02)  # more than a tick: the connection table runs on the coarse clock
        _, out = b.run(udp4())
        assert outer_dst(out) == expect
    finally:
        b.close()


def test_per_cpu_lru_is_used_when_present(lb):
    from katran.adapter import bpf

    inner = bpf.create_map(bpf.BPF_MAP_TYPE_LRU_HASH, 40, 16, 100, name="lru_cpu")
    lb.inner_maps.append(inner)
    ncpu = os.cpu_count() or 1
    for cpu in range(ncpu):
        lb.map("lru_mapping").set_inner_map(structs.u32(cpu), inner)
    lb.real(1, "10.0.0.1")
    lb.vip("10.200.1.1", 80, 6, 0, ring=1)
    assert lb.run(tcp4())[0] == XDP_TX
    assert inner.lookup(structs.flow_key("192.168.1.1", "10.200.1.1", 31337, 80, 6)) is not None
    assert lb.lru("192.168.1.1", "10.200.1.1", 31337, 80, 6) is None
    assert lb.gstat(structs.FALLBACK_LRU_CNTR) == (0, 0)


# ----------------------------------------------------------------------------- ICMP / stats
def test_icmp_echo_replies(lb):
    lb.vip("10.200.1.3", 80, 6, 0)
    lb.vip("fc00:1::1", 80, 6, 1)
    req = Ether(bytes(eth() / IP(src="192.168.1.1", dst="10.200.1.3", ttl=9) / ICMP(type="echo-request", id=7, seq=1) / Raw(b"ping")))
    verdict, out = lb.run(req)
    assert verdict == XDP_TX
    rep = Ether(out)
    assert rep.src == IN_DST_MAC and rep.dst == IN_SRC_MAC
    assert rep[IP].src == "10.200.1.3" and rep[IP].dst == "192.168.1.1" and rep[IP].ttl == 64
    assert rep[ICMP].type == 0 and rep[ICMP].id == 7
    chk = Ether(out)
    del chk[ICMP].chksum
    del chk[IP].chksum
    chk = Ether(bytes(chk))
    assert (chk[ICMP].chksum, chk[IP].chksum) == (rep[ICMP].chksum, rep[IP].chksum)

    req6 = Ether(bytes(eth() / IPv6(src="fc00:2::1", dst="fc00:1::1") / ICMPv6EchoRequest(id=3, data=b"ping")))
    verdict, out = lb.run(req6)
    assert verdict == XDP_TX
    rep6 = Ether(out)
    assert rep6[IPv6].src == "fc00:1::1" and rep6[IPv6].hlim == 64
    assert out[54] == 129
    chk6 = Ether(out)
    del chk6[IPv6].payload.cksum
    assert Ether(bytes(chk6))[IPv6].payload.cksum == rep6[IPv6].payload.cksum


def test_icmp_echo_to_a_non_vip_address_is_left_to_the_kernel(lb):
    for req in (eth() / IP(src="192.168.1.1", dst="10.9.9.9") / ICMP(type="echo-request"),
                eth() / IPv6(src="fc00:2::1", dst="fc00:9::9") / ICMPv6EchoRequest()):
        verdict, out = lb.run(req)
        assert verdict == XDP_PASS and out == bytes(req)


def test_icmp_frag_needed_follows_the_flow(lb):
    lb.real(1, "10.0.0.1")
    lb.real(2, "10.0.0.2")
    lb.vip("10.200.1.1", 80, 6, 0, ring=1)
    _, out = lb.run(tcp4())  # flow 192.168.1.1:31337 -> VIP sits on real 1
    lb.ring(0, 2)
    quote = IP(src="10.200.1.1", dst="192.168.1.1") / TCP(sport=80, dport=31337, flags="A")
    err = eth() / IP(src="192.168.100.1", dst="10.200.1.1") / ICMP(type=3, code=4, nexthopmtu=1200) / quote
    verdict, out = lb.run(err)
    assert verdict == XDP_TX and outer_dst(out) == "10.0.0.1"
    assert lb.gstat(structs.ICMP_PTB_V4_STATS) == (1, 1)  # counted, and mtu < 1280


def test_vip_and_real_counters(lb):
    lb.real(4, "10.0.0.4")
    lb.vip("10.200.1.1", 80, 17, 5, ring=4)
    frames = [udp4(sport=p) for p in (1, 2, 3)]
    for f in frames:
        assert lb.run(f)[0] == XDP_TX
    ip_bytes = sum(len(f) - 14 for f in frames)
    assert lb.vip_stat(5) == (3, ip_bytes)
    assert structs.lb_stats_sum(lb.map("reals_stats").lookup(structs.u32(4))) == (3, ip_bytes)
    assert lb.gstat(structs.XDP_TX_CNTR) == (3, sum(len(f) for f in frames))
    assert lb.gstat(structs.XDP_TOTAL_CNTR) == (3, sum(len(f) for f in frames))


def test_quic_cid_routes_to_server_id(lb):
    lb.real(1, "10.0.0.1")
    lb.real(2, "10.0.0.2")
    lb.vip("10.200.1.5", 443, 17, 0, flags=4, ring=1)  # QUIC_VIP
    lb.map("server_id_map").update(structs.u32(0x1234), structs.u32(2))
    # short header, CID v3: version bits 11, server id in bytes 1..4
    payload = bytes([0x40, 0xC0, 0x00, 0x00, 0x12, 0x34, 0, 0, 0]) + b"data"
    _, out = lb.run(udp4(dst="10.200.1.5", dport=443, payload=payload))
    assert outer_dst(out) == "10.0.0.2"
    qs = structs.counters_sum(lb.map("quic_stats_map").lookup(structs.u32(0)), structs.QUIC_STATS_FIELDS)
    assert qs["cid_v3"] == 1 and qs["cid_routed"] == 1 and qs["dst_not_found_in_lru"] == 1
    # an unknown id falls back to the LRU / CH
    payload = bytes([0x40, 0xC0, 0x00, 0x00, 0x99, 0x99, 0, 0, 0])
    _, out = lb.run(udp4(src="192.168.7.7", dst="10.200.1.5", dport=443, payload=payload))
    assert outer_dst(out) == "10.0.0.1"


# ----------------------------------------------------------------------------- feature knobs
def test_global_lru_routes_after_lru_miss():
    b = Balancer(global_lru=1)
    try:
        b.real(1, "10.0.0.1")
        b.real(2, "10.0.0.2")
        b.vip("10.200.1.1", 80, 6, 0, flags=64, ring=1)  # GLOBAL_LRU
        b.map("fallback_glru").update(structs.flow_key("192.168.1.1", "10.200.1.1", 31337, 80, 6), structs.u32(2))
        _, out = b.run(tcp4())
        assert outer_dst(out) == "10.0.0.2"
        assert b.gstat(structs.GLOBAL_LRU_CNTR) == (1, 1)  # no per-cpu map, routed by it
        _, out = b.run(tcp4(flags="S"))  # SYN: no LRU of any kind
        assert outer_dst(out) == "10.0.0.1"
    finally:
        b.close()


def test_local_delivery_passes_local_real():
    b = Balancer(local_delivery=1)
    try:
        b.real(1, "10.0.0.6", flags=structs.REAL_F_LOCAL)
        b.vip("10.200.1.6", 80, 17, 0, flags=32, ring=1)  # LOCAL_VIP
        b.vip("10.200.1.7", 80, 17, 1, ring=1)
        frame = bytes(udp4(dst="10.200.1.6"))
        assert b.run(frame) == (XDP_PASS, frame)
        assert b.vip_stat(0)[0] == 1
        assert b.run(udp4(dst="10.200.1.7"))[0] == XDP_TX  # not a LOCAL_VIP
    finally:
        b.close()


def test_lpm_source_routing():
    b = Balancer(lpm_src_lookup=1)
    try:
        b.real(1, "10.0.0.1")
        b.real(7, "fc00::2307:1")
        b.vip("10.200.1.1", 80, 17, 0, flags=16, ring=1)  # SRC_ROUTING
        b.map("lpm_src_v4").update(structs.v4_lpm_key("192.168.0.0", 17), structs.u32(7))
        _, out = b.run(udp4(src="192.168.1.3"))
        assert outer_dst(out) == "fc00::2307:1"
        _, out = b.run(udp4(src="192.168.200.3"))  # outside the /17
        assert outer_dst(out) == "10.0.0.1"
        assert b.gstat(structs.LPM_SRC_CNTRS) == (1, 1)
    finally:
        b.close()


def test_tpr_option_routes_and_updates_lru():
    b = Balancer(tcp_server_id_routing=1)
    try:
        b.real(1, "10.0.0.1")
        b.real(3, "10.0.0.3")
        b.vip("10.200.1.1", 80, 6, 0, ring=1)
        sid = 1025
        b.map("server_id_map").update(structs.u32(sid), structs.u32(3))
        opt = [(0xB7, struct.pack("<I", sid))]  # the id is read in memory order
        frame = eth() / IP(src="192.168.1.1", dst="10.200.1.1") / TCP(sport=31337, dport=80, flags="A", options=opt)
        _, out = b.run(frame)
        assert outer_dst(out) == "10.0.0.3"
        assert b.lru("192.168.1.1", "10.200.1.1", 31337, 80, 6)[0] == 3
        syn = eth() / IP(src="192.168.1.1", dst="10.200.1.1") / TCP(sport=4000, dport=80, flags="S", options=opt)
        _, out = b.run(syn)
        assert outer_dst(out) == "10.0.0.1"  # SYNs ignore the option
        ts = structs.counters_sum(b.map("tpr_stats_map").lookup(structs.u32(0)), structs.TPR_STATS_FIELDS)
        assert ts == {"ch_routed": 0, "dst_mismatch_in_lru": 0, "sid_routed": 1, "tcp_syn": 1}
    finally:
        b.close()


def test_inline_decap_strict_destination_passes_foreign_tunnels():
    b = Balancer(inline_decap_ipip=1, decap_strict_destination=1)
    try:
        b.map("pckt_srcs").update(structs.u32(1), structs.real_definition("fc00:2307::1337"))
        inner = IPv6(src="fc00:2::1", dst="fc00:1::1", hlim=5) / TCP(sport=31337, dport=80, flags="A")
        foreign = bytes(eth() / IPv6(src="100::1", dst="fc00::99") / inner)
        assert b.run(foreign) == (XDP_PASS, foreign)  # not ours: untouched
        mine = eth() / IPv6(src="100::1", dst="fc00:2307::1337") / inner
        verdict, out = b.run(mine)
        assert verdict == XDP_PASS
        dec = Ether(out)
        assert dec.type == 0x86DD and dec[IPv6].dst == "fc00:1::1" and dec[IPv6].hlim == 4
        assert b.gstat(structs.DECAP_CNTR) == (0, 1)
    finally:
        b.close()
