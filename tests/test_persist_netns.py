"""Restarts under real traffic (lab topology: client -> router -> katran-server-grpc (XDP) ->
reals with decap): ``kill -9`` and SIGTERM then a restart with the same flags adopt the
running data plane -- 0 established sessions broken, 0 new connections refused, the same
state and program id; a second server on the interface, a foreign XDP program and other
sizes are refused without touching anything; -teardown_on_exit and katran-teardown remove
everything."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from unflagged import build_variant

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.netns,
    pytest.mark.slow,
]

VIP = "10.100.1.20"
VIP_B = "10.100.1.21"


@pytest.fixture(scope="module")
def lab():
    from katran import decap
    from katran.lab import services
    from katran.lab.netns import inside
    from katran.lab.topology import TopologySpec, topology

    old_affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(old_affinity)})  # one CPU: a flow keeps its per-CPU LRU (see test_e2e)
    spec = TopologySpec(prefix=f"kps{os.getpid() % 10000}", n_reals=3)
    try:
        with topology(spec) as topo:
            reals = {}
            try:
                for h in topo.reals:
                    with inside(h.netns):
                        decap.install(h.ifname, [VIP, VIP_B], pin_root=topo.pin_root / h.role, fix_rp_filter=0)
                    reals[h.role] = services.RealServers(h.netns, h.role, [VIP, VIP_B])
                yield topo
            finally:
                for r in reals.values():
                    r.close()
    finally:
        os.sched_setaffinity(0, old_affinity)


def _server(topo, *flags, name="grpc"):
    from katran.lab import services

    return services.GrpcServer(topo, topo.gateway_mac(), flags=list(flags), name=name)


def _client(server):
    from katran_grpc.client import GrpcKatranClient

    return GrpcKatranClient(server.address, timeout=10.0)


def _configure(server, topo, vip_addr=VIP):
    from katran.lab import services
    from katran.models import ModifyAction, Real, VipKey

    vip = VipKey(vip_addr, services.ECHO_PORT, "tcp")
    with _client(server) as c:
        c.add_vip(vip)
        c.modify_reals_for_vip(ModifyAction.ADD, [Real(h.ip4, 1 + i) for i, h in enumerate(topo.reals)], vip)
        c.add_healthchecker_dst(1000, topo.reals[0].ip4) if _has_hc(c) else None


def _has_hc(c) -> bool:
    try:
        c.get_healthcheckers_dst()
        return True
    except Exception:
        return False


def _listing(server) -> dict:
    with _client(server) as c:
        vips = sorted(c.get_all_vips(), key=str)
        out = {str(v): ([(str(r.address), r.weight, r.flags) for r in c.get_reals_for_vip(v)],
                        c.get_vip_flags(v), int(c.get_hash_function_for_vip(v))) for v in vips}
        out["mac"] = c.get_mac()
        if _has_hc(c):
            out["hc"] = c.get_healthcheckers_dst()
        return out


def _prog_id(topo) -> int:
    from katran.lab import labnet

    return labnet.xdp_prog_id(topo.lb.netns, topo.lb.ifname)


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_restart_under_traffic_adopts(lab, how):
    from katran.lab import services

    topo = lab
    server = _server(topo)
    server.start()
    try:
        _configure(server, topo)
        before = _listing(server)
        prog = _prog_id(topo)
        with services.TrafficProbe(topo.client.netns, VIP) as traffic:
            time.sleep(0.3)
            rounds0 = traffic.rounds
            t0 = time.monotonic()
            if how == "kill9":
                server.kill()
            else:
                assert server.stop(teardown=False) == 0
            assert _prog_id(topo) == prog  # still forwarding
            server.start()
            restart = time.monotonic() - t0
            time.sleep(0.5)
        print(f"{how}: restart {restart:.2f}s, rounds {traffic.rounds}, broken {traffic.broken}, "
              f"refused {traffic.refused}, longest stall {traffic.stall * 1000:.0f} ms")
        assert traffic.rounds > rounds0 + 3
        assert traffic.broken == 0 and traffic.refused == 0, vars(traffic)
        assert _prog_id(topo) == prog
        assert _listing(server) == before
        assert restart < 30
        assert "adopted the data plane" in server.log_path.read_text()
    finally:
        server.stop()
    assert _prog_id(topo) == 0  # stop() tears down


def test_second_server_on_the_interface_refused(lab):
    topo = lab
    server = _server(topo)
    server.start()
    try:
        _configure(server, topo)
        prog, before = _prog_id(topo), _listing(server)
        second = _server(topo, name="grpc2")
        with pytest.raises(Exception, match="another katran instance"):
            second.start(timeout=20)
        assert _prog_id(topo) == prog and _listing(server) == before
    finally:
        server.stop()


def test_foreign_xdp_program_not_replaced(lab):
    from katran.adapter import bpf, netlink
    from katran.dataplane import OBJ_DIR
    from katran.lab.netns import inside

    topo = lab
    with inside(topo.lb.netns):
        obj = bpf.load_object(OBJ_DIR / "xdp_pass.bpf.o")
        (prog,) = obj.programs.values()
        ifindex = netlink.ifindex(topo.lb.ifname)
        prog.attach_xdp(ifindex, "native")
    try:
        fid = _prog_id(topo)
        server = _server(topo)
        with pytest.raises(Exception, match=f"XDP program .*program id {fid} "):
            server.start(timeout=20)
        assert _prog_id(topo) == fid
        server = _server(topo, "-force")
        server.start()
        try:
            assert _prog_id(topo) not in (0, fid)
        finally:
            server.stop()
    finally:
        with inside(topo.lb.netns):
            if bpf.xdp_attached_prog_id(ifindex, "native") == fid:
                bpf.detach_xdp(ifindex, "native")
        obj.close()


def test_other_sizes_refused_then_force_reload(lab):
    topo = lab
    server = _server(topo)
    server.start()
    try:
        _configure(server, topo)
        prog = _prog_id(topo)
        assert server.stop(teardown=False) == 0
        bigger = _server(topo, "-max_vips=32")
        with pytest.raises(Exception, match="max_vips: 16 -> 32"):
            bigger.start(timeout=20)
        assert _prog_id(topo) == prog
        server = _server(topo, "-max_vips=32", "-force_reload")
        server.start()
        assert _prog_id(topo) not in (0, prog)
        assert _listing(server).keys() <= {"mac", "hc"}  # the saved state is gone, as announced
    finally:
        server.stop()


def test_teardown_on_exit_and_katran_teardown(lab):
    from katran import state
    from katran.lab.netns import inside

    topo = lab
    server = _server(topo, "-teardown_on_exit")
    server.start()
    _configure(server, topo)
    assert server.stop(teardown=False) == 0  # the flag alone removes everything
    assert _prog_id(topo) == 0
    server = _server(topo)
    server.start()
    _configure(server, topo)
    server.kill()
    assert _prog_id(topo)
    res = server.teardown()
    assert res.returncode == 0, res.stderr
    assert "removed xdp program" in res.stdout and "removed state file" in res.stdout
    assert _prog_id(topo) == 0
    with inside(topo.lb.netns):
        name = state.instance_name(topo.lb.ifname)
    assert not (Path(state.DEFAULT_PIN_ROOT) / name).exists()
    assert not (Path(state.DEFAULT_STATE_ROOT) / name).exists()


def _hc_prog_id(topo) -> int:
    """The program of our healthcheck tc filter on the lb's interface (0: none)."""
    from katran.adapter import netlink
    from katran.lab.netns import inside

    with inside(topo.lb.netns):
        filters = netlink.tc_bpf_filters(netlink.ifindex(topo.lb.ifname), "egress")
    ids = [f["id"] for f in filters if f.get("prio") == 2307]
    return ids[0] if ids else 0


