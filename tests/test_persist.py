"""State that survives restarts, on the fake kernel: the state file, the instance lock,
adoption (maps untouched, state rebuilt and checked), safe attach, teardown.
The same paths with real traffic: tests/test_persist_netns.py."""

from __future__ import annotations

import json
import os

import pytest

from conftest import lb_config
from katran import state, structs
from katran.dataplane import AttachRefusedError, teardown
from katran.errors import KernelError
from katran.lb import KatranLb
from katran.models import HashFunction, ModifyAction, QuicReal, Real, VipKey
from katran.testing import FakeKernel

V1 = VipKey("10.0.0.1", 80, "tcp")
V2 = VipKey("fc00::1", 443, "udp")


def cfg(tmp_path, **kw):
    kw.setdefault("testing", False)
    kw.setdefault("main_interface", "eth0")
    kw.setdefault("persist", True)
    kw.setdefault("state_dir", str(tmp_path / "state"))
    kw.setdefault("pin_dir", "/sys/fs/bpf/katran/test-eth0")
    kw.setdefault("max_vips", 8)
    kw.setdefault("max_reals", 32)
    kw.setdefault("ch_ring_size", 13)
    kw.setdefault("lru_size", 100)
    kw.setdefault("forwarding_cores", (0,))
    return lb_config(**kw)


def populate(lb: KatranLb) -> None:
    lb.add_vip(V1)
    lb.add_vip(V2, 0)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.1.0.1"), Real("10.1.0.2", 5), Real("10.1.0.3", 2)], V1)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real("fc00:1::1"), Real("fc00:1::2", 0)], V2)
    lb.del_real_for_vip(Real("10.1.0.2"), V1)  # a freed index in the middle
    lb.change_hash_function_for_vip(V2, HashFunction.MAGLEV_V2)
    lb.modify_real("10.1.0.3", 0x08)
    lb.add_down_real(V2, "fc00:1::1")
    lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.1.0.9", 77)])


def listing(lb: KatranLb) -> dict:
    return {
        "vips": {str(v): (lb.get_vip_flags(v), int(lb.get_hash_function_for_vip(v)),
                          [(str(r.address), r.weight, r.flags) for r in lb.get_reals_for_vip(v)],
                          lb.get_down_reals(v)) for v in lb.get_all_vips()},
        "quic": [(str(q.address), q.id) for q in lb.get_quic_reals_mapping()],
        "mac": lb.get_mac(),
        "indices": {a: lb.get_index_for_real(a) for a in ("10.1.0.1", "10.1.0.3", "fc00:1::1", "10.1.0.9")},
    }


def kernel_maps(k: FakeKernel, lb: KatranLb) -> dict:
    return {name: k.map_contents(lb._map(name)) for name in ("vip_map", "reals", "ch_rings", "server_id_map",
                                                             "vip_addrs")}


def test_state_file_written_after_every_committed_change(tmp_path):
    k = FakeKernel()
    lb = KatranLb(cfg(tmp_path), kernel=k)
    lb.start()
    path = tmp_path / "state" / "state.json"
    assert json.loads(path.read_text())["vips"] == []
    lb.add_vip(V1)
    saved = json.loads(path.read_text())
    assert saved["format"] == "katran-state" and saved["version"] == state.VERSION
    assert [v["address"] for v in saved["vips"]] == ["10.0.0.1"]
    before = path.read_bytes()
    k.fail("*")  # a failed change leaves the file as it was
    with pytest.raises(KernelError):
        lb.add_real_for_vip(Real("10.1.0.1"), V1)
    assert path.read_bytes() == before
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]
    lb.close()
    assert not path.exists()


