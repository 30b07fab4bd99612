/*
 * The batched engine on the real default model: batch invariance (a
 * request's logits at every step are bitwise the same alone and among 32
 * concurrent requests with staggered arrivals and mixed lengths), chunked
 * prefill with chunk sizes 1, 7, 64 and whole gives bitwise the same
 * logits, a prefix-cache hit gives bitwise the same logits as a miss,
 * preemption under a tiny KV pool gives the same tokens as a large pool,
 * async scheduling gives the same tokens as sync, aborts free every
 * block, and bad requests are rejected at submission.
 *
 * CTest runs it twice: on the default model on the CPU, and as
 * test_engine_vulkan on a tiny seeded dummy model on the Vulkan backend
 * (tests/default_model.h reads DUET_TEST_DEVICE / DUET_TEST_DUMMY_CONFIG).
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

#include "duet.h"
#include "../default_model.h"

static duet_model *model;
static int vocab;

/* Everything one request produced: tokens and the logits of each step. */
typedef struct trace {
    int32_t tokens[256];
    float *logits; /* [n][vocab] */
    int n;
    duet_finish finish;
    int n_cached;
} trace;

static void on_output(void *user, const duet_request_output *out)
{
    trace *t = user;
    if (out->n_new_tokens == 1) {
        assert_true(t->n < 256);
        t->tokens[t->n] = out->new_tokens[0];
        if (out->logits) {
            t->logits = realloc(t->logits, sizeof(float) * (size_t)vocab * (t->n + 1));
            memcpy(t->logits + (size_t)t->n * vocab, out->logits, sizeof(float) * vocab);
        }
        t->n++;
    }
    t->finish = out->finish;
    if (out->finish)
        t->n_cached = out->n_cached_tokens;
}

static int setup(void **state)
{
    (void)state;
    if (!(model = duet_test_load_model()))
        return -1;
    vocab = duet_model_vocab_size(model);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    duet_model_free(model);
    return 0;
}

/* Deterministic prompt i of length len. */
static void prompt_ids(int i, int len, int32_t *ids)
{
    unsigned seed = 1000u + (unsigned)i;
    for (int t = 0; t < len; t++)
        ids[t] = 100 + rand_r(&seed) % (vocab - 100);
}

static duet_engine *engine(int max_seqs, int budget, int threshold, uint64_t kv_bytes,
                           int prefix_caching)
{
    duet_engine_options o = {.max_num_seqs = max_seqs, .max_num_batched_tokens = budget,
                             .max_model_len = 512, .long_prefill_token_threshold = threshold,
                             .kv_cache_memory = kv_bytes, .return_logits = 1,
                             .disable_prefix_caching = !prefix_caching};
    duet_engine *e = NULL;
    if (duet_engine_create(model, &o, &e))
        fail_msg("engine: %s", duet_last_error());
    return e;
}

static void add(duet_engine *e, int i, int len, int max_tokens, trace *t)
{
    int32_t ids[512];
    prompt_ids(i, len, ids);
    duet_request_params p = {.max_tokens = max_tokens, .ignore_eos = 1, .has_seed = 1,
                             .seed = (uint64_t)i};
    if (duet_engine_add_request(e, ids, (size_t)len, &p, on_output, t))
        fail_msg("add: %s", duet_last_error());
}

static void assert_same(const trace *a, const trace *b, const char *what, int i)
{
    if (a->n != b->n)
        fail_msg("%s, request %d: %d vs %d tokens", what, i, a->n, b->n);
    for (int s = 0; s < a->n; s++) {
        if (a->tokens[s] != b->tokens[s])
            fail_msg("%s, request %d: token %d differs (%d vs %d)", what, i, s, a->tokens[s],
                     b->tokens[s]);
        if (memcmp(a->logits + (size_t)s * vocab, b->logits + (size_t)s * vocab,
                   sizeof(float) * vocab) != 0)
            fail_msg("%s, request %d: logits of step %d are not bitwise equal", what, i, s);
    }
}

