/*
 * test_cpu_attention.c — the CPU backend's paged attention through the
 * device wrappers: hand cases (one key, causal mask, GQA), a shuffled paged
 * layout against naive contiguous attention written here, fast vs reference
 * over head shapes, F32/F16 caches and mixed prefill + decode batches,
 * batch and thread-count invariance (bitwise), bad metadata, the
 * max_seq_len bound (no bit changes at or above every seq_len; NaN rows
 * past it).
 *
 * Expected values come from the test itself, never from the code under
 * test; device outputs are poisoned with NaN before every run.
 */
#include "cpu_fixture.h"

typedef struct attn_case {
    int n_tokens, n_seqs, n_heads, n_kv_heads, head_dim;
    int num_blocks, block_size, max_blocks;
    duet_dtype cache_type;
    const float *q;                 /* [n_tokens][n_heads][head_dim] */
    const void *k_cache, *v_cache;  /* [num_blocks][block_size][n_kv_heads][head_dim] */
    const int32_t *block_tables, *seq_lens, *qsl;
    float scale;
    int max_seq_len; /* 0 = no bound */
} attn_case;

static size_t cache_bytes(const attn_case *c)
{
    return (size_t)c->num_blocks * c->block_size * c->n_kv_heads * c->head_dim *
           (c->cache_type == DUET_F16 ? 2 : 4);
}

static void run_attention(fx *f, const attn_case *c, float *out)
{
    size_t qn = 4ull * c->n_tokens * c->n_heads * c->head_dim;
    duet_buffer *bq = fx_buf(f, c->q, qn), *bo = fx_buf(f, NULL, qn);
    duet_buffer *bk = fx_buf(f, c->k_cache, cache_bytes(c));
    duet_buffer *bv = fx_buf(f, c->v_cache, cache_bytes(c));
    duet_buffer *bt = fx_buf(f, c->block_tables, 4ull * c->n_seqs * c->max_blocks);
    duet_buffer *bl = fx_buf(f, c->seq_lens, 4ull * c->n_seqs);
    duet_buffer *bs = fx_buf(f, c->qsl, 4ull * (c->n_seqs + 1));
    fx_begin(f);
    duet_attention_args a = {at(bq), at(bk), at(bv), at(bt), at(bl), at(bs), at(bo),
                             c->cache_type, c->n_tokens, c->n_seqs, c->n_heads,
                             c->n_kv_heads, c->head_dim, c->num_blocks, c->block_size,
                             c->max_blocks, c->scale, c->max_seq_len};
    assert_int_equal(duet_dev_attention(f->d, f->s, &a), DUET_OK);
    fx_finish(f, bo, out, qn);
    duet_buffer *all[] = {bq, bo, bk, bv, bt, bl, bs};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        duet_dev_buffer_free(f->d, all[i]);
}

/* ---- attention ----------------------------------------------------------------- */

/* A paged KV cache image with random contents, plus the logical rows the
 * test scattered into it (as the cache stores them: F16-rounded). */
typedef struct kv_image {
    int n_kv, hd, bs, num_blocks;
    duet_dtype type;
    void *k, *v; /* cache images */
} kv_image;

static kv_image kv_image_new(int n_kv, int hd, int bs, int num_blocks, duet_dtype type)
{
    kv_image m = {n_kv, hd, bs, num_blocks, type, NULL, NULL};
    size_t n = (size_t)num_blocks * bs * n_kv * hd, esz = type == DUET_F16 ? 2 : 4;
    m.k = malloc(n * esz), m.v = malloc(n * esz);
    for (size_t i = 0; i < n; i++) {
        float a = frand(), b = frand();
        if (type == DUET_F16) {
            ((uint16_t *)m.k)[i] = duet_f32_to_f16(a);
            ((uint16_t *)m.v)[i] = duet_f32_to_f16(b);
        } else {
            ((float *)m.k)[i] = a, ((float *)m.v)[i] = b;
        }
    }
    return m;
}

static void kv_image_free(kv_image *m) { free(m->k), free(m->v); }

/* Write logical row (pos, kvh) = x[hd] through table; x is rounded to
 * what the cache holds. */
static void kv_image_put(kv_image *m, const int32_t *table, int pos, int kvh, void *cache,
                         float *x)
{
    size_t e = (((size_t)table[pos / m->bs] * m->bs + pos % m->bs) * m->n_kv + kvh) * m->hd;
    for (int d = 0; d < m->hd; d++) {
        if (m->type == DUET_F16) {
            uint16_t h = duet_f32_to_f16(x[d]);
            x[d] = duet_f16_to_f32(h);
            ((uint16_t *)cache)[e + d] = h;
        } else {
            ((float *)cache)[e + d] = x[d];
        }
    }
}