def test_batch_writes_once(tmp_path, monkeypatch):
    k = FakeKernel()
    lb = KatranLb(cfg(tmp_path), kernel=k)
    lb.start()
    writes = []
    real_write = state.write_atomic
    monkeypatch.setattr(state, "write_atomic", lambda p, d: (writes.append(p), real_write(p, d)))
    with lb.batch():
        for i in range(5):
            lb.add_vip(VipKey(f"10.0.0.{i + 1}", 80, "tcp"))
    assert len(writes) == 1
    lb.close()


def test_restart_adopts_maps_untouched_and_state_identical(tmp_path):
    k = FakeKernel()
    lb = KatranLb(cfg(tmp_path), kernel=k)
    lb.start()
    populate(lb)
    before, maps_before = listing(lb), kernel_maps(k, lb)
    prog_id = lb._dp.program().id
    lru_mapping_id = lb._map("lru_mapping").id
    lb.close(keep=True)  # SIGTERM
    assert k.xdp_attached_prog_id(2) == prog_id  # still forwarding
    calls_before = dict(k.calls)

    lb2 = KatranLb(cfg(tmp_path), kernel=k)
    lb2.start()
    assert lb2.adopted
    assert listing(lb2) == before
    assert kernel_maps(k, lb2) == maps_before
    assert lb2._dp.program().id == prog_id and lb2._map("lru_mapping").id == lru_mapping_id
    writes = {op: n - calls_before.get(op, 0) for op, n in k.calls.items()
              if op in ("attach_xdp", "detach_xdp", "update", "update_batch", "delete")}
    assert not any(writes.values()), writes  # adoption writes nothing into the data plane
    # the next change continues from the rebuilt state: the freed index is not handed out twice
    lb2.add_real_for_vip(Real("10.1.0.7"), V1)
    assert lb2.get_index_for_real("10.1.0.7") not in before["indices"].values()
    lb2.close()
    assert k.xdp == {} and k.pins == {}


def test_crash_then_restart_adopts(tmp_path):
    """kill -9: no close at all; the pins and the file of the last change are all there is."""
    k = FakeKernel()
    lb = KatranLb(cfg(tmp_path), kernel=k)
    lb.start()
    populate(lb)
    before = listing(lb)
    lb._dp._release_lock()  # the process died: the kernel dropped its flock and fds
    lb2 = KatranLb(cfg(tmp_path), kernel=k)
    lb2.start()
    assert lb2.adopted and listing(lb2) == before


def test_second_instance_refused_touching_nothing(tmp_path):
    k = FakeKernel()
    lb = KatranLb(cfg(tmp_path), kernel=k)
    lb.start()
    populate(lb)
    calls = dict(k.calls)
    other = KatranLb(cfg(tmp_path), kernel=k)
    with pytest.raises(state.InstanceLockedError, match="another katran instance .* eth0"):
        other.start()
    assert dict(k.calls) == calls
    other.close()  # a failed start's cleanup detaches nothing
    assert k.xdp_attached_prog_id(2) == lb._dp.program().id
    lb.close()


def test_foreign_xdp_program_refused_unless_force(tmp_path):
    k = FakeKernel()
    foreign = KatranLb(lb_config(testing=False, main_interface="eth0", forwarding_cores=()), kernel=k)
    foreign.start()  # not persisting: not ours for a persisting instance
    fid = foreign._dp.program().id
    lb = KatranLb(cfg(tmp_path), kernel=k)
    with pytest.raises(AttachRefusedError, match=f"program id {fid} \\(balancer_ingress\\)"):
        lb.start()
    assert k.xdp_attached_prog_id(2) == fid and not lb.started
    lb.close()
    lb = KatranLb(cfg(tmp_path, force=True), kernel=k)
    lb.start()
    assert k.xdp_attached_prog_id(2) == lb._dp.program().id
    lb.close()
    foreign.close()


