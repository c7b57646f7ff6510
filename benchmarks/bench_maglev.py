"""Maglev ring build time: ``python benchmarks/bench_maglev.py [--runs N] [--ring-size R]``.

Prints, for 2/10/100/1000 reals and both hash functions, the median (and best)
wall time of ``katran.maglev.build_ring``, of the C population call alone (the
rest is Python: collecting, checking and sorting the endpoints), and of the C
call capped at the AVX2 level and at the one-by-one loop of before
(``kn_maglev_simd`` = 1, 0), interleaved run by run.  The first two columns
run at the level ``maglev.tune_native()`` chose on this CPU (as a started
``KatranLb`` does; ``$KATRAN_MAGLEV_SIMD`` caps it instead): the first line
says which, with its timings.
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import time

import numpy as np

from katran import maglev
from katran.models import HashFunction


def _endpoints(count: int) -> list:
    base = int(ipaddress.IPv4Address("10.0.0.0"))
    return [maglev.Endpoint(i + 1, 1, maglev.endpoint_hash(ipaddress.IPv4Address(base + i + 1))) for i in range(count)]


def _time(fn, runs: int) -> tuple[float, float]:
    return _time_many([fn], runs)[0]


def _time_many(fns: list, runs: int) -> list[tuple[float, float]]:
    """(median, best) ms of each of ``fns``, run in turn ``runs`` times (interleaved)."""
    for fn in fns:
        fn()  # warm-up
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, out in zip(fns, samples):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [(statistics.median(s) * 1e3, min(s) * 1e3) for s in samples]


def _at_level(fn, level: int):
    from katran._native import lib

    def run():
        old, lib.kn_maglev_simd = lib.kn_maglev_simd, level
        try:
            return fn()
        finally:
            lib.kn_maglev_simd = old

    return run


def _core_call(endpoints: list, ring_size: int, hash_function: HashFunction):
    from katran._native import ffi, lib

    ordered = sorted(endpoints, key=lambda e: e.hash)
    hashes = np.array([e.hash for e in ordered], dtype=np.uint64)
    nums = np.array([e.num for e in ordered], dtype=np.uint32)
    weights = np.array([e.weight for e in ordered], dtype=np.uint32)
    ring = np.empty(ring_size, dtype=np.uint32)
    args = (ffi.from_buffer("uint64_t[]", hashes), ffi.from_buffer("uint32_t[]", nums),
            ffi.from_buffer("uint32_t[]", weights), len(ordered), ring_size, int(hash_function),
            ffi.from_buffer("uint32_t[]", ring))
    return lambda: lib.kn_maglev_ring(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--ring-size", type=int, default=maglev.DEFAULT_RING_SIZE)
    args = parser.parse_args()

    tuned = maglev.tune_native()
    print(f"native: {maglev.NATIVE}, ring size {args.ring_size}, {args.runs} runs each (ms)"
          + ("" if tuned is None else
             f"; C core at level {tuned['level']} ({tuned['name']}, {tuned['source']}"
             + "".join(f"; {maglev.SIMD_LEVELS[lv]} {ms:.2f} ms" for lv, ms in tuned["ms"].items()) + ")"))
    print(f"{'reals':>6} {'hash':>10} {'build_ring med':>15} {'best':>8} {'C core med':>11} {'best':>8} "
          f"{'C avx2 med':>11} {'best':>8} {'C one-by-one med':>17} {'best':>8}")
    for count in (2, 10, 100, 1000):
        endpoints = _endpoints(count)
        for hash_function in HashFunction:
            build = lambda: maglev.build_ring(endpoints, args.ring_size, hash_function)  # noqa: E731
            if maglev.NATIVE:
                core = _core_call(endpoints, args.ring_size, hash_function)
                (med, best), (core_med, core_best), (v1_med, v1_best), (sc_med, sc_best) = _time_many(
                    [build, core, _at_level(core, 1), _at_level(core, 0)], args.runs)
                cols = f"{core_med:11.3f} {core_best:8.3f} {v1_med:11.3f} {v1_best:8.3f} {sc_med:17.3f} {sc_best:8.3f}"
            else:
                med, best = _time(build, args.runs)
                cols = f"{'-':>11} {'-':>8} {'-':>11} {'-':>8} {'-':>17} {'-':>8}"
            print(f"{count:6d} {hash_function.name.lower():>10} {med:15.3f} {best:8.3f} {cols}")


if __name__ == "__main__":
    main()
