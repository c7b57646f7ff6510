"""Active health checks: probe each VIP on each real, drain on failure, restore on recovery.

Built on the seed's mechanism: a probe is sent *to the VIP* from a socket whose ``SO_MARK``
is the somark mapped to one real, so the healthcheck forwarding program encapsulates it
toward that real exactly like client traffic, and the real's decap and stack answer as they
would answer a client. A check therefore tests the VIP, on that real, through the same
encapsulation. The checker allocates the somarks and programs the healthcheck destinations
itself. When healthcheck forwarding is off, it probes the real's own address instead and
says so in the state (``mode="real"``).

Checks: TCP connect, HTTP / HTTPS request (expected status, optional body substring, Host
header), UDP request/response and DNS (a query, answered with the same id). Per VIP
defaults, per real overrides; interval, timeout, rise, fall, jitter.

Actions go through :class:`~katran.lb.KatranLb`: after ``fall`` failures a real is drained
(weight 0: new flows avoid it, the connection table keeps the rest) or removed; after
``rise`` successes its weight returns. When every real of a VIP is down the VIP fails open
(the reals stay) unless ``all_down="drop"``. Probes run on one asyncio loop with bounded
concurrency. Reals start healthy: starting (or restarting) the checker disturbs nothing.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import socket
import ssl
import struct
import threading
import time
from typing import Callable, Optional

import attrs

from .errors import ValidationError
from .models import IPAddress, ModifyAction, Real, VipKey, check_int, parse_address

log = logging.getLogger("katran.hc")
_timeout = getattr(asyncio, "timeout", None)

CHECK_TYPES = ("tcp", "http", "https", "udp", "dns")
ACTIONS = ("drain", "remove")
ALL_DOWN = ("fail_open", "drop")
# somarks the checker allocates: one per real address, from this base up
SOMARK_BASE = 0x4B480000
SOMARK_SPAN = 1 << 16


def _positive_float(field: str):
    def convert(value):
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ValidationError(field, value, "expected a number of seconds") from None
        if not f > 0:
            raise ValidationError(field, value, "must be > 0")
        return f

    return convert


def _choice(field: str, choices):
    def convert(value):
        if value not in choices:
            raise ValidationError(field, value, f"expected one of {', '.join(choices)}")
        return value

    return convert


def _opt_port(value):
    return None if value is None else check_int(value, "check.port", 1, 65535)


@attrs.frozen(kw_only=True)
class CheckSpec:
    """One check: what to send, how often, and when a real changes state."""

    type: str = attrs.field(default="tcp", converter=_choice("check.type", CHECK_TYPES))
    port: Optional[int] = attrs.field(default=None, converter=_opt_port)  # None: the VIP's port
    interval: float = attrs.field(default=2.0, converter=_positive_float("check.interval"))
    timeout: float = attrs.field(default=1.0, converter=_positive_float("check.timeout"))
    rise: int = attrs.field(default=2, converter=lambda v: check_int(v, "check.rise", 1, 1000))
    fall: int = attrs.field(default=3, converter=lambda v: check_int(v, "check.fall", 1, 1000))
    jitter: float = attrs.field(default=0.1, converter=lambda v: _fraction(v, "check.jitter"))
    # http / https
    path: str = "/"
    host: Optional[str] = None
    expect_status: int = attrs.field(default=200, converter=lambda v: check_int(v, "check.expect_status", 100, 599))
    body_contains: Optional[str] = None
    tls_verify: bool = False
    # udp: the request and (optionally) the reply it must start with
    send: bytes = attrs.field(default=b"", converter=lambda v: v.encode() if isinstance(v, str) else bytes(v))
    expect: bytes = attrs.field(default=b"", converter=lambda v: v.encode() if isinstance(v, str) else bytes(v))
    # dns
    query: str = "health.check."

    def __attrs_post_init__(self) -> None:
        if self.timeout > self.interval:
            raise ValidationError("check.timeout", self.timeout, f"longer than the interval ({self.interval} s)")


CHECK_FIELDS = tuple(a.name for a in attrs.fields(CheckSpec))


@attrs.frozen(kw_only=True)
class HcConfig:
    """The health checks of a configuration: per VIP, per real overrides, and what a verdict does."""

    checks: dict = attrs.field(factory=dict)  # VipKey -> CheckSpec
    overrides: dict = attrs.field(factory=dict)  # (VipKey, real address) -> CheckSpec
    action: str = attrs.field(default="drain", converter=lambda v: _choice("action", ACTIONS)(v))
    all_down: str = attrs.field(default="fail_open", converter=lambda v: _choice("all_down", ALL_DOWN)(v))
    concurrency: int = attrs.field(default=256, converter=lambda v: check_int(v, "concurrency", 1, 1 << 16))


def _fraction(value, field: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValidationError(field, value, "expected a fraction of the interval in [0, 1)") from None
    if not 0 <= f < 1:
        raise ValidationError(field, value, "expected a fraction of the interval in [0, 1)")
    return f


class Health(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@attrs.define
class CheckState:
    """What the checker knows of one real of one VIP (a copy is handed out)."""

    vip: VipKey
    real: IPAddress
    spec: CheckSpec
    mode: str  # "vip": through the VIP with the real's somark; "real": the real's own address
    somark: int = 0
    health: Health = Health.HEALTHY
    last_ok: Optional[bool] = None
    last_reason: str = "not checked yet"
    last_latency: float = 0.0
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    checks: int = 0
    transitions: int = 0
    since: float = attrs.field(factory=time.time)
    applied: bool = False  # the drain/remove is in effect in the balancer
    weight: int = 1  # the configured weight to restore
    flags: int = 0

    @property
    def healthy(self) -> bool:
        return self.health is Health.HEALTHY


@attrs.frozen
class Transition:
    vip: VipKey
    real: IPAddress
    health: Health
    reason: str
    at: float


class ProbeFailed(Exception):
    """A probe's result: why the check failed (the text goes into the state and the log)."""


