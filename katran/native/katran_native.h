/*
 * katran._native: the hot paths of the control plane, in C.
 *
 * - the hashes Katran (and folly) use to place reals on a Maglev ring;
 * - the Maglev ring population loop (v1 and v2);
 * - the kernel's jhash, as the BPF program uses it (for tests and tools).
 *
 * Plain C99, no dependencies; compiled by cffi (see katran/_native_build.py).
 */
#ifndef KATRAN_NATIVE_H
#define KATRAN_NATIVE_H

#include <stddef.h>
#include <stdint.h>

/* MurmurHash3 x64 over exactly two 64-bit words, folded to 64 bits. */
uint64_t kn_murmur3_x64_64(uint64_t a, uint64_t b, uint32_t seed);

/* folly::hash::hash_128_to_64 (CityHash's Hash128to64). */
uint64_t kn_hash_128_to_64(uint64_t upper, uint64_t lower);

/* folly::hash::fnv32_buf: FNV-1 with bytes sign-extended (folly's "BROKEN" alias). */
uint32_t kn_fnv32_folly(const uint8_t *buf, size_t len);

/* folly SpookyHashV2::Hash128 for len < 192 (the "short" path); seeds in, hash out. */
int kn_spooky_v2_hash128(const uint8_t *msg, size_t len, uint64_t *h1, uint64_t *h2);

/* folly::IPAddressV4::hash() / IPAddressV6::hash() of network-order address bytes. */
uint64_t kn_ip_hash_v4(const uint8_t *addr4);
uint64_t kn_ip_hash_v6(const uint8_t *addr16);

/* Linux jhash (lookup3) as in the kernel's linux/jhash.h. */
uint32_t kn_jhash(const uint8_t *key, uint32_t len, uint32_t initval);
uint32_t kn_jhash_2words(uint32_t a, uint32_t b, uint32_t initval);

/*
 * Maglev ring population.  The n endpoints must already be in Katran's order
 * (ascending hash) and have weight > 0.  version 0 = Maglev (v1), 1 = MaglevV2.
 * ring[ring_size] receives endpoint nums.  Returns 0, -1 on bad arguments
 * (n == 0, ring_size < 2, unknown version), -2 when out of memory.
 */
int kn_maglev_ring(const uint64_t *hashes, const uint32_t *nums,
                   const uint32_t *weights, size_t n, uint32_t ring_size,
                   int version, uint32_t *ring);

/*
 * The ch_rings writes from old to new ring (size slots each): for every
 * position p where they differ, in ascending order, keys[] = key_base + p,
 * values[] = new_ring[p], before[] = old[p] (each array room for size).
 * Returns how many.  key_base + p must fit in 32 bits.
 */
size_t kn_ring_delta(const uint32_t *old, const uint32_t *new_ring, uint32_t size, uint32_t key_base,
                     uint32_t *keys, uint32_t *values, uint32_t *before);

/* The highest vector level kn_maglev_ring may use (where the CPU has it):
 * 2 (default) AVX-512 groups of claims, 1 AVX2 batches of probes, 0 none.
 * Every level gives the same ring (for tests and benchmarks). */
extern int kn_maglev_simd;
/* rings built so far at each level (tests: the vector code really ran) */
extern unsigned long kn_maglev_builds[3];

#endif
