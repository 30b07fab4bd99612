/*
 * test_chat_template.c — the Jinja chat-template interpreter against HF
 * transformers' apply_chat_template.
 *
 * Expected output comes from scripts/make-chat-template-fixtures.py, which
 * rendered each context with transformers (jinja2) and stored the result
 * in tests/fixtures/chat_templates/: real templates (SmolLM2's from its
 * GGUF, Llama 3.1, Qwen2.5, Mistral Nemo, SmolLM3) and constructs.json, one
 * small template per language feature. Where jinja2 raised its own error
 * (raise_exception, an undefined value) duet must give the same message;
 * where Python raised (a TypeError, recorded as "python:TypeError") duet
 * only has to fail with DUET_ERR_INVALID_ARG. The rest checks the failure
 * contract: unsupported constructs and syntax errors are named with their
 * line, hostile templates hit limits, and mutated templates fail cleanly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "chat_template.h"
#include "error.h"

#define FIXTURES DUET_SOURCE_DIR "/tests/fixtures/chat_templates/"

static const char *const REAL_TEMPLATES[] = {
    "smollm2-135m-instruct", "llama-3.1-8b-instruct", "qwen2.5-7b-instruct",
    "mistral-nemo-instruct-2407", "qwen3-0.6b", "smollm3-3b",
};
#define N_REAL (sizeof REAL_TEMPLATES / sizeof REAL_TEMPLATES[0])

/* ---- helpers ------------------------------------------------------------ */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        *len = (size_t)n;
    }
    return buf;
}

static json_t *load_fixture(const char *name)
{
    char path[1024];
    json_error_t err;
    snprintf(path, sizeof path, FIXTURES "%s.json", name);
    json_t *j = json_load_file(path, 0, &err);
    if (!j)
        fail_msg("cannot load %s: %s (regenerate with scripts/make-chat-template-fixtures.py)",
                 path, err.text);
    return j;
}

static void print_mismatch(const char *what, const char *got, size_t got_len, const char *want,
                           size_t want_len)
{
    size_t i = 0;
    while (i < got_len && i < want_len && got[i] == want[i])
        i++;
    size_t from = i > 40 ? i - 40 : 0;
    fprintf(stderr, "%s: output differs at byte %zu (got %zu bytes, want %zu)\n"
            "  got:  ...%.*s...\n  want: ...%.*s...\n", what, i, got_len, want_len,
            (int)((got_len - from) < 100 ? got_len - from : 100), got + from,
            (int)((want_len - from) < 100 ? want_len - from : 100), want + from);
}

/* Render one fixture case; returns 1 when it matched. Real templates'
 * messages are stored as a client sends them and normalized here. */
static int check_case(const duet_chat_template *t, const char *fixture, json_t *c, int normalize)
{
    const char *name = json_string_value(json_object_get(c, "name"));
    json_t *expected = json_object_get(c, "expected");
    const char *error = json_string_value(json_object_get(c, "error"));
    char *out = NULL, what[256];
    size_t len = 0;
    snprintf(what, sizeof what, "%s/%s", fixture, name);
    json_t *ctx = json_deep_copy(json_object_get(c, "context"));
    assert_non_null(ctx);
    if (normalize)
        assert_int_equal(duet_chat_template_normalize_messages(json_object_get(ctx, "messages")), DUET_OK);
    duet_status st = duet_chat_template_render(t, ctx, &out, &len);
    json_decref(ctx);
    int ok = 0;
    if (expected) {
        const char *want = json_string_value(expected);
        size_t want_len = json_string_length(expected);
        if (st != DUET_OK)
            fprintf(stderr, "%s: render failed: %s\n", what, duet_last_error());
        else if (len != want_len || memcmp(out, want, len) != 0 || out[len] != '\0')
            print_mismatch(what, out, len, want, want_len);
        else
            ok = 1;
    } else {
        if (st == DUET_OK)
            fprintf(stderr, "%s: rendered, but transformers raised \"%s\"\n", what, error);
        else if (st != DUET_ERR_INVALID_ARG ||
                 (strncmp(error, "python:", 7) != 0 && !strstr(duet_last_error(), error)))
            fprintf(stderr, "%s: status %d, message \"%s\"; want INVALID_ARG with \"%s\"\n", what,
                    (int)st, duet_last_error(), error);
        else
            ok = 1;
    }
    free(out);
    return ok;
}

