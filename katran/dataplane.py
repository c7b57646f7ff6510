"""The balancer's data-plane objects: size the maps, set the knobs, load, provision,
attach (standalone XDP or a shared-mode slot), read counters, close.

``KatranLb`` owns one :class:`DataPlane`; it knows BPF objects, maps and programs by
name, never VIPs or reals.  Every kernel call goes through the injected
:class:`katran.kernel.Kernel`.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Optional

from . import contract, shared, state, structs
from .config import KatranConfig
from .errors import BuildError, FeatureNotEnabledError, KatranError, KernelError, NotStartedError
from .healthcheck import HcManager
from .kernel import BPF_F_NO_PREALLOC, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_LRU_PERCPU_HASH, Kernel
from .models import LbStats

log = logging.getLogger("katran.dataplane")

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
# maps whose contents the data plane may lose: an upgrade to an object without them (a
# rollback to a build before the flow cache) drops them instead of being refused
DISPOSABLE_MAPS = ("flow_cache", "flow_cache_stale")
GLOBAL_COUNTER_SLOTS = 32  # global counters live at stats[max_vips + 0..31]


class _Subset:
    """Some maps and every program of a loaded object (what ``state.pin_object`` pins)."""

    def __init__(self, obj, map_names) -> None:
        self.maps = {n: obj.maps[n] for n in map_names}
        self.programs = obj.programs


def state_safe(text: object) -> str:
    from .errors import safe_text

    return safe_text(text, 64)


def packaged_object(name: str) -> Path:
    """Path of a packaged BPF object; BuildError telling how to build it if missing."""
    path = OBJ_DIR / name
    if not path.is_file():
        raise BuildError(
            f"BPF object {path} is missing: build it with `pip install -e .` "
            f"or `python -m katran.build` (needs clang and libbpf-dev)"
        )
    return path


def lru_cores(cfg: KatranConfig) -> tuple:
    """The CPUs that get a connection table of their own (``forwarding_cores``; None: every
    CPU, but none when testing: the fallback LRU serves all)."""
    if cfg.forwarding_cores is None:
        return () if cfg.testing else tuple(range(os.cpu_count() or 1))
    return cfg.forwarding_cores


def map_sizes(cfg: KatranConfig) -> dict[str, int]:
    """max_entries of every sized balancer map (all must exist in the object)."""
    cores = lru_cores(cfg)
    return {
        # FLOW_CACHE_SLOTS for each cpu up to the highest with its own connection table
        # (only those use the flow cache; with none, one block nobody uses)
        "flow_cache": contract.FLOW_CACHE_SLOTS * (max(cores) + 1 if cores else 1),
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


class AttachRefusedError(KatranError):
    """The interface carries a program this instance does not own (refused without ``force``)."""


class IncompatibleObjectError(KatranError):
    """A newer balancer object whose maps do not fit the live ones (hitless upgrade refused)."""


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
        self._instance_lock: Optional[state.InstanceLock] = None
        self._pins: Optional[dict] = None  # what we pinned / adopted (persisting only)
        self._old_own_ids: set = set()  # programs of an earlier instance of ours (pinned)
        self.adopted = False  # started by adopting a running data plane
        self.upgraded_from: Optional[int] = None  # program id replaced by a hitless upgrade at start
        self.object_identity: Optional[dict] = None
        self.hc_object_identity: Optional[dict] = None  # the healthcheck program's object file

    @property
    def started(self) -> bool:
        return self.obj is not None

    @property
    def persisting(self) -> bool:
        """Pins + state file + instance lock: ``persist`` on, attached (standalone or shared)."""
        cfg = self.config
        return cfg.persist and not cfg.testing

    @property
    def attach_point(self) -> str:
        """Where the program runs, for messages: the interface, or the root array's slot."""
        return describe_attach(self.attach_record())

    def attach_record(self) -> dict:
        """Where this config attaches the program (the state file keeps it as ``attach``)."""
        cfg = self.config
        if cfg.root_map_path:
            return {"root_map_path": os.fspath(cfg.root_map_path), "root_map_pos": cfg.root_map_pos}
        return {"interface": cfg.main_interface, "xdp_attach_mode": cfg.xdp_attach_mode}

    @property
    def pin_dir(self) -> Path:
        return state.pin_dir_for(self.config)

    @property
    def state_path(self) -> Path:
        return state.state_dir_for(self.config) / state.STATE_FILE

    # ---------------------------------------------------------------- life cycle
    def start(self, mac: bytes) -> Optional[dict]:
        """Load (or adopt) the data plane.  Returns the saved state when the running data
        plane was adopted (nothing loaded, attached or written), None after a fresh load."""
        if not self.persisting:
            self._start_fresh(mac)
            return None
        cfg = self.config
        lock = state.InstanceLock(state.state_dir_for(cfg), f"interface {cfg.main_interface}")
        lock.acquire()  # a second instance stops here, having touched nothing
        self._instance_lock = lock
        try:
            saved = self._try_adopt()
            if saved is None:
                self._start_fresh(mac)
            return saved
        except BaseException:
            self._release_lock()
            raise

    def _pinned_prog_id(self, name: str) -> int:
        path = self.pin_dir / name
        if not self.kernel.is_pinned(path):
            return 0
        prog = self.kernel.program_by_pin(path)
        try:
            return prog.id
        finally:
            prog.close()

    def _describe_prog(self, prog_id: int) -> str:
        try:
            prog = self.kernel.program_by_id(prog_id)
        except KatranError:
            return f"program id {prog_id}"
        try:
            return f"program id {prog_id} ({state_safe(prog.name)})"
        finally:
            prog.close()

    def _try_adopt(self) -> Optional[dict]:
        """Adopt the running data plane when our pinned program is the attached one (on the
        interface, or in shared mode in our slot of the root array)."""
        cfg = self.config
        k = self.kernel
        here = self.attach_record()
        ifindex = None if cfg.root_map_path else k.ifindex(cfg.main_interface)
        attached = prog_at(k, here)
        pinned = self._pinned_prog_id(state.PROG_PIN)
        self._old_own_ids = {i for i in (pinned, self._pinned_prog_id(state.HC_PREFIX + "healthcheck_encap")) if i}
        if not attached or attached != pinned:
            self._check_not_moved(pinned, here)
            return None  # nothing of ours runs: a fresh start (stale pins are replaced)
        try:
            saved = state.read(self.state_path)
            if saved is None:
                raise state.StateError(f"state file {self.state_path} is missing")
            diffs = state.sizing_differences(saved.get("config", {}), cfg)
            if diffs:
                raise state.StateError(
                    f"the running data plane was made with other settings ({'; '.join(diffs)})")
        except state.StateError as exc:
            if not cfg.force_reload:
                raise state.StateError(
                    f"cannot adopt the data plane running on {self.attach_point} "
                    f"({self._describe_prog(attached)}): {exc}; start with the same settings, or with "
                    f"force_reload (-force_reload) to load a fresh one in its place (loses the LRU -- "
                    f"established flows may move to other reals -- and every VIP, real and route not "
                    f"re-applied by -config)") from None
            log.warning("force_reload: replacing the running data plane on %s (%s): %s; LRU and saved "
                        "state are lost", self.attach_point, self._describe_prog(attached), exc)
            return None
        pins = saved["pins"]
        path = Path(cfg.balancer_prog_path) if cfg.balancer_prog_path else packaged_object("balancer.bpf.o")
        self.abi = contract.BALANCER.check(path, strict=not cfg.balancer_prog_path)
        obj = state.PinnedObject.open(k, self.pin_dir, pins["maps"], pins["programs"])
        self.obj = obj
        self._pins = dict(pins)
        try:
            if obj.program(BALANCER_PROG).id != attached:  # replaced while we opened the pins
                raise state.StateError(f"the program on {self.attach_point} changed during adoption")
            identity = state.object_identity(path)
            if saved.get("object") not in (None, identity):
                try:
                    self._upgrade(path, ifindex)
                except IncompatibleObjectError as exc:
                    if not cfg.force_reload:
                        raise IncompatibleObjectError(
                            f"cannot upgrade the data plane on {self.attach_point} "
                            f"({self._describe_prog(attached)}) to {path} in place: {exc}; nothing was changed. "
                            f"Use an object with the same map layout, or force_reload (-force_reload) to load it "
                            f"with fresh maps (loses the LRU -- established flows may move to other reals -- and "
                            f"every VIP, real and route not re-applied by -config)") from None
                    log.warning("force_reload: %s: %s; loading it with fresh maps, the LRU and saved state are "
                                "lost", path, exc)
                    self._close_handles()
                    self._pins = None
                    return None
            self.object_identity = identity
            if cfg.enable_hc:
                self.hc = HcManager.from_config(cfg, kernel=k)
                self.hc.adopt(self.pin_dir, pins.get("hc_maps", ()), pins.get("hc_programs", ()),
                              saved.get("hc_dsts", ()), force=cfg.force, identity=saved.get("hc_object"))
                self.hc_object_identity = state.object_identity(self.hc.prog_path)
                if self.hc.upgraded_from is not None or not pins.get("hc_programs"):
                    self._repin_hc(pins)
        except BaseException:
            self._close_handles()
            self._pins = None
            raise
        if cfg.root_map_path:
            self._registered_root = (cfg.root_map_path, cfg.root_map_pos)
        else:
            self._attached_ifindex = ifindex
        self.adopted = True
        return saved

    def _check_not_moved(self, pinned: int, here: dict) -> None:
        """Refuse a start elsewhere while our pinned program still runs where the state file
        says the last instance attached it (another -prog_pos, -map_path or interface): two
        balancers would run, the old one with the old state. force_reload takes it out of
        there (only if it is still ours) and lets this start load a fresh data plane."""
        if not pinned:
            return
        try:
            saved = state.read(self.state_path)
        except state.StateError:
            return  # refused or replaced by the adoption rules that follow
        there = (saved or {}).get("attach")
        if not isinstance(there, dict) or there == here:
            return
        try:
            running = prog_at(self.kernel, there)
        except KatranError:
            return  # that attach point is gone (its interface or root array)
        if running != pinned:
            return
        where = describe_attach(there)
        if not self.config.force_reload:
            raise state.StateError(
                f"the data plane of this instance runs on {where} ({self._describe_prog(pinned)}), not on "
                f"{self.attach_point} where this start attaches: start with the same attach point to adopt it, "
                f"remove it first (katran-teardown), or start with force_reload (-force_reload) to take it "
                f"out of there and load a fresh data plane here (loses the LRU -- established flows may move "
                f"to other reals -- and every VIP, real and route not re-applied by -config)")
        log.warning("force_reload: taking the data plane of this instance (%s) out of %s; a fresh one is "
                    "loaded on %s", self._describe_prog(pinned), where, self.attach_point)
        remove_prog_at(self.kernel, there, pinned)

    def _check_attach_target(self) -> Optional[int]:
        """Refuse (unless ``force``) an interface whose XDP program is not ours -- in shared
        mode a slot that holds a program not ours; returns the ifindex (standalone)."""
        cfg = self.config
        if cfg.testing:
            return None
        if cfg.root_map_path:
            if self.persisting:
                found = shared.slot_prog_id(cfg.root_map_path, cfg.root_map_pos, kernel=self.kernel)
                if found and found not in self._old_own_ids and not cfg.force:
                    raise AttachRefusedError(
                        f"{self.attach_point} already holds a program that is not this instance's: "
                        f"{self._describe_prog(found)}; refusing to replace it (nothing was changed); take it "
                        f"out (or use another -prog_pos), or start with force (-force) to replace it")
            return None
        ifindex = self.kernel.ifindex(cfg.main_interface)
        if not self.persisting:
            return ifindex
        attached = self.kernel.xdp_attached_prog_id(ifindex, cfg.xdp_attach_mode)
        if attached and attached not in self._old_own_ids and not cfg.force:
            raise AttachRefusedError(
                f"interface {cfg.main_interface} already has an XDP program ({cfg.xdp_attach_mode}) that is not "
                f"this instance's: {self._describe_prog(attached)}; refusing to replace it (nothing was changed); "
                f"detach it, or start with force (-force) to replace it")
        return ifindex

    def _start_fresh(self, mac: bytes) -> None:
        cfg = self.config
        self._check_attach_target()
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
        if self.persisting:
            self.object_identity = state.object_identity(path)
        try:
            self._provision(mac)
            if cfg.enable_hc:
                self.hc = HcManager.from_config(cfg, kernel=self.kernel)
                self.hc.load()
                if self.persisting:
                    self.hc_object_identity = state.object_identity(self.hc.prog_path)
            if not cfg.testing:
                self._attach()
                if self.hc is not None:
                    self.hc.attach(own_ids=self._old_own_ids, force=cfg.force)
            if self.persisting:
                self._pin()
        except BaseException:
            self.close()
            raise

    def _repin_hc(self, pins: dict) -> None:
        """The healthcheck object changed at adoption (upgraded, or loaded where the earlier
        instance ran none): its pins replace the old ones."""
        k = self.kernel
        hc_obj = self.hc.loaded_object
        old_maps = set(pins.get("hc_maps", ()))
        fresh = [n for n in hc_obj.maps if n not in old_maps or not self.hc.maps_reused]
        for name in pins.get("hc_programs", ()):
            k.unpin(self.pin_dir / (state.HC_PREFIX + name))
        if not self.hc.maps_reused:
            for name in old_maps:
                k.unpin(self.pin_dir / (state.HC_PREFIX + name))
        state.pin_object(k, _Subset(hc_obj, fresh), self.pin_dir, state.HC_PREFIX)
        self._pins["hc_maps"] = sorted(hc_obj.maps)
        self._pins["hc_programs"] = sorted(hc_obj.programs)

    def _pin(self) -> None:
        """Replace stale pins of an earlier instance with ours."""
        k = self.kernel
        k.ensure_bpffs()
        k.remove_pin_dir(self.pin_dir)
        k.make_pin_dir(self.pin_dir)
        self._pins = {"maps": [], "programs": []}  # set before pinning: close() removes the directory
        state.pin_object(k, self.obj, self.pin_dir)
        self._pins = {"maps": sorted(self.obj.maps), "programs": sorted(self.obj.programs)}
        if self.hc is not None:
            hc_obj = self.hc.loaded_object
            state.pin_object(k, hc_obj, self.pin_dir, state.HC_PREFIX)
            self._pins["hc_maps"] = sorted(hc_obj.maps)
            self._pins["hc_programs"] = sorted(hc_obj.programs)

    def _upgrade(self, path: Path, ifindex: Optional[int]) -> None:
        """Hitless upgrade: load ``path`` reusing every live map (LRU included), then swap the
        XDP program atomically (XDP_FLAGS_REPLACE with the old program as the expected one;
        in shared mode the slot of the root array, compared and swapped under its lock)."""
        cfg = self.config
        k = self.kernel
        live = self.obj
        old_prog = live.program(BALANCER_PROG)
        spec = k.open_object(path)
        try:
            try:
                abi = contract.BALANCER.check(path, strict=not cfg.balancer_prog_path)
            except KatranError as exc:
                raise IncompatibleObjectError(str(exc)) from None
            self.abi = abi
            try:
                self._size_maps(spec)
                self._set_knobs(spec)
            except KatranError as exc:
                raise IncompatibleObjectError(str(exc)) from None
            names = set(spec.map_names)
            dropped = [n for n in live.maps if n not in names and n in DISPOSABLE_MAPS]
            problems = state.map_misfits({n: m for n, m in live.maps.items() if n not in dropped}, spec)
            if problems:
                raise IncompatibleObjectError("; ".join(problems))
            for name, m in live.maps.items():
                if name not in dropped:
                    spec.reuse_map_fd(name, m.fd)
            new = spec.load()
        finally:
            spec.close()
        new_prog = new.program(BALANCER_PROG)
        recirc = (cfg.inline_decap_ipip or cfg.inline_decap_gue) and "subprograms" in new.maps
        try:
            # the VIP filter is whole only once this control plane has written it (the old
            # program's may not have kept it): until then the new program looks every VIP up
            new.map("ctl_array").update(structs.u32(structs.CTL_VIP_FILTER_DONE), structs.ctl_value_u64(0))
            if recirc:
                new.map("subprograms").update(structs.u32(RECIRC_SLOT), structs.u32(new_prog.fd))
            if cfg.root_map_path:  # the root tail-calls the old program or the new one: no gap
                shared.register(new_prog, cfg.root_map_path, cfg.root_map_pos, kernel=k, expected_id=old_prog.id)
            else:
                new_prog.attach_xdp(ifindex, cfg.xdp_attach_mode, expected_prog_fd=old_prog.fd)  # no gap
        except BaseException:
            if recirc:
                try:
                    new.map("subprograms").update(structs.u32(RECIRC_SLOT), structs.u32(old_prog.fd))
                except KatranError:
                    pass
            new.close()
            raise
        old_id = old_prog.id
        # the new program (and maps the old object lacked) replace the old pins
        for name in new.programs:
            k.unpin(self.pin_dir / name)
        added = [n for n in new.maps if n not in live.maps]
        state.pin_object(k, _Subset(new, added), self.pin_dir)
        for name in dropped:  # caches the new program does not have: nothing reads them now
            k.unpin(self.pin_dir / name)
        live.close()
        self.obj = new
        self._pins = {**self._pins, "maps": sorted(new.maps), "programs": sorted(new.programs)}
        self.upgraded_from = old_id
        if dropped:
            log.info("hitless upgrade on %s: program id %d replaced by %d (%s), every map kept but "
                     "%s (not in the new object)", self.attach_point, old_id, new_prog.id, path,
                     ", ".join(dropped))
        else:
            log.info("hitless upgrade on %s: program id %d replaced by %d (%s), every map kept",
                     self.attach_point, old_id, new_prog.id, path)

    def pins(self) -> dict:
        return dict(self._pins) if self._pins is not None else {}

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
        return lru_cores(self.config)

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
            prog.attach_xdp(ifindex, cfg.xdp_attach_mode, replace=True)  # atomic: no gap
            self._attached_ifindex = ifindex

    def close(self, keep: bool = False) -> None:
        """Release every fd.  ``keep=False`` (a teardown, when ``cleanup_on_shutdown``): detach /
        unregister our programs first and remove our pins and state file.  ``keep=True`` (a
        restart-friendly stop): leave the data plane attached and pinned.  Safe to call twice."""
        errors = []
        teardown = not keep and self.config.cleanup_on_shutdown
        if self._attached_ifindex is not None and teardown:
            try:
                # only our own program: a newer instance may have replaced it already
                mode = self.config.xdp_attach_mode
                ours = self.obj.program(BALANCER_PROG).id
                if self.kernel.xdp_attached_prog_id(self._attached_ifindex, mode) == ours:
                    self.kernel.detach_xdp(self._attached_ifindex, mode)
            except KatranError as e:
                errors.append(e)
        self._attached_ifindex = None
        if self._registered_root is not None and teardown:
            try:
                # only our own program: a newer instance may have replaced it already
                ours = self.obj.program(BALANCER_PROG).id
                shared.unregister(*self._registered_root, kernel=self.kernel, expected_id=ours)
            except KatranError as e:
                errors.append(e)
        self._registered_root = None
        if self.hc is not None:
            try:
                self.hc.close(detach=teardown)
            except KatranError as e:
                errors.append(e)
            self.hc = None
        if teardown and self._pins is not None:
            try:
                self.kernel.remove_pin_dir(self.pin_dir)
                state.remove(self.state_path)
            except (KatranError, OSError) as e:
                errors.append(e if isinstance(e, KatranError) else KernelError(f"remove {self.state_path}",
                                                                               e.errno or errno.EIO))
        self._pins = None
        self._close_handles()
        self._release_lock()
        self.adopted = False
        if errors:
            raise errors[0]

    def _close_handles(self) -> None:
        if self.hc is not None:
            self.hc.close(detach=False)
            self.hc = None
        for m in self._lru_maps:
            m.close()
        self._lru_maps.clear()
        if self.obj is not None:
            self.obj.close()
            self.obj = None
        self.abi = None

    def _release_lock(self) -> None:
        if self._instance_lock is not None:
            self._instance_lock.release()
            self._instance_lock = None

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

    def percpu_global(self, counter: int) -> list[LbStats]:
        """A global counter on each cpu: its stats slot plus its pair in hot_stats (where
        the per-packet path counts; an object without hot_stats: the slot alone)."""
        per_cpu = self.percpu_stats("stats", self.config.max_vips + counter)
        if counter >= contract.HOT_STAT_PAIRS or not self.has_map("hot_stats"):
            return per_cpu
        hot = self.map("hot_stats").lookup(structs.u32(0))
        if hot is None:
            raise KernelError("lookup hot_stats[0]", errno.ENOENT)
        pairs = (structs.lb_stats_unpack(v[16 * counter:16 * counter + 16]) for v in hot)
        return [LbStats(s.v1 + h1, s.v2 + h2) for s, (h1, h2) in zip(per_cpu, pairs)]

    def global_stats(self, counter: int) -> LbStats:
        per_cpu = self.percpu_global(counter)
        return LbStats(sum(s.v1 for s in per_cpu), sum(s.v2 for s in per_cpu))

    def counters(self, map_name: str, fields: tuple) -> dict[str, int]:
        per_cpu = self.map(map_name).lookup(structs.u32(0))
        if per_cpu is None:
            raise KernelError(f"lookup {map_name}[0]", errno.ENOENT)
        return structs.counters_sum(per_cpu, fields)

    def test_run(self, data: bytes):
        return self.program(BALANCER_PROG).test_run(data)


