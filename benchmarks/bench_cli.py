"""katran-cli start-up and the cost of adding reals: the median wall time of N runs of
``katran-cli -l`` against a live katran-server-grpc and of ``katran-cli -h``, then 20 reals
added with 20 calls (one ``-r`` each) and with one call (``-r A,B,...``).

    python benchmarks/bench_cli.py [--runs 21] [--server unix:PATH] [--reals 20]

Without --server it starts ``katran-server-grpc -testing`` on a unix socket of its own (needs
root: the server loads the BPF programs) with one VIP of 10 reals to list. Each run is a new
process, as a shell script makes them (the ``katran-cli`` entry point, else ``python -m``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

MAC = "00:00:de:ad:be:af"


def cli_argv() -> list[str]:
    exe = shutil.which("katran-cli", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return [exe] if exe else [sys.executable, "-m", "katran_frontend.cli"]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed_run(argv: list[str], ok=(0,), cpu: list | None = None) -> float:
    """Wall time of one run (its CPU time appended to ``cpu``)."""
    cpu0 = _cpu()
    start = time.perf_counter()
    res = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - start
    if cpu is not None:
        cpu.append(_cpu() - cpu0)
    if res.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr[-500:]}")
    return took


def median_of(runs: int, argv: list[str]) -> tuple[float, float, float, float]:
    """(median wall, min wall, max wall, median CPU time) of ``runs`` runs."""
    cpu: list[float] = []
    times = sorted(timed_run(argv, cpu=cpu) for _ in range(runs))
    return statistics.median(times), times[0], times[-1], statistics.median(cpu)


def start_server(sock: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "katran_grpc.server", "-testing", f"-server=unix:{sock}",
                             "-lru_size", "1000", "-max_vips", "64", "-hc_forwarding=false", "-shutdown_delay", "0",
                             "-default_mac", MAC], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("Server listening on"):
        proc.kill()
        raise SystemExit(f"server did not start: {line}{proc.communicate()[1][-2000:]}")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="example: python benchmarks/bench_cli.py --runs 31")
    ap.add_argument("--runs", type=int, default=21, help="runs per command (the median is printed)")
    ap.add_argument("--server", default="", help="a running server (default: start one in testing mode)")
    ap.add_argument("--reals", type=int, default=20, help="reals added one call each, then in one call")
    args = ap.parse_args()
    cli = cli_argv()
    proc = None
    tmp = tempfile.mkdtemp(prefix="katran-bench-cli-")
    server = args.server
    try:
        if not server:
            sock = os.path.join(tmp, "grpc.sock")
            proc = start_server(sock)
            server = f"unix:{sock}"
            timed_run(cli + ["-server", server, "-A", "-t", "10.9.0.1:80"])
            timed_run(cli + ["-server", server, "-a", "-t", "10.9.0.1:80", "-r",
                             ",".join(f"10.9.1.{i}" for i in range(1, 11))])
        base = cli + ["-server", server]
        for argv, name in ((base + ["-l"], "katran-cli -l"), (cli + ["-h"], "katran-cli -h"),
                           (cli + ["--version"], "katran-cli --version")):
            med, lo, hi, cpu = median_of(args.runs, argv)
            print(f"{name:<24} median {med * 1000:7.1f} ms  (min {lo * 1000:.1f}, max {hi * 1000:.1f}; "
                  f"CPU {cpu * 1000:.1f} ms; {args.runs} runs)")
        vip = "10.9.0.2:80"
        timed_run(base + ["-A", "-t", vip])
        reals = [f"10.9.2.{i}" for i in range(1, args.reals + 1)]
        start = time.perf_counter()
        for real in reals:
            timed_run(base + ["-a", "-t", vip, "-r", real])
        one_each = time.perf_counter() - start
        timed_run(base + ["-d", "-t", vip, "-r", ",".join(reals)])
        one_call = timed_run(base + ["-a", "-t", vip, "-r", ",".join(reals)])
        timed_run(base + ["-D", "-t", vip])
        print(f"{args.reals} reals, one call each    {one_each * 1000:7.1f} ms")
        print(f"{args.reals} reals, one call (-r A,B) {one_call * 1000:7.1f} ms")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            proc.stdout.close()
            proc.stderr.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
