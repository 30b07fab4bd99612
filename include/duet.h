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
    const char *device;      /* "auto", "cpu"; NULL = "auto" */
    int n_threads;           /* CPU backend worker threads; 0 = all cores */
    const char *load_format; /* "gguf" (NULL) or "dummy": seeded random
                                weights of the shape that path names (a
                                preset such as "llama-3.1-8b", or an HF
                                config.json) and a byte-level vocabulary */
    const char *dummy_dtype; /* dummy weights: "f32", "f16", "bf16", "q4_0",
                                "q4_1", "q8_0"; NULL = "q4_1" */
    uint64_t dummy_seed;     /* dummy weights: the same seed gives the same
                                weights everywhere */
} duet_model_options;

/* Load a GGUF model (or build a dummy one, see load_format) and place its
 * weights on the chosen device. On failure *out is NULL; the message names
 * the file and the problem (missing file, corrupt field at an offset,
 * unknown architecture or weight type). */
duet_status duet_model_load(const char *path, const duet_model_options *opts,
                            duet_model **out);
void duet_model_free(duet_model *model);

/* Model facts; the strings are owned by the model. */
const char *duet_model_arch(const duet_model *model);
int duet_model_context_length(const duet_model *model);
int duet_model_vocab_size(const duet_model *model);
/* The GGUF's tokenizer.chat_template (Jinja source) and general.name; NULL
 * when absent. *len gets the byte count. Not NUL-terminated. */
const char *duet_model_chat_template(const duet_model *model, size_t *len);
const char *duet_model_name(const duet_model *model, size_t *len);
/* The device the model runs on, as "backend: name" ("cpu: CPU (2 threads,
 * AVX2+FMA)", "vulkan: NVIDIA H200"). */
const char *duet_model_device_name(const duet_model *model);
/* Special token ids; -1 when the model has none. */
int32_t duet_model_bos(const duet_model *model);
int32_t duet_model_eos(const duet_model *model);

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
    float top_p;        /* (0, 1]; 0 = off */
    int top_k;          /* 0 = off */
    float min_p;        /* 0 = off */
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

/* ---- the batched engine (continuous batching over the paged KV cache) -- */

typedef struct duet_engine duet_engine;

typedef struct duet_engine_options {
    int max_num_seqs;            /* requests running at once; 0 = 64 */
    int max_num_batched_tokens;  /* tokens per step; 0 = 512 */
    int max_model_len;           /* 0 = the model's context, clamped so one
                                    sequence fits the KV cache */
    int block_size;              /* tokens per KV block; 0 = 16 */
    uint64_t kv_cache_memory;    /* bytes for the KV cache; 0 = derive from
                                    gpu_memory_utilization */
    float gpu_memory_utilization;/* fraction of the device's memory (CPU:
                                    of device_memory) for weights, activations
                                    and KV; 0 = 0.9 */
    uint64_t device_memory;      /* CPU: the budget that fraction applies
                                    to; 0 = 4 GiB or physical RAM if less */
    int disable_prefix_caching;
    int disable_chunked_prefill;
    int long_prefill_token_threshold; /* 0 = no per-request cap */
    int priority_scheduling;     /* 1 = by priority, then arrival */
    int return_logits;           /* outputs carry the sampled row's logits */
    int disable_async_scheduling;/* 1 = prepare a step only after the last
                                    one finished (async: step N+1 is
                                    scheduled and queued while N runs) */
} duet_engine_options;

enum { DUET_MAX_LOGPROBS = 20 }; /* most top logprobs a request can ask for */

typedef struct duet_logit_bias {
    int32_t token;
    float bias;                  /* added to the token's logit, in [-100, 100] */
} duet_logit_bias;

/* Sampling and request parameters, with vLLM's meanings. Zero means the
 * default for every field, so designated initializers stay short; fields
 * whose vLLM default is not zero say what zero stands for.
 * duet_request_params_validate() names the field and the allowed range of
 * any bad value; duet_engine_add_request() calls it. */
