/*
 * jinja_ops.c — the chat-template interpreter's operators and access with
 * Python's semantics: attribute and item lookup (with jinja2's undefined
 * messages), slicing on code points, iteration, arithmetic, comparisons
 * and "in".
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "jinja_impl.h"

/* ---- attribute and item access -------------------------------------------------- */

_Noreturn void jinja_fail_undefined(jinja_render *r, int line, const jv *undef)
{
    jinja_fail(jinja_render_ctx(r), DUET_ERR_INVALID_ARG, line, "%s", jv_undef_message(undef));
}

/* How jinja2 names an object's type in its messages. */
static const char *type_repr(const jv *v)
{
    switch (v->kind) {
    case JV_NONE: return "None";
    case JV_BOOL: return "bool object";
    case JV_INT: return "int object";
    case JV_FLOAT: return "float object";
    case JV_STR: return "str object";
    case JV_LIST:
        return v->u.list.tuple == SEQ_GEN ? "generator object" : v->u.list.tuple ? "tuple object" : "list object";
    case JV_NS: return "jinja2.utils.Namespace object";
    default: return "dict object";
    }
}

static jv *missing_attr(jinja_render *r, const jv *obj, const char *name, size_t len)
{
    return jv_undef_why(jinja_render_ctx(r), "'%s' has no attribute '%.*s'", type_repr(obj), (int)(len < 64 ? len : 64), name);
}

jv *jinja_getattr(jinja_render *r, int line, jv *obj, const char *name, size_t len)
{
    if (obj->kind == JV_UNDEF)
        jinja_fail_undefined(r, line, obj);
    int id = jinja_method_id(obj, name, len);
    if (id)
        return jv_func(jinja_render_ctx(r), id, obj);
    if (obj->kind == JV_DICT || obj->kind == JV_NS) {
        jv *v = jv_dict_get(obj, name, len);
        return v ? v : missing_attr(r, obj, name, len);
    }
    return missing_attr(r, obj, name, len);
}

static int64_t to_index(jinja_render *r, int line, const jv *k)
{
    if (k->kind == JV_INT)
        return k->u.i;
    if (k->kind == JV_BOOL)
        return k->u.b;
    jinja_fail(jinja_render_ctx(r), DUET_ERR_INVALID_ARG, line, "indices must be integers, not %s", jv_type_name(k));
}

/* Byte offsets of each code point of a string (n+1 entries). */
/* Byte offset of code point idx (<= the count) of s. */
static size_t cp_byte(const jv *s, size_t idx)
{
    size_t i = 0;
    for (size_t k = 0; k < idx && i < s->u.str.len; k++) {
        uint32_t cp;
        i = jinja_utf8_next(s->u.str.s, s->u.str.len, i, &cp);
    }
    return i;
}

static size_t *cp_offsets(jinja_render *r, const jv *s, size_t *n)
{
    size_t count = jinja_utf8_count(s->u.str.s, s->u.str.len);
    size_t *off = jinja_alloc(jinja_render_ctx(r), (count + 1) * sizeof *off);
    size_t i = 0, k = 0;
    while (i < s->u.str.len) {
        uint32_t cp;
        off[k++] = i;
        i = jinja_utf8_next(s->u.str.s, s->u.str.len, i, &cp);
    }
    off[k] = s->u.str.len;
    *n = count;
    return off;
}

static jv *missing_element(jinja_render *r, const jv *obj, const jv *key)
{
    jinja_buf b = {0};
    jv_write_repr(jinja_render_ctx(r), &b, key);
    return jv_undef_why(jinja_render_ctx(r), "%s has no element %.*s", type_repr(obj), (int)(b.len < 64 ? b.len : 64),
                        b.p ? b.p : "");
}

