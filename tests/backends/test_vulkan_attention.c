/*
 * test_vulkan_attention.c — Vulkan split-K attention (attention_split*.comp
 * + attention_combine.comp, forced with DUET_VK_ATTENTION) against the CPU
 * reference (force_reference), once per partition size (DUET_VK_ATTN_PART
 * 64 = the default, 128, 256; every test at 64, the PART-dependent ones at
 * 128 and 256): contexts shorter than, equal to and several
 * partitions long, F32 and F16 caches, GQA groups 1/4/8/12,
 * head_dim 64/128 (and 34/36: no 16-byte loads), mixed prefill + decode
 * batches (a wide grid that takes two token chunks), a table wide enough
 * that the partials buffer grows, batch invariance (a row alone and in a batch
 * of 11 give the same bits), NaN rows for bad metadata, and the
 * max_seq_len bound (the grid follows it: fewer commands on a wide table,
 * the same bits; rows past it NaN, on the default path too). Both reduction
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

/* The partials one split + combine pair may use at 256 keys per partition
 * (vk_ops.c's ATTN_SCRATCH; scaled by 256 / PART): more tokens go in
 * further pairs. */
enum { SCRATCH = 8 << 20 };

/* One attention batch: shapes, metadata and contents (host side). */
typedef struct batch {
    int n_seqs, n_heads, n_kv_heads, head_dim, block_size, num_blocks, max_blocks;
    duet_dtype cache_type;
    int n_tokens;
    int32_t *qsl, *lens, *tables; /* [n_seqs + 1], [n_seqs], [n_seqs][max_blocks] */
    float *q;                     /* [n_tokens][n_heads][head_dim] */
    void *kc, *vc;                /* [num_blocks][block_size][n_kv_heads][head_dim] */
    int max_seq_len;              /* the op's bound; 0 = none */
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
               NULL, NULL, 0};
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
                             1.0f / sqrtf((float)b->head_dim), b->max_seq_len};
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

/* Keys per partition on the devices under test (both variants agree). */
static int part_of(const side *x) { return 64 << ((const vk_ctx *)x->d->ctx)->attn_part_log2; }

/* The keys of b's longest possible row: the table width, or the bound
 * when it is smaller. */
static long bound_keys(const batch *b)
{
    long keys = (long)b->max_blocks * b->block_size;
    return b->max_seq_len > 0 && b->max_seq_len < keys ? b->max_seq_len : keys;
}

/* Split + combine pairs the host must record for b: chunks of tokens whose
 * partials fit SCRATCH, at least one token each; the partition grid
 * follows the bound. */
static int expected_pairs(const batch *b, int part)
{
    long keys = bound_keys(b);
    long parts = (keys + part - 1) / part;
    long per_token = 4L * b->n_heads * parts * (b->head_dim + 2);
    long budget = (long)SCRATCH * 256 / part;
    long chunk = budget / per_token ? budget / per_token : 1;
    return (int)((b->n_tokens + chunk - 1) / chunk);
}

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
        int part = part_of(variant(v));
        snprintf(msg, sizeof msg, "%s [%s, part %d] H=%d Hkv=%d D=%d %s", what,
                 split_mode(variant(v)) == 2 ? "subgroup" : "shared", part, b->n_heads,
                 b->n_kv_heads, b->head_dim, b->cache_type == DUET_F16 ? "F16" : "F32");
        vk_assert_match(msg, got, want, n, 5e-4);
        int multi = bound_keys(b) > part;
        if (commands != (multi ? 2 * expected_pairs(b, part) : 1))
            fail_msg("%s: %d commands recorded; the split path records %s (%d)", msg, commands,
                     multi ? "split + combine pairs" : "one split dispatch",
                     multi ? 2 * expected_pairs(b, part) : 1);
        int vn = duet_vulkan_validation_errors(variant(v)->d);
        if (vn)
            fail_msg("%s: the validation layer reported %d message(s)", msg, vn);
    }
    free(want), free(got);
    return commands;
}

/* The default-path device (DUET_VK_ATTENTION=basic: attention.comp), for
 * the max_seq_len checks; NULL device when it could not be opened. */
static side vk_basic;

/* Widen b's block table to width blocks (entries past a row's blocks -1),
 * as the engine's max_model_len does. */
