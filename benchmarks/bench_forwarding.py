"""Forwarding rate with live frames: the balancer beside a bare XDP_TX reflector.

BPF_PROG_TEST_RUN with ``BPF_F_TEST_XDP_LIVE_FRAMES`` on one end of a veth pair
in a fresh netns: XDP_TX really transmits (the peer end runs ``xdp_sink``, which
counts and drops what arrives; every timed run checks that all its frames
arrived, and for a balancer that its VIP counted them all; a run that lost
frames on the veth is run again, up to RETRIES times, and the count of such
runs is printed).  The kernel
reports the time per frame of the run (program + transmit + page recycling;
the time the test run spends rescheduled is not counted).

One live run repeats one frame, so every run goes through ``xdp_flows``
(benchmarks/bpf/xdp_reflect.bpf.c), which rewrites the source port to
``base + seq++ % flows`` and tail-calls the program under test: the same
driver in front of every column.  ``--clients hashed`` also rewrites the low
16 bits of the client address to a hash of the flow's number (``client_of``):
sequential ports of one client land in the flow cache's slots more evenly
than real clients do (at 10,000 flows 0.9 % of the frames miss the flow
cache, 7.5 % with hashed clients), so that is the harder, truer row.

The kernel recycles a frame's page without restoring its bytes, and an IPIP
encapsulation leaves the tail of the outer IPv4 header where the Ethernet
header was: the reals' addresses (and the
encap reflector's outer destination) end in ``.8.0`` so that the recycled
frame's ethertype is again IPv4 and the balancer does the same work on every
frame (it does not look at the MAC addresses).

Columns, in this order:

* ``reflector``: swap the MACs, XDP_TX (the ceiling on this veth);
* ``encap``: the fair ceiling of an IPIP balancer: ``bpf_xdp_adjust_head(-20)``,
  the outer Ethernet and IPv4 headers (with checksum), XDP_TX; no lookup;
* ``state``: the fair ceiling of a balancer that keeps per-flow state: ``encap``
  after one read of the flow's 64-byte line in a 1 MiB table (the size of the
  flow cache's block of one cpu, the same slot hash), its outer destination
  taken from there; nothing else.  Above 1 flow it is what one cold line per
  flow costs here, whatever else a balancer does;
* ``balancer``: the packaged balancer object;
* ``--object [NAME=]PATH`` (repeatable): another balancer object (a previous
  build, Katran's), loaded by its own KatranLb and checked like ``balancer``;
* ``--previous [NAME=]REV`` (repeatable): the balancer of git revision REV of
  this repository (``git archive`` of its katran/bpf, compiled with
  katran.build's clang command into the temporary directory: regressions),
  checked like ``balancer``; the column is NAME, else REV where it is a column
  name, else ``previous`` (``previous2``, ...: ``HEAD~3``, ``967afbf``);
* ``--probe NAME=PATH`` (repeatable): a truncated build of the balancer (it
  returns XDP_TX at some stage of the pipeline): loaded the same way, its
  frames must arrive, its VIP counter is not checked.

The programs take turns on blocks (each block one run of ``--frames`` frames
per program; the order rotates and reverses so that every program is in every
position equally often over 2 x columns blocks).  Every balancer column is
loaded ``--instances`` times (default 2; each a KatranLb of its own, created
in rounds across the columns, each round in a rotated order) and block b runs
instance b % instances: where the kernel happens to place an instance's maps
moves its time (a second load of the very same object was 25 ns a frame apart
at 10,000 flows, 10 at 100), and pairing within a block does not remove that.  The ratio to the reflector
is taken inside each block (paired): per row we print its median over the
blocks and a 95 % confidence interval (percentile bootstrap of the blocks,
numpy, seeded with ``--seed``), then the ns per frame of every column, and
with ``--probe`` the ns each step of the chain reflector > probes (in the
order given) > balancer adds (paired per block, the same way).
Rows: ``--flows`` (1, 100, 10,000; warmed into the connection table first) x
``--sizes`` (64, 1,400 bytes).  Every timed run comes right after ``--warm``
(default 1) untimed passes of the same program over the flows: the columns take
turns on one CPU, so a column's next run starts after the others' (an instance
of it after the other loads' too: ~0.7 s with 4 loads of 4 balancer columns),
with its lines out of the CPU caches and its
flow-cache slots past their refresh (64 jiffies, 256 ms at HZ 250), which a
core forwarding these flows without a pause never sees.  Without the pass the
first pass of each run refills every slot from the connection table: 5 % of
the frames of a 200,000-frame run at 10,000 flows, ~20 ns a frame more for the
balancer, ~2 at 100 flows (``--warm 0`` reproduces that; session 7's and older
tables were taken so).  Run as root:

    python benchmarks/bench_forwarding.py [--frames 200000] [--blocks 12] [--instances 2] [--cpu N]
        [--warm 1] [--clients one|hashed] [--lru-size 200000] [--object [NAME=]other.bpf.o ...]
        [--previous [NAME=]REV ...] [--probe NAME=stage.bpf.o ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from katran import KatranConfig, KatranLb, ModifyAction, Real, VipKey
from katran.adapter import bpf
from katran import build
from katran.build import compile_one
from katran.lab.netns import inside, veth_link

HERE = Path(__file__).resolve().parent
HELPERS_SRC = HERE / "bpf" / "xdp_reflect.bpf.c"
VIP, CLIENT = "10.200.1.1", "192.168.1.1"
BASE_PORT = 10000
FLOWS = (1, 100, 10_000)
SIZES = (64, 1400)
BATCH = 64  # frames per batch of the live run (the veth ring of the peer holds 256)
RETRIES = 2  # a run that lost frames on the veth is run again this many times at most
RESERVED = ("reflector", "encap", "state", "balancer")
WARM = 1  # untimed passes over the flows right before each timed run (--warm)
CLIENTS = ("one", "hashed")  # --clients: how the driver tells the flows apart (xdp_flows)
# the columns of the helper programs (benchmarks/bpf/xdp_reflect.bpf.c), loaded once
HELPER_COLUMNS = {"reflector": "xdp_reflect", "encap": "xdp_encap", "state": "xdp_state"}
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]{0,23}\Z")
CONFIDENCE = 0.95


def reals(n: int) -> list[Real]:
    # .8.0: the recycled frame's ethertype (see the module docstring)
    return [Real(f"10.{i + 1}.8.0") for i in range(n)]


def frame(size: int) -> bytes:
    head = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=CLIENT, dst=VIP) / TCP(
        sport=BASE_PORT, dport=80, flags="A")
    pad = size - len(bytes(head))
    if pad < 0:
        raise ValueError(f"frame size {size} is below the {len(bytes(head))} bytes of the headers")
    return bytes(head / (b"x" * pad))


def u32(v: int) -> bytes:
    return int(v).to_bytes(4, sys.byteorder)


def client_of(i: int) -> str:
    """The client address of flow i under ``--clients hashed``: CLIENT's first two bytes,
    then the top half of murmur3's 32-bit finalizer of i (client_word in xdp_reflect.bpf.c)."""
    m = 0xFFFFFFFF
    i ^= i >> 16
    i = (i * 0x85EBCA6B) & m
    i ^= i >> 13
    i = (i * 0xC2B2AE35) & m
    i ^= i >> 16
    word = i >> 16
    a, b = CLIENT.split(".")[:2]
    return f"{a}.{b}.{word >> 8}.{word & 0xFF}"


