/*
 * api.c — the public model API of include/duet.h: loading a GGUF model
 * onto a device and tokenizing with it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dummy.h"
#include "duet_internal.h"
#include "error.h"

static duet_status parse_dummy_dtype(const char *name, duet_dtype *out)
{
    static const struct { const char *name; duet_dtype type; } types[] = {
        {"f32", DUET_F32}, {"f16", DUET_F16}, {"bf16", DUET_BF16},
        {"q4_0", DUET_Q4_0}, {"q4_1", DUET_Q4_1}, {"q8_0", DUET_Q8_0},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcasecmp(name, types[i].name) == 0) {
            *out = types[i].type;
            return DUET_OK;
        }
    return duet_error(DUET_ERR_INVALID_ARG,
                      "dummy weight type '%s' is not one of f32, f16, bf16, q4_0, q4_1, q8_0",
                      name);
}

/* The file, or for load_format "dummy" a GGUF image built in memory. */
static duet_status open_gguf(const char *path, const duet_model_options *opts, duet_model *m)
{
    const char *format = opts->load_format ? opts->load_format : "gguf";
    if (strcmp(format, "gguf") == 0)
        return duet_gguf_open(path, &m->gguf);
    if (strcmp(format, "dummy") != 0)
        return duet_error(DUET_ERR_INVALID_ARG, "load format '%s' is not one of gguf, dummy",
                          format);
    duet_dummy_options d = {.model_config = path, .seed = opts->dummy_seed};
    size_t size;
    duet_status rc = parse_dummy_dtype(opts->dummy_dtype ? opts->dummy_dtype : "q4_1",
                                       &d.weight_type);
    if (rc == DUET_OK)
        rc = duet_dummy_gguf(&d, &m->image, &size);
    if (rc == DUET_OK) {
        char name[256];
        snprintf(name, sizeof name, "dummy:%s", path);
        rc = duet_gguf_open_memory(m->image, size, name, &m->gguf);
    }
    return rc;
}

duet_status duet_model_load(const char *path, const duet_model_options *opts, duet_model **out)
{
    duet_model_options defaults = {0};
    duet_status rc;
    *out = NULL;
    if (!opts)
        opts = &defaults;
    if (!path || !*path)
        return duet_error(DUET_ERR_INVALID_ARG, "no model path given");
    duet_model *m = calloc(1, sizeof *m);
    if (!m)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "model: out of memory");

    if ((rc = open_gguf(path, opts, m)))
        goto out_free;
    if ((rc = duet_model_config_read(m->gguf, &m->config))) {
        duet_error_wrap(rc, "%s", path);
        goto out_free;
    }
    if ((rc = duet_tokenizer_load(m->gguf, &m->tokenizer))) {
        duet_error_wrap(rc, "%s", path);
        goto out_free;
    }
    if (duet_tokenizer_vocab_size(m->tokenizer) != m->config.vocab) {
        rc = duet_error(DUET_ERR_FORMAT,
                        "%s: the tokenizer has %d tokens but the model's vocabulary is %d",
                        path, duet_tokenizer_vocab_size(m->tokenizer), m->config.vocab);
        goto out_free;
    }
    duet_device_options dopts = {.n_threads = opts->n_threads};
    if ((rc = duet_device_open(opts->device, &dopts, &m->dev)) == DUET_OK) {
        duet_device_info info;
        duet_dev_info(m->dev, &info);
        snprintf(m->device_name, sizeof m->device_name, "%s: %s", info.backend, info.name);
    }
    if (rc)
        goto out_free;
    if ((rc = duet_model_weights_load(m->gguf, &m->config, m->dev, &m->weights))) {
        duet_error_wrap(rc, "%s", path);
        goto out_free;
    }
    *out = m;
    return DUET_OK;

out_free:
    duet_model_free(m);
    return rc;
}

void duet_model_free(duet_model *m)
{
    if (!m)
        return;
    if (m->dev)
        duet_model_weights_release(m->dev, &m->weights);
    duet_device_close(m->dev);
    duet_tokenizer_free(m->tokenizer);
    duet_gguf_close(m->gguf);
    free(m->image); /* after the reader, which points into it */
    free(m);
}

const char *duet_model_arch(const duet_model *m) { return m->config.arch; }
int duet_model_context_length(const duet_model *m) { return m->config.context_length; }
int duet_model_vocab_size(const duet_model *m) { return m->config.vocab; }
const char *duet_model_device_name(const duet_model *m) { return m->device_name; }
int32_t duet_model_bos(const duet_model *m) { return duet_tokenizer_bos(m->tokenizer); }
int32_t duet_model_eos(const duet_model *m) { return duet_tokenizer_eos(m->tokenizer); }

static const char *gguf_string(const duet_model *m, const char *key, size_t *len)
{
    duet_gguf_str s;
    *len = 0;
    if (!duet_gguf_find(m->gguf, key) || duet_gguf_get_str(m->gguf, key, &s) != DUET_OK)
        return NULL;
    *len = s.len;
    return s.ptr;
}

const char *duet_model_chat_template(const duet_model *m, size_t *len)
{
    return gguf_string(m, "tokenizer.chat_template", len);
}

const char *duet_model_name(const duet_model *m, size_t *len)
{
    return gguf_string(m, "general.name", len);
}

duet_status duet_tokenize(const duet_model *m, const char *text, size_t len, int add_special,
                          int parse_special, int32_t *ids, size_t cap, size_t *n_out)
{
    int32_t *tmp = NULL;
    size_t n = 0;
    duet_status rc = duet_tokenizer_encode(m->tokenizer, text, len, add_special, parse_special,
                                           &tmp, &n);
    if (rc)
        return rc;
    *n_out = n;
    if (n > cap) {
        free(tmp);
        return duet_error(DUET_ERR_INVALID_ARG, "tokenize: %zu ids do not fit in %zu", n, cap);
    }
    if (n)
        memcpy(ids, tmp, n * sizeof *ids);
    free(tmp);
    return DUET_OK;
}

const char *duet_token_bytes(const duet_model *m, int32_t id, size_t *len)
{
    return duet_tokenizer_token_bytes(m->tokenizer, id, len);
}
