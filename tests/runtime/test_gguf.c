/*
 * test_gguf.c — the GGUF reader against images built byte by byte here
 * (tests/runtime/gguf_builder.h), against forged and truncated files, and
 * against the real SmolLM2 model when it is present (facts checked
 * independently with gguf-py).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "gguf.h"
#include "gguf_builder.h"

enum { N_SAMPLE_TENSORS = 6 };

/* Shapes and sizes written out by hand (not computed by duet). */
static const struct {
    const char *name;
    uint32_t n_dims;
    int64_t ne[4];
    uint32_t type;
    size_t nbytes;
} sample_tensors[N_SAMPLE_TENSORS] = {
    {"f32.t", 2, {8, 2, 1, 1}, 0, 8 * 2 * 4},
    {"f16.t", 1, {16, 1, 1, 1}, 1, 16 * 2},
    {"q4_1.t", 2, {64, 3, 1, 1}, 3, 2 * 20 * 3},
    {"q8_0.t", 3, {32, 2, 2, 1}, 8, 34 * 2 * 2},
    {"q4_k.t", 4, {256, 1, 1, 2}, 12, 144 * 2},
    {"bf16.t", 1, {4, 1, 1, 1}, 30, 4 * 2},
};

typedef struct arr_case {
    const char *key;
    uint32_t type;
    int n;
    int64_t iv[4];
    double fv[4];
} arr_case;

static const arr_case arr_cases[] = {
    {"a.u8", DUET_GGUF_UINT8, 3, {1, 2, 255}, {0}},
    {"a.i8", DUET_GGUF_INT8, 4, {-1, 0, 127, -128}, {0}},
    {"a.u16", DUET_GGUF_UINT16, 2, {65535, 7}, {0}},
    {"a.i16", DUET_GGUF_INT16, 2, {-32768, 32767}, {0}},
    {"a.u32", DUET_GGUF_UINT32, 2, {4294967295LL, 0}, {0}},
    {"a.i32", DUET_GGUF_INT32, 2, {-5, 2147483647}, {0}},
    {"a.u64", DUET_GGUF_UINT64, 2, {-1 /* UINT64_MAX */, 9}, {0}},
    {"a.i64", DUET_GGUF_INT64, 2, {INT64_MIN, 42}, {0}},
    {"a.bool", DUET_GGUF_BOOL, 3, {1, 0, 1}, {0}},
    {"a.f32", DUET_GGUF_FLOAT32, 3, {0}, {0.5, -2.25, 3e38}},
    {"a.f64", DUET_GGUF_FLOAT64, 2, {0}, {1e300, -0.125}},
};
#define N_ARR_CASES (sizeof arr_cases / sizeof arr_cases[0])

static const char str4[] = "nul\0in"; /* a string with a NUL inside */
static const struct {
    const char *s;
    size_t len;
} arr_strs[] = {{"", 0}, {"hello", 5}, {str4, 6}, {"w\xc3\xb6rld", 6}};

/* Where the interesting fields of a sample image are, for patching. */
typedef struct sample {
    gguf_builder b;
    size_t key0_len;      /* length field of key 0 */
    size_t str_val_len;   /* length field of general.architecture's value */
    size_t f32_type;      /* value type field of t.f32 */
    size_t t_i8_key;      /* length field of t.i8's key */
    size_t arr_u8_elem;   /* element type field of a.u8 */
    size_t arr_str_n;     /* length field of a.str */
    size_t arr_str_elem1; /* length field of a.str[1] */
    size_t align_val;     /* general.alignment's value; 0 if absent */
    size_t tinfo[N_SAMPLE_TENSORS]; /* name length field of each tensor info */
    uint64_t tdata[N_SAMPLE_TENSORS]; /* offsets in the data section */
    size_t data_offset;
    uint32_t alignment;
} sample;

static uint8_t pattern(int tensor, size_t j) { return (uint8_t)(tensor * 37 + (int)j * 7 + 1); }

static int elem_bytes(uint32_t t)
{
    switch (t) {
    case DUET_GGUF_UINT8: case DUET_GGUF_INT8: case DUET_GGUF_BOOL: return 1;
    case DUET_GGUF_UINT16: case DUET_GGUF_INT16: return 2;
    case DUET_GGUF_UINT32: case DUET_GGUF_INT32: case DUET_GGUF_FLOAT32: return 4;
    default: return 8;
    }
}

