"""The C <-> Python contract (katran/contract.py) against every object's BTF.

Walks the BTF of each compiled object and compares it with the tables: every map
(type, key and value type and size, inner map), every struct (size, member offsets
and sizes), every knob (size, default), every C enum (names and values: counters,
VIP/real flags, slots), then the loaders' loud failures and the Python names
(VipFlag, RealFlag, Katran's counter names) bound to the C enums.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
from pathlib import Path

import attrs
import pytest

from katran import contract, structs
from katran.contract import ContractError, MapType
from katran.errors import KatranError
from katran.models import RealFlag, VipFlag

REPO = Path(__file__).resolve().parents[1]
OBJECTS = list(contract.OBJECTS.values())


def _ids(c):
    return c.name


@pytest.fixture(scope="module", params=OBJECTS, ids=_ids)
def obj(request):
    from katran.adapter.btf import BtfFile

    c = request.param
    assert c.path.is_file(), f"{c.path} not built (python -m katran.build)"
    with BtfFile(c.path) as btf:
        yield c, btf


def _items(kind):
    return [(c, name) for c in OBJECTS for name in getattr(c, kind)]


def _item_id(item):
    return f"{item[0].name}.{item[1]}"


# --- everything, per object ------------------------------------------------------------
def test_every_object_matches_its_contract_strictly(obj):
    c, btf = obj
    problems, maps, knobs = contract.check_btf(c, btf, strict=True)
    assert problems == []
    assert maps == list(c.maps) and knobs == list(c.knobs)
    assert c.check().strict  # the loaders' entry point agrees


def test_object_has_no_map_or_knob_outside_its_contract(obj):
    c, btf = obj
    assert set(btf.map_defs()) == set(c.maps)
    assert set(btf.datasec_vars(".rodata")) == set(c.knobs)


def test_programs_exist(obj):
    from katran.adapter import bpf

    c, _btf = obj
    spec = bpf.ObjectSpec.open(c.path)
    try:
        assert set(c.programs) == set(spec.program_names)
    finally:
        spec.close()


# --- maps --------------------------------------------------------------------------------
@pytest.mark.parametrize("item", _items("maps"), ids=_item_id)
def test_map_type_key_value(item):
    """Independent of check_btf: libbpf's view of the opened object (what gets created)."""
    from katran.adapter import bpf
    from katran.adapter.libbpf import lib

    c, name = item
    m = c.maps[name]
    spec = bpf.ObjectSpec.open(c.path)
    try:
        raw = spec._map(name)
        got = (int(lib.bpf_map__type(raw)), int(lib.bpf_map__key_size(raw)), int(lib.bpf_map__value_size(raw)))
        inner = lib.bpf_map__inner_map(raw)
        got_inner = None
        if m.inner is not None:
            assert inner != bpf.ffi.NULL, f"{name}: no inner map"
            got_inner = (int(lib.bpf_map__type(inner)), int(lib.bpf_map__key_size(inner)),
                         int(lib.bpf_map__value_size(inner)))
    finally:
        spec.close()
    assert got == (int(m.type), m.key_size, m.value_size), name
    if m.inner is not None:
        assert got_inner == (int(m.inner.type), m.inner.key_size, m.inner.value_size)


@pytest.mark.parametrize("item", _items("maps"), ids=_item_id)
def test_map_key_value_struct_names(item):
    from katran.adapter.btf import BtfFile

    c, name = item
    m = c.maps[name]
    with BtfFile(c.path) as btf:
        d = btf.map_defs()[name]
    for what, want in (("key", m.key), ("value", m.value)):
        if isinstance(want, contract.Struct) and not (what == "value" and m.inner is not None):
            assert d[what][0] == want.name, f"{name} {what}"
    if m.inner is not None:
        for what, want in (("key", m.inner.key), ("value", m.inner.value)):
            assert d["inner"][what][1] == want.size


def test_every_map_is_documented():
    for c in OBJECTS:
        for m in c.maps.values():
            assert m.doc, f"{c.name}.{m.name} has no doc"


def test_every_c_map_has_a_comment():
    """A comment right above every map definition of the BPF headers."""
    seen = 0
    for header in sorted((REPO / "katran" / "bpf").rglob("*.h")) + sorted((REPO / "katran" / "bpf").glob("*.c")):
        lines = header.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"\} (\w+) SEC\(\"\.maps\"\);", line)
            if not m:
                continue
            start = max(j for j in range(i) if lines[j].startswith("struct {"))
            assert lines[start - 1].rstrip().endswith("*/"), f"{header.name}: map {m[1]} has no comment"
            seen += 1
    assert seen == sum(len(c.maps) for c in OBJECTS)


