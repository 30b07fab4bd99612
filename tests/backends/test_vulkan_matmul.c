/*
 * test_vulkan_matmul.c — the Vulkan backend's embed and matmul against the
 * CPU reference kernels, through the device wrappers: every weight type,
 * every matmul kernel (tiled, per-output, the decode kernels with 1, 2 and
 * 4 weight rows per workgroup; which one ran is checked), batch
 * invariance, exact dequantized weights, unaligned activations, the gated
 * form (w_up) bit for bit against matmul + matmul + swiglu, embed's
 * prev_tokens placeholders, and weights past lavapipe's 128 MiB binding
 * limit (split bindings, chunked buffers).
 *
 * Runs with the Khronos validation layer (DUET_VK_VALIDATION=1 unless the
 * environment says otherwise) and fails on any validation message.
 * Exits 77 (skipped) when there is no Vulkan device.
 */
#include "vulkan_ops_fixture.h"

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
 * across the chunk boundary return the bytes written. staged: the host
 * reaches device memory only through staging copies (DUET_VK_STAGED=1), as
 * on a discrete GPU. */
static void big_weight_chunked(int staged)
{
    int dim = 4096, vocab = 20480;
    size_t bytes = 2ull * dim * vocab;
    char cap[32];
    snprintf(cap, sizeof cap, "%zu", bytes / 10 * 9); /* 144 MiB: two chunks */
    side saved = device_with_env("DUET_VK_MAX_ALLOC", cap, staged ? "DUET_VK_STAGED" : NULL, "1");
    const char *what = staged ? "160 MiB, two chunks, staged" : "160 MiB, two chunks";

    uint16_t *table = malloc(bytes);
    for (size_t i = 0; i < bytes / 2; i++)
        table[i] = duet_f32_to_f16(vk_frand());
    int32_t ids[] = {vocab - 1, 17000, 3, 16383, 16384, 8192};
    big_table_cases(table, bytes, dim, vocab, ids, 6, what);

    /* Every byte back, synchronously and through a stream download. */
    duet_buffer *b = vk_buffer(&vk, table, bytes);
    assert_int_equal(b->n_chunks, 2);
    if (staged) /* no chunk is mapped: the copies above went through staging */
        assert_null(b->chunk[0].map), assert_null(b->chunk[1].map);
    unsigned char *back = malloc(bytes);
    assert_int_equal(duet_dev_buffer_read(vk.d, vk_at(b), back, bytes), DUET_OK);
    assert_memory_equal(back, table, bytes);
    /* A write across where chunk 1 starts; where the chunks are mapped,
     * both copies of the overlap hold it. */
    size_t mid = b->chunk[1].start - 4096, span = 3 * 4096;
    for (size_t i = 0; i < span; i++)
        ((unsigned char *)table)[mid + i] ^= 0x5a;
    assert_int_equal(duet_dev_buffer_write(vk.d, (duet_addr){b, mid}, (char *)table + mid, span),
                     DUET_OK);
    if (b->chunk[0].map && b->chunk[1].map) {
        size_t at = b->chunk[1].start, n = mid + span - at;
        assert_memory_equal((char *)b->chunk[0].map + at, (char *)table + at, n);
        assert_memory_equal((char *)b->chunk[1].map, (char *)table + at, n);
    }
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

static void test_big_weight_chunked(void **state)
{
    (void)state;
    big_weight_chunked(0);
}

static void test_big_weight_staged(void **state)
{
    (void)state;
    big_weight_chunked(1);
}

/* ---- main ------------------------------------------------------------------------ */

int main(void)
{
    int rc = vk_fixture_open("test_vulkan_matmul", &vk, &cpu);
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embed_types),
        cmocka_unit_test(test_embed_prev_tokens),
        cmocka_unit_test(test_matmul_types),
        cmocka_unit_test(test_matmul_variants),
        cmocka_unit_test(test_matmul_glu),
        cmocka_unit_test(test_matmul_vec_rows),
        cmocka_unit_test(test_big_weight),
        cmocka_unit_test(test_big_weight_glu),
        cmocka_unit_test(test_big_weight_chunked),
        cmocka_unit_test(test_big_weight_staged),
    };
    return vk_fixture_close(&vk, &cpu, cmocka_run_group_tests(tests, NULL, NULL));
}
