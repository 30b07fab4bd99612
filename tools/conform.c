/*
 * conform.c — `duet conform`: the runner and the report. Each case of
 * conform_ops.c runs on two backends with the same inputs; outputs are
 * poisoned first (all bits set: NaN for floats, -1 for ints), read back and
 * compared by NMSE = sum((a-b)^2) / max(sum(b^2), tiny), b the first
 * (reference) backend. A case fails when NMSE exceeds its threshold, when
 * a NaN/Inf sits in one output but not the other, or when an output
 * element was left unwritten. An op a backend does not have yet is a SKIP,
 * not a pass; the exit status counts only the ops both backends have.
 */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "conform.h"
#include "duet.h"
#include "engine_args.h"
#include "error.h"
#ifdef DUET_HAVE_VULKAN
#include "vulkan_backend.h"
#endif

static const char *const status_names[] = {"PASS", "FAIL", "SKIP"};
const char *const conform_op_names[] = {"embed",  "rms_norm", "matmul", "rope",
                                        "kv_write", "attention", "swiglu", "add",
                                        "gather_rows", "sample", "model", NULL};

typedef struct conform_row {
    char op[16], shape[64], type[16]; /* type: "Q4_1+glu" */
    const char *metric; /* "nmse" for the ops */
    double nmse, threshold; /* nmse: the metric's value */
    conform_status status;
    char note[200];
} conform_row;

typedef struct conform_side {
    char spec[32];
    duet_device *d;
    duet_stream *s;
} conform_side;

struct conform_run {
    conform_side side[2]; /* [0] is the reference (b in the NMSE) */
    const char *ops;      /* --ops: comma-separated names, NULL = all */
    const char *filter;   /* --filter: substring of "op shape type" */
    FILE *table;          /* where rows are printed as they finish */
    conform_row *rows;
    int n_rows, cap_rows;
};

/* ---- running one case on one side ------------------------------------------- */

/* Allocate, fill and record the case on x; download every compared buffer
 * into host[i] (malloc'd, caller frees). */
static duet_status run_side(conform_side *x, const conform_case *c, void **host)
{
    duet_buffer *b[CONFORM_MAX_BUFS] = {0};
    duet_status rc = DUET_OK;
    for (int i = 0; i < c->n_bufs; i++) {
        const conform_buf *cb = &c->bufs[i];
        void *poison = NULL;
        rc = duet_dev_buffer_alloc(x->d, cb->bytes, &b[i]);
        if (rc)
            goto out_free;
        if (!cb->host) {
            poison = malloc(cb->bytes);
            if (!poison) {
                rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "conform: out of host memory");
                goto out_free;
            }
            memset(poison, 0xff, cb->bytes);
        }
        rc = duet_dev_buffer_write(x->d, (duet_addr){b[i], 0}, cb->host ? cb->host : poison,
                                   cb->bytes);
        free(poison);
        if (rc)
            goto out_free;
        if (cb->role != CONFORM_IN) {
            host[i] = malloc(cb->bytes);
            if (!host[i]) {
                rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "conform: out of host memory");
                goto out_free;
            }
            memset(host[i], 0xff, cb->bytes);
        }
    }
    rc = duet_dev_stream_begin(x->d, x->s);
    if (rc == DUET_OK)
        rc = c->record(x->d, x->s, b, c->params);
    for (int i = 0; i < c->n_bufs && rc == DUET_OK; i++)
        if (c->bufs[i].role != CONFORM_IN)
            rc = duet_dev_download(x->d, x->s, (duet_addr){b[i], 0}, host[i], c->bufs[i].bytes);
    if (rc == DUET_OK)
        rc = duet_dev_stream_submit(x->d, x->s);
    if (rc == DUET_OK)
        rc = duet_dev_stream_wait(x->d, x->s);
out_free:
    for (int i = 0; i < c->n_bufs; i++)
        duet_dev_buffer_free(x->d, b[i]);
    return rc;
}

/* ---- comparing ---------------------------------------------------------------- */

typedef struct cmp_acc {
    double num, den;
    int bad;         /* a NaN/Inf mismatch or an unwritten element */
    char note[200];
} cmp_acc;

