/*
 * serve_engine.c — the engine side of `duet serve`: the thread that steps
 * the engine, the output callback that hands outputs to connections, the
 * registry of requests in flight, and request lifetime (see serve.h).
 */
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve.h"
#include "serve_metrics.h"

void serve_registry_add(serve_ctx *ctx, serve_req *r)
{
    pthread_mutex_lock(&ctx->mu);
    snprintf(r->id, sizeof r->id, "%s-%llu", r->kind == SERVE_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)++ctx->next_id);
    r->next = ctx->active;
    if (ctx->active)
        ctx->active->prev = r;
    ctx->active = r;
    ctx->n_active++;
    ctx->n_unscheduled++;
    pthread_mutex_unlock(&ctx->mu);
}

void serve_registry_remove(serve_ctx *ctx, serve_req *r)
{
    pthread_mutex_lock(&ctx->mu);
    if (r->prev)
        r->prev->next = r->next;
    else
        ctx->active = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    ctx->n_active--;
    if (!r->scheduled)
        ctx->n_unscheduled--;
    pthread_mutex_unlock(&ctx->mu);
}

double serve_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void serve_wake_engine(serve_ctx *ctx)
{
    pthread_mutex_lock(&ctx->mu);
    pthread_cond_signal(&ctx->cv);
    pthread_mutex_unlock(&ctx->mu);
}

