/*
 * engine_req.c — an engine request: its copy of the parameters, and the
 * per-token sampling edits (penalties, logit bias, the min_tokens ban)
 * kept incrementally, so a step copies them instead of rescanning the
 * request's tokens.
 */
#include <stdlib.h>
#include <string.h>

#include "engine_impl.h"
#include "error.h"

static int hash_slot(int32_t tok, int cap) { return (int)(((uint32_t)tok * 2654435761u) & (uint32_t)(cap - 1)); }

static duet_status rehash(engine_req *q, int cap)
{
    int32_t *slots = malloc(sizeof *slots * (size_t)cap);
    if (!slots)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "engine: out of memory for sampling edits");
    memset(slots, 0xff, sizeof *slots * (size_t)cap);
    for (int i = 0; i < q->n_edits; i++) {
        int h = hash_slot(q->edits[i].token, cap);
        while (slots[h] >= 0)
            h = (h + 1) & (cap - 1);
        slots[h] = i;
    }
    free(q->edit_slot);
    q->edit_slot = slots;
    q->slot_cap = cap;
    return DUET_OK;
}

/* The edit of tok, created (all zero) if absent; NULL on out of memory. */
static duet_sample_edit *edit_for(engine_req *q, int32_t tok)
{
    if (q->slot_cap) {
        for (int h = hash_slot(tok, q->slot_cap); q->edit_slot[h] >= 0;
             h = (h + 1) & (q->slot_cap - 1))
            if (q->edits[q->edit_slot[h]].token == tok)
                return &q->edits[q->edit_slot[h]];
    }
    if (q->n_edits == q->cap_edits) {
        int ncap = q->cap_edits ? 2 * q->cap_edits : 16;
        duet_sample_edit *ne = realloc(q->edits, sizeof *ne * (size_t)ncap);
        if (!ne)
            return NULL;
        q->edits = ne;
        unsigned char *nm = realloc(q->min_mask, (size_t)ncap);
        if (!nm)
            return NULL;
        q->min_mask = nm;
        q->cap_edits = ncap;
    }
    if (2 * (q->n_edits + 1) > q->slot_cap &&
        rehash(q, q->slot_cap ? 2 * q->slot_cap : 64) != DUET_OK)
        return NULL;
    int i = q->n_edits++;
    q->edits[i] = (duet_sample_edit){.token = tok};
    q->min_mask[i] = 0;
    int h = hash_slot(tok, q->slot_cap);
    while (q->edit_slot[h] >= 0)
        h = (h + 1) & (q->slot_cap - 1);
    q->edit_slot[h] = i;
    return &q->edits[i];
}

static duet_status oom(void)
{
    return duet_error(DUET_ERR_OUT_OF_MEMORY, "engine: out of memory for sampling edits");
}

duet_status engine_req_count_token(engine_req *q, int32_t tok)
{
    if (!q->count_output)
        return DUET_OK;
    duet_sample_edit *ed = edit_for(q, tok);
    if (!ed)
        return oom();
    ed->count++;
    return DUET_OK;
}

static duet_status build_edits(duet_engine *e, engine_req *q, const duet_request_params *p)
{
    float rp = p->repetition_penalty;
    if (rp != 0.0f && rp != 1.0f) {
        for (int i = 0; i < q->base.n_prompt; i++) {
            duet_sample_edit *ed = edit_for(q, q->base.tokens[i]);
            if (!ed)
                return oom();
            ed->flags |= DUET_SAMPLE_EDIT_PROMPT;
        }
    }
    for (int i = 0; i < p->n_logit_bias; i++) {
        duet_sample_edit *ed = edit_for(q, p->logit_bias[i].token);
        if (!ed)
            return oom();
        ed->bias = p->logit_bias[i].bias; /* a repeated token: the last wins */
    }
    if (p->min_tokens > 0) {
        /* Banned until min_tokens: the stop token ids, and the
         * end-of-generation tokens unless EOS is ignored anyway. */
        for (int i = 0; i < q->n_stop_ids; i++) {
            duet_sample_edit *ed = edit_for(q, q->stop_ids[i]);
            if (!ed)
                return oom();
            q->min_mask[ed - q->edits] = 1;
        }
        for (int i = 0; !p->ignore_eos && i < e->n_eog; i++) {
            duet_sample_edit *ed = edit_for(q, e->eog_ids[i]);
            if (!ed)
                return oom();
            q->min_mask[ed - q->edits] = 1;
        }
    }
    q->count_output = (rp != 0.0f && rp != 1.0f) || p->presence_penalty != 0.0f ||
                      p->frequency_penalty != 0.0f;
    return DUET_OK;
}

