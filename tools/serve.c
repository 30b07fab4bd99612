/*
 * serve.c — `duet serve`: flags, start-up, the engine thread, the output
 * callback, signals and graceful shutdown. See serve.h for the threads.
 */
#include <errno.h>
#include <getopt.h>
#include <microhttpd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "engine_args.h"
#include "serve.h"
#include "serve_metrics.h"

static const char *help =
    "usage: duet serve [options]\n"
    "\n"
    "Serve a model over an OpenAI-compatible HTTP API (vLLM's endpoints, SSE\n"
    "streaming, vllm: Prometheus metrics at /metrics, a live dashboard at\n"
    "/dashboard). SIGINT/SIGTERM stop it gracefully.\n"
    "\n"
    "options:\n"
    "  -m, --model FILE          GGUF model (default: $DUET_MODEL, else the default\n"
    "                            SmolLM2-135M-Instruct Q4_1 in $DUET_CACHE/models)\n"
    "      --host ADDR           address to bind (default 127.0.0.1)\n"
    "      --port N              port (default 8000; 0 = any free port)\n"
    "      --api-key KEY         require 'Authorization: Bearer KEY' on /v1/*\n"
    "                            (default: $DUET_API_KEY, else none)\n"
    "      --served-model-name S model id in the API (default: the file name\n"
    "                            without .gguf)\n"
    "      --chat-template FILE  Jinja chat template instead of the model's\n"
    "      --max-queue N         answer 503 while N requests wait (default 0 = no limit)\n"
    "      --max-body BYTES      largest request body, else 413 (default 8M)\n"
    "      --max-connections N   open connections at most (default 16384)\n"
    "      --shutdown-timeout S  seconds in-flight requests get to finish on\n"
    "                            SIGINT/SIGTERM before they are aborted (default 10)\n"
    "      --device SPEC         auto | cpu | vulkan[:N] (default auto: a GPU\n"
    "                            through Vulkan if present, else the CPU)\n"
    "      --threads N           CPU threads (default: all cores)\n"
    "  -h, --help                this help\n"
    "\n";

typedef struct serve_opts {
    serve_config cfg;
    char model[4096];
    const char *device;
    long threads;
    duet_engine_options engine;
    duet_model_options source;
} serve_opts;

static int parse_args(int argc, char **argv, serve_opts *o)
{
    enum { OPT_HOST = 256, OPT_PORT, OPT_KEY, OPT_QUEUE, OPT_BODY, OPT_NAME, OPT_TEMPLATE,
           OPT_SHUTDOWN, OPT_DEVICE, OPT_THREADS, OPT_CONNS };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},
        {"host", required_argument, 0, OPT_HOST},
        {"port", required_argument, 0, OPT_PORT},
        {"api-key", required_argument, 0, OPT_KEY},
        {"max-queue", required_argument, 0, OPT_QUEUE},
        {"max-body", required_argument, 0, OPT_BODY},
        {"served-model-name", required_argument, 0, OPT_NAME},
        {"chat-template", required_argument, 0, OPT_TEMPLATE},
        {"shutdown-timeout", required_argument, 0, OPT_SHUTDOWN},
        {"device", required_argument, 0, OPT_DEVICE},
        {"threads", required_argument, 0, OPT_THREADS},
        {"max-connections", required_argument, 0, OPT_CONNS},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    struct option all[64];
    const char *cmd = "serve";
    int c;
    long v;
    engine_args_merge(longopts, all, 64);
    cli_default_model(o->model, sizeof o->model);
    o->cfg = (serve_config){.host = "127.0.0.1", .port = 8000, .max_body = 8 << 20,
                            .shutdown_timeout = 10, .max_connections = 16384,
                            .api_key = getenv("DUET_API_KEY")};
    if (o->cfg.api_key && !*o->cfg.api_key)
        o->cfg.api_key = NULL;
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
        case OPT_HOST: o->cfg.host = optarg; break;
        case OPT_PORT:
            if (cli_parse_int(cmd, "--port", optarg, 0, 65535, &o->cfg.port)) return -1;
            break;
        case OPT_KEY: o->cfg.api_key = *optarg ? optarg : NULL; break;
        case OPT_QUEUE:
            if (cli_parse_int(cmd, "--max-queue", optarg, 0, 1 << 30, &o->cfg.max_queue)) return -1;
            break;
        case OPT_BODY: {
            char num[32];
            size_t n = strlen(optarg);
            long mult = 1;
            if (n && strchr("kKmM", optarg[n - 1])) {
                mult = strchr("kK", optarg[n - 1]) ? 1024 : 1024 * 1024;
                n--;
            }
            snprintf(num, sizeof num, "%.*s", (int)(n < 31 ? n : 31), optarg);
            if (cli_parse_int(cmd, "--max-body", num, 1, (1L << 30) / mult, &v)) return -1;
            o->cfg.max_body = v * mult;
            break;
        }
        case OPT_NAME: o->cfg.served_name = optarg; break;
        case OPT_TEMPLATE: o->cfg.chat_template = optarg; break;
        case OPT_SHUTDOWN: {
            double d;
            if (cli_parse_float(cmd, "--shutdown-timeout", optarg, 0, 3600, &d)) return -1;
            o->cfg.shutdown_timeout = d;
            break;
        }
        case OPT_DEVICE: o->device = optarg; break;
        case OPT_THREADS:
            if (cli_parse_int(cmd, "--threads", optarg, 1, 1024, &o->threads)) return -1;
            break;
        case OPT_CONNS:
            if (cli_parse_int(cmd, "--max-connections", optarg, 16, 1 << 20, &o->cfg.max_connections))
                return -1;
            break;
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

