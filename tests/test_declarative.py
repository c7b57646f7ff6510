"""The declarative file: parse errors name file, line and field; the live state reads back in
the same shape; the minimal difference is applied, all or nothing."""

from __future__ import annotations

import textwrap

import pytest

from katran import KatranConfig, KatranLb, ModifyAction, Real, VipKey
from katran import declarative as dcl

root = pytest.mark.privileged

BASE = textwrap.dedent("""\
    version: 1
    balancer:
      testing: true
      default_mac: 00:00:de:ad:be:af
      forwarding_cores: []
      max_vips: 8
      max_reals: 16
      lru_size: 1000
      lpm_src_lookup: true
      max_lpm_src_size: 100
    vips:
      - address: 10.100.1.1
        port: 80
        proto: tcp
        flags: [NO_SPORT]
        reals:
          - address: 10.200.1.2
            weight: 2
          - 10.200.1.3
        down_reals: [10.200.1.3]
      - address: fc00::1
        port: 443
        proto: udp
        hash_function: maglev
        reals: [{address: fc00:200::2, weight: 5}]
    real_flags: {10.200.1.2: [LOCAL_REAL]}
    quic_reals: {1234: 10.200.1.2}
    src_routes: {10.9.0.0/16: 10.200.1.3}
    """)


def _error(text: str) -> dcl.ConfigFileError:
    with pytest.raises(dcl.ConfigFileError) as err:
        dcl.loads(text, "lb.yaml")
    return err.value


@pytest.mark.parametrize("edit, line, field, words", [
    (("weight: 2", "weight: -1"), 18, "vips[0].reals[0].weight", "out of range"),
    (("- 10.200.1.3\n", "- 10.200.1.300\n"), 19, "vips[0].reals[1]", "not a valid"),
    (("flags: [NO_SPORT]", "flags: [NO_SUCH]"), 15, "vips[0].flags[0]", "unknown flag"),
    (("down_reals: [10.200.1.3]", "down_reals: [10.200.1.9]"), 20, "vips[0].down_reals[0]", "must be a real"),
    (("lru_size: 1000", "lru_size: 0"), 8, "balancer.lru_size", "out of range"),
    (("lru_size: 1000", "lru_sise: 1000"), 8, "balancer.lru_sise", "unknown key"),
    (("port: 443", "port: 70000"), 22, "vips[1].port", "out of range"),
    (("hash_function: maglev", "hash_function: md5"), 24, "vips[1].hash_function", "maglev or maglev_v2"),
    (("quic_reals: {1234:", "quic_reals: {-5:"), 27, "quic_reals[-5]", "out of range"),
    (("src_routes: {10.9.0.0/16", "src_routes: {10.9.0.1/16"), 28, "src_routes.10.9.0.1/16", "host bits"),
    (("version: 1", "version: 7"), 1, "version", "unsupported"),
])
def test_errors_name_file_line_and_field(edit, line, field, words):
    old, new = edit
    assert old in BASE
    err = _error(BASE.replace(old, new, 1))
    assert (err.source, err.line, err.field) == ("lb.yaml", line, field), str(err)
    assert words in err.reason and str(err).startswith(f"lb.yaml:{line}: {field}=")


def test_yaml_syntax_and_duplicates():
    err = _error("vips:\n  - address: [1\n")
    assert err.line == 3 and err.field == "yaml"
    err = _error(BASE + "vips: []\n")
    assert err.line == 29 and "given twice" in err.reason
    err = _error(BASE.replace("address: fc00::1", "address: 10.100.1.1").replace("port: 443", "port: 80")
                 .replace("proto: udp", "proto: tcp"))
    assert err.field == "vips[1]" and "listed twice" in err.reason


def test_huge_values_are_truncated_in_errors():
    err = _error(BASE.replace("- 10.200.1.3\n", "- " + "x" * 100000 + "\n"))
    assert len(str(err)) < 400


@pytest.fixture
def lb():
    desired = dcl.loads(BASE)
    with KatranLb(desired.katran_config()) as lb:
        yield lb


@root
def test_apply_builds_the_state_and_dump_reads_it_back(lb):
    desired = dcl.loads(BASE)
    p = dcl.apply(lb, desired)
    assert len(p.changes) >= 6 and not p.needs_restart
    v1, v2 = VipKey("10.100.1.1", 80, "tcp"), VipKey("fc00::1", 443, "udp")
    assert set(lb.get_all_vips()) == {v1, v2}
    assert {(str(r.address), r.weight, r.flags) for r in lb.get_reals_for_vip(v1)} == {
        ("10.200.1.2", 2, 2), ("10.200.1.3", 1, 0)}
    assert lb.get_down_reals(v1) == ["10.200.1.3"]
    assert lb.get_vip_flags(v1) == 1
    assert lb.get_hash_function_for_vip(v2).name == "MAGLEV"
    assert lb.get_src_routing_rule() == {"10.9.0.0/16": "10.200.1.3"}
    assert [(str(q.address), q.id) for q in lb.get_quic_reals_mapping()] == [("10.200.1.2", 1234)]
    live = dcl.snapshot(lb)
    text = dcl.dumps(live)
    again = dcl.loads(text)
    assert again.vips == live.vips and again.quic_reals == live.quic_reals
    assert again.src_routes == live.src_routes and again.real_flags == live.real_flags
    # applying the same file again changes nothing
    assert dcl.plan(lb, desired).empty
    assert dcl.plan(lb, again).empty


