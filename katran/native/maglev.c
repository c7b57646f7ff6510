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
 *
 * Speed: occupancy is a bitmap (8 KiB for R = 65537, stays in L1).  Most of
 * the probing happens while the last few slots are filled (~R/left probes per
 * claim), so once few slots are left we compute, for each free slot, after how
 * many probes the endpoint would reach it (modular inverse of its skip) and
 * take the nearest one: same result, far fewer steps.
 *
 * Before that, with n >= KN_SIMD_MIN_ENDPOINTS (and R < 2^31), vector code:
 *   - AVX-512 (claim_group): the next claims of up to 16 distinct endpoints
 *     are searched at once, one lane each, then committed in order (see there);
 *   - AVX2 only (probe_batched): a claim whose first probe hits a taken slot
 *     tests the next 8 positions of its sequence at once.
 * Both take the same slots with the same 32-bit pos as the one-by-one loop,
 * so the ring is identical; kn_maglev_simd caps the level (tests, benchmarks).
 */
#include <stdlib.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(KN_NO_SIMD)
#include <immintrin.h>
#define KN_HAVE_AVX2 1
#endif

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
    uint64_t low = f->magic * x;
    return (uint32_t)(((unsigned __int128)low * f->d) >> 64);
}

/* (a * b) % d for a, b < d < 2^32: Barrett reduction, q is at most 2 short. */
static inline uint32_t mulmod(uint64_t barrett, uint32_t d, uint32_t a, uint32_t b)
{
    uint64_t x = (uint64_t)a * b;
    uint64_t q = (uint64_t)(((unsigned __int128)x * barrett) >> 64);
    uint64_t r = x - q * d;
    while (r >= d)
        r -= d;
    return (uint32_t)r;
}

/* inverse of a modulo m (gcd must be 1), or 0 when there is none */
static uint32_t inverse_mod(uint32_t a, uint32_t m)
{
    int64_t t = 0, new_t = 1;
    int64_t r = m, new_r = a;
    while (new_r != 0) {
        int64_t q = r / new_r, tmp;
        tmp = t - q * new_t; t = new_t; new_t = tmp;
        tmp = r - q * new_r; r = new_r; new_r = tmp;
    }
    if (r != 1)
        return 0;
    return (uint32_t)(t < 0 ? t + m : t);
}

int kn_maglev_simd = 2;
unsigned long kn_maglev_builds[3];
/* below this many endpoints the one-by-one probe is faster (few, predictable probes) */
#define KN_SIMD_MIN_ENDPOINTS 8

typedef struct {
    uint32_t *ring;
    uint32_t *used;       /* occupancy bitmap */
    fastmod_t mod;
    uint64_t barrett;     /* UINT64_MAX / R */
    uint32_t size;        /* R */
    uint32_t left;        /* free slots */
    const uint32_t *nums;
    const uint32_t *skip; /* 1 <= skip < R */
    uint32_t *pos;        /* offset + next * skip, modulo 2^32 */
    uint32_t *cur;        /* pos % R, kept in step with pos */
    uint32_t *inv;        /* inverse of skip modulo R, 0 = not computed yet */
    uint32_t *free_slots; /* end game: the left free slots (unordered) */
    uint32_t endgame_at;  /* switch to the end game when left <= this */
    int endgame;
    const uint32_t *steps; /* BATCH + 1 per endpoint: j * skip % R, j = 0..BATCH; NULL = scalar */
} ring_state_t;

#define BATCH 8

static inline int taken(const uint32_t *used, uint32_t slot)
{
    return (int)((used[slot >> 5] >> (slot & 31)) & 1u);
}

/* pos + step and its slot, given slot = pos % R */
static inline uint32_t advance(const ring_state_t *st, uint32_t *pos, uint32_t slot, uint32_t step)
{
    uint32_t next = *pos + step;
    if (next < *pos) { /* wrapped past 2^32, as Katran's uint32 math does */
        slot = fastmod(&st->mod, next);
    } else {
        slot += step;
        slot = slot >= st->size ? slot - st->size : slot;
    }
    *pos = next;
    return slot;
}

