"""katran-cli for scripts and people: usage errors (exit 2 before any call), messages that
help, several reals in one call, -json, --version, shell completion; against an in-process
gRPC server over a real KatranLb (testing mode) where a server is needed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("grpc", reason="grpcio not installed")

from conftest import privileged_fixture  # noqa: E402
from katran.models import ModifyAction, QuicReal, Real, RealFlag, VipFlag, VipKey  # noqa: E402
from katran_frontend import cli  # noqa: E402

MAC = "00:00:de:ad:be:af"
STAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ", re.MULTILINE)
VIP = VipKey("10.0.0.1", 80, "tcp")


def _no_client(ns):
    raise AssertionError("a usage error must not reach the server")


# ------------------------------------------------------------------ usage errors: exit 2, nothing sent
@pytest.mark.parametrize("argv, message", [
    ([], "katran-cli: no command given"),
    (["10.0.0.1:80", "-A", "-t"], 'katran-cli: unexpected argument "10.0.0.1:80": every value belongs to a flag '
                                  "(-flag value, e.g. -t 10.0.0.1:80); the flags after it were not read"),
    (["-l", "extra"], 'katran-cli: unexpected argument "extra"'),
    (["-A", "-a", "-t", "10.0.0.1:80", "-r", "10.1.1.1"],
     "katran-cli: conflicting commands -A and -a: one command per call"),
    (["-l", "-list_hc", "-s"], "katran-cli: conflicting commands -l and -list_hc and -s"),
    (["-icmp"], "katran-cli: -icmp is a view of the stats: use it with -s (-s -icmp)"),
    (["-lru", "-l"], "katran-cli: -lru is a view of the stats: use it with -s (-s -lru)"),
    (["-s", "-lru", "-icmp"], "katran-cli: conflicting stats views -lru and -icmp: one per call"),
    (["-A"], "katran-cli: -A needs the VIP: -t <addr>:<port> (TCP) or -u <addr>:<port> (UDP)"),
    (["-a", "-r", "10.1.1.1"], "katran-cli: -a needs the VIP"),
    (["-A", "-t", "10.0.0.1:80", "-u", "10.0.0.1:53"], "katran-cli: -t and -u both given"),
    (["-A", "-t", "10.0.0.1:80", "-r", "10.1.1.1"],
     "katran-cli: -r is not used by -A (to add reals: -a -t VIP -r REAL)"),
    (["-l", "-reals_file", "reals.txt"], "katran-cli: -reals_file is not used by -l"),
    (["-real_info", "-r", "10.1.1.1,10.1.1.2"], "katran-cli: -real_info takes one real (-r <addr>)"),
    (["-A", "-t", "10.0.0.1:80", "-json"], "katran-cli: -json is for the listing and stats commands"),
    (["-drain", "-undrain"], "katran-cli: conflicting commands -drain and -undrain"),
])
def test_usage_errors_exit_2_with_a_short_usage(capsys, argv, message):
    assert cli.main(argv, client_factory=_no_client) == 2
    out, err = capsys.readouterr()
    assert out == ""
    first, *rest = err.splitlines()
    assert first.startswith(message), err
    assert rest[0].startswith("usage: katran-cli [-server ADDR] COMMAND") and rest[-1].startswith("Run 'katran-cli -h'")
    assert len(rest) < 20  # not the 100+ lines of every flag


@pytest.mark.parametrize("typo, suggestion", [("-lsit_hc", "-list_hc"), ("-chnage_mac", "-change_mac"),
                                              ("--server_addr=x", "-server"), ("-jsno", "-json")])
def test_flag_typo_suggests_the_flag(capsys, typo, suggestion):
    assert cli.main([typo, "-l"], client_factory=_no_client) == 2
    err = capsys.readouterr().err
    name = typo.lstrip("-").split("=")[0]
    assert err.splitlines()[0] == f"katran-cli: flag provided but not defined: -{name} (did you mean {suggestion}?)"
    assert len(err.splitlines()) < 20


def test_unknown_flag_far_from_any_has_no_suggestion(capsys):
    assert cli.main(["-zzzzqqq"], client_factory=_no_client) == 2
    assert capsys.readouterr().err.splitlines()[0] == "katran-cli: flag provided but not defined: -zzzzqqq"


def test_version_and_help(capsys):
    from katran import __version__

    assert cli.main(["--version"], client_factory=_no_client) == 0
    assert capsys.readouterr().out == f"katran-cli {__version__}\n"
    assert cli.main(["-h"], client_factory=_no_client) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage of katran-cli:\n") and "\nExamples:\n  katran-cli -A -t 10.0.0.1:80" in out
    assert "-reals_file string" in out and "-json\n" in out


# ------------------------------------------------------------------ completion
def _complete(script: str, *words: str) -> list[str]:
    """Run bash's completion function of ``script`` on the command line ``words`` (the last one is completed)."""
    line = " ".join(words)
    prog = f"""{script}
COMP_WORDS=({" ".join(repr(w) if w else "''" for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE={line!r}
_katran_cli
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    res = subprocess.run(["bash", "--norc", "-c", prog], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return [w for w in res.stdout.splitlines() if w]


def test_bash_completion(capsys, tmp_path, monkeypatch):
    if shutil.which("bash") is None:
        pytest.fail("bash is needed (Debian's bash package)")
    assert cli.main(["-completion", "bash"], client_factory=_no_client) == 0
    script = capsys.readouterr().out
    assert script.rstrip().endswith("complete -F _katran_cli katran-cli")
    assert _complete(script, "katran-cli", "-list_") == ["-list_decap_dst", "-list_down_reals", "-list_hc",
                                                         "-list_lru", "-list_mac", "-list_qm", "-list_src_routes"]
    assert sorted(_complete(script, "katran-cli", "-A", "-t", "10.0.0.1:80", "-vf", "NO_")) == sorted(
        f.name for f in VipFlag if f.name.startswith("NO_"))
    assert _complete(script, "katran-cli", "-hash", "") == ["maglev", "maglev_v2"]
    assert _complete(script, "katran-cli", "-t", "") == []  # a value: nothing to offer
    (tmp_path / "reals-a.txt").write_text("10.1.1.1\n")
    monkeypatch.chdir(tmp_path)
    assert _complete(script, "katran-cli", "-reals_file", "real") == ["reals-a.txt"]
    assert cli.main(["-completion", "fish"], client_factory=_no_client) == 2
    assert 'expected bash or zsh' in capsys.readouterr().err


# ------------------------------------------------------------------ against a server
@pytest.fixture(scope="module")
@privileged_fixture
def lb():
    from katran import KatranConfig, KatranLb

    lb = KatranLb(KatranConfig(testing=True, default_mac=MAC, lru_size=1000, max_vips=64, max_reals=256,
                               enable_hc=True, katran_src_v4="10.0.13.37",
                               katran_src_v6="fc00:2307::1337"))
    lb.start()
    yield lb
    lb.close()


@pytest.fixture(scope="module")
def server(lb):
    from katran_grpc.server import KatranGrpcServer

    srv = KatranGrpcServer(lb, "127.0.0.1:0")
    srv.start()
    yield srv
    srv.stop(0)


class Counting:
    """The gRPC client, counting the RPCs each method makes."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if callable(attr) and not name.startswith("_") and name != "close":
            def counted(*a, **kw):
                self.calls.append(name)
                return attr(*a, **kw)
            return counted
        return attr


