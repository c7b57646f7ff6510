"""Prometheus scrape time: ``python benchmarks/bench_metrics.py [--vips N] [--reals M] [--runs R]``.

Loads the balancer in testing mode (as root), configures N VIPs with M reals each,
runs traffic through it so the counters are not zero, then times, for a shared pool
of M reals and for N x M distinct reals:

* ``map reads``: ``KatranLb.counter_snapshot()`` as a scrape makes it (one batch read per
  map; VIPs and reals unchanged since the last scrape);
* ``first scrape``: a scrape by a new collector (the VIP and real lists and all their
  label strings are built), no HTTP;
* ``after a change``: a configuration change (``change_mac``), then a scrape: the VIP and
  real lists are read again, label strings of unchanged VIPs and reals are reused;
* ``scrape``: what the server does for each ``GET /metrics`` (map reads, metric families,
  text), VIPs and reals unchanged since the previous scrape;
* ``GET /metrics``: the same over HTTP on loopback, the client in this process (it reads
  the body under the same interpreter lock: an upper bound).

Prints the median and best of R runs (ms) and the number of samples of one scrape.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import time
import urllib.request

from katran import KatranConfig, KatranLb, ModifyAction, Real, VipKey, metrics


def _time(fn, runs: int) -> tuple[float, float]:
    fn()  # warm-up
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3, min(samples) * 1e3


def _setup(lb: KatranLb, n_vips: int, n_reals: int, distinct: bool) -> None:
    base_vip = int(ipaddress.IPv4Address("10.100.0.0"))
    base_real = int(ipaddress.IPv4Address("10.0.0.1"))
    for i in range(n_vips):
        vip = VipKey(str(ipaddress.IPv4Address(base_vip + i)), 80, "tcp")
        lb.add_vip(vip)
        first = base_real + (i * n_reals if distinct else 0)
        reals = [Real(str(ipaddress.IPv4Address(first + j))) for j in range(n_reals)]
        lb.modify_reals_for_vip(ModifyAction.ADD, reals, vip)


def _traffic(lb: KatranLb, n_vips: int, packets: int) -> None:
    from katran.models import Flow
    from katran.packets import build_flow_packet

    base_vip = int(ipaddress.IPv4Address("10.100.0.0"))
    for i in range(packets):
        flow = Flow("192.168.0.1", str(ipaddress.IPv4Address(base_vip + i % n_vips)), 1024 + i, 80, "tcp")
        lb.run_packet(build_flow_packet(flow))


def bench(n_vips: int, n_reals: int, distinct: bool, runs: int, ring_size: int) -> list:
    total_reals = n_vips * n_reals if distinct else n_reals
    cfg = KatranConfig(testing=True, default_mac="00:00:de:ad:be:af", forwarding_cores=(),
                       max_vips=n_vips, max_reals=total_reals + 1, ch_ring_size=ring_size)
    rows = []
    with KatranLb(cfg) as lb:
        t0 = time.perf_counter()
        _setup(lb, n_vips, n_reals, distinct)
        setup_s = time.perf_counter() - t0
        _traffic(lb, n_vips, 2000)
        text = metrics.scrape_text(lb)
        samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        endpoint = metrics.MetricsEndpoint(lb, "127.0.0.1:0", "bench")
        endpoint.start()
        try:
            url = endpoint.url

            def get() -> None:
                with urllib.request.urlopen(url, timeout=30) as resp:
                    resp.read()

            label = f"{n_vips} VIPs x {n_reals} reals ({'distinct' if distinct else 'shared'}: {total_reals} reals)"
            version = lb.counter_snapshot().version
            for what, fn in (("map reads", lambda: lb.counter_snapshot(known_version=version)),
                             ("first scrape", lambda: metrics.scrape_text(lb)),
                             ("after a change", lambda: (lb.change_mac("00:00:de:ad:be:af"), endpoint.render())),
                             ("scrape", endpoint.render),
                             ("GET /metrics", get)):
                med, best = _time(fn, runs)
                rows.append((label, what, med, best, samples))
        finally:
            endpoint.stop()
    print(f"  (set-up of {label}: {setup_s:.1f} s)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vips", type=int, default=1000)
    parser.add_argument("--reals", type=int, default=100)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--ring-size", type=int, default=1021,
                        help="CH ring size (does not change the scrape; small keeps set-up fast)")
    parser.add_argument("--shared-only", action="store_true", help="skip the distinct-reals case")
    args = parser.parse_args()

    rows = bench(args.vips, args.reals, False, args.runs, args.ring_size)
    if not args.shared_only:
        rows += bench(args.vips, args.reals, True, args.runs, args.ring_size)
    print(f"{'configuration':<52} {'step':<15} {'median ms':>10} {'best ms':>9} {'samples':>8}")
    for label, what, med, best, samples in rows:
        print(f"{label:<52} {what:<15} {med:>10.1f} {best:>9.1f} {samples:>8}")
    load = os.getloadavg()[0]
    print(f"(load average {load:.1f} on {os.cpu_count()} CPUs while measuring)")


if __name__ == "__main__":
    main()
