/*
 * test_cpu_ops.c — the CPU backend through the device wrappers: every op's
 * fast path against the reference, hand-computed cases, batch invariance
 * (mixed batches, thread counts), stream semantics and cleanup. Paged
 * attention has its own file, test_cpu_attention.c.
 *
 * Expected values come from the test itself (hand arithmetic, or naive
 * double-precision code written here), never from the code under test;
 * device outputs are poisoned with NaN before every run.
 */
#include "cpu_fixture.h"
#include "duet.h" /* duet_last_error */

/* ---- op runners: one op on one device, host in, host out ---------------------- */

static void run_embed(fx *f, const int32_t *ids, const void *table, size_t table_bytes,
                      duet_dtype type, int n_tokens, int vocab, int dim, float *out)
{
    duet_buffer *bi = fx_buf(f, ids, 4 * n_tokens), *bt = fx_buf(f, table, table_bytes);
    duet_buffer *bo = fx_buf(f, NULL, 4ull * n_tokens * dim);
    fx_begin(f);
    duet_embed_args a = {.ids = at(bi), .table = at(bt), .out = at(bo), .table_type = type,
                         .n_tokens = n_tokens, .vocab = vocab, .dim = dim};
    assert_int_equal(duet_dev_embed(f->d, f->s, &a), DUET_OK);
    fx_finish(f, bo, out, 4ull * n_tokens * dim);
    duet_dev_buffer_free(f->d, bi);
    duet_dev_buffer_free(f->d, bt);
    duet_dev_buffer_free(f->d, bo);
}

static void run_rms_norm(fx *f, const float *x, const float *w, int rows, int dim, float eps,
                         float *out)
{
    duet_buffer *bx = fx_buf(f, x, 4ull * rows * dim), *bw = fx_buf(f, w, 4ull * dim);
    duet_buffer *bo = fx_buf(f, NULL, 4ull * rows * dim);
    fx_begin(f);
    duet_rms_norm_args a = {at(bx), at(bw), at(bo), rows, dim, eps, {NULL, 0}};
    assert_int_equal(duet_dev_rms_norm(f->d, f->s, &a), DUET_OK);
    fx_finish(f, bo, out, 4ull * rows * dim);
    duet_dev_buffer_free(f->d, bx);
    duet_dev_buffer_free(f->d, bw);
    duet_dev_buffer_free(f->d, bo);
}

/* Where rms_norm's out goes in the residual tests. */
typedef enum { OUT_OWN, OUT_IS_RESIDUAL, OUT_IS_X } out_alias;

/* x += res then out = rms_norm(x), fused (one op) or as add + rms_norm in
 * one recording. Reads back x, res and out (res and out are the same
 * buffer for OUT_IS_RESIDUAL, x and out for OUT_IS_X). */
static void run_rms_norm_res(fx *f, const float *x, const float *res, const float *w, int rows,
                             int dim, out_alias alias, int fused, float *x_out, float *res_out,
                             float *out)
{
    size_t n = 4ull * rows * dim;
    duet_buffer *bx = fx_buf(f, x, n), *br = fx_buf(f, res, n), *bw = fx_buf(f, w, 4ull * dim);
    duet_buffer *bo = alias == OUT_OWN ? fx_buf(f, NULL, n) : NULL;
    duet_buffer *out_buf = alias == OUT_IS_RESIDUAL ? br : alias == OUT_IS_X ? bx : bo;
    fx_begin(f);
    duet_rms_norm_args a = {.x = at(bx), .weight = at(bw), .out = at(out_buf), .n_rows = rows,
                            .dim = dim, .eps = 1e-6f};
    if (fused) {
        a.residual = at(br);
    } else {
        duet_add_args add = {at(bx), at(br), (int64_t)rows * dim};
        assert_int_equal(duet_dev_add(f->d, f->s, &add), DUET_OK);
    }
    assert_int_equal(duet_dev_rms_norm(f->d, f->s, &a), DUET_OK);
    memset(x_out, 0xff, n);
    memset(res_out, 0xff, n);
    assert_int_equal(duet_dev_download(f->d, f->s, at(bx), x_out, n), DUET_OK);
    assert_int_equal(duet_dev_download(f->d, f->s, at(br), res_out, n), DUET_OK);
    fx_finish(f, out_buf, out, n);
    duet_dev_buffer_free(f->d, bx);
    duet_dev_buffer_free(f->d, br);
    duet_dev_buffer_free(f->d, bw);
    duet_dev_buffer_free(f->d, bo);
}

typedef struct rope_case {
    int n_tokens, n_heads, n_kv_heads, head_dim, rot_dim;
    duet_rope_mode mode;
    float theta_base;
    const int32_t *pos;
    const float *freq_factors; /* NULL = none */
} rope_case;

/* The rope spec of c with its operands on f (freed by the caller). */
static duet_rope_spec rope_spec(fx *f, const rope_case *c, duet_buffer **bp, duet_buffer **bf)
{
    *bp = fx_buf(f, c->pos, 4ull * c->n_tokens);
    *bf = c->freq_factors ? fx_buf(f, c->freq_factors, 2ull * c->rot_dim) : NULL;
    return (duet_rope_spec){at(*bp), at(*bf), c->rot_dim, c->mode, c->theta_base};
}

/* q and k are rotated in place (host copies); k NULL = rotate q only. */
static void run_rope(fx *f, const rope_case *c, float *q, float *k)
{
    size_t qn = 4ull * c->n_tokens * c->n_heads * c->head_dim;
    size_t kn = 4ull * c->n_tokens * c->n_kv_heads * c->head_dim;
    duet_buffer *bq = fx_buf(f, q, qn), *bk = k ? fx_buf(f, k, kn) : NULL, *bp, *bf;
    duet_rope_spec spec = rope_spec(f, c, &bp, &bf);
    fx_begin(f);
    duet_rope_args a = {at(bq), at(bk), spec, c->n_tokens, c->n_heads, c->n_kv_heads,
                        c->head_dim};
    assert_int_equal(duet_dev_rope(f->d, f->s, &a), DUET_OK);
    if (k)
        assert_int_equal(duet_dev_download(f->d, f->s, at(bk), k, kn), DUET_OK);
    fx_finish(f, bq, q, qn);
    duet_dev_buffer_free(f->d, bq);
    duet_dev_buffer_free(f->d, bk);
    duet_dev_buffer_free(f->d, bp);
    duet_dev_buffer_free(f->d, bf);
}

static void run_swiglu(fx *f, const float *g, const float *u, int rows, int dim, float *out)
{
    size_t n = 4ull * rows * dim;
    duet_buffer *bg = fx_buf(f, g, n), *bu = fx_buf(f, u, n), *bo = fx_buf(f, NULL, n);
    fx_begin(f);
    duet_swiglu_args a = {at(bg), at(bu), at(bo), rows, dim};
    assert_int_equal(duet_dev_swiglu(f->d, f->s, &a), DUET_OK);
    fx_finish(f, bo, out, n);
    duet_dev_buffer_free(f->d, bg);
    duet_dev_buffer_free(f->d, bu);
    duet_dev_buffer_free(f->d, bo);
}

/* a += b; a is updated in place. */
static void run_add(fx *f, float *a, const float *b, int64_t n)
{
    duet_buffer *ba = fx_buf(f, a, 4 * n), *bb = fx_buf(f, b, 4 * n);
    fx_begin(f);
    duet_add_args args = {at(ba), at(bb), n};
    assert_int_equal(duet_dev_add(f->d, f->s, &args), DUET_OK);
    fx_finish(f, ba, a, 4 * n);
    duet_dev_buffer_free(f->d, ba);
    duet_dev_buffer_free(f->d, bb);
}

