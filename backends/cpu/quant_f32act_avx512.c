/*
 * quant_f32act_avx512.c — quant_f32act_avx2.c for AVX-512: the same f32-
 * activation matmul of Q4_0, Q4_1 and Q8_0 with 16-lane vectors.
 *
 * Per (weight row, activation row) pair one 16-lane accumulator receives,
 * block by block, elements 0-15 and then 16-31 (for nibble blocks exactly
 * the low and the high nibbles of the 16 quant bytes); its lanes are summed
 * by hsum16 and the bias is added last. Every tile shape runs this same
 * sequence per output (batch invariance); the lane grouping differs from
 * the AVX2 build, so the two may differ in the last bits.
 */
#include <immintrin.h>

#include "quant.h"
#include "quant_simd.h"

#define INLINE static inline __attribute__((always_inline))

#define TILE_R 4   /* weight rows per tile, m > 1: 4 x 6 = 24 accumulators + 8 weights */
#define TILE_C 6   /* activation rows per tile (4: ~6% slower at m = 32) */
#define DECODE_R 8 /* weight rows per tile at m = 1: hides the FMA latency */

_Static_assert(DECODE_R <= DUET_TILE_R_MAX, "scratch is sized for DUET_TILE_R_MAX rows");

#define PREFETCH_TILES 2
/* Dequantize each weight tile once when a pass has this many activation
 * rows (8 tiles of them) and a tile's weights and activations fit L1
 * together: (TILE_R + TILE_C) * k floats <= 40 KiB. */
#define PRE_DEQUANT_MIN_ROWS 48
#define PRE_DEQUANT_MAX_K 1024

INLINE float hsum16(__m512 v)
{
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

/* The block at q as exact f32 weights: w0 = elements 0-15, w1 = 16-31.
 * A nibble block has only 16 distinct weights fma(q, d, m): one vector of
 * them is a lookup table that vpermps indexes with the nibbles directly
 * (it reads only the low 4 bits of each index), which saves the int->float
 * conversions and one FMA per vector at no cost in exactness. */
INLINE void dequant_block(const int nibble, const uint8_t *q, const float *d, const float *m,
                          __m512 *w0, __m512 *w1)
{
    if (nibble) {
        const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        __m512 table = _mm512_fmadd_ps(iota, _mm512_set1_ps(*d), _mm512_set1_ps(*m));
        __m512i t = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)q));
        *w0 = _mm512_permutexvar_ps(t, table);
        *w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(t, 4), table);
    } else {
        __m512 dv = _mm512_set1_ps(*d);
        __m512i lo = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q));
        __m512i hi = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + 16)));
        *w0 = _mm512_mul_ps(_mm512_cvtepi32_ps(lo), dv);
        *w1 = _mm512_mul_ps(_mm512_cvtepi32_ps(hi), dv);
    }
}

/* Rows r0 .. r0+R-1 dequantized into wd ([R][k]): the values dequant_block
 * gives, so a tile over them computes the same bits. */
static void dequant_rows(const int nibble, const duet_mm_job *job, int64_t r0, int R,
                         const float *sc, float *wd)
{
    const int64_t k = job->k, nb = k / 32;
    const int bb = duet_dtype_get(job->wt)->block_bytes;
    const int qoff = job->wt == DUET_Q4_1 ? 4 : 2;
    for (int r = 0; r < R; r++) {
        const uint8_t *q = job->w + (size_t)(r0 + r) * job->row_bytes + qoff;
        for (int64_t b = 0; b < nb; b++) {
            __m512 w0, w1;
            const float *s = sc + b * 2 * DUET_TILE_R_MAX;
            dequant_block(nibble, q + b * bb, s + r, s + DUET_TILE_R_MAX + r, &w0, &w1);
            _mm512_storeu_ps(wd + r * k + b * 32, w0);
            _mm512_storeu_ps(wd + r * k + b * 32 + 16, w1);
        }
    }
}

/* y = the tile's sums (lanes of acc[r][c] summed) plus the bias. */
INLINE void store_tile(const int R, const int C, const duet_mm_job *job, int64_t r0, int64_t c0,
                       __m512 acc[DECODE_R][TILE_C])
{
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            float v = hsum16(acc[r][c]);
            if (job->bias)
                v += job->bias[r0 + r];
            job->y[(c0 + c) * job->n + r0 + r] = v;
        }
    }
}

/* acc[r][c] += the 32 weights w0[r], w1[r] of block b times activation
 * row c's: the FMAs of one block, in the one order tile() and tile_pre()
 * share (their results must be the same bits). */
INLINE void fma_block(const int R, const int C, const float *const xr[TILE_C], int64_t b,
                      const __m512 *w0, const __m512 *w1, __m512 acc[DECODE_R][TILE_C])
{
#pragma GCC unroll 8
    for (int c = 0; c < C; c++) {
        __m512 x0 = _mm512_loadu_ps(xr[c] + b * 32);
        __m512 x1 = _mm512_loadu_ps(xr[c] + b * 32 + 16);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            acc[r][c] = _mm512_fmadd_ps(w0[r], x0, acc[r][c]);
            acc[r][c] = _mm512_fmadd_ps(w1[r], x1, acc[r][c]);
        }
    }
}

