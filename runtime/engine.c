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
#include <time.h>

#include "duet_internal.h"
#include "engine_impl.h"
#include "error.h"
#include "sampler.h"
#include "scheduler.h"

/* ---- requests --------------------------------------------------------------- */

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
    for (int i = 0; i < e->n_deferred; i++)
        if (strcmp(e->deferred[i]->id, id) == 0)
            return e->deferred[i];
    return NULL;
}

double duet_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
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
    duet_status rc = duet_request_params_validate(p, e->model->config.vocab);
    if (rc)
        return rc;
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

static int grow_list(engine_req ***list, int *cap, int need)
{
    if (need <= *cap)
        return 0;
    int ncap = *cap ? *cap : 64;
    while (ncap < need)
        ncap *= 2;
    engine_req **nl = realloc(*list, sizeof *nl * (size_t)ncap);
    if (!nl)
        return -1;
    *list = nl;
    *cap = ncap;
    return 0;
}

duet_status duet_engine_add_request(duet_engine *e, const int32_t *prompt, size_t n,
                                    const duet_request_params *p, duet_output_cb cb, void *user)
{
    duet_status rc = validate(e, prompt, n, p);
    if (rc)
        return rc;
    int n_samples = p->n > 0 ? p->n : 1;
    engine_req *reqs[128] = {0}; /* n is validated <= 128 */
    for (int i = 0; i < n_samples; i++) {
        if ((rc = engine_req_create(e, prompt, n, p, i, cb, user, &reqs[i])))
            goto fail;
        if (p->cache_salt && *p->cache_salt)
            duet_kv_seq_set_extra(&reqs[i]->base.kv, salt_key(p->cache_salt));
        reqs[i]->t_arrival = duet_now();
        /* Later samples wait for the first one's prompt when they can
         * share it through the prefix cache. */
        if (i > 0 && e->prefix_caching && n > (size_t)e->block_size)
            reqs[i]->leader = reqs[0];
    }

    pthread_mutex_lock(&e->inbox_lock);
    uint64_t seq0 = e->next_seq_no;
    char id[ENGINE_ID_MAX];
    if (p->request_id)
        snprintf(id, sizeof id, "%s", p->request_id);
    else
        snprintf(id, sizeof id, "req-%" PRIu64, seq0);
    /* Unique among unfinished requests: those queued here and active. */
    int dup = find_active(e, id) != NULL;
    for (int i = 0; i < e->n_inbox && !dup; i++)
        dup = strcmp(e->inbox[i]->id, id) == 0;
    if (dup) {
        pthread_mutex_unlock(&e->inbox_lock);
        rc = duet_error(DUET_ERR_INVALID_ARG, "request_id '%s' is already in use", id);
        goto fail;
    }
    if (grow_list(&e->inbox, &e->cap_inbox, e->n_inbox + n_samples)) {
        pthread_mutex_unlock(&e->inbox_lock);
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "engine: out of memory");
        goto fail;
    }
    uint64_t seed = p->has_seed ? p->seed : mix64(e->seed_base + seq0);
    for (int i = 0; i < n_samples; i++) {
        engine_req *q = reqs[i];
        q->base.seq_no = e->next_seq_no++;
        q->seed = seed;
        memcpy(q->id, id, sizeof id);
        e->inbox[e->n_inbox++] = q;
    }
    pthread_mutex_unlock(&e->inbox_lock);
    return DUET_OK;

fail:
    for (int i = 0; i < n_samples; i++)
        engine_req_free(reqs[i]);
    return rc;
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

/* Decode tok into the request's text (held back by the stop matcher).
 * Returns 1 when a stop string matched. */
