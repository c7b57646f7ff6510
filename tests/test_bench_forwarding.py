"""benchmarks/bench_forwarding.py runs: live frames really go out of the veth and every
frame is counted on the peer and by the balancer's VIP (the benchmark checks both)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.privileged, pytest.mark.netns]

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_forwarding

    return bench_forwarding


def test_frame_sizes(bench):
    assert len(bench.frame(64)) == 64
    assert len(bench.frame(1400)) == 1400
    with pytest.raises(ValueError, match="frame size 20"):
        bench.frame(20)


def test_table_of_a_short_run(bench, capsys):
    cpu = sorted(__import__("os").sched_getaffinity(0))
    try:
        assert bench.main(["--frames", "3000", "--blocks", "2", "--reals", "10"]) == 0
    finally:
        __import__("os").sched_setaffinity(0, set(cpu))
    out = capsys.readouterr().out.splitlines()
    rows = [ln.split() for ln in out[2:]]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(f, s) for f in bench.FLOWS for s in bench.SIZES]
    for r in rows:
        reflector, balancer, ratio = float(r[2]), float(r[4]), float(r[6])
        assert reflector > 0 and balancer > 0
        assert 0 < ratio < 5