def _show(value: str, limit: int = 60) -> str:
    """A value for an error message: truncated, ASCII-safe."""
    return ascii(value if len(value) <= limit else value[:limit] + "...")


# --- the command line --------------------------------------------------------------------

@dataclass(frozen=True)
class ObjectArg:
    name: str
    path: Path | None  # None: a --previous column before its revision is built
    rev: str = ""      # --previous: the git revision to build


# a git revision --previous takes (as bench_packets.py's, no leading "-")
REV_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~^@{}/-]{0,39}\Z")


def _previous_arg(value: str) -> ObjectArg:
    """--previous [NAME=]REV: the column is NAME, else REV where it is a column name."""
    name, sep, rev = value.partition("=")
    if not sep:
        name, rev = "", value
    elif not NAME_RE.match(name):
        raise argparse.ArgumentTypeError(
            f"bad column name {_show(name)} in {_show(value)} (a letter, then up to 23 of [A-Za-z0-9_.+-])")
    if not REV_RE.match(rev):
        raise argparse.ArgumentTypeError(
            f"bad revision {_show(rev)}: 1-40 letters, digits, ._~^@{{}}/-, not starting with -")
    if not name and NAME_RE.match(rev):
        name = rev
    return ObjectArg(name, None, rev)  # no name: column previous, previous2, ...


