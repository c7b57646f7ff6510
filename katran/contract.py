"""The C <-> Python contract of every BPF object we ship, as one declarative table each.

Source of truth: the C headers (``katran/bpf/``). The layouts are Katran's, written
once in C where the compiler fixes them; clang records every struct, map, knob and
enum in the object's BTF. The tables below declare what the control plane relies on
(maps: type, key, value; knobs: size; structs: fields; counters and flags: C enums)
and are checked against that BTF - by ``tests/test_abi.py`` for everything, and by
the loaders through :meth:`ObjectContract.check` each time an object is opened. The
Python packing (``struct.Struct`` formats) is generated from the same tables, so a
layout is written twice (C, table) and never by hand a third time. We did not
generate the C headers from Python: the BPF C stays plain C that reads like Katran's,
builds without running Python, and a table that drifts fails loudly either way.

Our own objects are checked strictly: a map or knob of the table missing from the
object is a :class:`ContractError` (``missing map 'x'``). A user-supplied object
(``balancer_prog_path``) is checked tolerantly: what it lacks is reported by
:meth:`Binding.has_map` / :meth:`Binding.has_knob` and skipped by the loader, what it
has must still match. Asking for a name the table does not know is always an error
(``unknown map 'x'`` / ``unknown knob 'y'``).

This module needs no kernel and no libbpf; only :meth:`ObjectContract.check` (and
``check_btf``) read an object's BTF through ``katran.adapter.btf``.
"""

from __future__ import annotations

import enum
import os
import struct
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

import attrs

from .errors import KatranError
from .models import RealFlag, VipFlag

OBJ_DIR = Path(__file__).resolve().parent / "bpf" / "obj"


class ContractError(KatranError):
    """A BPF object does not match the contract the control plane relies on."""


class MapType(enum.IntEnum):
    """``enum bpf_map_type`` values of the map types we use (uapi)."""

    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERCPU_ARRAY = 6
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    ARRAY_OF_MAPS = 12
    HASH_OF_MAPS = 13
    RINGBUF = 27


# --- scalar C types: size, alignment, struct code, network order ---------------------
@attrs.frozen
class CType:
    name: str
    size: int
    align: int
    code: str  # struct module code of one element ("s" codes carry the size)
    big_endian: bool = False


U8 = CType("__u8", 1, 1, "B")
U16 = CType("__u16", 2, 2, "H")
U32 = CType("__u32", 4, 4, "I")
U64 = CType("__u64", 8, 8, "Q")
BE16 = CType("__be16", 2, 2, "H", big_endian=True)  # host int in Python, network order in memory
BE32 = CType("__be32", 4, 4, "I", big_endian=True)
ADDR = CType("addr", 16, 4, "16s")  # union { __be32 x; __be32 xv6[4]; }: 16 bytes, v4 first
MAC = CType("mac", 6, 1, "6s")  # __u8 mac[6]


def _swap16(v: int) -> int:
    return ((v & 0xFF) << 8) | ((v >> 8) & 0xFF)


def _swap32(v: int) -> int:
    return int.from_bytes(int(v).to_bytes(4, "little"), "big")


@attrs.frozen
class Field:
    """One field as Python packs it. ``c`` lists the C members (name, size) that the
    object's BTF shows at this offset - a union's members, or none when the field is
    the second half of one C member; default: one member of the field's own name."""

    name: str
    ctype: CType
    c: Optional[tuple] = None

    def c_members(self) -> tuple:
        return ((self.name, self.ctype.size),) if self.c is None else self.c


class Struct:
    """A C struct laid out with C's natural alignment; packs and unpacks tuples."""

    def __init__(self, name: str, fields: Sequence[Field], doc: str = "",
                 older: Sequence[Sequence[Field]] = ()) -> None:
        self.name = name
        self.fields = tuple(fields)
        self.doc = doc
        # layouts of the same size that older builds of ours have: accepted from a
        # user-supplied object (not strict), whose data plane then lacks what changed
        self.older_layouts = tuple(Struct(name, f).c_layout() for f in older)
        offsets, fmt, off, align = {}, "<", 0, 1
        for f in self.fields:
            pad = -off % f.ctype.align
            if pad:
                fmt += f"{pad}x"
                off += pad
            offsets[f.name] = off
            fmt += f.ctype.code
            off += f.ctype.size
            align = max(align, f.ctype.align)
        tail = -off % align
        if tail:
            fmt += f"{tail}x"
        self.offsets: dict[str, int] = offsets
        self.size = off + tail
        self.format = fmt
        self._struct = struct.Struct(fmt)
        assert self._struct.size == self.size, name
        self._swaps = tuple(
            (i, _swap16 if f.ctype.size == 2 else _swap32)
            for i, f in enumerate(self.fields) if f.ctype.big_endian
        )
        self.field_names = tuple(f.name for f in self.fields)

    def __repr__(self) -> str:
        return f"<Struct {self.name} size={self.size}>"

    def pack(self, *values: object) -> bytes:
        """Bytes of the struct, padding zeroed (keys are hashed with their padding)."""
        if self._swaps:
            vals = list(values)
            for i, swap in self._swaps:
                vals[i] = swap(vals[i])  # type: ignore[arg-type]
            values = tuple(vals)
        return self._struct.pack(*values)

    def unpack(self, raw: bytes) -> tuple:
        vals = self._struct.unpack_from(raw)
        if self._swaps:
            out = list(vals)
            for i, swap in self._swaps:
                out[i] = swap(out[i])
            vals = tuple(out)
        return vals

    def unpack_dict(self, raw: bytes) -> dict:
        return dict(zip(self.field_names, self.unpack(raw)))

    def c_layout(self) -> dict[str, tuple[int, int]]:
        """{C member: (offset, size)} as the BTF of the object must show it."""
        out: dict[str, tuple[int, int]] = {}
        for f in self.fields:
            for name, size in f.c_members():
                out[name] = (self.offsets[f.name], size)
        return out


