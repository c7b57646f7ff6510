"""Maglev consistent hashing, computed exactly as Katran does it.

Katran places each real of a VIP on a ring of ``ring_size`` slots (65537 by
default) in user space and writes the ring to the ``ch_rings`` BPF map; the
BPF program picks ``ring[jhash(flow) % ring_size]``.  To be packet compatible
we must produce the very same ring, which needs:

* the endpoint hash: folly's ``IPAddress::hash()`` of the real's address
  (:func:`endpoint_hash`);
* endpoints in ascending hash order (``Vip.cpp``), zero weights left out;
* the Maglev permutation (MurmurHash3 of the endpoint hash with Katran's seeds)
  and population loop, v1 (``HashFunction.MAGLEV``) or v2 (``MAGLEV_V2``),
  including Katran's 32-bit wrap-around in ``offset + next * skip``.

The hashing and the population loop run in C (``katran._native``, built by
cffi from ``katran/native/``); a pure-Python implementation of the same
algorithm is kept as a slow fallback and as a cross-check for the tests.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import operator
import os
import statistics
import struct
import time
from typing import Optional, Sequence, Tuple, Union

import attrs
import numpy as np

from .errors import ValidationError
from .models import HashFunction, parse_address

log = logging.getLogger(__name__)

try:  # built by katran/_native_build.py (pip install / setup.py build_ext)
    from ._native import ffi as _ffi, lib as _lib

    NATIVE = True
except ImportError:  # pragma: no cover - exercised only without a build
    _ffi = _lib = None
    NATIVE = False
    log.warning("katran._native is not built: Maglev rings use the slow pure-Python path")

DEFAULT_RING_SIZE = 65537
MAX_RING_SIZE = 0xFFFFFFFF
# Katran's seeds for the permutation (MaglevBase.cpp): offset and skip hashes.
OFFSET_SEED = (42, 0)
SKIP_SEED = (2718281828, 2307)
AF_INET = 2  # folly hashes the Linux address family numbers
AF_INET6 = 10
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_FREE = _U32  # "free slot" marker of the pure-Python population
# Katran keeps the ring as std::vector<int> with -1 = free: real numbers must fit in an int.
MAX_REAL_NUM = 0x7FFFFFFF

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def _int_field(name: str):
    def convert(value: object) -> int:
        try:
            return operator.index(value)
        except TypeError:
            raise ValidationError(name, value, "expected an integer") from None

    return convert


# one endpoint as the C code reads it: hash, num, weight (little-endian)
_RECORD = struct.Struct("<QII")
_RECORD_DTYPE = np.dtype([("hash", "<u8"), ("num", "<u4"), ("weight", "<u4")])


@attrs.frozen
class Endpoint:
    """One real on a VIP's ring: real index, weight, folly address hash (ints).

    Ranges are checked here (num 0..2**31-1, weight 0..2**32-1, hash u64), and
    the packed record the ring builder reads is made once.
    """

    num: int = attrs.field(converter=_int_field("num"))
    weight: int = attrs.field(converter=_int_field("weight"))
    hash: int = attrs.field(converter=_int_field("hash"))
    _record: bytes = attrs.field(init=False, repr=False, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        for name, value, top in (("num", self.num, MAX_REAL_NUM), ("weight", self.weight, _U32),
                                 ("hash", self.hash, _U64)):
            if not 0 <= value <= top:
                raise ValidationError(name, value, f"expected an integer in 0..{top}")
        object.__setattr__(self, "_record", _RECORD.pack(self.hash, self.num, self.weight))


# --------------------------------------------------------------------- hashes
def _rotl64(v: int, r: int) -> int:
    return ((v << r) | (v >> (64 - r))) & _U64


def _fmix64(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _U64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _U64
    return k ^ (k >> 33)


def _murmur3_x64_64_py(a: int, b: int, seed: int) -> int:
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F
    h1 = h2 = seed
    h1 ^= (_rotl64((a * c1) & _U64, 31) * c2) & _U64
    h1 = ((_rotl64(h1, 27) + h2) * 5 + 0x52DCE729) & _U64
    h2 ^= (_rotl64((b * c2) & _U64, 33) * c1) & _U64
    h2 = ((_rotl64(h2, 31) + h1) * 5 + 0x38495AB5) & _U64
    h1 ^= 16
    h2 ^= 16
    h1 = (h1 + h2) & _U64
    h2 = (h2 + h1) & _U64
    return (_fmix64(h1) + _fmix64(h2)) & _U64


def murmur3_x64_64(a: int, b: int, seed: int) -> int:
    """Katran's ``MurmurHash3_x64_64(A, B, seed)`` over two 64-bit words."""
    if NATIVE:
        return int(_lib.kn_murmur3_x64_64(a, b, seed))
    return _murmur3_x64_64_py(a, b, seed)