typedef struct duet_request_params {
    const char *request_id;      /* NULL = assigned ("req-N"); must be
                                    unique among unfinished requests */
    int max_tokens;              /* > 0 */
    int min_tokens;              /* EOS and stop_token_ids are banned until
                                    this many tokens exist; <= max_tokens */
    float temperature;           /* 0 = greedy (vLLM: < 1e-5 is greedy) */
    float top_p;                 /* (0, 1]; 0 = 1 (off) */
    int top_k;                   /* 0 or -1 = off */
    float min_p;                 /* [0, 1]; 0 = off */
    float repetition_penalty;    /* > 0; 0 = 1 (off) */
    float presence_penalty;      /* [-2, 2] */
    float frequency_penalty;     /* [-2, 2] */
    const duet_logit_bias *logit_bias;
    int n_logit_bias;
    const char *const *stop;     /* stop strings (excluded from the text
                                    unless include_stop_str_in_output) */
    int n_stop;
    int include_stop_str_in_output;
    const int32_t *stop_token_ids;
    int n_stop_token_ids;
    int ignore_eos;
    uint64_t seed;
    int has_seed;                /* 0 = the engine picks a seed */
    int n;                       /* parallel samples of the prompt; 0 = 1 */
    int logprobs;                /* with want_logprobs: top-N alternatives
                                    (0..20) besides the chosen token */
    int want_logprobs;
    int prompt_logprobs;         /* with want_prompt_logprobs: top-N (0..20) */
    int want_prompt_logprobs;
    int keep_special_tokens;     /* 1 = special tokens appear in the text
                                    (vLLM skip_special_tokens=false) */
    int priority;                /* lower = sooner, with priority scheduling */
    const char *cache_salt;      /* isolates prefix-cache entries; NULL = none */
} duet_request_params;

/* Check p against a model of vocabulary size vocab; DUET_ERR_INVALID_ARG
 * with a message naming the field, the value and the limit. */
duet_status duet_request_params_validate(const duet_request_params *p, int vocab);

typedef enum duet_finish {
    DUET_FINISHED_NOT = 0,
    DUET_FINISHED_STOP = 1,   /* end-of-generation, stop token or stop string */
    DUET_FINISHED_LENGTH = 2, /* max_tokens or max_model_len */
    DUET_FINISHED_ABORT = 3,
} duet_finish;

/* Log-probabilities of one position: the chosen token's and the top-N,
 * all from the raw logits (before any sampling parameter is applied). */
typedef struct duet_logprobs {
    int32_t token;               /* the chosen (or, for a prompt, the actual) token */
    int32_t rank;                /* 1 + number of tokens scored higher
                                    (ties counted: #{j : logit_j >= logit_token}) */
    float logprob;
    int32_t n_top;
    int32_t top_ids[DUET_MAX_LOGPROBS];     /* best first; ties: lowest id */
    float top_logprobs[DUET_MAX_LOGPROBS];
} duet_logprobs;

/* What a step produced for one sample of a request; pointers valid during
 * the call. A request with n > 1 produces outputs for index 0..n-1, each
 * with its own finish; the request is done when all n have finished. */
typedef struct duet_request_output {
    const char *request_id;
    int index;                   /* which parallel sample (0..n-1) */
    const int32_t *new_tokens;   /* tokens produced this step (0 or 1) */
    int n_new_tokens;
    const duet_logprobs *logprobs; /* [n_new_tokens] with want_logprobs */
    const duet_logprobs *prompt_logprobs; /* first output of index 0 only,
                                    with want_prompt_logprobs: entries for
                                    prompt positions 1..n_prompt-1 */
    int n_prompt_logprobs;
    const char *text;            /* newly released UTF-8 text (text that may
                                    begin a stop string is held back) */
    size_t text_len;
    duet_finish finish;          /* != NOT on this sample's last output */
    const char *stop_str;        /* the stop string that matched, else NULL */
    int32_t stop_token;          /* the stop token id that matched (not EOS), else -1 */
    int n_prompt_tokens;
    int n_output_tokens;
    int n_cached_tokens;         /* prompt tokens served by the prefix cache */
    const float *logits;         /* [vocab] with return_logits, else NULL */
    /* Engine timestamps, CLOCK_MONOTONIC seconds (duet_now()); 0 = not yet. */
    double arrival_time;         /* duet_engine_add_request accepted it */
    double first_scheduled_time; /* first step that computed its tokens */
    double first_token_time;     /* its first generated token */
} duet_request_output;

