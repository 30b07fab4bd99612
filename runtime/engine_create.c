/*
 * engine_create.c — sizing the KV cache and building an engine.
 *
 * KV budget: --kv-cache-memory when given; otherwise
 *   device memory * gpu_memory_utilization - weights - activation peak,
 * where the activation peak is the runner's scratch at
 * max_num_batched_tokens (the largest step). On the CPU "device memory" is
 * a budget (device_memory, default min(4 GiB, RAM)), since host RAM is
 * shared with everything else.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine_impl.h"
#include "error.h"

static const uint64_t GiB = 1ull << 30;

typedef struct kv_plan {
    uint64_t kv_bytes;   /* for the KV cache */
    uint64_t budget;     /* device memory * utilization */
    uint64_t weights, activations;
    int num_blocks;      /* including the null block */
    int max_model_len;
    int range_blocks;    /* > 0: blocks were capped at this by the device's
                            largest bindable range (one layer's K cache) */
} kv_plan;

/* Logit rows per step: one per running request, plus the prompt-logprob
 * rows the scheduler may add. */
static int max_logit_rows(int max_num_seqs, int max_batched)
{
    return max_num_seqs + (max_batched < ENGINE_PROMPT_ROWS ? max_batched : ENGINE_PROMPT_ROWS);
}

static duet_status plan_kv(duet_model *m, const duet_engine_options *o, int block_size,
                           int max_num_seqs, int max_batched, kv_plan *p)
{
    const duet_model_config *c = &m->config;
    duet_device_info info;
    duet_dev_info(m->dev, &info);
    memset(p, 0, sizeof *p);
    uint64_t per_token = duet_kv_bytes_per_token(c, DUET_F32);
    uint64_t per_block = per_token * (uint64_t)block_size;
    int want_len = o->max_model_len > 0 ? o->max_model_len : c->context_length;

    p->weights = duet_gguf_file_size(m->gguf);
    duet_runner_options ro = {.max_tokens = max_batched, .max_seqs = max_num_seqs,
                              .max_logit_rows = max_logit_rows(max_num_seqs, max_batched),
                              .num_blocks = 2, .block_size = block_size,
                              .max_blocks_per_seq = (want_len + block_size - 1) / block_size,
                              .kv_type = DUET_F32, .sampling = 1};
    p->activations = duet_runner_scratch_bytes(c, &ro);
    if (o->kv_cache_memory > 0) {
        p->kv_bytes = o->kv_cache_memory;
    } else {
        float util = o->gpu_memory_utilization > 0 ? o->gpu_memory_utilization : 0.9f;
        if (util > 1.0f)
            return duet_error(DUET_ERR_INVALID_ARG,
                              "gpu_memory_utilization %g must be in (0, 1]", util);
        uint64_t mem = info.mem_total;
        if (strcmp(info.backend, "cpu") == 0) {
            mem = o->device_memory > 0 ? o->device_memory : 4 * GiB;
            if (info.mem_total && mem > info.mem_total)
                mem = info.mem_total;
        }
        p->budget = (uint64_t)(mem * (double)util);
        uint64_t fixed = p->weights + p->activations;
        p->kv_bytes = p->budget > fixed ? p->budget - fixed : 0;
    }
    uint64_t blocks = p->kv_bytes / per_block;
    if (blocks > (uint64_t)INT32_MAX / (uint64_t)block_size - 1)
        blocks = (uint64_t)INT32_MAX / (uint64_t)block_size - 1;
    /* Ops address one layer's K (or V) cache, null block included, as one
     * range: keep it within what the device can bind (128 MiB on lavapipe;
     * a few GiB on most GPUs). */
    uint64_t layer_block = per_block / (2ull * (uint64_t)c->n_layers);
    if (info.max_range && layer_block && blocks + 1 > info.max_range / layer_block) {
        uint64_t cap = info.max_range / layer_block;
        blocks = cap > 0 ? cap - 1 : 0;
        p->range_blocks = (int)blocks;
        p->kv_bytes = blocks * per_block;
    }
    uint64_t need_blocks = ((uint64_t)want_len + block_size - 1) / block_size;
    if (blocks < need_blocks) {
        if (o->max_model_len > 0 || blocks == 0)
            return duet_error(DUET_ERR_OUT_OF_MEMORY,
                              "one sequence of max_model_len %d needs %.1f MiB of KV cache but "
                              "only %.1f MiB is available (weights %.1f MiB, activations %.1f "
                              "MiB%s); raise --kv-cache-memory or --gpu-memory-utilization, or "
                              "lower --max-model-len",
                              want_len, need_blocks * (double)per_block / 1048576.0,
                              p->kv_bytes / 1048576.0, p->weights / 1048576.0,
                              p->activations / 1048576.0,
                              p->range_blocks ? "; capped by the device's largest buffer "
                                                "range per layer" : "");
        want_len = (int)(blocks * (uint64_t)block_size); /* clamp the default */
    }
    p->num_blocks = (int)blocks + 1; /* + the null block */
    p->max_model_len = want_len;
    return DUET_OK;
}

