/*
 * test_serve_units.c — the parts of `duet serve` that need no socket or
 * model: Prometheus text (names, buckets, label escaping, number format),
 * SSE chunk shapes, error bodies, UTF-8 cleaning. The end-to-end tests
 * with the openai client are in test_openai_api.py (tests/tools/test_serve.sh).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../tools/serve_metrics.c"
#include "../../tools/serve_response.c"

static void test_utf8_clean(void **state)
{
    (void)state;
    static const struct { const char *in; size_t n; const char *out; } cases[] = {
        {"plain", 5, "plain"},
        {"caf\xC3\xA9", 5, "caf\xC3\xA9"},
        {"\xF0\x9F\x98\x80", 4, "\xF0\x9F\x98\x80"},
        {"a\xFF" "b", 3, "a\xEF\xBF\xBD" "b"},
        {"\xE2\x82", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},       /* truncated */
        {"\xC0\xAF", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},       /* overlong */
        {"\xED\xA0\x80", 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* surrogate */
        {"a\0b", 3, "a\0b"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len;
        char *o = serve_utf8_clean(cases[i].in, cases[i].n, &len);
        assert_non_null(o);
        size_t want = i == 7 ? 3 : strlen(cases[i].out);
        assert_int_equal(len, want);
        assert_memory_equal(o, cases[i].out, want);
        free(o);
    }
}

static void test_fmt_num(void **state)
{
    (void)state;
    char b[64];
    fmt_num(b, sizeof b, 20);
    assert_string_equal(b, "20.0");
    fmt_num(b, sizeof b, 0.25);
    assert_string_equal(b, "0.25");
    fmt_num(b, sizeof b, 0.001);
    assert_string_equal(b, "0.001");
    fmt_num(b, sizeof b, 2560);
    assert_string_equal(b, "2560.0");
    fmt_num(b, sizeof b, 1.0 / 3);
    assert_true(strtod(b, NULL) == 1.0 / 3);
}

/* The value of the sample line that starts with prefix, or -1. */
static double sample_value(const char *text, const char *prefix)
{
    const char *p = strstr(text, prefix);
    if (!p)
        return -1;
    p = strchr(p, '}');
    return p ? strtod(p + 2, NULL) : -1;
}

