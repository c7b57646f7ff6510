"""VIP route announcement through a real BGP daemon (BIRD 2): the fleet's way to scale out.

Every balancer announces its VIPs' host routes (/32, /128) to the routers, which spread
flows over the balancers by ECMP; since every balancer computes the same Maglev ring a flow
that moves to another balancer still reaches the same real. We do not speak BGP ourselves:
the announcer runs (or drives) a BIRD 2 instance. BIRD is chosen over GoBGP, FRR and
ExaBGP because it has BFD built in (sub-second failure detection, which GoBGP lacks), ECMP
on the router side (``merge paths``), a one-file configuration, and a control socket whose
``configure`` re-reads the routes in milliseconds without resetting sessions (docs/fleet.md).

The policy lives here, in the control plane: an address is announced while the data plane
is attached and at least one VIP on it has ``min_healthy`` healthy reals (from the health
checks); otherwise it is withdrawn. :meth:`Announcer.drain` withdraws everything first and
waits for the VIP traffic to leave. The routes BIRD exports are exactly the lines of one
include file, rewritten atomically before each ``birdc configure``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import attrs

from .errors import KatranError, ValidationError
from .models import IPAddress, VipKey, check_int, parse_address

log = logging.getLogger("katran.bgp")


class BgpError(KatranError):
    """The BGP daemon could not be started, configured or reached."""


def _addr(field: str):
    return lambda v: parse_address(v, field)


def _community(value: object) -> tuple:
    text = str(value)
    parts = text.split(":")
    if len(parts) != 2 or not all(p.isdigit() and int(p) <= 65535 for p in parts):
        raise ValidationError("bgp.communities", value, "expected ASN:VALUE with both parts in [0, 65535]")
    return (int(parts[0]), int(parts[1]))


def _state_dir(value: object) -> str:
    text = str(value)
    if not text.startswith("/") or len(text) > 200 or any(c in text for c in '"\\\n;'):
        raise ValidationError("bgp.state_dir", value, "expected an absolute path (no quotes, ';' or newlines)")
    return text


@attrs.frozen(kw_only=True)
class BgpPeer:
    address: IPAddress = attrs.field(converter=_addr("bgp.peers.address"))
    asn: int = attrs.field(converter=lambda v: check_int(v, "bgp.peers.asn", 1, 2**32 - 1))


@attrs.frozen(kw_only=True)
class BgpConfig:
    """The ``bgp`` section of the declarative file."""

    router_id: IPAddress = attrs.field(converter=_addr("bgp.router_id"))
    local_as: int = attrs.field(converter=lambda v: check_int(v, "bgp.local_as", 1, 2**32 - 1))
    peers: tuple = attrs.field(converter=tuple)
    local_address: Optional[IPAddress] = attrs.field(
        default=None, converter=lambda v: None if v is None else parse_address(v, "bgp.local_address"))
    communities: tuple = attrs.field(default=(), converter=lambda v: tuple(_community(c) for c in v))
    min_healthy: int = attrs.field(default=1, converter=lambda v: check_int(v, "bgp.min_healthy", 0, 1 << 24))
    bfd: bool = True
    bfd_interval_ms: int = attrs.field(default=100, converter=lambda v: check_int(v, "bgp.bfd_interval_ms", 10, 10000))
    bfd_multiplier: int = attrs.field(default=3, converter=lambda v: check_int(v, "bgp.bfd_multiplier", 1, 255))
    hold_time: int = attrs.field(default=3, converter=lambda v: check_int(v, "bgp.hold_time", 3, 65535))
    keepalive_time: int = attrs.field(default=1, converter=lambda v: check_int(v, "bgp.keepalive_time", 1, 21845))
    # where the balancer's BIRD keeps its config, control socket and pid (None: the daemon's default)
    state_dir: Optional[str] = attrs.field(default=None, converter=lambda v: None if v is None else _state_dir(v))

    def __attrs_post_init__(self) -> None:
        if not self.peers:
            raise ValidationError("bgp.peers", [], "at least one peer is needed")
        for p in self.peers:
            if not isinstance(p, BgpPeer):
                raise ValidationError("bgp.peers", p, "expected a BgpPeer")
        if self.keepalive_time * 3 > self.hold_time:
            raise ValidationError("bgp.keepalive_time", self.keepalive_time, f"more than hold_time/3 ({self.hold_time})")


def _prefix(addr: IPAddress) -> str:
    return f"{addr}/{addr.max_prefixlen}"


def speaker_config(cfg: BgpConfig, routes_file: Path) -> str:
    """BIRD 2 configuration of a balancer's speaker: static VIP routes exported to the peers."""
    comm = "".join(f" bgp_community.add(({a},{b}));" for a, b in cfg.communities)
    lines = [
        "# katran: BGP speaker for the VIPs of this balancer (generated; do not edit)",
        f"router id {cfg.router_id};",
        "protocol device {}",
        "",
        # BIRD reads `include` only at the start of a line
        "protocol static katran_vips4 {", "  ipv4;", f'  include "{routes_file}.v4";', "}",
        "protocol static katran_vips6 {", "  ipv6;", f'  include "{routes_file}.v6";', "}",
        "",
        "filter katran_export {",
        f'  if proto = "katran_vips4" || proto = "katran_vips6" then {{{comm} accept; }}',
        "  reject;",
        "}",
    ]
    if cfg.bfd:
        lines += ["", "protocol bfd {",
                  f'  interface "*" {{ min rx interval {cfg.bfd_interval_ms} ms; '
                  f"min tx interval {cfg.bfd_interval_ms} ms; multiplier {cfg.bfd_multiplier}; }};",
                  "}"]
    for i, peer in enumerate(cfg.peers):
        local = f" {cfg.local_address}" if cfg.local_address is not None else ""
        fam = "ipv4" if peer.address.version == 4 else "ipv6"
        lines += [
            "",
            f"protocol bgp peer{i} {{",
            f"  local{local} as {cfg.local_as};",
            f"  neighbor {peer.address} as {peer.asn};",
            f"  hold time {cfg.hold_time}; keepalive time {cfg.keepalive_time}; connect retry time 1;",
            "  error wait time 1, 5;",
            *(["  bfd on;"] if cfg.bfd else []),
            f"  {fam} {{ import none; export filter katran_export; }};",  # v6 VIPs go to v6 peers
            "}",
        ]
    return "\n".join(lines) + "\n"


