/*
 * jinja_eval.c — running a parsed chat template: scopes, expressions with
 * Python's semantics, and the statements (if, for with loop.*, set,
 * namespace attributes, macros, filter blocks, break/continue).
 *
 * Scoping follows jinja2: a for loop's body gets a fresh scope per
 * iteration, so {% set %} inside a loop does not leak out (templates use
 * namespace() for that); if blocks share the enclosing scope.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "jinja_impl.h"

typedef struct scope {
    struct scope *parent;
    const char **names;
    jv **vals;
    size_t n, cap;
} scope;

enum { CTRL_NONE, CTRL_BREAK, CTRL_CONTINUE };

struct jinja_render {
    jinja_ctx *c;
    jinja_buf *out;
    scope *sc;         /* innermost */
    jv *context;       /* the caller's variables */
    jv *filter_input;  /* operand of a {% filter %} block */
    long steps;        /* loop iterations + macro calls */
    int call_depth;
    int ctrl;
};

jinja_ctx *jinja_render_ctx(jinja_render *r) { return r->c; }

static jv *eval(jinja_render *r, const jnode *n);
static void exec_body(jinja_render *r, jnode *const *body, size_t n);

/* ---- scopes ------------------------------------------------------------------- */

static scope *scope_new(jinja_render *r, scope *parent)
{
    scope *s = jinja_alloc(r->c, sizeof *s);
    s->parent = parent;
    return s;
}

static void scope_set(jinja_render *r, scope *s, const char *name, jv *v)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->names[i], name) == 0) {
            s->vals[i] = v;
            return;
        }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        const char **nm = jinja_alloc(r->c, cap * sizeof *nm);
        jv **vs = jinja_alloc(r->c, cap * sizeof *vs);
        if (s->n) {
            memcpy(nm, s->names, s->n * sizeof *nm);
            memcpy(vs, s->vals, s->n * sizeof *vs);
        }
        s->names = nm;
        s->vals = vs;
        s->cap = cap;
    }
    s->names[s->n] = name;
    s->vals[s->n++] = v;
}

static jv *lookup(jinja_render *r, const char *name)
{
    for (scope *s = r->sc; s; s = s->parent)
        for (size_t i = 0; i < s->n; i++)
            if (strcmp(s->names[i], name) == 0)
                return s->vals[i];
    jv *v = jv_dict_get(r->context, name, strlen(name));
    if (v)
        return v;
    int id = jinja_global_id(name);
    return id ? jv_func(r->c, id, NULL) : jv_undef_why(r->c, "'%s' is undefined", name);
}

static void count_step(jinja_render *r, int line)
{
    if (++r->steps > JINJA_MAX_STEPS)
        jinja_fail(r->c, DUET_ERR_INVALID_ARG, line,
                   "more than %ld loop iterations and macro calls (limit)", JINJA_MAX_STEPS);
}

/* ---- calls ----------------------------------------------------------------------- */

static void capture_begin(jinja_render *r, jinja_buf *b, jinja_buf **saved)
{
    memset(b, 0, sizeof *b);
    *saved = r->out;
    r->out = b;
}

static jv *capture_end(jinja_render *r, jinja_buf *saved)
{
    jinja_buf *b = r->out;
    r->out = saved;
    return jb_value(r->c, b);
}

static jv *call_macro(jinja_render *r, int line, const jv *m, jv **args, size_t nargs,
                      const char **kwn, jv **kwv, size_t nkw)
{
    const jnode *def = m->u.macro.node;
    if (r->call_depth >= JINJA_MAX_CALL_DEPTH)
        jinja_fail(r->c, DUET_ERR_INVALID_ARG, line, "macro calls nested deeper than %d (limit)",
                   JINJA_MAX_CALL_DEPTH);
    count_step(r, line);
    scope *saved_sc = r->sc;
    scope *s = scope_new(r, m->u.macro.scope);
    size_t extra = nargs > def->nnames ? nargs - def->nnames : 0;
    jv *varargs = jv_list(r->c, extra, 1);
    jv *kwargs = jv_dict(r->c, JV_DICT);
    for (size_t k = 0; k < extra; k++)
        varargs->u.list.items[k] = args[def->nnames + k];
    r->sc = s;
    for (size_t p = 0; p < def->nnames; p++) {
        jv *v = p < nargs ? args[p] : NULL;
        for (size_t k = 0; k < nkw && !v; k++)
            if (strcmp(kwn[k], def->names[p]) == 0)
                v = kwv[k];
        if (!v)
            v = def->list2[p] ? eval(r, def->list2[p]) : &jinja_undef;
        scope_set(r, s, def->names[p], v);
    }
    for (size_t k = 0; k < nkw; k++) {
        int known = 0;
        for (size_t p = 0; p < def->nnames; p++)
            known |= strcmp(kwn[k], def->names[p]) == 0;
        if (!known)
            jv_dict_set(r->c, kwargs, jv_cstr(r->c, kwn[k]), kwv[k]);
    }
    scope_set(r, s, "varargs", varargs);
    scope_set(r, s, "kwargs", kwargs);
    jinja_buf b, *saved_out;
    int saved_ctrl = r->ctrl;
    capture_begin(r, &b, &saved_out);
    r->call_depth++;
    exec_body(r, def->list, def->n);
    r->call_depth--;
    r->ctrl = saved_ctrl;
    r->sc = saved_sc;
    return capture_end(r, saved_out);
}