/* align 0: no general.alignment key (the default 32 applies). */
static void sample_build(sample *s, uint32_t version, uint32_t align)
{
    gguf_builder *b = &s->b;
    memset(s, 0, sizeof *s);
    s->alignment = align ? align : 32;
    uint64_t n_kv = 19 + N_ARR_CASES + (align ? 1 : 0);
    gb_header(b, version, N_SAMPLE_TENSORS, n_kv);

    s->key0_len = b->n;
    gb_key(b, "general.architecture", DUET_GGUF_STRING);
    s->str_val_len = gb_str(b, "llama");
    gb_key(b, "t.u8", DUET_GGUF_UINT8), gb_u8(b, 200);
    s->t_i8_key = b->n;
    gb_key(b, "t.i8", DUET_GGUF_INT8), gb_u8(b, (uint8_t)-100);
    gb_key(b, "t.i8p", DUET_GGUF_INT8), gb_u8(b, 5);
    gb_key(b, "t.u16", DUET_GGUF_UINT16), gb_u16(b, 60000);
    gb_key(b, "t.i16", DUET_GGUF_INT16), gb_u16(b, (uint16_t)-30000);
    gb_key(b, "t.u32", DUET_GGUF_UINT32), gb_u32(b, 4000000000u);
    gb_key(b, "t.i32", DUET_GGUF_INT32), gb_u32(b, (uint32_t)-2000000000);
    s->f32_type = gb_key(b, "t.f32", DUET_GGUF_FLOAT32);
    gb_f32(b, 1.5f);
    gb_key(b, "t.bool", DUET_GGUF_BOOL), gb_u8(b, 1);
    gb_key(b, "t.false", DUET_GGUF_BOOL), gb_u8(b, 0);
    gb_key(b, "t.u64", DUET_GGUF_UINT64), gb_u64(b, (1ull << 40) + 7);
    gb_key(b, "t.u64s", DUET_GGUF_UINT64), gb_u64(b, 123);
    gb_key(b, "t.i64", DUET_GGUF_INT64), gb_u64(b, (uint64_t)-(1ll << 40));
    gb_key(b, "t.i64s", DUET_GGUF_INT64), gb_u64(b, 77);
    gb_key(b, "t.f64", DUET_GGUF_FLOAT64), gb_f64(b, 0.1);
    gb_key(b, "s.empty", DUET_GGUF_STRING), gb_str(b, "");
    for (size_t i = 0; i < N_ARR_CASES; i++) {
        const arr_case *a = &arr_cases[i];
        gb_key(b, a->key, DUET_GGUF_ARRAY);
        size_t at = gb_arr(b, a->type, (uint64_t)a->n);
        if (i == 0)
            s->arr_u8_elem = at;
        for (int j = 0; j < a->n; j++) {
            if (a->type == DUET_GGUF_FLOAT32)
                gb_f32(b, (float)a->fv[j]);
            else if (a->type == DUET_GGUF_FLOAT64)
                gb_f64(b, a->fv[j]);
            else
                gb_le(b, (uint64_t)a->iv[j], elem_bytes(a->type));
        }
    }
    gb_key(b, "a.str", DUET_GGUF_ARRAY);
    s->arr_str_n = gb_arr(b, DUET_GGUF_STRING, 4) + 4;
    for (int j = 0; j < 4; j++) {
        size_t at = gb_strn(b, arr_strs[j].s, arr_strs[j].len);
        if (j == 1)
            s->arr_str_elem1 = at;
    }
    gb_key(b, "a.empty", DUET_GGUF_ARRAY), gb_arr(b, DUET_GGUF_INT32, 0);
    if (align) {
        gb_key(b, "general.alignment", DUET_GGUF_UINT32);
        s->align_val = gb_u32(b, align);
    }

    uint64_t off = 0;
    for (int i = 0; i < N_SAMPLE_TENSORS; i++) {
        off = (off + s->alignment - 1) / s->alignment * s->alignment;
        s->tdata[i] = off;
        s->tinfo[i] = gb_tensor_info(b, sample_tensors[i].name, sample_tensors[i].n_dims,
                                     sample_tensors[i].ne, sample_tensors[i].type, off);
        off += sample_tensors[i].nbytes;
    }
    gb_pad(b, s->alignment);
    s->data_offset = b->n;
    for (int i = 0; i < N_SAMPLE_TENSORS; i++) {
        while (b->n < s->data_offset + s->tdata[i])
            gb_u8(b, 0xEE);
        for (size_t j = 0; j < sample_tensors[i].nbytes; j++)
            gb_u8(b, pattern(i, j));
    }
    /* The image ends exactly at the last tensor's last byte, so cutting any
     * byte off makes it invalid. */
}

/* Field offsets inside tensor info i. */
static size_t ti_name_len(const sample *s, int i)
{
    uint64_t n = 0;
    for (int k = 0; k < 8; k++)
        n |= (uint64_t)s->b.p[s->tinfo[i] + (size_t)k] << (8 * k);
    return (size_t)n;
}
static size_t ti_ndims(const sample *s, int i) { return s->tinfo[i] + 8 + ti_name_len(s, i); }
static size_t ti_ne(const sample *s, int i, int d) { return ti_ndims(s, i) + 4 + 8 * (size_t)d; }
static size_t ti_type(const sample *s, int i)
{
    return ti_ne(s, i, (int)sample_tensors[i].n_dims);
}
static size_t ti_offset(const sample *s, int i) { return ti_type(s, i) + 4; }

/* Parse an exact-size heap copy, so any read past the end is caught by
 * ASan; returns the status and keeps duet_last_error(). */
static duet_status parse_copy(const uint8_t *p, size_t n)
{
    uint8_t *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    if (n)
        memcpy(copy, p, n);
    duet_gguf *g = (duet_gguf *)0x1;
    duet_status st = duet_gguf_open_memory(copy, n, "test.gguf", &g);
    if (st != DUET_OK)
        assert_null(g);
    duet_gguf_close(g);
    free(copy);
    return st;
}

static void expect_fail_(duet_status got, duet_status want, const char *sub1, const char *sub2,
                         int line)
{
    const char *msg = duet_last_error();
    int ok = got == want && strstr(msg, sub1) && (!sub2 || strstr(msg, sub2));
    if (!ok)
        fail_msg("line %d: status %d (want %d), message \"%s\" (want \"%s\"%s%s%s)", line,
                 (int)got, (int)want, msg, sub1, sub2 ? " and \"" : "", sub2 ? sub2 : "",
                 sub2 ? "\"" : "");
}
#define expect_fail(got, want, s1, s2) expect_fail_((got), (want), (s1), (s2), __LINE__)

static void patch_and_expect(const sample *s, size_t at, uint64_t v, int n, duet_status want,
                             const char *sub1, const char *sub2, int line)
{
    uint8_t *img = malloc(s->b.n);
    assert_non_null(img);
    memcpy(img, s->b.p, s->b.n);
    for (int i = 0; i < n; i++)
        img[at + (size_t)i] = (uint8_t)(v >> (8 * i));
    duet_status st = parse_copy(img, s->b.n);
    free(img);
    expect_fail_(st, want, sub1, sub2, line);
}
#define PATCH(s, at, v, n, want, s1, s2) patch_and_expect((s), (at), (v), (n), (want), (s1), (s2), __LINE__)

/* ---- round trip ------------------------------------------------------------ */

