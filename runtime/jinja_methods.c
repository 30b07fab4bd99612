/*
 * jinja_methods.c — what chat templates call: Python string and dict
 * methods (message.content.strip(), tool.items(), d.get(k)), the globals
 * transformers provides (range, namespace, dict, raise_exception,
 * strftime_now) and loop.cycle. Strings are handled as code points, as
 * Python does.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jinja_impl.h"

jv *jinja_arg(const jinja_args *a, size_t pos, const char *name)
{
    if (pos < a->npos)
        return a->pos[pos];
    for (size_t k = 0; name && k < a->nkw; k++)
        if (strcmp(a->kwnames[k], name) == 0)
            return a->kwvals[k];
    return NULL;
}

/* ---- string helpers --------------------------------------------------------------- */

static int in_chars(const jv *chars, uint32_t cp)
{
    if (!chars || chars->kind == JV_NONE)
        return jinja_is_space(cp);
    for (size_t i = 0; i < chars->u.str.len;) {
        uint32_t x;
        i = jinja_utf8_next(chars->u.str.s, chars->u.str.len, i, &x);
        if (x == cp)
            return 1;
    }
    return 0;
}

jv *jinja_str_strip(jinja_ctx *c, const jv *s, const jv *chars, int side)
{
    if (chars && chars->kind != JV_NONE && chars->kind != JV_STR)
        jinja_fail(c, DUET_ERR_INVALID_ARG, 0, "chat template: strip() characters must be a string");
    const char *p = s->u.str.s;
    size_t start = 0, end = s->u.str.len;
    if (side != STRIP_RIGHT)
        while (start < end) {
            uint32_t cp;
            size_t next = jinja_utf8_next(p, end, start, &cp);
            if (!in_chars(chars, cp))
                break;
            start = next;
        }
    if (side != STRIP_LEFT)
        while (end > start) {
            size_t k = end - 1;
            while (k > start && ((unsigned char)p[k] & 0xc0) == 0x80)
                k--;
            uint32_t cp;
            if (jinja_utf8_next(p, end, k, &cp) != end)
                cp = (unsigned char)p[end - 1], k = end - 1;
            if (!in_chars(chars, cp))
                break;
            end = k;
        }
    return jv_str(c, p + start, end - start);
}

static int is_cased(uint32_t cp) { return jinja_upper(cp) != cp || jinja_lower(cp) != cp; }

static int jinja_word_sep(uint32_t cp)
{
    return cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || jinja_is_space(cp);
}

jv *jinja_str_case(jinja_ctx *c, const jv *s, int mode)
{
    jinja_buf b = {0};
    int prev_cased = 0, first = 1;
    for (size_t i = 0; i < s->u.str.len;) {
        uint32_t cp;
        i = jinja_utf8_next(s->u.str.s, s->u.str.len, i, &cp);
        uint32_t out = cp;
        switch (mode) {
        case CASE_UPPER: out = jinja_upper(cp); break;
        case CASE_LOWER: out = jinja_lower(cp); break;
        case CASE_CAPITALIZE: out = first ? jinja_upper(cp) : jinja_lower(cp); break;
        case CASE_TITLE_PY: /* str.title(): upper after any uncased character */
            out = prev_cased ? jinja_lower(cp) : jinja_upper(cp);
            prev_cased = is_cased(cp);
            break;
        case CASE_TITLE_JINJA: /* the title filter: words split at - ( { [ < and spaces */
            if (jinja_word_sep(cp)) {
                prev_cased = 0;
            } else {
                out = prev_cased ? jinja_lower(cp) : jinja_upper(cp);
                prev_cased = 1;
            }
            break;
        }
        first = 0;
        jb_put_cp(c, &b, out);
    }
    return jb_value(c, &b);
}

