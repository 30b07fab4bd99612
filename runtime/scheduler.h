/*
 * scheduler.h — which requests run in the next step, and with how many
 * tokens each. Policy only: it moves requests between queues and asks the
 * KV manager for blocks; it never touches the device.
 *
 * The policy (vLLM V1's): a token budget per step (max_num_batched_tokens)
 * and at most max_num_seqs running requests. Running requests are served
 * first, in admission order: a decoding request takes 1 token, a request
 * still in its prompt takes the rest of it (chunked prefill: as much as
 * the budget and long_prefill_token_threshold allow). When the KV pool
 * cannot hold a running request's next tokens, the most recently admitted
 * running request (with priority scheduling: the one with the worst
 * priority, then the newest) is preempted: its blocks are freed, its
 * progress reset to 0 (recompute), and it goes back to the front of the
 * waiting queue. Then, if nothing was preempted this step, waiting
 * requests are admitted in order (FCFS, or priority then FCFS) while the
 * budget, max_num_seqs and the KV pool allow, their prompts first looked
 * up in the prefix cache so cached blocks are not recomputed.
 */
#ifndef DUET_SCHEDULER_H
#define DUET_SCHEDULER_H

#include "duet.h"
#include "kv_cache.h"
#include "request.h"

typedef struct duet_scheduler duet_scheduler;

typedef enum duet_sched_policy {
    DUET_SCHED_FCFS = 0,
    DUET_SCHED_PRIORITY = 1,
} duet_sched_policy;

typedef struct duet_scheduler_options {
    int max_num_seqs;                 /* > 0 */
    int max_num_batched_tokens;       /* > 0, token budget per step */
    int enable_chunked_prefill;       /* 0: a prompt is admitted only
                                         whole (then it must fit the budget) */
    int long_prefill_token_threshold; /* > 0 caps one request's tokens per
                                         step; 0 = no cap. Applies only
                                         with chunked prefill */
    duet_sched_policy policy;
    int max_prompt_rows;              /* per step, prompt tokens of
                                         prompt_rows requests (their logit
                                         rows); 0 = no such requests run */
} duet_scheduler_options;

/* One request's part of a step. */
typedef struct duet_sched_entry {
    duet_request *req;
    int start;       /* = req->n_computed when scheduled: first position */
    int n_tokens;    /* tokens to compute this step, >= 1 */
    int sample;      /* 1 when this chunk reaches the end of the known
                        tokens, so the step yields the next token */
} duet_sched_entry;

typedef struct duet_sched_output {
    duet_sched_entry *entries; /* running order; owned by the scheduler,
                                  valid until the next schedule call */
    int n_entries;
    int n_tokens;              /* sum of entries' n_tokens */
    int n_preempted;           /* requests preempted by this call */
} duet_sched_output;

typedef struct duet_scheduler_stats {
    int n_running, n_waiting;
    uint64_t n_preemptions;   /* since creation */
} duet_scheduler_stats;

/* kv is borrowed and must outlive the scheduler. On failure *out is NULL. */
duet_status duet_scheduler_create(const duet_scheduler_options *o, duet_kv_cache *kv,
                                  duet_scheduler **out);
void duet_scheduler_free(duet_scheduler *s);

/* Queue a request (state WAITING, n_computed 0, holding no blocks). The
 * caller keeps ownership of r and must not free it before it finishes or
 * is aborted. Fails only for out of memory. */
duet_status duet_scheduler_add(duet_scheduler *s, duet_request *r);

/* Remove r from whichever queue holds it, free its blocks, mark it
 * FINISHED with reason DUET_FINISH_ABORT. Returns 0, or -1 if r is not
 * queued (already finished). */
int duet_scheduler_abort(duet_scheduler *s, duet_request *r);

/* Decide the next step. Fails only for out of memory; may schedule
 * nothing (n_entries 0) when there is no work or nothing fits. A waiting
 * request whose whole context cannot fit the empty KV pool is never
 * admitted (and, at the head of the queue, holds up the rest): the caller
 * must reject such requests at submission — and, without chunked
 * prefill, contexts longer than max_num_batched_tokens, since a
 * preempted request is recomputed whole. */
duet_status duet_scheduler_schedule(duet_scheduler *s, duet_sched_output *out /* OUT */);

/* After the step ran: advance each entry's n_computed by its n_tokens and
 * register the newly full blocks in the prefix cache. The engine then
 * appends sampled tokens (duet_request tokens) itself. Entries whose
 * request was aborted since the schedule call are skipped (the request
 * must still be allocated). Fails only for out of memory. */
duet_status duet_scheduler_update(duet_scheduler *s, const duet_sched_output *out);

/* Mark a running request finished (reason given): it leaves the running
 * queue and its blocks are freed. */
void duet_scheduler_finish(duet_scheduler *s, duet_request *r, duet_finish_reason reason);

int duet_scheduler_has_work(const duet_scheduler *s);
/* (Not duet_scheduler_stats: that name is the type.) */
void duet_scheduler_get_stats(const duet_scheduler *s, duet_scheduler_stats *out);

#endif
