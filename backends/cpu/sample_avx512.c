/*
 * sample_avx512.c — the two passes of the fast sample kernel that evaluate
 * dexp for every token (the level-1 histogram and the raw logprob mass),
 * sixteen tokens at a time with AVX-512F/DQ; the other building blocks are
 * the AVX2 ones. Same float operations in the same order as
 * sample_math.h (no FMA: compile with -ffp-contract=off, the ISO C
 * default), so every lane gives the scalar bits.
 */
#include <immintrin.h>
#include <math.h>

#include "sample_fast.h"
#include "sample_math.h"

static inline __m512 dexp16(__m512 x)
{
    __mmask16 valid = _mm512_cmp_ps_mask(x, _mm512_set1_ps(DUET_SM_EXP_MIN), _CMP_GE_OQ);
    __m512 magic = _mm512_set1_ps(DUET_SM_ROUND_MAGIC);
    __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(DUET_SM_LOG2E));
    __m512 k = _mm512_sub_ps(_mm512_add_ps(t, magic), magic);
    __m512 r = _mm512_sub_ps(x, _mm512_mul_ps(k, _mm512_set1_ps(DUET_SM_LN2_HI)));
    r = _mm512_sub_ps(r, _mm512_mul_ps(k, _mm512_set1_ps(DUET_SM_LN2_LO)));
    __m512 p = _mm512_set1_ps(DUET_SM_EXP_C6);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(DUET_SM_EXP_C5));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(DUET_SM_EXP_C4));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(DUET_SM_EXP_C3));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(DUET_SM_EXP_C2));
    __m512 w = _mm512_add_ps(r, _mm512_mul_ps(_mm512_mul_ps(r, r), p));
    /* Lanes outside the range may hold any k: their result is masked. */
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)),
                                  23);
    __m512 y = _mm512_mul_ps(_mm512_add_ps(_mm512_set1_ps(1.0f), w), _mm512_castsi512_ps(e));
    return _mm512_maskz_mov_ps(valid, y);
}

/* trunc(sv) of 16 values in [0, 2^40] as 64-bit lanes (tokens 0-7, 8-15). */
static inline void trunc16(__m512 sv, __m512i *w07, __m512i *w815)
{
    *w07 = _mm512_cvttps_epu64(_mm512_castps512_ps256(sv));
    *w815 = _mm512_cvttps_epu64(_mm512_extractf32x8_ps(sv, 1));
}

static void avx512_hist_l1(const duet_sample_view *v, float vmin, uint32_t *count,
                           uint64_t *mass, uint64_t *n_hist, uint64_t *n_heavy, uint64_t *total)
{
    __m512i tot = _mm512_setzero_si512();
    uint64_t nc = 0, nh = 0, s;
    int i = 0;
    const __m512i base = _mm512_set1_epi32(DUET_SAMPLE_L1_BASE);
    const __m512i last = _mm512_set1_epi32(DUET_SAMPLE_BUCKETS - 1);
    const __m512 two40 = _mm512_set1_ps(DUET_SM_TWO40), one = _mm512_set1_ps(1.0f);
    const __m512 vminv = _mm512_set1_ps(vmin), light = _mm512_set1_ps(-27.75f);
    const __m512 inv_t = _mm512_set1_ps(v->inv_t), m = _mm512_set1_ps(v->m);
    const __m512 ninf = _mm512_set1_ps(-INFINITY), lmp = _mm512_set1_ps(v->log_min_p);
    for (; i + 16 <= v->n; i += 16) {
        __m512 d = _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(v->l + i), inv_t), m);
        __mmask16 cand = _mm512_cmp_ps_mask(d, ninf, _CMP_GT_OQ) &
                         _mm512_cmp_ps_mask(d, lmp, _CMP_GE_OQ);
        /* dexp(-27.75) < 2^-40: lower d weigh 0 (dexp is monotone). */
        if (!(cand & _mm512_cmp_ps_mask(d, light, _CMP_GE_OQ)))
            continue;
        __m512 sv = _mm512_mul_ps(_mm512_maskz_mov_ps(cand, dexp16(d)), two40);
        __mmask16 heavy = _mm512_cmp_ps_mask(sv, one, _CMP_GE_OQ);
        if (!heavy)
            continue;
        nh += (uint64_t)__builtin_popcount(heavy);
        __m512i w07, w815;
        trunc16(sv, &w07, &w815);
        tot = _mm512_add_epi64(tot, _mm512_add_epi64(w07, w815)); /* light lanes weigh 0 */
        unsigned bits = _mm512_cmp_ps_mask(sv, vminv, _CMP_GE_OQ);
        if (!bits)
            continue;
        __m512i key = _mm512_and_si512(_mm512_castps_si512(d), _mm512_set1_epi32(0x7fffffff));
        __m512i b = _mm512_sub_epi32(_mm512_srli_epi32(key, DUET_SAMPLE_L1_SHIFT), base);
        b = _mm512_min_epi32(_mm512_max_epi32(b, _mm512_setzero_si512()), last);
        uint32_t bk[16];
        uint64_t w[16];
        _mm512_storeu_si512(bk, b);
        _mm512_storeu_si512(w, w07);
        _mm512_storeu_si512(w + 8, w815);
        nc += (uint64_t)__builtin_popcount(bits);
        while (bits) {
            int j = __builtin_ctz(bits);
            bits &= bits - 1;
            count[bk[j]]++;
            mass[bk[j]] += w[j];
        }
    }
    s = _mm512_reduce_add_epi64(tot);
    for (; i < v->n; i++) {
        float d = v->l[i] * v->inv_t - v->m;
        if (!(d > -INFINITY && d >= v->log_min_p))
            continue;
        float sv = duet_sm_dexp(d) * DUET_SM_TWO40;
        uint64_t w = (uint64_t)(int64_t)sv;
        nh += w != 0;
        s += w;
        if (!(sv >= vmin))
            continue;
        uint32_t b = duet_sample_l1_bucket(duet_sm_bits(d) & 0x7fffffffu);
        count[b]++;
        mass[b] += w;
        nc++;
    }
    *n_hist = nc;
    *n_heavy = nh;
    *total = s;
}

static uint64_t avx512_raw_mass(const float *x, int n, float m0)
{
    __m512i tot = _mm512_setzero_si512();
    const __m512 m = _mm512_set1_ps(m0), two40 = _mm512_set1_ps(DUET_SM_TWO40);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 sv = _mm512_mul_ps(dexp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), m)), two40);
        __m512i w07, w815;
        trunc16(sv, &w07, &w815);
        tot = _mm512_add_epi64(tot, _mm512_add_epi64(w07, w815));
    }
    uint64_t s = _mm512_reduce_add_epi64(tot);
    for (; i < n; i++)
        s += duet_sm_weight(x[i] - m0);
    return s;
}

void duet_sample_avx512_patch(duet_sample_fast_isa *isa)
{
    isa->hist_l1 = avx512_hist_l1;
    isa->raw_mass = avx512_raw_mass;
}
