"""The flow table: the balancer's connection tables (LRUs), listed, searched and purged.

As Katran's ``listLru`` / ``searchLru`` / ``deleteLru`` / ``purgeVipLru``: every
table is read, the per-CPU LRUs (inner maps of ``lru_mapping``, named ``cpuN``)
and the fallback LRU (``fallback``). A table is read with one batch lookup and
filtered with numpy; entries carry the VIP, the client, the real and the last
access time (``atime``, kept for UDP entries only, as in Katran).

``route_flow`` answers "which real does this flow go to" without side effects:
it repeats the data plane's decision (VIP lookup, connection table, UDP flow
migration, source routing, Maglev ring slot with the program's own jhash) from
the control plane's state and read-only map lookups, so nothing is counted and
no LRU entry is made. ``KatranLb`` hands these functions a ``FlowTableView``
under its lock.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Callable, Optional, Union

import attrs
import numpy as np

from . import maglev, structs
from .errors import NotFoundError, ValidationError
from .models import Flow, IPAddress, VipFlag, VipKey, parse_address

FALLBACK = "fallback"
# flow_key / real_pos_lru as numpy records (structs.h; ports in network order)
KEY_DTYPE = np.dtype([("src_hi", ">u8"), ("src_lo", ">u8"), ("dst_hi", ">u8"), ("dst_lo", ">u8"),
                      ("sport", ">u2"), ("dport", ">u2"), ("proto", "u1"), ("pad", "V3")])
VALUE_DTYPE = np.dtype([("pos", "<u4"), ("pad", "V4"), ("atime", "<u8")])
assert KEY_DTYPE.itemsize == structs.size_of("flow_key")
assert VALUE_DTYPE.itemsize == structs.size_of("real_pos_lru")
_U64 = (1 << 64) - 1
Prefix = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


# ------------------------------------------------------------------ values
@attrs.frozen
class LruEntry:
    """One connection-table entry.

    ``vip`` is the VIP the entry belongs to (None: no such VIP any more), ``real``
    the address the real index had in the ``reals`` map (None: index unused).
    ``atime`` is the kernel monotonic time (ns) of the last packet; 0 for TCP
    entries (the data plane keeps it for UDP only); ``age_s`` is its age.
    """

    source: str  # "cpu0", "cpu1", ... or "fallback"
    vip: Optional[VipKey]
    src: IPAddress
    src_port: int
    dst: IPAddress
    dst_port: int
    proto: int
    real: Optional[IPAddress]
    real_index: int
    atime: int
    age_s: Optional[float]


@attrs.frozen
class LruListing:
    """Entries matching a filter: ``entries`` (at most the limit), the count of
    matches per table (``per_source``) and summed (``total``), before the limit."""

    entries: list
    per_source: dict
    total: int

    @property
    def truncated(self) -> bool:
        return len(self.entries) < self.total


@attrs.frozen
class FlowRoute:
    """Where a flow goes, computed without touching the data plane.

    ``source``: "lru" (an existing connection-table entry, in table ``lru_source``),
    "src_routing" (a source-routing rule), "ring" (the VIP's Maglev ring, slot
    ``ring_slot``), "none" (the ring slot is empty: the packet is dropped) or
    "martian" (a source no client can have: the packet is dropped as malformed).
    """

    vip: VipKey
    real: Optional[IPAddress]
    real_index: int
    source: str
    lru_source: Optional[str] = None
    ring_slot: Optional[int] = None


@attrs.frozen
class VipView:
    num: int
    flags: int
    ring: Optional[np.ndarray]


@attrs.define
class FlowTableView:
    """What the flow-table functions need from a KatranLb (built under its lock)."""

    tables: list  # (source name, adapter Map) — per-CPU LRUs, then the fallback LRU
    reals_map: object  # the `reals` array map (real index -> real_definition)
    vips: dict  # VipKey -> VipView
    num_to_real: dict  # real index -> address (reals in use)
    lpm_rules: dict  # source prefix -> real index (source routing)
    down_reals: dict  # VipKey -> set of real indices marked down
    ring_size: int
    max_vips: int
    max_reals: int
    lru_udp_timeout_ns: int
    lpm_src_lookup: bool
    owned: list = attrs.field(factory=list)  # maps opened for this view (closed by close())

    def close(self) -> None:
        for m in self.owned:
            m.close()
        self.owned.clear()

    def __enter__(self) -> "FlowTableView":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ helpers
def _ktime_ns() -> int:
    """The clock of bpf_ktime_get_ns() (CLOCK_MONOTONIC)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def parse_prefix(value: object, field: str = "src") -> Prefix:
    """A client address or prefix (an address is its /32 or /128)."""
    from .models import parse_prefix as parse_network

    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ipaddress.ip_network(parse_address(value, field))
    return parse_network(value, field)