static void acc_value(cmp_acc *acc, const char *what, size_t i, double got, double want,
                      int must_write)
{
    if (acc->bad)
        return;
    int fg = !isfinite(got), fw = !isfinite(want);
    if (must_write && (fg || fw)) {
        acc->bad = 1;
        snprintf(acc->note, sizeof acc->note, "%s[%zu] unwritten or not finite: %g vs %g",
                 what, i, got, want);
        return;
    }
    if (fg || fw) {
        if (fg != fw || isnan(got) != isnan(want)) {
            acc->bad = 1;
            snprintf(acc->note, sizeof acc->note, "%s[%zu] NaN/Inf mismatch: %g vs %g", what,
                     i, got, want);
        }
        return;
    }
    acc->num += (got - want) * (got - want);
    acc->den += want * want;
}

static void compare_buf(cmp_acc *acc, const conform_buf *cb, int idx, const void *got,
                        const void *want)
{
    char what[16];
    snprintf(what, sizeof what, "buf%d", idx);
    int must = cb->role == CONFORM_OUT;
    if (cb->cmp == CONFORM_CMP_F32) {
        for (size_t i = 0; i < cb->bytes / 4; i++)
            acc_value(acc, what, i, ((const float *)got)[i], ((const float *)want)[i], must);
    } else if (cb->cmp == CONFORM_CMP_F16) {
        for (size_t i = 0; i < cb->bytes / 2; i++)
            acc_value(acc, what, i, duet_f16_to_f32(((const uint16_t *)got)[i]),
                      duet_f16_to_f32(((const uint16_t *)want)[i]), must);
    } else if (cb->cmp == CONFORM_CMP_I32) {
        for (size_t i = 0; i < cb->bytes / 4; i++) {
            int32_t g = ((const int32_t *)got)[i], w = ((const int32_t *)want)[i];
            double gd = g == -1 ? NAN : g, wd = w == -1 ? NAN : w; /* -1: the poison */
            acc_value(acc, what, i, gd, wd, must);
        }
    } else {
        const duet_sample_result *g = got, *w = want;
        for (size_t r = 0; r < cb->bytes / sizeof *g; r++) {
            acc_value(acc, "token", r, g[r].token < 0 ? NAN : g[r].token,
                      w[r].token < 0 ? NAN : w[r].token, 1);
            acc_value(acc, "rank", r, g[r].rank, w[r].rank, 1);
            acc_value(acc, "logprob", r, g[r].logprob, w[r].logprob, 0);
            acc_value(acc, "n_top", r, g[r].n_top, w[r].n_top, 1);
            int n_top = w[r].n_top < 0 ? 0 : w[r].n_top > DUET_MAX_LOGPROBS
                                                 ? DUET_MAX_LOGPROBS : w[r].n_top;
            for (int j = 0; j < n_top; j++) {
                acc_value(acc, "top_ids", r, g[r].top_ids[j], w[r].top_ids[j], 1);
                acc_value(acc, "top_logprobs", r, g[r].top_logprobs[j], w[r].top_logprobs[j],
                          0);
            }
        }
    }
}

/* ---- the report ------------------------------------------------------------------ */

int conform_selected(const conform_run *r, const char *op, const char *shape, const char *type)
{
    if (r->ops) {
        size_t n = strlen(op), group = strcspn(op, ".");
        const char *p = r->ops;
        int found = 0;
        while (*p && !found) {
            size_t len = strcspn(p, ",");
            found = (len == n && strncmp(p, op, n) == 0) ||
                    (len == group && strncmp(p, op, group) == 0);
            p += len + (p[len] == ',');
        }
        if (!found)
            return 0;
    }
    if (r->filter) {
        char full[160];
        snprintf(full, sizeof full, "%s %s %s", op, shape, type);
        return strstr(full, r->filter) != NULL;
    }
    return 1;
}

const char *conform_backend(const conform_run *r, int k) { return r->side[k].spec; }

static int op_selected(const conform_run *r, const conform_case *c)
{
    return conform_selected(r, c->op, c->shape, c->type);
}

static void print_row(FILE *f, const conform_row *w)
{
    char nmse[24];
    if (w->status == CONFORM_SKIP)
        snprintf(nmse, sizeof nmse, "-");
    else
        snprintf(nmse, sizeof nmse, "%.3g", w->nmse);
    fprintf(f, "%-13s %-50s %-5s %10s %8.0e  %s%s%s\n", w->op, w->shape, w->type, nmse,
            w->threshold, status_names[w->status], w->note[0] ? "  " : "", w->note);
    fflush(f);
}

