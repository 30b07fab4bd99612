/*
 * jinja_parse_expr.c — expressions of the syntax tree, following jinja2's
 * grammar and operator precedence (lowest first):
 *
 *   a if c else b  |  or  |  and  |  not  |  == != < <= > >= in, not in
 *   + -  |  ~  |  * / // %  |  **  |  unary - +, then postfix . [] (),
 *   filters | and tests "is"
 *
 * Unknown filters and tests fail when evaluated (DUET_ERR_UNSUPPORTED), as
 * in jinja2 3.x, where one in a branch never taken is no error.
 */
#include <stdlib.h>
#include <string.h>

#include "jinja_impl.h"



jt *jp_cur(parser *P) { return &P->t[P->i]; }

int jp_is_op(const jt *t, const char *op)
{
    return t->kind == JT_OP && t->len == strlen(op) && memcmp(t->s, op, t->len) == 0;
}

int jp_is_name(const jt *t, const char *name)
{
    return t->kind == JT_NAME && t->len == strlen(name) && memcmp(t->s, name, t->len) == 0;
}

static const char *tok_desc(parser *P, const jt *t)
{
    switch (t->kind) {
    case JT_EOF: return "end of template";
    case JT_DATA: return "template text";
    case JT_VAR_BEGIN: return "'{{'";
    case JT_VAR_END: return "'}}'";
    case JT_BLOCK_BEGIN: return "'{%'";
    case JT_BLOCK_END: return "'%}'";
    case JT_STRING: return "a string";
    case JT_INT: case JT_FLOAT: return "a number";
    default: {
        char *s = jinja_alloc(P->c, t->len + 3);
        s[0] = '\'';
        memcpy(s + 1, t->s, t->len);
        s[t->len + 1] = '\'';
        return s;
    }
    }
}

_Noreturn void jp_syntax(parser *P, const char *expected)
{
    jinja_fail(P->c, DUET_ERR_FORMAT, jp_cur(P)->line, "syntax error: expected %s, got %s", expected,
               tok_desc(P, jp_cur(P)));
}

void jp_expect_op(parser *P, const char *op)
{
    if (!jp_is_op(jp_cur(P), op)) {
        char what[16];
        what[0] = '\'';
        strcpy(what + 1, op);
        strcat(what, "'");
        jp_syntax(P, what);
    }
    P->i++;
}

void jp_expect(parser *P, jt_kind kind, const char *what)
{
    if (jp_cur(P)->kind != kind)
        jp_syntax(P, what);
    P->i++;
}

const char *jp_take_name(parser *P)
{
    if (jp_cur(P)->kind != JT_NAME)
        jp_syntax(P, "a name");
    jt *t = &P->t[P->i++];
    return jinja_strndup(P->c, t->s, t->len);
}

jnode *jp_node(parser *P, jn_kind kind, int line)
{
    jnode *n = jinja_alloc(P->c, sizeof *n);
    n->kind = kind;
    n->line = line;
    return n;
}


void jp_push(parser *P, nlist *l, jnode *x)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        jnode **p = jinja_alloc(P->c, cap * sizeof *p);
        if (l->n)
            memcpy(p, l->p, l->n * sizeof *p);
        l->p = p;
        l->cap = cap;
    }
    l->p[l->n++] = x;
}

const char **jp_names_push(parser *P, const char **names, size_t n, const char *name)
{
    const char **p = jinja_alloc(P->c, (n + 1) * sizeof *p);
    if (n)
        memcpy(p, names, n * sizeof *p);
    p[n] = name;
    return p;
}

void jp_enter(parser *P)
{
    if (++P->depth > JINJA_MAX_PARSE_DEPTH)
        jinja_fail(P->c, DUET_ERR_UNSUPPORTED, jp_cur(P)->line, "nesting deeper than %d levels",
                   JINJA_MAX_PARSE_DEPTH);
}

