"""RPC metrics of the thrift server: a handler wrapper feeding ``katran.metrics.RpcMetrics``.

``instrumented(handler, rpc_metrics)`` returns an object with the handler's methods,
each counted by method and status and timed. The status of a failed call is named
after the katran error behind the TApplicationException (``NOT_FOUND``,
``INVALID_ARGUMENT``, ... as the gRPC server reports them).
"""

from __future__ import annotations

import functools
import time

from katran.metrics import status_for_exception


def _status(exc: BaseException) -> str:
    return status_for_exception(getattr(exc, "katran_error", None) or exc)


class instrumented:  # noqa: N801 - used like a function
    """A proxy of a thrift handler whose public methods record ``rpc_metrics``."""

    def __init__(self, handler, rpc_metrics) -> None:
        self._handler = handler
        self._metrics = rpc_metrics

    def __getattr__(self, name: str):
        attr = getattr(self._handler, name)
        if name.startswith("_") or not callable(attr):
            return attr
        observe = self._metrics.observe

        @functools.wraps(attr)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                result = attr(*args, **kwargs)
            except BaseException as exc:
                observe(name, _status(exc), time.perf_counter() - start)
                raise
            observe(name, "OK", time.perf_counter() - start)
            return result

        setattr(self, name, timed)  # wrap once
        return timed
