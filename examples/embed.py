#!/usr/bin/env python3
"""Embedding katran: configure a VIP with reals and read stats from Python, no RPC.

    python examples/embed.py --intf eth0 --gateway-mac 52:54:00:12:35:02 \\
        --vip 10.100.1.1:80 --real 10.200.200.1 --real 10.200.200.2:3

Without --intf it runs in testing mode: the balancer is loaded but attached nowhere,
and one crafted packet is pushed through it (BPF_PROG_TEST_RUN) to show a decision.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

import katran
from katran import KatranConfig, KatranLb, Real, VipKey


def parse_real(text: str) -> Real:
    """``address`` or ``address:weight`` (v6: ``[addr]:weight``)."""
    if text.startswith("["):
        addr, _, rest = text[1:].partition("]")
        return Real(addr, int(rest[1:]) if rest else 1)
    if text.count(":") == 1:
        addr, weight = text.split(":")
        return Real(addr, int(weight))
    return Real(text)


def parse_vip(text: str, proto: str) -> VipKey:
    host, _, port = text.rpartition(":")
    return VipKey(host.strip("[]"), int(port), proto)


def demo_packet(lb: KatranLb, vip: VipKey) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    ip = IPv6(src="fc00:1::2", dst=str(vip.address)) if vip.is_v6 else IP(src="10.10.1.2", dst=str(vip.address))
    frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / TCP(sport=31337, dport=vip.port, flags="S")
    res = lb.run_packet(bytes(frame))
    out = Ether(res.data)
    print(f"a SYN from {ip.src}:31337 -> {res.verdict}: {out.summary()}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--intf", help="attach to this interface (default: testing mode, attach nowhere)")
    ap.add_argument("--gateway-mac", default="00:00:de:ad:be:af", help="MAC of the default router")
    ap.add_argument("--vip", default="10.100.1.1:80", help="VIP address:port ([v6]:port)")
    ap.add_argument("--udp", action="store_true", help="UDP VIP (default TCP)")
    ap.add_argument("--real", action="append", default=[], help="real address[:weight] (repeatable)")
    ap.add_argument("--seconds", type=float, default=0, help="keep running and print stats every second")
    args = ap.parse_args(argv)
    reals = [parse_real(r) for r in (args.real or ["10.200.200.1", "10.200.200.2"])]
    vip = parse_vip(args.vip, "udp" if args.udp else "tcp")

    config = KatranConfig(main_interface=args.intf or "", default_mac=args.gateway_mac, testing=not args.intf,
                          max_vips=16, max_reals=64, lru_size=10000)
    try:
        with KatranLb(config) as lb:
            lb.add_vip(vip)
            for real in reals:
                lb.add_real_for_vip(real, vip)
            print(f"katran {katran.__version__}: VIP {vip} -> " +
                  ", ".join(f"{r.address} (weight {r.weight})" for r in lb.get_reals_for_vip(vip)))
            if not args.intf:
                demo_packet(lb, vip)
            deadline = time.monotonic() + args.seconds
            while True:
                s = lb.get_stats_for_vip(vip)
                lru = lb.get_lru_stats()
                per_real = {str(r.address): lb.get_real_stats(lb.get_index_for_real(str(r.address))).v1 for r in reals}
                print(f"vip packets {s.v1} bytes {s.v2}; lru total {lru.v1} misses {lru.v2}; per real {per_real}")
                if time.monotonic() >= deadline:
                    break
                time.sleep(1)
    except katran.KatranError as exc:
        print(f"embed.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