duet_status engine_req_emit_edits(duet_engine *e, engine_req *q, duet_sample_row *row)
{
    row->edit_begin = row->edit_end = e->n_step_edits;
    if (q->n_edits == 0)
        return DUET_OK;
    int need = e->n_step_edits + q->n_edits;
    if (need > e->cap_step_edits) {
        int ncap = e->cap_step_edits ? e->cap_step_edits : 1024;
        while (ncap < need)
            ncap *= 2;
        duet_sample_edit *ne = realloc(e->step_edits, sizeof *ne * (size_t)ncap);
        if (!ne)
            return oom();
        e->step_edits = ne;
        e->cap_step_edits = ncap;
    }
    duet_sample_edit *dst = e->step_edits + e->n_step_edits;
    memcpy(dst, q->edits, sizeof *dst * (size_t)q->n_edits);
    int banned = q->base.n_tokens - q->base.n_prompt < q->p.min_tokens;
    for (int i = 0; i < q->n_edits; i++)
        if (q->min_mask[i] && banned)
            dst[i].flags |= DUET_SAMPLE_EDIT_MASK;
    e->n_step_edits = need;
    row->edit_end = need;
    return DUET_OK;
}

duet_status engine_req_create(duet_engine *e, const int32_t *prompt, size_t n,
                              const duet_request_params *p, int index, duet_output_cb cb,
                              void *user, engine_req **out)
{
    duet_status rc;
    *out = NULL;
    engine_req *q = calloc(1, sizeof *q);
    if (!q)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "engine: out of memory");
    duet_kv_seq_init(&q->base.kv);
    q->stop.matched = -1;
    q->placeholder_pos = -1;
    /* Room for the prompt and every token the request may produce. */
    int cap = (int)n + p->max_tokens;
    if (cap > e->max_model_len)
        cap = e->max_model_len;
    q->base.tokens = malloc(sizeof(int32_t) * (size_t)cap);
    if (p->n_stop_token_ids > 0)
        q->stop_ids = malloc(sizeof(int32_t) * (size_t)p->n_stop_token_ids);
    if (p->want_prompt_logprobs && index == 0 && n > 1)
        q->prompt_lp = calloc(n - 1, sizeof *q->prompt_lp);
    if (!q->base.tokens || (p->n_stop_token_ids > 0 && !q->stop_ids) ||
        (p->want_prompt_logprobs && index == 0 && n > 1 && !q->prompt_lp)) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "engine: out of memory for a request");
        goto fail;
    }
    memcpy(q->base.tokens, prompt, sizeof(int32_t) * n);
    q->base.n_prompt = q->base.n_tokens = (int)n;
    q->base.cap_tokens = cap;
    q->base.max_tokens = p->max_tokens;
    q->base.priority = p->priority;
    q->base.prompt_rows = q->prompt_lp != NULL;
    q->base.owner = q;
    q->index = index;
    if (p->n_stop_token_ids > 0)
        memcpy(q->stop_ids, p->stop_token_ids, sizeof(int32_t) * (size_t)p->n_stop_token_ids);
    q->n_stop_ids = p->n_stop_token_ids;
    if ((rc = duet_stop_init(&q->stop, p->stop, p->n_stop, p->include_stop_str_in_output)))
        goto fail;
    if ((rc = build_edits(e, q, p)))
        goto fail;
    q->p = *p;
    q->p.request_id = NULL;
    q->p.logit_bias = NULL;
    q->p.stop = NULL;
    q->p.stop_token_ids = NULL;
    q->p.cache_salt = NULL;
    q->cb = cb;
    q->user = user;
    *out = q;
    return DUET_OK;
fail:
    engine_req_free(q);
    return rc;
}

void engine_req_free(engine_req *q)
{
    if (!q)
        return;
    duet_kv_seq_destroy(&q->base.kv);
    duet_stop_free(&q->stop);
    free(q->base.tokens);
    free(q->stop_ids);
    free(q->edits);
    free(q->min_mask);
    free(q->edit_slot);
    free(q->prompt_lp);
    free(q);
}
