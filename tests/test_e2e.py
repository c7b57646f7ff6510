"""End to end: client -> router -> katran (XDP, on a stick) -> reals (decap, DSR), in network namespaces.

One topology for the module (katran.lab.topology): a client, a router, the load
balancer running ``katran-server-grpc`` (configured over gRPC), three reals with
the decap program and the VIPs on ``lo``. Real TCP/UDP traffic; every answer names
the real that served it.

The test process is pinned to one CPU for the module. A veth runs XDP on the CPU
that sent the packet, and katran's LRU is per CPU; on a NIC, RSS keeps a flow on
one CPU. Pinning gives the same property here, which the drain and remove tests
rely on (an established flow must find its LRU entry).
"""

from __future__ import annotations

import math
import os
import time

import pytest

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.netns,
    pytest.mark.slow,
]

VIPS4 = [f"10.100.1.{i}" for i in range(1, 9)]
VIPS6 = ["fc00:100::1", "fc00:100::2"]


@pytest.fixture(scope="module")
def lab():
    """(topology, grpc server, {real name: RealServers})."""
    from katran import decap
    from katran.lab.netns import inside
    from katran.lab import services
    from katran.lab.topology import TopologySpec, topology

    old_affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(old_affinity)})
    spec = TopologySpec(prefix=f"kte{os.getpid() % 10000}", n_reals=3)
    with topology(spec) as topo:
        reals = {}
        server = None
        try:
            for h in topo.reals:
                with inside(h.netns):
                    decap.install(h.ifname, VIPS4 + VIPS6, pin_root=topo.pin_root / h.role, fix_rp_filter=0)
                reals[h.role] = services.RealServers(h.netns, h.role, VIPS4 + VIPS6)
            server = services.GrpcServer(topo, topo.gateway_mac(), flags=["-hc_forwarding=false"])
            server.start()
            yield topo, server, reals
        finally:
            if server is not None:
                server.stop()
            for r in reals.values():
                r.close()
            os.sched_setaffinity(0, old_affinity)


def _grpc_client(server):
    """An in-process gRPC client of the lab's server (the lab itself only runs katran-cli)."""
    from katran_grpc.client import GrpcKatranClient

    return GrpcKatranClient(server.address, timeout=10.0)


@pytest.fixture
def kc(lab):
    """A gRPC client of the lab's server; VIPs added through ``add`` are deleted afterwards."""
    _, server, _ = lab
    client = _grpc_client(server)
    client.created = []
    yield client
    for vip in client.created:
        try:
            client.del_vip(vip)
        except Exception:
            pass
    client.close()


def _vip(kc, address: str, port: int, proto: str, reals, flags: int = 0):
    from katran.models import ModifyAction, Real, VipKey

    vip = VipKey(address, port, proto)
    kc.add_vip(vip, flags)
    kc.created.append(vip)
    kc.modify_reals_for_vip(ModifyAction.ADD, [r if isinstance(r, Real) else Real(r) for r in reals], vip)
    return vip


def _addr(h, family: int) -> str:
    return h.ip4 if family == 4 else h.ip6


# --------------------------------------------------------------------- TCP / UDP through the VIP
@pytest.mark.parametrize("vip_addr,real_family", [
    (VIPS4[0], 4),   # IPIP
    (VIPS4[1], 6),   # IPv4 in IPv6
    (VIPS6[0], 6),   # IP6IP6
], ids=["v4vip-v4reals", "v4vip-v6reals", "v6vip-v6reals"])
def test_tcp_sessions_through_the_vip(lab, kc, vip_addr, real_family):
    from katran.lab import services

    topo, _, reals = lab
    _vip(kc, vip_addr, services.HTTP_PORT, "tcp", [_addr(h, real_family) for h in topo.reals[:2]])
    _vip(kc, vip_addr, services.ECHO_PORT, "tcp", [_addr(h, real_family) for h in topo.reals[:2]])
    mark = {name: len(reals[name].log.http) for name in ("real1", "real2")}
    seen = [services.http_get(topo.client.netns, vip_addr) for _ in range(24)]
    assert set(seen) == {"real1", "real2"}, seen  # P(all 24 on one of two reals) = 2**-23
    # the reals saw the client's own address: decapsulated, not proxied
    client = topo.client.ip6 if ":" in vip_addr else topo.client.ip4
    peers = [peer[0] for name in mark for peer in reals[name].log.http[mark[name]:]]
    assert len(peers) == 24 and set(peers) == {client}
    # a long-lived session stays on one real, round trip after round trip
    sess = services.EchoSession(topo.client.netns, vip_addr)
    try:
        names = {sess.ask(f"hello {i}") for i in range(20)}
    finally:
        sess.close()
    assert len(names) == 1
    stats = kc.get_stats_for_vip(kc.created[0])
    assert stats.v1 >= 24 * 3  # at least SYN, request and ACK of every HTTP flow went through XDP


