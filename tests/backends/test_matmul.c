/*
 * test_matmul.c — the fast matmul (duet_matmul_isa / _fast) against the
 * reference (duet_matmul_ref) for every weight type and every kernel
 * family this CPU has, plus the invariances duet promises: neither the
 * batch size nor the thread count changes a bit of the output.
 *
 * Weights are random blocks (random quant bytes, random but sane half
 * scales), so every bit pattern a block can hold gets exercised.
 *
 * Q4_0/Q4_1/Q8_0 have two fast paths: the default keeps activations f32
 * and dequantizes the weights exactly, so it must match the reference to
 * f32 summation error (NMSE <= 1e-9); the int8-activation opt-in only to
 * matmul tolerance (5e-4).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "quant.h"
#include "threadpool.h"

static const duet_dtype all_types[] = {DUET_F32,  DUET_F16,  DUET_BF16, DUET_Q8_0, DUET_Q4_0,
                                       DUET_Q4_1, DUET_Q4_K, DUET_Q5_K, DUET_Q6_K};
#define N_TYPES (sizeof all_types / sizeof all_types[0])

static const int64_t ms[] = {1, 2, 3, 5, 8, 17, 64};
static const int64_t ns[] = {1, 7, 64, 193};

typedef struct rng {
    uint64_t s;
} rng;

static uint32_t rng_u32(rng *r)
{
    r->s = r->s * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(r->s >> 33);
}

/* Uniform in [lo, hi). */
static float rng_f(rng *r, float lo, float hi)
{
    return lo + (hi - lo) * (float)(rng_u32(r) >> 8) / 16777216.0f;
}

static void put_half(uint8_t *p, float v)
{
    uint16_t h = duet_f32_to_f16(v);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* n rows of k random weights of type t (caller frees). */
static uint8_t *random_weights(rng *r, duet_dtype t, int64_t n, int64_t k)
{
    size_t row = duet_dtype_row_bytes(t, k);
    assert_true(row > 0);
    uint8_t *w = malloc(row * (size_t)n);
    assert_non_null(w);
    for (size_t i = 0; i < row * (size_t)n; i++)
        w[i] = (uint8_t)rng_u32(r);
    const duet_dtype_info *info = duet_dtype_get(t);
    int64_t nblocks = n * (k / info->block_elems);
    for (int64_t b = 0; b < nblocks; b++) {
        uint8_t *p = w + b * info->block_bytes;
        switch (t) {
        case DUET_F32: {
            float v = rng_f(r, -1.0f, 1.0f);
            memcpy(p, &v, 4);
            break;
        }
        case DUET_F16: put_half(p, rng_f(r, -1.0f, 1.0f)); break;
        case DUET_BF16: {
            uint16_t h = duet_f32_to_bf16(rng_f(r, -1.0f, 1.0f));
            p[0] = (uint8_t)h;
            p[1] = (uint8_t)(h >> 8);
            break;
        }
        case DUET_Q4_0:
        case DUET_Q8_0: put_half(p, rng_f(r, 0.001f, 0.02f)); break;
        case DUET_Q4_1:
            put_half(p, rng_f(r, 0.001f, 0.02f));
            put_half(p + 2, rng_f(r, -0.1f, 0.05f));
            break;
        case DUET_Q4_K:
        case DUET_Q5_K:
            put_half(p, rng_f(r, 0.0005f, 0.002f));
            put_half(p + 2, rng_f(r, 0.0005f, 0.002f));
            break;
        case DUET_Q6_K: put_half(p + 208, rng_f(r, 0.0005f, 0.002f)); break;
        default: fail();
        }
    }
    return w;
}

static float *random_floats(rng *r, int64_t count)
{
    float *x = malloc((size_t)count * sizeof *x);
    assert_non_null(x);
    for (int64_t i = 0; i < count; i++)
        x[i] = rng_f(r, -1.0f, 1.0f);
    return x;
}

static float *nan_floats(int64_t count)
{
    float *y = malloc((size_t)count * sizeof *y);
    assert_non_null(y);
    for (int64_t i = 0; i < count; i++)
        y[i] = NAN;
    return y;
}

/* sum((a-b)^2) / sum(b^2); b is the reference. */
static double nmse(const float *a, const float *b, int64_t count)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < count; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0.0 ? num / den : num;
}

