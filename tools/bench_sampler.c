/*
 * bench_sampler.c — `duet bench sampler`: the sample op's CPU kernels
 * (reference and fast) on a synthetic batch of logit rows, the median time
 * per call of each. The rows look like a language model's: normally
 * distributed logits with a few strong candidates, so top-p keeps a
 * handful of tokens, as it does in real decoding.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "cpu_sample.h"
#include "sampler.h"
#include "threadpool.h"

int duet_cmd_bench_sampler(int argc, char **argv);

static const char *help =
    "usage: duet bench sampler [options]\n"
    "\n"
    "Time the sample op's CPU kernels (reference and fast) on synthetic rows;\n"
    "prints the median microseconds per call over the runs.\n"
    "\n"
    "options:\n"
    "      --rows N          rows per call (default 32)\n"
    "      --vocab N         vocabulary size (default 49152)\n"
    "      --temperature T   (default 0.8; 0 = greedy)\n"
    "      --top-p P         (default 1 = off)\n"
    "      --top-k K         (default 0 = off)\n"
    "      --min-p P         (default 0 = off)\n"
    "      --penalties       64 edits per row: repetition 1.1, presence 0.5,\n"
    "                        frequency 0.3, a logit bias and a mask\n"
    "      --logprobs N      report top-N raw logprobs (default -1 = none)\n"
    "      --runs N          timed calls of each kernel (default 20)\n"
    "      --threads N       threads for the fast kernel (default 2)\n"
    "      --json            one JSON object on stdout instead of text\n"
    "  -h, --help            this help\n";

typedef struct bs_opts {
    long rows, vocab, top_k, logprobs, runs, threads;
    double temperature, top_p, min_p;
    int penalties, json;
} bs_opts;

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

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

static int parse(int argc, char **argv, bs_opts *o)
{
    enum { O_ROWS = 256, O_VOCAB, O_TEMP, O_TOP_P, O_TOP_K, O_MIN_P, O_PEN, O_LP, O_RUNS,
           O_THREADS, O_JSON };
    static const struct option longopts[] = {
        {"rows", required_argument, 0, O_ROWS},       {"vocab", required_argument, 0, O_VOCAB},
        {"temperature", required_argument, 0, O_TEMP}, {"top-p", required_argument, 0, O_TOP_P},
        {"top-k", required_argument, 0, O_TOP_K},     {"min-p", required_argument, 0, O_MIN_P},
        {"penalties", no_argument, 0, O_PEN},         {"logprobs", required_argument, 0, O_LP},
        {"runs", required_argument, 0, O_RUNS},       {"threads", required_argument, 0, O_THREADS},
        {"json", no_argument, 0, O_JSON},             {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *cmd = "bench sampler";
    *o = (bs_opts){.rows = 32, .vocab = 49152, .logprobs = -1, .runs = 20, .threads = 2,
                   .temperature = 0.8, .top_p = 1.0};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case O_ROWS: bad = cli_parse_int(cmd, "--rows", optarg, 1, 4096, &o->rows); break;
        case O_VOCAB: bad = cli_parse_int(cmd, "--vocab", optarg, 1, 1 << 24, &o->vocab); break;
        case O_TEMP: bad = cli_parse_float(cmd, "--temperature", optarg, 0, 100, &o->temperature); break;
        case O_TOP_P: bad = cli_parse_float(cmd, "--top-p", optarg, 0, 1, &o->top_p); break;
        case O_TOP_K: bad = cli_parse_int(cmd, "--top-k", optarg, -1, 1 << 24, &o->top_k); break;
        case O_MIN_P: bad = cli_parse_float(cmd, "--min-p", optarg, 0, 1, &o->min_p); break;
        case O_PEN: o->penalties = 1; break;
        case O_LP: bad = cli_parse_int(cmd, "--logprobs", optarg, -1, 20, &o->logprobs); break;
        case O_RUNS: bad = cli_parse_int(cmd, "--runs", optarg, 1, 100000, &o->runs); break;
        case O_THREADS: bad = cli_parse_int(cmd, "--threads", optarg, 1, 1024, &o->threads); break;
        case O_JSON: o->json = 1; break;
        case 'h': fputs(help, stdout); return 1;
        default: fprintf(stderr, "duet %s: see --help\n", cmd); return -1;
        }
        if (bad)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "duet %s: unexpected argument '%s'; see --help\n", cmd, argv[optind]);
        return -1;
    }
    return 0;
}

enum { EDITS_PER_ROW = 64 };

/* Normal logits (Box-Muller on a fixed xorshift stream), std 2.5, plus four
 * strong candidates per row 20 to 14 above the mean, as an LM's next-token
 * distribution has: most of the mass on a few tokens, a long tail. */
