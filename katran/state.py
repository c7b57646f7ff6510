"""State that survives a restart: pins in bpffs, the state file, the instance lock.

A standalone balancer on interface ``<intf>`` keeps

* its maps and programs pinned under ``pin_dir`` (default ``/sys/fs/bpf/katran/<intf>/``):
  ``balancer_ingress`` (the program), one pin per map by its name, and the healthcheck
  program and maps prefixed ``hc_`` when healthcheck forwarding is on;
* a state file ``state.json`` in ``state_dir`` (default ``/var/lib/katran/<intf>/``):
  what the maps cannot give back (VIP numbers, real indices and refcounts, weights, hash
  functions, flags, down reals, QUIC ids, source routes, decap and healthcheck
  destinations, the MAC, and the config that sized the maps). It is written atomically
  (temp file, fsync, rename, fsync of the directory) after every committed change;
* a lock file ``lock`` in ``state_dir``: an exclusive ``flock`` held for the life of the
  instance, so a second instance on the same interface refuses to start.

The file format is JSON with ``format`` and ``version`` keys (:data:`VERSION`); a reader
refuses a version it does not know, naming the file.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

from .errors import BuildError, KatranError, KernelError
from .kernel import NamedHandles

FORMAT = "katran-state"
VERSION = 1
STATE_FILE = "state.json"
LOCK_FILE = "lock"
PROG_PIN = "balancer_ingress"
HC_PREFIX = "hc_"
DEFAULT_PIN_ROOT = "/sys/fs/bpf/katran"
DEFAULT_STATE_ROOT = "/var/lib/katran"

# KatranConfig fields that shape the maps or the program: an adopted data plane must have
# been made with the same values (else its maps do not fit what this config expects)
SIZING_FIELDS = (
    "max_vips", "max_reals", "ch_ring_size", "lru_size", "fallback_lru_size", "max_decap_dst",
    "max_lpm_src_size", "max_server_ids", "capture_ring_size", "global_lru", "global_lru_size", "enable_cid_v3", "xdp_attach_mode",
    "enable_hc", "forwarding_cores", "gue_encap", "gue_dport", "tcp_server_id_routing",
    "udp_stable_routing", "lpm_src_lookup", "local_delivery", "icmp_toobig_generation",
    "inline_decap_ipip", "inline_decap_gue", "decap_strict_destination", "max_pckt_size",
    "lru_udp_timeout_ns", "max_conn_rate",
)


def object_identity(path) -> dict:
    """Which object file a program came from: its path and sha256 (an upgrade changes either)."""
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise BuildError(f"cannot read the BPF object {path}: {exc.strerror}") from None
    return {"path": str(path), "sha256": digest}


def map_misfits(live_maps: dict, spec) -> list[str]:
    """Why the live maps cannot be reused by the object ``spec`` (an upgrade): each map the
    new object lacks, or defines with another type, key or value size or max_entries."""
    names = set(spec.map_names)
    out = []
    for name, m in live_maps.items():
        if name not in names:
            out.append(f"map {name} is not in the new object")
            continue
        want = spec.map_def(name)
        have = {"type": m.type, "key_size": m.key_size, "value_size": m.value_size, "max_entries": m.max_entries}
        diff = [f"{f} {have[f]} -> {want[f]}" for f in have if want[f] != have[f]]
        if diff:
            out.append(f"map {name}: {', '.join(diff)}")
    return out


class StateError(KatranError):
    """The state file or the pins cannot be used (names the file and what is wrong)."""


class InstanceLockedError(KatranError):
    """Another instance holds the interface's lock."""


def instance_name(interface: str) -> str:
    """``<intf>`` in the initial network namespace, ``<intf>@ns<inode>`` in another one:
    bpffs and /var/lib are shared by every namespace, interface names are not."""
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return interface
    try:
        init = os.stat("/proc/1/ns/net").st_ino
    except OSError:  # pid 1 not ours to inspect (a container): the inode keeps names apart
        init = None
    return interface if mine == init else f"{interface}@ns{mine}"


def pin_dir_for(config) -> Path:
    if config.pin_dir:
        return Path(config.pin_dir)
    return Path(DEFAULT_PIN_ROOT) / instance_name(config.main_interface)