static int all_finite(const float *y, int64_t count)
{
    for (int64_t i = 0; i < count; i++)
        if (!isfinite(y[i]))
            return 0;
    return 1;
}

static int64_t ks_for(duet_dtype t, int64_t out[3])
{
    const duet_dtype_info *info = duet_dtype_get(t);
    if (info->block_elems == 256) {
        out[0] = 256;
        out[1] = 512;
        out[2] = 1536;
    } else {
        out[0] = 256;
        out[1] = 576;
        out[2] = 1536;
    }
    return 3;
}

typedef struct fixture {
    duet_threadpool *pool2;
    duet_cpu_isa isas[2];
    int n_isas;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f || duet_threadpool_create(2, &f->pool2) != DUET_OK)
        return -1;
    /* The defaults are under test, whatever the caller's shell exports. */
    unsetenv("DUET_CPU_MATMUL");
    unsetenv("DUET_CPU_REFERENCE");
    duet_cpu_features feat;
    duet_cpu_features_get(&feat);
    duet_cpu_isa best = duet_cpu_isa_select(&feat, 0);
    if (best >= DUET_CPU_ISA_AVX2)
        f->isas[f->n_isas++] = DUET_CPU_ISA_AVX2;
    if (best >= DUET_CPU_ISA_AVX512)
        f->isas[f->n_isas++] = DUET_CPU_ISA_AVX512;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    duet_threadpool_free(f->pool2);
    free(f);
    return 0;
}

static int is_int_quant(duet_dtype t)
{
    return t == DUET_Q4_0 || t == DUET_Q4_1 || t == DUET_Q8_0;
}

/* What a fast path must reach vs the reference. */
static double tolerance(duet_dtype t, duet_mm_act path)
{
    return is_int_quant(t) && path == DUET_MM_ACT_F32 ? 1e-9 : 5e-4;
}

/* One (type, shape, activation path): fast vs reference, every output
 * written and finite, batch / thread invariance per kernel family. */
static void check_case_path(const fixture *f, rng *r, duet_dtype t, duet_mm_act path, int64_t m,
                            int64_t k, int64_t n, int with_bias)
{
    const double tol = tolerance(t, path);
    uint8_t *w = random_weights(r, t, n, k);
    float *x = random_floats(r, m * k);
    float *bias = with_bias ? random_floats(r, n) : NULL;
    float *ref = nan_floats(m * n);
    duet_matmul_ref(x, w, t, bias, ref, m, k, n);
    assert_true(all_finite(ref, m * n));
    for (int s = 0; s < f->n_isas; s++) {
        float *first = NULL;
        for (int threads = 1; threads <= 2; threads++) {
            float *y = nan_floats(m * n);
            duet_matmul_isa_act(threads == 2 ? f->pool2 : NULL, f->isas[s], path, x, w, t, bias,
                                y, m, k, n);
            if (!all_finite(y, m * n))
                fail_msg("%s m=%lld k=%lld n=%lld isa=%d path=%d threads=%d: unwritten or "
                         "non-finite output", duet_dtype_get(t)->name, (long long)m,
                         (long long)k, (long long)n, (int)f->isas[s], (int)path, threads);
            double e = nmse(y, ref, m * n);
            if (!(e <= tol))
                fail_msg("%s m=%lld k=%lld n=%lld isa=%d path=%d: NMSE %g > %g",
                         duet_dtype_get(t)->name, (long long)m, (long long)k, (long long)n,
                         (int)f->isas[s], (int)path, e, tol);
            if (!first) {
                first = y;
                continue;
            }
            /* The thread count changes no bit. */
            if (memcmp(first, y, (size_t)(m * n) * sizeof *y) != 0)
                fail_msg("%s m=%lld k=%lld n=%lld isa=%d path=%d: 2 threads differ bitwise "
                         "from 1", duet_dtype_get(t)->name, (long long)m, (long long)k,
                         (long long)n, (int)f->isas[s], (int)path);
            free(y);
        }
        /* Batch invariance: each row alone gives the same bits as in the batch. */
        if (m > 1) {
            float *one = nan_floats(n);
            for (int64_t i = 0; i < m; i++) {
                for (int64_t j = 0; j < n; j++)
                    one[j] = NAN;
                duet_matmul_isa_act(NULL, f->isas[s], path, x + i * k, w, t, bias, one, 1, k, n);
                if (memcmp(one, first + i * n, (size_t)n * sizeof *one) != 0)
                    fail_msg("%s m=%lld k=%lld n=%lld isa=%d path=%d: row %lld differs from "
                             "the m=1 result", duet_dtype_get(t)->name, (long long)m,
                             (long long)k, (long long)n, (int)f->isas[s], (int)path,
                             (long long)i);
            }
            free(one);
        }
        free(first);
    }
    free(ref);
    free(bias);
    free(x);
    free(w);
}

