"""Shared mode, decap and the healthcheck manager on the fake kernel (no privileges)."""

from __future__ import annotations

import errno
import struct

import pytest

from conftest import lb_config
from katran import KatranConfig, KatranLb, KernelError, NotFoundError, ValidationError
from katran import decap, shared
from katran.errors import NotStartedError
from katran.healthcheck import HcManager, pack_real
from katran.testing import FakeKernel

MAP = "/sys/fs/bpf/jmp_eth0"
_U32 = struct.Struct("=I")


@pytest.fixture
def k():
    return FakeKernel()


# ---------------------------------------------------------------- shared mode
def test_install_pins_attaches_and_is_idempotent(k):
    st = shared.install("eth0", slots=4, kernel=k)
    assert st.newly_installed and st.slots == 4 and st.map_path == MAP
    assert k.is_pinned(MAP) and k.is_pinned(MAP + "_prog")
    assert k.xdp_attached_prog_id(2, "native") == st.prog_id
    again = shared.install("eth0", kernel=k)
    assert not again.newly_installed and again.prog_id == st.prog_id and again.slots == 4
    assert k.lock_log == ["/sys/fs/bpf", "/sys/fs/bpf"]


def test_install_refuses_a_foreign_program(k):
    obj = k.open_object(shared.DEFAULT_OBJECT.parent / "xdp_pass.bpf.o").load()
    obj.program("xdp_pass").attach_xdp(2, "native")
    with pytest.raises(KernelError, match="EBUSY"):
        shared.install("eth0", kernel=k)
    assert not k.is_pinned(MAP)


def test_install_reattaches_its_pinned_program(k):
    st = shared.install("eth0", kernel=k)
    k.detach_xdp(2, "native")
    again = shared.install("eth0", kernel=k)
    assert again.newly_installed and again.prog_id == st.prog_id


def test_register_unregister_and_slots(k):
    shared.install("eth0", slots=3, kernel=k)
    lb = KatranLb(lb_config(testing=False, main_interface="eth0", root_map_path=MAP, root_map_pos=2), kernel=k)
    lb.start()
    prog_id = lb._obj.program("balancer_ingress").id
    assert shared.slots(MAP, kernel=k) == {2: prog_id}
    assert k.xdp_attached_prog_id(2, "native") != prog_id  # the root stays attached
    lb.close()
    assert shared.slots(MAP, kernel=k) == {}
    assert not shared.unregister(MAP, 2, kernel=k)
    assert k.lock_log == ["/sys/fs/bpf"] * 4  # install, register, unregister twice


def test_register_validates(k):
    shared.install("eth0", slots=3, kernel=k)
    obj = k.open_object(shared.DEFAULT_OBJECT.parent / "xdp_pass.bpf.o").load()
    with pytest.raises(ValidationError, match="root_map_pos"):
        shared.register(obj.program("xdp_pass"), MAP, 3, kernel=k)
    with pytest.raises(ValidationError, match="prog_fd"):
        shared.register(-1, MAP, 0, kernel=k)
    with pytest.raises(NotFoundError, match="root map"):
        shared.register(obj.program("xdp_pass"), "/sys/fs/bpf/nope", 0, kernel=k)
    assert shared.slots(MAP, kernel=k) == {}


def _set_marker(k, version: int, magic: int = shared.ROOT_MAGIC) -> None:
    with k.program_by_pin(MAP + "_prog") as prog:
        for map_id in prog.map_ids():
            with k.map_by_id(map_id) as m:
                if m.name.endswith(".rodata"):
                    image = bytearray(m.lookup(_U32.pack(0)))
                    spec = k.open_object(shared.DEFAULT_OBJECT)
                    offs = spec.rodata_vars()
                    _U32.pack_into(image, offs["root_magic"][0], magic)
                    _U32.pack_into(image, offs["root_version"][0], version)
                    m._store.data[_U32.pack(0)] = bytes(image)  # .rodata is frozen: only a test can do this


def test_the_root_carries_a_version_marker(k):
    shared.install("eth0", kernel=k)
    with k.program_by_pin(MAP + "_prog") as prog:
        assert shared.root_version(prog, k) == (shared.ROOT_MAGIC, shared.ROOT_VERSION)


@pytest.mark.parametrize("magic, version, needle", [(shared.ROOT_MAGIC, 2, "version 2"),
                                                    (0, 0, "no katran version marker")])
