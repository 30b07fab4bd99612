/*
 * test_vulkan_sample.c — the Vulkan sample op (shaders/sample.comp) against
 * the CPU reference kernel, bit for bit (docs/SAMPLING.md): token, rank,
 * logprob, n_top, the top ids and logprobs (the whole result struct), the
 * processed logits in work, and tokens_out. Both devices are opened
 * through the public device API; outputs are poisoned first. Random
 * batches cover every parameter (greedy, temperature, top-k, top-p, min-p,
 * penalties with PROMPT/MASK/count edits, logit bias, forced tokens,
 * n_logprobs -1..20, NaN and -inf logits, ties, vocabularies 1 to 49152);
 * hand-made rows put the top-k and top-p cuts inside runs of equal logits.
 * The GPU's dexp, dlog, Gumbel noise and Philox are also swept against the
 * C versions through the shader's test variant.
 *
 * Runs with the Khronos validation layer (DUET_VK_VALIDATION=1 unless the
 * environment says otherwise) and fails on any validation message.
 * Exits 77 (skipped) when there is no Vulkan device.
 */
#include <stdio.h>
#include <time.h>

#include "sample_fixture.h"
#include "vk_internal.h" /* the math-check hook */
#include "vulkan_backend.h"
#include "vulkan_fixture.h"

static side cpu, vk;

/* ---- random rows (the CPU tests' generator, with every vocabulary) ------------------ */

static uint32_t rnd(void) { return rng_u32(); }
static float rndf(void) { return (float)(rnd() >> 8) * (1.0f / 16777216.0f); } /* [0,1) */


/* ---- running the op on a device ----------------------------------------------------- */

typedef struct outputs {
    duet_sample_result *res; /* [n_rows] */
    float *work;             /* [n_rows][vocab] */
    int32_t *tokens;         /* [n_rows], or NULL when tokens_out was absent */
} outputs;

static void outputs_free(outputs *o)
{
    free(o->res);
    free(o->work);
    free(o->tokens);
}

