/*
 * serve.h — the parts of `duet serve` and how they meet.
 *
 * Threads: one engine thread (serve.c) steps the engine and is the only
 * caller of duet_engine_step/get_stats; libmicrohttpd's polling thread
 * (serve_http.c) parses requests, queues them with duet_engine_add_request
 * and writes responses. The engine's output callback copies each output
 * into a serve_event on the request's queue (under the request's mutex)
 * and resumes the request's suspended connection; the HTTP side drains the
 * queue. So a stream costs a queue and a socket, never a thread.
 *
 * Lifetime of a serve_req: two references, one for the engine (dropped
 * when every sample has finished) and one for the connection (dropped when
 * libmicrohttpd reports the request completed). A connection that goes
 * away first aborts the request in the engine.
 */
#ifndef DUET_SERVE_H
#define DUET_SERVE_H

#include <jansson.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_template.h"
#include "duet.h"

struct MHD_Connection;
struct MHD_Daemon;
typedef struct serve_metrics serve_metrics;

typedef struct serve_config {
    const char *host;          /* bind address; "127.0.0.1" */
    long port;                 /* 8000; 0 = any free port */
    const char *api_key;       /* NULL = no auth */
    long max_queue;            /* 0 = unbounded; else 503 beyond it */
    long max_body;             /* bytes of a request body; 413 beyond */
    const char *served_name;   /* model id clients send; NULL = file name */
    const char *chat_template; /* file overriding the model's template */
    double shutdown_timeout;   /* seconds in-flight requests get on SIGTERM */
    long max_connections;
} serve_config;

/* A growable byte buffer with a read position (pending SSE bytes). */
typedef struct serve_buf {
    char *p;
    size_t len, cap, pos;
} serve_buf;

int serve_buf_put(serve_buf *b, const char *s, size_t n);
int serve_buf_printf(serve_buf *b, const char *fmt, ...);
void serve_buf_free(serve_buf *b);

/* One engine output, copied off the engine thread. */
typedef struct serve_event {
    struct serve_event *next;
    int index;
    duet_finish finish;
    int n_tokens;
    int32_t *tokens;                 /* [n_tokens] */
    duet_logprobs *logprobs;         /* [n_tokens] or NULL */
    duet_logprobs *prompt_logprobs;  /* prompt positions 1..n_prompt-1, or NULL */
    int n_prompt_logprobs;
    char *text;                      /* [text_len], NUL-terminated */
    size_t text_len;
    char *stop_str;                  /* NULL unless a stop string matched */
    int32_t stop_token;              /* -1 unless a stop token matched */
    int n_prompt, n_output, n_cached;
    char *error;                     /* the engine failed: its message */
} serve_event;

typedef enum serve_kind { SERVE_COMPLETION, SERVE_CHAT } serve_kind;

/* What the HTTP side keeps per sample while it builds the answer. */
typedef struct serve_choice {
    serve_buf text;                  /* non-streaming: the whole text */
    json_t *logprobs;                /* non-streaming: built as tokens come */
    int n_tokens;
    size_t text_offset;              /* completions logprobs.text_offset */
    int finished;
    duet_finish finish;
    char *stop_str;
    int32_t stop_token;
} serve_choice;

typedef struct serve_ctx serve_ctx;

typedef struct serve_req {
    serve_ctx *ctx;
    pthread_mutex_t mu;
    int refs;                        /* under mu */
    char id[64];                     /* response id and engine request id */
    serve_kind kind;
    int stream, include_usage, n, echo;
    int logprobs;                    /* -1 = none, else top-N */
    long created;                    /* unix seconds */
    char *echo_text;                 /* prompt text returned with echo */
    size_t echo_len;
    int n_prompt, max_tokens;
    int32_t prompt0;                 /* first prompt token (echo logprobs) */
    json_t *prompt_lp;               /* HTTP thread: echo + logprobs */

    /* Engine -> HTTP, under mu. */
    serve_event *head, *tail;
    int n_finished, engine_done;
    struct MHD_Connection *conn;     /* NULL once the client is gone */
    int suspended, wake_on_done_only;
    int heartbeat;                   /* write an SSE comment: is the client there? */

    /* Engine thread only: timing for the metrics, per sample. */
    double arrival;
    double *first_token_t, *last_token_t; /* [n] */
    int *n_out;                      /* [n] */

    /* HTTP thread only. */
    serve_choice *choices;           /* [n] */
    int usage_prompt, usage_cached;
    long usage_completion;
    char *error;
    int stream_ended;

    /* Registry (ctx->mu): every request the engine still holds. */
    struct serve_req *prev, *next;
    int scheduled;                   /* first output seen (engine thread) */
    int n_generated;                 /* all samples (engine thread) */
} serve_req;

