/*
 * serve_openai.c — OpenAI / vLLM request bodies to engine parameters.
 *
 * Field names, defaults and ranges are vLLM's (CompletionRequest,
 * ChatCompletionRequest, SamplingParams). A wrong type or range is a 400
 * that names the field, the value and the limit. Unknown fields are
 * ignored, as vLLM does.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve.h"

enum { MAX_N = 128, MAX_STOP = 64 };

int serve_errf(serve_err *e, int status, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->status = status;
    e->param = param;
    return -1;
}

/* Typed field getters: 0 = absent or null, 1 = present, -1 = wrong type. */
static int get_number(json_t *o, const char *k, double *v, serve_err *e)
{
    json_t *j = json_object_get(o, k);
    if (!j || json_is_null(j))
        return 0;
    if (!json_is_number(j))
        return serve_errf(e, 400, k, "'%s' must be a number", k);
    *v = json_number_value(j);
    return 1;
}

static int get_int(json_t *o, const char *k, long long *v, serve_err *e)
{
    json_t *j = json_object_get(o, k);
    if (!j || json_is_null(j))
        return 0;
    if (json_is_integer(j)) {
        *v = json_integer_value(j);
        return 1;
    }
    /* pydantic (vLLM) accepts 2.0 for an int field, not 2.5 */
    if (json_is_real(j) && json_real_value(j) == floor(json_real_value(j)) &&
        fabs(json_real_value(j)) < 9e15) {
        *v = (long long)json_real_value(j);
        return 1;
    }
    return serve_errf(e, 400, k, "'%s' must be an integer", k);
}

static int get_bool(json_t *o, const char *k, int *v, serve_err *e)
{
    json_t *j = json_object_get(o, k);
    if (!j || json_is_null(j))
        return 0;
    if (!json_is_boolean(j))
        return serve_errf(e, 400, k, "'%s' must be a boolean", k);
    *v = json_is_true(j);
    return 1;
}

static int check_range(serve_err *e, const char *k, double v, double lo, double hi)
{
    if (isnan(v) || v < lo || v > hi)
        return serve_errf(e, 400, k, "'%s' is %g; it must be in [%g, %g]", k, v, lo, hi);
    return 0;
}

int serve_tokenize(serve_ctx *ctx, const char *text, size_t len, int add_special,
                   int parse_special, int32_t **ids, size_t *n, serve_err *err)
{
    /* At most one token per byte plus BOS, so cap suffices; the retry
     * covers a tokenizer that adds more specials. */
    size_t cap = len + 16, got = 0;
    int32_t *v = malloc(sizeof *v * cap);
    if (!v)
        return serve_errf(err, 500, NULL, "out of memory tokenizing %zu bytes", len);
    duet_status st = duet_tokenize(ctx->model, text, len, add_special, parse_special, v, cap, &got);
    if (st && got > cap) {
        int32_t *nv = realloc(v, sizeof *v * got);
        if (!nv) {
            free(v);
            return serve_errf(err, 500, NULL, "out of memory tokenizing %zu bytes", len);
        }
        v = nv;
        cap = got;
        st = duet_tokenize(ctx->model, text, len, add_special, parse_special, v, cap, &got);
    }
    if (st) {
        free(v);
        return serve_errf(err, 400, "prompt", "tokenizing the prompt: %s", duet_last_error());
    }
    *ids = v;
    *n = got;
    return 0;
}

/* Completions prompt: a string, a one-string array, token ids, or a
 * one-element array of token ids. */
