/*
 * serve_http.c — the HTTP side of `duet serve` on libmicrohttpd: one
 * internal polling thread (epoll), routing, API-key check, body limit,
 * and responses. A generation request suspends its connection while it
 * waits; the engine's callback resumes it (serve.c), so thousands of
 * streams share the one thread. Streams are chunked responses whose
 * content reader drains the request's event queue into SSE.
 */
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "serve.h"
#include "serve_metrics.h"

/* The dashboard page, embedded at build time (tools/serve.cmake). */
extern const unsigned char duet_dashboard_html[];
extern const size_t duet_dashboard_html_len;

enum { SSE_BLOCK = 16 * 1024 };

/* Per HTTP request state (libmicrohttpd's con_cls). */
typedef struct serve_conn {
    serve_buf body;
    int too_large;
    serve_req *req;   /* a generation request this connection waits on */
    serve_buf out;    /* SSE bytes not yet handed to libmicrohttpd */
} serve_conn;

static enum MHD_Result send_bytes(serve_ctx *ctx, struct MHD_Connection *c, int status,
                                  char *body, size_t len, const char *type)
{
    if (!body) {
        body = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"InternalServerError\","
                      "\"param\":null,\"code\":500}}");
        if (!body)
            return MHD_NO;
        len = strlen(body);
        status = 500;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", type);
    enum MHD_Result r = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    serve_metrics_http_status(ctx->metrics, status);
    return r;
}

static enum MHD_Result send_json(serve_ctx *ctx, struct MHD_Connection *c, int status,
                                 json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return send_bytes(ctx, c, status, s, s ? strlen(s) : 0, "application/json");
}

static enum MHD_Result send_error(serve_ctx *ctx, struct MHD_Connection *c, int status,
                                  const char *param, const char *fmt, ...)
{
    char msg[1024];
    size_t len;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char *body = serve_error_body(status, msg, param, &len);
    return send_bytes(ctx, c, status, body, len, "application/json");
}

/* Constant-time comparison, so the key cannot be guessed byte by byte. */
static int same_secret(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char d = la != lb;
    for (size_t i = 0; i < la; i++)
        d |= (unsigned char)a[i] ^ (unsigned char)b[i % (lb ? lb : 1)];
    return d == 0;
}

static int authorized(serve_ctx *ctx, struct MHD_Connection *c)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!ctx->cfg.api_key)
        return 1;
    return h && !strncmp(h, "Bearer ", 7) && same_secret(h + 7, ctx->cfg.api_key);
}

/* ---- generation ------------------------------------------------------- */

/* Stream content reader: hand out pending SSE bytes; when there are none,
 * turn queued events into SSE, or suspend until the engine has more. */
static ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    serve_conn *sc = cls;
    serve_req *r = sc->req;
    (void)pos;
    for (;;) {
        if (sc->out.pos < sc->out.len) {
            size_t n = sc->out.len - sc->out.pos;
            if (n > max)
                n = max;
            memcpy(buf, sc->out.p + sc->out.pos, n);
            sc->out.pos += n;
            if (sc->out.pos == sc->out.len)
                sc->out.pos = sc->out.len = 0;
            return (ssize_t)n;
        }
        if (r->stream_ended)
            return MHD_CONTENT_READER_END_OF_STREAM;
        pthread_mutex_lock(&r->mu);
        serve_event *ev = r->head;
        int done = r->engine_done;
        r->head = r->tail = NULL;
        if (!ev && !done && r->heartbeat) {
            r->heartbeat = 0;
            pthread_mutex_unlock(&r->mu);
            serve_buf_put(&sc->out, ": keep-alive\n\n", 14);
            continue;
        }
        if (!ev && !done) {
            /* Under r->mu, so the engine either queued before this check or
             * sees suspended and resumes us. */
            r->suspended = 1;
            MHD_suspend_connection(r->conn);
            pthread_mutex_unlock(&r->mu);
            return 0;
        }
        pthread_mutex_unlock(&r->mu);
        while (ev) {
            serve_event *next = ev->next;
            serve_stream_event(r, ev, &sc->out);
            free(ev);
            ev = next;
        }
        if (done) {
            serve_stream_end(r, &sc->out);
            r->stream_ended = 1;
        }
    }
}

