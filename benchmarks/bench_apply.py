"""Declarative apply: a 1,000-VIP x 10-real file onto an empty balancer, then a one-real change,
then the same file again (no change), and the dump of the live state. Prints a table (ms).

    python benchmarks/bench_apply.py [--vips 1000] [--reals 10] [--pool 200]

The balancer is loaded in testing mode (maps and rings really written, nothing attached).
"""

from __future__ import annotations

import argparse
import statistics
import time

from katran import KatranConfig, KatranLb
from katran import declarative as dcl


def config_text(vips: int, reals: int, pool: int, bump: int = -1) -> str:
    lines = ["version: 1", "vips:"]
    for v in range(vips):
        lines += [f"  - address: 10.{100 + v // 65536}.{(v // 256) % 256}.{v % 256}", "    port: 80",
                  "    proto: tcp", "    reals:"]
        for r in range(reals):
            n = (v * reals + r) % pool
            weight = 2 if (v == 0 and r == bump) else 1
            lines.append(f"      - {{address: 10.200.{n // 250}.{n % 250 + 1}, weight: {weight}}}")
    return "\n".join(lines) + "\n"


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return (time.perf_counter() - t) * 1000, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vips", type=int, default=1000)
    ap.add_argument("--reals", type=int, default=10)
    ap.add_argument("--pool", type=int, default=200, help="distinct real addresses shared by the VIPs")
    ap.add_argument("--repeat", type=int, default=5, help="repetitions of the small operations")
    args = ap.parse_args()
    base, changed = config_text(args.vips, args.reals, args.pool), config_text(args.vips, args.reals, args.pool, 0)
    cfg = KatranConfig(testing=True, default_mac="00:00:de:ad:be:af", forwarding_cores=(), lru_size=1000,
                       max_vips=max(args.vips + 8, 16), max_reals=max(args.pool + 8, 16))
    with KatranLb(cfg) as lb:
        t_parse, desired = timed(dcl.loads, base)
        t_full, plan = timed(dcl.apply, lb, desired)
        one = dcl.loads(changed)
        small, noop, dump = [], [], []
        for i in range(args.repeat):
            t, p = timed(dcl.apply, lb, one if i % 2 == 0 else desired)
            assert len(p.changes) == 1, p.lines()
            small.append(t)
        for _ in range(args.repeat):
            t, p = timed(dcl.plan, lb, desired if args.repeat % 2 == 0 else one)
            assert p.empty
            noop.append(t)
        for _ in range(args.repeat):
            dump.append(timed(lambda: dcl.dumps(dcl.snapshot(lb)))[0])
    print(f"declarative apply, {args.vips} VIPs x {args.reals} reals ({args.pool} distinct reals), ms:")
    print(f"  parse + validate the file          {t_parse:9.1f}")
    print(f"  apply onto an empty balancer       {t_full:9.1f}  ({len(plan.changes)} changes)")
    print(f"  one real re-weighted (plan+apply)  {statistics.median(small):9.1f}  (median of {args.repeat})")
    print(f"  same file again (plan, no change)  {statistics.median(noop):9.1f}")
    print(f"  dump of the live state             {statistics.median(dump):9.1f}")


if __name__ == "__main__":
    main()
