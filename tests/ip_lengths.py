"""Declared IP lengths of frames, read with struct from the raw bytes (no scapy re-parse:
scapy cuts a packet to its declared length on both sides of a comparison and hides a lie).

Used by tests/test_malformed.py and tests/test_fuzz.py on the balancer's XDP_TX output.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

ETH_LEN = 14
IPPROTO_UDP = 17
ICMP_PROTOS = (1, 58)
MARTIAN_SOURCES = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "255.255.255.255/32", "::/128", "::1/128", "ff00::/8")]


def is_martian(address) -> bool:
    addr = ipaddress.ip_address(address)
    return any(addr.version == n.version and addr in n for n in MARTIAN_SOURCES)


def ip_header(buf: bytes, off: int) -> tuple[int, int, int, int]:
    """(version, header length, declared total length, L4 protocol) of the IP header at off."""
    if len(buf) < off + 20:
        raise ValueError(f"no IP header at {off} in {len(buf)} bytes")
    version = buf[off] >> 4
    if version == 4:
        return 4, (buf[off] & 0xF) * 4, struct.unpack_from("!H", buf, off + 2)[0], buf[off + 9]
    if version == 6 and len(buf) >= off + 40:
        return 6, 40, 40 + struct.unpack_from("!H", buf, off + 4)[0], buf[off + 6]
    raise ValueError(f"no IP header at {off}: version {version}, {len(buf)} bytes")


def addresses(buf: bytes, off: int = ETH_LEN) -> tuple[IPAddress, IPAddress]:
    """(source, destination) of the IP header at off."""
    if buf[off] >> 4 == 4:
        return ipaddress.IPv4Address(buf[off + 12:off + 16]), ipaddress.IPv4Address(buf[off + 16:off + 20])
    return ipaddress.IPv6Address(buf[off + 8:off + 24]), ipaddress.IPv6Address(buf[off + 24:off + 40])


def encap_length_errors(sent: bytes, out: bytes) -> list[str]:
    """What is wrong with the lengths of `out`, the encapsulation of frame `sent` (empty: nothing).

    The outer IP length (and the GUE UDP length) must count exactly the outer headers plus the
    inner packet's declared length; the inner packet is `sent`'s IP packet byte for byte
    (Ethernet padding included), and its declared length lies between its header and the bytes
    that follow it.
    """
    errors = []
    _, sent_hl, sent_len, _ = ip_header(sent, ETH_LEN)
    _, outer_hl, outer_len, proto = ip_header(out, ETH_LEN)
    inner_off = ETH_LEN + outer_hl
    udp_len = None
    if proto == IPPROTO_UDP:  # GUE
        udp_len = struct.unpack_from("!H", out, inner_off + 4)[0]
        inner_off += 8
    _, inner_hl, inner_len, _ = ip_header(out, inner_off)
    if out[inner_off:] != sent[ETH_LEN:]:
        errors.append(f"inner packet differs from the one sent ({len(out) - inner_off} vs {len(sent) - ETH_LEN} bytes)")
    if inner_len != sent_len:
        errors.append(f"inner declared length {inner_len} != sent {sent_len}")
    if not inner_hl <= inner_len <= len(out) - inner_off:
        errors.append(f"inner declared length {inner_len} outside [{inner_hl}, {len(out) - inner_off}] bytes")
    if udp_len is not None and udp_len != 8 + inner_len:
        errors.append(f"GUE UDP length {udp_len} != 8 + inner {inner_len}")
    if outer_len != inner_off - ETH_LEN + inner_len:
        errors.append(f"outer declared length {outer_len} != headers {inner_off - ETH_LEN} + inner {inner_len}")
    return errors


def l4_proto(buf: bytes, off: int = ETH_LEN) -> int:
    """Protocol / next header field of the IP header at off."""
    return buf[off + 9] if buf[off] >> 4 == 4 else buf[off + 6]


def answer_length_errors(out: bytes) -> list[str]:
    """What is wrong with the declared length of an ICMP answer (empty: nothing)."""
    _, hl, total, _ = ip_header(out, ETH_LEN)
    if not hl <= total <= len(out) - ETH_LEN:
        return [f"declared length {total} outside [{hl}, {len(out) - ETH_LEN}] bytes"]
    return []
