/*
 * generate_batch.c — `duet generate --prompts-file F`: many prompts through
 * the batched engine at once, results as JSONL in input order.
 *
 * Input: one prompt per line, or JSONL objects {"prompt": "...",
 * optional "id", "max_tokens", "temperature", "top_p", "top_k", "min_p",
 * "repetition_penalty", "presence_penalty", "frequency_penalty",
 * "min_tokens", "seed", "ignore_eos", "priority", "cache_salt"} (chosen per line: a line starting with '{' is
 * JSON). Output, one object per prompt: {"id", "prompt", "text",
 * "token_ids", "finish_reason", "prompt_tokens", "completion_tokens",
 * "cached_tokens"}.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "generate_batch.h"

typedef struct batch_item {
    char id[64];
    char *prompt;
    size_t prompt_len;
    duet_request_params params;
    char cache_salt[128];
    /* Results, filled by the output callback. */
    char *text;
    size_t text_len, text_cap;
    int32_t *tokens;
    int n_tokens, cap_tokens;
    duet_finish finish;
    int n_prompt, n_cached;
} batch_item;

static int append_text(batch_item *it, const char *s, size_t n)
{
    if (it->text_len + n + 1 > it->text_cap) {
        size_t cap = (it->text_len + n + 1) * 2;
        char *nt = realloc(it->text, cap);
        if (!nt)
            return -1;
        it->text = nt;
        it->text_cap = cap;
    }
    memcpy(it->text + it->text_len, s, n);
    it->text_len += n;
    it->text[it->text_len] = '\0';
    return 0;
}

static void on_output(void *user, const duet_request_output *out)
{
    batch_item *it = user;
    append_text(it, out->text, out->text_len);
    for (int i = 0; i < out->n_new_tokens; i++) {
        if (it->n_tokens == it->cap_tokens) {
            int cap = it->cap_tokens ? 2 * it->cap_tokens : 64;
            int32_t *nt = realloc(it->tokens, sizeof *nt * (size_t)cap);
            if (!nt)
                return;
            it->tokens = nt;
            it->cap_tokens = cap;
        }
        it->tokens[it->n_tokens++] = out->new_tokens[i];
    }
    it->finish = out->finish;
    it->n_prompt = out->n_prompt_tokens;
    it->n_cached = out->n_cached_tokens;
}

/* Parse one input line into it; -1 after printing an error. */
static int parse_line(const char *path, int lineno, char *line, const batch_opts *bo,
                      batch_item *it)
{
    it->params = (duet_request_params){.max_tokens = bo->max_tokens,
                                       .temperature = bo->temperature,
                                       .top_p = bo->top_p, .top_k = bo->top_k,
                                       .min_p = bo->min_p,
                                       .seed = bo->seed, .has_seed = 1,
                                       .ignore_eos = bo->ignore_eos};
    snprintf(it->id, sizeof it->id, "%d", lineno);
    if (line[0] != '{') {
        it->prompt = strdup(line);
        it->prompt_len = strlen(line);
        return it->prompt ? 0 : -1;
    }
    json_error_t err;
    json_t *obj = json_loads(line, 0, &err);
    if (!obj || !json_is_object(obj)) {
        fprintf(stderr, "duet generate: %s:%d: invalid JSON: %s\n", path, lineno,
                obj ? "not an object" : err.text);
        json_decref(obj);
        return -1;
    }
    json_t *prompt = json_object_get(obj, "prompt"), *v;
    int rc = 0;
    if (!json_is_string(prompt)) {
        fprintf(stderr, "duet generate: %s:%d: field 'prompt' must be a string\n", path, lineno);
        rc = -1;
    } else {
        it->prompt_len = json_string_length(prompt);
        it->prompt = malloc(it->prompt_len + 1);
        if (it->prompt)
            memcpy(it->prompt, json_string_value(prompt), it->prompt_len + 1);
    }
#define FIELD(name, check, assign)                                                         \
    if (rc == 0 && (v = json_object_get(obj, name))) {                                     \
        if (!(check)) {                                                                    \
            fprintf(stderr, "duet generate: %s:%d: field '%s' has the wrong type\n", path, \
                    lineno, name);                                                         \
            rc = -1;                                                                       \
        } else {                                                                           \
            assign;                                                                        \
        }                                                                                  \
    }
    FIELD("id", json_is_string(v) || json_is_integer(v),
          json_is_string(v) ? snprintf(it->id, sizeof it->id, "%s", json_string_value(v))
                            : snprintf(it->id, sizeof it->id, "%lld",
                                       (long long)json_integer_value(v)));
    FIELD("max_tokens", json_is_integer(v), it->params.max_tokens = (int)json_integer_value(v));
    FIELD("temperature", json_is_number(v), it->params.temperature = (float)json_number_value(v));
    FIELD("seed", json_is_integer(v) && json_integer_value(v) >= 0,
          it->params.seed = (uint64_t)json_integer_value(v));
    FIELD("top_p", json_is_number(v), it->params.top_p = (float)json_number_value(v));
    FIELD("top_k", json_is_integer(v), it->params.top_k = (int)json_integer_value(v));
    FIELD("min_p", json_is_number(v), it->params.min_p = (float)json_number_value(v));
    FIELD("repetition_penalty", json_is_number(v),
          it->params.repetition_penalty = (float)json_number_value(v));
    FIELD("presence_penalty", json_is_number(v),
          it->params.presence_penalty = (float)json_number_value(v));
    FIELD("frequency_penalty", json_is_number(v),
          it->params.frequency_penalty = (float)json_number_value(v));
    FIELD("min_tokens", json_is_integer(v), it->params.min_tokens = (int)json_integer_value(v));
    FIELD("ignore_eos", json_is_boolean(v), it->params.ignore_eos = json_is_true(v));
    FIELD("priority", json_is_integer(v), it->params.priority = (int)json_integer_value(v));
    FIELD("cache_salt", json_is_string(v),
          snprintf(it->cache_salt, sizeof it->cache_salt, "%s", json_string_value(v)));
#undef FIELD
    if (it->cache_salt[0])
        it->params.cache_salt = it->cache_salt;
    json_decref(obj);
    return rc;
}

