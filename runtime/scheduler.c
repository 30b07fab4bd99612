/*
 * scheduler.c — continuous batching policy (see scheduler.h).
 *
 * Two queues. running is an array in admission order, at most
 * max_num_seqs long, so it is allocated once. waiting is a binary min-heap
 * over a two-part key: with priority scheduling (priority, seq_no), so a
 * preempted request simply falls back into its place; with FCFS (1, seq_no)
 * for new requests and (0, a decreasing counter) for preempted ones, which
 * puts each preemption in front of everything queued — the latest in
 * front, as vLLM's prepend does. A heap keeps a step at
 * O(running + admitted * log waiting) however long the queue grows.
 */
#include "scheduler.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

typedef struct wait_node {
    int64_t k1, k2; /* ordering key, smaller first */
    duet_request *req;
} wait_node;

struct duet_scheduler {
    duet_scheduler_options opt;
    duet_kv_cache *kv; /* borrowed */

    duet_request **running; /* [max_num_seqs], admission order */
    int n_running;

    wait_node *waiting; /* [cap_waiting] min-heap */
    int n_waiting, cap_waiting;
    int64_t front_key; /* FCFS: next key for a preempted request (decreasing) */

    duet_sched_entry *entries; /* [max_num_seqs], the last schedule's output */
    uint64_t n_preemptions;
};

/* ---- waiting heap ---- */

static int node_less(const wait_node *a, const wait_node *b)
{
    return a->k1 < b->k1 || (a->k1 == b->k1 && a->k2 < b->k2);
}

static void heap_swap(wait_node *h, int i, int j)
{
    wait_node t = h[i];
    h[i] = h[j];
    h[j] = t;
}

static void sift_up(wait_node *h, int i)
{
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!node_less(&h[i], &h[p]))
            break;
        heap_swap(h, i, p);
        i = p;
    }
}

static void sift_down(wait_node *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && node_less(&h[l], &h[m]))
            m = l;
        if (r < n && node_less(&h[r], &h[m]))
            m = r;
        if (m == i)
            break;
        heap_swap(h, i, m);
        i = m;
    }
}

/* Make room for one more waiting request, so that the push that follows
 * cannot fail after the request has left the running queue. */
static duet_status waiting_reserve(duet_scheduler *s)
{
    if (s->n_waiting < s->cap_waiting)
        return DUET_OK;
    int cap = s->cap_waiting ? 2 * s->cap_waiting : 16;
    wait_node *h = realloc(s->waiting, (size_t)cap * sizeof *h);
    if (!h)
        return duet_error(DUET_ERR_OUT_OF_MEMORY,
                          "scheduler: out of memory growing the waiting queue to %d", cap);
    s->waiting = h;
    s->cap_waiting = cap;
    return DUET_OK;
}

/* Queue r (after waiting_reserve); preempted selects the FCFS
 * front-of-queue key. */
static void waiting_push(duet_scheduler *s, duet_request *r, int preempted)
{
    assert(s->n_waiting < s->cap_waiting);
    wait_node n = {0, 0, r};
    if (s->opt.policy == DUET_SCHED_PRIORITY) {
        n.k1 = r->priority;
        n.k2 = (int64_t)r->seq_no;
    } else if (preempted) {
        n.k1 = 0;
        n.k2 = s->front_key--;
    } else {
        n.k1 = 1;
        n.k2 = (int64_t)r->seq_no;
    }
    s->waiting[s->n_waiting] = n;
    sift_up(s->waiting, s->n_waiting++);
}

static void waiting_remove_at(duet_scheduler *s, int i)
{
    s->n_waiting--;
    if (i == s->n_waiting)
        return;
    s->waiting[i] = s->waiting[s->n_waiting];
    sift_down(s->waiting, s->n_waiting, i);
    sift_up(s->waiting, i);
}

/* ---- running array ---- */

static int running_index(const duet_scheduler *s, const duet_request *r)
{
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i] == r)
            return i;
    return -1;
}

static void running_remove_at(duet_scheduler *s, int i)
{
    memmove(&s->running[i], &s->running[i + 1],
            (size_t)(s->n_running - i - 1) * sizeof s->running[0]);
    s->n_running--;
}

/* ---- lifecycle ---- */

duet_status duet_scheduler_create(const duet_scheduler_options *o, duet_kv_cache *kv,
                                  duet_scheduler **out)
{
    duet_status rc = DUET_OK;
    *out = NULL;
    if (o->max_num_seqs <= 0 || o->max_num_batched_tokens <= 0 ||
        o->long_prefill_token_threshold < 0)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "scheduler: max_num_seqs %d and max_num_batched_tokens %d must be > 0, "
                          "long_prefill_token_threshold %d must be >= 0",
                          o->max_num_seqs, o->max_num_batched_tokens,
                          o->long_prefill_token_threshold);
    if (o->policy != DUET_SCHED_FCFS && o->policy != DUET_SCHED_PRIORITY)
        return duet_error(DUET_ERR_INVALID_ARG, "scheduler: unknown policy %d", (int)o->policy);

    duet_scheduler *s = calloc(1, sizeof *s);
    if (!s)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "scheduler: out of memory");
    s->opt = *o;
    s->kv = kv;
    s->front_key = -1;
    s->running = calloc((size_t)o->max_num_seqs, sizeof *s->running);
    if (!s->running) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "scheduler: out of memory for %d running slots",
                        o->max_num_seqs);
        goto out_free_sched;
    }
    s->entries = calloc((size_t)o->max_num_seqs, sizeof *s->entries);
    if (!s->entries) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "scheduler: out of memory for %d step entries",
                        o->max_num_seqs);
        goto out_free_running;
    }
    *out = s;
    return DUET_OK;

