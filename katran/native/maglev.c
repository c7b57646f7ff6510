/*
 * Maglev ring population with Katran's exact semantics:
 *   - permutation of endpoint e: offset = M(e.hash, 42, 0) % R,
 *     skip = M(e.hash, 2718281828, 2307) % (R - 1) + 1, M = MurmurHash3;
 *   - the probe position for the k-th try is (offset + k * skip) computed in
 *     32-bit unsigned arithmetic (so it wraps modulo 2^32), then % R;
 *   - v1: in the first round endpoint i claims weight[i] slots, afterwards one
 *     slot per round; v2: an endpoint claims a slot in a round when its
 *     accumulated weight reaches the largest weight (which is then subtracted);
 *   - one endpoint owns the whole ring; population stops when R slots are set.
 */
#include <stdlib.h>

#include "katran_native.h"

/* x % d for 32-bit x, d via one 64x64 multiply-high (Lemire's fastmod). */
typedef struct {
    uint64_t magic;
    uint32_t d;
} fastmod_t;

static inline fastmod_t fastmod_init(uint32_t d)
{
    fastmod_t f = {UINT64_MAX / d + 1, d};
    return f;
}

static inline uint32_t fastmod(const fastmod_t *f, uint32_t x)
{
#if defined(__SIZEOF_INT128__)
    uint64_t low = f->magic * x;
    return (uint32_t)(((unsigned __int128)low * f->d) >> 64);
#else
    return x % f->d;
#endif
}

/* Population state: the ring, an occupancy bitmap (R bits: 8 KiB for
 * R = 65537, so probing stays in L1) and per-endpoint probe state. */
typedef struct {
    uint32_t *ring;
    uint64_t *used;
    fastmod_t mod;
    uint32_t size;        /* R */
    uint32_t left;        /* free slots */
    const uint32_t *nums;
    const uint32_t *skip; /* 1 <= skip < R */
    uint32_t *pos;        /* offset + next * skip, modulo 2^32 */
} ring_state_t;

/* Endpoint i takes the next free slot on its probe sequence; returns the
 * number of slots still free.  The slot is pos % R; stepping pos by skip
 * steps the slot by skip (mod R) unless pos wraps past 2^32, in which case
 * the slot is recomputed (Katran's uint32 arithmetic wraps there too). */
static inline uint32_t claim(ring_state_t *st, size_t i)
{
    uint32_t p = st->pos[i];
    const uint32_t step = st->skip[i];
    const uint32_t size = st->size;
    uint32_t slot = fastmod(&st->mod, p);
    while ((st->used[slot >> 6] >> (slot & 63)) & 1u) {
        uint32_t next = p + step;
        if (next < p) {
            slot = fastmod(&st->mod, next);
        } else {
            slot += step;
            slot = slot >= size ? slot - size : slot;
        }
        p = next;
    }
    st->used[slot >> 6] |= (uint64_t)1 << (slot & 63);
    st->ring[slot] = st->nums[i];
    st->pos[i] = p + step;
    return --st->left;
}

static void populate_v1(ring_state_t *st, size_t n, const uint32_t *weights)
{
    /* first round: weight[i] slots each */
    for (size_t i = 0; i < n; i++) {
        for (uint32_t w = 0; w < weights[i]; w++) {
            if (claim(st, i) == 0)
                return;
        }
    }
    /* then round-robin, one slot per endpoint and round */
    for (;;) {
        for (size_t i = 0; i < n; i++) {
            if (claim(st, i) == 0)
                return;
        }
    }
}

static void populate_v2(ring_state_t *st, size_t n, const uint32_t *weights, uint32_t *acc)
{
    uint32_t max_weight = 0;
    for (size_t i = 0; i < n; i++) {
        if (weights[i] > max_weight)
            max_weight = weights[i];
    }
    for (;;) {
        for (size_t i = 0; i < n; i++) {
            acc[i] += weights[i];
            if (acc[i] < max_weight)
                continue;
            acc[i] -= max_weight;
            if (claim(st, i) == 0)
                return;
        }
    }
}

int kn_maglev_ring(const uint64_t *hashes, const uint32_t *nums,
                   const uint32_t *weights, size_t n, uint32_t ring_size,
                   int version, uint32_t *ring)
{
    if (n == 0 || ring_size < 2 || (version != 0 && version != 1))
        return -1;
    if (n == 1) {
        for (uint32_t s = 0; s < ring_size; s++)
            ring[s] = nums[0];
        return 0;
    }

    uint64_t *used = calloc(((size_t)ring_size + 63) / 64, sizeof(uint64_t));
    uint32_t *scratch = malloc(3 * n * sizeof(uint32_t));
    if (used == NULL || scratch == NULL) {
        free(used);
        free(scratch);
        return -2;
    }
    uint32_t *skip = scratch;
    uint32_t *pos = scratch + n;
    uint32_t *acc = scratch + 2 * n;
    for (size_t i = 0; i < n; i++) {
        pos[i] = (uint32_t)(kn_murmur3_x64_64(hashes[i], 42u, 0u) % ring_size);
        skip[i] = (uint32_t)(kn_murmur3_x64_64(hashes[i], 2718281828u, 2307u) % (ring_size - 1) + 1);
        acc[i] = 0;
    }

    ring_state_t st = {ring, used, fastmod_init(ring_size), ring_size, ring_size, nums, skip, pos};
    if (version == 0)
        populate_v1(&st, n, weights);
    else
        populate_v2(&st, n, weights, acc);

    free(used);
    free(scratch);
    return 0;
}
