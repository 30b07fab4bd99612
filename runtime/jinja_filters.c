/*
 * jinja_filters.c — jinja2's filters as chat templates use them (tests are
 * in jinja_tests.c),
 * with transformers' tojson (json.dumps with ensure_ascii=False, no HTML
 * escaping, indent/separators/sort_keys).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_impl.h"

enum {
    F_ABS, F_CAPITALIZE, F_COUNT, F_D, F_DEFAULT, F_DICTSORT, F_E, F_ESCAPE, F_FIRST, F_FLOAT,
    F_INDENT, F_INT, F_ITEMS, F_JOIN, F_LAST, F_LENGTH, F_LIST, F_LOWER, F_MAP, F_MAX, F_MIN,
    F_REJECT, F_REJECTATTR, F_REPLACE, F_REVERSE, F_ROUND, F_SAFE, F_SELECT, F_SELECTATTR,
    F_SORT, F_STRING, F_SUM, F_TITLE, F_TOJSON, F_TRIM, F_UNIQUE, F_UPPER,
};

static const char *const FILTERS[] = {
    "abs", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first", "float",
    "indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min",
    "reject", "rejectattr", "replace", "reverse", "round", "safe", "select", "selectattr",
    "sort", "string", "sum", "title", "tojson", "trim", "unique", "upper",
};

static int find(const char *const *names, size_t n, const char *name)
{
    for (size_t k = 0; k < n; k++)
        if (strcmp(names[k], name) == 0)
            return (int)k;
    return -1;
}

int jinja_filter_id(const char *name) { return find(FILTERS, sizeof FILTERS / sizeof *FILTERS, name); }

static jv *need(jinja_ctx *c, int line, jv *v, const char *what)
{
    if (!v)
        jinja_fail(c, DUET_ERR_INVALID_ARG, line, "%s: missing argument", what);
    return v;
}

/* ---- helpers ----------------------------------------------------------------------- */

static int arg_bool(jv *v, int dflt) { return v ? jv_truthy(v) : dflt; }

/* item.a.b (dotted attribute path, integer parts index lists) */
static jv *attr_path(jinja_render *r, int line, jv *item, jv *path)
{
    jinja_ctx *c = jinja_render_ctx(r);
    if (path->kind == JV_INT)
        return jinja_getitem(r, line, item, path);
    if (path->kind != JV_STR)
        jinja_fail(c, DUET_ERR_INVALID_ARG, line, "attribute must be a string, not %s", jv_type_name(path));
    const char *p = path->u.str.s, *end = p + path->u.str.len;
    while (p <= end) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        if (!dot)
            dot = end;
        jv *key = jv_str(c, p, (size_t)(dot - p));
        char *num_end;
        long long idx = strtoll(key->u.str.s, &num_end, 10);
        if (key->u.str.len && *num_end == '\0')
            key = jv_int(c, idx);
        item = jinja_getitem(r, line, item, key);
        p = dot + 1;
    }
    return item;
}

static jv *list_of(jinja_render *r, int line, jv *v)
{
    size_t n;
    jv **items = jinja_iter(r, line, v, &n);
    jv *out = jv_list(jinja_render_ctx(r), n, 0);
    if (n)
        memcpy(out->u.list.items, items, n * sizeof *items);
    return out;
}

/* Stable merge sort of items by key (fold: strings compared lowercased). */
static void sort_items(jinja_render *r, int line, jv **items, jv **keys, size_t n, int fold, int reverse)
{
    jinja_ctx *c = jinja_render_ctx(r);
    if (n < 2)
        return;
    size_t h = n / 2;
    sort_items(r, line, items, keys, h, fold, reverse);
    sort_items(r, line, items + h, keys + h, n - h, fold, reverse);
    jv **ti = jinja_alloc(c, n * sizeof *ti), **tk = jinja_alloc(c, n * sizeof *tk);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        int cmp = jv_compare(c, line, keys[j], keys[i], fold);
        int take_right = reverse ? cmp > 0 : cmp < 0;
        ti[k] = take_right ? items[j] : items[i];
        tk[k++] = take_right ? keys[j++] : keys[i++];
    }
    while (i < h) {
        ti[k] = items[i];
        tk[k++] = keys[i++];
    }
    while (j < n) {
        ti[k] = items[j];
        tk[k++] = keys[j++];
    }
    memcpy(items, ti, n * sizeof *ti);
    memcpy(keys, tk, n * sizeof *tk);
}

