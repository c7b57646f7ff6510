"""--version / -version on every command: one version source, katran.__version__."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest

import katran

COMMANDS = ["katran-server-grpc", "katran-server-thrift", "katran-cli", "katran-xdp-root", "katran-decap",
            "katran-preflight", "katran-lab", "katran-build-bpf", "katran-teardown"]


def test_package_metadata_reads_the_one_version_source():
    assert importlib.metadata.version("katran") == katran.__version__


def test_every_entry_point_is_covered():
    scripts = {e.name for e in importlib.metadata.distribution("katran").entry_points if e.group == "console_scripts"}
    assert scripts == set(COMMANDS)


@pytest.mark.parametrize("spelling", ["--version", "-version"])
@pytest.mark.parametrize("command", COMMANDS)
def test_version_flag(command, spelling):
    exe = os.path.join(os.path.dirname(sys.executable), command)
    out = subprocess.run([exe, spelling], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{command} {katran.__version__}\n"
    assert out.stderr == ""
