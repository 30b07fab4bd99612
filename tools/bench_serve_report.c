/*
 * bench_serve_report.c — the numbers of `duet bench serve`, computed and
 * laid out like `vllm bench serve` so the two can be read side by side:
 * TTFT (send to first token), TPOT ((E2E - TTFT) / (output tokens - 1),
 * per request with more than one token), ITL (every gap between token
 * chunks of every request), E2E latency; mean, median, std and p99 with
 * numpy's default (linear) percentile.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_serve.h"
#include "error.h"

typedef struct summary {
    double mean, median, std, p99; /* milliseconds */
} summary;

enum { M_TTFT, M_TPOT, M_ITL, M_E2EL, M_COUNT };
static const char *const metric_key[M_COUNT] = {"ttft", "tpot", "itl", "e2el"};
static const char *const metric_label[M_COUNT] = {"TTFT", "TPOT", "ITL", "E2EL"};
static const char *const metric_title[M_COUNT] = {
    "Time to First Token", "Time per Output Token (excl. 1st token)", "Inter-token Latency",
    "End-to-end Latency"};

typedef struct totals {
    long completed, failed, input_tokens, output_tokens;
    double request_tput, output_tput, total_tput;
    summary m[M_COUNT];
} totals;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Percentile q in [0, 1] of sorted v[n], interpolated linearly. */
static double percentile(const double *v, long n, double q)
{
    double pos = q * (double)(n - 1);
    long lo = (long)floor(pos);
    long hi = lo + 1 < n ? lo + 1 : lo;
    return v[lo] + (v[hi] - v[lo]) * (pos - (double)lo);
}

/* Summarize v[n] seconds (sorted in place) in milliseconds; all 0 when n
 * is 0. */
static summary summarize(double *v, long n)
{
    summary s = {0};
    if (n == 0)
        return s;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double sum = 0, sq = 0;
    for (long i = 0; i < n; i++)
        sum += v[i];
    s.mean = sum / (double)n;
    for (long i = 0; i < n; i++)
        sq += (v[i] - s.mean) * (v[i] - s.mean);
    s.std = sqrt(sq / (double)n) * 1e3;
    s.mean *= 1e3;
    s.median = percentile(v, n, 0.5) * 1e3;
    s.p99 = percentile(v, n, 0.99) * 1e3;
    return s;
}

/* Prompt tokens as the server counted them (usage.prompt_tokens: chat
 * template and BOS included), else as the benchmark's tokenizer did. */
static long input_tokens(const bench_serve_prompt *p, const bench_serve_result *r)
{
    return r->prompt_tokens > 0 ? r->prompt_tokens : p->prompt_len;
}

static duet_status compute(const bench_serve_opts *o, const bench_serve_prompt *prompts,
                           const bench_serve_result *res, double duration, totals *t)
{
    long n = o->num_prompts, n_itl = 0;
    for (long i = 0; i < n; i++)
        n_itl += res[i].ok ? res[i].n_itl : 0;
    double *v[M_COUNT];
    long cnt[M_COUNT] = {0};
    v[M_TTFT] = malloc(sizeof(double) * (size_t)n);
    v[M_TPOT] = malloc(sizeof(double) * (size_t)n);
    v[M_E2EL] = malloc(sizeof(double) * (size_t)n);
    v[M_ITL] = malloc(sizeof(double) * (size_t)(n_itl ? n_itl : 1));
    duet_status st = DUET_OK;
    if (!v[M_TTFT] || !v[M_TPOT] || !v[M_E2EL] || !v[M_ITL]) {
        st = duet_error(DUET_ERR_OUT_OF_MEMORY, "no memory for the statistics");
        goto out;
    }
    memset(t, 0, sizeof *t);
    for (long i = 0; i < n; i++) {
        const bench_serve_result *r = &res[i];
        if (!r->ok) {
            t->failed++;
            continue;
        }
        t->completed++;
        t->input_tokens += input_tokens(&prompts[i], r);
        t->output_tokens += r->output_tokens;
        v[M_TTFT][cnt[M_TTFT]++] = r->ttft;
        v[M_E2EL][cnt[M_E2EL]++] = r->latency;
        if (r->output_tokens > 1)
            v[M_TPOT][cnt[M_TPOT]++] = (r->latency - r->ttft) / (double)(r->output_tokens - 1);
        memcpy(v[M_ITL] + cnt[M_ITL], r->itl, sizeof(double) * (size_t)r->n_itl);
        cnt[M_ITL] += r->n_itl;
    }
    for (int k = 0; k < M_COUNT; k++)
        t->m[k] = summarize(v[k], cnt[k]);
    if (duration > 0) {
        t->request_tput = (double)t->completed / duration;
        t->output_tput = (double)t->output_tokens / duration;
        t->total_tput = (double)(t->input_tokens + t->output_tokens) / duration;
    }
out:
    for (int k = 0; k < M_COUNT; k++)
        free(v[k]);
    return st;
}