jv *jinja_html_escape(jinja_ctx *c, const jv *v)
{
    if (v->kind == JV_STR && v->u.str.safe)
        return (jv *)v;
    jv *s = jv_to_str(c, v);
    jinja_buf b = {0};
    for (size_t i = 0; i < s->u.str.len; i++) {
        char ch = s->u.str.s[i];
        switch (ch) {
        case '&': jb_puts(c, &b, "&amp;"); break;
        case '<': jb_puts(c, &b, "&lt;"); break;
        case '>': jb_puts(c, &b, "&gt;"); break;
        case '"': jb_puts(c, &b, "&#34;"); break;
        case '\'': jb_puts(c, &b, "&#39;"); break;
        default: jb_putc(c, &b, ch);
        }
    }
    jv *out = jb_value(c, &b);
    out->u.str.safe = 1;
    return out;
}

static jv *indent(jinja_ctx *c, jv *v, jv *width, int first, int blank)
{
    jv *s = jv_to_str(c, v);
    jinja_buf pad = {0}, b = {0};
    if (width && width->kind == JV_STR)
        jb_put(c, &pad, width->u.str.s, width->u.str.len);
    else
        for (int64_t k = 0; k < (width && width->kind == JV_INT ? width->u.i : 4) && k < 1024; k++)
            jb_putc(c, &pad, ' ');
    /* jinja2 appends a newline, then splits lines; the last (empty) piece goes */
    size_t start = 0, len = s->u.str.len;
    int line_no = 0;
    const char *p = s->u.str.s;
    while (start <= len) {
        size_t e = start;
        while (e < len && p[e] != '\n' && p[e] != '\r')
            e++;
        int empty = e == start;
        if (line_no > 0)
            jb_putc(c, &b, '\n');
        if ((line_no > 0 || first) && (blank || !empty))
            jb_put(c, &b, pad.p ? pad.p : "", pad.len);
        jb_put(c, &b, p + start, e - start);
        line_no++;
        if (e < len && p[e] == '\r' && e + 1 < len && p[e + 1] == '\n')
            e++;
        start = e + 1;
    }
    return jb_value(c, &b);
}

static jv *to_int(jinja_ctx *c, jv *v, jv *dflt, int64_t base)
{
    if (v->kind == JV_INT)
        return v;
    if (v->kind == JV_BOOL)
        return jv_int(c, v->u.b);
    if (v->kind == JV_FLOAT && isfinite(v->u.f) && fabs(v->u.f) < 9.2e18)
        return jv_int(c, (int64_t)v->u.f);
    if (v->kind == JV_STR) {
        char buf[128];
        snprintf(buf, sizeof buf, "%.*s", (int)(v->u.str.len < 127 ? v->u.str.len : 127), v->u.str.s);
        char *p = buf, *end;
        while (*p == ' ' || *p == '\t' || *p == '\n')
            p++;
        char *q = p;
        if (*q == '+' || *q == '-')
            q++;
        if (q[0] == '0' && ((base == 16 && (q[1] | 32) == 'x') || (base == 8 && (q[1] | 32) == 'o') ||
                            (base == 2 && (q[1] | 32) == 'b')))
            memmove(q, q + 2, strlen(q + 2) + 1);
        long long x = strtoll(p, &end, (int)base);
        while (*end == ' ' || *end == '\t' || *end == '\n')
            end++;
        if (end != p && *end == '\0')
            return jv_int(c, x);
        double f = strtod(p, &end);
        while (*end == ' ' || *end == '\t' || *end == '\n')
            end++;
        if (end != p && *end == '\0' && isfinite(f) && fabs(f) < 9.2e18)
            return jv_int(c, (int64_t)f);
    }
    return dflt ? dflt : jv_int(c, 0);
}

static jv *to_float(jinja_ctx *c, jv *v, jv *dflt)
{
    if (jv_is_num(v))
        return jv_float(c, jv_num(v));
    if (v->kind == JV_STR) {
        char buf[128], *end;
        snprintf(buf, sizeof buf, "%.*s", (int)(v->u.str.len < 127 ? v->u.str.len : 127), v->u.str.s);
        double f = strtod(buf, &end);
        while (*end == ' ' || *end == '\n' || *end == '\t')
            end++;
        if (end != buf && *end == '\0')
            return jv_float(c, f);
    }
    return dflt ? dflt : jv_float(c, 0.0);
}

