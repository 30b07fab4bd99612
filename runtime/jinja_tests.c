/*
 * jinja_tests.c — jinja2's tests ("x is defined", "x is divisibleby 3",
 * select('equalto', y)) with Python's semantics.
 */
#include <string.h>

#include "jinja_impl.h"

enum {
    T_DEFINED, T_UNDEFINED, T_NONE, T_BOOLEAN, T_TRUE, T_FALSE, T_INTEGER, T_FLOAT, T_NUMBER,
    T_STRING, T_MAPPING, T_ITERABLE, T_SEQUENCE, T_CALLABLE, T_SAMEAS, T_ESCAPED, T_IN,
    T_EQ, T_EQUALTO, T_EQSYM, T_NE, T_NESYM, T_LT, T_LTSYM, T_LESSTHAN, T_LE, T_LESYM, T_GT,
    T_GTSYM, T_GREATERTHAN, T_GE, T_GESYM, T_ODD, T_EVEN, T_DIVISIBLEBY, T_LOWER, T_UPPER,
};

static const char *const TESTS[] = {
    "defined", "undefined", "none", "boolean", "true", "false", "integer", "float", "number",
    "string", "mapping", "iterable", "sequence", "callable", "sameas", "escaped", "in",
    "eq", "equalto", "==", "ne", "!=", "lt", "<", "lessthan", "le", "<=", "gt",
    ">", "greaterthan", "ge", ">=", "odd", "even", "divisibleby", "lower", "upper",
};

static int find(const char *const *names, size_t n, const char *name)
{
    for (size_t k = 0; k < n; k++)
        if (strcmp(names[k], name) == 0)
            return (int)k;
    return -1;
}

int jinja_test_id(const char *name) { return find(TESTS, sizeof TESTS / sizeof *TESTS, name); }

static jv *need(jinja_ctx *c, int line, jv *v, const char *what)
{
    if (!v)
        jinja_fail(c, DUET_ERR_INVALID_ARG, line, "%s: missing argument", what);
    return v;
}

int jinja_apply_test(jinja_render *r, int line, int id, jv *v, jv **args, size_t nargs)
{
    jinja_ctx *c = jinja_render_ctx(r);
    jv *a = nargs ? args[0] : NULL;
    switch (id) {
    case T_DEFINED: return v->kind != JV_UNDEF;
    case T_UNDEFINED: return v->kind == JV_UNDEF;
    case T_NONE: return v->kind == JV_NONE;
    case T_BOOLEAN: return v->kind == JV_BOOL;
    case T_TRUE: return v->kind == JV_BOOL && v->u.b;
    case T_FALSE: return v->kind == JV_BOOL && !v->u.b;
    case T_INTEGER: return v->kind == JV_INT;
    case T_FLOAT: return v->kind == JV_FLOAT;
    case T_NUMBER: return jv_is_num(v);
    case T_STRING: return v->kind == JV_STR;
    case T_MAPPING: return v->kind == JV_DICT;
    case T_ITERABLE: return v->kind == JV_STR || v->kind == JV_LIST || v->kind == JV_DICT || v->kind == JV_UNDEF;
    case T_SEQUENCE: return v->kind == JV_STR || v->kind == JV_LIST || v->kind == JV_DICT;
    case T_CALLABLE: return v->kind == JV_FUNC || v->kind == JV_MACRO;
    case T_ESCAPED: return v->kind == JV_STR && v->u.str.safe;
    case T_SAMEAS:
        a = need(c, line, a, "sameas");
        return v->kind == a->kind && (v->kind == JV_NONE || v->kind == JV_UNDEF ||
                                      (v->kind == JV_BOOL && v->u.b == a->u.b) || v == a);
    case T_IN: {
        a = need(c, line, a, "in");
        size_t n;
        if (a->kind == JV_STR)
            return v->kind == JV_STR && memmem(a->u.str.s, a->u.str.len, v->u.str.s, v->u.str.len) != NULL;
        if (a->kind == JV_DICT)
            return jv_dict_lookup(a, v) != NULL;
        jv **items = jinja_iter(r, line, a, &n);
        for (size_t k = 0; k < n; k++)
            if (jv_equal(v, items[k]))
                return 1;
        return 0;
    }
    case T_EQ: case T_EQUALTO: case T_EQSYM: return jv_equal(v, need(c, line, a, "equalto"));
    case T_NE: case T_NESYM: return !jv_equal(v, need(c, line, a, "ne"));
    case T_LT: case T_LTSYM: case T_LESSTHAN: return jv_compare(c, line, v, need(c, line, a, "lt"), 0) < 0;
    case T_LE: case T_LESYM: return jv_compare(c, line, v, need(c, line, a, "le"), 0) <= 0;
    case T_GT: case T_GTSYM: case T_GREATERTHAN: return jv_compare(c, line, v, need(c, line, a, "gt"), 0) > 0;
    case T_GE: case T_GESYM: return jv_compare(c, line, v, need(c, line, a, "ge"), 0) >= 0;
    case T_ODD: case T_EVEN: case T_DIVISIBLEBY: {
        if (v->kind != JV_INT && v->kind != JV_BOOL)
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "test '%s' needs an integer, not %s", TESTS[id],
                       jv_type_name(v));
        int64_t x = v->kind == JV_INT ? v->u.i : v->u.b;
        if (id == T_ODD)
            return (x % 2) != 0;
        if (id == T_EVEN)
            return (x % 2) == 0;
        a = need(c, line, a, "divisibleby");
        if (a->kind != JV_INT || a->u.i == 0)
            jinja_fail(c, DUET_ERR_INVALID_ARG, line, "divisibleby needs a non-zero integer");
        return x % a->u.i == 0;
    }
    case T_LOWER: case T_UPPER: {
        jv *s = jv_to_str(c, v);
        jv *t = jinja_str_case(c, s, id == T_LOWER ? CASE_LOWER : CASE_UPPER);
        return jv_equal(s, t);
    }
    }
    jinja_fail(c, DUET_ERR_INTERNAL, line, "test %d has no implementation", id);
}