jv *jinja_str_replace(jinja_ctx *c, const jv *s, const jv *old, const jv *new_, int64_t count)
{
    jinja_buf b = {0};
    const char *p = s->u.str.s, *end = p + s->u.str.len;
    size_t ol = old->u.str.len;
    if (ol == 0) { /* Python inserts new_ between all characters */
        for (size_t i = 0; i <= s->u.str.len && count != 0; count--) {
            jb_put(c, &b, new_->u.str.s, new_->u.str.len);
            if (i == s->u.str.len) {
                i++;
                p = end;
                break;
            }
            uint32_t cp;
            size_t next = jinja_utf8_next(s->u.str.s, s->u.str.len, i, &cp);
            jb_put(c, &b, s->u.str.s + i, next - i);
            i = next;
            p = s->u.str.s + i;
        }
        jb_put(c, &b, p, (size_t)(end - p));
        return jb_value(c, &b);
    }
    while (count != 0) {
        const char *hit = memmem(p, (size_t)(end - p), old->u.str.s, ol);
        if (!hit)
            break;
        jb_put(c, &b, p, (size_t)(hit - p));
        jb_put(c, &b, new_->u.str.s, new_->u.str.len);
        p = hit + ol;
        if (count > 0)
            count--;
    }
    jb_put(c, &b, p, (size_t)(end - p));
    return jb_value(c, &b);
}

/* Words of p separated by runs of whitespace; records their byte ranges
 * when starts/ends are not NULL. Returns the count. */
static size_t split_words(const char *p, size_t len, size_t *starts, size_t *ends)
{
    size_t nw = 0, i = 0;
    while (i < len) {
        uint32_t cp;
        size_t next = jinja_utf8_next(p, len, i, &cp);
        if (jinja_is_space(cp)) {
            i = next;
            continue;
        }
        if (starts)
            starts[nw] = i;
        while (i < len) {
            next = jinja_utf8_next(p, len, i, &cp);
            if (jinja_is_space(cp))
                break;
            i = next;
        }
        if (ends)
            ends[nw] = i;
        nw++;
    }
    return nw;
}

/* str.split / str.rsplit; sep NULL or none: runs of whitespace. */
static jv *str_split(jinja_ctx *c, const jv *s, const jv *sep, int64_t maxsplit, int from_right)
{
    size_t n = 0;
    jv *list;
    const char *p = s->u.str.s;
    size_t len = s->u.str.len;
    if (!sep || sep->kind == JV_NONE) {
        /* whitespace-separated words: count, then record */
        size_t nw = split_words(p, len, NULL, NULL);
        size_t *starts = jinja_alloc(c, (nw + 1) * sizeof *starts);
        size_t *ends = jinja_alloc(c, (nw + 1) * sizeof *ends);
        split_words(p, len, starts, ends);
        size_t keep = maxsplit < 0 || (size_t)maxsplit + 1 >= nw ? nw : (size_t)maxsplit + 1;
        list = jv_list(c, keep, 0);
        for (size_t k = 0; k < keep; k++) {
            size_t w = from_right ? nw - keep + k : k;
            size_t a = starts[w], e = ends[w];
            if (!from_right && k + 1 == keep && keep < nw) {
                e = len; /* the rest, as it is */
            }
            if (from_right && k == 0 && keep < nw) {
                a = 0;
            }
            list->u.list.items[k] = jv_str(c, p + a, e - a);
        }
        return list;
    }
    if (sep->kind != JV_STR || sep->u.str.len == 0)
        jinja_fail(c, DUET_ERR_INVALID_ARG, 0, "chat template: split() separator must be a non-empty string");
    size_t sl = sep->u.str.len;
    /* positions of separators, left to right: count, then record */
    size_t *hits = NULL, nh = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1)
            hits = jinja_alloc(c, (nh + 1) * sizeof *hits);
        nh = 0;
        for (size_t i = 0; i + sl <= len;) {
            const char *h = memmem(p + i, len - i, sep->u.str.s, sl);
            if (!h)
                break;
            if (hits)
                hits[nh] = (size_t)(h - p);
            nh++;
            i = (size_t)(h - p) + sl;
        }
    }
    size_t use = maxsplit < 0 || (size_t)maxsplit >= nh ? nh : (size_t)maxsplit;
    size_t first = from_right ? nh - use : 0;
    list = jv_list(c, use + 1, 0);
    size_t prev = 0;
    for (size_t k = 0; k < use; k++) {
        size_t h = hits[first + k];
        list->u.list.items[n++] = jv_str(c, p + prev, h - prev);
        prev = h + sl;
    }
    list->u.list.items[n] = jv_str(c, p + prev, len - prev);
    return list;
}

static int64_t cp_index(const jv *s, size_t byte)
{
    return (int64_t)jinja_utf8_count(s->u.str.s, byte);
}