/* Probe one by one from (pos, slot = pos % R); returns the first free slot
 * and leaves *pos at it. */
static inline uint32_t probe(const ring_state_t *st, uint32_t *pos, uint32_t slot, uint32_t step)
{
    while (taken(st->used, slot))
        slot = advance(st, pos, slot, step);
    return slot;
}

static void start_endgame(ring_state_t *st)
{
    uint32_t k = 0;
    const uint32_t words = (st->size + 31) / 32;
    for (uint32_t w = 0; w < words; w++) {
        uint32_t free_bits = ~st->used[w];
        if (w == words - 1 && st->size % 32)
            free_bits &= ((uint32_t)1 << (st->size % 32)) - 1; /* past the ring */
        while (free_bits) {
            st->free_slots[k++] = w * 32 + (uint32_t)__builtin_ctz(free_bits);
            free_bits &= free_bits - 1;
        }
    }
    st->endgame = 1;
}

/* End game: nearest free slot on endpoint i's sequence by arithmetic. */
static uint32_t endgame_probe(ring_state_t *st, size_t i, uint32_t *pos, uint32_t *index)
{
    const uint32_t size = st->size, step = st->skip[i];
    if (st->inv[i] == 0)
        st->inv[i] = inverse_mod(step, size);
    const uint32_t inv = st->inv[i];
    uint32_t p = *pos;
    uint32_t slot = st->cur[i];
    if (inv != 0) {
        uint32_t best = size, best_k = 0;
        for (uint32_t k = 0; k < st->left; k++) {
            uint32_t s = st->free_slots[k];
            uint32_t dist = s >= slot ? s - slot : s + (size - slot);
            uint32_t steps = mulmod(st->barrett, size, dist, inv);
            if (steps < best) {
                best = steps;
                best_k = k;
            }
        }
        /* valid unless pos wraps past 2^32 before getting there */
        if ((uint64_t)p + (uint64_t)best * step <= UINT32_MAX) {
            *pos = p + best * step;
            *index = best_k;
            return st->free_slots[best_k];
        }
    }
    slot = probe(st, pos, slot, step);
    for (uint32_t k = 0; k < st->left; k++) {
        if (st->free_slots[k] == slot) {
            *index = k;
            break;
        }
    }
    return slot;
}

static inline void take(ring_state_t *st, size_t i, uint32_t slot, uint32_t p)
{
    st->used[slot >> 5] |= (uint32_t)1 << (slot & 31);
    st->ring[slot] = st->nums[i];
    st->cur[i] = advance(st, &p, slot, st->skip[i]);
    st->pos[i] = p;
    st->left--;
}

static __attribute__((noinline)) uint32_t claim_endgame(ring_state_t *st, size_t i)
{
    uint32_t p = st->pos[i], index = 0;
    uint32_t slot = endgame_probe(st, i, &p, &index);
    st->free_slots[index] = st->free_slots[st->left - 1];
    take(st, i, slot, p);
    return st->left;
}

/* Endpoint i takes the next free slot on its probe sequence; returns the
 * number of slots still free. */
#ifdef KN_HAVE_AVX2
/* Probe BATCH slots of endpoint i's sequence at once (positions cur + j * skip % R
 * from the endpoint's table, bits by one gather), take the first free one: no
 * dependency from probe to probe and one branch per BATCH probes.  Same slot and
 * pos as probe(); falls back to it where pos would wrap past 2^32. */
