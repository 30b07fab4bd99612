/*
 * duet.h — the public C API of libduet.
 *
 * Failure contract: every function that can fail returns a duet_status.
 * On failure, no OUT parameter is written except to NULL, nothing is leaked,
 * and duet_last_error() returns a one-line message naming the input, the
 * value and the limit. The message is per thread (like errno) and stays
 * valid until the next failing call on the same thread.
 *
 * Ownership: every object returned through an OUT parameter belongs to the
 * caller and is released with the matching *_free / *_destroy function,
 * all of which accept NULL.
 */
#ifndef DUET_H
#define DUET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum duet_status {
    DUET_OK = 0,
    DUET_ERR_INVALID_ARG = 1,   /* a caller-supplied value is out of range */
    DUET_ERR_OUT_OF_MEMORY = 2, /* host or device allocation failed */
    DUET_ERR_IO = 3,            /* open/read/mmap of a file failed */
    DUET_ERR_FORMAT = 4,        /* a file is truncated, corrupt or malicious */
    DUET_ERR_UNSUPPORTED = 5,   /* valid input this build cannot handle */
    DUET_ERR_DEVICE = 6,        /* the device failed (lost, driver error) */
    DUET_ERR_INTERNAL = 7,      /* a bug: an invariant did not hold */
} duet_status;

/* Human-readable name of a status ("invalid argument", ...). Never NULL. */
const char *duet_status_str(duet_status st);

/* Message of the last failure on this thread; "" if none. Never NULL. */
const char *duet_last_error(void);

/* ---- model ------------------------------------------------------------ */

typedef struct duet_model duet_model;

typedef struct duet_model_options {
    const char *device; /* "auto", "cpu"; NULL = "auto" */
    int n_threads;      /* CPU backend worker threads; 0 = all cores */
} duet_model_options;

/* Load a GGUF model and upload its weights to the chosen device.
 * On failure *out is NULL; the message names the file and the problem
 * (missing file, corrupt field at an offset, unknown architecture or
 * weight type). */
duet_status duet_model_load(const char *path, const duet_model_options *opts,
                            duet_model **out);
void duet_model_free(duet_model *model);

/* Model facts; the strings are owned by the model. */
const char *duet_model_arch(const duet_model *model);
int duet_model_context_length(const duet_model *model);
int duet_model_vocab_size(const duet_model *model);

/* Tokenize UTF-8 text (invalid UTF-8 is accepted: bad bytes map through
 * byte fallback or U+FFFD, never a crash). add_special adds BOS when the
 * model asks for it; parse_special turns "<|im_start|>" etc. into their
 * special ids. Writes up to cap ids; *n_out gets the full count, so a
 * call with cap too small returns DUET_ERR_INVALID_ARG and the size to
 * retry with. */
duet_status duet_tokenize(const duet_model *model, const char *text, size_t len,
                          int add_special, int parse_special, int32_t *ids,
                          size_t cap, size_t *n_out);

/* The bytes of one token (special tokens as their text). Returns NULL for
 * an id out of range. *len gets the byte count. */
const char *duet_token_bytes(const duet_model *model, int32_t id, size_t *len);

/* ---- generation (single sequence; the batched engine comes later) ----- */

typedef struct duet_session duet_session;

typedef struct duet_session_options {
    int max_context; /* tokens of context to reserve; 0 = model's context */
} duet_session_options;

/* Create a generation session: a KV cache and scratch on the model's
 * device. On failure *out is NULL. */
duet_status duet_session_create(duet_model *model, const duet_session_options *opts,
                                duet_session **out);
void duet_session_free(duet_session *s);

/* Called with each piece of complete UTF-8 text as it is produced. Return
 * non-zero to stop generation early. */
typedef int (*duet_text_cb)(void *user, const char *text, size_t len);

typedef struct duet_generate_params {
    int max_tokens;     /* > 0 */
    float temperature;  /* 0 = greedy */
    uint64_t seed;      /* used when temperature > 0 */
    int ignore_eos;     /* keep going after an end-of-generation token */
} duet_generate_params;

typedef struct duet_generate_stats {
    int n_prompt;          /* prompt tokens evaluated */
    int n_generated;       /* tokens produced */
    double prompt_seconds; /* prefill wall time */
    double decode_seconds; /* wall time of the decode steps */
    int stopped_by_eos;    /* 1 if an end-of-generation token ended it */
} duet_generate_stats;

/* Reset the session, run the prompt ids, then generate up to max_tokens,
 * calling cb with text as it completes. Fails with DUET_ERR_INVALID_ARG if
 * n_prompt + max_tokens exceeds the session's context (the message gives
 * both numbers). stats may be NULL. */
duet_status duet_generate(duet_session *s, const int32_t *prompt, size_t n_prompt,
                          const duet_generate_params *params, duet_text_cb cb,
                          void *user, duet_generate_stats *stats /* OUT */);

/* Teacher-forced evaluation: run ids[0..n) from position 0 and write the
 * logits of every position to logits[n][vocab] (row-major). */
duet_status duet_eval_logits(duet_session *s, const int32_t *ids, size_t n,
                             float *logits /* OUT: [n][vocab] */);

#ifdef __cplusplus
}
#endif
#endif /* DUET_H */
