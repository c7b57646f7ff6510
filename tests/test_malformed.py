"""Packets to a VIP with an IP length field that contradicts the frame, or with a martian source,
are dropped and counted (get_malformed_stats: v1 bad length, v2 martian source); legal Ethernet
padding is forwarded with the IP-declared length. Katran forwards all of them.

One declarative table, run through the loaded balancer (BPF_PROG_TEST_RUN) with IPIP and with
GUE encapsulation; a failure lists every row that did not behave, with what was expected.
"""

from __future__ import annotations

import struct

import attrs
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether

from ip_lengths import ETH_LEN, answer_length_errors, encap_length_errors
from katran import KatranConfig, KatranLb, ModifyAction, Real, VipKey

pytestmark = pytest.mark.privileged

VIP4, VIP6 = VipKey("10.200.1.1", 80, "tcp"), VipKey("fc00:1::2", 80, "tcp")
REAL4, REAL6 = "10.0.0.1", "fc00::2"
CLIENT4, CLIENT6 = "192.168.1.1", "fc00:2::1"
ETH = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def tcp4(src=CLIENT4, dst=str(VIP4.address), payload=b"katran test pkt", **ip) -> bytes:
    return bytes(Ether(**ETH) / IP(src=src, dst=dst, **ip) / TCP(sport=31337, dport=80, flags="A") / payload)


def tcp6(src=CLIENT6, dst=str(VIP6.address), payload=b"katran test pkt") -> bytes:
    return bytes(Ether(**ETH) / IPv6(src=src, dst=dst) / TCP(sport=31337, dport=80, flags="A") / payload)


def with_len(frame: bytes, value: int) -> bytes:
    """The frame with its IPv4 tot_len / IPv6 payload_len set to value (nothing else changed)."""
    buf = bytearray(frame)
    struct.pack_into("!H", buf, ETH_LEN + (4 if buf[ETH_LEN] >> 4 == 6 else 2), value)
    return bytes(buf)


def room(frame: bytes) -> int:
    """Bytes after the Ethernet header."""
    return len(frame) - ETH_LEN


BARE4 = bytes(Ether(**ETH) / IP(src=CLIENT4, dst=str(VIP4.address)) / TCP(sport=31337, dport=80, flags="A"))
ICMP_ERR4 = bytes(Ether(**ETH) / IP(src="198.51.100.1", dst=str(VIP4.address)) / ICMP(type=3, code=4, nexthopmtu=1400)
                  / IP(src=str(VIP4.address), dst=CLIENT4) / TCP(sport=80, dport=31337))
ECHO4 = bytes(Ether(**ETH) / IP(src=CLIENT4, dst=str(VIP4.address)) / ICMP(type=8) / b"ping")
ECHO6 = bytes(Ether(**ETH) / IPv6(src=CLIENT6, dst=str(VIP6.address)) / ICMPv6EchoRequest() / b"ping")
assert len(BARE4) == 54


@attrs.frozen
class Case:
    name: str
    frame: bytes
    verdict: str  # XDP_TX / XDP_DROP / XDP_PASS
    malformed: tuple[int, int] = (0, 0)  # expected get_malformed_stats() increase (bad length, martian)