@pytest.fixture
def run(server, lb, capsys):
    """run(*argv) -> (exit status, stdout, stderr without Go's log timestamps, RPCs made)."""

    def _run(*argv):
        made = []

        def factory(ns):
            c = Counting(cli.make_client(ns))
            made.append(c)
            return c

        rc = cli.main(["-server", server.address, *argv], client_factory=factory)
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return rc, out, STAMP.sub("", err), (made[0].calls if made else None)

    yield _run
    for vip in lb.get_all_vips():
        lb.del_vip(vip)
    if lb.get_quic_reals_mapping():
        lb.modify_quic_reals_mapping(ModifyAction.DEL, lb.get_quic_reals_mapping())
    for somark in list(lb.get_healthcheckers_dst()):
        lb.del_healthchecker_dst(somark)


def _weights(lb, vip=VIP) -> dict:
    return {str(r.address): r.weight for r in lb.get_reals_for_vip(vip)}


def test_several_reals_in_one_call(run, lb, tmp_path):
    lb.add_vip(VIP)
    rc, out, err, calls = run("-a", "-t", "10.0.0.1:80", "-r", "10.1.1.1", "-r", "10.1.1.2,10.1.1.3", "-w", "3")
    assert (rc, out, err, calls) == (0, "exiting\n", "Reals modified\n", ["modify_reals_for_vip"])
    assert _weights(lb) == {"10.1.1.1": 3, "10.1.1.2": 3, "10.1.1.3": 3}
    reals = tmp_path / "reals.txt"
    reals.write_text("# reals of 10.0.0.1:80\n10.1.2.1 5\n\n10.1.2.2   # weight of -w\nfc00::7 2\n")
    rc, out, err, calls = run("-a", "-t", "10.0.0.1:80", "-reals_file", str(reals), "-w", "4")
    assert (rc, calls) == (0, ["modify_reals_for_vip"])
    assert _weights(lb) == {"10.1.1.1": 3, "10.1.1.2": 3, "10.1.1.3": 3, "10.1.2.1": 5, "10.1.2.2": 4, "fc00::7": 2}
    rc, out, err, calls = run("-d", "-t", "10.0.0.1:80", "-r", "10.1.1.1,10.1.1.2", "-reals_file", str(reals))
    assert (rc, calls) == (0, ["modify_reals_for_vip"])
    assert _weights(lb) == {"10.1.1.3": 3}


