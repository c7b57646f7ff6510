"""The real kernel facade (katran.adapter.kernel.RealKernel): the parts the fake stands in for."""

from __future__ import annotations

import fcntl
import os

import pytest

from katran import shared
from katran.kernel import Kernel, default_kernel

pytestmark = pytest.mark.privileged


def test_default_kernel_is_the_real_one():
    k = default_kernel()
    assert isinstance(k, Kernel) and type(k).__name__ == "RealKernel" and default_kernel() is k


def test_lock_is_an_exclusive_flock(tmp_path):
    k = default_kernel()
    with k.lock(tmp_path):
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
    finally:
        os.close(fd)


def test_the_loaded_root_program_reports_its_version():
    k = default_kernel()
    spec = k.open_object(shared.DEFAULT_OBJECT)
    try:
        obj = spec.load()
    finally:
        spec.close()
    try:
        prog = obj.program(shared.ROOT_PROG_NAME)
        assert shared.root_version(prog, k) == (shared.ROOT_MAGIC, shared.ROOT_VERSION)
        shared.check_root(prog, "test", k)
    finally:
        obj.close()


def test_a_program_without_marker_is_refused():
    k = default_kernel()
    spec = k.open_object(shared.DEFAULT_OBJECT.parent / "xdp_pass.bpf.o")
    try:
        obj = spec.load()
    finally:
        spec.close()
    try:
        with pytest.raises(Exception, match="no katran version marker"):
            shared.check_root(obj.program("xdp_pass"), "test", k)
    finally:
        obj.close()


def test_pin_dir_helpers(tmp_path):
    k = default_kernel()
    d = tmp_path / "pins"
    assert not k.remove_pin_dir(d)
    k.make_pin_dir(d)
    (d / "x").write_text("")
    assert k.is_pinned(d / "x") and k.remove_pin_dir(d) and not d.exists()
