"""KatranLb on the fake kernel (no privileges): life cycle, VIP and real state, index
allocation and reference counts, validation, the map contents each change writes,
and the bugs of issue 11 (QUIC id range, down marks of freed indices)."""

from __future__ import annotations

import errno

import pytest

from conftest import MAC, lb_config
from katran import (
    AlreadyExistsError,
    BuildError,
    CapacityError,
    FeatureNotEnabledError,
    HashFunction,
    KatranError,
    KatranLb,
    KernelError,
    LbStats,
    ModifyAction,
    NotFoundError,
    QuicReal,
    Real,
    RealFlag,
    ValidationError,
    VipFlag,
    VipKey,
)
from katran import flows, maglev, structs
from katran.dataplane import map_sizes
from katran.errors import NotStartedError
from katran.testing import FakeKernel

RING = 13
V4 = VipKey("10.200.1.1", 80, "tcp")
V6 = VipKey("fc00::1", 443, "udp")


def make(k=None, **kw) -> KatranLb:
    kw.setdefault("max_vips", 8)
    kw.setdefault("max_reals", 16)
    kw.setdefault("ch_ring_size", RING)
    lb = KatranLb(lb_config(**kw), kernel=k or FakeKernel())
    lb.start()
    return lb


def contents(lb: KatranLb, name: str) -> dict:
    return lb.kernel.map_contents(lb._map(name))


def ring_in_map(lb: KatranLb, vip: VipKey) -> list[int]:
    num = lb._vips[vip].num
    ch = lb._map("ch_rings")
    return [structs.u32_unpack(ch.lookup(structs.u32(num * RING + i))) for i in range(RING)]


def reals_of_ring(lb: KatranLb, vip: VipKey) -> set:
    return {str(lb._reals.address(n)) for n in ring_in_map(lb, vip) if n}


# ---------------------------------------------------------------- life cycle
def test_start_sizes_every_map_and_sets_the_knobs(fake_kernel):
    lb = make(fake_kernel, gue_encap=True, katran_src_v4="10.0.13.37", gue_dport=9999, max_pckt_size=1400)
    sizes = map_sizes(lb.config)
    for name, size in sizes.items():
        assert lb._map(name).max_entries == size, name
    ro = lb._obj.rodata
    assert ro["ring_size"] == RING and ro["max_vips"] == 8
    assert ro["gue_encap"] == 1 and ro["gue_dport"] == 9999 and ro["max_pckt_size"] == 1400
    assert ro["lpm_src_lookup"] == 0
    assert contents(lb, "ctl_array") == {structs.u32(0): structs.ctl_value_mac(bytes.fromhex("0000deadbeaf")),
                                         structs.u32(structs.CTL_ANY_PORT_VIPS): structs.ctl_value_u64(1),
                                         structs.u32(structs.CTL_FLOW_CACHE_EPOCH): structs.ctl_value_u64(1),
                                         structs.u32(structs.CTL_VIP_FILTER_DONE): structs.ctl_value_u64(1)}
    assert contents(lb, "pckt_srcs") == {structs.u32(0): structs.real_definition("10.0.13.37", 0)}
    lb.close()


def test_forwarding_cores_get_their_own_lru(fake_kernel):
    lb = make(fake_kernel, forwarding_cores=[0], lru_size=5000, global_lru=True, global_lru_size=77)
    lru = contents(lb, "lru_mapping")
    assert list(lru) == [structs.u32(0)]
    glru = contents(lb, "global_lru_maps")
    assert list(glru) == [structs.u32(0)]
    inner = [m for m in fake_kernel.live_maps() if m.name.startswith("katran_lru_")]
    assert len(inner) == 1 and inner[0].max_entries == 5000
    lb.close()
    assert fake_kernel.live_maps() == []


def test_inline_decap_provisions_recirculation(fake_kernel):
    lb = make(fake_kernel, inline_decap_ipip=True)
    assert contents(lb, "subprograms") == {structs.u32(0): ("prog", "balancer_ingress")}
    lb.close()


def test_close_releases_everything_and_is_idempotent(fake_kernel):
    lb = make(fake_kernel, enable_hc=True, katran_src_v4="10.0.13.37")
    lb.add_vip(V4)
    lb.add_real_for_vip(Real("10.0.0.1"), V4)
    lb.add_down_real(V4, "10.0.0.1")
    assert lb.started and fake_kernel.live_maps()
    lb.close()
    lb.close()
    assert not lb.started and fake_kernel.live_maps() == []


def test_start_twice_is_a_noop(fake_kernel):
    lb = make(fake_kernel)
    obj = lb._obj
    lb.start()
    assert lb._obj is obj and fake_kernel.calls["load"] == 1
    lb.close()


@pytest.mark.parametrize("op", ["open_object", "load", "map_update", "create_map"])
def test_failed_start_leaves_nothing_behind(op):
    k = FakeKernel()
    lb = KatranLb(lb_config(forwarding_cores=[0], max_vips=8, ch_ring_size=RING), kernel=k)
    k.fail(op, nth=1, err=errno.ENOMEM)
    with pytest.raises(KernelError, match="ENOMEM"):
        lb.start()
    assert not lb.started and k.live_maps() == [] and not k.xdp
    lb.start()  # and a retry works
    assert lb.started
    lb.close()


def test_missing_object_says_how_to_build(tmp_path):
    lb = KatranLb(lb_config(balancer_prog_path=str(tmp_path / "nope.bpf.o")), kernel=FakeKernel())
    with pytest.raises(BuildError, match="nope.bpf.o"):
        lb.start()


class _KernelWithoutMap(FakeKernel):
    def __init__(self, drop: str) -> None:
        super().__init__()
        self.drop = drop

    def open_object(self, path):
        spec = super().open_object(path)
        spec._maps.pop(self.drop, None)
        return spec


@pytest.mark.parametrize("name", ["vip_map", "ch_rings", "reals", "stats", "lru_mapping", "decap_dst"])
def test_a_map_missing_from_the_object_fails_loudly(name):
    lb = KatranLb(lb_config(), kernel=_KernelWithoutMap(name))
    with pytest.raises(BuildError, match=name):
        lb.start()
    assert not lb.started