/* select/reject/selectattr/rejectattr/map: apply a test or filter named by
 * the first string argument to each item. */
static jv *select_items(jinja_render *r, int line, jv *v, const jinja_args *a, int on_attr, int keep)
{
    jinja_ctx *c = jinja_render_ctx(r);
    size_t n = 0, argi = 0;
    jv **items = jv_truthy(v) ? jinja_iter(r, line, v, &n) : NULL; /* jinja2: "if seq:" */
    jv *attr = NULL;
    if (on_attr)
        attr = need(c, line, jinja_arg(a, argi++, NULL), "selectattr attribute");
    jv *test = jinja_arg(a, argi++, NULL);
    int tid = -1;
    if (test && n > 0) { /* jinja2 looks the test up per item */
        if (test->kind != JV_STR)
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "select: the test name must be a string");
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(test->u.str.len < 63 ? test->u.str.len : 63), test->u.str.s);
        tid = jinja_test_id(name);
        if (tid < 0)
            jinja_fail(c, DUET_ERR_UNSUPPORTED, line, "test '%s' is not supported", name);
    }
    jv **targs = a->pos + (argi < a->npos ? argi : a->npos);
    size_t ntargs = argi < a->npos ? a->npos - argi : 0;
    jv *out = jv_list(c, n, SEQ_GEN);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        jv *x = on_attr ? attr_path(r, line, items[i], attr) : items[i];
        int ok = tid < 0 ? jv_truthy(x) : jinja_apply_test(r, line, tid, x, targs, ntargs);
        if (ok == keep)
            out->u.list.items[k++] = items[i];
    }
    out->u.list.n = k;
    return out;
}

static jv *map_items(jinja_render *r, int line, jv *v, const jinja_args *a)
{
    jinja_ctx *c = jinja_render_ctx(r);
    size_t n = 0;
    jv **items = jv_truthy(v) ? jinja_iter(r, line, v, &n) : NULL; /* jinja2: "if seq:" */
    jv *out = jv_list(c, n, SEQ_GEN);
    jv *attr = jinja_arg(a, (size_t)-1, "attribute");
    if (attr) {
        jv *dflt = jinja_arg(a, (size_t)-1, "default");
        for (size_t i = 0; i < n; i++) {
            jv *x = attr_path(r, line, items[i], attr);
            out->u.list.items[i] = x->kind == JV_UNDEF && dflt ? dflt : x;
        }
        return out;
    }
    jv *fname = need(c, line, jinja_arg(a, 0, NULL), "map filter name");
    if (n == 0)
        return out;
    char name[64];
    if (fname->kind != JV_STR)
        jinja_fail(c, DUET_ERR_INVALID_ARG, line, "map: the filter name must be a string");
    snprintf(name, sizeof name, "%.*s", (int)(fname->u.str.len < 63 ? fname->u.str.len : 63), fname->u.str.s);
    int fid = jinja_filter_id(name);
    if (fid < 0)
        jinja_fail(c, DUET_ERR_UNSUPPORTED, line, "filter '%s' is not supported", name);
    for (size_t i = 0; i < n; i++)
        out->u.list.items[i] = jinja_apply_filter(r, line, fid, items[i], a->pos + 1, a->npos - 1,
                                                  a->kwnames, a->kwvals, a->nkw);
    return out;
}