def _words(addr: IPAddress) -> tuple[int, int]:
    """(hi, lo) 64-bit words of the 16-byte address union (v4 in the first 4 bytes)."""
    raw = int.from_bytes(structs.addr16(addr), "big")
    return raw >> 64, raw & _U64


def _addr_of(hi: int, lo: int, v6: bool) -> IPAddress:
    if v6:
        return ipaddress.IPv6Address((hi << 64) | lo)
    return ipaddress.IPv4Address(hi >> 32)


def _read(bpf_map) -> tuple[np.ndarray, np.ndarray]:
    batch = getattr(bpf_map, "lookup_batch_raw", None)
    raw = batch(chunk=4096) if batch is not None else None
    if raw is None:  # no batch op (old kernels; a test kernel): one lookup per element
        items = list(bpf_map.items())
        kb, vb, n = b"".join(k for k, _ in items), b"".join(v for _, v in items), len(items)
    else:
        kb, vb, n = raw
    return np.frombuffer(kb, dtype=KEY_DTYPE, count=n), np.frombuffer(vb, dtype=VALUE_DTYPE, count=n)


def _vip_mask(keys: np.ndarray, vip: VipKey) -> np.ndarray:
    hi, lo = _words(vip.address)
    return ((keys["dst_hi"] == hi) & (keys["dst_lo"] == lo) & (keys["dport"] == vip.port)
            & (keys["proto"] == vip.proto))


def _prefix_mask(keys: np.ndarray, net: Prefix) -> np.ndarray:
    hi, lo = _words(net.network_address)
    bits = net.prefixlen
    if net.version == 4:
        # v4 sources fill the first 4 bytes only
        mask_hi = ((1 << bits) - 1) << (64 - bits) if bits else 0
        return ((keys["src_hi"] & np.uint64(0xFFFFFFFF)) == 0) & (keys["src_lo"] == 0) & \
            ((keys["src_hi"] & np.uint64(mask_hi)) == np.uint64(hi & mask_hi))
    mask = ((1 << bits) - 1) << (128 - bits) if bits else 0
    mask_hi, mask_lo = mask >> 64, mask & _U64
    return (((keys["src_hi"] & np.uint64(mask_hi)) == np.uint64(hi & mask_hi))
            & ((keys["src_lo"] & np.uint64(mask_lo)) == np.uint64(lo & mask_lo)))


def _resolver(view: FlowTableView):
    """(dst_hi, dst_lo, dport, proto) of a key -> the VIP it belongs to (as the data plane looks it up)."""
    exact = {}
    for vip in view.vips:
        hi, lo = _words(vip.address)
        exact[(hi, lo, vip.port, vip.proto)] = vip
    cache: dict = {}

    def resolve(hi: int, lo: int, dport: int, proto: int) -> Optional[VipKey]:
        k = (hi, lo, dport, proto)
        if k not in cache:
            cache[k] = exact.get(k) or exact.get((hi, lo, 0, proto))
        return cache[k]

    return resolve


def _real_at(view: FlowTableView, num: int) -> Optional[IPAddress]:
    """The address the data plane would send to for real index ``num`` (None: unused index)."""
    addr = view.num_to_real.get(num)
    if addr is not None or not 0 < num < view.max_reals:
        return addr
    raw = view.reals_map.lookup(structs.u32(num))
    if raw is None or not any(raw[:16]):
        return None
    return structs.real_definition_unpack(raw)[0]


