"""benchmarks/bench_packets.py: several balancer objects in one paired table (--compare NAME=PATH,
--previous REV built from git), the per-row ratio of costs above empty with a bootstrap interval."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import bench_packets as bp  # noqa: E402

from katran.adapter import bpf  # noqa: E402
from katran.lb import packaged_object  # noqa: E402

OBJ = str(packaged_object("balancer.bpf.o"))


# --- argument parsing

def test_compare_path_alone_is_column_compare():
    args = bp.parse_args(["--compare", OBJ])
    assert args.compare == [("compare", OBJ)]
    assert args.previous == []


def test_compare_named_and_repeatable(tmp_path):
    odd = tmp_path / "a=b.o"  # an existing file with "=" in its name is a path
    odd.write_bytes(b"")
    args = bp.parse_args(["--compare", f"old={OBJ}", "--compare", f"ref={odd}", "--compare", str(odd),
                          "--previous", "HEAD~1", "--previous", "v1.0"])
    assert args.compare == [("old", OBJ), ("ref", str(odd)), ("compare", str(odd))]
    assert args.previous == ["HEAD~1", "v1.0"]


@pytest.mark.parametrize("argv, message", [
    (["--compare", "/nonexistent/x.o"], "no such file '/nonexistent/x.o'"),
    (["--compare", "old=/nonexistent/x.o"], "no such file '/nonexistent/x.o'"),
    (["--compare", f"b a d={OBJ}"], "bad column name 'b a d'"),
    (["--compare", f"old={OBJ}", "--compare", f"old={OBJ}"], "column name 'old' is taken (given twice)"),
    (["--compare", OBJ, "--compare", OBJ], "column name 'compare' is taken (given twice)"),
    (["--compare", f"empty={OBJ}"], "column name 'empty' is taken (reserved)"),
    (["--previous", "balancer"], "column name 'balancer' is taken (reserved)"),
    (["--compare", f"HEAD={OBJ}", "--previous", "HEAD"], "--previous: column name 'HEAD' is taken"),
    (["--previous=-x"], "bad revision '-x'"),
    (["--previous", "caf\u00e9"], "bad revision 'caf\\xe9'"),
    (["--block", "0"], "--block: must be at least 1, not 0"),
    (["--warmup", "-1"], "--warmup: must be at least 0, not -1"),
    (["--quantile", "1"], "--quantile: must be between 0 and 1, not 1.0"),
    (["--rows", "SYN", "--rows", "nope"], "--rows: no row contains 'nope' (rows: TCP ACK, LRU hit, v4;"),
])
def test_bad_arguments_name_option_and_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bp.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_rows_selects_by_part_of_the_name_in_table_order():
    cases = bp.build_cases(4)
    assert [c.name for c in bp.select_cases(cases, ["syn", "v6"])] == [
        "TCP ACK, LRU hit, v6", "TCP SYN, new flow, v4"]
    assert [c.name for c in bp.select_cases(cases, ["LRU hit"])] == [c.name for c in cases[:4]]
    assert bp.select_cases(cases, []) == cases
    assert bp.parse_args(["--rows", "SYN"]).rows == ["SYN"]


# --- turn orders

@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_carryover_orders_balance_who_runs_before_whom(n):
    names = [f"p{i}" for i in range(n)]
    orders = bp.carryover_orders(names)
    assert len(orders) == (1 if n == 1 else n if n % 2 == 0 else 2 * n)
    assert all(sorted(o) == names for o in orders)
    firsts = collections.Counter(o[0] for o in orders)
    assert set(firsts.values()) == {len(orders) // n}
    follows = collections.Counter(pair for o in orders for pair in zip(o, o[1:]))
    if n > 1:  # every ordered pair of two programs equally often
        assert len(follows) == n * (n - 1)
        assert len(set(follows.values())) == 1


class _Recorder:
    """Stands in for a loaded program in the scheduling test: logs who ran which frame;
    a frame's "duration" is its length."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def test_run(self, frame):
        self.log.append((self.name, frame))
        return bpf.TestRunResult(retval=2, data=frame, duration_ns=len(frame), ctx=None)


