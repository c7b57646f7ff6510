"""Every Katran fixture set (README sections 6-8) byte for byte through KatranLb.

One KatranLb per Katran tester process: the build flavour is the KatranConfig knobs,
provisioning goes through the public API only, and the sets that Katran runs after a main
set in the same process run after it here too (LRU entries and counters carry over).
hc/hc_gue/xdp_decap/xdp_decap_gue live in test_hc_fixtures.py / test_decap_fixtures.py and
base in test_fixtures_base.py.
"""

from __future__ import annotations

import os
import struct
from types import SimpleNamespace
from typing import TYPE_CHECKING

import attrs
import pytest

from katran_fixtures import (
    FIXTURES_DIR,
    Case,
    base_config,
    explain_mismatch,
    load_set,
    mismatches,
    provision_base,
    provision_optional,
    provision_stable_rt,
    provision_udp_flow_migration,
    provision_xpop_decap,
    run_on,
    set_down_host_for_udp_flow_migration,
)

if TYPE_CHECKING:
    from katran import LbStats

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(not FIXTURES_DIR.is_dir(), reason=f"fixtures not found at {FIXTURES_DIR}"),
]

GUE = dict(gue_encap=True, gue_dport=9886)  # every GUE fixture but lpm_src_lookup expects 9886


def _load(name: str, derived: bool = False) -> list[Case]:
    return load_set(name, derived) if FIXTURES_DIR.is_dir() else []


def _ids(case: Case) -> str:
    return case.id


def _start(**knobs):
    from katran import KatranLb

    lb = KatranLb(base_config(**knobs))
    lb.start()
    return lb


def _provision_base(lb) -> None:
    missing = provision_base(lb)
    assert not missing, f"base provisioning refused: {missing}"


def _check(case: Case, outcome) -> None:
    ok = outcome.verdict == case.expected_action and outcome.output == case.expected
    assert ok, explain_mismatch(case, outcome.verdict, outcome.output)


def _by_n(cases: list[Case]) -> dict[int, Case]:
    return {c.n: c for c in cases}


def _counted(cases: list[Case], numbers) -> int:
    """How many of ``numbers`` are cases of this set (guards the derivation lists below)."""
    known = {c.n for c in cases}
    assert set(numbers) <= known, sorted(set(numbers) - known)
    return len(set(numbers))


BASE = _load("base")
GUE_CASES = _load("gue")


# ====================================================================== gue (katran_tester -gue)
class TestGue:
    @pytest.fixture(scope="class")
    @classmethod
    def gue(cls):
        lb = _start(**GUE)
        try:
            _provision_base(lb)
            yield SimpleNamespace(lb=lb, outcomes=run_on(lb, GUE_CASES))
        finally:
            lb.close()

    @pytest.mark.parametrize("case", GUE_CASES, ids=_ids)
    def test_case(self, gue, case):
        _check(case, gue.outcomes[case.n])

    def test_counters(self, gue):
        """testLbCounters after the gue set (README 7.1)."""
        from katran import LbStats, VipKey

        lb = gue.lb
        assert lb.get_katran_lb_stats() == LbStats(0, 0)
        assert lb.get_stats_for_vip(VipKey("10.200.1.1", 80, "tcp")) == LbStats(4, 248)
        quic = lb.get_lb_quic_packets_stats()
        assert (quic["cid_v1"], quic["cid_v2"]) == (4, 2)
        # Katran's createDefaultTestParam: LRU total 25 / misses 11, which holds for gue.
        # Derivation: the LRU stage is reached by every packet to a VIP that is not answered
        # (ICMP echo 6/7) or dropped before it (options, fragments 10-12), the uninitialised
        # VIPs 35/36 included (they drop after it, on CH).
        lru_stage = [1, 2, 3, 4, 5, 8, 9, 16, 17, 18] + list(range(22, 37))
        # misses: flows not yet in the LRU that CH then served (QUIC packets routed by their
        # connection id, LRU hits and 35/36, whose VIPs have no reals, are no misses)
        misses = [1, 2, 3, 4, 5, 8, 9, 17, 18, 22, 26]
        total = lb.get_lru_stats()
        assert total == LbStats(25, 11) == LbStats(_counted(GUE_CASES, lru_stage), _counted(GUE_CASES, misses))
        # forwarding_cores=(): every LRU-stage packet used the fallback LRU (Katran's logged-only
        # 19 assumes per-core LRUs for part of the run)
        assert lb.get_lru_fallback_stats().v1 == total.v1


