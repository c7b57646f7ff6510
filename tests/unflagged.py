"""Balancer objects as older builds made them (``build_variant``: an edited copy of katran/bpf).
``unflagged_balancer``: as the releases before BPF_F_MMAPABLE on ch_rings built it, the flag
taken out of maps.h.  For the tests of the batch-write path (an older ch_rings adopted or reused by
an upgrade).  Import the fixture: ``from unflagged import unflagged_balancer``."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import pytest

from katran import build

FLAG_LINE = "\t__uint(map_flags, BPF_F_MMAPABLE);\n"


def build_variant(edit: Callable[[Path], None], out: Optional[Path] = None) -> Path:
    """The balancer built from an edited copy of katran/bpf: ``edit(src_dir)`` changes the
    copy, katran.build's clang command compiles it into ``out`` (default: a temp dir removed
    at exit). For objects as older builds made them."""
    import atexit

    if out is None:
        out = Path(tempfile.mkdtemp(prefix="katran-variant-"))
        atexit.register(shutil.rmtree, out, True)
    src = out / "bpf"
    shutil.copytree(build.BPF_DIR, src, ignore=shutil.ignore_patterns("obj"))
    edit(src)
    return build.compile_one(src / "balancer.bpf.c", out / "obj", build.find_clang())


def _drop_mmapable_flag(src: Path) -> None:
    maps_h = src / "maps.h"
    text = maps_h.read_text()
    ch_rings = text.index("} ch_rings SEC")
    flag = text.rindex(FLAG_LINE, 0, ch_rings)
    assert text.rfind("struct {", 0, ch_rings) < flag, "the flag is not in ch_rings' definition"
    maps_h.write_text(text[:flag] + text[flag + len(FLAG_LINE):])


@functools.lru_cache(maxsize=None)
def build_unflagged() -> Path:
    """Compiled once per test session (in a temp dir removed at exit)."""
    return build_variant(_drop_mmapable_flag)


@pytest.fixture(scope="session")
def unflagged_balancer() -> Path:
    path = build_unflagged()
    from katran.adapter import bpf

    with bpf.ObjectSpec.open(path) as spec:
        assert spec.map_def("ch_rings")["flags"] & bpf.BPF_F_MMAPABLE == 0
    return path
