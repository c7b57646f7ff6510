"""katran-server-thrift: KatranService over Apache Thrift.

One port accepts every common client dialect: THeader (binary or compact
payload, what fbthrift clients send), framed and unframed (buffered)
transports, each with the binary or the compact protocol.  The dialect is
detected per message and the reply is written in the same dialect.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import sys
import threading
from typing import List, Optional, Sequence, Set, Tuple

from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.transport.THeaderTransport import THeaderClientType
from thrift.transport.TSocket import TSocket
from thrift.transport.TTransport import TTransportException

from .gen import KatranService
from .handler import KatranThriftHandler

log = logging.getLogger("katran_thrift.server")

DEFAULT_SERVER = "127.0.0.1:12307"


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
# command line: the flags of katran-server-grpc (Katran's names and defaults),
# parsed by the same Go-style parser (-flag=value, -flag value, --flag, --fl-ag)

PROG = "katran-server-thrift"

def build_flags():
    """Katran's example-server flags plus ours, the same as katran-server-grpc has them."""
    from katran.goflags import FlagSet
    from katran.server_flags import add_server_flags

    fs = FlagSet(PROG, "katran thrift server (Katran-compatible lb.katran KatranService)")
    return add_server_flags(fs, DEFAULT_SERVER, "Service server:port (Katran's thrift example port is 12307)")


def config_from_flags(ns):
    from katran.server_flags import config_from_flags as from_flags

    return from_flags(ns)


def _error_line(exc: BaseException) -> str:
    from katran.server_flags import error_line

    return error_line(PROG, exc)


class _StartupError(Exception):
    """The server cannot start (bad -server, port in use, not root)."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of katran-server-thrift; returns the exit status."""
    from katran.server_flags import parse_server_flags

    ns, status = parse_server_flags(build_flags(), sys.argv[1:] if argv is None else argv, PROG)
    if ns is None:
        return status

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from katran import KatranError, KatranLb

    lb = None
    server = None
    endpoint = None
    try:
        config = config_from_flags(ns)
        try:
            host, port = parse_host_port(ns.server)
        except ValueError as exc:
            raise _StartupError(f"-server: {exc}") from None
        if ns.shutdown_delay < 0:
            raise _StartupError(f"-shutdown_delay={ns.shutdown_delay}: must not be negative")
        if os.geteuid() != 0:
            raise _StartupError("must run as root (loading and attaching BPF programs needs CAP_BPF/CAP_NET_ADMIN)")
        lb = KatranLb(config)
        handler = KatranThriftHandler(lb)
        if ns.metrics_addr:
            from katran.metrics import MetricsEndpoint

            from .metrics import instrumented

            endpoint = MetricsEndpoint(lb, ns.metrics_addr, "thrift")
            handler = instrumented(handler, endpoint.rpc)
        try:
            server = KatranThriftServer(handler, host, port)
        except OSError as exc:
            raise _StartupError(f"cannot listen on {ns.server}: {exc.strerror or exc}") from None
        lb.start()
        if endpoint is not None:
            endpoint.start()
    except (KatranError, _StartupError, OSError) as exc:
        if endpoint is not None:
            endpoint.stop()
        if server is not None:
            server.shutdown()
            server.serve_forever()  # returns at once: releases the socket
        if lb is not None:
            try:
                lb.close()
            except KatranError:
                pass
        print(_error_line(exc), file=sys.stderr)
        return 1

    scheduled = threading.Event()

    def on_signal(signum: int, _frame) -> None:
        if scheduled.is_set():
            log.info("Ignoring signal %d: shutdown already scheduled", signum)
            return
        scheduled.set()
        log.info("Signal %d, stopping service in %d milliseconds.", signum, ns.shutdown_delay)
        timer = threading.Timer(ns.shutdown_delay / 1000.0, server.shutdown)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    bound_host, bound_port = server.address
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"Server listening on {shown}:{bound_port}", flush=True)
    if endpoint is not None:
        print(f"Metrics on {endpoint.url}", flush=True)
    status = 0
    try:
        server.serve_forever()
    finally:
        if endpoint is not None:
            endpoint.stop()
        log.info("Stopping Katran!")
        try:
            lb.close()
        except KatranError as exc:
            print(_error_line(exc), file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