static int append_text(duet_engine *e, engine_req *q, const int32_t *tok, int finishing,
                       const char **text, size_t *text_len)
{
    const duet_tokenizer *t = e->model->tokenizer;
    char *buf = e->text_buf;
    size_t n = 0;
    *text = "";
    *text_len = 0;
    if (tok && (q->p.keep_special_tokens || !duet_tokenizer_is_special(t, *tok))) {
        size_t len;
        const char *bytes = duet_tokenizer_token_bytes(t, *tok, &len);
        if (DUET_UTF8_STREAM_OUT_MAX(len) <= sizeof e->text_buf)
            n = duet_utf8_stream_push(&q->utf8, bytes, len, buf);
    }
    if (finishing)
        n += duet_utf8_stream_flush(&q->utf8, buf + n);
    int stopped = duet_stop_push(&q->stop, buf, n, text, text_len);
    if (finishing && !stopped) {
        /* Whatever is held back is released: it can no longer become a
         * stop string. Both pieces live in the matcher's buffer in turn,
         * so join them in text_buf. */
        size_t a = *text_len;
        if (a < sizeof e->text_buf)
            memmove(buf, *text, a);
        const char *rest;
        size_t b;
        duet_stop_flush(&q->stop, &rest, &b);
        if (a + b < sizeof e->text_buf) {
            memcpy(buf + a, rest, b);
            *text = buf;
            *text_len = a + b;
        }
    }
    return stopped;
}

static void report(engine_req *q, const int32_t *tok, const duet_logprobs *lp,
                   const float *logits, duet_finish finish, const char *text, size_t text_len)
{
    if (!q->cb)
        return;
    duet_request_output out = {
        .request_id = q->id,
        .index = q->index,
        .new_tokens = tok,
        .n_new_tokens = tok ? 1 : 0,
        .logprobs = tok && q->p.want_logprobs ? lp : NULL,
        .text = text ? text : "",
        .text_len = text ? text_len : 0,
        .finish = finish,
        .stop_str = duet_stop_matched(&q->stop),
        .stop_token = -1,
        .n_prompt_tokens = q->base.n_prompt,
        .n_output_tokens = q->base.n_tokens - q->base.n_prompt,
        .n_cached_tokens = q->base.n_cached_prompt,
        .logits = logits,
        .arrival_time = q->t_arrival,
        .first_scheduled_time = q->t_scheduled,
        .first_token_time = q->t_first_token,
    };
    if (tok && finish == DUET_FINISHED_STOP && is_stop_token(q, *tok))
        out.stop_token = *tok;
    if (q->prompt_lp && !q->prompt_lp_sent && tok) {
        out.prompt_logprobs = q->prompt_lp;
        out.n_prompt_logprobs = q->base.n_prompt - 1;
        q->prompt_lp_sent = 1;
    }
    q->cb(q->user, &out);
}

/* Remove q from the active list; free it, or keep it until the last step
 * that includes it has been processed (async scheduling). */
static void retire(duet_engine *e, engine_req *q)
{
    pthread_mutex_lock(&e->inbox_lock);
    for (int i = 0; i < e->n_active; i++) {
        if (e->active[i] == q) {
            e->active[i] = e->active[--e->n_active];
            break;
        }
    }
    /* Samples still waiting for q as their leader go ahead without it. */
    for (int i = 0; i < e->n_deferred; i++)
        if (e->deferred[i]->leader == q)
            e->deferred[i]->leader = NULL;
    pthread_mutex_unlock(&e->inbox_lock);
    q->finished = 1;
    /* A step that includes q is queued or running: free q after it. The
     * zombie list has room (drain_inbox sizes it for every request). */
    if (q->last_step > e->done_step) {
        e->zombies[e->n_zombies++] = q;
        return;
    }
    engine_req_free(q);
}

/* Free finished requests no step holds any more. */
static void free_zombies(duet_engine *e)
{
    for (int i = 0; i < e->n_zombies;) {
        engine_req *q = e->zombies[i];
        if (q->last_step > e->done_step) {
            i++;
            continue;
        }
        engine_req_free(q);
        e->zombies[i] = e->zombies[--e->n_zombies];
    }
}

