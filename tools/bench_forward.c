/*
 * bench_forward.c — `duet bench forward`: the model's forward pass alone,
 * as the engine runs it, for the numbers a memory-bound decode is judged
 * by: decode steps of B sequences at a fixed context (tok/s, and the bytes
 * a step must read — every weight once plus each sequence's KV cache —
 * over the step time), and the prefill of one long prompt in chunks.
 *
 * No sampling and no logits download: the LM head runs, its output stays on
 * the device, so a device without the sample op can be measured and the
 * numbers are the device's, not the PCIe link's. The decode context's KV
 * cache is not computed first (a 64 x 512-token prefill of an 8B model would
 * take longer than the benchmark); attention reads it all the same, and the
 * values do not change the work. Reaches into duet_internal.h for the
 * model's device and weights (the runner is not public API).
 *
 * --profile (Vulkan): after each configuration's timed steps, more steps
 * with GPU timestamps on (vulkan_backend.h), so the timed numbers are not
 * perturbed by them: the GPU time per step by shader, and the span of the
 * step's recording against its wall time.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "duet_internal.h"
#include "engine_args.h"
#include "error.h"
#ifdef DUET_HAVE_VULKAN
#include "vulkan_backend.h"
#endif

enum { MAX_BATCHES = 16, BLOCK = 16, MAX_KINDS = 64 };

static const char *help =
    "usage: duet bench forward [options]\n"
    "\n"
    "The forward pass alone (no sampling, logits stay on the device): decode steps\n"
    "of B sequences at a fixed context, and the prefill of one prompt in chunks.\n"
    "Reports tok/s and, for decode, the bytes a step must read (every weight once +\n"
    "each sequence's KV cache) over the step time: the achieved memory bandwidth.\n"
    "Decode steps are timed one at a time (the median: record, submit, wait), then\n"
    "as many again with two in flight, as the engine's async scheduling runs them\n"
    "(the host records the next step while the device runs one): the mean, in the\n"
    "table's '2-deep' columns.\n"
    "\n"
    "options:\n"
    "  -m, --model FILE     GGUF model (default: $DUET_MODEL or the default model)\n"
    "      --device SPEC    auto | cpu | vulkan[:N] (default auto)\n"
    "      --batch LIST     decode batch sizes, comma-separated (default 1,8,64)\n"
    "      --context N      tokens of context each sequence has (default 512)\n"
    "      --steps N        timed decode steps per batch size, after 2 untimed (default 16)\n"
    "      --prefill N      prompt tokens of the prefill test (default 2048; 0 skips)\n"
    "      --chunk N        prefill tokens per forward pass (default 512, the engine's\n"
    "                       max_num_batched_tokens)\n"
    "      --repeat N       timed prefills, after 1 untimed (default 3)\n"
    "      --kv-type T      f32 (the engine's, default) or f16\n"
    "      --threads N      CPU threads (default: all cores)\n"
    "      --json           one JSON object on stdout instead of a table\n"
    "      --profile        Vulkan: after each configuration's timed steps, run more\n"
    "                       with GPU timestamps on and show each shader's dispatches\n"
    "                       and GPU time per step, its share of the GPU span, and\n"
    "                       the span against the wall time per step (the prefill:\n"
    "                       one more whole prompt, per chunk). Approximate where\n"
    "                       commands overlap (no barrier between them)\n"
    "      --profile-steps N  decode steps profiled per batch size (default 4)\n"
    "  -h, --help           this help\n";

typedef struct fwd_opts {
    char model[4096];
    duet_model_options source;
    const char *device;
    int batch[MAX_BATCHES], n_batch;
    long context, steps, prefill, chunk, repeat, threads;
    duet_dtype kv_type;
    int json, profile;
    int profile_keep; /* DUET_VK_PROFILE=1 had it on: leave it on after each profile */
    long profile_steps;
} fwd_opts;

/* GPU time of the profiled steps of one configuration, by kind (a shader's
 * name, "upload", "download"), largest first. */
typedef struct fwd_kind {
    char kind[32];
    double count, us; /* dispatches and microseconds, summed over the steps */
} fwd_kind;

