/*
 * jinja_value.c — the chat-template interpreter's values: the arena they
 * live in, constructors, and Python's view of them (truthiness, ==, <),
 * since templates are written against jinja2 on Python. Their text forms
 * are in jinja_text.c.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "jinja_impl.h"

/* ---- arena ----------------------------------------------------------------- */

struct jinja_chunk {
    jinja_chunk *next;
    size_t used, cap;
    max_align_t data[];
};

#define CHUNK_MIN (64u << 10)

void *jinja_alloc(jinja_ctx *c, size_t n)
{
    jinja_arena *a = c->arena;
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    if (n == 0)
        n = sizeof(max_align_t);
    jinja_chunk *h = a->head;
    if (!h || h->cap - h->used < n) {
        size_t cap = n > CHUNK_MIN ? n : CHUNK_MIN;
        if (a->total + cap > a->limit)
            jinja_fail(c, DUET_ERR_INVALID_ARG, 0,
                       "chat template: rendering needs more than %zu MiB of memory (limit)",
                       a->limit >> 20);
        h = malloc(sizeof *h + cap);
        if (!h)
            jinja_fail(c, DUET_ERR_OUT_OF_MEMORY, 0, "chat template: out of memory (%zu bytes)",
                       cap);
        h->next = a->head;
        h->used = 0;
        h->cap = cap;
        a->head = h;
        a->total += cap;
    }
    void *p = (char *)h->data + h->used;
    h->used += n;
    memset(p, 0, n);
    return p;
}

char *jinja_strndup(jinja_ctx *c, const char *s, size_t n)
{
    char *p = jinja_alloc(c, n + 1);
    if (n)
        memcpy(p, s, n);
    return p;
}

void jinja_arena_free(jinja_arena *a)
{
    jinja_chunk *h = a->head;
    while (h) {
        jinja_chunk *next = h->next;
        free(h);
        h = next;
    }
    a->head = NULL;
    a->total = 0;
}

void jinja_fail(jinja_ctx *c, duet_status st, int line, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (line > 0)
        duet_error(st, "chat template line %d: %s", line, msg);
    else
        duet_error(st, "%s", msg);
    c->status = st;
    longjmp(c->jb, 1);
}

/* ---- constructors ---------------------------------------------------------- */

jv jinja_undef = {.kind = JV_UNDEF};
jv jinja_none = {.kind = JV_NONE};
jv jinja_true = {.kind = JV_BOOL, .u.b = 1};
jv jinja_false = {.kind = JV_BOOL, .u.b = 0};

jv *jv_int(jinja_ctx *c, int64_t i)
{
    jv *v = jinja_alloc(c, sizeof *v);
    v->kind = JV_INT;
    v->u.i = i;
    return v;
}

jv *jv_float(jinja_ctx *c, double f)
{
    jv *v = jinja_alloc(c, sizeof *v);
    v->kind = JV_FLOAT;
    v->u.f = f;
    return v;
}

jv *jv_bool(int b) { return b ? &jinja_true : &jinja_false; }

jv *jv_str_take(jinja_ctx *c, const char *s, size_t len)
{
    if (len > JINJA_MAX_OUTPUT)
        jinja_fail(c, DUET_ERR_INVALID_ARG, 0,
                   "chat template: a string of %zu bytes exceeds the %u MiB limit", len,
                   JINJA_MAX_OUTPUT >> 20);
    jv *v = jinja_alloc(c, sizeof *v);
    v->kind = JV_STR;
    v->u.str.s = s;
    v->u.str.len = len;
    return v;
}

jv *jv_str(jinja_ctx *c, const char *s, size_t len)
{
    return jv_str_take(c, jinja_strndup(c, s, len), len);
}

jv *jv_cstr(jinja_ctx *c, const char *s) { return jv_str(c, s, strlen(s)); }

jv *jv_list(jinja_ctx *c, size_t n, int tuple)
{
    jv *v = jinja_alloc(c, sizeof *v);
    v->kind = JV_LIST;
    v->u.list.items = jinja_alloc(c, (n ? n : 1) * sizeof(jv *));
    v->u.list.n = n;
    v->u.list.tuple = tuple;
    return v;
}

jv *jv_dict(jinja_ctx *c, jv_kind kind)
{
    jv *v = jinja_alloc(c, sizeof *v);
    v->kind = kind;
    return v;
}

