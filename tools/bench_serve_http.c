/*
 * bench_serve_http.c — the load of `duet bench serve`: one thread, one
 * libcurl multi handle, one easy handle per request in flight. Requests
 * leave at their (Poisson) arrival times unless max_concurrency are
 * already in flight, in which case they wait for a free slot, as in vLLM's
 * client. Every response is an SSE stream; each `data:` event that
 * carries generated text (even "", a token that ends inside a UTF-8
 * character) is one token for TTFT and ITL, timed when it arrives.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_serve.h"
#include "error.h"

/* Bytes of a non-200 body kept for the error message. */
#define ERR_BODY_MAX 300

typedef struct transfer {
    CURL *easy;
    struct curl_slist *headers;
    char *body;                 /* the request JSON */
    char *line;                 /* the SSE line being received */
    size_t line_len, line_cap;
    char err_body[ERR_BODY_MAX + 1];
    size_t err_len;
    char curl_err[CURL_ERROR_SIZE];
    int chat;
    int saw_done;               /* "data: [DONE]" arrived */
    int oom;                    /* a buffer could not grow */
    double t_send, t_last, t_prev_token;
    char *stream_error;         /* the message of an SSE error event */
    bench_serve_result *res;
} transfer;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void url_join(char *buf, size_t cap, const char *base, const char *path)
{
    snprintf(buf, cap, "%s%s", base, path);
}

static int push_itl(bench_serve_result *r, double gap)
{
    if (r->n_itl == r->cap_itl) {
        long nc = r->cap_itl ? r->cap_itl * 2 : 64;
        double *n = realloc(r->itl, sizeof *n * (size_t)nc);
        if (!n)
            return -1;
        r->itl = n;
        r->cap_itl = nc;
    }
    r->itl[r->n_itl++] = gap;
    return 0;
}

/* The generated text a chunk carries, or NULL when it carries none (a
 * chat role announcement, which servers may send before any token, a
 * closing chunk with only finish_reason, usage). */
static json_t *chunk_text(json_t *choice, int chat)
{
    if (!chat)
        return json_object_get(choice, "text");
    json_t *delta = json_object_get(choice, "delta");
    json_t *t = json_object_get(delta, "content");
    if (!json_is_string(t))
        t = json_object_get(delta, "reasoning_content");
    if (json_object_get(delta, "role") && (!json_is_string(t) || json_string_length(t) == 0))
        return NULL;
    return t;
}

/* One `data:` payload. */
static void on_event(transfer *t, const char *data, double at)
{
    bench_serve_result *r = t->res;
    t->t_last = at;
    if (strcmp(data, "[DONE]") == 0) {
        t->saw_done = 1;
        return;
    }
    json_t *j = json_loads(data, 0, NULL);
    if (!j)
        return;
    json_t *err = json_object_get(j, "error");
    if (err && !t->stream_error) {
        json_t *msg = json_object_get(err, "message");
        t->stream_error = strdup(json_is_string(msg) ? json_string_value(msg) : data);
    }
    json_t *choice = json_array_get(json_object_get(j, "choices"), 0);
    json_t *text = choice ? chunk_text(choice, t->chat) : NULL;
    int closing = json_is_string(json_object_get(choice, "finish_reason")) &&
                  json_is_string(text) && json_string_length(text) == 0;
    if (json_is_string(text) && !closing) {
        if (r->n_chunks == 0)
            r->ttft = at - t->t_send;
        else if (push_itl(r, at - t->t_prev_token))
            t->oom = 1;
        r->n_chunks++;
        t->t_prev_token = at;
    }
    json_t *usage = json_object_get(j, "usage");
    if (json_is_object(usage)) {
        json_t *ct = json_object_get(usage, "completion_tokens");
        json_t *pt = json_object_get(usage, "prompt_tokens");
        if (json_is_integer(ct))
            r->output_tokens = (long)json_integer_value(ct);
        if (json_is_integer(pt))
            r->prompt_tokens = (long)json_integer_value(pt);
    }
    json_decref(j);
}

static void on_line(transfer *t, char *line, size_t len, double at)
{
    if (len && line[len - 1] == '\r')
        line[--len] = '\0';
    if (len < 5 || memcmp(line, "data:", 5) != 0)
        return; /* blank separators, ": comments", event:/id: fields */
    line += 5;
    if (*line == ' ')
        line++;
    on_event(t, line, at);
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *user)
{
    transfer *t = user;
    size_t n = size * nmemb;
    long code = 0;
    double at = now_seconds();
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
    if (code != 200) {
        size_t keep = ERR_BODY_MAX - t->err_len < n ? ERR_BODY_MAX - t->err_len : n;
        memcpy(t->err_body + t->err_len, ptr, keep);
        t->err_len += keep;
        t->err_body[t->err_len] = '\0';
        return n;
    }
    for (size_t i = 0; i < n; i++) {
        if (t->line_len + 1 >= t->line_cap) {
            size_t nc = t->line_cap ? t->line_cap * 2 : 4096;
            char *nl = realloc(t->line, nc);
            if (!nl) {
                t->oom = 1;
                return 0; /* makes curl abort the transfer */
            }
            t->line = nl;
            t->line_cap = nc;
        }
        if (ptr[i] == '\n') {
            t->line[t->line_len] = '\0';
            on_line(t, t->line, t->line_len, at);
            t->line_len = 0;
        } else {
            t->line[t->line_len++] = ptr[i];
        }
    }
    return n;
}