static duet_status compile_str(const char *src, duet_chat_template **t)
{
    return duet_chat_template_compile(src, strlen(src), t);
}

/* Compile and render src with context JSON ctx_json. */
static duet_status render_str(const char *src, const char *ctx_json, char **out)
{
    duet_chat_template *t = NULL;
    *out = NULL;
    duet_status st = compile_str(src, &t);
    if (st != DUET_OK)
        return st;
    json_t *ctx = json_loads(ctx_json, 0, NULL);
    assert_non_null(ctx);
    st = duet_chat_template_render(t, ctx, out, NULL);
    json_decref(ctx);
    duet_chat_template_free(t);
    return st;
}

/* ---- fixtures ------------------------------------------------------------ */

static void test_real_templates(void **state)
{
    (void)state;
    int failed = 0, cases = 0;
    for (size_t k = 0; k < N_REAL; k++) {
        json_t *fx = load_fixture(REAL_TEMPLATES[k]);
        char path[1024];
        size_t len;
        snprintf(path, sizeof path, FIXTURES "%s", json_string_value(json_object_get(fx, "template")));
        char *src = read_file(path, &len);
        assert_non_null(src);
        duet_chat_template *t = NULL;
        if (duet_chat_template_compile(src, len, &t) != DUET_OK)
            fail_msg("%s: compile failed: %s", REAL_TEMPLATES[k], duet_last_error());
        json_t *c;
        size_t i;
        json_array_foreach(json_object_get(fx, "cases"), i, c) {
            cases++;
            failed += !check_case(t, REAL_TEMPLATES[k], c, 1);
        }
        duet_chat_template_free(t);
        free(src);
        json_decref(fx);
    }
    fprintf(stderr, "real templates: %d of %d cases match transformers\n", cases - failed, cases);
    assert_int_equal(failed, 0);
    assert_true(cases >= 55);
}

static void test_constructs(void **state)
{
    (void)state;
    json_t *fx = load_fixture("constructs");
    json_t *c;
    size_t i;
    int failed = 0, cases = 0;
    json_array_foreach(json_object_get(fx, "cases"), i, c) {
        json_t *src = json_object_get(c, "template");
        duet_chat_template *t = NULL;
        cases++;
        if (duet_chat_template_compile(json_string_value(src), json_string_length(src), &t) != DUET_OK) {
            fprintf(stderr, "constructs/%s: compile failed: %s\n",
                    json_string_value(json_object_get(c, "name")), duet_last_error());
            failed++;
            continue;
        }
        failed += !check_case(t, "constructs", c, 0);
        duet_chat_template_free(t);
    }
    json_decref(fx);
    fprintf(stderr, "constructs: %d of %d match jinja2\n", cases - failed, cases);
    assert_int_equal(failed, 0);
}

/* A compiled template is reusable: the second render equals the first. */
static void test_render_twice(void **state)
{
    (void)state;
    json_t *fx = load_fixture("qwen2.5-7b-instruct");
    size_t len;
    char *src = read_file(FIXTURES "qwen2.5-7b-instruct.jinja", &len);
    duet_chat_template *t = NULL;
    assert_int_equal(duet_chat_template_compile(src, len, &t), DUET_OK);
    json_t *c = json_array_get(json_object_get(fx, "cases"), 2);
    for (int k = 0; k < 3; k++)
        assert_true(check_case(t, "qwen2.5 repeated", c, 1));
    duet_chat_template_free(t);
    free(src);
    json_decref(fx);
}

/* ---- failure contract ------------------------------------------------------ */