static void widen(batch *b, int width)
{
    int32_t *t = malloc(4ull * b->n_seqs * width);
    for (int s = 0; s < b->n_seqs; s++)
        for (int i = 0; i < width; i++)
            t[s * width + i] = i < b->max_blocks ? b->tables[s * b->max_blocks + i] : -1;
    free(b->tables);
    b->tables = t;
    b->max_blocks = width;
}

/* b (no bound of its own) with max_seq_len = bound on every split variant
 * and on the default path: NaN exactly where the CPU reference has it with
 * the bound, NMSE against it elsewhere, and every valid row bitwise equal
 * to the same device's row without the bound. On the split variants the
 * recording is checked against the bounded grid; *with and *without (NULL
 * to skip): the commands the last split variant recorded with and without
 * the bound. */
static void check_bound(const char *what, batch *b, int bound, int *with, int *without)
{
    size_t n = out_floats(b);
    float *want = malloc(4 * n), *free_run = malloc(4 * n), *got = malloc(4 * n);
    int c_with = 0, c_without = 0;
    b->max_seq_len = bound;
    run(&cpu, b, want, NULL);
    for (int v = 0; v < n_variants() + 1; v++) {
        side *x = v < n_variants() ? variant(v) : &vk_basic;
        if (!x->d)
            continue;
        int part = part_of(x), split = v < n_variants();
        char msg[200];
        snprintf(msg, sizeof msg, "%s, bound %d [%s, part %d]", what, bound,
                 !split ? "default path" : split_mode(x) == 2 ? "subgroup" : "shared", part);
        b->max_seq_len = 0;
        run(x, b, free_run, &c_without);
        b->max_seq_len = bound;
        run(x, b, got, &c_with);
        vk_assert_match(msg, got, want, n, 5e-4);
        for (size_t i = 0; i < n; i++)
            if (!isnan(want[i]) && memcmp(&got[i], &free_run[i], 4) != 0)
                fail_msg("%s: element %zu is %.9g with the bound, %.9g without", msg, i,
                         got[i], free_run[i]);
        int multi = bound_keys(b) > part;
        int expect = multi ? 2 * expected_pairs(b, part) : 1;
        if (split && c_with != expect)
            fail_msg("%s: %d commands recorded; the bounded grid needs %d", msg, c_with, expect);
        if (!split && c_with != 1)
            fail_msg("%s: %d commands recorded; the default path records one", msg, c_with);
        int vn = duet_vulkan_validation_errors(x->d);
        if (vn)
            fail_msg("%s: the validation layer reported %d message(s)", msg, vn);
        if (split && with)
            *with = c_with;
        if (split && without)
            *without = c_without;
    }
    b->max_seq_len = 0;
    free(want), free(free_run), free(got);
}

/* ---- tests ------------------------------------------------------------------------ */

/* The default device: split variants as asked, 64 keys per partition. */
static void test_selection(void **state)
{
    (void)state;
    assert_true(split_mode(&vk) >= 1);
    assert_int_equal(part_of(&vk), 64);
    if (vk_shared.d) {
        assert_int_equal(split_mode(&vk_shared), 1);
        assert_int_equal(part_of(&vk_shared), 64);
    }
    fprintf(stderr, "  split variants: %s%s\n", split_mode(&vk) == 2 ? "subgroup " : "",
            vk_shared.d || split_mode(&vk) == 1 ? "shared" : "");
}

/* Decode rows at contexts around one and two partitions and beyond
 * (1, P - 1, P, P + 1, 2P + 1, 700), GQA groups 1/4/8/12. */
static void test_decode_contexts(void **state)
{
    (void)state;
    int P = part_of(&vk);
    const int q1[] = {1, 1, 1, 1, 1, 1}, ctx[] = {1, P - 1, P, P + 1, 2 * P + 1, 700};
    static const int shapes[][3] = {{4, 4, 64}, {8, 2, 128}, {16, 2, 64}, {24, 2, 64}};
    for (int f16 = 0; f16 < 2; f16++)
        for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
            batch b = make_batch(6, q1, ctx, shapes[i][0], shapes[i][1], shapes[i][2],
                                 f16 ? DUET_F16 : DUET_F32);
            check_batch("decode ctx 1/P-1/P/P+1/2P+1/700", &b);
            free_batch(&b);
        }
}

