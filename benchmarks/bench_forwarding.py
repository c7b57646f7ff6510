"""Forwarding rate with live frames: the balancer beside a bare XDP_TX reflector.

BPF_PROG_TEST_RUN with ``BPF_F_TEST_XDP_LIVE_FRAMES`` on one end of a veth pair
in a fresh netns: XDP_TX really transmits (the peer end runs ``xdp_sink``, which
counts and drops what arrives; every timed run checks that all its frames
arrived, and for the balancer that its VIP counted them all).  The kernel
reports the time per frame of the run (program + transmit + page recycling);
we print frames per second.

One live run repeats one frame, so every run goes through ``xdp_flows``
(benchmarks/bpf/xdp_reflect.bpf.c), which rewrites the source port to
``base + seq++ % flows`` and tail-calls the program under test: the same
driver in front of every column.  The kernel recycles a frame's page without
restoring its bytes, and an IPIP encapsulation leaves the tail of the outer
IPv4 header where the Ethernet header was: the reals' addresses end in
``.8.0`` so that the recycled frame's ethertype is again IPv4 and the balancer
does the same work on every frame (it does not look at the MAC addresses).

Columns: the packaged balancer, the reflector (the ceiling on this veth), and
``--object`` (a second balancer object, e.g. a previous build) when given.
The programs take turns on blocks (every order equally often, one run of
``--frames`` frames each); the ratio to the reflector is taken inside each
block (paired) and we print its median and half its spread over the blocks.
Rows: 1, 100 and 10,000 flows (warmed into the connection table first) x 64-
and 1,400-byte frames.  Run as root:

    python benchmarks/bench_forwarding.py [--frames 200000] [--blocks 6] [--cpu N] [--object other.bpf.o]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from katran import KatranConfig, KatranLb, ModifyAction, Real, VipKey
from katran.adapter import bpf
from katran.lab.netns import inside, veth_link
from katran.build import compile_one

HERE = Path(__file__).resolve().parent
HELPERS_SRC = HERE / "bpf" / "xdp_reflect.bpf.c"
VIP, CLIENT = "10.200.1.1", "192.168.1.1"
BASE_PORT = 10000
FLOWS = (1, 100, 10_000)
SIZES = (64, 1400)
BATCH = 64  # frames per batch of the live run (the veth ring of the peer holds 256)


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


class Rig:
    """The veth pair, the helper programs, and the balancer(s) under test."""

    def __init__(self, link, helpers: bpf.LoadedObject, cpu: int) -> None:
        self.link, self.helpers, self.cpu = link, helpers, cpu
        self.driver = helpers.program("xdp_flows")
        self.target = helpers.map("target")
        self.cfg = helpers.map("flow_cfg")
        self.sink = helpers.map("sink_count")

    def sink_count(self) -> int:
        v = self.sink.lookup(u32(0))
        return int.from_bytes(bytes(v), sys.byteorder)

    def run(self, prog: bpf.Program, data: bytes, flows: int, frames: int) -> float:
        """One live run of `frames` frames over `flows` flows through `prog`: ns per frame."""
        self.target.update(u32(0), u32(prog.fd))
        self.cfg.update(u32(0), u32(flows))
        self.cfg.update(u32(1), u32(BASE_PORT))
        self.cfg.update(u32(2), u32(0))
        before = self.sink_count()
        res = self.driver.test_run_live(data, self.link.a.ifindex, repeat=frames, batch_size=BATCH)
        arrived = self.sink_count() - before
        if arrived != frames:
            raise SystemExit(f"{prog.name}: {arrived} of {frames} frames arrived on the peer")
        return float(res.duration_ns)


def make_lb(cpu: int, n_reals: int, obj: str | None) -> KatranLb:
    cfg = KatranConfig(testing=True, default_mac="02:00:00:00:00:02", forwarding_cores=(cpu,),
                       lru_size=200_000, katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337",
                       balancer_prog_path=obj)
    lb = KatranLb(cfg)
    lb.start()
    try:
        lb.add_vip(VipKey(VIP, 80, "tcp"))
        lb.modify_reals_for_vip(ModifyAction.ADD, reals(n_reals), VipKey(VIP, 80, "tcp"))
    except Exception:
        lb.close()
        raise
    return lb


def measure(rig: Rig, progs: dict[str, bpf.Program], lbs: dict[str, KatranLb], args) -> dict:
    """{(flows, size): {column: [ns per frame of each block]}}"""
    out: dict = {}
    names = list(progs)
    orders = list(itertools.permutations(names))
    vip = VipKey(VIP, 80, "tcp")
    for flows in FLOWS:
        for size in SIZES:
            data = frame(size)
            for name, prog in progs.items():  # warm the connection tables, caches
                rig.run(prog, data, flows, max(2 * flows, BATCH * 4))
            cell = {n: [] for n in names}
            for b in range(args.blocks):
                for name in orders[b % len(orders)]:
                    lb = lbs.get(name)
                    before = lb.get_stats_for_vip(vip).v1 if lb else 0
                    cell[name].append(rig.run(progs[name], data, flows, args.frames))
                    if lb is not None:
                        counted = lb.get_stats_for_vip(vip).v1 - before
                        if counted != args.frames:
                            raise SystemExit(f"{name}: the VIP counted {counted} of {args.frames} frames")
            out[(flows, size)] = cell
    return out


def half_spread(xs: Sequence[float]) -> float:
    return (max(xs) - min(xs)) / 2


def print_table(results: dict, names: list[str], args) -> None:
    print(f"forwarding with live frames (XDP_TX on a veth, peer counts and drops), cpu {args.cpu}, "
          f"{args.reals} reals; per cell {args.blocks} paired blocks of {args.frames} frames per program; "
          f"Mpps = median (± half the spread); ratio = per-block ratio to the reflector, median (± half spread)")
    cols = [n for n in names if n != "reflector"]
    head = f"{'flows':>6} {'bytes':>5} {'reflector Mpps':>16}"
    for c in cols:
        head += f" {c + ' Mpps':>18} {'/ reflector':>15}"
    print(head)
    for (flows, size), cell in results.items():
        mpps = {n: [1e3 / ns for ns in cell[n]] for n in names}
        line = f"{flows:>6} {size:>5} {statistics.median(mpps['reflector']):>8.3f} (±{half_spread(mpps['reflector']):.3f})"
        for c in cols:
            ratios = [a / r for a, r in zip(mpps[c], mpps["reflector"])]
            line += (f" {statistics.median(mpps[c]):>10.3f} (±{half_spread(mpps[c]):.3f})"
                     f" {statistics.median(ratios):>7.2f} (±{half_spread(ratios):.2f})")
        print(line)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200_000, help="frames per live run (one block of one program)")
    ap.add_argument("--blocks", type=int, default=6, help="paired blocks per cell")
    ap.add_argument("--reals", type=int, default=100)
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last one)")
    ap.add_argument("--object", default=None, help="a second balancer object to time beside the packaged one")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from bench_packets import pin_cpu

    args = parse_args(argv)
    args.cpu = pin_cpu(args.cpu)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="katran-bench-")))
        helpers = bpf.load_object(compile_one(HELPERS_SRC, tmp))
        stack.callback(helpers.close)
        link = stack.enter_context(veth_link("kbf"))
        with inside(link.b.netns):
            helpers.program("xdp_sink").attach_xdp(link.b.ifindex)
        lbs = {"balancer": make_lb(args.cpu, args.reals, None)}
        stack.callback(lbs["balancer"].close)
        if args.object:
            lbs["object"] = make_lb(args.cpu, args.reals, args.object)
            stack.callback(lbs["object"].close)
        progs = {"reflector": helpers.program("xdp_reflect")}
        progs.update({n: lb._obj.program("balancer_ingress") for n, lb in lbs.items()})
        rig = Rig(link, helpers, args.cpu)
        with inside(link.a.netns):  # the live run finds the ifindex in the caller's netns
            results = measure(rig, progs, lbs, args)
        print_table(results, list(progs), args)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
