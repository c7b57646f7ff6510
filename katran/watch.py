"""Is our XDP program still the one attached?  (issue 12, safe attach: detection)

A standalone balancer owns the XDP hook of its interface: someone may detach it
(``ip link set dev X xdp off``) or attach another program over it.  A shared-mode
balancer owns one slot of the root program's prog array: someone may empty it or
register another program there.  :class:`AttachmentWatch` compares what the kernel
has with our program's id; the server's serving loop polls it every second and turns
gRPC health NOT_SERVING, logs an error (once per change) and sets the
``katran_dataplane_attached`` gauge when metrics exist.
"""

from __future__ import annotations

import logging
from typing import Optional

import attrs

from .errors import KatranError, safe_text

log = logging.getLogger("katran.watch")


@attrs.frozen
class AttachState:
    attached: bool
    reason: str  # what the kernel has, in words
    prog_id: int  # our program's id
    found_id: int  # the id attached there now (0: none)


class AttachmentWatch:
    """Polls where ``lb``'s balancer should be attached; ``None`` state for a ``testing`` lb."""

    def __init__(self, lb) -> None:
        self.lb = lb
        self.state: Optional[AttachState] = None

    @property
    def enabled(self) -> bool:
        return self.lb.started and not self.lb.config.testing

    def check(self) -> Optional[AttachState]:
        """What the kernel has now (None when nothing is attached by design: testing)."""
        if not self.enabled:
            return None
        cfg = self.lb.config
        kernel = self.lb.kernel
        ours = self.lb._obj.program("balancer_ingress").id
        try:
            if cfg.root_map_path:
                from . import shared

                found = shared.slots(cfg.root_map_path, kernel=kernel).get(cfg.root_map_pos, 0)
                where = f"slot {cfg.root_map_pos} of {cfg.root_map_path}"
            else:
                found = kernel.xdp_attached_prog_id(kernel.ifindex(cfg.main_interface), cfg.xdp_attach_mode)
                where = f"{cfg.main_interface} (XDP {cfg.xdp_attach_mode})"
        except KatranError as exc:
            return AttachState(False, safe_text(f"cannot read what is attached: {exc}"), ours, 0)
        if found == ours:
            return AttachState(True, f"program id {ours} attached to {where}", ours, found)
        if not found:
            return AttachState(False, f"our program (id {ours}) was detached: nothing on {where}", ours, 0)
        return AttachState(False, f"our program (id {ours}) was replaced: program id {found} on {where}",
                           ours, found)

    def poll(self) -> Optional[AttachState]:
        """Check; returns the new state when it changed since the last poll (else None), logging it."""
        state = self.check()
        if state is None:
            return None
        changed = self.state is None or state.attached != self.state.attached or state.found_id != self.state.found_id
        first = self.state is None
        self.state = state
        if not changed:
            return None
        fields = {"attached": state.attached, "prog_id": state.prog_id, "found_prog_id": state.found_id}
        if not state.attached:
            log.error("data plane not attached: %s", state.reason, extra={"fields": fields})
        elif not first:
            log.warning("data plane attached again: %s", state.reason, extra={"fields": fields})
        _set_metric(state.attached)
        return state


def _set_metric(attached: bool) -> None:
    """``katran_dataplane_attached`` (1/0) when the metrics module exists."""
    try:
        from . import metrics  # type: ignore[attr-defined]
    except ImportError:
        return
    setter = getattr(metrics, "set_dataplane_attached", None)
    if setter is not None:
        setter(attached)
        return
    gauge = getattr(metrics, "DATAPLANE_ATTACHED", None)
    if gauge is not None:
        gauge.set(1 if attached else 0)