def pytest_generate_tests(metafunc):
    """``case`` runs over the class's CASES, ids like ``tpr-4``."""
    cls = metafunc.cls
    if "case" in metafunc.fixturenames and cls is not None and hasattr(cls, "CASES"):
        metafunc.parametrize("case", cls.CASES, ids=_ids)


def _vip_traffic(cases: list[Case], vip) -> "LbStats":
    """(packets, bytes) the per-VIP counter must show for ``cases`` that address ``vip``
    directly: bytes are the IPv4 total length / IPv6 payload length, as Katran counts them."""
    from katran import LbStats
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    packets = size = 0
    for case in cases:
        frame = Ether(case.input)
        ip = frame[IP] if IP in frame else frame[IPv6] if IPv6 in frame else None
        l4 = ip.payload if ip is not None else None
        if ip is None or not isinstance(l4, (TCP, UDP)):
            continue
        if (ip.dst, l4.dport, int(ip.proto if IP in frame else ip.nh)) != (str(vip.address), vip.port, vip.proto):
            continue
        packets += 1
        size += ip.len if IP in frame else ip.plen
    return LbStats(packets, size)


def _real_stats(lb, address: str):
    return lb.get_real_stats(lb.get_index_for_real(address))


# ====================================================================== tpr / tpr_gue (README 7.10)
class TestTpr:
    """katran_tester -tpr: base provisioning, then the TPR set."""

    CASES = _load("tpr")
    KNOBS: dict = dict(tcp_server_id_routing=True)
    # kTPRRealStats (packets, bytes), which matches the base64 variant of cases 4/17
    REAL_STATS = {
        "10.0.0.1": (0, 0), "10.0.0.2": (3, 181), "10.0.0.3": (4, 244),
        "fc00::1": (8, 356), "fc00::2": (2, 134), "fc00::3": (0, 0),
    }

    @pytest.fixture(scope="class")
    @classmethod
    def tpr(cls):
        lb = _start(**cls.KNOBS)
        try:
            _provision_base(lb)
            yield SimpleNamespace(lb=lb, outcomes=run_on(lb, cls.CASES))
        finally:
            lb.close()

    def test_case(self, tpr, case):
        _check(case, tpr.outcomes[case.n])

    def test_counters(self, tpr):
        """createTPRTestParam, every value (README 7.10)."""
        from katran import LbStats, VipKey

        lb = tpr.lb
        assert lb.get_katran_lb_stats() == LbStats(0, 0)
        assert lb.get_stats_for_vip(VipKey("10.200.1.1", 80, "tcp")) == LbStats(4, 244)
        assert lb.get_lru_stats() == LbStats(17, 3)
        assert lb.get_lru_miss_stats() == LbStats(1, 2)  # TCP SYN / non-SYN misses
        assert lb.get_lru_fallback_stats() == LbStats(17, 0)
        tpr_stats = lb.get_tcp_server_id_routing_stats()
        assert (tpr_stats["sid_routed"], tpr_stats["ch_routed"], tpr_stats["tcp_syn"]) == (8, 8, 1)
        assert not any(v for k, v in lb.get_lb_quic_packets_stats().items() if k != "cid_invalid_server_id_sample")
        assert {a: tuple(attrs.astuple(_real_stats(lb, a))) for a in self.REAL_STATS} == self.REAL_STATS


class TestTprGue(TestTpr):
    """tprGueTestFixtures: the same provisioning with GUE encapsulation (README 7.10)."""

    CASES = _load("tpr_gue")
    KNOBS = dict(tcp_server_id_routing=True, **GUE)


class TestTprDerived(TestTpr):
    """The PacketBuilder variant of cases 4/17 at cba1b6e1 (README 8.2): case 4 carries TPR id
    1024 and goes to fc00::1, case 17 follows it through the LRU; so fc00::1 gets those two
    packets (same sizes: 67 bytes of IPv6 payload each) and fc00::2 none."""

    CASES = _load("tpr", derived=True)
    REAL_STATS = dict(TestTpr.REAL_STATS, **{"fc00::1": (10, 356 + 2 * 67), "fc00::2": (0, 0)})


class TestTprGueDerived(TestTprDerived):
    CASES = _load("tpr_gue", derived=True)
    KNOBS = dict(tcp_server_id_routing=True, **GUE)