typedef struct fwd_profile {
    fwd_kind k[MAX_KINDS];
    int n, steps;
    double recordings, barriers, span_us, wall_s;
} fwd_profile;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *v, int n)
{
    double s[4096];
    memcpy(s, v, sizeof *v * (size_t)n);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

static uint64_t tensor_bytes(const duet_tensor *t)
{
    if (!t->addr.buf)
        return 0;
    return (uint64_t)duet_dtype_row_bytes(t->type, t->ne[0]) * (uint64_t)t->ne[1];
}

/* Bytes a decode step reads of the weights: every matrix, bias and norm
 * once (the embedding table only for the step's rows). */
static uint64_t weight_bytes_per_step(const duet_model *m, int batch)
{
    const duet_model_weights *w = &m->weights;
    uint64_t n = tensor_bytes(&w->out_norm) + tensor_bytes(&w->lm_head) +
                 (uint64_t)batch * duet_dtype_row_bytes(w->tok_embd.type, w->tok_embd.ne[0]);
    for (int l = 0; l < m->config.n_layers; l++) {
        const duet_layer_weights *L = &w->layers[l];
        const duet_tensor *t[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->bq, &L->bk,
                                  &L->bv, &L->wo, &L->ffn_norm, &L->w_gate, &L->w_up,
                                  &L->w_down};
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
            n += tensor_bytes(t[i]);
    }
    return n;
}

static int parse_batches(const char *s, fwd_opts *o)
{
    o->n_batch = 0;
    for (const char *p = s; *p;) {
        char item[16];
        size_t len = strcspn(p, ",");
        long v;
        if (o->n_batch == MAX_BATCHES || len == 0 || len >= sizeof item) {
            fprintf(stderr, "duet bench forward: --batch '%s': give 1 to %d sizes, "
                            "comma-separated\n", s, MAX_BATCHES);
            return -1;
        }
        memcpy(item, p, len);
        item[len] = 0;
        if (cli_parse_int("bench forward", "--batch", item, 1, 4096, &v))
            return -1;
        o->batch[o->n_batch++] = (int)v;
        p += len + (p[len] == ',');
    }
    return o->n_batch ? 0 : -1;
}

static int parse(int argc, char **argv, fwd_opts *o)
{
    enum { O_DEVICE = 256, O_BATCH, O_CONTEXT, O_STEPS, O_PREFILL, O_CHUNK, O_REPEAT, O_KV,
           O_THREADS, O_JSON, O_PROFILE, O_PROFILE_STEPS };
    static const struct option own[] = {
        {"model", required_argument, 0, 'm'},     {"device", required_argument, 0, O_DEVICE},
        {"batch", required_argument, 0, O_BATCH}, {"context", required_argument, 0, O_CONTEXT},
        {"steps", required_argument, 0, O_STEPS}, {"prefill", required_argument, 0, O_PREFILL},
        {"chunk", required_argument, 0, O_CHUNK}, {"repeat", required_argument, 0, O_REPEAT},
        {"kv-type", required_argument, 0, O_KV},  {"threads", required_argument, 0, O_THREADS},
        {"json", no_argument, 0, O_JSON},         {"help", no_argument, 0, 'h'},
        {"profile", no_argument, 0, O_PROFILE},
        {"profile-steps", required_argument, 0, O_PROFILE_STEPS},
        {0, 0, 0, 0},
    };
    struct option all[32];
    int n = 0, c;
    const char *cmd = "bench forward";
    for (const struct option *p = own; p->name; p++)
        all[n++] = *p;
    for (const struct option *p = model_arg_options; p->name; p++)
        all[n++] = *p;
    memset(&all[n], 0, sizeof all[n]);
    cli_default_model(o->model, sizeof o->model);
    o->device = "auto";
    o->batch[0] = 1, o->batch[1] = 8, o->batch[2] = 64, o->n_batch = 3;
    o->context = 512, o->steps = 16, o->prefill = 2048, o->chunk = 512, o->repeat = 3;
    o->kv_type = DUET_F32;
    o->profile_steps = 4;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "m:h", all, NULL)) != -1) {
        int e = model_arg_parse(cmd, c, optarg, &o->source, o->model, sizeof o->model);
        if (e < 0)
            return -1;
        if (e > 0)
            continue;
        switch (c) {
        case 'm': snprintf(o->model, sizeof o->model, "%s", optarg); break;
        case O_DEVICE: o->device = optarg; break;
        case O_BATCH:
            if (parse_batches(optarg, o))
                return -1;
            break;
        case O_CONTEXT:
            if (cli_parse_int(cmd, "--context", optarg, 1, 1 << 20, &o->context))
                return -1;
            break;
        case O_STEPS:
            if (cli_parse_int(cmd, "--steps", optarg, 1, 4096, &o->steps))
                return -1;
            break;
        case O_PREFILL:
            if (cli_parse_int(cmd, "--prefill", optarg, 0, 1 << 20, &o->prefill))
                return -1;
            break;
        case O_CHUNK:
            if (cli_parse_int(cmd, "--chunk", optarg, 1, 1 << 16, &o->chunk))
                return -1;
            break;
        case O_REPEAT:
            if (cli_parse_int(cmd, "--repeat", optarg, 1, 4096, &o->repeat))
                return -1;
            break;
        case O_KV:
            if (strcmp(optarg, "f32") && strcmp(optarg, "f16")) {
                fprintf(stderr, "duet %s: --kv-type '%s' is not one of f32, f16\n", cmd, optarg);
                return -1;
            }
            o->kv_type = strcmp(optarg, "f16") ? DUET_F32 : DUET_F16;
            break;
        case O_THREADS:
            if (cli_parse_int(cmd, "--threads", optarg, 1, 1024, &o->threads))
                return -1;
            break;
        case O_JSON: o->json = 1; break;
        case O_PROFILE: o->profile = 1; break;
        case O_PROFILE_STEPS:
            if (cli_parse_int(cmd, "--profile-steps", optarg, 1, 4096, &o->profile_steps))
                return -1;
            break;
        case 'h':
            fputs(help, stdout);
            fputs(model_arg_help, stdout);
            return 1;
        default: return cli_bad_option(cmd, argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cli_extra_arg(cmd, argv[optind]);
    return 0;
}

/* ---- --profile: GPU timestamps around extra steps (Vulkan) ------------------- */

/* Profiling on, the totals cleared. */
static duet_status profile_start(duet_device *d)
{
#ifdef DUET_HAVE_VULKAN
    duet_status rc = duet_vulkan_profile_enable(d, 1);
    if (!rc)
        duet_vulkan_profile_reset(d);
    return rc;
#else
    (void)d;
    return duet_error(DUET_ERR_UNSUPPORTED, "--profile: this build of duet has no Vulkan backend");
#endif
}

/* The totals of `steps` steps into *p, then profiling off unless keep_on. */
static duet_status profile_take(duet_device *d, int steps, double wall_s, int keep_on,
                                fwd_profile *p)
{
    memset(p, 0, sizeof *p);
    p->steps = steps;
    p->wall_s = wall_s;
#ifdef DUET_HAVE_VULKAN
    duet_vulkan_profile_entry e[MAX_KINDS];
    duet_vulkan_profile_totals t;
    int n = 0;
    duet_status rc = duet_vulkan_profile_read(d, e, MAX_KINDS, &n, &t);
    duet_status off = keep_on ? DUET_OK : duet_vulkan_profile_enable(d, 0);
    if (rc || (rc = off))
        return rc;
    for (int i = 0; i < n && i < MAX_KINDS; i++) {
        _Static_assert(sizeof p->k[i].kind == sizeof e[i].kind, "kind names");
        memcpy(p->k[i].kind, e[i].kind, sizeof e[i].kind);
        p->k[i].count = (double)e[i].count;
        p->k[i].us = e[i].total_us;
    }
    p->n = n < MAX_KINDS ? n : MAX_KINDS;
    p->recordings = (double)t.recordings;
    p->barriers = (double)t.barriers;
    p->span_us = t.span_us;
    return DUET_OK;
#else
    (void)d, (void)keep_on;
    return duet_error(DUET_ERR_UNSUPPORTED, "--profile: this build of duet has no Vulkan backend");
#endif
}

/* Whether profiling is already on (DUET_VK_PROFILE=1); -1 if d cannot
 * profile (not Vulkan, no timestamps: the message is set). Enabling and
 * disabling records nothing. */
static int profile_probe(duet_device *d)
{
#ifdef DUET_HAVE_VULKAN
    duet_vulkan_profile_totals t;
    int n;
    if (duet_vulkan_profile_read(d, NULL, 0, &n, &t))
        return -1;
    if (t.enabled)
        return 1;
    return duet_vulkan_profile_enable(d, 1) || duet_vulkan_profile_enable(d, 0) ? -1 : 0;
#else
    (void)d;
    duet_error(DUET_ERR_UNSUPPORTED, "this build of duet has no Vulkan backend");
    return -1;
#endif
}

static void profile_print(const char *what, const fwd_profile *p, int json)
{
    double steps = p->steps, span = p->span_us / steps, wall = p->wall_s * 1e6 / steps;
    if (json) {
        printf(", \"profile\": {\"steps\": %d, \"recordings\": %.0f, \"barriers_per_step\": %.1f, "
               "\"span_us_per_step\": %.1f, \"wall_us_per_step\": %.1f, \"kinds\": [",
               p->steps, p->recordings, p->barriers / steps, span, wall);
        for (int i = 0; i < p->n; i++)
            printf("%s{\"kind\": \"%s\", \"per_step\": %.2f, \"us_per_step\": %.2f, "
                   "\"share\": %.4f}",
                   i ? ", " : "", p->k[i].kind, p->k[i].count / steps, p->k[i].us / steps,
                   p->span_us > 0 ? p->k[i].us / p->span_us : 0.0);
        printf("]}");
        return;
    }
    printf("  profile of %s, %d steps: GPU span %.1f us/step, wall %.1f us/step (GPU busy "
           "%.0f%%), %.1f barriers/step\n"
           "  %-22s %12s %12s %8s\n",
           what, p->steps, span, wall, wall > 0 ? 100.0 * span / wall : 0.0,
           p->barriers / steps, "kind",
           "cmds/step", "us/step", "share");
    for (int i = 0; i < p->n; i++)
        printf("  %-22s %12.1f %12.1f %7.1f%%\n", p->k[i].kind, p->k[i].count / steps,
               p->k[i].us / steps, p->span_us > 0 ? 100.0 * p->k[i].us / p->span_us : 0.0);
}

/* Random token ids for a decode step (the work does not depend on them). */
static void new_tokens(int32_t *tok, int batch, int vocab, unsigned *seed)
{
    for (int s = 0; s < batch; s++)
        tok[s] = (int32_t)(rand_r(seed) % (unsigned)vocab);
}

/* Decode steps of `batch` sequences, each at position `context`; step
 * seconds into secs[steps], each step recorded, submitted and waited for
 * alone. Then as many steps again with up to two in flight (the engine's
 * async scheduling: the host records step i + 1 while the device runs step
 * i): their mean into *pipelined. With o->profile, o->profile_steps more,
 * one at a time, into *prof. */
static duet_status run_decode(duet_model *m, const fwd_opts *o, int batch, double *secs,
                              double *pipelined, fwd_profile *prof)
{
    int bps = (int)((o->context + 1 + BLOCK - 1) / BLOCK), V = m->config.vocab;
    duet_runner_options ro = {
        .max_tokens = batch, .max_seqs = batch, .max_logit_rows = batch,
        .num_blocks = 1 + batch * bps, .block_size = BLOCK, .max_blocks_per_seq = bps,
        .kv_type = o->kv_type,
    };
    duet_runner *r = NULL;
    int32_t *meta = malloc(sizeof(int32_t) * (size_t)batch * (6 + (size_t)bps) + 4);
    duet_status rc = DUET_OK;
    if (!meta)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "bench forward: out of host memory");
    int32_t *tok = meta, *pos = tok + batch, *slot = pos + batch, *len = slot + batch;
    int32_t *rows = len + batch, *qsl = rows + batch, *tables = qsl + batch + 1;
    unsigned seed = 7;
    for (int s = 0; s < batch; s++) {
        for (int i = 0; i < bps; i++)
            tables[s * bps + i] = 1 + s * bps + i;
        pos[s] = (int32_t)o->context;
        slot[s] = tables[s * bps + o->context / BLOCK] * BLOCK + (int32_t)(o->context % BLOCK);
        len[s] = (int32_t)o->context + 1;
        rows[s] = qsl[s] = s;
    }
    qsl[batch] = batch;
    duet_batch b = {.n_tokens = batch, .n_seqs = batch, .tokens = tok, .positions = pos,
                    .slot_mapping = slot, .query_start_loc = qsl, .seq_lens = len,
                    .block_tables = tables, .logit_rows = rows, .n_logit_rows = batch};
    if ((rc = duet_runner_create(m->dev, &m->config, &m->weights, &ro, &r)))
        goto out;
    /* 2 untimed steps, then the timed ones, one at a time. */
    long profiled = o->profile ? o->profile_steps : 0;
    double wall = 0;
    for (long i = -2; i < o->steps && rc == DUET_OK; i++) {
        new_tokens(tok, batch, V, &seed);
        double t0 = now_s();
        rc = duet_model_forward(r, &b, NULL, NULL);
        if (i >= 0)
            secs[i] = now_s() - t0;
    }
    double t0 = now_s();
    int in_flight = 0;
    for (long i = 0; i < o->steps && rc == DUET_OK; i++) {
        new_tokens(tok, batch, V, &seed);
        if (in_flight == 2 && (rc = duet_model_forward_wait(r)))
            break;
        in_flight -= in_flight == 2;
        if ((rc = duet_model_forward_submit(r, &b, NULL, NULL)) == DUET_OK)
            in_flight++;
    }
    /* Finish what is in flight even after an error (the runner is freed). */
    while (in_flight-- > 0) {
        duet_status w = duet_model_forward_wait(r);
        if (rc == DUET_OK)
            rc = w;
    }
    *pipelined = (now_s() - t0) / (double)o->steps;
    /* The profiled steps, last, so that profiling perturbs no timed step. */
    if (rc == DUET_OK && profiled)
        rc = profile_start(m->dev);
    for (long i = 0; i < profiled && rc == DUET_OK; i++) {
        new_tokens(tok, batch, V, &seed);
        double t1 = now_s();
        rc = duet_model_forward(r, &b, NULL, NULL);
        wall += now_s() - t1;
    }
    if (!rc && profiled)
        rc = profile_take(m->dev, (int)profiled, wall, o->profile_keep, prof);
out:
    duet_runner_free(r);
    free(meta);
    return rc;
}

/* One prompt of o->prefill tokens in chunks; seconds per run into secs;
 * with o->profile, one more run into *prof (a step = a chunk). */
static duet_status run_prefill(duet_model *m, const fwd_opts *o, double *secs,
                               fwd_profile *prof)
{
    int n = (int)o->prefill, chunk = (int)o->chunk, bps = (n + BLOCK - 1) / BLOCK;
    duet_runner_options ro = {
        .max_tokens = chunk, .max_seqs = 1, .max_logit_rows = 1, .num_blocks = 1 + bps,
        .block_size = BLOCK, .max_blocks_per_seq = bps, .kv_type = o->kv_type,
    };
    duet_runner *r = NULL;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n * 3);
    int32_t *table = malloc(sizeof(int32_t) * (size_t)bps);
    duet_status rc = DUET_OK;
    if (!ids || !table) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "bench forward: out of host memory");
        goto out;
    }
    int32_t *pos = ids + n, *slot = pos + n;
    unsigned seed = 11;
    for (int i = 0; i < bps; i++)
        table[i] = 1 + i;
    for (int i = 0; i < n; i++) {
        ids[i] = (int32_t)(rand_r(&seed) % (unsigned)m->config.vocab);
        pos[i] = i;
        slot[i] = table[i / BLOCK] * BLOCK + i % BLOCK;
    }
    if ((rc = duet_runner_create(m->dev, &m->config, &m->weights, &ro, &r)))
        goto out;
    long runs = o->repeat + (o->profile ? 1 : 0);
    for (long run = -1; run < runs && rc == DUET_OK; run++) {
        if (run == o->repeat && (rc = profile_start(m->dev)))
            break;
        double t0 = now_s();
        for (int at = 0; at < n && rc == DUET_OK; at += chunk) {
            int len = n - at < chunk ? n - at : chunk, last = at + len == n;
            int32_t qsl[2] = {0, len}, seq_len = at + len, row = len - 1;
            duet_batch b = {.n_tokens = len, .n_seqs = 1, .tokens = ids + at,
                            .positions = pos + at, .slot_mapping = slot + at,
                            .query_start_loc = qsl, .seq_lens = &seq_len, .block_tables = table,
                            .logit_rows = &row, .n_logit_rows = last};
            rc = duet_model_forward(r, &b, NULL, NULL);
        }
        if (run >= 0 && run < o->repeat)
            secs[run] = now_s() - t0;
        else if (run == o->repeat && !rc)
            rc = profile_take(m->dev, (n + chunk - 1) / chunk, now_s() - t0, o->profile_keep,
                              prof);
    }