/* "{} {0} {name}".format(...) without format specs. */
static jv *str_format(jinja_ctx *c, int line, const jv *fmt, const jinja_args *a)
{
    jinja_buf b = {0};
    size_t auto_idx = 0;
    const char *p = fmt->u.str.s, *end = p + fmt->u.str.len;
    while (p < end) {
        if ((*p == '{' || *p == '}') && p + 1 < end && p[1] == *p) {
            jb_putc(c, &b, *p);
            p += 2;
            continue;
        }
        if (*p != '{') {
            jb_putc(c, &b, *p++);
            continue;
        }
        const char *close = memchr(p, '}', (size_t)(end - p));
        if (!close)
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "str.format: unmatched '{'");
        const char *f = p + 1;
        size_t fl = (size_t)(close - f);
        if (memchr(f, ':', fl) || memchr(f, '!', fl) || memchr(f, '.', fl) || memchr(f, '[', fl))
            jinja_fail(c, DUET_ERR_UNSUPPORTED, line, "str.format field '{%.*s}' (specs, conversions, "
                       "attributes) is not supported", (int)fl, f);
        jv *v = NULL;
        if (fl == 0) {
            v = auto_idx < a->npos ? a->pos[auto_idx] : NULL;
            auto_idx++;
        } else if (f[0] >= '0' && f[0] <= '9') {
            size_t idx = (size_t)strtoul(f, NULL, 10);
            v = idx < a->npos ? a->pos[idx] : NULL;
        } else {
            for (size_t k = 0; k < a->nkw; k++)
                if (strlen(a->kwnames[k]) == fl && memcmp(a->kwnames[k], f, fl) == 0)
                    v = a->kwvals[k];
        }
        if (!v)
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "str.format: no argument for '{%.*s}'", (int)fl, f);
        jv_write_str(c, &b, v);
        p = close + 1;
    }
    return jb_value(c, &b);
}

/* ---- method table ------------------------------------------------------------------- */

enum {
    M_STRIP, M_LSTRIP, M_RSTRIP, M_SPLIT, M_RSPLIT, M_STARTSWITH, M_ENDSWITH, M_UPPER, M_LOWER,
    M_TITLE, M_CAPITALIZE, M_REPLACE, M_FIND, M_RFIND, M_COUNT, M_JOIN, M_SPLITLINES, M_FORMAT,
    M_ISDIGIT, M_ISALPHA, M_ISALNUM, M_ISSPACE, M_ISLOWER, M_ISUPPER,
    M_ITEMS, M_KEYS, M_VALUES, M_GET,
};

static const struct { const char *name; jv_kind on; } METHODS[] = {
    [M_STRIP] = {"strip", JV_STR}, [M_LSTRIP] = {"lstrip", JV_STR}, [M_RSTRIP] = {"rstrip", JV_STR},
    [M_SPLIT] = {"split", JV_STR}, [M_RSPLIT] = {"rsplit", JV_STR},
    [M_STARTSWITH] = {"startswith", JV_STR}, [M_ENDSWITH] = {"endswith", JV_STR},
    [M_UPPER] = {"upper", JV_STR}, [M_LOWER] = {"lower", JV_STR}, [M_TITLE] = {"title", JV_STR},
    [M_CAPITALIZE] = {"capitalize", JV_STR}, [M_REPLACE] = {"replace", JV_STR},
    [M_FIND] = {"find", JV_STR}, [M_RFIND] = {"rfind", JV_STR}, [M_COUNT] = {"count", JV_STR},
    [M_JOIN] = {"join", JV_STR}, [M_SPLITLINES] = {"splitlines", JV_STR},
    [M_FORMAT] = {"format", JV_STR}, [M_ISDIGIT] = {"isdigit", JV_STR},
    [M_ISALPHA] = {"isalpha", JV_STR}, [M_ISALNUM] = {"isalnum", JV_STR},
    [M_ISSPACE] = {"isspace", JV_STR}, [M_ISLOWER] = {"islower", JV_STR},
    [M_ISUPPER] = {"isupper", JV_STR},
    [M_ITEMS] = {"items", JV_DICT}, [M_KEYS] = {"keys", JV_DICT}, [M_VALUES] = {"values", JV_DICT},
    [M_GET] = {"get", JV_DICT},
};