static void rule(FILE *to, const char *title, char fill)
{
    int width = 50, len = (int)strlen(title), left = (width - len) / 2;
    if (len == 0) {
        left = width;
    } else if (left < 0) {
        left = 0;
    }
    for (int i = 0; i < left; i++)
        fputc(fill, to);
    fputs(title, to);
    for (int i = left + len; i < width; i++)
        fputc(fill, to);
    fputc('\n', to);
}

/* The summary table; to stderr when the JSON goes to stdout. */
static void print_table(FILE *to, const bench_serve_opts *o, const totals *t, double duration)
{
    rule(to, " Serving Benchmark Result ", '=');
    fprintf(to, "%-40s %ld\n", "Successful requests:", t->completed);
    fprintf(to, "%-40s %ld\n", "Failed requests:", t->failed);
    fprintf(to, "%-40s %ld\n", "Maximum request concurrency:", o->max_concurrency);
    if (isfinite(o->request_rate))
        fprintf(to, "%-40s %.2f\n", "Request rate configured (req/s):", o->request_rate);
    else
        fprintf(to, "%-40s %s\n", "Request rate configured (req/s):", "inf");
    fprintf(to, "%-40s %.2f\n", "Benchmark duration (s):", duration);
    fprintf(to, "%-40s %ld\n", "Total input tokens:", t->input_tokens);
    fprintf(to, "%-40s %ld\n", "Total generated tokens:", t->output_tokens);
    fprintf(to, "%-40s %.2f\n", "Request throughput (req/s):", t->request_tput);
    fprintf(to, "%-40s %.2f\n", "Output token throughput (tok/s):", t->output_tput);
    fprintf(to, "%-40s %.2f\n", "Total token throughput (tok/s):", t->total_tput);
    for (int k = 0; k < M_COUNT; k++) {
        char label[64];
        rule(to, metric_title[k], '-');
        snprintf(label, sizeof label, "Mean %s (ms):", metric_label[k]);
        fprintf(to, "%-40s %.2f\n", label, t->m[k].mean);
        snprintf(label, sizeof label, "Median %s (ms):", metric_label[k]);
        fprintf(to, "%-40s %.2f\n", label, t->m[k].median);
        snprintf(label, sizeof label, "P99 %s (ms):", metric_label[k]);
        fprintf(to, "%-40s %.2f\n", label, t->m[k].p99);
    }
    rule(to, "", '=');
    fflush(to);
}