def _hash_128_to_64_py(upper: int, lower: int) -> int:
    mul = 0x9DDFEA08EB382D69
    x = ((lower ^ upper) * mul) & _U64
    x ^= x >> 47
    y = ((upper ^ x) * mul) & _U64
    y ^= y >> 47
    return (y * mul) & _U64


def _fnv32_folly_py(data: bytes) -> int:
    h = 2166136261
    for byte in data:
        h = (h * 16777619) & _U32
        h ^= (byte - 256 if byte >= 128 else byte) & _U32  # signed char, sign-extended
    return h


def _spooky_short16_py(data: bytes) -> Tuple[int, int]:
    """SpookyHash V2 128-bit of exactly 16 bytes, seeds 0 (folly's short path)."""
    const = 0xDEADBEEFDEADBEEF
    w0, w1 = struct.unpack("<QQ", data)
    s = [0, 0, (const + w0) & _U64, (const + w1) & _U64]
    for r, rot in enumerate((50, 52, 30, 41, 54, 48, 38, 37, 62, 34, 5, 36)):
        i, j, k = (r + 2) & 3, (r + 3) & 3, r & 3
        s[i] = (_rotl64(s[i], rot) + s[j]) & _U64
        s[k] ^= s[i]
    s[3] = (s[3] + (16 << 56) + const) & _U64
    s[2] = (s[2] + const) & _U64
    for r, rot in enumerate((15, 52, 26, 51, 28, 9, 47, 54, 32, 25, 63)):
        i, j = (r + 3) & 3, (r + 2) & 3
        s[i] ^= s[j]
        s[j] = _rotl64(s[j], rot)
        s[i] = (s[i] + s[j]) & _U64
    return s[0], s[1]


def _endpoint_hash_py(packed: bytes) -> int:
    if len(packed) == 16 and packed[:12] == b"\0" * 10 + b"\xff\xff":
        packed = packed[12:]  # folly hashes ::ffff:a.b.c.d like a.b.c.d
    if len(packed) == 4:
        return _hash_128_to_64_py(AF_INET, _fnv32_folly_py(packed))
    h1, h2 = _spooky_short16_py(packed)
    return _hash_128_to_64_py(AF_INET6, _hash_128_to_64_py(h1, h2))


def endpoint_hash(address: Union[IPAddress, str]) -> int:
    """folly ``IPAddress::hash()`` of a real's address (u64), Katran's endpoint hash.

    IPv4: ``hash_128_to_64(AF_INET, fnv32(4 bytes))``; IPv6:
    ``hash_128_to_64(AF_INET6, hash_128_to_64(spooky128(16 bytes)))``;
    IPv4-mapped IPv6 hashes as the IPv4 address.  Results are cached.
    """
    return _address_hash(parse_address(address, "address"))


@functools.lru_cache(maxsize=65536)
def _address_hash(addr: IPAddress) -> int:
    packed = addr.packed
    if not NATIVE:
        return _endpoint_hash_py(packed)
    if addr.version == 4:
        return int(_lib.kn_ip_hash_v4(packed))
    return int(_lib.kn_ip_hash_v6(packed))


def jhash(data: bytes, initval: int) -> int:
    """Linux kernel ``jhash(key, len, initval)`` (lookup3), as the BPF program uses it."""
    _check_u32("initval", initval)
    return int(_lib.kn_jhash(bytes(data), len(data), initval)) if NATIVE else _jhash_py(bytes(data), initval)