int jinja_method_id(const jv *self, const char *name, size_t len)
{
    for (size_t k = 0; k < sizeof METHODS / sizeof METHODS[0]; k++)
        if (METHODS[k].on == self->kind && strlen(METHODS[k].name) == len &&
            memcmp(METHODS[k].name, name, len) == 0)
            return FN_METHOD_BASE + (int)k;
    return 0;
}

int jinja_global_id(const char *name)
{
    static const char *const names[] = {"", "range", "namespace", "dict", "raise_exception", "strftime_now"};
    for (int k = 1; k < (int)(sizeof names / sizeof names[0]); k++)
        if (strcmp(name, names[k]) == 0)
            return k;
    return 0;
}

static jv *need_str(jinja_ctx *c, int line, jv *v, const char *what)
{
    if (!v || v->kind != JV_STR)
        jinja_fail(c, DUET_ERR_INVALID_ARG, line, "%s must be a string, not %s", what,
                   v ? jv_type_name(v) : "missing");
    return v;
}

static int64_t opt_int(jinja_ctx *c, int line, jv *v, int64_t dflt)
{
    if (!v || v->kind == JV_NONE)
        return dflt;
    if (v->kind != JV_INT && v->kind != JV_BOOL)
        jinja_fail(c, DUET_ERR_INVALID_ARG, line, "expected an integer argument, not %s", jv_type_name(v));
    return v->kind == JV_INT ? v->u.i : v->u.b;
}

static int affix(jinja_ctx *c, int line, const jv *s, jv *arg, int at_end)
{
    if (arg && arg->kind == JV_LIST && arg->u.list.tuple) {
        for (size_t k = 0; k < arg->u.list.n; k++)
            if (affix(c, line, s, arg->u.list.items[k], at_end))
                return 1;
        return 0;
    }
    need_str(c, line, arg, at_end ? "endswith() argument" : "startswith() argument");
    size_t n = arg->u.str.len;
    if (n > s->u.str.len)
        return 0;
    return memcmp(s->u.str.s + (at_end ? s->u.str.len - n : 0), arg->u.str.s, n) == 0;
}

static jv *str_class(const jv *s, int which)
{
    int any_cased = 0;
    if (s->u.str.len == 0)
        return &jinja_false;
    for (size_t i = 0; i < s->u.str.len;) {
        uint32_t cp;
        i = jinja_utf8_next(s->u.str.s, s->u.str.len, i, &cp);
        int digit = cp >= '0' && cp <= '9', alpha = is_cased(cp) || cp > 0x2e7f;
        switch (which) {
        case M_ISDIGIT: if (!digit) return &jinja_false; break;
        case M_ISALPHA: if (!alpha) return &jinja_false; break;
        case M_ISALNUM: if (!alpha && !digit) return &jinja_false; break;
        case M_ISSPACE: if (!jinja_is_space(cp)) return &jinja_false; break;
        case M_ISLOWER: if (jinja_lower(cp) != cp) return &jinja_false; any_cased |= is_cased(cp); break;
        case M_ISUPPER: if (jinja_upper(cp) != cp) return &jinja_false; any_cased |= is_cased(cp); break;
        }
    }
    return jv_bool(which == M_ISLOWER || which == M_ISUPPER ? any_cased : 1);
}

