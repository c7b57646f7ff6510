"""A balancer object as the releases before BPF_F_MMAPABLE on ch_rings built it: the sources
of katran/bpf copied to a temp dir, the flag taken out of maps.h, compiled with katran.build's
clang command.  For the tests of the batch-write path (an older ch_rings adopted or reused by
an upgrade).  Import the fixture: ``from unflagged import unflagged_balancer``."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import pytest

from katran import build

FLAG_LINE = "\t__uint(map_flags, BPF_F_MMAPABLE);\n"


@functools.lru_cache(maxsize=None)
def build_unflagged() -> Path:
    """Compiled once per test session (in a temp dir removed at exit)."""
    import atexit

    tmp = Path(tempfile.mkdtemp(prefix="katran-unflagged-"))
    atexit.register(shutil.rmtree, tmp, True)
    src = tmp / "bpf"
    shutil.copytree(build.BPF_DIR, src, ignore=shutil.ignore_patterns("obj"))
    maps_h = src / "maps.h"
    text = maps_h.read_text()
    ch_rings = text.index("} ch_rings SEC")
    flag = text.rindex(FLAG_LINE, 0, ch_rings)
    assert text.rfind("struct {", 0, ch_rings) < flag, "the flag is not in ch_rings' definition"
    maps_h.write_text(text[:flag] + text[flag + len(FLAG_LINE):])
    return build.compile_one(src / "balancer.bpf.c", tmp / "obj", build.find_clang())


@pytest.fixture(scope="session")
def unflagged_balancer() -> Path:
    path = build_unflagged()
    from katran.adapter import bpf

    with bpf.ObjectSpec.open(path) as spec:
        assert spec.map_def("ch_rings")["flags"] & bpf.BPF_F_MMAPABLE == 0
    return path