def state_dir_for(config) -> Path:
    if config.state_dir:
        return Path(config.state_dir)
    return Path(DEFAULT_STATE_ROOT) / instance_name(config.main_interface)


def sizing(config) -> dict[str, Any]:
    out = {}
    for name in SIZING_FIELDS:
        v = getattr(config, name)
        out[name] = list(v) if isinstance(v, tuple) else v
    return out


def sizing_differences(saved: dict, config) -> list[str]:
    """``field: saved -> now`` for every sizing field that differs."""
    now = sizing(config)
    return [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in SIZING_FIELDS if saved.get(k) != now[k]]


# ---------------------------------------------------------------- the state file
def write_file_atomic(path: Path, data: bytes, mode: int = 0o600, what: str = "write") -> None:
    """``data`` to ``path``: temp file in the same directory, fsync, rename, fsync the directory
    (a reader sees the old file or the new one, also after a crash). KernelError names ``what``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise KernelError(f"{what} {path}", exc.errno or errno.EIO) from None


def write_atomic(path: Path, data: dict) -> None:
    """The state file: ``data`` as JSON, written atomically."""
    write_file_atomic(path, json.dumps(data, separators=(",", ":"), sort_keys=True).encode(),
                      what="write state file")


def read(path: Path) -> Optional[dict]:
    """The state file's content; None if there is none. StateError if unreadable or unknown."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"state file {path}: cannot read it: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateError(f"state file {path}: not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateError(f"state file {path}: not a {FORMAT} file")
    if data.get("version") != VERSION:
        raise StateError(f"state file {path}: version {str(data.get('version'))[:20]!r} is not supported "
                         f"(this katran reads version {VERSION})")
    return data


def remove(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------- the instance lock
class InstanceLock:
    """An exclusive, non-blocking flock on ``<state_dir>/lock`` (released by close or process exit)."""

    def __init__(self, state_dir: Path, what: str) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self.what = what
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        try:
            os.makedirs(self.path.parent, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KernelError(f"open lock file {self.path}", exc.errno or errno.EIO) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = b""
            try:
                holder = os.pread(fd, 32, 0).strip()
            except OSError:
                pass
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                pid = holder.decode("ascii", "replace")[:16] or "?"
                raise InstanceLockedError(
                    f"another katran instance (pid {pid}) runs on {self.what}: {self.path} is locked; "
                    f"nothing was changed") from None
            raise KernelError(f"lock {self.path}", exc.errno or errno.EIO) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


# ---------------------------------------------------------------- pinned objects
class PinnedObject(NamedHandles):
    """The maps and programs of a pinned object, shaped like a loaded object (``map``,
    ``program``, ``maps``, ``programs``, ``close``); handles opened from the pins."""

    _kind = "pinned "

    def __init__(self, path: str, maps: dict, programs: dict) -> None:
        self.path = path
        self.maps = maps
        self.programs = programs
        self.internal_maps: dict = {}
        self._closed = False

    @classmethod
    def open(cls, kernel, directory: Path, map_names, prog_names, prefix: str = "") -> "PinnedObject":
        maps, progs = {}, {}
        try:
            for name in map_names:
                maps[name] = kernel.map_by_pin(directory / f"{prefix}{name}")
            for name in prog_names:
                progs[name] = kernel.program_by_pin(directory / f"{prefix}{name}")
        except BaseException:
            for h in (*maps.values(), *progs.values()):
                h.close()
            raise
        return cls(str(directory), maps, progs)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        for h in (*self.maps.values(), *self.programs.values()):
            h.close()
        self._closed = True


def pin_object(kernel, obj, directory: Path, prefix: str = "") -> list[Path]:
    """Pin every (non-internal) map and program of ``obj``; returns the pins (undone on error)."""
    done: list[Path] = []
    try:
        for name, m in obj.maps.items():
            p = directory / f"{prefix}{name}"
            m.pin(p)
            done.append(p)
        for name, prog in obj.programs.items():
            p = directory / f"{prefix}{name}"
            prog.pin(p)
            done.append(p)
    except BaseException:
        for p in done:
            try:
                kernel.unpin(p)
            except KatranError:
                pass
        raise
    return done
