"""Minimal frame building/parsing for the control plane (no scapy at run time).

Used by ``KatranLb.get_real_for_flow``: build one packet for a 5-tuple, and read
the outer destination of the encapsulated packet the balancer sends back.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Optional

from .models import Flow

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
_ETH = struct.Struct("!6s6sH")
_SRC_MAC = bytes.fromhex("020000000001")
_DST_MAC = bytes.fromhex("020000000002")


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_flow_packet(flow: Flow, payload: bytes = b"katran flow") -> bytes:
    """Ethernet + IPv4/IPv6 + TCP (ACK, so the LRU is consulted) or UDP."""
    if flow.proto == socket.IPPROTO_TCP:
        l4 = struct.pack("!HHIIBBHHH", flow.src_port, flow.dst_port, 0, 0, 5 << 4, 0x10, 8192, 0, 0)
    else:
        l4 = struct.pack("!HHHH", flow.src_port, flow.dst_port, 8 + len(payload), 0)
    l4 += payload
    if flow.src.version == 4:
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, flow.proto, 0, flow.src.packed, flow.dst.packed
        )
        hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
        return _ETH.pack(_DST_MAC, _SRC_MAC, ETH_P_IP) + hdr + l4
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(l4), flow.proto, 64, flow.src.packed, flow.dst.packed)
    return _ETH.pack(_DST_MAC, _SRC_MAC, ETH_P_IPV6) + hdr + l4


def outer_destination(frame: bytes) -> Optional[str]:
    """Destination address of the outer IP header of an encapsulated frame."""
    if len(frame) < 14:
        return None
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    if ethertype == ETH_P_IP and len(frame) >= 34:
        return str(ipaddress.IPv4Address(frame[30:34]))
    if ethertype == ETH_P_IPV6 and len(frame) >= 54:
        return str(ipaddress.IPv6Address(frame[38:54]))
    return None