def test_foreign_tc_filter_refused_unless_force(tmp_path):
    k = FakeKernel()
    lb0 = KatranLb(lb_config(testing=False, main_interface="eth0", forwarding_cores=(), enable_hc=True,
                             katran_src_v4="10.0.0.2"), kernel=k)
    lb0.start()
    lb0._dp._attached_ifindex = None  # leave its programs behind, as a foreign owner would
    lb0._dp.hc._attached = False
    lb0.close()
    k.detach_xdp(2)
    assert k.tc
    lb = KatranLb(cfg(tmp_path, enable_hc=True, katran_src_v4="10.0.0.2"), kernel=k)
    with pytest.raises(AttachRefusedError, match="tc egress filter at priority 2307 .*katran-healthchecker"):
        lb.start()
    assert k.xdp_attached_prog_id(2) == 0  # the failed start detached what it attached, nothing else
    assert len(k.tc) == 1
    lb.close()


def test_hc_filter_adopted_not_reattached(tmp_path):
    k = FakeKernel()
    c = cfg(tmp_path, enable_hc=True, katran_src_v4="10.0.0.2")
    lb = KatranLb(c, kernel=k)
    lb.start()
    lb.add_vip(V1)
    lb.add_healthchecker_dst(5, "10.1.0.1")
    tc_before = dict(k.tc)
    lb.close(keep=True)
    lb2 = KatranLb(c, kernel=k)
    lb2.start()
    assert lb2.get_healthcheckers_dst() == {5: "10.1.0.1"}
    assert k.tc == tc_before and k.calls["attach_tc"] == 1
    lb2.add_healthchecker_dst(6, "10.1.0.2")  # the sources were read back from the maps
    lb2.close()
    assert k.tc == {} and k.xdp == {}


def test_other_sizes_refused_unless_force_reload(tmp_path):
    k = FakeKernel()
    lb = KatranLb(cfg(tmp_path), kernel=k)
    lb.start()
    populate(lb)
    prog_id = lb._dp.program().id
    lb.close(keep=True)
    lb2 = KatranLb(cfg(tmp_path, max_vips=16), kernel=k)
    with pytest.raises(state.StateError, match=r"max_vips: 8 -> 16.*-force_reload.*loses the LRU"):
        lb2.start()
    lb2.close()
    assert k.xdp_attached_prog_id(2) == prog_id  # untouched
    lb3 = KatranLb(cfg(tmp_path, max_vips=16, force_reload=True), kernel=k)
    lb3.start()
    assert not lb3.adopted and lb3.get_all_vips() == []
    assert k.xdp_attached_prog_id(2) == lb3._dp.program().id != prog_id
    lb3.close()
    assert k.xdp == {} and k.pins == {}


def test_maps_that_disagree_with_the_file_are_refused(tmp_path):
    k = FakeKernel()
    lb = KatranLb(cfg(tmp_path), kernel=k)
    lb.start()
    populate(lb)
    prog_id = lb._dp.program().id
    lb._map("vip_map").delete(next(iter(lb._map("vip_map").keys())))  # someone edited the map
    lb.close(keep=True)
    lb2 = KatranLb(cfg(tmp_path), kernel=k)
    with pytest.raises(state.StateError, match="do not match the state file .*vip_map has 1 VIPs, the file 2"):
        lb2.start()
    lb2.close()
    assert k.xdp_attached_prog_id(2) == prog_id


@pytest.mark.parametrize("content,match", [
    (b"{not json", "not valid JSON"),
    (b'{"format": "other"}', "not a katran-state file"),
    (b'{"format": "katran-state", "version": 99}', "version '99' is not supported"),
])
def test_bad_state_file_refused(tmp_path, content, match):
    k = FakeKernel()
    lb = KatranLb(cfg(tmp_path), kernel=k)
    lb.start()
    prog_id = lb._dp.program().id
    lb.close(keep=True)
    (tmp_path / "state" / "state.json").write_bytes(content)
    lb2 = KatranLb(cfg(tmp_path), kernel=k)
    with pytest.raises(state.StateError, match=match):
        lb2.start()
    lb2.close()
    assert k.xdp_attached_prog_id(2) == prog_id


