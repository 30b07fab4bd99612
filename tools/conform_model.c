/*
 * conform_model.c — the end-to-end rows of `duet conform`: one model (a GGUF
 * file or seeded dummy weights) loaded on both backends through the
 * runtime and run over a few fixed prompts, compared where a user would
 * see a difference:
 *
 *   model.logits   teacher-forced logits of every prompt position
 *                  (duet_eval_logits): NMSE <= 2e-3, no NaN/Inf
 *   model.top1     share of those positions whose top-1 token differs: <= 0.5%
 *   model.greedy   n_gen greedy tokens per prompt, all prompts batched in the
 *                  engine (device sampler): identical
 *   model.sampled  the same at temperature 0.8, top-p 0.9, a fixed seed per
 *                  prompt: identical (docs/SAMPLING.md makes it bit-exact)
 *
 * A backend without the sample op (Vulkan until it lands) cannot run the
 * engine, so greedy then decodes each prompt through the runner with the
 * logits read back and the argmax taken on the host — on both backends, so
 * the two still compare like with like — and model.sampled is a SKIP.
 *
 * This tool reaches into duet_internal.h for two things the public API does
 * not offer: the model's device (for the sample op's presence and the
 * Vulkan validation count) and that host-argmax decode loop.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conform.h"
#include "duet_internal.h"
#include "error.h"
#ifdef DUET_HAVE_VULKAN
#include "vulkan_backend.h"
#endif

/* Varied in length and kind: a short question, chat markup, code, prose,
 * non-ASCII text. Written for this file; changing them changes no
 * threshold. */
static const char *const fixture_prompts[] = {
    "The capital of France is",
    "<|im_start|>user\nName three prime numbers.<|im_end|>\n<|im_start|>assistant\n",
    "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n",
    "Water boils at a lower temperature on a high mountain because the air pressure is lower "
    "there. Explain why in one short paragraph, then give an example from cooking.",
    "Les élèves ont lu le texte deux fois. 学生们把课文读了两遍。 Die Schüler lasen den Text "
    "zweimal.",
    "Once upon a time, in a small village between two rivers, there lived a clockmaker who "
    "never finished a clock. Every morning he opened his shop, wound the half-built "
    "mechanisms on his bench, listened to them tick for a while, and then put them aside to "
    "start another. The villagers thought him lazy, until one winter night",
};
enum { N_FIXTURES = sizeof fixture_prompts / sizeof fixture_prompts[0] };

enum { BLOCK = 16, CHUNK = 256 };

static const double LOGITS_NMSE = 2e-3, TOP1_MISMATCH = 0.005;

typedef struct model_side {
    duet_model *m;
    duet_session *session;
    int has_sample; /* the device has the sample op */
} model_side;

/* ---- loading -------------------------------------------------------------- */

/* "cpu-ref" is the CPU backend with its reference kernels: the model API
 * opens devices by spec only, so the choice travels through the variable
 * the CPU backend reads at device creation, restored right after. */
static duet_status side_load(model_side *x, const char *spec, const char *path,
                             const conform_model_opts *o)
{
    duet_model_options mo = o->source;
    mo.device = strcmp(spec, "cpu-ref") == 0 ? "cpu" : spec;
    mo.n_threads = o->n_threads;
    char saved[16] = "";
    const char *old = getenv("DUET_CPU_REFERENCE");
    int had = old != NULL;
    if (had)
        snprintf(saved, sizeof saved, "%s", old);
    if (strcmp(spec, "cpu-ref") == 0)
        setenv("DUET_CPU_REFERENCE", "1", 1);
    duet_status rc = duet_model_load(path, &mo, &x->m);
    if (had)
        setenv("DUET_CPU_REFERENCE", saved, 1);
    else
        unsetenv("DUET_CPU_REFERENCE");
    if (rc)
        return duet_error_wrap(rc, "model on %s", spec);
    x->has_sample = x->m->dev->ops->sample != NULL;
    return DUET_OK;
}

/* ---- the prompts ---------------------------------------------------------- */

typedef struct prompt_set {
    int n;
    int32_t *ids[N_FIXTURES];
    size_t len[N_FIXTURES];
    size_t total, longest;
} prompt_set;

