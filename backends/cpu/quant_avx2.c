/*
 * quant_avx2.c — matmul kernels for AVX2 + FMA + F16C.
 *
 * quant_avx512.c compiles this same file again with DUET_MM_VNNI defined:
 * the block dot becomes vpdpbusd, the integer tiles take two blocks per
 * 512-bit vector (qtile512) and grow into the 32 vector registers of
 * AVX-512VL. The two builds group accumulator lanes differently, so their
 * results may differ in the last bits; each is deterministic and batch and
 * thread invariant on its own.
 *
 * Integer path (Q4_0, Q4_1, Q8_0): per 32-element block, the weight block
 * (unpacked to bytes) is dotted with the quantized activation block; the
 * 8 int32 partial sums are converted and accumulated with scale dw*dx:
 *   y = sum_b dw_b dx_b (q_w . q_x)_b  [+ sum_b m_b s_b  for Q4_1, Q4_0]
 * Q4_0's "-8" offset is a min term with m_b = -8 dw_b, so the unsigned
 * nibbles feed maddubs/vpdpbusd directly.
 * Float path (F32, F16, BF16, K-quants): a tile of weight rows is converted
 * to f32 once, then dotted with FMA.
 */
#include <immintrin.h>

#include "quant.h"
#include "quant_simd.h"

#ifdef DUET_MM_VNNI
#define MM_REGION duet_mm_region_avx512
#define TILE_R 4 /* weight rows per tile */
#define TILE_C 4 /* activation rows per tile */
#else
#define MM_REGION duet_mm_region_avx2
#define TILE_R 4
#define TILE_C 3
#endif

_Static_assert(TILE_R <= DUET_TILE_R_MAX, "scratch is sized for DUET_TILE_R_MAX rows");

#define INLINE static inline __attribute__((always_inline))

/* 8 int32 lanes, lane l = sum of u[4l..4l+3] * s[4l..4l+3]; no saturation
 * for |u| <= 128, |s| <= 127 (pairs stay under 2^15 in maddubs). */
INLINE __m256i dot_u8s8(__m256i u, __m256i s)
{
#ifdef DUET_MM_VNNI
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

/* The one horizontal sum order every path uses. */
INLINE float hsum8(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

/* Lanes [0, n) all ones, for the ragged end of a row (0 < n < 8). */
INLINE __m256i tail_mask(int64_t n)
{
    static const int32_t bits[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i *)(bits + 8 - n));
}

/* 8-lane float dot in index order; used for the min terms. */
static float dot_f32(const float *a, const float *b, int64_t n)
{
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    if (i < n) {
        __m256i mk = tail_mask(n - i);
        acc = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, mk), _mm256_maskload_ps(b + i, mk), acc);
    }
    return hsum8(acc);
}

INLINE float half_to_f32(const uint8_t *p)
{
    return _cvtsh_ss((unsigned short)(p[0] | (p[1] << 8)));
}

/* ---- integer path -------------------------------------------------------- */

enum { KIND_NIBBLE, KIND_Q8 };

/* Where the quants of a block start and how long a block is. */
typedef struct qlayout {
    int qoff, bb;
} qlayout;

