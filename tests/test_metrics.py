"""Prometheus metrics (katran.metrics): a scrape under traffic equals the stats getters.

The balancer runs in testing mode and packets go through the loaded program
(BPF_PROG_TEST_RUN); scrapes are parsed with prometheus_client's own parser.
The servers' -metrics_addr and a netns scrape with real TCP traffic are in
tests/test_metrics_servers.py.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from conftest import lb_config
from katran import KatranConfig, KatranLb, ModifyAction, Real, ValidationError, VipFlag, VipKey, metrics


root = pytest.mark.privileged  # BPF programs (and namespaces): needs root


def config(**kw) -> KatranConfig:
    kw.setdefault("max_vips", 16)
    kw.setdefault("max_reals", 64)
    return lb_config(**kw)


def parse(text: str) -> dict:
    """{(sample name, frozenset(labels)): value} and the family types by name."""
    samples, types = {}, {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def eth(l3) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / l3)


def traffic(n: int) -> list:
    """A mix: TCP SYN + ACKs and UDP to VIPs, v6, not-a-VIP, an empty VIP, oversized, source-routed."""
    frames = []
    for i in range(n):
        sport = 1024 + i
        frames += [
            eth(IP(src=f"192.168.{i % 4}.{1 + i % 200}", dst="10.200.1.1") / TCP(sport=sport, dport=80, flags="S")),
            eth(IP(src=f"192.168.{i % 4}.{1 + i % 200}", dst="10.200.1.1") / TCP(sport=sport, dport=80, flags="A")),
            eth(IP(src="172.16.0.9", dst="10.200.1.2") / UDP(sport=sport, dport=53) / b"q"),
            eth(IPv6(src="fc00:9::1", dst="fc00:1::1") / TCP(sport=sport, dport=443, flags="A")),
            eth(IP(src="10.10.10.10", dst="10.200.1.9") / UDP(sport=sport, dport=53) / b"q"),  # source-routed
        ]
        if i % 5 == 0:
            frames += [
                eth(IP(src="192.168.9.9", dst="10.99.99.99") / TCP(sport=sport, dport=80)),  # not a VIP: pass
                eth(IP(src="192.168.9.9", dst="10.200.1.3") / TCP(sport=sport, dport=80)),  # no reals: CH drop
                eth(IP(src="192.168.9.9", dst="10.200.1.1") / TCP(sport=sport, dport=80) / (b"x" * 1600)),
                eth(IP(src="127.0.0.1", dst="10.200.1.1") / TCP(sport=sport, dport=80)),  # martian: malformed
            ]
    return frames


@pytest.fixture
def busy_lb():
    cfg = config(lpm_src_lookup=True, icmp_toobig_generation=True, max_pckt_size=1500, enable_hc=True,
                 katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337")
    with KatranLb(cfg) as lb:
        tcp, udp, v6 = VipKey("10.200.1.1", 80, "tcp"), VipKey("10.200.1.2", 53, "udp"), VipKey("fc00:1::1", 443, "tcp")
        routed, empty = VipKey("10.200.1.9", 53, "udp"), VipKey("10.200.1.3", 80, "tcp")
        for vip, reals, flags in ((tcp, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], 0), (udp, ["10.0.0.3", "fc00:2::1"], 0),
                                  (v6, ["fc00:2::1", "fc00:2::2"], 0), (routed, ["10.0.0.1"], VipFlag.SRC_ROUTING),
                                  (empty, [], 0)):
            lb.add_vip(vip, flags)
            if reals:
                lb.modify_reals_for_vip(ModifyAction.ADD, [Real(r) for r in reals], vip)
        lb.add_src_routing_rule(["10.10.0.0/16"], "10.0.0.9")
        yield lb


def getter_values(lb: KatranLb) -> dict:
    """What every metric must equal, from the stats getters."""
    want = {}
    for vip in lb.get_all_vips():
        label = {"vip": str(vip)}
        s = lb.get_stats_for_vip(vip)
        want[("katran_vip_packets_total", frozenset(label.items()))] = s.v1
        want[("katran_vip_bytes_total", frozenset(label.items()))] = s.v2
        d = lb.get_decap_stats_for_vip(vip)
        want[("katran_vip_decap_packets_total", frozenset(label.items()))] = d.v1
        sid = lb.get_sid_routing_stats_for_vip(vip)
        want[("katran_vip_sid_new_connections_total", frozenset(label.items()))] = sid.v1
        want[("katran_vip_sid_lru_mismatches_total", frozenset(label.items()))] = sid.v2
    reals = {str(r.address) for v in lb.get_all_vips() for r in lb.get_reals_for_vip(v)}
    reals |= set(lb.get_src_routing_rule().values())
    for real in reals:
        s = lb.get_real_stats(lb.get_index_for_real(real))
        want[("katran_real_packets_total", frozenset({"real": real}.items()))] = s.v1
        want[("katran_real_bytes_total", frozenset({"real": real}.items()))] = s.v2

    def put(name, getter, labels=None, fields=("v1", "v2")):
        stats = getter()
        if labels is None:
            want[(name, frozenset())] = getattr(stats, fields[0])
            return
        for (key, val), field in zip(labels, fields):
            want[(name, frozenset({key: val}.items()))] = getattr(stats, field)

    put("katran_xdp_input_packets_total", lb.get_xdp_total_stats)
    put("katran_xdp_input_bytes_total", lb.get_xdp_total_stats, fields=("v2",))
    for action, getter in (("tx", lb.get_xdp_tx_stats), ("pass", lb.get_xdp_pass_stats),
                           ("drop", lb.get_xdp_drop_stats)):
        put("katran_xdp_packets_total", getter, [("action", action)], ("v1",))
        put("katran_xdp_bytes_total", getter, [("action", action)], ("v2",))
    put("katran_lru_lookups_total", lb.get_lru_stats)
    put("katran_lru_misses_total", lb.get_lru_stats, fields=("v2",))
    put("katran_lru_tcp_misses_total", lb.get_lru_miss_stats, [("class", "syn"), ("class", "non_syn")])
    put("katran_lru_fallback_packets_total", lb.get_lru_fallback_stats)
    put("katran_ch_drops_total", lb.get_ch_drop_stats, [("reason", "real_invalid"), ("reason", "ring_slot_empty")])
    put("katran_encap_failures_total", lb.get_encap_fail_stats, [("family", "ipv4"), ("family", "ipv6")])
    put("katran_icmp_too_big_total", lb.get_icmp_too_big_stats, [("family", "ipv4"), ("family", "ipv6")])
    put("katran_src_routing_packets_total", lb.get_src_routing_stats, [("result", "no_match"), ("result", "routed")])
    put("katran_inline_decap_dst_packets_total", lb.get_inline_decap_stats)
    put("katran_decap_packets_total", lb.get_decap_stats, [("family", "ipv4"), ("family", "ipv6")])
    put("katran_xpop_decap_packets_total", lb.get_xpop_decap_successful_stats, [("family", "ipv4"), ("family", "ipv6")])
    put("katran_udp_flow_migrations_total", lb.get_udp_flow_migration_stats)
    put("katran_global_lru_packets_total", lb.get_global_lru_stats, [("result", "no_map"), ("result", "routed")])
    put("katran_quic_icmp_packets_total", lb.get_quic_icmp_stats, [("class", "all"), ("class", "ignorable")])
    put("katran_malformed_packets_total", lb.get_malformed_stats,
        [("reason", "bad_ip_length"), ("reason", "martian_source")])
    put("katran_flow_cache_total", lb.get_flow_cache_stats, [("event", "hit"), ("event", "fill")])
    for prefix, getter in (("katran_quic", lb.get_lb_quic_packets_stats), ("katran_tpr", lb.get_tcp_server_id_routing_stats),
                           ("katran_stable_rt", lb.get_udp_stable_routing_stats)):
        for field, v in getter().items():
            suffix = "" if field == "cid_invalid_server_id_sample" else "_total"
            want[(f"{prefix}_{field}{suffix}", frozenset())] = v
    for cpu, v in enumerate(lb.get_per_core_packets_stats()):
        want[("katran_cpu_packets_total", frozenset({"cpu": str(cpu)}.items()))] = v
    hc = lb.get_hc_program_stats()
    for field in ("processed", "dropped", "skipped", "too_big", "dst_matched", "src_matched"):
        want[("katran_hc_packets_total", frozenset({"result": field}.items()))] = getattr(hc, field)
    failed, invalid = lb.get_katran_lb_stats().v1, lb.get_katran_lb_stats().v2
    want[("katran_bpf_failed_calls_total", frozenset())] = failed
    want[("katran_addr_validation_failures_total", frozenset())] = invalid
    want[("katran_config_generation_total", frozenset())] = lb.config_generation
    want[("katran_vips", frozenset())] = len(lb.get_all_vips())
    want[("katran_dataplane_attached", frozenset())] = 0
    want[("katran_dataplane_loaded", frozenset())] = 1
    return want


@root
def test_scrape_under_traffic_equals_the_getters(busy_lb):
    lb = busy_lb
    collector_text = []
    lb.add_healthchecker_dst(1000, "10.0.0.1")
    probe = eth(IP(src="10.0.13.37", dst="10.200.1.1") / TCP(sport=5555, dport=80, flags="S"))
    for round_ in range(3):
        for frame in traffic(20):
            lb.run_packet(frame)
        for mark in (1000, 0):  # one forwarded probe, one packet the hc program skips
            lb.run_hc_packet(probe, mark)
        text = metrics.scrape_text(lb)
        collector_text.append(text)
        samples, types = parse(text)
        want = getter_values(lb)
        missing = [k for k in want if k not in samples]
        assert not missing
        wrong = {k: (samples[k], v) for k, v in want.items() if samples[k] != v}
        assert not wrong
    # the traffic did reach the interesting counters
    assert value(samples, "katran_vip_packets_total", vip="[fc00:1::1]:443/tcp") == 60
    assert value(samples, "katran_xdp_packets_total", action="pass") > 0
    assert value(samples, "katran_ch_drops_total", reason="ring_slot_empty") > 0
    assert value(samples, "katran_icmp_too_big_total", family="ipv4") > 0
    assert value(samples, "katran_src_routing_packets_total", result="routed") == 20  # new flows only
    assert value(samples, "katran_lru_tcp_misses_total", **{"class": "syn"}) == 60 + 12  # + the empty VIP's
    assert value(samples, "katran_real_packets_total", real="10.0.0.9") == 60
    assert value(samples, "katran_hc_packets_total", result="processed") == 3  # the marked probes
    assert value(samples, "katran_malformed_packets_total", reason="martian_source") == 12
    # prometheus conventions: katran_ prefix, counters end in _total, per-VIP label format
    assert all(name.startswith("katran_") for name in types)
    assert types["katran_vip_packets"] == "counter" and types["katran_vips"] == "gauge"
    # the collector through any prometheus_client registry gives the same numbers
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.KatranCollector(lb))
    generic, _ = parse(generate_latest(registry).decode())
    fast, _ = parse(metrics.scrape_text(lb))
    drop = {"katran_scrape_duration_seconds"}
    assert {k: v for k, v in generic.items() if k[0] not in drop} == {k: v for k, v in fast.items() if k[0] not in drop}


@root
def test_series_follow_vips_and_reals(busy_lb):
    lb = busy_lb
    collector = metrics.KatranCollector(lb)
    text = lambda: metrics.render_text(collector.collect())  # noqa: E731 - one collector: its label cache
    samples, _ = parse(text())
    assert ("katran_vip_packets_total", frozenset({"vip": "10.200.1.3:80/tcp"}.items())) in samples
    lb.del_vip(VipKey("10.200.1.3", 80, "tcp"))
    lb.modify_reals_for_vip(ModifyAction.DEL, [Real("10.0.0.2")], VipKey("10.200.1.1", 80, "tcp"))
    lb.add_vip(VipKey("10.200.1.4", 8080, "udp"))
    lb.add_real_for_vip(Real("10.0.0.42"), VipKey("10.200.1.4", 8080, "udp"))
    samples, _ = parse(text())
    vips = {dict(k[1])["vip"] for k in samples if k[0] == "katran_vip_packets_total"}
    reals = {dict(k[1])["real"] for k in samples if k[0] == "katran_real_packets_total"}
    assert vips == {str(v) for v in lb.get_all_vips()} and "10.200.1.4:8080/udp" in vips
    assert "10.0.0.2" not in reals and "10.0.0.42" in reals
    assert value(samples, "katran_reals") == len(reals)


@root
def test_config_generation_counts_successful_mutations(busy_lb):
    lb = busy_lb
    gen = lb.config_generation
    vip = VipKey("10.200.2.1", 80, "tcp")
    lb.add_vip(vip)
    lb.add_real_for_vip(Real("10.0.1.1"), vip)  # calls modify_reals_for_vip: counts once
    assert lb.config_generation == gen + 2
    with pytest.raises(ValidationError):
        lb.modify_vip(vip, 1 << 30)  # an unknown flag bit
    with pytest.raises(KeyError):
        lb.modify_reals_for_vip(ModifyAction.DEL, [Real("10.9.9.9")], vip)  # not a real of the VIP
    lb.get_stats_for_vip(vip)
    lb.list_lru(vip)
    assert lb.config_generation == gen + 2  # failures and reads do not count
    samples, _ = parse(metrics.scrape_text(lb))
    assert value(samples, "katran_config_generation_total") == gen + 2


def test_metrics_addr_parsing():
    assert metrics.parse_metrics_addr("9100") == ("127.0.0.1", 9100)
    assert metrics.parse_metrics_addr(":9100") == ("127.0.0.1", 9100)
    assert metrics.parse_metrics_addr("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert metrics.parse_metrics_addr("[::1]:9100") == ("::1", 9100)
    for bad, why in (("", "HOST:PORT"), ("::1:9100", "brackets"), ("[::1]", "brackets"), ("host:x", "port"),
                     ("10.0.0.1:70000", "port"), ("example.com:9100", "not an IP")):
        with pytest.raises(ValidationError, match="metrics_addr") as exc:
            metrics.parse_metrics_addr(bad)
        assert why in str(exc.value)


@root
def test_http_endpoint_serves_metrics_and_rpc_metrics(busy_lb):
    lb = busy_lb
    ep = metrics.MetricsEndpoint(lb, "127.0.0.1:0", "test")
    ep.start()
    try:
        assert ep.port > 0
        for frame in traffic(5):
            lb.run_packet(frame)
        ep.rpc.observe("addVip", "OK", 0.002)
        with pytest.raises(KeyError):
            ep.rpc.timed("delVip", lambda: lb.del_vip(VipKey("10.9.9.9", 1, "tcp")))

        def get(path="/metrics"):
            with urllib.request.urlopen(f"http://127.0.0.1:{ep.port}{path}", timeout=10) as resp:
                return resp.headers.get("Content-Type"), resp.read().decode()

        results = []
        threads = [threading.Thread(target=lambda: results.append(get())) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 4
        ctype, text = results[0]
        assert ctype.startswith("text/plain")
        samples, types = parse(text)
        want = getter_values(lb)
        assert all(samples[k] == v for k, v in want.items())
        assert value(samples, "katran_rpc_requests_total", frontend="test", method="addVip", status="OK") == 1
        assert value(samples, "katran_rpc_requests_total", frontend="test", method="delVip", status="NOT_FOUND") == 1
        assert value(samples, "katran_rpc_duration_seconds_count", frontend="test", method="addVip") == 1
        assert types["katran_rpc_duration_seconds"] == "histogram"
        with pytest.raises(urllib.error.HTTPError) as exc:
            get("/other")
        assert exc.value.code == 404
    finally:
        ep.stop()
    with pytest.raises(ValidationError, match="metrics_addr"):
        busy = metrics.MetricsEndpoint(lb, "127.0.0.1:0", "x")
        busy.start()
        try:
            metrics.MetricsEndpoint(lb, f"127.0.0.1:{busy.port}", "y").start()
        finally:
            busy.stop()


def test_collector_of_a_stopped_balancer_reports_not_loaded():
    lb = KatranLb(config())
    samples, _ = parse(metrics.scrape_text(lb))
    assert value(samples, "katran_dataplane_loaded") == 0
    assert value(samples, "katran_dataplane_attached") == 0
    assert not any(k[0] == "katran_vip_packets_total" for k in samples)


@root
def test_health_check_state_is_exported(busy_lb):
    import asyncio

    from katran.hc_checker import CheckSpec, HcChecker, ProbeFailed

    lb = busy_lb
    vip = VipKey("10.200.1.1", 80, "tcp")

    async def prober(spec, target, port, mark, src):
        if str(target) == "10.0.0.2":
            raise ProbeFailed("connection refused")
        return 0.001

    checker = HcChecker(lb, {vip: CheckSpec(fall=1, rise=1)}, prober=prober, through_vip=False)
    checker.sync()

    async def once():
        for key in list(checker._states):
            await checker.check_once(key)

    asyncio.run(once())
    ep = metrics.MetricsEndpoint(lb, ":0", "test")
    ep.add_hc_checker(checker)
    samples, _ = parse(ep.render().decode())
    for real, healthy in (("10.0.0.1", 1), ("10.0.0.2", 0), ("10.0.0.3", 1)):
        labels = {"vip": str(vip), "real": real}
        assert value(samples, "katran_real_healthy", **labels) == healthy
        assert value(samples, "katran_hc_checks_total", **labels) == 1
        assert value(samples, "katran_hc_check_action_applied", **labels) == 1 - healthy
    # the drain is visible in the balancer's metrics too: generation went up
    assert value(samples, "katran_config_generation_total") == lb.config_generation


@root
def test_a_scrape_reads_each_map_once(busy_lb, monkeypatch):
    from katran.adapter import bpf

    reads = []
    for name in ("lookup_batch_raw", "lookup", "items", "keys"):
        original = getattr(bpf.Map, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            reads.append(self.name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(bpf.Map, name, spy)
    metrics.scrape_text(busy_lb)
    assert sorted(reads) == sorted(set(reads))  # no map twice
    assert {"stats", "reals_stats", "decap_vip_stats", "server_id_stats", "quic_stats_map", "tpr_stats_map",
            "stable_rt_stats"} <= set(reads)
