"""Value classes of Katran's vocabulary (vip, real, quic real, flow, stats).

Everything here is pure data plus validation: no kernel access.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from typing import Optional, Union

import attrs

from .errors import ValidationError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_HEX = frozenset("0123456789abcdefABCDEF")

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


class VipFlag(enum.IntFlag):
    """vip_meta.flags, Katran's numeric values."""

    NO_SPORT = 1 << 0  # F_HASH_NO_SRC_PORT
    NO_LRU = 1 << 1  # F_LRU_BYPASS
    QUIC_VIP = 1 << 2
    DPORT_HASH = 1 << 3  # F_HASH_DPORT_ONLY
    SRC_ROUTING = 1 << 4
    LOCAL_VIP = 1 << 5
    GLOBAL_LRU = 1 << 6
    HASH_SRC_DST_PORT = 1 << 7
    UDP_STABLE_ROUTING_VIP = 1 << 8
    UDP_FLOW_MIGRATION = 1 << 9


class RealFlag(enum.IntFlag):
    """real_definition.flags, Katran's numeric values."""

    IPV6 = 1 << 0  # set by katran itself, never by users
    LOCAL_REAL = 1 << 1


class HashFunction(enum.IntEnum):
    MAGLEV = 0
    MAGLEV_V2 = 1


class ModifyAction(enum.IntEnum):
    ADD = 0
    DEL = 1


def _address_text_problem(text: str) -> Optional[str]:
    """Why ``text`` can never be an address we accept (before ipaddress looks at it), or None."""
    if text != text.strip():
        return "surrounding whitespace is not allowed"
    if not text.isascii():
        return "not a valid IPv4 or IPv6 address (non-ASCII characters)"
    if "%" in text:
        return "scoped IPv6 addresses (with a %zone) are not supported"
    return None


def parse_address(value: object, field: str = "address") -> IPAddress:
    """Parse an IPv4/IPv6 address text (``[v6]`` brackets allowed) or raise ValidationError.

    Refused: surrounding whitespace, non-ASCII text and scoped IPv6 addresses
    (``fe80::1%eth0``): the kernel maps key on the 16 address bytes only, so
    two zones of one address would share (and steal) one key.
    """
    if isinstance(value, ipaddress.IPv6Address) and value.scope_id is not None:
        raise ValidationError(field, str(value), "scoped IPv6 addresses (with a %zone) are not supported")
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    if not isinstance(value, str):
        raise ValidationError(field, value, "expected an IPv4 or IPv6 address string")
    problem = _address_text_problem(value)
    if problem:
        raise ValidationError(field, value, problem)
    text = value
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValidationError(field, value, "not a valid IPv4 or IPv6 address") from None


def parse_prefix(value: object, field: str = "src") -> Union[ipaddress.IPv4Network, ipaddress.IPv6Network]:
    """Parse a prefix like 10.0.0.0/8 or fc00::/64 (host bits are cleared) or raise ValidationError."""
    if not isinstance(value, str):
        raise ValidationError(field, value, "expected a prefix like 10.0.0.0/8 or fc00::/64")
    problem = _address_text_problem(value)
    if problem:
        raise ValidationError(field, value, problem.replace("address", "prefix"))
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValidationError(field, value, "not a valid IPv4/IPv6 prefix") from None


def format_address(address: object) -> str:
    """An address as output text, as Katran prints it: IPv4-mapped IPv6 in dotted form.

    ``::ffff:10.0.0.77`` (Python alone would print ``::ffff:a00:4d``).
    """
    if isinstance(address, str):
        address = ipaddress.ip_address(address)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def format_prefix(net: Union[ipaddress.IPv4Network, ipaddress.IPv6Network]) -> str:
    """A prefix as output text (its address as ``format_address`` prints it)."""
    return f"{format_address(net.network_address)}/{net.prefixlen}"


def parse_optional_address(value: object, field: str, version: int) -> Optional[IPAddress]:
    """None/'' -> None; otherwise an address of the given IP version (or ValidationError)."""
    if value in (None, ""):
        return None
    addr = parse_address(value, field)
    if addr.version != version:
        raise ValidationError(field, value, f"expected an IPv{version} address")
    return addr