static void test_prometheus_text(void **state)
{
    (void)state;
    serve_metrics *m = serve_metrics_create("my \"model\"\\x", "cpu", 100);
    assert_non_null(m);
    duet_engine_stats st = {.num_running = 3, .num_waiting = 2, .kv_usage = 0.5,
                            .prompt_tokens = 40, .generation_tokens = 7, .kv_blocks_used = 2,
                            .block_size = 16, .kv_tokens_used = 24, .step_tokens = 12};
    serve_metrics_engine(m, &st, 1);
    serve_metrics_first_token(m, 0.003);
    serve_metrics_inter_token(m, 0.02);
    serve_finish_times t = {.reason = DUET_FINISHED_LENGTH, .have_first_token = 1, .e2e = 1.2,
                            .n_prompt = 7, .n_generated = 30};
    serve_metrics_finish(m, &t);
    serve_metrics_client_abort(m);
    size_t len;
    char *text = serve_metrics_prometheus(m, &len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    const char *L = "{model_name=\"my \\\"model\\\"\\\\x\",engine=\"0\"";
    char key[256];
#define VAL(fmt, ...) (snprintf(key, sizeof key, fmt, __VA_ARGS__), sample_value(text, key))
    assert_true(VAL("vllm:num_requests_running%s}", L) == 3);
    assert_true(VAL("vllm:num_requests_waiting%s}", L) == 2);
    assert_true(VAL("vllm:kv_cache_usage_perc%s}", L) == 0.5);
    assert_true(VAL("vllm:prompt_tokens_total%s}", L) == 40);
    assert_true(VAL("vllm:generation_tokens_total%s}", L) == 7);
    /* TTFT 3 ms: not in le=0.001, in le=0.005 and above (cumulative). */
    assert_true(VAL("vllm:time_to_first_token_seconds_bucket%s,le=\"0.001\"}", L) == 0);
    assert_true(VAL("vllm:time_to_first_token_seconds_bucket%s,le=\"0.005\"}", L) == 1);
    assert_true(VAL("vllm:time_to_first_token_seconds_bucket%s,le=\"2560.0\"}", L) == 1);
    assert_true(VAL("vllm:time_to_first_token_seconds_bucket%s,le=\"+Inf\"}", L) == 1);
    assert_true(VAL("vllm:time_to_first_token_seconds_count%s}", L) == 1);
    /* ITL and TPOT share vLLM's token-latency buckets. */
    assert_true(VAL("vllm:inter_token_latency_seconds_bucket%s,le=\"0.025\"}", L) == 1);
    assert_true(VAL("vllm:time_per_output_token_seconds_bucket%s,le=\"0.01\"}", L) == 0);
    /* 1-2-5 buckets up to max_model_len 100; 30 tokens lands in le=50. */
    assert_true(VAL("vllm:request_generation_tokens_bucket%s,le=\"20.0\"}", L) == 0);
    assert_true(VAL("vllm:request_generation_tokens_bucket%s,le=\"50.0\"}", L) == 1);
    assert_true(VAL("vllm:request_generation_tokens_bucket%s,le=\"100.0\"}", L) == 1);
    assert_null(strstr(text, "vllm:request_generation_tokens_bucket{model_name=\"my \\\"model"
                             "\\\"\\\\x\",engine=\"0\",le=\"200.0\"}"));
    assert_true(VAL("vllm:e2e_request_latency_seconds_bucket%s,le=\"1.5\"}", L) == 1);
    assert_true(VAL("vllm:e2e_request_latency_seconds_bucket%s,le=\"1.0\"}", L) == 0);
    assert_true(VAL("vllm:iteration_tokens_total_bucket%s,le=\"16.0\"}", L) == 1);
    assert_true(VAL("vllm:iteration_tokens_total_bucket%s,le=\"8.0\"}", L) == 0);
    assert_true(VAL("vllm:request_success_total%s,finished_reason=\"length\"}", L) == 1);
    assert_true(VAL("vllm:request_success_total%s,finished_reason=\"stop\"}", L) == 0);
    assert_true(VAL("duet_client_disconnects_total%s}", L) == 1);
    /* 24 of 32 slots used in 2 blocks: 25% waste. */
    assert_true(VAL("duet_kv_cache_waste_perc%s}", L) == 0.25);
#undef VAL
    assert_non_null(strstr(text, "# TYPE vllm:prompt_tokens_total counter\n"));
    assert_non_null(strstr(text, "# TYPE vllm:time_to_first_token_seconds histogram\n"));
    assert_non_null(strstr(text, "# TYPE vllm:num_requests_running gauge\n"));
    free(text);

    json_t *j = serve_metrics_json(m);
    assert_int_equal(json_integer_value(json_object_get(j, "running")), 3);
    assert_true(json_real_value(json_object_get(json_object_get(j, "ttft"), "p50")) == 0.003);
    json_decref(j);
    serve_metrics_free(m);
}

static serve_ctx fake_ctx = {.model_name = "m"};

static serve_req *fake_req(serve_kind kind, int n)
{
    serve_req *r = calloc(1, sizeof *r);
    r->ctx = &fake_ctx;
    r->kind = kind;
    r->n = n;
    r->logprobs = -1;
    r->include_usage = 1;
    r->choices = calloc((size_t)n, sizeof *r->choices);
    snprintf(r->id, sizeof r->id, "chatcmpl-7");
    return r;
}

static void free_req(serve_req *r)
{
    for (int i = 0; i < r->n; i++) {
        serve_buf_free(&r->choices[i].text);
        json_decref(r->choices[i].logprobs);
        free(r->choices[i].stop_str);
    }
    free(r->choices);
    free(r->error);
    free(r);
}

/* The JSON of the k-th "data: " event in buf (0-based); NULL if none. */
static json_t *sse_event(const serve_buf *b, int k)
{
    const char *p = b->p;
    for (int i = 0; p && i <= k; i++) {
        p = strstr(p, "data: ");
        if (!p)
            return NULL;
        if (i < k)
            p += 6;
    }
    const char *end = strstr(p, "\n\n");
    return end ? json_loadb(p + 6, (size_t)(end - p - 6), 0, NULL) : NULL;
}

static void test_chat_stream_shape(void **state)
{
    (void)state;
    serve_req *r = fake_req(SERVE_CHAT, 1);
    serve_buf out = {0};
    int32_t tok = 5;
    serve_stream_begin(r, &out);
    serve_event ev = {.index = 0, .n_tokens = 1, .tokens = &tok, .text = "Hi", .text_len = 2,
                      .n_prompt = 9, .n_cached = 4, .stop_token = -1};
    serve_stream_event(r, &ev, &out);
    serve_event fin = {.index = 0, .n_tokens = 1, .tokens = &tok, .text = "!", .text_len = 1,
                       .finish = DUET_FINISHED_STOP, .stop_str = "END", .stop_token = -1};
    serve_stream_event(r, &fin, &out);
    serve_stream_end(r, &out);

    json_t *e0 = sse_event(&out, 0), *e1 = sse_event(&out, 1), *e2 = sse_event(&out, 2),
           *e3 = sse_event(&out, 3);
    assert_non_null(e0);
    assert_non_null(e3);
    json_t *d0 = json_object_get(json_array_get(json_object_get(e0, "choices"), 0), "delta");
    assert_string_equal(json_string_value(json_object_get(d0, "role")), "assistant");
    assert_string_equal(json_string_value(json_object_get(e0, "object")), "chat.completion.chunk");
    json_t *c1 = json_array_get(json_object_get(e1, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(c1, "delta"), "content")),
                        "Hi");
    assert_true(json_is_null(json_object_get(c1, "finish_reason")));
    assert_true(json_is_null(json_object_get(e1, "usage")));
    json_t *c2 = json_array_get(json_object_get(e2, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(c2, "finish_reason")), "stop");
    assert_string_equal(json_string_value(json_object_get(c2, "stop_reason")), "END");
    assert_int_equal(json_array_size(json_object_get(e3, "choices")), 0);
    json_t *u = json_object_get(e3, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "prompt_tokens")), 9);
    assert_int_equal(json_integer_value(json_object_get(u, "completion_tokens")), 2);
    assert_int_equal(json_integer_value(json_object_get(u, "total_tokens")), 11);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(u, "prompt_tokens_details"),
                                                        "cached_tokens")), 4);
    assert_true(out.len >= 14 && !strcmp(out.p + out.len - 14, "data: [DONE]\n\n"));
    json_decref(e0);
    json_decref(e1);
    json_decref(e2);
    json_decref(e3);
    serve_buf_free(&out);
    free_req(r);
}

