#include "engine_args.h"

#include <stdio.h>
#include <string.h>

#include "cli.h"

enum {
    ARG_MAX_NUM_SEQS = ENGINE_ARG_FIRST,
    ARG_MAX_BATCHED,
    ARG_MAX_MODEL_LEN,
    ARG_BLOCK_SIZE,
    ARG_KV_MEMORY,
    ARG_UTILIZATION,
    ARG_DEVICE_MEMORY,
    ARG_NO_PREFIX,
    ARG_NO_ASYNC,
    ARG_NO_CHUNKED,
    ARG_LONG_PREFILL,
    ARG_PRIORITY,
    ARG_LOAD_FORMAT,
    ARG_MODEL_CONFIG,
    ARG_DUMMY_DTYPE,
    ARG_DUMMY_SEED,
};

const struct option engine_arg_options[] = {
    {"max-num-seqs", required_argument, 0, ARG_MAX_NUM_SEQS},
    {"max-num-batched-tokens", required_argument, 0, ARG_MAX_BATCHED},
    {"max-model-len", required_argument, 0, ARG_MAX_MODEL_LEN},
    {"block-size", required_argument, 0, ARG_BLOCK_SIZE},
    {"kv-cache-memory", required_argument, 0, ARG_KV_MEMORY},
    {"gpu-memory-utilization", required_argument, 0, ARG_UTILIZATION},
    {"device-memory", required_argument, 0, ARG_DEVICE_MEMORY},
    {"no-prefix-caching", no_argument, 0, ARG_NO_PREFIX},
    {"no-async-scheduling", no_argument, 0, ARG_NO_ASYNC},
    {"no-chunked-prefill", no_argument, 0, ARG_NO_CHUNKED},
    {"long-prefill-token-threshold", required_argument, 0, ARG_LONG_PREFILL},
    {"priority-scheduling", no_argument, 0, ARG_PRIORITY},
    {0, 0, 0, 0},
};

const char engine_arg_help[] =
    "engine options:\n"
    "      --max-num-seqs N            requests running at once (default 64)\n"
    "      --max-num-batched-tokens N  tokens per step (default 512)\n"
    "      --max-model-len N           context per request (default: the model's,\n"
    "                                  clamped to what the KV cache holds)\n"
    "      --block-size N              tokens per KV block (default 16)\n"
    "      --kv-cache-memory BYTES     KV cache size (suffixes K, M, G allowed)\n"
    "      --gpu-memory-utilization F  fraction of device memory to use (default 0.9;\n"
    "                                  on the CPU, of --device-memory)\n"
    "      --device-memory BYTES       CPU memory budget (default 4G or RAM if less)\n"
    "      --no-prefix-caching         do not reuse KV blocks of shared prefixes\n"
    "      --no-async-scheduling       prepare each step only after the last one finished\n"
    "                                  (default: step N+1 is scheduled and queued while N runs)\n"
    "      --no-chunked-prefill        admit prompts only whole\n"
    "      --long-prefill-token-threshold N  cap a request's tokens per step\n"
    "      --priority-scheduling       serve by priority, then arrival\n";

/* Bytes with an optional K/M/G suffix (powers of 1024). */
static int parse_bytes(const char *cmd, const char *flag, const char *s, uint64_t *out)
{
    char num[64];
    size_t n = strlen(s);
    uint64_t mult = 1, v;
    if (n == 0 || n >= sizeof num) {
        fprintf(stderr, "duet %s: %s '%s' is not a size\n", cmd, flag, s);
        return -1;
    }
    switch (s[n - 1]) {
    case 'K': case 'k': mult = 1ull << 10; n--; break;
    case 'M': case 'm': mult = 1ull << 20; n--; break;
    case 'G': case 'g': mult = 1ull << 30; n--; break;
    }
    snprintf(num, sizeof num, "%.*s", (int)n, s);
    if (cli_parse_u64(cmd, flag, num, &v))
        return -1;
    if (v == 0 || v > UINT64_MAX / mult) {
        fprintf(stderr, "duet %s: %s '%s' must be a positive size\n", cmd, flag, s);
        return -1;
    }
    *out = v * mult;
    return 0;
}

