"""Who may change the balancer (docs/security.md): unix sockets 0660 that a
non-root user cannot open, TCP listeners that refuse calls without the
bearer token or a client certificate, TLS for the thrift server too."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from katran import KatranConfig, KatranLb
from katran.errors import ValidationError
from katran.models import ModifyAction, Real, VipKey
from katran_frontend.security import check_tcp_policy, prepare_unix_socket, read_token
from katran_grpc import katran_pb2 as pb
from katran_grpc import katran_pb2_grpc as pb_grpc
from katran_grpc.client import GrpcKatranClient, RpcFailed, channel_credentials
from katran_grpc.server import KatranGrpcServer, server_credentials
from katran_thrift.client import ThriftKatranClient, tls_client_context
from katran_thrift.handler import KatranThriftHandler
from katran_thrift.server import KatranThriftServer, tls_server_context
from test_grpc_frontend import _make_pki

DEFAULT_MAC = "00:00:de:ad:be:af"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
TOKEN = b"s3cret-token-0123456789"


@pytest.fixture(scope="module")
def lb():
    with KatranLb(KatranConfig(testing=True, default_mac=DEFAULT_MAC, enable_hc=False)) as lb:
        yield lb


@pytest.fixture(autouse=True)
def clean(lb):
    yield
    for v in lb.get_all_vips():
        lb.del_vip(v)


@pytest.fixture
def public_dir():
    """A directory every user may traverse (0755), so only the socket's own mode protects it."""
    path = Path(f"/tmp/katran-auth-{os.getpid()}")
    path.mkdir(mode=0o755, exist_ok=True)
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return _make_pki(tmp_path_factory.mktemp("pki"))


