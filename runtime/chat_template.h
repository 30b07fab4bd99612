/*
 * chat_template.h — rendering a model's Jinja chat template (the GGUF key
 * tokenizer.chat_template) the way HF transformers' apply_chat_template
 * does, with an interpreter for the Jinja subset real templates use.
 *
 * The context is a jansson object: "messages" (array of {"role",
 * "content", ...}), "add_generation_prompt" (bool), "bos_token",
 * "eos_token", and anything else the template reads ("tools",
 * "date_string", ...). To render exactly as apply_chat_template does, pass
 * what it passes: "tools" and "documents" are always present (null when
 * absent — templates test "tools is not none"), the messages go through
 * duet_chat_template_normalize_messages() first, and the caller's
 * chat_template_kwargs are added as top-level keys. A missing key is
 * jinja2's undefined; null is None.
 *
 * Errors: DUET_ERR_FORMAT for a syntax error (with the line), at compile
 * time; DUET_ERR_UNSUPPORTED for a construct this interpreter does not have
 * (naming it and the line) — statements at compile time, filters, tests and
 * methods when rendering reaches them (as jinja2 3.x, where an unknown
 * filter in a branch never taken is no error); DUET_ERR_INVALID_ARG when
 * rendering fails because of the input (the template's raise_exception
 * message as "chat template: <message>", an undefined value used, a type
 * error) or a resource limit is hit (16 MiB of output or of any string,
 * 10^6 loop iterations + macro calls, macro nesting 64, range() 100000
 * items, 256 MiB of memory per render). Messages are set for
 * duet_last_error().
 *
 * A compiled template is immutable: renders from several threads at once
 * are safe.
 */
#ifndef DUET_CHAT_TEMPLATE_H
#define DUET_CHAT_TEMPLATE_H

#include <jansson.h>
#include <stddef.h>

#include "duet.h"

typedef struct duet_chat_template duet_chat_template;

/* Parse src[0..len) (need not be NUL-terminated). On success *out is the
 * template, to free with duet_chat_template_free; on failure *out is NULL. */
duet_status duet_chat_template_compile(const char *src, size_t len,
                                       duet_chat_template **out /* OUT */);
/* Render with context. On success *out is malloc'ed and NUL-terminated
 * (the caller frees it) and *out_len (if out_len is not NULL) its length;
 * on failure *out is NULL. */
duet_status duet_chat_template_render(const duet_chat_template *t, const json_t *context,
                                      char **out /* OUT */, size_t *out_len /* OUT */);
/* NULL-safe. */
void duet_chat_template_free(duet_chat_template *t);

/* Rewrite messages (a JSON array, in place) as transformers'
 * apply_chat_template does before rendering: drop keys whose value is null
 * (OpenAI clients send "content": null beside tool_calls), and when a
 * message has reasoning under "reasoning_content", "thinking" or
 * "reasoning", expose it as both "thinking" and "reasoning_content".
 * DUET_ERR_INVALID_ARG if messages is not an array of objects (nothing is
 * changed then); DUET_ERR_OUT_OF_MEMORY. */
duet_status duet_chat_template_normalize_messages(json_t *messages);

#endif
