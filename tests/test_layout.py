"""Package layout rules, checked on the sources (ast) and on a built wheel.

* nothing under ``katran/`` imports a frontend (katran_frontend, katran_grpc, katran_thrift);
* ``katran_grpc`` and ``katran_thrift`` do not import each other; ``katran_frontend``
  imports neither them nor an RPC library (its CLI transports are named in a registry);
* no module edits ``sys.path``;
* katran-cli starts without numpy, the native module or ``katran.lb``;
* the wheel carries the BPF objects, the lab's scripts, the frontends and the entry points.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FRONTENDS = {"katran_frontend", "katran_grpc", "katran_thrift"}
RPC_LIBS = {"grpc", "grpc_health", "grpc_reflection", "google", "thrift"}
PACKAGE_DIRS = {
    "katran": REPO / "katran",
    "katran_frontend": REPO / "frontends" / "common" / "katran_frontend",
    "katran_grpc": REPO / "frontends" / "grpc" / "katran_grpc",
    "katran_thrift": REPO / "frontends" / "thrift" / "katran_thrift",
}


def _module_name(pkg: str, path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIRS[pkg]).with_suffix("")
    parts = [pkg, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source`` of ``module``, at any depth
    (inside functions too); ``from x import y`` also yields ``x.y``."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def imports_of(pkg: str, path: Path) -> list[tuple[int, str]]:
    return imports_in(path.read_text(), _module_name(pkg, path), path.name == "__init__.py")


def sources(pkg: str) -> list[Path]:
    files = sorted(PACKAGE_DIRS[pkg].rglob("*.py"))
    assert files, pkg
    return files


def violations(pkg: str, forbidden: set[str]) -> list[str]:
    bad = []
    for path in sources(pkg):
        for line, name in imports_of(pkg, path):
            if name.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(REPO)}:{line}: {name}")
    return bad


def test_import_walker_sees_relative_and_nested_imports():
    """The walker itself: relative imports resolve, imports inside functions count."""
    src = "from . import services\nfrom ..adapter import bpf\ndef f():\n    import katran_grpc.client\n"
    names = {n for _, n in imports_in(src, "katran.lab.x")}
    assert {"katran.lab.services", "katran.adapter.bpf", "katran_grpc.client"} <= names
    assert {n for _, n in imports_in("from .goflags import FlagSet", "katran_frontend", True)} >= {
        "katran_frontend.goflags"}
    assert violations_in("def f():\n    from katran_thrift import client\n", "katran_grpc.x", {"katran_thrift"})


def violations_in(source: str, module: str, forbidden: set[str]) -> list[str]:
    return [name for _, name in imports_in(source, module) if name.split(".")[0] in forbidden]


def test_core_imports_no_frontend():
    assert violations("katran", FRONTENDS) == []


def test_frontends_do_not_import_each_other():
    assert violations("katran_grpc", {"katran_thrift"}) == []
    assert violations("katran_thrift", {"katran_grpc"}) == []


def test_frontend_core_imports_no_transport_and_no_rpc_library():
    assert violations("katran_frontend", {"katran_grpc", "katran_thrift"} | RPC_LIBS) == []


def test_both_transports_build_on_the_frontend_core():
    for pkg in ("katran_grpc", "katran_thrift"):
        used = {name for path in sources(pkg) for _, name in imports_of(pkg, path)}
        assert {"katran_frontend.client", "katran_frontend.server"} <= used, pkg


def test_no_sys_path_edits():
    bad = []
    for pkg in PACKAGE_DIRS:
        for path in sources(pkg):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                        and node.value.id == "sys"):
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert bad == []


def test_cli_transports_resolve():
    from katran_frontend import cli

    assert set(cli.TRANSPORTS) == {"grpc", "thrift"}
    for name in cli.TRANSPORTS:
        assert callable(cli.transport_factory(name))
    cli.register_transport("nowhere", "katran_no_such_module:make", "nowhere")
    try:
        with pytest.raises(Exception, match=r"pip install katran\[nowhere\]"):
            cli.transport_factory("nowhere")
    finally:
        del cli.TRANSPORTS["nowhere"]


_PROBE = """
import json, sys
import katran_frontend.cli as cli
ns = cli.build_flags().parse({argv!r})
light = sorted(m for m in sys.modules if m.split(".")[0] == "numpy" or m in ("katran.lb", "katran._native"))
cli.transport_factory(cli.transport_name(ns))
after = sorted(m for m in sys.modules if m.split(".")[0] == "numpy" or m in ("katran.lb", "katran._native"))
rpc = sorted({{m.split(".")[0] for m in sys.modules}} & {{"grpc", "thrift", "katran_grpc", "katran_thrift"}})
print(json.dumps([light, after, rpc]))
"""


@pytest.mark.parametrize("argv, transport", [([], {"grpc", "katran_grpc"}), (["-thrift"], {"thrift", "katran_thrift"})])
def test_cli_start_up_is_light(argv, transport):
    """katran-cli: no numpy, native module or katran.lb, before or after loading its transport;
    only the chosen transport is imported."""
    out = subprocess.run([sys.executable, "-c", _PROBE.format(argv=argv)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    light, after, rpc = json.loads(out)
    assert (light, after) == ([], [])
    assert set(rpc) == transport


# --------------------------------------------------------------------------- the wheel
def _source_copy(dest: Path) -> Path:
    """The files git knows (tracked, or new and not ignored): what a fresh checkout has."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / os.fsdecode(name)
        if src.is_file():
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dest


@pytest.mark.slow
def test_wheel_has_bpf_objects_lab_files_and_entry_points(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("needs the git checkout (git ls-files) to copy the sources")
    src = _source_copy(tmp_path / "src")
    assert not (src / "katran" / "bpf" / "obj").exists()  # built by the wheel build, not copied
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path / "dist"), "-q"], cwd=src, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("katran-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    for obj in ("balancer", "healthchecking", "decap", "xdp_root", "xdp_pass"):
        assert f"katran/bpf/obj/{obj}.bpf.o" in names, obj
    for f in ("firewall.py", "firewall.bpf.c", "hc_it_client.py", "install_xdproot.sh"):
        assert f"katran/lab/examples/{f}" in names, f
    for mod in ("katran/lab/cli.py", "katran/lab/demo.py", "katran/lab/labnet.py", "katran/lab/netns.py",
                "katran_frontend/cli.py", "katran_frontend/server.py", "katran_frontend/client.py",
                "katran_frontend/goflags.py", "katran_frontend/server_flags.py",
                "katran_grpc/server.py", "katran_grpc/katran_pb2.py", "katran_thrift/server.py",
                "katran_thrift/gen/KatranService.py"):
        assert mod in names, mod
    assert not any(n.startswith(("katran/adapter/labnet", "katran/adapter/netns", "katran/goflags",
                                 "katran/server_flags", "tests/", "examples/")) for n in names)
    for script in ("katran-cli = katran_frontend.cli:main", "katran-server-grpc = katran_grpc.server:main",
                   "katran-server-thrift = katran_thrift.server:main", "katran-lab = katran.lab.cli:main",
                   "katran-xdp-root = katran.cli_root:main"):
        assert script in entry_points, script
    assert "Provides-Extra: lab" in metadata
    lab_reqs = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and 'extra == "lab"' in line]
    assert any("scapy" in r for r in lab_reqs) and any("grpc" in r for r in lab_reqs), lab_reqs
