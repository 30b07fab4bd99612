/*
 * chat_template.c — the public-internal entry points of the chat-template
 * interpreter: compile once (syntax tree in the template's own arena),
 * render many times (each render in a fresh arena, so a compiled template
 * is read-only and may be rendered from several threads at once).
 */
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "error.h"
#include "jinja_impl.h"

struct duet_chat_template {
    jinja_arena arena;
    jnode *root;
};

duet_status duet_chat_template_compile(const char *src, size_t len, duet_chat_template **out)
{
    if (!out)
        return duet_error(DUET_ERR_INVALID_ARG, "chat template: out is NULL");
    *out = NULL;
    if (!src)
        return duet_error(DUET_ERR_INVALID_ARG, "chat template: source is NULL");
    if (len > JINJA_MAX_OUTPUT)
        return duet_error(DUET_ERR_INVALID_ARG, "chat template: source of %zu bytes exceeds the "
                          "%u MiB limit", len, JINJA_MAX_OUTPUT >> 20);
    duet_chat_template *t = calloc(1, sizeof *t);
    if (!t)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "chat template: out of memory");
    t->arena.limit = JINJA_MAX_ARENA;
    /* The context lives on the heap: locals changed between setjmp and
     * longjmp would be indeterminate afterwards. */
    jinja_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        free(t);
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "chat template: out of memory");
    }
    c->arena = &t->arena;
    if (setjmp(c->jb)) {
        duet_status st = c->status;
        duet_chat_template_free(t);
        free(c);
        return st;
    }
    t->root = jinja_parse(c, src, len);
    free(c);
    *out = t;
    return DUET_OK;
}

/* The caller's JSON as interpreter values (objects keep their key order). */
static jv *from_json(jinja_ctx *c, const json_t *j, int depth)
{
    if (depth > JINJA_MAX_PARSE_DEPTH)
        jinja_fail(c, DUET_ERR_INVALID_ARG, 0, "chat template: context nested deeper than %d",
                   JINJA_MAX_PARSE_DEPTH);
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        jv *d = jv_dict(c, JV_DICT);
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)j, key, val)
            jv_dict_set(c, d, jv_cstr(c, key), from_json(c, val, depth + 1));
        return d;
    }
    case JSON_ARRAY: {
        jv *l = jv_list(c, json_array_size(j), 0);
        for (size_t i = 0; i < json_array_size(j); i++)
            l->u.list.items[i] = from_json(c, json_array_get(j, i), depth + 1);
        return l;
    }
    case JSON_STRING: return jv_str(c, json_string_value(j), json_string_length(j));
    case JSON_INTEGER: return jv_int(c, json_integer_value(j));
    case JSON_REAL: return jv_float(c, json_real_value(j));
    case JSON_TRUE: return &jinja_true;
    case JSON_FALSE: return &jinja_false;
    default: return &jinja_none;
    }
}

duet_status duet_chat_template_render(const duet_chat_template *t, const json_t *context,
                                      char **out, size_t *out_len)
{
    if (!out)
        return duet_error(DUET_ERR_INVALID_ARG, "chat template: out is NULL");
    *out = NULL;
    if (out_len)
        *out_len = 0;
    if (!t || !context || !json_is_object(context))
        return duet_error(DUET_ERR_INVALID_ARG, "chat template: %s",
                          !t ? "template is NULL" : "context must be a JSON object");
    /* On the heap, as in compile: see there. */
    struct { jinja_ctx c; jinja_arena arena; } *st = calloc(1, sizeof *st);
    if (!st)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "chat template: out of memory");
    st->arena.limit = JINJA_MAX_ARENA;
    st->c.arena = &st->arena;
    if (setjmp(st->c.jb)) {
        duet_status rc = st->c.status;
        jinja_arena_free(&st->arena);
        free(st);
        return rc;
    }
    jv *text = jinja_render_template(&st->c, t->root, from_json(&st->c, context, 0));
    char *s = malloc(text->u.str.len + 1);
    if (!s)
        jinja_fail(&st->c, DUET_ERR_OUT_OF_MEMORY, 0, "chat template: out of memory (%zu bytes)",
                   text->u.str.len + 1);
    memcpy(s, text->u.str.s, text->u.str.len);
    s[text->u.str.len] = '\0';
    *out = s;
    if (out_len)
        *out_len = text->u.str.len;
    jinja_arena_free(&st->arena);
    free(st);
    return DUET_OK;
}

static const char *const REASONING_FIELDS[] = {"reasoning_content", "thinking", "reasoning"};

/* {"thinking": r, **m, "reasoning_content": r}, keeping Python's key order. */
static json_t *alias_reasoning(json_t *m, json_t *r)
{
    json_t *out = json_object();
    const char *key;
    json_t *val;
    if (!out || json_object_set(out, "thinking", r) != 0)
        goto out_fail;
    json_object_foreach(m, key, val)
        if (json_object_set(out, key, val) != 0)
            goto out_fail;
    if (json_object_set(out, "reasoning_content", r) != 0)
        goto out_fail;
    return out;
out_fail:
    json_decref(out);
    return NULL;
}

duet_status duet_chat_template_normalize_messages(json_t *messages)
{
    size_t i;
    json_t *m;
    if (!json_is_array(messages))
        return duet_error(DUET_ERR_INVALID_ARG, "chat template: messages must be a JSON array");
    json_array_foreach(messages, i, m)
        if (!json_is_object(m))
            return duet_error(DUET_ERR_INVALID_ARG, "chat template: messages[%zu] must be an object", i);
    json_array_foreach(messages, i, m) {
        const char *key;
        json_t *val;
        void *tmp;
        json_object_foreach_safe(m, tmp, key, val)
            if (json_is_null(val))
                json_object_del(m, key);
        json_t *r = NULL;
        for (size_t k = 0; k < 3 && !r; k++)
            r = json_object_get(m, REASONING_FIELDS[k]);
        if (!r)
            continue;
        json_t *aliased = alias_reasoning(m, r);
        if (!aliased || json_array_set_new(messages, i, aliased) != 0)
            return duet_error(DUET_ERR_OUT_OF_MEMORY, "chat template: out of memory normalizing messages");
    }
    return DUET_OK;
}

void duet_chat_template_free(duet_chat_template *t)
{
    if (!t)
        return;
    jinja_arena_free(&t->arena);
    free(t);
}