@pytest.mark.parametrize("argv, message", [
    (["-r", "10.1.1.1,10.1.1", "-r", "10.1.1.4"], "Error: -r: real.address"),
    (["-r", "10.1.1.1,,10.1.1.2"], '-r "10.1.1.1,,10.1.1.2": an empty address'),
    (["-r", "10.1.1.1", "-r", "10.1.1.1"], "Error: -r: real 10.1.1.1 given twice (first at -r)"),
    (["-reals_file", "/nonexistent/reals"], '-reals_file "/nonexistent/reals": cannot read: No such file'),
    (["-reals_file", "@BAD"], ": expected '<addr> [weight]', got \"10.1.1.9 heavy\""),
    (["-reals_file", "@DUP"], ":2: real 10.1.1.8 given twice (first at "),
])
def test_bad_reals_change_nothing(run, lb, tmp_path, argv, message):
    lb.add_vip(VIP)
    lb.add_real_for_vip(Real("10.1.1.5"), VIP)
    (tmp_path / "bad").write_text("10.1.1.7\n10.1.1.9 heavy\n")
    (tmp_path / "dup").write_text("10.1.1.8\n10.1.1.8 2\n")
    argv = [str(tmp_path / a[1:].lower()) if a.startswith("@") else a for a in argv]
    rc, out, err, calls = run("-a", "-t", "10.0.0.1:80", *argv)
    assert rc == 1 and out == "" and message in err, err
    assert calls == [] and _weights(lb) == {"10.1.1.5": 1}


def test_twenty_reals_one_rpc(run, lb):
    lb.add_vip(VIP)
    reals = ",".join(f"10.2.0.{i}" for i in range(1, 21))
    rc, out, err, calls = run("-a", "-t", "10.0.0.1:80", "-r", reals)
    assert (rc, calls) == (0, ["modify_reals_for_vip"])
    assert len(_weights(lb)) == 20


