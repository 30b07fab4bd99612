/*
 * sample_fixture.h — running the sample op's CPU kernels in tests: batches
 * of rows, every kernel variant (reference, each fast instruction-set
 * table, the thread pool), rows from request parameters. Header-only,
 * shared by test_cpu_sample.c and test_cpu_sample_stats.c.
 */
#ifndef DUET_TEST_SAMPLE_FIXTURE_H
#define DUET_TEST_SAMPLE_FIXTURE_H

#include "cpu_fixture.h"
#include "cpu_sample.h"
#include "duet.h"
#include "sample_fast.h"
#include "sample_math.h"
#include "sampler.h"

/* ---- running the kernels --------------------------------------------------------- */

typedef enum kernel {
    K_REF,
    K_FAST_SCALAR,     /* portable table, one thread */
    K_FAST_AVX2,       /* AVX2 table (portable where the CPU lacks AVX2) */
    K_FAST_BEST,       /* widest table (AVX-512 where present), one thread */
    K_FAST_BEST_POOL,  /* widest table, 3 threads */
    K_COUNT
} kernel;

static const char *const kernel_name[K_COUNT] __attribute__((unused)) = {"ref", "fast/scalar", "fast/avx2",
                                                 "fast/best", "fast/best+pool"};

static inline const duet_sample_fast_isa *avx2_isa(void)
{
#ifdef __x86_64__
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return &duet_sample_avx2_isa;
#endif
    return &duet_sample_scalar_isa;
}

typedef struct batch {
    int n_rows, vocab, n_edits;
    float *logits;            /* [n_rows][vocab] */
    duet_sample_row *rows;    /* [n_rows] */
    duet_sample_edit *edits;  /* [n_edits] */
    float *work;              /* [n_rows][vocab] */
    duet_sample_result *res;  /* [n_rows] */
} batch;

static inline batch batch_new(int n_rows, int vocab, int n_edits)
{
    batch b = {.n_rows = n_rows, .vocab = vocab, .n_edits = n_edits};
    b.logits = calloc((size_t)n_rows * (size_t)vocab, sizeof *b.logits);
    b.rows = calloc((size_t)n_rows, sizeof *b.rows);
    b.edits = calloc((size_t)(n_edits ? n_edits : 1), sizeof *b.edits);
    b.work = calloc((size_t)n_rows * (size_t)vocab, sizeof *b.work);
    b.res = calloc((size_t)n_rows, sizeof *b.res);
    assert_non_null(b.logits);
    assert_non_null(b.res);
    return b;
}

static inline void batch_free(batch *b)
{
    free(b->logits);
    free(b->rows);
    free(b->edits);
    free(b->work);
    free(b->res);
}

static inline duet_threadpool *test_pool(void)
{
    static duet_threadpool *pool;
    if (!pool)
        assert_int_equal(duet_threadpool_create(3, &pool), DUET_OK);
    return pool;
}

static inline void run_kernel(kernel k, batch *b)
{
    /* Poison: every output must be written. */
    memset(b->res, 0xa5, sizeof *b->res * (size_t)b->n_rows);
    for (size_t i = 0; i < (size_t)b->n_rows * (size_t)b->vocab; i++)
        b->work[i] = NAN;
    cpu_sample a = {b->logits, b->rows,  b->n_edits ? b->edits : NULL, b->work, b->res,
                    b->n_rows, b->vocab, b->n_edits};
    switch (k) {
    case K_REF: duet_cpu_sample_ref(&a); break;
    case K_FAST_SCALAR: duet_cpu_sample_fast_isa(NULL, &duet_sample_scalar_isa, &a); break;
    case K_FAST_AVX2: duet_cpu_sample_fast_isa(NULL, avx2_isa(), &a); break;
    case K_FAST_BEST: duet_cpu_sample_fast_isa(NULL, duet_sample_best_isa(), &a); break;
    default: duet_cpu_sample_fast(test_pool(), &a); break;
    }
}

/* A row from request parameters, the way the engine makes it. */
static inline duet_sample_row make_row(const duet_request_params *p, int vocab, uint64_t seed,
                                uint32_t position)
{
    duet_sample_row row;
    duet_sample_row_init(&row, p, vocab, seed, position, 0, -1, -1);
    return row;
}

static inline uint32_t rng_u32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 29);
}


/* ---- random batches (shared by the CPU and Vulkan sample tests) ---------------- */

static inline float rng_f01(void) { return (float)(rng_u32() >> 8) * (1.0f / 16777216.0f); }

enum { N_STYLES = 8 };

/* Logits of a few shapes: spread, ties, flat, -inf, long tail, all equal,
 * NaN, all -inf. */
