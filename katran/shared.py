"""Shared mode: the root XDP program and its program array (see docs/shared-mode.md).

``install(intf)`` loads ``xdp_root``, pins its ``root_array`` at
``/sys/fs/bpf/jmp_<intf>`` (and the program at ``<map path>_prog``) and attaches it
to ``intf``. Programs then take a slot with ``register(prog_fd, map_path, pos)``;
the root program tail-calls the slots in order and passes what nobody took.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import Optional, Union

import attrs

from .errors import KernelError, NotFoundError, ValidationError
from .models import check_int

ROOT_PROG_NAME = "xdp_root"
ROOT_MAP_NAME = "root_array"
DEFAULT_OBJECT = Path(__file__).resolve().parent / "bpf" / "obj" / "xdp_root.bpf.o"
DEFAULT_SLOTS = 3
MAX_SLOTS = 32  # ROOT_MAX_SLOTS in root_maps.h
BPFFS = "/sys/fs/bpf"

_U32 = struct.Struct("=I")
PathLike = Union[str, os.PathLike]


def default_map_path(intf: str) -> str:
    return f"{BPFFS}/jmp_{intf}"


def prog_pin_path(map_path: PathLike) -> str:
    return f"{os.fspath(map_path)}_prog"


@attrs.frozen
class RootStatus:
    intf: str
    map_path: str
    prog_id: int
    slots: int
    newly_installed: bool


def install(
    intf: str,
    *,
    slots: int = DEFAULT_SLOTS,
    map_path: Optional[PathLike] = None,
    mode: str = "native",
    prog_path: Optional[PathLike] = None,
) -> RootStatus:
    """Attach the root program to ``intf`` and pin its array; a no-op when already installed."""
    from .adapter import bpf, netlink

    slots = check_int(slots, "slots", 1, MAX_SLOTS)
    map_path = os.fspath(map_path or default_map_path(intf))
    ifindex = netlink.ifindex(intf)
    attached = bpf.xdp_attached_prog_id(ifindex, mode)
    ours = _pinned_prog_id(map_path)
    if attached and attached == ours:
        with bpf.Map.from_pinned(map_path) as m:
            return RootStatus(intf, map_path, ours, m.max_entries, False)
    if attached:
        raise KernelError(f"install xdp root on {intf}", errno.EBUSY,
                          f"another XDP program (id {attached}) is attached; remove it first")
    bpf.ensure_bpffs()
    if ours:  # pins of an old install whose program is no longer attached: reuse them
        with bpf.Program.from_pinned(prog_pin_path(map_path)) as prog, bpf.Map.from_pinned(map_path) as m:
            prog.attach_xdp(ifindex, mode)
            return RootStatus(intf, map_path, prog.id, m.max_entries, True)
    for stale in (map_path, prog_pin_path(map_path)):
        if os.path.exists(stale):
            raise KernelError(f"install xdp root on {intf}", errno.EEXIST, f"{stale} exists and is not ours")
    spec = bpf.ObjectSpec.open(prog_path or DEFAULT_OBJECT)
    try:
        spec.set_max_entries(ROOT_MAP_NAME, slots)
        spec.set_rodata("root_slots", slots)
        obj = spec.load()
    finally:
        spec.close()
    try:
        prog = obj.program(ROOT_PROG_NAME)
        obj.map(ROOT_MAP_NAME).pin(map_path)
        try:
            prog.pin(prog_pin_path(map_path))
            prog.attach_xdp(ifindex, mode)
        except Exception:
            _unlink(prog_pin_path(map_path))
            _unlink(map_path)
            raise
        return RootStatus(intf, map_path, prog.id, slots, True)
    finally:
        obj.close()  # the pins and the attachment keep program and array alive


def uninstall(intf: str, *, map_path: Optional[PathLike] = None, mode: str = "native") -> bool:
    """Detach the root program (if it is ours) and remove both pins. False: nothing to do.

    Removing the pins drops the last user reference of the array: the kernel then
    empties it, so the registered programs are released too.
    """
    from .adapter import bpf, netlink

    map_path = os.fspath(map_path or default_map_path(intf))
    ours = _pinned_prog_id(map_path)
    done = False
    try:
        ifindex = netlink.ifindex(intf)
    except NotFoundError:
        ifindex = 0
    if ifindex and ours and bpf.xdp_attached_prog_id(ifindex, mode) == ours:
        bpf.detach_xdp(ifindex, mode)
        done = True
    for path in (prog_pin_path(map_path), map_path):
        done |= _unlink(path)
    return done


def _open_root(root_map_path: PathLike):
    from .adapter import bpf

    path = os.fspath(root_map_path)
    if not os.path.exists(path):
        raise NotFoundError("root map", path)
    m = bpf.Map.from_pinned(path)
    if m.type != bpf.BPF_MAP_TYPE_PROG_ARRAY:
        m.close()
        raise ValidationError("root_map_path", path, "is not a program array")
    return m


def _check_pos(m, pos: int) -> int:
    return check_int(pos, "root_map_pos", 0, m.max_entries - 1)


def register(prog_fd, root_map_path: PathLike, pos: int) -> None:
    """Put program ``prog_fd`` (an fd, or a Program) into slot ``pos`` of the pinned root array.

    Replaces what the slot held, atomically.
    """
    fd = getattr(prog_fd, "fd", prog_fd)
    if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
        raise ValidationError("prog_fd", prog_fd, "expected a program fd or a loaded Program")
    with _open_root(root_map_path) as m:
        m.update(_U32.pack(_check_pos(m, pos)), _U32.pack(fd))


def unregister(root_map_path: PathLike, pos: int) -> bool:
    """Empty slot ``pos``; False when it was empty (or the array is gone)."""
    try:
        m = _open_root(root_map_path)
    except NotFoundError:
        return False
    with m:
        return m.delete(_U32.pack(_check_pos(m, pos)))


def slots(root_map_path: PathLike) -> dict[int, int]:
    """Occupied slots: position -> program id."""
    with _open_root(root_map_path) as m:
        out = {}
        for pos in range(m.max_entries):
            v = m.lookup(_U32.pack(pos))
            if v is not None:
                out[pos] = _U32.unpack(v[:4])[0]
        return out


def _pinned_prog_id(map_path: str) -> int:
    from .adapter import bpf

    path = prog_pin_path(map_path)
    if not os.path.exists(path) or not os.path.exists(map_path):
        return 0
    with bpf.Program.from_pinned(path) as prog:
        return prog.id


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