INLINE __m256i unpack_nibbles(const uint8_t *q)
{
    __m128i v = _mm_loadu_si128((const __m128i *)q);
    __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

/* y for weight rows r0..r0+R-1 and activation rows c0..c0+C-1. wd/wm: the
 * R rows' block scales and mins as f32, nb apart. */
INLINE void qtile(const int kind, const int R, const int C, const duet_mm_job *job, qlayout ly,
                  int64_t r0, int64_t c0, const float *wd, const float *wm)
{
    const duet_act_q8 *a = job->a;
    const int64_t nb = a->nb, k = a->k;
    __m256 acc[TILE_R][TILE_C];
    const uint8_t *wrow[TILE_R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        wrow[r] = job->w + (size_t)(r0 + r) * job->row_bytes + ly.qoff;
#pragma GCC unroll 8
        for (int c = 0; c < C; c++)
            acc[r][c] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        __m256i wv[TILE_R], wabs[TILE_R];
        __m256 dw[TILE_R];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const uint8_t *q = wrow[r] + b * ly.bb;
            if (kind == KIND_NIBBLE) {
                wv[r] = unpack_nibbles(q);
            } else {
                wv[r] = _mm256_loadu_si256((const __m256i *)q);
                wabs[r] = _mm256_sign_epi8(wv[r], wv[r]);
            }
            dw[r] = _mm256_broadcast_ss(wd + r * nb + b);
        }
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            const int64_t row = c0 + c;
            __m256i xv = _mm256_loadu_si256((const __m256i *)(a->q + row * k + b * 32));
            __m256 dx = _mm256_broadcast_ss(a->d + row * nb + b);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                __m256i p = kind == KIND_NIBBLE
                                ? dot_u8s8(wv[r], xv)
                                : dot_u8s8(wabs[r], _mm256_sign_epi8(xv, wv[r]));
                acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw[r], dx),
                                            acc[r][c]);
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            float v = hsum8(acc[r][c]);
            if (kind == KIND_NIBBLE)
                v += dot_f32(wm + r * nb, a->s + (c0 + c) * nb, nb);
            if (job->bias)
                v += job->bias[r0 + r];
            job->y[(c0 + c) * job->n + r0 + r] = v;
        }
    }
}

#ifdef DUET_MM_VNNI
/* The 512-bit integer tile: two blocks per vector, activations in the
 * paired order (quant_simd.h), so int32 lanes 0-3 and 8-11 hold the even
 * block's partial sums and lanes 4-7 and 12-15 the odd block's, which is
 * the pattern scale_pair lays out. An odd last block goes through 256 bits
 * into lanes 0-7 under a mask. */

INLINE float hsum16(__m512 v)
{
    return hsum8(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

INLINE __m512i pair_nibbles(const uint8_t *q0, const uint8_t *q1)
{
    __m256i t = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)q0)),
                                        _mm_loadu_si128((const __m128i *)q1), 1);
    __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(t), _mm256_srli_epi16(t, 4), 1);
    return _mm512_and_si512(z, _mm512_set1_epi8(0x0f));
}

INLINE __m512i pair_q8(const uint8_t *q0, const uint8_t *q1)
{
    __m512i ab = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)q0)),
                                    _mm256_loadu_si256((const __m256i *)q1), 1);
    return _mm512_shuffle_i64x2(ab, ab, _MM_SHUFFLE(3, 1, 2, 0));
}

/* s[0] in lanes 0-3 and 8-11, s[1] in lanes 4-7 and 12-15. */
INLINE __m512 scale_pair(const float *s)
{
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
    __m128 two = _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)s));
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(two));
}

/* For Q8_0 the activations are q + 128, so each dot carries 128 * sum(w);
 * starting the accumulation from -128 * sum(w) removes it exactly. */
INLINE __m512i q8_bias512(__m512i w)
{
    __m512i z = _mm512_setzero_si512();
    return _mm512_sub_epi32(z, _mm512_dpbusd_epi32(z, _mm512_set1_epi8((char)0x80), w));
}

INLINE __m256i q8_bias256(__m256i w)
{
    __m256i z = _mm256_setzero_si256();
    return _mm256_sub_epi32(z, _mm256_dpbusd_epi32(z, _mm256_set1_epi8((char)0x80), w));
}

/* Scales (d8) and mins (m8) of blocks b and b+1 of up to 4 rows, lane
 * 2r + j = row r, block b + j; lanes outside `lanes` are 0. One gather
 * replaces a pass over each row's block headers. */
INLINE void pair_scales(duet_dtype wt, const uint8_t *base, __m256i idx, __mmask8 lanes,
                        __m256 *d8, __m256 *m8)
{
    __m256i g = _mm256_mmask_i32gather_epi32(_mm256_setzero_si256(), lanes, idx, base, 1);
    __m256i dm = _mm256_packus_epi32(_mm256_and_si256(g, _mm256_set1_epi32(0xffff)),
                                     _mm256_srli_epi32(g, 16));
    dm = _mm256_permute4x64_epi64(dm, 0xd8);
    *d8 = _mm256_cvtph_ps(_mm256_castsi256_si128(dm));
    if (wt == DUET_Q4_1)
        *m8 = _mm256_cvtph_ps(_mm256_extracti128_si256(dm, 1));
    else
        *m8 = _mm256_mul_ps(*d8, _mm256_set1_ps(-8.0f)); /* Q4_0; unused for Q8_0 */
}