static inline void fill_logits(float *x, int vocab, int style)
{
    for (int i = 0; i < vocab; i++) {
        switch (style) {
        case 0: x[i] = (rng_f01() - 0.5f) * 20.0f; break;
        case 1: x[i] = (float)(rng_u32() % 5) * 0.5f; break;
        case 2: x[i] = (rng_f01() - 0.5f) * 2.0f; break;
        case 3: x[i] = rng_u32() % 4 == 0 ? -INFINITY : rng_f01() * 8.0f; break;
        case 4: x[i] = -30.0f * rng_f01() * rng_f01(); break;
        case 5: x[i] = 3.0f; break;
        case 6: x[i] = rng_u32() % 5 == 0 ? NAN : (rng_f01() - 0.5f) * 12.0f; break;
        default: x[i] = -INFINITY; break;
        }
    }
}

static inline duet_sample_row random_row(int vocab, int n_edits_total, int *edit_cursor)
{
    duet_request_params p = {0};
    int kind = (int)(rng_u32() % 8);
    p.temperature = kind == 0 ? 0.0f : 0.2f + 1.6f * rng_f01();
    if (rng_u32() % 2)
        p.top_p = rng_u32() % 4 == 0 ? 1e-7f : rng_u32() % 4 == 0 ? 1.0f : 0.05f + 0.95f * rng_f01();
    if (rng_u32() % 2) {
        int edge[] = {1, 2, vocab - 1, vocab, vocab + 5, 0, -1};
        p.top_k = rng_u32() % 2 ? edge[rng_u32() % 7] : 1 + (int)(rng_u32() % (unsigned)vocab);
    }
    if (rng_u32() % 3 == 0)
        p.min_p = rng_u32() % 4 == 0 ? 1.0f : rng_f01() * 0.5f;
    if (rng_u32() % 2) {
        p.repetition_penalty = 0.5f + 1.5f * rng_f01();
        p.presence_penalty = (rng_f01() - 0.5f) * 2.0f;
        p.frequency_penalty = (rng_f01() - 0.5f) * 2.0f;
    }
    duet_sample_row row;
    int forced = rng_u32() % 8 == 0 ? (int)(rng_u32() % (unsigned)(vocab + 2)) : -1;
    int lp[] = {-1, 0, 5, 20, 25};
    int n_lp = rng_u32() % 2 ? lp[rng_u32() % 5] : (int)(rng_u32() % 21);
    duet_sample_row_init(&row, &p, vocab, ((uint64_t)rng_u32() << 32) | rng_u32(), rng_u32(), rng_u32() % 4,
                         forced, n_lp);
    if (rng_u32() % 8 == 0)
        row.top_k = -(int)(rng_u32() % 3); /* below 0 acts as 0 */
    int n = (int)(rng_u32() % 6);
    if (*edit_cursor + n > n_edits_total)
        n = n_edits_total - *edit_cursor;
    row.edit_begin = *edit_cursor;
    row.edit_end = *edit_cursor + n;
    *edit_cursor += n;
    if (rng_u32() % 16 == 0)
        row.edit_begin = row.edit_end + 1; /* begin > end: no edits */
    else if (rng_u32() % 16 == 0)
        row.edit_end = n_edits_total + 3; /* past the end: no edits */
    else if (rng_u32() % 16 == 0)
        row.edit_begin = -1; /* negative: no edits */
    return row;
}

static inline void random_edits(duet_sample_edit *e, int n, int vocab)
{
    for (int i = 0; i < n; i++) {
        e[i].token = rng_u32() % 20 == 0   ? vocab + (int)(rng_u32() % 3)
                     : rng_u32() % 40 == 0 ? -1
                                       : (int)(rng_u32() % (unsigned)vocab);
        e[i].flags = (rng_u32() % 8 == 0 ? DUET_SAMPLE_EDIT_MASK : 0) |
                     (rng_u32() % 2 ? DUET_SAMPLE_EDIT_PROMPT : 0);
        e[i].count = (int)(rng_u32() % 5) - 1; /* -1 acts as 0 */
        e[i].bias = rng_u32() % 3 == 0 ? (rng_f01() - 0.5f) * 10.0f : 0.0f;
    }
}


/* How many of tokens 0..vocab-1 draw the largest uniform (word >> 9) at
 * (position, sample 0) under seed key: >= 2 means the race has a tie the
 * id rule must break when all d are equal. */
static inline int top_uniform_ties(const uint32_t key[2], uint32_t pos, int vocab)
{
    uint32_t top = 0;
    int n_top = 0;
    for (uint32_t blk = 0; blk < (uint32_t)vocab / 4; blk++) {
        uint32_t ctr[4] = {blk, pos, 0, 0}, r[4];
        duet_sm_philox4x32(ctr, key, r);
        for (int j = 0; j < 4; j++) {
            uint32_t u = r[j] >> 9;
            if (u > top)
                top = u, n_top = 1;
            else if (u == top)
                n_top++;
        }
    }
    return n_top;
}

#endif
