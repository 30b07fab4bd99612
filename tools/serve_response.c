/*
 * serve_response.c — what goes back to the client: OpenAI error bodies,
 * completion / chat responses, and their SSE chunks (vLLM's shapes).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve.h"

int serve_buf_put(serve_buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np)
            return -1;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int serve_buf_printf(serve_buf *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if ((size_t)n < sizeof small)
        return serve_buf_put(b, small, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big)
        return -1;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = serve_buf_put(b, big, (size_t)n);
    free(big);
    return rc;
}

void serve_buf_free(serve_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    size_t need;
    unsigned cp;
    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xC2 && s[0] <= 0xDF)
        need = 2, cp = s[0] & 0x1F;
    else if (s[0] >= 0xE0 && s[0] <= 0xEF)
        need = 3, cp = s[0] & 0x0F;
    else if (s[0] >= 0xF0 && s[0] <= 0xF4)
        need = 4, cp = s[0] & 0x07;
    else
        return 0;
    if (n < need)
        return 0;
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if ((need == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (need == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return need;
}

char *serve_utf8_clean(const char *s, size_t n, size_t *out_len)
{
    char *o = malloc(3 * n + 1);
    size_t k = 0;
    if (!o)
        return NULL;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_seq((const unsigned char *)s + i, n - i);
        if (l) {
            memcpy(o + k, s + i, l);
            k += l;
            i += l;
        } else {
            memcpy(o + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i++;
        }
    }
    o[k] = '\0';
    *out_len = k;
    return o;
}

static json_t *clean_string(const char *s, size_t n)
{
    size_t l;
    char *c = serve_utf8_clean(s, n, &l);
    json_t *j = c ? json_stringn(c, l) : NULL;
    free(c);
    return j;
}

static const char *error_type(int status)
{
    switch (status) {
    case 400: return "BadRequestError";
    case 401: return "AuthenticationError";
    case 404: return "NotFoundError";
    case 405: return "MethodNotAllowedError";
    case 413: return "RequestTooLargeError";
    case 503: return "ServiceUnavailableError";
    default: return "InternalServerError";
    }
}

static json_t *error_json(int status, const char *msg, const char *param)
{
    /* Messages may quote user input: make them valid UTF-8 for JSON. */
    json_t *e = json_pack("{s:o, s:s, s:o, s:i}", "message", clean_string(msg, strlen(msg)),
                          "type", error_type(status), "param",
                          param ? clean_string(param, strlen(param)) : json_null(), "code",
                          status);
    return e ? json_pack("{s:o}", "error", e) : NULL;
}

char *serve_error_body(int status, const char *msg, const char *param, size_t *len)
{
    json_t *j = error_json(status, msg, param);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    *len = s ? strlen(s) : 0;
    return s;
}

static const char *finish_str(duet_finish f)
{
    return f == DUET_FINISHED_STOP ? "stop" : f == DUET_FINISHED_LENGTH ? "length" : "abort";
}

static json_t *stop_reason(const char *stop_str, int32_t stop_token)
{
    if (stop_str)
        return clean_string(stop_str, strlen(stop_str));
    return stop_token >= 0 ? json_integer(stop_token) : json_null();
}

/* vLLM writes -inf log-probabilities as -9999.0 (JSON has no infinity). */
static json_t *lp_value(float v)
{
    return json_real(isfinite(v) ? v : -9999.0);
}

static json_t *token_text(serve_ctx *ctx, int32_t id)
{
    size_t len = 0;
    const char *s = duet_token_bytes(ctx->model, id, &len);
    return clean_string(s ? s : "", s ? len : 0);
}

static json_t *token_bytes(serve_ctx *ctx, int32_t id)
{
    size_t len = 0;
    const unsigned char *s = (const unsigned char *)duet_token_bytes(ctx->model, id, &len);
    json_t *a = json_array();
    for (size_t i = 0; s && i < len; i++)
        json_array_append_new(a, json_integer(s[i]));
    return a;
}

static json_t *new_logprobs(serve_kind kind)
{
    if (kind == SERVE_CHAT)
        return json_pack("{s:[]}", "content");
    return json_pack("{s:[], s:[], s:[], s:[]}", "tokens", "token_logprobs", "top_logprobs",
                     "text_offset");
}

