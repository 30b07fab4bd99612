/*
 * test_cpu_matmul_glu.c — the gated matmul (duet_matmul_args.w_up) on the
 * CPU backend, reference and fast kernels: for every weight type and
 * several batch sizes its output has exactly the bits of the three ops it
 * replaces (matmul W, matmul W_up, swiglu) run on the same device, and is
 * close to silu(x.W^T) * (x.W_up^T) computed here in double precision
 * from the dequantized weights. Plus the wrapper's argument errors.
 */
#include "cpu_fixture.h"
#include "quant.h"

static const duet_dtype glu_types[] = {DUET_F32,  DUET_F16,  DUET_BF16, DUET_Q8_0, DUET_Q4_0,
                                       DUET_Q4_1, DUET_Q4_K, DUET_Q5_K, DUET_Q6_K};
enum { N_GLU_TYPES = sizeof glu_types / sizeof glu_types[0] };

static void put_half(uint8_t *p, float v)
{
    uint16_t h = duet_f32_to_f16(v);
    memcpy(p, &h, 2);
}

/* n rows of k weights of type t: random quant bytes with block scales that
 * keep |w| around 0.1-1 (caller frees). */
static uint8_t *glu_weights(duet_dtype t, int n, int k, size_t *bytes)
{
    *bytes = duet_dtype_row_bytes(t, k) * (size_t)n;
    uint8_t *w = malloc(*bytes);
    assert_non_null(w);
    const duet_dtype_info *info = duet_dtype_get(t);
    size_t n_elem = (size_t)n * k;
    if (info->block_elems == 1) {
        for (size_t i = 0; i < n_elem; i++) {
            float v = frand();
            uint16_t h = t == DUET_F16 ? duet_f32_to_f16(v) : duet_f32_to_bf16(v);
            if (t == DUET_F32)
                memcpy(w + 4 * i, &v, 4);
            else
                memcpy(w + 2 * i, &h, 2);
        }
        return w;
    }
    for (size_t i = 0; i < *bytes; i++)
        w[i] = (uint8_t)(frand() * 128.0f + 128.0f);
    for (size_t b = 0; b < n_elem / info->block_elems; b++) {
        uint8_t *blk = w + b * info->block_bytes;
        float r = 0.75f + 0.25f * frand();
        switch (t) {
        case DUET_Q4_0: put_half(blk, 0.12f * r); break;
        case DUET_Q8_0: put_half(blk, 0.008f * r); break;
        case DUET_Q4_1: put_half(blk, 0.1f * r); put_half(blk + 2, -0.8f * r); break;
        case DUET_Q4_K:
        case DUET_Q5_K: put_half(blk, 0.002f * r); put_half(blk + 2, 0.001f * r); break;
        case DUET_Q6_K: put_half(blk + 208, 0.0004f * r); break;
        default: break;
        }
    }
    return w;
}

typedef struct glu_case {
    duet_dtype t;
    int m, k, n;
    const float *x;
    const uint8_t *w, *w_up;
    size_t w_bytes;
} glu_case;

/* The three ops (gated = 0) or the gated matmul (gated = 1) on f, all in
 * one recording; out gets [m][n]. */
static void run_glu(fx *f, const glu_case *c, int gated, float *out)
{
    size_t plane = 4ull * c->m * c->n;
    duet_buffer *bx = fx_buf(f, c->x, 4ull * c->m * c->k);
    duet_buffer *bw = fx_buf(f, c->w, c->w_bytes), *bu = fx_buf(f, c->w_up, c->w_bytes);
    duet_buffer *bg = fx_buf(f, NULL, plane), *bup = fx_buf(f, NULL, plane);
    fx_begin(f);
    duet_matmul_args a = {.x = at(bx), .w = at(bw), .out = at(bg), .w_type = c->t,
                          .n_rows = c->m, .k = c->k, .n = c->n};
    if (gated) {
        a.w_up = at(bu);
        assert_int_equal(duet_dev_matmul(f->d, f->s, &a), DUET_OK);
    } else {
        assert_int_equal(duet_dev_matmul(f->d, f->s, &a), DUET_OK);
        a.w = at(bu);
        a.out = at(bup);
        assert_int_equal(duet_dev_matmul(f->d, f->s, &a), DUET_OK);
        duet_swiglu_args sw = {at(bg), at(bup), at(bg), c->m, c->n};
        assert_int_equal(duet_dev_swiglu(f->d, f->s, &sw), DUET_OK);
    }
    fx_finish(f, bg, out, plane);
    duet_buffer *all[] = {bx, bw, bu, bg, bup};
    for (int i = 0; i < 5; i++)
        duet_dev_buffer_free(f->d, all[i]);
}