jv *jinja_getitem(jinja_render *r, int line, jv *obj, jv *key)
{
    switch (obj->kind) {
    case JV_UNDEF: jinja_fail_undefined(r, line, obj);
    case JV_DICT: case JV_NS: {
        jv *v = jv_dict_lookup(obj, key);
        if (v)
            return v;
        if (key->kind == JV_STR)
            return jinja_getattr(r, line, obj, key->u.str.s, key->u.str.len);
        return missing_element(r, obj, key);
    }
    case JV_LIST: case JV_STR: {
        if (key->kind == JV_STR)
            return jinja_getattr(r, line, obj, key->u.str.s, key->u.str.len);
        if ((key->kind != JV_INT && key->kind != JV_BOOL) ||
            (obj->kind == JV_LIST && obj->u.list.tuple == SEQ_GEN))
            return missing_element(r, obj, key);
        int64_t i = to_index(r, line, key);
        if (obj->kind == JV_LIST) {
            int64_t n = (int64_t)obj->u.list.n;
            if (i < 0)
                i += n;
            return i >= 0 && i < n ? obj->u.list.items[i] : missing_element(r, obj, key);
        }
        size_t n = jinja_utf8_count(obj->u.str.s, obj->u.str.len);
        if (i < 0)
            i += (int64_t)n;
        if (i < 0 || i >= (int64_t)n)
            return missing_element(r, obj, key);
        size_t at = cp_byte(obj, (size_t)i);
        uint32_t cp;
        size_t end = jinja_utf8_next(obj->u.str.s, obj->u.str.len, at, &cp);
        return jv_str(jinja_render_ctx(r), obj->u.str.s + at, end - at);
    }
    default: return missing_element(r, obj, key);
    }
}

/* Python's slice.indices(). */
static int64_t slice_bound(int64_t v, int64_t n, int64_t step)
{
    if (v < 0) {
        v += n;
        if (v < 0)
            v = step < 0 ? -1 : 0;
    } else if (v >= n) {
        v = step < 0 ? n - 1 : n;
    }
    return v;
}

jv *jinja_slice(jinja_render *r, int line, jv *obj, jv *a, jv *b, jv *st)
{
    int64_t step = 1;
    if (!st)
        st = &jinja_none;
    if (st->kind != JV_NONE)
        step = to_index(r, line, st);
    if (step == 0)
        jinja_fail(jinja_render_ctx(r), DUET_ERR_INVALID_ARG, line, "slice step cannot be zero");
    size_t len;
    size_t *off = NULL;
    if (obj->kind == JV_LIST && obj->u.list.tuple == SEQ_GEN)
        return jv_undef_why(jinja_render_ctx(r), "a generator cannot be sliced");
    if (obj->kind == JV_LIST)
        len = obj->u.list.n;
    else if (obj->kind == JV_STR)
        len = jinja_utf8_count(obj->u.str.s, obj->u.str.len);
    else if (obj->kind == JV_UNDEF)
        jinja_fail_undefined(r, line, obj);
    else
        jinja_fail(jinja_render_ctx(r), DUET_ERR_INVALID_ARG, line, "a %s cannot be sliced", jv_type_name(obj));
    int64_t L = (int64_t)len;
    if (!a)
        a = &jinja_none;
    if (!b)
        b = &jinja_none;
    int64_t start = a->kind == JV_NONE ? (step < 0 ? L - 1 : 0) : slice_bound(to_index(r, line, a), L, step);
    int64_t stop = b->kind == JV_NONE ? (step < 0 ? -1 : L) : slice_bound(to_index(r, line, b), L, step);
    size_t count = 0;
    if (step > 0 && stop > start)
        count = (size_t)((stop - start + step - 1) / step);
    else if (step < 0 && start > stop)
        count = (size_t)((start - stop - step - 1) / -step);
    if (obj->kind == JV_LIST) {
        jv *out = jv_list(jinja_render_ctx(r), count, obj->u.list.tuple);
        for (size_t k = 0; k < count; k++)
            out->u.list.items[k] = obj->u.list.items[start + (int64_t)k * step];
        return out;
    }
    if (step == 1) {
        size_t from = cp_byte(obj, (size_t)start), to = cp_byte(obj, (size_t)start + count);
        return jv_str(jinja_render_ctx(r), obj->u.str.s + from, to - from);
    }
    off = cp_offsets(r, obj, &len);
    jinja_buf buf = {0};
    for (size_t k = 0; k < count; k++) {
        int64_t i = start + (int64_t)k * step;
        jb_put(jinja_render_ctx(r), &buf, obj->u.str.s + off[i], off[i + 1] - off[i]);
    }
    return jb_value(jinja_render_ctx(r), &buf);
}