static jv *call_method(jinja_render *r, int line, int m, jv *self, const jinja_args *a)
{
    jinja_ctx *c = jinja_render_ctx(r);
    jv *a0 = jinja_arg(a, 0, NULL), *a1 = jinja_arg(a, 1, NULL);
    switch (m) {
    case M_STRIP: return jinja_str_strip(c, self, a0, STRIP_BOTH);
    case M_LSTRIP: return jinja_str_strip(c, self, a0, STRIP_LEFT);
    case M_RSTRIP: return jinja_str_strip(c, self, a0, STRIP_RIGHT);
    case M_SPLIT: case M_RSPLIT:
        return str_split(c, self, jinja_arg(a, 0, "sep"),
                         opt_int(c, line, jinja_arg(a, 1, "maxsplit"), -1), m == M_RSPLIT);
    case M_STARTSWITH: case M_ENDSWITH: return jv_bool(affix(c, line, self, a0, m == M_ENDSWITH));
    case M_UPPER: return jinja_str_case(c, self, CASE_UPPER);
    case M_LOWER: return jinja_str_case(c, self, CASE_LOWER);
    case M_TITLE: return jinja_str_case(c, self, CASE_TITLE_PY);
    case M_CAPITALIZE: return jinja_str_case(c, self, CASE_CAPITALIZE);
    case M_REPLACE:
        return jinja_str_replace(c, self, need_str(c, line, a0, "replace() old"),
                                 need_str(c, line, a1, "replace() new"),
                                 opt_int(c, line, jinja_arg(a, 2, "count"), -1));
    case M_FIND: case M_RFIND: case M_COUNT: {
        need_str(c, line, a0, "the substring");
        const char *p = self->u.str.s;
        size_t len = self->u.str.len, sl = a0->u.str.len;
        int64_t found = -1, count = 0;
        if (sl == 0)
            return jv_int(c, m == M_COUNT ? (int64_t)jinja_utf8_count(p, len) + 1
                             : m == M_FIND ? 0 : (int64_t)jinja_utf8_count(p, len));
        for (size_t i = 0; i + sl <= len;) {
            const char *h = memmem(p + i, len - i, a0->u.str.s, sl);
            if (!h)
                break;
            count++;
            if (found < 0 || m == M_RFIND)
                found = cp_index(self, (size_t)(h - p));
            if (m == M_FIND)
                break;
            i = (size_t)(h - p) + (m == M_COUNT ? sl : 1);
        }
        return jv_int(c, m == M_COUNT ? count : found);
    }
    case M_JOIN: {
        if (!a0)
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "join() needs an iterable");
        size_t n;
        jv **items = jinja_iter(r, line, a0, &n);
        jinja_buf b = {0};
        for (size_t k = 0; k < n; k++) {
            if (k)
                jb_put(c, &b, self->u.str.s, self->u.str.len);
            jb_put(c, &b, need_str(c, line, items[k], "join() item")->u.str.s, items[k]->u.str.len);
        }
        return jb_value(c, &b);
    }
    case M_SPLITLINES: {
        const char *p = self->u.str.s;
        size_t len = self->u.str.len, n = 0;
        for (size_t i = 0; i < len; i++)
            n += p[i] == '\n' || (p[i] == '\r' && !(i + 1 < len && p[i + 1] == '\n'));
        jv *list = jv_list(c, n + 1, 0);
        size_t k = 0, start = 0;
        for (size_t i = 0; i < len; i++) {
            if (p[i] != '\n' && p[i] != '\r')
                continue;
            list->u.list.items[k++] = jv_str(c, p + start, i - start);
            if (p[i] == '\r' && i + 1 < len && p[i + 1] == '\n')
                i++;
            start = i + 1;
        }
        if (start < len)
            list->u.list.items[k++] = jv_str(c, p + start, len - start);
        list->u.list.n = k;
        return list;
    }
    case M_FORMAT: return str_format(c, line, self, a);
    case M_ISDIGIT: case M_ISALPHA: case M_ISALNUM: case M_ISSPACE: case M_ISLOWER: case M_ISUPPER:
        return str_class(self, m);
    case M_ITEMS: case M_KEYS: case M_VALUES: {
        size_t n = self->u.dict.n;
        jv *list = jv_list(c, n, 0);
        for (size_t k = 0; k < n; k++) {
            if (m == M_ITEMS) {
                jv *pair = jv_list(c, 2, 1);
                pair->u.list.items[0] = self->u.dict.keys[k];
                pair->u.list.items[1] = self->u.dict.vals[k];
                list->u.list.items[k] = pair;
            } else {
                list->u.list.items[k] = m == M_KEYS ? self->u.dict.keys[k] : self->u.dict.vals[k];
            }
        }
        return list;
    }
    case M_GET: {
        if (!a0)
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "dict.get() needs a key");
        jv *v = jv_dict_lookup(self, a0);
        return v ? v : a1 ? a1 : &jinja_none;
    }
    }
    jinja_fail(c, DUET_ERR_INTERNAL, line, "method %d has no implementation", m);
}

/* ---- globals ----------------------------------------------------------------------- */

