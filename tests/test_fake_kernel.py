"""The fake kernel keeps the kernel's rules, and the registry / transaction primitives
of the control plane (no privileges)."""

from __future__ import annotations

import errno

import pytest

from katran import CapacityError, KernelError, ValidationError
from katran.dataplane import packaged_object
from katran.kernel import (
    BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_HASH_OF_MAPS,
    BPF_MAP_TYPE_LRU_HASH,
    BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_MAP_TYPE_PROG_ARRAY,
    Kernel,
)
from katran.models import parse_address
from katran.registry import RealRegistry, SlotAllocator, Transaction, pop_item, set_item
from katran.testing import FakeKernel

K4 = (1).to_bytes(4, "little")


def u32(n: int) -> bytes:
    return n.to_bytes(4, "little")


@pytest.fixture
def k():
    return FakeKernel()


def test_fake_kernel_is_a_kernel(k):
    assert isinstance(k, Kernel)


# ---------------------------------------------------------------- map rules
def test_array_rules(k):
    m = k.create_map(BPF_MAP_TYPE_ARRAY, 4, 8, 4)
    assert m.lookup(u32(3)) == bytes(8)
    assert m.lookup(u32(4)) is None
    with pytest.raises(KernelError, match="E2BIG"):
        m.update(u32(4), bytes(8))
    with pytest.raises(KernelError, match="EINVAL"):
        m.delete(u32(0))
    m.update(u32(1), b"\1" * 8)
    assert k.map_contents(m) == {u32(1): b"\1" * 8}
    m.update(u32(1), bytes(8))
    assert k.map_contents(m) == {}
    assert len(list(m.keys())) == 4


def test_hash_rules(k):
    m = k.create_map(BPF_MAP_TYPE_HASH, 4, 4, 2)
    m.update(u32(1), u32(1))
    m.update(u32(2), u32(2))
    with pytest.raises(KernelError, match="E2BIG"):
        m.update(u32(3), u32(3))
    m.update(u32(2), u32(5))  # replacing is fine when full
    with pytest.raises(KernelError, match="EEXIST"):
        m.update(u32(2), u32(5), 1)  # BPF_NOEXIST
    assert m.delete(u32(1)) and not m.delete(u32(1))
    with pytest.raises(KernelError, match="ENOENT"):
        m.update(u32(9), u32(9), 2)  # BPF_EXIST
    assert dict(m.items()) == {u32(2): u32(5)}


def test_lru_evicts_instead_of_refusing(k):
    m = k.create_map(BPF_MAP_TYPE_LRU_HASH, 4, 4, 2)
    for i in range(5):
        m.update(u32(i), u32(i))
    assert len(k.map_contents(m)) == 2


@pytest.mark.parametrize("key, value, field", [(b"\0" * 3, b"\0" * 4, "key"), (b"\0" * 4, b"\0" * 5, "value"),
                                               ("abcd", b"\0" * 4, "key")])
def test_sizes_are_checked(k, key, value, field):
    m = k.create_map(BPF_MAP_TYPE_HASH, 4, 4, 2, name="sized")
    with pytest.raises(ValidationError, match=f"sized.{field}"):
        m.update(key, value)


def test_percpu_values_are_lists(k):
    m = k.create_map(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 2)
    assert m.lookup(u32(0)) == [bytes(8), bytes(8)]
    m.update(u32(0), b"\1" * 8)
    assert m.lookup(u32(0)) == [b"\1" * 8] * 2
    with pytest.raises(ValidationError, match="per-CPU"):
        m.update(u32(0), [b"\1" * 8])


def test_prog_array_and_map_in_map_hold_references(k):
    obj = k.open_object(packaged_object("xdp_pass.bpf.o")).load()
    prog = obj.program("xdp_pass")
    pa = k.create_map(BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 2)
    pa.update(u32(0), u32(prog.fd))
    assert pa.lookup(u32(0)) == u32(prog.id)
    with pytest.raises(KernelError, match="EBADF"):
        pa.update(u32(1), u32(99999))
    outer = k.create_map(BPF_MAP_TYPE_HASH_OF_MAPS, 4, 4, 2)
    inner = k.create_map(BPF_MAP_TYPE_HASH, 4, 1, 8, name="inner")
    outer._store.inner = {"type": BPF_MAP_TYPE_HASH, "key_size": 4, "value_size": 1}
    outer.set_inner_map(u32(7), inner)
    inner_id = outer.inner_map_id(u32(7))
    inner.close()  # the outer map keeps it alive
    with k.map_by_id(inner_id) as again:
        again.update(u32(1), b"\1")
    assert k.map_contents(outer) == {u32(7): ("map", {u32(1): b"\1"})}
    outer.delete(u32(7))  # last reference: freed
    with pytest.raises(KernelError, match="ENOENT"):
        k.map_by_id(inner_id)
    wrong = k.create_map(BPF_MAP_TYPE_ARRAY, 4, 4, 1)
    with pytest.raises(KernelError, match="EINVAL"):
        outer.set_inner_map(u32(8), wrong)
    obj.close()


