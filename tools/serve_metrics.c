/*
 * serve_metrics.c — counters, gauges and histograms of `duet serve`, and
 * their two views: Prometheus text and the dashboard's JSON.
 *
 * Names, types, help strings, labels (model_name, engine) and histogram
 * buckets follow vLLM V1's Prometheus logger, so its Grafana dashboards,
 * alerts and autoscalers read duet without changes. Counters that the
 * engine already keeps (tokens, prefix cache, preemptions) are copied from
 * its stats; per-request histograms are observed by the output callback.
 */
#include "serve_metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* vLLM's buckets. */
static const double ttft_buckets[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                      0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0,
                                      20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
static const double token_latency_buckets[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                               0.3,  0.4,   0.5,  0.75,  1.0, 2.5,  5.0,
                                               7.5,  10.0,  20.0, 40.0,  80.0};
static const double request_latency_buckets[] = {0.3,  0.5,  0.8,   1.0,   1.5,   2.0,   2.5,
                                                 5.0,  10.0, 15.0,  20.0,  30.0,  40.0,  50.0,
                                                 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
static const double iteration_buckets[] = {1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
                                           8192, 16384};
static const double n_buckets[] = {1, 2, 5, 10, 20};

enum { MAX_BUCKETS = 64 };

typedef struct histogram {
    const char *name, *help;
    double bounds[MAX_BUCKETS];
    int n_bounds;
    uint64_t counts[MAX_BUCKETS + 1]; /* per bucket, not cumulative; last = +Inf */
    double sum;
    uint64_t count;
} histogram;

enum {
    H_TTFT, H_ITL, H_TPOT, H_E2E, H_QUEUE, H_INFERENCE, H_PREFILL, H_DECODE,
    H_PROMPT_TOKENS, H_GEN_TOKENS, H_ITERATION, H_PARAMS_N, H_PARAMS_MAX_TOKENS, H_COUNT
};

enum { RATE_RING = 128, TTFT_RING = 512, ITL_RING = 4096 };

typedef struct rate_sample {
    double t;
    uint64_t prompt, gen;
} rate_sample;

struct serve_metrics {
    pthread_mutex_t mu;
    char *model_name, *backend, *labels; /* labels: model_name="..",engine="0" */
    duet_engine_stats st;
    histogram h[H_COUNT];
    uint64_t success[4];                 /* by duet_finish */
    uint64_t client_aborts;
    uint64_t http_2xx, http_4xx, http_5xx;
    rate_sample rates[RATE_RING];
    int n_rates, rate_head;
    double ttft_ring[TTFT_RING], itl_ring[ITL_RING];
    int n_ttft, n_itl, ttft_head, itl_head;
    double start;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void hist_init(histogram *h, const char *name, const char *help, const double *b, int n)
{
    h->name = name;
    h->help = help;
    h->n_bounds = n < MAX_BUCKETS ? n : MAX_BUCKETS;
    memcpy(h->bounds, b, sizeof *b * (size_t)h->n_bounds);
}

/* vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50, ... up to max. */
static void hist_init_125(histogram *h, const char *name, const char *help, int max)
{
    double b[MAX_BUCKETS];
    int n = 0;
    static const int mant[] = {1, 2, 5};
    for (double e = 1; n < MAX_BUCKETS; e *= 10) {
        int done = 0;
        for (int i = 0; i < 3 && n < MAX_BUCKETS; i++) {
            double v = mant[i] * e;
            if (v > max) {
                done = 1;
                break;
            }
            b[n++] = v;
        }
        if (done)
            break;
    }
    hist_init(h, name, help, b, n);
}

static void hist_observe(histogram *h, double v)
{
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i])
        i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

/* Label values escape \, " and newline (the text format's rules). */
static char *escape_label(const char *s)
{
    size_t n = strlen(s);
    char *o = malloc(2 * n + 1), *p = o;
    if (!o)
        return NULL;
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') {
            *p++ = '\\';
            *p++ = *s;
        } else if (*s == '\n') {
            *p++ = '\\';
            *p++ = 'n';
        } else {
            *p++ = *s;
        }
    }
    *p = '\0';
    return o;
}

