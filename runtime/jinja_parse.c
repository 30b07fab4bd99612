/*
 * jinja_parse.c — statements of the syntax tree: if/elif/else, for (with
 * else, a filter condition and tuple targets), set (plain, namespace
 * attribute, tuple, block), macro, filter blocks, break/continue, and
 * transformers' {% generation %}. Expressions are in jinja_parse_expr.c.
 */
#include <stdlib.h>
#include <string.h>

#include "jinja_impl.h"

static jnode **parse_body(parser *P, const char *const *ends, size_t *n, const char **which);

/* ---- statements ------------------------------------------------------------------ */

static jnode *parse_if(parser *P, int line)
{
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    jnode *n = jp_node(P, JN_IF, line);
    n->a = jp_tuple(P, 1);
    jp_expect(P, JT_BLOCK_END, "'%}'");
    const char *which;
    n->list = parse_body(P, ends, &n->n, &which);
    if (strcmp(which, "elif") == 0) {
        n->list2 = jinja_alloc(P->c, sizeof *n->list2);
        n->list2[0] = parse_if(P, jp_cur(P)->line);
        n->n2 = 1;
        return n;
    }
    if (strcmp(which, "else") == 0) {
        static const char *const end[] = {"endif", NULL};
        jp_expect(P, JT_BLOCK_END, "'%}'");
        n->list2 = parse_body(P, end, &n->n2, &which);
    }
    jp_expect(P, JT_BLOCK_END, "'%}'");
    return n;
}

static jnode *parse_for(parser *P, int line)
{
    static const char *const ends[] = {"else", "endfor", NULL};
    static const char *const end[] = {"endfor", NULL};
    jnode *n = jp_node(P, JN_FOR, line);
    int paren = jp_is_op(jp_cur(P), "(");
    if (paren)
        P->i++;
    do {
        if (n->nnames)
            P->i++;
        n->names = jp_names_push(P, n->names, n->nnames++, jp_take_name(P));
    } while (jp_is_op(jp_cur(P), ","));
    if (paren)
        jp_expect_op(P, ")");
    if (!jp_is_name(jp_cur(P), "in"))
        jp_syntax(P, "'in'");
    P->i++;
    n->a = jp_tuple(P, 0);
    if (jp_is_name(jp_cur(P), "if")) {
        P->i++;
        n->b = jp_expr(P, 1);
    }
    if (jp_is_name(jp_cur(P), "recursive"))
        jinja_fail(P->c, DUET_ERR_UNSUPPORTED, line, "recursive for loops are not supported");
    jp_expect(P, JT_BLOCK_END, "'%}'");
    const char *which;
    n->list = parse_body(P, ends, &n->n, &which);
    if (strcmp(which, "else") == 0) {
        jp_expect(P, JT_BLOCK_END, "'%}'");
        n->list2 = parse_body(P, end, &n->n2, &which);
    }
    jp_expect(P, JT_BLOCK_END, "'%}'");
    return n;
}

static jnode *parse_set(parser *P, int line)
{
    static const char *const end[] = {"endset", NULL};
    const char *name = jp_take_name(P);
    jnode *n = jp_node(P, JN_SET, line);
    n->name = name;
    if (jp_is_op(jp_cur(P), ".")) {
        P->i++;
        n->kind = JN_SET_ATTR;
        n->names = jp_names_push(P, NULL, 0, jp_take_name(P));
        n->nnames = 1;
    } else if (jp_is_op(jp_cur(P), ",")) {
        n->names = jp_names_push(P, NULL, 0, name);
        n->nnames = 1;
        while (jp_is_op(jp_cur(P), ",")) {
            P->i++;
            n->names = jp_names_push(P, n->names, n->nnames++, jp_take_name(P));
        }
    }
    if (n->kind == JN_SET && n->nnames == 0 && jp_cur(P)->kind == JT_BLOCK_END) {
        P->i++;
        const char *which;
        n->kind = JN_SET_BLOCK;
        n->list = parse_body(P, end, &n->n, &which);
        jp_expect(P, JT_BLOCK_END, "'%}'");
        return n;
    }
    jp_expect_op(P, "=");
    n->a = jp_tuple(P, 1);
    jp_expect(P, JT_BLOCK_END, "'%}'");
    return n;
}

static jnode *parse_macro(parser *P, int line)
{
    static const char *const end[] = {"endmacro", NULL};
    jnode *n = jp_node(P, JN_MACRO, line);
    n->name = jp_take_name(P);
    nlist defaults = {0};
    jp_expect_op(P, "(");
    while (!jp_is_op(jp_cur(P), ")")) {
        if (n->nnames)
            jp_expect_op(P, ",");
        n->names = jp_names_push(P, n->names, n->nnames++, jp_take_name(P));
        jnode *dflt = NULL;
        if (jp_is_op(jp_cur(P), "=")) {
            P->i++;
            dflt = jp_expr(P, 1);
        }
        jp_push(P, &defaults, dflt);
    }
    P->i++;
    n->list2 = defaults.p;
    n->n2 = defaults.n;
    jp_expect(P, JT_BLOCK_END, "'%}'");
    const char *which;
    n->list = parse_body(P, end, &n->n, &which);
    if (jp_cur(P)->kind == JT_NAME)
        P->i++; /* {% endmacro name %} */
    jp_expect(P, JT_BLOCK_END, "'%}'");
    return n;
}

