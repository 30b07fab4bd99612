/*
 * bench_serve.h — the pieces of `duet bench serve` (a load generator for
 * OpenAI-compatible servers, like `vllm bench serve`), shared by its files:
 * bench_serve.c (flags, the run), bench_serve_dataset.c (prompts),
 * bench_serve_http.c (libcurl multi driver, SSE parsing) and
 * bench_serve_report.c (statistics, summary table, JSON).
 */
#ifndef DUET_BENCH_SERVE_H
#define DUET_BENCH_SERVE_H

#include <stdint.h>

#include "duet.h"

/* The `duet bench serve` command; returns the process exit status. */
int duet_cmd_bench_serve(int argc, char **argv);

typedef struct bench_serve_opts {
    char model[4096];          /* GGUF whose tokenizer builds the random prompts */
    int model_given;           /* --model was on the command line */
    char base_url[1024];       /* scheme://host:port, no trailing '/' */
    const char *endpoint;      /* "/v1/completions" or "/v1/chat/completions" */
    const char *served_model;  /* "model" field; NULL = ask /v1/models */
    const char *dataset;       /* "random" or a JSONL file */
    const char *json_path;     /* --json FILE ("-" = stdout); NULL = none */
    long num_prompts, input_len, output_len, max_concurrency;
    double range_ratio;
    double request_rate;       /* requests/s; INFINITY = all at once */
    double timeout_s;          /* per request; 0 = none */
    uint64_t seed;
    int ignore_eos;
    int chat;                  /* endpoint is a chat endpoint */
} bench_serve_opts;

/* One request of the workload. */
typedef struct bench_serve_prompt {
    char *text;       /* valid UTF-8, owned */
    long prompt_len;  /* tokens by the benchmark's tokenizer; 0 = unknown */
    long output_len;  /* max_tokens asked for */
} bench_serve_prompt;

/* What happened to one request. Times are seconds. */
typedef struct bench_serve_result {
    int ok;               /* HTTP 200, a stream without an error event */
    char *error;          /* owned; NULL when ok */
    double ttft;          /* send to the first token chunk */
    double latency;       /* send to the last token chunk */
    double *itl;          /* [n_itl] gaps between token chunks */
    long n_itl, cap_itl;
    long n_chunks;        /* token chunks seen */
    long output_tokens;   /* usage.completion_tokens, else n_chunks */
    long prompt_tokens;   /* usage.prompt_tokens; 0 when not reported */
} bench_serve_result;

/* A tiny seeded generator (splitmix64), so a seed fixes the workload. */
typedef struct bench_serve_rng {
    uint64_t state;
} bench_serve_rng;
uint64_t bench_serve_rng_next(bench_serve_rng *r);
double bench_serve_rng_uniform(bench_serve_rng *r); /* in [0, 1) */

/* Build o->num_prompts prompts: random ones of exactly input_len tokens of
 * model m (±range_ratio), or the JSONL file's lines ("prompt", optional
 * "output_len"), cycled. m may be NULL for a file (prompt_len is then 0).
 * On failure *out is NULL and duet_last_error() names the problem. */
duet_status bench_serve_dataset_build(const bench_serve_opts *o, const duet_model *m,
                                      bench_serve_prompt **out /* OUT */);
void bench_serve_dataset_free(bench_serve_prompt *p, long n);

/* GET base_url/v1/models. DUET_ERR_IO (message names the URL and curl's
 * reason) when the server cannot be reached. When it answers with a model
 * list, *model_id gets the first id (malloc'ed, caller frees), else NULL. */
duet_status bench_serve_probe(const bench_serve_opts *o, char **model_id /* OUT */);

/* Send every prompt, streaming, with Poisson arrivals at o->request_rate
 * and at most o->max_concurrency in flight; fill res[num_prompts] and
 * *duration (first send to last completion). Progress goes to stderr.
 * Fails only when the run cannot be set up (memory, libcurl). */
duet_status bench_serve_run(const bench_serve_opts *o, const char *model_name,
                            const bench_serve_prompt *prompts,
                            bench_serve_result *res /* OUT: [num_prompts] */,
                            double *duration /* OUT */);
void bench_serve_results_free(bench_serve_result *res, long n);

/* Print the summary table to stdout and, with o->json_path, write the
 * JSON record there. Returns DUET_ERR_IO when the JSON file cannot be
 * written. */
duet_status bench_serve_report(const bench_serve_opts *o, const char *model_name,
                               const bench_serve_prompt *prompts,
                               const bench_serve_result *res, double duration);

#endif
