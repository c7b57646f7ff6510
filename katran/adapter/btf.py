"""Reading BTF (the type info clang puts in a BPF object): struct layouts and DATASEC vars."""

from __future__ import annotations

import os

from katran.errors import BuildError, KernelError, NotFoundError

from .libbpf import Closing, ffi, lib

BTF_KIND_INT = 1
BTF_KIND_PTR = 2
BTF_KIND_ARRAY = 3
BTF_KIND_STRUCT = 4
BTF_KIND_UNION = 5
BTF_KIND_ENUM = 6
BTF_KIND_TYPEDEF = 8
BTF_KIND_VOLATILE = 9
BTF_KIND_CONST = 10
BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15


def _kind(t) -> int:  # type: ignore[no-untyped-def]
    return (t.info >> 24) & 0x1F


def _vlen(t) -> int:  # type: ignore[no-untyped-def]
    return t.info & 0xFFFF


def _kflag(t) -> bool:  # type: ignore[no-untyped-def]
    return bool(t.info >> 31)


def _name(btf, off: int) -> str:  # type: ignore[no-untyped-def]
    p = lib.btf__name_by_offset(btf, off)
    return ffi.string(p).decode() if p != ffi.NULL else ""


def _members(btf, type_id: int, base: int, out: dict[str, tuple[int, int]]) -> None:  # type: ignore[no-untyped-def]
    t = lib.btf__type_by_id(btf, type_id)
    mems = ffi.cast("struct btf_member *", t + 1)
    for i in range(_vlen(t)):
        m = mems[i]
        bit_off = (m.offset & 0xFFFFFF) if _kflag(t) else m.offset
        off = base + bit_off // 8
        name = _name(btf, m.name_off)
        if not name:
            # anonymous struct/union member: its fields belong to the parent
            inner = lib.btf__resolve_type(btf, m.type)
            if inner > 0 and _kind(lib.btf__type_by_id(btf, inner)) in (BTF_KIND_STRUCT, BTF_KIND_UNION):
                _members(btf, inner, off, out)
            continue
        size = lib.btf__resolve_size(btf, m.type)
        out[name] = (off, int(size) if size >= 0 else 0)


def struct_layout(btf, struct_name: str) -> tuple[int, dict[str, tuple[int, int]]]:  # type: ignore[no-untyped-def]
    """(size, {member: (offset, size)}) of a struct/union (or typedef of one) in ``btf``."""
    for kind in (BTF_KIND_STRUCT, BTF_KIND_UNION, BTF_KIND_TYPEDEF):
        tid = lib.btf__find_by_name_kind(btf, struct_name.encode(), kind)
        if tid > 0:
            break
    else:
        raise NotFoundError("BTF struct", struct_name)
    tid = lib.btf__resolve_type(btf, tid)
    t = lib.btf__type_by_id(btf, tid)
    if _kind(t) not in (BTF_KIND_STRUCT, BTF_KIND_UNION):
        raise NotFoundError("BTF struct", struct_name)
    out: dict[str, tuple[int, int]] = {}
    _members(btf, tid, 0, out)
    return int(t.size_or_type), out


def datasec_vars(btf, section: str) -> dict[str, tuple[int, int]]:  # type: ignore[no-untyped-def]
    """Variables of a DATASEC (e.g. ``.rodata``): name -> (offset, size)."""
    tid = lib.btf__find_by_name_kind(btf, section.encode(), BTF_KIND_DATASEC)
    if tid <= 0:
        return {}
    t = lib.btf__type_by_id(btf, tid)
    infos = ffi.cast("struct btf_var_secinfo *", t + 1)
    out: dict[str, tuple[int, int]] = {}
    for i in range(_vlen(t)):
        vi = infos[i]
        var = lib.btf__type_by_id(btf, vi.type)
        if _kind(var) != BTF_KIND_VAR:
            continue
        out[_name(btf, var.name_off)] = (int(vi.offset), int(vi.size))
    return out


class BtfFile(Closing):
    """BTF parsed from an ELF object (no kernel involved); a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise BuildError(f"BPF object {path} not found (run python -m katran.build)")
        btf = lib.btf__parse(path.encode(), ffi.NULL)
        if btf == ffi.NULL:
            raise KernelError(f"parse BTF of {path}", ffi.errno or 22)
        self._btf = btf
        self.path = path

    def struct_layout(self, name: str) -> tuple[int, dict[str, tuple[int, int]]]:
        return struct_layout(self._btf, name)

    def datasec_vars(self, section: str) -> dict[str, tuple[int, int]]:
        return datasec_vars(self._btf, section)

    def map_defs(self) -> dict[str, dict]:  # type: ignore[type-arg]
        return map_defs(self._btf)

    def enum_values(self, enum_name: str) -> dict[str, int] | None:
        return enum_values(self._btf, enum_name)

    def close(self) -> None:
        if self._btf is not None:
            lib.btf__free(self._btf)
            self._btf = None


def btf_struct_layout(obj_path: str | os.PathLike[str], struct_name: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """(size, {member: (offset_bytes, size_bytes)}) of ``struct_name`` from the object's BTF."""
    with BtfFile(obj_path) as b:
        return b.struct_layout(struct_name)