static void run_gather(fx *f, const float *x, const int32_t *rows, int n_in, int n_out, int dim,
                       float *out)
{
    duet_buffer *bx = fx_buf(f, x, 4ull * n_in * dim), *br = fx_buf(f, rows, 4ull * n_out);
    duet_buffer *bo = fx_buf(f, NULL, 4ull * n_out * dim);
    fx_begin(f);
    duet_gather_rows_args a = {at(bx), at(br), at(bo), n_in, n_out, dim};
    assert_int_equal(duet_dev_gather_rows(f->d, f->s, &a), DUET_OK);
    fx_finish(f, bo, out, 4ull * n_out * dim);
    duet_dev_buffer_free(f->d, bx);
    duet_dev_buffer_free(f->d, br);
    duet_dev_buffer_free(f->d, bo);
}

typedef struct kvw_case {
    int n_tokens, n_kv_heads, head_dim, num_blocks, block_size;
    duet_dtype cache_type;
    const float *k, *v;
    const int32_t *slots;
    const rope_case *rope; /* NULL = no rotation; else its rot_dim, mode,
                              theta_base, pos, freq_factors */
} kvw_case;

/* k_cache / v_cache: host images updated in place (pre-filled by caller).
 * Fails if the op modified its k operand. */
static void run_kv_write(fx *f, const kvw_case *c, void *k_cache, void *v_cache)
{
    size_t row = 4ull * c->n_kv_heads * c->head_dim;
    size_t cb = (size_t)c->num_blocks * c->block_size * c->n_kv_heads * c->head_dim *
                (c->cache_type == DUET_F16 ? 2 : 4);
    duet_buffer *bk = fx_buf(f, c->k, row * c->n_tokens), *bv = fx_buf(f, c->v, row * c->n_tokens);
    duet_buffer *bs = fx_buf(f, c->slots, 4ull * c->n_tokens);
    duet_buffer *bkc = fx_buf(f, k_cache, cb), *bvc = fx_buf(f, v_cache, cb);
    duet_buffer *bp = NULL, *bf = NULL;
    duet_rope_spec spec = {0};
    if (c->rope)
        spec = rope_spec(f, c->rope, &bp, &bf);
    float *k_after = malloc(row * c->n_tokens);
    fx_begin(f);
    duet_kv_write_args a = {at(bk), at(bv), at(bs), at(bkc), at(bvc), spec, c->cache_type,
                            c->n_tokens, c->n_kv_heads, c->head_dim, c->num_blocks,
                            c->block_size};
    assert_int_equal(duet_dev_kv_write(f->d, f->s, &a), DUET_OK);
    assert_int_equal(duet_dev_download(f->d, f->s, at(bvc), v_cache, cb), DUET_OK);
    assert_int_equal(duet_dev_download(f->d, f->s, at(bk), k_after, row * c->n_tokens), DUET_OK);
    fx_finish(f, bkc, k_cache, cb);
    assert_memory_equal(k_after, c->k, row * c->n_tokens);
    free(k_after);
    duet_buffer *all[] = {bk, bv, bs, bkc, bvc, bp, bf};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        duet_dev_buffer_free(f->d, all[i]);
}

/* ---- thread pool --------------------------------------------------------------- */

static void test_split_rows(void **state)
{
    (void)state;
    int64_t ns[] = {0, 1, 7, 100, 1001};
    int nths[] = {1, 2, 3, 7};
    int64_t aligns[] = {1, 8, 64};
    for (size_t a = 0; a < 5; a++)
        for (size_t b = 0; b < 4; b++)
            for (size_t c = 0; c < 3; c++) {
                int64_t n = ns[a], al = aligns[c], next = 0;
                for (int ith = 0; ith < nths[b]; ith++) {
                    int64_t lo, hi;
                    duet_split_rows(n, ith, nths[b], al, &lo, &hi);
                    assert_int_equal(lo, next); /* contiguous, in order */
                    assert_true(hi >= lo);
                    assert_true(lo == n || lo % al == 0);
                    /* balanced: no part more than one unit above the mean */
                    assert_true(hi - lo <= ((n + al - 1) / al / nths[b] + 1) * al);
                    next = hi;
                }
                assert_int_equal(next, n);
            }
}

typedef struct pool_probe {
    int calls[8];
    int nth_seen[8];
} pool_probe;

static void probe_fn(void *arg, int ith, int nth)
{
    pool_probe *p = arg;
    p->calls[ith]++; /* each ith is written by exactly one thread */
    p->nth_seen[ith] = nth;
}

static void test_threadpool_run(void **state)
{
    (void)state;
    for (int n = 1; n <= 4; n++) {
        duet_threadpool *pool = NULL;
        assert_int_equal(duet_threadpool_create(n, &pool), DUET_OK);
        assert_int_equal(duet_threadpool_size(pool), n);
        for (int rep = 0; rep < 200; rep++) {
            pool_probe p = {0};
            duet_threadpool_run(pool, probe_fn, &p);
            for (int i = 0; i < 8; i++) {
                assert_int_equal(p.calls[i], i < n ? 1 : 0);
                if (i < n)
                    assert_int_equal(p.nth_seen[i], n);
            }
        }
        duet_threadpool_free(pool);
    }
    duet_threadpool *bad = (duet_threadpool *)1;
    assert_int_equal(duet_threadpool_create(0, &bad), DUET_ERR_INVALID_ARG);
    assert_null(bad);
    duet_threadpool_free(NULL);
}

/* ---- embed --------------------------------------------------------------------- */

