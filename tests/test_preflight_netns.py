"""katran-preflight and the servers' auto flags against real netlink: network namespaces
joined by a veth (the load balancer's eth0, a router answering ARP / neighbour
solicitations), a lab topology, and katran-server-grpc -default_mac=auto."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time

import attrs
import pytest

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.netns,
]

from pyroute2 import IPRoute  # noqa: E402

from katran.host import discovery as D  # noqa: E402
from katran.host.kernel import KernelNet, in_netns  # noqa: E402

from host_tree import HostTree  # noqa: E402

ENV = dict(os.environ)  # the frontends are installed (pip install -e .)
PREFLIGHT = [sys.executable, "-m", "katran.host.cli"]
IFA_F_NODAD = 0x02


@attrs.define
class GwLink:
    lb: str  # netns with eth0 (the balancer's side)
    router: str  # netns with gw0 (10.77.0.1, fd77::1)
    router_mac: str

    def ipr(self, ns: str) -> IPRoute:
        return _ipr(ns)

    def flush_neighbours(self) -> None:
        with self.ipr(self.lb) as ipr:
            idx = ipr.link_lookup(ifname="eth0")[0]
            for fam in (socket.AF_INET, socket.AF_INET6):
                for n in ipr.neigh("dump", ifindex=idx, family=fam):
                    with contextlib.suppress(Exception):
                        ipr.neigh("del", ifindex=idx, dst=n.get_attr("NDA_DST"), family=fam)

    def route(self, *args, **kw) -> None:
        with self.ipr(self.lb) as ipr:
            ipr.route(*args, **kw)


_n = iter(range(1000))


def _ipr(ns: str) -> IPRoute:
    """A netlink socket in ``ns``, made by this thread inside it (no helper process)."""
    with in_netns(ns):
        return IPRoute()


@pytest.fixture
def gw():
    tag = f"{os.getpid() % 100000}{next(_n)}"
    lb, router = f"kpflb{tag}", f"kpfrt{tag}"
    subprocess.run(["ip", "netns", "add", lb], check=True)
    subprocess.run(["ip", "netns", "add", router], check=True)
    try:
        with _ipr(lb) as ipr:
            ipr.link("add", ifname="eth0", kind="veth", peer="gw0")
            ipr.link("set", index=ipr.link_lookup(ifname="gw0")[0], net_ns_fd=router)
            idx = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=idx, address="10.77.0.2", prefixlen=24)
            ipr.addr("add", index=idx, address="fd77::2", prefixlen=64, flags=IFA_F_NODAD)
            ipr.link("set", index=idx, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        with _ipr(router) as ipr:
            idx = ipr.link_lookup(ifname="gw0")[0]
            ipr.addr("add", index=idx, address="10.77.0.1", prefixlen=24)
            ipr.addr("add", index=idx, address="fd77::1", prefixlen=64, flags=IFA_F_NODAD)
            ipr.link("set", index=idx, state="up")
            mac = str(ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")).lower()
        link = GwLink(lb, router, mac)
        link.route("add", dst="0.0.0.0/0", gateway="10.77.0.1")
        yield link
    finally:
        for ns in (lb, router):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def run_in(ns: str, argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, env=ENV,
                          timeout=kw.pop("timeout", 60), **kw)


# ------------------------------------------------------------- gateway MAC
def test_gateway_entry_present(gw):
    net = KernelNet(gw.lb)
    net.probe("10.77.0.1", "eth0")  # real ARP traffic makes the entry
    deadline = time.monotonic() + 3
    while not (net.neighbour("10.77.0.1", "eth0") or D.Gateway()).mac and time.monotonic() < deadline:
        time.sleep(0.05)
    got = D.find_gateway(net, "eth0")
    assert (got.ip, got.family, got.mac, got.error) == ("10.77.0.1", 4, gw.router_mac, "")
    assert got.probes == 0 and got.state in ("REACHABLE", "STALE", "DELAY")


def test_gateway_entry_missing_is_resolved(gw):
    gw.flush_neighbours()
    net = KernelNet(gw.lb)
    assert net.neighbour("10.77.0.1", "eth0") is None
    got = D.find_gateway(net, "eth0")
    assert got.mac == gw.router_mac and got.probes >= 1 and not got.error
    assert net.neighbour("10.77.0.1", "eth0").mac == gw.router_mac  # the kernel's table has it now


def test_gateway_not_answering_fails(gw):
    gw.route("del", dst="0.0.0.0/0", gateway="10.77.0.1")
    gw.route("add", dst="0.0.0.0/0", gateway="10.77.0.9")  # on-link, nobody has it
    got = D.find_gateway(KernelNet(gw.lb), "eth0", timeout=1.0)
    assert not got.mac and got.probes >= 2
    assert got.error.startswith("no neighbour entry for gateway 10.77.0.9 on eth0 after resolving")
    assert "state: " in got.error


def test_two_default_routes_are_ambiguous(gw):
    gw.route("add", dst="0.0.0.0/0", gateway="10.77.0.3", priority=200)
    got = D.find_gateway(KernelNet(gw.lb), "eth0")
    assert got.ambiguous and not got.mac
    assert "ambiguous: 2 IPv4 default gateways on eth0" in got.error
    assert "via 10.77.0.1 dev eth0" in got.error and "via 10.77.0.3 dev eth0 metric 200" in got.error


def test_multipath_default_route_is_ambiguous(gw):
    gw.route("del", dst="0.0.0.0/0", gateway="10.77.0.1")
    with gw.ipr(gw.lb) as ipr:
        idx = ipr.link_lookup(ifname="eth0")[0]
        ipr.route("add", dst="0.0.0.0/0", multipath=[{"gateway": "10.77.0.1", "oif": idx},
                                                      {"gateway": "10.77.0.4", "oif": idx}])
    got = D.find_gateway(KernelNet(gw.lb), "eth0")
    assert got.ambiguous and "via 10.77.0.1 via 10.77.0.4 dev eth0" in got.error


def test_ipv6_gateway_when_no_ipv4_default(gw):
    gw.route("del", dst="0.0.0.0/0", gateway="10.77.0.1")
    gw.route("add", dst="::/0", gateway="fd77::1", family=socket.AF_INET6)
    gw.flush_neighbours()
    got = D.find_gateway(KernelNet(gw.lb), "eth0")
    assert (got.ip, got.family, got.mac) == ("fd77::1", 6, gw.router_mac), got.error


def test_default_route_on_another_interface(gw):
    gw.route("del", dst="0.0.0.0/0", gateway="10.77.0.1")
    with gw.ipr(gw.lb) as ipr:
        ipr.link("add", ifname="dum0", kind="veth", peer="dum1")  # no dummy module here: a veth
        idx = ipr.link_lookup(ifname="dum0")[0]
        ipr.addr("add", index=idx, address="10.88.0.2", prefixlen=24)
        ipr.link("set", index=idx, state="up")
        ipr.route("add", dst="0.0.0.0/0", gateway="10.88.0.1")
    got = D.find_gateway(KernelNet(gw.lb), "eth0")
    assert got.error == "no default route via eth0 (default via 10.88.0.1 dev dum0)"


# ------------------------------------------------------------ the command
def test_channel_counts_in_the_namespace(gw):
    """veth: 1 receive queue, through pyroute2's ethtool and through the `ethtool -l` command."""
    net = KernelNet(gw.lb)
    assert net.channels("eth0") == (1, "ethtool (pyroute2)")
    assert net._channels_command("eth0") == 1
    assert net.channels("nope0") is None


