/*
 * test_vulkan_ops.c — the Vulkan backend against the CPU reference kernels
 * (force_reference), op by op, through the device wrappers: random inputs,
 * outputs poisoned with NaN first, compared by NMSE (1e-7 elementwise,
 * 5e-4 matmul and attention) or bit for bit where the CPU is exact
 * (embed, gather_rows, kv_write), NaN positions compared too. Includes a
 * 160 MiB weight (more than lavapipe's 128 MiB maxStorageBufferRange) and
 * a chain of ops in one recording.
 *
 * Runs with the Khronos validation layer (DUET_VK_VALIDATION=1 unless the
 * environment says otherwise) and fails on any validation message.
 * Exits 77 (skipped) when there is no Vulkan device.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "device.h"
#include "dtype.h"
#include "vk_internal.h" /* struct duet_buffer: to check the chunked case is reached */
#include "vulkan_backend.h"
#include "vulkan_fixture.h"

static side cpu, vk;

/* ---- helpers ------------------------------------------------------------------ */


static float *frand_array(size_t n, float scale)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = vk_frand() * scale;
    return x;
}

/* A buffer on side x holding src, or n bytes of NaN when src is NULL. */

static duet_addr none(void) { return (duet_addr){NULL, 0}; }
static const duet_rope_spec no_rope; /* kv_write without rotation */

static void begin(side *x) { assert_int_equal(duet_dev_stream_begin(x->d, x->s), DUET_OK); }

/* Download n bytes of b into dst (poisoned first), submit and wait. */
static void finish(side *x, duet_buffer *b, void *dst, size_t n)
{
    memset(dst, 0xff, n);
    assert_int_equal(duet_dev_download(x->d, x->s, vk_at(b), dst, n), DUET_OK);
    assert_int_equal(duet_dev_stream_submit(x->d, x->s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(x->d, x->s), DUET_OK);
}

static void free_bufs(side *x, duet_buffer **b, int n)
{
    for (int i = 0; i < n; i++)
        duet_dev_buffer_free(x->d, b[i]);
}

/* Bit-identical, NaNs compared as NaN. */
static void assert_same(const char *what, const float *got, const float *want, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (isnan(want[i]) && isnan(got[i]))
            continue;
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0)
            fail_msg("%s: element %zu of %zu is %.9g, the CPU has %.9g", what, i, n, got[i],
                     want[i]);
    }
}

static void check_validation(void)
{
    int n = duet_vulkan_validation_errors(vk.d);
    if (n != 0)
        fail_msg("the Vulkan validation layer reported %d message(s) (see stderr)", n);
}

/* Make vk a device of its own created with n1=v1 (and n2=v2 when n2 is not
 * NULL) set; returns the shared one, for restore_device(). */
static side device_with_env(const char *n1, const char *v1, const char *n2, const char *v2)
{
    side saved = vk;
    setenv(n1, v1, 1);
    if (n2)
        setenv(n2, v2, 1);
    duet_status rc = duet_vulkan_device_create(-1, NULL, 1, &vk.d);
    unsetenv(n1);
    if (n2)
        unsetenv(n2);
    assert_int_equal(rc, DUET_OK);
    assert_int_equal(duet_dev_stream_create(vk.d, &vk.s), DUET_OK);
    return saved;
}

/* Close device_with_env's device (no validation message allowed) and put
 * the shared one back. */
static void restore_device(side saved)
{
    check_validation();
    duet_dev_stream_destroy(vk.d, vk.s);
    duet_device_close(vk.d);
    vk = saved;
}

/* ---- weights ------------------------------------------------------------------ */

static const duet_dtype weight_types[] = {DUET_F32,  DUET_F16,  DUET_BF16, DUET_Q8_0, DUET_Q4_0,
                                          DUET_Q4_1, DUET_Q4_K, DUET_Q5_K, DUET_Q6_K};
enum { N_WEIGHT_TYPES = sizeof weight_types / sizeof weight_types[0] };

static void put_half(uint8_t *p, float v)
{
    uint16_t h = duet_f32_to_f16(v);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* rows x k of type t with random contents whose scales are sane halves. */
static uint8_t *random_weights(duet_dtype t, int rows, int k, size_t *bytes)
{
    size_t rb = duet_dtype_row_bytes(t, k);
    *bytes = rb * rows;
    uint8_t *w = malloc(*bytes);
    for (size_t i = 0; i < *bytes; i++)
        w[i] = (uint8_t)vk_rand32();
    const duet_dtype_info *info = duet_dtype_get(t);
    size_t n_blocks = *bytes / info->block_bytes;
    for (size_t i = 0; i < n_blocks; i++) {
        uint8_t *b = w + i * info->block_bytes;
        switch (t) {
        case DUET_F32: {
            float v = vk_frand();
            memcpy(b, &v, 4);
            break;
        }
        case DUET_F16: put_half(b, vk_frand()); break;
        case DUET_BF16: {
            uint16_t h = duet_f32_to_bf16(vk_frand());
            b[0] = (uint8_t)h;
            b[1] = (uint8_t)(h >> 8);
            break;
        }
        case DUET_Q4_0:
        case DUET_Q8_0: put_half(b, vk_frand() * 0.05f); break;
        case DUET_Q4_1:
        case DUET_Q4_K:
        case DUET_Q5_K:
            put_half(b, vk_frand() * 0.05f);
            put_half(b + 2, vk_frand() * 0.05f);
            break;
        case DUET_Q6_K: put_half(b + 208, vk_frand() * 0.01f); break;
        default: fail_msg("no generator for type %d", (int)t);
        }
    }
    return w;
}

/* ---- elementwise ops ------------------------------------------------------------- */

static void run_add(side *x, const float *a, const float *b, int64_t n, float *out)
{
    duet_buffer *ba = vk_buffer(x, a, 4 * n), *bb = vk_buffer(x, b, 4 * n);
    begin(x);
    duet_add_args args = {vk_at(ba), vk_at(bb), n};
    assert_int_equal(duet_dev_add(x->d, x->s, &args), DUET_OK);
    finish(x, ba, out, 4 * n);
    duet_buffer *all[] = {ba, bb};
    free_bufs(x, all, 2);
}

static void test_add(void **state)
{
    (void)state;
    int64_t sizes[] = {1, 255, 1000, 70001};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        int64_t n = sizes[i];
        float *a = frand_array(n, 3), *b = frand_array(n, 3);
        float *want = malloc(4 * n), *got = malloc(4 * n);
        run_add(&cpu, a, b, n, want);
        run_add(&vk, a, b, n, got);
        assert_same("add", got, want, n);
        free(a), free(b), free(want), free(got);
    }
    check_validation();
}

static void run_swiglu(side *x, const float *g, const float *u, int rows, int dim, int alias,
                       float *out)
{
    size_t n = 4ull * rows * dim;
    duet_buffer *bg = vk_buffer(x, g, n), *bu = vk_buffer(x, u, n),
                *bo = alias ? bg : vk_buffer(x, NULL, n);
    begin(x);
    duet_swiglu_args args = {vk_at(bg), vk_at(bu), vk_at(bo), rows, dim};
    assert_int_equal(duet_dev_swiglu(x->d, x->s, &args), DUET_OK);
    finish(x, bo, out, n);
    duet_buffer *all[] = {bg, bu, bo};
    free_bufs(x, all, alias ? 2 : 3);
}

static void test_swiglu(void **state)
{
    (void)state;
    for (int alias = 0; alias < 2; alias++) {
        int rows = 7, dim = 1000;
        size_t n = (size_t)rows * dim;
        float *g = frand_array(n, 6), *u = frand_array(n, 2);
        float *want = malloc(4 * n), *got = malloc(4 * n);
        run_swiglu(&cpu, g, u, rows, dim, alias, want);
        run_swiglu(&vk, g, u, rows, dim, alias, got);
        vk_assert_match("swiglu", got, want, n, 1e-7);
        free(g), free(u), free(want), free(got);
    }
    check_validation();
}

static void run_rms_norm(side *x, const float *in, const float *w, int rows, int dim, int alias,
                         float *out)
{
    size_t n = 4ull * rows * dim;
    duet_buffer *bx = vk_buffer(x, in, n), *bw = vk_buffer(x, w, 4ull * dim);
    duet_buffer *bo = alias ? bx : vk_buffer(x, NULL, n);
    begin(x);
    duet_rms_norm_args args = {vk_at(bx), vk_at(bw), vk_at(bo), rows, dim, 1e-5f, none()};
    assert_int_equal(duet_dev_rms_norm(x->d, x->s, &args), DUET_OK);
    finish(x, bo, out, n);
    duet_buffer *all[] = {bx, bw, bo};
    free_bufs(x, all, alias ? 2 : 3);
}

static void test_rms_norm(void **state)
{
    (void)state;
    int shapes[][2] = {{1, 33}, {5, 576}, {3, 4096}, {2, 7}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        int rows = shapes[i][0], dim = shapes[i][1];
        size_t n = (size_t)rows * dim;
        float *xin = frand_array(n, 4), *w = frand_array(dim, 1);
        float *want = malloc(4 * n), *got = malloc(4 * n);
        run_rms_norm(&cpu, xin, w, rows, dim, (int)(i & 1), want);
        run_rms_norm(&vk, xin, w, rows, dim, (int)(i & 1), got);
        vk_assert_match("rms_norm", got, want, n, 1e-7);
        free(xin), free(w), free(want), free(got);
    }
    check_validation();
}

