/*
 * conform.h — `duet conform`: every op of the device interface run on two
 * backends over a fixed set of shapes and weight types, compared by NMSE.
 *
 * conform.c owns the command line, the runner (buffers, poisoning, the
 * comparison) and the report; conform_ops.c owns the cases — the inputs
 * and how each op is recorded. Adding an op means adding a case there.
 */
#ifndef DUET_CONFORM_H
#define DUET_CONFORM_H

#include <stddef.h>

#include "device.h"

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

/* Comma-separated op names the cases use (for --help and --ops checks). */
extern const char *const conform_op_names[];

#endif
