/*
 * Sampling through the engine on the real default model: a seeded request
 * gives the same tokens alone and among 32 concurrent requests with other
 * parameters; same seed -> same tokens, other seeds -> other tokens; n = 4
 * shares the prompt's blocks and gives 4 different samples; min_tokens
 * holds EOS back; logit_bias; stop strings (split across tokens, at the
 * first token, kept with include_stop_str_in_output); stop_token_ids;
 * logprobs equal log_softmax of the raw logits; prompt logprobs equal
 * teacher-forced log_softmax; bad parameters name the field.
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

enum { MAXT = 128 };

typedef struct trace {
    int32_t tokens[4][MAXT];
    int n[4];
    duet_finish finish[4];
    char text[4][4096];
    size_t text_len[4];
    char stop_str[4][64];
    int32_t stop_token[4];
    duet_logprobs lp[MAXT];   /* index 0 */
    float *logits;            /* index 0, [n][vocab] */
    duet_logprobs *prompt_lp;
    int n_prompt_lp;
    int outputs_after_finish;
} trace;

static void on_output(void *user, const duet_request_output *out)
{
    trace *t = user;
    int k = out->index;
    assert_true(k >= 0 && k < 4);
    if (t->finish[k])
        t->outputs_after_finish++;
    if (out->n_new_tokens == 1) {
        assert_true(t->n[k] < MAXT);
        if (k == 0 && out->logprobs)
            t->lp[t->n[0]] = out->logprobs[0];
        if (k == 0 && out->logits) {
            t->logits = realloc(t->logits, sizeof(float) * (size_t)vocab * (t->n[0] + 1));
            memcpy(t->logits + (size_t)t->n[0] * vocab, out->logits, sizeof(float) * vocab);
        }
        t->tokens[k][t->n[k]++] = out->new_tokens[0];
    }
    if (out->prompt_logprobs) {
        t->n_prompt_lp = out->n_prompt_logprobs;
        t->prompt_lp = malloc(sizeof *t->prompt_lp * (size_t)out->n_prompt_logprobs);
        memcpy(t->prompt_lp, out->prompt_logprobs,
               sizeof *t->prompt_lp * (size_t)out->n_prompt_logprobs);
    }
    assert_true(t->text_len[k] + out->text_len < sizeof t->text[k]);
    memcpy(t->text[k] + t->text_len[k], out->text, out->text_len);
    t->text_len[k] += out->text_len;
    t->text[k][t->text_len[k]] = 0;
    if (out->finish) {
        t->finish[k] = out->finish;
        snprintf(t->stop_str[k], sizeof t->stop_str[k], "%s", out->stop_str ? out->stop_str : "");
        t->stop_token[k] = out->stop_token;
    }
}