/* Evaluate a call's, filter's or test's arguments. */
static jv **eval_list(jinja_render *r, jnode *const *nodes, size_t n)
{
    jv **out = jinja_alloc(r->c, (n ? n : 1) * sizeof *out);
    for (size_t k = 0; k < n; k++)
        out[k] = eval(r, nodes[k]);
    return out;
}

static jv *eval_call(jinja_render *r, const jnode *n)
{
    jv *fn = eval(r, n->a);
    jv **args = eval_list(r, n->list, n->n), **kw = eval_list(r, n->list2, n->n2);
    if (fn->kind == JV_MACRO)
        return call_macro(r, n->line, fn, args, n->n, n->names, kw, n->n2);
    if (fn->kind == JV_FUNC)
        return jinja_call_function(r, n->line, fn, args, n->n, n->names, kw, n->n2);
    if (fn->kind == JV_UNDEF)
        jinja_fail_undefined(r, n->line, fn);
    if (n->a->kind == JN_NAME)
        jinja_fail(r->c, DUET_ERR_INVALID_ARG, n->line, "'%s' is a %s, not a function", n->a->name,
                   jv_type_name(fn));
    jinja_fail(r->c, DUET_ERR_INVALID_ARG, n->line, "a %s is not callable", jv_type_name(fn));
}

/* ---- expressions ----------------------------------------------------------------- */

static jv *eval(jinja_render *r, const jnode *n)
{
    jinja_ctx *c = r->c;
    switch (n->kind) {
    case JN_LIT: return n->lit;
    case JN_NAME: return lookup(r, n->name);
    case JN_ATTR: return jinja_getattr(r, n->line, eval(r, n->a), n->name, strlen(n->name));
    case JN_ITEM: {
        jv *obj = eval(r, n->a);
        return jinja_getitem(r, n->line, obj, eval(r, n->b));
    }
    case JN_SLICE: {
        jv *obj = eval(r, n->a);
        jv *a = n->b ? eval(r, n->b) : NULL, *b = n->c ? eval(r, n->c) : NULL;
        return jinja_slice(r, n->line, obj, a, b, n->d ? eval(r, n->d) : NULL);
    }
    case JN_CALL: return eval_call(r, n);
    case JN_FILTER: {
        if (n->id < 0)
            jinja_fail(c, DUET_ERR_UNSUPPORTED, n->line, "filter '%s' is not supported", n->name);
        jv *v = n->a ? eval(r, n->a) : r->filter_input;
        jv **args = eval_list(r, n->list, n->n), **kw = eval_list(r, n->list2, n->n2);
        return jinja_apply_filter(r, n->line, n->id, v, args, n->n, n->names, kw, n->n2);
    }
    case JN_TEST: {
        if (n->id < 0)
            jinja_fail(c, DUET_ERR_UNSUPPORTED, n->line, "test '%s' is not supported", n->name);
        jv *v = eval(r, n->a);
        jv **args = eval_list(r, n->list, n->n);
        return jv_bool(jinja_apply_test(r, n->line, n->id, v, args, n->n) != n->op);
    }
    case JN_NEG: case JN_POS: {
        jv *v = eval(r, n->a);
        if (!jv_is_num(v))
            jinja_fail(c, DUET_ERR_INVALID_ARG, n->line, "bad operand type for unary %c: %s",
                       n->kind == JN_NEG ? '-' : '+', jv_type_name(v));
        if (n->kind == JN_POS)
            return v->kind == JV_BOOL ? jv_int(c, v->u.b) : v;
        if (v->kind == JV_FLOAT)
            return jv_float(c, -v->u.f);
        int64_t i = v->kind == JV_INT ? v->u.i : v->u.b;
        if (i == INT64_MIN)
            jinja_fail(c, DUET_ERR_INVALID_ARG, n->line, "integer overflow in unary -");
        return jv_int(c, -i);
    }
    case JN_NOT: return jv_bool(!jv_truthy(eval(r, n->a)));
    case JN_AND: {
        jv *a = eval(r, n->a);
        return jv_truthy(a) ? eval(r, n->b) : a;
    }
    case JN_OR: {
        jv *a = eval(r, n->a);
        return jv_truthy(a) ? a : eval(r, n->b);
    }
    case JN_COND:
        if (jv_truthy(eval(r, n->b)))
            return eval(r, n->a);
        return n->c ? eval(r, n->c) : &jinja_undef;
    case JN_BIN: {
        jv *a = eval(r, n->a), *b = eval(r, n->b);
        if (n->op == OP_CONCAT) {
            jinja_buf buf = {0};
            jv_write_str(c, &buf, a);
            jv_write_str(c, &buf, b);
            return jb_value(c, &buf);
        }
        return jinja_arith(r, n->line, n->op, a, b);
    }
    case JN_CMP: {
        jv *left = eval(r, n->a);
        for (size_t k = 0; k < n->n; k++) {
            jv *right = eval(r, n->list[k]);
            if (!jinja_compare_op(r, n->line, n->ops[k], left, right))
                return &jinja_false;
            left = right;
        }
        return &jinja_true;
    }
    case JN_LIST: case JN_TUPLE: {
        jv *l = jv_list(c, n->n, n->kind == JN_TUPLE);
        for (size_t k = 0; k < n->n; k++)
            l->u.list.items[k] = eval(r, n->list[k]);
        return l;
    }
    case JN_DICT: {
        jv *d = jv_dict(c, JV_DICT);
        for (size_t k = 0; k < n->n; k++) {
            jv *key = eval(r, n->list[k]);
            jv_dict_set(c, d, key, eval(r, n->list2[k]));
        }
        return d;
    }
    default:
        jinja_fail(c, DUET_ERR_INTERNAL, n->line, "statement node %d evaluated as an expression", n->kind);
    }
}

