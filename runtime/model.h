/*
 * model.h — the Llama-family transformer: configuration from GGUF metadata,
 * weights on a device, and the forward pass over one flattened batch.
 *
 * Three structs, kept apart as in llama2.c: the immutable configuration,
 * the read-only weights, and the mutable run state (duet_runner: scratch
 * activations, the paged KV cache, the stream).
 *
 * The forward pass takes a batch in vLLM V1's flattened layout (see
 * backends/device.h): tokens of several sequences, prefill chunks and
 * decode tokens mixed, and computes logits only for the rows asked for.
 */
#ifndef DUET_MODEL_H
#define DUET_MODEL_H

#include <stdint.h>

#include "device.h"
#include "gguf.h"

typedef struct duet_model_config {
    char arch[32];       /* GGUF general.architecture: "llama", "qwen2", ... */
    int n_layers;
    int dim;             /* embedding width E */
    int n_heads;         /* query heads H */
    int n_kv_heads;      /* K/V heads (GQA when < n_heads) */
    int head_dim;        /* D */
    int ffn_dim;         /* F */
    int vocab;           /* V */
    int context_length;  /* trained context */
    float norm_eps;
    float rope_theta;
    int rope_dim;        /* rotated dims per head, <= head_dim */
    duet_rope_mode rope_mode;
    int has_qkv_bias;    /* Qwen2 */
    int tied_embeddings; /* LM head = token embedding (no output.weight) */
    /* RoPE frequency scaling. llama3 divides low frequencies by
     * rope_scale (smoothly between low_freq_factor and high_freq_factor
     * wavelengths); linear divides all of them. */
    enum { DUET_ROPE_SCALING_NONE, DUET_ROPE_SCALING_LINEAR, DUET_ROPE_SCALING_LLAMA3 } rope_scaling;
    float rope_scale, rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_context;
} duet_model_config;

/* Read the configuration of a supported architecture. Unsupported
 * architecture: DUET_ERR_UNSUPPORTED listing the supported ones. */
duet_status duet_model_config_read(const duet_gguf *g, duet_model_config *out);

/* "llama, mistral, qwen2" — for messages and --help. */
const char *duet_model_supported_archs(void);

/* llama3 RoPE scaling: factor by which to divide each of the rot_dim/2
 * frequencies (Llama 3.1's published algorithm). */
void duet_rope_llama3_factors(const duet_model_config *c, float *out /* [rot_dim/2] */);

typedef struct duet_tensor {
    duet_addr addr;
    duet_dtype type;
    int64_t ne[2]; /* ne[0] = row length, ne[1] = rows */
} duet_tensor;

typedef struct duet_layer_weights {
    duet_tensor attn_norm;          /* [E] */
    duet_tensor wq, wk, wv;         /* [H*D][E], [Hkv*D][E], [Hkv*D][E] */
    duet_tensor bq, bk, bv;         /* optional biases (Qwen2) */
    duet_tensor wo;                 /* [E][H*D] */
    duet_tensor ffn_norm;           /* [E] */
    duet_tensor w_gate, w_up;       /* [F][E] */
    duet_tensor w_down;             /* [E][F] */
} duet_layer_weights;

/* Bytes [start, start + size) of the GGUF file, on the device as one
 * buffer. */
typedef struct duet_weight_piece {
    duet_buffer *buf;
    uint64_t start, size;
} duet_weight_piece;

typedef struct duet_model_weights {
    duet_weight_piece *pieces;      /* the file on the device: one piece, or runs
                                       of whole tensors (see place_file) */
    int n_pieces;
    duet_buffer *aux_buf;           /* weights duet computes (rope factors) */
    duet_tensor tok_embd;           /* [V][E] */
    duet_tensor out_norm;           /* [E] */
    duet_tensor lm_head;            /* [V][E]; = tok_embd when tied */
    duet_tensor rope_freqs;         /* [rot_dim/2] f32, optional */
    duet_layer_weights *layers;     /* [n_layers] */
} duet_model_weights;

