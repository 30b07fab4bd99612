/*
 * test_vulkan_attention.c — Vulkan split-K attention (attention_split*.comp
 * + attention_combine.comp, forced with DUET_VK_ATTENTION) against the CPU
 * reference (force_reference): contexts shorter than, equal to and several
 * partitions (256 keys) long, F32 and F16 caches, GQA groups 1/4/8/12,
 * head_dim 64/128 (and 34/36: no 16-byte loads), mixed prefill + decode
 * batches (a wide grid that takes two token chunks), a table wide enough
 * that the partials buffer grows, batch invariance (a row alone and in a batch
 * of 11 give the same bits), NaN rows for bad metadata. Both reduction
 * variants run: subgroup (where the device reports subgroup arithmetic)
 * and shared memory. Scores are spread wide (|q| up to 8) so partitions
 * have different maxima and a wrong rescale in the combine shows.
 *
 * Validation layer on (DUET_VK_VALIDATION=1 unless the environment says
 * otherwise); any message fails. Exits 77 (skipped) without Vulkan.
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
#include "vk_internal.h" /* vk_ctx: which attention path the device took; the stream's counts */
#include "vulkan_backend.h"
#include "vulkan_fixture.h"

static side cpu, vk;   /* vk: DUET_VK_ATTENTION=split */
static side vk_shared; /* DUET_VK_ATTENTION=split-shared; NULL device when the same as vk */

enum { PART = 256 }; /* the shaders' partition */

/* One attention batch: shapes, metadata and contents (host side). */
typedef struct batch {
    int n_seqs, n_heads, n_kv_heads, head_dim, block_size, num_blocks, max_blocks;
    duet_dtype cache_type;
    int n_tokens;
    int32_t *qsl, *lens, *tables; /* [n_seqs + 1], [n_seqs], [n_seqs][max_blocks] */
    float *q;                     /* [n_tokens][n_heads][head_dim] */
    void *kc, *vc;                /* [num_blocks][block_size][n_kv_heads][head_dim] */
} batch;

static size_t cache_bytes(const batch *b)
{
    return (b->cache_type == DUET_F16 ? 2ull : 4ull) * b->num_blocks * b->block_size *
           b->n_kv_heads * b->head_dim;
}

static size_t out_floats(const batch *b) { return (size_t)b->n_tokens * b->n_heads * b->head_dim; }

/* Sequences with these query and context lengths; tables a random
 * permutation of blocks 1.. (pages scattered), unused entries -1. */