# ------------------------------------------------------------------ -json
def test_json_listings(run, lb):
    lb.add_vip(VIP, int(VipFlag.NO_SPORT))
    lb.modify_reals_for_vip(ModifyAction.ADD, [Real("10.1.1.1", 5), Real("10.1.1.2", 1, int(RealFlag.LOCAL_REAL))], VIP)
    lb.add_vip(VipKey("fc00::1", 53, "udp"))
    rc, out, err, calls = run("-l", "-json")
    assert rc == 0 and err == "vips len 2\n"
    doc = json.loads(out)
    assert doc["health_checks"] is False
    assert sorted(doc["vips"], key=lambda v: v["port"]) == [
        {"address": "fc00::1", "port": 53, "proto": "udp", "flags": [], "reals": []},
        {"address": "10.0.0.1", "port": 80, "proto": "tcp", "flags": ["NO_SPORT"],
         "reals": [{"address": "10.1.1.1", "weight": 5, "flags": [], "health": None},
                   {"address": "10.1.1.2", "weight": 1, "flags": ["LOCAL_REAL"], "health": None}]}]
    assert json.loads(run("-list_mac", "-json")[1]) == {"mac": MAC}
    lb.add_healthchecker_dst(1000, "10.5.5.5")
    assert json.loads(run("-list_hc", "-json")[1]) == {"healthchecks": [{"somark": 1000, "address": "10.5.5.5"}]}
    lb.modify_quic_reals_mapping(ModifyAction.ADD, [QuicReal("10.1.1.1", 77)])
    assert json.loads(run("-list_qm", "-json")[1]) == {"quic_reals": [{"address": "10.1.1.1", "id": 77}]}
    idx = lb.get_index_for_real("10.1.1.2")
    assert json.loads(run("-real_info", "-r", "10.1.1.2", "-json")[1]) == {
        "address": "10.1.1.2", "index": idx, "flags": ["LOCAL_REAL"]}
    assert json.loads(run("-show_hash", "-t", "10.0.0.1:80", "-json")[1]) == {
        "vip": {"address": "10.0.0.1", "port": 80, "proto": "tcp"},
        "hash_function": lb.get_hash_function_for_vip(VIP).name.lower()}
    doc = json.loads(run("-flow", "192.168.1.1:4000,192.168.1.2:4001", "-t", "10.0.0.1:80", "-json")[1])
    assert doc["vip"] == {"address": "10.0.0.1", "port": 80, "proto": "tcp"}
    assert [(f["src"], f["src_port"]) for f in doc["flows"]] == [("192.168.1.1", 4000), ("192.168.1.2", 4001)]
    assert all(f["real"] in ("10.1.1.1", "10.1.1.2") for f in doc["flows"])


def test_json_stats_are_one_document_per_round(run, lb):
    from test_cli import syn

    lb.add_vip(VIP)
    lb.add_real_for_vip(Real("10.1.1.1"), VIP)
    for sport in range(3):
        lb.run_packet(syn(VIP, 51000 + sport))
    s = lb.get_stats_for_vip(VIP)
    rc, out, err, calls = run("-s", "-json")  # -count defaults to 1 with -json
    assert rc == 0 and json.loads(out) == {"vips": [{"address": "10.0.0.1", "port": 80, "proto": "tcp",
                                                     "packets": s.v1, "bytes": s.v2}]}
    rc, out, err, calls = run("-s", "-json", "-count", "2", "-interval", "0.01")
    assert [json.loads(line)["vips"][0]["packets"] for line in out.splitlines()] == [s.v1, s.v1]
    lru, miss, fb = lb.get_lru_stats(), lb.get_lru_miss_stats(), lb.get_lru_fallback_stats()
    assert json.loads(run("-s", "-lru", "-json")[1]) == {
        "total": lru.v1, "miss": lru.v2, "tcp_syn_miss": miss.v1, "tcp_non_syn_miss": miss.v2,
        "fallback_hit": fb.v1}
    assert json.loads(run("-s", "-sum", "-json")[1]) == {"packets": s.v1, "bytes": s.v2}
    icmp = lb.get_icmp_too_big_stats()
    assert json.loads(run("-s", "-icmp", "-json")[1]) == {"v4": icmp.v1, "v6": icmp.v2}
    st = lb.get_real_stats(lb.get_index_for_real("10.1.1.1"))
    assert json.loads(run("-s", "-reals", "-json")[1]) == {"reals": [
        {"address": "10.1.1.1", "index": lb.get_index_for_real("10.1.1.1"), "packets": st.v1, "bytes": st.v2}]}
    lb.add_real_for_vip(Real("10.1.1.2"), VIP)
    st2 = lb.get_real_stats(lb.get_index_for_real("10.1.1.2"))
    doc = json.loads(run("-s", "-reals", "-r", "10.1.1.2,10.1.1.1", "-json")[1])
    assert [(r["address"], r["packets"]) for r in doc["reals"]] == [("10.1.1.2", st2.v1), ("10.1.1.1", st.v1)]
    t = lb.get_xdp_total_stats()
    doc = json.loads(run("-s", "-xdp", "-json")[1])
    assert doc["total"] == {"packets": t.v1, "bytes": t.v2} and set(doc) == {"total", "tx", "drop", "pass"}
    cores = lb.get_per_core_packets_stats()
    assert json.loads(run("-s", "-cores", "-json")[1]) == {
        "cores": [{"cpu": i, "packets": n} for i, n in enumerate(cores)]}
    assert set(json.loads(run("-s", "-hc_stats", "-json")[1])) == {
        "processed", "dropped", "skipped", "too_big", "dst_matched", "src_matched"}
    doc = json.loads(run("-s", "-decap", "-t", "10.0.0.1:80", "-json")[1])
    assert "decap v4" in doc["counters"] and "decap vip 10.0.0.1:80:6" in doc["counters"]


