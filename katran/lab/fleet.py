"""The fleet lab: several balancers behind an ECMP router, VIPs announced over BGP (issue 17).

::

    client ── router (BIRD, ECMP, L4 hash) ──┬── lb1  katran-server-grpc -config fleet.yaml + BIRD speaker
                                             ├── lb2  ...
                                             ├── lb3  ...
                                             ├── real1 (decap, VIPs on lo)
                                             └── real2 ...

Every host is a namespace ``<prefix>-<role>`` with one interface ``eth0``; the router has
``to-<role>`` toward each.  All balancers read one declarative file whose per-balancer
values are ``auto`` (``router_id``/``local_address``: the balancer's address on
main_interface; the peer: its default gateway, the router).  The router learns each VIP's
/32 from every balancer and installs one ECMP route (``merge paths``), hashing on the L4
five-tuple (``fib_multipath_hash_policy=1``).

A lost balancer is a lost node: its link disappears (the veth pair is deleted, as a
powered-off host's port goes dark) and its processes die without a word (SIGKILL: no BGP
withdrawal, the XDP program goes with the interface).  Killing only the processes would not
do: the XDP program stays attached and keeps forwarding.  A node that goes silent without
losing its link is found by BFD (3 x 100 ms, tests/test_bgp.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import attrs

from katran.bgp import Bird, router_config
from katran.errors import KatranError, ValidationError

from . import labnet
from . import services as S
from .netns import inside
from .topology import _HOST_SYSCTLS, _ROUTER_SYSCTLS, BPFFS, STATE_DIR

VIP1 = "10.100.1.1"  # the echo / http VIP (no health check: announced while reals have weight)
VIP2 = "10.100.1.2"  # the health-checked VIP (step 6)
HC_PORT = 9100  # the reals' health endpoint of VIP2
ROUTER_AS, LB_AS = 65000, 65001
CLIENT_IP, CLIENT_GW = "10.10.1.2", "10.10.1.1"


def lb_ip(n: int) -> str:
    return f"10.77.{n}.1"


def lb_gw(n: int) -> str:
    return f"10.77.{n}.254"


def real_ip(n: int) -> str:
    return f"10.200.{n}.2"


@attrs.frozen
class FleetSpec:
    prefix: str = "kfl"
    n_lbs: int = 3
    n_reals: int = 2
    sessions: int = 30  # long-lived TCP sessions across a lost balancer
    flows: int = 300  # flows whose real is compared on every balancer

    def __attrs_post_init__(self) -> None:
        if not self.prefix or len(self.prefix) > 8 or not self.prefix.replace("-", "").isalnum():
            raise ValidationError("prefix", self.prefix, "1-8 letters/digits")
        if not 2 <= self.n_lbs <= 8:
            raise ValidationError("n_lbs", self.n_lbs, "expected 2..8")
        if not 1 <= self.n_reals <= 8:
            raise ValidationError("n_reals", self.n_reals, "expected 1..8")


def fleet_config(spec: FleetSpec) -> str:
    """The one declarative file every balancer reads."""
    reals = "".join(f"      - {real_ip(i)}\n" for i in range(1, spec.n_reals + 1))
    return f"""# katran fleet lab: one file for every balancer (per-balancer values are auto)
version: 1
balancer:
  main_interface: eth0
  default_mac: auto
  max_vips: 16
  max_reals: 64
  lru_size: 20000
  forwarding_cores: [0]
vips:
  - address: {VIP1}
    port: {S.ECHO_PORT}
    proto: tcp
    reals:
{reals}  - address: {VIP1}
    port: {S.HTTP_PORT}
    proto: tcp
    reals:
{reals}  - address: {VIP2}
    port: {S.HTTP_PORT}
    proto: tcp
    healthcheck: {{type: tcp, port: {HC_PORT}, interval: 0.5, timeout: 0.4, rise: 2, fall: 2}}
    reals:
{reals}healthchecks:
  all_down: fail_open
bgp:
  router_id: auto
  local_address: auto
  local_as: {LB_AS}
  peers:
    - address: auto
      asn: {ROUTER_AS}
  communities: ["{LB_AS}:100"]
  min_healthy: 1
  bfd: true
  bfd_interval_ms: 100
  bfd_multiplier: 3
  hold_time: 3
  keepalive_time: 1
