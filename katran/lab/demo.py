"""The lab walkthrough: Katran's example scenario (EXAMPLE.md), end to end, on one machine.

Steps (each gets PASS/FAIL in the report):

1. standalone: katran-preflight on the lb, katran-server-grpc -default_mac=auto, a TCP VIP with two
   reals configured through katran-cli, HTTP, a bulk TCP session and UDP from the client;
2. on the wire: IPIP toward the reals with a crafted 172.16.x.y source per flow, replies
   straight from the reals to the client (DSR), ``katran-cli -s -lru`` and ``-l``;
3. shared mode: root program, a firewall in slot 0 dropping one source prefix, katran in slot 2;
4. healthcheck forwarding: somarks -> reals, hc_it_client.py probes, encapsulated probes captured;
5. cleanup of everything made, also on failure or Ctrl-C.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

import attrs

from katran import decap
from katran.errors import KatranError

from . import services as S
from .netns import inside
from .topology import Topology, TopologySpec, build, teardown

VIP4, VIP6 = "10.100.1.1", "fc00:100::1"
BLOCKED_PREFIX = "10.10.1.64/26"  # holds the client's second address 10.10.1.66
HC_MARKS = {1000: "real1:4", 1001: "real2:4", 1002: "real1:6"}  # somark -> real (role:family)
EXAMPLES = S.EXAMPLES
STEPS = 7  # topology + 5 numbered steps + cleanup


@attrs.define
class Step:
    name: str
    ok: Optional[bool] = None
    lines: list = attrs.field(factory=list)
    seconds: float = 0.0

    def note(self, text: str) -> None:
        self.lines.append(text)
        print(f"    {text}", flush=True)

    def check(self, cond: bool, text: str) -> bool:
        self.note(("ok   " if cond else "FAIL ") + text)
        if not cond:
            self.ok = False
        return cond


class Lab:
    """One run of the walkthrough; ``run()`` returns the exit status (0: every step passed)."""

    def __init__(self, spec: TopologySpec = TopologySpec(), bulk_mb: int = 8) -> None:
        self.spec = spec
        self.bulk_mb = bulk_mb
        self.steps: list[Step] = []
        self.topo: Optional[Topology] = None
        self.server: Optional[S.GrpcServer] = None
        self.reals: dict = {}

    # ------------------------------------------------------------------ plumbing
    def step(self, name: str, body: Callable[[Step], None]) -> Step:
        st = Step(name)
        self.steps.append(st)
        print(f"\n== {name}", flush=True)
        t0 = time.monotonic()
        try:
            body(st)
            if st.ok is None:
                st.ok = True
        except KeyboardInterrupt:
            st.ok = False
            st.note("interrupted")
            raise
        except Exception as exc:  # a failed step is reported, the next ones still run when they can
            st.ok = False
            st.note(f"FAIL {type(exc).__name__}: {exc}")
            if "-v" in sys.argv:
                traceback.print_exc()
        finally:
            st.seconds = time.monotonic() - t0
        return st

    def cli(self, st: Step, *args: str, show: bool = False) -> str:
        res = self.server.cli(*args)
        st.note("$ katran-cli " + " ".join(args))
        out = (res.stdout + res.stderr).strip()
        if show:
            for line in out.splitlines():
                st.note("  " + line)
        if res.returncode != 0:
            raise KatranError(f"katran-cli {' '.join(args)} exited {res.returncode}: {out[-300:]}")
        return res.stdout

    def lb_run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        return self.topo.run(self.topo.lb.netns, argv, check=False, timeout=timeout, env=S.python_env())

    def real_addr(self, spec: str) -> str:
        role, fam = spec.split(":")
        h = self.topo.host(role)
        return h.ip4 if fam == "4" else h.ip6

    # --------------------------------------------------------------------- steps
    def setup(self, st: Step) -> None:
        self.topo = build(self.spec)
        for line in self.topo.describe().splitlines():
            st.note(line)
        for h in self.topo.reals:
            with inside(h.netns):
                ds = decap.install(h.ifname, [VIP4, VIP6], pin_root=self.topo.pin_root / h.role, fix_rp_filter=0)
            st.note(f"{h.role}: decap prog {ds.prog_id} on {h.ifname}, VIPs {VIP4} {VIP6} on lo")
            self.reals[h.role] = S.RealServers(h.netns, h.role, [VIP4, VIP6])
        # the seed's pre-run data collection (ip route, ip n, ethtool -l, /proc/interrupts, ...)
        lb_if = self.topo.lb.ifname
        res = self.lb_run([S.entry_point("katran-preflight"), "--intf", lb_if])
        st.note(f"$ katran-preflight --intf {lb_if}   (in {self.topo.lb.netns})")
        for line in (res.stdout + res.stderr).strip().splitlines():
            st.note("  " + line)
        st.check(res.returncode in (0, 1), f"katran-preflight exited {res.returncode} (0: all ok, 1: warnings)")
        st.check(f"-default_mac={self.topo.lb.router_mac}" in res.stdout,
                 f"it finds the router's MAC on the lb link ({self.topo.lb.router_mac})")

    def configure_vips(self, st: Step) -> None:
        r1, r2 = self.topo.reals[0], self.topo.reals[1]
        for port in (S.HTTP_PORT, S.BULK_PORT):
            self.cli(st, "-A", "-t", f"{VIP4}:{port}")
            for r in (r1, r2):
                self.cli(st, "-a", "-t", f"{VIP4}:{port}", "-r", r.ip4, "-w", "1")
        self.cli(st, "-A", "-u", f"{VIP4}:{S.UDP_PORT}")
        for r in (r1, r2):
            self.cli(st, "-a", "-u", f"{VIP4}:{S.UDP_PORT}", "-r", r.ip4, "-w", "1")
        self.cli(st, "-A", "-t", f"[{VIP6}]:{S.HTTP_PORT}")
        for r in (r1, r2):
            self.cli(st, "-a", "-t", f"[{VIP6}]:{S.HTTP_PORT}", "-r", r.ip6, "-w", "1")

    def standalone(self, st: Step) -> None:
        self.server = S.GrpcServer(self.topo, "auto", flags=["-forwarding_cores=0"])
        st.note("$ " + " ".join(["katran-server-grpc", *self.server.argv[1:]]))
        self.server.start()
        st.note(f"server pid {self.server.pid}, XDP attached to {self.topo.lb.netns}/{self.topo.lb.ifname}")
        found = [ln.split(": ", 1)[-1] for ln in self.server.tail_log(40).split(" | ") if "-default_mac=auto:" in ln]
        st.note("server log: " + (found[-1] if found else "(no -default_mac=auto line)"))
        res = self.server.cli("-list_mac")
        st.check(f"Mac address is {self.topo.lb.router_mac}" in res.stderr,
                 f"-default_mac=auto resolved to the router's MAC ({self.topo.lb.router_mac})")
        self.configure_vips(st)
        c = self.topo.client.netns
        got = collections.Counter(S.http_get(c, VIP4) for _ in range(20))
        st.check(sum(got.values()) == 20 and len(got) == 2, f"20 HTTP GETs to {VIP4}:80 answered by {dict(got)}")
        got6 = collections.Counter(S.http_get(c, VIP6) for _ in range(10))
        st.check(sum(got6.values()) == 10, f"10 HTTP GETs to [{VIP6}]:80 answered by {dict(got6)}")
        nbytes = self.bulk_mb << 20
        name, counted, secs = S.bulk_send(c, VIP4, nbytes)
        st.check(counted == nbytes, f"one TCP session of {self.bulk_mb} MB to {VIP4}:{S.BULK_PORT}: {name} "
                                    f"received {counted} bytes in {secs:.2f}s ({counted * 8 / secs / 1e6:.0f} Mbit/s)")
        udp = collections.Counter(S.udp_query(c, VIP4, f"udp{i}", sport=30000 + i) for i in range(20))
        st.check(None not in udp, f"20 UDP flows to {VIP4}:{S.UDP_PORT} answered by {dict(udp)}")

    def wire(self, st: Step) -> None:
        topo = self.topo
        caps = {h.role: S.Capture(topo.router, h.router_if) for h in topo.reals}
        lb_cap = S.Capture(topo.router, topo.lb.router_if)
        flows = 12
        for _ in range(flows):
            S.http_get(topo.client.netns, VIP4)
        pk = {role: S.decode(c.stop()) for role, c in caps.items()}
        lb_pk = S.decode(lb_cap.stop())
        to_real = collections.defaultdict(set)  # client flow -> outer sources
        replies_direct = 0
        for role, packets in pk.items():
            for p in packets:
                if p.outgoing and p.encap and p.inner_dst == VIP4:
                    to_real[(p.inner_src, p.sport)].add(p.src)
                if not p.outgoing and p.encap is None and p.src == VIP4 and p.dst == topo.client.ip4:
                    replies_direct += 1
        sample = next((p for ps in pk.values() for p in ps if p.outgoing and p.encap == "ipip"), None)
        if sample:
            st.note(f"on the wire to a real: IPIP {sample.src} > {sample.dst} carrying "
                    f"{sample.inner_src}:{sample.sport} > {sample.inner_dst}:{sample.dport}")
        outer = [next(iter(s)) for s in to_real.values() if len(s) == 1]
        st.check(len(to_real) == flows, f"{len(to_real)} of {flows} client flows seen IPIP-encapsulated on the real links")
        st.check(all(len(s) == 1 for s in to_real.values()), "each flow has one outer source address")
        st.check(all(a.startswith("172.16.") for a in outer), "outer sources are 172.16.x.y: " +
                 ", ".join(sorted(set(outer))[:6]) + (" ..." if len(set(outer)) > 6 else ""))
        st.check(len(set(outer)) >= flows - 1, f"{len(set(outer))} distinct outer sources for {flows} flows")
        st.check(replies_direct > 0, f"{replies_direct} replies left the reals straight to the client (src {VIP4})")
        via_lb = [p for p in lb_pk if p.src == VIP4 or p.inner_src == VIP4]
        to_lb = [p for p in lb_pk if p.outgoing and p.dst == VIP4]
        st.check(not via_lb and to_lb, f"the lb saw {len(to_lb)} client packets and {len(via_lb)} replies (DSR)")
        self.cli(st, "-s", "-lru", "-count", "1", "-interval", "0.5", show=True)
        self.cli(st, "-l", show=True)

    def shared(self, st: Step) -> None:
        topo = self.topo
        self.server.stop()
        self.server = None
        map_path = str(topo.pin_root / "jmp_eth0")
        topo.pin_root.mkdir(parents=True, exist_ok=True)
        res = self.lb_run(["sh", str(EXAMPLES / "install_xdproot.sh"), topo.lb.ifname, map_path])
        st.note("$ install_xdproot.sh " + f"{topo.lb.ifname} {map_path}")
        for line in (res.stdout + res.stderr).strip().splitlines():
            st.note("  " + line)
        if res.returncode != 0:
            raise KatranError("root program install failed")
        res = self.lb_run([sys.executable, str(EXAMPLES / "firewall.py"), "--root-map", map_path, "--pos", "0",
                           "--drop", BLOCKED_PREFIX])
        st.note(f"$ firewall.py --root-map {map_path} --pos 0 --drop {BLOCKED_PREFIX}")
        st.note("  " + (res.stdout + res.stderr).strip().replace("\n", "\n      "))
        if res.returncode != 0:
            raise KatranError("firewall install failed")
        self.server = S.GrpcServer(topo, "auto", flags=["-forwarding_cores=0", f"-map_path={map_path}",
                                                             "-prog_pos=2"])
        self.server.start()
        st.note(f"katran-server-grpc -map_path={map_path} -prog_pos=2 (pid {self.server.pid})")
        self.configure_vips(st)
        res = self.lb_run([S.entry_point("katran-xdp-root"), "status", "--intf", topo.lb.ifname,
                           "--map-path", map_path])
        st.note("$ katran-xdp-root status: " + res.stdout.strip())
        st.check("slot 0" in res.stdout and "slot 2" in res.stdout, "firewall in slot 0, katran in slot 2")
        ok = collections.Counter(S.http_get(topo.client.netns, VIP4) for _ in range(10))
        st.check(sum(ok.values()) == 10, f"from {topo.client.ip4}: 10 HTTP GETs answered by {dict(ok)}")
        blocked = 0
        for _ in range(3):
            try:
                S.http_get(topo.client.netns, VIP4, bind=topo.client_extra4, timeout=1.0)
            except OSError:
                blocked += 1
        st.check(blocked == 3, f"from {topo.client_extra4} (in {BLOCKED_PREFIX}): {blocked} of 3 GETs dropped by the firewall")

    def healthchecks(self, st: Step) -> None:
        topo = self.topo
        for mark, spec in HC_MARKS.items():
            self.cli(st, "-new_hc", self.real_addr(spec), "-somark", str(mark))
        self.cli(st, "-list_hc", show=True)
        caps = {h.role: S.Capture(topo.router, h.router_if) for h in topo.reals}
        client = str(EXAMPLES / "hc_it_client.py")
        for vip, marks in ((VIP4, list(HC_MARKS)), (VIP6, [1002])):
            argv = [sys.executable, client, "--vip", vip, "--port", str(S.UDP_PORT), "--count", "2"]
            for m in marks:
                argv += ["--mark", str(m)]
            res = self.lb_run(argv, timeout=30)
            st.note("$ hc_it_client.py " + " ".join(argv[2:]) + " -> " + (res.stdout + res.stderr).strip())
        seen = collections.defaultdict(set)  # mark -> (encap, outer dst, inner dst)
        for role, cap in caps.items():
            for p in S.decode(cap.stop()):
                if p.outgoing and p.encap and p.payload.startswith(b"katran-hc mark="):
                    mark = int(p.payload.split(b"mark=")[1].split()[0])
                    seen[mark].add((p.encap, p.dst, p.inner_dst))
        probed = [(m, VIP4) for m in HC_MARKS] + [(1002, VIP6)]
        for mark, vip in probed:
            want = self.real_addr(HC_MARKS[mark])
            got = [(e, d) for e, d, inner in seen.get(mark, set()) if inner == vip]
            kind = {(False, False): "ipip", (True, True): "ip6ip6", (False, True): "4in6"}[(":" in vip, ":" in want)]
            st.check(bool(got) and all(d == want and e == kind for e, d in got),
                     f"somark {mark}, VIP {vip}: expected {kind} to {want}; captured " +
                     (", ".join(f"{e} to {d}" for e, d in sorted(got)) or "nothing encapsulated"))
        self.cli(st, "-s", "-hc_stats", "-count", "1", "-interval", "0.2", show=True)

    def active_healthchecks(self, st: Step) -> None:
        """The server runs the checks of its declarative file; one real's web server stops and
        comes back while a client keeps sending requests."""
        topo = self.topo
        r1, r2 = topo.reals[0], topo.reals[1]
        spec = {"interval": 0.5, "timeout": 0.4, "rise": 2, "fall": 3}
        path = S.STATE_DIR / f"{topo.prefix}-lb.yaml"
        path.write_text(
            "version: 1\n"
            "vips:\n"
            f"  - {{address: {VIP4}, port: {S.HTTP_PORT}, proto: tcp,\n"
            f"     reals: [{r1.ip4}, {r2.ip4}],\n"
            "     healthcheck: {type: http, path: /, interval: %(interval)s, timeout: %(timeout)s, "
            "rise: %(rise)s, fall: %(fall)s}}\n" % spec)
        st.note(f"{path}: VIP {VIP4}:{S.HTTP_PORT} with {r1.ip4}, {r2.ip4}; http check every "
                f"{spec['interval']} s, fall {spec['fall']}, rise {spec['rise']}, through the VIP (somarks)")
        flags = [f for f in self.server.flags] + [f"-config={path}"]
        self.server.stop()
        self.server = S.GrpcServer(topo, "auto", flags=flags)
        self.server.start()
        st.note("$ katran-server-grpc ... " + " ".join(flags))
        stop = threading.Event()
        results: list = []  # (time, real name or None)

        def client() -> None:
            while not stop.is_set():
                try:
                    results.append((time.monotonic(), S.http_get(topo.client.netns, VIP4, timeout=1.0)))
                except OSError:
                    results.append((time.monotonic(), None))
                time.sleep(0.02)

        def weight(addr: str) -> Optional[int]:
            for line in self.server.cli("-l").stdout.splitlines():
                if line.strip().startswith(f"->{addr} "):
                    return int(line.split("weight:")[1].split()[0])
            return None

        def wait(cond, timeout: float) -> Optional[float]:
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout:
                if cond():
                    return time.monotonic() - t0
                time.sleep(0.05)
            return None

        t = threading.Thread(target=client, daemon=True)
        t.start()
        try:
            st.check(wait(lambda: weight(r1.ip4) == 1 and weight(r2.ip4) == 1, 10) is not None,
                     "both reals in service (weight 1)")
            time.sleep(1.0)
            self.reals[r2.role].stop_http()
            down_at = time.monotonic()
            detect = wait(lambda: weight(r2.ip4) == 0, 10)
            detected_at = time.monotonic()
            time.sleep(1.5)
            self.reals[r2.role].start_http()
            recover = wait(lambda: weight(r2.ip4) == 1, 10)
            time.sleep(0.5)
        finally:
            stop.set()
            t.join(5)
        bound = (spec["fall"] + 1) * spec["interval"]
        st.check(detect is not None and detect <= bound + 0.5,
                 f"{r2.role}'s web server stopped: drained (weight 0) after {detect or -1:.2f} s "
                 f"(fall {spec['fall']} x {spec['interval']} s)")
        st.check(recover is not None and recover <= (spec["rise"] + 1) * spec["interval"] + 0.5,
                 f"started again: weight 1 back after {recover or -1:.2f} s (rise {spec['rise']} x {spec['interval']} s)")
        failed_before = sum(1 for at, name in results if name is None and down_at <= at < detected_at)
        failed_after = sum(1 for at, name in results if name is None and at >= detected_at)
        during = collections.Counter(name for at, name in results if detected_at <= at and name)
        st.check(failed_after == 0, f"{len(results)} requests under traffic: {failed_before} failed between the "
                                    f"stop and its detection, {failed_after} after it")
        log = [ln for ln in self.server.tail_log(200).split(" | ") if "hc: real" in ln]
        for line in log[-2:]:
            st.note("server log: " + line.split(": ", 1)[-1])
        st.note(f"answers after detection: {dict(during)}")

    def cleanup(self, st: Step) -> None:
        if self.server is not None:
            code = self.server.stop()
            st.note(f"katran-server-grpc stopped (exit {code})")
            self.server = None
        for r in self.reals.values():
            r.close()
        self.reals.clear()
        removed = teardown(self.spec.prefix)
        st.note("removed: " + (", ".join(removed) or "nothing"))
        from . import labnet

        left = labnet.list_netns(self.spec.prefix + "-")
        st.check(not left and not (Path("/sys/fs/bpf") / f"katran-lab-{self.spec.prefix}").exists(),
                 "no namespace, pin or process of the lab is left")

    # --------------------------------------------------------------------- run
    def run(self) -> int:
        t0 = time.monotonic()
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            setup = self.step("topology: client, router, lb on a stick, reals with decap", self.setup)
            if setup.ok:
                std = self.step("1. standalone mode: katran-server-grpc + katran-cli, real traffic", self.standalone)
                if std.ok is not False or self.server is not None:
                    self.step("2. on the wire: IPIP with crafted sources, DSR replies, stats", self.wire)
                self.step("3. shared mode: root program, firewall in slot 0, katran in slot 2", self.shared)
                if self.server is not None:
                    self.step("4. healthcheck forwarding: somarks, probes, capture", self.healthchecks)
                if self.server is not None:
                    self.step("5. active health checks: a real goes down and comes back under traffic",
                              self.active_healthchecks)
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up", flush=True)
        finally:
            self.step("6. cleanup", self.cleanup)
            signal.signal(signal.SIGTERM, old_term)
        print(self.report(time.monotonic() - t0))
        return 0 if self.steps and all(s.ok for s in self.steps) and len(self.steps) == STEPS else 1

    def report(self, seconds: float) -> str:
        out = ["", "=" * 72, f"katran lab report ({seconds:.1f}s)", "=" * 72]
        for s in self.steps:
            out.append(f"[{'PASS' if s.ok else 'FAIL'}] {s.name} ({s.seconds:.1f}s)")
            for line in s.lines:
                if line.startswith(("ok ", "FAIL")):
                    out.append(f"        {line}")
        if len(self.steps) < STEPS:
            out.append("[FAIL] not every step ran")
        passed = sum(1 for s in self.steps if s.ok)
        out.append(f"{passed}/{max(len(self.steps), STEPS)} steps passed")
        return "\n".join(out)


_MAIN_PID = os.getpid()


def _raise_interrupt(signum, frame) -> None:
    """SIGTERM -> KeyboardInterrupt (so cleanup runs), in our process only: helper
    processes forked by libraries (pyroute2 creates namespaces in a child) just die."""
    if os.getpid() != _MAIN_PID:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt
