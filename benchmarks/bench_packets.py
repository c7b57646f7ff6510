"""Per-packet cost of the balancer, beside an empty XDP program timed the same way.

Every measurement is one BPF_PROG_TEST_RUN call with repeat=1 on a freshly
copied packet (the kernel copies data_in on every call), so a program that
rewrites the packet never sees its own output.  The kernel reports the time
spent in the program run (ns).  A cell is the median over ``--runs`` calls;
the programs of a row take turns on blocks of ``--block`` frames (orders in
which each program follows each other one equally often), so a shared
machine's drift hits them alike.  The whole table is measured ``--reps``
times on each of ``--instances`` fresh loads (where the maps land in memory
moves timings by tens of ns; each load rotates which balancer is loaded
first), after a warm-up.  We print the median over all of these, half their
spread, and the cost above the empty program.  The process is pinned to one
CPU, which alone has a per-cpu connection table (``--lru-size``, large
enough that the warmed flows really hit: this is checked).  Run as root:

    python benchmarks/bench_packets.py [--runs 4000] [--block 200] [--reps 1] [--instances 8] [--cpu 1]
                                       [--all-features] [--object other_balancer.bpf.o]
                                       [--compare [NAME=]balancer.bpf.o ...] [--previous REV ...]
                                       [--capture] [--no-flow-cache] [--json results.json]

Every other balancer column (``--compare``, ``--previous``, ``--capture``)
gets a second table: per row, its cost above empty divided by the
balancer's, paired per repetition (same load, same blocks); the median, a
95 % percentile-bootstrap interval of that median over the repetitions
(numpy, seeded: the same timings print the same interval) and the min..max.
``--compare NAME=PATH`` (repeatable; ``--compare PATH`` is column
``compare``) loads another object through ``KatranLb(balancer_prog_path=...)``;
``--previous REV`` (repeatable) builds the balancer of git revision REV of
this repository (``git archive REV katran/bpf``, compiled by katran.build's
clang command into a temporary directory) and times it as column REV: the
regression mode.

``--all-features`` enables every data-plane feature knob at load time
(TPR, UDP stable routing, source routing, global LRU, local delivery, ICMP
too-big, inline IPIP/GUE decap, strict decap destination) while the VIPs
and packets use none of them; encapsulation stays IPIP (GUE would change
the packet).  The functions are importable so other programs can be timed
in the same table: ``run_bench(factory, args, title)``.  ``--capture`` adds
a column for the balancer with a packet capture running whose filter matches
none of the packets (the capture-on cost; capture off is the plain column).
``--no-flow-cache`` adds a column for the balancer with its flow cache off.
The "LRU hit" rows repeat 500 flows, so ours serves them from its flow cache
(lb_flow_cache.h); the "flow-cache miss" row sends in turn eight flows of each
of 167 cache sets (four ways a set with two chances: up to six in turn keep four
in the cache, eight never do), so every packet reads all four ways, misses the
cache, hits the LRU and refills a slot: the cache's worst case.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import random
import re
import statistics
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs
import numpy as np
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from katran import KatranConfig, KatranLb, ModifyAction, Real, VipKey, structs
from katran import build
from katran.adapter import bpf
from katran.errors import safe_repr
from katran.lb import packaged_object

REPO = Path(__file__).resolve().parent.parent

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
PAYLOAD = b"x" * 64
CLIENT_V4, CLIENT_V6 = "192.168.1.1", "fc00:2::1"
VIP_V4, VIP_V6, NON_VIP_V4 = "10.200.1.1", "fc00:1::1", "10.9.9.9"
# the knobs --all-features turns on (everything but gue_encap, which changes the packet)
FEATURE_KNOBS = (
    "tcp_server_id_routing", "udp_stable_routing", "lpm_src_lookup", "global_lru", "local_delivery",
    "icmp_toobig_generation", "inline_decap_ipip", "inline_decap_gue", "decap_strict_destination",
)
# the flows that are warmed into the connection table before timing
LRU_FLOWS = range(10000, 10500)
# more clients (192.168.2.x), whose flows come in eights that share a flow-cache set
# (lb_flow_cache.h)
CLIENTS_B_V4 = "192.168.2."
CACHE_SETS = 167
SET_FLOWS = 2 * structs.FLOW_CACHE_WAYS  # six in turn keep four (two chances), eight none


def cache_set_flows() -> list[tuple[str, int]]:
    """(client, source port) of CLIENTS_B_V4 flows in groups of SET_FLOWS with one home
    slot (so one flow-cache set, and one slot of a direct-mapped build's): sent in turn,
    every packet finds the set's ways holding others of its group (a flow-cache miss, then
    an LRU hit that replaces a way: after a round, none is used since when the next flow
    comes)."""
    by_set: dict[int, list[tuple[str, int]]] = {}
    out: list[tuple[str, int]] = []
    for sport, host in itertools.product(range(1024, 1424), range(1, 255)):
        flow = (f"{CLIENTS_B_V4}{host}", sport)
        cache_set = structs.flow_cache_slot(structs.flow_key(flow[0], VIP_V4, sport, 80, 6))
        group = by_set.setdefault(cache_set, [])
        group.append(flow)
        if len(group) == SET_FLOWS:
            out += by_set.pop(cache_set)
            if len(out) == SET_FLOWS * CACHE_SETS:
                return out
    raise AssertionError(f"not enough flow-cache sets of {SET_FLOWS} flows")


def tcp4(sport: int, flags: str = "A") -> bytes:
    return bytes(ETH / IP(src=CLIENT_V4, dst=VIP_V4) / TCP(sport=sport, dport=80, flags=flags) / PAYLOAD)


def tcp6(sport: int, flags: str = "A") -> bytes:
    return bytes(ETH / IPv6(src=CLIENT_V6, dst=VIP_V6) / TCP(sport=sport, dport=80, flags=flags) / PAYLOAD)


def udp4(sport: int) -> bytes:
    return bytes(ETH / IP(src=CLIENT_V4, dst=VIP_V4) / UDP(sport=sport, dport=80) / PAYLOAD)


def tcp4b(flow: tuple[str, int]) -> bytes:
    src, sport = flow
    return bytes(ETH / IP(src=src, dst=VIP_V4) / TCP(sport=sport, dport=80, flags="A") / PAYLOAD)


def non_vip(sport: int) -> bytes:
    return bytes(ETH / IP(src=CLIENT_V4, dst=NON_VIP_V4) / TCP(sport=sport, dport=80, flags="A") / PAYLOAD)


@attrs.frozen
class Case:
    """One row of the table: the frames timed, in order (in groups of `unit`: a warm-up
    runs whole groups)."""

    name: str
    frames: list[bytes]
    unit: int = 1


def vips(n_reals: int) -> list[tuple[VipKey, list[Real]]]:
    """The VIPs of the benchmark and their reals (v4 VIPs -> v4 reals, v6 -> v6)."""
    reals_v4 = [Real(f"10.0.{i // 250}.{i % 250 + 1}") for i in range(n_reals)]
    reals_v6 = [Real(f"fc00::{i + 1:x}") for i in range(n_reals)]
    return [
        (VipKey(VIP_V4, 80, "tcp"), reals_v4),
        (VipKey(VIP_V4, 80, "udp"), reals_v4),
        (VipKey(VIP_V6, 80, "tcp"), reals_v6),
    ]


def warm_frames() -> list[bytes]:
    """Frames that put LRU_FLOWS into the connection table of the current CPU."""
    return [mk(p) for p in LRU_FLOWS for mk in (tcp4, tcp6, udp4)] + [tcp4b(p) for p in cache_set_flows()]


def build_cases(runs: int) -> list[Case]:
    flows = LRU_FLOWS
    sets = cache_set_flows()
    # whole sets only (a multiple of SET_FLOWS packets): from one repetition to the next a
    # set's flows keep their turn, so none is ever still held when it comes again
    set_runs = max(SET_FLOWS, runs - runs % SET_FLOWS)
    return [
        Case("TCP ACK, LRU hit, v4", [tcp4(flows[i % len(flows)]) for i in range(runs)]),
        Case("TCP ACK, LRU hit, v6", [tcp6(flows[i % len(flows)]) for i in range(runs)]),
        Case("UDP, LRU hit, v4", [udp4(flows[i % len(flows)]) for i in range(runs)]),
        Case("TCP ACK, LRU hit, flow-cache miss", [tcp4b(sets[i % len(sets)]) for i in range(set_runs)], SET_FLOWS),
        Case("TCP SYN, new flow, v4", [tcp4(20000 + (i % 40000), "S") for i in range(runs)]),
        Case("non-VIP, XDP_PASS", [non_vip(20000 + (i % 40000)) for i in range(runs)]),
    ]


def durations_ns(prog: bpf.Program, frames: Sequence[bytes]) -> list[int]:
    return [prog.test_run(f).duration_ns for f in frames]


def carryover_orders(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Turn orders in which every program follows every other one equally often.

    A Williams design: n orders for an even number of programs, 2n for an odd
    one (for 2 and 3 programs these are all the permutations).  What ran just
    before leaves the caches in a state that biases the timing; this balances it
    with far fewer orders than all n! permutations.
    """
    n = len(names)
    if n <= 1:
        return [tuple(names)]
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    rows = [[(j + i) % n for j in first] for i in range(n)]
    if n % 2:
        rows += [list(reversed(r)) for r in rows]
    return [tuple(names[j] for j in r) for r in rows]


