"""Packet capture with real traffic: the lab topology (client -> router -> katran -> reals),
``katran-server-grpc`` in the lb's namespace, standalone XDP and shared mode (xdp_root),
``katran-cli -capture`` writing a pcap file or stdout, read back with ``tcpdump -r``.

Every capture records the client's packet as the balancer got it and the same packet
IPIP-encapsulated towards the real; tcpdump prints the latter as
``IP <lb> > <real>: IP <client>.<port> > <vip>.80: ...``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time

import pytest

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.netns,
    pytest.mark.slow,
]

VIP = "10.100.1.200"


@pytest.fixture(scope="module", params=["standalone", "shared"])
def lab(request):
    """(topology, grpc server, mode) with two reals serving HTTP on the VIP."""
    from katran import decap, shared
    from katran.lab import services
    from katran.lab.netns import inside
    from katran.lab.topology import TopologySpec, topology

    old_affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(old_affinity)})
    spec = TopologySpec(prefix=f"ktc{request.param[0]}{os.getpid() % 10000}", n_reals=2)
    with topology(spec) as topo:
        reals, server, root_installed = [], None, None
        flags = ["-hc_forwarding=false"]
        try:
            for h in topo.reals:
                with inside(h.netns):
                    decap.install(h.ifname, [VIP], pin_root=topo.pin_root / h.role, fix_rp_filter=0)
                reals.append(services.RealServers(h.netns, h.role, [VIP]))
            if request.param == "shared":
                map_path = f"/sys/fs/bpf/{topo.prefix}_root"
                with inside(topo.lb.netns):
                    shared.install(topo.lb.ifname, map_path=map_path)
                root_installed = map_path
                flags += [f"-map_path={map_path}", "-prog_pos=2"]
            server = services.GrpcServer(topo, topo.gateway_mac(), flags=flags)
            server.start()
            yield topo, server, request.param
        finally:
            if server is not None:
                server.stop()
            if root_installed:
                with inside(topo.lb.netns):
                    shared.uninstall(topo.lb.ifname, map_path=root_installed)
            for r in reals:
                r.close()
            os.sched_setaffinity(0, old_affinity)


@pytest.fixture
def kc(lab):
    """A gRPC client of the lab's server with VIP:80 -> real1, real2 (deleted afterwards)."""
    from katran.models import ModifyAction, Real, VipKey
    from katran.lab import services
    from katran_grpc.client import GrpcKatranClient

    topo, server, _ = lab
    client = GrpcKatranClient(server.address, timeout=10.0)
    vip = VipKey(VIP, services.HTTP_PORT, "tcp")
    client.add_vip(vip)
    client.modify_reals_for_vip(ModifyAction.ADD, [Real(h.ip4) for h in topo.reals], vip)
    client.vip = vip
    yield client
    try:
        client.del_vip(vip)
    finally:
        client.close()


def _tcpdump() -> str:
    path = shutil.which("tcpdump")
    assert path, "tcpdump is installed by scripts/setup.sh"
    return path


def _cli_argv(server, *args: str) -> list[str]:
    from katran.lab import services

    return [services.entry_point("katran-cli"), f"-server={server.address}", *args]


def _traffic_until(topo, done, seconds: float = 20.0) -> int:
    """HTTP GETs through the VIP from the client until ``done()`` (the capture has its packets)."""
    from katran.lab import services

    n = 0
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        services.http_get(topo.client.netns, VIP)
        n += 1
        time.sleep(0.05)
    assert done(), f"the capture did not end within {seconds}s ({n} requests sent)"
    return n


def _read_pcap(path) -> list[str]:
    out = subprocess.run([_tcpdump(), "-nn", "-r", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def _plain_and_encapsulated(lines: list[str], client: str, real_addrs: set) -> tuple[list, list]:
    flow = re.compile(rf"IP {re.escape(client)}\.\d+ > {re.escape(VIP)}\.80: ")
    plain = [ln for ln in lines if re.search(rf"^\S+ {flow.pattern}", ln)]
    encap = [ln for ln in lines
             if any(f" > {r}: " in ln for r in real_addrs) and flow.search(ln) and ln not in plain]
    return plain, encap


def test_cli_capture_to_a_file_read_by_tcpdump(lab, kc, tmp_path):
    topo, server, _ = lab
    out = tmp_path / "out.pcap"
    proc = subprocess.Popen(_cli_argv(server, "-capture", "-vip", f"{VIP}:80", "-count", "6", "-w", str(out)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _traffic_until(topo, lambda: proc.poll() is not None)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert stdout == ""
    assert "6 packets captured, 0 lost" in stderr
    lines = _read_pcap(out)
    assert len(lines) == 6  # -count
    plain, encap = _plain_and_encapsulated(lines, topo.client.ip4, {h.ip4 for h in topo.reals})
    assert len(plain) == 3 and len(encap) == 3, lines  # in, out, in, out, ...
    # each client packet is followed by its encapsulated copy
    for i in range(0, 6, 2):
        assert lines[i] in plain and lines[i + 1] in encap


def test_cli_capture_to_stdout_piped_into_tcpdump(lab, kc):
    topo, server, _ = lab
    real2 = topo.reals[1].ip4
    cli = subprocess.Popen(_cli_argv(server, "-capture", "-t", f"{VIP}:80", "-r", real2, "-count", "4",
                                     "-w", "-"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dump = subprocess.Popen([_tcpdump(), "-nn", "-r", "-"], stdin=cli.stdout, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    cli.stdout.close()
    try:
        _traffic_until(topo, lambda: cli.poll() is not None)
        text, err = dump.communicate(timeout=20)
        cli.wait(10)
    finally:
        for p in (cli, dump):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert cli.returncode == 0, cli.stderr.read().decode()
    assert dump.returncode == 0, err
    lines = text.strip().splitlines()
    assert len(lines) == 4
    plain, encap = _plain_and_encapsulated(lines, topo.client.ip4, {real2})
    assert len(plain) == 2 and len(encap) == 2, lines  # only the flows that went to real2


def test_grpc_capture_filters_by_source(lab, kc):
    """In process, through the ext gRPC service: a source filter matching the client."""
    from katran.lab import services

    topo, _, mode = lab
    got, errors = [], []

    def consume() -> None:
        try:
            got.extend(kc.capture(src=f"{topo.client.ip4}/32", count=8))
        except Exception as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    _traffic_until(topo, lambda: not t.is_alive())
    t.join(10)
    assert not errors, errors
    assert len(got) == 8
    ins = [p for p in got if p.direction == "in"]
    outs = [p for p in got if p.direction == "out"]
    assert len(ins) == len(outs) == 4
    link = topo.run(topo.lb.netns, ["ip", "-o", "link", "show", "dev", topo.lb.ifname]).stdout
    lb_ifindex = int((link.decode() if isinstance(link, bytes) else link).split(":")[0])
    assert {p.ifindex for p in got} == {lb_ifindex}
    for p in ins:
        assert p.data[26:30] == bytes(map(int, topo.client.ip4.split(".")))  # IPv4 source
    for p in outs:
        assert p.data[23] == 4 and p.orig_len == len(p.data)  # outer IPv4 protocol: IPIP; snaplen kept all
    assert kc.capture_lost == 0
    assert abs(got[0].timestamp_ns / 1e9 - time.time()) < 60  # wall clock
    assert services.http_get(topo.client.netns, VIP) in ("real1", "real2")  # traffic flows after the capture
