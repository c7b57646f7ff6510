"""katran-server-grpc's transport limits, each with a small value: message
size, concurrent RPCs (bounded pool), concurrent streams per connection,
connection cap, idle close and keepalive pings (seen on a raw HTTP/2
connection).  After every refusal the server still answers."""

from __future__ import annotations

import socket
import struct
import threading
import time

import grpc
import pytest

from katran import KatranConfig, KatranLb
from katran_grpc import katran_pb2 as pb
from katran_grpc import katran_pb2_grpc as pb_grpc
from katran_grpc.server import GrpcLimits, KatranGrpcServer

DEFAULT_MAC = "00:00:de:ad:be:af"


@pytest.fixture(scope="module")
def lb():
    with KatranLb(KatranConfig(testing=True, default_mac=DEFAULT_MAC, enable_hc=False)) as lb:
        yield lb


class _SlowMac:
    """The real KatranLb, except that get_mac waits for ``gate``."""

    def __init__(self, lb) -> None:
        self._lb = lb
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)

    def get_mac(self):
        self.entered.release()
        self.gate.wait(20)
        return self._lb.get_mac()

    def __getattr__(self, name):
        return getattr(self._lb, name)


@pytest.fixture
def serve():
    servers = []

    def start(lb, **limits) -> KatranGrpcServer:
        srv = KatranGrpcServer(lb, "127.0.0.1:0", limits=GrpcLimits(**limits))
        srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop(0)


def stub(address: str):
    # a channel of its own: channels to one address otherwise share a connection
    ch = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return ch, pb_grpc.KatranServiceStub(ch)


def test_message_size_limit(lb, serve):
    srv = serve(lb, max_message_size=1024)
    ch, kc = stub(srv.address)
    with ch:
        with pytest.raises(grpc.RpcError) as err:
            kc.addVip(pb.VipMeta(vip=pb.Vip(address="1" * 2000, port=80, protocol=6)), timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "1024" in err.value.details()
        assert lb.get_all_vips() == []
        assert kc.getMac(pb.Empty(), timeout=5).mac == DEFAULT_MAC  # same channel still served


def test_concurrent_rpcs_bounded(lb, serve):
    slow = _SlowMac(lb)
    srv = serve(slow, workers=1, max_concurrent_rpcs=1)
    ch, kc = stub(srv.address)
    with ch:
        first = kc.getMac.future(pb.Empty(), timeout=20)
        assert slow.entered.acquire(timeout=10)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            kc.getAllVips(pb.Empty(), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - t0 < 5  # refused at once, not queued
        slow.gate.set()
        assert first.result().mac == DEFAULT_MAC
        assert list(kc.getAllVips(pb.Empty(), timeout=5).vips) == []


def test_concurrent_streams_per_connection(lb, serve):
    slow = _SlowMac(lb)
    srv = serve(slow, workers=4, max_concurrent_rpcs=8, max_concurrent_streams=1)
    ch, kc = stub(srv.address)
    other, kc2 = stub(srv.address)
    with ch, other:
        kc.getAllVips(pb.Empty(), timeout=5)  # connect
        first = kc.getMac.future(pb.Empty(), timeout=20)
        assert slow.entered.acquire(timeout=10)
        with pytest.raises(grpc.RpcError) as err:  # this connection's only stream is taken
            kc.getAllVips(pb.Empty(), timeout=1)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert list(kc2.getAllVips(pb.Empty(), timeout=5).vips) == []  # another connection is served
        slow.gate.set()
        assert first.result().mac == DEFAULT_MAC


def test_connection_cap(lb, serve):
    srv = serve(lb, max_connections=2)
    chans = [stub(srv.address) for _ in range(2)]
    try:
        for _, kc in chans:
            assert kc.getMac(pb.Empty(), timeout=5).mac == DEFAULT_MAC
        extra, kc3 = stub(srv.address)
        with extra:
            with pytest.raises(grpc.RpcError) as err:
                kc3.getMac(pb.Empty(), timeout=2)
            assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        chans.pop()[0].close()
        time.sleep(0.5)
        again, kc4 = stub(srv.address)
        with again:
            assert kc4.getMac(pb.Empty(), timeout=5).mac == DEFAULT_MAC
    finally:
        for ch, _ in chans:
            ch.close()


# ------------------------------------------------------------------ raw HTTP/2: keepalive and idle
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, GOAWAY = 0x4, 0x6, 0x7


def frame(ftype: int, flags: int = 0, stream: int = 0, payload: bytes = b"") -> bytes:
    return struct.pack("!I", len(payload))[1:] + bytes((ftype, flags)) + struct.pack("!I", stream) + payload


def frames_until(sock: socket.socket, want: int, within: float) -> tuple:
    """Read frames (answering SETTINGS) until one of type ``want``; (seconds, frame types seen)."""
    t0 = time.monotonic()
    seen = []
    buf = b""
    sock.settimeout(0.2)
    while time.monotonic() - t0 < within:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            ftype, flags = buf[3], buf[4]
            buf = buf[9 + length:]
            seen.append(ftype)
            if ftype == SETTINGS and not flags & 1:
                sock.sendall(frame(SETTINGS, flags=1))
            if ftype == want:
                return time.monotonic() - t0, seen
    return None, seen


def test_keepalive_ping_sent(lb, serve):
    srv = serve(lb, keepalive_time=0.3, keepalive_timeout=5, idle_timeout=60)
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(PREFACE + frame(SETTINGS))
        took, seen = frames_until(s, PING, within=5)
        assert took is not None, f"no PING from the server, frames {seen}"


def test_idle_connection_goaway(lb, serve):
    srv = serve(lb, idle_timeout=0.5, keepalive_time=60)
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(PREFACE + frame(SETTINGS))
        took, seen = frames_until(s, GOAWAY, within=6)
        assert took is not None, f"no GOAWAY from the server, frames {seen}"
    ch, kc = stub(srv.address)
    with ch:
        assert kc.getMac(pb.Empty(), timeout=5).mac == DEFAULT_MAC


def test_limits_validated():
    with pytest.raises(ValueError, match="max_concurrent_streams=0"):
        GrpcLimits(max_concurrent_streams=0)
    with pytest.raises(ValueError, match="keepalive_time"):
        GrpcLimits(keepalive_time=-1)