def test_preflight_with_netns_option(gw):
    gw.flush_neighbours()
    res = subprocess.run([*PREFLIGHT, "--intf", "eth0", "--netns", gw.lb, "--json"], capture_output=True, text=True,
                         env=ENV, timeout=60)
    doc = json.loads(res.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert res.returncode == {"ok": 0, "warn": 1, "fail": 2}[doc["verdict"]], res.stdout
    assert checks["interface"]["verdict"] == "ok" and "driver veth" in checks["interface"]["detail"]
    assert "(from netlink)" in checks["interface"]["detail"]  # /sys here shows the caller's namespace
    assert checks["xdp_mode"]["verdict"] == "ok"
    assert checks["irq_pinning"]["verdict"] == "ok" and "virtual device" in checks["irq_pinning"]["detail"]
    assert checks["rx_queues"]["detail"].startswith("1 receive queue (from ethtool")
    assert checks["bpf_jit_enable"]["verdict"] != "fail" or "not readable" not in checks["bpf_jit_enable"]["detail"]
    assert checks["default_gateway"]["verdict"] == "ok"
    assert f"lladdr {gw.router_mac}" in checks["default_gateway"]["detail"]
    cpus = D.online_cpus(D.HostRoot())
    assert doc["flags"]["default_mac"] == gw.router_mac and doc["flags"]["forwarding_cores"] == cpus
    assert doc["server_flags"].startswith(f"-default_mac={gw.router_mac} -forwarding_cores=")


def test_preflight_inside_the_namespace(gw):
    """Run as ``ip netns exec``: sysfs is the namespace's; the JIT sysctls (only in the initial
    namespace) are still read."""
    res = run_in(gw.lb, [*PREFLIGHT, "--intf", "eth0"])
    assert res.returncode in (0, 1), res.stdout + res.stderr
    assert "eth0: driver veth, virtual, MAC" in res.stdout and "(from sysfs)" in res.stdout
    assert re.search(r"  (ok  |WARN)  bpf_jit_enable +net\.core\.bpf_jit_enable = [12]", res.stdout), res.stdout
    assert f"lladdr {gw.router_mac}" in res.stdout
    assert res.stdout.splitlines()[-1].startswith(f"server flags: -default_mac={gw.router_mac} -forwarding_cores=")


def test_preflight_test_tree_with_a_real_gateway(gw, tmp_path):
    """The seed's 4 CPUs / 2 NUMA nodes from a test tree, the gateway MAC from the namespace."""
    HostTree(tmp_path, irqbalance=False)
    res = subprocess.run([*PREFLIGHT, "--intf", "eth0", "--netns", gw.lb, "--root", str(tmp_path)],
                         capture_output=True, text=True, env=ENV, timeout=60)
    assert res.stdout.splitlines()[-1] == (f"server flags: -default_mac={gw.router_mac} -forwarding_cores=0,1,2,3 "
                                           "-numa_nodes=0,1,0,1"), res.stdout
    assert res.returncode == 0, res.stdout


# ------------------------------------------------------------- auto flags
def test_config_from_flags_resolves_the_mac_in_a_netns(gw):
    from katran_frontend.goflags import FlagSet
    from katran_frontend.server_flags import add_server_flags, config_from_flags

    gw.flush_neighbours()
    ns = add_server_flags(FlagSet("t", ""), "", "").parse(["-testing", "-default_mac=auto"])
    cfg = config_from_flags(ns, netns=gw.lb)
    assert cfg.default_mac == bytes.fromhex(gw.router_mac.replace(":", ""))


def test_server_starts_with_auto_flags(gw, tmp_path):
    gw.flush_neighbours()
    sock = tmp_path / "grpc.sock"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", gw.lb, sys.executable, "-m", "katran_grpc.server", "-testing", "-intf=eth0",
         "-default_mac=auto", "-forwarding_cores=auto", "-numa_nodes=auto", f"-server=unix:{sock}",
         "-hc_forwarding=false", "-lru_size=1000", "-max_vips=16", "-shutdown_delay=0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        line = proc.stdout.readline()
        assert line.startswith("Server listening"), (line, proc.stderr.read() if proc.poll() is not None else "")
        res = subprocess.run([sys.executable, "-m", "katran_frontend.cli", "-server", f"unix:{sock}", "-list_mac"],
                             capture_output=True, text=True, env=ENV, timeout=60)
        assert res.stderr.endswith(f"Mac address is {gw.router_mac}\n"), res.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert f"-default_mac=auto: IPv4 default gateway 10.77.0.1 on eth0 is {gw.router_mac}" in err
    cpus = D.format_cpu_list(D.online_cpus(D.HostRoot()))
    assert f"-forwarding_cores=auto: {cpus} (eth0 is a virtual device (veth)" in err
    assert "-numa_nodes=auto: " in err


def test_thrift_server_starts_with_default_mac_auto(gw):
    gw.flush_neighbours()
    proc = subprocess.Popen(
        ["ip", "netns", "exec", gw.lb, sys.executable, "-m", "katran_thrift.server", "-testing", "-intf=eth0",
         "-default_mac=auto", "-server=127.0.0.1:0", "-insecure", "-hc_forwarding=false", "-lru_size=1000",
         "-max_vips=16", "-shutdown_delay=0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        line = proc.stdout.readline()
        m = re.match(r"Server listening on (127\.0\.0\.1:\d+)$", line.strip())
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        res = run_in(gw.lb, [sys.executable, "-m", "katran_frontend.cli", "-thrift_server", m.group(1), "-list_mac"])
        assert res.stderr.endswith(f"Mac address is {gw.router_mac}\n"), res.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert f"-default_mac=auto: IPv4 default gateway 10.77.0.1 on eth0 is {gw.router_mac}" in err


def test_server_refuses_an_ambiguous_gateway(gw):
    gw.route("add", dst="0.0.0.0/0", gateway="10.77.0.3", priority=200)
    res = run_in(gw.lb, [sys.executable, "-m", "katran_grpc.server", "-testing", "-intf=eth0", "-default_mac=auto",
                         "-server=unix:/nonexistent/never.sock", "-hc_forwarding=false", "-lru_size=1000"])
    assert res.returncode == 1 and res.stdout == ""
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("katran-server-grpc:")]
    assert line.startswith("katran-server-grpc: error: default_mac='auto': ambiguous: 2 IPv4 default gateways on eth0")
    assert line.endswith("(flag -default_mac)")


# -------------------------------------------------------------------- lab
@pytest.mark.slow
def test_preflight_on_the_labs_load_balancer():
    from katran.lab.topology import TopologySpec, topology

    with topology(TopologySpec(prefix=f"kpf{os.getpid() % 10000}", n_reals=1)) as topo:
        res = topo.run(topo.lb.netns, [*PREFLIGHT, "--intf", topo.lb.ifname, "--json"], check=False, env=ENV)
        doc = json.loads(res.stdout)
        checks = {c["name"]: c for c in doc["checks"]}
        assert checks["interface"]["verdict"] == "ok" and "driver veth" in checks["interface"]["detail"]
        assert checks["default_gateway"]["verdict"] == "ok", checks["default_gateway"]
        assert doc["flags"]["default_mac"] == topo.lb.router_mac
        assert f"via {topo.lb.gw4} dev {topo.lb.ifname}" in checks["default_gateway"]["detail"]
        assert res.returncode == {"ok": 0, "warn": 1, "fail": 2}[doc["verdict"]]


# ------------------------------------------------------------ declarative
def test_declarative_file_takes_auto(gw):
    from katran import declarative
    from katran.declarative import ConfigFileError

    gw.flush_neighbours()
    text = "version: 1\nbalancer:\n  main_interface: eth0\n  default_mac: auto\n  forwarding_cores: [0]\n" \
           "  numa_nodes: auto\n"
    desired = declarative.loads(text, "lb.yaml", netns=gw.lb)
    assert desired.balancer["default_mac"] == gw.router_mac
    assert desired.balancer["forwarding_cores"] == [0] and desired.balancer["numa_nodes"] == "0"
    gw.route("add", dst="0.0.0.0/0", gateway="10.77.0.3", priority=200)
    with pytest.raises(ConfigFileError) as exc:
        declarative.loads(text, "lb.yaml", netns=gw.lb)
    assert str(exc.value).startswith("lb.yaml:4: balancer.default_mac=") and "ambiguous" in str(exc.value)
    with pytest.raises(ConfigFileError, match="main_interface"):
        declarative.loads("version: 1\nbalancer:\n  main_interface: 'a/b'\n  default_mac: auto\n", "x.yaml",
                          netns=gw.lb)
