/*
 * cmd_bench.c — `duet bench latency`: single-stream prompt and decode
 * speed, measured like llama-bench's pp/tg tests so the two can be put
 * side by side: pp = one forward over N random prompt tokens; tg = M
 * single-token decode steps after a one-token prompt. Medians over runs.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "duet.h"
#include "engine_args.h"

int cmd_bench_forward(int argc, char **argv);   /* bench_forward.c */
int cmd_bench_bandwidth(int argc, char **argv); /* bench_bandwidth.c */

static const char *help =
    "usage: duet bench latency [options]\n"
    "\n"
    "Single-stream speed: prompt processing of N tokens (pp) and generation of\n"
    "M tokens (tg), each repeated; prints the median and every run.\n"
    "\n"
    "options:\n"
    "  -m, --model FILE        GGUF model (default: $DUET_MODEL or the default model)\n"
    "  -p, --prompt-tokens N   prompt length for pp (default 512; 0 skips pp)\n"
    "  -n, --gen-tokens N      tokens for tg (default 128; 0 skips tg)\n"
    "  -r, --repeat N          runs of each test (default 5)\n"
    "      --threads N         CPU threads (default: all cores)\n"
    "      --device SPEC       auto | cpu | vulkan[:N] (default auto)\n"
    "      --json              one JSON object on stdout instead of a table\n"
    "  -h, --help              this help\n";

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void print_runs(FILE *to, const double *v, int n)
{
    for (int i = 0; i < n; i++)
        fprintf(to, i ? ", %.1f" : "%.1f", v[i]);
}