static duet_buffer *mk(side *x, const void *src, size_t n)
{
    duet_buffer *b = NULL;
    assert_int_equal(duet_dev_buffer_alloc(x->d, n ? n : 4, &b), DUET_OK);
    if (n) {
        void *fill = NULL;
        if (!src) {
            fill = malloc(n);
            memset(fill, 0xa5, n); /* poison */
            src = fill;
        }
        assert_int_equal(duet_dev_buffer_write(x->d, at(b), src, n), DUET_OK);
        free(fill);
    }
    return b;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static outputs run_side(side *x, const batch *b, int with_tokens)
{
    size_t plane = sizeof(float) * (size_t)b->n_rows * (size_t)b->vocab;
    size_t res_bytes = sizeof(duet_sample_result) * (size_t)b->n_rows;
    size_t tok_bytes = sizeof(int32_t) * (size_t)b->n_rows;
    duet_buffer *bl = mk(x, b->logits, plane);
    duet_buffer *br = mk(x, b->rows, sizeof *b->rows * (size_t)b->n_rows);
    duet_buffer *be = mk(x, b->edits, sizeof *b->edits * (size_t)b->n_edits);
    duet_buffer *bw = mk(x, NULL, plane), *bo = mk(x, NULL, res_bytes);
    duet_buffer *bt = mk(x, NULL, tok_bytes);
    outputs o = {malloc(res_bytes), malloc(plane), with_tokens ? malloc(tok_bytes) : NULL};
    memset(o.res, 0x5a, res_bytes);
    memset(o.work, 0x5a, plane);
    assert_int_equal(duet_dev_stream_begin(x->d, x->s), DUET_OK);
    duet_sample_args a = {.logits = at(bl), .rows = at(br), .edits = at(be), .work = at(bw),
                          .results = at(bo), .n_rows = b->n_rows, .vocab = b->vocab,
                          .n_edits = b->n_edits};
    if (!b->n_edits)
        a.edits = (duet_addr){NULL, 0};
    if (with_tokens)
        a.tokens_out = at(bt);
    assert_int_equal(duet_dev_sample(x->d, x->s, &a), DUET_OK);
    assert_int_equal(duet_dev_download(x->d, x->s, at(bo), o.res, res_bytes), DUET_OK);
    assert_int_equal(duet_dev_download(x->d, x->s, at(bw), o.work, plane), DUET_OK);
    if (with_tokens) {
        memset(o.tokens, 0x5a, tok_bytes);
        assert_int_equal(duet_dev_download(x->d, x->s, at(bt), o.tokens, tok_bytes), DUET_OK);
    }
    assert_int_equal(duet_dev_stream_submit(x->d, x->s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(x->d, x->s), DUET_OK);
    duet_buffer *all[] = {bl, br, be, bw, bo, bt};
    for (int i = 0; i < 6; i++)
        duet_dev_buffer_free(x->d, all[i]);
    return o;
}

static void check_validation(void)
{
    int n = duet_vulkan_validation_errors(vk.d);
    if (n != 0)
        fail_msg("the Vulkan validation layer reported %d message(s) (see stderr)", n);
}

/* Every output of the Vulkan op equals the CPU reference's, bit for bit
 * (NaN in work compared as NaN). */
static void assert_same_outputs(const char *what, const batch *b, const outputs *got,
                                const outputs *want)
{
    for (int r = 0; r < b->n_rows; r++) {
        const duet_sample_result *g = &got->res[r], *w = &want->res[r];
        if (memcmp(g, w, sizeof *g) != 0) {
            int j = 0;
            while (j < DUET_SAMPLE_MAX_LOGPROBS && g->top_ids[j] == w->top_ids[j] &&
                   memcmp(&g->top_logprobs[j], &w->top_logprobs[j], 4) == 0)
                j++;
            char top[128] = "the same top entries";
            if (j < DUET_SAMPLE_MAX_LOGPROBS)
                snprintf(top, sizeof top, "top entry %d: Vulkan id %d %a, CPU id %d %a", j,
                         g->top_ids[j], g->top_logprobs[j], w->top_ids[j], w->top_logprobs[j]);
            fail_msg("%s row %d (vocab %d): Vulkan gives token %d rank %d logprob %a n_top %d;"
                     " the CPU gives token %d rank %d logprob %a n_top %d; %s",
                     what, r, b->vocab, g->token, g->rank, g->logprob, g->n_top, w->token,
                     w->rank, w->logprob, w->n_top, top);
        }
        if (got->tokens && got->tokens[r] != w->token)
            fail_msg("%s row %d: tokens_out is %d, the token %d", what, r, got->tokens[r],
                     w->token);
    }
    size_t n = (size_t)b->n_rows * (size_t)b->vocab;
    for (size_t i = 0; i < n; i++) {
        float g = got->work[i], w = want->work[i];
        if ((isnan(g) && isnan(w)) || memcmp(&g, &w, sizeof g) == 0)
            continue;
        fail_msg("%s: work element %zu (row %zu) is %a, the CPU has %a", what, i,
                 i / (size_t)b->vocab, g, w);
    }
}

/* Run b on both devices and compare; with_tokens alternates. */
static void compare(const char *what, const batch *b, int with_tokens)
{
    outputs want = run_side(&cpu, b, 0), got = run_side(&vk, b, with_tokens);
    assert_same_outputs(what, b, &got, &want);
    outputs_free(&want);
    outputs_free(&got);
}

/* ---- the building blocks on the GPU ------------------------------------------------- */

/* dexp, dlog, gumbel and Philox of the shader's test variant against the C
 * versions, 2^21 inputs each: dexp over every 512th float in [-88, 0] and
 * the edges, dlog over every 1024th positive finite float, the noise over
 * one uniform of each run of 4 (random within it) and both extremes,
 * Philox on random counters and keys. */
static void test_math_building_blocks(void **state)
{
    (void)state;
    enum { N = 1 << 21, ROWS = 4 };
    uint32_t *in = malloc(sizeof(uint32_t) * N * ROWS), *out = malloc(sizeof(uint32_t) * N * ROWS);
    uint32_t *dx = in, *lg = in + N, *gw = in + 2 * N, *ph = in + 3 * N;
    const uint32_t lo = 0x80000000u, hi = 0xc2b00000u; /* -0 .. -88 */
    for (uint32_t i = 0; i < N; i++) {
        uint32_t u = lo + (uint32_t)((uint64_t)i * (hi - lo) / N);
        dx[i] = u;
        lg[i] = (uint32_t)((uint64_t)i * 0x7f800000u / N);
        gw[i] = (((i << 2) | (rnd() & 3u)) << 9) | (rnd() & 0x1ffu);
        ph[i] = rnd();
    }
    const float specials[] = {0.0f, -0.0f, -87.0f, -INFINITY, NAN, -87.00001f, 1.0f, -1.0f};
    for (int i = 0; i < 8; i++) {
        memcpy(&dx[i], &specials[i], 4);
        float v = i < 2 ? 0.0f : (float)i * 0.25f;
        memcpy(&lg[N - 1 - i], &v, 4);
    }
    lg[0] = 0x00000001u; /* subnormal: -inf */
    lg[1] = 0x00800000u; /* FLT_MIN */
    lg[2] = 0x3f800000u; /* 1 */
    gw[0] = 0;           /* the smallest uniform */
    gw[N - 1] = 0xffffffffu; /* the largest */
    duet_buffer *bi = mk(&vk, in, sizeof(uint32_t) * N * ROWS);
    duet_buffer *bo = mk(&vk, NULL, sizeof(uint32_t) * N * ROWS);
    assert_int_equal(duet_dev_stream_begin(vk.d, vk.s), DUET_OK);
    assert_int_equal(duet_vk_sample_math_check(vk.d, vk.s, at(bi), at(bo), ROWS, N), DUET_OK);
    assert_int_equal(duet_dev_download(vk.d, vk.s, at(bo), out, sizeof(uint32_t) * N * ROWS),
                     DUET_OK);
    assert_int_equal(duet_dev_stream_submit(vk.d, vk.s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(vk.d, vk.s), DUET_OK);
    for (uint32_t i = 0; i < N; i++) {
        uint32_t want[ROWS];
        want[0] = duet_sm_bits(duet_sm_dexp(duet_sm_float(dx[i])));
        want[1] = duet_sm_bits(duet_sm_dlog(duet_sm_float(lg[i])));
        want[2] = duet_sm_bits(duet_sm_gumbel(gw[i]));
        uint32_t u = ph[i], ctr[4] = {u, i, 3, u ^ i}, key[2] = {~u, i}, r[4];
        duet_sm_philox4x32(ctr, key, r);
        want[3] = r[u % 4];
        const char *name[ROWS] = {"dexp", "dlog", "gumbel", "philox"};
        const uint32_t *src[ROWS] = {dx, lg, gw, ph};
        for (int k = 0; k < ROWS; k++)
            if (out[(size_t)k * N + i] != want[k])
                fail_msg("%s(0x%08x): the GPU gives 0x%08x, the C version 0x%08x", name[k],
                         src[k][i], out[(size_t)k * N + i], want[k]);
    }
    /* Philox's known answer goes through the same code. */
    uint32_t z[4] = {0, 0, 0, 0}, kz[2] = {0, 0}, r[4];
    duet_sm_philox4x32(z, kz, r);
    assert_int_equal(r[0], 0x6627e8d5u);
    duet_dev_buffer_free(vk.d, bi);
    duet_dev_buffer_free(vk.d, bo);
    free(in);
    free(out);
    check_validation();
}

/* ---- random batches ------------------------------------------------------------------ */

static void test_random_batches(void **state)
{
    (void)state;
    const int vocabs[] = {1, 2, 3, 7, 31, 256, 257, 1000, 4099, 49152};
    enum { N_VOCABS = sizeof vocabs / sizeof vocabs[0] };
    for (int round = 0; round < 150; round++) {
        int vocab = vocabs[round % N_VOCABS];
        int n_rows = 1 + (int)(rnd() % (vocab > 10000 ? 6 : 12)), n_edits = (int)(rnd() % 40);
        batch b = batch_new(n_rows, vocab, n_edits);
        int cursor = 0;
        for (int r = 0; r < n_rows; r++) {
            int style = (int)(rnd() % N_STYLES);
            fill_logits(b.logits + (size_t)r * vocab, vocab, style);
            b.rows[r] = random_row(vocab, n_edits, &cursor);
        }
        random_edits(b.edits, n_edits, vocab);
        char what[32];
        snprintf(what, sizeof what, "round %d", round);
        compare(what, &b, round % 2);
        batch_free(&b);
    }
    check_validation();
}

/* ---- hand-made rows ------------------------------------------------------------------ */

/* Rows whose top-k and top-p cuts fall inside a run of equal logits, so the
 * cut is decided among ids; and rows where one token holds the cut's key. */
static void test_cuts_in_ties(void **state)
{
    (void)state;
    enum { V = 1000, R = 24 };
    batch b = batch_new(R, V, 0);
    for (int r = 0; r < R; r++) {
        float *x = b.logits + (size_t)r * V;
        for (int i = 0; i < V; i++)
            x[i] = (i * 7 + r) % 3 == 0 ? 1.0f : (i % 5 == 0 ? 0.5f : -2.0f);
        if (r % 4 == 3)
            x[(r * 37) % V] = 4.0f; /* one best token */
        duet_request_params p = {.temperature = 0.5f + 0.1f * (float)(r % 5)};
        if (r % 2 == 0)
            p.top_p = 0.1f + 0.8f * (float)r / R;
        if (r % 3 != 2)
            p.top_k = 1 + (r * 53) % 400;
        b.rows[r] = make_row(&p, V, 1000 + (uint64_t)r, (uint32_t)r);
        b.rows[r].n_logprobs = r % 3 == 0 ? 20 : r % 3 == 1 ? 5 : -1;
    }
    compare("ties", &b, 1);
    batch_free(&b);
    check_validation();
}

/* Random rows of few distinct logits with both top-k and top-p on: the
 * two cuts, one after the other, often fall inside the same run of ties. */
static void test_random_chained_cuts_in_ties(void **state)
{
    (void)state;
    const int vocabs[] = {7, 100, 1000, 4099};
    for (int round = 0; round < 40; round++) {
        int vocab = vocabs[round % 4], n_rows = 16, levels = 2 + (int)(rnd() % 4);
        batch b = batch_new(n_rows, vocab, 0);
        for (int r = 0; r < n_rows; r++) {
            float *x = b.logits + (size_t)r * vocab;
            for (int i = 0; i < vocab; i++)
                x[i] = (float)(rnd() % (unsigned)levels) * 0.75f;
            duet_request_params p = {.temperature = 0.3f + rndf(), .top_p = 0.02f + 0.97f * rndf(),
                                     .top_k = 1 + (int)(rnd() % (unsigned)vocab)};
            b.rows[r] = make_row(&p, vocab, rnd(), rnd());
            b.rows[r].n_logprobs = (int)(rnd() % 21);
        }
        char what[32];
        snprintf(what, sizeof what, "ties round %d", round);
        compare(what, &b, 1);
        batch_free(&b);
    }
    check_validation();
}

/* The top-p cut just above the fast CPU kernel's weak-token bound (as in
 * test_cpu_sample.c), many rows. */
static void test_top_p_among_weak_tokens(void **state)
{
    (void)state;
    enum { V = 1000, R = 64 };
    float top_p = 0.9f;
    uint32_t q = (uint32_t)llround(top_p * 16777216.0);
    double bound = ldexp((double)((1u << 24) - q), 16) / V;
    float weak = (float)log(1.5 * bound / ldexp(1.0, 40));
    batch b = batch_new(R, V, 0);
    duet_request_params p = {.temperature = 1.0f, .top_p = top_p};
    for (int r = 0; r < R; r++) {
        b.logits[(size_t)r * V] = 0.0f;
        for (int i = 1; i < V; i++)
            b.logits[(size_t)r * V + i] = weak - 1e-4f * (float)(i % 50);
        b.rows[r] = make_row(&p, V, 8, (uint32_t)r);
    }
    compare("weak tokens", &b, 0);
    batch_free(&b);
    check_validation();
}

/* top-k keeps light tokens (those the top-p cut cannot reach, whose total
 * weight still counts in S): three heavy tokens of relative weight 1, 0.5,
 * 0.3 and 997 light ones of 4.8e-4 each, top_k 999 and top_p 0.5. S with
 * the light tokens puts the cut after the second token; without them,
 * after the first. */
static void test_top_k_keeps_light_tokens(void **state)
{
    (void)state;
    enum { V = 1000, R = 64 };
    batch b = batch_new(R, V, 0);
    duet_request_params p = {.temperature = 1.0f, .top_p = 0.5f, .top_k = 999};
    for (int r = 0; r < R; r++) {
        float *x = b.logits + (size_t)r * V;
        x[0] = 0.0f;
        x[1] = logf(0.5f);
        x[2] = logf(0.3f);
        for (int i = 3; i < V; i++)
            x[i] = logf(4.8e-4f);
        b.rows[r] = make_row(&p, V, 500 + (uint64_t)r, (uint32_t)r);
    }
    outputs want = run_side(&cpu, &b, 0), got = run_side(&vk, &b, 1);
    int second = 0;
    for (int r = 0; r < R; r++)
        second += want.res[r].token == 1;
    assert_true(second > 0); /* the case is really reached */
    assert_same_outputs("light tokens in C", &b, &got, &want);
    outputs_free(&want);
    outputs_free(&got);
    batch_free(&b);
    check_validation();
}

/* Equal scores go to the lowest id: flat rows at positions where the best
 * 23-bit uniform occurs twice or more (searched here, as the CPU test
 * does), with top-p on (the race over the heavy list, not in id order) and
 * off (the race over the row). */
static void test_score_ties(void **state)
{
    (void)state;
    enum { V = 1024, R = 8 };
    uint32_t key[2] = {0x5eed, 0};
    batch b = batch_new(R, V, 0);
    int found = 0;
    for (uint32_t pos = 0; pos < 400000 && found < R; pos++) {
        if (top_uniform_ties(key, pos, V) < 2)
            continue;
        duet_request_params p = {.temperature = 1.0f, .top_p = found % 2 ? 0.9999f : 0.0f};
        b.rows[found] = make_row(&p, V, 0x5eed, pos);
        found++;
    }
    assert_int_equal(found, R);
    outputs want = run_side(&cpu, &b, 0), got = run_side(&vk, &b, 1);
    assert_same_outputs("score ties", &b, &got, &want);
    outputs_free(&want);
    outputs_free(&got);
    batch_free(&b);
    check_validation();
}

/* Greedy ties, an all -inf row, a NaN row, forced tokens at the edges,
 * min_p 1, every n_logprobs. */
static void test_edge_rows(void **state)
{
    (void)state;
    enum { V = 7, R = 12 };
    batch b = batch_new(R, V, 4);
    for (int r = 0; r < R; r++) {
        float *x = b.logits + (size_t)r * V;
        for (int i = 0; i < V; i++)
            x[i] = r == 1 ? -INFINITY : r == 2 ? NAN : (float)((i + r) % 3);
        duet_request_params p = {.temperature = r % 2 ? 0.0f : 0.8f};
        if (r == 5)
            p.min_p = 1.0f;
        b.rows[r] = make_row(&p, V, 77, (uint32_t)r);
        b.rows[r].forced_token = r == 6 ? 0 : r == 7 ? V - 1 : r == 8 ? V : -1;
        int lp[] = {-1, 0, 5, 20};
        b.rows[r].n_logprobs = lp[r % 4];
        b.rows[r].edit_begin = b.rows[r].edit_end = 0;
    }
    /* Row 9: its best tokens masked, one banned twice, one biased. */
    b.edits[0] = (duet_sample_edit){0, DUET_SAMPLE_EDIT_MASK, 0, 0.0f};
    b.edits[1] = (duet_sample_edit){3, DUET_SAMPLE_EDIT_MASK, 0, 0.0f};
    b.edits[2] = (duet_sample_edit){3, 0, 1, 2.0f};
    b.edits[3] = (duet_sample_edit){6, DUET_SAMPLE_EDIT_PROMPT, 2, -1.0f};
    b.rows[9].edit_begin = 0;
    b.rows[9].edit_end = 4;
    b.rows[9].repetition_penalty = 1.3f;
    b.rows[9].inv_repetition_penalty = 1.0f / 1.3f;
    b.rows[9].frequency_penalty = 0.25f;
    b.rows[9].presence_penalty = 0.5f;
    compare("edge rows", &b, 1);
    batch_free(&b);
    check_validation();
}

/* A batch larger than one binding is split over rows (the binding limit is
 * forced down on a device of its own); a row larger than one binding is
 * refused with a message naming the limit. */
static void test_split_and_too_large(void **state)
{
    (void)state;
    setenv("DUET_VK_MAX_ALLOC", "1048576", 1); /* binding limit about 512 KiB */
    side small = {0};
    duet_status rc = duet_vulkan_device_create(-1, NULL, 1, &small.d);
    unsetenv("DUET_VK_MAX_ALLOC");
    assert_int_equal(rc, DUET_OK);
    assert_int_equal(duet_dev_stream_create(small.d, &small.s), DUET_OK);

    enum { V = 49152, R = 5 }; /* 2 rows per dispatch; the plane fits one allocation */
    batch b = batch_new(R, V, 6);
    int cursor = 0;
    for (int r = 0; r < R; r++) {
        fill_logits(b.logits + (size_t)r * V, V, r % 3);
        b.rows[r] = random_row(V, 6, &cursor);
        b.rows[r].n_logprobs = 5;
    }
    random_edits(b.edits, 6, V);
    outputs want = run_side(&cpu, &b, 0), got = run_side(&small, &b, 1);
    assert_same_outputs("split", &b, &got, &want);
    outputs_free(&want);
    outputs_free(&got);
    batch_free(&b);

    enum { BIG = 200000 }; /* 800 kB a row */
    duet_buffer *bl = mk(&small, NULL, 4 * BIG), *br = mk(&small, NULL, sizeof(duet_sample_row));
    duet_buffer *bw = mk(&small, NULL, 4 * BIG), *bo = mk(&small, NULL, sizeof(duet_sample_result));
    assert_int_equal(duet_dev_stream_begin(small.d, small.s), DUET_OK);
    duet_sample_args a = {.logits = at(bl), .rows = at(br), .work = at(bw), .results = at(bo),
                          .n_rows = 1, .vocab = BIG};
    assert_int_equal(duet_dev_sample(small.d, small.s, &a), DUET_ERR_UNSUPPORTED);
    assert_non_null(strstr(duet_last_error(), "binding limit"));
    assert_int_equal(duet_dev_stream_submit(small.d, small.s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(small.d, small.s), DUET_OK);
    duet_buffer *all[] = {bl, br, bw, bo};
    for (int i = 0; i < 4; i++)
        duet_dev_buffer_free(small.d, all[i]);
    int validation = duet_vulkan_validation_errors(small.d);
    duet_dev_stream_destroy(small.d, small.s);
    duet_device_close(small.d);
    if (validation > 0)
        fail_msg("the Vulkan validation layer reported %d message(s) (see stderr)", validation);
    check_validation();
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median time of a recording holding only the op (buffers made once). */
static double op_ms(side *x, const batch *b)
{
    size_t plane = sizeof(float) * (size_t)b->n_rows * (size_t)b->vocab;
    duet_buffer *bl = mk(x, b->logits, plane);
    duet_buffer *br = mk(x, b->rows, sizeof *b->rows * (size_t)b->n_rows);
    duet_buffer *be = mk(x, b->edits, sizeof *b->edits * (size_t)b->n_edits);
    duet_buffer *bw = mk(x, NULL, plane);
    duet_buffer *bo = mk(x, NULL, sizeof(duet_sample_result) * (size_t)b->n_rows);
    duet_sample_args a = {.logits = at(bl), .rows = at(br), .edits = at(be), .work = at(bw),
                          .results = at(bo), .n_rows = b->n_rows, .vocab = b->vocab,
                          .n_edits = b->n_edits};
    double t[5];
    for (int i = 0; i < 5; i++) {
        double t0 = now();
        assert_int_equal(duet_dev_stream_begin(x->d, x->s), DUET_OK);
        assert_int_equal(duet_dev_sample(x->d, x->s, &a), DUET_OK);
        assert_int_equal(duet_dev_stream_submit(x->d, x->s), DUET_OK);
        assert_int_equal(duet_dev_stream_wait(x->d, x->s), DUET_OK);
        t[i] = (now() - t0) * 1e3;
    }
    duet_buffer *all[] = {bl, br, be, bw, bo};
    for (int i = 0; i < 5; i++)
        duet_dev_buffer_free(x->d, all[i]);
    qsort(t, 5, sizeof *t, cmp_double);
    return t[2];
}

/* The engine's shape: 32 rows of 49152 with top-p 0.9 and penalties (the
 * number in docs/VULKAN.md). */
static void test_engine_shape(void **state)
{
    (void)state;
    enum { V = 49152, R = 32, E = 32 * 8 };
    batch b = batch_new(R, V, E);
    duet_request_params p = {.temperature = 0.8f, .top_p = 0.9f, .repetition_penalty = 1.1f,
                             .presence_penalty = 0.3f, .frequency_penalty = 0.2f};
    for (int r = 0; r < R; r++) {
        fill_logits(b.logits + (size_t)r * V, V, r % 2 ? 0 : 4);
        b.rows[r] = make_row(&p, V, 42 + (uint64_t)r, (uint32_t)r);
        b.rows[r].edit_begin = r * 8;
        b.rows[r].edit_end = r * 8 + 8;
        b.rows[r].n_logprobs = r % 4 == 0 ? 5 : -1;
    }
    random_edits(b.edits, E, V);
    outputs want = run_side(&cpu, &b, 0), got = run_side(&vk, &b, 1);
    assert_same_outputs("engine shape", &b, &got, &want);
    fprintf(stderr, "  sample 32 x 49152, top-p 0.9 + penalties, one op (median of 5): "
                    "Vulkan %.1f ms, CPU reference %.1f ms\n",
            op_ms(&vk, &b), op_ms(&cpu, &b));
    outputs_free(&want);
    outputs_free(&got);
    batch_free(&b);
    check_validation();
}

/* ---- main ------------------------------------------------------------------------ */

int main(void)
{
    int rc = vk_fixture_open("test_vulkan_sample", &vk, &cpu);
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_math_building_blocks),
        cmocka_unit_test(test_edge_rows),
        cmocka_unit_test(test_cuts_in_ties),
        cmocka_unit_test(test_top_p_among_weak_tokens),
        cmocka_unit_test(test_top_k_keeps_light_tokens),
        cmocka_unit_test(test_score_ties),
        cmocka_unit_test(test_random_chained_cuts_in_ties),
        cmocka_unit_test(test_random_batches),
        cmocka_unit_test(test_split_and_too_large),
        cmocka_unit_test(test_engine_shape),
    };
    return vk_fixture_close(&vk, &cpu, cmocka_run_group_tests(tests, NULL, NULL));
}
