"""Shared mode: the root XDP program and its program array (see docs/shared-mode.md).

``install(intf)`` loads ``xdp_root``, pins its ``root_array`` at
``/sys/fs/bpf/jmp_<intf>`` (and the program at ``<map path>_prog``) and attaches it
to ``intf``. Programs then take a slot with ``register(prog_fd, map_path, pos)``;
the root program tail-calls the slots in order and passes what nobody took.

Every change (install, uninstall, register, unregister) holds an exclusive ``flock``
on the bpffs directory of the array, so two processes never interleave; the root
program carries a version marker in its ``.rodata`` (``root_magic``, ``root_version``)
that install and register check before touching it.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import Optional, Union

import attrs

from .errors import KernelError, NotFoundError, ValidationError
from .kernel import BPF_MAP_TYPE_PROG_ARRAY, Kernel, resolve
from .models import check_int

ROOT_PROG_NAME = "xdp_root"
ROOT_MAP_NAME = "root_array"
DEFAULT_OBJECT = Path(__file__).resolve().parent / "bpf" / "obj" / "xdp_root.bpf.o"
DEFAULT_SLOTS = 3
MAX_SLOTS = 32  # ROOT_MAX_SLOTS in root_maps.h
BPFFS = "/sys/fs/bpf"
ROOT_MAGIC = 0x4B524F4F  # root_magic in xdp_root.bpf.c ("KROO")
ROOT_VERSION = 1  # root_version in xdp_root.bpf.c: the slot protocol this module speaks

_U32 = struct.Struct("=I")
PathLike = Union[str, os.PathLike]


def default_map_path(intf: str) -> str:
    return f"{BPFFS}/jmp_{intf}"


def prog_pin_path(map_path: PathLike) -> str:
    return f"{os.fspath(map_path)}_prog"


def _lock_dir(map_path: str) -> str:
    return os.path.dirname(os.path.abspath(map_path)) or "/"


@attrs.frozen
class RootStatus:
    intf: str
    map_path: str
    prog_id: int
    slots: int
    newly_installed: bool


def root_version(prog, kernel: Optional[Kernel] = None) -> tuple[int, int]:
    """(magic, version) read from a loaded root program's .rodata; (0, 0) when it has none."""
    k = resolve(kernel)
    offsets = _marker_offsets(k)
    for map_id in prog.map_ids():
        with k.map_by_id(map_id) as m:
            if not m.name.endswith(".rodata"):
                continue
            image = m.lookup(_U32.pack(0)) or b""
        if len(image) < max(offsets) + 4:
            return 0, 0
        return tuple(_U32.unpack_from(image, off)[0] for off in offsets)  # type: ignore[return-value]
    return 0, 0


_offsets_cache: dict = {}


def _marker_offsets(kernel: Kernel) -> tuple[int, int]:
    """Offsets of root_magic / root_version in .rodata, from the packaged object's BTF."""
    key = os.fspath(DEFAULT_OBJECT)
    if key not in _offsets_cache:
        spec = kernel.open_object(DEFAULT_OBJECT)
        try:
            v = spec.rodata_vars()
            _offsets_cache[key] = (v["root_magic"][0], v["root_version"][0])
        finally:
            spec.close()
    return _offsets_cache[key]


def check_root(prog, what: str, kernel: Optional[Kernel] = None) -> None:
    """KernelError(EPROTO) unless ``prog`` is a root program speaking ROOT_VERSION."""
    magic, version = root_version(prog, kernel)
    if magic != ROOT_MAGIC:
        raise KernelError(what, errno.EPROTO, "the pinned root program carries no katran version marker "
                          "(installed by another tool or an older katran): reinstall it with katran-xdp-root")
    if version != ROOT_VERSION:
        raise KernelError(what, errno.EPROTO, f"the root program speaks slot protocol version {version}, "
                          f"this katran speaks {ROOT_VERSION}: reinstall the root program")


def install(
    intf: str,
    *,
    slots: int = DEFAULT_SLOTS,
    map_path: Optional[PathLike] = None,
    mode: str = "native",
    prog_path: Optional[PathLike] = None,
    kernel: Optional[Kernel] = None,
) -> RootStatus:
    """Attach the root program to ``intf`` and pin its array; a no-op when already installed."""
    k = resolve(kernel)
    slots = check_int(slots, "slots", 1, MAX_SLOTS)
    map_path = os.fspath(map_path or default_map_path(intf))
    ifindex = k.ifindex(intf)
    k.ensure_bpffs()
    with k.lock(_lock_dir(map_path)):
        attached = k.xdp_attached_prog_id(ifindex, mode)
        ours = _pinned_prog_id(map_path, k)
        what = f"install xdp root on {intf}"
        if attached and attached == ours:
            with k.program_by_pin(prog_pin_path(map_path)) as prog:
                check_root(prog, what, k)
            with k.map_by_pin(map_path) as m:
                return RootStatus(intf, map_path, ours, m.max_entries, False)
        if attached:
            raise KernelError(what, errno.EBUSY, f"another XDP program (id {attached}) is attached; remove it first")
        if ours:  # pins of an old install whose program is no longer attached: reuse them
            with k.program_by_pin(prog_pin_path(map_path)) as prog, k.map_by_pin(map_path) as m:
                check_root(prog, what, k)
                prog.attach_xdp(ifindex, mode)
                return RootStatus(intf, map_path, prog.id, m.max_entries, True)
        for stale in (map_path, prog_pin_path(map_path)):
            if k.is_pinned(stale):
                raise KernelError(what, errno.EEXIST, f"{stale} exists and is not ours")
        spec = k.open_object(prog_path or DEFAULT_OBJECT)
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
                k.unpin(prog_pin_path(map_path))
                k.unpin(map_path)
                raise
            return RootStatus(intf, map_path, prog.id, slots, True)
        finally:
            obj.close()  # the pins and the attachment keep program and array alive


