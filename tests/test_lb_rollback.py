"""Every mutating KatranLb method is all-or-nothing: a kernel error on its Nth kernel
call leaves the fake kernel's maps and KatranLb's public state as they were before.

For each method and each N, a fresh balancer is provisioned on the fake kernel, the
Nth call (of any map write, or of any kernel operation at all) is made to fail, and
the method is called.  Either it raised the injected KernelError and nothing changed,
or it made fewer than N calls and succeeded (the fault is still pending).
"""

from __future__ import annotations

import errno

import pytest

from conftest import lb_config
from unflagged import unflagged_balancer  # noqa: F401 (fixture)
from katran import (
    HashFunction,
    KatranLb,
    KernelError,
    ModifyAction,
    QuicReal,
    Real,
    RealFlag,
    VipFlag,
    VipKey,
)
from katran import structs
from katran.testing import FakeKernel

A = VipKey("10.0.0.1", 80, "tcp")
B = VipKey("fc00::1", 443, "udp")
C = VipKey("10.0.0.2", 53, "udp")
NEW = VipKey("10.0.0.3", 8080, "tcp")
FEATURES = dict(max_vips=8, max_reals=32, ch_ring_size=13, lpm_src_lookup=True, inline_decap_ipip=True,
                max_decap_dst=4, enable_hc=True, katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337")


def provision(lb: KatranLb) -> None:
    """A balancer with something of everything: VIPs, shared reals, QUIC ids, LPM rules, down reals."""
    lb.add_vip(A)
    lb.add_vip(B, VipFlag.NO_SPORT)
    lb.add_vip(C)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.1.0.1", 2), Real("10.1.0.2"), Real("10.1.0.3", 5)], A)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real("fc01::1"), Real("fc01::2", 3)], B)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.1.0.1"), Real("10.1.0.5")], C)
    lb.modify_real("10.1.0.3", RealFlag.LOCAL_REAL)
    lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.1.0.1", 1), QuicReal("10.1.0.6", 2)])
    lb.add_src_routing_rule(["10.50.0.0/16"], "10.1.0.7")
    lb.add_src_routing_rule(["10.51.0.0/16", "fc50::/64"], "10.1.0.1")
    lb.add_inline_decap_dst("10.9.0.1")
    lb.add_down_real(A, "10.1.0.2")
    lb.add_healthchecker_dst(1, "10.5.0.1")
    # connection-table entries of A (what packets leave behind), for the flow-table methods
    for i, real in ((1, "10.1.0.1"), (2, "10.1.0.3"), (3, "10.1.0.1")):
        lb._map("fallback_cache").update(structs.flow_key(f"192.168.0.{i}", A.address, 1000 + i, A.port, A.proto),
                                         structs.real_pos_lru(lb.get_index_for_real(real)))


def public_state(lb: KatranLb) -> dict:
    """Everything a caller can read back, plus the next free indices (allocation is state too)."""
    vips = {}
    for v in lb.get_all_vips():
        vips[v] = (lb.get_vip_flags(v), lb.get_hash_function_for_vip(v), lb.get_reals_for_vip(v),
                   lb.get_down_reals(v), lb._vips[v].num,
                   None if lb._vips[v].ring is None else lb._vips[v].ring.tolist())
    reals = {str(a): (lb.get_index_for_real(a), lb.get_real_flags(a), lb._reals.get(a).refcount)
             for a in list(lb._reals)}
    return {
        "vips": vips,
        "reals": reals,
        "next_real": lb._reals.next_free() if lb._reals.free_count else None,
        "free_reals": lb._reals.free_count,
        "free_vips": len(lb._vip_nums),
        "quic": lb.get_quic_reals_mapping(),
        "lpm": lb.get_src_routing_rule(),
        "decap": lb.get_inline_decap_dst(),
        "mac": lb.get_mac(),
        "hc": lb.get_healthcheckers_dst(),
    }


def kernel_state(k: FakeKernel, lb: KatranLb) -> dict:
    return {
        "balancer": k.snapshot(lb._obj),
        "hc": k.snapshot(lb._dp.hc._obj),
        "live_maps": len(k.live_maps()),
    }


