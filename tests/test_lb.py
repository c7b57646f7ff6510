"""KatranLb: validation, indices, reference counts, CH rings in the map, stats.

Runs against the real BPF object in testing mode (loaded and provisioned, not
attached), so every assertion reads the kernel's maps or the program's verdicts.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from katran import (
    AlreadyExistsError,
    CapacityError,
    FeatureNotEnabledError,
    Flow,
    HashFunction,
    KatranError,
    KatranLb,
    LbStats,
    ModifyAction,
    NotFoundError,
    Real,
    ValidationError,
    VipFlag,
    VipKey,
)
from conftest import MAC, lb_config
from katran import maglev, structs

root = pytest.mark.privileged
RING = 65537
config = lb_config


@pytest.fixture
def lb():
    with KatranLb(config(max_vips=8, max_reals=16)) as lb:
        yield lb


def tcp4(src="192.168.1.1", dst="10.200.1.1", sport=31337, dport=80, flags="A") -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src, dst=dst)
                 / TCP(sport=sport, dport=dport, flags=flags) / b"payload")


def ring_in_map(lb: KatranLb, vip: VipKey) -> np.ndarray:
    num = lb._vips[vip].num
    ch = lb._map("ch_rings")
    return np.array(
        [structs.u32_unpack(ch.lookup(structs.u32(num * RING + i))) for i in range(RING)], dtype=np.uint32
    )


# ---------------------------------------------------------------- config (no privileges)
@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(default_mac="00:11:22:33:44"), "default_mac"),
        (dict(default_mac="zz:11:22:33:44:55"), "default_mac"),
        (dict(forwarding_cores="0,x"), "forwarding_cores"),
        (dict(forwarding_cores=[0, 0]), "forwarding_cores"),
        (dict(forwarding_cores=[4096]), "forwarding_cores"),
        (dict(forwarding_cores=[0], numa_nodes=[0, 1]), "numa_nodes"),
        (dict(max_vips=0), "max_vips"),
        (dict(max_vips=70000, ch_ring_size=65537), "max_vips"),
        (dict(xdp_attach_mode="turbo"), "xdp_attach_mode"),
        (dict(ch_ring_size=65536), "ch_ring_size"),
        (dict(testing=False, main_interface=""), "main_interface"),
        (dict(katran_src_v4="fc00::1"), "katran_src_v4"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValidationError) as e:
        config(**kwargs)
    assert e.value.field == field
    assert field in str(e.value)


@pytest.mark.parametrize(
    "args, field",
    [
        (("10.0.0.300", 80, "tcp"), "vip.address"),
        (("10.0.0.1", 65536, "tcp"), "vip.port"),
        (("10.0.0.1", -1, "tcp"), "vip.port"),
        (("10.0.0.1", 80, "sctp"), "vip.proto"),
        (("10.0.0.1", 80, 1), "vip.proto"),
    ],
)
def test_vip_key_validation(args, field):
    with pytest.raises(ValidationError) as e:
        VipKey(*args)
    assert e.value.field == field and repr(args[0 if "address" in field else 1 if "port" in field else 2]) in str(e.value)


def test_real_weight_validation():
    with pytest.raises(ValidationError, match="real.weight"):
        Real("10.0.0.1", -1)
    with pytest.raises(ValidationError, match="real.address"):
        Real("not-an-ip")


# ---------------------------------------------------------------- VIPs
@root
def test_add_vip_twice_and_unknown_vip(lb):
    vip = VipKey("10.200.1.1", 80, "tcp")
    lb.add_vip(vip, VipFlag.NO_SPORT)
    with pytest.raises(AlreadyExistsError):
        lb.add_vip(vip)
    assert lb.get_all_vips() == [vip] and lb.get_vip_flags(vip) == VipFlag.NO_SPORT
    other = VipKey("10.200.1.2", 80, "tcp")
    for call in (lambda: lb.del_vip(other), lambda: lb.get_vip_flags(other),
                 lambda: lb.modify_vip(other, 1), lambda: lb.add_real_for_vip(Real("10.0.0.1"), other),
                 lambda: lb.get_reals_for_vip(other), lambda: lb.get_stats_for_vip(other)):
        with pytest.raises(NotFoundError, match="10.200.1.2"):
            call()
    assert lb.get_all_vips() == [vip]


@root
def test_vip_capacity_and_vip_map_contents(lb):
    vips = [VipKey(f"10.1.0.{i}", 80, "udp") for i in range(8)]
    for v in vips:
        lb.add_vip(v)
    with pytest.raises(CapacityError, match="max_vips"):
        lb.add_vip(VipKey("10.1.1.1", 80, "udp"))
    vip_map = lb._map("vip_map")
    assert len(list(vip_map.keys())) == 8
    lb.del_vip(vips[3])
    assert len(list(vip_map.keys())) == 7
    assert vip_map.lookup(structs.vip_definition(vips[3].address, 80, 17)) is None
    lb.add_vip(VipKey("10.1.1.1", 80, "udp"))  # the freed number is reused
    assert sorted(v.num for v in lb._vips.values()) == list(range(8))


@root
def test_unimplemented_or_unknown_flags_are_refused(lb):
    vip = VipKey("10.200.1.1", 80, "tcp")
    with pytest.raises(ValidationError, match="flags"):
        lb.add_vip(vip, 1 << 20)
    assert lb.get_all_vips() == []
    lb.add_vip(vip)
    with pytest.raises(ValidationError, match="flags"):
        lb.modify_vip(vip, 1 << 20)
    assert lb.get_vip_flags(vip) == 0
    lb.modify_vip(vip, VipFlag.DPORT_HASH)
    lb.modify_vip(vip, VipFlag.NO_SPORT)
    lb.modify_vip(vip, VipFlag.DPORT_HASH, set_flag=False)
    meta = lb._map("vip_map").lookup(structs.vip_definition(vip.address, 80, 6))
    assert structs.vip_meta_unpack(meta)[0] == VipFlag.NO_SPORT == lb.get_vip_flags(vip)


# ---------------------------------------------------------------- reals
@root
def test_v6_vip_refuses_v4_real_and_changes_nothing(lb):
    vip = VipKey("fc00:1::1", 80, "tcp")
    lb.add_vip(vip)
    with pytest.raises(ValidationError, match="IPv6 VIP .* cannot have an IPv4 real"):
        lb.modify_reals_for_vip(ModifyAction.ADD, [Real("fc00::1"), Real("10.0.0.1")], vip)
    assert lb.get_reals_for_vip(vip) == []
    with pytest.raises(NotFoundError):
        lb.get_index_for_real("fc00::1")


@root
def test_v4_vip_with_v6_reals_encapsulates_ip6(lb):
    vip = VipKey("10.200.1.3", 80, "tcp")
    lb.add_vip(vip)
    lb.add_real_for_vip(Real("fc00::2"), vip)
    res = lb.run_packet(tcp4(dst="10.200.1.3"))
    assert res.verdict == "XDP_TX"
    out = Ether(res.data)
    assert out[IPv6].dst == "fc00::2" and out[IPv6].nh == 4 and out[IP].dst == "10.200.1.3"


@root
def test_real_indices_are_refcounted_across_vips(lb):
    a, b = VipKey("10.200.1.1", 80, "tcp"), VipKey("10.200.1.1", 80, "udp")
    lb.add_vip(a)
    lb.add_vip(b)
    lb.add_real_for_vip(Real("10.0.0.1"), a)
    lb.add_real_for_vip(Real("10.0.0.1"), b)
    idx = lb.get_index_for_real("10.0.0.1")
    assert idx == 1  # index 0 is reserved
    assert structs.real_definition_unpack(lb._map("reals").lookup(structs.u32(idx)))[0].exploded == "10.0.0.1"
    lb.del_real_for_vip(Real("10.0.0.1"), a)
    assert lb.get_index_for_real("10.0.0.1") == idx  # still used by b
    lb.del_vip(b)
    with pytest.raises(NotFoundError):
        lb.get_index_for_real("10.0.0.1")


@root
def test_real_capacity_is_checked_before_anything_changes(lb):
    vip = VipKey("10.200.1.1", 80, "tcp")
    lb.add_vip(vip)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(f"10.0.0.{i}") for i in range(1, 14)], vip)
    before = lb.get_reals_for_vip(vip)
    ring = lb._vips[vip].ring.copy()
    with pytest.raises(CapacityError, match="max_reals"):
        lb.modify_reals_for_vip(ModifyAction.ADD, [Real(f"10.0.1.{i}") for i in range(1, 4)], vip)
    assert lb.get_reals_for_vip(vip) == before
    assert np.array_equal(lb._vips[vip].ring, ring)


@root
def test_delete_batch_with_unknown_real_changes_nothing(lb):
    vip = VipKey("10.200.1.1", 80, "tcp")
    lb.add_vip(vip)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.0.0.1"), Real("10.0.0.2")], vip)
    with pytest.raises(NotFoundError, match="10.0.0.9"):
        lb.modify_reals_for_vip(ModifyAction.DEL, [Real("10.0.0.1"), Real("10.0.0.9")], vip)
    assert [r.address.exploded for r in lb.get_reals_for_vip(vip)] == ["10.0.0.1", "10.0.0.2"]


@root
def test_modify_real_flags(lb):
    vip = VipKey("10.200.1.1", 80, "tcp")
    lb.add_vip(vip)
    lb.add_real_for_vip(Real("fc00::1"), vip)
    lb.modify_real("fc00::1", 2)
    assert lb.get_real_flags("fc00::1") == 2
    idx = lb.get_index_for_real("fc00::1")
    _, flags = structs.real_definition_unpack(lb._map("reals").lookup(structs.u32(idx)))
    assert flags == 2 | 1  # LOCAL_REAL, and the IPv6 bit katran keeps itself
    lb.modify_real("fc00::1", 2, set_flag=False)
    assert lb.get_real_flags("fc00::1") == 0
    with pytest.raises(NotFoundError):
        lb.modify_real("fc00::9", 2)
    with pytest.raises(ValidationError, match="address"):
        lb.modify_real("fc00::zz", 2)


# ---------------------------------------------------------------- CH rings
@root
def test_ring_in_the_map_is_the_maglev_ring_and_updates_minimally(lb):
    vip = VipKey("10.200.1.1", 80, "tcp")
    lb.add_vip(vip)
    reals = [Real(f"10.0.0.{i}") for i in range(1, 6)]
    lb.modify_reals_for_vip(ModifyAction.ADD, reals, vip)
    endpoints = [maglev.Endpoint(lb.get_index_for_real(r.address), 1, maglev.endpoint_hash(r.address)) for r in reals]
    expected = maglev.build_ring(endpoints, RING, HashFunction.MAGLEV)
    before = ring_in_map(lb, vip)
    assert np.array_equal(before, expected)
    gone = lb.get_index_for_real("10.0.0.3")
    lb.del_real_for_vip(Real("10.0.0.3"), vip)
    after = ring_in_map(lb, vip)
    changed = before != after
    assert gone not in after and np.all(changed[before == gone])
    # Maglev's disruption is near-minimal: other reals' slots barely move (< 1% of the ring)
    assert np.count_nonzero(changed & (before != gone)) < RING // 100


@root
def test_weight_zero_drains_and_no_reals_drops(lb):
    vip = VipKey("10.200.1.1", 80, "tcp")
    lb.add_vip(vip)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.0.0.1"), Real("10.0.0.2")], vip)
    lb.add_real_for_vip(Real("10.0.0.2", 0), vip)  # re-weight to 0
    assert lb.get_reals_for_vip(vip)[1].weight == 0
    assert set(np.unique(ring_in_map(lb, vip))) == {lb.get_index_for_real("10.0.0.1")}
    lb.modify_reals_for_vip(ModifyAction.DEL, [Real("10.0.0.1"), Real("10.0.0.2")], vip)
    assert not ring_in_map(lb, vip).any()
    drops = lb.get_ch_drop_stats()
    assert lb.run_packet(tcp4()).verdict == "XDP_DROP"
    assert lb.get_ch_drop_stats() != drops


@root
def test_change_hash_function(lb):
    vip = VipKey("10.200.1.1", 80, "tcp")
    lb.add_vip(vip)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(f"10.0.0.{i}", i) for i in range(1, 4)], vip)
    v1 = ring_in_map(lb, vip)
    lb.change_hash_function_for_vip(vip, HashFunction.MAGLEV_V2)
    assert lb.get_hash_function_for_vip(vip) == HashFunction.MAGLEV_V2
    assert not np.array_equal(v1, ring_in_map(lb, vip))
    with pytest.raises(ValidationError, match="hash_function"):
        lb.change_hash_function_for_vip(vip, 7)


# ---------------------------------------------------------------- data path through KatranLb
@root
def test_mac_change_and_validation(lb):
    vip = VipKey("10.200.1.1", 80, "tcp")
    lb.add_vip(vip)
    lb.add_real_for_vip(Real("10.0.0.1"), vip)
    assert Ether(lb.run_packet(tcp4()).data).dst == MAC
    with pytest.raises(ValidationError, match="mac"):
        lb.change_mac("01:02:03")
    assert lb.get_mac() == MAC
    lb.change_mac("02:11:22:33:44:55")
    assert lb.get_mac() == "02:11:22:33:44:55"
    assert Ether(lb.run_packet(tcp4()).data).dst == "02:11:22:33:44:55"


@root
def test_get_real_for_flow_agrees_with_the_packet(lb):
    vip = VipKey("10.200.1.1", 80, "udp")
    lb.add_vip(vip)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(f"10.0.0.{i}") for i in range(1, 5)], vip)
    seen = set()
    for sport in range(1000, 1040):
        real = lb.get_real_for_flow(Flow("192.168.1.1", "10.200.1.1", sport, 80, "udp"))
        frame = bytes(Ether() / IP(src="192.168.1.1", dst="10.200.1.1") / UDP(sport=sport, dport=80) / b"x")
        assert Ether(lb.run_packet(frame).data)[IP].dst == real
        seen.add(real)
    assert len(seen) > 1
    assert lb.get_real_for_flow(Flow("192.168.1.1", "10.9.9.9", 1, 80, "udp")) is None
    with pytest.raises(ValidationError, match="flow.src"):
        lb.get_real_for_flow(Flow("fc00::1", "10.200.1.1", 1, 80, "udp"))


@root
def test_stats_getters_count_packets(lb):
    vip = VipKey("10.200.1.1", 80, "tcp")
    lb.add_vip(vip)
    lb.add_real_for_vip(Real("10.0.0.1"), vip)
    syn, ack = tcp4(flags="S"), tcp4()
    for frame in (syn, ack, ack, tcp4(dst="10.9.9.9")):
        lb.run_packet(frame)
    assert lb.get_stats_for_vip(vip).v1 == 3
    assert lb.get_stats_for_vip(vip).v2 == 3 * (len(syn) - 14)
    assert lb.get_lru_stats() == LbStats(3, 1)  # one miss: the SYN
    assert lb.get_lru_miss_stats() == LbStats(1, 0)
    assert lb.get_xdp_total_stats().v1 == 4
    assert lb.get_xdp_tx_stats().v1 == 3 and lb.get_xdp_pass_stats().v1 == 1
    assert lb.get_real_stats(lb.get_index_for_real("10.0.0.1")).v1 == 3
    assert sum(lb.get_per_core_packets_stats()) == 4
    with pytest.raises(ValidationError, match="index"):
        lb.get_real_stats(10**6)


# ---------------------------------------------------------------- healthchecks through KatranLb
@root
def test_healthchecker_dsts_via_lb():
    with KatranLb(config(enable_hc=True, katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337",
                         local_mac="00:ff:de:ad:be:af")) as lb:
        lb.add_healthchecker_dst(1, "10.0.0.1")
        lb.add_healthchecker_dst(3, "fc00::1")
        assert lb.get_healthcheckers_dst() == {1: "10.0.0.1", 3: "fc00::1"}
        with pytest.raises(ValidationError, match="somark"):
            lb.add_healthchecker_dst(0, "10.0.0.2")
        with pytest.raises(ValidationError, match="address"):
            lb.add_healthchecker_dst(2, "10.0.0")
        assert lb.get_healthcheckers_dst() == {1: "10.0.0.1", 3: "fc00::1"}
        probe = bytes(Ether() / IP(src="10.0.13.37", dst="10.200.1.1") / UDP(sport=1, dport=80) / b"hc")
        res = lb.run_hc_packet(probe, mark=3)
        assert Ether(res.data)[IPv6].dst == "fc00::1"
        lb.del_healthchecker_dst(1)
        with pytest.raises(NotFoundError):
            lb.del_healthchecker_dst(1)
        assert lb.get_hc_program_stats().processed >= 1


@root
def test_healthchecks_off_is_a_clear_error(lb):
    with pytest.raises(FeatureNotEnabledError, match="enable_hc"):
        lb.add_healthchecker_dst(1, "10.0.0.1")


# ---------------------------------------------------------------- concurrency / life cycle
@root
def test_concurrent_calls_are_serialised(lb):
    vips = [VipKey(f"10.3.0.{i}", 80, "tcp") for i in range(8)]
    errors = []

    def worker(v):
        try:
            lb.add_vip(v)
            lb.add_real_for_vip(Real("10.0.0.1"), v)
        except KatranError as e:  # pragma: no cover - would be the failure
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(v,)) for v in vips]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(v.num for v in lb._vips.values()) == list(range(8))
    assert lb._reals.get(lb._reals.address(1)).refcount == 8


@root
def test_missing_object_says_how_to_build(tmp_path):
    lb = KatranLb(config(balancer_prog_path=str(tmp_path / "nope.bpf.o")))
    with pytest.raises(KatranError, match="nope.bpf.o"):
        lb.start()
    assert not lb.started


def test_methods_before_start_are_a_clear_error():
    lb = KatranLb(config())
    with pytest.raises(KatranError, match="start"):
        lb.add_vip(VipKey("10.0.0.1", 80, "tcp"))


# ---------------------------------------------------------------- feature-parity control plane
@root
def test_features_off_are_clear_errors(lb):
    vip = VipKey("10.200.1.1", 80, "udp")
    lb.add_vip(vip)
    for flag, knob in ((VipFlag.SRC_ROUTING, "lpm_src_lookup"), (VipFlag.LOCAL_VIP, "local_delivery"),
                       (VipFlag.GLOBAL_LRU, "global_lru"), (VipFlag.UDP_STABLE_ROUTING_VIP, "udp_stable_routing")):
        with pytest.raises(FeatureNotEnabledError, match=knob):
            lb.modify_vip(vip, flag)
    assert lb.get_vip_flags(vip) == 0
    lb.modify_vip(vip, VipFlag.QUIC_VIP | VipFlag.UDP_FLOW_MIGRATION)  # no knob needed
    with pytest.raises(FeatureNotEnabledError, match="lpm_src_lookup"):
        lb.add_src_routing_rule(["10.0.0.0/8"], "10.0.0.1")
    with pytest.raises(FeatureNotEnabledError, match="inline_decap"):
        lb.add_inline_decap_dst("10.0.0.1")


@root
def test_src_routing_rules_refcount_reals_and_validate():
    with KatranLb(config(max_vips=8, max_reals=16, lpm_src_lookup=True)) as lb:
        lb.add_src_routing_rule(["192.168.0.0/17", "fc00:2307::/32"], "fc00::2307:1")
        num = lb.get_index_for_real("fc00::2307:1")
        assert lb.get_src_routing_rule() == {"192.168.0.0/17": "fc00::2307:1", "fc00:2307::/32": "fc00::2307:1"}
        key = structs.v4_lpm_key("192.168.0.0", 17)
        assert structs.u32_unpack(lb._map("lpm_src_v4").lookup(key)) == num
        with pytest.raises(ValidationError, match="src"):
            lb.add_src_routing_rule(["192.168.0.0/40"], "fc00::2307:1")
        with pytest.raises(NotFoundError):
            lb.del_src_routing_rule(["10.0.0.0/8"])
        lb.del_src_routing_rule(["192.168.0.0/17"])
        assert lb._map("lpm_src_v4").lookup(key) is None
        assert lb.get_index_for_real("fc00::2307:1") == num  # still used by the v6 rule
        lb.clear_all_src_routing_rules()
        assert lb.get_src_routing_rule_size() == 0
        with pytest.raises(NotFoundError):
            lb.get_index_for_real("fc00::2307:1")


@root
def test_inline_decap_dsts_capacity_and_duplicates():
    with KatranLb(config(max_vips=8, inline_decap_ipip=True, max_decap_dst=2)) as lb:
        lb.add_inline_decap_dst("fc00:1404::1")
        with pytest.raises(AlreadyExistsError):
            lb.add_inline_decap_dst("fc00:1404::1")
        lb.add_inline_decap_dst("10.0.0.9")
        with pytest.raises(CapacityError, match="max_decap_dst"):
            lb.add_inline_decap_dst("10.0.0.10")
        assert lb.get_inline_decap_dst() == ["fc00:1404::1", "10.0.0.9"]
        assert len(list(lb._map("decap_dst").keys())) == 2
        lb.del_inline_decap_dst("10.0.0.9")
        with pytest.raises(NotFoundError):
            lb.del_inline_decap_dst("10.0.0.9")
        # recirculation is wired: the balancer sits in its own subprograms slot 0
        assert lb._map("subprograms").lookup(structs.u32(0)) is not None


@root
def test_down_reals_map(lb):
    vip = VipKey("10.200.1.6", 80, "udp")
    lb.add_vip(vip, VipFlag.UDP_FLOW_MIGRATION)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.0.0.1"), Real("10.0.0.2")], vip)
    lb.add_down_real(vip, "10.0.0.1")
    assert lb.get_down_reals(vip) == ["10.0.0.1"]
    outer = lb._map("vip_to_down_reals_map")
    assert outer.inner_map_id(structs.vip_definition(vip.address, 80, 17))
    with pytest.raises(NotFoundError):
        lb.remove_down_real(vip, "10.0.0.2")
    with pytest.raises(NotFoundError):
        lb.add_down_real(vip, "10.0.0.99")
    lb.remove_down_real(vip, "10.0.0.1")
    assert lb.get_down_reals(vip) == []
    lb.add_down_real(vip, "10.0.0.2")
    lb.del_vip(vip)
    assert outer.inner_map_id(structs.vip_definition(vip.address, 80, 17)) in (None, 0)


@root
def test_quic_mapping_ids_and_cid_v3():
    from katran import QuicReal

    with KatranLb(config(max_vips=8, max_reals=16)) as lb:
        lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.0.0.1", 1022)])
        with pytest.raises(ValidationError, match="enable_cid_v3"):
            lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.0.0.1", 0x1000000)])
        with pytest.raises(NotFoundError):
            lb.modify_quic_reals_mapping(ModifyAction.DEL, [QuicReal("10.0.0.2", 1022)])
        assert [(str(q.address), q.id) for q in lb.get_quic_reals_mapping()] == [("10.0.0.1", 1022)]
    with KatranLb(config(max_vips=8, max_reals=16, enable_cid_v3=True)) as lb:
        lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.0.0.1", 0x7F000001)])
        num = lb.get_index_for_real("10.0.0.1")
        assert structs.u32_unpack(lb._map("server_id_map").lookup(structs.u32(0x7F000001))) == num
        lb.modify_quic_reals_mapping(ModifyAction.DEL, [QuicReal("10.0.0.1", 0x7F000001)])
        assert lb._map("server_id_map").lookup(structs.u32(0x7F000001)) is None


@root
def test_every_feature_knob_loads_together():
    cfg = config(max_vips=32, gue_encap=True, katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337",
                 tcp_server_id_routing=True, udp_stable_routing=True, lpm_src_lookup=True, global_lru=True,
                 local_delivery=True, icmp_toobig_generation=True, inline_decap_ipip=True, inline_decap_gue=True,
                 decap_strict_destination=True, enable_cid_v3=True, forwarding_cores=[0])
    with KatranLb(cfg) as lb:
        rodata = lb._obj.map(".rodata").lookup(structs.u32(0))
        assert rodata is not None
        vip = VipKey("10.200.1.1", 80, "tcp")
        lb.add_vip(vip, VipFlag.GLOBAL_LRU | VipFlag.SRC_ROUTING | VipFlag.LOCAL_VIP)
        lb.add_real_for_vip(Real("10.0.0.1"), vip)
        out = Ether(lb.run_packet(tcp4()).data)
        assert out[UDP].dport == 6080 and out[IP].src == "10.0.13.37"  # GUE with the configured source


@root
def test_echo_requests_are_answered_only_for_vip_addresses(lb):
    from scapy.layers.inet import ICMP

    ping = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="192.168.1.1", dst="10.200.1.1")
                 / ICMP(type="echo-request"))
    assert lb.run_packet(ping).verdict == "XDP_PASS"  # not a VIP address (yet): the kernel's business
    tcp, udp = VipKey("10.200.1.1", 80, "tcp"), VipKey("10.200.1.1", 53, "udp")
    lb.add_vip(tcp)
    lb.add_vip(udp)
    assert lb.run_packet(ping).verdict == "XDP_TX"
    lb.del_vip(tcp)
    assert lb.run_packet(ping).verdict == "XDP_TX"  # still a VIP address through the UDP VIP
    lb.del_vip(udp)
    assert lb.run_packet(ping).verdict == "XDP_PASS"
    assert lb._map("vip_addrs").lookup(structs.address("10.200.1.1")) is None


def test_scoped_addresses_are_refused_everywhere(lb):
    """fe80::1%a and fe80::1%b would share one kernel key (and fc00::77%x get its own real index)."""
    from katran import ValidationError

    vip = VipKey("fc00::1", 80, 6)
    lb.add_vip(vip)
    lb.add_real_for_vip(Real("fc00::77"), vip)
    before = (lb.get_all_vips(), lb.get_reals_for_vip(vip), lb.get_index_for_real("fc00::77"))
    calls = [
        lambda: lb.add_vip(VipKey("fe80::1%a", 80, 6)),
        lambda: lb.add_real_for_vip(Real("fc00::77%x"), vip),
        lambda: lb.modify_real("fc00::77%x", 2),
        lambda: lb.get_index_for_real("fc00::77%x"),
        lambda: lb.get_real_flags("fc00::77%x"),
    ]
    for call in calls:
        with pytest.raises(ValidationError, match="scoped IPv6 addresses"):
            call()
    assert (lb.get_all_vips(), lb.get_reals_for_vip(vip), lb.get_index_for_real("fc00::77")) == before


def test_ipv4_mapped_addresses_are_listed_in_dotted_form(lb):
    vip = VipKey("::ffff:10.0.0.77", 80, 6)
    lb.add_vip(vip)
    lb.add_real_for_vip(Real("::ffff:10.1.1.1"), vip)
    lb.add_down_real(vip, "::ffff:10.1.1.1")
    assert lb.get_down_reals(vip) == ["::ffff:10.1.1.1"]
    assert str(vip) == "[::ffff:10.0.0.77]:80/tcp"
