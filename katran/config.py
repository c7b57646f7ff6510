"""KatranConfig: Katran's options, validated when the object is built."""

from __future__ import annotations

import os
from typing import Optional

import attrs

from .errors import ValidationError
from .models import HashFunction, check_int, parse_mac, parse_optional_address

XDP_ATTACH_MODES = ("native", "generic", "offload")
HC_ENCAP_MODES = ("direct", "tunnel")
MAX_SERVER_IDS = 16_777_214  # Katran's MAX_QUIC_REALS: the largest server_id_map


def _cpu_list(field: str):
    def convert(value):
        if value is None:
            return None
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        out = []
        ncpu = os.cpu_count() or 1
        for v in value:
            try:
                n = int(v)
            except (TypeError, ValueError):
                raise ValidationError(field, value, f"{v!r} is not a CPU/NUMA number") from None
            if n < 0:
                raise ValidationError(field, value, f"{n} is negative")
            if field == "forwarding_cores" and n >= ncpu:
                raise ValidationError(field, value, f"cpu {n} does not exist (this host has {ncpu})")
            if n in out and field == "forwarding_cores":  # numa nodes repeat: one per core
                raise ValidationError(field, value, f"{n} is listed twice")
            out.append(n)
        return tuple(out)

    return convert


def _opt_mac(field: str):
    def convert(value):
        return None if value in (None, "") else parse_mac(value, field)

    return convert


def _opt_addr(field: str, version: int):
    return lambda value: parse_optional_address(value, field, version)


def _positive(field: str, hi: int = 2**32 - 1):
    return lambda v: check_int(v, field, 1, hi)


def _bool(field: str):
    def convert(v: object) -> bool:
        if not isinstance(v, bool):
            raise ValidationError(field, v, "expected true or false")
        return v

    return convert


def _ring_bytes(field: str, value: object) -> int:
    v = check_int(value, field, 4096, 1 << 30)
    if v & (v - 1):
        raise ValidationError(field, value, "must be a power of two (bytes of a BPF ring buffer)")
    return v


def _choice(field: str, choices):
    def convert(value):
        if value not in choices:
            raise ValidationError(field, value, f"expected one of {', '.join(choices)}")
        return value

    return convert