jv **jinja_iter(jinja_render *r, int line, jv *v, size_t *n)
{
    switch (v->kind) {
    case JV_UNDEF: *n = 0; return NULL;
    case JV_LIST: *n = v->u.list.n; return v->u.list.items;
    case JV_DICT: *n = v->u.dict.n; return v->u.dict.keys;
    case JV_STR: {
        size_t count;
        size_t *off = cp_offsets(r, v, &count);
        jv **items = jinja_alloc(jinja_render_ctx(r), (count ? count : 1) * sizeof *items);
        for (size_t k = 0; k < count; k++)
            items[k] = jv_str(jinja_render_ctx(r), v->u.str.s + off[k], off[k + 1] - off[k]);
        *n = count;
        return items;
    }
    default:
        jinja_fail(jinja_render_ctx(r), DUET_ERR_INVALID_ARG, line, "a %s is not iterable", jv_type_name(v));
    }
}

/* ---- operators ------------------------------------------------------------------- */

static _Noreturn void bad_operands(jinja_render *r, int line, const char *op, const jv *a, const jv *b)
{
    jinja_fail(jinja_render_ctx(r), DUET_ERR_INVALID_ARG, line, "unsupported operand types for %s: %s and %s", op,
               jv_type_name(a), jv_type_name(b));
}

static int64_t as_int(const jv *v) { return v->kind == JV_INT ? v->u.i : v->u.b; }

static jv *repeat(jinja_render *r, int line, jv *seq, int64_t times)
{
    if (times < 0)
        times = 0;
    if (seq->kind == JV_STR) {
        if (seq->u.str.len && (uint64_t)times > JINJA_MAX_OUTPUT / seq->u.str.len)
            jinja_fail(jinja_render_ctx(r), DUET_ERR_INVALID_ARG, line, "string repetition exceeds the %u MiB limit",
                       JINJA_MAX_OUTPUT >> 20);
        jinja_buf b = {0};
        for (int64_t k = 0; k < times; k++)
            jb_put(jinja_render_ctx(r), &b, seq->u.str.s, seq->u.str.len);
        return jb_value(jinja_render_ctx(r), &b);
    }
    if (seq->u.list.n && (uint64_t)times > (1u << 20) / seq->u.list.n)
        jinja_fail(jinja_render_ctx(r), DUET_ERR_INVALID_ARG, line, "list repetition longer than 2^20 items");
    jv *out = jv_list(jinja_render_ctx(r), seq->u.list.n * (size_t)times, seq->u.list.tuple);
    for (int64_t k = 0; k < times; k++)
        memcpy(out->u.list.items + (size_t)k * seq->u.list.n, seq->u.list.items,
               seq->u.list.n * sizeof(jv *));
    return out;
}