/* silu(x.W^T) * (x.W_up^T) in double precision from the dequantized rows. */
static void glu_expected(const glu_case *c, float *want)
{
    size_t row = duet_dtype_row_bytes(c->t, c->k);
    float *wg = malloc(4ull * c->k), *wu = malloc(4ull * c->k);
    for (int j = 0; j < c->n; j++) {
        duet_dequant_row(c->t, c->w + row * j, wg, c->k);
        duet_dequant_row(c->t, c->w_up + row * j, wu, c->k);
        for (int i = 0; i < c->m; i++) {
            double g = 0.0, u = 0.0;
            for (int e = 0; e < c->k; e++) {
                g += (double)c->x[(size_t)i * c->k + e] * wg[e];
                u += (double)c->x[(size_t)i * c->k + e] * wu[e];
            }
            want[(size_t)i * c->n + j] = (float)(g / (1.0 + exp(-g)) * u);
        }
    }
    free(wg), free(wu);
}

/* Every type and m in {1, 7, 33} on one device: gated == the three ops,
 * bit for bit, and both near the double-precision value. */
static void glu_cases(int reference)
{
    static const int ms[] = {1, 7, 33};
    fx f = fx_open(2, reference);
    for (int ti = 0; ti < N_GLU_TYPES; ti++) {
        duet_dtype t = glu_types[ti];
        int k = duet_dtype_get(t)->block_elems > 32 ? 512 : 256, n = 40;
        size_t wb;
        uint8_t *w = glu_weights(t, n, k, &wb), *wu = glu_weights(t, n, k, &wb);
        for (int mi = 0; mi < 3; mi++) {
            int m = ms[mi];
            float *x = frand_array((size_t)m * k);
            glu_case c = {t, m, k, n, x, w, wu, wb};
            float *three = malloc(4ull * m * n), *one = malloc(4ull * m * n);
            float *want = malloc(4ull * m * n);
            run_glu(&f, &c, 0, three);
            run_glu(&f, &c, 1, one);
            assert_all_finite(one, (size_t)m * n);
            if (memcmp(one, three, 4ull * m * n) != 0) {
                size_t i = 0;
                while (memcmp(&one[i], &three[i], 4) == 0)
                    i++;
                fail_msg("%s %s m=%d: gated [%zu] = %.9g, matmul+matmul+swiglu %.9g",
                         reference ? "reference" : "fast", duet_dtype_get(t)->name, m, i,
                         one[i], three[i]);
            }
            glu_expected(&c, want);
            assert_nmse(one, want, (size_t)m * n, 5e-4);
            free(x), free(three), free(one), free(want);
        }
        free(w), free(wu);
    }
    fx_close(&f);
}

static void test_glu_reference(void **state)
{
    (void)state;
    glu_cases(1);
}

static void test_glu_fast(void **state)
{
    (void)state;
    glu_cases(0);
}

/* Two gated matmuls of different sizes in one recording (the up scratch
 * grows between them, before either runs), and the model's layout: W and
 * W_up in one buffer, out in another. */
