"""``katran-teardown``: remove what a katran server left running on an interface.

A server stopped with SIGTERM/SIGINT (or killed) leaves its data plane forwarding --
XDP program (in shared mode: its program in a slot of the root array, which the state
file names), healthcheck tc filter, pins and state file -- for the next start to adopt.
This command removes all of it when the balancer is to go away for good (a running
server refuses it: stop it first, or start it with ``-teardown_on_exit``)::

    katran-teardown -intf eth0 [-state_dir DIR] [-pin_dir DIR] [-hc_intf IF] [-xdp_mode native]
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import add_version_argument
from .config import KatranConfig
from .errors import KatranError, safe_text


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="katran-teardown", description=__doc__.split("\n\n")[0])
    p.add_argument("-intf", required=True, help="main interface of the instance")
    p.add_argument("-hc_intf", default="", help="healthcheck interface (default: -intf)")
    p.add_argument("-state_dir", default="", help="default /var/lib/katran/<intf>")
    p.add_argument("-pin_dir", default="", help="default /sys/fs/bpf/katran/<intf>")
    p.add_argument("-xdp_mode", default="native", help="native, generic or offload")
    add_version_argument(p, "katran-teardown")
    ns = p.parse_args(argv)
    from .dataplane import teardown

    try:
        cfg = KatranConfig(main_interface=ns.intf, hc_interface=ns.hc_intf, state_dir=ns.state_dir or None,
                           pin_dir=ns.pin_dir or None, xdp_attach_mode=ns.xdp_mode, persist=True)
        removed = teardown(cfg)
    except KatranError as exc:
        print(f"katran-teardown: error: {safe_text(exc)}", file=sys.stderr)
        return 1
    for line in removed:
        print(f"removed {line}")
    if not removed:
        print(f"nothing to remove for {ns.intf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
