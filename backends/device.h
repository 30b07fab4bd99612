/*
 * device.h — the device interface: the one boundary between the
 * backend-neutral runtime and a backend (CPU, Vulkan, CUDA).
 *
 * A backend implements duet_device_ops, a versioned table of function
 * pointers plus a void *ctx (like sqlite3_io_methods). The runtime never
 * calls a slot directly: it calls the duet_dev_* wrappers below, which check
 * arguments, and in test builds can fail the Nth call so a test can walk
 * every cleanup path (duet_dev_fault_inject).
 *
 * Memory is addressed as {buffer, offset} (duet_addr), never by raw
 * pointers, so a backend whose memory is not host-addressable (Vulkan) need
 * not fake them. Ops are recorded into a stream and run when the stream is
 * submitted; duet_dev_stream_wait() blocks until the stream is done. A whole
 * engine step is one recording, so a backend can batch it (one command
 * buffer, one graph launch).
 *
 * Tensor layouts (row-major, the last index fastest):
 *   activations      F32 on the CPU backend; [T][E] etc. as given per op
 *   KV cache, 1 layer [num_blocks][block_size][n_kv_heads][head_dim], for K
 *                     and for V, element type F32 or F16
 *   slot_mapping[t]  = block * block_size + offset; -1 = skip the token
 *   block_tables     [S][max_blocks_per_seq] int32 block ids
 *   query_start_loc  [S+1] int32: tokens of sequence s are rows
 *                     query_start_loc[s] .. query_start_loc[s+1]-1
 *   seq_lens         [S] int32: context length of s after this step's tokens
 *                     are written, so the query tokens of s sit at positions
 *                     seq_lens[s] - q_len .. seq_lens[s] - 1
 *
 * Ops never fail for data reasons; argument errors are caught by the
 * wrappers. A failure of the device itself surfaces at submit or wait.
 *
 * Order: the streams of a device run one at a time, in the order they
 * were submitted (one queue). So the engine can record and submit step
 * N+1 on a second stream while step N runs, and step N+1 sees all of step
 * N's writes.
 */
#ifndef DUET_DEVICE_H
#define DUET_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "duet.h"
#include "dtype.h"

/* 3: the fused forms (rms_norm residual, matmul w_up, kv_write rope);
 * 4: attention's max_seq_len bound. */
#define DUET_DEVICE_OPS_VERSION 4

typedef struct duet_buffer duet_buffer; /* backend-defined */
typedef struct duet_stream duet_stream; /* backend-defined */

typedef struct duet_addr {
    duet_buffer *buf; /* NULL = "absent" for optional operands */
    size_t offset;    /* bytes from the start of buf */
} duet_addr;

typedef struct duet_device_info {
    char name[128];     /* "CPU (2 threads, AVX2+FMA+F16C)" */
    char backend[16];   /* "cpu", "vulkan", "cuda" */
    uint64_t mem_total; /* bytes of device memory; host RAM on CPU */
    uint64_t mem_free;
    int n_threads;      /* CPU: worker threads; GPU: 0 */
    uint64_t max_range; /* the most bytes of one buffer an op argument may
                           span (Vulkan: maxStorageBufferRange, aligned);
                           0 = no limit. The engine keeps one layer's K (or
                           V) cache within it. */
    uint64_t max_alloc; /* the largest buffer the device holds as one
                           allocation (Vulkan: maxMemoryAllocationSize, or
                           DUET_VK_MAX_ALLOC); a larger one costs more than
                           its size (overlapping chunks). 0 = no limit. The
                           model loader keeps each weight within it. */
} duet_device_info;

/* ---- op arguments ----------------------------------------------------- */

typedef struct duet_embed_args {
    duet_addr ids;   /* int32[n_tokens] */
    duet_addr table; /* [vocab][dim] of table_type */
    duet_addr out;   /* f32[n_tokens][dim] */
    duet_addr prev_tokens; /* optional int32[n_prev]: an id -1-i < 0 stands
                              for prev_tokens[i], a token sampled by an
                              earlier step still on the device (async
                              scheduling's placeholders) */
    duet_dtype table_type;
    int n_tokens, vocab, dim;
    int n_prev;
} duet_embed_args;