__attribute__((target("avx2"), noinline)) static uint32_t probe_batched(const ring_state_t *st, size_t i,
                                                                  uint32_t *pos)
{
    const uint32_t size = st->size, step = st->skip[i];
    const uint32_t *steps = st->steps + i * (BATCH + 1);
    const __m256i offsets = _mm256_loadu_si256((const __m256i *)steps);
    const __m256i r = _mm256_set1_epi32((int)size);
    const __m256i low5 = _mm256_set1_epi32(31);
    const uint32_t step_batch = steps[BATCH];
    uint32_t c = st->cur[i], p = *pos;
    for (;;) {
        if (__builtin_expect((uint64_t)p + (uint64_t)BATCH * step > UINT32_MAX, 0)) {
            *pos = p;
            return probe(st, pos, c, step);
        }
        __m256i s = _mm256_add_epi32(_mm256_set1_epi32((int)c), offsets);
        s = _mm256_min_epu32(s, _mm256_sub_epi32(s, r)); /* s < 2R: s % R */
        __m256i words = _mm256_i32gather_epi32((const int *)st->used, _mm256_srli_epi32(s, 5), 4);
        __m256i bits = _mm256_srlv_epi32(words, _mm256_and_si256(s, low5));
        unsigned busy = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(bits, 31)));
        unsigned free_mask = ~busy & ((1u << BATCH) - 1);
        if (free_mask) {
            unsigned j = (unsigned)__builtin_ctz(free_mask);
            uint32_t slot = c + steps[j];
            *pos = p + j * step;
            return slot >= size ? slot - size : slot;
        }
        c += step_batch;
        c = c >= size ? c - size : c;
        p += BATCH * step;
    }
}
#endif

static inline __attribute__((always_inline)) uint32_t claim(ring_state_t *st, size_t i, const int simd)
{
    if (__builtin_expect(st->endgame, 0))
        return claim_endgame(st, i);
    uint32_t p = st->pos[i], slot = st->cur[i];
#ifdef KN_HAVE_AVX2
    if (simd && taken(st->used, slot)) /* first probe alone: mostly free early on */
        slot = probe_batched(st, i, &p);
    else
#else
    (void)simd;
#endif
        slot = probe(st, &p, slot, st->skip[i]);
    take(st, i, slot, p);
    if (__builtin_expect(st->left == st->endgame_at, 0))
        start_endgame(st);
    return st->left;
}

static inline __attribute__((always_inline)) void round_robin(ring_state_t *st, size_t n, const int simd)
{
    for (;;) {
        for (size_t i = 0; i < n; i++) {
            if (claim(st, i, simd) == 0)
                return;
        }
    }
}

static inline __attribute__((always_inline)) void populate_v1(ring_state_t *st, size_t n, const uint32_t *weights, const int simd)
{
    /* first round: weight[i] slots each */
    for (size_t i = 0; i < n; i++) {
        for (uint32_t w = 0; w < weights[i]; w++) {
            if (claim(st, i, simd) == 0)
                return;
        }
    }
    /* then round-robin, one slot per endpoint and round */
    round_robin(st, n, simd);
}

static inline __attribute__((always_inline)) void populate_v2(ring_state_t *st, size_t n, const uint32_t *weights, uint32_t *acc, const int simd)
{
    uint32_t max_weight = 0, min_weight = UINT32_MAX;
    for (size_t i = 0; i < n; i++) {
        if (weights[i] > max_weight)
            max_weight = weights[i];
        if (weights[i] < min_weight)
            min_weight = weights[i];
    }
    if (min_weight == max_weight) {
        /* equal weights: everyone claims in every round */
        round_robin(st, n, simd);
        return;
    }
    for (;;) {
        for (size_t i = 0; i < n; i++) {
            acc[i] += weights[i];
            if (acc[i] < max_weight)
                continue;
            acc[i] -= max_weight;
            if (claim(st, i, simd) == 0)
                return;
        }
    }
}


#ifdef KN_HAVE_AVX2
/* ---- claims of up to GROUP distinct endpoints at once (AVX-512) ----
 * The claim order does not depend on the ring (only on the weights), so the
 * next claims are known in advance.  For a group of distinct endpoints, one
 * vector lane each, search every lane's sequence from the state at the start
 * of the group: a lane's answer is the first slot of its sequence that was
 * free then.  Committed in claim order, it is still right unless an earlier
 * claim of the same group took exactly that slot (the slots it passed were
 * taken already and stay taken): then that claim goes on probing one by one
 * from there.  Lanes still searching after `limit` steps go on the same way. */
