"""katran-cli -dump / -apply FILE [-dry_run] against a live server (testing mode): the live state
as a declarative file, a file applied as the minimal difference, errors naming FILE:LINE."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import start_grpc_server, stop_server

from katran.declarative import loads

pytestmark = pytest.mark.privileged

FILE = textwrap.dedent("""\
    version: 1
    vips:
      - address: 10.100.1.1
        port: 80
        proto: tcp
        reals:
          - {address: 10.200.1.2, weight: 2}
          - 10.200.1.3
    """)


@pytest.fixture
def server(tmp_path):
    address, proc, log = start_grpc_server(tmp_path)
    yield address, tmp_path, str(log)
    stop_server(proc)


def cli(address, *args):
    return subprocess.run([sys.executable, "-m", "katran_frontend.cli", f"-server={address}", *args],
                          capture_output=True, text=True, timeout=60)


def test_apply_dry_run_dump(server):
    address, tmp, log = server
    path = tmp / "lb.yaml"
    path.write_text(FILE)
    dry = cli(address, "-apply", str(path), "-dry_run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == ["would change: add vip 10.100.1.1:80/tcp flags 0x0",
                                       "would change: add/reweight reals of 10.100.1.1:80/tcp: 10.200.1.2 w2, "
                                       "10.200.1.3 w1"]
    assert "10.100.1.1" not in cli(address, "-l").stdout  # a dry run changes nothing
    res = cli(address, "-apply", str(path))
    assert res.returncode == 0 and res.stdout.startswith("changed: add vip 10.100.1.1:80/tcp"), res
    assert " ->10.200.1.2        weight: 2" in cli(address, "-l").stdout
    again = cli(address, "-apply", str(path))
    assert again.stdout.strip() == f"{path}: no change"
    dump = cli(address, "-dump")
    assert dump.returncode == 0
    live = loads(dump.stdout)
    # the dump reads back as the applied state (plus what the file left to defaults: the hash function)
    assert {v: s.reals for v, s in live.vips.items()} == {v: s.reals for v, s in loads(FILE).vips.items()}
    assert [s.hash_function.name for s in live.vips.values()] == ["MAGLEV_V2"]  # the server's -hash_function
    # the dump is itself a file -apply takes: nothing to change
    (tmp / "dump.yaml").write_text(dump.stdout)
    assert cli(address, "-apply", str(tmp / "dump.yaml")).stdout.strip() == f"{tmp / 'dump.yaml'}: no change"
    assert "config <api> (apply): add vip 10.100.1.1:80/tcp" in open(log).read()  # the audit trail


def test_invalid_file_names_file_line_and_changes_nothing(server):
    address, tmp, _ = server
    path = tmp / "bad.yaml"
    path.write_text(FILE.replace("weight: 2", "weight: -2"))
    res = cli(address, "-apply", str(path))
    assert res.returncode == 1
    assert f"{path}:7: vips[0].reals[0].weight=-2" in res.stderr, res.stderr
    assert "10.100.1.1" not in cli(address, "-l").stdout
    missing = cli(address, "-apply", str(tmp / "nope.yaml"))
    assert missing.returncode == 1 and "No such file" in missing.stderr
