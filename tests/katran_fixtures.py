"""Katran's packet fixtures (../shared/katran-fixtures) as pytest material.

Loads a fixture set, provisions a KatranLb exactly as the fixtures' README
describes, runs the cases in order through BPF_PROG_TEST_RUN and explains a
mismatch with a readable scapy diff.
"""

from __future__ import annotations

import base64
import difflib
import json
from pathlib import Path
from typing import Callable, Optional

import attrs

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = REPO_ROOT.parent / "shared" / "katran-fixtures"


@attrs.frozen
class Case:
    set_name: str
    n: int
    description: str
    input: bytes
    expected: bytes
    expected_action: str
    phase: int = 1  # udp_flow_migration: 1 or 2 (README 7.8)

    @property
    def id(self) -> str:
        return f"{self.set_name}-{self.n}"


def load_set(name: str, derived: bool = False) -> list[Case]:
    """The cases of ``name``.json; ``derived``: use the PacketBuilder-derived bytes where the
    README records them (tpr/tpr_gue cases 4 and 17, README section 8.2)."""
    data = json.loads((FIXTURES_DIR / f"{name}.json").read_text())
    out = []
    for c in data["cases"]:
        pb = c.get("packetbuilder_at_katran_commit") or {}
        inp = pb.get("input_b64_derived") if derived else None
        exp = pb.get("expected_b64_derived") if derived else None
        out.append(
            Case(
                name,
                c["n"],
                c["description"],
                base64.b64decode(inp or c["input_b64"]),
                base64.b64decode(exp or c["expected_b64"]),
                c["expected_action"],
                c.get("phase", 1),
            )
        )
    return out


def _dump(frame: bytes) -> list[str]:
    from scapy.layers.l2 import Ether

    return Ether(frame).show(dump=True).splitlines()


def explain_mismatch(case: Case, verdict: str, output: bytes) -> str:
    """A readable report: verdicts, a scapy field diff and the first differing byte."""
    lines = [f"{case.id}: {case.description}"]
    if verdict != case.expected_action:
        lines.append(f"verdict: expected {case.expected_action}, got {verdict}")
    if output != case.expected:
        first = next(
            (i for i, (a, b) in enumerate(zip(output, case.expected)) if a != b),
            min(len(output), len(case.expected)),
        )
        lines.append(
            f"bytes: expected {len(case.expected)} B, got {len(output)} B; first difference at offset {first}"
        )
        lines.extend(
            difflib.unified_diff(_dump(case.expected), _dump(output), "expected", "actual", lineterm="", n=2)
        )
    return "\n".join(lines)


@attrs.define
class Outcome:
    verdict: str
    output: bytes
    skipped: Optional[str] = None  # reason when the case could not run


def run_cases(
    run: Callable[[bytes], tuple[str, bytes]], cases: list[Case], skip: Optional[dict[int, str]] = None
) -> dict[int, Outcome]:
    """Run every case in order (later cases rely on LRU state of earlier ones)."""
    out = {}
    skip = skip or {}
    for case in cases:
        if case.n in skip:
            out[case.n] = Outcome("", b"", skipped=skip[case.n])
            continue
        verdict, data = run(case.input)
        out[case.n] = Outcome(verdict, data)
    return out


# --------------------------------------------------------------------------- provisioning
# The configuration of Katran's tester (README sections 5 and 7.1).
DEFAULT_MAC = "00:00:de:ad:be:af"
LOCAL_MAC = "00:ff:de:ad:be:af"
KATRAN_SRC_V4 = "10.0.13.37"
KATRAN_SRC_V6 = "fc00:2307::1337"
REALS_V4 = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
REALS_V6 = ["fc00::1", "fc00::2", "fc00::3"]
QUIC_IDS = {"10.0.0.1": 1022, "10.0.0.2": 1023, "10.0.0.3": 1025, "fc00::1": 1024, "fc00::2": 1026, "fc00::3": 1027}
HC_DSTS = {1: "10.0.0.1", 2: "10.0.0.2", 3: "fc00::1"}