# method name -> call; each mutating public method at least once, the tricky paths twice
MUTATIONS = {
    "add_vip": lambda lb: lb.add_vip(NEW),
    "add_vip_flags": lambda lb: lb.add_vip(NEW, VipFlag.NO_SPORT | VipFlag.SRC_ROUTING),
    "del_vip": lambda lb: lb.del_vip(A),  # reals, a ring, down reals, a shared real
    "del_vip_shared_address": lambda lb: lb.del_vip(C),
    "modify_vip_set": lambda lb: lb.modify_vip(A, VipFlag.NO_LRU),
    "modify_vip_unset": lambda lb: lb.modify_vip(B, VipFlag.NO_SPORT, False),
    "change_hash_function_for_vip": lambda lb: lb.change_hash_function_for_vip(A, HashFunction.MAGLEV_V2),
    "add_real_for_vip": lambda lb: lb.add_real_for_vip(Real("10.1.0.9"), A),
    "modify_reals_add_batch": lambda lb: lb.modify_reals_for_vip(
        ModifyAction.ADD, [Real("10.1.0.10"), Real("10.1.0.1", 7), Real("10.1.0.11", 2), Real("10.1.0.5")], A),
    "modify_reals_del_batch": lambda lb: lb.modify_reals_for_vip(
        ModifyAction.DEL, [Real("10.1.0.2"), Real("10.1.0.1")], A),  # frees a down real's index
    "del_real_for_vip": lambda lb: lb.del_real_for_vip(Real("fc01::2"), B),
    "modify_real": lambda lb: lb.modify_real("10.1.0.1", RealFlag.LOCAL_REAL),
    "modify_real_unset": lambda lb: lb.modify_real("10.1.0.3", RealFlag.LOCAL_REAL, False),
    "change_mac": lambda lb: lb.change_mac("02:11:22:33:44:55"),
    "set_flow_cache": lambda lb: lb.set_flow_cache(False),
    "quic_add": lambda lb: lb.modify_quic_reals_mapping(
        ModifyAction.ADD, [QuicReal("10.1.0.20", 3), QuicReal("10.1.0.1", 4), QuicReal("10.1.0.21", 5)]),
    "quic_move": lambda lb: lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.1.0.22", 2)]),
    "quic_del": lambda lb: lb.modify_quic_reals_mapping(
        ModifyAction.DEL, [QuicReal("10.1.0.1", 1), QuicReal("10.1.0.6", 2)]),
    "src_routing_add": lambda lb: lb.add_src_routing_rule(["10.60.0.0/16", "10.61.0.0/24", "fc60::/48"],
                                                          "10.1.0.30"),
    "src_routing_replace": lambda lb: lb.add_src_routing_rule(["10.50.0.0/16", "10.62.0.0/16"], "10.1.0.1"),
    "src_routing_del": lambda lb: lb.del_src_routing_rule(["10.51.0.0/16", "10.50.0.0/16"]),
    "src_routing_clear": lambda lb: lb.clear_all_src_routing_rules(),
    "add_inline_decap_dst": lambda lb: lb.add_inline_decap_dst("fc09::1"),
    "del_inline_decap_dst": lambda lb: lb.del_inline_decap_dst("10.9.0.1"),
    "add_down_real_new_map": lambda lb: lb.add_down_real(C, "10.1.0.5"),
    "add_down_real_existing_map": lambda lb: lb.add_down_real(A, "10.1.0.3"),
    "remove_down_real": lambda lb: lb.remove_down_real(A, "10.1.0.2"),
    "clear_down_reals": lambda lb: lb.clear_down_reals(A),
    "add_healthchecker_dst": lambda lb: lb.add_healthchecker_dst(2, "10.5.0.2"),
    "del_healthchecker_dst": lambda lb: lb.del_healthchecker_dst(1),
    # the flow table: connection-table entries written back if a delete fails
    "delete_lru": lambda lb: lb.delete_lru(A, "192.168.0.1", 1001),
    "purge_vip_lru": lambda lb: lb.purge_vip_lru(A),
    "purge_vip_lru_real": lambda lb: lb.purge_vip_lru(A, real="10.1.0.1"),
}
MAX_CALLS = 14
# methods with more kernel calls than MAX_CALLS: every call of theirs fails in test_long_mutations...
LONG_RUNNING = {"del_vip", "modify_reals_add_batch", "modify_reals_del_batch", "src_routing_add",
                "src_routing_clear", "src_routing_del", "src_routing_replace", "quic_add", "quic_del",
                "del_vip_shared_address", "add_down_real_new_map", "clear_down_reals"}


@pytest.fixture
def provisioned():
    k = FakeKernel()
    lb = KatranLb(lb_config(**FEATURES), kernel=k)
    lb.start()
    provision(lb)
    yield k, lb
    lb.close()


@pytest.mark.parametrize("op", ["write", "*"])
@pytest.mark.parametrize("nth", range(1, MAX_CALLS + 1))
@pytest.mark.parametrize("method", sorted(MUTATIONS))
def test_kernel_error_changes_nothing(provisioned, method, nth, op):
    k, lb = provisioned
    before = (public_state(lb), kernel_state(k, lb))
    failed_before = lb.get_katran_lb_stats().v1
    k.fail(op, nth=nth, err=errno.ENOSPC)
    try:
        MUTATIONS[method](lb)
    except KernelError as e:
        assert e.errno == errno.ENOSPC and "injected" in str(e)
        assert k.pending_faults == 0
        assert (public_state(lb), kernel_state(k, lb)) == before
        if op == "write":
            assert lb.get_katran_lb_stats().v1 in (failed_before, failed_before + 1)
        # and the balancer still works: the same change succeeds now
        MUTATIONS[method](lb)
        assert (public_state(lb), kernel_state(k, lb)) != before
    else:
        assert k.pending_faults == 1, "the method succeeded although its kernel call failed"