static void test_embed(void **state)
{
    (void)state;
    fx ref = fx_open(1, 1), fast = fx_open(2, 0);
    fx *devs[] = {&ref, &fast};

    /* F32 table: rows come back unchanged. */
    enum { V = 10, E = 8 };
    float *table = frand_array(V * E);
    int32_t ids[] = {3, 0, 9, 3};
    float out[4 * E];
    for (int d = 0; d < 2; d++) {
        run_embed(devs[d], ids, table, sizeof(float) * V * E, DUET_F32, 4, V, E, out);
        for (int t = 0; t < 4; t++)
            assert_memory_equal(out + t * E, table + ids[t] * E, sizeof(float) * E);
    }

    /* Placeholders: id -1-i reads prev_tokens[i]; beyond n_prev (or
     * without prev_tokens) a negative id is a row of NaN. */
    int32_t prev[] = {7, 2};
    int32_t pids[] = {-2, 5, -1, -3};
    for (int d = 0; d < 2; d++) {
        fx *f = devs[d];
        duet_buffer *bi = fx_buf(f, pids, sizeof pids), *bt = fx_buf(f, table, sizeof(float) * V * E);
        duet_buffer *bp = fx_buf(f, prev, sizeof prev), *bo = fx_buf(f, NULL, 4ull * 4 * E);
        fx_begin(f);
        duet_embed_args a = {.ids = at(bi), .table = at(bt), .out = at(bo), .prev_tokens = at(bp),
                             .table_type = DUET_F32, .n_tokens = 4, .vocab = V, .dim = E,
                             .n_prev = 2};
        assert_int_equal(duet_dev_embed(f->d, f->s, &a), DUET_OK);
        fx_finish(f, bo, out, 4ull * 4 * E);
        assert_memory_equal(out + 0 * E, table + 2 * E, sizeof(float) * E);
        assert_memory_equal(out + 1 * E, table + 5 * E, sizeof(float) * E);
        assert_memory_equal(out + 2 * E, table + 7 * E, sizeof(float) * E);
        for (int j = 0; j < E; j++)
            assert_true(isnan(out[3 * E + j]));
        duet_dev_buffer_free(f->d, bi);
        duet_dev_buffer_free(f->d, bt);
        duet_dev_buffer_free(f->d, bp);
        duet_dev_buffer_free(f->d, bo);
    }

    /* Q8_0 table, 2 blocks per row: x = d * q with d = 0.5 (exact in half). */
    enum { QV = 4, QE = 64, BLK = 34 };
    unsigned char q8[QV * 2 * BLK];
    for (int r = 0; r < QV; r++)
        for (int b = 0; b < 2; b++) {
            unsigned char *blk = q8 + (r * 2 + b) * BLK;
            uint16_t h = duet_f32_to_f16(0.5f);
            memcpy(blk, &h, 2);
            for (int i = 0; i < 32; i++)
                blk[2 + i] = (unsigned char)(int8_t)(i - 16 + r * 3 + b);
        }
    int32_t qids[] = {2, 1, 2, 3, 0};
    float qout[5 * QE], qref[5 * QE];
    for (int d = 0; d < 2; d++) {
        run_embed(devs[d], qids, q8, sizeof q8, DUET_Q8_0, 5, QV, QE, qout);
        for (int t = 0; t < 5; t++)
            for (int i = 0; i < QE; i++) {
                int r = qids[t], b = i / 32;
                assert_true(qout[t * QE + i] == 0.5f * (float)(i % 32 - 16 + r * 3 + b));
            }
        if (d == 0)
            memcpy(qref, qout, sizeof qout);
    }
    assert_memory_equal(qout, qref, sizeof qout); /* fast == reference, bitwise */

    /* A batch large enough to be split across threads. */
    enum { BIG = 300 };
    int32_t big_ids[BIG];
    for (int t = 0; t < BIG; t++)
        big_ids[t] = (t * 7) % QV;
    float *big[2];
    for (int d = 0; d < 2; d++) {
        big[d] = malloc(sizeof(float) * BIG * QE);
        run_embed(devs[d], big_ids, q8, sizeof q8, DUET_Q8_0, BIG, QV, QE, big[d]);
    }
    assert_all_finite(big[1], (size_t)BIG * QE);
    assert_memory_equal(big[0], big[1], sizeof(float) * BIG * QE);
    free(big[0]), free(big[1]);

    /* An id outside [0, vocab) gives a visible NaN row, not a wild read. */
    int32_t bad[] = {1, -1, QV, 0};
    float bout[4 * QE];
    for (int d = 0; d < 2; d++) {
        run_embed(devs[d], bad, q8, sizeof q8, DUET_Q8_0, 4, QV, QE, bout);
        assert_all_finite(bout, QE);
        assert_all_finite(bout + 3 * QE, QE);
        for (int i = QE; i < 3 * QE; i++)
            assert_true(isnan(bout[i]));
    }
    free(table);
    fx_close(&ref);
    fx_close(&fast);
}

/* ---- rms_norm ------------------------------------------------------------------ */

static void test_rms_norm_known(void **state)
{
    (void)state;
    float x[] = {1, 2, 3, 4}, w[] = {1, 1, 2, 0.5f}, out[4];
    double r = 1.0 / sqrt(30.0 / 4 + 1e-5);
    for (int reference = 0; reference < 2; reference++) {
        fx f = fx_open(2, reference);
        run_rms_norm(&f, x, w, 1, 4, 1e-5f, out);
        for (int i = 0; i < 4; i++)
            assert_close(out[i], x[i] * r * w[i], 1e-6);
        fx_close(&f);
    }
}

static void test_rms_norm_fast_vs_ref(void **state)
{
    (void)state;
    fx ref = fx_open(1, 1), fast1 = fx_open(1, 0), fast2 = fx_open(2, 0);
    int shapes[][2] = {{1, 576}, {7, 13}, {33, 1536}, {3, 8}, {2, 1}};
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
        int rows = shapes[c][0], dim = shapes[c][1];
        float *x = frand_array((size_t)rows * dim), *w = frand_array(dim);
        float *a = malloc(4ull * rows * dim), *b = malloc(4ull * rows * dim);
        float *c2 = malloc(4ull * rows * dim);
        run_rms_norm(&ref, x, w, rows, dim, 1e-6f, a);
        run_rms_norm(&fast1, x, w, rows, dim, 1e-6f, b);
        run_rms_norm(&fast2, x, w, rows, dim, 1e-6f, c2);
        assert_nmse(b, a, (size_t)rows * dim, 1e-7);
        assert_memory_equal(b, c2, 4ull * rows * dim);
        /* Row 0 alone gives the same bits as row 0 in the batch. */
        run_rms_norm(&fast2, x, w, 1, dim, 1e-6f, c2);
        assert_memory_equal(b, c2, 4ull * dim);
        free(x), free(w), free(a), free(b), free(c2);
    }
    fx_close(&ref);
    fx_close(&fast1);
    fx_close(&fast2);
}

/* The fused residual add gives the bits of add + rms_norm on every path
 * (reference, fast on one and two threads), for each placement of out. */
static void test_rms_norm_residual(void **state)
{
    (void)state;
    fx devs[] = {fx_open(1, 1), fx_open(1, 0), fx_open(2, 0)};
    /* Dims below, at and off multiples of 8; 40 x 613 is split over threads. */
    int shapes[][2] = {{1, 576}, {7, 13}, {33, 1536}, {3, 8}, {2, 1}, {5, 100}, {40, 613}};
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
        int rows = shapes[c][0], dim = shapes[c][1];
        size_t n = (size_t)rows * dim;
        float *x = frand_array(n), *res = frand_array(n), *w = frand_array(dim);
        float *want_x = malloc(4 * n), *ref_out = malloc(4 * n);
        float *bufs[6];
        for (int i = 0; i < 6; i++)
            bufs[i] = malloc(4 * n);
        float *ux = bufs[0], *ur = bufs[1], *uo = bufs[2], *fx_ = bufs[3], *fr = bufs[4],
              *fo = bufs[5];
        for (size_t i = 0; i < n; i++)
            want_x[i] = x[i] + res[i];
        for (size_t dv = 0; dv < sizeof devs / sizeof *devs; dv++)
            for (int alias = OUT_OWN; alias <= OUT_IS_X; alias++) {
                run_rms_norm_res(&devs[dv], x, res, w, rows, dim, alias, 0, ux, ur, uo);
                run_rms_norm_res(&devs[dv], x, res, w, rows, dim, alias, 1, fx_, fr, fo);
                if (alias != OUT_IS_X) { /* x is the residual stream: x + res */
                    assert_memory_equal(ux, want_x, 4 * n);
                    assert_memory_equal(fx_, want_x, 4 * n);
                }
                assert_memory_equal(fo, uo, 4 * n); /* fused == unfused, bitwise */
                assert_memory_equal(fx_, ux, 4 * n);
                assert_memory_equal(fr, ur, 4 * n);
                if (alias != OUT_IS_RESIDUAL) /* the residual is only read */
                    assert_memory_equal(fr, res, 4 * n);
                if (dv == 0 && alias == OUT_OWN)
                    memcpy(ref_out, fo, 4 * n);
                else
                    assert_nmse(fo, ref_out, n, 1e-7); /* fast vs reference */
            }
        free(x), free(res), free(w), free(want_x), free(ref_out);
        for (int i = 0; i < 6; i++)
            free(bufs[i]);
    }
    for (size_t dv = 0; dv < sizeof devs / sizeof *devs; dv++)
        fx_close(&devs[dv]);
}

