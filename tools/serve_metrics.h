/*
 * serve_metrics.h — the server's metrics: vLLM's Prometheus names, types,
 * labels and histogram buckets (so vLLM dashboards and autoscalers work
 * unchanged), duet's own extras, and the JSON the live dashboard polls.
 *
 * Thread-safety: every function may be called from any thread (one mutex).
 */
#ifndef DUET_SERVE_METRICS_H
#define DUET_SERVE_METRICS_H

#include <jansson.h>
#include <stddef.h>

#include "duet.h"

typedef struct serve_metrics serve_metrics;

/* NULL on allocation failure. Strings are copied. */
serve_metrics *serve_metrics_create(const char *model_name, const char *backend,
                                    int max_model_len);
void serve_metrics_free(serve_metrics *m);

/* After each engine step (stepped = the step did work) or when idle. */
void serve_metrics_engine(serve_metrics *m, const duet_engine_stats *st, int stepped);

/* One finished sample of a request, with its phases in seconds. */
typedef struct serve_finish_times {
    duet_finish reason;
    int have_first_token;
    double queue, prefill, decode, inference, e2e;
    int n_prompt, n_generated;
} serve_finish_times;

void serve_metrics_first_token(serve_metrics *m, double ttft);
void serve_metrics_inter_token(serve_metrics *m, double itl);
void serve_metrics_finish(serve_metrics *m, const serve_finish_times *t);
/* A request was accepted with these parameters. */
void serve_metrics_request(serve_metrics *m, int n, int max_tokens);
/* A client went away before its request finished. */
void serve_metrics_client_abort(serve_metrics *m);
/* An HTTP response was sent with this status. */
void serve_metrics_http_status(serve_metrics *m, int status);

/* The Prometheus text exposition (format 0.0.4); malloc'ed, NULL on OOM. */
char *serve_metrics_prometheus(serve_metrics *m, size_t *len);
/* Dashboard numbers: gauges, counters, tok/s over the last seconds,
 * TTFT / ITL percentiles of recent requests. New reference; NULL on OOM. */
json_t *serve_metrics_json(serve_metrics *m);

#endif