"""


class Balancer:
    """katran-server-grpc (with its BIRD speaker) in a balancer namespace."""

    def __init__(self, fleet: "Fleet", n: int) -> None:
        self.fleet, self.n = fleet, n
        self.role = f"lb{n}"
        self.netns = f"{fleet.prefix}-{self.role}"
        self.socket_path = STATE_DIR / f"{fleet.prefix}-{self.role}.sock"
        self.address = f"unix:{self.socket_path}"
        self.log_path = STATE_DIR / f"{fleet.prefix}-{self.role}.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def argv(self) -> list[str]:
        return ["nsenter", f"--net={labnet.NETNS_DIR / self.netns}", "--", S.entry_point("katran-server-grpc"),
                f"-server={self.address}", f"-config={self.fleet.config_path}", "-hc_forwarding=false",
                "-shutdown_delay=0", "-drain_timeout=5000"]

    def start(self, timeout: float = 60.0) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=S.python_env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                if b"Server listening" in f.read():
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise KatranError(f"katran-server-grpc in {self.netns} did not start (log {self.log_path})")

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def stop(self, timeout: float = 20.0) -> Optional[int]:
        """SIGTERM: the graceful stop (withdraw, wait for the traffic to leave, stop)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        S.terminate(proc, timeout)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL to the server and its BIRD (one process group): no withdrawal, no cleanup."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        argv = [S.entry_point("katran-cli"), f"-server={self.address}", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=S.python_env())

    def vip_packets(self) -> dict:
        """``vip:port:proto`` -> packets so far (the first round of ``katran-cli -s`` is the total)."""
        res = self.cli("-s", "-count", "1")
        if res.returncode != 0:
            raise KatranError(f"katran-cli -s on {self.role}: {res.stderr.strip()[:200]}")
        out = {}
        for line in res.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[0] == "vip:":
                out[parts[1]] = int(parts[3])
        return out

    def real_for_flows(self, vip: str, port: int, srcs: list) -> list:
        """The real of each flow ``src:sport`` -> ``vip:port`` (tcp), by ``katran-cli -flow``."""
        res = self.cli("-t", f"{vip}:{port}", "-flow", ",".join(f"{a}:{p}" for a, p in srcs), timeout=120)
        if res.returncode != 0:
            raise KatranError(f"katran-cli -flow on {self.role}: {res.stderr.strip()[:200]}")
        got = {}
        for line in res.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "flow":
                got[parts[1]] = parts[3] if parts[2] == "real:" else None
        return [got.get(f"{a}:{p}") for a, p in srcs]


