/*
 * bench_serve.c — `duet bench serve` (like `vllm bench serve`): a load
 * generator for any OpenAI-compatible server (duet serve, llama.cpp's
 * llama-server, vLLM). It checks that the server answers, builds the
 * prompts, sends them streaming at the requested rate and concurrency, and
 * reports throughput and TTFT / TPOT / ITL / E2E latency.
 */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bench_serve.h"
#include "cli.h"
#include "duet.h"

static const char *help =
    "usage: duet bench serve [options]\n"
    "\n"
    "Load an OpenAI-compatible server (duet serve, llama-server, vLLM) with\n"
    "streaming requests and report request and token throughput and TTFT, TPOT,\n"
    "ITL and end-to-end latency (mean, median, p99), like `vllm bench serve`.\n"
    "\n"
    "options:\n"
    "      --base-url URL          server (default http://127.0.0.1:8000, or from\n"
    "                              --host and --port)\n"
    "      --host H, --port P      server host and port when --base-url is not given\n"
    "      --endpoint PATH         /v1/completions (default) or /v1/chat/completions\n"
    "      --served-model-name N   the request's \"model\" (default: the first id of\n"
    "                              GET /v1/models, else the model file's name)\n"
    "  -m, --model FILE            GGUF whose tokenizer builds the random prompts\n"
    "                              (default: $DUET_MODEL or the default model)\n"
    "      --dataset D             'random' (default) or a JSONL FILE: one\n"
    "                              {\"prompt\": \"...\", \"output_len\": N} per line, cycled\n"
    "      --num-prompts N         requests to send (default 64)\n"
    "      --input-len N           random prompt length in tokens (default 128)\n"
    "      --output-len N          tokens to ask for (max_tokens; default 128)\n"
    "      --range-ratio R         random lengths uniform in [len*(1-R), len*(1+R)],\n"
    "                              R in [0, 1) (default 0)\n"
    "      --request-rate R        requests/s with Poisson arrivals, or 'inf' to\n"
    "                              send all at once (default inf)\n"
    "      --max-concurrency N     most requests in flight (default: no limit)\n"
    "      --ignore-eos            ask the server to generate exactly max_tokens\n"
    "                              (\"ignore_eos\": true; vLLM and llama-server)\n"
    "      --seed N                seed of the prompts and arrivals (default 0)\n"
    "      --timeout S             fail a request after S seconds (default: none)\n"
    "      --json FILE             also write the results as JSON ('-' = stdout)\n"
    "  -h, --help                  this help\n"
    "\n"
    "Requests are streamed (SSE) with temperature 0. Output token counts come from\n"
    "the server's usage (stream_options.include_usage), else from the number of\n"
    "streamed text chunks. OPENAI_API_KEY, when set, is sent as the bearer token.\n"
    "Exit status: 0 when at least one request succeeded, 1 when none did or the\n"
    "server cannot be reached, 2 for bad options.\n";

static const char *cmd = "bench serve";

static int parse_rate(const char *s, double *out)
{
    char *end;
    if (strcasecmp(s, "inf") == 0) {
        *out = INFINITY;
        return 0;
    }
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v)) {
        fprintf(stderr, "duet %s: --request-rate '%s' is not a number or 'inf'\n", cmd, s);
        return -1;
    }
    if (v <= 0) {
        fprintf(stderr, "duet %s: --request-rate %g must be > 0 requests/s (or 'inf')\n", cmd, v);
        return -1;
    }
    *out = v;
    return 0;
}

static int set_base_url(bench_serve_opts *o, const char *url)
{
    size_t len = strlen(url);
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0) {
        fprintf(stderr, "duet %s: --base-url '%s' must start with http:// or https://\n", cmd,
                url);
        return -1;
    }
    if (len >= sizeof o->base_url) {
        fprintf(stderr, "duet %s: --base-url is %zu characters; the limit is %zu\n", cmd, len,
                sizeof o->base_url - 1);
        return -1;
    }
    memcpy(o->base_url, url, len + 1);
    while (len > 0 && o->base_url[len - 1] == '/')
        o->base_url[--len] = '\0';
    return 0;
}