int cmd_bench(int argc, char **argv)
{
    enum { OPT_THREADS = 256, OPT_DEVICE, OPT_JSON };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},        {"prompt-tokens", required_argument, 0, 'p'},
        {"gen-tokens", required_argument, 0, 'n'},   {"repeat", required_argument, 0, 'r'},
        {"threads", required_argument, 0, OPT_THREADS},
        {"device", required_argument, 0, OPT_DEVICE}, {"json", no_argument, 0, OPT_JSON},
        {"help", no_argument, 0, 'h'},               {0, 0, 0, 0},
    };
    const char *cmd = "bench latency";
    char model_path[4096];
    long n_prompt = 512, n_gen = 128, repeat = 5, threads = 0;
    const char *device = "auto";
    int json = 0, c;
    duet_model_options source = {0};
    struct option all[64];
    engine_args_merge(longopts, all, 64);

    if (argc >= 2 && strcmp(argv[1], "throughput") == 0)
        return cmd_bench_throughput(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "sampler") == 0)
        return duet_cmd_bench_sampler(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "serve") == 0)
        return duet_cmd_bench_serve(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "forward") == 0)
        return cmd_bench_forward(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "bandwidth") == 0)
        return cmd_bench_bandwidth(argc - 1, argv + 1);
    if (argc < 2 || strcmp(argv[1], "latency") != 0) {
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
            printf("usage: duet bench latency|throughput|sampler|serve|forward|bandwidth "
                   "[options]\n"
                   "  latency     single-stream prompt and decode speed (like llama-bench)\n"
                   "  throughput  offline batched throughput (like vllm bench throughput)\n"
                   "  sampler     the sample op alone: rows x vocabulary, reference vs fast\n"
                   "  serve       load an OpenAI-compatible server (like vllm bench serve)\n"
                   "  forward     the forward pass alone: batched decode steps and a long\n"
                   "              prefill, tok/s and achieved memory bandwidth\n"
                   "  bandwidth   device-local copy bandwidth of a Vulkan device\n"
                   "'duet bench MODE --help' describes a mode's options.\n");
            return 0;
        }
        fprintf(stderr, "duet bench: unknown mode '%s'; available: latency, throughput, sampler, "
                        "serve, forward, bandwidth\n",
                argc >= 2 ? argv[1] : "");
        return 2;
    }
    argc--;
    argv++;
    cli_default_model(model_path, sizeof model_path);
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "m:p:n:r:h", all, NULL)) != -1) {
        int e = model_arg_parse(cmd, c, optarg, &source, model_path, sizeof model_path);
        if (e < 0)
            return 2;
        if (e > 0)
            continue;
        switch (c) {
        case 'm': snprintf(model_path, sizeof model_path, "%s", optarg); break;
        case 'p':
            if (cli_parse_int(cmd, "--prompt-tokens", optarg, 0, 1 << 20, &n_prompt))
                return 2;
            break;
        case 'n':
            if (cli_parse_int(cmd, "--gen-tokens", optarg, 0, 1 << 20, &n_gen))
                return 2;
            break;
        case 'r':
            if (cli_parse_int(cmd, "--repeat", optarg, 1, 1000, &repeat))
                return 2;
            break;
        case OPT_THREADS:
            if (cli_parse_int(cmd, "--threads", optarg, 1, 1024, &threads))
                return 2;
            break;
        case OPT_DEVICE: device = optarg; break;
        case OPT_JSON: json = 1; break;
        case 'h':
            fputs(help, stdout);
            fputs(model_arg_help, stdout);
            return 0;
        default:
            cli_bad_option(cmd, argv[optind - 1]);
            return 2;
        }
    }

    int ret = 1;
    duet_model *m = NULL;
    duet_session *s = NULL;
    int32_t *ids = NULL;
    double *pp = calloc((size_t)repeat, sizeof *pp), *tg = calloc((size_t)repeat, sizeof *tg);
    duet_model_options mo = source;
    mo.device = device;
    mo.n_threads = (int)threads;
    if (!pp || !tg)
        goto out;
    if (duet_model_load(model_path, &mo, &m)) {
        fprintf(stderr, "duet bench latency: %s\n", duet_last_error());
        goto out;
    }
    duet_session_options so = {.max_context = (int)(n_prompt > n_gen + 1 ? n_prompt : n_gen + 1) + 1};
    if (duet_session_create(m, &so, &s)) {
        fprintf(stderr, "duet bench latency: %s\n", duet_last_error());
        goto out;
    }
    /* Random ids, like llama-bench: the speed must not depend on text. */
    size_t n_ids = (size_t)(n_prompt > 1 ? n_prompt : 1);
    ids = malloc(sizeof *ids * n_ids);
    if (!ids)
        goto out;
    unsigned seed = 42;
    for (size_t i = 0; i < n_ids; i++)
        ids[i] = rand_r(&seed) % duet_model_vocab_size(m);

    /* One untimed warm-up of each, then the timed runs, interleaved. */
    for (long r = -1; r < repeat; r++) {
        duet_generate_stats st;
        if (n_prompt > 0) {
            duet_generate_params gp = {.max_tokens = 1, .ignore_eos = 1};
            if (duet_generate(s, ids, (size_t)n_prompt, &gp, NULL, NULL, &st)) {
                fprintf(stderr, "duet bench latency: %s\n", duet_last_error());
                goto out;
            }
            if (r >= 0)
                pp[r] = n_prompt / st.prompt_seconds;
        }
        if (n_gen > 0) {
            duet_generate_params gp = {.max_tokens = (int)n_gen + 1, .ignore_eos = 1};
            if (duet_generate(s, ids, 1, &gp, NULL, NULL, &st)) {
                fprintf(stderr, "duet bench latency: %s\n", duet_last_error());
                goto out;
            }
            if (r >= 0)
                tg[r] = (st.n_generated - 1) / st.decode_seconds;
        }
        if (!json && r >= 0)
            fprintf(stderr, "run %ld/%ld done\n", r + 1, repeat);
    }

    double pp_runs[1000], tg_runs[1000];
    memcpy(pp_runs, pp, sizeof *pp * (size_t)repeat);
    memcpy(tg_runs, tg, sizeof *tg * (size_t)repeat);
    double pp_med = n_prompt ? median(pp, (int)repeat) : 0;
    double tg_med = n_gen ? median(tg, (int)repeat) : 0;
    if (json) {
        printf("{\"model\": \"%s\", \"threads\": %ld, \"prompt_tokens\": %ld, \"gen_tokens\": %ld, "
               "\"repeat\": %ld, \"pp_tok_s_median\": %.2f, \"tg_tok_s_median\": %.2f, "
               "\"peak_rss_mib\": %.1f, \"pp_tok_s\": [",
               model_path, threads, n_prompt, n_gen, repeat, pp_med, tg_med, cli_peak_rss_mib());
        print_runs(stdout, pp_runs, n_prompt ? (int)repeat : 0);
        printf("], \"tg_tok_s\": [");
        print_runs(stdout, tg_runs, n_gen ? (int)repeat : 0);
        printf("]}\n");
    } else {
        printf("%-8s %10s %12s   runs\n", "test", "tokens", "median tok/s");
        if (n_prompt) {
            printf("%-8s %10ld %12.1f   ", "pp", n_prompt, pp_med);
            print_runs(stdout, pp_runs, (int)repeat);
            printf("\n");
        }
        if (n_gen) {
            printf("%-8s %10ld %12.1f   ", "tg", n_gen, tg_med);
            print_runs(stdout, tg_runs, (int)repeat);
            printf("\n");
        }
        printf("peak RSS %.0f MiB\n", cli_peak_rss_mib());
    }
    ret = 0;
out:
    free(ids);
    free(pp);
    free(tg);
    duet_session_free(s);
    duet_model_free(m);
    return ret;
}