#define GROUP 16

typedef struct {
    size_t n, i;
    const uint32_t *weights;
    uint32_t *acc;
    uint32_t max_weight, rep;
    int version, first_round, equal;
} schedule_t;

/* the endpoint of the next claim (populate_v1 / populate_v2's order) */
static inline size_t schedule_next(schedule_t *s)
{
    if (s->version == 0 && s->first_round) {
        while (s->rep == s->weights[s->i]) {
            s->rep = 0;
            if (++s->i == s->n) {
                s->first_round = 0;
                s->i = 0;
                break;
            }
        }
        if (s->first_round) {
            s->rep++;
            return s->i;
        }
    }
    for (;;) {
        size_t i = s->i;
        s->i = i + 1 == s->n ? 0 : i + 1;
        if (s->version == 0 || s->equal)
            return i;
        s->acc[i] += s->weights[i];
        if (s->acc[i] >= s->max_weight) {
            s->acc[i] -= s->max_weight;
            return i;
        }
    }
}

__attribute__((target("avx512f"))) static unsigned claim_group(ring_state_t *st, const uint32_t *eps,
                                                               unsigned k, unsigned limit)
{
    const __mmask16 all = (__mmask16)((1u << k) - 1);
    const __m512i zero = _mm512_setzero_si512(), low5 = _mm512_set1_epi32(31), one = _mm512_set1_epi32(1);
    const __m512i r = _mm512_set1_epi32((int)st->size);
    const __m512i idx = _mm512_maskz_loadu_epi32(all, eps);
    __m512i cur = _mm512_mask_i32gather_epi32(zero, all, idx, st->cur, 4);
    __m512i pos = _mm512_mask_i32gather_epi32(zero, all, idx, st->pos, 4);
    const __m512i skip = _mm512_mask_i32gather_epi32(zero, all, idx, st->skip, 4);
    __m512i found_cur = zero, found_pos = zero;
    __mmask16 searching = all;
    for (unsigned step = 0;; step++) {
        __m512i words = _mm512_mask_i32gather_epi32(zero, all, _mm512_srli_epi32(cur, 5), st->used, 4);
        __m512i bits = _mm512_srlv_epi32(words, _mm512_and_epi32(cur, low5));
        __mmask16 busy = _mm512_test_epi32_mask(bits, one);
        __mmask16 hit = searching & ~busy;
        found_cur = _mm512_mask_mov_epi32(found_cur, hit, cur);
        found_pos = _mm512_mask_mov_epi32(found_pos, hit, pos);
        searching &= busy;
        if (!searching || step == limit)
            break;
        __m512i next_pos = _mm512_add_epi32(pos, skip);
        __m512i next_cur = _mm512_add_epi32(cur, skip);
        next_cur = _mm512_min_epu32(next_cur, _mm512_sub_epi32(next_cur, r)); /* < 2R: % R */
        __mmask16 wrapped = _mm512_mask_cmplt_epu32_mask(all, next_pos, pos);
        pos = next_pos;
        cur = next_cur;
        if (__builtin_expect(wrapped != 0, 0)) { /* pos passed 2^32: slot = pos % R afresh */
            uint32_t c[GROUP], p[GROUP];
            _mm512_storeu_si512(c, cur);
            _mm512_storeu_si512(p, pos);
            for (unsigned j = 0; j < k; j++) {
                if (wrapped & (1u << j))
                    c[j] = fastmod(&st->mod, p[j]);
            }
            cur = _mm512_loadu_si512(c);
        }
    }
    /* lanes still searching: from the (untested) next position of their sequence */
    found_cur = _mm512_mask_mov_epi32(found_cur, searching, cur);
    found_pos = _mm512_mask_mov_epi32(found_pos, searching, pos);
    uint32_t lane_cur[GROUP], lane_pos[GROUP];
    _mm512_storeu_si512(lane_cur, found_cur);
    _mm512_storeu_si512(lane_pos, found_pos);
    for (unsigned j = 0; j < k; j++) {
        size_t i = eps[j];
        uint32_t slot = lane_cur[j], p = lane_pos[j];
        if (taken(st->used, slot))
            slot = probe(st, &p, slot, st->skip[i]);
        take(st, i, slot, p);
        if (st->left == 0 || st->left == st->endgame_at)
            return j + 1;
    }
    return k;
}

