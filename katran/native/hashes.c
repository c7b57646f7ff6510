/*
 * Hash functions the control plane needs bit-for-bit:
 *   - MurmurHash3 (x64, two-word input) used by Katran to derive the Maglev
 *     permutation of an endpoint;
 *   - folly's IPAddress::hash() building blocks (FNV-1 32 with sign-extended
 *     bytes, SpookyHash V2 128-bit short path, CityHash's 128->64 reducer);
 *   - the Linux kernel jhash used by the BPF program for flow hashing.
 * Written from the algorithms' public descriptions; all arithmetic is on
 * fixed-width unsigned integers, so wrap-around is well defined.
 */
#include <string.h>

#include "katran_native.h"

static inline uint64_t rot64(uint64_t v, unsigned r)
{
    return (v << r) | (v >> (64u - r));
}

static inline uint32_t rot32(uint32_t v, unsigned r)
{
    return (v << r) | (v >> ((32u - r) & 31u));
}

static inline uint64_t load_u64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline uint32_t load_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* ---------------------------------------------------------------- murmur3 */

#define MM_C1 0x87c37b91114253d5ULL
#define MM_C2 0x4cf5ad432745937fULL

static inline uint64_t mm_fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

uint64_t kn_murmur3_x64_64(uint64_t a, uint64_t b, uint32_t seed)
{
    /* One 16-byte block (words a, b), no tail, total length 16. */
    uint64_t h1 = seed, h2 = seed;

    a = rot64(a * MM_C1, 31) * MM_C2;
    h1 ^= a;
    h1 = (rot64(h1, 27) + h2) * 5 + 0x52dce729ULL;

    b = rot64(b * MM_C2, 33) * MM_C1;
    h2 ^= b;
    h2 = (rot64(h2, 31) + h1) * 5 + 0x38495ab5ULL;

    h1 ^= 16;
    h2 ^= 16;
    h1 += h2;
    h2 += h1;
    h1 = mm_fmix64(h1);
    h2 = mm_fmix64(h2);
    return h1 + h2; /* low half of the 128-bit result after the last h1 += h2 */
}

/* ------------------------------------------------------------------ folly */

uint64_t kn_hash_128_to_64(uint64_t upper, uint64_t lower)
{
    const uint64_t mul = 0x9ddfea08eb382d69ULL;
    uint64_t x = (lower ^ upper) * mul;
    x ^= x >> 47;
    uint64_t y = (upper ^ x) * mul;
    y ^= y >> 47;
    return y * mul;
}

uint32_t kn_fnv32_folly(const uint8_t *buf, size_t len)
{
    uint32_t h = 2166136261u; /* FNV offset basis */
    for (size_t i = 0; i < len; i++) {
        h *= 16777619u; /* FNV prime: multiply first (FNV-1) ... */
        /* ... then xor the byte as a *signed* char widened to 32 bits. */
        h ^= (uint32_t)(int32_t)(int8_t)buf[i];
    }
    return h;
}

#define SPOOKY_CONST 0xdeadbeefdeadbeefULL

static inline void spooky_short_mix(uint64_t *s)
{
    /* s[0..3] = h0..h3; rotation schedule of SpookyHash V2 ShortMix */
    static const unsigned rot[12] = {50, 52, 30, 41, 54, 48, 38, 37, 62, 34, 5, 36};
    for (int r = 0; r < 12; r++) {
        int i = (r + 2) & 3;      /* word rotated and added to */
        int j = (r + 3) & 3;      /* word added */
        int k = r & 3;            /* word xored */
        s[i] = rot64(s[i], rot[r]);
        s[i] += s[j];
        s[k] ^= s[i];
    }
}

static inline void spooky_short_end(uint64_t *s)
{
    static const unsigned rot[11] = {15, 52, 26, 51, 28, 9, 47, 54, 32, 25, 63};
    for (int r = 0; r < 11; r++) {
        int i = (r + 3) & 3;      /* word xored then added to */
        int j = (r + 2) & 3;      /* word rotated */
        s[i] ^= s[j];
        s[j] = rot64(s[j], rot[r]);
        s[i] += s[j];
    }
}

