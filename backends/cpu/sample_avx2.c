/*
 * sample_avx2.c — the fast sample kernel's building blocks with AVX2: the
 * specification's dexp eight tokens at a time, with the same float
 * operations in the same order as sample_math.h (no FMA: this file must be
 * compiled with -ffp-contract=off, the ISO C default), so every lane gives
 * the scalar bits. Row tails go through the scalar code.
 */
#include <immintrin.h>
#include <math.h>

#include "sample_fast.h"
#include "sample_math.h"

static inline __m256 dexp8(__m256 x)
{
    __m256 valid = _mm256_cmp_ps(x, _mm256_set1_ps(DUET_SM_EXP_MIN), _CMP_GE_OQ);
    __m256 magic = _mm256_set1_ps(DUET_SM_ROUND_MAGIC);
    __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(DUET_SM_LOG2E));
    __m256 k = _mm256_sub_ps(_mm256_add_ps(t, magic), magic);
    __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(k, _mm256_set1_ps(DUET_SM_LN2_HI)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(k, _mm256_set1_ps(DUET_SM_LN2_LO)));
    __m256 p = _mm256_set1_ps(DUET_SM_EXP_C6);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(DUET_SM_EXP_C5));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(DUET_SM_EXP_C4));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(DUET_SM_EXP_C3));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(DUET_SM_EXP_C2));
    __m256 w = _mm256_add_ps(r, _mm256_mul_ps(_mm256_mul_ps(r, r), p));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)),
                                  23);
    __m256 y = _mm256_mul_ps(_mm256_add_ps(_mm256_set1_ps(1.0f), w), _mm256_castsi256_ps(e));
    return _mm256_and_ps(y, valid);
}

/* trunc(y * 2^40) for y in [0, 1] (exact: y * 2^40 is), as two vectors of
 * four 64-bit lanes (tokens 0-3, 4-7). */
static inline void weight8(__m256 y, __m256i *w03, __m256i *w47)
{
    __m256i b = _mm256_castps_si256(_mm256_mul_ps(y, _mm256_set1_ps(DUET_SM_TWO40)));
    /* value = mant * 2^(exp - 150); 0 has exp 0 and shifts out. */
    __m256i mant = _mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi32(0x7fffff)),
                                   _mm256_set1_epi32(0x800000));
    __m256i sh = _mm256_sub_epi32(_mm256_srli_epi32(b, 23), _mm256_set1_epi32(150));
    __m256i zero = _mm256_setzero_si256();
    __m256i right = _mm256_srlv_epi32(mant, _mm256_max_epi32(_mm256_sub_epi32(zero, sh), zero));
    __m256i left_sh = _mm256_max_epi32(sh, zero);
    __m256i is_left = _mm256_cmpgt_epi32(sh, zero);
    /* Lanes that shift left take mant, the others the right-shifted value
     * with a left shift of 0. */
    __m256i base = _mm256_blendv_epi8(right, mant, is_left);
    __m128i b_lo = _mm256_castsi256_si128(base), b_hi = _mm256_extracti128_si256(base, 1);
    __m128i s_lo = _mm256_castsi256_si128(left_sh), s_hi = _mm256_extracti128_si256(left_sh, 1);
    *w03 = _mm256_sllv_epi64(_mm256_cvtepu32_epi64(b_lo), _mm256_cvtepu32_epi64(s_lo));
    *w47 = _mm256_sllv_epi64(_mm256_cvtepu32_epi64(b_hi), _mm256_cvtepu32_epi64(s_hi));
}

static inline uint64_t hsum_epi64(__m256i v)
{
    uint64_t t[4];
    _mm256_storeu_si256((__m256i *)t, v);
    return t[0] + t[1] + t[2] + t[3];
}

/* d and the candidate mask of 8 tokens. */
static inline __m256 cand8(const duet_sample_view *v, int i, __m256 *mask)
{
    __m256 d = _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(v->l + i), _mm256_set1_ps(v->inv_t)),
                             _mm256_set1_ps(v->m));
    *mask = _mm256_and_ps(_mm256_cmp_ps(d, _mm256_set1_ps(-INFINITY), _CMP_GT_OQ),
                          _mm256_cmp_ps(d, _mm256_set1_ps(v->log_min_p), _CMP_GE_OQ));
    return d;
}

static inline float cand_d1(const duet_sample_view *v, int i, int *ok)
{
    float d = v->l[i] * v->inv_t - v->m;
    *ok = d > -INFINITY && d >= v->log_min_p;
    return d;
}

/* The lowest index holding m, the largest value of l (NaN never wins). */
static int32_t first_index_of_max(const float *l, int n, float m)
{
    if (m == -INFINITY) /* nothing beats -inf: the scalar rule gives 0 */
        return 0;
    __m256 mv = _mm256_set1_ps(m);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        int bits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(l + i), mv, _CMP_EQ_OQ));
        if (bits)
            return i + __builtin_ctz((unsigned)bits);
    }
    for (; i < n; i++)
        if (l[i] == m)
            return i;
    return 0;
}