def describe_attach(record: dict) -> str:
    """An attach point (DataPlane.attach_record's form) for messages."""
    if "root_map_path" in record:
        return f"slot {record['root_map_pos']} of {record['root_map_path']}"
    return str(record.get("interface"))


def prog_at(kernel: Kernel, record: dict) -> int:
    """The id of the program at an attach point (0: none, or the interface or root array is gone)."""
    if "root_map_path" in record:
        return shared.slot_prog_id(record["root_map_path"], int(record["root_map_pos"]), kernel=kernel)
    try:
        ifindex = kernel.ifindex(record["interface"])
    except KatranError:
        return 0
    return kernel.xdp_attached_prog_id(ifindex, record.get("xdp_attach_mode", "native"))


def remove_prog_at(kernel: Kernel, record: dict, prog_id: int) -> bool:
    """Detach / unregister program ``prog_id`` from an attach point, only if it is still there."""
    if "root_map_path" in record:
        return shared.unregister(record["root_map_path"], int(record["root_map_pos"]), kernel=kernel,
                                 expected_id=prog_id)
    mode = record.get("xdp_attach_mode", "native")
    try:
        ifindex = kernel.ifindex(record["interface"])
    except KatranError:
        return False
    if kernel.xdp_attached_prog_id(ifindex, mode) != prog_id:
        return False
    kernel.detach_xdp(ifindex, mode)
    return True