# ====================================================================== optional (README 7.3)
OPTIONAL_KNOBS = dict(icmp_toobig_generation=True, lpm_src_lookup=True, inline_decap_ipip=True, local_delivery=True)
# base cases whose expectation assumes the default flavour: with INLINE_DECAP the tunnelled
# packets 21-23 are decapsulated and passed, with ICMP_TOOBIG_GENERATION 33 gets an ICMP reply
BASE_FLAVOUR_DEPENDENT = {21, 22, 23, 33}
# optional 13 is stale (README 8.3): Katran's decrement_ttl fix cc211116 updates the inner
# IPv4 checksum before the TTL check, so the program writes 0xed4d where the fixture (not
# updated by that commit, unlike the identical xpop case 4) still says 0xec4d.
OPTIONAL_PATCHES = {13: (24, bytes.fromhex("ec4d"), bytes.fromhex("ed4d"))}


def _patched(case: Case, offset: int, old: bytes, new: bytes) -> Case:
    assert case.expected[offset : offset + len(old)] == old, f"{case.id}: patch does not apply"
    exp = case.expected[:offset] + new + case.expected[offset + len(new) :]
    return attrs.evolve(case, expected=exp)


def _counter_snapshot(lb) -> dict:
    return {
        "icmp_too_big": lb.get_icmp_too_big_stats(),
        "src_routing": lb.get_src_routing_stats() if lb.config.lpm_src_lookup else None,
        "inline_decap": lb.get_inline_decap_stats() if (lb.config.inline_decap_ipip or lb.config.inline_decap_gue) else None,
        "udp_flow_migration": lb.get_udp_flow_migration_stats(),
    }


def _delta(after, before):
    from katran import LbStats

    return LbStats(after.v1 - before.v1, after.v2 - before.v2)


class TestOptional:
    """katran_tester -optional_tests: base set, prepareOptionalLbData, optional set."""

    CASES = _load("optional")

    @pytest.fixture(scope="class")
    @classmethod
    def opt(cls):
        from katran import ModifyAction, Real, VipKey

        lb = _start(**OPTIONAL_KNOBS)
        try:
            _provision_base(lb)
            base = run_on(lb, BASE)  # leaves the LRU entries that cases 3 and 10 hit
            before = _counter_snapshot(lb)
            provision_optional(lb)
            outcomes = run_on(lb, cls.CASES)
            after = _counter_snapshot(lb)
            # optional 17 as it was written (README 8.5): 10.200.1.6 holding only the local
            # real. The LRU entry of case 17's flow points at 10.0.0.1, marked down on this
            # UDP_FLOW_MIGRATION VIP, so it is invalidated and CH now picks 10.0.0.6.
            vip = VipKey("10.200.1.6", 80, "udp")
            others = [r for r in lb.get_reals_for_vip(vip) if str(r.address) != "10.0.0.6"]
            lb.modify_reals_for_vip(ModifyAction.DEL, [Real(r.address, 1) for r in others], vip)
            local = lb.run_packet(_by_n(cls.CASES)[17].input)
            yield SimpleNamespace(lb=lb, base=base, outcomes=outcomes, before=before, after=after, local=local)
        finally:
            lb.close()

    def test_preceding_base_set(self, opt):
        bad = mismatches(BASE, opt.base, exclude=BASE_FLAVOUR_DEPENDENT)
        assert not bad, "\n\n".join(bad)

    def test_case(self, opt, case):
        if case.n in OPTIONAL_PATCHES:
            case = _patched(case, *OPTIONAL_PATCHES[case.n])
        if case.n == 17:
            # stale (README 8.5): written for a VIP holding only the local real; at cba1b6e1
            # 10.200.1.6 also holds 10.0.0.1-3, and CH sends this flow to one of them. The
            # case as written is test_case_17_local_delivery.
            self._check_17_remote(case, opt.outcomes[17])
            return
        _check(case, opt.outcomes[case.n])

    @staticmethod
    def _check_17_remote(case: Case, out) -> None:
        """IPIP to a remote real of 10.200.1.6, the inner packet untouched."""
        from scapy.layers.inet import IP
        from scapy.layers.l2 import Ether

        assert out.verdict == "XDP_TX", explain_mismatch(case, out.verdict, out.output)
        frame = Ether(out.output)
        assert frame.dst == "00:00:de:ad:be:af"
        assert frame[IP].proto == 4 and frame[IP].dst in ("10.0.0.1", "10.0.0.2", "10.0.0.3")
        assert bytes(frame[IP].payload) == case.input[14:]  # the inner packet untouched

    def test_case_17_local_delivery(self, opt):
        """Only the LOCAL_REAL left on the LOCAL_VIP: passed to the kernel, byte for byte."""
        case = _by_n(self.CASES)[17]
        _check(case, SimpleNamespace(verdict=opt.local.verdict, output=opt.local.data))

    def test_counters(self, opt):
        """testOptionalLbCounters (README 7.3), over the optional set (the base set before it
        already answered base 33 with an ICMP too big in this flavour)."""
        from katran import LbStats

        d = {k: _delta(opt.after[k], opt.before[k]) for k in opt.after}
        assert d["icmp_too_big"] == LbStats(1, 1)  # v4, v6
        assert d["src_routing"] == LbStats(2, 6)  # local (no rule matched), source-routed
        assert d["inline_decap"].v1 == 4  # packets to the decap dst: cases 11-14
        assert opt.lb.get_katran_lb_stats() == LbStats(0, 0)