/* (args) of a call, filter or test: positional, then name=value. */
static void parse_args(parser *P, jnode *call)
{
    nlist pos = {0}, kw = {0};
    jp_expect_op(P, "(");
    while (!jp_is_op(jp_cur(P), ")")) {
        if (pos.n + kw.n)
            jp_expect_op(P, ",");
        if (jp_is_op(jp_cur(P), ")"))
            break;
        if (jp_is_op(jp_cur(P), "*") || jp_is_op(jp_cur(P), "**"))
            jinja_fail(P->c, DUET_ERR_UNSUPPORTED, jp_cur(P)->line, "*args / **kwargs in a call are not supported");
        if (jp_cur(P)->kind == JT_NAME && jp_is_op(&P->t[P->i + 1], "=")) {
            call->names = jp_names_push(P, call->names, call->nnames++, jp_take_name(P));
            P->i++;
            jp_push(P, &kw, jp_expr(P, 1));
        } else {
            if (kw.n)
                jp_syntax(P, "a keyword argument (positional after keyword)");
            jp_push(P, &pos, jp_expr(P, 1));
        }
    }
    P->i++;
    call->list = pos.p;
    call->n = pos.n;
    call->list2 = kw.p;
    call->n2 = kw.n;
}

static jnode *parse_primary(parser *P)
{
    jt *t = jp_cur(P);
    jnode *n;
    if (t->kind == JT_NAME) {
        P->i++;
        n = jp_node(P, JN_LIT, t->line);
        if (jp_is_name(t, "true") || jp_is_name(t, "True"))
            n->lit = &jinja_true;
        else if (jp_is_name(t, "false") || jp_is_name(t, "False"))
            n->lit = &jinja_false;
        else if (jp_is_name(t, "none") || jp_is_name(t, "None"))
            n->lit = &jinja_none;
        else {
            n->kind = JN_NAME;
            n->name = jinja_strndup(P->c, t->s, t->len);
        }
        return n;
    }
    if (t->kind == JT_STRING) {
        /* adjacent literals concatenate, as in Python */
        jinja_buf b = {0};
        int line = t->line;
        while (jp_cur(P)->kind == JT_STRING) {
            jb_put(P->c, &b, jp_cur(P)->s, jp_cur(P)->len);
            P->i++;
        }
        n = jp_node(P, JN_LIT, line);
        n->lit = jb_value(P->c, &b);
        return n;
    }
    if (t->kind == JT_INT || t->kind == JT_FLOAT) {
        P->i++;
        n = jp_node(P, JN_LIT, t->line);
        n->lit = t->kind == JT_INT ? jv_int(P->c, t->i) : jv_float(P->c, t->f);
        return n;
    }
    if (jp_is_op(t, "(")) {
        P->i++;
        if (jp_is_op(jp_cur(P), ")")) {
            P->i++;
            return jp_node(P, JN_TUPLE, t->line);
        }
        n = jp_tuple(P, 1);
        jp_expect_op(P, ")");
        return n;
    }
    if (jp_is_op(t, "[") || jp_is_op(t, "{")) {
        int is_dict = jp_is_op(t, "{");
        const char *close = is_dict ? "}" : "]";
        nlist items = {0}, vals = {0};
        P->i++;
        n = jp_node(P, is_dict ? JN_DICT : JN_LIST, t->line);
        while (!jp_is_op(jp_cur(P), close)) {
            if (items.n)
                jp_expect_op(P, ",");
            if (jp_is_op(jp_cur(P), close))
                break;
            jp_push(P, &items, jp_expr(P, 1));
            if (is_dict) {
                jp_expect_op(P, ":");
                jp_push(P, &vals, jp_expr(P, 1));
            }
        }
        P->i++;
        n->list = items.p;
        n->n = items.n;
        n->list2 = vals.p;
        n->n2 = vals.n;
        return n;
    }
    jp_syntax(P, "an expression");
}

static jnode *parse_subscript(parser *P, jnode *obj)
{
    int line = jp_cur(P)->line;
    P->i++; /* [ */
    jnode *parts[3] = {0};
    int is_slice = 0;
    for (int k = 0; k < 3; k++) {
        if (!jp_is_op(jp_cur(P), ":") && !jp_is_op(jp_cur(P), "]"))
            parts[k] = jp_expr(P, 1);
        if (k < 2 && jp_is_op(jp_cur(P), ":")) {
            is_slice = 1;
            P->i++;
            continue;
        }
        break;
    }
    jp_expect_op(P, "]");
    if (!is_slice && !parts[0])
        jp_syntax(P, "a subscript");
    jnode *n = jp_node(P, is_slice ? JN_SLICE : JN_ITEM, line);
    n->a = obj;
    n->b = parts[0];
    n->c = parts[1];
    n->d = parts[2];
    return n;
}