/* The wrapper's checks of the residual: range, and no overlap with x or
 * with out other than out == residual. */
static void test_rms_norm_residual_errors(void **state)
{
    (void)state;
    fx f = fx_open(1, 0);
    /* Four regions of ROWS x DIM floats (128 bytes each) in one buffer. */
    enum { ROWS = 2, DIM = 16, B = 4 * ROWS * DIM };
    duet_buffer *big = fx_buf(&f, NULL, 4 * B), *bw = fx_buf(&f, NULL, 4 * DIM);
    static const struct {
        size_t x, out, res;
        const char *msg;
    } bad[] = {
        {0, 2 * B, 12, "residual (offset 12) overlaps x (offset 0"},
        {0, 2 * B, 0, "residual (offset 0) overlaps x (offset 0"},
        {B, B, 12, "residual (offset 12) overlaps x (offset 128"},
        {0, 2 * B + 4, 2 * B, "out (offset 260) overlaps residual (offset 256)"},
        {0, 2 * B - 4, 2 * B, "out (offset 252) overlaps residual (offset 256)"},
        {0, 32, 2 * B, "out (offset 32) overlaps x (offset 0)"},
        {0, B, 3 * B + 4, "operand 'residual' needs 128 bytes at offset 388"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        duet_rms_norm_args a = {.x = {big, bad[i].x}, .weight = at(bw), .out = {big, bad[i].out},
                                .residual = {big, bad[i].res}, .n_rows = ROWS, .dim = DIM,
                                .eps = 1e-6f};
        fx_begin(&f);
        assert_int_equal(duet_dev_rms_norm(f.d, f.s, &a), DUET_ERR_INVALID_ARG);
        if (!strstr(duet_last_error(), bad[i].msg))
            fail_msg("case %zu: message '%s' lacks '%s'", i, duet_last_error(), bad[i].msg);
        assert_int_equal(duet_dev_stream_submit(f.d, f.s), DUET_OK);
        assert_int_equal(duet_dev_stream_wait(f.d, f.s), DUET_OK);
    }
    /* Accepted: out == residual, out == x, no residual with out == x. */
    static const size_t ok[][3] = {{0, 2 * B, 2 * B}, {0, 0, 2 * B}, {B, B, 0}};
    for (size_t i = 0; i < 3; i++) {
        duet_rms_norm_args a = {.x = {big, ok[i][0]}, .weight = at(bw), .out = {big, ok[i][1]},
                                .residual = {i < 2 ? big : NULL, ok[i][2]}, .n_rows = ROWS,
                                .dim = DIM, .eps = 1e-6f};
        fx_begin(&f);
        assert_int_equal(duet_dev_rms_norm(f.d, f.s, &a), DUET_OK);
        assert_int_equal(duet_dev_stream_submit(f.d, f.s), DUET_OK);
        assert_int_equal(duet_dev_stream_wait(f.d, f.s), DUET_OK);
    }
    duet_dev_buffer_free(f.d, big);
    duet_dev_buffer_free(f.d, bw);
    fx_close(&f);
}

/* ---- rope ---------------------------------------------------------------------- */

static void test_rope_known(void **state)
{
    (void)state;
    int32_t pos[] = {3};
    double a0 = 3.0, a1 = 3.0 * pow(10000.0, -0.5); /* pair angles for rot_dim 4 */
    for (int reference = 0; reference < 2; reference++) {
        fx f = fx_open(2, reference);
        /* normal: pairs (0,1), (2,3) */
        rope_case c = {1, 1, 1, 4, 4, DUET_ROPE_NORMAL, 10000.0f, pos, NULL};
        float q[] = {1, 0, 0, 1}, k[] = {0, 1, 1, 0};
        run_rope(&f, &c, q, k);
        double wq[] = {cos(a0), sin(a0), -sin(a1), cos(a1)};
        double wk[] = {-sin(a0), cos(a0), cos(a1), sin(a1)};
        for (int i = 0; i < 4; i++) {
            assert_close(q[i], wq[i], 1e-6);
            assert_close(k[i], wk[i], 1e-6);
        }
        /* neox: pairs (0,2), (1,3) */
        c.mode = DUET_ROPE_NEOX;
        float q2[] = {1, 0, 0, 1}, k2[] = {0, 1, 1, 0};
        run_rope(&f, &c, q2, k2);
        double wq2[] = {cos(a0), -sin(a1), sin(a0), cos(a1)};
        double wk2[] = {-sin(a0), cos(a1), cos(a0), sin(a1)};
        for (int i = 0; i < 4; i++) {
            assert_close(q2[i], wq2[i], 1e-6);
            assert_close(k2[i], wk2[i], 1e-6);
        }
        /* freq_factors divide the angle; dims past rot_dim are untouched. */
        float ff[] = {2.0f};
        rope_case p = {1, 1, 1, 4, 2, DUET_ROPE_NORMAL, 10000.0f, pos, ff};
        float q3[] = {1, 0, 0.25f, -7}, k3[] = {0, 2, 5, 6};
        run_rope(&f, &p, q3, k3);
        assert_close(q3[0], cos(1.5), 1e-6);
        assert_close(q3[1], sin(1.5), 1e-6);
        assert_close(k3[0], -2 * sin(1.5), 1e-6);
        assert_close(k3[1], 2 * cos(1.5), 1e-6);
        assert_true(q3[2] == 0.25f && q3[3] == -7.0f && k3[2] == 5.0f && k3[3] == 6.0f);
        fx_close(&f);
    }
}

static void test_rope_fast_vs_ref(void **state)
{
    (void)state;
    fx ref = fx_open(1, 1), fast1 = fx_open(1, 0), fast2 = fx_open(2, 0);
    /* tokens, heads, kv heads, head_dim, rot_dim, mode, with freq_factors */
    int cases[][7] = {{1, 9, 3, 64, 64, 0, 0}, {37, 9, 3, 64, 64, 0, 0},
                      {5, 4, 2, 128, 128, 1, 1}, {6, 2, 1, 96, 32, 1, 0},
                      {3, 3, 3, 10, 6, 0, 1}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int *k = cases[c];
        int32_t *pos = malloc(4ull * k[0]);
        for (int t = 0; t < k[0]; t++)
            pos[t] = (int32_t)(fabsf(frand()) * 4000);
        float *ff = NULL;
        if (k[6]) {
            ff = malloc(2ull * k[4]);
            for (int i = 0; i < k[4] / 2; i++)
                ff[i] = 1.0f + 7.0f * fabsf(frand());
        }
        rope_case rc = {k[0], k[1], k[2], k[3], k[4], (duet_rope_mode)k[5], 100000.0f, pos, ff};
        size_t qn = (size_t)k[0] * k[1] * k[3], kn = (size_t)k[0] * k[2] * k[3];
        float *q = frand_array(qn), *kk = frand_array(kn);
        float *q_ref = malloc(4 * qn), *k_ref = malloc(4 * kn);
        float *q_f1 = malloc(4 * qn), *k_f1 = malloc(4 * kn);
        float *q_f2 = malloc(4 * qn), *k_f2 = malloc(4 * kn);
        memcpy(q_ref, q, 4 * qn), memcpy(k_ref, kk, 4 * kn);
        memcpy(q_f1, q, 4 * qn), memcpy(k_f1, kk, 4 * kn);
        memcpy(q_f2, q, 4 * qn), memcpy(k_f2, kk, 4 * kn);
        run_rope(&ref, &rc, q_ref, k_ref);
        run_rope(&fast1, &rc, q_f1, k_f1);
        run_rope(&fast2, &rc, q_f2, k_f2);
        assert_nmse(q_f1, q_ref, qn, 1e-7);
        assert_nmse(k_f1, k_ref, kn, 1e-7);
        assert_memory_equal(q_f1, q_f2, 4 * qn);
        assert_memory_equal(k_f1, k_f2, 4 * kn);
        free(pos), free(ff), free(q), free(kk), free(q_ref), free(k_ref);
        free(q_f1), free(k_f1), free(q_f2), free(k_f2);
    }
    fx_close(&ref);
    fx_close(&fast1);
    fx_close(&fast2);
}

/* rope without k rotates q exactly as rope with k does (and leaves no k). */
static void test_rope_q_only(void **state)
{
    (void)state;
    enum { T = 9, H = 4, KVH = 2, D = 64 };
    int32_t pos[T];
    float ff[D / 2];
    for (int t = 0; t < T; t++)
        pos[t] = (int32_t)(fabsf(frand()) * 60000);
    for (int i = 0; i < D / 2; i++)
        ff[i] = 1.0f + 7.0f * fabsf(frand());
    float *q = frand_array((size_t)T * H * D), *k = frand_array((size_t)T * KVH * D);
    float *q_qk = malloc(4ull * T * H * D), *q_q = malloc(4ull * T * H * D);
    float *k_qk = malloc(4ull * T * KVH * D);
    for (int dev = 0; dev < 3; dev++) { /* reference, fast 1 thread, fast 2 threads */
        fx f = fx_open(dev == 2 ? 2 : 1, dev == 0);
        for (int v = 0; v < 4; v++) {
            rope_case c = {T, H, KVH, D, v & 2 ? 48 : 64, (duet_rope_mode)(v & 1), 500000.0f, pos,
                           v & 2 ? ff : NULL};
            memcpy(q_qk, q, 4ull * T * H * D), memcpy(q_q, q, 4ull * T * H * D);
            memcpy(k_qk, k, 4ull * T * KVH * D);
            run_rope(&f, &c, q_qk, k_qk);
            c.n_kv_heads = 0; /* not used without k */
            run_rope(&f, &c, q_q, NULL);
            assert_memory_equal(q_q, q_qk, 4ull * T * H * D);
            assert_memory_not_equal(q_q, q, 4ull * T * H * D);
        }
        fx_close(&f);
    }
    free(q), free(k), free(q_qk), free(q_q), free(k_qk);
}

/* ---- kv_write ------------------------------------------------------------------ */

static void test_kv_write(void **state)
{
    (void)state;
    enum { T = 6, KVH = 2, D = 8, NB = 4, BS = 4, ROW = KVH * D, SLOTS = NB * BS };
    int32_t slots[T] = {5, -1, 0, 15, 9, SLOTS}; /* -1 and out-of-range: skipped */
    float *k = frand_array(T * ROW), *v = frand_array(T * ROW);
    for (int f16 = 0; f16 < 2; f16++) {
        kvw_case c = {T, KVH, D, NB, BS, f16 ? DUET_F16 : DUET_F32, k, v, slots, NULL};
        size_t esz = f16 ? 2 : 4, cb = (size_t)SLOTS * ROW * esz;
        unsigned char *kc[2], *vc[2];
        for (int dev = 0; dev < 2; dev++) {
            fx f = fx_open(2, dev == 0);
            kc[dev] = malloc(cb), vc[dev] = malloc(cb);
            /* Sentinel 7.0 everywhere: untouched slots must keep it. */
            for (size_t i = 0; i < (size_t)SLOTS * ROW; i++) {
                if (f16) {
                    uint16_t h = duet_f32_to_f16(7.0f);
                    memcpy(kc[dev] + 2 * i, &h, 2), memcpy(vc[dev] + 2 * i, &h, 2);
                } else {
                    float s = 7.0f;
                    memcpy(kc[dev] + 4 * i, &s, 4), memcpy(vc[dev] + 4 * i, &s, 4);
                }
            }
            run_kv_write(&f, &c, kc[dev], vc[dev]);
            fx_close(&f);
            for (int slot = 0; slot < SLOTS; slot++) {
                int src = -1;
                for (int t = 0; t < T; t++)
                    if (slots[t] == slot)
                        src = t;
                for (int i = 0; i < ROW; i++) {
                    float wk = src < 0 ? 7.0f : k[src * ROW + i];
                    float wv = src < 0 ? 7.0f : v[src * ROW + i];
                    size_t e = (size_t)slot * ROW + i;
                    if (f16) {
                        uint16_t hk, hv;
                        memcpy(&hk, kc[dev] + 2 * e, 2), memcpy(&hv, vc[dev] + 2 * e, 2);
                        assert_int_equal(hk, duet_f32_to_f16(wk));
                        assert_int_equal(hv, duet_f32_to_f16(wv));
                    } else {
                        float gk, gv;
                        memcpy(&gk, kc[dev] + 4 * e, 4), memcpy(&gv, vc[dev] + 4 * e, 4);
                        assert_true(gk == wk && gv == wv);
                    }
                }
            }
        }
        assert_memory_equal(kc[0], kc[1], cb);
        assert_memory_equal(vc[0], vc[1], cb);
        for (int dev = 0; dev < 2; dev++)
            free(kc[dev]), free(vc[dev]);
    }
    free(k), free(v);
}

static void test_kv_write_threaded(void **state)
{
    (void)state;
    /* Enough tokens to split across threads; every slot written once. */
    enum { T = 300, KVH = 3, D = 64, NB = 20, BS = 16, ROW = KVH * D };
    int32_t slots[T];
    for (int t = 0; t < T; t++)
        slots[t] = t % 10 == 9 ? -1 : (t * 7) % (NB * BS);
    float *k = frand_array(T * ROW), *v = frand_array(T * ROW);
    for (int f16 = 0; f16 < 2; f16++) {
        kvw_case c = {T, KVH, D, NB, BS, f16 ? DUET_F16 : DUET_F32, k, v, slots, NULL};
        size_t cb = (size_t)NB * BS * ROW * (f16 ? 2 : 4);
        unsigned char *kc[2], *vc[2];
        for (int dev = 0; dev < 2; dev++) {
            fx f = fx_open(2, dev == 0);
            kc[dev] = calloc(1, cb), vc[dev] = calloc(1, cb);
            run_kv_write(&f, &c, kc[dev], vc[dev]);
            fx_close(&f);
        }
        assert_memory_equal(kc[0], kc[1], cb);
        assert_memory_equal(vc[0], vc[1], cb);
        for (int dev = 0; dev < 2; dev++)
            free(kc[dev]), free(vc[dev]);
    }
    free(k), free(v);
}

/* The cache images after kv_write of c onto caches filled with 7.0. */
static void kv_write_images(fx *f, const kvw_case *c, unsigned char *kc, unsigned char *vc)
{
    size_t n = (size_t)c->num_blocks * c->block_size * c->n_kv_heads * c->head_dim;
    for (size_t i = 0; i < n; i++) {
        if (c->cache_type == DUET_F16) {
            uint16_t h = duet_f32_to_f16(7.0f);
            memcpy(kc + 2 * i, &h, 2), memcpy(vc + 2 * i, &h, 2);
        } else {
            float x = 7.0f;
            memcpy(kc + 4 * i, &x, 4), memcpy(vc + 4 * i, &x, 4);
        }
    }
    run_kv_write(f, c, kc, vc);
}

/* kv_write with a rope spec stores exactly the bits of rope(q, k) followed
 * by kv_write(k): on the reference and the fast path (1 and 2 threads), F32
 * and F16 caches, normal and neox, rot_dim < head_dim, freq_factors on and
 * off, skipped (-1) and out-of-range slots; v and the k operand untouched. */
static void test_kv_write_rope_fused(void **state)
{
    (void)state;
    enum { NB = 20, BS = 16, SLOTS = NB * BS, H = 2 };
    /* tokens, kv heads, head_dim, rot_dim, mode, freq_factors */
    int cases[][6] = {{7, 2, 64, 64, 0, 0}, {7, 2, 64, 64, 1, 1}, {40, 3, 96, 32, 1, 0},
                      {300, 3, 64, 48, 0, 1}, {5, 3, 10, 6, 1, 1}, {6, 1, 8, 2, 0, 0}};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        int *p = cases[ci], T = p[0], KVH = p[1], D = p[2];
        size_t row = (size_t)KVH * D;
        int32_t *pos = malloc(4ull * T), *slots = malloc(4ull * T);
        float *ff = malloc(2ull * p[3]);
        for (int t = 0; t < T; t++) {
            pos[t] = (int32_t)(fabsf(frand()) * 131072);
            slots[t] = t % 7 == 3 ? -1 : t % 11 == 5 ? SLOTS : (t * 7) % SLOTS;
        }
        for (int i = 0; i < p[3] / 2; i++)
            ff[i] = 1.0f + 7.0f * fabsf(frand());
        rope_case rc = {T, H, KVH, D, p[3], (duet_rope_mode)p[4], 500000.0f, pos,
                        p[5] ? ff : NULL};
        float *k = frand_array(T * row), *v = frand_array(T * row);
        float *q = frand_array((size_t)T * H * D), *k_rot = malloc(4 * T * row);
        for (int f16 = 0; f16 < 2; f16++) {
            duet_dtype ct = f16 ? DUET_F16 : DUET_F32;
            size_t cb = (size_t)SLOTS * row * (f16 ? 2 : 4);
            unsigned char *kc[3], *vc[3];
            for (int i = 0; i < 3; i++)
                kc[i] = malloc(cb), vc[i] = malloc(cb);
            for (int dev = 0; dev < 3; dev++) { /* reference, fast 1 thread, fast 2 threads */
                fx f = fx_open(dev == 2 ? 2 : 1, dev == 0);
                /* unfused: rope(q, k), then kv_write(rotated k) */
                memcpy(k_rot, k, 4 * T * row);
                run_rope(&f, &rc, q, k_rot); /* q: rotated along, not used */
                kvw_case plain = {T, KVH, D, NB, BS, ct, k_rot, v, slots, NULL};
                kv_write_images(&f, &plain, kc[0], vc[0]);
                /* fused */
                kvw_case fused = {T, KVH, D, NB, BS, ct, k, v, slots, &rc};
                kv_write_images(&f, &fused, kc[1], vc[1]);
                assert_memory_equal(kc[1], kc[0], cb);
                assert_memory_equal(vc[1], vc[0], cb);
                /* and the rotation did happen: unrotated k stores differ */
                kvw_case none = {T, KVH, D, NB, BS, ct, k, v, slots, NULL};
                kv_write_images(&f, &none, kc[2], vc[2]);
                assert_memory_not_equal(kc[1], kc[2], cb);
                assert_memory_equal(vc[1], vc[2], cb);
                fx_close(&f);
            }
            for (int i = 0; i < 3; i++)
                free(kc[i]), free(vc[i]);
        }
        free(pos), free(slots), free(ff), free(k), free(v), free(q), free(k_rot);
    }
}

