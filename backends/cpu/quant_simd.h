/*
 * quant_simd.h — what matmul.c shares with the per-ISA kernel files
 * (quant_avx2.c, quant_avx512.c, and quant_f32act_avx2.c /
 * quant_f32act_avx512.c for the default f32-activation path of the
 * 32-element integer quants). Internal to the CPU backend.
 *
 * Batch invariance rests on one rule every kernel here keeps: output (i, j)
 * is computed by the same sequence of float operations whatever tile shape,
 * remainder path or thread computed it. Each (weight row, activation row)
 * pair owns one float accumulator (8 lanes; 16 in the AVX-512 integer
 * and f32-activation kernels) whose lanes receive, in block order, fixed groups of the
 * block's elements; the lanes are then summed by one fixed tree. Integer
 * block dots and the f32-activation dequantized weights are exact. The AVX2 and AVX-512 kernels group lanes
 * differently, so their results may differ in the last bits; each is
 * deterministic and batch/thread invariant on its own.
 */
#ifndef DUET_QUANT_SIMD_H
#define DUET_QUANT_SIMD_H

#include <stddef.h>
#include <stdint.h>

#include <xmmintrin.h>

#include "dtype.h"

/* Largest weight-row tile any kernel uses; sizes the per-thread scratch. */
#define DUET_TILE_R_MAX 8

/* Activations quantized once per call to the 8-bit partner format of the
 * 32-element integer quants: x ~= d[b] * q(b, e). s[b] = d[b] * sum of the
 * block's q, for the min term of Q4_1 (and the -8 offset of Q4_0).
 * paired: the 512-bit kernels read two blocks per vector, so blocks 2p and
 * 2p+1 are stored interleaved by 16-byte halves as [2p e0-15 | 2p+1 e0-15 |
 * 2p e16-31 | 2p+1 e16-31], the order the weight nibbles unpack to (an odd
 * last block stays as it is). offset128: q is stored as q + 128 (unsigned)
 * for weights that are themselves signed (Q8_0 with vpdpbusd). */
typedef struct duet_act_q8 {
    int8_t *q; /* [m][k] */
    float *d;  /* [m][nb] */
    float *s;  /* [m][nb] */
    int64_t k, nb;
    int paired, offset128;
} duet_act_q8;

/* One matmul call as the kernels see it. */
typedef struct duet_mm_job {
    duet_dtype wt;
    const uint8_t *w;   /* [n] rows of row_bytes */
    size_t row_bytes;
    const float *x;     /* [m][k] f32 (float path) */
    const duet_act_q8 *a; /* quantized x (integer path), else NULL */
    const float *bias;  /* [n] or NULL */
    float *y;           /* [m][n] */
    int64_t m, k, n;
} duet_mm_job;

/* Prefetch weight rows [r, min(r + rows, r1)) into L1: at m = 1 each weight
 * byte is read once and the hardware prefetcher alone stalls on every
 * tile's first touch. Always inlined: as a separate function GCC finds it
 * side-effect free (prefetches do not count) and deletes the call. */
static inline __attribute__((always_inline)) void
duet_mm_prefetch_rows(const duet_mm_job *job, int64_t r, int64_t rows, int64_t r1)
{
    if (r >= r1)
        return;
    const char *p = (const char *)job->w + (size_t)r * job->row_bytes;
    size_t bytes = (size_t)(r1 - r < rows ? r1 - r : rows) * job->row_bytes;
    for (size_t off = 0; off < bytes; off += 64)
        _mm_prefetch(p + off, _MM_HINT_T0);
}

/* Whether wt is a 32-element integer quant: it goes through the f32-
 * activation kernels by default, the integer path on opt-in. */
static inline int duet_mm_is_int(duet_dtype wt)
{
    return wt == DUET_Q4_0 || wt == DUET_Q4_1 || wt == DUET_Q8_0;
}

/* Floats of per-thread scratch a region call needs: for the integer
 * types a tile's block scales (2 per block and row) and then, for the
 * f32-activation kernels, its rows dequantized (k per row, from float
 * duet_mm_dequant_offset). */
static inline int64_t duet_mm_scratch_floats(const duet_mm_job *job)
{
    int64_t per_row = duet_mm_is_int(job->wt) ? 2 * (job->k / 32) + job->k : job->k;
    return DUET_TILE_R_MAX * (per_row + 8) + 16;
}

static inline int64_t duet_mm_dequant_offset(const duet_mm_job *job)
{
    return (2 * DUET_TILE_R_MAX * (job->k / 32) + 15) / 16 * 16;
}

/* Quantize rows [r0, r1) of x (k a multiple of 32) into a. */
void duet_act_quantize_avx2(const float *x, int64_t r0, int64_t r1, duet_act_q8 *a);

/* Compute y for weight rows [r0, r1) x activation rows [c0, c1). scratch
 * holds duet_mm_scratch_floats(job) floats owned by the calling thread. */
void duet_mm_region_avx2(const duet_mm_job *job, int64_t r0, int64_t r1, int64_t c0,
                         int64_t c1, float *scratch);
void duet_mm_region_avx512(const duet_mm_job *job, int64_t r0, int64_t r1, int64_t c0,
                           int64_t c1, float *scratch);

/* The f32-activation kernels (quant_f32act_*.c) of the integer quants:
 * same contract as the region calls above, job->a unused. */
void duet_mm_region_f32act_avx2(const duet_mm_job *job, int64_t r0, int64_t r1, int64_t c0,
                                int64_t c1, float *scratch);
void duet_mm_region_f32act_avx512(const duet_mm_job *job, int64_t r0, int64_t r1, int64_t c0,
                                  int64_t c1, float *scratch);
/* f32 block scales of R <= DUET_TILE_R_MAX weight rows from r0, block-
 * major so a tile walks them with one pointer: sc[b][0][r] = d, sc[b][1][r]
 * = m (Q4_1's min, Q4_0's -8d), each [DUET_TILE_R_MAX] with rows past R
 * repeating row R-1. Needs 2 * DUET_TILE_R_MAX * (k/32) floats. */
void duet_f32act_load_scales(const duet_mm_job *job, int64_t r0, int R, float *sc);

#endif