/* out = x / sqrt(mean(x^2) + eps) * weight, per row. With a residual, x
 * is first updated in place, x[r][i] = x[r][i] + residual[r][i] (the bits
 * of the add op), and the updated x is normed. */
typedef struct duet_rms_norm_args {
    duet_addr x;        /* f32[n_rows][dim]; written back when residual is given */
    duet_addr weight;   /* f32[dim] */
    duet_addr out;      /* f32[n_rows][dim]; may equal x or residual (same offset), no
                           other overlap with either */
    int n_rows, dim;
    float eps;
    duet_addr residual; /* optional f32[n_rows][dim] (buf NULL = none); must not
                           overlap x */
} duet_rms_norm_args;

typedef struct duet_matmul_args {
    duet_addr x;    /* f32[n_rows][k] */
    duet_addr w;    /* [n][k] of w_type: out = x . w^T */
    duet_addr bias; /* f32[n], optional (buf NULL = none) */
    duet_addr out;  /* f32[n_rows][n]; must not overlap x (nor w_up) */
    duet_dtype w_type;
    int n_rows, k, n;
    duet_addr w_up; /* [n][k] of w_type, optional (buf NULL = none): the
                       gated form, out = silu(x . w^T) * (x . w_up^T), with
                       exactly the bits of matmul(w), matmul(w_up), swiglu
                       on the same device; bias must be absent with it */
} duet_matmul_args;

typedef enum duet_rope_mode {
    DUET_ROPE_NORMAL = 0, /* rotate pairs (2i, 2i+1): Llama GGUF layout */
    DUET_ROPE_NEOX = 1,   /* rotate pairs (i, i + rot_dim/2) */
} duet_rope_mode;

/* Rotary embedding parameters, one meaning for rope and for kv_write's
 * fused rotation: pair i of the leading rot_dim dims of a head at position
 * p is rotated by the angle p * theta_base^(-2i/rot_dim) / freq_factors[i]. */
typedef struct duet_rope_spec {
    duet_addr positions;    /* int32[n_tokens]; kv_write: buf NULL = no
                               rotation (the other fields are then unused) */
    duet_addr freq_factors; /* f32[rot_dim/2], optional: divides each
                               frequency (llama3 scaling, rope_freqs) */
    int rot_dim;            /* leading dims rotated, <= head_dim, even */
    duet_rope_mode mode;
    float theta_base;
} duet_rope_spec;

typedef struct duet_rope_args {
    duet_addr q;         /* f32[n_tokens][n_heads][head_dim], in place */
    duet_addr k;         /* f32[n_tokens][n_kv_heads][head_dim], in place,
                            not overlapping q; optional: buf NULL = rotate q
                            only (n_kv_heads is then not used; kv_write can
                            rotate k instead) */
    duet_rope_spec rope; /* positions required */
    int n_tokens, n_heads, n_kv_heads, head_dim;
} duet_rope_args;

typedef struct duet_kv_write_args {
    duet_addr k, v;         /* f32[n_tokens][n_kv_heads][head_dim], read only */
    duet_addr slot_mapping; /* int32[n_tokens], -1 = skip */
    duet_addr k_cache, v_cache; /* one layer, see the layout above */
    duet_rope_spec rope;    /* optional (positions.buf NULL = none): store
                               each k row rotated, bit for bit as the rope
                               op rotates it on the same device; v and the
                               k operand itself are not rotated. Its
                               operands must not overlap the caches */
    duet_dtype cache_type;  /* F32 or F16 */
    int n_tokens, n_kv_heads, head_dim, num_blocks, block_size;
} duet_kv_write_args;

