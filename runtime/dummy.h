/*
 * dummy.h — a model of any shape with seeded random weights
 * (--load-format dummy), for benchmarking shapes whose weights are not at
 * hand.
 *
 * The shape comes from an HF config.json or a preset name; the result is a
 * complete GGUF image in memory (metadata, a byte-level tokenizer, every
 * tensor the model binds), so the normal loader takes it from there and
 * nothing downstream knows the weights are invented.
 *
 * Weights: element i (row-major) of the tensor named n is a function of
 * (seed, n, i) only — a counter-based generator, not a stream — so the same
 * seed gives the same bytes whatever the order, thread count or machine:
 *   mix(z)  = splitmix64's finalizer
 *   key     = mix(seed ^ mix(FNV-1a-64(n)))
 *   h       = mix(key + (i / 2 + 1) * 0x9E3779B97F4A7C15)
 *   b       = (i even ? low : high) 32 bits of h, >> 8    (24 bits)
 *   u       = (b + 0.5) / 2^23 - 1                        (in (-1, 1), float)
 * Matrices and QKV biases: 0.034641016f * u (uniform, standard deviation
 * 0.02, HF's initializer_range); norm weights: 1 + 0.1f * u. That keeps
 * activations finite through any number of layers. Matrices are then
 * rounded to the weight type (to nearest; block scales are rounded to half
 * first and the values rounded against the stored scale). llama3 configs
 * also get rope_freqs.weight, the per-frequency divisors, so low/high
 * frequency factors other than 1 and 4 are honoured.
 *
 * Tokenizer: "gpt2" byte-level BPE with no merges: the 256 byte tokens,
 * then "<|bos|>" and "<|eos|>" (control), then "<|dummy_N|>" fillers
 * (unused, control) up to the configuration's vocab_size.
 */
#ifndef DUET_DUMMY_H
#define DUET_DUMMY_H

#include <stddef.h>
#include <stdint.h>

#include "duet.h"
#include "dtype.h"

/* Called after each tensor is generated; may be NULL. */
typedef void (*duet_dummy_progress_fn)(void *user, uint64_t bytes_done, uint64_t bytes_total);

typedef struct duet_dummy_options {
    const char *model_config; /* a preset name (which wins over a file of the
                                 same name), or the path of an HF config.json */
    duet_dtype weight_type;   /* of the matrices: F32, F16, BF16, Q4_0, Q4_1, Q8_0 */
    uint64_t seed;
    int n_threads;            /* generation threads; 0 = all online CPUs */
    duet_dummy_progress_fn progress;
    void *progress_user;
} duet_dummy_options;

/* Build the GGUF image: *image is malloc'd (the caller frees), *size its
 * bytes. Fails with DUET_ERR_INVALID_ARG for an unknown preset (the message
 * lists them) or an unsupported weight type, DUET_ERR_IO for an unreadable
 * config file, DUET_ERR_FORMAT for invalid config JSON (naming the field:
 * missing hidden_size, heads not dividing hidden_size, a row length that is
 * not a whole number of the weight type's blocks, ...), and
 * DUET_ERR_OUT_OF_MEMORY naming the image size. On failure *image is NULL. */
duet_status duet_dummy_gguf(const duet_dummy_options *o, void **image /* OUT */,
                            size_t *size /* OUT */);

/* The image size duet_dummy_gguf would produce, without generating any
 * weights (for a memory check or a message before a multi-GB build). Fails
 * as duet_dummy_gguf does. */
duet_status duet_dummy_image_size(const duet_dummy_options *o, uint64_t *size /* OUT */);

/* "smollm2-135m, smollm2-360m, ..." — for messages and --help. */
const char *duet_dummy_presets(void);

#endif