static void check_getters(const duet_gguf *g)
{
    uint32_t u = 0;
    float f = 0;
    int bv = -1;
    duet_gguf_str str;

    assert_int_equal(duet_gguf_n_kv(g), 19 + N_ARR_CASES + (duet_gguf_find(g, "general.alignment") ? 1 : 0));
    assert_int_equal(duet_gguf_get_str(g, "general.architecture", &str), DUET_OK);
    assert_int_equal(str.len, 5);
    assert_memory_equal(str.ptr, "llama", 5);
    assert_true(duet_gguf_str_eq(str, "llama"));
    assert_false(duet_gguf_str_eq(str, "llam"));
    assert_false(duet_gguf_str_eq(str, "llamas"));
    assert_int_equal(duet_gguf_get_str(g, "s.empty", &str), DUET_OK);
    assert_int_equal(str.len, 0);
    assert_true(duet_gguf_str_eq(str, ""));

    static const struct {
        const char *key;
        uint32_t want;
    } u32_ok[] = {{"t.u8", 200},         {"t.i8p", 5},   {"t.u16", 60000},
                  {"t.u32", 4000000000u}, {"t.u64s", 123}, {"t.i64s", 77}};
    for (size_t i = 0; i < sizeof u32_ok / sizeof u32_ok[0]; i++) {
        u = 0;
        assert_int_equal(duet_gguf_get_u32(g, u32_ok[i].key, &u), DUET_OK);
        assert_int_equal(u, u32_ok[i].want);
    }
    expect_fail(duet_gguf_get_u32(g, "t.i8", &u), DUET_ERR_FORMAT, "'t.i8'", "-100");
    expect_fail(duet_gguf_get_u32(g, "t.i16", &u), DUET_ERR_FORMAT, "'t.i16'", "-30000");
    expect_fail(duet_gguf_get_u32(g, "t.i32", &u), DUET_ERR_FORMAT, "'t.i32'", "-2000000000");
    expect_fail(duet_gguf_get_u32(g, "t.u64", &u), DUET_ERR_FORMAT, "1099511627783", "uint32");
    expect_fail(duet_gguf_get_u32(g, "t.i64", &u), DUET_ERR_FORMAT, "'t.i64'", "-1099511627776");
    expect_fail(duet_gguf_get_u32(g, "t.f32", &u), DUET_ERR_FORMAT, "'t.f32'", "float32");
    expect_fail(duet_gguf_get_u32(g, "t.bool", &u), DUET_ERR_FORMAT, "'t.bool'", "bool");
    expect_fail(duet_gguf_get_u32(g, "a.u32", &u), DUET_ERR_FORMAT, "'a.u32'", "array");
    expect_fail(duet_gguf_get_u32(g, "no.such", &u), DUET_ERR_FORMAT, "'no.such'", "missing");
    u = 0;
    assert_int_equal(duet_gguf_get_u32_or(g, "no.such", 31, &u), DUET_OK);
    assert_int_equal(u, 31);
    expect_fail(duet_gguf_get_u32_or(g, "general.architecture", 31, &u), DUET_ERR_FORMAT,
                "'general.architecture'", "string");

    assert_int_equal(duet_gguf_get_f32(g, "t.f32", &f), DUET_OK);
    assert_true(f == 1.5f);
    assert_int_equal(duet_gguf_get_f32(g, "t.f64", &f), DUET_OK);
    assert_true(f == (float)0.1);
    expect_fail(duet_gguf_get_f32(g, "t.u8", &f), DUET_ERR_FORMAT, "'t.u8'", "uint8");
    expect_fail(duet_gguf_get_f32(g, "no.such", &f), DUET_ERR_FORMAT, "'no.such'", NULL);
    assert_int_equal(duet_gguf_get_f32_or(g, "no.such", 2.5f, &f), DUET_OK);
    assert_true(f == 2.5f);
    expect_fail(duet_gguf_get_f32_or(g, "t.i32", 2.5f, &f), DUET_ERR_FORMAT, "'t.i32'", "int32");

    assert_int_equal(duet_gguf_get_bool_or(g, "t.bool", 0, &bv), DUET_OK);
    assert_int_equal(bv, 1);
    assert_int_equal(duet_gguf_get_bool_or(g, "t.false", 1, &bv), DUET_OK);
    assert_int_equal(bv, 0);
    assert_int_equal(duet_gguf_get_bool_or(g, "no.such", 7, &bv), DUET_OK);
    assert_int_equal(bv, 7);
    expect_fail(duet_gguf_get_bool_or(g, "t.u8", 0, &bv), DUET_ERR_FORMAT, "'t.u8'", "bool");
    expect_fail(duet_gguf_get_str(g, "t.u32", &str), DUET_ERR_FORMAT, "'t.u32'", "string");
    expect_fail(duet_gguf_get_str(g, "no.such", &str), DUET_ERR_FORMAT, "'no.such'", NULL);

    for (size_t i = 0; i < N_ARR_CASES; i++) {
        const arr_case *a = &arr_cases[i];
        const duet_gguf_kv *kv = NULL;
        assert_int_equal(duet_gguf_get_arr(g, a->key, (duet_gguf_type)a->type, &kv), DUET_OK);
        assert_ptr_equal(kv, duet_gguf_find(g, a->key));
        assert_int_equal(kv->type, DUET_GGUF_ARRAY);
        assert_int_equal(kv->elem_type, a->type);
        assert_int_equal(kv->n_elems, a->n);
        for (int j = 0; j < a->n; j++) {
            if (a->type == DUET_GGUF_FLOAT32) {
                assert_true(duet_gguf_arr_float(kv, (uint64_t)j) == (double)(float)a->fv[j]);
            } else if (a->type == DUET_GGUF_FLOAT64) {
                assert_true(duet_gguf_arr_float(kv, (uint64_t)j) == a->fv[j]);
            } else if (a->type == DUET_GGUF_UINT64 && a->iv[j] == -1) {
                /* above INT64_MAX: arr_int saturates, arr_float is exact */
                assert_true(duet_gguf_arr_int(kv, (uint64_t)j) == INT64_MAX);
                assert_true(duet_gguf_arr_float(kv, (uint64_t)j) == 18446744073709551615.0);
            } else {
                assert_true(duet_gguf_arr_int(kv, (uint64_t)j) == a->iv[j]);
                assert_true(duet_gguf_arr_float(kv, (uint64_t)j) == (double)a->iv[j]);
            }
        }
        /* past the end reads as 0, never out of bounds */
        assert_true(duet_gguf_arr_int(kv, (uint64_t)a->n) == 0);
        assert_true(duet_gguf_arr_float(kv, (uint64_t)a->n) == 0.0);
    }
    const duet_gguf_kv *kv = NULL;
    expect_fail(duet_gguf_get_arr(g, "a.u8", DUET_GGUF_INT8, &kv), DUET_ERR_FORMAT,
                "array of uint8", "array of int8");
    expect_fail(duet_gguf_get_arr(g, "t.u8", DUET_GGUF_UINT8, &kv), DUET_ERR_FORMAT, "'t.u8'",
                "array of uint8");
    expect_fail(duet_gguf_get_arr(g, "no.such", DUET_GGUF_UINT8, &kv), DUET_ERR_FORMAT,
                "'no.such'", NULL);
    assert_int_equal(duet_gguf_get_arr(g, "a.str", DUET_GGUF_STRING, &kv), DUET_OK);
    assert_int_equal(kv->n_elems, 4);
    for (int j = 0; j < 4; j++) {
        assert_int_equal(kv->strs[j].len, arr_strs[j].len);
        if (arr_strs[j].len)
            assert_memory_equal(kv->strs[j].ptr, arr_strs[j].s, arr_strs[j].len);
    }
    assert_int_equal(duet_gguf_get_arr(g, "a.empty", DUET_GGUF_INT32, &kv), DUET_OK);
    assert_int_equal(kv->n_elems, 0);

    /* scalars through the element readers */
    assert_true(duet_gguf_arr_int(duet_gguf_find(g, "t.i16"), 0) == -30000);
    assert_true(duet_gguf_arr_float(duet_gguf_find(g, "t.f64"), 0) == 0.1);

    assert_null(duet_gguf_find(g, "no.such"));
    assert_null(duet_gguf_find(g, "t.u"));
    assert_null(duet_gguf_find(g, ""));
    assert_null(duet_gguf_kv_at(g, -1));
    assert_null(duet_gguf_kv_at(g, duet_gguf_n_kv(g)));
    assert_true(duet_gguf_str_eq(duet_gguf_kv_at(g, 0)->key, "general.architecture"));
    assert_true(duet_gguf_str_eq(duet_gguf_kv_at(g, 1)->key, "t.u8"));
}