/* Append ev's tokens to a logprobs object of r's kind. */
static void logprobs_append(serve_req *r, serve_choice *ch, json_t *lp, const serve_event *ev)
{
    serve_ctx *ctx = r->ctx;
    for (int t = 0; ev->logprobs && t < ev->n_tokens; t++) {
        const duet_logprobs *l = &ev->logprobs[t];
        int n_top = l->n_top < r->logprobs ? l->n_top : r->logprobs;
        if (r->kind == SERVE_CHAT) {
            json_t *tops = json_array();
            for (int k = 0; k < n_top; k++)
                json_array_append_new(
                    tops, json_pack("{s:o, s:o, s:o}", "token", token_text(ctx, l->top_ids[k]),
                                    "logprob", lp_value(l->top_logprobs[k]), "bytes",
                                    token_bytes(ctx, l->top_ids[k])));
            json_array_append_new(json_object_get(lp, "content"),
                                  json_pack("{s:o, s:o, s:o, s:o}", "token",
                                            token_text(ctx, l->token), "logprob",
                                            lp_value(l->logprob), "bytes",
                                            token_bytes(ctx, l->token), "top_logprobs", tops));
            continue;
        }
        json_t *tok = token_text(ctx, l->token), *tops = json_object();
        /* vLLM's dict holds the sampled token and the top-N. */
        json_object_set_new(tops, json_string_value(tok), lp_value(l->logprob));
        for (int k = 0; k < n_top; k++) {
            json_t *s = token_text(ctx, l->top_ids[k]);
            json_object_set_new(tops, json_string_value(s), lp_value(l->top_logprobs[k]));
            json_decref(s);
        }
        json_array_append_new(json_object_get(lp, "text_offset"),
                              json_integer((json_int_t)ch->text_offset));
        ch->text_offset += json_string_length(tok);
        json_array_append_new(json_object_get(lp, "tokens"), tok);
        json_array_append_new(json_object_get(lp, "token_logprobs"), lp_value(l->logprob));
        json_array_append_new(json_object_get(lp, "top_logprobs"), tops);
    }
}

static json_t *usage_json(const serve_req *r)
{
    return json_pack("{s:i, s:I, s:I, s:{s:i}}", "prompt_tokens", r->usage_prompt,
                     "completion_tokens", (json_int_t)r->usage_completion, "total_tokens",
                     (json_int_t)(r->usage_prompt + r->usage_completion), "prompt_tokens_details",
                     "cached_tokens", r->usage_cached);
}

static json_t *chunk_head(const serve_req *r)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:[]}", "id", r->id, "object",
                     r->kind == SERVE_CHAT ? "chat.completion.chunk" : "text_completion",
                     "created", (json_int_t)r->created, "model", r->ctx->model_name, "choices");
}

static void put_sse(serve_buf *out, json_t *chunk)
{
    char *s = chunk ? json_dumps(chunk, JSON_COMPACT) : NULL;
    if (s) {
        serve_buf_put(out, "data: ", 6);
        serve_buf_put(out, s, strlen(s));
        serve_buf_put(out, "\n\n", 2);
    }
    free(s);
    json_decref(chunk);
}

/* One chunk for sample index with text (may be NULL = no content key). */
static json_t *make_chunk(serve_req *r, int index, json_t *text, json_t *lp, duet_finish fin,
                          json_t *sr, int role)
{
    json_t *c = chunk_head(r), *choice = json_pack("{s:i}", "index", index);
    if (r->kind == SERVE_CHAT) {
        json_t *delta = json_object();
        if (role)
            json_object_set_new(delta, "role", json_string("assistant"));
        if (text)
            json_object_set_new(delta, "content", text);
        json_object_set_new(choice, "delta", delta);
    } else {
        json_object_set_new(choice, "text", text ? text : json_string(""));
    }
    json_object_set_new(choice, "logprobs", lp ? lp : json_null());
    json_object_set_new(choice, "finish_reason", fin ? json_string(finish_str(fin)) : json_null());
    json_object_set_new(choice, "stop_reason", sr ? sr : json_null());
    json_array_append_new(json_object_get(c, "choices"), choice);
    if (r->include_usage)
        json_object_set_new(c, "usage", json_null());
    return c;
}

static void count_usage(serve_req *r, const serve_event *ev)
{
    if (ev->n_prompt > 0)
        r->usage_prompt = ev->n_prompt;
    if (ev->n_cached > r->usage_cached)
        r->usage_cached = ev->n_cached;
    r->usage_completion += ev->n_tokens;
}

void serve_stream_begin(serve_req *r, serve_buf *out)
{
    for (int i = 0; i < r->n; i++) {
        if (r->kind == SERVE_CHAT)
            put_sse(out, make_chunk(r, i, json_string(""), NULL, DUET_FINISHED_NOT, NULL, 1));
        if (r->echo && r->echo_text && r->echo_len)
            put_sse(out, make_chunk(r, i, clean_string(r->echo_text, r->echo_len), NULL,
                                    DUET_FINISHED_NOT, NULL, 0));
        if (r->echo)
            r->choices[i].text_offset = r->echo_len;
    }
}

