/*
 * attention_avx2.c — paged, causal, GQA attention with an online softmax.
 *
 * Work is split over (query token, kv head) items; one item computes all
 * query heads that share the kv head, so each K/V row is fetched (and
 * converted from F16) once per group instead of once per head. Threads
 * claim items one at a time from a shared counter (duet_claims), which
 * balances both causal items that grow with position (a prefill) and a
 * thread slowed by other work on its core. A small decode, with fewer
 * items than threads can share, splits further into one item per query
 * head.
 *
 * Batch invariance: an item's result depends only on its query row and
 * its sequence's cache. Keys are taken in chunks of ATT_CHUNK positions
 * aligned to position 0, and every reduction (dot product, chunk max, sum
 * of weights, weighted sum of V) runs in a fixed order, so neither the
 * other sequences in the batch nor the thread count change a single bit.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "cpu_ops.h"
#include "cpu_simd.h"

/* Limits of this kernel's stack scratch; larger shapes use the reference. */
enum { ATT_CHUNK = 32, ATT_MAX_DIM = 256, ATT_MAX_GROUP = 16, ATT_MAX_HEADS = 64 };

typedef struct att_scratch {
    _Alignas(32) float k[ATT_CHUNK * ATT_MAX_DIM]; /* F16 rows converted */
    _Alignas(32) float v[ATT_CHUNK * ATT_MAX_DIM];
    _Alignas(32) float acc[ATT_MAX_GROUP * ATT_MAX_DIM]; /* nh * head_dim of them */
    _Alignas(32) float p[ATT_CHUNK];
    float m[ATT_MAX_HEADS], l[ATT_MAX_HEADS];
    const float *kr[ATT_CHUNK], *vr[ATT_CHUNK];
} att_scratch;

static void f16_to_f32_row(const uint16_t *x, float *y, int n)
{
    for (int i = 0; i < n; i += 8) /* n is a multiple of 8 here */
        _mm256_store_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
}

/* Eight dot products q . k_j at once, one FMA chain per key in dimension
 * order, then a transposing reduction: lane j of the result is key j's
 * sum. A key's score is the same bits whichever group it is in. */
static inline __m256 dot8(const float *q, const float *const *kr, int hd)
{
    __m256 a[8];
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++)
        a[k] = _mm256_setzero_ps();
    for (int d = 0; d < hd; d += 8) {
        __m256 qv = _mm256_loadu_ps(q + d);
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++)
            a[k] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr[k] + d), a[k]);
    }
    __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20),
                         _mm256_permute2f128_ps(h0, h1, 0x31));
}

/* s[j] = scale * q . k_j for j < cn; s[cn .. ceil8(cn)) = -inf. */
static void chunk_scores(const float *q, const float *const *kr, int cn, int hd, float scale,
                         float *s)
{
    __m256 vs = _mm256_set1_ps(scale);
    for (int j = 0; j < cn; j += 8) {
        const float *k8[8];
        for (int k = 0; k < 8; k++) /* past the end: repeat the last key */
            k8[k] = kr[j + k < cn ? j + k : cn - 1];
        _mm256_store_ps(s + j, _mm256_mul_ps(dot8(q, k8, hd), vs));
    }
    for (int j = cn; j % 8; j++)
        s[j] = -INFINITY;
}

static inline float hmax_ps(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* acc = acc * corr + sum_j p[j] v_j, eight vectors of acc in registers at
 * a time; every element sees the same operation sequence either way. */
static void chunk_accumulate(float *acc, const float *p, const float *const *vr, int cn,
                             int hd, float corr)
{
    __m256 c = _mm256_set1_ps(corr);
    int d0 = 0;
    for (; d0 + 64 <= hd; d0 += 64) {
        __m256 r[8];
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++)
            r[k] = _mm256_mul_ps(_mm256_load_ps(acc + d0 + 8 * k), c);
        for (int j = 0; j < cn; j++) {
            __m256 pj = _mm256_set1_ps(p[j]);
            const float *v = vr[j] + d0;
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++)
                r[k] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 8 * k), r[k]);
        }
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++)
            _mm256_store_ps(acc + d0 + 8 * k, r[k]);
    }
    for (; d0 < hd; d0 += 8) {
        __m256 r = _mm256_mul_ps(_mm256_load_ps(acc + d0), c);
        for (int j = 0; j < cn; j++)
            r = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(vr[j] + d0), r);
        _mm256_store_ps(acc + d0, r);
    }
}