def test_stale_pins_replaced_by_a_fresh_start(tmp_path):
    k = FakeKernel()
    lb = KatranLb(cfg(tmp_path), kernel=k)
    lb.start()
    populate(lb)
    lb.close(keep=True)
    k.detach_xdp(2)  # someone detached it: nothing to adopt
    lb2 = KatranLb(cfg(tmp_path), kernel=k)
    lb2.start()
    assert not lb2.adopted and lb2.get_all_vips() == []
    assert k.xdp_attached_prog_id(2) == lb2._dp.program().id
    lb2.close()
    assert k.pins == {}


def test_teardown_without_a_server(tmp_path):
    k = FakeKernel()
    c = cfg(tmp_path, enable_hc=True, katran_src_v4="10.0.0.2")
    lb = KatranLb(c, kernel=k)
    lb.start()
    populate(lb)
    lb.close(keep=True)
    removed = teardown(c, kernel=k)
    assert any("xdp program" in r for r in removed) and any("tc egress filter" in r for r in removed)
    assert k.xdp == {} and k.tc == {} and k.pins == {}
    assert not (tmp_path / "state").exists()


def test_teardown_refused_while_an_instance_runs(tmp_path):
    k = FakeKernel()
    lb = KatranLb(cfg(tmp_path), kernel=k)
    lb.start()
    with pytest.raises(state.InstanceLockedError):
        teardown(cfg(tmp_path), kernel=k)
    assert k.xdp_attached_prog_id(2) == lb._dp.program().id
    lb.close()


def test_testing_mode_and_library_default_persist_nothing(tmp_path):
    k = FakeKernel()
    lb = KatranLb(lb_config(state_dir=str(tmp_path / "s"), persist=True), kernel=k)  # testing=True
    lb.start()
    lb.add_vip(V1)
    assert not lb.persisting and k.pins == {} and not (tmp_path / "s").exists()
    lb.close()


def test_write_atomic_leaves_old_file_on_error(tmp_path):
    path = tmp_path / "state.json"
    state.write_atomic(path, {"a": 1})
    (tmp_path / f".state.json.{os.getpid()}.tmp").mkdir()  # the temp file cannot be created
    with pytest.raises(KernelError, match="write state file"):
        state.write_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}


def test_newer_object_swapped_in_reusing_every_map(tmp_path):
    import shutil

    from katran.dataplane import OBJ_DIR

    k = FakeKernel()
    lb = KatranLb(cfg(tmp_path), kernel=k)
    lb.start()
    populate(lb)
    before, maps_before = listing(lb), kernel_maps(k, lb)
    old_id = lb._dp.program().id
    map_ids = {n: m.id for n, m in lb._dp.obj.maps.items()}
    lb.close(keep=True)
    newer = tmp_path / "balancer-v2.bpf.o"
    shutil.copy(OBJ_DIR / "balancer.bpf.o", newer)
    lb2 = KatranLb(cfg(tmp_path, balancer_prog_path=str(newer)), kernel=k)
    lb2.start()
    new_id = lb2._dp.program().id
    assert lb2.adopted and lb2._dp.upgraded_from == old_id and new_id != old_id
    assert k.xdp_attached_prog_id(2) == new_id and k.calls["detach_xdp"] == 0  # swapped, never detached
    assert {n: m.id for n, m in lb2._dp.obj.maps.items()} == map_ids  # the LRU maps included
    assert listing(lb2) == before and kernel_maps(k, lb2) == maps_before
    lb2.close(keep=True)
    lb3 = KatranLb(cfg(tmp_path, balancer_prog_path=str(newer)), kernel=k)
    lb3.start()  # the pins now name the new program: a plain adoption
    assert lb3.adopted and lb3._dp.upgraded_from is None and lb3._dp.program().id == new_id
    lb3.close()
    assert k.xdp == {} and k.pins == {}


