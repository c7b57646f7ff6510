"""The Linux capabilities a balancer server needs (instead of full root).

Measured with ``setpriv`` (tests/test_packaging.py runs a server as an unprivileged
user holding exactly these, and with one less):

* ``CAP_BPF`` - create maps, load programs (``bpf(2)``);
* ``CAP_PERFMON`` - the verifier's pointer arithmetic / Spectre mitigations of a
  program loaded without ``CAP_SYS_ADMIN`` (the balancer does not load without it);
* ``CAP_NET_ADMIN`` - attach XDP (netlink), the clsact qdisc and the tc filter of the
  healthcheck program, interface queries;
* ``CAP_SYS_ADMIN`` - ``BPF_*_GET_FD_BY_ID``: reopening a map or program by id (the
  inner maps of map-in-maps, the attached program's identity, adopting a live data plane).

The systemd units in ``packaging/systemd`` grant exactly ``REQUIRED`` (bounding and ambient set).
"""

from __future__ import annotations

from typing import Iterable, Optional

# capability numbers (linux/capability.h)
CAP_NUMBERS = {
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_RESOURCE": 24,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}
REQUIRED = ("CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON", "CAP_SYS_ADMIN")


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    """The effective capability mask of this process (``CapEff`` of /proc/self/status)."""
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing_capabilities(required: Iterable[str] = REQUIRED, mask: Optional[int] = None) -> list[str]:
    mask = effective_capabilities() if mask is None else mask
    return [name for name in required if not mask >> CAP_NUMBERS[name] & 1]


def require_capabilities(config=None, mask: Optional[int] = None) -> str:
    """'' when this process may run the balancer ``config`` describes, else the error text
    naming the missing capabilities (a ``testing`` config loads programs too: same set)."""
    missing = missing_capabilities(REQUIRED, mask)
    if not missing:
        return ""
    return (f"missing capabilities {', '.join(missing)} (loading and attaching BPF programs needs "
            f"{', '.join(REQUIRED)}: run as root or grant them, e.g. the systemd unit's AmbientCapabilities)")