/* every claim by groups until the end game (then one by one) */
__attribute__((target("avx512f"))) static void populate_groups(ring_state_t *st, size_t n, const uint32_t *weights,
                                                               uint32_t *acc, int version, uint32_t *stamp)
{
    uint32_t group_id = 0;
    schedule_t s = {.n = n, .i = 0, .weights = weights, .acc = acc, .rep = 0, .version = version,
                    .first_round = 1, .equal = 1};
    s.max_weight = 0;
    for (size_t i = 0; i < n; i++) {
        if (weights[i] > s.max_weight)
            s.max_weight = weights[i];
        if (weights[i] != weights[0])
            s.equal = 0;
    }
    const unsigned width = n < GROUP ? (unsigned)n : GROUP;
    for (size_t i = 0; i < n; i++)
        stamp[i] = 0;
    uint32_t queue[2 * GROUP];
    unsigned queued = 0;
    while (st->left > st->endgame_at) {
        /* the next claims, up to the first endpoint seen twice */
        while (queued < width)
            queue[queued++] = (uint32_t)schedule_next(&s);
        unsigned k = 0;
        group_id++;
        while (k < width && stamp[queue[k]] != group_id)
            stamp[queue[k++]] = group_id;
        unsigned limit = 2 * (st->size / st->left) + 8; /* ~2x the expected steps */
        unsigned done = claim_group(st, queue, k, limit);
        for (unsigned j = done; j < queued; j++)
            queue[j - done] = queue[j];
        queued -= done;
        if (st->left == 0)
            return;
    }
    if (st->left == st->endgame_at && !st->endgame)
        start_endgame(st);
    /* the end game: the queued claims first, then on with the schedule */
    for (unsigned j = 0; j < queued; j++) {
        if (claim_endgame(st, queue[j]) == 0)
            return;
    }
    while (claim_endgame(st, schedule_next(&s)) != 0)
        ;
}
#endif

static void populate(ring_state_t *st, size_t n, const uint32_t *weights, uint32_t *acc, int version)
{
    if (version == 0)
        populate_v1(st, n, weights, 0);
    else
        populate_v2(st, n, weights, acc, 0);
}

#ifdef KN_HAVE_AVX2
__attribute__((target("avx2"))) static void populate_avx2(ring_state_t *st, size_t n, const uint32_t *weights,
                                                          uint32_t *acc, int version)
{
    if (version == 0)
        populate_v1(st, n, weights, 1);
    else
        populate_v2(st, n, weights, acc, 1);
}
#endif