def test_an_upgrade_unmarks_the_vip_filter_until_the_new_control_plane_wrote_it(tmp_path, monkeypatch):
    """The program swapped in finds ctl_array[CTL_VIP_FILTER_DONE] 0 (the old program's
    control plane may not have kept the filter: a clear bit must not pass a VIP); the start
    that follows writes the filter and marks it whole again."""
    import shutil

    from katran.dataplane import OBJ_DIR
    from katran.testing.fake_kernel import FakeProgram

    k = FakeKernel()
    lb = KatranLb(cfg(tmp_path), kernel=k)
    lb.start()
    populate(lb)
    done = structs.u32(structs.CTL_VIP_FILTER_DONE)
    ctl_id = lb._map("ctl_array").id
    assert lb._map("ctl_array").lookup(done) == structs.ctl_value_u64(1)
    lb.close(keep=True)
    newer = tmp_path / "balancer-v2.bpf.o"
    shutil.copy(OBJ_DIR / "balancer.bpf.o", newer)
    at_attach = []
    real_attach = FakeProgram.attach_xdp

    def attach(prog, *a, **kw):
        at_attach.append(k.map_by_id(ctl_id).lookup(done))
        return real_attach(prog, *a, **kw)

    monkeypatch.setattr(FakeProgram, "attach_xdp", attach)
    lb2 = KatranLb(cfg(tmp_path, balancer_prog_path=str(newer)), kernel=k)
    lb2.start()
    assert lb2._dp.upgraded_from is not None
    assert at_attach == [structs.ctl_value_u64(0)]
    assert lb2._map("ctl_array").lookup(done) == structs.ctl_value_u64(1)
    lb2.close()


def test_incompatible_object_refused_unless_force_reload(tmp_path):
    from katran.dataplane import OBJ_DIR, IncompatibleObjectError

    k = FakeKernel()
    lb = KatranLb(cfg(tmp_path), kernel=k)
    lb.start()
    populate(lb)
    old_id = lb._dp.program().id
    lb.close(keep=True)
    other = str(OBJ_DIR / "decap.bpf.o")
    lb2 = KatranLb(cfg(tmp_path, balancer_prog_path=other), kernel=k)
    with pytest.raises(IncompatibleObjectError, match="cannot upgrade .* in place: .*nothing was changed.*-force_reload"):
        lb2.start()
    lb2.close()
    assert k.xdp_attached_prog_id(2) == old_id
    lb3 = KatranLb(cfg(tmp_path, balancer_prog_path=other, force_reload=True), kernel=k)
    with pytest.raises(Exception):
        lb3.start()  # force_reload loads it with fresh maps: the decap object is no balancer at all
    lb3.close()
    assert k.xdp_attached_prog_id(2) == old_id  # the failed start left the running one alone


# ---------------------------------------------------------------- shared mode (root array slot)
ROOT = "/sys/fs/bpf/jmp_eth0"


def shared_cfg(tmp_path, **kw):
    kw.setdefault("root_map_path", ROOT)
    kw.setdefault("root_map_pos", 2)
    return cfg(tmp_path, **kw)


def shared_kernel():
    from katran import shared

    k = FakeKernel()
    shared.install("eth0", map_path=ROOT, kernel=k)
    return k


def slot(k, pos=2):
    from katran import shared

    return shared.slot_prog_id(ROOT, pos, kernel=k)