static char *request_body(const bench_serve_opts *o, const char *model,
                          const bench_serve_prompt *p)
{
    json_t *b = json_object();
    json_object_set_new(b, "model", json_string(model));
    if (o->chat) {
        json_t *msg = json_object();
        json_object_set_new(msg, "role", json_string("user"));
        json_object_set_new(msg, "content", json_string(p->text));
        json_object_set_new(b, "messages", json_pack("[o]", msg));
    } else {
        json_object_set_new(b, "prompt", json_string(p->text));
    }
    json_object_set_new(b, "max_tokens", json_integer(p->output_len));
    json_object_set_new(b, "temperature", json_real(0.0));
    json_object_set_new(b, "stream", json_true());
    json_object_set_new(b, "stream_options", json_pack("{s:b}", "include_usage", 1));
    if (o->ignore_eos)
        json_object_set_new(b, "ignore_eos", json_true());
    char *s = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    return s;
}

static struct curl_slist *request_headers(void)
{
    struct curl_slist *h = NULL, *n;
    const char *key = getenv("OPENAI_API_KEY");
    char auth[1024];
    h = curl_slist_append(h, "Content-Type: application/json");
    /* No "Expect: 100-continue" round trip before long prompts. */
    if (h && (n = curl_slist_append(h, "Expect:")))
        h = n;
    if (h && key && *key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
        if ((n = curl_slist_append(h, auth)))
            h = n;
    }
    return h;
}

static void transfer_free(transfer *t)
{
    if (!t)
        return;
    curl_easy_cleanup(t->easy);
    curl_slist_free_all(t->headers);
    free(t->body);
    free(t->line);
    free(t->stream_error);
    free(t);
}

/* A ready easy handle for prompt p, or NULL (then res->error is set). */
static transfer *transfer_new(const bench_serve_opts *o, const char *url, const char *model,
                              const bench_serve_prompt *p, bench_serve_result *res)
{
    transfer *t = calloc(1, sizeof *t);
    if (!t || !(t->easy = curl_easy_init()) || !(t->body = request_body(o, model, p)) ||
        !(t->headers = request_headers())) {
        transfer_free(t);
        res->error = strdup("could not set up the request (out of memory)");
        return NULL;
    }
    t->res = res;
    t->chat = o->chat;
    curl_easy_setopt(t->easy, CURLOPT_URL, url);
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, t->body);
    curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
    curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(t->easy, CURLOPT_PRIVATE, t);
    curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, t->curl_err);
    curl_easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT, 10L);
    if (o->timeout_s > 0)
        curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, (long)(o->timeout_s * 1000));
    return t;
}

/* Turn a finished transfer into its result. */
static void transfer_finish(transfer *t, CURLcode cc)
{
    bench_serve_result *r = t->res;
    long code = 0;
    char msg[512];
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
    /* A last line without its newline. */
    if (cc == CURLE_OK && code == 200 && t->line_len) {
        t->line[t->line_len] = '\0';
        on_line(t, t->line, t->line_len, now_seconds());
    }
    msg[0] = '\0';
    if (t->oom)
        snprintf(msg, sizeof msg, "out of memory while reading the stream");
    else if (cc != CURLE_OK)
        snprintf(msg, sizeof msg, "%s", t->curl_err[0] ? t->curl_err : curl_easy_strerror(cc));
    else if (code != 200)
        snprintf(msg, sizeof msg, "HTTP %ld: %s", code, t->err_body);
    else if (t->stream_error)
        snprintf(msg, sizeof msg, "error event in the stream: %s", t->stream_error);
    else if (r->n_chunks == 0)
        snprintf(msg, sizeof msg, "the stream ended without any generated token");
    else if (!t->saw_done)
        snprintf(msg, sizeof msg, "the stream ended without 'data: [DONE]' (cut short?)");
    if (msg[0]) {
        r->ok = 0;
        r->error = strdup(msg);
        return;
    }
    r->ok = 1;
    r->latency = t->t_last - t->t_send;
    if (r->output_tokens <= 0)
        r->output_tokens = r->n_chunks;
}

/* Arrival offsets in seconds: the first at 0, then exponential gaps of
 * mean 1/rate (a Poisson process), all 0 for an infinite rate. */
static void arrivals(const bench_serve_opts *o, double *at)
{
    bench_serve_rng rng = {o->seed ^ 0x5bd1e995ull};
    double t = 0;
    for (long i = 0; i < o->num_prompts; i++) {
        at[i] = t;
        if (isfinite(o->request_rate))
            t += -log(1.0 - bench_serve_rng_uniform(&rng)) / o->request_rate;
    }
}

