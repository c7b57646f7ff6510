"""ch_rings (and any ARRAY made with BPF_F_MMAPABLE) mapped into the process: the adapter's
``Map.value_view`` on the running kernel and the fake kernel's, the same assertions on both;
KatranLb writing rings through it (rollback included) on the real kernel; an older ch_rings
without the flag -- adopted, or reused by a hitless upgrade -- written with batch updates."""

from __future__ import annotations

import errno
import mmap
import os
import struct

import numpy as np
import pytest

from conftest import lb_config
from katran import KatranLb, KernelError, ModifyAction, Real, VipKey, ValidationError, structs
from katran.kernel import BPF_F_MMAPABLE, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH
from katran.testing import FakeKernel
from unflagged import unflagged_balancer  # noqa: F401 (fixture)

VIP = VipKey("10.0.0.1", 80, "tcp")
RING = 13


def _kernel(which: str):
    if which == "fake":
        return FakeKernel()
    from katran.adapter.kernel import RealKernel

    return RealKernel()


def u32(i: int) -> bytes:
    return struct.pack("<I", i)


@pytest.fixture(params=[pytest.param("real", marks=pytest.mark.privileged), "fake"])
def kernel(request):
    return _kernel(request.param)


def test_view_and_syscalls_see_the_same_values(kernel):
    with kernel.create_map(BPF_MAP_TYPE_ARRAY, 4, 4, 3000, name="mm_u32", flags=BPF_F_MMAPABLE) as m:
        assert m.mmapable and m.flags & BPF_F_MMAPABLE
        view = m.value_view(np.uint32)
        assert view.shape == (3000,) and view.strides == (8,)  # round_up(value_size, 8) apart
        assert m.value_view(np.uint32) is view  # one mapping per handle
        assert not view.any()
        idx = np.array([0, 7, 2999], dtype=np.uint32)
        view[idx] = np.array([11, 22, 33], dtype=np.uint32)
        assert [m.lookup(u32(i)) for i in (0, 1, 7, 2999)] == [u32(11), u32(0), u32(22), u32(33)]
        m.update(u32(5), u32(0xDEADBEEF))
        m.update_batch(u32(6) + u32(8), u32(1) + u32(2))
        assert view[5] == 0xDEADBEEF and view[6] == 1 and view[8] == 2
        view[7] = 0
        assert m.lookup(u32(7)) == u32(0)


def test_wider_values_give_a_2d_view(kernel):
    with kernel.create_map(BPF_MAP_TYPE_ARRAY, 4, 20, 10, name="mm_wide", flags=BPF_F_MMAPABLE) as m:
        view = m.value_view(np.uint32)
        assert view.shape == (10, 5) and view.strides == (24, 4)
        view[3] = np.arange(1, 6, dtype=np.uint32)
        assert m.lookup(u32(3)) == np.arange(1, 6, dtype="<u4").tobytes()
        with pytest.raises(ValidationError, match="dtype"):
            m.value_view(np.uint64)  # 20 is no multiple of 8


def test_maps_that_cannot_be_mapped_are_refused(kernel):
    with kernel.create_map(BPF_MAP_TYPE_ARRAY, 4, 4, 16, name="mm_plain") as m:
        assert not m.mmapable
        with pytest.raises(KernelError, match="mmap mm_plain.*BPF_F_MMAPABLE") as e:
            m.value_view(np.uint32)
        assert e.value.errno == errno.EINVAL
    with kernel.create_map(BPF_MAP_TYPE_HASH, 4, 4, 16, name="mm_hash") as m:
        assert not m.mmapable
        with pytest.raises(ValidationError, match="mm_hash.type"):
            m.value_view(np.uint32)


def test_the_fake_injects_faults_into_the_mapping_and_the_writes():
    k = FakeKernel()
    m = k.create_map(BPF_MAP_TYPE_ARRAY, 4, 4, 64, name="mm_fault", flags=BPF_F_MMAPABLE)
    k.fail("map_mmap", err=errno.EPERM)
    with pytest.raises(KernelError, match="mmap mm_fault") as e:
        m.value_view(np.uint32)
    assert e.value.errno == errno.EPERM
    view = m.value_view(np.uint32)
    k.fail("write", err=errno.ENOSPC)  # writes through the view are writes
    idx = np.arange(10, 20, dtype=np.uint32)
    with pytest.raises(KernelError, match="write mm_fault through its mmap"):
        view[idx] = idx
    assert k.map_contents(m) == {u32(i): u32(i) for i in range(10, 15)}  # the first half landed
    view[idx] = 0
    assert k.map_contents(m) == {} and k.calls["map_view_write"] == 2
    copy = view[idx] + 1  # no view of the map's memory: no kernel operation
    copy[0] = 5
    assert k.calls["map_view_write"] == 2


