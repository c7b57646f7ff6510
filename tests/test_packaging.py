"""Packaging for a host (issue 12, item 7; detection of item 5).

* The server runs as an unprivileged user holding only the capabilities of the systemd
  units (``setpriv --reuid ... --ambient-caps ... --bounding-set ...``) in a network
  namespace: it attaches XDP and the healthcheck tc filter and serves RPCs; with one
  capability less it refuses to start, naming it; and the kernel really refuses what
  each capability guards.
* Our XDP program detached (``ip link set dev X xdp off``) or replaced (xdp_pass) by
  hand: gRPC health NOT_SERVING within 2 s, an error log line; attached again: SERVING.
* The units grant exactly ``katran.host.capabilities.REQUIRED``.
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from katran.host.capabilities import REQUIRED

pytestmark = [pytest.mark.privileged, pytest.mark.netns]  # setpriv, unshare, nsenter: util-linux (setup.sh)

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "packaging" / "systemd"
XDP_PASS = ROOT / "katran" / "bpf" / "obj" / "xdp_pass.bpf.o"
NOBODY = 65534
ALL_CAPS = ",".join("+" + c[4:].lower() for c in REQUIRED)  # +bpf,+net_admin,...


def _caps_without(cap: str) -> str:
    return ",".join("+" + c[4:].lower() for c in REQUIRED if c != cap)


def _reachable_prefix_script() -> str:
    """Shell lines making the interpreter reachable for an unprivileged user in this private mount
    namespace: a directory on its path that others may not enter (/root on this host) is masked
    by a tmpfs with the interpreter's tree bound back into it."""
    exe = Path(os.path.realpath(sys.executable))
    lines = []
    for parent in reversed(exe.parents):
        if parent == Path("/"):
            continue
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            child = exe.parents[len(exe.parents) - len(parent.parts) - 1]  # the entry below it
            lines += [f"mkdir -p /tmp/katran-ops-$$ && mount --bind {child} /tmp/katran-ops-$$",
                      f"mount -t tmpfs -o mode=0755 katran-ops {parent}",
                      f"mkdir -p {child} && mount --bind /tmp/katran-ops-$$ {child}"]
            break
    return "\n".join(lines)


def _netns_script(caps: str, argv: list[str]) -> str:
    quoted = " ".join(shlex.quote(a) for a in argv)
    return f"""set -e
{_reachable_prefix_script()}
ip link set lo up
ip link add kv0 type veth peer name kv1
ip link set kv0 up && ip link set kv1 up
ip addr add 10.98.0.1/24 dev kv0
exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups --inh-caps={caps} --ambient-caps={caps} \
  --bounding-set={caps} {quoted}
"""


