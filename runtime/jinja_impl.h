/*
 * jinja_impl.h — internals of the chat-template interpreter (see
 * chat_template.h): values, the syntax tree, and the helpers shared by
 *   jinja_lex.c         source -> tokens (trim_blocks, lstrip_blocks, -/+)
 *   jinja_parse.c       statements    jinja_parse_expr.c  expressions
 *   jinja_eval.c        scopes, statements, expression evaluation
 *   jinja_ops.c         operators, attribute/item access, slicing
 *   jinja_value.c       arena, values, ==, <   jinja_text.c  str/repr/json
 *   jinja_filters.c     filters       jinja_tests.c       "is" tests
 *   jinja_methods.c     str/dict methods and global functions
 *
 * Memory: everything a compile or a render creates lives in one arena that
 * is freed as a whole, and a failure anywhere longjmp()s back to the entry
 * point (duet_chat_template_compile / _render), which frees the arena.
 * An interpreter has hundreds of places that can fail (every allocation,
 * every type error); unwinding each by hand would bury the semantics, and
 * with a single arena there is nothing else to release.
 */
#ifndef DUET_JINJA_IMPL_H
#define DUET_JINJA_IMPL_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

#include "duet.h"

/* Limits that keep a hostile template from hanging or exhausting the
 * server; each is far above what real chat templates use. */
#define JINJA_MAX_OUTPUT (16u << 20)      /* bytes of any one string or output */
#define JINJA_MAX_STEPS 1000000L          /* loop iterations + macro calls */
#define JINJA_MAX_ARENA (256u << 20)      /* bytes allocated by one render */
#define JINJA_MAX_CALL_DEPTH 64           /* nested macro calls */
#define JINJA_MAX_PARSE_DEPTH 200         /* nested expressions / blocks */
#define JINJA_MAX_RANGE 100000            /* items of range(), as jinja2's sandbox */

/* ---- arena + failure ------------------------------------------------------ */

typedef struct jinja_chunk jinja_chunk;

typedef struct jinja_arena {
    jinja_chunk *head;
    size_t total; /* bytes allocated so far */
    size_t limit;
} jinja_arena;

/* Shared by compile and render: where to jump on failure. */
typedef struct jinja_ctx {
    jmp_buf jb;
    jinja_arena *arena;
    duet_status status; /* set before the longjmp */
} jinja_ctx;

void *jinja_alloc(jinja_ctx *c, size_t n); /* zeroed */
char *jinja_strndup(jinja_ctx *c, const char *s, size_t n);
void jinja_arena_free(jinja_arena *a);
/* Record the message (prefixed "chat template line N: " when line > 0)
 * and jump back to the entry point. */