/* Where rms_norm's out goes in the residual tests. */
typedef enum { OUT_OWN, OUT_IS_RESIDUAL, OUT_IS_X } out_alias;

/* x += res then out = rms_norm(x): fused (one op) or add + rms_norm in one
 * recording. Each operand is its own buffer; with pad, x, res and out
 * start at different offsets that are not multiples of the descriptor
 * alignment (so the push-constant offsets are used and must not be mixed
 * up). Reads back x, res and out. */
static void run_rms_norm_res(side *s, const float *x, const float *res, const float *w, int rows,
                             int dim, int pad, out_alias alias, int fused, float *x_out,
                             float *res_out, float *out)
{
    size_t n = 4ull * rows * dim, xo = pad ? 12 : 0, ro = pad ? 40 : 0, oo = pad ? 4 : 0;
    char *img = malloc(ro + n);
    memset(img, 0xff, ro + n);
    memcpy(img + xo, x, n);
    duet_buffer *bx = vk_buffer(s, img, xo + n);
    memcpy(img + ro, res, n);
    duet_buffer *br = vk_buffer(s, img, ro + n);
    free(img);
    duet_buffer *bw = vk_buffer(s, w, 4ull * dim);
    duet_buffer *bo = alias == OUT_OWN ? vk_buffer(s, NULL, oo + n) : NULL;
    duet_addr ax = {bx, xo}, ar = {br, ro};
    duet_addr ao = alias == OUT_IS_RESIDUAL ? ar : alias == OUT_IS_X ? ax : (duet_addr){bo, oo};
    begin(s);
    duet_rms_norm_args a = {.x = ax, .weight = vk_at(bw), .out = ao, .n_rows = rows, .dim = dim,
                            .eps = 1e-5f};
    if (fused) {
        a.residual = ar;
    } else {
        duet_add_args add = {ax, ar, (int64_t)rows * dim};
        assert_int_equal(duet_dev_add(s->d, s->s, &add), DUET_OK);
    }
    assert_int_equal(duet_dev_rms_norm(s->d, s->s, &a), DUET_OK);
    memset(x_out, 0xff, n);
    memset(res_out, 0xff, n);
    memset(out, 0xff, n);
    assert_int_equal(duet_dev_download(s->d, s->s, ax, x_out, n), DUET_OK);
    assert_int_equal(duet_dev_download(s->d, s->s, ar, res_out, n), DUET_OK);
    assert_int_equal(duet_dev_download(s->d, s->s, ao, out, n), DUET_OK);
    assert_int_equal(duet_dev_stream_submit(s->d, s->s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(s->d, s->s), DUET_OK);
    duet_buffer *all[] = {bx, br, bw, bo};
    free_bufs(s, all, bo ? 4 : 3);
}

/* On side s: the fused op has the bits of add + rms_norm on s (x, res and
 * out), for each placement of out; against the CPU reference's fused op,
 * x is bit-identical (one float add) and out within NMSE. */
static void check_rms_norm_res(side *s, int rows, int dim, int pad)
{
    size_t n = (size_t)rows * dim;
    float *x = frand_array(n, 4), *res = frand_array(n, 4), *w = frand_array(dim, 1);
    float *m[9];
    for (int i = 0; i < 9; i++)
        m[i] = malloc(4 * n);
    float *ux = m[0], *ur = m[1], *uo = m[2], *fx = m[3], *fr = m[4], *fo = m[5];
    float *cx = m[6], *cr = m[7], *co = m[8];
    char what[96];
    for (int alias = OUT_OWN; alias <= OUT_IS_X; alias++) {
        snprintf(what, sizeof what, "rms_norm + residual %dx%d, out %s", rows, dim,
                 alias == OUT_OWN ? "own" : alias == OUT_IS_RESIDUAL ? "= residual" : "= x");
        run_rms_norm_res(s, x, res, w, rows, dim, pad, alias, 0, ux, ur, uo);
        run_rms_norm_res(s, x, res, w, rows, dim, pad, alias, 1, fx, fr, fo);
        run_rms_norm_res(&cpu, x, res, w, rows, dim, pad, alias, 1, cx, cr, co);
        assert_same(what, fx, ux, n); /* fused == unfused, bitwise */
        assert_same(what, fr, ur, n);
        assert_same(what, fo, uo, n);
        if (alias != OUT_IS_X)
            assert_same(what, fx, cx, n); /* the add is exact: the CPU's bits */
        if (alias != OUT_IS_RESIDUAL)
            assert_same(what, fr, res, n); /* only read */
        vk_assert_match(what, fo, co, n, 1e-7);
    }
    for (int i = 0; i < 9; i++)
        free(m[i]);
    free(x), free(res), free(w);
}

static void test_rms_norm_residual(void **state)
{
    (void)state;
    /* Dims under, at and over one workgroup's 256, off multiples of 8. */
    int shapes[][2] = {{1, 33}, {5, 576}, {3, 4096}, {2, 7}, {4, 300}, {1, 256}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        check_rms_norm_res(&vk, shapes[i][0], shapes[i][1], (int)(i & 1));
    check_validation();
}

/* More rows than one binding holds: the fused op is split over rows like
 * the plain one (the binding limit forced down on a device of its own). */
static void test_rms_norm_residual_split(void **state)
{
    (void)state;
    setenv("DUET_VK_MAX_ALLOC", "1048576", 1); /* binding limit about 512 KiB */
    side small = {0};
    duet_status rc = duet_vulkan_device_create(-1, NULL, 1, &small.d);
    unsetenv("DUET_VK_MAX_ALLOC");
    assert_int_equal(rc, DUET_OK);
    assert_int_equal(duet_dev_stream_create(small.d, &small.s), DUET_OK);
    check_rms_norm_res(&small, 5, 40000, 1); /* 160 kB rows: 3 per dispatch */
    int validation = duet_vulkan_validation_errors(small.d);
    duet_dev_stream_destroy(small.d, small.s);
    duet_device_close(small.d);
    if (validation > 0)
        fail_msg("the Vulkan validation layer reported %d message(s) (see stderr)", validation);
}

static void run_gather(side *x, const float *in, int n_in, const int32_t *rows, int n_out,
                       int dim, float *out)
{
    duet_buffer *bx = vk_buffer(x, in, 4ull * n_in * dim), *br = vk_buffer(x, rows, 4ull * n_out);
    duet_buffer *bo = vk_buffer(x, NULL, 4ull * n_out * dim);
    begin(x);
    duet_gather_rows_args args = {vk_at(bx), vk_at(br), vk_at(bo), n_in, n_out, dim};
    assert_int_equal(duet_dev_gather_rows(x->d, x->s, &args), DUET_OK);
    finish(x, bo, out, 4ull * n_out * dim);
    duet_buffer *all[] = {bx, br, bo};
    free_bufs(x, all, 3);
}

static void test_gather_rows(void **state)
{
    (void)state;
    int n_in = 9, dim = 130;
    int32_t rows[] = {8, 0, 3, -1, 9, 3};
    int n_out = 6;
    float *in = frand_array((size_t)n_in * dim, 5);
    float *want = malloc(4ull * n_out * dim), *got = malloc(4ull * n_out * dim);
    run_gather(&cpu, in, n_in, rows, n_out, dim, want);
    run_gather(&vk, in, n_in, rows, n_out, dim, got);
    assert_same("gather_rows", got, want, (size_t)n_out * dim);
    assert_true(isnan(got[3 * dim]) && isnan(got[4 * dim + dim - 1])); /* bad rows */
    free(in), free(want), free(got);
    check_validation();
}

/* ---- embed and matmul ------------------------------------------------------------- */

/* prev: optional int32[n_prev] for placeholder ids -1-i. */
static void run_embed_prev(side *x, duet_dtype t, const void *table, size_t tbytes, int vocab,
                           int dim, const int32_t *ids, int n_tokens, const int32_t *prev,
                           int n_prev, float *out)
{
    duet_buffer *bt = vk_buffer(x, table, tbytes), *bi = vk_buffer(x, ids, 4ull * n_tokens);
    duet_buffer *bo = vk_buffer(x, NULL, 4ull * n_tokens * dim);
    duet_buffer *bp = prev ? vk_buffer(x, prev, 4ull * n_prev) : NULL;
    begin(x);
    duet_embed_args args = {.ids = vk_at(bi), .table = vk_at(bt), .out = vk_at(bo),
                            .prev_tokens = bp ? vk_at(bp) : none(), .table_type = t,
                            .n_tokens = n_tokens, .vocab = vocab, .dim = dim,
                            .n_prev = bp ? n_prev : 0};
    assert_int_equal(duet_dev_embed(x->d, x->s, &args), DUET_OK);
    finish(x, bo, out, 4ull * n_tokens * dim);
    duet_buffer *all[] = {bt, bi, bo, bp};
    free_bufs(x, all, bp ? 4 : 3);
}

static void run_embed(side *x, duet_dtype t, const void *table, size_t tbytes, int vocab,
                      int dim, const int32_t *ids, int n_tokens, float *out)
{
    run_embed_prev(x, t, table, tbytes, vocab, dim, ids, n_tokens, NULL, 0, out);
}

static void test_embed_types(void **state)
{
    (void)state;
    for (int i = 0; i < N_WEIGHT_TYPES; i++) {
        duet_dtype t = weight_types[i];
        int vocab = 37, dim = duet_dtype_get(t)->block_elems > 32 ? 512 : 96;
        size_t bytes;
        uint8_t *table = random_weights(t, vocab, dim, &bytes);
        int32_t ids[] = {0, 36, 5, -3, 37, 5, 20};
        int n = 7;
        float *want = malloc(4ull * n * dim), *got = malloc(4ull * n * dim);
        run_embed(&cpu, t, table, bytes, vocab, dim, ids, n, want);
        run_embed(&vk, t, table, bytes, vocab, dim, ids, n, got);
        char what[64];
        snprintf(what, sizeof what, "embed %s", duet_dtype_get(t)->name);
        assert_same(what, got, want, (size_t)n * dim);
        free(table), free(want), free(got);
    }
    check_validation();
}

/* Placeholder ids -1-i read prev_tokens[i] (async scheduling); -1-i past
 * n_prev and prev entries outside the vocabulary give NaN rows. */
static void test_embed_prev_tokens(void **state)
{
    (void)state;
    int vocab = 50, dim = 64;
    size_t bytes;
    uint8_t *table = random_weights(DUET_Q8_0, vocab, dim, &bytes);
    int32_t ids[] = {-1, 7, -3, -4, -2147483647 - 1, -2};
    int32_t prev[] = {12, 49, 60};
    int n = 6;
    float *want = malloc(4ull * n * dim), *got = malloc(4ull * n * dim);
    run_embed_prev(&cpu, DUET_Q8_0, table, bytes, vocab, dim, ids, n, prev, 3, want);
    run_embed_prev(&vk, DUET_Q8_0, table, bytes, vocab, dim, ids, n, prev, 3, got);
    assert_same("embed prev_tokens", got, want, (size_t)n * dim);
    assert_false(isnan(got[0]));
    assert_true(isnan(got[2 * dim])); /* prev[2] = 60 >= vocab */
    free(table), free(want), free(got);
    check_validation();
}

/* matmul with the activations x_shift bytes into their buffer. */
static void run_matmul_shifted(side *x, duet_dtype t, const void *w, size_t wbytes,
                               const float *in, const float *bias, int m, int k, int n,
                               size_t x_shift, float *out)
{
    unsigned char *xs = calloc(1, x_shift + 4ull * m * k);
    memcpy(xs + x_shift, in, 4ull * m * k);
    duet_buffer *bw = vk_buffer(x, w, wbytes), *bx = vk_buffer(x, xs, x_shift + 4ull * m * k);
    free(xs);
    duet_buffer *bb = bias ? vk_buffer(x, bias, 4ull * n) : NULL;
    duet_buffer *bo = vk_buffer(x, NULL, 4ull * m * n);
    begin(x);
    duet_matmul_args args = {
        {bx, x_shift}, vk_at(bw), bb ? vk_at(bb) : none(), vk_at(bo), t, m, k, n, none()};
    assert_int_equal(duet_dev_matmul(x->d, x->s, &args), DUET_OK);
    finish(x, bo, out, 4ull * m * n);
    duet_buffer *all[] = {bw, bx, bo, bb};
    free_bufs(x, all, bb ? 4 : 3);
}

static void run_matmul(side *x, duet_dtype t, const void *w, size_t wbytes, const float *in,
                       const float *bias, int m, int k, int n, float *out)
{
    run_matmul_shifted(x, t, w, wbytes, in, bias, m, k, n, 0, out);
}

/* Activations 4 bytes into their buffer (not 16-byte aligned: the vector
 * kernels read them a word at a time) give the same bits as aligned ones. */
static void shifted_x_case(duet_dtype t, int m, int k, int n)
{
    size_t bytes;
    uint8_t *w = random_weights(t, n, k, &bytes);
    float *in = frand_array((size_t)m * k, 1), *a = malloc(4ull * m * n), *b = malloc(4ull * m * n);
    run_matmul_shifted(&vk, t, w, bytes, in, NULL, m, k, n, 0, a);
    run_matmul_shifted(&vk, t, w, bytes, in, NULL, m, k, n, 4, b);
    if (memcmp(a, b, 4ull * m * n) != 0)
        fail_msg("matmul %s: activations at offset 4 give other results than at 0",
                 duet_dtype_get(t)->name);
    free(w), free(in), free(a), free(b);
}

static void matmul_case(duet_dtype t, int m, int k, int n, int with_bias)
{
    size_t bytes;
    uint8_t *w = random_weights(t, n, k, &bytes);
    float *in = frand_array((size_t)m * k, 1), *bias = with_bias ? frand_array(n, 1) : NULL;
    float *want = malloc(4ull * m * n), *got = malloc(4ull * m * n);
    run_matmul(&cpu, t, w, bytes, in, bias, m, k, n, want);
    run_matmul(&vk, t, w, bytes, in, bias, m, k, n, got);
    char what[96];
    snprintf(what, sizeof what, "matmul %s m=%d k=%d n=%d%s", duet_dtype_get(t)->name, m, k, n,
             with_bias ? " +bias" : "");
    vk_assert_match(what, got, want, (size_t)m * n, 5e-4);
    free(w), free(in), free(bias), free(want), free(got);
}

static void test_matmul_types(void **state)
{
    (void)state;
    for (int i = 0; i < N_WEIGHT_TYPES; i++) {
        duet_dtype t = weight_types[i];
        int kq = duet_dtype_get(t)->block_elems > 32 ? 512 : 256;
        matmul_case(t, 1, kq, 67, 0);
        matmul_case(t, 13, 2 * kq, 40, 1);
        if (duet_dtype_get(t)->block_elems == 1)
            matmul_case(t, 3, 100, 9, 1); /* k not a multiple of 32 */
    }
    check_validation();
}

/* x = the k x k identity, so out[r][j] = W[j][r] with every other product
 * an exact zero: the kernel's dequantized weights must equal the
 * reference's bit for bit (summation order cannot hide an error here). */
static void exact_weights_case(duet_dtype t, int k, int n)
{
    size_t bytes;
    uint8_t *w = random_weights(t, n, k, &bytes);
    float *in = calloc((size_t)k * k, sizeof *in), *want = malloc(4ull * k * n),
          *got = malloc(4ull * k * n);
    for (int r = 0; r < k; r++)
        in[(size_t)r * k + r] = 1.0f;
    run_matmul(&cpu, t, w, bytes, in, NULL, k, k, n, want);
    run_matmul(&vk, t, w, bytes, in, NULL, k, k, n, got);
    for (size_t i = 0; i < (size_t)k * n; i++)
        if (!(got[i] == want[i]))
            fail_msg("matmul %s: weight [%zu][%zu] is %.9g, the reference's %.9g",
                     duet_dtype_get(t)->name, i % n, i / n, got[i], want[i]);
    free(w), free(in), free(want), free(got);
}

/* The spec index of the decode kernels' plain variant on device d: the
 * weight rows per workgroup (variant bits 2-3) it was created with. */
static uint32_t vec_spec(duet_device *d, duet_dtype t, int gated)
{
    const vk_ctx *c = d->ctx;
    return (uint32_t)t + 64u * (uint32_t)gated + 128u * (uint32_t)duet_vk_vec_rows_log2(c, gated);
}

/* Which matmul pipelines of weight type t the device has created (they
 * are created on first use): bit 0 tiled, 1 per-output, 2 matmul_vec,
 * 3 matmul_qvec (with the device's weight rows per workgroup). */
static unsigned matmul_kernels_used(duet_device *d, duet_dtype t)
{
    const vk_ctx *c = d->ctx;
    return (c->pipes[VK_SH_MATMUL][t] != VK_NULL_HANDLE) |
           (c->pipes[VK_SH_MATMUL][t + 32] != VK_NULL_HANDLE) << 1 |
           (c->pipes[VK_SH_MATMUL_VEC][vec_spec(d, t, 0)] != VK_NULL_HANDLE) << 2 |
           (c->pipes[VK_SH_MATMUL_QVEC][vec_spec(d, t, 0)] != VK_NULL_HANDLE) << 3;
}

/* Each matmul kernel variant (tiled with shared memory, one invocation
 * per output, and the subgroup kernels matmul_vec / matmul_qvec), on
 * Vulkan devices opened with DUET_VK_MATMUL forcing it: every weight type
 * against the reference, and batch invariance — each row of an 11-row
 * batch bitwise equal to the same row computed alone. The pipelines the
 * device created show that the forced kernel, and only it, ran for every
 * type (no silent fallback) until the k = 100 case, which only the tiled
 * and per-output kernels take. */
static void variant_cases(const char *variant, unsigned want_plain, unsigned want_quant)
{
    side saved = device_with_env("DUET_VK_MATMUL", variant, NULL, NULL);
    for (int i = 0; i < N_WEIGHT_TYPES; i++) {
        duet_dtype t = weight_types[i];
        int plain = duet_dtype_get(t)->block_elems == 1;
        int kq = duet_dtype_get(t)->block_elems > 32 ? 512 : 256;
        matmul_case(t, 1, kq, 67, 0);
        matmul_case(t, 11, 2 * kq, 21, 1);
        exact_weights_case(t, kq, 3);
        shifted_x_case(t, 3, kq, 5);
        /* batch invariance */
        int m = 11, k = 2 * kq, n = 21;
        size_t bytes;
        uint8_t *w = random_weights(t, n, k, &bytes);
        float *in = frand_array((size_t)m * k, 1), *all = malloc(4ull * m * n),
              *one = malloc(4ull * n);
        run_matmul(&vk, t, w, bytes, in, NULL, m, k, n, all);
        for (int r = 0; r < m; r++) {
            run_matmul(&vk, t, w, bytes, in + (size_t)r * k, NULL, 1, k, n, one);
            if (memcmp(one, all + (size_t)r * n, 4ull * n) != 0)
                fail_msg("matmul %s variant %s: row %d alone differs from the batch",
                         duet_dtype_get(t)->name, variant, r);
        }
        free(w), free(in), free(all), free(one);
        unsigned used = matmul_kernels_used(vk.d, t), want = plain ? want_plain : want_quant;
        if (used != want)
            fail_msg("matmul %s variant %s: kernels used 0x%x, expected 0x%x",
                     duet_dtype_get(t)->name, variant, used, want);
        if (plain)
            matmul_case(t, 3, 100, 9, 1); /* k not a multiple of 4 or 8 */
    }
    restore_device(saved);
}

static void test_matmul_variants(void **state)
{
    (void)state;
    variant_cases("tiled", 1, 1);
    variant_cases("per-output", 2, 2);
    variant_cases("vec", 4, 8);
}

/* ---- the gated matmul (w_up) ------------------------------------------------------ */

/* On side x, in one recording: the three ops matmul W, matmul W_up, swiglu
 * (gated = 0) or the gated matmul (gated = 1); out gets [m][n]. */
static void run_glu(side *x, duet_dtype t, const void *w, const void *wu, size_t wbytes,
                    const float *in, int m, int k, int n, int gated, float *out)
{
    size_t plane = 4ull * m * n;
    duet_buffer *bx = vk_buffer(x, in, 4ull * m * k), *bw = vk_buffer(x, w, wbytes);
    duet_buffer *bu = vk_buffer(x, wu, wbytes), *bg = vk_buffer(x, NULL, plane);
    duet_buffer *bup = vk_buffer(x, NULL, plane);
    begin(x);
    duet_matmul_args a = {.x = vk_at(bx), .w = vk_at(bw), .out = vk_at(bg), .w_type = t,
                          .n_rows = m, .k = k, .n = n};
    if (gated) {
        a.w_up = vk_at(bu);
        assert_int_equal(duet_dev_matmul(x->d, x->s, &a), DUET_OK);
    } else {
        assert_int_equal(duet_dev_matmul(x->d, x->s, &a), DUET_OK);
        a.w = vk_at(bu);
        a.out = vk_at(bup);
        assert_int_equal(duet_dev_matmul(x->d, x->s, &a), DUET_OK);
        duet_swiglu_args sw = {vk_at(bg), vk_at(bup), vk_at(bg), m, n};
        assert_int_equal(duet_dev_swiglu(x->d, x->s, &sw), DUET_OK);
    }
    finish(x, bg, out, plane);
    duet_buffer *all[] = {bx, bw, bu, bg, bup};
    free_bufs(x, all, 5);
}

/* On a device with DUET_VK_MATMUL=variant: for every weight type and m in
 * {1, 9} (one row; a full group of 8 and one more), the gated matmul has exactly the bits of the three ops on
 * the same device and matches the CPU reference's gated matmul; the gated
 * pipeline of the forced kernel (sh_plain for F32/F16/BF16, sh_quant for
 * the block types, variant bits `bits`) is the one created. */
static void glu_variant_cases(const char *variant, vk_shader sh_plain, vk_shader sh_quant,
                              uint32_t bits)
{
    static const int ms[] = {1, 9};
    side saved = device_with_env("DUET_VK_MATMUL", variant, NULL, NULL);
    for (int i = 0; i < N_WEIGHT_TYPES; i++) {
        duet_dtype t = weight_types[i];
        int k = duet_dtype_get(t)->block_elems > 32 ? 512 : 256, n = 21;
        size_t bytes;
        uint8_t *w = random_weights(t, n, k, &bytes), *wu = random_weights(t, n, k, &bytes);
        for (int mi = 0; mi < 2; mi++) {
            int m = ms[mi];
            float *in = frand_array((size_t)m * k, 1), *three = malloc(4ull * m * n);
            float *one = malloc(4ull * m * n), *want = malloc(4ull * m * n);
            run_glu(&vk, t, w, wu, bytes, in, m, k, n, 0, three);
            run_glu(&vk, t, w, wu, bytes, in, m, k, n, 1, one);
            run_glu(&cpu, t, w, wu, bytes, in, m, k, n, 1, want);
            char what[96];
            snprintf(what, sizeof what, "gated matmul %s m=%d (%s) vs matmul+matmul+swiglu",
                     duet_dtype_get(t)->name, m, variant);
            for (size_t e = 0; e < (size_t)m * n; e++)
                if (memcmp(&one[e], &three[e], 4) != 0)
                    fail_msg("%s: element %zu is %.9g, the three ops give %.9g", what, e, one[e],
                             three[e]);
            snprintf(what, sizeof what, "gated matmul %s m=%d (%s) vs the CPU",
                     duet_dtype_get(t)->name, m, variant);
            vk_assert_match(what, one, want, (size_t)m * n, 5e-4);
            free(in), free(three), free(one), free(want);
        }
        free(w), free(wu);
        vk_shader sh = duet_dtype_get(t)->block_elems == 1 ? sh_plain : sh_quant;
        const vk_ctx *c = vk.d->ctx;
        uint32_t spec = t + 32u * bits;
        if (sh == VK_SH_MATMUL_VEC || sh == VK_SH_MATMUL_QVEC)
            spec = vec_spec(vk.d, t, (bits & 2) != 0) + 32u * (bits & 1);
        if (c->pipes[sh][spec] == VK_NULL_HANDLE)
            fail_msg("gated matmul %s (%s): the forced kernel's gated pipeline was not used",
                     duet_dtype_get(t)->name, variant);
    }
    restore_device(saved);
}

static void test_matmul_glu(void **state)
{
    (void)state;
    /* W_up at an odd offset: refused, naming it. */
    duet_buffer *bx = vk_buffer(&vk, NULL, 4 * 32), *bw = vk_buffer(&vk, NULL, 64 * 4 + 2);
    duet_buffer *bo = vk_buffer(&vk, NULL, 4 * 4);
    begin(&vk);
    duet_matmul_args a = {.x = vk_at(bx), .w = vk_at(bw), .w_up = {bw, 1}, .out = vk_at(bo),
                          .w_type = DUET_F16, .n_rows = 1, .k = 32, .n = 4};
    assert_int_equal(duet_dev_matmul(vk.d, vk.s, &a), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "'w_up' at offset 1"));
    finish(&vk, bo, (float[4]){0}, 4 * 4);
    duet_buffer *all[] = {bx, bw, bo};
    free_bufs(&vk, all, 3);

    glu_variant_cases("tiled", VK_SH_MATMUL, VK_SH_MATMUL, 2);
    glu_variant_cases("per-output", VK_SH_MATMUL, VK_SH_MATMUL, 3);
    glu_variant_cases("vec", VK_SH_MATMUL_VEC, VK_SH_MATMUL_QVEC, 2);
}

/* ---- the decode kernels' weight rows per workgroup (DUET_VK_VEC_ROWS) ------------- */

enum { VR_N = 23, VR_NM = 4 }; /* n not a multiple of 4 */
static const int vr_ms[VR_NM] = {1, 3, 9, 17};

/* On a device with DUET_VK_MATMUL=vec and DUET_VK_VEC_ROWS=rows: for every
 * weight type, plain (with bias) and gated, and every m in vr_ms, the
 * outputs into out[type][gated][mi] (VR_N * 17 floats each); the pipeline
 * with those rows must be the one created. */
static void vec_rows_run(const char *rows, int log2_rows, const uint8_t *const *w,
                         const uint8_t *const *wu, const size_t *bytes, const float *in,
                         const float *bias, float (*out)[2][VR_NM][VR_N * 17])
{
    side saved = device_with_env("DUET_VK_MATMUL", "vec", "DUET_VK_VEC_ROWS", rows);
    assert_int_equal(((const vk_ctx *)vk.d->ctx)->vec_rows_log2, log2_rows);
    for (int i = 0; i < N_WEIGHT_TYPES; i++) {
        duet_dtype t = weight_types[i];
        int k = duet_dtype_get(t)->block_elems > 32 ? 256 : 64;
        for (int mi = 0; mi < VR_NM; mi++) {
            run_matmul(&vk, t, w[i], bytes[i], in, bias, vr_ms[mi], k, VR_N, out[i][0][mi]);
            run_glu(&vk, t, w[i], wu[i], bytes[i], in, vr_ms[mi], k, VR_N, 1, out[i][1][mi]);
        }
        vk_shader sh = duet_dtype_get(t)->block_elems == 1 ? VK_SH_MATMUL_VEC : VK_SH_MATMUL_QVEC;
        const vk_ctx *c = vk.d->ctx;
        uint32_t spec = (uint32_t)t + 128u * (uint32_t)log2_rows;
        if (c->pipes[sh][spec] == VK_NULL_HANDLE || c->pipes[sh][spec + 64] == VK_NULL_HANDLE)
            fail_msg("matmul %s: DUET_VK_VEC_ROWS=%s's pipelines were not used",
                     duet_dtype_get(t)->name, rows);
    }
    restore_device(saved);
}

/* matmul_vec / matmul_qvec with 1, 2 and 4 weight rows per workgroup give
 * the same bits, plain with a bias and gated, for every weight type, at
 * m = 1, 3, 9, 17 and n = 23 (the last group partial); 4 rows agree with
 * the CPU reference too. A bad DUET_VK_VEC_ROWS fails device creation,
 * naming it. */
static void test_matmul_vec_rows(void **state)
{
    (void)state;
    static const char *rows[] = {"1", "2", "4"};
    uint8_t *w[N_WEIGHT_TYPES], *wu[N_WEIGHT_TYPES];
    size_t bytes[N_WEIGHT_TYPES];
    float *in = frand_array(17 * 256, 1), *bias = frand_array(VR_N, 1);
    float(*got[3])[2][VR_NM][VR_N * 17];
    for (int i = 0; i < N_WEIGHT_TYPES; i++) {
        int k = duet_dtype_get(weight_types[i])->block_elems > 32 ? 256 : 64;
        w[i] = random_weights(weight_types[i], VR_N, k, &bytes[i]);
        wu[i] = random_weights(weight_types[i], VR_N, k, &bytes[i]);
    }
    for (int r = 0; r < 3; r++) {
        got[r] = calloc(N_WEIGHT_TYPES, sizeof *got[r]);
        vec_rows_run(rows[r], r, (const uint8_t *const *)w, (const uint8_t *const *)wu, bytes,
                     in, bias, got[r]);
    }
    for (int i = 0; i < N_WEIGHT_TYPES; i++) {
        duet_dtype t = weight_types[i];
        int k = duet_dtype_get(t)->block_elems > 32 ? 256 : 64;
        for (int g = 0; g < 2; g++)
            for (int mi = 0; mi < VR_NM; mi++) {
                size_t cnt = (size_t)vr_ms[mi] * VR_N;
                for (int r = 1; r < 3; r++)
                    for (size_t e = 0; e < cnt; e++)
                        if (memcmp(&got[r][i][g][mi][e], &got[0][i][g][mi][e], 4) != 0)
                            fail_msg("matmul %s%s m=%d: rows %s gives %.9g at [%zu][%zu], rows 1 "
                                     "%.9g",
                                     duet_dtype_get(t)->name, g ? " gated" : "", vr_ms[mi],
                                     rows[r], got[r][i][g][mi][e], e / VR_N, e % VR_N,
                                     got[0][i][g][mi][e]);
            }
        /* the default (4 rows) against the CPU at m = 17 */
        float *want = malloc(4ull * 17 * VR_N);
        char what[96];
        run_matmul(&cpu, t, w[i], bytes[i], in, bias, 17, k, VR_N, want);
        snprintf(what, sizeof what, "matmul %s, 4 vec rows, vs the CPU", duet_dtype_get(t)->name);
        vk_assert_match(what, got[2][i][0][VR_NM - 1], want, 17 * VR_N, 5e-4);
        run_glu(&cpu, t, w[i], wu[i], bytes[i], in, 17, k, VR_N, 1, want);
        snprintf(what, sizeof what, "gated matmul %s, 4 vec rows, vs the CPU",
                 duet_dtype_get(t)->name);
        vk_assert_match(what, got[2][i][1][VR_NM - 1], want, 17 * VR_N, 5e-4);
        free(want);
        free(w[i]), free(wu[i]);
    }
    for (int r = 0; r < 3; r++)
        free(got[r]);
    free(in), free(bias);

    duet_device *d = NULL;
    setenv("DUET_VK_VEC_ROWS", "3", 1);
    duet_status rc = duet_vulkan_device_create(-1, NULL, 1, &d);
    unsetenv("DUET_VK_VEC_ROWS");
    assert_int_equal(rc, DUET_ERR_INVALID_ARG);
    assert_null(d);
    assert_non_null(strstr(duet_last_error(), "DUET_VK_VEC_ROWS='3'"));
    assert_non_null(strstr(duet_last_error(), "1, 2 or 4"));
}

/* Embed rows ids[0..n) of an F16 table and one matmul over all of it, on
 * both devices; the Vulkan results must match the reference's. */
static void big_table_cases(const uint16_t *table, size_t bytes, int dim, int vocab,
                            const int32_t *ids, int n, const char *label)
{
    char what[96];
    float *want = malloc(4ull * n * dim), *got = malloc(4ull * n * dim);
    run_embed(&cpu, DUET_F16, table, bytes, vocab, dim, ids, n, want);
    run_embed(&vk, DUET_F16, table, bytes, vocab, dim, ids, n, got);
    snprintf(what, sizeof what, "embed F16 %s", label);
    assert_same(what, got, want, (size_t)n * dim);
    free(want), free(got);

    float *in = frand_array(dim, 1);
    want = malloc(4ull * vocab);
    got = malloc(4ull * vocab);
    run_matmul(&cpu, DUET_F16, table, bytes, in, NULL, 1, dim, vocab, want);
    run_matmul(&vk, DUET_F16, table, bytes, in, NULL, 1, dim, vocab, got);
    snprintf(what, sizeof what, "matmul F16 %s", label);
    vk_assert_match(what, got, want, vocab, 5e-4);
    free(in), free(want), free(got);
}

/* A weight of 160 MiB: more than lavapipe binds at once (128 MiB), so
 * embed and matmul must split it; the rows read sit past 128 MiB. */
static void test_big_weight(void **state)
{
    (void)state;
    int dim = 4096, vocab = 20480; /* F16: 8 KiB rows, 160 MiB */
    size_t bytes = 2ull * dim * vocab;
    uint16_t *table = malloc(bytes);
    for (size_t i = 0; i < bytes / 2; i++)
        table[i] = duet_f32_to_f16(vk_frand());
    int32_t ids[] = {vocab - 1, 17000, 3, 16384};
    big_table_cases(table, bytes, dim, vocab, ids, 4, "160 MiB");
    free(table);
    check_validation();
}

/* The gated matmul over one 160 MiB F16 buffer: W = rows 0 .. n-1, W_up =
 * rows 1 .. n, each more than lavapipe binds at once, so the host splits
 * both over the same weight rows (at different byte offsets). On side x:
 * the three ops (gated = 0) or the gated matmul. */
static void run_big_glu(side *x, const uint16_t *table, size_t bytes, const float *in, int dim,
                        int n, int gated, float *out)
{
    size_t row = 2ull * dim;
    duet_buffer *bt = vk_buffer(x, table, bytes), *bx = vk_buffer(x, in, 4ull * dim);
    duet_buffer *bg = vk_buffer(x, NULL, 4ull * n), *bu = vk_buffer(x, NULL, 4ull * n);
    begin(x);
    duet_matmul_args a = {.x = vk_at(bx), .w = vk_at(bt), .out = vk_at(bg), .w_type = DUET_F16,
                          .n_rows = 1, .k = dim, .n = n};
    duet_addr w_up = {bt, row};
    if (gated) {
        a.w_up = w_up;
        assert_int_equal(duet_dev_matmul(x->d, x->s, &a), DUET_OK);
    } else {
        assert_int_equal(duet_dev_matmul(x->d, x->s, &a), DUET_OK);
        a.w = w_up;
        a.out = vk_at(bu);
        assert_int_equal(duet_dev_matmul(x->d, x->s, &a), DUET_OK);
        duet_swiglu_args sw = {vk_at(bg), vk_at(bu), vk_at(bg), 1, n};
        assert_int_equal(duet_dev_swiglu(x->d, x->s, &sw), DUET_OK);
    }
    finish(x, bg, out, 4ull * n);
    duet_buffer *all[] = {bt, bx, bg, bu};
    free_bufs(x, all, 4);
}

static void test_big_weight_glu(void **state)
{
    (void)state;
    int dim = 4096, vocab = 20480, n = vocab - 1; /* F16: 8 KiB rows, 160 MiB */
    size_t bytes = 2ull * dim * vocab;
    uint16_t *table = malloc(bytes);
    for (size_t i = 0; i < bytes / 2; i++)
        table[i] = duet_f32_to_f16(vk_frand());
    float *in = frand_array(dim, 1), *three = malloc(4ull * n), *one = malloc(4ull * n);
    float *want = malloc(4ull * n);
    run_big_glu(&vk, table, bytes, in, dim, n, 0, three);
    run_big_glu(&vk, table, bytes, in, dim, n, 1, one);
    run_big_glu(&cpu, table, bytes, in, dim, n, 1, want);
    for (int e = 0; e < n; e++)
        if (memcmp(&one[e], &three[e], 4) != 0)
            fail_msg("gated matmul F16 160 MiB: element %d is %.9g, the three ops give %.9g", e,
                     one[e], three[e]);
    vk_assert_match("gated matmul F16 160 MiB vs the CPU", one, want, (size_t)n, 5e-4);
    free(table), free(in), free(three), free(one), free(want);
    check_validation();
}

/* The same 160 MiB weight in a buffer larger than one allocation (the
 * allocation size forced down to twice the binding limit, so the buffer is
 * two overlapping chunks): embed and matmul read rows from both, and reads
 * across the chunk boundary return the bytes written. */
static void test_big_weight_chunked(void **state)
{
    (void)state;
    int dim = 4096, vocab = 20480;
    size_t bytes = 2ull * dim * vocab;
    char cap[32];
    snprintf(cap, sizeof cap, "%zu", bytes / 10 * 9); /* 144 MiB: two chunks */
    side saved = device_with_env("DUET_VK_MAX_ALLOC", cap, NULL, NULL);

    uint16_t *table = malloc(bytes);
    for (size_t i = 0; i < bytes / 2; i++)
        table[i] = duet_f32_to_f16(vk_frand());
    int32_t ids[] = {vocab - 1, 17000, 3, 16383, 16384, 8192};
    big_table_cases(table, bytes, dim, vocab, ids, 6, "160 MiB, two chunks");

    /* Every byte back, synchronously and through a stream download. */
    duet_buffer *b = vk_buffer(&vk, table, bytes);
    assert_int_equal(b->n_chunks, 2);
    unsigned char *back = malloc(bytes);
    assert_int_equal(duet_dev_buffer_read(vk.d, vk_at(b), back, bytes), DUET_OK);
    assert_memory_equal(back, table, bytes);
    begin(&vk);
    memset(back, 0, bytes);
    assert_int_equal(duet_dev_download(vk.d, vk.s, vk_at(b), back, bytes), DUET_OK);
    assert_int_equal(duet_dev_stream_submit(vk.d, vk.s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(vk.d, vk.s), DUET_OK);
    assert_memory_equal(back, table, bytes);
    duet_dev_buffer_free(vk.d, b);
    free(back), free(table);
    restore_device(saved);
}

/* ---- rope ------------------------------------------------------------------------ */

/* q and k rotated in place; k NULL = q only. */
static void run_rope(side *x, float *q, float *k, const int32_t *pos, const float *ff, int t,
                     int nh, int nkv, int hd, int rot, duet_rope_mode mode)
{
    size_t qn = 4ull * t * nh * hd, kn = 4ull * t * nkv * hd;
    duet_buffer *bq = vk_buffer(x, q, qn), *bk = k ? vk_buffer(x, k, kn) : NULL,
                *bp = vk_buffer(x, pos, 4ull * t);
    duet_buffer *bf = ff ? vk_buffer(x, ff, 4ull * (rot / 2)) : NULL;
    begin(x);
    duet_rope_args a = {vk_at(bq), k ? vk_at(bk) : none(),
                        {vk_at(bp), bf ? vk_at(bf) : none(), rot, mode, 500000.0f},
                        t, nh, nkv, hd};
    assert_int_equal(duet_dev_rope(x->d, x->s, &a), DUET_OK);
    if (k)
        assert_int_equal(duet_dev_download(x->d, x->s, vk_at(bk), k, kn), DUET_OK);
    finish(x, bq, q, qn);
    duet_buffer *all[] = {bq, bp, bf, bk};
    free_bufs(x, all, 4); /* NULL entries are fine */
}

static void test_rope(void **state)
{
    (void)state;
    int t = 6, nh = 4, nkv = 2, hd = 64;
    int32_t pos[] = {0, 1, 17, 4095, 65536, 131071};
    for (int variant = 0; variant < 4; variant++) {
        duet_rope_mode mode = variant & 1 ? DUET_ROPE_NEOX : DUET_ROPE_NORMAL;
        int rot = variant & 2 ? 48 : 64;
        float *ff = NULL;
        if (variant & 2) {
            ff = malloc(4ull * (rot / 2));
            for (int i = 0; i < rot / 2; i++)
                ff[i] = 1.0f + (float)i * 0.37f;
        }
        size_t qn = (size_t)t * nh * hd, kn = (size_t)t * nkv * hd;
        float *q = frand_array(qn, 2), *k = frand_array(kn, 2);
        float *q2 = malloc(4 * qn), *k2 = malloc(4 * kn);
        memcpy(q2, q, 4 * qn);
        memcpy(k2, k, 4 * kn);
        run_rope(&cpu, q, k, pos, ff, t, nh, nkv, hd, rot, mode);
        run_rope(&vk, q2, k2, pos, ff, t, nh, nkv, hd, rot, mode);
        char what[64];
        snprintf(what, sizeof what, "rope q variant %d", variant);
        vk_assert_match(what, q2, q, qn, 1e-7);
        vk_assert_match("rope k", k2, k, kn, 1e-7);
        free(q), free(k), free(q2), free(k2), free(ff);
    }
    check_validation();
}

/* ---- kv_write and attention --------------------------------------------------------- */

static void run_kv_write(side *x, duet_dtype ct, const float *k, const float *v,
                         const int32_t *slots, int t, int nkv, int hd, int nb, int bs,
                         const void *cache0, void *kc_out, void *vc_out)
{
    size_t row = 4ull * nkv * hd, cb = (ct == DUET_F16 ? 2ull : 4ull) * nb * bs * nkv * hd;
    duet_buffer *bk = vk_buffer(x, k, row * t), *bv = vk_buffer(x, v, row * t),
                *bs_ = vk_buffer(x, slots, 4ull * t);
    duet_buffer *bkc = vk_buffer(x, cache0, cb), *bvc = vk_buffer(x, cache0, cb);
    begin(x);
    duet_kv_write_args a = {vk_at(bk), vk_at(bv), vk_at(bs_), vk_at(bkc), vk_at(bvc), no_rope,
                            ct, t, nkv, hd, nb, bs};
    assert_int_equal(duet_dev_kv_write(x->d, x->s, &a), DUET_OK);
    assert_int_equal(duet_dev_download(x->d, x->s, vk_at(bkc), kc_out, cb), DUET_OK);
    finish(x, bvc, vc_out, cb);
    duet_buffer *all[] = {bk, bv, bs_, bkc, bvc};
    free_bufs(x, all, 5);
}

static void test_kv_write(void **state)
{
    (void)state;
    int t = 7, nkv = 2, hd = 24, nb = 5, bs = 4;
    int32_t slots[] = {3, -1, 19, 0, 20, 7, -5};
    for (int f16 = 0; f16 < 2; f16++) {
        duet_dtype ct = f16 ? DUET_F16 : DUET_F32;
        size_t cb = (f16 ? 2ull : 4ull) * nb * bs * nkv * hd;
        float *k = frand_array((size_t)t * nkv * hd, 3), *v = frand_array((size_t)t * nkv * hd, 3);
        uint8_t *cache0 = malloc(cb);
        for (size_t i = 0; i < cb; i++)
            cache0[i] = (uint8_t)(vk_rand32() & 0x3f); /* finite in both types */
        uint8_t *kw = malloc(cb), *vw = malloc(cb), *kg = malloc(cb), *vg = malloc(cb);
        run_kv_write(&cpu, ct, k, v, slots, t, nkv, hd, nb, bs, cache0, kw, vw);
        run_kv_write(&vk, ct, k, v, slots, t, nkv, hd, nb, bs, cache0, kg, vg);
        assert_memory_equal(kg, kw, cb);
        assert_memory_equal(vg, vw, cb);
        assert_memory_not_equal(kw, cache0, cb); /* the op did write */
        free(k), free(v), free(cache0), free(kw), free(vw), free(kg), free(vg);
    }
    check_validation();
}

/* One shape of the fused rotation. */
typedef struct kvr_case {
    int t, nkv, hd, rot;
    duet_rope_mode mode;
    int with_ff;
} kvr_case;

/* Outputs of rope + kv_write in one recording on one side. */
typedef struct kvr_out {
    float *q, *k; /* q and k as left by the ops */
    uint8_t *kc, *vc;
} kvr_out;

/* fused = 0: rope(q, k), then kv_write(k); fused = 1: rope(q only) and
 * kv_write(k, rope spec), which must need no barrier between them. */
static void run_rope_kv_write(side *x, const kvr_case *c, duet_dtype ct, int fused,
                              const float *q, const float *k, const float *v,
                              const int32_t *pos, const float *ff, const int32_t *slots,
                              const void *cache0, kvr_out *o)
{
    enum { NH = 4, NB = 5, BS = 4 };
    size_t qn = 4ull * c->t * NH * c->hd, kn = 4ull * c->t * c->nkv * c->hd;
    size_t cb = (ct == DUET_F16 ? 2ull : 4ull) * NB * BS * c->nkv * c->hd;
    duet_buffer *bq = vk_buffer(x, q, qn), *bk = vk_buffer(x, k, kn), *bv = vk_buffer(x, v, kn);
    duet_buffer *bp = vk_buffer(x, pos, 4ull * c->t), *bs_ = vk_buffer(x, slots, 4ull * c->t);
    duet_buffer *bf = c->with_ff ? vk_buffer(x, ff, 4ull * (c->rot / 2)) : NULL;
    duet_buffer *bkc = vk_buffer(x, cache0, cb), *bvc = vk_buffer(x, cache0, cb);
    duet_rope_spec spec = {vk_at(bp), bf ? vk_at(bf) : none(), c->rot, c->mode, 500000.0f};
    begin(x);
    duet_rope_args ra = {vk_at(bq), fused ? none() : vk_at(bk), spec, c->t, NH, c->nkv, c->hd};
    duet_kv_write_args ka = {vk_at(bk), vk_at(bv), vk_at(bs_), vk_at(bkc), vk_at(bvc),
                             fused ? spec : no_rope, ct, c->t, c->nkv, c->hd,
                             NB, BS};
    assert_int_equal(duet_dev_rope(x->d, x->s, &ra), DUET_OK);
    int barriers = x == &vk ? x->s->n_barriers : 0;
    assert_int_equal(duet_dev_kv_write(x->d, x->s, &ka), DUET_OK);
    if (x == &vk && fused && x->s->n_barriers != barriers)
        fail_msg("a barrier between rope (q only) and kv_write with rope");
    o->q = malloc(qn), o->k = malloc(kn), o->kc = malloc(cb), o->vc = malloc(cb);
    assert_int_equal(duet_dev_download(x->d, x->s, vk_at(bk), o->k, kn), DUET_OK);
    assert_int_equal(duet_dev_download(x->d, x->s, vk_at(bkc), o->kc, cb), DUET_OK);
    assert_int_equal(duet_dev_download(x->d, x->s, vk_at(bvc), o->vc, cb), DUET_OK);
    finish(x, bq, o->q, qn);
    duet_buffer *all[] = {bq, bk, bv, bp, bs_, bf, bkc, bvc};
    free_bufs(x, all, 8);
}

static void kvr_free(kvr_out *o) { free(o->q), free(o->k), free(o->kc), free(o->vc); }

/* A cache image as floats (F16 decoded). */
static float *cache_floats(const uint8_t *c, size_t n, duet_dtype ct)
{
    float *f = malloc(4 * n);
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        if (ct == DUET_F16)
            memcpy(&h, c + 2 * i, 2), f[i] = duet_f16_to_f32(h);
        else
            memcpy(&f[i], c + 4 * i, 4);
    }
    return f;
}

/* kv_write with a rope spec on Vulkan stores the bits rope(q, k) +
 * kv_write(k) store on Vulkan (F32 and F16 caches, normal and neox,
 * rot_dim < head_dim, freq_factors, skipped slots, an odd head_dim whose
 * half pairs straddle heads), rope without k gives rope(q, k)'s q bits, k
 * stays unrotated; and the result is the CPU reference's within 1e-7. */
static void test_kv_write_rope(void **state)
{
    (void)state;
    kvr_case cases[] = {{7, 2, 64, 64, DUET_ROPE_NORMAL, 0}, {7, 2, 64, 64, DUET_ROPE_NEOX, 1},
                        {6, 3, 24, 16, DUET_ROPE_NEOX, 1},  {5, 1, 10, 6, DUET_ROPE_NORMAL, 1},
                        {4, 2, 9, 6, DUET_ROPE_NEOX, 1},    {4, 2, 9, 4, DUET_ROPE_NORMAL, 0}};
    int32_t pos[] = {0, 1, 17, 4095, 65536, 131071, 333};
    int32_t slots[] = {3, -1, 19, 0, 20, 7, -5}; /* 20 and -5: outside 5 blocks x 4 */
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const kvr_case *c = &cases[ci];
        size_t qn = (size_t)c->t * 4 * c->hd, kn = (size_t)c->t * c->nkv * c->hd;
        size_t slots_n = 5 * 4 * (size_t)c->nkv * c->hd;
        float *q = frand_array(qn, 2), *k = frand_array(kn, 2), *v = frand_array(kn, 2);
        float *ff = malloc(4ull * (c->rot / 2));
        for (int i = 0; i < c->rot / 2; i++)
            ff[i] = 1.0f + (float)i * 0.37f;
        for (int f16 = 0; f16 < 2; f16++) {
            duet_dtype ct = f16 ? DUET_F16 : DUET_F32;
            size_t cb = (f16 ? 2 : 4) * slots_n;
            uint8_t *cache0 = malloc(cb);
            for (size_t i = 0; i < cb; i++)
                cache0[i] = (uint8_t)(vk_rand32() & 0x3f); /* finite in both types */
            kvr_out un, fu, ref;
            run_rope_kv_write(&vk, c, ct, 0, q, k, v, pos, ff, slots, cache0, &un);
            run_rope_kv_write(&vk, c, ct, 1, q, k, v, pos, ff, slots, cache0, &fu);
            run_rope_kv_write(&cpu, c, ct, 1, q, k, v, pos, ff, slots, cache0, &ref);
            char what[96];
            snprintf(what, sizeof what, "case %zu %s: fused k cache vs rope + kv_write", ci,
                     f16 ? "F16" : "F32");
            if (memcmp(fu.kc, un.kc, cb) != 0)
                fail_msg("%s: not bit-identical", what);
            assert_memory_equal(fu.vc, un.vc, cb);
            assert_memory_equal(fu.q, un.q, 4 * qn);  /* rope without k: same q */
            assert_memory_equal(fu.k, k, 4 * kn);     /* kv_write left k alone */
            assert_memory_not_equal(un.k, k, 4 * kn); /* (the unfused rope did rotate it) */
            float *got = cache_floats(fu.kc, slots_n, ct), *want = cache_floats(ref.kc, slots_n, ct);
            snprintf(what, sizeof what, "case %zu %s: fused k cache vs the CPU", ci,
                     f16 ? "F16" : "F32");
            vk_assert_match(what, got, want, slots_n, 1e-7);
            assert_memory_equal(fu.vc, ref.vc, cb);
            free(got), free(want), free(cache0);
            kvr_free(&un), kvr_free(&fu), kvr_free(&ref);
        }
        free(q), free(k), free(v), free(ff);
    }
    check_validation();
}

