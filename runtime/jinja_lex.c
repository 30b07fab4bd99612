/*
 * jinja_lex.c — template source to tokens, with the whitespace rules HF
 * transformers configures (trim_blocks=True, lstrip_blocks=True,
 * keep_trailing_newline=False) and jinja2's -/+ markers:
 *
 *   {%- / {{- / {#-   strip all whitespace before the tag
 *   -%} / -}} / -#}   strip all whitespace after the tag
 *   lstrip_blocks     spaces and tabs between a line start and {% or {#
 *                     are dropped (not before {{; {%+ keeps them)
 *   trim_blocks       the first newline after %} or #} is dropped
 *                     (+%} keeps it)
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_impl.h"

typedef struct lexer {
    jinja_ctx *c;
    const char *s; /* normalized source */
    size_t len, pos;
    int line;
    int line_starting; /* the last match ended with a newline */
    jt *toks;
    size_t n, cap;
} lexer;

static jt *push(lexer *L, jt_kind kind, int line)
{
    if (L->n == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 256;
        jt *t = jinja_alloc(L->c, cap * sizeof *t);
        if (L->n)
            memcpy(t, L->toks, L->n * sizeof *t);
        L->toks = t;
        L->cap = cap;
    }
    jt *t = &L->toks[L->n++];
    memset(t, 0, sizeof *t);
    t->kind = kind;
    t->line = line;
    return t;
}

