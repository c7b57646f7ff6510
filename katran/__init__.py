"""katran: an XDP/eBPF layer-4 load balancer with a Python control plane.

Packet-for-packet compatible with Meta's Katran.  The public API::

    from katran import KatranLb, KatranConfig, VipKey, Real
    with KatranLb(KatranConfig(main_interface="eth0", default_mac="..")) as lb:
        vip = VipKey("10.0.0.10", 80, "tcp")
        lb.add_vip(vip)
        lb.add_real_for_vip(Real("10.0.1.1"), vip)
"""

from .config import KatranConfig
from .errors import (
    AlreadyExistsError,
    BuildError,
    CapacityError,
    FeatureNotEnabledError,
    KatranError,
    KernelError,
    NotFoundError,
    ValidationError,
)
from .healthcheck import HcStats
from .lb import KatranLb
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
    "ModifyAction", "NotFoundError", "PacketResult", "QuicReal", "Real", "RealFlag",
    "ValidationError", "VipFlag", "VipKey",
]
__version__ = "0.1.0"
