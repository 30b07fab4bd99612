/*
 * test_quant.c — dequantization and the reference dot product for every
 * weight type.
 *
 * Each type gets one hand-built block: the bytes are packed here from
 * chosen scales and quants, and the expected floats come from the format's
 * formula applied to those chosen values (all exactly representable, so
 * the comparison is exact). Random blocks are then cross-checked against
 * the gguf Python package's dequantize (an independent implementation),
 * saved in tests/reference/fixtures/quant_gguf.json (gguf-py 0.19.0, numpy
 * seed 1234).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "quant.h"

/* IEEE half bit patterns of the scales used below. */
#define H_0_0625 0x2c00
#define H_0_125 0x3000
#define H_0_25 0x3400
#define H_0_5 0x3800
#define H_1 0x3c00
#define H_2 0x4000
#define H_M1 0xbc00

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void expect_row(duet_dtype t, const uint8_t *blk, const float *want, int n)
{
    float got[512];
    for (int i = 0; i < n; i++)
        got[i] = NAN;
    duet_dequant_row(t, blk, got, n);
    for (int i = 0; i < n; i++)
        if (got[i] != want[i])
            fail_msg("%s element %d: got %.9g, want %.9g", duet_dtype_get(t)->name, i,
                     (double)got[i], (double)want[i]);
    /* The reference dot is the double-accumulated dot of those floats. */
    float x[512];
    double acc = 0.0;
    for (int i = 0; i < n; i++) {
        x[i] = (float)((i * 7) % 11) - 5.0f + 0.25f * (float)(i % 3);
        acc += (double)want[i] * (double)x[i];
    }
    float dot = duet_vec_dot_ref(t, blk, x, n);
    if (dot != (float)acc)
        fail_msg("%s dot: got %.9g, want %.9g", duet_dtype_get(t)->name, (double)dot, acc);
}

static void test_f32(void **state)
{
    (void)state;
    const float want[5] = {1.0f, -2.5f, 0.0f, 3.0e38f, -1.0e-40f};
    uint8_t blk[sizeof want];
    memcpy(blk, want, sizeof want);
    expect_row(DUET_F32, blk, want, 5);
}

static void test_f16(void **state)
{
    (void)state;
    /* 1, -2, largest finite, smallest subnormal (2^-24), -0, 0.5 */
    const uint16_t bits[6] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000, 0x3800};
    const float want[6] = {1.0f, -2.0f, 65504.0f, 5.9604644775390625e-8f, -0.0f, 0.5f};
    uint8_t blk[12];
    for (int i = 0; i < 6; i++)
        put16(blk + 2 * i, bits[i]);
    expect_row(DUET_F16, blk, want, 6);
}

static void test_bf16(void **state)
{
    (void)state;
    const uint16_t bits[4] = {0x3f80, 0xc040, 0x4049, 0x0000};
    const float want[4] = {1.0f, -3.0f, 3.140625f, 0.0f};
    uint8_t blk[8];
    for (int i = 0; i < 4; i++)
        put16(blk + 2 * i, bits[i]);
    expect_row(DUET_BF16, blk, want, 4);
}

static void test_q4_0(void **state)
{
    (void)state;
    uint8_t blk[18];
    float want[32];
    put16(blk, H_0_5);
    for (int j = 0; j < 16; j++) {
        int lo = j, hi = 15 - j;
        blk[2 + j] = (uint8_t)(lo | (hi << 4));
        want[j] = 0.5f * (float)(lo - 8);
        want[j + 16] = 0.5f * (float)(hi - 8);
    }
    expect_row(DUET_Q4_0, blk, want, 32);
}

static void test_q4_1(void **state)
{
    (void)state;
    uint8_t blk[20];
    float want[32];
    put16(blk, H_0_25);
    put16(blk + 2, H_M1);
    for (int j = 0; j < 16; j++) {
        int lo = (j * 3) % 16, hi = (j * 5 + 1) % 16;
        blk[4 + j] = (uint8_t)(lo | (hi << 4));
        want[j] = 0.25f * (float)lo - 1.0f;
        want[j + 16] = 0.25f * (float)hi - 1.0f;
    }
    expect_row(DUET_Q4_1, blk, want, 32);
}

static void test_q8_0(void **state)
{
    (void)state;
    uint8_t blk[34];
    float want[32];
    put16(blk, H_0_125);
    for (int j = 0; j < 32; j++) {
        int q = j * 8 - 128; /* -128 .. 120 */
        blk[2 + j] = (uint8_t)(int8_t)q;
        want[j] = 0.125f * (float)q;
    }
    expect_row(DUET_Q8_0, blk, want, 32);
}

