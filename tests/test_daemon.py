"""The server with a declarative file: applied at start, re-read on SIGHUP (exactly the
difference; an invalid file changes nothing), flags given explicitly win over the file."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from katran.declarative import loads

pytestmark = pytest.mark.privileged

FILE = textwrap.dedent("""\
    version: 1
    balancer:
      default_mac: 00:00:de:ad:be:af
      max_vips: 8
      max_reals: 16
      lru_size: 1000
    vips:
      - address: 10.100.1.1
        port: 80
        proto: tcp
        reals:
          - {address: 10.200.1.2, weight: 2}
          - 10.200.1.3
    """)


def test_flags_win_over_the_file():
    from katran_frontend.goflags import FlagSet
    from katran_frontend.server_flags import add_server_flags, config_from_flags_and_file

    desired = loads(FILE)
    fs = add_server_flags(FlagSet("t"), "unix:/tmp/x.sock", "")
    cfg = config_from_flags_and_file(fs.parse(["-testing", "-lru_size=2000"]), desired)
    assert (cfg.lru_size, cfg.max_vips, cfg.max_reals) == (2000, 8, 16)  # the flag, then the file
    assert cfg.default_mac == bytes.fromhex("0000deadbeaf")
    cfg = config_from_flags_and_file(fs.parse(["-testing", "-default_mac=02:00:00:00:00:09"]), desired)
    assert (cfg.lru_size, cfg.default_mac) == (1000, bytes.fromhex("020000000009"))


class Server:
    def __init__(self, tmp_path, path):
        self.sock = tmp_path / "grpc.sock"
        self.log = open(tmp_path / "server.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "katran_grpc.server", "-testing", f"-server=unix:{self.sock}",
             f"-config={path}", "-shutdown_delay=0"], stdout=self.log, stderr=subprocess.STDOUT, text=True)
        self.wait_log("Server listening on", 60)
        from katran_grpc.client import GrpcKatranClient

        self.client = GrpcKatranClient(f"unix:{self.sock}", timeout=10)

    def text(self) -> str:
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def wait_log(self, needle: str, timeout: float, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if text.count(needle) >= count:
                return text
            assert self.proc.poll() is None, text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} x{count} not in the log:\n{self.text()}")

    def reals(self) -> dict:
        from katran import VipKey

        return {str(r.address): r.weight for r in self.client.get_reals_for_vip(VipKey("10.100.1.1", 80, "tcp"))}

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)
        self.log.close()


def test_config_applied_at_start_and_on_sighup(tmp_path):
    path = tmp_path / "lb.yaml"
    path.write_text(FILE)
    srv = Server(tmp_path, path)
    try:
        assert srv.reals() == {"10.200.1.2": 2, "10.200.1.3": 1}
        assert "add vip 10.100.1.1:80/tcp" in srv.text()
        # an edit: one weight, one more VIP; SIGHUP applies exactly that
        path.write_text(FILE.replace("weight: 2", "weight: 5") + textwrap.indent(textwrap.dedent("""\
            - address: 10.100.1.2
              port: 53
              proto: udp
              reals: [10.200.1.3]
            """), "  "))
        srv.proc.send_signal(signal.SIGHUP)
        text = srv.wait_log("(reload):", 10, 3)
        reload_lines = [ln.split("(reload): ", 1)[1] for ln in text.splitlines() if "(reload): " in ln]
        assert reload_lines == ["add vip 10.100.1.2:53/udp flags 0x0",
                                "add/reweight reals of 10.100.1.1:80/tcp: 10.200.1.2 w5",
                                "add/reweight reals of 10.100.1.2:53/udp: 10.200.1.3 w1"], reload_lines
        assert srv.reals() == {"10.200.1.2": 5, "10.200.1.3": 1}
        assert len(srv.client.get_all_vips()) == 2
        # an invalid file: refused with file, line and field; nothing changes; the server goes on
        path.write_text(FILE.replace("weight: 2", "weight: -3"))
        srv.proc.send_signal(signal.SIGHUP)
        text = srv.wait_log("reload refused", 10)
        assert f"{path}:12: vips[0].reals[0].weight=-3" in text
        assert srv.reals() == {"10.200.1.2": 5, "10.200.1.3": 1} and len(srv.client.get_all_vips()) == 2
    finally:
        srv.stop()


def test_invalid_file_at_start_names_file_line_field(tmp_path):
    path = tmp_path / "lb.yaml"
    path.write_text(FILE.replace("port: 80", "port: 80000"))
    res = subprocess.run([sys.executable, "-m", "katran_grpc.server", "-testing",
                          f"-server=unix:{tmp_path / 's.sock'}", f"-config={path}"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith(f"katran-server-grpc: error: {path}:9: vips[0].port=80000")