def test_measure_every_program_sees_every_frame_in_balanced_turns():
    log = []
    names = ["balancer", "compare", "empty"]
    progs = {n: _Recorder(n, log) for n in names}
    frames = [bytes(i + 1) for i in range(40)]
    turns = {}
    for _ in range(3):  # three loads: the turn orders continue across them
        out = bp.measure(progs, [bp.Case("row", frames)], reps=1, warmup=5, block=10, turns=turns)
        assert out == {("row", n): [20.5] for n in names}  # each ran all 40 frames: median of 1..40
    assert turns == {"row": 12}
    per_load = 3 * 5 + 3 * 40  # warm-up, then 4 blocks of 10 frames per program
    assert len(log) == 3 * per_load
    orders = []
    for load in range(3):
        entries = log[load * per_load:(load + 1) * per_load]
        assert entries[:15] == [(n, f) for n in names for f in frames[:5]]
        for blk in range(4):
            chunk = entries[15 + 30 * blk:15 + 30 * (blk + 1)]
            order = tuple(chunk[10 * k][0] for k in range(3))
            assert chunk == [(n, f) for n in order for f in frames[10 * blk:10 * (blk + 1)]]
            orders.append(order)
    assert orders == 2 * bp.carryover_orders(names)  # 12 blocks: the 6 orders twice


# --- the paired ratio and its bootstrap interval

def test_paired_ratios_per_repetition():
    empty = [40, 50, 45, 60]
    base = [140, 150, 145, 55]  # the last repetition: base below empty, no ratio
    other = [120, 130, 125, 500]
    np.testing.assert_allclose(bp.paired_ratios(base, other, empty), [0.8, 0.8, 0.8])
    with pytest.raises(ValueError, match="different lengths: 2, 3, 2"):
        bp.paired_ratios([1, 2], [1, 2, 3], [0, 0])


def test_cycle_ratios_cancel_the_load_order():
    # 2 objects, the one loaded second 8 % slower: loads alternate (other first, base first)
    empty = [45.0] * 8
    base = [45 + 100 * f for f in (1.08, 1.0, 1.08, 1.0, 1.08, 1.0, 1.08, 1.0)]
    other = [45 + 80 * f for f in (1.0, 1.08, 1.0, 1.08, 1.0, 1.08, 1.0, 1.08)]  # 0.8x the cost
    per_rep = bp.paired_ratios(base, other, empty)
    assert per_rep.min() < 0.75 and per_rep.max() > 0.85  # per repetition: +-8 % around 0.8
    np.testing.assert_allclose(bp.cycle_ratios(base, other, empty, 2), [0.8] * 4)
    r = bp.ratio(base, other, empty, per_cycle=2)
    assert (r.median, *r.ci, r.low, r.high, r.n) == pytest.approx((0.8, 0.8, 0.8, 0.8, 0.8, 4))
    # an incomplete last cycle counts; a cycle with the base not above empty has no ratio
    np.testing.assert_allclose(bp.cycle_ratios([145, 145, 145], [125, 125, 165], [45, 45, 45], 2), [0.8, 1.2])
    assert bp.cycle_ratios([40, 45], [50, 50], [45, 45], 2).size == 0
    assert bp.ratio([40, 45], [50, 50], [45, 45], per_cycle=2) is None
    with pytest.raises(ValueError, match="per_cycle must be at least 1, not 0"):
        bp.cycle_ratios([1], [1], [0], 0)


def test_bootstrap_of_constant_samples_is_that_constant():
    assert bp.bootstrap_ci([0.83] * 7) == pytest.approx((0.83, 0.83))


def test_bootstrap_is_seeded():
    x = np.random.default_rng(5).normal(1.0, 0.1, 25)
    assert bp.bootstrap_ci(x, seed=3) == bp.bootstrap_ci(x, seed=3)
    # the seed is what makes it reproducible: another seed, other resamples
    assert bp.bootstrap_ci(x, seed=3, stat=np.mean) != bp.bootstrap_ci(x, seed=4, stat=np.mean)