jv *jv_dict_lookup(const jv *d, const jv *key)
{
    for (size_t i = 0; i < d->u.dict.n; i++)
        if (jv_equal(d->u.dict.keys[i], key))
            return d->u.dict.vals[i];
    return NULL;
}

jv *jv_dict_get(const jv *d, const char *key, size_t len)
{
    for (size_t i = 0; i < d->u.dict.n; i++) {
        const jv *k = d->u.dict.keys[i];
        if (k->kind == JV_STR && k->u.str.len == len && memcmp(k->u.str.s, key, len) == 0)
            return d->u.dict.vals[i];
    }
    return NULL;
}

void jv_dict_set(jinja_ctx *c, jv *d, jv *key, jv *val)
{
    for (size_t i = 0; i < d->u.dict.n; i++)
        if (jv_equal(d->u.dict.keys[i], key)) {
            d->u.dict.vals[i] = val;
            return;
        }
    if (d->u.dict.n == d->u.dict.cap) {
        size_t cap = d->u.dict.cap ? d->u.dict.cap * 2 : 8;
        jv **k = jinja_alloc(c, cap * sizeof *k), **v = jinja_alloc(c, cap * sizeof *v);
        if (d->u.dict.n) {
            memcpy(k, d->u.dict.keys, d->u.dict.n * sizeof *k);
            memcpy(v, d->u.dict.vals, d->u.dict.n * sizeof *v);
        }
        d->u.dict.keys = k;
        d->u.dict.vals = v;
        d->u.dict.cap = cap;
    }
    d->u.dict.keys[d->u.dict.n] = key;
    d->u.dict.vals[d->u.dict.n++] = val;
}

jv *jv_func(jinja_ctx *c, int id, jv *self)
{
    jv *v = jinja_alloc(c, sizeof *v);
    v->kind = JV_FUNC;
    v->u.fn.id = id;
    v->u.fn.self = self;
    return v;
}

jv *jv_markup(jinja_ctx *c, const jv *s)
{
    jv *v = jinja_alloc(c, sizeof *v);
    *v = *s;
    v->u.str.safe = 1;
    return v;
}

jv *jv_undef_why(jinja_ctx *c, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    jv *v = jinja_alloc(c, sizeof *v);
    v->kind = JV_UNDEF;
    v->u.str.s = jinja_strndup(c, msg, strlen(msg));
    return v;
}

const char *jv_undef_message(const jv *v)
{
    return v->u.str.s ? v->u.str.s : "a value is undefined";
}

/* ---- Python semantics ------------------------------------------------------- */

int jv_truthy(const jv *v)
{
    switch (v->kind) {
    case JV_UNDEF: case JV_NONE: return 0;
    case JV_BOOL: return v->u.b;
    case JV_INT: return v->u.i != 0;
    case JV_FLOAT: return v->u.f != 0.0;
    case JV_STR: return v->u.str.len != 0;
    case JV_LIST: return v->u.list.tuple == SEQ_GEN || v->u.list.n != 0;
    case JV_DICT: return v->u.dict.n != 0;
    default: return 1;
    }
}

int jv_is_num(const jv *v) { return v->kind == JV_INT || v->kind == JV_FLOAT || v->kind == JV_BOOL; }

double jv_num(const jv *v)
{
    return v->kind == JV_FLOAT ? v->u.f : v->kind == JV_INT ? (double)v->u.i : (double)v->u.b;
}

int jv_equal(const jv *a, const jv *b)
{
    if (jv_is_num(a) && jv_is_num(b)) {
        if (a->kind != JV_FLOAT && b->kind != JV_FLOAT)
            return (a->kind == JV_INT ? a->u.i : a->u.b) == (b->kind == JV_INT ? b->u.i : b->u.b);
        return jv_num(a) == jv_num(b);
    }
    if (a->kind != b->kind)
        return 0;
    switch (a->kind) {
    case JV_UNDEF: case JV_NONE: return 1;
    case JV_STR:
        return a->u.str.len == b->u.str.len && memcmp(a->u.str.s, b->u.str.s, a->u.str.len) == 0;
    case JV_LIST:
        if (a->u.list.tuple == SEQ_GEN || b->u.list.tuple == SEQ_GEN)
            return a == b;
        if (a->u.list.tuple != b->u.list.tuple || a->u.list.n != b->u.list.n)
            return 0;
        for (size_t i = 0; i < a->u.list.n; i++)
            if (!jv_equal(a->u.list.items[i], b->u.list.items[i]))
                return 0;
        return 1;
    case JV_DICT:
        if (a->u.dict.n != b->u.dict.n)
            return 0;
        for (size_t i = 0; i < a->u.dict.n; i++) {
            const jv *other = jv_dict_lookup(b, a->u.dict.keys[i]);
            if (!other || !jv_equal(a->u.dict.vals[i], other))
                return 0;
        }
        return 1;
    case JV_FUNC: return a->u.fn.id == b->u.fn.id && a->u.fn.self == b->u.fn.self;
    default: return a == b;
    }
}