def parse_proto(value: object, field: str = "proto") -> int:
    if isinstance(value, str):
        key = value.strip().lower()
        if key in PROTOCOLS:
            return PROTOCOLS[key]
        if key.isdigit():
            value = int(key)
    if isinstance(value, bool) or not isinstance(value, int) or value not in PROTOCOLS.values():
        raise ValidationError(field, value, "protocol must be tcp (6) or udp (17)")
    return int(value)


def check_int(value: object, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, value, f"expected an integer in [{lo}, {hi}]")
    if not lo <= value <= hi:
        raise ValidationError(field, value, f"out of range [{lo}, {hi}]")
    return int(value)


def parse_mac(value: object, field: str = "mac") -> bytes:
    """'aa:bb:cc:dd:ee:ff' (or '-' separated) -> 6 bytes."""
    if isinstance(value, (bytes, bytearray)) and len(value) == 6:
        return bytes(value)
    if isinstance(value, str) and value == value.strip() and value.isascii():
        parts = value.replace("-", ":").split(":")
        if len(parts) == 6 and all(1 <= len(p) <= 2 and all(c in _HEX for c in p) for p in parts):
            return bytes(int(p, 16) for p in parts)
    raise ValidationError(field, value, "expected a MAC address like 00:11:22:33:44:55")


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


@attrs.frozen(order=True)
class VipKey:
    """A VIP: address + port + protocol.  Port 0 means every port."""

    address: IPAddress = attrs.field(converter=lambda v: parse_address(v, "vip.address"))
    port: int = attrs.field(converter=lambda v: check_int(v, "vip.port", 0, 65535))
    proto: int = attrs.field(converter=lambda v: parse_proto(v, "vip.proto"))

    @property
    def is_v6(self) -> bool:
        return self.address.version == 6

    def __str__(self) -> str:
        name = {6: "tcp", 17: "udp"}[self.proto]
        host = f"[{format_address(self.address)}]" if self.is_v6 else str(self.address)
        return f"{host}:{self.port}/{name}"


@attrs.frozen
class Real:
    """A real (backend) of a VIP, as Katran's NewReal: address, weight, flags."""

    address: IPAddress = attrs.field(converter=lambda v: parse_address(v, "real.address"))
    weight: int = attrs.field(default=1, converter=lambda v: check_int(v, "real.weight", 0, 2**32 - 1))
    flags: int = attrs.field(default=0, converter=lambda v: check_int(v, "real.flags", 0, 255))


@attrs.frozen
class QuicReal:
    """server id (embedded in QUIC connection ids / TCP option) -> real address."""

    address: IPAddress = attrs.field(converter=lambda v: parse_address(v, "quic_real.address"))
    id: int = attrs.field(converter=lambda v: check_int(v, "quic_real.id", 0, 2**32 - 1))


@attrs.frozen
class Flow:
    """A 5-tuple, as Katran's KatranFlow (used by get_real_for_flow)."""

    src: IPAddress = attrs.field(converter=lambda v: parse_address(v, "flow.src"))
    dst: IPAddress = attrs.field(converter=lambda v: parse_address(v, "flow.dst"))
    src_port: int = attrs.field(converter=lambda v: check_int(v, "flow.src_port", 0, 65535))
    dst_port: int = attrs.field(converter=lambda v: check_int(v, "flow.dst_port", 0, 65535))
    proto: int = attrs.field(converter=lambda v: parse_proto(v, "flow.proto"))


@attrs.frozen
class LbStats:
    """Katran's lb_stats: two counters whose meaning depends on the getter."""

    v1: int = 0
    v2: int = 0


@attrs.frozen
class PacketResult:
    """Result of running one packet through a loaded program."""

    verdict: str  # "XDP_TX", "XDP_PASS", ... or "TC_ACT_*" for tc programs
    retval: int
    data: bytes
    duration_ns: int = 0
