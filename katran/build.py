"""Compile the BPF C sources in katran/bpf/ into katran/bpf/obj/*.bpf.o with clang.

Run by the package build (``pip install .`` / ``pip install -e .``) and by hand with
``python -m katran.build``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent / "bpf"
OBJ_DIR = BPF_DIR / "obj"


def _multiarch_include() -> list[str]:
    # <asm/types.h> lives in /usr/include/<triplet> on Debian
    try:
        triplet = subprocess.run(
            ["gcc", "-print-multiarch"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        triplet = ""
    inc = Path("/usr/include") / triplet if triplet else None
    return [f"-I{inc}"] if inc and inc.is_dir() else []


def sources(src_dir: Path = BPF_DIR) -> list[Path]:
    return sorted(src_dir.glob("*.bpf.c"))


def compile_one(src: Path, out_dir: Path = OBJ_DIR, clang: str = "clang") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / (src.name[: -len(".c")] + ".o")
    cmd = [
        clang, "-O2", "-g", "-target", "bpf", "-std=gnu11",
        "-Wall", "-Werror", "-Wno-unused-function", "-Wno-compare-distinct-pointer-types",
        f"-I{src.parent}", *_multiarch_include(),
        "-c", str(src), "-o", str(out),
    ]
    subprocess.run(cmd, check=True)
    return out


def build_all(out_dir: Path = OBJ_DIR, quiet: bool = False) -> list[Path]:
    clang = shutil.which("clang")
    if clang is None:
        raise SystemExit(
            "katran: clang is needed to build the BPF programs (apt-get install clang llvm libbpf-dev)"
        )
    built = []
    for src in sources():
        built.append(compile_one(src, out_dir, clang))
        if not quiet:
            print(f"built {built[-1]}", file=sys.stderr)
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OBJ_DIR)
    args = parser.parse_args(argv)
    build_all(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
