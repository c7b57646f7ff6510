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

    def close(self) -> None:
        if self._btf is not None:
            lib.btf__free(self._btf)
            self._btf = None


def btf_struct_layout(obj_path: str | os.PathLike[str], struct_name: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """(size, {member: (offset_bytes, size_bytes)}) of ``struct_name`` from the object's BTF."""
    with BtfFile(obj_path) as b:
        return b.struct_layout(struct_name)