static jnode *parse_postfix(parser *P, jnode *n)
{
    for (;;) {
        jt *t = jp_cur(P);
        if (jp_is_op(t, ".")) {
            P->i++;
            jt *k = jp_cur(P);
            if (k->kind == JT_INT) {
                jnode *idx = jp_node(P, JN_LIT, k->line);
                idx->lit = jv_int(P->c, k->i);
                P->i++;
                jnode *it = jp_node(P, JN_ITEM, t->line);
                it->a = n;
                it->b = idx;
                n = it;
                continue;
            }
            jnode *at = jp_node(P, JN_ATTR, t->line);
            at->a = n;
            at->name = jp_take_name(P);
            n = at;
        } else if (jp_is_op(t, "[")) {
            n = parse_subscript(P, n);
        } else if (jp_is_op(t, "(")) {
            jnode *call = jp_node(P, JN_CALL, t->line);
            call->a = n;
            parse_args(P, call);
            n = call;
        } else {
            return n;
        }
    }
}

jnode *jp_filter(parser *P, jnode *n, int line)
{
    jnode *f = jp_node(P, JN_FILTER, line);
    f->a = n;
    f->name = jp_take_name(P);
    f->id = jinja_filter_id(f->name); /* unknown: fails when evaluated, as in jinja2 */
    if (jp_is_op(jp_cur(P), "("))
        parse_args(P, f);
    return f;
}

static jnode *parse_test(parser *P, jnode *n, int line)
{
    jnode *t = jp_node(P, JN_TEST, line);
    t->a = n;
    if (jp_is_name(jp_cur(P), "not")) {
        P->i++;
        t->op = 1;
    }
    /* "is none", "is true", "is false" name a test, not a literal */
    t->name = jp_take_name(P);
    t->id = jinja_test_id(t->name); /* unknown: fails when evaluated */
    jt *k = jp_cur(P);
    if (jp_is_op(k, "(")) {
        parse_args(P, t);
    } else if ((k->kind == JT_NAME || k->kind == JT_STRING || k->kind == JT_INT || k->kind == JT_FLOAT ||
                jp_is_op(k, "(") || jp_is_op(k, "[") || jp_is_op(k, "{")) &&
               !jp_is_name(k, "else") && !jp_is_name(k, "or") && !jp_is_name(k, "and") && !jp_is_name(k, "if")) {
        /* one argument without parentheses: "x is divisibleby 3" */
        jnode *arg = parse_postfix(P, parse_primary(P));
        t->list = jinja_alloc(P->c, sizeof *t->list);
        t->list[0] = arg;
        t->n = 1;
    }
    return t;
}

static jnode *parse_unary(parser *P, int with_filter)
{
    jt *t = jp_cur(P);
    jnode *n;
    jp_enter(P);
    if (jp_is_op(t, "-") || jp_is_op(t, "+")) {
        P->i++;
        n = jp_node(P, jp_is_op(t, "-") ? JN_NEG : JN_POS, t->line);
        n->a = parse_unary(P, 0);
    } else {
        n = parse_postfix(P, parse_primary(P));
    }
    while (with_filter) {
        t = jp_cur(P);
        if (jp_is_op(t, "|")) {
            P->i++;
            n = jp_filter(P, n, t->line);
        } else if (jp_is_name(t, "is")) {
            P->i++;
            n = parse_test(P, n, t->line);
        } else if (jp_is_op(t, "(")) {
            jnode *call = jp_node(P, JN_CALL, t->line);
            call->a = n;
            parse_args(P, call);
            n = call;
        } else {
            break;
        }
    }
    P->depth--;
    return n;
}

static jnode *binary(parser *P, int op, jnode *l, jnode *r, int line)
{
    jnode *n = jp_node(P, JN_BIN, line);
    n->op = op;
    n->a = l;
    n->b = r;
    return n;
}

static jnode *parse_pow(parser *P)
{
    jnode *n = parse_unary(P, 1);
    while (jp_is_op(jp_cur(P), "**")) {
        int line = jp_cur(P)->line;
        P->i++;
        n = binary(P, OP_POW, n, parse_unary(P, 1), line);
    }
    return n;
}

static jnode *parse_math2(parser *P)
{
    jnode *n = parse_pow(P);
    for (;;) {
        jt *t = jp_cur(P);
        int op = jp_is_op(t, "*") ? OP_MUL : jp_is_op(t, "/") ? OP_DIV : jp_is_op(t, "//") ? OP_FLOORDIV
               : jp_is_op(t, "%") ? OP_MOD : 0;
        if (!op)
            return n;
        P->i++;
        n = binary(P, op, n, parse_pow(P), t->line);
    }
}