static duet_status alloc_step_buffers(duet_engine *e)
{
    size_t t = (size_t)e->max_batched, s = (size_t)e->max_num_seqs;
    size_t lr = (size_t)e->max_logit_rows;
    e->sample_rows = malloc(sizeof *e->sample_rows * lr);
    if (!e->sample_rows)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "engine: out of memory for step buffers");
    for (int i = 0; i < 2; i++) {
        e->row_info[i] = malloc(sizeof *e->row_info[i] * lr);
        e->results[i] = malloc(sizeof *e->results[i] * lr);
        if (e->return_logits)
            e->logits[i] = malloc(sizeof(float) * lr * (size_t)e->model->config.vocab);
        if (!e->row_info[i] || !e->results[i] || (e->return_logits && !e->logits[i]))
            return duet_error(DUET_ERR_OUT_OF_MEMORY, "engine: out of memory for step buffers");
    }
    e->tok = malloc(sizeof(int32_t) * t);
    e->pos = malloc(sizeof(int32_t) * t);
    e->slots = malloc(sizeof(int32_t) * t);
    e->qsl = malloc(sizeof(int32_t) * (s + 1));
    e->seq_lens = malloc(sizeof(int32_t) * s);
    e->rows = malloc(sizeof(int32_t) * lr);
    e->tables = malloc(sizeof(int32_t) * s * (size_t)e->max_blocks_per_seq);
    e->aborts = malloc(sizeof *e->aborts * ENGINE_MAX_PENDING_ABORTS);
    /* The end-of-generation tokens, found once (min_tokens bans them). */
    int vocab = e->model->config.vocab;
    for (int v = 0; v < vocab; v++)
        e->n_eog += duet_tokenizer_is_eog(e->model->tokenizer, v) != 0;
    e->eog_ids = malloc(sizeof *e->eog_ids * (size_t)(e->n_eog ? e->n_eog : 1));
    if (!e->eog_ids)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "engine: out of memory for step buffers");
    for (int v = 0, i = 0; v < vocab; v++)
        if (duet_tokenizer_is_eog(e->model->tokenizer, v))
            e->eog_ids[i++] = v;
    if (!e->tok || !e->pos || !e->slots || !e->qsl || !e->seq_lens || !e->rows || !e->tables ||
        !e->aborts)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "engine: out of memory for step buffers");
    return DUET_OK;
}