# (address, port, proto, flag names, reals) in Katran's addVip order: the VIP numbers follow it
BASE_VIPS = [
    ("10.200.1.1", 80, "udp", (), REALS_V4),
    ("10.200.1.1", 80, "tcp", (), REALS_V4),
    ("10.200.1.2", 0, "tcp", (), REALS_V4),
    ("10.200.1.4", 0, "tcp", ("DPORT_HASH",), REALS_V4),
    ("10.200.1.3", 80, "tcp", (), REALS_V6),
    ("fc00:1::1", 80, "tcp", (), REALS_V6),
    ("10.200.1.5", 443, "udp", ("QUIC_VIP",), REALS_V4),
    ("fc00:1::2", 443, "udp", ("QUIC_VIP",), REALS_V6),
    ("10.200.1.6", 80, "udp", ("UDP_FLOW_MIGRATION",), REALS_V4),
    ("10.200.1.99", 80, "tcp", (), []),
    ("fc00:1::11", 80, "udp", (), []),
]


def base_config(**overrides):
    from katran import KatranConfig

    kwargs = dict(
        testing=True,
        default_mac=DEFAULT_MAC,
        local_mac=LOCAL_MAC,
        katran_src_v4=KATRAN_SRC_V4,
        katran_src_v6=KATRAN_SRC_V6,
        forwarding_cores=(),  # Katran's tester: no per-core LRUs, the fallback LRU serves
        max_vips=512,
        max_reals=4096,
        ch_ring_size=65537,
        max_server_ids=1 << 18,  # the CID v2 ids (0x030000 | v1 id) of addQuicMappings
    )
    kwargs.update(overrides)
    return KatranConfig(**kwargs)


def provision_base(lb) -> dict[str, str]:
    """Provision as Katran's prepareLbData + prepareVipUninitializedLbData.

    Returns {feature: reason} for the features this data plane refused, so the
    cases that need them can be skipped with that reason.
    """
    from katran import KatranError, ModifyAction, QuicReal, Real, VipFlag, VipKey

    missing: dict[str, str] = {}
    for address, port, proto, flag_names, reals in BASE_VIPS:
        vip = VipKey(address, port, proto)
        lb.add_vip(vip)
        for real in reals:
            lb.add_real_for_vip(Real(real, 1), vip)
        for name in flag_names:
            try:
                lb.modify_vip(vip, VipFlag[name])
            except KatranError as e:
                missing[name] = str(e)
        if address == "fc00:1::2":
            # Katran adds the QUIC mappings right before the QUIC VIPs; real numbers are
            # already allocated by then, so the position does not change any index.
            pass
    qreals = []
    for real, sid in QUIC_IDS.items():
        qreals += [QuicReal(real, sid), QuicReal(real, 0x030000 | sid)]
    try:
        lb.modify_quic_reals_mapping(ModifyAction.ADD, qreals)
    except KatranError as e:
        missing["QUIC_MAPPING"] = str(e)
    try:
        # addDownRealToVipToDownRealsMap(10.200.1.6:80/udp, real index 1 = 10.0.0.1)
        lb.add_down_real(VipKey("10.200.1.6", 80, "udp"), "10.0.0.1")
    except (KatranError, AttributeError) as e:
        missing["DOWN_REALS"] = str(e)
    return missing


def run_on(lb, cases: list[Case]) -> dict[int, Outcome]:
    """Run the cases in order through ``lb``'s balancer program."""

    def run(frame: bytes):
        res = lb.run_packet(frame)
        return res.verdict, res.data

    return run_cases(run, cases)


def mismatches(cases: list[Case], outcomes: dict[int, Outcome], exclude=()) -> list[str]:
    """explain_mismatch for every case (not in ``exclude``) whose verdict or bytes differ."""
    out = []
    for case in cases:
        o = outcomes[case.n]
        if case.n in exclude or o.skipped:
            continue
        if o.verdict != case.expected_action or o.output != case.expected:
            out.append(explain_mismatch(case, o.verdict, o.output))
    return out


def ensure_vip(lb, address: str, port: int, proto: str, flags: int = 0, reals=()) -> None:
    """Katran's tester idiom: addVip (refused when the VIP exists: it keeps its number and
    flags), modifyVip ORing ``flags`` in, then addReals with weight 1."""
    from katran import ModifyAction, Real, VipKey

    vip = VipKey(address, port, proto)
    if vip not in lb.get_all_vips():
        lb.add_vip(vip)
    if flags:
        lb.modify_vip(vip, flags)
    if reals:
        lb.modify_reals_for_vip(ModifyAction.ADD, [Real(r, 1) for r in reals], vip)


