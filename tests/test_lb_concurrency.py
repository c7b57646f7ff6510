"""Control-plane writes under concurrency (issue 15): concurrent real changes are
coalesced into one ring rebuild per VIP and each still succeeds or fails as a whole;
reads are served from the committed views and never wait behind a write."""

from __future__ import annotations

import errno
import ipaddress
import threading
import time

import numpy as np
import pytest

from conftest import lb_config
from katran import KatranLb, ModifyAction, Real, VipKey
from katran.models import RealFlag
from katran import maglev
from katran.errors import KernelError, NotFoundError, ValidationError
from katran.registry import Transaction
from katran.testing import FakeKernel

VIP = VipKey("10.200.1.1", 80, "tcp")
VIP6 = VipKey("fc00:1::1", 80, "tcp")
BASE = [Real(f"10.0.0.{i}") for i in range(1, 11)]


@pytest.fixture
def fake():
    k = FakeKernel()
    lb = KatranLb(lb_config(), kernel=k)
    lb.start()
    lb.add_vip(VIP)
    lb.add_vip(VIP6)
    lb.modify_reals_for_vip(ModifyAction.ADD, BASE, VIP)
    yield k, lb
    lb.close()


def ring_of(k: FakeKernel, lb: KatranLb, vip: VipKey) -> list[int]:
    size = lb.config.ch_ring_size
    num = lb._vips[vip].num
    contents = k.map_contents(lb._map("ch_rings"))
    return [int.from_bytes(bytes(contents[(num * size + i).to_bytes(4, "little")]), "little")
            for i in range(size)]


def expected_ring(lb: KatranLb, vip: VipKey) -> list[int]:
    eps = [maglev.Endpoint(lb.get_index_for_real(r.address), r.weight, maglev.endpoint_hash(r.address))
           for r in lb.get_reals_for_vip(vip)]
    return maglev.build_ring(eps, lb.config.ch_ring_size).tolist()


def queue_while_locked(lb: KatranLb, calls) -> tuple[list, list[threading.Thread]]:
    """Start one thread per call while the write lock is held; return once all are queued."""
    results: list = [None] * len(calls)

    def run(i, fn):
        try:
            fn()
            results[i] = "ok"
        except Exception as e:  # the test looks at it
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(lb._pending) < len(calls):
        assert time.monotonic() < deadline, "the calls did not queue"
        time.sleep(0.001)
    return results, threads


def count_rebuilds(lb: KatranLb, monkeypatch) -> list:
    seen = []
    inner = lb._rebuild_ring

    def counted(state, tx):
        seen.append(state.num)
        return inner(state, tx)

    monkeypatch.setattr(lb, "_rebuild_ring", counted)
    return seen


def test_queued_changes_make_one_rebuild_and_a_bad_one_fails_alone(fake, monkeypatch):
    k, lb = fake
    rebuilds = count_rebuilds(lb, monkeypatch)
    calls = [
        lambda: lb.add_real_for_vip(Real("10.0.1.1"), VIP),
        lambda: lb.del_real_for_vip(Real("10.0.0.1"), VIP),
        lambda: lb.del_real_for_vip(Real("10.9.9.9"), VIP),  # not a real of VIP
        lambda: lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.0.1.2", 7)], VIP),
        lambda: lb.add_real_for_vip(Real("10.0.1.3"), VIP6),  # v4 real on a v6 VIP
        lambda: lb.modify_reals_for_vip(ModifyAction.ADD, [Real("fc00::5")], VIP6),
    ]
    with lb._lock:
        results, threads = queue_while_locked(lb, calls)
    for t in threads:
        t.join(10)
    assert results[0] == results[1] == results[3] == results[5] == "ok"
    assert isinstance(results[2], NotFoundError) and "10.9.9.9" in str(results[2])
    assert isinstance(results[4], ValidationError) and "real.address" in str(results[4])
    assert sorted(rebuilds) == sorted([lb._vips[VIP].num, lb._vips[VIP6].num])  # one per VIP
    reals = {str(r.address): r.weight for r in lb.get_reals_for_vip(VIP)}
    assert "10.0.0.1" not in reals and reals["10.0.1.1"] == 1 and reals["10.0.1.2"] == 7
    assert len(reals) == len(BASE) + 1
    assert [str(r.address) for r in lb.get_reals_for_vip(VIP6)] == ["fc00::5"]
    assert ring_of(k, lb, VIP) == expected_ring(lb, VIP)
    assert ring_of(k, lb, VIP6) == expected_ring(lb, VIP6)
    assert lb._reals.get(ipaddress.ip_address("10.0.1.3")) is None  # nothing leaked