/* Bind the weights of g on dev: check every tensor's presence, type and
 * shape (a message names the tensor, the expected and found shape), and
 * make the file's tensor data reachable by the device. */
duet_status duet_model_weights_load(const duet_gguf *g, const duet_model_config *c,
                                    duet_device *dev, duet_model_weights *out);
void duet_model_weights_release(duet_device *dev, duet_model_weights *w);

/* ---- run state ---------------------------------------------------------- */

typedef struct duet_runner duet_runner;

typedef struct duet_runner_options {
    int max_tokens;       /* tokens per forward call (scratch rows) */
    int max_seqs;         /* sequences per forward call */
    int max_logit_rows;   /* rows of logits per call */
    int num_blocks;       /* KV blocks of block_size tokens (block 0 = null) */
    int block_size;       /* tokens per block, default 16 */
    int max_blocks_per_seq;
    duet_dtype kv_type;   /* F32 or F16 */
    int sampling;         /* 1 = room for the sample op on every logit row */
} duet_runner_options;

/* A batch in the flattened layout; the arrays are host memory. */
typedef struct duet_batch {
    int n_tokens, n_seqs;
    const int32_t *tokens;          /* [n_tokens] */
    const int32_t *positions;       /* [n_tokens] */
    const int32_t *slot_mapping;    /* [n_tokens] */
    const int32_t *query_start_loc; /* [n_seqs + 1] */
    const int32_t *seq_lens;        /* [n_seqs] */
    const int32_t *block_tables;    /* [n_seqs][max_blocks_per_seq] */
    const int32_t *logit_rows;      /* [n_logit_rows] token rows to project */
    int n_logit_rows;
    /* Optional (runner with sampling): sample every logit row on the
     * device; NULL = no sampling. */
    const duet_sample_row *sample_rows;   /* [n_logit_rows] */
    const duet_sample_edit *sample_edits; /* [n_sample_edits] */
    int n_sample_edits;
} duet_batch;

/* Allocate scratch, the KV cache and a stream on the model's device.
 * Fails with DUET_ERR_OUT_OF_MEMORY naming the size asked for. */
duet_status duet_runner_create(duet_device *dev, const duet_model_config *c,
                               const duet_model_weights *w, const duet_runner_options *o,
                               duet_runner **out);
void duet_runner_free(duet_runner *r);
const duet_runner_options *duet_runner_opts(const duet_runner *r);

/* Bytes of activation scratch a runner with options o allocates: the
 * activation peak of a step of o->max_tokens tokens. */
size_t duet_runner_scratch_bytes(const duet_model_config *c, const duet_runner_options *o);

/* Bytes of KV cache per token of context (all layers, K and V). */
uint64_t duet_kv_bytes_per_token(const duet_model_config *c, duet_dtype kv_type);

/* Run the model on b and write logits[n_logit_rows][vocab] (logits may be
 * NULL when only samples are wanted) and, with b->sample_rows, the sample
 * op's results[n_logit_rows]. The batch must fit the runner's options
 * (checked, with a message). */
duet_status duet_model_forward(duet_runner *r, const duet_batch *b, float *logits /* OUT */,
                               duet_sample_result *results /* OUT */);
/* The same in two halves: record and submit (b's arrays may be reused at
 * once), then wait. Up to two steps may be in flight; wait finishes the
 * oldest, whose outputs are then written. The host prepares the next batch
 * in between. With sampling, a token id -1-i in b->tokens stands for the
 * token sampled at logit row i of the previous step (a placeholder for a
 * token the host does not know yet: async scheduling). */
duet_status duet_model_forward_submit(duet_runner *r, const duet_batch *b, float *logits,
                                      duet_sample_result *results);
duet_status duet_model_forward_wait(duet_runner *r);

#endif