@root
def test_one_real_changed_is_one_change(lb):
    dcl.apply(lb, dcl.loads(BASE))
    edited = dcl.loads(BASE.replace("weight: 5", "weight: 7"))
    p = dcl.plan(lb, edited)
    assert p.lines() == ["add/reweight reals of [fc00::1]:443/udp: fc00:200::2 w7"]
    dry = dcl.apply(lb, edited, dry_run=True)
    assert dry.lines() == p.lines()
    assert lb.get_reals_for_vip(VipKey("fc00::1", 443, "udp"))[0].weight == 5  # dry run wrote nothing
    dcl.apply(lb, edited)
    assert lb.get_reals_for_vip(VipKey("fc00::1", 443, "udp"))[0].weight == 7
    assert dcl.plan(lb, edited).empty


@root
def test_removals_and_flag_changes(lb):
    dcl.apply(lb, dcl.loads(BASE))
    text = (BASE.replace("flags: [NO_SPORT]", "flags: [DPORT_HASH]")
            .replace("    down_reals: [10.200.1.3]\n", "")
            .replace("      - 10.200.1.3\n", "")
            .replace("src_routes: {10.9.0.0/16: 10.200.1.3}\n", ""))
    text = text[:text.index("  - address: fc00::1")] + text[text.index("real_flags:"):]
    p = dcl.apply(lb, dcl.loads(text))
    assert lb.get_all_vips() == [VipKey("10.100.1.1", 80, "tcp")]
    assert lb.get_vip_flags(VipKey("10.100.1.1", 80, "tcp")) == 8
    assert [str(r.address) for r in lb.get_reals_for_vip(VipKey("10.100.1.1", 80, "tcp"))] == ["10.200.1.2"]
    assert lb.get_src_routing_rule() == {}
    assert any(t.startswith("delete vip [fc00::1]:443/udp") for t in p.lines())
    assert dcl.plan(lb, dcl.loads(text)).empty


@root
def test_failure_halfway_changes_nothing(lb):
    dcl.apply(lb, dcl.loads(BASE))
    before = dcl.dumps(dcl.snapshot(lb))
    # a valid file whose last steps the balancer refuses: hc dsts without healthcheck forwarding
    bad = dcl.loads(BASE.replace("weight: 5", "weight: 9") + "hc_dsts: {1000: 10.200.1.2}\n")
    with pytest.raises(dcl.ApplyError) as err:
        dcl.apply(lb, bad)
    assert "hc dst somark 1000" in str(err.value) and not err.value.undo_errors
    assert dcl.dumps(dcl.snapshot(lb)) == before


@root
def test_needs_restart_is_reported_not_applied(lb):
    p = dcl.plan(lb, dcl.loads(BASE.replace("lru_size: 1000", "lru_size: 2000")))
    assert p.needs_restart == ("balancer.lru_size: running 1000, file 2000",)
    p = dcl.plan(lb, dcl.loads(BASE.replace("de:ad:be:af", "de:ad:be:b0")))
    assert "change mac 00:00:de:ad:be:af -> 00:00:de:ad:be:b0" in p.lines()


@root
def test_flow_cache_is_switched_without_a_restart(lb):
    """balancer.flow_cache is read by the data plane at run time (ctl_array): a changed file
    switches it, no restart; an invalid value is a parse error naming the field."""
    from katran import structs

    def epoch() -> int:
        raw = lb._obj.map("ctl_array").lookup(structs.u32(structs.CTL_FLOW_CACHE_EPOCH))
        value = int.from_bytes(raw[:8], "little")
        return 0 if value & structs.FLOW_CACHE_OFF else value  # 0: the data plane has it off

    dcl.apply(lb, dcl.loads(BASE))
    assert lb.config.flow_cache and epoch() >= 1
    off = BASE.replace("  lru_size: 1000\n", "  lru_size: 1000\n  flow_cache: false\n")
    p = dcl.plan(lb, dcl.loads(off))
    assert p.lines() == ["flow cache off"] and not p.needs_restart
    dcl.apply(lb, dcl.loads(off))
    assert not lb.config.flow_cache and epoch() == 0
    assert dcl.plan(lb, dcl.loads(off)).lines() == []
    dcl.apply(lb, dcl.loads(BASE.replace("  lru_size: 1000\n", "  lru_size: 1000\n  flow_cache: true\n")))
    assert lb.config.flow_cache and epoch() >= 1
    err = _error(BASE.replace("  lru_size: 1000\n", "  lru_size: 1000\n  flow_cache: maybe\n"))
    assert err.field == "balancer.flow_cache" and "true or false" in err.reason


HC = BASE.replace("""    reals: [{address: fc00:200::2, weight: 5}]
""", """    reals: [{address: fc00:200::2, weight: 5, healthcheck: {port: 8443}}]
    healthcheck: {type: https, path: /health, interval: 5}
""") + """healthchecks:
  action: remove
  defaults: {timeout: 0.5, fall: 2}
"""


def test_healthchecks_section():
    d = dcl.loads(HC, "lb.yaml")
    v2 = VipKey("fc00::1", 443, "udp")
    spec = d.healthchecks.checks[v2]
    assert (spec.type, spec.path, spec.interval, spec.timeout, spec.fall) == ("https", "/health", 5.0, 0.5, 2)
    over = d.healthchecks.overrides[(v2, dcl.parse_address("fc00:200::2"))]
    assert (over.type, over.port, over.fall) == ("https", 8443, 2)
    assert d.healthchecks.action == "remove" and list(d.healthchecks.checks) == [v2]
    again = dcl.loads(dcl.dumps(d))
    assert again.healthchecks == d.healthchecks
    err = _error(HC.replace("interval: 5}", "interval: -5}"))
    assert (err.line, err.field) == (26, "vips[1].healthcheck.interval")
    err = _error(HC.replace("action: remove", "action: explode"))
    assert err.field == "healthchecks.action" and "drain, remove" in err.reason
    err = _error(HC.replace("path: /health", "pth: /health"))
    assert err.field == "vips[1].healthcheck.pth" and "unknown key" in err.reason