/* Naive attention of one query row over contiguous logical K/V
 * [ctx][n_kv][hd], positions 0..pos, in double. */
static void naive_attention(const float *q, const float *k, const float *v, int pos,
                            int n_heads, int n_kv, int hd, float scale, float *out)
{
    int group = n_heads / n_kv;
    for (int h = 0; h < n_heads; h++) {
        int kvh = h / group;
        double *w = malloc(sizeof(double) * (pos + 1)), max = -INFINITY, sum = 0;
        for (int j = 0; j <= pos; j++) {
            double dot = 0;
            for (int d = 0; d < hd; d++)
                dot += (double)q[h * hd + d] * k[((size_t)j * n_kv + kvh) * hd + d];
            w[j] = dot * scale;
            max = w[j] > max ? w[j] : max;
        }
        for (int j = 0; j <= pos; j++)
            sum += (w[j] = exp(w[j] - max));
        for (int d = 0; d < hd; d++) {
            double acc = 0;
            for (int j = 0; j <= pos; j++)
                acc += w[j] * v[((size_t)j * n_kv + kvh) * hd + d];
            out[h * hd + d] = (float)(acc / sum);
        }
        free(w);
    }
}

/* A batch of sequences over one random paged cache with shuffled block
 * tables; keeps the logical K/V per sequence for the naive check. */
typedef struct attn_batch {
    attn_case c;
    kv_image m;
    float *q;
    int32_t *tables, *seq_lens, *qsl;
    float **lk, **lv; /* per sequence [seq_len][n_kv][hd] */
} attn_batch;

