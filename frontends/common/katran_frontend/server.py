"""One server lifecycle for katran's RPC servers.

``run(transport, argv)``: parse the flags (``server_flags`` plus the transport's
own) -> ``KatranConfig`` -> the transport's checks -> ``KatranLb`` -> bind the
transport's server -> ``lb.start()`` -> serve -> on SIGINT/SIGTERM stop serving
(with ``-shutdown_delay``) -> ``lb.close()``.  ``-config FILE`` (a declarative file,
``katran.declarative``) is applied after the start and re-read on SIGHUP (``katran.daemon``).  A start-up failure prints one
line (``<prog>: error: ...``, naming the flag of a bad config value), releases
what was made and returns 1; bad flags print the usage and return 2.

A transport (``katran_grpc.server.GRPC``, ``katran_thrift.server.THRIFT``) is a
``Transport``: its program name and default address, its extra flags, a check of
them before anything starts, and ``bind(lb, ns, prepared)`` returning a
``Serving`` (start, stop with a delay, abort).  No RPC library is imported here.
"""

from __future__ import annotations

import abc
import collections
import logging
import os
import select
import signal
import sys
import time
from typing import Any, Optional, Sequence

from katran.errors import KatranError

from .goflags import FlagSet
from .server_flags import (add_server_flags, config_from_flags, config_from_flags_and_file, error_line,
                           parse_server_flags)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # katran.logs.TEXT_FORMAT
WATCH_INTERVAL = 1.0  # seconds between two checks that our XDP program is still attached


class StartupError(Exception):
    """The server cannot start (bad transport flag, address in use, not root, ...)."""


class SignalInbox:
    """The signals the main loop acts on, delivered without a lock.

    A Python signal handler runs in the main thread between two bytecodes, possibly while
    that thread holds a lock: a ``threading.Event``'s own while it returns from ``wait``
    (``Event.set`` from the handler then waits for it forever: SIGTERM hung the server),
    a stream's while a log record is written (a write from the handler raises there). So
    the handler only appends the signal's number to a deque and writes a byte to a pipe;
    ``wait`` sleeps on the pipe and hands the loop the signals received, which it logs
    and acts on. ``close`` puts the previous handlers back.
    """

    def __init__(self, signums: Sequence[int]) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)  # a full pipe already means "wake up"
        self._pending: collections.deque = collections.deque()
        self._old = {}
        try:
            for signum in signums:
                self._old[signum] = signal.signal(signum, self._on_signal)
        except BaseException:
            self.close()
            raise

    def _on_signal(self, signum: int, _frame) -> None:
        self._pending.append(signum)
        try:
            os.write(self._w, b"\0")
        except OSError:
            pass

    def wait(self, timeout: float) -> list[int]:
        """The signals received since the last call, oldest first; waits up to ``timeout``
        seconds for one when there are none."""
        if not self._pending:
            select.select([self._r], [], [], max(0.0, timeout))
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass
        out = []
        while self._pending:
            out.append(self._pending.popleft())
        return out

    def close(self) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        self._old = {}
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._r = self._w = -1


class Serving(abc.ABC):
    """A bound server of one transport (its port is taken; nothing served yet)."""

    #: the bound address as printed in "Server listening on <address>"
    address: str

    @abc.abstractmethod
    def start(self) -> None:
        """Serve in the background."""

    @abc.abstractmethod
    def stop(self, delay_ms: int) -> None:
        """Graceful stop after a signal; returns once nothing is served any more."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Release the port after a failed start (``start`` may not have been called)."""

    def set_daemon(self, daemon) -> None:
        """The server's Daemon (katran.daemon), for RPCs that reach it (drain, health check states);
        default: none do."""

    def alive(self) -> bool:
        """False once the server ended by itself (the lifecycle then shuts down)."""
        return True

    def set_serving(self, serving: bool) -> None:
        """Report the data plane's state (health SERVING / NOT_SERVING) where the transport can."""


class Transport(abc.ABC):
    """The transport-specific part of a server: flags, checks, binding."""

    prog: str
    summary: str
    default_server: str
    server_help: str
    #: log Katran's "Starting Katran" line before ``lb.start()``
    log_starting: bool = False
    #: the TCP port of the examples in ``-help``
    example_port: int = 50051
    #: the ``frontend`` label of the RPC metrics
    frontend: str = ""

    def build_flags(self) -> FlagSet:
        """The shared server flags, then the transport's own (``add_flags``)."""
        fs = FlagSet(self.prog, self.summary)
        add_server_flags(fs, self.default_server, self.server_help)
        self.add_flags(fs)
        fs.examples = (f"Examples:\n"
                       f"  {self.prog} -intf=eth0 -default_mac=auto -forwarding_cores=auto\n"
                       f"  {self.prog} -intf=eth0 -default_mac=auto -config /etc/katran/katran.yaml"
                       f"   (declarative file, SIGHUP re-reads it)\n"
                       f"  {self.prog} --flagfile=/etc/katran/flags -server 0.0.0.0:{self.example_port}"
                       f" -token_file /etc/katran/token\n"
                       f"  {self.prog} -testing -hc_forwarding=false -default_mac=02:00:00:00:00:01"
                       f"   (load without attaching)\n")
        return fs

    def add_flags(self, fs: FlagSet) -> None:
        """Add the transport's own flags (after the shared ones)."""

    def prepare(self, ns) -> Any:
        """Check the transport's flags before anything starts; the result goes to ``bind``.

        Raises ``ValidationError`` / ``StartupError``.
        """
        return None

    @abc.abstractmethod
    def bind(self, lb, ns, prepared: Any, rpc_metrics=None) -> Serving:
        """A server over ``lb`` bound to ``-server`` (``StartupError`` / ``OSError`` if it cannot).

        ``rpc_metrics`` (a ``katran.metrics.RpcMetrics``, with ``-metrics_addr``): record
        every RPC in it.
        """