static void progress(const bench_serve_opts *o, long done, long failed, double elapsed)
{
    long step = o->num_prompts >= 10 ? o->num_prompts / 10 : 1;
    if (done % step == 0 || done == o->num_prompts)
        fprintf(stderr, "bench serve: %ld/%ld requests done, %ld failed, %.1f s\n", done,
                o->num_prompts, failed, elapsed);
}

duet_status bench_serve_run(const bench_serve_opts *o, const char *model_name,
                            const bench_serve_prompt *prompts, bench_serve_result *res,
                            double *duration)
{
    duet_status st = DUET_OK;
    long n = o->num_prompts, next = 0, active = 0, done = 0, failed = 0;
    char url[2048];
    double *at = malloc(sizeof *at * (size_t)n);
    CURLM *multi = curl_multi_init();
    if (!at || !multi) {
        st = duet_error(DUET_ERR_OUT_OF_MEMORY, "cannot set up %ld requests", n);
        goto out;
    }
    url_join(url, sizeof url, o->base_url, o->endpoint);
    arrivals(o, at);
    fprintf(stderr, "bench serve: %ld requests to %s, request rate %g/s, max concurrency %ld\n",
            n, url, o->request_rate, o->max_concurrency);
    double t0 = now_seconds(), t_end = t0;
    while (done < n) {
        double now = now_seconds();
        /* Start every request whose time has come while a slot is free. */
        while (next < n && at[next] <= now - t0 && active < o->max_concurrency) {
            transfer *t = transfer_new(o, url, model_name, &prompts[next], &res[next]);
            next++;
            if (t) {
                t->t_send = now_seconds();
                if (curl_multi_add_handle(multi, t->easy) == CURLM_OK) {
                    active++;
                    continue;
                }
                t->res->error = strdup("libcurl refused the request");
                transfer_free(t);
            }
            done++, failed++;
            progress(o, done, failed, now_seconds() - t0);
        }
        int running;
        curl_multi_perform(multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            char *priv = NULL;
            CURL *easy = m->easy_handle;
            CURLcode cc = m->data.result;
            curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
            transfer *t = (transfer *)priv;
            curl_multi_remove_handle(multi, easy);
            transfer_finish(t, cc);
            failed += !t->res->ok;
            transfer_free(t);
            active--, done++;
            t_end = now_seconds();
            progress(o, done, failed, t_end - t0);
        }
        if (done == n)
            break;
        /* Sleep until data arrives or the next request is due. */
        int wait_ms = 200;
        if (next < n && active < o->max_concurrency) {
            double due = (at[next] - (now_seconds() - t0)) * 1000;
            wait_ms = due <= 0 ? 0 : due < wait_ms ? (int)ceil(due) : wait_ms;
        }
        if (wait_ms > 0)
            curl_multi_poll(multi, NULL, 0, wait_ms, NULL);
    }
    *duration = t_end - t0;
out:
    curl_multi_cleanup(multi);
    free(at);
    return st;
}

void bench_serve_results_free(bench_serve_result *res, long n)
{
    if (!res)
        return;
    for (long i = 0; i < n; i++) {
        free(res[i].error);
        free(res[i].itl);
    }
    free(res);
}

static size_t keep_body(char *ptr, size_t size, size_t nmemb, void *user)
{
    char **buf = user;
    size_t n = size * nmemb, have = *buf ? strlen(*buf) : 0;
    if (have + n > (1u << 20))
        return n; /* a model list is small; ignore the rest */
    char *nb = realloc(*buf, have + n + 1);
    if (!nb)
        return 0;
    memcpy(nb + have, ptr, n);
    nb[have + n] = '\0';
    *buf = nb;
    return n;
}

duet_status bench_serve_probe(const bench_serve_opts *o, char **model_id)
{
    duet_status st = DUET_OK;
    char url[2048], err[CURL_ERROR_SIZE] = "";
    char *body = NULL;
    long code = 0;
    struct curl_slist *headers = request_headers();
    CURL *c = curl_easy_init();
    *model_id = NULL;
    if (!c || !headers) {
        st = duet_error(DUET_ERR_OUT_OF_MEMORY, "cannot set up libcurl");
        goto out;
    }
    url_join(url, sizeof url, o->base_url, "/v1/models");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, keep_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    CURLcode cc = curl_easy_perform(c);
    if (cc != CURLE_OK) {
        st = duet_error(DUET_ERR_IO, "cannot reach the server at %s: %s", url,
                        err[0] ? err : curl_easy_strerror(cc));
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    if (code == 401 || code == 403) {
        st = duet_error(DUET_ERR_INVALID_ARG,
                        "%s answered HTTP %ld; set OPENAI_API_KEY to the server's "
                        "API key",
                        url, code);
        goto out;
    }
    json_t *j = code == 200 && body ? json_loads(body, 0, NULL) : NULL;
    json_t *id = json_object_get(json_array_get(json_object_get(j, "data"), 0), "id");
    if (json_is_string(id))
        *model_id = strdup(json_string_value(id));
    json_decref(j);
out:
    free(body);
    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
    return st;
}