static jv *tojson(jinja_render *r, int line, jv *v, const jinja_args *a)
{
    jinja_ctx *c = jinja_render_ctx(r);
    jinja_json_opts o = {.item_sep = ", ", .key_sep = ": "};
    jv *ea = jinja_arg(a, 0, "ensure_ascii"), *ind = jinja_arg(a, 1, "indent");
    jv *sep = jinja_arg(a, 2, "separators"), *sk = jinja_arg(a, 3, "sort_keys");
    o.ensure_ascii = arg_bool(ea, 0);
    o.sort_keys = arg_bool(sk, 0);
    if (ind && ind->kind != JV_NONE) {
        if (ind->kind == JV_STR) {
            o.indent = jinja_strndup(c, ind->u.str.s, ind->u.str.len);
        } else if (ind->kind == JV_INT && ind->u.i >= 0 && ind->u.i <= 64) {
            char *sp = jinja_alloc(c, (size_t)ind->u.i + 1);
            memset(sp, ' ', (size_t)ind->u.i);
            o.indent = sp;
        } else {
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "tojson: indent must be a string or 0..64");
        }
        o.item_sep = ",";
    }
    if (sep && sep->kind != JV_NONE) {
        if (sep->kind != JV_LIST || sep->u.list.n != 2 || sep->u.list.items[0]->kind != JV_STR ||
            sep->u.list.items[1]->kind != JV_STR)
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "tojson: separators must be two strings");
        o.item_sep = jinja_strndup(c, sep->u.list.items[0]->u.str.s, sep->u.list.items[0]->u.str.len);
        o.key_sep = jinja_strndup(c, sep->u.list.items[1]->u.str.s, sep->u.list.items[1]->u.str.len);
    }
    jinja_buf b = {0};
    jv_write_json(c, line, &b, v, &o, 0);
    return jb_value(c, &b);
}

static jv *sorted(jinja_render *r, int line, jv *v, const jinja_args *a, int is_dictsort)
{
    jinja_ctx *c = jinja_render_ctx(r);
    jv *list;
    if (is_dictsort) {
        if (v->kind != JV_DICT)
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "dictsort needs a dict, not %s", jv_type_name(v));
        list = jv_list(c, v->u.dict.n, 0);
        for (size_t k = 0; k < v->u.dict.n; k++) {
            jv *pair = jv_list(c, 2, 1);
            pair->u.list.items[0] = v->u.dict.keys[k];
            pair->u.list.items[1] = v->u.dict.vals[k];
            list->u.list.items[k] = pair;
        }
    } else {
        list = list_of(r, line, v);
    }
    int fold = !arg_bool(jinja_arg(a, is_dictsort ? 0 : 1, "case_sensitive"), 0);
    int reverse = arg_bool(jinja_arg(a, is_dictsort ? 2 : 0, "reverse"), 0);
    jv *attr = is_dictsort ? NULL : jinja_arg(a, 2, "attribute");
    jv *by = is_dictsort ? jinja_arg(a, 1, "by") : NULL;
    int by_value = by && by->kind == JV_STR && by->u.str.len == 5 && memcmp(by->u.str.s, "value", 5) == 0;
    size_t n = list->u.list.n;
    jv **keys = jinja_alloc(c, (n ? n : 1) * sizeof *keys);
    for (size_t k = 0; k < n; k++) {
        jv *x = list->u.list.items[k];
        keys[k] = is_dictsort ? x->u.list.items[by_value] : attr ? attr_path(r, line, x, attr) : x;
    }
    sort_items(r, line, list->u.list.items, keys, n, fold, reverse);
    return list;
}

/* ---- filters ------------------------------------------------------------------------ */

