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
            ctrl = {CTRL_MAIN_INTF: k.ifindex(self.main_interface, netns=self.netns)}
            if self.encap == "tunnel":
                ctrl[CTRL_V4_TUN] = k.ifindex(self.v4_tun_interface, netns=self.netns)
                ctrl[CTRL_V6_TUN] = k.ifindex(self.v6_tun_interface, netns=self.netns)
            self._ifindex = k.ifindex(self.interface, netns=self.netns)

            spec = k.open_object(self.prog_path)
            try:
                contract.HEALTHCHECK.check(self.prog_path)  # missing map / knob / layout: ContractError
                spec.set_max_entries("hc_reals_map", self.max_reals)
                knobs = spec.rodata_vars()
                spec.set_rodata("hc_encap_mode", ENCAP_MODES[self.encap])
                if self.gue_dport or "hc_gue_dport" in knobs:
                    spec.set_rodata("hc_gue_dport", self.gue_dport)
                if self.max_pckt_size or "hc_max_pckt_size" in knobs:
                    spec.set_rodata("hc_max_pckt_size", self.max_pckt_size)
                obj = spec.load()
            finally:
                spec.close()
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
            self._obj = obj

    @property
    def prog_fd(self) -> int:
        return self._loaded().program(HC_PROG_NAME).fd

    def attach(self) -> None:
        """Attach to clsact egress of ``interface`` (qdisc created when missing)."""
        with self._lock:
            obj = self._loaded()
            if self._attached or self.testing:
                return
            self._kernel.ensure_clsact(self._ifindex, netns=self.netns)
            self._kernel.attach_tc(self._ifindex, obj.program(HC_PROG_NAME).fd, direction="egress",
                                   prio=self.priority, name=HC_FILTER_NAME, netns=self.netns)
            self._attached = True

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
