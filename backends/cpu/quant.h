/*
 * quant.h — weight types on the CPU: dequantization, dot products and the
 * matmul kernels built from them.
 *
 * Two paths for every weight type:
 *  - reference: plain C, obviously correct. Dequantize to f32, then dot in
 *    a fixed order with double accumulation per block of the row. The
 *    conformance oracle for every other path and backend.
 *  - fast: SIMD (AVX2/FMA/F16C baseline, AVX-512/VNNI where present,
 *    chosen at run time). For the 32-element integer quants (Q4_0, Q4_1,
 *    Q8_0) the activations stay f32 and each weight block is dequantized
 *    in registers (exactly the reference's values) and dotted with FMA:
 *    NMSE vs the reference ~1e-13. For F32/F16/BF16 and the K-quants,
 *    straight FMA on f32 weights.
 *  - int8 activations, opt-in only (DUET_CPU_MATMUL=int8 in the
 *    environment, read by duet_matmul_fast on each call): Q4_0/Q4_1/Q8_0
 *    quantize the activations once per row to an 8-bit partner format and
 *    dot with integer instructions. Faster, but ~0.5% relative noise per
 *    matmul, too much for a 30-layer model to keep fp32 greedy outputs.
 * Fast results match the reference to matmul tolerance (NMSE <= 5e-4),
 * not bitwise; both are deterministic and depend neither on the thread
 * count nor on how many rows are in the batch (batch invariance).
 */
#ifndef DUET_QUANT_H
#define DUET_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "threadpool.h"

/* Dequantize n elements (a whole number of blocks) of type t at src. */
void duet_dequant_row(duet_dtype t, const void *src, float *dst, int64_t n);

/* Reference dot product of one weight row (n elements of type t) with x. */
float duet_vec_dot_ref(duet_dtype t, const void *w, const float *x, int64_t n);

/* CPU features detected at run time (cpuid + xgetbv). */
typedef struct duet_cpu_features {
    int avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512vnni, avxvnni;
    int avx512dq;
} duet_cpu_features;
void duet_cpu_features_get(duet_cpu_features *out);

/* Kernel family of the fast path. duet_cpu_isa_detect costs cpuid (a VM
 * exit under a hypervisor, ~70 us measured): call it once and keep it. */
typedef enum duet_cpu_isa {
    DUET_CPU_ISA_REF = 0,    /* the reference path (no SIMD) */
    DUET_CPU_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C */
    DUET_CPU_ISA_AVX512 = 2, /* + AVX-512 F/BW/VL/DQ, AVX512-VNNI and AVX-VNNI */
} duet_cpu_isa;

/* The widest family f supports; REF when force_reference is non-zero. */
duet_cpu_isa duet_cpu_isa_select(const duet_cpu_features *f, int force_reference);
/* duet_cpu_isa_select for this CPU, honouring DUET_CPU_REFERENCE=1. */
duet_cpu_isa duet_cpu_isa_detect(void);

/* y[m][n] = x[m][k] . w[n][k]^T (+ bias[n] when bias != NULL).
 * _ref: single-threaded reference. _fast: the SIMD path, split across the
 * pool (pool may be NULL = single thread); DUET_CPU_REFERENCE=1 in the
 * environment makes it fall back to the reference, DUET_CPU_MATMUL=int8
 * selects the int8-activation path for Q4_0/Q4_1/Q8_0. */
void duet_matmul_ref(const float *x, const void *w, duet_dtype wt, const float *bias,
                     float *y, int64_t m, int64_t k, int64_t n);
void duet_matmul_fast(duet_threadpool *pool, const float *x, const void *w, duet_dtype wt,
                      const float *bias, float *y, int64_t m, int64_t k, int64_t n);
/* duet_matmul_fast with the kernel family chosen by the caller (the CPU
 * backend detects once at start-up); isa must be one duet_cpu_isa_select
 * allows on this CPU. duet_matmul_fast detects per call (~0.3 us).
 * Each family is deterministic and batch/thread invariant (AVX2 and AVX512
 * may differ in the last bits); REF gives duet_matmul_ref's result.
 * Never fails: if scratch memory cannot be allocated it computes the
 * reference result instead. */
void duet_matmul_isa(duet_threadpool *pool, duet_cpu_isa isa, const float *x, const void *w,
                     duet_dtype wt, const float *bias, float *y, int64_t m, int64_t k,
                     int64_t n);

/* Activations of the Q4_0/Q4_1/Q8_0 fast path (see the top of the file). */
typedef enum duet_mm_act {
    DUET_MM_ACT_F32 = 0,  /* default: f32 activations, dequantized weights */
    DUET_MM_ACT_INT8 = 1, /* opt-in: 8-bit activations, integer dots */
} duet_mm_act;

/* DUET_MM_ACT_INT8 when DUET_CPU_MATMUL=int8 is in the environment, else
 * DUET_MM_ACT_F32 (a getenv, ~30 ns). */
duet_mm_act duet_mm_act_detect(void);

/* duet_matmul_isa with the activation path chosen by the caller (path is
 * ignored for the other weight types). duet_matmul_isa is this with
 * DUET_MM_ACT_F32; duet_matmul_fast passes duet_mm_act_detect(). */
void duet_matmul_isa_act(duet_threadpool *pool, duet_cpu_isa isa, duet_mm_act path,
                         const float *x, const void *w, duet_dtype wt, const float *bias,
                         float *y, int64_t m, int64_t k, int64_t n);

#endif