class Fleet:
    def __init__(self, spec: FleetSpec = FleetSpec()) -> None:
        self.spec = spec
        self.prefix = spec.prefix
        self.router = f"{spec.prefix}-router"
        self.client = f"{spec.prefix}-client"
        self.config_path = STATE_DIR / f"{spec.prefix}-fleet.yaml"
        self.lbs = [Balancer(self, n) for n in range(1, spec.n_lbs + 1)]
        self.reals: list = []  # RealServers
        self.hc_listeners: list = []
        self.router_bird = Bird(STATE_DIR / f"{spec.prefix}-router-bird", netns=self.router, name="router")

    @property
    def pin_root(self) -> Path:
        return BPFFS / f"katran-lab-{self.prefix}"

    # ------------------------------------------------------------------ build
    def _link(self, role: str, h4: str, r4: str, mtu: int = 1600) -> None:
        ns = f"{self.prefix}-{role}"
        labnet.veth_pair(ns, "eth0", self.router, f"to-{role}", mtu=mtu)
        labnet.configure(ns, "eth0", [f"{h4}/24"])
        labnet.configure(self.router, f"to-{role}", [f"{r4}/24"])
        labnet.set_sysctls(self.router, {f"net.ipv4.conf.to-{role}.rp_filter": 0})
        labnet.set_sysctls(ns, {"net.ipv4.conf.eth0.rp_filter": 0})
        labnet.disable_tx_checksum(ns, "eth0")
        labnet.add_route(ns, "default", r4)

    def _lb_link(self, n: int) -> None:
        self._link(f"lb{n}", lb_ip(n), lb_gw(n))
        # the balancer XDP_TXes frames back to the router: a veth peer needs an XDP program to get them
        labnet.attach_xdp_pass(self.router, f"to-lb{n}")

    def up(self) -> None:
        """Namespaces, links, the router's BIRD, decap and services on the reals, the balancers."""
        leftovers = labnet.list_netns(self.prefix + "-")
        if leftovers:
            raise KatranError(f"namespaces of a previous fleet '{self.prefix}' exist ({', '.join(leftovers)}): "
                              f"run `katran-lab fleet down --prefix {self.prefix}` first")
        from katran import decap

        try:
            labnet.create_netns(self.router)
            labnet.set_sysctls(self.router, {**_ROUTER_SYSCTLS, "net.ipv4.fib_multipath_hash_policy": 1,
                                             "net.ipv6.fib_multipath_hash_policy": 1})
            roles = ["client", *(lb.role for lb in self.lbs), *(f"real{i}" for i in range(1, self.spec.n_reals + 1))]
            for role in roles:
                labnet.create_netns(f"{self.prefix}-{role}")
                labnet.set_sysctls(f"{self.prefix}-{role}", _HOST_SYSCTLS)
            self._link("client", CLIENT_IP, CLIENT_GW, mtu=1500)
            for lb in self.lbs:
                self._lb_link(lb.n)
            for i in range(1, self.spec.n_reals + 1):
                ns = f"{self.prefix}-real{i}"
                self._link(f"real{i}", real_ip(i), f"10.200.{i}.1")
                with inside(ns):
                    decap.install("eth0", [VIP1, VIP2], pin_root=self.pin_root / f"real{i}", fix_rp_filter=0)
                self.reals.append(S.RealServers(ns, f"real{i}", [VIP1, VIP2]))
                self.hc_listeners.append(self._hc_listener(ns))
            self.router_bird.write_config(router_config(CLIENT_GW, ROUTER_AS,
                                                        [(lb_ip(lb.n), LB_AS) for lb in self.lbs]))
            self.router_bird.start()
            STATE_DIR.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(fleet_config(self.spec))
            for lb in self.lbs:
                lb.start()
            self.wait_nexthops(VIP1, [lb_ip(lb.n) for lb in self.lbs], 30)
            self.wait_nexthops(VIP2, [lb_ip(lb.n) for lb in self.lbs], 30)
        except BaseException:
            self.down()
            raise

    def save(self) -> None:
        state = {"prefix": self.prefix, "n_lbs": self.spec.n_lbs, "n_reals": self.spec.n_reals,
                 "router_bird_pid": self.router_bird.proc.pid if self.router_bird.proc else None,
                 "servers": {lb.role: {"pid": lb.pid, "address": lb.address, "log": str(lb.log_path)}
                             for lb in self.lbs},
                 "config": str(self.config_path)}
        (STATE_DIR / f"{self.prefix}-fleet.json").write_text(json.dumps(state, indent=2))

    @staticmethod
    def _hc_listener(ns: str) -> "HcEndpoint":
        return HcEndpoint(ns)

    def down(self) -> list[str]:
        for lb in self.lbs:
            with contextlib.suppress(Exception):
                lb.kill()
        self.router_bird.stop()
        for r in self.reals:
            with contextlib.suppress(Exception):
                r.close()
        for s in self.hc_listeners:
            s.close()
        self.reals, self.hc_listeners = [], []
        return teardown(self.prefix)

    # ------------------------------------------------------------------ facts
    def nexthops(self, vip: str) -> list[str]:
        out = subprocess.run(["ip", "-n", self.router, "-j", "route", "show", f"{vip}/32"], capture_output=True,
                             text=True).stdout
        routes = json.loads(out or "[]")
        if not routes:
            return []
        r = routes[0]
        return sorted(h["gateway"] for h in r["nexthops"]) if "nexthops" in r else [r["gateway"]]

    def wait_nexthops(self, vip: str, want: list, timeout: float) -> float:
        want = sorted(want)
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.nexthops(vip) == want:
                return time.monotonic() - start
            time.sleep(0.005)
        raise KatranError(f"router route to {vip}: next hops {self.nexthops(vip)} after {timeout} s, wanted {want}")

    def vip_packets(self, lb: Balancer, port: int = S.ECHO_PORT, vip: str = VIP1) -> int:
        return lb.vip_packets().get(f"{vip}:{port}:6", 0)

    def lose(self, lb: Balancer) -> None:
        """Node loss: the link goes (veth pair deleted) and the processes die (SIGKILL)."""
        subprocess.run(["ip", "-n", lb.netns, "link", "del", "eth0"], check=True, capture_output=True)
        lb.kill()

    def restore(self, lb: Balancer) -> None:
        self._lb_link(lb.n)
        lb.start()