# ====================================================================== icmp_too_big (README 7.4)
class TestIcmpTooBig:
    """katran_tester -gue -optional_tests: the gue set, then icmpTooBigTestFixtures.

    prepareOptionalLbData is left out: it only configures features this flavour
    (GUE_ENCAP + ICMP_TOOBIG_GENERATION) does not have; Katran refuses the LPM rules and the
    decap dst there too, and the program ignores the SRC_ROUTING/LOCAL_VIP flags.
    """

    CASES = _load("icmp_too_big")
    KNOBS: dict = dict(icmp_toobig_generation=True, **GUE)
    WARM_UP: list = GUE_CASES

    @pytest.fixture(scope="class")
    @classmethod
    def icmp(cls):
        lb = _start(**cls.KNOBS)
        try:
            _provision_base(lb)
            warm = run_on(lb, cls.WARM_UP)
            before = lb.get_icmp_too_big_stats()
            outcomes = run_on(lb, cls.CASES)
            yield SimpleNamespace(lb=lb, warm=warm, outcomes=outcomes, before=before)
        finally:
            lb.close()

    def test_preceding_gue_set(self, icmp):
        bad = mismatches(self.WARM_UP, icmp.warm)
        assert not bad, "\n\n".join(bad)

    def test_case(self, icmp, case):
        _check(case, icmp.outcomes[case.n])

    def test_counters(self, icmp):
        from katran import LbStats

        assert _delta(icmp.lb.get_icmp_too_big_stats(), icmp.before) == LbStats(1, 1)  # v4, v6


class TestIcmpTooBigOriginGue(TestIcmpTooBig):
    """originGueIcmpTooBigTestFixtures: MAX_PCKT_SIZE 1466, so the replies advertise MTU 1452
    (inferred, README 7.4); not run by Katran's tester, so no set before it."""

    CASES = _load("icmp_too_big_origin_gue")
    KNOBS = dict(icmp_toobig_generation=True, max_pckt_size=1466, **GUE)
    WARM_UP: list = []
    test_preceding_gue_set = None  # no set before it


# ====================================================================== udp_stable_rt (README 7.6)
class TestUdpStableRt:
    """katran_tester -stable_rt (GUE flavour): the gue set, prepareLbDataStableRt, the set."""

    CASES = _load("udp_stable_rt")

    @pytest.fixture(scope="class")
    @classmethod
    def srt(cls):
        lb = _start(udp_stable_routing=True, **GUE)
        try:
            _provision_base(lb)
            warm = run_on(lb, GUE_CASES)
            provision_stable_rt(lb)
            outcomes = run_on(lb, cls.CASES)  # case 5 hits the LRU entry of case 1
            yield SimpleNamespace(lb=lb, warm=warm, outcomes=outcomes)
        finally:
            lb.close()

    def test_preceding_gue_set(self, srt):
        bad = mismatches(GUE_CASES, srt.warm)
        assert not bad, "\n\n".join(bad)

    def test_case(self, srt, case):
        _check(case, srt.outcomes[case.n])

    def test_counters(self, srt):
        """testStableRtCounters (README 7.6)."""
        from katran import LbStats, VipKey

        stats = srt.lb.get_udp_stable_routing_stats()
        assert stats == dict(stats, ch_routed=2, cid_routed=3, cid_invalid_server_id=0,
                             cid_unknown_real_dropped=0, invalid_packet_type=0)
        # createStableRtTestParam's per-VIP (4, 244) is TPR's value and is never checked; what the
        # data plane must count is every packet of the set (all five go to this VIP), in bytes
        # of IPv6 payload
        vip = VipKey("fc00:1::9", 80, "udp")
        assert srt.lb.get_stats_for_vip(vip) == _vip_traffic(self.CASES, vip)
        assert srt.lb.get_katran_lb_stats() == LbStats(0, 0)