def test_closed_handles_fail(k):
    m = k.create_map(BPF_MAP_TYPE_HASH, 4, 4, 2)
    m.close()
    with pytest.raises(KernelError, match="EBADF"):
        m.lookup(u32(0))
    assert k.live_maps() == []


def test_batch_update_writes_a_prefix_when_it_fails(k):
    m = k.create_map(BPF_MAP_TYPE_ARRAY, 4, 4, 8)
    k.fail("map_update_batch")
    keys = b"".join(u32(i) for i in range(4))
    with pytest.raises(KernelError):
        m.update_batch(keys, b"".join(u32(i + 1) for i in range(4)))
    assert k.map_contents(m) == {u32(0): u32(1), u32(1): u32(2)}


# ---------------------------------------------------------------- fault injection
def test_the_nth_call_fails_once(k):
    m = k.create_map(BPF_MAP_TYPE_HASH, 4, 4, 8)
    k.fail("map_update", nth=3, err=errno.EPERM)
    m.update(u32(1), u32(1))
    m.delete(u32(1))  # other operations do not count
    m.update(u32(2), u32(2))
    with pytest.raises(KernelError, match="EPERM") as e:
        m.update(u32(3), u32(3))
    assert e.value.errno == errno.EPERM and e.value.errno_name == "EPERM"
    m.update(u32(3), u32(3))
    assert k.pending_faults == 0 and k.calls["map_update"] == 4


@pytest.mark.parametrize("op, call", [
    ("write", lambda m: m.delete(u32(1))),
    ("*", lambda m: m.lookup(u32(1))),
    ("map_delete_batch", lambda m: m.delete_batch([u32(1)])),
])
def test_fault_groups(k, op, call):
    m = k.create_map(BPF_MAP_TYPE_HASH, 4, 4, 8)
    m.update(u32(1), u32(1))
    k.fail(op)
    with pytest.raises(KernelError, match="injected"):
        call(m)


def test_fail_counts_from_one(k):
    with pytest.raises(ValueError):
        k.fail("load", nth=0)


# ---------------------------------------------------------------- objects
def test_spec_knobs_and_sizes(k):
    spec = k.open_object(packaged_object("balancer.bpf.o"))
    assert "vip_map" in spec.map_names and "max_vips" in spec.rodata_vars()
    spec.set_max_entries("vip_map", 5)
    spec.set_rodata("max_vips", 5)
    with pytest.raises(ValidationError, match="nope"):
        spec.set_max_entries("nope", 1)
    with pytest.raises(ValidationError, match="rodata"):
        spec.set_rodata("nope", 1)
    with pytest.raises(ValidationError, match="max_vips"):
        spec.set_rodata("max_vips", 1 << 40)
    obj = spec.load()
    assert obj.map("vip_map").max_entries == 5 and obj.rodata["max_vips"] == 5
    with pytest.raises(KernelError, match="EBUSY"):
        spec.set_max_entries("vip_map", 6)
    obj.close()
    with pytest.raises(KernelError, match="EBADF"):
        obj.map("vip_map")


def test_xdp_attach_rules(k):
    obj = k.open_object(packaged_object("xdp_pass.bpf.o")).load()
    prog = obj.program("xdp_pass")
    prog.attach_xdp(2, "native")
    with pytest.raises(KernelError, match="EBUSY"):
        prog.attach_xdp(2, "native")
    prog.attach_xdp(2, "native", replace=True)
    obj.close()  # the attachment keeps the program
    assert k.xdp_attached_prog_id(2, "native") == prog._store.id
    k.detach_xdp(2, "native")
    assert k.xdp_attached_prog_id(2, "native") == 0