# --- structs -----------------------------------------------------------------------------
@pytest.mark.parametrize("item", _items("structs"), ids=_item_id)
def test_struct_layout(item):
    from katran.adapter.btf import BtfFile

    c, name = item
    s = c.structs[name]
    with BtfFile(c.path) as btf:
        size, members = btf.struct_layout(name)
    assert size == s.size == s._struct.size
    assert members == s.c_layout()


@pytest.mark.parametrize("item", _items("structs"), ids=_item_id)
def test_struct_pack_roundtrip(item):
    c, name = item
    s = c.structs[name]
    values = []
    for i, f in enumerate(s.fields):
        if f.ctype.code.endswith("s"):
            values.append(bytes((i + 1 + j) % 256 for j in range(f.ctype.size)))
        else:
            values.append((0x0102030405060708 + i) & ((1 << (8 * f.ctype.size)) - 1))
    raw = s.pack(*values)
    assert len(raw) == s.size
    assert s.unpack(raw) == tuple(values)
    # each field sits at its contract offset, network order where the C type is __be*
    for f, v in zip(s.fields, values):
        off = s.offsets[f.name]
        chunk = raw[off:off + f.ctype.size]
        if isinstance(v, bytes):
            assert chunk == v
        else:
            assert chunk == v.to_bytes(f.ctype.size, "big" if f.ctype.big_endian else "little")
    # padding is zero (keys are hashed with it)
    used = set()
    for f in s.fields:
        used.update(range(s.offsets[f.name], s.offsets[f.name] + f.ctype.size))
    assert all(raw[i] == 0 for i in range(s.size) if i not in used)


# --- knobs -------------------------------------------------------------------------------
@pytest.mark.parametrize("item", _items("knobs"), ids=_item_id)
def test_knob_size_and_default(item):
    from katran.adapter import bpf

    c, name = item
    k = c.knobs[name]
    spec = bpf.ObjectSpec.open(c.path)
    try:
        assert spec.rodata_vars()[name][1] == k.ctype.size
        assert spec.rodata(name) == c.knob_bytes(name, k.default)
    finally:
        spec.close()


# --- enums -------------------------------------------------------------------------------
@pytest.mark.parametrize("item", _items("enums"), ids=_item_id)
def test_enum_names_and_values(item):
    from katran.adapter.btf import BtfFile

    c, name = item
    with BtfFile(c.path) as btf:
        assert btf.enum_values(name) == dict(c.enums[name].members)


def test_enums_are_exported_without_a_map():
    """The BTF anchors of lib/abi.h create no map and no program."""
    from katran.adapter import bpf

    spec = bpf.ObjectSpec.open(contract.BALANCER.path)
    try:
        assert not any("katran_abi" in n for n in spec.map_names + spec.program_names)
    finally:
        spec.close()


def test_vip_flags_are_the_c_enum():
    e = contract.VIP_FLAGS
    assert set(e.python) == {f.name for f in VipFlag}
    assert set(e.python.values()) == set(e.members)
    for f in VipFlag:
        assert e.members[e.python[f.name]] == int(f), f.name


def test_real_flags_are_the_c_enum():
    e = contract.REAL_FLAGS
    assert set(e.python) == {f.name for f in RealFlag}
    assert {RealFlag[n].value: e.members[cn] for n, cn in e.python.items()} == {1: 1, 2: 2}
    assert structs.REAL_F_IPV6 == RealFlag.IPV6 and structs.REAL_F_LOCAL == RealFlag.LOCAL_REAL


def test_global_counters_one_vocabulary():
    e = contract.GLOBAL_COUNTERS
    assert set(e.python.values()) == set(e.members), "every CNT_* has Katran's name"
    for py, c_name in e.python.items():
        assert getattr(structs, py) == e.members[c_name], py
    assert structs.GLOBAL_COUNTERS == e.py_values()
    assert sorted(e.members.values()) == list(range(len(e.members)))  # dense: stats[max_vips + N]


def test_python_slot_constants_follow_the_enums():
    from katran import decap, healthcheck

    assert healthcheck.ENCAP_MODES == {"direct": 0, "tunnel": 1}
    assert (healthcheck.CTRL_V4_TUN, healthcheck.CTRL_V6_TUN, healthcheck.CTRL_MAIN_INTF) == (1, 2, 3)
    assert (structs.PCKT_SRC_V4, structs.PCKT_SRC_V6, structs.CTL_MAC_POS) == (0, 1, 0)
    assert decap.PINNED_MAPS == tuple(contract.DECAP.maps)
    from katran import shared

    assert shared.MAX_SLOTS == contract.ROOT.enums["root_limit"].value("ROOT_MAX_SLOTS")
    assert shared.ROOT_MAP_NAME in contract.ROOT.maps


