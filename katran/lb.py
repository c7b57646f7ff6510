"""KatranLb: the public API -- validation, locking, and all-or-nothing changes.

Layers (see docs/internals.md): the kernel facade (``katran.kernel``, injected), the
data plane (``katran.dataplane``: objects, maps, attach, counters), the registry
(``katran.registry``: real indices, refcounts, VIP numbers, transactions) and this
module.  Every mutation is: validate (raise before anything changes) -> stage in a
``Transaction`` -> kernel writes, each with its undo -> commit; a ``KernelError``
undoes every step, Python state and maps alike, and is re-raised.  Every public method
is serialised by one lock, so frontends may call it from a thread pool.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from typing import Callable, Optional, Sequence, TypeVar

import attrs
import numpy as np

from . import maglev, packets, state, structs
from .capture import DEFAULT_SNAPLEN, Capture, CaptureBusyError, CaptureFilter, check_count, check_snaplen, check_src
from .config import MAX_SERVER_IDS, KatranConfig
from .dataplane import XDP_VERDICTS, DataPlane, packaged_object  # noqa: F401  (packaged_object: benchmarks)
from .errors import (
    AlreadyExistsError,
    CapacityError,
    FeatureNotEnabledError,
    KatranError,
    NotFoundError,
    ValidationError,
)
from .kernel import Kernel, resolve
from .models import (
    Flow,
    HashFunction,
    IPAddress,
    LbStats,
    ModifyAction,
    PacketResult,
    QuicReal,
    Real,
    RealFlag,
    VipFlag,
    VipKey,
    check_int,
    format_address,
    format_mac,
    format_prefix,
    parse_address,
    parse_mac,
    parse_prefix,
)
from .registry import RealEntry, RealRegistry, SlotAllocator, Transaction, pop_item, set_item

log = logging.getLogger("katran.lb")

# VIP flags that need a load-time feature knob of the balancer (KatranConfig field)
FLAG_FEATURES = {
    VipFlag.SRC_ROUTING: "lpm_src_lookup",
    VipFlag.LOCAL_VIP: "local_delivery",
    VipFlag.GLOBAL_LRU: "global_lru",
    VipFlag.UDP_STABLE_ROUTING_VIP: "udp_stable_routing",
}
MAX_QUIC_REAL_ID_V3 = 2**32 - 1
_ENDPOINT_CACHE_SIZE = 1 << 16

T = TypeVar("T")


def _locked(method: Callable[..., T]) -> Callable[..., T]:
    """A write (or a read of state that has no committed view): one at a time.

    When the outermost locked call ends (committed or rolled back), the read
    views of the VIPs it touched are published (``_publish_views``).
    """

    @functools.wraps(method)
    def wrapper(self: "KatranLb", *args, **kwargs):
        with self._lock:
            self._depth += 1
            try:
                return method(self, *args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._publish_views()
                    if self._state_due:
                        self._persist()  # the outermost call: one state file write per change

    return wrapper


def _read(method: Callable[..., T]) -> Callable[..., T]:
    """A read that never waits behind a write (a ring rebuild): it reads the
    committed views and the kernel's maps; only start/close exclude it."""

    @functools.wraps(method)
    def wrapper(self: "KatranLb", *args, **kwargs):
        with self._life_lock:
            return method(self, *args, **kwargs)

    return wrapper


def _vip_key(vip: object) -> VipKey:
    if isinstance(vip, VipKey):
        return vip
    raise ValidationError("vip", vip, "expected a katran.VipKey")


def _vip_def(vip: VipKey) -> bytes:
    return structs.vip_definition(vip.address, vip.port, vip.proto)


@attrs.define
class _VipState:
    num: int
    flags: int
    hash_function: HashFunction
    reals: dict = attrs.field(factory=dict)  # real num -> weight, in insertion order
    ring: Optional[np.ndarray] = None


@attrs.frozen
class _VipView:
    """The committed, immutable read view of one VIP (swapped in after each write)."""

    state: _VipState = attrs.field(eq=False)  # the state it was taken from (identity)
    num: int
    flags: int
    hash_function: HashFunction
    reals: tuple  # (address, weight, flags) in insertion order


@attrs.define(eq=False)
class _RealsChange:
    """One queued modify_reals_for_vip call (see KatranLb.modify_reals_for_vip)."""

    action: object
    reals: object
    vip: object
    done: bool = False
    error: Optional[BaseException] = None


def _set_attr(obj: object, name: str, value: object, tx: Transaction) -> None:
    old = getattr(obj, name)
    setattr(obj, name, value)
    tx.on_rollback(lambda: setattr(obj, name, old))