def test_standalone_attach_and_close_detaches_only_its_own_program(fake_kernel):
    cfg = dict(testing=False, main_interface="eth0", xdp_attach_mode="generic", forwarding_cores=[0])
    old, new = make(fake_kernel, **cfg), make(fake_kernel, **cfg)
    ifindex = fake_kernel.interfaces["eth0"].ifindex
    assert fake_kernel.xdp_attached_prog_id(ifindex, "generic") == new._obj.program("balancer_ingress").id
    old.close()
    assert fake_kernel.xdp_attached_prog_id(ifindex, "generic") == new._obj.program("balancer_ingress").id
    new.close()
    assert fake_kernel.xdp_attached_prog_id(ifindex, "generic") == 0


def test_unknown_interface_is_a_clear_error(fake_kernel):
    lb = KatranLb(lb_config(testing=False, main_interface="no-such-if0"), kernel=fake_kernel)
    with pytest.raises(KeyError, match="no-such-if0"):
        lb.start()
    assert not lb.started and fake_kernel.live_maps() == []


def test_kernel_must_look_like_a_kernel():
    with pytest.raises(ValidationError, match="kernel"):
        KatranLb(lb_config(), kernel=object())


METHODS_NEEDING_START = [
    lambda lb: lb.add_vip(V4),
    lambda lb: lb.change_mac("02:00:00:00:00:01"),
    lambda lb: lb.get_lru_stats(),
    lambda lb: lb.add_src_routing_rule(["10.0.0.0/8"], "10.0.0.1"),
    lambda lb: lb.add_inline_decap_dst("10.0.0.1"),
    lambda lb: lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.0.0.1", 1)]),
    lambda lb: lb.add_healthchecker_dst(1, "10.0.0.1"),
    lambda lb: lb.run_packet(b"x" * 60),
    lambda lb: lb.get_xdp_total_stats(),
]


@pytest.mark.parametrize("call", METHODS_NEEDING_START)
def test_methods_before_start_raise_not_started(call):
    lb = KatranLb(lb_config(), kernel=FakeKernel())
    with pytest.raises(NotStartedError, match="start"):
        call(lb)
    assert isinstance(NotStartedError("x"), KatranError)


# ---------------------------------------------------------------- VIPs
def test_add_vip_writes_vip_map_and_vip_addrs(fake_lb):
    fake_lb.add_vip(V4, VipFlag.NO_SPORT)
    assert contents(fake_lb, "vip_map") == {
        structs.vip_definition(V4.address, 80, 6): structs.vip_meta(VipFlag.NO_SPORT, 0)}
    assert contents(fake_lb, "vip_addrs") == {structs.address(V4.address): structs.u32(1)}
    other_port = VipKey("10.200.1.1", 443, "tcp")
    fake_lb.add_vip(other_port)
    assert contents(fake_lb, "vip_addrs") == {structs.address(V4.address): structs.u32(2)}
    fake_lb.del_vip(V4)
    assert contents(fake_lb, "vip_addrs") == {structs.address(V4.address): structs.u32(1)}
    fake_lb.del_vip(other_port)
    assert contents(fake_lb, "vip_addrs") == {} and contents(fake_lb, "vip_map") == {}


def test_add_vip_twice_and_unknown_vip(fake_lb):
    fake_lb.add_vip(V4)
    with pytest.raises(AlreadyExistsError, match="10.200.1.1"):
        fake_lb.add_vip(V4)
    other = VipKey("10.200.1.2", 80, "tcp")
    for call in (lambda: fake_lb.del_vip(other), lambda: fake_lb.get_vip_flags(other),
                 lambda: fake_lb.modify_vip(other, 1), lambda: fake_lb.add_real_for_vip(Real("10.0.0.1"), other),
                 lambda: fake_lb.get_reals_for_vip(other), lambda: fake_lb.get_stats_for_vip(other),
                 lambda: fake_lb.change_hash_function_for_vip(other, 1), lambda: fake_lb.get_down_reals(other),
                 lambda: fake_lb.add_down_real(other, "10.0.0.1"), lambda: fake_lb.clear_down_reals(other)):
        with pytest.raises(NotFoundError, match="10.200.1.2"):
            call()
    assert fake_lb.get_all_vips() == [V4]


def test_vip_numbers_are_allocated_and_reused(fake_lb):
    vips = [VipKey(f"10.3.0.{i}", 80, "tcp") for i in range(8)]
    for v in vips:
        fake_lb.add_vip(v)
    assert [fake_lb._vips[v].num for v in vips] == list(range(8))
    with pytest.raises(CapacityError, match="max_vips"):
        fake_lb.add_vip(VipKey("10.4.0.1", 80, "tcp"))
    fake_lb.del_vip(vips[3])
    new = VipKey("10.4.0.1", 80, "tcp")
    fake_lb.add_vip(new)
    assert fake_lb._vips[new].num == 3


@pytest.mark.parametrize("vip", ["10.0.0.1:80", ("10.0.0.1", 80, "tcp"), None, 7])
def test_vip_must_be_a_vipkey(fake_lb, vip):
    with pytest.raises(ValidationError, match="vip"):
        fake_lb.add_vip(vip)
    assert fake_lb.get_all_vips() == []


@pytest.mark.parametrize("flags", [-1, 2**32, "1", 1.5, True, 1 << 20])
def test_bad_vip_flags_are_refused(fake_lb, flags):
    with pytest.raises(ValidationError, match="flags"):
        fake_lb.add_vip(V4, flags)
    assert fake_lb.get_all_vips() == []


@pytest.mark.parametrize("flag, knob", [(VipFlag.SRC_ROUTING, "lpm_src_lookup"), (VipFlag.LOCAL_VIP, "local_delivery"),
                                        (VipFlag.GLOBAL_LRU, "global_lru"),
                                        (VipFlag.UDP_STABLE_ROUTING_VIP, "udp_stable_routing")])
def test_flags_needing_a_knob(fake_lb, flag, knob):
    with pytest.raises(FeatureNotEnabledError, match=knob):
        fake_lb.add_vip(V4, flag)
    fake_lb.add_vip(V4)
    with pytest.raises(FeatureNotEnabledError, match=knob):
        fake_lb.modify_vip(V4, flag)
    assert fake_lb.get_vip_flags(V4) == 0
    lb = make(**{knob: True})
    lb.add_vip(V4, flag)
    assert lb.get_vip_flags(V4) == flag
    lb.close()


