#!/usr/bin/env python3
"""Healthcheck probe client: UDP probes to a VIP from sockets carrying SO_MARK.

With katran's healthcheck program on the egress interface, each probe is
encapsulated toward the real registered for its mark (add_healthchecker_dst).

    hc_it_client.py --vip 10.100.0.1 --port 53 --mark 1 --mark 2 --count 3

The payload is "katran-hc mark=<mark> seq=<n>" so a capture can tell probes apart.
Needs CAP_NET_ADMIN (SO_MARK).
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import time
from typing import Optional, Sequence


def send_probes(vip: str, port: int, marks: Sequence[int], count: int = 1, interval: float = 0.0) -> int:
    """Send ``count`` probes per mark; returns how many were sent."""
    family = socket.AF_INET6 if ipaddress.ip_address(vip).version == 6 else socket.AF_INET
    sent = 0
    for mark in marks:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            for seq in range(count):
                s.sendto(f"katran-hc mark={mark} seq={seq}".encode(), (vip, port))
                sent += 1
                if interval:
                    time.sleep(interval)
    return sent


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vip", required=True, help="VIP address (v4 or v6)")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--mark", type=int, action="append", required=True, help="SO_MARK (repeatable)")
    ap.add_argument("--count", type=int, default=1, help="probes per mark")
    ap.add_argument("--interval", type=float, default=0.0, help="seconds between probes")
    args = ap.parse_args(argv)
    n = send_probes(args.vip, args.port, args.mark, args.count, args.interval)
    print(f"sent {n} probes to {args.vip}:{args.port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