static void check_tensors(const duet_gguf *g, const sample *s)
{
    const uint8_t *base = duet_gguf_base(g);
    assert_int_equal(duet_gguf_data_offset(g), s->data_offset);
    assert_int_equal(duet_gguf_data_offset(g) % s->alignment, 0);
    assert_int_equal(duet_gguf_n_tensors(g), N_SAMPLE_TENSORS);
    for (int i = 0; i < N_SAMPLE_TENSORS; i++) {
        const duet_gguf_tensor *t = duet_gguf_tensor_at(g, i);
        assert_non_null(t);
        assert_ptr_equal(t, duet_gguf_find_tensor(g, sample_tensors[i].name));
        assert_true(duet_gguf_str_eq(t->name, sample_tensors[i].name));
        assert_int_equal(t->n_dims, sample_tensors[i].n_dims);
        for (int d = 0; d < 4; d++)
            assert_int_equal(t->ne[d], sample_tensors[i].ne[d]);
        assert_int_equal(t->type, sample_tensors[i].type);
        assert_int_equal(t->offset, s->tdata[i]);
        assert_int_equal(t->offset % s->alignment, 0);
        assert_int_equal(t->nbytes, sample_tensors[i].nbytes);
        assert_ptr_equal(t->data, base + s->data_offset + s->tdata[i]);
        for (size_t j = 0; j < t->nbytes; j++)
            assert_int_equal(((const uint8_t *)t->data)[j], pattern(i, j));
    }
    assert_null(duet_gguf_tensor_at(g, -1));
    assert_null(duet_gguf_tensor_at(g, N_SAMPLE_TENSORS));
    assert_null(duet_gguf_find_tensor(g, "f32"));
    assert_null(duet_gguf_find_tensor(g, "f32.t.x"));
}

static void roundtrip(uint32_t version, uint32_t align)
{
    sample s;
    duet_gguf *g = NULL;
    sample_build(&s, version, align);
    assert_int_equal(duet_gguf_open_memory(s.b.p, s.b.n, "sample.gguf", &g), DUET_OK);
    assert_int_equal(duet_gguf_version(g), version);
    assert_int_equal(duet_gguf_alignment(g), s.alignment);
    assert_int_equal(duet_gguf_file_size(g), s.b.n);
    assert_ptr_equal(duet_gguf_base(g), s.b.p);
    check_getters(g);
    check_tensors(g, &s);
    duet_gguf_close(g);
    gb_free(&s.b);
}

static void test_v3_default_alignment(void **state) { (void)state; roundtrip(3, 0); }
static void test_v2_default_alignment(void **state) { (void)state; roundtrip(2, 0); }
static void test_v3_alignment_64(void **state) { (void)state; roundtrip(3, 64); }
static void test_v2_alignment_256(void **state) { (void)state; roundtrip(2, 256); }
static void test_v3_alignment_1(void **state) { (void)state; roundtrip(3, 1); }

static void test_type_names(void **state)
{
    (void)state;
    assert_string_equal(duet_gguf_type_name(DUET_GGUF_UINT32), "uint32");
    assert_string_equal(duet_gguf_type_name(DUET_GGUF_ARRAY), "array");
    assert_string_equal(duet_gguf_type_name(DUET_GGUF_FLOAT64), "float64");
    assert_string_equal(duet_gguf_type_name(13), "unknown");
    duet_gguf_close(NULL);
}