def test_modify_vip_sets_and_clears_flags_in_the_map(fake_lb):
    fake_lb.add_vip(V4)
    fake_lb.modify_vip(V4, VipFlag.NO_SPORT | VipFlag.NO_LRU)
    fake_lb.modify_vip(V4, VipFlag.NO_SPORT, set_flag=False)
    assert fake_lb.get_vip_flags(V4) == VipFlag.NO_LRU
    key = structs.vip_definition(V4.address, 80, 6)
    assert contents(fake_lb, "vip_map")[key] == structs.vip_meta(VipFlag.NO_LRU, 0)


# ---------------------------------------------------------------- reals and rings
def test_ring_in_the_map_is_the_maglev_ring(fake_lb):
    fake_lb.add_vip(V4)
    reals = [Real(f"10.0.0.{i}", i) for i in range(1, 4)]
    fake_lb.modify_reals_for_vip(ModifyAction.ADD, reals, V4)
    endpoints = [maglev.Endpoint(num=fake_lb.get_index_for_real(r.address), weight=r.weight,
                                 hash=maglev.endpoint_hash(r.address)) for r in reals]
    assert ring_in_map(fake_lb, V4) == maglev.build_ring(endpoints, RING, HashFunction.MAGLEV).tolist()
    before = fake_lb.kernel.calls["write"]
    fake_lb.modify_reals_for_vip(ModifyAction.ADD, reals, V4)  # nothing changes: nothing is written
    assert fake_lb.kernel.calls["write"] == before


def test_real_indices_are_refcounted_across_vips(fake_lb):
    fake_lb.add_vip(V4)
    fake_lb.add_vip(V6)
    fake_lb.add_real_for_vip(Real("fc00::2"), V4)
    fake_lb.add_real_for_vip(Real("fc00::2"), V6)
    num = fake_lb.get_index_for_real("fc00::2")
    assert num == 1 and fake_lb._reals.get(fake_lb._reals.address(num)).refcount == 2
    assert contents(fake_lb, "reals")[structs.u32(1)] == structs.real_definition("fc00::2", RealFlag.IPV6)
    fake_lb.del_real_for_vip(Real("fc00::2"), V4)
    assert fake_lb.get_index_for_real("fc00::2") == num
    fake_lb.del_vip(V6)
    with pytest.raises(NotFoundError):
        fake_lb.get_index_for_real("fc00::2")
    fake_lb.add_real_for_vip(Real("10.0.0.9"), V4)
    assert fake_lb.get_index_for_real("10.0.0.9") == 2  # freed indices queue at the back


def test_real_capacity_is_checked_before_anything_changes(fake_lb):
    fake_lb.add_vip(V4)
    fake_lb.modify_reals_for_vip(ModifyAction.ADD, [Real(f"10.0.0.{i}") for i in range(1, 14)], V4)
    before = (fake_lb.get_reals_for_vip(V4), ring_in_map(fake_lb, V4))
    writes = fake_lb.kernel.calls["write"]
    with pytest.raises(CapacityError, match="max_reals"):
        fake_lb.modify_reals_for_vip(ModifyAction.ADD, [Real(f"10.0.1.{i}") for i in range(1, 4)], V4)
    assert (fake_lb.get_reals_for_vip(V4), ring_in_map(fake_lb, V4)) == before
    assert fake_lb.kernel.calls["write"] == writes


def test_v6_vip_refuses_v4_real_and_changes_nothing(fake_lb):
    fake_lb.add_vip(V6)
    with pytest.raises(ValidationError, match="IPv6 VIP"):
        fake_lb.modify_reals_for_vip(ModifyAction.ADD, [Real("fc00::5"), Real("10.0.0.1")], V6)
    assert fake_lb.get_reals_for_vip(V6) == [] and len(fake_lb._reals) == 0


def test_delete_batch_with_unknown_real_changes_nothing(fake_lb):
    fake_lb.add_vip(V4)
    fake_lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.0.0.1"), Real("10.0.0.2")], V4)
    with pytest.raises(NotFoundError, match="10.0.0.9"):
        fake_lb.modify_reals_for_vip(ModifyAction.DEL, [Real("10.0.0.1"), Real("10.0.0.9")], V4)
    assert [str(r.address) for r in fake_lb.get_reals_for_vip(V4)] == ["10.0.0.1", "10.0.0.2"]


@pytest.mark.parametrize("action", [2, -1, "add", None])
def test_bad_action_is_refused(fake_lb, action):
    fake_lb.add_vip(V4)
    with pytest.raises(ValidationError, match="action"):
        fake_lb.modify_reals_for_vip(action, [Real("10.0.0.1")], V4)
    with pytest.raises(ValidationError, match="action"):
        fake_lb.modify_quic_reals_mapping(action, [QuicReal("10.0.0.1", 1)])


@pytest.mark.parametrize("bad", ["10.0.0.1", ("10.0.0.1", 1), None])
def test_reals_must_be_real_objects(fake_lb, bad):
    fake_lb.add_vip(V4)
    with pytest.raises(ValidationError, match="real"):
        fake_lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.0.0.1"), bad], V4)
    assert fake_lb.get_reals_for_vip(V4) == []


def test_weight_zero_drains_and_no_reals_drops(fake_lb):
    fake_lb.add_vip(V4)
    fake_lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.0.0.1"), Real("10.0.0.2")], V4)
    fake_lb.add_real_for_vip(Real("10.0.0.2", 0), V4)
    assert reals_of_ring(fake_lb, V4) == {"10.0.0.1"}
    fake_lb.modify_reals_for_vip(ModifyAction.DEL, [Real("10.0.0.1"), Real("10.0.0.2")], V4)
    assert set(ring_in_map(fake_lb, V4)) == {0}


def test_change_hash_function_rebuilds_the_ring(fake_lb):
    fake_lb.add_vip(V4)
    reals = [Real(f"10.0.0.{i}", i) for i in range(1, 4)]
    fake_lb.modify_reals_for_vip(ModifyAction.ADD, reals, V4)
    fake_lb.change_hash_function_for_vip(V4, HashFunction.MAGLEV_V2)
    assert fake_lb.get_hash_function_for_vip(V4) == HashFunction.MAGLEV_V2
    endpoints = [maglev.Endpoint(num=fake_lb.get_index_for_real(r.address), weight=r.weight,
                                 hash=maglev.endpoint_hash(r.address)) for r in reals]
    assert ring_in_map(fake_lb, V4) == maglev.build_ring(endpoints, RING, HashFunction.MAGLEV_V2).tolist()
    with pytest.raises(ValidationError, match="hash_function"):
        fake_lb.change_hash_function_for_vip(V4, 7)
    assert fake_lb.get_hash_function_for_vip(V4) == HashFunction.MAGLEV_V2


