"""katran-cli -l shows each real's health when the server runs health checks: a real
katran-server-grpc process with a -config file whose VIP has a TCP check, reals on loopback
addresses (one listening, one not), the CLI as a process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("grpc", reason="grpcio not installed")

pytestmark = pytest.mark.privileged

MAC = "00:00:de:ad:be:af"
STAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ", re.MULTILINE)


def _listener(address: str, accept: bool = False) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, 0))
    s.listen(64)
    if accept:  # a TCP server: accepts and closes every connection
        def loop() -> None:
            while True:
                try:
                    conn, _ = s.accept()
                except OSError:
                    return
                conn.close()

        threading.Thread(target=loop, daemon=True).start()
    return s


def _server(tmp_path, config: str = "") -> tuple[subprocess.Popen, str]:
    sock = tmp_path / f"grpc-{os.getpid()}.sock"
    argv = [sys.executable, "-m", "katran_grpc.server", "-testing", f"-server=unix:{sock}", "-lru_size", "1000",
            "--max_vips", "16", "-hc_forwarding=false", "-shutdown_delay", "0", "-default_mac", MAC]
    if config:
        path = tmp_path / "katran.yaml"
        path.write_text(config)
        argv += ["-config", str(path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("Server listening on"):
        proc.kill()
        raise AssertionError((line, proc.communicate()[1][-3000:]))
    return proc, f"unix:{sock}"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def katran_cli(server: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "katran_frontend.cli", "-server", server, *argv],
                          capture_output=True, text=True, timeout=60)


def test_list_shows_health_of_checked_reals(tmp_path):
    up = _listener("127.0.0.2", accept=True)
    port = up.getsockname()[1]
    closed = _listener("127.0.0.3")  # bound then closed: the port refuses connections
    assert closed.getsockname()[1] != 0
    dead_port = closed.getsockname()[1]
    closed.close()
    config = f"""version: 1
vips:
  - address: 10.100.7.1
    port: {port}
    proto: tcp
    healthcheck: {{type: tcp, interval: 0.5, timeout: 0.5, rise: 1, fall: 1, jitter: 0}}
    reals:
      - {{address: 127.0.0.2, weight: 4}}
      - address: 127.0.0.3
        weight: 4
        healthcheck: {{port: {dead_port}}}
  - address: 10.100.7.2
    port: 80
    proto: tcp
    reals: [10.0.0.9]
"""
    proc, server = _server(tmp_path, config)
    try:
        deadline = time.monotonic() + 15
        while True:
            res = katran_cli(server, "-l")
            assert res.returncode == 0, res.stderr
            done = (" ->127.0.0.3         weight: 0 flags:  health: down" in res.stdout
                    and " ->127.0.0.2         weight: 4 flags:  health: up (ok)" in res.stdout)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        lines = res.stdout.splitlines()
        checked = lines[lines.index(f"VIP:           10.100.7.1 Port: {port:>6} Protocol: tcp"):][:4]
        assert checked[1] == "Vip's flags: "
        assert checked[2] == " ->127.0.0.2         weight: 4 flags:  health: up (ok)", res.stdout
        assert re.fullmatch(r" ->127\.0\.0\.3         weight: 0 flags:  health: down \(.*refused.*\)", checked[3]), \
            res.stdout
        # a VIP without checks: Katran's lines as they are
        assert " ->10.0.0.9          weight: 1 flags: " in lines
        assert lines[-1] == "exiting" and STAMP.sub("", res.stderr) == "vips len 2\n"

        res = katran_cli(server, "-l", "-json")
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert doc["health_checks"] is True
        by_vip = {(v["address"], v["port"]): v for v in doc["vips"]}
        reals = {r["address"]: r for r in by_vip[("10.100.7.1", port)]["reals"]}
        assert reals["127.0.0.2"]["health"]["state"] == "up" and reals["127.0.0.2"]["weight"] == 4
        down = reals["127.0.0.3"]["health"]
        assert down["state"] == "down" and down["applied"] is True and down["failures"] >= 1
        assert down["mode"] == "real" and down["checks"] >= 1
        assert by_vip[("10.100.7.2", 80)]["reals"] == [
            {"address": "10.0.0.9", "weight": 1, "flags": [], "health": None}]
    finally:
        _stop(proc)
        up.close()


def test_list_without_checks_is_katrans_format(tmp_path):
    proc, server = _server(tmp_path)
    try:
        assert katran_cli(server, "-A", "-t", "10.100.8.1:80").returncode == 0
        assert katran_cli(server, "-a", "-t", "10.100.8.1:80", "-r", "10.0.0.7").returncode == 0
        res = katran_cli(server, "-l")
        assert res.stdout == ("VIP:           10.100.8.1 Port:     80 Protocol: tcp\nVip's flags: \n"
                              " ->10.0.0.7          weight: 1 flags: \nexiting\n")
        doc = json.loads(katran_cli(server, "-l", "-json").stdout)
        assert doc == {"vips": [{"address": "10.100.8.1", "port": 80, "proto": "tcp", "flags": [],
                                 "reals": [{"address": "10.0.0.7", "weight": 1, "flags": [], "health": None}]}],
                       "health_checks": False}
    finally:
        _stop(proc)