typedef void (*duet_output_cb)(void *user, const duet_request_output *out);

typedef struct duet_engine_stats {
    int num_running, num_waiting;
    int kv_blocks_total, kv_blocks_used, block_size;
    double kv_usage;               /* used / total */
    uint64_t kv_tokens_used;       /* tokens stored in used blocks */
    uint64_t prefix_queries, prefix_hits;   /* tokens */
    uint64_t num_preemptions;
    uint64_t prompt_tokens, generation_tokens; /* computed / produced */
    uint64_t steps;
    uint64_t num_aborted;          /* requests aborted (by id or disconnect) */
    uint64_t step_tokens;          /* tokens computed by the last step */
    int max_model_len;
} duet_engine_stats;

/* One unfinished request, for monitoring. */
typedef struct duet_request_info {
    const char *request_id;
    int index;                     /* parallel sample index */
    int running;                   /* 1 = holds KV blocks, 0 = waiting */
    int n_prompt_tokens, n_output_tokens, n_computed_tokens;
    double arrival_time;           /* duet_now() seconds */
} duet_request_info;

/* Size the KV cache from the options (the log line says how), allocate it
 * and the step buffers. Fails with a message giving the needed and the
 * available bytes and the flag to change when max_model_len does not fit.
 * m must outlive the engine. On failure *out is NULL. */
duet_status duet_engine_create(duet_model *m, const duet_engine_options *o, duet_engine **out);
void duet_engine_free(duet_engine *e);

/* One line describing the KV cache ("KV cache: N blocks of 16 tokens = T
 * tokens, max concurrency X× at max_model_len Y"). Owned by the engine. */
const char *duet_engine_kv_summary(const duet_engine *e);

/* Queue a request. Thread-safe. Rejected at once (DUET_ERR_INVALID_ARG,
 * with the numbers) when the prompt is empty, has ids outside the
 * vocabulary, or prompt + 1 > max_model_len, when max_tokens <= 0, or when
 * the id duplicates an unfinished request. cb is called from the thread
 * running duet_engine_step, once per step that produced something for the
 * request, and a last time with finish != NOT; every output names the
 * request's id (given in p, or assigned). */
duet_status duet_engine_add_request(duet_engine *e, const int32_t *prompt, size_t n_prompt,
                                    const duet_request_params *p, duet_output_cb cb, void *user);

/* Abort a queued or running request by id. Thread-safe; takes effect at the
 * next step (its blocks are freed and cb gets finish = ABORT). Unknown id:
 * DUET_ERR_INVALID_ARG. */
duet_status duet_engine_abort(duet_engine *e, const char *request_id);

/* Run one step: schedule, run the model on the flattened batch, sample,
 * call the callbacks. Returns DUET_OK with nothing done when idle. */
duet_status duet_engine_step(duet_engine *e);
int duet_engine_has_work(duet_engine *e);
/* Step until no request is left. */
duet_status duet_engine_run(duet_engine *e);
void duet_engine_get_stats(duet_engine *e, duet_engine_stats *out);
/* Call cb for every unfinished request (queued ones included). Call it
 * from the thread that runs duet_engine_step, between steps. */
void duet_engine_list_requests(duet_engine *e,
                               void (*cb)(void *user, const duet_request_info *info),
                               void *user);
/* CLOCK_MONOTONIC in seconds: the clock of the engine's timestamps. */
double duet_now(void);

#ifdef __cplusplus
}
#endif
#endif /* DUET_H */