def test_bulk_transfer_over_one_session(lab, kc):
    from katran.lab import services

    topo, _, reals = lab
    _vip(kc, VIPS4[2], services.BULK_PORT, "tcp", [h.ip4 for h in topo.reals[:2]])
    nbytes = 4 << 20
    name, counted, seconds = services.bulk_send(topo.client.netns, VIPS4[2], nbytes)
    assert counted == nbytes
    assert reals[name].log.bulk[-1] == ((topo.client.ip4, reals[name].log.bulk[-1][0][1]), nbytes)


@pytest.mark.parametrize("vip_addr", [VIPS4[0], VIPS6[0]], ids=["v4", "v6"])
def test_udp_request_response_and_flow_stickiness(lab, kc, vip_addr):
    from katran.lab import services

    topo, _, _ = lab
    family = 6 if ":" in vip_addr else 4
    _vip(kc, vip_addr, services.UDP_PORT, "udp", [_addr(h, family) for h in topo.reals])
    by_flow = {}
    for sport in range(21000, 21030):
        answers = {services.udp_query(topo.client.netns, vip_addr, f"q{sport}-{i}", sport=sport) for i in range(3)}
        assert None not in answers, f"flow from port {sport} got no answer"
        assert len(answers) == 1, f"flow from port {sport} was split over {answers}"
        by_flow[sport] = answers.pop()
    assert len(set(by_flow.values())) >= 2  # 30 flows on 3 reals: all on one has probability 3**-29


# --------------------------------------------------------------------------------- weights
def test_split_follows_weights(lab, kc):
    """Reals weighted 1:3; n new TCP flows. Each flow's real is an independent draw with
    p = 1/4 (the hash of a random source port lands uniformly on the Maglev ring, whose
    slot shares equal the weight shares to within 1/65537). The count on the light real
    is Binomial(n, p): we accept |k - np| <= 4.5 sd (false alarm rate ~7e-6)."""
    from katran.lab import services
    from katran.models import Real

    topo, _, _ = lab
    r1, r2 = topo.reals[0], topo.reals[1]
    _vip(kc, VIPS4[3], services.HTTP_PORT, "tcp", [Real(r1.ip4, 1), Real(r2.ip4, 3)])
    n = 300
    counts = {"real1": 0, "real2": 0}
    for _ in range(n):
        counts[services.http_get(topo.client.netns, VIPS4[3])] += 1
    p = 0.25
    sd = math.sqrt(n * p * (1 - p))
    assert abs(counts["real1"] - n * p) <= 4.5 * sd, counts
    assert counts["real1"] + counts["real2"] == n


# ------------------------------------------------------------------- remove / drain a real
def test_removing_a_real_moves_only_its_flows(lab, kc):
    """A UDP VIP with the LRU bypassed (NO_LRU): every packet is placed by the CH ring.
    After deleting real2, all of real2's flows move and the others stay put. Maglev's
    rebuild also reassigns ~0.03% of the other reals' ring slots (computed with
    katran.maglev for these three reals), so at most 1% of the other flows may move."""
    from katran.lab import services
    from katran.models import ModifyAction, Real, VipFlag

    topo, _, _ = lab
    vip = _vip(kc, VIPS4[4], services.UDP_PORT, "udp", [h.ip4 for h in topo.reals], flags=int(VipFlag.NO_LRU))
    ports = range(22000, 22200)

    def placement() -> dict:
        out = {}
        for sport in ports:
            name = services.udp_query(topo.client.netns, VIPS4[4], f"p{sport}", sport=sport, timeout=0.5)
            assert name is not None, f"no answer for flow from port {sport}"
            out[sport] = name
        return out

    before = placement()
    assert set(before.values()) == {"real1", "real2", "real3"}
    kc.modify_reals_for_vip(ModifyAction.DEL, [Real(topo.reals[1].ip4)], vip)
    after = placement()
    moved_away = [p for p in ports if before[p] == "real2"]
    others = [p for p in ports if before[p] != "real2"]
    assert all(after[p] in ("real1", "real3") for p in moved_away)
    changed = [p for p in others if after[p] != before[p]]
    assert len(changed) <= len(others) // 100, changed