def test_a_failed_ring_write_fails_every_change_of_that_rebuild(fake):
    k, lb = fake
    before_reals = lb.get_reals_for_vip(VIP)
    before_ring = ring_of(k, lb, VIP)
    calls = [lambda: lb.add_real_for_vip(Real("10.0.1.1"), VIP),
             lambda: lb.del_real_for_vip(Real("10.0.0.2"), VIP)]
    with lb._lock:
        results, threads = queue_while_locked(lb, calls)
        k.fail("map_view_write", err=errno.ENOSPC)  # ch_rings is mmap-able
    for t in threads:
        t.join(10)
    assert all(isinstance(r, KernelError) and r.errno == errno.ENOSPC for r in results), results
    assert lb.get_reals_for_vip(VIP) == before_reals
    assert ring_of(k, lb, VIP) == before_ring
    assert lb._reals.get(ipaddress.ip_address("10.0.1.1")) is None


def test_many_writer_threads_coalesce_and_end_consistent(fake, monkeypatch):
    k, lb = fake
    rebuilds = count_rebuilds(lb, monkeypatch)
    slow = maglev.build_ring

    def slower(*a, **kw):  # a rebuild long enough for the others to queue behind it
        time.sleep(0.005)
        return slow(*a, **kw)

    monkeypatch.setattr(maglev, "build_ring", slower)

    def writer(i):
        r = Real(f"10.0.2.{i + 1}")
        for _ in range(5):
            lb.add_real_for_vip(r, VIP)
            lb.del_real_for_vip(r, VIP)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(rebuilds) < 80, "no change was coalesced"
    assert lb.get_reals_for_vip(VIP) == BASE
    assert ring_of(k, lb, VIP) == expected_ring(lb, VIP)


def test_reads_do_not_wait_behind_a_rebuild_and_see_only_committed_state(fake, monkeypatch):
    k, lb = fake
    started, release = threading.Event(), threading.Event()
    slow = maglev.build_ring

    def blocked(*a, **kw):
        started.set()
        assert release.wait(10)
        return slow(*a, **kw)

    monkeypatch.setattr(maglev, "build_ring", blocked)
    writer = threading.Thread(target=lambda: lb.add_real_for_vip(Real("10.0.3.1"), VIP))
    writer.start()
    try:
        assert started.wait(10)
        t = time.monotonic()
        # the writer holds the write lock, its change is staged but not committed
        assert lb.get_reals_for_vip(VIP) == BASE
        assert set(lb.get_all_vips()) == {VIP, VIP6}
        assert lb.get_vip_flags(VIP) == 0
        assert lb.get_stats_for_vip(VIP).v1 == 0
        lb.get_lru_stats()
        lb.get_mac()
        assert time.monotonic() - t < 2
    finally:
        release.set()
        writer.join(10)
    assert lb.get_reals_for_vip(VIP) == [*BASE, Real("10.0.3.1")]


def test_views_follow_every_kind_of_write(fake):
    k, lb = fake
    lb.modify_real("10.0.0.3", RealFlag.LOCAL_REAL)
    assert {str(r.address): r.flags for r in lb.get_reals_for_vip(VIP)}["10.0.0.3"] == RealFlag.LOCAL_REAL
    lb.modify_vip(VIP, 4)
    assert lb.get_vip_flags(VIP) == 4
    lb.change_hash_function_for_vip(VIP, 1)
    assert int(lb.get_hash_function_for_vip(VIP)) == 1
    lb.del_vip(VIP6)
    assert lb.get_all_vips() == [VIP]
    with pytest.raises(NotFoundError, match="vip"):
        lb.get_reals_for_vip(VIP6)
    k.fail("map_update", err=errno.EIO)
    with pytest.raises(KernelError):
        lb.modify_vip(VIP, 8)
    assert lb.get_vip_flags(VIP) == 4  # the rolled-back write left the view alone


def test_savepoint_undoes_only_its_own_steps():
    log = []
    with Transaction() as tx:
        tx.on_rollback(lambda: log.append("outer"))
        with pytest.raises(RuntimeError):
            with tx.savepoint():
                tx.on_rollback(lambda: log.append("inner2"))
                tx.on_rollback(lambda: log.append("inner1"))
                raise RuntimeError("step failed")
        assert log == ["inner1", "inner2"]
        with tx.savepoint():
            tx.on_rollback(lambda: log.append("kept"))
    assert log == ["inner1", "inner2"]  # committed: nothing more undone
    log.clear()
    with pytest.raises(ValueError):
        with Transaction() as tx:
            tx.on_rollback(lambda: log.append("outer"))
            with tx.savepoint():
                tx.on_rollback(lambda: log.append("kept"))
            raise ValueError("later failure")
    assert log == ["kept", "outer"]


def test_ring_write_touches_only_the_changed_slots(fake):
    k, lb = fake
    before = np.array(ring_of(k, lb, VIP))
    calls_before = k.calls["map_view_write"]
    lb.add_real_for_vip(Real("10.0.4.1"), VIP)
    after = np.array(ring_of(k, lb, VIP))
    assert k.calls["map_view_write"] == calls_before + 1  # one write through ch_rings' mmap
    changed = int((before != after).sum())
    assert 0 < changed < len(before) // 5