typedef struct duet_attention_args {
    duet_addr q;               /* f32[n_tokens][n_heads][head_dim] */
    duet_addr k_cache, v_cache;
    duet_addr block_tables;    /* int32[n_seqs][max_blocks_per_seq] */
    duet_addr seq_lens;        /* int32[n_seqs] */
    duet_addr query_start_loc; /* int32[n_seqs + 1] */
    duet_addr out;             /* f32[n_tokens][n_heads][head_dim] */
    duet_dtype cache_type;
    int n_tokens, n_seqs, n_heads, n_kv_heads, head_dim;
    int num_blocks, block_size, max_blocks_per_seq;
    float scale;               /* usually 1/sqrt(head_dim) */
    int max_seq_len;           /* >= 0: an upper bound of this call's seq_lens,
                                  so a backend can size its work by the
                                  batch's longest sequence instead of the
                                  table width; 0 = max_blocks_per_seq *
                                  block_size. A sequence whose seq_len
                                  exceeds a nonzero bound is bad metadata:
                                  its rows are NaN on every backend. A bound
                                  above the table width is allowed (the
                                  width still limits). It never changes the
                                  bits of a valid row. */
} duet_attention_args;

typedef struct duet_swiglu_args {
    duet_addr gate, up; /* f32[n_rows][dim] */
    duet_addr out;      /* f32[n_rows][dim]; may equal gate */
    int n_rows, dim;
} duet_swiglu_args;

typedef struct duet_add_args {
    duet_addr a, b; /* f32[n]: a += b */
    int64_t n;
} duet_add_args;

typedef struct duet_gather_rows_args {
    duet_addr x;    /* f32[n_in][dim] */
    duet_addr rows; /* int32[n_out], each in [0, n_in) */
    duet_addr out;  /* f32[n_out][dim] */
    int n_in, n_out, dim;
} duet_gather_rows_args;

/* ---- sampling (docs/SAMPLING.md is the normative specification) ------- */

enum {
    DUET_SAMPLE_MAX_LOGPROBS = DUET_MAX_LOGPROBS, /* top-N a row can ask for */
    DUET_SAMPLE_EDIT_MASK = 1,     /* edit flag: the token is banned (-inf) */
    DUET_SAMPLE_EDIT_PROMPT = 2,   /* edit flag: the token is in the prompt */
};

/* One row to sample from. Every value that needs a division or a
 * transcendental is precomputed by the host (duet_sample_row_init), so all
 * backends perform the same correctly rounded float operations. */
typedef struct duet_sample_row {
    int32_t edit_begin, edit_end;  /* this row's entries: edits[begin..end) */
    float inv_temperature;         /* 1/T; 0 = greedy (T < 1e-5) */
    float log_min_p;               /* keep d >= log_min_p; -INFINITY = off */
    int32_t top_k;                 /* keep the k best; 0 = off */
    uint32_t top_p_q24;            /* round(top_p * 2^24); >= 2^24 = off */
    float repetition_penalty;      /* 1 = off */
    float inv_repetition_penalty;  /* 1 / repetition_penalty */
    float presence_penalty;        /* 0 = off */
    float frequency_penalty;       /* 0 = off */
    uint32_t seed_lo, seed_hi;     /* Philox key */
    uint32_t position;             /* output index: Philox counter word 1 */
    uint32_t sample_index;         /* parallel sample (n): counter word 2 */
    int32_t forced_token;          /* >= 0: do not sample; report this token
                                      (prompt logprobs); -1 = sample */
    int32_t n_logprobs;            /* top-N raw logprobs to report (0..20);
                                      -1 = no logprobs at all */
} duet_sample_row;

/* A per-row change to one token's logit. A token appears at most once per
 * row. Applied in this order: mask, bias, repetition, frequency, presence. */
typedef struct duet_sample_edit {
    int32_t token;
    int32_t flags;   /* DUET_SAMPLE_EDIT_MASK | DUET_SAMPLE_EDIT_PROMPT */
    int32_t count;   /* occurrences among the generated tokens */
    float bias;      /* logit_bias; 0 = none */
} duet_sample_edit;

/* A row's result is the public duet_logprobs (include/duet.h): token, rank
 * and raw logprob of the sampled or forced token, and the top-N. */
typedef duet_logprobs duet_sample_result;