static void fill_rows(const bs_opts *o, float *logits, duet_sample_row *rows,
                      duet_sample_edit *edits)
{
    uint64_t s = 0x9e3779b97f4a7c15ull;
    size_t n = (size_t)o->rows * (size_t)o->vocab;
    for (size_t i = 0; i < n; i += 2) {
        double u[2];
        for (int k = 0; k < 2; k++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            u[k] = ((s >> 11) + 0.5) * (1.0 / 9007199254740992.0);
        }
        double r = sqrt(-2.0 * log(u[0])) * 2.5;
        logits[i] = (float)(r * cos(2 * M_PI * u[1]));
        if (i + 1 < n)
            logits[i + 1] = (float)(r * sin(2 * M_PI * u[1]));
    }
    duet_request_params p = {.temperature = (float)o->temperature, .top_p = (float)o->top_p,
                             .top_k = (int)o->top_k, .min_p = (float)o->min_p};
    if (o->penalties) {
        p.repetition_penalty = 1.1f;
        p.presence_penalty = 0.5f;
        p.frequency_penalty = 0.3f;
    }
    for (long r = 0; r < o->rows; r++) {
        float *x = logits + (size_t)r * (size_t)o->vocab;
        for (int k = 0; k < 4; k++)
            x[(r * 7919 + k * 104729) % o->vocab] += 20.0f - 2.0f * (float)k;
        duet_sample_row_init(&rows[r], &p, (int)o->vocab, 1234 + (uint64_t)r, 100, 0, -1,
                             (int)o->logprobs);
        if (!o->penalties)
            continue;
        rows[r].edit_begin = (int32_t)(r * EDITS_PER_ROW);
        rows[r].edit_end = (int32_t)((r + 1) * EDITS_PER_ROW);
        for (int j = 0; j < EDITS_PER_ROW; j++) {
            duet_sample_edit *e = &edits[r * EDITS_PER_ROW + j];
            e->token = (int32_t)(((uint64_t)(r + 1) * 2654435761u + (uint64_t)j * 40503u) %
                                 (uint64_t)o->vocab);
            e->flags = (j % 2 ? DUET_SAMPLE_EDIT_PROMPT : 0) | (j == 63 ? DUET_SAMPLE_EDIT_MASK : 0);
            e->count = j % 3;
            e->bias = j == 5 ? 2.0f : 0.0f;
        }
    }
}

int duet_cmd_bench_sampler(int argc, char **argv)
{
    bs_opts o;
    int rc = parse(argc, argv, &o);
    if (rc)
        return rc > 0 ? 0 : 2;
    size_t n = (size_t)o.rows * (size_t)o.vocab;
    int n_edits = o.penalties ? (int)o.rows * EDITS_PER_ROW : 0;
    float *logits = malloc(n * sizeof *logits), *work = malloc(n * sizeof *work);
    duet_sample_row *rows = calloc((size_t)o.rows, sizeof *rows);
    duet_sample_edit *edits = calloc((size_t)(n_edits ? n_edits : 1), sizeof *edits);
    duet_sample_result *res = calloc((size_t)o.rows, sizeof *res);
    double *t_ref = calloc((size_t)o.runs, sizeof(double));
    double *t_fast = calloc((size_t)o.runs, sizeof(double));
    duet_threadpool *pool = NULL;
    rc = 1;
    if (!logits || !work || !rows || !edits || !res || !t_ref || !t_fast) {
        fprintf(stderr, "duet bench sampler: out of memory for %zu logits\n", n);
        goto out;
    }
    if (duet_threadpool_create((int)o.threads, &pool) != DUET_OK) {
        fprintf(stderr, "duet bench sampler: %s\n", duet_last_error());
        goto out;
    }
    fill_rows(&o, logits, rows, edits);
    cpu_sample a = {logits, rows, n_edits ? edits : NULL, work, res, (int)o.rows,
                    (int)o.vocab, n_edits};
    duet_cpu_sample_fast(pool, &a); /* warm up both, and check they agree */
    int32_t first = res[0].token;
    duet_cpu_sample_ref(&a);
    if (res[0].token != first) {
        fprintf(stderr, "duet bench sampler: ref and fast disagree (%d vs %d)\n",
                (int)res[0].token, (int)first);
        goto out;
    }
    for (long i = 0; i < o.runs; i++) { /* interleaved: both see the same noise */
        double t0 = now_us();
        duet_cpu_sample_ref(&a);
        double t1 = now_us();
        duet_cpu_sample_fast(pool, &a);
        double t2 = now_us();
        t_ref[i] = t1 - t0;
        t_fast[i] = t2 - t1;
    }
    double ref_us = median(t_ref, (int)o.runs), fast_us = median(t_fast, (int)o.runs);
    if (o.json) {
        printf("{\"rows\": %ld, \"vocab\": %ld, \"temperature\": %g, \"top_p\": %g, \"top_k\": %ld,"
               " \"min_p\": %g, \"penalties\": %s, \"logprobs\": %ld, \"threads\": %ld,"
               " \"runs\": %ld, \"ref_us\": %.1f, \"fast_us\": %.1f}\n",
               o.rows, o.vocab, o.temperature, o.top_p, o.top_k, o.min_p,
               o.penalties ? "true" : "false", o.logprobs, o.threads, o.runs, ref_us, fast_us);
    } else {
        printf("sampler: %ld rows x %ld vocab, temperature %g, top-p %g, top-k %ld, min-p %g,"
               " penalties %s, logprobs %ld\n",
               o.rows, o.vocab, o.temperature, o.top_p, o.top_k, o.min_p,
               o.penalties ? "on" : "off", o.logprobs);
        printf("  ref   %10.1f us per call (median of %ld, 1 thread)\n", ref_us, o.runs);
        printf("  fast  %10.1f us per call (median of %ld, %ld threads)  %.1fx\n", fast_us,
               o.runs, o.threads, ref_us / fast_us);
    }
    rc = 0;
out:
    duet_threadpool_free(pool);
    free(t_fast);
    free(t_ref);
    free(res);
    free(edits);
    free(rows);
    free(work);
    free(logits);
    return rc;
}