static int parse_prompt(serve_ctx *ctx, json_t *body, serve_parsed *out, serve_err *e)
{
    json_t *p = json_object_get(body, "prompt");
    if (json_is_array(p) && json_array_size(p) == 1 &&
        (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0))))
        p = json_array_get(p, 0);
    if (json_is_string(p)) {
        out->echo_len = json_string_length(p);
        if (!(out->echo_text = malloc(out->echo_len + 1)))
            return serve_errf(e, 500, NULL, "out of memory");
        memcpy(out->echo_text, json_string_value(p), out->echo_len + 1);
        return serve_tokenize(ctx, out->echo_text, out->echo_len, 1, 0, &out->prompt,
                              &out->n_prompt, e);
    }
    if (json_is_array(p) && json_array_size(p) > 0) {
        size_t n = json_array_size(p);
        if (json_is_array(json_array_get(p, 0)) || json_is_string(json_array_get(p, 0)))
            return serve_errf(e, 400, "prompt",
                              "'prompt' has %zu prompts; this server takes one per request", n);
        if (!(out->prompt = malloc(sizeof *out->prompt * n)))
            return serve_errf(e, 500, NULL, "out of memory");
        serve_buf echo = {0};
        for (size_t i = 0; i < n; i++) {
            json_t *t = json_array_get(p, i);
            json_int_t id = json_is_integer(t) ? json_integer_value(t) : -1;
            if (!json_is_integer(t) || id < 0 || id >= ctx->vocab) {
                serve_buf_free(&echo);
                return serve_errf(e, 400, "prompt",
                                  "'prompt' token %zu is not a token id in [0, %d)", i, ctx->vocab);
            }
            out->prompt[i] = (int32_t)id;
            size_t bl;
            const char *b = duet_token_bytes(ctx->model, (int32_t)id, &bl);
            if (b)
                serve_buf_put(&echo, b, bl);
        }
        out->n_prompt = n;
        out->echo_text = serve_utf8_clean(echo.p ? echo.p : "", echo.len, &out->echo_len);
        serve_buf_free(&echo);
        return out->echo_text ? 0 : serve_errf(e, 500, NULL, "out of memory");
    }
    return serve_errf(e, 400, "prompt",
                      "'prompt' must be a non-empty string or array of token ids");
}

static int parse_chat_prompt(serve_ctx *ctx, json_t *body, serve_parsed *out, serve_err *e)
{
    json_t *msgs = json_object_get(body, "messages");
    char *text = NULL;
    size_t len = 0;
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return serve_errf(e, 400, "messages", "'messages' must be a non-empty array");
    if (serve_render_chat(ctx, msgs, body, &text, &len, e))
        return -1;
    /* The template writes BOS itself when the model wants it (vLLM). */
    int rc = serve_tokenize(ctx, text, len, 0, 1, &out->prompt, &out->n_prompt, e);
    free(text);
    if (rc)
        return rc;
    if (out->echo) {
        /* vLLM's chat echo: the last message's content, if it is the
         * assistant's (continuing a reply). */
        json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
        json_t *c = json_object_get(last, "content");
        const char *role = json_string_value(json_object_get(last, "role"));
        if (json_is_string(c) && role && !strcmp(role, "assistant")) {
            out->echo_len = json_string_length(c);
            out->echo_text = strndup(json_string_value(c), out->echo_len);
        }
    }
    return 0;
}

static int parse_stop(json_t *body, serve_parsed *out, serve_err *e)
{
    json_t *s = json_object_get(body, "stop");
    if (!s || json_is_null(s))
        return 0;
    size_t n = json_is_string(s) ? 1 : json_is_array(s) ? json_array_size(s) : 0;
    if (!json_is_string(s) && !json_is_array(s))
        return serve_errf(e, 400, "stop", "'stop' must be a string or an array of strings");
    if (n > MAX_STOP)
        return serve_errf(e, 400, "stop", "'stop' has %zu strings; the limit is %d", n, MAX_STOP);
    if (n == 0)
        return 0;
    if (!(out->stop = calloc(n, sizeof *out->stop)))
        return serve_errf(e, 500, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_is_string(s) ? s : json_array_get(s, i);
        if (!json_is_string(v) || json_string_length(v) == 0)
            return serve_errf(e, 400, "stop", "'stop' entry %zu must be a non-empty string", i);
        if (!(out->stop[i] = strdup(json_string_value(v))))
            return serve_errf(e, 500, NULL, "out of memory");
        out->p.n_stop = (int)i + 1;
    }
    out->p.stop = (const char *const *)out->stop;
    return 0;
}