static conform_row *new_row(conform_run *r)
{
    if (r->n_rows == r->cap_rows) {
        int cap = r->cap_rows ? 2 * r->cap_rows : 64;
        conform_row *rows = realloc(r->rows, sizeof *rows * (size_t)cap);
        if (!rows) {
            duet_error(DUET_ERR_OUT_OF_MEMORY, "conform: out of host memory");
            return NULL;
        }
        r->rows = rows;
        r->cap_rows = cap;
    }
    conform_row *w = &r->rows[r->n_rows++];
    memset(w, 0, sizeof *w);
    w->metric = "nmse";
    return w;
}

duet_status conform_row_add(conform_run *r, const conform_result *res)
{
    conform_row *w = new_row(r);
    if (!w)
        return DUET_ERR_OUT_OF_MEMORY;
    snprintf(w->op, sizeof w->op, "%s", res->op);
    snprintf(w->shape, sizeof w->shape, "%s", res->shape);
    snprintf(w->type, sizeof w->type, "%s", res->type);
    snprintf(w->note, sizeof w->note, "%s", res->note);
    w->metric = res->metric;
    w->nmse = res->value;
    w->threshold = res->threshold;
    w->status = res->status;
    print_row(r->table, w);
    return DUET_OK;
}

duet_status conform_case_run(conform_run *r, const conform_case *c)
{
    if (!op_selected(r, c))
        return DUET_OK;
    conform_row *w = new_row(r);
    if (!w)
        return DUET_ERR_OUT_OF_MEMORY;
    snprintf(w->op, sizeof w->op, "%s", c->op);
    snprintf(w->shape, sizeof w->shape, "%s", c->shape);
    snprintf(w->type, sizeof w->type, "%s", c->type);
    w->threshold = c->threshold;

    void *host[2][CONFORM_MAX_BUFS] = {{0}};
    duet_status rc = DUET_OK;
    for (int k = 0; k < 2 && w->status == CONFORM_PASS; k++) {
        duet_status st = run_side(&r->side[k], c, host[k]);
        if (st == DUET_ERR_UNSUPPORTED) {
            w->status = CONFORM_SKIP;
            snprintf(w->note, sizeof w->note, "unsupported by %s", r->side[k].spec);
        } else if (st == DUET_ERR_OUT_OF_MEMORY) {
            rc = duet_error_wrap(st, "%s on %s", c->op, r->side[k].spec);
        } else if (st != DUET_OK) {
            w->status = CONFORM_FAIL;
            snprintf(w->note, sizeof w->note, "%s: %s", r->side[k].spec, duet_last_error());
        }
        duet_error_clear();
    }
    if (rc == DUET_OK && w->status == CONFORM_PASS) {
        cmp_acc acc = {0};
        for (int i = 0; i < c->n_bufs; i++)
            if (c->bufs[i].role != CONFORM_IN)
                compare_buf(&acc, &c->bufs[i], i, host[1][i], host[0][i]);
        w->nmse = acc.num / (acc.den > 1e-30 ? acc.den : 1e-30);
        if (acc.bad) {
            w->status = CONFORM_FAIL;
            snprintf(w->note, sizeof w->note, "%s", acc.note);
        } else if (!(w->nmse <= c->threshold)) {
            w->status = CONFORM_FAIL;
        }
    }
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < CONFORM_MAX_BUFS; i++)
            free(host[k][i]);
    if (rc == DUET_OK)
        print_row(r->table, w);
    return rc;
}