def counters(name: str, names: Iterable[str], doc: str = "") -> Struct:
    """A struct of __u64 counters (stats values)."""
    return Struct(name, [Field(n, U64) for n in names], doc)


KeyValue = Union[Struct, CType, None]  # None: the map has no value type (prog array: fds)


@attrs.frozen
class MapDef:
    name: str
    type: MapType
    key: KeyValue
    value: KeyValue
    doc: str
    inner: Optional["MapDef"] = None  # map-in-map: the inner map's definition

    @property
    def key_size(self) -> int:
        return self.key.size if self.key is not None else 0

    @property
    def value_size(self) -> int:
        return self.value.size if self.value is not None else 0


@attrs.frozen
class Knob:
    """A ``const volatile`` global in .rodata, written before load."""

    name: str
    ctype: CType
    default: int
    doc: str


@attrs.frozen
class CEnum:
    """A C enum of the BPF headers (BTF carries its names) and its Python names."""

    name: str  # C enum tag
    members: Mapping[str, int]  # C name -> value
    python: Mapping[str, str] = attrs.field(factory=dict)  # Python name -> C name

    def value(self, c_name: str) -> int:
        return self.members[c_name]

    def py_values(self) -> dict[str, int]:
        return {py: self.members[c] for py, c in self.python.items()}


@attrs.define
class Binding:
    """The maps and knobs an opened object has, as checked against its contract."""

    contract: "ObjectContract"
    path: str
    maps: frozenset
    knobs: frozenset
    strict: bool
    # writable globals of the contract the object has: name -> (offset, size) in .bss
    globals: Mapping[str, tuple] = attrs.field(factory=dict)

    def has_map(self, name: str) -> bool:
        self.contract.map(name)  # unknown name -> ContractError
        return name in self.maps

    def has_knob(self, name: str) -> bool:
        self.contract.knob(name)
        return name in self.knobs

    def require_map(self, name: str) -> None:
        """For code that cannot do without the map (data-plane loaders)."""
        if not self.has_map(name):
            raise ContractError(f"{self.path}: missing map {name!r} ({self.contract.name} object)")


@attrs.frozen
class ObjectContract:
    """Everything the control plane assumes about one BPF object."""

    name: str
    object_file: str  # in katran/bpf/obj/
    programs: tuple
    maps: Mapping[str, MapDef]
    knobs: Mapping[str, Knob]
    structs: Mapping[str, Struct]  # every struct whose layout the control plane uses
    enums: Mapping[str, CEnum]
    # writable globals (.bss) the control plane writes after load: name -> their struct
    globals: Mapping[str, Struct] = attrs.field(factory=dict)

    @property
    def path(self) -> Path:
        return OBJ_DIR / self.object_file

    def map(self, name: str) -> MapDef:
        try:
            return self.maps[name]
        except KeyError:
            raise ContractError(f"unknown map {name!r} ({self.name} object)") from None

    def knob(self, name: str) -> Knob:
        try:
            return self.knobs[name]
        except KeyError:
            raise ContractError(f"unknown knob {name!r} ({self.name} object)") from None

    def knob_bytes(self, name: str, value: int) -> bytes:
        k = self.knob(name)
        return int(value).to_bytes(k.ctype.size, "little")

    def check(self, path: Union[str, os.PathLike, None] = None, *, strict: bool = True) -> Binding:
        """Check an object file's BTF against this contract -> what it has.

        strict (our own objects): every map and knob of the table must be there.
        Not strict (a user-supplied object): absent maps/knobs/structs are allowed;
        whatever is there must match. Mismatches always raise ContractError.
        """
        from .adapter.btf import BtfFile

        path = os.fspath(path or self.path)
        with BtfFile(path) as btf:
            problems, maps, knobs = check_btf(self, btf, strict=strict)
            bss = btf.datasec_vars(".bss") if self.globals else {}
        if problems:
            shown = "; ".join(problems[:8]) + (f"; ... {len(problems) - 8} more" if len(problems) > 8 else "")
            raise ContractError(f"{path} does not match the {self.name} contract: {shown}")
        return Binding(self, path, frozenset(maps), frozenset(knobs), strict,
                       {n: bss[n] for n in self.globals if n in bss})


