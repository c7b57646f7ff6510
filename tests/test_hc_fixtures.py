"""Katran's healthcheck fixtures (hc.json, hc_gue.json) byte for byte through the tc program."""

from __future__ import annotations

import os

import pytest

from katran_fixtures import FIXTURES_DIR, explain_mismatch, load_set

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(not FIXTURES_DIR.is_dir(), reason=f"fixtures not found at {FIXTURES_DIR}"),
]

HC_CASES = load_set("hc") if FIXTURES_DIR.is_dir() else []
HC_GUE_CASES = load_set("hc_gue") if FIXTURES_DIR.is_dir() else []
# README section 4: the healthcheck configuration of katran_tester
SOMARKS = {1: "10.0.0.1", 2: "10.0.0.2", 3: "fc00::1"}
GUE_SPORT_OFFSET = {4: 14 + 20, 6: 14 + 40}  # outer UDP source port offset by outer IP version


@pytest.fixture(scope="module")
def hc_obj(tmp_path_factory):
    from katran.build import compile_one
    from katran.build import BPF_DIR

    return compile_one(BPF_DIR / "healthchecking.bpf.c", tmp_path_factory.mktemp("hcobj"))


def _manager(hc_obj, **kw):
    from katran.healthcheck import HcManager

    hc = HcManager(
        testing=True, prog_path=hc_obj, src_v4="10.0.13.37", src_v6="fc00:2307::1337",
        local_mac="00:ff:de:ad:be:af", gateway_mac="00:00:de:ad:be:af", **kw,
    )
    hc.load()
    for somark, real in SOMARKS.items():
        hc.add_dst(somark, real)
    return hc


@pytest.fixture(scope="module")
def hc(hc_obj):
    mgr = _manager(hc_obj)
    yield mgr
    mgr.close()


@pytest.mark.parametrize("case", HC_CASES, ids=lambda c: c.id)
def test_hc_fixture(hc, case):
    # case i (1-based) runs with skb->mark = i - 1 (BpfTester's ctx list)
    res = hc.run_packet(case.input, mark=case.n - 1)
    assert (res.verdict, res.data) == (case.expected_action, case.expected), \
        explain_mismatch(case, res.verdict, res.data)


def test_hc_stats_and_table(hc_obj):
    mgr = _manager(hc_obj)
    try:
        for case in HC_CASES:
            mgr.run_packet(case.input, mark=case.n - 1)
        mgr.run_packet(HC_CASES[1].input, mark=77)  # a mark that is no healthcheck
        st = mgr.stats()
        assert (st.processed, st.skipped, st.dropped, st.too_big) == (3, 2, 0, 0)
        assert mgr.get_dsts() == SOMARKS
        assert mgr.kernel_dsts() == SOMARKS
        mgr.del_dst(2)
        assert 2 not in mgr.kernel_dsts()
        res = mgr.run_packet(HC_CASES[2].input, mark=2)
        assert res.verdict == "TC_ACT_UNSPEC" and res.data == HC_CASES[2].input
    finally:
        mgr.close()


def test_hc_bad_input_leaves_state(hc_obj):
    from katran.errors import NotFoundError, ValidationError

    mgr = _manager(hc_obj)
    try:
        before = mgr.kernel_dsts()
        with pytest.raises(ValidationError, match="somark"):
            mgr.add_dst(0, "10.0.0.9")
        with pytest.raises(ValidationError, match="address"):
            mgr.add_dst(9, "10.0.0.300")
        with pytest.raises(NotFoundError, match="42"):
            mgr.del_dst(42)
        assert mgr.kernel_dsts() == before == mgr.get_dsts()
    finally:
        mgr.close()


def test_hc_missing_v6_source_is_refused(hc_obj):
    from katran.errors import ValidationError
    from katran.healthcheck import HcManager

    mgr = HcManager(testing=True, prog_path=hc_obj, src_v4="10.0.13.37", gateway_mac="00:00:de:ad:be:af")
    mgr.load()
    try:
        with pytest.raises(ValidationError, match="IPv6 source"):
            mgr.add_dst(3, "fc00::1")
        assert mgr.get_dsts() == {} and mgr.kernel_dsts() == {}
    finally:
        mgr.close()


def test_hc_max_pckt_size_knob(hc_obj):
    mgr = _manager(hc_obj, max_pckt_size=60)
    try:
        big = HC_CASES[2]  # 69 bytes
        res = mgr.run_packet(big.input, mark=2)
        assert res.verdict == "TC_ACT_SHOT"
        small = mgr.run_packet(HC_CASES[1].input, mark=1)  # 57 bytes
        assert small.verdict == "TC_ACT_REDIRECT"
        st = mgr.stats()
        assert (st.too_big, st.dropped, st.processed) == (1, 1, 1)
    finally:
        mgr.close()


@pytest.mark.parametrize("case", HC_GUE_CASES, ids=lambda c: c.id)
def test_hc_gue_fixture(hc_obj, case):
    mgr = _manager(hc_obj, gue_dport=9886)
    try:
        res = mgr.run_packet(case.input, mark=case.n - 1)
    finally:
        mgr.close()
    out, exp = bytearray(res.data), case.expected
    if case.expected_action == "TC_ACT_REDIRECT":
        # the outer source port is random (>= 1024 bit set), as in Katran's GUE test mode
        off = GUE_SPORT_OFFSET[out[14] >> 4]
        sport = int.from_bytes(out[off:off + 2], "big")
        assert sport & 0x400, f"GUE source port {sport} lacks the 0x400 bit"
        out[off:off + 2] = exp[off:off + 2]
    assert (res.verdict, bytes(out)) == (case.expected_action, exp), \
        explain_mismatch(case, res.verdict, bytes(out))


def test_hc_tunnel_mode_sets_key_and_redirects(hc_obj):
    """Tunnel mode leaves the frame alone (the ipip device encapsulates) and redirects."""
    from katran.healthcheck import HcManager

    mgr = HcManager(testing=True, prog_path=hc_obj, encap="tunnel", v4_tun_interface="lo", v6_tun_interface="lo")
    mgr.load()
    try:
        for somark, real in SOMARKS.items():
            mgr.add_dst(somark, real)
        for case in HC_CASES:
            res = mgr.run_packet(case.input, mark=case.n - 1)
            assert res.verdict == case.expected_action
            assert res.data == case.input
        assert mgr.stats().processed == 3
    finally:
        mgr.close()