serve_metrics *serve_metrics_create(const char *model_name, const char *backend,
                                    int max_model_len)
{
    serve_metrics *m = calloc(1, sizeof *m);
    char *esc = NULL;
    if (!m)
        return NULL;
    pthread_mutex_init(&m->mu, NULL);
    m->model_name = strdup(model_name);
    m->backend = strdup(backend);
    esc = escape_label(model_name);
    if (esc && (m->labels = malloc(strlen(esc) + 32)))
        sprintf(m->labels, "model_name=\"%s\",engine=\"0\"", esc);
    free(esc);
    if (!m->model_name || !m->backend || !m->labels) {
        serve_metrics_free(m);
        return NULL;
    }
    m->start = now_s();
#define N(a) (int)(sizeof a / sizeof a[0])
    hist_init(&m->h[H_TTFT], "vllm:time_to_first_token_seconds",
              "Histogram of time to first token in seconds.", ttft_buckets, N(ttft_buckets));
    hist_init(&m->h[H_ITL], "vllm:inter_token_latency_seconds",
              "Histogram of inter-token latency in seconds.", token_latency_buckets,
              N(token_latency_buckets));
    hist_init(&m->h[H_TPOT], "vllm:time_per_output_token_seconds",
              "Histogram of time per output token in seconds.", token_latency_buckets,
              N(token_latency_buckets));
    hist_init(&m->h[H_E2E], "vllm:e2e_request_latency_seconds",
              "Histogram of e2e request latency in seconds.", request_latency_buckets,
              N(request_latency_buckets));
    hist_init(&m->h[H_QUEUE], "vllm:request_queue_time_seconds",
              "Histogram of time spent in WAITING phase for request.", request_latency_buckets,
              N(request_latency_buckets));
    hist_init(&m->h[H_INFERENCE], "vllm:request_inference_time_seconds",
              "Histogram of time spent in RUNNING phase for request.", request_latency_buckets,
              N(request_latency_buckets));
    hist_init(&m->h[H_PREFILL], "vllm:request_prefill_time_seconds",
              "Histogram of time spent in PREFILL phase for request.", request_latency_buckets,
              N(request_latency_buckets));
    hist_init(&m->h[H_DECODE], "vllm:request_decode_time_seconds",
              "Histogram of time spent in DECODE phase for request.", request_latency_buckets,
              N(request_latency_buckets));
    hist_init_125(&m->h[H_PROMPT_TOKENS], "vllm:request_prompt_tokens",
                  "Number of prefill tokens processed.", max_model_len);
    hist_init_125(&m->h[H_GEN_TOKENS], "vllm:request_generation_tokens",
                  "Number of generation tokens processed.", max_model_len);
    hist_init(&m->h[H_ITERATION], "vllm:iteration_tokens_total",
              "Histogram of number of tokens per engine_step.", iteration_buckets,
              N(iteration_buckets));
    hist_init(&m->h[H_PARAMS_N], "vllm:request_params_n",
              "Histogram of the n request parameter.", n_buckets, N(n_buckets));
    hist_init_125(&m->h[H_PARAMS_MAX_TOKENS], "vllm:request_params_max_tokens",
                  "Histogram of the max_tokens request parameter.", max_model_len);
#undef N
    return m;
}

void serve_metrics_free(serve_metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->mu);
    free(m->model_name);
    free(m->backend);
    free(m->labels);
    free(m);
}

static void push_rate(serve_metrics *m, double t)
{
    int last = (m->rate_head + RATE_RING - 1) % RATE_RING;
    if (m->n_rates > 0 && t - m->rates[last].t < 0.1)
        return; /* one sample per 100 ms is plenty for a 1 s view */
    m->rates[m->rate_head] = (rate_sample){t, m->st.prompt_tokens, m->st.generation_tokens};
    m->rate_head = (m->rate_head + 1) % RATE_RING;
    if (m->n_rates < RATE_RING)
        m->n_rates++;
}

void serve_metrics_engine(serve_metrics *m, const duet_engine_stats *st, int stepped)
{
    pthread_mutex_lock(&m->mu);
    m->st = *st;
    if (stepped && st->step_tokens > 0)
        hist_observe(&m->h[H_ITERATION], (double)st->step_tokens);
    push_rate(m, now_s());
    pthread_mutex_unlock(&m->mu);
}

static void ring_push(double *ring, int cap, int *n, int *head, double v)
{
    ring[*head] = v;
    *head = (*head + 1) % cap;
    if (*n < cap)
        (*n)++;
}