# --- BTF check -------------------------------------------------------------------------
def _kv_problem(what: str, m: MapDef, want: KeyValue, got) -> Optional[str]:  # type: ignore[no-untyped-def]
    """got: (type name or '', size) from BTF, or None when the map declares none."""
    if want is None:
        return None
    if got is None:
        return f"map {m.name!r}: no {what} type in BTF"
    gname, gsize = got
    if gsize != want.size:
        return f"map {m.name!r}: {what} size {gsize}, contract {want.size}"
    if isinstance(want, Struct) and gname != want.name:
        return f"map {m.name!r}: {what} is {gname or 'an unnamed type'!r}, contract struct {want.name}"
    return None


def _map_problems(m: MapDef, got: dict) -> list[str]:  # type: ignore[type-arg]
    out = []
    if got.get("type") != int(m.type):
        out.append(f"map {m.name!r}: type {got.get('type')}, contract {m.type.name}")
    for what, want in (("key", m.key), ("value", None if m.inner is not None else m.value)):
        p = _kv_problem(what, m, want, got.get(what))
        if p:
            out.append(p)
    if m.inner is not None:
        inner = got.get("inner")
        if inner is None:
            out.append(f"map {m.name!r}: no inner map definition in BTF")
        else:
            out.extend(_map_problems(m.inner, inner))
    return out


def check_btf(contract: ObjectContract, btf, *, strict: bool = True):  # type: ignore[no-untyped-def]
    """(problems, maps present, knobs present) of a parsed BTF (katran.adapter.btf.BtfFile)."""
    from .errors import NotFoundError

    problems: list[str] = []
    defs = btf.map_defs()
    for name, m in contract.maps.items():
        if name not in defs:
            if strict:
                problems.append(f"missing map {name!r}")
            continue
        problems.extend(_map_problems(m, defs[name]))
    if strict:
        problems.extend(f"map {n!r} not in the contract" for n in sorted(set(defs) - set(contract.maps)))
    rodata = btf.datasec_vars(".rodata")
    for name, k in contract.knobs.items():
        if name not in rodata:
            if strict:
                problems.append(f"missing knob {name!r}")
            continue
        if rodata[name][1] != k.ctype.size:
            problems.append(f"knob {name!r}: size {rodata[name][1]}, contract {k.ctype.size} ({k.ctype.name})")
    if strict:
        problems.extend(f"knob {n!r} not in the contract" for n in sorted(set(rodata) - set(contract.knobs)))
    bss = btf.datasec_vars(".bss")
    for name, s in contract.globals.items():
        if name not in bss:
            if strict:
                problems.append(f"missing global {name!r}")
            continue
        if bss[name][1] != s.size:
            problems.append(f"global {name!r}: size {bss[name][1]}, contract {s.size} (struct {s.name})")
    if strict:
        problems.extend(f"global {n!r} not in the contract" for n in sorted(set(bss) - set(contract.globals)))
    for name, s in contract.structs.items():
        try:
            size, members = btf.struct_layout(name)
        except NotFoundError:
            if strict:
                problems.append(f"missing struct {name!r}")
            continue
        if size != s.size:
            problems.append(f"struct {name}: size {size}, contract {s.size}")
        want = s.c_layout()
        if members != want and not (not strict and members in s.older_layouts):
            diff = sorted(set(members.items()) ^ set(want.items()))
            problems.append(f"struct {name}: members differ (BTF vs contract) {diff[:4]}")
    for name, e in contract.enums.items():
        got = btf.enum_values(name)
        if got is None:
            if strict:
                problems.append(f"missing enum {name!r}")
            continue
        want = dict(e.members)
        if not strict and all(want.get(k) == v for k, v in got.items()):
            continue  # an older build: members it lacks are features it lacks, none contradicts
        if got != want:
            diff = sorted(set(got.items()) ^ set(want.items()))
            problems.append(f"enum {name}: members differ (BTF vs contract) {diff[:4]}")
    return problems, [n for n in contract.maps if n in defs], [n for n in contract.knobs if n in rodata]


# =======================================================================================
# The balancer (balancer.bpf.c: structs.h, maps.h, knobs.h, consts.h)
# =======================================================================================
FLOW_KEY = Struct("flow_key", [
    Field("src", ADDR, (("src", 4), ("srcv6", 16))),
    Field("dst", ADDR, (("dst", 4), ("dstv6", 16))),
    Field("sport", BE16, (("ports", 4), ("port16", 4))),
    Field("dport", BE16, ()),
    Field("proto", U8),
], "5-tuple of a flow: key of the connection tables")
CTL_VALUE = Struct("ctl_value", [Field("value", U64, (("value", 8), ("ifindex", 4), ("mac", 6)))],
                   "ctl_array value: a MAC (slot 0) or another scalar")
VIP_DEFINITION = Struct("vip_definition", [
    Field("vip", ADDR, (("vip", 4), ("vipv6", 16))),
    Field("port", BE16),
    Field("proto", U8),
], "vip_map key")
VIP_META = Struct("vip_meta", [Field("flags", U32), Field("vip_num", U32)], "vip_map value")
REAL_POS_LRU = Struct("real_pos_lru", [Field("pos", U32), Field("atime", U64)], "connection table value")
_FLOW_CACHE_KEY = Field("key", CType("struct flow_key", FLOW_KEY.size, 4, f"{FLOW_KEY.size}s"))
FLOW_CACHE_ENTRY = Struct("flow_cache_entry", [
    _FLOW_CACHE_KEY,
    Field("real_index", U32), Field("epoch", U32), Field("filled", U32), Field("fast", U32), Field("seen", U64),
], "flow_cache value: a flow just found in its cpu's connection table (not in Katran)",
    # before the fast path: a 64-bit fill time where filled and fast are (its slots are never fast)
    older=[[_FLOW_CACHE_KEY, Field("real_index", U32), Field("epoch", U32), Field("filled", U64), Field("seen", U64)]])
