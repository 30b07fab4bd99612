/*
 * matmul.c — duet_matmul_fast: picks the kernel family and the activation
 * path (f32 by default; int8, quantized once per call, on opt-in), and
 * splits the output columns (weight rows) across the thread pool. The reduction over k is never split, so neither the thread
 * count nor the batch size changes any output bit (see quant_simd.h).
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"
#include "quant_simd.h"

/* Activation rows per pass over a thread's weights: 64 rows of k = 1536
 * (int8, or f32: 384 KiB) stay in L2 while every weight tile streams past
 * them. */
#define ROWS_PER_PASS 64

duet_cpu_isa duet_cpu_isa_select(const duet_cpu_features *f, int force_reference)
{
    if (force_reference || !f->avx2 || !f->fma || !f->f16c)
        return DUET_CPU_ISA_REF;
    /* quant_avx512.c is also built with -mavxvnni, and GCC then encodes
     * vpdpbusd as AVX-VNNI (VEX), so that file needs both. */
    if (f->avx512f && f->avx512bw && f->avx512vl && f->avx512dq && f->avx512vnni && f->avxvnni)
        return DUET_CPU_ISA_AVX512;
    return DUET_CPU_ISA_AVX2;
}

static int reference_forced(void)
{
    const char *env = getenv("DUET_CPU_REFERENCE");
    return env && env[0] && strcmp(env, "0") != 0;
}

duet_cpu_isa duet_cpu_isa_detect(void)
{
    duet_cpu_features f;
    duet_cpu_features_get(&f);
    return duet_cpu_isa_select(&f, reference_forced());
}

/* duet_cpu_isa_detect for every call of duet_matmul_fast: cpuid is a VM
 * exit under a hypervisor (~70 us per detection measured on a KVM guest,
 * more than a whole decode-size matmul), so read the features libgcc
 * detected once at start-up (it checks XCR0 as well). getenv is ~30 ns. */
static duet_cpu_isa isa_per_call(void)
{
    duet_cpu_features f = {0};
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    f.avx2 = __builtin_cpu_supports("avx2") != 0;
    f.fma = __builtin_cpu_supports("fma") != 0;
    f.f16c = __builtin_cpu_supports("f16c") != 0;
    f.avx512f = __builtin_cpu_supports("avx512f") != 0;
    f.avx512bw = __builtin_cpu_supports("avx512bw") != 0;
    f.avx512vl = __builtin_cpu_supports("avx512vl") != 0;
    f.avx512dq = __builtin_cpu_supports("avx512dq") != 0;
    f.avx512vnni = __builtin_cpu_supports("avx512vnni") != 0;
    f.avxvnni = __builtin_cpu_supports("avxvnni") != 0;
#endif
    return duet_cpu_isa_select(&f, reference_forced());
}

duet_mm_act duet_mm_act_detect(void)
{
    const char *env = getenv("DUET_CPU_MATMUL");
    return env && strcmp(env, "int8") == 0 ? DUET_MM_ACT_INT8 : DUET_MM_ACT_F32;
}

/* Columns per claimed piece: about PIECES_PER_THREAD pieces a thread, so
 * a thread slowed by something else on its core leaves its share to the
 * others; whole tiles (DUET_TILE_R_MAX rows) except at the end. */
enum { PIECES_PER_THREAD = 8 };

static int64_t mm_piece(int64_t n, int nth)
{
    int64_t per = n / ((int64_t)nth * PIECES_PER_THREAD);
    per = (per + DUET_TILE_R_MAX - 1) / DUET_TILE_R_MAX * DUET_TILE_R_MAX;
    return per > DUET_TILE_R_MAX ? per : DUET_TILE_R_MAX;
}

typedef struct mm_call {
    duet_mm_job job;
    duet_cpu_isa isa;
    int f32act;       /* integer quant through the f32-activation kernels */
    const float *x;   /* for quantization */
    duet_act_q8 *act; /* writable view of job.a */
    float *scratch;   /* [nth][scratch_floats] */
    int64_t scratch_floats;
    int64_t piece;    /* output columns per claimed piece */
    duet_claims claims;
} mm_call;

static void quantize_worker(void *arg, int ith, int nth)
{
    mm_call *c = arg;
    int64_t lo, hi;
    duet_split_rows(c->job.m, ith, nth, 1, &lo, &hi);
    duet_act_quantize_avx2(c->x, lo, hi, c->act);
}