static int fold_cmp(const jv *a, const jv *b)
{
    size_t i = 0, j = 0;
    while (i < a->u.str.len && j < b->u.str.len) {
        uint32_t x, y;
        i = jinja_utf8_next(a->u.str.s, a->u.str.len, i, &x);
        j = jinja_utf8_next(b->u.str.s, b->u.str.len, j, &y);
        x = jinja_lower(x);
        y = jinja_lower(y);
        if (x != y)
            return x < y ? -1 : 1;
    }
    return (i < a->u.str.len) - (j < b->u.str.len);
}

int jv_compare(jinja_ctx *c, int line, const jv *a, const jv *b, int fold)
{
    if (jv_is_num(a) && jv_is_num(b)) {
        if (a->kind == JV_INT && b->kind == JV_INT)
            return (a->u.i > b->u.i) - (a->u.i < b->u.i);
        double x = jv_num(a), y = jv_num(b);
        return (x > y) - (x < y);
    }
    if (a->kind == JV_STR && b->kind == JV_STR) {
        if (fold)
            return fold_cmp(a, b);
        size_t n = a->u.str.len < b->u.str.len ? a->u.str.len : b->u.str.len;
        int r = n ? memcmp(a->u.str.s, b->u.str.s, n) : 0;
        if (r)
            return r < 0 ? -1 : 1;
        return (a->u.str.len > b->u.str.len) - (a->u.str.len < b->u.str.len);
    }
    if (a->kind == JV_LIST && b->kind == JV_LIST && a->u.list.tuple == b->u.list.tuple &&
        a->u.list.tuple != SEQ_GEN) {
        for (size_t i = 0; i < a->u.list.n && i < b->u.list.n; i++) {
            if (jv_equal(a->u.list.items[i], b->u.list.items[i]))
                continue;
            return jv_compare(c, line, a->u.list.items[i], b->u.list.items[i], fold);
        }
        return (a->u.list.n > b->u.list.n) - (a->u.list.n < b->u.list.n);
    }
    jinja_fail(c, DUET_ERR_INVALID_ARG, line, "cannot order a %s and a %s", jv_type_name(a),
               jv_type_name(b));
}

const char *jv_type_name(const jv *v)
{
    switch (v->kind) {
    case JV_UNDEF: return "undefined value";
    case JV_NONE: return "none";
    case JV_BOOL: return "bool";
    case JV_INT: return "int";
    case JV_FLOAT: return "float";
    case JV_STR: return "string";
    case JV_LIST: return v->u.list.tuple == SEQ_GEN ? "generator" : v->u.list.tuple ? "tuple" : "list";
    case JV_DICT: return "dict";
    case JV_NS: return "namespace";
    case JV_FUNC: return "function";
    case JV_MACRO: return "macro";
    }
    return "value";
}

/* ---- buffers ------------------------------------------------------------------ */

void jb_put(jinja_ctx *c, jinja_buf *b, const char *s, size_t n)
{
    if (b->len + n > JINJA_MAX_OUTPUT)
        jinja_fail(c, DUET_ERR_INVALID_ARG, 0,
                   "chat template: output exceeds the %u MiB limit", JINJA_MAX_OUTPUT >> 20);
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = jinja_alloc(c, cap);
        if (b->len)
            memcpy(p, b->p, b->len);
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void jb_puts(jinja_ctx *c, jinja_buf *b, const char *s) { jb_put(c, b, s, strlen(s)); }
void jb_putc(jinja_ctx *c, jinja_buf *b, char ch) { jb_put(c, b, &ch, 1); }

jv *jb_value(jinja_ctx *c, jinja_buf *b)
{
    return b->p ? jv_str_take(c, b->p, b->len) : jv_str(c, "", 0);
}
