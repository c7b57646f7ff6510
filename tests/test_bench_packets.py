"""benchmarks/bench_packets.py --compare: a second balancer timed in the same table
(loads alternate which one comes first), with the per-row ratio of costs above empty."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.privileged]

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_compare_table(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_packets
    from katran.lb import packaged_object

    cpus = os.sched_getaffinity(0)
    try:
        rc = bench_packets.main(["--runs", "200", "--reps", "1", "--instances", "2", "--block", "100",
                                 "--compare", str(packaged_object("balancer.bpf.o"))])
    finally:
        os.sched_setaffinity(0, cpus)
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    assert "compare ns" in out[1]
    at = next(i for i, ln in enumerate(out) if ln.startswith("packet") and "compare / balancer" in ln)
    rows = out[2:at]
    assert len(rows) == 5
    for ln in rows:  # both columns forward what the balancer forwards
        assert ln.split()[-2:] in (["XDP_TX", "XDP_TX"], ["XDP_PASS", "XDP_PASS"])
    ratios = out[at + 1:]
    assert len(ratios) == 5
    for ln in ratios:
        med = float(ln.split("[")[0].split()[-1])
        assert 0.2 < med < 5  # the same object: a ratio around 1