def test_upgrade_keeps_the_lru(lab, tmp_path):
    """A newer object (here: a copy) is swapped in atomically with the live maps: after the
    swap the ring changes (weights), yet every established session keeps its real -- found in
    the carried LRU -- while new connections follow the new ring. A newer healthcheck object
    given with it replaces the tc filter's program in place, on the same maps."""
    import shutil

    from katran.dataplane import OBJ_DIR
    from katran.lab import services
    from katran.models import ModifyAction, Real, VipKey

    topo = lab
    newer = tmp_path / "balancer-next.bpf.o"
    shutil.copy(OBJ_DIR / "balancer.bpf.o", newer)
    newer_hc = tmp_path / "healthchecking-next.bpf.o"
    shutil.copy(OBJ_DIR / "healthchecking.bpf.o", newer_hc)
    server = _server(topo)
    server.start()
    try:
        _configure(server, topo)
        hc_before = _listing(server)["hc"]
        old, old_hc = _prog_id(topo), _hc_prog_id(topo)
        assert old_hc and hc_before
        with services.TrafficProbe(topo.client.netns, VIP, n=12) as traffic:
            assert len({name for _, name, _ in traffic.sessions}) >= 2
            assert server.stop(teardown=False) == 0
            server = _server(topo, f"-balancer_prog={newer}", f"-healthchecker_prog={newer_hc}")
            server.start()
            new = _prog_id(topo)
            assert new not in (0, old)
            log = server.log_path.read_text()
            assert "hitless upgrade" in log and "healthcheck program on" in log
            assert _hc_prog_id(topo) not in (0, old_hc) and _listing(server)["hc"] == hc_before
            vip = VipKey(VIP, services.ECHO_PORT, "tcp")
            with _client(server) as c:  # a very different ring: most slots now go to real1
                c.modify_reals_for_vip(ModifyAction.ADD, [Real(topo.reals[0].ip4, 1000)], vip)
            time.sleep(0.5)
        print(f"upgrade: rounds {traffic.rounds}, broken {traffic.broken}, refused {traffic.refused}, "
              f"longest stall {traffic.stall * 1000:.0f} ms")
        assert traffic.broken == 0 and traffic.refused == 0, vars(traffic)

        # an object whose maps do not fit is refused; the running program stays
        assert server.stop(teardown=False) == 0
        bad = _server(topo, f"-balancer_prog={OBJ_DIR / 'decap.bpf.o'}")
        with pytest.raises(Exception, match="cannot upgrade .* in place"):
            bad.start(timeout=20)
        assert _prog_id(topo) == new
        server = _server(topo, f"-balancer_prog={newer}", f"-healthchecker_prog={newer_hc}")
        server.start()
        assert _prog_id(topo) == new
    finally:
        server.stop()


