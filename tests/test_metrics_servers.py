"""-metrics_addr of katran-server-grpc and katran-server-thrift: /metrics next to the RPC port,
RPCs counted by method and status, and a scrape with real TCP traffic through the balancer
in network namespaces (the lab topology) that equals the stats getters."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from katran.models import Real, VipKey

root = pytest.mark.privileged  # BPF programs (and namespaces): needs root
METRICS_LINE = re.compile(r"Metrics on (http://\S+/metrics)$")


def scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=20) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def start_server(module: str, *flags: str):
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "-testing", "-server=127.0.0.1:0", "-insecure", "-hc_forwarding=false",
         "-shutdown_delay=0", "-max_vips=8", "-max_reals=16", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )
    first, second = proc.stdout.readline().strip(), proc.stdout.readline().strip()
    port = re.match(r"Server listening on 127\.0\.0\.1:(\d+)$", first)
    url = METRICS_LINE.match(second)
    if not (port and url):
        proc.kill()
        raise AssertionError(f"unexpected output {first!r} {second!r}; stderr: {proc.stderr.read()[-2000:]}")
    return proc, int(port.group(1)), url.group(1)


def stop_server(proc) -> str:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.stderr.read()


@root
@pytest.mark.parametrize("frontend", ["grpc", "thrift"])
def test_server_serves_metrics_with_rpc_counts(frontend):
    module = "katran_grpc.server" if frontend == "grpc" else "katran_thrift.server"
    proc, port, url = start_server(module, "-metrics_addr=127.0.0.1:0")
    try:
        assert url.startswith("http://127.0.0.1:")
        if frontend == "grpc":
            from katran_grpc.client import GrpcKatranClient as Client
        else:
            from katran_thrift.client import ThriftKatranClient as Client
        vip = VipKey("10.200.1.1", 80, "tcp")
        with Client(f"127.0.0.1:{port}") as client:
            client.add_vip(vip)
            client.add_real_for_vip(Real("10.0.0.1"), vip)
            with pytest.raises(Exception):
                client.add_vip(vip)  # already there
            with pytest.raises(Exception):
                client.get_stats_for_vip(VipKey("10.9.9.9", 80, "tcp"))
            assert client.get_stats_for_vip(vip).v1 == 0
        samples = scrape(url)
        count = lambda method, status: value(  # noqa: E731
            samples, "katran_rpc_requests_total", frontend=frontend, method=method, status=status)
        assert count("addVip", "OK") == 1
        assert count("addVip", "ALREADY_EXISTS") == 1
        assert count("getStatsForVip", "NOT_FOUND") == 1
        assert count("getStatsForVip", "OK") == 1
        assert value(samples, "katran_rpc_duration_seconds_count", frontend=frontend, method="addVip") == 2
        assert value(samples, "katran_config_generation_total") == 2  # the VIP, its real
        assert value(samples, "katran_vips") == 1
        assert value(samples, "katran_vip_packets_total", vip="10.200.1.1:80/tcp") == 0
        assert value(samples, "katran_dataplane_loaded") == 1
        assert value(samples, "katran_dataplane_attached") == 0  # -testing
    finally:
        err = stop_server(proc)
    assert "Traceback" not in err


@root
@pytest.mark.parametrize("frontend", ["grpc", "thrift"])
def test_metrics_addr_off_by_default_and_bad_values_name_the_flag(frontend):
    module = "katran_grpc.server" if frontend == "grpc" else "katran_thrift.server"
    proc = subprocess.Popen([sys.executable, "-m", module, "-testing", "-server=127.0.0.1:0", "-insecure", "-shutdown_delay=0",
                             "-hc_forwarding=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline().startswith("Server listening on")
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        assert "Metrics on" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    bad = subprocess.run([sys.executable, "-m", module, "-testing", "-server=127.0.0.1:0", "-insecure", "-hc_forwarding=false",
                          "-metrics_addr=::1:9100"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    [line] = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert "metrics_addr" in line and "brackets" in line


@root
@pytest.mark.netns
@pytest.mark.slow
def test_netns_scrape_with_real_tcp_traffic_equals_the_getters():
    from katran.lab import services
    from katran.lab.topology import TopologySpec, topology

    from katran.lab.netns import inside
    from katran_grpc.client import GrpcKatranClient

    vip_addr = "10.100.1.1"
    old_affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(old_affinity)})  # one CPU: one LRU, flows stay where they started
    spec = TopologySpec(prefix=f"kmt{os.getpid() % 10000}", n_reals=2)
    try:
        with topology(spec) as topo:
            from katran import decap

            reals = {}
            server = None
            try:
                for h in topo.reals:
                    with inside(h.netns):
                        decap.install(h.ifname, [vip_addr], pin_root=topo.pin_root / h.role, fix_rp_filter=0)
                    reals[h.role] = services.RealServers(h.netns, h.role, [vip_addr])
                server = services.GrpcServer(topo, topo.gateway_mac(),
                                             flags=["-hc_forwarding=false", "-metrics_addr=127.0.0.1:0"])
                server.start()
                url = None
                deadline = time.monotonic() + 10
                while url is None and time.monotonic() < deadline:
                    m = re.search(r"Metrics on (http://\S+/metrics)", server.log_path.read_text(errors="replace"))
                    url = m.group(1) if m else time.sleep(0.1)
                assert url, server.tail_log()
                kc = GrpcKatranClient(server.address)
                vip = VipKey(vip_addr, services.HTTP_PORT, "tcp")
                kc.add_vip(vip)
                for h in topo.reals:
                    kc.add_real_for_vip(Real(h.ip4), vip)
                answered = [services.http_get(topo.client.netns, vip_addr) for _ in range(20)]
                assert set(answered) <= set(reals) and len(answered) == 20
                with inside(topo.lb.netns):
                    samples = scrape(url)
                vip_stats = kc.get_stats_for_vip(vip)
                assert vip_stats.v1 > 0  # every HTTP exchange went through the balancer
                assert value(samples, "katran_vip_packets_total", vip=str(vip)) == vip_stats.v1
                assert value(samples, "katran_vip_bytes_total", vip=str(vip)) == vip_stats.v2
                for h in topo.reals:
                    st = kc.get_real_stats(kc.get_index_for_real(h.ip4))
                    assert value(samples, "katran_real_packets_total", real=h.ip4) == st.v1
                assert value(samples, "katran_xdp_packets_total", action="tx") == kc.get_xdp_tx_stats().v1
                lru = kc.get_lru_stats()
                assert value(samples, "katran_lru_lookups_total") == lru.v1
                assert value(samples, "katran_lru_misses_total") == lru.v2
                assert value(samples, "katran_lru_tcp_misses_total", **{"class": "syn"}) == \
                    kc.get_lru_miss_stats().v1 >= 20  # one SYN per connection
                assert value(samples, "katran_dataplane_attached") == 1
                assert value(samples, "katran_rpc_requests_total", frontend="grpc", method="addVip",
                             status="OK") == 1
                kc.close()
            finally:
                if server is not None:
                    server.stop()
                for r in reals.values():
                    r.close()
    finally:
        os.sched_setaffinity(0, old_affinity)