static int write_json(const conform_run *r, unsigned seed, const char *path, int counts[3])
{
    json_t *root = json_object(), *rows = json_array();
    json_t *backends = json_pack("[ss]", r->side[0].spec, r->side[1].spec);
    json_object_set_new(root, "backends", backends);
    json_object_set_new(root, "reference", json_string(r->side[0].spec));
    json_object_set_new(root, "seed", json_integer(seed));
    for (int i = 0; i < r->n_rows; i++) {
        const conform_row *w = &r->rows[i];
        json_t *o = json_pack("{ssssssss}", "op", w->op, "shape", w->shape, "type", w->type,
                              "metric", w->metric);
        /* JSON has no NaN/Inf: a skipped or non-finite value is null. The
         * field keeps its name "nmse" for every metric (see "metric"). */
        json_object_set_new(o, "nmse", w->status != CONFORM_SKIP && isfinite(w->nmse)
                                           ? json_real(w->nmse) : json_null());
        json_object_set_new(o, "threshold", json_real(w->threshold));
        json_object_set_new(o, "status", json_string(status_names[w->status]));
        json_object_set_new(o, "note", json_string(w->note));
        json_array_append_new(rows, o);
    }
    json_object_set_new(root, "results", rows);
    json_object_set_new(root, "summary",
                        json_pack("{sisisi}", "pass", counts[CONFORM_PASS], "fail",
                                  counts[CONFORM_FAIL], "skip", counts[CONFORM_SKIP]));
    int bad = strcmp(path, "-") == 0 ? json_dumpf(root, stdout, JSON_INDENT(1))
                                     : json_dump_file(root, path, JSON_INDENT(1));
    if (!bad && strcmp(path, "-") == 0)
        putchar('\n');
    json_decref(root);
    if (bad)
        fprintf(stderr, "duet conform: --json '%s': cannot write the file\n", path);
    return bad ? -1 : 0;
}

/* "cpu-ref" is the CPU backend with its reference kernels only; anything
 * else goes to duet_device_open ("cpu", "vulkan", "vulkan:N", ...). */
static duet_status open_side(conform_side *x, const char *spec, size_t len)
{
    duet_device_options opts = {0};
    if (len == 0 || len >= sizeof x->spec)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "backend '%.*s' must be 1 to %zu characters (cpu, cpu-ref, vulkan[:N])",
                          (int)len, spec, sizeof x->spec - 1);
    memcpy(x->spec, spec, len);
    x->spec[len] = 0;
    const char *open_spec = x->spec;
    if (strcmp(x->spec, "cpu-ref") == 0) {
        opts.force_reference = 1;
        open_spec = "cpu";
    } else if (strcmp(x->spec, "auto") == 0) {
        return duet_error(DUET_ERR_INVALID_ARG,
                          "backend 'auto' is ambiguous here; name one (cpu, cpu-ref, vulkan[:N])");
    }
    duet_status rc = duet_device_open(open_spec, &opts, &x->d);
    if (rc == DUET_OK)
        rc = duet_dev_stream_create(x->d, &x->s);
    return rc;
}

static void close_side(conform_side *x)
{
    if (x->s)
        duet_dev_stream_destroy(x->d, x->s);
    duet_device_close(x->d);
    x->s = NULL;
    x->d = NULL;
}

static const char *help =
    "usage: duet conform [options]\n"
    "Run every op of the device interface on two backends over a fixed set of shapes and\n"
    "weight types and compare the second with the first by NMSE. Outputs are poisoned\n"
    "with NaN first; a NaN/Inf in one output only, or an element left unwritten, fails.\n"
    "Thresholds: 5e-4 matmul and attention, 0 (exact) sample, 1e-7 the rest.\n\n"
    "  --backends REF,TEST  devices to compare: cpu, cpu-ref (CPU reference kernels),\n"
    "                       vulkan, vulkan:N (default: "
#ifdef DUET_HAVE_VULKAN
    "cpu,vulkan"
#else
    "cpu-ref,cpu"
#endif
    ")\n"
    "  --ops LIST           only these ops (comma-separated): embed, rms_norm, matmul,\n"
    "                       rope, kv_write, attention, swiglu, add, gather_rows, sample,\n"
    "                       model (the end-to-end rows; without --model: the default model)\n"
    "  --filter TEXT        only cases whose \"op shape type\" contains TEXT\n"
    "  --json PATH          also write the results as JSON ('-' = stdout; the table\n"
    "                       then goes to stderr)\n"
    "  --seed N             input seed (default 1)\n"
    "  -h, --help           this help\n"
    "End to end (after the ops, when a model is given): the model is loaded on both\n"
    "backends and run over fixed prompts: model.logits (teacher-forced logits, NMSE <=\n"
    "2e-3), model.top1 (positions whose top-1 token differs, <= 0.5%), model.greedy\n"
    "(greedy tokens, identical) and model.sampled (temperature 0.8, top-p 0.9, fixed\n"
    "seeds, identical; SKIP when a backend has no sample op).\n"
    "  -m, --model FILE     GGUF model (or a dummy shape with --model-config)\n"
    "  --prompts N          fixture prompts to use (default: all 6)\n"
    "  --gen-tokens N       tokens generated per prompt (default 64)\n"
    "  --threads N          CPU backend threads (default: all cores)\n"
    "  --model2 FILE        the second backend loads this model instead (same tokenizer and\n"
    "                       source options): how far two quantizations or shapes differ\n"
    "Exit status: 0 when every case both backends support passes, 1 on a failure, 2 on\n"
    "bad arguments or a device or model that cannot be opened.\n";

