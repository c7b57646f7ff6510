"""katran/structs.py against the C side: BTF of the compiled balancer and consts.h."""

from __future__ import annotations

import ipaddress
import re
import struct
from pathlib import Path

import pytest

from katran import structs

REPO = Path(__file__).resolve().parents[1]
BPF_DIR = REPO / "katran" / "bpf"
OBJ = BPF_DIR / "obj" / "balancer.bpf.o"

needs_obj = pytest.mark.skipif(not OBJ.is_file(), reason=f"{OBJ} not built (python -m katran.build)")


def _btf_layout(name: str):
    from katran.adapter.bpf import btf_struct_layout

    return btf_struct_layout(OBJ, name)


@needs_obj
@pytest.mark.parametrize("name", sorted(structs.LAYOUTS))
def test_layout_matches_btf(name):
    size, offsets = structs.LAYOUTS[name]
    btf_size, btf_members = _btf_layout(name)
    assert btf_size == size, f"{name}: BTF size {btf_size}, structs.py says {size}"
    assert {m: off for m, (off, _sz) in btf_members.items()} == offsets


@needs_obj
@pytest.mark.parametrize(
    "map_name,key,value",
    [
        ("vip_map", "vip_definition", "vip_meta"),
        ("reals", None, "real_definition"),
        ("fallback_cache", "flow_key", "real_pos_lru"),
        ("stats", None, "lb_stats"),
        ("reals_stats", None, "lb_stats"),
        ("ctl_array", None, "ctl_value"),
        ("decap_dst", "address", None),
        ("lpm_src_v4", "v4_lpm_key", None),
        ("lpm_src_v6", "v6_lpm_key", None),
        ("quic_stats_map", None, "lb_quic_packets_stats"),
        ("tpr_stats_map", None, "lb_tpr_packets_stats"),
        ("stable_rt_stats", None, "lb_stable_rt_packets_stats"),
        ("pckt_srcs", None, "real_definition"),
    ],
)
def test_map_key_value_sizes(map_name, key, value):
    from katran.adapter import bpf

    spec = bpf.ObjectSpec.open(OBJ)
    try:
        m = spec._map(map_name)
        from katran.adapter.libbpf import lib

        ksize, vsize = int(lib.bpf_map__key_size(m)), int(lib.bpf_map__value_size(m))
    finally:
        spec.close()
    assert ksize == (structs.size_of(key) if key else 4)
    if value:
        assert vsize == structs.size_of(value)


def _c_defines(header: str, prefix: str) -> dict[str, int]:
    text = (BPF_DIR / header).read_text()
    return {m[1]: int(m[2], 0) for m in re.finditer(rf"#define ({prefix}\w*)\s+(\w+)", text)}


def test_counter_slots_match_consts_h():
    c = _c_defines("consts.h", "CNT_")
    py = {
        "CNT_LRU": structs.LRU_CNTRS, "CNT_LRU_MISS": structs.LRU_MISS_CNTR,
        "CNT_NEW_CONN_RATE": structs.NEW_CONN_RATE_CNTR, "CNT_FALLBACK_LRU": structs.FALLBACK_LRU_CNTR,
        "CNT_ICMP_TOOBIG": structs.ICMP_TOOBIG_CNTRS, "CNT_LPM_SRC": structs.LPM_SRC_CNTRS,
        "CNT_REMOTE_ENCAP": structs.REMOTE_ENCAP_CNTRS, "CNT_ENCAP_FAIL": structs.ENCAP_FAIL_CNTR,
        "CNT_GLOBAL_LRU": structs.GLOBAL_LRU_CNTR, "CNT_CH_DROP": structs.CH_DROP_STATS,
        "CNT_DECAP": structs.DECAP_CNTR, "CNT_QUIC_ICMP": structs.QUIC_ICMP_STATS,
        "CNT_ICMP_PTB_V6": structs.ICMP_PTB_V6_STATS, "CNT_ICMP_PTB_V4": structs.ICMP_PTB_V4_STATS,
        "CNT_XPOP_DECAP": structs.XPOP_DECAP_SUCCESSFUL, "CNT_UDP_FLOW_MIG": structs.UDP_FLOW_MIGRATION_STATS,
        "CNT_XDP_TOTAL": structs.XDP_TOTAL_CNTR, "CNT_XDP_TX": structs.XDP_TX_CNTR,
        "CNT_XDP_DROP": structs.XDP_DROP_CNTR, "CNT_XDP_PASS": structs.XDP_PASS_CNTR,
        "CNT_EGRESS_DECAP": structs.EGRESS_DECAP_CNTR, "CNT_MALFORMED": structs.MALFORMED_CNTR,
    }
    assert c == py


def _c_shift(name: str) -> int:
    m = re.search(rf"#define {name}\s+\(1 << (\d+)\)", (BPF_DIR / "consts.h").read_text())
    assert m, f"{name} not found in consts.h"
    return 1 << int(m[1])