# ====================================================================== xpop_decap (README 7.7)
class TestXpopDecap:
    """katran_tester -xpop_decap (INLINE_DECAP_GUE + GUE + DECAP_STRICT_DESTINATION)."""

    CASES = _load("xpop_decap")

    @pytest.fixture(scope="class")
    @classmethod
    def xpop(cls):
        lb = _start(inline_decap_gue=True, decap_strict_destination=True, **GUE)
        try:
            _provision_base(lb)
            warm = run_on(lb, GUE_CASES)
            provision_xpop_decap(lb)
            outcomes = run_on(lb, cls.CASES)
            yield SimpleNamespace(lb=lb, warm=warm, outcomes=outcomes)
        finally:
            lb.close()

    def test_preceding_gue_set(self, xpop):
        bad = mismatches(GUE_CASES, xpop.warm)
        assert not bad, "\n\n".join(bad)

    def test_case(self, xpop, case):
        _check(case, xpop.outcomes[case.n])

    def test_counters(self, xpop):
        """testXPopDecapCounters (README 7.7): totals since load, the gue set adds nothing."""
        from katran import LbStats

        lb = xpop.lb
        assert lb.get_inline_decap_stats().v1 == 5  # cases 1-5 go to the decap dst
        assert lb.get_xpop_decap_successful_stats() == LbStats(2, 1)  # re-balanced inner v4 / v6
        assert lb.get_decap_stats() == LbStats(0, 6)  # IPv6-outer decaps: 1-5, and 6 (strict host match)
        assert lb.get_katran_lb_stats() == LbStats(0, 0)


# ====================================================================== udp_flow_migration (README 7.8)
class TestUdpFlowMigration:
    """katran_tester -udp_flow_migration (GUE): the gue set, phase 1, 10.0.0.2 down, phase 2."""

    CASES = _load("udp_flow_migration")

    @pytest.fixture(scope="class")
    @classmethod
    def ufm(cls):
        lb = _start(udp_stable_routing=True, **GUE)
        try:
            _provision_base(lb)
            warm = run_on(lb, GUE_CASES)
            provision_udp_flow_migration(lb)
            outcomes = run_on(lb, [c for c in cls.CASES if c.phase == 1])
            after_phase1 = lb.get_udp_flow_migration_stats()
            set_down_host_for_udp_flow_migration(lb)
            outcomes.update(run_on(lb, [c for c in cls.CASES if c.phase == 2]))
            yield SimpleNamespace(lb=lb, warm=warm, outcomes=outcomes, after_phase1=after_phase1)
        finally:
            lb.close()

    def test_preceding_gue_set(self, ufm):
        bad = mismatches(GUE_CASES, ufm.warm)
        assert not bad, "\n\n".join(bad)

    def test_case(self, ufm, case):
        _check(case, ufm.outcomes[case.n])

    def test_counters(self, ufm):
        """testUdpFlowMigrationCounters: 0 invalidations after phase 1, 2 after phase 2 (cases
        5 and 6 find LRU entries pointing at the down real 10.0.0.2)."""
        from katran import LbStats, VipKey

        assert ufm.after_phase1.v1 == 0
        assert ufm.lb.get_udp_flow_migration_stats().v1 == 2
        assert ufm.lb.get_down_reals(VipKey("10.200.1.1", 80, "udp")) == ["10.0.0.2"]
        # the parameter's (3, 180) is never checked by Katran; the VIP got gue case 1 and
        # cases 1 and 5, counted in IPv4 total length
        vip = VipKey("10.200.1.1", 80, "udp")
        assert ufm.lb.get_stats_for_vip(vip) == _vip_traffic(GUE_CASES + self.CASES, vip)
        assert ufm.lb.get_katran_lb_stats() == LbStats(0, 0)