def _entries(view: FlowTableView, source: str, keys: np.ndarray, values: np.ndarray, idx: np.ndarray,
             resolve, now: int, v6_hint: Optional[bool]) -> list:
    out = []
    for i in idx.tolist():
        k, v = keys[i], values[i]
        dst_hi, dst_lo, dport, proto = int(k["dst_hi"]), int(k["dst_lo"]), int(k["dport"]), int(k["proto"])
        vip = resolve(dst_hi, dst_lo, dport, proto)
        src_hi, src_lo = int(k["src_hi"]), int(k["src_lo"])
        if vip is not None:
            v6 = vip.is_v6
        elif v6_hint is not None:
            v6 = v6_hint
        else:  # no VIP to tell: v4 keys leave 12 bytes of each address zero
            v6 = bool((src_hi & 0xFFFFFFFF) or src_lo or (dst_hi & 0xFFFFFFFF) or dst_lo)
        pos, atime = int(v["pos"]), int(v["atime"])
        out.append(LruEntry(
            source=source, vip=vip, src=_addr_of(src_hi, src_lo, v6), src_port=int(k["sport"]),
            dst=_addr_of(dst_hi, dst_lo, v6), dst_port=dport, proto=proto, real=_real_at(view, pos),
            real_index=pos, atime=atime, age_s=(now - atime) / 1e9 if atime else None,
        ))
    return out


def _filter(view: FlowTableView, keys: np.ndarray, values: np.ndarray, vip: Optional[VipKey],
            real_index: Optional[int], src: Optional[Prefix]) -> np.ndarray:
    mask = np.ones(len(keys), dtype=bool)
    if vip is not None:
        mask &= _vip_mask(keys, vip)
    if real_index is not None:
        mask &= values["pos"] == real_index
    if src is not None:
        mask &= _prefix_mask(keys, src)
    return np.flatnonzero(mask)


def _real_index(view: FlowTableView, real: object) -> Optional[int]:
    if real is None:
        return None
    addr = parse_address(real, "real")
    for num, a in view.num_to_real.items():
        if a == addr:
            return num
    raise NotFoundError("real", addr)


def _check_vip(view: FlowTableView, vip: object, *, required: bool = False) -> Optional[VipKey]:
    """The VipKey filter: a configured VIP (NotFoundError otherwise), or None if allowed."""
    if vip is None and not required:
        return None
    if not isinstance(vip, VipKey):
        raise ValidationError("vip", vip, "expected a katran.VipKey")
    if vip not in view.vips:
        raise NotFoundError("vip", vip)
    return vip


# ------------------------------------------------------------------ list / search / delete / purge
def list_lru(view: FlowTableView, vip: Optional[VipKey] = None, *, real: object = None, src: object = None,
             limit: Optional[int] = 1000) -> LruListing:
    """Entries of every table matching all the filters given (VIP, real address, client prefix)."""
    vip = _check_vip(view, vip)
    real_index = _real_index(view, real)
    net = parse_prefix(src) if src is not None else None
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValidationError("limit", limit, "expected a non-negative integer or None (no limit)")
    resolve, now = _resolver(view), _ktime_ns()
    hint = vip.is_v6 if vip is not None else (net.version == 6 if net is not None else None)
    entries, per_source, total = [], {}, 0
    for source, bpf_map in view.tables:
        keys, values = _read(bpf_map)
        idx = _filter(view, keys, values, vip, real_index, net)
        per_source[source] = len(idx)
        total += len(idx)
        room = len(idx) if limit is None else max(0, limit - len(entries))
        entries += _entries(view, source, keys, values, idx[:room], resolve, now, hint)
    return LruListing(entries, per_source, total)


def flow_key_for(view: FlowTableView, vip: VipKey, src: IPAddress, src_port: int) -> bytes:
    """The key Katran's searchLru / deleteLru use: the VIP's address and port, the client."""
    return structs.flow_key(src, vip.address, src_port, vip.port, vip.proto)


def _client(vip: VipKey, src: object, src_port: object) -> tuple[IPAddress, int]:
    from .models import check_int

    addr = parse_address(src, "src")
    if addr.version != vip.address.version:
        raise ValidationError("src", str(addr), f"the VIP {vip} is IPv{vip.address.version}")
    return addr, check_int(src_port, "src_port", 0, 65535)


