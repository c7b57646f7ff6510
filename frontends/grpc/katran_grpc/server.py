"""katran-server-grpc: Katran's example gRPC server, in Python.

Takes the flags of Katran's ``katran_server_grpc`` (Go style ``-flag=value``
/ ``-flag value``, or GNU style ``--flag``), builds a ``KatranConfig``,
starts a ``KatranLb`` and serves ``lb.katran.KatranService`` (Katran's API),
``lb.katran.ext.KatranExtService`` (our extensions), the gRPC health service
and server reflection.

Differences from Katran's server: listens on 127.0.0.1:50051 by default,
optional TLS / mTLS, ``-testing`` loads the programs without attaching them.
"""

from __future__ import annotations

import sys
import time
from concurrent import futures
from typing import Any, Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from katran.errors import ValidationError
from katran_frontend import GRPC_DEFAULT_SERVER
from katran_frontend import server as lifecycle
from katran_frontend.goflags import FlagSet
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


class KatranGrpcServer:
    """A grpc.Server serving both katran services over ``lb`` (not started yet).

    The port is bound in the constructor (port 0 picks a free one; see
    ``address``).  ``lb`` is neither started nor closed here.
    """

    def __init__(self, lb, address: str = DEFAULT_ADDRESS, *, credentials: Optional[grpc.ServerCredentials] = None,
                 max_workers: int = 8, rpc_metrics=None) -> None:
        interceptors = []
        if rpc_metrics is not None:  # katran.metrics.RpcMetrics: every RPC counted and timed
            from .metrics import RpcMetricsInterceptor

            interceptors.append(RpcMetricsInterceptor(rpc_metrics))
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="katran-grpc"),
            options=[("grpc.so_reuseport", 0)],  # a busy port must be an error
            interceptors=interceptors,
        )
        add_services(self._server, lb)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        for name in ("", KATRAN_SERVICE, EXT_SERVICE):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection(
            (KATRAN_SERVICE, EXT_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        try:
            if credentials is None:
                port = self._server.add_insecure_port(address)
            else:
                port = self._server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise ServerError(f"cannot listen on {address}: {exc}") from None
        if not port:
            raise ServerError(f"cannot listen on {address}")
        host = address.rsplit(":", 1)[0]
        self.port: int = port
        self.address: str = f"{host}:{port}"
        self._stopped = False

    def start(self) -> None:
        self._server.start()

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

    def wait_for_termination(self, timeout: Optional[float] = None) -> bool:
        return self._server.wait_for_termination(timeout)


class _Serving(lifecycle.Serving):
    def __init__(self, server: KatranGrpcServer) -> None:
        self.server = server
        self.address = server.address

    def start(self) -> None:
        self.server.start()

    def stop(self, delay_ms: int) -> None:
        self.server.stop(delay_ms)

    def abort(self) -> None:
        self.server.stop()


class GrpcTransport(lifecycle.Transport):
    """katran-server-grpc's part of the lifecycle: TLS and worker flags, a KatranGrpcServer."""

    prog = PROG
    summary = "katran gRPC server (Katran-compatible lb.katran.KatranService)"
    default_server = DEFAULT_ADDRESS
    server_help = "Service server:port (Katran's default is 0.0.0.0:50051)"
    log_starting = True
    frontend = "grpc"

    def add_flags(self, fs: FlagSet) -> None:
        fs.string("tls_cert", "", "PEM server certificate (enables TLS; needs -tls_key)")
        fs.string("tls_key", "", "PEM private key of -tls_cert")
        fs.string("tls_client_ca", "", "PEM CA bundle: require client certificates signed by it (mTLS)")
        fs.int("workers", 8, "gRPC worker threads")

    def prepare(self, ns) -> Optional[grpc.ServerCredentials]:
        return server_credentials(ns.tls_cert, ns.tls_key, ns.tls_client_ca)

    def bind(self, lb, ns, prepared: Any, rpc_metrics=None) -> lifecycle.Serving:
        return _Serving(KatranGrpcServer(lb, ns.server, credentials=prepared, max_workers=ns.workers,
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