static int read_items(const char *path, const batch_opts *bo, batch_item **out, int *n_out)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "duet generate: cannot open prompts file '%s'\n", path);
        return -1;
    }
    batch_item *items = NULL;
    int n = 0, cap = 0, lineno = 0, rc = 0;
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t len;
    while (rc == 0 && (len = getline(&line, &line_cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            batch_item *ni = realloc(items, sizeof *ni * (size_t)cap);
            if (!ni) {
                rc = -1;
                break;
            }
            items = ni;
        }
        memset(&items[n], 0, sizeof items[n]);
        rc = parse_line(path, lineno, line, bo, &items[n]);
        n++;
    }
    free(line);
    fclose(f);
    if (rc == 0 && n == 0) {
        fprintf(stderr, "duet generate: prompts file '%s' has no prompts\n", path);
        rc = -1;
    }
    *out = items;
    *n_out = n;
    return rc;
}

static const char *finish_name(duet_finish f)
{
    switch (f) {
    case DUET_FINISHED_STOP: return "stop";
    case DUET_FINISHED_LENGTH: return "length";
    case DUET_FINISHED_ABORT: return "abort";
    default: return "none";
    }
}

static int write_results(FILE *to, const batch_item *items, int n)
{
    for (int i = 0; i < n; i++) {
        const batch_item *it = &items[i];
        json_t *ids = json_array();
        for (int t = 0; t < it->n_tokens; t++)
            json_array_append_new(ids, json_integer(it->tokens[t]));
        json_t *obj = json_pack("{s:s, s:s%, s:s%, s:o, s:s, s:i, s:i, s:i}", "id", it->id,
                                "prompt", it->prompt, it->prompt_len, "text",
                                it->text ? it->text : "", it->text_len, "token_ids", ids,
                                "finish_reason", finish_name(it->finish), "prompt_tokens",
                                it->n_prompt, "completion_tokens", it->n_tokens,
                                "cached_tokens", it->n_cached);
        char *s = obj ? json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
        json_decref(obj);
        if (!s)
            return -1;
        fprintf(to, "%s\n", s);
        free(s);
    }
    return fflush(to) == 0 ? 0 : -1;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int generate_batch(duet_model *m, const batch_opts *bo, const duet_engine_options *eo)
{
    batch_item *items = NULL;
    int n = 0, ret = 1;
    duet_engine *e = NULL;
    FILE *to = stdout;
    if (read_items(bo->prompts_file, bo, &items, &n))
        goto out;
    if (duet_engine_create(m, eo, &e)) {
        fprintf(stderr, "duet generate: %s\n", duet_last_error());
        goto out;
    }
    if (bo->stats)
        fprintf(stderr, "%s\n", duet_engine_kv_summary(e));
    for (int i = 0; i < n; i++) {
        batch_item *it = &items[i];
        size_t cap = it->prompt_len + 8, n_ids;
        int32_t *ids = malloc(sizeof *ids * cap);
        duet_status rc = ids ? duet_tokenize(m, it->prompt, it->prompt_len, 1, bo->parse_special,
                                             ids, cap, &n_ids)
                             : DUET_ERR_OUT_OF_MEMORY;
        it->params.request_id = it->id;
        if (rc == DUET_OK)
            rc = duet_engine_add_request(e, ids, n_ids, &it->params, on_output, it);
        free(ids);
        if (rc) {
            fprintf(stderr, "duet generate: prompt %s: %s\n", it->id, duet_last_error());
            goto out;
        }
    }
    double t0 = now_seconds();
    if (duet_engine_run(e)) {
        fprintf(stderr, "duet generate: %s\n", duet_last_error());
        goto out;
    }
    double secs = now_seconds() - t0;
    if (bo->output && !(to = fopen(bo->output, "w"))) {
        fprintf(stderr, "duet generate: cannot write '%s'\n", bo->output);
        to = stdout;
        goto out;
    }
    if (write_results(to, items, n)) {
        fprintf(stderr, "duet generate: writing the results failed\n");
        goto out;
    }
    if (bo->stats) {
        duet_engine_stats st;
        duet_engine_get_stats(e, &st);
        fprintf(stderr,
                "%d prompts in %.2f s: %llu prompt tokens, %llu generated (%.1f tok/s), %llu "
                "prefix-cache hits of %llu, %llu preemptions\n",
                n, secs, (unsigned long long)st.prompt_tokens,
                (unsigned long long)st.generation_tokens, st.generation_tokens / secs,
                (unsigned long long)st.prefix_hits, (unsigned long long)st.prefix_queries,
                (unsigned long long)st.num_preemptions);
    }
    ret = 0;
out:
    if (to != stdout)
        fclose(to);
    duet_engine_free(e);
    for (int i = 0; i < n; i++) {
        free(items[i].prompt);
        free(items[i].text);
        free(items[i].tokens);
    }
    free(items);
    return ret;
}
