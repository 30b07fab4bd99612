/*
 * engine_impl.h — the engine's state, shared by engine.c (the step loop)
 * and engine_create.c (KV sizing, construction). Internal.
 */
#ifndef DUET_ENGINE_IMPL_H
#define DUET_ENGINE_IMPL_H

#include <pthread.h>

#include "duet_internal.h"
#include "request.h"
#include "scheduler.h"

enum { ENGINE_ID_MAX = 96, ENGINE_MAX_PENDING_ABORTS = 1024 };

/* A request as the engine holds it: the scheduler's part plus sampling
 * parameters, the output callback and the detokenizer state. */
typedef struct engine_req {
    duet_request base;
    char id[ENGINE_ID_MAX];
    float temperature;
    uint64_t seed;
    int ignore_eos;
    int32_t *stop_ids;
    int n_stop_ids;
    duet_output_cb cb;
    void *user;
    duet_utf8_stream utf8;
} engine_req;

/* Free a request's memory (its blocks must already be released). */
void engine_req_free(engine_req *q);

struct duet_engine {
    duet_model *model;
    duet_kv_cache *kv;
    duet_scheduler *sched;
    duet_runner *runner;
    int block_size, max_model_len, max_blocks_per_seq, max_num_seqs, max_batched;
    int return_logits;
    uint64_t seed_base;
    char kv_summary[256];

    /* Shared with other threads, under inbox_lock: new requests, pending
     * aborts, and the list of active requests (for id lookups). */
    pthread_mutex_t inbox_lock;
    engine_req **inbox;
    int n_inbox, cap_inbox;
    char (*aborts)[ENGINE_ID_MAX];
    int n_aborts;
    engine_req **active;
    int n_active, cap_active;
    uint64_t next_seq_no;

    /* Step buffers (host): the flattened batch. */
    int32_t *tok, *pos, *slots;    /* [max_batched] */
    int32_t *qsl;                  /* [max_num_seqs + 1] */
    int32_t *seq_lens, *rows;      /* [max_num_seqs] */
    int32_t *tables;               /* [max_num_seqs][max_blocks_per_seq] */
    float *logits;                 /* [max_num_seqs][vocab] */
    char text_buf[4096];

    /* Counters. */
    uint64_t steps, prompt_tokens, generation_tokens, n_aborted;
};

#endif