duet_status duet_engine_create(duet_model *m, const duet_engine_options *opts, duet_engine **out)
{
    duet_engine_options defaults = {0};
    const duet_engine_options *o = opts ? opts : &defaults;
    duet_status rc;
    kv_plan plan;
    *out = NULL;

    int block_size = o->block_size > 0 ? o->block_size : 16;
    int max_num_seqs = o->max_num_seqs > 0 ? o->max_num_seqs : 64;
    int max_batched = o->max_num_batched_tokens > 0 ? o->max_num_batched_tokens : 512;
    if (o->block_size < 0 || o->max_num_seqs < 0 || o->max_num_batched_tokens < 0 ||
        o->max_model_len < 0 || o->long_prefill_token_threshold < 0)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "engine options must not be negative (block_size %d, max_num_seqs %d, "
                          "max_num_batched_tokens %d, max_model_len %d)",
                          o->block_size, o->max_num_seqs, o->max_num_batched_tokens,
                          o->max_model_len);
    if (max_batched < max_num_seqs)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "max_num_batched_tokens %d must be >= max_num_seqs %d (every running "
                          "request needs a token per step)",
                          max_batched, max_num_seqs);
    if ((rc = plan_kv(m, o, block_size, max_num_seqs, max_batched, &plan)))
        return rc;
    if (o->disable_chunked_prefill && plan.max_model_len > max_batched)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "without chunked prefill, max_num_batched_tokens %d must be >= "
                          "max_model_len %d",
                          max_batched, plan.max_model_len);

    duet_engine *e = calloc(1, sizeof *e);
    if (!e)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "engine: out of memory");
    pthread_mutex_init(&e->inbox_lock, NULL);
    e->model = m;
    e->block_size = block_size;
    e->max_model_len = plan.max_model_len;
    e->max_blocks_per_seq = (plan.max_model_len + block_size - 1) / block_size;
    e->max_num_seqs = max_num_seqs;
    e->max_batched = max_batched;
    e->return_logits = o->return_logits;
    e->max_logit_rows = max_logit_rows(max_num_seqs, max_batched);
    e->async = !o->disable_async_scheduling;
    e->next_step_id = 1;
    e->prefix_caching = !o->disable_prefix_caching;
    e->seed_base = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull;

    duet_kv_cache_options ko = {.num_blocks = plan.num_blocks, .block_size = block_size,
                                .enable_prefix_caching = !o->disable_prefix_caching};
    duet_scheduler_options so = {.max_num_seqs = max_num_seqs,
                                 .max_num_batched_tokens = max_batched,
                                 .enable_chunked_prefill = !o->disable_chunked_prefill,
                                 .long_prefill_token_threshold = o->long_prefill_token_threshold,
                                 .policy = o->priority_scheduling ? DUET_SCHED_PRIORITY
                                                                  : DUET_SCHED_FCFS,
                                 .max_prompt_rows = e->max_logit_rows - max_num_seqs};
    duet_runner_options ro = {.max_tokens = max_batched, .max_seqs = max_num_seqs,
                              .max_logit_rows = e->max_logit_rows,
                              .num_blocks = plan.num_blocks, .block_size = block_size,
                              .max_blocks_per_seq = e->max_blocks_per_seq, .kv_type = DUET_F32,
                              .sampling = 1};
    if ((rc = alloc_step_buffers(e)) || (rc = duet_kv_cache_create(&ko, &e->kv)) ||
        (rc = duet_scheduler_create(&so, e->kv, &e->sched)) ||
        (rc = duet_runner_create(m->dev, &m->config, &m->weights, &ro, &e->runner)))
        goto out_free;

    int tokens = (plan.num_blocks - 1) * block_size;
    snprintf(e->kv_summary, sizeof e->kv_summary,
             "KV cache: %d blocks of %d tokens = %d tokens (%.1f MiB), max concurrency %.2fx "
             "at max_model_len %d%s",
             plan.num_blocks - 1, block_size, tokens, plan.kv_bytes / 1048576.0,
             (double)tokens / plan.max_model_len, plan.max_model_len,
             plan.range_blocks ? " (capped: one layer's K cache must fit the device's largest "
                                 "buffer range)" : "");
    *out = e;
    return DUET_OK;

out_free:
    duet_engine_free(e);
    return rc;
}

const char *duet_engine_kv_summary(const duet_engine *e) { return e->kv_summary; }

void duet_engine_free(duet_engine *e)
{
    if (!e)
        return;
    for (int i = 0; i < e->n_active; i++) {
        duet_kv_cache_free_seq(e->kv, &e->active[i]->base.kv);
        engine_req_free(e->active[i]);
    }
    for (int i = 0; i < e->n_inbox; i++)
        engine_req_free(e->inbox[i]);
    for (int i = 0; i < e->n_deferred; i++)
        engine_req_free(e->deferred[i]);
    if (e->has_inflight && e->runner)
        duet_model_forward_wait(e->runner);
    for (int i = 0; i < e->n_zombies; i++)
        engine_req_free(e->zombies[i]);
    free(e->zombies);
    free(e->deferred);
    for (int i = 0; i < 2; i++) {
        free(e->row_info[i]);
        free(e->results[i]);
        free(e->logits[i]);
    }
    free(e->sample_rows);
    free(e->step_edits);
    free(e->eog_ids);
    duet_runner_free(e->runner);
    duet_scheduler_free(e->sched);
    duet_kv_cache_free(e->kv);
    free(e->active);
    free(e->inbox);
    free(e->aborts);
    free(e->tok);
    free(e->pos);
    free(e->slots);
    free(e->qsl);
    free(e->seq_lens);
    free(e->rows);
    free(e->tables);
    pthread_mutex_destroy(&e->inbox_lock);
    free(e);
}