/* Per-request arrays and the run's settings, for later analysis. */
static json_t *json_record(const bench_serve_opts *o, const char *model_name,
                           const bench_serve_prompt *prompts, const bench_serve_result *res,
                           const totals *t, double duration)
{
    char date[32];
    time_t now = time(NULL);
    struct tm tm;
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
    json_t *j = json_object();
    json_object_set_new(j, "date", json_string(date));
    json_object_set_new(j, "backend", json_string(o->chat ? "openai-chat" : "openai"));
    json_object_set_new(j, "base_url", json_string(o->base_url));
    json_object_set_new(j, "endpoint", json_string(o->endpoint));
    json_object_set_new(j, "model_id", json_string(model_name));
    json_object_set_new(j, "tokenizer", json_string(o->model));
    json_object_set_new(j, "dataset", json_string(o->dataset));
    json_object_set_new(j, "num_prompts", json_integer(o->num_prompts));
    json_object_set_new(j, "request_rate", isfinite(o->request_rate)
                                               ? json_real(o->request_rate)
                                               : json_string("inf"));
    json_object_set_new(j, "max_concurrency", json_integer(o->max_concurrency));
    json_object_set_new(j, "input_len", json_integer(o->input_len));
    json_object_set_new(j, "output_len", json_integer(o->output_len));
    json_object_set_new(j, "range_ratio", json_real(o->range_ratio));
    json_object_set_new(j, "seed", json_integer((json_int_t)o->seed));
    json_object_set_new(j, "ignore_eos", json_boolean(o->ignore_eos));
    json_object_set_new(j, "duration", json_real(duration));
    json_object_set_new(j, "completed", json_integer(t->completed));
    json_object_set_new(j, "failed", json_integer(t->failed));
    json_object_set_new(j, "total_input_tokens", json_integer(t->input_tokens));
    json_object_set_new(j, "total_output_tokens", json_integer(t->output_tokens));
    json_object_set_new(j, "request_throughput", json_real(t->request_tput));
    json_object_set_new(j, "output_throughput", json_real(t->output_tput));
    json_object_set_new(j, "total_token_throughput", json_real(t->total_tput));
    for (int k = 0; k < M_COUNT; k++) {
        char key[32];
        snprintf(key, sizeof key, "mean_%s_ms", metric_key[k]);
        json_object_set_new(j, key, json_real(t->m[k].mean));
        snprintf(key, sizeof key, "median_%s_ms", metric_key[k]);
        json_object_set_new(j, key, json_real(t->m[k].median));
        snprintf(key, sizeof key, "std_%s_ms", metric_key[k]);
        json_object_set_new(j, key, json_real(t->m[k].std));
        snprintf(key, sizeof key, "p99_%s_ms", metric_key[k]);
        json_object_set_new(j, key, json_real(t->m[k].p99));
    }
    json_t *in = json_array(), *in_ds = json_array(), *out = json_array();
    json_t *ttft = json_array(), *e2el = json_array(), *itls = json_array();
    json_t *errors = json_array();
    for (long i = 0; i < o->num_prompts; i++) {
        const bench_serve_result *r = &res[i];
        json_t *itl = json_array();
        for (long k = 0; k < r->n_itl; k++)
            json_array_append_new(itl, json_real(r->itl[k]));
        json_array_append_new(in, json_integer(input_tokens(&prompts[i], r)));
        json_array_append_new(in_ds, json_integer(prompts[i].prompt_len));
        json_array_append_new(out, json_integer(r->ok ? r->output_tokens : 0));
        json_array_append_new(ttft, json_real(r->ok ? r->ttft : 0));
        json_array_append_new(e2el, json_real(r->ok ? r->latency : 0));
        json_array_append_new(itls, itl);
        json_array_append_new(errors, json_string(r->error ? r->error : ""));
    }
    json_object_set_new(j, "input_lens", in);
    json_object_set_new(j, "dataset_input_lens", in_ds);
    json_object_set_new(j, "output_lens", out);
    json_object_set_new(j, "ttfts", ttft);
    json_object_set_new(j, "e2els", e2el);
    json_object_set_new(j, "itls", itls);
    json_object_set_new(j, "errors", errors);
    return j;
}

duet_status bench_serve_report(const bench_serve_opts *o, const char *model_name,
                               const bench_serve_prompt *prompts,
                               const bench_serve_result *res, double duration)
{
    totals t;
    duet_status st = compute(o, prompts, res, duration, &t);
    if (st)
        return st;
    /* A few failures, so a broken setup explains itself. */
    for (long i = 0, shown = 0; i < o->num_prompts && shown < 3; i++)
        if (!res[i].ok) {
            fprintf(stderr, "bench serve: request %ld failed: %s\n", i,
                    res[i].error ? res[i].error : "unknown error");
            shown++;
        }
    int json_stdout = o->json_path && strcmp(o->json_path, "-") == 0;
    print_table(json_stdout ? stderr : stdout, o, &t, duration);
    if (!o->json_path)
        return DUET_OK;
    json_t *j = json_record(o, model_name, prompts, res, &t, duration);
    int bad = !j;
    if (!bad && json_stdout) {
        bad = json_dumpf(j, stdout, JSON_INDENT(1)) != 0;
        putchar('\n');
    } else if (!bad) {
        bad = json_dump_file(j, o->json_path, JSON_INDENT(1)) != 0;
    }
    json_decref(j);
    if (bad)
        return duet_error(DUET_ERR_IO, "cannot write the JSON results to '%s'",
                          o->json_path);
    return DUET_OK;
}