def test_del_vip_zeroes_its_ring_for_the_next_vip(fake_lb):
    fake_lb.add_vip(V4)
    fake_lb.add_real_for_vip(Real("10.0.0.1"), V4)
    fake_lb.del_vip(V4)
    assert contents(fake_lb, "ch_rings") == {} and len(fake_lb._reals) == 0


def test_modify_real_flags(fake_lb):
    fake_lb.add_vip(V6)
    fake_lb.add_real_for_vip(Real("fc00::2"), V6)
    fake_lb.modify_real("fc00::2", RealFlag.LOCAL_REAL | RealFlag.IPV6)
    assert fake_lb.get_real_flags("fc00::2") == RealFlag.LOCAL_REAL  # the family bit is not the caller's
    assert contents(fake_lb, "reals")[structs.u32(1)] == structs.real_definition(
        "fc00::2", RealFlag.LOCAL_REAL | RealFlag.IPV6)
    fake_lb.modify_real("fc00::2", RealFlag.LOCAL_REAL, set_flag=False)
    assert fake_lb.get_real_flags("fc00::2") == 0
    with pytest.raises(NotFoundError):
        fake_lb.modify_real("fc00::9", 1)
    with pytest.raises(ValidationError, match="flags"):
        fake_lb.modify_real("fc00::2", 256)


@pytest.mark.parametrize("address", ["10.0.0.300", "", "fc00::1::2", None, 5])
def test_invalid_addresses_are_refused_and_counted(fake_lb, address):
    with pytest.raises(ValidationError, match="address"):
        fake_lb.get_index_for_real(address)
    with pytest.raises(ValidationError, match="address"):
        fake_lb.modify_real(address, 0)
    assert fake_lb.get_katran_lb_stats() == LbStats(0, 2)


def test_failed_writes_are_counted(fake_lb, fake_kernel):
    fake_kernel.fail("map_update", 1)
    with pytest.raises(KernelError):
        fake_lb.add_vip(V4)
    assert fake_lb.get_katran_lb_stats() == LbStats(1, 0)


# ---------------------------------------------------------------- QUIC server ids
def test_quic_ids_map_to_real_indices(fake_lb):
    fake_lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.0.0.1", 5), QuicReal("10.0.0.2", 6)])
    sid = fake_lb._map("server_id_map")
    assert structs.u32_unpack(sid.lookup(structs.u32(5))) == fake_lb.get_index_for_real("10.0.0.1")
    fake_lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.0.0.3", 5)])  # moves id 5
    with pytest.raises(NotFoundError):
        fake_lb.get_index_for_real("10.0.0.1")  # its only reference is gone
    assert [str(q.address) for q in fake_lb.get_quic_reals_mapping()] == ["10.0.0.3", "10.0.0.2"]
    with pytest.raises(NotFoundError, match="10.0.0.2 with id 5"):
        fake_lb.modify_quic_reals_mapping(ModifyAction.DEL, [QuicReal("10.0.0.2", 5)])
    fake_lb.modify_quic_reals_mapping(ModifyAction.DEL, [QuicReal("10.0.0.3", 5), QuicReal("10.0.0.3", 5)])
    assert structs.u32_unpack(sid.lookup(structs.u32(5))) == 0
    assert fake_lb.get_quic_reals_mapping() == [QuicReal("10.0.0.2", 6)]


def test_quic_id_range_is_the_map_size(fake_lb):
    """-quic_mapping 10.9.9.9=16777214 failed with E2BIG and leaked the real (issue 11); the map is
    sized by max_server_ids (default 65,536 entries, not Katran's 16,777,214: issue 12)."""
    top = fake_lb._map("server_id_map").max_entries - 1
    assert top == 65535 == fake_lb._config.max_server_ids - 1
    with pytest.raises(ValidationError, match=r"quic_real.id=65536.*\[1, 65535\].*max_server_ids"):
        fake_lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.9.9.9", 65536)])
    assert len(fake_lb._reals) == 0
    fake_lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.9.9.9", top)])
    assert fake_lb.get_quic_reals_mapping() == [QuicReal("10.9.9.9", top)]
    with pytest.raises(ValidationError, match="quic_real.id"):
        fake_lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.9.9.9", 0)])


def test_kernel_refusing_a_quic_id_leaves_no_real_allocated(fake_lb, fake_kernel):
    fake_kernel.fail("map_update", nth=2, err=errno.E2BIG)  # 1: reals[num], 2: server_id_map[id]
    with pytest.raises(KernelError, match="E2BIG"):
        fake_lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.9.9.9", 7)])
    assert len(fake_lb._reals) == 0 and fake_lb.get_quic_reals_mapping() == []
    fake_lb.add_vip(V4)
    fake_lb.add_real_for_vip(Real("10.0.0.1"), V4)
    assert fake_lb.get_index_for_real("10.0.0.1") == 1  # the index was given back


def test_max_server_ids_sizes_the_array():
    lb = make(max_server_ids=1000)
    assert lb._map("server_id_map").max_entries == 1000
    lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.0.0.1", 999)])
    with pytest.raises(ValidationError, match=r"quic_real.id=1000: .*\[1, 999\]"):
        lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.0.0.2", 1000)])
    assert lb.get_quic_reals_mapping() == [QuicReal("10.0.0.1", 999)]
    lb.close()


@pytest.mark.parametrize("value", [0, 1, 16_777_215, "x"])
def test_max_server_ids_is_validated(value):
    with pytest.raises(ValidationError, match="max_server_ids"):
        lb_config(max_server_ids=value)


def test_cid_v3_hash_holds_at_most_max_server_ids():
    lb = make(enable_cid_v3=True, max_server_ids=2)
    lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.0.0.1", 7), QuicReal("10.0.0.2", 2**31)])
    lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.0.0.3", 7)])  # a move needs no new entry
    with pytest.raises(ValidationError, match=r"max_server_ids=2: 3 QUIC server ids"):
        lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.0.0.1", 9)])
    assert len(contents(lb, "server_id_map")) == 2
    lb.close()