static jnode *parse_filter_block(parser *P, int line)
{
    static const char *const end[] = {"endfilter", NULL};
    jnode *n = jp_node(P, JN_FILTER_BLOCK, line);
    jnode *chain = NULL; /* filters applied to a placeholder (a NULL operand) */
    do {
        if (chain)
            P->i++;
        chain = jp_filter(P, chain, jp_cur(P)->line);
    } while (jp_is_op(jp_cur(P), "|"));
    n->a = chain;
    jp_expect(P, JT_BLOCK_END, "'%}'");
    const char *which;
    n->list = parse_body(P, end, &n->n, &which);
    jp_expect(P, JT_BLOCK_END, "'%}'");
    return n;
}

static const char *const UNSUPPORTED_TAGS[] = {
    "call", "include", "import", "from", "extends", "block", "with", "autoescape",
    "trans", "pluralize", "do", NULL,
};

static jnode *parse_statement(parser *P)
{
    int line = jp_cur(P)->line;
    jt *t = jp_cur(P);
    if (t->kind != JT_NAME)
        jp_syntax(P, "a statement name");
    P->i++;
    if (jp_is_name(t, "if"))
        return parse_if(P, line);
    if (jp_is_name(t, "for"))
        return parse_for(P, line);
    if (jp_is_name(t, "set"))
        return parse_set(P, line);
    if (jp_is_name(t, "macro"))
        return parse_macro(P, line);
    if (jp_is_name(t, "filter"))
        return parse_filter_block(P, line);
    if (jp_is_name(t, "break") || jp_is_name(t, "continue")) {
        jnode *n = jp_node(P, jp_is_name(t, "break") ? JN_BREAK : JN_CONTINUE, line);
        jp_expect(P, JT_BLOCK_END, "'%}'");
        return n;
    }
    if (jp_is_name(t, "generation")) {
        /* transformers' assistant-mask marker: renders its body unchanged */
        static const char *const end[] = {"endgeneration", NULL};
        jnode *n = jp_node(P, JN_BODY, line);
        const char *which;
        jp_expect(P, JT_BLOCK_END, "'%}'");
        n->list = parse_body(P, end, &n->n, &which);
        jp_expect(P, JT_BLOCK_END, "'%}'");
        return n;
    }
    for (size_t k = 0; UNSUPPORTED_TAGS[k]; k++)
        if (jp_is_name(t, UNSUPPORTED_TAGS[k]))
            jinja_fail(P->c, DUET_ERR_UNSUPPORTED, line, "statement '%s' is not supported",
                       UNSUPPORTED_TAGS[k]);
    jinja_fail(P->c, DUET_ERR_FORMAT, line, "syntax error: unknown tag '%.*s'", (int)t->len, t->s);
}

/* Statements until one of ends (a NULL-terminated list of tag names; NULL
 * ends = the end of the template). *which gets the tag that ended the body;
 * the parser is then just after that tag's name. */
static jnode **parse_body(parser *P, const char *const *ends, size_t *n, const char **which)
{
    nlist body = {0};
    int start_line = P->i ? P->t[P->i - 1].line : 1; /* the opening tag */
    const char *last_end = NULL;
    for (size_t k = 0; ends && ends[k]; k++)
        last_end = ends[k];
    jp_enter(P);
    for (;;) {
        jt *t = jp_cur(P);
        if (t->kind == JT_EOF) {
            if (ends)
                jinja_fail(P->c, DUET_ERR_FORMAT, start_line,
                           "syntax error: block opened here is never closed (expected '%s')", last_end);
            break;
        }
        if (t->kind == JT_DATA) {
            jnode *x = jp_node(P, JN_TEXT, t->line);
            x->lit = jv_str_take(P->c, t->s, t->len);
            jp_push(P, &body, x);
            P->i++;
        } else if (t->kind == JT_VAR_BEGIN) {
            P->i++;
            jnode *x = jp_node(P, JN_PRINT, t->line);
            x->a = jp_tuple(P, 1);
            jp_expect(P, JT_VAR_END, "'}}'");
            jp_push(P, &body, x);
        } else if (t->kind == JT_BLOCK_BEGIN) {
            jt *name = &P->t[P->i + 1];
            int matched = 0;
            for (size_t k = 0; ends && ends[k]; k++)
                if (jp_is_name(name, ends[k])) {
                    *which = ends[k];
                    matched = 1;
                }
            if (matched) {
                P->i += 2;
                break;
            }
            if (name->kind == JT_NAME && ((name->len > 3 && memcmp(name->s, "end", 3) == 0) ||
                                         jp_is_name(name, "else") || jp_is_name(name, "elif")))
                jinja_fail(P->c, DUET_ERR_FORMAT, name->line, "syntax error: unexpected '%.*s'%s%s",
                           (int)name->len, name->s, ends ? ", expected " : "",
                           ends ? last_end : "");
            P->i++;
            jp_push(P, &body, parse_statement(P));
        } else {
            jp_syntax(P, "template text or a tag");
        }
    }
    P->depth--;
    *n = body.n;
    return body.p;
}

jnode *jinja_parse(jinja_ctx *c, const char *src, size_t len)
{
    parser P = {.c = c};
    P.t = jinja_lex(c, src, len, &P.n);
    jnode *root = jp_node(&P, JN_BODY, 1);
    const char *which = NULL;
    root->list = parse_body(&P, NULL, &root->n, &which);
    return root;
}
