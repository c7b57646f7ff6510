"""Control-plane writes: a ring-changing RPC through katran-server-grpc.

The server (``KatranGrpcServer`` over a started ``KatranLb`` in testing mode:
BPF maps loaded, nothing attached) runs in a child process on loopback TCP; the
clients are threads of this process, each on its own channel.  One RPC is
``addRealForVip`` or ``delRealForVip`` of one extra real on a VIP with
``--reals`` reals (every call changes the ring: Maglev rebuild + the changed
ch_rings slots).  Printed per client count: RPCs per second, latency
percentiles (ms) as the clients see them; in the server, end to end (from the
servicer's handler receiving the decoded request to it returning the reply:
translation, the lb call, the audit line; timed by a wrapper of the servicer's
``addRealForVip`` / ``delRealForVip``, in this benchmark only) and the time of
the change itself (``KatranLb.add_real_for_vip`` / ``del_real_for_vip``, lock
wait included); and the latency of a read RPC (``getRealsForVip``) issued every
2 ms meanwhile.

    python benchmarks/bench_rpc.py [--rpcs 400] [--reals 100] [--clients 1 16]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import threading
import time
from collections.abc import Sequence

VIP = ("10.200.1.1", 80, "tcp")


def _timed(fn, out: list):
    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            out.append(time.perf_counter() - t)

    return timed


def _serve(conn, n_reals: int) -> None:
    """Child process: a gRPC server over a testing KatranLb; reports its address, serves until told."""
    from katran import KatranConfig, KatranLb, ModifyAction, Real, VipKey
    from katran_grpc.server import KatranGrpcServer
    from katran_grpc.service import KatranServicer

    lb = KatranLb(KatranConfig(testing=True, default_mac="00:00:de:ad:be:af", lru_size=1000,
                               katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337"))
    lb.start()
    vip = VipKey(*VIP)
    lb.add_vip(vip)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(f"10.0.{i // 250}.{i % 250 + 1}") for i in range(n_reals)], vip)
    applied: list[float] = []
    handled: list[float] = []
    for name in ("add_real_for_vip", "del_real_for_vip"):
        setattr(lb, name, _timed(getattr(lb, name), applied))
    for name in ("addRealForVip", "delRealForVip"):  # the servicer's handlers (self, request, context)
        setattr(KatranServicer, name, _timed(getattr(KatranServicer, name), handled))
    srv = KatranGrpcServer(lb, "127.0.0.1:0")
    srv.start()
    conn.send(srv.address)
    while True:
        msg = conn.recv()
        if msg == "applied":
            conn.send((list(applied), list(handled)))
            applied.clear()
            handled.clear()
        else:
            break
    srv.stop(0)
    lb.close()


def _stubs(address: str):
    import grpc
    from katran_grpc import katran_pb2_grpc as pb_grpc

    # own connection per client (the server allows 16 streams per connection)
    ch = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return ch, pb_grpc.KatranServiceStub(ch)


def _writer(address: str, index: int, count: int, lat: list[float], barrier: threading.Barrier) -> None:
    from katran_grpc import katran_pb2 as pb

    ch, stub = _stubs(address)
    vip = pb.Vip(address=VIP[0], port=VIP[1], protocol=6)
    req = pb.realForVip(real=pb.Real(address=f"10.9.{index}.1", weight=1), vip=vip)
    try:
        barrier.wait()
        for i in range(count):
            call = stub.addRealForVip if i % 2 == 0 else stub.delRealForVip
            t = time.perf_counter()
            call(req)
            lat.append(time.perf_counter() - t)
        if count % 2:
            stub.delRealForVip(req)
    finally:
        ch.close()


def _reader(address: str, stop: threading.Event, lat: list[float]) -> None:
    from katran_grpc import katran_pb2 as pb

    ch, stub = _stubs(address)
    vip = pb.Vip(address=VIP[0], port=VIP[1], protocol=6)
    try:
        while not stop.is_set():
            t = time.perf_counter()
            stub.getRealsForVip(vip)
            lat.append(time.perf_counter() - t)
            time.sleep(0.002)
    finally:
        ch.close()


def pct(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] * 1e3


def run(address: str, conn, clients: int, rpcs: int, with_reader: bool) -> dict:
    per_client = max(2, rpcs // clients)
    lats: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=_writer, args=(address, i, per_client, lats[i], barrier)) for i in range(clients)]
    stop, read_lat = threading.Event(), []
    reader = threading.Thread(target=_reader, args=(address, stop, read_lat)) if with_reader else None
    for t in threads:
        t.start()
    if reader:
        reader.start()
    conn.send("applied")
    conn.recv()  # drop what setup applied
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    stop.set()
    if reader:
        reader.join()
    conn.send("applied")
    applied, handled = conn.recv()
    all_lat = [x for lat in lats for x in lat]
    return {"rps": len(all_lat) / wall, "lat": all_lat, "applied": applied, "handled": handled, "read": read_lat}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rpcs", type=int, default=400, help="write RPCs per row (split over the clients)")
    ap.add_argument("--reals", type=int, default=100)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child, args.reals), daemon=True)
    proc.start()
    try:
        address = parent.recv()
        run(address, parent, 1, 20, False)  # warm-up
        print(f"ring-changing RPC (add/del one real, VIP with {args.reals} reals) through katran-server-grpc "
              f"on loopback, {args.rpcs} RPCs per row; times in ms")
        print(f"{'clients':>7} {'RPC/s':>7} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>7} "
              f"{'server p50':>10} {'p99':>6} {'in lb p50':>9} {'p99':>6} {'read p50':>9} {'read p99':>9}")
        for clients in args.clients:
            r = run(address, parent, clients, args.rpcs, with_reader=True)
            lat, ap_, hd, rd = r["lat"], r["applied"], r["handled"], r["read"]
            print(f"{clients:>7} {r['rps']:>7.0f} {pct(lat, 50):>6.2f} {pct(lat, 90):>6.2f} {pct(lat, 99):>6.2f} "
                  f"{max(lat) * 1e3:>7.2f} {pct(hd, 50):>10.2f} {pct(hd, 99):>6.2f} "
                  f"{pct(ap_, 50):>9.2f} {pct(ap_, 99):>6.2f} "
                  f"{pct(rd, 50) if rd else float('nan'):>9.2f} {pct(rd, 99) if rd else float('nan'):>9.2f}")
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