BAD_LEN, MARTIAN = (1, 0), (0, 1)
CASES = [
    # --- IPv4 lengths
    Case("v4 well formed", tcp4(), "XDP_TX"),
    Case("v4 tot_len 0", with_len(tcp4(), 0), "XDP_DROP", BAD_LEN),
    Case("v4 tot_len 19 < ihl*4", with_len(tcp4(), 19), "XDP_DROP", BAD_LEN),
    Case("v4 tot_len 20 = ihl*4 (the rest is padding)", with_len(tcp4(), 20), "XDP_TX"),
    Case("v4 tot_len = frame", with_len(tcp4(), room(tcp4())), "XDP_TX"),
    Case("v4 tot_len frame + 1", with_len(tcp4(), room(tcp4()) + 1), "XDP_DROP", BAD_LEN),
    Case("v4 tot_len 65535 (outer was 19)", with_len(tcp4(), 65535), "XDP_DROP", BAD_LEN),
    Case("v4 40 bytes padded to a 60-byte frame", BARE4 + bytes(6), "XDP_TX"),
    Case("v4 trailing bytes after the packet", tcp4() + b"trailer", "XDP_TX"),
    Case("v4 bad length and martian: counted as length", with_len(tcp4(src="127.0.0.1"), 0), "XDP_DROP", BAD_LEN),
    Case("v4 bad length to a non-VIP: the kernel's", with_len(tcp4(dst="192.0.2.9"), 0), "XDP_PASS"),
    Case("v4 fragment: dropped at parse, not counted", tcp4(flags="MF"), "XDP_DROP"),
    Case("v4 version 6 under the IPv4 EtherType: dropped at parse", bytes([*tcp4()[:14], 0x65, *tcp4()[15:]]),
         "XDP_DROP"),
    # --- IPv6 lengths
    Case("v6 well formed", tcp6(), "XDP_TX"),
    Case("v6 payload_len = frame", with_len(tcp6(), room(tcp6()) - 40), "XDP_TX"),
    Case("v6 payload_len frame + 1", with_len(tcp6(), room(tcp6()) - 39), "XDP_DROP", BAD_LEN),
    Case("v6 payload_len 65535", with_len(tcp6(), 65535), "XDP_DROP", BAD_LEN),
    Case("v6 payload_len 0 (the rest is padding)", with_len(tcp6(), 0), "XDP_TX"),
    Case("v6 trailing bytes after the packet", tcp6() + b"trailer", "XDP_TX"),
    Case("v6 fragment: dropped at parse, not counted",
         bytes(Ether(**ETH) / IPv6(src=CLIENT6, dst=str(VIP6.address)) / IPv6ExtHdrFragment() / TCP(dport=80)),
         "XDP_DROP"),
    Case("v6 version 0 under the IPv6 EtherType: dropped at parse", bytes([*tcp6()[:14], 0x00, *tcp6()[15:]]),
         "XDP_DROP"),
    Case("v6 echo request, version 4: dropped at parse", bytes([*ECHO6[:14], 0x40, *ECHO6[15:]]), "XDP_DROP"),
    # --- ICMP to a VIP: the outer lengths count too
    Case("v4 ICMP frag-needed for a VIP flow", ICMP_ERR4, "XDP_TX"),
    Case("v4 ICMP frag-needed, tot_len > frame", with_len(ICMP_ERR4, room(ICMP_ERR4) + 1), "XDP_DROP", BAD_LEN),
    Case("v4 echo request to a VIP", ECHO4, "XDP_TX"),
    Case("v4 echo request, tot_len 0", with_len(ECHO4, 0), "XDP_DROP", BAD_LEN),
    Case("v4 echo request from 127.0.0.1", bytes(Ether(**ETH) / IP(src="127.0.0.1", dst=str(VIP4.address)) / ICMP()),
         "XDP_DROP", MARTIAN),
    Case("v6 echo request to a VIP", ECHO6, "XDP_TX"),
    Case("v6 echo request, payload_len > frame", with_len(ECHO6, 200), "XDP_DROP", BAD_LEN),
    Case("v6 echo request from ::1",
         bytes(Ether(**ETH) / IPv6(src="::1", dst=str(VIP6.address)) / ICMPv6EchoRequest()), "XDP_DROP", MARTIAN),
    # --- martian sources to a VIP, and their neighbours that are not
    *[Case(f"v4 source {s}", tcp4(src=s), "XDP_DROP", MARTIAN) for s in (
        "0.0.0.0", "0.1.2.3", "127.0.0.1", "127.255.255.254", "224.0.0.1", "239.255.255.255", "255.255.255.255")],
    *[Case(f"v4 source {s}", tcp4(src=s), "XDP_TX") for s in (
        "1.0.0.1", "126.255.255.255", "128.0.0.1", "223.255.255.255", "240.0.0.1", "255.255.255.254")],
    *[Case(f"v6 source {s}", tcp6(src=s), "XDP_DROP", MARTIAN) for s in ("::", "::1", "ff02::1", "ff00::", "ffff::1")],
    *[Case(f"v6 source {s}", tcp6(src=s), "XDP_TX") for s in (
        "::2", "::1:0:0:1", "1::1", "100::1", "feff::1", "fe80::1", "::ffff:127.0.0.1")],
    Case("v4 martian source to a non-VIP (DHCP discover): the kernel's",
         bytes(Ether(**ETH) / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / bytes(8)),
         "XDP_PASS"),
]
assert len({c.name for c in CASES}) == len(CASES)