def build_previous(columns: list[tuple[str, ObjectArg | None, bool]], out_dir: Path,
                   repo: Path = HERE.parent) -> list[tuple[str, ObjectArg | None, bool]]:
    """The columns with every --previous revision built into out_dir (katran.build's
    build_revision); build.BuildError names the revision and what failed."""
    built = []
    for i, (name, obj, check) in enumerate(columns):
        if obj is not None and obj.path is None:
            path = build.build_revision(obj.rev, out_dir / f"previous{i}", repo,
                                        what=f"--previous {_show(obj.rev)}")
            obj = ObjectArg(name, path, obj.rev)
        built.append((name, obj, check))
    return built


def _object_arg(option: str, need_name: bool):
    def parse(value: str) -> ObjectArg:
        name, sep, path = value.partition("=")
        if not sep or not NAME_RE.match(name):
            if need_name:
                raise argparse.ArgumentTypeError(
                    f"expected NAME=PATH (NAME: a letter, then up to 23 of [A-Za-z0-9_.+-]), "
                    f"got {_show(value)}")
            name, path = "", value
        if not path:
            raise argparse.ArgumentTypeError(f"no path in {_show(value)}")
        p = Path(path)
        if not p.is_file():
            raise argparse.ArgumentTypeError(f"no such file: {_show(path)}")
        return ObjectArg(name, p)

    return parse


def _int_list(option: str, lo: int, hi: int):
    def parse(value: str) -> tuple[int, ...]:
        out = []
        for word in value.split(","):
            try:
                v = int(word)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not an integer: {_show(word)}") from None
            if not lo <= v <= hi:
                raise argparse.ArgumentTypeError(f"{v} is outside {lo}..{hi}")
            out.append(v)
        if len(set(out)) != len(out):
            raise argparse.ArgumentTypeError(f"a value repeats in {_show(value)}")
        return tuple(out)

    return parse


def _positive(option: str, lo: int = 1):
    def parse(value: str) -> int:
        try:
            v = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {_show(value)}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} is below {lo}")
        return v

    return parse


