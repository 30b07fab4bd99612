/*
 * cpu_ops.h — the CPU backend's kernels (internal to backends/cpu).
 *
 * cpu_backend.c resolves every {buffer, offset} operand to a host pointer
 * at execution time and hands the kernels these plain structs, so the
 * kernels know nothing about buffers or streams.
 *
 * Two sets of kernels with the same meaning:
 *  - *_ref (ops_ref.c): plain C, single-threaded, accumulating in double.
 *    The oracle for the fast path and for the other backends.
 *  - *_fast (ops_avx2.c): AVX2/FMA/F16C, split across the pool. Every
 *    split is over independent rows (tokens, heads), never over a
 *    reduction, and every reduction has a fixed order, so a row's result
 *    does not depend on the other rows in the op or on the thread count
 *    (batch invariance).
 * Within each set, rope and kv_write's fused rotation call one rotation
 * routine, so rope(q, k) + kv_write(k) and kv_write(k, rope) store the
 * same bits.
 *
 * Bad indices found in device memory (the wrappers cannot see it) never
 * cause an out-of-bounds access; they are made visible instead:
 *  - embed: an id -1-i with i < n_prev reads prev[i] instead; an id
 *    (after that) outside [0, vocab) gives a row of NaN;
 *  - gather_rows: a row outside [0, n_in) gives a row of NaN;
 *  - kv_write: a slot outside [0, num_blocks * block_size) is skipped
 *    like -1;
 *  - attention: NaN rows for every token if query_start_loc is not
 *    non-decreasing within [0, n_tokens]; for tokens outside
 *    [query_start_loc[0], query_start_loc[n_seqs]) (padding); for the
 *    tokens of a sequence with seq_len < q_len, seq_len above a nonzero
 *    max_seq_len or a context needing more than max_blocks_per_seq
 *    blocks; and for the query heads whose context
 *    reads a block id outside [0, num_blocks).
 *
 * The fast attention kernel handles head_dim a multiple of 8 up to 256 and
 * up to 16 query heads per kv head; other shapes run the reference kernel.
 */
#ifndef DUET_CPU_OPS_H
#define DUET_CPU_OPS_H

#include <stdint.h>

#include "dtype.h"
#include "threadpool.h"

typedef struct cpu_embed {
    const int32_t *ids; /* [n_tokens] */
    const void *table;  /* [vocab][dim] of table_type */
    float *out;         /* [n_tokens][dim] */
    duet_dtype table_type;
    int n_tokens, vocab, dim;
    const int32_t *prev; /* [n_prev]: id -1-i means prev[i]; may be NULL */
    int n_prev;
} cpu_embed;

typedef struct cpu_rms_norm {
    float *x;              /* [n_rows][dim]; x += residual first when given */
    const float *weight;   /* [dim] */
    float *out;            /* [n_rows][dim], may equal x or residual */
    const float *residual; /* [n_rows][dim] or NULL */
    int n_rows, dim;
    float eps;
} cpu_rms_norm;

/* duet_rope_spec with host pointers. */
typedef struct cpu_rope_spec {
    const int32_t *positions;   /* [n_tokens]; kv_write: NULL = no rotation */
    const float *freq_factors;  /* [rot_dim/2] or NULL */
    int rot_dim, neox;
    float theta_base;
} cpu_rope_spec;

typedef struct cpu_rope {
    float *q;                   /* [n_tokens][n_heads][head_dim] */
    float *k;                   /* [n_tokens][n_kv_heads][head_dim] or NULL */
    cpu_rope_spec r;
    int n_tokens, n_heads, n_kv_heads, head_dim;
} cpu_rope;

typedef struct cpu_kv_write {
    const float *k, *v;           /* [n_tokens][n_kv_heads][head_dim] */
    const int32_t *slot_mapping;  /* [n_tokens] */
    void *k_cache, *v_cache;      /* [num_blocks][block_size][n_kv_heads][head_dim] */
    cpu_rope_spec rope;           /* k stored rotated when rope.positions */
    duet_dtype cache_type;        /* F32 or F16 */
    int n_tokens, n_kv_heads, head_dim, num_blocks, block_size;
} cpu_kv_write;

typedef struct cpu_attention {
    const float *q;                /* [n_tokens][n_heads][head_dim] */
    const void *k_cache, *v_cache; /* [num_blocks][block_size][n_kv_heads][head_dim] */
    const int32_t *block_tables;   /* [n_seqs][max_blocks_per_seq] */
    const int32_t *seq_lens;       /* [n_seqs] */
    const int32_t *query_start_loc; /* [n_seqs + 1] */
    float *out;                    /* [n_tokens][n_heads][head_dim] */
    duet_dtype cache_type;
    int n_tokens, n_seqs, n_heads, n_kv_heads, head_dim;
    int num_blocks, block_size, max_blocks_per_seq;
    float scale;
    int max_seq_len;               /* 0 = none; a longer seq_len is bad */
} cpu_attention;

typedef struct cpu_swiglu {
    const float *gate, *up; /* [n_rows][dim] */
    float *out;             /* [n_rows][dim], may equal gate */
    int n_rows, dim;
} cpu_swiglu;

typedef struct cpu_add {
    float *a;       /* [n], a += b */
    const float *b; /* [n] */
    int64_t n;
} cpu_add;

typedef struct cpu_gather_rows {
    const float *x;      /* [n_in][dim] */
    const int32_t *rows; /* [n_out] */
    float *out;          /* [n_out][dim] */
    int n_in, n_out, dim;
} cpu_gather_rows;

/* Attention batch metadata checks shared by both kernels.
 * qsl_ok: query_start_loc is non-decreasing from >= 0 to <= n_tokens (so
 * the sequences' token ranges are disjoint); when it is not, every output
 * is NaN. seq_ok: sequence s has 0 <= q_len <= seq_len, seq_len within a
 * nonzero max_seq_len, and its context fits in max_blocks_per_seq blocks. */
int duet_cpu_attention_qsl_ok(const cpu_attention *a);
int duet_cpu_attention_seq_ok(const cpu_attention *a, int s);
/* Fill rows [lo, hi) of [n][width] floats with NaN. */
void duet_cpu_fill_nan(float *x, int64_t lo, int64_t hi, int64_t width);

void duet_cpu_embed_ref(const cpu_embed *a);
void duet_cpu_rms_norm_ref(const cpu_rms_norm *a);
void duet_cpu_rope_ref(const cpu_rope *a);
void duet_cpu_kv_write_ref(const cpu_kv_write *a);
void duet_cpu_attention_ref(const cpu_attention *a);
void duet_cpu_swiglu_ref(const cpu_swiglu *a);
void duet_cpu_add_ref(const cpu_add *a);
void duet_cpu_gather_rows_ref(const cpu_gather_rows *a);

/* Fast kernels, same contracts. pool may be NULL (one thread). */
void duet_cpu_embed_fast(duet_threadpool *pool, const cpu_embed *a);
void duet_cpu_rms_norm_fast(duet_threadpool *pool, const cpu_rms_norm *a);
void duet_cpu_rope_fast(duet_threadpool *pool, const cpu_rope *a);
void duet_cpu_kv_write_fast(duet_threadpool *pool, const cpu_kv_write *a);
void duet_cpu_attention_fast(duet_threadpool *pool, const cpu_attention *a);
void duet_cpu_swiglu_fast(duet_threadpool *pool, const cpu_swiglu *a);
void duet_cpu_add_fast(duet_threadpool *pool, const cpu_add *a);
void duet_cpu_gather_rows_fast(duet_threadpool *pool, const cpu_gather_rows *a);

#endif /* DUET_CPU_OPS_H */