/* Point kr/vr at the cache rows of positions c0..c0+cn-1 (converting F16
 * into scratch). Returns 0 if the block table leaves the cache. */
static int chunk_rows(const cpu_attention *a, const int32_t *table, int c0, int cn, int kvh,
                      att_scratch *w)
{
    int hd = a->head_dim;
    /* Step through the blocks instead of dividing per key. */
    int bi = c0 / a->block_size, in_block = c0 % a->block_size;
    int32_t block = table[bi];
    for (int j = 0; j < cn; j++, in_block++) {
        if (in_block == a->block_size) {
            block = table[++bi];
            in_block = 0;
        }
        if (block < 0 || block >= a->num_blocks)
            return 0;
        int64_t slot = (int64_t)block * a->block_size + in_block;
        int64_t off = (slot * a->n_kv_heads + kvh) * hd;
        if (a->cache_type == DUET_F16) {
            f16_to_f32_row((const uint16_t *)a->k_cache + off, w->k + j * hd, hd);
            f16_to_f32_row((const uint16_t *)a->v_cache + off, w->v + j * hd, hd);
            w->kr[j] = w->k + j * hd;
            w->vr[j] = w->v + j * hd;
        } else {
            w->kr[j] = (const float *)a->k_cache + off;
            w->vr[j] = (const float *)a->v_cache + off;
        }
    }
    return 1;
}

/* One item: query heads h0 .. h0 + nh - 1 of token row t (at position
 * pos). Either all of them read one kv head (nh <= group), or they are
 * whole groups, whose kv heads are then taken in turn within each chunk
 * of positions, so a chunk's cache rows (all kv heads of a position are
 * adjacent) are read as one contiguous run. A head's result is the same
 * bits either way. */
static void attend_item(const cpu_attention *a, const int32_t *table, int64_t t, int pos,
                        int h0, int nh, att_scratch *w)
{
    int hd = a->head_dim, group = a->n_heads / a->n_kv_heads;
    int64_t first = (t * a->n_heads + h0) * hd;
    const float *q = a->q + first;
    float *out = a->out + first;
    memset(w->acc, 0, sizeof(float) * nh * hd);
    for (int h = 0; h < nh; h++) {
        w->m[h] = -INFINITY;
        w->l[h] = 0.0f;
    }
    for (int c0 = 0; c0 <= pos; c0 += ATT_CHUNK) {
        int cn = pos + 1 - c0 < ATT_CHUNK ? pos + 1 - c0 : ATT_CHUNK;
        int nv = (cn + 7) / 8; /* vectors of scores */
        for (int hg = 0; hg < nh; hg += group) { /* one kv head's heads */
            int kvh = (h0 + hg) / group, hn = nh - hg < group ? nh - hg : group;
            if (!chunk_rows(a, table, c0, cn, kvh, w)) {
                duet_cpu_fill_nan(out, 0, nh, hd);
                return;
            }
            for (int h = hg; h < hg + hn; h++) {
                _Alignas(32) float s[ATT_CHUNK];
                chunk_scores(q + h * hd, w->kr, cn, hd, a->scale, s);
                __m256 vmax = _mm256_load_ps(s);
                for (int v = 1; v < nv; v++)
                    vmax = _mm256_max_ps(vmax, _mm256_load_ps(s + 8 * v));
                float mc = hmax_ps(vmax);
                float mn = mc > w->m[h] ? mc : w->m[h];
                float corr = expf(w->m[h] - mn); /* 0 on the first chunk */
                __m256 vm = _mm256_set1_ps(mn), vsum = _mm256_setzero_ps();
                for (int v = 0; v < nv; v++) {
                    __m256 e = duet_exp256(_mm256_sub_ps(_mm256_load_ps(s + 8 * v), vm));
                    /* exp's clamp leaves a tiny value for -inf: mask the padding */
                    e = _mm256_and_ps(e, _mm256_cmp_ps(_mm256_load_ps(s + 8 * v),
                                                       _mm256_set1_ps(-INFINITY), _CMP_NEQ_UQ));
                    _mm256_store_ps(w->p + 8 * v, e);
                    vsum = _mm256_add_ps(vsum, e);
                }
                w->l[h] = w->l[h] * corr + duet_hsum_ps(vsum);
                w->m[h] = mn;
                chunk_accumulate(w->acc + h * hd, w->p, w->vr, cn, hd, corr);
            }
        }
    }
    for (int h = 0; h < nh; h++) {
        __m256 l = _mm256_set1_ps(w->l[h]);
        for (int d = 0; d < hd; d += 8)
            _mm256_storeu_ps(out + h * hd + d,
                             _mm256_div_ps(_mm256_load_ps(w->acc + h * hd + d), l));
    }
}