def test_pins(k):
    m = k.create_map(BPF_MAP_TYPE_HASH, 4, 4, 8, name="pinned")
    m.pin("/sys/fs/bpf/x")
    with pytest.raises(KernelError, match="EEXIST"):
        m.pin("/sys/fs/bpf/x")
    m.close()
    with k.map_by_pin("/sys/fs/bpf/x") as again:
        assert again.name == "pinned"
    with pytest.raises(KernelError, match="EINVAL"):
        k.program_by_pin("/sys/fs/bpf/x")
    assert k.unpin("/sys/fs/bpf/x") and not k.unpin("/sys/fs/bpf/x")
    assert k.live_maps() == []


# ---------------------------------------------------------------- transaction
def test_transaction_undoes_in_reverse_and_runs_deferred():
    log = []
    with pytest.raises(RuntimeError):
        with Transaction() as tx:
            tx.on_rollback(lambda: log.append("a"))
            tx.on_rollback(lambda: log.append("b"))
            tx.defer(lambda: log.append("deferred"))
            raise RuntimeError("boom")
    assert log == ["b", "a", "deferred"]


def test_transaction_commit_forgets_the_undo_list():
    log = []
    with Transaction() as tx:
        tx.on_rollback(lambda: log.append("undo"))
    assert log == []
    tx.rollback()
    assert log == []


def test_failed_undo_is_noted_and_the_rest_still_undone():
    log = []

    def bad():
        raise KernelError("undo write", errno.EIO)

    with pytest.raises(RuntimeError) as e:
        with Transaction() as tx:
            tx.on_rollback(lambda: log.append("first"))
            tx.on_rollback(bad)
            raise RuntimeError("boom")
    assert log == ["first"] and "rollback incomplete" in "".join(e.value.__notes__)


def test_transaction_map_helpers(k):
    m = k.create_map(BPF_MAP_TYPE_HASH, 4, 4, 8)
    m.update(u32(1), u32(10))
    failed = []
    with pytest.raises(KernelError):
        with Transaction(on_failed_write=lambda: failed.append(1)) as tx:
            tx.update(m, u32(1), u32(11))
            tx.update(m, u32(2), u32(20))
            tx.delete(m, u32(1))
            k.fail("map_update")
            tx.update(m, u32(3), u32(30))
    assert k.map_contents(m) == {u32(1): u32(10)} and failed == [1]


def test_dict_helpers_keep_order_on_undo():
    d = {"a": 1, "b": 2, "c": 3}
    with pytest.raises(RuntimeError):
        with Transaction() as tx:
            pop_item(d, "b", tx)
            set_item(d, "a", 9, tx)
            set_item(d, "z", 0, tx)
            raise RuntimeError
    assert list(d.items()) == [("a", 1), ("b", 2), ("c", 3)]


# ---------------------------------------------------------------- registry
def test_registry_allocates_refcounts_and_frees():
    r = RealRegistry(4)
    a, b = parse_address("10.0.0.1"), parse_address("10.0.0.2")
    with Transaction() as tx:
        assert r.acquire(a, 0, tx) == (1, True)
        assert r.acquire(a, 0, tx) == (1, False)
        assert r.acquire(b, 2, tx) == (2, True)
    assert r.get(a).refcount == 2 and r.address(2) == b and r.free_count == 1
    with Transaction() as tx:
        assert not r.release(1, tx)
        assert r.release(1, tx)
    assert a not in r and r.free_count == 2 and r.next_free() == 3
    with pytest.raises(CapacityError, match="max_reals=4"):
        r.check_capacity([parse_address(f"10.1.0.{i}") for i in range(3)], "x")


def test_registry_rollback_restores_everything():
    r = RealRegistry(4)
    a, b = parse_address("10.0.0.1"), parse_address("10.0.0.2")
    with Transaction() as tx:
        r.acquire(a, 0, tx)
    before = (dict(r._by_addr), dict(r._by_num), list(r._free), r.get(a).refcount)
    with pytest.raises(RuntimeError):
        with Transaction() as tx:
            r.acquire(b, 0, tx)
            r.acquire(a, 0, tx)
            r.release(1, tx)
            r.release(1, tx)
            r.set_flags(b, 3, tx)
            raise RuntimeError
    assert (dict(r._by_addr), dict(r._by_num), list(r._free), r.get(a).refcount) == before


def test_slot_allocator_returns_the_lowest_first():
    s = SlotAllocator(3)
    with Transaction() as tx:
        nums = [s.take(tx) for _ in range(3)]
    assert nums == [0, 1, 2] and len(s) == 0
    with pytest.raises(RuntimeError):
        with Transaction() as tx:
            s.give_back(1, tx)
            raise RuntimeError
    assert len(s) == 0
