"""Packing and unpacking of the balancer's map keys and values.

The layouts come from the balancer's contract (``katran/contract.py``: one
declarative table, checked against the object's BTF); this module keeps the
small functions the control plane calls. Addresses are ``ipaddress`` objects
or strings; ports are host integers (stored in network order); everything
else is little-endian like the BPF target.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Union

import attrs

from . import contract as _c

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# --- global counters: stats[max_vips + N] (Katran's names; C enum lb_global_counter) --
_G = _c.GLOBAL_COUNTERS.py_values()
LRU_CNTRS = _G["LRU_CNTRS"]  # v1 packets to VIPs, v2 LRU misses
LRU_MISS_CNTR = _G["LRU_MISS_CNTR"]  # v1 TCP SYN misses, v2 TCP non-SYN misses
NEW_CONN_RATE_CNTR = _G["NEW_CONN_RATE_CNTR"]
FALLBACK_LRU_CNTR = _G["FALLBACK_LRU_CNTR"]
ICMP_TOOBIG_CNTRS = _G["ICMP_TOOBIG_CNTRS"]  # v1 v4, v2 v6
LPM_SRC_CNTRS = _G["LPM_SRC_CNTRS"]  # v1 no match, v2 source-routed
REMOTE_ENCAP_CNTRS = _G["REMOTE_ENCAP_CNTRS"]  # v1 packets to a decap_dst address (inline decap)
ENCAP_FAIL_CNTR = _G["ENCAP_FAIL_CNTR"]  # v1 v4 real, v2 v6 real
GLOBAL_LRU_CNTR = _G["GLOBAL_LRU_CNTR"]  # v1 no per-cpu global LRU, v2 routed by it
CH_DROP_STATS = _G["CH_DROP_STATS"]  # v1 real index invalid, v2 ring slot empty (0)
DECAP_CNTR = _G["DECAP_CNTR"]  # v1 outer v4, v2 outer v6
QUIC_ICMP_STATS = _G["QUIC_ICMP_STATS"]  # v1 ICMP to QUIC VIPs, v2 ignorable
ICMP_PTB_V6_STATS = _G["ICMP_PTB_V6_STATS"]  # v1 all, v2 mtu < 1280
ICMP_PTB_V4_STATS = _G["ICMP_PTB_V4_STATS"]
XPOP_DECAP_SUCCESSFUL = _G["XPOP_DECAP_SUCCESSFUL"]  # v1 inner v4, v2 inner v6
UDP_FLOW_MIGRATION_STATS = _G["UDP_FLOW_MIGRATION_STATS"]
XDP_TOTAL_CNTR = _G["XDP_TOTAL_CNTR"]  # v1 packets, v2 bytes
XDP_TX_CNTR = _G["XDP_TX_CNTR"]
XDP_DROP_CNTR = _G["XDP_DROP_CNTR"]
XDP_PASS_CNTR = _G["XDP_PASS_CNTR"]
EGRESS_DECAP_CNTR = _G["EGRESS_DECAP_CNTR"]  # v1 inner v4, v2 inner v6
MALFORMED_CNTR = _G["MALFORMED_CNTR"]  # not in Katran: drops to a VIP, v1 bad IP length, v2 martian source
FLOW_CACHE_CNTR = _G["FLOW_CACHE_CNTR"]  # not in Katran: v1 flow-cache hits, v2 slots filled
GLOBAL_COUNTERS: dict[str, int] = dict(_G)  # Katran's name -> slot offset

# --- slots / flags (C enums of consts.h) ----------------------------------------
CTL_MAC_POS = _c.CTL_SLOTS.value("CTL_DEFAULT_MAC")  # ctl_array slot of the default gateway MAC
CTL_ANY_PORT_VIPS = _c.CTL_SLOTS.value("CTL_ANY_PORT_VIPS")  # ctl_array slot: 1 + how many VIPs have port 0 (0: not known)
CTL_FLOW_CACHE_EPOCH = _c.CTL_SLOTS.value("CTL_FLOW_CACHE_EPOCH")  # ctl_array slot: flow cache epoch (0: off)
CTL_VIP_FILTER = _c.CTL_SLOTS.value("CTL_VIP_FILTER")  # ctl_array slots from here: the VIP filter's words
CTL_VIP_FILTER_DONE = _c.CTL_SLOTS.value("CTL_VIP_FILTER_DONE")  # ctl_array slot: 1 = the filter is whole
VIP_FILTER_WORDS = _c.VIP_FILTER_WORDS  # how many (64 bits each)
FLOW_CACHE_OFF = 1 << 32  # bit of that slot's value: switched off (lb_flow_cache.h flow_cache_epoch)
PCKT_SRC_V4 = _c.PCKT_SRC_SLOTS.value("PCKT_SRC_V4")  # pckt_srcs slots
PCKT_SRC_V6 = _c.PCKT_SRC_SLOTS.value("PCKT_SRC_V6")
REAL_F_IPV6 = _c.REAL_FLAGS.value("REAL_F_IPV6")  # real_definition.flags
REAL_F_LOCAL = _c.REAL_FLAGS.value("REAL_F_LOCAL")
DECAP_DST_F_EGRESS = _c.DECAP_DST_FLAGS.value("DECAP_DST_F_EGRESS")  # decap_dst value flag

# --- layouts (size, {member: offset}) of the balancer's structs, from the contract ----
LAYOUTS: dict[str, tuple[int, dict[str, int]]] = {
    name: (s.size, {m: off for m, (off, _size) in s.c_layout().items()})
    for name, s in _c.BALANCER.structs.items()
}

QUIC_STATS_FIELDS = _c.LB_QUIC_PACKETS_STATS.field_names
TPR_STATS_FIELDS = _c.LB_TPR_PACKETS_STATS.field_names
STABLE_RT_STATS_FIELDS = _c.LB_STABLE_RT_PACKETS_STATS.field_names

_U32 = struct.Struct("<I")
_U8 = struct.Struct("<B")


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
    return _U32.pack(value)


def u32_unpack(raw: bytes) -> int:
    return _U32.unpack_from(raw)[0]


def u8(value: int) -> bytes:
    return _U8.pack(value)


# --- vip_definition / vip_meta --------------------------------------------------
def vip_definition(address: object, port: int, proto: int) -> bytes:
    """vip_map key: 16-byte address, port in network order, proto, 1 pad byte."""
    return _c.VIP_DEFINITION.pack(addr16(address), port, proto)


def vip_definition_unpack(raw: bytes, is_v6: bool) -> tuple[IPAddress, int, int]:
    vip, port, proto = _c.VIP_DEFINITION.unpack(raw)
    return addr_from16(vip, is_v6), port, proto


def vip_meta(flags: int, vip_num: int) -> bytes:
    return _c.VIP_META.pack(flags, vip_num)


def vip_meta_unpack(raw: bytes) -> tuple[int, int]:
    """(flags, vip_num)"""
    return _c.VIP_META.unpack(raw)


# --- real_definition -------------------------------------------------------------
def real_definition(address: object, flags: int = 0) -> bytes:
    """reals value; REAL_F_IPV6 is set from the address family."""
    a = _addr(address)
    if a.version == 6:
        flags |= REAL_F_IPV6
    else:
        flags &= ~REAL_F_IPV6
    return _c.REAL_DEFINITION.pack(addr16(a), flags)


def real_definition_unpack(raw: bytes) -> tuple[IPAddress, int]:
    """(address, flags)"""
    dst, flags = _c.REAL_DEFINITION.unpack(raw)
    return addr_from16(dst, bool(flags & REAL_F_IPV6)), flags


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
    return _c.FLOW_KEY.pack(addr16(src), addr16(dst), src_port, dst_port, proto)


def flow_key_unpack(raw: bytes, is_v6: bool) -> FlowKey:
    src, dst, sport, dport, proto = _c.FLOW_KEY.unpack(raw)
    return FlowKey(addr_from16(src, is_v6), addr_from16(dst, is_v6), sport, dport, proto)


def real_pos_lru(pos: int, atime: int = 0) -> bytes:
    return _c.REAL_POS_LRU.pack(pos, atime)


def real_pos_lru_unpack(raw: bytes) -> tuple[int, int]:
    """(pos, atime)"""
    return _c.REAL_POS_LRU.unpack(raw)


# --- flow cache / VIP filter (not in Katran: lb_flow_cache.h) ----------------------------
FLOW_CACHE_FAST = 0x80000000  # flow_cache_entry.fast: the fast path may route the flow (consts.h)
FLOW_CACHE_WAYS = 4  # slots 4n .. 4n + 3 are a set (consts.h)
FLOW_CACHE_LAST = 1  # flow_cache_entry.filled bit 0: the way of its set filled last (consts.h)
FLOW_CACHE_USE = 6  # filled bits 1-2: the way's use count, 0 .. 2 (the second chance; consts.h)


def flow_cache_use_count(filled: int) -> int:
    """The use count in a flow_cache_entry's `filled`: 2 after a fill or a routed packet, one
    less each time the set keeps a newcomer out; the way is replaceable at 0."""
    return (filled & FLOW_CACHE_USE) >> 1


def _mix(h: int, buckets: int) -> int:
    """The multiplicative hash of lb_flow_cache.h: the top bits of h * 0x9e3779b1 (32-bit),
    as many as index `buckets` (a power of two)."""
    return ((h * 0x9E3779B1) & 0xFFFFFFFF) >> (33 - buckets.bit_length())


def flow_cache_slot(key: bytes) -> int:
    """The home slot of a connection-table key in flow_cache: flow_cache_index() of
    lb_flow_cache.h (the slot looked at first; its set is it and ``slot ^ 1``)."""
    h = 0
    for w in struct.unpack_from("<9I", key):  # both addresses, both ports
        h ^= w
    return _mix(h ^ key[36], _c.FLOW_CACHE_SLOTS)  # proto


def flow_cache_ways(key: bytes) -> tuple[int, ...]:
    """The FLOW_CACHE_WAYS slots of a key's flow_cache set in the order the data plane looks
    at them: its home slot, then home ^ 1, home ^ 2, home ^ 3."""
    home = flow_cache_slot(key)
    return tuple(home ^ way for way in range(FLOW_CACHE_WAYS))


def flow_cache_entry_unpack(raw: bytes) -> tuple[bytes, int, int, int, int, int]:
    """(key, real_index, epoch, filled, fast, seen) of a flow_cache value."""
    return _c.FLOW_CACHE_ENTRY.unpack(raw)


def vip_filter_bit(address: object, port: int, proto: int) -> int:
    """The VIP filter's bit of a VIP: the hash of vip_filter() in lb_flow_cache.h."""
    h = 0
    for w in struct.unpack("<4I", addr16(address)):
        h ^= w
    h ^= (int.from_bytes(port.to_bytes(2, "big"), "little") << 8) ^ proto  # port16[1]: wire order
    return _mix(h, _c.VIP_FILTER_WORDS * 64)