def test_an_incompatible_root_is_refused(k, magic, version, needle):
    shared.install("eth0", kernel=k)
    _set_marker(k, version, magic)
    obj = k.open_object(shared.DEFAULT_OBJECT.parent / "xdp_pass.bpf.o").load()
    with pytest.raises(KernelError, match=needle) as e:
        shared.register(obj.program("xdp_pass"), MAP, 0, kernel=k)
    assert e.value.errno == errno.EPROTO
    assert shared.slots(MAP, kernel=k) == {}
    with pytest.raises(KernelError, match=needle):
        shared.install("eth0", kernel=k)


def test_uninstall(k):
    shared.install("eth0", kernel=k)
    assert shared.uninstall("eth0", kernel=k)
    assert not k.is_pinned(MAP) and k.xdp_attached_prog_id(2, "native") == 0
    assert not shared.uninstall("eth0", kernel=k)
    assert k.live_maps() == []


def test_changes_are_serialised_by_the_lock(k):
    shared.install("eth0", kernel=k)
    obj = k.open_object(shared.DEFAULT_OBJECT.parent / "xdp_pass.bpf.o").load()
    with k.lock("/sys/fs/bpf"):  # another holder: the fake refuses instead of waiting
        with pytest.raises(KernelError, match="deadlock"):
            shared.register(obj.program("xdp_pass"), MAP, 0, kernel=k)


# ---------------------------------------------------------------- decap
def test_decap_install_pins_and_is_idempotent(k):
    st = decap.install("eth0", ["10.1.1.1", "fc00::1"], kernel=k, gue_dport=6080, server_id=7)
    assert st.newly_attached and st.vips_added == ("10.1.1.1", "fc00::1")
    pins = decap.pin_dir("eth0")
    assert k.is_pinned(pins / "prog") and all(k.is_pinned(pins / n) for n in decap.PINNED_MAPS)
    assert k.host_addresses["lo"] == {"10.1.1.1", "fc00::1"}
    with k.map_by_pin(pins / "tpr_server_id") as m:
        assert m.lookup(_U32.pack(0)) == _U32.pack(7)
    again = decap.install("eth0", ["10.1.1.1"], kernel=k)
    assert not again.newly_attached and again.prog_id == st.prog_id and again.vips_added == ()
    assert decap.stats("eth0", kernel=k) == decap.DecapStats()
    assert decap.uninstall("eth0", ["10.1.1.1", "fc00::1"], kernel=k)
    assert not decap.uninstall("eth0", kernel=k)
    assert k.live_maps() == [] and k.host_addresses["lo"] == set()
    with pytest.raises(NotFoundError, match="eth0"):
        decap.stats("eth0", kernel=k)


def test_decap_rp_filter_warning_and_fix(k):
    k.rp_filters["all"] = 1
    st = decap.install("eth0", kernel=k)
    assert st.warnings and "strict" in st.warnings[0]
    decap.uninstall("eth0", kernel=k)
    st = decap.install("eth0", kernel=k, fix_rp_filter=2)
    assert st.warnings == () and k.rp_filters["eth0"] == 2 and k.rp_filters["all"] == 2


def test_decap_refuses_a_foreign_program(k):
    obj = k.open_object(decap.DEFAULT_OBJECT.parent / "xdp_pass.bpf.o").load()
    obj.program("xdp_pass").attach_xdp(2, "native")
    with pytest.raises(KernelError, match="EBUSY"):
        decap.install("eth0", kernel=k)


def test_decap_pin_failure_detaches(k):
    k.fail("pin", nth=2)
    with pytest.raises(KernelError, match="injected"):
        decap.install("eth0", kernel=k)
    assert k.xdp_attached_prog_id(2, "native") == 0 and k.pins == {}


@pytest.mark.parametrize("kw, field", [(dict(host_v4="fc00::1"), "host_v4"), (dict(host_v6="10.0.0.1"), "host_v6"),
                                       (dict(strict_dst=True), "strict_dst"), (dict(gue_dport=70000), "gue_dport")])
def test_decap_knob_validation(k, kw, field):
    with pytest.raises(ValidationError, match=field):
        decap.load_decap(kernel=k, **kw)