/* Non-streaming: answer when every sample is done, else wait suspended. */
static enum MHD_Result finish_or_wait(serve_ctx *ctx, struct MHD_Connection *c, serve_conn *sc)
{
    serve_req *r = sc->req;
    pthread_mutex_lock(&r->mu);
    if (!r->engine_done) {
        r->suspended = 1;
        MHD_suspend_connection(c);
        pthread_mutex_unlock(&r->mu);
        return MHD_YES;
    }
    serve_event *ev = r->head;
    r->head = r->tail = NULL;
    pthread_mutex_unlock(&r->mu);
    while (ev) {
        serve_event *next = ev->next;
        serve_collect_event(r, ev);
        free(ev);
        ev = next;
    }
    if (r->error)
        return send_error(ctx, c, 500, NULL, "the engine failed: %s", r->error);
    size_t len;
    char *body = serve_final_body(r, &len);
    return send_bytes(ctx, c, 200, body, len, "application/json");
}

static serve_req *req_create(serve_ctx *ctx, serve_parsed *pp)
{
    serve_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->choices = calloc((size_t)pp->n, sizeof *r->choices);
    r->first_token_t = calloc((size_t)pp->n, sizeof *r->first_token_t);
    r->last_token_t = calloc((size_t)pp->n, sizeof *r->last_token_t);
    r->n_out = calloc((size_t)pp->n, sizeof *r->n_out);
    if (!r->choices || !r->first_token_t || !r->last_token_t || !r->n_out) {
        free(r->choices);
        free(r->first_token_t);
        free(r->last_token_t);
        free(r->n_out);
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    r->ctx = ctx;
    r->refs = 2;
    r->kind = pp->kind;
    r->stream = pp->stream;
    r->include_usage = pp->include_usage;
    r->n = pp->n;
    r->echo = pp->echo;
    r->logprobs = pp->logprobs;
    r->created = (long)time(NULL);
    r->echo_text = pp->echo_text; /* moved */
    r->echo_len = pp->echo_len;
    pp->echo_text = NULL;
    r->n_prompt = (int)pp->n_prompt;
    r->prompt0 = pp->n_prompt ? pp->prompt[0] : -1;
    r->max_tokens = pp->p.max_tokens;
    r->wake_on_done_only = !pp->stream;
    for (int i = 0; i < r->n; i++)
        r->choices[i].stop_token = -1;
    return r;
}

static enum MHD_Result handle_generate(serve_ctx *ctx, struct MHD_Connection *c, serve_conn *sc,
                                       serve_kind kind)
{
    serve_parsed pp;
    serve_err err = {0};
    enum MHD_Result ret;
    pthread_mutex_lock(&ctx->mu);
    int dead = ctx->dead, stop = ctx->stop || ctx->draining, waiting = ctx->n_unscheduled;
    pthread_mutex_unlock(&ctx->mu);
    if (dead)
        return send_error(ctx, c, 503, NULL, "the engine has failed: %s", ctx->dead_msg);
    if (stop)
        return send_error(ctx, c, 503, NULL, "the server is shutting down");
    if (ctx->cfg.max_queue > 0 && waiting >= ctx->cfg.max_queue)
        return send_error(ctx, c, 503, NULL,
                          "the server is overloaded: %d requests are waiting; --max-queue is %ld",
                          waiting, ctx->cfg.max_queue);
    if (serve_parse_request(ctx, kind, sc->body.p ? sc->body.p : "", sc->body.len, &pp, &err)) {
        serve_parsed_free(&pp);
        return send_error(ctx, c, err.status, err.param, "%s", err.msg);
    }
    serve_req *r = req_create(ctx, &pp);
    if (!r) {
        serve_parsed_free(&pp);
        return send_error(ctx, c, 500, NULL, "out of memory creating the request");
    }
    serve_registry_add(ctx, r);
    r->conn = c;
    r->arrival = serve_now();
    pp.p.request_id = r->id;
    if (r->stream)
        serve_stream_begin(r, &sc->out);
    sc->req = r;
    if (duet_engine_add_request(ctx->engine, pp.prompt, pp.n_prompt, &pp.p, serve_on_output, r)) {
        const char *msg = duet_last_error();
        serve_registry_remove(ctx, r);
        sc->req = NULL;
        ret = send_error(ctx, c, 400, NULL, "%s", msg);
        serve_req_release(r);
        serve_req_release(r);
        serve_parsed_free(&pp);
        return ret;
    }
    serve_parsed_free(&pp);
    serve_metrics_request(ctx->metrics, r->n, r->max_tokens);
    serve_wake_engine(ctx);
    if (!r->stream)
        return finish_or_wait(ctx, c, sc);
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, SSE_BLOCK, sse_reader, sc, NULL);
    if (!resp)
        return MHD_NO; /* on_completed aborts the request */
    MHD_add_response_header(resp, "Content-Type", "text/event-stream; charset=utf-8");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    ret = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    serve_metrics_http_status(ctx->metrics, 200);
    return ret;
}