void serve_metrics_first_token(serve_metrics *m, double ttft)
{
    pthread_mutex_lock(&m->mu);
    hist_observe(&m->h[H_TTFT], ttft);
    ring_push(m->ttft_ring, TTFT_RING, &m->n_ttft, &m->ttft_head, ttft);
    pthread_mutex_unlock(&m->mu);
}

void serve_metrics_inter_token(serve_metrics *m, double itl)
{
    pthread_mutex_lock(&m->mu);
    hist_observe(&m->h[H_ITL], itl);
    hist_observe(&m->h[H_TPOT], itl);
    ring_push(m->itl_ring, ITL_RING, &m->n_itl, &m->itl_head, itl);
    pthread_mutex_unlock(&m->mu);
}

void serve_metrics_finish(serve_metrics *m, const serve_finish_times *t)
{
    pthread_mutex_lock(&m->mu);
    if (t->reason >= 1 && t->reason <= 3)
        m->success[t->reason]++;
    hist_observe(&m->h[H_E2E], t->e2e);
    hist_observe(&m->h[H_QUEUE], t->queue);
    if (t->have_first_token) {
        hist_observe(&m->h[H_INFERENCE], t->inference);
        hist_observe(&m->h[H_PREFILL], t->prefill);
        hist_observe(&m->h[H_DECODE], t->decode);
    }
    hist_observe(&m->h[H_PROMPT_TOKENS], t->n_prompt);
    hist_observe(&m->h[H_GEN_TOKENS], t->n_generated);
    pthread_mutex_unlock(&m->mu);
}

void serve_metrics_request(serve_metrics *m, int n, int max_tokens)
{
    pthread_mutex_lock(&m->mu);
    hist_observe(&m->h[H_PARAMS_N], n);
    hist_observe(&m->h[H_PARAMS_MAX_TOKENS], max_tokens);
    pthread_mutex_unlock(&m->mu);
}

void serve_metrics_client_abort(serve_metrics *m)
{
    pthread_mutex_lock(&m->mu);
    m->client_aborts++;
    pthread_mutex_unlock(&m->mu);
}

void serve_metrics_http_status(serve_metrics *m, int status)
{
    pthread_mutex_lock(&m->mu);
    if (status >= 500)
        m->http_5xx++;
    else if (status >= 400)
        m->http_4xx++;
    else
        m->http_2xx++;
    pthread_mutex_unlock(&m->mu);
}

/* Prometheus floats as the Python client writes them: integers with
 * ".0", others in the shortest form that reads back exactly. */
static void fmt_num(char *buf, size_t cap, double v)
{
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, cap, "%.1f", v);
        return;
    }
    snprintf(buf, cap, "%.17g", v);
    for (int prec = 1; prec < 17; prec++) {
        char t[64];
        snprintf(t, sizeof t, "%.*g", prec, v);
        if (strtod(t, NULL) == v) {
            snprintf(buf, cap, "%s", t);
            break;
        }
    }
}