def uninstall(intf: str, *, map_path: Optional[PathLike] = None, mode: str = "native",
              kernel: Optional[Kernel] = None) -> bool:
    """Detach the root program (if it is ours) and remove both pins. False: nothing to do.

    Removing the pins drops the last user reference of the array: the kernel then
    empties it, so the registered programs are released too.
    """
    k = resolve(kernel)
    map_path = os.fspath(map_path or default_map_path(intf))
    if not k.is_pinned(map_path) and not k.is_pinned(prog_pin_path(map_path)):
        return False  # never installed (or uninstalled already): nothing of ours to detach
    with k.lock(_lock_dir(map_path)):
        ours = _pinned_prog_id(map_path, k)
        done = False
        try:
            ifindex = k.ifindex(intf)
        except NotFoundError:
            ifindex = 0
        if ifindex and ours and k.xdp_attached_prog_id(ifindex, mode) == ours:
            k.detach_xdp(ifindex, mode)
            done = True
        for path in (prog_pin_path(map_path), map_path):
            done |= k.unpin(path)
        return done


def _open_root(root_map_path: PathLike, k: Kernel):
    path = os.fspath(root_map_path)
    if not k.is_pinned(path):
        raise NotFoundError("root map", path)
    m = k.map_by_pin(path)
    if m.type != BPF_MAP_TYPE_PROG_ARRAY:
        m.close()
        raise ValidationError("root_map_path", path, "is not a program array")
    return m


def _check_pos(m, pos: int) -> int:
    return check_int(pos, "root_map_pos", 0, m.max_entries - 1)


def _check_pinned_root(path: str, k: Kernel) -> None:
    """The root program pinned next to the array must speak our version (no pin: not checked,
    e.g. an array set up by hand or by another tool)."""
    prog_pin = prog_pin_path(path)
    if k.is_pinned(prog_pin):
        with k.program_by_pin(prog_pin) as prog:
            check_root(prog, f"register into {path}", k)


class SlotChangedError(KernelError):
    """The slot does not hold the program a compare-and-swap expected (another process changed it)."""

    def __init__(self, what: str, root_map_path: str, pos: int, found: int, expected: int) -> None:
        self.found, self.expected = found, expected
        held = f"program id {found}" if found else "nothing"
        want = f"program id {expected}" if expected else "nothing"
        super().__init__(f"{what} slot {pos} of {root_map_path}", errno.EBUSY,
                         f"it holds {held}, not {want} (changed by another process); nothing was changed")


def _slot_id(m, slot: int) -> int:
    v = m.lookup(_U32.pack(slot))
    return _U32.unpack(v[:4])[0] if v is not None else 0


def register(prog_fd, root_map_path: PathLike, pos: int, *, kernel: Optional[Kernel] = None,
             expected_id: Optional[int] = None) -> None:
    """Put program ``prog_fd`` (an fd, or a Program) into slot ``pos`` of the pinned root array.

    Replaces what the slot held, atomically (the root program tail-calls the old program or
    the new one, never nothing). ``expected_id``: only if the slot holds that program id
    (0: only an empty slot), checked under the array's lock (every register and unregister
    takes it), else SlotChangedError and nothing changes.
    """
    k = resolve(kernel)
    fd = getattr(prog_fd, "fd", prog_fd)
    if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
        raise ValidationError("prog_fd", prog_fd, "expected a program fd or a loaded Program")
    path = os.fspath(root_map_path)
    with k.lock(_lock_dir(path)):
        with _open_root(path, k) as m:
            slot = _check_pos(m, pos)
            _check_pinned_root(path, k)
            if expected_id is not None:
                found = _slot_id(m, slot)
                if found != expected_id:
                    raise SlotChangedError("register", path, slot, found, expected_id)
            m.update(_U32.pack(slot), _U32.pack(fd))


def unregister(root_map_path: PathLike, pos: int, *, kernel: Optional[Kernel] = None,
               expected_id: Optional[int] = None) -> bool:
    """Empty slot ``pos``; False when it was empty (or the array is gone), and with
    ``expected_id`` when the slot holds another program (left as it is)."""
    k = resolve(kernel)
    path = os.fspath(root_map_path)
    if not k.is_pinned(path):
        return False
    with k.lock(_lock_dir(path)):
        try:
            m = _open_root(path, k)
        except NotFoundError:
            return False
        with m:
            slot = _check_pos(m, pos)
            if expected_id is not None and _slot_id(m, slot) != expected_id:
                return False
            return m.delete(_U32.pack(slot))


def slot_prog_id(root_map_path: PathLike, pos: int, *, kernel: Optional[Kernel] = None) -> int:
    """The id of the program in slot ``pos`` (0: empty, or no array pinned at the path)."""
    k = resolve(kernel)
    path = os.fspath(root_map_path)
    if not k.is_pinned(path):
        return 0
    try:
        m = _open_root(path, k)
    except NotFoundError:
        return 0
    with m:
        return _slot_id(m, _check_pos(m, pos))


def slots(root_map_path: PathLike, *, kernel: Optional[Kernel] = None) -> dict[int, int]:
    """Occupied slots: position -> program id."""
    k = resolve(kernel)
    with _open_root(root_map_path, k) as m:
        out = {}
        for pos in range(m.max_entries):
            found = _slot_id(m, pos)
            if found:
                out[pos] = found
        return out


def _pinned_prog_id(map_path: str, k: Kernel) -> int:
    path = prog_pin_path(map_path)
    if not k.is_pinned(path) or not k.is_pinned(map_path):
        return 0
    with k.program_by_pin(path) as prog:
        return prog.id
