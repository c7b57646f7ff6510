"""RealKernel: the :class:`katran.kernel.Kernel` facade over libbpf (``bpf``), pyroute2
(``netlink``) and host configuration (``hostcfg``)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from typing import Iterator, Optional

from katran.errors import KernelError

from . import bpf, hostcfg, netlink


class RealKernel:
    """The running kernel. Handles are ``bpf.ObjectSpec`` / ``LoadedObject`` / ``Map`` / ``Program``."""

    # BPF objects and maps
    def open_object(self, path) -> bpf.ObjectSpec:
        return bpf.ObjectSpec.open(path)

    def create_map(self, map_type: int, key_size: int, value_size: int, max_entries: int, *,
                   name: str = "", flags: int = 0, numa_node: Optional[int] = None) -> bpf.Map:
        return bpf.create_map(map_type, key_size, value_size, max_entries, name=name, flags=flags,
                              numa_node=numa_node)

    def map_by_id(self, map_id: int) -> bpf.Map:
        return bpf.Map.from_id(map_id)

    def ring_reader(self, ring_map: bpf.Map):  # type: ignore[no-untyped-def]
        from .ringbuf import RingReader

        return RingReader(ring_map)

    def map_by_pin(self, path) -> bpf.Map:
        return bpf.Map.from_pinned(path)

    def program_by_id(self, prog_id: int) -> bpf.Program:
        return bpf.Program.from_id(prog_id)

    def program_by_pin(self, path) -> bpf.Program:
        return bpf.Program.from_pinned(path)

    def unpin(self, path) -> bool:
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise KernelError(f"unpin {os.fspath(path)}", exc.errno or errno.EIO) from None

    def is_pinned(self, path) -> bool:
        return os.path.exists(path)

    def make_pin_dir(self, path) -> None:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise KernelError(f"create pin directory {os.fspath(path)}", exc.errno or errno.EIO) from None

    def remove_pin_dir(self, path) -> bool:
        """Unpin everything in a pin directory, then remove it; False if there was none."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            return False
        for child in os.listdir(path):
            self.unpin(os.path.join(path, child))
        os.rmdir(path)
        return True

    def ensure_bpffs(self, path: str = "/sys/fs/bpf") -> None:
        bpf.ensure_bpffs(path)

    @contextlib.contextmanager
    def lock(self, directory) -> Iterator[None]:
        """Exclusive flock on a (bpffs) directory, like xdp-tools' dispatcher lock."""
        directory = os.fspath(directory)
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise KernelError(f"open {directory} to lock it", exc.errno or errno.EIO) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    # XDP
    def xdp_attached_prog_id(self, ifindex: int, mode: str = "native") -> int:
        return bpf.xdp_attached_prog_id(ifindex, mode)

    def detach_xdp(self, ifindex: int, mode: str = "native") -> None:
        bpf.detach_xdp(ifindex, mode)

    # tc
    def ensure_clsact(self, ifindex: int, netns: Optional[str] = None) -> None:
        netlink.ensure_clsact(ifindex, netns=netns)

    def attach_tc(self, ifindex: int, prog_fd: int, *, direction: str, prio: int, name: str,
                  netns: Optional[str] = None, replace: bool = False) -> None:
        netlink.attach_tc_bpf(ifindex, prog_fd, direction=direction, prio=prio, name=name, netns=netns,
                              replace=replace)

    def detach_tc(self, ifindex: int, *, direction: str, prio: int, netns: Optional[str] = None) -> None:
        netlink.detach_tc_bpf(ifindex, direction=direction, prio=prio, netns=netns)

    def tc_filters(self, ifindex: int, direction: str = "egress", netns: Optional[str] = None) -> list[dict]:
        """bpf filters on clsact ``direction``: [{'name', 'prio', 'handle'}]."""
        return netlink.tc_bpf_filters(ifindex, direction=direction, netns=netns)

    # interfaces
    def ifindex(self, name: str, netns: Optional[str] = None) -> int:
        return netlink.ifindex(name, netns=netns)

    def interface_addresses(self, name: str, netns: Optional[str] = None) -> list[str]:
        return netlink.interface_addresses(name, netns=netns)

    def mac_address(self, name: str, netns: Optional[str] = None) -> str:
        return netlink.mac_address(name, netns=netns)

    # host configuration
    def add_host_address(self, ifname: str, addr: str) -> bool:
        return hostcfg.add_host_address(ifname, addr)

    def del_host_address(self, ifname: str, addr: str) -> bool:
        return hostcfg.del_host_address(ifname, addr)

    def rp_filter(self, ifname: str) -> dict:
        return hostcfg.rp_filter(ifname)

    def set_rp_filter(self, ifname: str, value: int) -> None:
        hostcfg.set_rp_filter(ifname, value)