static int check_ops(const char *list)
{
    const char *p = list;
    while (*p || p == list) {
        size_t len = strcspn(p, ",");
        int ok = 0;
        for (int i = 0; conform_op_names[i] && !ok; i++)
            ok = strlen(conform_op_names[i]) == len && strncmp(p, conform_op_names[i], len) == 0;
        if (!ok) {
            fprintf(stderr, "duet conform: --ops '%s': unknown op '%.*s' (ops: embed, rms_norm, "
                            "matmul, rope, kv_write, attention, swiglu, add, gather_rows, "
                            "sample, model)\n", list, (int)len, p);
            return -1;
        }
        p += len;
        if (*p == ',')
            p++;
        if (!*p)
            break;
    }
    return 0;
}

/* Whether the comma-separated list names `name`. */
static int list_has(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, name, n) == 0)
            return 1;
        p += len + (p[len] == ',');
    }
    return 0;
}

int cmd_conform(int argc, char **argv)
{
    enum { OPT_PROMPTS = 256, OPT_GEN, OPT_THREADS, OPT_MODEL2 };
    static const struct option own[] = {
        {"backends", required_argument, NULL, 'b'}, {"ops", required_argument, NULL, 'o'},
        {"filter", required_argument, NULL, 'f'},   {"json", required_argument, NULL, 'j'},
        {"seed", required_argument, NULL, 's'},     {"help", no_argument, NULL, 'h'},
        {"model", required_argument, NULL, 'm'},
        {"prompts", required_argument, NULL, OPT_PROMPTS},
        {"gen-tokens", required_argument, NULL, OPT_GEN},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"model2", required_argument, NULL, OPT_MODEL2},   {NULL, 0, NULL, 0}};
    struct option longopts[32];
    int n_opts = 0;
    for (const struct option *p = own; p->name; p++)
        longopts[n_opts++] = *p;
    for (const struct option *p = model_arg_options; p->name; p++)
        longopts[n_opts++] = *p;
    memset(&longopts[n_opts], 0, sizeof longopts[n_opts]);
    char model_path[4096] = "";
    conform_model_opts mopts = {.n_gen = 64};
    long num;
#ifdef DUET_HAVE_VULKAN
    const char *backends = "cpu,vulkan";
#else
    const char *backends = "cpu-ref,cpu";