/* The K-quants' 12 scale bytes, packed from 8 six-bit scales and mins. */
static void pack_k_scales(uint8_t *s, const int *sc, const int *mn)
{
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
    }
}

/* Sub-block scales/mins that use the high bits of every field. */
static const int k_sc[8] = {1, 2, 3, 63, 17, 33, 48, 5};
static const int k_mn[8] = {0, 4, 10, 20, 63, 31, 16, 9};

static void test_q4_k(void **state)
{
    (void)state;
    uint8_t blk[144];
    float want[256];
    put16(blk, H_0_5);      /* d */
    put16(blk + 2, H_0_25); /* dmin */
    pack_k_scales(blk + 4, k_sc, k_mn);
    /* Element 64g + l (l < 32) is the low nibble of qs[32g + l], element
     * 64g + 32 + l its high nibble; sub-block = element / 32. */
    for (int e = 0; e < 256; e++) {
        int q = (e * 7 + e / 32) % 16, sub = e / 32, g = e / 64, l = e % 32;
        uint8_t *byte = &blk[16 + 32 * g + l];
        if (sub % 2 == 0)
            *byte = (uint8_t)((*byte & 0xf0) | q);
        else
            *byte = (uint8_t)((*byte & 0x0f) | (q << 4));
        want[e] = 0.5f * (float)k_sc[sub] * (float)q - 0.25f * (float)k_mn[sub];
    }
    expect_row(DUET_Q4_K, blk, want, 256);
}

static void test_q5_k(void **state)
{
    (void)state;
    uint8_t blk[176];
    float want[256];
    memset(blk, 0, sizeof blk);
    put16(blk, H_0_25);
    put16(blk + 2, H_0_5);
    pack_k_scales(blk + 4, k_sc, k_mn);
    /* As Q4_K, plus bit `sub` of qh[l] is the fifth bit of element l of
     * sub-block sub. */
    for (int e = 0; e < 256; e++) {
        int q = (e * 13 + 5) % 32, sub = e / 32, g = e / 64, l = e % 32;
        uint8_t *byte = &blk[48 + 32 * g + l];
        if (sub % 2 == 0)
            *byte = (uint8_t)((*byte & 0xf0) | (q & 15));
        else
            *byte = (uint8_t)((*byte & 0x0f) | ((q & 15) << 4));
        if (q & 16)
            blk[16 + l] |= (uint8_t)(1u << sub);
        want[e] = 0.25f * (float)k_sc[sub] * (float)q - 0.5f * (float)k_mn[sub];
    }
    expect_row(DUET_Q5_K, blk, want, 256);
}

static void test_q6_k(void **state)
{
    (void)state;
    uint8_t blk[210];
    float want[256];
    memset(blk, 0, sizeof blk);
    const int8_t sc[16] = {1, -1, 2, -3, 5, 8, -13, 21, 127, -128, 0, 7, -7, 64, -64, 3};
    memcpy(blk + 192, sc, 16);
    put16(blk + 208, H_0_0625);
    /* Element 128h + 32i + l: low 4 bits in ql[64h + l + 32(i%2)] (low
     * nibble for i < 2, high for i >= 2), top 2 bits in bits 2i, 2i+1 of
     * qh[32h + l]; value d * sc[e/16] * (q - 32). */
    for (int e = 0; e < 256; e++) {
        int q = (e * 11 + e / 64) % 64, h = e / 128, i = (e % 128) / 32, l = e % 32;
        uint8_t *lo = &blk[64 * h + l + 32 * (i % 2)];
        if (i < 2)
            *lo = (uint8_t)((*lo & 0xf0) | (q & 15));
        else
            *lo = (uint8_t)((*lo & 0x0f) | ((q & 15) << 4));
        blk[128 + 32 * h + l] |= (uint8_t)((q >> 4) << (2 * i));
        want[e] = 0.0625f * (float)sc[e / 16] * (float)(q - 32);
    }
    expect_row(DUET_Q6_K, blk, want, 256);
}