static void trace_free(trace *t)
{
    free(t->logits);
    free(t->prompt_lp);
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

static duet_engine *engine_mode(int max_seqs, int return_logits, int sync)
{
    duet_engine_options o = {.max_num_seqs = max_seqs, .max_num_batched_tokens = 256,
                             .max_model_len = 512, .kv_cache_memory = 64ull << 20,
                             .return_logits = return_logits, .disable_async_scheduling = sync};
    duet_engine *e = NULL;
    if (duet_engine_create(model, &o, &e))
        fail_msg("engine: %s", duet_last_error());
    return e;
}

static duet_engine *engine(int max_seqs, int return_logits)
{
    return engine_mode(max_seqs, return_logits, 0);
}

static int tokenize(const char *text, int32_t *ids, int cap)
{
    size_t n = 0;
    if (duet_tokenize(model, text, strlen(text), 0, 0, ids, (size_t)cap, &n))
        fail_msg("tokenize: %s", duet_last_error());
    return (int)n;
}

static void add_text(duet_engine *e, const char *prompt, const duet_request_params *p, trace *t)
{
    int32_t ids[512];
    int n = tokenize(prompt, ids, 512);
    if (duet_engine_add_request(e, ids, (size_t)n, p, on_output, t))
        fail_msg("add: %s", duet_last_error());
}

static const char *PROMPTS[] = {
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "List three colors:",
};

static duet_request_params sampled(uint64_t seed, int max_tokens)
{
    return (duet_request_params){.max_tokens = max_tokens, .temperature = 0.8f, .top_p = 0.9f,
                                 .top_k = 50, .repetition_penalty = 1.1f,
                                 .presence_penalty = 0.2f, .frequency_penalty = 0.1f,
                                 .has_seed = 1, .seed = seed, .ignore_eos = 1};
}

static void test_seeded_alone_vs_batch_of_32(void **state)
{
    (void)state;
    trace *alone = calloc(1, sizeof *alone), *batched = calloc(32, sizeof *batched);
    duet_request_params p = sampled(42, 24);
    duet_engine *e = engine(32, 0);
    add_text(e, PROMPTS[1], &p, alone);
    assert_int_equal(duet_engine_run(e), DUET_OK);
    duet_engine_free(e);
    assert_int_equal(alone->n[0], 24);

    /* Request 17 is the same; the others differ in prompt and parameters. */
    e = engine(32, 0);
    for (int i = 0; i < 32; i++) {
        duet_request_params q = sampled(1000 + (uint64_t)i, 8 + i % 20);
        q.temperature = 0.3f + 0.05f * (float)(i % 10);
        q.top_k = i % 3 ? 0 : 20;
        q.min_p = i % 4 ? 0.0f : 0.05f;
        if (i == 17)
            q = p;
        add_text(e, i == 17 ? PROMPTS[1] : PROMPTS[i % 4], &q, &batched[i]);
        if (i % 5 == 0)
            assert_int_equal(duet_engine_step(e), DUET_OK);
    }
    assert_int_equal(duet_engine_run(e), DUET_OK);
    assert_int_equal(batched[17].n[0], 24);
    assert_memory_equal(alone->tokens[0], batched[17].tokens[0], sizeof(int32_t) * 24);
    duet_engine_free(e);
    free(alone);
    free(batched);
}

static void run_one(const char *prompt, const duet_request_params *p, trace *t, int logits)
{
    duet_engine *e = engine(8, logits);
    add_text(e, prompt, p, t);
    if (duet_engine_run(e))
        fail_msg("run: %s", duet_last_error());
    duet_engine_stats st;
    duet_engine_get_stats(e, &st);
    assert_int_equal(st.kv_blocks_used, 0);
    duet_engine_free(e);
}

static void test_same_seed_same_tokens_other_seed_differs(void **state)
{
    (void)state;
    trace *t = calloc(4, sizeof *t);
    duet_request_params a = sampled(7, 32), b = sampled(8, 32), c = sampled(9, 32);
    run_one(PROMPTS[0], &a, &t[0], 0);
    run_one(PROMPTS[0], &a, &t[1], 0);
    run_one(PROMPTS[0], &b, &t[2], 0);
    run_one(PROMPTS[0], &c, &t[3], 0);
    assert_memory_equal(t[0].tokens[0], t[1].tokens[0], sizeof(int32_t) * 32);
    assert_true(memcmp(t[0].tokens[0], t[2].tokens[0], sizeof(int32_t) * 32) != 0);
    assert_true(memcmp(t[0].tokens[0], t[3].tokens[0], sizeof(int32_t) * 32) != 0);
    assert_true(memcmp(t[2].tokens[0], t[3].tokens[0], sizeof(int32_t) * 32) != 0);
    free(t);
}

static void test_n4_shares_prompt_blocks(void **state)
{
    (void)state;
    /* A prompt of several full blocks. */
    char prompt[2048] = "";
    for (int i = 0; i < 12; i++)
        strcat(prompt, "The quick brown fox jumps over the lazy dog. ");
    int32_t ids[512];
    int n_prompt = tokenize(prompt, ids, 512);
    assert_true(n_prompt > 64);
    trace *t = calloc(1, sizeof *t);
    duet_request_params p = sampled(3, 16);
    p.n = 4;
    p.temperature = 1.0f;
    duet_engine *e = engine(8, 0);
    if (duet_engine_add_request(e, ids, (size_t)n_prompt, &p, on_output, t))
        fail_msg("add: %s", duet_last_error());
    assert_int_equal(duet_engine_run(e), DUET_OK);
    duet_engine_stats st;
    duet_engine_get_stats(e, &st);
    /* Samples 1..3 found every full block of the prompt in the cache; the
     * last prompt token is always recomputed. */
    int full_blocks = (n_prompt - 1) / 16;
    assert_int_equal(st.prefix_hits, 3ull * (uint64_t)full_blocks * 16);
    assert_true(st.prompt_tokens < 2ull * (uint64_t)n_prompt);
    assert_int_equal(st.kv_blocks_used, 0);
    for (int k = 0; k < 4; k++) {
        assert_int_equal(t->n[k], 16);
        assert_int_equal(t->finish[k], DUET_FINISHED_LENGTH);
        for (int j = 0; j < k; j++)
            assert_true(memcmp(t->tokens[k], t->tokens[j], sizeof(int32_t) * 16) != 0);
    }
    assert_int_equal(t->outputs_after_finish, 0);
    duet_engine_free(e);
    free(t);
}

static void test_min_tokens_and_logit_bias(void **state)
{
    (void)state;
    int32_t eos = duet_model_eos(model);
    assert_true(eos >= 0);
    trace *t = calloc(2, sizeof *t);
    duet_logit_bias bias = {eos, 100.0f};
    duet_request_params p = {.max_tokens = 20, .min_tokens = 5, .logit_bias = &bias,
                             .n_logit_bias = 1};
    run_one(PROMPTS[0], &p, &t[0], 0);
    assert_int_equal(t[0].n[0], 6); /* 5 tokens, then EOS the bias forces */
    for (int i = 0; i < 5; i++)
        assert_int_not_equal(t[0].tokens[0][i], eos);
    assert_int_equal(t[0].tokens[0][5], eos);
    assert_int_equal(t[0].finish[0], DUET_FINISHED_STOP);
    /* A positive bias on an ordinary token makes greedy pick it always. */
    int32_t x[4];
    assert_int_equal(tokenize(" banana", x, 4), 1);
    duet_logit_bias b2 = {x[0], 50.0f};
    duet_request_params q = {.max_tokens = 6, .logit_bias = &b2, .n_logit_bias = 1,
                             .ignore_eos = 1};
    run_one(PROMPTS[2], &q, &t[1], 0);
    for (int i = 0; i < 6; i++)
        assert_int_equal(t[1].tokens[0][i], x[0]);
    free(t);
}

static void test_stop_strings(void **state)
{
    (void)state;
    trace *t = calloc(5, sizeof *t);
    duet_request_params g = {.max_tokens = 40, .ignore_eos = 1};
    run_one(PROMPTS[1], &g, &t[0], 0);
    const char *full = t[0].text[0];
    size_t len = t[0].text_len[0];
    assert_true(len > 40);
    /* A stop string that spans tokens: 6 characters from the middle. */
    char stop[16];
    size_t at = len / 2;
    memcpy(stop, full + at, 6);
    stop[6] = 0;
    size_t first = (size_t)(strstr(full, stop) - full);
    const char *stops[] = {"NEVER-APPEARS", stop};
    duet_request_params s = g;
    s.stop = stops;
    s.n_stop = 2;
    run_one(PROMPTS[1], &s, &t[1], 0);
    assert_int_equal(t[1].finish[0], DUET_FINISHED_STOP);
    assert_int_equal(t[1].text_len[0], first);
    assert_memory_equal(t[1].text[0], full, first);
    assert_string_equal(t[1].stop_str[0], stop);
    s.include_stop_str_in_output = 1;
    run_one(PROMPTS[1], &s, &t[2], 0);
    assert_int_equal(t[2].text_len[0], first + 6);
    assert_memory_equal(t[2].text[0], full, first + 6);
    /* Stop at the very first token's text. */
    char first_char[2] = {full[0], 0};
    const char *stops2[] = {first_char};
    s.stop = stops2;
    s.n_stop = 1;
    s.include_stop_str_in_output = 0;
    run_one(PROMPTS[1], &s, &t[3], 0);
    assert_int_equal(t[3].text_len[0], 0);
    assert_int_equal(t[3].n[0], 1);
    assert_int_equal(t[3].finish[0], DUET_FINISHED_STOP);
    /* A stop token id: reported, its text not output. */
    duet_request_params st = g;
    int32_t stop_id = t[0].tokens[0][3];
    st.stop_token_ids = &stop_id;
    st.n_stop_token_ids = 1;
    run_one(PROMPTS[1], &st, &t[4], 0);
    int k = 0;
    while (t[0].tokens[0][k] != stop_id)
        k++;
    assert_int_equal(t[4].n[0], k + 1);
    assert_int_equal(t[4].stop_token[0], stop_id);
    assert_int_equal(t[4].finish[0], DUET_FINISHED_STOP);
    free(t);
}

/* log_softmax(row)[tok] in double. */
static double ref_logprob(const float *row, int32_t tok)
{
    double m = -INFINITY, s = 0;
    for (int i = 0; i < vocab; i++)
        m = row[i] > m ? row[i] : m;
    for (int i = 0; i < vocab; i++)
        s += exp((double)row[i] - m);
    return (double)row[tok] - m - log(s);
}

static void test_logprobs_match_log_softmax(void **state)
{
    (void)state;
    trace *t = calloc(1, sizeof *t);
    duet_request_params p = sampled(11, 12);
    p.want_logprobs = 1;
    p.logprobs = 5;
    run_one(PROMPTS[3], &p, t, 1);
    for (int s = 0; s < 12; s++) {
        const float *row = t->logits + (size_t)s * vocab;
        const duet_logprobs *lp = &t->lp[s];
        assert_int_equal(lp->token, t->tokens[0][s]);
        assert_true(fabs(lp->logprob - ref_logprob(row, lp->token)) < 1e-4);
        int rank = 0;
        for (int i = 0; i < vocab; i++)
            rank += row[i] >= row[lp->token];
        assert_int_equal(lp->rank, rank);
        assert_int_equal(lp->n_top, 5);
        for (int j = 0; j < 5; j++) {
            assert_true(fabs(lp->top_logprobs[j] - ref_logprob(row, lp->top_ids[j])) < 1e-4);
            if (j > 0)
                assert_true(row[lp->top_ids[j]] <= row[lp->top_ids[j - 1]]);
        }
        /* The best token is first. */
        int best = 0;
        for (int i = 1; i < vocab; i++)
            if (row[i] > row[best])
                best = i;
        assert_int_equal(lp->top_ids[0], best);
    }
    trace_free(t);
    free(t);
}

static void test_prompt_logprobs_match_teacher_forcing(void **state)
{
    (void)state;
    int32_t ids[512];
    int n = tokenize(PROMPTS[1], ids, 512);
    float *logits = malloc(sizeof(float) * (size_t)n * vocab);
    duet_session *s = NULL;
    assert_int_equal(duet_session_create(model, NULL, &s), DUET_OK);
    assert_int_equal(duet_eval_logits(s, ids, (size_t)n, logits), DUET_OK);
    duet_session_free(s);

    trace *t = calloc(1, sizeof *t);
    duet_request_params p = {.max_tokens = 2, .want_prompt_logprobs = 1, .prompt_logprobs = 3};
    run_one(PROMPTS[1], &p, t, 0);
    assert_int_equal(t->n_prompt_lp, n - 1);
    for (int k = 0; k < n - 1; k++) {
        const duet_logprobs *lp = &t->prompt_lp[k];
        assert_int_equal(lp->token, ids[k + 1]);
        double ref = ref_logprob(logits + (size_t)k * vocab, ids[k + 1]);
        if (fabs(lp->logprob - ref) > 1e-3)
            fail_msg("prompt position %d: logprob %g, teacher-forced %g", k + 1, lp->logprob, ref);
        assert_int_equal(lp->n_top, 3);
    }
    free(logits);
    trace_free(t);
    free(t);
}

/* Async scheduling (step N+1 queued with placeholders while N runs) must
 * not change a single token or byte of text: the same 16 mixed requests
 * (greedy, seeded sampling, penalties, stop strings, EOS) with and
 * without it, on a small KV pool so preemption happens too. */
static void test_async_equals_sync(void **state)
{
    (void)state;
    enum { N = 16 };
    trace *t[2];
    uint64_t preemptions[2];
    const char *stops[] = {"\n\n", "."};
    for (int mode = 0; mode < 2; mode++) {
        t[mode] = calloc(N, sizeof(trace));
        duet_engine_options o = {.max_num_seqs = 8, .max_num_batched_tokens = 64,
                                 .max_model_len = 128, .kv_cache_memory = 8ull << 20,
                                 .disable_async_scheduling = mode};
        duet_engine *e = NULL;
        if (duet_engine_create(model, &o, &e))
            fail_msg("engine: %s", duet_last_error());
        for (int i = 0; i < N; i++) {
            duet_request_params p = i % 3 == 0 ? (duet_request_params){.max_tokens = 24}
                                               : sampled(100 + (uint64_t)i, 24);
            p.ignore_eos = i % 2;
            if (i % 5 == 1) {
                p.stop = stops;
                p.n_stop = 2;
            }
            if (i % 4 == 2)
                p.repetition_penalty = p.presence_penalty = p.frequency_penalty = 0;
            add_text(e, PROMPTS[i % 4], &p, &t[mode][i]);
            if (i % 4 == 3 && duet_engine_step(e))
                fail_msg("step: %s", duet_last_error());
        }
        if (duet_engine_run(e))
            fail_msg("run: %s", duet_last_error());
        duet_engine_stats st;
        duet_engine_get_stats(e, &st);
        assert_int_equal(st.kv_blocks_used, 0);
        assert_int_equal(st.num_running + st.num_waiting, 0);
        preemptions[mode] = st.num_preemptions;
        duet_engine_free(e);
    }
    /* The pool is small enough that both runs preempted. */
    assert_true(preemptions[0] > 0 && preemptions[1] > 0);
    for (int i = 0; i < N; i++) {
        if (t[0][i].n[0] != t[1][i].n[0])
            fail_msg("request %d: %d tokens async, %d sync", i, t[0][i].n[0], t[1][i].n[0]);
        assert_memory_equal(t[0][i].tokens[0], t[1][i].tokens[0], sizeof(int32_t) * t[0][i].n[0]);
        assert_string_equal(t[0][i].text[0], t[1][i].text[0]);
        assert_int_equal(t[0][i].finish[0], t[1][i].finish[0]);
    }
    free(t[0]);
    free(t[1]);
}

static void test_bad_params_name_the_field(void **state)
{
    (void)state;
    duet_engine *e = engine(4, 0);
    int32_t ids[4] = {1, 2, 3, 4};
    struct {
        duet_request_params p;
        const char *field;
    } cases[] = {
        {{.max_tokens = 4, .top_p = 1.5f}, "top_p"},
        {{.max_tokens = 4, .top_k = -2}, "top_k"},
        {{.max_tokens = 4, .min_p = -0.1f}, "min_p"},
        {{.max_tokens = 4, .temperature = -1.0f}, "temperature"},
        {{.max_tokens = 4, .repetition_penalty = -1.0f}, "repetition_penalty"},
        {{.max_tokens = 4, .presence_penalty = 2.5f}, "presence_penalty"},
        {{.max_tokens = 4, .frequency_penalty = -3.0f}, "frequency_penalty"},
        {{.max_tokens = 4, .n = -1}, "n"},
        {{.max_tokens = 4, .want_logprobs = 1, .logprobs = 21}, "logprobs"},
        {{.max_tokens = 4, .want_prompt_logprobs = 1, .prompt_logprobs = 30}, "prompt_logprobs"},
        {{.max_tokens = 4, .min_tokens = 5}, "min_tokens"},
        {{.max_tokens = 0}, "max_tokens"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(duet_engine_add_request(e, ids, 4, &cases[i].p, NULL, NULL),
                         DUET_ERR_INVALID_ARG);
        if (!strstr(duet_last_error(), cases[i].field))
            fail_msg("case %zu: '%s' does not name %s", i, duet_last_error(), cases[i].field);
    }
    duet_logit_bias b = {vocab, 1.0f};
    duet_request_params p = {.max_tokens = 4, .logit_bias = &b, .n_logit_bias = 1};
    assert_int_equal(duet_engine_add_request(e, ids, 4, &p, NULL, NULL), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "logit_bias"));
    const char *empty[] = {""};
    duet_request_params q = {.max_tokens = 4, .stop = empty, .n_stop = 1};
    assert_int_equal(duet_engine_add_request(e, ids, 4, &q, NULL, NULL), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "stop[0]"));
    duet_engine_free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seeded_alone_vs_batch_of_32),
        cmocka_unit_test(test_same_seed_same_tokens_other_seed_differs),
        cmocka_unit_test(test_n4_shares_prompt_blocks),
        cmocka_unit_test(test_min_tokens_and_logit_bias),
        cmocka_unit_test(test_stop_strings),
        cmocka_unit_test(test_logprobs_match_log_softmax),
        cmocka_unit_test(test_prompt_logprobs_match_teacher_forcing),
        cmocka_unit_test(test_async_equals_sync),
        cmocka_unit_test(test_bad_params_name_the_field),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
