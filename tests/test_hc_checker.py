"""Active health checks: the probes against real local responders, the rise/fall state
machine and its actions on a loaded balancer (testing mode), and the checker's own loop."""

from __future__ import annotations

import asyncio
import datetime
import http.server
import socket
import ssl
import struct
import threading
import time

import pytest

from katran import KatranConfig, KatranLb, ModifyAction, Real, ValidationError, VipKey
from katran.hc_checker import CheckSpec, Health, HcChecker, ProbeFailed, probe
from katran.models import parse_address

root = pytest.mark.privileged


# ----------------------------------------------------------------------------- responders
class _Http(http.server.BaseHTTPRequestHandler):
    status = 200
    body = b"ok: all good"
    delay = 0.0

    def do_GET(self):  # noqa: N802
        time.sleep(self.delay)
        # before answering (the probe may return first); not every server here keeps a list
        getattr(self.server, "seen_hosts", []).append(self.headers.get("Host"))
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def _serve_http(addr="127.0.0.1", tls: ssl.SSLContext | None = None, **attrs_):
    handler = type("H", (_Http,), attrs_)
    srv = http.server.ThreadingHTTPServer((addr, 0), handler)
    srv.seen_hosts = []
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _udp_responder(addr="127.0.0.1", reply=lambda data: data, dns=False):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 0))

    def loop():
        while True:
            try:
                data, peer = s.recvfrom(4096)
            except OSError:
                return
            out = reply(data)
            if out is not None:
                s.sendto(out, peer)

    threading.Thread(target=loop, daemon=True).start()
    return s


def _dns_answer(data: bytes, rcode: int = 0, id_delta: int = 0) -> bytes:
    qid = struct.unpack("!H", data[:2])[0]
    return struct.pack("!HHHHHH", (qid + id_delta) & 0xFFFF, 0x8180 | rcode, 1, 0, 0, 0) + data[12:]


def run(coro):
    return asyncio.run(coro)


