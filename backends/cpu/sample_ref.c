/*
 * sample_ref.c — the sample op's reference kernel: docs/SAMPLING.md step by
 * step, with a full sort where the specification speaks of the order O.
 * Plain and slow on purpose; the fast kernel must match it bit for bit.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_sample.h"
#include "sample_math.h"

typedef struct ref_entry {
    float key; /* sorted descending */
    int32_t id; /* then ascending */
} ref_entry;

static int ref_entry_cmp(const void *pa, const void *pb)
{
    const ref_entry *a = pa, *b = pb;
    if (a->key != b->key)
        return a->key > b->key ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

/* A raw logit as the specification reads it: NaN counts as -inf. */
static float raw_at(const float *x, int i) { return isnan(x[i]) ? -INFINITY : x[i]; }

/* Step 1: raw logprobs, rank and the top-N (only when n_logprobs >= 0). */
static void ref_logprobs(const float *x, int vocab, int n_logprobs, int32_t token,
                         ref_entry *order, duet_sample_result *res)
{
    float m0 = -INFINITY;
    for (int i = 0; i < vocab; i++)
        if (raw_at(x, i) > m0)
            m0 = raw_at(x, i);
    uint64_t s0 = 0;
    for (int i = 0; i < vocab; i++)
        s0 += duet_sm_weight(raw_at(x, i) - m0);
    float lz = duet_sm_dlog((float)s0 * DUET_SM_TWO_M40);

    float xt = raw_at(x, token);
    int32_t rank = 0;
    for (int i = 0; i < vocab; i++)
        rank += raw_at(x, i) >= xt;
    res->rank = rank;
    res->logprob = s0 ? (xt - m0) - lz : -INFINITY;

    int n_top = n_logprobs < DUET_SAMPLE_MAX_LOGPROBS ? n_logprobs : DUET_SAMPLE_MAX_LOGPROBS;
    if (n_top > vocab)
        n_top = vocab;
    for (int i = 0; i < vocab; i++)
        order[i] = (ref_entry){raw_at(x, i), i};
    qsort(order, (size_t)vocab, sizeof *order, ref_entry_cmp);
    res->n_top = n_top;
    for (int j = 0; j < n_top; j++) {
        res->top_ids[j] = order[j].id;
        res->top_logprobs[j] = s0 ? (order[j].key - m0) - lz : -INFINITY;
    }
}

/* Step 2: processed logits l = raw logits with this row's edits applied. */
static void ref_apply_edits(const cpu_sample *a, const duet_sample_row *row, const float *x,
                            float *l)
{
    for (int i = 0; i < a->vocab; i++)
        l[i] = raw_at(x, i);
    int32_t begin = row->edit_begin, end = row->edit_end;
    if (begin < 0 || end > a->n_edits || begin > end)
        return; /* an invalid range is empty */
    for (int32_t j = begin; j < end; j++) {
        const duet_sample_edit *e = &a->edits[j];
        if (e->token < 0 || e->token >= a->vocab)
            continue;
        float v = l[e->token];
        int32_t count = e->count > 0 ? e->count : 0;
        if (e->flags & DUET_SAMPLE_EDIT_MASK) {
            l[e->token] = -INFINITY;
            continue;
        }
        v = v + e->bias;
        if (((e->flags & DUET_SAMPLE_EDIT_PROMPT) || count > 0) && row->repetition_penalty != 1.0f)
            v = v > 0.0f ? v * row->inv_repetition_penalty : v * row->repetition_penalty;
        v = v - (float)count * row->frequency_penalty;
        if (count > 0)
            v = v - row->presence_penalty;
        l[e->token] = v;
    }
}

/* Step 4: the kept set K (a prefix of the order O) and the Gumbel race. */
static int32_t ref_sample(const duet_sample_row *row, const float *l, int vocab, ref_entry *order)
{
    float m = -INFINITY;
    for (int i = 0; i < vocab; i++)
        if (l[i] * row->inv_temperature > m)
            m = l[i] * row->inv_temperature;
    int n_cand = 0;
    for (int i = 0; i < vocab; i++) {
        float d = l[i] * row->inv_temperature - m;
        if (d > -INFINITY && d >= row->log_min_p) /* false for NaN */
            order[n_cand++] = (ref_entry){d, i};
    }
    if (n_cand == 0) /* no finite candidate: fall back to greedy */
        return duet_sm_argmax(l, vocab);
    qsort(order, (size_t)n_cand, sizeof *order, ref_entry_cmp);

    int n_c = n_cand; /* C: candidates within top_k */
    if (row->top_k > 0 && row->top_k < n_c)
        n_c = row->top_k;
    int n_k = n_c; /* K: C cut by top_p */
    if (row->top_p_q24 < (1u << 24)) {
        uint64_t s = 0;
        for (int j = 0; j < n_c; j++)
            s += duet_sm_weight(order[j].key);
        uint64_t limit = duet_sm_top_p_limit(s, row->top_p_q24), above = 0;
        for (n_k = 0; n_k < n_c && above < limit; n_k++)
            above += duet_sm_weight(order[n_k].key);
    }

    uint32_t key[2] = {row->seed_lo, row->seed_hi};
    int32_t best = -1;
    float best_score = 0.0f;
    for (int j = 0; j < n_k; j++) {
        int32_t i = order[j].id;
        uint32_t ctr[4] = {(uint32_t)i / 4u, row->position, row->sample_index, 0}, r[4];
        duet_sm_philox4x32(ctr, key, r);
        float score = order[j].key + duet_sm_gumbel(r[i % 4]);
        if (best < 0 || score > best_score || (score == best_score && i < best)) {
            best = i;
            best_score = score;
        }
    }
    return best;
}

/* One row; order has room for vocab entries. */
static void ref_row(const cpu_sample *a, int r, ref_entry *order)
{
    const duet_sample_row *row = &a->rows[r];
    const float *x = a->logits + (size_t)r * (size_t)a->vocab;
    float *l = a->work + (size_t)r * (size_t)a->vocab;
    duet_sample_result *res = &a->results[r];

    ref_apply_edits(a, row, x, l);
    int32_t token;
    if (row->forced_token >= 0 && row->forced_token < a->vocab)
        token = row->forced_token;
    else if (row->inv_temperature == 0.0f)
        token = duet_sm_argmax(l, a->vocab);
    else
        token = ref_sample(row, l, a->vocab, order);

    memset(res, 0, sizeof *res);
    res->token = token;
    if (row->n_logprobs >= 0)
        ref_logprobs(x, a->vocab, row->n_logprobs, token, order, res);
}

void duet_cpu_sample_ref(const cpu_sample *a)
{
    ref_entry *order = malloc((size_t)a->vocab * sizeof *order);
    if (!order) { /* cannot fail: the fast kernel needs no memory */
        duet_cpu_sample_fast(NULL, a);
        return;
    }
    for (int r = 0; r < a->n_rows; r++)
        ref_row(a, r, order);
    free(order);
}