@pytest.mark.privileged
def test_closing_the_map_unmaps_it():
    from katran.adapter import bpf

    def mapped() -> int:
        with open(f"/proc/{os.getpid()}/maps") as f:
            return sum("bpf-map" in line for line in f)

    base = mapped()
    m = bpf.create_map(BPF_MAP_TYPE_ARRAY, 4, 4, 5 * mmap.PAGESIZE, name="mm_close", flags=BPF_F_MMAPABLE)
    view = m.value_view(np.uint32)
    assert mapped() == base + 1
    view[3] = 9
    m.close()  # a view still held keeps its mapping (and so the map) valid ...
    assert view[3] == 9 and mapped() == base + 1
    del view  # ... until it dies
    assert mapped() == base
    m = bpf.create_map(BPF_MAP_TYPE_ARRAY, 4, 4, 16, name="mm_close2", flags=BPF_F_MMAPABLE)
    m.value_view(np.uint32)
    m.close()  # no view left: unmapped at once
    assert mapped() == base


# ------------------------------------------------------------------ KatranLb on the real kernel
def _ring_by_syscall(lb: KatranLb) -> list[int]:
    from katran.adapter import bpf

    num = lb._vips[VIP].num
    with bpf.Map.from_id(lb._map("ch_rings").id) as m:  # a handle of its own: lookups, no mmap
        return [structs.u32_unpack(m.lookup(u32(num * RING + i))) for i in range(RING)]


@pytest.mark.privileged
@pytest.mark.parametrize("obj", ["packaged", "unflagged"])
def test_rings_reach_the_kernel_and_roll_back(obj, request, monkeypatch):
    kw = dict(max_vips=4, max_reals=16, ch_ring_size=RING)
    if obj == "unflagged":
        kw["balancer_prog_path"] = str(request.getfixturevalue("unflagged_balancer"))
    lb = KatranLb(lb_config(**kw))
    lb.start()
    try:
        assert lb._map("ch_rings").mmapable == (obj == "packaged")
        lb.add_vip(VIP)
        lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.1.0.1"), Real("10.1.0.2", 3)], VIP)
        ring = lb._vips[VIP].ring.tolist()
        assert _ring_by_syscall(lb) == ring and set(ring) == {1, 2}
        real_program_ring = KatranLb._program_ring

        def then_fail(self, vip_num, old, new, tx):
            real_program_ring(self, vip_num, old, new, tx)
            assert _ring_by_syscall(self) != ring  # written ...
            raise KernelError("a later step", errno.EIO)

        monkeypatch.setattr(KatranLb, "_program_ring", then_fail)
        with pytest.raises(KernelError, match="a later step"):
            lb.add_real_for_vip(Real("10.1.0.3", 5), VIP)
        assert _ring_by_syscall(lb) == ring == lb._vips[VIP].ring.tolist()  # ... and written back
        monkeypatch.undo()
        lb.add_real_for_vip(Real("10.1.0.3", 5), VIP)
        assert _ring_by_syscall(lb) == lb._vips[VIP].ring.tolist() != ring
    finally:
        lb.close()


@pytest.mark.privileged
@pytest.mark.parametrize("first,then", [("unflagged", "packaged"), ("packaged", "unflagged")])
def test_upgrade_keeps_the_live_ch_rings_and_its_flags(first, then, request, tmp_path):
    """A hitless upgrade reuses the live ch_rings as it is (bpf_map__reuse_fd takes the live
    map's flags): from an object without the flag the rings go on with batch updates, from one
    with it through the mmap; either way they land in the map the running program reads."""
    from katran.dataplane import OBJ_DIR
    from katran.lab.netns import inside, veth_link

    objs = {"packaged": OBJ_DIR / "balancer.bpf.o", "unflagged": request.getfixturevalue("unflagged_balancer")}
    tag = f"kmm{os.getpid() % 100000}"

    def cfg(obj: str, ifname: str):
        return lb_config(testing=False, persist=True, main_interface=ifname, xdp_attach_mode="generic",
                         state_dir=str(tmp_path / "state"), pin_dir=f"/sys/fs/bpf/{tag}",
                         balancer_prog_path=str(objs[obj]), max_vips=4, max_reals=16, ch_ring_size=RING,
                         forwarding_cores=(0,))

    with veth_link(tag) as link, inside(link.a.netns):
        lb = KatranLb(cfg(first, link.a.ifname))
        lb.start()
        try:
            lb.add_vip(VIP)
            lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.1.0.1"), Real("10.1.0.2", 3)], VIP)
            ring_id = lb._map("ch_rings").id
            first_prog = lb._dp.program().id
        finally:
            lb.close(keep=True)
        lb = KatranLb(cfg(then, link.a.ifname))
        lb.start()
        try:
            assert lb.adopted and lb._dp.upgraded_from == first_prog
            ch = lb._map("ch_rings")
            assert ch.id == ring_id and ch.mmapable == (first == "packaged")  # the live map, its flags
            assert _ring_by_syscall(lb) == lb._vips[VIP].ring.tolist()
            lb.add_real_for_vip(Real("10.1.0.3", 5), VIP)
            ring = lb._vips[VIP].ring.tolist()
            assert 3 in ring and _ring_by_syscall(lb) == ring
            # the running (new) program reads this very map
            from katran.adapter import bpf

            assert ring_id in bpf.Program.from_id(lb._dp.program().id).map_ids()
        finally:
            lb.close()