def column_names(objects: Sequence[ObjectArg], probes: Sequence[ObjectArg],
                 previous: Sequence[ObjectArg] = ()) -> list[tuple[str, ObjectArg | None, bool]]:
    """[(column, object or None, VIP counter checked)]: the reflectors, the balancer, the
    --object columns (unnamed ones: object, object2, ...), the --previous columns and the
    --probe columns. A repeated or reserved name is a ValueError naming it."""
    cols: list[tuple[str, ObjectArg | None, bool]] = [(n, None, False) for n in HELPER_COLUMNS]
    cols.append(("balancer", None, True))
    unnamed = {"--object": 0, "--previous": 0}
    for option, items, checked in (("--object", objects, True), ("--previous", previous, True),
                                   ("--probe", probes, False)):
        for o in items:
            name = o.name
            if not name:
                unnamed[option] += 1
                base = option.lstrip("-")
                name = base if unnamed[option] == 1 else f"{base}{unnamed[option]}"
            if name in RESERVED:
                raise ValueError(f"{option}: the name {_show(name)} is reserved ({', '.join(RESERVED)})")
            if any(name == c for c, _, _ in cols):
                raise ValueError(f"{option}: the name {_show(name)} is given twice")
            cols.append((name, o, checked))
    return cols


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=_positive("--frames", BATCH), default=200_000,
                    help="frames per live run (one block of one program)")
    ap.add_argument("--blocks", type=_positive("--blocks", 2), default=12, help="paired blocks per cell")
    ap.add_argument("--instances", type=_positive("--instances"), default=2,
                    help="loads of each balancer column, taking the blocks in turn")
    ap.add_argument("--warm", type=_positive("--warm", 0), default=WARM,
                    help="untimed passes over the flows right before every timed run (0: none)")
    ap.add_argument("--clients", choices=CLIENTS, default=CLIENTS[0],
                    help="one: every flow from CLIENT, sequential source ports; hashed: also the "
                         "low 16 bits of the client address hashed from the flow's number")
    ap.add_argument("--reals", type=_positive("--reals"), default=100)
    ap.add_argument("--lru-size", type=_positive("--lru-size"), default=200_000,
                    help="connection-table entries of the forwarding core")
    ap.add_argument("--flows", type=_int_list("--flows", 1, 60_000), default=FLOWS,
                    help="comma-separated flow counts (rows)")
    ap.add_argument("--sizes", type=_int_list("--sizes", 54, 3000), default=SIZES,
                    help="comma-separated frame sizes in bytes (rows)")
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last one)")
    ap.add_argument("--object", action="append", default=[], type=_object_arg("--object", False),
                    metavar="[NAME=]PATH",
                    help="another balancer object to time beside the packaged one (repeatable)")
    ap.add_argument("--previous", action="append", default=[], type=_previous_arg, metavar="[NAME=]REV",
                    help="build the balancer of git revision REV of this repository and time it as "
                         "column REV (or NAME): regressions (repeatable)")
    ap.add_argument("--probe", action="append", default=[], type=_object_arg("--probe", True),
                    metavar="NAME=PATH",
                    help="a truncated balancer build: timed, its VIP counter not checked (repeatable)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the bootstrap")
    ap.add_argument("--resamples", type=_positive("--resamples", 100), default=10_000,
                    help="bootstrap resamples")
    ap.add_argument("--json", type=Path, default=None,
                    help="also write every block's ns per frame and the summary here")
    args = ap.parse_args(argv)
    try:
        args.columns = column_names(args.object, args.probe, args.previous)
    except ValueError as exc:
        ap.error(str(exc))
    return args


# --- statistics ----------------------------------------------------------------------------