def test_shared_mode_restart_adopts_the_program_in_its_slot(tmp_path):
    """SIGTERM and kill -9 in shared mode: the slot keeps our program; the next start adopts
    it and its maps without a write; the state file says where it runs."""
    k = shared_kernel()
    root_id = k.xdp_attached_prog_id(2)
    lb = KatranLb(shared_cfg(tmp_path), kernel=k)
    lb.start()
    assert lb.persisting
    populate(lb)
    before, maps_before = listing(lb), kernel_maps(k, lb)
    prog_id = lb._dp.program().id
    assert slot(k) == prog_id
    saved = json.loads((tmp_path / "state" / "state.json").read_text())
    assert saved["attach"] == {"root_map_path": ROOT, "root_map_pos": 2}
    lb.close(keep=True)  # SIGTERM
    assert slot(k) == prog_id and k.xdp_attached_prog_id(2) == root_id  # still forwarding
    calls_before = dict(k.calls)
    lb2 = KatranLb(shared_cfg(tmp_path), kernel=k)
    lb2.start()
    assert lb2.adopted and listing(lb2) == before and kernel_maps(k, lb2) == maps_before
    assert lb2._dp.program().id == prog_id
    writes = {op: n - calls_before.get(op, 0) for op, n in k.calls.items()
              if op in ("attach_xdp", "detach_xdp", "update", "update_batch", "delete")}
    assert not any(writes.values()), writes
    lb2._dp._release_lock()  # kill -9
    lb3 = KatranLb(shared_cfg(tmp_path), kernel=k)
    lb3.start()
    assert lb3.adopted and listing(lb3) == before and slot(k) == prog_id
    lb3.close()  # a teardown: our slot emptied, the root program stays
    assert slot(k) == 0 and k.xdp_attached_prog_id(2) == root_id
    assert not [p for p in k.pins if "katran" in str(p)]


def test_shared_mode_upgrade_swaps_the_slot_reusing_every_map(tmp_path):
    import shutil

    from katran.dataplane import OBJ_DIR

    k = shared_kernel()
    lb = KatranLb(shared_cfg(tmp_path), kernel=k)
    lb.start()
    populate(lb)
    before = listing(lb)
    old_id = lb._dp.program().id
    map_ids = {n: m.id for n, m in lb._dp.obj.maps.items()}
    lb.close(keep=True)
    newer = tmp_path / "balancer-v2.bpf.o"
    shutil.copy(OBJ_DIR / "balancer.bpf.o", newer)
    lb2 = KatranLb(shared_cfg(tmp_path, balancer_prog_path=str(newer)), kernel=k)
    lb2.start()
    new_id = lb2._dp.program().id
    assert lb2.adopted and lb2._dp.upgraded_from == old_id and new_id != old_id
    assert slot(k) == new_id and k.calls["delete"] == 0  # swapped in place, never emptied
    assert {n: m.id for n, m in lb2._dp.obj.maps.items()} == map_ids
    assert listing(lb2) == before
    lb2.close()


def test_shared_mode_upgrade_refused_when_the_slot_changed_meanwhile(tmp_path, monkeypatch):
    """The swap compares the slot under the root array's lock: a program another process put
    there between the adoption and the swap is left in place, the new object is closed."""
    import shutil

    from katran import shared
    from katran.dataplane import OBJ_DIR

    k = shared_kernel()
    lb = KatranLb(shared_cfg(tmp_path), kernel=k)
    lb.start()
    populate(lb)
    lb.close(keep=True)
    intruder = KatranLb(lb_config(forwarding_cores=()), kernel=k)
    intruder.start()
    iid = intruder._dp.program().id
    newer = tmp_path / "balancer-v2.bpf.o"
    shutil.copy(OBJ_DIR / "balancer.bpf.o", newer)
    real_register = shared.register

    def racing_register(prog, path, pos, **kw):  # someone else takes the slot just before our swap
        k_ = kw["kernel"]
        with k_.map_by_pin(path) as m:
            m.update(structs.u32(pos), structs.u32(intruder._dp.program().fd))
        return real_register(prog, path, pos, **kw)

    monkeypatch.setattr(shared, "register", racing_register)
    lb2 = KatranLb(shared_cfg(tmp_path, balancer_prog_path=str(newer)), kernel=k)
    with pytest.raises(shared.SlotChangedError, match=f"slot 2 of {ROOT}.*holds program id {iid}, not program id"):
        lb2.start()
    lb2.close()
    assert slot(k) == iid
    intruder.close()