/* The tokenizer indexes its 49k-entry vocabulary directly. */
static void test_large_string_array(void **state)
{
    (void)state;
    enum { N = 49152 };
    gguf_builder b = {0};
    char buf[32];
    gb_header(&b, 3, 0, 1);
    gb_key(&b, "tokenizer.ggml.tokens", DUET_GGUF_ARRAY);
    gb_arr(&b, DUET_GGUF_STRING, N);
    for (int i = 0; i < N; i++) {
        snprintf(buf, sizeof buf, "tok%d", i * 3);
        gb_str(&b, buf);
    }
    duet_gguf *g = NULL;
    const duet_gguf_kv *kv = NULL;
    assert_int_equal(duet_gguf_open_memory(b.p, b.n, "vocab", &g), DUET_OK);
    assert_int_equal(duet_gguf_get_arr(g, "tokenizer.ggml.tokens", DUET_GGUF_STRING, &kv), DUET_OK);
    assert_int_equal(kv->n_elems, N);
    for (int i = 0; i < N; i += 997) {
        snprintf(buf, sizeof buf, "tok%d", i * 3);
        assert_true(duet_gguf_str_eq(kv->strs[i], buf));
    }
    assert_true(duet_gguf_str_eq(kv->strs[N - 1], "tok147453"));
    assert_int_equal(duet_gguf_n_tensors(g), 0);
    assert_true(duet_gguf_data_offset(g) <= b.n);
    duet_gguf_close(g);
    gb_free(&b);
}

/* ---- malformed files ------------------------------------------------------------ */

static void test_truncated_everywhere(void **state)
{
    (void)state;
    sample s;
    sample_build(&s, 3, 64);
    for (size_t n = 0; n < s.b.n; n++) {
        duet_status st = parse_copy(s.b.p, n);
        if (st != DUET_ERR_FORMAT || duet_last_error()[0] == '\0')
            fail_msg("truncated to %zu of %zu bytes: status %d, \"%s\"", n, s.b.n, (int)st,
                     duet_last_error());
    }
    assert_int_equal(parse_copy(s.b.p, s.b.n), DUET_OK);
    gb_free(&s.b);
}

static void test_bad_header(void **state)
{
    (void)state;
    sample s;
    sample_build(&s, 3, 0);
    expect_fail(parse_copy(s.b.p, 0), DUET_ERR_FORMAT, "not a GGUF file", NULL);
    PATCH(&s, 0, 0x464c457f, 4, DUET_ERR_FORMAT, "not a GGUF file", "7f 45 4c 46");
    PATCH(&s, 4, 1, 4, DUET_ERR_UNSUPPORTED, "version 1", "supported: 2, 3");
    PATCH(&s, 4, 4, 4, DUET_ERR_UNSUPPORTED, "version 4", "supported: 2, 3");
    PATCH(&s, 4, 0, 4, DUET_ERR_FORMAT, "version 0", NULL);
    PATCH(&s, 4, 0x03000000, 4, DUET_ERR_UNSUPPORTED, "big-endian", NULL);
    PATCH(&s, 8, 1ull << 60, 8, DUET_ERR_FORMAT, "tensor_count 1152921504606846976", NULL);
    PATCH(&s, 8, UINT64_MAX, 8, DUET_ERR_FORMAT, "tensor_count", NULL);
    PATCH(&s, 16, 1ull << 62, 8, DUET_ERR_FORMAT, "kv_count 4611686018427387904", NULL);
    PATCH(&s, 16, UINT64_MAX, 8, DUET_ERR_FORMAT, "kv_count", NULL);
    /* a count the file could hold by size, but the keys are not there */
    PATCH(&s, 16, 40, 8, DUET_ERR_FORMAT, "key", NULL);
    gb_free(&s.b);
}

static void test_bad_strings(void **state)
{
    (void)state;
    sample s;
    sample_build(&s, 3, 0);
    PATCH(&s, s.key0_len, 1ull << 63, 8, DUET_ERR_FORMAT, "key 0", "key length 9223372036854775808");
    PATCH(&s, s.key0_len, UINT64_MAX, 8, DUET_ERR_FORMAT, "key length 18446744073709551615",
          "past the end");
    PATCH(&s, s.str_val_len, UINT64_MAX - 3, 8, DUET_ERR_FORMAT, "general.architecture",
          "string value length");
    PATCH(&s, s.arr_str_elem1, 99999999, 8, DUET_ERR_FORMAT, "'a.str'",
          "string array element 1 length 99999999");
    PATCH(&s, s.arr_str_n, 1ull << 61, 8, DUET_ERR_FORMAT, "'a.str'", "array length");
    /* numeric array whose bytes cannot fit */
    PATCH(&s, s.arr_u8_elem + 4, (1ull << 63) + 1, 8, DUET_ERR_FORMAT, "'a.u8'", "array length");
    /* a tensor name */
    PATCH(&s, s.tinfo[2], 1ull << 62, 8, DUET_ERR_FORMAT, "tensor info 2", "name length");
    gb_free(&s.b);
}

static void test_bad_types(void **state)
{
    (void)state;
    sample s;
    sample_build(&s, 3, 0);
    PATCH(&s, s.arr_u8_elem, DUET_GGUF_ARRAY, 4, DUET_ERR_UNSUPPORTED, "'a.u8'", "nested");
    PATCH(&s, s.arr_u8_elem, 13, 4, DUET_ERR_FORMAT, "'a.u8'", "element type 13");
    PATCH(&s, s.f32_type, 13, 4, DUET_ERR_FORMAT, "'t.f32'", "value type 13");
    PATCH(&s, s.f32_type, 0xffffffffu, 4, DUET_ERR_FORMAT, "'t.f32'", "value type 4294967295");
    PATCH(&s, ti_type(&s, 1), 23, 4, DUET_ERR_UNSUPPORTED, "'f16.t' has weight type 23",
          "supported: F32");
    PATCH(&s, ti_type(&s, 1), 6 /* Q5_0 */, 4, DUET_ERR_UNSUPPORTED, "weight type 6", "Q4_K");
    /* a key of another type where the alignment should be */
    gguf_builder b = {0};
    int64_t ne[1] = {8};
    gb_header(&b, 3, 1, 1);
    gb_key(&b, "general.alignment", DUET_GGUF_STRING), gb_str(&b, "64");
    gb_tensor_info(&b, "x", 1, ne, 0, 0);
    gb_pad(&b, 64);
    gb_bytes(&b, "0123456789abcdef0123456789abcdef", 32);
    expect_fail(parse_copy(b.p, b.n), DUET_ERR_FORMAT, "general.alignment", "string");
    gb_free(&b);
    gb_free(&s.b);
}

