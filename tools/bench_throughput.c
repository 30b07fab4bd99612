/*
 * bench_throughput.c — `duet bench throughput` (like vllm bench
 * throughput): all requests submitted at once to the batched engine,
 * measuring requests/s, output tok/s, total tok/s, and how well the paged
 * KV cache is used (peak usage, waste = allocated token slots not holding
 * a token, averaged over steps).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "duet.h"
#include "engine_args.h"

static const char *help =
    "usage: duet bench throughput [options]\n"
    "\n"
    "Offline throughput: submit every request at once and run the engine to\n"
    "completion.\n"
    "\n"
    "options:\n"
    "  -m, --model FILE       GGUF model (default: $DUET_MODEL or the default model)\n"
    "      --num-prompts N    requests (default 64)\n"
    "      --input-len N      prompt tokens per request (random dataset; default 128)\n"
    "      --output-len N     tokens to generate per request (default 128)\n"
    "      --dataset D        'random' (random token ids, default) or a FILE with one\n"
    "                         prompt per line (cycled to --num-prompts)\n"
    "      --ignore-eos       generate exactly --output-len tokens (default for random)\n"
    "      --seed N           dataset seed (default 0)\n"
    "      --threads N        CPU threads (default: all cores)\n"
    "      --device SPEC      auto | cpu | vulkan[:N] (default auto:\n"
    "                         a GPU through Vulkan if present, else the CPU)\n"
    "      --json             one JSON object on stdout instead of text\n"
    "  -h, --help             this help\n"
    "\n";

typedef struct tp_opts {
    char model[4096];
    long num_prompts, input_len, output_len, threads;
    uint64_t seed;
    const char *dataset, *device;
    int ignore_eos, json;
    duet_engine_options engine;
    duet_model_options source;
} tp_opts;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int parse(int argc, char **argv, tp_opts *o)
{
    enum { O_NUM = 256, O_IN, O_OUT, O_DATASET, O_EOS, O_SEED, O_THREADS, O_DEVICE, O_JSON };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},    {"num-prompts", required_argument, 0, O_NUM},
        {"input-len", required_argument, 0, O_IN}, {"output-len", required_argument, 0, O_OUT},
        {"dataset", required_argument, 0, O_DATASET}, {"ignore-eos", no_argument, 0, O_EOS},
        {"seed", required_argument, 0, O_SEED},  {"threads", required_argument, 0, O_THREADS},
        {"device", required_argument, 0, O_DEVICE}, {"json", no_argument, 0, O_JSON},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0},
    };
    struct option all[64];
    const char *cmd = "bench throughput";
    int c;
    engine_args_merge(longopts, all, 64);
    cli_default_model(o->model, sizeof o->model);
    o->num_prompts = 64;
    o->input_len = 128;
    o->output_len = 128;
    o->dataset = "random";
    o->device = "auto";
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "m:h", all, NULL)) != -1) {
        int e = shared_arg_parse(cmd, c, optarg, &o->engine, &o->source, o->model,
                                 sizeof o->model);
        if (e < 0)
            return -1;
        if (e > 0)
            continue;
        switch (c) {
        case 'm': snprintf(o->model, sizeof o->model, "%s", optarg); break;
        case O_NUM:
            if (cli_parse_int(cmd, "--num-prompts", optarg, 1, 1 << 20, &o->num_prompts)) return -1;
            break;
        case O_IN:
            if (cli_parse_int(cmd, "--input-len", optarg, 1, 1 << 20, &o->input_len)) return -1;
            break;
        case O_OUT:
            if (cli_parse_int(cmd, "--output-len", optarg, 1, 1 << 20, &o->output_len)) return -1;
            break;
        case O_DATASET: o->dataset = optarg; break;
        case O_EOS: o->ignore_eos = 1; break;
        case O_SEED:
            if (cli_parse_u64(cmd, "--seed", optarg, &o->seed)) return -1;
            break;
        case O_THREADS:
            if (cli_parse_int(cmd, "--threads", optarg, 1, 1024, &o->threads)) return -1;
            break;
        case O_DEVICE: o->device = optarg; break;
        case O_JSON: o->json = 1; break;
        case 'h':
            return engine_args_help(help);
        default:
            return cli_bad_option(cmd, argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cli_extra_arg(cmd, argv[optind]);
    if (strcmp(o->dataset, "random") == 0)
        o->ignore_eos = 1;
    return 0;
}

/* Prompts as token ids: random ids, or the lines of a file (cycled). */
static int make_prompts(duet_model *m, const tp_opts *o, int32_t ***ids, int **lens)
{
    int n = (int)o->num_prompts;
    *ids = calloc((size_t)n, sizeof **ids);
    *lens = calloc((size_t)n, sizeof **lens);
    if (!*ids || !*lens)
        return -1;
    if (strcmp(o->dataset, "random") == 0) {
        unsigned seed = (unsigned)o->seed;
        int vocab = duet_model_vocab_size(m);
        for (int i = 0; i < n; i++) {
            (*ids)[i] = malloc(sizeof(int32_t) * (size_t)o->input_len);
            if (!(*ids)[i])
                return -1;
            /* Skip the lowest ids, which are special tokens in most vocabularies. */
            for (int t = 0; t < o->input_len; t++)
                (*ids)[i][t] = 100 + rand_r(&seed) % (vocab - 100);
            (*lens)[i] = (int)o->input_len;
        }
        return 0;
    }
    FILE *f = fopen(o->dataset, "r");
    if (!f) {
        fprintf(stderr, "duet bench throughput: cannot open dataset '%s'\n", o->dataset);
        return -1;
    }
    char *line = NULL, **lines = NULL;
    size_t cap = 0;
    int n_lines = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        if (line[len - 1] == '\n')
            line[--len] = '\0';
        if (len == 0)
            continue;
        char **nl = realloc(lines, sizeof *nl * (size_t)(n_lines + 1));
        if (!nl)
            break;
        lines = nl;
        lines[n_lines++] = strdup(line);
    }
    free(line);
    fclose(f);
    int rc = n_lines ? 0 : -1;
    if (!n_lines)
        fprintf(stderr, "duet bench throughput: dataset '%s' has no prompts\n", o->dataset);
    for (int i = 0; i < n && rc == 0; i++) {
        const char *text = lines[i % n_lines];
        size_t tl = strlen(text), got;
        (*ids)[i] = malloc(sizeof(int32_t) * (tl + 8));
        if (!(*ids)[i] || duet_tokenize(m, text, tl, 1, 0, (*ids)[i], tl + 8, &got))
            rc = -1;
        else
            (*lens)[i] = (int)got;
    }
    for (int i = 0; i < n_lines; i++)
        free(lines[i]);
    free(lines);
    return rc;
}