/* Rows of several blocks: the row walks blocks in order. */
static void test_multi_block_row(void **state)
{
    (void)state;
    uint8_t blk[3 * 18];
    float want[96];
    const uint16_t d[3] = {H_1, H_2, H_0_125};
    const float df[3] = {1.0f, 2.0f, 0.125f};
    for (int b = 0; b < 3; b++) {
        put16(blk + 18 * b, d[b]);
        for (int j = 0; j < 16; j++) {
            blk[18 * b + 2 + j] = (uint8_t)(((j + b) & 15) | (((j * b) & 15) << 4));
            want[32 * b + j] = df[b] * (float)(((j + b) & 15) - 8);
            want[32 * b + 16 + j] = df[b] * (float)(((j * b) & 15) - 8);
        }
    }
    expect_row(DUET_Q4_0, blk, want, 96);
}

static int hex_nibble(char c)
{
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* Random blocks against gguf-py's dequantize. Its numpy code multiplies in
 * a different order for the K-quants, so allow one rounding step. */
static void test_gguf_fixture(void **state)
{
    (void)state;
    json_error_t jerr;
    json_t *root = json_load_file(DUET_SOURCE_DIR "/tests/reference/fixtures/quant_gguf.json", 0,
                                  &jerr);
    if (!root)
        fail_msg("fixture: %s (line %d)", jerr.text, jerr.line);
    json_t *cases = json_object_get(root, "cases");
    assert_true(json_array_size(cases) >= 8);
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *jc = json_array_get(cases, c);
        const char *name = json_string_value(json_object_get(jc, "type"));
        const char *hex = json_string_value(json_object_get(jc, "hex"));
        json_t *vals = json_object_get(jc, "values");
        assert_non_null(name);
        assert_non_null(hex);
        duet_dtype t = DUET_I32;
        for (uint32_t id = 0; id < 64; id++) {
            const duet_dtype_info *info = duet_dtype_get(id);
            if (info && info->is_weight_type && strcmp(info->name, name) == 0)
                t = (duet_dtype)id;
        }
        assert_int_not_equal(t, DUET_I32);
        size_t nbytes = strlen(hex) / 2, n = json_array_size(vals);
        assert_int_equal(duet_dtype_row_bytes(t, (int64_t)n), nbytes);
        uint8_t *raw = malloc(nbytes);
        float *got = malloc(n * sizeof *got), *x = malloc(n * sizeof *x);
        assert_true(raw && got && x);
        for (size_t i = 0; i < nbytes; i++)
            raw[i] = (uint8_t)(hex_nibble(hex[2 * i]) << 4 | hex_nibble(hex[2 * i + 1]));
        for (size_t i = 0; i < n; i++)
            got[i] = NAN;
        duet_dequant_row(t, raw, got, (int64_t)n);
        double acc = 0.0;
        for (size_t i = 0; i < n; i++) {
            double want = json_real_value(json_array_get(vals, i));
            double tol = 2.4e-7 * fabs(want) + 1e-9;
            if (!(fabs((double)got[i] - want) <= tol))
                fail_msg("%s element %zu: got %.9g, gguf-py %.9g", name, i, (double)got[i],
                         want);
            x[i] = (float)(i % 5) - 2.0f;
            acc += want * (double)x[i];
        }
        float dot = duet_vec_dot_ref(t, raw, x, (int64_t)n);
        assert_true(fabs((double)dot - acc) <= 1e-5 * (fabs(acc) + 1.0));
        free(x);
        free(got);
        free(raw);
    }
    json_decref(root);
}

static void test_cpu_features(void **state)
{
    (void)state;
    duet_cpu_features f;
    memset(&f, 0xff, sizeof f);
    duet_cpu_features_get(&f);
    /* Every flag is 0 or 1, and the implications between them hold. */
    const int *flags = (const int *)&f;
    for (size_t i = 0; i < sizeof f / sizeof(int); i++)
        assert_true(flags[i] == 0 || flags[i] == 1);
    if (f.avx512bw || f.avx512vl || f.avx512vnni || f.avx512dq)
        assert_true(f.avx512f);
#if defined(__x86_64__)
    /* Every x86-64 CPU duet targets has AVX2 (see the brief). */
    assert_true(f.avx2 && f.fma && f.f16c);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f32),         cmocka_unit_test(test_f16),
        cmocka_unit_test(test_bf16),        cmocka_unit_test(test_q4_0),
        cmocka_unit_test(test_q4_1),        cmocka_unit_test(test_q8_0),
        cmocka_unit_test(test_q4_k),        cmocka_unit_test(test_q5_k),
        cmocka_unit_test(test_q6_k),        cmocka_unit_test(test_multi_block_row),
        cmocka_unit_test(test_gguf_fixture), cmocka_unit_test(test_cpu_features),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