static attn_batch batch_new(int n_seqs, const int *seq_lens, const int *q_lens, int n_heads,
                            int n_kv, int hd, int bs, duet_dtype type)
{
    attn_batch b = {0};
    int max_blocks = 1, total_blocks = 1, n_tokens = 0; /* block 0: the null block */
    for (int s = 0; s < n_seqs; s++) {
        int nb = (seq_lens[s] + bs - 1) / bs;
        max_blocks = nb > max_blocks ? nb : max_blocks;
        total_blocks += nb;
        n_tokens += q_lens[s];
    }
    total_blocks += 3; /* spare blocks nobody owns: garbage that must not be read */
    b.m = kv_image_new(n_kv, hd, bs, total_blocks, type);
    /* Shuffled permutation of blocks 1..total-1. */
    int *perm = malloc(sizeof(int) * total_blocks);
    for (int i = 0; i < total_blocks; i++)
        perm[i] = i;
    for (int i = total_blocks - 1; i > 1; i--) {
        int j = 1 + (int)((frand() + 1.0f) * 0.5f * i) % i;
        int t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    b.tables = malloc(4ull * n_seqs * max_blocks);
    b.seq_lens = malloc(4ull * n_seqs);
    b.qsl = malloc(4ull * (n_seqs + 1));
    b.lk = calloc(n_seqs, sizeof *b.lk), b.lv = calloc(n_seqs, sizeof *b.lv);
    b.q = frand_array((size_t)n_tokens * n_heads * hd);
    int next = 1;
    b.qsl[0] = 0;
    for (int s = 0; s < n_seqs; s++) {
        int32_t *table = b.tables + (size_t)s * max_blocks;
        for (int i = 0; i < max_blocks; i++)
            table[i] = i * bs < seq_lens[s] ? perm[next++] : 0;
        b.seq_lens[s] = seq_lens[s];
        b.qsl[s + 1] = b.qsl[s] + q_lens[s];
        size_t n = (size_t)seq_lens[s] * n_kv * hd;
        b.lk[s] = frand_array(n), b.lv[s] = frand_array(n);
        for (int pos = 0; pos < seq_lens[s]; pos++)
            for (int h = 0; h < n_kv; h++) {
                size_t o = ((size_t)pos * n_kv + h) * hd;
                kv_image_put(&b.m, table, pos, h, b.m.k, b.lk[s] + o);
                kv_image_put(&b.m, table, pos, h, b.m.v, b.lv[s] + o);
            }
    }
    free(perm);
    b.c = (attn_case){n_tokens, n_seqs, n_heads, n_kv, hd, total_blocks, bs, max_blocks,
                      type, b.q, b.m.k, b.m.v, b.tables, b.seq_lens, b.qsl,
                      (float)(1.0 / sqrt(hd)), 0};
    return b;
}

static void batch_free(attn_batch *b)
{
    for (int s = 0; s < b->c.n_seqs; s++)
        free(b->lk[s]), free(b->lv[s]);
    free(b->lk), free(b->lv), free(b->q), free(b->tables), free(b->seq_lens), free(b->qsl);
    kv_image_free(&b->m);
}

/* The naive answer for the whole batch. */
static void batch_naive(const attn_batch *b, float *out)
{
    const attn_case *c = &b->c;
    size_t row = (size_t)c->n_heads * c->head_dim;
    for (int s = 0; s < c->n_seqs; s++) {
        int q_len = c->qsl[s + 1] - c->qsl[s];
        for (int i = 0; i < q_len; i++) {
            size_t t = (size_t)c->qsl[s] + i;
            naive_attention(c->q + t * row, b->lk[s], b->lv[s], c->seq_lens[s] - q_len + i,
                            c->n_heads, c->n_kv_heads, c->head_dim, c->scale, out + t * row);
        }
    }
}

static size_t attn_out_len(const attn_case *c)
{
    return (size_t)c->n_tokens * c->n_heads * c->head_dim;
}

static void test_attention_one_key(void **state)
{
    (void)state;
    /* One cached position: softmax weight 1, output = that value, exactly. */
    int seq_len[] = {1}, q_len[] = {1};
    for (int dev = 0; dev < 2; dev++) {
        attn_batch b = batch_new(1, seq_len, q_len, 2, 1, 8, 4, DUET_F32);
        float out[16];
        fx f = fx_open(2, dev == 0);
        run_attention(&f, &b.c, out);
        fx_close(&f);
        for (int h = 0; h < 2; h++)
            assert_memory_equal(out + h * 8, b.lv[0], sizeof(float) * 8);
        batch_free(&b);
    }
}

static void test_attention_causal(void **state)
{
    (void)state;
    /* A fresh 3-token prefill: token 0 sees only itself (exactly v0), the
     * others match the naive causal answer. Without the mask token 0
     * would be a blend. */
    int seq_len[] = {3}, q_len[] = {3};
    for (int dev = 0; dev < 2; dev++) {
        attn_batch b = batch_new(1, seq_len, q_len, 1, 1, 8, 2, DUET_F32);
        float out[24], want[24];
        fx f = fx_open(2, dev == 0);
        run_attention(&f, &b.c, out);
        fx_close(&f);
        batch_naive(&b, want);
        assert_memory_equal(out, b.lv[0], sizeof(float) * 8);
        for (int i = 0; i < 24; i++)
            assert_close(out[i], want[i], 1e-6);
        batch_free(&b);
    }
}

static void test_attention_gqa(void **state)
{
    (void)state;
    /* 4 query heads on 2 kv heads: heads 0,1 read kv head 0 (values all
     * 1), heads 2,3 read kv head 1 (values all 2). */
    int seq_len[] = {5}, q_len[] = {1};
    for (int dev = 0; dev < 2; dev++) {
        attn_batch b = batch_new(1, seq_len, q_len, 4, 2, 8, 4, DUET_F32);
        const int32_t *table = b.tables;
        for (int pos = 0; pos < 5; pos++)
            for (int h = 0; h < 2; h++) {
                float x[8];
                for (int d = 0; d < 8; d++)
                    x[d] = (float)(h + 1);
                kv_image_put(&b.m, table, pos, h, b.m.v, x);
            }
        float out[32];
        fx f = fx_open(2, dev == 0);
        run_attention(&f, &b.c, out);
        fx_close(&f);
        for (int h = 0; h < 4; h++)
            for (int d = 0; d < 8; d++)
                assert_close(out[h * 8 + d], h < 2 ? 1.0 : 2.0, 1e-6);
        batch_free(&b);
    }
}

static void test_attention_paged_vs_naive(void **state)
{
    (void)state;
    /* Shuffled block tables against a contiguous naive attention: a
     * decode over 37 positions and a 6-token chunk continuing after 20. */
    int seq_len[] = {37, 26}, q_len[] = {1, 6};
    for (int f16 = 0; f16 < 2; f16++)
        for (int dev = 0; dev < 2; dev++) {
            attn_batch b = batch_new(2, seq_len, q_len, 6, 2, 32, 8,
                                     f16 ? DUET_F16 : DUET_F32);
            size_t n = attn_out_len(&b.c);
            float *out = malloc(4 * n), *want = malloc(4 * n);
            fx f = fx_open(2, dev == 0);
            run_attention(&f, &b.c, out);
            fx_close(&f);
            batch_naive(&b, want);
            assert_nmse(out, want, n, 1e-9);
            free(out), free(want);
            batch_free(&b);
        }
}

static void test_attention_fast_vs_ref(void **state)
{
    (void)state;
    fx ref = fx_open(1, 1), fast = fx_open(2, 0);
    /* heads, kv heads, head_dim, block_size */
    int shapes[][4] = {{9, 3, 64, 16}, {4, 4, 32, 16}, {8, 2, 128, 16}, {6, 3, 40, 5},
                       {4, 2, 12, 16}};
    int dec_len[] = {1, 16, 17, 100}, dec_q[] = {1, 1, 1, 1};
    int pre_len[] = {70}, pre_q[] = {70};
    int mix_len[] = {16, 7, 45}, mix_q[] = {5, 1, 1};
    for (size_t sh = 0; sh < sizeof shapes / sizeof *shapes; sh++)
        for (int f16 = 0; f16 < 2; f16++)
            for (int kind = 0; kind < 3; kind++) {
                int *k = shapes[sh];
                const int *lens = kind == 0 ? dec_len : kind == 1 ? pre_len : mix_len;
                const int *qs = kind == 0 ? dec_q : kind == 1 ? pre_q : mix_q;
                int ns = kind == 0 ? 4 : kind == 1 ? 1 : 3;
                attn_batch b = batch_new(ns, lens, qs, k[0], k[1], k[2], k[3],
                                         f16 ? DUET_F16 : DUET_F32);
                size_t n = attn_out_len(&b.c);
                float *o_ref = malloc(4 * n), *o_fast = malloc(4 * n);
                run_attention(&ref, &b.c, o_ref);
                run_attention(&fast, &b.c, o_fast);
                assert_all_finite(o_ref, n);
                assert_nmse(o_fast, o_ref, n, 5e-4);
                /* Far tighter in practice; catch a silent precision loss. */
                assert_nmse(o_fast, o_ref, n, 1e-10);
                free(o_ref), free(o_fast);
                batch_free(&b);
            }
    fx_close(&ref);
    fx_close(&fast);
}

/* Run sequence s of b alone (same cache, same block table). */
static void run_alone(fx *f, const attn_batch *b, int s, float *out)
{
    const attn_case *c = &b->c;
    size_t row = (size_t)c->n_heads * c->head_dim;
    int32_t qsl[2] = {0, c->qsl[s + 1] - c->qsl[s]};
    attn_case one = *c;
    one.n_tokens = qsl[1];
    one.n_seqs = 1;
    one.q = c->q + (size_t)c->qsl[s] * row;
    one.block_tables = c->block_tables + (size_t)s * c->max_blocks;
    one.seq_lens = c->seq_lens + s;
    one.qsl = qsl;
    run_attention(f, &one, out);
}

static void test_attention_batch_invariance(void **state)
{
    (void)state;
    /* A 5-token prefill chunk after 11 cached tokens, and two decodes. */
    int seq_len[] = {16, 9, 40}, q_len[] = {5, 1, 1};
    fx fast1 = fx_open(1, 0), fast2 = fx_open(2, 0);
    for (int f16 = 0; f16 < 2; f16++) {
        attn_batch b = batch_new(3, seq_len, q_len, 9, 3, 64, 16, f16 ? DUET_F16 : DUET_F32);
        size_t n = attn_out_len(&b.c), row = (size_t)9 * 64;
        float *batched = malloc(4 * n), *one_thread = malloc(4 * n), *alone = malloc(4 * n);
        run_attention(&fast2, &b.c, batched);
        run_attention(&fast1, &b.c, one_thread);
        assert_all_finite(batched, n);
        assert_memory_equal(batched, one_thread, 4 * n);
        for (int s = 0; s < 3; s++) {
            run_alone(&fast2, &b, s, alone);
            assert_memory_equal(batched + b.qsl[s] * row, alone, 4 * row * q_len[s]);
        }
        free(batched), free(one_thread), free(alone);
        batch_free(&b);
    }
    fx_close(&fast1);
    fx_close(&fast2);
}

static void test_attention_bad_metadata(void **state)
{
    (void)state;
    /* A block id outside the cache poisons only its own sequence. */
    int seq_len[] = {20, 9}, q_len[] = {2, 1};
    for (int dev = 0; dev < 2; dev++) {
        attn_batch b = batch_new(2, seq_len, q_len, 2, 1, 8, 4, DUET_F32);
        b.tables[1] = b.c.num_blocks; /* seq 0, block 1 */
        float out[3 * 16];
        fx f = fx_open(2, dev == 0);
        run_attention(&f, &b.c, out);
        for (int i = 0; i < 32; i++)
            assert_true(isnan(out[i]));
        assert_all_finite(out + 32, 16);
        /* seq_len shorter than the query count: that sequence is NaN. */
        b.tables[1] = b.tables[b.c.max_blocks]; /* repair, then break seq 0 */
        b.seq_lens[0] = 1;
        run_attention(&f, &b.c, out);
        for (int i = 0; i < 32; i++)
            assert_true(isnan(out[i]));
        assert_all_finite(out + 32, 16);
        /* A padding token (past the last sequence) is NaN; seq 0 is fine. */
        b.seq_lens[0] = 20;
        b.c.n_seqs = 1;
        run_attention(&f, &b.c, out);
        assert_all_finite(out, 32);
        for (int i = 32; i < 48; i++)
            assert_true(isnan(out[i]));
        b.c.n_seqs = 2;
        fx_close(&f);
        batch_free(&b);
    }
}

/* max_seq_len: a bound at or above every seq_len (the longest, or wider
 * than the table) changes no bit; below one sequence's seq_len it makes
 * that sequence's rows NaN and leaves the others' bits alone. A negative
 * bound is an argument error. */
static void test_attention_bound(void **state)
{
    (void)state;
    int seq_len[] = {20, 9, 33}, q_len[] = {2, 1, 3};
    for (int dev = 0; dev < 2; dev++) {
        attn_batch b = batch_new(3, seq_len, q_len, 4, 2, 16, 4, DUET_F32);
        size_t n = attn_out_len(&b.c), row = 4 * 16;
        float *want = malloc(4 * n), *out = malloc(4 * n);
        fx f = fx_open(2, dev == 0);
        run_attention(&f, &b.c, want);
        assert_all_finite(want, n);
        static const int fine[] = {33, 34, 1000, 1 << 30};
        for (int i = 0; i < 4; i++) {
            b.c.max_seq_len = fine[i];
            run_attention(&f, &b.c, out);
            if (memcmp(out, want, 4 * n) != 0)
                fail_msg("%s, bound %d: the bits differ from no bound",
                         dev == 0 ? "reference" : "fast", fine[i]);
        }
        /* 20: sequence 2 (33 keys, rows 3..5) is bad; exactly 20 is fine. */
        b.c.max_seq_len = 20;
        run_attention(&f, &b.c, out);
        assert_memory_equal(out, want, 4 * 3 * row);
        for (size_t i = 3 * row; i < n; i++)
            assert_true(isnan(out[i]));
        /* 8: every sequence is longer: every row NaN. */
        b.c.max_seq_len = 8;
        run_attention(&f, &b.c, out);
        for (size_t i = 0; i < n; i++)
            assert_true(isnan(out[i]));
        fx_close(&f);
        free(want), free(out);
        batch_free(&b);
    }
    /* A negative bound: the wrapper refuses it, naming the field. */
    attn_batch b = batch_new(1, seq_len, q_len, 4, 2, 16, 4, DUET_F32);
    fx f = fx_open(1, 1);
    size_t qn = 4ull * b.c.n_tokens * 4 * 16;
    duet_buffer *bq = fx_buf(&f, b.c.q, qn), *bo = fx_buf(&f, NULL, qn);
    duet_buffer *bk = fx_buf(&f, b.c.k_cache, cache_bytes(&b.c));
    duet_buffer *bt = fx_buf(&f, b.c.block_tables, 4ull * b.c.max_blocks);
    duet_buffer *bl = fx_buf(&f, b.c.seq_lens, 4), *bs = fx_buf(&f, b.c.qsl, 8);
    fx_begin(&f);
    duet_attention_args a = {at(bq), at(bk), at(bk), at(bt), at(bl), at(bs), at(bo),
                             DUET_F32, b.c.n_tokens, 1, 4, 2, 16, b.c.num_blocks, 4,
                             b.c.max_blocks, b.c.scale, -1};
    assert_int_equal(duet_dev_attention(f.d, f.s, &a), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "max_seq_len is -1"));
    duet_buffer *all[] = {bq, bo, bk, bt, bl, bs};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        duet_dev_buffer_free(f.d, all[i]);
    fx_close(&f);
    batch_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_one_key),
        cmocka_unit_test(test_attention_causal),
        cmocka_unit_test(test_attention_gqa),
        cmocka_unit_test(test_attention_paged_vs_naive),
        cmocka_unit_test(test_attention_fast_vs_ref),
        cmocka_unit_test(test_attention_batch_invariance),
        cmocka_unit_test(test_attention_bad_metadata),
        cmocka_unit_test(test_attention_bound),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
