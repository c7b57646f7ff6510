"""katran-cli's flow table commands (-list_lru, -search_lru, -delete_lru, -purge_lru) and the
side-effect-free -flow, against a live server (testing mode; entries made by running flows
through the program, as Katran's simulator does)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import start_grpc_server, stop_server

from katran import Flow, ModifyAction, Real, VipKey

pytestmark = pytest.mark.privileged
VIP = VipKey("10.100.1.1", 80, "tcp")


@pytest.fixture
def server(tmp_path):
    from katran_grpc.client import GrpcKatranClient

    address, proc, _ = start_grpc_server(tmp_path)
    kc = GrpcKatranClient(address, timeout=10)
    kc.add_vip(VIP)
    kc.modify_reals_for_vip(ModifyAction.ADD, [Real("10.200.1.2"), Real("10.200.1.3")], VIP)
    yield address, kc
    stop_server(proc)


def cli(address, *args):
    return subprocess.run([sys.executable, "-m", "katran_frontend.cli", f"-server={address}", *args],
                          capture_output=True, text=True, timeout=60)


def test_flow_is_side_effect_free_and_unknown_vip_is_an_error(server):
    address, kc = server
    res = cli(address, "-flow", "192.168.1.9:4000", "-t", "10.100.1.1:80")
    assert res.returncode == 0 and res.stdout.startswith("real: 10.200.1."), res
    assert kc.list_lru(VIP).total == 0  # the query made no connection-table entry
    live = kc.get_real_for_flow(Flow("192.168.1.9", "10.100.1.1", 4000, 80, "tcp"))
    assert res.stdout.splitlines()[0] == f"real: {live}"  # the program agrees
    bad = cli(address, "-flow", "192.168.1.9:4000", "-t", "10.100.9.9:80")
    assert bad.returncode == 1 and "not found" in bad.stderr


def test_list_search_delete_purge(server):
    address, kc = server
    reals = {sp: kc.get_real_for_flow(Flow("192.168.1.9", "10.100.1.1", sp, 80, "tcp")) for sp in range(5000, 5010)}
    listing = json.loads(cli(address, "-list_lru", "-t", "10.100.1.1:80", "-json").stdout)
    assert listing["total"] == 10 and len(listing["entries"]) == 10
    assert {(e["client_port"], e["real"]) for e in listing["entries"]} == set(reals.items())
    text = cli(address, "-list_lru", "-limit", "3").stdout.splitlines()
    assert len(text) == 4 and text[-1].startswith("entries: 3 of 10")
    one = cli(address, "-list_lru", "-r", reals[5000])
    assert all(ln.endswith(f"-> {reals[5000]}") for ln in one.stdout.splitlines()[:-1])
    found = cli(address, "-search_lru", "-t", "10.100.1.1:80", "-client", "192.168.1.9:5003").stdout
    assert "client 192.168.1.9:5003" in found and f"-> {reals[5003]}" in found
    gone = cli(address, "-delete_lru", "-t", "10.100.1.1:80", "-client", "192.168.1.9:5003")
    assert gone.returncode == 0 and gone.stdout.startswith("deleted from: fallback"), gone
    assert kc.list_lru(VIP).total == 9
    assert cli(address, "-purge_lru").returncode == 1  # a purge needs a filter
    purged = cli(address, "-purge_lru", "-t", "10.100.1.1:80")
    assert purged.stdout.startswith("purged 9 entries"), purged
    assert kc.list_lru(VIP).total == 0
