"""Compile the BPF C sources in katran/bpf/ into katran/bpf/obj/*.bpf.o with clang.

Run by the package build (``pip install .`` / ``pip install -e .``, as the ``build_bpf``
step) and by hand with ``python -m katran.build``.  A failure raises :class:`BuildError`
with one message naming the file, the missing header or tool, and the Debian package
that provides it; the package build turns it into a failed install.

The BPF programs build from the kernel's uapi headers (linux-libc-dev), libbpf's
headers (libbpf-dev) and clang's own (stdbool.h) only: no glibc header, since with
``-target bpf`` glibc reaches for the 32-bit ``gnu/stubs-32.h``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent / "bpf"
OBJ_DIR = BPF_DIR / "obj"

# The Debian packages the BPF build needs, and what each provides.
BPF_BUILD_PACKAGES = {
    "clang": "the clang compiler (BPF target)",
    "llvm": "llvm-strip / llvm-objdump",
    "libbpf-dev": "<bpf/bpf_helpers.h>, <bpf/bpf_endian.h>",
    "linux-libc-dev": "the kernel uapi headers <linux/*.h>, <asm/*.h>",
}

# header path prefix -> the Debian package that ships it
_HEADER_PACKAGES = (
    ("bpf/", "libbpf-dev"),
    ("linux/", "linux-libc-dev"),
    ("asm/", "linux-libc-dev"),
    ("asm-generic/", "linux-libc-dev"),
)


class BuildError(Exception):
    """A BPF or native build step failed; the message says what to install or fix."""


def header_package(header: str) -> str:
    """The Debian package that provides ``header`` (as written in an #include)."""
    if header.startswith("gnu/") or header.startswith("sys/") or header.startswith("bits/"):
        return ("none: it is a glibc header, which BPF C must not include "
                "(include only <linux/...> uapi headers that do not pull libc, or declare it in katran/bpf/lib/)")
    for prefix, package in _HEADER_PACKAGES:
        if header.startswith(prefix):
            return package
    return "unknown (not a header the BPF programs may use)"


_MISSING_HEADER = re.compile(r"^(?P<file>[^:\n]+):\d+:\d+: fatal error: '(?P<header>[^']+)' file not found", re.M)


def explain_clang_failure(src: Path, stderr: str) -> str:
    """One message for a failed BPF compile: the file, the missing header and its package."""
    m = _MISSING_HEADER.search(stderr)
    if m:
        header = m.group("header")
        return (f"cannot compile {src}: header <{header}> not found (included from {m.group('file')}); "
                f"Debian package: {header_package(header)}")
    first = next((ln for ln in stderr.splitlines() if "error" in ln), stderr.strip()[:500])
    return f"cannot compile {src}: {first.strip()}"


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


def find_clang() -> str:
    clang = shutil.which("clang")
    if clang is None:
        raise BuildError("clang is needed to build the BPF programs in katran/bpf/: "
                         "Debian packages: clang llvm libbpf-dev linux-libc-dev (or run scripts/setup.sh)")
    return clang


def clang_command(src: Path, clang: str = "clang") -> list[str]:
    """The compile command of one BPF program, without its output arguments."""
    return [
        clang, "-O2", "-g", "-target", "bpf", "-std=gnu11",
        "-Wall", "-Werror", "-Wno-unused-function", "-Wno-compare-distinct-pointer-types",
        f"-I{src.parent}", *_multiarch_include(),
    ]


def header_dependencies(src: Path, clang: str = "clang") -> list[Path]:
    """Every header the compile of ``src`` reads (``clang -M``), resolved."""
    res = subprocess.run([*clang_command(src, clang), "-M", str(src)], capture_output=True, text=True)
    if res.returncode != 0:
        raise BuildError(explain_clang_failure(src, res.stderr))
    words = res.stdout.replace("\\\n", " ").split()
    return sorted({Path(w).resolve() for w in words[1:] if w != str(src)})


def compile_one(src: Path, out_dir: Path = OBJ_DIR, clang: str = "clang") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / (src.name[: -len(".c")] + ".o")
    cmd = [*clang_command(src, clang), "-c", str(src), "-o", str(out)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise BuildError(f"cannot run {clang}: {exc.strerror}; Debian package: clang") from None
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise BuildError(explain_clang_failure(src, res.stderr))
    return out


def git_revision(rev: str, repo: Path, what: str) -> str:
    """The commit `rev` names in the git repository `repo` (full hash); BuildError naming
    `what` (the caller's name for the revision) if none."""
    res = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", "--end-of-options",
                          f"{rev}^{{commit}}"], capture_output=True, text=True)
    if res.returncode != 0 or not res.stdout.strip():
        raise BuildError(f"{what}: not a revision of the repository {repo}")
    return res.stdout.strip()


def build_revision(rev: str, out_dir: Path, repo: Path, what: str = "") -> Path:
    """The balancer object of git revision `rev` of `repo`, built into `out_dir`: its
    katran/bpf tree (git archive) compiled with compile_one (clang's output kept out of
    stderr). For timing and upgrading to/from older builds. BuildError messages start with
    `what` (default: the revision) and the commit."""
    import contextlib
    import io
    import tarfile

    what = what or repr(rev)
    sha = git_revision(rev, repo, what)
    what = f"{what} ({sha[:12]})"
    res = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", sha, "katran/bpf"],
                         capture_output=True)
    if res.returncode != 0:
        raise BuildError(f"{what}: no katran/bpf in that revision "
                         f"({res.stderr.decode(errors='replace').strip()!r})")
    src_root = out_dir / "src"
    with tarfile.open(fileobj=io.BytesIO(res.stdout)) as tar:
        tar.extractall(src_root, filter="data")
    src = src_root / "katran" / "bpf" / "balancer.bpf.c"
    if not src.is_file():
        raise BuildError(f"{what}: no katran/bpf/balancer.bpf.c in that revision")
    log = io.StringIO()
    try:
        with contextlib.redirect_stderr(log):  # compile_one prints clang's whole output
            return compile_one(src, out_dir / "obj", find_clang())
    except BuildError as exc:
        raise BuildError(f"{what}: the balancer does not compile: {exc}") from None


def build_all(out_dir: Path = OBJ_DIR, quiet: bool = False) -> list[Path]:
    clang = find_clang()
    built = []
    for src in sources():
        built.append(compile_one(src, out_dir, clang))
        if not quiet:
            print(f"built {built[-1]}", file=sys.stderr)
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="katran-build-bpf", description=__doc__.split("\n\n")[0])
    from katran import add_version_argument

    add_version_argument(parser, "katran-build-bpf")
    parser.add_argument("--out", type=Path, default=OBJ_DIR)
    args = parser.parse_args(argv)
    try:
        build_all(args.out)
    except BuildError as exc:
        print(f"katran-build-bpf: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