class Bird:
    """One BIRD process of ours: config file, control socket, pid; started in a netns if asked."""

    def __init__(self, directory: os.PathLike, netns: Optional[str] = None, name: str = "bird") -> None:
        self.dir = Path(directory)
        self.netns = netns
        self.name = name
        self.config = self.dir / f"{name}.conf"
        self.socket = self.dir / f"{name}.ctl"
        self.pidfile = self.dir / f"{name}.pid"
        self.proc: Optional[subprocess.Popen] = None

    def _prefix(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}"] if self.netns else []

    def _exe(self, name: str) -> str:
        exe = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
        if exe is None:
            raise BgpError(f"{name} not found: install BIRD 2 (Debian package bird2)")
        return exe

    def write_config(self, text: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.config, text)

    def start(self, timeout: float = 10.0) -> None:
        cmd = [*self._prefix(), self._exe("bird"), "-f", "-c", str(self.config), "-s", str(self.socket),
               "-P", str(self.pidfile)]
        check = subprocess.run([self._exe("bird"), "-p", "-c", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise BgpError(f"bird rejects {self.config}: {(check.stderr or check.stdout).strip()[:400]}")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BgpError(f"bird exited with {self.proc.returncode}: {self.proc.stderr.read().strip()[:400]}")
            if self.socket.exists() and self.ctl("show status", check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise BgpError(f"bird did not open {self.socket} within {timeout} s")

    def ctl(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([self._exe("birdc"), "-s", str(self.socket), *command.split()],
                             capture_output=True, text=True, timeout=30)
        if check and (res.returncode != 0 or "syntax error" in res.stdout.lower() or res.stdout.lstrip().startswith(
                ("Unable", "Error"))):
            raise BgpError(f"birdc {command}: {(res.stdout + res.stderr).strip()[:400]}")
        return res

    def configure(self) -> None:
        out = self.ctl("configure").stdout
        if "Reconfigured" not in out and "Reconfiguration in progress" not in out and "unchanged" not in out:
            raise BgpError(f"birdc configure: {out.strip()[:400]}")

    def established(self) -> dict[str, bool]:
        """BGP protocol name -> session established."""
        out = self.ctl("show protocols", check=False).stdout
        states = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 6 and parts[1] == "BGP":
                states[parts[0]] = "Established" in line
        return states

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """As a crash does: no withdrawal sent (the peers notice through BFD / the hold timer)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


def _atomic_write(path: Path, text: str) -> None:
    from .state import write_file_atomic

    write_file_atomic(path, text.encode(), 0o644, what="write bird file")


class Announcer:
    """Keeps BIRD's exported VIP routes equal to the policy, for one balancer.

    ``healthy_reals(vip)`` returns how many reals of the VIP are healthy (the health
    checker's view; default: every real of the lb); ``attached()`` tells whether the data
    plane forwards (default: the lb's own view).
    """

    def __init__(self, lb, cfg: BgpConfig, bird: Bird, *, healthy_reals: Optional[Callable[[VipKey], int]] = None,
                 attached: Optional[Callable[[], bool]] = None) -> None:
        self.lb = lb
        self.cfg = cfg
        self.bird = bird
        self.routes_file = bird.dir / "katran-vips.conf"
        self.healthy_reals = healthy_reals or (lambda vip: sum(1 for r in lb.get_reals_for_vip(vip) if r.weight > 0))
        self.attached = attached or (lambda: True)
        self.announced: frozenset = frozenset()
        self.draining = False
        self._lock = threading.RLock()  # the daemon's tick, drains and RPCs update from several threads

    def start(self) -> None:
        self.bird.dir.mkdir(parents=True, exist_ok=True)
        self._write_routes(frozenset())
        self.bird.write_config(speaker_config(self.cfg, self.routes_file))
        self.bird.start()
        self.update()

    def wanted(self) -> frozenset:
        if self.draining or not self.attached():
            return frozenset()
        out = set()
        for vip in self.lb.get_all_vips():
            if self.healthy_reals(vip) >= self.cfg.min_healthy and (self.cfg.min_healthy > 0
                                                                     or self.lb.get_reals_for_vip(vip)):
                out.add(vip.address)
        return frozenset(out)

    def _write_routes(self, addrs: Iterable[IPAddress]) -> None:
        for version in (4, 6):
            lines = [f"route {_prefix(a)} blackhole;" for a in sorted(a for a in addrs if a.version == version)]
            _atomic_write(Path(f"{self.routes_file}.v{version}"), "\n".join(lines) + "\n")

    def update(self) -> tuple[frozenset, frozenset]:
        """Announce / withdraw to match the policy; returns (announced, withdrawn) addresses."""
        with self._lock:
            return self._update()

    def _update(self) -> tuple[frozenset, frozenset]:
        want = self.wanted()
        if want == self.announced:
            return frozenset(), frozenset()
        added, removed = want - self.announced, self.announced - want
        self._write_routes(want)
        self.bird.configure()
        self.announced = want
        for a in sorted(added, key=lambda a: (a.version, a)):
            log.info("bgp: announce %s", _prefix(a))
        for a in sorted(removed, key=lambda a: (a.version, a)):
            log.warning("bgp: withdraw %s", _prefix(a))
        return frozenset(added), frozenset(removed)

    def drain(self, traffic: Optional[Callable[[], int]] = None, quiet_for: float = 1.0,
              timeout: float = 30.0) -> float:
        """Withdraw everything, then wait until ``traffic()`` (a packet counter) stops moving
        for ``quiet_for`` seconds (or ``timeout``); returns the seconds waited."""
        self.draining = True
        self.update()
        start = time.monotonic()
        if traffic is None:
            return 0.0
        last, still_since = traffic(), time.monotonic()
        while time.monotonic() - start < timeout:
            time.sleep(0.1)
            now = traffic()
            if now != last:
                last, still_since = now, time.monotonic()
            elif time.monotonic() - still_since >= quiet_for:
                break
        return time.monotonic() - start

    def reconfigure(self, cfg: BgpConfig) -> None:
        """A new configuration for the running BIRD (``birdc configure``: BIRD restarts only the
        sessions whose settings changed; a changed filter, e.g. communities, re-exports in place)."""
        with self._lock:
            self.bird.write_config(speaker_config(cfg, self.routes_file))
            self.bird.configure()
            self.cfg = cfg
            self._update()

    def undrain(self) -> None:
        self.draining = False
        self.update()

    def stop(self, withdraw: bool = True) -> None:
        if withdraw and self.announced:
            self.draining = True
            try:
                self.update()
            except BgpError as exc:
                log.error("bgp: withdraw on stop failed: %s", exc)
        self.bird.stop()


def router_config(router_id: str, local_as: int, peers: Iterable[tuple[str, int]], bfd: bool = True,
                  bfd_interval_ms: int = 100, hold_time: int = 3) -> str:
    """A BIRD 2 router for the lab and tests: learns the VIP routes, installs them with ECMP."""
    peers = list(peers)
    lines = [
        f"router id {router_id};",
        "protocol device {}",
        "protocol kernel kernel4 { ipv4 { import none; export all; }; merge paths on; }",
        "protocol kernel kernel6 { ipv6 { import none; export all; }; merge paths on; }",
    ]
    if bfd:
        lines.append(f'protocol bfd {{ interface "*" {{ min rx interval {bfd_interval_ms} ms; '
                     f"min tx interval {bfd_interval_ms} ms; multiplier 3; }}; }}")
    for i, (addr, asn) in enumerate(peers):
        fam = "ipv4" if ipaddress.ip_address(addr).version == 4 else "ipv6"
        lines.append(
            f"protocol bgp lb{i} {{ local as {local_as}; neighbor {addr} as {asn}; "
            f"hold time {hold_time}; keepalive time 1; connect retry time 1; error wait time 1, 5; "
            f"{'bfd on; ' if bfd else ''}{fam} {{ import all; export none; }}; }}")
    return "\n".join(lines) + "\n"