typedef struct attn_shape {
    int n_seqs, n_heads, n_kv_heads, head_dim, block_size, num_blocks, max_blocks;
    const int *q_lens, *seq_lens;
    duet_dtype cache_type;
    int corrupt; /* 1: a bad block id in sequence 0's table; 2: bad query_start_loc */
} attn_shape;

static void run_attention(side *x, const attn_shape *c, const float *q, const void *kc,
                          const void *vc, const int32_t *tables, const int32_t *lens,
                          const int32_t *qsl, int t, float *out)
{
    size_t qn = 4ull * t * c->n_heads * c->head_dim;
    size_t cb = (c->cache_type == DUET_F16 ? 2ull : 4ull) * c->num_blocks * c->block_size *
                c->n_kv_heads * c->head_dim;
    duet_buffer *bq = vk_buffer(x, q, qn), *bk = vk_buffer(x, kc, cb), *bv = vk_buffer(x, vc, cb);
    duet_buffer *bt = vk_buffer(x, tables, 4ull * c->n_seqs * c->max_blocks);
    duet_buffer *bl = vk_buffer(x, lens, 4ull * c->n_seqs),
                *bs = vk_buffer(x, qsl, 4ull * (c->n_seqs + 1));
    duet_buffer *bo = vk_buffer(x, NULL, qn);
    begin(x);
    duet_attention_args a = {vk_at(bq), vk_at(bk), vk_at(bv), vk_at(bt), vk_at(bl),
                             vk_at(bs), vk_at(bo), c->cache_type, t, c->n_seqs,
                             c->n_heads, c->n_kv_heads, c->head_dim, c->num_blocks,
                             c->block_size, c->max_blocks,
                             1.0f / sqrtf((float)c->head_dim)};
    assert_int_equal(duet_dev_attention(x->d, x->s, &a), DUET_OK);
    finish(x, bo, out, qn);
    duet_buffer *all[] = {bq, bk, bv, bt, bl, bs, bo};
    free_bufs(x, all, 7);
}

