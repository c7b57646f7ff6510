"""The long-running side of a server: the declarative file, its reload, the health checker.

A :class:`Daemon` wraps a started :class:`~katran.lb.KatranLb`. With a file
(``-config FILE``) it applies the file's desired state after the start, re-reads and
applies it on :meth:`reload` (SIGHUP: exactly the difference, all or nothing; an invalid
file changes nothing and is logged with its file, line and field), and runs the active
health checks of its ``healthchecks`` section. Every applied change is logged once
(the audit trail). No RPC library and no kernel call here: only KatranLb's API.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

from . import declarative
from .errors import KatranError
from .hc_checker import HcChecker

log = logging.getLogger("katran.daemon")


class Daemon:
    def __init__(self, lb, config_path: Optional[str] = None, desired: Optional[declarative.Desired] = None) -> None:
        self.lb = lb
        self.config_path = config_path
        self.desired = desired
        self.checker: Optional[HcChecker] = None
        self.generation = 0  # files applied (start + reloads)
        self._lock = threading.Lock()

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
            self.checker = HcChecker.from_config(self.lb, hc).start()
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
            return plan

    def apply(self, desired: declarative.Desired, dry_run: bool = False) -> declarative.Plan:
        """Apply a configuration given over the API (``katran-cli -apply``)."""
        with self._lock:
            if dry_run:
                return declarative.plan(self.lb, desired)
            plan = self._apply(desired, "apply")
            if desired.healthchecks is not None:
                self._set_checks(desired.healthchecks)
            return plan

    def dump(self) -> str:
        """The live state as a declarative file (``katran-cli -dump``)."""
        hc = self.checker.config() if self.checker is not None else None
        return declarative.dumps(declarative.snapshot(self.lb, hc))

    def health(self) -> list:
        """The health checker's states (empty when no checks run)."""
        return self.checker.states() if self.checker is not None else []

    def close(self) -> None:
        if self.checker is not None:
            self.checker.stop(restore=False)  # the data plane keeps what the checks decided
            self.checker = None