BTF_KIND_ENUM64 = 19


def _resolve_named(btf, type_id: int) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    """(name of the first named type through typedefs/qualifiers, resolved size)."""
    size = lib.btf__resolve_size(btf, type_id)
    tid = type_id
    while tid > 0:
        t = lib.btf__type_by_id(btf, tid)
        name = _name(btf, t.name_off)
        if _kind(t) in (BTF_KIND_STRUCT, BTF_KIND_UNION, BTF_KIND_ENUM, BTF_KIND_INT) or (
            name and _kind(t) != BTF_KIND_TYPEDEF
        ):
            return name, int(size)
        if _kind(t) not in (BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST):
            return name, int(size)
        tid = t.size_or_type
    return "", int(size)


def _map_def(btf, struct_id: int) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """A BTF-defined map (``struct { __uint(type, ...); __type(key, ...); ... }``) as a dict:
    type / max_entries / map_flags (ints), key / value ((type name, size)), inner (dict)."""
    t = lib.btf__type_by_id(btf, struct_id)
    mems = ffi.cast("struct btf_member *", t + 1)
    out: dict = {}  # type: ignore[type-arg]
    for i in range(_vlen(t)):
        m = mems[i]
        name = _name(btf, m.name_off)
        mt = lib.btf__type_by_id(btf, m.type)
        if name == "values":
            # __array(values, struct {...}): an array of pointers to the inner definition
            if _kind(mt) == BTF_KIND_ARRAY:
                elem = ffi.cast("__u32 *", mt + 1)[0]
                et = lib.btf__type_by_id(btf, elem)
                if _kind(et) == BTF_KIND_PTR:
                    inner = lib.btf__resolve_type(btf, et.size_or_type)
                    if inner > 0:
                        out["inner"] = _map_def(btf, inner)
            continue
        if _kind(mt) != BTF_KIND_PTR:
            continue
        target = mt.size_or_type
        tt = lib.btf__type_by_id(btf, target)
        if name in ("key", "value"):
            out[name] = _resolve_named(btf, target)
        elif _kind(tt) == BTF_KIND_ARRAY:
            # __uint(name, N): a pointer to an array of N ints
            out[name] = int(ffi.cast("__u32 *", tt + 1)[2])
    return out


def map_defs(btf) -> dict[str, dict]:  # type: ignore[no-untyped-def,type-arg]
    """Every map of the ``.maps`` section: name -> ``_map_def`` dict."""
    tid = lib.btf__find_by_name_kind(btf, b".maps", BTF_KIND_DATASEC)
    if tid <= 0:
        return {}
    t = lib.btf__type_by_id(btf, tid)
    infos = ffi.cast("struct btf_var_secinfo *", t + 1)
    out: dict[str, dict] = {}  # type: ignore[type-arg]
    for i in range(_vlen(t)):
        var = lib.btf__type_by_id(btf, infos[i].type)
        if _kind(var) != BTF_KIND_VAR:
            continue
        sid = lib.btf__resolve_type(btf, var.size_or_type)
        if sid > 0 and _kind(lib.btf__type_by_id(btf, sid)) == BTF_KIND_STRUCT:
            out[_name(btf, var.name_off)] = _map_def(btf, sid)
    return out


def enum_values(btf, enum_name: str) -> dict[str, int] | None:  # type: ignore[no-untyped-def]
    """Members of a C enum (name -> value), None when the BTF has no such enum."""
    tid = lib.btf__find_by_name_kind(btf, enum_name.encode(), BTF_KIND_ENUM)
    if tid <= 0:
        return None
    t = lib.btf__type_by_id(btf, tid)
    vals = ffi.cast("__u32 *", t + 1)  # struct btf_enum { name_off; val; }
    signed = _kflag(t)
    out = {}
    for i in range(_vlen(t)):
        v = int(vals[2 * i + 1])
        if signed and v >= 1 << 31:
            v -= 1 << 32
        out[_name(btf, vals[2 * i])] = v
    return out