/* The wrappers' checks of rope without k and of kv_write's rope spec. */
static void test_rope_spec_errors(void **state)
{
    (void)state;
    enum { T = 3, H = 2, KVH = 1, D = 8, NB = 2, BS = 4 };
    fx f = fx_open(1, 0);
    float q[T * H * D] = {0}, k[T * KVH * D] = {0}, ff[D / 2] = {1, 1, 1, 1};
    int32_t pos[T] = {0, 1, 2};
    duet_buffer *bq = fx_buf(&f, q, sizeof q), *bk = fx_buf(&f, k, sizeof k);
    duet_buffer *bp = fx_buf(&f, pos, sizeof pos), *bf = fx_buf(&f, ff, sizeof ff);
    duet_buffer *small = fx_buf(&f, pos, 4);
    duet_buffer *bs = fx_buf(&f, pos, sizeof pos);
    size_t cache = 4ull * NB * BS * KVH * D;
    duet_buffer *bkc = fx_buf(&f, NULL, cache + 64), *bvc = fx_buf(&f, NULL, cache);
    duet_rope_spec spec = {at(bp), at(bf), D, DUET_ROPE_NORMAL, 10000.0f};

    /* rope: q only is fine with n_kv_heads 0; k needs n_kv_heads > 0 and
     * must not overlap q. */
    duet_rope_args r = {at(bq), {NULL, 0}, spec, T, H, 0, D};
    fx_begin(&f);
    assert_int_equal(duet_dev_rope(f.d, f.s, &r), DUET_OK);
    fx_finish(&f, bq, q, sizeof q);
    r.k = at(bk);
    assert_int_equal(duet_dev_rope(f.d, f.s, &r), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "n_kv_heads"));
    r.n_kv_heads = KVH;
    r.k = (duet_addr){bq, 4 * D};
    assert_int_equal(duet_dev_rope(f.d, f.s, &r), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "k (offset 32) overlaps q"));
    r.k = at(bk);
    r.rope.rot_dim = 0;
    assert_int_equal(duet_dev_rope(f.d, f.s, &r), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "rope: rot_dim 0"));

    /* kv_write: each field of the rope spec, named. */
    struct {
        duet_rope_spec spec;
        const char *msg;
    } bad[] = {
        {{at(bp), at(bf), 7, DUET_ROPE_NORMAL, 10000.0f}, "rope.rot_dim 7"},
        {{at(bp), at(bf), D + 2, DUET_ROPE_NORMAL, 10000.0f}, "rope.rot_dim 10"},
        {{at(bp), at(bf), D, (duet_rope_mode)5, 10000.0f}, "rope.mode 5"},
        {{at(bp), at(bf), D, DUET_ROPE_NEOX, 0.0f}, "rope.theta_base 0"},
        {{at(small), at(bf), D, DUET_ROPE_NEOX, 10000.0f}, "'rope.positions' needs 12 bytes"},
        {{at(bp), at(small), D, DUET_ROPE_NEOX, 10000.0f}, "'rope.freq_factors' needs 16"},
        {{(duet_addr){bkc, cache}, at(bf), D, DUET_ROPE_NEOX, 10000.0f}, NULL},
        {{(duet_addr){bkc, cache - 4}, at(bf), D, DUET_ROPE_NEOX, 10000.0f},
         "rope.positions overlaps a KV cache"},
        {{at(bp), at(bvc), D, DUET_ROPE_NEOX, 10000.0f}, "rope.freq_factors overlaps a KV cache"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        duet_kv_write_args a = {at(bk), at(bk), at(bs), at(bkc), at(bvc), bad[i].spec, DUET_F32,
                                T, KVH, D, NB, BS};
        if (!bad[i].msg) { /* positions right after the cache: fine */
            fx_begin(&f);
            assert_int_equal(duet_dev_kv_write(f.d, f.s, &a), DUET_OK);
            fx_finish(&f, bq, q, sizeof q);
            continue;
        }
        assert_int_equal(duet_dev_kv_write(f.d, f.s, &a), DUET_ERR_INVALID_ARG);
        if (!strstr(duet_last_error(), bad[i].msg))
            fail_msg("case %zu: '%s' does not say '%s'", i, duet_last_error(), bad[i].msg);
    }
    duet_buffer *all[] = {bq, bk, bp, bf, small, bs, bkc, bvc};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        duet_dev_buffer_free(f.d, all[i]);
    fx_close(&f);
}