int kn_spooky_v2_hash128(const uint8_t *msg, size_t len, uint64_t *h1, uint64_t *h2)
{
    if (len >= 192)
        return -1; /* only the short path is implemented */
    uint64_t s[4] = {*h1, *h2, SPOOKY_CONST, SPOOKY_CONST};
    const uint8_t *p = msg;
    size_t rest = len % 32;

    if (len > 15) {
        for (size_t blocks = len / 32; blocks; blocks--, p += 32) {
            s[2] += load_u64(p);
            s[3] += load_u64(p + 8);
            spooky_short_mix(s);
            s[0] += load_u64(p + 16);
            s[1] += load_u64(p + 24);
        }
        if (rest >= 16) {
            s[2] += load_u64(p);
            s[3] += load_u64(p + 8);
            spooky_short_mix(s);
            p += 16;
            rest -= 16;
        }
    }

    s[3] += (uint64_t)len << 56;
    if (rest == 0) {
        s[2] += SPOOKY_CONST;
        s[3] += SPOOKY_CONST;
    } else {
        /* tail bytes 0..7 go little-endian into c, bytes 8..14 into d */
        uint64_t c = 0, d = 0;
        for (size_t i = 0; i < rest; i++) {
            if (i < 8)
                c |= (uint64_t)p[i] << (8 * i);
            else
                d |= (uint64_t)p[i] << (8 * (i - 8));
        }
        s[2] += c;
        s[3] += d;
    }
    spooky_short_end(s);
    *h1 = s[0];
    *h2 = s[1];
    return 0;
}

uint64_t kn_ip_hash_v4(const uint8_t *addr4)
{
    /* hash_combine(AF_INET, fnv32) with identity std::hash for integers */
    return kn_hash_128_to_64(2u, kn_fnv32_folly(addr4, 4));
}

uint64_t kn_ip_hash_v6(const uint8_t *addr16)
{
    static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(addr16, v4_mapped, sizeof(v4_mapped)) == 0)
        return kn_ip_hash_v4(addr16 + 12); /* ::ffff:a.b.c.d hashes as a.b.c.d */
    uint64_t h1 = 0, h2 = 0;
    kn_spooky_v2_hash128(addr16, 16, &h1, &h2);
    /* hash_combine(AF_INET6, h1, h2) folds right to left */
    return kn_hash_128_to_64(10u, kn_hash_128_to_64(h1, h2));
}

/* ------------------------------------------------------------------ jhash */

#define JHASH_INITVAL 0xdeadbeefu

#define JH_MIX(a, b, c)                          \
    do {                                         \
        a -= c; a ^= rot32(c, 4);  c += b;       \
        b -= a; b ^= rot32(a, 6);  a += c;       \
        c -= b; c ^= rot32(b, 8);  b += a;       \
        a -= c; a ^= rot32(c, 16); c += b;       \
        b -= a; b ^= rot32(a, 19); a += c;       \
        c -= b; c ^= rot32(b, 4);  b += a;       \
    } while (0)

#define JH_FINAL(a, b, c)                        \
    do {                                         \
        c ^= b; c -= rot32(b, 14);               \
        a ^= c; a -= rot32(c, 11);               \
        b ^= a; b -= rot32(a, 25);               \
        c ^= b; c -= rot32(b, 16);               \
        a ^= c; a -= rot32(c, 4);                \
        b ^= a; b -= rot32(a, 14);               \
        c ^= b; c -= rot32(b, 24);               \
    } while (0)

uint32_t kn_jhash(const uint8_t *key, uint32_t len, uint32_t initval)
{
    uint32_t a, b, c;
    a = b = c = JHASH_INITVAL + len + initval;

    while (len > 12) {
        a += load_u32(key);
        b += load_u32(key + 4);
        c += load_u32(key + 8);
        JH_MIX(a, b, c);
        len -= 12;
        key += 12;
    }
    if (len == 0)
        return c;
    /* last 1..12 bytes, little-endian into a, b, c */
    uint32_t w[3] = {0, 0, 0};
    for (uint32_t i = 0; i < len; i++)
        w[i / 4] += (uint32_t)key[i] << (8 * (i % 4));
    a += w[0];
    b += w[1];
    c += w[2];
    JH_FINAL(a, b, c);
    return c;
}

uint32_t kn_jhash_2words(uint32_t a, uint32_t b, uint32_t initval)
{
    uint32_t base = initval + JHASH_INITVAL + (2u << 2);
    uint32_t c = base;
    a += base;
    b += base;
    JH_FINAL(a, b, c);
    return c;
}