static void expect_compile_error(const char *src, duet_status want, const char *const *needles)
{
    duet_chat_template *t = NULL;
    duet_status st = compile_str(src, &t);
    if (st != want)
        fail_msg("template \"%s\": status %d (%s), want %d", src, (int)st, duet_last_error(), (int)want);
    assert_null(t);
    for (size_t k = 0; needles[k]; k++)
        if (!strstr(duet_last_error(), needles[k]))
            fail_msg("template \"%s\": message \"%s\" lacks \"%s\"", src, duet_last_error(), needles[k]);
}

static void test_unsupported(void **state)
{
    (void)state;
    expect_compile_error("\n{% include 'other.jinja' %}",
                         DUET_ERR_UNSUPPORTED, (const char *[]){"line 2", "statement 'include'", NULL});
    expect_compile_error("{% for m in ms recursive %}{% endfor %}",
                         DUET_ERR_UNSUPPORTED, (const char *[]){"recursive", NULL});
    expect_compile_error("{{ f(*args) }}", DUET_ERR_UNSUPPORTED, (const char *[]){"*args", NULL});

    /* constructs found only at render time: as in jinja2 3.x, an unknown
     * filter or test fails only when evaluated (constructs.json has one in
     * a branch not taken) */
    char *out;
    assert_int_equal(render_str("a\n\n{{ x | xmlattr }}", "{\"x\": 1}", &out), DUET_ERR_UNSUPPORTED);
    assert_string_equal(duet_last_error(), "chat template line 3: filter 'xmlattr' is not supported");
    assert_int_equal(render_str("{% if x is frobnicated %}{% endif %}", "{}", &out), DUET_ERR_UNSUPPORTED);
    assert_string_equal(duet_last_error(), "chat template line 1: test 'frobnicated' is not supported");
    assert_int_equal(render_str("{{ '%s' % x }}", "{\"x\": 1}", &out), DUET_ERR_UNSUPPORTED);
    assert_non_null(strstr(duet_last_error(), "'%'"));
    assert_int_equal(render_str("\n{{ '{:>4}'.format(1) }}", "{}", &out), DUET_ERR_UNSUPPORTED);
    assert_non_null(strstr(duet_last_error(), "line 2"));
    assert_int_equal(render_str("{{ ms | map('groupby') }}", "{\"ms\": [1]}", &out), DUET_ERR_UNSUPPORTED);
    assert_non_null(strstr(duet_last_error(), "filter 'groupby'"));
}

static void test_syntax_errors(void **state)
{
    (void)state;
    expect_compile_error("{% if x %}\nno end", DUET_ERR_FORMAT, (const char *[]){"line 1", "endif", NULL});
    expect_compile_error("ok\nok\n{{ 1 + }}", DUET_ERR_FORMAT, (const char *[]){"line 3", "expected", NULL});
    expect_compile_error("\n\n\n{% endfor %}", DUET_ERR_FORMAT, (const char *[]){"line 4", "endfor", NULL});
    expect_compile_error("{{ 'unterminated }}", DUET_ERR_FORMAT, (const char *[]){"line 1", "string", NULL});
    expect_compile_error("x\n{# never closed", DUET_ERR_FORMAT, (const char *[]){"line 2", "comment", NULL});
    expect_compile_error("{{ x ", DUET_ERR_FORMAT, (const char *[]){"unclosed", NULL});
    expect_compile_error("{% frob %}", DUET_ERR_FORMAT, (const char *[]){"unknown tag 'frob'", NULL});
    expect_compile_error("{% for %}{% endfor %}", DUET_ERR_FORMAT, (const char *[]){"a name", NULL});
    expect_compile_error("{{ x $ y }}", DUET_ERR_FORMAT, (const char *[]){"'$'", NULL});
}

