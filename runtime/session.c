/*
 * session.c — single-sequence generation over the paged KV cache: the
 * prompt is prefilled in chunks, then one token per step is decoded. The
 * batched engine (scheduler, many sequences) builds the same duet_batch
 * for many requests; this file is its one-sequence special case.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "duet_internal.h"
#include "error.h"
#include "sampler.h"

/* Tokens per forward call while prefilling, and rows of logits per call
 * while evaluating teacher-forced. */
enum { PREFILL_CHUNK = 512, LOGIT_ROWS = 64, BLOCK_SIZE = 16 };

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

duet_status duet_session_create(duet_model *m, const duet_session_options *opts,
                                duet_session **out)
{
    duet_status rc;
    *out = NULL;
    int ctx = opts && opts->max_context > 0 ? opts->max_context : m->config.context_length;
    if (opts && opts->max_context < 0)
        return duet_error(DUET_ERR_INVALID_ARG, "session: max_context %d must be >= 0",
                          opts->max_context);
    duet_session *s = calloc(1, sizeof *s);
    if (!s)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "session: out of memory");
    s->model = m;
    s->max_context = ctx;
    int max_blocks = (ctx + BLOCK_SIZE - 1) / BLOCK_SIZE;
    duet_runner_options ro = {
        .max_tokens = PREFILL_CHUNK,
        .max_seqs = 1,
        .max_logit_rows = LOGIT_ROWS,
        .num_blocks = max_blocks + 1, /* + the null block */
        .block_size = BLOCK_SIZE,
        .max_blocks_per_seq = max_blocks,
        .kv_type = DUET_F32,
        .sampling = 1,
    };
    duet_kv_seq_init(&s->seq);
    s->logits = malloc(sizeof(float) * LOGIT_ROWS * (size_t)m->config.vocab);
    s->table = calloc((size_t)max_blocks, sizeof *s->table);
    s->meta = malloc(sizeof *s->meta * (3 * PREFILL_CHUNK + LOGIT_ROWS));
    if (!s->logits || !s->table || !s->meta) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "session: out of memory");
        goto out_free;
    }
    /* One sequence that starts afresh each time: nothing to share, so no
     * prefix cache (the batched engine uses it). */
    duet_kv_cache_options ko = {.num_blocks = ro.num_blocks, .block_size = BLOCK_SIZE};
    if ((rc = duet_kv_cache_create(&ko, &s->kv)))
        goto out_free;
    if ((rc = duet_runner_create(m->dev, &m->config, &m->weights, &ro, &s->runner)))
        goto out_free;
    *out = s;
    return DUET_OK;

out_free:
    duet_session_free(s);
    return rc;
}

void duet_session_free(duet_session *s)
{
    if (!s)
        return;
    if (s->kv)
        duet_kv_cache_free_seq(s->kv, &s->seq);
    duet_kv_seq_destroy(&s->seq);
    duet_runner_free(s->runner);
    duet_kv_cache_free(s->kv);
    free(s->table);
    free(s->meta);
    free(s->logits);
    free(s);
}

/* Make the sequence hold exactly enough blocks for n_tokens of context. */
static duet_status reserve(duet_session *s, int n_tokens)
{
    if (!duet_kv_cache_can_allocate(s->kv, &s->seq, n_tokens))
        return duet_error(DUET_ERR_INVALID_ARG,
                          "context of %d tokens does not fit the session's %d-token KV cache",
                          n_tokens, s->max_context);
    duet_status rc = duet_kv_cache_reserve(s->kv, &s->seq, n_tokens);
    if (rc)
        return rc;
    duet_kv_cache_allocate(s->kv, &s->seq, n_tokens, 0);
    memcpy(s->table, s->seq.blocks, sizeof *s->table * (size_t)s->seq.n_blocks);
    return DUET_OK;
}

static void reset(duet_session *s)
{
    duet_kv_cache_free_seq(s->kv, &s->seq);
}

/* Run ids[0..n) at positions start.., writing the logits of the rows in
 * [first_logit_row, n) (at most LOGIT_ROWS of them) to s->logits; or, with
 * sample (then exactly one row), sampling that row on the device into
 * *result instead. */