static duet_status prompts_tokenize(const duet_model *m, int n, prompt_set *ps)
{
    memset(ps, 0, sizeof *ps);
    ps->n = n;
    for (int p = 0; p < n; p++) {
        const char *text = fixture_prompts[p];
        size_t need = 0;
        duet_status rc = duet_tokenize(m, text, strlen(text), 1, 1, NULL, 0, &need);
        if (rc != DUET_OK && rc != DUET_ERR_INVALID_ARG)
            return rc;
        duet_error_clear();
        ps->ids[p] = malloc(sizeof(int32_t) * (need ? need : 1));
        if (!ps->ids[p])
            return duet_error(DUET_ERR_OUT_OF_MEMORY, "conform: out of host memory");
        if ((rc = duet_tokenize(m, text, strlen(text), 1, 1, ps->ids[p], need, &ps->len[p])))
            return rc;
        ps->total += ps->len[p];
        if (ps->len[p] > ps->longest)
            ps->longest = ps->len[p];
    }
    return DUET_OK;
}

static void prompts_free(prompt_set *ps)
{
    for (int p = 0; p < ps->n; p++)
        free(ps->ids[p]);
}

/* ---- teacher-forced logits -------------------------------------------------- */

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* model.logits and model.top1 over every prompt position. */
static duet_status check_logits(model_side side[2], const prompt_set *ps, conform_result *nm,
                                conform_result *top1)
{
    int V = duet_model_vocab_size(side[0].m);
    float *l[2] = {malloc(sizeof(float) * ps->longest * (size_t)V),
                   malloc(sizeof(float) * ps->longest * (size_t)V)};
    double num = 0, den = 0;
    long mismatch = 0, positions = 0;
    duet_status rc = DUET_OK;
    if (!l[0] || !l[1]) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "conform: out of host memory for logits");
        goto out;
    }
    for (int p = 0; p < ps->n && nm->status == CONFORM_PASS; p++) {
        for (int k = 0; k < 2 && nm->status == CONFORM_PASS; k++) {
            duet_status st = duet_eval_logits(side[k].session, ps->ids[p], ps->len[p], l[k]);
            if (st == DUET_ERR_OUT_OF_MEMORY) {
                rc = st;
                goto out;
            }
            if (st) {
                nm->status = st == DUET_ERR_UNSUPPORTED ? CONFORM_SKIP : CONFORM_FAIL;
                snprintf(nm->note, sizeof nm->note, "%s", duet_last_error());
                duet_error_clear();
            }
        }
        for (size_t t = 0; t < ps->len[p] && nm->status == CONFORM_PASS; t++) {
            const float *a = l[1] + t * (size_t)V, *b = l[0] + t * (size_t)V;
            for (int v = 0; v < V; v++) {
                if (!isfinite(a[v]) || !isfinite(b[v])) {
                    nm->status = CONFORM_FAIL;
                    snprintf(nm->note, sizeof nm->note,
                             "prompt %d position %zu token %d not finite: %g vs %g", p, t, v,
                             a[v], b[v]);
                    break;
                }
                num += ((double)a[v] - b[v]) * ((double)a[v] - b[v]);
                den += (double)b[v] * b[v];
            }
            mismatch += argmax(a, V) != argmax(b, V);
            positions++;
        }
    }
    if (nm->status != CONFORM_PASS) {
        /* One verdict for both rows: top-1 means nothing without logits. */
        top1->status = nm->status == CONFORM_SKIP ? CONFORM_SKIP : CONFORM_FAIL;
        snprintf(top1->note, sizeof top1->note, "see model.logits");
        goto out;
    }
    nm->value = num / (den > 1e-30 ? den : 1e-30);
    if (!(nm->value <= nm->threshold))
        nm->status = CONFORM_FAIL;
    top1->value = positions ? (double)mismatch / positions : 0;
    if (!(top1->value <= top1->threshold))
        top1->status = CONFORM_FAIL;
    snprintf(top1->note, sizeof top1->note, "%ld of %ld positions differ", mismatch, positions);
out:
    free(l[0]);
    free(l[1]);
    return rc;
}

/* ---- generation ---------------------------------------------------------------- */

typedef struct gen_slot {
    int32_t *tokens; /* [n_gen] */
    int n, cap;
} gen_slot;

static void on_output(void *user, const duet_request_output *out)
{
    gen_slot *g = user;
    for (int i = 0; i < out->n_new_tokens && g->n < g->cap; i++)
        g->tokens[g->n++] = out->new_tokens[i];
}