/* Lanes 2r, 2r+1 of v spread as scale_pair does. */
INLINE __m512 spread_row(__m256 v, int r)
{
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
    return _mm512_permutexvar_ps(_mm512_add_epi32(idx, _mm512_set1_epi32(2 * r)),
                                 _mm512_castps256_ps512(v));
}

/* The min term of (row r, activation row c) goes to lanes 2r (even blocks)
 * and 2r+1 (odd blocks) of mins[c], one fma per block pair. */
INLINE void qtile512(const int kind, const int R, const int C, const duet_mm_job *job,
                     qlayout ly, int64_t r0, int64_t c0)
{
    const duet_act_q8 *a = job->a;
    const int64_t nb = a->nb, k = a->k;
    const uint8_t *wbase = job->w + (size_t)r0 * job->row_bytes;
    const int bb = ly.bb;
    const __m256i idx = _mm256_add_epi32(
        _mm256_mullo_epi32(_mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3),
                           _mm256_set1_epi32((int)job->row_bytes)),
        _mm256_setr_epi32(0, bb, 0, bb, 0, bb, 0, bb));
    __m512 acc[TILE_R][TILE_C];
    __m256 mins[TILE_C];
#pragma GCC unroll 8
    for (int c = 0; c < C; c++) {
        mins[c] = _mm256_setzero_ps();
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            acc[r][c] = _mm512_setzero_ps();
    }
    const __mmask8 all = (__mmask8)((1u << (2 * R)) - 1);
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m512i wv[TILE_R], base[TILE_R];
        __m512 dw[TILE_R];
        __m256 d8, m8;
        pair_scales(job->wt, wbase + b * bb, idx, all, &d8, &m8);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const uint8_t *q = wbase + (size_t)r * job->row_bytes + b * bb + ly.qoff;
            if (kind == KIND_NIBBLE) {
                wv[r] = pair_nibbles(q, q + bb);
                base[r] = _mm512_setzero_si512();
            } else {
                wv[r] = pair_q8(q, q + bb);
                base[r] = q8_bias512(wv[r]);
            }
            dw[r] = spread_row(d8, r);
        }
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            const int64_t row = c0 + c;
            __m512i xv = _mm512_loadu_si512((const void *)(a->q + row * k + b * 32));
            __m512 dx = scale_pair(a->d + row * nb + b);
            if (kind == KIND_NIBBLE) {
                __m256 s2 = _mm256_castsi256_ps(_mm256_broadcastq_epi64(
                    _mm_loadl_epi64((const __m128i *)(a->s + row * nb + b))));
                mins[c] = _mm256_fmadd_ps(m8, s2, mins[c]);
            }
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                __m512i p = kind == KIND_NIBBLE ? _mm512_dpbusd_epi32(base[r], wv[r], xv)
                                                : _mm512_dpbusd_epi32(base[r], xv, wv[r]);
                acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dw[r], dx),
                                            acc[r][c]);
            }
        }
    }
    if (b < nb) {
        __m256i wv[TILE_R], base[TILE_R];
        __m256 d8, m8;
        pair_scales(job->wt, wbase + b * bb, idx, all & 0x55, &d8, &m8);
        float dws[8];
        _mm256_storeu_ps(dws, d8);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const uint8_t *q = wbase + (size_t)r * job->row_bytes + b * bb + ly.qoff;
            if (kind == KIND_NIBBLE) {
                wv[r] = unpack_nibbles(q);
                base[r] = _mm256_setzero_si256();
            } else {
                wv[r] = _mm256_loadu_si256((const __m256i *)q);
                base[r] = q8_bias256(wv[r]);
            }
        }
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            const int64_t row = c0 + c;
            __m256i xv = _mm256_loadu_si256((const __m256i *)(a->q + row * k + b * 32));
            if (kind == KIND_NIBBLE)
                mins[c] = _mm256_fmadd_ps(m8, _mm256_set1_ps(a->s[row * nb + b]), mins[c]);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                __m256i p = kind == KIND_NIBBLE ? _mm256_dpbusd_epi32(base[r], wv[r], xv)
                                                : _mm256_dpbusd_epi32(base[r], xv, wv[r]);
                __m512 sc = _mm512_set1_ps(dws[2 * r] * a->d[row * nb + b]);
                acc[r][c] = _mm512_mask3_fmadd_ps(_mm512_castps256_ps512(_mm256_cvtepi32_ps(p)),
                                                  sc, acc[r][c], 0x00ff);
            }
        }
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; c++) {
        float mn[8];
        _mm256_storeu_ps(mn, mins[c]);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            float v = hsum16(acc[r][c]);
            if (kind == KIND_NIBBLE)
                v += mn[2 * r] + mn[2 * r + 1];
            if (job->bias)
                v += job->bias[r0 + r];
            job->y[(c0 + c) * job->n + r0 + r] = v;
        }
    }
}
#define QTILE(kind, r, c, job, ly, r0, c0, wd, wm) qtile512(kind, r, c, job, ly, r0, c0)
#else
#define QTILE(kind, r, c, job, ly, r0, c0, wd, wm) qtile(kind, r, c, job, ly, r0, c0, wd, wm)
#endif