/* A long context: 1500 keys, many partitions to combine. */
static void test_long_context(void **state)
{
    (void)state;
    static const int q1[] = {1, 1}, ctx[] = {1500, 1};
    batch b = make_batch(2, q1, ctx, 16, 2, 64, DUET_F16);
    check_batch("decode ctx 1500", &b);
    free_batch(&b);
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

/* A table 640 partitions wide with short sequences, 64 heads of 256 dims:
 * 42 MB of partials per token, more than the device's buffer starts with
 * (8 MiB x 256 / PART), so it grows and each token gets its own split +
 * combine pair. */
static void test_wide_table(void **state)
{
    (void)state;
    static const int q1[] = {1, 2}, ctx[] = {300, 40};
    batch b = make_batch(2, q1, ctx, 64, 4, 256, DUET_F16);
    widen(&b, 640 * part_of(&vk) / b.block_size);
    assert_int_equal(check_batch("wide table", &b), 2 * b.n_tokens);
    free_batch(&b);
}

/* The runner's bound on a table as wide as an engine's max_model_len
 * (8192 keys) with sequences of 1..300 keys: a 64-token prefill chunk
 * ending at 300 and decodes at 1, 64, 65, 129; 32 heads on 8 KV heads of
 * 128 dims. Without the bound 128 partitions at PART 64: 2.1 MB of
 * partials per token, 15 tokens per pair, 5 split + combine pairs (the
 * same at 128 and 256: the budget scales); with max_seq_len 300, 5
 * partitions and one pair. Bits equal either way, default path included. */
static void test_bound_wide_table(void **state)
{
    (void)state;
    static const int ql[] = {64, 1, 1, 1, 1}, ctx[] = {300, 1, 64, 65, 129};
    batch b = make_batch(5, ql, ctx, 32, 8, 128, DUET_F16);
    widen(&b, 8192 / b.block_size);
    int with = 0, without = 0;
    check_bound("wide table", &b, 300, &with, &without);
    assert_int_equal(with, 2);
    assert_int_equal(without, 10);
    free_batch(&b);
}

/* A bound some sequences exceed: their rows NaN on the split variants and
 * the default path as on the CPU, the other rows' bits unchanged. 300 cuts
 * a 900-key row (the combine must leave it NaN: its partitions lie beyond
 * the bounded grid) and keeps a 300-key one (exactly the bound); 20 leaves
 * one partition (one dispatch) and two good rows. A bound beyond the table
 * width changes nothing. */
static void test_bound_exceeded(void **state)
{
    (void)state;
    static const int ql[] = {2, 1, 1, 3}, ctx[] = {900, 300, 20, 2};
    batch b = make_batch(4, ql, ctx, 8, 2, 64, DUET_F32);
    widen(&b, 2048 / b.block_size);
    check_bound("a 900-key row over the bound", &b, 300, NULL, NULL);
    check_bound("two rows over the bound", &b, 20, NULL, NULL);
    check_bound("a bound wider than the table", &b, 5000, NULL, NULL);
    free_batch(&b);
}

/* Short contexts only: one partition, no scratch, one dispatch (a prefill
 * of 3 ending at P - 1, a row at exactly P keys). */
static void test_single_partition(void **state)
{
    (void)state;
    int P = part_of(&vk);
    const int ql[] = {1, 3, 1}, ctx[] = {9, P - 1, P};
    batch b = make_batch(3, ql, ctx, 8, 2, 128, DUET_F16);
    assert_int_equal(check_batch("one partition", &b), 1);
    free_batch(&b);
}

/* Mixed prefill + decode, a prefill crossing partition boundaries; the
 * 8000-key decode widens the partition grid so the 207 tokens need two
 * token chunks of the scratch: two split + combine pairs (at any PART: the
 * budget scales with the partitions). */
static void test_mixed_batch(void **state)
{
    (void)state;
    static const int ql[] = {5, 1, 1, 200, 1}, ctx[] = {600, 257, 1, 700, 8000};
    batch b = make_batch(5, ql, ctx, 8, 2, 64, DUET_F32);
    assert_int_equal(check_batch("mixed prefill + decode", &b), 4);
    free_batch(&b);
}

/* The same without the wide decode (one token chunk), F16, GQA 12: the
 * PART-dependent cuts of prefill rows, for every partition size. */
static void test_mixed_short(void **state)
{
    (void)state;
    static const int ql[] = {5, 1, 1, 70, 1}, ctx[] = {600, 257, 1, 300, 65};
    batch b = make_batch(5, ql, ctx, 24, 2, 64, DUET_F16);
    assert_int_equal(check_batch("mixed prefill + decode, short", &b), 2);
    free_batch(&b);
}

/* Each row of a batch of 11 decodes has the same bits alone (its own
 * table width, so a different partition grid and no neighbours). */
static void test_batch_invariance(void **state)
{
    (void)state;
    int P = part_of(&vk);
    const int q1[11] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    const int ctx[11] = {700, 3, 1500, P, P + 1, 90, 1024, 1, 2 * P - 1, 2 * P, 1300};
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
                    fail_msg("row %d (ctx %d, %s, part %d): alone differs from in a batch of 11",
                             s, ctx[s], f16 ? "F16" : "F32", P);
            }
        }
        free(together), free(alone);
        free_batch(&all);
    }
}

