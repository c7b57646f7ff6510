"""Thrift frontend: Katran's KatranService over every client dialect, against a real KatranLb.

Clients are the ones the Apache Thrift compiler generated from our IDL
(katran_thrift.gen), talking to KatranThriftServer (in a thread, free port)
in each framing/protocol: THeader+binary, THeader+compact, framed+binary,
framed+compact, buffered+binary, buffered+compact.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

thrift = pytest.importorskip("thrift", reason="Apache Thrift's Python library (pip install thrift) is not installed")

REPO_ROOT = Path(__file__).resolve().parents[1]
THRIFT_DIR = REPO_ROOT / "frontends" / "thrift"

from thrift.protocol import TBinaryProtocol, TCompactProtocol  # noqa: E402
from thrift.protocol.THeaderProtocol import THeaderProtocol  # noqa: E402
from thrift.Thrift import TApplicationException, TType  # noqa: E402
from thrift.transport import TSocket, TTransport  # noqa: E402
from thrift.transport.THeaderTransport import THeaderClientType, THeaderSubprotocolID  # noqa: E402

from katran import HashFunction, KatranConfig, KatranLb, ModifyAction, QuicReal, Real, VipFlag, VipKey  # noqa: E402
from katran_thrift.gen import KatranService  # noqa: E402
from katran_thrift.gen.ttypes import (  # noqa: E402
    Action,
    Healthcheck,
    Mac,
    QuicReal as TQuicReal,
    Real as TReal,
    RealMeta,
    Vip,
    VipMeta,
)
from katran_thrift.handler import KatranThriftHandler  # noqa: E402
from katran_thrift.server import KatranThriftServer  # noqa: E402

DEFAULT_MAC = "00:00:de:ad:be:af"
DIALECTS = [
    ("header", "binary"),
    ("header", "compact"),
    ("framed", "binary"),
    ("framed", "compact"),
    ("buffered", "binary"),
    ("buffered", "compact"),
]


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def lb():
    cfg = KatranConfig(testing=True, default_mac=DEFAULT_MAC, enable_hc=True,
                       katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337")
    with KatranLb(cfg) as lb:
        yield lb


@pytest.fixture(scope="module")
def server(lb):
    srv = KatranThriftServer(KatranThriftHandler(lb), "127.0.0.1", 0)
    thread = srv.start()
    yield srv
    srv.shutdown()
    thread.join(10)
    assert not thread.is_alive(), "server thread did not stop"


@pytest.fixture(autouse=True)
def clean_lb(request):
    """Leave the shared KatranLb as a fresh one after every test."""
    yield
    if "lb" not in request.fixturenames:
        return
    lb = request.getfixturevalue("lb")
    for vip in lb.get_all_vips():
        lb.del_vip(vip)
    quic = lb.get_quic_reals_mapping()
    if quic:
        lb.modify_quic_reals_mapping(ModifyAction.DEL, quic)
    for somark in list(lb.get_healthcheckers_dst()):
        lb.del_healthchecker_dst(somark)
    lb.change_mac(DEFAULT_MAC)


def open_client(port: int, framing: str, protocol: str):
    """A generated KatranService.Client speaking one dialect; returns (client, transport)."""
    sock = TSocket.TSocket("127.0.0.1", port)
    sock.setTimeout(10_000)
    if framing == "header":
        subproto = THeaderSubprotocolID.COMPACT if protocol == "compact" else THeaderSubprotocolID.BINARY
        proto = THeaderProtocol(sock, [THeaderClientType.HEADERS], subproto)
        trans = proto.trans
    else:
        trans = TTransport.TFramedTransport(sock) if framing == "framed" else TTransport.TBufferedTransport(sock)
        factory = TCompactProtocol.TCompactProtocol if protocol == "compact" else TBinaryProtocol.TBinaryProtocol
        proto = factory(trans)
    trans.open()
    return KatranService.Client(proto), trans


@pytest.fixture(params=DIALECTS, ids=["-".join(d) for d in DIALECTS])
def client(request, server):
    cli, trans = open_client(server.port, *request.param)
    yield cli
    trans.close()


def vip(addr: str = "10.200.1.1", port: int = 80, proto: int = 6) -> Vip:
    return Vip(address=addr, port=port, protocol=proto)


def snapshot(lb: KatranLb) -> dict:
    return {
        "mac": lb.get_mac(),
        "vips": {v: (lb.get_vip_flags(v), sorted(map(repr, lb.get_reals_for_vip(v)))) for v in lb.get_all_vips()},
        "quic": lb.get_quic_reals_mapping(),
    }


def expect_error(call, *needles: str) -> str:
    with pytest.raises(TApplicationException) as info:
        call()
    assert info.value.type == TApplicationException.INTERNAL_ERROR
    for needle in needles:
        assert needle in info.value.message, (needle, info.value.message)
    return info.value.message


# ------------------------------------------------------------------ every method, every dialect
def test_addresses_are_answered_as_katran_prints_them(client, lb):
    """IPv4-mapped IPv6 in dotted form (::ffff:10.0.0.77); scoped / space-padded / non-ASCII text refused."""
    assert client.addVip(VipMeta(vip=Vip(address="::ffff:a00:4d", port=80, protocol=6), flags=0)) is True
    assert [v.address for v in client.getAllVips()] == ["::ffff:10.0.0.77"]
    before = snapshot(lb)
    for text, needle in (("fe80::1%a", "scoped"), (" 10.0.0.1", "whitespace"), ("\u00e9t\u00e9", "'\\xe9t\\xe9'")):
        msg = expect_error(lambda: client.addVip(VipMeta(vip=Vip(address=text, port=80, protocol=6), flags=0)),
                           "vip.address=", needle)
        assert msg.isascii()
    assert snapshot(lb) == before


def test_mac(client, lb):
    assert client.getMac().mac == lb.get_mac() == DEFAULT_MAC
    assert client.changeMac(Mac(mac="02:11:22:33:44:55")) is True
    assert lb.get_mac() == "02:11:22:33:44:55"
    assert client.getMac().mac == "02:11:22:33:44:55"


def test_vip_lifecycle_and_flags(client, lb):
    v6 = vip("fc00:1::1", 443, 17)
    assert client.addVip(VipMeta(vip=vip(), flags=int(VipFlag.NO_SPORT))) is True
    assert client.addVip(VipMeta(vip=v6, flags=0)) is True
    assert set(lb.get_all_vips()) == {VipKey("10.200.1.1", 80, 6), VipKey("fc00:1::1", 443, 17)}
    got = {(v.address, v.port, v.protocol) for v in client.getAllVips()}
    assert got == {("10.200.1.1", 80, 6), ("fc00:1::1", 443, 17)}

    assert client.getVipFlags(vip()) == int(VipFlag.NO_SPORT)
    assert client.modifyVip(VipMeta(vip=vip(), flags=int(VipFlag.NO_LRU))) is True  # setFlag defaults to true
    assert lb.get_vip_flags(VipKey("10.200.1.1", 80, 6)) == int(VipFlag.NO_SPORT | VipFlag.NO_LRU)
    assert client.modifyVip(VipMeta(vip=vip(), flags=int(VipFlag.NO_SPORT), setFlag=False)) is True
    assert client.getVipFlags(vip()) == int(VipFlag.NO_LRU)

    assert client.delVip(v6) is True
    assert lb.get_all_vips() == [VipKey("10.200.1.1", 80, 6)]
    assert [v.address for v in client.getAllVips()] == ["10.200.1.1"]


def test_reals(client, lb):
    key = VipKey("10.200.1.1", 80, 6)
    client.addVip(VipMeta(vip=vip(), flags=0))
    assert client.addRealForVip(TReal(address="10.0.0.1", weight=10, flags=0), vip()) is True
    assert lb.get_reals_for_vip(key) == [Real("10.0.0.1", 10, 0)]

    batch = [TReal(address="10.0.0.2", weight=5, flags=0), TReal(address="fc00::2", weight=7, flags=0)]
    assert client.modifyRealsForVip(Action.ADD, batch, vip()) is True
    got = {(r.address, r.weight, r.flags) for r in client.getRealsForVip(vip())}
    assert got == {("10.0.0.1", 10, 0), ("10.0.0.2", 5, 0), ("fc00::2", 7, 0)}
    assert {(str(r.address), r.weight) for r in lb.get_reals_for_vip(key)} == {
        ("10.0.0.1", 10), ("10.0.0.2", 5), ("fc00::2", 7)}

    assert client.modifyReal(RealMeta(address="10.0.0.2", flags=2)) is True
    assert lb.get_real_flags("10.0.0.2") == 2
    assert client.modifyReal(RealMeta(address="10.0.0.2", flags=2, setFlag=False)) is True
    assert lb.get_real_flags("10.0.0.2") == 0

    assert client.modifyRealsForVip(Action.DEL, [TReal(address="10.0.0.2", weight=5, flags=0)], vip()) is True
    assert client.delRealForVip(TReal(address="fc00::2", weight=7, flags=0), vip()) is True
    assert [(r.address, r.weight) for r in client.getRealsForVip(vip())] == [("10.0.0.1", 10)]
    assert lb.get_reals_for_vip(key) == [Real("10.0.0.1", 10, 0)]


def test_quic_reals_mapping(client, lb):
    reals = [TQuicReal(address="10.0.0.1", id=1001), TQuicReal(address="fc00::1", id=1002)]
    assert client.modifyQuicRealsMapping(Action.ADD, reals) is True
    assert lb.get_quic_reals_mapping() == [QuicReal("10.0.0.1", 1001), QuicReal("fc00::1", 1002)]
    got = {(r.address, r.id) for r in client.getQuicRealsMapping()}
    assert got == {("10.0.0.1", 1001), ("fc00::1", 1002)}
    assert client.modifyQuicRealsMapping(Action.DEL, reals[:1]) is True
    assert [(r.address, r.id) for r in client.getQuicRealsMapping()] == [("fc00::1", 1002)]
    assert lb.get_quic_reals_mapping() == [QuicReal("fc00::1", 1002)]


def _send_syn(lb: KatranLb, dst: str, dport: int) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="192.0.2.7", dst=dst) / TCP(
        sport=31337, dport=dport, flags="S") / b"katran"
    lb.run_packet(bytes(frame))


def test_stats(client, lb):
    pytest.importorskip("scapy", reason="scapy builds the test packet")
    client.addVip(VipMeta(vip=vip(), flags=0))
    client.addRealForVip(TReal(address="10.0.0.1", weight=1, flags=0), vip())
    before = client.getStatsForVip(vip())
    _send_syn(lb, "10.200.1.1", 80)
    _send_syn(lb, "10.200.1.1", 80)
    after = client.getStatsForVip(vip())
    key = VipKey("10.200.1.1", 80, 6)
    assert (after.v1, after.v2) == (lb.get_stats_for_vip(key).v1, lb.get_stats_for_vip(key).v2)
    assert after.v1 == before.v1 + 2 and after.v2 > before.v2
    for rpc, method in [
        (client.getLruStats, lb.get_lru_stats),
        (client.getLruMissStats, lb.get_lru_miss_stats),
        (client.getLruFallbackStats, lb.get_lru_fallback_stats),
        (client.getIcmpTooBigStats, lb.get_icmp_too_big_stats),
    ]:
        got, want = rpc(), method()
        assert (got.v1, got.v2) == (want.v1, want.v2), rpc
    assert client.getLruStats().v1 >= 2


def test_healthcheckers_dst(client, lb):
    assert client.addHealthcheckerDst(Healthcheck(somark=1000, address="10.0.0.9")) is True
    assert client.addHealthcheckerDst(Healthcheck(somark=1001, address="fc00::9")) is True
    assert client.getHealthcheckersDst() == {1000: "10.0.0.9", 1001: "fc00::9"}
    assert {k: str(v) for k, v in lb.get_healthcheckers_dst().items()} == {1000: "10.0.0.9", 1001: "fc00::9"}
    assert client.delHealthcheckerDst(1000) is True
    assert client.getHealthcheckersDst() == {1001: "fc00::9"}


# ------------------------------------------------------------------ bad input, every dialect
def test_bad_input_is_a_thrift_exception_and_changes_nothing(client, lb):
    client.addVip(VipMeta(vip=vip(), flags=0))
    client.addRealForVip(TReal(address="10.0.0.1", weight=3, flags=0), vip())
    client.changeMac(Mac(mac="02:00:00:00:00:aa"))
    before = snapshot(lb)

    expect_error(lambda: client.addVip(VipMeta(vip=vip("10.0.0.300"), flags=0)), "vip.address", "10.0.0.300")
    expect_error(lambda: client.addVip(VipMeta(vip=vip(proto=1), flags=0)), "proto")
    expect_error(lambda: client.addVip(VipMeta(vip=vip(), flags=0)), "already exists")
    expect_error(lambda: client.delVip(vip("10.9.9.9")), "10.9.9.9", "not found")
    expect_error(lambda: client.getVipFlags(vip("10.9.9.9")), "not found")
    expect_error(lambda: client.getRealsForVip(vip("10.9.9.9")), "not found")
    expect_error(lambda: client.getStatsForVip(vip("10.9.9.9")), "not found")
    expect_error(lambda: client.modifyVip(VipMeta(vip=vip("10.9.9.9"), flags=1)), "not found")
    expect_error(lambda: client.changeMac(Mac(mac="zz:00:00:00:00:01")), "mac", "zz:00:00:00:00:01")
    expect_error(lambda: client.changeMac(Mac(mac=None)), "mac")
    expect_error(lambda: client.addRealForVip(TReal(address="not-an-ip", weight=1, flags=0), vip()),
                 "real.address", "not-an-ip")
    expect_error(lambda: client.addRealForVip(TReal(address="10.0.0.2", weight=-1, flags=0), vip()), "weight")
    # a batch with one bad real changes nothing
    expect_error(lambda: client.modifyRealsForVip(
        Action.ADD, [TReal(address="10.0.0.5", weight=1, flags=0), TReal(address="10.0.0", weight=1, flags=0)], vip()),
        "10.0.0")
    expect_error(lambda: client.modifyRealsForVip(7, [TReal(address="10.0.0.5", weight=1, flags=0)], vip()),
                 "action", "7")
    expect_error(lambda: client.delRealForVip(TReal(address="10.0.0.77", weight=1, flags=0), vip()), "not found")
    expect_error(lambda: client.modifyReal(RealMeta(address="10.0.0.1/24", flags=0)), "10.0.0.1/24")
    expect_error(lambda: client.modifyQuicRealsMapping(Action.ADD, [TQuicReal(address="bad", id=5)]), "bad")
    expect_error(lambda: client.addRealForVip(TReal(address="10.0.0.3", weight=1, flags=0), None), "vip")

    assert snapshot(lb) == before
    # the connection is still usable after every error
    assert client.getMac().mac == "02:00:00:00:00:aa"
    assert [(r.address, r.weight) for r in client.getRealsForVip(vip())] == [("10.0.0.1", 3)]


# ------------------------------------------------------------------ wire contract
EXPECTED_METHODS = {
    # name: [(field id, thrift type, name), ...] of the request, as Katran's katran.thrift
    "changeMac": [(1, TType.STRUCT, "newMac")],
    "getMac": [],
    "addVip": [(1, TType.STRUCT, "vipMeta")],
    "delVip": [(1, TType.STRUCT, "vip")],
    "getAllVips": [],
    "modifyVip": [(1, TType.STRUCT, "vipMeta")],
    "modifyReal": [(1, TType.STRUCT, "realMeta")],
    "getVipFlags": [(1, TType.STRUCT, "vip")],
    "addRealForVip": [(1, TType.STRUCT, "real"), (2, TType.STRUCT, "vip")],
    "delRealForVip": [(1, TType.STRUCT, "real"), (2, TType.STRUCT, "vip")],
    "modifyRealsForVip": [(1, TType.I32, "action"), (2, TType.LIST, "real"), (3, TType.STRUCT, "vip")],
    "getRealsForVip": [(1, TType.STRUCT, "vip")],
    "modifyQuicRealsMapping": [(1, TType.I32, "action"), (2, TType.LIST, "reals")],
    "getQuicRealsMapping": [],
    "getStatsForVip": [(1, TType.STRUCT, "vip")],
    "getLruStats": [],
    "getLruMissStats": [],
    "getLruFallbackStats": [],
    "getIcmpTooBigStats": [],
    "addHealthcheckerDst": [(1, TType.STRUCT, "healthcheck")],
    "delHealthcheckerDst": [(1, TType.I32, "somark")],
    "getHealthcheckersDst": [],
}
EXPECTED_RESULTS = {
    "changeMac": TType.BOOL, "getMac": TType.STRUCT, "addVip": TType.BOOL, "delVip": TType.BOOL,
    "getAllVips": TType.LIST, "modifyVip": TType.BOOL, "modifyReal": TType.BOOL, "getVipFlags": TType.I64,
    "addRealForVip": TType.BOOL, "delRealForVip": TType.BOOL, "modifyRealsForVip": TType.BOOL,
    "getRealsForVip": TType.LIST, "modifyQuicRealsMapping": TType.BOOL, "getQuicRealsMapping": TType.LIST,
    "getStatsForVip": TType.STRUCT, "getLruStats": TType.STRUCT, "getLruMissStats": TType.STRUCT,
    "getLruFallbackStats": TType.STRUCT, "getIcmpTooBigStats": TType.STRUCT, "addHealthcheckerDst": TType.BOOL,
    "delHealthcheckerDst": TType.BOOL, "getHealthcheckersDst": TType.MAP,
}
EXPECTED_STRUCTS = {
    "Vip": [(1, TType.STRING, "address"), (2, TType.I32, "port"), (3, TType.I32, "protocol")],
    "VipMeta": [(1, TType.STRUCT, "vip"), (2, TType.I64, "flags"), (3, TType.BOOL, "setFlag")],
    "RealMeta": [(1, TType.STRING, "address"), (2, TType.I32, "flags"), (3, TType.BOOL, "setFlag")],
    "Real": [(1, TType.STRING, "address"), (2, TType.I32, "weight"), (3, TType.I32, "flags")],
    "QuicReal": [(1, TType.STRING, "address"), (2, TType.I32, "id")],
    "Mac": [(1, TType.STRING, "mac")],
    "Stats": [(1, TType.I64, "v1"), (2, TType.I64, "v2")],
    "Healthcheck": [(1, TType.I32, "somark"), (2, TType.STRING, "address")],
}


def _fields(cls) -> list:
    return [(s[0], s[1], s[2]) for s in cls.thrift_spec if s is not None]


def test_idl_matches_katran_service():
    from katran_thrift.gen import ttypes

    methods = {n for n in vars(KatranService.Iface) if not n.startswith("_")}
    assert methods == set(EXPECTED_METHODS)
    for name, fields in EXPECTED_METHODS.items():
        assert _fields(getattr(KatranService, f"{name}_args")) == fields, name
        result = _fields(getattr(KatranService, f"{name}_result"))
        assert result == [(0, EXPECTED_RESULTS[name], "success")], name
    for name, fields in EXPECTED_STRUCTS.items():
        assert _fields(getattr(ttypes, name)) == fields, name
    assert ttypes.VipMeta().setFlag is True and ttypes.RealMeta().setFlag is True
    assert (ttypes.Action.ADD, ttypes.Action.DEL) == (0, 1)
    idl = (THRIFT_DIR / "katran_thrift" / "katran.thrift").read_text()
    assert re.search(r"^namespace cpp2 lb\.katran$", idl, re.M)
    assert re.search(r"^service KatranService \{", idl, re.M)


def _compiler_version():
    exe = shutil.which("thrift")
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[-1]


def test_generated_code_is_up_to_date(tmp_path):
    version = _compiler_version()
    if version is None:
        pytest.skip("the Apache Thrift compiler is not installed (apt-get install thrift-compiler)")
    gen = THRIFT_DIR / "katran_thrift" / "gen"
    committed = re.search(r"Autogenerated by Thrift Compiler \(([^)]+)\)", (gen / "ttypes.py").read_text()).group(1)
    if committed != version:
        pytest.skip(f"committed code is from thrift {committed}, the installed compiler is {version}")
    out = tmp_path / "gen"
    subprocess.run(["sh", str(THRIFT_DIR / "regen.sh"), str(out)], check=True, capture_output=True)
    names = sorted(p.name for p in gen.glob("*.py"))
    assert sorted(p.name for p in out.glob("*.py")) == names
    match, mismatch, errors = filecmp.cmpfiles(gen, out, names, shallow=False)
    assert (mismatch, errors) == ([], []), "run frontends/thrift/regen.sh and commit the result"


# ------------------------------------------------------------------ server behaviour
def test_all_dialects_share_one_port_at_once(server, lb):
    clients = [open_client(server.port, *d) for d in DIALECTS]
    try:
        for i, (cli, _) in enumerate(clients):
            cli.addVip(VipMeta(vip=vip(f"10.201.0.{i + 1}"), flags=0))
        for cli, _ in clients:
            assert len(cli.getAllVips()) == len(DIALECTS)
    finally:
        for _, trans in clients:
            trans.close()
    assert len(lb.get_all_vips()) == len(DIALECTS)


class _Exploding:
    """A stand-in KatranLb whose calls fail with a non-katran exception."""

    def get_mac(self):
        raise RuntimeError("boom in get_mac")


def test_unexpected_error_reaches_client_with_message():
    srv = KatranThriftServer(KatranThriftHandler(_Exploding()), "127.0.0.1", 0)
    thread = srv.start()
    try:
        cli, trans = open_client(srv.port, "buffered", "binary")
        expect_error(cli.getMac, "RuntimeError", "boom in get_mac")
        expect_error(cli.getMac, "boom")  # same connection, still answered
        trans.close()
    finally:
        srv.shutdown()
        thread.join(10)
    assert not thread.is_alive()


def test_shutdown_closes_open_connections(lb):
    srv = KatranThriftServer(KatranThriftHandler(lb), "127.0.0.1", 0)
    thread = srv.start()
    cli, trans = open_client(srv.port, "framed", "compact")
    assert cli.getMac().mac == DEFAULT_MAC
    srv.shutdown()
    thread.join(10)
    assert not thread.is_alive()
    with pytest.raises(TTransport.TTransportException):
        cli.getMac()
    trans.close()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", srv.port)) != 0


# ------------------------------------------------------------------ katran-server-thrift
def _server_env() -> dict:
    return dict(os.environ)  # the frontends are installed (pip install -e .)


def _run_server(*flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "katran_thrift.server", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_server_env(), cwd=str(THRIFT_DIR),
    )


def _listening_port(proc: subprocess.Popen) -> int:
    line = proc.stdout.readline()
    match = re.match(r"Server listening on 127\.0\.0\.1:(\d+)$", line.strip())
    if not match:
        proc.kill()
        raise AssertionError(f"unexpected first line {line!r}; stderr: {proc.stderr.read()}")
    return int(match.group(1))


@pytest.mark.privileged
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_server_command_serves_and_stops_on_signal(sig):
    proc = _run_server("-server", "127.0.0.1:0", "-insecure", "--testing", "-hc_forwarding=false", "-shutdown_delay", "300",
                       "-default_mac", "02:00:00:00:00:07")
    try:
        port = _listening_port(proc)
        cli, trans = open_client(port, "header", "compact")
        assert cli.getMac().mac == "02:00:00:00:00:07"
        assert cli.addVip(VipMeta(vip=vip(), flags=0)) is True
        started = time.monotonic()
        proc.send_signal(sig)
        assert cli.getAllVips()[0].address == "10.200.1.1"  # still serving during the shutdown delay
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - started >= 0.25
        trans.close()
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["-default_mac", "zz:zz"], ["default_mac", "zz:zz"]),
        (["--forwarding_cores", "0,x"], ["forwarding_cores", "x"]),
        (["-server", "localhost"], ["-server", "localhost"]),
        (["-priority", "70000"], ["priority", "70000"]),
        (["-balancer_prog", "/nonexistent/balancer.bpf.o"], ["/nonexistent/balancer.bpf.o"]),
    ],
    ids=["mac", "cores", "server", "priority", "prog"],
)
@pytest.mark.privileged
def test_server_command_startup_errors_are_one_line(flags, needles):
    proc = _run_server("--testing", "-server", "127.0.0.1:0", "-insecure", *flags)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode not in (0, None)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.privileged
def test_server_command_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = _run_server("--testing", "-hc_forwarding=false", "--server", f"127.0.0.1:{port}")
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 1
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and str(port) in err, err


def test_server_flags_go_and_gnu_style():
    from katran_thrift.server import build_flags, config_from_flags

    fs = build_flags()
    go = fs.parse(["-intf", "lo", "-hc_forwarding=false", "-lru_size=1000", "-testing", "-prog_pos", "3",
                   "-default_mac=02:00:00:00:00:09", "-forwarding_cores", "0", "-hash_function", "maglev"])
    gnu = fs.parse(["--intf=lo", "--hc-forwarding=false", "--lru-size", "1000", "--testing=true",
                    "--prog_pos=3", "--default-mac", "02:00:00:00:00:09", "--forwarding-cores=0",
                    "--hash-function=maglev"])
    names = ("intf", "hc_forwarding", "lru_size", "testing", "prog_pos", "default_mac", "forwarding_cores",
             "hash_function")
    assert [getattr(go, n) for n in names] == [getattr(gnu, n) for n in names]
    cfg = config_from_flags(go)
    assert (cfg.main_interface, cfg.enable_hc, cfg.lru_size, cfg.testing, cfg.root_map_pos) == (
        "lo", False, 1000, True, 3)
    assert cfg.default_mac == bytes.fromhex("020000000009") and tuple(cfg.forwarding_cores) == (0,)
    assert cfg.hash_function == HashFunction.MAGLEV

    d = fs.parse([])
    assert (d.server, d.intf, d.hc_intf, d.ipip_intf, d.ipip6_intf) == ("unix:/run/katran/katran-thrift.sock", "eth0", "", "ipip0", "ipip60")
    assert (d.default_mac, d.priority, d.map_path, d.prog_pos, d.hc_forwarding) == (
        "00:00:00:00:00:01", 2307, "", 2, True)
    assert (d.shutdown_delay, d.lru_size, d.forwarding_cores, d.numa_nodes, d.testing) == (10000, 8000000, "", "",
                                                                                          False)
    assert config_from_flags(fs.parse(["-testing"])).hash_function == HashFunction.MAGLEV_V2  # as katran-server-grpc


def test_server_flags_match_grpc_server():
    grpc_server = pytest.importorskip("katran_grpc.server", reason="the gRPC frontend (grpcio) is not installed")
    from katran_thrift.server import build_flags

    ours, theirs = vars(build_flags().parse([])), vars(grpc_server.build_flags().parse([]))
    grpc_only = {"max_concurrent_rpcs", "max_concurrent_streams", "keepalive_time", "keepalive_timeout"}
    thrift_only = {"max_string_size", "max_container_size", "read_timeout"}  # transport options of each
    assert set(ours) - thrift_only == set(theirs) - grpc_only
    assert {k: v for k, v in ours.items() if k not in thrift_only | {"server"}} == {
        k: v for k, v in theirs.items() if k not in grpc_only | {"server"}}


def test_server_command_bad_flag_is_go_style_usage_error():
    proc = _run_server("-no_such_flag", "1")
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2
    assert err.splitlines()[0] == "katran-server-thrift: flag provided but not defined: -no_such_flag"
    assert "Traceback" not in err


# ------------------------------------------------------------------ ThriftKatranClient (katran-cli's transport)
@pytest.fixture(params=DIALECTS, ids=["-".join(d) for d in DIALECTS])
def kc(request, server):
    from katran_thrift.client import ThriftKatranClient

    framing, protocol = request.param
    with ThriftKatranClient(f"127.0.0.1:{server.port}", transport=framing, protocol=protocol, timeout=10) as c:
        yield c


def test_client_every_method(kc, lb):
    from katran_frontend.client import KatranClient

    assert isinstance(kc, KatranClient)
    vk, vk6 = VipKey("10.200.1.1", 80, 6), VipKey("fc00:1::1", 443, 17)
    kc.change_mac("02:00:00:00:00:bb")
    assert kc.get_mac() == lb.get_mac() == "02:00:00:00:00:bb"
    kc.add_vip(vk, int(VipFlag.NO_SPORT))
    kc.add_vip(vk6)
    assert set(kc.get_all_vips()) == set(lb.get_all_vips()) == {vk, vk6}
    kc.modify_vip(vk, int(VipFlag.NO_LRU))
    kc.modify_vip(vk, int(VipFlag.NO_SPORT), set_flag=False)
    assert kc.get_vip_flags(vk) == lb.get_vip_flags(vk) == int(VipFlag.NO_LRU)
    kc.add_real_for_vip(Real("10.0.0.1", 4), vk)
    kc.modify_reals_for_vip(ModifyAction.ADD, [Real("10.0.0.2", 6), Real("10.0.0.3", 1)], vk)
    kc.del_real_for_vip(Real("10.0.0.3"), vk)
    assert sorted(kc.get_reals_for_vip(vk), key=repr) == sorted(lb.get_reals_for_vip(vk), key=repr) == [
        Real("10.0.0.1", 4), Real("10.0.0.2", 6)]
    kc.modify_real("10.0.0.2", 2)
    assert lb.get_real_flags("10.0.0.2") == 2
    kc.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.0.0.1", 77)])
    assert kc.get_quic_reals_mapping() == lb.get_quic_reals_mapping() == [QuicReal("10.0.0.1", 77)]
    kc.modify_quic_reals_mapping(ModifyAction.DEL, [QuicReal("10.0.0.1", 77)])
    assert kc.get_quic_reals_mapping() == []
    for getter in ("get_lru_stats", "get_lru_miss_stats", "get_lru_fallback_stats", "get_icmp_too_big_stats"):
        assert getattr(kc, getter)() == getattr(lb, getter)(), getter
    assert kc.get_stats_for_vip(vk) == lb.get_stats_for_vip(vk)
    kc.del_vip(vk6)
    assert lb.get_all_vips() == [vk]


def test_client_errors(kc, lb):
    from katran_frontend.client import OperationFailed, RpcFailed

    kc.add_vip(VipKey("10.200.1.1", 80, 6))
    before = snapshot(lb)
    with pytest.raises(OperationFailed) as info:
        kc.add_vip(VipKey("10.200.1.1", 80, 6))
    assert info.value.rpc == "addVip" and "already exists" in info.value.message
    with pytest.raises(OperationFailed, match="zz:zz"):
        kc.change_mac("zz:zz")
    with pytest.raises(RpcFailed) as info:
        kc.get_vip_flags(VipKey("10.9.9.9", 80, 6))
    assert info.value.rpc == "getVipFlags" and "not found" in info.value.message
    with pytest.raises(RpcFailed) as info:
        kc.get_real_stats(1)
    assert info.value.code == "UNIMPLEMENTED"
    assert snapshot(lb) == before
    assert kc.get_all_vips() == [VipKey("10.200.1.1", 80, 6)]  # still connected and usable


def test_client_server_down_and_reconnect(lb):
    from katran_frontend.client import RpcFailed
    from katran_thrift.client import ThriftKatranClient

    srv = KatranThriftServer(KatranThriftHandler(lb), "127.0.0.1", 0)
    port = srv.port
    thread = srv.start()
    kc = ThriftKatranClient(f"127.0.0.1:{port}", timeout=5)
    assert kc.get_mac() == DEFAULT_MAC
    srv.shutdown()
    thread.join(10)
    with pytest.raises(RpcFailed) as info:
        kc.get_mac()
    assert info.value.code == "UNAVAILABLE"
    srv2 = KatranThriftServer(KatranThriftHandler(lb), "127.0.0.1", port)
    thread2 = srv2.start()
    try:
        assert kc.get_mac() == DEFAULT_MAC  # reconnected by itself
    finally:
        kc.close()
        srv2.shutdown()
        thread2.join(10)


def test_client_bad_arguments():
    from katran import ValidationError
    from katran_thrift.client import ThriftKatranClient

    with pytest.raises(ValidationError, match="server"):
        ThriftKatranClient("localhost")
    with pytest.raises(ValidationError, match="transport"):
        ThriftKatranClient("127.0.0.1:1", transport="http")
    with pytest.raises(ValidationError, match="protocol"):
        ThriftKatranClient("127.0.0.1:1", protocol="json")


def test_katran_cli_over_thrift(server, lb, capsys):
    from katran_frontend import cli  # the thrift transport alone: no gRPC needed

    def run(*argv: str) -> int:  # the CLI's own -thrift_server flag selects the thrift transport
        return cli.main(["-thrift_server", f"127.0.0.1:{server.port}", *argv])

    assert run("-A", "-t", "10.200.1.1:80") == 0
    assert run("-a", "-t", "10.200.1.1:80", "-r", "10.0.0.1", "-w", "3") == 0
    assert lb.get_reals_for_vip(VipKey("10.200.1.1", 80, 6)) == [Real("10.0.0.1", 3)]
    capsys.readouterr()
    assert run("-l") == 0
    out = capsys.readouterr().out
    assert re.search(r"VIP:\s+10\.200\.1\.1 Port:\s+80 Protocol: tcp", out), out
    assert re.search(r"->10\.0\.0\.1\s+weight: 3", out), out