static batch make_batch(int n_seqs, const int *q_lens, const int *seq_lens, int n_heads,
                        int n_kv_heads, int head_dim, duet_dtype ct)
{
    batch b = {n_seqs, n_heads, n_kv_heads, head_dim, 16, 1, 1, ct, 0, NULL, NULL, NULL, NULL,
               NULL, NULL};
    b.qsl = malloc(4ull * (n_seqs + 1));
    b.lens = malloc(4ull * n_seqs);
    b.qsl[0] = 0;
    for (int s = 0; s < n_seqs; s++) {
        int need = (seq_lens[s] + b.block_size - 1) / b.block_size;
        b.n_tokens += q_lens[s];
        b.qsl[s + 1] = b.n_tokens;
        b.lens[s] = seq_lens[s];
        b.num_blocks += need;
        if (need > b.max_blocks)
            b.max_blocks = need;
    }
    int32_t *perm = malloc(4ull * b.num_blocks);
    for (int i = 0; i < b.num_blocks; i++)
        perm[i] = i;
    for (int i = b.num_blocks - 1; i > 1; i--) {
        int j = 1 + (int)(vk_rand32() % (uint32_t)i);
        int32_t tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    b.tables = malloc(4ull * n_seqs * b.max_blocks);
    int next = 1;
    for (int s = 0; s < n_seqs; s++) {
        int need = (seq_lens[s] + b.block_size - 1) / b.block_size;
        for (int i = 0; i < b.max_blocks; i++)
            b.tables[s * b.max_blocks + i] = i < need ? perm[next++] : -1;
    }
    free(perm);
    size_t nq = out_floats(&b);
    b.q = malloc(4 * nq);
    for (size_t i = 0; i < nq; i++)
        b.q[i] = vk_frand() * 8.0f;
    size_t nc = (size_t)b.num_blocks * b.block_size * n_kv_heads * head_dim;
    b.kc = malloc(cache_bytes(&b));
    b.vc = malloc(cache_bytes(&b));
    for (size_t i = 0; i < nc; i++) {
        float k = vk_frand(), v = vk_frand();
        if (ct == DUET_F16) {
            ((uint16_t *)b.kc)[i] = duet_f32_to_f16(k);
            ((uint16_t *)b.vc)[i] = duet_f32_to_f16(v);
        } else {
            ((float *)b.kc)[i] = k;
            ((float *)b.vc)[i] = v;
        }
    }
    return b;
}

static void free_batch(batch *b)
{
    free(b->qsl), free(b->lens), free(b->tables), free(b->q), free(b->kc), free(b->vc);
}

/* Run the batch on side x into out (poisoned first); *commands: what the
 * recording held before the download (Vulkan only; NULL to skip). */
static void run(side *x, const batch *b, float *out, int *commands)
{
    size_t qn = 4 * out_floats(b), cb = cache_bytes(b);
    duet_buffer *bq = vk_buffer(x, b->q, qn), *bk = vk_buffer(x, b->kc, cb),
                *bv = vk_buffer(x, b->vc, cb);
    duet_buffer *bt = vk_buffer(x, b->tables, 4ull * b->n_seqs * b->max_blocks);
    duet_buffer *bl = vk_buffer(x, b->lens, 4ull * b->n_seqs);
    duet_buffer *bs = vk_buffer(x, b->qsl, 4ull * (b->n_seqs + 1)), *bo = vk_buffer(x, NULL, qn);
    assert_int_equal(duet_dev_stream_begin(x->d, x->s), DUET_OK);
    duet_attention_args a = {vk_at(bq), vk_at(bk), vk_at(bv), vk_at(bt), vk_at(bl),
                             vk_at(bs), vk_at(bo), b->cache_type, b->n_tokens, b->n_seqs,
                             b->n_heads, b->n_kv_heads, b->head_dim, b->num_blocks,
                             b->block_size, b->max_blocks,
                             1.0f / sqrtf((float)b->head_dim)};
    assert_int_equal(duet_dev_attention(x->d, x->s, &a), DUET_OK);
    if (commands)
        *commands = x->s->n_commands;
    memset(out, 0xff, qn);
    assert_int_equal(duet_dev_download(x->d, x->s, vk_at(bo), out, qn), DUET_OK);
    assert_int_equal(duet_dev_stream_submit(x->d, x->s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(x->d, x->s), DUET_OK);
    duet_buffer *all[] = {bq, bk, bv, bt, bl, bs, bo};
    for (int i = 0; i < 7; i++)
        duet_dev_buffer_free(x->d, all[i]);
}

static int split_mode(const side *x) { return ((const vk_ctx *)x->d->ctx)->caps.split_attention; }

/* The Vulkan devices under test: vk, and vk_shared when it is a different
 * variant. */
static int n_variants(void) { return vk_shared.d ? 2 : 1; }
static side *variant(int i) { return i == 0 ? &vk : &vk_shared; }

/* The batch on every variant vs the CPU reference; the recording must be
 * the split path: split (+ combine when a row can span partitions).
 * Returns the commands the last variant recorded. */
static int check_batch(const char *what, const batch *b)
{
    int commands = 0;
    size_t n = out_floats(b);
    float *want = malloc(4 * n), *got = malloc(4 * n);
    run(&cpu, b, want, NULL);
    for (int v = 0; v < n_variants(); v++) {
        run(variant(v), b, got, &commands);
        char msg[160];
        snprintf(msg, sizeof msg, "%s [%s] H=%d Hkv=%d D=%d %s", what,
                 split_mode(variant(v)) == 2 ? "subgroup" : "shared", b->n_heads, b->n_kv_heads,
                 b->head_dim, b->cache_type == DUET_F16 ? "F16" : "F32");
        vk_assert_match(msg, got, want, n, 5e-4);
        int multi = b->max_blocks * b->block_size > PART;
        if (multi ? commands < 2 || commands % 2 : commands != 1)
            fail_msg("%s: %d commands recorded; the split path records %s", msg, commands,
                     multi ? "split + combine pairs" : "one split dispatch");
        int vn = duet_vulkan_validation_errors(variant(v)->d);
        if (vn)
            fail_msg("%s: the validation layer reported %d message(s)", msg, vn);
    }
    free(want), free(got);
    return commands;
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_selection(void **state)
{
    (void)state;
    assert_true(split_mode(&vk) >= 1);
    if (vk_shared.d)
        assert_int_equal(split_mode(&vk_shared), 1);
    fprintf(stderr, "  split variants: %s%s\n", split_mode(&vk) == 2 ? "subgroup " : "",
            vk_shared.d || split_mode(&vk) == 1 ? "shared" : "");
}

/* Decode rows at contexts around and beyond one partition. */
static void test_decode_contexts(void **state)
{
    (void)state;
    static const int q1[] = {1, 1, 1, 1, 1}, ctx[] = {1, 255, 256, 257, 1500};
    static const int shapes[][3] = {{4, 4, 64}, {8, 2, 128}, {16, 2, 64}, {24, 2, 64}};
    for (int f16 = 0; f16 < 2; f16++)
        for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
            batch b = make_batch(5, q1, ctx, shapes[i][0], shapes[i][1], shapes[i][2],
                                 f16 ? DUET_F16 : DUET_F32);
            check_batch("decode ctx 1/255/256/257/1500", &b);
            free_batch(&b);
        }
}

/* head_dim that rules out 16-byte K loads (F32: not a multiple of 4;
 * F16: not of 8): the scalar reads. */
static void test_scalar_loads(void **state)
{
    (void)state;
    static const int q1[] = {1, 1, 2}, ctx[] = {1, 300, 700};
    batch a = make_batch(3, q1, ctx, 8, 2, 34, DUET_F32);
    batch b = make_batch(3, q1, ctx, 8, 2, 36, DUET_F16);
    check_batch("scalar K reads", &a);
    check_batch("scalar K reads", &b);
    free_batch(&a);
    free_batch(&b);
}

/* A table 20000 blocks wide (1250 partitions in the grid) with short
 * sequences: 10.6 MB of partials per token, more than the 8 MiB the
 * device's buffer starts with, so it grows and each token gets its own
 * split + combine pair. */
static void test_wide_table(void **state)
{
    (void)state;
    static const int q1[] = {1, 2}, ctx[] = {300, 40};
    batch b = make_batch(2, q1, ctx, 32, 4, 64, DUET_F16);
    int wide = 20000;
    int32_t *t = malloc(4ull * b.n_seqs * wide);
    for (int s = 0; s < b.n_seqs; s++)
        for (int i = 0; i < wide; i++)
            t[s * wide + i] = i < b.max_blocks ? b.tables[s * b.max_blocks + i] : -1;
    free(b.tables);
    b.tables = t;
    b.max_blocks = wide;
    assert_int_equal(check_batch("wide table", &b), 2 * b.n_tokens);
    free_batch(&b);
}

/* Short contexts only: one partition, no scratch, one dispatch. */
static void test_single_partition(void **state)
{
    (void)state;
    static const int ql[] = {1, 3, 1}, ctx[] = {9, 200, 256};
    batch b = make_batch(3, ql, ctx, 8, 2, 128, DUET_F16);
    check_batch("one partition", &b);
    free_batch(&b);
}

/* Mixed prefill + decode, a prefill crossing partition boundaries; the
 * 8000-key decode widens the partition grid (32) so the 207 tokens need
 * two token chunks of the 8 MiB scratch: two split + combine pairs. */
static void test_mixed_batch(void **state)
{
    (void)state;
    static const int ql[] = {5, 1, 1, 200, 1}, ctx[] = {600, 257, 1, 700, 8000};
    batch b = make_batch(5, ql, ctx, 8, 2, 64, DUET_F32);
    assert_int_equal(check_batch("mixed prefill + decode", &b), 4);
    free_batch(&b);
}

/* Each row of a batch of 11 decodes has the same bits alone (its own
 * table width, so a different partition grid and no neighbours). */
static void test_batch_invariance(void **state)
{
    (void)state;
    static const int q1[11] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    static const int ctx[11] = {700, 3, 1500, 256, 257, 90, 1024, 1, 511, 512, 1300};
    for (int f16 = 0; f16 < 2; f16++) {
        batch all = make_batch(11, q1, ctx, 8, 2, 64, f16 ? DUET_F16 : DUET_F32);
        size_t row = (size_t)all.n_heads * all.head_dim;
        float *together = malloc(4 * out_floats(&all)), *alone = malloc(4 * row);
        for (int v = 0; v < n_variants(); v++) {
            run(variant(v), &all, together, NULL);
            for (int s = 0; s < 11; s++) {
                int need = (ctx[s] + all.block_size - 1) / all.block_size;
                batch one = all;
                int32_t qsl1[2] = {0, 1};
                one.n_seqs = 1;
                one.n_tokens = 1;
                one.max_blocks = need;
                one.qsl = qsl1;
                one.lens = &all.lens[s];
                one.tables = &all.tables[s * all.max_blocks];
                one.q = &all.q[s * row];
                run(variant(v), &one, alone, NULL);
                if (memcmp(alone, &together[s * row], 4 * row) != 0)
                    fail_msg("row %d (ctx %d, %s): alone differs from in a batch of 11", s,
                             ctx[s], f16 ? "F16" : "F32");
            }
        }
        free(together), free(alone);
        free_batch(&all);
    }
}

/* Bad metadata: NaN rows exactly where the reference has them. */
static void test_bad_metadata(void **state)
{
    (void)state;
    static const int ql[] = {2, 1, 1, 3}, ctx[] = {900, 300, 20, 2};
    for (int kind = 0; kind < 4; kind++) {
        batch b = make_batch(4, ql, ctx, 8, 2, 64, DUET_F32);
        const char *what = "";
        switch (kind) {
        case 0: /* a bad block id in one later partition of a long sequence */
            b.tables[40] = b.num_blocks + 3;
            what = "bad block id in partition 2";
            break;
        case 1: /* a negative block id in the first block */
            b.tables[b.max_blocks] = -7;
            what = "negative block id";
            break;
        case 2: /* query_start_loc not monotonic: every row NaN */
            b.qsl[1] = b.qsl[2] + 1;
            what = "bad query_start_loc";
            break;
        case 3: /* seq_len < q_len for one sequence */
            b.lens[3] = 1;
            what = "seq_len below q_len";
            break;
        }
        check_batch(what, &b);
        free_batch(&b);
    }
}

/* ---- main ------------------------------------------------------------------------ */

int main(void)
{
    setenv("DUET_VK_ATTENTION", "split", 1);
    int rc = vk_fixture_open("test_vulkan_attention", &vk, &cpu);
    if (rc)
        return rc;
    vk_shared.d = NULL;
    if (split_mode(&vk) == 2) {
        setenv("DUET_VK_ATTENTION", "split-shared", 1);
        if (duet_vulkan_device_create(-1, NULL, 1, &vk_shared.d) ||
            duet_dev_stream_create(vk_shared.d, &vk_shared.s)) {
            fprintf(stderr, "test_vulkan_attention: setup failed: %s\n", duet_last_error());
            return 1;
        }
    }
    unsetenv("DUET_VK_ATTENTION");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_selection),
        cmocka_unit_test(test_decode_contexts),
        cmocka_unit_test(test_scalar_loads),
        cmocka_unit_test(test_single_partition),
        cmocka_unit_test(test_wide_table),
        cmocka_unit_test(test_mixed_batch),
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_bad_metadata),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    int shared_validation = 0;
    if (vk_shared.d) {
        duet_dev_stream_destroy(vk_shared.d, vk_shared.s);
        shared_validation = duet_vulkan_validation_errors(vk_shared.d);
        duet_device_close(vk_shared.d);
    }
    return vk_fixture_close(&vk, &cpu, failed) || shared_validation ? 1 : 0;
}