static void attention_case(const attn_shape *c)
{
    int t = 0;
    int32_t *qsl = malloc(4ull * (c->n_seqs + 1)), *lens = malloc(4ull * c->n_seqs);
    qsl[0] = 0;
    for (int s = 0; s < c->n_seqs; s++) {
        t += c->q_lens[s];
        qsl[s + 1] = t;
        lens[s] = c->seq_lens[s];
    }
    /* Block tables: a random permutation of blocks 1.., so pages are
     * scattered; unused entries -1. */
    int32_t *tables = malloc(4ull * c->n_seqs * c->max_blocks);
    int32_t *perm = malloc(4ull * c->num_blocks);
    for (int i = 0; i < c->num_blocks; i++)
        perm[i] = i;
    for (int i = c->num_blocks - 1; i > 1; i--) {
        int j = 1 + (int)(vk_rand32() % (uint32_t)i);
        int32_t tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    int next = 1;
    for (int s = 0; s < c->n_seqs; s++) {
        int need = (c->seq_lens[s] + c->block_size - 1) / c->block_size;
        for (int b = 0; b < c->max_blocks; b++)
            tables[s * c->max_blocks + b] = b < need ? perm[next++] : -1;
    }
    assert_true(next <= c->num_blocks);
    if (c->corrupt == 1)
        tables[0] = c->num_blocks + 3;
    if (c->corrupt == 2)
        qsl[1] = qsl[2] + 1;
    size_t n_cache = (size_t)c->num_blocks * c->block_size * c->n_kv_heads * c->head_dim;
    float *kf = frand_array(n_cache, 1), *vf = frand_array(n_cache, 1);
    void *kc = kf, *vc = vf;
    if (c->cache_type == DUET_F16) {
        uint16_t *kh = malloc(2 * n_cache), *vh = malloc(2 * n_cache);
        for (size_t i = 0; i < n_cache; i++) {
            kh[i] = duet_f32_to_f16(kf[i]);
            vh[i] = duet_f32_to_f16(vf[i]);
        }
        kc = kh;
        vc = vh;
    }
    size_t qn = (size_t)t * c->n_heads * c->head_dim;
    float *q = frand_array(qn, 2), *want = malloc(4 * qn), *got = malloc(4 * qn);
    run_attention(&cpu, c, q, kc, vc, tables, lens, qsl, t, want);
    run_attention(&vk, c, q, kc, vc, tables, lens, qsl, t, got);
    char what[96];
    snprintf(what, sizeof what, "attention H=%d Hkv=%d D=%d %s corrupt=%d", c->n_heads,
             c->n_kv_heads, c->head_dim, c->cache_type == DUET_F16 ? "F16" : "F32", c->corrupt);
    vk_assert_match(what, got, want, qn, 5e-4);
    if (kc != kf)
        free(kc), free(vc);
    free(kf), free(vf), free(q), free(want), free(got), free(qsl), free(lens), free(tables);
    free(perm);
}

static void test_attention(void **state)
{
    (void)state;
    /* Mixed: a prefill chunk with earlier context, decodes, a fresh prefill. */
    static const int q_lens[] = {5, 1, 1, 9}, seq_lens[] = {21, 70, 1, 9};
    for (int f16 = 0; f16 < 2; f16++) {
        duet_dtype ct = f16 ? DUET_F16 : DUET_F32;
        attn_shape shapes[] = {
            {4, 8, 2, 64, 16, 24, 6, q_lens, seq_lens, ct, 0},  /* GQA 4:1 */
            {4, 4, 4, 128, 8, 40, 10, q_lens, seq_lens, ct, 0}, /* MHA, D 128 */
            {4, 6, 3, 40, 16, 24, 6, q_lens, seq_lens, ct, 0},  /* odd-ish D */
            {4, 8, 2, 64, 16, 24, 6, q_lens, seq_lens, ct, 1},  /* bad block id */
            {4, 8, 2, 64, 16, 24, 6, q_lens, seq_lens, ct, 2},  /* bad query_start_loc */
        };
        for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
            attention_case(&shapes[i]);
    }
    check_validation();
}

/* ---- streams ------------------------------------------------------------------------ */

/* A chain in one recording (each op reads the previous op's output), with
 * an upload whose host memory is overwritten right after recording it. */
static void run_chain(side *x, const float *h0, const float *nw, const void *w, size_t wbytes,
                      int rows, int dim, int n, float *out)
{
    duet_buffer *bh = vk_buffer(x, NULL, 4ull * rows * dim), *bn = vk_buffer(x, nw, 4ull * dim);
    duet_buffer *bw = vk_buffer(x, w, wbytes), *bx = vk_buffer(x, NULL, 4ull * rows * dim);
    duet_buffer *by = vk_buffer(x, NULL, 4ull * rows * n),
                *bz = vk_buffer(x, NULL, 4ull * rows * n);
    float *staging = malloc(4ull * rows * dim);
    memcpy(staging, h0, 4ull * rows * dim);
    begin(x);
    assert_int_equal(duet_dev_upload(x->d, x->s, vk_at(bh), staging, 4ull * rows * dim), DUET_OK);
    for (int i = 0; i < rows * dim; i++)
        staging[i] = 1e30f; /* must not reach the device */
    duet_rms_norm_args rn = {vk_at(bh), vk_at(bn), vk_at(bx), rows, dim, 1e-6f, none()};
    duet_matmul_args mm = {vk_at(bx), vk_at(bw), none(), vk_at(by), DUET_Q8_0, rows, dim, n, none()};
    duet_matmul_args mm2 = {vk_at(bx), vk_at(bw), none(), vk_at(bz), DUET_Q8_0, rows, dim, n, none()};
    duet_swiglu_args sw = {vk_at(by), vk_at(bz), vk_at(by), rows, n};
    duet_add_args ad = {vk_at(by), vk_at(bz), (int64_t)rows * n};
    assert_int_equal(duet_dev_rms_norm(x->d, x->s, &rn), DUET_OK);
    assert_int_equal(duet_dev_matmul(x->d, x->s, &mm), DUET_OK);
    assert_int_equal(duet_dev_matmul(x->d, x->s, &mm2), DUET_OK);
    assert_int_equal(duet_dev_swiglu(x->d, x->s, &sw), DUET_OK);
    assert_int_equal(duet_dev_add(x->d, x->s, &ad), DUET_OK);
    finish(x, by, out, 4ull * rows * n);
    free(staging);
    duet_buffer *all[] = {bh, bn, bw, bx, by, bz};
    free_bufs(x, all, 6);
}

static void test_chain_one_recording(void **state)
{
    (void)state;
    int rows = 5, dim = 256, n = 96;
    size_t bytes;
    uint8_t *w = random_weights(DUET_Q8_0, n, dim, &bytes);
    float *h0 = frand_array((size_t)rows * dim, 3), *nw = frand_array(dim, 1);
    float *want = malloc(4ull * rows * n), *got = malloc(4ull * rows * n);
    run_chain(&cpu, h0, nw, w, bytes, rows, dim, n, want);
    run_chain(&vk, h0, nw, w, bytes, rows, dim, n, got);
    vk_assert_match("chain", got, want, (size_t)rows * n, 5e-4);
    free(w), free(h0), free(nw), free(want), free(got);
    check_validation();
}

static void test_device_info_and_listing(void **state)
{
    (void)state;
    duet_device_info info;
    duet_dev_info(vk.d, &info);
    assert_string_equal(info.backend, "vulkan");
    assert_true(info.name[0] != 0);
    duet_vulkan_device_desc list[8];
    int n = 0;
    assert_int_equal(duet_vulkan_list_devices(list, 8, &n), DUET_OK);
    assert_true(n >= 1);
    int preferred = 0;
    for (int i = 0; i < n && i < 8; i++) {
        assert_int_equal(list[i].index, i);
        preferred += list[i].preferred;
    }
    assert_int_equal(preferred, 1);
    assert_int_equal(duet_vulkan_validation_errors(cpu.d), -1);
    check_validation();
}

/* The harness can fail: a descriptor past the end of its buffer (recorded
 * through the backend's internal dispatch, never submitted) must reach the
 * counter, on a device of its own. */
static void test_validation_is_counted(void **state)
{
    (void)state;
    const char *env = getenv("DUET_VK_VALIDATION");
    if (!env || strcmp(env, "1") != 0) {
        fprintf(stderr, "  (validation is off: not exercised)\n");
        return;
    }
    duet_device *d = NULL;
    duet_stream *s = NULL;
    assert_int_equal(duet_vulkan_device_create(-1, NULL, 1, &d), DUET_OK);
    assert_int_equal(duet_dev_stream_create(d, &s), DUET_OK);
    duet_buffer *b = NULL;
    assert_int_equal(duet_dev_buffer_alloc(d, 256, &b), DUET_OK);
    assert_int_equal(duet_dev_stream_begin(d, s), DUET_OK);
    vk_binding bad[2] = {{b->chunk[0].buf, 0, 1 << 20}, {b->chunk[0].buf, 0, 256}};
    uint32_t pc[3] = {4, 0, 0};
    fprintf(stderr, "  (a validation error is expected next)\n");
    assert_int_equal(duet_vk_dispatch(d->ctx, s, VK_SH_ADD, 0, bad, 2, pc, sizeof pc, 1, 1, 1),
                     DUET_OK);
    assert_true(duet_vulkan_validation_errors(d) > 0);
    duet_dev_stream_destroy(d, s);
    duet_dev_buffer_free(d, b);
    duet_device_close(d);
}

/* ---- main ------------------------------------------------------------------------ */

int main(void)
{
    int rc = vk_fixture_open("test_vulkan_ops", &vk, &cpu);
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_info_and_listing),
        cmocka_unit_test(test_validation_is_counted),
        cmocka_unit_test(test_add),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_rms_norm),
        cmocka_unit_test(test_rms_norm_residual),
        cmocka_unit_test(test_rms_norm_residual_split),
        cmocka_unit_test(test_gather_rows),
        cmocka_unit_test(test_embed_types),
        cmocka_unit_test(test_embed_prev_tokens),
        cmocka_unit_test(test_matmul_types),
        cmocka_unit_test(test_matmul_variants),
        cmocka_unit_test(test_matmul_glu),
        cmocka_unit_test(test_matmul_vec_rows),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_kv_write),
        cmocka_unit_test(test_kv_write_rope),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_chain_one_recording),
        cmocka_unit_test(test_big_weight),
        cmocka_unit_test(test_big_weight_glu),
        cmocka_unit_test(test_big_weight_chunked),
    };
    return vk_fixture_close(&vk, &cpu, cmocka_run_group_tests(tests, NULL, NULL));
}
