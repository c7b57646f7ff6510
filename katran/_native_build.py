"""cffi (API mode, out-of-line) builder for ``katran._native``.

Used by setup.py (``cffi_modules=["katran/_native_build.py:ffibuilder"]``) and
runnable directly for an in-place development build::

    python katran/_native_build.py      # writes katran/_native.*.so

Sources live in ``katran/native/``; paths are resolved from this file, so the
build works from any working directory.
"""

from __future__ import annotations

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE_DIR = os.path.join(HERE, "native")
SOURCES = [os.path.join(NATIVE_DIR, name) for name in ("hashes.c", "maglev.c")]

CDEF = """
uint64_t kn_murmur3_x64_64(uint64_t a, uint64_t b, uint32_t seed);
uint64_t kn_hash_128_to_64(uint64_t upper, uint64_t lower);
uint32_t kn_fnv32_folly(const uint8_t *buf, size_t len);
int kn_spooky_v2_hash128(const uint8_t *msg, size_t len, uint64_t *h1, uint64_t *h2);
uint64_t kn_ip_hash_v4(const uint8_t *addr4);
uint64_t kn_ip_hash_v6(const uint8_t *addr16);
uint32_t kn_jhash(const uint8_t *key, uint32_t len, uint32_t initval);
uint32_t kn_jhash_2words(uint32_t a, uint32_t b, uint32_t initval);
int kn_maglev_ring(const uint64_t *hashes, const uint32_t *nums,
                   const uint32_t *weights, size_t n, uint32_t ring_size,
                   int version, uint32_t *ring);
size_t kn_ring_delta(const uint32_t *old, const uint32_t *new_ring, uint32_t size, uint32_t key_base,
                     uint32_t *keys, uint32_t *values, uint32_t *before);
extern int kn_maglev_simd;
extern unsigned long kn_maglev_builds[3];
"""


def _source_paths(absolute: bool) -> list[str]:
    """Sources for the build: relative to the cwd when possible (setuptools
    prefers relative paths in setup.py builds), absolute otherwise."""
    if absolute:
        return list(SOURCES)
    out = []
    for path in SOURCES:
        rel = os.path.relpath(path)
        out.append(path if rel.startswith("..") else rel)
    return out


def make_ffibuilder(absolute_sources: bool = False) -> FFI:
    """A configured FFI builder for ``katran._native``."""
    builder = FFI()
    builder.cdef(CDEF)
    builder.set_source(
        "katran._native",
        '#include "katran_native.h"\n',
        sources=_source_paths(absolute_sources),
        include_dirs=[NATIVE_DIR],
        extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra"],
    )
    return builder


ffibuilder = make_ffibuilder()


def build_inplace(verbose: bool = False) -> str:
    """Compile in a temporary directory and copy the extension next to this file."""
    import glob
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="katran-native-") as tmp:
        # cffi compiles with the temporary directory as cwd: absolute sources
        built = make_ffibuilder(absolute_sources=True).compile(tmpdir=tmp, verbose=verbose)
        for old in glob.glob(os.path.join(HERE, "_native*.so")):
            os.unlink(old)
        target = os.path.join(HERE, os.path.basename(built))
        shutil.copy2(built, target)
    return target


if __name__ == "__main__":
    print(build_inplace(verbose=True))
