/*
 * conform.h — `duet conform`: every op of the device interface run on two
 * backends over a fixed set of shapes and weight types, compared by NMSE;
 * then, given a model, the model end to end on both backends.
 *
 * conform.c owns the command line, the runner (buffers, poisoning, the
 * comparison) and the report; conform_ops.c owns the cases — the inputs
 * and how each op is recorded. Adding an op means adding a case there.
 * conform_model.c owns the end-to-end rows (model.logits, model.top1,
 * model.greedy, model.sampled).
 */
#ifndef DUET_CONFORM_H
#define DUET_CONFORM_H

#include <stddef.h>

#include "device.h"
#include "duet.h"

enum { CONFORM_MAX_BUFS = 10 };

typedef enum conform_role {
    CONFORM_IN = 0,    /* written before the op, not compared */
    CONFORM_OUT = 1,   /* poisoned (all bits set: NaN / -1) first; every
                          element must be written */
    CONFORM_INOUT = 2, /* written before the op (NULL host = poisoned) and
                          compared after it; NaN positions must agree */
} conform_role;

typedef enum conform_cmp {
    CONFORM_CMP_F32 = 0,
    CONFORM_CMP_F16 = 1,    /* IEEE halves (an F16 KV cache) */
    CONFORM_CMP_I32 = 2,    /* exact; -1 (the poison) counts as unwritten */
    CONFORM_CMP_SAMPLE = 3, /* duet_sample_result[]: tokens, ranks, logprobs */
} conform_cmp;

typedef struct conform_buf {
    const void *host; /* initial contents; NULL = poisoned */
    size_t bytes;
    conform_role role;
    conform_cmp cmp;
} conform_buf;

/* Record the op on d into s; b[i] holds bufs[i] of the case. */
typedef duet_status (*conform_record_fn)(duet_device *d, duet_stream *s,
                                         duet_buffer *const *b, const void *params);

typedef struct conform_case {
    const char *op;     /* "matmul" */
    char shape[64];     /* "rows=7 k=512 n=96 bias" */
    const char *type;   /* "Q4_K", "F32", ... */
    double threshold;   /* NMSE limit; 0 = exact */
    conform_buf bufs[CONFORM_MAX_BUFS];
    int n_bufs;
    conform_record_fn record;
    const void *params; /* the op's argument struct, addresses left to record */
} conform_case;

typedef struct conform_run conform_run; /* conform.c */

/* Run one case on both backends (unless --ops/--filter exclude it) and
 * record its row. Fails only when a backend fails for a reason other than
 * an op it does not have (that row is a SKIP). */
duet_status conform_case_run(conform_run *r, const conform_case *c);

/* Every case, in table order; stops at the first error. */
duet_status conform_ops_run_all(conform_run *r, unsigned seed);

/* ---- rows computed outside conform_case_run (the model part) ---------- */

typedef enum conform_status { CONFORM_PASS = 0, CONFORM_FAIL = 1, CONFORM_SKIP = 2 } conform_status;

typedef struct conform_result {
    const char *op;     /* "model.logits" */
    const char *metric; /* what value measures: "nmse", "top1_mismatch", ... */
    char shape[64];     /* "6 prompts, 412 positions" */
    char type[8];       /* weight type, or "gguf" */
    double value;       /* ignored for a SKIP */
    double threshold;   /* the limit value must not exceed */
    conform_status status;
    char note[200];
} conform_result;

/* Whether --ops/--filter select a row: --ops names the op or its group
 * (the part before '.', so "model" selects every model row). */
int conform_selected(const conform_run *r, const char *op, const char *shape, const char *type);
/* Record and print a row. Fails only when out of host memory. */
duet_status conform_row_add(conform_run *r, const conform_result *res);
/* The spec of backend k (0 = the reference), as given: "cpu-ref", "vulkan". */
const char *conform_backend(const conform_run *r, int k);

typedef struct conform_model_opts {
    const char *path;            /* GGUF file, or the dummy shape (preset or config.json) */
    const char *path2;           /* the second backend's model instead; NULL = path */
    duet_model_options source;   /* load_format, dummy_dtype, dummy_seed */
    int n_prompts;               /* fixture prompts to use (1..all) */
    int n_gen;                   /* tokens generated per prompt */
    int n_threads;               /* CPU backend threads; 0 = all cores */
} conform_model_opts;

/* Load the model on both backends and add the model rows. *n_validation
 * gets the Vulkan validation messages the model's devices reported. Fails
 * when the model cannot be loaded or a backend fails for a reason other
 * than a missing op (message set). */
duet_status conform_model_run_all(conform_run *r, const conform_model_opts *o,
                                  int *n_validation /* OUT */);

/* Comma-separated op names the cases use (for --help and --ops checks). */
extern const char *const conform_op_names[];

#endif
