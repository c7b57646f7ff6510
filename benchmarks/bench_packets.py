"""Per-packet cost of the balancer, beside an empty XDP program timed the same way.

Every measurement is one BPF_PROG_TEST_RUN call with repeat=1 on a freshly
copied packet (the kernel copies data_in on every call), so a program that
rewrites the packet never sees its own output.  The kernel reports the time
spent in the program run (ns).  A cell is the median over ``--runs`` calls;
the programs of a row take turns on blocks of frames (every order equally
often), so a shared machine's drift hits them alike.  The whole table is
measured ``--reps`` times on each of ``--instances`` fresh loads (where the
maps land in memory moves timings by tens of ns), after a warm-up.  We print
the median over all of these, half their spread, and the cost above the
empty program.  The process is pinned to one CPU, which alone has a
per-cpu connection table (``--lru-size``, large enough that the warmed
flows really hit: this is checked).  Run as root:

    python benchmarks/bench_packets.py [--runs 4000] [--reps 3] [--instances 3] [--cpu 1]
                                       [--all-features] [--object other_balancer.bpf.o]
                                       [--compare before_balancer.bpf.o] [--capture]

``--all-features`` enables every data-plane feature knob at load time
(TPR, UDP stable routing, source routing, global LRU, local delivery, ICMP
too-big, inline IPIP/GUE decap, strict decap destination) while the VIPs
and packets use none of them; encapsulation stays IPIP (GUE would change
the packet).  The functions are importable so other programs can be timed
in the same table: ``run_bench(factory, args, title)``.  ``--capture`` adds
a column for the balancer with a packet capture running whose filter matches
none of the packets (the capture-on cost; capture off is the plain column).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence

import attrs
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from katran import KatranConfig, KatranLb, ModifyAction, Real, VipKey
from katran.adapter import bpf
from katran.lb import packaged_object

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


def tcp4(sport: int, flags: str = "A") -> bytes:
    return bytes(ETH / IP(src=CLIENT_V4, dst=VIP_V4) / TCP(sport=sport, dport=80, flags=flags) / PAYLOAD)


def tcp6(sport: int, flags: str = "A") -> bytes:
    return bytes(ETH / IPv6(src=CLIENT_V6, dst=VIP_V6) / TCP(sport=sport, dport=80, flags=flags) / PAYLOAD)


def udp4(sport: int) -> bytes:
    return bytes(ETH / IP(src=CLIENT_V4, dst=VIP_V4) / UDP(sport=sport, dport=80) / PAYLOAD)


def non_vip(sport: int) -> bytes:
    return bytes(ETH / IP(src=CLIENT_V4, dst=NON_VIP_V4) / TCP(sport=sport, dport=80, flags="A") / PAYLOAD)


@attrs.frozen
class Case:
    """One row of the table: the frames timed, in order."""

    name: str
    frames: list[bytes]


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
    return [mk(p) for p in LRU_FLOWS for mk in (tcp4, tcp6, udp4)]


def build_cases(runs: int) -> list[Case]:
    flows = LRU_FLOWS
    return [
        Case("TCP ACK, LRU hit, v4", [tcp4(flows[i % len(flows)]) for i in range(runs)]),
        Case("TCP ACK, LRU hit, v6", [tcp6(flows[i % len(flows)]) for i in range(runs)]),
        Case("UDP, LRU hit, v4", [udp4(flows[i % len(flows)]) for i in range(runs)]),
        Case("TCP SYN, new flow, v4", [tcp4(20000 + (i % 40000), "S") for i in range(runs)]),
        Case("non-VIP, XDP_PASS", [non_vip(20000 + (i % 40000)) for i in range(runs)]),
    ]


def durations_ns(prog: bpf.Program, frames: Sequence[bytes]) -> list[int]:
    return [prog.test_run(f).duration_ns for f in frames]


def measure(progs: Mapping[str, bpf.Program], cases: Sequence[Case], reps: int,
            warmup: int = 500, block: int = 1000) -> dict[tuple[str, str], list[float]]:
    """Per (case, program): the median ns of each repetition.

    Within a repetition the programs of a row take turns on blocks of `block`
    frames, so drift of a shared machine hits them alike; each program sees
    all the frames of the row.  The turn order cycles through every
    permutation, so each program follows each other one equally often (what
    ran just before leaves the caches in a state that biases the timing).
    """
    out: dict[tuple[str, str], list[float]] = {(c.name, p): [] for c in cases for p in progs}
    names = list(progs)
    orders = list(itertools.permutations(names))
    for rep in range(reps):
        for case in cases:
            if rep == 0 and warmup:
                for p in names:
                    durations_ns(progs[p], case.frames[:warmup])  # caches, branch predictors
            times: dict[str, list[int]] = {p: [] for p in names}
            for i, start in enumerate(range(0, len(case.frames), block)):
                chunk = case.frames[start:start + block]
                for p in orders[i % len(orders)]:
                    times[p] += durations_ns(progs[p], chunk)
            for p in names:
                out[(case.name, p)].append(statistics.median(times[p]))
    return out


def verdict_of(prog: bpf.Program, frame: bytes) -> str:
    return bpf_verdict(prog.test_run(frame).retval)


def bpf_verdict(retval: int) -> str:
    return {0: "ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "REDIRECT"}.get(retval, str(retval))


def print_table(title: str, cases: Sequence[Case], results: Mapping[tuple[str, str], list[float]],
                columns: Sequence[str], verdicts: Mapping[tuple[str, str], str], empty: str = "empty") -> None:
    """One line per case: each program's median (spread) and its cost above `empty`."""
    print(title)
    head = f"{'packet':<24}" + "".join(f" {c + ' ns':>16} {'above empty':>11}" for c in columns if c != empty)
    head += f" {'empty ns':>14}  verdicts"
    print(head)
    for case in cases:
        base = statistics.median(results[(case.name, empty)])
        line = f"{case.name:<24}"
        for c in columns:
            if c == empty:
                continue
            meds = results[(case.name, c)]
            med = statistics.median(meds)
            line += f" {med:>8.0f} (±{(max(meds) - min(meds)) / 2:>3.0f}) {med - base:>11.0f}"
        e = results[(case.name, empty)]
        line += f" {base:>6.0f} (±{(max(e) - min(e)) / 2:>3.0f})  "
        line += " ".join(verdicts[(case.name, c)] for c in columns if c != empty)
        print(line)


