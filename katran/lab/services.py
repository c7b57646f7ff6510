"""Processes and services of the lab: the gRPC server on the lb, katran-cli calls,
the small servers on the reals, and the client side of the traffic.

The servers on the reals run as threads of the calling process with their sockets
created inside the real's namespace; each answer names the real, so the client
side learns which real served a flow.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import attrs

from katran.errors import KatranError

from .netns import inside
from .topology import STATE_DIR, Topology

EXAMPLES = Path(__file__).resolve().parent / "examples"  # package data: scripts the lab runs
HTTP_PORT, ECHO_PORT, BULK_PORT, UDP_PORT = 80, 8080, 9000, 9053


def entry_point(name: str) -> str:
    """Path of the installed console script ``name`` (katran-server-grpc, katran-cli, ...):
    next to this interpreter first, then on PATH."""
    here = Path(sysconfig.get_path("scripts")) / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    if found:
        return found
    raise KatranError(f"{name} is not installed (pip install 'katran[lab]')")


def python_env() -> dict:
    """Environment for our subprocesses: unbuffered output, and ``PYTHON`` (used by
    install_xdproot.sh) is this interpreter."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PYTHON"] = sys.executable
    return env


# ----------------------------------------------------------------- katran-server-grpc
def terminate(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL to its process group after ``timeout`` seconds; waits for the end."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class GrpcServer:
    """``katran-server-grpc`` running in the lb's namespace, listening on a unix socket.

    A unix socket is reachable from every namespace, so ``katran-cli`` and
    in-process clients need not enter the lb's namespace.
    """

    def __init__(self, topo: Topology, default_mac: str, *, flags: Sequence[str] = (),
                 log_path: Optional[Path] = None, name: str = "grpc") -> None:
        self.topo = topo
        self.socket_path = STATE_DIR / f"{topo.prefix}-{name}.sock"
        self.address = f"unix:{self.socket_path}"
        self.default_mac = default_mac
        self.flags = list(flags)
        self.log_path = log_path or STATE_DIR / f"{topo.prefix}-{name}.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def argv(self) -> list[str]:
        return [entry_point("katran-server-grpc"), f"-server={self.address}",
                f"-intf={self.topo.lb.ifname}", f"-default_mac={self.default_mac}",
                "-max_vips=16", "-max_reals=64", "-lru_size=20000", "-shutdown_delay=0", *self.flags]

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until it serves (its "Server listening" line in the log).

        Output goes to ``log_path``, so the server may outlive this process (``katran-lab up``).
        """
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = self.topo.popen(self.topo.lb.netns, self.argv, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=python_env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                if b"Server listening" in f.read():
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop(teardown=False)  # a failed start leaves whatever runs alone
        raise KatranError(f"katran-server-grpc did not start (log {self.log_path}): {self.tail_log()}")

    def tail_log(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def stop(self, timeout: float = 15.0, teardown: bool = True) -> Optional[int]:
        """SIGTERM (the server leaves its data plane forwarding and exits); SIGKILL after
        ``timeout``; then, unless ``teardown=False`` (a restart follows), ``katran-teardown``
        removes the data plane, pins and state file. Returns the server's exit code."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        terminate(proc, timeout)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        if teardown:
            self.teardown()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL (a crash): the data plane stays, pinned, for the next start to adopt."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def teardown(self) -> subprocess.CompletedProcess:
        """``katran-teardown`` in the lb's namespace (what a stopped server left behind)."""
        argv = [sys.executable, "-m", "katran.teardown", f"-intf={self.topo.lb.ifname}",
                *[f for f in self.flags if f.split("=")[0] in ("-state_dir", "-pin_dir", "-xdp_mode", "-hc_intf")]]
        return self.topo.run(self.topo.lb.netns, argv, env=python_env(), check=False)

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """``katran-cli -server <unix socket> args...`` (text output captured)."""
        argv = [entry_point("katran-cli"), f"-server={self.address}", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=python_env())


# ----------------------------------------------------------------------- reals
@attrs.define
class RealLog:
    """What one real's servers saw: client peers per service."""

    http: list = attrs.field(factory=list)
    echo: list = attrs.field(factory=list)
    bulk: list = attrs.field(factory=list)  # (peer, bytes)
    udp: list = attrs.field(factory=list)


class _Tcp6Server(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False


class _Udp(socketserver.ThreadingUDPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False


def _bind_retry(cls, address, handler, seconds: float = 3.0):
    """Bind, retrying while the address is not (yet) usable (EADDRNOTAVAIL), e.g. just added."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return cls(address, handler)
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL or time.monotonic() > deadline:
                raise OSError(exc.errno, f"bind {address}: {exc.strerror}") from None
            time.sleep(0.05)


def _peer(addr) -> tuple[str, int]:
    host = addr[0]
    if host.startswith("::ffff:"):
        host = host[7:]
    return host, addr[1]


class RealServers:
    """HTTP (80), line echo (8080), bulk sink (9000) on every address, UDP echo (9053) on the VIPs.

    Every reply starts with the real's name.
    """

    def __init__(self, netns: str, name: str, vips: Sequence[str]) -> None:
        self.netns = netns
        self.name = name
        self.log = RealLog()
        self._servers: list = []
        nm, log = name.encode(), self.log

        class Http(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                log.http.append(_peer(self.client_address))
                body = nm + b"\n"
                self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nX-Real: " + nm +
                                 b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

        class Echo(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                log.echo.append(_peer(self.client_address))
                for line in self.rfile:
                    self.wfile.write(nm + b" " + line)

        class Bulk(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                total = 0
                while True:
                    chunk = self.request.recv(1 << 16)
                    if not chunk:
                        break
                    total += len(chunk)
                log.bulk.append((_peer(self.client_address), total))
                self.request.sendall(nm + b" %d\n" % total)

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                log.udp.append(_peer(self.client_address))
                sock.sendto(nm + b" " + data, self.client_address)

        try:
            with inside(netns):
                for port, handler in ((HTTP_PORT, Http), (ECHO_PORT, Echo), (BULK_PORT, Bulk)):
                    self._servers.append(_Tcp6Server(("::", port), handler))
                for vip in vips:
                    cls = type("UdpV", (_Udp,), {"address_family": socket.AF_INET6 if ":" in vip else socket.AF_INET})
                    self._servers.append(_bind_retry(cls, (vip, UDP_PORT), Udp))
        except BaseException:
            for srv in self._servers:
                srv.server_close()
            raise
        for srv in self._servers:
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()

    def stop_http(self) -> None:
        """Stop the HTTP service only (a real whose web server died; its host stays up)."""
        http = self._servers[0]
        http.shutdown()
        http.server_close()

    def start_http(self) -> None:
        """Start the HTTP service again after :meth:`stop_http`."""
        handler = self._servers[0].RequestHandlerClass
        with inside(self.netns):
            self._servers[0] = _bind_retry(_Tcp6Server, ("::", HTTP_PORT), handler)
        threading.Thread(target=self._servers[0].serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()

    def close(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        self._servers.clear()


# ---------------------------------------------------------------------- client
def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _sock(netns: str, addr: str, kind: int, bind: Optional[str] = None, sport: int = 0,
          timeout: float = 3.0) -> socket.socket:
    with inside(netns):
        s = socket.socket(_family(addr), kind)
    s.settimeout(timeout)
    if bind or sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((bind or ("::" if ":" in addr else "0.0.0.0"), sport))
    return s


def http_get(netns: str, vip: str, port: int = HTTP_PORT, *, bind: Optional[str] = None,
             timeout: float = 3.0) -> str:
    """GET / from the VIP; returns the name of the real that answered."""
    with contextlib.closing(_sock(netns, vip, socket.SOCK_STREAM, bind, timeout=timeout)) as s:
        s.connect((vip, port))
        host = f"[{vip}]" if ":" in vip else vip
        s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        raise KatranError(f"bad HTTP answer from {vip}: {data[:60]!r}")
    return body.decode().strip()


class EchoSession:
    """A long-lived TCP connection to the echo service: ``ask(text)`` -> real name."""

    def __init__(self, netns: str, vip: str, port: int = ECHO_PORT, timeout: float = 5.0) -> None:
        self.sock = _sock(netns, vip, socket.SOCK_STREAM, timeout=timeout)
        self.sock.connect((vip, port))
        self.local = self.sock.getsockname()[:2]
        self._rfile = self.sock.makefile("rb")

    def ask(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\n")
        line = self._rfile.readline()
        if not line:
            raise ConnectionError("echo session closed by the peer")
        name, _, echoed = line.decode().rstrip("\n").partition(" ")
        if echoed != text:
            raise KatranError(f"echo mismatch: sent {text!r}, got {echoed!r}")
        return name

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._rfile.close()
            self.sock.close()


class TrafficProbe:
    """Established echo sessions asked in a loop, plus a new connection per round.

    ``broken``: established sessions that failed; ``refused``: new connections that failed;
    ``stall``: the longest time between two successful rounds.
    """

    def __init__(self, netns: str, vip: str, n: int = 8) -> None:
        self.netns, self.vip = netns, vip
        self.sessions = []
        for _ in range(n):
            s = EchoSession(netns, vip)
            self.sessions.append([s, s.ask("first"), True])
        self.broken = 0
        self.refused = 0
        self.rounds = 0
        self.stall = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TrafficProbe":
        self._thread.start()
        return self

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            for entry in self.sessions:
                s, name, ok = entry
                if not ok:
                    continue
                try:
                    if s.ask(f"r{self.rounds}") != name:
                        raise ConnectionError("moved to another real")
                except Exception:
                    entry[2] = False
                    self.broken += 1
            try:
                fresh = EchoSession(self.netns, self.vip, timeout=3.0)
                try:
                    fresh.ask("new")
                finally:
                    fresh.close()
            except Exception:
                self.refused += 1
            now = time.monotonic()
            self.stall = max(self.stall, now - last)
            last = now
            self.rounds += 1
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)
        for s, _, _ in self.sessions:
            s.close()


def bulk_send(netns: str, vip: str, nbytes: int, port: int = BULK_PORT, timeout: float = 20.0) -> tuple[str, int, float]:
    """Send ``nbytes`` over one TCP session; returns (real, bytes the real counted, seconds)."""
    chunk = os.urandom(1 << 16)
    t0 = time.monotonic()
    with contextlib.closing(_sock(netns, vip, socket.SOCK_STREAM, timeout=timeout)) as s:
        s.connect((vip, port))
        left = nbytes
        while left > 0:
            n = s.send(chunk[: min(left, len(chunk))])
            left -= n
        s.shutdown(socket.SHUT_WR)
        reply = s.makefile("rb").readline().decode().split()
    return reply[0], int(reply[1]), time.monotonic() - t0


def udp_query(netns: str, vip: str, payload: str = "ping", *, port: int = UDP_PORT, sport: int = 0,
              bind: Optional[str] = None, timeout: float = 1.0, tries: int = 3) -> Optional[str]:
    """One UDP request/response from (``bind``, ``sport``); returns the real's name or None."""
    with contextlib.closing(_sock(netns, vip, socket.SOCK_DGRAM, bind, sport, timeout)) as s:
        s.connect((vip, port))  # only answers from the VIP are accepted
        for _ in range(tries):
            s.send(payload.encode())
            try:
                name, _, echoed = s.recv(2048).decode().partition(" ")
            except (socket.timeout, ConnectionRefusedError):
                continue
            if echoed == payload:
                return name
    return None


# --------------------------------------------------------------------- capture
ETH_P_ALL = 0x0003


class Capture:
    """Frames seen on one interface of a namespace (both directions), captured in a thread."""

    def __init__(self, netns: str, ifname: str, limit: int = 20000) -> None:
        with inside(netns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.sock.bind((ifname, 0))
        self.sock.settimeout(0.1)
        self.where = f"{netns}/{ifname}"
        self.frames: list[tuple[int, bytes]] = []  # (pkttype, frame)
        self._limit = limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(self.frames) < self._limit:
                self.frames.append((addr[2], data[:256]))

    def stop(self, settle: float = 0.2) -> list[tuple[int, bytes]]:
        if not self._stop.is_set():
            time.sleep(settle)
            self._stop.set()
            self._thread.join()
            self.sock.close()
        return self.frames


@attrs.frozen
class Packet:
    """A decoded frame: outer header, and the inner one when it is IP-in-IP."""

    outgoing: bool
    src: str
    dst: str
    encap: Optional[str]  # "ipip", "ip6ip6", "4in6" or None
    inner_src: Optional[str] = None
    inner_dst: Optional[str] = None
    proto: Optional[int] = None  # of the innermost header
    sport: Optional[int] = None
    dport: Optional[int] = None
    payload: bytes = b""


def decode(frames: Sequence[tuple[int, bytes]]) -> list[Packet]:
    """IP frames only (ARP/ND skipped)."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    out = []
    for pkttype, raw in frames:
        eth = Ether(raw)
        outer = eth.payload  # not getlayer(IP): for 4in6 that would be the inner header
        if not isinstance(outer, (IP, IPv6)):
            continue
        inner, encap = outer.payload, None
        if isinstance(inner, (IP, IPv6)):
            encap = {(IP, IP): "ipip", (IPv6, IPv6): "ip6ip6", (IPv6, IP): "4in6"}.get((type(outer), type(inner)))
        else:
            inner = None
        top = inner if inner is not None else outer
        l4 = top.payload
        proto = top.proto if isinstance(top, IP) else top.nh
        sport = getattr(l4, "sport", None)
        dport = getattr(l4, "dport", None)
        payload = bytes(l4.payload) if sport is not None else b""
        out.append(Packet(pkttype == socket.PACKET_OUTGOING, outer.src, outer.dst, encap,
                          inner.src if inner is not None else None, inner.dst if inner is not None else None,
                          proto, sport, dport, payload))
    return out