def run(transport: Transport, argv: Optional[Sequence[str]] = None) -> int:
    """A server's ``main``: returns the exit status."""
    prog = transport.prog
    log = logging.getLogger(type(transport).__module__)  # katran_grpc.server, katran_thrift.server
    ns, status = parse_server_flags(transport.build_flags(), sys.argv[1:] if argv is None else argv, prog)
    if ns is None:
        return status

    from katran import logs

    try:
        handler = logs.setup(ns.log_format, ns.log_level)
    except KatranError as exc:
        print(error_line(prog, exc), file=sys.stderr)
        return 2
    try:
        return _serve(transport, ns, log)
    finally:
        logs.remove(handler)  # a server run in-process (tests) leaves no handler behind


def _serve(transport: Transport, ns, log: logging.Logger) -> int:
    # from before the start: a SIGTERM while the data plane loads stops the server right
    # after it, through the same steps, instead of killing the process halfway
    inbox = SignalInbox((signal.SIGINT, signal.SIGTERM, signal.SIGHUP))
    try:
        return _start_and_serve(transport, ns, log, inbox)
    finally:
        inbox.close()


def _start_and_serve(transport: Transport, ns, log: logging.Logger, inbox: SignalInbox) -> int:
    prog = transport.prog
    from katran import logs
    from katran.lb import KatranLb  # heavy import (cffi, libbpf) only once the flags are fine

    from katran.daemon import Daemon
    from katran.host.capabilities import require_capabilities
    from katran.watch import AttachmentWatch

    lb = None
    daemon = None
    serving: Optional[Serving] = None
    metrics = None
    try:
        desired = Daemon.read(ns.config) if ns.config else None
        config = config_from_flags(ns) if desired is None else config_from_flags_and_file(ns, desired)
        prepared = transport.prepare(ns)
        if ns.metrics_addr:
            from katran.metrics import parse_metrics_addr

            parse_metrics_addr(ns.metrics_addr)  # a bad value fails before anything is loaded
        missing = require_capabilities(config)
        if missing:
            raise StartupError(missing)
        lb = KatranLb(config)
        daemon = Daemon(lb, ns.config or None, desired)
        daemon.drain_timeout = max(0, ns.drain_timeout) / 1000.0
        if ns.metrics_addr:
            from katran.metrics import MetricsEndpoint

            metrics = MetricsEndpoint(lb, ns.metrics_addr, transport.frontend or prog)
            metrics.add_hc_checker(lambda: daemon.checker)  # the file's health checks, when it has some
        serving = transport.bind(lb, ns, prepared, rpc_metrics=metrics.rpc if metrics else None)
        serving.set_daemon(daemon)
        if transport.log_starting:
            log.info("Starting Katran")
        lb.start()
        logs.log_startup_summary(lb, log)
        daemon.start()
        if metrics is not None:
            metrics.start()
        serving.start()
    except (KatranError, StartupError, OSError) as exc:
        if metrics is not None:
            metrics.stop()
        if serving is not None:
            serving.abort()
        if daemon is not None:
            daemon.close()
        if lb is not None:
            try:
                # an adopted data plane stays as it was: a failed start detaches nothing it did not attach
                lb.close(keep=lb.adopted)
            except KatranError:
                pass
        print(error_line(prog, exc), file=sys.stderr)
        return 1

    print(f"Server listening on {serving.address}", flush=True)
    if metrics is not None:
        print(f"Metrics on {metrics.url}", flush=True)
    stopping = False
    status = 0
    watch = AttachmentWatch(lb)
    next_check = 0.0
    try:
        while True:
            reload = False
            for signum in inbox.wait(min(0.5, next_check - time.monotonic())):
                if signum == signal.SIGHUP:
                    reload = True
                elif not stopping:
                    log.info("Signal %d, stopping service in %d milliseconds.", signum, ns.shutdown_delay)
                    stopping = True
            if stopping:
                break
            if reload:
                log.info("Signal %d: re-reading %s", signal.SIGHUP, ns.config or "(no -config)")
                daemon.reload()
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + WATCH_INTERVAL
                changed = watch.poll()
                if changed is not None:
                    serving.set_serving(changed.attached)
            if not serving.alive():
                log.error("%s: the server ended by itself", prog)
                status = 1
                break
        if stopping:
            daemon.drain()  # bgp: withdraw first, wait for the traffic to leave
        serving.stop(ns.shutdown_delay)
    finally:
        for signum in inbox.wait(0):  # what came while the service stopped
            if signum != signal.SIGHUP:
                log.info("Ignoring signal %d: shutdown already scheduled", signum)
        if metrics is not None:
            metrics.stop()
        log.info("Stopping Katran!")
        daemon.close()
        try:
            # SIGTERM/SIGINT: a restart-friendly stop (the data plane keeps forwarding, the
            # next start adopts it) unless -teardown_on_exit or there is nothing to adopt
            keep = lb.persisting and not ns.teardown_on_exit
            if keep:
                log.info("leaving the data plane attached and pinned (state file %s)", lb.state_path)
            lb.close(keep=keep)
        except KatranError as exc:
            print(error_line(prog, exc), file=sys.stderr)
            status = 1
    return status
