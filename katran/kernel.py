"""The kernel facade: everything the domain layer asks of the kernel, in one small interface.

``KatranLb``, ``HcManager``, shared mode and decap receive a :class:`Kernel` (default:
:func:`default_kernel`, the real one in ``katran.adapter.kernel``); the tests pass the
dict-backed fake of ``tests/fake_kernel.py`` to run the whole control plane without
privileges, and to inject an errno on the Nth call of an operation.

The facade hands out *handles* that follow the protocols below (the real adapter's
``Map`` / ``Program`` / ``ObjectSpec`` / ``LoadedObject`` implement them):

* :class:`ObjectSpecHandle` -- an opened, not yet loaded BPF object: size maps, set knobs, load;
* :class:`LoadedObjectHandle` -- its maps and programs by name;
* :class:`MapHandle` -- lookup / update / delete / batch on one map (bytes keys and values;
  per-CPU maps: a list of values, one per CPU), pin, map-in-map slots, and for an ARRAY
  created with ``BPF_F_MMAPABLE`` its values mapped into the process (``value_view``: a
  numpy view; a write there is a write to the map, without a syscall);
* :class:`ProgramHandle` -- test run, XDP attach, pin.

Nothing here imports the adapter except :func:`default_kernel`; the constants are the
kernel's uapi numbers.
"""

from __future__ import annotations

import errno
import os
from typing import ContextManager, Iterator, Optional, Protocol, Sequence, Union, runtime_checkable

PathLike = Union[str, "os.PathLike[str]"]
Value = Union[bytes, list]

# uapi/linux/bpf.h
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
BPF_MAP_TYPE_HASH_OF_MAPS = 13
BPF_F_NO_PREALLOC = 1 << 0
BPF_F_MMAPABLE = 1 << 10
BPF_ANY = 0


class MapHandle(Protocol):
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    fd: int

    @property
    def id(self) -> int: ...
    @property
    def mmapable(self) -> bool: ...  # an ARRAY with BPF_F_MMAPABLE, the flags as the kernel has them
    def value_view(self, dtype=...): ...  # mmap-able ARRAY: its values as a writable numpy view
    def lookup(self, key: bytes) -> Optional[Value]: ...
    def update(self, key: bytes, value: Value, flags: int = BPF_ANY) -> None: ...
    def delete(self, key: bytes) -> bool: ...
    def update_batch(self, keys: Union[Sequence[bytes], bytes], values: Union[Sequence[Value], bytes],
                     flags: int = BPF_ANY) -> None: ...
    def delete_batch(self, keys: Union[Sequence[bytes], bytes]) -> None: ...
    def keys(self) -> Iterator[bytes]: ...
    def items(self) -> Iterator[tuple[bytes, Value]]: ...
    def set_inner_map(self, key: Union[bytes, int], inner: "MapHandle") -> None: ...
    def inner_map_id(self, key: Union[bytes, int]) -> Optional[int]: ...
    def pin(self, path: PathLike) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> "MapHandle": ...
    def __exit__(self, *exc: object) -> None: ...


class ProgramHandle(Protocol):
    name: str
    fd: int

    @property
    def id(self) -> int: ...
    def test_run(self, data: bytes, *, ctx: Optional[bytes] = None, **kw): ...
    def attach_xdp(self, ifindex: int, mode: str = "native", replace: bool = False,
                   expected_prog_fd: Optional[int] = None) -> None: ...
    def pin(self, path: PathLike) -> None: ...
    def map_ids(self) -> list[int]: ...
    def close(self) -> None: ...


class LoadedObjectHandle(Protocol):
    path: str
    maps: dict

    def map(self, name: str) -> MapHandle: ...
    def program(self, name: str) -> ProgramHandle: ...
    def close(self) -> None: ...


class NamedHandles:
    """The maps and programs of a BPF object by name: the lookups the adapter's
    ``LoadedObject``, ``katran.state.PinnedObject`` and the fake kernel's object share.
    A subclass has ``path``, ``maps``, ``internal_maps`` (``.rodata``, ``.bss``, ... by their
    short name), ``programs`` and a ``closed`` property; ``_kind`` prefixes its errors."""

    path: str
    maps: dict
    internal_maps: dict
    programs: dict
    _kind = ""

    @property
    def closed(self) -> bool:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _require_open(self) -> None:
        if self.closed:
            from .errors import KernelError

            raise KernelError(f"use of closed {self._kind}object {self.path}", errno.EBADF)

    def map(self, name: str):
        """Map by name; '.rodata', '.bss', '.data' reach the object's internal maps."""
        self._require_open()
        m = self.maps.get(name) or self.internal_maps.get(name)
        if m is None:
            from .errors import NotFoundError

            raise NotFoundError(f"{self._kind}map in {os.path.basename(self.path)}:", name)
        return m

    def program(self, name: str):
        self._require_open()
        p = self.programs.get(name)
        if p is None:
            from .errors import NotFoundError

            raise NotFoundError(f"{self._kind}program in {os.path.basename(self.path)}:", name)
        return p


