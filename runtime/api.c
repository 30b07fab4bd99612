/*
 * api.c — the public model API of include/duet.h: loading a GGUF model
 * onto a device and tokenizing with it.
 */
#include <stdlib.h>
#include <string.h>

#include "duet_internal.h"
#include "error.h"

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

    if ((rc = duet_gguf_open(path, &m->gguf)))
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
    if ((rc = duet_device_open(opts->device, &dopts, &m->dev)))
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
    free(m);
}

const char *duet_model_arch(const duet_model *m) { return m->config.arch; }
int duet_model_context_length(const duet_model *m) { return m->config.context_length; }
int duet_model_vocab_size(const duet_model *m) { return m->config.vocab; }

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