static void test_bad_alignment(void **state)
{
    (void)state;
    sample s;
    sample_build(&s, 3, 64);
    PATCH(&s, s.align_val, 48, 4, DUET_ERR_FORMAT, "general.alignment 48", "power of two");
    PATCH(&s, s.align_val, 0, 4, DUET_ERR_FORMAT, "general.alignment 0", "power of two");
    PATCH(&s, s.align_val, 0x80000001u, 4, DUET_ERR_FORMAT, "general.alignment", "power of two");
    /* 32 is valid, and so are the tensor offsets (multiples of 64) */
    uint8_t *img = malloc(s.b.n);
    memcpy(img, s.b.p, s.b.n);
    img[s.align_val] = 32;
    duet_gguf *g = NULL;
    assert_int_equal(duet_gguf_open_memory(img, s.b.n, "a32", &g), DUET_OK);
    assert_int_equal(duet_gguf_alignment(g), 32);
    duet_gguf_close(g);
    free(img);
    gb_free(&s.b);
}

static void test_bad_tensor_infos(void **state)
{
    (void)state;
    sample s;
    sample_build(&s, 3, 0);
    PATCH(&s, ti_ndims(&s, 0), 0, 4, DUET_ERR_FORMAT, "n_dims 0", "'f32.t'");
    PATCH(&s, ti_ndims(&s, 3), 5, 4, DUET_ERR_FORMAT, "n_dims 5", "tensor info 3");
    PATCH(&s, ti_ndims(&s, 3), UINT32_MAX, 4, DUET_ERR_FORMAT, "n_dims 4294967295", NULL);
    /* negative dimension */
    PATCH(&s, ti_ne(&s, 0, 1), UINT64_MAX, 8, DUET_ERR_FORMAT, "ne[1] -1", "negative");
    /* product of dimensions overflows int64 */
    {
        uint8_t *img = malloc(s.b.n);
        memcpy(img, s.b.p, s.b.n);
        gb_put_le(&(gguf_builder){img, s.b.n, s.b.n}, ti_ne(&s, 0, 0), 1ull << 40, 8);
        gb_put_le(&(gguf_builder){img, s.b.n, s.b.n}, ti_ne(&s, 0, 1), 1ull << 30, 8);
        expect_fail(parse_copy(img, s.b.n), DUET_ERR_FORMAT, "'f32.t'", "overflows");
        /* elements fit in int64, bytes do not: 2^61 F32 x 2 */
        gb_put_le(&(gguf_builder){img, s.b.n, s.b.n}, ti_ne(&s, 0, 0), 1ull << 61, 8);
        gb_put_le(&(gguf_builder){img, s.b.n, s.b.n}, ti_ne(&s, 0, 1), 2, 8);
        expect_fail(parse_copy(img, s.b.n), DUET_ERR_FORMAT, "'f32.t'", "too large");
        free(img);
    }
    /* a big but addressable tensor still has to lie in the file */
    PATCH(&s, ti_ne(&s, 0, 1), 1ull << 40, 8, DUET_ERR_FORMAT, "'f32.t'", "past the end");
    PATCH(&s, ti_ne(&s, 2, 0), 48, 8, DUET_ERR_FORMAT, "ne[0] 48", "Q4_1's block size 32");
    PATCH(&s, ti_ne(&s, 4, 0), 128, 8, DUET_ERR_FORMAT, "ne[0] 128", "block size 256");
    PATCH(&s, ti_offset(&s, 1), s.tdata[1] + 1, 8, DUET_ERR_FORMAT, "'f16.t'", "alignment 32");
    PATCH(&s, ti_offset(&s, 5), s.tdata[5] + 32, 8, DUET_ERR_FORMAT, "'bf16.t'", "past the end");
    PATCH(&s, ti_offset(&s, 5), UINT64_MAX - 31, 8, DUET_ERR_FORMAT, "'bf16.t'", "past the end");
    PATCH(&s, ti_offset(&s, 5), (1ull << 63), 8, DUET_ERR_FORMAT, "'bf16.t'", "past the end");
    /* duplicate tensor name: rename "f16.t" to "f32.t" (same length) */
    PATCH(&s, s.tinfo[1] + 8, 0x2e323366, 4, DUET_ERR_FORMAT, "'f32.t'", "duplicate");
    /* duplicate key: rename "t.i8" to "t.u8" */
    PATCH(&s, s.t_i8_key + 8 + 2, 'u', 1, DUET_ERR_FORMAT, "'t.u8'", "duplicate");
    gb_free(&s.b);
}