static void abort_req(duet_engine *e, engine_req *q)
{
    e->n_aborted++;
    report(q, NULL, NULL, NULL, DUET_FINISHED_ABORT, NULL, 0);
    retire(e, q);
}

/* Hand deferred samples to the scheduler once their leader's prompt is in
 * the cache (or the leader is gone). Called with inbox_lock held. */
static duet_status release_deferred(duet_engine *e)
{
    duet_status rc = DUET_OK;
    for (int i = 0; i < e->n_deferred;) {
        engine_req *q = e->deferred[i];
        if (q->leader && q->leader->base.n_computed < q->leader->base.n_prompt) {
            i++;
            continue;
        }
        if (grow_list(&e->active, &e->cap_active, e->n_active + 1) ||
            (rc = duet_scheduler_add(e->sched, &q->base)))
            return rc ? rc : duet_error(DUET_ERR_OUT_OF_MEMORY, "engine: out of memory");
        q->leader = NULL;
        e->active[e->n_active++] = q;
        e->deferred[i] = e->deferred[--e->n_deferred];
    }
    return rc;
}

/* Move new requests into the scheduler (or the deferred list) and carry
 * out aborts. */
static duet_status drain_inbox(duet_engine *e)
{
    duet_status rc = DUET_OK;
    pthread_mutex_lock(&e->inbox_lock);
    int all = e->n_active + e->n_inbox + e->n_deferred + e->n_zombies;
    if (grow_list(&e->active, &e->cap_active, e->n_active + e->n_inbox) ||
        grow_list(&e->deferred, &e->cap_deferred, e->n_deferred + e->n_inbox) ||
        grow_list(&e->zombies, &e->cap_zombies, all)) {
        pthread_mutex_unlock(&e->inbox_lock);
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "engine: out of memory");
    }
    int taken = 0;
    for (; taken < e->n_inbox; taken++) {
        engine_req *q = e->inbox[taken];
        if (q->leader) {
            e->deferred[e->n_deferred++] = q;
            continue;
        }
        if ((rc = duet_scheduler_add(e->sched, &q->base)))
            break;
        e->active[e->n_active++] = q;
    }
    memmove(e->inbox, e->inbox + taken, sizeof *e->inbox * (size_t)(e->n_inbox - taken));
    e->n_inbox -= taken;
    if (!rc)
        rc = release_deferred(e);
    char aborts[ENGINE_MAX_PENDING_ABORTS][ENGINE_ID_MAX];
    int n_aborts = e->n_aborts;
    memcpy(aborts, e->aborts, sizeof aborts[0] * (size_t)n_aborts);
    e->n_aborts = 0;
    pthread_mutex_unlock(&e->inbox_lock);

    for (int i = 0; i < n_aborts; i++) {
        /* Every sample with this id, wherever it is. */
        for (;;) {
            engine_req *q = NULL;
            int deferred_at = -1;
            pthread_mutex_lock(&e->inbox_lock);
            for (int j = 0; j < e->n_deferred && !q; j++)
                if (strcmp(e->deferred[j]->id, aborts[i]) == 0)
                    q = e->deferred[deferred_at = j];
            if (q)
                e->deferred[deferred_at] = e->deferred[--e->n_deferred];
            pthread_mutex_unlock(&e->inbox_lock);
            if (!q) {
                for (int j = 0; j < e->n_active && !q; j++)
                    if (strcmp(e->active[j]->id, aborts[i]) == 0)
                        q = e->active[j];
                if (!q)
                    break;
                if (duet_scheduler_abort(e->sched, &q->base) != 0)
                    break; /* finished meanwhile */
            }
            abort_req(e, q);
        }
    }
    return rc;
}

/* ---- the step ------------------------------------------------------------------ */