FLOW_CACHE_SLOTS = 1 << 14  # consts.h FLOW_CACHE_SLOTS: flow_cache entries per cpu
FLOW_CACHE_MARKS = Struct("flow_cache_marks", [
    Field("stale", CType(f"__u64[{FLOW_CACHE_SLOTS // 64}]", FLOW_CACHE_SLOTS // 8, 8, f"{FLOW_CACHE_SLOTS // 8}s")),
], "flow_cache_stale value: a bit per flow_cache slot")
REAL_DEFINITION = Struct("real_definition", [
    Field("dst", ADDR, (("dst", 4), ("dstv6", 16))),
    Field("flags", U8),
], "reals value")
LB_STATS = Struct("lb_stats", [Field("v1", U64), Field("v2", U64)], "a pair of counters")
# Global counters: stats[max_vips + N]. Python names are Katran's, C names CNT_*.
GLOBAL_COUNTERS = CEnum("lb_global_counter", {
    "CNT_LRU": 0, "CNT_LRU_MISS": 1, "CNT_NEW_CONN_RATE": 2, "CNT_FALLBACK_LRU": 3, "CNT_ICMP_TOOBIG": 4,
    "CNT_LPM_SRC": 5, "CNT_REMOTE_ENCAP": 6, "CNT_ENCAP_FAIL": 7, "CNT_GLOBAL_LRU": 8, "CNT_CH_DROP": 9,
    "CNT_DECAP": 10, "CNT_QUIC_ICMP": 11, "CNT_ICMP_PTB_V6": 12, "CNT_ICMP_PTB_V4": 13,
    "CNT_XPOP_DECAP": 14, "CNT_UDP_FLOW_MIG": 15, "CNT_XDP_TOTAL": 16, "CNT_XDP_TX": 17,
    "CNT_XDP_DROP": 18, "CNT_XDP_PASS": 19, "CNT_EGRESS_DECAP": 20,
    "CNT_MALFORMED": 21,  # ours, not Katran's: drops to a VIP (v1 bad IP length, v2 martian source)
    "CNT_FLOW_CACHE": 22,  # ours, not Katran's: v1 flow-cache hits, v2 slots filled
}, {
    "LRU_CNTRS": "CNT_LRU", "LRU_MISS_CNTR": "CNT_LRU_MISS", "NEW_CONN_RATE_CNTR": "CNT_NEW_CONN_RATE",
    "FALLBACK_LRU_CNTR": "CNT_FALLBACK_LRU", "ICMP_TOOBIG_CNTRS": "CNT_ICMP_TOOBIG",
    "LPM_SRC_CNTRS": "CNT_LPM_SRC", "REMOTE_ENCAP_CNTRS": "CNT_REMOTE_ENCAP",
    "ENCAP_FAIL_CNTR": "CNT_ENCAP_FAIL", "GLOBAL_LRU_CNTR": "CNT_GLOBAL_LRU", "CH_DROP_STATS": "CNT_CH_DROP",
    "DECAP_CNTR": "CNT_DECAP", "QUIC_ICMP_STATS": "CNT_QUIC_ICMP", "ICMP_PTB_V6_STATS": "CNT_ICMP_PTB_V6",
    "ICMP_PTB_V4_STATS": "CNT_ICMP_PTB_V4", "XPOP_DECAP_SUCCESSFUL": "CNT_XPOP_DECAP",
    "UDP_FLOW_MIGRATION_STATS": "CNT_UDP_FLOW_MIG", "XDP_TOTAL_CNTR": "CNT_XDP_TOTAL",
    "XDP_TX_CNTR": "CNT_XDP_TX", "XDP_DROP_CNTR": "CNT_XDP_DROP", "XDP_PASS_CNTR": "CNT_XDP_PASS",
    "EGRESS_DECAP_CNTR": "CNT_EGRESS_DECAP", "MALFORMED_CNTR": "CNT_MALFORMED",
    "FLOW_CACHE_CNTR": "CNT_FLOW_CACHE",
})
HOT_STAT_PAIRS = max(GLOBAL_COUNTERS.members.values()) + 1  # consts.h GLOBAL_COUNTERS: a pair each
HOT_STATS = Struct("hot_stats", [
    Field("c", CType(f"struct lb_stats[{HOT_STAT_PAIRS}]", 16 * HOT_STAT_PAIRS, 8, f"{16 * HOT_STAT_PAIRS}s")),
], "hot_stats value: this cpu's share of each global counter that the per-packet path counts (not in Katran)")
V4_LPM_KEY = Struct("v4_lpm_key", [Field("prefixlen", U32), Field("addr", CType("__be32", 4, 4, "4s"))])
V6_LPM_KEY = Struct("v6_lpm_key", [Field("prefixlen", U32), Field("addr", CType("__be32[4]", 16, 4, "16s"))])
ADDRESS = Struct("address", [Field("addr", ADDR, (("addr", 4), ("addrv6", 16)))], "decap_dst / vip_addrs key")
LB_QUIC_PACKETS_STATS = counters("lb_quic_packets_stats", (
    "ch_routed", "cid_initial", "cid_invalid_server_id", "cid_invalid_server_id_sample", "cid_routed",
    "cid_unknown_real_dropped", "cid_v0", "cid_v1", "cid_v2", "cid_v3", "dst_match_in_lru",
    "dst_mismatch_in_lru", "dst_not_found_in_lru"), "quic_stats_map value")
LB_TPR_PACKETS_STATS = counters("lb_tpr_packets_stats", (
    "ch_routed", "dst_mismatch_in_lru", "sid_routed", "tcp_syn"), "tpr_stats_map value")
LB_STABLE_RT_PACKETS_STATS = counters("lb_stable_rt_packets_stats", (
    "ch_routed", "cid_routed", "cid_invalid_server_id", "cid_unknown_real_dropped", "invalid_packet_type"),
    "stable_rt_stats value")

BE32X4 = CType("__be32[4]", 16, 4, "16s")
CAPTURE_FILTER = Struct("capture_filter", [
    Field("enabled", U32), Field("flags", U32), Field("vip_num", U32), Field("real_index", U32),
    Field("snaplen", U32), Field("src", BE32X4), Field("src_mask", BE32X4),
], "the global capture_filter (.bss): what the balancer records to capture_ring")
CAPTURE_HDR = Struct("capture_hdr", [
    Field("tstamp_ns", U64), Field("ifindex", U32), Field("orig_len", U32), Field("cap_len", U32),
    Field("direction", U8), Field("pad", CType("__u8[3]", 3, 1, "3s")),
], "head of a capture_ring record; cap_len frame bytes follow")
CAPTURE_MAX_SNAPLEN = 4096  # structs.h: bytes of a frame a record keeps at most
CAPTURE_RECORD = Struct("capture_record", [
    Field("hdr", CType("struct capture_hdr", CAPTURE_HDR.size, 8, f"{CAPTURE_HDR.size}s")),
    Field("data", CType(f"__u8[{CAPTURE_MAX_SNAPLEN}]", CAPTURE_MAX_SNAPLEN, 1, f"{CAPTURE_MAX_SNAPLEN}s")),
], "capture_scratch value: a record being assembled")
DEFAULT_CAPTURE_RING_SIZE = 1 << 20  # consts.h: capture_ring bytes

_LRU_INNER = MapDef("lru_inner", MapType.LRU_HASH, FLOW_KEY, REAL_POS_LRU, "per-cpu connection table")
_GLRU_INNER = MapDef("glru_inner", MapType.LRU_PERCPU_HASH, FLOW_KEY, U32, "per-cpu global LRU")
_DOWN_INNER = MapDef("down_reals", MapType.HASH, U32, U8, "real index -> 1: reals of a VIP marked down")


def _maps(*defs: MapDef) -> dict[str, MapDef]:
    return {m.name: m for m in defs}


BALANCER_MAPS = _maps(
    MapDef("vip_map", MapType.HASH, VIP_DEFINITION, VIP_META, "the VIPs we balance"),
    MapDef("fallback_cache", MapType.LRU_HASH, FLOW_KEY, REAL_POS_LRU, "connection table of cpus without one"),
    MapDef("lru_mapping", MapType.ARRAY_OF_MAPS, U32, U32, "cpu -> its connection table", _LRU_INNER),
    MapDef("ch_rings", MapType.ARRAY, U32, U32, "vip_num * ring_size + slot -> real index"),
    MapDef("reals", MapType.ARRAY, U32, REAL_DEFINITION, "real index -> address"),
    MapDef("reals_stats", MapType.PERCPU_ARRAY, U32, LB_STATS, "real index -> packets/bytes"),
    MapDef("lru_miss_stats", MapType.PERCPU_ARRAY, U32, U32, "real index -> LRU misses (vip_miss_stats VIP)"),
    MapDef("vip_miss_stats", MapType.ARRAY, U32, VIP_DEFINITION, "0 -> the VIP lru_miss_stats tracks"),
    MapDef("stats", MapType.PERCPU_ARRAY, U32, LB_STATS, "vip_num or max_vips + counter -> lb_stats"),
    MapDef("quic_stats_map", MapType.PERCPU_ARRAY, U32, LB_QUIC_PACKETS_STATS, "0 -> QUIC routing counters"),
    MapDef("stable_rt_stats", MapType.PERCPU_ARRAY, U32, LB_STABLE_RT_PACKETS_STATS, "0 -> stable-rt counters"),
    MapDef("tpr_stats_map", MapType.PERCPU_ARRAY, U32, LB_TPR_PACKETS_STATS, "0 -> TPR counters"),
    MapDef("server_id_stats", MapType.PERCPU_ARRAY, U32, LB_STATS, "vip_num -> server-id routing counters"),
    MapDef("decap_vip_stats", MapType.PERCPU_ARRAY, U32, LB_STATS, "vip_num -> packets decapsulated"),
    MapDef("server_id_map", MapType.ARRAY, U32, U32, "server id -> real index (a hash with CID v3)"),
    MapDef("lpm_src_v4", MapType.LPM_TRIE, V4_LPM_KEY, U32, "v4 source prefix -> real index"),
    MapDef("lpm_src_v6", MapType.LPM_TRIE, V6_LPM_KEY, U32, "v6 source prefix -> real index"),
    MapDef("global_lru_maps", MapType.ARRAY_OF_MAPS, U32, U32, "cpu -> its global LRU", _GLRU_INNER),
    MapDef("fallback_glru", MapType.LRU_HASH, FLOW_KEY, U32, "global LRU of cpus without one"),
    MapDef("vip_to_down_reals_map", MapType.HASH_OF_MAPS, VIP_DEFINITION, U32, "VIP -> its down reals",
           _DOWN_INNER),
    MapDef("ctl_array", MapType.ARRAY, U32, CTL_VALUE, "slot -> control value (0: gateway MAC, 1: 1 + number of "
           "VIPs with port 0, 0 = not known; 2: flow cache epoch, 0 = off; 3: 1 = the VIP filter is whole; "
           "8..15: the VIP filter)"),
    MapDef("flow_cache", MapType.ARRAY, U32, FLOW_CACHE_ENTRY,
           "cpu * FLOW_CACHE_SLOTS + flow hash -> a flow just found in the connection table (not in Katran)"),
    MapDef("flow_cache_stale", MapType.PERCPU_ARRAY, U32, FLOW_CACHE_MARKS,
           "per cpu: 0 -> a bit per flow_cache slot whose flow's connection-table entry was written"),
    MapDef("hot_stats", MapType.PERCPU_ARRAY, U32, HOT_STATS,
           "per cpu: 0 -> a pair per global counter (enum order), added to the stats slots: the XDP "
           "verdicts and the IPv4 fast path's LRU / flow-cache hits, one lookup a frame (not in Katran)"),
    MapDef("vip_addrs", MapType.HASH, ADDRESS, U32, "VIP address -> VIPs on it (echo replies)"),
    MapDef("decap_dst", MapType.HASH, ADDRESS, U32, "outer destination -> flags (inline decap)"),
    MapDef("subprograms", MapType.PROG_ARRAY, U32, U32, "0 -> the balancer itself (recirculation)"),
    MapDef("pckt_srcs", MapType.ARRAY, U32, REAL_DEFINITION, "0 = v4, 1 = v6 -> GUE source / host address"),
    MapDef("capture_scratch", MapType.PERCPU_ARRAY, U32, CAPTURE_RECORD, "0 -> per-cpu record being captured"),
    MapDef("capture_stats", MapType.PERCPU_ARRAY, U32, LB_STATS, "0 -> capture records written (v1), lost (v2)"),
    MapDef("capture_ring", MapType.RINGBUF, None, None, "capture records (capture_hdr + frame bytes)"),
)


def _knobs(*defs: Knob) -> dict[str, Knob]:
    return {k.name: k for k in defs}


BALANCER_KNOBS = _knobs(
    Knob("ring_size", U32, 65537, "CH ring size per VIP"),
    Knob("max_vips", U32, 512, "VIP count: stats base of the global counters"),
    Knob("lru_udp_timeout_ns", U64, 30_000_000_000, "idle time after which a UDP LRU entry is ignored"),
    Knob("max_pckt_size", U32, 1514, "longest frame to a VIP"),
    Knob("max_conn_rate", U32, 125000, "new connections per second per cpu that update the LRU"),
    Knob("gue_encap", U32, 0, "1: GUE instead of IPIP"),
    Knob("gue_dport", U16, 6080, "GUE UDP destination port"),
    Knob("tcp_server_id_routing", U32, 0, "1: TPR"),
    Knob("udp_stable_routing", U32, 0, "1: UDP stable routing"),
    Knob("lpm_src_lookup", U32, 0, "1: source-prefix routing"),
    Knob("global_lru", U32, 0, "1: global LRU"),
    Knob("local_delivery", U32, 0, "1: pass LOCAL_VIP packets picked to a LOCAL_REAL"),
    Knob("icmp_toobig_generation", U32, 0, "1: answer oversized frames with ICMP"),
    Knob("inline_decap_ipip", U32, 0, "1: decapsulate IPIP / IP6IP6"),
    Knob("inline_decap_gue", U32, 0, "1: decapsulate GUE"),
    Knob("decap_strict_destination", U32, 0, "1: strict outer destination for inline decap"),
)

VIP_FLAGS = CEnum("vip_flag", {
    "VIP_F_NO_SPORT": 1 << 0, "VIP_F_LRU_BYPASS": 1 << 1, "VIP_F_QUIC": 1 << 2, "VIP_F_DPORT_HASH": 1 << 3,
    "VIP_F_SRC_ROUTING": 1 << 4, "VIP_F_LOCAL": 1 << 5, "VIP_F_GLOBAL_LRU": 1 << 6,
    "VIP_F_HASH_SRC_DST_PORT": 1 << 7, "VIP_F_UDP_STABLE_RT": 1 << 8, "VIP_F_UDP_FLOW_MIGRATION": 1 << 9,
}, {
    VipFlag.NO_SPORT.name: "VIP_F_NO_SPORT", VipFlag.NO_LRU.name: "VIP_F_LRU_BYPASS",
    VipFlag.QUIC_VIP.name: "VIP_F_QUIC", VipFlag.DPORT_HASH.name: "VIP_F_DPORT_HASH",
    VipFlag.SRC_ROUTING.name: "VIP_F_SRC_ROUTING", VipFlag.LOCAL_VIP.name: "VIP_F_LOCAL",
    VipFlag.GLOBAL_LRU.name: "VIP_F_GLOBAL_LRU", VipFlag.HASH_SRC_DST_PORT.name: "VIP_F_HASH_SRC_DST_PORT",
    VipFlag.UDP_STABLE_ROUTING_VIP.name: "VIP_F_UDP_STABLE_RT",
    VipFlag.UDP_FLOW_MIGRATION.name: "VIP_F_UDP_FLOW_MIGRATION",
})
REAL_FLAGS = CEnum("real_flag", {"REAL_F_IPV6": 1 << 0, "REAL_F_LOCAL": 1 << 1}, {
    RealFlag.IPV6.name: "REAL_F_IPV6", RealFlag.LOCAL_REAL.name: "REAL_F_LOCAL",
})
CTL_SLOTS = CEnum("ctl_slot", {"CTL_DEFAULT_MAC": 0, "CTL_ANY_PORT_VIPS": 1, "CTL_FLOW_CACHE_EPOCH": 2,
                               "CTL_VIP_FILTER_DONE": 3, "CTL_VIP_FILTER": 8},
                  {"CTL_MAC_POS": "CTL_DEFAULT_MAC", "CTL_ANY_PORT_VIPS": "CTL_ANY_PORT_VIPS",
                   "CTL_FLOW_CACHE_EPOCH": "CTL_FLOW_CACHE_EPOCH", "CTL_VIP_FILTER_DONE": "CTL_VIP_FILTER_DONE",
                   "CTL_VIP_FILTER": "CTL_VIP_FILTER"})
VIP_FILTER_WORDS = 8  # consts.h VIP_FILTER_WORDS: ctl_array words of the VIP filter from CTL_VIP_FILTER
PCKT_SRC_SLOTS = CEnum("pckt_src_slot", {"PCKT_SRC_V4": 0, "PCKT_SRC_V6": 1},
                       {"PCKT_SRC_V4": "PCKT_SRC_V4", "PCKT_SRC_V6": "PCKT_SRC_V6"})
DECAP_DST_FLAGS = CEnum("decap_dst_flag", {"DECAP_DST_F_EGRESS": 0x2}, {"DECAP_DST_F_EGRESS": "DECAP_DST_F_EGRESS"})
CAPTURE_FLAGS = CEnum("capture_flag", {
    "CAPTURE_F_VIP": 1 << 0, "CAPTURE_F_REAL": 1 << 1, "CAPTURE_F_SRC_V4": 1 << 2, "CAPTURE_F_SRC_V6": 1 << 3,
})
CAPTURE_DIRECTIONS = CEnum("capture_direction", {"CAPTURE_DIR_IN": 0, "CAPTURE_DIR_OUT": 1})


def _structs(*defs: Struct) -> dict[str, Struct]:
    return {s.name: s for s in defs}


def _enums(*defs: CEnum) -> dict[str, CEnum]:
    return {e.name: e for e in defs}


BALANCER = ObjectContract(
    name="balancer",
    object_file="balancer.bpf.o",
    programs=("balancer_ingress",),
    maps=BALANCER_MAPS,
    knobs=BALANCER_KNOBS,
    structs=_structs(FLOW_KEY, CTL_VALUE, VIP_DEFINITION, VIP_META, REAL_POS_LRU, FLOW_CACHE_ENTRY, FLOW_CACHE_MARKS,
                     HOT_STATS,
                     REAL_DEFINITION, LB_STATS,
                     V4_LPM_KEY, V6_LPM_KEY, ADDRESS, LB_QUIC_PACKETS_STATS, LB_TPR_PACKETS_STATS,
                     LB_STABLE_RT_PACKETS_STATS, CAPTURE_FILTER, CAPTURE_HDR, CAPTURE_RECORD),
    enums=_enums(GLOBAL_COUNTERS, VIP_FLAGS, REAL_FLAGS, CTL_SLOTS, PCKT_SRC_SLOTS, DECAP_DST_FLAGS,
                 CAPTURE_FLAGS, CAPTURE_DIRECTIONS),
    globals={"capture_filter": CAPTURE_FILTER},
)

# =======================================================================================
# Healthcheck forwarding (healthchecking.bpf.c: hc_structs.h, hc_maps.h)
# =======================================================================================
HC_REAL_DEFINITION = Struct("hc_real_definition", [
    Field("daddr", ADDR, (("daddr", 4), ("v6daddr", 16))),
    Field("flags", U8),
], "where a probe goes")
HC_STATS = counters("hc_stats", (
    "pckts_processed", "pckts_dropped", "pckts_skipped", "pckts_too_big", "pckts_dst_matched",
    "pckts_src_matched"), "hc_stats_map value")
HC_MAC = Struct("hc_mac", [Field("mac", MAC)], "an ethernet address")
HC_CTRL_SLOTS = CEnum("hc_ctrl_slot", {"HC_CTRL_V4_TUN": 1, "HC_CTRL_V6_TUN": 2, "HC_CTRL_MAIN_INTF": 3})
HC_SRC_SLOTS = CEnum("hc_src_slot", {"HC_SRC_V4": 0, "HC_SRC_V6": 1})
HC_MAC_SLOTS = CEnum("hc_mac_slot", {"HC_MAC_SRC": 0, "HC_MAC_DST": 1})
HC_REAL_FLAGS = CEnum("hc_real_flag", {"HC_REAL_V6": 1 << 0})
HC_ENCAP_MODES = CEnum("hc_encap_mode", {"HC_ENCAP_DIRECT": 0, "HC_ENCAP_TUNNEL": 1},
                       {"direct": "HC_ENCAP_DIRECT", "tunnel": "HC_ENCAP_TUNNEL"})

HEALTHCHECK = ObjectContract(
    name="healthcheck",
    object_file="healthchecking.bpf.o",
    programs=("healthcheck_encap",),
    maps=_maps(
        MapDef("hc_ctrl_map", MapType.ARRAY, U32, U32, "slot -> ifindex (tunnels, main interface)"),
        MapDef("hc_reals_map", MapType.HASH, U32, HC_REAL_DEFINITION, "somark -> real"),
        MapDef("hc_pckt_srcs_map", MapType.ARRAY, U32, HC_REAL_DEFINITION, "0 = v4, 1 = v6 -> outer source"),
        MapDef("hc_pckt_macs", MapType.ARRAY, U32, HC_MAC, "0 = source, 1 = gateway MAC"),
        MapDef("hc_stats_map", MapType.PERCPU_ARRAY, U32, HC_STATS, "0 -> program counters"),
    ),
    knobs=_knobs(
        Knob("hc_encap_mode", U32, 0, "hc_encap_mode: direct / tunnel"),
        Knob("hc_max_pckt_size", U32, 0, "0: no length check"),
        Knob("hc_gue_dport", U16, 0, "direct mode: GUE when != 0"),
    ),
    structs=_structs(HC_REAL_DEFINITION, HC_STATS, HC_MAC),
    enums=_enums(HC_CTRL_SLOTS, HC_SRC_SLOTS, HC_MAC_SLOTS, HC_REAL_FLAGS, HC_ENCAP_MODES),
)

# =======================================================================================
# Decap on the reals (decap.bpf.c: decap_structs.h, decap_maps.h)
# =======================================================================================
DECAP_STATS = counters("decap_stats", ("decap_v4", "decap_v6", "total", "tpr_misrouted", "tpr_total", "passed"),
                       "decap_counters value")
DECAP_HOST_ADDR = Struct("decap_host_addr", [Field("addr", ADDR, (("v4", 4), ("v6", 16)))],
                         "a host address for strict-destination mode")
DECAP_HOST_SLOTS = CEnum("decap_host_slot", {"DECAP_HOST_V4": 0, "DECAP_HOST_V6": 1})

DECAP = ObjectContract(
    name="decap",
    object_file="decap.bpf.o",
    programs=("xdp_decap",),
    maps=_maps(
        MapDef("decap_counters", MapType.PERCPU_ARRAY, U32, DECAP_STATS, "0 -> counters"),
        MapDef("tpr_server_id", MapType.ARRAY, U32, U32, "0 -> this host's TPR server id"),
        MapDef("decap_host_addrs", MapType.ARRAY, U32, DECAP_HOST_ADDR, "0 = v4, 1 = v6 -> host address"),
    ),
    knobs=_knobs(
        Knob("decap_gue_dport", U16, 0, "GUE decap on this UDP port; 0 = off"),
        Knob("decap_strict_dst", U32, 0, "1: only decap packets to decap_host_addrs"),
    ),
    structs=_structs(DECAP_STATS, DECAP_HOST_ADDR),
    enums=_enums(DECAP_HOST_SLOTS),
)

# =======================================================================================
# Shared-mode root (xdp_root.bpf.c: root_maps.h)
# =======================================================================================
ROOT = ObjectContract(
    name="root",
    object_file="xdp_root.bpf.o",
    programs=("xdp_root",),
    maps=_maps(MapDef("root_array", MapType.PROG_ARRAY, U32, U32, "slot -> XDP program, tried in order")),
    knobs=_knobs(Knob("root_slots", U32, 3, "slots to try (root_array's max_entries)"),
                 # the version marker (docs/shared-mode.md): read back by katran.shared, never set
                 Knob("root_magic", U32, 0x4B524F4F, "'KROO': this is katran's root program"),
                 Knob("root_version", U32, 1, "slot protocol version (katran.shared.ROOT_VERSION)")),
    structs={},
    enums=_enums(CEnum("root_limit", {"ROOT_MAX_SLOTS": 32})),
)

OBJECTS: dict[str, ObjectContract] = {c.name: c for c in (BALANCER, HEALTHCHECK, DECAP, ROOT)}