out_free_running:
    free(s->running);
out_free_sched:
    free(s);
    return rc;
}

void duet_scheduler_free(duet_scheduler *s)
{
    if (!s)
        return;
    free(s->entries);
    free(s->waiting);
    free(s->running);
    free(s);
}

duet_status duet_scheduler_add(duet_scheduler *s, duet_request *r)
{
    assert(r->kv.n_blocks == 0 && r->n_tokens > 0 && r->n_tokens <= r->cap_tokens);
    duet_status rc = waiting_reserve(s);
    if (rc != DUET_OK)
        return rc;
    r->state = DUET_REQ_WAITING;
    r->finish = DUET_FINISH_NONE;
    r->n_computed = 0;
    waiting_push(s, r, 0);
    return DUET_OK;
}

/* Take r out of its queue. Returns -1 when no queue holds it. */
static int unqueue(duet_scheduler *s, duet_request *r)
{
    if (r->state == DUET_REQ_RUNNING) {
        int i = running_index(s, r);
        if (i < 0)
            return -1;
        running_remove_at(s, i);
        return 0;
    }
    if (r->state == DUET_REQ_WAITING) {
        for (int i = 0; i < s->n_waiting; i++) {
            if (s->waiting[i].req == r) {
                waiting_remove_at(s, i);
                return 0;
            }
        }
    }
    return -1;
}

void duet_scheduler_finish(duet_scheduler *s, duet_request *r, duet_finish_reason reason)
{
    int found = unqueue(s, r);
    assert(found == 0);
    (void)found;
    duet_kv_cache_free_seq(s->kv, &r->kv);
    r->state = DUET_REQ_FINISHED;
    r->finish = reason;
}

int duet_scheduler_abort(duet_scheduler *s, duet_request *r)
{
    if (unqueue(s, r) != 0)
        return -1;
    duet_kv_cache_free_seq(s->kv, &r->kv);
    r->state = DUET_REQ_FINISHED;
    r->finish = DUET_FINISH_ABORT;
    return 0;
}

/* ---- the step ---- */

/* Recompute-style preemption: drop the blocks and start over later. */
static duet_status preempt(duet_scheduler *s, int i)
{
    duet_status rc = waiting_reserve(s);
    if (rc != DUET_OK)
        return rc;
    duet_request *r = s->running[i];
    running_remove_at(s, i);
    duet_kv_cache_free_seq(s->kv, &r->kv);
    r->n_computed = 0;
    r->state = DUET_REQ_WAITING;
    r->n_preemptions++;
    s->n_preemptions++;
    waiting_push(s, r, 1);
    return DUET_OK;
}

/* The victim among running[first..): the newest, or with priority
 * scheduling the worst priority, newest first among equals. Requests
 * before first are already scheduled this step and are spared. */
static int pick_victim(const duet_scheduler *s, int first)
{
    int v = s->n_running - 1;
    if (s->opt.policy != DUET_SCHED_PRIORITY)
        return v;
    for (int j = v - 1; j >= first; j--) {
        const duet_request *a = s->running[j], *b = s->running[v];
        if (a->priority > b->priority || (a->priority == b->priority && a->seq_no > b->seq_no))
            v = j;
    }
    return v;
}

static int cap_tokens(const duet_scheduler *s, int n, int budget)
{
    int t = s->opt.long_prefill_token_threshold;
    if (t > 0 && n > t)
        n = t;
    return n < budget ? n : budget;
}

/* A prompt_rows request in its prompt needs a logit row per token: cap its
 * chunk by what is left of the step's row budget. */
static int cap_prompt_rows(const duet_request *r, int n, int rows_left)
{
    if (!r->prompt_rows || r->n_computed >= r->n_prompt)
        return n;
    return n < rows_left ? n : rows_left;
}

static void take_prompt_rows(const duet_request *r, int n, int *rows_left)
{
    if (r->prompt_rows && r->n_computed < r->n_prompt)
        *rows_left -= n;
}

static void add_entry(duet_sched_output *out, duet_request *r, int n)
{
    duet_sched_entry *e = &out->entries[out->n_entries++];
    e->req = r;
    e->start = r->n_computed;
    e->n_tokens = n;
    e->sample = r->n_computed + n == r->n_tokens;
    out->n_tokens += n;
}

/* (1) Running requests first, each growing by its next chunk; preempt
 * from the back until the KV pool can hold it. */
