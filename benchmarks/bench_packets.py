"""Per-packet cost of the balancer, beside an empty XDP program timed the same way.

Every measurement is one BPF_PROG_TEST_RUN call with repeat=1 on a freshly
copied packet (the kernel copies data_in on every call), so a program that
rewrites the packet never sees its own output.  The kernel reports the time
spent in the program run (ns); we take the median over many calls, and print
the cost above the empty program.  Run as root:

    python benchmarks/bench_packets.py [--runs 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from katran import KatranConfig, KatranLb, Real, VipKey
from katran.adapter import bpf
from katran.lb import packaged_object

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
PAYLOAD = b"x" * 64


def tcp4(sport: int, flags: str = "A") -> bytes:
    return bytes(ETH / IP(src="192.168.1.1", dst="10.200.1.1") / TCP(sport=sport, dport=80, flags=flags) / PAYLOAD)


def tcp6(sport: int, flags: str = "A") -> bytes:
    return bytes(ETH / IPv6(src="fc00:2::1", dst="fc00:1::1") / TCP(sport=sport, dport=80, flags=flags) / PAYLOAD)


def udp4(sport: int) -> bytes:
    return bytes(ETH / IP(src="192.168.1.1", dst="10.200.1.1") / UDP(sport=sport, dport=80) / PAYLOAD)


def non_vip(sport: int) -> bytes:
    return bytes(ETH / IP(src="192.168.1.1", dst="10.9.9.9") / TCP(sport=sport, dport=80, flags="A") / PAYLOAD)


def median_ns(prog, frames: list[bytes]) -> float:
    return statistics.median(prog.test_run(f).duration_ns for f in frames)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20000)
    ap.add_argument("--reals", type=int, default=100)
    args = ap.parse_args(argv)
    n = args.runs

    lb = KatranLb(KatranConfig(testing=True, default_mac="00:00:de:ad:be:af", forwarding_cores=()))
    lb.start()
    empty_spec = bpf.ObjectSpec.open(packaged_object("xdp_pass.bpf.o"))
    empty_obj = empty_spec.load()
    empty_spec.close()
    try:
        reals_v4 = [Real(f"10.0.{i // 250}.{i % 250 + 1}") for i in range(args.reals)]
        reals_v6 = [Real(f"fc00::{i + 1:x}") for i in range(args.reals)]
        for vip, reals in ((VipKey("10.200.1.1", 80, "tcp"), reals_v4), (VipKey("10.200.1.1", 80, "udp"), reals_v4),
                           (VipKey("fc00:1::1", 80, "tcp"), reals_v6)):
            lb.add_vip(vip)
            lb.modify_reals_for_vip(0, reals, vip)
        prog = lb._obj.program("balancer_ingress")  # the benchmark times the loaded program itself
        empty = empty_obj.program("xdp_pass")

        # a small set of flows, each warmed into the LRU first (the fallback LRU holds 1000)
        flows = range(10000, 10000 + 500)
        warm = [tcp4(p) for p in flows] + [tcp6(p) for p in flows] + [udp4(p) for p in flows]
        for f in warm:
            prog.test_run(f)
        cases = [
            ("TCP ACK, LRU hit, v4", [tcp4(flows[i % len(flows)]) for i in range(n)]),
            ("TCP ACK, LRU hit, v6", [tcp6(flows[i % len(flows)]) for i in range(n)]),
            ("UDP, LRU hit, v4", [udp4(flows[i % len(flows)]) for i in range(n)]),
            ("TCP SYN, new flow, v4", [tcp4(20000 + (i % 40000), "S") for i in range(n)]),
            ("non-VIP, XDP_PASS", [non_vip(20000 + (i % 40000)) for i in range(n)]),
        ]
        rows = []
        for name, frames in cases:
            verdict = lb.run_packet(frames[0]).verdict
            empty_ns = median_ns(empty, frames)
            prog_ns = median_ns(prog, frames)
            rows.append((name, verdict, prog_ns, empty_ns, prog_ns - empty_ns))
    finally:
        empty_obj.close()
        lb.close()

    print(f"per-packet cost, median of {n} BPF_PROG_TEST_RUN calls (repeat=1, fresh packet each), {args.reals} reals")
    print(f"{'packet':<24} {'verdict':<9} {'balancer ns':>12} {'empty ns':>9} {'above empty':>12}")
    for name, verdict, prog_ns, empty_ns, delta in rows:
        print(f"{name:<24} {verdict:<9} {prog_ns:>12.0f} {empty_ns:>9.0f} {delta:>12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
