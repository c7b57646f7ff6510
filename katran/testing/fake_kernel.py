"""A dict-backed fake of :class:`katran.kernel.Kernel`, with fault injection.

It opens the real BPF ELF objects (libbpf parses them without privileges) to learn
their maps, programs and knobs, then keeps every map in a Python dict with the
kernel's rules: array keys must be in range and cannot be deleted, a full hash
refuses a new key with E2BIG, per-CPU values are lists, program arrays and
map-in-maps store fds and read back ids, inner maps must match their template.

Fault injection::

    k = FakeKernel()
    k.fail("map_update", nth=3, err=errno.ENOSPC)  # the 3rd map update from now fails
    k.fail("write", nth=1)                          # the next write of any kind fails

Operations: ``open_object``, ``load``, ``create_map``, ``map_lookup``, ``map_update``,
``map_delete``, ``map_update_batch``, ``map_delete_batch``, ``map_mmap`` (``value_view``),
``map_view_write`` (an assignment through such a view), ``map_by_id``, ``map_by_pin``,
``program_by_pin``, ``pin``, ``unpin``, ``attach_xdp``, ``detach_xdp``, ``xdp_query``,
``attach_tc``, ``detach_tc``, ``ifindex``, ``lock``; ``write`` matches any map write and
``create_map``, ``*`` any operation.
A fault fires once. ``calls`` counts every operation.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import struct
from typing import Optional

import attrs
import numpy as np

from ..adapter import bpf  # only to parse the ELF objects with libbpf: no privileges needed
from ..errors import KernelError, NotFoundError, ValidationError
from ..kernel import (
    BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_ARRAY_OF_MAPS,
    BPF_MAP_TYPE_HASH_OF_MAPS,
    BPF_MAP_TYPE_LRU_HASH,
    BPF_MAP_TYPE_LRU_PERCPU_HASH,
    BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_MAP_TYPE_PERCPU_HASH,
    BPF_MAP_TYPE_PROG_ARRAY,
    BPF_F_MMAPABLE,
    NamedHandles,
)

WRITE_OPS = frozenset({"map_update", "map_delete", "map_update_batch", "map_delete_batch", "map_view_write",
                       "create_map"})
PAGE_SIZE = 4096
ARRAY_TYPES = frozenset({BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_PROG_ARRAY,
                         BPF_MAP_TYPE_ARRAY_OF_MAPS})
PERCPU_TYPES = frozenset({BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_LRU_PERCPU_HASH})
FD_TYPES = frozenset({BPF_MAP_TYPE_PROG_ARRAY, BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_HASH_OF_MAPS})
LRU_TYPES = frozenset({BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_LRU_PERCPU_HASH})
BPF_NOEXIST, BPF_EXIST = 1, 2
_U32 = struct.Struct("<I")
_ELF_CACHE: dict = {}  # (path, mtime, size) -> what libbpf read from the ELF


@attrs.define
class Interface:
    ifindex: int
    mac: str
    addresses: list = attrs.field(factory=list)


@attrs.define
class _Fault:
    op: str
    remaining: int
    err: int


class _Store:
    """A kernel object (map or program): alive while a handle, a pin or a reference holds it."""

    def __init__(self, kernel: "FakeKernel", kind: str, name: str) -> None:
        self.kernel = kernel
        self.kind = kind
        self.name = name
        self.id = kernel._new_id()
        self.handles = 0
        self.refs = 0  # held by an outer map / prog array / XDP or tc attachment
        self.pins = 0

    @property
    def alive(self) -> bool:
        return self.handles > 0 or self.refs > 0 or self.pins > 0


class _MapStore(_Store):
    def __init__(self, kernel, name, map_type, key_size, value_size, max_entries, flags=0, inner=None):
        super().__init__(kernel, "map", name)
        self.type = map_type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self.inner = inner  # template shape of a map-in-map
        self.data: dict = {}  # key -> value (array: only slots written non-zero); fd maps: key -> _Store
        # an mmap-able ARRAY keeps its values in memory instead, as the kernel lays them out
        # (round_up(value_size, 8) bytes apart, whole pages): lookups and updates use it,
        # and value_view() hands it out (np.zeros: pages never written cost nothing)
        self.mem: Optional[np.ndarray] = None
        self.stride = (value_size + 7) & ~7
        if map_type == BPF_MAP_TYPE_ARRAY and flags & BPF_F_MMAPABLE:
            self.mem = np.zeros(-(-self.stride * max_entries // PAGE_SIZE) * PAGE_SIZE, dtype=np.uint8)

    def read_slot(self, idx: int) -> bytes:
        off = idx * self.stride
        return self.mem[off:off + self.value_size].tobytes()

    def write_slot(self, idx: int, value: bytes) -> None:
        off = idx * self.stride
        self.mem[off:off + self.value_size] = np.frombuffer(value, dtype=np.uint8)

    def mem_contents(self) -> dict:
        """key -> value of every slot that is not all zeros (like ``data`` of other arrays)."""
        rows = self.mem[: self.stride * self.max_entries].reshape(self.max_entries, self.stride)
        if self.stride % 8 == 0:  # padding stays zero: one 8-byte word per element to test
            words = rows.view(np.uint64)
            nonzero = np.flatnonzero(words.any(axis=1)) if words.shape[1] > 1 else np.flatnonzero(words[:, 0])
        else:
            nonzero = np.flatnonzero(rows.any(axis=1))
        return {_U32.pack(int(i)): self.read_slot(int(i)) for i in nonzero}


class _FakeView(np.ndarray):
    """The values of a fake mmap-able array, as ``value_view`` hands them out: a numpy view
    of the map's own memory.  An assignment into it (``view[keys] = values``) is the fake's
    ``map_view_write`` operation, so a fault can be injected there like on any other write
    (it then leaves the first half of an indexed write done, like a failed batch)."""

    _fake_store = None
    _fake_name = ""

    def __array_finalize__(self, obj) -> None:
        self._fake_store = getattr(obj, "_fake_store", None)
        self._fake_name = getattr(obj, "_fake_name", "")

    def __setitem__(self, key, value) -> None:
        s = self._fake_store
        if s is not None and s.mem is not None and np.may_share_memory(self, s.mem):
            try:
                s.kernel._call("map_view_write", f"write {self._fake_name} through its mmap")
            except KernelError:
                if isinstance(key, np.ndarray) and key.ndim == 1 and np.ndim(value) == 1 and len(value) == len(key):
                    half = len(key) // 2
                    super().__setitem__(key[:half], np.asarray(value)[:half])
                raise
        super().__setitem__(key, value)


class _Handle:
    _kind = "object"

    def __init__(self, store: _Store) -> None:
        self._store = store
        kernel = store.kernel
        self.fd = kernel._new_fd(self)
        store.handles += 1

    @property
    def name(self) -> str:
        return self._store.name

    @property
    def id(self) -> int:
        self._live()
        return self._store.id

    def _live(self) -> _Store:
        if self.fd < 0:
            raise KernelError(f"use of closed {self._kind} {self.name}", errno.EBADF)
        return self._store

    def pin(self, path) -> None:
        self._store.kernel._pin(self._live(), os.fspath(path))

    def close(self) -> None:
        self.__dict__.pop("_views", None)
        if self.fd >= 0:
            self._store.kernel._fds.pop(self.fd, None)
            self.fd = -1
            self._store.handles -= 1
            self._store.kernel._collect()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FakeMap(_Handle):
    """A handle on one fake map; same methods as ``katran.adapter.bpf.Map``."""

    _kind = "map"

    type = property(lambda self: self._store.type)
    key_size = property(lambda self: self._store.key_size)
    value_size = property(lambda self: self._store.value_size)
    max_entries = property(lambda self: self._store.max_entries)
    flags = property(lambda self: self._store.flags)
    per_cpu = property(lambda self: self._store.type in PERCPU_TYPES)

    def __repr__(self) -> str:
        s = self._store
        return f"FakeMap({s.name!r}, type={s.type}, key={s.key_size}, value={s.value_size}, max={s.max_entries})"

    # encoding -------------------------------------------------------------
    def _key(self, key) -> bytes:
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise ValidationError(f"{self.name}.key", key, "must be bytes")
        key = bytes(key)
        if len(key) != self.key_size:
            raise ValidationError(f"{self.name}.key", key.hex(), f"must be {self.key_size} bytes, got {len(key)}")
        return key

    def _value(self, value):
        s = self._store
        if s.type in PERCPU_TYPES:
            ncpu = s.kernel.ncpus
            if isinstance(value, (bytes, bytearray, memoryview)):
                values = [bytes(value)] * ncpu
            else:
                values = [bytes(v) for v in value]
            if len(values) != ncpu:
                raise ValidationError(f"{self.name}.value", len(values), f"per-CPU value needs {ncpu} entries")
            for v in values:
                if len(v) != s.value_size:
                    raise ValidationError(f"{self.name}.value", v.hex(), f"must be {s.value_size} bytes, got {len(v)}")
            return values
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ValidationError(f"{self.name}.value", value, "must be bytes")
        value = bytes(value)
        if len(value) != s.value_size:
            raise ValidationError(f"{self.name}.value", value.hex(), f"must be {s.value_size} bytes, got {len(value)}")
        return value

    def _zero(self):
        s = self._store
        z = bytes(s.value_size)
        return [z] * s.kernel.ncpus if s.type in PERCPU_TYPES else z

    def _array_index(self, key: bytes) -> Optional[int]:
        idx = _U32.unpack(key[:4])[0] if self.key_size == 4 else None
        if idx is None or idx >= self.max_entries:
            return None
        return idx

    # element ops ------------------------------------------------------------
    def lookup(self, key):
        s = self._live()
        k = self._key(key)
        s.kernel._call("map_lookup", f"lookup {self.name}")
        if s.type in ARRAY_TYPES and self._array_index(k) is None:
            return None
        if s.type in FD_TYPES:
            ref = s.data.get(k)
            return None if ref is None else _U32.pack(ref.id)
        if s.mem is not None:
            return s.read_slot(self._array_index(k))
        v = s.data.get(k)
        if v is None and s.type in ARRAY_TYPES:
            return self._zero()
        return list(v) if isinstance(v, list) else v

    def __contains__(self, key) -> bool:
        return self.lookup(key) is not None

    def _store_value(self, k: bytes, value, flags: int) -> None:
        s = self._store
        if s.type in FD_TYPES:
            self._store_fd(k, value, flags)
            return
        v = self._value(value)
        if s.type in ARRAY_TYPES:
            if self._array_index(k) is None:
                raise KernelError(f"update {self.name}", errno.E2BIG)
            if flags == BPF_NOEXIST:
                raise KernelError(f"update {self.name}", errno.EEXIST)
            if s.mem is not None:
                s.write_slot(self._array_index(k), v)
            elif v == self._zero():
                s.data.pop(k, None)
            else:
                s.data[k] = v
            return
        present = k in s.data
        if flags == BPF_NOEXIST and present:
            raise KernelError(f"update {self.name}", errno.EEXIST)
        if flags == BPF_EXIST and not present:
            raise KernelError(f"update {self.name}", errno.ENOENT)
        if not present and len(s.data) >= s.max_entries:
            if s.type in LRU_TYPES:
                s.data.pop(next(iter(s.data)))
            else:
                raise KernelError(f"update {self.name}", errno.E2BIG)
        s.data[k] = v

    def _store_fd(self, k: bytes, value, flags: int) -> None:
        s = self._store
        if s.type in ARRAY_TYPES and self._array_index(k) is None:
            raise KernelError(f"update {self.name}", errno.E2BIG)
        fd = _U32.unpack(bytes(value)[:4])[0]
        target = s.kernel._fds.get(fd)
        want = FakeProgram if s.type == BPF_MAP_TYPE_PROG_ARRAY else FakeMap
        if not isinstance(target, want) or target.fd < 0:
            raise KernelError(f"update {self.name}", errno.EBADF, f"fd {fd} is not a {want._kind}")
        ref = target._store
        if isinstance(ref, _MapStore) and s.inner is not None:
            tmpl = s.inner
            if (ref.type, ref.key_size, ref.value_size) != (tmpl["type"], tmpl["key_size"], tmpl["value_size"]):
                raise KernelError(f"update {self.name}", errno.EINVAL, "inner map does not match the template")
        present = k in s.data
        if s.type == BPF_MAP_TYPE_HASH_OF_MAPS and not present and len(s.data) >= s.max_entries:
            raise KernelError(f"update {self.name}", errno.E2BIG)
        old = s.data.get(k)
        s.data[k] = ref
        ref.refs += 1
        if old is not None:
            old.refs -= 1
            s.kernel._collect()

    def update(self, key, value, flags: int = 0) -> None:
        s = self._live()
        k = self._key(key)
        s.kernel._call("map_update", f"update {self.name}")
        self._store_value(k, value, flags)

    def __setitem__(self, key, value) -> None:
        self.update(key, value)

    def delete(self, key) -> bool:
        s = self._live()
        k = self._key(key)
        s.kernel._call("map_delete", f"delete from {self.name}")
        return self._delete(k)

    def _delete(self, k: bytes) -> bool:
        s = self._store
        if s.type in ARRAY_TYPES and s.type not in FD_TYPES:
            raise KernelError(f"delete from {self.name}", errno.EINVAL, "array elements cannot be deleted")
        old = s.data.pop(k, None)
        if old is None:
            return False
        if isinstance(old, _Store):
            old.refs -= 1
            s.kernel._collect()
        return True

    def keys(self):
        s = self._live()
        if s.type in ARRAY_TYPES and s.type not in FD_TYPES:
            return iter([_U32.pack(i) for i in range(s.max_entries)])
        return iter(list(s.data))

    __iter__ = keys

    def items(self):
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def values(self):
        for _, v in self.items():
            yield v

    def lookup_batch(self, chunk: int = 256) -> list:
        return list(self.items())

    # batch ops ------------------------------------------------------------
    def _split(self, blob_or_list, size: int) -> list:
        if isinstance(blob_or_list, (bytes, bytearray, memoryview)):
            b = bytes(blob_or_list)
            if len(b) % size:
                raise ValidationError(f"{self.name}.keys", f"<{len(b)} bytes>", f"not a multiple of {size}")
            return [b[i:i + size] for i in range(0, len(b), size)]
        return list(blob_or_list)

    def update_batch(self, keys, values, flags: int = 0) -> None:
        s = self._live()
        ks = [self._key(k) for k in self._split(keys, self.key_size)]
        if isinstance(values, (bytes, bytearray, memoryview)) and s.type in PERCPU_TYPES:
            raise ValidationError(f"{self.name}.values", "<bytes>", "the fake takes per-CPU values as lists")
        vs = self._split(values, self.value_size)
        if len(vs) != len(ks):
            raise ValidationError(f"{self.name}.values", len(vs), f"need one value per key ({len(ks)} keys)")
        if not ks:
            return
        try:
            s.kernel._call("map_update_batch", f"batch update {self.name}")
        except KernelError:
            for k, v in list(zip(ks, vs))[: len(ks) // 2]:  # like the kernel: a prefix got written
                self._store_value(k, v, flags)
            raise
        for k, v in zip(ks, vs):
            self._store_value(k, v, flags)

    def delete_batch(self, keys) -> None:
        s = self._live()
        ks = [self._key(k) for k in self._split(keys, self.key_size)]
        if not ks:
            return
        s.kernel._call("map_delete_batch", f"batch delete {self.name}")
        for k in ks:
            if not self._delete(k):
                raise KernelError(f"batch delete {self.name}", errno.ENOENT, k.hex())

    # mmap of an array's values ------------------------------------------------
    @property
    def mmapable(self) -> bool:
        s = self._live()
        return s.type == BPF_MAP_TYPE_ARRAY and bool(s.flags & BPF_F_MMAPABLE)

    def value_view(self, dtype="<u4"):
        """Like ``bpf.Map.value_view``: the map's own memory as a (writable) numpy view."""
        s = self._live()
        dt = np.dtype(dtype)
        views = self.__dict__.setdefault("_views", {})  # one mapping per handle, like the adapter
        if dt in views:
            return views[dt]
        if s.type != BPF_MAP_TYPE_ARRAY:
            raise ValidationError(f"{self.name}.type", s.type, "only an ARRAY map can be mmap-ed")
        if s.value_size % dt.itemsize:
            raise ValidationError("dtype", str(dt), f"value size {s.value_size} is not a multiple of its size")
        s.kernel._call("map_mmap", f"mmap {self.name}")
        if s.mem is None:
            raise KernelError(f"mmap {self.name}", errno.EINVAL, "the map was created without BPF_F_MMAPABLE")
        per = s.value_size // dt.itemsize
        shape = (s.max_entries,) if per == 1 else (s.max_entries, per)
        strides = (s.stride,) if per == 1 else (s.stride, dt.itemsize)
        view = np.ndarray(shape, dtype=dt, buffer=s.mem, strides=strides).view(_FakeView)
        view._fake_store = s
        view._fake_name = s.name
        views[dt] = view
        return view

    # map-in-map -------------------------------------------------------------
    def set_inner_map(self, key, inner: "FakeMap") -> None:
        k = _U32.pack(key) if isinstance(key, int) else key
        self.update(k, _U32.pack(inner.fd))

    def inner_map_id(self, key) -> Optional[int]:
        k = _U32.pack(key) if isinstance(key, int) else key
        v = self.lookup(k)
        return None if v is None else _U32.unpack(v)[0]