def test_shared_mode_foreign_program_in_the_slot_refused_unless_force(tmp_path):
    from katran import shared

    k = shared_kernel()
    foreign = KatranLb(lb_config(forwarding_cores=()), kernel=k)
    foreign.start()
    fid = foreign._dp.program().id
    shared.register(foreign._dp.program(), ROOT, 2, kernel=k)
    lb = KatranLb(shared_cfg(tmp_path), kernel=k)
    with pytest.raises(AttachRefusedError, match=f"slot 2 of {ROOT} already holds .*program id {fid}.*-force"):
        lb.start()
    assert slot(k) == fid and not lb.started
    lb.close()
    lb = KatranLb(shared_cfg(tmp_path, force=True), kernel=k)
    lb.start()
    assert slot(k) == lb._dp.program().id
    lb.close()
    foreign.close()


def test_a_start_elsewhere_refused_while_our_program_runs_in_the_old_slot(tmp_path):
    """Another -prog_pos after a restart-friendly stop: two balancers would run (the root
    tail-calls the first), the old one with the old state. Refused; force_reload takes the
    old one out of its slot and loads a fresh data plane in the new one."""
    k = shared_kernel()
    lb = KatranLb(shared_cfg(tmp_path), kernel=k)
    lb.start()
    populate(lb)
    old_id = lb._dp.program().id
    lb.close(keep=True)
    moved = KatranLb(shared_cfg(tmp_path, root_map_pos=1), kernel=k)
    with pytest.raises(state.StateError, match=f"runs on slot 2 of {ROOT} .*not on slot 1 of {ROOT}.*katran-teardown"):
        moved.start()
    moved.close()
    assert slot(k) == old_id and slot(k, 1) == 0
    moved = KatranLb(shared_cfg(tmp_path, root_map_pos=1, force_reload=True), kernel=k)
    moved.start()
    assert not moved.adopted and slot(k) == 0 and slot(k, 1) == moved._dp.program().id
    moved.close()
    assert slot(k, 1) == 0


def test_teardown_empties_the_slot_the_state_file_names(tmp_path):
    k = shared_kernel()
    root_id = k.xdp_attached_prog_id(2)
    lb = KatranLb(shared_cfg(tmp_path), kernel=k)
    lb.start()
    populate(lb)
    prog_id = lb._dp.program().id
    lb.close(keep=True)
    removed = teardown(cfg(tmp_path), kernel=k)  # katran-teardown -intf eth0: no -map_path needed
    assert f"program id {prog_id} from slot 2 of {ROOT}" in removed
    assert slot(k) == 0 and k.xdp_attached_prog_id(2) == root_id  # the root program is not ours
    assert not (tmp_path / "state").exists()


def test_teardown_leaves_a_slot_another_program_took(tmp_path):
    from katran import shared

    k = shared_kernel()
    lb = KatranLb(shared_cfg(tmp_path), kernel=k)
    lb.start()
    other = KatranLb(lb_config(forwarding_cores=()), kernel=k)
    other.start()
    shared.register(other._dp.program(), ROOT, 2, kernel=k)  # a newer instance replaced ours
    lb.close()  # a teardown of ours must not empty it
    assert slot(k) == other._dp.program().id
    other.close()


# ---------------------------------------------------------------- the healthcheck program upgraded
def _hc_running(k, lb):
    (f,) = [f for (idx, d, prio), f in k.tc.items() if d == "egress"]
    return f[0].id


def _hc_setup(tmp_path, k, **kw):
    c = cfg(tmp_path, enable_hc=True, katran_src_v4="10.0.0.2", **kw)
    lb = KatranLb(c, kernel=k)
    lb.start()
    lb.add_vip(V1)
    lb.add_healthchecker_dst(5, "10.1.0.1")
    return lb