int engine_arg_parse(const char *cmd, int id, const char *v, duet_engine_options *o)
{
    long n;
    double f;
    switch (id) {
    case ARG_MAX_NUM_SEQS:
        if (cli_parse_int(cmd, "--max-num-seqs", v, 1, 1 << 16, &n)) return -1;
        o->max_num_seqs = (int)n;
        return 1;
    case ARG_MAX_BATCHED:
        if (cli_parse_int(cmd, "--max-num-batched-tokens", v, 1, 1 << 20, &n)) return -1;
        o->max_num_batched_tokens = (int)n;
        return 1;
    case ARG_MAX_MODEL_LEN:
        if (cli_parse_int(cmd, "--max-model-len", v, 2, 1 << 24, &n)) return -1;
        o->max_model_len = (int)n;
        return 1;
    case ARG_BLOCK_SIZE:
        if (cli_parse_int(cmd, "--block-size", v, 1, 1024, &n)) return -1;
        o->block_size = (int)n;
        return 1;
    case ARG_KV_MEMORY:
        return parse_bytes(cmd, "--kv-cache-memory", v, &o->kv_cache_memory) ? -1 : 1;
    case ARG_UTILIZATION:
        if (cli_parse_float(cmd, "--gpu-memory-utilization", v, 0.01, 1.0, &f)) return -1;
        o->gpu_memory_utilization = (float)f;
        return 1;
    case ARG_DEVICE_MEMORY:
        return parse_bytes(cmd, "--device-memory", v, &o->device_memory) ? -1 : 1;
    case ARG_NO_PREFIX: o->disable_prefix_caching = 1; return 1;
    case ARG_NO_ASYNC: o->disable_async_scheduling = 1; return 1;
    case ARG_NO_CHUNKED: o->disable_chunked_prefill = 1; return 1;
    case ARG_LONG_PREFILL:
        if (cli_parse_int(cmd, "--long-prefill-token-threshold", v, 0, 1 << 20, &n)) return -1;
        o->long_prefill_token_threshold = (int)n;
        return 1;
    case ARG_PRIORITY: o->priority_scheduling = 1; return 1;
    }
    return 0;
}

const struct option model_arg_options[] = {
    {"load-format", required_argument, 0, ARG_LOAD_FORMAT},
    {"model-config", required_argument, 0, ARG_MODEL_CONFIG},
    {"dummy-dtype", required_argument, 0, ARG_DUMMY_DTYPE},
    {"dummy-seed", required_argument, 0, ARG_DUMMY_SEED},
    {0, 0, 0, 0},
};

const char model_arg_help[] =
    "model source:\n"
    "      --load-format F             gguf (default) or dummy: seeded random weights\n"
    "      --model-config X            dummy shape: a preset (smollm2-135m, llama-3.2-1b,\n"
    "                                  llama-3.1-8b, qwen2.5-0.5b, ...) or an HF config.json;\n"
    "                                  implies --load-format dummy\n"
    "      --dummy-dtype T             dummy weight type: f32 f16 bf16 q4_0 q4_1 q8_0\n"
    "                                  (default q4_1)\n"
    "      --dummy-seed N              dummy weights seed (default 0)\n";

int model_arg_parse(const char *cmd, int id, const char *v, duet_model_options *mo,
                    char *model_path, size_t cap)
{
    switch (id) {
    case ARG_LOAD_FORMAT:
        if (strcmp(v, "gguf") != 0 && strcmp(v, "dummy") != 0) {
            fprintf(stderr, "duet %s: --load-format '%s' is not one of gguf, dummy\n", cmd, v);
            return -1;
        }
        mo->load_format = v;
        return 1;
    case ARG_MODEL_CONFIG:
        snprintf(model_path, cap, "%s", v);
        mo->load_format = "dummy";
        return 1;
    case ARG_DUMMY_DTYPE: mo->dummy_dtype = v; return 1;
    case ARG_DUMMY_SEED: return cli_parse_u64(cmd, "--dummy-seed", v, &mo->dummy_seed) ? -1 : 1;
    }
    return 0;
}

int shared_arg_parse(const char *cmd, int id, const char *v, duet_engine_options *eo,
                     duet_model_options *mo, char *model_path, size_t cap)
{
    int e = engine_arg_parse(cmd, id, v, eo);
    return e ? e : model_arg_parse(cmd, id, v, mo, model_path, cap);
}

void engine_args_merge(const struct option *a, struct option *out, int cap)
{
    const struct option *lists[] = {a, engine_arg_options, model_arg_options};
    int n = 0;
    for (int l = 0; l < 3; l++)
        for (const struct option *p = lists[l]; p->name && n < cap - 1; p++)
            out[n++] = *p;
    memset(&out[n], 0, sizeof out[n]);
}

int engine_args_help(const char *help)
{
    fputs(help, stdout);
    fputs(engine_arg_help, stdout);
    fputs(model_arg_help, stdout);
    return 1;
}