def make_lb(cpu: int, n_reals: int, all_features: bool, lru_size: int,
            balancer_obj: str | None = None) -> KatranLb:
    """A started KatranLb with the benchmark VIPs; its per-cpu LRU is on `cpu` only."""
    knobs = {k: True for k in FEATURE_KNOBS} if all_features else {}
    cfg = KatranConfig(
        testing=True, default_mac="00:00:de:ad:be:af", forwarding_cores=(cpu,), lru_size=lru_size,
        katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337", balancer_prog_path=balancer_obj, **knobs,
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
    each warmed (connection table) and timed `args.reps` times.
    """
    cases = build_cases(args.runs)
    results: dict[tuple[str, str], list[float]] = {}
    verdicts: dict[tuple[str, str], str] = {}
    columns: list[str] = []
    rng = random.Random(args.seed)
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
            for key, meds in measure(progs, cases, args.reps, block=args.block).items():
                results.setdefault(key, []).extend(meds)
        finally:
            close()
            for s in spacers:
                s.close()
    print_table(title, cases, results, columns, verdicts)
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4000, help="packets per cell and repetition")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the whole table per load")
    ap.add_argument("--instances", type=int, default=3, help="fresh loads of the programs")
    ap.add_argument("--block", type=int, default=1000, help="frames a program runs before the next takes a turn")
    ap.add_argument("--reals", type=int, default=100)
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last one)")
    ap.add_argument("--lru-size", type=int, default=200_000, help="size of the per-cpu connection table")
    ap.add_argument("--seed", type=int, default=1, help="seed of the placement spacers")
    ap.add_argument("--object", default=None, help="balancer object to time (default: the packaged one)")
    ap.add_argument("--compare", default=None, metavar="OBJECT",
                    help="a second balancer object (e.g. our previous release's) timed in the same table, "
                         "paired; prints its cost above empty as a ratio to the balancer's")
    ap.add_argument("--all-features", action="store_true", help="every feature knob on, unused by the packets")
    ap.add_argument("--capture", action="store_true",
                    help="also time the balancer with a packet capture running whose filter matches "
                         "none of the packets (column 'capture')")
    return ap.parse_args(argv)


def pin_cpu(cpu: int | None) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[-1] if cpu is None else cpu
    os.sched_setaffinity(0, {cpu})
    return cpu


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.cpu = pin_cpu(args.cpu)

    lbs: list[KatranLb] = []

    loads = itertools.count()

    def load() -> tuple[dict[str, bpf.Program], Callable[[], None]]:
        # with --compare the two balancers are loaded in turns first and second
        # (what is loaded first lands elsewhere in memory and times differently)
        objs = {"balancer": args.object}
        if args.compare:
            objs["compare"] = args.compare
        order = list(objs) if next(loads) % 2 == 0 else list(reversed(objs))
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
        except BaseException:
            stack.close()
            raise
        lb = loaded["balancer"]
        lbs.append(lb)
        stack.callback(lbs.remove, lb)
        # the benchmark times the loaded programs themselves
        progs = {name: loaded[name]._obj.program("balancer_ingress") for name in loaded}
        progs["empty"] = empty_obj.program("xdp_pass")
        return progs, stack.close

    def check_hits(progs: dict[str, bpf.Program], cases: list[Case]) -> None:
        # the "LRU hit" rows must really hit: a connection table too small for the
        # warmed flows would time the new-flow path instead
        before = lbs[-1].get_lru_stats().v2
        for case in cases:
            if "LRU hit" in case.name:
                for f in case.frames[: len(LRU_FLOWS)]:
                    progs["balancer"].test_run(f)
        misses = lbs[-1].get_lru_stats().v2 - before
        if misses:
            raise SystemExit(f"{misses} connection-table misses on the LRU-hit rows: raise --lru-size")

    mode = "all feature knobs on" if args.all_features else "default knobs"
    results = run_bench(load, args, (
        f"per-packet cost ({mode}), cpu {args.cpu}, {args.reals} reals, per-cpu LRU of {args.lru_size}: "
        f"median over {args.instances} loads x {args.reps} repetitions of the median of {args.runs} "
        f"BPF_PROG_TEST_RUN calls (repeat=1, fresh packet each); (±) = half the spread"), check_hits)
    if args.compare:
        print_ratios(results, build_cases(1))
    return 0


def print_ratios(results: Mapping[tuple[str, str], list[float]], cases: Sequence[Case]) -> None:
    """Per row: compare's cost above empty / the balancer's, paired per repetition (same load,
    same block order): median and the range over the repetitions."""
    print(f"{'packet':<24} {'compare / balancer (above empty)':>34}")
    for case in cases:
        b = results[(case.name, "balancer")]
        c = results[(case.name, "compare")]
        e = results[(case.name, "empty")]
        ratios = [(ci - ei) / (bi - ei) for bi, ci, ei in zip(b, c, e) if bi - ei > 0]
        if not ratios:
            print(f"{case.name:<24} {'n/a':>34}")
            continue
        print(f"{case.name:<24} {statistics.median(ratios):>20.2f} [{min(ratios):.2f} .. {max(ratios):.2f}]")


if __name__ == "__main__":
    sys.exit(main())