typedef struct duet_sample_args {
    duet_addr logits;  /* f32[n_rows][vocab] raw logits, not modified */
    duet_addr rows;    /* duet_sample_row[n_rows] */
    duet_addr edits;   /* duet_sample_edit[n_edits]; absent when n_edits 0 */
    duet_addr work;    /* f32[n_rows][vocab] scratch for processed logits */
    duet_addr results; /* duet_sample_result[n_rows] */
    duet_addr tokens_out; /* optional int32[n_rows]: the result tokens again,
                             packed, for a later step's embed prev_tokens */
    int n_rows, vocab, n_edits;
} duet_sample_args;

/* ---- the backend table ------------------------------------------------ */

typedef struct duet_device_ops {
    int version; /* DUET_DEVICE_OPS_VERSION */

    void (*destroy)(void *ctx);
    void (*get_info)(void *ctx, duet_device_info *out);

    /* Buffers. Contents of a new buffer are undefined. */
    duet_status (*buffer_alloc)(void *ctx, size_t size, duet_buffer **out);
    void (*buffer_free)(void *ctx, duet_buffer *buf);
    size_t (*buffer_size)(void *ctx, const duet_buffer *buf);
    /* Synchronous host <-> device copies (outside any stream; for loading). */
    duet_status (*buffer_write)(void *ctx, duet_addr dst, const void *src, size_t n);
    duet_status (*buffer_read)(void *ctx, duet_addr src, void *dst, size_t n);
    /* Optional (NULL = the wrapper allocates and copies): wrap host memory
     * that outlives the buffer (an mmap of the model) without copying. */
    duet_status (*buffer_wrap_host)(void *ctx, void *host, size_t size, duet_buffer **out);

    /* Streams: begin, record ops, submit, wait. */
    duet_status (*stream_create)(void *ctx, duet_stream **out);
    void (*stream_destroy)(void *ctx, duet_stream *s);
    duet_status (*stream_begin)(void *ctx, duet_stream *s);
    duet_status (*stream_submit)(void *ctx, duet_stream *s);
    duet_status (*stream_wait)(void *ctx, duet_stream *s);
    /* In-stream copies; upload copies src at record time, download writes
     * dst by the time stream_wait returns. */
    duet_status (*upload)(void *ctx, duet_stream *s, duet_addr dst, const void *src, size_t n);
    duet_status (*download)(void *ctx, duet_stream *s, duet_addr src, void *dst, size_t n);

    /* Ops, recorded into s. */
    duet_status (*embed)(void *ctx, duet_stream *s, const duet_embed_args *a);
    duet_status (*rms_norm)(void *ctx, duet_stream *s, const duet_rms_norm_args *a);
    duet_status (*matmul)(void *ctx, duet_stream *s, const duet_matmul_args *a);
    duet_status (*rope)(void *ctx, duet_stream *s, const duet_rope_args *a);
    duet_status (*kv_write)(void *ctx, duet_stream *s, const duet_kv_write_args *a);
    duet_status (*attention)(void *ctx, duet_stream *s, const duet_attention_args *a);
    duet_status (*swiglu)(void *ctx, duet_stream *s, const duet_swiglu_args *a);
    duet_status (*add)(void *ctx, duet_stream *s, const duet_add_args *a);
    duet_status (*gather_rows)(void *ctx, duet_stream *s, const duet_gather_rows_args *a);
    duet_status (*sample)(void *ctx, duet_stream *s, const duet_sample_args *a);
} duet_device_ops;

/* A device: a backend's table and its context. A backend's constructor
 * allocates this struct with calloc; duet_device_close() calls
 * ops->destroy(ctx) (which frees everything but this struct) and then
 * free()s it. */
typedef struct duet_device {
    const duet_device_ops *ops;
    void *ctx;
    int fault_countdown; /* test builds: fail when this reaches 0 */
    int fault_calls;     /* wrapper calls since the last arming */
} duet_device;

/* ---- opening devices -------------------------------------------------- */

typedef struct duet_device_options {
    int n_threads; /* CPU: 0 = all cores */
    int force_reference; /* CPU: 1 = plain reference kernels only (tests) */
} duet_device_options;

/* Open a device by spec: "auto", "cpu" ("vulkan[:N]", "cuda[:N]" when built
 * with them). On failure *out is NULL and the message lists what exists. */
