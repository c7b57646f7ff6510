"""benchmarks/bench_forwarding.py: the command line, the paired statistics (bootstrap
confidence interval of the per-block ratio), the encap reflector's frame, and real runs:
live frames really go out of the veth and every frame is counted on the peer and by
each checked balancer's VIP (the benchmark checks both)."""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_forwarding

    return bench_forwarding


@pytest.fixture
def restore_affinity():
    cpus = set(os.sched_getaffinity(0))
    yield
    os.sched_setaffinity(0, cpus)


def test_frame_sizes(bench):
    assert len(bench.frame(64)) == 64
    assert len(bench.frame(1400)) == 1400
    with pytest.raises(ValueError, match="frame size 20"):
        bench.frame(20)


# --- the command line ----------------------------------------------------------------------

def _obj(tmp_path, name="x.bpf.o") -> Path:
    p = tmp_path / name
    p.write_bytes(b"\x7fELF")
    return p


def test_object_columns_named_unnamed_and_probes(bench, tmp_path):
    a, b, c = _obj(tmp_path, "a.o"), _obj(tmp_path, "b.o"), _obj(tmp_path, "c.o")
    args = bench.parse_args(["--object", str(a), "--object", f"katran={b}", "--object", str(c),
                             "--probe", f"s1={a}"])
    cols = [(n, o.path if o else None, checked) for n, o, checked in args.columns]
    assert cols == [("reflector", None, False), ("encap", None, False), ("state", None, False),
                    ("balancer", None, True),
                    ("object", a, True), ("katran", b, True), ("object2", c, True), ("s1", a, False)]
    assert args.flows == bench.FLOWS and args.sizes == bench.SIZES
    assert bench.parse_args(["--flows", "1,10000", "--sizes", "64"]).flows == (1, 10000)


def test_previous_columns_name_a_revision_or_take_a_name(bench, tmp_path):
    a = _obj(tmp_path, "a.o")
    args = bench.parse_args(["--object", f"katran={a}", "--previous", "HEAD", "--previous", "967afbf",
                             "--previous", "old=HEAD~1", "--previous", "HEAD~2", "--probe", f"s1={a}"])
    cols = [(n, o.path if o else None, o.rev if o else None, checked) for n, o, checked in args.columns]
    assert cols[4:] == [("katran", a, "", True), ("HEAD", None, "HEAD", True),
                        ("previous", None, "967afbf", True), ("old", None, "HEAD~1", True),
                        ("previous2", None, "HEAD~2", True), ("s1", a, "", False)]


def test_previous_builds_each_revision_before_anything_is_timed(bench, tmp_path):
    from katran.adapter import bpf

    args = bench.parse_args(["--previous", "HEAD", "--previous", "HEAD~0"])
    cols = bench.build_previous(args.columns, tmp_path)
    assert [n for n, _, _ in cols] == [n for n, _, _ in args.columns]
    objs = [o for _, o, _ in cols if o is not None]
    assert [o.rev for o in objs] == ["HEAD", "HEAD~0"] and all(o.path.is_relative_to(tmp_path) for o in objs)
    assert objs[0].path != objs[1].path  # each revision into a directory of its own
    for o in objs:
        spec = bpf.ObjectSpec.open(o.path)
        try:
            assert "balancer_ingress" in spec.program_names
        finally:
            spec.close()


