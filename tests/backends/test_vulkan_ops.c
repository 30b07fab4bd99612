/*
 * test_vulkan_ops.c — the Vulkan backend against the CPU reference kernels
 * (force_reference), op by op, through the device wrappers: random inputs,
 * outputs poisoned with NaN first, compared by NMSE (1e-7 elementwise,
 * 5e-4 matmul and attention) or bit for bit where the CPU is exact
 * (gather_rows, kv_write), NaN positions compared too, and a chain of
 * ops in one recording. embed and matmul are in test_vulkan_matmul.c.
 *
 * Runs with the Khronos validation layer (DUET_VK_VALIDATION=1 unless the
 * environment says otherwise) and fails on any validation message.
 * Exits 77 (skipped) when there is no Vulkan device.
 */
#include "vulkan_ops_fixture.h"

static const duet_rope_spec no_rope; /* kv_write without rotation */

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
                             1.0f / sqrtf((float)c->head_dim), 0};
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
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_kv_write),
        cmocka_unit_test(test_kv_write_rope),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_chain_one_recording),
    };
    return vk_fixture_close(&vk, &cpu, cmocka_run_group_tests(tests, NULL, NULL));
}
