/*
 * ops_ref.c — the reference kernels: plain C, one thread, double
 * accumulation, written to be read. Every faster path (the AVX2 kernels,
 * the GPU backends) is checked against these.
 */
#include <math.h>
#include <string.h>

#include "cpu_ops.h"
#include "quant.h"

void duet_cpu_fill_nan(float *x, int64_t lo, int64_t hi, int64_t width)
{
    for (int64_t i = lo * width; i < hi * width; i++)
        x[i] = NAN;
}

void duet_cpu_embed_ref(const cpu_embed *a)
{
    size_t row_bytes = duet_dtype_row_bytes(a->table_type, a->dim);
    for (int t = 0; t < a->n_tokens; t++) {
        int32_t id = a->ids[t];
        if (id < 0 && a->prev && -(int64_t)id - 1 < a->n_prev)
            id = a->prev[-(int64_t)id - 1];
        float *y = a->out + (int64_t)t * a->dim;
        if (id < 0 || id >= a->vocab) {
            duet_cpu_fill_nan(y, 0, 1, a->dim);
            continue;
        }
        duet_dequant_row(a->table_type, (const char *)a->table + (size_t)id * row_bytes, y,
                         a->dim);
    }
}

void duet_cpu_rms_norm_ref(const cpu_rms_norm *a)
{
    for (int r = 0; r < a->n_rows; r++) {
        float *x = a->x + (int64_t)r * a->dim;
        float *y = a->out + (int64_t)r * a->dim;
        /* The fused residual add: the add op's float sum. The whole row is
         * read before y is written, so y may be the residual row. */
        if (a->residual)
            for (int i = 0; i < a->dim; i++)
                x[i] += a->residual[(int64_t)r * a->dim + i];
        double ss = 0.0;
        for (int i = 0; i < a->dim; i++)
            ss += (double)x[i] * x[i];
        double scale = 1.0 / sqrt(ss / a->dim + a->eps);
        for (int i = 0; i < a->dim; i++)
            y[i] = (float)(x[i] * scale * a->weight[i]);
    }
}

/* Pair i of a head at position pos, (x0, x1), rotated into (*y0, *y1):
 * the one rotation of the reference kernels (rope and kv_write's fused
 * rotation both call it). */
static void rope_pair_ref(const cpu_rope_spec *r, int pos, int i, double x0, double x1,
                          float *y0, float *y1)
{
    double theta = pos * pow(r->theta_base, -2.0 * i / r->rot_dim);
    if (r->freq_factors)
        theta /= r->freq_factors[i];
    double c = cos(theta), s = sin(theta);
    *y0 = (float)(x0 * c - x1 * s);
    *y1 = (float)(x0 * s + x1 * c);
}

/* The dims of pair i: (2i, 2i+1), or (i, i + rot_dim/2) for neox. */
static void rope_pair_dims(const cpu_rope_spec *r, int i, int *i0, int *i1)
{
    int half = r->rot_dim / 2;
    *i0 = r->neox ? i : 2 * i;
    *i1 = r->neox ? i + half : 2 * i + 1;
}

/* Rotate the leading rot_dim dims of one head in place. */
static void rope_head_ref(float *x, const cpu_rope_spec *r, int pos)
{
    for (int i = 0; i < r->rot_dim / 2; i++) {
        int i0, i1;
        rope_pair_dims(r, i, &i0, &i1);
        rope_pair_ref(r, pos, i, x[i0], x[i1], &x[i0], &x[i1]);
    }
}

void duet_cpu_rope_ref(const cpu_rope *a)
{
    for (int t = 0; t < a->n_tokens; t++) {
        int pos = a->r.positions[t];
        for (int h = 0; h < a->n_heads; h++)
            rope_head_ref(a->q + ((int64_t)t * a->n_heads + h) * a->head_dim, &a->r, pos);
        for (int h = 0; a->k && h < a->n_kv_heads; h++)
            rope_head_ref(a->k + ((int64_t)t * a->n_kv_heads + h) * a->head_dim, &a->r, pos);
    }
}