def test_main_with_unknown_previous_fails_before_pinning(bench, capsys):
    cpus = os.sched_getaffinity(0)
    assert bench.main(["--previous", "no-such-rev"]) == 2
    assert os.sched_getaffinity(0) == cpus  # failed before pinning and loading
    assert "bench_forwarding: error: --previous 'no-such-rev': not a revision" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--previous=-x"], "argument --previous: bad revision '-x'"),
    (["--previous", "1a=HEAD"], "argument --previous: bad column name '1a' in '1a=HEAD'"),
    (["--previous", "balancer"], "--previous: the name 'balancer' is reserved"),
    (["--object", "k={obj}", "--previous", "k=HEAD"], "--previous: the name 'k' is given twice"),
    (["--object", "/nonexistent/x.o"], "argument --object: no such file: '/nonexistent/x.o'"),
    (["--object", "k=/nonexistent/x.o"], "argument --object: no such file: '/nonexistent/x.o'"),
    (["--probe", "{obj}"], "argument --probe: expected NAME=PATH"),
    (["--probe", "s1="], "argument --probe: no path in 's1='"),
    (["--object", "balancer={obj}"], "--object: the name 'balancer' is reserved"),
    (["--object", "k={obj}", "--probe", "k={obj}"], "--probe: the name 'k' is given twice"),
    (["--flows", "1,x"], "argument --flows: not an integer: 'x'"),
    (["--flows", "1,1"], "argument --flows: a value repeats in '1,1'"),
    (["--sizes", "20"], "argument --sizes: 20 is outside 54..3000"),
    (["--blocks", "1"], "argument --blocks: 1 is below 2"),
    (["--object", "/tmp/\u00e9" + "x" * 100], "argument --object: no such file: '/tmp/\\xe9" + "x" * 54 + "...'"),
])
def test_bad_arguments_name_the_option_and_value(bench, tmp_path, capsys, argv, message):
    obj = _obj(tmp_path)
    with pytest.raises(SystemExit) as exc:
        bench.parse_args([a.format(obj=obj) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.isascii()


# --- statistics ----------------------------------------------------------------------------

def test_block_orders_put_every_program_everywhere_equally(bench):
    names = ["reflector", "encap", "balancer", "object"]
    orders = bench.block_orders(names, 2 * len(names))
    assert all(sorted(o) == sorted(names) for o in orders)
    positions = Counter((name, i) for o in orders for i, name in enumerate(o))
    assert set(positions.values()) == {2} and len(positions) == len(names) ** 2
    before = Counter((x, y) for o in orders for i, x in enumerate(o) for y in o[i + 1:])
    assert all(before[(x, y)] == before[(y, x)] for x, y in itertools.permutations(names, 2))
    assert bench.block_orders(names, 3) == orders[:3]


def test_summary_of_known_blocks(bench):
    cell = {"reflector": [50.0, 52.0, 51.0, 50.0], "encap": [55.0, 57.2, 56.1, 55.0],
            "balancer": [100.0, 104.0, 102.0, 100.0]}
    s = bench.summarize(cell, seed=1, resamples=2000)
    assert s["reflector"]["ratio"] is None
    assert s["reflector"]["ns"][0] == pytest.approx(50.5)
    assert s["reflector"]["mpps"] == pytest.approx(np.median([1e3 / x for x in cell["reflector"]]))
    # the balancer takes exactly twice the reflector's time in every block: ratio 0.5, no spread
    assert s["balancer"]["ratio"] == pytest.approx((0.5, 0.5, 0.5))
    assert s["encap"]["ratio"] == pytest.approx((1 / 1.1,) * 3)
    lo, hi = s["balancer"]["ns"][1:]
    assert 100.0 <= lo <= 102.0 <= hi <= 104.0
    with pytest.raises(ValueError, match="column balancer: 3 blocks, the reflector has 4"):
        bench.summarize({"reflector": [1.0] * 4, "balancer": [2.0] * 3}, seed=1, resamples=100)


def test_steps_are_paired_differences_along_the_chain(bench, tmp_path):
    cell = {"reflector": [50.0, 60.0, 50.0], "encap": [54.0, 64.0, 54.0], "balancer": [100.0, 121.0, 100.0],
            "s1": [55.0, 65.0, 55.0], "s2": [70.0, 80.0, 70.0]}
    s = bench.steps(cell, ["reflector", "s1", "s2", "balancer"], seed=1, resamples=500)
    assert list(s) == ["s1", "s2", "balancer"]
    assert s["s1"] == pytest.approx((5.0, 5.0, 5.0))  # the load of block 2 cancels
    assert s["s2"] == pytest.approx((15.0, 15.0, 15.0))
    # one block of three is 11 ns off: the median stays, the interval reaches it
    assert s["balancer"] == pytest.approx((30.0, 30.0, 41.0))
    obj = _obj(tmp_path)
    args = bench.parse_args(["--probe", f"s2={obj}", "--object", f"k={obj}", "--probe", f"s1={obj}"])
    assert bench.step_chain(args) == ["reflector", "s2", "s1", "balancer"]
    assert bench.step_chain(bench.parse_args(["--object", str(obj)])) == []


def test_bootstrap_is_seeded_and_covers_the_true_ratio(bench):
    rng = np.random.default_rng(7)
    hits, widths = 0, []
    trials = 200
    for t in range(trials):
        load = rng.uniform(1.0, 1.3, size=12)  # the machine's load, shared within a block
        ref = 50.0 * load * rng.normal(1, 0.03, size=12)
        lb = 100.0 * load * rng.normal(1, 0.03, size=12)
        cell = {"reflector": list(ref), "balancer": list(lb)}
        s = bench.summarize(cell, seed=3, resamples=2000, key=(t,))
        assert s == bench.summarize(cell, seed=3, resamples=2000, key=(t,))  # reproducible
        med, lo, hi = s["balancer"]["ratio"]
        assert lo <= med <= hi
        hits += lo <= 0.5 <= hi
        widths.append(hi - lo)
    # a 95 % interval of a median from 12 blocks: close to its nominal coverage
    assert 0.85 * trials <= hits <= trials
    # paired: the shared load cancels, the interval is narrower than the +-15 % load swing
    assert np.median(widths) < 0.05
    # the seed moves the interval's ends a little, never the median
    a = bench.summarize(cell, seed=3, resamples=2000)
    b = bench.summarize(cell, seed=4, resamples=2000)
    assert a["balancer"]["ratio"][0] == b["balancer"]["ratio"][0]
    assert a["balancer"]["ratio"][1:] == pytest.approx(b["balancer"]["ratio"][1:], abs=0.01)


# --- the programs and real runs (root) -----------------------------------------------------

@pytest.mark.privileged
def test_encap_reflector_writes_a_valid_outer_ipv4_header(bench, tmp_path):
    from katran.adapter import bpf
    from katran.build import compile_one

    obj = bpf.load_object(compile_one(bench.HELPERS_SRC, tmp_path))
    try:
        data = bench.frame(100)
        res = obj.program("xdp_encap").test_run(data)
    finally:
        obj.close()
    assert res.retval == 3  # XDP_TX
    out = Ether(res.data)
    assert len(res.data) == len(data) + 20
    assert (out.src, out.dst) == ("02:00:00:00:00:02", "02:00:00:00:00:01")
    outer = out[IP]
    assert (outer.src, outer.dst, outer.proto, outer.ttl) == ("10.0.13.37", "10.1.8.0", 4, 64)
    assert outer.len == len(data) - 14 + 20
    words = sum(int.from_bytes(res.data[i:i + 2], "big") for i in range(14, 34, 2))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    assert words == 0xFFFF and outer.chksum != 0  # the header checksum verifies
    assert bytes(res.data[34:]) == data[14:]  # the inner packet untouched
    inner = IP(bytes(res.data[34:]))
    assert inner[TCP].sport == bench.BASE_PORT


@pytest.mark.privileged
@pytest.mark.parametrize("clients", ["one", "hashed"])
def test_the_driver_tells_the_flows_apart_by_port_and_with_hashed_by_client(bench, tmp_path, clients):
    """xdp_flows: flow i = seq % flows gets source port base + i; with ``hashed`` also the
    client address client_of(i) (the low 16 bits), the IPv4 header checksum still valid;
    then the program in target (here the reflector) runs on the frame."""
    from katran.adapter import bpf
    from katran.build import compile_one

    obj = bpf.load_object(compile_one(bench.HELPERS_SRC, tmp_path))
    try:
        obj.map("target").update(bench.u32(0), bench.u32(obj.program("xdp_reflect").fd))
        cfg = obj.map("flow_cfg")
        for k, v in enumerate((3, bench.BASE_PORT, 0, bench.CLIENTS.index(clients))):
            cfg.update(bench.u32(k), bench.u32(v))
        data = bench.frame(100)
        got = []
        for _ in range(4):
            res = obj.program("xdp_flows").test_run(data)
            assert res.retval == 3  # XDP_TX, from the reflector
            out = bytes(res.data)
            words = sum(int.from_bytes(out[i:i + 2], "big") for i in range(14, 34, 2))
            while words >> 16:
                words = (words & 0xFFFF) + (words >> 16)
            assert words == 0xFFFF  # the header checksum verifies
            assert out[34 + 2:] == data[34 + 2:] and out[:6] == data[6:12]  # ports on, MACs swapped
            pkt = IP(out[14:])
            got.append((pkt.src, pkt[TCP].sport))
    finally:
        obj.close()
    ports = [bench.BASE_PORT + i for i in (0, 1, 2, 0)]
    if clients == "one":
        assert got == [(bench.CLIENT, p) for p in ports]
    else:
        assert got == [(bench.client_of(i), p) for i, p in zip((0, 1, 2, 0), ports)]
        assert len({c for c, _ in got}) == 3 and all(c.startswith("192.168.") for c, _ in got)


def _state_slot(saddr: str, daddr: str, sport: int, dport: int, proto: int) -> int:
    """xdp_state's slot of an IPv4 flow: the flow cache's home slot of its 5-tuple (the same
    hash over a table of FLOW_CACHE_SLOTS lines)."""
    from katran import structs

    return structs.flow_cache_slot(structs.flow_key(saddr, daddr, sport, dport, proto))


@pytest.mark.privileged
def test_state_reflector_keeps_a_line_per_flow_and_sends_what_encap_sends(bench, tmp_path):
    """xdp_state: the frame xdp_encap makes (outer destination from the flow's slot), and the
    flow's 5-tuple written into its slot of state_slots; another flow of that slot takes it."""
    import struct

    from katran.adapter import bpf
    from katran.build import compile_one

    def frame_of(sport: int) -> bytes:
        data = bytearray(bench.frame(100))
        data[34:36] = sport.to_bytes(2, "big")  # TCP source port (no TCP checksum is checked)
        return bytes(data)

    def slot(i: int) -> tuple:
        return struct.unpack("<5QI", bytes(obj.map("state_slots").lookup(i.to_bytes(4, "little")))[:44])

    home = _state_slot(bench.CLIENT, bench.VIP, bench.BASE_PORT, 80, 6)
    other = next(p for p in range(bench.BASE_PORT + 1, bench.BASE_PORT + 200_000)
                 if _state_slot(bench.CLIENT, bench.VIP, p & 0xFFFF, 80, 6) == home) & 0xFFFF
    obj = bpf.load_object(compile_one(bench.HELPERS_SRC, tmp_path))
    try:
        assert slot(home) == (0, 0, 0, 0, 0, 0)
        data = frame_of(bench.BASE_PORT)
        res = obj.program("xdp_state").test_run(data)
        enc = obj.program("xdp_encap").test_run(data)
        assert res.retval == enc.retval == 3 and bytes(res.data) == bytes(enc.data)
        words = struct.unpack("<3I", bytes(data[26:38]))  # saddr, daddr, ports as on the wire
        key = (words[0], 0, words[1], 0, words[2] | 6 << 32)
        assert slot(home) == key + (int.from_bytes(bytes([10, 1, 8, 0]), "little"),)
        res = obj.program("xdp_state").test_run(frame_of(other))
        assert res.retval == 3 and IP(bytes(res.data)[14:]).dst == "10.1.8.0"
        assert slot(home)[4] == struct.unpack("<I", bytes(frame_of(other)[34:38]))[0] | 6 << 32
    finally:
        obj.close()


@pytest.mark.privileged
@pytest.mark.netns
def test_table_of_a_short_run(bench, capsys, restore_affinity, tmp_path):
    from katran.dataplane import packaged_object

    packaged = packaged_object("balancer.bpf.o")
    out_json = tmp_path / "run.json"
    assert bench.main(["--frames", "3000", "--blocks", "4", "--reals", "10", "--lru-size", "20000",
                       "--object", f"again={packaged}", "--previous", "HEAD", "--probe", f"probe={packaged}",
                       "--json", str(out_json)]) == 0  # --instances: 2 (the default)
    out = capsys.readouterr().out.splitlines()
    assert out[2].split() == ["flows", "bytes", "reflector", "encap", "state", "balancer", "again", "HEAD",
                              "probe"]
    rows = [ln.split() for ln in out[4:4 + len(bench.FLOWS) * len(bench.SIZES)]]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(f, s) for f in bench.FLOWS for s in bench.SIZES]
    doc = json.loads(out_json.read_text())
    assert list(doc["columns"]) == ["reflector", "encap", "state", "balancer", "again", "HEAD", "probe"]
    assert doc["instances"] == 2 and "2 loads of each balancer in turn" in out[0]
    for r, cell in zip(rows, doc["cells"]):
        assert (cell["flows"], cell["bytes"]) == (int(r[0]), int(r[1]))
        assert all(len(v) == 4 and min(v) > 0 for v in cell["ns"].values())
        assert float(r[2]) == pytest.approx(cell["summary"]["reflector"]["mpps"], abs=0.006)
        for i, col in enumerate(["encap", "state", "balancer", "again", "HEAD", "probe"]):
            mpps, ratio, ci = float(r[3 + 3 * i]), float(r[4 + 3 * i]), r[5 + 3 * i]
            lo, hi = (float(x) for x in ci.strip("[]").split("-"))
            assert mpps > 0 and lo <= ratio <= hi
            assert ratio == pytest.approx(cell["summary"][col]["ratio"][0], abs=0.006)
    first = out.index("")
    second = out.index("", first + 1)
    ns_table = out[first + 3:second]
    assert len(ns_table) == len(rows) and all(len(ln.split()) == 2 + 2 * 7 for ln in ns_table)
    # the probe's step chain: reflector > probe > balancer, paired differences
    assert "(reflector > probe > balancer)" in out[second + 1]
    assert out[second + 2].split() == ["flows", "bytes", "+probe", "+balancer"]
    third = out.index("", second + 1)
    steps = out[second + 3:third]
    assert len(steps) == len(rows) and doc["steps"] == ["reflector", "probe", "balancer"]
    # the balancer's flow cache: per row, the share of the timed frames routed from it
    assert out[third + 1].startswith("the balancer's flow cache")
    cache_rows = [ln.split() for ln in out[third + 2:]]
    assert len(cache_rows) == len(rows)
    for r in cache_rows:
        hits, fills, out = (float(r[i].rstrip("%")) for i in (3, 5, 8))
        assert 0 < hits <= 100 and min(fills, out) >= 0
        assert hits + fills + out == pytest.approx(100, abs=0.2)
    for ln, cell in zip(steps, doc["cells"]):
        probe_step = float(ln.split()[2])
        assert probe_step == pytest.approx(cell["steps"]["probe"][0], abs=0.06)
    # the balancer does more than the bare reflector on every frame, and the probe (the
    # balancer itself) adds that to the reflector: in all but one cell of these 4 x 3000-frame
    # blocks (one noisy cell measured them level) and over the six together
    slower = [c["summary"]["balancer"]["ns"][0] - c["summary"]["reflector"]["ns"][0] for c in doc["cells"]]
    steps_up = [c["steps"]["probe"][0] for c in doc["cells"]]
    for diffs in (slower, steps_up):
        assert sum(d > 0 for d in diffs) >= len(diffs) - 1 and sum(diffs) > 0


@pytest.mark.privileged
@pytest.mark.netns
def test_a_frame_that_does_not_arrive_fails_the_run(bench, restore_affinity, monkeypatch):
    # the driver's flow_cfg with 0 flows: xdp_flows drops every frame, none reaches the peer
    real_run = bench.Rig.run

    def run_without_flows(self, prog, data, flows, frames, name=""):
        return real_run(self, prog, data, 0 if name == "encap" else flows, frames, name)

    monkeypatch.setattr(bench.Rig, "run", run_without_flows)
    with pytest.raises(SystemExit, match=r"encap: 0 of \d+ frames arrived on the peer"):
        bench.main(["--frames", "1000", "--blocks", "2", "--reals", "2", "--flows", "1", "--sizes", "64"])


@pytest.mark.privileged
@pytest.mark.netns
def test_a_run_that_lost_frames_is_run_again_and_its_frames_counted(bench, capsys, restore_affinity,
                                                                     monkeypatch):
    """The peer's sink reads 5 frames short after the first timed balancer run (as when the
    veth ring overflowed): that run is repeated, the VIP check expects both runs' frames (the
    balancer really counted them), and the output says a run was repeated."""
    real_run, real_sink = bench.Rig.run, bench.Rig.sink_count
    state = {"name": "", "frames": 0, "short": 1, "reads": 0}

    def named_run(self, prog, data, flows, frames, name=""):
        state["name"], state["frames"] = name, frames
        return real_run(self, prog, data, flows, frames, name)

    def sink_count(self):
        n = real_sink(self)
        if state["name"] == "balancer" and state["frames"] == 1000 and state["short"]:
            state["reads"] += 1
            if state["reads"] == 2:  # the count after the first attempt
                state["short"] = 0
                return n - 5
        return n

    monkeypatch.setattr(bench.Rig, "run", named_run)
    monkeypatch.setattr(bench.Rig, "sink_count", sink_count)
    assert bench.main(["--frames", "1000", "--blocks", "2", "--instances", "1", "--reals", "2",
                       "--lru-size", "1000", "--flows", "1", "--sizes", "64"]) == 0
    out = capsys.readouterr().out
    assert "1 live runs repeated: frames were lost on the veth" in out
    cache_row = out.split("packets kept out (every way of the set in use)\n")[1].splitlines()[0].split()
    assert cache_row[3] == "100.0%"  # hits over the 3000 frames the balancer ran, not 2000


@pytest.mark.privileged
@pytest.mark.netns
def test_every_balancer_is_loaded_instances_times_and_they_take_the_blocks_in_turn(
        bench, restore_affinity, monkeypatch):
    """--instances 3 over 6 blocks: each balancer column runs three programs of its own
    (three KatranLbs), each for two blocks, in turn; the reflectors are loaded once."""
    ran: dict[str, list[int]] = {}
    real_run = bench.Rig.run

    def recording_run(self, prog, data, flows, frames, name=""):
        if frames == 1000:  # the timed runs (the warm-up runs are shorter)
            ran.setdefault(name, []).append(prog.fd)
        return real_run(self, prog, data, flows, frames, name)

    from katran.dataplane import packaged_object

    monkeypatch.setattr(bench.Rig, "run", recording_run)
    assert bench.main(["--frames", "1000", "--blocks", "6", "--instances", "3", "--reals", "2",
                       "--lru-size", "1000", "--flows", "1", "--sizes", "64",
                       "--object", f"again={packaged_object('balancer.bpf.o')}"]) == 0
    assert set(ran) == {"reflector", "encap", "state", "balancer", "again"}
    assert len(set(ran["reflector"])) == len(set(ran["encap"])) == len(set(ran["state"])) == 1
    for name in ("balancer", "again"):
        fds = ran[name]
        assert len(fds) == 6 and len(set(fds)) == 3 and fds[:3] == fds[3:]
    assert not set(ran["balancer"]) & set(ran["again"])


@pytest.mark.privileged
@pytest.mark.netns
@pytest.mark.parametrize("warm", [0, 2])
def test_every_timed_run_comes_right_after_its_warm_passes(bench, capsys, restore_affinity,
                                                          monkeypatch, warm):
    """--warm N: N untimed passes over the flows (every flow once, at least four batches) by
    the very program of the timed run, right before it, in every column; the flow-cache
    shares count the timed frames only (the passes' frames would push the hits above 100 %)."""
    runs: list[tuple[str, int, int]] = []
    real_run = bench.Rig.run

    def recording_run(self, prog, data, flows, frames, name=""):
        runs.append((name, prog.fd, frames))
        return real_run(self, prog, data, flows, frames, name)

    monkeypatch.setattr(bench.Rig, "run", recording_run)
    assert bench.main(["--frames", "1000", "--blocks", "2", "--instances", "2", "--reals", "2",
                       "--lru-size", "1000", "--flows", "300", "--sizes", "64",
                       "--warm", str(warm)]) == 0
    assert bench.warm_frames(300) == 300 and bench.warm_frames(1) == 4 * bench.BATCH
    timed = [i for i, r in enumerate(runs) if r[2] == 1000]
    assert len(timed) == 2 * 4  # 2 blocks x (reflector, encap, state, balancer)
    first = timed[0] - warm
    assert first >= 0 and [r[2] for r in runs[:first]] == [600] * 5  # the cell's warm-up: 3 reflectors, 2 balancer loads
    for i in timed:
        assert runs[i - warm:i] == [(runs[i][0], runs[i][1], 300)] * warm
    assert len(runs) == first + len(timed) * (1 + warm)
    out = capsys.readouterr().out
    cache_row = out.split("packets kept out (every way of the set in use)\n")[1].splitlines()[0].split()
    assert float(cache_row[3].rstrip("%")) <= 100.0
    hits, fills, kept = (float(cache_row[i].rstrip("%")) for i in (3, 5, 8))
    assert kept >= 0 and hits + fills + kept == pytest.approx(100, abs=0.2)