/* Columns [lo, hi) for every activation row, ROWS_PER_PASS rows a pass. */
static void matmul_piece(const mm_call *c, int64_t lo, int64_t hi, float *scratch)
{
    for (int64_t c0 = 0; c0 < c->job.m; c0 += ROWS_PER_PASS) {
        int64_t c1 = c0 + ROWS_PER_PASS < c->job.m ? c0 + ROWS_PER_PASS : c->job.m;
        if (c->f32act && c->isa == DUET_CPU_ISA_AVX512)
            duet_mm_region_f32act_avx512(&c->job, lo, hi, c0, c1, scratch);
        else if (c->f32act)
            duet_mm_region_f32act_avx2(&c->job, lo, hi, c0, c1, scratch);
        else if (c->isa == DUET_CPU_ISA_AVX512)
            duet_mm_region_avx512(&c->job, lo, hi, c0, c1, scratch);
        else
            duet_mm_region_avx2(&c->job, lo, hi, c0, c1, scratch);
    }
}

/* Output columns are claimed in pieces (mm_piece) until none are left. A
 * column's result is its own accumulation over k whatever piece or tile
 * it lands in, so the split changes no bit. */
static void matmul_worker(void *arg, int ith, int nth)
{
    mm_call *c = arg;
    (void)nth;
    float *scratch = c->scratch + ith * c->scratch_floats;
    for (;;) {
        int64_t lo = duet_claim(&c->claims) * c->piece;
        if (lo >= c->job.n)
            break;
        int64_t hi = lo + c->piece < c->job.n ? lo + c->piece : c->job.n;
        matmul_piece(c, lo, hi, scratch);
    }
}

static void run(duet_threadpool *pool, duet_parallel_fn fn, void *arg)
{
    if (pool)
        duet_threadpool_run(pool, fn, arg);
    else
        fn(arg, 0, 1);
}

void duet_matmul_isa_act(duet_threadpool *pool, duet_cpu_isa isa, duet_mm_act path,
                         const float *x, const void *w, duet_dtype wt, const float *bias,
                         float *y, int64_t m, int64_t k, int64_t n)
{
    if (isa == DUET_CPU_ISA_REF || m <= 0 || n <= 0) {
        duet_matmul_ref(x, w, wt, bias, y, m, k, n);
        return;
    }
    assert(duet_dtype_row_bytes(wt, k) > 0);
    int nth = pool ? duet_threadpool_size(pool) : 1;
    mm_call c = {
        .job = {.wt = wt, .w = w, .row_bytes = duet_dtype_row_bytes(wt, k), .x = x,
                .bias = bias, .y = y, .m = m, .k = k, .n = n},
        .isa = isa,
        .f32act = duet_mm_is_int(wt) && path == DUET_MM_ACT_F32,
        .x = x,
    };
    /* The f32-activation kernels gather scales with 32-bit row offsets;
     * rows of over ~250 MiB are no model's, but stay correct. */
    if (c.f32act && c.job.row_bytes > INT32_MAX / DUET_TILE_R_MAX) {
        duet_matmul_ref(x, w, wt, bias, y, m, k, n);
        return;
    }
    c.scratch_floats = duet_mm_scratch_floats(&c.job);
    c.piece = mm_piece(n, nth);
    duet_claims_init(&c.claims);
    int quantize_x = duet_mm_is_int(wt) && !c.f32act;
    duet_act_q8 act = {.k = k, .nb = k / 32, .paired = isa == DUET_CPU_ISA_AVX512,
                       .offset128 = isa == DUET_CPU_ISA_AVX512 && wt == DUET_Q8_0};
    /* One allocation: per-thread scratch, then the quantized activations. */
    size_t scratch_bytes = (size_t)nth * (size_t)c.scratch_floats * sizeof(float);
    size_t act_bytes = quantize_x ? (size_t)m * (size_t)(k + 8 * act.nb) : 0;
    char *mem = malloc(scratch_bytes + act_bytes);
    if (!mem) { /* cannot fail: the reference needs no memory */
        duet_matmul_ref(x, w, wt, bias, y, m, k, n);
        return;
    }
    c.scratch = (float *)mem;
    if (quantize_x) {
        act.d = (float *)(mem + scratch_bytes);
        act.s = act.d + m * act.nb;
        act.q = (int8_t *)(act.s + m * act.nb);
        c.act = &act;
        c.job.a = &act;
        /* A pool round trip costs more than quantizing a few rows. */
        if (m >= 16)
            run(pool, quantize_worker, &c);
        else
            quantize_worker(&c, 0, 1);
    }
    run(pool, matmul_worker, &c);
    free(mem);
}

void duet_matmul_isa(duet_threadpool *pool, duet_cpu_isa isa, const float *x, const void *w,
                     duet_dtype wt, const float *bias, float *y, int64_t m, int64_t k,
                     int64_t n)
{
    duet_matmul_isa_act(pool, isa, DUET_MM_ACT_F32, x, w, wt, bias, y, m, k, n);
}

void duet_matmul_fast(duet_threadpool *pool, const float *x, const void *w, duet_dtype wt,
                      const float *bias, float *y, int64_t m, int64_t k, int64_t n)
{
    duet_matmul_isa_act(pool, isa_per_call(), duet_mm_act_detect(), x, w, wt, bias, y, m, k,
                        n);
}