/* Empty tensors (a dimension of 0) are legal and take no bytes. */
static void test_empty_tensor(void **state)
{
    (void)state;
    gguf_builder b = {0};
    int64_t ne[2] = {32, 0};
    gb_header(&b, 3, 1, 0);
    gb_tensor_info(&b, "empty", 2, ne, DUET_Q8_0, 0);
    gb_pad(&b, 32);
    duet_gguf *g = NULL;
    assert_int_equal(duet_gguf_open_memory(b.p, b.n, "e", &g), DUET_OK);
    assert_int_equal(duet_gguf_find_tensor(g, "empty")->nbytes, 0);
    duet_gguf_close(g);
    gb_free(&b);
}

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* A successful parse of a mutated image must still only point inside it. */
static void check_invariants(const duet_gguf *g, const uint8_t *img, size_t n)
{
    for (int64_t i = 0; i < duet_gguf_n_kv(g); i++) {
        const duet_gguf_kv *kv = duet_gguf_kv_at(g, i);
        assert_true((const uint8_t *)kv->key.ptr >= img &&
                    (const uint8_t *)kv->key.ptr + kv->key.len <= img + n);
        if (kv->type == DUET_GGUF_STRING || kv->elem_type == DUET_GGUF_STRING) {
            for (uint64_t j = 0; j < kv->n_elems; j++)
                assert_true((const uint8_t *)kv->strs[j].ptr >= img &&
                            (const uint8_t *)kv->strs[j].ptr + kv->strs[j].len <= img + n);
        } else {
            for (uint64_t j = 0; j < kv->n_elems; j++) /* reads every element */
                (void)duet_gguf_arr_float(kv, j);
        }
    }
    for (int64_t i = 0; i < duet_gguf_n_tensors(g); i++) {
        const duet_gguf_tensor *t = duet_gguf_tensor_at(g, i);
        const uint8_t *d = t->data;
        assert_true(d >= img + duet_gguf_data_offset(g) && d + t->nbytes <= img + n);
        assert_true(t->n_dims >= 1 && t->n_dims <= 4);
    }
}

static void test_random_mutations(void **state)
{
    (void)state;
    sample s;
    sample_build(&s, 3, 64);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    uint8_t *img = malloc(s.b.n);
    int n_ok = 0, n_fail = 0;
    assert_non_null(img);
    for (int iter = 0; iter < 2000; iter++) {
        memcpy(img, s.b.p, s.b.n);
        int flips = 1 + (int)(xorshift(&seed) % 4);
        for (int k = 0; k < flips; k++) {
            /* bias towards the header and metadata, where parsing happens */
            size_t limit = (xorshift(&seed) & 3) ? s.data_offset : s.b.n;
            size_t at = (size_t)(xorshift(&seed) % limit);
            if (xorshift(&seed) & 1)
                img[at] ^= (uint8_t)(1u << (xorshift(&seed) % 8));
            else
                img[at] = (uint8_t)xorshift(&seed);
        }
        duet_gguf *g = NULL;
        duet_error_clear();
        duet_status st = duet_gguf_open_memory(img, s.b.n, "mutant", &g);
        if (st == DUET_OK) {
            n_ok++;
            check_invariants(g, img, s.b.n);
            duet_gguf_close(g);
        } else {
            n_fail++;
            assert_null(g);
            assert_true(st == DUET_ERR_FORMAT || st == DUET_ERR_UNSUPPORTED);
            assert_true(duet_last_error()[0] != '\0');
        }
    }
    /* both outcomes happen, or the loop tests nothing */
    assert_true(n_ok > 0 && n_fail > 0);
    print_message("random mutations: %d parsed, %d rejected\n", n_ok, n_fail);
    free(img);
    gb_free(&s.b);
}

/* ---- files ---------------------------------------------------------------------- */

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static void test_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/duet_test_gguf_XXXXXX";
    char path[256];
    duet_gguf *g = (duet_gguf *)0x1;
    sample s;
    assert_non_null(mkdtemp(dir));

    snprintf(path, sizeof path, "%s/missing.gguf", dir);
    expect_fail(duet_gguf_open(path, &g), DUET_ERR_IO, path, strerror(ENOENT));
    assert_null(g);
    expect_fail(duet_gguf_open(dir, &g), DUET_ERR_IO, dir, "not a regular file");

    snprintf(path, sizeof path, "%s/empty.gguf", dir);
    write_file(path, "", 0);
    expect_fail(duet_gguf_open(path, &g), DUET_ERR_FORMAT, path, "is not a GGUF file");
    unlink(path);

    snprintf(path, sizeof path, "%s/elf.bin", dir);
    write_file(path, "\x7f" "ELF\x02\x01\x01\x00", 8);
    expect_fail(duet_gguf_open(path, &g), DUET_ERR_FORMAT, "elf.bin is not a GGUF file",
                "magic 7f 45 4c 46 at offset 0");
    unlink(path);

    sample_build(&s, 3, 64);
    snprintf(path, sizeof path, "%s/sample.gguf", dir);
    write_file(path, s.b.p, s.b.n);
    assert_int_equal(duet_gguf_open(path, &g), DUET_OK);
    assert_int_equal(duet_gguf_file_size(g), s.b.n);
    check_getters(g);
    check_tensors(g, &s);
    duet_gguf_close(g);

    /* messages from a file name the path */
    write_file(path, s.b.p, s.b.n - 1);
    expect_fail(duet_gguf_open(path, &g), DUET_ERR_FORMAT, path, "'bf16.t'");
    assert_null(g);
    unlink(path);
    rmdir(dir);
    gb_free(&s.b);
}

/* ---- the real model ---------------------------------------------------------------- */

#define MODEL_NAME "SmolLM2-135M-Instruct.Q4_1.gguf"

/* $DUET_MODEL counts only when it is this model: the facts below are its. */
static int find_model(char *path, size_t cap)
{
    const char *env = getenv("DUET_MODEL"), *home = getenv("HOME");
    struct stat sb;
    if (env) {
        const char *slash = strrchr(env, '/');
        if (strcmp(slash ? slash + 1 : env, MODEL_NAME) == 0 && stat(env, &sb) == 0) {
            snprintf(path, cap, "%s", env);
            return 1;
        }
    }
    if (home) {
        snprintf(path, cap, "%s/.cache/duet/models/%s", home, MODEL_NAME);
        if (stat(path, &sb) == 0)
            return 1;
    }
    return 0;
}

static void expect_str(const duet_gguf_kv *kv, uint64_t i, const char *want)
{
    assert_true(i < kv->n_elems);
    if (!duet_gguf_str_eq(kv->strs[i], want))
        fail_msg("string %llu is '%.*s', want '%s'", (unsigned long long)i, (int)kv->strs[i].len,
                 kv->strs[i].ptr, want);
}