# ====================================================================== decap_stats (README 7.9)
class TestDecapStats:
    """DecapTestFixtures (Meta-internal; provisioning inferred): INLINE_DECAP_GUE + GUE."""

    CASES = _load("decap_stats")

    @pytest.fixture(scope="class")
    @classmethod
    def ds(cls):
        lb = _start(inline_decap_gue=True, **GUE)
        try:
            _provision_base(lb)
            yield SimpleNamespace(lb=lb, outcomes=run_on(lb, cls.CASES))
        finally:
            lb.close()

    def test_case(self, ds, case):
        _check(case, ds.outcomes[case.n])

    def test_counters(self, ds):
        """Cases 1-2 (GUE to this host) count for their inner VIP; case 3 (plain VIP traffic
        to fc00:1::1) must not count."""
        from katran import LbStats, VipKey

        lb = ds.lb
        counted = {VipKey("fc00:1::1", 80, "tcp"), VipKey("10.200.1.1", 80, "udp")}
        got = {v: lb.get_decap_stats_for_vip(v) for v in lb.get_all_vips()}
        assert got == {v: LbStats(1, 0) if v in counted else LbStats(0, 0) for v in got}
        assert lb.get_decap_stats() == LbStats(0, 2)  # both with an IPv6 outer header


# ====================================================================== lpm_src_lookup (README 7.5, 8.4)
def _outer_udp_csum_offset(frame: bytes) -> int:
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    return 14 + (20 if ethertype == 0x0800 else 40) + 6


class TestLpmSrcLookup:
    """lpmSrcLookupTestFixtures, as Katran ran them until dc5a36e9 (katran_tester -gue
    -optional_tests): GUE with the default GUE_DPORT 6080 + LPM_SRC_LOOKUP (which implies
    INLINE_DECAP); the gue set, prepareOptionalLbData, then the set.

    Stale (README 8.4): the expected outputs (2019) carry outer UDP checksum 0, which the GUE
    encapsulation at cba1b6e1 always fills for TCP/UDP inner packets. The comparison patches
    exactly those two bytes of our output to 0, and checks separately that our checksum is
    the valid UDP checksum of the outer packet.
    """

    CASES = _load("lpm_src_lookup")

    @pytest.fixture(scope="class")
    @classmethod
    def lpm(cls):
        lb = _start(gue_encap=True, gue_dport=6080, lpm_src_lookup=True, inline_decap_ipip=True)
        try:
            _provision_base(lb)
            warm = run_on(lb, GUE_CASES)  # leaves the LRU entries of the "cached flow" cases 1 and 8
            provision_optional(lb, local_vip=False)  # LOCAL_DELIVERY is not in this flavour
            yield SimpleNamespace(lb=lb, warm=warm, outcomes=run_on(lb, cls.CASES))
        finally:
            lb.close()

    def test_preceding_gue_set_verdicts(self, lpm):
        """Bytes differ from the gue fixtures (they expect GUE port 9886); verdicts do not."""
        bad = [f"gue-{c.n}: {lpm.warm[c.n].verdict} != {c.expected_action}"
               for c in GUE_CASES if lpm.warm[c.n].verdict != c.expected_action]
        assert not bad, bad

    def test_case(self, lpm, case):
        out = lpm.outcomes[case.n]
        off = _outer_udp_csum_offset(out.output) if out.verdict == "XDP_TX" else None
        if off is not None:
            out = attrs.evolve(out, output=out.output[:off] + b"\0\0" + out.output[off + 2 :])
        _check(case, out)

    def test_outer_udp_checksums(self, lpm):
        """The checksum our GUE encapsulation writes instead of 0 is the correct one."""
        from scapy.layers.inet import UDP
        from scapy.layers.l2 import Ether

        for case in self.CASES:
            frame = Ether(lpm.outcomes[case.n].output)
            written = frame[UDP].chksum
            del frame[UDP].chksum
            assert written and written == Ether(bytes(frame))[UDP].chksum, case.id

    def test_counters(self, lpm):
        from katran import LbStats

        # source-routed: 2-3 (/17, /24) and 5-6 (/64, /32); 4 and 7 match no rule; 1 and 8
        # are LRU hits and reach no source lookup
        assert lpm.lb.get_src_routing_stats() == LbStats(2, 4)