def jhash_2words(a: int, b: int, initval: int) -> int:
    """Linux kernel ``jhash_2words(a, b, initval)``."""
    for name, value in (("a", a), ("b", b), ("initval", initval)):
        _check_u32(name, value)
    return int(_lib.kn_jhash_2words(a, b, initval)) if NATIVE else _jhash_2words_py(a, b, initval)


def _rotl32(v: int, r: int) -> int:
    return ((v << r) | (v >> (32 - r))) & _U32


def _jhash_final(a: int, b: int, c: int) -> int:
    c = ((c ^ b) - _rotl32(b, 14)) & _U32
    a = ((a ^ c) - _rotl32(c, 11)) & _U32
    b = ((b ^ a) - _rotl32(a, 25)) & _U32
    c = ((c ^ b) - _rotl32(b, 16)) & _U32
    a = ((a ^ c) - _rotl32(c, 4)) & _U32
    b = ((b ^ a) - _rotl32(a, 14)) & _U32
    return ((c ^ b) - _rotl32(b, 24)) & _U32


def _jhash_py(data: bytes, initval: int) -> int:
    a = b = c = (0xDEADBEEF + len(data) + initval) & _U32
    rest = data
    while len(rest) > 12:
        wa, wb, wc = struct.unpack_from("<III", rest)
        a, b, c = (a + wa) & _U32, (b + wb) & _U32, (c + wc) & _U32
        a = ((a - c) & _U32) ^ _rotl32(c, 4); c = (c + b) & _U32
        b = ((b - a) & _U32) ^ _rotl32(a, 6); a = (a + c) & _U32
        c = ((c - b) & _U32) ^ _rotl32(b, 8); b = (b + a) & _U32
        a = ((a - c) & _U32) ^ _rotl32(c, 16); c = (c + b) & _U32
        b = ((b - a) & _U32) ^ _rotl32(a, 19); a = (a + c) & _U32
        c = ((c - b) & _U32) ^ _rotl32(b, 4); b = (b + a) & _U32
        rest = rest[12:]
    if not rest:
        return c
    wa, wb, wc = struct.unpack("<III", rest.ljust(12, b"\0"))
    return _jhash_final((a + wa) & _U32, (b + wb) & _U32, (c + wc) & _U32)


def _jhash_2words_py(a: int, b: int, initval: int) -> int:
    base = (initval + 0xDEADBEEF + 8) & _U32
    return _jhash_final((a + base) & _U32, (b + base) & _U32, base)


# ----------------------------------------------------------------------- ring
@functools.lru_cache(maxsize=64)
def is_prime(value: int) -> bool:
    """Deterministic Miller-Rabin for 0 <= value < 2**32 (bases 2, 7, 61)."""
    if value < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 61):
        if value % p == 0:
            return value == p
    d, r = value - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in (2, 7, 61):
        x = pow(a, d, value)
        if x in (1, value - 1):
            continue
        for _ in range(r - 1):
            x = x * x % value
            if x == value - 1:
                break
        else:
            return False
    return True


