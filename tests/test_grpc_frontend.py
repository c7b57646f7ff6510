"""gRPC frontend: both services over a real KatranLb (testing mode: BPF maps
loaded, nothing attached), through generated stubs, on loopback."""

from __future__ import annotations

import datetime
import filecmp
import os
import re
from pathlib import Path

import pytest

grpc = pytest.importorskip("grpc", reason="grpcio not installed")

ROOT = Path(__file__).resolve().parents[1]
GRPC_DIR = ROOT / "frontends" / "grpc"

from katran import KatranConfig, KatranLb  # noqa: E402
from katran.models import Flow, HashFunction, VipFlag, VipKey  # noqa: E402
from katran_grpc import ERROR_CODE_KEY, ERROR_KEY  # noqa: E402
from katran_grpc import katran_ext_pb2 as ext_pb  # noqa: E402
from katran_grpc import katran_ext_pb2_grpc as ext_grpc  # noqa: E402
from katran_grpc import katran_pb2 as pb  # noqa: E402
from katran_grpc import katran_pb2_grpc as pb_grpc  # noqa: E402
from katran_grpc import server as server_mod  # noqa: E402
from katran_grpc.server import KatranGrpcServer, config_from_flags, server_credentials  # noqa: E402

MAC = "00:00:de:ad:be:af"


