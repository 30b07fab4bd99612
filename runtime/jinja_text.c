/*
 * jinja_text.c — the chat-template interpreter's text: Python's str() and
 * repr() of values (what {{ x }} prints), json.dumps() as transformers'
 * tojson calls it, and the UTF-8 / character-class helpers that let string
 * operations count code points as Python does.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_impl.h"

/* ---- str(), repr() -------------------------------------------------------------- */

/* Python's repr(float): the shortest string that reads back to f, in fixed
 * notation for 1e-4 <= |f| < 1e16 and scientific otherwise. */
void jinja_float_repr(double f, char out[32])
{
    if (isnan(f)) {
        strcpy(out, "nan");
        return;
    }
    if (isinf(f)) {
        strcpy(out, f < 0 ? "-inf" : "inf");
        return;
    }
    char e[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, f);
        if (strtod(e, NULL) == f)
            break;
    }
    /* e = [-]d[.ddd]e[+-]XX */
    char digits[24];
    size_t nd = 0;
    const char *q = e;
    int neg = *q == '-';
    if (neg)
        q++;
    for (; *q && *q != 'e'; q++)
        if (*q != '.')
            digits[nd++] = *q;
    int exp = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    char *o = out;
    if (neg)
        *o++ = '-';
    if (exp < -4 || exp >= 16) {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            memcpy(o, digits + 1, nd - 1);
            o += nd - 1;
        }
        sprintf(o, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
        return;
    }
    if (exp < 0) {
        *o++ = '0';
        *o++ = '.';
        for (int i = -1; i > exp; i--)
            *o++ = '0';
        memcpy(o, digits, nd);
        o += nd;
    } else {
        for (int i = 0; i <= exp; i++)
            *o++ = (size_t)i < nd ? digits[i] : '0';
        *o++ = '.';
        if ((size_t)exp + 1 < nd) {
            memcpy(o, digits + exp + 1, nd - (size_t)exp - 1);
            o += nd - (size_t)exp - 1;
        } else {
            *o++ = '0';
        }
    }
    *o = '\0';
}

static void write_str_repr(jinja_ctx *c, jinja_buf *b, const char *s, size_t n)
{
    int has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char quote = has_sq && !has_dq ? '"' : '\'';
    jb_putc(c, b, quote);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t next = jinja_utf8_next(s, n, i, &cp);
        char tmp[16];
        if (cp == '\\' || cp == (uint32_t)quote) {
            tmp[0] = '\\';
            tmp[1] = (char)cp;
            jb_put(c, b, tmp, 2);
        } else if (cp == '\n') {
            jb_puts(c, b, "\\n");
        } else if (cp == '\r') {
            jb_puts(c, b, "\\r");
        } else if (cp == '\t') {
            jb_puts(c, b, "\\t");
        } else if (cp < 0x20 || (cp >= 0x7f && cp <= 0xa0) || cp == 0xad) {
            snprintf(tmp, sizeof tmp, "\\x%02x", cp);
            jb_puts(c, b, tmp);
        } else if (cp == 0x2028 || cp == 0x2029) {
            snprintf(tmp, sizeof tmp, "\\u%04x", cp);
            jb_puts(c, b, tmp);
        } else {
            jb_put(c, b, s + i, next - i);
        }
        i = next;
    }
    jb_putc(c, b, quote);
}

static void write_scalar(jinja_ctx *c, jinja_buf *b, const jv *v)
{
    char num[40];
    switch (v->kind) {
    case JV_NONE: jb_puts(c, b, "None"); break;
    case JV_BOOL: jb_puts(c, b, v->u.b ? "True" : "False"); break;
    case JV_INT:
        snprintf(num, sizeof num, "%lld", (long long)v->u.i);
        jb_puts(c, b, num);
        break;
    case JV_FLOAT:
        jinja_float_repr(v->u.f, num);
        jb_puts(c, b, num);
        break;
    default: break;
    }
}

void jv_write_repr(jinja_ctx *c, jinja_buf *b, const jv *v)
{
    switch (v->kind) {
    case JV_UNDEF: break; /* jinja2's Undefined has an empty str() */
    case JV_STR: write_str_repr(c, b, v->u.str.s, v->u.str.len); break;
    case JV_LIST:
        if (v->u.list.tuple == SEQ_GEN) {
            jb_puts(c, b, "<generator object>");
            break;
        }
        jb_putc(c, b, v->u.list.tuple ? '(' : '[');
        for (size_t i = 0; i < v->u.list.n; i++) {
            if (i)
                jb_puts(c, b, ", ");
            jv_write_repr(c, b, v->u.list.items[i]);
        }
        if (v->u.list.tuple && v->u.list.n == 1)
            jb_putc(c, b, ',');
        jb_putc(c, b, v->u.list.tuple ? ')' : ']');
        break;
    case JV_DICT: case JV_NS:
        jb_puts(c, b, v->kind == JV_NS ? "<Namespace {" : "{");
        for (size_t i = 0; i < v->u.dict.n; i++) {
            if (i)
                jb_puts(c, b, ", ");
            jv_write_repr(c, b, v->u.dict.keys[i]);
            jb_puts(c, b, ": ");
            jv_write_repr(c, b, v->u.dict.vals[i]);
        }
        jb_puts(c, b, v->kind == JV_NS ? "}>" : "}");
        break;
    case JV_FUNC: case JV_MACRO: jb_puts(c, b, "<function>"); break;
    default: write_scalar(c, b, v); break;
    }
}

