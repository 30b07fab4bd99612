/*
 * quant_f32act_avx2.c — the default matmul of the 32-element integer
 * quants (Q4_0, Q4_1, Q8_0) for AVX2 + FMA + F16C: activations stay f32,
 * the weights are dequantized in registers and dotted with FMA.
 *
 * Why not 8-bit activations (quant_avx2.c)? Rounding x to int8 adds ~0.5%
 * relative noise per matmul; over SmolLM2's 30 layers that cost 2.7% of
 * top-1 agreement with an fp32 reference. Here each dequantized weight is
 * exactly the reference's value (q*d is exact in f32 and fma(q, d, m)
 * rounds once), so the only error left is f32 summation.
 *
 * Per (weight row, activation row) pair one 8-lane accumulator receives,
 * block by block, the block's four 8-element groups in element order; its
 * lanes are summed by hsum8 and the bias is added last. Every tile shape
 * runs this same sequence per output, which is the batch invariance.
 */
#include <assert.h>
#include <immintrin.h>
#include <stdint.h>

#include "quant.h"
#include "quant_simd.h"

#define INLINE static inline __attribute__((always_inline))

#define TILE_R 4 /* weight rows per tile, m > 1 */
#define TILE_C 2 /* activation rows per tile */
#define DECODE_R 8 /* weight rows per tile when one activation row: more
                    * independent FMA chains hide the FMA latency */

_Static_assert(DECODE_R <= DUET_TILE_R_MAX, "scratch is sized for DUET_TILE_R_MAX rows");
_Static_assert(DUET_TILE_R_MAX == 8, "the scale gather fetches 8 rows at once");

/* Tiles ahead to prefetch: at m = 1 each weight byte is read once and the
 * hardware prefetcher alone stalls on every tile's first touch. */
#define PREFETCH_TILES 2

INLINE float hsum8(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

void duet_f32act_load_scales(const duet_mm_job *job, int64_t r0, int R, float *sc)
{
    const int64_t nb = job->k / 32;
    const int bb = duet_dtype_get(job->wt)->block_bytes;
    /* One gather per block fetches the 8 rows' dwords, each the block's d
     * (low half) and, for Q4_1, its m; rows past R repeat row R-1. */
    assert((int64_t)(R - 1) * (int64_t)job->row_bytes <= INT32_MAX);
    int32_t off[DUET_TILE_R_MAX];
    for (int r = 0; r < DUET_TILE_R_MAX; r++)
        off[r] = (int32_t)((r < R ? r : R - 1) * (int64_t)job->row_bytes);
    const __m256i idx = _mm256_loadu_si256((const __m256i *)off);
    const __m256i low16 = _mm256_set1_epi32(0xffff);
    const uint8_t *base = job->w + (size_t)r0 * job->row_bytes;
    for (int64_t b = 0; b < nb; b++, sc += 2 * DUET_TILE_R_MAX) {
        __m256i g = _mm256_i32gather_epi32((const int *)(base + b * bb), idx, 1);
        __m256i dm = _mm256_packus_epi32(_mm256_and_si256(g, low16), _mm256_srli_epi32(g, 16));
        dm = _mm256_permute4x64_epi64(dm, 0xd8);
        __m256 d = _mm256_cvtph_ps(_mm256_castsi256_si128(dm));
        _mm256_storeu_ps(sc, d);
        if (job->wt == DUET_Q4_1)
            _mm256_storeu_ps(sc + 8, _mm256_cvtph_ps(_mm256_extracti128_si256(dm, 1)));
        else /* Q4_0's offset as a min; exact: -8 is a power of two */
            _mm256_storeu_ps(sc + 8, _mm256_mul_ps(d, _mm256_set1_ps(-8.0f)));
    }
}

/* Elements 8g..8g+7 of a block as exact f32 weights. Nibble blocks: byte j
 * holds element j (low nibble) and j + 16 (high nibble). */
INLINE __m256 dequant8(const int nibble, const uint8_t *q, int g, __m256 d, __m256 m)
{
    if (nibble) {
        __m256i t = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8 * (g & 1))));
        t = g < 2 ? _mm256_and_si256(t, _mm256_set1_epi32(0x0f)) : _mm256_srli_epi32(t, 4);
        return _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), d, m);
    }
    __m256i t = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8 * g)));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(t), d);
}

/* y for weight rows r0..r0+R-1 x activation rows c0..c0+C-1. */
INLINE void tile(const int nibble, const int R, const int C, const duet_mm_job *job, int64_t r0,
                 int64_t c0, const float *sc)
{
    const int64_t k = job->k, nb = k / 32;
    const int bb = duet_dtype_get(job->wt)->block_bytes;
    const int qoff = job->wt == DUET_Q4_1 ? 4 : 2;
    __m256 acc[DECODE_R][TILE_C];
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
            acc[r][c] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        /* One row at a time keeps acc, the row's 4 weight vectors and its
         * scales within the 16 ymm registers (R = 8, C = 1 or R = 4, C = 2). */
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m256 d = _mm256_broadcast_ss(sc + b * 2 * DUET_TILE_R_MAX + r);
            __m256 m = _mm256_broadcast_ss(sc + b * 2 * DUET_TILE_R_MAX + DUET_TILE_R_MAX + r);
            __m256 wv[4];
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++)
                wv[g] = dequant8(nibble, wrow[r] + b * bb, g, d, m);
#pragma GCC unroll 8
            for (int c = 0; c < C; c++) {
#pragma GCC unroll 4
                for (int g = 0; g < 4; g++)
                    acc[r][c] = _mm256_fmadd_ps(wv[g], _mm256_loadu_ps(xr[c] + b * 32 + 8 * g),
                                                acc[r][c]);
            }
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

#define TILE_CASES(X)                                                                   \
    X(1, 1) X(1, 2) X(2, 1) X(2, 2) X(3, 1) X(3, 2) X(4, 1) X(4, 2) X(5, 1) X(6, 1)     \
    X(7, 1) X(8, 1)

static void tile_any(int nibble, int R, int C, const duet_mm_job *job, int64_t r0, int64_t c0,
                     const float *sc)
{
    switch (R * 16 + C * 2 + nibble) {
#define CASE(r, c)                                            \
    case r * 16 + c * 2 + 1: tile(1, r, c, job, r0, c0, sc); break; \
    case r * 16 + c * 2: tile(0, r, c, job, r0, c0, sc); break;
        TILE_CASES(CASE)
#undef CASE
    default: break;
    }
}

void duet_mm_region_f32act_avx2(const duet_mm_job *job, int64_t r0, int64_t r1, int64_t c0,
                                int64_t c1, float *scratch)
{
    const int nibble = job->wt != DUET_Q8_0;
    const int64_t tr = c1 - c0 == 1 ? DECODE_R : TILE_R;
    for (int64_t r = r0; r < r1; r += tr) {
        int R = r1 - r < tr ? (int)(r1 - r) : (int)tr;
        duet_mm_prefetch_rows(job, r + PREFETCH_TILES * tr, tr, r1);
        duet_f32act_load_scales(job, r, R, scratch);
        for (int64_t c = c0; c < c1; c += TILE_C) {
            int C = c1 - c < TILE_C ? (int)(c1 - c) : TILE_C;
            tile_any(nibble, R, C, job, r, c, scratch);
        }
    }
}