static void store_elem(duet_dtype t, void *cache, int64_t i, float x)
{
    if (t == DUET_F16)
        ((uint16_t *)cache)[i] = duet_f32_to_f16(x);
    else
        ((float *)cache)[i] = x;
}

/* Store the leading rot_dim dims of one k head, rotated for position pos,
 * at element at of the k cache. */
static void store_k_head_rotated(const cpu_kv_write *a, int pos, const float *k, int64_t at)
{
    const cpu_rope_spec *r = &a->rope;
    for (int i = 0; i < r->rot_dim / 2; i++) {
        int i0, i1;
        float y0, y1;
        rope_pair_dims(r, i, &i0, &i1);
        rope_pair_ref(r, pos, i, k[i0], k[i1], &y0, &y1);
        store_elem(a->cache_type, a->k_cache, at + i0, y0);
        store_elem(a->cache_type, a->k_cache, at + i1, y1);
    }
}

void duet_cpu_kv_write_ref(const cpu_kv_write *a)
{
    int64_t row = (int64_t)a->n_kv_heads * a->head_dim;
    int64_t n_slots = (int64_t)a->num_blocks * a->block_size;
    for (int t = 0; t < a->n_tokens; t++) {
        int64_t slot = a->slot_mapping[t];
        if (slot < 0 || slot >= n_slots)
            continue;
        const float *k = a->k + t * row, *v = a->v + t * row;
        if (a->cache_type == DUET_F16) {
            uint16_t *kc = (uint16_t *)a->k_cache + slot * row;
            uint16_t *vc = (uint16_t *)a->v_cache + slot * row;
            for (int64_t i = 0; i < row; i++) {
                kc[i] = duet_f32_to_f16(k[i]);
                vc[i] = duet_f32_to_f16(v[i]);
            }
        } else {
            memcpy((float *)a->k_cache + slot * row, k, (size_t)row * sizeof(float));
            memcpy((float *)a->v_cache + slot * row, v, (size_t)row * sizeof(float));
        }
        /* The rotated dims of k overwrite their plain copy. */
        for (int h = 0; a->rope.positions && h < a->n_kv_heads; h++)
            store_k_head_rotated(a, a->rope.positions[t], k + (int64_t)h * a->head_dim,
                                 slot * row + (int64_t)h * a->head_dim);
    }
}

int duet_cpu_attention_qsl_ok(const cpu_attention *a)
{
    const int32_t *qsl = a->query_start_loc;
    if (qsl[0] < 0 || qsl[a->n_seqs] > a->n_tokens)
        return 0;
    for (int s = 0; s < a->n_seqs; s++)
        if (qsl[s + 1] < qsl[s])
            return 0;
    return 1;
}

int duet_cpu_attention_seq_ok(const cpu_attention *a, int s)
{
    int q_len = a->query_start_loc[s + 1] - a->query_start_loc[s];
    int64_t seq_len = a->seq_lens[s];
    int64_t blocks = (seq_len + a->block_size - 1) / a->block_size;
    return q_len >= 0 && seq_len >= q_len && blocks <= a->max_blocks_per_seq &&
           (a->max_seq_len == 0 || seq_len <= a->max_seq_len);
}

/* Element d of cache row (pos, kv_head) of sequence s, or NAN (with *bad
 * set) when the block table points outside the cache. */
static double cache_at(const cpu_attention *a, const void *cache, const int32_t *table,
                       int pos, int kvh, int d, int *bad)
{
    int32_t block = table[pos / a->block_size];
    if (block < 0 || block >= a->num_blocks) {
        *bad = 1;
        return NAN;
    }
    int64_t slot = (int64_t)block * a->block_size + pos % a->block_size;
    int64_t i = (slot * a->n_kv_heads + kvh) * a->head_dim + d;
    if (a->cache_type == DUET_F16)
        return duet_f16_to_f32(((const uint16_t *)cache)[i]);
    return ((const float *)cache)[i];
}