def teardown(config: KatranConfig, kernel: Optional[Kernel] = None) -> list[str]:
    """Remove what a persisting instance left on ``config.main_interface`` (its XDP program,
    its healthcheck tc filter, its pins, its state file and lock) without a running server.
    Refused while an instance runs (it holds the lock). Returns what was removed."""
    from .kernel import resolve

    k = resolve(kernel)
    cfg = config
    state_dir = state.state_dir_for(cfg)
    pin_dir = state.pin_dir_for(cfg)
    lock = state.InstanceLock(state_dir, f"interface {cfg.main_interface}")
    lock.acquire()
    removed: list[str] = []
    try:
        def pinned_id(name: str) -> int:
            path = pin_dir / name
            if not k.is_pinned(path):
                return 0
            prog = k.program_by_pin(path)
            try:
                return prog.id
            finally:
                prog.close()

        prog_id = pinned_id(state.PROG_PIN)
        hc_id = pinned_id(state.HC_PREFIX + "healthcheck_encap")
        try:
            ifindex = k.ifindex(cfg.main_interface)
        except KatranError:
            ifindex = None  # the interface is gone: so is its XDP program
        if ifindex is not None and prog_id and k.xdp_attached_prog_id(ifindex, cfg.xdp_attach_mode) == prog_id:
            k.detach_xdp(ifindex, cfg.xdp_attach_mode)
            removed.append(f"xdp program id {prog_id} on {cfg.main_interface}")
        # shared mode: our slot of the root array (the config's, and where the state file says)
        slots = []
        if cfg.root_map_path:
            slots.append({"root_map_path": os.fspath(cfg.root_map_path), "root_map_pos": cfg.root_map_pos})
        try:
            saved = state.read(state_dir / state.STATE_FILE) or {}
        except state.StateError:
            saved = {}
        there = saved.get("attach")
        if isinstance(there, dict) and "root_map_path" in there and there not in slots:
            slots.append(there)
        for rec in slots:
            if prog_id and remove_prog_at(k, rec, prog_id):
                removed.append(f"program id {prog_id} from {describe_attach(rec)}")
        if hc_id:
            for name in dict.fromkeys(n for n in (cfg.hc_interface, cfg.main_interface) if n):
                try:
                    idx = k.ifindex(name)
                except KatranError:
                    continue
                for f in k.tc_filters(idx, "egress"):
                    if f.get("id") == hc_id:
                        k.detach_tc(idx, direction="egress", prio=f["prio"])
                        removed.append(f"tc egress filter prio {f['prio']} (program id {hc_id}) on {name}")
        if k.remove_pin_dir(pin_dir):
            removed.append(f"pins in {pin_dir}")
        if state.remove(state_dir / state.STATE_FILE):
            removed.append(f"state file {state_dir / state.STATE_FILE}")
    finally:
        lock.release()
    state.remove(state_dir / state.LOCK_FILE)
    try:
        os.rmdir(state_dir)
    except OSError:
        pass
    return removed
