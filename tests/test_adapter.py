"""Kernel adapter tests: libbpf via cffi (objects, maps, programs, XDP) and netlink (pyroute2).

They load a tiny fixture program (tests/bpf/adapter_test.bpf.c) compiled into tmp_path.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(shutil.which("clang") is None, reason="clang is needed to compile the test program"),
]

from katran.adapter import (  # noqa: E402
    BPF_EXIST,
    BPF_MAP_TYPE_ARRAY_OF_MAPS,
    BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_LRU_HASH,
    BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_NOEXIST,
    BPF_PROG_TYPE_SCHED_CLS,
    BPF_PROG_TYPE_XDP,
    XDP_DROP,
    XDP_PASS,
    XDP_TX,
    Map,
    ObjectSpec,
    Program,
    btf_struct_layout,
    create_map,
    detach_xdp,
    ensure_bpffs,
    num_possible_cpus,
    xdp_attached_prog_id,
)
from katran.adapter import netlink  # noqa: E402
from katran.build import compile_one  # noqa: E402
from katran.errors import BuildError, KernelError, NotFoundError, ValidationError  # noqa: E402

SRC = Path(__file__).resolve().parent / "bpf" / "adapter_test.bpf.c"
VAL = struct.Struct("<QIHBB")  # struct adapter_val: hits, stamp, port, proto, flags


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def frame(key: int, size: int = 64) -> bytes:
    """Test input: first 4 bytes are the hash key the program looks up."""
    return u32(key) + bytes(range(4, size))


@pytest.fixture(scope="module")
def obj_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_one(SRC, tmp_path_factory.mktemp("adapter_bpf"))


@pytest.fixture
def loaded(obj_path: Path):
    spec = ObjectSpec.open(obj_path)
    obj = spec.load()
    yield obj
    obj.close()


@pytest.fixture
def netns_veth():
    """A fresh netns holding veth pair va<->vb (both up, va has 10.77.0.1/24)."""
    from pyroute2 import IPRoute
    from pyroute2 import netns as pr_netns

    name = f"katran-adt-{uuid.uuid4().hex[:8]}"
    pr_netns.create(name)
    try:
        with IPRoute(netns=name, flags=0) as ipr:
            ipr.link("add", ifname="va", kind="veth", peer="vb")
            ia = ipr.link_lookup(ifname="va")[0]
            ib = ipr.link_lookup(ifname="vb")[0]
            ipr.addr("add", index=ia, address="10.77.0.1", prefixlen=24)
            ipr.link("set", index=ia, state="up")
            ipr.link("set", index=ib, state="up")
            ipr.link("set", index=1, state="up")
        yield name, ia, ib
    finally:
        pr_netns.remove(name)


# --- object open / knobs -------------------------------------------------------

def test_open_lists_maps_programs_and_rodata(obj_path: Path) -> None:
    with ObjectSpec.open(obj_path) as spec:
        assert set(spec.map_names) == {"adapter_hash", "adapter_pcpu", "adapter_lru_maps"}
        assert set(spec.program_names) == {"adapter_xdp", "adapter_tc"}
        assert spec.rodata_vars() == {"verdict": (0, 4), "stamp": (4, 4), "wide_knob": (8, 8)}
        assert spec.rodata("verdict") == u32(XDP_PASS)
        assert spec.max_entries("adapter_hash") == 64


def test_open_missing_file_is_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="nope.bpf.o"):
        ObjectSpec.open(tmp_path / "nope.bpf.o")


def test_open_non_elf_is_kernel_error_naming_the_file(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.bpf.o"
    bogus.write_bytes(b"not an ELF file at all")
    with pytest.raises(KernelError, match=f"open {bogus}"):
        ObjectSpec.open(bogus)


def test_bad_map_and_knob_names_are_validation_errors(obj_path: Path) -> None:
    with ObjectSpec.open(obj_path) as spec:
        with pytest.raises(ValidationError, match="no_such_map"):
            spec.set_max_entries("no_such_map", 10)
        with pytest.raises(ValidationError, match="adapter_hash.max_entries"):
            spec.set_max_entries("adapter_hash", 0)
        with pytest.raises(ValidationError, match="no_such_knob"):
            spec.set_rodata("no_such_knob", 1)
        with pytest.raises(ValidationError, match="must be 4 bytes"):
            spec.set_rodata("verdict", b"\x01\x02")
        with pytest.raises(ValidationError, match="does not fit"):
            spec.set_rodata("stamp", 1 << 32)
        with pytest.raises(ValidationError, match="adapter_hash"):
            spec.set_inner_map_max_entries("adapter_hash", 8)
        # nothing changed by the rejected calls
        assert spec.rodata("verdict") == u32(XDP_PASS)
        assert spec.rodata("stamp") == u32(0)
        assert spec.max_entries("adapter_hash") == 64


def test_set_max_entries_and_rodata_reach_the_kernel(obj_path: Path) -> None:
    spec = ObjectSpec.open(obj_path)
    spec.set_max_entries("adapter_hash", 200)
    spec.set_rodata("stamp", 0x0A0B0C0D)
    spec.set_rodata("wide_knob", (1 << 40) + 5)
    spec.set_rodata("verdict", True)  # bool packs as 1
    with spec.load() as obj:
        assert obj.map("adapter_hash").max_entries == 200
        rodata = obj.map(".rodata").lookup(u32(0))
        assert rodata[0:4] == u32(1)
        assert rodata[4:8] == u32(0x0A0B0C0D)
        assert rodata[8:16] == u64((1 << 40) + 5)
    with pytest.raises(KernelError, match="closed"):
        obj.map("adapter_hash")


@pytest.mark.parametrize(
    "verdict,stamp",
    [(XDP_PASS, 0), (XDP_DROP, 0xDEADBEEF), (XDP_TX, 0x01020304)],
)
def test_knobs_change_verdict_and_written_bytes(obj_path: Path, verdict: int, stamp: int) -> None:
    spec = ObjectSpec.open(obj_path)
    spec.set_rodata("verdict", verdict)
    spec.set_rodata("stamp", stamp)
    with spec.load() as obj:
        data = frame(7)
        res = obj.program("adapter_xdp").test_run(data)
        assert res.retval == verdict
        assert res.duration_ns >= 0
        assert len(res.data) == len(data)
        expected = (u32(stamp) if stamp else data[:4]) + data[4:]
        assert res.data == expected
        assert res.ctx is None


# --- maps ----------------------------------------------------------------------------

def test_hash_map_crud_and_flags(loaded) -> None:
    h = loaded.map("adapter_hash")
    assert (h.type, h.key_size, h.value_size, h.per_cpu) == (BPF_MAP_TYPE_HASH, 4, 16, False)
    assert h.lookup(u32(1)) is None
    h.update(u32(1), VAL.pack(0, 0x11223344, 80, 6, 0))
    assert VAL.unpack(h.lookup(u32(1))) == (0, 0x11223344, 80, 6, 0)
    with pytest.raises(KernelError, match="update adapter_hash: EEXIST") as ei:
        h.update(u32(1), VAL.pack(1, 1, 1, 1, 1), BPF_NOEXIST)
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(KernelError, match="ENOENT"):
        h.update(u32(2), VAL.pack(1, 1, 1, 1, 1), BPF_EXIST)
    assert VAL.unpack(h.lookup(u32(1))) == (0, 0x11223344, 80, 6, 0)
    # the program sees the value: writes stamp into bytes 4..8 and counts hits
    prog = loaded.program("adapter_xdp")
    out = prog.test_run(frame(1))
    assert out.data[4:8] == u32(0x11223344)
    assert out.data[8:] == frame(1)[8:]
    assert VAL.unpack(h.lookup(u32(1)))[0] == 1
    assert h.delete(u32(1)) is True
    assert h.delete(u32(1)) is False
    assert h.lookup(u32(1)) is None
    assert prog.test_run(frame(1)).data == frame(1)


def test_map_errors_name_the_map_and_leave_it_unchanged(loaded) -> None:
    h = loaded.map("adapter_hash")
    h.update(u32(3), VAL.pack(9, 9, 9, 9, 9))
    with pytest.raises(ValidationError, match=r"adapter_hash\.key.*must be 4 bytes, got 2"):
        h.update(b"\x01\x02", VAL.pack(0, 0, 0, 0, 0))
    with pytest.raises(ValidationError, match=r"adapter_hash\.value.*must be 16 bytes, got 3"):
        h.update(u32(3), b"abc")
    with pytest.raises(ValidationError, match=r"adapter_hash\.key"):
        h.lookup(u64(3))
    with pytest.raises(ValidationError, match=r"adapter_pcpu\.value"):
        loaded.map("adapter_pcpu").update(u32(0), [u64(1)] * (num_possible_cpus() + 1))
    with pytest.raises(NotFoundError, match="nope"):
        loaded.map("nope")
    with pytest.raises(NotFoundError, match="nope"):
        loaded.program("nope")
    assert list(h.items()) == [(u32(3), VAL.pack(9, 9, 9, 9, 9))]


def test_hash_full_is_enospc_naming_the_map(obj_path: Path) -> None:
    spec = ObjectSpec.open(obj_path)
    spec.set_max_entries("adapter_hash", 4)
    with spec.load() as obj:
        h = obj.map("adapter_hash")
        for i in range(4):
            h.update(u32(i), bytes(16))
        with pytest.raises(KernelError) as ei:
            h.update(u32(99), bytes(16))
        assert str(ei.value).startswith("update adapter_hash: E2BIG")
        assert sorted(h.keys()) == [u32(i) for i in range(4)]


def test_percpu_values_per_cpu_and_summed(loaded) -> None:
    pc = loaded.map("adapter_pcpu")
    ncpu = num_possible_cpus()
    assert pc.per_cpu and pc.type == BPF_MAP_TYPE_PERCPU_ARRAY
    before = pc.lookup(u32(0))
    assert isinstance(before, list) and len(before) == ncpu and all(v == u64(0) for v in before)
    runs = 25
    prog = loaded.program("adapter_xdp")
    for _ in range(runs):
        prog.test_run(frame(5))
    after = pc.lookup(u32(0))
    assert sum(struct.unpack("<Q", v)[0] for v in after) == runs
    # explicit per-CPU list and single value replicated to every CPU
    pc.update(u32(2), [u64(100 + i) for i in range(ncpu)])
    assert pc.lookup(u32(2)) == [u64(100 + i) for i in range(ncpu)]
    pc.update(u32(3), u64(7))
    assert pc.lookup(u32(3)) == [u64(7)] * ncpu


def test_num_possible_cpus_matches_sysfs() -> None:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += (int(hi) if hi else int(lo)) - int(lo) + 1
    assert num_possible_cpus() == count


def test_keys_items_and_batch_ops(loaded) -> None:
    h = loaded.map("adapter_hash")
    keys = [u32(i) for i in range(10, 40)]
    vals = [VAL.pack(i, i * 3, i, 17, 0) for i in range(10, 40)]
    h.update_batch(keys, vals)
    assert sorted(h.keys()) == sorted(keys)
    assert dict(h.items()) == dict(zip(keys, vals))
    assert dict(h.lookup_batch(chunk=7)) == dict(zip(keys, vals))
    with pytest.raises(ValidationError, match="adapter_hash.values"):
        h.update_batch(keys, vals[:-1])
    assert dict(h.lookup_batch(chunk=1)) == dict(zip(keys, vals))  # grows on ENOSPC
    h.delete_batch(keys[:10])
    assert sorted(h.keys()) == sorted(keys[10:])
    # packed blobs (what numpy's tobytes() gives)
    h.update_batch(b"".join(keys[:5]), b"".join(vals[20:25]))
    assert [h.lookup(k) for k in keys[:5]] == vals[20:25]
    with pytest.raises(ValidationError, match="adapter_hash.keys"):
        h.update_batch(b"\0" * 7, b"")
    with pytest.raises(ValidationError, match="adapter_hash.values"):
        h.update_batch(b"".join(keys[:2]), b"\0" * 16)
    h.delete_batch(b"".join(keys[:5]))
    assert sorted(h.keys()) == sorted(keys[10:])

    pc = loaded.map("adapter_pcpu")
    pc.update_batch([u32(i) for i in range(4)], [u64(i + 1) for i in range(4)])
    got = pc.lookup_batch()
    assert [k for k, _ in got] == [u32(i) for i in range(4)]
    assert [v for _, v in got] == [[u64(i + 1)] * num_possible_cpus() for i in range(4)]
    ncpu = num_possible_cpus()
    blob = b"".join(u64(10 * i + c) for i in range(2) for c in range(ncpu))
    pc.update_batch(u32(0) + u32(1), blob)
    assert pc.lookup(u32(1)) == [u64(10 + c) for c in range(ncpu)]


@pytest.mark.parametrize("template", ["sized", "prototype"])
def test_inner_lru_with_numa_node_in_array_of_maps(obj_path: Path, template: str) -> None:
    spec = ObjectSpec.open(obj_path)
    proto = create_map(BPF_MAP_TYPE_LRU_HASH, 4, 8, 128, name="adt_proto", numa_node=0)
    if template == "sized":
        spec.set_inner_map_max_entries("adapter_lru_maps", 128, numa_node=0)
    else:
        spec.set_inner_map_prototype("adapter_lru_maps", proto)
    obj = spec.load()
    proto.close()  # the kernel keeps the template's shape
    with obj:
        outer = obj.map("adapter_lru_maps")
        assert outer.type == BPF_MAP_TYPE_ARRAY_OF_MAPS
        assert outer.inner_map_id(0) is None
        with create_map(BPF_MAP_TYPE_LRU_HASH, 4, 8, 128, name="adt_lru0", numa_node=0) as inner:
            assert inner.max_entries == 128
            outer.set_inner_map(0, inner)
            assert outer.inner_map_id(0) == inner.id
            prog = obj.program("adapter_xdp")
            for key in (1, 2, 2, 2):
                prog.test_run(frame(key))
            assert dict(inner.items()) == {u32(1): u64(1), u32(2): u64(3)}
            # an inner map without BPF_F_NUMA_NODE does not match the template
            with create_map(BPF_MAP_TYPE_LRU_HASH, 4, 8, 128, name="adt_lru1") as other:
                with pytest.raises(KernelError, match="update adapter_lru_maps: EINVAL"):
                    outer.set_inner_map(1, other)
            assert outer.inner_map_id(1) is None
            assert [k for k, _ in outer.lookup_batch()] == [u32(0)]


def test_create_map_validates_and_names_errors() -> None:
    with pytest.raises(ValidationError, match="max_entries"):
        create_map(BPF_MAP_TYPE_HASH, 4, 4, -1)
    with pytest.raises(KernelError, match="create map adt_bad"):
        create_map(BPF_MAP_TYPE_HASH, 0, 4, 4, name="adt_bad")
    with create_map(BPF_MAP_TYPE_HASH, 8, 4, 16, name="adt_plain") as m:
        m.update(u64(1), u32(2))
        assert Map.from_id(m.id).lookup(u64(1)) == u32(2)
    assert m.fd == -1


# --- programs --------------------------------------------------------------------

def test_load_failure_reports_operation_and_verifier_log(obj_path: Path) -> None:
    spec = ObjectSpec.open(obj_path)
    # an XDP body verified as a tc program reads xdp_md fields the tc ctx does not have
    spec.set_program_type("adapter_xdp", BPF_PROG_TYPE_SCHED_CLS)
    with pytest.raises(KernelError) as ei:
        spec.load()
    msg = str(ei.value)
    assert ei.value.errno == errno.EACCES
    assert msg.startswith("load adapter_test.bpf.o: EACCES")
    assert "invalid mem access" in msg  # the verifier's own words made it into the error
    assert "adapter_xdp" in msg
    spec.close()


def test_program_attributes_and_from_id(loaded) -> None:
    prog = loaded.program("adapter_xdp")
    assert prog.type == BPF_PROG_TYPE_XDP
    assert loaded.program("adapter_tc").type == BPF_PROG_TYPE_SCHED_CLS
    with Program.from_id(prog.id) as again:
        assert again.id == prog.id and again.type == BPF_PROG_TYPE_XDP
        assert again.test_run(frame(1)).retval == XDP_PASS


def test_test_run_repeat_counts_every_run(loaded) -> None:
    res = loaded.program("adapter_xdp").test_run(frame(9), repeat=50)
    assert res.retval == XDP_PASS
    total = sum(struct.unpack("<Q", v)[0] for v in loaded.map("adapter_pcpu").lookup(u32(0)))
    assert total == 50


@pytest.mark.netns
def test_test_run_live_frames(loaded, netns_veth) -> None:
    ns, ia, _ = netns_veth
    prog = loaded.program("adapter_xdp")
    with netlink.in_netns(ns):
        prog.test_run_live(frame(3, 64), ia, repeat=20)
    total = sum(struct.unpack("<Q", v)[0] for v in loaded.map("adapter_pcpu").lookup(u32(0)))
    assert total == 20


@pytest.mark.netns
@pytest.mark.parametrize("mode", ["native", "generic"])
def test_xdp_attach_detach_on_veth(loaded, netns_veth, mode: str) -> None:
    ns, ia, _ = netns_veth
    prog = loaded.program("adapter_xdp")
    with netlink.in_netns(ns):
        assert xdp_attached_prog_id(ia, mode) == 0
        prog.attach_xdp(ia, mode)
        try:
            assert xdp_attached_prog_id(ia, mode) == prog.id
            with pytest.raises(KernelError, match=f"attach xdp program adapter_xdp to ifindex {ia}"):
                prog.attach_xdp(ia, mode)  # replace=False refuses a second program
            prog.attach_xdp(ia, mode, replace=True)
            assert xdp_attached_prog_id(ia, mode) == prog.id
        finally:
            detach_xdp(ia, mode)
        assert xdp_attached_prog_id(ia, mode) == 0
    with pytest.raises(ValidationError, match="mode"):
        prog.attach_xdp(ia, "bogus")


# --- pinning / BTF ------------------------------------------------------------------

def test_pin_unpin_map_and_program(loaded) -> None:
    ensure_bpffs()
    ensure_bpffs()  # idempotent
    base = f"/sys/fs/bpf/katran_adt_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    h = loaded.map("adapter_hash")
    prog = loaded.program("adapter_xdp")
    h.update(u32(42), VAL.pack(1, 2, 3, 4, 5))
    h.pin(base + "_map")
    prog.pin(base + "_prog")
    try:
        with Map.from_pinned(base + "_map") as pinned:
            assert pinned.id == h.id
            assert (pinned.key_size, pinned.value_size, pinned.type) == (4, 16, BPF_MAP_TYPE_HASH)
            assert pinned.name == "adapter_hash"
            assert pinned.lookup(u32(42)) == VAL.pack(1, 2, 3, 4, 5)
            pinned.update(u32(43), bytes(16))
            assert h.lookup(u32(43)) == bytes(16)
        with Program.from_pinned(base + "_prog") as pp:
            assert pp.id == prog.id and pp.name == "adapter_xdp"
        with pytest.raises(KernelError, match="pin map adapter_hash"):
            h.pin(base + "_map")  # EEXIST
    finally:
        h.unpin(base + "_map")
        prog.unpin(base + "_prog")
    assert not os.path.exists(base + "_map") and not os.path.exists(base + "_prog")
    with pytest.raises(KernelError, match="open pinned map"):
        Map.from_pinned(base + "_map")
    with pytest.raises(KernelError, match="unpin map adapter_hash"):
        h.unpin(base + "_map")


def test_btf_struct_layout(obj_path: Path) -> None:
    size, members = btf_struct_layout(obj_path, "adapter_val")
    assert size == VAL.size == 16
    assert members == {
        "hits": (0, 8), "stamp": (8, 4), "port": (12, 2), "port_bytes": (12, 2),
        "proto": (14, 1), "flags": (15, 1),
    }
    with pytest.raises(NotFoundError, match="no_such_struct"):
        btf_struct_layout(obj_path, "no_such_struct")


# --- netlink ----------------------------------------------------------------------------

@pytest.mark.netns
def test_netlink_interface_queries(netns_veth) -> None:
    from pyroute2 import IPRoute

    ns, ia, ib = netns_veth
    assert netlink.ifindex("va", ns) == ia
    assert netlink.ifname(ib, ns) == "vb"
    with IPRoute(netns=ns, flags=0) as ipr:
        mac = ipr.link("get", index=ia)[0].get_attr("IFLA_ADDRESS")
        ipr.neigh("add", dst="10.77.0.2", lladdr="02:00:00:00:00:02", ifindex=ia, state=0x80)
        ipr.route("add", dst="0.0.0.0/0", gateway="10.77.0.2")
    assert netlink.mac_address("va", ns) == mac
    assert netlink.interface_addresses("va", ns, family=4) == ["10.77.0.1"]
    assert netlink.neighbour_mac("10.77.0.2", "va", ns) == "02:00:00:00:00:02"
    assert netlink.default_gateway(4, ns) == ("10.77.0.2", "va")
    with pytest.raises(NotFoundError, match="interface nope"):
        netlink.ifindex("nope", ns)
    with pytest.raises(NotFoundError, match="neighbour 10.77.0.9"):
        netlink.neighbour_mac("10.77.0.9", "va", ns)
    with pytest.raises(ValidationError, match="ip='bad'"):
        netlink.neighbour_mac("bad", "va", ns)
    with pytest.raises(NotFoundError, match="network namespace"):
        netlink.ifindex("va", "katran-no-such-ns")


@pytest.mark.netns
def test_tc_bpf_attach_counts_egress_packets(loaded, netns_veth, obj_path) -> None:
    ns, ia, _ = netns_veth
    from pyroute2 import IPRoute

    with IPRoute(netns=ns, flags=0) as ipr:
        ipr.neigh("add", dst="10.77.0.2", lladdr="02:00:00:00:00:02", ifindex=ia, state=0x80)
    tc = loaded.program("adapter_tc")
    pc = loaded.map("adapter_pcpu")
    netlink.attach_tc_bpf(ia, tc.fd, "egress", prio=3, handle=7, name="adt_tc", netns=ns)
    netlink.ensure_clsact(ia, ns)  # present: reused silently
    assert netlink.tc_bpf_filters(ia, "egress", ns) == [{"name": "adt_tc", "prio": 3, "handle": 7, "id": tc.id}]
    assert netlink.tc_bpf_filters(ia, "ingress", ns) == []
    with pytest.raises(KernelError, match="attach tc bpf adt_tc"):
        netlink.attach_tc_bpf(ia, tc.fd, "egress", prio=3, handle=7, name="adt_tc", netns=ns)
    subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.01", "-W", "0.1", "10.77.0.2"],
                   capture_output=True, check=False)
    sent = sum(struct.unpack("<Q", v)[0] for v in pc.lookup(u32(1)))
    assert sent >= 3
    # replace: another program in the same filter, in one request (a healthcheck upgrade)
    second = ObjectSpec.open(obj_path).load()
    try:
        tc2 = second.program("adapter_tc")
        netlink.attach_tc_bpf(ia, tc2.fd, "egress", prio=3, handle=7, name="adt_tc2", netns=ns, replace=True)
        assert netlink.tc_bpf_filters(ia, "egress", ns) == [{"name": "adt_tc2", "prio": 3, "handle": 7,
                                                             "id": tc2.id}]
        pc2 = second.map("adapter_pcpu")
        subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "2", "-i", "0.01", "-W", "0.1", "10.77.0.2"],
                       capture_output=True, check=False)
        assert sum(struct.unpack("<Q", v)[0] for v in pc2.lookup(u32(1))) >= 2
        assert sum(struct.unpack("<Q", v)[0] for v in pc.lookup(u32(1))) == sent  # the old one is out
    finally:
        second.close()
    netlink.detach_tc_bpf(ia, "egress", prio=3, handle=7, netns=ns)
    assert netlink.tc_bpf_filters(ia, "egress", ns) == []
    netlink.detach_tc_bpf(ia, "egress", prio=3, handle=7, netns=ns)  # absent: no error
    with pytest.raises(ValidationError, match="direction"):
        netlink.attach_tc_bpf(ia, tc.fd, "sideways", netns=ns)
    netlink.remove_clsact(ia, ns)