/* Returns 0 to run, 1 after --help, -1 after printing an error. */
static int parse(int argc, char **argv, bench_serve_opts *o)
{
    enum {
        O_BASE = 256, O_HOST, O_PORT, O_ENDPOINT, O_SERVED, O_DATASET, O_NUM, O_IN, O_OUT,
        O_RANGE, O_RATE, O_CONC, O_EOS, O_SEED, O_TIMEOUT, O_JSON
    };
    static const struct option longopts[] = {
        {"base-url", required_argument, 0, O_BASE},
        {"host", required_argument, 0, O_HOST},
        {"port", required_argument, 0, O_PORT},
        {"endpoint", required_argument, 0, O_ENDPOINT},
        {"served-model-name", required_argument, 0, O_SERVED},
        {"model", required_argument, 0, 'm'},
        {"dataset", required_argument, 0, O_DATASET},
        {"num-prompts", required_argument, 0, O_NUM},
        {"input-len", required_argument, 0, O_IN},
        {"output-len", required_argument, 0, O_OUT},
        {"range-ratio", required_argument, 0, O_RANGE},
        {"request-rate", required_argument, 0, O_RATE},
        {"max-concurrency", required_argument, 0, O_CONC},
        {"ignore-eos", no_argument, 0, O_EOS},
        {"seed", required_argument, 0, O_SEED},
        {"timeout", required_argument, 0, O_TIMEOUT},
        {"json", required_argument, 0, O_JSON},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *host = "127.0.0.1", *base = NULL;
    long port = 8000;
    int c;
    cli_default_model(o->model, sizeof o->model);
    o->endpoint = "/v1/completions";
    o->dataset = "random";
    o->num_prompts = 64;
    o->input_len = 128;
    o->output_len = 128;
    o->request_rate = INFINITY;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "m:h", longopts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case O_BASE: base = optarg; break;
        case O_HOST: host = optarg; break;
        case O_PORT: bad = cli_parse_int(cmd, "--port", optarg, 1, 65535, &port); break;
        case O_ENDPOINT: o->endpoint = optarg; break;
        case O_SERVED: o->served_model = optarg; break;
        case 'm':
            snprintf(o->model, sizeof o->model, "%s", optarg);
            o->model_given = 1;
            break;
        case O_DATASET: o->dataset = optarg; break;
        case O_NUM:
            bad = cli_parse_int(cmd, "--num-prompts", optarg, 1, 1000000, &o->num_prompts);
            break;
        case O_IN:
            bad = cli_parse_int(cmd, "--input-len", optarg, 1, 1 << 20, &o->input_len);
            break;
        case O_OUT:
            bad = cli_parse_int(cmd, "--output-len", optarg, 1, 1 << 20, &o->output_len);
            break;
        case O_RANGE:
            bad = cli_parse_float(cmd, "--range-ratio", optarg, 0, 0.999, &o->range_ratio);
            break;
        case O_RATE: bad = parse_rate(optarg, &o->request_rate); break;
        case O_CONC:
            bad = cli_parse_int(cmd, "--max-concurrency", optarg, 1, 1000000, &o->max_concurrency);
            break;
        case O_EOS: o->ignore_eos = 1; break;
        case O_SEED: bad = cli_parse_u64(cmd, "--seed", optarg, &o->seed); break;
        case O_TIMEOUT:
            bad = cli_parse_float(cmd, "--timeout", optarg, 0, 1e6, &o->timeout_s);
            break;
        case O_JSON: o->json_path = optarg; break;
        case 'h': fputs(help, stdout); return 1;
        default:
            fprintf(stderr, "duet %s: unknown option or missing value in '%s'\n", cmd,
                    argv[optind - 1]);
            return -1;
        }
        if (bad)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "duet %s: unexpected argument '%s'\n", cmd, argv[optind]);
        return -1;
    }
    if (o->endpoint[0] != '/') {
        fprintf(stderr, "duet %s: --endpoint '%s' must be a path such as /v1/completions\n", cmd,
                o->endpoint);
        return -1;
    }
    o->chat = strstr(o->endpoint, "chat/completions") != NULL;
    if (o->max_concurrency == 0 || o->max_concurrency > o->num_prompts)
        o->max_concurrency = o->num_prompts;
    if (base)
        return set_base_url(o, base);
    char url[1100];
    snprintf(url, sizeof url, "http://%s:%ld", host, port);
    return set_base_url(o, url);
}

/* The last path component of a file name. */
static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

int duet_cmd_bench_serve(int argc, char **argv)
{
    bench_serve_opts o = {0};
    int pr = parse(argc, argv, &o);
    if (pr)
        return pr > 0 ? 0 : 2;
    int ret = 1;
    char *probed = NULL;
    duet_model *m = NULL;
    bench_serve_prompt *prompts = NULL;
    bench_serve_result *res = NULL;
    double duration = 0;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "duet %s: libcurl failed to initialize\n", cmd);
        return 1;
    }
    /* The server first: a wrong URL should not wait for a model to load. */
    if (bench_serve_probe(&o, &probed))
        goto out_error;
    int random = strcmp(o.dataset, "random") == 0;
    if (random || o.model_given) {
        /* Only the tokenizer is used; a CPU load of a GGUF maps it. */
        duet_model_options mo = {.device = "cpu", .n_threads = 1};
        if (duet_model_load(o.model, &mo, &m))
            goto out_error;
    }
    if (bench_serve_dataset_build(&o, m, &prompts))
        goto out_error;
    const char *model_name = o.served_model ? o.served_model
                           : probed         ? probed
                                            : base_name(o.model);
    res = calloc((size_t)o.num_prompts, sizeof *res);
    if (!res) {
        fprintf(stderr, "duet %s: no memory for %ld results\n", cmd, o.num_prompts);
        goto out;
    }
    if (bench_serve_run(&o, model_name, prompts, res, &duration) ||
        bench_serve_report(&o, model_name, prompts, res, duration))
        goto out_error;
    ret = 0;
    long ok = 0;
    for (long i = 0; i < o.num_prompts; i++)
        ok += res[i].ok;
    if (ok == 0) {
        fprintf(stderr, "duet %s: all %ld requests failed\n", cmd, o.num_prompts);
        ret = 1;
    }
    goto out;
out_error:
    fprintf(stderr, "duet %s: %s\n", cmd, duet_last_error());
out:
    bench_serve_results_free(res, o.num_prompts);
    bench_serve_dataset_free(prompts, o.num_prompts);
    duet_model_free(m);
    free(probed);
    curl_global_cleanup();
    return ret;
}