jv *jinja_arith(jinja_render *r, int line, int op, jv *a, jv *b)
{
    static const char *const names[] = {"", "+", "-", "*", "/", "//", "%", "**"};
    jinja_ctx *c = jinja_render_ctx(r);
    if (jv_is_num(a) && jv_is_num(b)) {
        int ints = a->kind != JV_FLOAT && b->kind != JV_FLOAT;
        if (ints && op != OP_DIV) {
            int64_t x = as_int(a), y = as_int(b), z = 0;
            int ovf = 0;
            switch (op) {
            case OP_ADD: ovf = __builtin_add_overflow(x, y, &z); break;
            case OP_SUB: ovf = __builtin_sub_overflow(x, y, &z); break;
            case OP_MUL: ovf = __builtin_mul_overflow(x, y, &z); break;
            case OP_FLOORDIV: case OP_MOD:
                if (y == 0)
                    jinja_fail(c, DUET_ERR_INVALID_ARG, line, "integer division or modulo by zero");
                if (x == INT64_MIN && y == -1) {
                    ovf = 1;
                    break;
                }
                z = op == OP_FLOORDIV ? x / y : x % y;
                if (op == OP_FLOORDIV && (x % y != 0) && ((x < 0) != (y < 0)))
                    z--;
                if (op == OP_MOD && z != 0 && ((z < 0) != (y < 0)))
                    z += y;
                break;
            case OP_POW:
                if (y < 0)
                    return jv_float(c, pow((double)x, (double)y));
                z = 1;
                for (int64_t k = 0; k < y && !ovf; k++) {
                    ovf = __builtin_mul_overflow(z, x, &z);
                    if (z == 0 || z == 1)
                        break;
                }
                if (z == 1 && x == -1 && (y & 1))
                    z = -1;
                break;
            }
            if (ovf)
                jinja_fail(c, DUET_ERR_INVALID_ARG, line, "integer overflow in %s", names[op]);
            return jv_int(c, z);
        }
        double x = jv_num(a), y = jv_num(b);
        switch (op) {
        case OP_ADD: return jv_float(c, x + y);
        case OP_SUB: return jv_float(c, x - y);
        case OP_MUL: return jv_float(c, x * y);
        case OP_POW: return jv_float(c, pow(x, y));
        default:
            if (y == 0)
                jinja_fail(c, DUET_ERR_INVALID_ARG, line, "division by zero");
            if (op == OP_DIV)
                return jv_float(c, x / y);
            double m = fmod(x, y);
            if (m != 0 && ((m < 0) != (y < 0)))
                m += y;
            if (op == OP_MOD)
                return jv_float(c, m);
            return jv_float(c, floor(x / y));
        }
    }
    if (op == OP_ADD && a->kind == JV_STR && b->kind == JV_STR) {
        /* Markup + str escapes the str, as markupsafe does */
        int safe = a->u.str.safe || b->u.str.safe;
        if (safe && !a->u.str.safe)
            a = jinja_html_escape(c, a);
        if (safe && !b->u.str.safe)
            b = jinja_html_escape(c, b);
        jinja_buf buf = {0};
        jb_put(c, &buf, a->u.str.s, a->u.str.len);
        jb_put(c, &buf, b->u.str.s, b->u.str.len);
        jv *v = jb_value(c, &buf);
        v->u.str.safe = safe;
        return v;
    }
    if (op == OP_ADD && a->kind == JV_LIST && b->kind == JV_LIST && a->u.list.tuple == b->u.list.tuple &&
        a->u.list.tuple != SEQ_GEN) {
        jv *out = jv_list(c, a->u.list.n + b->u.list.n, a->u.list.tuple);
        memcpy(out->u.list.items, a->u.list.items, a->u.list.n * sizeof(jv *));
        memcpy(out->u.list.items + a->u.list.n, b->u.list.items, b->u.list.n * sizeof(jv *));
        return out;
    }
    jv *seq = a->kind == JV_INT || a->kind == JV_BOOL ? b : a, *times = seq == a ? b : a;
    if (op == OP_MUL && (seq->kind == JV_STR || (seq->kind == JV_LIST && seq->u.list.tuple != SEQ_GEN)) &&
        (times->kind == JV_INT || times->kind == JV_BOOL))
        return repeat(r, line, seq, as_int(times));
    if (op == OP_MOD && a->kind == JV_STR)
        jinja_fail(c, DUET_ERR_UNSUPPORTED, line, "printf-style string formatting ('%%') is not supported");
    if (a->kind == JV_UNDEF || b->kind == JV_UNDEF)
        jinja_fail_undefined(r, line, a->kind == JV_UNDEF ? a : b);
    bad_operands(r, line, names[op], a, b);
}

static int contains(jinja_render *r, int line, jv *needle, jv *hay)
{
    switch (hay->kind) {
    case JV_STR:
        if (needle->kind != JV_STR)
            jinja_fail(jinja_render_ctx(r), DUET_ERR_INVALID_ARG, line, "'in <string>' requires a string, not %s",
                       jv_type_name(needle));
        if (needle->u.str.len == 0)
            return 1;
        return memmem(hay->u.str.s, hay->u.str.len, needle->u.str.s, needle->u.str.len) != NULL;
    case JV_LIST:
        for (size_t i = 0; i < hay->u.list.n; i++)
            if (jv_equal(needle, hay->u.list.items[i]))
                return 1;
        return 0;
    case JV_DICT: case JV_NS: return jv_dict_lookup(hay, needle) != NULL;
    case JV_UNDEF: return 0;
    default:
        jinja_fail(jinja_render_ctx(r), DUET_ERR_INVALID_ARG, line, "'in' needs a container, not a %s",
                   jv_type_name(hay));
    }
}

int jinja_compare_op(jinja_render *r, int line, int op, jv *a, jv *b)
{
    switch (op) {
    case OP_EQ: return jv_equal(a, b);
    case OP_NE: return !jv_equal(a, b);
    case OP_IN: return contains(r, line, a, b);
    case OP_NOTIN: return !contains(r, line, a, b);
    default: {
        int k = jv_compare(jinja_render_ctx(r), line, a, b, 0);
        return op == OP_LT ? k < 0 : op == OP_LE ? k <= 0 : op == OP_GT ? k > 0 : k >= 0;
    }
    }
}