/* ---- elementwise ops, gather, matmul -------------------------------------------- */

static void test_swiglu(void **state)
{
    (void)state;
    fx ref = fx_open(1, 1), fast1 = fx_open(1, 0), fast2 = fx_open(2, 0);
    float g[] = {1, -2, 0}, u[] = {2, 1, 5}, out[3];
    fx *devs[] = {&ref, &fast2};
    for (int d = 0; d < 2; d++) {
        run_swiglu(devs[d], g, u, 1, 3, out);
        assert_close(out[0], 2.0 / (1.0 + exp(-1.0)), 1e-6);
        assert_close(out[1], -2.0 / (1.0 + exp(2.0)), 1e-6);
        assert_close(out[2], 0.0, 0.0);
    }
    int shapes[][2] = {{5, 1536}, {3, 13}, {1, 7}, {64, 100}, {37, 1000}}; /* last: threaded */
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
        size_t n = (size_t)shapes[c][0] * shapes[c][1];
        float *gg = frand_array(n), *uu = frand_array(n);
        for (size_t i = 0; i < n; i++)
            gg[i] *= 12.0f; /* reach both tails of silu */
        float *a = malloc(4 * n), *b = malloc(4 * n), *b2 = malloc(4 * n);
        run_swiglu(&ref, gg, uu, shapes[c][0], shapes[c][1], a);
        run_swiglu(&fast1, gg, uu, shapes[c][0], shapes[c][1], b);
        run_swiglu(&fast2, gg, uu, shapes[c][0], shapes[c][1], b2);
        assert_nmse(b, a, n, 1e-7);
        assert_memory_equal(b, b2, 4 * n);
        free(gg), free(uu), free(a), free(b), free(b2);
    }
    fx_close(&ref);
    fx_close(&fast1);
    fx_close(&fast2);
}