static int parse_token_lists(serve_ctx *ctx, json_t *body, serve_parsed *out, serve_err *e)
{
    json_t *ids = json_object_get(body, "stop_token_ids");
    if (ids && !json_is_null(ids)) {
        size_t n = json_array_size(ids);
        if (!json_is_array(ids))
            return serve_errf(e, 400, "stop_token_ids", "'stop_token_ids' must be an array");
        if (n && !(out->stop_ids = malloc(sizeof *out->stop_ids * n)))
            return serve_errf(e, 500, NULL, "out of memory");
        for (size_t i = 0; i < n; i++) {
            json_t *t = json_array_get(ids, i);
            json_int_t v = json_is_integer(t) ? json_integer_value(t) : -1;
            if (v < 0 || v >= ctx->vocab)
                return serve_errf(e, 400, "stop_token_ids",
                                  "'stop_token_ids' entry %zu is not a token id in [0, %d)", i,
                                  ctx->vocab);
            out->stop_ids[i] = (int32_t)v;
        }
        out->p.stop_token_ids = out->stop_ids;
        out->p.n_stop_token_ids = (int)n;
    }
    json_t *lb = json_object_get(body, "logit_bias");
    if (lb && !json_is_null(lb)) {
        const char *k;
        json_t *v;
        int i = 0;
        if (!json_is_object(lb))
            return serve_errf(e, 400, "logit_bias", "'logit_bias' must be an object");
        if (json_object_size(lb) &&
            !(out->bias = malloc(sizeof *out->bias * json_object_size(lb))))
            return serve_errf(e, 500, NULL, "out of memory");
        json_object_foreach(lb, k, v) {
            char *end;
            long id = strtol(k, &end, 10);
            if (!*k || *end || id < 0 || id >= ctx->vocab)
                return serve_errf(e, 400, "logit_bias",
                                  "'logit_bias' key '%s' is not a token id in [0, %d)", k,
                                  ctx->vocab);
            if (!json_is_number(v))
                return serve_errf(e, 400, "logit_bias", "'logit_bias' value of '%s' must be a number", k);
            double b = json_number_value(v);
            out->bias[i++] = (duet_logit_bias){(int32_t)id, (float)(b < -100 ? -100 : b > 100 ? 100 : b)};
        }
        out->p.logit_bias = out->bias;
        out->p.n_logit_bias = i;
    }
    return 0;
}

/* Sampling fields shared by both endpoints. */
static int parse_sampling(json_t *b, serve_parsed *o, serve_err *e)
{
    duet_request_params *p = &o->p;
    double d;
    long long i;
    int r;
    p->temperature = 1.0f; /* OpenAI's default */
    if ((r = get_number(b, "temperature", &d, e)) < 0 ||
        (r && check_range(e, "temperature", d, 0, 1e6)))
        return -1;
    if (r)
        p->temperature = (float)d;
    if ((r = get_number(b, "top_p", &d, e)) < 0 || (r && check_range(e, "top_p", d, 1e-9, 1)))
        return -1;
    if (r)
        p->top_p = (float)d;
    if ((r = get_int(b, "top_k", &i, e)) < 0 || (r && check_range(e, "top_k", (double)i, -1, 1 << 30)))
        return -1;
    if (r)
        p->top_k = (int)i;
    if ((r = get_number(b, "min_p", &d, e)) < 0 || (r && check_range(e, "min_p", d, 0, 1)))
        return -1;
    if (r)
        p->min_p = (float)d;
    if ((r = get_number(b, "presence_penalty", &d, e)) < 0 ||
        (r && check_range(e, "presence_penalty", d, -2, 2)))
        return -1;
    if (r)
        p->presence_penalty = (float)d;
    if ((r = get_number(b, "frequency_penalty", &d, e)) < 0 ||
        (r && check_range(e, "frequency_penalty", d, -2, 2)))
        return -1;
    if (r)
        p->frequency_penalty = (float)d;
    if ((r = get_number(b, "repetition_penalty", &d, e)) < 0 ||
        (r && check_range(e, "repetition_penalty", d, 1e-6, 1e6)))
        return -1;
    if (r)
        p->repetition_penalty = (float)d;
    if ((r = get_int(b, "seed", &i, e)) < 0)
        return -1;
    if (r) {
        p->seed = (uint64_t)i;
        p->has_seed = 1;
    }
    if ((r = get_int(b, "n", &i, e)) < 0 || (r && check_range(e, "n", (double)i, 1, MAX_N)))
        return -1;
    o->n = r ? (int)i : 1;
    p->n = o->n;
    if ((r = get_int(b, "best_of", &i, e)) < 0)
        return -1;
    if (r && i != o->n)
        return serve_errf(e, 400, "best_of", "'best_of' is %lld; only best_of = n (%d) is supported",
                          i, o->n);
    if ((r = get_int(b, "min_tokens", &i, e)) < 0 ||
        (r && check_range(e, "min_tokens", (double)i, 0, 1 << 30)))
        return -1;
    if (r)
        p->min_tokens = (int)i;
    if (get_bool(b, "ignore_eos", &p->ignore_eos, e) < 0 ||
        get_bool(b, "include_stop_str_in_output", &p->include_stop_str_in_output, e) < 0)
        return -1;
    int skip = 1;
    if (get_bool(b, "skip_special_tokens", &skip, e) < 0)
        return -1;
    p->keep_special_tokens = !skip;
    if ((r = get_int(b, "priority", &i, e)) < 0)
        return -1;
    if (r)
        p->priority = (int)i;
    json_t *salt = json_object_get(b, "cache_salt");
    if (salt && !json_is_null(salt)) {
        if (!json_is_string(salt) || json_string_length(salt) == 0)
            return serve_errf(e, 400, "cache_salt", "'cache_salt' must be a non-empty string");
        if (!(o->cache_salt = strdup(json_string_value(salt))))
            return serve_errf(e, 500, NULL, "out of memory");
        p->cache_salt = o->cache_salt;
    }
    if (get_bool(b, "stream", &o->stream, e) < 0)
        return -1;
    json_t *so = json_object_get(b, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so))
            return serve_errf(e, 400, "stream_options", "'stream_options' must be an object");
        if (!o->stream)
            return serve_errf(e, 400, "stream_options",
                              "'stream_options' can only be given when 'stream' is true");
        if (get_bool(so, "include_usage", &o->include_usage, e) < 0)
            return -1;
    }
    return 0;
}