static int is_ws(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v'; }

static int count_nl(const char *s, size_t n)
{
    int k = 0;
    for (size_t i = 0; i < n; i++)
        k += s[i] == '\n';
    return k;
}

/* Text before a tag, with {%- rstrip or lstrip_blocks applied. */
static void emit_data(lexer *L, const char *text, size_t n, char sign, int lstrip)
{
    int line = L->line;
    L->line += count_nl(text, n);
    if (sign == '-') {
        while (n && is_ws(text[n - 1]))
            n--;
    } else if (sign != '+' && lstrip) {
        size_t l = n;
        while (l && text[l - 1] != '\n')
            l--;
        if (l > 0 || L->line_starting) {
            size_t k = l;
            while (k < n && is_ws(text[k]) && text[k] != '\n')
                k++;
            if (k == n && k > l)
                n = l;
        }
    }
    if (n) {
        jt *t = push(L, JT_DATA, line);
        t->s = text;
        t->len = n;
    }
}

/* Where the next {{, {% or {# starts, or len. */
static size_t find_tag(lexer *L, size_t from)
{
    for (size_t i = from; i + 1 < L->len; i++)
        if (L->s[i] == '{' && (L->s[i + 1] == '{' || L->s[i + 1] == '%' || L->s[i + 1] == '#'))
            return i;
    return L->len;
}

/* After a closing "%}" or "#}" at p (p points past it): -, + and trim_blocks. */
static size_t after_close(lexer *L, size_t p, char sign)
{
    if (sign == '-') {
        while (p < L->len && is_ws(L->s[p]))
            p++;
    } else if (sign != '+' && p < L->len && L->s[p] == '\n') {
        p++;
    }
    L->line_starting = p > 0 && L->s[p - 1] == '\n';
    return p;
}

/* Does "<ws>word<ws>%}" (or -%} / +%}) start at p? Sets *end after it and
 * *close_sign to the -/+ before %}. */
static int match_word_tag(const char *s, size_t len, size_t p, const char *word, size_t *end,
                          char *close_sign)
{
    while (p < len && is_ws(s[p]))
        p++;
    size_t wl = strlen(word);
    if (p + wl > len || memcmp(s + p, word, wl) != 0)
        return 0;
    p += wl;
    while (p < len && is_ws(s[p]))
        p++;
    if (p + 1 < len && s[p] == '%' && s[p + 1] == '}') {
        *close_sign = 0;
        *end = p + 2;
        return 1;
    }
    if (p + 2 < len && (s[p] == '-' || s[p] == '+') && s[p + 1] == '%' && s[p + 2] == '}') {
        *close_sign = s[p];
        *end = p + 3;
        return 1;
    }
    return 0;
}

/* The body of {% raw %} from p, emitted as text up to {% endraw %}; returns
 * the position after that tag. */
static size_t lex_raw(lexer *L, size_t p, int line)
{
    for (size_t i = p; i + 1 < L->len; i++) {
        if (L->s[i] != '{' || L->s[i + 1] != '%')
            continue;
        size_t q = i + 2;
        char sign = 0, close = 0;
        if (q < L->len && (L->s[q] == '-' || L->s[q] == '+'))
            sign = L->s[q++];
        size_t end;
        if (!match_word_tag(L->s, L->len, q, "endraw", &end, &close))
            continue;
        emit_data(L, L->s + p, i - p, sign, 1);
        L->line += count_nl(L->s + i, end - i);
        return after_close(L, end, close);
    }
    jinja_fail(L->c, DUET_ERR_FORMAT, line, "missing {%% endraw %%}");
}

static const char *const OPS2[] = {"//", "**", "==", "!=", ">=", "<="};
static const char OPS1[] = "+-/*%~[](){}><=.:|,;";

/* Python string literal escapes (jinja2 decodes them with unicode-escape). */
static void lex_string(lexer *L, jt *t)
{
    char quote = L->s[L->pos];
    size_t p = L->pos + 1;
    jinja_buf b = {0};
    while (p < L->len && L->s[p] != quote) {
        char ch = L->s[p];
        if (ch != '\\' || p + 1 >= L->len) {
            jb_putc(L->c, &b, ch);
            p++;
            continue;
        }
        char e = L->s[p + 1];
        p += 2;
        const char *simple = strchr("nrtabfv\\'\"", e);
        if (e && simple) {
            static const char out[] = "\n\r\t\a\b\f\v\\'\"";
            jb_putc(L->c, &b, out[simple - "nrtabfv\\'\""]);
        } else if (e == '\n') {
            /* line continuation */
        } else if (e == 'x' || e == 'u' || e == 'U') {
            int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            uint32_t cp = 0;
            for (int k = 0; k < nd; k++, p++) {
                if (p >= L->len || !isxdigit((unsigned char)L->s[p]))
                    jinja_fail(L->c, DUET_ERR_FORMAT, L->line, "truncated \\%c escape in a string", e);
                char h = L->s[p];
                cp = cp * 16 + (uint32_t)(isdigit((unsigned char)h) ? h - '0' : (h | 32) - 'a' + 10);
            }
            if (cp > 0x10ffff)
                jinja_fail(L->c, DUET_ERR_FORMAT, L->line, "\\U escape beyond U+10FFFF");
            jb_put_cp(L->c, &b, cp);
        } else if (e >= '0' && e <= '7') {
            uint32_t cp = (uint32_t)(e - '0');
            for (int k = 0; k < 2 && p < L->len && L->s[p] >= '0' && L->s[p] <= '7'; k++, p++)
                cp = cp * 8 + (uint32_t)(L->s[p] - '0');
            jb_put_cp(L->c, &b, cp);
        } else {
            jb_putc(L->c, &b, '\\');
            jb_putc(L->c, &b, e);
        }
    }
    if (p >= L->len)
        jinja_fail(L->c, DUET_ERR_FORMAT, t->line, "unterminated string literal");
    t->kind = JT_STRING;
    t->s = b.p ? b.p : "";
    t->len = b.len;
    L->line += count_nl(L->s + L->pos, p - L->pos);
    L->pos = p + 1;
}

static void lex_number(lexer *L, jt *t)
{
    char digits[64];
    size_t nd = 0, p = L->pos;
    int is_float = 0;
    while (p < L->len && nd < sizeof digits - 1) {
        char ch = L->s[p];
        if (isdigit((unsigned char)ch)) {
            digits[nd++] = ch;
        } else if (ch == '_' && p + 1 < L->len && isdigit((unsigned char)L->s[p + 1])) {
            /* digit separator */
        } else if (ch == '.' && !is_float && p + 1 < L->len && isdigit((unsigned char)L->s[p + 1])) {
            is_float = 1;
            digits[nd++] = ch;
        } else if ((ch == 'e' || ch == 'E') && p + 1 < L->len &&
                   (isdigit((unsigned char)L->s[p + 1]) ||
                    ((L->s[p + 1] == '+' || L->s[p + 1] == '-') && p + 2 < L->len &&
                     isdigit((unsigned char)L->s[p + 2])))) {
            is_float = 1;
            digits[nd++] = ch;
            digits[nd++] = L->s[++p];
        } else {
            break;
        }
        p++;
    }
    digits[nd] = '\0';
    if (is_float) {
        t->kind = JT_FLOAT;
        t->f = strtod(digits, NULL);
    } else {
        t->kind = JT_INT;
        char *end;
        unsigned long long v = strtoull(digits, &end, 10);
        if (v > INT64_MAX || nd > 19)
            jinja_fail(L->c, DUET_ERR_UNSUPPORTED, L->line, "integer literal %s is too large", digits);
        t->i = (int64_t)v;
    }
    L->pos = p;
}

/* Tokens inside {{ }} or {% %}; returns after the closing delimiter. */
static void lex_tag(lexer *L, int is_block, int open_line)
{
    int depth = 0;
    char closer = is_block ? '%' : '}';
    for (;;) {
        if (L->pos >= L->len)
            jinja_fail(L->c, DUET_ERR_FORMAT, open_line, "unclosed %s", is_block ? "'{%'" : "'{{'");
        const char *s = L->s + L->pos;
        size_t left = L->len - L->pos;
        if (depth == 0) {
            size_t m = 0;
            char sign = 0;
            if (left >= 3 && (s[0] == '-' || (is_block && s[0] == '+')) && s[1] == closer && s[2] == '}') {
                sign = s[0];
                m = 3;
            } else if (left >= 2 && s[0] == closer && s[1] == '}') {
                m = 2;
            }
            if (m) {
                push(L, is_block ? JT_BLOCK_END : JT_VAR_END, L->line);
                L->pos += m;
                if (is_block) {
                    size_t before = L->pos;
                    L->pos = after_close(L, L->pos, sign);
                    L->line += count_nl(L->s + before, L->pos - before);
                } else {
                    size_t before = L->pos;
                    if (sign == '-')
                        while (L->pos < L->len && is_ws(L->s[L->pos]))
                            L->pos++;
                    L->line += count_nl(L->s + before, L->pos - before);
                    L->line_starting = L->s[L->pos - 1] == '\n';
                }
                return;
            }
        }
        char ch = s[0];
        if (is_ws(ch)) {
            L->line += ch == '\n';
            L->pos++;
            continue;
        }
        jt *t = push(L, JT_OP, L->line);
        if (ch == '"' || ch == '\'') {
            lex_string(L, t);
        } else if (isdigit((unsigned char)ch)) {
            lex_number(L, t);
        } else if (isalpha((unsigned char)ch) || ch == '_') {
            size_t n = 1;
            while (n < left && (isalnum((unsigned char)s[n]) || s[n] == '_'))
                n++;
            t->kind = JT_NAME;
            t->s = s;
            t->len = n;
            L->pos += n;
        } else {
            size_t n = 0;
            for (size_t k = 0; k < sizeof OPS2 / sizeof OPS2[0]; k++)
                if (left >= 2 && memcmp(s, OPS2[k], 2) == 0)
                    n = 2;
            if (!n && strchr(OPS1, ch) && ch)
                n = 1;
            if (!n)
                jinja_fail(L->c, DUET_ERR_FORMAT, L->line, "unexpected character '%c' in a tag",
                           ch >= 32 && ch < 127 ? ch : '?');
            if (ch == '(' || ch == '[' || ch == '{')
                depth++;
            else if ((ch == ')' || ch == ']' || ch == '}') && depth > 0)
                depth--;
            t->s = s;
            t->len = n;
            L->pos += n;
        }
    }
}

jt *jinja_lex(jinja_ctx *c, const char *src, size_t len, size_t *n_out)
{
    lexer L = {.c = c, .line = 1, .line_starting = 1};
    /* Newlines become \n, and one trailing newline goes (keep_trailing_newline=False). */
    char *s = jinja_alloc(c, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n')
                i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (n && s[n - 1] == '\n')
        n--;
    L.s = s;
    L.len = n;

    while (L.pos < L.len) {
        size_t at = find_tag(&L, L.pos);
        if (at == L.len) {
            emit_data(&L, L.s + L.pos, L.len - L.pos, '+', 0);
            break;
        }
        char kind = L.s[at + 1];
        size_t q = at + 2;
        char sign = 0;
        if (q < L.len && (L.s[q] == '-' || L.s[q] == '+'))
            sign = L.s[q++];
        emit_data(&L, L.s + L.pos, at - L.pos, sign, kind != '{');
        int line = L.line;
        size_t end;
        char close;
        if (kind == '%' && match_word_tag(L.s, L.len, q, "raw", &end, &close)) {
            /* {% raw -%} strips after; trim_blocks does not apply to raw. */
            L.pos = end;
            if (close == '-')
                while (L.pos < L.len && is_ws(L.s[L.pos]))
                    L.line += L.s[L.pos++] == '\n';
            L.line_starting = L.s[L.pos - 1] == '\n';
            L.pos = lex_raw(&L, L.pos, line);
            continue;
        }
        if (kind == '#') {
            size_t p = q;
            while (p + 1 < L.len && !(L.s[p] == '#' && L.s[p + 1] == '}'))
                p++;
            if (p + 1 >= L.len)
                jinja_fail(c, DUET_ERR_FORMAT, line, "missing end of comment tag '#}'");
            char csign = p > q && (L.s[p - 1] == '-' || L.s[p - 1] == '+') ? L.s[p - 1] : 0;
            L.line += count_nl(L.s + at, p + 2 - at);
            size_t before = p + 2;
            L.pos = after_close(&L, p + 2, csign);
            L.line += count_nl(L.s + before, L.pos - before);
            continue;
        }
        push(&L, kind == '%' ? JT_BLOCK_BEGIN : JT_VAR_BEGIN, line);
        L.pos = q;
        lex_tag(&L, kind == '%', line);
    }
    push(&L, JT_EOF, L.line);
    *n_out = L.n;
    return L.toks;
}