out:
    duet_runner_free(r);
    free(table);
    free(ids);
    return rc;
}

int cmd_bench_forward(int argc, char **argv)
{
    fwd_opts o = {0};
    int p = parse(argc, argv, &o);
    if (p)
        return p > 0 ? 0 : 2;
    duet_model *m = NULL;
    fwd_profile *prof = NULL;
    double *secs = calloc((size_t)(o.steps > o.repeat ? o.steps : o.repeat), sizeof *secs);
    int ret = 1, in_array = 0;
    duet_model_options mo = o.source;
    mo.device = o.device;
    mo.n_threads = (int)o.threads;
    if (!secs)
        goto out;
    if (o.profile && strncmp(o.device, "vulkan", 6) != 0 && strcmp(o.device, "auto") != 0) {
        fprintf(stderr, "duet bench forward: --profile needs a Vulkan device (GPU timestamps); "
                        "--device '%s' is not one\n", o.device);
        ret = 2;
        goto out;
    }
    if (o.profile && !(prof = malloc(sizeof *prof)))
        goto out;
    double t_load = now_s();
    if (duet_model_load(o.model, &mo, &m)) {
        fprintf(stderr, "duet bench forward: %s\n", duet_last_error());
        goto out;
    }
    t_load = now_s() - t_load;
    duet_device_info info;
    duet_dev_info(m->dev, &info);
    /* Device memory the weights took (a GPU's buffers; the CPU's is host
     * RAM, whose free figure is the system's). */
    long long held = strcmp(info.backend, "cpu") ? (long long)(info.mem_total - info.mem_free) : -1;
    if (o.profile) {
        /* Fail now rather than after the timed steps: not Vulkan, or no
         * timestamps. */
        int was_on = strcmp(info.backend, "vulkan") == 0 ? profile_probe(m->dev) : -1;
        o.profile_keep = was_on == 1;
        if (was_on < 0) {
            fprintf(stderr, "duet bench forward: --profile needs a Vulkan device with GPU "
                            "timestamps; --device '%s' is %s%s%s\n", o.device, info.name,
                    strcmp(info.backend, "vulkan") ? "" : ": ",
                    strcmp(info.backend, "vulkan") ? "" : duet_last_error());
            ret = 2;
            goto out;
        }
    }
    uint64_t kv_tok = duet_kv_bytes_per_token(&m->config, o.kv_type);
    if (o.json)
        printf("{\"model\": \"%s\", \"device\": \"%s\", \"load_seconds\": %.2f, "
               "\"weights_device_bytes\": %lld, "
               "\"kv_type\": \"%s\", \"kv_bytes_per_token\": %llu, \"weight_bytes\": %llu, "
               "\"context\": %ld, \"decode\": [",
               o.model, duet_model_device_name(m), t_load, held,
               o.kv_type == DUET_F16 ? "f16" : "f32", (unsigned long long)kv_tok,
               (unsigned long long)weight_bytes_per_step(m, 0), o.context);
    else {
        char mem[64] = "";
        if (held >= 0)
            snprintf(mem, sizeof mem, ", %.0f MiB of device memory", held / 1048576.0);
        printf("%s on %s (loaded in %.1f s%s); decode at context %ld, KV %s\n"
               "%-8s %6s %10s %10s %12s %10s %12s %10s\n", o.model, duet_model_device_name(m),
               t_load, mem, o.context, o.kv_type == DUET_F16 ? "f16" : "f32", "test", "batch",
               "ms/step", "tok/s", "MB/step", "GB/s", "2-deep ms", "GB/s");
    }
    in_array = o.json;
    for (int i = 0; i < o.n_batch; i++) {
        int B = o.batch[i];
        double piped = 0;
        if (run_decode(m, &o, B, secs, &piped, prof)) {
            fprintf(stderr, "duet bench forward: decode at batch %d: %s\n", B, duet_last_error());
            goto out_json;
        }
        double step = median(secs, (int)o.steps);
        double bytes = (double)weight_bytes_per_step(m, B) +
                       (double)B * (double)(o.context + 1) * (double)kv_tok;
        if (o.json) {
            printf("%s{\"batch\": %d, \"step_ms_median\": %.3f, \"tok_s\": %.2f, "
                   "\"bytes_per_step\": %.0f, \"gbps\": %.2f, \"pipelined_step_ms\": %.3f, "
                   "\"pipelined_tok_s\": %.2f, \"pipelined_gbps\": %.2f, \"step_ms\": [",
                   i ? ", " : "", B, step * 1e3, B / step, bytes, bytes / step / 1e9,
                   piped * 1e3, B / piped, bytes / piped / 1e9);
            for (long s = 0; s < o.steps; s++)
                printf(s ? ", %.3f" : "%.3f", secs[s] * 1e3);
            printf("]");
            if (o.profile)
                profile_print(NULL, prof, 1);
            printf("}");
        } else {
            printf("%-8s %6d %10.2f %10.1f %12.1f %10.1f %12.2f %10.1f\n", "decode", B,
                   step * 1e3, B / step, bytes / 1e6, bytes / step / 1e9, piped * 1e3,
                   bytes / piped / 1e9);
            if (o.profile) {
                char what[64];
                snprintf(what, sizeof what, "decode batch %d", B);
                profile_print(what, prof, 0);
            }
        }
        fflush(stdout);
    }
    if (o.json)
        printf("]");
    in_array = 0;
    if (o.prefill > 0) {
        if (run_prefill(m, &o, secs, prof)) {
            fprintf(stderr, "duet bench forward: prefill: %s\n", duet_last_error());
            goto out_json;
        }
        double t = median(secs, (int)o.repeat);
        if (o.json) {
            printf(", \"prefill\": {\"tokens\": %ld, \"chunk\": %ld, \"seconds_median\": %.4f, "
                   "\"tok_s\": %.2f, \"seconds\": [", o.prefill, o.chunk, t, o.prefill / t);
            for (long s = 0; s < o.repeat; s++)
                printf(s ? ", %.4f" : "%.4f", secs[s]);
            printf("]");
            if (o.profile)
                profile_print(NULL, prof, 1);
            printf("}");
        } else {
            printf("%-8s %6d %10.2f %10.1f   (%ld tokens in chunks of %ld)\n", "prefill", 1,
                   t * 1e3, o.prefill / t, o.prefill, o.chunk);
            if (o.profile)
                profile_print("the prefill (a step = a chunk)", prof, 0);
        }
    }
    ret = 0;
out_json:
    if (o.json)
        printf("%s, \"ok\": %s}\n", in_array ? "]" : "", ret ? "false" : "true");
out:
    duet_model_free(m);
    free(prof);
    free(secs);
    return ret;
}
