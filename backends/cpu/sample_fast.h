/*
 * sample_fast.h — the fast sample kernel's building blocks, one table per
 * instruction set (portable C in sample_fast.c, AVX2 in sample_avx2.c).
 * Every entry returns the same bits in every table; the tests check it.
 */
#ifndef DUET_SAMPLE_FAST_H
#define DUET_SAMPLE_FAST_H

#include <stdint.h>

#include "cpu_sample.h"
#include "sample_math.h"

enum {
    DUET_SAMPLE_BUCKETS = 2048,
    /* Level-1 bucket of a key (the bits of |d|): key >> 17 (exponent and 6
     * mantissa bits) less the bits of 2^-13, clamped to [0, 2047]; so
     * |d| < 2^-13 shares bucket 0 and large |d| the last one. An LM's
     * row spreads over hundreds of buckets. */
    DUET_SAMPLE_L1_SHIFT = 17,
    DUET_SAMPLE_L1_BASE = 0x39000000 >> 17,
};

static inline uint32_t duet_sample_l1_bucket(uint32_t key)
{
    uint32_t b = key >> DUET_SAMPLE_L1_SHIFT;
    if (b < DUET_SAMPLE_L1_BASE)
        return 0;
    b -= DUET_SAMPLE_L1_BASE;
    return b < DUET_SAMPLE_BUCKETS - 1 ? b : DUET_SAMPLE_BUCKETS - 1;
}

/* One row's view for the building blocks: token i is a candidate when
 * d = l[i] * inv_t - m satisfies d > -inf and d >= log_min_p (NaN never),
 * and heavy when its weight trunc(dexp(d) * 2^40) is not 0. */
typedef struct duet_sample_view {
    const float *l;
    int n;
    float inv_t, m, log_min_p;
} duet_sample_view;

typedef struct duet_sample_fast_isa {
    /* l[i] = x[i], NaN replaced by -inf; returns the argmax of l. */
    int32_t (*copy_clean)(const float *x, float *l, int n);
    /* Index of the largest l; lowest index on ties; NaN never wins. */
    int32_t (*argmax)(const float *l, int n);
    /* Level-1 histogram (arrays of DUET_SAMPLE_BUCKETS, added to) of the
     * candidates with dexp(d) * 2^40 >= vmin (vmin >= 1): count and weight
     * per bucket, and how many there are (*n_hist); also the number of
     * heavy candidates (*n_heavy) and the weight of all (*total). */
    void (*hist_l1)(const duet_sample_view *v, float vmin, uint32_t *count, uint64_t *mass,
                    uint64_t *n_hist, uint64_t *n_heavy, uint64_t *total);
    /* counts[j] = #{candidates with d >= t[j]}, j < nt <= 16. */
    void (*count_at)(const duet_sample_view *v, const float *t, int nt, uint64_t *counts);
    /* Ids, ascending, of the candidates whose key is in [lo, hi]: writes
     * the first cap of them, returns how many there are. */
    uint32_t (*collect)(const duet_sample_view *v, uint32_t lo, uint32_t hi, int32_t *ids,
                        uint32_t cap);
    /* Contenders: candidates with d + GMAX >= best and key <= max_key.
     * Returns the first base >= start such that tokens base..base+7 (below
     * n) hold one, with *bits their mask (bit j: token base + j); n when
     * there is none. */
    int (*contenders)(const duet_sample_view *v, int start, float best, uint32_t max_key,
                      uint32_t *bits);
    /* Sum of weight(x[i] - m0) (NaN weighs 0). */
    uint64_t (*raw_mass)(const float *x, int n, float m0);
    /* #{i : x[i] >= t} (NaN counts as less). */
    int (*count_ge)(const float *x, int n, float t);
    /* The first i >= start with x[i] > t; n when none. */
    int (*next_above)(const float *x, int start, int n, float t);
} duet_sample_fast_isa;

extern const duet_sample_fast_isa duet_sample_scalar_isa;
#ifdef __x86_64__
extern const duet_sample_fast_isa duet_sample_avx2_isa;
/* Replace the dexp-heavy entries of an AVX2 table by AVX-512F/DQ ones. */
void duet_sample_avx512_patch(duet_sample_fast_isa *isa);
#endif

/* The widest table this CPU runs. */
const duet_sample_fast_isa *duet_sample_best_isa(void);

/* duet_cpu_sample_fast with a given table (tests compare tables). */
void duet_cpu_sample_fast_isa(duet_threadpool *pool, const duet_sample_fast_isa *isa,
                              const cpu_sample *a);

#endif