def vip_filter(vips) -> list[int]:  # type: ignore[no-untyped-def]
    """The VIP filter's words (ctl_array[CTL_VIP_FILTER + i]) for VIPs given as
    (address, port, proto); a VIP with port 0 has no bit (its flows are never fast)."""
    words = [0] * _c.VIP_FILTER_WORDS
    for address, port, proto in vips:
        if port:
            bit = vip_filter_bit(address, port, proto)
            words[bit >> 6] |= 1 << (bit & 63)
    return words


# --- lb_stats / ctl_value -------------------------------------------------------------
def lb_stats(v1: int = 0, v2: int = 0) -> bytes:
    return _c.LB_STATS.pack(v1, v2)


def lb_stats_unpack(raw: bytes) -> tuple[int, int]:
    """(v1, v2)"""
    return _c.LB_STATS.unpack(raw)


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
    return bytes(mac).ljust(_c.CTL_VALUE.size, b"\0")


def ctl_value_u64(value: int) -> bytes:
    return _c.CTL_VALUE.pack(value)


def ctl_value_mac_unpack(raw: bytes) -> bytes:
    return bytes(raw[:6])


# --- other keys -------------------------------------------------------------------------
def address(addr: object) -> bytes:
    """decap_dst / vip_addrs key."""
    return _c.ADDRESS.pack(addr16(addr))


def v4_lpm_key(prefix: object, prefixlen: int) -> bytes:
    return _c.V4_LPM_KEY.pack(prefixlen, _addr(prefix).packed)


def v6_lpm_key(prefix: object, prefixlen: int) -> bytes:
    return _c.V6_LPM_KEY.pack(prefixlen, _addr(prefix).packed)


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