/* Add a logit row for token row t of the batch. */
static void add_row(duet_engine *e, int *rows, int t, engine_req *q, int prompt_index)
{
    e->rows[*rows] = t;
    e->row_info[e->cur][*rows] = (engine_row){q, prompt_index};
    (*rows)++;
}

/* Fill the sample op's row for logit row i. */
static duet_status fill_sample_row(duet_engine *e, int i)
{
    engine_row *ri = &e->row_info[e->cur][i];
    engine_req *q = ri->req;
    duet_sample_row *row = &e->sample_rows[i];
    int vocab = e->model->config.vocab;
    if (ri->prompt_index >= 0) {
        /* Prompt logprobs: the raw distribution, the actual next token. */
        duet_request_params raw = {.max_tokens = 1};
        duet_sample_row_init(row, &raw, vocab, q->seed, 0, 0,
                             q->base.tokens[ri->prompt_index + 1], q->p.prompt_logprobs);
        return DUET_OK;
    }
    int position = q->base.n_tokens - q->base.n_prompt;
    duet_sample_row_init(row, &q->p, vocab, q->seed, (uint32_t)position, (uint32_t)q->index, -1,
                         q->p.want_logprobs ? q->p.logprobs : -1);
    return engine_req_emit_edits(e, q, row);
}

/* Flatten the scheduled entries into e's batch arrays. */
static duet_status build_batch(duet_engine *e, const duet_sched_output *so, duet_batch *b)
{
    int bs = e->block_size, mb = e->max_blocks_per_seq, t = 0, rows = 0;
    double now = duet_now();
    for (int i = 0; i < so->n_entries; i++) {
        const duet_sched_entry *en = &so->entries[i];
        const duet_request *r = en->req;
        engine_req *q = r->owner;
        if (q->t_scheduled == 0)
            q->t_scheduled = now;
        q->last_step = e->next_step_id;
        e->qsl[i] = t;
        for (int j = 0; j < en->n_tokens; j++, t++) {
            int pos = en->start + j;
            /* The in-flight step's sample, still on the device. */
            e->tok[t] = pos == q->placeholder_pos ? -1 - q->placeholder_row : r->tokens[pos];
            e->pos[t] = pos;
            e->slots[t] = r->kv.blocks[pos / bs] * bs + pos % bs;
            /* Prompt logprobs: the row at pos scores prompt token pos + 1. */
            if (q->prompt_lp && pos + 1 < r->n_prompt && pos >= q->n_prompt_lp_done)
                add_row(e, &rows, t, q, pos);
        }
        e->seq_lens[i] = en->start + en->n_tokens;
        int32_t *table = e->tables + (size_t)i * mb;
        memcpy(table, r->kv.blocks, sizeof(int32_t) * (size_t)r->kv.n_blocks);
        memset(table + r->kv.n_blocks, 0, sizeof(int32_t) * (size_t)(mb - r->kv.n_blocks));
        if (en->sample)
            add_row(e, &rows, t - 1, q, -1);
    }
    e->qsl[so->n_entries] = t;
    e->n_step_edits = 0;
    duet_status rc = DUET_OK;
    for (int i = 0; i < rows && !rc; i++)
        rc = fill_sample_row(e, i);
    *b = (duet_batch){
        .n_tokens = t, .n_seqs = so->n_entries, .tokens = e->tok, .positions = e->pos,
        .slot_mapping = e->slots, .query_start_loc = e->qsl, .seq_lens = e->seq_lens,
        .block_tables = e->tables, .logit_rows = e->rows, .n_logit_rows = rows,
        .sample_rows = e->sample_rows, .sample_edits = e->step_edits,
        .n_sample_edits = e->n_step_edits,
    };
    return rc;
}

/* Take one sampled token: store it (over its placeholder, if it has one),
 * check the stop conditions, report. */
