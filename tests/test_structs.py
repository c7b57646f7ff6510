"""katran/structs.py: packing of the balancer's keys and values (the layouts: tests/test_abi.py)."""

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


def test_layouts_are_the_contract():
    """LAYOUTS (kept for callers) is derived from the contract that tests/test_abi.py checks via BTF."""
    from katran import contract

    assert set(structs.LAYOUTS) == set(contract.BALANCER.structs)
    assert structs.LAYOUTS["flow_key"] == (40, {"src": 0, "srcv6": 0, "dst": 16, "dstv6": 16, "ports": 32,
                                                "port16": 32, "proto": 36})
    assert structs.size_of("lb_quic_packets_stats") == 104


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

