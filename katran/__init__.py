"""katran: an XDP/eBPF layer-4 load balancer with a Python control plane.

Packet-for-packet compatible with Meta's Katran.  The public API::

    from katran import KatranLb, KatranConfig, VipKey, Real
    with KatranLb(KatranConfig(main_interface="eth0", default_mac="..")) as lb:
        vip = VipKey("10.0.0.10", 80, "tcp")
        lb.add_vip(vip)
        lb.add_real_for_vip(Real("10.0.1.1"), vip)

``KatranLb`` and ``HcStats`` are imported on first use, so that ``import katran.models``
(the CLI) does not load numpy, the native module or libbpf.
"""

from typing import TYPE_CHECKING

from .config import KatranConfig
from .errors import (
    AlreadyExistsError,
    BuildError,
    CapacityError,
    FeatureNotEnabledError,
    KatranError,
    KernelError,
    NotFoundError,
    NotStartedError,
    ValidationError,
)
from .models import (
    Flow,
    HashFunction,
    LbStats,
    ModifyAction,
    PacketResult,
    QuicReal,
    Real,
    RealFlag,
    VipFlag,
    VipKey,
)

__all__ = [
    "AlreadyExistsError", "BuildError", "CapacityError", "FeatureNotEnabledError", "Flow",
    "HashFunction", "HcStats", "KatranConfig", "KatranError", "KatranLb", "KernelError", "LbStats",
    "ModifyAction", "NotFoundError", "NotStartedError", "PacketResult", "QuicReal", "Real", "RealFlag",
    "ValidationError", "VipFlag", "VipKey",
]
__version__ = "0.1.0"  # the one version source (pyproject reads it; every command's --version prints it)


def version_line(prog: str) -> str:
    """``<prog> <version>``: what ``--version`` / ``-version`` of every katran command prints."""
    return f"{prog} {__version__}"


def add_version_argument(parser, prog: str) -> None:
    """``--version`` and ``-version`` on an argparse parser."""
    parser.add_argument("--version", "-version", action="version", version=version_line(prog),
                        help="print the version and exit")

_LAZY = {"KatranLb": ".lb", "HcStats": ".healthcheck"}

if TYPE_CHECKING:
    from .healthcheck import HcStats
    from .lb import KatranLb


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
