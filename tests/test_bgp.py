"""VIP announcement through BIRD 2: a router namespace running BIRD with ECMP learns the VIP
from two balancer namespaces, each running our announcer and its own BIRD; a VIP whose reals
are all drained is withdrawn; a crashed speaker is detected by BFD."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from katran import KatranConfig, KatranLb, ModifyAction, Real, ValidationError, VipKey
from katran.bgp import Announcer, BgpConfig, BgpPeer, Bird, router_config, speaker_config

privileged = [
    pytest.mark.privileged,
    pytest.mark.skipif(shutil.which("bird") is None and not os.path.exists("/usr/sbin/bird"),
                       reason="BIRD 2 is not installed (apt-get install bird2; scripts/setup.sh does)"),
]
VIP = VipKey("10.100.1.1", 80, "tcp")


def test_config_validation_names_the_field():
    peer = BgpPeer(address="10.0.0.254", asn=65000)
    with pytest.raises(ValidationError) as err:
        BgpConfig(router_id="10.0.0.1", local_as=0, peers=[peer])
    assert err.value.field == "bgp.local_as"
    with pytest.raises(ValidationError) as err:
        BgpConfig(router_id="10.0.0.1", local_as=65001, peers=[])
    assert err.value.field == "bgp.peers"
    with pytest.raises(ValidationError) as err:
        BgpConfig(router_id="10.0.0.1", local_as=65001, peers=[peer], communities=["65001:99999"])
    assert err.value.field == "bgp.communities"
    with pytest.raises(ValidationError) as err:
        BgpConfig(router_id="10.0.0.1", local_as=65001, peers=[peer], hold_time=3, keepalive_time=2)
    assert err.value.field == "bgp.keepalive_time"


@pytest.mark.skipif(shutil.which("bird") is None and not os.path.exists("/usr/sbin/bird"),
                    reason="BIRD 2 is not installed (apt-get install bird2; scripts/setup.sh does)")
def test_generated_configs_parse(tmp_path):
    cfg = BgpConfig(router_id="10.0.0.1", local_as=65001, communities=["65001:7"],
                    peers=[BgpPeer(address="10.0.0.254", asn=65000), BgpPeer(address="fc00::fe", asn=65000)])
    routes = tmp_path / "vips.conf"
    for v in (4, 6):
        (tmp_path / f"vips.conf.v{v}").write_text("route 10.1.1.1/32 blackhole;\n" if v == 4 else "")
    (tmp_path / "s.conf").write_text(speaker_config(cfg, routes))
    (tmp_path / "r.conf").write_text(router_config("10.0.0.254", 65000, [("10.0.0.1", 65001), ("10.0.0.2", 65001)]))
    for name in ("s.conf", "r.conf"):
        res = subprocess.run(["bird", "-p", "-c", str(tmp_path / name)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr


def ip(*argv, ns=None):
    cmd = ["ip", *(["-n", ns] if ns else []), *argv]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def nexthops(ns: str, prefix: str) -> list[str]:
    routes = json.loads(ip("-j", "route", "show", prefix, ns=ns) or "[]")
    if not routes:
        return []
    r = routes[0]
    return sorted(h["gateway"] for h in r["nexthops"]) if "nexthops" in r else [r["gateway"]]


def wait_for(fn, want, timeout: float):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        got = fn()
        if got == want:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"after {timeout} s: {fn()!r}, wanted {want!r}")


@pytest.fixture
def fleet(tmp_path):
    for mark in privileged:
        if mark.args and mark.args[0]:  # the privileged mark has no condition: conftest skips
            pytest.skip(mark.kwargs["reason"])
    tag = f"kbg{os.getpid() % 10000}"
    r, a, b = f"{tag}-r", f"{tag}-a", f"{tag}-b"
    made = []
    try:
        for ns in (r, a, b):
            ip("netns", "add", ns)
            made.append(ns)
            ip("link", "set", "lo", "up", ns=ns)
        for n, lb in ((1, a), (2, b)):
            ip("link", "add", f"r{n}", "netns", r, "type", "veth", "peer", "name", "eth0", "netns", lb)
            ip("addr", "add", f"10.77.{n}.254/24", "dev", f"r{n}", ns=r)
            ip("link", "set", f"r{n}", "up", ns=r)
            ip("addr", "add", f"10.77.{n}.1/24", "dev", "eth0", ns=lb)
            ip("link", "set", "eth0", "up", ns=lb)
        router = Bird(tmp_path / "router", netns=r)
        router.write_config(router_config("10.77.1.254", 65000, [("10.77.1.1", 65001), ("10.77.2.1", 65001)]))
        router.start()
        yield r, a, b, router, tmp_path
        router.stop()
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _lb():
    lb = KatranLb(KatranConfig(testing=True, default_mac="00:00:de:ad:be:af", forwarding_cores=(),
                               max_vips=8, max_reals=16, lru_size=1000))
    lb.start()
    lb.add_vip(VIP)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.200.1.2"), Real("10.200.1.3")], VIP)
    return lb


def test_announce_ecmp_withdraw_and_bfd(fleet):
    r, a, b, router, tmp = fleet
    lbs, speakers = [], []
    try:
        for n, ns in ((1, a), (2, b)):
            lb = _lb()
            cfg = BgpConfig(router_id=f"10.77.{n}.1", local_as=65001, min_healthy=1,
                            peers=[BgpPeer(address=f"10.77.{n}.254", asn=65000)])
            ann = Announcer(lb, cfg, Bird(tmp / f"lb{n}", netns=ns))
            ann.start()
            lbs.append(lb)
            speakers.append(ann)
        t_up = wait_for(lambda: nexthops(r, "10.100.1.1/32"), ["10.77.1.1", "10.77.2.1"], 20)
        # every real of the VIP drained on balancer a: a withdraws, the router keeps b
        lbs[0].modify_reals_for_vip(ModifyAction.ADD, [Real("10.200.1.2", 0), Real("10.200.1.3", 0)], VIP)
        added, removed = speakers[0].update()
        assert [str(x) for x in removed] == ["10.100.1.1"] and not added
        t_withdraw = wait_for(lambda: nexthops(r, "10.100.1.1/32"), ["10.77.2.1"], 10)
        # back: announced again
        lbs[0].modify_reals_for_vip(ModifyAction.ADD, [Real("10.200.1.2", 1)], VIP)
        speakers[0].update()
        wait_for(lambda: nexthops(r, "10.100.1.1/32"), ["10.77.1.1", "10.77.2.1"], 10)
        # b's speaker hangs (SIGSTOP: its TCP session stays open, no withdrawal, no FIN): only BFD
        # (3 x 100 ms) can tell the router, which then takes b's next hop away
        speakers[1].bird.proc.send_signal(signal.SIGSTOP)
        t_bfd = wait_for(lambda: nexthops(r, "10.100.1.1/32"), ["10.77.1.1"], 5)
        assert t_bfd < 1.5, t_bfd
        speakers[1].bird.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: nexthops(r, "10.100.1.1/32"), ["10.77.1.1", "10.77.2.1"], 20)
        # b's speaker crashes (SIGKILL): the kernel closes its session, the route goes at once
        speakers[1].bird.kill()
        t_crash = wait_for(lambda: nexthops(r, "10.100.1.1/32"), ["10.77.1.1"], 5)
        # a graceful drain withdraws first
        waited = speakers[0].drain(traffic=lambda: 0, quiet_for=0.2)
        wait_for(lambda: nexthops(r, "10.100.1.1/32"), [], 5)
        print(f"\nbgp: both announced after {t_up:.2f} s, withdraw seen in {t_withdraw:.3f} s, "
              f"hung speaker detected (BFD) in {t_bfd:.3f} s, crash in {t_crash:.3f} s, drain waited {waited:.2f} s")
    finally:
        for ann in speakers:
            ann.stop()
        for lb in lbs:
            lb.close()
