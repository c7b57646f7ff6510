#!/usr/bin/env python3
"""Regenerate the committed gRPC stubs of katran_grpc from its .proto files.

    python frontends/grpc/regen.py            # rewrite katran_grpc/*_pb2*.py(i)
    python frontends/grpc/regen.py --out DIR  # write them to DIR instead

Uses grpcio-tools' bundled protoc, then rewrites the generated top-level
imports (``import katran_pb2``) into package-relative ones so that
``katran_grpc`` works as a normal package.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_DIR = HERE / "katran_grpc"
PROTO_DIR = PACKAGE_DIR / "protos"
PROTOS = ("katran.proto", "katran_ext.proto")

_TOP_IMPORT = re.compile(r"^import (katran\w*_pb2) as ", re.MULTILINE)


def generated_names() -> list[str]:
    """File names regen writes, for every proto."""
    names = []
    for proto in PROTOS:
        stem = proto[: -len(".proto")]
        names += [f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"]
    return names


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on PROTOS into out_dir and fix the imports; returns the files."""
    from grpc_tools import protoc  # dev dependency only
    import importlib.resources

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *PROTOS,
        ]
        # protoc resolves the proto names relative to -I; run from there.
        cwd = os.getcwd()
        os.chdir(PROTO_DIR)
        try:
            rc = protoc.main(args)
        finally:
            os.chdir(cwd)
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        written = []
        for name in generated_names():
            text = (Path(tmp) / name).read_text()
            text = _TOP_IMPORT.sub(r"from . import \1 as ", text)
            target = out_dir / name
            target.write_text(text)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR, help="output directory")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