@attrs.frozen(kw_only=True)
class KatranConfig:
    """Options of a KatranLb instance (Katran's KatranConfig, snake_case).

    ``testing=True`` loads and provisions the BPF programs without attaching
    anything to an interface (no interface needed).
    """

    main_interface: str = ""
    default_mac: Optional[bytes] = attrs.field(default=None, converter=_opt_mac("default_mac"))
    local_mac: Optional[bytes] = attrs.field(default=None, converter=_opt_mac("local_mac"))
    balancer_prog_path: Optional[str] = None  # default: the packaged object
    healthchecking_prog_path: Optional[str] = None  # default: the packaged object
    # None: every CPU gets its own LRU (testing: none, the fallback LRU serves all); () : none
    forwarding_cores: Optional[tuple] = attrs.field(default=None, converter=_cpu_list("forwarding_cores"))
    numa_nodes: tuple = attrs.field(default=(), converter=lambda v: _cpu_list("numa_nodes")(v) or ())
    lru_size: int = attrs.field(default=8_000_000, converter=_positive("lru_size"))
    fallback_lru_size: int = attrs.field(default=1000, converter=_positive("fallback_lru_size"))
    max_vips: int = attrs.field(default=512, converter=_positive("max_vips", 1 << 16))
    max_reals: int = attrs.field(default=4096, converter=_positive("max_reals", 1 << 24))
    ch_ring_size: int = attrs.field(default=65537, converter=_positive("ch_ring_size", 1 << 24))
    hash_function: HashFunction = attrs.field(default=HashFunction.MAGLEV, converter=HashFunction)
    # shared mode: register into the root program's prog_array at this position
    root_map_path: Optional[str] = None
    root_map_pos: int = attrs.field(default=2, converter=lambda v: check_int(v, "root_map_pos", 0, 1023))
    # healthcheck forwarding (tc egress)
    enable_hc: bool = False
    hc_interface: str = ""
    hc_encap: str = attrs.field(default="direct", converter=_choice("hc_encap", HC_ENCAP_MODES))
    # largest probe the healthcheck program forwards (bytes; 0: no check, Katran's HC_MAX_PACKET_SIZE)
    hc_max_pckt_size: int = attrs.field(default=0, converter=lambda v: check_int(v, "hc_max_pckt_size", 0, 65535))
    v4_tun_interface: str = "ipip0"
    v6_tun_interface: str = "ipip60"
    katran_src_v4: Optional[object] = attrs.field(default=None, converter=_opt_addr("katran_src_v4", 4))
    katran_src_v6: Optional[object] = attrs.field(default=None, converter=_opt_addr("katran_src_v6", 6))
    xdp_attach_mode: str = attrs.field(default="native", converter=_choice("xdp_attach_mode", XDP_ATTACH_MODES))
    priority: int = attrs.field(default=2307, converter=lambda v: check_int(v, "priority", 0, 65535))
    max_decap_dst: int = attrs.field(default=6, converter=_positive("max_decap_dst", 1 << 16))
    testing: bool = False
    cleanup_on_shutdown: bool = True
    # --- state that survives restarts (katran.state); attached only (standalone, or shared
    # mode: our slot of the root array), not testing. persist=True: maps and programs pinned
    # under pin_dir, the state file and the instance lock in state_dir; a start finding our
    # program attached (in its slot) adopts it.
    persist: bool = False
    pin_dir: Optional[str] = None  # default /sys/fs/bpf/katran/<main_interface>
    state_dir: Optional[str] = None  # default /var/lib/katran/<main_interface>
    force: bool = False  # replace an XDP / tc program we do not own
    force_reload: bool = False  # load a fresh data plane when the saved one is incompatible (state lost)

    # --- data-plane features: load-time knobs of the one balancer object (Katran's build
    # flavours); all off by default, each costs nothing when off.
    gue_encap: bool = False  # GUE (UDP) instead of IPIP/IP6IP6; outer sources katran_src_v4/v6
    gue_dport: int = attrs.field(default=6080, converter=lambda v: check_int(v, "gue_dport", 1, 65535))
    tcp_server_id_routing: bool = False  # TPR: server id in TCP option 0xB7
    udp_stable_routing: bool = False  # UDP_STABLE_ROUTING_VIP VIPs
    lpm_src_lookup: bool = False  # SRC_ROUTING VIPs: source prefix -> real
    max_lpm_src_size: int = attrs.field(default=3_000_000, converter=_positive("max_lpm_src_size"))
    global_lru: bool = False  # GLOBAL_LRU VIPs
    global_lru_size: int = attrs.field(default=100_000, converter=_positive("global_lru_size"))
    local_delivery: bool = False  # LOCAL_VIP VIPs: pass packets for LOCAL_REAL reals
    icmp_toobig_generation: bool = False  # answer frames > max_pckt_size with ICMP too big
    inline_decap_ipip: bool = False  # decapsulate IPIP/IP6IP6 to decap dsts, re-balance
    inline_decap_gue: bool = False  # decapsulate GUE to decap dsts, re-balance
    decap_strict_destination: bool = False  # decap only for decap dsts / this host (pckt_srcs)
    enable_cid_v3: bool = False  # QUIC CID v3: 32-bit server ids (server_id_map becomes a hash)
    # entries of server_id_map (QUIC CID / TPR / stable-routing server id -> real).  An array
    # (ids 1 .. max_server_ids - 1 allowed) or, with enable_cid_v3, a hash of at most this many
    # ids (any 32-bit id).  Katran preallocates 16,777,214 (134 MB); the default costs 512 KiB.
    max_server_ids: int = attrs.field(default=65_536,
                                      converter=lambda v: check_int(v, "max_server_ids", 2, MAX_SERVER_IDS))
    max_pckt_size: int = attrs.field(default=1514, converter=lambda v: check_int(v, "max_pckt_size", 64, 65535))
    lru_udp_timeout_ns: int = attrs.field(
        default=30_000_000_000, converter=lambda v: check_int(v, "lru_udp_timeout_ns", 0, 2**64 - 1)
    )
    max_conn_rate: int = attrs.field(default=125_000, converter=lambda v: check_int(v, "max_conn_rate", 0, 2**32 - 1))
    # the per-cpu flow cache in front of each cpu's connection table (not in Katran): a flow
    # whose LRU entry was just found skips the LRU lookup; a runtime switch (ctl_array), no knob
    flow_cache: bool = attrs.field(default=True, converter=_bool("flow_cache"))
    # bytes of the packet-capture ring buffer (capture_ring): a power of two, 4 KiB .. 1 GiB
    capture_ring_size: int = attrs.field(default=1 << 20, converter=lambda v: _ring_bytes("capture_ring_size", v))

    def __attrs_post_init__(self) -> None:
        if not self.testing and not self.main_interface:
            raise ValidationError("main_interface", self.main_interface, "required unless testing=True")
        if self.numa_nodes and len(self.numa_nodes) != len(self.forwarding_cores or ()):
            raise ValidationError(
                "numa_nodes", list(self.numa_nodes),
                f"must list one node per forwarding core ({len(self.forwarding_cores or ())} cores)",
            )
        if self.forwarding_cores and self.lru_size < len(self.forwarding_cores):
            raise ValidationError("lru_size", self.lru_size, "smaller than the number of forwarding cores")
        if self.gue_encap and self.katran_src_v4 is None and self.katran_src_v6 is None:
            raise ValidationError("katran_src_v4", None, "gue_encap needs katran_src_v4 and/or katran_src_v6")
        if self.decap_strict_destination and not (self.inline_decap_ipip or self.inline_decap_gue):
            raise ValidationError(
                "decap_strict_destination", True, "needs inline_decap_ipip or inline_decap_gue"
            )
        from .maglev import is_prime

        if not is_prime(self.ch_ring_size):
            raise ValidationError("ch_ring_size", self.ch_ring_size, "must be a prime (Maglev), e.g. 65537")
        if self.max_vips * self.ch_ring_size > 2**32 - 1:
            raise ValidationError("ch_ring_size", self.ch_ring_size, "max_vips * ch_ring_size exceeds 2**32")
