"""The servers' signals (katran_frontend.server.SignalInbox): SIGTERM stops a server every time,
also right after "Server listening" (a handler that set a threading.Event hung the thrift server
in about one stop of three: the Event's lock was held by the main thread the handler interrupted)
and while it is still starting (queued, then the same clean stop instead of a killed process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from katran_frontend.server import SignalInbox

MODULES = {"grpc": "katran_grpc.server", "thrift": "katran_thrift.server"}


def test_inbox_hands_over_the_signals_in_order_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGUSR2)
    inbox = SignalInbox((signal.SIGUSR1, signal.SIGUSR2))
    try:
        assert signal.getsignal(signal.SIGUSR1) != before[0]
        t = time.monotonic()
        assert inbox.wait(0.05) == [] and time.monotonic() - t >= 0.04  # none: waits the timeout
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert inbox.wait(5) == [signal.SIGUSR2, signal.SIGUSR1, signal.SIGUSR2]
        assert inbox.wait(0) == []
    finally:
        inbox.close()
    assert (signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGUSR2)) == before


def test_a_signal_wakes_a_waiting_loop_from_another_thread():
    inbox = SignalInbox((signal.SIGUSR1,))
    try:
        timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
        timer.start()
        t = time.monotonic()
        got = inbox.wait(10)
        timer.join()
        assert got == [signal.SIGUSR1] and time.monotonic() - t < 5
    finally:
        inbox.close()


def _start(frontend: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", MODULES[frontend], "-testing", "-server=127.0.0.1:0", "-insecure",
                             "-shutdown_delay=0", "-hc_forwarding=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def _stopped(proc: subprocess.Popen) -> tuple[str, str]:
    """(the rest of stdout, stderr) of a server that exited 0 after a clean stop."""
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"no exit 20 s after SIGTERM; stderr:\n{err}")
    assert proc.returncode == 0, err
    assert "Signal 15, stopping service in 0 milliseconds." in err and "Stopping Katran!" in err, err
    return out, err


@pytest.mark.privileged
@pytest.mark.parametrize("frontend", sorted(MODULES))
def test_sigterm_right_after_listening_stops_the_server_every_time(frontend):
    for _ in range(10):
        proc = _start(frontend)
        try:
            assert proc.stdout.readline().startswith("Server listening on")
            proc.terminate()
        except BaseException:
            proc.kill()
            raise
        _stopped(proc)


@pytest.mark.privileged
@pytest.mark.parametrize("frontend", sorted(MODULES))
def test_sigterm_while_starting_is_a_clean_stop_after_the_start(frontend):
    proc = _start(frontend)
    try:
        # the data plane is loaded, the server not yet listening: the default action killed it here
        line = proc.stderr.readline()
        while line and "Katran started on" not in line:
            line = proc.stderr.readline()
        assert line, "no start line"
        proc.terminate()
    except BaseException:
        proc.kill()
        raise
    out, err = _stopped(proc)
    assert out.startswith("Server listening on")
    assert "Ignoring signal" not in err
