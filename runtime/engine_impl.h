/*
 * engine_impl.h — the engine's state, shared by engine.c (the step loop),
 * engine_req.c (requests: parameters, sampling edits, output text) and
 * engine_create.c (KV sizing, construction). Internal.
 */
#ifndef DUET_ENGINE_IMPL_H
#define DUET_ENGINE_IMPL_H

#include <pthread.h>

#include "device.h"
#include "duet_internal.h"
#include "request.h"
#include "scheduler.h"
#include "stop_strings.h"

enum {
    ENGINE_ID_MAX = 96,
    ENGINE_MAX_PENDING_ABORTS = 1024,
    ENGINE_PROMPT_ROWS = 128, /* prompt-logprob rows per step */
};

/* A request as the engine holds it: the scheduler's part plus sampling
 * parameters, the output callback and the text state. A request with n
 * parallel samples is n engine_reqs with the same id and index 0..n-1;
 * indices 1..n-1 wait (deferred) until index 0 has computed its prompt, so
 * they find it in the prefix cache. */
typedef struct engine_req {
    duet_request base;
    char id[ENGINE_ID_MAX];
    int index;                    /* parallel sample index */
    struct engine_req *leader;    /* deferred: index 0, until released */
    duet_request_params p;        /* copy; its pointers are not kept */
    uint64_t seed;
    int32_t *stop_ids;
    int n_stop_ids;

    /* Sampling edits: one per distinct token touched (prompt tokens under
     * a repetition penalty, generated tokens under any penalty, logit bias,
     * tokens banned until min_tokens). */
    duet_sample_edit *edits;
    unsigned char *min_mask;      /* [n_edits] 1 = banned until min_tokens */
    int n_edits, cap_edits;
    int32_t *edit_slot;           /* open addressing: token -> edit index */
    int slot_cap;                 /* power of two, 0 = no table */
    int count_output;             /* frequency/presence/repetition active */

    duet_stop_matcher stop;
    duet_utf8_stream utf8;
    duet_logprobs *prompt_lp;     /* [n_prompt - 1] with prompt logprobs */
    int n_prompt_lp_done;         /* entries filled so far */
    int prompt_lp_sent;
    double t_arrival, t_scheduled, t_first_token;
    /* Async scheduling: the token sampled by an in-flight step is in
     * tokens[] as a placeholder at placeholder_pos (-1 = none), to be
     * computed next step from the device's copy (logit row
     * placeholder_row). */
    int placeholder_pos, placeholder_row;
    uint64_t last_step;           /* the last step id that included it */
    int finished;                 /* done; freed once no step holds it */

    duet_output_cb cb;
    void *user;
} engine_req;

/* Build a request (validated params, prompt copied). */
duet_status engine_req_create(duet_engine *e, const int32_t *prompt, size_t n,
                              const duet_request_params *p, int index, duet_output_cb cb,
                              void *user, engine_req **out);
/* Free a request's memory (its blocks must already be released). */
void engine_req_free(engine_req *q);
/* Count a generated token in the request's edits (penalties). Returns
 * DUET_ERR_OUT_OF_MEMORY if the table cannot grow. */
duet_status engine_req_count_token(engine_req *q, int32_t tok);
/* Append q's edits for this step to e->step_edits; fills row's range. */
duet_status engine_req_emit_edits(duet_engine *e, engine_req *q, duet_sample_row *row);

/* What a logit row of the step is for. */
typedef struct engine_row {
    engine_req *req;
    int prompt_index;             /* >= 0: prompt-logprob entry; -1: sample */
} engine_row;

/* A submitted step, until its results are processed. */
typedef struct engine_step {
    uint64_t id;
    int buf;                      /* which of the double buffers */
    int n_rows;
} engine_step;

struct duet_engine {
    duet_model *model;
    duet_kv_cache *kv;
    duet_scheduler *sched;
    duet_runner *runner;
    int block_size, max_model_len, max_blocks_per_seq, max_num_seqs, max_batched;
    int max_logit_rows;
    int32_t *eog_ids;             /* end-of-generation tokens (min_tokens bans) */
    int n_eog;
    int prefix_caching;
    int return_logits;
    int async;                    /* async scheduling (default on) */
    uint64_t seed_base;
    char kv_summary[256];

    /* Shared with other threads, under inbox_lock: new requests, pending
     * aborts, and the lists of active and deferred requests (id lookups). */
    pthread_mutex_t inbox_lock;
    engine_req **inbox;
    int n_inbox, cap_inbox;
    char (*aborts)[ENGINE_ID_MAX];
    int n_aborts;
    engine_req **active;          /* in the scheduler */
    int n_active, cap_active;
    engine_req **deferred;        /* parallel samples waiting for index 0 */
    int n_deferred, cap_deferred;
    uint64_t next_seq_no;

    /* Step buffers (host): the flattened batch and the sampling rows. */
    int32_t *tok, *pos, *slots;    /* [max_batched] */
    int32_t *qsl;                  /* [max_num_seqs + 1] */
    int32_t *seq_lens;             /* [max_num_seqs] */
    int32_t *rows;                 /* [max_logit_rows] */
    int32_t *tables;               /* [max_num_seqs][max_blocks_per_seq] */
    duet_sample_row *sample_rows;  /* [max_logit_rows] */
    duet_sample_edit *step_edits;
    int n_step_edits, cap_step_edits;
    /* Double-buffered: step N's are read while step N+1's are filled. */
    engine_row *row_info[2];       /* [max_logit_rows] */
    duet_sample_result *results[2];/* [max_logit_rows] */
    float *logits[2];              /* [max_logit_rows][vocab], return_logits */
    int cur;                       /* the buffer the next step fills */
    engine_step inflight;          /* valid when has_inflight */
    int has_inflight;
    uint64_t next_step_id;        /* ids start at 1 */
    uint64_t done_step;           /* the last step whose results are processed */
    engine_req **zombies;          /* finished, still held by a step */
    int n_zombies, cap_zombies;
    char text_buf[4096];

    /* Counters. */
    uint64_t steps, prompt_tokens, generation_tokens, n_aborted, step_tokens;
};

#endif