static void test_glu_two_in_one_recording(void **state)
{
    (void)state;
    enum { K = 64, N = 24, M1 = 2, M2 = 9 };
    for (int reference = 0; reference < 2; reference++) {
        fx f = fx_open(2, reference);
        size_t wb;
        uint8_t *w = glu_weights(DUET_Q8_0, N, K, &wb), *wu = glu_weights(DUET_Q8_0, N, K, &wb);
        float *x = frand_array(M2 * K);
        float want1[M1 * N], want2[M2 * N], got1[M1 * N], got2[M2 * N];
        glu_case c1 = {DUET_Q8_0, M1, K, N, x, w, wu, wb}, c2 = {DUET_Q8_0, M2, K, N, x, w, wu, wb};
        run_glu(&f, &c1, 0, want1);
        run_glu(&f, &c2, 0, want2);

        uint8_t *both = malloc(2 * wb);
        memcpy(both, w, wb);
        memcpy(both + wb, wu, wb);
        duet_buffer *bw = fx_buf(&f, both, 2 * wb), *bx = fx_buf(&f, x, 4ull * M2 * K);
        duet_buffer *bo1 = fx_buf(&f, NULL, sizeof got1), *bo2 = fx_buf(&f, NULL, sizeof got2);
        fx_begin(&f);
        duet_matmul_args a = {.x = at(bx), .w = at(bw), .w_up = {bw, wb}, .out = at(bo1),
                              .w_type = DUET_Q8_0, .n_rows = M1, .k = K, .n = N};
        assert_int_equal(duet_dev_matmul(f.d, f.s, &a), DUET_OK);
        a.out = at(bo2);
        a.n_rows = M2;
        assert_int_equal(duet_dev_matmul(f.d, f.s, &a), DUET_OK);
        assert_int_equal(duet_dev_download(f.d, f.s, at(bo1), got1, sizeof got1), DUET_OK);
        fx_finish(&f, bo2, got2, sizeof got2);
        assert_memory_equal(got1, want1, sizeof got1);
        assert_memory_equal(got2, want2, sizeof got2);
        duet_buffer *all[] = {bw, bx, bo1, bo2};
        for (int i = 0; i < 4; i++)
            duet_dev_buffer_free(f.d, all[i]);
        free(both), free(w), free(wu), free(x);
        fx_close(&f);
    }
}

/* The wrapper refuses a bias with w_up, a w_up past its buffer and an out
 * overlapping w_up, each with a message naming the field. */
static void test_glu_errors(void **state)
{
    (void)state;
    enum { M = 2, K = 32, N = 8 };
    fx f = fx_open(1, 1);
    size_t row = duet_dtype_row_bytes(DUET_F32, K);
    duet_buffer *bx = fx_buf(&f, NULL, 4 * M * K), *bw = fx_buf(&f, NULL, row * N);
    duet_buffer *bu = fx_buf(&f, NULL, row * N), *bb = fx_buf(&f, NULL, 4 * N);
    duet_buffer *bo = fx_buf(&f, NULL, row * N + 4 * M * N);
    fx_begin(&f);
    duet_matmul_args ok = {.x = at(bx), .w = at(bw), .w_up = at(bu), .out = at(bo),
                           .w_type = DUET_F32, .n_rows = M, .k = K, .n = N};
    assert_int_equal(duet_dev_matmul(f.d, f.s, &ok), DUET_OK);

    duet_matmul_args bad = ok;
    bad.bias = at(bb);
    assert_int_equal(duet_dev_matmul(f.d, f.s, &bad), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "bias"));
    assert_non_null(strstr(duet_last_error(), "w_up"));

    bad = ok;
    bad.w_up.offset = 4; /* one float past the end */
    assert_int_equal(duet_dev_matmul(f.d, f.s, &bad), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "'w_up'"));

    bad = ok;
    bad.w_up = (duet_addr){bo, 4 * M * N - 4}; /* its first float is out's last */
    assert_int_equal(duet_dev_matmul(f.d, f.s, &bad), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "out overlaps w_up"));
    bad.w_up.offset = 4 * M * N; /* right after out: fine */
    assert_int_equal(duet_dev_matmul(f.d, f.s, &bad), DUET_OK);

    assert_int_equal(duet_dev_stream_submit(f.d, f.s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(f.d, f.s), DUET_OK);
    duet_buffer *all[] = {bx, bw, bu, bb, bo};
    for (int i = 0; i < 5; i++)
        duet_dev_buffer_free(f.d, all[i]);
    fx_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_glu_errors),
        cmocka_unit_test(test_glu_two_in_one_recording),
        cmocka_unit_test(test_glu_reference),
        cmocka_unit_test(test_glu_fast),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