# ---------------------------------------------------------------- healthcheck manager
def test_hc_direct_mode_provisions_sources_and_macs(k):
    hc = HcManager(interface="eth0", src_v4="10.0.13.37", gateway_mac="02:00:00:00:00:09", kernel=k,
                   testing=True, max_reals=8)
    hc.load()
    assert hc._obj.map("hc_reals_map").max_entries == 8
    srcs = k.map_contents(hc._obj.map("hc_pckt_srcs_map"))
    assert srcs[_U32.pack(0)] == pack_real(hc.src_v4)
    ctrl = k.map_contents(hc._obj.map("hc_ctrl_map"))
    assert ctrl[_U32.pack(3)] == _U32.pack(2)  # main interface ifindex
    hc.close()
    assert k.live_maps() == []


def test_hc_discovers_addresses_and_mac_when_attached(k):
    hc = HcManager(interface="eth0", gateway_mac="02:00:00:00:00:09", kernel=k)
    hc.start()
    assert str(hc.src_v4) == "10.0.0.2" and str(hc.src_v6) == "fc00::2"  # not the link-local one
    assert hc.local_mac == bytes.fromhex("020000000002")
    assert k.tc_filters(2, "egress") == [{"name": "katran-healthchecker", "prio": hc.priority, "handle": 1}]
    hc.close()
    assert k.tc == {} and k.live_maps() == []


def test_hc_tunnel_mode_needs_the_tunnel_devices(k):
    hc = HcManager(interface="eth0", encap="tunnel", kernel=k)
    with pytest.raises(NotFoundError, match="ipip0"):
        hc.load()


def test_hc_dsts_and_capacity(k):
    hc = HcManager(interface="eth0", src_v4="10.0.13.37", gateway_mac="02:00:00:00:00:09", kernel=k,
                   testing=True, max_reals=2)
    hc.add_dst(1, "10.0.0.1")  # before load: kept and written at load
    hc.load()
    assert hc.kernel_dsts() == {1: "10.0.0.1"}
    with pytest.raises(ValidationError, match="no IPv6 source"):
        hc.add_dst(2, "fc00::1")
    hc.add_dst(2, "10.0.0.2")
    with pytest.raises(Exception, match="exhausted"):
        hc.add_dst(3, "10.0.0.3")
    hc.add_dst(2, "10.0.0.4")  # replacing is fine when full
    assert hc.get_dsts() == {1: "10.0.0.1", 2: "10.0.0.4"}
    hc.close()


def test_hc_before_load_is_not_started(k):
    hc = HcManager(interface="eth0", kernel=k, testing=True)
    with pytest.raises(NotStartedError, match="load"):
        hc.stats()


def test_hc_from_config_keeps_gue_and_max_packet_size():
    cfg = KatranConfig(testing=True, enable_hc=True, katran_src_v4="10.0.13.37", gue_encap=True, gue_dport=7000,
                       hc_max_pckt_size=1300, default_mac="02:00:00:00:00:01")
    hc = HcManager.from_config(cfg, kernel=FakeKernel())
    assert (hc.gue_dport, hc.max_pckt_size) == (7000, 1300)
    plain = HcManager.from_config(KatranConfig(testing=True, gue_dport=7000), kernel=FakeKernel())
    assert (plain.gue_dport, plain.max_pckt_size) == (0, 0)
    with pytest.raises(ValidationError, match="hc_max_pckt_size"):
        KatranConfig(testing=True, hc_max_pckt_size=70000)


# ---------------------------------------------------------------- failures halfway leave nothing behind
@pytest.mark.parametrize("nth", range(1, 40))
def test_shared_install_failing_at_any_call_leaves_nothing(nth):
    k = FakeKernel()
    k.fail("*", nth=nth)
    try:
        shared.install("eth0", kernel=k)
    except KernelError as e:
        assert "injected" in str(e)
        assert k.pins == {} and k.xdp == {} and k.live_maps() == [] and k.locked == set()
        shared.install("eth0", kernel=k)  # a retry works
    else:
        assert k.pending_faults == 1  # installed with fewer than nth calls
    assert k.is_pinned(MAP)


@pytest.mark.parametrize("nth", range(1, 40))
def test_decap_install_failing_at_any_call_leaves_nothing(nth):
    k = FakeKernel()
    k.fail("*", nth=nth)
    try:
        decap.install("eth0", kernel=k, server_id=3, host_v4="10.0.0.2")
    except KernelError as e:
        assert "injected" in str(e)
        assert k.pins == {} and k.xdp == {} and k.live_maps() == []
    else:
        assert k.pending_faults == 1