def teardown(prefix: str) -> list[str]:
    """Remove what a fleet left: its processes (from the state file), namespaces, pins, files."""
    removed = []
    state_file = STATE_DIR / f"{prefix}-fleet.json"
    if state_file.exists():
        with contextlib.suppress(ValueError, OSError):
            state = json.loads(state_file.read_text())
            pids = [s.get("pid") for s in state.get("servers", {}).values()]
            for pid in [p for p in pids if p]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                    removed.append(f"pid {pid}")
            bird = state.get("router_bird_pid")
            if bird:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(bird, signal.SIGKILL)
                    removed.append(f"pid {bird}")
    import shutil

    for ns in labnet.list_netns(prefix + "-lb"):  # the balancers' BIRD directories (katran.daemon's default)
        with contextlib.suppress(OSError):
            speaker = Path(f"/run/katran/bird-eth0-{os.stat(labnet.NETNS_DIR / ns).st_ino}")
            if speaker.is_dir():
                shutil.rmtree(speaker, ignore_errors=True)
                removed.append(str(speaker))
        # the stopped server left its data plane pinned for a restart (docs/operations.md): remove it
        res = subprocess.run(["nsenter", f"--net={labnet.NETNS_DIR / ns}", "--", sys.executable, "-m",
                              "katran.teardown", "-intf=eth0"], capture_output=True, text=True, env=S.python_env())
        if res.returncode == 0 and not res.stdout.startswith("nothing"):
            removed.append(f"katran data plane of {ns}")
    removed += labnet.remove_all(labnet.list_netns(prefix + "-"))
    pins = BPFFS / f"katran-lab-{prefix}"
    if pins.exists():
        shutil.rmtree(pins, ignore_errors=True)
        removed.append(str(pins))

    bird_dir = STATE_DIR / f"{prefix}-router-bird"
    if bird_dir.exists():
        shutil.rmtree(bird_dir, ignore_errors=True)
        removed.append(str(bird_dir))
    for f in STATE_DIR.glob(f"{prefix}-lb*.sock"):
        f.unlink()
    for f in (state_file, STATE_DIR / f"{prefix}-fleet.yaml"):
        if f.exists():
            f.unlink()
            removed.append(str(f))
    return removed


