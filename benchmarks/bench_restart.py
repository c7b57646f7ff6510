"""Time to adopt a running data plane after a restart, for a 100-VIP x 10-real state
(default), on the real kernel: a veth pair in a fresh network namespace, the balancer
attached in native XDP mode with persistence on. Prints a table (ms):

* fresh start (load, provision, attach, pin) and populating the state;
* adopt after a restart-friendly stop (``close(keep=True)``, SIGTERM's path);
* adopt after a crash (no close: the lock and fds die with the process);
* hitless upgrade at start (a copy of the object: load reusing every map + atomic swap).

    python benchmarks/bench_restart.py [--vips 100] [--reals 10] [--repeat 5]

Needs root (CAP_BPF, CAP_NET_ADMIN).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from katran import KatranConfig, KatranLb
from katran.dataplane import OBJ_DIR
from katran.lab.netns import add_netns, del_netns, inside
from katran.models import ModifyAction, Real, VipKey


def timed(fn):
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vips", type=int, default=100)
    ap.add_argument("--reals", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    ns = f"kbr{os.getpid() % 100000}"
    tmp = Path(tempfile.mkdtemp(prefix="katran-bench-restart-"))
    add_netns(ns)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "kb0", "type", "veth", "peer", "name", "kb1"], check=True)
        for dev in ("kb0", "kb1"):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        newer = tmp / "balancer-next.bpf.o"
        shutil.copy(OBJ_DIR / "balancer.bpf.o", newer)
        base = dict(main_interface="kb0", default_mac="00:00:de:ad:be:af", persist=True,
                    state_dir=str(tmp / "state"), pin_dir=f"/sys/fs/bpf/katran-bench-{ns}", lru_size=100_000,
                    max_vips=max(args.vips + 8, 16), max_reals=max(args.vips * args.reals + 8, 16))
        cfg = KatranConfig(**base)
        with inside(ns):
            lb = KatranLb(cfg)
            t_fresh = timed(lb.start)

            def populate():
                with lb.batch():
                    for v in range(args.vips):
                        vip = VipKey(f"10.100.{v // 256}.{v % 256}", 80, "tcp")
                        lb.add_vip(vip)
                        lb.modify_reals_for_vip(ModifyAction.ADD, [
                            Real(f"10.{200 + (v * args.reals + r) // 65536}.{((v * args.reals + r) // 256) % 256}."
                                 f"{(v * args.reals + r) % 256}") for r in range(args.reals)], vip)

            t_pop = timed(populate)
            prog_id = lb._dp.program().id
            size = os.path.getsize(lb.state_path)
            stop_ms, adopt_ms, crash_ms = [], [], []
            for _ in range(args.repeat):
                stop_ms.append(timed(lambda: lb.close(keep=True)))
                lb = KatranLb(cfg)
                adopt_ms.append(timed(lb.start))
                assert lb.adopted and lb._dp.program().id == prog_id
                assert len(lb.get_all_vips()) == args.vips
            for _ in range(args.repeat):
                lb._dp._release_lock()  # a crash: the process's flock goes with it
                lb._dp._close_handles()
                lb = KatranLb(cfg)
                crash_ms.append(timed(lb.start))
                assert lb.adopted and lb._dp.program().id == prog_id
            lb.close(keep=True)
            lb = KatranLb(KatranConfig(**base, balancer_prog_path=str(newer)))
            t_upgrade = timed(lb.start)
            assert lb.adopted and lb._dp.upgraded_from == prog_id
            lb.close()
        rows = [
            ("fresh start (load, attach, pin)", t_fresh),
            (f"populate {args.vips} VIPs x {args.reals} reals (one state write)", t_pop),
            ("stop, keep data plane (state write)", statistics.median(stop_ms)),
            ("adopt after SIGTERM-style stop (median)", statistics.median(adopt_ms)),
            ("adopt after crash (median)", statistics.median(crash_ms)),
            ("hitless upgrade at start", t_upgrade),
        ]
        print(f"state file: {size} bytes; {args.repeat} repetitions")
        for name, ms in rows:
            print(f"{name:<58} {ms:9.1f} ms")
    finally:
        del_netns(ns)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
