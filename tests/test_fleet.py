"""The fleet end to end (issue 17), with two balancers: a BIRD router with ECMP and L4
hashing, two balancer namespaces each running katran-server-grpc with the same declarative
file (bgp section with ``auto`` values), two reals with decap.  Steps 2 (same real on every
balancer, and on the wire), 3 (a balancer lost mid-transfer: 0 broken sessions), 4 (back),
5 (graceful drain: 0 broken, 0 failed new connections) and 6 (every real of a VIP unhealthy:
withdrawn by every balancer) of ``katran-lab fleet``."""

from __future__ import annotations

import os
import time

import pytest

from katran.lab import fleet

pytestmark = pytest.mark.privileged


def test_fleet_two_balancers_lose_one_and_drain_one():
    lines: list[str] = []
    spec = fleet.FleetSpec(prefix=f"kft{os.getpid() % 10000}", n_lbs=2, n_reals=2, sessions=10, flows=120)
    start = time.monotonic()
    results = fleet.run(spec, out=lines.append, steps=(2, 3, 4, 5, 6, 7))
    took = time.monotonic() - start
    report = "\n".join(lines)
    print("\n" + report + f"\n(fleet test {took:.1f} s)")
    assert [r.name[0] for r in results] == ["2", "3", "4", "5", "6", "7"], report
    assert all(r.ok for r in results), report
    same, lost, back, drain, unhealthy, detached = results
    assert detached.numbers["withdrawn"] < 5.0, report
    assert same.numbers["agree"] == 120 and same.numbers["connected_match"] > 0
    assert lost.numbers["broken"] == 0 and lost.numbers["sessions"] == 10
    assert lost.numbers["failover"] < 3.0, report  # link loss: the router drops the next hop at once
    assert back.numbers["broken"] == 0
    assert drain.numbers["broken"] == 0 and drain.numbers["new_failed"] == 0 and drain.numbers["new_ok"] > 0
    assert unhealthy.numbers["withdrawn"] < 5.0, report  # checks every 0.5 s, fall 2
    assert "broken sessions: 0 of 10" in report and "longest stall:" in report
    assert took < 240, took
    # everything went: namespaces, pins, state files
    from katran.lab import labnet

    assert labnet.list_netns(spec.prefix + "-") == []
    assert not (fleet.STATE_DIR / f"{spec.prefix}-fleet.yaml").exists()


def test_fleet_spec_validation():
    from katran import ValidationError

    with pytest.raises(ValidationError) as err:
        fleet.FleetSpec(n_lbs=1)
    assert err.value.field == "n_lbs"
    with pytest.raises(ValidationError) as err:
        fleet.FleetSpec(prefix="much-too-long")
    assert err.value.field == "prefix"


def test_fleet_config_is_one_valid_file():
    """The lab's one file parses (auto values aside) with its bgp section and health check."""
    from katran import declarative

    text = fleet.fleet_config(fleet.FleetSpec())
    text = (text.replace("default_mac: auto", "default_mac: 00:00:de:ad:be:af")
            .replace("router_id: auto", "router_id: 10.77.1.1").replace("local_address: auto", "local_address: 10.77.1.1")
            .replace("- address: auto", "- address: 10.77.1.254"))
    d = declarative.loads(text, "fleet.yaml")
    assert str(d.bgp.peers[0].address) == "10.77.1.254" and d.bgp.local_as == fleet.LB_AS
    assert len(d.vips) == 3 and len(d.healthchecks.checks) == 1


def test_drain_rpc_without_bgp_is_a_failed_precondition(tmp_path):
    """-drain on a server without a bgp section: FAILED_PRECONDITION naming bgp; with a Daemon
    that has no announcer either; nothing changes."""
    from katran import KatranConfig, KatranLb, VipKey
    from katran.daemon import Daemon
    from katran_frontend.client import RpcFailed
    from katran_grpc.client import GrpcKatranClient
    from katran_grpc.server import KatranGrpcServer

    lb = KatranLb(KatranConfig(testing=True, default_mac="00:00:de:ad:be:af", forwarding_cores=(), max_vips=8,
                               max_reals=16, lru_size=1000))
    lb.start()
    srv = KatranGrpcServer(lb, f"unix:{tmp_path}/s.sock")
    srv.start()
    client = GrpcKatranClient(f"unix:{tmp_path}/s.sock", timeout=10)
    try:
        lb.add_vip(VipKey("10.100.1.1", 80, "tcp"))
        for daemon in (None, Daemon(lb)):
            srv.ext.daemon = daemon
            for call in (client.drain, client.undrain):
                with pytest.raises(RpcFailed) as err:
                    call()
                assert err.value.code == "FAILED_PRECONDITION" and "bgp" in str(err.value)
        assert [str(v.address) for v in lb.get_all_vips()] == ["10.100.1.1"]
    finally:
        client.close()
        srv.stop(0)
        lb.close()