def select_cases(cases: Sequence[Case], rows: Sequence[str]) -> list[Case]:
    """The cases whose name contains one of `rows` (case-insensitive); all without `rows`."""
    if not rows:
        return list(cases)
    return [c for c in cases if any(r.lower() in c.name.lower() for r in rows)]


def measure(progs: Mapping[str, bpf.Program], cases: Sequence[Case], reps: int,
            warmup: int = 500, block: int = 200, rotate_rows: bool = False, quantile: float = 0.5,
            turns: dict[str, int] | None = None) -> dict[tuple[str, str], list[float]]:
    """Per (case, program): the median ns (`quantile`) of each repetition.

    Within a repetition the programs of a row take turns on blocks of `block`
    frames, so drift of a shared machine hits them alike; each program sees
    all the frames of the row.  The turn orders follow `carryover_orders` and
    continue from one repetition to the next, so over the repetitions each
    program follows each other one equally often (`turns`, the next turn of
    each row, carries this over from one call to the next).  Before a row's first
    repetition each program runs `warmup` of its frames untimed (caches,
    branch predictors).  With `rotate_rows` the row that goes first moves by
    one each repetition.
    """
    out: dict[tuple[str, str], list[float]] = {(c.name, p): [] for c in cases for p in progs}
    names = list(progs)
    orders = carryover_orders(names)
    turn = {c.name: 0 for c in cases} if turns is None else turns
    for c in cases:
        turn.setdefault(c.name, 0)
    for rep in range(reps):
        shift = rep % len(cases) if rotate_rows else 0
        for case in [*cases[shift:], *cases[:shift]]:
            if rep == 0 and warmup:
                for p in names:
                    durations_ns(progs[p], case.frames[:warmup - warmup % case.unit])
            times: dict[str, list[int]] = {p: [] for p in names}
            for start in range(0, len(case.frames), block):
                chunk = case.frames[start:start + block]
                for p in orders[turn[case.name] % len(orders)]:
                    times[p] += durations_ns(progs[p], chunk)
                turn[case.name] += 1
            for p in names:
                out[(case.name, p)].append(
                    statistics.median(times[p]) if quantile == 0.5 else float(np.quantile(times[p], quantile)))
    return out


