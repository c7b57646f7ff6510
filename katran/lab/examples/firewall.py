#!/usr/bin/env python3
"""Example: a source-prefix firewall in a shared-mode slot in front of the balancer.

    python katran/lab/examples/firewall.py --root-map /sys/fs/bpf/jmp_eth0 --pos 0 --drop 10.1.0.0/16

compiles the firewall.bpf.c next to it (unless --obj is given), loads it sharing the root
program's array, fills the blocked prefixes and registers it at --pos. The root
array then keeps the program alive after this script exits; remove it with --remove.
"""

from __future__ import annotations

import argparse
import ipaddress
import struct
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Optional

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "firewall.bpf.c"
_U32 = struct.Struct("=I")


def compile_firewall(out_dir: Optional[Path] = None) -> Path:
    from katran.build import compile_one

    return compile_one(SOURCE, Path(out_dir or tempfile.mkdtemp(prefix="katran-fw-")))


class Firewall:
    """The firewall program loaded for slot ``pos`` of the root array at ``root_map_path``."""

    def __init__(self, root_map_path: str, pos: int, obj_path: Optional[Path] = None) -> None:
        from katran.adapter import bpf

        self.root_map_path = root_map_path
        self.pos = pos
        root = bpf.Map.from_pinned(root_map_path)
        try:
            if not 0 <= pos < root.max_entries:
                raise ValueError(f"pos={pos}: root array has {root.max_entries} slots")
            spec = bpf.ObjectSpec.open(obj_path or compile_firewall())
            try:
                spec.set_max_entries("root_array", root.max_entries)
                spec.reuse_map_fd("root_array", root.fd)
                spec.set_rodata("fw_slot", pos)
                spec.set_rodata("fw_slots", root.max_entries)
                self.obj = spec.load()
            finally:
                spec.close()
        finally:
            root.close()

    def block(self, prefixes: Iterable[str]) -> None:
        for text in prefixes:
            net = ipaddress.ip_network(text, strict=False)
            name = "fw_blocked_v6" if net.version == 6 else "fw_blocked_v4"
            self.obj.map(name).update(_U32.pack(net.prefixlen) + net.network_address.packed, _U32.pack(1))

    def register(self) -> None:
        from katran import shared

        shared.register(self.obj.program("xdp_firewall").fd, self.root_map_path, self.pos)

    def unregister(self) -> bool:
        from katran import shared

        return shared.unregister(self.root_map_path, self.pos)

    def counters(self) -> tuple[int, int]:
        """(dropped, handed on), summed over CPUs."""
        m = self.obj.map("fw_counters")
        return tuple(sum(struct.unpack("=Q", v)[0] for v in m.lookup(_U32.pack(i))) for i in (0, 1))

    def close(self) -> None:
        self.obj.close()


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root-map", required=True, help="pinned root array, e.g. /sys/fs/bpf/jmp_eth0")
    ap.add_argument("--pos", type=int, default=0, help="slot (before the balancer's)")
    ap.add_argument("--drop", action="append", default=[], help="source prefix to drop (repeatable)")
    ap.add_argument("--obj", type=Path, help="compiled firewall.bpf.o")
    ap.add_argument("--remove", action="store_true", help="empty the slot instead")
    args = ap.parse_args(argv)
    if args.remove:
        from katran import shared

        print("removed" if shared.unregister(args.root_map, args.pos) else "slot was empty")
        return 0
    fw = Firewall(args.root_map, args.pos, args.obj)
    try:
        fw.block(args.drop)
        fw.register()
        print(f"firewall in slot {args.pos} of {args.root_map}, dropping {', '.join(args.drop) or 'nothing'}")
    finally:
        fw.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
