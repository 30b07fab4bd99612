/*
 * ops_avx2.c — the fast kernels (AVX2 + FMA + F16C; compiled with those
 * flags and only called after a run-time check). Attention is in
 * attention_avx2.c.
 *
 * Batch invariance: every kernel splits independent rows across threads
 * and computes a row with the same instruction sequence wherever it lands
 * (no vector body plus scalar tail whose boundary moves with the split).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "cpu_ops.h"
#include "cpu_simd.h"
#include "quant.h"

/* Ops smaller than this many elements run on the calling thread: a
 * dispatch (a few microseconds) would cost more than the split saves. The
 * result is the same bits either way. */
enum { PARALLEL_MIN_ELEMS = 1 << 14 };

static void run_split(duet_threadpool *pool, duet_parallel_fn fn, const void *arg,
                      int64_t elems)
{
    if (elems < PARALLEL_MIN_ELEMS)
        fn((void *)arg, 0, 1);
    else
        duet_threadpool_run(pool, fn, (void *)arg);
}

/* ---- embed ----------------------------------------------------------------- */

static void embed_job(void *arg, int ith, int nth)
{
    const cpu_embed *a = arg;
    int64_t lo, hi;
    duet_split_rows(a->n_tokens, ith, nth, 1, &lo, &hi);
    cpu_embed part = *a;
    part.ids = a->ids + lo;
    part.out = a->out + lo * a->dim;
    part.n_tokens = (int)(hi - lo);
    /* Dequantization is one shared routine, so the reference is already
     * as fast as it gets; only the split is added. */
    duet_cpu_embed_ref(&part);
}

void duet_cpu_embed_fast(duet_threadpool *pool, const cpu_embed *a)
{
    run_split(pool, embed_job, a, (int64_t)a->n_tokens * a->dim);
}

/* ---- rms_norm -------------------------------------------------------------- */

static void rms_norm_row(const float *x, const float *w, float *y, int dim, float eps)
{
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= dim; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        s0 = _mm256_fmadd_pd(lo, lo, s0);
        s1 = _mm256_fmadd_pd(hi, hi, s1);
    }
    double ss = duet_hsum_pd(_mm256_add_pd(s0, s1));
    for (; i < dim; i++)
        ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / dim + eps));
    __m256 vs = _mm256_set1_ps(scale);
    for (i = 0; i + 8 <= dim; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vs);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(v, _mm256_loadu_ps(w + i)));
    }
    for (; i < dim; i++)
        y[i] = x[i] * scale * w[i];
}

static void add_range(float *a, const float *b, int64_t n);

static void rms_norm_job(void *arg, int ith, int nth)
{
    const cpu_rms_norm *a = arg;
    int64_t lo, hi;
    duet_split_rows(a->n_rows, ith, nth, 1, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        /* The fused residual add is the add op's own loop, then the norm
         * is the plain one on the updated row (still in L1): the bits of
         * add + rms_norm by construction. The residual row is read before
         * out is written, so out may be the residual. */
        if (a->residual)
            add_range(a->x + r * a->dim, a->residual + r * a->dim, a->dim);
        rms_norm_row(a->x + r * a->dim, a->weight, a->out + r * a->dim, a->dim, a->eps);
    }
}

void duet_cpu_rms_norm_fast(duet_threadpool *pool, const cpu_rms_norm *a)
{
    run_split(pool, rms_norm_job, a, (int64_t)a->n_rows * a->dim);
}

/* ---- rope ------------------------------------------------------------------ */

/* The angles are computed exactly as the reference does (double), but once
 * per token instead of once per head; the rotation is the reference's
 * double arithmetic, so the result is bitwise the reference's. rope and
 * kv_write's fused rotation share these routines. */
enum { ROPE_MAX_PAIRS = 512 };

typedef struct rope_table {
    double inv_freq[ROPE_MAX_PAIRS], c[ROPE_MAX_PAIRS], s[ROPE_MAX_PAIRS];
} rope_table;

static void rope_table_init(rope_table *tb, const cpu_rope_spec *r)
{
    for (int i = 0; i < r->rot_dim / 2; i++)
        tb->inv_freq[i] = pow(r->theta_base, -2.0 * i / r->rot_dim);
}

