"""RPC metrics of the gRPC server: a server interceptor feeding ``katran.metrics.RpcMetrics``.

Every unary RPC is counted by method and status and timed. The status is the code the
service names in the ``katran-error-code`` trailer of a failed RPC (``ALREADY_EXISTS``,
``NOT_FOUND``, ...: Katran's ``Bool`` RPCs answer CANCELLED for every failure, so the
trailer tells more), else the gRPC status code name.
"""

from __future__ import annotations

import time

import grpc

from . import ERROR_CODE_KEY


def _status(context: grpc.ServicerContext, failed: bool) -> str:
    """The katran error code of a failed RPC when the service named one (Katran's Bool RPCs
    answer CANCELLED for every failure), else the gRPC status code."""
    for key, value in context.trailing_metadata() or ():
        if key == ERROR_CODE_KEY:
            return str(value)
    code = context.code()
    if code is not None and code != grpc.StatusCode.OK:
        return code.name
    return "UNKNOWN" if failed else "OK"


class RpcMetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times the unary RPCs of a server into ``rpc_metrics`` (katran.metrics.RpcMetrics)."""

    def __init__(self, rpc_metrics) -> None:
        self._metrics = rpc_metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streams (reflection, health watch) pass untouched
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary
        observe = self._metrics.observe

        def timed(request, context):
            start = time.perf_counter()
            failed = True
            try:
                response = inner(request, context)
                failed = False
                return response
            finally:
                observe(method, _status(context, failed), time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            timed, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
