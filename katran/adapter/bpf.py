"""BPF objects, maps and programs over libbpf (see ``libbpf.py`` for the bindings).

``ObjectSpec`` is an opened-but-not-loaded object (set sizes and knobs here),
``LoadedObject`` owns the kernel resources after ``load()``.  ``Map`` and
``Program`` wrap one fd each; bytes in, bytes out - no knowledge of katran structs.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
from collections.abc import Iterator
from typing import Union

import attrs

from katran.errors import BuildError, KernelError, NotFoundError, ValidationError
from katran.kernel import NamedHandles

from . import btf as _btf
from .libbpf import Closing as _Closing, check, clear_messages, ffi, lib, libc, recent_messages

# --- constants (uapi linux/bpf.h, linux/if_link.h) ---------------------------

BPF_MAP_TYPE_UNSPEC = 0
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_STACK_TRACE = 7
BPF_MAP_TYPE_CGROUP_ARRAY = 8
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
BPF_MAP_TYPE_HASH_OF_MAPS = 13
BPF_MAP_TYPE_DEVMAP = 14
BPF_MAP_TYPE_SOCKMAP = 15
BPF_MAP_TYPE_CPUMAP = 16
BPF_MAP_TYPE_XSKMAP = 17
BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE = 21
BPF_MAP_TYPE_QUEUE = 22
BPF_MAP_TYPE_STACK = 23
BPF_MAP_TYPE_DEVMAP_HASH = 25
BPF_MAP_TYPE_RINGBUF = 27

PERCPU_MAP_TYPES = frozenset(
    {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH,
     BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE}
)
MAP_IN_MAP_TYPES = frozenset({BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_HASH_OF_MAPS})

BPF_PROG_TYPE_UNSPEC = 0
BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_PROG_TYPE_KPROBE = 2
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_SCHED_ACT = 4
BPF_PROG_TYPE_XDP = 6

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_F_LOCK = 4

BPF_F_NO_PREALLOC = 1 << 0
BPF_F_NO_COMMON_LRU = 1 << 1
BPF_F_NUMA_NODE = 1 << 2
BPF_F_MMAPABLE = 1 << 10

BPF_F_TEST_RUN_ON_CPU = 1 << 0
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4

XDP_ABORTED = 0
XDP_DROP = 1
XDP_PASS = 2
XDP_TX = 3
XDP_REDIRECT = 4

_XDP_MODES = {"native": XDP_FLAGS_DRV_MODE, "drv": XDP_FLAGS_DRV_MODE,
              "generic": XDP_FLAGS_SKB_MODE, "skb": XDP_FLAGS_SKB_MODE,
              "offload": XDP_FLAGS_HW_MODE, "hw": XDP_FLAGS_HW_MODE}

Value = Union[bytes, list[bytes]]


def _round8(n: int) -> int:
    return (n + 7) & ~7


_ncpus: int | None = None


def num_possible_cpus() -> int:
    """Number of possible CPUs (the length of every per-CPU value list)."""
    global _ncpus
    if _ncpus is None:
        _ncpus = check(lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")
    return _ncpus


def _xdp_mode_flags(mode: str) -> int:
    try:
        return _XDP_MODES[mode]
    except KeyError:
        raise ValidationError("mode", mode, f"must be one of {sorted(set(_XDP_MODES))}") from None


# --- fd-owning objects ----------------------------------------------------------

class _BpfFd(_Closing):
    """A map or program fd: kernel info, pinning, and (when owned) closing."""

    _kind = "object"
    _info_struct = ""

    name: str
    fd: int
    _owned: bool

    def _fd(self) -> int:
        if self.fd < 0:
            raise KernelError(f"use of closed {self._kind} {self.name}", errno.EBADF)
        return self.fd

    @classmethod
    def _info_of(cls, fd: int, what: str):
        info = ffi.new(f"struct {cls._info_struct} *")
        ln = ffi.new("__u32 *", ffi.sizeof(f"struct {cls._info_struct}"))
        check(lib.bpf_obj_get_info_by_fd(fd, info, ln), f"get info of {cls._kind} {what}")
        return info

    @classmethod
    def _owning(cls, fd: int):
        try:
            return cls.from_fd(fd, owned=True)  # type: ignore[attr-defined]
        except Exception:
            os.close(fd)
            raise

    @classmethod
    def from_pinned(cls, path: str | os.PathLike[str]):
        """Open an object pinned in bpffs; the result owns its fd."""
        path = os.fspath(path)
        return cls._owning(check(lib.bpf_obj_get(path.encode()), f"open pinned {cls._kind} {path}"))

    @property
    def id(self) -> int:
        """Kernel id of the object."""
        return int(self._info_of(self._fd(), self.name).id)

    def pin(self, path: str | os.PathLike[str]) -> None:
        path = os.fspath(path)
        check(lib.bpf_obj_pin(self._fd(), path.encode()), f"pin {self._kind} {self.name} at {path}")

    def unpin(self, path: str | os.PathLike[str]) -> None:
        path = os.fspath(path)
        try:
            os.unlink(path)
        except OSError as exc:
            raise KernelError(f"unpin {self._kind} {self.name} at {path}", exc.errno or errno.EIO) from None

    def close(self) -> None:
        """Close the fd if this object owns it (created here, pinned, or by id)."""
        if getattr(self, "_owned", False) and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __del__(self) -> None:
        try:
            if getattr(self, "_owned", False):
                self.close()
        except Exception:
            pass


# --- maps --------------------------------------------------------------------

class Map(_BpfFd):
    """One BPF map fd: bytes keys and values (per-CPU maps: a list of values, one per CPU)."""

    _kind = "map"
    _info_struct = "bpf_map_info"

    def __init__(self, name: str, fd: int, map_type: int, key_size: int, value_size: int,
                 max_entries: int, flags: int = 0, *, owned: bool = False) -> None:
        self.name = name
        self.fd = fd
        self.type = map_type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self.per_cpu = map_type in PERCPU_MAP_TYPES
        self._owned = owned
        self._mmapable: bool | None = None
        self._mm: mmap.mmap | None = None
        self._views: dict = {}

    def __repr__(self) -> str:
        return (f"Map({self.name!r}, fd={self.fd}, type={self.type}, key={self.key_size}, "
                f"value={self.value_size}, max_entries={self.max_entries})")

    # construction from outside an object ---------------------------------

    @classmethod
    def from_fd(cls, fd: int, *, owned: bool = False, name: str | None = None) -> "Map":
        """Wrap an existing map fd (reads type/sizes from the kernel)."""
        info = cls._info_of(fd, f"fd {fd}")
        kname = ffi.string(info.name).decode()
        return cls(name or kname, fd, info.type, info.key_size, info.value_size,
                   info.max_entries, info.map_flags, owned=owned)

    @classmethod
    def from_id(cls, map_id: int) -> "Map":
        return cls._owning(check(lib.bpf_map_get_fd_by_id(map_id), f"open map id {map_id}"))

    # buffers ------------------------------------------------------------------

    @property
    def _value_buf_size(self) -> int:
        if self.per_cpu:
            return _round8(self.value_size) * num_possible_cpus()
        return self.value_size

    def _key(self, key: bytes) -> bytes:
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise ValidationError(f"{self.name}.key", key, "must be bytes")
        if len(key) != self.key_size:
            raise ValidationError(f"{self.name}.key", bytes(key).hex(),
                                  f"must be {self.key_size} bytes, got {len(key)}")
        return bytes(key)

    def _value(self, value: Value) -> bytes:
        """Encode a value for the kernel (per-CPU: replicate or pad each CPU's slot)."""
        if self.per_cpu:
            ncpu = num_possible_cpus()
            if isinstance(value, (bytes, bytearray, memoryview)):
                values = [bytes(value)] * ncpu
            else:
                values = [bytes(v) for v in value]
                if len(values) != ncpu:
                    raise ValidationError(f"{self.name}.value", len(values),
                                          f"per-CPU value needs {ncpu} entries (one per possible CPU)")
            slot = _round8(self.value_size)
            for v in values:
                if len(v) != self.value_size:
                    raise ValidationError(f"{self.name}.value", v.hex(),
                                          f"must be {self.value_size} bytes, got {len(v)}")
            return b"".join(v.ljust(slot, b"\0") for v in values)
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ValidationError(f"{self.name}.value", value, "must be bytes")
        if len(value) != self.value_size:
            raise ValidationError(f"{self.name}.value", bytes(value).hex(),
                                  f"must be {self.value_size} bytes, got {len(value)}")
        return bytes(value)

    def _decode(self, raw: bytes) -> Value:
        if self.per_cpu:
            slot = _round8(self.value_size)
            return [raw[i * slot: i * slot + self.value_size] for i in range(num_possible_cpus())]
        return raw

    # element ops ------------------------------------------------------------

    def lookup(self, key: bytes) -> Value | None:
        """Value for ``key`` or None (per-CPU maps: list of per-CPU values)."""
        k = self._key(key)
        buf = ffi.new("char[]", self._value_buf_size)
        ret = lib.bpf_map_lookup_elem(self._fd(), k, buf)
        if ret == -errno.ENOENT:
            return None
        check(ret, f"lookup {self.name}")
        return self._decode(ffi.buffer(buf)[:])

    def __getitem__(self, key: bytes) -> Value:
        v = self.lookup(key)
        if v is None:
            raise NotFoundError(f"{self.name} key", bytes(key).hex())
        return v

    def __setitem__(self, key: bytes, value: Value) -> None:
        self.update(key, value)

    def __contains__(self, key: bytes) -> bool:
        return self.lookup(key) is not None

    def update(self, key: bytes, value: Value, flags: int = BPF_ANY) -> None:
        """Insert or replace; per-CPU maps accept one bytes (copied to every CPU) or a list."""
        k = self._key(key)
        v = self._value(value)
        check(lib.bpf_map_update_elem(self._fd(), k, v, flags), f"update {self.name}")

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; False if it was absent."""
        k = self._key(key)
        ret = lib.bpf_map_delete_elem(self._fd(), k)
        if ret == -errno.ENOENT:
            return False
        check(ret, f"delete from {self.name}")
        return True

    def keys(self) -> Iterator[bytes]:
        """All keys (snapshot-free iteration with bpf_map_get_next_key)."""
        fd = self._fd()
        cur = ffi.new("char[]", self.key_size)
        nxt = ffi.new("char[]", self.key_size)
        ret = lib.bpf_map_get_next_key(fd, ffi.NULL, nxt)
        while ret == 0:
            key = ffi.buffer(nxt)[:]
            yield key
            ffi.memmove(cur, nxt, self.key_size)
            ret = lib.bpf_map_get_next_key(fd, cur, nxt)
        if ret != -errno.ENOENT:
            check(ret, f"iterate {self.name}")

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    def items(self) -> Iterator[tuple[bytes, Value]]:
        """(key, value) pairs; keys deleted during iteration are skipped."""
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def values(self) -> Iterator[Value]:
        for _, v in self.items():
            yield v

    def clear(self) -> None:
        """Delete every key (arrays cannot delete: zero every slot instead)."""
        if self.type in (BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY):
            zero = b"\0" * self.value_size
            for i in range(self.max_entries):
                self.update(struct.pack("<I", i), zero)
            return
        for k in list(self.keys()):
            self.delete(k)

    # batch ops ------------------------------------------------------------------

    _BATCH_UNSUPPORTED = (-errno.EINVAL, -errno.ENOTSUP, -errno.EOPNOTSUPP, -errno.EPERM,
                          -524)  # ENOTSUPP (kernel-internal 524)

    def update_batch(self, keys: list[bytes] | bytes, values: list[Value] | bytes,
                     flags: int = BPF_ANY) -> None:
        """Update many elements in one syscall; loops where the map type has no batch op.

        ``keys``/``values`` are lists, or packed blobs (e.g. ``numpy_array.tobytes()``):
        keys back to back, values back to back (per-CPU maps: ``round_up(value_size, 8)``
        bytes per CPU, all CPUs of one element together).
        """
        kb, n = self._pack_keys(keys)
        if isinstance(values, (bytes, bytearray, memoryview)):
            vb = bytes(values)
            if len(vb) != n * self._value_buf_size:
                raise ValidationError(f"{self.name}.values", f"<{len(vb)} bytes>",
                                      f"need {n} x {self._value_buf_size} bytes")
        else:
            if len(values) != n:
                raise ValidationError(f"{self.name}.values", len(values),
                                      f"need one value per key ({n} keys)")
            vb = b"".join(self._value(v) for v in values)
        if n == 0:
            return
        count = ffi.new("__u32 *", n)
        opts = ffi.new("struct bpf_map_batch_opts *")
        opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
        opts.elem_flags = flags
        ret = lib.bpf_map_update_batch(self._fd(), kb, vb, count, opts)
        if ret in self._BATCH_UNSUPPORTED and count[0] == 0:
            ks, vs = self.key_size, self._value_buf_size
            fd = self._fd()
            for i in range(n):
                check(lib.bpf_map_update_elem(fd, kb[i * ks:(i + 1) * ks], vb[i * vs:(i + 1) * vs], flags),
                      f"update {self.name}", f"element {i} of {n}")
            return
        check(ret, f"batch update {self.name}", f"{count[0]} of {n} elements written")

    def _pack_keys(self, keys: list[bytes] | bytes) -> tuple[bytes, int]:
        if isinstance(keys, (bytes, bytearray, memoryview)):
            kb = bytes(keys)
            if len(kb) % self.key_size:
                raise ValidationError(f"{self.name}.keys", f"<{len(kb)} bytes>",
                                      f"not a multiple of the key size {self.key_size}")
            return kb, len(kb) // self.key_size
        return b"".join(self._key(k) for k in keys), len(keys)

    def lookup_batch(self, chunk: int = 256) -> list[tuple[bytes, Value]]:
        """Every (key, value); uses bpf_map_lookup_batch when the map type supports it."""
        raw = self.lookup_batch_raw(chunk)
        if raw is None:
            return list(self.items())
        kbuf, vbuf, n = raw
        ks, vsz = self.key_size, self._value_buf_size
        return [(kbuf[i * ks:(i + 1) * ks], self._decode(vbuf[i * vsz:(i + 1) * vsz])) for i in range(n)]

    def lookup_batch_raw(self, chunk: int = 256) -> tuple[bytes, bytes, int] | None:
        """Every element as two packed blobs: ``(keys, values, count)``, or None where the
        map type has no batch lookup.

        Keys are back to back (``key_size`` each); values back to back, per-CPU maps with
        ``round_up(value_size, 8)`` bytes per possible CPU, all CPUs of one element
        together (the kernel's layout, ready for ``numpy.frombuffer``).
        """
        fd = self._fd()
        chunk = max(1, min(chunk, self.max_entries or 1))
        tok = max(self.key_size, 8)
        in_b = ffi.new("char[]", tok)
        out_b = ffi.new("char[]", tok)
        keys = ffi.new("char[]", chunk * self.key_size)
        vsz = self._value_buf_size
        vals = ffi.new("char[]", chunk * vsz)
        count = ffi.new("__u32 *")
        opts = ffi.new("struct bpf_map_batch_opts *")
        opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
        kparts: list[bytes] = []
        vparts: list[bytes] = []
        total = 0
        first = True
        while True:
            count[0] = chunk
            ret = lib.bpf_map_lookup_batch(fd, ffi.NULL if first else in_b, out_b, keys, vals, count, opts)
            if first and ret in self._BATCH_UNSUPPORTED:
                return None
            if ret == -errno.ENOSPC and count[0] == 0 and chunk < (1 << 20):
                # a hash bucket holds more entries than fit: retry with bigger buffers
                chunk *= 4
                keys = ffi.new("char[]", chunk * self.key_size)
                vals = ffi.new("char[]", chunk * vsz)
                continue
            if ret < 0 and ret != -errno.ENOENT:
                check(ret, f"batch lookup {self.name}")
            n = count[0]
            kparts.append(ffi.buffer(keys, n * self.key_size)[:])
            vparts.append(ffi.buffer(vals, n * vsz)[:])
            total += n
            if ret == -errno.ENOENT:
                return b"".join(kparts), b"".join(vparts), total
            ffi.memmove(in_b, out_b, tok)
            first = False

    def delete_batch(self, keys: list[bytes] | bytes) -> None:
        """Delete many keys (loop fallback where unsupported); absent keys raise ENOENT."""
        kb, n = self._pack_keys(keys)
        if n == 0:
            return
        count = ffi.new("__u32 *", n)
        opts = ffi.new("struct bpf_map_batch_opts *")
        opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
        ret = lib.bpf_map_delete_batch(self._fd(), kb, count, opts)
        if ret in self._BATCH_UNSUPPORTED and count[0] == 0:
            ks = self.key_size
            for i in range(n):
                k = kb[i * ks:(i + 1) * ks]
                if not self.delete(k):
                    raise KernelError(f"delete from {self.name}", errno.ENOENT, k.hex())
            return
        check(ret, f"batch delete {self.name}", f"{count[0]} of {n} elements deleted")

    # mmap of an array's values -----------------------------------------------------

    @property
    def mmapable(self) -> bool:
        """An ARRAY created with BPF_F_MMAPABLE (the flags read from the kernel, once)."""
        if self._mmapable is None:
            flags = int(self._info_of(self._fd(), self.name).map_flags)
            self._mmapable = self.type == BPF_MAP_TYPE_ARRAY and bool(flags & BPF_F_MMAPABLE)
        return self._mmapable

    def value_view(self, dtype="<u4"):  # type: ignore[no-untyped-def]
        """The values of an mmap-able ARRAY as a writable numpy view into the kernel's memory.

        ``view[i]`` is element ``i`` (the kernel keeps them ``round_up(value_size, 8)`` bytes
        apart; ``dtype`` covers the start of each value: ``value_size`` must be a multiple of
        its size, more than one gives a 2-D view).  Writes are seen by BPF programs at once
        and read back by ``lookup``; no syscall.  The mapping (shared, read/write, the length
        rounded up to pages) is made on first use and kept until ``close()``.
        """
        import numpy as np

        dt = np.dtype(dtype)
        view = self._views.get(dt)
        if view is not None:
            return view
        if self.type != BPF_MAP_TYPE_ARRAY:
            raise ValidationError(f"{self.name}.type", self.type, "only an ARRAY map can be mmap-ed")
        if self.value_size % dt.itemsize:
            raise ValidationError("dtype", str(dt), f"value size {self.value_size} is not a multiple of its size")
        if not self.mmapable:
            raise KernelError(f"mmap {self.name}", errno.EINVAL, "the map was created without BPF_F_MMAPABLE")
        stride = _round8(self.value_size)
        if self._mm is None:
            length = -(-stride * self.max_entries // mmap.PAGESIZE) * mmap.PAGESIZE
            try:
                self._mm = mmap.mmap(self._fd(), length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as exc:
                raise KernelError(f"mmap {self.name}", exc.errno or errno.EIO, f"{length} bytes") from None
        per = self.value_size // dt.itemsize
        shape: tuple = (self.max_entries,) if per == 1 else (self.max_entries, per)
        strides: tuple = (stride,) if per == 1 else (stride, dt.itemsize)
        view = np.ndarray(shape, dtype=dt, buffer=self._mm, strides=strides)
        self._views[dt] = view
        return view

    def _unmap(self) -> None:
        """Forget the mapping; it goes away now, or with the last view a caller still holds.

        Never ``mmap.close()``: a numpy array made on the mmap holds a reference to it but
        no buffer export, so closing would unmap memory a live view still points at. The
        mmap object unmaps when its last reference (ours, or a view's ``base``) is gone.
        """
        self._views.clear()
        self._mm = None

    def close(self) -> None:
        self._unmap()
        super().close()

    # map-in-map helpers -----------------------------------------------------------

    def set_inner_map(self, key: bytes | int, inner: "Map") -> None:
        """Place ``inner`` into this ARRAY_OF_MAPS / HASH_OF_MAPS at ``key`` (int = u32 index)."""
        k = struct.pack("<I", key) if isinstance(key, int) else key
        self.update(k, struct.pack("<I", inner._fd()))

    def inner_map_id(self, key: bytes | int) -> int | None:
        """Kernel id of the map stored at ``key`` (None if the slot is empty)."""
        k = struct.pack("<I", key) if isinstance(key, int) else key
        v = self.lookup(k)
        return None if v is None else struct.unpack("<I", v)[0]  # type: ignore[arg-type]



def create_map(map_type: int, key_size: int, value_size: int, max_entries: int, *,
               name: str = "", flags: int = 0, numa_node: int | None = None,
               inner_map_fd: int | None = None) -> Map:
    """Create a standalone map (e.g. an inner LRU for ``lru_mapping``); the Map owns its fd."""
    for field, v in (("key_size", key_size), ("value_size", value_size), ("max_entries", max_entries)):
        if not isinstance(v, int) or v < 0 or v > 0xFFFFFFFF:
            raise ValidationError(field, v, "must be an unsigned 32-bit integer")
    opts = ffi.new("struct bpf_map_create_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_create_opts")
    opts.map_flags = flags
    if numa_node is not None:
        if numa_node < 0:
            raise ValidationError("numa_node", numa_node, "must be >= 0")
        opts.map_flags |= BPF_F_NUMA_NODE
        opts.numa_node = numa_node
    if inner_map_fd is not None:
        opts.inner_map_fd = inner_map_fd
    label = name or f"type {map_type}"
    cname = name[:15].encode() if name else ffi.NULL
    fd = check(lib.bpf_map_create(map_type, cname, key_size, value_size, max_entries, opts),
               f"create map {label}")
    return Map(name, fd, map_type, key_size, value_size, max_entries, int(opts.map_flags), owned=True)


# --- programs ----------------------------------------------------------------

@attrs.frozen
class TestRunResult:
    """Outcome of BPF_PROG_TEST_RUN: verdict, output frame, average ns per run, output ctx."""

    __test__ = False  # not a pytest class

    retval: int
    data: bytes
    duration_ns: int
    ctx: bytes | None = None


class Program(_BpfFd):
    """One loaded BPF program fd."""

    _kind = "program"
    _info_struct = "bpf_prog_info"

    def __init__(self, name: str, fd: int, prog_type: int, *, owned: bool = False) -> None:
        self.name = name
        self.fd = fd
        self.type = prog_type
        self._owned = owned

    def __repr__(self) -> str:
        return f"Program({self.name!r}, fd={self.fd}, type={self.type})"

    @classmethod
    def from_fd(cls, fd: int, *, owned: bool = False, name: str | None = None) -> "Program":
        info = cls._info_of(fd, f"fd {fd}")
        return cls(name or ffi.string(info.name).decode(), fd, info.type, owned=owned)

    @classmethod
    def from_id(cls, prog_id: int) -> "Program":
        return cls._owning(check(lib.bpf_prog_get_fd_by_id(prog_id), f"open program id {prog_id}"))

    def map_ids(self) -> list[int]:
        """Ids of the maps the program uses (its .rodata included)."""
        fd = self._fd()
        n = int(self._info_of(fd, self.name).nr_map_ids)
        if n == 0:
            return []
        ids = ffi.new("__u32[]", n)
        info = ffi.new("struct bpf_prog_info *")
        info.nr_map_ids = n
        info.map_ids = int(ffi.cast("uintptr_t", ids))
        ln = ffi.new("__u32 *", ffi.sizeof("struct bpf_prog_info"))
        check(lib.bpf_obj_get_info_by_fd(fd, info, ln), f"get map ids of program {self.name}")
        return [int(ids[i]) for i in range(min(n, int(info.nr_map_ids)))]

    def test_run(self, data: bytes, *, ctx: bytes | None = None, repeat: int = 1,
                 data_size_out: int = 4096, ctx_size_out: int = 0, flags: int = 0,
                 cpu: int = 0) -> TestRunResult:
        """Run the program once (or ``repeat`` times) on ``data`` with BPF_PROG_TEST_RUN.

        The output buffer is at least ``len(data) + 256`` bytes so encapsulation fits.
        """
        data = bytes(data)
        data_size_out = max(data_size_out, len(data) + 256)
        opts = ffi.new("struct bpf_test_run_opts *")
        opts.sz = ffi.sizeof("struct bpf_test_run_opts")
        din = ffi.from_buffer(data) if data else ffi.NULL
        opts.data_in = din
        opts.data_size_in = len(data)
        out = ffi.new("char[]", max(data_size_out, 1))
        opts.data_out = out
        opts.data_size_out = data_size_out
        cin = None
        if ctx is not None:
            cin = ffi.from_buffer(bytes(ctx))
            opts.ctx_in = cin
            opts.ctx_size_in = len(ctx)
        cout = None
        if ctx_size_out:
            cout = ffi.new("char[]", ctx_size_out)
            opts.ctx_out = cout
            opts.ctx_size_out = ctx_size_out
        opts.repeat = repeat
        opts.flags = flags
        opts.cpu = cpu
        check(lib.bpf_prog_test_run_opts(self._fd(), opts), f"test run {self.name}")
        n = min(opts.data_size_out, data_size_out)
        return TestRunResult(
            retval=int(opts.retval),
            data=ffi.buffer(out, n)[:],
            duration_ns=int(opts.duration),
            ctx=ffi.buffer(cout, opts.ctx_size_out)[:] if cout is not None else None,
        )

    def test_run_live(self, data: bytes, ifindex: int, repeat: int = 1, batch_size: int = 0) -> TestRunResult:
        """XDP live-frames test run (frames really go out on XDP_TX/REDIRECT); for benchmarks."""
        data = bytes(data)
        md = ffi.new("struct xdp_md *")
        md.data_end = len(data)  # the kernel wants data=0, data_end=len(frame)
        md.ingress_ifindex = ifindex
        opts = ffi.new("struct bpf_test_run_opts *")
        opts.sz = ffi.sizeof("struct bpf_test_run_opts")
        din = ffi.from_buffer(data)
        opts.data_in = din
        opts.data_size_in = len(data)
        opts.ctx_in = md
        opts.ctx_size_in = ffi.sizeof("struct xdp_md")
        opts.repeat = repeat
        opts.flags = BPF_F_TEST_XDP_LIVE_FRAMES
        opts.batch_size = batch_size
        check(lib.bpf_prog_test_run_opts(self._fd(), opts), f"live test run {self.name}")
        return TestRunResult(retval=int(opts.retval), data=b"", duration_ns=int(opts.duration), ctx=None)

    def attach_xdp(self, ifindex: int, mode: str = "native", replace: bool = False,
                   expected_prog_fd: int | None = None) -> None:
        """Attach as the XDP program of ``ifindex``; replace=False fails (EBUSY) if one is there.

        ``expected_prog_fd``: replace atomically only if that program is the attached one
        (XDP_FLAGS_REPLACE; EEXIST otherwise) -- a hitless upgrade.
        """
        flags = _xdp_mode_flags(mode)
        opts = ffi.NULL
        if expected_prog_fd is not None:
            flags |= XDP_FLAGS_REPLACE
            opts = ffi.new("struct bpf_xdp_attach_opts *")
            opts.sz = ffi.sizeof("struct bpf_xdp_attach_opts")
            opts.old_prog_fd = expected_prog_fd
        elif not replace:
            flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
        check(lib.bpf_xdp_attach(ifindex, self._fd(), flags, opts),
              f"attach xdp program {self.name} to ifindex {ifindex} ({mode})")



def detach_xdp(ifindex: int, mode: str = "native") -> None:
    """Remove the XDP program of ``ifindex`` in ``mode`` (no error if none is attached)."""
    check(lib.bpf_xdp_detach(ifindex, _xdp_mode_flags(mode), ffi.NULL),
          f"detach xdp from ifindex {ifindex} ({mode})")


def xdp_attached_prog_id(ifindex: int, mode: str = "native") -> int:
    """Id of the XDP program attached to ``ifindex`` in ``mode``; 0 if none."""
    pid = ffi.new("__u32 *")
    check(lib.bpf_xdp_query_id(ifindex, _xdp_mode_flags(mode), pid),
          f"query xdp of ifindex {ifindex} ({mode})")
    return int(pid[0])


def prog_fd_by_id(prog_id: int) -> int:
    """A new fd for program ``prog_id`` (caller closes it)."""
    return check(lib.bpf_prog_get_fd_by_id(prog_id), f"open program id {prog_id}")


def map_fd_by_id(map_id: int) -> int:
    """A new fd for map ``map_id`` (caller closes it)."""
    return check(lib.bpf_map_get_fd_by_id(map_id), f"open map id {map_id}")


# --- objects -------------------------------------------------------------------

def _internal_suffix(name: str) -> str | None:
    """'.rodata' for libbpf's internal map 'objname.rodata' etc."""
    i = name.find(".")
    return name[i:] if i >= 0 else None


class ObjectSpec(_Closing):
    """A BPF ELF object opened by libbpf but not loaded: adjust sizes/knobs, then ``load()``."""

    def __init__(self, obj, path: str) -> None:  # type: ignore[no-untyped-def]
        self._obj = obj
        self.path = path
        self._loaded = False
        self._inner_sizes: dict[str, tuple[int, int | None, int | None]] = {}
        self._inner_protos: dict[str, int] = {}

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "ObjectSpec":
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise BuildError(f"BPF object {path} not found (build it with: python -m katran.build)")
        clear_messages()
        obj = lib.bpf_object__open_file(path.encode(), ffi.NULL)
        if obj == ffi.NULL:
            raise KernelError(f"open {path}", ffi.errno or errno.EINVAL, "; ".join(recent_messages(5)))
        return cls(obj, path)

    def _live(self):  # type: ignore[no-untyped-def]
        if self._obj is None:
            raise KernelError(f"use of closed object {self.path}", errno.EBADF)
        if self._loaded:
            raise KernelError(f"modify {self.path} after load", errno.EBUSY)
        return self._obj

    def _all_maps(self):  # type: ignore[no-untyped-def]
        m = lib.bpf_object__next_map(self._obj, ffi.NULL)
        while m != ffi.NULL:
            yield m
            m = lib.bpf_object__next_map(self._obj, m)

    def _all_programs(self):  # type: ignore[no-untyped-def]
        p = lib.bpf_object__next_program(self._obj, ffi.NULL)
        while p != ffi.NULL:
            yield p
            p = lib.bpf_object__next_program(self._obj, p)

    @property
    def map_names(self) -> list[str]:
        """Names of the object's own maps (libbpf's internal .rodata/.bss maps excluded)."""
        return [ffi.string(lib.bpf_map__name(m)).decode() for m in self._all_maps()
                if not lib.bpf_map__is_internal(m)]

    @property
    def program_names(self) -> list[str]:
        return [ffi.string(lib.bpf_program__name(p)).decode() for p in self._all_programs()]

    def _map(self, name: str):  # type: ignore[no-untyped-def]
        obj = self._live()
        m = lib.bpf_object__find_map_by_name(obj, name.encode())
        if m == ffi.NULL:
            for cand in self._all_maps():
                cname = ffi.string(lib.bpf_map__name(cand)).decode()
                if lib.bpf_map__is_internal(cand) and _internal_suffix(cname) == name:
                    return cand
            raise ValidationError("map_name", name, f"no such map in {os.path.basename(self.path)}"
                                  f" (maps: {', '.join(self.map_names)})")
        return m

    def _prog(self, name: str):  # type: ignore[no-untyped-def]
        obj = self._live()
        p = lib.bpf_object__find_program_by_name(obj, name.encode())
        if p == ffi.NULL:
            raise ValidationError("program_name", name, f"no such program in {os.path.basename(self.path)}"
                                  f" (programs: {', '.join(self.program_names)})")
        return p

    def max_entries(self, map_name: str) -> int:
        return int(lib.bpf_map__max_entries(self._map(map_name)))

    def map_def(self, map_name: str) -> dict:
        """Declared shape of a map: type, key_size, value_size, max_entries, flags, and
        ``inner`` (the same for the inner-map template of a map-in-map, else None)."""
        m = self._map(map_name)

        def shape(p):  # type: ignore[no-untyped-def]
            return {"type": int(lib.bpf_map__type(p)), "key_size": int(lib.bpf_map__key_size(p)),
                    "value_size": int(lib.bpf_map__value_size(p)),
                    "max_entries": int(lib.bpf_map__max_entries(p)), "flags": int(lib.bpf_map__map_flags(p))}

        out = shape(m)
        inner = lib.bpf_map__inner_map(m)
        out["inner"] = None if inner == ffi.NULL else shape(inner)
        return out

    def set_max_entries(self, map_name: str, n: int) -> None:
        if not isinstance(n, int) or not 0 < n <= 0xFFFFFFFF:
            raise ValidationError(f"{map_name}.max_entries", n, "must be a positive 32-bit integer")
        check(lib.bpf_map__set_max_entries(self._map(map_name), n), f"set max_entries of {map_name}")

    def set_inner_map_max_entries(self, outer_map_name: str, n: int, *, flags: int | None = None,
                                  numa_node: int | None = None) -> None:
        """Size the inner-map template of an ARRAY_OF_MAPS / HASH_OF_MAPS.

        Maps later placed into the outer map must match the template's type, key/value
        size and flags (incl. BPF_F_NUMA_NODE): pass ``flags``/``numa_node`` to match
        inner maps made with ``create_map(..., numa_node=...)``.
        libbpf 1.1 crashes in bpf_map__set_max_entries() on an inner template, so all
        this is applied at load(): a template map is created and handed to the outer
        map with bpf_map__set_inner_map_fd().
        """
        if not isinstance(n, int) or not 0 < n <= 0xFFFFFFFF:
            raise ValidationError(f"{outer_map_name}.inner.max_entries", n, "must be a positive 32-bit integer")
        if numa_node is not None and numa_node < 0:
            raise ValidationError("numa_node", numa_node, "must be >= 0")
        inner = lib.bpf_map__inner_map(self._map(outer_map_name))
        if inner == ffi.NULL:
            raise ValidationError("map_name", outer_map_name, "is not a map-in-map with an inner template")
        self._inner_sizes[outer_map_name] = (n, flags, numa_node)
        self._drop_proto(outer_map_name)

    def set_inner_map_prototype(self, outer_map_name: str, inner: "Map | int") -> None:
        """Use an existing map (e.g. the first per-core LRU) as the inner-map template.

        Like Katran's setInnerMapPrototype: every map later placed into the outer map
        must have the prototype's type, key/value size and flags.
        """
        fd = inner if isinstance(inner, int) else inner._fd()
        if lib.bpf_map__inner_map(self._map(outer_map_name)) == ffi.NULL:
            raise ValidationError("map_name", outer_map_name, "is not a map-in-map with an inner template")
        self._drop_proto(outer_map_name)
        self._inner_sizes.pop(outer_map_name, None)
        self._inner_protos[outer_map_name] = os.dup(fd)  # ours until load()

    def _drop_proto(self, outer_map_name: str) -> None:
        fd = self._inner_protos.pop(outer_map_name, None)
        if fd is not None:
            os.close(fd)

    def _apply_inner_sizes(self) -> list[Map]:
        templates = []
        try:
            for outer_name, (n, flags, numa_node) in self._inner_sizes.items():
                outer = self._map(outer_name)
                inner = lib.bpf_map__inner_map(outer)
                if flags is None:
                    flags = lib.bpf_map__map_flags(inner)
                tmpl = create_map(lib.bpf_map__type(inner), lib.bpf_map__key_size(inner),
                                  lib.bpf_map__value_size(inner), n, name=f"{outer_name[:10]}_in",
                                  flags=flags, numa_node=numa_node)
                templates.append(tmpl)
                check(lib.bpf_map__set_inner_map_fd(outer, tmpl.fd), f"set inner map of {outer_name}")
            self._inner_sizes.clear()
            for outer_name, fd in list(self._inner_protos.items()):
                check(lib.bpf_map__set_inner_map_fd(self._map(outer_name), fd),
                      f"set inner map prototype of {outer_name}")
        except BaseException:
            for t in templates:
                t.close()
            raise
        return templates

    def set_map_type(self, map_name: str, map_type: int) -> None:
        """Change a map's type before load (e.g. ARRAY -> HASH for sparse 32-bit keys)."""
        check(lib.bpf_map__set_type(self._map(map_name), map_type), f"set type of {map_name}")

    def set_map_flags(self, map_name: str, flags: int) -> None:
        check(lib.bpf_map__set_map_flags(self._map(map_name), flags), f"set flags of {map_name}")

    def set_numa_node(self, map_name: str, node: int) -> None:
        m = self._map(map_name)
        check(lib.bpf_map__set_map_flags(m, lib.bpf_map__map_flags(m) | BPF_F_NUMA_NODE),
              f"set flags of {map_name}")
        check(lib.bpf_map__set_numa_node(m, node), f"set numa node of {map_name}")

    def reuse_map_fd(self, map_name: str, fd: int) -> None:
        """Make the object use an existing map (e.g. a pinned one shared with another object)."""
        check(lib.bpf_map__reuse_fd(self._map(map_name), fd), f"reuse fd {fd} for {map_name}")

    # knobs -------------------------------------------------------------------

    def _section_vars(self, section: str) -> dict[str, tuple[int, int]]:
        btf = lib.bpf_object__btf(self._obj)
        if btf == ffi.NULL:
            return {}
        return _btf.datasec_vars(btf, section)

    def rodata_vars(self) -> dict[str, tuple[int, int]]:
        """``const volatile`` globals: name -> (offset, size) inside .rodata."""
        self._live()
        return self._section_vars(".rodata")

    def rodata(self, name: str) -> bytes:
        """Current bytes of a .rodata variable (its compiled default unless set)."""
        off, size = self._rodata_var(name)
        return self._rodata_image()[off:off + size]

    def _rodata_var(self, name: str) -> tuple[int, int]:
        vars_ = self.rodata_vars()
        if name not in vars_:
            raise ValidationError("rodata", name, f"no such const volatile global in "
                                  f"{os.path.basename(self.path)} (known: {', '.join(sorted(vars_))})")
        return vars_[name]

    def _rodata_image(self) -> bytes:
        m = self._map(".rodata")
        psize = ffi.new("size_t *")
        p = lib.bpf_map__initial_value(m, psize)
        if p == ffi.NULL:
            raise KernelError(f"read .rodata of {self.path}", errno.ENOENT)
        return ffi.buffer(p, psize[0])[:]

    def set_rodata(self, name: str, value: bytes | int | bool) -> None:
        """Set a load-time knob; ints are packed little-endian to the variable's size."""
        off, size = self._rodata_var(name)
        if isinstance(value, (bool, int)):
            v = int(value)
            if v < 0:
                if v < -(1 << (8 * size - 1)):
                    raise ValidationError(name, value, f"does not fit in {size} bytes")
                v += 1 << (8 * size)
            if v >= 1 << (8 * size):
                raise ValidationError(name, value, f"does not fit in {size} bytes")
            raw = v.to_bytes(size, "little")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            if len(raw) != size:
                raise ValidationError(name, raw.hex(), f"must be {size} bytes, got {len(raw)}")
        else:
            raise ValidationError(name, value, "must be bytes, int or bool")
        image = bytearray(self._rodata_image())
        image[off:off + size] = raw
        m = self._map(".rodata")
        check(lib.bpf_map__set_initial_value(m, bytes(image), len(image)), f"set rodata {name}")

    # programs -----------------------------------------------------------------

    def set_program_type(self, prog_name: str, prog_type: int) -> None:
        check(lib.bpf_program__set_type(self._prog(prog_name), prog_type), f"set type of {prog_name}")

    def set_autoload(self, prog_name: str, autoload: bool) -> None:
        """Skip (False) loading a program of the object."""
        check(lib.bpf_program__set_autoload(self._prog(prog_name), autoload), f"set autoload of {prog_name}")

    # load ----------------------------------------------------------------------

    def load(self) -> "LoadedObject":
        """Create the maps and load the programs; the spec is consumed by the result."""
        obj = self._live()
        templates = self._apply_inner_sizes()
        clear_messages()
        try:
            ret = lib.bpf_object__load(obj)
        finally:
            for t in templates:  # the kernel keeps its own copy of the inner map's shape
                t.close()
            for name in list(self._inner_protos):
                self._drop_proto(name)
        if ret < 0:
            tail = recent_messages(30)
            raise KernelError(f"load {os.path.basename(self.path)}", -ret,
                              "\n".join(tail) if tail else "")
        self._loaded = True
        loaded = LoadedObject(self)
        return loaded

    def close(self) -> None:
        for name in list(getattr(self, "_inner_protos", ())):
            self._drop_proto(name)
        if self._obj is not None and not self._loaded:
            lib.bpf_object__close(self._obj)
        self._obj = None


class LoadedObject(NamedHandles, _Closing):
    """A loaded BPF object: its maps and programs by name; ``close()`` frees everything."""

    def __init__(self, spec: ObjectSpec) -> None:
        self._obj = spec._obj
        spec._obj = None  # ownership moves here
        self.path = spec.path
        self.maps: dict[str, Map] = {}
        self.internal_maps: dict[str, Map] = {}
        self.programs: dict[str, Program] = {}
        m = lib.bpf_object__next_map(self._obj, ffi.NULL)
        while m != ffi.NULL:
            name = ffi.string(lib.bpf_map__name(m)).decode()
            wrapped = Map(name, lib.bpf_map__fd(m), lib.bpf_map__type(m), lib.bpf_map__key_size(m),
                          lib.bpf_map__value_size(m), lib.bpf_map__max_entries(m),
                          lib.bpf_map__map_flags(m))
            if lib.bpf_map__is_internal(m):
                self.internal_maps[_internal_suffix(name) or name] = wrapped
            else:
                self.maps[name] = wrapped
            m = lib.bpf_object__next_map(self._obj, m)
        p = lib.bpf_object__next_program(self._obj, ffi.NULL)
        while p != ffi.NULL:
            name = ffi.string(lib.bpf_program__name(p)).decode()
            fd = lib.bpf_program__fd(p)
            if fd >= 0:  # autoload disabled programs have no fd
                self.programs[name] = Program(name, fd, lib.bpf_program__type(p))
            p = lib.bpf_object__next_program(self._obj, p)

    def close(self) -> None:
        if self._obj is None:
            return
        for m in (*self.maps.values(), *self.internal_maps.values()):
            m._unmap()
            m.fd = -1
        for p in self.programs.values():
            p.fd = -1
        lib.bpf_object__close(self._obj)
        self._obj = None

    @property
    def closed(self) -> bool:
        return self._obj is None


def load_object(path: str | os.PathLike[str], *, max_entries: dict[str, int] | None = None,
                rodata: dict[str, bytes | int | bool] | None = None) -> LoadedObject:
    """Shortcut: open, size maps, set knobs, load."""
    spec = ObjectSpec.open(path)
    try:
        for name, n in (max_entries or {}).items():
            spec.set_max_entries(name, n)
        for name, v in (rodata or {}).items():
            spec.set_rodata(name, v)
        return spec.load()
    finally:
        spec.close()


def btf_struct_layout(obj_path: str | os.PathLike[str], struct_name: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """(size, {member: (offset_bytes, size_bytes)}) of a struct from the object's BTF."""
    return _btf.btf_struct_layout(obj_path, struct_name)


def ensure_bpffs(path: str = "/sys/fs/bpf") -> None:
    """Mount bpffs at ``path`` unless it is mounted already."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] == path and parts[2] == "bpf":
                    return
    except OSError:
        pass
    os.makedirs(path, exist_ok=True)
    if libc.mount(b"bpf", path.encode(), b"bpf", 0, ffi.NULL) != 0:
        raise KernelError(f"mount bpffs at {path}", ffi.errno)