def verdict_of(prog: bpf.Program, frame: bytes) -> str:
    return bpf_verdict(prog.test_run(frame).retval)


def bpf_verdict(retval: int) -> str:
    return {0: "ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "REDIRECT"}.get(retval, str(retval))


def print_table(title: str, cases: Sequence[Case], results: Mapping[tuple[str, str], list[float]],
                columns: Sequence[str], verdicts: Mapping[tuple[str, str], str], empty: str = "empty") -> None:
    """One line per case: each program's median (spread) and its cost above `empty`."""
    print(title)
    shown = [c for c in columns if c != empty]
    widths = {c: max(16, len(c) + 3) for c in shown}
    head = f"{'packet':<24}" + "".join(f" {c + ' ns':>{widths[c]}} {'above empty':>11}" for c in shown)
    head += f" {'empty ns':>14}  verdicts"
    print(head)
    for case in cases:
        base = statistics.median(results[(case.name, empty)])
        line = f"{case.name:<24}"
        for c in shown:
            meds = results[(case.name, c)]
            med = statistics.median(meds)
            cell = f"{med:.0f} (±{(max(meds) - min(meds)) / 2:>3.0f})"
            line += f" {cell:>{widths[c]}} {med - base:>11.0f}"
        e = results[(case.name, empty)]
        line += f" {base:>6.0f} (±{(max(e) - min(e)) / 2:>3.0f})  "
        line += " ".join(verdicts[(case.name, c)] for c in shown)
        print(line)


def feature_knobs(balancer_obj: str | None) -> dict[str, bool]:
    """The knobs --all-features turns on for one object: FEATURE_KNOBS, but an object that has
    no such knob (Katran's own, whose features are compiled in with -D) is not asked for it."""
    knobs = {k: True for k in FEATURE_KNOBS}
    if balancer_obj is None:
        return knobs
    from katran import contract

    abi = contract.BALANCER.check(balancer_obj, strict=False)
    return {k: v for k, v in knobs.items() if abi.has_knob(k)}


def make_lb(cpu: int, n_reals: int, all_features: bool, lru_size: int,
            balancer_obj: str | None = None, flow_cache: bool = True) -> KatranLb:
    """A started KatranLb with the benchmark VIPs; its per-cpu LRU is on `cpu` only."""
    knobs = feature_knobs(balancer_obj) if all_features else {}
    cfg = KatranConfig(
        testing=True, default_mac="00:00:de:ad:be:af", forwarding_cores=(cpu,), lru_size=lru_size,
        katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337", balancer_prog_path=balancer_obj,
        flow_cache=flow_cache, **knobs,
    )
    lb = KatranLb(cfg)
    lb.start()
    try:
        for vip, reals in vips(n_reals):
            lb.add_vip(vip)
            lb.modify_reals_for_vip(ModifyAction.ADD, reals, vip)
    except Exception:
        lb.close()
        raise
    return lb


def _load_empty() -> bpf.LoadedObject:
    spec = bpf.ObjectSpec.open(packaged_object("xdp_pass.bpf.o"))
    try:
        return spec.load()
    finally:
        spec.close()


# a factory of the programs to time: ({column: program}, close)
ProgFactory = Callable[[], tuple[dict[str, bpf.Program], Callable[[], None]]]


def run_bench(factory: ProgFactory, args: argparse.Namespace, title: str,
              on_loaded: Callable[[dict[str, bpf.Program], list[Case]], None] | None = None,
              ) -> dict[tuple[str, str], list[float]]:
    """Time the cases on `args.instances` fresh loads of the programs; print the table.

    Where a load's JIT image and maps land moves its timing by tens of ns
    (two loads of the same object differ that much, steadily so when loaded in
    the same order); so before each load a random number of small spacer
    programs shifts the placement, and each column aggregates several loads,
    each warmed (connection table) and timed `args.reps` times.  The lists of
    the result are paired: index i of every column is the same load and
    repetition.
    """
    cases = select_cases(build_cases(args.runs), args.rows)
    results: dict[tuple[str, str], list[float]] = {}
    verdicts: dict[tuple[str, str], str] = {}
    columns: list[str] = []
    rng = random.Random(args.seed)
    turns: dict[str, int] = {}  # the turn orders continue from one load to the next
    for _ in range(args.instances):
        spacers = [_load_empty() for _ in range(rng.randrange(8))]
        try:
            progs, close = factory()
        except BaseException:
            for s in spacers:
                s.close()
            raise
        try:
            columns = list(progs)
            for prog in progs.values():
                for f in warm_frames():
                    prog.test_run(f)
            verdicts = {(c.name, p): verdict_of(prog, c.frames[0]) for c in cases for p, prog in progs.items()}
            if on_loaded is not None:
                on_loaded(progs, cases)
            gc_was = gc.isenabled()
            gc.disable()  # no collection between two timed calls
            try:
                timed = measure(progs, cases, args.reps, warmup=args.warmup, block=args.block,
                                rotate_rows=args.rotate_rows, quantile=args.quantile, turns=turns)
            finally:
                if gc_was:
                    gc.enable()
            for key, meds in timed.items():
                results.setdefault(key, []).extend(meds)
        finally:
            close()
            for s in spacers:
                s.close()
    print_table(title, cases, results, columns, verdicts)
    return results


# --- the ratio to the balancer, with a bootstrap confidence interval

def paired_ratios(base: Sequence[float], other: Sequence[float], empty: Sequence[float]) -> np.ndarray:
    """Per repetition: other's cost above empty / base's, the three timed in the same
    load and blocks.  A repetition where base is not above empty has no ratio."""
    b, o, e = (np.asarray(x, dtype=float) for x in (base, other, empty))
    if not b.shape == o.shape == e.shape:
        raise ValueError(f"paired series of different lengths: {b.size}, {o.size}, {e.size}")
    keep = b - e > 0
    return (o[keep] - e[keep]) / (b[keep] - e[keep])


def cycle_ratios(base: Sequence[float], other: Sequence[float], empty: Sequence[float],
                 per_cycle: int) -> np.ndarray:
    """Per cycle of `per_cycle` consecutive repetitions: other's summed cost above empty /
    base's.  A cycle is the loads in which each balancer object is loaded first once, so
    what the load order does to the timing (the object loaded second runs up to ~10 %
    slower) cancels within it; the last cycle may be incomplete.  A cycle where base is
    not above empty has no ratio."""
    b, o, e = (np.asarray(x, dtype=float) for x in (base, other, empty))
    if not b.shape == o.shape == e.shape:
        raise ValueError(f"paired series of different lengths: {b.size}, {o.size}, {e.size}")
    if per_cycle < 1:
        raise ValueError(f"per_cycle must be at least 1, not {per_cycle!r}")
    out = []
    for i in range(0, b.size, per_cycle):
        above_b, above_o = (b - e)[i:i + per_cycle].sum(), (o - e)[i:i + per_cycle].sum()
        if above_b > 0:
            out.append(above_o / above_b)
    return np.asarray(out)


def bootstrap_ci(samples: Sequence[float], level: float = 0.95, n_boot: int = 10_000, seed: int = 0,
                 stat: Callable[..., np.ndarray] = np.median) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat` (the median) of `samples`: `n_boot`
    resamples with replacement, seeded, so the same data print the same interval."""
    x = np.asarray(samples, dtype=float)
    if x.size == 0:
        raise ValueError("no samples")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), not {level!r}")
    rng = np.random.default_rng(seed)
    stats = stat(x[rng.integers(0, x.size, size=(n_boot, x.size))], axis=1)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@attrs.frozen
class Ratio:
    median: float
    ci: tuple[float, float]
    low: float   # min over the cycles
    high: float  # max
    n: int

    def __str__(self) -> str:
        return f"{self.median:.2f} [{self.ci[0]:.2f}, {self.ci[1]:.2f}] ({self.low:.2f}..{self.high:.2f})"


def ratio(base: Sequence[float], other: Sequence[float], empty: Sequence[float],
          per_cycle: int = 1, seed: int = 0) -> Ratio | None:
    """The median over the cycles of `cycle_ratios`, its bootstrap interval and range."""
    r = cycle_ratios(base, other, empty, per_cycle)
    if r.size == 0:
        return None
    return Ratio(float(np.median(r)), bootstrap_ci(r, seed=seed), float(r.min()), float(r.max()), int(r.size))


def print_ratios(results: Mapping[tuple[str, str], list[float]], cases: Sequence[Case],
                 others: Sequence[str], per_cycle: int = 1, base: str = "balancer",
                 empty: str = "empty") -> None:
    """Per row and per column of `others`: its cost above empty / the balancer's, paired
    (same loads, same blocks) per cycle of `per_cycle` repetitions: the median over the
    cycles, its 95 % bootstrap interval and the range."""
    n = len(results[(cases[0].name, base)])
    cycles = -(-n // per_cycle)
    over = f"{n} repetitions" if per_cycle == 1 else f"{cycles} cycles of {per_cycle} repetitions"
    print(f"cost above empty / the balancer's, paired: median [95 % CI, bootstrap over {over}] (min..max)")
    widths = {o: max(32, len(o) + 12) for o in others}
    print(f"{'packet':<24}" + "".join(f" {o + ' / ' + base:>{widths[o]}}" for o in others))
    for case in cases:
        line = f"{case.name:<24}"
        for o in others:
            r = ratio(results[(case.name, base)], results[(case.name, o)], results[(case.name, empty)], per_cycle)
            line += f" {'n/a' if r is None else str(r):>{widths[o]}}"
        print(line)


# --- the balancer object of a previous revision (--previous)

class BenchError(Exception):
    """A benchmark input that cannot be used; the message names it."""


def build_revision(rev: str, out_dir: Path, repo: Path = REPO) -> Path:
    """Build the balancer object of git revision `rev` into `out_dir` (katran.build's
    build_revision: its katran/bpf tree compiled with katran.build's clang command).
    Returns the object; BenchError naming the revision."""
    try:
        return build.build_revision(rev, out_dir, repo, what=f"--previous {safe_repr(rev)}")
    except build.BuildError as exc:
        raise BenchError(str(exc)) from None


# --- command line

RESERVED_COLUMNS = ("balancer", "empty", "capture", "no-flow-cache")
DEFAULT_CYCLES = 6  # load cycles: in each, every balancer object is loaded first once
_COLUMN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~^@{}/-]{0,39}")


def compare_arg(value: str) -> tuple[str, str]:
    """--compare NAME=PATH, or PATH alone (name "compare"): (name, path).  A value that is an
    existing file is a path, even with a "=" in it."""
    if "=" in value and not os.path.isfile(value):
        name, path = value.split("=", 1)
        if not _COLUMN_NAME.fullmatch(name):
            raise argparse.ArgumentTypeError(
                f"bad column name {safe_repr(name)} in {safe_repr(value)}: 1-40 letters, digits, ._~^@{{}}/-")
    else:
        name, path = "compare", value
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"no such file {safe_repr(path)}")
    return name, path


def previous_arg(value: str) -> str:
    if not _COLUMN_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"bad revision {safe_repr(value)}: 1-40 letters, digits, ._~^@{{}}/-, not starting with -")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench_packets.py", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4000, help="packets per cell and repetition")
    ap.add_argument("--reps", type=int, default=1, help="repetitions of the whole table per load")
    ap.add_argument("--instances", type=int, default=None,
                    help="fresh loads of the programs (default: 6 cycles of as many loads as there are "
                         "balancer objects, each loaded first once per cycle)")
    ap.add_argument("--block", type=int, default=200, help="frames a program runs before the next takes a turn")
    ap.add_argument("--warmup", type=int, default=500,
                    help="frames of a row each program runs untimed before the row's first repetition")
    ap.add_argument("--rotate-rows", action="store_true",
                    help="the row that goes first moves by one each repetition")
    ap.add_argument("--quantile", type=float, default=0.5,
                    help="a cell's statistic over its calls (0.5: the median)")
    ap.add_argument("--reals", type=int, default=100)
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last one)")
    ap.add_argument("--lru-size", type=int, default=200_000, help="size of the per-cpu connection table")
    ap.add_argument("--seed", type=int, default=1, help="seed of the placement spacers")
    ap.add_argument("--object", default=None, help="balancer object to time (default: the packaged one)")
    ap.add_argument("--compare", type=compare_arg, action="append", default=[], metavar="[NAME=]OBJECT",
                    help="another balancer object timed in the same table, paired, as column NAME "
                         "(default name: compare); repeatable.  Prints its cost above empty as a ratio "
                         "to the balancer's, with a 95 %% confidence interval")
    ap.add_argument("--previous", type=previous_arg, action="append", default=[], metavar="REV",
                    help="build the balancer of git revision REV of this repository and time it as "
                         "column REV (regressions); repeatable")
    ap.add_argument("--all-features", action="store_true", help="every feature knob on, unused by the packets")
    ap.add_argument("--capture", action="store_true",
                    help="also time the balancer with a packet capture running whose filter matches "
                         "none of the packets (column 'capture')")
    ap.add_argument("--no-flow-cache", action="store_true",
                    help="also time the balancer with its flow cache off (flow_cache=False; column "
                         "'no-flow-cache'): what the cache buys, and costs on the flow-cache miss row")
    ap.add_argument("--rows", action="append", default=[], metavar="TEXT",
                    help="only the rows whose name contains TEXT (case-insensitive; repeatable), "
                         "e.g. --rows SYN")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="also write the per-repetition medians of every cell to PATH")
    args = ap.parse_args(argv)
    names = [c.name for c in build_cases(1)]
    for text in args.rows:
        if not select_cases(build_cases(1), [text]):
            ap.error(f"--rows: no row contains {safe_repr(text)} (rows: {'; '.join(names)})")
    for opt in ("runs", "reps", "instances", "block", "reals", "lru_size"):
        if getattr(args, opt) is not None and getattr(args, opt) < 1:
            ap.error(f"--{opt.replace('_', '-')}: must be at least 1, not {getattr(args, opt)}")
    if not 0 < args.quantile < 1:
        ap.error(f"--quantile: must be between 0 and 1, not {args.quantile}")
    if args.warmup < 0:
        ap.error(f"--warmup: must be at least 0, not {args.warmup}")
    seen = set(RESERVED_COLUMNS)
    for opt, name in [*(("--compare", n) for n, _ in args.compare), *(("--previous", r) for r in args.previous)]:
        if name in seen:
            ap.error(f"{opt}: column name {safe_repr(name)} is taken "
                     f"({'reserved' if name in RESERVED_COLUMNS else 'given twice'})")
        seen.add(name)
    return args


def pin_cpu(cpu: int | None) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[-1] if cpu is None else cpu
    os.sched_setaffinity(0, {cpu})
    return cpu


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-packets-") as tmp:
        # the balancer objects of the columns, in column order
        objs: dict[str, str | None] = {"balancer": args.object, **dict(args.compare)}
        try:
            for i, rev in enumerate(args.previous):
                objs[rev] = str(build_revision(rev, Path(tmp) / str(i)))
        except BenchError as exc:
            print(f"bench_packets: error: {exc}", file=sys.stderr)
            return 2
        if args.instances is None:
            args.instances = DEFAULT_CYCLES * len(objs)
        elif args.instances % len(objs):
            print(f"bench_packets: note: --instances {args.instances} is not a multiple of the "
                  f"{len(objs)} balancer objects: some are loaded first more often than others", file=sys.stderr)
        args.cpu = pin_cpu(args.cpu)
        return _run(args, objs)


def _run(args: argparse.Namespace, objs: dict[str, str | None]) -> int:
    lbs: list[KatranLb] = []
    loads = itertools.count()
    names = list(objs)

    def load() -> tuple[dict[str, bpf.Program], Callable[[], None]]:
        # load i loads the balancers in the column order rotated by i: what is loaded
        # first lands elsewhere in memory and times differently
        i = next(loads) % len(names)
        order = names[i:] + names[:i]
        stack = contextlib.ExitStack()
        try:
            empty_obj = _load_empty()
            stack.callback(empty_obj.close)
            loaded = {}
            for name in order:
                loaded[name] = make_lb(args.cpu, args.reals, args.all_features, args.lru_size, objs[name])
                stack.callback(loaded[name].close)
            if args.capture:
                loaded["capture"] = make_lb(args.cpu, args.reals, args.all_features, args.lru_size, args.object)
                stack.callback(loaded["capture"].close)
                # a running capture whose filter no benchmark packet matches (TEST-NET-3 sources)
                stack.callback(loaded["capture"].capture(src="203.0.113.0/24").close)
            if args.no_flow_cache:
                loaded["no-flow-cache"] = make_lb(args.cpu, args.reals, args.all_features, args.lru_size,
                                                  args.object, flow_cache=False)
                stack.callback(loaded["no-flow-cache"].close)
        except BaseException:
            stack.close()
            raise
        lb = loaded["balancer"]
        lbs.append(lb)
        stack.callback(lbs.remove, lb)
        # the benchmark times the loaded programs themselves, in column order
        progs = {name: loaded[name]._obj.program("balancer_ingress") for name in [*names, *loaded.keys() - names]}
        progs["empty"] = empty_obj.program("xdp_pass")
        return progs, stack.close

    def check_hits(progs: dict[str, bpf.Program], cases: list[Case]) -> None:
        # every frame of the checks goes through every column, not the balancer alone: the
        # one column that got them timed up to 26 % slower than a second load of itself (UDP)
        def run(f: bytes) -> None:
            for prog in progs.values():
                prog.test_run(f)

        # the "LRU hit" rows must really hit: a connection table too small for the
        # warmed flows would time the new-flow path instead
        before = lbs[-1].get_lru_stats().v2
        for case in cases:
            if "LRU hit" in case.name and "flow-cache miss" not in case.name:  # that one: below
                for f in case.frames[: len(LRU_FLOWS)]:
                    run(f)
        misses = lbs[-1].get_lru_stats().v2 - before
        if misses:
            raise SystemExit(f"{misses} connection-table misses on the LRU-hit rows: raise --lru-size")
        # the flow-cache miss row must miss the flow cache (its flows share sets in eights):
        # one pass puts every set in its turn (the verdict check sent its first frame), then
        # two more must not hit
        for case in cases:
            if "flow-cache miss" in case.name:
                frames = case.frames[: SET_FLOWS * CACHE_SETS]
                for f in frames:
                    run(f)
                hits = lbs[-1].get_flow_cache_stats().v1
                for f in frames * 2:
                    run(f)
                if lbs[-1].get_flow_cache_stats().v1 != hits:
                    raise SystemExit("flow-cache hits on the flow-cache miss row: its cache sets are wrong")

    mode = "all feature knobs on" if args.all_features else "default knobs"
    results = run_bench(load, args, (
        f"per-packet cost ({mode}), cpu {args.cpu}, {args.reals} reals, per-cpu LRU of {args.lru_size}: "
        f"median over {args.instances} loads x {args.reps} repetitions of the median of {args.runs} "
        f"BPF_PROG_TEST_RUN calls (repeat=1, fresh packet each); (±) = half the spread"), check_hits)
    cases = select_cases(build_cases(1), args.rows)
    others = [c for c in [*names, "capture", "no-flow-cache"] if c != "balancer" and (cases[0].name, c) in results]
    if others:
        print_ratios(results, cases, others, args.reps * len(names))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "reps_per_load": args.reps, "loads": args.instances, "loads_per_cycle": len(names),
            "columns": [*others, "balancer", "empty"],
            "results": {c.name: {p: results[(c.name, p)] for p in ["balancer", *others, "empty"]} for c in cases},
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