/* check_case_path for every path the type has. */
static void check_case(const fixture *f, rng *r, duet_dtype t, int64_t m, int64_t k, int64_t n,
                       int with_bias)
{
    /* Both paths see the same data. */
    rng again = *r;
    check_case_path(f, r, t, DUET_MM_ACT_F32, m, k, n, with_bias);
    if (is_int_quant(t))
        check_case_path(f, &again, t, DUET_MM_ACT_INT8, m, k, n, with_bias);
}

static void test_fast_matches_reference(void **state)
{
    const fixture *f = *state;
    if (f->n_isas == 0)
        skip();
    rng r = {42};
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        int64_t ks[3];
        ks_for(all_types[ti], ks);
        for (size_t ki = 0; ki < 3; ki++)
            for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++)
                for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
                    check_case(f, &r, all_types[ti], ms[mi], ks[ki], ns[ni],
                               (int)((mi + ni) & 1));
    }
}

/* Plain types need not have k a multiple of 8 or 32: the ragged tail. */
static void test_float_types_ragged_k(void **state)
{
    const fixture *f = *state;
    if (f->n_isas == 0)
        skip();
    rng r = {7};
    const duet_dtype plain[] = {DUET_F32, DUET_F16, DUET_BF16};
    const int64_t ks[] = {1, 7, 9, 100};
    for (size_t ti = 0; ti < 3; ti++)
        for (size_t ki = 0; ki < 4; ki++)
            check_case(f, &r, plain[ti], 5, ks[ki], 9, 1);
}

/* An odd number of 32-element blocks takes the single-block tail of the
 * two-blocks-per-vector kernels. */
static void test_odd_block_count(void **state)
{
    const fixture *f = *state;
    if (f->n_isas == 0)
        skip();
    rng r = {11};
    const duet_dtype types[] = {DUET_Q4_0, DUET_Q4_1, DUET_Q8_0};
    const int64_t ks[] = {32, 96, 800};
    for (size_t ti = 0; ti < 3; ti++)
        for (size_t ki = 0; ki < 3; ki++)
            check_case(f, &r, types[ti], 6, ks[ki], 11, (int)(ki & 1));
}

/* The Q4_1 decode shape of SmolLM2's LM head class, with bias, at the
 * sizes the model uses (k = 576, many columns) and 2 threads. */
static void test_model_shapes(void **state)
{
    const fixture *f = *state;
    if (f->n_isas == 0)
        skip();
    rng r = {99};
    check_case(f, &r, DUET_Q4_1, 3, 576, 1536, 0);
    check_case(f, &r, DUET_Q8_0, 2, 576, 2051, 0);
    check_case(f, &r, DUET_Q4_1, 70, 1536, 576, 1);
}

/* A batch of 512 rows (prefill size, several passes over the weights):
 * every row still gives the bits of its m = 1 call. */
static void test_batch_invariance_512(void **state)
{
    const fixture *f = *state;
    if (f->n_isas == 0)
        skip();
    rng r = {512};
    const duet_dtype types[] = {DUET_Q4_0, DUET_Q4_1, DUET_Q8_0};
    for (size_t ti = 0; ti < 3; ti++)
        check_case(f, &r, types[ti], 512, 576, 67, (int)(ti & 1));
}

/* With one-hot activations the f32 path returns single weights: they must
 * be bitwise the reference dequantization, in the right element order
 * (nibble j and j+16 share a byte), for every row and tile position. */
