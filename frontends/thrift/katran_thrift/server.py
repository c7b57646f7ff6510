"""katran-server-thrift: KatranService over Apache Thrift.

One port accepts every common client dialect: THeader (binary or compact
payload, what fbthrift clients send), framed and unframed (buffered)
transports, each with the binary or the compact protocol.  The dialect is
detected per message and the reply is written in the same dialect.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import sys
import threading
import time
from typing import Optional, Sequence, Tuple

from katran.errors import ValidationError
from katran_frontend import THRIFT_DEFAULT_SERVER
from katran_frontend import server as lifecycle
from katran_frontend.security import (
    add_transport_flags, limits_from_flags, prepare_unix_socket, secure_unix_socket, token_from_flags, unix_path,
)
from katran_frontend.server_flags import config_from_flags  # noqa: F401  (the server's flags -> KatranConfig)

from .gen import KatranService
from .handler import KatranThriftHandler
from .transport import ServerLimits, ThriftTransportServer

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

def parse_host_port(text: str) -> Tuple[str, int]:
    """'host:port', '[v6]:port' or ':port' -> (host, port); ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port or unix:PATH, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def tls_server_context(cert: str = "", key: str = "", client_ca: str = "") -> Optional[ssl.SSLContext]:
    """A server TLS context from PEM files, or None for plaintext; client_ca
    requires client certificates signed by it (mTLS).  Same flags as the gRPC server."""
    if not (cert or key or client_ca):
        return None
    if not cert or not key:
        raise ValidationError("tls_cert" if not cert else "tls_key", cert or key or "",
                              "TLS needs both -tls_cert and -tls_key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ValidationError("tls_cert", cert, f"cannot load certificate/key: {reason}") from None
    if client_ca:
        try:
            ctx.load_verify_locations(client_ca)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise ValidationError("tls_client_ca", client_ca, f"cannot load: {reason}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class KatranThriftServer:
    """KatranService on one listener (TCP ``host``/``port``, or ``host="unix:PATH"``),
    all dialects, limits, TLS and token as in ``transport.ThriftTransportServer``."""

    def __init__(self, handler: KatranService.Iface, host: str = "127.0.0.1", port: int = 12307, *,
                 limits: ServerLimits = ServerLimits(), ssl_context: Optional[ssl.SSLContext] = None,
                 token: Optional[bytes] = None) -> None:
        processor = KatranService.Processor(handler)
        root = logging.getLogger()
        if _QUIET_FILTER not in root.filters:
            root.addFilter(_QUIET_FILTER)
        path = unix_path(host)
        listener = self._listen_unix(path) if path is not None else self._listen(host, port)
        self.unix_path: Optional[str] = path
        if path is not None:
            self.address = path
        else:
            self.address: Tuple[str, int] = listener.getsockname()[:2]
        self._core = ThriftTransportServer(processor, listener, limits=limits, ssl_context=ssl_context, token=token)
        self.processor = processor
        self.limits = limits

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

    @staticmethod
    def _listen_unix(path: str) -> socket.socket:
        prepare_unix_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # born 0600: never reachable before secure_unix_socket
        try:
            sock.bind(path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        try:
            secure_unix_socket(path)
            sock.listen(128)
        except OSError:
            sock.close()
            os.unlink(path)
            raise
        return sock

    @property
    def port(self) -> int:
        return 0 if self.unix_path is not None else self.address[1]

    @property
    def connections(self) -> int:
        """Connections open now."""
        return self._core.connections

    def display_address(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def serve_forever(self) -> None:
        """Accept and serve connections until ``shutdown()``."""
        try:
            self._core.serve_forever()
        finally:
            if self.unix_path is not None:
                try:
                    os.unlink(self.unix_path)
                except OSError:
                    pass

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests); returns the thread."""
        thread = threading.Thread(target=self.serve_forever, name="katran-thrift-server", daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        """Stop accepting, close every connection; safe from any thread, idempotent."""
        self._core.shutdown()


# ---------------------------------------------------------------------------
# command line: the flags of katran-server-grpc (Katran's names and defaults), parsed by
# the same Go-style parser (-flag=value, -flag value, --flag, --fl-ag), and the shared
# server lifecycle of katran_frontend.server

PROG = "katran-server-thrift"


class _Serving(lifecycle.Serving):
    """A KatranThriftServer served from a background thread."""

    def __init__(self, server: KatranThriftServer) -> None:
        self.server = server
        self.address = server.display_address()
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
    """katran-server-thrift's part of the lifecycle: -server as unix:PATH or host:port, TLS, token
    and limits flags, a KatranThriftServer."""

    prog = PROG
    summary = "katran thrift server (Katran-compatible lb.katran KatranService)"
    default_server = DEFAULT_SERVER
    example_port = 12307
    server_help = ("Service address: unix:PATH or host:port (Katran's thrift example port is 12307; "
                   "a TCP listener needs -tls_client_ca, -token_file or -insecure)")
    frontend = "thrift"

    def add_flags(self, fs) -> None:
        add_transport_flags(fs, "thrift")

    def prepare(self, ns) -> dict:
        if unix_path(ns.server) is not None:
            host, port = ns.server, 0
        else:
            try:
                host, port = parse_host_port(ns.server)
            except ValueError as exc:
                raise lifecycle.StartupError(f"-server: {exc}") from None
        if ns.shutdown_delay < 0:
            raise lifecycle.StartupError(f"-shutdown_delay={ns.shutdown_delay}: must not be negative")
        return dict(host=host, port=port, limits=limits_from_flags(ns, ServerLimits, "thrift"),
                    ssl_context=tls_server_context(ns.tls_cert, ns.tls_key, ns.tls_client_ca),
                    token=token_from_flags(ns))

    def bind(self, lb, ns, prepared: dict, rpc_metrics=None) -> lifecycle.Serving:
        handler = KatranThriftHandler(lb)
        if rpc_metrics is not None:  # katran.metrics.RpcMetrics: every RPC counted and timed
            from .metrics import instrumented

            handler = instrumented(handler, rpc_metrics)
        try:
            return _Serving(KatranThriftServer(handler, **prepared))
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