_Noreturn void jinja_fail(jinja_ctx *c, duet_status st, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- values --------------------------------------------------------------- */

typedef enum jv_kind {
    JV_UNDEF, JV_NONE, JV_BOOL, JV_INT, JV_FLOAT, JV_STR, JV_LIST, JV_DICT,
    JV_NS,   /* namespace(): a dict whose attributes can be assigned */
    JV_FUNC, /* a global function or a bound method */
    JV_MACRO,
} jv_kind;

typedef struct jv jv;
struct jv {
    jv_kind kind;
    union {
        int b;
        int64_t i;
        double f;
        /* UTF-8; safe: jinja2's Markup (from |safe or |e); JV_UNDEF: s = why, or NULL */
        struct { const char *s; size_t len; int safe; } str;
        struct { jv **items; size_t n; int tuple; } list; /* tuple: SEQ_* */
        struct { jv **keys, **vals; size_t n, cap; } dict; /* insertion order */
        struct { int id; jv *self; } fn;
        struct { const struct jnode *node; void *scope; } macro;
    } u;
};

/* Kinds of JV_LIST. Filters such as select and map give generators in
 * jinja2: always true, no len(), not JSON serializable, not indexable. */
enum { SEQ_LIST, SEQ_TUPLE, SEQ_GEN };

extern jv jinja_undef, jinja_none, jinja_true, jinja_false;

jv *jv_int(jinja_ctx *c, int64_t i);
jv *jv_float(jinja_ctx *c, double f);
jv *jv_bool(int b);
jv *jv_str(jinja_ctx *c, const char *s, size_t len);   /* copies */
jv *jv_str_take(jinja_ctx *c, const char *s, size_t len); /* s lives in the arena */
jv *jv_cstr(jinja_ctx *c, const char *s);
jv *jv_list(jinja_ctx *c, size_t n, int tuple);       /* n NULL items to fill */
jv *jv_dict(jinja_ctx *c, jv_kind kind);
void jv_dict_set(jinja_ctx *c, jv *d, jv *key, jv *val);
jv *jv_dict_get(const jv *d, const char *key, size_t len); /* NULL if absent */
jv *jv_dict_lookup(const jv *d, const jv *key);           /* NULL if absent */
jv *jv_func(jinja_ctx *c, int id, jv *self);
jv *jv_markup(jinja_ctx *c, const jv *s); /* the same string, marked safe */
jv *jinja_html_escape(jinja_ctx *c, const jv *v); /* Markup(escape(str(v))) */
/* An undefined value that remembers why (jinja2's message when it is
 * used): "'x' is undefined", "'dict object' has no attribute 'y'". */
jv *jv_undef_why(jinja_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *jv_undef_message(const jv *v);

int jv_truthy(const jv *v);
int jv_is_num(const jv *v); /* int, float or bool */
double jv_num(const jv *v);
int jv_equal(const jv *a, const jv *b);
/* <0, 0, >0; fails on incomparable types. fold: compare strings lowercased. */
int jv_compare(jinja_ctx *c, int line, const jv *a, const jv *b, int fold);
const char *jv_type_name(const jv *v);

/* Growable byte buffer in the arena. */
typedef struct jinja_buf {
    char *p;
    size_t len, cap;
} jinja_buf;

void jb_put(jinja_ctx *c, jinja_buf *b, const char *s, size_t n);
void jb_puts(jinja_ctx *c, jinja_buf *b, const char *s);
void jb_putc(jinja_ctx *c, jinja_buf *b, char ch);
jv *jb_value(jinja_ctx *c, jinja_buf *b);

void jv_write_str(jinja_ctx *c, jinja_buf *b, const jv *v);  /* Python str() */
void jv_write_repr(jinja_ctx *c, jinja_buf *b, const jv *v); /* Python repr() */
jv *jv_to_str(jinja_ctx *c, const jv *v);
void jinja_float_repr(double f, char out[32]);

typedef struct jinja_json_opts {
    const char *indent; /* NULL: one line */
    const char *item_sep, *key_sep;
    int sort_keys, ensure_ascii;
} jinja_json_opts;
void jv_write_json(jinja_ctx *c, int line, jinja_buf *b, const jv *v,
                   const jinja_json_opts *o, int depth);

/* ---- UTF-8 helpers (code points, as Python strings count them) ------------ */

size_t jinja_utf8_next(const char *s, size_t len, size_t i, uint32_t *cp);
size_t jinja_utf8_count(const char *s, size_t len);
int jinja_is_space(uint32_t cp);
uint32_t jinja_upper(uint32_t cp);
uint32_t jinja_lower(uint32_t cp);
void jb_put_cp(jinja_ctx *c, jinja_buf *b, uint32_t cp);

/* ---- syntax tree ---------------------------------------------------------- */

typedef enum jn_kind {
    /* expressions */
    JN_LIT, JN_NAME, JN_ATTR, JN_ITEM, JN_SLICE, JN_CALL, JN_FILTER, JN_TEST,
    JN_NEG, JN_POS, JN_NOT, JN_BIN, JN_CMP, JN_AND, JN_OR, JN_COND, JN_LIST,
    JN_TUPLE, JN_DICT,
    /* statements */
    JN_TEXT, JN_PRINT, JN_IF, JN_FOR, JN_SET, JN_SET_ATTR, JN_SET_BLOCK, JN_MACRO,
    JN_BREAK, JN_CONTINUE, JN_FILTER_BLOCK, JN_BODY,
} jn_kind;

typedef struct jnode jnode;
struct jnode {
    jn_kind kind;
    int line;
    int op;           /* operator code; for JN_TEST: negated */
    int id;           /* filter or test id */
    const char *name; /* NAME, ATTR, macro and set target, filter/test name */
    jnode *a, *b, *c, *d;
    jnode **list;        /* items, positional args, body, compare operands */
    size_t n;
    jnode **list2;       /* keyword arg values, else body, dict values */
    size_t n2;
    const char **names; /* keyword arg names, for targets, macro params */
    size_t nnames;
    int *ops;         /* compare operators */
    jv *lit;
};

/* Operator codes (JN_BIN, JN_CMP). */
enum {
    OP_ADD = 1, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW, OP_CONCAT,
    OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN,
};

jnode *jinja_parse(jinja_ctx *c, const char *src, size_t len);

/* ---- lexer ---------------------------------------------------------------- */

typedef enum jt_kind {
    JT_EOF, JT_DATA, JT_VAR_BEGIN, JT_VAR_END, JT_BLOCK_BEGIN, JT_BLOCK_END,
    JT_NAME, JT_STRING, JT_INT, JT_FLOAT, JT_OP,
} jt_kind;

typedef struct jt {
    jt_kind kind;
    int line;
    const char *s; /* DATA, NAME, STRING (unescaped), OP */
    size_t len;
    int64_t i;
    double f;
} jt;

/* Tokens of a whole template, trim_blocks and lstrip_blocks applied. */
jt *jinja_lex(jinja_ctx *c, const char *src, size_t len, size_t *n_out);

/* ---- parser internals (jinja_parse.c, jinja_parse_expr.c) ----------------- */

typedef struct parser {
    jinja_ctx *c;
    jt *t;
    size_t n, i;
    int depth;
} parser;

/* A growable array of node pointers in the arena. */
typedef struct nlist {
    jnode **p;
    size_t n, cap;
} nlist;

jt *jp_cur(parser *P);
int jp_is_op(const jt *t, const char *op);
int jp_is_name(const jt *t, const char *name);
_Noreturn void jp_syntax(parser *P, const char *expected);
void jp_expect_op(parser *P, const char *op);
void jp_expect(parser *P, jt_kind kind, const char *what);
const char *jp_take_name(parser *P);
jnode *jp_node(parser *P, jn_kind kind, int line);
void jp_push(parser *P, nlist *l, jnode *x);
const char **jp_names_push(parser *P, const char **names, size_t n, const char *name);
void jp_enter(parser *P); /* fails past JINJA_MAX_PARSE_DEPTH; P->depth-- to leave */
jnode *jp_expr(parser *P, int with_cond); /* with_cond: allow "a if c else b" */
jnode *jp_tuple(parser *P, int with_cond); /* a, b, c */
jnode *jp_filter(parser *P, jnode *operand, int line); /* after the '|' */

/* ---- filters, tests, methods, globals ------------------------------------- */

typedef struct jinja_render jinja_render;

int jinja_filter_id(const char *name);  /* -1 when unknown */
int jinja_test_id(const char *name);    /* -1 when unknown */
/* Apply filter id to v with evaluated arguments. */
jv *jinja_apply_filter(jinja_render *r, int line, int id, jv *v, jv **args, size_t nargs,
                       const char **kwnames, jv **kwvals, size_t nkw);
int jinja_apply_test(jinja_render *r, int line, int id, jv *v, jv **args, size_t nargs);

/* Functions: globals first, then methods (bound to a self). */
enum {
    FN_RANGE = 1, FN_NAMESPACE, FN_DICT, FN_RAISE, FN_STRFTIME, FN_CYCLE,
    FN_METHOD_BASE = 100,
};
int jinja_global_id(const char *name);             /* 0 when none */
int jinja_method_id(const jv *self, const char *name, size_t len); /* 0 when none */
jv *jinja_call_function(jinja_render *r, int line, const jv *fn, jv **args, size_t nargs,
                        const char **kwnames, jv **kwvals, size_t nkw);

/* Arguments of a filter, test, function or method call. */
typedef struct jinja_args {
    jv **pos;
    size_t npos;
    const char **kwnames;
    jv **kwvals;
    size_t nkw;
} jinja_args;
/* The argument at position pos, else the keyword name, else NULL. */
jv *jinja_arg(const jinja_args *a, size_t pos, const char *name);

/* String helpers shared by filters and methods (on code points). */
enum { STRIP_BOTH, STRIP_LEFT, STRIP_RIGHT };
jv *jinja_str_strip(jinja_ctx *c, const jv *s, const jv *chars, int side);
enum { CASE_UPPER, CASE_LOWER, CASE_CAPITALIZE, CASE_TITLE_PY, CASE_TITLE_JINJA };
jv *jinja_str_case(jinja_ctx *c, const jv *s, int mode);
jv *jinja_str_replace(jinja_ctx *c, const jv *s, const jv *old, const jv *new_, int64_t count);

/* Evaluator entry points used by filters (select/map call tests/filters). */
jinja_ctx *jinja_render_ctx(jinja_render *r);
jv *jinja_getattr(jinja_render *r, int line, jv *obj, const char *name, size_t len);
jv *jinja_getitem(jinja_render *r, int line, jv *obj, jv *key);
/* jinja_ops.c: slicing (NULL bounds = none), operators, undefined use. */
jv *jinja_slice(jinja_render *r, int line, jv *obj, jv *start, jv *stop, jv *step);
jv *jinja_arith(jinja_render *r, int line, int op, jv *a, jv *b);      /* OP_ADD..OP_POW */
int jinja_compare_op(jinja_render *r, int line, int op, jv *a, jv *b); /* OP_EQ..OP_NOTIN */
_Noreturn void jinja_fail_undefined(jinja_render *r, int line, const jv *undef);
/* Items of an iterable (list, tuple, dict keys, string characters). */
jv **jinja_iter(jinja_render *r, int line, jv *v, size_t *n);
/* Render a whole template. */
jv *jinja_render_template(jinja_ctx *c, const jnode *root, jv *context);

#endif