/* Every prompt as one request of the engine, all batched; tokens[p*n_gen..]. */
static duet_status gen_engine(duet_model *m, const prompt_set *ps, int n_gen, float temperature,
                              float top_p, int32_t *tokens, int *n_out)
{
    gen_slot slot[N_FIXTURES];
    int len = (int)ps->longest + n_gen + BLOCK;
    uint64_t per_seq = (uint64_t)((len + BLOCK - 1) / BLOCK + 1) * BLOCK;
    duet_engine_options eo = {
        .max_num_seqs = ps->n,
        .max_model_len = len,
        .kv_cache_memory = per_seq * (uint64_t)ps->n * duet_kv_bytes_per_token(&m->config,
                                                                               DUET_F32),
    };
    duet_engine *e = NULL;
    duet_status rc = duet_engine_create(m, &eo, &e);
    for (int p = 0; p < ps->n && rc == DUET_OK; p++) {
        slot[p] = (gen_slot){.tokens = tokens + (size_t)p * n_gen, .cap = n_gen};
        duet_request_params rp = {.max_tokens = n_gen, .temperature = temperature,
                                  .top_p = top_p, .ignore_eos = 1, .seed = 1000 + (uint64_t)p,
                                  .has_seed = 1};
        rc = duet_engine_add_request(e, ps->ids[p], ps->len[p], &rp, on_output, &slot[p]);
    }
    if (rc == DUET_OK)
        rc = duet_engine_run(e);
    for (int p = 0; p < ps->n && rc == DUET_OK; p++)
        n_out[p] = slot[p].n;
    duet_engine_free(e);
    return rc;
}

/* One prompt through the runner, logits read back, argmax on the host:
 * greedy decoding for a device without the sample op. */
static duet_status gen_host_argmax(duet_model *m, const int32_t *prompt, int n_prompt,
                                   int n_gen, int32_t *out)
{
    int V = m->config.vocab, max_blocks = (n_prompt + n_gen + BLOCK - 1) / BLOCK;
    duet_runner_options ro = {
        .max_tokens = CHUNK, .max_seqs = 1, .max_logit_rows = 1, .num_blocks = max_blocks + 1,
        .block_size = BLOCK, .max_blocks_per_seq = max_blocks, .kv_type = DUET_F32,
    };
    duet_runner *r = NULL;
    float *logits = malloc(sizeof(float) * (size_t)V);
    int32_t *table = malloc(sizeof(int32_t) * (size_t)max_blocks);
    int32_t *meta = malloc(sizeof(int32_t) * 2 * CHUNK);
    duet_status rc = DUET_OK;
    if (!logits || !table || !meta) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "conform: out of host memory");
        goto out;
    }
    if ((rc = duet_runner_create(m->dev, &m->config, &m->weights, &ro, &r)))
        goto out;
    for (int i = 0; i < max_blocks; i++)
        table[i] = 1 + i; /* one sequence: blocks 1.. in order (0 is the null block) */
    const int32_t *feed = prompt;
    int n_feed = n_prompt, pos = 0;
    for (int g = 0; g < n_gen && rc == DUET_OK; g++) {
        for (int at = 0; at < n_feed && rc == DUET_OK; at += CHUNK) {
            int n = n_feed - at < CHUNK ? n_feed - at : CHUNK, last = at + n == n_feed;
            int32_t *positions = meta, *slots = meta + CHUNK;
            for (int i = 0; i < n; i++) {
                positions[i] = pos + i;
                slots[i] = table[(pos + i) / BLOCK] * BLOCK + (pos + i) % BLOCK;
            }
            int32_t qsl[2] = {0, n}, seq_len = pos + n, row = n - 1;
            duet_batch b = {.n_tokens = n, .n_seqs = 1, .tokens = feed + at,
                            .positions = positions, .slot_mapping = slots,
                            .query_start_loc = qsl, .seq_lens = &seq_len,
                            .block_tables = table, .logit_rows = &row, .n_logit_rows = last};
            rc = duet_model_forward(r, &b, last ? logits : NULL, NULL);
            pos += n;
        }
        if (rc == DUET_OK) {
            out[g] = argmax(logits, V);
            feed = &out[g];
            n_feed = 1;
        }
    }
out:
    duet_runner_free(r);
    free(meta);
    free(table);
    free(logits);
    return rc;
}

