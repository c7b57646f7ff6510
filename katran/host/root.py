"""HostRoot: where /proc and /sys are read from (the real root, or a tree a test built)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import attrs

from katran.errors import KatranError


def _rel(path: str) -> str:
    return path.lstrip("/")


@attrs.frozen
class HostRoot:
    """Reads (and, for ``--fix``, writes) files under ``path``: ``/`` on a real host.

    ``netns`` names the network namespace whose ``/proc/sys/net`` is meant (a name under
    /run/netns, or None for the caller's own): on the real root those reads are made by
    a thread inside it, since ``/proc/sys/net`` follows the namespace of the reader.
    """

    path: str = "/"
    netns: Optional[str] = None

    @property
    def is_real(self) -> bool:
        return os.path.realpath(self.path) == "/"

    def join(self, path: str) -> Path:
        return Path(self.path) / _rel(path)

    def _netns_for(self, path: str, init_netns: bool = False) -> Optional[str]:
        if self.is_real and self.netns and not init_netns and _rel(path).startswith("proc/sys/net/"):
            return self.netns
        return None

    def _in_other_netns(self, fn):
        """``fn()`` in the first namespace that lets it succeed: the initial one, else that of
        the nearest ancestor process (``ip netns exec`` moves the whole process)."""
        from . import kernel

        for ns in kernel.outer_netns_candidates():
            try:
                with kernel.in_netns(ns):
                    return fn()
            except (OSError, KatranError):
                continue
        raise FileNotFoundError

    def read(self, path: str, *, init_netns: bool = False) -> Optional[str]:
        """Text of ``path`` (stripped), or None when it does not exist or cannot be read.

        ``init_netns``: a sysctl that only the initial network namespace has (the BPF JIT
        ones); on the real root it is read from there when this namespace lacks it.
        """
        ns = self._netns_for(path, init_netns)
        try:
            if ns:
                from . import kernel

                with kernel.in_netns(ns):
                    return self.join(path).read_text().strip()
            return self.join(path).read_text().strip()
        except FileNotFoundError:
            if init_netns and self.is_real:
                try:
                    return self._in_other_netns(lambda: self.join(path).read_text().strip())
                except (OSError, UnicodeDecodeError):
                    return None
            return None
        except (OSError, UnicodeDecodeError, KatranError):
            return None

    def read_int(self, path: str, *, init_netns: bool = False) -> Optional[int]:
        text = self.read(path, init_netns=init_netns)
        try:
            return int(text) if text is not None else None
        except ValueError:
            return None

    def exists(self, path: str) -> bool:
        return self.join(path).exists()

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self.join(path)))
        except OSError:
            return []

    def link_name(self, path: str) -> Optional[str]:
        """Last component of where the symlink ``path`` points (a driver or device name)."""
        try:
            return os.path.basename(os.readlink(self.join(path)).rstrip("/"))
        except OSError:
            return None

    def write(self, path: str, text: str, *, init_netns: bool = False) -> None:
        """Write ``text`` to ``path`` (raises OSError); /proc/sys/net writes enter ``netns``
        (``init_netns``: as in :meth:`read`)."""
        ns = self._netns_for(path, init_netns)
        if ns:
            from . import kernel

            with kernel.in_netns(ns):
                self.join(path).write_text(text)
            return
        try:
            self.join(path).write_text(text)
        except FileNotFoundError:
            if not (init_netns and self.is_real):
                raise
            self._in_other_netns(lambda: self.join(path).write_text(text))