void serve_stream_event(serve_req *r, const serve_event *ev, serve_buf *out)
{
    if (ev->error) {
        free(r->error);
        r->error = strdup(ev->error);
        return;
    }
    if (ev->index < 0 || ev->index >= r->n)
        return;
    count_usage(r, ev);
    /* A chunk per produced token (even when its text is held back) and one
     * for the finish, so streamed tokens and usage always agree. */
    if (ev->n_tokens == 0 && ev->text_len == 0 && !ev->finish)
        return;
    serve_choice *ch = &r->choices[ev->index];
    json_t *lp = NULL;
    if (r->logprobs >= 0 && ev->logprobs && ev->n_tokens > 0) {
        lp = new_logprobs(r->kind);
        logprobs_append(r, ch, lp, ev);
    }
    json_t *sr = ev->finish ? stop_reason(ev->stop_str, ev->stop_token) : NULL;
    put_sse(out, make_chunk(r, ev->index, clean_string(ev->text, ev->text_len), lp, ev->finish,
                            sr, 0));
}

void serve_stream_end(serve_req *r, serve_buf *out)
{
    if (r->include_usage) {
        json_t *c = chunk_head(r);
        json_object_set_new(c, "usage", usage_json(r));
        put_sse(out, c);
    }
    if (r->error)
        put_sse(out, error_json(500, r->error, NULL));
    serve_buf_put(out, "data: [DONE]\n\n", 14);
}

/* Completions echo + logprobs: the prompt's entries (the first token has
 * no log-probability: null, as in vLLM), put before every choice's own. */
static void collect_prompt_logprobs(serve_req *r, const serve_event *ev)
{
    json_t *tok0 = token_text(r->ctx, r->prompt0);
    serve_choice tmp = {.text_offset = json_string_length(tok0)};
    serve_event fake = {.logprobs = ev->prompt_logprobs, .n_tokens = ev->n_prompt_logprobs};
    r->prompt_lp = json_pack("{s:[o], s:[n], s:[n], s:[i]}", "tokens", tok0, "token_logprobs",
                             "top_logprobs", "text_offset", 0);
    if (r->prompt_lp)
        logprobs_append(r, &tmp, r->prompt_lp, &fake);
}

void serve_collect_event(serve_req *r, const serve_event *ev)
{
    if (ev->error) {
        free(r->error);
        r->error = strdup(ev->error);
        return;
    }
    if (ev->index < 0 || ev->index >= r->n)
        return;
    serve_choice *ch = &r->choices[ev->index];
    count_usage(r, ev);
    if (ev->prompt_logprobs && r->kind == SERVE_COMPLETION && r->echo && r->logprobs >= 0 &&
        !r->prompt_lp && r->prompt0 >= 0)
        collect_prompt_logprobs(r, ev);
    if (ch->n_tokens == 0 && ch->text.len == 0 && r->echo && r->echo_text) {
        serve_buf_put(&ch->text, r->echo_text, r->echo_len);
        ch->text_offset = r->echo_len;
    }
    serve_buf_put(&ch->text, ev->text, ev->text_len);
    ch->n_tokens += ev->n_tokens;
    if (r->logprobs >= 0 && ev->logprobs) {
        if (!ch->logprobs)
            ch->logprobs = new_logprobs(r->kind);
        logprobs_append(r, ch, ch->logprobs, ev);
    }
    if (ev->finish) {
        ch->finished = 1;
        ch->finish = ev->finish;
        ch->stop_token = ev->stop_token;
        free(ch->stop_str);
        ch->stop_str = ev->stop_str ? strdup(ev->stop_str) : NULL;
    }
}

char *serve_final_body(serve_req *r, size_t *len)
{
    json_t *b = json_pack("{s:s, s:s, s:I, s:s, s:[]}", "id", r->id, "object",
                          r->kind == SERVE_CHAT ? "chat.completion" : "text_completion", "created",
                          (json_int_t)r->created, "model", r->ctx->model_name, "choices");
    for (int i = 0; b && i < r->n; i++) {
        serve_choice *ch = &r->choices[i];
        json_t *text = clean_string(ch->text.p ? ch->text.p : "", ch->text.len);
        json_t *lp = ch->logprobs ? json_incref(ch->logprobs)
                                  : r->logprobs >= 0 ? new_logprobs(r->kind) : json_null();
        if (r->prompt_lp && json_is_object(lp)) {
            json_t *all = json_deep_copy(r->prompt_lp);
            const char *k;
            json_t *v;
            json_object_foreach(all, k, v) json_array_extend(v, json_object_get(lp, k));
            json_decref(lp);
            lp = all;
        }
        json_t *c = json_pack("{s:i, s:o, s:s, s:o}", "index", i, "logprobs", lp,
                              "finish_reason", finish_str(ch->finish), "stop_reason",
                              stop_reason(ch->stop_str, ch->stop_token));
        if (r->kind == SERVE_CHAT)
            json_object_set_new(c, "message", json_pack("{s:s, s:o, s:[]}", "role", "assistant",
                                                        "content", text, "tool_calls"));
        else
            json_object_set_new(c, "text", text);
        json_array_append_new(json_object_get(b, "choices"), c);
    }
    json_object_set_new(b, "usage", usage_json(r));
    char *s = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    *len = s ? strlen(s) : 0;
    return s;
}
