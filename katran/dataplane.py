"""The balancer's data-plane objects: size the maps, set the knobs, load, provision,
attach (standalone XDP or a shared-mode slot), read counters, close.

``KatranLb`` owns one :class:`DataPlane`; it knows BPF objects, maps and programs by
name, never VIPs or reals.  Every kernel call goes through the injected
:class:`katran.kernel.Kernel`.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional

from . import contract, shared, structs
from .config import KatranConfig
from .errors import BuildError, FeatureNotEnabledError, KatranError, KernelError, NotStartedError
from .healthcheck import HcManager
from .kernel import BPF_F_NO_PREALLOC, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_LRU_PERCPU_HASH, Kernel
from .models import LbStats

OBJ_DIR = Path(__file__).resolve().parent / "bpf" / "obj"
BALANCER_PROG = "balancer_ingress"
XDP_VERDICTS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}
# KatranConfig fields written into the balancer's `const volatile` knobs before load
KNOBS = (
    "gue_encap", "gue_dport", "tcp_server_id_routing", "udp_stable_routing", "lpm_src_lookup",
    "global_lru", "local_delivery", "icmp_toobig_generation", "inline_decap_ipip", "inline_decap_gue",
    "decap_strict_destination", "max_pckt_size", "lru_udp_timeout_ns", "max_conn_rate",
)
RECIRC_SLOT = 0  # the balancer's own slot in its `subprograms` prog array
GLOBAL_COUNTER_SLOTS = 32  # global counters live at stats[max_vips + 0..31]


def packaged_object(name: str) -> Path:
    """Path of a packaged BPF object; BuildError telling how to build it if missing."""
    path = OBJ_DIR / name
    if not path.is_file():
        raise BuildError(
            f"BPF object {path} is missing: build it with `pip install -e .` "
            f"or `python -m katran.build` (needs clang and libbpf-dev)"
        )
    return path


def map_sizes(cfg: KatranConfig) -> dict[str, int]:
    """max_entries of every sized balancer map (all must exist in the object)."""
    return {
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
        "capture_ring": cfg.capture_ring_size,
        "server_id_map": cfg.max_server_ids,
    }


class DataPlane:
    """The loaded balancer object (and the healthcheck program when ``enable_hc``)."""

    def __init__(self, config: KatranConfig, kernel: Kernel) -> None:
        self.config = config
        self.kernel = kernel
        self.obj = None
        self.abi: Optional[contract.Binding] = None  # what the balancer object has
        self.hc: Optional[HcManager] = None
        self._lru_maps: list = []
        self._attached_ifindex: Optional[int] = None
        self._registered_root: Optional[tuple] = None

    @property
    def started(self) -> bool:
        return self.obj is not None

    # ---------------------------------------------------------------- life cycle
    def start(self, mac: bytes) -> None:
        cfg = self.config
        path = Path(cfg.balancer_prog_path) if cfg.balancer_prog_path else packaged_object("balancer.bpf.o")
        spec = self.kernel.open_object(path)
        try:
            # our own object must match the contract fully (ContractError names what differs);
            # a user-supplied one (balancer_prog_path) may lack maps and knobs
            self.abi = contract.BALANCER.check(path, strict=not cfg.balancer_prog_path)
            self._size_maps(spec)
            self._set_knobs(spec)
            obj = spec.load()
        finally:
            spec.close()
        self.obj = obj
        try:
            self._provision(mac)
            if cfg.enable_hc:
                self.hc = HcManager.from_config(cfg, kernel=self.kernel)
                self.hc.load()
            if not cfg.testing:
                self._attach()
                if self.hc is not None:
                    self.hc.attach()
        except BaseException:
            self.close()
            raise

    def _size_maps(self, spec) -> None:
        """max_entries of every map; a map the object lacks is a BuildError (the packaged object
        never gets here without all of them: the contract check is strict for it)."""
        cfg = self.config
        abi = self.abi
        sizes = {name: size for name, size in map_sizes(cfg).items() if abi.has_map(name)}
        if cfg.enable_cid_v3:
            if not abi.has_map("server_id_map"):
                raise FeatureNotEnabledError(f"enable_cid_v3: the balancer object {spec.path} has no server_id_map")
            # 32-bit server ids do not fit an array: the same lookups work on a hash
            spec.set_map_type("server_id_map", BPF_MAP_TYPE_HASH)
        inner = {"vip_to_down_reals_map", "lru_mapping"} | ({"global_lru_maps"} if cfg.global_lru else set())
        missing = sorted(n for n in (set(sizes) | {n for n in inner if abi.has_map(n)}) if n not in spec.map_names)
        if missing:
            raise BuildError(f"the balancer object {spec.path} has no map(s) {', '.join(missing)}")
        for name, size in sizes.items():
            spec.set_max_entries(name, size)
        if abi.has_map("vip_to_down_reals_map"):
            spec.set_inner_map_max_entries("vip_to_down_reals_map", cfg.max_reals)
        numa = cfg.numa_nodes
        if abi.has_map("lru_mapping"):
            # per-core LRUs must match the template, BPF_F_NUMA_NODE flag included
            spec.set_inner_map_max_entries("lru_mapping", self._per_core_lru_size(),
                                           numa_node=numa[0] if numa else None)
        if cfg.global_lru and abi.has_map("global_lru_maps"):
            spec.set_inner_map_max_entries("global_lru_maps", cfg.global_lru_size,
                                           numa_node=numa[0] if numa else None)

    def _set_knobs(self, spec) -> None:
        cfg = self.config
        knobs = {"ring_size": cfg.ch_ring_size, "max_vips": cfg.max_vips}
        knobs.update({name: int(getattr(cfg, name)) for name in KNOBS})
        for name, value in knobs.items():
            if self.abi.has_knob(name):
                spec.set_rodata(name, value)
        missing = [n for n in KNOBS if getattr(cfg, n) is True and not self.abi.has_knob(n)]
        if missing:
            raise FeatureNotEnabledError(f"the balancer object {spec.path} has no knob(s) {', '.join(missing)}")

    @property
    def attached(self) -> bool:
        """Attached to the interface (standalone) or registered in the root program (shared)."""
        return self._attached_ifindex is not None or self._registered_root is not None

    def forwarding_cores(self) -> tuple:
        cfg = self.config
        if cfg.forwarding_cores is None:
            # production default: every CPU gets its own LRU (testing: fallback LRU only)
            return () if cfg.testing else tuple(range(os.cpu_count() or 1))
        return cfg.forwarding_cores

    def _per_core_lru_size(self) -> int:
        cores = self.forwarding_cores()
        return max(1, self.config.lru_size // len(cores)) if cores else 1000

    def _provision(self, mac: bytes) -> None:
        cfg = self.config
        k = self.kernel
        lru_mapping = self.map("lru_mapping")
        fallback = self.map("fallback_cache")
        numa = cfg.numa_nodes
        for i, core in enumerate(self.forwarding_cores()):
            node = numa[i] if numa else None
            inner = k.create_map(BPF_MAP_TYPE_LRU_HASH, fallback.key_size, fallback.value_size,
                                 self._per_core_lru_size(), name=f"katran_lru_{core}", numa_node=node)
            self._lru_maps.append(inner)
            lru_mapping.update(structs.u32(core), structs.u32(inner.fd))
            if cfg.global_lru:
                glru = k.create_map(BPF_MAP_TYPE_LRU_PERCPU_HASH, fallback.key_size, 4, cfg.global_lru_size,
                                    name=f"katran_glru_{core}", numa_node=node)
                self._lru_maps.append(glru)
                self.map("global_lru_maps").update(structs.u32(core), structs.u32(glru.fd))
        self.map("ctl_array").update(structs.u32(structs.CTL_MAC_POS), structs.ctl_value_mac(mac))
        if self.abi.has_map("pckt_srcs"):
            srcs = self.map("pckt_srcs")
            # outer source of GUE packets, and "this host" for strict inline decap
            for pos, src in ((0, cfg.katran_src_v4), (1, cfg.katran_src_v6)):
                if src is not None:
                    srcs.update(structs.u32(pos), structs.real_definition(src, 0))
        if cfg.inline_decap_ipip or cfg.inline_decap_gue:
            # recirculation: a decapsulated packet is balanced again by a tail call
            prog = self.obj.program(BALANCER_PROG)
            self.map("subprograms").update(structs.u32(RECIRC_SLOT), structs.u32(prog.fd))

    def _attach(self) -> None:
        cfg = self.config
        prog = self.obj.program(BALANCER_PROG)
        if cfg.root_map_path:
            shared.register(prog, cfg.root_map_path, cfg.root_map_pos, kernel=self.kernel)
            self._registered_root = (cfg.root_map_path, cfg.root_map_pos)
        else:
            ifindex = self.kernel.ifindex(cfg.main_interface)
            prog.attach_xdp(ifindex, cfg.xdp_attach_mode, replace=True)
            self._attached_ifindex = ifindex

    def close(self) -> None:
        """Detach / unregister, then release every fd.  Safe to call twice."""
        errors = []
        if self._attached_ifindex is not None and self.config.cleanup_on_shutdown:
            try:
                # only our own program: a newer instance may have replaced it already
                mode = self.config.xdp_attach_mode
                ours = self.obj.program(BALANCER_PROG).id
                if self.kernel.xdp_attached_prog_id(self._attached_ifindex, mode) == ours:
                    self.kernel.detach_xdp(self._attached_ifindex, mode)
            except KatranError as e:
                errors.append(e)
        self._attached_ifindex = None
        if self._registered_root is not None:
            try:
                shared.unregister(*self._registered_root, kernel=self.kernel)
            except KatranError as e:
                errors.append(e)
            self._registered_root = None
        if self.hc is not None:
            try:
                self.hc.close(detach=self.config.cleanup_on_shutdown)
            except KatranError as e:
                errors.append(e)
            self.hc = None
        for m in self._lru_maps:
            m.close()
        self._lru_maps.clear()
        if self.obj is not None:
            self.obj.close()
            self.obj = None
        self.abi = None
        if errors:
            raise errors[0]

    # ---------------------------------------------------------------- access
    def require_started(self):
        if self.obj is None:
            raise NotStartedError("KatranLb is not started: call start() first")
        return self.obj

    def map(self, name: str):
        return self.require_started().map(name)

    def has_map(self, name: str) -> bool:
        return name in self.require_started().maps

    def program(self, name: str = BALANCER_PROG):
        return self.require_started().program(name)

    def create_down_reals_map(self):
        """An inner map of vip_to_down_reals_map (real index -> 1)."""
        return self.kernel.create_map(BPF_MAP_TYPE_HASH, 4, 1, self.config.max_reals, name="katran_down",
                                      flags=BPF_F_NO_PREALLOC)

    # ---------------------------------------------------------------- counters
    def percpu_stats(self, map_name: str, index: int) -> list[LbStats]:
        values = self.map(map_name).lookup(structs.u32(index))
        if values is None:
            raise KernelError(f"lookup {map_name}[{index}]", errno.ENOENT)
        return [LbStats(*structs.lb_stats_unpack(v)) for v in values]

    def sum_stats(self, map_name: str, index: int) -> LbStats:
        per_cpu = self.percpu_stats(map_name, index)
        return LbStats(sum(s.v1 for s in per_cpu), sum(s.v2 for s in per_cpu))

    def global_stats(self, counter: int) -> LbStats:
        return self.sum_stats("stats", self.config.max_vips + counter)

    def counters(self, map_name: str, fields: tuple) -> dict[str, int]:
        per_cpu = self.map(map_name).lookup(structs.u32(0))
        if per_cpu is None:
            raise KernelError(f"lookup {map_name}[0]", errno.ENOENT)
        return structs.counters_sum(per_cpu, fields)

    def test_run(self, data: bytes):
        return self.program(BALANCER_PROG).test_run(data)