def add_quic_mappings(lb) -> None:
    """addQuicMappings: CID v1 id and v2 id (0x030000 | v1) per real, one ADD call."""
    from katran import ModifyAction, QuicReal

    qreals = []
    for real, sid in QUIC_IDS.items():
        qreals += [QuicReal(real, sid), QuicReal(real, 0x030000 | sid)]
    lb.modify_quic_reals_mapping(ModifyAction.ADD, qreals)


# source prefix -> real of prepareOptionalLbData (README 7.3)
SRC_ROUTING_RULES = [
    ("192.168.0.0/17", "fc00::2307:1"),
    ("192.168.100.0/24", "fc00::2307:2"),
    ("fc00:2307::/32", "fc00::2307:3"),
    ("fc00:2307::/64", "fc00::2307:4"),
    ("fc00:2::/64", "fc00::2307:10"),
]
INLINE_DECAP_DST = "fc00:1404::1"


def provision_optional(lb, local_vip: bool = True) -> None:
    """prepareOptionalLbData (README 7.3): SRC_ROUTING on two VIPs, the LPM rules, the inline
    decap dst and (``local_vip``) the local real 10.0.0.6 on 10.200.1.6:80/UDP."""
    from katran import RealFlag, VipFlag

    ensure_vip(lb, "10.200.1.1", 80, "udp", VipFlag.SRC_ROUTING)
    ensure_vip(lb, "fc00:1::1", 80, "tcp", VipFlag.SRC_ROUTING)
    for src, dst in SRC_ROUTING_RULES:
        lb.add_src_routing_rule([src], dst)
    lb.add_inline_decap_dst(INLINE_DECAP_DST)
    if local_vip:
        # already the flow-migration VIP of prepareLbData: addVip is refused, flags become 544
        ensure_vip(lb, "10.200.1.6", 80, "udp", VipFlag.LOCAL_VIP, ["10.0.0.6"])
        lb.modify_real("10.0.0.6", RealFlag.LOCAL_REAL)


def provision_stable_rt(lb) -> None:
    """prepareLbDataStableRt (README 7.6); the repeated base VIPs and mappings change nothing."""
    from katran import VipFlag

    ensure_vip(lb, "fc00:1::9", 80, "udp", VipFlag.UDP_STABLE_ROUTING_VIP, REALS_V6)
    ensure_vip(lb, "10.200.1.90", 80, "udp", VipFlag.UDP_STABLE_ROUTING_VIP, REALS_V4)
    for address, port, proto, _flags, reals in BASE_VIPS[:8]:
        ensure_vip(lb, address, port, proto, 0, reals)
    add_quic_mappings(lb)


def provision_xpop_decap(lb) -> None:
    """prepareLbDataXpopDecap (README 7.7)."""
    ensure_vip(lb, "10.200.1.1", 80, "udp", 0, REALS_V4)
    ensure_vip(lb, "fc00:1::1", 80, "tcp", 0, REALS_V6)
    ensure_vip(lb, "10.200.1.2", 80, "udp", 0, REALS_V6)
    add_quic_mappings(lb)
    lb.add_inline_decap_dst(INLINE_DECAP_DST)


def provision_udp_flow_migration(lb) -> None:
    """prepareUdpFlowMigrationTestData (README 7.8, phase 1)."""
    from katran import VipFlag

    all_reals = REALS_V4 + REALS_V6
    mig = VipFlag.UDP_FLOW_MIGRATION
    ensure_vip(lb, "10.200.1.1", 80, "udp", mig, all_reals)
    ensure_vip(lb, "10.200.1.2", 80, "udp", mig | VipFlag.UDP_STABLE_ROUTING_VIP, all_reals)
    add_quic_mappings(lb)
    ensure_vip(lb, "10.200.1.3", 80, "udp", 0, all_reals)
    ensure_vip(lb, "10.200.1.4", 80, "tcp", 0, all_reals)


def set_down_host_for_udp_flow_migration(lb) -> None:
    """setDownHostForUdpFlowMigration (README 7.8): 10.0.0.2 down on, and deleted from, two VIPs."""
    from katran import Real, VipKey

    for address in ("10.200.1.1", "10.200.1.2"):
        vip = VipKey(address, 80, "udp")
        lb.add_down_real(vip, "10.0.0.2")
        lb.del_real_for_vip(Real("10.0.0.2", 1), vip)