def test_cid_v3_server_ids_use_a_hash():
    lb = make(enable_cid_v3=True)
    sid = lb._map("server_id_map")
    assert sid.type == 1 and sid.max_entries == 65_536
    lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.0.0.1", 2**32 - 1)])
    assert structs.u32(2**32 - 1) in contents(lb, "server_id_map")
    lb.modify_quic_reals_mapping(ModifyAction.DEL, [QuicReal("10.0.0.1", 2**32 - 1)])
    assert contents(lb, "server_id_map") == {}
    lb.close()


def test_quic_capacity(fake_lb):
    with pytest.raises(CapacityError, match="max_reals"):
        fake_lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal(f"10.0.1.{i}", i) for i in range(1, 17)])
    assert fake_lb.get_quic_reals_mapping() == [] and len(fake_lb._reals) == 0


# ---------------------------------------------------------------- source routing
@pytest.fixture
def lpm_lb():
    lb = make(lpm_src_lookup=True, max_lpm_src_size=3)
    yield lb
    lb.close()


def test_src_routing_rules_refcount_reals(lpm_lb):
    lpm_lb.add_src_routing_rule(["192.168.0.0/17", "fc00:2307::/32"], "fc00::2307:1")
    num = lpm_lb.get_index_for_real("fc00::2307:1")
    assert contents(lpm_lb, "lpm_src_v4") == {structs.v4_lpm_key("192.168.0.0", 17): structs.u32(num)}
    assert lpm_lb._reals.get(lpm_lb._reals.address(num)).refcount == 2
    lpm_lb.add_src_routing_rule(["192.168.0.0/17"], "10.0.0.1")  # re-pointed
    assert lpm_lb.get_src_routing_rule() == {"192.168.0.0/17": "10.0.0.1", "fc00:2307::/32": "fc00::2307:1"}
    assert lpm_lb._reals.get(lpm_lb._reals.address(num)).refcount == 1
    lpm_lb.clear_all_src_routing_rules()
    assert lpm_lb.get_src_routing_rule_size() == 0 and len(lpm_lb._reals) == 0
    assert contents(lpm_lb, "lpm_src_v4") == {} and contents(lpm_lb, "lpm_src_v6") == {}


@pytest.mark.parametrize("src", ["192.168.0.0/40", "nope", 10, "10.0.0.0/-1"])
def test_bad_prefixes_are_refused(lpm_lb, src):
    with pytest.raises(ValidationError, match="src"):
        lpm_lb.add_src_routing_rule(["10.0.0.0/8", src], "10.0.0.1")
    assert lpm_lb.get_src_routing_rule() == {}


def test_src_routing_capacity_and_unknown_rules(lpm_lb):
    with pytest.raises(CapacityError, match="max_lpm_src_size"):
        lpm_lb.add_src_routing_rule(["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16", "10.4.0.0/16"], "10.0.0.1")
    assert lpm_lb.get_src_routing_rule() == {}
    with pytest.raises(NotFoundError, match="10.0.0.0/8"):
        lpm_lb.del_src_routing_rule(["10.0.0.0/8"])
    with pytest.raises(ValidationError, match="dst"):
        lpm_lb.add_src_routing_rule(["10.1.0.0/16"], "nope")


def test_src_routing_needs_the_knob(fake_lb):
    with pytest.raises(FeatureNotEnabledError, match="lpm_src_lookup"):
        fake_lb.add_src_routing_rule(["10.0.0.0/8"], "10.0.0.1")


# ---------------------------------------------------------------- inline decap
def test_inline_decap_dsts():
    lb = make(inline_decap_gue=True, max_decap_dst=2)
    lb.add_inline_decap_dst("10.1.1.1")
    lb.add_inline_decap_dst("fc00::1")
    assert contents(lb, "decap_dst") == {structs.address("10.1.1.1"): structs.u32(0),
                                         structs.address("fc00::1"): structs.u32(0)}
    with pytest.raises(AlreadyExistsError):
        lb.add_inline_decap_dst("10.1.1.1")
    with pytest.raises(CapacityError, match="max_decap_dst"):
        lb.add_inline_decap_dst("10.1.1.2")
    lb.del_inline_decap_dst("10.1.1.1")
    assert lb.get_inline_decap_dst() == ["fc00::1"]
    with pytest.raises(NotFoundError):
        lb.del_inline_decap_dst("10.1.1.1")
    lb.close()


def test_inline_decap_needs_a_knob(fake_lb):
    with pytest.raises(FeatureNotEnabledError, match="inline_decap"):
        fake_lb.add_inline_decap_dst("10.0.0.1")


# ---------------------------------------------------------------- down reals
def _down_entries(lb: KatranLb, vip: VipKey) -> dict:
    outer = contents(lb, "vip_to_down_reals_map")
    key = structs.vip_definition(vip.address, vip.port, vip.proto)
    return outer[key][1] if key in outer else None


def test_down_reals_map(fake_lb):
    fake_lb.add_vip(V4)
    fake_lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.0.0.1"), Real("10.0.0.2")], V4)
    fake_lb.add_down_real(V4, "10.0.0.1")
    fake_lb.add_down_real(V4, "10.0.0.1")
    assert fake_lb.get_down_reals(V4) == ["10.0.0.1"]
    assert _down_entries(fake_lb, V4) == {structs.u32(1): b"\x01"}
    fake_lb.add_down_real(V4, "10.0.0.2")
    fake_lb.remove_down_real(V4, "10.0.0.1")
    assert _down_entries(fake_lb, V4) == {structs.u32(2): b"\x01"}
    with pytest.raises(NotFoundError, match="down real"):
        fake_lb.remove_down_real(V4, "10.0.0.1")
    with pytest.raises(NotFoundError, match="real"):
        fake_lb.add_down_real(V4, "10.0.0.9")
    fake_lb.clear_down_reals(V4)
    assert fake_lb.get_down_reals(V4) == [] and _down_entries(fake_lb, V4) is None
    assert [m for m in fake_lb.kernel.live_maps() if m.name == "katran_down"] == []