static duet_status forward_chunk(duet_session *s, const int32_t *ids, int n, int start,
                                 int first_logit_row, const duet_sample_row *sample,
                                 duet_sample_result *result)
{
    duet_status rc = reserve(s, start + n);
    if (rc)
        return rc;
    int32_t *meta = s->meta; /* n <= PREFILL_CHUNK */
    int32_t *pos = meta, *slots = meta + n, *rows = meta + 2 * n;
    int n_rows = 0;
    for (int i = 0; i < n; i++) {
        int p = start + i;
        pos[i] = p;
        slots[i] = s->seq.blocks[p / BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE;
        if (i >= first_logit_row && n_rows < LOGIT_ROWS)
            rows[n_rows++] = i;
    }
    int32_t qsl[2] = {0, n}, seq_len = start + n;
    duet_batch b = {
        .n_tokens = n, .n_seqs = 1, .tokens = ids, .positions = pos, .slot_mapping = slots,
        .query_start_loc = qsl, .seq_lens = &seq_len, .block_tables = s->table,
        .logit_rows = rows, .n_logit_rows = n_rows, .sample_rows = sample,
    };
    rc = duet_model_forward(s->runner, &b, sample ? NULL : s->logits, result);
    return rc;
}

duet_status duet_eval_logits(duet_session *s, const int32_t *ids, size_t n, float *logits)
{
    size_t vocab = (size_t)s->model->config.vocab;
    if (n == 0 || n > (size_t)s->max_context)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "eval: %zu tokens; the session holds 1..%d tokens of context", n,
                          s->max_context);
    reset(s);
    duet_status rc = DUET_OK;
    for (size_t at = 0; at < n && !rc; at += LOGIT_ROWS) {
        int len = (int)(n - at < LOGIT_ROWS ? n - at : LOGIT_ROWS);
        rc = forward_chunk(s, ids + at, len, (int)at, 0, NULL, NULL);
        if (!rc)
            memcpy(logits + at * vocab, s->logits, sizeof(float) * vocab * (size_t)len);
    }
    reset(s);
    return rc;
}

/* Stream the text of one generated token through the UTF-8 assembler. */
static int emit(duet_session *s, duet_utf8_stream *u, int32_t id, duet_text_cb cb, void *user)
{
    size_t len;
    if (!cb || duet_tokenizer_is_special(s->model->tokenizer, id))
        return 0;
    const char *bytes = duet_tokenizer_token_bytes(s->model->tokenizer, id, &len);
    char *buf = malloc(DUET_UTF8_STREAM_OUT_MAX(len));
    if (!buf)
        return 0;
    size_t n = duet_utf8_stream_push(u, bytes, len, buf);
    int stop = n ? cb(user, buf, n) : 0;
    free(buf);
    return stop;
}

duet_status duet_generate(duet_session *s, const int32_t *prompt, size_t n_prompt,
                          const duet_generate_params *p, duet_text_cb cb, void *user,
                          duet_generate_stats *stats)
{
    const duet_model_config *c = &s->model->config;
    duet_generate_stats st = {0};
    duet_utf8_stream u = {0};
    duet_status rc = DUET_OK;

    if (stats)
        memset(stats, 0, sizeof *stats);
    if (n_prompt == 0)
        return duet_error(DUET_ERR_INVALID_ARG, "the prompt is empty (0 tokens)");
    if (p->max_tokens <= 0)
        return duet_error(DUET_ERR_INVALID_ARG, "max_tokens is %d; it must be >= 1",
                          p->max_tokens);
    if (n_prompt + (size_t)p->max_tokens > (size_t)s->max_context)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "prompt has %zu tokens and max_tokens is %d: %zu > this session's "
                          "context of %d tokens",
                          n_prompt, p->max_tokens, n_prompt + p->max_tokens, s->max_context);
    for (size_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= c->vocab)
            return duet_error(DUET_ERR_INVALID_ARG, "prompt token %zu is %d; vocabulary is 0..%d",
                              i, prompt[i], c->vocab - 1);
    reset(s);

    /* Sampling runs on the device, as in the engine (docs/SAMPLING.md). */
    duet_request_params rp = {.max_tokens = p->max_tokens, .temperature = p->temperature,
                              .top_p = p->top_p, .top_k = p->top_k, .min_p = p->min_p};
    if ((rc = duet_request_params_validate(&rp, c->vocab)))
        return rc;
    duet_sample_row row;
    duet_sample_result res;
    duet_sample_row_init(&row, &rp, c->vocab, p->seed, 0, 0, -1, -1);

    /* Prefill in chunks; only the last prompt token is sampled. */
    double t0 = now_seconds();
    for (size_t at = 0; at < n_prompt && !rc; at += PREFILL_CHUNK) {
        int len = (int)(n_prompt - at < PREFILL_CHUNK ? n_prompt - at : PREFILL_CHUNK);
        int last_chunk = at + len == n_prompt;
        rc = forward_chunk(s, prompt + at, len, (int)at, last_chunk ? len - 1 : len,
                           last_chunk ? &row : NULL, &res);
    }
    st.n_prompt = (int)n_prompt;
    st.prompt_seconds = now_seconds() - t0;

    /* Decode: sample, stream, feed the token back. */
    double t1 = now_seconds();
    int pos = (int)n_prompt;
    while (!rc) {
        int32_t tok = res.token;
        st.n_generated++;
        if (!p->ignore_eos && duet_tokenizer_is_eog(s->model->tokenizer, tok)) {
            st.stopped_by_eos = 1;
            break;
        }
        if (emit(s, &u, tok, cb, user) || st.n_generated >= p->max_tokens)
            break;
        row.position = (uint32_t)st.n_generated;
        rc = forward_chunk(s, &tok, 1, pos++, 0, &row, &res);
    }
    st.decode_seconds = now_seconds() - t1;
    char tail[4];
    size_t n_tail = duet_utf8_stream_flush(&u, tail);
    if (n_tail && cb)
        cb(user, tail, n_tail);
    reset(s);
    if (stats)
        *stats = st;
    return rc;
}