/* cos and sin of every pair's angle at position pos. */
static void rope_table_at(rope_table *tb, const cpu_rope_spec *r, int pos)
{
    for (int i = 0; i < r->rot_dim / 2; i++) {
        double theta = pos * tb->inv_freq[i];
        if (r->freq_factors)
            theta /= r->freq_factors[i];
        tb->c[i] = cos(theta);
        tb->s[i] = sin(theta);
    }
}

/* The leading rot_dim dims of head x, rotated, into y (may equal x). */
static void rope_rotate(const float *x, float *y, const rope_table *tb, const cpu_rope_spec *r)
{
    int half = r->rot_dim / 2;
    for (int i = 0; i < half; i++) {
        int i0 = r->neox ? i : 2 * i;
        int i1 = r->neox ? i + half : 2 * i + 1;
        double x0 = x[i0], x1 = x[i1];
        y[i0] = (float)(x0 * tb->c[i] - x1 * tb->s[i]);
        y[i1] = (float)(x0 * tb->s[i] + x1 * tb->c[i]);
    }
}

static void rope_job(void *arg, int ith, int nth)
{
    const cpu_rope *a = arg;
    rope_table tb;
    rope_table_init(&tb, &a->r);
    int64_t lo, hi;
    duet_split_rows(a->n_tokens, ith, nth, 1, &lo, &hi);
    for (int64_t t = lo; t < hi; t++) {
        rope_table_at(&tb, &a->r, a->r.positions[t]);
        for (int h = 0; h < a->n_heads; h++) {
            float *x = a->q + (t * a->n_heads + h) * a->head_dim;
            rope_rotate(x, x, &tb, &a->r);
        }
        for (int h = 0; a->k && h < a->n_kv_heads; h++) {
            float *x = a->k + (t * a->n_kv_heads + h) * a->head_dim;
            rope_rotate(x, x, &tb, &a->r);
        }
    }
}

void duet_cpu_rope_fast(duet_threadpool *pool, const cpu_rope *a)
{
    if (a->r.rot_dim / 2 > ROPE_MAX_PAIRS) {
        duet_cpu_rope_ref(a);
        return;
    }
    int kv_heads = a->k ? a->n_kv_heads : 0;
    run_split(pool, rope_job, a, (int64_t)a->n_tokens * (a->n_heads + kv_heads) * a->head_dim);
}

/* ---- kv_write -------------------------------------------------------------- */

static void f32_to_f16_row(const float *x, uint16_t *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(y + i), h);
    }
    for (; i < n; i++) /* both round to nearest even: same bits as the vector path */
        y[i] = duet_f32_to_f16(x[i]);
}

/* One k row (n_kv_heads heads) into the cache at dst, each head's leading
 * rot_dim dims rotated by rope_rotate: the bits rope + a plain store give. */
static void store_k_row_rotated(const cpu_kv_write *a, const rope_table *tb, const float *k,
                                void *dst)
{
    const cpu_rope_spec *r = &a->rope;
    float rot[2 * ROPE_MAX_PAIRS];
    for (int h = 0; h < a->n_kv_heads; h++) {
        const float *x = k + (int64_t)h * a->head_dim;
        int64_t at = (int64_t)h * a->head_dim;
        if (a->cache_type == DUET_F16) {
            uint16_t *y = (uint16_t *)dst + at;
            rope_rotate(x, rot, tb, r);
            f32_to_f16_row(rot, y, r->rot_dim);
            f32_to_f16_row(x + r->rot_dim, y + r->rot_dim, a->head_dim - r->rot_dim);
        } else {
            float *y = (float *)dst + at;
            rope_rotate(x, y, tb, r);
            memcpy(y + r->rot_dim, x + r->rot_dim, (size_t)(a->head_dim - r->rot_dim) * 4);
        }
    }
}

