/*
 * duet_internal.h — what the public API's objects hold. Only the runtime's .c files
 * and tests include it; programs use include/duet.h.
 */
#ifndef DUET_INTERNAL_H
#define DUET_INTERNAL_H

#include "device.h"
#include "duet.h"
#include "gguf.h"
#include "kv_cache.h"
#include "model.h"
#include "tokenizer.h"

struct duet_model {
    duet_gguf *gguf;           /* the mapped file; weights point into it */
    void *image;               /* a dummy model's in-memory GGUF, or NULL */
    duet_model_config config;  /* immutable after load */
    duet_tokenizer *tokenizer;
    duet_device *dev;
    char device_name[160];     /* "cpu: CPU (2 threads, ...)" */
    duet_model_weights weights;
};

struct duet_session {
    duet_model *model;
    duet_runner *runner;
    duet_kv_cache *kv;
    int max_context;     /* tokens */
    duet_kv_seq seq;     /* the one sequence's blocks */
    int32_t *table;      /* [max_blocks_per_seq] seq's blocks, 0-padded */
    int32_t *meta;       /* per-call positions, slots, logit rows */
    float *logits;       /* [max_logit_rows][vocab] host copy */
};

#endif
