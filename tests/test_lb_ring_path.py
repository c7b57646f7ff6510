"""The real/ring mutation path of KatranLb on the fake kernel: the cached ring
endpoints follow a real's address and weight, the ring written to ch_rings is
always the ring built from scratch for the VIP's current reals, and the writes
are the changed slots only."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from conftest import lb_config
from unflagged import unflagged_balancer  # noqa: F401 (fixture)
from katran import HashFunction, KatranLb, ModifyAction, Real, VipKey, maglev, structs
from katran.testing import FakeKernel

RING = 65537
V4 = VipKey("10.200.1.1", 80, "tcp")
V4B = VipKey("10.200.1.2", 80, "tcp")


def _lb(**kw) -> KatranLb:
    kw.setdefault("max_vips", 4)
    kw.setdefault("max_reals", 64)
    kw.setdefault("ch_ring_size", RING)
    lb = KatranLb(lb_config(**kw), kernel=FakeKernel())
    lb.start()
    return lb


def _ring_in_map(lb: KatranLb, vip: VipKey) -> np.ndarray:
    num, size = lb._vips[vip].num, lb.config.ch_ring_size
    contents = lb.kernel.map_contents(lb._map("ch_rings"))
    return np.array([structs.u32_unpack(contents.get(structs.u32(num * size + i), structs.u32(0)))
                     for i in range(size)], dtype=np.uint32)


def _fresh_ring(lb: KatranLb, vip: VipKey) -> np.ndarray:
    """The ring for the VIP's reals as they are, from new Endpoint objects (no cache)."""
    endpoints = [maglev.Endpoint(lb.get_index_for_real(r.address), r.weight,
                                 maglev.endpoint_hash(ipaddress.ip_address(r.address)))
                 for r in lb.get_reals_for_vip(vip) if r.weight > 0]
    if not endpoints:
        return np.zeros(lb.config.ch_ring_size, dtype=np.uint32)
    return maglev.build_ring(endpoints, lb.config.ch_ring_size, lb.get_hash_function_for_vip(vip))


def _check(lb: KatranLb, *vips: VipKey) -> None:
    for vip in vips:
        want = _fresh_ring(lb, vip)
        assert np.array_equal(lb._vips[vip].ring, want), vip
        assert np.array_equal(_ring_in_map(lb, vip), want), vip


def test_a_freed_real_index_given_to_another_address_gets_its_own_hash():
    lb = _lb(max_reals=12)  # indices 1..11, all in use: a freed one is the next given
    lb.add_vip(V4)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(f"10.0.0.{i}") for i in range(1, 12)], V4)
    index = lb.get_index_for_real("10.0.0.5")
    lb.del_real_for_vip(Real("10.0.0.5"), V4)  # index freed ...
    lb.add_real_for_vip(Real("10.0.9.9"), V4)  # ... and given to another address
    assert lb.get_index_for_real("10.0.9.9") == index
    _check(lb, V4)
    # and back: the old address on another real's index, the ring follows again
    other = lb.get_index_for_real("10.0.0.8")
    lb.del_real_for_vip(Real("10.0.0.8"), V4)
    lb.add_real_for_vip(Real("10.0.0.5"), V4)
    assert lb.get_index_for_real("10.0.0.5") == other
    _check(lb, V4)
    lb.close()


def test_a_weight_change_rebuilds_with_the_new_weight():
    lb = _lb()
    lb.add_vip(V4)
    lb.change_hash_function_for_vip(V4, HashFunction.MAGLEV_V2)  # shares follow the weights
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(f"10.0.0.{i}") for i in range(1, 21)], V4)
    before = lb._vips[V4].ring.copy()
    lb.add_real_for_vip(Real("10.0.0.3", 7), V4)  # re-weight
    _check(lb, V4)
    assert not np.array_equal(before, lb._vips[V4].ring)
    counts = np.bincount(lb._vips[V4].ring, minlength=64)
    heavy = counts[lb.get_index_for_real("10.0.0.3")]
    assert heavy > 5 * np.median(counts[counts > 0])  # weight 7 of 26 in all
    lb.add_real_for_vip(Real("10.0.0.3", 1), V4)  # and back: the ring of before
    assert np.array_equal(before, lb._vips[V4].ring)
    _check(lb, V4)
    lb.close()


def test_one_real_in_two_vips_with_two_weights():
    lb = _lb()
    for vip in (V4, V4B):
        lb.add_vip(vip)
        lb.modify_reals_for_vip(ModifyAction.ADD, [Real(f"10.0.0.{i}") for i in range(1, 13)], vip)
    lb.add_real_for_vip(Real("10.0.0.1", 9), V4B)
    lb.add_real_for_vip(Real("10.0.0.2", 0), V4)  # weight 0: out of V4's ring, still a real
    _check(lb, V4, V4B)
    lb.del_real_for_vip(Real("10.0.0.1"), V4)
    _check(lb, V4, V4B)
    lb.close()


def test_only_changed_slots_are_written():
    """ch_rings is mmap-able: one assignment of the changed slots through its view."""
    lb = _lb(max_reals=128)
    lb.add_vip(V4)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(f"10.0.1.{i}") for i in range(1, 101)], V4)
    before = lb._vips[V4].ring.copy()
    writes = []
    ch = lb._map("ch_rings")
    assert ch.mmapable
    view = ch.value_view(np.uint32)

    class Recording:
        def __setitem__(self, index, values):
            writes.append(len(index))
            view[index] = values

    ch.value_view = lambda dtype: Recording()
    ch.update_batch = lambda *a, **kw: pytest.fail("the batch path was taken")
    calls = lb.kernel.calls["map_view_write"]
    try:
        lb.add_real_for_vip(Real("10.0.2.1"), V4)
    finally:
        del ch.value_view, ch.update_batch
    changed = int(np.count_nonzero(before != lb._vips[V4].ring))
    assert writes == [changed] and 0 < changed < RING // 20  # ~1/101 of the slots and a few more
    assert lb.kernel.calls["map_view_write"] == calls + 1
    _check(lb, V4)
    lb.close()


def test_only_changed_slots_are_written_without_mmap(unflagged_balancer):
    """An older ch_rings without BPF_F_MMAPABLE: one batch update of the changed slots."""
    lb = _lb(max_reals=128, balancer_prog_path=str(unflagged_balancer))
    lb.add_vip(V4)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(f"10.0.1.{i}") for i in range(1, 101)], V4)
    before = lb._vips[V4].ring.copy()
    writes = []
    ch = lb._map("ch_rings")
    assert not ch.mmapable
    real_update_batch = ch.update_batch

    def counting(keys, values, *a, **kw):
        writes.append(len(keys) // 4)
        return real_update_batch(keys, values, *a, **kw)

    ch.update_batch = counting
    try:
        lb.add_real_for_vip(Real("10.0.2.1"), V4)
    finally:
        del ch.update_batch
    changed = int(np.count_nonzero(before != lb._vips[V4].ring))
    assert writes == [changed] and 0 < changed < RING // 20
    assert lb.kernel.calls["map_mmap"] == 0 and lb.kernel.calls["map_view_write"] == 0
    _check(lb, V4)
    lb.close()
