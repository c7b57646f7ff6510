"""Maglev rings and the hashes behind them, checked against Katran's own fixtures.

The strongest check is ``test_fixture_real_matches_our_ring``: for every packet
of Katran's base/gue fixtures that Katran forwards by consistent hashing, our
endpoint hashes + our ring + the BPF flow hash pick the same real that is the
outer destination of Katran's expected output packet.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from katran import maglev
from katran.errors import ValidationError
from katran.models import HashFunction

RING = 65537
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "katran-fixtures"

needs_native = pytest.mark.skipif(not maglev.NATIVE, reason="katran._native is not built")


def _ep(num: int, address: str, weight: int = 1) -> maglev.Endpoint:
    return maglev.Endpoint(num=num, weight=weight, hash=maglev.endpoint_hash(address))


def _v4_endpoints(count: int, base: str = "10.0.0.0", weights=None) -> list:
    start = int(ipaddress.IPv4Address(base))
    return [
        maglev.Endpoint(i + 1, 1 if weights is None else weights[i], maglev.endpoint_hash(ipaddress.IPv4Address(start + i + 1)))
        for i in range(count)
    ]


def _reference_ring(endpoints, ring_size: int, hash_function: int) -> np.ndarray:
    """Pure-Python population of the same algorithm (independent of the C code)."""
    live = sorted((e for e in endpoints if e.weight > 0), key=lambda e: e.hash)
    return maglev._build_ring_py([e.hash for e in live], [e.num for e in live], [e.weight for e in live],
                                 ring_size, hash_function)


# --------------------------------------------------------------------------- hashes
def test_native_extension_is_built():
    assert maglev.NATIVE, "katran._native missing: run `python katran/_native_build.py` or `pip install -e .`"


def test_murmur3_matches_reference_implementation():
    mmh3 = pytest.importorskip("mmh3", reason="mmh3 (reference MurmurHash3) not installed")
    rnd = random.Random(7)
    for _ in range(300):
        a, b, seed = rnd.getrandbits(64), rnd.getrandbits(64), rnd.getrandbits(32)
        # Katran's MurmurHash3_x64_64(A, B, seed) is h1 of MurmurHash3_x64_128 over the 16 bytes A|B
        h1, _ = mmh3.hash64(struct.pack("<QQ", a, b), seed, signed=False)
        assert maglev.murmur3_x64_64(a, b, seed) == h1
        assert maglev._murmur3_x64_64_py(a, b, seed) == h1


@needs_native
def test_spooky_v2_short_path_known_answers():
    # SpookyHash V2 reference test vector: Hash32(buf[:n], seed 0) with buf[i] = (i + 128) & 0xff
    known = {0: 0x6BF50919, 1: 0x70DE1D26, 7: 0xF9F1A233, 8: 0xEE193982, 15: 0x83EC01F9, 16: 0xF274736C,
             17: 0x7E9AC0DF, 31: 0x027BCA7C, 32: 0xE5CFC8B6, 33: 0xCE01D9D7, 100: 0xDE4A961F, 191: 0xE13D9E19}
    from katran._native import ffi, lib

    buf = bytes((i + 128) & 0xFF for i in range(192))
    for length, expected in known.items():
        h1, h2 = ffi.new("uint64_t *", 0), ffi.new("uint64_t *", 0)
        assert lib.kn_spooky_v2_hash128(buf, length, h1, h2) == 0
        assert h1[0] & 0xFFFFFFFF == expected, length
    assert lib.kn_spooky_v2_hash128(buf, 192, h1, h2) == -1  # long path not implemented


def test_spooky_16_bytes_python_equals_c():
    if not maglev.NATIVE:
        pytest.skip("katran._native is not built")
    from katran._native import ffi, lib

    rnd = random.Random(3)
    for _ in range(200):
        data = rnd.randbytes(16)
        h1, h2 = ffi.new("uint64_t *", 0), ffi.new("uint64_t *", 0)
        lib.kn_spooky_v2_hash128(data, 16, h1, h2)
        assert maglev._spooky_short16_py(data) == (h1[0], h2[0])


def test_fnv32_is_fnv1_with_sign_extended_bytes():
    f = maglev._fnv32_folly_py
    # standard FNV-1 32-bit vectors (ASCII bytes are unaffected by sign extension)
    assert f(b"") == 0x811C9DC5
    assert f(b"a") == 0x050C5D7E
    assert f(b"foobar") == 0x31F0B262
    # folly's fnv32_buf xors the byte as a signed char: 0x80 becomes 0xffffff80
    assert f(b"\x80") == ((0x811C9DC5 * 16777619) & 0xFFFFFFFF) ^ 0xFFFFFF80
    if maglev.NATIVE:
        from katran._native import lib

        rnd = random.Random(5)
        for _ in range(200):
            data = rnd.randbytes(rnd.randrange(0, 20))
            assert lib.kn_fnv32_folly(data, len(data)) == f(data)


def test_endpoint_hash_c_equals_python_and_folly_rules():
    rnd = random.Random(11)
    for _ in range(300):
        for addr in (ipaddress.IPv4Address(rnd.getrandbits(32)), ipaddress.IPv6Address(rnd.getrandbits(128))):
            assert maglev.endpoint_hash(addr) == maglev._endpoint_hash_py(addr.packed)
    # hash_combine(AF_INET, fnv32) == hash_128_to_64(2, fnv32(bytes))
    packed = ipaddress.IPv4Address("10.0.0.1").packed
    assert maglev.endpoint_hash("10.0.0.1") == maglev._hash_128_to_64_py(2, maglev._fnv32_folly_py(packed))
    # an IPv4-mapped IPv6 address hashes like the IPv4 address (folly IPAddressV6::hash)
    assert maglev.endpoint_hash("::ffff:10.0.0.1") == maglev.endpoint_hash("10.0.0.1")
    assert maglev.endpoint_hash(ipaddress.ip_address("fc00::1")) == maglev.endpoint_hash("fc00::1")
    assert maglev.endpoint_hash("fc00::1") != maglev.endpoint_hash("fc00::2")
    assert 0 <= maglev.endpoint_hash("fc00::1") < 2**64


def test_endpoint_hash_rejects_bad_address():
    with pytest.raises(ValidationError) as err:
        maglev.endpoint_hash("10.0.0.300")
    assert err.value.field == "address" and err.value.value == "10.0.0.300"


def test_jhash_c_equals_python():
    rnd = random.Random(13)
    for _ in range(500):
        data = rnd.randbytes(rnd.randrange(0, 40))
        seed = rnd.getrandbits(32)
        assert maglev.jhash(data, seed) == maglev._jhash_py(data, seed)
        a, b = rnd.getrandbits(32), rnd.getrandbits(32)
        assert maglev.jhash_2words(a, b, seed) == maglev._jhash_2words_py(a, b, seed)
    with pytest.raises(ValidationError):
        maglev.jhash_2words(-1, 0, 0)


# ------------------------------------------------------------- Katran ground truth
REALS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "fc00::1", "fc00::2", "fc00::3"]  # real indices 1..6
V4_REALS, V6_REALS = REALS[:3], REALS[3:]
F_HASH_DPORT_ONLY, F_HASH_SRC_DST_PORT = 8, 128
# base provisioning (fixtures README 7.1): (vip, port, proto) -> (flags, reals)
VIPS = {
    ("10.200.1.1", 80, 17): (0, V4_REALS),
    ("10.200.1.1", 80, 6): (0, V4_REALS),
    ("10.200.1.2", 0, 6): (0, V4_REALS),
    ("10.200.1.4", 0, 6): (F_HASH_DPORT_ONLY, V4_REALS),
    ("10.200.1.3", 80, 6): (0, V6_REALS),
    ("fc00:1::1", 80, 6): (0, V6_REALS),
    ("10.200.1.5", 443, 17): (4, V4_REALS),
    ("fc00:1::2", 443, 17): (4, V6_REALS),
    ("10.200.1.6", 80, 17): (512, V4_REALS),
}
MAX_VIPS = 512
JHASH_SEED = MAX_VIPS * RING  # INIT_JHASH_SEED = CH_RINGS_SIZE
JHASH_SEED_V6 = MAX_VIPS

# Cases Katran forwards by consistent hashing.  base 1-20: every XDP_TX case
# except the ICMP echo replies 8/9; "LRU hit" cases (18, 25) reuse the CH
# choice of an earlier packet of the same flow.  Left out: QUIC packets routed
# by connection id (26, 27, 30, 34) and the LRU hits on entries those wrote
# (29, 31, 32, 35).
CH_CASES = {
    "base": [1, 2, 3, 4, 5, 6, 7, 10, 11, 18, 19, 20, 24, 25, 28, 36],
    "gue": [1, 2, 3, 4, 5, 8, 9, 16, 17, 18, 22, 23, 26, 31, 32],
}


def _ring_for(reals: list) -> np.ndarray:
    endpoints = [_ep(REALS.index(r) + 1, r) for r in reals]
    return maglev.build_ring(endpoints, RING, HashFunction.MAGLEV)


def _flow_key(pkt):
    """(src, dst, sport, dport, proto) the way the balancer parses the packet."""
    from scapy.all import IP

    l3 = pkt.payload
    is_v4 = isinstance(l3, IP)
    proto = l3.proto if is_v4 else l3.nh
    if proto in (1, 58):  # ICMP error: the quoted packet, src/dst and ports swapped
        quoted = l3.payload.payload
        l4 = quoted.payload
        return quoted.dst, quoted.src, l4.dport, l4.sport, quoted.proto if is_v4 else quoted.nh
    return l3.src, l3.dst, l3.payload.sport, l3.payload.dport, proto


def _katran_choice(src: str, dst: str, sport: int, dport: int, proto: int) -> str:
    """Real chosen by BPF: VIP lookup, port rules, jhash of the flow, ring lookup."""
    key = (str(ipaddress.ip_address(dst)), dport, proto)
    if key in VIPS:
        flags, reals = VIPS[key]
    else:  # port-0 VIP: the destination port is not hashed unless flags say so
        flags, reals = VIPS[(key[0], 0, proto)]
        if not flags & (F_HASH_DPORT_ONLY | F_HASH_SRC_DST_PORT):
            dport = 0
    src_bytes = ipaddress.ip_address(src).packed
    if flags & F_HASH_DPORT_ONLY:
        sport, src_bytes = dport, bytes(len(src_bytes))
    ports = struct.unpack("<I", struct.pack("!HH", sport, dport))[0]  # flow.ports as a LE u32
    if len(src_bytes) == 16:
        flow_hash = maglev.jhash_2words(maglev.jhash(src_bytes, JHASH_SEED_V6), ports, JHASH_SEED)
    else:
        flow_hash = maglev.jhash_2words(struct.unpack("<I", src_bytes)[0], ports, JHASH_SEED)
    real_num = int(_ring_for(reals)[flow_hash % RING])
    assert real_num != 0
    return REALS[real_num - 1]


def _load_cases(name: str) -> dict:
    path = FIXTURES / f"{name}.json"
    if not path.exists():
        pytest.skip(f"Katran fixtures not found at {path}")
    return {c["n"]: c for c in json.loads(path.read_text())["cases"]}


def _outer_destination(frame: bytes) -> str:
    from scapy.all import Ether

    return str(ipaddress.ip_address(Ether(frame).payload.dst))


@pytest.mark.parametrize("fixture_set,case", [(s, n) for s, ns in CH_CASES.items() for n in ns])
def test_fixture_real_matches_our_ring(fixture_set, case):
    pytest.importorskip("scapy", reason="scapy is needed to decode the fixtures")
    from scapy.all import Ether

    c = _load_cases(fixture_set)[case]
    assert c["expected_action"] == "XDP_TX"
    expected_real = _outer_destination(base64.b64decode(c["expected_b64"]))
    assert expected_real in REALS
    flow = _flow_key(Ether(base64.b64decode(c["input_b64"])))
    assert _katran_choice(*flow) == expected_real


def test_fixture_case_list_covers_every_encapsulated_case_1_to_20():
    pytest.importorskip("scapy", reason="scapy is needed to decode the fixtures")
    from scapy.all import IP, Ether

    cases = _load_cases("base")
    encapsulated = set()
    for n in range(1, 21):
        c = cases[n]
        if c["expected_action"] != "XDP_TX":
            continue
        outer = Ether(base64.b64decode(c["expected_b64"])).payload
        if (outer.proto if isinstance(outer, IP) else outer.nh) in (4, 41):
            encapsulated.add(n)
    assert encapsulated == {n for n in CH_CASES["base"] if n <= 20}


def test_katran_simulator_expectations():
    # KatranTestUtil testSimulator: flows and the real Katran expects for them
    assert _katran_choice("172.16.0.1", "10.200.1.1", 31337, 80, 17) == "10.0.0.2"
    assert _katran_choice("172.16.0.1", "10.200.1.1", 31337, 80, 6) == "10.0.0.2"
    assert _katran_choice("172.16.0.1", "10.200.1.3", 31337, 80, 6) == "fc00::2"
    assert _katran_choice("fc00:2::1", "fc00:1::1", 31337, 80, 6) == "fc00::3"


# --------------------------------------------------------------------------- rings
@pytest.mark.parametrize("hash_function", list(HashFunction))
def test_c_ring_equals_reference_ring(hash_function):
    rnd = random.Random(int(hash_function) + 17)
    for ring_size, count, equal in ((13, 5, False), (101, 7, False), (4099, 40, False), (65537, 5, False),
                                    (4099, 30, True), (65537, 4, True), (65537, 12, False)):
        weights = [3] * count if equal else [rnd.randint(1, 6) for _ in range(count)]
        endpoints = _v4_endpoints(count, base="10.1.0.0", weights=weights)
        got = maglev.build_ring(endpoints, ring_size, hash_function)
        assert got.dtype == np.uint32 and got.shape == (ring_size,)
        assert np.array_equal(got, _reference_ring(endpoints, ring_size, int(hash_function)))


def _cpu_flags() -> set:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


@contextlib.contextmanager
def _simd_level(level: int):
    from katran._native import lib

    old, lib.kn_maglev_simd = lib.kn_maglev_simd, level
    try:
        yield
    finally:
        lib.kn_maglev_simd = old


@needs_native
@pytest.mark.parametrize("hash_function", list(HashFunction))
def test_vector_levels_give_the_one_by_one_ring(hash_function):
    # AVX-512 groups of claims (2) and AVX2 batches of probes (1) against the scalar
    # loop (0), which the test above checks against the Python reference: sizes where
    # pos wraps past 2**32 often (few endpoints, large skips), a ring smaller than the
    # endpoint count, skewed weights (long v1 first rounds, v2 rounds with few claims)
    from katran._native import lib

    rnd = random.Random(2307 + int(hash_function))
    cases = [(65537, 8, 1), (65537, 100, 1), (65537, 1000, 1), (262147, 9, 1), (262147, 64, 1000),
             (4099, 50, 100), (13, 20, 3), (65537, 16, 3), (1000003, 10, 1), (65537, 300, 100_000),
             (65537, 17, 5000)]
    before = list(lib.kn_maglev_builds)
    for ring_size, count, max_weight in cases:
        weights = [rnd.randint(1, max_weight) for _ in range(count)]
        endpoints = _v4_endpoints(count, base=f"10.{rnd.randrange(256)}.0.0", weights=weights)
        rings = []
        for level in (0, 1, 2):
            with _simd_level(level):
                rings.append(maglev.build_ring(endpoints, ring_size, hash_function))
        assert np.array_equal(rings[0], rings[1]), (ring_size, count, max_weight, "avx2")
        assert np.array_equal(rings[0], rings[2]), (ring_size, count, max_weight, "avx512")
    # not vacuous: each level ran where the CPU has it (a lower level where it does not)
    flags = _cpu_flags()
    ran = [lib.kn_maglev_builds[i] - before[i] for i in range(3)]
    n = len(cases)
    if {"avx2", "avx512f"} <= flags:
        assert ran == [n, n, n]
    elif "avx2" in flags:
        assert ran == [n, 2 * n, 0]
    else:
        assert ran == [3 * n, 0, 0]


def test_few_endpoints_take_the_one_by_one_loop():
    # below 8 endpoints the scalar loop is faster: no vector level is used
    from katran._native import lib

    before = list(lib.kn_maglev_builds)
    maglev.build_ring(_v4_endpoints(7), RING)
    assert [lib.kn_maglev_builds[i] - before[i] for i in range(3)] == [1, 0, 0]


@pytest.mark.parametrize("hash_function", list(HashFunction))
def test_ring_is_deterministic_and_order_independent(hash_function):
    endpoints = _v4_endpoints(50)
    first = maglev.build_ring(endpoints, RING, hash_function)
    shuffled = list(endpoints)
    random.Random(1).shuffle(shuffled)
    assert np.array_equal(first, maglev.build_ring(shuffled, RING, hash_function))
    assert np.array_equal(first, maglev.build_ring(endpoints, RING, hash_function))


@pytest.mark.parametrize("hash_function", list(HashFunction))
def test_every_position_filled_with_an_endpoint(hash_function):
    endpoints = _v4_endpoints(100)
    ring = maglev.build_ring(endpoints, RING, hash_function)
    nums = {e.num for e in endpoints}
    assert set(np.unique(ring).tolist()) == nums


def test_equal_weights_share_the_ring_evenly():
    # one slot per endpoint and round: counts differ by at most one
    for hash_function in HashFunction:
        counts = np.bincount(maglev.build_ring(_v4_endpoints(7), RING, hash_function))[1:]
        assert counts.max() - counts.min() <= 1 and counts.sum() == RING


def test_v1_uses_weights_only_in_the_first_round():
    # Katran's v1 "weights": weight[i] slots in round one, then one per round,
    # so count - weight is the same for everyone (+-1 for the last round)
    weights = [1, 2, 3, 10, 50]
    endpoints = _v4_endpoints(5, weights=weights)
    counts = np.bincount(maglev.build_ring(endpoints, RING, HashFunction.MAGLEV))[1:]
    extra = counts - np.array(weights)
    assert extra.max() - extra.min() <= 1


def test_v2_shares_are_proportional_to_weights():
    # After t rounds endpoint i has floor(t * w_i / w_max) slots; the population
    # stops inside a round, and t itself is fixed by sum(counts) == R, so every
    # count is within 2n + 2 slots of R * w_i / W.
    weights = [1, 2, 3, 4, 10]
    endpoints = _v4_endpoints(5, base="10.2.0.0", weights=weights)
    counts = np.bincount(maglev.build_ring(endpoints, RING, HashFunction.MAGLEV_V2))[1:]
    ideal = RING * np.array(weights) / sum(weights)
    assert np.abs(counts - ideal).max() <= 2 * len(weights) + 2


@pytest.mark.parametrize("hash_function", list(HashFunction))
@pytest.mark.parametrize("count", [10, 100])
def test_removing_a_real_moves_few_other_positions(hash_function, count):
    # Maglev's disruption bound: positions of the removed real all move; the
    # survivors keep nearly all theirs.  Measured here: <= 0.3% (N=10) and
    # <= 0.7% (N=100) of the ring move between survivors; we allow 1%.
    endpoints = _v4_endpoints(count)
    before = maglev.build_ring(endpoints, RING, hash_function)
    for victim in (0, count // 2, count - 1):
        after = maglev.build_ring(endpoints[:victim] + endpoints[victim + 1:], RING, hash_function)
        removed = endpoints[victim].num
        assert not np.any(after == removed)
        survivors_moved = np.count_nonzero((before != after) & (before != removed))
        assert survivors_moved <= 0.01 * RING
        # and adding it back restores the old ring exactly
        assert np.array_equal(maglev.build_ring(endpoints, RING, hash_function), before)


def test_zero_weight_endpoint_is_not_in_the_ring():
    endpoints = _v4_endpoints(4, weights=[1, 0, 1, 1])
    for hash_function in HashFunction:
        ring = maglev.build_ring(endpoints, RING, hash_function)
        assert 2 not in set(np.unique(ring).tolist())
        assert np.array_equal(ring, maglev.build_ring([e for e in endpoints if e.weight], RING, hash_function))


def test_single_and_no_endpoint():
    only = [_ep(7, "10.0.0.7", weight=3)]
    assert np.all(maglev.build_ring(only, 101) == 7)
    assert np.all(maglev.build_ring([], 101) == 0)
    assert np.all(maglev.build_ring([_ep(7, "10.0.0.7", weight=0)], 101) == 0)


def test_input_list_is_not_modified():
    endpoints = _v4_endpoints(10)
    copy = list(endpoints)
    maglev.build_ring(endpoints, 101, HashFunction.MAGLEV)
    assert endpoints == copy


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"ring_size": 65536}, "ring_size"),  # not prime
        ({"ring_size": 1}, "ring_size"),
        ({"ring_size": True}, "ring_size"),
        ({"ring_size": 2**32}, "ring_size"),
        ({"hash_function": 5}, "hash_function"),
    ],
)
def test_bad_ring_arguments(kwargs, field):
    args = {"endpoints": _v4_endpoints(3), "ring_size": 101, "hash_function": HashFunction.MAGLEV}
    args.update(kwargs)
    with pytest.raises(ValidationError) as err:
        maglev.build_ring(**args)
    assert err.value.field == field


@pytest.mark.parametrize(
    "endpoints,field",
    [
        ([maglev.Endpoint(1, 1, 5), maglev.Endpoint(1, 1, 6)], "endpoints[1].num"),  # duplicate
        ([maglev.Endpoint(1, 1, 5), ("not", "an", "endpoint")], "endpoints[1]"),
        ([maglev.Endpoint(1, 1, 5), None], "endpoints[1]"),
    ],
)
def test_bad_endpoints(endpoints, field):
    with pytest.raises(ValidationError) as err:
        maglev.build_ring(endpoints, 101)
    assert err.value.field == field


@pytest.mark.parametrize(
    "args,field",
    [
        ((-1, 1, 5), "num"),
        ((2**31, 1, 5), "num"),
        ((1, -2, 5), "weight"),
        ((1, 2**32, 5), "weight"),
        ((1, 1, 2**64), "hash"),
        ((1, 1.5, 3), "weight"),
        (("1", 1, 3), "num"),
    ],
)
def test_endpoint_checks_its_fields(args, field):
    with pytest.raises(ValidationError) as err:
        maglev.Endpoint(*args)
    assert err.value.field == field


def test_endpoint_accepts_numpy_integers_and_compares_by_value():
    ep = maglev.Endpoint(np.uint32(3), 1, np.uint64(2**63))
    assert ep.hash == 2**63 and type(ep.num) is int
    assert ep == maglev.Endpoint(3, 1, 2**63) and len({ep, maglev.Endpoint(3, 1, 2**63)}) == 1


def test_is_prime():
    small = [n for n in range(60) if maglev.is_prime(n)]
    assert small == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59]
    assert maglev.is_prime(65537) and maglev.is_prime(4294967291)
    assert not maglev.is_prime(65536) and not maglev.is_prime(3215031751)  # a base-2,3,5,7 pseudoprime


# --------------------------------------------------------------------------- delta
def test_ring_delta_full_when_no_old_ring():
    new = maglev.build_ring(_v4_endpoints(3), 101)
    positions, values = maglev.ring_delta(None, new)
    assert np.array_equal(positions, np.arange(101)) and np.array_equal(values, new)
    assert positions.dtype == np.uint32 and values.dtype == np.uint32


def test_ring_delta_is_exactly_the_changed_positions():
    endpoints = _v4_endpoints(20)
    old = maglev.build_ring(endpoints, RING)
    new = maglev.build_ring(endpoints[1:], RING)
    positions, values = maglev.ring_delta(old, new)
    assert np.all(np.diff(positions.astype(np.int64)) > 0)
    assert np.array_equal(positions, np.flatnonzero(old != new))
    assert np.array_equal(values, new[positions])
    patched = old.copy()
    patched[positions] = values
    assert np.array_equal(patched, new)
    empty_pos, empty_val = maglev.ring_delta(new, new.copy())
    assert len(empty_pos) == 0 and len(empty_val) == 0


def test_ring_delta_rejects_size_mismatch():
    with pytest.raises(ValidationError) as err:
        maglev.ring_delta(np.zeros(13, np.uint32), np.zeros(17, np.uint32))
    assert err.value.field == "old"


@pytest.mark.parametrize("level", [0, 1])
def test_ring_writes_are_the_delta_with_keys_and_old_values(level):
    # the C pass (vector compare at level 1, one by one at 0) against numpy's delta:
    # sizes that are no multiple of 8, differences in the tail and at both ends
    rnd = np.random.default_rng(7 + level)
    with _simd_level(level):
        for size, changes in ((65537, 1000), (13, 3), (8, 8), (7, 1), (4099, 0), (65537, 65537)):
            old = rnd.integers(0, 300, size, dtype=np.uint32)
            new = old.copy()
            where = rnd.choice(size, changes, replace=False)
            new[where] += rnd.integers(1, 5, changes, dtype=np.uint32)
            if size > 8:
                new[[0, size - 1]] += 1
            base = 3 * size
            keys, values, before = maglev.ring_writes(old, new, base)
            positions, want = maglev.ring_delta(old, new)
            assert keys.dtype == values.dtype == before.dtype == np.uint32
            assert keys.tolist() == (positions + base).tolist()
            assert values.tolist() == want.tolist()
            assert before.tolist() == old[positions].tolist()


def test_ring_writes_numpy_fallback_equals_the_c_pass(monkeypatch):
    rnd = np.random.default_rng(3)
    old = rnd.integers(0, 50, 4099, dtype=np.uint32)
    new = old.copy()
    new[rnd.choice(4099, 60, replace=False)] += 1
    c_pass = maglev.ring_writes(old, new, 4099)
    monkeypatch.setattr(maglev, "NATIVE", False)
    fallback = maglev.ring_writes(old, new, 4099)
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(c_pass, fallback))


def test_ring_writes_without_old_ring_and_bad_arguments():
    new = np.arange(13, dtype=np.uint32) + 1
    keys, values, before = maglev.ring_writes(None, new, 26)
    assert keys.tolist() == list(range(26, 39)) and values.tolist() == new.tolist() and not before.any()
    with pytest.raises(ValidationError) as err:
        maglev.ring_writes(np.zeros(13, np.uint32), np.zeros(17, np.uint32))
    assert err.value.field == "old"
    with pytest.raises(ValidationError) as err:
        maglev.ring_writes(None, new, 2**32 - 5)
    assert err.value.field == "key_base"
    with pytest.raises(ValidationError) as err:
        maglev.ring_writes(None, new, -1)
    assert err.value.field == "key_base"


@needs_native
def test_large_ring_build_uses_the_fast_path():
    # guards against silently falling back to Python: 1000 reals well under 50 ms
    import time

    endpoints = _v4_endpoints(1000, base="10.3.0.0")
    best = min(_timed(maglev.build_ring, endpoints, RING, time) for _ in range(3))
    assert best < 0.05


def _timed(fn, endpoints, ring_size, time_module) -> float:
    start = time_module.perf_counter()
    fn(endpoints, ring_size)
    return time_module.perf_counter() - start


# --- the C core's level on this CPU (maglev.tune_native)

@pytest.mark.parametrize("ms, level", [
    ({0: 1.52, 1: 1.69}, 0),             # AVX2's gathers slower than the loop (AMD EPYC)
    ({0: 1.00, 1: 0.98}, 1),             # within 5 %: the highest level stays
    ({0: 0.83, 1: 0.67, 2: 0.57}, 2),    # AVX-512 fastest
    ({0: 1.00, 1: 0.60, 2: 0.90}, 1),    # the fastest, more than 5 % below the highest
    ({0: 0.30}, 0),                      # no vector level on this CPU
])
def test_choose_level_keeps_the_highest_unless_a_lower_is_clearly_faster(ms, level):
    assert maglev.choose_level(ms) == level


@pytest.fixture
def untuned(monkeypatch):
    """tune_native as in a fresh process; kn_maglev_simd put back afterwards."""
    from katran._native import lib

    monkeypatch.setattr(maglev, "_tuned", None)
    monkeypatch.delenv(maglev.SIMD_ENV, raising=False)
    old, lib.kn_maglev_simd = lib.kn_maglev_simd, 2  # the C core's default (a KatranLb may have tuned it)
    yield lib
    lib.kn_maglev_simd = old


@needs_native
def test_tune_native_times_the_levels_the_cpu_has_and_caps_at_its_choice(untuned):
    lib = untuned
    flags = _cpu_flags()
    have = [0] + ([1] if "avx2" in flags else []) + ([2] if {"avx2", "avx512f"} <= flags else [])
    before = list(lib.kn_maglev_builds)
    tuned = maglev.tune_native(rounds=3)
    assert tuned["source"] == "timed" and sorted(tuned["ms"]) == have
    assert all(ms > 0 for ms in tuned["ms"].values())
    assert tuned["level"] == maglev.choose_level(tuned["ms"]) and lib.kn_maglev_simd == tuned["level"]
    assert tuned["name"] == maglev.SIMD_LEVELS[tuned["level"]]
    # every level it timed really ran: one build to find it, then one a round
    ran = [lib.kn_maglev_builds[i] - before[i] for i in range(3)]
    assert [ran[lv] >= 4 for lv in have] == [True] * len(have)
    # once per process: a second call times nothing
    again = list(lib.kn_maglev_builds)
    assert maglev.tune_native() is tuned and list(lib.kn_maglev_builds) == again
    # the ring does not depend on the level chosen
    endpoints = _v4_endpoints(100)
    with _simd_level(0):
        one_by_one = maglev.build_ring(endpoints, RING)
    assert np.array_equal(maglev.build_ring(endpoints, RING), one_by_one)


@needs_native
def test_tune_native_env_caps_the_level_untimed(untuned, monkeypatch):
    lib = untuned
    monkeypatch.setenv(maglev.SIMD_ENV, "0")
    before = list(lib.kn_maglev_builds)
    tuned = maglev.tune_native()
    assert tuned == {"level": 0, "name": "one-by-one", "ms": {}, "source": "env"}
    assert lib.kn_maglev_simd == 0 and list(lib.kn_maglev_builds) == before
    maglev.build_ring(_v4_endpoints(100), RING)
    assert [lib.kn_maglev_builds[i] - before[i] for i in range(3)] == [1, 0, 0]


@needs_native
@pytest.mark.parametrize("value", ["7", "avx2", ""])
def test_tune_native_bad_env_names_the_variable_and_value(untuned, monkeypatch, value):
    lib = untuned
    monkeypatch.setenv(maglev.SIMD_ENV, value)
    cap = lib.kn_maglev_simd
    with pytest.raises(ValidationError) as exc:
        maglev.tune_native()
    assert exc.value.field == maglev.SIMD_ENV and repr(value) in str(exc.value)
    assert lib.kn_maglev_simd == cap and maglev._tuned is None  # nothing changed


def test_lb_start_tunes_the_c_core(monkeypatch):
    from katran import KatranConfig, KatranLb
    from katran.testing import FakeKernel

    calls = []
    monkeypatch.setattr(maglev, "tune_native", lambda: calls.append(1))
    lb = KatranLb(KatranConfig(testing=True, default_mac="00:00:de:ad:be:af"), kernel=FakeKernel())
    lb.start()
    try:
        assert calls == [1]
    finally:
        lb.close()


def test_lb_start_with_a_bad_simd_env_fails_before_loading(monkeypatch):
    from katran import KatranConfig, KatranLb
    from katran.testing import FakeKernel

    monkeypatch.setattr(maglev, "_tuned", None)
    monkeypatch.setenv(maglev.SIMD_ENV, "3")
    k = FakeKernel()
    lb = KatranLb(KatranConfig(testing=True, default_mac="00:00:de:ad:be:af"), kernel=k)
    with pytest.raises(ValidationError, match="KATRAN_MAGLEV_SIMD='3'"):
        lb.start()
    assert not lb.started and maglev._tuned is None
