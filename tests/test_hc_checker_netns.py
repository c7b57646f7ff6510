"""Active health checks end to end, in the lab topology: the checker probes the VIP on each
real through healthcheck forwarding (SO_MARK -> tc encapsulation -> the real's XDP decap ->
its stack answering from the VIP on lo), drains a real whose HTTP server stopped, restores
it when it is back, catches a real that is reachable but lacks the VIP, and fails open when
every real is down. Real TCP traffic from the client throughout."""

from __future__ import annotations

import os
import time

import pytest

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.netns,
    pytest.mark.slow,
]

VIP = "10.100.1.7"


@pytest.fixture(scope="module")
def lab():
    from katran import KatranConfig, KatranLb, ModifyAction, Real, VipKey, decap
    from katran.lab import services
    from katran.lab.netns import inside
    from katran.lab.topology import TopologySpec, topology

    spec = TopologySpec(prefix=f"khc{os.getpid() % 10000}", n_reals=2)
    with topology(spec) as topo:
        reals, lb = {}, None
        try:
            for h in topo.reals:
                with inside(h.netns):
                    decap.install(h.ifname, [VIP], pin_root=topo.pin_root / h.role, fix_rp_filter=0)
                reals[h.role] = services.RealServers(h.netns, h.role, [VIP])
            mac = topo.gateway_mac()
            with inside(topo.lb.netns):
                lb = KatranLb(KatranConfig(main_interface=topo.lb.ifname, default_mac=mac, enable_hc=True,
                                           forwarding_cores=(0,), lru_size=10000, max_vips=8, max_reals=16,
                                           xdp_attach_mode="native"))
                lb.start()
            vip = VipKey(VIP, 80, "tcp")
            lb.add_vip(vip)
            lb.modify_reals_for_vip(ModifyAction.ADD, [Real(h.ip4, 3) for h in topo.reals], vip)
            yield topo, lb, vip, reals
        finally:
            if lb is not None:
                lb.close()
            for r in reals.values():
                r.close()


def _served_by(topo, n: int = 24) -> dict:
    from katran.lab import services

    out: dict = {}
    for _ in range(n):
        name = services.http_get(topo.client.netns, VIP, timeout=2.0)
        out[name] = out.get(name, 0) + 1
    return out


def _weights(lb, vip) -> dict:
    return {str(r.address): r.weight for r in lb.get_reals_for_vip(vip)}


def _wait(cond, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"not within {timeout} s")


def test_through_the_vip_drain_restore_vip_missing_fail_open(lab):
    from katran.hc_checker import CheckSpec, HcChecker
    from katran.lab.netns import inside, run

    topo, lb, vip, reals = lab
    r1, r2 = topo.reals
    spec = CheckSpec(type="http", interval=0.25, timeout=0.2, rise=2, fall=3, jitter=0.05, body_contains="real")
    with inside(topo.lb.netns):  # the checker's thread, and so its sockets, live in the lb's namespace
        checker = HcChecker(lb, {vip: spec}).start()
    try:
        _wait(lambda: all(s.checks >= 2 for s in checker.states()), 5)
        states = {str(s.real): s for s in checker.states()}
        assert all(s.mode == "vip" and s.last_ok for s in states.values()), states
        somarks = lb.get_healthcheckers_dst()
        assert sorted(somarks.values()) == sorted([r1.ip4, r2.ip4])  # programmed by the checker
        assert set(_served_by(topo)) == {r1.role, r2.role}

        # real2's web server stops: drained within fall x interval, new requests all go to real1
        reals[r2.role].stop_http()
        detect = _wait(lambda: _weights(lb, vip)[r2.ip4] == 0, 5)
        assert detect <= (spec.fall + 1) * spec.interval * 1.1 + 0.5, detect
        assert _served_by(topo) == {r1.role: 24}  # no failed request after detection

        # back: restored within rise x interval, with its configured weight
        reals[r2.role].start_http()
        recover = _wait(lambda: _weights(lb, vip)[r2.ip4] == 3, 5)
        assert recover <= (spec.rise + 1) * spec.interval * 1.1 + 0.5, recover
        assert set(_served_by(topo)) == {r1.role, r2.role}

        # real1 is up and reachable, but the VIP is missing on its lo: the check through the VIP fails
        run(r1.netns, ["ip", "addr", "del", f"{VIP}/32", "dev", "lo"])
        _wait(lambda: _weights(lb, vip)[r1.ip4] == 0, 5)
        st = {str(s.real): s for s in checker.states()}[r1.ip4]
        assert not st.healthy and "timeout" in st.last_reason, st
        assert _served_by(topo) == {r2.role: 24}

        # every real down: fail open, both keep their weights
        reals[r2.role].stop_http()
        _wait(lambda: not {str(s.real): s for s in checker.states()}[r2.ip4].healthy, 5)
        assert _weights(lb, vip) == {r1.ip4: 3, r2.ip4: 3}
        print(f"\nhc through the VIP: drained in {detect:.2f} s (fall 3 x 0.25 s), "
              f"restored in {recover:.2f} s (rise 2 x 0.25 s)")
    finally:
        checker.stop()
        run(r1.netns, ["ip", "addr", "add", f"{VIP}/32", "dev", "lo"], check=False)