/* Bad metadata: NaN rows exactly where the reference has them, on the
 * multi-partition path (the combine carries a NaN sum) and the
 * single-partition one (the split kernel writes the row). */
static void test_bad_metadata(void **state)
{
    (void)state;
    static const int ql[] = {2, 1, 1, 3}, ctx[] = {900, 300, 20, 2};
    for (int kind = 0; kind < 5; kind++) {
        batch b = make_batch(4, ql, ctx, 8, 2, 64, DUET_F32);
        const char *what = "";
        switch (kind) {
        case 0: /* a bad block id in a later partition of a long sequence */
            b.tables[40] = b.num_blocks + 3;
            what = "bad block id in a later partition";
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
        case 4: /* a bad block id in a row of one partition (20 keys) */
            b.tables[2 * b.max_blocks + 1] = b.num_blocks;
            what = "bad block id, one partition";
            break;
        }
        check_batch(what, &b);
        free_batch(&b);
    }
}

/* Every attention_split / attention_combine pipeline the device created
 * carries its partition size (specialization constant 1 = log2(PART / 64)). */
static void test_pipelines_follow_part(void **state)
{
    (void)state;
    for (int v = 0; v < n_variants(); v++) {
        const vk_ctx *c = variant(v)->d->ctx;
        uint32_t shift = (uint32_t)c->attn_part_log2;
        static const vk_shader shs[] = {VK_SH_ATTENTION_SPLIT, VK_SH_ATTENTION_SPLIT_SG,
                                        VK_SH_ATTENTION_COMBINE};
        int split_seen = 0, combine_seen = 0;
        for (int i = 0; i < 3; i++)
            for (uint32_t spec = 0; spec < VK_SPEC_VALUES; spec++) {
                if (!c->pipes[shs[i]][spec])
                    continue;
                if (spec / 32 != shift)
                    fail_msg("part %d: pipeline of shader %d with spec %u (constant 1 = %u)",
                             64 << c->attn_part_log2, (int)shs[i], spec, spec / 32);
                split_seen |= shs[i] != VK_SH_ATTENTION_COMBINE;
                combine_seen |= shs[i] == VK_SH_ATTENTION_COMBINE;
            }
        assert_true(split_seen && combine_seen);
    }
}

/* A value other than 64, 128 or 256 fails device creation, naming the
 * variable, the value and the allowed values. */
static void test_bad_part_env(void **state)
{
    (void)state;
    static const char *const bad[] = {"96", "", "512", "64k"};
    for (int i = 0; i < 4; i++) {
        duet_device *d = NULL;
        setenv("DUET_VK_ATTN_PART", bad[i], 1);
        duet_status rc = duet_vulkan_device_create(-1, NULL, 1, &d);
        unsetenv("DUET_VK_ATTN_PART");
        assert_int_equal(rc, DUET_ERR_INVALID_ARG);
        assert_null(d);
        char want[64];
        snprintf(want, sizeof want, "DUET_VK_ATTN_PART='%s'", bad[i]);
        if (!strstr(duet_last_error(), want) || !strstr(duet_last_error(), "64, 128 or 256"))
            fail_msg("DUET_VK_ATTN_PART=%s: the message was '%s'", bad[i], duet_last_error());
    }
}

/* ---- main ------------------------------------------------------------------------ */

/* Open vk (DUET_VK_ATTENTION=split) and, where it took the subgroup
 * reductions, vk_shared (=split-shared), with DUET_VK_ATTN_PART=part (NULL:
 * unset). 0, or 1 with a message. */
