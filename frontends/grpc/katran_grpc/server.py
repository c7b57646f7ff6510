"""katran-server-grpc: Katran's example gRPC server, in Python.

Takes the flags of Katran's ``katran_server_grpc`` (Go style ``-flag=value``
/ ``-flag value``, or GNU style ``--flag``), builds a ``KatranConfig``,
starts a ``KatranLb`` and serves ``lb.katran.KatranService`` (Katran's API),
``lb.katran.ext.KatranExtService`` (our extensions), the gRPC health service
and server reflection.

Differences from Katran's server: listens on the unix socket
/run/katran/katran-grpc.sock by default (mode 0660), a TCP listener needs
TLS client certificates or a bearer token unless ``-insecure``
(docs/security.md), explicit transport limits, ``-testing`` loads the
programs without attaching them.
"""

from __future__ import annotations

import hmac
import os
import sys
import time
from concurrent import futures
from typing import Any, Optional

import attrs
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from katran.errors import ValidationError
from katran_frontend import GRPC_DEFAULT_SERVER
from katran_frontend import server as lifecycle
from katran_frontend.goflags import FlagSet
from katran_frontend.security import (
    add_transport_flags, limits_from_flags, prepare_unix_socket, secure_unix_socket, token_from_flags, unix_path,
)
from katran_frontend.server_flags import config_from_flags  # noqa: F401  (the server's flags -> KatranConfig)

from . import EXT_SERVICE, KATRAN_SERVICE
from .service import add_services

PROG = "katran-server-grpc"
DEFAULT_ADDRESS = GRPC_DEFAULT_SERVER


class ServerError(lifecycle.StartupError):
    """The gRPC server could not be set up (bind failure, bad TLS files, ...)."""


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValidationError(flag, path, f"cannot read: {exc.strerror}") from None


def server_credentials(cert: str = "", key: str = "", client_ca: str = "") -> Optional[grpc.ServerCredentials]:
    """TLS credentials from PEM files, or None for plaintext.  client_ca turns on mTLS."""
    if not (cert or key or client_ca):
        return None
    if not cert or not key:
        raise ValidationError("tls_cert" if not cert else "tls_key", cert or key or "", "TLS needs both -tls_cert and -tls_key")
    cert_pem = _read(cert, "tls_cert")
    pair = (_read(key, "tls_key"), cert_pem)
    ca = _read(client_ca, "tls_client_ca") if client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


@attrs.frozen
class GrpcLimits:
    """Transport limits of the gRPC server (sizes in bytes, times in seconds)."""

    max_message_size: int = 4 << 20  # one request; replies are not limited (they are our own state)
    workers: int = 8  # threads running RPCs
    max_concurrent_rpcs: int = 64  # running + queued; beyond: RESOURCE_EXHAUSTED at once
    max_concurrent_streams: int = 16  # per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)
    max_connections: int = 256
    idle_timeout: float = 300.0  # a connection without RPCs is closed (GOAWAY) after this
    keepalive_time: float = 60.0  # ping a quiet client this often...
    keepalive_timeout: float = 20.0  # ...and drop it if the ping is not answered in this time

    def __attrs_post_init__(self) -> None:
        for name in ("max_message_size", "workers", "max_concurrent_rpcs", "max_concurrent_streams",
                     "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        for name in ("idle_timeout", "keepalive_time", "keepalive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be positive")

    def channel_options(self) -> list:
        ms = lambda seconds: max(1, int(seconds * 1000))  # noqa: E731
        return [
            ("grpc.so_reuseport", 0),  # a busy port must be an error
            ("grpc.max_receive_message_length", self.max_message_size),
            ("grpc.max_send_message_length", -1),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.max_connection_idle_ms", ms(self.idle_timeout)),
            ("grpc.keepalive_time_ms", ms(self.keepalive_time)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout)),
            # clients may keep their connection alive with pings, at most one every 10 s
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 2),
        ]


class _TokenCheck(grpc.ServerInterceptor):
    """Every RPC must carry ``authorization: Bearer <token>`` metadata."""

    def __init__(self, token: bytes) -> None:
        self._expected = b"Bearer " + token

    def intercept_service(self, continuation, handler_call_details):
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                given = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
                if hmac.compare_digest(given, self._expected):
                    return continuation(handler_call_details)
                break
        return _DENIED


