"""Byte layouts of the structs shared with the balancer's C code.

The C header ``katran/bpf/structs.h`` is the source of truth; this module
mirrors it (``LAYOUTS``: size and member offsets, checked against the BTF of
the compiled object by ``tests/test_structs.py``) and packs / unpacks map keys
and values. Addresses are ``ipaddress`` objects or strings; ports are host
integers (stored in network order); everything else is little-endian like the
BPF target.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Union

import attrs

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# --- global counters: stats[max_vips + N] (Katran's numbering) ---------------
LRU_CNTRS = 0  # v1 packets to VIPs, v2 LRU misses
LRU_MISS_CNTR = 1  # v1 TCP SYN misses, v2 TCP non-SYN misses
NEW_CONN_RATE_CNTR = 2
FALLBACK_LRU_CNTR = 3
ICMP_TOOBIG_CNTRS = 4  # v1 v4, v2 v6
LPM_SRC_CNTRS = 5  # v1 no match, v2 source-routed
REMOTE_ENCAP_CNTRS = 6  # v1 packets to a decap_dst address (inline decap)
ENCAP_FAIL_CNTR = 7  # v1 v4 real, v2 v6 real
GLOBAL_LRU_CNTR = 8  # v1 no per-cpu global LRU, v2 routed by it
CH_DROP_STATS = 9  # v1 real index invalid, v2 ring slot empty (0)
DECAP_CNTR = 10  # v1 outer v4, v2 outer v6
QUIC_ICMP_STATS = 11  # v1 ICMP to QUIC VIPs, v2 ignorable
ICMP_PTB_V6_STATS = 12  # v1 all, v2 mtu < 1280
ICMP_PTB_V4_STATS = 13
XPOP_DECAP_SUCCESSFUL = 14  # v1 inner v4, v2 inner v6
UDP_FLOW_MIGRATION_STATS = 15
XDP_TOTAL_CNTR = 16  # v1 packets, v2 bytes
XDP_TX_CNTR = 17
XDP_DROP_CNTR = 18
XDP_PASS_CNTR = 19
EGRESS_DECAP_CNTR = 20  # v1 inner v4, v2 inner v6
MALFORMED_CNTR = 21  # not in Katran: drops to a VIP, v1 bad IP length, v2 martian source

# --- slots / flags ------------------------------------------------------------
CTL_MAC_POS = 0  # ctl_array slot of the default gateway MAC
PCKT_SRC_V4 = 0  # pckt_srcs slots
PCKT_SRC_V6 = 1
REAL_F_IPV6 = 1  # real_definition.flags
REAL_F_LOCAL = 2
DECAP_DST_F_EGRESS = 0x2  # decap_dst value flag

# --- layouts (size, {member: offset}) as in structs.h ---------------------------
LAYOUTS: dict[str, tuple[int, dict[str, int]]] = {
    "flow_key": (40, {"src": 0, "srcv6": 0, "dst": 16, "dstv6": 16, "ports": 32, "port16": 32, "proto": 36}),
    "ctl_value": (8, {"value": 0, "ifindex": 0, "mac": 0}),
    "vip_definition": (20, {"vip": 0, "vipv6": 0, "port": 16, "proto": 18}),
    "vip_meta": (8, {"flags": 0, "vip_num": 4}),
    "real_pos_lru": (16, {"pos": 0, "atime": 8}),
    "real_definition": (20, {"dst": 0, "dstv6": 0, "flags": 16}),
    "lb_stats": (16, {"v1": 0, "v2": 8}),
    "v4_lpm_key": (8, {"prefixlen": 0, "addr": 4}),
    "v6_lpm_key": (20, {"prefixlen": 0, "addr": 4}),
    "address": (16, {"addr": 0, "addrv6": 0}),
    "lb_quic_packets_stats": (104, {
        "ch_routed": 0, "cid_initial": 8, "cid_invalid_server_id": 16,
        "cid_invalid_server_id_sample": 24, "cid_routed": 32, "cid_unknown_real_dropped": 40,
        "cid_v0": 48, "cid_v1": 56, "cid_v2": 64, "cid_v3": 72, "dst_match_in_lru": 80,
        "dst_mismatch_in_lru": 88, "dst_not_found_in_lru": 96,
    }),
    "lb_tpr_packets_stats": (32, {"ch_routed": 0, "dst_mismatch_in_lru": 8, "sid_routed": 16, "tcp_syn": 24}),
    "lb_stable_rt_packets_stats": (40, {
        "ch_routed": 0, "cid_routed": 8, "cid_invalid_server_id": 16,
        "cid_unknown_real_dropped": 24, "invalid_packet_type": 32,
    }),
}

QUIC_STATS_FIELDS = tuple(LAYOUTS["lb_quic_packets_stats"][1])
TPR_STATS_FIELDS = tuple(LAYOUTS["lb_tpr_packets_stats"][1])
STABLE_RT_STATS_FIELDS = tuple(LAYOUTS["lb_stable_rt_packets_stats"][1])


def size_of(name: str) -> int:
    return LAYOUTS[name][0]


def _addr(value: object) -> IPAddress:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    return ipaddress.ip_address(str(value).strip("[]"))


def addr16(address: object) -> bytes:
    """Address as the 16-byte union of the C structs (v4 in the first 4 bytes)."""
    return _addr(address).packed.ljust(16, b"\0")


def addr_from16(raw: bytes, is_v6: bool) -> IPAddress:
    return ipaddress.IPv6Address(raw[:16]) if is_v6 else ipaddress.IPv4Address(raw[:4])


# --- scalars ------------------------------------------------------------------
def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def u32_unpack(raw: bytes) -> int:
    return struct.unpack("<I", raw[:4])[0]


def u8(value: int) -> bytes:
    return struct.pack("<B", value)


# --- vip_definition / vip_meta --------------------------------------------------
def vip_definition(address: object, port: int, proto: int) -> bytes:
    """vip_map key: 16-byte address, port in network order, proto, 1 pad byte."""
    return addr16(address) + struct.pack("!H", port) + struct.pack("<Bx", proto)


def vip_definition_unpack(raw: bytes, is_v6: bool) -> tuple[IPAddress, int, int]:
    port = struct.unpack("!H", raw[16:18])[0]
    return addr_from16(raw, is_v6), port, raw[18]


def vip_meta(flags: int, vip_num: int) -> bytes:
    return struct.pack("<II", flags, vip_num)


def vip_meta_unpack(raw: bytes) -> tuple[int, int]:
    """(flags, vip_num)"""
    return struct.unpack("<II", raw[:8])


# --- real_definition -------------------------------------------------------------
def real_definition(address: object, flags: int = 0) -> bytes:
    """reals value; REAL_F_IPV6 is set from the address family."""
    a = _addr(address)
    if a.version == 6:
        flags |= REAL_F_IPV6
    else:
        flags &= ~REAL_F_IPV6
    return addr16(a) + struct.pack("<B3x", flags)


def real_definition_unpack(raw: bytes) -> tuple[IPAddress, int]:
    """(address, flags)"""
    flags = raw[16]
    return addr_from16(raw, bool(flags & REAL_F_IPV6)), flags


# --- flow_key / real_pos_lru --------------------------------------------------------
@attrs.frozen
class FlowKey:
    src: IPAddress
    dst: IPAddress
    src_port: int
    dst_port: int
    proto: int


def flow_key(src: object, dst: object, src_port: int, dst_port: int, proto: int) -> bytes:
    """Connection-table key (ports in network order, 3 pad bytes zeroed)."""
    return addr16(src) + addr16(dst) + struct.pack("!HH", src_port, dst_port) + struct.pack("<B3x", proto)


def flow_key_unpack(raw: bytes, is_v6: bool) -> FlowKey:
    sport, dport = struct.unpack("!HH", raw[32:36])
    return FlowKey(addr_from16(raw[0:16], is_v6), addr_from16(raw[16:32], is_v6), sport, dport, raw[36])


def real_pos_lru(pos: int, atime: int = 0) -> bytes:
    return struct.pack("<I4xQ", pos, atime)


def real_pos_lru_unpack(raw: bytes) -> tuple[int, int]:
    """(pos, atime)"""
    return struct.unpack("<I4xQ", raw[:16])


# --- lb_stats / ctl_value -------------------------------------------------------------
def lb_stats(v1: int = 0, v2: int = 0) -> bytes:
    return struct.pack("<QQ", v1, v2)


def lb_stats_unpack(raw: bytes) -> tuple[int, int]:
    """(v1, v2)"""
    return struct.unpack("<QQ", raw[:16])


def lb_stats_sum(per_cpu: list[bytes]) -> tuple[int, int]:
    """Sum a per-CPU lb_stats value over CPUs."""
    v1 = v2 = 0
    for raw in per_cpu:
        a, b = lb_stats_unpack(raw)
        v1 += a
        v2 += b
    return v1, v2


def ctl_value_mac(mac: bytes) -> bytes:
    if len(mac) != 6:
        raise ValueError(f"ctl_value_mac: MAC must be 6 bytes, got {len(mac)}")
    return bytes(mac) + b"\0\0"


def ctl_value_u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def ctl_value_mac_unpack(raw: bytes) -> bytes:
    return bytes(raw[:6])


# --- other keys -------------------------------------------------------------------------
def address(addr: object) -> bytes:
    """decap_dst key."""
    return addr16(addr)


def v4_lpm_key(prefix: object, prefixlen: int) -> bytes:
    return struct.pack("<I", prefixlen) + _addr(prefix).packed


def v6_lpm_key(prefix: object, prefixlen: int) -> bytes:
    return struct.pack("<I", prefixlen) + _addr(prefix).packed


def counters_unpack(raw: bytes, fields: tuple[str, ...]) -> dict[str, int]:
    """Unpack a struct of __u64 counters (quic / tpr / stable-rt stats)."""
    vals = struct.unpack(f"<{len(fields)}Q", raw[: 8 * len(fields)])
    return dict(zip(fields, vals))


def counters_sum(per_cpu: list[bytes], fields: tuple[str, ...]) -> dict[str, int]:
    out = dict.fromkeys(fields, 0)
    for raw in per_cpu:
        for k, v in counters_unpack(raw, fields).items():
            out[k] += v
    return out