duet_status duet_device_open(const char *spec, const duet_device_options *opts,
                             duet_device **out);
void duet_device_close(duet_device *dev);

/* ---- wrappers the runtime calls (check arguments, inject faults) ------ */

void duet_dev_info(duet_device *d, duet_device_info *out);
duet_status duet_dev_buffer_alloc(duet_device *d, size_t size, duet_buffer **out);
void duet_dev_buffer_free(duet_device *d, duet_buffer *buf);
size_t duet_dev_buffer_size(duet_device *d, const duet_buffer *buf);
duet_status duet_dev_buffer_write(duet_device *d, duet_addr dst, const void *src, size_t n);
duet_status duet_dev_buffer_read(duet_device *d, duet_addr src, void *dst, size_t n);
/* Wrap host memory if the backend can, else allocate and copy. */
duet_status duet_dev_buffer_from_host(duet_device *d, void *host, size_t size,
                                      duet_buffer **out);

duet_status duet_dev_stream_create(duet_device *d, duet_stream **out);
void duet_dev_stream_destroy(duet_device *d, duet_stream *s);
duet_status duet_dev_stream_begin(duet_device *d, duet_stream *s);
duet_status duet_dev_stream_submit(duet_device *d, duet_stream *s);
duet_status duet_dev_stream_wait(duet_device *d, duet_stream *s);
duet_status duet_dev_upload(duet_device *d, duet_stream *s, duet_addr dst, const void *src, size_t n);
duet_status duet_dev_download(duet_device *d, duet_stream *s, duet_addr src, void *dst, size_t n);

duet_status duet_dev_embed(duet_device *d, duet_stream *s, const duet_embed_args *a);
duet_status duet_dev_rms_norm(duet_device *d, duet_stream *s, const duet_rms_norm_args *a);
duet_status duet_dev_matmul(duet_device *d, duet_stream *s, const duet_matmul_args *a);
duet_status duet_dev_rope(duet_device *d, duet_stream *s, const duet_rope_args *a);
duet_status duet_dev_kv_write(duet_device *d, duet_stream *s, const duet_kv_write_args *a);
duet_status duet_dev_attention(duet_device *d, duet_stream *s, const duet_attention_args *a);
duet_status duet_dev_swiglu(duet_device *d, duet_stream *s, const duet_swiglu_args *a);
duet_status duet_dev_add(duet_device *d, duet_stream *s, const duet_add_args *a);
duet_status duet_dev_gather_rows(duet_device *d, duet_stream *s, const duet_gather_rows_args *a);
/* Checks shapes and buffer sizes. Row contents live in device memory and
 * are not checked here; docs/SAMPLING.md defines what every backend does
 * with out-of-range values (an edit range outside [0, n_edits) is empty, a
 * token outside the vocabulary is ignored, forced_token >= vocab samples). */
duet_status duet_dev_sample(duet_device *d, duet_stream *s, const duet_sample_args *a);

/* Make the nth fallible wrapper call on d from now fail with
 * DUET_ERR_OUT_OF_MEMORY (nth = 1: the next call); 0 disables. Only test
 * builds (DUET_TESTING) honour it. duet_dev_fault_calls() counts the
 * fallible calls made since the last arming, so a test can loop
 * nth = 1..calls and walk every cleanup path. */
void duet_dev_fault_inject(duet_device *d, int nth);
int duet_dev_fault_calls(const duet_device *d);

/* The CPU backend's constructor (backends/cpu). */
duet_status duet_cpu_device_create(const duet_device_options *opts, duet_device **out);

#ifdef DUET_HAVE_VULKAN
/* The Vulkan backend's constructor (backends/vulkan): device index (as
 * `duet devices` lists them), or -1 for the policy's choice (discrete, then
 * integrated, then CPU-type); allow_cpu_type = 0 refuses CPU-type devices
 * (lavapipe) so `auto` falls back to the CPU backend. */
duet_status duet_vulkan_device_create(int index, const duet_device_options *opts,
                                      int allow_cpu_type, duet_device **out);
#endif

#endif /* DUET_DEVICE_H */