static void test_f32act_weights_exact(void **state)
{
    const fixture *f = *state;
    if (f->n_isas == 0)
        skip();
    rng r = {77};
    const duet_dtype types[] = {DUET_Q4_0, DUET_Q4_1, DUET_Q8_0};
    const int64_t k = 96, n = 11;
    float *x = calloc((size_t)(k * k), sizeof *x);
    float *want = malloc((size_t)(n * k) * sizeof *want);
    assert_non_null(x);
    assert_non_null(want);
    for (int64_t i = 0; i < k; i++)
        x[i * k + i] = 1.0f;
    for (size_t ti = 0; ti < 3; ti++) {
        uint8_t *w = random_weights(&r, types[ti], n, k);
        size_t row = duet_dtype_row_bytes(types[ti], k);
        for (int64_t j = 0; j < n; j++)
            duet_dequant_row(types[ti], w + (size_t)j * row, want + j * k, k);
        for (int s = 0; s < f->n_isas; s++) {
            float *y = nan_floats(k * n);
            duet_matmul_isa_act(NULL, f->isas[s], DUET_MM_ACT_F32, x, w, types[ti], NULL, y, k,
                                k, n);
            for (int64_t i = 0; i < k; i++)
                for (int64_t j = 0; j < n; j++)
                    if (memcmp(&y[i * n + j], &want[j * k + i], sizeof *y) != 0)
                        fail_msg("%s isa=%d: weight (%lld, %lld) is %.9g, reference %.9g",
                                 duet_dtype_get(types[ti])->name, (int)f->isas[s], (long long)j,
                                 (long long)i, y[i * n + j], want[j * k + i]);
            free(y);
        }
        free(w);
    }
    free(want);
    free(x);
}

/* DUET_CPU_MATMUL=int8 (exactly) switches duet_matmul_fast to the int8
 * path; anything else leaves the f32 default. */
static void test_int8_opt_in(void **state)
{
    const fixture *f = *state;
    if (f->n_isas == 0)
        skip();
    rng r = {21};
    const int64_t m = 5, k = 576, n = 33;
    uint8_t *w = random_weights(&r, DUET_Q4_1, n, k);
    float *x = random_floats(&r, m * k);
    float *f32 = nan_floats(m * n), *int8 = nan_floats(m * n), *y = nan_floats(m * n);
    duet_cpu_isa isa = duet_cpu_isa_detect();
    duet_matmul_isa_act(NULL, isa, DUET_MM_ACT_F32, x, w, DUET_Q4_1, NULL, f32, m, k, n);
    duet_matmul_isa_act(NULL, isa, DUET_MM_ACT_INT8, x, w, DUET_Q4_1, NULL, int8, m, k, n);
    /* The two paths really differ, or the checks below prove nothing. */
    assert_true(memcmp(f32, int8, (size_t)(m * n) * sizeof *y) != 0);

    assert_int_equal(duet_mm_act_detect(), DUET_MM_ACT_F32);
    duet_matmul_fast(NULL, x, w, DUET_Q4_1, NULL, y, m, k, n);
    assert_memory_equal(y, f32, (size_t)(m * n) * sizeof *y);
    /* duet_matmul_isa is the f32 default too. */
    duet_matmul_isa(NULL, isa, x, w, DUET_Q4_1, NULL, y, m, k, n);
    assert_memory_equal(y, f32, (size_t)(m * n) * sizeof *y);

    setenv("DUET_CPU_MATMUL", "int8", 1);
    assert_int_equal(duet_mm_act_detect(), DUET_MM_ACT_INT8);
    duet_matmul_fast(NULL, x, w, DUET_Q4_1, NULL, y, m, k, n);
    assert_memory_equal(y, int8, (size_t)(m * n) * sizeof *y);

    setenv("DUET_CPU_MATMUL", "1", 1);
    assert_int_equal(duet_mm_act_detect(), DUET_MM_ACT_F32);
    unsetenv("DUET_CPU_MATMUL");
    free(y);
    free(int8);
    free(f32);
    free(x);
    free(w);
}

/* The NMSE check must catch a wrong answer: corrupt one output of a correct
 * result by a realistic amount and see the metric cross the threshold. */