/* left-slot count below which the end game is cheaper: ~sqrt(R / 3) */
static uint32_t endgame_threshold(uint32_t size)
{
    uint32_t t = 1;
    while ((uint64_t)t * t * 3 < size)
        t++;
    return t;
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

    const uint32_t endgame_at = endgame_threshold(ring_size);
    uint32_t *used = calloc(((size_t)ring_size + 31) / 32, sizeof(uint32_t));
    uint32_t *scratch = calloc(6 * n + endgame_at, sizeof(uint32_t));
    if (used == NULL || scratch == NULL) {
        free(used);
        free(scratch);
        return -2;
    }
    uint32_t *skip = scratch;
    uint32_t *pos = scratch + n;
    uint32_t *acc = scratch + 2 * n;
    uint32_t *inv = scratch + 3 * n;
    uint32_t *cur = scratch + 4 * n;
    uint32_t *stamp = scratch + 5 * n; /* populate_groups */
    (void)stamp;
    uint32_t *free_slots = scratch + 6 * n;
    uint32_t *steps = NULL;
    int level = 0; /* 0: one by one, 1: AVX2 batches of a claim's probes, 2: AVX-512 groups of claims */
#ifdef KN_HAVE_AVX2
    /* slot arithmetic in 32 bits needs 2R < 2^32 */
    if (n >= KN_SIMD_MIN_ENDPOINTS && ring_size < 0x80000000u) {
        if (kn_maglev_simd >= 2 && __builtin_cpu_supports("avx512f"))
            level = 2;
        else if (kn_maglev_simd >= 1 && __builtin_cpu_supports("avx2"))
            level = 1;
    }
    if (level == 1) {
        steps = malloc(n * (BATCH + 1) * sizeof(uint32_t));
        if (steps == NULL) {
            free(used);
            free(scratch);
            return -2;
        }
    }
#endif
    for (size_t i = 0; i < n; i++) {
        pos[i] = cur[i] = (uint32_t)(kn_murmur3_x64_64(hashes[i], 42u, 0u) % ring_size);
        skip[i] = (uint32_t)(kn_murmur3_x64_64(hashes[i], 2718281828u, 2307u) % (ring_size - 1) + 1);
        if (steps != NULL) {
            uint32_t s = 0;
            for (unsigned j = 0; j <= BATCH; j++) {
                steps[i * (BATCH + 1) + j] = s;
                s += skip[i];
                s = s >= ring_size ? s - ring_size : s;
            }
        }
    }

    ring_state_t st = {
        .ring = ring, .used = used, .mod = fastmod_init(ring_size),
        .barrett = UINT64_MAX / ring_size, .size = ring_size, .left = ring_size,
        .nums = nums, .skip = skip, .pos = pos, .cur = cur, .inv = inv,
        .free_slots = free_slots, .endgame_at = endgame_at, .endgame = 0, .steps = steps,
    };
#ifdef KN_HAVE_AVX2
    if (level == 2)
        populate_groups(&st, n, weights, acc, version, stamp);
    else if (level == 1)
        populate_avx2(&st, n, weights, acc, version);
    else
#endif
        populate(&st, n, weights, acc, version);
    kn_maglev_builds[level]++;

    free(used);
    free(scratch);
    free(steps);
    return 0;
}

static inline size_t delta_tail(const uint32_t *old, const uint32_t *new_ring, uint32_t from, uint32_t size,
                                uint32_t key_base, uint32_t *keys, uint32_t *values, uint32_t *before,
                                size_t count)
{
    for (uint32_t i = from; i < size; i++) {
        if (old[i] != new_ring[i]) {
            keys[count] = key_base + i;
            values[count] = new_ring[i];
            before[count] = old[i];
            count++;
        }
    }
    return count;
}

#ifdef KN_HAVE_AVX2
/* 8 slots per compare; the differing ones found from the compare's bit mask */
__attribute__((target("avx2"))) static size_t delta_avx2(const uint32_t *old, const uint32_t *new_ring,
                                                         uint32_t size, uint32_t key_base, uint32_t *keys,
                                                         uint32_t *values, uint32_t *before)
{
    size_t count = 0;
    uint32_t i = 0;
    for (; size - i >= 8; i += 8) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(old + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(new_ring + i));
        unsigned same = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(a, b)));
        unsigned diff = ~same & 0xffu;
        while (diff) {
            uint32_t j = i + (uint32_t)__builtin_ctz(diff);
            keys[count] = key_base + j;
            values[count] = new_ring[j];
            before[count] = old[j];
            count++;
            diff &= diff - 1;
        }
    }
    return delta_tail(old, new_ring, i, size, key_base, keys, values, before, count);
}
#endif

size_t kn_ring_delta(const uint32_t *old, const uint32_t *new_ring, uint32_t size, uint32_t key_base,
                     uint32_t *keys, uint32_t *values, uint32_t *before)
{
#ifdef KN_HAVE_AVX2
    if (kn_maglev_simd >= 1 && __builtin_cpu_supports("avx2"))
        return delta_avx2(old, new_ring, size, key_base, keys, values, before);
#endif
    return delta_tail(old, new_ring, 0, size, key_base, keys, values, before, 0);
}
