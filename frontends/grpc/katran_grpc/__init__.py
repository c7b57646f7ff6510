"""gRPC frontend of katran: Katran's KatranService (lb.katran) plus our
KatranExtService (lb.katran.ext), the katran-server-grpc server and the
katran-cli client.

The generated stubs (``katran_pb2``, ``katran_ext_pb2`` and their ``_grpc``
modules) are committed; regenerate them with ``frontends/grpc/regen.sh``.
"""

KATRAN_SERVICE = "lb.katran.KatranService"
EXT_SERVICE = "lb.katran.ext.KatranExtService"

# Trailing metadata keys carrying the reason of a failed call.
ERROR_KEY = "katran-error"
ERROR_CODE_KEY = "katran-error-code"

__all__ = ["KATRAN_SERVICE", "EXT_SERVICE", "ERROR_KEY", "ERROR_CODE_KEY"]