static duet_status accept_token(duet_engine *e, engine_req *q, const duet_sample_result *res,
                                const float *logits)
{
    duet_request *r = &q->base;
    int32_t tok = res->token;
    if (q->placeholder_pos >= 0) {
        r->tokens[q->placeholder_pos] = tok;
        q->placeholder_pos = -1;
    } else {
        r->tokens[r->n_tokens++] = tok;
    }
    e->generation_tokens++;
    if (q->t_first_token == 0)
        q->t_first_token = duet_now();
    duet_status rc = engine_req_count_token(q, tok);
    if (rc)
        return rc;
    duet_finish finish = DUET_FINISHED_NOT;
    if ((!q->p.ignore_eos && duet_tokenizer_is_eog(e->model->tokenizer, tok)) ||
        is_stop_token(q, tok))
        finish = DUET_FINISHED_STOP;
    else if (r->n_tokens - r->n_prompt >= r->max_tokens || r->n_tokens >= e->max_model_len)
        finish = DUET_FINISHED_LENGTH;
    const char *text;
    size_t text_len;
    /* A stop token's text is not output (vLLM), unless asked to keep it. */
    int shown = finish != DUET_FINISHED_STOP || q->p.include_stop_str_in_output;
    if (append_text(e, q, shown ? &tok : NULL, finish != DUET_FINISHED_NOT, &text, &text_len))
        finish = DUET_FINISHED_STOP;
    report(q, &tok, res, logits, finish, text, text_len);
    if (finish != DUET_FINISHED_NOT) {
        if (r->state == DUET_REQ_RUNNING)
            duet_scheduler_finish(e->sched, r, (duet_finish_reason)finish);
        else /* preempted by a later step's schedule: leave the queue */
            duet_scheduler_abort(e->sched, r);
        retire(e, q);
    }
    return DUET_OK;
}

/* Store prompt logprobs, then take each sampled token of step st. */
static duet_status process_results(duet_engine *e, const engine_step *st)
{
    int vocab = e->model->config.vocab;
    duet_status rc = DUET_OK;
    for (int i = 0; i < st->n_rows && !rc; i++) {
        engine_row *ri = &e->row_info[st->buf][i];
        engine_req *q = ri->req;
        const duet_sample_result *res = &e->results[st->buf][i];
        if (q->finished) /* finished or aborted after this step was queued */
            continue;
        if (ri->prompt_index >= 0) {
            q->prompt_lp[ri->prompt_index] = *res;
            if (ri->prompt_index + 1 > q->n_prompt_lp_done)
                q->n_prompt_lp_done = ri->prompt_index + 1;
            continue;
        }
        rc = accept_token(e, q, res,
                          e->return_logits ? e->logits[st->buf] + (size_t)i * vocab : NULL);
    }
    return rc;
}

/* Wait for the in-flight step and process its results. */
static duet_status finish_inflight(duet_engine *e)
{
    if (!e->has_inflight)
        return DUET_OK;
    duet_status rc = duet_model_forward_wait(e->runner);
    engine_step st = e->inflight;
    e->has_inflight = 0;
    if (rc)
        return duet_error_wrap(rc, "engine step %" PRIu64, st.id);
    rc = process_results(e, &st);
    e->done_step = st.id;
    free_zombies(e);
    return rc;
}

/* After step N was queued: give every request it samples a placeholder
 * for the coming token, so step N+1 can be scheduled before the token is
 * known. Not for a request that will finish by length anyway, nor one
 * whose penalties must count the token first (it skips a step). */
static void add_placeholders(duet_engine *e, const engine_step *st)
{
    for (int i = 0; i < st->n_rows; i++) {
        engine_row *ri = &e->row_info[st->buf][i];
        engine_req *q = ri->req;
        duet_request *r = &q->base;
        if (ri->prompt_index >= 0 || q->finished || q->count_output ||
            q->placeholder_pos >= 0)
            continue;
        if (r->n_tokens + 1 - r->n_prompt >= r->max_tokens || r->n_tokens + 1 >= e->max_model_len ||
            r->n_tokens >= r->cap_tokens)
            continue;
        q->placeholder_pos = r->n_tokens;
        q->placeholder_row = i;
        r->tokens[r->n_tokens++] = -1;
    }
}