# --- loud failures -----------------------------------------------------------------------
def _variant(c, **changes):
    return attrs.evolve(c, **changes)


def test_missing_map_is_loud_for_our_objects():
    maps = dict(contract.BALANCER.maps)
    maps["vip_mapp"] = attrs.evolve(maps.pop("vip_map"), name="vip_mapp")  # renamed in "C"
    c = _variant(contract.BALANCER, maps=maps)
    with pytest.raises(ContractError, match=r"missing map 'vip_mapp'.*map 'vip_map' not in the contract"):
        c.check(contract.BALANCER.path)


def test_wrong_key_value_type_and_size_are_loud():
    maps = dict(contract.BALANCER.maps)
    maps["reals"] = attrs.evolve(maps["reals"], value=contract.LB_STATS)
    maps["stats"] = attrs.evolve(maps["stats"], type=MapType.ARRAY)
    c = _variant(contract.BALANCER, maps=maps)
    with pytest.raises(ContractError) as e:
        c.check(contract.BALANCER.path)
    assert "map 'reals': value size 20, contract 16" in str(e.value)
    assert "map 'stats': type 6, contract ARRAY" in str(e.value)


def test_struct_drift_is_loud():
    drifted = contract.Struct("vip_meta", [contract.Field("vip_num", contract.U32),
                                           contract.Field("flags", contract.U32)])
    c = _variant(contract.BALANCER, structs={**contract.BALANCER.structs, "vip_meta": drifted})
    with pytest.raises(ContractError, match="struct vip_meta: members differ"):
        c.check(contract.BALANCER.path)


def test_an_older_layout_of_ours_is_accepted_only_from_a_user_object():
    """A struct that changed within the same size (flow_cache_entry gained `fast`) lists the
    older layout: an older build given as balancer_prog_path passes, our own object must
    have the current one, and any other layout is loud in both modes."""
    ours = contract.BALANCER.structs["vip_meta"]
    other = [contract.Field("vip_num", contract.U32), contract.Field("flags", contract.U32)]
    newer = contract.Struct("vip_meta", other, older=[ours.fields])
    c = _variant(contract.BALANCER, structs={**contract.BALANCER.structs, "vip_meta": newer})
    assert not c.check(contract.BALANCER.path, strict=False).strict
    with pytest.raises(ContractError, match="struct vip_meta: members differ"):
        c.check(contract.BALANCER.path)
    unrelated = contract.Struct("vip_meta", other, older=[other])
    c = _variant(contract.BALANCER, structs={**contract.BALANCER.structs, "vip_meta": unrelated})
    for strict in (True, False):
        with pytest.raises(ContractError, match="struct vip_meta: members differ"):
            c.check(contract.BALANCER.path, strict=strict)


def test_knob_and_enum_drift_are_loud():
    knobs = dict(contract.BALANCER.knobs)
    knobs["gue_dport"] = attrs.evolve(knobs["gue_dport"], ctype=contract.U32)
    enums = dict(contract.BALANCER.enums)
    enums["vip_flag"] = attrs.evolve(enums["vip_flag"], members={**enums["vip_flag"].members, "VIP_F_NEW": 1 << 10})
    c = _variant(contract.BALANCER, knobs=knobs, enums=enums)
    with pytest.raises(ContractError) as e:
        c.check(contract.BALANCER.path)
    assert "knob 'gue_dport': size 2, contract 4" in str(e.value)
    assert "enum vip_flag: members differ" in str(e.value) and "VIP_F_NEW" in str(e.value)


def test_older_user_object_may_lack_enum_members_but_not_contradict_them():
    """An older build given as balancer_prog_path lacks members a newer contract names (features
    it does not have): tolerated. A member with another value is loud in both modes."""
    enums = dict(contract.BALANCER.enums)
    newer = attrs.evolve(enums["ctl_slot"], members={**enums["ctl_slot"].members, "CTL_LATER": 9})
    c = _variant(contract.BALANCER, enums={**enums, "ctl_slot": newer})
    with pytest.raises(ContractError, match="enum ctl_slot: members differ"):
        c.check(contract.BALANCER.path)
    assert not c.check(contract.BALANCER.path, strict=False).strict
    moved = attrs.evolve(enums["ctl_slot"], members={**enums["ctl_slot"].members, "CTL_DEFAULT_MAC": 3})
    c = _variant(contract.BALANCER, enums={**enums, "ctl_slot": moved})
    for strict in (True, False):
        with pytest.raises(ContractError, match="enum ctl_slot: members differ"):
            c.check(contract.BALANCER.path, strict=strict)