#define TILE_CASES(X)                                                                   \
    X(1, 1) X(1, 2) X(1, 3) X(1, 4) X(2, 1) X(2, 2) X(2, 3) X(2, 4) X(3, 1) X(3, 2) \
    X(3, 3) X(3, 4) X(4, 1) X(4, 2) X(4, 3) X(4, 4)

static void qtile_nibble(int R, int C, const duet_mm_job *job, qlayout ly, int64_t r0,
                         int64_t c0, const float *wd, const float *wm)
{
    (void)wd, (void)wm; /* the 512-bit tile gathers its own */
    switch (R * 8 + C) {
#define CASE(r, c)                                                \
    case r * 8 + c:                                               \
        if (r <= TILE_R && c <= TILE_C)                           \
            QTILE(KIND_NIBBLE, r, c, job, ly, r0, c0, wd, wm);    \
        break;
        TILE_CASES(CASE)
#undef CASE
    }
}

static void qtile_q8(int R, int C, const duet_mm_job *job, qlayout ly, int64_t r0, int64_t c0,
                     const float *wd)
{
    (void)wd;
    switch (R * 8 + C) {
#define CASE(r, c)                                                \
    case r * 8 + c:                                               \
        if (r <= TILE_R && c <= TILE_C)                           \
            QTILE(KIND_Q8, r, c, job, ly, r0, c0, wd, NULL);      \
        break;
        TILE_CASES(CASE)
#undef CASE
    }
}

#ifndef DUET_MM_VNNI
/* f32 scales (and mins) of R weight rows starting at r0. The halves are
 * gathered 8 blocks at a time: at m = 1 this pass costs as much as the
 * dot products themselves if done one half at a time. */
static void load_scales(const duet_mm_job *job, int64_t r0, int R, int64_t nb, float *wd,
                        float *wm)
{
    const int bb = duet_dtype_get(job->wt)->block_bytes;
    const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                           _mm256_set1_epi32(bb));
    const __m256i low16 = _mm256_set1_epi32(0xffff);
    for (int r = 0; r < R; r++) {
        const uint8_t *row = job->w + (size_t)(r0 + r) * job->row_bytes;
        float *d = wd + r * nb, *m = wm + r * nb;
        int64_t b = 0;
        for (; b + 8 <= nb; b += 8) {
            /* Each dword holds the block's d (low half) and, for Q4_1, m. */
            __m256i g = _mm256_i32gather_epi32((const int *)(row + b * bb), idx, 1);
            __m256i dm = _mm256_packus_epi32(_mm256_and_si256(g, low16), _mm256_srli_epi32(g, 16));
            dm = _mm256_permute4x64_epi64(dm, 0xd8);
            __m256 dv = _mm256_cvtph_ps(_mm256_castsi256_si128(dm));
            _mm256_storeu_ps(d + b, dv);
            if (job->wt == DUET_Q4_1)
                _mm256_storeu_ps(m + b, _mm256_cvtph_ps(_mm256_extracti128_si256(dm, 1)));
            else if (job->wt == DUET_Q4_0)
                _mm256_storeu_ps(m + b, _mm256_mul_ps(dv, _mm256_set1_ps(-8.0f)));
        }
        for (; b < nb; b++) {
            const uint8_t *blk = row + b * bb;
            d[b] = half_to_f32(blk);
            if (job->wt == DUET_Q4_1)
                m[b] = half_to_f32(blk + 2);
            else if (job->wt == DUET_Q4_0)
                m[b] = -8.0f * d[b];
        }
    }
}
#endif