static jnode *parse_concat(parser *P)
{
    jnode *n = parse_math2(P);
    while (jp_is_op(jp_cur(P), "~")) {
        int line = jp_cur(P)->line;
        P->i++;
        n = binary(P, OP_CONCAT, n, parse_math2(P), line);
    }
    return n;
}

static jnode *parse_math1(parser *P)
{
    jnode *n = parse_concat(P);
    for (;;) {
        jt *t = jp_cur(P);
        int op = jp_is_op(t, "+") ? OP_ADD : jp_is_op(t, "-") ? OP_SUB : 0;
        if (!op)
            return n;
        P->i++;
        n = binary(P, op, n, parse_concat(P), t->line);
    }
}

static jnode *parse_compare(parser *P)
{
    jnode *first = parse_math1(P);
    nlist rhs = {0};
    int ops[64], nops = 0;
    int line = jp_cur(P)->line;
    for (;;) {
        jt *t = jp_cur(P);
        int op = jp_is_op(t, "==") ? OP_EQ : jp_is_op(t, "!=") ? OP_NE : jp_is_op(t, "<") ? OP_LT
               : jp_is_op(t, "<=") ? OP_LE : jp_is_op(t, ">") ? OP_GT : jp_is_op(t, ">=") ? OP_GE
               : jp_is_name(t, "in") ? OP_IN : 0;
        if (!op && jp_is_name(t, "not") && jp_is_name(&P->t[P->i + 1], "in")) {
            op = OP_NOTIN;
            P->i++;
        }
        if (!op)
            break;
        if (nops == 64)
            jinja_fail(P->c, DUET_ERR_UNSUPPORTED, t->line, "more than 64 chained comparisons");
        P->i++;
        ops[nops++] = op;
        jp_push(P, &rhs, parse_math1(P));
    }
    if (!nops)
        return first;
    jnode *n = jp_node(P, JN_CMP, line);
    n->a = first;
    n->list = rhs.p;
    n->n = rhs.n;
    n->ops = jinja_alloc(P->c, (size_t)nops * sizeof *n->ops);
    memcpy(n->ops, ops, (size_t)nops * sizeof *ops);
    return n;
}

static jnode *parse_not(parser *P)
{
    if (jp_is_name(jp_cur(P), "not")) {
        jnode *n = jp_node(P, JN_NOT, jp_cur(P)->line);
        P->i++;
        jp_enter(P);
        n->a = parse_not(P);
        P->depth--;
        return n;
    }
    return parse_compare(P);
}

static jnode *parse_and(parser *P)
{
    jnode *n = parse_not(P);
    while (jp_is_name(jp_cur(P), "and")) {
        jnode *x = jp_node(P, JN_AND, jp_cur(P)->line);
        P->i++;
        x->a = n;
        x->b = parse_not(P);
        n = x;
    }
    return n;
}

static jnode *parse_or(parser *P)
{
    jnode *n = parse_and(P);
    while (jp_is_name(jp_cur(P), "or")) {
        jnode *x = jp_node(P, JN_OR, jp_cur(P)->line);
        P->i++;
        x->a = n;
        x->b = parse_and(P);
        n = x;
    }
    return n;
}

jnode *jp_expr(parser *P, int with_cond)
{
    jp_enter(P);
    jnode *n = parse_or(P);
    while (with_cond && jp_is_name(jp_cur(P), "if")) {
        jnode *x = jp_node(P, JN_COND, jp_cur(P)->line);
        P->i++;
        x->a = n;
        x->b = parse_or(P);
        if (jp_is_name(jp_cur(P), "else")) {
            P->i++;
            x->c = jp_expr(P, 1);
        }
        n = x;
    }
    P->depth--;
    return n;
}

/* a, b, c (a tuple when there is a comma) */
jnode *jp_tuple(parser *P, int with_cond)
{
    int line = jp_cur(P)->line;
    jnode *first = jp_expr(P, with_cond);
    if (!jp_is_op(jp_cur(P), ","))
        return first;
    nlist items = {0};
    jp_push(P, &items, first);
    while (jp_is_op(jp_cur(P), ",")) {
        P->i++;
        jt *t = jp_cur(P);
        if (t->kind == JT_VAR_END || t->kind == JT_BLOCK_END || jp_is_op(t, ")"))
            break;
        jp_push(P, &items, jp_expr(P, with_cond));
    }
    jnode *n = jp_node(P, JN_TUPLE, line);
    n->list = items.p;
    n->n = items.n;
    return n;
}