static duet_status schedule_running(duet_scheduler *s, duet_sched_output *out, int *budget,
                                    int *rows_left)
{
    duet_status rc = DUET_OK;
    for (int i = 0; i < s->n_running && *budget > 0; i++) {
        duet_request *r = s->running[i];
        int n = cap_prompt_rows(r, cap_tokens(s, duet_request_pending(r), *budget), *rows_left);
        if (n <= 0)
            continue; /* no sampled token appended yet, or no rows left */
        int want = r->n_computed + n;
        while (!duet_kv_cache_can_allocate(s->kv, &r->kv, want)) {
            int v = pick_victim(s, i);
            int self_preempted = v == i;
            rc = preempt(s, v);
            if (rc != DUET_OK)
                return rc;
            out->n_preempted++;
            if (self_preempted)
                return DUET_OK;
        }
        /* Grow the block table here, where host OOM can still be reported. */
        rc = duet_kv_cache_reserve(s->kv, &r->kv, want);
        if (rc != DUET_OK)
            return rc;
        duet_kv_cache_allocate(s->kv, &r->kv, want, 0);
        take_prompt_rows(r, n, rows_left);
        add_entry(out, r, n);
        *budget -= n;
    }
    return DUET_OK;
}

/* (2) Admit waiting requests in queue order. The head blocks the rest when
 * it does not fit, so a large request is not starved by smaller ones. */
static duet_status admit_waiting(duet_scheduler *s, duet_sched_output *out, int *budget,
                                 int *rows_left)
{
    while (s->n_waiting > 0 && s->n_running < s->opt.max_num_seqs && *budget > 0) {
        duet_request *r = s->waiting[0].req;
        assert(r->kv.n_blocks == 0 && r->n_computed == 0);
        /* Every attempt looks up afresh: a hit found earlier may have been
         * evicted since. Lookup also reserves the block table. */
        int cached = 0;
        if (r->prompt_rows) /* every prompt token's logits are wanted */
            cached = duet_kv_cache_reserve(s->kv, &r->kv, r->n_tokens) ? -1 : 0;
        else
            cached = duet_kv_cache_lookup(s->kv, &r->kv, r->tokens, r->n_tokens);
        if (cached < 0)
            return duet_error(DUET_ERR_OUT_OF_MEMORY,
                              "scheduler: out of memory looking up a %d-token prompt",
                              r->n_tokens);
        int pending = r->n_tokens - cached;
        int n;
        if (s->opt.enable_chunked_prefill) {
            n = cap_tokens(s, pending, *budget);
        } else {
            if (pending > *budget)
                break; /* whole prompts only: wait for a step with room */
            n = pending;
        }
        n = cap_prompt_rows(r, n, *rows_left);
        if (n <= 0 || !duet_kv_cache_can_allocate(s->kv, &r->kv, cached + n))
            break;
        /* Queries count the tokens looked up (the prompt on the first
         * admission, the whole context after a preemption). */
        duet_kv_cache_allocate(s->kv, &r->kv, cached + n, r->prompt_rows ? 0 : r->n_tokens);
        r->n_computed = cached;
        r->n_cached_prompt = cached < r->n_prompt ? cached : r->n_prompt;
        r->state = DUET_REQ_RUNNING;
        waiting_remove_at(s, 0);
        s->running[s->n_running++] = r;
        take_prompt_rows(r, n, rows_left);
        add_entry(out, r, n);
        *budget -= n;
    }
    return DUET_OK;
}

duet_status duet_scheduler_schedule(duet_scheduler *s, duet_sched_output *out)
{
    int budget = s->opt.max_num_batched_tokens, rows_left = s->opt.max_prompt_rows;
    out->entries = s->entries;
    out->n_entries = 0;
    out->n_tokens = 0;
    out->n_preempted = 0;

    duet_status rc = schedule_running(s, out, &budget, &rows_left);
    if (rc != DUET_OK)
        return rc;
    /* After a preemption the pool is short: admitting now would only
     * preempt again next step. */
    if (out->n_preempted == 0)
        rc = admit_waiting(s, out, &budget, &rows_left);
    return rc;
}

duet_status duet_scheduler_update(duet_scheduler *s, const duet_sched_output *out)
{
    for (int i = 0; i < out->n_entries; i++) {
        const duet_sched_entry *e = &out->entries[i];
        duet_request *r = e->req;
        if (r->state != DUET_REQ_RUNNING)
            continue; /* aborted while the step ran: its blocks are gone */
        assert(r->n_computed == e->start);
        r->n_computed += e->n_tokens;
        duet_status rc = duet_kv_cache_commit(s->kv, &r->kv, r->tokens, r->n_computed);
        if (rc != DUET_OK)
            return rc;
    }
    return DUET_OK;
}

int duet_scheduler_has_work(const duet_scheduler *s)
{
    return s->n_running > 0 || s->n_waiting > 0;
}

void duet_scheduler_get_stats(const duet_scheduler *s, duet_scheduler_stats *out)
{
    out->n_running = s->n_running;
    out->n_waiting = s->n_waiting;
    out->n_preemptions = s->n_preemptions;
}