void jv_write_str(jinja_ctx *c, jinja_buf *b, const jv *v)
{
    if (v->kind == JV_STR)
        jb_put(c, b, v->u.str.s, v->u.str.len);
    else
        jv_write_repr(c, b, v);
}

jv *jv_to_str(jinja_ctx *c, const jv *v)
{
    if (v->kind == JV_STR)
        return (jv *)v;
    jinja_buf b = {0};
    jv_write_str(c, &b, v);
    return jb_value(c, &b);
}

/* ---- json.dumps ------------------------------------------------------------------ */

static void json_string(jinja_ctx *c, jinja_buf *b, const char *s, size_t n, int ensure_ascii)
{
    jb_putc(c, b, '"');
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t next = jinja_utf8_next(s, n, i, &cp);
        char tmp[16];
        switch (cp) {
        case '"': jb_puts(c, b, "\\\""); break;
        case '\\': jb_puts(c, b, "\\\\"); break;
        case '\n': jb_puts(c, b, "\\n"); break;
        case '\r': jb_puts(c, b, "\\r"); break;
        case '\t': jb_puts(c, b, "\\t"); break;
        case '\b': jb_puts(c, b, "\\b"); break;
        case '\f': jb_puts(c, b, "\\f"); break;
        default:
            if (cp < 0x20 || (ensure_ascii && cp > 0x7e)) {
                if (cp >= 0x10000) {
                    uint32_t v = cp - 0x10000;
                    snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xd800 + (v >> 10),
                             0xdc00 + (v & 0x3ff));
                } else {
                    snprintf(tmp, sizeof tmp, "\\u%04x", cp);
                }
                jb_puts(c, b, tmp);
            } else {
                jb_put(c, b, s + i, next - i);
            }
        }
        i = next;
    }
    jb_putc(c, b, '"');
}

static void json_newline(jinja_ctx *c, jinja_buf *b, const jinja_json_opts *o, int depth)
{
    jb_putc(c, b, '\n');
    for (int i = 0; i < depth; i++)
        jb_puts(c, b, o->indent);
}

static void json_key(jinja_ctx *c, int line, jinja_buf *b, const jv *k, const jinja_json_opts *o)
{
    char num[40];
    switch (k->kind) {
    case JV_STR: json_string(c, b, k->u.str.s, k->u.str.len, o->ensure_ascii); return;
    case JV_NONE: jb_puts(c, b, "\"null\""); return;
    case JV_BOOL: jb_puts(c, b, k->u.b ? "\"true\"" : "\"false\""); return;
    case JV_INT: snprintf(num, sizeof num, "\"%lld\"", (long long)k->u.i); break;
    case JV_FLOAT:
        num[0] = '"';
        jinja_float_repr(k->u.f, num + 1);
        strcat(num, "\"");
        break;
    default:
        jinja_fail(c, DUET_ERR_INVALID_ARG, line, "tojson: keys must be str, int, float, bool "
                   "or None, not %s", jv_type_name(k));
    }
    jb_puts(c, b, num);
}

void jv_write_json(jinja_ctx *c, int line, jinja_buf *b, const jv *v, const jinja_json_opts *o,
                   int depth)
{
    char num[40];
    if (depth > JINJA_MAX_PARSE_DEPTH)
        jinja_fail(c, DUET_ERR_INVALID_ARG, line, "tojson: nesting deeper than %d",
                   JINJA_MAX_PARSE_DEPTH);
    switch (v->kind) {
    case JV_NONE: jb_puts(c, b, "null"); return;
    case JV_BOOL: jb_puts(c, b, v->u.b ? "true" : "false"); return;
    case JV_INT: write_scalar(c, b, v); return;
    case JV_FLOAT:
        if (isnan(v->u.f))
            jb_puts(c, b, "NaN");
        else if (isinf(v->u.f))
            jb_puts(c, b, v->u.f < 0 ? "-Infinity" : "Infinity");
        else {
            jinja_float_repr(v->u.f, num);
            jb_puts(c, b, num);
        }
        return;
    case JV_STR: json_string(c, b, v->u.str.s, v->u.str.len, o->ensure_ascii); return;
    case JV_LIST:
        if (v->u.list.tuple == SEQ_GEN)
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "tojson: a generator is not JSON serializable "
                       "(add '| list')");
        if (v->u.list.n == 0) {
            jb_puts(c, b, "[]");
            return;
        }
        jb_putc(c, b, '[');
        for (size_t i = 0; i < v->u.list.n; i++) {
            if (i)
                jb_puts(c, b, o->item_sep);
            if (o->indent)
                json_newline(c, b, o, depth + 1);
            jv_write_json(c, line, b, v->u.list.items[i], o, depth + 1);
        }
        if (o->indent)
            json_newline(c, b, o, depth);
        jb_putc(c, b, ']');
        return;
    case JV_DICT: {
        size_t n = v->u.dict.n;
        if (n == 0) {
            jb_puts(c, b, "{}");
            return;
        }
        size_t *order = jinja_alloc(c, n * sizeof *order);
        for (size_t i = 0; i < n; i++)
            order[i] = i;
        if (o->sort_keys) /* insertion sort: stable, and dicts here are small */
            for (size_t i = 1; i < n; i++)
                for (size_t j = i; j > 0 && jv_compare(c, line, v->u.dict.keys[order[j - 1]],
                                                       v->u.dict.keys[order[j]], 0) > 0; j--) {
                    size_t t = order[j];
                    order[j] = order[j - 1];
                    order[j - 1] = t;
                }
        jb_putc(c, b, '{');
        for (size_t i = 0; i < n; i++) {
            if (i)
                jb_puts(c, b, o->item_sep);
            if (o->indent)
                json_newline(c, b, o, depth + 1);
            json_key(c, line, b, v->u.dict.keys[order[i]], o);
            jb_puts(c, b, o->key_sep);
            jv_write_json(c, line, b, v->u.dict.vals[order[i]], o, depth + 1);
        }
        if (o->indent)
            json_newline(c, b, o, depth);
        jb_putc(c, b, '}');
        return;
    }
    default:
        jinja_fail(c, DUET_ERR_INVALID_ARG, line, "tojson: a %s is not JSON serializable",
                   jv_type_name(v));
    }
}