static void test_add(void **state)
{
    (void)state;
    int64_t sizes[] = {13, 576, 100003};
    for (size_t c = 0; c < 3; c++) {
        int64_t n = sizes[c];
        float *a = frand_array(n), *b = frand_array(n), *want = malloc(4 * n);
        for (int64_t i = 0; i < n; i++)
            want[i] = a[i] + b[i];
        for (int dev = 0; dev < 2; dev++) {
            fx f = fx_open(2, dev == 0);
            float *got = malloc(4 * n);
            memcpy(got, a, 4 * n);
            run_add(&f, got, b, n);
            assert_memory_equal(got, want, 4 * n);
            free(got);
            fx_close(&f);
        }
        free(a), free(b), free(want);
    }
}

static void test_gather_rows(void **state)
{
    (void)state;
    enum { NIN = 5, DIM = 11 };
    float *x = frand_array(NIN * DIM);
    int32_t rows[] = {2, 0, 4, 2}, bad[] = {1, 5, -3};
    float out[4 * DIM];
    for (int dev = 0; dev < 2; dev++) {
        fx f = fx_open(2, dev == 0);
        run_gather(&f, x, rows, NIN, 4, DIM, out);
        for (int r = 0; r < 4; r++)
            assert_memory_equal(out + r * DIM, x + rows[r] * DIM, 4 * DIM);
        run_gather(&f, x, bad, NIN, 3, DIM, out);
        assert_memory_equal(out, x + DIM, 4 * DIM);
        for (int i = DIM; i < 3 * DIM; i++)
            assert_true(isnan(out[i]));
        fx_close(&f);
    }
    free(x);
}

static void test_matmul_dispatch(void **state)
{
    (void)state;
    enum { M = 3, K = 64, N = 5 };
    float *x = frand_array(M * K), *w = frand_array(N * K), *bias = frand_array(N);
    float want[M * N], got[M * N];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = bias[j];
            for (int k = 0; k < K; k++)
                acc += (double)x[i * K + k] * w[j * K + k];
            want[i * N + j] = (float)acc;
        }
    for (int dev = 0; dev < 2; dev++) {
        fx f = fx_open(2, dev == 0);
        duet_buffer *bx = fx_buf(&f, x, sizeof(float) * M * K);
        duet_buffer *bw = fx_buf(&f, w, sizeof(float) * N * K);
        duet_buffer *bb = fx_buf(&f, bias, sizeof(float) * N);
        duet_buffer *bo = fx_buf(&f, NULL, sizeof got);
        fx_begin(&f);
        duet_matmul_args a = {at(bx), at(bw), at(bb), at(bo), DUET_F32, M, K, N, {NULL, 0}};
        assert_int_equal(duet_dev_matmul(f.d, f.s, &a), DUET_OK);
        fx_finish(&f, bo, got, sizeof got);
        assert_nmse(got, want, M * N, 1e-10);
        duet_buffer *all[] = {bx, bw, bb, bo};
        for (int i = 0; i < 4; i++)
            duet_dev_buffer_free(f.d, all[i]);
        fx_close(&f);
    }
    free(x), free(w), free(bias);
}

/* ---- streams, buffers, device --------------------------------------------------- */

static void test_stream_semantics(void **state)
{
    (void)state;
    fx f = fx_open(2, 0);
    enum { N = 100 };
    float a[N], b[N], got[N];
    duet_buffer *ba = fx_buf(&f, NULL, sizeof a), *bb = fx_buf(&f, NULL, sizeof b);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++)
            a[i] = (float)(i + round), b[i] = (float)(10 * i);
        /* upload -> add -> download in one recording */
        fx_begin(&f);
        assert_int_equal(duet_dev_upload(f.d, f.s, at(ba), a, sizeof a), DUET_OK);
        assert_int_equal(duet_dev_upload(f.d, f.s, at(bb), b, sizeof b), DUET_OK);
        /* The upload copied at record time: scribbling now changes nothing. */
        memset(a, 0, sizeof a);
        duet_add_args add = {at(ba), at(bb), N};
        assert_int_equal(duet_dev_add(f.d, f.s, &add), DUET_OK);
        assert_int_equal(duet_dev_add(f.d, f.s, &add), DUET_OK);
        fx_finish(&f, ba, got, sizeof got);
        for (int i = 0; i < N; i++)
            assert_true(got[i] == (float)(i + round + 20 * i));
        /* Recording or submitting again needs a begin first. */
        assert_int_equal(duet_dev_add(f.d, f.s, &add), DUET_ERR_INVALID_ARG);
        assert_int_equal(duet_dev_stream_submit(f.d, f.s), DUET_ERR_INVALID_ARG);
    }
    /* Submit without waiting, then begin: begin waits for the work. */
    fx_begin(&f);
    duet_add_args add = {at(ba), at(bb), N};
    assert_int_equal(duet_dev_add(f.d, f.s, &add), DUET_OK);
    assert_int_equal(duet_dev_stream_submit(f.d, f.s), DUET_OK);
    fx_begin(&f);
    fx_finish(&f, ba, got, sizeof got);
    for (int i = 0; i < N; i++)
        assert_true(got[i] == (float)(i + 2 + 30 * i));
    /* Two streams on one device take turns on the pool. */
    duet_stream *s2 = NULL;
    assert_int_equal(duet_dev_stream_create(f.d, &s2), DUET_OK);
    assert_int_equal(duet_dev_stream_begin(f.d, s2), DUET_OK);
    assert_int_equal(duet_dev_add(f.d, s2, &add), DUET_OK);
    fx_begin(&f);
    assert_int_equal(duet_dev_add(f.d, f.s, &(duet_add_args){at(bb), at(bb), N}), DUET_OK);
    assert_int_equal(duet_dev_stream_submit(f.d, s2), DUET_OK);
    assert_int_equal(duet_dev_stream_submit(f.d, f.s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(f.d, s2), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(f.d, f.s), DUET_OK);
    assert_int_equal(duet_dev_buffer_read(f.d, at(bb), got, sizeof got), DUET_OK);
    for (int i = 0; i < N; i++)
        assert_true(got[i] == (float)(20 * i));
    /* Destroying a stream with work in flight waits for it. */
    assert_int_equal(duet_dev_stream_begin(f.d, s2), DUET_OK);
    assert_int_equal(duet_dev_add(f.d, s2, &add), DUET_OK);
    assert_int_equal(duet_dev_stream_submit(f.d, s2), DUET_OK);
    duet_dev_stream_destroy(f.d, s2);
    duet_dev_buffer_free(f.d, ba);
    duet_dev_buffer_free(f.d, bb);
    fx_close(&f);
}

