"""The loaded balancer keeps no generic map helper call: every map lookup the verifier can
inline is inlined, every update calls the map's own function (no indirect call, no
retpoline). A helper call site reached with two maps (a per-cpu connection table and its
fallback, v4 and v6 tables) would keep the generic one; katran/bpf/lib/call_site.h keeps
such sites apart. Read from the kernel's translated program (bpftool prog dump xlated)."""

from __future__ import annotations

import re
import subprocess
from collections import Counter

import pytest

from conftest import lb_config
from katran import KatranLb

from test_balancer_prog import ALL_KNOBS

pytestmark = pytest.mark.privileged


def helper_calls(prog_id: int) -> Counter:
    out = subprocess.run(["bpftool", "prog", "dump", "xlated", "id", str(prog_id)],
                         capture_output=True, text=True, check=True).stdout
    return Counter(re.findall(r"\) call ([A-Za-z_][\w]*)#", out))


@pytest.mark.parametrize("knobs", [{}, {k: bool(v) for k, v in ALL_KNOBS.items() if k != "gue_dport"}],
                         ids=["default knobs", "all knobs"])
def test_map_helpers_are_inlined_or_direct(knobs):
    lb = KatranLb(lb_config(testing=True, forwarding_cores=(0,), lru_size=1000,
                            katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337", **knobs))
    lb.start()
    try:
        calls = helper_calls(lb._dp.program().id)
    finally:
        lb.close()
    assert calls["__htab_map_lookup_elem"] >= 3, calls  # vip_map, the connection table, its fallback
    assert calls["htab_lru_map_update_elem"] >= 2, calls  # the connection table and its fallback
    generic = {name: n for name, n in calls.items() if name in ("bpf_map_lookup_elem", "bpf_map_update_elem",
                                                               "bpf_map_delete_elem")}
    assert generic == {}, f"generic map helper calls left in the balancer: {generic} ({dict(calls)})"
