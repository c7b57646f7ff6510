"""katran-decap: decapsulation for the real servers (XDP decap + VIPs on lo)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

import attrs

from . import argstyle, decap
from .errors import KatranError
from katran import add_version_argument

EXAMPLES = f"""examples:
  katran-decap install --intf eth0 --vip 10.200.1.1 --vip fc00::1   decap + the VIPs on lo
  katran-decap stats -intf eth0                                     decap counters
  katran-decap uninstall --intf eth0 --vip 10.200.1.1
{argstyle.CONVENTION}"""


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="katran-decap", description=__doc__, epilog=EXAMPLES,
                                 usage="%(prog)s {install,uninstall,stats} --intf IFNAME [--vip VIP ...] [options]",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_argument(ap, "katran-decap")
    ap.add_argument("action", choices=("install", "uninstall", "stats"))
    ap.add_argument("--intf", required=True, help="interface receiving encapsulated packets")
    ap.add_argument("--vip", action="append", default=[], help="VIP to put on lo (repeatable)")
    ap.add_argument("--mode", default="native", choices=("native", "generic", "offload"), help="XDP attach mode")
    ap.add_argument("--prog", help="compiled decap.bpf.o (default: the packaged one)")
    ap.add_argument("--pin-root", default=decap.DEFAULT_PIN_ROOT, help="bpffs directory for the pins")
    ap.add_argument("--gue-dport", type=int, default=0, help="also decapsulate GUE on this UDP port")
    ap.add_argument("--server-id", type=int, default=0, help="TPR server id of this host (TPR counters)")
    ap.add_argument("--strict-v4", help="decapsulate only packets to this IPv4 address")
    ap.add_argument("--strict-v6", help="decapsulate only packets to this IPv6 address")
    ap.add_argument("--fix-rp-filter", type=int, choices=(0, 2), help="set rp_filter of the interface (0 off, 2 loose)")
    args = argstyle.parse(ap, argv)
    try:
        if args.action == "install":
            strict = bool(args.strict_v4 or args.strict_v6)
            st = decap.install(
                args.intf, args.vip, prog_path=args.prog, mode=args.mode, pin_root=args.pin_root,
                fix_rp_filter=args.fix_rp_filter, gue_dport=args.gue_dport, server_id=args.server_id,
                strict_dst=strict, host_v4=args.strict_v4, host_v6=args.strict_v6,
            )
            verb = "attached to" if st.newly_attached else "already on"
            print(f"decap {verb} {st.intf} (prog id {st.prog_id}); VIPs added to lo: "
                  f"{', '.join(st.vips_added) or 'none'}; rp_filter {st.rp_filter}")
            for w in st.warnings:
                print(f"warning: {w}", file=sys.stderr)
        elif args.action == "uninstall":
            done = decap.uninstall(args.intf, args.vip, mode=args.mode, pin_root=args.pin_root)
            print(f"decap {'removed from' if done else 'was not installed on'} {args.intf}")
        else:
            for name, value in attrs.asdict(decap.stats(args.intf, pin_root=args.pin_root)).items():
                print(f"{name}: {value}")
    except KatranError as exc:
        print(f"katran-decap: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