static double score_ref(const cpu_attention *a, const float *q, const int32_t *table, int pos,
                        int kvh, int *bad)
{
    double dot = 0.0;
    for (int d = 0; d < a->head_dim; d++)
        dot += q[d] * cache_at(a, a->k_cache, table, pos, kvh, d, bad);
    return dot * a->scale;
}

/* Output dims are produced in chunks so the double accumulator can live on
 * the stack whatever head_dim is. */
enum { REF_DIM_CHUNK = 256 };

/* One (query token, head): two-pass softmax over positions 0..pos. */
static void attend_one_ref(const cpu_attention *a, const float *q, const int32_t *table,
                           int pos, int kvh, float *out)
{
    int bad = 0;
    double max = -INFINITY;
    for (int j = 0; j <= pos; j++) {
        double sc = score_ref(a, q, table, j, kvh, &bad);
        if (sc > max)
            max = sc;
    }
    for (int d0 = 0; d0 < a->head_dim && !bad; d0 += REF_DIM_CHUNK) {
        int dn = a->head_dim - d0 < REF_DIM_CHUNK ? a->head_dim - d0 : REF_DIM_CHUNK;
        double acc[REF_DIM_CHUNK] = {0}, sum = 0.0;
        for (int j = 0; j <= pos; j++) {
            double p = exp(score_ref(a, q, table, j, kvh, &bad) - max);
            sum += p;
            for (int d = 0; d < dn; d++)
                acc[d] += p * cache_at(a, a->v_cache, table, j, kvh, d0 + d, &bad);
        }
        for (int d = 0; d < dn; d++)
            out[d0 + d] = (float)(acc[d] / sum);
    }
    if (bad)
        duet_cpu_fill_nan(out, 0, 1, a->head_dim);
}

void duet_cpu_attention_ref(const cpu_attention *a)
{
    int64_t row = (int64_t)a->n_heads * a->head_dim;
    int group = a->n_heads / a->n_kv_heads;
    duet_cpu_fill_nan(a->out, 0, a->n_tokens, row);
    if (!duet_cpu_attention_qsl_ok(a))
        return;
    for (int s = 0; s < a->n_seqs; s++) {
        if (!duet_cpu_attention_seq_ok(a, s))
            continue;
        int q0 = a->query_start_loc[s], q_len = a->query_start_loc[s + 1] - q0;
        const int32_t *table = a->block_tables + (int64_t)s * a->max_blocks_per_seq;
        for (int i = 0; i < q_len; i++) {
            int pos = a->seq_lens[s] - q_len + i;
            int64_t t = q0 + i;
            for (int h = 0; h < a->n_heads; h++)
                attend_one_ref(a, a->q + t * row + (int64_t)h * a->head_dim, table, pos,
                               h / group, a->out + t * row + (int64_t)h * a->head_dim);
        }
    }
}

void duet_cpu_swiglu_ref(const cpu_swiglu *a)
{
    int64_t n = (int64_t)a->n_rows * a->dim;
    for (int64_t i = 0; i < n; i++) {
        double g = a->gate[i];
        a->out[i] = (float)(g / (1.0 + exp(-g)) * a->up[i]);
    }
}

void duet_cpu_add_ref(const cpu_add *a)
{
    for (int64_t i = 0; i < a->n; i++)
        a->a[i] += a->b[i];
}

void duet_cpu_gather_rows_ref(const cpu_gather_rows *a)
{
    for (int r = 0; r < a->n_out; r++) {
        int32_t src = a->rows[r];
        float *y = a->out + (int64_t)r * a->dim;
        if (src < 0 || src >= a->n_in)
            duet_cpu_fill_nan(y, 0, 1, a->dim);
        else
            memcpy(y, a->x + (int64_t)src * a->dim, (size_t)a->dim * sizeof(float));
    }
}