duet_status duet_engine_step(duet_engine *e)
{
    duet_sched_output so;
    duet_batch b;
    duet_status rc = drain_inbox(e);
    if (rc)
        return rc;
    if (!e->async && (rc = finish_inflight(e)))
        return rc;
    if ((rc = duet_scheduler_schedule(e->sched, &so)))
        return rc;
    e->step_tokens = (uint64_t)so.n_tokens;
    engine_step next = {.id = e->next_step_id, .buf = e->cur};
    if (so.n_entries > 0) {
        if ((rc = build_batch(e, &so, &b)))
            return rc;
        next.n_rows = b.n_logit_rows;
        /* Queued behind the in-flight step, if any. */
        if ((rc = duet_model_forward_submit(e->runner, &b,
                                            e->return_logits ? e->logits[e->cur] : NULL,
                                            e->results[e->cur])))
            return duet_error_wrap(rc, "engine step %" PRIu64, next.id);
    }
    /* While the new step runs: the previous one's outputs. */
    if ((rc = finish_inflight(e)))
        return rc;
    if (so.n_entries == 0)
        return DUET_OK;
    e->next_step_id++;
    e->inflight = next;
    e->has_inflight = 1;
    e->cur ^= 1;
    /* Its tokens are known now (the placeholders it read were filled just
     * above), so its blocks can be hashed into the prefix cache. */
    if ((rc = duet_scheduler_update(e->sched, &so)))
        return rc;
    for (int i = 0; i < so.n_entries; i++)
        if (so.entries[i].start < so.entries[i].req->n_prompt)
            e->prompt_tokens += (uint64_t)so.entries[i].n_tokens;
    e->steps++;
    if (e->async)
        add_placeholders(e, &e->inflight);
    else
        rc = finish_inflight(e);
    return rc;
}

int duet_engine_has_work(duet_engine *e)
{
    pthread_mutex_lock(&e->inbox_lock);
    int work = e->n_inbox > 0 || e->n_aborts > 0 || e->n_deferred > 0 || e->has_inflight;
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
    out->num_aborted = e->n_aborted;
    out->step_tokens = e->step_tokens;
    out->max_model_len = e->max_model_len;
    uint64_t stored = 0;
    pthread_mutex_lock(&e->inbox_lock);
    out->num_waiting = ss.n_waiting + e->n_inbox + e->n_deferred;
    for (int i = 0; i < e->n_active; i++)
        if (e->active[i]->base.state == DUET_REQ_RUNNING)
            stored += (uint64_t)e->active[i]->base.n_computed;
    pthread_mutex_unlock(&e->inbox_lock);
    out->kv_tokens_used = stored;
}

static void list_one(const engine_req *q, void (*cb)(void *, const duet_request_info *),
                     void *user)
{
    duet_request_info info = {
        .request_id = q->id,
        .index = q->index,
        .running = q->base.state == DUET_REQ_RUNNING,
        .n_prompt_tokens = q->base.n_prompt,
        .n_output_tokens = q->base.n_tokens - q->base.n_prompt,
        .n_computed_tokens = q->base.n_computed,
        .arrival_time = q->t_arrival,
    };
    cb(user, &info);
}

void duet_engine_list_requests(duet_engine *e,
                               void (*cb)(void *user, const duet_request_info *info),
                               void *user)
{
    pthread_mutex_lock(&e->inbox_lock);
    for (int i = 0; i < e->n_active; i++)
        list_one(e->active[i], cb, user);
    for (int i = 0; i < e->n_deferred; i++)
        list_one(e->deferred[i], cb, user);
    for (int i = 0; i < e->n_inbox; i++)
        list_one(e->inbox[i], cb, user);
    pthread_mutex_unlock(&e->inbox_lock);
}