typedef struct att_call {
    const cpu_attention *a;
    duet_claims claims;
} att_call;

static void attention_job(void *arg, int ith, int nth)
{
    att_call *call = arg;
    const cpu_attention *a = call->a;
    att_scratch w;
    (void)ith;
    int group = a->n_heads / a->n_kv_heads;
    /* Heads per item: a whole token (every kv head: contiguous cache
     * reads) when there are tokens enough to keep every thread busy and
     * its heads fit the scratch; else one kv head's group; and for a small
     * decode, with fewer such items than threads can share, one query head.
     * A head's result is the same bits either way; grouping only shares
     * and orders the K/V fetches. */
    int per_item = group;
    if (nth > 1 && (int64_t)a->n_tokens * a->n_kv_heads < 4 * nth)
        per_item = 1;
    else if ((nth == 1 || a->n_tokens >= 4 * nth) && a->n_heads <= ATT_MAX_HEADS &&
             a->n_heads * a->head_dim <= ATT_MAX_GROUP * ATT_MAX_DIM)
        per_item = a->n_heads;
    int64_t item = 0, mine = duet_claim(&call->claims);
    for (int s = 0; s < a->n_seqs; s++) {
        int q0 = a->query_start_loc[s], q_len = a->query_start_loc[s + 1] - q0;
        int ok = duet_cpu_attention_seq_ok(a, s);
        const int32_t *table = a->block_tables + (int64_t)s * a->max_blocks_per_seq;
        /* A sequence's last tokens first: their items are the longest, and
         * the short ones then fill the gaps at the end. */
        for (int i = q_len - 1; i >= 0; i--) {
            int64_t t = q0 + i;
            for (int h0 = 0; h0 < a->n_heads; h0 += per_item, item++) {
                if (item != mine)
                    continue;
                if (ok)
                    attend_item(a, table, t, a->seq_lens[s] - q_len + i, h0, per_item, &w);
                else
                    duet_cpu_fill_nan(a->out + (t * a->n_heads + h0) * a->head_dim, 0,
                                      per_item, a->head_dim);
                mine = duet_claim(&call->claims);
            }
        }
    }
}

void duet_cpu_attention_fast(duet_threadpool *pool, const cpu_attention *a)
{
    int group = a->n_heads / a->n_kv_heads;
    if (a->head_dim % 8 || a->head_dim > ATT_MAX_DIM || group > ATT_MAX_GROUP) {
        duet_cpu_attention_ref(a);
        return;
    }
    int64_t row = (int64_t)a->n_heads * a->head_dim;
    if (!duet_cpu_attention_qsl_ok(a)) {
        duet_cpu_fill_nan(a->out, 0, a->n_tokens, row);
        return;
    }
    /* Rows that belong to no sequence (padding) are not attention's to
     * compute; NaN makes a caller that reads them anyway notice. */
    duet_cpu_fill_nan(a->out, 0, a->query_start_loc[0], row);
    duet_cpu_fill_nan(a->out, a->query_start_loc[a->n_seqs], a->n_tokens, row);
    att_call call = {.a = a};
    duet_claims_init(&call.claims);
    duet_threadpool_run(pool, attention_job, &call);
}