def test_a_freed_index_loses_its_down_mark(fake_lb):
    """A real marked down then deleted left its down entry to the next real on its index (issue 11)."""
    fake_lb.add_vip(V4)
    fake_lb.add_real_for_vip(Real("10.0.0.1"), V4)
    fake_lb.add_down_real(V4, "10.0.0.1")
    fake_lb.del_real_for_vip(Real("10.0.0.1"), V4)
    assert fake_lb.get_down_reals(V4) == [] and _down_entries(fake_lb, V4) == {}
    fake_lb.add_real_for_vip(Real("10.0.0.7"), V4)
    assert fake_lb.get_index_for_real("10.0.0.7") in (1, 2)
    assert fake_lb.get_down_reals(V4) == []


def test_a_down_mark_outlives_membership_while_the_index_lives(fake_lb):
    """Like Katran: flows pinned to a removed real still re-hash while it is marked down."""
    other = VipKey("10.200.1.2", 80, "tcp")
    fake_lb.add_vip(V4)
    fake_lb.add_vip(other)
    fake_lb.add_real_for_vip(Real("10.0.0.1"), V4)
    fake_lb.add_real_for_vip(Real("10.0.0.1"), other)
    fake_lb.add_down_real(V4, "10.0.0.1")
    fake_lb.del_real_for_vip(Real("10.0.0.1"), V4)
    assert fake_lb.get_down_reals(V4) == ["10.0.0.1"]
    fake_lb.del_vip(other)  # the last reference: the index is freed, the mark goes
    assert fake_lb.get_down_reals(V4) == [] and _down_entries(fake_lb, V4) == {}


def test_del_vip_drops_its_down_reals(fake_lb):
    fake_lb.add_vip(V4)
    fake_lb.add_real_for_vip(Real("10.0.0.1"), V4)
    fake_lb.add_down_real(V4, "10.0.0.1")
    fake_lb.del_vip(V4)
    assert contents(fake_lb, "vip_to_down_reals_map") == {}
    fake_lb.add_vip(V4)
    assert fake_lb.get_down_reals(V4) == []


# ---------------------------------------------------------------- MAC and healthchecks
@pytest.fixture
def hc_lb():
    lb = make(enable_hc=True, katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337")
    yield lb
    lb.close()


def test_change_mac_updates_balancer_and_healthchecker(hc_lb):
    hc_lb.change_mac("02:11:22:33:44:55")
    assert hc_lb.get_mac() == "02:11:22:33:44:55"
    assert contents(hc_lb, "ctl_array")[structs.u32(0)] == structs.ctl_value_mac(bytes.fromhex("021122334455"))
    macs = hc_lb.kernel.map_contents(hc_lb._dp.hc._obj.map("hc_pckt_macs"))
    assert macs[structs.u32(1)] == bytes.fromhex("021122334455")
    for bad in ("00:11:22:33:44", "zz:11:22:33:44:55", 5):
        with pytest.raises(ValidationError, match="mac"):
            hc_lb.change_mac(bad)
    assert hc_lb.get_mac() == "02:11:22:33:44:55"


def test_healthchecker_dsts(hc_lb):
    hc_lb.add_healthchecker_dst(1, "10.0.0.1")
    hc_lb.add_healthchecker_dst(2, "fc00::1")
    assert hc_lb.get_healthcheckers_dst() == {1: "10.0.0.1", 2: "fc00::1"}
    assert hc_lb._dp.hc.kernel_dsts() == {1: "10.0.0.1", 2: "fc00::1"}
    hc_lb.del_healthchecker_dst(1)
    assert hc_lb.get_healthcheckers_dst() == {2: "fc00::1"}
    with pytest.raises(NotFoundError, match="somark"):
        hc_lb.del_healthchecker_dst(1)
    with pytest.raises(ValidationError, match="somark"):
        hc_lb.add_healthchecker_dst(0, "10.0.0.1")


def test_healthchecks_off_is_a_clear_error(fake_lb):
    with pytest.raises(FeatureNotEnabledError, match="enable_hc"):
        fake_lb.add_healthchecker_dst(1, "10.0.0.1")


def test_hc_gue_and_max_packet_size_come_from_the_config():
    lb = make(enable_hc=True, katran_src_v4="10.0.13.37", gue_encap=True, gue_dport=7777, hc_max_pckt_size=1400)
    hc = lb._dp.hc
    assert hc.gue_dport == 7777 and hc._obj.rodata["hc_gue_dport"] == 7777
    assert hc._obj.rodata["hc_max_pckt_size"] == 1400
    lb.close()
    lb = make(enable_hc=True, katran_src_v4="10.0.13.37")
    assert lb._dp.hc._obj.rodata["hc_gue_dport"] == 0 and lb._dp.hc._obj.rodata["hc_max_pckt_size"] == 0
    lb.close()


# ---------------------------------------------------------------- stats slots
GLOBAL_GETTERS = {
    "get_lru_stats": structs.LRU_CNTRS, "get_lru_miss_stats": structs.LRU_MISS_CNTR,
    "get_lru_fallback_stats": structs.FALLBACK_LRU_CNTR, "get_icmp_too_big_stats": structs.ICMP_TOOBIG_CNTRS,
    "get_ch_drop_stats": structs.CH_DROP_STATS, "get_encap_fail_stats": structs.ENCAP_FAIL_CNTR,
    "get_xdp_total_stats": structs.XDP_TOTAL_CNTR, "get_xdp_tx_stats": structs.XDP_TX_CNTR,
    "get_xdp_drop_stats": structs.XDP_DROP_CNTR, "get_xdp_pass_stats": structs.XDP_PASS_CNTR,
    "get_src_routing_stats": structs.LPM_SRC_CNTRS, "get_inline_decap_stats": structs.REMOTE_ENCAP_CNTRS,
    "get_decap_stats": structs.DECAP_CNTR, "get_xpop_decap_successful_stats": structs.XPOP_DECAP_SUCCESSFUL,
    "get_udp_flow_migration_stats": structs.UDP_FLOW_MIGRATION_STATS,
    "get_global_lru_stats": structs.GLOBAL_LRU_CNTR, "get_quic_icmp_stats": structs.QUIC_ICMP_STATS,
    "get_malformed_stats": structs.MALFORMED_CNTR,
}


@pytest.mark.parametrize("getter", sorted(GLOBAL_GETTERS))
def test_global_counters_are_read_from_their_slot_and_summed(getter):
    lb = make(lpm_src_lookup=True, inline_decap_ipip=True)
    slot = lb.config.max_vips + GLOBAL_GETTERS[getter]
    lb._map("stats").update(structs.u32(slot), [structs.lb_stats(3, 4), structs.lb_stats(10, 20)])
    assert getattr(lb, getter)() == LbStats(13, 24)
    others = [g for g in GLOBAL_GETTERS if GLOBAL_GETTERS[g] != GLOBAL_GETTERS[getter]]
    assert all(getattr(lb, g)() == LbStats(0, 0) for g in others)
    lb.close()


def test_per_vip_and_per_real_stats(fake_lb):
    fake_lb.add_vip(VipKey("10.0.0.9", 1, "udp"))
    fake_lb.add_vip(V4)  # num 1
    fake_lb._map("stats").update(structs.u32(1), [structs.lb_stats(1, 2), structs.lb_stats(3, 4)])
    fake_lb._map("decap_vip_stats").update(structs.u32(1), [structs.lb_stats(5, 0), structs.lb_stats(5, 0)])
    fake_lb._map("reals_stats").update(structs.u32(7), [structs.lb_stats(7, 70), structs.lb_stats(0, 0)])
    assert fake_lb.get_stats_for_vip(V4) == LbStats(4, 6)
    assert fake_lb.get_decap_stats_for_vip(V4) == LbStats(10, 0)
    assert fake_lb.get_real_stats(7) == LbStats(7, 70)
    with pytest.raises(ValidationError, match="index"):
        fake_lb.get_real_stats(16)
    fake_lb._map("stats").update(structs.u32(8 + structs.XDP_TOTAL_CNTR),
                                 [structs.lb_stats(11, 0), structs.lb_stats(22, 0)])
    assert fake_lb.get_per_core_packets_stats() == [11, 22]


def test_feature_counters_are_summed_by_field(fake_lb):
    m = fake_lb._map("quic_stats_map")
    size = m.value_size
    one = bytes([1] + [0] * 7) * (size // 8)
    fake_lb._map("quic_stats_map").update(structs.u32(0), [one, one])
    stats = fake_lb.get_lb_quic_packets_stats()
    assert set(stats) == set(structs.QUIC_STATS_FIELDS) and set(stats.values()) == {2}
    assert set(fake_lb.get_tcp_server_id_routing_stats().values()) == {0}
    assert set(fake_lb.get_udp_stable_routing_stats().values()) == {0}


def test_run_packet_needs_the_real_kernel(fake_lb):
    with pytest.raises(KernelError, match="not supported"):
        fake_lb.run_packet(b"\0" * 64)
    with pytest.raises(ValidationError, match="data"):
        fake_lb.run_packet("frame")


def test_concurrent_calls_are_serialised(fake_lb):
    import threading

    vips = [VipKey(f"10.3.0.{i}", 80, "tcp") for i in range(8)]
    errors = []

    def worker(v):
        try:
            fake_lb.add_vip(v)
            fake_lb.add_real_for_vip(Real("10.0.0.1"), v)
        except KatranError as e:  # pragma: no cover - would be the failure
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(v,)) for v in vips]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(v.num for v in fake_lb._vips.values()) == list(range(8))
    assert fake_lb._reals.get(fake_lb._reals.address(1)).refcount == 8