static jv *fn_range(jinja_ctx *c, int line, const jinja_args *a)
{
    int64_t start = 0, stop, step = 1;
    if (a->npos == 1) {
        stop = opt_int(c, line, a->pos[0], 0);
    } else if (a->npos == 2 || a->npos == 3) {
        start = opt_int(c, line, a->pos[0], 0);
        stop = opt_int(c, line, a->pos[1], 0);
        if (a->npos == 3)
            step = opt_int(c, line, a->pos[2], 1);
    } else {
        jinja_fail(c, DUET_ERR_INVALID_ARG, line, "range() takes 1 to 3 arguments, got %zu", a->npos);
    }
    if (step == 0)
        jinja_fail(c, DUET_ERR_INVALID_ARG, line, "range() step must not be zero");
    double span = step > 0 ? ((double)stop - (double)start) : ((double)start - (double)stop);
    double count = span <= 0 ? 0 : ceil(span / fabs((double)step));
    if (count > JINJA_MAX_RANGE)
        jinja_fail(c, DUET_ERR_INVALID_ARG, line, "range() of %.0f items exceeds the limit of %d",
                   count, JINJA_MAX_RANGE);
    jv *list = jv_list(c, (size_t)count, 0);
    for (size_t k = 0; k < (size_t)count; k++)
        list->u.list.items[k] = jv_int(c, start + (int64_t)k * step);
    return list;
}

static jv *fn_dict(jinja_ctx *c, int line, const jinja_args *a, jv_kind kind)
{
    jv *d = jv_dict(c, kind);
    if (a->npos > 1)
        jinja_fail(c, DUET_ERR_INVALID_ARG, line, "%s() takes at most one positional argument",
                   kind == JV_NS ? "namespace" : "dict");
    if (a->npos == 1) {
        jv *src = a->pos[0];
        if (src->kind != JV_DICT && src->kind != JV_NS)
            jinja_fail(c, DUET_ERR_UNSUPPORTED, line, "%s() from a %s is not supported",
                       kind == JV_NS ? "namespace" : "dict", jv_type_name(src));
        for (size_t k = 0; k < src->u.dict.n; k++)
            jv_dict_set(c, d, src->u.dict.keys[k], src->u.dict.vals[k]);
    }
    for (size_t k = 0; k < a->nkw; k++) {
        if (kind == JV_NS && a->kwnames[k][0] == '_')
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "namespace attribute '%s' starts with '_'",
                       a->kwnames[k]);
        jv_dict_set(c, d, jv_cstr(c, a->kwnames[k]), a->kwvals[k]);
    }
    return d;
}

jv *jinja_call_function(jinja_render *r, int line, const jv *fn, jv **args, size_t nargs,
                        const char **kwnames, jv **kwvals, size_t nkw)
{
    jinja_ctx *c = jinja_render_ctx(r);
    jinja_args a = {args, nargs, kwnames, kwvals, nkw};
    int id = fn->u.fn.id;
    if (id >= FN_METHOD_BASE)
        return call_method(r, line, id - FN_METHOD_BASE, fn->u.fn.self, &a);
    switch (id) {
    case FN_RANGE: return fn_range(c, line, &a);
    case FN_NAMESPACE: return fn_dict(c, line, &a, JV_NS);
    case FN_DICT: return fn_dict(c, line, &a, JV_DICT);
    case FN_RAISE: {
        jv *msg = jinja_arg(&a, 0, "message");
        jv *text = jv_to_str(c, msg ? msg : &jinja_undef);
        jinja_fail(c, DUET_ERR_INVALID_ARG, 0, "chat template: %.*s", (int)(text->u.str.len < 900 ? text->u.str.len : 900),
                   text->u.str.s);
    }
    case FN_STRFTIME: {
        jv *fmt = need_str(c, line, jinja_arg(&a, 0, "format"), "strftime_now() format");
        char f[256], out[512];
        snprintf(f, sizeof f, "%.*s", (int)fmt->u.str.len, fmt->u.str.s);
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t n = strftime(out, sizeof out, f, &tm);
        return jv_str(c, out, n);
    }
    case FN_CYCLE: {
        if (nargs == 0)
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "loop.cycle() needs at least one value");
        jv *idx = jv_dict_get(fn->u.fn.self, "index0", 6);
        return args[(size_t)idx->u.i % nargs];
    }
    }
    jinja_fail(c, DUET_ERR_INTERNAL, line, "function %d has no implementation", id);
}