def test_restart_with_config_reconciles_to_an_empty_plan(lab, tmp_path):
    """-config after an adoption: the file describes what already runs, so nothing is applied."""
    from katran.lab import services

    topo = lab
    conf = tmp_path / "katran.yaml"
    conf.write_text("version: 1\nvips:\n"
                    f"  - address: {VIP_B}\n    port: {services.ECHO_PORT}\n    proto: tcp\n    reals:\n"
                    + "".join(f"      - {{address: {h.ip4}, weight: {i + 1}}}\n" for i, h in enumerate(topo.reals)))
    server = _server(topo, f"-config={conf}")
    server.start()
    try:
        prog, before = _prog_id(topo), _listing(server)
        assert f"{VIP_B}:{services.ECHO_PORT}/tcp" in before
        with services.TrafficProbe(topo.client.netns, VIP_B) as traffic:
            mark = server.log_path.stat().st_size
            server.kill()
            server.start()
            time.sleep(0.3)
        assert traffic.broken == 0 and traffic.refused == 0, vars(traffic)
        with open(server.log_path) as f:
            f.seek(mark)
            log = f.read()
        assert "adopted the data plane" in log and "(start): no change" in log, log[-2000:]
        assert _prog_id(topo) == prog and _listing(server) == before
    finally:
        server.stop()


def _cut_flow_cache(src: Path) -> None:
    """katran/bpf as before the flow cache: the two maps and every use of them (the fast path
    too) cut out (each cut asserted, so a changed source fails here loudly)."""

    def edit(name: str, *cuts: tuple) -> None:
        path = src / name
        text = path.read_text()
        for start, end, repl in cuts:
            i = text.index(start)
            j = text.index(end, i) + len(end) if end else i + len(start)
            text = text[:i] + repl + text[j:]
        path.write_text(text)

    edit("maps.h", ("/*\n * cpu * FLOW_CACHE_SLOTS", '} flow_cache_stale SEC(".maps");\n', ""))
    edit("lb_conntrack.h", ('#include "lb_flow_cache.h"\n', None, ""),
         ("\t\tflow_cache_forget(key);\n", None, ""), ("\t\tflow_cache_forget(&pkt->flow);\n", None, ""),
         ("/*\n * The connection table through the flow cache", "/*\n * Global LRU", "/*\n * Global LRU"))
    edit("lb_pipeline.h",
         ("/*\n * Not in Katran: the fast path.", "/* The L4 part of the pipeline", "/* The L4 part of the pipeline"),
         (", bool no_port_vip, struct flow_cache_ref *ref)", None, ")"),
         ("no_port_vip ? NULL : ", None, ""),
         ("\tbool exact = true;", "__u32 fast = 0;\n", ""), ("\t\texact = false;\n", None, ""),
         ("\t\t\tif (exact && may_forward_cached(pkt)", "cached_lru_lookup(pkt, lru_map, fast, ref, &dst);",
          "lru_lookup(pkt, lru_map, 0, &dst);"),
         ("\tstruct flow_cache_ref ref;\n", None, ""), ("\tint filter;\n", None, ""),
         ("\tref.found = false;\n\tif (!is_ipv6) {\n\t\tverdict = forward_cached_v4(", "\t\t\treturn verdict;\n\t}\n", ""),
         ("\tfilter = vip_filter(", "return verdict;\n\t}\n", ""),
         ("balance_flow(xdp, &pkt, is_ipv6, pkt_bytes, filter == VIP_FILTER_NONE, &ref)", None,
          "balance_flow(xdp, &pkt, is_ipv6, pkt_bytes)"))