jv *jinja_apply_filter(jinja_render *r, int line, int id, jv *v, jv **args, size_t nargs,
                       const char **kwnames, jv **kwvals, size_t nkw)
{
    jinja_ctx *c = jinja_render_ctx(r);
    jinja_args a = {args, nargs, kwnames, kwvals, nkw};
    switch (id) {
    case F_ABS:
        if (!jv_is_num(v))
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "abs needs a number, not %s", jv_type_name(v));
        if (v->kind == JV_FLOAT)
            return jv_float(c, fabs(v->u.f));
        if (v->kind == JV_BOOL)
            return jv_int(c, v->u.b);
        if (v->u.i == INT64_MIN)
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "integer overflow in abs");
        return v->u.i < 0 ? jv_int(c, -v->u.i) : v;
    case F_CAPITALIZE: return jinja_str_case(c, jv_to_str(c, v), CASE_CAPITALIZE);
    case F_LOWER: return jinja_str_case(c, jv_to_str(c, v), CASE_LOWER);
    case F_UPPER: return jinja_str_case(c, jv_to_str(c, v), CASE_UPPER);
    case F_TITLE: return jinja_str_case(c, jv_to_str(c, v), CASE_TITLE_JINJA);
    case F_COUNT: case F_LENGTH:
        switch (v->kind) {
        case JV_UNDEF: return jv_int(c, 0);
        case JV_STR: return jv_int(c, (int64_t)jinja_utf8_count(v->u.str.s, v->u.str.len));
        case JV_LIST:
            if (v->u.list.tuple == SEQ_GEN)
                jinja_fail(c, DUET_ERR_INVALID_ARG, line, "a generator has no length (add '| list')");
            return jv_int(c, (int64_t)v->u.list.n);
        case JV_DICT: return jv_int(c, (int64_t)v->u.dict.n);
        default: jinja_fail(c, DUET_ERR_INVALID_ARG, line, "a %s has no length", jv_type_name(v));
        }
    case F_D: case F_DEFAULT: {
        jv *dflt = jinja_arg(&a, 0, "default_value");
        int boolean = arg_bool(jinja_arg(&a, 1, "boolean"), 0);
        if (v->kind == JV_UNDEF || (boolean && !jv_truthy(v)))
            return dflt ? dflt : jv_str(c, "", 0);
        return v;
    }
    case F_DICTSORT: return sorted(r, line, v, &a, 1);
    case F_SORT: return sorted(r, line, v, &a, 0);
    case F_E: case F_ESCAPE: return jinja_html_escape(c, v);
    case F_FIRST: case F_LAST: {
        size_t n;
        jv **items = jinja_iter(r, line, v, &n);
        if (id == F_LAST && v->kind == JV_LIST && v->u.list.tuple == SEQ_GEN)
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "last: a generator is not reversible (add '| list')");
        return n == 0 ? &jinja_undef : items[id == F_FIRST ? 0 : n - 1];
    }
    case F_FLOAT: return to_float(c, v, jinja_arg(&a, 0, "default"));
    case F_INT: {
        jv *base = jinja_arg(&a, 1, "base");
        return to_int(c, v, jinja_arg(&a, 0, "default"), base && base->kind == JV_INT ? base->u.i : 10);
    }
    case F_INDENT:
        return indent(c, v, jinja_arg(&a, 0, "width"), arg_bool(jinja_arg(&a, 1, "first"), 0),
                      arg_bool(jinja_arg(&a, 2, "blank"), 0));
    case F_ITEMS: {
        if (v->kind == JV_UNDEF)
            return jv_list(c, 0, 0);
        if (v->kind != JV_DICT)
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "items needs a dict, not %s", jv_type_name(v));
        jv *list = jv_list(c, v->u.dict.n, SEQ_GEN);
        for (size_t k = 0; k < v->u.dict.n; k++) {
            jv *pair = jv_list(c, 2, 1);
            pair->u.list.items[0] = v->u.dict.keys[k];
            pair->u.list.items[1] = v->u.dict.vals[k];
            list->u.list.items[k] = pair;
        }
        return list;
    }
    case F_JOIN: {
        size_t n;
        jv **items = jinja_iter(r, line, v, &n);
        jv *sep = jinja_arg(&a, 0, "d"), *attr = jinja_arg(&a, 1, "attribute");
        jinja_buf b = {0};
        for (size_t k = 0; k < n; k++) {
            if (k && sep)
                jv_write_str(c, &b, sep);
            jv_write_str(c, &b, attr ? attr_path(r, line, items[k], attr) : items[k]);
        }
        return jb_value(c, &b);
    }
    case F_LIST: return list_of(r, line, v);
    case F_MAP: return map_items(r, line, v, &a);
    case F_MAX: case F_MIN: {
        size_t n;
        jv **items = jinja_iter(r, line, v, &n);
        jv *attr = jinja_arg(&a, 1, "attribute");
        int fold = !arg_bool(jinja_arg(&a, 0, "case_sensitive"), 0);
        jv *best = NULL, *best_key = NULL;
        for (size_t k = 0; k < n; k++) {
            jv *key = attr ? attr_path(r, line, items[k], attr) : items[k];
            int cmp = best ? jv_compare(c, line, key, best_key, fold) : 0;
            if (!best || (id == F_MAX ? cmp > 0 : cmp < 0)) {
                best = items[k];
                best_key = key;
            }
        }
        return best ? best : &jinja_undef;
    }
    case F_SELECT: return select_items(r, line, v, &a, 0, 1);
    case F_REJECT: return select_items(r, line, v, &a, 0, 0);
    case F_SELECTATTR: return select_items(r, line, v, &a, 1, 1);
    case F_REJECTATTR: return select_items(r, line, v, &a, 1, 0);
    case F_REPLACE: {
        jv *s = jv_to_str(c, v), *old = jinja_arg(&a, 0, "old"), *new_ = jinja_arg(&a, 1, "new");
        jv *count = jinja_arg(&a, 2, "count");
        if (!old || !new_)
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "replace needs old and new strings");
        return jinja_str_replace(c, s, jv_to_str(c, old), jv_to_str(c, new_),
                                 count && count->kind == JV_INT ? count->u.i : -1);
    }
    case F_REVERSE: {
        if (v->kind == JV_STR) {
            size_t n;
            jv **chars = jinja_iter(r, line, v, &n);
            jinja_buf b = {0};
            for (size_t k = n; k > 0; k--)
                jb_put(c, &b, chars[k - 1]->u.str.s, chars[k - 1]->u.str.len);
            return jb_value(c, &b);
        }
        jv *list = list_of(r, line, v);
        list->u.list.tuple = SEQ_GEN; /* reversed(): an iterator */
        for (size_t i = 0, j = list->u.list.n; i + 1 < j; i++, j--) {
            jv *t = list->u.list.items[i];
            list->u.list.items[i] = list->u.list.items[j - 1];
            list->u.list.items[j - 1] = t;
        }
        return list;
    }
    case F_ROUND: {
        jv *prec = jinja_arg(&a, 0, "precision"), *method = jinja_arg(&a, 1, "method");
        int p = prec && prec->kind == JV_INT ? (int)prec->u.i : 0;
        if (!jv_is_num(v))
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "round needs a number, not %s", jv_type_name(v));
        double x = jv_num(v), scale = pow(10, p);
        if (method && method->kind == JV_STR && method->u.str.len == 4 && memcmp(method->u.str.s, "ceil", 4) == 0)
            return jv_float(c, ceil(x * scale) / scale);
        if (method && method->kind == JV_STR && method->u.str.len == 5 && memcmp(method->u.str.s, "floor", 5) == 0)
            return jv_float(c, floor(x * scale) / scale);
        char buf[400];
        snprintf(buf, sizeof buf, "%.*f", p < 0 ? 0 : p > 30 ? 30 : p, x); /* correctly rounded */
        return jv_float(c, strtod(buf, NULL));
    }
    case F_SAFE: return jv_markup(c, jv_to_str(c, v));
    case F_STRING: return jv_to_str(c, v);
    case F_SUM: {
        size_t n;
        jv **items = jinja_iter(r, line, v, &n);
        jv *attr = jinja_arg(&a, 0, "attribute"), *acc = jinja_arg(&a, 1, "start");
        if (!acc)
            acc = jv_int(c, 0);
        for (size_t k = 0; k < n; k++) {
            jv *x = attr ? attr_path(r, line, items[k], attr) : items[k];
            if (!jv_is_num(x) || !jv_is_num(acc))
                jinja_fail(c, DUET_ERR_INVALID_ARG, line, "sum needs numbers, not %s", jv_type_name(x));
            if (acc->kind == JV_FLOAT || x->kind == JV_FLOAT)
                acc = jv_float(c, jv_num(acc) + jv_num(x));
            else
                acc = jv_int(c, (int64_t)jv_num(acc) + (x->kind == JV_INT ? x->u.i : x->u.b));
        }
        return acc;
    }
    case F_TOJSON: return tojson(r, line, v, &a);
    case F_TRIM: return jinja_str_strip(c, jv_to_str(c, v), jinja_arg(&a, 0, "chars"), STRIP_BOTH);
    case F_UNIQUE: {
        size_t n;
        jv **items = jinja_iter(r, line, v, &n);
        int fold = !arg_bool(jinja_arg(&a, 0, "case_sensitive"), 0);
        jv *attr = jinja_arg(&a, 1, "attribute");
        jv *out = jv_list(c, n, SEQ_GEN), **seen = jinja_alloc(c, (n ? n : 1) * sizeof *seen);
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            jv *key = attr ? attr_path(r, line, items[i], attr) : items[i];
            if (fold && key->kind == JV_STR)
                key = jinja_str_case(c, key, CASE_LOWER);
            int dup = 0;
            for (size_t j = 0; j < k && !dup; j++)
                dup = jv_equal(seen[j], key);
            if (!dup) {
                seen[k] = key;
                out->u.list.items[k++] = items[i];
            }
        }
        out->u.list.n = k;
        return out;
    }
    }
    jinja_fail(c, DUET_ERR_INTERNAL, line, "filter %d has no implementation", id);
}