def block_orders(names: Sequence[str], blocks: int) -> list[list[str]]:
    """The order of the programs in each block: rotations, every other round reversed, so
    that over 2 x len(names) blocks every program runs in every position twice, before
    and after each of the others equally often."""
    n = len(names)
    out = []
    for b in range(blocks):
        r = b % n
        order = list(names[r:]) + list(names[:r])
        out.append(order[::-1] if (b // n) % 2 else order)
    return out


def median_ci(xs: Sequence[float], rng: np.random.Generator, resamples: int,
              confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(median, low, high): the median of xs and its percentile-bootstrap confidence interval
    (resampling the blocks with replacement)."""
    a = np.asarray(xs, dtype=float)
    if a.size == 0:
        raise ValueError("no blocks to summarize")
    idx = rng.integers(0, a.size, size=(resamples, a.size))
    meds = np.median(a[idx], axis=1)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(meds, [tail, 100 - tail])
    return float(np.median(a)), float(lo), float(hi)


def summarize(cell: dict[str, list[float]], seed: int, resamples: int, key: Sequence[int] = ()) -> dict:
    """{column: {"ns": (median, lo, hi), "mpps": median, "ratio": (median, lo, hi) or None}}
    from one cell's ns per frame per block; ratio = the paired per-block ratio of the column's
    rate to the reflector's.  The bootstrap of each column is seeded by (seed, *key, column#)."""
    ref = np.asarray(cell["reflector"], dtype=float)
    out = {}
    for i, (name, ns) in enumerate(cell.items()):
        ns = np.asarray(ns, dtype=float)
        if ns.shape != ref.shape:
            raise ValueError(f"column {name}: {ns.size} blocks, the reflector has {ref.size}")
        rng = np.random.default_rng([seed, *key, i])
        entry = {"ns": median_ci(ns, rng, resamples), "mpps": float(np.median(1e3 / ns)), "ratio": None}
        if name != "reflector":
            entry["ratio"] = median_ci(ref / ns, rng, resamples)
        out[name] = entry
    return out


def step_chain(args) -> list[str]:
    """The stage chain of --probe: reflector, the probes in the order given, balancer
    (empty without probes)."""
    probes = [name for name, o, checked in args.columns if o is not None and not checked]
    return ["reflector", *probes, "balancer"] if probes else []


def steps(cell: dict[str, list[float]], chain: Sequence[str], seed: int, resamples: int,
          key: Sequence[int] = ()) -> dict:
    """{column: (median, lo, hi)}: the ns per frame each column of `chain` adds to the one
    before it, paired per block (the per-block difference, its median and bootstrap CI)."""
    out = {}
    for i, (prev, name) in enumerate(zip(chain, chain[1:])):
        diff = np.asarray(cell[name], dtype=float) - np.asarray(cell[prev], dtype=float)
        out[name] = median_ci(diff, np.random.default_rng([seed, *key, 1000 + i]), resamples)
    return out


# --- the rig -------------------------------------------------------------------------------

class Rig:
    """The veth pair, the helper programs, and the balancer(s) under test."""

    def __init__(self, link, helpers: bpf.LoadedObject, cpu: int, clients: str = CLIENTS[0]) -> None:
        self.link, self.helpers, self.cpu = link, helpers, cpu
        self.driver = helpers.program("xdp_flows")
        self.target = helpers.map("target")
        self.cfg = helpers.map("flow_cfg")
        self.cfg.update(u32(3), u32(CLIENTS.index(clients)))
        self.sink = helpers.map("sink_count")
        self.attempts = 0  # live runs the last run() took
        self.repeated = 0  # runs repeated because frames were lost on the way to the peer

    def sink_count(self) -> int:
        v = self.sink.lookup(u32(0))
        return int.from_bytes(bytes(v), sys.byteorder)

    def run(self, prog: bpf.Program, data: bytes, flows: int, frames: int, name: str = "") -> float:
        """One live run of `frames` frames over `flows` flows through `prog`: ns per frame.

        A run some of whose frames did not reach the peer is run again, up to RETRIES times
        (the peer's veth ring overflows when the kernel defers its NAPI poll to ksoftirqd:
        a few % of one run's frames, now and then; self.attempts says how many runs it took)."""
        self.target.update(u32(0), u32(prog.fd))
        self.cfg.update(u32(0), u32(flows))
        self.cfg.update(u32(1), u32(BASE_PORT))
        for attempt in range(1, RETRIES + 2):
            self.cfg.update(u32(2), u32(0))
            before = self.sink_count()
            res = self.driver.test_run_live(data, self.link.a.ifindex, repeat=frames, batch_size=BATCH)
            arrived = self.sink_count() - before
            self.attempts = attempt
            if arrived == frames:
                return float(res.duration_ns)
            self.repeated += 1
        raise SystemExit(f"{name or prog.name}: {arrived} of {frames} frames arrived on the peer "
                         f"({RETRIES + 1} runs)")


def make_lb(cpu: int, n_reals: int, obj: Path | None, lru_size: int) -> KatranLb:
    cfg = KatranConfig(testing=True, default_mac="02:00:00:00:00:02", forwarding_cores=(cpu,),
                       lru_size=lru_size, katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337",
                       balancer_prog_path=str(obj) if obj else None)
    lb = KatranLb(cfg)
    lb.start()
    try:
        lb.add_vip(VipKey(VIP, 80, "tcp"))
        lb.modify_reals_for_vip(ModifyAction.ADD, reals(n_reals), VipKey(VIP, 80, "tcp"))
    except Exception:
        lb.close()
        raise
    return lb


def warm_frames(flows: int) -> int:
    """Frames of one untimed pass (--warm) over `flows` flows: every flow once, and at least
    four batches."""
    return max(flows, BATCH * 4)


def measure(rig: Rig, progs: dict[str, list[bpf.Program]], checked: dict[str, list[KatranLb]], args,
            cache: dict | None = None) -> dict:
    """{(flows, size): {column: [ns per frame of each block]}}; progs: each column's loaded
    instances (block b runs instance b % their number); `checked`: the instances of the
    columns whose VIP must count every frame of every timed run. Each timed run comes right
    after args.warm untimed passes of the same program over the flows. `cache` gets
    {(flows, size): (hits, fills, frames)} of the balancer's flow cache over the timed runs
    only (frames: what the balancer column ran, repeated runs included)."""
    out: dict = {}
    names = list(progs)
    vip = VipKey(VIP, 80, "tcp")
    orders = block_orders(names, args.blocks)
    for flows in args.flows:
        for size in args.sizes:
            data = frame(size)
            for name, insts in progs.items():  # warm the connection tables, caches
                for prog in insts:
                    rig.run(prog, data, flows, max(2 * flows, BATCH * 4), name)
            cell: dict[str, list[float]] = {n: [] for n in names}
            hits = fills = fc_frames = 0
            for block, order in enumerate(orders):
                for name in order:
                    lbs = checked.get(name)
                    lb = lbs[block % len(lbs)] if lbs else None
                    prog = progs[name][block % len(progs[name])]
                    for _ in range(args.warm):
                        rig.run(prog, data, flows, warm_frames(flows), name)
                    # every checked column reads its VIP and flow-cache counters around its
                    # timed run, so that no column pays a read the others do not
                    before = (lb.get_stats_for_vip(vip).v1, lb.get_flow_cache_stats()) if lb else None
                    cell[name].append(rig.run(prog, data, flows, args.frames, name))
                    if lb is None:
                        continue
                    frames = args.frames * rig.attempts  # a repeated run counts again
                    counted, fc = lb.get_stats_for_vip(vip).v1 - before[0], lb.get_flow_cache_stats()
                    if counted != frames:
                        raise SystemExit(f"{name}: the VIP counted {counted} of {frames} frames")
                    if name == "balancer":
                        hits += fc.v1 - before[1].v1
                        fills += fc.v2 - before[1].v2
                        fc_frames += frames
            if cache is not None and fc_frames:
                cache[(flows, size)] = (hits, fills, fc_frames)
            out[(flows, size)] = cell
    return out


# --- output --------------------------------------------------------------------------------

def _ratio(r: tuple[float, float, float]) -> str:
    return f"{r[0]:.2f} [{r[1]:.2f}-{r[2]:.2f}]"


def print_table(summaries: dict, names: list[str], args, step_sums: dict | None = None,
                cache: dict | None = None) -> None:
    print(f"forwarding with live frames (XDP_TX on a veth, peer counts and drops), cpu {args.cpu}, "
          f"{args.reals} reals, lru {args.lru_size}; per cell {args.blocks} paired blocks of "
          f"{args.frames} frames per program, {args.instances} loads of each balancer in turn, "
          f"{args.warm} untimed passes before each, clients: {args.clients}")
    print(f"Mpps: median over the blocks; / reflector: the per-block ratio, median "
          f"[{CONFIDENCE:.0%} CI, bootstrap of the blocks, seed {args.seed}]")
    cols = [n for n in names if n != "reflector"]
    head = f"{'flows':>6} {'bytes':>5} {'reflector':>9}"
    head2 = f"{'':>6} {'':>5} {'Mpps':>9}"
    for c in cols:
        head += f"  {c:<24}"
        head2 += f"  {'Mpps':>6} {'/ reflector':<17}"
    print(head.rstrip())
    print(head2.rstrip())
    for (flows, size), s in summaries.items():
        line = f"{flows:>6} {size:>5} {s['reflector']['mpps']:>9.2f}"
        for c in cols:
            line += f"  {s[c]['mpps']:>6.2f} {_ratio(s[c]['ratio']):<17}"
        print(line.rstrip())
    print()
    print(f"ns per frame: median [{CONFIDENCE:.0%} CI]")
    head = f"{'flows':>6} {'bytes':>5}"
    for c in names:
        head += f"  {c:>18}"
    print(head)
    for (flows, size), s in summaries.items():
        line = f"{flows:>6} {size:>5}"
        for c in names:
            m, lo, hi = s[c]["ns"]
            line += f"  {f'{m:.1f} [{lo:.1f}-{hi:.1f}]':>18}"
        print(line)
    chain = step_chain(args)
    if chain and step_sums:
        print()
        print(f"ns per frame each step adds to the one before it ({' > '.join(chain)}): "
              f"paired per block, median [{CONFIDENCE:.0%} CI]")
        head = f"{'flows':>6} {'bytes':>5}"
        for c in chain[1:]:
            head += f"  {'+' + c:>18}"
        print(head)
        for (flows, size), s in step_sums.items():
            line = f"{flows:>6} {size:>5}"
            for c in chain[1:]:
                m, lo, hi = s[c]
                line += f"  {f'{m:.1f} [{lo:.1f}-{hi:.1f}]':>18}"
            print(line)
    if cache:
        print()
        print("the balancer's flow cache over the timed runs: packets routed from it (hits), slots filled,"
              " packets kept out (every way of the set in use)")
        for (flows, size), (hits, fills, total) in cache.items():
            out = total - hits - fills
            print(f"{flows:>6} {size:>5}  hits {hits / total:6.1%}  fills {fills / total:6.1%}"
                  f"  kept out {out / total:6.1%}")


def write_json(path: Path, results: dict, summaries: dict, step_sums: dict, args) -> None:
    doc = {
        "frames": args.frames, "blocks": args.blocks, "instances": args.instances, "reals": args.reals,
        "lru_size": args.lru_size, "warm": args.warm, "clients": args.clients,
        "cpu": args.cpu, "seed": args.seed, "resamples": args.resamples,
        "columns": {name: (str(o.path) if o else None) for name, o, _ in args.columns},
        "steps": step_chain(args),
        "cells": [{"flows": f, "bytes": b, "ns": results[(f, b)], "summary": summaries[(f, b)],
                   "steps": step_sums[(f, b)]} for f, b in results],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    from bench_packets import pin_cpu

    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="katran-bench-")))
        try:  # before pinning and loading: a revision that does not build fails at once
            args.columns = build_previous(args.columns, tmp)
        except build.BuildError as exc:
            print(f"bench_forwarding: error: {exc}", file=sys.stderr)
            return 2
        args.cpu = pin_cpu(args.cpu)
        helpers = bpf.load_object(compile_one(HELPERS_SRC, tmp))
        stack.callback(helpers.close)
        link = stack.enter_context(veth_link("kbf"))
        with inside(link.b.netns):
            helpers.program("xdp_sink").attach_xdp(link.b.ifindex)
        progs = {name: [helpers.program(prog)] for name, prog in HELPER_COLUMNS.items()}
        checked: dict[str, list[KatranLb]] = {}
        balancers = [c for c in args.columns if c[0] not in HELPER_COLUMNS]
        for r in range(args.instances):  # in rounds, each rotated: no column always loads first
            for name, obj, check in balancers[r % len(balancers):] + balancers[:r % len(balancers)]:
                lb = make_lb(args.cpu, args.reals, obj.path if obj else None, args.lru_size)
                stack.callback(lb.close)
                progs.setdefault(name, []).append(lb._obj.program("balancer_ingress"))
                if check:
                    checked.setdefault(name, []).append(lb)
        rig = Rig(link, helpers, args.cpu, args.clients)
        with inside(link.a.netns):  # the live run finds the ifindex in the caller's netns
            cache: dict = {}
            results = measure(rig, progs, checked, args, cache)
        summaries = {k: summarize(cell, args.seed, args.resamples, k) for k, cell in results.items()}
        step_sums = {k: steps(cell, step_chain(args), args.seed, args.resamples, k) for k, cell in results.items()}
        print_table(summaries, list(progs), args, step_sums, cache)
        if rig.repeated:
            print(f"\n{rig.repeated} live runs repeated: frames were lost on the veth (see Rig.run)")
        if args.json:
            write_json(args.json, results, summaries, step_sums, args)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
