"""Test helpers shipped with katran: a dict-backed fake kernel (no privileges needed)."""

from .fake_kernel import FakeKernel, FakeMap, FakeObject, FakeProgram

__all__ = ["FakeKernel", "FakeMap", "FakeObject", "FakeProgram"]