def test_config_mac_default():
    lb = make(default_mac=None)
    assert lb.get_mac() == "00:00:00:00:00:00"
    lb.close()
    assert MAC == "00:00:de:ad:be:af"


def test_port0_vips_are_counted_in_ctl_array(fake_kernel):
    """ctl_array[CTL_ANY_PORT_VIPS] = 1 + how many VIPs have port 0 (the data plane skips the
    port-0 lookup when it is 1); written at start, kept by add_vip / del_vip, undone with them."""
    lb = make(fake_kernel)
    slot = structs.u32(structs.CTL_ANY_PORT_VIPS)

    def count() -> int:  # the slot holds 1 + the count (0: not known)
        return int.from_bytes(contents(lb, "ctl_array")[slot][:8], "little") - 1

    a, b = VipKey("10.200.1.2", 0, "tcp"), VipKey("fc00::2", 0, "udp")
    lb.add_vip(V4)
    assert count() == 0
    lb.add_vip(a)
    lb.add_vip(b)
    assert count() == 2
    lb.del_vip(a)
    assert count() == 1
    before = {name: contents(lb, name) for name in ("ctl_array", "vip_map", "vip_addrs")}
    for nth in range(1, 10):  # every kernel write of add_vip fails once: nothing is left behind
        fake_kernel.fail("write", nth=nth)
        try:
            lb.add_vip(a)
        except KernelError:
            assert {name: contents(lb, name) for name in before} == before
            assert count() == 1 and a not in lb.get_all_vips()
            continue
        fake_kernel.clear_faults()
        break
    else:
        raise AssertionError("add_vip never got through")
    assert nth > 3 and count() == 2  # vip_map, vip_addrs and ctl_array were each failed once
    lb.del_vip(a)
    lb.del_vip(b)
    assert count() == 0
    lb.close()


def _fail_ctl_slot(monkeypatch, ctl_slot: int):
    """Make every write of ctl_array[ctl_slot] fail (EPERM); returns the real FakeMap.update."""
    from katran.testing.fake_kernel import FakeMap

    slot = structs.u32(ctl_slot)
    real_update = FakeMap.update

    def failing_update(self, key, value, flags=0):
        if self.name == "ctl_array" and key == slot:
            raise KernelError("update ctl_array", errno.EPERM, "injected")
        return real_update(self, key, value, flags)

    monkeypatch.setattr(FakeMap, "update", failing_update)
    return real_update