def _deny(request, context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token (metadata 'authorization: Bearer ...')")


_DENIED = grpc.unary_unary_rpc_method_handler(_deny)


class KatranGrpcServer:
    """A grpc.Server serving both katran services over ``lb`` (not started yet).

    The port is bound in the constructor (port 0 picks a free one; see
    ``address``); ``unix:PATH`` listens on a unix socket with mode 0660
    (docs/security.md).  ``token``: TCP clients must send it as a bearer token.
    ``lb`` is neither started nor closed here.
    """

    def __init__(self, lb, address: str = DEFAULT_ADDRESS, *, credentials: Optional[grpc.ServerCredentials] = None,
                 max_workers: Optional[int] = None, limits: GrpcLimits = GrpcLimits(),
                 token: Optional[bytes] = None, rpc_metrics=None) -> None:
        if max_workers is not None:
            limits = attrs.evolve(limits, workers=max_workers)
        self.limits = limits
        path = unix_path(address)
        self.unix_path: Optional[str] = path
        interceptors = [_TokenCheck(token)] if token and path is None else []
        if rpc_metrics is not None:  # katran.metrics.RpcMetrics: every RPC counted and timed
            from .metrics import RpcMetricsInterceptor

            interceptors.append(RpcMetricsInterceptor(rpc_metrics))
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="katran-grpc"),
            options=limits.channel_options(),
            interceptors=interceptors,
            maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
        )
        self.ext = add_services(self._server, lb)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        for name in ("", KATRAN_SERVICE, EXT_SERVICE):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection(
            (KATRAN_SERVICE, EXT_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        if path is not None:
            try:
                prepare_unix_socket(path)
            except (ValidationError, OSError) as exc:
                raise ServerError(f"cannot listen on {address}: {exc}") from None
        old_umask = os.umask(0o177) if path is not None else None  # the socket is born 0600
        try:
            if credentials is None:
                port = self._server.add_insecure_port(address)
            else:
                port = self._server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise ServerError(f"cannot listen on {address}: {exc}") from None
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if not port:
            raise ServerError(f"cannot listen on {address}")
        if path is not None:
            try:
                secure_unix_socket(path)
            except OSError as exc:
                raise ServerError(f"cannot set the permissions of {path}: {exc.strerror}") from None
            self.port = 0
            self.address = f"unix:{path}"
        else:
            host = address.rsplit(":", 1)[0]
            self.port: int = port
            self.address: str = f"{host}:{port}"
        self._stopped = False

    def start(self) -> None:
        self._server.start()

    def set_serving(self, serving: bool) -> None:
        """gRPC health of every service: SERVING, or NOT_SERVING (our XDP program is not attached)."""
        if self._stopped:
            return
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", KATRAN_SERVICE, EXT_SERVICE):
            self._health.set(name, status)

    def stop(self, delay_ms: int = 0) -> None:
        """Stop accepting RPCs now; return once ``delay_ms`` has passed and
        in-flight RPCs are done (they get ``delay_ms`` to finish)."""
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + max(delay_ms, 0) / 1000.0
        self._health.enter_graceful_shutdown()
        done = self._server.stop(grace=max(delay_ms, 0) / 1000.0 or None)
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        done.wait()
        if self.unix_path is not None:
            try:
                os.unlink(self.unix_path)
            except OSError:
                pass

    def wait_for_termination(self, timeout: Optional[float] = None) -> bool:
        return self._server.wait_for_termination(timeout)


class _Serving(lifecycle.Serving):
    def __init__(self, server: KatranGrpcServer) -> None:
        self.server = server
        self.address = server.address

    def set_daemon(self, daemon) -> None:
        self.server.ext.daemon = daemon

    def start(self) -> None:
        self.server.start()

    def stop(self, delay_ms: int) -> None:
        self.server.stop(delay_ms)

    def abort(self) -> None:
        self.server.stop()

    def set_serving(self, serving: bool) -> None:
        self.server.set_serving(serving)


class GrpcTransport(lifecycle.Transport):
    """katran-server-grpc's part of the lifecycle: TLS, token, limits flags; a KatranGrpcServer."""

    prog = PROG
    summary = "katran gRPC server (Katran-compatible lb.katran.KatranService)"
    default_server = DEFAULT_ADDRESS
    server_help = ("Service address: unix:PATH or host:port (Katran's default is 0.0.0.0:50051; "
                   "a TCP listener needs -tls_client_ca, -token_file or -insecure)")
    log_starting = True
    frontend = "grpc"

    def add_flags(self, fs: FlagSet) -> None:
        add_transport_flags(fs, "grpc")

    def prepare(self, ns) -> tuple:
        credentials = server_credentials(ns.tls_cert, ns.tls_key, ns.tls_client_ca)
        return credentials, limits_from_flags(ns, GrpcLimits, "grpc"), token_from_flags(ns)

    def bind(self, lb, ns, prepared: Any, rpc_metrics=None) -> lifecycle.Serving:
        credentials, limits, token = prepared
        return _Serving(KatranGrpcServer(lb, ns.server, credentials=credentials, limits=limits, token=token,
                                         rpc_metrics=rpc_metrics))


GRPC = GrpcTransport()


def build_flags() -> FlagSet:
    """The server's flags: Katran's names and defaults, our extras, then gRPC's transport options."""
    return GRPC.build_flags()


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of katran-server-grpc; returns the exit status."""
    return lifecycle.run(GRPC, argv)


if __name__ == "__main__":
    sys.exit(main())
