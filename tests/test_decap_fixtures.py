"""Katran's decap fixtures (xdp_decap.json, xdp_decap_gue.json) byte for byte through decap.bpf.o."""

from __future__ import annotations

import os

import pytest

from katran_fixtures import FIXTURES_DIR, explain_mismatch, load_set

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(not FIXTURES_DIR.is_dir(), reason=f"fixtures not found at {FIXTURES_DIR}"),
]

DECAP_CASES = load_set("xdp_decap") if FIXTURES_DIR.is_dir() else []
DECAP_GUE_CASES = load_set("xdp_decap_gue") if FIXTURES_DIR.is_dir() else []
SERVER_ID = 100  # xdpdecap_tester: decap.setSeverId(100)


@pytest.fixture(scope="module")
def decap_obj(tmp_path_factory):
    from katran.build import BPF_DIR, compile_one

    return compile_one(BPF_DIR / "decap.bpf.c", tmp_path_factory.mktemp("decapobj"))


def _run_set(decap_obj, cases, **knobs):
    from katran import decap

    obj = decap.load_decap(decap_obj, server_id=SERVER_ID, **knobs)
    try:
        results = [decap.run_packet(obj, c.input) for c in cases]
        return results, decap.stats_of(obj)
    finally:
        obj.close()


@pytest.fixture(scope="module")
def plain_run(decap_obj):
    return _run_set(decap_obj, DECAP_CASES)


@pytest.fixture(scope="module")
def gue_run(decap_obj):
    return _run_set(decap_obj, DECAP_GUE_CASES, gue_dport=9886)


@pytest.mark.parametrize("i", range(len(DECAP_CASES)), ids=lambda i: DECAP_CASES[i].id)
def test_xdp_decap_fixture(plain_run, i):
    case, res = DECAP_CASES[i], plain_run[0][i]
    assert (res.verdict, res.data) == (case.expected_action, case.expected), \
        explain_mismatch(case, res.verdict, res.data)


def test_xdp_decap_counters(plain_run):
    st = plain_run[1]
    # cases 5 (IPIP), 6 (IP6IP6), 7 (4in6) are decapsulated; 1, 2, 8, 9, 10 pass untouched
    assert (st.decap_v4, st.decap_v6, st.total) == (1, 2, 3)
    assert st.passed == 5
    assert (st.tpr_total, st.tpr_misrouted) == (0, 0)


@pytest.mark.parametrize("i", range(len(DECAP_GUE_CASES)), ids=lambda i: DECAP_GUE_CASES[i].id)
def test_xdp_decap_gue_fixture(gue_run, i):
    case, res = DECAP_GUE_CASES[i], gue_run[0][i]
    assert (res.verdict, res.data) == (case.expected_action, case.expected), \
        explain_mismatch(case, res.verdict, res.data)


def test_xdp_decap_gue_counters(gue_run):
    st = gue_run[1]
    # README 7.11: decap_v4 1, decap_v6 9, TPR total 4 / misrouted 3 (cases 12-17; SYNs not checked)
    assert (st.decap_v4, st.decap_v6, st.total) == (1, 9, 10)
    assert (st.tpr_total, st.tpr_misrouted) == (4, 3)


def test_gue_off_by_default_passes_gue_untouched(decap_obj):
    results, st = _run_set(decap_obj, DECAP_GUE_CASES[5:6])  # GUE v4-in-v4
    assert results[0].verdict == "XDP_PASS" and results[0].data == DECAP_GUE_CASES[5].input
    assert (st.total, st.passed) == (0, 1)


def test_strict_destination(decap_obj):
    """With strict_dst, only packets to this host's address are decapsulated."""
    ipip = DECAP_CASES[4]  # case 5, IPIP
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether

    outer_dst = Ether(ipip.input)[IP].dst
    results, st = _run_set(decap_obj, [ipip], strict_dst=True, host_v4="10.1.2.3")
    assert results[0].data == ipip.input and st.total == 0 and st.passed == 1
    results, st = _run_set(decap_obj, [ipip], strict_dst=True, host_v4=outer_dst)
    assert results[0].data == ipip.expected and st.decap_v4 == 1


def test_bad_knobs_are_refused(decap_obj):
    from katran import decap
    from katran.errors import ValidationError

    with pytest.raises(ValidationError, match="gue_dport"):
        decap.load_decap(decap_obj, gue_dport=70000)
    with pytest.raises(ValidationError, match="strict_dst"):
        decap.load_decap(decap_obj, strict_dst=True)
    with pytest.raises(ValidationError, match="host_v4"):
        decap.load_decap(decap_obj, host_v4="fc00::1")