def _config(**kw) -> KatranConfig:
    args = dict(testing=True, default_mac=MAC, lru_size=1000, max_vips=64, enable_hc=True,
                katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337")
    args.update(kw)
    return KatranConfig(**args)


@pytest.fixture(scope="module")
def lb():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    lb = KatranLb(_config())
    lb.start()
    yield lb
    lb.close()


@pytest.fixture(scope="module")
def server(lb):
    srv = KatranGrpcServer(lb, "127.0.0.1:0")
    srv.start()
    yield srv
    srv.stop(0)


@pytest.fixture(scope="module")
def channel(server):
    ch = grpc.insecure_channel(server.address)
    yield ch
    ch.close()


@pytest.fixture
def stub(channel, lb):
    yield pb_grpc.KatranServiceStub(channel)
    _reset(lb)


@pytest.fixture
def ext(channel, lb):
    yield ext_grpc.KatranExtServiceStub(channel)
    _reset(lb)


def _reset(lb) -> None:
    for vip in lb.get_all_vips():
        lb.del_vip(vip)
    qreals = lb.get_quic_reals_mapping()
    if qreals:
        from katran.models import ModifyAction

        lb.modify_quic_reals_mapping(ModifyAction.DEL, qreals)
    for somark in list(lb.get_healthcheckers_dst()):
        lb.del_healthchecker_dst(somark)
    lb.change_mac(MAC)


def vip_msg(address="10.0.0.1", port=80, protocol=6) -> pb.Vip:
    return pb.Vip(address=address, port=port, protocol=protocol)


def call(method, request):
    """(response, trailing metadata as dict)."""
    response, c = method.with_call(request)
    assert c.code() == grpc.StatusCode.OK
    return response, {m.key: m.value for m in c.trailing_metadata() or ()}


def assert_refused(method, request, code: str, *needles: str) -> str:
    """Katran's contract for a refused Bool RPC: status CANCELLED (Katran's C++ server answers so);
    our reason is the status details, its katran code in the trailing metadata."""
    with pytest.raises(grpc.RpcError) as info:
        method(request)
    assert info.value.code() == grpc.StatusCode.CANCELLED, info.value.details()
    meta = {m.key: m.value for m in info.value.trailing_metadata() or ()}
    assert meta[ERROR_CODE_KEY] == code, meta
    assert meta[ERROR_KEY] == info.value.details()
    for needle in needles:
        assert needle in info.value.details(), info.value.details()
    return info.value.details()


def assert_status(method, request, code: grpc.StatusCode, *needles: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        method(request)
    assert info.value.code() == code, info.value.details()
    for needle in needles:
        assert needle in info.value.details()
    meta = {m.key: m.value for m in info.value.trailing_metadata() or ()}
    assert meta[ERROR_CODE_KEY] == code.name


def syn_to(vip: VipKey, sport: int = 31337) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    l3 = IPv6(src="fc00:2::1", dst=str(vip.address)) if vip.is_v6 else IP(src="192.168.1.1", dst=str(vip.address))
    pkt = Ether(src="00:11:22:33:44:55", dst="00:00:00:00:00:01") / l3 / TCP(sport=sport, dport=vip.port, flags="S")
    return bytes(pkt)


# ------------------------------------------------------------------ KatranService
def test_mac(stub, lb):
    assert stub.getMac(pb.Empty()).mac == MAC
    ok, meta = call(stub.changeMac, pb.Mac(mac="02:11:22:33:44:55"))
    assert ok.success and ERROR_KEY not in meta
    assert stub.getMac(pb.Empty()).mac == "02:11:22:33:44:55" == lb.get_mac()
    assert_refused(stub.changeMac, pb.Mac(mac="02:11:22:33:44"), "INVALID_ARGUMENT", "mac", "02:11:22:33:44")
    assert_refused(stub.changeMac, pb.Mac(mac="zz:11:22:33:44:55"), "INVALID_ARGUMENT", "mac")
    assert stub.getMac(pb.Empty()).mac == "02:11:22:33:44:55"


def test_vip_lifecycle(stub, lb):
    v4, v6 = vip_msg(), vip_msg("fc00::1", 443, 17)
    for v in (v4, v6):
        assert stub.addVip(pb.VipMeta(vip=v, flags=0)).success
    got = {(v.address, v.port, v.protocol) for v in stub.getAllVips(pb.Empty()).vips}
    assert got == {("10.0.0.1", 80, 6), ("fc00::1", 443, 17)}
    assert set(lb.get_all_vips()) == {VipKey("10.0.0.1", 80, 6), VipKey("fc00::1", 443, 17)}
    assert stub.getVipFlags(v4).flags == 0
    assert stub.modifyVip(pb.VipMeta(vip=v4, flags=VipFlag.NO_SPORT, setFlag=True)).success
    assert stub.getVipFlags(v4).flags == VipFlag.NO_SPORT == lb.get_vip_flags(VipKey("10.0.0.1", 80, 6))
    assert stub.modifyVip(pb.VipMeta(vip=v4, flags=VipFlag.NO_SPORT, setFlag=False)).success
    assert stub.getVipFlags(v4).flags == 0
    assert stub.delVip(v6).success
    assert [v.address for v in stub.getAllVips(pb.Empty()).vips] == ["10.0.0.1"]


def test_add_vip_with_flags(stub):
    assert stub.addVip(pb.VipMeta(vip=vip_msg(), flags=int(VipFlag.NO_SPORT | VipFlag.NO_LRU))).success
    assert stub.getVipFlags(vip_msg()).flags == VipFlag.NO_SPORT | VipFlag.NO_LRU


@pytest.mark.parametrize(
    "vip, needle",
    [
        (vip_msg(address="10.0.0.300"), "vip.address"),
        (vip_msg(address=""), "vip.address"),
        (vip_msg(port=70000), "vip.port"),
        (vip_msg(port=-1), "vip.port"),
        (vip_msg(protocol=1), "vip.proto"),
    ],
)
def test_add_vip_bad_input_changes_nothing(stub, lb, vip, needle):
    assert stub.addVip(pb.VipMeta(vip=vip_msg("10.9.9.9"))).success
    before = list(lb.get_all_vips())
    assert_refused(stub.addVip, pb.VipMeta(vip=vip), "INVALID_ARGUMENT", needle)
    assert lb.get_all_vips() == before
    assert len(stub.getAllVips(pb.Empty()).vips) == 1


def test_add_vip_twice(stub, lb):
    assert stub.addVip(pb.VipMeta(vip=vip_msg(), flags=int(VipFlag.NO_LRU))).success
    assert_refused(stub.addVip, pb.VipMeta(vip=vip_msg()), "ALREADY_EXISTS", "10.0.0.1")
    assert lb.get_vip_flags(VipKey("10.0.0.1", 80, 6)) == VipFlag.NO_LRU


def test_ipv4_mapped_addresses_are_answered_in_dotted_form(stub, lb):
    """Katran prints ::ffff:10.0.0.77 (inet_ntop); Python's ipaddress alone gives ::ffff:a00:4d."""
    v = vip_msg("::ffff:10.0.0.77")
    assert stub.addVip(pb.VipMeta(vip=v)).success
    assert stub.addRealForVip(pb.realForVip(real=pb.Real(address="::ffff:a00:101", weight=1), vip=v)).success
    assert [x.address for x in stub.getAllVips(pb.Empty()).vips] == ["::ffff:10.0.0.77"]
    assert [r.address for r in stub.getRealsForVip(v).reals] == ["::ffff:10.0.1.1"]
    assert stub.getVipFlags(vip_msg("::ffff:a00:4d")).flags == 0  # either text names the same VIP


def test_bool_rpc_failure_is_cancelled_for_katrans_clients(stub, lb, server):
    """Katran's Go client exits 1 on a non-OK status: our failed Bool RPCs answer CANCELLED, reason in details;
    our client turns that into OperationFailed with the katran reason code."""
    from katran_grpc.client import GrpcKatranClient, OperationFailed

    assert stub.addVip(pb.VipMeta(vip=vip_msg())).success
    with pytest.raises(grpc.RpcError) as info:
        stub.addVip(pb.VipMeta(vip=vip_msg()))
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert info.value.details() == "vip 10.0.0.1:80/tcp already exists"
    with GrpcKatranClient(server.address, timeout=10) as kc:
        with pytest.raises(OperationFailed) as failed:
            kc.add_vip(VipKey("10.0.0.1", 80, 6))
        assert (failed.value.rpc, failed.value.code) == ("addVip", "ALREADY_EXISTS")
        assert failed.value.message == "vip 10.0.0.1:80/tcp already exists"
        with pytest.raises(OperationFailed) as failed:
            kc.change_mac("\u00e9:11:22:33:44:55")
        assert failed.value.code == "INVALID_ARGUMENT" and failed.value.message.startswith("mac='\\xe9:11")
    assert lb.get_mac() == MAC


def test_invalid_utf8_is_a_clean_error_naming_the_field(channel, lb):
    """A string that is not UTF-8 fails protobuf parsing; gRPC alone would answer INTERNAL
    "Exception deserializing request!"."""
    raw = pb.VipMeta(vip=vip_msg("10.0.0.1")).SerializeToString().replace(b"10.0.0.1", b"10.0.0.\xff")
    add_vip = channel.unary_unary("/lb.katran.KatranService/addVip", request_serializer=lambda b: b,
                                  response_deserializer=pb.Bool.FromString)
    with pytest.raises(grpc.RpcError) as info:
        add_vip(raw)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert info.value.details() == "vip.address=b'10.0.0.\\xff': not valid UTF-8 text"
    get_flags = channel.unary_unary("/lb.katran.KatranService/getVipFlags", request_serializer=lambda b: b,
                                    response_deserializer=pb.Flags.FromString)
    with pytest.raises(grpc.RpcError) as info:
        get_flags(b"\x0a\x01\xff")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "vip.address=b'\\xff'" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        get_flags(b"\x0a\x05\x01")  # truncated: not a message at all
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("request='<3 bytes>': not a valid lb.katran.Vip message")
    assert lb.get_all_vips() == []


def test_unknown_vip(stub, lb):
    unknown = vip_msg("10.7.7.7")
    assert_refused(stub.delVip, unknown, "NOT_FOUND", "10.7.7.7")
    assert_refused(stub.modifyVip, pb.VipMeta(vip=unknown, flags=1, setFlag=True), "NOT_FOUND")
    assert_refused(stub.addRealForVip, pb.realForVip(real=pb.Real(address="10.1.1.1", weight=1), vip=unknown),
                   "NOT_FOUND")
    assert_refused(stub.modifyRealsForVip, pb.modifiedRealsForVip(
        action=pb.ADD, real=pb.Reals(reals=[pb.Real(address="10.1.1.1", weight=1)]), vip=unknown), "NOT_FOUND")
    for method in (stub.getVipFlags, stub.getRealsForVip, stub.getStatsForVip):
        assert_status(method, unknown, grpc.StatusCode.NOT_FOUND, "10.7.7.7")
    assert lb.get_all_vips() == []


def test_reals(stub, lb):
    v = vip_msg()
    key = VipKey("10.0.0.1", 80, 6)
    assert stub.addVip(pb.VipMeta(vip=v)).success
    assert stub.addRealForVip(pb.realForVip(real=pb.Real(address="10.1.1.1", weight=10), vip=v)).success
    batch = [pb.Real(address="10.1.1.2", weight=20), pb.Real(address="10.1.1.3", weight=30, flags=0)]
    assert stub.modifyRealsForVip(pb.modifiedRealsForVip(action=pb.ADD, real=pb.Reals(reals=batch), vip=v)).success
    got = {(r.address, r.weight) for r in stub.getRealsForVip(v).reals}
    assert got == {("10.1.1.1", 10), ("10.1.1.2", 20), ("10.1.1.3", 30)}
    assert got == {(str(r.address), r.weight) for r in lb.get_reals_for_vip(key)}

    assert stub.modifyRealsForVip(pb.modifiedRealsForVip(
        action=pb.DEL, real=pb.Reals(reals=[pb.Real(address="10.1.1.2")]), vip=v)).success
    assert stub.delRealForVip(pb.realForVip(real=pb.Real(address="10.1.1.3"), vip=v)).success
    assert [(r.address, r.weight) for r in stub.getRealsForVip(v).reals] == [("10.1.1.1", 10)]

    # real flags
    local = pb.RealMeta(address="10.1.1.1", flags=2, setFlag=True)
    assert stub.modifyReal(local).success
    assert stub.getRealFlags(pb.Real(address="10.1.1.1")).flags & 2
    assert lb.get_real_flags("10.1.1.1") & 2
    assert stub.modifyReal(pb.RealMeta(address="10.1.1.1", flags=2, setFlag=False)).success
    assert stub.getRealFlags(pb.Real(address="10.1.1.1")).flags & 2 == 0


def test_reals_bad_input_changes_nothing(stub, lb):
    v = vip_msg()
    key = VipKey("10.0.0.1", 80, 6)
    assert stub.addVip(pb.VipMeta(vip=v)).success
    assert stub.addRealForVip(pb.realForVip(real=pb.Real(address="10.1.1.1", weight=1), vip=v)).success
    before = lb.get_reals_for_vip(key)
    assert_refused(stub.addRealForVip, pb.realForVip(real=pb.Real(address="10.1.1", weight=1), vip=v),
                   "INVALID_ARGUMENT", "real.address")
    assert_refused(stub.addRealForVip, pb.realForVip(real=pb.Real(address="10.1.1.5", weight=-3), vip=v),
                   "INVALID_ARGUMENT", "real.weight")
    bad_batch = pb.Reals(reals=[pb.Real(address="10.1.1.2", weight=1), pb.Real(address="nope", weight=1)])
    assert_refused(stub.modifyRealsForVip, pb.modifiedRealsForVip(action=pb.ADD, real=bad_batch, vip=v),
                   "INVALID_ARGUMENT", "nope")
    good_batch = pb.Reals(reals=[pb.Real(address="10.1.1.2", weight=1)])
    assert_refused(stub.modifyRealsForVip, pb.modifiedRealsForVip(action=7, real=good_batch, vip=v),
                   "INVALID_ARGUMENT", "action")
    assert lb.get_reals_for_vip(key) == before
    assert_refused(stub.modifyReal, pb.RealMeta(address="10.4.4.4", flags=2, setFlag=True), "NOT_FOUND", "10.4.4.4")
    assert_status(stub.getRealFlags, pb.Real(address="10.4.4.4"), grpc.StatusCode.NOT_FOUND)
    assert_status(stub.getRealFlags, pb.Real(address="x"), grpc.StatusCode.INVALID_ARGUMENT)


def test_quic_mapping(stub, lb):
    add = pb.modifiedQuicReals(action=pb.ADD, reals=pb.QuicReals(qreals=[
        pb.QuicReal(address="10.1.1.1", id=1000), pb.QuicReal(address="fc00::2", id=1001)]))
    assert stub.modifyQuicRealsMapping(add).success
    got = {(q.address, q.id) for q in stub.getQuicRealsMapping(pb.Empty()).qreals}
    assert got == {("10.1.1.1", 1000), ("fc00::2", 1001)}
    assert got == {(str(q.address), q.id) for q in lb.get_quic_reals_mapping()}
    bad = pb.modifiedQuicReals(action=pb.ADD, reals=pb.QuicReals(qreals=[pb.QuicReal(address="10.1.1.x", id=5)]))
    assert_refused(stub.modifyQuicRealsMapping, bad, "INVALID_ARGUMENT", "10.1.1.x")
    dele = pb.modifiedQuicReals(action=pb.DEL, reals=pb.QuicReals(qreals=[pb.QuicReal(address="10.1.1.1", id=1000)]))
    assert stub.modifyQuicRealsMapping(dele).success
    assert [(q.address, q.id) for q in stub.getQuicRealsMapping(pb.Empty()).qreals] == [("fc00::2", 1001)]


def test_stats(stub, ext, lb):
    v = vip_msg()
    key = VipKey("10.0.0.1", 80, 6)
    assert stub.addVip(pb.VipMeta(vip=v)).success
    assert stub.addRealForVip(pb.realForVip(real=pb.Real(address="10.1.1.1", weight=1), vip=v)).success
    before = stub.getStatsForVip(v)
    for sport in range(3):
        lb.run_packet(syn_to(key, 40000 + sport))
    after = stub.getStatsForVip(v)
    assert after.v1 - before.v1 == 3
    assert after.v2 > before.v2
    expected = lb.get_stats_for_vip(key)
    assert (after.v1, after.v2) == (expected.v1, expected.v2)
    for rpc, getter in [
        (stub.getLruStats, lb.get_lru_stats),
        (stub.getLruMissStats, lb.get_lru_miss_stats),
        (stub.getLruFallbackStats, lb.get_lru_fallback_stats),
        (stub.getIcmpTooBigStats, lb.get_icmp_too_big_stats),
        (ext.getXdpTotalStats, lb.get_xdp_total_stats),
        (ext.getXdpTxStats, lb.get_xdp_tx_stats),
        (ext.getXdpDropStats, lb.get_xdp_drop_stats),
        (ext.getXdpPassStats, lb.get_xdp_pass_stats),
        (ext.getChDropStats, lb.get_ch_drop_stats),
        (ext.getEncapFailStats, lb.get_encap_fail_stats),
        (ext.getMalformedStats, lb.get_malformed_stats),
        (ext.getFlowCacheStats, lb.get_flow_cache_stats),
        (ext.getKatranLbStats, lb.get_katran_lb_stats),
    ]:
        got = rpc(pb.Empty())
        want = getter()
        assert (got.v1, got.v2) == (want.v1, want.v2), rpc
    assert stub.getLruStats(pb.Empty()).v1 >= 3  # every packet to a VIP is counted
    assert ext.getXdpTxStats(pb.Empty()).v1 >= 3  # and bounced back encapsulated


def test_per_real_stats(stub, ext, lb):
    v = vip_msg()
    key = VipKey("10.0.0.1", 80, 6)
    assert stub.addVip(pb.VipMeta(vip=v)).success
    assert stub.addRealForVip(pb.realForVip(real=pb.Real(address="10.1.1.7", weight=1), vip=v)).success
    index = ext.getIndexForReal(ext_pb.RealAddress(address="10.1.1.7")).index
    assert index == lb.get_index_for_real("10.1.1.7")
    before = ext.getRealStats(ext_pb.RealIndex(index=index))
    lb.run_packet(syn_to(key))
    after = ext.getRealStats(ext_pb.RealIndex(index=index))
    assert after.v1 == before.v1 + 1
    assert (after.v1, after.v2) == (lb.get_real_stats(index).v1, lb.get_real_stats(index).v2)
    assert_status(ext.getIndexForReal, ext_pb.RealAddress(address="10.8.8.8"), grpc.StatusCode.NOT_FOUND)
    assert_status(ext.getIndexForReal, ext_pb.RealAddress(address="10.8.8"), grpc.StatusCode.INVALID_ARGUMENT)


def test_per_core_counters(ext, lb):
    got = list(ext.getPerCorePacketsStats(pb.Empty()).packets)
    assert got == lb.get_per_core_packets_stats()
    assert len(got) >= 1


def test_hash_function(stub, ext, lb):
    v = vip_msg()
    key = VipKey("10.0.0.1", 80, 6)
    assert stub.addVip(pb.VipMeta(vip=v)).success
    initial = ext.getHashFunctionForVip(v).hash_function
    assert initial == lb.get_hash_function_for_vip(key)
    other = HashFunction.MAGLEV_V2 if initial == HashFunction.MAGLEV else HashFunction.MAGLEV
    ext.changeHashFunctionForVip(ext_pb.VipHashFunction(vip=v, hash_function=int(other)))
    assert ext.getHashFunctionForVip(v).hash_function == other == lb.get_hash_function_for_vip(key)
    assert_status(ext.changeHashFunctionForVip, ext_pb.VipHashFunction(vip=v, hash_function=5),
                  grpc.StatusCode.INVALID_ARGUMENT, "hash_function")
    assert lb.get_hash_function_for_vip(key) == other
    assert_status(ext.getHashFunctionForVip, vip_msg("10.6.6.6"), grpc.StatusCode.NOT_FOUND)


def test_real_for_flow(stub, ext, lb):
    v = vip_msg()
    assert stub.addVip(pb.VipMeta(vip=v)).success
    # a flow no earlier test sent (the LRU would remember it)
    flow = ext_pb.Flow(src="192.168.77.1", dst="10.0.0.1", src_port=31337, dst_port=80, protocol=6)
    empty = ext.getRealForFlow(flow)
    assert not empty.found and empty.address == ""
    reals = [pb.Real(address=f"10.1.1.{i}", weight=1) for i in range(1, 5)]
    assert stub.modifyRealsForVip(pb.modifiedRealsForVip(action=pb.ADD, real=pb.Reals(reals=reals), vip=v)).success
    seen = set()
    for sport in range(1000, 1040):
        f = ext_pb.Flow(src="192.168.78.1", dst="10.0.0.1", src_port=sport, dst_port=80, protocol=6)
        got = ext.getRealForFlow(f)
        assert got.found
        assert got.address == lb.get_real_for_flow(Flow("192.168.78.1", "10.0.0.1", sport, 80, 6))
        seen.add(got.address)
    assert seen <= {r.address for r in reals} and len(seen) > 1
    no_vip = ext_pb.Flow(src="192.168.1.1", dst="10.3.3.3", src_port=1, dst_port=80, protocol=6)
    assert not ext.getRealForFlow(no_vip).found  # not a VIP: passed on, no real
    assert lb.get_real_for_flow(Flow("192.168.1.1", "10.3.3.3", 1, 80, 6)) is None
    assert_status(ext.getRealForFlow, ext_pb.Flow(src="bad", dst="10.0.0.1", src_port=1, dst_port=80, protocol=6),
                  grpc.StatusCode.INVALID_ARGUMENT, "flow.src")
    assert_status(ext.getRealForFlow, ext_pb.Flow(src="1.1.1.1", dst="10.0.0.1", src_port=1, dst_port=80,
                                                  protocol=99), grpc.StatusCode.INVALID_ARGUMENT, "proto")


def test_healthcheckers(stub, ext, lb):
    assert stub.addHealthcheckerDst(pb.Healthcheck(somark=1000, address="10.1.1.1")).success
    assert stub.addHealthcheckerDst(pb.Healthcheck(somark=1001, address="fc00::1")).success
    got = dict(stub.getHealthcheckersDst(pb.Empty()).healthchecks)
    assert got == {1000: "10.1.1.1", 1001: "fc00::1"}
    assert {k: str(a) for k, a in lb.get_healthcheckers_dst().items()} == got
    assert_refused(stub.addHealthcheckerDst, pb.Healthcheck(somark=1002, address="10.1.1"), "INVALID_ARGUMENT",
                   "10.1.1")
    assert_refused(stub.delHealthcheckerDst, pb.Somark(somark=4242), "NOT_FOUND", "4242")
    assert stub.delHealthcheckerDst(pb.Somark(somark=1000)).success
    assert dict(stub.getHealthcheckersDst(pb.Empty()).healthchecks) == {1001: "fc00::1"}
    stats = ext.getHealthcheckProgramStats(pb.Empty())
    want = lb.get_hc_program_stats()
    assert (stats.packets_processed, stats.packets_dropped, stats.packets_skipped, stats.packets_too_big) == (
        want.processed, want.dropped, want.skipped, want.too_big)


@pytest.mark.privileged
def test_hc_disabled_is_failed_precondition():
    lb = KatranLb(_config(enable_hc=False))
    lb.start()
    srv = KatranGrpcServer(lb, "127.0.0.1:0")
    srv.start()
    try:
        with grpc.insecure_channel(srv.address) as ch:
            stub = pb_grpc.KatranServiceStub(ch)
            assert_refused(stub.addHealthcheckerDst, pb.Healthcheck(somark=1, address="10.1.1.1"),
                           "FAILED_PRECONDITION")
            assert_status(stub.getHealthcheckersDst, pb.Empty(), grpc.StatusCode.FAILED_PRECONDITION)
    finally:
        srv.stop(0)
        lb.close()


# ------------------------------------------------------------------ feature parity (ext service)
FEATURES = dict(lpm_src_lookup=True, inline_decap_ipip=True, max_decap_dst=2, max_lpm_src_size=3, enable_hc=False)
SRC_VIP = VipKey("10.0.0.1", 80, 6)


@pytest.fixture(scope="module")
def feat_lb():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    lb = KatranLb(_config(**FEATURES))
    lb.start()
    yield lb
    lb.close()


@pytest.fixture(scope="module")
def feat_channel(feat_lb):
    srv = KatranGrpcServer(feat_lb, "127.0.0.1:0")
    srv.start()
    ch = grpc.insecure_channel(srv.address)
    yield ch
    ch.close()
    srv.stop(0)


def _reset_features(lb) -> None:
    lb.clear_all_src_routing_rules()
    for dst in lb.get_inline_decap_dst():
        lb.del_inline_decap_dst(dst)
    for vip in lb.get_all_vips():
        lb.clear_down_reals(vip)
        lb.del_vip(vip)


@pytest.fixture
def fstub(feat_channel, feat_lb):
    """(KatranService stub, KatranExtService stub) of the server whose lb has the features on."""
    yield pb_grpc.KatranServiceStub(feat_channel), ext_grpc.KatranExtServiceStub(feat_channel)
    _reset_features(feat_lb)


def _pair(stats) -> tuple:
    """(v1, v2) of a Stats message or an LbStats."""
    return (stats.v1, stats.v2)


def test_src_routing_rules_route_flows(fstub, feat_lb):
    stub, ext = fstub
    v = vip_msg()
    assert stub.addVip(pb.VipMeta(vip=v, flags=int(VipFlag.SRC_ROUTING))).success
    assert stub.addRealForVip(pb.realForVip(real=pb.Real(address="10.1.1.1", weight=1), vip=v)).success
    ext.addSrcRoutingRule(ext_pb.SrcRoutingRule(srcs=["192.168.0.0/16", "fc00:2307::/32"], dst="10.9.9.9"))
    want = {"192.168.0.0/16": "10.9.9.9", "fc00:2307::/32": "10.9.9.9"}
    assert dict(ext.getSrcRoutingRule(pb.Empty()).rules) == want == feat_lb.get_src_routing_rule()
    assert ext.getSrcRoutingRuleSize(pb.Empty()).count == 2
    before = ext.getSrcRoutingStats(pb.Empty())
    routed = ext.getRealForFlow(ext_pb.Flow(src="192.168.5.5", dst="10.0.0.1", src_port=4000, dst_port=80, protocol=6))
    assert (routed.found, routed.address) == (True, "10.9.9.9")
    other = ext.getRealForFlow(ext_pb.Flow(src="172.16.0.1", dst="10.0.0.1", src_port=4000, dst_port=80, protocol=6))
    assert (other.found, other.address) == (True, "10.1.1.1")
    after = ext.getSrcRoutingStats(pb.Empty())
    assert (after.v1 - before.v1, after.v2 - before.v2) == (1, 1)  # one without a rule, one source-routed
    assert _pair(after) == _pair(feat_lb.get_src_routing_stats())
    ext.delSrcRoutingRule(ext_pb.SrcPrefixes(srcs=["192.168.0.0/16"]))
    assert dict(ext.getSrcRoutingRule(pb.Empty()).rules) == {"fc00:2307::/32": "10.9.9.9"}
    ext.clearAllSrcRoutingRules(pb.Empty())
    assert ext.getSrcRoutingRuleSize(pb.Empty()).count == 0 == feat_lb.get_src_routing_rule_size()


def test_src_routing_bad_input_changes_nothing(fstub, feat_lb):
    _, ext = fstub
    ext.addSrcRoutingRule(ext_pb.SrcRoutingRule(srcs=["10.0.0.0/8"], dst="10.9.9.9"))
    before = feat_lb.get_src_routing_rule()
    assert_status(ext.addSrcRoutingRule, ext_pb.SrcRoutingRule(srcs=["172.16.0.0/12", "10.1.0.0/33"], dst="10.9.9.9"),
                  grpc.StatusCode.INVALID_ARGUMENT, "src", "10.1.0.0/33")
    assert_status(ext.addSrcRoutingRule, ext_pb.SrcRoutingRule(srcs=["172.16.0.0/12"], dst="10.9.9"),
                  grpc.StatusCode.INVALID_ARGUMENT, "dst", "10.9.9")
    # max_lpm_src_size=3: one rule in, three more do not fit
    assert_status(ext.addSrcRoutingRule,
                  ext_pb.SrcRoutingRule(srcs=["172.16.0.0/12", "192.168.0.0/16", "fc00::/7"], dst="10.9.9.9"),
                  grpc.StatusCode.RESOURCE_EXHAUSTED, "max_lpm_src_size")
    assert_status(ext.delSrcRoutingRule, ext_pb.SrcPrefixes(srcs=["10.0.0.0/8", "11.0.0.0/8"]),
                  grpc.StatusCode.NOT_FOUND, "11.0.0.0/8")
    assert_status(ext.delSrcRoutingRule, ext_pb.SrcPrefixes(srcs=["nope"]), grpc.StatusCode.INVALID_ARGUMENT, "nope")
    assert feat_lb.get_src_routing_rule() == before == dict(ext.getSrcRoutingRule(pb.Empty()).rules)


def test_inline_decap_dsts(fstub, feat_lb):
    _, ext = fstub
    ext.addInlineDecapDst(ext_pb.DecapDst(address="fc00:1404::1"))
    assert_status(ext.addInlineDecapDst, ext_pb.DecapDst(address="fc00:1404::1"), grpc.StatusCode.ALREADY_EXISTS,
                  "fc00:1404::1")
    ext.addInlineDecapDst(ext_pb.DecapDst(address="10.200.0.1"))
    assert_status(ext.addInlineDecapDst, ext_pb.DecapDst(address="10.200.0.2"), grpc.StatusCode.RESOURCE_EXHAUSTED,
                  "max_decap_dst")  # max_decap_dst=2
    assert_status(ext.addInlineDecapDst, ext_pb.DecapDst(address="10.200.0"), grpc.StatusCode.INVALID_ARGUMENT,
                  "dst", "10.200.0")
    want = ["fc00:1404::1", "10.200.0.1"]
    assert list(ext.getInlineDecapDst(pb.Empty()).addresses) == want == feat_lb.get_inline_decap_dst()
    assert_status(ext.delInlineDecapDst, ext_pb.DecapDst(address="10.200.0.9"), grpc.StatusCode.NOT_FOUND,
                  "10.200.0.9")
    assert feat_lb.get_inline_decap_dst() == want
    ext.delInlineDecapDst(ext_pb.DecapDst(address="fc00:1404::1"))
    assert list(ext.getInlineDecapDst(pb.Empty()).addresses) == ["10.200.0.1"]


def test_inline_decap_counters(fstub, feat_lb):
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    stub, ext = fstub
    v = vip_msg()
    assert stub.addVip(pb.VipMeta(vip=v)).success
    assert stub.addRealForVip(pb.realForVip(real=pb.Real(address="10.1.1.1", weight=1), vip=v)).success
    ext.addInlineDecapDst(ext_pb.DecapDst(address="10.200.0.1"))
    rpcs = {"inline": ext.getInlineDecapStats, "decap": ext.getDecapStats, "xpop": ext.getXpopDecapSuccessfulStats}
    before = {name: _pair(rpc(pb.Empty())) for name, rpc in rpcs.items()}
    vip_before = _pair(ext.getDecapStatsForVip(v))
    frame = bytes(Ether(src="00:11:22:33:44:55", dst="00:00:00:00:00:01") / IP(src="10.50.0.1", dst="10.200.0.1")
                  / IP(src="192.168.1.1", dst="10.0.0.1") / TCP(sport=5555, dport=80, flags="S"))
    feat_lb.run_packet(frame)
    after = {name: _pair(rpc(pb.Empty())) for name, rpc in rpcs.items()}
    assert after["inline"][0] == before["inline"][0] + 1  # sent to a decap dst
    assert after["decap"][0] == before["decap"][0] + 1  # IPv4 outer header removed
    assert after["xpop"][0] == before["xpop"][0] + 1  # inner IPv4 packet balanced again
    assert after == {"inline": _pair(feat_lb.get_inline_decap_stats()), "decap": _pair(feat_lb.get_decap_stats()),
                     "xpop": _pair(feat_lb.get_xpop_decap_successful_stats())}
    assert _pair(ext.getDecapStatsForVip(v)) == _pair(feat_lb.get_decap_stats_for_vip(SRC_VIP))
    assert _pair(ext.getDecapStatsForVip(v))[0] >= vip_before[0]
    assert_status(ext.getDecapStatsForVip, vip_msg("10.6.6.6"), grpc.StatusCode.NOT_FOUND, "10.6.6.6")


def test_down_reals(fstub, feat_lb):
    stub, ext = fstub
    v = vip_msg("10.0.0.2", 443, 17)
    key = VipKey("10.0.0.2", 443, 17)
    assert stub.addVip(pb.VipMeta(vip=v, flags=int(VipFlag.UDP_FLOW_MIGRATION))).success
    reals = [pb.Real(address=a, weight=1) for a in ("10.1.1.1", "10.1.1.2", "fc00::3")]
    assert stub.modifyRealsForVip(pb.modifiedRealsForVip(action=pb.ADD, real=pb.Reals(reals=reals), vip=v)).success
    ext.addDownReal(ext_pb.VipReal(vip=v, address="10.1.1.2"))
    ext.addDownReal(ext_pb.VipReal(vip=v, address="fc00::3"))
    assert list(ext.getDownReals(v).addresses) == ["10.1.1.2", "fc00::3"] == feat_lb.get_down_reals(key)
    assert_status(ext.addDownReal, ext_pb.VipReal(vip=v, address="10.1.1.99"), grpc.StatusCode.NOT_FOUND, "10.1.1.99")
    assert_status(ext.addDownReal, ext_pb.VipReal(vip=v, address="10.1.1"), grpc.StatusCode.INVALID_ARGUMENT,
                  "address", "10.1.1")
    assert_status(ext.removeDownReal, ext_pb.VipReal(vip=v, address="10.1.1.1"), grpc.StatusCode.NOT_FOUND,
                  "10.1.1.1")  # a real of the VIP, but not down
    assert_status(ext.addDownReal, ext_pb.VipReal(vip=vip_msg("10.0.0.9", 443, 17), address="10.1.1.1"),
                  grpc.StatusCode.NOT_FOUND, "10.0.0.9")
    assert_status(ext.getDownReals, vip_msg("10.0.0.9", 443, 17), grpc.StatusCode.NOT_FOUND)
    assert feat_lb.get_down_reals(key) == ["10.1.1.2", "fc00::3"]
    ext.removeDownReal(ext_pb.VipReal(vip=v, address="10.1.1.2"))
    assert list(ext.getDownReals(v).addresses) == ["fc00::3"]
    ext.clearDownReals(v)
    assert list(ext.getDownReals(v).addresses) == [] == feat_lb.get_down_reals(key)


def test_feature_counters(fstub, feat_lb):
    from katran import structs

    stub, ext = fstub
    assert stub.addVip(pb.VipMeta(vip=vip_msg())).success
    for rpc, msg_type, fields, getter in [
        (ext.getLbQuicPacketsStats, ext_pb.QuicPacketsStats, structs.QUIC_STATS_FIELDS,
         feat_lb.get_lb_quic_packets_stats),
        (ext.getTcpServerIdRoutingStats, ext_pb.TprPacketsStats, structs.TPR_STATS_FIELDS,
         feat_lb.get_tcp_server_id_routing_stats),
        (ext.getUdpStableRoutingStats, ext_pb.StableRtPacketsStats, structs.STABLE_RT_STATS_FIELDS,
         feat_lb.get_udp_stable_routing_stats),
    ]:
        assert tuple(f.name for f in msg_type.DESCRIPTOR.fields) == fields  # Katran's names, in struct order
        got = rpc(pb.Empty())
        assert {f: getattr(got, f) for f in fields} == getter()
    for rpc, getter in [
        (ext.getUdpFlowMigrationStats, feat_lb.get_udp_flow_migration_stats),
        (ext.getGlobalLruStats, feat_lb.get_global_lru_stats),
        (ext.getQuicIcmpStats, feat_lb.get_quic_icmp_stats),
        (ext.getSrcRoutingStats, feat_lb.get_src_routing_stats),
    ]:
        assert _pair(rpc(pb.Empty())) == _pair(getter()), rpc
    assert _pair(ext.getSidRoutingStatsForVip(vip_msg())) == _pair(feat_lb.get_sid_routing_stats_for_vip(SRC_VIP))
    assert_status(ext.getSidRoutingStatsForVip, vip_msg("10.6.6.6"), grpc.StatusCode.NOT_FOUND, "10.6.6.6")


def test_quic_counters_count_packets(fstub, feat_lb):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    stub, ext = fstub
    v = vip_msg("10.0.0.3", 443, 17)
    assert stub.addVip(pb.VipMeta(vip=v, flags=int(VipFlag.QUIC_VIP))).success
    assert stub.addRealForVip(pb.realForVip(real=pb.Real(address="10.1.1.1", weight=1), vip=v)).success
    before = ext.getLbQuicPacketsStats(pb.Empty())
    # a QUIC long-header Initial packet: no server id to route by
    quic = bytes([0xC0]) + (1).to_bytes(4, "big") + bytes([8]) + bytes(8) + bytes([0]) + bytes(1200)
    frame = bytes(Ether(src="00:11:22:33:44:55", dst="00:00:00:00:00:01") / IP(src="192.168.1.1", dst="10.0.0.3")
                  / UDP(sport=7777, dport=443) / quic)
    assert feat_lb.run_packet(frame).verdict == "XDP_TX"
    after = ext.getLbQuicPacketsStats(pb.Empty())
    assert after.cid_initial == before.cid_initial + 1  # counted as an Initial, the rest untouched
    assert after.cid_routed == before.cid_routed and after.cid_v1 == before.cid_v1
    assert {f.name: getattr(after, f.name) for f in after.DESCRIPTOR.fields} == feat_lb.get_lb_quic_packets_stats()


def test_features_off_is_failed_precondition(ext, lb):
    """The module's lb has no lpm_src_lookup / inline decap: those calls say so, nothing changes."""
    for rpc, request in [
        (ext.addSrcRoutingRule, ext_pb.SrcRoutingRule(srcs=["10.0.0.0/8"], dst="10.9.9.9")),
        (ext.delSrcRoutingRule, ext_pb.SrcPrefixes(srcs=["10.0.0.0/8"])),
        (ext.clearAllSrcRoutingRules, pb.Empty()),
        (ext.addInlineDecapDst, ext_pb.DecapDst(address="10.200.0.1")),
        (ext.delInlineDecapDst, ext_pb.DecapDst(address="10.200.0.1")),
    ]:
        assert_status(rpc, request, grpc.StatusCode.FAILED_PRECONDITION)
    assert_status(ext.addSrcRoutingRule, ext_pb.SrcRoutingRule(srcs=["10.0.0.0/8"], dst="10.9.9.9"),
                  grpc.StatusCode.FAILED_PRECONDITION, "lpm_src_lookup")
    assert_status(ext.addInlineDecapDst, ext_pb.DecapDst(address="10.200.0.1"),
                  grpc.StatusCode.FAILED_PRECONDITION, "inline_decap")
    assert lb.get_src_routing_rule() == {} and lb.get_inline_decap_dst() == []
    assert dict(ext.getSrcRoutingRule(pb.Empty()).rules) == {}
    assert list(ext.getInlineDecapDst(pb.Empty()).addresses) == []


# ------------------------------------------------------------------ GrpcKatranClient (katran-cli's transport)
def test_client_feature_methods(feat_channel, feat_lb):
    from katran.models import LbStats, ModifyAction, Real
    from katran_grpc.client import GrpcKatranClient, RpcFailed

    target = feat_channel._channel.target().decode()
    vip = VipKey("10.0.0.4", 443, 17)
    try:
        with GrpcKatranClient(target, timeout=10) as kc:
            kc.add_vip(vip, int(VipFlag.SRC_ROUTING))
            kc.modify_reals_for_vip(ModifyAction.ADD, [Real("10.1.1.1"), Real("10.1.1.2")], vip)
            kc.add_src_routing_rule(["10.0.0.0/8"], "10.1.1.2")
            assert kc.get_src_routing_rule() == {"10.0.0.0/8": "10.1.1.2"} == feat_lb.get_src_routing_rule()
            assert kc.get_src_routing_rule_size() == 1
            assert kc.get_src_routing_stats() == feat_lb.get_src_routing_stats()
            with pytest.raises(RpcFailed) as info:
                kc.add_src_routing_rule(["10.0.0.0/99"], "10.1.1.2")
            assert info.value.code == "INVALID_ARGUMENT" and "10.0.0.0/99" in info.value.message
            from katran.errors import ValidationError

            with pytest.raises(ValidationError, match="srcs"):
                kc.add_src_routing_rule("10.0.0.0/8", "10.1.1.2")  # one string, not a list
            kc.del_src_routing_rule(["10.0.0.0/8"])
            kc.add_src_routing_rule(["11.0.0.0/8"], "10.1.1.1")
            kc.clear_all_src_routing_rules()
            assert kc.get_src_routing_rule() == {}

            kc.add_inline_decap_dst("10.200.0.1")
            assert kc.get_inline_decap_dst() == ["10.200.0.1"]
            with pytest.raises(RpcFailed) as info:
                kc.add_inline_decap_dst("10.200.0.1")
            assert info.value.code == "ALREADY_EXISTS"
            kc.del_inline_decap_dst("10.200.0.1")
            assert kc.get_inline_decap_dst() == []
            for method in ("get_inline_decap_stats", "get_decap_stats", "get_xpop_decap_successful_stats",
                           "get_udp_flow_migration_stats", "get_global_lru_stats", "get_quic_icmp_stats"):
                got = getattr(kc, method)()
                assert isinstance(got, LbStats) and got == getattr(feat_lb, method)(), method
            assert kc.get_decap_stats_for_vip(vip) == feat_lb.get_decap_stats_for_vip(vip)
            assert kc.get_sid_routing_stats_for_vip(vip) == feat_lb.get_sid_routing_stats_for_vip(vip)
            for method in ("get_lb_quic_packets_stats", "get_tcp_server_id_routing_stats",
                           "get_udp_stable_routing_stats"):
                got = getattr(kc, method)()
                assert got == getattr(feat_lb, method)() and list(got) == list(getattr(feat_lb, method)())

            kc.add_down_real(vip, "10.1.1.1")
            assert kc.get_down_reals(vip) == ["10.1.1.1"] == feat_lb.get_down_reals(vip)
            kc.remove_down_real(vip, "10.1.1.1")
            kc.add_down_real(vip, "10.1.1.2")
            kc.clear_down_reals(vip)
            assert kc.get_down_reals(vip) == []
            with pytest.raises(RpcFailed) as info:
                kc.remove_down_real(vip, "10.1.1.2")
            assert info.value.code == "NOT_FOUND"
    finally:
        _reset_features(feat_lb)


def test_other_transports_answer_unimplemented():
    """KatranClient's default for the feature methods: RpcFailed(UNIMPLEMENTED), no call made."""
    from katran_frontend.client import KatranClient, RpcFailed

    stubbed = {name: (lambda self, *a, **kw: None) for name in KatranClient.__abstractmethods__}
    Minimal = type("Minimal", (KatranClient,), stubbed)
    kc = Minimal()
    vip = VipKey("10.0.0.1", 80, 6)
    calls = [
        ("addSrcRoutingRule", lambda: kc.add_src_routing_rule(["10.0.0.0/8"], "10.1.1.1")),
        ("getSrcRoutingRule", kc.get_src_routing_rule),
        ("addInlineDecapDst", lambda: kc.add_inline_decap_dst("10.1.1.1")),
        ("getDownReals", lambda: kc.get_down_reals(vip)),
        ("getLbQuicPacketsStats", kc.get_lb_quic_packets_stats),
        ("getSidRoutingStatsForVip", lambda: kc.get_sid_routing_stats_for_vip(vip)),
    ]
    for rpc, call in calls:
        with pytest.raises(RpcFailed) as info:
            call()
        assert (info.value.rpc, info.value.code) == (rpc, "UNIMPLEMENTED")
        assert "Minimal" in info.value.message
    try:
        from katran_thrift.client import ThriftKatranClient
    except ImportError:
        return  # thrift extra not installed; the base class behaviour is checked above
    with pytest.raises(RpcFailed) as info:
        ThriftKatranClient("127.0.0.1:1").get_inline_decap_dst()  # no connection attempted
    assert info.value.code == "UNIMPLEMENTED"


# ------------------------------------------------------------------ health, reflection
def test_health_service(channel):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "lb.katran.KatranService", "lb.katran.ext.KatranExtService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == \
            health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection(channel):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"lb.katran.KatranService", "lb.katran.ext.KatranExtService", "grpc.health.v1.Health"} <= names


# ------------------------------------------------------------------ wire compatibility with Katran's proto
def test_proto_matches_katran_names():
    """Package, service, RPC and field numbers are Katran's (as its katran.proto declares them)."""
    svc = pb.DESCRIPTOR.services_by_name["KatranService"]
    assert svc.full_name == "lb.katran.KatranService"
    expected = {
        "changeMac": ("Mac", "Bool"), "getMac": ("Empty", "Mac"), "addVip": ("VipMeta", "Bool"),
        "delVip": ("Vip", "Bool"), "getAllVips": ("Empty", "Vips"), "modifyVip": ("VipMeta", "Bool"),
        "modifyReal": ("RealMeta", "Bool"), "getVipFlags": ("Vip", "Flags"), "getRealFlags": ("Real", "Flags"),
        "addRealForVip": ("realForVip", "Bool"), "delRealForVip": ("realForVip", "Bool"),
        "modifyRealsForVip": ("modifiedRealsForVip", "Bool"), "getRealsForVip": ("Vip", "Reals"),
        "modifyQuicRealsMapping": ("modifiedQuicReals", "Bool"), "getQuicRealsMapping": ("Empty", "QuicReals"),
        "getStatsForVip": ("Vip", "Stats"), "getLruStats": ("Empty", "Stats"), "getLruMissStats": ("Empty", "Stats"),
        "getLruFallbackStats": ("Empty", "Stats"), "getIcmpTooBigStats": ("Empty", "Stats"),
        "addHealthcheckerDst": ("Healthcheck", "Bool"), "delHealthcheckerDst": ("Somark", "Bool"),
        "getHealthcheckersDst": ("Empty", "hcMap"),
    }
    got = {m.name: (m.input_type.name, m.output_type.name) for m in svc.methods}
    assert got == expected
    fields = {name: {f.name: f.number for f in msg.fields} for name, msg in pb.DESCRIPTOR.message_types_by_name.items()}
    assert fields["Vip"] == {"address": 1, "port": 2, "protocol": 3}
    assert fields["VipMeta"] == {"vip": 1, "flags": 2, "setFlag": 3}
    assert fields["RealMeta"] == {"address": 1, "flags": 2, "setFlag": 3}
    assert fields["Real"] == {"address": 1, "weight": 2, "flags": 3}
    assert fields["modifiedRealsForVip"] == {"action": 1, "real": 2, "vip": 3}
    assert fields["hcMap"] == {"healthchecks": 1}
    # a Katran VipMeta on the wire: vip{address "10.0.0.1" port 80 protocol 6} flags 1 setFlag true
    raw = bytes.fromhex("0a0e0a0831302e302e302e311050180610011801")
    msg = pb.VipMeta.FromString(raw)
    assert (msg.vip.address, msg.vip.port, msg.vip.protocol, msg.flags, msg.setFlag) == ("10.0.0.1", 80, 6, 1, True)
    assert msg.SerializeToString() == raw


# ------------------------------------------------------------------ generated code does not drift
def test_regenerated_stubs_are_committed(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools not installed")
    import importlib.util

    spec = importlib.util.spec_from_file_location("katran_grpc_regen", GRPC_DIR / "regen.py")
    regen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regen)
    committed = GRPC_DIR / "katran_grpc"
    header = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", (committed / "katran_pb2_grpc.py").read_text())
    import importlib.metadata

    tools_version = importlib.metadata.version("grpcio-tools")
    if header is None or header.group(1) != tools_version:
        pytest.skip(f"stubs were generated by grpcio-tools {header and header.group(1)}, "
                    f"installed is {tools_version}: run frontends/grpc/regen.sh")
    regen.generate(tmp_path)
    for name in regen.generated_names():
        assert filecmp.cmp(tmp_path / name, committed / name, shallow=False), f"{name} drifted: run regen.sh"


# ------------------------------------------------------------------ TLS / mTLS
def _make_pki(tmp: Path) -> dict:
    """A CA, a server cert for 127.0.0.1/localhost and a client cert (PEM files)."""
    x509 = pytest.importorskip("cryptography.x509", reason="cryptography not installed")
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject, key, issuer, issuer_key, ca=False, san=None):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    files = {}

    def write(label, obj):
        path = tmp / f"{label}.pem"
        if hasattr(obj, "private_bytes"):
            data = obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        else:
            data = obj.public_bytes(serialization.Encoding.PEM)
        path.write_bytes(data)
        files[label] = str(path)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("katran test ca", ca_key, "katran test ca", ca_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = cert("localhost", srv_key, "katran test ca", ca_key,
               san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli = cert("katran client", cli_key, "katran test ca", ca_key)
    for label, obj in [("ca", ca), ("server", srv), ("server_key", srv_key), ("client", cli), ("client_key", cli_key)]:
        write(label, obj)
    return files


def _get_mac(address, creds, timeout=5):
    ch = grpc.secure_channel(address, creds) if creds else grpc.insecure_channel(address)
    with ch:
        return pb_grpc.KatranServiceStub(ch).getMac(pb.Empty(), timeout=timeout).mac


def test_tls_and_mtls(lb, tmp_path):
    pki = _make_pki(tmp_path)
    ca = Path(pki["ca"]).read_bytes()
    tls = KatranGrpcServer(lb, "127.0.0.1:0", credentials=server_credentials(pki["server"], pki["server_key"]))
    mtls = KatranGrpcServer(lb, "127.0.0.1:0",
                            credentials=server_credentials(pki["server"], pki["server_key"], pki["ca"]))
    tls.start()
    mtls.start()
    try:
        assert _get_mac(tls.address, grpc.ssl_channel_credentials(root_certificates=ca)) == lb.get_mac()
        with pytest.raises(grpc.RpcError):
            _get_mac(tls.address, None)  # plaintext client against TLS
        client = grpc.ssl_channel_credentials(root_certificates=ca, private_key=Path(pki["client_key"]).read_bytes(),
                                              certificate_chain=Path(pki["client"]).read_bytes())
        assert _get_mac(mtls.address, client) == lb.get_mac()
        with pytest.raises(grpc.RpcError):
            _get_mac(mtls.address, grpc.ssl_channel_credentials(root_certificates=ca))  # no client cert
    finally:
        tls.stop(0)
        mtls.stop(0)


def test_tls_flag_errors(tmp_path):
    from katran.errors import ValidationError

    with pytest.raises(ValidationError, match="tls_key"):
        server_credentials(cert=str(tmp_path / "c.pem"))
    with pytest.raises(ValidationError, match="tls_cert.*cannot read"):
        server_credentials(cert=str(tmp_path / "missing.pem"), key=str(tmp_path / "missing.pem"))


# ------------------------------------------------------------------ server flags and start-up errors
def _parse(argv):
    return server_mod.build_flags().parse(argv)


def test_flags_map_onto_config():
    go = _parse(["-intf=lo", "-hc_intf", "lo", "-ipip_intf=ip0", "-ipip6_intf", "ip60", "-default_mac",
                 "02:00:00:00:00:09", "-priority=7", "-map_path", "/sys/fs/bpf/root", "-prog_pos=5",
                 "-hc_forwarding=false", "-lru_size", "2000", "-forwarding_cores=0", "-numa_nodes", "0",
                 "-balancer_prog", "/x/balancer.o", "-healthchecker_prog=/x/hc.o", "-testing"])
    gnu = _parse(["--intf=lo", "--hc-intf", "lo", "--ipip_intf", "ip0", "--ipip6-intf=ip60", "--default_mac",
                  "02:00:00:00:00:09", "--priority", "7", "--map-path=/sys/fs/bpf/root", "--prog_pos", "5",
                  "--hc_forwarding=false", "--lru-size=2000", "--forwarding_cores", "0", "--numa_nodes=0",
                  "--balancer_prog=/x/balancer.o", "--healthchecker-prog", "/x/hc.o", "--testing"])
    a, b = config_from_flags(go), config_from_flags(gnu)
    assert a == b
    assert a.main_interface == "lo" and a.hc_interface == "lo"
    assert (a.v4_tun_interface, a.v6_tun_interface) == ("ip0", "ip60")
    assert a.default_mac == bytes.fromhex("020000000009")
    assert (a.priority, a.root_map_path, a.root_map_pos) == (7, "/sys/fs/bpf/root", 5)
    assert a.enable_hc is False and a.lru_size == 2000
    assert tuple(a.forwarding_cores) == (0,) and tuple(a.numa_nodes) == (0,)
    assert (a.balancer_prog_path, a.healthchecking_prog_path) == ("/x/balancer.o", "/x/hc.o")
    assert a.testing is True


def test_flag_defaults_are_katrans_except_listen_address():
    ns = _parse([])
    cfg = config_from_flags(ns)
    assert ns.server == "unix:/run/katran/katran-grpc.sock"  # not Katran's 0.0.0.0:50051: docs/security.md
    assert ns.shutdown_delay == 10000
    assert cfg.main_interface == "eth0"
    assert cfg.default_mac == bytes.fromhex("000000000001")
    assert (cfg.priority, cfg.root_map_pos, cfg.lru_size) == (2307, 2, 8000000)
    assert cfg.enable_hc is True and cfg.root_map_path is None
    assert cfg.balancer_prog_path is None and cfg.healthchecking_prog_path is None  # packaged objects
    assert cfg.hash_function == HashFunction.MAGLEV_V2  # as Katran's example server
    assert (cfg.v4_tun_interface, cfg.v6_tun_interface) == ("ipip0", "ipip60")


@pytest.mark.privileged
@pytest.mark.parametrize(
    "argv, needle",
    [
        (["-default_mac", "00:11:22"], "default_mac"),
        (["-forwarding_cores", "0,x"], "forwarding_cores"),
        (["-forwarding_cores", "4096"], "forwarding_cores"),
        (["-prog_pos", "5000"], "prog_pos"),
        (["-hash_function", "rendezvous"], "hash_function"),
        (["-tls_cert", "/nonexistent/cert.pem", "-tls_key", "/nonexistent/key.pem"], "tls_cert"),
        (["-balancer_prog", "/nonexistent/balancer.bpf.o"], "/nonexistent/balancer.bpf.o"),
    ],
)
def test_startup_errors_are_one_line(capsys, argv, needle):
    if os.geteuid() != 0:
        pytest.skip("start-up path needs root")
    rc = server_mod.main(["-testing", "-server", "127.0.0.1:0", "-insecure", "-lru_size", "1000", "-shutdown_delay", "0", *argv])
    out, err = capsys.readouterr()
    assert rc == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("katran-server-grpc:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err and "Server listening" not in out


def test_startup_without_capabilities(capsys, monkeypatch):
    """The root check is a capability check (CapEff): a process without them fails in one line."""
    from katran.host import capabilities

    monkeypatch.setattr(capabilities, "effective_capabilities", lambda status_path="": 1 << 12)  # NET_ADMIN only
    rc = server_mod.main(["-testing", "-server", "127.0.0.1:0", "-insecure"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("katran-server-grpc: error:")]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "missing capabilities CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN" in lines[0]


def test_startup_busy_port(capsys, lb, server):
    if os.geteuid() != 0:
        pytest.skip("start-up path needs root")
    rc = server_mod.main(["-testing", "-server", server.address, "-lru_size", "1000"])
    err = capsys.readouterr().err
    assert rc == 1 and server.address in err and "Traceback" not in err


def test_bad_flags_exit_2(capsys):
    assert server_mod.main(["-no_such_flag"]) == 2
    assert "flag provided but not defined: -no_such_flag" in capsys.readouterr().err
    assert server_mod.main(["-priority", "high"]) == 2
    assert 'invalid value "high" for flag -priority' in capsys.readouterr().err
    assert server_mod.main(["-h"]) == 0
    assert "-shutdown_delay" in capsys.readouterr().err