/* Generate on both sides and compare token by token. host: greedy through
 * gen_host_argmax instead of the engine. */
static duet_status check_generation(model_side side[2], const char *spec[2],
                                    const prompt_set *ps, int n_gen, float temperature,
                                    float top_p, int host, conform_result *res)
{
    size_t n_tok = (size_t)ps->n * n_gen;
    int32_t *tok[2] = {malloc(sizeof(int32_t) * n_tok), malloc(sizeof(int32_t) * n_tok)};
    int n_out[2][N_FIXTURES] = {{0}};
    duet_status rc = DUET_OK;
    if (!tok[0] || !tok[1]) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "conform: out of host memory");
        goto out;
    }
    for (int k = 0; k < 2 && res->status == CONFORM_PASS; k++) {
        memset(tok[k], 0xff, sizeof(int32_t) * n_tok); /* -1: never produced */
        duet_status st = DUET_OK;
        if (host) {
            for (int p = 0; p < ps->n && st == DUET_OK; p++) {
                st = gen_host_argmax(side[k].m, ps->ids[p], (int)ps->len[p], n_gen,
                                     tok[k] + (size_t)p * n_gen);
                n_out[k][p] = st == DUET_OK ? n_gen : 0;
            }
        } else {
            st = gen_engine(side[k].m, ps, n_gen, temperature, top_p, tok[k], n_out[k]);
        }
        if (st == DUET_ERR_OUT_OF_MEMORY) {
            rc = duet_error_wrap(st, "%s on %s", res->op, spec[k]);
            goto out;
        }
        if (st) {
            res->status = st == DUET_ERR_UNSUPPORTED ? CONFORM_SKIP : CONFORM_FAIL;
            snprintf(res->note, sizeof res->note, "%s: %s", spec[k], duet_last_error());
            duet_error_clear();
        }
    }
    if (res->status != CONFORM_PASS)
        goto out;
    long differ = 0;
    for (int p = 0; p < ps->n; p++) {
        if (n_out[0][p] != n_gen || n_out[1][p] != n_gen) {
            res->status = CONFORM_FAIL;
            snprintf(res->note, sizeof res->note, "prompt %d: %d and %d tokens, not %d", p,
                     n_out[0][p], n_out[1][p], n_gen);
        }
        for (int i = 0; i < n_gen; i++) {
            int32_t a = tok[0][(size_t)p * n_gen + i], b = tok[1][(size_t)p * n_gen + i];
            if (a == b)
                continue;
            if (res->note[0] == 0)
                snprintf(res->note, sizeof res->note,
                         "prompt %d diverges at token %d: %d (%s) vs %d (%s)", p, i, a,
                         spec[0], b, spec[1]);
            differ++;
        }
    }
    res->value = (double)differ / (double)n_tok;
    if (differ)
        res->status = CONFORM_FAIL;
    if (res->status == CONFORM_PASS && host)
        snprintf(res->note, sizeof res->note, "argmax on the host: %s has no sample op",
                 side[0].has_sample ? spec[1] : spec[0]);
out:
    free(tok[0]);
    free(tok[1]);
    return rc;
}

/* ---- the rows --------------------------------------------------------------------- */

static void result_init(conform_result *res, const char *op, const char *metric,
                        double threshold, const char *type)
{
    memset(res, 0, sizeof *res);
    res->op = op;
    res->metric = metric;
    res->threshold = threshold;
    snprintf(res->type, sizeof res->type, "%s", type);
}