/* At m = 1 each weight byte comes from memory once, and the hardware
 * prefetcher alone left the kernel stalled on every tile's first touch
 * (a full SmolLM2 decode ran ~30% faster on one core with this). */
#define PREFETCH_TILES 2

static void region_int(const duet_mm_job *job, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                       float *scratch)
{
    const int64_t nb = job->k / 32;
    float *wd = scratch, *wm = scratch + DUET_TILE_R_MAX * nb;
    qlayout ly = {job->wt == DUET_Q4_1 ? 4 : 2, duet_dtype_get(job->wt)->block_bytes};
    for (int64_t r = r0; r < r1; r += TILE_R) {
        int R = r1 - r < TILE_R ? (int)(r1 - r) : TILE_R;
        duet_mm_prefetch_rows(job, r + PREFETCH_TILES * TILE_R, TILE_R, r1);
#ifndef DUET_MM_VNNI /* the 512-bit tile gathers its own scales */
        load_scales(job, r, R, nb, wd, wm);
#endif
        for (int64_t c = c0; c < c1; c += TILE_C) {
            int C = c1 - c < TILE_C ? (int)(c1 - c) : TILE_C;
            if (job->wt == DUET_Q8_0)
                qtile_q8(R, C, job, ly, r, c, wd);
            else
                qtile_nibble(R, C, job, ly, r, c, wd, wm);
        }
    }
}

/* ---- float path ------------------------------------------------------------ */

INLINE void ftile(const int R, const int C, const duet_mm_job *job, const float *const *wr,
                  int64_t r0, int64_t c0)
{
    const int64_t k = job->k;
    __m256 acc[TILE_R][TILE_C];
    const float *xr[TILE_C];
#pragma GCC unroll 8
    for (int c = 0; c < C; c++) {
        xr[c] = job->x + (c0 + c) * k;
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            acc[r][c] = _mm256_setzero_ps();
    }
    int64_t e = 0;
    for (; e + 8 <= k; e += 8) {
        __m256 wv[TILE_R];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            wv[r] = _mm256_loadu_ps(wr[r] + e);
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            __m256 xv = _mm256_loadu_ps(xr[c] + e);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);
        }
    }
    if (e < k) {
        /* Masked lanes load 0 on both sides: acc + 0*0 leaves them as is. */
        __m256i mk = tail_mask(k - e);
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            __m256 xv = _mm256_maskload_ps(xr[c] + e, mk);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                acc[r][c] = _mm256_fmadd_ps(_mm256_maskload_ps(wr[r] + e, mk), xv, acc[r][c]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            float v = hsum8(acc[r][c]);
            if (job->bias)
                v += job->bias[r0 + r];
            job->y[(c0 + c) * job->n + r0 + r] = v;
        }
    }
}

static void ftile_any(int R, int C, const duet_mm_job *job, const float *const *wr, int64_t r0,
                      int64_t c0)
{
    switch (R * 8 + C) {
#define CASE(r, c)                                  \
    case r * 8 + c:                                 \
        if (r <= TILE_R && c <= TILE_C)             \
            ftile(r, c, job, wr, r0, c0);           \
        break;
        TILE_CASES(CASE)
#undef CASE
    }
}

/* ---- K-quant rows to f32 -------------------------------------------------
 * The same arithmetic as the reference dequantization (one multiply, then
 * the min subtracted), so both give the same floats. */