def test_every_mutation_reaches_the_kernel():
    """The table above is not vacuous: every method writes, and N covers all its calls."""
    for name, call in sorted(MUTATIONS.items()):
        k2 = FakeKernel()
        lb2 = KatranLb(lb_config(**FEATURES), kernel=k2)
        lb2.start()
        provision(lb2)
        start = k2.calls["write"], sum(k2.calls.values())
        call(lb2)
        writes, total = k2.calls["write"] - start[0], sum(k2.calls.values()) - start[1]
        assert writes >= 1, name
        assert total <= MAX_CALLS or name in LONG_RUNNING, (name, total)
        lb2.close()



@pytest.mark.parametrize("method", sorted(LONG_RUNNING & set(MUTATIONS)))
def test_long_mutations_fail_at_every_call(method):
    """Every kernel call of the longer mutations, one after the other."""
    nth = 1
    while True:
        k = FakeKernel()
        lb = KatranLb(lb_config(**FEATURES), kernel=k)
        lb.start()
        provision(lb)
        before = (public_state(lb), kernel_state(k, lb))
        k.fail("*", nth=nth)
        try:
            MUTATIONS[method](lb)
        except KernelError:
            assert (public_state(lb), kernel_state(k, lb)) == before, f"{method}: call {nth}"
        else:
            assert k.pending_faults == 1
            lb.close()
            break
        lb.close()
        nth += 1
    assert nth > 2


READ_ONLY = ("get_", "run_", "list_", "search_", "lookup_", "counter_")
# capture: a packet-capture session, no configuration state (real kernel only: tests/test_capture.py
# checks a refused filter leaves capture off and the balancer free for the next one)
NOT_STATE = {"start", "close", "config", "kernel", "started", "capture", "batch", "state_dict"}  # batch: no change of its own


def test_every_mutating_method_is_in_the_table():
    """A new mutating KatranLb method must join MUTATIONS (and so be proven all-or-nothing)."""
    public = {n for n in dir(KatranLb) if not n.startswith("_") and callable(getattr(KatranLb, n, None))}
    mutating = {n for n in public if not n.startswith(READ_ONLY)} - NOT_STATE
    called = set().union(*(f.__code__.co_names for f in MUTATIONS.values()))
    assert mutating - called == set()


RING_MUTATIONS = ("add_real_for_vip", "modify_reals_add_batch", "modify_reals_del_batch", "del_real_for_vip",
                  "change_hash_function_for_vip", "del_vip")


@pytest.mark.parametrize("ch_rings", ["mmapable", "batch"])
@pytest.mark.parametrize("method", RING_MUTATIONS)
def test_failure_after_the_ring_write_restores_the_ring(method, ch_rings, monkeypatch, request):
    """The ring written (through ch_rings' mmap, or with a batch update where the map lacks
    BPF_F_MMAPABLE), then a later step of the same change fails: the old slots are written
    back the same way and nothing else changed either."""
    kw = dict(FEATURES)
    if ch_rings == "batch":
        kw["balancer_prog_path"] = str(request.getfixturevalue("unflagged_balancer"))
    k = FakeKernel()
    lb = KatranLb(lb_config(**kw), kernel=k)
    lb.start()
    provision(lb)
    assert lb._map("ch_rings").mmapable == (ch_rings == "mmapable")
    before = (public_state(lb), kernel_state(k, lb))
    real_program_ring = KatranLb._program_ring
    written = []

    def then_fail(self, vip_num, old, new, tx):
        real_program_ring(self, vip_num, old, new, tx)
        written.append(k.map_contents(self._map("ch_rings")))
        raise KernelError("a later step", errno.EIO)

    monkeypatch.setattr(KatranLb, "_program_ring", then_fail)
    ops = dict(k.calls)
    with pytest.raises(KernelError, match="a later step"):
        MUTATIONS[method](lb)
    assert written and written[0] != before[1]["balancer"]["ch_rings"]  # the ring had changed
    assert (public_state(lb), kernel_state(k, lb)) == before
    path_op = "map_view_write" if ch_rings == "mmapable" else "map_update_batch"
    assert k.calls[path_op] - ops.get(path_op, 0) == 2  # the write and its undo, the same way
    monkeypatch.undo()
    MUTATIONS[method](lb)  # and the change goes through afterwards
    assert (public_state(lb), kernel_state(k, lb)) != before
    lb.close()
