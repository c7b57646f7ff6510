"""Build hooks: compile the BPF objects and the cffi native helper with the package."""

import importlib.util
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_build_module():
    spec = importlib.util.spec_from_file_location("katran_build", os.path.join(HERE, "katran", "build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildPyWithBpf(build_py):
    """Compile katran/bpf/*.bpf.c before copying package data (also for editable installs)."""

    def run(self):
        _load_build_module().build_all()
        super().run()


setup(
    cmdclass={"build_py": BuildPyWithBpf},
    cffi_modules=["katran/_native_build.py:ffibuilder"],
)