/* ---- statements ------------------------------------------------------------------ */

static void assign_targets(jinja_render *r, int line, scope *s, const char **names, size_t n, jv *v)
{
    if (n == 1) {
        scope_set(r, s, names[0], v);
        return;
    }
    if (v->kind != JV_LIST)
        jinja_fail(r->c, DUET_ERR_INVALID_ARG, line, "cannot unpack a %s into %zu names",
                   jv_type_name(v), n);
    if (v->u.list.n != n)
        jinja_fail(r->c, DUET_ERR_INVALID_ARG, line, "cannot unpack %zu values into %zu names",
                   v->u.list.n, n);
    for (size_t k = 0; k < n; k++)
        scope_set(r, s, names[k], v->u.list.items[k]);
}

static jv *loop_object(jinja_render *r, size_t i, size_t n, jv **items)
{
    jinja_ctx *c = r->c;
    jv *loop = jv_dict(c, JV_DICT);
    jv_dict_set(c, loop, jv_cstr(c, "index"), jv_int(c, (int64_t)i + 1));
    jv_dict_set(c, loop, jv_cstr(c, "index0"), jv_int(c, (int64_t)i));
    jv_dict_set(c, loop, jv_cstr(c, "revindex"), jv_int(c, (int64_t)(n - i)));
    jv_dict_set(c, loop, jv_cstr(c, "revindex0"), jv_int(c, (int64_t)(n - i - 1)));
    jv_dict_set(c, loop, jv_cstr(c, "first"), jv_bool(i == 0));
    jv_dict_set(c, loop, jv_cstr(c, "last"), jv_bool(i + 1 == n));
    jv_dict_set(c, loop, jv_cstr(c, "length"), jv_int(c, (int64_t)n));
    jv_dict_set(c, loop, jv_cstr(c, "depth"), jv_int(c, 1));
    jv_dict_set(c, loop, jv_cstr(c, "depth0"), jv_int(c, 0));
    if (i > 0)
        jv_dict_set(c, loop, jv_cstr(c, "previtem"), items[i - 1]);
    if (i + 1 < n)
        jv_dict_set(c, loop, jv_cstr(c, "nextitem"), items[i + 1]);
    jv_dict_set(c, loop, jv_cstr(c, "cycle"), jv_func(c, FN_CYCLE, loop));
    return loop;
}

