/*
 * engine.c — the step loop of continuous batching: take new requests and
 * aborts from the (thread-safe) inbox, let the scheduler pick this step's
 * tokens, flatten them into one batch, run the model, sample the rows that
 * reach the end of their known tokens, and report to each request.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "duet_internal.h"
#include "engine_impl.h"
#include "error.h"
#include "sampler.h"
#include "scheduler.h"

/* ---- requests --------------------------------------------------------------- */

void engine_req_free(engine_req *q)
{
    if (!q)
        return;
    duet_kv_seq_destroy(&q->base.kv);
    free(q->base.tokens);
    free(q->stop_ids);
    free(q);
}

static int is_stop_token(const engine_req *q, int32_t tok)
{
    for (int i = 0; i < q->n_stop_ids; i++)
        if (q->stop_ids[i] == tok)
            return 1;
    return 0;
}

static engine_req *find_active(duet_engine *e, const char *id)
{
    for (int i = 0; i < e->n_active; i++)
        if (strcmp(e->active[i]->id, id) == 0)
            return e->active[i];
    return NULL;
}

/* ---- the inbox (the only state other threads touch) ------------------------ */

static duet_status validate(duet_engine *e, const int32_t *prompt, size_t n,
                            const duet_request_params *p)
{
    if (n == 0)
        return duet_error(DUET_ERR_INVALID_ARG, "the prompt is empty (0 tokens)");
    if (n + 1 > (size_t)e->max_model_len)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "prompt has %zu tokens; this model's max_model_len is %d, which leaves "
                          "no room to generate",
                          n, e->max_model_len);
    if (p->max_tokens <= 0)
        return duet_error(DUET_ERR_INVALID_ARG, "max_tokens is %d; it must be >= 1",
                          p->max_tokens);
    if (!(p->temperature >= 0.0f))
        return duet_error(DUET_ERR_INVALID_ARG, "temperature %g must be >= 0", p->temperature);
    for (size_t i = 0; i < n; i++)
        if (prompt[i] < 0 || prompt[i] >= e->model->config.vocab)
            return duet_error(DUET_ERR_INVALID_ARG, "prompt token %zu is %d; vocabulary is 0..%d",
                              i, prompt[i], e->model->config.vocab - 1);
    if (p->request_id && (!*p->request_id || strlen(p->request_id) >= ENGINE_ID_MAX))
        return duet_error(DUET_ERR_INVALID_ARG, "request_id must have 1..%d characters",
                          ENGINE_ID_MAX - 1);
    return DUET_OK;
}

/* splitmix64: engine-assigned seeds for requests that give none. */
static uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static duet_block_hash salt_key(const char *salt)
{
    /* FNV-1a in two lanes: a stable 128-bit key for the salt string. */
    duet_block_hash h = {0xcbf29ce484222325ull, 0x84222325cbf29ce4ull};
    for (const unsigned char *p = (const unsigned char *)salt; *p; p++) {
        h.lo = (h.lo ^ *p) * 0x100000001b3ull;
        h.hi = (h.hi ^ *p) * 0x100000001b3ull + 1;
    }
    return h;
}