INLINE __m256 bytes_to_f32(__m128i q8, int signed_q)
{
    return _mm256_cvtepi32_ps(signed_q ? _mm256_cvtepi8_epi32(q8) : _mm256_cvtepu8_epi32(q8));
}

/* y[0..31] = scale * q - mn for 32 quant bytes q (scale per 16 elements). */
INLINE void put32(float *y, __m256i q, __m256 s_lo, __m256 s_hi, __m256 mn, int signed_q)
{
    __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    _mm256_storeu_ps(y, _mm256_sub_ps(_mm256_mul_ps(s_lo, bytes_to_f32(lo, signed_q)), mn));
    _mm256_storeu_ps(y + 8, _mm256_sub_ps(_mm256_mul_ps(s_lo, bytes_to_f32(_mm_srli_si128(lo, 8), signed_q)), mn));
    _mm256_storeu_ps(y + 16, _mm256_sub_ps(_mm256_mul_ps(s_hi, bytes_to_f32(hi, signed_q)), mn));
    _mm256_storeu_ps(y + 24, _mm256_sub_ps(_mm256_mul_ps(s_hi, bytes_to_f32(_mm_srli_si128(hi, 8), signed_q)), mn));
}

static void k_scale_min(const uint8_t *s, int j, int *sc, int *mn)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q4_K (has_high = 0) and Q5_K (has_high = 1) blocks of 256. */
static void dequant_q45_k(const uint8_t *b, float *y, int64_t nblocks, int has_high)
{
    const int bb = has_high ? 176 : 144;
    const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
    for (int64_t i = 0; i < nblocks; i++, b += bb, y += 256) {
        float d = half_to_f32(b), dmin = half_to_f32(b + 2);
        const uint8_t *qs = b + (has_high ? 48 : 16);
        __m256i qh = has_high ? _mm256_loadu_si256((const __m256i *)(b + 16)) : _mm256_setzero_si256();
        for (int g = 0; g < 4; g++) {
            int sc0, mn0, sc1, mn1;
            k_scale_min(b + 4, 2 * g, &sc0, &mn0);
            k_scale_min(b + 4, 2 * g + 1, &sc1, &mn1);
            __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * g));
            __m256i lo = _mm256_and_si256(q, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (has_high) {
                /* Shifting 16-bit words by < 8 leaves each byte's own bit 0. */
                __m256i h0 = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g)), one);
                __m256i h1 = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g + 1)), one);
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(h0, 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(h1, 4));
            }
            __m256 s0 = _mm256_set1_ps(d * (float)sc0), s1 = _mm256_set1_ps(d * (float)sc1);
            put32(y + 64 * g, lo, s0, s0, _mm256_set1_ps(dmin * (float)mn0), 0);
            put32(y + 64 * g + 32, hi, s1, s1, _mm256_set1_ps(dmin * (float)mn1), 0);
        }
    }
}

static void dequant_q6_k(const uint8_t *b, float *y, int64_t nblocks)
{
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(3);
    const __m256i off = _mm256_set1_epi8(32);
    const __m256 zero = _mm256_setzero_ps();
    for (int64_t i = 0; i < nblocks; i++, b += 210, y += 256) {
        const int8_t *sc = (const int8_t *)(b + 192);
        float d = half_to_f32(b + 208);
        for (int h = 0; h < 2; h++) {
            __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
            for (int j = 0; j < 4; j++) {
                __m256i lb = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32 * (j & 1)));
                __m256i lo4 = j < 2 ? _mm256_and_si256(lb, m4)
                                    : _mm256_and_si256(_mm256_srli_epi16(lb, 4), m4);
                __m256i hi2 = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * j)), m2);
                __m256i q = _mm256_sub_epi8(_mm256_or_si256(lo4, _mm256_slli_epi16(hi2, 4)), off);
                int e = 128 * h + 32 * j;
                /* The reference subtracts nothing; x - 0 is x, so zero is exact. */
                put32(y + e, q, _mm256_set1_ps(d * (float)sc[e / 16]),
                      _mm256_set1_ps(d * (float)sc[e / 16 + 1]), zero, 1);
            }
        }
    }
}