def test_wrong_object_is_loud_unless_user_supplied():
    xdp_pass = contract.OBJ_DIR / "xdp_pass.bpf.o"
    with pytest.raises(ContractError, match="missing map 'vip_map'"):
        contract.BALANCER.check(xdp_pass)
    binding = contract.BALANCER.check(xdp_pass, strict=False)  # a user-supplied object: tolerated
    assert not binding.has_map("vip_map") and not binding.has_knob("ring_size")
    with pytest.raises(ContractError, match="missing map 'vip_map'"):
        binding.require_map("vip_map")


def test_user_object_must_still_match_what_it_has():
    """Tolerance covers absence only: the healthcheck object's hc_stats_map is not the balancer's."""
    maps = {"hc_stats_map": attrs.evolve(contract.HEALTHCHECK.maps["hc_stats_map"], value=contract.LB_STATS)}
    c = _variant(contract.HEALTHCHECK, maps=maps)
    with pytest.raises(ContractError, match="hc_stats_map"):
        c.check(contract.HEALTHCHECK.path, strict=False)


def test_unknown_names_are_loud():
    binding = contract.BALANCER.check()
    with pytest.raises(ContractError, match="unknown map 'vip_mpa'"):
        binding.has_map("vip_mpa")
    with pytest.raises(ContractError, match="unknown knob 'ring_sz'"):
        binding.has_knob("ring_sz")
    with pytest.raises(ContractError, match="unknown knob 'x'"):
        contract.DECAP.knob_bytes("x", 1)


def test_loaders_check_their_objects(tmp_path):
    """HcManager and load_decap refuse an object that is not theirs, naming the map."""
    from katran import decap
    from katran.healthcheck import HcManager

    with pytest.raises(ContractError, match="missing map 'hc_ctrl_map'"):
        HcManager(testing=True, prog_path=contract.DECAP.path, src_v4="10.0.0.1",
                  gateway_mac="00:00:de:ad:be:af").load()
    with pytest.raises(ContractError, match="missing map 'decap_counters'"):
        decap.load_decap(contract.HEALTHCHECK.path)


@pytest.mark.privileged
def test_balancer_loader_tolerates_only_user_objects(tmp_path):
    """KatranLb: our packaged object strictly; balancer_prog_path tolerantly (absent knobs skipped)."""
    from katran import KatranConfig, KatranLb

    src = contract.BALANCER.path
    user = tmp_path / "user_balancer.bpf.o"
    shutil.copy(src, user)
    lb = KatranLb(KatranConfig(main_interface="lo", default_mac="00:00:de:ad:be:af", testing=True,
                               balancer_prog_path=str(user), max_vips=8, max_reals=16, ch_ring_size=13,
                               lru_size=64))
    lb.start()
    try:
        assert not lb._abi.strict and lb._abi.has_map("vip_map")
    finally:
        lb.close()
    lb = KatranLb(KatranConfig(main_interface="lo", default_mac="00:00:de:ad:be:af", testing=True,
                               balancer_prog_path=str(contract.OBJ_DIR / "xdp_pass.bpf.o")))
    with pytest.raises(KatranError, match="lru_mapping|missing map"):  # tolerated at check, not at provision
        lb.start()
    assert not lb.started


def test_balancer_loader_is_strict_for_our_object(monkeypatch):
    """The packaged balancer is checked strictly: a map the contract names and the object lacks stops start()."""
    from katran import KatranConfig, KatranLb

    maps = dict(contract.BALANCER.maps)
    maps["vip_map_v2"] = attrs.evolve(maps["vip_map"], name="vip_map_v2")
    monkeypatch.setattr(contract, "BALANCER", _variant(contract.BALANCER, maps=maps))
    lb = KatranLb(KatranConfig(main_interface="lo", default_mac="00:00:de:ad:be:af", testing=True))
    with pytest.raises(ContractError, match="missing map 'vip_map_v2'"):
        lb.start()
    assert not lb.started


# --- map names in the control plane -----------------------------------------------------------
def test_every_map_name_in_the_control_plane_is_in_a_contract():
    known = {n for c in OBJECTS for n in c.maps}
    pattern = re.compile(r"""(?:\bmap|_map|_counters|_stats|map_name|maps\.get)\(\s*["'](\w+)["']""")
    seen = set()
    for py in sorted((REPO / "katran").rglob("*.py")):
        if "examples" in py.parts:  # user programs with objects of their own
            continue
        for name in pattern.findall(py.read_text()):
            seen.add(name)
            assert name in known, f"{py.relative_to(REPO)}: map {name!r} is in no contract"
    assert {"vip_map", "hc_reals_map", "decap_counters"} <= seen