static void family(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample(FILE *f, const serve_metrics *m, const char *name, const char *extra,
                   double v)
{
    char num[64];
    fmt_num(num, sizeof num, v);
    fprintf(f, "%s{%s%s} %s\n", name, m->labels, extra ? extra : "", num);
}

static void write_histogram(FILE *f, const serve_metrics *m, const histogram *h)
{
    char le[96], num[64], name[160];
    uint64_t cum = 0;
    family(f, h->name, "histogram", h->help);
    snprintf(name, sizeof name, "%s_bucket", h->name);
    for (int i = 0; i <= h->n_bounds; i++) {
        cum += h->counts[i];
        if (i < h->n_bounds) {
            fmt_num(num, sizeof num, h->bounds[i]);
            snprintf(le, sizeof le, ",le=\"%s\"", num);
        } else {
            snprintf(le, sizeof le, ",le=\"+Inf\"");
        }
        sample(f, m, name, le, (double)cum);
    }
    snprintf(name, sizeof name, "%s_count", h->name);
    sample(f, m, name, NULL, (double)h->count);
    snprintf(name, sizeof name, "%s_sum", h->name);
    sample(f, m, name, NULL, h->sum);
}

static double kv_waste(const duet_engine_stats *st)
{
    double cap = (double)st->kv_blocks_used * st->block_size;
    return cap > 0 ? 1.0 - (double)st->kv_tokens_used / cap : 0.0;
}

char *serve_metrics_prometheus(serve_metrics *m, size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f)
        return NULL;
    pthread_mutex_lock(&m->mu);
    const duet_engine_stats *st = &m->st;
    family(f, "vllm:num_requests_running", "gauge",
           "Number of requests in model execution batches.");
    sample(f, m, "vllm:num_requests_running", NULL, st->num_running);
    family(f, "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.");
    sample(f, m, "vllm:num_requests_waiting", NULL, st->num_waiting);
    family(f, "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.");
    sample(f, m, "vllm:kv_cache_usage_perc", NULL, st->kv_usage);
    family(f, "vllm:prefix_cache_queries_total", "counter",
           "Prefix cache queries, in terms of number of queried tokens.");
    sample(f, m, "vllm:prefix_cache_queries_total", NULL, (double)st->prefix_queries);
    family(f, "vllm:prefix_cache_hits_total", "counter",
           "Prefix cache hits, in terms of number of cached tokens.");
    sample(f, m, "vllm:prefix_cache_hits_total", NULL, (double)st->prefix_hits);
    family(f, "vllm:num_preemptions_total", "counter",
           "Cumulative number of preemption from the engine.");
    sample(f, m, "vllm:num_preemptions_total", NULL, (double)st->num_preemptions);
    family(f, "vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.");
    sample(f, m, "vllm:prompt_tokens_total", NULL, (double)st->prompt_tokens);
    family(f, "vllm:generation_tokens_total", "counter",
           "Number of generation tokens processed.");
    sample(f, m, "vllm:generation_tokens_total", NULL, (double)st->generation_tokens);
    family(f, "vllm:request_success_total", "counter",
           "Count of successfully processed requests.");
    static const char *reasons[] = {NULL, "stop", "length", "abort"};
    for (int r = 1; r <= 3; r++) {
        char extra[64];
        snprintf(extra, sizeof extra, ",finished_reason=\"%s\"", reasons[r]);
        sample(f, m, "vllm:request_success_total", extra, (double)m->success[r]);
    }
    for (int i = 0; i < H_COUNT; i++)
        write_histogram(f, m, &m->h[i]);

    /* duet's own, named without a colon: colons are meant for recording
     * rules (promtool flags them; vLLM's names keep theirs for drop-in). */
    char extra[256];
    family(f, "duet_info", "gauge", "Build and device of this server (always 1).");
    snprintf(extra, sizeof extra, ",backend=\"%s\",version=\"%s\"", m->backend, DUET_VERSION);
    sample(f, m, "duet_info", extra, 1);
    family(f, "duet_kv_cache_blocks", "gauge", "KV cache blocks in the pool.");
    sample(f, m, "duet_kv_cache_blocks", NULL, st->kv_blocks_total);
    family(f, "duet_kv_cache_blocks_used", "gauge", "KV cache blocks in use.");
    sample(f, m, "duet_kv_cache_blocks_used", NULL, st->kv_blocks_used);
    family(f, "duet_kv_cache_waste_perc", "gauge",
           "Unused token slots in the used KV blocks (1 = all wasted).");
    sample(f, m, "duet_kv_cache_waste_perc", NULL, kv_waste(st));
    family(f, "duet_requests_aborted_total", "counter",
           "Requests aborted in the engine (client gone, shutdown).");
    sample(f, m, "duet_requests_aborted_total", NULL, (double)st->num_aborted);
    family(f, "duet_client_disconnects_total", "counter",
           "Requests whose client closed the connection before the end.");
    sample(f, m, "duet_client_disconnects_total", NULL, (double)m->client_aborts);
    family(f, "duet_engine_steps_total", "counter", "Engine steps run.");
    sample(f, m, "duet_engine_steps_total", NULL, (double)st->steps);
    family(f, "duet_http_responses_total", "counter", "HTTP responses by status class.");
    sample(f, m, "duet_http_responses_total", ",code=\"2xx\"", (double)m->http_2xx);
    sample(f, m, "duet_http_responses_total", ",code=\"4xx\"", (double)m->http_4xx);
    sample(f, m, "duet_http_responses_total", ",code=\"5xx\"", (double)m->http_5xx);
    pthread_mutex_unlock(&m->mu);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* {"p50","p90","p99","n"} of a ring, in seconds; null entries when empty. */
static json_t *percentiles(const double *ring, int n)
{
    json_t *o = json_object();
    double *s = n > 0 ? malloc(sizeof *s * (size_t)n) : NULL;
    static const struct { const char *k; double q; } qs[] = {
        {"p50", 0.50}, {"p90", 0.90}, {"p99", 0.99}};
    if (s) {
        memcpy(s, ring, sizeof *s * (size_t)n);
        qsort(s, (size_t)n, sizeof *s, cmp_double);
    }
    for (int i = 0; i < 3; i++) {
        int k = (int)(qs[i].q * (n - 1) + 0.5);
        json_object_set_new(o, qs[i].k, s ? json_real(s[k]) : json_null());
    }
    json_object_set_new(o, "n", json_integer(n));
    free(s);
    return o;
}

/* tok/s over the last ~3 s: engine steps come in bursts (a decode step
 * can take most of a second on a busy CPU), so a shorter window jitters. */
static void rates(serve_metrics *m, double now, double *prompt_tps, double *gen_tps)
{
    *prompt_tps = *gen_tps = 0;
    if (m->n_rates == 0)
        return;
    const rate_sample *base = NULL;
    for (int i = 1; i <= m->n_rates; i++) {
        const rate_sample *s = &m->rates[(m->rate_head - i + RATE_RING) % RATE_RING];
        base = s;
        if (now - s->t >= 3.0)
            break;
    }
    double dt = now - base->t;
    if (dt < 0.5)
        dt = 0.5;
    *prompt_tps = (double)(m->st.prompt_tokens - base->prompt) / dt;
    *gen_tps = (double)(m->st.generation_tokens - base->gen) / dt;
}

json_t *serve_metrics_json(serve_metrics *m)
{
    json_t *o = json_object();
    double now = now_s(), ptps, gtps;
    if (!o)
        return NULL;
    pthread_mutex_lock(&m->mu);
    push_rate(m, now);
    rates(m, now, &ptps, &gtps);
    const duet_engine_stats *st = &m->st;
    json_object_set_new(o, "model", json_string(m->model_name));
    json_object_set_new(o, "backend", json_string(m->backend));
    json_object_set_new(o, "uptime_s", json_real(now - m->start));
    json_object_set_new(o, "running", json_integer(st->num_running));
    json_object_set_new(o, "waiting", json_integer(st->num_waiting));
    json_object_set_new(o, "kv_usage", json_real(st->kv_usage));
    json_object_set_new(o, "kv_blocks_total", json_integer(st->kv_blocks_total));
    json_object_set_new(o, "kv_blocks_used", json_integer(st->kv_blocks_used));
    json_object_set_new(o, "kv_waste", json_real(kv_waste(st)));
    json_object_set_new(o, "prefix_queries", json_integer((json_int_t)st->prefix_queries));
    json_object_set_new(o, "prefix_hits", json_integer((json_int_t)st->prefix_hits));
    json_object_set_new(o, "prefix_hit_rate",
                        json_real(st->prefix_queries
                                      ? (double)st->prefix_hits / (double)st->prefix_queries
                                      : 0.0));
    json_object_set_new(o, "preemptions", json_integer((json_int_t)st->num_preemptions));
    json_object_set_new(o, "prompt_tokens", json_integer((json_int_t)st->prompt_tokens));
    json_object_set_new(o, "generation_tokens", json_integer((json_int_t)st->generation_tokens));
    json_object_set_new(o, "prompt_tps", json_real(ptps));
    json_object_set_new(o, "generation_tps", json_real(gtps));
    json_object_set_new(o, "aborted", json_integer((json_int_t)st->num_aborted));
    json_object_set_new(o, "client_disconnects", json_integer((json_int_t)m->client_aborts));
    json_object_set_new(o, "finished", json_integer((json_int_t)(m->success[1] + m->success[2])));
    json_object_set_new(o, "ttft", percentiles(m->ttft_ring, m->n_ttft));
    json_object_set_new(o, "itl", percentiles(m->itl_ring, m->n_itl));
    pthread_mutex_unlock(&m->mu);
    return o;
}