/* ---- small endpoints -------------------------------------------------- */

static enum MHD_Result handle_models(serve_ctx *ctx, struct MHD_Connection *c)
{
    json_t *m = json_pack("{s:s, s:s, s:I, s:s, s:s, s:n, s:i, s:[]}", "id", ctx->model_name,
                          "object", "model", "created", (json_int_t)time(NULL), "owned_by", "duet",
                          "root", ctx->model_path, "parent", "max_model_len", ctx->max_model_len,
                          "permission");
    return send_json(ctx, c, 200, json_pack("{s:s, s:[o]}", "object", "list", "data", m));
}

static enum MHD_Result handle_tokenize(serve_ctx *ctx, struct MHD_Connection *c, serve_conn *sc)
{
    json_error_t jerr;
    serve_err err = {0};
    json_t *b = json_loadb(sc->body.p ? sc->body.p : "", sc->body.len, 0, &jerr);
    json_t *msgs = json_object_get(b, "messages"), *prompt = json_object_get(b, "prompt");
    json_t *add = json_object_get(b, "add_special_tokens");
    char *text = NULL;
    size_t len = 0, n = 0;
    int32_t *ids = NULL;
    enum MHD_Result ret;
    if (!json_is_object(b)) {
        json_decref(b);
        return send_error(ctx, c, 400, NULL, "the request body must be a JSON object%s%s",
                          b ? "" : ": ", b ? "" : jerr.text);
    }
    if (add && !json_is_boolean(add)) {
        json_decref(b);
        return send_error(ctx, c, 400, "add_special_tokens", "'add_special_tokens' must be a boolean");
    }
    int rc;
    if (json_is_array(msgs)) {
        rc = serve_render_chat(ctx, msgs, b, &text, &len, &err) ||
             serve_tokenize(ctx, text, len, add ? json_is_true(add) : 0, 1, &ids, &n, &err);
    } else if (json_is_string(prompt)) {
        rc = serve_tokenize(ctx, json_string_value(prompt), json_string_length(prompt),
                            add ? json_is_true(add) : 1, 0, &ids, &n, &err);
    } else {
        rc = serve_errf(&err, 400, "prompt", "give 'prompt' (a string) or 'messages' (an array)");
    }
    if (rc) {
        ret = send_error(ctx, c, err.status, err.param, "%s", err.msg);
    } else {
        json_t *t = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(t, json_integer(ids[i]));
        ret = send_json(ctx, c, 200,
                        json_pack("{s:I, s:i, s:o, s:n}", "count", (json_int_t)n, "max_model_len",
                                  ctx->max_model_len, "tokens", t, "token_strs"));
    }
    free(text);
    free(ids);
    json_decref(b);
    return ret;
}