static void kv_write_job(void *arg, int ith, int nth)
{
    const cpu_kv_write *a = arg;
    int64_t row = (int64_t)a->n_kv_heads * a->head_dim;
    int64_t n_slots = (int64_t)a->num_blocks * a->block_size;
    int64_t esz = a->cache_type == DUET_F16 ? 2 : 4;
    rope_table tb;
    if (a->rope.positions)
        rope_table_init(&tb, &a->rope);
    int64_t lo, hi;
    duet_split_rows(a->n_tokens, ith, nth, 1, &lo, &hi);
    for (int64_t t = lo; t < hi; t++) {
        int64_t slot = a->slot_mapping[t];
        if (slot < 0 || slot >= n_slots)
            continue;
        char *kc = (char *)a->k_cache + slot * row * esz;
        char *vc = (char *)a->v_cache + slot * row * esz;
        if (a->rope.positions) {
            rope_table_at(&tb, &a->rope, a->rope.positions[t]);
            store_k_row_rotated(a, &tb, a->k + t * row, kc);
        } else if (a->cache_type == DUET_F16) {
            f32_to_f16_row(a->k + t * row, (uint16_t *)kc, row);
        } else {
            memcpy(kc, a->k + t * row, (size_t)row * 4);
        }
        if (a->cache_type == DUET_F16)
            f32_to_f16_row(a->v + t * row, (uint16_t *)vc, row);
        else
            memcpy(vc, a->v + t * row, (size_t)row * 4);
    }
}

void duet_cpu_kv_write_fast(duet_threadpool *pool, const cpu_kv_write *a)
{
    /* rope falls back to the reference here too, so the fused rotation
     * takes the same path as the rope op would. */
    if (a->rope.positions && a->rope.rot_dim / 2 > ROPE_MAX_PAIRS) {
        duet_cpu_kv_write_ref(a);
        return;
    }
    run_split(pool, kv_write_job, a, 2ll * a->n_tokens * a->n_kv_heads * a->head_dim);
}

/* ---- swiglu ---------------------------------------------------------------- */

static inline __m256 silu_mul(__m256 g, __m256 u)
{
    __m256 one = _mm256_set1_ps(1.0f);
    __m256 e = duet_exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u);
}

/* Elementwise, so any split gives the same bits as long as every element
 * goes through the vector code: the tail is padded, not done in scalar. */
static void swiglu_range(const float *g, const float *u, float *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, silu_mul(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i)));
    if (i < n) {
        float gb[8] = {0}, ub[8] = {0}, yb[8];
        memcpy(gb, g + i, (size_t)(n - i) * 4);
        memcpy(ub, u + i, (size_t)(n - i) * 4);
        _mm256_storeu_ps(yb, silu_mul(_mm256_loadu_ps(gb), _mm256_loadu_ps(ub)));
        memcpy(y + i, yb, (size_t)(n - i) * 4);
    }
}

static void swiglu_job(void *arg, int ith, int nth)
{
    const cpu_swiglu *a = arg;
    int64_t lo, hi;
    duet_split_rows((int64_t)a->n_rows * a->dim, ith, nth, 64, &lo, &hi);
    swiglu_range(a->gate + lo, a->up + lo, a->out + lo, hi - lo);
}

void duet_cpu_swiglu_fast(duet_threadpool *pool, const cpu_swiglu *a)
{
    run_split(pool, swiglu_job, a, (int64_t)a->n_rows * a->dim);
}

/* ---- add ------------------------------------------------------------------- */

static void add_range(float *a, const float *b, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(a + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    for (; i < n; i++)
        a[i] += b[i];
}

static void add_job(void *arg, int ith, int nth)
{
    const cpu_add *a = arg;
    int64_t lo, hi;
    duet_split_rows(a->n, ith, nth, 64, &lo, &hi);
    add_range(a->a + lo, a->b + lo, hi - lo);
}

void duet_cpu_add_fast(duet_threadpool *pool, const cpu_add *a)
{
    run_split(pool, add_job, a, a->n);
}

/* ---- gather_rows ----------------------------------------------------------- */

void duet_cpu_gather_rows_fast(duet_threadpool *pool, const cpu_gather_rows *a)
{
    /* A handful of rows before the LM head: a dispatch would cost more
     * than the copy. */
    (void)pool;
    duet_cpu_gather_rows_ref(a);
}