duet_status conform_model_run_all(conform_run *r, const conform_model_opts *o,
                                  int *n_validation)
{
    model_side side[2] = {{0}};
    prompt_set ps = {0};
    const char *spec[2] = {conform_backend(r, 0), conform_backend(r, 1)};
    int n = o->n_prompts > 0 && o->n_prompts < N_FIXTURES ? o->n_prompts : N_FIXTURES;
    char type[8] = "gguf";
    duet_status rc = DUET_OK;
    *n_validation = 0;
    if (o->source.load_format && strcmp(o->source.load_format, "dummy") == 0) {
        const char *t = o->source.dummy_dtype ? o->source.dummy_dtype : "q4_1";
        size_t i = 0;
        for (; t[i] && i + 1 < sizeof type; i++)
            type[i] = t[i] >= 'a' && t[i] <= 'z' ? (char)(t[i] - 32) : t[i];
        type[i] = 0;
    }

    for (int k = 0; k < 2 && rc == DUET_OK; k++)
        rc = side_load(&side[k], spec[k], k && o->path2 ? o->path2 : o->path, o);
    if (rc == DUET_OK && duet_model_vocab_size(side[0].m) != duet_model_vocab_size(side[1].m))
        rc = duet_error(DUET_ERR_INVALID_ARG,
                        "--model2 '%s' has %d tokens but the model has %d; the two "
                        "must share a tokenizer", o->path2,
                        duet_model_vocab_size(side[1].m), duet_model_vocab_size(side[0].m));
    if (rc == DUET_OK)
        rc = prompts_tokenize(side[0].m, n, &ps);
    if (rc == DUET_OK &&
        (size_t)o->n_gen + ps.longest + 1 > (size_t)duet_model_context_length(side[0].m))
        rc = duet_error(DUET_ERR_INVALID_ARG,
                        "the longest prompt (%zu tokens) + --gen-tokens %d exceed the "
                        "model's context of %d tokens",
                        ps.longest, o->n_gen, duet_model_context_length(side[0].m));
    duet_session_options so = {.max_context = (int)ps.longest + 1};
    for (int k = 0; k < 2 && rc == DUET_OK; k++)
        rc = duet_session_create(side[k].m, &so, &side[k].session);
    if (rc)
        goto out;
    fprintf(stderr, "duet conform: model %s on %s and %s%s%s: %d prompts, %zu tokens, %d "
                    "generated per prompt\n", o->path, spec[0], o->path2 ? o->path2 : "",
            o->path2 ? " on " : "", spec[1], ps.n, ps.total, o->n_gen);

    conform_result nm, top1, greedy, sampled;
    result_init(&nm, "model.logits", "nmse", LOGITS_NMSE, type);
    result_init(&top1, "model.top1", "top1_mismatch", TOP1_MISMATCH, type);
    snprintf(nm.shape, sizeof nm.shape, "%d prompts, %zu positions, teacher-forced", ps.n,
             ps.total);
    snprintf(top1.shape, sizeof top1.shape, "%d prompts, %zu positions", ps.n, ps.total);
    int want_nm = conform_selected(r, nm.op, nm.shape, type);
    int want_top1 = conform_selected(r, top1.op, top1.shape, type);
    if (want_nm || want_top1) {
        if ((rc = check_logits(side, &ps, &nm, &top1)))
            goto out;
        if (want_nm && (rc = conform_row_add(r, &nm)))
            goto out;
        if (want_top1 && (rc = conform_row_add(r, &top1)))
            goto out;
    }

    int host = !side[0].has_sample || !side[1].has_sample;
    result_init(&greedy, "model.greedy", "token_mismatch", 0, type);
    snprintf(greedy.shape, sizeof greedy.shape, "%d prompts x %d tokens, %s", ps.n, o->n_gen,
             host ? "host argmax" : "engine, batched");
    if (conform_selected(r, greedy.op, greedy.shape, type)) {
        if ((rc = check_generation(side, spec, &ps, o->n_gen, 0.0f, 0.0f, host, &greedy)) ||
            (rc = conform_row_add(r, &greedy)))
            goto out;
    }

    result_init(&sampled, "model.sampled", "token_mismatch", 0, type);
    snprintf(sampled.shape, sizeof sampled.shape, "%d prompts x %d tokens, T=0.8 top-p=0.9",
             ps.n, o->n_gen);
    if (conform_selected(r, sampled.op, sampled.shape, type)) {
        if (host) {
            sampled.status = CONFORM_SKIP;
            snprintf(sampled.note, sizeof sampled.note, "unsupported by %s",
                     side[0].has_sample ? spec[1] : spec[0]);
        } else if ((rc = check_generation(side, spec, &ps, o->n_gen, 0.8f, 0.9f, 0,
                                          &sampled))) {
            goto out;
        }
        if ((rc = conform_row_add(r, &sampled)))
            goto out;
    }

out:
    for (int k = 0; k < 2; k++) {
#ifdef DUET_HAVE_VULKAN
        if (side[k].m) {
            int v = duet_vulkan_validation_errors(side[k].m->dev);
            if (v > 0)
                *n_validation += v;
        }
#endif
        duet_session_free(side[k].session);
        duet_model_free(side[k].m);
    }
    prompts_free(&ps);
    return rc;
}
