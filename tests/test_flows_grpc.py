"""The flow table over the ext gRPC service: GrpcKatranClient -> KatranExtService -> KatranLb
(testing mode, loopback), compared with KatranLb's own answers."""

from __future__ import annotations

import os

import pytest

grpc = pytest.importorskip("grpc", reason="grpcio not installed")

from katran import Flow, KatranConfig, KatranLb, ModifyAction, Real, VipKey  # noqa: E402
from katran.packets import build_flow_packet  # noqa: E402
from katran_grpc.client import GrpcKatranClient, RpcFailed  # noqa: E402
from katran_grpc.server import KatranGrpcServer  # noqa: E402

root = pytest.mark.privileged  # BPF programs (and namespaces): needs root


@pytest.fixture
def setup():
    cfg = KatranConfig(testing=True, default_mac="00:00:de:ad:be:af", forwarding_cores=(), max_vips=8, max_reals=32)
    with KatranLb(cfg) as lb:
        srv = KatranGrpcServer(lb, "127.0.0.1:0")
        srv.start()
        client = GrpcKatranClient(srv.address, timeout=10)
        try:
            yield lb, client
        finally:
            client.close()
            srv.stop(0)


@root
def test_flow_table_over_grpc(setup):
    lb, client = setup
    tcp, udp = VipKey("10.200.1.1", 80, "tcp"), VipKey("fc00:1::1", 53, "udp")
    lb.add_vip(tcp)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.0.0.1"), Real("10.0.0.2")], tcp)
    lb.add_vip(udp)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real("fc00:2::1"), Real("fc00:2::2")], udp)
    flows = [Flow(f"192.168.0.{i}", "10.200.1.1", 4000 + i, 80, "tcp") for i in range(1, 11)]
    flows += [Flow(f"fc00:9::{i}", "fc00:1::1", 5000 + i, 53, "udp") for i in range(1, 6)]

    # side-effect free: the client's answer is KatranLb's, and nothing was inserted
    routes = [client.lookup_flow(f) for f in flows]
    assert routes == [lb.lookup_flow(f) for f in flows]
    assert {r.source for r in routes} == {"ring"} and all(r.ring_slot is not None for r in routes)
    assert client.list_lru(limit=None).total == 0
    with pytest.raises(RpcFailed) as exc:
        client.lookup_flow(Flow("1.2.3.4", "10.9.9.9", 1, 80, "tcp"))
    assert exc.value.code == "NOT_FOUND"

    for f in flows:
        lb.run_packet(build_flow_packet(f))
    assert [client.lookup_flow(f, cpu=0).source for f in flows] == ["lru"] * len(flows)

    listing = client.list_lru(limit=None)
    assert listing.total == 15 and listing.per_source == {"fallback": 15}
    mine = {(str(e.src), e.src_port): e for e in listing.entries}
    for f, r in zip(flows, routes):
        e = mine[(str(f.src), f.src_port)]
        assert (e.vip, e.real) == (r.vip, r.real)
        assert (e.age_s is not None) == (f.proto == 17)
    part = client.list_lru(tcp, src="192.168.0.0/30", limit=2)
    assert len(part.entries) == 2 and part.total == 3 and part.truncated
    on_real = client.list_lru(real="fc00:2::1", limit=None)
    assert on_real.total == lb.list_lru(real="fc00:2::1", limit=None).total

    f = flows[0]
    [hit] = client.search_lru(tcp, str(f.src), f.src_port)
    assert (hit.real, hit.source) == (routes[0].real, "fallback")
    assert client.delete_lru(tcp, str(f.src), f.src_port) == ["fallback"]
    assert client.search_lru(tcp, str(f.src), f.src_port) == []
    assert client.purge_vip_lru(udp) == {"fallback": 5}
    assert client.purge_vip_lru(tcp, real="10.0.0.1") == {
        "fallback": sum(1 for fl, r in zip(flows[1:10], routes[1:10]) if str(r.real) == "10.0.0.1")}
    assert lb.list_lru(limit=None).total == 9 - sum(1 for r in routes[1:10] if str(r.real) == "10.0.0.1")

    for call, code in ((lambda: client.purge_vip_lru(), "INVALID_ARGUMENT"),
                       (lambda: client.list_lru(real="10.9.9.9"), "NOT_FOUND"),
                       (lambda: client.list_lru(src="nope"), "INVALID_ARGUMENT"),
                       (lambda: client.search_lru(tcp, "fc00::1", 1), "INVALID_ARGUMENT")):
        with pytest.raises(RpcFailed) as exc:
            call()
        assert exc.value.code == code