duet_status duet_engine_add_request(duet_engine *e, const int32_t *prompt, size_t n,
                                    const duet_request_params *p, duet_output_cb cb, void *user)
{
    duet_status rc = validate(e, prompt, n, p);
    if (rc)
        return rc;
    engine_req *q = calloc(1, sizeof *q);
    if (!q)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "engine: out of memory");
    /* Room for the prompt and every token the request may produce. */
    int cap = (int)n + p->max_tokens;
    if (cap > e->max_model_len)
        cap = e->max_model_len;
    q->base.tokens = malloc(sizeof(int32_t) * (size_t)cap);
    if (p->n_stop_token_ids > 0)
        q->stop_ids = malloc(sizeof(int32_t) * (size_t)p->n_stop_token_ids);
    if (!q->base.tokens || (p->n_stop_token_ids > 0 && !q->stop_ids)) {
        engine_req_free(q);
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "engine: out of memory for a request");
    }
    memcpy(q->base.tokens, prompt, sizeof(int32_t) * n);
    q->base.n_prompt = q->base.n_tokens = (int)n;
    q->base.cap_tokens = cap;
    q->base.max_tokens = p->max_tokens;
    q->base.priority = p->priority;
    q->base.owner = q;
    duet_kv_seq_init(&q->base.kv);
    if (p->cache_salt && *p->cache_salt)
        duet_kv_seq_set_extra(&q->base.kv, salt_key(p->cache_salt));
    if (p->n_stop_token_ids > 0)
        memcpy(q->stop_ids, p->stop_token_ids, sizeof(int32_t) * (size_t)p->n_stop_token_ids);
    q->n_stop_ids = p->n_stop_token_ids;
    q->temperature = p->temperature;
    q->ignore_eos = p->ignore_eos;
    q->cb = cb;
    q->user = user;

    pthread_mutex_lock(&e->inbox_lock);
    q->base.seq_no = e->next_seq_no++;
    q->seed = p->has_seed ? p->seed : mix64(e->seed_base + q->base.seq_no);
    if (p->request_id)
        snprintf(q->id, sizeof q->id, "%s", p->request_id);
    else
        snprintf(q->id, sizeof q->id, "req-%" PRIu64, q->base.seq_no);
    /* Unique among unfinished requests: those queued here and active. */
    int dup = find_active(e, q->id) != NULL;
    for (int i = 0; i < e->n_inbox && !dup; i++)
        dup = strcmp(e->inbox[i]->id, q->id) == 0;
    if (dup) {
        pthread_mutex_unlock(&e->inbox_lock);
        rc = duet_error(DUET_ERR_INVALID_ARG, "request_id '%s' is already in use", q->id);
        engine_req_free(q);
        return rc;
    }
    if (e->n_inbox == e->cap_inbox) {
        int ncap = e->cap_inbox ? 2 * e->cap_inbox : 64;
        engine_req **ni = realloc(e->inbox, sizeof *ni * (size_t)ncap);
        if (!ni) {
            pthread_mutex_unlock(&e->inbox_lock);
            engine_req_free(q);
            return duet_error(DUET_ERR_OUT_OF_MEMORY, "engine: out of memory");
        }
        e->inbox = ni;
        e->cap_inbox = ncap;
    }
    e->inbox[e->n_inbox++] = q;
    pthread_mutex_unlock(&e->inbox_lock);
    return DUET_OK;
}

duet_status duet_engine_abort(duet_engine *e, const char *id)
{
    duet_status rc = DUET_OK;
    pthread_mutex_lock(&e->inbox_lock);
    int known = find_active(e, id) != NULL;
    for (int i = 0; i < e->n_inbox && !known; i++)
        known = strcmp(e->inbox[i]->id, id) == 0;
    if (!known) {
        rc = duet_error(DUET_ERR_INVALID_ARG, "no unfinished request has id '%s'", id);
    } else if (e->n_aborts < ENGINE_MAX_PENDING_ABORTS) {
        snprintf(e->aborts[e->n_aborts++], ENGINE_ID_MAX, "%s", id);
    } else {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "too many aborts pending (%d)",
                        ENGINE_MAX_PENDING_ABORTS);
    }
    pthread_mutex_unlock(&e->inbox_lock);
    return rc;
}

/* ---- reporting ---------------------------------------------------------------- */

static void report(duet_engine *e, engine_req *q, const int32_t *tok, const float *logits,
                   duet_finish finish)
{
    const duet_tokenizer *t = e->model->tokenizer;
    char *text = e->text_buf;
    size_t text_len = 0;
    if (tok && !duet_tokenizer_is_special(t, *tok)) {
        size_t len;
        const char *bytes = duet_tokenizer_token_bytes(t, *tok, &len);
        if (DUET_UTF8_STREAM_OUT_MAX(len) <= sizeof e->text_buf)
            text_len = duet_utf8_stream_push(&q->utf8, bytes, len, text);
    }
    if (finish != DUET_FINISHED_NOT)
        text_len += duet_utf8_stream_flush(&q->utf8, text + text_len);
    if (!q->cb)
        return;
    duet_request_output out = {
        .request_id = q->id,
        .new_tokens = tok,
        .n_new_tokens = tok ? 1 : 0,
        .text = text,
        .text_len = text_len,
        .finish = finish,
        .n_prompt_tokens = q->base.n_prompt,
        .n_output_tokens = q->base.n_tokens - q->base.n_prompt,
        .n_cached_tokens = q->base.n_cached_prompt,
        .logits = logits,
    };
    q->cb(q->user, &out);
}

