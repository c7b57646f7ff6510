"""The long-running side of a server: the declarative file, its reload, the health checker.

A :class:`Daemon` wraps a started :class:`~katran.lb.KatranLb`. With a file
(``-config FILE``) it applies the file's desired state after the start, re-reads and
applies it on :meth:`reload` (SIGHUP: exactly the difference, all or nothing; an invalid
file changes nothing and is logged with its file, line and field), and runs the active
health checks of its ``healthchecks`` section and, with a ``bgp`` section, a BIRD 2
speaker announcing the VIPs (:class:`katran.bgp.Announcer`, its files under
``/run/katran/bird-<intf>-<netns>/``): a VIP address is announced while the data plane runs and
one of its VIPs has ``min_healthy`` healthy reals (the data plane: started and, unless testing,
our XDP program still attached, ``katran.watch``) (the checker's states for checked VIPs,
else the reals with weight > 0), re-evaluated after every applied change, on every health
transition and once a second. :meth:`drain` withdraws everything and waits for the VIP
traffic to stop (``katran-cli -drain``, the graceful stop). Every applied change is logged
once (the audit trail). No RPC library and no kernel call here: only KatranLb's API.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Optional

from . import declarative
from .bgp import Announcer, BgpConfig, Bird
from .errors import FeatureNotEnabledError, KatranError
from .hc_checker import HcChecker
from .watch import AttachmentWatch

log = logging.getLogger("katran.daemon")


class Daemon:
    def __init__(self, lb, config_path: Optional[str] = None, desired: Optional[declarative.Desired] = None) -> None:
        self.lb = lb
        self.config_path = config_path
        self.desired = desired
        self.checker: Optional[HcChecker] = None
        self.generation = 0  # files applied (start + reloads)
        self._lock = threading.Lock()
        self.announcer: Optional[Announcer] = None
        self._watch = AttachmentWatch(lb)
        self.drain_timeout = 10.0  # seconds the graceful stop waits for the traffic to leave
        self._bgp_wake = threading.Event()
        self._bgp_stop = threading.Event()
        self._bgp_thread: Optional[threading.Thread] = None

    @classmethod
    def read(cls, path: str) -> declarative.Desired:
        """The file (raises ``ConfigFileError`` naming file, line and field)."""
        return declarative.load(path)

    def start(self) -> None:
        """Apply the file's desired state and start its health checks (after ``lb.start()``)."""
        with self._lock:
            if self.desired is not None:
                self._apply(self.desired, "start")
                self._set_checks(self.desired.healthchecks)
                self._set_bgp(self.desired.bgp)

    def _apply(self, desired: declarative.Desired, why: str) -> declarative.Plan:
        plan = declarative.apply(self.lb, desired)
        self.generation += 1
        for line in plan.changes:
            log.info("config %s (%s): %s", self.config_path or "<api>", why, line.text)
        for line in plan.needs_restart:
            log.warning("config %s (%s): needs a restart, not applied: %s", self.config_path or "<api>", why, line)
        if not plan.changes:
            log.info("config %s (%s): no change", self.config_path or "<api>", why)
        return plan

    def _set_checks(self, hc) -> None:
        if hc is None or not hc.checks:
            if self.checker is not None:
                self.checker.stop()
                self.checker = None
                log.info("health checks stopped")
            return
        if self.checker is None:
            self.checker = HcChecker.from_config(self.lb, hc, on_transition=lambda _t: self._bgp_wake.set()).start()
            log.info("health checks started: %d vips", len(hc.checks))
        else:
            self.checker.reconfigure(hc)
            log.info("health checks reconfigured: %d vips", len(hc.checks))

    def reload(self) -> Optional[declarative.Plan]:
        """Re-read the file and apply the difference (SIGHUP); None when it could not be applied."""
        if self.config_path is None:
            log.warning("reload asked but the server runs without -config: nothing to re-read")
            return None
        with self._lock:
            try:
                desired = declarative.load(self.config_path)
                plan = self._apply(desired, "reload")
            except KatranError as exc:
                log.error("config %s: reload refused, nothing changed: %s", self.config_path, exc)
                return None
            self.desired = desired
            self._set_checks(desired.healthchecks)
            try:
                self._set_bgp(desired.bgp)
            except KatranError as exc:
                log.error("config %s: bgp section not applied: %s", self.config_path, exc)
            return plan

    def apply(self, desired: declarative.Desired, dry_run: bool = False) -> declarative.Plan:
        """Apply a configuration given over the API (``katran-cli -apply``)."""
        with self._lock:
            if dry_run:
                return declarative.plan(self.lb, desired)
            plan = self._apply(desired, "apply")
            if desired.healthchecks is not None:
                self._set_checks(desired.healthchecks)
            self._bgp_wake.set()
            return plan

    def dump(self) -> str:
        """The live state as a declarative file (``katran-cli -dump``)."""
        hc = self.checker.config() if self.checker is not None else None
        bgp = self.announcer.cfg if self.announcer is not None else None
        return declarative.dumps(declarative.snapshot(self.lb, hc, bgp))

    # -- bgp ----------------------------------------------------------------------------------
    def bird_dir(self, cfg: BgpConfig) -> str:
        if cfg.state_dir:
            return cfg.state_dir
        intf = self.lb.config.main_interface or "none"
        try:
            netns = os.stat("/proc/self/ns/net").st_ino
        except OSError:
            netns = 0
        return f"/run/katran/bird-{intf}-{netns}"

    def attached(self) -> bool:
        """The data plane forwards: started, and (unless testing) our program is the one attached
        (katran.watch: someone may detach or replace it; then the VIPs are withdrawn)."""
        if not self.lb.started:
            return False
        state = self._watch.check()
        return state is None or state.attached

    def healthy_reals(self, vip) -> int:
        """Healthy reals of ``vip``: the checker's verdicts when it checks the VIP, else weight > 0."""
        checker = self.checker
        if checker is not None and vip in checker.checks:
            states = [st for st in checker.states() if st.vip == vip]
            if states:
                return sum(1 for st in states if st.healthy and st.weight > 0)
        return sum(1 for r in self.lb.get_reals_for_vip(vip) if r.weight > 0)

    def _set_bgp(self, cfg: Optional[BgpConfig]) -> None:
        if self.announcer is not None and self.announcer.cfg == cfg:
            self._bgp_wake.set()
            return
        if (self.announcer is not None and cfg is not None
                and str(self.announcer.bird.dir) == self.bird_dir(cfg)):
            self.announcer.reconfigure(cfg)  # same BIRD, new settings: no withdrawal
            log.info("bgp: speaker reconfigured")
            return
        self._stop_bgp()
        if cfg is None:
            return
        ann = Announcer(self.lb, cfg, Bird(self.bird_dir(cfg), name="bird"), healthy_reals=self.healthy_reals,
                        attached=self.attached)
        ann.start()
        self.announcer = ann
        log.info("bgp: speaker started (BIRD, %s), announcing %s", ann.bird.dir,
                 ", ".join(sorted(map(str, ann.announced))) or "nothing")
        self._bgp_stop.clear()
        self._bgp_thread = threading.Thread(target=self._bgp_loop, name="katran-bgp", daemon=True)
        self._bgp_thread.start()

    def _bgp_loop(self) -> None:
        while not self._bgp_stop.is_set():
            self._bgp_wake.wait(1.0)  # a health transition / applied change, or the 1 s tick
            self._bgp_wake.clear()
            ann = self.announcer
            if ann is None or self._bgp_stop.is_set():
                break
            try:
                ann.update()
            except Exception as exc:  # noqa: BLE001 - logged, retried at the next tick
                log.error("bgp: update failed: %s", exc)

    def _stop_bgp(self, withdraw: bool = True) -> None:
        self._bgp_stop.set()
        self._bgp_wake.set()
        if self._bgp_thread is not None:
            self._bgp_thread.join(5)
            self._bgp_thread = None
        if self.announcer is not None:
            self.announcer.stop(withdraw=withdraw)
            self.announcer = None

    def vip_packets(self) -> int:
        """The packets of every VIP so far (what a drain waits to stop moving)."""
        total = 0
        for vip in self.lb.get_all_vips():
            total += self.lb.get_stats_for_vip(vip).v1
        return total

    def bgp_state(self) -> tuple:
        """(draining, announced addresses) of the announcer; FeatureNotEnabledError without bgp."""
        ann = self.announcer
        if ann is None:
            raise FeatureNotEnabledError("bgp: this server runs without a bgp section in its -config file")
        return ann.draining, sorted(map(str, ann.announced))

    def drain(self, timeout: Optional[float] = None, quiet_for: float = 1.0) -> Optional[float]:
        """Withdraw every VIP and wait until their traffic stops (``quiet_for`` s without a packet,
        at most ``timeout``); the seconds waited, None without bgp."""
        ann = self.announcer
        if ann is None:
            return None
        timeout = self.drain_timeout if timeout is None else timeout
        start = time.monotonic()
        waited = ann.drain(traffic=self.vip_packets, quiet_for=quiet_for, timeout=timeout)
        log.warning("bgp: drained: every VIP withdrawn, traffic quiet after %.2f s", time.monotonic() - start)
        return waited

    def undrain(self) -> bool:
        ann = self.announcer
        if ann is None:
            return False
        ann.undrain()
        log.info("bgp: undrained: announcing %s", ", ".join(sorted(map(str, ann.announced))) or "nothing")
        return True
    def health(self) -> list:
        """The health checker's states (empty when no checks run)."""
        return self.checker.states() if self.checker is not None else []

    def close(self) -> None:
        self._stop_bgp()
        if self.checker is not None:
            self.checker.stop(restore=False)  # the data plane keeps what the checks decided
            self.checker = None
