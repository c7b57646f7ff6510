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