/* The model's chat template (or --chat-template FILE). A model template
 * that does not compile is logged and chat requests say why; a bad
 * --chat-template stops start-up (-1). */
static int load_template(serve_ctx *ctx)
{
    const char *src;
    size_t len = 0;
    char *file = NULL;
    if (ctx->cfg.chat_template) {
        FILE *f = fopen(ctx->cfg.chat_template, "rb");
        long n = -1;
        if (f && fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
            (file = malloc((size_t)n + 1)) && fread(file, 1, (size_t)n, f) == (size_t)n) {
            len = (size_t)n;
        } else {
            free(file);
            file = NULL;
        }
        if (f)
            fclose(f);
        if (!file) {
            fprintf(stderr, "duet serve: cannot read --chat-template '%s'\n",
                    ctx->cfg.chat_template);
            return -1;
        }
        src = file;
    } else if (!(src = duet_model_chat_template(ctx->model, &len))) {
        return 0;
    }
    int rc = 0;
    if (duet_chat_template_compile(src, len, &ctx->tmpl)) {
        if (file) {
            fprintf(stderr, "duet serve: --chat-template '%s': %s\n", ctx->cfg.chat_template,
                    duet_last_error());
            rc = -1;
        } else {
            if (asprintf(&ctx->tmpl_error, "the chat template does not compile: %s",
                         duet_last_error()) < 0)
                ctx->tmpl_error = NULL;
            fprintf(stderr, "duet serve: warning: %s; /v1/chat/completions will answer 400\n",
                    ctx->tmpl_error ? ctx->tmpl_error : "the chat template does not compile");
        }
    }
    free(file);
    return rc;
}

static void served_name(serve_ctx *ctx)
{
    const char *base = strrchr(ctx->model_path, '/');
    base = base ? base + 1 : ctx->model_path;
    if (ctx->cfg.served_name) {
        snprintf(ctx->model_name, sizeof ctx->model_name, "%s", ctx->cfg.served_name);
        return;
    }
    size_t n = strlen(base);
    if (n > 5 && !strcmp(base + n - 5, ".gguf"))
        n -= 5;
    snprintf(ctx->model_name, sizeof ctx->model_name, "%.*s", (int)n, base);
}

/* Wait for a signal up to seconds (< 0 = forever); 1 if one came. */
static int wait_signal(const sigset_t *set, double seconds)
{
    if (seconds < 0) {
        int sig;
        return sigwait(set, &sig) == 0;
    }
    struct timespec ts = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
    return sigtimedwait(set, NULL, &ts) > 0;
}

static int count_active(serve_ctx *ctx)
{
    pthread_mutex_lock(&ctx->mu);
    int n = ctx->n_active;
    pthread_mutex_unlock(&ctx->mu);
    return n;
}

/* Stop accepting, let in-flight requests finish for the timeout (a second
 * signal cuts it short), abort the rest, let their streams end. */