def test_a_newer_healthcheck_object_replaces_the_filters_program_on_the_pinned_maps(tmp_path):
    """A restart with another healthcheck object (a package upgrade, -healthchecking_prog):
    the new program is loaded on the pinned hc maps and swapped into the tc filter in one
    replace (never detached: no probe leaves unencapsulated); the pins name the new program,
    so the next start adopts it as it is."""
    import shutil

    from katran.healthcheck import DEFAULT_OBJECT

    k = FakeKernel()
    lb = _hc_setup(tmp_path, k)
    old_id = _hc_running(k, lb)
    hc_map_ids = {n: m.id for n, m in lb._dp.hc.loaded_object.maps.items()}
    saved = json.loads((tmp_path / "state" / "state.json").read_text())
    assert saved["hc_object"]["path"] == str(DEFAULT_OBJECT)
    lb.close(keep=True)
    newer = tmp_path / "healthchecking-v2.bpf.o"
    shutil.copy(DEFAULT_OBJECT, newer)
    c2 = cfg(tmp_path, enable_hc=True, katran_src_v4="10.0.0.2", healthchecking_prog_path=str(newer))
    lb2 = KatranLb(c2, kernel=k)
    lb2.start()
    hc = lb2._dp.hc
    new_id = _hc_running(k, lb2)
    assert lb2.adopted and hc.upgraded_from == old_id and new_id != old_id and hc.maps_reused
    assert {n: m.id for n, m in hc.loaded_object.maps.items()} == hc_map_ids
    assert k.calls["detach_tc"] == 0 and len(k.tc) == 1
    assert lb2.get_healthcheckers_dst() == {5: "10.1.0.1"}
    assert hc.kernel_dsts() == {5: "10.1.0.1"}
    assert json.loads((tmp_path / "state" / "state.json").read_text())["hc_object"]["path"] == str(newer)
    lb2.close(keep=True)
    lb3 = KatranLb(c2, kernel=k)
    lb3.start()
    assert lb3._dp.hc.upgraded_from is None and _hc_running(k, lb3) == new_id
    lb3.close()
    assert k.tc == {} and k.pins == {}


def test_a_healthcheck_object_whose_maps_do_not_fit_gets_fresh_provisioned_ones(tmp_path, monkeypatch):
    import shutil

    from katran.healthcheck import DEFAULT_OBJECT

    k = FakeKernel()
    lb = _hc_setup(tmp_path, k, max_reals=32)
    old_maps = {n: m.id for n, m in lb._dp.hc.loaded_object.maps.items()}
    lb.close(keep=True)
    newer = tmp_path / "healthchecking-v2.bpf.o"
    shutil.copy(DEFAULT_OBJECT, newer)
    from katran.testing import fake_kernel

    real_def = fake_kernel.FakeSpec.map_def

    def bigger_ctrl(spec, name):  # the new build's hc_ctrl_map grew
        d = dict(real_def(spec, name))
        if name == "hc_ctrl_map":
            d["max_entries"] += 1
        return d

    monkeypatch.setattr(fake_kernel.FakeSpec, "map_def", bigger_ctrl)
    lb2 = KatranLb(cfg(tmp_path, enable_hc=True, katran_src_v4="10.0.0.2", max_reals=32,
                       healthchecking_prog_path=str(newer)), kernel=k)
    lb2.start()
    hc = lb2._dp.hc
    assert hc.upgraded_from is not None and not hc.maps_reused
    new_maps = {n: m.id for n, m in hc.loaded_object.maps.items()}
    assert not set(new_maps.values()) & set(old_maps.values())
    assert hc.kernel_dsts() == {5: "10.1.0.1"}  # provisioned again from the saved state
    assert k.calls["detach_tc"] == 0 and len(k.tc) == 1 and _hc_running(k, lb2) == hc.loaded_object.program(
        "healthcheck_encap").id
    lb2.close()
    assert k.tc == {} and k.pins == {}
