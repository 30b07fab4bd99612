/*
 * cmd_generate.c — `duet generate`: one prompt, text streamed to stdout,
 * timings to stderr.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "duet.h"
#include "engine_args.h"
#include "generate_batch.h"

static const char *help =
    "usage: duet generate [options]\n"
    "\n"
    "Run one prompt through a model and stream the generated text to stdout.\n"
    "Load time, prompt and decode speed go to stderr.\n"
    "\n"
    "options:\n"
    "  -m, --model FILE       GGUF model (default: $DUET_MODEL, else the default\n"
    "                         SmolLM2-135M-Instruct Q4_1 in $DUET_CACHE/models)\n"
    "  -p, --prompt TEXT      the prompt (default: a short demo prompt)\n"
    "  -f, --prompt-file FILE read the prompt from FILE\n"
    "  -n, --max-tokens N     tokens to generate, >= 1 (default 128)\n"
    "  -t, --temperature T    0 = greedy (default 0)\n"
    "  -s, --seed N           seed for temperature > 0 (default 0)\n"
    "      --top-p P          nucleus sampling, (0, 1] (default 1 = off)\n"
    "      --top-k K          keep the K most likely tokens (default 0 = off)\n"
    "      --min-p P          drop tokens below P x the best's probability (default 0)\n"
    "      --chat             wrap the prompt in the model's chat format (ChatML)\n"
    "      --system TEXT      system message for --chat\n"
    "      --ignore-eos       keep generating after an end-of-turn token\n"
    "      --device SPEC      auto | cpu | vulkan[:N] (default auto:\n"
    "                         a GPU through Vulkan if present, else the CPU)\n"
    "      --threads N        CPU threads (default: all cores)\n"
    "      --ctx N            context tokens to reserve (default: the model's)\n"
    "      --no-stats         do not print timings\n"
    "  -h, --help             this help\n"
    "\n"
    "batch mode (the continuous-batching engine):\n"
    "      --prompts-file FILE  one prompt per line, or JSONL objects with \"prompt\" and\n"
    "                           optional \"id\", \"max_tokens\", \"temperature\", \"top_p\",\n"
    "                           \"top_k\", \"min_p\", \"repetition_penalty\",\n"
    "                           \"presence_penalty\", \"frequency_penalty\", \"min_tokens\",\n"
    "                           \"seed\", \"ignore_eos\", \"priority\", \"cache_salt\"; one JSON\n"
    "                           result per prompt, in input order\n"
    "  -o, --output FILE        write the JSONL results to FILE (default stdout)\n"
    "\n";

typedef struct gen_opts {
    char model[4096];
    const char *prompt, *prompt_file, *system, *device;
    const char *prompts_file, *output;
    duet_engine_options engine;
    duet_model_options source; /* --load-format etc. */
    long max_tokens, threads, ctx;
    double temperature, top_p, min_p;
    long top_k;
    uint64_t seed;
    int chat, ignore_eos, stats;
} gen_opts;