@pytest.fixture(scope="module", params=["ipip", "gue"])
def lb(request):
    gue = dict(gue_encap=True, katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337")
    cfg = KatranConfig(testing=True, default_mac="00:00:de:ad:be:af", forwarding_cores=(), max_vips=32,
                       max_reals=64, **(gue if request.param == "gue" else {}))
    with KatranLb(cfg) as lb:
        for vip, real in ((VIP4, REAL4), (VIP6, REAL6)):
            lb.add_vip(vip)
            lb.modify_reals_for_vip(ModifyAction.ADD, [Real(real)], vip)
        yield lb


def behaviour(lb: KatranLb, case: Case) -> tuple[str, tuple[int, int], list[str]]:
    """(verdict, malformed counter increase, what is wrong with the output) of one case."""
    before = lb.get_malformed_stats()
    res = lb.run_packet(case.frame)
    after = lb.get_malformed_stats()
    problems = []
    if res.verdict == "XDP_TX":
        ethertype = res.data[12:14]
        is_answer = res.data[ETH_LEN + (9 if ethertype == b"\x08\x00" else 6)] in (1, 58)  # ICMP / ICMPv6
        problems = answer_length_errors(res.data) if is_answer else encap_length_errors(case.frame, res.data)
    return res.verdict, (after.v1 - before.v1, after.v2 - before.v2), problems


def test_malformed_and_martian_table(lb):
    wrong = []
    for case in CASES:
        verdict, counted, problems = behaviour(lb, case)
        if (verdict, counted, problems) != (case.verdict, case.malformed, []):
            wrong.append(f"{case.name}: want {case.verdict} counted {case.malformed}, "
                         f"got {verdict} counted {counted} {'; '.join(problems)}")
    assert not wrong, f"{len(wrong)} of {len(CASES)} cases:\n" + "\n".join(wrong)


def test_padded_frame_carries_the_declared_length(lb):
    """A 40-byte IPv4 packet in a 60-byte frame: the padding rides along (XDP does not trim),
    the outer length and the VIP's byte counter use the IP-declared 40 bytes."""
    frame = BARE4 + bytes(6)
    vip_before = lb.get_stats_for_vip(VIP4)
    res = lb.run_packet(frame)
    assert res.verdict == "XDP_TX"
    outer = 20 + (8 if lb.config.gue_encap else 0)
    assert len(res.data) == len(frame) + outer
    assert struct.unpack_from("!H", res.data, ETH_LEN + 2)[0] == outer + 40
    assert res.data[ETH_LEN + outer:] == frame[ETH_LEN:]
    vip_after = lb.get_stats_for_vip(VIP4)
    assert (vip_after.v1 - vip_before.v1, vip_after.v2 - vip_before.v2) == (1, 40)


def test_dropped_packets_count_nowhere_else(lb):
    """A malformed packet does not reach the VIP's counters (Katran counted 65535 bytes each)."""
    vip_before, lru_before = lb.get_stats_for_vip(VIP4), lb.get_lru_stats()
    for _ in range(10):
        assert lb.run_packet(with_len(tcp4(), 65535)).verdict == "XDP_DROP"
    assert lb.get_stats_for_vip(VIP4) == vip_before
    assert lb.get_lru_stats() == lru_before
