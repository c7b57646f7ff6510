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

    @property
    def id(self) -> str:
        return f"{self.set_name}-{self.n}"


def load_set(name: str) -> list[Case]:
    data = json.loads((FIXTURES_DIR / f"{name}.json").read_text())
    return [
        Case(
            name,
            c["n"],
            c["description"],
            base64.b64decode(c["input_b64"]),
            base64.b64decode(c["expected_b64"]),
            c["expected_action"],
        )
        for c in data["cases"]
    ]


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


def run_cases(run: Callable[[bytes], tuple[str, bytes]], cases: list[Case], skip: dict[int, str]) -> dict[int, Outcome]:
    """Run every case in order (later cases rely on LRU state of earlier ones)."""
    out = {}
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
    return missing