def test_rollback_to_a_build_without_the_flow_cache(lab, tmp_path):
    """An upgrade to an object without the flow cache (a rollback to an older build) is
    hitless too: the two cache maps are dropped (unpinned), every other map is carried, no
    session breaks; upgrading back brings a fresh cache."""
    from katran import state
    from katran.adapter import bpf
    from katran.lab import services
    from katran.lab.netns import inside

    topo = lab
    older = build_variant(_cut_flow_cache, tmp_path)
    with bpf.ObjectSpec.open(older) as spec:
        assert "flow_cache" not in spec.map_names and "flow_cache_stale" not in spec.map_names
    with inside(topo.lb.netns):
        pins = Path(state.DEFAULT_PIN_ROOT) / state.instance_name(topo.lb.ifname)
    server = _server(topo)
    server.start()
    mark = server.log_path.stat().st_size  # the log goes on across this module's servers
    try:
        _configure(server, topo)
        assert (pins / "flow_cache").exists()
        with services.TrafficProbe(topo.client.netns, VIP, n=8) as traffic:
            time.sleep(0.3)
            assert server.stop(teardown=False) == 0
            server = _server(topo, f"-balancer_prog={older}")
            server.start()
            assert "every map kept but flow_cache, flow_cache_stale" in server.log_path.read_bytes()[mark:].decode()
            assert not (pins / "flow_cache").exists() and not (pins / "flow_cache_stale").exists()
            time.sleep(0.3)
            assert server.stop(teardown=False) == 0
            server = _server(topo)  # and forward again, to the packaged object
            server.start()
            assert (pins / "flow_cache").exists()
            time.sleep(0.3)
        print(f"rollback and back: rounds {traffic.rounds}, broken {traffic.broken}, refused {traffic.refused}")
        assert traffic.broken == 0 and traffic.refused == 0, vars(traffic)
        assert server.log_path.read_bytes()[mark:].decode().count("hitless upgrade") == 2
    finally:
        server.stop()


def test_shared_mode_restarts_and_upgrade_under_traffic(lab, tmp_path):
    """Shared mode (the root program on the interface, the balancer in slot 2 of its array):
    kill -9, SIGTERM and an upgrade, each followed by a start with the same -map_path and
    -prog_pos, adopt the program in the slot -- 0 established sessions broken, 0 new
    connections refused -- and the upgrade swaps the slot in place; the stop's
    katran-teardown empties the slot (found in the state file) and leaves the root alone."""
    import shutil

    from katran import shared
    from katran.dataplane import OBJ_DIR
    from katran.lab import services
    from katran.lab.netns import inside

    topo = lab
    topo.pin_root.mkdir(parents=True, exist_ok=True)
    map_path = str(topo.pin_root / "jmp_persist")
    with inside(topo.lb.netns):
        root = shared.install(topo.lb.ifname, map_path=map_path)
    newer = tmp_path / "balancer-next.bpf.o"
    shutil.copy(OBJ_DIR / "balancer.bpf.o", newer)
    flags = [f"-map_path={map_path}", "-prog_pos=2"]
    server = _server(topo, *flags)
    try:
        server.start()
        _configure(server, topo)
        before = _listing(server)
        prog = shared.slot_prog_id(map_path, 2)
        assert prog and _prog_id(topo) == root.prog_id
        with services.TrafficProbe(topo.client.netns, VIP, n=8) as traffic:
            time.sleep(0.3)
            server.kill()
            assert shared.slot_prog_id(map_path, 2) == prog  # still forwarding
            server.start()
            time.sleep(0.3)
            assert server.stop(teardown=False) == 0
            assert shared.slot_prog_id(map_path, 2) == prog
            server.start()
            assert _listing(server) == before and shared.slot_prog_id(map_path, 2) == prog
            assert server.stop(teardown=False) == 0
            server = _server(topo, *flags, f"-balancer_prog={newer}")
            server.start()
            upgraded = shared.slot_prog_id(map_path, 2)
            time.sleep(0.5)
        print(f"shared mode: rounds {traffic.rounds}, broken {traffic.broken}, refused {traffic.refused}, "
              f"longest stall {traffic.stall * 1000:.0f} ms")
        assert traffic.rounds > 3
        assert traffic.broken == 0 and traffic.refused == 0, vars(traffic)
        assert upgraded not in (0, prog) and _prog_id(topo) == root.prog_id
        log = server.log_path.read_text()
        assert f"adopted the data plane on slot 2 of {map_path}" in log
        assert f"hitless upgrade on slot 2 of {map_path}" in log
        assert _listing(server) == before
    finally:
        server.stop()  # SIGTERM + katran-teardown
        assert shared.slot_prog_id(map_path, 2) == 0
        assert _prog_id(topo) == root.prog_id
        with inside(topo.lb.netns):
            shared.uninstall(topo.lb.ifname, map_path=map_path)