def search_lru(view: FlowTableView, vip: VipKey, src: object, src_port: object) -> list:
    """The entry of one flow (vip, client address, client port) in every table that has it."""
    vip = _check_vip(view, vip, required=True)
    addr, port = _client(vip, src, src_port)
    key = flow_key_for(view, vip, addr, port)
    resolve, now, out = _resolver(view), _ktime_ns(), []
    for source, bpf_map in view.tables:
        raw = bpf_map.lookup(key)
        if raw is None:
            continue
        keys = np.frombuffer(key, dtype=KEY_DTYPE)
        values = np.frombuffer(raw, dtype=VALUE_DTYPE)
        out += _entries(view, source, keys, values, np.array([0]), resolve, now, vip.is_v6)
    return out


def delete_lru(view: FlowTableView, vip: VipKey, src: object, src_port: object,
               after: Optional[Callable[[], None]] = None) -> list:
    """Delete one flow from every table; the names of the tables it was in. ``after`` is
    called once an entry was deleted; its error, too, writes the entries back."""
    vip = _check_vip(view, vip, required=True)
    addr, port = _client(vip, src, src_port)
    key = flow_key_for(view, vip, addr, port)
    removed: list = []  # (map, key, value) to put back if a later delete fails
    with _undo_on_error(removed):
        sources = []
        for source, bpf_map in view.tables:
            value = bpf_map.lookup(key)
            if value is not None and bpf_map.delete(key):
                removed.append((bpf_map, key, value))
                sources.append(source)
        if removed and after is not None:
            after()
    return sources


class _undo_on_error:  # noqa: N801 - a context manager used like a function
    """On an exception, write back the entries already deleted (all or nothing), then re-raise."""

    def __init__(self, removed: list) -> None:
        self.removed = removed

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            return
        for bpf_map, key, value in reversed(self.removed):
            try:
                bpf_map.update(key, value)
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass


def purge_lru(view: FlowTableView, vip: Optional[VipKey] = None, *, real: object = None,
              src: object = None, after: Optional[Callable[[], None]] = None) -> dict:
    """Delete every entry matching all the filters given; deleted entries per table.

    ``purge_lru(view, vip)`` is Katran's purgeVipLru, with ``real`` its purgeVipLruForReal.
    At least one filter is needed (an empty filter would flush every connection). A kernel
    error part way writes the deleted entries back before it is raised; so does an error of
    ``after``, called once an entry was deleted.
    """
    vip = _check_vip(view, vip)
    if vip is None and real is None and src is None:
        raise ValidationError("filter", None, "give a vip, a real or a src prefix (refusing to flush everything)")
    real_index = _real_index(view, real)
    net = parse_prefix(src) if src is not None else None
    deleted = {}
    removed: list = []
    ks, vs = KEY_DTYPE.itemsize, VALUE_DTYPE.itemsize
    with _undo_on_error(removed):
        for source, bpf_map in view.tables:
            keys, values = _read(bpf_map)
            idx = _filter(view, keys, values, vip, real_index, net)
            kraw, vraw = keys[idx].tobytes(), values[idx].tobytes()
            count = 0
            for i in range(len(idx)):
                key = kraw[i * ks:(i + 1) * ks]
                if bpf_map.delete(key):  # an entry evicted meanwhile is not an error
                    removed.append((bpf_map, key, vraw[i * vs:(i + 1) * vs]))
                    count += 1
            deleted[source] = count
        if removed and after is not None:
            after()
    return deleted


# ------------------------------------------------------------------ side-effect-free routing
def flow_hash(src: IPAddress, src_port: int, dst_port: int, ring_size: int, max_vips: int) -> int:
    """The balancer's flow hash (lb_route.h flow_hash) of a connection-table key."""
    seed = (ring_size * max_vips) & 0xFFFFFFFF
    ports = int.from_bytes(src_port.to_bytes(2, "big") + dst_port.to_bytes(2, "big"), "little")
    if src.version == 6:
        first = maglev.jhash(src.packed, max_vips & 0xFFFFFFFF)
    else:
        first = int.from_bytes(src.packed, "little")
    return maglev.jhash_2words(first, ports, seed)


