"""katran-preflight: check a host before starting the balancer on it, and print the
server flags to use (the seed's pre-run data collection as one command).

Exit status: 0 every check ok, 1 warnings only, 2 at least one failure, 3 the command
itself could not run (bad arguments, no such netns/root, a --fix change failed and was undone).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from katran import argstyle
from katran.errors import KatranError, ValidationError

from . import fix as F
from .discovery import check_ifname
from .report import build_report, gather
from .root import HostRoot
from katran import add_version_argument

PROG = "katran-preflight"
EXIT_ERROR = 3
EXAMPLES = f"""examples:
  katran-preflight --intf eth0             a report: ok / WARN / FAIL per check, then "server flags: ..."
  katran-preflight --intf eth0 --json      the same for scripts
  katran-preflight -intf eth0 -fix         pin each queue IRQ to its own CPU, JIT on, mount bpffs
{argstyle.CONVENTION}"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 3: 1 and 2 are verdicts
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                 usage="%(prog)s --intf IFNAME [--json] [--fix] [options]", epilog=EXAMPLES)
    add_version_argument(ap, PROG)
    ap.add_argument("--intf", required=True, help="the interface the balancer will receive on (server flag -intf)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON (schema 1)")
    ap.add_argument("--fix", action="store_true",
                    help="pin each queue IRQ to its own CPU, set net.core.bpf_jit_enable=1, mount bpffs "
                         "(each change printed first; undone if a later one fails)")
    ap.add_argument("--stop-irqbalance", action="store_true", help="with --fix: also stop irqbalance")
    ap.add_argument("--root", default="/", help="read /proc and /sys under DIR (a copy or a test tree)")
    ap.add_argument("--netns", default=None, help="network namespace (name under /run/netns) of the interface")
    ap.add_argument("--forwarding-cores", default=None, metavar="LIST",
                    help="check these forwarding cores (your -forwarding_cores) against the IRQ pinning")
    ap.add_argument("--no-probe", action="store_true",
                    help="do not send a probe to resolve the gateway when its neighbour entry is missing")
    ap.add_argument("--no-gateway", action="store_true", help="skip the default gateway check")
    ap.add_argument("--probe-timeout", type=float, default=3.0, help="seconds to wait for the gateway (default 3)")
    return ap


def _error(text: str) -> int:
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: Optional[list[str]] = None) -> int:
    args = argstyle.parse(build_parser(), argv)
    if args.stop_irqbalance and not args.fix:
        return _error("--stop-irqbalance only goes with --fix")
    try:
        check_ifname(args.intf, "--intf")
    except ValidationError as exc:
        return _error(f"--intf '{exc.value}': {exc.reason}")
    if not os.path.isdir(args.root):
        return _error(f"--root {ascii(args.root[:200])}: not a directory")
    wanted = None
    if args.forwarding_cores is not None:
        try:
            wanted = [int(c) for c in args.forwarding_cores.replace(" ", "").split(",") if c]
        except ValueError:
            return _error(f"--forwarding-cores {ascii(args.forwarding_cores[:100])}: not a comma separated list of CPUs")
    root = HostRoot(args.root, args.netns)

    def collect():
        return gather(args.intf, root=root, gateway=not args.no_gateway, probe=not args.no_probe,
                      probe_timeout=args.probe_timeout)

    try:
        facts = collect()
        changes = []
        if args.fix:
            changes = F.plan(facts, stop_irqbalance=args.stop_irqbalance)
            out = (lambda line: print(line, file=sys.stderr)) if args.json else print
            if not changes:
                out("fix: nothing to change")
            F.apply(changes, root, out)
            if changes:
                facts = collect()
        report = build_report(facts, wanted)
        report.changes = [c.to_dict() for c in changes]
    except KatranError as exc:
        return _error(str(exc))
    print(report.to_json() if args.json else report.format_text())
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