def test_bootstrap_interval_of_the_median_has_the_known_width():
    # the median of n normal samples has a standard error of sqrt(pi/2) * sigma / sqrt(n)
    sigma, n = 0.05, 400
    x = np.random.default_rng(11).normal(0.8, sigma, n)
    lo, hi = bp.bootstrap_ci(x)
    assert lo < 0.8 < hi
    expected = 2 * 1.96 * np.sqrt(np.pi / 2) * sigma / np.sqrt(n)
    assert 0.7 * expected < hi - lo < 1.3 * expected


def test_bootstrap_interval_covers_the_true_ratio_about_95_percent_of_the_time():
    # synthetic paired repetitions: empty ~45 ns, the balancer 150 ns above it, the other
    # object 0.8x the balancer's cost above empty, each with its own noise
    rng = np.random.default_rng(2)
    hits, trials = 0, 300
    for t in range(trials):
        empty = rng.normal(45, 1, 30)
        base = empty + rng.normal(150, 6, 30)
        other = empty + 0.8 * rng.normal(150, 6, 30)
        lo, hi = bp.bootstrap_ci(bp.paired_ratios(base, other, empty), n_boot=2000, seed=t)
        hits += lo <= 0.8 <= hi
    assert 0.88 * trials <= hits <= 0.99 * trials


def test_print_ratios_median_interval_and_range(capsys):
    cases = [bp.Case("row a", []), bp.Case("row b", [])]
    results = {
        ("row a", "balancer"): [145, 150, 155], ("row a", "old"): [125, 130, 139], ("row a", "empty"): [45, 50, 55],
        ("row b", "balancer"): [40, 40, 40], ("row b", "old"): [50, 50, 50], ("row b", "empty"): [45, 45, 45],
    }
    bp.print_ratios(results, cases, ["old"])
    out = capsys.readouterr().out.splitlines()
    assert "bootstrap over 3 repetitions" in out[0]
    assert out[1].split() == ["packet", "old", "/", "balancer"]
    assert out[2].split() == ["row", "a", "0.80", "[0.80,", "0.84]", "(0.80..0.84)"]
    assert out[3].split() == ["row", "b", "n/a"]  # the balancer not above empty
    bp.print_ratios(results, cases[:1], ["old"], per_cycle=2)
    out = capsys.readouterr().out.splitlines()
    assert "bootstrap over 2 cycles of 2 repetitions" in out[0]
    # cycles: (80 + 80) / (100 + 100) and 84 / 100
    assert out[2].split() == ["row", "a", "0.82", "[0.80,", "0.84]", "(0.80..0.84)"]


# --- --previous: the balancer of a git revision

def test_previous_head_builds_a_balancer_object(tmp_path):
    obj = bp.build_revision("HEAD", tmp_path)
    assert obj.is_file() and obj.is_relative_to(tmp_path)
    spec = bpf.ObjectSpec.open(obj)
    try:
        assert "balancer_ingress" in spec.program_names
    finally:
        spec.close()


def test_previous_unknown_revision_is_named(tmp_path):
    with pytest.raises(bp.BenchError, match=r"--previous 'no-such-rev': not a revision of the repository"):
        bp.build_revision("no-such-rev", tmp_path)
    assert list(tmp_path.iterdir()) == []