static void test_nmse_catches_corruption(void **state)
{
    const fixture *f = *state;
    if (f->n_isas == 0)
        skip();
    rng r = {3};
    const int64_t m = 4, k = 576, n = 64;
    uint8_t *w = random_weights(&r, DUET_Q4_1, n, k);
    float *x = random_floats(&r, m * k);
    float *ref = nan_floats(m * n), *y = nan_floats(m * n);
    duet_matmul_ref(x, w, DUET_Q4_1, NULL, ref, m, k, n);
    duet_matmul_isa(NULL, f->isas[0], x, w, DUET_Q4_1, NULL, y, m, k, n);
    assert_true(nmse(y, ref, m * n) <= 5e-4);
    /* A kernel with a 3% scale error (a wrong block scale, say). */
    for (int64_t i = 0; i < m * n; i++)
        y[i] *= 1.03f;
    assert_true(nmse(y, ref, m * n) > 5e-4);
    /* And one that forgot a single column. */
    duet_matmul_isa(NULL, f->isas[0], x, w, DUET_Q4_1, NULL, y, m, k, n);
    y[5] = 0.0f;
    assert_true(nmse(y, ref, m * n) > 5e-4 || fabsf(ref[5]) < 1e-3f);
    /* The f32-activation bound: 1e-4 relative error must already fail. */
    duet_matmul_isa(NULL, f->isas[0], x, w, DUET_Q4_1, NULL, y, m, k, n);
    assert_true(nmse(y, ref, m * n) <= 1e-9);
    for (int64_t i = 0; i < m * n; i++)
        y[i] *= 1.0001f;
    assert_true(nmse(y, ref, m * n) > 1e-9);
    free(y);
    free(ref);
    free(x);
    free(w);
}

/* DUET_CPU_REFERENCE=1 makes the fast entry point give the reference bits. */
static void test_reference_override(void **state)
{
    (void)state;
    rng r = {5};
    const int64_t m = 3, k = 256, n = 17;
    uint8_t *w = random_weights(&r, DUET_Q4_K, n, k);
    float *x = random_floats(&r, m * k);
    float *ref = nan_floats(m * n), *y = nan_floats(m * n);
    duet_matmul_ref(x, w, DUET_Q4_K, NULL, ref, m, k, n);
    /* Without the override, _fast's cheap per-call detection picks the
     * family cpuid picks (Q4_1: the families differ in the last bits). */
    unsetenv("DUET_CPU_REFERENCE");
    uint8_t *w41 = random_weights(&r, DUET_Q4_1, n, k);
    float *via_isa = nan_floats(m * n);
    duet_matmul_isa(NULL, duet_cpu_isa_detect(), x, w41, DUET_Q4_1, NULL, via_isa, m, k, n);
    duet_matmul_fast(NULL, x, w41, DUET_Q4_1, NULL, y, m, k, n);
    assert_memory_equal(y, via_isa, (size_t)(m * n) * sizeof *y);
    free(via_isa);
    free(w41);
    setenv("DUET_CPU_REFERENCE", "1", 1);
    assert_int_equal(duet_cpu_isa_detect(), DUET_CPU_ISA_REF);
    duet_matmul_fast(NULL, x, w, DUET_Q4_K, NULL, y, m, k, n);
    unsetenv("DUET_CPU_REFERENCE");
    assert_memory_equal(y, ref, (size_t)(m * n) * sizeof *y);
    free(y);
    free(ref);
    free(x);
    free(w);
}

static void test_isa_select(void **state)
{
    (void)state;
    duet_cpu_features f = {0};
    assert_int_equal(duet_cpu_isa_select(&f, 0), DUET_CPU_ISA_REF);
    f.avx2 = f.fma = f.f16c = 1;
    assert_int_equal(duet_cpu_isa_select(&f, 0), DUET_CPU_ISA_AVX2);
    assert_int_equal(duet_cpu_isa_select(&f, 1), DUET_CPU_ISA_REF);
    f.avx512f = f.avx512bw = f.avx512vl = f.avx512dq = 1;
    assert_int_equal(duet_cpu_isa_select(&f, 0), DUET_CPU_ISA_AVX2); /* no VNNI */
    f.avx512vnni = 1;
    assert_int_equal(duet_cpu_isa_select(&f, 0), DUET_CPU_ISA_AVX2); /* no AVX-VNNI */
    f.avxvnni = 1;
    assert_int_equal(duet_cpu_isa_select(&f, 0), DUET_CPU_ISA_AVX512);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_isa_select),
        cmocka_unit_test(test_reference_override),
        cmocka_unit_test(test_nmse_catches_corruption),
        cmocka_unit_test(test_float_types_ragged_k),
        cmocka_unit_test(test_odd_block_count),
        cmocka_unit_test(test_model_shapes),
        cmocka_unit_test(test_f32act_weights_exact),
        cmocka_unit_test(test_int8_opt_in),
        cmocka_unit_test(test_batch_invariance_512),
        cmocka_unit_test(test_fast_matches_reference),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
