"""Healthcheck forwarding: the tc (clsact egress) program and its somark -> real table.

A probe sent from a socket with SO_MARK = somark leaves through ``interface``; the
program encapsulates it toward the real registered for that somark:

* ``direct`` mode (default): the program builds the outer header itself (IPIP,
  IP6IP6, IPv4-in-IPv6; GUE when ``gue_dport`` is set), source = this host's address
  on the interface (or ``src_v4``/``src_v6``), destination MAC = the gateway MAC,
  then redirects to the egress of ``main_interface``. No tunnel device needed.
* ``tunnel`` mode (Katran's tunnelBasedHCEncap): the program sets the tunnel key and
  redirects to the ipip / ip6tnl devices ``v4_tun_interface`` / ``v6_tun_interface``.

``KatranLb`` owns one ``HcManager`` (see ``from_config``); all kernel access goes
through the injected :class:`katran.kernel.Kernel` (default: the running kernel).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import struct
import threading
from pathlib import Path
from typing import Optional, Union

import attrs

from . import contract
from .errors import CapacityError, NotFoundError, NotStartedError, ValidationError
from .kernel import Kernel, resolve
from .models import IPAddress, PacketResult, check_int, format_address, parse_address, parse_mac, parse_optional_address

log = logging.getLogger("katran.healthcheck")

HC_PROG_NAME = "healthcheck_encap"
HC_FILTER_NAME = "katran-healthchecker"
DEFAULT_OBJECT = Path(__file__).resolve().parent / "bpf" / "obj" / "healthchecking.bpf.o"

# values and layouts from the healthcheck object's contract (C enums / structs via BTF)
ENCAP_MODES = contract.HC_ENCAP_MODES.py_values()  # {"direct": 0, "tunnel": 1}
REAL_V6 = contract.HC_REAL_FLAGS.value("HC_REAL_V6")  # hc_real_definition.flags
CTRL_V4_TUN, CTRL_V6_TUN, CTRL_MAIN_INTF = (
    contract.HC_CTRL_SLOTS.value(n) for n in ("HC_CTRL_V4_TUN", "HC_CTRL_V6_TUN", "HC_CTRL_MAIN_INTF"))
SRC_V4, SRC_V6 = contract.HC_SRC_SLOTS.value("HC_SRC_V4"), contract.HC_SRC_SLOTS.value("HC_SRC_V6")
MAC_SRC, MAC_DST = contract.HC_MAC_SLOTS.value("HC_MAC_SRC"), contract.HC_MAC_SLOTS.value("HC_MAC_DST")
SKB_CTX_SIZE, SKB_MARK_OFFSET = 192, 8  # struct __sk_buff

TC_VERDICTS = {-1: "TC_ACT_UNSPEC", 0: "TC_ACT_OK", 1: "TC_ACT_RECLASSIFY", 2: "TC_ACT_SHOT",
               3: "TC_ACT_PIPE", 4: "TC_ACT_STOLEN", 5: "TC_ACT_QUEUED", 6: "TC_ACT_REPEAT",
               7: "TC_ACT_REDIRECT"}

_U32 = struct.Struct("=I")
_HC_STATS = contract.HC_STATS

AddressLike = Union[str, IPAddress]


@attrs.frozen
class HcStats:
    """Counters of the healthcheck program, summed over CPUs (Katran's HealthCheckProgStats)."""

    processed: int = 0
    dropped: int = 0
    skipped: int = 0
    too_big: int = 0
    dst_matched: int = 0
    src_matched: int = 0


def pack_real(addr: IPAddress) -> bytes:
    """hc_real_definition: 16 address bytes (network order), flags, 3 pad bytes."""
    flags = REAL_V6 if addr.version == 6 else 0
    return contract.HC_REAL_DEFINITION.pack(addr.packed.ljust(16, b"\0"), flags)


def unpack_real(raw: bytes) -> IPAddress:
    daddr, flags = contract.HC_REAL_DEFINITION.unpack(raw)
    if flags & REAL_V6:
        return ipaddress.IPv6Address(daddr)
    return ipaddress.IPv4Address(daddr[:4])


def skb_ctx(mark: int = 0) -> bytes:
    """A zeroed ``struct __sk_buff`` carrying ``mark`` (ctx for BPF_PROG_TEST_RUN)."""
    ctx = bytearray(SKB_CTX_SIZE)
    _U32.pack_into(ctx, SKB_MARK_OFFSET, mark)
    return bytes(ctx)


def _describe_filter(f: dict) -> str:
    from .errors import safe_text

    return f"program id {f.get('id') or '?'} (filter {safe_text(f.get('name') or '?', 64)})"


def tc_verdict(retval: int) -> tuple[str, int]:
    signed = retval - (1 << 32) if retval >= 1 << 31 else retval
    return TC_VERDICTS.get(signed, f"TC_ACT_{signed}"), signed


class HcManager:
    """Loads, provisions and attaches the healthcheck program; owns somark -> real.

    ``testing=True`` loads and provisions without touching any interface (for
    ``run_packet``); interfaces default to ``lo`` then.
    """

    def __init__(
        self,
        *,
        interface: str = "",
        main_interface: str = "",
        encap: str = "direct",
        src_v4: Optional[AddressLike] = None,
        src_v6: Optional[AddressLike] = None,
        local_mac: Optional[Union[str, bytes]] = None,
        gateway_mac: Optional[Union[str, bytes]] = None,
        v4_tun_interface: str = "ipip0",
        v6_tun_interface: str = "ipip60",
        max_reals: int = 4096,
        priority: int = 2307,
        gue_dport: int = 0,
        max_pckt_size: int = 0,
        prog_path: Optional[Union[str, os.PathLike]] = None,
        testing: bool = False,
        netns: Optional[str] = None,
        kernel: Optional[Kernel] = None,
    ) -> None:
        self._kernel = resolve(kernel)
        if encap not in ENCAP_MODES:
            raise ValidationError("hc_encap", encap, f"expected one of {', '.join(ENCAP_MODES)}")
        self.encap = encap
        self.testing = testing
        self.netns = netns  # network namespace of the interfaces (None: ours)
        self.interface = interface or main_interface or ("lo" if testing else "")
        if not self.interface:
            raise ValidationError("hc_interface", interface, "required unless testing=True")
        self.main_interface = main_interface or self.interface
        self.src_v4 = parse_optional_address(src_v4, "katran_src_v4", 4)
        self.src_v6 = parse_optional_address(src_v6, "katran_src_v6", 6)
        self.local_mac = None if local_mac in (None, "") else parse_mac(local_mac, "local_mac")
        self.gateway_mac = None if gateway_mac in (None, "") else parse_mac(gateway_mac, "default_mac")
        self.v4_tun_interface = v4_tun_interface
        self.v6_tun_interface = v6_tun_interface
        self.max_reals = check_int(max_reals, "max_reals", 1, 1 << 24)
        self.priority = check_int(priority, "priority", 1, 65535)
        self.gue_dport = check_int(gue_dport, "hc_gue_dport", 0, 65535)
        self.max_pckt_size = check_int(max_pckt_size, "hc_max_pckt_size", 0, 65535)
        self.prog_path = Path(prog_path) if prog_path else DEFAULT_OBJECT
        self._lock = threading.RLock()
        self._reals: dict[int, IPAddress] = {}
        self._obj = None
        self._ifindex = 0
        self._attached = False
        self.upgraded_from: Optional[int] = None  # program id replaced by adopt()'s upgrade
        self.maps_reused = False  # that upgrade loaded the new program on the pinned maps

    @classmethod
    def from_config(cls, config, kernel: Optional[Kernel] = None) -> "HcManager":
        """The manager KatranLb builds when ``config.enable_hc`` (a KatranConfig) is set.

        Probes are GUE-encapsulated (to ``gue_dport``) when the balancer is (``gue_encap``);
        ``hc_max_pckt_size`` bounds probe sizes (0: no check, Katran's default).
        """
        return cls(
            interface=config.hc_interface or config.main_interface,
            main_interface=config.main_interface,
            encap=config.hc_encap,
            src_v4=config.katran_src_v4,
            src_v6=config.katran_src_v6,
            local_mac=config.local_mac,
            gateway_mac=config.default_mac,
            v4_tun_interface=config.v4_tun_interface,
            v6_tun_interface=config.v6_tun_interface,
            max_reals=config.max_reals,
            priority=config.priority,
            gue_dport=config.gue_dport if config.gue_encap else 0,
            max_pckt_size=config.hc_max_pckt_size,
            prog_path=config.healthchecking_prog_path,
            testing=config.testing,
            kernel=kernel,
        )

    # lifecycle --------------------------------------------------------------

    def _discover(self) -> None:
        """Fill source addresses / local MAC from the main interface when not given."""
        if self.src_v4 is None or self.src_v6 is None:
            for text in self._kernel.interface_addresses(self.main_interface, netns=self.netns):
                addr = ipaddress.ip_interface(text).ip if "/" in text else ipaddress.ip_address(text)
                if addr.version == 4 and self.src_v4 is None and not addr.is_loopback:
                    self.src_v4 = addr
                elif addr.version == 6 and self.src_v6 is None and not (addr.is_link_local or addr.is_loopback):
                    self.src_v6 = addr
        if self.local_mac is None:
            self.local_mac = parse_mac(self._kernel.mac_address(self.main_interface, netns=self.netns), "local_mac")

    def load(self) -> None:
        """Open, size, set the knobs, load and provision the program (no attach)."""
        k = self._kernel
        with self._lock:
            if self._obj is not None:
                return
            if self.encap == "direct":
                if not self.testing:
                    self._discover()
                if self.src_v4 is None and self.src_v6 is None:
                    raise ValidationError(
                        "katran_src_v4", None,
                        "no source address for direct healthchecking: set katran_src_v4 and/or katran_src_v6 "
                        "(server flags -katran_src_v4/-katran_src_v6), or turn healthcheck forwarding off "
                        "(enable_hc=False, server flag -hc_forwarding=false)")
                if self.gateway_mac is None:
                    raise ValidationError("default_mac", None, "the gateway MAC is needed for direct healthchecking")
            ctrl = self._ctrl_values()
            self._ifindex = k.ifindex(self.interface, netns=self.netns)

            spec = self._open_spec()
            try:
                obj = spec.load()
            finally:
                spec.close()
            self._obj = self._provision(obj, ctrl)

    def _ctrl_values(self) -> dict:
        """hc_ctrl_map: the main interface's ifindex, and the tunnels' in tunnel mode."""
        k = self._kernel
        ctrl = {CTRL_MAIN_INTF: k.ifindex(self.main_interface, netns=self.netns)}
        if self.encap == "tunnel":
            ctrl[CTRL_V4_TUN] = k.ifindex(self.v4_tun_interface, netns=self.netns)
            ctrl[CTRL_V6_TUN] = k.ifindex(self.v6_tun_interface, netns=self.netns)
        return ctrl

    def _open_spec(self):
        """The object at ``prog_path``, checked against the contract, sized, its knobs set."""
        spec = self._kernel.open_object(self.prog_path)
        try:
            contract.HEALTHCHECK.check(self.prog_path)  # missing map / knob / layout: ContractError
            spec.set_max_entries("hc_reals_map", self.max_reals)
            knobs = spec.rodata_vars()
            spec.set_rodata("hc_encap_mode", ENCAP_MODES[self.encap])
            if self.gue_dport or "hc_gue_dport" in knobs:
                spec.set_rodata("hc_gue_dport", self.gue_dport)
            if self.max_pckt_size or "hc_max_pckt_size" in knobs:
                spec.set_rodata("hc_max_pckt_size", self.max_pckt_size)
        except BaseException:
            spec.close()
            raise
        return spec

    def _provision(self, obj, ctrl: dict):
        """Write the control values, sources, MACs and destinations into a loaded object
        (closed on a failure)."""
        try:
            for pos, idx in ctrl.items():
                obj.map("hc_ctrl_map").update(_U32.pack(pos), _U32.pack(idx))
            if self.encap == "direct":
                srcs = obj.map("hc_pckt_srcs_map")
                if self.src_v4 is not None:
                    srcs.update(_U32.pack(SRC_V4), pack_real(self.src_v4))
                if self.src_v6 is not None:
                    srcs.update(_U32.pack(SRC_V6), pack_real(self.src_v6))
                macs = obj.map("hc_pckt_macs")
                macs.update(_U32.pack(MAC_SRC), self.local_mac or b"\0" * 6)
                macs.update(_U32.pack(MAC_DST), self.gateway_mac)
            for somark, addr in self._reals.items():
                obj.map("hc_reals_map").update(_U32.pack(somark), pack_real(addr))
        except Exception:
            obj.close()
            raise
        return obj

    @property
    def prog_fd(self) -> int:
        return self._loaded().program(HC_PROG_NAME).fd

    @property
    def loaded_object(self):
        return self._loaded()

    def _filter_at_prio(self) -> Optional[dict]:
        for f in self._kernel.tc_filters(self._ifindex, "egress", netns=self.netns):
            if f.get("prio") == self.priority:
                return f
        return None

    def attach(self, own_ids=(), force: bool = False) -> None:
        """Attach to clsact egress of ``interface`` (qdisc created when missing).

        A filter already at our priority is replaced only when its program is one of
        ``own_ids`` (an earlier instance of ours) or with ``force``; otherwise refused, naming it.
        """
        with self._lock:
            obj = self._loaded()
            if self._attached or self.testing:
                return
            self._kernel.ensure_clsact(self._ifindex, netns=self.netns)
            old = self._filter_at_prio()
            if old is not None:
                if not (force or (old.get("id") and old.get("id") in set(own_ids))):
                    from .dataplane import AttachRefusedError

                    raise AttachRefusedError(
                        f"interface {self.interface} already has a tc egress filter at priority {self.priority} "
                        f"that is not this instance's: {_describe_filter(old)}; refusing to replace it (nothing "
                        f"was changed); remove it, choose another -priority, or start with force (-force)")
            # an old filter is replaced in one netlink request: no probe leaves unencapsulated
            self._kernel.attach_tc(self._ifindex, obj.program(HC_PROG_NAME).fd, direction="egress",
                                   prio=self.priority, name=HC_FILTER_NAME, netns=self.netns,
                                   replace=old is not None)
            self._attached = True

    def adopt(self, directory, map_names, prog_names, dsts, force: bool = False,
              identity: Optional[dict] = None) -> None:
        """Open the pinned program and maps of an earlier instance instead of loading them;
        keep its tc filter when it runs our program (else attach ours, as ``attach``).

        ``identity``: the object file the pinned program came from (the state file's
        ``hc_object``; None: not recorded). When ``prog_path`` is another file (a package
        upgrade, another -healthchecking_prog), the pinned program is upgraded: the new one is
        loaded on the pinned maps (fresh ones, provisioned again, when they do not fit) and
        replaces the old one in the tc filter in one request (``upgraded_from``)."""
        from .state import HC_PREFIX, PinnedObject, object_identity

        with self._lock:
            if self._obj is not None:
                return
            if not prog_names:
                # the earlier instance ran without healthcheck forwarding
                self.load()
                self._ifindex = self._kernel.ifindex(self.interface, netns=self.netns)
                self.attach(force=force)
                return
            obj = PinnedObject.open(self._kernel, Path(directory), map_names, prog_names, prefix=HC_PREFIX)
            try:
                self._ifindex = self._kernel.ifindex(self.interface, netns=self.netns)
                self._obj = obj
                self._reals = {int(m): parse_address(a, "hc_dsts") for m, a in dsts}
                if self.encap == "direct":  # what load() discovered, read back from the maps
                    srcs = obj.map("hc_pckt_srcs_map")
                    for pos, attr in ((SRC_V4, "src_v4"), (SRC_V6, "src_v6")):
                        raw = srcs.lookup(_U32.pack(pos))
                        if getattr(self, attr) is None and raw is not None and any(raw[:16]):
                            setattr(self, attr, unpack_real(raw))
                    macs = obj.map("hc_pckt_macs")
                    raw = macs.lookup(_U32.pack(MAC_SRC))
                    if self.local_mac is None and raw is not None:
                        self.local_mac = bytes(raw[:6])
                pinned = obj.program(HC_PROG_NAME).id
                if identity != object_identity(self.prog_path):
                    self._obj = self._upgrade(obj)
                ours = self._obj.program(HC_PROG_NAME).id
                old = None if self.testing else self._filter_at_prio()
                if old is not None and old.get("id") == ours:
                    self._attached = True
                else:
                    self.attach(own_ids={pinned, ours}, force=force)
                if self._obj is not obj:
                    obj.close()  # the filter (and the pins, until re-pinned) hold the old program
                    log.info("healthcheck program on %s upgraded: program id %d replaced by %d (%s), %s",
                             self.interface, pinned, ours, self.prog_path,
                             "every map kept" if self.maps_reused else "fresh maps (the old ones did not fit)")
            except BaseException:
                if self._obj is not None and self._obj is not obj:
                    self._obj.close()
                self._obj = None
                self.upgraded_from = None
                obj.close()
                raise

    def _upgrade(self, live):
        """Load ``prog_path`` on the maps of ``live`` (the pinned object) when every one fits,
        else with fresh maps provisioned from this manager's state."""
        from .state import map_misfits

        spec = self._open_spec()
        try:
            misfits = map_misfits(live.maps, spec)
            if not misfits:
                for name, m in live.maps.items():
                    spec.reuse_map_fd(name, m.fd)
            new = spec.load()
        finally:
            spec.close()
        if misfits:
            log.warning("healthcheck upgrade to %s: %s; loading it with fresh maps (its counters start at 0)",
                        self.prog_path, "; ".join(misfits))
            new = self._provision(new, self._ctrl_values())
        self.maps_reused = not misfits
        self.upgraded_from = live.program(HC_PROG_NAME).id
        return new

    def start(self) -> None:
        self.load()
        self.attach()

    def detach(self) -> None:
        with self._lock:
            if not self._attached:
                return
            self._kernel.detach_tc(self._ifindex, direction="egress", prio=self.priority, netns=self.netns)
            self._attached = False

    def close(self, detach: bool = True) -> None:
        """Detach (unless ``detach=False``: the filter then keeps the program alive) and free our fds."""
        with self._lock:
            try:
                if detach:
                    self.detach()
            finally:
                self._attached = False
                if self._obj is not None:
                    self._obj.close()
                    self._obj = None

    def __enter__(self) -> "HcManager":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _loaded(self):  # -> katran.kernel.LoadedObjectHandle
        if self._obj is None:
            raise NotStartedError("the healthcheck program is not loaded: call load()/start() first")
        return self._obj

    # somark -> real ----------------------------------------------------------

    def add_dst(self, somark: int, address: AddressLike) -> None:
        """Probes marked ``somark`` go to ``address`` (replaces an existing mapping)."""
        somark = check_int(somark, "somark", 1, 2**32 - 1)
        addr = parse_address(address, "address")
        with self._lock:
            if self.encap == "direct" and self._obj is not None:
                src = self.src_v6 if addr.version == 6 else self.src_v4
                if src is None:
                    raise ValidationError("address", str(address),
                                          f"no IPv{addr.version} source address configured for healthchecks")
            if somark not in self._reals and len(self._reals) >= self.max_reals:
                raise CapacityError(f"healthchecker's reals space exhausted ({self.max_reals})")
            if self._obj is not None:
                self._obj.map("hc_reals_map").update(_U32.pack(somark), pack_real(addr))
            self._reals[somark] = addr

    def del_dst(self, somark: int) -> None:
        somark = check_int(somark, "somark", 0, 2**32 - 1)
        with self._lock:
            if somark not in self._reals:
                raise NotFoundError("healthcheck somark", somark)
            if self._obj is not None:
                self._obj.map("hc_reals_map").delete(_U32.pack(somark))
            del self._reals[somark]

    def get_dsts(self) -> dict[int, str]:
        with self._lock:
            return {m: format_address(a) for m, a in self._reals.items()}

    def kernel_dsts(self) -> dict[int, str]:
        """somark -> real as read back from hc_reals_map (for checks)."""
        m = self._loaded().map("hc_reals_map")
        return {_U32.unpack(k)[0]: str(unpack_real(v)) for k, v in m.items()}

    def set_gateway_mac(self, mac: Union[str, bytes]) -> None:
        """Destination MAC of encapsulated probes (KatranLb.change_mac calls this)."""
        raw = parse_mac(mac, "mac")
        with self._lock:
            if self._obj is not None and self.encap == "direct":
                self._obj.map("hc_pckt_macs").update(_U32.pack(MAC_DST), raw)
            self.gateway_mac = raw

    def restore_gateway_mac(self, raw: Optional[bytes]) -> None:
        """Put back a gateway MAC read from ``gateway_mac`` (None included): undo of set_gateway_mac."""
        if raw is None:
            with self._lock:
                self.gateway_mac = None
        else:
            self.set_gateway_mac(raw)

    # stats / test runs -------------------------------------------------------

    def stats(self) -> HcStats:
        per_cpu = self._loaded().map("hc_stats_map").lookup(_U32.pack(0)) or []
        totals = [0] * len(_HC_STATS.fields)
        for raw in per_cpu:
            for i, v in enumerate(_HC_STATS.unpack(raw)):
                totals[i] += v
        return HcStats(*totals)

    def run_packet(self, data: bytes, mark: int = 0) -> PacketResult:
        """Run one frame through the program (BPF_PROG_TEST_RUN) with skb->mark = ``mark``."""
        mark = check_int(mark, "mark", 0, 2**32 - 1)
        res = self._loaded().program(HC_PROG_NAME).test_run(bytes(data), ctx=skb_ctx(mark))
        name, signed = tc_verdict(res.retval)
        return PacketResult(name, signed, res.data, res.duration_ns)