static void assert_idle_and_empty(duet_engine *e)
{
    duet_engine_stats st;
    duet_engine_get_stats(e, &st);
    assert_int_equal(st.num_running, 0);
    assert_int_equal(st.num_waiting, 0);
    assert_int_equal(st.kv_blocks_used, 0);
}

/* Bytes of KV cache per block of this model (engine() gives 64 MiB). */
static uint64_t kv_bytes_per_block(void)
{
    duet_engine *probe = engine(1, 16, 0, 64ull << 20, 0);
    duet_engine_stats st;
    duet_engine_get_stats(probe, &st);
    duet_engine_free(probe);
    return (64ull << 20) / (uint64_t)st.kv_blocks_total;
}

enum { N_REQ = 32, GEN = 8 };

static int req_len(int i) { return 5 + (i * 37) % 90; }

static void test_batch_invariance(void **state)
{
    (void)state;
    static trace alone[N_REQ], batched[N_REQ];
    memset(alone, 0, sizeof alone);
    memset(batched, 0, sizeof batched);
    for (int i = 0; i < N_REQ; i++) {
        duet_engine *e = engine(4, 256, 0, 64ull << 20, 0);
        add(e, i, req_len(i), GEN, &alone[i]);
        assert_int_equal(duet_engine_run(e), DUET_OK);
        assert_int_equal(alone[i].n, GEN);
        duet_engine_free(e);
    }
    /* All 32 together, arriving over the first steps, budget forcing
     * chunked prefill next to decodes. */
    duet_engine *e = engine(32, 128, 0, 64ull << 20, 0);
    int next = 0;
    while (next < N_REQ || duet_engine_has_work(e)) {
        for (int k = 0; k < 3 && next < N_REQ; k++, next++)
            add(e, next, req_len(next), GEN, &batched[next]);
        assert_int_equal(duet_engine_step(e), DUET_OK);
    }
    for (int i = 0; i < N_REQ; i++)
        assert_same(&alone[i], &batched[i], "alone vs batched", i);
    assert_idle_and_empty(e);
    duet_engine_free(e);
    for (int i = 0; i < N_REQ; i++) {
        free(alone[i].logits);
        free(batched[i].logits);
    }
}

static void test_chunked_prefill_sizes(void **state)
{
    (void)state;
    const int len = 150;
    const int chunks[] = {0 /* whole */, 1, 7, 64};
    trace t[4];
    memset(t, 0, sizeof t);
    for (int c = 0; c < 4; c++) {
        duet_engine *e = engine(4, 256, chunks[c], 64ull << 20, 0);
        add(e, 77, len, 4, &t[c]);
        assert_int_equal(duet_engine_run(e), DUET_OK);
        duet_engine_stats st;
        duet_engine_get_stats(e, &st);
        if (chunks[c] > 0) /* one prefill step per chunk, then decodes */
            assert_int_equal(st.steps, (len + chunks[c] - 1) / chunks[c] + 3);
        duet_engine_free(e);
    }
    for (int c = 1; c < 4; c++)
        assert_same(&t[0], &t[c], "whole vs chunked prefill", chunks[c]);
    for (int c = 0; c < 4; c++)
        free(t[c].logits);
}

static void test_prefix_cache_hit_same_logits(void **state)
{
    (void)state;
    trace first = {0}, second = {0};
    duet_engine *e = engine(4, 256, 0, 64ull << 20, 1);
    add(e, 5, 100, 4, &first);
    assert_int_equal(duet_engine_run(e), DUET_OK);
    add(e, 5, 100, 4, &second);
    assert_int_equal(duet_engine_run(e), DUET_OK);
    assert_int_equal(first.n_cached, 0);
    assert_int_equal(second.n_cached, 96); /* 6 full blocks; the last token recomputed */
    duet_engine_stats st;
    duet_engine_get_stats(e, &st);
    assert_int_equal(st.prefix_hits, 96);
    assert_same(&first, &second, "prefix miss vs hit", 5);
    assert_idle_and_empty(e);
    duet_engine_free(e);
    free(first.logits);
    free(second.logits);
}