static void test_wrap_host(void **state)
{
    (void)state;
    fx f = fx_open(2, 0);
    float host[16], one[16];
    for (int i = 0; i < 16; i++)
        host[i] = (float)i, one[i] = 1.0f;
    duet_buffer *bh = NULL;
    assert_int_equal(duet_dev_buffer_from_host(f.d, host, sizeof host, &bh), DUET_OK);
    assert_int_equal(duet_dev_buffer_size(f.d, bh), sizeof host);
    duet_buffer *b1 = fx_buf(&f, one, sizeof one);
    fx_begin(&f);
    duet_add_args add = {at(bh), at(b1), 16};
    assert_int_equal(duet_dev_add(f.d, f.s, &add), DUET_OK);
    assert_int_equal(duet_dev_stream_submit(f.d, f.s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(f.d, f.s), DUET_OK);
    for (int i = 0; i < 16; i++) /* no copy: the op wrote the caller's memory */
        assert_true(host[i] == (float)i + 1.0f);
    duet_dev_buffer_free(f.d, bh); /* must not free host (ASan would see it) */
    duet_dev_buffer_free(f.d, b1);
    fx_close(&f);
    host[0] = 0.0f;
}

static void test_info_and_env(void **state)
{
    (void)state;
    fx f = fx_open(2, 0);
    duet_device_info info;
    duet_dev_info(f.d, &info);
    assert_non_null(strstr(info.name, "CPU (2 threads"));
    assert_string_equal(info.backend, "cpu");
    assert_int_equal(info.n_threads, 2);
    assert_true(info.mem_total > 0 && info.mem_free <= info.mem_total);
    fx_close(&f);

    setenv("DUET_CPU_REFERENCE", "1", 1);
    f = fx_open(1, 0);
    duet_dev_info(f.d, &info);
    assert_non_null(strstr(info.name, "reference kernels"));
    fx_close(&f);
    unsetenv("DUET_CPU_REFERENCE");

    duet_device *d = (duet_device *)1;
    duet_device_options bad = {.n_threads = -1};
    assert_int_equal(duet_cpu_device_create(&bad, &d), DUET_ERR_INVALID_ARG);
    assert_null(d);
    assert_int_equal(duet_cpu_device_create(NULL, &d), DUET_OK); /* all cores */
    duet_dev_info(d, &info);
    assert_true(info.n_threads >= 1);
    duet_device_close(d);
}

/* One small workload; returns the first failure (after cleaning up). */
static duet_status fault_scenario(duet_device *d)
{
    duet_status rc;
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, got[8];
    duet_buffer *a = NULL, *b = NULL, *h = NULL;
    duet_stream *s = NULL;
    if ((rc = duet_dev_buffer_alloc(d, sizeof x, &a)))
        goto out;
    if ((rc = duet_dev_buffer_alloc(d, sizeof x, &b)))
        goto out_free_a;
    if ((rc = duet_dev_buffer_from_host(d, x, sizeof x, &h)))
        goto out_free_b;
    if ((rc = duet_dev_stream_create(d, &s)))
        goto out_free_h;
    duet_add_args add = {{a, 0}, {h, 0}, 8};
    if ((rc = duet_dev_stream_begin(d, s)) || (rc = duet_dev_upload(d, s, (duet_addr){a, 0}, x, sizeof x)) ||
        (rc = duet_dev_add(d, s, &add)) ||
        (rc = duet_dev_download(d, s, (duet_addr){a, 0}, got, sizeof got)) ||
        (rc = duet_dev_stream_submit(d, s)) || (rc = duet_dev_stream_wait(d, s)))
        goto out_destroy_stream;
    for (int i = 0; i < 8; i++)
        assert_true(got[i] == 2 * x[i]);
out_destroy_stream:
    duet_dev_stream_destroy(d, s);
out_free_h:
    duet_dev_buffer_free(d, h);
out_free_b:
    duet_dev_buffer_free(d, b);
out_free_a:
    duet_dev_buffer_free(d, a);
out:
    return rc;
}

static void test_lifecycle_faults(void **state)
{
    (void)state;
    /* Fail every fallible call in turn; under ASan/LSan nothing may leak. */
    int nth = 1;
    for (;; nth++) {
        duet_device *d = NULL;
        duet_device_options o = {.n_threads = 2};
        assert_int_equal(duet_cpu_device_create(&o, &d), DUET_OK);
        duet_dev_fault_inject(d, nth);
        duet_status rc = fault_scenario(d);
        int calls = duet_dev_fault_calls(d);
        duet_device_close(d);
        if (calls < nth) { /* the fault was never reached: done */
            assert_int_equal(rc, DUET_OK);
            break;
        }
        assert_int_equal(rc, DUET_ERR_OUT_OF_MEMORY);
    }
    assert_true(nth > 8);
    duet_device_close(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_rows),
        cmocka_unit_test(test_threadpool_run),
        cmocka_unit_test(test_embed),
        cmocka_unit_test(test_rms_norm_known),
        cmocka_unit_test(test_rms_norm_fast_vs_ref),
        cmocka_unit_test(test_rms_norm_residual),
        cmocka_unit_test(test_rms_norm_residual_errors),
        cmocka_unit_test(test_rope_known),
        cmocka_unit_test(test_rope_fast_vs_ref),
        cmocka_unit_test(test_rope_q_only),
        cmocka_unit_test(test_kv_write),
        cmocka_unit_test(test_kv_write_threaded),
        cmocka_unit_test(test_kv_write_rope_fused),
        cmocka_unit_test(test_rope_spec_errors),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_add),
        cmocka_unit_test(test_gather_rows),
        cmocka_unit_test(test_matmul_dispatch),
        cmocka_unit_test(test_stream_semantics),
        cmocka_unit_test(test_wrap_host),
        cmocka_unit_test(test_info_and_env),
        cmocka_unit_test(test_lifecycle_faults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