def _sessions(topo, vip_addr: str, want: set, limit: int = 60):
    """Open echo sessions until every real in ``want`` serves at least two."""
    from katran.lab import services

    sessions = []
    while True:
        s = services.EchoSession(topo.client.netns, vip_addr)
        sessions.append((s, s.ask("first")))
        served = [name for _, name in sessions]
        if all(served.count(w) >= 2 for w in want) or len(sessions) >= limit:
            return sessions


def test_removed_real_leaves_other_sessions_alone(lab, kc):
    from katran.lab import services
    from katran.models import ModifyAction, Real

    topo, _, _ = lab
    vip = _vip(kc, VIPS4[5], services.ECHO_PORT, "tcp", [h.ip4 for h in topo.reals])
    sessions = _sessions(topo, VIPS4[5], {"real1", "real2", "real3"})
    try:
        kc.modify_reals_for_vip(ModifyAction.DEL, [Real(topo.reals[2].ip4)], vip)
        for s, name in sessions:
            if name != "real3":
                assert s.ask("after removal") == name
        fresh = [services.EchoSession(topo.client.netns, VIPS4[5]) for _ in range(20)]
        try:
            assert "real3" not in {s.ask("new") for s in fresh}
        finally:
            for s in fresh:
                s.close()
    finally:
        for s, _ in sessions:
            s.close()


def test_weight_zero_drains_a_real(lab, kc):
    from katran.lab import services
    from katran.models import ModifyAction, Real

    topo, _, _ = lab
    r1, r2 = topo.reals[0], topo.reals[1]
    vip = _vip(kc, VIPS4[6], services.ECHO_PORT, "tcp", [r1.ip4, r2.ip4])
    sessions = _sessions(topo, VIPS4[6], {"real1", "real2"})
    try:
        assert {"real1", "real2"} <= {name for _, name in sessions}
        kc.modify_reals_for_vip(ModifyAction.ADD, [Real(r2.ip4, 0)], vip)
        assert {r.address.exploded: r.weight for r in kc.get_reals_for_vip(vip)}[r2.ip4] == 0
        fresh = [services.EchoSession(topo.client.netns, VIPS4[6]) for _ in range(20)]
        try:
            assert {s.ask("new") for s in fresh} == {"real1"}
        finally:
            for s in fresh:
                s.close()
        # established sessions keep their real, real2's included (found in the LRU)
        for i in range(3):
            for s, name in sessions:
                assert s.ask(f"still there {i}") == name
    finally:
        for s, _ in sessions:
            s.close()


# ------------------------------------------------------------------------------- restart
def test_server_restart_keeps_established_flows(lab, kc):
    """Stop katran-server-grpc (it detaches), start a new one, apply the same configuration:
    the LRU is gone but the Maglev ring is the same, so established sessions continue."""
    from katran.lab import labnet
    from katran.lab import services
    from katran.models import Real, VipKey

    topo, server, _ = lab
    reals = [h.ip4 for h in topo.reals]
    _vip(kc, VIPS4[7], services.ECHO_PORT, "tcp", reals)
    sessions = _sessions(topo, VIPS4[7], {"real1", "real2", "real3"})
    try:
        old_prog = labnet.xdp_prog_id(topo.lb.netns, topo.lb.ifname)
        assert old_prog
        t0 = time.monotonic()
        assert server.stop() == 0
        assert labnet.xdp_prog_id(topo.lb.netns, topo.lb.ifname) == 0  # the old process detached
        server.start()
        with _grpc_client(server) as kc2:
            vip = VipKey(VIPS4[7], services.ECHO_PORT, "tcp")
            kc2.add_vip(vip)
            for addr in reals:
                kc2.add_real_for_vip(Real(addr), vip)
        gap = time.monotonic() - t0
        new_prog = labnet.xdp_prog_id(topo.lb.netns, topo.lb.ifname)
        assert new_prog and new_prog != old_prog
        for s, name in sessions:
            assert s.ask("after restart") == name
        assert gap < 20
    finally:
        for s, _ in sessions:
            s.close()
        kc.created.clear()  # the new server has only this VIP; the next kc deletes nothing stale