static void test_preemption_same_tokens(void **state)
{
    (void)state;
    enum { N = 8 };
    trace big[N], tiny[N];
    memset(big, 0, sizeof big);
    memset(tiny, 0, sizeof tiny);
    duet_engine *e = engine(8, 256, 0, 64ull << 20, 0);
    for (int i = 0; i < N; i++)
        add(e, i, 40, 24, &big[i]);
    assert_int_equal(duet_engine_run(e), DUET_OK);
    duet_engine_free(e);
    /* 24 blocks of 16: one request needs 4; 8 together need 32. */
    uint64_t per_block = kv_bytes_per_block();
    duet_engine_options o = {.max_num_seqs = 8, .max_num_batched_tokens = 256,
                             .max_model_len = 64, .kv_cache_memory = per_block * 24,
                             .return_logits = 1, .disable_prefix_caching = 1};
    assert_int_equal(duet_engine_create(model, &o, &e), DUET_OK);
    for (int i = 0; i < N; i++)
        add(e, i, 40, 24, &tiny[i]);
    assert_int_equal(duet_engine_run(e), DUET_OK);
    duet_engine_stats st;
    duet_engine_get_stats(e, &st);
    print_message("preemptions with 24 blocks: %llu\n", (unsigned long long)st.num_preemptions);
    assert_true(st.num_preemptions > 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(tiny[i].n, 24);
        assert_memory_equal(big[i].tokens, tiny[i].tokens, sizeof(int32_t) * 24);
    }
    assert_idle_and_empty(e);
    duet_engine_free(e);
    for (int i = 0; i < N; i++) {
        free(big[i].logits);
        free(tiny[i].logits);
    }
}

/* Async scheduling (step N+1 queued behind N with placeholder tokens)
 * changes no token: 12 requests mixing greedy, seeded top-p sampling and
 * penalties, on a pool of 20 blocks (they need 48) so both runs preempt. */
static void test_async_equals_sync(void **state)
{
    (void)state;
    enum { N = 12 };
    static trace t[2][N];
    memset(t, 0, sizeof t);
    uint64_t preemptions[2], per_block = kv_bytes_per_block();
    for (int mode = 0; mode < 2; mode++) {
        duet_engine_options o = {.max_num_seqs = 8, .max_num_batched_tokens = 64,
                                 .max_model_len = 64, .kv_cache_memory = per_block * 20,
                                 .disable_prefix_caching = 1,
                                 .disable_async_scheduling = mode};
        duet_engine *e = NULL;
        if (duet_engine_create(model, &o, &e))
            fail_msg("engine: %s", duet_last_error());
        for (int i = 0; i < N; i++) {
            int32_t ids[40];
            prompt_ids(200 + i, 40, ids);
            duet_request_params p = {.max_tokens = 24, .ignore_eos = 1};
            if (i % 3 != 0) {
                p.temperature = 0.8f;
                p.top_p = 0.9f;
                p.has_seed = 1;
                p.seed = 7000 + (uint64_t)i;
            }
            if (i % 4 == 2) {
                p.repetition_penalty = 1.3f;
                p.presence_penalty = 0.5f;
                p.frequency_penalty = 0.25f;
            }
            if (duet_engine_add_request(e, ids, 40, &p, on_output, &t[mode][i]))
                fail_msg("add: %s", duet_last_error());
            if (i % 4 == 3 && duet_engine_step(e))
                fail_msg("step: %s", duet_last_error());
        }
        if (duet_engine_run(e))
            fail_msg("run: %s", duet_last_error());
        duet_engine_stats st;
        duet_engine_get_stats(e, &st);
        preemptions[mode] = st.num_preemptions;
        assert_idle_and_empty(e);
        duet_engine_free(e);
    }
    print_message("preemptions: async %llu, sync %llu\n", (unsigned long long)preemptions[0],
                  (unsigned long long)preemptions[1]);
    assert_true(preemptions[0] > 0 && preemptions[1] > 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(t[0][i].n, 24);
        assert_int_equal(t[1][i].n, 24);
        if (memcmp(t[0][i].tokens, t[1][i].tokens, sizeof(int32_t) * 24) != 0)
            fail_msg("request %d: async and sync tokens differ", i);
    }
}

