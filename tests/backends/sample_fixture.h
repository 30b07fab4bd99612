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

#endif
