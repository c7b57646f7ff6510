"""Health checks per second on one core, and the scheduling jitter of the checker's loop.

Local responders (TCP listeners, or HTTP servers with --type http) on loopback addresses
stand in for reals, in a child process on the other CPU; the checker's own probe function
runs them with bounded concurrency on one asyncio loop, pinned to one CPU. Prints checks/s
and the jitter of checks scheduled at half that rate::

    python benchmarks/bench_hc.py [--type tcp|http] [--targets 200] [--concurrency 256]
                                  [--seconds 5] [--cpu 0]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import threading
import time

from katran.hc_checker import CheckSpec, ProbeFailed, probe
from katran.models import parse_address


def _listeners(n: int, kind: str, cpu: int, ready) -> None:
    """The responders' process: ``n`` listeners, their (address, port) sent through ``ready``."""
    os.sched_setaffinity(0, {cpu})
    out = []
    for i in range(n):
        addr = f"127.0.{(i // 250) + 1}.{(i % 250) + 2}"
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, 0))
        s.listen(4096)
        out.append((addr, s.getsockname()[1]))
        threading.Thread(target=_accept, args=(s, kind), daemon=True).start()
    ready.send(out)
    threading.Event().wait()


_HTTP_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def _accept(s: socket.socket, kind: str) -> None:
    while True:
        c, _ = s.accept()
        if kind == "http":
            try:
                c.recv(4096)
                c.sendall(_HTTP_REPLY)
            except OSError:
                pass
        c.close()


async def throughput(targets, spec: CheckSpec, concurrency: int, seconds: float) -> tuple[int, int]:
    sem = asyncio.Semaphore(concurrency)
    ok = failed = 0
    deadline = time.monotonic() + seconds
    addrs = [(parse_address(a), p) for a, p in targets]

    async def worker(i: int):
        nonlocal ok, failed
        while time.monotonic() < deadline:
            a, p = addrs[i % len(addrs)]
            i += concurrency
            async with sem:
                try:
                    await probe(spec, a, p)
                    ok += 1
                except ProbeFailed:
                    failed += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return ok, failed


async def jitter(targets, spec: CheckSpec, interval: float, seconds: float) -> list[float]:
    """Each target checked every ``interval``: how late each check starts (ms)."""
    lateness = []
    deadline = time.monotonic() + seconds
    addrs = [(parse_address(a), p) for a, p in targets]

    async def one(a, p, offset):
        due = time.monotonic() + offset
        while due < deadline:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            lateness.append((time.monotonic() - due) * 1000)
            try:
                await probe(spec, a, p)
            except ProbeFailed:
                pass
            due += interval

    await asyncio.gather(*(one(a, p, i * interval / len(addrs)) for i, (a, p) in enumerate(addrs)))
    return lateness


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--type", choices=("tcp", "http"), default="tcp")
    ap.add_argument("--targets", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--cpu", type=int, default=0)
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    other = next((c for c in sorted(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1))) if c != args.cpu),
                 args.cpu)
    parent, child = multiprocessing.Pipe()
    responders = multiprocessing.Process(target=_listeners, args=(args.targets, args.type, other, child), daemon=True)
    responders.start()
    targets = parent.recv()
    spec = CheckSpec(type=args.type, timeout=1.0, interval=2.0)
    ok, failed = asyncio.run(throughput(targets, spec, args.concurrency, args.seconds))
    rate = (ok + failed) / args.seconds
    print(f"{args.type} checks, {args.targets} targets, concurrency {args.concurrency}, one core (cpu {args.cpu}):")
    print(f"  {rate:,.0f} checks/s ({ok} ok, {failed} failed in {args.seconds:g} s)")
    # the scheduling jitter at half that rate: every target every `interval`
    interval = max(0.05, 2 * args.targets / max(rate, 1))
    late = sorted(asyncio.run(jitter(targets, spec, interval, args.seconds)))
    q = lambda f: late[min(len(late) - 1, int(f * len(late)))]  # noqa: E731
    print(f"  jitter at {args.targets / interval:,.0f} checks/s scheduled: median {statistics.median(late):.2f} ms, "
          f"p99 {q(0.99):.2f} ms, max {late[-1]:.2f} ms ({len(late)} checks)")
    responders.terminate()


if __name__ == "__main__":
    main()