def _src_is_martian(src: IPAddress) -> bool:
    """A source no client can have, as the balancer drops it (parsing.h src_is_martian):
    0.0.0.0/8, 127.0.0.0/8, 224.0.0.0/4, 255.255.255.255; ::, ::1, ff00::/8."""
    raw = src.packed
    if src.version == 6:
        return raw[0] == 0xFF or int.from_bytes(raw, "big") <= 1
    return raw[0] in (0, 127) or raw[0] & 0xF0 == 0xE0 or raw == b"\xff\xff\xff\xff"


def _lpm_match(rules: dict, src: IPAddress) -> Optional[int]:
    best, best_len = None, -1
    for net, num in rules.items():
        if net.version == src.version and src in net and net.prefixlen > best_len:
            best, best_len = num, net.prefixlen
    return best


def route_flow(view: FlowTableView, flow: Flow, *, cpu: Optional[int] = None) -> FlowRoute:
    """Where ``flow`` (a non-SYN TCP packet or a UDP packet of it) goes, without side effects.

    The connection table consulted is CPU ``cpu``'s (the fallback LRU if that CPU has
    none); with ``cpu=None`` every table is searched, per-CPU ones first. Not modelled:
    server-id routing (QUIC CIDs, TCP option, UDP stable routing: they need the
    packet's payload), the global LRU, and the new-connection rate limit.
    """
    if not isinstance(flow, Flow):
        raise ValidationError("flow", flow, "expected a katran.Flow")
    if flow.src.version != flow.dst.version:
        raise ValidationError("flow.src", str(flow.src), "src and dst must be the same IP version")
    # the VIP, as balance_flow looks it up: exact port, then the any-port VIP
    vip = VipKey(flow.dst, flow.dst_port, flow.proto)
    state = view.vips.get(vip)
    src, sport, dport = flow.src, flow.src_port, flow.dst_port
    if state is None:
        vip = VipKey(flow.dst, 0, flow.proto)
        state = view.vips.get(vip)
        if state is None:
            raise NotFoundError("vip", f"for flow to {VipKey(flow.dst, flow.dst_port, flow.proto)}")
        if not state.flags & (VipFlag.DPORT_HASH | VipFlag.HASH_SRC_DST_PORT):
            dport = 0
    if _src_is_martian(src):
        return FlowRoute(vip, None, 0, "martian")  # the data plane drops it (and counts it malformed)
    if state.flags & VipFlag.NO_SPORT:
        sport = 0

    # connection table (a TCP SYN would skip it; the flow's packet is not one)
    if not state.flags & VipFlag.NO_LRU:
        key = structs.flow_key(src, flow.dst, sport, dport, flow.proto)
        tables = view.tables
        if cpu is not None:
            own = [t for t in tables if t[0] == f"cpu{cpu}"]
            tables = own or [t for t in tables if t[0] == FALLBACK]
        for source, bpf_map in tables:
            raw = bpf_map.lookup(key)
            if raw is None:
                continue
            pos, atime = structs.real_pos_lru_unpack(raw)
            if flow.proto == socket.IPPROTO_UDP and _ktime_ns() - atime > view.lru_udp_timeout_ns:
                continue  # an idle UDP entry is ignored (and would be replaced)
            down = (flow.proto == socket.IPPROTO_UDP and state.flags & VipFlag.UDP_FLOW_MIGRATION
                    and pos in view.down_reals.get(vip, ()))
            if down:
                break  # its real is down: the flow is hashed again
            return FlowRoute(vip, _real_at(view, pos), pos, "lru", lru_source=source)

    if view.lpm_src_lookup and state.flags & VipFlag.SRC_ROUTING:
        num = _lpm_match(view.lpm_rules, src)
        if num is not None:
            return FlowRoute(vip, _real_at(view, num), num, "src_routing")
    if state.flags & VipFlag.DPORT_HASH:
        sport = dport
        src = ipaddress.IPv6Address(0) if src.version == 6 else ipaddress.IPv4Address(0)
    slot = flow_hash(src, sport, dport, view.ring_size, view.max_vips) % view.ring_size
    num = int(state.ring[slot]) if state.ring is not None else 0
    if num == 0:
        return FlowRoute(vip, None, 0, "none", ring_slot=slot)
    return FlowRoute(vip, _real_at(view, num), num, "ring", ring_slot=slot)