#endif
    const char *json_path = NULL;
    long seed = 1;
    conform_run r = {.table = stdout};
    int opt, status = 2;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "hm:", longopts, NULL)) != -1) {
        int e = model_arg_parse("conform", opt, optarg, &mopts.source, model_path,
                                sizeof model_path);
        if (e < 0)
            return 2;
        if (e > 0)
            continue;
        switch (opt) {
        case 'm': snprintf(model_path, sizeof model_path, "%s", optarg); break;
        case OPT_MODEL2: mopts.path2 = optarg; break;
        case OPT_PROMPTS:
            if (cli_parse_int("conform", "--prompts", optarg, 1, 1000, &num))
                return 2;
            mopts.n_prompts = (int)num;
            break;
        case OPT_GEN:
            if (cli_parse_int("conform", "--gen-tokens", optarg, 1, 4096, &num))
                return 2;
            mopts.n_gen = (int)num;
            break;
        case OPT_THREADS:
            if (cli_parse_int("conform", "--threads", optarg, 1, 1024, &num))
                return 2;
            mopts.n_threads = (int)num;
            break;
        case 'b': backends = optarg; break;
        case 'o': r.ops = optarg; break;
        case 'f': r.filter = optarg; break;
        case 'j': json_path = optarg; break;
        case 's':
            if (cli_parse_int("conform", "--seed", optarg, 0, 4294967295L, &seed))
                return 2;
            break;
        case 'h': fputs(help, stdout); return 0;
        default: cli_bad_option("conform", argv[optind - 1]); return 2;
        }
    }
    if (optind < argc) {
        cli_extra_arg("conform", argv[optind]);
        return 2;
    }
    if (r.ops && check_ops(r.ops))
        return 2;
    /* The model rows run when a model is given (unless --ops leaves them
     * out) or when --ops asks for them (then the default model). */
    int run_model = model_path[0] ? !r.ops || list_has(r.ops, "model")
                                  : r.ops && list_has(r.ops, "model");
    if (run_model && !model_path[0])
        cli_default_model(model_path, sizeof model_path);
    mopts.path = model_path;
    const char *comma = strchr(backends, ',');
    if (!comma || strchr(comma + 1, ',')) {
        fprintf(stderr, "duet conform: --backends '%s': give exactly two backends as REF,TEST "
                        "(cpu, cpu-ref, vulkan[:N])\n", backends);
        return 2;
    }
    if (json_path && strcmp(json_path, "-") == 0)
        r.table = stderr;
    for (int k = 0; k < 2; k++) {
        const char *spec = k ? comma + 1 : backends;
        size_t len = k ? strlen(comma + 1) : (size_t)(comma - backends);
        if (open_side(&r.side[k], spec, len) != DUET_OK) {
            fprintf(stderr, "duet conform: --backends '%s': %s\n", backends, duet_last_error());
            goto out;
        }
    }
    fprintf(r.table, "duet conform: %s (reference) vs %s, seed %ld\n", r.side[0].spec,
            r.side[1].spec, seed);
    fprintf(r.table, "%-13s %-50s %-5s %10s %8s  %s\n", "op", "shape", "type", "NMSE",
            "limit", "result");
    if (run_model)
        fprintf(r.table, "(model rows: model.top1 and model.greedy/sampled show the share of "
                         "positions or tokens that differ in the NMSE column)\n");
    if (conform_ops_run_all(&r, (unsigned)seed) != DUET_OK) {
        fprintf(stderr, "duet conform: %s\n", duet_last_error());
        goto out;
    }
    int n_model_validation = 0;
    if (run_model && conform_model_run_all(&r, &mopts, &n_model_validation) != DUET_OK) {
        fprintf(stderr, "duet conform: %s\n", duet_last_error());
        goto out;
    }
    int counts[3] = {0};
    for (int i = 0; i < r.n_rows; i++)
        counts[r.rows[i].status]++;
    status = counts[CONFORM_FAIL] ? 1 : 0;
#ifdef DUET_HAVE_VULKAN
    for (int k = 0; k < 2; k++) {
        int n_val = duet_vulkan_validation_errors(r.side[k].d);
        if (n_val > 0) {
            fprintf(r.table, "FAIL: %d Vulkan validation message(s) on %s\n", n_val,
                    r.side[k].spec);
            status = 1;
        }
    }
    if (n_model_validation > 0) {
        fprintf(r.table, "FAIL: %d Vulkan validation message(s) while running the model\n",
                n_model_validation);
        status = 1;
    }
#else
    (void)n_model_validation;
#endif
    fprintf(r.table, "%d cases: %d passed, %d failed, %d skipped\n", r.n_rows,
            counts[CONFORM_PASS], counts[CONFORM_FAIL], counts[CONFORM_SKIP]);
    if (counts[CONFORM_SKIP]) {
        /* Name each backend that lacked an op, with the ops it lacked. */
        for (int k = 0; k < 2; k++) {
            char note[64], names[160] = "";
            int n = 0;
            snprintf(note, sizeof note, "unsupported by %s", r.side[k].spec);
            for (int i = 0; i < r.n_rows; i++) {
                if (r.rows[i].status != CONFORM_SKIP || strcmp(r.rows[i].note, note))
                    continue;
                n++;
                if (!strstr(names, r.rows[i].op) && strlen(names) + strlen(r.rows[i].op) + 3 <
                                                        sizeof names)
                    snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s",
                             names[0] ? ", " : "", r.rows[i].op);
            }
            if (n)
                fprintf(r.table, "%d ops skipped: unsupported by %s (%s); not counted as "
                                 "passed\n", n, r.side[k].spec, names);
        }
    }
    if (json_path && write_json(&r, (unsigned)seed, json_path, counts))
        status = 2;
out:
    close_side(&r.side[1]);
    close_side(&r.side[0]);
    free(r.rows);
    return status;
}