static int parse_logprobs(json_t *b, serve_parsed *o, serve_err *e)
{
    long long i;
    int r, want = 0;
    o->logprobs = -1;
    if (o->kind == SERVE_COMPLETION) {
        if ((r = get_int(b, "logprobs", &i, e)) < 0 ||
            (r && check_range(e, "logprobs", (double)i, 0, DUET_MAX_LOGPROBS)))
            return -1;
        if (r)
            o->logprobs = (int)i;
    } else {
        if (get_bool(b, "logprobs", &want, e) < 0)
            return -1;
        if ((r = get_int(b, "top_logprobs", &i, e)) < 0 ||
            (r && check_range(e, "top_logprobs", (double)i, 0, DUET_MAX_LOGPROBS)))
            return -1;
        if (r && !want && i > 0)
            return serve_errf(e, 400, "top_logprobs",
                              "'top_logprobs' needs 'logprobs' set to true");
        if (want)
            o->logprobs = r ? (int)i : 0;
    }
    if (o->logprobs >= 0) {
        o->p.want_logprobs = 1;
        o->p.logprobs = o->logprobs;
    }
    return 0;
}

static int check_unsupported(json_t *b, serve_err *e)
{
    json_t *v = json_object_get(b, "suffix");
    if (v && !json_is_null(v))
        return serve_errf(e, 400, "suffix", "'suffix' is not supported by this server");
    v = json_object_get(b, "response_format");
    if (v && !json_is_null(v)) {
        const char *t = json_string_value(json_object_get(v, "type"));
        if (!t || strcmp(t, "text") != 0)
            return serve_errf(e, 400, "response_format",
                              "'response_format' type '%s' is not supported (only 'text')",
                              t ? t : "?");
    }
    return 0;
}

/* The model field must name this server's model (404 otherwise). */
static int check_model(serve_ctx *ctx, json_t *b, serve_err *e)
{
    json_t *m = json_object_get(b, "model");
    if (!m || json_is_null(m))
        return 0;
    if (!json_is_string(m))
        return serve_errf(e, 400, "model", "'model' must be a string");
    const char *s = json_string_value(m);
    const char *base = strrchr(ctx->model_path, '/');
    base = base ? base + 1 : ctx->model_path;
    if (!strcmp(s, ctx->model_name) || !strcmp(s, ctx->model_path) || !strcmp(s, base))
        return 0;
    return serve_errf(e, 404, "model", "The model `%s` does not exist; this server has `%s`", s,
                      ctx->model_name);
}

