"""Host discovery for the balancer: the seed's pre-run data collection (gateway MAC,
receive queues, IRQ pinning, NUMA nodes, BPF JIT, ...) as a library.

``gather()`` reads the facts from a :class:`HostRoot` (``/`` or a test tree) and a netlink
source (:class:`~katran.host.kernel.KernelNet`), ``build_report()`` turns them into checks
and server flags, ``katran.host.fix`` makes the safe changes, and
:func:`resolve_auto_flags` serves the servers' ``auto`` flag values.  No frontend imports.
"""

from .auto import AUTO, AutoFlags, is_auto, resolve_auto_flags
from .report import Check, Facts, Report, build_report, gather
from .root import HostRoot

__all__ = ["AUTO", "AutoFlags", "Check", "Facts", "HostRoot", "Report", "build_report", "gather", "is_auto",
           "resolve_auto_flags"]