/* Remove q from the active list and free it. */
static void retire(duet_engine *e, engine_req *q)
{
    pthread_mutex_lock(&e->inbox_lock);
    for (int i = 0; i < e->n_active; i++) {
        if (e->active[i] == q) {
            e->active[i] = e->active[--e->n_active];
            break;
        }
    }
    pthread_mutex_unlock(&e->inbox_lock);
    engine_req_free(q);
}

/* Move new requests into the scheduler and carry out aborts. */
static duet_status drain_inbox(duet_engine *e)
{
    duet_status rc = DUET_OK;
    pthread_mutex_lock(&e->inbox_lock);
    int need = e->n_active + e->n_inbox;
    if (need > e->cap_active) {
        engine_req **na = realloc(e->active, sizeof *na * (size_t)need);
        if (!na) {
            pthread_mutex_unlock(&e->inbox_lock);
            return duet_error(DUET_ERR_OUT_OF_MEMORY, "engine: out of memory");
        }
        e->active = na;
        e->cap_active = need;
    }
    int taken = 0;
    for (; taken < e->n_inbox; taken++) {
        engine_req *q = e->inbox[taken];
        if ((rc = duet_scheduler_add(e->sched, &q->base)))
            break;
        e->active[e->n_active++] = q;
    }
    memmove(e->inbox, e->inbox + taken, sizeof *e->inbox * (size_t)(e->n_inbox - taken));
    e->n_inbox -= taken;
    char aborts[ENGINE_MAX_PENDING_ABORTS][ENGINE_ID_MAX];
    int n_aborts = e->n_aborts;
    memcpy(aborts, e->aborts, sizeof aborts[0] * (size_t)n_aborts);
    e->n_aborts = 0;
    pthread_mutex_unlock(&e->inbox_lock);

    for (int i = 0; i < n_aborts; i++) {
        engine_req *q = find_active(e, aborts[i]);
        if (!q || duet_scheduler_abort(e->sched, &q->base) != 0)
            continue; /* finished meanwhile */
        e->n_aborted++;
        report(e, q, NULL, NULL, DUET_FINISHED_ABORT);
        retire(e, q);
    }
    return rc;
}

/* ---- the step ------------------------------------------------------------------ */

/* Flatten the scheduled entries into e's batch arrays. */
static void build_batch(duet_engine *e, const duet_sched_output *so, duet_batch *b)
{
    int bs = e->block_size, mb = e->max_blocks_per_seq, t = 0, rows = 0;
    for (int i = 0; i < so->n_entries; i++) {
        const duet_sched_entry *en = &so->entries[i];
        const duet_request *r = en->req;
        e->qsl[i] = t;
        for (int j = 0; j < en->n_tokens; j++, t++) {
            int pos = en->start + j;
            e->tok[t] = r->tokens[pos];
            e->pos[t] = pos;
            e->slots[t] = r->kv.blocks[pos / bs] * bs + pos % bs;
        }
        e->seq_lens[i] = en->start + en->n_tokens;
        int32_t *table = e->tables + (size_t)i * mb;
        memcpy(table, r->kv.blocks, sizeof(int32_t) * (size_t)r->kv.n_blocks);
        memset(table + r->kv.n_blocks, 0, sizeof(int32_t) * (size_t)(mb - r->kv.n_blocks));
        if (en->sample)
            e->rows[rows++] = t - 1;
    }
    e->qsl[so->n_entries] = t;
    *b = (duet_batch){
        .n_tokens = t, .n_seqs = so->n_entries, .tokens = e->tok, .positions = e->pos,
        .slot_mapping = e->slots, .query_start_loc = e->qsl, .seq_lens = e->seq_lens,
        .block_tables = e->tables, .logit_rows = e->rows, .n_logit_rows = rows,
    };
}

/* Sample the next token of each entry that reached its end, report it,
 * and finish requests that are done. */
