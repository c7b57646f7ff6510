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


# ----------------------------------------------------------------------- the declarative bgp section
BGP_FILE = """version: 1
balancer:
  main_interface: eth0
vips:
  - address: 10.100.1.1
    port: 80
    proto: tcp
    reals: [10.200.1.2]
bgp:
  router_id: 10.0.0.1
  local_as: 65001
  local_address: 10.0.0.1
  peers:
    - address: 10.0.0.254
      asn: 65000
    - address: fc00::fe
      asn: 65000
  communities: ["65001:100"]
  min_healthy: 2
  hold_time: 6
  keepalive_time: 2
"""


def test_bgp_section_parses_and_dumps_back():
    from katran import declarative

    d = declarative.loads(BGP_FILE, "f.yaml")
    assert d.bgp == BgpConfig(router_id="10.0.0.1", local_as=65001, local_address="10.0.0.1", min_healthy=2,
                              communities=["65001:100"], hold_time=6, keepalive_time=2,
                              peers=[BgpPeer(address="10.0.0.254", asn=65000), BgpPeer(address="fc00::fe", asn=65000)])
    text = declarative.dumps(d)
    assert "bgp:" in text and "hold_time: 6" in text and "bfd:" not in text  # defaults are left out
    assert declarative.loads(text, "dump.yaml") == d
    assert declarative.loads(BGP_FILE.split("bgp:")[0], "f.yaml").bgp is None


@pytest.mark.parametrize("old, new, where", [
    ("  local_as: 65001", "  local_as: 0", "f.yaml:11: bgp.local_as=0"),
    ("  local_as: 65001", "  local_as: 65001\n  colour: red", "f.yaml:12: bgp.colour="),
    ("      asn: 65000\n    - address: fc00::fe", "      asn: x\n    - address: fc00::fe", "f.yaml:15: bgp.peers[0].asn='x'"),
    ("    - address: fc00::fe", "    - address: 10.0.0.300", "f.yaml:16: bgp.peers[1].address='10.0.0.300'"),
    ("  min_healthy: 2", "  bfd: maybe", "f.yaml:19: bgp.bfd='maybe'"),
    ("  communities: [\"65001:100\"]", "  communities: [\"65001:100000\"]", "bgp.communities"),
    ("  keepalive_time: 2", "  keepalive_time: 3", "f.yaml:21: bgp.keepalive_time=3"),
    ("  router_id: 10.0.0.1\n", "", "f.yaml:10: bgp="),
    ("  router_id: 10.0.0.1", "  router_id: auto", "f.yaml:10: bgp.router_id='auto'"),  # no such main_interface here
])
def test_bgp_section_errors_name_file_line_field(old, new, where):
    from katran import declarative

    text = BGP_FILE.replace(old, new).replace("main_interface: eth0", "main_interface: kno-such-if")
    assert text != BGP_FILE.replace("main_interface: eth0", "main_interface: kno-such-if")
    with pytest.raises(declarative.ConfigFileError) as err:
        declarative.loads(text, "f.yaml")
    assert str(err.value).startswith(where) if where.startswith("f.yaml") else where in str(err.value), str(err.value)


# ----------------------------------------------------------------------- the daemon's announcer
def _listen(ns: str, addr: str, port: int):
    import socket

    from katran.lab.netns import inside

    with inside(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(512)  # the kernel completes the checks' handshakes
    return s


def test_daemon_announces_by_health_drains_and_withdraws_on_close(fleet):
    """The server's Daemon with a file holding vips, a tcp health check and a bgp section: its
    own BIRD (in balancer namespace a) announces the VIP; every real failing its check
    withdraws it (the checker's transition wakes the announcer), recovery announces it again;
    drain / undrain; close withdraws."""
    from katran import declarative
    from katran.daemon import Daemon
    from katran.lab.netns import inside

    r, a, b, router, tmp = fleet
    text = f"""version: 1
vips:
  - address: 10.100.1.1
    port: 80
    proto: tcp
    healthcheck: {{type: tcp, port: 9911, interval: 0.2, timeout: 0.15, rise: 1, fall: 1}}
    reals: [127.0.0.2, 127.0.0.3]
bgp:
  router_id: 10.77.1.1
  local_as: 65001
  peers: [{{address: 10.77.1.254, asn: 65000}}]
  state_dir: {tmp}/daemon-bird
"""
    path = tmp / "lb.yaml"
    path.write_text(text)
    desired = declarative.load(str(path))
    lb = KatranLb(KatranConfig(testing=True, default_mac="00:00:de:ad:be:af", forwarding_cores=(),
                               max_vips=8, max_reals=16, lru_size=1000))
    lb.start()
    socks = [_listen(a, addr, 9911) for addr in ("127.0.0.2", "127.0.0.3")]
    daemon = Daemon(lb, str(path), desired)
    try:
        with inside(a):  # BIRD, the checker's probes and the announcer's thread live in namespace a
            daemon.start()
        assert daemon.announcer is not None and str(daemon.announcer.bird.dir) == f"{tmp}/daemon-bird"
        wait_for(lambda: nexthops(r, "10.100.1.1/32"), ["10.77.1.1"], 20)
        assert daemon.bgp_state() == (False, ["10.100.1.1"])
        assert declarative.loads(daemon.dump(), "dump.yaml").bgp == desired.bgp  # -dump keeps the section
        socks.pop().close()  # one real down: still min_healthy (1)
        wait_for(lambda: sum(1 for st in daemon.health() if not st.healthy), 1, 5)
        assert daemon.healthy_reals(VIP) == 1 and nexthops(r, "10.100.1.1/32") == ["10.77.1.1"]
        socks.pop().close()  # every real down: withdrawn, though the checker fails open
        t_down = wait_for(lambda: nexthops(r, "10.100.1.1/32"), [], 5)
        assert sorted(x.weight for x in lb.get_reals_for_vip(VIP)) == [1, 1]  # fail open on the lb
        socks = [_listen(a, addr, 9911) for addr in ("127.0.0.2", "127.0.0.3")]
        t_up = wait_for(lambda: nexthops(r, "10.100.1.1/32"), ["10.77.1.1"], 10)
        waited = daemon.drain(timeout=3, quiet_for=0.2)
        assert nexthops(r, "10.100.1.1/32") == [] and daemon.bgp_state() == (True, []) and waited < 3
        assert daemon.undrain()
        wait_for(lambda: nexthops(r, "10.100.1.1/32"), ["10.77.1.1"], 10)
        # SIGHUP with a changed bgp section: the same BIRD reconfigured; a broken file changes nothing
        old = daemon.announcer
        path.write_text(text.replace("local_as: 65001", "local_as: 65001\n  communities: ['65001:7']"))
        with inside(a):
            assert daemon.reload() is not None
        assert daemon.announcer is old and daemon.announcer.cfg.communities == ((65001, 7),)
        assert nexthops(r, "10.100.1.1/32") == ["10.77.1.1"]  # reconfigured in place: never withdrawn
        wait_for(lambda: "(65001,7)" in router.ctl("show route 10.100.1.1/32 all").stdout, True, 10)
        current = daemon.announcer
        path.write_text(text.replace("local_as: 65001", "local_as: 0"))
        assert daemon.reload() is None and daemon.announcer is current
        daemon.close()
        wait_for(lambda: nexthops(r, "10.100.1.1/32"), [], 5)
        assert daemon.announcer is None
        print(f"\ndaemon: withdrawn {t_down:.2f} s after the last real failed, announced {t_up:.2f} s after recovery")
    finally:
        daemon.close()
        for s in socks:
            s.close()
        lb.close()