void serve_req_release(serve_req *r)
{
    pthread_mutex_lock(&r->mu);
    int last = --r->refs == 0;
    pthread_mutex_unlock(&r->mu);
    if (!last)
        return;
    for (serve_event *ev = r->head, *next; ev; ev = next) {
        next = ev->next;
        free(ev);
    }
    for (int i = 0; i < r->n; i++) {
        serve_buf_free(&r->choices[i].text);
        json_decref(r->choices[i].logprobs);
        free(r->choices[i].stop_str);
    }
    free(r->choices);
    free(r->first_token_t);
    free(r->last_token_t);
    free(r->n_out);
    free(r->echo_text);
    free(r->error);
    json_decref(r->prompt_lp);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* One allocation: the event, then its logprobs, tokens, text, stop string. */
static serve_event *event_copy(const duet_request_output *o)
{
    size_t n = o->n_new_tokens > 0 ? (size_t)o->n_new_tokens : 0;
    size_t n_lp = o->logprobs ? n : 0;
    size_t n_plp = o->prompt_logprobs && o->n_prompt_logprobs > 0 ? (size_t)o->n_prompt_logprobs
                                                                   : 0;
    size_t stop_len = o->stop_str ? strlen(o->stop_str) + 1 : 0;
    serve_event *ev = calloc(1, sizeof *ev + (n_lp + n_plp) * sizeof(duet_logprobs) +
                                    n * sizeof(int32_t) + o->text_len + 1 + stop_len);
    if (!ev)
        return NULL;
    char *p = (char *)(ev + 1);
    if (n_lp) {
        ev->logprobs = (duet_logprobs *)p;
        memcpy(ev->logprobs, o->logprobs, n_lp * sizeof(duet_logprobs));
        p += n_lp * sizeof(duet_logprobs);
    }
    if (n_plp) {
        ev->prompt_logprobs = (duet_logprobs *)p;
        ev->n_prompt_logprobs = (int)n_plp;
        memcpy(ev->prompt_logprobs, o->prompt_logprobs, n_plp * sizeof(duet_logprobs));
        p += n_plp * sizeof(duet_logprobs);
    }
    ev->tokens = (int32_t *)p;
    if (n)
        memcpy(ev->tokens, o->new_tokens, n * sizeof(int32_t));
    p += n * sizeof(int32_t);
    ev->text = p;
    if (o->text_len)
        memcpy(ev->text, o->text, o->text_len);
    p += o->text_len + 1;
    if (o->stop_str) {
        ev->stop_str = p;
        memcpy(p, o->stop_str, stop_len);
    }
    ev->index = o->index;
    ev->finish = o->finish;
    ev->n_tokens = (int)n;
    ev->text_len = o->text_len;
    ev->stop_token = o->stop_token;
    ev->n_prompt = o->n_prompt_tokens;
    ev->n_output = o->n_output_tokens;
    ev->n_cached = o->n_cached_tokens;
    return ev;
}

/* Latency metrics of one output (engine thread). Engine timestamps are
 * used when it gives them, this thread's clock otherwise (same clock). */
static void observe(serve_req *r, const duet_request_output *o, int i, double now)
{
    serve_metrics *m = r->ctx->metrics;
    double arrival = o->arrival_time > 0 ? o->arrival_time : r->arrival;
    if (o->n_new_tokens > 0) {
        if (r->n_out[i] == 0) {
            r->first_token_t[i] = o->first_token_time > 0 ? o->first_token_time : now;
            serve_metrics_first_token(m, r->first_token_t[i] - arrival);
        } else {
            serve_metrics_inter_token(m, now - r->last_token_t[i]);
        }
        r->last_token_t[i] = now;
        r->n_out[i] += o->n_new_tokens;
    }
    if (!o->finish)
        return;
    double sched = o->first_scheduled_time > 0 ? o->first_scheduled_time : arrival;
    serve_finish_times t = {.reason = o->finish, .have_first_token = r->n_out[i] > 0,
                            .n_prompt = o->n_prompt_tokens, .n_generated = r->n_out[i]};
    t.e2e = now - arrival;
    t.queue = sched - arrival;
    t.inference = now - sched;
    t.prefill = r->n_out[i] ? r->first_token_t[i] - sched : 0;
    t.decode = r->n_out[i] ? now - r->first_token_t[i] : 0;
    serve_metrics_finish(m, &t);
}

void serve_on_output(void *user, const duet_request_output *o)
{
    serve_req *r = user;
    serve_ctx *ctx = r->ctx;
    int i = o->index >= 0 && o->index < r->n ? o->index : 0;
    observe(r, o, i, serve_now());
    if (!r->scheduled) {
        pthread_mutex_lock(&ctx->mu);
        r->scheduled = 1;
        ctx->n_unscheduled--;
        pthread_mutex_unlock(&ctx->mu);
    }
    __atomic_add_fetch(&r->n_generated, o->n_new_tokens, __ATOMIC_RELAXED);

    serve_event *ev = event_copy(o);
    struct MHD_Connection *resume = NULL;
    pthread_mutex_lock(&r->mu);
    if (ev) {
        if (r->tail)
            r->tail->next = ev;
        else
            r->head = ev;
        r->tail = ev;
    }
    if (o->finish)
        r->n_finished++;
    int done = r->n_finished >= r->n;
    r->engine_done = done;
    if (r->suspended && r->conn && (done || !r->wake_on_done_only)) {
        resume = r->conn;
        r->suspended = 0;
    }
    pthread_mutex_unlock(&r->mu);
    /* A suspended connection cannot complete, so it is still valid here. */
    if (resume)
        MHD_resume_connection(resume);
    if (done) {
        serve_registry_remove(ctx, r);
        serve_req_release(r);
    }
}

json_t *serve_inflight_json(serve_ctx *ctx)
{
    json_t *a = json_array();
    double now = serve_now();
    int shown = 0;
    pthread_mutex_lock(&ctx->mu);
    for (serve_req *r = ctx->active; r && shown < 200; r = r->next, shown++)
        json_array_append_new(
            a, json_pack("{s:s, s:s, s:i, s:i, s:i, s:f}", "id", r->id, "state",
                         r->scheduled ? "running" : "waiting", "n", r->n, "prompt_tokens",
                         r->n_prompt, "generated",
                         __atomic_load_n(&r->n_generated, __ATOMIC_RELAXED), "age_s",
                         now - r->arrival));
    pthread_mutex_unlock(&ctx->mu);
    return a;
}

/* The engine failed: every request still in it ends with an error. */
static void engine_failed(serve_ctx *ctx, const char *msg)
{
    pthread_mutex_lock(&ctx->mu);
    ctx->dead = 1;
    snprintf(ctx->dead_msg, sizeof ctx->dead_msg, "%s", msg);
    serve_req *list = ctx->active;
    ctx->active = NULL;
    ctx->n_active = 0;
    ctx->n_unscheduled = 0;
    pthread_mutex_unlock(&ctx->mu);
    fprintf(stderr, "duet serve: the engine failed: %s\n", msg);
    for (serve_req *r = list, *next; r; r = next) {
        next = r->next;
        size_t len = strlen(msg);
        serve_event *ev = calloc(1, sizeof *ev + len + 1);
        struct MHD_Connection *resume = NULL;
        pthread_mutex_lock(&r->mu);
        if (ev) {
            ev->error = (char *)(ev + 1);
            memcpy(ev->error, msg, len + 1);
            ev->stop_token = -1;
            if (r->tail)
                r->tail->next = ev;
            else
                r->head = ev;
            r->tail = ev;
        }
        r->engine_done = 1;
        if (r->suspended && r->conn) {
            resume = r->conn;
            r->suspended = 0;
        }
        pthread_mutex_unlock(&r->mu);
        if (resume)
            MHD_resume_connection(resume);
        serve_req_release(r);
    }
}

/* Streams still waiting for their first token send no bytes, and a
 * suspended connection does not notice its client leaving. Once a second
 * such streams get an SSE comment (clients ignore it): writing to a closed
 * socket fails, the connection completes and its request is aborted. */
static void heartbeat(serve_ctx *ctx)
{
    enum { BATCH = 256 };
    struct MHD_Connection *conns[BATCH];
    int n = 0;
    pthread_mutex_lock(&ctx->mu);
    for (serve_req *r = ctx->active; r && n < BATCH; r = r->next) {
        if (!r->stream || r->scheduled)
            continue;
        pthread_mutex_lock(&r->mu);
        if (r->suspended && r->conn) {
            r->heartbeat = 1;
            r->suspended = 0;
            conns[n++] = r->conn;
        }
        pthread_mutex_unlock(&r->mu);
    }
    pthread_mutex_unlock(&ctx->mu);
    /* Still suspended until resumed, so still valid (see serve_on_output). */
    for (int i = 0; i < n; i++)
        MHD_resume_connection(conns[i]);
}

void *serve_engine_main(void *arg)
{
    serve_ctx *ctx = arg;
    duet_engine_stats st;
    double last_heartbeat = serve_now();
    pthread_mutex_lock(&ctx->mu);
    while (!ctx->stop) {
        if (!duet_engine_has_work(ctx->engine)) {
            pthread_mutex_unlock(&ctx->mu);
            duet_engine_get_stats(ctx->engine, &st);
            serve_metrics_engine(ctx->metrics, &st, 0);
            pthread_mutex_lock(&ctx->mu);
            /* Adders signal under ctx->mu after queueing, so no wake-up is
             * lost between this check and the wait. */
            if (!ctx->stop && !duet_engine_has_work(ctx->engine))
                pthread_cond_wait(&ctx->cv, &ctx->mu);
            continue;
        }
        pthread_mutex_unlock(&ctx->mu);
        duet_status rc = duet_engine_step(ctx->engine);
        duet_engine_get_stats(ctx->engine, &st);
        serve_metrics_engine(ctx->metrics, &st, 1);
        double now = serve_now();
        if (now - last_heartbeat >= 1.0) {
            heartbeat(ctx);
            last_heartbeat = now;
        }
        if (rc) {
            engine_failed(ctx, duet_last_error());
            pthread_mutex_lock(&ctx->mu);
            break;
        }
        pthread_mutex_lock(&ctx->mu);
    }
    pthread_mutex_unlock(&ctx->mu);
    return NULL;
}