static void test_render_errors(void **state)
{
    (void)state;
    char *out;
    /* raise_exception gives the template's own message */
    assert_int_equal(render_str("{{ raise_exception('Roles must alternate user/assistant') }}", "{}", &out),
                     DUET_ERR_INVALID_ARG);
    assert_string_equal(duet_last_error(), "chat template: Roles must alternate user/assistant");
    /* input errors name the line */
    assert_int_equal(render_str("\n{{ messages[0].content.x }}", "{\"messages\": []}", &out),
                     DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "line 2"));
    assert_int_equal(render_str("{{ 'a' + 1 }}", "{}", &out), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "string and int"));
    assert_int_equal(render_str("{{ 1 // 0 }}", "{}", &out), DUET_ERR_INVALID_ARG);
    assert_int_equal(render_str("{% set x = 1 %}{% set x.a = 2 %}", "{}", &out), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "namespace"));
    assert_int_equal(render_str("{{ x | tojson }}", "{}", &out), DUET_ERR_INVALID_ARG);
    /* API misuse */
    duet_chat_template *t = NULL;
    assert_int_equal(compile_str("x", &t), DUET_OK);
    json_t *arr = json_array();
    assert_int_equal(duet_chat_template_render(t, arr, &out, NULL), DUET_ERR_INVALID_ARG);
    assert_int_equal(duet_chat_template_render(NULL, arr, &out, NULL), DUET_ERR_INVALID_ARG);
    duet_chat_template *t2 = (duet_chat_template *)&t;
    assert_int_equal(duet_chat_template_compile(NULL, 0, &t2), DUET_ERR_INVALID_ARG);
    assert_null(t2);
    assert_int_equal(duet_chat_template_compile("x", 1, NULL), DUET_ERR_INVALID_ARG);
    /* normalize_messages: only arrays of objects, unchanged on failure */
    assert_int_equal(duet_chat_template_normalize_messages(arr), DUET_OK);
    json_t *bad = json_loads("[{\"role\": \"user\", \"content\": null}, 3]", 0, NULL);
    assert_int_equal(duet_chat_template_normalize_messages(bad), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "messages[1]"));
    assert_true(json_is_null(json_object_get(json_array_get(bad, 0), "content")));
    json_decref(bad);
    assert_int_equal(duet_chat_template_normalize_messages(NULL), DUET_ERR_INVALID_ARG);
    json_t *msgs = json_loads("[{\"role\": \"assistant\", \"content\": null, \"reasoning\": \"r\"}]", 0, NULL);
    assert_int_equal(duet_chat_template_normalize_messages(msgs), DUET_OK);
    char *dump = json_dumps(msgs, 0);
    assert_string_equal(dump, "[{\"thinking\": \"r\", \"role\": \"assistant\", \"reasoning\": \"r\", "
                              "\"reasoning_content\": \"r\"}]");
    free(dump);
    json_decref(msgs);
    json_decref(arr);
    duet_chat_template_free(t);
    duet_chat_template_free(NULL);
}

static void test_limits(void **state)
{
    (void)state;
    char *out;
    /* 1e10 iterations would hang a server: stopped at the step limit */
    assert_int_equal(render_str("{% for i in range(100000) %}{% for j in range(100000) %}"
                                "{% endfor %}{% endfor %}", "{}", &out), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "limit"));
    /* 100 MB of output */
    assert_int_equal(render_str("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "{}", &out),
                     DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "MiB"));
    assert_int_equal(render_str("{{ 'x' * 100000000 }}", "{}", &out), DUET_ERR_INVALID_ARG);
    /* runaway recursion */
    assert_int_equal(render_str("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "{}", &out),
                     DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "deeper"));
    /* exponential recursion within the depth limit stops at the step limit */
    assert_int_equal(render_str("{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}"
                                "{% endmacro %}{{ f(0) }}", "{}", &out), DUET_ERR_INVALID_ARG);
    assert_int_equal(render_str("{{ range(1000000) | length }}", "{}", &out), DUET_ERR_INVALID_ARG);
    /* deep nesting in the source */
    size_t n = 20000;
    char *deep = malloc(2 * n + 16);
    memcpy(deep, "{{ ", 3);
    memset(deep + 3, '(', n);
    deep[3 + n] = '1';
    memset(deep + 4 + n, ')', n);
    strcpy(deep + 4 + 2 * n, " }}");
    duet_chat_template *t = NULL;
    assert_int_equal(compile_str(deep, &t), DUET_ERR_UNSUPPORTED);
    assert_non_null(strstr(duet_last_error(), "nesting"));
    free(deep);
    /* a small case of each still works */
    assert_int_equal(render_str("{% for i in range(3) %}{{ i }}{% endfor %}", "{}", &out), DUET_OK);
    assert_string_equal(out, "012");
    free(out);
}

