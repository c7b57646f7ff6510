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