static void drain(serve_ctx *ctx, const sigset_t *set)
{
    serve_http_quiesce(ctx);
    pthread_mutex_lock(&ctx->mu);
    ctx->draining = 1; /* keep-alive connections may still ask: 503 */
    int n = ctx->n_active;
    pthread_mutex_unlock(&ctx->mu);
    fprintf(stderr, "duet serve: shutting down: %d requests in flight, %.0f s to finish\n", n,
            ctx->cfg.shutdown_timeout);
    double end = serve_now() + ctx->cfg.shutdown_timeout;
    while (count_active(ctx) > 0 && serve_now() < end)
        if (wait_signal(set, 0.05))
            break;
    pthread_mutex_lock(&ctx->mu);
    int n_ids = ctx->n_active, k = 0;
    char(*ids)[64] = n_ids ? malloc(sizeof *ids * (size_t)n_ids) : NULL;
    for (serve_req *r = ctx->active; r && ids && k < n_ids; r = r->next, k++)
        memcpy(ids[k], r->id, sizeof ids[k]);
    pthread_mutex_unlock(&ctx->mu);
    if (k)
        fprintf(stderr, "duet serve: aborting %d requests\n", k);
    for (int i = 0; i < k; i++)
        duet_engine_abort(ctx->engine, ids[i]);
    free(ids);
    serve_wake_engine(ctx);
    end = serve_now() + 5;
    while (count_active(ctx) > 0 && serve_now() < end)
        usleep(10000);
    /* Give finished streams a moment to write their last bytes. */
    end = serve_now() + 1;
    while (serve_now() < end) {
        const union MHD_DaemonInfo *info =
            MHD_get_daemon_info(ctx->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
        if (!info || info->num_connections == 0)
            break;
        usleep(10000);
    }
}

int cmd_serve(int argc, char **argv)
{
    serve_opts o = {0};
    int pr = parse_args(argc, argv, &o);
    if (pr)
        return pr > 0 ? 0 : 2;

    int ret = 1, thread_started = 0;
    pthread_t engine_thread;
    serve_ctx *ctx = calloc(1, sizeof *ctx);
    sigset_t set;
    if (!ctx) {
        fprintf(stderr, "duet serve: out of memory\n");
        return 1;
    }
    /* Every thread inherits the blocked set; the main thread takes the
     * signals with sigwait, so no handler runs inside a library call. */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    pthread_mutex_init(&ctx->mu, NULL);
    pthread_cond_init(&ctx->cv, NULL);
    ctx->cfg = o.cfg;
    ctx->start_time = serve_now();
    snprintf(ctx->model_path, sizeof ctx->model_path, "%s", o.model);

    duet_model_options mo = o.source;
    mo.device = o.device;
    mo.n_threads = (int)o.threads;
    if (duet_model_load(o.model, &mo, &ctx->model)) {
        int missing_default = access(o.model, F_OK) != 0 &&
                              strcmp(o.model, cli_default_model((char[4096]){0}, 4096)) == 0;
        fprintf(stderr, "duet serve: %s%s\n", duet_last_error(),
                missing_default ? " (fetch the default model with scripts/fetch-model.sh)" : "");
        goto out;
    }
    if (duet_engine_create(ctx->model, &o.engine, &ctx->engine)) {
        fprintf(stderr, "duet serve: %s\n", duet_last_error());
        goto out;
    }
    duet_engine_stats st;
    duet_engine_get_stats(ctx->engine, &st);
    ctx->max_model_len = st.max_model_len;
    ctx->vocab = duet_model_vocab_size(ctx->model);
    ctx->backend = duet_model_device_name(ctx->model);
    served_name(ctx);
    if (load_template(ctx))
        goto out;
    if (!(ctx->metrics = serve_metrics_create(ctx->model_name, ctx->backend, ctx->max_model_len))) {
        fprintf(stderr, "duet serve: out of memory\n");
        goto out;
    }
    serve_metrics_engine(ctx->metrics, &st, 0);
    if (pthread_create(&engine_thread, NULL, serve_engine_main, ctx)) {
        fprintf(stderr, "duet serve: cannot start the engine thread\n");
        goto out;
    }
    thread_started = 1;
    if (serve_http_start(ctx))
        goto out;
    int port = serve_http_port(ctx);
    const char *h = ctx->cfg.host;
    int v6 = strchr(h, ':') != NULL;
    fprintf(stderr,
            "duet serve: model %s (%s, %s) as '%s', backend %s, max_model_len %d\n"
            "duet serve: %s\n"
            "duet serve: chat template: %s\n"
            "duet serve: listening on http://%s%s%s:%d  (dashboard: http://%s%s%s:%d/dashboard)\n",
            ctx->model_path, duet_model_arch(ctx->model),
            ctx->cfg.api_key ? "API key required" : "no API key", ctx->model_name, ctx->backend,
            ctx->max_model_len, duet_engine_kv_summary(ctx->engine),
            ctx->tmpl ? (ctx->cfg.chat_template ? ctx->cfg.chat_template : "the model's")
                      : (ctx->tmpl_error ? ctx->tmpl_error : "none (chat disabled)"),
            v6 ? "[" : "", h, v6 ? "]" : "", port, v6 ? "[" : "", h, v6 ? "]" : "", port);

    wait_signal(&set, -1);
    drain(ctx, &set);
    fprintf(stderr, "duet serve: stopped\n");
    ret = 0;
out:
    if (thread_started) {
        pthread_mutex_lock(&ctx->mu);
        ctx->stop = 1;
        pthread_cond_signal(&ctx->cv);
        pthread_mutex_unlock(&ctx->mu);
        pthread_join(engine_thread, NULL);
    }
    serve_http_stop(ctx);
    duet_engine_free(ctx->engine);
    duet_chat_template_free(ctx->tmpl);
    duet_model_free(ctx->model);
    serve_metrics_free(ctx->metrics);
    free(ctx->tmpl_error);
    pthread_cond_destroy(&ctx->cv);
    pthread_mutex_destroy(&ctx->mu);
    free(ctx);
    return ret;
}