/* y for weight rows r0..r0+R-1 x activation rows c0..c0+C-1. */
INLINE void tile(const int nibble, const int R, const int C, const duet_mm_job *job, int64_t r0,
                 int64_t c0, const float *sc)
{
    const int64_t k = job->k, nb = k / 32;
    const int bb = duet_dtype_get(job->wt)->block_bytes;
    const int qoff = job->wt == DUET_Q4_1 ? 4 : 2;
    __m512 acc[DECODE_R][TILE_C];
    const uint8_t *wrow[DECODE_R];
    const float *xr[TILE_C];
#pragma GCC unroll 8
    for (int c = 0; c < C; c++)
        xr[c] = job->x + (c0 + c) * k;
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        wrow[r] = job->w + (size_t)(r0 + r) * job->row_bytes + qoff;
#pragma GCC unroll 8
        for (int c = 0; c < C; c++)
            acc[r][c] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++, sc += 2 * DUET_TILE_R_MAX) {
        __m512 w0[DECODE_R], w1[DECODE_R];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            dequant_block(nibble, wrow[r] + b * bb, sc + r, sc + DUET_TILE_R_MAX + r, &w0[r],
                          &w1[r]);
        fma_block(R, C, xr, b, w0, w1, acc);
    }
    store_tile(R, C, job, r0, c0, acc);
}

/* tile() over weights dequantized beforehand into wd ([R][k], by
 * dequant_rows): the same FMAs in the same order, so the same bits. */
INLINE void tile_pre(const int R, const int C, const duet_mm_job *job, int64_t r0, int64_t c0,
                     const float *wd)
{
    const int64_t k = job->k, nb = k / 32;
    __m512 acc[DECODE_R][TILE_C];
    const float *xr[TILE_C];
#pragma GCC unroll 8
    for (int c = 0; c < C; c++)
        xr[c] = job->x + (c0 + c) * k;
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int c = 0; c < C; c++)
            acc[r][c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512 w0[TILE_R], w1[TILE_R];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            w0[r] = _mm512_loadu_ps(wd + r * k + b * 32);
            w1[r] = _mm512_loadu_ps(wd + r * k + b * 32 + 16);
        }
        fma_block(R, C, xr, b, w0, w1, acc);
    }
    store_tile(R, C, job, r0, c0, acc);
}

/* Every (R, C) a region uses: TILE_R x TILE_C tiles and their edges, and
 * the decode tiles (m = 1) of up to DECODE_R rows. */
#define TILE_CASES_RC(X)                                                                \
    X(1, 1) X(1, 2) X(1, 3) X(1, 4) X(1, 5) X(1, 6) X(2, 1) X(2, 2) X(2, 3) X(2, 4)     \
    X(2, 5) X(2, 6) X(3, 1) X(3, 2) X(3, 3) X(3, 4) X(3, 5) X(3, 6) X(4, 1) X(4, 2)     \
    X(4, 3) X(4, 4) X(4, 5) X(4, 6)
#define TILE_CASES(X) TILE_CASES_RC(X) X(5, 1) X(6, 1) X(7, 1) X(8, 1)

static void tile_any(int nibble, int R, int C, const duet_mm_job *job, int64_t r0, int64_t c0,
                     const float *sc)
{
    switch (R * 16 + C * 2 + nibble) {
#define CASE(r, c)                                                      \
    case r * 16 + c * 2 + 1: tile(1, r, c, job, r0, c0, sc); break; \
    case r * 16 + c * 2: tile(0, r, c, job, r0, c0, sc); break;
        TILE_CASES(CASE)
#undef CASE
    default: break;
    }
}

static void tile_pre_any(int R, int C, const duet_mm_job *job, int64_t r0, int64_t c0,
                         const float *wd)
{
    switch (R * 16 + C) {
#define CASE(r, c) \
    case r * 16 + c: tile_pre(r, c, job, r0, c0, wd); break;
        TILE_CASES_RC(CASE)
#undef CASE
    default: break;
    }
}

void duet_mm_region_f32act_avx512(const duet_mm_job *job, int64_t r0, int64_t r1, int64_t c0,
                                  int64_t c1, float *scratch)
{
    const int nibble = job->wt != DUET_Q8_0;
    const int64_t tr = c1 - c0 == 1 ? DECODE_R : TILE_R;
    /* With many activation tiles (a prefill), dequantizing each weight
     * tile once and reading it from L1 leaves the vector ports to the
     * FMAs (k = 576, m = 512: 96 -> 117 GFLOP/s a core); with few (a
     * decode batch) it gains nothing, and when the tile's rows and
     * activations overflow L1 (k = 1536) it loses. Same bits either way. */
    const int pre = c1 - c0 >= PRE_DEQUANT_MIN_ROWS && job->k <= PRE_DEQUANT_MAX_K;
    float *wd = scratch + duet_mm_dequant_offset(job);
    for (int64_t r = r0; r < r1; r += tr) {
        int R = r1 - r < tr ? (int)(r1 - r) : (int)tr;
        duet_mm_prefetch_rows(job, r + PREFETCH_TILES * tr, tr, r1);
        duet_f32act_load_scales(job, r, R, scratch);
        if (pre)
            dequant_rows(nibble, job, r, R, scratch, wd);
        for (int64_t c = c0; c < c1; c += TILE_C) {
            int C = c1 - c < TILE_C ? (int)(c1 - c) : TILE_C;
            if (pre)
                tile_pre_any(R, C, job, r, c, wd);
            else
                tile_any(nibble, R, C, job, r, c, scratch);
        }
    }
}