def _run_as_nobody(caps: str, argv: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(["unshare", "-m", "-n", "sh", "-c", _netns_script(caps, argv)], **kw)


@pytest.fixture
def sockdir():
    """A directory the unprivileged server may create its socket in (pytest's tmp_path is 0700)."""
    import tempfile

    top = Path(tempfile.mkdtemp(prefix=f"katran-ops-{os.getpid()}-"))
    os.chmod(top, 0o755)
    d = top / "run"
    d.mkdir()
    os.chown(d, NOBODY, NOBODY)
    yield d
    shutil.rmtree(top, ignore_errors=True)


def _server_argv(sock: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "katran_grpc.server", "-intf", "kv0", "-default_mac", "00:00:00:00:00:01",
            "-server", f"unix:{sock}", "-lru_size", "1000", "-forwarding_cores", "0", "-log_format", "json",
            "-shutdown_delay", "0", *extra]


class JsonLog:
    """The server's stderr, parsed line by line in a thread."""

    def __init__(self, stream) -> None:
        import threading

        self.lines: list = []
        self.raw: list = []
        self._t = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._t.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.raw.append(line)
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def find(self, pred, timeout: float = 0.0):
        deadline = time.monotonic() + timeout
        while True:
            for x in list(self.lines):
                if pred(x):
                    return x
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


def _wait_for(path: Path, proc: subprocess.Popen, log: JsonLog, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "".join(log.raw)
        assert time.monotonic() < deadline, "".join(log.raw)
        time.sleep(0.1)


def _health(channel) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def _in_netns(pid: int, *cmd: str) -> str:
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", *cmd], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_server_runs_unprivileged_with_the_units_capabilities_and_notices_a_detached_program(sockdir):
    import grpc
    from grpc_health.v1 import health_pb2

    from katran_grpc import katran_pb2 as pb
    from katran_grpc import katran_pb2_grpc as pb_grpc

    sock = sockdir / "katran.sock"
    proc = _run_as_nobody(ALL_CAPS, _server_argv(sock), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = JsonLog(proc.stderr)
    try:
        _wait_for(sock, proc, log)
        summary = log.find(lambda x: "prog_id" in x and x["message"].startswith("Katran started"), 10)
        assert summary and summary["mode"] == "standalone" and summary["interface"] == "kv0", log.raw
        assert os.stat(sock).st_uid == NOBODY  # really the unprivileged user
        status = open(f"/proc/{proc.pid}/status").read()
        assert f"Uid:\t{NOBODY}\t{NOBODY}" in status
        # XDP and the healthcheck tc filter are attached
        link = _in_netns(proc.pid, "ip", "-d", "link", "show", "kv0")
        assert f"prog/xdp id {summary['prog_id']}" in link
        assert "bpf" in _in_netns(proc.pid, "tc", "filter", "show", "dev", "kv0", "egress")
        with grpc.insecure_channel(f"unix:{sock}") as ch:
            stub = pb_grpc.KatranServiceStub(ch)
            vip = pb.Vip(address="10.98.10.1", port=80, protocol=6)
            assert stub.addVip(pb.VipMeta(vip=vip, flags=0), timeout=10).success
            assert stub.addRealForVip(pb.realForVip(vip=vip, real=pb.Real(address="10.98.1.1", weight=1)),
                                      timeout=10).success
            assert [v.address for v in stub.getAllVips(pb.Empty(), timeout=10).vips] == ["10.98.10.1"]
            audit = log.find(lambda x: x.get("rpc") == "addRealForVip", 5)
            assert audit and audit["credential"] == "unix socket" and "10.98.1.1" in audit["change"]
            assert _health(ch) == health_pb2.HealthCheckResponse.SERVING

            # detached by hand -> NOT_SERVING within 2 s, one error line
            _in_netns(proc.pid, "ip", "link", "set", "dev", "kv0", "xdp", "off")
            t0 = time.monotonic()
            while _health(ch) != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() - t0 < 2.0, "still SERVING 2 s after the detach"
                time.sleep(0.05)
            err = log.find(lambda x: x["level"] == "error" and "detached" in x["message"], 2)
            assert err and err["logger"] == "katran.watch" and err["found_prog_id"] == 0
            assert stub.getAllVips(pb.Empty(), timeout=10).vips  # RPCs are still answered

            # another program attached over it: still NOT_SERVING, named in the log
            _in_netns(proc.pid, "ip", "-force", "link", "set", "dev", "kv0", "xdpdrv", "obj", str(XDP_PASS),
                      "sec", "xdp")
            err = log.find(lambda x: x["level"] == "error" and "replaced" in x["message"], 3)
            assert err and err["found_prog_id"] not in (0, summary["prog_id"]), log.raw
            assert _health(ch) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(log.raw)
    assert not any("Traceback" in line for line in log.raw), "".join(log.raw)


@pytest.mark.parametrize("module", ["katran_grpc.server", "katran_thrift.server"])
def test_a_capability_less_refuses_to_start_naming_it(sockdir, module):
    argv = _server_argv(sockdir / "katran.sock")
    argv[2] = module
    proc = _run_as_nobody(_caps_without("CAP_NET_ADMIN"), argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    lines = [ln for ln in err.splitlines() if ": error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"{module.replace('katran_', 'katran-server-').split('.')[0]}: error: "
                               "missing capabilities CAP_NET_ADMIN ")
    assert not (sockdir / "katran.sock").exists()


KERNEL_PROBE = """
import sys
from katran import KatranConfig, KatranLb, Real, VipKey
lb = KatranLb(KatranConfig(main_interface="kv0", default_mac="00:00:00:00:00:01", forwarding_cores=(0,),
                           lru_size=1000, enable_hc=True, hc_interface="kv0"))
try:
    lb.start()
    vip = VipKey("10.98.10.1", 80, "udp")
    lb.add_vip(vip)
    lb.add_real_for_vip(Real("10.98.1.1"), vip)
    lb.add_real_for_vip(Real("10.98.1.2"), vip)
    lb.add_down_real(vip, "10.98.1.1")  # creates the VIP's inner map
    lb.add_down_real(vip, "10.98.1.2")  # reopens it by id
    print("ok")
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
finally:
    lb.close()
"""


@pytest.mark.parametrize("cap,needle", [
    ("", "ok"),
    ("CAP_NET_ADMIN", "attach xdp program balancer_ingress to ifindex"),  # netlink XDP attach
    ("CAP_SYS_ADMIN", "open map id"),  # BPF_MAP_GET_FD_BY_ID (the down reals of a VIP)
])
def test_the_kernel_needs_each_capability(cap, needle):
    """Past our start-up check: the kernel itself refuses (EPERM) without each capability."""
    caps = _caps_without(cap) if cap else ALL_CAPS
    out = subprocess.run(["unshare", "-m", "-n", "sh", "-c",
                          _netns_script(caps, [sys.executable, "-c", KERNEL_PROBE])],
                         capture_output=True, text=True, timeout=120)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr
    assert needle in last, out.stdout + out.stderr
    if cap:
        assert "EPERM" in last


def _unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read(UNITS / name)
    return cp


@pytest.mark.parametrize("name,command", [("katran-server-grpc.service", "katran-server-grpc"),
                                          ("katran-server-thrift.service", "katran-server-thrift")])
def test_units_grant_exactly_the_checked_capabilities(name, command):
    svc = _unit(name)["Service"]
    assert svc["CapabilityBoundingSet"].split() == list(REQUIRED)
    assert svc["AmbientCapabilities"].split() == list(REQUIRED)
    assert svc["User"] != "root" and svc["ExecStart"].split()[0].endswith(command)
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["KillSignal"] == "SIGTERM" and svc["Restart"] == "on-failure"
    assert svc["RuntimeDirectory"] == "katran"
