"""katran-server-thrift: KatranService over Apache Thrift.

One port accepts every common client dialect: THeader (binary or compact
payload, what fbthrift clients send), framed and unframed (buffered)
transports, each with the binary or the compact protocol.  The dialect is
detected per message and the reply is written in the same dialect.
"""

from __future__ import annotations

import logging
import selectors
import socket
import sys
import threading
import time
from typing import List, Optional, Sequence, Set, Tuple

from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.transport.THeaderTransport import THeaderClientType
from thrift.transport.TSocket import TSocket
from thrift.transport.TTransport import TTransportException

from katran_frontend import THRIFT_DEFAULT_SERVER
from katran_frontend import server as lifecycle
from katran_frontend.server_flags import config_from_flags  # noqa: F401  (the server's flags -> KatranConfig)

from .gen import KatranService
from .handler import KatranThriftHandler

log = logging.getLogger("katran_thrift.server")

DEFAULT_SERVER = THRIFT_DEFAULT_SERVER


class _QuietHandlerErrors(logging.Filter):
    """The generated processor logs (on the root logger) a traceback for every
    call that failed with a TApplicationException; the handler already logged
    one line for it, so drop exactly those records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.msg == "TApplication exception in handler"
            and record.pathname.endswith(("KatranService.py", "KatranService.pyc"))
        )


_QUIET_FILTER = _QuietHandlerErrors()

ALL_CLIENT_TYPES = (
    THeaderClientType.HEADERS,
    THeaderClientType.FRAMED_BINARY,
    THeaderClientType.UNFRAMED_BINARY,
    THeaderClientType.FRAMED_COMPACT,
    THeaderClientType.UNFRAMED_COMPACT,
)


def parse_host_port(text: str) -> Tuple[str, int]:
    """'host:port', '[v6]:port' or ':port' -> (host, port); ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


class KatranThriftServer:
    """Threaded thrift server: one thread per connection, all dialects on one port."""

    def __init__(self, handler: KatranService.Iface, host: str = "127.0.0.1", port: int = 12307) -> None:
        self.processor = KatranService.Processor(handler)
        root = logging.getLogger()
        if _QUIET_FILTER not in root.filters:
            root.addFilter(_QUIET_FILTER)
        self._listener = self._listen(host, port)
        self.address: Tuple[str, int] = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: Set[socket.socket] = set()
        self._threads: List[threading.Thread] = []

    @staticmethod
    def _listen(host: str, port: int) -> socket.socket:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and sockaddr[0] == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(sockaddr)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        return sock

    @property
    def port(self) -> int:
        return self.address[1]

    def serve_forever(self) -> None:
        """Accept and serve connections until ``shutdown()``."""
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._listener and not self._stopping.is_set():
                        self._accept()
        finally:
            sel.close()
            self._close_all()

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        with self._lock:
            self._conns.add(conn)
        thread = threading.Thread(target=self._serve_conn, args=(conn,), name="katran-thrift-conn", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _serve_conn(self, conn: socket.socket) -> None:
        trans = TSocket()
        trans.setHandle(conn)
        proto = THeaderProtocol(trans, ALL_CLIENT_TYPES)
        try:
            while not self._stopping.is_set():
                self.processor.process(proto, proto)
        except TTransportException:
            pass  # peer closed, or a frame we cannot parse: drop the connection
        except Exception:  # noqa: BLE001 - keep serving the other connections
            log.exception("connection error")
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests); returns the thread."""
        thread = threading.Thread(target=self.serve_forever, name="katran-thrift-server", daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        """Stop accepting, close every connection; safe from any thread, idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def _close_all(self) -> None:
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=5)
        self._wake_r.close()
        self._wake_w.close()


# ---------------------------------------------------------------------------
# command line: the flags of katran-server-grpc (Katran's names and defaults), parsed by
# the same Go-style parser (-flag=value, -flag value, --flag, --fl-ag), and the shared
# server lifecycle of katran_frontend.server

PROG = "katran-server-thrift"


class _Serving(lifecycle.Serving):
    """A KatranThriftServer served from a background thread."""

    def __init__(self, server: KatranThriftServer) -> None:
        self.server = server
        host, port = server.address
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = self.server.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, delay_ms: int) -> None:
        # as Katran's server: keep serving during the delay, then stop
        if delay_ms > 0:
            time.sleep(delay_ms / 1000.0)
        self.server.shutdown()
        if self._thread is not None:
            self._thread.join()

    def abort(self) -> None:
        self.server.shutdown()
        if self._thread is None:
            self.server.serve_forever()  # returns at once: releases the socket
        else:
            self._thread.join()


class ThriftTransport(lifecycle.Transport):
    """katran-server-thrift's part of the lifecycle: -server as host:port, a KatranThriftServer."""

    prog = PROG
    summary = "katran thrift server (Katran-compatible lb.katran KatranService)"
    default_server = DEFAULT_SERVER
    server_help = "Service server:port (Katran's thrift example port is 12307)"
    frontend = "thrift"

    def prepare(self, ns) -> Tuple[str, int]:
        try:
            host_port = parse_host_port(ns.server)
        except ValueError as exc:
            raise lifecycle.StartupError(f"-server: {exc}") from None
        if ns.shutdown_delay < 0:
            raise lifecycle.StartupError(f"-shutdown_delay={ns.shutdown_delay}: must not be negative")
        return host_port

    def bind(self, lb, ns, prepared: Tuple[str, int], rpc_metrics=None) -> lifecycle.Serving:
        handler = KatranThriftHandler(lb)
        if rpc_metrics is not None:  # katran.metrics.RpcMetrics: every RPC counted and timed
            from .metrics import instrumented

            handler = instrumented(handler, rpc_metrics)
        try:
            return _Serving(KatranThriftServer(handler, *prepared))
        except OSError as exc:
            raise lifecycle.StartupError(f"cannot listen on {ns.server}: {exc.strerror or exc}") from None


THRIFT = ThriftTransport()


def build_flags():
    """Katran's example-server flags plus ours, the same as katran-server-grpc has them."""
    return THRIFT.build_flags()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of katran-server-thrift; returns the exit status."""
    return lifecycle.run(THRIFT, argv)


if __name__ == "__main__":
    sys.exit(main())