def test_structs_keep_the_packing_of_katran():
    """A few bytes written out by hand, as in Katran's control plane."""
    raw = structs.flow_key("192.168.1.1", "10.200.1.1", 31337, 80, 6)
    assert raw == bytes([192, 168, 1, 1]) + bytes(12) + bytes([10, 200, 1, 1]) + bytes(12) + \
        bytes([0x7A, 0x69, 0, 80, 6, 0, 0, 0])
    assert structs.vip_meta(3, 7) == bytes([3, 0, 0, 0, 7, 0, 0, 0])
    assert structs.real_pos_lru(5, 1) == bytes([5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    assert structs.ctl_value_u64(0x0102) == bytes([2, 1, 0, 0, 0, 0, 0, 0])
    from katran.healthcheck import pack_real, unpack_real

    v6 = ipaddress.ip_address("fc00::1")
    assert pack_real(v6) == v6.packed + bytes([1, 0, 0, 0])
    assert unpack_real(pack_real(ipaddress.ip_address("10.0.0.2"))) == ipaddress.ip_address("10.0.0.2")


# --- the BPF helper library ---------------------------------------------------------------
BPF_DIR = REPO / "katran" / "bpf"
_FUNC_DEF = re.compile(r"^(?:static __always_inline|LB_OUT_OF_LINE|static)\b[^;{]*?\b(\w+)\(", re.M)


def test_lib_has_no_maps_no_knobs_and_includes_only_lib():
    for h in sorted((BPF_DIR / "lib").glob("*.h")):
        text = h.read_text()
        code = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        assert 'SEC(".maps")' not in code and "const volatile" not in code, h.name
        for inc in re.findall(r'#include "([^"]+)"', code):
            assert (BPF_DIR / "lib" / inc).is_file(), f"lib/{h.name} includes {inc} (outside lib/)"


def test_no_helper_is_defined_twice():
    """One checksum, one header writer, one strip, one option scan: every function name once."""
    where: dict[str, str] = {}
    for f in sorted(BPF_DIR.rglob("*.h")) + sorted(BPF_DIR.glob("*.bpf.c")):
        for name in _FUNC_DEF.findall(f.read_text()):
            assert name not in where, f"{name} defined in {where[name]} and {f.relative_to(BPF_DIR)}"
            where[name] = str(f.relative_to(BPF_DIR))
    for shared in ("pkt_ptr", "cursor_pull", "iph_csum", "put_ipv4_hdr", "put_ipv6_hdr", "put_udp_hdr",
                   "xdp_decap_strip", "ip_ttl_decrement", "tcp_opt_server_id", "addr6_eq", "jhash_two_words"):
        assert where[shared].startswith("lib/"), shared


def _includes(src: Path, seen=None) -> set:
    """Local headers a source reaches (transitively)."""
    seen = set() if seen is None else seen
    for inc in re.findall(r'#include "([^"]+)"', src.read_text()):
        path = (src.parent / inc) if (src.parent / inc).is_file() else BPF_DIR / inc
        rel = str(path.resolve().relative_to(BPF_DIR.resolve()))
        if rel not in seen:
            seen.add(rel)
            _includes(path, seen)
    return seen


@pytest.mark.parametrize("src,shared", [
    ("balancer.bpf.c", {"lib/cursor.h", "lib/csum.h", "lib/hdr.h", "lib/tcp_opt.h", "lib/xdp_decap.h",
                        "lib/jhash.h", "lib/addr.h", "lib/abi.h"}),
    ("healthchecking.bpf.c", {"lib/cursor.h", "lib/csum.h", "lib/hdr.h", "lib/addr.h", "lib/abi.h"}),
    ("decap.bpf.c", {"lib/cursor.h", "lib/tcp_opt.h", "lib/xdp_decap.h", "lib/addr.h", "lib/abi.h"}),
    ("xdp_root.bpf.c", {"lib/abi.h"}),
])
def test_programs_share_the_library(src, shared):
    assert shared <= _includes(BPF_DIR / src)


def test_every_balancer_knob_is_set_by_the_loader():
    """The data plane writes every knob of the contract (KatranConfig field or ring_size/max_vips), no other."""
    from katran import dataplane

    assert set(dataplane.KNOBS) | {"ring_size", "max_vips"} == set(contract.BALANCER.knobs)