def _check_u32(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= _U32:
        raise ValidationError(field, value, "expected an integer in 0..2**32-1")


def _bad_endpoint(endpoints: Sequence[Endpoint]) -> ValidationError:
    """The ValidationError for the first invalid endpoint (slow path, errors only)."""
    seen = set()
    for i, ep in enumerate(endpoints):
        if not isinstance(ep, Endpoint):
            return ValidationError(f"endpoints[{i}]", ep, "expected a maglev.Endpoint")
        for name, value, top in (("num", ep.num, MAX_REAL_NUM), ("weight", ep.weight, _U32), ("hash", ep.hash, _U64)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= top:
                return ValidationError(f"endpoints[{i}].{name}", value, f"expected an integer in 0..{top}")
        if ep.num in seen:
            return ValidationError(f"endpoints[{i}].num", ep.num, "real number listed twice")
        seen.add(ep.num)
    return ValidationError("endpoints", endpoints, "invalid endpoints")


_get_record = operator.attrgetter("_record")


def _endpoint_records(endpoints: Sequence[Endpoint]) -> np.ndarray:
    """Structured array (hash, num, weight) of the endpoints, or ValidationError."""
    try:
        blob = b"".join(map(_get_record, endpoints))
    except (AttributeError, TypeError):
        raise _bad_endpoint(endpoints) from None
    records = np.frombuffer(blob, dtype=_RECORD_DTYPE)
    if len(records) > 1:
        nums = np.sort(records["num"])
        if not (nums[1:] != nums[:-1]).all():
            raise _bad_endpoint(endpoints)
    return records


def _build_ring_py(hashes: Sequence[int], nums: Sequence[int], weights: Sequence[int],
                   ring_size: int, version: int) -> np.ndarray:
    """Reference Maglev population in plain Python (same semantics as the C code)."""
    n = len(nums)
    ring = [_FREE] * ring_size
    if n == 1:
        return np.full(ring_size, nums[0], dtype=np.uint32)
    skip = [_murmur3_x64_64_py(h, *SKIP_SEED) % (ring_size - 1) + 1 for h in hashes]
    pos = [_murmur3_x64_64_py(h, *OFFSET_SEED) % ring_size for h in hashes]
    filled = 0

    def claim(i: int) -> bool:
        nonlocal filled
        p = pos[i]
        while ring[p % ring_size] != _FREE:
            p = (p + skip[i]) & _U32
        ring[p % ring_size] = nums[i]
        pos[i] = (p + skip[i]) & _U32
        filled += 1
        return filled == ring_size

    if version == 0:
        quota = list(weights)  # first round uses the weights, then one slot each
        while True:
            for i in range(n):
                for _ in range(quota[i]):
                    if claim(i):
                        return np.array(ring, dtype=np.uint32)
                quota[i] = 1
    max_weight = max(weights)
    acc = [0] * n
    while True:
        for i in range(n):
            acc[i] += weights[i]
            if acc[i] >= max_weight:
                acc[i] -= max_weight
                if claim(i):
                    return np.array(ring, dtype=np.uint32)


def build_ring(
    endpoints: Sequence[Endpoint],
    ring_size: int = DEFAULT_RING_SIZE,
    hash_function: HashFunction = HashFunction.MAGLEV,
) -> np.ndarray:
    """Katran's CH ring for these endpoints: uint32 array of ``ring_size`` real numbers.

    ``ring_size`` must be prime; endpoint nums must be distinct.  Endpoints of
    weight 0 are left out (as ``Vip::getEndpoints`` does); with none left the
    ring is all zeros (real 0 = "no real": the BPF program drops).  Katran
    itself writes no ring update in that case, leaving the previous ring.
    """
    if isinstance(ring_size, bool) or not isinstance(ring_size, (int, np.integer)) or not 2 <= ring_size <= MAX_RING_SIZE:
        raise ValidationError("ring_size", ring_size, "expected an integer in 2..2**32-1")
    if not is_prime(int(ring_size)):
        # Maglev's permutations only cover every slot when the size is prime;
        # with another size population can loop forever (Katran's too).
        raise ValidationError("ring_size", ring_size, "Maglev needs a prime ring size (e.g. 65537)")
    try:
        version = int(HashFunction(hash_function))
    except (ValueError, TypeError):
        raise ValidationError("hash_function", hash_function, "expected HashFunction.MAGLEV or MAGLEV_V2") from None
    records = _endpoint_records(endpoints)
    live = records["weight"] > 0  # Vip::getEndpoints skips zero weights
    if not live.all():
        records = records[live]
    ring_size = int(ring_size)
    n = len(records)
    if n == 0:
        return np.zeros(ring_size, dtype=np.uint32)
    # Katran's order: ascending endpoint hash (std::sort).  Equal hashes mean
    # equal addresses, which KatranLb never gives two real numbers.
    records = records[np.argsort(records["hash"])]
    hashes = np.ascontiguousarray(records["hash"])
    nums = np.ascontiguousarray(records["num"])
    weights = np.ascontiguousarray(records["weight"])
    if not NATIVE:
        return _build_ring_py([int(h) for h in hashes], [int(x) for x in nums],
                              [int(w) for w in weights], ring_size, version)
    ring = np.empty(ring_size, dtype=np.uint32)
    rc = _lib.kn_maglev_ring(
        _ffi.from_buffer("uint64_t[]", hashes),
        _ffi.from_buffer("uint32_t[]", nums),
        _ffi.from_buffer("uint32_t[]", weights),
        n,
        ring_size,
        version,
        _ffi.from_buffer("uint32_t[]", ring),
    )
    if rc == -2:
        raise MemoryError(f"no memory for a ring of {ring_size} slots")
    if rc != 0:  # arguments were validated above; this is a bug
        raise RuntimeError(f"kn_maglev_ring failed (rc={rc}, n={n}, ring_size={ring_size})")
    return ring


# --- the C core's level on this CPU

#: the C core's levels (kn_maglev_simd caps the level a build may use)
SIMD_LEVELS = ("one-by-one", "avx2", "avx512")
SIMD_ENV = "KATRAN_MAGLEV_SIMD"  # 0, 1 or 2: use at most that level, untimed
_TUNE_ENDPOINTS = 100
_TUNE_ROUNDS = 7
_TUNE_MARGIN = 0.95  # a lower level is taken only when it is this much faster
_tuned: Optional[dict] = None


def choose_level(ms: dict) -> int:
    """The level to use given each level's median ms: the highest, unless the fastest is
    more than 5 % below it (noise does not move the choice)."""
    top = max(ms)
    fastest = min(ms, key=ms.__getitem__)
    return fastest if ms[fastest] < _TUNE_MARGIN * ms[top] else top


def env_level() -> Optional[int]:
    """The level ``$KATRAN_MAGLEV_SIMD`` caps the C core at; None when unset.
    ValidationError naming the variable for another value."""
    env = os.environ.get(SIMD_ENV)
    if env is None:
        return None
    if env.strip() not in ("0", "1", "2"):
        raise ValidationError(SIMD_ENV, env, "expected 0 (one by one), 1 (AVX2) or 2 (AVX-512)")
    return int(env)


def tune_native(rounds: int = _TUNE_ROUNDS) -> Optional[dict]:
    """Choose the fastest level of the C core on this CPU, once per process.

    Every level builds the same ring; which is fastest depends on the CPU: AVX2's gathers
    make its batches slower than the one-by-one loop on some (AMD EPYC here: 1.69 vs 1.52
    ms a 100-real ring). Times a 100-endpoint ring of 65,537 slots at each level the CPU
    has up to the present cap, ``rounds`` rounds taking turns (~30 ms), and caps ``kn_maglev_simd`` at the
    fastest; a lower level than the highest only when its median is 5 % below. ``$KATRAN_MAGLEV_SIMD``
    (0, 1, 2) caps the level instead, untimed. Returns {"level", "name", "ms" (median per
    level timed), "source" ("timed" / "env")}; None without the C core. KatranLb.start calls
    it; build_ring never does (tests and benchmarks set kn_maglev_simd themselves).
    """
    global _tuned
    if not NATIVE:
        return None
    if _tuned is not None:
        return _tuned
    level = env_level()
    if level is not None:
        _lib.kn_maglev_simd = level
        _tuned = {"level": level, "name": SIMD_LEVELS[level], "ms": {}, "source": "env"}
        log.info("maglev: C core capped at level %d (%s) by $%s", level, SIMD_LEVELS[level], SIMD_ENV)
        return _tuned
    n = _TUNE_ENDPOINTS
    hashes = np.ascontiguousarray(np.sort(
        np.array([endpoint_hash(ipaddress.IPv4Address(0x0A000001 + i)) for i in range(n)], dtype=np.uint64)))
    nums = np.arange(1, n + 1, dtype=np.uint32)
    weights = np.ones(n, dtype=np.uint32)
    ring = np.empty(DEFAULT_RING_SIZE, dtype=np.uint32)
    args = (_ffi.from_buffer("uint64_t[]", hashes), _ffi.from_buffer("uint32_t[]", nums),
            _ffi.from_buffer("uint32_t[]", weights), n, DEFAULT_RING_SIZE, int(HashFunction.MAGLEV),
            _ffi.from_buffer("uint32_t[]", ring))
    cap = _lib.kn_maglev_simd

    def build(level: int) -> int:
        """One build capped at `level`; the level it ran at (kn_maglev_builds)."""
        before = list(_lib.kn_maglev_builds)
        _lib.kn_maglev_simd = level
        if _lib.kn_maglev_ring(*args) != 0:
            raise MemoryError("no memory for the level timing ring")
        return next(i for i in range(len(SIMD_LEVELS)) if _lib.kn_maglev_builds[i] != before[i])

    try:
        levels = sorted({build(level) for level in range(min(cap, 2) + 1)})  # what the CPU has
        samples: dict = {level: [] for level in levels}
        for _ in range(rounds):
            for level in levels:
                t = time.perf_counter()
                build(level)
                samples[level].append(time.perf_counter() - t)
    finally:
        _lib.kn_maglev_simd = cap
    ms = {level: statistics.median(v) * 1e3 for level, v in samples.items()}
    level = choose_level(ms)
    _lib.kn_maglev_simd = level
    _tuned = {"level": level, "name": SIMD_LEVELS[level], "ms": ms, "source": "timed"}
    log.info("maglev: C core level %d (%s) on this CPU: %s", level, SIMD_LEVELS[level],
             ", ".join(f"{SIMD_LEVELS[lv]} {ms[lv]:.2f} ms" for lv in levels))
    return _tuned


def ring_delta(old: Optional[np.ndarray], new: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(positions, values) where ``new`` differs from ``old``; ``old=None`` means every position.

    positions are ascending uint32 ring indices, values the uint32 real numbers
    of ``new`` there (Katran's ``Vip::calculateHashRing`` delta).
    """
    new = np.asarray(new)
    if new.ndim != 1:
        raise ValidationError("new", new.shape, "expected a one-dimensional ring")
    if old is None:
        positions = np.arange(new.shape[0], dtype=np.uint32)
        return positions, new.astype(np.uint32, copy=True)
    old = np.asarray(old)
    if old.shape != new.shape:
        raise ValidationError("old", old.shape, f"ring size differs from the new ring's {new.shape}")
    positions = np.flatnonzero(old != new).astype(np.uint32)
    return positions, new[positions].astype(np.uint32)


def ring_writes(old: Optional[np.ndarray], new: np.ndarray, key_base: int = 0
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ch_rings writes from ``old`` to ``new``: (keys, values, before), uint32 arrays.

    For every position p where the rings differ (ascending; every position when
    ``old`` is None, with ``before`` zeros): key ``key_base + p``, the new value,
    the old one (for the undo).  One pass in C (``kn_ring_delta``) when built.
    """
    _check_u32("key_base", key_base)
    new = np.asarray(new)
    if new.ndim != 1:
        raise ValidationError("new", new.shape, "expected a one-dimensional ring")
    size = new.shape[0]
    if key_base + size - 1 > _U32:
        raise ValidationError("key_base", key_base, f"key_base + {size} ring slots exceed 2**32")
    if old is None:
        keys = np.arange(key_base, key_base + size, dtype=np.uint64).astype(np.uint32)
        return keys, new.astype(np.uint32, copy=True), np.zeros(size, dtype=np.uint32)
    old = np.asarray(old)
    if old.shape != new.shape:
        raise ValidationError("old", old.shape, f"ring size differs from the new ring's {new.shape}")
    if not NATIVE:
        positions, values = ring_delta(old, new)
        return (positions.astype(np.uint64) + key_base).astype(np.uint32), values, old[positions].astype(np.uint32)
    old32 = np.ascontiguousarray(old, dtype=np.uint32)
    new32 = np.ascontiguousarray(new, dtype=np.uint32)
    out = np.empty((3, size), dtype=np.uint32)
    count = _lib.kn_ring_delta(_ffi.from_buffer("uint32_t[]", old32), _ffi.from_buffer("uint32_t[]", new32),
                               size, key_base, _ffi.from_buffer("uint32_t[]", out[0]),
                               _ffi.from_buffer("uint32_t[]", out[1]), _ffi.from_buffer("uint32_t[]", out[2]))
    return out[0, :count], out[1, :count], out[2, :count]
