"""katran-cli (katranc's flags and output) against an in-process gRPC server
over a real KatranLb (testing mode), plus real subprocess runs of the CLI
and of katran-server-grpc."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("grpc", reason="grpcio not installed")

ROOT = Path(__file__).resolve().parents[1]

from katran import KatranConfig, KatranLb  # noqa: E402
from katran.models import HashFunction, ModifyAction, QuicReal, Real, VipFlag, VipKey  # noqa: E402
from katran_frontend import cli  # noqa: E402
from katran_grpc.server import KatranGrpcServer  # noqa: E402

MAC = "00:00:de:ad:be:af"
STAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ", re.MULTILINE)
VIP = VipKey("10.0.0.1", 80, "tcp")
V6VIP = VipKey("fc00::1", 53, "udp")
ENV = dict(os.environ)  # the frontends are installed (pip install -e .)


@pytest.fixture(scope="module")
def lb():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    lb = KatranLb(KatranConfig(testing=True, default_mac=MAC, lru_size=1000, max_vips=64, enable_hc=True,
                               katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337"))
    lb.start()
    yield lb
    lb.close()


@pytest.fixture(scope="module")
def server(lb):
    srv = KatranGrpcServer(lb, "127.0.0.1:0")
    srv.start()
    yield srv
    srv.stop(0)


@pytest.fixture
def run(server, lb, capsys):
    """run(*argv) -> (exit status, stdout, stderr without Go's log timestamps)."""

    def _run(*argv):
        rc = cli.main(["-server", server.address, *argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        assert all(STAMP.match(line) for line in err.splitlines()), err  # Go log lines only
        return rc, out, STAMP.sub("", err)

    yield _run
    for vip in lb.get_all_vips():
        lb.del_vip(vip)
    if lb.get_quic_reals_mapping():
        lb.modify_quic_reals_mapping(ModifyAction.DEL, lb.get_quic_reals_mapping())
    for somark in list(lb.get_healthcheckers_dst()):
        lb.del_healthchecker_dst(somark)
    lb.change_mac(MAC)


def syn(vip: VipKey, sport: int) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    return bytes(Ether(src="00:11:22:33:44:55", dst="00:00:00:00:00:01") / IP(src="192.168.9.9", dst=str(vip.address))
                 / TCP(sport=sport, dport=vip.port, flags="S"))


# ------------------------------------------------------------------ services and reals
def test_add_services(run, lb):
    assert run("-A", "-t", "10.0.0.1:80") == (0, "exiting\n", "Adding service: 10.0.0.1:80 6\nVip modified\n")
    rc, out, err = run("-A", "-u", "[fc00::1]:53", "-vf", "NO_SPORT")
    assert (rc, err) == (0, "Adding service: [fc00::1]:53 17\nVip modified\n")
    assert set(lb.get_all_vips()) == {VIP, V6VIP}
    assert lb.get_vip_flags(V6VIP) == VipFlag.NO_SPORT


def test_edit_service_flags(run, lb):
    lb.add_vip(VIP)
    assert run("-E", "-t", "10.0.0.1:80", "-vf", "NO_LRU")[0] == 0
    assert lb.get_vip_flags(VIP) == VipFlag.NO_LRU
    assert run("--E", "--t=10.0.0.1:80", "-vf=DPORT_HASH,NO_SPORT")[0] == 0  # Go/GNU spellings, flag list
    assert lb.get_vip_flags(VIP) == VipFlag.NO_LRU | VipFlag.DPORT_HASH | VipFlag.NO_SPORT
    rc, out, err = run("-E", "-t", "10.0.0.1:80", "-vf", "NO_LRU", "-unset")
    assert (rc, err) == (0, "Adding service: 10.0.0.1:80 6\nVip modified\n")
    assert lb.get_vip_flags(VIP) == VipFlag.DPORT_HASH | VipFlag.NO_SPORT
    rc, out, err = run("-E", "-t", "10.0.0.1:80", "-vf", "FAST")
    assert (rc, out) == (1, "exiting\n") and "unrecognized flag: FAST" in err
    assert lb.get_vip_flags(VIP) == VipFlag.DPORT_HASH | VipFlag.NO_SPORT


def test_delete_service(run, lb):
    lb.add_vip(VIP)
    assert run("-D", "-t", "10.0.0.1:80") == (0, "exiting\n", "Deleting service: 10.0.0.1:80 6\nVip modified\n")
    assert lb.get_all_vips() == []
    rc, out, err = run("-D", "-t", "10.0.0.1:80")  # unknown now: refused (CANCELLED), fatal as in Katran's client
    assert_refused(rc, out, err, "vip 10.0.0.1:80/tcp not found")
    assert "Vip modified" not in err


def assert_refused(rc: int, out: str, err: str, *needles: str) -> None:
    """A refused Bool RPC, printed as Katran's Go client prints its server's CANCELLED: exit 1, no "exiting"."""
    assert rc == 1 and out == "", (rc, out, err)
    last = err.splitlines()[-1]
    assert last.startswith("Error: rpc error: code = Canceled desc = "), err
    for needle in needles:
        assert needle in last, (needle, err)


@pytest.mark.parametrize("argv, needle", [
    (["-A", "-t", "10.0.0.1"], '-t "10.0.0.1": missing port (expected <addr>:<port>, e.g. 10.0.0.1:80)'),
    (["-A", "-t", "10.0.0.1:http"], '-t "10.0.0.1:http": the port "http" is not a number'),
    (["-A", "-t", "fc00::1:80"], '-t "fc00::1:80": an IPv6 address needs brackets: [fc00::1]:80'),
    (["-A", "-t", "fc00::1"], '-t "fc00::1": an IPv6 address needs brackets: [fc00::1]:<port>'),
    (["-A", "-u", "[fc00::1]80"], '-u "[fc00::1]80": expected [<v6 address>]:<port>, e.g. [fc00::1]:80'),
    (["-A", "-u", "[fc00::1]"], '-u "[fc00::1]": missing port (expected [fc00::1]:<port>'),
    (["-A", "-t", "10.0.0.1:70000"], "vip.port=70000"),
    (["-A", "-t", "10.0.0.300:80"], "vip.address"),
    (["-A", "-t", "10.0.0.1:\u0668\u0660"], 'the port "\\u0668\\u0660" is not a number'),
])
def test_bad_service_is_fatal_and_changes_nothing(run, lb, argv, needle):
    rc, out, err = run(*argv)
    assert rc == 1 and needle in err and "exiting" not in out, err
    assert "strconv" not in err and "incorrect v4" not in err
    assert lb.get_all_vips() == []


def test_reals(run, lb):
    lb.add_vip(VIP)
    assert run("-a", "-t", "10.0.0.1:80", "-r", "10.1.1.1", "-w", "5") == (0, "exiting\n", "Reals modified\n")
    assert run("-a", "-t", "10.0.0.1:80", "-r", "10.1.1.2", "-rf", "LOCAL_REAL")[0] == 0
    assert run("-e", "-t", "10.0.0.1:80", "-r", "10.1.1.1", "-w=7")[0] == 0
    reals = {str(r.address): r for r in lb.get_reals_for_vip(VIP)}
    assert reals["10.1.1.1"].weight == 7 and reals["10.1.1.2"].weight == 1
    assert lb.get_real_flags("10.1.1.2") & 2
    assert run("-d", "-t", "10.0.0.1:80", "-r", "10.1.1.1") == (0, "exiting\n", "Reals modified\n")
    assert [str(r.address) for r in lb.get_reals_for_vip(VIP)] == ["10.1.1.2"]
    rc, out, err = run("-a", "-t", "10.0.0.1:80", "-r", "10.1.1")
    assert rc == 1 and "real.address" in err
    rc, out, err = run("-a", "-t", "10.0.0.9:80", "-r", "10.1.1.3")
    assert_refused(rc, out, err, "vip 10.0.0.9:80/tcp not found")
    assert "Reals modified" not in err
    assert [str(r.address) for r in lb.get_reals_for_vip(VIP)] == ["10.1.1.2"]


def test_list(run, lb):
    lb.add_vip(VIP, int(VipFlag.NO_SPORT | VipFlag.NO_LRU))
    lb.add_vip(V6VIP)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.1.1.1", 5), Real("10.1.1.2", 1, 2)], VIP)
    lb.add_real_for_vip(Real("fc00::2", 3), V6VIP)
    rc, out, err = run("-l")
    assert rc == 0 and err == "vips len 2\n"
    blocks = {
        VIP: ("VIP:             10.0.0.1 Port:     80 Protocol: tcp\n"
              "Vip's flags:  NO_SPORT  NO_LRU \n"
              " ->10.1.1.1          weight: 5 flags: \n"
              " ->10.1.1.2          weight: 1 flags:  LOCAL_REAL \n"),
        V6VIP: ("VIP:              fc00::1 Port:     53 Protocol: udp\n"
                "Vip's flags: \n"
                " ->fc00::2           weight: 3 flags: \n"),
    }
    assert out == "".join(blocks[v] for v in lb.get_all_vips()) + "exiting\n"


# ------------------------------------------------------------------ mac, quic, healthchecks, clear
def test_mac(run, lb):
    assert run("-list_mac") == (0, "exiting\n", f"Mac address is {MAC}\n")
    assert run("-change_mac", "02:00:00:00:00:07") == (0, "exiting\n", "Mac address changed!\n")
    assert lb.get_mac() == "02:00:00:00:00:07"
    rc, out, err = run("-change_mac", "02:00:00:00:07")
    assert_refused(rc, out, err, "mac='02:00:00:00:07'")
    assert "changed" not in err
    rc, out, err = run("-change_mac", "\u00e9:11:22:33:44:55")  # non-ASCII: a clean error, escaped
    assert_refused(rc, out, err, "mac='\\xe9:11:22:33:44:55'")
    assert lb.get_mac() == "02:00:00:00:00:07"


def test_quic_mapping(run, lb):
    assert run("-quic_mapping", "10.1.1.1=1000") == (0, "exiting\n", "Quic mapping modified\n")
    assert run("-quic_mapping", "fc00::2=1001")[0] == 0
    rc, out, err = run("-list_qm")
    lines = out.splitlines()
    assert lines[0] == "printing address to quic's connection id mapping" and lines[-1] == "exiting"
    assert sorted(lines[1:-1]) == sorted(["real:             10.1.1.1 = connection id:   1000",
                                          "real:              fc00::2 = connection id:   1001"])
    assert run("-del_qm", "-quic_mapping", "10.1.1.1=1000")[0] == 0
    assert lb.get_quic_reals_mapping() == [QuicReal("fc00::2", 1001)]
    rc, out, err = run("-quic_mapping", "10.1.1.1:1000")
    assert rc == 1 and "quic mapping must be in <addr>=<id> format" in err
    assert lb.get_quic_reals_mapping() == [QuicReal("fc00::2", 1001)]


def test_healthchecks(run, lb):
    assert run("-new_hc", "10.5.5.5", "-somark", "1000") == (0, "exiting\n", "")
    assert run("-new_hc", "fc00::5", "-somark=1001") == (0, "exiting\n", "")
    assert lb.get_healthcheckers_dst() == {1000: "10.5.5.5", 1001: "fc00::5"}
    assert run("-list_hc")[1] == "somark:       1000 addr:   10.5.5.5\nsomark:       1001 addr:    fc00::5\nexiting\n"
    rc, out, err = run("-new_hc", "10.5.5", "-somark", "1002")
    assert_refused(rc, out, err, "address='10.5.5'")
    assert run("-del_hc", "-somark", "1000") == (0, "exiting\n", "")
    rc, out, err = run("-del_hc", "-somark", "4242")
    assert_refused(rc, out, err, "healthcheck somark 4242 not found")
    assert lb.get_healthcheckers_dst() == {1001: "fc00::5"}


def test_clear_all(run, lb):
    lb.add_vip(VIP)
    lb.add_vip(V6VIP)
    lb.add_healthchecker_dst(7, "10.5.5.5")
    assert run("-C") == (0, "Deleting Vips\nDeleting Healthchecks\nexiting\n", "")
    assert lb.get_all_vips() == [] and lb.get_healthcheckers_dst() == {}


# ------------------------------------------------------------------ stats
def test_per_vip_stats(run, lb):
    lb.add_vip(VIP)
    lb.add_real_for_vip(Real("10.1.1.1"), VIP)
    for sport in range(2):
        lb.run_packet(syn(VIP, 50000 + sport))
    s = lb.get_stats_for_vip(VIP)
    assert s.v1 >= 2
    rc, out, err = run("-s", "-count", "2", "-interval", "0.05")
    assert rc == 0
    assert out == (f"vip: {'10.0.0.1:80:6':>16} : {s.v1:>8} pkts/sec {s.v2:>8} bytes/sec\n"
                   f"vip: {'10.0.0.1:80:6':>16} : {0:>8} pkts/sec {0:>8} bytes/sec\nexiting\n")


def test_sum_stats(run, lb):
    lb.add_vip(VIP)
    lb.add_vip(VipKey("10.0.0.2", 80, "tcp"))
    for vip in lb.get_all_vips():
        lb.add_real_for_vip(Real("10.1.1.1"), vip)
        lb.run_packet(syn(vip, 50100))
    pkts = sum(lb.get_stats_for_vip(v).v1 for v in lb.get_all_vips())
    nbytes = sum(lb.get_stats_for_vip(v).v2 for v in lb.get_all_vips())
    assert run("-s", "-sum", "--iterations=1")[1] == f"summary: {pkts} pkts/sec {nbytes} bytes/sec\nexiting\n"


def test_lru_stats(run, lb):
    lb.add_vip(VIP)
    lb.add_real_for_vip(Real("10.1.1.1"), VIP)
    lb.run_packet(syn(VIP, 50200))
    lb.run_packet(syn(VIP, 50200))  # second one hits the LRU
    total, miss = lb.get_lru_stats().v1, lb.get_lru_stats().v2
    syn_miss, non_syn = lb.get_lru_miss_stats().v1, lb.get_lru_miss_stats().v2
    fallback = lb.get_lru_fallback_stats().v1
    assert total >= 2
    want = (f"summary: {total} pkts/sec. lru hit: {(1 - miss / total) * 100:.2f}% "
            f"lru miss: {miss / total * 100:.2f}% (tcp syn: {syn_miss / total:.2f}% "
            f"tcp non-syn: {non_syn / total:.2f}% udp: {1 - (syn_miss + non_syn) / total:.2f}%) "
            f"fallback lru hit: {fallback} pkts/sec\n")
    assert run("-s", "-lru", "-count", "1")[1] == want + "exiting\n"


def test_icmp_stats(run, lb):
    s = lb.get_icmp_too_big_stats()
    assert run("-s", "-icmp", "-count", "1")[1] == f'ICMP "packet too big": v4 {s.v1} pkts/sec v6: {s.v2} pkts/sec\nexiting\n'


def test_stats_loop_waits_between_failed_rounds(capsys):
    start = time.monotonic()
    rc = cli.main(["-server", "127.0.0.1:1", "-s", "-lru", "-count", "3", "-interval", "0.2", "-timeout", "2"])
    out, err = capsys.readouterr()
    assert rc == 0 and out == "exiting\n"
    assert STAMP.sub("", err).count("Error: rpc error: code = Unavailable desc = ") == 3
    assert time.monotonic() - start >= 0.4  # slept between the failed rounds, no busy loop


def test_unreachable_server_is_fatal(capsys):
    rc = cli.main(["-server", "127.0.0.1:1", "-l", "-timeout", "2"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == "" and "Error: rpc error: code = Unavailable desc = " in err


# ------------------------------------------------------------------ extensions
def test_ext_real_stats_and_info(run, lb):
    lb.add_vip(VIP)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.1.1.1"), Real("10.1.1.2")], VIP)
    for sport in range(4):
        lb.run_packet(syn(VIP, 50300 + sport))
    rc, out, err = run("-s", "-reals", "-count", "1")
    want = ""
    for addr in ("10.1.1.1", "10.1.1.2"):
        st = lb.get_real_stats(lb.get_index_for_real(addr))
        want += f"real: {addr:>16} : {st.v1:>8} pkts/sec {st.v2:>8} bytes/sec\n"
    assert out == want + "exiting\n"
    st = lb.get_real_stats(lb.get_index_for_real("10.1.1.2"))
    assert run("-s", "-reals", "-r", "10.1.1.2", "-count", "1")[1] == \
        f"real: {'10.1.1.2':>16} : {st.v1:>8} pkts/sec {st.v2:>8} bytes/sec\nexiting\n"
    idx = lb.get_index_for_real("10.1.1.2")
    assert run("-real_info", "-r", "10.1.1.2")[1] == f"real: 10.1.1.2 index: {idx} flags: \nexiting\n"
    assert run("-rf", "LOCAL_REAL", "-r", "10.1.1.2") == (0, "exiting\n", "Real modified\n")
    assert lb.get_real_flags("10.1.1.2") & 2
    assert run("-real_info", "-r", "10.1.1.2")[1] == f"real: 10.1.1.2 index: {idx} flags:  LOCAL_REAL \nexiting\n"
    assert run("-rf", "LOCAL_REAL", "-r", "10.1.1.2", "-unset")[0] == 0
    assert lb.get_real_flags("10.1.1.2") & 2 == 0
    rc, out, err = run("-real_info", "-r", "10.9.9.9")
    assert rc == 1 and "code = NotFound" in err


def test_ext_global_stats(run, lb):
    t, tx, d, p = lb.get_xdp_total_stats(), lb.get_xdp_tx_stats(), lb.get_xdp_drop_stats(), lb.get_xdp_pass_stats()
    assert run("-s", "-xdp", "-count", "1")[1] == (
        f"xdp total: {t.v1} pkts/sec {t.v2} bytes/sec tx: {tx.v1} pkts/sec drop: {d.v1} pkts/sec "
        f"pass: {p.v1} pkts/sec\nexiting\n")
    cores = lb.get_per_core_packets_stats()
    assert run("-s", "-cores", "-count", "1")[1] == "".join(
        f"cpu {i}: {n} pkts/sec\n" for i, n in enumerate(cores)) + "exiting\n"
    h = lb.get_hc_program_stats()
    assert run("-s", "-hc_stats", "-count", "1")[1] == (
        f"hc: processed: {h.processed} pkts/sec dropped: {h.dropped} pkts/sec skipped: {h.skipped} pkts/sec "
        f"too big: {h.too_big} pkts/sec\nexiting\n")


def test_ext_hash_and_flow(run, lb):
    lb.add_vip(VIP)
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real(f"10.1.1.{i}") for i in range(1, 5)], VIP)
    name = lb.get_hash_function_for_vip(VIP).name.lower()
    assert run("-show_hash", "-t", "10.0.0.1:80")[1] == f"hash function: {name}\nexiting\n"
    other = "maglev" if name == "maglev_v2" else "maglev_v2"
    assert run("-hash", other, "-t", "10.0.0.1:80") == (0, "exiting\n", "Vip modified\n")
    assert lb.get_hash_function_for_vip(VIP) == HashFunction[other.upper()]
    rc, out, err = run("-hash", "ring", "-t", "10.0.0.1:80")
    assert rc == 1 and "unknown hash function" in err
    rc, out, err = run("-flow", "192.168.50.1:4242", "-t", "10.0.0.1:80")
    from katran.models import Flow

    real = lb.get_real_for_flow(Flow("192.168.50.1", "10.0.0.1", 4242, 80, 6))
    assert real in {f"10.1.1.{i}" for i in range(1, 5)}
    assert (rc, out) == (0, f"real: {real}\nexiting\n")
    # an unknown VIP is an error (issue: not "no real for this flow" with exit 0)
    rc, out, err = run("-flow", "192.168.50.1:4242", "-t", "10.0.0.7:80")
    assert rc == 1 and "10.0.0.7:80/tcp not found" in err, (rc, out, err)


# ------------------------------------------------------------------ feature parity: src routing, decap, down reals
@pytest.fixture(scope="module")
def feat_lb():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    lb = KatranLb(KatranConfig(testing=True, default_mac=MAC, lru_size=1000, max_vips=64, enable_hc=False,
                               lpm_src_lookup=True, inline_decap_ipip=True, max_decap_dst=2,
                               katran_src_v4="10.0.13.37", katran_src_v6="fc00:2307::1337"))
    lb.start()
    yield lb
    lb.close()


@pytest.fixture(scope="module")
def feat_server(feat_lb):
    srv = KatranGrpcServer(feat_lb, "127.0.0.1:0")
    srv.start()
    yield srv
    srv.stop(0)


@pytest.fixture
def frun(feat_server, feat_lb, capsys):
    """run() against the server whose lb has lpm_src_lookup and inline decap on."""

    def _run(*argv):
        rc = cli.main(["-server", feat_server.address, *argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        assert all(STAMP.match(line) for line in err.splitlines()), err
        return rc, out, STAMP.sub("", err)

    yield _run
    feat_lb.clear_all_src_routing_rules()
    for dst in feat_lb.get_inline_decap_dst():
        feat_lb.del_inline_decap_dst(dst)
    for vip in feat_lb.get_all_vips():
        feat_lb.del_vip(vip)


def test_src_routes(frun, feat_lb):
    assert frun("-src_route", "-src", "10.0.0.0/8,fc00::/64", "-r", "10.9.9.9") == \
        (0, "exiting\n", "Src routing rules modified\n")
    assert feat_lb.get_src_routing_rule() == {"10.0.0.0/8": "10.9.9.9", "fc00::/64": "10.9.9.9"}
    rc, out, err = frun("-list_src_routes")
    assert (rc, err) == (0, "src routing rules len 2\n")
    assert out == f"src: {'10.0.0.0/8':>24} -> real: 10.9.9.9\nsrc: {'fc00::/64':>24} -> real: 10.9.9.9\nexiting\n"
    assert frun("-del_src_route", "-src", "10.0.0.0/8") == (0, "exiting\n", "Src routing rules modified\n")
    assert feat_lb.get_src_routing_rule() == {"fc00::/64": "10.9.9.9"}
    assert frun("-clear_src_routes") == (0, "exiting\n", "Src routing rules cleared\n")
    assert feat_lb.get_src_routing_rule() == {}


@pytest.mark.parametrize("argv, needles", [
    (["-src_route", "-src", "192.168.0.0/16,10.0.0.0/40", "-r", "10.9.9.9"],
     ("code = InvalidArgument", "src=", "10.0.0.0/40")),
    (["-src_route", "-src", "192.168.0.0/16", "-r", "10.9.9"], ("code = InvalidArgument", "dst=", "10.9.9")),
    (["-src_route", "-src", "192.168.0.0/16"], ("-src_route needs -r <real>",)),
    (["-src_route", "-r", "10.9.9.9"], ("-src_route needs -src <prefix>",)),
    (["-del_src_route", "-src", "172.16.0.0/12"], ("code = NotFound", "172.16.0.0/12")),
    (["-del_src_route"], ("-del_src_route needs -src <prefix>",)),
])
def test_src_route_errors_change_nothing(frun, feat_lb, argv, needles):
    feat_lb.add_src_routing_rule(["fc00::/64"], "10.9.9.9")
    rc, out, err = frun(*argv)
    assert rc == 1 and "exiting" not in out and "modified" not in err, err
    assert all(n in err for n in needles), err
    assert feat_lb.get_src_routing_rule() == {"fc00::/64": "10.9.9.9"}


def test_decap_dsts(frun, feat_lb):
    assert frun("-decap_dst", "10.200.0.1") == (0, "exiting\n", "Decap dst modified\n")
    assert frun("-decap_dst", "fc00:1404::1")[0] == 0
    assert frun("-list_decap_dst")[1] == "decap dst: 10.200.0.1\ndecap dst: fc00:1404::1\nexiting\n"
    rc, out, err = frun("-decap_dst", "10.200.0.1")
    assert rc == 1 and "code = AlreadyExists" in err and "10.200.0.1" in err
    rc, out, err = frun("-decap_dst", "10.200.0.3")  # max_decap_dst=2
    assert rc == 1 and "code = ResourceExhausted" in err and "max_decap_dst" in err
    rc, out, err = frun("-del_decap_dst")
    assert rc == 1 and "-del_decap_dst needs -decap_dst <addr>" in err
    assert feat_lb.get_inline_decap_dst() == ["10.200.0.1", "fc00:1404::1"]
    assert frun("-del_decap_dst", "-decap_dst", "10.200.0.1") == (0, "exiting\n", "Decap dst modified\n")
    assert feat_lb.get_inline_decap_dst() == ["fc00:1404::1"]
    rc, out, err = frun("-del_decap_dst", "-decap_dst", "10.200.0.1")
    assert rc == 1 and "code = NotFound" in err


def test_down_reals(frun, feat_lb):
    vip = VipKey("10.0.0.2", 443, "udp")
    feat_lb.add_vip(vip, int(VipFlag.UDP_FLOW_MIGRATION))
    feat_lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.1.1.1"), Real("10.1.1.2")], vip)
    assert frun("-down_real", "-u", "10.0.0.2:443", "-r", "10.1.1.2") == (0, "exiting\n", "Down reals modified\n")
    assert frun("-down_real", "-u", "10.0.0.2:443", "-r", "10.1.1.1")[0] == 0
    assert frun("-list_down_reals", "-u", "10.0.0.2:443")[1] == "down real: 10.1.1.1\ndown real: 10.1.1.2\nexiting\n"
    rc, out, err = frun("-down_real", "-u", "10.0.0.2:443", "-r", "10.1.1.9")
    assert rc == 1 and "code = NotFound" in err and "10.1.1.9" in err
    rc, out, err = frun("-down_real", "-u", "10.0.0.2:443")
    assert rc == 1 and "-down_real needs -r <real>" in err
    rc, out, err = frun("-list_down_reals", "-t", "10.0.0.2:443")  # the TCP VIP does not exist
    assert rc == 1 and "code = NotFound" in err
    assert feat_lb.get_down_reals(vip) == ["10.1.1.1", "10.1.1.2"]
    assert frun("-del_down_real", "-u", "10.0.0.2:443", "-r", "10.1.1.1") == (0, "exiting\n", "Down reals modified\n")
    assert feat_lb.get_down_reals(vip) == ["10.1.1.2"]
    assert frun("-clear_down_reals", "-u", "10.0.0.2:443") == (0, "exiting\n", "Down reals modified\n")
    assert feat_lb.get_down_reals(vip) == []


def _lines(counters: dict) -> str:
    return "".join(f"{name}: {n} pkts/sec\n" for name, n in counters.items())


def test_feature_stats(frun, feat_lb):
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    feat_lb.add_vip(VIP)
    feat_lb.add_real_for_vip(Real("10.1.1.1"), VIP)
    feat_lb.add_inline_decap_dst("10.200.0.1")
    feat_lb.run_packet(bytes(Ether(src="00:11:22:33:44:55", dst="00:00:00:00:00:01")
                             / IP(src="10.50.0.1", dst="10.200.0.1") / IP(src="192.168.9.9", dst="10.0.0.1")
                             / TCP(sport=50400, dport=80, flags="S")))
    quic, icmp = feat_lb.get_lb_quic_packets_stats(), feat_lb.get_quic_icmp_stats()
    want = _lines({f"quic {k}": v for k, v in quic.items()}) + _lines({"quic icmp": icmp.v1,
                                                                       "quic icmp ignorable": icmp.v2})
    assert frun("-s", "-quic", "-count", "1")[1] == want + "exiting\n"
    tpr, sid = feat_lb.get_tcp_server_id_routing_stats(), feat_lb.get_sid_routing_stats_for_vip(VIP)
    assert frun("-s", "-tpr", "-count", "1")[1] == _lines({f"tpr {k}": v for k, v in tpr.items()}) + "exiting\n"
    assert frun("-s", "-tpr", "-t", "10.0.0.1:80", "-count", "1")[1] == _lines(
        {**{f"tpr {k}": v for k, v in tpr.items()}, "tpr vip 10.0.0.1:80:6 new conns": sid.v1,
         "tpr vip 10.0.0.1:80:6 dst_mismatch_in_lru": sid.v2}) + "exiting\n"
    srt = feat_lb.get_udp_stable_routing_stats()
    assert frun("-s", "-stable_rt", "-count", "1")[1] == _lines({f"stable_rt {k}": v for k, v in srt.items()}) + \
        "exiting\n"
    decap, inline, xpop = feat_lb.get_decap_stats(), feat_lb.get_inline_decap_stats(), \
        feat_lb.get_xpop_decap_successful_stats()
    assert inline.v1 >= 1 and decap.v1 >= 1 and xpop.v1 >= 1  # the IPIP packet above
    decap_lines = {"decap v4": decap.v1, "decap v6": decap.v2, "inline decap": inline.v1,
                   "xpop decap v4": xpop.v1, "xpop decap v6": xpop.v2}
    rc, out, err = frun("-s", "-decap", "-t", "10.0.0.1:80", "-count", "2", "-interval", "0.05")
    per_vip = feat_lb.get_decap_stats_for_vip(VIP).v1
    zeros = {k: 0 for k in [*decap_lines, "decap vip 10.0.0.1:80:6"]}
    assert out == _lines({**decap_lines, "decap vip 10.0.0.1:80:6": per_vip}) + _lines(zeros) + "exiting\n"
    src = feat_lb.get_src_routing_stats()
    assert frun("-s", "-src_route", "-count", "1")[1] == _lines(
        {"src routing no match": src.v1, "src routing routed": src.v2}) + "exiting\n"
    assert frun("-s", "-flow_migration", "-count", "1")[1] == _lines(
        {"udp flow migration invalidated": feat_lb.get_udp_flow_migration_stats().v1}) + "exiting\n"
    glru = feat_lb.get_global_lru_stats()
    assert frun("-s", "-global_lru", "-count", "1")[1] == _lines(
        {"global lru no map": glru.v1, "global lru routed": glru.v2}) + "exiting\n"


def test_features_off_are_refused(run, lb):
    rc, out, err = run("-src_route", "-src", "10.0.0.0/8", "-r", "10.9.9.9")
    assert rc == 1 and "code = FailedPrecondition" in err and "lpm_src_lookup" in err
    rc, out, err = run("-decap_dst", "10.200.0.1")
    assert rc == 1 and "code = FailedPrecondition" in err and "inline_decap" in err
    assert lb.get_src_routing_rule() == {} and lb.get_inline_decap_dst() == []


def test_feature_commands_over_a_transport_without_them(capsys):
    """A KatranClient lacking the feature methods (e.g. thrift): Unimplemented, fatal or retried."""
    from katran_frontend.client import KatranClient

    stubbed = {name: (lambda self, *a, **kw: None) for name in KatranClient.__abstractmethods__}
    Minimal = type("Minimal", (KatranClient,), stubbed)
    rc = cli.main(["-list_decap_dst"], client_factory=lambda ns: Minimal())
    out, err = capsys.readouterr()
    assert rc == 1 and out == "" and "rpc error: code = Unimplemented desc = not supported by Minimal" in err
    rc = cli.main(["-s", "-quic", "-count", "1"], client_factory=lambda ns: Minimal())
    out, err = capsys.readouterr()
    assert rc == 0 and out == "exiting\n" and "code = Unimplemented" in err


def test_flag_errors(capsys):
    assert cli.main(["-bogus"]) == 2
    assert "flag provided but not defined: -bogus" in capsys.readouterr().err
    assert cli.main(["-w", "heavy"]) == 2
    assert 'invalid value "heavy" for flag -w' in capsys.readouterr().err
    assert cli.main(["-unset=maybe"]) == 2
    assert cli.main(["-t"]) == 2
    assert "flag needs an argument: -t" in capsys.readouterr().err


# ------------------------------------------------------------------ real processes
def test_cli_subprocess(server, lb):
    lb.add_vip(VIP)
    try:
        res = subprocess.run([sys.executable, "-m", "katran_frontend.cli", "--server", server.address, "-l"],
                             capture_output=True, text=True, env=ENV, timeout=60)
        assert res.returncode == 0, res.stderr
        assert res.stdout == "VIP:             10.0.0.1 Port:     80 Protocol: tcp\nVip's flags: \nexiting\n"
        assert STAMP.sub("", res.stderr) == "vips len 1\n"
    finally:
        lb.del_vip(VIP)


@pytest.mark.privileged
def test_server_subprocess_end_to_end():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    proc = subprocess.Popen(
        [sys.executable, "-m", "katran_grpc.server", "-testing", "-server=127.0.0.1:0", "-insecure", "-lru_size", "1000",
         "--max_vips", "16", "-hc_forwarding=false", "-shutdown_delay", "300", "-default_mac", MAC],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        line = proc.stdout.readline()
        m = re.match(r"Server listening on (127\.0\.0\.1:\d+)$", line.strip())
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        address = m.group(1)

        def katran_cli(*argv):
            return subprocess.run([sys.executable, "-m", "katran_frontend.cli", "-server", address, *argv],
                                  capture_output=True, text=True, env=ENV, timeout=60)

        assert katran_cli("-A", "-t", "10.0.0.1:80").returncode == 0
        assert katran_cli("-a", "-t", "10.0.0.1:80", "-r", "10.1.1.1", "-w", "3").returncode == 0
        res = katran_cli("-l")
        assert res.stdout == ("VIP:             10.0.0.1 Port:     80 Protocol: tcp\nVip's flags: \n"
                              " ->10.1.1.1          weight: 3 flags: \nexiting\n")
        assert katran_cli("-list_mac").stderr.endswith(f"Mac address is {MAC}\n")
        res = katran_cli("-list_hc")  # hc forwarding is off: the server says so
        assert res.returncode == 1 and "FailedPrecondition" in res.stderr
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - t0 >= 0.3  # waited -shutdown_delay before closing
        assert katran_cli("-l", "-timeout", "2").returncode == 1  # gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