int cmd_bench_throughput(int argc, char **argv)
{
    tp_opts o = {0};
    int pr = parse(argc, argv, &o);
    if (pr)
        return pr > 0 ? 0 : 2;
    int ret = 1, n = (int)o.num_prompts;
    duet_model *m = NULL;
    duet_engine *e = NULL;
    int32_t **ids = NULL;
    int *lens = NULL;
    duet_model_options mo = o.source;
    mo.device = o.device;
    mo.n_threads = (int)o.threads;
    if (duet_model_load(o.model, &mo, &m) || duet_engine_create(m, &o.engine, &e)) {
        fprintf(stderr, "duet bench throughput: %s\n", duet_last_error());
        goto out;
    }
    if (make_prompts(m, &o, &ids, &lens))
        goto out;
    if (!o.json)
        fprintf(stderr, "%s\n", duet_engine_kv_summary(e));
    uint64_t prompt_tokens = 0;
    for (int i = 0; i < n; i++) {
        duet_request_params p = {.max_tokens = (int)o.output_len, .ignore_eos = o.ignore_eos,
                                 .has_seed = 1, .seed = (uint64_t)i};
        if (duet_engine_add_request(e, ids[i], (size_t)lens[i], &p, NULL, NULL)) {
            fprintf(stderr, "duet bench throughput: request %d: %s\n", i, duet_last_error());
            goto out;
        }
        prompt_tokens += (uint64_t)lens[i];
    }
    /* Step by hand to sample KV usage after every step. */
    double t0 = now_seconds(), peak_usage = 0, slots = 0, stored = 0;
    int peak_running = 0, peak_blocks = 0;
    duet_engine_stats st;
    while (duet_engine_has_work(e)) {
        if (duet_engine_step(e)) {
            fprintf(stderr, "duet bench throughput: %s\n", duet_last_error());
            goto out;
        }
        duet_engine_get_stats(e, &st);
        if (st.kv_usage > peak_usage)
            peak_usage = st.kv_usage;
        if (st.num_running > peak_running)
            peak_running = st.num_running;
        if (st.kv_blocks_used > peak_blocks)
            peak_blocks = st.kv_blocks_used;
        slots += (double)st.kv_blocks_used * st.block_size;
        stored += (double)st.kv_tokens_used;
    }
    double secs = now_seconds() - t0;
    duet_engine_get_stats(e, &st);
    double waste = slots > 0 ? 1.0 - stored / slots : 0.0;
    double out_tps = st.generation_tokens / secs;
    /* The PagedAttention comparison: a contiguous cache reserves
     * max_model_len tokens per running request up front; paged blocks hold
     * only what each request has written. */
    double naive_tokens = (double)peak_running * st.max_model_len;
    double paged_tokens = (double)peak_blocks * st.block_size;
    double pool_tokens = (double)st.kv_blocks_total * st.block_size;
    double total_tps = (prompt_tokens + st.generation_tokens) / secs;
    if (o.json) {
        printf("{\"num_prompts\": %d, \"input_len\": %ld, \"output_len\": %ld, \"elapsed_s\": %.3f, "
               "\"requests_per_s\": %.3f, \"output_tok_s\": %.2f, \"total_tok_s\": %.2f, "
               "\"prompt_tokens\": %llu, \"generated_tokens\": %llu, \"steps\": %llu, "
               "\"kv_peak_usage\": %.4f, \"kv_waste\": %.4f, \"preemptions\": %llu, "
               "\"prefix_hits\": %llu, \"peak_running\": %d, \"kv_paged_peak_tokens\": %.0f, "
               "\"kv_naive_tokens\": %.0f, \"max_concurrency_naive\": %.0f, "
               "\"peak_rss_mib\": %.1f}\n",
               n, o.input_len, o.output_len, secs, n / secs, out_tps, total_tps,
               (unsigned long long)prompt_tokens, (unsigned long long)st.generation_tokens,
               (unsigned long long)st.steps, peak_usage, waste,
               (unsigned long long)st.num_preemptions, (unsigned long long)st.prefix_hits,
               peak_running, paged_tokens, naive_tokens, pool_tokens / st.max_model_len,
               cli_peak_rss_mib());
    } else {
        printf("requests:            %d in %.2f s (%.2f req/s)\n", n, secs, n / secs);
        printf("output tokens:       %llu (%.1f tok/s)\n", (unsigned long long)st.generation_tokens,
               out_tps);
        printf("total tokens:        %llu (%.1f tok/s)\n",
               (unsigned long long)(prompt_tokens + st.generation_tokens), total_tps);
        printf("steps:               %llu\n", (unsigned long long)st.steps);
        printf("KV cache:            peak usage %.1f%%, waste %.2f%% of allocated slots\n",
               100 * peak_usage, 100 * waste);
        printf("preemptions:         %llu; prefix-cache hits %llu of %llu tokens\n",
               (unsigned long long)st.num_preemptions, (unsigned long long)st.prefix_hits,
               (unsigned long long)st.prefix_queries);
        printf("paged vs contiguous: %d requests ran at once holding at most %.0f token slots "
               "in blocks;\n                     a contiguous max_model_len (%d) reservation "
               "would need %.0f (%.1fx),\n                     so the same pool of %.0f tokens "
               "would admit only %.0f requests at once\n",
               peak_running, paged_tokens, st.max_model_len, naive_tokens,
               paged_tokens > 0 ? naive_tokens / paged_tokens : 0.0, pool_tokens,
               pool_tokens / st.max_model_len);
        printf("peak RSS:            %.0f MiB\n", cli_peak_rss_mib());
    }
    ret = 0;
out:
    for (int i = 0; ids && i < n; i++)
        free(ids[i]);
    free(ids);
    free(lens);
    duet_engine_free(e);
    duet_model_free(m);
    return ret;
}
