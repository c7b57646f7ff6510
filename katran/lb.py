"""KatranLb: the domain layer.

Owns the loaded BPF objects and every piece of load-balancer state (VIPs, reals,
their indices and reference counts, CH rings), validates input, and writes only
what changed into the BPF maps.  Kernel access goes through ``katran.adapter``.
Every public method is serialised by one lock, so frontends may call it from a
thread pool.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import os
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

import attrs
import numpy as np

from . import contract, maglev, packets, structs
from .config import KatranConfig
from .errors import (
    AlreadyExistsError,
    BuildError,
    CapacityError,
    FeatureNotEnabledError,
    KatranError,
    KernelError,
    NotFoundError,
    ValidationError,
)
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

OBJ_DIR = Path(__file__).resolve().parent / "bpf" / "obj"
BALANCER_PROG = "balancer_ingress"
XDP_VERDICTS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}
# VIP flags that need a load-time feature knob of the balancer (KatranConfig field)
FLAG_FEATURES = {
    VipFlag.SRC_ROUTING: "lpm_src_lookup",
    VipFlag.LOCAL_VIP: "local_delivery",
    VipFlag.GLOBAL_LRU: "global_lru",
    VipFlag.UDP_STABLE_ROUTING_VIP: "udp_stable_routing",
}
# KatranConfig fields written into the balancer's `const volatile` knobs before load
KNOBS = (
    "gue_encap", "gue_dport", "tcp_server_id_routing", "udp_stable_routing", "lpm_src_lookup",
    "global_lru", "local_delivery", "icmp_toobig_generation", "inline_decap_ipip", "inline_decap_gue",
    "decap_strict_destination", "max_pckt_size", "lru_udp_timeout_ns", "max_conn_rate",
)
MAX_SERVER_IDS_V3 = 1 << 24  # server_id_map entries when it is a hash (CID v3)
MAX_QUIC_REAL_ID = 0xFFFFFE  # server ids are 24 bits wide in CIDs v1/v2 (kMaxQuicIdV2)
RECIRC_SLOT = 0  # the balancer's own slot in its `subprograms` prog array
GLOBAL_COUNTER_SLOTS = 32  # global counters live at stats[max_vips + 0..31]

T = TypeVar("T")


def packaged_object(name: str) -> Path:
    """Path of a packaged BPF object; BuildError telling how to build it if missing."""
    path = OBJ_DIR / name
    if not path.is_file():
        raise BuildError(
            f"BPF object {path} is missing: build it with `pip install -e .` "
            f"or `python -m katran.build` (needs clang and libbpf-dev)"
        )
    return path


def _locked(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def wrapper(self: "KatranLb", *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


def _vip_key(vip: object) -> VipKey:
    if isinstance(vip, VipKey):
        return vip
    raise ValidationError("vip", vip, "expected a katran.VipKey")


@attrs.define
class _RealMeta:
    num: int
    refcount: int
    flags: int


@attrs.define
class _VipState:
    num: int
    flags: int
    hash_function: HashFunction
    reals: dict = attrs.field(factory=dict)  # real num -> weight, in insertion order
    ring: Optional[np.ndarray] = None


class KatranLb:
    """The load balancer: configure VIPs and reals, read stats.

    ``start()`` opens, sizes, loads and provisions the BPF programs and, unless
    ``config.testing``, attaches the balancer (standalone) or registers it in
    the root program's prog_array (shared mode).  ``close()`` undoes that.
    """

    def __init__(self, config: KatranConfig) -> None:
        if not isinstance(config, KatranConfig):
            raise ValidationError("config", config, "expected a katran.KatranConfig")
        self._config = config
        self._lock = threading.RLock()
        self._obj = None
        self._abi: Optional[contract.Binding] = None  # what the balancer object has
        self._lru_maps: list = []
        self._attached_ifindex: Optional[int] = None
        self._registered_root = None
        self._hc = None
        self._mac = config.default_mac or bytes(6)
        self._vips: dict[VipKey, _VipState] = {}
        self._free_vip_nums = collections.deque(range(config.max_vips))
        self._reals: dict[IPAddress, _RealMeta] = {}
        self._num_to_real: dict[int, IPAddress] = {}
        # index 0 is reserved as "no real": a zeroed ring slot drops the packet
        self._free_real_nums = collections.deque(range(1, config.max_reals))
        self._quic_reals: dict[int, int] = {}  # server id -> real num
        self._lpm_rules: dict = {}  # source prefix (ip_network) -> real num
        self._decap_dsts: list = []  # inline decap destinations
        self._down_reals: dict[VipKey, set] = {}  # vip -> real nums marked down
        self._bpf_failed_calls = 0
        self._addr_validation_failed = 0
        self._config_generation = 0  # successful mutations (metrics)
        self._state_version = 0  # every mutating call, failed ones too (metrics caches)
        self._mutation_depth = 0

    # ------------------------------------------------------------------ life cycle
    @property
    def config(self) -> KatranConfig:
        return self._config

    @property
    def started(self) -> bool:
        return self._obj is not None

    @property
    def config_generation(self) -> int:
        """Successful configuration changes since construction (one per public mutating call)."""
        return self._config_generation

    @property
    def data_plane_attached(self) -> bool:
        """True while the balancer is attached to its interface or registered in a root program."""
        return self._attached_ifindex is not None or self._registered_root is not None

    def __enter__(self) -> "KatranLb":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @_locked
    def start(self) -> None:
        if self._obj is not None:
            return
        from .adapter import bpf

        cfg = self._config
        path = Path(cfg.balancer_prog_path) if cfg.balancer_prog_path else packaged_object("balancer.bpf.o")
        spec = bpf.ObjectSpec.open(path)
        try:
            # our own object must match the contract fully; a user-supplied one may lack maps/knobs
            self._abi = contract.BALANCER.check(path, strict=not cfg.balancer_prog_path)
            self._size_maps(spec)
            self._set_knobs(spec)
            obj = spec.load()
        finally:
            spec.close()
        self._obj = obj
        try:
            self._provision()
            if cfg.enable_hc:
                from .healthcheck import HcManager

                self._hc = HcManager.from_config(cfg)
                self._hc.load()
            if not cfg.testing:
                self._attach()
                if self._hc is not None:
                    self._hc.attach()
        except BaseException:
            self.close()
            raise

    def _size_maps(self, spec) -> None:
        cfg = self._config
        sizes = {
            "vip_map": cfg.max_vips,
            "vip_addrs": cfg.max_vips,
            "ch_rings": cfg.max_vips * cfg.ch_ring_size,
            "reals": cfg.max_reals,
            "reals_stats": cfg.max_reals,
            "lru_miss_stats": cfg.max_reals,
            # per-VIP counters, then the global ones at max_vips + N (Katran: 2 * MAX_VIPS)
            "stats": cfg.max_vips + max(cfg.max_vips, GLOBAL_COUNTER_SLOTS),
            "fallback_cache": cfg.fallback_lru_size,
            "vip_to_down_reals_map": cfg.max_vips,
            "decap_dst": cfg.max_decap_dst,
            "lpm_src_v4": cfg.max_lpm_src_size,
            "lpm_src_v6": cfg.max_lpm_src_size,
            "decap_vip_stats": cfg.max_vips,
            "server_id_stats": cfg.max_vips,
        }
        abi = self._abi
        if cfg.enable_cid_v3 and abi.has_map("server_id_map"):
            # 32-bit server ids do not fit an array: the same lookups work on a hash
            from .adapter import bpf

            spec.set_map_type("server_id_map", bpf.BPF_MAP_TYPE_HASH)
            sizes["server_id_map"] = MAX_SERVER_IDS_V3
        for name, size in sizes.items():
            if abi.has_map(name):
                spec.set_max_entries(name, size)
        if abi.has_map("vip_to_down_reals_map"):
            spec.set_inner_map_max_entries("vip_to_down_reals_map", cfg.max_reals)
        numa = cfg.numa_nodes
        if abi.has_map("lru_mapping"):
            # per-core LRUs must match the template, BPF_F_NUMA_NODE flag included
            spec.set_inner_map_max_entries(
                "lru_mapping", self._per_core_lru_size(), numa_node=numa[0] if numa else None
            )
        if cfg.global_lru and abi.has_map("global_lru_maps"):
            spec.set_inner_map_max_entries(
                "global_lru_maps", cfg.global_lru_size, numa_node=numa[0] if numa else None
            )

    def _set_knobs(self, spec) -> None:
        cfg = self._config
        knobs = {"ring_size": cfg.ch_ring_size, "max_vips": cfg.max_vips}
        knobs.update({name: int(getattr(cfg, name)) for name in KNOBS})
        for name, value in knobs.items():
            if self._abi.has_knob(name):
                spec.set_rodata(name, value)
        missing = [n for n in KNOBS if getattr(cfg, n) is True and not self._abi.has_knob(n)]
        if missing:
            raise FeatureNotEnabledError(f"the balancer object {spec.path} has no knob(s) {', '.join(missing)}")

    def _forwarding_cores(self) -> tuple:
        cfg = self._config
        if cfg.forwarding_cores is None:
            # production default: every CPU gets its own LRU (testing: fallback LRU only)
            return () if cfg.testing else tuple(range(os.cpu_count() or 1))
        return cfg.forwarding_cores

    def _per_core_lru_size(self) -> int:
        cores = self._forwarding_cores()
        return max(1, self._config.lru_size // len(cores)) if cores else 1000

    def _provision(self) -> None:
        from .adapter import bpf

        lru_mapping = self._map("lru_mapping")
        fallback = self._map("fallback_cache")
        cores = self._forwarding_cores()
        numa = self._config.numa_nodes
        for i, core in enumerate(cores):
            inner = bpf.create_map(
                bpf.BPF_MAP_TYPE_LRU_HASH,
                fallback.key_size,
                fallback.value_size,
                self._per_core_lru_size(),
                name=f"katran_lru_{core}",
                numa_node=numa[i] if numa else None,
            )
            self._lru_maps.append(inner)
            self._update(lru_mapping, structs.u32(core), structs.u32(inner.fd))
            if self._config.global_lru:
                glru = bpf.create_map(
                    bpf.BPF_MAP_TYPE_LRU_PERCPU_HASH,
                    fallback.key_size,
                    4,
                    self._config.global_lru_size,
                    name=f"katran_glru_{core}",
                    numa_node=numa[i] if numa else None,
                )
                self._lru_maps.append(glru)
                self._update(self._map("global_lru_maps"), structs.u32(core), structs.u32(glru.fd))
        self._update(self._map("ctl_array"), structs.u32(structs.CTL_MAC_POS), structs.ctl_value_mac(self._mac))
        cfg = self._config
        if self._abi.has_map("pckt_srcs"):
            srcs = self._map("pckt_srcs")
            # outer source of GUE packets, and "this host" for strict inline decap
            for pos, src in ((0, cfg.katran_src_v4), (1, cfg.katran_src_v6)):
                if src is not None:
                    self._update(srcs, structs.u32(pos), structs.real_definition(src, 0))
        if cfg.inline_decap_ipip or cfg.inline_decap_gue:
            # recirculation: a decapsulated packet is balanced again by a tail call
            prog = self._obj.program(BALANCER_PROG)
            self._update(self._map("subprograms"), structs.u32(RECIRC_SLOT), structs.u32(prog.fd))

    def _attach(self) -> None:
        from .adapter import netlink

        cfg = self._config
        prog = self._obj.program(BALANCER_PROG)
        if cfg.root_map_path:
            from . import shared

            shared.register(prog, cfg.root_map_path, cfg.root_map_pos)
            self._registered_root = (cfg.root_map_path, cfg.root_map_pos)
        else:
            ifindex = netlink.ifindex(cfg.main_interface)
            prog.attach_xdp(ifindex, cfg.xdp_attach_mode, replace=True)
            self._attached_ifindex = ifindex

    @_locked
    def close(self) -> None:
        """Detach / unregister, then release every fd.  Safe to call twice."""
        from .adapter import bpf

        errors = []
        if self._attached_ifindex is not None and self._config.cleanup_on_shutdown:
            try:
                # only our own program: a newer instance may have replaced it already
                mode = self._config.xdp_attach_mode
                ours = self._obj.program(BALANCER_PROG).id
                if bpf.xdp_attached_prog_id(self._attached_ifindex, mode) == ours:
                    bpf.detach_xdp(self._attached_ifindex, mode)
            except KatranError as e:
                errors.append(e)
        self._attached_ifindex = None
        if self._registered_root is not None:
            from . import shared

            try:
                shared.unregister(*self._registered_root)
            except KatranError as e:
                errors.append(e)
            self._registered_root = None
        if self._hc is not None:
            try:
                self._hc.close(detach=self._config.cleanup_on_shutdown)
            except KatranError as e:
                errors.append(e)
            self._hc = None
        for m in self._lru_maps:
            m.close()
        self._lru_maps.clear()
        if self._obj is not None:
            self._obj.close()
            self._obj = None
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------ helpers
    def _require_started(self):
        if self._obj is None:
            raise KatranError("KatranLb is not started: call start() first")
        return self._obj

    def _map(self, name: str):
        return self._require_started().map(name)

    def _update(self, bpf_map, key: bytes, value: bytes) -> None:
        try:
            bpf_map.update(key, value)
        except KernelError:
            self._bpf_failed_calls += 1
            raise

    def _vip(self, vip: VipKey) -> _VipState:
        state = self._vips.get(_vip_key(vip))
        if state is None:
            raise NotFoundError("vip", vip)
        return state

    def _write_vip(self, vip: VipKey, state: _VipState) -> None:
        self._update(
            self._map("vip_map"),
            structs.vip_definition(vip.address, vip.port, vip.proto),
            structs.vip_meta(state.flags, state.num),
        )

    # ------------------------------------------------------------------ MAC
    @_locked
    def change_mac(self, mac: object) -> None:
        new = parse_mac(mac, "mac")
        self._update(self._map("ctl_array"), structs.u32(structs.CTL_MAC_POS), structs.ctl_value_mac(new))
        self._mac = new
        if self._hc is not None:
            self._hc.set_gateway_mac(new)

    @_locked
    def get_mac(self) -> str:
        return format_mac(self._mac)

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
        if vip in self._vips:
            raise AlreadyExistsError("vip", vip)
        if not self._free_vip_nums:
            raise CapacityError(f"add vip {vip}: all {self._config.max_vips} VIP slots are in use (max_vips)")
        state = _VipState(self._free_vip_nums[0], flags, self._config.hash_function)
        self._write_vip(vip, state)
        self._free_vip_nums.popleft()
        self._vips[vip] = state
        self._write_vip_address(vip.address)

    @_locked
    def del_vip(self, vip: VipKey) -> None:
        state = self._vip(vip)
        try:
            self._map("vip_map").delete(structs.vip_definition(vip.address, vip.port, vip.proto))
        except KernelError:
            self._bpf_failed_calls += 1
            raise
        self._clear_down_reals(vip)
        del self._vips[vip]
        self._free_vip_nums.append(state.num)
        self._write_vip_address(vip.address)
        for num in state.reals:
            self._decrease_refcount(num)
        if state.ring is not None:
            # leave no stale real numbers behind for the next VIP that gets this number
            self._program_ring(state.num, state.ring, np.zeros_like(state.ring))

    def _write_vip_address(self, address: IPAddress) -> None:
        """vip_addrs[address] = how many VIPs use it: the data plane answers echo requests to it."""
        count = sum(1 for v in self._vips if v.address == address)
        key = structs.address(address)
        if count:
            self._update(self._map("vip_addrs"), key, structs.u32(count))
        else:
            self._map("vip_addrs").delete(key)

    @_locked
    def get_all_vips(self) -> list[VipKey]:
        return list(self._vips)

    @_locked
    def modify_vip(self, vip: VipKey, flags: int, set_flag: bool = True) -> None:
        state = self._vip(vip)
        flags = check_int(flags, "flags", 0, 2**32 - 1)
        new = state.flags | flags if set_flag else state.flags & ~flags
        self._check_vip_flags(new)
        old, state.flags = state.flags, new
        try:
            self._write_vip(vip, state)
        except KatranError:
            state.flags = old
            raise

    @_locked
    def get_vip_flags(self, vip: VipKey) -> int:
        return self._vip(vip).flags

    @_locked
    def change_hash_function_for_vip(self, vip: VipKey, hash_function: HashFunction) -> None:
        state = self._vip(vip)
        try:
            func = HashFunction(hash_function)
        except ValueError:
            raise ValidationError("hash_function", hash_function, "expected 0 (maglev) or 1 (maglev_v2)") from None
        state.hash_function = func
        self._rebuild_ring(state)

    @_locked
    def get_hash_function_for_vip(self, vip: VipKey) -> HashFunction:
        return self._vip(vip).hash_function

    # ------------------------------------------------------------------ reals
    def _check_real_for_vip(self, vip: VipKey, real: Real) -> None:
        if vip.is_v6 and real.address.version == 4:
            raise ValidationError(
                "real.address", str(real.address), f"IPv6 VIP {vip} cannot have an IPv4 real"
            )

    def _increase_refcount(self, address: IPAddress, flags: int) -> int:
        meta = self._reals.get(address)
        if meta is not None:
            meta.refcount += 1
            return meta.num
        num = self._free_real_nums[0]
        self._update(self._map("reals"), structs.u32(num), self._real_definition(address, flags))
        self._free_real_nums.popleft()
        self._reals[address] = _RealMeta(num, 1, flags)
        self._num_to_real[num] = address
        return num

    def _decrease_refcount(self, num: int) -> None:
        address = self._num_to_real[num]
        meta = self._reals[address]
        meta.refcount -= 1
        if meta.refcount == 0:
            del self._reals[address]
            del self._num_to_real[num]
            self._free_real_nums.append(num)

    @staticmethod
    def _real_definition(address: IPAddress, flags: int) -> bytes:
        flags &= ~RealFlag.IPV6
        if address.version == 6:
            flags |= RealFlag.IPV6
        return structs.real_definition(address, int(flags))

    @_locked
    def add_real_for_vip(self, real: Real, vip: VipKey) -> None:
        self.modify_reals_for_vip(ModifyAction.ADD, [real], vip)

    @_locked
    def del_real_for_vip(self, real: Real, vip: VipKey) -> None:
        self.modify_reals_for_vip(ModifyAction.DEL, [real], vip)

    @_locked
    def modify_reals_for_vip(self, action: ModifyAction, reals: Sequence[Real], vip: VipKey) -> None:
        """Add (or re-weight) / delete a batch of reals; one ring rebuild.

        The whole batch is validated first: on any error nothing changes.
        """
        state = self._vip(vip)
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
                meta = self._reals.get(r.address)
                if meta is None or meta.num not in state.reals:
                    raise NotFoundError("real", f"{r.address} of vip {vip}")
                nums.append(meta.num)
            for num in dict.fromkeys(nums):
                del state.reals[num]
                self._decrease_refcount(num)
        else:
            for r in reals:
                self._check_real_for_vip(vip, r)
            new_addrs = {r.address for r in reals if r.address not in self._reals}
            if len(new_addrs) > len(self._free_real_nums):
                raise CapacityError(
                    f"add reals to vip {vip}: {len(new_addrs)} new reals but only "
                    f"{len(self._free_real_nums)} free real slots (max_reals={self._config.max_reals})"
                )
            for r in reals:
                meta = self._reals.get(r.address)
                if meta is None or meta.num not in state.reals:
                    num = self._increase_refcount(r.address, r.flags)
                else:
                    num = meta.num
                state.reals[num] = r.weight
        self._rebuild_ring(state)

    @_locked
    def get_reals_for_vip(self, vip: VipKey) -> list[Real]:
        state = self._vip(vip)
        out = []
        for num, weight in state.reals.items():
            address = self._num_to_real[num]
            out.append(Real(address, weight, self._reals[address].flags))
        return out

    @_locked
    def modify_real(self, address: object, flags: int, set_flag: bool = True) -> None:
        addr = parse_address(address, "address")
        flags = check_int(flags, "flags", 0, 255)
        meta = self._reals.get(addr)
        if meta is None:
            raise NotFoundError("real", addr)
        flags &= ~RealFlag.IPV6
        new = meta.flags | flags if set_flag else meta.flags & ~flags
        self._update(self._map("reals"), structs.u32(meta.num), self._real_definition(addr, new))
        meta.flags = new

    @_locked
    def get_real_flags(self, address: object) -> int:
        addr = parse_address(address, "address")
        meta = self._reals.get(addr)
        if meta is None:
            raise NotFoundError("real", addr)
        return meta.flags

    @_locked
    def get_index_for_real(self, address: object) -> int:
        addr = parse_address(address, "address")
        meta = self._reals.get(addr)
        if meta is None:
            raise NotFoundError("real", addr)
        return meta.num

    # ------------------------------------------------------------------ CH rings
    def _rebuild_ring(self, state: _VipState) -> None:
        endpoints = [
            maglev.Endpoint(num=num, weight=weight, hash=maglev.endpoint_hash(self._num_to_real[num]))
            for num, weight in state.reals.items()
            if weight > 0
        ]
        size = self._config.ch_ring_size
        if endpoints:
            ring = maglev.build_ring(endpoints, size, state.hash_function)
        else:
            ring = np.zeros(size, dtype=np.uint32)  # no reals: every slot drops
        self._program_ring(state.num, state.ring, ring)
        state.ring = ring

    def _program_ring(self, vip_num: int, old: Optional[np.ndarray], new: np.ndarray) -> None:
        positions, values = maglev.ring_delta(old, new)
        if len(positions) == 0:
            return
        keys = (positions.astype(np.uint64) + vip_num * self._config.ch_ring_size).astype(np.uint32)
        try:
            self._map("ch_rings").update_batch(keys.tobytes(), values.astype(np.uint32).tobytes())
        except KernelError:
            self._bpf_failed_calls += 1
            raise

    # ------------------------------------------------------------------ QUIC mapping
    @_locked
    def modify_quic_reals_mapping(self, action: ModifyAction, reals: Sequence[QuicReal]) -> None:
        if "server_id_map" not in self._require_started().maps:
            raise FeatureNotEnabledError("QUIC server id routing is not in this balancer object")
        try:
            action = ModifyAction(action)
        except ValueError:
            raise ValidationError("action", action, "expected ADD (0) or DEL (1)") from None
        reals = list(reals)
        for qr in reals:
            if not isinstance(qr, QuicReal):
                raise ValidationError("quic_real", qr, "expected a katran.QuicReal")
            max_id = 2**32 - 1 if self._config.enable_cid_v3 else MAX_QUIC_REAL_ID
            if not 1 <= qr.id <= max_id:
                hint = "" if self._config.enable_cid_v3 else " (larger ids need enable_cid_v3)"
                raise ValidationError("quic_real.id", qr.id, f"server id must be in [1, {max_id}]{hint}")
            if action == ModifyAction.DEL:
                num = self._quic_reals.get(qr.id)
                if num is None or self._num_to_real.get(num) != qr.address:
                    raise NotFoundError("quic real", f"{qr.address} with id {qr.id}")
        new_addrs = {qr.address for qr in reals if qr.address not in self._reals}
        if action == ModifyAction.ADD and len(new_addrs) > len(self._free_real_nums):
            raise CapacityError("modify quic reals: no free real slots (max_reals)")
        sid_map = self._map("server_id_map")
        for qr in reals:
            if action == ModifyAction.ADD:
                old = self._quic_reals.get(qr.id)
                if old is not None and self._num_to_real[old] == qr.address:
                    continue
                num = self._increase_refcount(qr.address, 0)
                self._update(sid_map, structs.u32(qr.id), structs.u32(num))
                if old is not None:
                    self._decrease_refcount(old)
                self._quic_reals[qr.id] = num
            else:
                num = self._quic_reals.pop(qr.id)
                if self._config.enable_cid_v3:
                    sid_map.delete(structs.u32(qr.id))
                else:
                    self._update(sid_map, structs.u32(qr.id), structs.u32(0))
                self._decrease_refcount(num)

    @_locked
    def get_quic_reals_mapping(self) -> list[QuicReal]:
        return [QuicReal(self._num_to_real[num], sid) for sid, num in sorted(self._quic_reals.items())]

    # ------------------------------------------------------------------ stats
    def _percpu_stats(self, map_name: str, index: int) -> list[LbStats]:
        values = self._map(map_name).lookup(structs.u32(index))
        if values is None:
            raise KernelError(f"lookup {map_name}[{index}]", 2)
        return [LbStats(*structs.lb_stats_unpack(v)) for v in values]

    def _sum_stats(self, map_name: str, index: int) -> LbStats:
        per_cpu = self._percpu_stats(map_name, index)
        return LbStats(sum(s.v1 for s in per_cpu), sum(s.v2 for s in per_cpu))

    def _global_stats(self, counter: int) -> LbStats:
        return self._sum_stats("stats", self._config.max_vips + counter)

    @_locked
    def get_stats_for_vip(self, vip: VipKey) -> LbStats:
        return self._sum_stats("stats", self._vip(vip).num)

    @_locked
    def get_lru_stats(self) -> LbStats:
        return self._global_stats(structs.LRU_CNTRS)

    @_locked
    def get_lru_miss_stats(self) -> LbStats:
        return self._global_stats(structs.LRU_MISS_CNTR)

    @_locked
    def get_lru_fallback_stats(self) -> LbStats:
        return self._global_stats(structs.FALLBACK_LRU_CNTR)

    @_locked
    def get_icmp_too_big_stats(self) -> LbStats:
        return self._global_stats(structs.ICMP_TOOBIG_CNTRS)

    @_locked
    def get_ch_drop_stats(self) -> LbStats:
        return self._global_stats(structs.CH_DROP_STATS)

    @_locked
    def get_encap_fail_stats(self) -> LbStats:
        return self._global_stats(structs.ENCAP_FAIL_CNTR)

    @_locked
    def get_malformed_stats(self) -> LbStats:
        """Packets to a VIP dropped as malformed (not in Katran): v1 an IP length field
        that contradicts the frame, v2 a martian source address."""
        return self._global_stats(structs.MALFORMED_CNTR)

    @_locked
    def get_xdp_total_stats(self) -> LbStats:
        return self._global_stats(structs.XDP_TOTAL_CNTR)

    @_locked
    def get_xdp_tx_stats(self) -> LbStats:
        return self._global_stats(structs.XDP_TX_CNTR)

    @_locked
    def get_xdp_drop_stats(self) -> LbStats:
        return self._global_stats(structs.XDP_DROP_CNTR)

    @_locked
    def get_xdp_pass_stats(self) -> LbStats:
        return self._global_stats(structs.XDP_PASS_CNTR)

    @_locked
    def get_real_stats(self, index: int) -> LbStats:
        index = check_int(index, "index", 0, self._config.max_reals - 1)
        return self._sum_stats("reals_stats", index)

    @_locked
    def get_per_core_packets_stats(self) -> list[int]:
        return [s.v1 for s in self._percpu_stats("stats", self._config.max_vips + structs.XDP_TOTAL_CNTR)]

    @_locked
    def get_katran_lb_stats(self) -> LbStats:
        return LbStats(self._bpf_failed_calls, self._addr_validation_failed)

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
            reals=None if same else [(a, m.num) for a, m in self._reals.items()],
            max_vips=self._config.max_vips, hc=self._hc, lb_stats=(self._bpf_failed_calls, self._addr_validation_failed),
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
        """Packets to SRC_ROUTING VIPs from these source prefixes go to real ``dst``."""
        self._require_feature("lpm_src_lookup", "source routing")
        dst_addr = parse_address(dst, "dst")
        nets = [self._parse_prefix(src) for src in srcs]
        new = [n for n in dict.fromkeys(nets) if n not in self._lpm_rules]
        if len(self._lpm_rules) + len(new) > self._config.max_lpm_src_size:
            raise CapacityError(f"add src routing rules: more than max_lpm_src_size={self._config.max_lpm_src_size}")
        if dst_addr not in self._reals and not self._free_real_nums:
            raise CapacityError(f"add src routing rule to {dst_addr}: no free real slots (max_reals)")
        for net in dict.fromkeys(nets):
            num = self._increase_refcount(dst_addr, 0)
            bpf_map, key = self._lpm_key(net)
            self._update(bpf_map, key, structs.u32(num))
            old = self._lpm_rules.get(net)
            self._lpm_rules[net] = num
            if old is not None:
                self._decrease_refcount(old)

    @_locked
    def del_src_routing_rule(self, srcs: Sequence[str]) -> None:
        self._require_feature("lpm_src_lookup", "source routing")
        nets = [self._parse_prefix(src) for src in srcs]
        for net in nets:
            if net not in self._lpm_rules:
                raise NotFoundError("src routing rule", net)
        for net in dict.fromkeys(nets):
            bpf_map, key = self._lpm_key(net)
            bpf_map.delete(key)
            self._decrease_refcount(self._lpm_rules.pop(net))

    @_locked
    def clear_all_src_routing_rules(self) -> None:
        self._require_feature("lpm_src_lookup", "source routing")
        self.del_src_routing_rule([str(n) for n in self._lpm_rules])

    @_locked
    def get_src_routing_rule(self) -> dict[str, str]:
        return {format_prefix(net): format_address(self._num_to_real[num]) for net, num in self._lpm_rules.items()}

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
        addr = parse_address(dst, "dst")
        if addr in self._decap_dsts:
            raise AlreadyExistsError("inline decap dst", addr)
        if len(self._decap_dsts) >= self._config.max_decap_dst:
            raise CapacityError(f"add inline decap dst {addr}: max_decap_dst={self._config.max_decap_dst} reached")
        self._update(self._map("decap_dst"), structs.address(addr), structs.u32(0))
        self._decap_dsts.append(addr)

    @_locked
    def del_inline_decap_dst(self, dst: object) -> None:
        self._require_inline_decap()
        addr = parse_address(dst, "dst")
        if addr not in self._decap_dsts:
            raise NotFoundError("inline decap dst", addr)
        self._map("decap_dst").delete(structs.address(addr))
        self._decap_dsts.remove(addr)

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
        return self._sum_stats("decap_vip_stats", self._vip(vip).num)

    # ------------------------------------------------------------------ down reals (UDP flow migration)
    def _down_map_for(self, vip: VipKey, create: bool):
        from .adapter import bpf

        outer = self._map("vip_to_down_reals_map")
        key = structs.vip_definition(vip.address, vip.port, vip.proto)
        inner_id = outer.inner_map_id(key)
        if inner_id:
            return bpf.Map.from_id(inner_id)
        if not create:
            return None
        inner = bpf.create_map(
            bpf.BPF_MAP_TYPE_HASH, 4, 1, self._config.max_reals, name="katran_down", flags=bpf.BPF_F_NO_PREALLOC
        )
        try:
            outer.set_inner_map(key, inner)
        except BaseException:
            inner.close()
            raise
        return inner

    def _down_real_num(self, address: object) -> int:
        addr = parse_address(address, "address")
        meta = self._reals.get(addr)
        if meta is None:
            raise NotFoundError("real", addr)
        return meta.num

    @_locked
    def add_down_real(self, vip: VipKey, address: object) -> None:
        """Mark a real of a VIP down: UDP_FLOW_MIGRATION flows pinned to it re-hash away."""
        self._vip(vip)
        num = self._down_real_num(address)
        with self._down_map_for(vip, create=True) as inner:
            inner.update(structs.u32(num), b"\x01")
        self._down_reals.setdefault(vip, set()).add(num)

    @_locked
    def remove_down_real(self, vip: VipKey, address: object) -> None:
        self._vip(vip)
        num = self._down_real_num(address)
        if num not in self._down_reals.get(vip, ()):
            raise NotFoundError("down real", f"{address} of vip {vip}")
        with self._down_map_for(vip, create=False) as inner:
            inner.delete(structs.u32(num))
        self._down_reals[vip].discard(num)

    @_locked
    def clear_down_reals(self, vip: VipKey) -> None:
        self._vip(vip)
        self._clear_down_reals(vip)

    def _clear_down_reals(self, vip: VipKey) -> None:
        if self._down_reals.pop(vip, None) is not None:
            self._map("vip_to_down_reals_map").delete(structs.vip_definition(vip.address, vip.port, vip.proto))

    @_locked
    def get_down_reals(self, vip: VipKey) -> list[str]:
        self._vip(vip)
        return sorted(format_address(self._num_to_real[n]) if n in self._num_to_real else f"#{n}"
                      for n in self._down_reals.get(vip, ()))

    # ------------------------------------------------------------------ feature stats
    def _counters(self, map_name: str, fields: tuple) -> dict[str, int]:
        per_cpu = self._map(map_name).lookup(structs.u32(0))
        if per_cpu is None:
            raise KernelError(f"lookup {map_name}[0]", 2)
        return structs.counters_sum(per_cpu, fields)

    @_locked
    def get_lb_quic_packets_stats(self) -> dict[str, int]:
        return self._counters("quic_stats_map", structs.QUIC_STATS_FIELDS)

    @_locked
    def get_tcp_server_id_routing_stats(self) -> dict[str, int]:
        return self._counters("tpr_stats_map", structs.TPR_STATS_FIELDS)

    @_locked
    def get_udp_stable_routing_stats(self) -> dict[str, int]:
        return self._counters("stable_rt_stats", structs.STABLE_RT_STATS_FIELDS)

    @_locked
    def get_udp_flow_migration_stats(self) -> LbStats:
        """v1: LRU entries invalidated because their real was down."""
        return self._global_stats(structs.UDP_FLOW_MIGRATION_STATS)

    @_locked
    def get_global_lru_stats(self) -> LbStats:
        return self._global_stats(structs.GLOBAL_LRU_CNTR)

    @_locked
    def get_quic_icmp_stats(self) -> LbStats:
        return self._global_stats(structs.QUIC_ICMP_STATS)

    @_locked
    def get_sid_routing_stats_for_vip(self, vip: VipKey) -> LbStats:
        return self._sum_stats("server_id_stats", self._vip(vip).num)

    # ------------------------------------------------------------------ healthchecks
    def _hc_manager(self):
        self._require_started()
        if self._hc is None:
            raise FeatureNotEnabledError("healthcheck forwarding is off (KatranConfig.enable_hc=False)")
        return self._hc

    @_locked
    def add_healthchecker_dst(self, somark: int, address: object) -> None:
        """Probes sent with SO_MARK=somark leave encapsulated toward ``address``."""
        self._hc_manager().add_dst(somark, address)

    @_locked
    def del_healthchecker_dst(self, somark: int) -> None:
        self._hc_manager().del_dst(somark)

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
        prog = self._require_started().program(BALANCER_PROG)
        res = prog.test_run(bytes(data))
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
        from .adapter import bpf

        obj = self._require_started()
        cfg = self._config
        tables, owned = [], []
        try:
            lru_mapping = obj.map("lru_mapping")
            for core in self._forwarding_cores():
                inner_id = lru_mapping.inner_map_id(core)
                if inner_id:
                    inner = bpf.Map.from_id(inner_id)
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
            num_to_real=dict(self._num_to_real), lpm_rules=dict(self._lpm_rules),
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
            return flows.delete_lru(view, vip, src, src_port)

    @_locked
    def purge_vip_lru(self, vip: Optional[VipKey] = None, *, real: object = None, src: object = None) -> dict:
        """Delete every entry of a VIP (and/or of a real, a client prefix); per table counts
        (Katran's purgeVipLru / purgeVipLruForReal)."""
        from . import flows

        with self._flow_view() as view:
            return flows.purge_lru(view, vip, real=real, src=src)


# Public methods that change the configuration: each successful outermost call bumps
# KatranLb.config_generation (a call made by another one counts once).
MUTATING_METHODS = (
    "change_mac", "add_vip", "del_vip", "modify_vip", "change_hash_function_for_vip",
    "add_real_for_vip", "del_real_for_vip", "modify_reals_for_vip", "modify_real",
    "modify_quic_reals_mapping", "add_src_routing_rule", "del_src_routing_rule",
    "clear_all_src_routing_rules", "add_inline_decap_dst", "del_inline_decap_dst",
    "add_down_real", "remove_down_real", "clear_down_reals", "add_healthchecker_dst",
    "del_healthchecker_dst",
)


def _counts_generation(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def wrapper(self: KatranLb, *args, **kwargs):
        with self._lock:
            self._mutation_depth += 1
            try:
                result = method(self, *args, **kwargs)
            finally:
                self._mutation_depth -= 1
                if self._mutation_depth == 0:
                    self._state_version += 1
            if self._mutation_depth == 0:
                self._config_generation += 1
            return result

    return wrapper


for _name in MUTATING_METHODS:
    setattr(KatranLb, _name, _counts_generation(getattr(KatranLb, _name)))
del _name