# ----------------------------------------------------------------------------- probes
def _dns_query(qname: str, qid: int) -> bytes:
    labels = [p for p in qname.rstrip(".").split(".") if p]
    q = b"".join(struct.pack("B", len(p)) + p.encode("ascii") for p in labels) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)


def _check_dns_reply(reply: bytes, qid: int) -> None:
    if len(reply) < 12:
        raise ProbeFailed(f"dns: short reply ({len(reply)} bytes)")
    rid, flags = struct.unpack("!HH", reply[:4])
    if rid != qid:
        raise ProbeFailed(f"dns: reply id {rid} != query id {qid}")
    if not flags & 0x8000:
        raise ProbeFailed("dns: not a response")
    if flags & 0x000F not in (0, 3):  # NOERROR or NXDOMAIN: the server answers
        raise ProbeFailed(f"dns: rcode {flags & 0xF}")


def _socket(family: int, kind: int, somark: int, src: Optional[str]) -> socket.socket:
    s = socket.socket(family, kind)
    s.setblocking(False)
    try:
        if somark:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, somark)
        if src:
            s.bind((src, 0))
    except OSError:
        s.close()
        raise
    return s


async def probe(spec: CheckSpec, target: IPAddress, port: int, somark: int = 0,
                src: Optional[str] = None) -> float:
    """Run one check against ``target``:``port`` (marked ``somark``); the latency, or ProbeFailed."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if target.version == 6 else socket.AF_INET
    addr = (str(target), port)
    start = time.perf_counter()
    kind = socket.SOCK_DGRAM if spec.type in ("udp", "dns") else socket.SOCK_STREAM
    try:
        sock = _socket(family, kind, somark, src)
    except OSError as exc:
        raise ProbeFailed(f"socket: {exc.strerror or exc}") from None
    async def exchange() -> None:
        if kind == socket.SOCK_DGRAM:
            await loop.sock_connect(sock, addr)
            if spec.type == "dns":
                qid = random.randrange(1, 65536)
                await loop.sock_sendall(sock, _dns_query(spec.query, qid))
                _check_dns_reply(await loop.sock_recv(sock, 4096), qid)
            else:
                await loop.sock_sendall(sock, spec.send or b"\n")
                reply = await loop.sock_recv(sock, 65535)
                if spec.expect and not reply.startswith(spec.expect):
                    raise ProbeFailed(f"udp: unexpected reply {reply[:32]!r}")
        else:
            await loop.sock_connect(sock, addr)
            if spec.type in ("http", "https"):
                await _http(spec, sock, target)

    try:
        if _timeout is not None:  # Python 3.11+: no extra task per probe
            async with _timeout(spec.timeout):
                await exchange()
        else:  # pragma: no cover - older Pythons
            await asyncio.wait_for(exchange(), spec.timeout)
    except asyncio.TimeoutError:
        raise ProbeFailed(f"timeout after {spec.timeout:g} s") from None
    except ConnectionRefusedError:
        raise ProbeFailed("connection refused") from None
    except ssl.SSLError as exc:
        raise ProbeFailed(f"tls: {exc.reason or exc}") from None
    except OSError as exc:
        raise ProbeFailed(f"{exc.strerror or exc}") from None
    finally:
        sock.close()
    return time.perf_counter() - start


async def _http(spec: CheckSpec, sock: socket.socket, target: IPAddress) -> None:
    host = spec.host or (f"[{target}]" if target.version == 6 else str(target))
    request = (f"GET {spec.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: katran-hc\r\n"
               f"Connection: close\r\n\r\n").encode("ascii", "replace")
    ctx = None
    if spec.type == "https":
        ctx = ssl.create_default_context()
        if not spec.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=ctx, server_hostname=(spec.host or str(target)) if ctx else None)
    try:
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.decode("latin-1").split()
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ProbeFailed(f"http: bad status line {status_line[:60]!r}")
        if int(parts[1]) != spec.expect_status:
            raise ProbeFailed(f"http: status {parts[1]}, expected {spec.expect_status}")
        if spec.body_contains is not None:
            body = b""
            while len(body) < (1 << 16):  # headers and body up to 64 KiB, until the server closes
                chunk = await reader.read((1 << 16) - len(body))
                if not chunk:
                    break
                body += chunk
                if spec.body_contains.encode() in body:
                    break
            if spec.body_contains.encode() not in body:
                raise ProbeFailed(f"http: body lacks {spec.body_contains[:40]!r}")
    finally:
        writer.close()


# ----------------------------------------------------------------------------- the checker
class HcChecker:
    """Runs the checks of a KatranLb's VIPs and applies their verdicts to it.

    ``checks``: VIP -> CheckSpec (the VIPs to check; their reals are read from the lb);
    ``overrides``: (VIP, real address) -> CheckSpec. ``through_vip``: probe the VIP with
    the real's somark (needs healthcheck forwarding, ``KatranConfig.enable_hc``); default:
    when the lb has it. ``clock``/``prober`` are injectable for tests.
    """

    def __init__(self, lb, checks: dict, overrides: Optional[dict] = None, *, action: str = "drain",
                 all_down: str = "fail_open", concurrency: int = 256, through_vip: Optional[bool] = None,
                 src_v4: Optional[str] = None, src_v6: Optional[str] = None,
                 on_transition: Optional[Callable[[Transition], None]] = None,
                 prober: Callable = probe) -> None:
        self.lb = lb
        self.action = _choice("action", ACTIONS)(action)
        self.all_down = _choice("all_down", ALL_DOWN)(all_down)
        self.concurrency = check_int(concurrency, "concurrency", 1, 1 << 16)
        self.checks = {self._vip(v): s for v, s in checks.items()}
        self.overrides = {(self._vip(v), parse_address(a, "real")): s for (v, a), s in (overrides or {}).items()}
        for spec in (*self.checks.values(), *self.overrides.values()):
            if not isinstance(spec, CheckSpec):
                raise ValidationError("check", spec, "expected a katran.hc_checker.CheckSpec")
        self.through_vip = bool(lb.config.enable_hc) if through_vip is None else bool(through_vip)
        self.src = {4: src_v4, 6: src_v6}
        self.on_transition = on_transition
        self.prober = prober
        self._states: dict[tuple, CheckState] = {}
        self._somarks: dict[IPAddress, int] = {}
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._stop: Optional[asyncio.Event] = None
        self.transitions: list[Transition] = []

    @classmethod
    def from_config(cls, lb, config: "HcConfig", **kw) -> "HcChecker":
        """A checker for the ``healthchecks`` of a declarative configuration."""
        return cls(lb, config.checks, config.overrides, action=config.action, all_down=config.all_down,
                   concurrency=config.concurrency, **kw)

    def config(self) -> "HcConfig":
        return HcConfig(checks=dict(self.checks), overrides=dict(self.overrides), action=self.action,
                        all_down=self.all_down, concurrency=self.concurrency)

    def reconfigure(self, config: "HcConfig") -> None:
        """New checks (SIGHUP): states of reals still checked are kept; others are restored and dropped."""
        with self._lock:
            self.checks = {self._vip(v): s for v, s in config.checks.items()}
            self.overrides = dict(config.overrides)
            self.all_down = config.all_down
            self.concurrency = config.concurrency
            for key, st in list(self._states.items()):
                if key[0] not in self.checks:
                    st.health = Health.HEALTHY
                    self._reconcile(key[0])
                    del self._states[key]
                else:
                    st.spec = self.overrides.get(key, self.checks[key[0]])
        self.sync()

    @staticmethod
    def _vip(vip) -> VipKey:
        if not isinstance(vip, VipKey):
            raise ValidationError("vip", vip, "expected a katran.VipKey")
        return vip

    # -- targets ----------------------------------------------------------------------------
    def _somark(self, real: IPAddress) -> int:
        mark = self._somarks.get(real)
        if mark is None:
            used = set(self._somarks.values())
            mark = next(m for m in range(SOMARK_BASE, SOMARK_BASE + SOMARK_SPAN) if m not in used)
            self.lb.add_healthchecker_dst(mark, str(real))
            self._somarks[real] = mark
        return mark

    def sync(self) -> None:
        """Track the lb's current reals of the checked VIPs (new reals start healthy)."""
        with self._lock:
            seen = set()
            for vip, spec in self.checks.items():
                for r in self.lb.get_reals_for_vip(vip):
                    key = (vip, r.address)
                    seen.add(key)
                    st = self._states.get(key)
                    if st is None:
                        st = CheckState(vip=vip, real=r.address, spec=self.overrides.get(key, spec),
                                        mode="vip" if self.through_vip else "real", weight=r.weight, flags=r.flags)
                        if self.through_vip:
                            st.somark = self._somark(r.address)
                        self._states[key] = st
                    elif not st.applied:
                        st.weight, st.flags = r.weight, r.flags  # the operator's weight
            # a removed real is absent while it is unhealthy; any other absent real is gone
            for key in [k for k, st in self._states.items()
                        if k not in seen and not (st.applied and self.action == "remove")]:
                del self._states[key]
            for real in [a for a in self._somarks if not any(k[1] == a for k in self._states)]:
                try:
                    self.lb.del_healthchecker_dst(self._somarks[real])
                except Exception:  # noqa: BLE001 - the mapping may be gone with its real
                    log.debug("hc: somark of %s already gone", real)
                del self._somarks[real]

    def states(self) -> list[CheckState]:
        with self._lock:
            return [attrs.evolve(st) for st in self._states.values()]

    # -- one check --------------------------------------------------------------------------
    async def check_once(self, key: tuple) -> None:
        st = self._states[key]
        vip, real = key
        port = st.spec.port or vip.port
        if st.mode == "vip":
            target, mark = vip.address, st.somark
        else:
            target, mark = real, 0
        try:
            latency = await self.prober(st.spec, target, port, mark, self.src[target.version])
            self._record(key, True, "ok", latency)
        except ProbeFailed as exc:
            self._record(key, False, str(exc), 0.0)
        except Exception as exc:  # noqa: BLE001 - a bug in a probe must not stop the checker
            self._record(key, False, f"probe error: {exc!r}"[:200], 0.0)

    def _record(self, key: tuple, ok: bool, reason: str, latency: float) -> None:
        with self._lock:
            st = self._states.get(key)
            if st is None:
                return
            st.checks += 1
            st.last_ok, st.last_reason, st.last_latency = ok, reason, latency
            if ok:
                st.successes, st.failures = st.successes + 1, 0
                if st.health is Health.UNHEALTHY and st.successes >= st.spec.rise:
                    self._transition(st, Health.HEALTHY, f"{st.successes} successes")
            else:
                st.failures, st.successes = st.failures + 1, 0
                if st.health is Health.HEALTHY and st.failures >= st.spec.fall:
                    self._transition(st, Health.UNHEALTHY, f"{st.failures} failures ({reason})")
            self._reconcile(st.vip)

    def _transition(self, st: CheckState, health: Health, reason: str) -> None:
        st.health, st.since, st.transitions = health, time.time(), st.transitions + 1
        t = Transition(st.vip, st.real, health, reason, st.since)
        self.transitions.append(t)
        log.warning("hc: real %s of vip %s is %s after %s (mode %s)", st.real, st.vip,
                    "DOWN" if health is Health.UNHEALTHY else "UP", reason, st.mode)
        if self.on_transition is not None:
            self.on_transition(t)

    def _reconcile(self, vip: VipKey) -> None:
        """Make the balancer match the health of ``vip``'s reals (fail open when all are down)."""
        group = [st for (v, _), st in self._states.items() if v == vip]
        all_down = group and all(not st.healthy for st in group)
        for st in group:
            want = not st.healthy and not (all_down and self.all_down == "fail_open")
            if want == st.applied:
                continue
            try:
                if want:
                    if self.action == "drain":
                        self.lb.modify_reals_for_vip(ModifyAction.ADD, [Real(st.real, 0, st.flags)], vip)
                    else:
                        self.lb.modify_reals_for_vip(ModifyAction.DEL, [Real(st.real)], vip)
                else:
                    self.lb.modify_reals_for_vip(ModifyAction.ADD, [Real(st.real, st.weight, st.flags)], vip)
                st.applied = want
                log.info("hc: %s real %s of vip %s%s", ("drained" if self.action == "drain" else "removed")
                         if want else "restored", st.real, vip, "" if want else f" (weight {st.weight})")
            except Exception as exc:  # noqa: BLE001 - logged; retried at the next result
                log.error("hc: could not %s real %s of vip %s: %s", "drain" if want else "restore", st.real, vip, exc)

    # -- the loop ---------------------------------------------------------------------------
    async def _run_one(self, key: tuple, sem: asyncio.Semaphore) -> None:
        st = self._states[key]
        await asyncio.sleep(random.uniform(0, st.spec.interval))  # spread the first round
        while not self._stop.is_set() and key in self._states:
            spec = self._states[key].spec
            started = time.monotonic()
            async with sem:
                await self.check_once(key)
            delay = spec.interval * (1 + random.uniform(-spec.jitter, spec.jitter)) - (time.monotonic() - started)
            try:
                await asyncio.wait_for(self._stop.wait(), max(0.0, delay))
            except asyncio.TimeoutError:
                pass

    async def run(self, resync: float = 1.0) -> None:
        """Check until :meth:`stop`; picks up reals added to or removed from the VIPs."""
        self._stop = asyncio.Event()
        sem = asyncio.Semaphore(self.concurrency)
        tasks: dict[tuple, asyncio.Task] = {}
        try:
            while not self._stop.is_set():
                self.sync()
                for key in list(self._states):
                    if key not in tasks or tasks[key].done():
                        tasks[key] = asyncio.create_task(self._run_one(key, sem))
                try:
                    await asyncio.wait_for(self._stop.wait(), resync)
                except asyncio.TimeoutError:
                    pass
        finally:
            for t in tasks.values():
                t.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    def start(self) -> "HcChecker":
        """Run in a background thread with its own event loop."""
        ready = threading.Event()

        def main():
            self._loop = asyncio.new_event_loop()
            self._stop = asyncio.Event()
            self._loop.call_soon(ready.set)
            try:
                self._loop.run_until_complete(self.run())
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=main, name="katran-hc", daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self, restore: bool = True) -> None:
        """Stop checking; ``restore`` puts drained/removed reals back (the checker no longer judges them)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if restore:
            with self._lock:
                for st in self._states.values():
                    st.health = Health.HEALTHY
                for vip in {v for v, _ in self._states}:
                    self._reconcile(vip)