class FakeProgram(_Handle):
    _kind = "program"

    type = property(lambda self: self._store.prog_type)

    def map_ids(self) -> list[int]:
        self._live()
        return list(getattr(self._store, "map_ids", []))

    def test_run(self, data: bytes, **kw):
        self._live()
        raise KernelError(f"test run {self.name}", errno.EOPNOTSUPP, "the fake kernel runs no BPF code")

    def attach_xdp(self, ifindex: int, mode: str = "native", replace: bool = False,
                   expected_prog_fd: Optional[int] = None) -> None:
        s = self._live()
        what = f"attach xdp program {self.name} to ifindex {ifindex} ({mode})"
        s.kernel._call("attach_xdp", what)
        if expected_prog_fd is not None:
            h = s.kernel._fds.get(expected_prog_fd)
            if h is None or s.kernel.xdp.get((ifindex, mode)) is not h._store:
                raise KernelError(what, errno.EEXIST)
            replace = True
        s.kernel._attach_xdp(s, ifindex, mode, replace)


class FakeSpec:
    """An opened object: shapes and knobs read from the real ELF, changed here, loaded into dicts."""

    def __init__(self, kernel: "FakeKernel", path: str) -> None:
        self.kernel = kernel
        self.path = path
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
        if key not in _ELF_CACHE:
            with bpf.ObjectSpec.open(path) as spec:
                _ELF_CACHE[key] = (
                    {name: spec.map_def(name) for name in spec.map_names},
                    list(spec.program_names),
                    {name: (size, int.from_bytes(spec.rodata(name), "little"))
                     for name, (_, size) in spec.rodata_vars().items()},
                    {name: off for name, (off, _) in spec.rodata_vars().items()},
                )
        maps, programs, rodata, offsets = _ELF_CACHE[key]
        self._maps = {name: dict(d, inner=None if d["inner"] is None else dict(d["inner"])) for name, d in maps.items()}
        self._programs = list(programs)
        self._rodata = dict(rodata)
        self._rodata_offsets = dict(offsets)
        self._loaded = False
        self._closed = False

    def _live(self) -> None:
        if self._closed:
            raise KernelError(f"use of closed object {self.path}", errno.EBADF)
        if self._loaded:
            raise KernelError(f"modify {self.path} after load", errno.EBUSY)

    def _map(self, name: str) -> dict:
        self._live()
        if name not in self._maps:
            raise ValidationError("map_name", name, f"no such map in {os.path.basename(self.path)}"
                                  f" (maps: {', '.join(self._maps)})")
        return self._maps[name]

    @property
    def map_names(self) -> list[str]:
        return list(self._maps)

    @property
    def program_names(self) -> list[str]:
        return list(self._programs)

    def map_def(self, name: str) -> dict:
        return dict(self._map(name))

    def max_entries(self, map_name: str) -> int:
        return self._map(map_name)["max_entries"]

    def set_max_entries(self, map_name: str, n: int) -> None:
        if not isinstance(n, int) or not 0 < n <= 0xFFFFFFFF:
            raise ValidationError(f"{map_name}.max_entries", n, "must be a positive 32-bit integer")
        self._map(map_name)["max_entries"] = n

    def set_inner_map_max_entries(self, outer_map_name: str, n: int, *, flags=None, numa_node=None) -> None:
        m = self._map(outer_map_name)
        if m["inner"] is None:
            raise ValidationError("map_name", outer_map_name, "is not a map-in-map with an inner template")
        m["inner"] = dict(m["inner"], max_entries=n)

    def set_map_type(self, map_name: str, map_type: int) -> None:
        self._map(map_name)["type"] = map_type

    def reuse_map_fd(self, map_name: str, fd: int) -> None:
        h = self.kernel._fds.get(fd)
        if not isinstance(h, FakeMap):
            raise KernelError(f"reuse fd {fd} for {map_name}", errno.EBADF)
        self._map(map_name)["reuse"] = h._store

    def rodata_vars(self) -> dict:
        self._live()
        return {name: (self._rodata_offsets[name], size) for name, (size, _) in self._rodata.items()}

    def rodata(self, name: str) -> bytes:
        size, value = self._rodata[name]
        return value.to_bytes(size, "little")

    def set_rodata(self, name: str, value) -> None:
        self._live()
        if name not in self._rodata:
            raise ValidationError("rodata", name, f"no such const volatile global in {os.path.basename(self.path)}")
        size, _ = self._rodata[name]
        v = int.from_bytes(value, "little") if isinstance(value, (bytes, bytearray)) else int(value)
        if not 0 <= v < 1 << (8 * size):
            raise ValidationError(name, value, f"does not fit in {size} bytes")
        self._rodata[name] = (size, v)

    def load(self) -> "FakeObject":
        self._live()
        self.kernel._call("load", f"load {os.path.basename(self.path)}")
        self._loaded = True
        return FakeObject(self)

    def close(self) -> None:
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FakeObject(NamedHandles):
    """A loaded fake object: ``maps``, ``programs``, and the knob values it was loaded with."""

    def __init__(self, spec: FakeSpec) -> None:
        k = spec.kernel
        self.path = spec.path
        self.kernel = k
        self.rodata = {name: v for name, (_, v) in spec._rodata.items()}
        self.maps: dict[str, FakeMap] = {}
        for name, d in spec._maps.items():
            store = d.get("reuse") or _MapStore(k, name, d["type"], d["key_size"], d["value_size"],
                                                d["max_entries"], d["flags"], d["inner"])
            self.maps[name] = FakeMap(store)
        self.internal_maps: dict[str, FakeMap] = {}
        if spec._rodata:
            end = max(spec._rodata_offsets[n] + size for n, (size, _) in spec._rodata.items())
            image = bytearray(end)
            for n, (size, v) in spec._rodata.items():
                off = spec._rodata_offsets[n]
                image[off:off + size] = v.to_bytes(size, "little")
            ro = _MapStore(k, f"{os.path.basename(self.path)[:8]}.rodata", BPF_MAP_TYPE_ARRAY, 4, len(image), 1)
            ro.data[_U32.pack(0)] = bytes(image)
            self.internal_maps[".rodata"] = FakeMap(ro)
        self.programs: dict[str, FakeProgram] = {}
        for name in spec._programs:
            store = _Store(k, "program", name)
            used = [m._store for m in (*self.maps.values(), *self.internal_maps.values())]
            store.map_ids = [m.id for m in used]
            store.used_maps = used  # a loaded program holds its maps, like the kernel
            for m in used:
                m.refs += 1
            self.programs[name] = FakeProgram(store)
        self._closed = False
        k.objects.append(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        for h in (*self.maps.values(), *self.internal_maps.values(), *self.programs.values()):
            h.close()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FakeKernel:
    """Dict-backed kernel; ``interfaces`` maps a name to an :class:`Interface`."""

    def __init__(self, ncpus: int = 2, interfaces: Optional[dict] = None) -> None:
        self.ncpus = ncpus
        self.interfaces = interfaces if interfaces is not None else {
            "lo": Interface(1, "00:00:00:00:00:00", ["127.0.0.1", "::1"]),
            "eth0": Interface(2, "02:00:00:00:00:02", ["10.0.0.2", "fc00::2", "fe80::2"]),
        }
        self.calls: collections.Counter = collections.Counter()
        self.objects: list[FakeObject] = []
        self.pins: dict[str, _Store] = {}
        self.xdp: dict[tuple, _Store] = {}  # (ifindex, mode) -> program
        self.tc: dict[tuple, tuple] = {}  # (ifindex, direction, prio) -> (program store, name, netns)
        self.clsact: set = set()
        self.host_addresses: dict[str, set] = collections.defaultdict(set)
        self.rp_filters: dict[str, int] = collections.defaultdict(int)
        self.bpffs_mounted: set = set()
        self.locked: set = set()
        self.pin_dirs: set = set()
        self.lock_log: list = []
        self._faults: list[_Fault] = []
        self._fds: dict[int, _Handle] = {}
        self._stores: dict[int, _Store] = {}
        self._next_fd = 100
        self._next_id = 1

    # bookkeeping --------------------------------------------------------------
    def _new_fd(self, handle: _Handle) -> int:
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = handle
        self._stores[handle._store.id] = handle._store
        return fd

    def _new_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    def _collect(self) -> None:
        """Free dead objects, releasing what they referenced (like the kernel's refcounts)."""
        changed = True
        while changed:
            changed = False
            for sid, store in list(self._stores.items()):
                if not store.alive:
                    del self._stores[sid]
                    changed = True
                    if isinstance(store, _MapStore):
                        for v in store.data.values():
                            if isinstance(v, _Store):
                                v.refs -= 1
                        store.data.clear()
                        store.mem = None  # a view still held keeps its memory, like an mmap
                    for m in getattr(store, "used_maps", ()):
                        m.refs -= 1
                    store.used_maps = []

    # fault injection ------------------------------------------------------------
    def fail(self, op: str, nth: int = 1, err: int = errno.ENOMEM) -> None:
        """The ``nth`` call of ``op`` from now raises KernelError(err); ``write``: any map write."""
        if nth < 1:
            raise ValueError("nth counts from 1")
        self._faults.append(_Fault(op, nth, err))

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    def _call(self, op: str, what: str) -> None:
        self.calls[op] += 1
        if op in WRITE_OPS:
            self.calls["write"] += 1
        for f in list(self._faults):
            if f.op in (op, "*") or (f.op == "write" and op in WRITE_OPS):
                f.remaining -= 1
                if f.remaining == 0:
                    self._faults.remove(f)
                    raise KernelError(what, f.err, "injected by FakeKernel")

    # inspection -----------------------------------------------------------------
    def live_maps(self) -> list:
        return [s for s in self._stores.values() if isinstance(s, _MapStore)]

    def map_contents(self, m: FakeMap) -> dict:
        """key -> value of a map; map-in-map values are the inner map's contents, prog arrays' the name."""
        return self._contents(m._store)

    def _contents(self, s: _MapStore) -> dict:
        if s.mem is not None:
            return s.mem_contents()
        out = {}
        for k, v in s.data.items():
            if isinstance(v, _MapStore):
                out[k] = ("map", self._contents(v))
            elif isinstance(v, _Store):
                out[k] = ("prog", v.name)
            elif isinstance(v, list):
                out[k] = tuple(v)
            else:
                out[k] = v
        return out

    def snapshot(self, obj: FakeObject) -> dict:
        """Every map of ``obj`` (name -> contents), comparable with ``==``."""
        return {name: self.map_contents(m) for name, m in obj.maps.items()}

    # the Kernel facade ----------------------------------------------------------
    def open_object(self, path) -> FakeSpec:
        path = os.fspath(path)
        self._call("open_object", f"open {path}")
        if not os.path.isfile(path):
            from ..errors import BuildError

            raise BuildError(f"BPF object {path} not found (build it with: python -m katran.build)")
        return FakeSpec(self, path)

    def create_map(self, map_type, key_size, value_size, max_entries, *, name="", flags=0, numa_node=None) -> FakeMap:
        self._call("create_map", f"create map {name or map_type}")
        for field, v in (("key_size", key_size), ("value_size", value_size), ("max_entries", max_entries)):
            if not isinstance(v, int) or not 0 < v <= 0xFFFFFFFF:
                raise KernelError(f"create map {name}", errno.EINVAL, f"{field}={v}")
        return FakeMap(_MapStore(self, name, map_type, key_size, value_size, max_entries, flags))

    def _by_id(self, kind: str, obj_id: int):
        s = self._stores.get(obj_id)
        if s is None or s.kind != kind or not s.alive:
            raise KernelError(f"open {kind} id {obj_id}", errno.ENOENT)
        return s

    def ring_reader(self, ring_map):  # type: ignore[no-untyped-def]
        from katran.errors import FeatureNotEnabledError

        raise FeatureNotEnabledError("packet capture needs the running kernel (BPF ring buffers); "
                                     "the fake kernel has none")

    def map_by_id(self, map_id: int) -> FakeMap:
        self._call("map_by_id", f"open map id {map_id}")
        return FakeMap(self._by_id("map", map_id))

    def program_by_id(self, prog_id: int) -> FakeProgram:
        self._call("program_by_id", f"open program id {prog_id}")
        return FakeProgram(self._by_id("program", prog_id))

    def _pinned(self, path, kind: str) -> _Store:
        path = os.fspath(path)
        s = self.pins.get(path)
        if s is None:
            raise KernelError(f"open pinned {kind} {path}", errno.ENOENT)
        if s.kind != kind:
            raise KernelError(f"open pinned {kind} {path}", errno.EINVAL)
        return s

    def map_by_pin(self, path) -> FakeMap:
        self._call("map_by_pin", f"open pinned map {path}")
        return FakeMap(self._pinned(path, "map"))

    def program_by_pin(self, path) -> FakeProgram:
        self._call("program_by_pin", f"open pinned program {path}")
        return FakeProgram(self._pinned(path, "program"))

    def _pin(self, store: _Store, path: str) -> None:
        self._call("pin", f"pin {store.kind} {store.name} at {path}")
        if path in self.pins:
            raise KernelError(f"pin {store.kind} {store.name} at {path}", errno.EEXIST)
        self.pins[path] = store
        store.pins += 1

    def unpin(self, path) -> bool:
        path = os.fspath(path)
        self._call("unpin", f"unpin {path}")
        s = self.pins.pop(path, None)
        if s is None:
            return False
        s.pins -= 1
        self._collect()
        return True

    def is_pinned(self, path) -> bool:
        return os.fspath(path) in self.pins

    def make_pin_dir(self, path) -> None:
        self.pin_dirs.add(os.fspath(path))

    def remove_pin_dir(self, path) -> bool:
        path = os.fspath(path)
        if path not in self.pin_dirs:
            return False
        for p in [p for p in self.pins if os.path.dirname(p) == path]:
            self.unpin(p)
        self.pin_dirs.discard(path)
        return True

    @contextlib.contextmanager
    def lock(self, directory):
        directory = os.fspath(directory)
        self._call("lock", f"lock {directory}")
        if directory in self.locked:
            raise KernelError(f"lock {directory}", errno.EDEADLK, "already locked (the fake has no waiting)")
        self.locked.add(directory)
        self.lock_log.append(directory)
        try:
            yield
        finally:
            self.locked.discard(directory)

    def ensure_bpffs(self, path: str = "/sys/fs/bpf") -> None:
        self.bpffs_mounted.add(path)

    # XDP
    def _attach_xdp(self, prog: _Store, ifindex: int, mode: str, replace: bool) -> None:
        key = (ifindex, mode)
        old = self.xdp.get(key)
        if old is not None and not replace:
            raise KernelError(f"attach xdp program {prog.name} to ifindex {ifindex} ({mode})", errno.EBUSY)
        self.xdp[key] = prog
        prog.refs += 1
        if old is not None:
            old.refs -= 1
            self._collect()

    def xdp_attached_prog_id(self, ifindex: int, mode: str = "native") -> int:
        self._call("xdp_query", f"query xdp of ifindex {ifindex} ({mode})")
        s = self.xdp.get((ifindex, mode))
        return 0 if s is None else s.id

    def detach_xdp(self, ifindex: int, mode: str = "native") -> None:
        self._call("detach_xdp", f"detach xdp from ifindex {ifindex} ({mode})")
        old = self.xdp.pop((ifindex, mode), None)
        if old is not None:
            old.refs -= 1
            self._collect()

    # tc
    def ensure_clsact(self, ifindex: int, netns=None) -> None:
        self.clsact.add((ifindex, netns))

    def attach_tc(self, ifindex: int, prog_fd: int, *, direction: str, prio: int, name: str, netns=None,
                  replace: bool = False) -> None:
        self._call("attach_tc", f"attach tc bpf {name} to ifindex {ifindex} {direction}")
        h = self._fds.get(prog_fd)
        if not isinstance(h, FakeProgram):
            raise KernelError(f"attach tc bpf {name}", errno.EBADF)
        key = (ifindex, direction, prio)
        old = self.tc.get(key)
        if old is not None and not replace:
            raise KernelError(f"attach tc bpf {name} to ifindex {ifindex} {direction}", errno.EEXIST)
        self.tc[key] = (h._store, name, netns)
        h._store.refs += 1
        if old is not None:  # replaced in one step, as RTM_NEWTFILTER with NLM_F_REPLACE
            old[0].refs -= 1
            self._collect()

    def detach_tc(self, ifindex: int, *, direction: str, prio: int, netns=None) -> None:
        self._call("detach_tc", f"detach tc bpf from ifindex {ifindex} {direction}")
        old = self.tc.pop((ifindex, direction, prio), None)
        if old is not None:
            old[0].refs -= 1
            self._collect()

    def tc_filters(self, ifindex: int, direction: str = "egress", netns=None) -> list[dict]:
        return [{"name": name, "prio": prio, "handle": 1, "id": store.id}
                for (idx, d, prio), (store, name, ns) in sorted(self.tc.items(), key=lambda kv: kv[0])
                if idx == ifindex and d == direction]

    # interfaces
    def _iface(self, name: str) -> Interface:
        self._call("ifindex", f"look up interface {name}")
        if name not in self.interfaces:
            raise NotFoundError("interface", name)
        return self.interfaces[name]

    def ifindex(self, name: str, netns=None) -> int:
        return self._iface(name).ifindex

    def interface_addresses(self, name: str, netns=None) -> list[str]:
        return list(self._iface(name).addresses)

    def mac_address(self, name: str, netns=None) -> str:
        return self._iface(name).mac

    # host configuration
    def add_host_address(self, ifname: str, addr: str) -> bool:
        if addr in self.host_addresses[ifname]:
            return False
        self.host_addresses[ifname].add(addr)
        return True

    def del_host_address(self, ifname: str, addr: str) -> bool:
        if addr not in self.host_addresses[ifname]:
            return False
        self.host_addresses[ifname].discard(addr)
        return True

    def rp_filter(self, ifname: str) -> dict:
        return {"all": self.rp_filters["all"], ifname: self.rp_filters[ifname]}

    def set_rp_filter(self, ifname: str, value: int) -> None:
        self.rp_filters[ifname] = value