class KatranLb:
    """The load balancer: configure VIPs and reals, read stats.

    ``start()`` opens, sizes, loads and provisions the BPF programs and, unless
    ``config.testing``, attaches the balancer (standalone) or registers it in
    the root program's prog_array (shared mode).  ``close()`` undoes that.
    ``kernel`` defaults to the running kernel; tests pass ``katran.testing.FakeKernel``.
    """

    def __init__(self, config: KatranConfig, kernel: Optional[Kernel] = None) -> None:
        if not isinstance(config, KatranConfig):
            raise ValidationError("config", config, "expected a katran.KatranConfig")
        self._config = config
        self._kernel = resolve(kernel)
        self._lock = threading.RLock()
        self._depth = 0  # nesting of _locked calls (the outermost publishes the views)
        self._life_lock = threading.Lock()  # start/close vs lock-free reads
        self._pending_lock = threading.Lock()
        self._pending: list[_RealsChange] = []  # modify_reals_for_vip calls waiting for the write lock
        self._views: dict[VipKey, _VipView] = {}  # committed read views, replaced whole
        self._dirty: set[int] = set()  # id() of the _VipStates changed since the last publish
        self._dp = DataPlane(config, self._kernel)
        self._mac = config.default_mac or bytes(6)
        self._vip_filter_words: Optional[list[int]] = None  # what ctl_array holds (None: not read yet)
        self._vips: dict[VipKey, _VipState] = {}
        self._vip_nums = SlotAllocator(config.max_vips)
        # index 0 is reserved as "no real": a zeroed ring slot drops the packet
        self._reals = RealRegistry(config.max_reals)
        # (real num, weight) -> (address, maglev.Endpoint): a rebuild builds no new objects
        self._endpoint_cache: dict[tuple, tuple] = {}
        self._quic_reals: dict[int, int] = {}  # server id -> real num
        self._lpm_rules: dict = {}  # source prefix (ip_network) -> real num
        self._decap_dsts: list = []  # inline decap destinations
        self._down_reals: dict[VipKey, set] = {}  # vip -> real nums marked down
        self._bpf_failed_calls = 0
        self._addr_validation_failed = 0
        self._state_due = False  # a change committed since the state file was written (persist)
        self.adopted = False  # start() adopted a running data plane
        self._capture: Optional[Capture] = None  # the running packet capture (one filter)
        self._config_generation = 0  # successful mutations (metrics)
        self._state_version = 0  # every mutating call, failed ones too (metrics caches)
        self._generation_lock = threading.Lock()  # the two counters above
        self._mutating = threading.local()  # .depth: nesting of mutating calls in this thread

    # ------------------------------------------------------------------ life cycle
    @property
    def config(self) -> KatranConfig:
        return self._config

    @property
    def kernel(self) -> Kernel:
        return self._kernel

    @property
    def started(self) -> bool:
        return self._dp.started

    @property
    def _obj(self):
        """The loaded balancer object (None before start)."""
        return self._dp.obj

    @property
    def _abi(self):
        """What the balancer object has, checked against its contract (None before start)."""
        return self._dp.abi

    @property
    def config_generation(self) -> int:
        """Successful configuration changes since construction (one per public mutating call)."""
        return self._config_generation

    @property
    def data_plane_attached(self) -> bool:
        """True while the balancer is attached to its interface or registered in a root program."""
        return self._dp.attached

    def __enter__(self) -> "KatranLb":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @_locked
    def start(self) -> None:
        """Load, provision and attach -- or, with ``config.persist`` and our program found
        running on the interface, adopt it: its maps (LRU included) are left untouched and
        the VIPs, reals and routes are rebuilt from the state file, checked against the maps."""
        if self._dp.started:
            return
        maglev.env_level()  # a bad $KATRAN_MAGLEV_SIMD fails before anything is loaded
        with self._life_lock:
            saved = self._dp.start(self._mac)
            # once per process, after a start that worked (a failed one says one thing) and
            # before the first ring: the C core's fastest level on this CPU
            try:
                maglev.tune_native()
            except MemoryError:
                log.warning("maglev: no memory to time the C core's levels: the highest is used")
            if saved is not None:
                try:
                    self._restore(saved)
                except BaseException:
                    self._dp.close(keep=True)  # never detach what this run did not attach
                    raise
                self.adopted = True
        # a fresh data plane, or one of a build that did not keep it: the port-0 VIP count
        # (until written, the data plane makes the port-0 lookup, as Katran: safe to go on)
        try:
            self._write_any_port_vips(None)
        except KatranError as exc:
            log.warning("could not write the port-0 VIP count (ctl_array[%d]): every packet that is no "
                        "VIP is looked up again with port 0: %s", structs.CTL_ANY_PORT_VIPS, exc)
        self._vip_filter_words = None  # this data plane's words: read them
        try:
            self._write_vip_filter(None)
        except KatranError as exc:
            log.warning("could not write the VIP filter (ctl_array[%d..]): packets to VIPs take the VIP "
                        "lookup path: %s", structs.CTL_VIP_FILTER, exc)
        try:
            self._bump_flow_cache()
        except KatranError as exc:
            # a slot older than this start routes for at most 64 jiffies before its flow is
            # looked up in the LRU again; the next delete_lru / purge_vip_lru writes the epoch
            log.warning("could not write the flow-cache epoch (ctl_array[%d]) at start: %s",
                        structs.CTL_FLOW_CACHE_EPOCH, exc)
        if self.adopted:
            log.info("adopted the data plane on %s (program id %d): %d vips, %d reals",
                     self._dp.attach_point, self._dp.program().id, len(self._vips), len(self._reals))
            want = self._config.default_mac
            if want is not None and want != self._mac:
                self.change_mac(want)
        self._state_due = True

    @_locked
    def close(self, keep: bool = False) -> None:
        """Release every fd; safe to call twice.

        ``keep=False`` (teardown): detach / unregister first and, when persisting, remove
        the pins and the state file.  ``keep=True`` (a restart-friendly stop): write the
        state file and leave the data plane attached and pinned -- forwarding continues
        and the next start adopts it.
        """
        if self._capture is not None:
            self._capture.close()
        if keep and self._dp.started:
            self._persist()
        self._state_due = False
        with self._life_lock:
            self._dp.close(keep=keep)
        self.adopted = False

    @contextlib.contextmanager
    def batch(self):
        """Many changes, one state file write at the end (``declarative.apply`` of a big file)."""
        with self._lock:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._publish_views()
                    if self._state_due:
                        self._persist()

    # ------------------------------------------------------------------ persistence
    @property
    def persisting(self) -> bool:
        """True when the state file is kept (``config.persist``, started attached: standalone or shared)."""
        return self._dp.started and self._dp.persisting

    @property
    def state_path(self):
        return self._dp.state_path

    def _mark_state_due(self) -> None:
        self._state_due = True

    def _persist(self) -> None:
        """Write the state file (atomically); a failure is logged and retried on the next change."""
        if not self.persisting:
            self._state_due = False
            return
        try:
            state.write_atomic(self._dp.state_path, self._state_dict())
            self._state_due = False
        except Exception as exc:  # the change itself is committed: do not report it as failed
            log.error("could not write the state file %s (retried on the next change): %s",
                      self._dp.state_path, exc)

    def state_dict(self) -> dict:
        """What the maps cannot give back, as written to the state file (``katran.state``)."""
        with self._lock:
            return self._state_dict()

    def _state_dict(self) -> dict:
        hc = self._dp.hc
        return {
            "format": state.FORMAT,
            "version": state.VERSION,
            "interface": self._config.main_interface,
            "prog_id": self._dp.program().id,
            "pins": self._dp.pins(),
            "object": self._dp.object_identity,
            "hc_object": self._dp.hc_object_identity,
            "config": state.sizing(self._config),
            "attach": self._dp.attach_record(),
            "mac": self._mac.hex(),
            "vips": [{"address": format_address(v.address), "port": v.port, "proto": v.proto, "num": st.num,
                      "flags": st.flags, "hash_function": int(st.hash_function),
                      "reals": [[n, w] for n, w in st.reals.items()]} for v, st in self._vips.items()],
            "reals": [[format_address(a), e.num, e.refcount, e.flags] for a, e in self._reals.entries()],
            "quic_reals": [[sid, num] for sid, num in self._quic_reals.items()],
            "src_routes": [[format_prefix(net), num] for net, num in self._lpm_rules.items()],
            "decap_dsts": [format_address(a) for a in self._decap_dsts],
            "down_reals": [[format_address(v.address), v.port, v.proto, sorted(nums)]
                           for v, nums in self._down_reals.items()],
            "hc_dsts": [[m, a] for m, a in hc.get_dsts().items()] if hc is not None else [],
        }

    def _restore(self, saved: dict) -> None:
        """Rebuild the Python state from the state file, then check it against the maps."""
        path = self._dp.state_path
        cfg = self._config
        try:
            mac = bytes.fromhex(saved["mac"])
            reals = RealRegistry.restored(cfg.max_reals, [
                (parse_address(a, "reals.address"), RealEntry(int(num), int(ref), int(flags)))
                for a, num, ref, flags in saved["reals"]])
            vips: dict = {}
            for v in saved["vips"]:
                key = VipKey(v["address"], v["port"], v["proto"])
                st = _VipState(int(v["num"]), int(v["flags"]), HashFunction(v["hash_function"]),
                               {int(n): int(w) for n, w in v["reals"]})
                if not 0 <= st.num < cfg.max_vips or any(n not in reals._by_num for n in st.reals):
                    raise ValueError(f"vip {key}: number {st.num} or a real index out of range")
                vips[key] = st
            quic = {int(sid): int(num) for sid, num in saved["quic_reals"]}
            lpm = {parse_prefix(p, "src_routes"): int(num) for p, num in saved["src_routes"]}
            decap = [parse_address(a, "decap_dsts") for a in saved["decap_dsts"]]
            down = {VipKey(a, port, proto): {int(n) for n in nums} for a, port, proto, nums in saved["down_reals"]}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise state.StateError(f"state file {path}: {str(exc)[:200]}") from None
        self._mac = mac
        self._reals = reals
        self._vips = vips
        self._vip_nums.restore_used(st.num for st in vips.values())
        self._quic_reals = quic
        self._lpm_rules = lpm
        self._decap_dsts = decap
        self._down_reals = down
        for st in vips.values():
            st.ring = self._compute_ring(st)
        self._dirty.update(id(st) for st in vips.values())  # the read views are published after start
        self._verify_against_maps(path)

    def _verify_against_maps(self, path) -> None:
        """StateError naming the first VIP / real whose map entry differs from the state file."""
        def mismatch(what: str) -> state.StateError:
            return state.StateError(f"the maps of the running data plane do not match the state file {path}: "
                                    f"{what}; restart with force_reload (-force_reload) to load a fresh data plane")

        vip_map = self._map("vip_map")
        if sum(1 for _ in vip_map.keys()) != len(self._vips):
            raise mismatch(f"vip_map has {sum(1 for _ in vip_map.keys())} VIPs, the file {len(self._vips)}")
        size = self._config.ch_ring_size
        rings = self._map("ch_rings")
        for vip, st in self._vips.items():
            if vip_map.lookup(_vip_def(vip)) != structs.vip_meta(st.flags, st.num):
                raise mismatch(f"vip {vip} (number {st.num}, flags {st.flags})")
            for pos in (0, size // 2, size - 1):
                got = rings.lookup(structs.u32(st.num * size + pos))
                if got is not None and got != structs.u32(int(st.ring[pos])):
                    raise mismatch(f"vip {vip}: ring slot {pos}")
        reals_map = self._map("reals")
        for addr, entry in self._reals.entries():
            if reals_map.lookup(structs.u32(entry.num)) != self._real_definition(addr, entry.flags):
                raise mismatch(f"real {format_address(addr)} (index {entry.num})")

    # ------------------------------------------------------------------ read views
    def _publish_views(self) -> None:
        """Swap in read views of the VIPs as committed now (under the write lock)."""
        old, dirty = self._views, self._dirty
        if not dirty and old.keys() == self._vips.keys():
            return
        new = {}
        for key, state in self._vips.items():
            view = old.get(key)
            if view is None or view.state is not state or id(state) in dirty:
                view = _VipView(state, state.num, state.flags, state.hash_function, tuple(
                    (self._reals.address(num), weight, self._reals.get(self._reals.address(num)).flags)
                    for num, weight in state.reals.items()))
            new[key] = view
        self._views = new
        self._dirty = set()

    def _view(self, vip: VipKey) -> _VipView:
        view = self._views.get(_vip_key(vip))
        if view is None:
            raise NotFoundError("vip", vip)
        return view

    # ------------------------------------------------------------------ helpers
    def _require_started(self):
        return self._dp.require_started()

    def _map(self, name: str):
        return self._dp.map(name)

    def _tx(self) -> Transaction:
        return Transaction(on_failed_write=self._count_failed_call, on_commit=self._mark_state_due)

    def _count_failed_call(self) -> None:
        self._bpf_failed_calls += 1

    def _parse_address(self, value: object, field: str) -> IPAddress:
        try:
            return parse_address(value, field)
        except ValidationError:
            self._addr_validation_failed += 1
            raise

    def _vip(self, vip: VipKey) -> _VipState:
        state = self._vips.get(_vip_key(vip))
        if state is None:
            raise NotFoundError("vip", vip)
        return state

    def _write_vip(self, vip: VipKey, state: _VipState, tx: Transaction) -> None:
        self._dirty.add(id(state))
        tx.update(self._map("vip_map"), _vip_def(vip), structs.vip_meta(state.flags, state.num))

    # ------------------------------------------------------------------ MAC
    @_locked
    def change_mac(self, mac: object) -> None:
        new = parse_mac(mac, "mac")
        self._require_started()
        with self._tx() as tx:
            tx.update(self._map("ctl_array"), structs.u32(structs.CTL_MAC_POS), structs.ctl_value_mac(new))
            _set_attr(self, "_mac", new, tx)
            hc = self._dp.hc
            if hc is not None:
                old = hc.gateway_mac
                tx.call(lambda: hc.set_gateway_mac(new), lambda: hc.restore_gateway_mac(old))

    @_read
    def get_mac(self) -> str:
        return format_mac(self._mac)

    # ------------------------------------------------------------------ flow cache
    @_locked
    def set_flow_cache(self, enabled: object) -> None:
        """Switch the per-cpu flow cache on or off while running (``config.flow_cache``): the
        data plane reads the switch per packet (ctl_array epoch), nothing is reloaded. On
        again, it starts empty."""
        new = attrs.evolve(self._config, flow_cache=enabled)  # validates: a bool
        self._require_started()
        if not self._dp.has_map("flow_cache"):
            raise FeatureNotEnabledError("flow_cache: the running balancer object has no flow cache")
        old, self._config = self._config, new
        try:
            self._bump_flow_cache()
        except BaseException:
            self._config = old
            raise
        log.info("flow cache %s", "on" if new.flow_cache else "off")

    # ------------------------------------------------------------------ VIPs
    def _check_vip_flags(self, flags: object, field: str = "flags") -> int:
        flags = check_int(flags, field, 0, 2**32 - 1)
        unknown = flags & ~int(sum(VipFlag))
        if unknown:
            raise ValidationError(field, flags, f"unknown VIP flag bits 0x{unknown:x}")
        for flag, knob in FLAG_FEATURES.items():
            if flags & flag and not getattr(self._config, knob):
                raise FeatureNotEnabledError(
                    f"{field}={flags}: VIP flag {flag.name} needs KatranConfig.{knob}=True"
                )
        return flags

    @_locked
    def add_vip(self, vip: VipKey, flags: int = 0) -> None:
        vip = _vip_key(vip)
        flags = self._check_vip_flags(flags)
        self._require_started()
        if vip in self._vips:
            raise AlreadyExistsError("vip", vip)
        if not len(self._vip_nums):
            raise CapacityError(f"add vip {vip}: all {self._config.max_vips} VIP slots are in use (max_vips)")
        with self._tx() as tx:
            state = _VipState(self._vip_nums.take(tx), flags, self._config.hash_function)
            set_item(self._vips, vip, state, tx)
            if vip.port:
                self._write_vip_filter(tx)  # its bit before the VIP: the data plane trusts a clear bit
            self._write_vip(vip, state, tx)
            self._write_vip_address(vip.address, tx)
            if vip.port == 0:
                self._write_any_port_vips(tx)

    @_locked
    def del_vip(self, vip: VipKey) -> None:
        state = self._vip(vip)
        with self._tx() as tx:
            tx.delete(self._map("vip_map"), _vip_def(vip))
            self._bump_flow_cache(tx)  # its flows leave the data plane's fast path
            self._clear_down_reals(vip, tx)
            pop_item(self._vips, vip, tx)
            self._vip_nums.give_back(state.num, tx)
            self._write_vip_address(vip.address, tx)
            if vip.port == 0:
                self._write_any_port_vips(tx)
            else:
                self._write_vip_filter(tx)  # its bit only once the VIP is gone from vip_map
            for num in state.reals:
                self._release_real(num, tx)
            if state.ring is not None:
                # leave no stale real numbers behind for the next VIP that gets this number
                self._program_ring(state.num, state.ring, np.zeros_like(state.ring), tx)

    def _write_vip_address(self, address: IPAddress, tx: Transaction) -> None:
        """vip_addrs[address] = how many VIPs use it: the data plane answers echo requests to it.

        A foreign object given as ``balancer_prog_path`` (Katran's own, an older build) may have
        no such map: it answers echo requests its own way, and there is nothing to keep."""
        if not self._dp.has_map("vip_addrs"):
            return
        count = sum(1 for v in self._vips if v.address == address)
        key = structs.address(address)
        if count:
            tx.update(self._map("vip_addrs"), key, structs.u32(count))
        else:
            tx.delete(self._map("vip_addrs"), key)

    def _write_any_port_vips(self, tx: Optional[Transaction]) -> None:
        """ctl_array[CTL_ANY_PORT_VIPS] = 1 + how many VIPs have port 0: with none (1), the data
        plane passes a packet after one vip_map lookup (no second one with port 0); 0, never
        written, makes it look port 0 up always. Without ``tx`` (start, adoption): written
        only when the map holds another value."""
        count = sum(1 for v in self._vips if v.port == 0)
        ctl = self._map("ctl_array")
        key, value = structs.u32(structs.CTL_ANY_PORT_VIPS), structs.ctl_value_u64(1 + count)
        if tx is not None:
            tx.update(ctl, key, value)
        elif ctl.lookup(key) != value:
            ctl.update(key, value)

    def _write_vip_filter(self, tx: Optional[Transaction]) -> None:
        """ctl_array[CTL_VIP_FILTER ..] = a bit per VIP with a port (structs.vip_filter): the
        data plane's fast path looks a flow's flow-cache slot up only when the bit of its
        destination is set, and once ctl_array[CTL_VIP_FILTER_DONE] is 1 a packet without
        a bit skips the vip_map lookup with its port. So a bit is set before its VIP is in
        vip_map (add_vip) and cleared after it is gone (del_vip); collisions only set more
        bits. The words are read once (at start, ``tx`` None, which then marks the filter
        done) and then known: only the words that change are written. An object without a
        flow cache (Katran's) is left alone; an older build of ours ignores the words (a
        hitless upgrade clears the mark before the new program runs)."""
        if not self._dp.has_map("flow_cache"):
            return
        ctl = self._map("ctl_array")
        keys = [structs.u32(structs.CTL_VIP_FILTER + i) for i in range(structs.VIP_FILTER_WORDS)]
        known = self._vip_filter_words
        if known is None:
            known = [int.from_bytes(ctl.lookup(key)[:8], "little") for key in keys]
        words = structs.vip_filter((v.address, v.port, v.proto) for v in self._vips)
        for key, word, old in zip(keys, words, known):
            if word == old:
                continue
            if tx is not None:
                tx.update(ctl, key, structs.ctl_value_u64(word), old=structs.ctl_value_u64(old), known_old=True)
            else:
                ctl.update(key, structs.ctl_value_u64(word))
        if tx is not None:
            _set_attr(self, "_vip_filter_words", words, tx)
            return
        self._vip_filter_words = words
        done, one = structs.u32(structs.CTL_VIP_FILTER_DONE), structs.ctl_value_u64(1)
        if ctl.lookup(done) != one:
            ctl.update(done, one)

    def _bump_flow_cache(self, tx: Optional[Transaction] = None) -> None:
        """A new flow-cache epoch in ctl_array[CTL_FLOW_CACHE_EPOCH]: its low 32 bits count
        1 .. 2**32 - 1 (never 0: never written), bit 32 is set while ``config.flow_cache`` is
        off. A new epoch empties every slot of every cpu at once. Made at start (a slot may
        predate this control plane), when the switch changes, after connection-table
        entries are deleted (its error undoes the delete), and, in ``tx``, when a VIP is
        deleted or its flags change (a slot's fast path skips the VIP lookup: it must not
        outlive what the VIP was when the slot was filled). The count goes on while off,
        so no slot filled before an off period is alive after it."""
        if not self._dp.has_map("flow_cache"):
            return  # an adopted build without a flow cache
        ctl = self._map("ctl_array")
        key = structs.u32(structs.CTL_FLOW_CACHE_EPOCH)
        raw = ctl.lookup(key)
        old = int.from_bytes(raw[:8], "little") if raw else 0
        new = (old & 0xFFFFFFFF) % 0xFFFFFFFF + 1
        if not self._config.flow_cache:
            new |= structs.FLOW_CACHE_OFF
        if tx is not None:
            tx.update(ctl, key, structs.ctl_value_u64(new), old=raw, known_old=True)
        else:
            ctl.update(key, structs.ctl_value_u64(new))

    @_read
    def get_all_vips(self) -> list[VipKey]:
        return list(self._views)

    @_locked
    def modify_vip(self, vip: VipKey, flags: int, set_flag: bool = True) -> None:
        state = self._vip(vip)
        flags = check_int(flags, "flags", 0, 2**32 - 1)
        new = state.flags | flags if set_flag else state.flags & ~flags
        self._check_vip_flags(new)
        with self._tx() as tx:
            old = state.flags
            _set_attr(state, "flags", new, tx)
            self._write_vip(vip, state, tx)
            if new != old:
                self._bump_flow_cache(tx)  # the fast path knows a flow's VIP by its flags

    @_read
    def get_vip_flags(self, vip: VipKey) -> int:
        return self._view(vip).flags

    @_locked
    def change_hash_function_for_vip(self, vip: VipKey, hash_function: HashFunction) -> None:
        state = self._vip(vip)
        try:
            func = HashFunction(hash_function)
        except ValueError:
            raise ValidationError("hash_function", hash_function, "expected 0 (maglev) or 1 (maglev_v2)") from None
        with self._tx() as tx:
            _set_attr(state, "hash_function", func, tx)
            self._rebuild_ring(state, tx)

    @_read
    def get_hash_function_for_vip(self, vip: VipKey) -> HashFunction:
        return self._view(vip).hash_function

    # ------------------------------------------------------------------ reals
    def _check_real_for_vip(self, vip: VipKey, real: Real) -> None:
        if vip.is_v6 and real.address.version == 4:
            raise ValidationError(
                "real.address", str(real.address), f"IPv6 VIP {vip} cannot have an IPv4 real"
            )

    def _acquire_real(self, address: IPAddress, flags: int, tx: Transaction) -> int:
        """One more reference to ``address``; a new index gets its ``reals`` entry."""
        num, new = self._reals.acquire(address, flags, tx)
        if new:
            tx.update(self._map("reals"), structs.u32(num), self._real_definition(address, flags))
        return num

    def _release_real(self, num: int, tx: Transaction) -> None:
        """One reference less; a freed index loses its down marks (the next real would inherit them)."""
        if self._reals.release(num, tx):
            for vip, nums in self._down_reals.items():
                if num in nums:
                    self._unmark_down(vip, num, tx)

    @staticmethod
    def _real_definition(address: IPAddress, flags: int) -> bytes:
        flags &= ~RealFlag.IPV6
        if address.version == 6:
            flags |= RealFlag.IPV6
        return structs.real_definition(address, int(flags))

    def add_real_for_vip(self, real: Real, vip: VipKey) -> None:
        self.modify_reals_for_vip(ModifyAction.ADD, [real], vip)

    def del_real_for_vip(self, real: Real, vip: VipKey) -> None:
        self.modify_reals_for_vip(ModifyAction.DEL, [real], vip)

    def modify_reals_for_vip(self, action: ModifyAction, reals: Sequence[Real], vip: VipKey) -> None:
        """Add (or re-weight) / delete a batch of reals; one ring rebuild.

        The whole batch is validated first: on any error nothing changes.
        Concurrent calls are coalesced: whoever holds the write lock applies
        every change queued meanwhile, one ring rebuild per VIP; each call
        still succeeds or fails as a whole (a change that fails validation
        fails alone; a failed ring write fails every change of that rebuild).
        """
        change = _RealsChange(action, reals, vip)
        with self._pending_lock:
            self._pending.append(change)
        self._apply_pending(change)
        if change.error is not None:
            raise change.error

    @_locked
    def _apply_pending(self, mine: "_RealsChange") -> None:
        if mine.done:  # applied by the previous holder of the lock
            return
        with self._pending_lock:
            batch, self._pending = self._pending, []
        try:
            groups: dict[int, tuple[_VipState, list[_RealsChange]]] = {}
            for ch in batch:
                try:
                    state = self._vip(ch.vip)
                except Exception as e:
                    ch.error = e
                    continue
                groups.setdefault(id(state), (state, []))[1].append(ch)
            for state, changes in groups.values():
                staged: list[_RealsChange] = []
                try:
                    with self._tx() as tx:
                        for ch in changes:
                            try:
                                with tx.savepoint():
                                    self._stage_reals(ch.action, ch.reals, ch.vip, state, tx)
                            except Exception as e:
                                ch.error = e
                            else:
                                staged.append(ch)
                        if staged:
                            self._rebuild_ring(state, tx)
                except Exception as e:
                    for ch in staged:
                        ch.error = e
        finally:
            for ch in batch:
                ch.done = True

    def _stage_reals(self, action: ModifyAction, reals: Sequence[Real], vip: VipKey, state: _VipState,
                     tx: Transaction) -> None:
        """The changes of one modify_reals_for_vip call to ``state`` (in ``tx``), without the ring."""
        try:
            action = ModifyAction(action)
        except ValueError:
            raise ValidationError("action", action, "expected ADD (0) or DEL (1)") from None
        reals = list(reals)
        for r in reals:
            if not isinstance(r, Real):
                raise ValidationError("real", r, "expected a katran.Real")
        if action == ModifyAction.DEL:
            nums = []
            for r in reals:
                entry = self._reals.get(r.address)
                if entry is None or entry.num not in state.reals:
                    raise NotFoundError("real", f"{r.address} of vip {vip}")
                nums.append(entry.num)
            for num in dict.fromkeys(nums):
                pop_item(state.reals, num, tx)
                # a down mark outlives the real's membership (Katran: LRU entries of
                # its flows keep being re-hashed) but not its index: see _release_real
                self._release_real(num, tx)
            return
        for r in reals:
            self._check_real_for_vip(vip, r)
        self._reals.check_capacity([r.address for r in reals], f"add reals to vip {vip}")
        for r in reals:
            entry = self._reals.get(r.address)
            if entry is None or entry.num not in state.reals:
                num = self._acquire_real(r.address, r.flags, tx)
            else:
                num = entry.num
            set_item(state.reals, num, r.weight, tx)

    @_read
    def get_reals_for_vip(self, vip: VipKey) -> list[Real]:
        return [Real(address, weight, flags) for address, weight, flags in self._view(vip).reals]

    def _real_entry(self, address: object):
        addr = self._parse_address(address, "address")
        entry = self._reals.get(addr)
        if entry is None:
            raise NotFoundError("real", addr)
        return addr, entry

    @_locked
    def modify_real(self, address: object, flags: int, set_flag: bool = True) -> None:
        addr, entry = self._real_entry(address)
        flags = check_int(flags, "flags", 0, 255)
        flags &= ~RealFlag.IPV6
        new = entry.flags | flags if set_flag else entry.flags & ~flags
        self._dirty.update(id(st) for st in self._vips.values() if entry.num in st.reals)
        with self._tx() as tx:
            tx.update(self._map("reals"), structs.u32(entry.num), self._real_definition(addr, new))
            self._reals.set_flags(addr, new, tx)

    @_locked
    def get_real_flags(self, address: object) -> int:
        return self._real_entry(address)[1].flags

    @_locked
    def get_index_for_real(self, address: object) -> int:
        return self._real_entry(address)[1].num

    # ------------------------------------------------------------------ CH rings
    def _compute_ring(self, state: _VipState) -> np.ndarray:
        endpoints = [self._endpoint(num, weight) for num, weight in state.reals.items() if weight > 0]
        size = self._config.ch_ring_size
        if endpoints:
            return maglev.build_ring(endpoints, size, state.hash_function)
        return np.zeros(size, dtype=np.uint32)  # no reals: every slot drops

    def _rebuild_ring(self, state: _VipState, tx: Transaction) -> None:
        self._dirty.add(id(state))
        ring = self._compute_ring(state)
        self._program_ring(state.num, state.ring, ring, tx)
        _set_attr(state, "ring", ring, tx)

    def _endpoint(self, num: int, weight: int) -> maglev.Endpoint:
        """The (immutable, cached) ring endpoint of real ``num`` at ``weight``.

        An entry is valid for the very address object the registry holds for
        ``num`` (an identity check: hashing an ipaddress object is slow Python);
        an index freed and given to another address gets a new endpoint.
        """
        address = self._reals.address(num)
        key = (num, weight)
        hit = self._endpoint_cache.get(key)
        if hit is not None and hit[0] is address:
            return hit[1]
        if len(self._endpoint_cache) >= _ENDPOINT_CACHE_SIZE:
            self._endpoint_cache.clear()
        ep = maglev.Endpoint(num=num, weight=weight, hash=maglev.endpoint_hash(address))
        self._endpoint_cache[key] = (address, ep)
        return ep

    def _program_ring(self, vip_num: int, old: Optional[np.ndarray], new: np.ndarray, tx: Transaction) -> None:
        """Write the slots where ``new`` differs from ``old`` (all of them when None).

        ch_rings made with BPF_F_MMAPABLE (ours since 0.17 ms of a one-real change went to
        the batch syscall) is written through its mmap-ed values: a numpy scatter, no
        syscall; a ch_rings without the flag (an older data plane adopted, or reused by an
        upgrade) with one batch update.  Either way the undo writes the old values back.
        """
        keys, values, before = maglev.ring_writes(old, new, vip_num * self._config.ch_ring_size)
        if len(keys) == 0:
            return
        ch_rings = self._map("ch_rings")
        if ch_rings.mmapable:
            tx.update_view(ch_rings, keys, values, before, np.uint32)
            return
        tx.update_batch(ch_rings, keys.tobytes(), values.tobytes(), before.tobytes())

    # ------------------------------------------------------------------ QUIC mapping
    def _max_quic_id(self) -> int:
        if self._config.enable_cid_v3:
            return MAX_QUIC_REAL_ID_V3
        # the array holds ids 0 .. max_entries - 1 (Katran's MAX_QUIC_REALS - 1)
        return self._map("server_id_map").max_entries - 1

    @_locked
    def modify_quic_reals_mapping(self, action: ModifyAction, reals: Sequence[QuicReal]) -> None:
        """Add (or move) / delete server id -> real mappings; the whole batch or nothing."""
        if not self._dp.has_map("server_id_map"):
            raise FeatureNotEnabledError("QUIC server id routing is not in this balancer object")
        try:
            action = ModifyAction(action)
        except ValueError:
            raise ValidationError("action", action, "expected ADD (0) or DEL (1)") from None
        reals = list(reals)
        max_id = self._max_quic_id()
        for qr in reals:
            if not isinstance(qr, QuicReal):
                raise ValidationError("quic_real", qr, "expected a katran.QuicReal")
            if not 1 <= qr.id <= max_id:
                hint = "" if self._config.enable_cid_v3 else (
                    f" (raise max_server_ids, now {self._config.max_server_ids}; ids above"
                    f" {MAX_SERVER_IDS - 1} need enable_cid_v3)")
                raise ValidationError("quic_real.id", qr.id, f"server id must be in [1, {max_id}]{hint}")
            if action == ModifyAction.DEL:
                num = self._quic_reals.get(qr.id)
                if num is None or self._reals.address_or_none(num) != qr.address:
                    raise NotFoundError("quic real", f"{qr.address} with id {qr.id}")
        sid_map = self._map("server_id_map")
        if action == ModifyAction.ADD:
            if self._config.enable_cid_v3:  # a hash: at most max_entries ids
                ids = set(self._quic_reals) | {qr.id for qr in reals}
                if len(ids) > sid_map.max_entries:
                    raise ValidationError("max_server_ids", self._config.max_server_ids,
                                          f"{len(ids)} QUIC server ids would not fit server_id_map")
            self._reals.check_capacity([qr.address for qr in reals], "modify quic reals")
            with self._tx() as tx:
                for qr in reals:
                    old = self._quic_reals.get(qr.id)
                    if old is not None and self._reals.address(old) == qr.address:
                        continue
                    num = self._acquire_real(qr.address, 0, tx)
                    tx.update(sid_map, structs.u32(qr.id), structs.u32(num))
                    set_item(self._quic_reals, qr.id, num, tx)
                    if old is not None:
                        self._release_real(old, tx)
            return
        with self._tx() as tx:
            for sid in dict.fromkeys(qr.id for qr in reals):
                num = pop_item(self._quic_reals, sid, tx)
                if self._config.enable_cid_v3:
                    tx.delete(sid_map, structs.u32(sid))
                else:
                    tx.update(sid_map, structs.u32(sid), structs.u32(0))
                self._release_real(num, tx)

    @_locked
    def get_quic_reals_mapping(self) -> list[QuicReal]:
        return [QuicReal(self._reals.address(num), sid) for sid, num in sorted(self._quic_reals.items())]

    # ------------------------------------------------------------------ stats
    def _global_stats(self, counter: int) -> LbStats:
        return self._dp.global_stats(counter)

    @_read
    def get_stats_for_vip(self, vip: VipKey) -> LbStats:
        return self._dp.sum_stats("stats", self._view(vip).num)

    @_read
    def get_lru_stats(self) -> LbStats:
        return self._global_stats(structs.LRU_CNTRS)

    @_read
    def get_lru_miss_stats(self) -> LbStats:
        return self._global_stats(structs.LRU_MISS_CNTR)

    @_read
    def get_lru_fallback_stats(self) -> LbStats:
        return self._global_stats(structs.FALLBACK_LRU_CNTR)

    @_read
    def get_icmp_too_big_stats(self) -> LbStats:
        return self._global_stats(structs.ICMP_TOOBIG_CNTRS)

    @_read
    def get_ch_drop_stats(self) -> LbStats:
        return self._global_stats(structs.CH_DROP_STATS)

    @_read
    def get_encap_fail_stats(self) -> LbStats:
        return self._global_stats(structs.ENCAP_FAIL_CNTR)

    @_locked
    def get_malformed_stats(self) -> LbStats:
        """Packets to a VIP dropped as malformed (not in Katran): v1 an IP length field
        that contradicts the frame, v2 a martian source address."""
        return self._global_stats(structs.MALFORMED_CNTR)

    @_read
    def get_flow_cache_stats(self) -> LbStats:
        """The per-cpu flow cache in front of the connection table (not in Katran): v1
        packets routed from a cache slot (their LRU lookup skipped), v2 slots filled."""
        return self._global_stats(structs.FLOW_CACHE_CNTR)

    @_read
    def get_xdp_total_stats(self) -> LbStats:
        return self._global_stats(structs.XDP_TOTAL_CNTR)

    @_read
    def get_xdp_tx_stats(self) -> LbStats:
        return self._global_stats(structs.XDP_TX_CNTR)

    @_read
    def get_xdp_drop_stats(self) -> LbStats:
        return self._global_stats(structs.XDP_DROP_CNTR)

    @_read
    def get_xdp_pass_stats(self) -> LbStats:
        return self._global_stats(structs.XDP_PASS_CNTR)

    @_read
    def get_real_stats(self, index: int) -> LbStats:
        index = check_int(index, "index", 0, self._config.max_reals - 1)
        return self._dp.sum_stats("reals_stats", index)

    @_read
    def get_per_core_packets_stats(self) -> list[int]:
        return [s.v1 for s in self._dp.percpu_global(structs.XDP_TOTAL_CNTR)]

    @_locked
    def get_katran_lb_stats(self) -> LbStats:
        """v1: failed BPF map writes, v2: addresses KatranLb refused as invalid (Katran's names)."""
        return LbStats(self._bpf_failed_calls, self._addr_validation_failed)

    # ------------------------------------------------------------------ packet capture
    @_locked
    def capture(self, vip: Optional[VipKey] = None, real: object = None, src: object = None,
                count: Optional[int] = None, snaplen: int = DEFAULT_SNAPLEN) -> Capture:
        """Record the packets the balancer balances (in, and out encapsulated) to a ring buffer.

        Filters (all optional, combined with AND): ``vip`` (a VipKey), ``real`` (a real's
        address), ``src`` (a client prefix or address); ``count`` records at most (None: no
        limit); ``snaplen`` bytes kept of each frame (at most katran.capture.MAX_SNAPLEN).
        Returns a running :class:`katran.capture.Capture` (iterate it; close it to stop).
        """
        self._require_started()
        filt = CaptureFilter(
            vip_num=None if vip is None else self._vip(vip).num,
            real_index=None if real is None else self._capture_real(real),
            src=check_src(src), snaplen=check_snaplen(snaplen))
        count = check_count(count)
        if self._capture is not None and not self._capture.closed:
            raise CaptureBusyError("a packet capture is already running on this balancer (one filter): "
                                   "stop it first")
        abi = self._abi
        for name in ("capture_ring", "capture_stats"):
            if not abi.has_map(name):
                raise FeatureNotEnabledError(f"packet capture: the balancer object has no map {name}")
        if "capture_filter" not in abi.globals:
            raise FeatureNotEnabledError("packet capture: the balancer object has no global capture_filter")
        reader = self._kernel.ring_reader(self._map("capture_ring"))
        try:
            cap = Capture(filt, count=count, reader=reader, bss=self._obj.map(".bss"),
                          bss_offset=abi.globals["capture_filter"][0], stats=self._map("capture_stats"),
                          on_close=self._capture_closed)
        except BaseException:
            reader.close()
            raise
        self._capture = cap
        return cap

    def _capture_real(self, real: object) -> int:
        addr = self._parse_address(real, "real")
        entry = self._reals.get(addr)
        if entry is None:
            raise NotFoundError("real", addr)
        return entry.num

    def _capture_closed(self, cap: Capture) -> None:
        with self._lock:
            if self._capture is cap:
                self._capture = None

    @_locked
    def counter_snapshot(self, known_version: Optional[int] = None):
        """Every counter at one point in time, one batch read per map (``katran.metrics``).

        VIPs and reals are left out (None) when ``known_version`` is the current
        ``snapshot.version``: the caller's copy is still right.
        """
        from . import metrics

        if self._obj is None:
            return metrics.CounterSnapshot(False, False, self._config_generation, version=self._state_version)
        same = known_version == self._state_version
        return metrics.read_snapshot(
            self._obj,
            vips=None if same else [(v, s.num) for v, s in self._vips.items()],
            reals=None if same else [(a, self._reals.get(a).num) for a in self._reals],
            max_vips=self._config.max_vips, hc=self._dp.hc, lb_stats=(self._bpf_failed_calls, self._addr_validation_failed),
            config_generation=self._config_generation, attached=self.data_plane_attached,
            version=self._state_version,
        )

    # ------------------------------------------------------------------ source routing (LPM)
    def _require_feature(self, knob: str, what: str) -> None:
        self._require_started()
        if not getattr(self._config, knob):
            raise FeatureNotEnabledError(f"{what} needs KatranConfig.{knob}=True")

    @staticmethod
    def _parse_prefix(value: object, field: str = "src"):
        return parse_prefix(value, field)

    def _lpm_key(self, net) -> tuple:
        if net.version == 4:
            return self._map("lpm_src_v4"), structs.v4_lpm_key(net.network_address, net.prefixlen)
        return self._map("lpm_src_v6"), structs.v6_lpm_key(net.network_address, net.prefixlen)

    @_locked
    def add_src_routing_rule(self, srcs: Sequence[str], dst: object) -> None:
        """Packets to SRC_ROUTING VIPs from these source prefixes go to real ``dst`` (all or none)."""
        self._require_feature("lpm_src_lookup", "source routing")
        dst_addr = self._parse_address(dst, "dst")
        nets = list(dict.fromkeys(self._parse_prefix(src) for src in srcs))
        new = [n for n in nets if n not in self._lpm_rules]
        if len(self._lpm_rules) + len(new) > self._config.max_lpm_src_size:
            raise CapacityError(f"add src routing rules: more than max_lpm_src_size={self._config.max_lpm_src_size}")
        if nets and dst_addr not in self._reals and not self._reals.free_count:
            raise CapacityError(f"add src routing rule to {dst_addr}: no free real slots (max_reals)")
        with self._tx() as tx:
            for net in nets:
                old = self._lpm_rules.get(net)
                num = self._acquire_real(dst_addr, 0, tx)
                bpf_map, key = self._lpm_key(net)
                # an LPM lookup answers the longest match, not this key: the old value is ours
                tx.update(bpf_map, key, structs.u32(num), old=None if old is None else structs.u32(old),
                          known_old=True)
                set_item(self._lpm_rules, net, num, tx)
                if old is not None:
                    self._release_real(old, tx)

    @_locked
    def del_src_routing_rule(self, srcs: Sequence[str]) -> None:
        self._require_feature("lpm_src_lookup", "source routing")
        nets = [self._parse_prefix(src) for src in srcs]
        for net in nets:
            if net not in self._lpm_rules:
                raise NotFoundError("src routing rule", net)
        with self._tx() as tx:
            for net in dict.fromkeys(nets):
                bpf_map, key = self._lpm_key(net)
                num = pop_item(self._lpm_rules, net, tx)
                tx.delete(bpf_map, key, old=structs.u32(num), known_old=True)
                self._release_real(num, tx)

    @_locked
    def clear_all_src_routing_rules(self) -> None:
        self._require_feature("lpm_src_lookup", "source routing")
        self.del_src_routing_rule([str(n) for n in self._lpm_rules])

    @_locked
    def get_src_routing_rule(self) -> dict[str, str]:
        return {format_prefix(net): format_address(self._reals.address(num))
                for net, num in self._lpm_rules.items()}

    @_locked
    def get_src_routing_rule_size(self) -> int:
        return len(self._lpm_rules)

    @_locked
    def get_src_routing_stats(self) -> LbStats:
        """v1: packets with no matching source rule, v2: packets source-routed."""
        return self._global_stats(structs.LPM_SRC_CNTRS)

    # ------------------------------------------------------------------ inline decap
    def _require_inline_decap(self) -> None:
        self._require_started()
        if not (self._config.inline_decap_ipip or self._config.inline_decap_gue):
            raise FeatureNotEnabledError("inline decap needs KatranConfig.inline_decap_ipip or inline_decap_gue")

    @_locked
    def add_inline_decap_dst(self, dst: object) -> None:
        """Tunnelled packets to ``dst`` are decapsulated and balanced again."""
        self._require_inline_decap()
        addr = self._parse_address(dst, "dst")
        if addr in self._decap_dsts:
            raise AlreadyExistsError("inline decap dst", addr)
        if len(self._decap_dsts) >= self._config.max_decap_dst:
            raise CapacityError(f"add inline decap dst {addr}: max_decap_dst={self._config.max_decap_dst} reached")
        with self._tx() as tx:
            tx.update(self._map("decap_dst"), structs.address(addr), structs.u32(0))
            self._decap_dsts.append(addr)
            tx.on_rollback(self._decap_dsts.pop)

    @_locked
    def del_inline_decap_dst(self, dst: object) -> None:
        self._require_inline_decap()
        addr = self._parse_address(dst, "dst")
        if addr not in self._decap_dsts:
            raise NotFoundError("inline decap dst", addr)
        with self._tx() as tx:
            tx.delete(self._map("decap_dst"), structs.address(addr))
            pos = self._decap_dsts.index(addr)
            del self._decap_dsts[pos]
            tx.on_rollback(lambda: self._decap_dsts.insert(pos, addr))

    @_locked
    def get_inline_decap_dst(self) -> list[str]:
        return [format_address(a) for a in self._decap_dsts]

    @_locked
    def get_inline_decap_stats(self) -> LbStats:
        """v1: packets to a decap dst (remote encap counter)."""
        return self._global_stats(structs.REMOTE_ENCAP_CNTRS)

    @_locked
    def get_decap_stats(self) -> LbStats:
        """v1: decapsulated with an IPv4 outer header, v2: with an IPv6 one."""
        return self._global_stats(structs.DECAP_CNTR)

    @_locked
    def get_xpop_decap_successful_stats(self) -> LbStats:
        """v1: re-balanced after decap with an inner IPv4 packet, v2: inner IPv6."""
        return self._global_stats(structs.XPOP_DECAP_SUCCESSFUL)

    @_locked
    def get_decap_stats_for_vip(self, vip: VipKey) -> LbStats:
        return self._dp.sum_stats("decap_vip_stats", self._vip(vip).num)

    # ------------------------------------------------------------------ down reals (UDP flow migration)
    def _down_map(self, vip: VipKey, tx: Transaction, create: bool):
        """A handle on the VIP's inner down-reals map (closed when ``tx`` ends); None if absent."""
        outer = self._map("vip_to_down_reals_map")
        key = _vip_def(vip)
        inner_id = outer.inner_map_id(key)
        if inner_id:
            inner = self._kernel.map_by_id(inner_id)
            tx.defer(inner.close)
            return inner
        if not create:
            return None
        inner = tx.call(self._dp.create_down_reals_map, lambda: None)
        tx.defer(inner.close)
        tx.call(lambda: outer.set_inner_map(key, inner), lambda: outer.delete(key))
        return inner

    def _unmark_down(self, vip: VipKey, num: int, tx: Transaction) -> None:
        inner = self._down_map(vip, tx, create=False)
        if inner is not None:
            tx.delete(inner, structs.u32(num))
        nums = self._down_reals[vip]
        nums.discard(num)
        tx.on_rollback(lambda: nums.add(num))

    @_locked
    def add_down_real(self, vip: VipKey, address: object) -> None:
        """Mark a real of a VIP down: UDP_FLOW_MIGRATION flows pinned to it re-hash away."""
        self._vip(vip)
        _, entry = self._real_entry(address)
        with self._tx() as tx:
            inner = self._down_map(vip, tx, create=True)
            tx.update(inner, structs.u32(entry.num), b"\x01")
            if vip not in self._down_reals:
                set_item(self._down_reals, vip, set(), tx)
            nums = self._down_reals[vip]
            if entry.num not in nums:
                nums.add(entry.num)
                tx.on_rollback(lambda: nums.discard(entry.num))

    @_locked
    def remove_down_real(self, vip: VipKey, address: object) -> None:
        self._vip(vip)
        _, entry = self._real_entry(address)
        if entry.num not in self._down_reals.get(vip, ()):
            raise NotFoundError("down real", f"{address} of vip {vip}")
        with self._tx() as tx:
            self._unmark_down(vip, entry.num, tx)

    @_locked
    def clear_down_reals(self, vip: VipKey) -> None:
        self._vip(vip)
        with self._tx() as tx:
            self._clear_down_reals(vip, tx)

    def _clear_down_reals(self, vip: VipKey, tx: Transaction) -> None:
        if vip not in self._down_reals:
            return
        pop_item(self._down_reals, vip, tx)
        outer = self._map("vip_to_down_reals_map")
        key = _vip_def(vip)
        inner = self._down_map(vip, tx, create=False)  # our handle keeps it alive for an undo
        if inner is not None:
            tx.call(lambda: outer.delete(key), lambda: outer.set_inner_map(key, inner))

    @_locked
    def get_down_reals(self, vip: VipKey) -> list[str]:
        self._vip(vip)
        return sorted(format_address(self._reals.address(n)) for n in self._down_reals.get(vip, ()))

    # ------------------------------------------------------------------ feature stats
    @_locked
    def get_lb_quic_packets_stats(self) -> dict[str, int]:
        return self._dp.counters("quic_stats_map", structs.QUIC_STATS_FIELDS)

    @_locked
    def get_tcp_server_id_routing_stats(self) -> dict[str, int]:
        return self._dp.counters("tpr_stats_map", structs.TPR_STATS_FIELDS)

    @_locked
    def get_udp_stable_routing_stats(self) -> dict[str, int]:
        return self._dp.counters("stable_rt_stats", structs.STABLE_RT_STATS_FIELDS)

    @_locked
    def get_udp_flow_migration_stats(self) -> LbStats:
        """v1: LRU entries invalidated because their real was down."""
        return self._global_stats(structs.UDP_FLOW_MIGRATION_STATS)

    @_read
    def get_global_lru_stats(self) -> LbStats:
        return self._global_stats(structs.GLOBAL_LRU_CNTR)

    @_read
    def get_quic_icmp_stats(self) -> LbStats:
        return self._global_stats(structs.QUIC_ICMP_STATS)

    @_locked
    def get_sid_routing_stats_for_vip(self, vip: VipKey) -> LbStats:
        return self._dp.sum_stats("server_id_stats", self._vip(vip).num)

    # ------------------------------------------------------------------ healthchecks
    def _hc_manager(self):
        self._require_started()
        if self._dp.hc is None:
            raise FeatureNotEnabledError("healthcheck forwarding is off (KatranConfig.enable_hc=False)")
        return self._dp.hc

    @_locked
    def add_healthchecker_dst(self, somark: int, address: object) -> None:
        """Probes sent with SO_MARK=somark leave encapsulated toward ``address``."""
        self._hc_manager().add_dst(somark, address)
        self._state_due = True

    @_locked
    def del_healthchecker_dst(self, somark: int) -> None:
        self._hc_manager().del_dst(somark)
        self._state_due = True

    @_locked
    def get_healthcheckers_dst(self) -> dict[int, str]:
        return self._hc_manager().get_dsts()

    @_locked
    def get_hc_program_stats(self):
        """HcStats(processed, dropped, skipped, too_big) of the healthcheck program."""
        return self._hc_manager().stats()

    @_locked
    def run_hc_packet(self, data: bytes, mark: int = 0) -> PacketResult:
        """Run one frame through the healthcheck program with skb mark ``mark``."""
        return self._hc_manager().run_packet(data, mark)

    # ------------------------------------------------------------------ packets
    @_locked
    def run_packet(self, data: bytes) -> PacketResult:
        """Run one frame through the loaded balancer (BPF_PROG_TEST_RUN)."""
        if not isinstance(data, (bytes, bytearray)):
            raise ValidationError("data", type(data).__name__, "expected the frame as bytes")
        res = self._dp.test_run(bytes(data))
        verdict = XDP_VERDICTS.get(res.retval, f"XDP_{res.retval}")
        return PacketResult(verdict, res.retval, res.data, res.duration_ns)

    @_locked
    def get_real_for_flow(self, flow: Flow, *, side_effect_free: bool = False) -> Optional[str]:
        """Which real this flow goes to (None: the VIP has no real for it).

        By default, like Katran's simulator, this runs the real program on a
        built packet, so the flow is counted and (on a miss) inserted into the
        LRU like a client packet. ``side_effect_free=True`` computes the same
        choice in the control plane (``lookup_flow``): nothing is counted or
        inserted, and a flow to no VIP raises NotFoundError.
        """
        if side_effect_free:
            route = self.lookup_flow(flow)
            return None if route.real is None else format_address(route.real)
        if not isinstance(flow, Flow):
            raise ValidationError("flow", flow, "expected a katran.Flow")
        if flow.src.version != flow.dst.version:
            raise ValidationError("flow.src", str(flow.src), "src and dst must be the same IP version")
        frame = packets.build_flow_packet(flow)
        res = self.run_packet(frame)
        if res.verdict != "XDP_TX":
            return None
        dst = packets.outer_destination(res.data)
        return None if dst is None else format_address(dst)


    # ------------------------------------------------------------------ flow table (katran.flows)
    def _flow_view(self):
        from . import flows

        obj = self._require_started()
        cfg = self._config
        tables, owned = [], []
        try:
            lru_mapping = obj.map("lru_mapping")
            for core in self._dp.forwarding_cores():
                inner_id = lru_mapping.inner_map_id(core)
                if inner_id:
                    inner = self._kernel.map_by_id(inner_id)
                    owned.append(inner)
                    tables.append((f"cpu{core}", inner))
        except BaseException:
            for m in owned:
                m.close()
            raise
        tables.append((flows.FALLBACK, obj.map("fallback_cache")))
        return flows.FlowTableView(
            tables=tables, reals_map=obj.map("reals"),
            vips={v: flows.VipView(s.num, s.flags, s.ring) for v, s in self._vips.items()},
            num_to_real={self._reals.get(a).num: a for a in self._reals}, lpm_rules=dict(self._lpm_rules),
            down_reals={v: set(n) for v, n in self._down_reals.items()}, ring_size=cfg.ch_ring_size,
            max_vips=cfg.max_vips, max_reals=cfg.max_reals, lru_udp_timeout_ns=cfg.lru_udp_timeout_ns,
            lpm_src_lookup=bool(cfg.lpm_src_lookup), owned=owned,
        )

    @_locked
    def lookup_flow(self, flow: Flow, *, cpu: Optional[int] = None):
        """Where ``flow`` goes, without side effects: a ``katran.flows.FlowRoute``
        (real, and whether the LRU, source routing or the ring chose it)."""
        from . import flows

        if cpu is not None:
            cpu = check_int(cpu, "cpu", 0, 4095)
        with self._flow_view() as view:
            return flows.route_flow(view, flow, cpu=cpu)

    @_locked
    def list_lru(self, vip: Optional[VipKey] = None, *, real: object = None, src: object = None,
                 limit: Optional[int] = 1000):
        """Connection-table entries of every LRU matching the filters (Katran's listLru)."""
        from . import flows

        with self._flow_view() as view:
            return flows.list_lru(view, vip, real=real, src=src, limit=limit)

    @_locked
    def search_lru(self, vip: VipKey, src: object, src_port: int) -> list:
        """The entries of one flow in every LRU (Katran's searchLru)."""
        from . import flows

        with self._flow_view() as view:
            return flows.search_lru(view, vip, src, src_port)

    @_locked
    def delete_lru(self, vip: VipKey, src: object, src_port: int) -> list[str]:
        """Delete one flow from every LRU; the tables it was in (Katran's deleteLru)."""
        from . import flows

        with self._flow_view() as view:
            return flows.delete_lru(view, vip, src, src_port, after=self._bump_flow_cache)

    @_locked
    def purge_vip_lru(self, vip: Optional[VipKey] = None, *, real: object = None, src: object = None) -> dict:
        """Delete every entry of a VIP (and/or of a real, a client prefix); per table counts
        (Katran's purgeVipLru / purgeVipLruForReal)."""
        from . import flows

        with self._flow_view() as view:
            return flows.purge_lru(view, vip, real=real, src=src, after=self._bump_flow_cache)


# Public methods that change the configuration: each successful outermost call bumps
# KatranLb.config_generation (a call made by another one counts once).
MUTATING_METHODS = (
    "change_mac", "set_flow_cache", "add_vip", "del_vip", "modify_vip", "change_hash_function_for_vip",
    "add_real_for_vip", "del_real_for_vip", "modify_reals_for_vip", "modify_real",
    "modify_quic_reals_mapping", "add_src_routing_rule", "del_src_routing_rule",
    "clear_all_src_routing_rules", "add_inline_decap_dst", "del_inline_decap_dst",
    "add_down_real", "remove_down_real", "clear_down_reals", "add_healthchecker_dst",
    "del_healthchecker_dst",
)


def _counts_generation(method: Callable[..., T]) -> Callable[..., T]:
    # Not under the balancer's lock: modify_reals_for_vip queues before it takes it (coalescing).
    @functools.wraps(method)
    def wrapper(self: KatranLb, *args, **kwargs):
        local = self._mutating
        depth = getattr(local, "depth", 0)
        local.depth = depth + 1
        ok = False
        try:
            result = method(self, *args, **kwargs)
            ok = True
            return result
        finally:
            local.depth = depth
            if depth == 0:
                with self._generation_lock:
                    self._state_version += 1
                    if ok:
                        self._config_generation += 1

    return wrapper


for _name in MUTATING_METHODS:
    setattr(KatranLb, _name, _counts_generation(getattr(KatranLb, _name)))
del _name
