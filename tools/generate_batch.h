/*
 * generate_batch.h — `duet generate --prompts-file`: offline batch runs
 * through the engine.
 */
#ifndef DUET_GENERATE_BATCH_H
#define DUET_GENERATE_BATCH_H

#include <stdint.h>

#include "duet.h"

typedef struct batch_opts {
    const char *prompts_file;  /* one prompt per line, or JSONL */
    const char *output;        /* NULL = stdout */
    int max_tokens;            /* defaults for lines that do not say */
    float temperature, top_p, min_p;
    int top_k;
    uint64_t seed;
    int ignore_eos;
    int parse_special;
    int stats;
} batch_opts;

/* Run every prompt of the file; 0 on success, 1 after printing an error. */
int generate_batch(duet_model *m, const batch_opts *bo, const duet_engine_options *eo);

#endif
