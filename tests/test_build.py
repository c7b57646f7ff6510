"""The BPF objects build from kernel uapi headers, libbpf and clang alone, and a failed
build fails loudly (issue: a fresh machine must install, or say exactly what is missing)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from katran import build

ROOT = Path(__file__).resolve().parent.parent

# The packages the BPF C may read headers from (clang's own headers ship in libclang-common-*).
ALLOWED_PACKAGES = {"libbpf-dev", "linux-libc-dev"}


def _owner_packages(paths: list[Path]) -> dict[Path, str]:
    res = subprocess.run(["dpkg", "-S", *map(str, paths)], capture_output=True, text=True)
    owners = {}
    for line in res.stdout.splitlines():
        pkgs, _, path = line.partition(": ")
        owners[Path(path)] = pkgs.split(",")[0].split(":")[0].strip()
    return owners


@pytest.mark.parametrize("src", build.sources(), ids=lambda p: p.name)
def test_bpf_headers_come_from_kernel_libbpf_and_clang_only(src):
    clang = build.find_clang()
    deps = build.header_dependencies(src, clang)
    outside = [d for d in deps if build.BPF_DIR not in d.parents]
    assert outside, "clang -M listed no system header at all"
    # /usr/include/linux may be reached through a symlinked path: dpkg -S knows the real one
    owners = _owner_packages([d.resolve() for d in outside])
    bad = {str(d): owners.get(d.resolve(), "no package") for d in outside
           if not (owners.get(d.resolve(), "") in ALLOWED_PACKAGES
                   or owners.get(d.resolve(), "").startswith("libclang-common-"))}
    assert bad == {}, f"{src.name} reads headers outside {sorted(ALLOWED_PACKAGES)} + clang: {bad}"


def test_missing_header_names_the_package(tmp_path):
    src = tmp_path / "broken.bpf.c"
    src.write_text("#include <linux/bpf.h>\n#include <bpf/no_such_helpers.h>\nint x;\n")
    with pytest.raises(build.BuildError) as err:
        build.compile_one(src, tmp_path / "obj", build.find_clang())
    text = str(err.value)
    assert str(src) in text and "<bpf/no_such_helpers.h>" in text and "libbpf-dev" in text


def test_glibc_header_is_named_as_forbidden():
    stderr = ("In file included from x.bpf.c:3:\n"
              "/usr/include/x86_64-linux-gnu/gnu/stubs.h:7:11: fatal error: 'gnu/stubs-32.h' file not found\n")
    text = build.explain_clang_failure(Path("x.bpf.c"), stderr)
    assert "<gnu/stubs-32.h>" in text and "glibc header" in text and "must not include" in text


def test_missing_clang_is_a_build_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(build.BuildError, match="clang.*Debian packages: clang llvm libbpf-dev linux-libc-dev"):
        build.build_all()


@pytest.mark.slow
def test_failed_bpf_compile_fails_pip_install(tmp_path):
    """A package build of a tree whose BPF C is broken exits non-zero with one clear line."""
    tree = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    for name in ("setup.py", "katran/build.py"):  # the working copy's build hooks
        shutil.copy2(ROOT / name, tree / name)
    (tree / "katran/bpf/xdp_pass.bpf.c").write_text("#include <bpf/katran_missing.h>\n")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
         str(tmp_path / "wheels"), str(tree)],
        capture_output=True, text=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert res.returncode != 0
    assert not any((tmp_path / "wheels").glob("*.whl"))
    lines = [ln.strip() for ln in (res.stdout + res.stderr).splitlines() if "katran: BPF build failed" in ln]
    assert lines, res.stdout + res.stderr
    assert "xdp_pass.bpf.c" in lines[0] and "<bpf/katran_missing.h>" in lines[0] and "libbpf-dev" in lines[0]


def test_ci_turns_skips_into_failures(tmp_path):
    """tests/conftest.py: with CI set a skip fails, except a named kernel module."""
    shutil.copy2(Path(__file__).parent / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_policy.py").write_text(
        "import pytest\nfrom conftest import skip_kernel_module\n"
        "def test_plain_skip():\n    pytest.skip('katran/bpf/obj not built')\n"
        "def test_module_skip():\n    skip_kernel_module('ipip')\n"
        "def test_ok():\n    pass\n")

    def run(ci: str):
        env = {k: v for k, v in os.environ.items() if k != "CI"}
        if ci:
            env["CI"] = ci
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
                              capture_output=True, text=True, cwd=tmp_path, env=env)

    ci = run("true")
    assert ci.returncode == 1
    assert "1 failed, 1 passed, 1 skipped" in ci.stdout
    assert "CI=true: a skip is a failure in CI: katran/bpf/obj not built" in ci.stdout
    local = run("")
    assert local.returncode == 0 and "1 passed, 2 skipped" in local.stdout