def test_start_goes_on_when_the_port0_count_cannot_be_written(fake_kernel, monkeypatch, caplog):
    """The count is an optimisation: unwritten (0), the data plane looks port 0 up as Katran
    does, so a failed write at start is a warning, not a failed start."""
    from katran.testing.fake_kernel import FakeMap

    slot = structs.u32(structs.CTL_ANY_PORT_VIPS)
    lb = KatranLb(lb_config(max_vips=8, max_reals=16, ch_ring_size=RING), kernel=fake_kernel)
    real_update = _fail_ctl_slot(monkeypatch, structs.CTL_ANY_PORT_VIPS)
    with caplog.at_level("WARNING"):
        lb.start()
    monkeypatch.setattr(FakeMap, "update", real_update)
    assert lb._dp.started and "port-0 VIP count" in caplog.text
    assert slot not in contents(lb, "ctl_array")  # not known: the data plane looks port 0 up
    lb.add_vip(VipKey("10.200.1.2", 0, "tcp"))  # the next change writes it
    assert contents(lb, "ctl_array")[slot] == structs.ctl_value_u64(2)
    lb.close()


def _flow_cache_epoch(lb) -> int:
    raw = contents(lb, "ctl_array").get(structs.u32(structs.CTL_FLOW_CACHE_EPOCH))
    return 0 if raw is None else int.from_bytes(raw[:8], "little")  # an array slot never written is 0


def _connection(lb, sport: int) -> bytes:
    """A connection-table entry of V4 (testing: the fallback table) from 192.0.2.1:sport."""
    key = structs.flow_key("192.0.2.1", V4.address, sport, V4.port, 6)
    lb._map("fallback_cache").update(key, structs.real_pos_lru(1, 0))
    return key


def test_the_flow_cache_epoch_moves_on_and_never_wraps_to_zero(fake_kernel):
    """ctl_array[CTL_FLOW_CACHE_EPOCH]: a new value at every start and after an LRU delete or
    purge that deleted something (all flow-cache slots empty at once), 1 .. 2**32 - 1 (0 means
    never written: off); switched off, bit 32 is set and the count goes on."""
    lb = make(fake_kernel)
    lb.add_vip(V4)
    assert _flow_cache_epoch(lb) == 1
    _connection(lb, 1000)
    assert lb.delete_lru(V4, "192.0.2.1", 1000)
    assert _flow_cache_epoch(lb) == 2
    assert not lb.delete_lru(V4, "192.0.2.1", 1000)  # nothing deleted: nothing cached either
    _connection(lb, 1001)
    _connection(lb, 1002)
    assert lb.purge_vip_lru(V4)[flows.FALLBACK] == 2
    assert _flow_cache_epoch(lb) == 3
    lb._map("ctl_array").update(structs.u32(structs.CTL_FLOW_CACHE_EPOCH), structs.ctl_value_u64(2**32 - 1))
    _connection(lb, 1003)
    lb.purge_vip_lru(V4)
    assert _flow_cache_epoch(lb) == 1
    lb.close()
    off = make(fake_kernel, flow_cache=False)
    off.add_vip(V4)
    _connection(off, 1000)
    assert _flow_cache_epoch(off) == structs.FLOW_CACHE_OFF | 1  # off, and the count goes on
    off.purge_vip_lru(V4)
    assert _flow_cache_epoch(off) == structs.FLOW_CACHE_OFF | 2
    off.close()


def test_a_failed_flow_cache_epoch_write(fake_kernel, monkeypatch, caplog):
    """After a delete, a failed epoch write undoes the delete (a cached flow would otherwise
    keep its real): the error is raised, the entries are back. At start it is a warning: a slot
    older than the start is refreshed from the LRU within 64 jiffies."""
    from katran.testing.fake_kernel import FakeMap

    lb = make(fake_kernel)
    lb.add_vip(V4)
    keys = [_connection(lb, 1000), _connection(lb, 1001)]
    before = contents(lb, "fallback_cache")
    real_update = _fail_ctl_slot(monkeypatch, structs.CTL_FLOW_CACHE_EPOCH)
    with pytest.raises(KernelError, match="injected"):
        lb.purge_vip_lru(V4)
    with pytest.raises(KernelError, match="injected"):
        lb.delete_lru(V4, "192.0.2.1", 1000)
    assert contents(lb, "fallback_cache") == before and all(k in before for k in keys)
    assert _flow_cache_epoch(lb) == 1
    lb.close()
    again = KatranLb(lb_config(max_vips=8, max_reals=16, ch_ring_size=RING), kernel=fake_kernel)
    with caplog.at_level("WARNING"):
        again.start()
    assert again._dp.started and "flow-cache epoch" in caplog.text
    monkeypatch.setattr(FakeMap, "update", real_update)
    again.close()


def test_the_flow_cache_is_sized_up_to_the_highest_cpu_with_its_own_lru():
    """flow_cache holds FLOW_CACHE_SLOTS per cpu, cpu * slots + slot: up to the highest
    forwarding core (a cpu beyond finds no slot and looks the LRU up); one block with none."""
    from katran import contract

    slots = contract.FLOW_CACHE_SLOTS
    assert map_sizes(lb_config(forwarding_cores=(1,)))["flow_cache"] == 2 * slots
    assert map_sizes(lb_config(forwarding_cores=()))["flow_cache"] == slots
    assert map_sizes(lb_config(forwarding_cores=None))["flow_cache"] == slots  # testing: no per-cpu LRU


def test_set_flow_cache_switches_it_at_run_time(fake_kernel, monkeypatch):
    """set_flow_cache writes a new epoch (with the off bit, or without: on, empty); a bad
    value or a failed write leaves the switch as it was."""
    lb = make(fake_kernel)
    generation = lb.config_generation
    lb.set_flow_cache(False)
    assert lb.config.flow_cache is False and _flow_cache_epoch(lb) == structs.FLOW_CACHE_OFF | 2
    assert lb.config_generation == generation + 1
    lb.set_flow_cache(True)  # a new epoch: no slot filled before the off period lives on
    assert lb.config.flow_cache is True and _flow_cache_epoch(lb) == 3
    with pytest.raises(ValidationError, match="flow_cache"):
        lb.set_flow_cache("off")
    real_update = _fail_ctl_slot(monkeypatch, structs.CTL_FLOW_CACHE_EPOCH)
    with pytest.raises(KernelError, match="injected"):
        lb.set_flow_cache(False)
    from katran.testing.fake_kernel import FakeMap

    monkeypatch.setattr(FakeMap, "update", real_update)
    assert lb.config.flow_cache is True and _flow_cache_epoch(lb) == 3
    lb.close()
    with pytest.raises(ValidationError, match="flow_cache"):
        lb_config(flow_cache=1)