int serve_parse_request(serve_ctx *ctx, serve_kind kind, const char *body, size_t len,
                        serve_parsed *out, serve_err *err)
{
    json_error_t jerr;
    json_t *b = json_loadb(body, len, 0, &jerr);
    long long i;
    int r, rc = -1;
    memset(out, 0, sizeof *out);
    out->kind = kind;
    if (!b) {
        serve_errf(err, 400, NULL, "invalid JSON in the request body: %s (line %d, column %d)",
                   jerr.text, jerr.line, jerr.column);
        goto out;
    }
    if (!json_is_object(b)) {
        serve_errf(err, 400, NULL, "the request body must be a JSON object");
        goto out;
    }
    if (check_model(ctx, b, err) || check_unsupported(b, err) || parse_sampling(b, out, err) ||
        parse_logprobs(b, out, err) || parse_stop(b, out, err) ||
        parse_token_lists(ctx, b, out, err))
        goto out;
    if (get_bool(b, "echo", &out->echo, err) < 0)
        goto out;
    if (kind == SERVE_COMPLETION ? parse_prompt(ctx, b, out, err)
                                 : parse_chat_prompt(ctx, b, out, err))
        goto out;
    /* max_tokens: completions default 16 (OpenAI); chat: the rest of the
     * context. max_completion_tokens is chat's newer name. */
    const char *mt_name = "max_tokens";
    if ((r = get_int(b, "max_completion_tokens", &i, err)) < 0)
        goto out;
    if (r)
        mt_name = "max_completion_tokens";
    else if ((r = get_int(b, mt_name, &i, err)) < 0)
        goto out;
    long long room = (long long)ctx->max_model_len - (long long)out->n_prompt;
    if (out->n_prompt == 0) {
        serve_errf(err, 400, "prompt", "the prompt is empty (0 tokens)");
        goto out;
    }
    if (room < 1) {
        serve_errf(err, 400, "prompt",
                   "This model's maximum context length is %d tokens. However, your prompt has "
                   "%zu tokens; at most %d fit with one generated token",
                   ctx->max_model_len, out->n_prompt, ctx->max_model_len - 1);
        goto out;
    }
    if (r && i < 1) {
        serve_errf(err, 400, mt_name, "'%s' is %lld; it must be at least 1", mt_name, i);
        goto out;
    }
    if (r && i > room) {
        serve_errf(err, 400, mt_name,
                   "This model's maximum context length is %d tokens. However, you requested "
                   "%lld tokens (%zu in the prompt, %lld in the completion). Reduce the prompt "
                   "or '%s'",
                   ctx->max_model_len, (long long)out->n_prompt + i, out->n_prompt, i, mt_name);
        goto out;
    }
    out->p.max_tokens = (int)(r ? i : kind == SERVE_COMPLETION ? (room < 16 ? room : 16) : room);
    /* vLLM: completions with echo and logprobs score the prompt too (the
     * way lm-eval-harness asks for log-likelihoods). */
    if (kind == SERVE_COMPLETION && out->echo && out->logprobs >= 0) {
        out->p.want_prompt_logprobs = 1;
        out->p.prompt_logprobs = out->logprobs;
    }
    if (out->p.min_tokens > out->p.max_tokens) {
        serve_errf(err, 400, "min_tokens", "'min_tokens' is %d; it must be <= max_tokens (%d)",
                   out->p.min_tokens, out->p.max_tokens);
        goto out;
    }
    rc = 0;
out:
    json_decref(b);
    return rc;
}

void serve_parsed_free(serve_parsed *p)
{
    for (int i = 0; p->stop && i < p->p.n_stop; i++)
        free(p->stop[i]);
    free(p->stop);
    free(p->stop_ids);
    free(p->bias);
    free(p->cache_salt);
    free(p->prompt);
    free(p->echo_text);
    memset(p, 0, sizeof *p);
}