static enum MHD_Result handle_detokenize(serve_ctx *ctx, struct MHD_Connection *c,
                                         serve_conn *sc)
{
    json_t *b = json_loadb(sc->body.p ? sc->body.p : "", sc->body.len, 0, NULL);
    json_t *toks = json_object_get(b, "tokens"), *t;
    serve_buf out = {0};
    size_t i;
    enum MHD_Result ret;
    if (!json_is_array(toks)) {
        json_decref(b);
        return send_error(ctx, c, 400, "tokens", "'tokens' must be an array of token ids");
    }
    json_array_foreach(toks, i, t) {
        json_int_t id = json_is_integer(t) ? json_integer_value(t) : -1;
        size_t len;
        const char *s = id >= 0 && id < ctx->vocab ? duet_token_bytes(ctx->model, (int32_t)id, &len)
                                                   : NULL;
        if (!s) {
            serve_buf_free(&out);
            json_decref(b);
            return send_error(ctx, c, 400, "tokens", "'tokens'[%zu] is not a token id in [0, %d)",
                              i, ctx->vocab);
        }
        serve_buf_put(&out, s, len);
    }
    size_t clen;
    char *clean = serve_utf8_clean(out.p ? out.p : "", out.len, &clen);
    ret = send_json(ctx, c, 200, clean ? json_pack("{s:s%}", "prompt", clean, clen) : NULL);
    free(clean);
    serve_buf_free(&out);
    json_decref(b);
    return ret;
}

static enum MHD_Result handle_metrics(serve_ctx *ctx, struct MHD_Connection *c)
{
    size_t len = 0;
    char *text = serve_metrics_prometheus(ctx->metrics, &len);
    if (!text)
        return send_error(ctx, c, 500, NULL, "out of memory writing the metrics");
    return send_bytes(ctx, c, 200, text, len, "text/plain; version=0.0.4; charset=utf-8");
}

static enum MHD_Result handle_dashboard(serve_ctx *ctx, struct MHD_Connection *c)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        duet_dashboard_html_len, (void *)duet_dashboard_html, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "text/html; charset=utf-8");
    enum MHD_Result r = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    serve_metrics_http_status(ctx->metrics, 200);
    return r;
}

static enum MHD_Result handle_stats(serve_ctx *ctx, struct MHD_Connection *c)
{
    json_t *j = serve_metrics_json(ctx->metrics);
    if (j) {
        json_object_set_new(j, "max_model_len", json_integer(ctx->max_model_len));
        json_object_set_new(j, "requests", serve_inflight_json(ctx));
    }
    return send_json(ctx, c, 200, j);
}

/* ---- routing ---------------------------------------------------------- */

typedef enum { R_NONE, R_GET, R_POST } route_method;

typedef struct route {
    const char *path;
    route_method method;
    int auth;
    int id;
} route;

enum { EP_COMPLETIONS, EP_CHAT, EP_MODELS, EP_TOKENIZE, EP_DETOKENIZE, EP_HEALTH, EP_VERSION,
       EP_METRICS, EP_DASHBOARD, EP_STATS };

static const route routes[] = {
    {"/v1/completions", R_POST, 1, EP_COMPLETIONS},
    {"/v1/chat/completions", R_POST, 1, EP_CHAT},
    {"/v1/models", R_GET, 1, EP_MODELS},
    {"/tokenize", R_POST, 0, EP_TOKENIZE},
    {"/detokenize", R_POST, 0, EP_DETOKENIZE},
    {"/health", R_GET, 0, EP_HEALTH},
    {"/version", R_GET, 0, EP_VERSION},
    {"/metrics", R_GET, 0, EP_METRICS},
    {"/dashboard", R_GET, 0, EP_DASHBOARD},
    {"/dashboard/", R_GET, 0, EP_DASHBOARD},
    {"/dashboard/stats", R_GET, 0, EP_STATS},
};

