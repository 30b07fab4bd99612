/*
 * request.h — one generation request as the scheduler and the engine see
 * it: its tokens (prompt, then output), how many of them have their K/V in
 * the cache, its hold on the KV cache, and its lifecycle state.
 */
#ifndef DUET_REQUEST_H
#define DUET_REQUEST_H

#include <stdint.h>

#include "kv_cache.h"

typedef enum duet_request_state {
    DUET_REQ_WAITING = 0,  /* queued (new, or preempted and to be recomputed) */
    DUET_REQ_RUNNING = 1,  /* holds blocks; scheduled each step */
    DUET_REQ_FINISHED = 2, /* done; blocks freed */
} duet_request_state;

typedef enum duet_finish_reason {
    DUET_FINISH_NONE = 0,
    DUET_FINISH_STOP = 1,   /* end-of-generation or stop token */
    DUET_FINISH_LENGTH = 2, /* max_tokens or max_model_len reached */
    DUET_FINISH_ABORT = 3,  /* aborted by the client */
} duet_finish_reason;

typedef struct duet_request {
    uint64_t seq_no;       /* arrival order, unique; FCFS tie-break */
    int priority;          /* lower = sooner (vLLM's convention) */
    int32_t *tokens;       /* [n_tokens]: prompt, then generated tokens */
    int n_prompt, n_tokens, cap_tokens;
    int n_computed;        /* leading tokens whose K/V is in the cache */
    int max_tokens;        /* generated tokens allowed */
    int n_cached_prompt;   /* prompt tokens served by the prefix cache at
                              the last admission (for usage reporting) */
    int n_preemptions;
    int prompt_rows;       /* 1 = every computed prompt token needs a logit
                              row (prompt logprobs): prefix-cache reads are
                              skipped and prefill chunks are capped by the
                              scheduler's max_prompt_rows */
    duet_kv_seq kv;
    duet_request_state state;
    duet_finish_reason finish;
    void *owner;           /* the engine's per-request data */
} duet_request;

/* Tokens the request still has to feed through the model. */
static inline int duet_request_pending(const duet_request *r) { return r->n_tokens - r->n_computed; }

#endif