def _tls_context(tmp_path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "real.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    return ctx


LO = parse_address("127.0.0.1")


# ----------------------------------------------------------------------------- probes
def test_tcp_probe_ok_and_refused():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    assert run(probe(CheckSpec(type="tcp"), LO, port)) > 0
    srv.close()
    with pytest.raises(ProbeFailed, match="connection refused"):
        run(probe(CheckSpec(type="tcp"), LO, port))


def test_http_probe_status_body_host_and_timeout():
    srv = _serve_http()
    port = srv.server_address[1]
    run(probe(CheckSpec(type="http", body_contains="all good", host="www.example.test"), LO, port))
    assert srv.seen_hosts[-1] == "www.example.test"
    with pytest.raises(ProbeFailed, match="body lacks"):
        run(probe(CheckSpec(type="http", body_contains="nope"), LO, port))
    with pytest.raises(ProbeFailed, match="status 200, expected 204"):
        run(probe(CheckSpec(type="http", expect_status=204), LO, port))
    srv.shutdown()
    slow = _serve_http(delay=1.0)
    with pytest.raises(ProbeFailed, match="timeout after 0.2 s"):
        run(probe(CheckSpec(type="http", timeout=0.2), LO, slow.server_address[1]))
    slow.shutdown()


def test_https_probe(tmp_path):
    srv = _serve_http(tls=_tls_context(tmp_path))
    port = srv.server_address[1]
    run(probe(CheckSpec(type="https", body_contains="good"), LO, port))
    with pytest.raises(ProbeFailed, match="tls"):  # self-signed: refused when verification is asked
        run(probe(CheckSpec(type="https", tls_verify=True), LO, port))
    srv.shutdown()


def test_udp_and_dns_probes():
    echo = _udp_responder()
    port = echo.getsockname()[1]
    run(probe(CheckSpec(type="udp", send=b"ping", expect=b"ping"), LO, port))
    with pytest.raises(ProbeFailed, match="unexpected reply"):
        run(probe(CheckSpec(type="udp", send=b"ping", expect=b"pong"), LO, port))
    echo.close()
    dns = _udp_responder(reply=_dns_answer)
    run(probe(CheckSpec(type="dns", query="www.example.test."), LO, dns.getsockname()[1]))
    dns.close()
    liar = _udp_responder(reply=lambda d: _dns_answer(d, id_delta=1))
    with pytest.raises(ProbeFailed, match="reply id"):
        run(probe(CheckSpec(type="dns"), LO, liar.getsockname()[1]))
    liar.close()
    servfail = _udp_responder(reply=lambda d: _dns_answer(d, rcode=2))
    with pytest.raises(ProbeFailed, match="rcode 2"):
        run(probe(CheckSpec(type="dns"), LO, servfail.getsockname()[1]))
    servfail.close()
    silent = _udp_responder(reply=lambda d: None)
    with pytest.raises(ProbeFailed, match="timeout"):
        run(probe(CheckSpec(type="dns", timeout=0.2), LO, silent.getsockname()[1]))
    silent.close()


@pytest.mark.parametrize("kw, field", [
    ({"type": "icmp"}, "check.type"), ({"interval": 0}, "check.interval"), ({"rise": 0}, "check.rise"),
    ({"timeout": 5, "interval": 1}, "check.timeout"), ({"jitter": 1.5}, "check.jitter"),
    ({"port": 70000}, "check.port"), ({"expect_status": 42}, "check.expect_status"),
])
def test_bad_check_specs_name_the_field(kw, field):
    with pytest.raises(ValidationError) as err:
        CheckSpec(**kw)
    assert err.value.field == field


# ----------------------------------------------------------------------------- state machine
VIP = VipKey("10.100.1.1", 80, "tcp")
REALS = ("10.200.1.2", "10.200.1.3", "10.200.1.4")


@pytest.fixture
def lb():
    cfg = KatranConfig(testing=True, default_mac="00:00:de:ad:be:af", forwarding_cores=(), max_vips=8,
                       max_reals=16, lru_size=1000)
    with KatranLb(cfg) as lb:
        lb.add_vip(VIP)
        lb.modify_reals_for_vip(ModifyAction.ADD, [Real(a, w) for a, w in zip(REALS, (1, 2, 3))], VIP)
        yield lb


class Script:
    """An injected prober: each real's results, in order (True / a failure reason)."""

    def __init__(self):
        self.results: dict[str, list] = {}
        self.calls = []

    async def __call__(self, spec, target, port, mark, src):
        self.calls.append((str(target), port, mark))
        key = str(target) if mark == 0 else mark
        out = self.results.get(key, [True])
        res = out.pop(0) if len(out) > 1 else out[0]
        if res is not True:
            raise ProbeFailed(res)
        return 0.001


def weights(lb) -> dict:
    return {str(r.address): r.weight for r in lb.get_reals_for_vip(VIP)}


def drive(checker, rounds: int):
    async def go():
        for _ in range(rounds):
            for key in list(checker._states):
                await checker.check_once(key)

    asyncio.run(go())


@root
def test_drain_after_fall_restore_after_rise(lb):
    script = Script()
    checker = HcChecker(lb, {VIP: CheckSpec(rise=2, fall=3)}, prober=script, through_vip=False)
    checker.sync()
    script.results["10.200.1.3"] = ["connection refused"] * 3 + [True]
    drive(checker, 2)
    assert weights(lb) == {"10.200.1.2": 1, "10.200.1.3": 2, "10.200.1.4": 3}  # 2 failures < fall
    drive(checker, 1)
    assert weights(lb) == {"10.200.1.2": 1, "10.200.1.3": 0, "10.200.1.4": 3}
    st = {str(s.real): s for s in checker.states()}["10.200.1.3"]
    assert st.health is Health.UNHEALTHY and st.last_reason == "connection refused" and st.mode == "real"
    drive(checker, 1)
    assert weights(lb)["10.200.1.3"] == 0  # 1 success < rise
    drive(checker, 1)
    assert weights(lb)["10.200.1.3"] == 2  # its configured weight is back
    assert [(str(t.real), t.health) for t in checker.transitions] == [
        ("10.200.1.3", Health.UNHEALTHY), ("10.200.1.3", Health.HEALTHY)]
    # probes went to the reals' own addresses on the VIP's port (healthcheck forwarding is off)
    assert {c for c in script.calls} == {(a, 80, 0) for a in REALS}


@root
def test_remove_action_and_per_real_override(lb):
    script = Script()
    checker = HcChecker(lb, {VIP: CheckSpec(fall=3)}, {(VIP, "10.200.1.2"): CheckSpec(fall=1, port=8080)},
                        action="remove", prober=script, through_vip=False)
    checker.sync()
    script.results["10.200.1.2"] = ["timeout after 1 s", True]
    drive(checker, 1)
    assert weights(lb) == {"10.200.1.3": 2, "10.200.1.4": 3}
    checker.sync()  # the removed real is still tracked
    drive(checker, 2)
    assert weights(lb) == {"10.200.1.2": 1, "10.200.1.3": 2, "10.200.1.4": 3}
    assert ("10.200.1.2", 8080, 0) in script.calls


@root
@pytest.mark.parametrize("all_down, expect", [("fail_open", {"10.200.1.2": 1, "10.200.1.3": 2, "10.200.1.4": 3}),
                                              ("drop", {"10.200.1.2": 0, "10.200.1.3": 0, "10.200.1.4": 0})])
def test_every_real_down(lb, all_down, expect):
    script = Script()
    checker = HcChecker(lb, {VIP: CheckSpec(fall=1, rise=1)}, prober=script, all_down=all_down, through_vip=False)
    checker.sync()
    for a in REALS[:2]:
        script.results[a] = ["refused"]
    drive(checker, 1)
    assert weights(lb) == {"10.200.1.2": 0, "10.200.1.3": 0, "10.200.1.4": 3}
    script.results[REALS[2]] = ["refused"]
    drive(checker, 1)
    assert weights(lb) == expect
    script.results[REALS[0]] = [True]
    drive(checker, 1)  # one is back: the others are drained again (fail open or not)
    assert weights(lb) == {"10.200.1.2": 1, "10.200.1.3": 0, "10.200.1.4": 0}


@root
def test_through_vip_allocates_somarks_and_programs_hc_dsts():
    cfg = KatranConfig(testing=True, default_mac="00:00:de:ad:be:af", forwarding_cores=(), max_vips=8,
                       max_reals=16, lru_size=1000, enable_hc=True, katran_src_v4="10.0.0.9")
    with KatranLb(cfg) as lb:
        lb.add_vip(VIP)
        lb.modify_reals_for_vip(ModifyAction.ADD, [Real(a) for a in REALS[:2]], VIP)
        script = Script()
        checker = HcChecker(lb, {VIP: CheckSpec()}, prober=script)
        checker.sync()
        dsts = lb.get_healthcheckers_dst()
        assert sorted(dsts.values()) == sorted(REALS[:2]) and len(set(dsts)) == 2
        drive(checker, 1)
        # every probe goes to the VIP, marked with the somark of its real
        assert sorted(script.calls) == sorted(("10.100.1.1", 80, m) for m in dsts)
        assert all(s.mode == "vip" for s in checker.states())
        lb.modify_reals_for_vip(ModifyAction.DEL, [Real(REALS[1])], VIP)
        checker.sync()  # a real leaves: its somark is released
        assert list(lb.get_healthcheckers_dst().values()) == [REALS[0]]


def _state(checker, real: str):
    return next(st for st in checker.states() if str(st.real) == real)


@root
def test_checker_loop_detects_and_recovers_with_real_http_servers(lb):
    """Reals are HTTP servers on loopback addresses; one stops and comes back."""
    servers = {a: None for a in ("127.0.0.2", "127.0.0.3")}
    port = None
    for a in servers:
        s = _serve_http(a) if port is None else None
        if s is None:
            handler = type("H", (_Http,), {})
            s = http.server.ThreadingHTTPServer((a, port), handler)
            s.seen_hosts = []
            threading.Thread(target=s.serve_forever, daemon=True).start()
        port = s.server_address[1]
        servers[a] = s
    vip = VipKey("10.100.1.9", port, "tcp")
    lb.add_vip(vip)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(a, 5) for a in servers], vip)
    spec = CheckSpec(type="http", interval=0.2, timeout=0.15, rise=2, fall=3, jitter=0.05)
    checker = HcChecker(lb, {vip: spec}, through_vip=False).start()
    try:
        time.sleep(1.0)
        assert {str(r.address): r.weight for r in lb.get_reals_for_vip(vip)} == {"127.0.0.2": 5, "127.0.0.3": 5}
        servers["127.0.0.3"].shutdown()
        servers["127.0.0.3"].server_close()
        stopped = time.monotonic()
        while time.monotonic() - stopped < 3 and _state(checker, '127.0.0.3').healthy:
            time.sleep(0.01)
        detect = time.monotonic() - stopped
        assert {str(r.address): r.weight for r in lb.get_reals_for_vip(vip)}["127.0.0.3"] == 0
        # fall x interval, plus one interval for the check in flight and slack for a loaded machine
        assert detect <= (spec.fall + 1) * spec.interval * 1.1 + 0.5, detect
        back = http.server.ThreadingHTTPServer(("127.0.0.3", port), type("H", (_Http,), {}))
        threading.Thread(target=back.serve_forever, daemon=True).start()
        started = time.monotonic()
        while time.monotonic() - started < 3 and not _state(checker, '127.0.0.3').healthy:
            time.sleep(0.01)
        recover = time.monotonic() - started
        assert {str(r.address): r.weight for r in lb.get_reals_for_vip(vip)}["127.0.0.3"] == 5
        assert recover <= (spec.rise + 1) * spec.interval * 1.1 + 0.5, recover
        back.shutdown()
    finally:
        checker.stop()
        servers["127.0.0.2"].shutdown()