static enum MHD_Result dispatch(serve_ctx *ctx, struct MHD_Connection *c, const char *url,
                                const char *method, serve_conn *sc)
{
    const route *rt = NULL;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (!strcmp(url, routes[i].path))
            rt = &routes[i];
    if (!strncmp(url, "/v1/", 4) && !authorized(ctx, c))
        return send_error(ctx, c, 401, NULL,
                          "invalid or missing API key (send Authorization: Bearer <key>)");
    if (!rt)
        return send_error(ctx, c, 404, NULL, "no route for %s %s", method, url);
    int is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    if ((rt->method == R_GET && !is_get) || (rt->method == R_POST && strcmp(method, "POST")))
        return send_error(ctx, c, 405, NULL, "%s does not accept %s", url, method);
    if (sc->too_large)
        return send_error(ctx, c, 413, NULL, "the request body is over %ld bytes (--max-body)",
                          ctx->cfg.max_body);
    switch (rt->id) {
    case EP_COMPLETIONS: return handle_generate(ctx, c, sc, SERVE_COMPLETION);
    case EP_CHAT: return handle_generate(ctx, c, sc, SERVE_CHAT);
    case EP_MODELS: return handle_models(ctx, c);
    case EP_TOKENIZE: return handle_tokenize(ctx, c, sc);
    case EP_DETOKENIZE: return handle_detokenize(ctx, c, sc);
    case EP_HEALTH:
        if (ctx->dead)
            return send_error(ctx, c, 503, NULL, "the engine has failed: %s", ctx->dead_msg);
        return send_bytes(ctx, c, 200, strdup(""), 0, "text/plain");
    case EP_VERSION:
        return send_json(ctx, c, 200, json_pack("{s:s}", "version", DUET_VERSION));
    case EP_METRICS: return handle_metrics(ctx, c);
    case EP_DASHBOARD: return handle_dashboard(ctx, c);
    default: return handle_stats(ctx, c);
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload, size_t *upload_size, void **con_cls)
{
    serve_ctx *ctx = cls;
    serve_conn *sc = *con_cls;
    (void)version;
    if (!sc) {
        if (!(sc = calloc(1, sizeof *sc)))
            return MHD_NO;
        *con_cls = sc;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > (unsigned long long)ctx->cfg.max_body)
            sc->too_large = 1; /* refused once the body is drained */
        return MHD_YES;
    }
    if (*upload_size) {
        if (!sc->too_large && sc->body.len + *upload_size > (size_t)ctx->cfg.max_body)
            sc->too_large = 1;
        if (!sc->too_large && serve_buf_put(&sc->body, upload, *upload_size))
            sc->too_large = 1;
        if (sc->too_large)
            serve_buf_free(&sc->body);
        *upload_size = 0;
        return MHD_YES;
    }
    if (sc->req) /* resumed: a non-streaming request finished */
        return finish_or_wait(ctx, c, sc);
    return dispatch(ctx, c, url, method, sc);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    serve_ctx *ctx = cls;
    serve_conn *sc = *con_cls;
    (void)c;
    (void)toe;
    if (!sc)
        return;
    serve_req *r = sc->req;
    if (r) {
        pthread_mutex_lock(&r->mu);
        r->conn = NULL;
        int abort = !r->engine_done;
        pthread_mutex_unlock(&r->mu);
        if (abort) {
            /* The client left: free its KV blocks now, not at max_tokens. */
            duet_engine_abort(ctx->engine, r->id);
            serve_metrics_client_abort(ctx->metrics);
            serve_wake_engine(ctx);
        }
        serve_req_release(r);
    }
    serve_buf_free(&sc->body);
    serve_buf_free(&sc->out);
    free(sc);
    *con_cls = NULL;
}

int serve_http_start(serve_ctx *ctx)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%ld", ctx->cfg.port);
    int gai = getaddrinfo(ctx->cfg.host, port, &hints, &ai);
    if (gai) {
        fprintf(stderr, "duet serve: --host '%s': %s\n", ctx->cfg.host, gai_strerror(gai));
        return -1;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct rlimit rl;
    unsigned limit = (unsigned)ctx->cfg.max_connections;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (rlim_t)limit + 64)
        limit = rl.rlim_cur > 128 ? (unsigned)rl.rlim_cur - 64 : 64;
    ctx->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, ctx, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, ctx, MHD_OPTION_CONNECTION_LIMIT, limit,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300, MHD_OPTION_LISTEN_BACKLOG_SIZE,
        (unsigned)1024, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!ctx->daemon) {
        fprintf(stderr, "duet serve: cannot listen on %s:%ld (address in use, or not allowed)\n",
                ctx->cfg.host, ctx->cfg.port);
        return -1;
    }
    return 0;
}

int serve_http_port(serve_ctx *ctx)
{
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(ctx->daemon, MHD_DAEMON_INFO_BIND_PORT);
    return i ? i->port : (int)ctx->cfg.port;
}

void serve_http_quiesce(serve_ctx *ctx)
{
    if (!ctx->daemon)
        return;
    MHD_socket fd = MHD_quiesce_daemon(ctx->daemon);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

void serve_http_stop(serve_ctx *ctx)
{
    if (ctx->daemon)
        MHD_stop_daemon(ctx->daemon);
    ctx->daemon = NULL;
}