class HcEndpoint:
    """The reals' health endpoint of VIP2: accepts and closes TCP connections on HC_PORT."""

    def __init__(self, ns: str) -> None:
        with inside(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", HC_PORT))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


# ---------------------------------------------------------------------- traffic
class Sessions:
    """N long-lived echo sessions, each asked every ``period`` s in its own thread; counts
    broken sessions and the longest gap between two answers."""

    def __init__(self, netns: str, n: int, period: float = 0.05) -> None:
        self.sessions = [S.EchoSession(netns, VIP1, timeout=15.0) for _ in range(n)]
        self.period = period
        self.broken: dict[int, str] = {}
        self.last_ok = [time.monotonic()] * n
        self.longest = [0.0] * n
        self.reals = [s.ask("hello") for s in self.sessions]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        s, k = self.sessions[i], 0
        while not self._stop.is_set():
            k += 1
            try:
                real = s.ask(f"s{i}-{k}")
                if real != self.reals[i]:
                    raise KatranError(f"answered by {real}, began with {self.reals[i]}")
            except Exception as exc:  # noqa: BLE001 - a broken session, reported
                self.broken[i] = str(exc)[:80]
                return
            now = time.monotonic()
            self.longest[i] = max(self.longest[i], now - self.last_ok[i])
            self.last_ok[i] = now
            self._stop.wait(self.period)

    def reset_stall(self) -> None:
        now = time.monotonic()
        self.last_ok = [now] * len(self.sessions)
        self.longest = [0.0] * len(self.sessions)

    @property
    def longest_stall(self) -> float:
        return max(self.longest) if self.longest else 0.0

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(20)
        for s in self.sessions:
            s.close()


class NewConnections:
    """New connections (HTTP GETs to VIP1:80) in a loop: counts failures."""

    def __init__(self, netns: str, period: float = 0.02) -> None:
        self.netns, self.period = netns, period
        self.ok, self.failed, self.errors = 0, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                S.http_get(self.netns, VIP1, timeout=3.0)
                self.ok += 1
            except Exception as exc:  # noqa: BLE001 - counted
                self.failed += 1
                self.errors.append(str(exc)[:80])
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def http_from(netns: str, vip: str, sport: int, timeout: float = 3.0) -> str:
    """GET / from a chosen source port; returns the real that answered."""
    s = S._sock(netns, vip, socket.SOCK_STREAM, sport=sport, timeout=timeout)
    with contextlib.closing(s):
        s.connect((vip, S.HTTP_PORT))
        s.sendall(f"GET / HTTP/1.0\r\nHost: {vip}\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.partition(b"\r\n\r\n")[2].decode().strip()


# ---------------------------------------------------------------------- steps
@attrs.define
class StepResult:
    name: str
    ok: bool = True
    lines: list = attrs.field(factory=list)
    numbers: dict = attrs.field(factory=dict)

    def check(self, cond: bool, text: str) -> None:
        self.lines.append(("ok  " if cond else "FAIL") + " " + text)
        self.ok = self.ok and bool(cond)


def step_spread(fleet: Fleet, flows: int = 60) -> StepResult:
    """(1) flows spread over every balancer (per-balancer VIP packet counters)."""
    st = StepResult("1. flows spread over the balancers")
    before = {lb.role: fleet.vip_packets(lb, S.HTTP_PORT) for lb in fleet.lbs}
    answered = sum(1 for _ in range(flows) if S.http_get(fleet.client, VIP1))
    after = {lb.role: fleet.vip_packets(lb, S.HTTP_PORT) for lb in fleet.lbs}
    delta = {k: after[k] - before[k] for k in after}
    st.numbers["packets"] = delta
    st.check(answered == flows, f"{answered} of {flows} HTTP GETs answered")
    st.check(all(v > 0 for v in delta.values()), f"VIP {VIP1}:80 packets per balancer: {delta}")
    return st


def step_same_real(fleet: Fleet, flows: int = 300, connect: int = 60) -> StepResult:
    """(2) every balancer picks the same real for each of ``flows`` flows; ``connect`` of them
    are then opened for real and must be answered (and seen) by that real."""
    st = StepResult("2. the same real on every balancer")
    sports = [30000 + i for i in range(flows)]
    picks = {lb.role: lb.real_for_flows(VIP1, S.HTTP_PORT, [(CLIENT_IP, sp) for sp in sports]) for lb in fleet.lbs}
    first = picks[fleet.lbs[0].role]
    agree = sum(1 for i in range(flows) if len({p[i] for p in picks.values()}) == 1 and first[i])
    per_real = {r: first.count(r) for r in sorted(set(first), key=str)}
    st.numbers.update(flows=flows, agree=agree)
    st.check(agree == flows, f"{agree} of {flows} flows: get_real_for_flow gives the same real on all "
                             f"{len(fleet.lbs)} balancers (spread {per_real})")
    names = {real_ip(i + 1): f"real{i + 1}" for i in range(len(fleet.reals))}
    seen = {r.name: set(r.log.http) for r in fleet.reals}
    matched = 0
    for i in range(0, flows, max(1, flows // connect))[:connect]:
        answer = http_from(fleet.client, VIP1, sports[i])
        want = names.get(first[i])
        if answer == want and (CLIENT_IP, sports[i]) in set(fleet.reals[int(want[4:]) - 1].log.http) - seen[want]:
            matched += 1
    n = len(range(0, flows, max(1, flows // connect))[:connect])
    st.numbers["connected_match"] = matched
    st.check(matched == n, f"{matched} of {n} real connections answered by, and seen on, the predicted real")
    return st


def step_lose(fleet: Fleet, sessions: Sessions, victim: Balancer, settle: float = 3.0) -> StepResult:
    """(3) a balancer is lost mid-transfer: its routes go, the sessions keep going."""
    st = StepResult(f"3. {victim.role} lost mid-transfer")
    others = [lb for lb in fleet.lbs if lb is not victim]
    before = {lb.role: fleet.vip_packets(lb) for lb in others}
    sessions.reset_stall()
    time.sleep(0.5)
    t0 = time.monotonic()
    fleet.lose(victim)
    fleet.wait_nexthops(VIP1, [lb_ip(lb.n) for lb in others], 10)
    detect = time.monotonic() - t0
    time.sleep(settle)
    after = {lb.role: fleet.vip_packets(lb) for lb in others}
    broken = len(sessions.broken)
    st.numbers.update(failover=detect, broken=broken, sessions=len(sessions.sessions), stall=sessions.longest_stall)
    st.check(True, f"router dropped {victim.role}'s next hop {detect:.3f} s after the loss")
    st.check(all(after[k] > before[k] for k in after), f"echo packets on the survivors during the loss: "
                                                        f"{ {k: after[k] - before[k] for k in after} }")
    st.check(broken == 0, f"broken sessions: {broken} of {len(sessions.sessions)}"
                          + (f" ({next(iter(sessions.broken.values()))})" if broken else ""))
    st.check(sessions.longest_stall < 5.0, f"longest stall: {sessions.longest_stall:.3f} s")
    return st


def step_back(fleet: Fleet, sessions: Sessions, lb: Balancer, settle: float = 2.0) -> StepResult:
    """(4) the lost balancer comes back: ECMP rehashes onto it, nothing breaks."""
    st = StepResult(f"4. {lb.role} back")
    broken0 = len(sessions.broken)
    sessions.reset_stall()
    t0 = time.monotonic()
    fleet.restore(lb)
    fleet.wait_nexthops(VIP1, [lb_ip(b.n) for b in fleet.lbs], 30)
    took = time.monotonic() - t0
    p0 = fleet.vip_packets(lb)
    time.sleep(settle)
    moved = fleet.vip_packets(lb) - p0
    broken = len(sessions.broken) - broken0
    st.numbers.update(back=took, broken=broken, stall=sessions.longest_stall)
    st.check(True, f"{lb.role} announced again {took:.2f} s after its restart began")
    st.check(moved > 0, f"{moved} echo packets of the running sessions rehashed onto {lb.role}")
    st.check(broken == 0, f"broken sessions: {broken} of {len(sessions.sessions)}")
    st.check(True, f"longest stall: {sessions.longest_stall:.3f} s")
    return st


def step_drain(fleet: Fleet, sessions: Sessions, lb: Balancer) -> StepResult:
    """(5) a graceful drain: ``katran-cli -drain`` (withdraw, wait for the traffic to leave),
    ``-undrain``, then the graceful stop (SIGTERM: the same drain, then stop)."""
    st = StepResult(f"5. {lb.role} drained gracefully")
    broken0 = len(sessions.broken)
    sessions.reset_stall()
    conns = NewConnections(fleet.client)
    time.sleep(0.5)
    others = [lb_ip(b.n) for b in fleet.lbs if b is not lb]
    t0 = time.monotonic()
    res = lb.cli("-drain", "-drain_timeout", "5000")
    took = time.monotonic() - t0
    st.check(res.returncode == 0 and fleet.nexthops(VIP1) == others,
             f"katran-cli -drain: {(res.stdout.strip() or res.stderr.strip()).splitlines()[0][:120]} ({took:.2f} s); "
             f"router next hops {fleet.nexthops(VIP1)}")
    quiet = fleet.vip_packets(lb)
    time.sleep(0.5)
    st.check(fleet.vip_packets(lb) == quiet, f"no echo packets reach {lb.role} once drained")
    res = lb.cli("-undrain")
    back = fleet.wait_nexthops(VIP1, [lb_ip(b.n) for b in fleet.lbs], 10) if res.returncode == 0 else -1
    st.check(res.returncode == 0, f"katran-cli -undrain: {(res.stdout.strip() or res.stderr.strip()).splitlines()[0][:120]}; "
                                  f"announced again in {back:.2f} s")
    time.sleep(0.5)
    t0 = time.monotonic()
    assert lb.proc is not None
    lb.proc.send_signal(signal.SIGTERM)
    withdrawn = fleet.wait_nexthops(VIP1, [lb_ip(b.n) for b in fleet.lbs if b is not lb], 10)
    code = lb.stop(timeout=20)
    stopped = time.monotonic() - t0
    time.sleep(0.5)
    conns.stop()
    broken = len(sessions.broken) - broken0
    st.numbers.update(withdrawn=withdrawn, stopped=stopped, broken=broken, new_ok=conns.ok, new_failed=conns.failed,
                      stall=sessions.longest_stall)
    st.check(code == 0, f"{lb.role} withdrew in {withdrawn:.3f} s and stopped (exit {code}) after {stopped:.2f} s")
    st.check(broken == 0, f"broken sessions: {broken} of {len(sessions.sessions)}")
    st.check(conns.failed == 0, f"new connections during the drain: {conns.ok} ok, {conns.failed} failed"
                                + (f" ({conns.errors[0]})" if conns.errors else ""))
    st.check(True, f"longest stall: {sessions.longest_stall:.3f} s")
    return st


def step_unhealthy(fleet: Fleet) -> StepResult:
    """(6) every real of VIP2 fails its health check: every balancer withdraws VIP2."""
    st = StepResult(f"6. every real of {VIP2} unhealthy")
    running = [lb_ip(lb.n) for lb in fleet.lbs if lb.proc]
    before = fleet.nexthops(VIP2)
    st.check(before == running, f"before: {VIP2}/32 announced by {len(before)} of {len(running)} balancers")
    for s in fleet.hc_listeners:
        s.close()
    fleet.hc_listeners = []
    gone = fleet.wait_nexthops(VIP2, [], 20)
    kept = fleet.nexthops(VIP1)
    st.numbers["withdrawn"] = gone
    st.check(True, f"{VIP2}/32 withdrawn by all {len(kept)} balancers {gone:.2f} s after its reals failed "
                   f"(checks every 0.5 s, fall 2)")
    st.check(kept == running, f"{VIP1}/32 still has {len(kept)} next hops")
    fleet.hc_listeners = [fleet._hc_listener(r.netns) for r in fleet.reals]
    back = fleet.wait_nexthops(VIP2, running, 20)
    st.check(True, f"{VIP2}/32 announced again {back:.2f} s after its reals recovered (rise 2)")
    return st


def step_detached(fleet: Fleet, lb: Balancer) -> StepResult:
    """(extra) someone detaches a balancer's XDP program: the balancer withdraws its VIPs."""
    st = StepResult(f"7. {lb.role}'s XDP program detached by hand")
    t0 = time.monotonic()
    subprocess.run(["ip", "-n", lb.netns, "link", "set", "dev", "eth0", "xdp", "off"], check=True,
                   capture_output=True)
    others = [lb_ip(b.n) for b in fleet.lbs if b is not lb and b.proc]
    fleet.wait_nexthops(VIP1, others, 10)
    took = time.monotonic() - t0
    st.numbers["withdrawn"] = took
    st.check(took < 5.0, f"{lb.role} withdrew {VIP1} {took:.2f} s after its program was detached")
    return st


def run(spec: FleetSpec = FleetSpec(), out: Callable[[str], None] = print,
        steps: tuple = (1, 2, 3, 4, 5, 6)) -> list[StepResult]:
    """Build the fleet, run ``steps``, print each, tear down; returns the results."""
    fleet = Fleet(spec)
    results: list[StepResult] = []
    t_build = time.monotonic()
    fleet.up()
    out(f"fleet {spec.prefix}: router + {spec.n_lbs} balancers + {spec.n_reals} reals up in "
        f"{time.monotonic() - t_build:.1f} s; {VIP1} and {VIP2} via {fleet.nexthops(VIP1)}")
    sessions = None
    try:
        def report(st: StepResult) -> None:
            results.append(st)
            out(f"[{'PASS' if st.ok else 'FAIL'}] {st.name}")
            for line in st.lines:
                out(f"    {line}")

        if 1 in steps:
            report(step_spread(fleet))
        if 2 in steps:
            report(step_same_real(fleet, spec.flows))
        victim = fleet.lbs[-1]
        if {3, 4, 5} & set(steps):
            sessions = Sessions(fleet.client, spec.sessions)
            out(f"    {spec.sessions} echo sessions open, on reals "
                f"{ {r: sessions.reals.count(r) for r in sorted(set(sessions.reals))} }")
        if 3 in steps:
            report(step_lose(fleet, sessions, victim))
        if 4 in steps:
            report(step_back(fleet, sessions, victim))
        if 5 in steps:
            drained = fleet.lbs[0]
            report(step_drain(fleet, sessions, drained))
            if 6 in steps:
                drained.start()
                fleet.wait_nexthops(VIP1, [lb_ip(b.n) for b in fleet.lbs if b.proc], 30)
        if sessions is not None:
            sessions.stop()
            sessions = None
        if 6 in steps:
            report(step_unhealthy(fleet))
        if 7 in steps:
            report(step_detached(fleet, fleet.lbs[-1]))
    finally:
        if sessions is not None:
            sessions.stop()
        fleet.down()
    passed = sum(1 for r in results if r.ok)
    out(f"fleet: {passed} of {len(results)} steps passed")
    return results