def connect_as_nobody(path: str) -> str:
    """Try to connect to a unix socket as uid/gid 65534 without groups; the errno name or 'connected'."""
    code = ("import socket,errno,sys\n"
            "s=socket.socket(socket.AF_UNIX)\n"
            "try:\n s.connect(sys.argv[1]); print('connected')\n"
            "except OSError as e: print(errno.errorcode[e.errno])\n")
    out = subprocess.run([*NOBODY, "/usr/bin/python3", "-c", code, path], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def token_file(tmp_path: Path, data: bytes = TOKEN, mode: int = 0o600) -> str:
    path = tmp_path / "token"
    path.write_bytes(data + b"\n")
    path.chmod(mode)
    return str(path)


# ------------------------------------------------------------------ unix sockets
@pytest.mark.parametrize("kind", ["grpc", "thrift"])
def test_unix_socket_closed_to_other_users(lb, public_dir, kind):
    path = str(public_dir / f"{kind}.sock")
    if kind == "grpc":
        srv = KatranGrpcServer(lb, f"unix:{path}")
        srv.start()
        client = GrpcKatranClient(f"unix:{path}", timeout=5)
    else:
        srv = KatranThriftServer(KatranThriftHandler(lb), f"unix:{path}")
        thread = srv.start()
        client = ThriftKatranClient(f"unix:{path}", timeout=5)
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_uid == 0
        assert client.get_mac() == DEFAULT_MAC  # root may
        client.add_vip(VipKey("10.3.3.3", 80, 6))
        assert connect_as_nobody(path) == "EACCES"  # nobody may not
        os.chmod(path, 0o666)  # the socket's mode is what stops them: opened up, nobody gets in
        assert connect_as_nobody(path) == "connected"
        os.chmod(path, 0o660)
        assert connect_as_nobody(path) == "EACCES"
    finally:
        client.close()
        if kind == "grpc":
            srv.stop(0)
        else:
            srv.shutdown()
            thread.join(10)
    assert not os.path.exists(path)  # removed on stop
    assert [str(v.address) for v in lb.get_all_vips()] == ["10.3.3.3"]


def test_socket_directory_created_restrictive(public_dir):
    sock = public_dir / "run" / "katran" / "x.sock"
    prepare_unix_socket(str(sock))
    st = os.stat(sock.parent)
    assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_uid == 0
    assert connect_as_nobody(str(sock)) == "EACCES"  # cannot even look into the directory


def test_stale_socket_replaced_live_socket_refused(lb, public_dir):
    path = str(public_dir / "t.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # a socket file nobody listens on: left by a crashed server
    srv = KatranThriftServer(KatranThriftHandler(lb), f"unix:{path}")
    thread = srv.start()
    try:
        with pytest.raises(ValidationError, match="in use"):
            KatranThriftServer(KatranThriftHandler(lb), f"unix:{path}")
        with pytest.raises(Exception, match="in use"):
            KatranGrpcServer(lb, f"unix:{path}")
        assert ThriftKatranClient(f"unix:{path}", timeout=5).get_mac() == DEFAULT_MAC  # first one untouched
    finally:
        srv.shutdown()
        thread.join(10)
    Path(path).write_text("x")
    with pytest.raises(ValidationError, match="not a socket"):
        prepare_unix_socket(path)


# ------------------------------------------------------------------ TCP: token
def test_grpc_tcp_token(lb, tmp_path):
    srv = KatranGrpcServer(lb, "127.0.0.1:0", token=read_token(token_file(tmp_path)))
    srv.start()
    try:
        with grpc.insecure_channel(srv.address) as ch:
            kc = pb_grpc.KatranServiceStub(ch)
            for meta in (None, [("authorization", "Bearer wrong")], [("authorization", TOKEN.decode())]):
                with pytest.raises(grpc.RpcError) as err:
                    kc.addVip(pb.VipMeta(vip=pb.Vip(address="10.4.4.4", port=80, protocol=6)), timeout=5,
                              metadata=meta)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert lb.get_all_vips() == []
        with pytest.raises(RpcFailed, match="UNAUTHENTICATED"):
            GrpcKatranClient(srv.address, timeout=5).get_mac()
        good = GrpcKatranClient(srv.address, timeout=5, token=TOKEN)
        good.add_vip(VipKey("10.4.4.4", 80, 6))
        assert good.get_mac() == DEFAULT_MAC
        good.close()
    finally:
        srv.stop(0)


def _raw_header_call(port: int, headers: dict = None) -> bytes:
    """getMac over THeader/compact from raw bytes; returns everything the server sent until it closed."""
    msg = b"\x82\x21\x01\x06getMac\x00"
    info = bytearray(b"\x02\x00")
    for k, v in (headers or {}).items():
        info += b"\x01\x01" + bytes((len(k),)) + k + bytes((len(v),)) + v
    info += b"\0" * (-len(info) % 4)
    body = b"\x0f\xff" + struct.pack("!HIH", 0, 1, len(info) // 4) + bytes(info) + msg
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(struct.pack("!I", len(body)) + body)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
            if headers and b"Bearer" in headers.get(b"authorization", b"") and DEFAULT_MAC.encode() in out:
                return out


def test_thrift_tcp_token(lb, tmp_path):
    srv = KatranThriftServer(KatranThriftHandler(lb), "127.0.0.1", 0, token=read_token(token_file(tmp_path)))
    thread = srv.start()
    try:
        refused = _raw_header_call(srv.port)
        assert b"unauthenticated" in refused and DEFAULT_MAC.encode() not in refused
        assert b"unauthenticated" in _raw_header_call(srv.port, {b"authorization": b"Bearer nope"})
        assert DEFAULT_MAC.encode() in _raw_header_call(srv.port, {b"authorization": b"Bearer " + TOKEN})
        for transport in ("framed", "buffered"):  # no headers, so no token: refused
            with pytest.raises(RpcFailed, match="unauthenticated"):
                ThriftKatranClient(f"127.0.0.1:{srv.port}", transport=transport, timeout=5).add_vip(
                    VipKey("10.5.5.5", 80, 6))
        with pytest.raises(RpcFailed, match="unauthenticated"):
            ThriftKatranClient(f"127.0.0.1:{srv.port}", timeout=5).add_vip(VipKey("10.5.5.5", 80, 6))
        assert lb.get_all_vips() == []
        good = ThriftKatranClient(f"127.0.0.1:{srv.port}", timeout=5, token=TOKEN)
        good.add_vip(VipKey("10.5.5.5", 80, 6))
        assert good.get_mac() == DEFAULT_MAC  # second call on the connection
        good.close()
        assert [str(v.address) for v in lb.get_all_vips()] == ["10.5.5.5"]
    finally:
        srv.shutdown()
        thread.join(10)


# ------------------------------------------------------------------ thrift over TLS / mTLS
@pytest.mark.parametrize("transport", ["header", "framed", "buffered"])
def test_thrift_tls_and_client_certs(lb, pki, transport):
    tls = KatranThriftServer(KatranThriftHandler(lb), "127.0.0.1", 0,
                             ssl_context=tls_server_context(pki["server"], pki["server_key"]))
    mtls = KatranThriftServer(KatranThriftHandler(lb), "127.0.0.1", 0,
                              ssl_context=tls_server_context(pki["server"], pki["server_key"], pki["ca"]))
    threads = [tls.start(), mtls.start()]
    try:
        verify_only = tls_client_context(pki["ca"])
        with_cert = tls_client_context(pki["ca"], pki["client"], pki["client_key"])
        assert ThriftKatranClient(f"127.0.0.1:{tls.port}", transport=transport, ssl_context=verify_only,
                                  timeout=5).get_mac() == DEFAULT_MAC
        with pytest.raises(RpcFailed):  # plaintext against TLS
            ThriftKatranClient(f"127.0.0.1:{tls.port}", transport=transport, timeout=3).get_mac()
        with pytest.raises(RpcFailed):  # no client certificate
            ThriftKatranClient(f"127.0.0.1:{mtls.port}", transport=transport, ssl_context=verify_only,
                               timeout=3).add_vip(VipKey("10.6.6.6", 80, 6))
        assert lb.get_all_vips() == []
        c = ThriftKatranClient(f"127.0.0.1:{mtls.port}", transport=transport, ssl_context=with_cert, timeout=5)
        c.add_vip(VipKey("10.6.6.6", 80, 6))
        assert c.get_mac() == DEFAULT_MAC
        c.close()
    finally:
        for srv, thread in zip((tls, mtls), threads):
            srv.shutdown()
            thread.join(10)


def test_grpc_mtls_client_flags(lb, pki):
    creds = server_credentials(pki["server"], pki["server_key"], pki["ca"])
    srv = KatranGrpcServer(lb, "127.0.0.1:0", credentials=creds)
    srv.start()
    try:
        creds = channel_credentials(pki["ca"], pki["client"], pki["client_key"])
        assert GrpcKatranClient(srv.address, credentials=creds, timeout=5).get_mac() == DEFAULT_MAC
        with pytest.raises(RpcFailed):
            GrpcKatranClient(srv.address, credentials=channel_credentials(pki["ca"]), timeout=3).get_mac()
    finally:
        srv.stop(0)


# ------------------------------------------------------------------ policy and token files
def test_tcp_policy():
    with pytest.raises(ValidationError, match="-tls_client_ca.*-token_file.*-insecure"):
        check_tcp_policy("127.0.0.1:50051", client_ca="", token_file="", insecure=False)
    check_tcp_policy("unix:/run/katran/katran-grpc.sock", client_ca="", token_file="", insecure=False)
    check_tcp_policy("127.0.0.1:50051", client_ca="ca.pem", token_file="", insecure=False)
    check_tcp_policy("127.0.0.1:50051", client_ca="", token_file="t", insecure=False)
    check_tcp_policy("0.0.0.0:50051", client_ca="", token_file="", insecure=True)


def test_token_file_checks(tmp_path):
    assert read_token(token_file(tmp_path)) == TOKEN
    assert read_token(token_file(tmp_path, mode=0o640)) == TOKEN
    with pytest.raises(ValidationError, match="every user"):
        read_token(token_file(tmp_path, mode=0o644))
    with pytest.raises(ValidationError, match="no token"):
        read_token(token_file(tmp_path, data=b"  "))
    with pytest.raises(ValidationError, match="printable ASCII"):
        read_token(token_file(tmp_path, data="tök en".encode()))
    with pytest.raises(ValidationError, match="cannot read"):
        read_token(str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match="header"):
        ThriftKatranClient("127.0.0.1:1", transport="framed", token=TOKEN)


# ------------------------------------------------------------------ the server commands
def run_server(module: str, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, "-testing", "-shutdown_delay=0", "-lru_size=1000", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def listening(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline().strip()
    if not line.startswith("Server listening on "):
        proc.kill()
        raise AssertionError(f"unexpected first line {line!r}; stderr: {proc.stderr.read()}")
    return line[len("Server listening on "):]


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "Traceback" not in proc.stderr.read()


@pytest.mark.parametrize("module", ["katran_grpc.server", "katran_thrift.server"])
def test_tcp_listener_without_auth_refused(module, capsys):
    mod = __import__(module, fromlist=["main"])
    assert mod.main(["-testing", "-server", "127.0.0.1:0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must authenticate its clients" in err[0] and "-insecure" in err[0], err
    for bad, flag in (("-max_message_size=0", "max_message_size"), ("-idle_timeout=-1", "idle_timeout"),
                      ("-workers=0", "workers")):
        assert mod.main(["-testing", "-server", "127.0.0.1:0", "-insecure", bad]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"error: {flag}=" in err[0] and "must be positive" in err[0], err


def test_thrift_command_token_and_limits(tmp_path):
    proc = run_server("katran_thrift.server", "-server=127.0.0.1:0", f"-token_file={token_file(tmp_path)}",
                      "-max_container_size=5")
    try:
        address = listening(proc)
        with pytest.raises(RpcFailed) as err:
            ThriftKatranClient(address, timeout=10).get_mac()
        assert err.value.code == "UNAUTHENTICATED"
        c = ThriftKatranClient(address, timeout=10, token=TOKEN)
        vip = VipKey("10.7.7.7", 80, 6)
        c.add_vip(vip)
        reals = [Real(f"10.8.0.{i}", 1) for i in range(1, 7)]
        with pytest.raises(RpcFailed) as err:
            c.modify_reals_for_vip(ModifyAction.ADD, reals, vip)
        assert err.value.code == "RESOURCE_EXHAUSTED" and "-max_container_size=5" in err.value.message
        c = ThriftKatranClient(address, timeout=10, token=TOKEN)
        c.modify_reals_for_vip(ModifyAction.ADD, reals[:5], vip)
        assert len(c.get_reals_for_vip(vip)) == 5
        c.close()
    finally:
        if proc.poll() is None:
            stop(proc)


def test_grpc_command_unix_socket_and_limits(public_dir):
    path = public_dir / "cmd.sock"
    proc = run_server("katran_grpc.server", f"-server=unix:{path}", "-max_message_size=2048")
    try:
        assert listening(proc) == f"unix:{path}"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        assert connect_as_nobody(str(path)) == "EACCES"
        c = GrpcKatranClient(f"unix:{path}", timeout=10)
        assert c.get_mac() == "00:00:00:00:00:01"
        with grpc.insecure_channel(f"unix:{path}") as ch:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.KatranServiceStub(ch).addVip(pb.VipMeta(vip=pb.Vip(address="1" * 4000, port=80, protocol=6)),
                                                     timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert c.get_all_vips() == []
        c.close()
    finally:
        if proc.poll() is None:
            stop(proc)
    assert not path.exists()


@pytest.mark.parametrize("kind", ["grpc", "thrift"])
def test_cli_token_file(lb, tmp_path, kind, capsys):
    from katran_frontend import cli

    token = read_token(token_file(tmp_path))
    if kind == "grpc":
        srv = KatranGrpcServer(lb, "127.0.0.1:0", token=token)
        srv.start()
        target = ["-server", srv.address]
    else:
        srv = KatranThriftServer(KatranThriftHandler(lb), "127.0.0.1", 0, token=token)
        thread = srv.start()
        target = ["-thrift_server", f"127.0.0.1:{srv.port}"]
    try:
        assert cli.main([*target, "-timeout", "5", "-A", "-t", "10.9.1.1:80"]) == 1
        out = capsys.readouterr()
        assert "rpc error: code = Unauthenticated desc = " in out.err  # as Katran's Go client prints it
        assert lb.get_all_vips() == []
        assert cli.main([*target, "-timeout", "5", "-token_file", token_file(tmp_path), "-A", "-t", "10.9.1.1:80"]) == 0
        assert [str(v.address) for v in lb.get_all_vips()] == ["10.9.1.1"]
    finally:
        if kind == "grpc":
            srv.stop(0)
        else:
            srv.shutdown()
            thread.join(10)


def test_cli_thrift_mtls_flags(lb, pki, capsys):
    from katran_frontend import cli

    srv = KatranThriftServer(KatranThriftHandler(lb), "127.0.0.1", 0,
                             ssl_context=tls_server_context(pki["server"], pki["server_key"], pki["ca"]))
    thread = srv.start()
    target = ["-thrift_server", f"127.0.0.1:{srv.port}", "-timeout", "5", "-tls_ca", pki["ca"]]
    try:
        assert cli.main([*target, "-A", "-t", "10.9.2.2:80"]) == 1  # no client certificate
        capsys.readouterr()
        assert lb.get_all_vips() == []
        assert cli.main([*target, "-tls_cert", pki["client"], "-tls_key", pki["client_key"], "-A", "-t",
                         "10.9.2.2:80"]) == 0
        assert [str(v.address) for v in lb.get_all_vips()] == ["10.9.2.2"]
    finally:
        srv.shutdown()
        thread.join(10)
