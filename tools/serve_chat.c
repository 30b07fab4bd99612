/*
 * serve_chat.c — chat messages to prompt text through the model's own
 * Jinja chat template (runtime/chat_template.h), as vLLM does with
 * transformers' apply_chat_template.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve.h"

/* OpenAI content may be an array of parts; templates of text models read a
 * string, so text parts are joined with newlines (vLLM's "string" content
 * format). Other part types are refused. */
static int flatten_content(json_t *msg, size_t i, serve_err *e)
{
    json_t *c = json_object_get(msg, "content");
    if (!c || json_is_null(c) || json_is_string(c))
        return 0;
    if (!json_is_array(c))
        return serve_errf(e, 400, "messages",
                          "messages[%zu].content must be a string or an array of parts", i);
    serve_buf b = {0};
    size_t j;
    json_t *part;
    json_array_foreach(c, j, part) {
        const char *type = json_string_value(json_object_get(part, "type"));
        json_t *text = json_object_get(part, "text");
        if (!type || strcmp(type, "text") != 0 || !json_is_string(text)) {
            serve_buf_free(&b);
            return serve_errf(e, 400, "messages",
                              "messages[%zu].content[%zu] has type '%s'; only 'text' parts are "
                              "supported",
                              i, j, type ? type : "?");
        }
        if ((j > 0 && serve_buf_put(&b, "\n", 1)) ||
            serve_buf_put(&b, json_string_value(text), json_string_length(text))) {
            serve_buf_free(&b);
            return serve_errf(e, 500, NULL, "out of memory");
        }
    }
    json_object_set_new(msg, "content", json_stringn(b.p ? b.p : "", b.len));
    serve_buf_free(&b);
    return 0;
}

static json_t *token_string(serve_ctx *ctx, int32_t id)
{
    size_t len;
    const char *s = id >= 0 ? duet_token_bytes(ctx->model, id, &len) : NULL;
    return s ? json_stringn(s, len) : json_string("");
}

/* Build the template's context from the request. NULL with err set. */
static json_t *chat_context(serve_ctx *ctx, json_t *messages, json_t *req, serve_err *e)
{
    json_t *c = json_object(), *msgs = json_deep_copy(messages), *m;
    size_t i;
    int add_gen = 1;
    if (!c || !msgs)
        goto oom;
    json_array_foreach(msgs, i, m) {
        if (!json_is_object(m) || !json_is_string(json_object_get(m, "role"))) {
            serve_errf(e, 400, "messages", "messages[%zu] must be an object with a string 'role'",
                       i);
            goto fail;
        }
        if (flatten_content(m, i, e))
            goto fail;
    }
    /* As transformers does before rendering: drop null-valued keys, mirror
     * reasoning fields. */
    if (duet_chat_template_normalize_messages(msgs)) {
        serve_errf(e, 400, "messages", "%s", duet_last_error());
        goto fail;
    }
    json_t *v = json_object_get(req, "add_generation_prompt");
    if (v && !json_is_null(v)) {
        if (!json_is_boolean(v)) {
            serve_errf(e, 400, "add_generation_prompt", "'add_generation_prompt' must be a boolean");
            goto fail;
        }
        add_gen = json_is_true(v);
    }
    json_object_set_new(c, "messages", msgs);
    msgs = NULL;
    json_object_set_new(c, "add_generation_prompt", json_boolean(add_gen));
    json_object_set_new(c, "bos_token", token_string(ctx, duet_model_bos(ctx->model)));
    json_object_set_new(c, "eos_token", token_string(ctx, duet_model_eos(ctx->model)));
    /* Always present, null when absent (transformers): templates test
     * `tools is not none`, and an undefined name is not none. */
    v = json_object_get(req, "tools");
    json_object_set_new(c, "tools", v && !json_is_null(v) ? json_incref(v) : json_null());
    json_object_set_new(c, "documents", json_null());
    v = json_object_get(req, "chat_template_kwargs");
    if (v && !json_is_null(v)) {
        if (!json_is_object(v)) {
            serve_errf(e, 400, "chat_template_kwargs", "'chat_template_kwargs' must be an object");
            goto fail;
        }
        json_object_update(c, v);
    }
    return c;
oom:
    serve_errf(e, 500, NULL, "out of memory building the chat template context");
fail:
    json_decref(msgs);
    json_decref(c);
    return NULL;
}

int serve_render_chat(serve_ctx *ctx, json_t *messages, json_t *req, char **out, size_t *len,
                      serve_err *err)
{
    if (!ctx->tmpl)
        return serve_errf(err, 400, "messages",
                          "this model has no usable chat template (%s); start the server with "
                          "--chat-template FILE",
                          ctx->tmpl_error ? ctx->tmpl_error : "the GGUF has no tokenizer.chat_template");
    json_t *c = chat_context(ctx, messages, req, err);
    if (!c)
        return -1;
    duet_status st = duet_chat_template_render(ctx->tmpl, c, out, len);
    json_decref(c);
    if (st == DUET_ERR_INVALID_ARG)
        return serve_errf(err, 400, "messages", "the chat template refused the messages: %s",
                          duet_last_error());
    if (st)
        return serve_errf(err, 500, NULL, "rendering the chat template failed: %s",
                          duet_last_error());
    return 0;
}