def test_cli_process_json_and_exit_status(server, lb):
    lb.add_vip(VIP)
    res = subprocess.run([sys.executable, "-m", "katran_frontend.cli", "-server", server.address, "-l", "-json"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and json.loads(res.stdout)["vips"][0]["address"] == "10.0.0.1"
    res = subprocess.run([sys.executable, "-m", "katran_frontend.cli", "10.0.0.1:80", "-A", "-t"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == "" and "unexpected argument" in res.stderr
    lb.del_vip(VIP)


# ------------------------------------------------------------------ start-up
_PROBE = """
import sys, katran_frontend.cli as cli
ns = cli.build_flags().parse(["-l"])
client = cli.make_client(ns)
heavy = ("katran.healthcheck", "katran.kernel", "katran.contract", "katran.lb", "katran_grpc.katran_pb2_grpc",
         "katran_grpc.katran_ext_pb2_grpc", "numpy")
print(sorted(m for m in sys.modules if m in heavy or m.split(".")[0] == "numpy"))
"""


def test_list_loads_only_what_it_needs():
    """katran-cli -l's transport: no kernel facade, contract, generated stubs or numpy (start-up time)."""
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------ the small tools' flags
def test_small_tools_take_both_flag_styles():
    from katran import argstyle
    from katran.host.cli import build_parser

    ap = build_parser()
    gnu = ap.parse_args(["--intf", "eth0", "--forwarding-cores=0,1", "--no-gateway", "--json"])
    for argv in (["-intf", "eth0", "-forwarding_cores=0,1", "-no_gateway", "-json"],
                 ["--intf", "eth0", "--forwarding_cores", "0,1", "-no-gateway", "--json"]):
        assert argstyle.parse(ap, argv) == gnu, argv
    # values, short options and what follows -- are left alone
    assert argstyle.go_style(ap, ["-h", "--intf", "-json", "--", "-intf"]) == ["-h", "--intf", "--json", "--", "-intf"]


@pytest.mark.parametrize("tool, example", [("katran-xdp-root", "katran-xdp-root install --intf eth0"),
                                           ("katran-decap", "katran-decap install --intf eth0 --vip 10.200.1.1"),
                                           ("katran-preflight", "katran-preflight --intf eth0 --json")])
def test_small_tools_help_has_usage_and_examples(tool, example):
    exe = shutil.which(tool, path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert exe, f"{tool} is not installed (pip install -e .)"
    res = subprocess.run([exe, "-help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"usage: {tool} ") and "\nexamples:\n" in res.stdout and example in res.stdout
    assert "Katran's Go style (-intf eth0, -map_path=P)" in res.stdout


@pytest.mark.parametrize("server", ["katran-server-grpc", "katran-server-thrift"])
def test_servers_help_ends_with_examples(server):
    exe = shutil.which(server, path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    res = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=60)
    text = res.stdout + res.stderr
    assert res.returncode == 0 and text.startswith(f"Usage of {server}:")
    assert f"\nExamples:\n  {server} -intf=eth0 -default_mac=auto" in text


def test_xdp_root_single_dash_flags_reach_the_tool():
    exe = shutil.which("katran-xdp-root", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    for argv in (["-intf", "lo", "-map_path", "/nonexistent/jmp"], ["--intf", "lo", "--map-path", "/nonexistent/jmp"]):
        res = subprocess.run([exe, "status", *argv], capture_output=True, text=True, timeout=60)
        assert (res.returncode, res.stderr.strip()) == (1, "katran-xdp-root: root map /nonexistent/jmp not found"), argv