static int parse_args(int argc, char **argv, gen_opts *o)
{
    enum { OPT_CHAT = 256, OPT_SYSTEM, OPT_IGNORE_EOS, OPT_DEVICE, OPT_THREADS, OPT_CTX,
           OPT_NO_STATS, OPT_PROMPTS_FILE, OPT_TOP_P, OPT_TOP_K, OPT_MIN_P };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},       {"prompt", required_argument, 0, 'p'},
        {"prompt-file", required_argument, 0, 'f'}, {"max-tokens", required_argument, 0, 'n'},
        {"temperature", required_argument, 0, 't'}, {"seed", required_argument, 0, 's'},
        {"chat", no_argument, 0, OPT_CHAT},         {"system", required_argument, 0, OPT_SYSTEM},
        {"ignore-eos", no_argument, 0, OPT_IGNORE_EOS},
        {"device", required_argument, 0, OPT_DEVICE},
        {"threads", required_argument, 0, OPT_THREADS},
        {"ctx", required_argument, 0, OPT_CTX},
        {"no-stats", no_argument, 0, OPT_NO_STATS}, {"help", no_argument, 0, 'h'},
        {"prompts-file", required_argument, 0, OPT_PROMPTS_FILE},
        {"output", required_argument, 0, 'o'},
        {"top-p", required_argument, 0, OPT_TOP_P},
        {"top-k", required_argument, 0, OPT_TOP_K},
        {"min-p", required_argument, 0, OPT_MIN_P},
        {0, 0, 0, 0},
    };
    struct option all[64];
    engine_args_merge(longopts, all, 64);
    const char *cmd = "generate";
    int c;
    cli_default_model(o->model, sizeof o->model);
    o->prompt = "Write a short poem about the sea.";
    o->max_tokens = 128;
    o->device = "auto";
    o->stats = 1;
    optind = 1;
    opterr = 0; /* our own one-line messages */
    while ((c = getopt_long(argc, argv, "m:p:f:n:t:s:o:h", all, NULL)) != -1) {
        int e = shared_arg_parse(cmd, c, optarg, &o->engine, &o->source, o->model,
                                 sizeof o->model);
        if (e < 0)
            return -1;
        if (e > 0)
            continue;
        switch (c) {
        case 'm': snprintf(o->model, sizeof o->model, "%s", optarg); break;
        case 'p': o->prompt = optarg; break;
        case 'f': o->prompt_file = optarg; break;
        case 'n':
            if (cli_parse_int(cmd, "--max-tokens", optarg, 1, 1 << 24, &o->max_tokens))
                return -1;
            break;
        case 't':
            if (cli_parse_float(cmd, "--temperature", optarg, 0.0, 100.0, &o->temperature))
                return -1;
            break;
        case 's':
            if (cli_parse_u64(cmd, "--seed", optarg, &o->seed))
                return -1;
            break;
        case OPT_TOP_P:
            if (cli_parse_float(cmd, "--top-p", optarg, 1e-9, 1.0, &o->top_p))
                return -1;
            break;
        case OPT_TOP_K:
            if (cli_parse_int(cmd, "--top-k", optarg, 0, 1 << 24, &o->top_k))
                return -1;
            break;
        case OPT_MIN_P:
            if (cli_parse_float(cmd, "--min-p", optarg, 0.0, 1.0, &o->min_p))
                return -1;
            break;
        case OPT_CHAT: o->chat = 1; break;
        case OPT_SYSTEM: o->system = optarg; break;
        case OPT_IGNORE_EOS: o->ignore_eos = 1; break;
        case OPT_DEVICE: o->device = optarg; break;
        case OPT_THREADS:
            if (cli_parse_int(cmd, "--threads", optarg, 1, 1024, &o->threads))
                return -1;
            break;
        case OPT_CTX:
            if (cli_parse_int(cmd, "--ctx", optarg, 1, 1 << 24, &o->ctx))
                return -1;
            break;
        case OPT_NO_STATS: o->stats = 0; break;
        case OPT_PROMPTS_FILE: o->prompts_file = optarg; break;
        case 'o': o->output = optarg; break;
        case 'h':
            return engine_args_help(help);
        default:
            return cli_bad_option(cmd, argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cli_extra_arg(cmd, argv[optind]);
    return 0;
}

/* Read a whole file; NULL (with a message) on failure. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0;
    if (!f) {
        fprintf(stderr, "duet generate: cannot open prompt file '%s'\n", path);
        return NULL;
    }
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, 4096, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* ChatML as SmolLM2's template renders one user turn (its default system
 * message included); the general template engine comes with the server. */
static char *chat_wrap(const char *system, const char *user, size_t user_len, size_t *len)
{
    const char *sys = system ? system
                             : "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
    size_t cap = strlen(sys) + user_len + 128;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    int n = snprintf(out, cap,
                     "<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\n%.*s<|im_end|>\n"
                     "<|im_start|>assistant\n",
                     sys, (int)user_len, user);
    *len = (size_t)n;
    return out;
}

static int print_text(void *user, const char *text, size_t len)
{
    *(int *)user = 1; /* something was printed */
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int cmd_generate(int argc, char **argv)
{
    gen_opts o = {0};
    int pr = parse_args(argc, argv, &o);
    if (pr)
        return pr > 0 ? 0 : 2;

    int ret = 1;
    char *file_text = NULL, *chat_text = NULL;
    int32_t *ids = NULL;
    duet_model *model = NULL;
    duet_session *session = NULL;
    const char *text = o.prompt;
    size_t text_len = strlen(o.prompt);

    if (o.prompt_file && !(text = file_text = read_file(o.prompt_file, &text_len)))
        goto out;
    if (o.chat && !(text = chat_text = chat_wrap(o.system, text, text_len, &text_len)))
        goto out;

    double t0 = now_seconds();
    duet_model_options mo = o.source;
    mo.device = o.device;
    mo.n_threads = (int)o.threads;
    if (duet_model_load(o.model, &mo, &model)) {
        int missing_default = access(o.model, F_OK) != 0 &&
                              strcmp(o.model, cli_default_model((char[4096]){0}, 4096)) == 0;
        fprintf(stderr, "duet generate: %s%s\n", duet_last_error(),
                missing_default ? " (fetch the default model with scripts/fetch-model.sh)" : "");
        goto out;
    }
    if (o.prompts_file) {
        batch_opts bo = {.prompts_file = o.prompts_file, .output = o.output,
                         .max_tokens = (int)o.max_tokens, .temperature = (float)o.temperature,
                         .top_p = (float)o.top_p, .top_k = (int)o.top_k, .min_p = (float)o.min_p,
                         .seed = o.seed, .ignore_eos = o.ignore_eos, .parse_special = o.chat,
                         .stats = o.stats};
        ret = generate_batch(model, &bo, &o.engine);
        goto out;
    }
    duet_session_options so = {.max_context = (int)o.ctx};
    if (duet_session_create(model, &so, &session)) {
        fprintf(stderr, "duet generate: %s\n", duet_last_error());
        goto out;
    }
    double load_s = now_seconds() - t0;

    size_t cap = text_len + 8, n_ids = 0;
    if (!(ids = malloc(sizeof *ids * cap)) ||
        duet_tokenize(model, text, text_len, 1, o.chat, ids, cap, &n_ids)) {
        fprintf(stderr, "duet generate: tokenizing the prompt: %s\n", duet_last_error());
        goto out;
    }
    duet_generate_params gp = {.max_tokens = (int)o.max_tokens,
                               .temperature = (float)o.temperature,
                               .seed = o.seed,
                               .ignore_eos = o.ignore_eos,
                               .top_p = (float)o.top_p,
                               .top_k = (int)o.top_k,
                               .min_p = (float)o.min_p};
    duet_generate_stats st;
    int printed = 0;
    if (duet_generate(session, ids, n_ids, &gp, print_text, &printed, &st)) {
        if (printed)
            printf("\n");
        fprintf(stderr, "duet generate: %s\n", duet_last_error());
        goto out;
    }
    printf("\n");
    fflush(stdout);
    if (o.stats) {
        int steps = st.n_generated - 1; /* the last sampled token is not fed back */
        fprintf(stderr,
                "load: %.2f s | prompt: %d tokens, %.1f tok/s | decode: %d tokens, %.1f tok/s"
                "%s | peak RSS %.0f MiB\n",
                load_s, st.n_prompt, st.n_prompt / (st.prompt_seconds > 0 ? st.prompt_seconds : 1),
                st.n_generated, steps > 0 && st.decode_seconds > 0 ? steps / st.decode_seconds : 0.0,
                st.stopped_by_eos ? " (end of turn)" : "", cli_peak_rss_mib());
    }
    ret = 0;
out:
    duet_session_free(session);
    duet_model_free(model);
    free(ids);
    free(chat_text);
    free(file_text);
    return ret;
}