static int open_devices(const char *part)
{
    int rc = 0;
    vk_shared.d = NULL;
    setenv("DUET_VK_ATTENTION", "split", 1);
    if (part)
        setenv("DUET_VK_ATTN_PART", part, 1);
    if (!vk.d && (duet_vulkan_device_create(-1, NULL, 1, &vk.d) ||
                  duet_dev_stream_create(vk.d, &vk.s)))
        rc = 1;
    if (!rc && split_mode(&vk) == 2) {
        setenv("DUET_VK_ATTENTION", "split-shared", 1);
        if (duet_vulkan_device_create(-1, NULL, 1, &vk_shared.d) ||
            duet_dev_stream_create(vk_shared.d, &vk_shared.s))
            rc = 1;
    }
    unsetenv("DUET_VK_ATTENTION");
    unsetenv("DUET_VK_ATTN_PART");
    if (rc)
        fprintf(stderr, "test_vulkan_attention: setup failed: %s\n", duet_last_error());
    return rc;
}

/* Close vk_shared and, unless keep_vk, vk; 1 if either had validation
 * messages. */
static int close_devices(int keep_vk)
{
    int validation = 0;
    side *all[2] = {&vk_shared, keep_vk ? NULL : &vk};
    for (int i = 0; i < 2; i++) {
        if (!all[i] || !all[i]->d)
            continue;
        duet_dev_stream_destroy(all[i]->d, all[i]->s);
        validation |= duet_vulkan_validation_errors(all[i]->d) != 0;
        duet_device_close(all[i]->d);
        all[i]->d = NULL;
    }
    return validation;
}

int main(void)
{
    unsetenv("DUET_VK_ATTN_PART"); /* the first group checks the default */
    setenv("DUET_VK_ATTENTION", "split", 1);
    int rc = vk_fixture_open("test_vulkan_attention", &vk, &cpu);
    if (rc)
        return rc;
    if (open_devices(NULL))
        return 1;
    setenv("DUET_VK_ATTENTION", "basic", 1);
    if (duet_vulkan_device_create(-1, NULL, 1, &vk_basic.d) ||
        duet_dev_stream_create(vk_basic.d, &vk_basic.s)) {
        fprintf(stderr, "test_vulkan_attention: the default-path device: %s\n",
                duet_last_error());
        return 1;
    }
    unsetenv("DUET_VK_ATTENTION");
    if (split_mode(&vk_basic) != 0) {
        fprintf(stderr, "test_vulkan_attention: DUET_VK_ATTENTION=basic took the split path\n");
        return 1;
    }
    const struct CMUnitTest every[] = {
        cmocka_unit_test(test_selection),
        cmocka_unit_test(test_decode_contexts),
        cmocka_unit_test(test_long_context),
        cmocka_unit_test(test_scalar_loads),
        cmocka_unit_test(test_single_partition),
        cmocka_unit_test(test_wide_table),
        cmocka_unit_test(test_mixed_batch),
        cmocka_unit_test(test_mixed_short),
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_bad_metadata),
        cmocka_unit_test(test_bound_wide_table),
        cmocka_unit_test(test_bound_exceeded),
        cmocka_unit_test(test_pipelines_follow_part),
        cmocka_unit_test(test_bad_part_env),
    };
    /* 128 and 256 keys per partition: the tests whose cuts depend on it. */
    const struct CMUnitTest per_part[] = {
        cmocka_unit_test(test_decode_contexts),
        cmocka_unit_test(test_single_partition),
        cmocka_unit_test(test_mixed_short),
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_bad_metadata),
        cmocka_unit_test(test_bound_exceeded),
        cmocka_unit_test(test_pipelines_follow_part),
    };
    int failed = cmocka_run_group_tests_name("part 64 (default)", every, NULL, NULL);
    int validation = close_devices(1);
    static const char *const parts[] = {"128", "256"};
    for (int i = 0; i < 2 && !validation; i++) {
        validation |= close_devices(0);
        if (open_devices(parts[i]))
            return 1;
        if (part_of(&vk) != atoi(parts[i])) {
            fprintf(stderr, "test_vulkan_attention: DUET_VK_ATTN_PART=%s gave %d\n", parts[i],
                    part_of(&vk));
            return 1;
        }
        char name[32];
        snprintf(name, sizeof name, "part %s", parts[i]);
        failed += cmocka_run_group_tests_name(name, per_part, NULL, NULL);
        validation |= close_devices(1);
    }
    duet_dev_stream_destroy(vk_basic.d, vk_basic.s);
    validation |= duet_vulkan_validation_errors(vk_basic.d) != 0;
    duet_device_close(vk_basic.d);
    return vk_fixture_close(&vk, &cpu, failed) || validation ? 1 : 0;
}