/* Expected values from gguf-py (GGUFReader) on the same file. */
static void test_real_model(void **state)
{
    (void)state;
    char path[4096];
    if (!find_model(path, sizeof path))
        skip();
    duet_gguf *g = NULL;
    uint32_t u = 0;
    float f = 0;
    int bv = -1;
    duet_gguf_str str;
    const duet_gguf_kv *kv = NULL;
    assert_int_equal(duet_gguf_open(path, &g), DUET_OK);
    assert_int_equal(duet_gguf_version(g), 3);
    assert_int_equal(duet_gguf_n_tensors(g), 272);
    assert_int_equal(duet_gguf_n_kv(g), 33);
    assert_int_equal(duet_gguf_alignment(g), 32);
    assert_int_equal(duet_gguf_file_size(g), 98362432);
    assert_int_equal(duet_gguf_data_offset(g), 1785664);

    assert_int_equal(duet_gguf_get_str(g, "general.architecture", &str), DUET_OK);
    assert_true(duet_gguf_str_eq(str, "llama"));
    assert_int_equal(duet_gguf_get_str(g, "tokenizer.ggml.pre", &str), DUET_OK);
    assert_true(duet_gguf_str_eq(str, "smollm"));
    assert_int_equal(duet_gguf_get_str(g, "tokenizer.chat_template", &str), DUET_OK);
    assert_int_equal(str.len, 368);
    assert_int_equal(duet_gguf_get_u32(g, "llama.block_count", &u), DUET_OK);
    assert_int_equal(u, 30);
    assert_int_equal(duet_gguf_get_u32(g, "llama.context_length", &u), DUET_OK);
    assert_int_equal(u, 8192);
    assert_int_equal(duet_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &u), DUET_OK);
    assert_int_equal(u, 2);
    assert_int_equal(duet_gguf_get_f32(g, "llama.rope.freq_base", &f), DUET_OK);
    assert_true(f == 100000.0f);
    assert_int_equal(duet_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f), DUET_OK);
    assert_true(f == 1e-5f);
    assert_int_equal(duet_gguf_get_bool_or(g, "tokenizer.ggml.add_bos_token", 1, &bv), DUET_OK);
    assert_int_equal(bv, 0);

    assert_int_equal(duet_gguf_get_arr(g, "tokenizer.ggml.tokens", DUET_GGUF_STRING, &kv), DUET_OK);
    assert_int_equal(kv->n_elems, 49152);
    expect_str(kv, 0, "<|endoftext|>");
    expect_str(kv, 1, "<|im_start|>");
    expect_str(kv, 2, "<|im_end|>");
    expect_str(kv, 100, "t");
    expect_str(kv, 256, "\xc4\xa0\xc4\xa0");
    expect_str(kv, 12345, "\xc4\xa0strings");
    expect_str(kv, 49151, "ectable");
    assert_int_equal(duet_gguf_get_arr(g, "tokenizer.ggml.merges", DUET_GGUF_STRING, &kv), DUET_OK);
    assert_int_equal(kv->n_elems, 48900);
    expect_str(kv, 0, "\xc4\xa0 t");
    expect_str(kv, 48899, "ect able");
    assert_int_equal(duet_gguf_get_arr(g, "tokenizer.ggml.token_type", DUET_GGUF_INT32, &kv), DUET_OK);
    assert_int_equal(kv->n_elems, 49152);
    assert_int_equal(duet_gguf_arr_int(kv, 0), 3);
    assert_int_equal(duet_gguf_arr_int(kv, 17), 1);
    assert_int_equal(duet_gguf_arr_int(kv, 49151), 1);

    const duet_gguf_tensor *t = duet_gguf_find_tensor(g, "token_embd.weight");
    assert_non_null(t);
    assert_ptr_equal(t, duet_gguf_tensor_at(g, 0));
    assert_int_equal(t->type, DUET_Q8_0);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 576);
    assert_int_equal(t->ne[1], 49152);
    assert_int_equal(t->nbytes, 30081024);
    assert_int_equal(duet_gguf_data_offset(g) + t->offset, 1785664);
    t = duet_gguf_find_tensor(g, "blk.0.ffn_down.weight");
    assert_non_null(t);
    assert_int_equal(t->type, DUET_Q4_1);
    assert_int_equal(t->ne[0], 1536);
    assert_int_equal(t->ne[1], 576);
    assert_int_equal(t->nbytes, 552960);
    assert_int_equal(duet_gguf_data_offset(g) + t->offset, 31868992);
    t = duet_gguf_find_tensor(g, "blk.29.ffn_gate.weight");
    assert_non_null(t);
    assert_int_equal(duet_gguf_data_offset(g) + t->offset, 81183808);
    t = duet_gguf_find_tensor(g, "output_norm.weight");
    assert_non_null(t);
    assert_int_equal(t->type, DUET_F32);
    assert_int_equal(t->nbytes, 2304);
    assert_int_equal(duet_gguf_data_offset(g) + t->offset, 98360128);
    assert_ptr_equal(t->data, (const uint8_t *)duet_gguf_base(g) + 98360128);

    int n_q41 = 0, n_f32 = 0, n_q80 = 0;
    for (int64_t i = 0; i < duet_gguf_n_tensors(g); i++) {
        duet_dtype ty = duet_gguf_tensor_at(g, i)->type;
        n_q41 += ty == DUET_Q4_1, n_f32 += ty == DUET_F32, n_q80 += ty == DUET_Q8_0;
    }
    assert_int_equal(n_q41, 210);
    assert_int_equal(n_f32, 61);
    assert_int_equal(n_q80, 1);
    duet_gguf_close(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v3_default_alignment),
        cmocka_unit_test(test_v2_default_alignment),
        cmocka_unit_test(test_v3_alignment_64),
        cmocka_unit_test(test_v2_alignment_256),
        cmocka_unit_test(test_v3_alignment_1),
        cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_large_string_array),
        cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_bad_header),
        cmocka_unit_test(test_bad_strings),
        cmocka_unit_test(test_bad_types),
        cmocka_unit_test(test_bad_alignment),
        cmocka_unit_test(test_bad_tensor_infos),
        cmocka_unit_test(test_empty_tensor),
        cmocka_unit_test(test_random_mutations),
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_real_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
