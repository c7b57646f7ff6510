"""katran-lab: the walkthrough of Katran's example on one machine, in network namespaces.

    katran-lab                 run every step, print a report, clean up (same as `run`)
    katran-lab up              build the topology (+ decap on the reals, katran-server-grpc on the lb) and leave it
    katran-lab status          show what `up` built
    katran-lab down            remove what `up` (or an interrupted run) left behind
    katran-lab fleet           the fleet: a BGP/ECMP router, three balancers, reals; six steps (docs/fleet.md)
    katran-lab fleet up        build the fleet and leave it running; `katran-lab fleet down` removes it
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from typing import Optional

from katran.errors import KatranError

from . import services as S
from .topology import TopologySpec, build, load_saved, pids_alive, teardown
from katran import add_version_argument

VIP4, VIP6 = "10.100.1.1", "fc00:100::1"


def _up(args) -> int:
    from katran import decap
    from .netns import inside

    spec = TopologySpec(prefix=args.prefix, n_reals=args.reals)
    topo = build(spec)
    try:
        for h in topo.reals:
            with inside(h.netns):
                decap.install(h.ifname, [VIP4, VIP6], pin_root=topo.pin_root / h.role, fix_rp_filter=0)
        server = None
        if not args.no_server:
            server = S.GrpcServer(topo, "auto", flags=["-forwarding_cores=0"])
            server.start()
        path = topo.save()
        state = json.loads(path.read_text())
        state["server_pid"] = server.pid if server else None
        state["server_address"] = server.address if server else None
        path.write_text(json.dumps(state, indent=2))
    except BaseException:
        teardown(spec.prefix)
        raise
    print(topo.describe())
    print(f"\nVIPs {VIP4} and {VIP6} are on lo of every real (decap attached); nothing serves them yet.")
    from .netns import NETNS_DIR

    ns = lambda role: f"nsenter --net={NETNS_DIR}/{topo.prefix}-{role} --"  # noqa: E731
    if server:
        print(f"katran-server-grpc: pid {server.pid}, {server.address}, log {server.log_path}")
        print(f"  katran-cli -server {server.address} -A -t {VIP4}:80")
        print(f"  katran-cli -server {server.address} -a -t {VIP4}:80 -r {topo.reals[0].ip4} -w 1")
    print(f"  {ns('real1')} python3 -m http.server 80")
    print(f"  {ns('client')} curl http://{VIP4}/")
    print(f"tear down: katran-lab down --prefix {topo.prefix}")
    return 0


def _down(args) -> int:
    state = load_saved(args.prefix)
    if state and state.get("server_pid"):
        pid = state["server_pid"]
        for _ in pids_alive([pid]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not pids_alive([pid]):
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            print(f"stopped katran-server-grpc (pid {pid})")
    removed = teardown(args.prefix)
    print("removed: " + (", ".join(removed) if removed else f"nothing (no lab '{args.prefix}')"))
    return 0


def _status(args) -> int:
    state = load_saved(args.prefix)
    if not state:
        print(f"no lab '{args.prefix}' is up")
        return 1
    print(json.dumps(state, indent=2))
    pid = state.get("server_pid")
    if pid:
        print(f"katran-server-grpc pid {pid}: {'running' if pids_alive([pid]) else 'gone'}")
    return 0


def _fleet(args) -> int:
    from . import fleet

    prefix = args.prefix if args.prefix != "klab" else "kfl"
    action = args.action or "run"
    if action == "down":
        removed = fleet.teardown(prefix)
        print("removed: " + (", ".join(removed) if removed else f"nothing (no fleet '{prefix}')"))
        return 0
    spec = fleet.FleetSpec(prefix=prefix, n_lbs=args.balancers, n_reals=args.reals, sessions=args.sessions)
    if action == "up":
        f = fleet.Fleet(spec)
        f.up()
        f.save()
        print(f"fleet {prefix} up: router {f.router} (BIRD, ECMP), client {f.client}, next hops of "
              f"{fleet.VIP1}: {f.nexthops(fleet.VIP1)}")
        for lb in f.lbs:
            print(f"  {lb.role}: netns {lb.netns}, katran-server-grpc pid {lb.pid}, {lb.address}, log {lb.log_path}")
        print(f"  config (every balancer): {f.config_path}")
        print("  the reals have decap and the VIPs on lo; their lab services (and the health port of "
              f"{fleet.VIP2}) ran in this process only: start your own, e.g. python3 -m http.server 80")
        print(f"  ip -n {f.router} route show {fleet.VIP1}")
        print(f"  birdc -s {f.router_bird.socket} show protocols")
        print(f"tear down: katran-lab fleet down --prefix {prefix}")
        return 0
    if action != "run":
        print(f"katran-lab fleet: unknown action {action[:20]!r} (run, up, down)", file=sys.stderr)
        return 2
    results = fleet.run(spec)
    return 0 if results and all(r.ok for r in results) else 1


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="katran-lab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_argument(ap, "katran-lab")
    ap.add_argument("command", nargs="?", default="run", choices=("run", "up", "down", "status", "fleet"))
    ap.add_argument("action", nargs="?", help="fleet: run (default), up or down")
    ap.add_argument("--balancers", type=int, default=3, help="fleet: number of balancers (default 3)")
    ap.add_argument("--sessions", type=int, default=30, help="fleet: long-lived TCP sessions (default 30)")
    ap.add_argument("--prefix", default="klab", help="namespace name prefix (default klab)")
    ap.add_argument("--reals", type=int, default=2, help="number of reals (default 2)")
    ap.add_argument("--bulk-mb", type=int, default=8, help="size of the bulk TCP transfer (run)")
    ap.add_argument("--no-server", action="store_true", help="up: do not start katran-server-grpc")
    ap.add_argument("-v", action="store_true", help="tracebacks of failed steps")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("katran-lab: must run as root (network namespaces, XDP)", file=sys.stderr)
        return 1
    try:
        if args.command == "fleet":
            return _fleet(args)
        if args.action:
            ap.error(f"unexpected argument {args.action[:20]!r}")
        if args.command == "up":
            return _up(args)
        if args.command == "down":
            return _down(args)
        if args.command == "status":
            return _status(args)
        from .demo import Lab

        return Lab(TopologySpec(prefix=args.prefix, n_reals=args.reals), bulk_mb=args.bulk_mb).run()
    except KatranError as exc:
        print(f"katran-lab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