struct serve_ctx {
    serve_config cfg;
    duet_model *model;
    duet_engine *engine;
    serve_metrics *metrics;
    duet_chat_template *tmpl;        /* NULL when the model has none */
    char *tmpl_error;                /* why tmpl is NULL, if it failed */
    char model_name[256];            /* served model id */
    char model_path[4096];
    const char *backend;
    int max_model_len, vocab;
    double start_time;

    pthread_mutex_t mu;              /* guards everything below */
    pthread_cond_t cv;               /* engine thread sleeps here */
    int stop, dead, draining;        /* draining: SIGINT/SIGTERM came */
    char dead_msg[512];
    serve_req *active;               /* registry head */
    int n_active, n_unscheduled;
    uint64_t next_id;

    struct MHD_Daemon *daemon;
};

/* serve_engine.c: CLOCK_MONOTONIC seconds (the engine's clock). */
double serve_now(void);
/* serve_engine.c: wake the engine thread after queueing a request or an abort. */
void serve_wake_engine(serve_ctx *ctx);
/* serve_engine.c: the engine's output callback (user = the serve_req). */
void serve_on_output(void *user, const duet_request_output *out);
/* serve_engine.c: drop one reference; the last frees the request. */
void serve_req_release(serve_req *r);
/* serve_engine.c: the in-flight table for the dashboard. */
json_t *serve_inflight_json(serve_ctx *ctx);
/* serve_engine.c: assign r its id and list it / unlist it. */
void serve_registry_add(serve_ctx *ctx, serve_req *r);
void serve_registry_remove(serve_ctx *ctx, serve_req *r);
/* serve_engine.c: the engine thread (arg = ctx); returns when ctx->stop. */
void *serve_engine_main(void *arg);

/* serve.c: the `duet serve` subcommand. */
int cmd_serve(int argc, char **argv);

/* serve_http.c */
int serve_http_start(serve_ctx *ctx);
void serve_http_quiesce(serve_ctx *ctx);
void serve_http_stop(serve_ctx *ctx);
int serve_http_port(serve_ctx *ctx);

/* serve_openai.c: parse a request body into engine parameters. */
typedef struct serve_err {
    int status;                      /* HTTP status */
    char msg[1024];
    const char *param;               /* offending field, or NULL */
} serve_err;

typedef struct serve_parsed {
    duet_request_params p;
    serve_kind kind;
    int stream, include_usage, echo, logprobs, n;
    int32_t *prompt;                 /* token ids */
    size_t n_prompt;
    char *echo_text;
    size_t echo_len;
    /* storage behind p's pointers */
    char **stop;
    int32_t *stop_ids;
    duet_logit_bias *bias;
    char *cache_salt;
} serve_parsed;

int serve_parse_request(serve_ctx *ctx, serve_kind kind, const char *body, size_t len,
                        serve_parsed *out, serve_err *err);
void serve_parsed_free(serve_parsed *p);
/* Render messages with the chat template; 0 or -1 with err set. *out is
 * malloc'ed. */
int serve_render_chat(serve_ctx *ctx, json_t *messages, json_t *req, char **out, size_t *len,
                      serve_err *err);
/* Tokenize text; 0 or -1 with err set. *ids is malloc'ed. */
int serve_tokenize(serve_ctx *ctx, const char *text, size_t len, int add_special,
                   int parse_special, int32_t **ids, size_t *n, serve_err *err);
int serve_errf(serve_err *e, int status, const char *param, const char *fmt, ...);

/* serve_response.c: responses, chunks, error bodies. */
char *serve_error_body(int status, const char *msg, const char *param, size_t *len);
/* Streaming: the SSE bytes for the role chunks (chat) and echo. */
void serve_stream_begin(serve_req *r, serve_buf *out);
/* Streaming: the SSE bytes for one event. */
void serve_stream_event(serve_req *r, const serve_event *ev, serve_buf *out);
/* Streaming: usage chunk (if asked), error event (if any), [DONE]. */
void serve_stream_end(serve_req *r, serve_buf *out);
/* Non-streaming: fold one event in, then build the response. */
void serve_collect_event(serve_req *r, const serve_event *ev);
char *serve_final_body(serve_req *r, size_t *len);
/* Valid UTF-8 for JSON: bad bytes become U+FFFD. malloc'ed. */
char *serve_utf8_clean(const char *s, size_t n, size_t *out_len);

#endif