static float lane_max(__m256 best)
{
    float t[8], m = -INFINITY;
    _mm256_storeu_ps(t, best);
    for (int j = 0; j < 8; j++)
        m = t[j] > m ? t[j] : m;
    return m;
}

static int32_t avx2_copy_clean(const float *x, float *l, int n)
{
    int i = 0;
    __m256 ninf = _mm256_set1_ps(-INFINITY), best = ninf;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        v = _mm256_blendv_ps(v, ninf, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        _mm256_storeu_ps(l + i, v);
        best = _mm256_max_ps(best, v); /* no NaN left */
    }
    float m = lane_max(best);
    for (; i < n; i++) {
        l[i] = isnan(x[i]) ? -INFINITY : x[i];
        m = l[i] > m ? l[i] : m;
    }
    return first_index_of_max(l, n, m);
}

static int32_t avx2_argmax(const float *l, int n)
{
    __m256 best = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(l + i);
        best = _mm256_blendv_ps(best, v, _mm256_cmp_ps(v, best, _CMP_GT_OQ));
    }
    float m = lane_max(best);
    for (; i < n; i++)
        m = l[i] > m ? l[i] : m;
    return first_index_of_max(l, n, m);
}

static void avx2_hist_l1(const duet_sample_view *v, float vmin, uint32_t *count,
                         uint64_t *mass, uint64_t *n_hist, uint64_t *n_heavy, uint64_t *total)
{
    __m256i tot = _mm256_setzero_si256();
    uint64_t nc = 0, nh = 0, s = 0;
    int i = 0;
    const __m256i base = _mm256_set1_epi32(DUET_SAMPLE_L1_BASE);
    const __m256i last = _mm256_set1_epi32(DUET_SAMPLE_BUCKETS - 1);
    const __m256 two40 = _mm256_set1_ps(DUET_SM_TWO40), one = _mm256_set1_ps(1.0f);
    const __m256 vminv = _mm256_set1_ps(vmin), light = _mm256_set1_ps(-27.75f);
    for (; i + 8 <= v->n; i += 8) {
        __m256 mask;
        __m256 d = cand8(v, i, &mask);
        /* dexp(-27.75) < 2^-40: lower d weigh 0 (dexp is monotone). */
        if (!_mm256_movemask_ps(_mm256_and_ps(mask, _mm256_cmp_ps(d, light, _CMP_GE_OQ))))
            continue;
        __m256 y = _mm256_and_ps(dexp8(d), mask);
        __m256 sv = _mm256_mul_ps(y, two40);
        int heavy = _mm256_movemask_ps(_mm256_cmp_ps(sv, one, _CMP_GE_OQ));
        if (!heavy)
            continue;
        nh += (uint64_t)__builtin_popcount((unsigned)heavy);
        __m256i w03, w47;
        weight8(y, &w03, &w47);
        tot = _mm256_add_epi64(tot, _mm256_add_epi64(w03, w47)); /* light lanes weigh 0 */
        int bits = _mm256_movemask_ps(_mm256_cmp_ps(sv, vminv, _CMP_GE_OQ));
        if (!bits)
            continue;
        __m256i key = _mm256_and_si256(_mm256_castps_si256(d), _mm256_set1_epi32(0x7fffffff));
        __m256i b = _mm256_sub_epi32(_mm256_srli_epi32(key, DUET_SAMPLE_L1_SHIFT), base);
        b = _mm256_min_epi32(_mm256_max_epi32(b, _mm256_setzero_si256()), last);
        uint32_t bk[8];
        uint64_t w[8];
        _mm256_storeu_si256((__m256i *)bk, b);
        _mm256_storeu_si256((__m256i *)w, w03);
        _mm256_storeu_si256((__m256i *)(w + 4), w47);
        nc += (uint64_t)__builtin_popcount((unsigned)bits);
        while (bits) {
            int j = __builtin_ctz((unsigned)bits);
            bits &= bits - 1;
            count[bk[j]]++;
            mass[bk[j]] += w[j];
        }
    }
    s = hsum_epi64(tot);
    for (; i < v->n; i++) {
        int ok;
        float d = cand_d1(v, i, &ok);
        if (!ok)
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

static int avx2_contenders(const duet_sample_view *v, int start, float best, uint32_t max_key,
                           uint32_t *bits)
{
    int i = start;
    const __m256 gmax = _mm256_set1_ps(DUET_SM_GMAX), bestv = _mm256_set1_ps(best);
    const __m256i maxk = _mm256_set1_epi32((int32_t)max_key);
    for (; i + 8 <= v->n; i += 8) {
        __m256 mask;
        __m256 d = cand8(v, i, &mask);
        __m256 ok = _mm256_and_ps(mask, _mm256_cmp_ps(_mm256_add_ps(d, gmax), bestv, _CMP_GE_OQ));
        __m256i key = _mm256_and_si256(_mm256_castps_si256(d), _mm256_set1_epi32(0x7fffffff));
        ok = _mm256_andnot_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(key, maxk)), ok);
        int m = _mm256_movemask_ps(ok);
        if (m) {
            *bits = (uint32_t)m;
            return i;
        }
    }
    if (i < v->n) {
        uint32_t m = 0;
        for (int j = 0; i + j < v->n; j++) {
            int okc;
            float d = cand_d1(v, i + j, &okc);
            if (okc && !(d + DUET_SM_GMAX < best) &&
                (duet_sm_bits(d) & 0x7fffffffu) <= max_key)
                m |= 1u << j;
        }
        if (m) {
            *bits = m;
            return i;
        }
    }
    *bits = 0;
    return v->n;
}