/* ---- UTF-8 and character classes ---------------------------------------------------- */

/* Decode the code point at s[i]; a byte that starts no valid sequence is
 * taken as itself (U+0080..U+00FF) so that nothing is ever lost. */
size_t jinja_utf8_next(const char *s, size_t len, size_t i, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    unsigned char c0 = u[i];
    if (c0 < 0x80) {
        *cp = c0;
        return i + 1;
    }
    int n = c0 >= 0xf0 && c0 < 0xf5 ? 3 : c0 >= 0xe0 ? (c0 < 0xf0 ? 2 : 0) : c0 >= 0xc2 ? 1 : 0;
    if (n == 0 || i + (size_t)n >= len) {
        *cp = c0;
        return i + 1;
    }
    uint32_t v = c0 & (0x3f >> n);
    for (int k = 1; k <= n; k++) {
        if ((u[i + k] & 0xc0) != 0x80) {
            *cp = c0;
            return i + 1;
        }
        v = (v << 6) | (u[i + k] & 0x3f);
    }
    *cp = v;
    return i + 1 + (size_t)n;
}

size_t jinja_utf8_count(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; n++) {
        uint32_t cp;
        i = jinja_utf8_next(s, len, i, &cp);
    }
    return n;
}

void jb_put_cp(jinja_ctx *c, jinja_buf *b, uint32_t cp)
{
    char t[4];
    size_t n;
    if (cp < 0x80) {
        t[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        t[0] = (char)(0xc0 | (cp >> 6));
        t[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        t[0] = (char)(0xe0 | (cp >> 12));
        t[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        t[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        t[0] = (char)(0xf0 | (cp >> 18));
        t[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        t[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        t[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    jb_put(c, b, t, n);
}

/* Python's str.isspace(). */
int jinja_is_space(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 ||
           cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

/* Case mapping for Latin-1, Latin Extended-A, Greek and Cyrillic: the
 * scripts chat text is most often in; other code points are unchanged. */
uint32_t jinja_upper(uint32_t cp)
{
    if (cp >= 'a' && cp <= 'z')
        return cp - 32;
    if ((cp >= 0xe0 && cp <= 0xfe && cp != 0xf7) || (cp >= 0x3b1 && cp <= 0x3c9 && cp != 0x3c2) ||
        (cp >= 0x430 && cp <= 0x44f))
        return cp - 32;
    if (cp >= 0x450 && cp <= 0x45f)
        return cp - 80;
    if (cp >= 0x100 && cp <= 0x17f && cp != 0x130 && cp != 0x131 && cp != 0x138 && cp != 0x149 &&
        cp != 0x178 && cp != 0x17f) {
        int odd_upper = (cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17e);
        if (odd_upper ? (cp & 1) == 0 : (cp & 1) == 1)
            return cp - 1;
    }
    return cp;
}

uint32_t jinja_lower(uint32_t cp)
{
    if (cp >= 'A' && cp <= 'Z')
        return cp + 32;
    if ((cp >= 0xc0 && cp <= 0xde && cp != 0xd7) || (cp >= 0x391 && cp <= 0x3a9 && cp != 0x3a2) ||
        (cp >= 0x410 && cp <= 0x42f))
        return cp + 32;
    if (cp >= 0x400 && cp <= 0x40f)
        return cp + 80;
    if (cp >= 0x100 && cp <= 0x17f && cp != 0x130 && cp != 0x131 && cp != 0x138 && cp != 0x149 &&
        cp != 0x178 && cp != 0x17f) {
        int odd_upper = (cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17e);
        if (odd_upper ? (cp & 1) == 1 : (cp & 1) == 0)
            return cp + 1;
    }
    return cp;
}