static void exec_for(jinja_render *r, const jnode *n)
{
    size_t count;
    jv **items = jinja_iter(r, n->line, eval(r, n->a), &count);
    scope *outer = r->sc;
    if (n->b) { /* {% for x in xs if cond %}: filter first, as jinja2 does */
        jv **kept = jinja_alloc(r->c, (count ? count : 1) * sizeof *kept);
        size_t k = 0;
        for (size_t i = 0; i < count; i++) {
            count_step(r, n->line);
            r->sc = scope_new(r, outer);
            assign_targets(r, n->line, r->sc, n->names, n->nnames, items[i]);
            if (jv_truthy(eval(r, n->b)))
                kept[k++] = items[i];
        }
        r->sc = outer;
        items = kept;
        count = k;
    }
    for (size_t i = 0; i < count; i++) {
        count_step(r, n->line);
        r->sc = scope_new(r, outer);
        assign_targets(r, n->line, r->sc, n->names, n->nnames, items[i]);
        scope_set(r, r->sc, "loop", loop_object(r, i, count, items));
        exec_body(r, n->list, n->n);
        r->sc = outer;
        if (r->ctrl == CTRL_BREAK) {
            r->ctrl = CTRL_NONE;
            break;
        }
        r->ctrl = CTRL_NONE;
    }
    if (count == 0)
        exec_body(r, n->list2, n->n2);
}

static void exec_stmt(jinja_render *r, const jnode *n)
{
    jinja_ctx *c = r->c;
    switch (n->kind) {
    case JN_TEXT: jb_put(c, r->out, n->lit->u.str.s, n->lit->u.str.len); break;
    case JN_PRINT: jv_write_str(c, r->out, eval(r, n->a)); break;
    case JN_IF:
        if (jv_truthy(eval(r, n->a)))
            exec_body(r, n->list, n->n);
        else
            exec_body(r, n->list2, n->n2);
        break;
    case JN_FOR: exec_for(r, n); break;
    case JN_SET:
        if (n->nnames)
            assign_targets(r, n->line, r->sc, n->names, n->nnames, eval(r, n->a));
        else
            scope_set(r, r->sc, n->name, eval(r, n->a));
        break;
    case JN_SET_ATTR: {
        jv *ns = lookup(r, n->name);
        if (ns->kind != JV_NS)
            jinja_fail(c, DUET_ERR_INVALID_ARG, n->line, "cannot assign attribute '%s' of '%s': "
                       "it is a %s, not a namespace", n->names[0], n->name, jv_type_name(ns));
        if (n->names[0][0] == '_')
            jinja_fail(c, DUET_ERR_INVALID_ARG, n->line, "namespace attribute '%s' starts with '_'",
                       n->names[0]);
        jv_dict_set(c, ns, jv_cstr(c, n->names[0]), eval(r, n->a));
        break;
    }
    case JN_SET_BLOCK: case JN_FILTER_BLOCK: {
        jinja_buf b, *saved;
        capture_begin(r, &b, &saved);
        exec_body(r, n->list, n->n);
        jv *text = capture_end(r, saved);
        if (n->kind == JN_SET_BLOCK) {
            scope_set(r, r->sc, n->name, text);
        } else {
            jv *saved_input = r->filter_input;
            r->filter_input = text;
            jv_write_str(c, r->out, eval(r, n->a));
            r->filter_input = saved_input;
        }
        break;
    }
    case JN_MACRO: {
        jv *m = jinja_alloc(c, sizeof *m);
        m->kind = JV_MACRO;
        m->u.macro.node = n;
        m->u.macro.scope = r->sc;
        scope_set(r, r->sc, n->name, m);
        break;
    }
    case JN_BREAK: r->ctrl = CTRL_BREAK; break;
    case JN_CONTINUE: r->ctrl = CTRL_CONTINUE; break;
    case JN_BODY: exec_body(r, n->list, n->n); break;
    default: jv_write_str(c, r->out, eval(r, n)); break;
    }
}

static void exec_body(jinja_render *r, jnode *const *body, size_t n)
{
    for (size_t i = 0; i < n && r->ctrl == CTRL_NONE; i++)
        exec_stmt(r, body[i]);
}

jv *jinja_render_template(jinja_ctx *c, const jnode *root, jv *context)
{
    jinja_buf out = {0};
    jinja_render r = {.c = c, .out = &out, .context = context};
    r.sc = scope_new(&r, NULL);
    exec_body(&r, root->list, root->n);
    return jb_value(c, &out);
}