/* Truncated and mutated templates must fail cleanly (no crash, no leak
 * under ASan) or render. */
static void test_fuzz(void **state)
{
    (void)state;
    static const char alphabet[] = "{}%#-+()[]'\"|.,:~=<>!*/ \n\tabxyz019_";
    json_t *ctx = json_loads("{\"messages\": [{\"role\": \"system\", \"content\": \"s\"},"
                             "{\"role\": \"user\", \"content\": \" hi \"},"
                             "{\"role\": \"assistant\", \"content\": \"yo\", \"tool_calls\": "
                             "[{\"id\": \"abcdefghi\", \"function\": {\"name\": \"f\", \"arguments\": {\"a\": 1}}}]},"
                             "{\"role\": \"tool\", \"content\": \"r\", \"tool_call_id\": \"abcdefghi\"}],"
                             "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}],"
                             "\"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}",
                             0, NULL);
    assert_non_null(ctx);
    uint32_t seed = 12345;
    int compiled = 0, rendered = 0, runs = 0;
    for (size_t k = 0; k < N_REAL; k++) {
        char path[1024];
        size_t len;
        snprintf(path, sizeof path, FIXTURES "%s.jinja", REAL_TEMPLATES[k]);
        char *src = read_file(path, &len);
        assert_non_null(src);
        char *buf = malloc(len + 64);
        for (int iter = 0; iter < 400; iter++) {
            size_t n = len;
            memcpy(buf, src, len);
            seed = seed * 1103515245u + 12345u;
            if (iter % 2 == 0) {
                n = (seed >> 8) % (len + 1); /* truncation */
            } else {
                for (int m = 0; m < 1 + (int)((seed >> 4) % 4); m++) { /* mutations */
                    seed = seed * 1103515245u + 12345u;
                    size_t at = (seed >> 8) % n;
                    char ch = alphabet[(seed >> 20) % (sizeof alphabet - 1)];
                    if ((seed & 3) == 0 && n + 1 < len + 64) {
                        memmove(buf + at + 1, buf + at, n - at);
                        buf[at] = ch;
                        n++;
                    } else if ((seed & 3) == 1 && n > 1) {
                        memmove(buf + at, buf + at + 1, n - at - 1);
                        n--;
                    } else {
                        buf[at] = ch;
                    }
                }
            }
            runs++;
            duet_chat_template *t = NULL;
            duet_status st = duet_chat_template_compile(buf, n, &t);
            assert_true(st == DUET_OK || st == DUET_ERR_FORMAT || st == DUET_ERR_UNSUPPORTED);
            if (st != DUET_OK)
                continue;
            compiled++;
            char *out = NULL;
            st = duet_chat_template_render(t, ctx, &out, NULL);
            assert_true(st == DUET_OK || st == DUET_ERR_INVALID_ARG || st == DUET_ERR_UNSUPPORTED);
            assert_true((st == DUET_OK) == (out != NULL));
            rendered += st == DUET_OK;
            free(out);
            duet_chat_template_free(t);
        }
        free(buf);
        free(src);
    }
    json_decref(ctx);
    fprintf(stderr, "fuzz: %d variants, %d compiled, %d rendered\n", runs, compiled, rendered);
    assert_true(compiled > 0 && rendered > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_templates),
        cmocka_unit_test(test_constructs),
        cmocka_unit_test(test_render_twice),
        cmocka_unit_test(test_unsupported),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_render_errors),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_fuzz),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
