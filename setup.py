"""Build hooks: compile the BPF objects and the cffi native helper with the package.

The BPF objects are built by a ``build`` sub-command of their own (``build_bpf``), run
before ``build_py`` copies the package data, and run unguarded in editable installs too:
a failed BPF or native compile fails ``pip install`` with one message (which file, which
header or tool is missing, which Debian package provides it), never a silent success.
"""

import importlib.util
import os

from setuptools import Command, setup
from setuptools.command.build import build
from setuptools.command.build_ext import build_ext

try:  # setuptools >= 59 re-exports the distutils errors
    from setuptools.errors import CompileError, ExecError, LinkError, PlatformError
    from setuptools.errors import BaseError as _SetupError
except ImportError:  # pragma: no cover - old setuptools
    from distutils.errors import CCompilerError as CompileError, DistutilsExecError as ExecError
    from distutils.errors import DistutilsError as _SetupError, DistutilsPlatformError as PlatformError
    from distutils.errors import LinkError

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_build_module():
    spec = importlib.util.spec_from_file_location("katran_build", os.path.join(HERE, "katran", "build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class KatranBuildError(_SetupError):
    """Reported by setuptools as one ``error: ...`` line, and the build fails."""


class BuildBpf(Command):
    description = "compile katran/bpf/*.bpf.c into katran/bpf/obj/ with clang"
    user_options = []

    def initialize_options(self):
        pass

    def finalize_options(self):
        pass

    def run(self):
        mod = _load_build_module()
        try:
            mod.build_all()
        except mod.BuildError as exc:
            raise KatranBuildError(f"katran: BPF build failed: {exc}") from None


class BuildWithBpf(build):
    sub_commands = [("build_bpf", None)] + build.sub_commands


class BuildNative(build_ext):
    """The cffi native helper (katran/native/*.c); a compile failure names what to install."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except (CompileError, LinkError, ExecError, PlatformError) as exc:
            raise KatranBuildError(
                f"katran: cannot build the native helper {ext.name} from katran/native/*.c: {exc}; "
                "it needs a C compiler and the Python headers (Debian packages: gcc libc6-dev, "
                "and python3-dev for Debian's python3)") from None


setup(
    cmdclass={"build": BuildWithBpf, "build_bpf": BuildBpf, "build_ext": BuildNative},
    cffi_modules=["katran/_native_build.py:ffibuilder"],
)