static void avx2_count_at(const duet_sample_view *v, const float *t, int nt, uint64_t *counts)
{
    __m256i c[16];
    __m256 tv[16];
    for (int j = 0; j < nt; j++) {
        c[j] = _mm256_setzero_si256();
        tv[j] = _mm256_set1_ps(t[j]);
    }
    int i = 0;
    for (; i + 8 <= v->n; i += 8) {
        __m256 mask;
        __m256 d = cand8(v, i, &mask);
        d = _mm256_blendv_ps(_mm256_set1_ps(NAN), d, mask); /* non-candidates compare false */
        for (int j = 0; j < nt; j++) /* a true lane is -1: subtracting counts it */
            c[j] = _mm256_sub_epi32(c[j], _mm256_castps_si256(_mm256_cmp_ps(d, tv[j], _CMP_GE_OQ)));
    }
    for (int j = 0; j < nt; j++) {
        int32_t lanes[8];
        _mm256_storeu_si256((__m256i *)lanes, c[j]);
        uint64_t total = 0;
        for (int k = 0; k < 8; k++)
            total += (uint32_t)lanes[k];
        counts[j] = total;
    }
    for (; i < v->n; i++) {
        int ok;
        float d = cand_d1(v, i, &ok);
        for (int j = 0; ok && j < nt; j++)
            counts[j] += d >= t[j];
    }
}

static uint32_t avx2_collect(const duet_sample_view *v, uint32_t lo, uint32_t hi, int32_t *ids,
                             uint32_t cap)
{
    uint32_t n = 0;
    int i = 0;
    /* Keys are below 2^31, so signed compares order them. */
    const __m256i lo1 = _mm256_set1_epi32((int32_t)lo - 1), hiv = _mm256_set1_epi32((int32_t)hi);
    for (; i + 8 <= v->n; i += 8) {
        __m256 mask;
        __m256 d = cand8(v, i, &mask);
        __m256i key = _mm256_and_si256(_mm256_castps_si256(d), _mm256_set1_epi32(0x7fffffff));
        __m256i in = _mm256_andnot_si256(_mm256_cmpgt_epi32(key, hiv), _mm256_cmpgt_epi32(key, lo1));
        int bits = _mm256_movemask_ps(_mm256_and_ps(mask, _mm256_castsi256_ps(in)));
        while (bits) {
            int j = __builtin_ctz((unsigned)bits);
            bits &= bits - 1;
            if (n < cap)
                ids[n] = i + j;
            n++;
        }
    }
    for (; i < v->n; i++) {
        int ok;
        float d = cand_d1(v, i, &ok);
        uint32_t u = duet_sm_bits(d) & 0x7fffffffu;
        if (!ok || u < lo || u > hi)
            continue;
        if (n < cap)
            ids[n] = i;
        n++;
    }
    return n;
}

static uint64_t avx2_raw_mass(const float *x, int n, float m0)
{
    __m256i tot = _mm256_setzero_si256();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 y = dexp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(m0)));
        __m256i w03, w47;
        weight8(y, &w03, &w47);
        tot = _mm256_add_epi64(tot, _mm256_add_epi64(w03, w47));
    }
    uint64_t s = hsum_epi64(tot);
    for (; i < n; i++)
        s += duet_sm_weight(x[i] - m0);
    return s;
}

static int avx2_count_ge(const float *x, int n, float t)
{
    __m256i c = _mm256_setzero_si256();
    const __m256 tv = _mm256_set1_ps(t);
    int i = 0;
    for (; i + 8 <= n; i += 8) /* a true lane is -1: subtracting counts it */
        c = _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(x + i), tv,
                                                                  _CMP_GE_OQ)));
    int32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, c);
    int total = 0;
    for (int j = 0; j < 8; j++)
        total += lanes[j];
    for (; i < n; i++)
        total += x[i] >= t;
    return total;
}

static int avx2_next_above(const float *x, int start, int n, float t)
{
    const __m256 tv = _mm256_set1_ps(t);
    int i = start;
    for (; i + 8 <= n; i += 8) {
        int bits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), tv, _CMP_GT_OQ));
        if (bits)
            return i + __builtin_ctz((unsigned)bits);
    }
    for (; i < n; i++)
        if (x[i] > t)
            return i;
    return n;
}

const duet_sample_fast_isa duet_sample_avx2_isa = {
    .copy_clean = avx2_copy_clean,
    .argmax = avx2_argmax,
    .hist_l1 = avx2_hist_l1,
    .count_at = avx2_count_at,
    .collect = avx2_collect,
    .contenders = avx2_contenders,
    .raw_mass = avx2_raw_mass,
    .count_ge = avx2_count_ge,
    .next_above = avx2_next_above,
};