/* Row of weights as f32: F32 in place, others converted into dst. */
static const float *row_f32(const duet_mm_job *job, int64_t r, float *dst)
{
    const uint8_t *src = job->w + (size_t)r * job->row_bytes;
    const int64_t k = job->k;
    int64_t e = 0;
    switch (job->wt) {
    case DUET_F32:
        return (const float *)src;
    case DUET_F16:
        for (; e + 8 <= k; e += 8)
            _mm256_storeu_ps(dst + e, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * e))));
        duet_dequant_row(DUET_F16, src + 2 * e, dst + e, k - e);
        return dst;
    case DUET_BF16:
        for (; e + 8 <= k; e += 8) {
            __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + 2 * e)));
            _mm256_storeu_ps(dst + e, _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)));
        }
        duet_dequant_row(DUET_BF16, src + 2 * e, dst + e, k - e);
        return dst;
    case DUET_Q4_K:
        dequant_q45_k(src, dst, k / 256, 0);
        return dst;
    case DUET_Q5_K:
        dequant_q45_k(src, dst, k / 256, 1);
        return dst;
    case DUET_Q6_K:
        dequant_q6_k(src, dst, k / 256);
        return dst;
    default:
        duet_dequant_row(job->wt, src, dst, k);
        return dst;
    }
}

static void region_float(const duet_mm_job *job, int64_t r0, int64_t r1, int64_t c0,
                         int64_t c1, float *scratch)
{
    const float *wr[TILE_R];
    for (int64_t r = r0; r < r1; r += TILE_R) {
        int R = r1 - r < TILE_R ? (int)(r1 - r) : TILE_R;
        duet_mm_prefetch_rows(job, r + PREFETCH_TILES * TILE_R, TILE_R, r1);
        for (int i = 0; i < R; i++)
            wr[i] = row_f32(job, r + i, scratch + i * (job->k + 8));
        for (int64_t c = c0; c < c1; c += TILE_C) {
            int C = c1 - c < TILE_C ? (int)(c1 - c) : TILE_C;
            ftile_any(R, C, job, wr, r, c);
        }
    }
}

void MM_REGION(const duet_mm_job *job, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
               float *scratch)
{
    if (duet_mm_is_int(job->wt))
        region_int(job, r0, r1, c0, c1, scratch);
    else
        region_float(job, r0, r1, c0, c1, scratch);
}

#ifndef DUET_MM_VNNI
/* ---- activation quantization (shared by both builds) ---------------------- */

void duet_act_quantize_avx2(const float *x, int64_t r0, int64_t r1, duet_act_q8 *a)
{
    const int64_t k = a->k, nb = a->nb;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t i = r0; i < r1; i++) {
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + i * k + b * 32;
            __m256 v[4];
            __m256 amax = _mm256_setzero_ps();
            for (int j = 0; j < 4; j++) {
                v[j] = _mm256_loadu_ps(xb + 8 * j);
                amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
            }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            float am = _mm_cvtss_f32(m4);
            float d = am / 127.0f;
            __m256 id = _mm256_set1_ps(am > 0.0f ? 127.0f / am : 0.0f);
            __m256i q[4];
            for (int j = 0; j < 4; j++)
                q[j] = _mm256_cvtps_epi32(_mm256_round_ps(
                    _mm256_mul_ps(v[j], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            p = _mm256_permutevar8x32_epi32(p, order);
            if (a->offset128)
                p = _mm256_xor_si256(p, _mm256_set1_epi8((char)0x80));
            int8_t *dst = a->q + i * k;
            if (a->paired && (b % 2 == 1 || b + 1 < nb)) {
                int64_t at = (b / 2) * 64 + (b % 2) * 16;
                _mm_storeu_si128((__m128i *)(dst + at), _mm256_castsi256_si128(p));
                _mm_storeu_si128((__m128i *)(dst + at + 32), _mm256_extracti128_si256(p, 1));
            } else {
                _mm256_storeu_si256((__m256i *)(dst + b * 32), p);
            }
            a->d[i * nb + b] = d;
            a->s[i * nb + b] = d * (float)_mm_cvtsi128_si32(s4);
        }
    }
}
#endif