static void sample_and_report(duet_engine *e, const duet_sched_output *so)
{
    int vocab = e->model->config.vocab, row = 0;
    for (int i = 0; i < so->n_entries; i++) {
        const duet_sched_entry *en = &so->entries[i];
        if (!en->sample)
            continue;
        engine_req *q = en->req->owner;
        duet_request *r = &q->base;
        const float *logits = e->logits + (size_t)row++ * vocab;
        int out_index = r->n_tokens - r->n_prompt;
        int32_t tok = duet_sample_temperature(logits, vocab, q->temperature, q->seed,
                                              (uint32_t)out_index);
        r->tokens[r->n_tokens++] = tok;
        e->generation_tokens++;
        duet_finish finish = DUET_FINISHED_NOT;
        if ((!q->ignore_eos && duet_tokenizer_is_eog(e->model->tokenizer, tok)) ||
            is_stop_token(q, tok))
            finish = DUET_FINISHED_STOP;
        else if (r->n_tokens - r->n_prompt >= r->max_tokens || r->n_tokens >= e->max_model_len)
            finish = DUET_FINISHED_LENGTH;
        report(e, q, &tok, e->return_logits ? logits : NULL, finish);
        if (finish != DUET_FINISHED_NOT) {
            duet_scheduler_finish(e->sched, r, (duet_finish_reason)finish);
            retire(e, q);
        }
    }
}

duet_status duet_engine_step(duet_engine *e)
{
    duet_sched_output so;
    duet_batch b;
    duet_status rc = drain_inbox(e);
    if (rc)
        return rc;
    if ((rc = duet_scheduler_schedule(e->sched, &so)))
        return rc;
    if (so.n_entries == 0)
        return DUET_OK;
    build_batch(e, &so, &b);
    if ((rc = duet_model_forward(e->runner, &b, e->logits)))
        return duet_error_wrap(rc, "engine step %" PRIu64, e->steps);
    if ((rc = duet_scheduler_update(e->sched, &so)))
        return rc;
    for (int i = 0; i < so.n_entries; i++)
        if (so.entries[i].start < so.entries[i].req->n_prompt)
            e->prompt_tokens += (uint64_t)so.entries[i].n_tokens;
    e->steps++;
    sample_and_report(e, &so);
    return DUET_OK;
}

int duet_engine_has_work(duet_engine *e)
{
    pthread_mutex_lock(&e->inbox_lock);
    int work = e->n_inbox > 0 || e->n_aborts > 0;
    pthread_mutex_unlock(&e->inbox_lock);
    return work || duet_scheduler_has_work(e->sched);
}

duet_status duet_engine_run(duet_engine *e)
{
    duet_status rc = DUET_OK;
    while (!rc && duet_engine_has_work(e))
        rc = duet_engine_step(e);
    return rc;
}

void duet_engine_get_stats(duet_engine *e, duet_engine_stats *out)
{
    duet_kv_stats ks;
    duet_scheduler_stats ss;
    duet_kv_cache_stats(e->kv, &ks);
    duet_scheduler_get_stats(e->sched, &ss);
    memset(out, 0, sizeof *out);
    out->num_running = ss.n_running;
    out->num_waiting = ss.n_waiting;
    out->kv_blocks_total = ks.num_blocks;
    out->kv_blocks_used = ks.used_blocks;
    out->block_size = e->block_size;
    out->kv_usage = ks.num_blocks ? (double)ks.used_blocks / ks.num_blocks : 0.0;
    out->prefix_queries = ks.prefix_queries;
    out->prefix_hits = ks.prefix_hits;
    out->num_preemptions = ss.n_preemptions;
    out->prompt_tokens = e->prompt_tokens;
    out->generation_tokens = e->generation_tokens;
    out->steps = e->steps;
    out->max_model_len = e->max_model_len;
    uint64_t stored = 0;
    pthread_mutex_lock(&e->inbox_lock);
    for (int i = 0; i < e->n_active; i++)
        if (e->active[i]->base.state == DUET_REQ_RUNNING)
            stored += (uint64_t)e->active[i]->base.n_computed;
    pthread_mutex_unlock(&e->inbox_lock);
    out->kv_tokens_used = stored;
}
