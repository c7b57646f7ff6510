"""Suite-wide policy.

With ``CI`` set (``CI=true bash .ci/run``) nothing skips silently: a test that would skip
fails instead, naming the reason, so a missing BPF object, fixture set, code generator or
kernel feature turns CI red. The one skip allowed is a kernel module this kind of machine
cannot load; such a test calls :func:`skip_kernel_module`, which names the module.
Outside CI a skip stays a skip and its reason says how to fix it.
"""

from __future__ import annotations

import os

import pytest

KERNEL_MODULE_SKIP = "kernel module unavailable: "


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_kernel_module(module: str, detail: str = "") -> None:
    """Skip because ``module`` cannot be loaded on this machine (the one skip CI allows)."""
    pytest.skip(f"{KERNEL_MODULE_SKIP}{module}" + (f" ({detail})" if detail else ""))


def _skip_reason(longrepr) -> str:
    # a skip's longrepr is (path, lineno, "Skipped: reason")
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_skip(rep) -> None:
    reason = _skip_reason(rep.longrepr)
    if reason.startswith(KERNEL_MODULE_SKIP):
        return
    rep.outcome = "failed"
    rep.longrepr = f"CI=true: a skip is a failure in CI: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if in_ci() and rep.skipped and not hasattr(rep, "wasxfail"):
        _fail_skip(rep)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    if in_ci() and rep.skipped:
        _fail_skip(rep)


# ------------------------------------------------------------------ privileges
# Tests that need root (BPF syscalls, XDP/tc attach, network namespaces) carry
# ``@pytest.mark.privileged`` (a whole file: ``pytestmark``).  A fixture that needs root
# is decorated with ``@privileged_fixture`` (the line below ``@pytest.fixture``) or listed
# in PRIVILEGED_FIXTURES; every test using it is marked too.  Not root: those tests skip,
# saying so (with CI set that skip is a failure, like any other).
# ``pytest -m "not privileged"`` runs the rest, which passes as any user.
PRIVILEGED_SKIP = "needs root (BPF, XDP/tc attach or network namespaces): run the suite as root"


def is_root() -> bool:
    return os.geteuid() == 0


def privileged_fixture(fn):
    """Mark a fixture function as needing root; apply it under ``@pytest.fixture``."""
    fn._katran_privileged = True
    return fn


# fixtures (per test module) that need root: a KatranLb on the real kernel, network namespaces
PRIVILEGED_FIXTURES = {
    "test_cli": {"lb", "feat_lb"},
    "test_grpc_frontend": {"lb", "feat_lb"},
    "test_thrift_frontend": {"lb"},
    "test_bgp": {"fleet"},
    "test_auth": {"lb"},
    "test_grpc_limits": {"lb"},
    "test_thrift_transport": {"lb"},
    "test_lb": {"lb"},
}


def _privileged(fd) -> bool:
    func = fd.func
    if getattr(func, "_katran_privileged", False):
        return True
    return fd.argname in PRIVILEGED_FIXTURES.get(getattr(func, "__module__", ""), ())


def _uses_privileged_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(_privileged(fd) for defs in info.name2fixturedefs.values() for fd in defs)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("privileged") is None and _uses_privileged_fixture(item):
            item.add_marker(pytest.mark.privileged)
        if item.get_closest_marker("privileged") is not None and not is_root():
            item.add_marker(pytest.mark.skip(reason=PRIVILEGED_SKIP))


# ------------------------------------------------------------------ shared fixtures
MAC = "00:00:de:ad:be:af"  # the gateway MAC of Katran's fixtures and tester


def lb_config(**kw):
    """A KatranConfig for tests: testing mode (nothing attached), the fixtures' MAC, no per-CPU LRUs."""
    from katran import KatranConfig

    kw.setdefault("testing", True)
    kw.setdefault("default_mac", MAC)
    kw.setdefault("forwarding_cores", ())
    return KatranConfig(**kw)


@pytest.fixture
def fake_kernel():
    """A dict-backed kernel (katran.testing.FakeKernel): no privileges needed."""
    from katran.testing import FakeKernel

    return FakeKernel()


@pytest.fixture
def fake_lb(fake_kernel):
    """A started KatranLb on the fake kernel: 8 VIPs, 16 reals, a small ring."""
    from katran import KatranLb

    with KatranLb(lb_config(max_vips=8, max_reals=16, ch_ring_size=13), kernel=fake_kernel) as lb:
        yield lb


def start_grpc_server(tmp_path, *flags: str, timeout: float = 60.0):
    """``katran-server-grpc -testing`` on a unix socket in ``tmp_path``, started and serving:
    (address, process, log path). The caller stops it (``stop_server``)."""
    import subprocess
    import sys
    import time

    sock = tmp_path / "grpc.sock"
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "katran_grpc.server", "-testing", f"-server=unix:{sock}",
                                 "-max_vips=8", "-max_reals=16", "-lru_size=1000", "-shutdown_delay=0", *flags],
                                stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while "Server listening" not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"katran-server-grpc did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    return f"unix:{sock}", proc, log_path


def stop_server(proc) -> None:
    proc.terminate()
    proc.wait(20)