static void test_error_mid_stream(void **state)
{
    (void)state;
    serve_req *r = fake_req(SERVE_COMPLETION, 1);
    r->include_usage = 0;
    serve_buf out = {0};
    serve_event ev = {.error = "device lost", .stop_token = -1};
    serve_stream_event(r, &ev, &out);
    serve_stream_end(r, &out);
    json_t *e = sse_event(&out, 0);
    json_t *err = json_object_get(e, "error");
    assert_string_equal(json_string_value(json_object_get(err, "message")), "device lost");
    assert_int_equal(json_integer_value(json_object_get(err, "code")), 500);
    assert_non_null(strstr(out.p, "data: [DONE]\n\n"));
    json_decref(e);
    serve_buf_free(&out);
    free_req(r);
}

static void test_nonstream_body(void **state)
{
    (void)state;
    serve_req *r = fake_req(SERVE_COMPLETION, 2);
    int32_t tok = 1;
    serve_event a = {.index = 1, .n_tokens = 1, .tokens = &tok, .text = "b", .text_len = 1,
                     .finish = DUET_FINISHED_LENGTH, .stop_token = -1, .n_prompt = 3};
    serve_event b = {.index = 0, .n_tokens = 1, .tokens = &tok, .text = "a", .text_len = 1,
                     .finish = DUET_FINISHED_STOP, .stop_token = 2, .n_prompt = 3};
    serve_collect_event(r, &a);
    serve_collect_event(r, &b);
    size_t len;
    char *s = serve_final_body(r, &len);
    json_t *j = json_loads(s, 0, NULL);
    json_t *ch = json_object_get(j, "choices");
    assert_int_equal(json_array_size(ch), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(ch, 0), "text")), "a");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(ch, 0), "stop_reason")), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(ch, 1), "finish_reason")),
                        "length");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "usage"),
                                                        "completion_tokens")), 2);
    json_decref(j);
    free(s);
    free_req(r);
}

static void test_error_body(void **state)
{
    (void)state;
    size_t len;
    char *s = serve_error_body(404, "The model `x` does not exist", "model", &len);
    json_t *j = json_loads(s, 0, NULL), *e = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(e, "message")),
                        "The model `x` does not exist");
    assert_string_equal(json_string_value(json_object_get(e, "type")), "NotFoundError");
    assert_string_equal(json_string_value(json_object_get(e, "param")), "model");
    assert_int_equal(json_integer_value(json_object_get(e, "code")), 404);
    json_decref(j);
    free(s);
    /* A message that is not UTF-8 still gives a valid body. */
    s = serve_error_body(400, "bad \xFF byte", NULL, &len);
    j = json_loads(s, 0, NULL);
    assert_non_null(j);
    json_decref(j);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_clean),
        cmocka_unit_test(test_fmt_num),
        cmocka_unit_test(test_prometheus_text),
        cmocka_unit_test(test_chat_stream_shape),
        cmocka_unit_test(test_error_mid_stream),
        cmocka_unit_test(test_nonstream_body),
        cmocka_unit_test(test_error_body),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