static void test_abort_frees_blocks(void **state)
{
    (void)state;
    trace a = {0}, b = {0};
    duet_engine *e = engine(4, 32, 0, 64ull << 20, 1);
    duet_request_params p = {.request_id = "decoding", .max_tokens = 50, .ignore_eos = 1};
    int32_t ids[300];
    prompt_ids(1, 300, ids);
    assert_int_equal(duet_engine_add_request(e, ids, 20, &p, on_output, &b), DUET_OK);
    p.request_id = "long-prefill";
    assert_int_equal(duet_engine_add_request(e, ids, 300, &p, on_output, &a), DUET_OK);
    for (int s = 0; s < 4; s++) /* mid-prefill of the first, decoding the second */
        assert_int_equal(duet_engine_step(e), DUET_OK);
    assert_int_equal(duet_engine_abort(e, "long-prefill"), DUET_OK);
    assert_int_equal(duet_engine_abort(e, "decoding"), DUET_OK);
    assert_int_equal(duet_engine_abort(e, "nobody"), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "'nobody'"));
    assert_int_equal(duet_engine_run(e), DUET_OK);
    assert_int_equal(a.finish, DUET_FINISHED_ABORT);
    assert_int_equal(b.finish, DUET_FINISHED_ABORT);
    assert_true(b.n > 0 && b.n < 50);
    assert_int_equal(a.n, 0); /* aborted before its prefill finished */
    assert_idle_and_empty(e);
    duet_engine_free(e);
    free(a.logits);
    free(b.logits);
}

static void test_bad_requests(void **state)
{
    (void)state;
    duet_engine *e = engine(4, 256, 0, 64ull << 20, 1);
    int32_t ids[600] = {0};
    duet_request_params p = {.max_tokens = 4};
    assert_int_equal(duet_engine_add_request(e, ids, 0, &p, NULL, NULL), DUET_ERR_INVALID_ARG);
    assert_int_equal(duet_engine_add_request(e, ids, 600, &p, NULL, NULL), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "600"));
    assert_non_null(strstr(duet_last_error(), "512"));
    p.max_tokens = 0;
    assert_int_equal(duet_engine_add_request(e, ids, 4, &p, NULL, NULL), DUET_ERR_INVALID_ARG);
    p.max_tokens = 4;
    ids[1] = vocab;
    assert_int_equal(duet_engine_add_request(e, ids, 4, &p, NULL, NULL), DUET_ERR_INVALID_ARG);
    ids[1] = 0;
    p.request_id = "same";
    assert_int_equal(duet_engine_add_request(e, ids, 4, &p, NULL, NULL), DUET_OK);
    assert_int_equal(duet_engine_add_request(e, ids, 4, &p, NULL, NULL), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "already in use"));
    /* The engine keeps serving. */
    assert_int_equal(duet_engine_run(e), DUET_OK);
    assert_idle_and_empty(e);
    duet_engine_free(e);
}

static void test_kv_too_small_for_max_model_len(void **state)
{
    (void)state;
    duet_engine_options o = {.max_model_len = 8192, .kv_cache_memory = 1 << 20};
    duet_engine *e = (duet_engine *)1;
    assert_int_equal(duet_engine_create(model, &o, &e), DUET_ERR_OUT_OF_MEMORY);
    assert_null(e);
    assert_non_null(strstr(duet_last_error(), "8192"));
    assert_non_null(strstr(duet_last_error(), "--kv-cache-memory"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_chunked_prefill_sizes),
        cmocka_unit_test(test_prefix_cache_hit_same_logits),
        cmocka_unit_test(test_preemption_same_tokens),
        cmocka_unit_test(test_async_equals_sync),
        cmocka_unit_test(test_abort_frees_blocks),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_kv_too_small_for_max_model_len),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