class ObjectSpecHandle(Protocol):
    path: str

    @property
    def map_names(self) -> list[str]: ...
    def max_entries(self, map_name: str) -> int: ...
    def set_max_entries(self, map_name: str, n: int) -> None: ...
    def set_inner_map_max_entries(self, outer_map_name: str, n: int, *, flags: Optional[int] = None,
                                  numa_node: Optional[int] = None) -> None: ...
    def set_map_type(self, map_name: str, map_type: int) -> None: ...
    def map_def(self, map_name: str) -> dict: ...
    def reuse_map_fd(self, map_name: str, fd: int) -> None: ...
    def rodata_vars(self) -> dict: ...
    def set_rodata(self, name: str, value: Union[bytes, int, bool]) -> None: ...
    def load(self) -> LoadedObjectHandle: ...
    def close(self) -> None: ...


@runtime_checkable
class Kernel(Protocol):
    """What the control plane needs from the kernel (BPF syscalls, netlink, bpffs, host config)."""

    # BPF objects and maps
    def open_object(self, path: PathLike) -> ObjectSpecHandle: ...
    def create_map(self, map_type: int, key_size: int, value_size: int, max_entries: int, *,
                   name: str = "", flags: int = 0, numa_node: Optional[int] = None) -> MapHandle: ...
    def map_by_id(self, map_id: int) -> MapHandle: ...
    def map_by_pin(self, path: PathLike) -> MapHandle: ...
    def program_by_id(self, prog_id: int) -> ProgramHandle: ...
    def program_by_pin(self, path: PathLike) -> ProgramHandle: ...
    def unpin(self, path: PathLike) -> bool: ...
    def is_pinned(self, path: PathLike) -> bool: ...
    def make_pin_dir(self, path: PathLike) -> None: ...
    def remove_pin_dir(self, path: PathLike) -> bool: ...
    def ensure_bpffs(self, path: str = "/sys/fs/bpf") -> None: ...
    def lock(self, directory: PathLike) -> ContextManager[None]: ...
    def ring_reader(self, ring_map: MapHandle): ...  # a reader of a BPF ring buffer map (capture)

    # XDP
    def xdp_attached_prog_id(self, ifindex: int, mode: str = "native") -> int: ...
    def detach_xdp(self, ifindex: int, mode: str = "native") -> None: ...

    # tc (clsact)
    def ensure_clsact(self, ifindex: int, netns: Optional[str] = None) -> None: ...
    def attach_tc(self, ifindex: int, prog_fd: int, *, direction: str, prio: int, name: str,
                  netns: Optional[str] = None, replace: bool = False) -> None: ...
    def detach_tc(self, ifindex: int, *, direction: str, prio: int, netns: Optional[str] = None) -> None: ...
    def tc_filters(self, ifindex: int, direction: str = "egress", netns: Optional[str] = None) -> list[dict]: ...

    # interfaces
    def ifindex(self, name: str, netns: Optional[str] = None) -> int: ...
    def interface_addresses(self, name: str, netns: Optional[str] = None) -> list[str]: ...
    def mac_address(self, name: str, netns: Optional[str] = None) -> str: ...

    # host configuration (decap on the reals)
    def add_host_address(self, ifname: str, addr: str) -> bool: ...
    def del_host_address(self, ifname: str, addr: str) -> bool: ...
    def rp_filter(self, ifname: str) -> dict: ...
    def set_rp_filter(self, ifname: str, value: int) -> None: ...


_default: Optional[Kernel] = None


def default_kernel() -> Kernel:
    """The real kernel (libbpf + pyroute2), created once on first use."""
    global _default
    if _default is None:
        from .adapter.kernel import RealKernel  # the one place the domain reaches the adapter

        _default = RealKernel()
    return _default


def resolve(kernel: Optional[Kernel]) -> Kernel:
    """``kernel`` or the real one; refuses what does not look like a Kernel."""
    if kernel is None:
        return default_kernel()
    if not isinstance(kernel, Kernel):
        from .errors import ValidationError

        raise ValidationError("kernel", type(kernel).__name__, "expected a katran.kernel.Kernel implementation")
    return kernel
