"""katran-xdp-root: install / uninstall the root XDP program of shared mode."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from . import argstyle, shared
from .errors import KatranError
from katran import add_version_argument

EXAMPLES = f"""examples:
  katran-xdp-root install --intf eth0              attach the root program, pin /sys/fs/bpf/jmp_eth0
  katran-xdp-root status -intf eth0                the registered programs, by slot
  katran-xdp-root uninstall --intf eth0 --mode generic
{argstyle.CONVENTION}"""


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="katran-xdp-root", description=__doc__, epilog=EXAMPLES,
                                 usage="%(prog)s {install,uninstall,status} --intf IFNAME [options]",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_argument(ap, "katran-xdp-root")
    ap.add_argument("action", choices=("install", "uninstall", "status"))
    ap.add_argument("--intf", required=True, help="interface to attach the root program to")
    ap.add_argument("--map-path", help="pin path of the program array (default /sys/fs/bpf/jmp_<intf>)")
    ap.add_argument("--slots", type=int, default=shared.DEFAULT_SLOTS, help="program array size (install)")
    ap.add_argument("--mode", default="native", choices=("native", "generic", "offload"), help="XDP attach mode")
    ap.add_argument("--prog", help="compiled xdp_root.bpf.o (default: the packaged one)")
    args = argstyle.parse(ap, argv)
    map_path = args.map_path or shared.default_map_path(args.intf)
    try:
        if args.action == "install":
            st = shared.install(args.intf, slots=args.slots, map_path=map_path, mode=args.mode, prog_path=args.prog)
            verb = "installed" if st.newly_installed else "already installed"
            print(f"xdp root {verb} on {st.intf}: prog id {st.prog_id}, {st.slots} slots at {st.map_path}")
        elif args.action == "uninstall":
            done = shared.uninstall(args.intf, map_path=map_path, mode=args.mode)
            print(f"xdp root {'removed from' if done else 'was not installed on'} {args.intf}")
        else:
            occupied = shared.slots(map_path)
            print(f"{map_path}: " + (", ".join(f"slot {p}: prog id {i}" for p, i in sorted(occupied.items()))
                                     or "no program registered"))
    except KatranError as exc:
        print(f"katran-xdp-root: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