def _git_repo(path: Path, files: dict[str, str]) -> Path:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    subprocess.run(["git", "-C", str(path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(path), "commit", "-q", "-m", "x"], check=True, env=env)
    return path


def test_previous_that_does_not_compile_names_rev_and_clang_error(tmp_path):
    repo = _git_repo(tmp_path / "repo", {"katran/bpf/balancer.bpf.c": "int f(void) { return undeclared_x; }\n"})
    with pytest.raises(bp.BenchError) as exc:
        bp.build_revision("HEAD", tmp_path / "out", repo=repo)
    msg = str(exc.value)
    assert msg.startswith("--previous 'HEAD' (")
    assert "does not compile" in msg and "balancer.bpf.c" in msg
    assert "error: use of undeclared identifier 'undeclared_x'" in msg


def test_previous_without_a_balancer_is_named(tmp_path):
    repo = _git_repo(tmp_path / "repo", {"README": "nothing\n"})
    with pytest.raises(bp.BenchError, match=r"--previous 'HEAD' \([0-9a-f]{12}\): no katran/bpf"):
        bp.build_revision("HEAD", tmp_path / "out", repo=repo)


def test_main_with_unknown_previous_fails_before_timing(capsys):
    cpus = os.sched_getaffinity(0)
    assert bp.main(["--previous", "no-such-rev"]) == 2
    assert os.sched_getaffinity(0) == cpus  # failed before pinning and loading
    assert "bench_packets: error: --previous 'no-such-rev': not a revision" in capsys.readouterr().err


# --- the table, timed (loads BPF)

@pytest.mark.privileged
def test_compare_table(capsys, tmp_path):
    cpus = os.sched_getaffinity(0)
    try:
        rc = bp.main(["--runs", "200", "--reps", "1", "--instances", "4", "--block", "100", "--warmup", "50",
                      "--compare", OBJ, "--compare", f"same={OBJ}", "--previous", "HEAD", "--no-flow-cache",
                      "--json", str(tmp_path / "r.json")])
    finally:
        os.sched_setaffinity(0, cpus)
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:13] == ["packet", "balancer", "ns", "above", "empty", "compare", "ns", "above", "empty",
                                   "same", "ns", "above", "empty"]
    assert "HEAD ns" in out[1]
    at = next(i for i, ln in enumerate(out) if ln.startswith("packet") and "compare / balancer" in ln)
    assert "same / balancer" in out[at] and "HEAD / balancer" in out[at] and "no-flow-cache / balancer" in out[at]
    assert "bootstrap over 1 cycles of 4 repetitions" in out[at - 1]  # 4 objects: each loaded first once
    rows = out[2:at - 1]
    n_rows = len(bp.build_cases(1))
    assert len(rows) == n_rows == 6 and any("flow-cache miss" in ln for ln in rows)
    for ln in rows:  # every column forwards what the balancer forwards
        assert ln.split()[-5:] in (["XDP_TX"] * 5, ["XDP_PASS"] * 5)
    ratios = out[at + 1:]
    assert len(ratios) == n_rows
    for ln in ratios:
        cells = ln.split("]")[:4]
        assert len(cells) == 4
        for cell in cells:  # the same code: a ratio around 1, inside its interval
            med, interval = cell.split("[")
            med = float(med.split()[-1])
            lo, hi = (float(v) for v in interval.split(","))
            assert lo <= med <= hi
            assert 0.2 < med < 5
    saved = json.loads((tmp_path / "r.json").read_text())
    assert (saved["loads"], saved["reps_per_load"], saved["loads_per_cycle"]) == (4, 1, 4)
    assert len(saved["results"]) == n_rows
    for cols in saved["results"].values():  # paired: one median per load and repetition in each column
        assert sorted(cols) == ["HEAD", "balancer", "compare", "empty", "no-flow-cache", "same"]
        assert {len(v) for v in cols.values()} == {4}


@pytest.mark.privileged
def test_rows_times_only_the_rows_asked_for(capsys):
    cpus = os.sched_getaffinity(0)
    try:
        rc = bp.main(["--runs", "200", "--instances", "2", "--block", "100", "--warmup", "50",
                      "--compare", f"same={OBJ}", "--rows", "SYN", "--rows", "v6"])
    finally:
        os.sched_setaffinity(0, cpus)
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    at = next(i for i, ln in enumerate(out) if ln.startswith("packet") and "same / balancer" in ln)
    timed = [ln.split(" ", 3)[:3] for ln in out[2:at - 1]]
    assert [" ".join(t) for t in timed] == ["TCP ACK, LRU", "TCP SYN, new"]
    assert [ln[:21].strip() for ln in out[at + 1:]] == ["TCP ACK, LRU hit, v6", "TCP SYN, new flow, v4"]


def test_all_features_asks_an_object_only_for_the_knobs_it_has():
    """--all-features: our objects get every feature knob; an object without knobs (Katran's
    own compiles its features in) is loaded without them instead of being refused."""
    from katran.contract import OBJ_DIR

    assert bp.feature_knobs(None) == {k: True for k in bp.FEATURE_KNOBS}
    assert bp.feature_knobs(str(OBJ_DIR / "balancer.bpf.o")) == {k: True for k in bp.FEATURE_KNOBS}
    assert bp.feature_knobs(str(OBJ_DIR / "xdp_pass.bpf.o")) == {}