def test_flags_match_consts_h():
    assert _c_shift("REAL_F_IPV6") == structs.REAL_F_IPV6
    assert _c_shift("REAL_F_LOCAL") == structs.REAL_F_LOCAL
    assert _c_defines("consts.h", "PCKT_SRC_") == {"PCKT_SRC_V4": structs.PCKT_SRC_V4, "PCKT_SRC_V6": structs.PCKT_SRC_V6}
    assert _c_defines("consts.h", "CTL_DEFAULT_MAC") == {"CTL_DEFAULT_MAC": structs.CTL_MAC_POS}


@needs_obj
def test_knobs_are_rodata_globals():
    from katran.adapter import bpf

    spec = bpf.ObjectSpec.open(OBJ)
    try:
        rodata = spec.rodata_vars()
        assert struct.unpack("<I", spec.rodata("ring_size"))[0] == 65537
        assert struct.unpack("<I", spec.rodata("max_vips"))[0] == 512
        assert struct.unpack("<Q", spec.rodata("lru_udp_timeout_ns"))[0] == 30_000_000_000
        assert struct.unpack("<I", spec.rodata("max_pckt_size"))[0] == 1514
        assert struct.unpack("<H", spec.rodata("gue_dport"))[0] == 6080
    finally:
        spec.close()
    knobs = re.findall(r"const volatile \w+ (\w+) =", (BPF_DIR / "knobs.h").read_text())
    assert set(knobs) <= set(rodata)
    for k in knobs:
        if k not in ("ring_size", "max_vips", "lru_udp_timeout_ns", "max_pckt_size", "max_conn_rate", "gue_dport"):
            assert rodata[k][1] == 4, f"feature switch {k} should be a __u32"


# --- pack / unpack -------------------------------------------------------------
def test_vip_definition_v4_and_v6():
    raw = structs.vip_definition("10.200.1.1", 80, 6)
    assert len(raw) == structs.size_of("vip_definition")
    assert raw[:4] == bytes([10, 200, 1, 1]) and raw[4:16] == bytes(12)
    assert raw[16:18] == b"\x00\x50" and raw[18] == 6 and raw[19] == 0
    assert structs.vip_definition_unpack(raw, False) == (ipaddress.ip_address("10.200.1.1"), 80, 6)
    raw6 = structs.vip_definition("fc00:1::1", 443, 17)
    assert raw6[:16] == ipaddress.ip_address("fc00:1::1").packed
    assert structs.vip_definition_unpack(raw6, True) == (ipaddress.ip_address("fc00:1::1"), 443, 17)


def test_real_definition_sets_v6_flag_from_family():
    addr, flags = structs.real_definition_unpack(structs.real_definition("fc00::1", structs.REAL_F_LOCAL))
    assert addr == ipaddress.ip_address("fc00::1") and flags == structs.REAL_F_IPV6 | structs.REAL_F_LOCAL
    addr, flags = structs.real_definition_unpack(structs.real_definition("10.0.0.1", structs.REAL_F_IPV6))
    assert addr == ipaddress.ip_address("10.0.0.1") and flags == 0


def test_flow_key_roundtrip_and_padding():
    raw = structs.flow_key("192.168.1.1", "10.200.1.1", 31337, 80, 6)
    assert len(raw) == 40 and raw[37:] == bytes(3)
    assert raw[32:36] == struct.pack("!HH", 31337, 80)
    fk = structs.flow_key_unpack(raw, False)
    assert (str(fk.src), str(fk.dst), fk.src_port, fk.dst_port, fk.proto) == ("192.168.1.1", "10.200.1.1", 31337, 80, 6)


def test_real_pos_lru_and_stats():
    assert structs.real_pos_lru_unpack(structs.real_pos_lru(7, 123456789)) == (7, 123456789)
    assert len(structs.real_pos_lru(1)) == 16
    assert structs.lb_stats_unpack(structs.lb_stats(3, 4)) == (3, 4)
    assert structs.lb_stats_sum([structs.lb_stats(1, 10), structs.lb_stats(2, 20)]) == (3, 30)


def test_ctl_value_mac():
    raw = structs.ctl_value_mac(bytes.fromhex("0000deadbeaf"))
    assert raw == bytes.fromhex("0000deadbeaf0000")
    with pytest.raises(ValueError):
        structs.ctl_value_mac(b"\x01\x02")


def test_lpm_keys():
    assert structs.v4_lpm_key("192.168.0.0", 17) == struct.pack("<I", 17) + bytes([192, 168, 0, 0])
    assert len(structs.v6_lpm_key("fc00:2307::", 32)) == structs.size_of("v6_lpm_key")


def test_counters_unpack():
    raw = struct.pack("<5Q", 1, 2, 3, 4, 5)
    assert structs.counters_unpack(raw, structs.STABLE_RT_STATS_FIELDS)["invalid_packet_type"] == 5
    assert structs.counters_sum([raw, raw], structs.STABLE_RT_STATS_FIELDS)["ch_routed"] == 2

