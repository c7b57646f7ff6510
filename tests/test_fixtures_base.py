"""Katran's base fixtures (base.json) byte for byte through our balancer."""

from __future__ import annotations

import os

import pytest

from katran_fixtures import FIXTURES_DIR, base_config, explain_mismatch, load_set, provision_base, run_cases

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root"),
    pytest.mark.skipif(not FIXTURES_DIR.is_dir(), reason=f"fixtures not found at {FIXTURES_DIR}"),
]

CASES = load_set("base") if FIXTURES_DIR.is_dir() else []
# the features each case needs beyond the core data plane (feature-parity issue)
NEEDS = {n: "QUIC_VIP" for n in (24, 25, 26, 27, 28, 29, 30, 31, 32, 34, 35)}
NEEDS[36] = "UDP_FLOW_MIGRATION"


@pytest.fixture(scope="module")
def base_run():
    from katran import KatranLb

    lb = KatranLb(base_config())
    lb.start()
    try:
        missing = provision_base(lb)
        skip = {n: f"{feat} not implemented yet: {missing[feat]}" for n, feat in NEEDS.items() if feat in missing}

        def run(frame: bytes):
            res = lb.run_packet(frame)
            return res.verdict, res.data

        outcomes = run_cases(run, CASES, skip)
        yield lb, outcomes, missing
    finally:
        lb.close()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_base_case(base_run, case):
    _, outcomes, _ = base_run
    outcome = outcomes[case.n]
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    ok = outcome.verdict == case.expected_action and outcome.output == case.expected
    assert ok, explain_mismatch(case, outcome.verdict, outcome.output)


def test_base_counters(base_run):
    """The counters Katran's tester checks after the base set (README 7.1)."""
    from katran import LbStats, VipKey

    lb, outcomes, missing = base_run
    assert lb.get_katran_lb_stats() == LbStats(0, 0)  # bpf failed calls, addr validation failures
    assert lb.get_stats_for_vip(VipKey("10.200.1.1", 80, "tcp")) == LbStats(4, 248)
    if any(o.skipped for o in outcomes.values()):
        pytest.skip("LRU totals cover all 36 cases; some need features not implemented yet")
    assert lb.get_lru_stats() == LbStats(25, 11)
