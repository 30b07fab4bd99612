/*
 * conform_ops.c — the cases of `duet conform`: for each op of the device
 * interface, random inputs over a fixed set of shapes and types, and how
 * the op is recorded. conform.c runs each case on both backends.
 *
 * Inputs come from one xorshift generator seeded by --seed, so a run is
 * reproducible. Quantized weights are random valid blocks: random bytes
 * with the block scales set to small halves so values stay near 1.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conform.h"
#include "dtype.h"
#include "error.h"
#include "sampler.h"

typedef struct rng_state { uint64_t s; } rng_state;

static uint32_t rng_u32(rng_state *g)
{
    g->s ^= g->s << 13;
    g->s ^= g->s >> 7;
    g->s ^= g->s << 17;
    return (uint32_t)(g->s >> 32);
}

/* Uniform in [-1, 1). */
static float rng_f(rng_state *g)
{ return (float)(rng_u32(g) >> 8) / (float)(1 << 24) * 2.0f - 1.0f; }

/* The host arrays of one case; freed together after it ran. */
typedef struct arena { void *p[CONFORM_MAX_BUFS + 4]; int n; } arena;

static void *arena_alloc(arena *a, size_t bytes)
{
    if (a->n == (int)(sizeof a->p / sizeof a->p[0]))
        return NULL;
    void *p = calloc(1, bytes ? bytes : 1);
    if (p)
        a->p[a->n++] = p;
    return p;
}

static void arena_free(arena *a)
{
    for (int i = 0; i < a->n; i++)
        free(a->p[i]);
    a->n = 0;
}

static float *rand_f32(arena *a, rng_state *g, size_t n, float scale)
{
    float *x = arena_alloc(a, n * sizeof *x);
    for (size_t i = 0; x && i < n; i++)
        x[i] = rng_f(g) * scale;
    return x;
}

static void put_half(uint8_t *p, float v)
{
    uint16_t h = duet_f32_to_f16(v);
    memcpy(p, &h, 2);
}

/* n_rows rows of k elements of type t (k a whole number of blocks). */
static void *rand_weights(arena *a, rng_state *g, duet_dtype t, int n_rows, int k)
{
    size_t row = duet_dtype_row_bytes(t, k), bytes = row * (size_t)n_rows;
    uint8_t *w = arena_alloc(a, bytes);
    if (!w)
        return NULL;
    const duet_dtype_info *info = duet_dtype_get(t);
    int64_t n_elem = (int64_t)n_rows * k;
    if (t == DUET_F32 || t == DUET_F16 || t == DUET_BF16) {
        for (int64_t i = 0; i < n_elem; i++) {
            float v = rng_f(g);
            if (t == DUET_F32) {
                memcpy(w + 4 * i, &v, 4);
            } else {
                uint16_t h = t == DUET_F16 ? duet_f32_to_f16(v) : duet_f32_to_bf16(v);
                memcpy(w + 2 * i, &h, 2);
            }
        }
        return w;
    }
    for (size_t i = 0; i < bytes; i++)
        w[i] = (uint8_t)rng_u32(g);
    /* Scales chosen so that |x| is around 1 whatever the quants are. */
    for (int64_t b = 0; b < n_elem / info->block_elems; b++) {
        uint8_t *blk = w + b * info->block_bytes;
        float r = 0.5f + 0.5f * (rng_f(g) + 1.0f);
        switch (t) {
        case DUET_Q4_0: put_half(blk, 0.12f * r); break;
        case DUET_Q8_0: put_half(blk, 0.008f * r); break;
        case DUET_Q4_1: put_half(blk, 0.1f * r); put_half(blk + 2, -0.8f * r); break;
        case DUET_Q4_K:
        case DUET_Q5_K: put_half(blk, 0.002f * r); put_half(blk + 2, 0.001f * r); break;
        case DUET_Q6_K: put_half(blk + 208, 0.0004f * r); break;
        default: break;
        }
    }
    return w;
}

static const duet_dtype weight_types[] = {DUET_F32,  DUET_F16,  DUET_BF16, DUET_Q8_0, DUET_Q4_0,
                                          DUET_Q4_1, DUET_Q4_K, DUET_Q5_K, DUET_Q6_K};
enum { N_WEIGHT_TYPES = sizeof weight_types / sizeof weight_types[0] };

static conform_buf buf_in(const void *host, size_t bytes)
{ return (conform_buf){host, bytes, CONFORM_IN, CONFORM_CMP_F32}; }
static conform_buf buf_out(size_t bytes, conform_cmp cmp)
{ return (conform_buf){NULL, bytes, CONFORM_OUT, cmp}; }
static duet_addr at(duet_buffer *b) { return (duet_addr){b, 0}; }

/* Set *rc and return 1 when ok is 0 (a host allocation failed). */
static int alloc_failed(duet_status *rc, int ok)
{
    if (!ok)
        *rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "conform: out of host memory");
    return !ok;
}

/* ---- embed ----------------------------------------------------------------- */
static duet_status rec_embed(duet_device *d, duet_stream *s, duet_buffer *const *b,
                             const void *p)
{
    duet_embed_args a = *(const duet_embed_args *)p;
    a.ids = at(b[0]);
    a.table = at(b[1]);
    a.out = at(b[2]);
    return duet_dev_embed(d, s, &a);
}

static duet_status cases_embed(conform_run *r, rng_state *g)
{
    duet_status rc = DUET_OK;
    arena ar = {0};
    for (int t = 0; t < N_WEIGHT_TYPES && rc == DUET_OK; t++) {
        duet_embed_args a = {.table_type = weight_types[t], .n_tokens = 7, .vocab = 50,
                             .dim = 512};
        int32_t *ids = arena_alloc(&ar, sizeof(int32_t) * a.n_tokens);
        void *table = rand_weights(&ar, g, a.table_type, a.vocab, a.dim);
        if (alloc_failed(&rc, ids && table))
            goto out;
        for (int i = 0; i < a.n_tokens; i++)
            ids[i] = (int32_t)(rng_u32(g) % (uint32_t)a.vocab);
        conform_case c = {.op = "embed", .type = duet_dtype_get(a.table_type)->name,
                          .threshold = 1e-7, .record = rec_embed, .params = &a, .n_bufs = 3};
        snprintf(c.shape, sizeof c.shape, "tokens=%d vocab=%d dim=%d", a.n_tokens, a.vocab,
                 a.dim);
        c.bufs[0] = buf_in(ids, sizeof(int32_t) * a.n_tokens);
        c.bufs[1] = buf_in(table, duet_dtype_row_bytes(a.table_type, a.dim) * a.vocab);
        c.bufs[2] = buf_out(sizeof(float) * a.n_tokens * a.dim, CONFORM_CMP_F32);
        rc = conform_case_run(r, &c);
        arena_free(&ar);
    }
out:
    arena_free(&ar);
    return rc;
}

/* ---- rms_norm, swiglu, add, gather_rows ------------------------------------ */
static duet_status rec_rms_norm(duet_device *d, duet_stream *s, duet_buffer *const *b,
                                const void *p)
{
    duet_rms_norm_args a = *(const duet_rms_norm_args *)p;
    a.x = at(b[0]);
    a.weight = at(b[1]);
    a.out = at(b[2]);
    return duet_dev_rms_norm(d, s, &a);
}

/* The model's fused form: x += residual, then out = norm(x) into the
 * residual's buffer. */
static duet_status rec_rms_norm_res(duet_device *d, duet_stream *s, duet_buffer *const *b,
                                    const void *p)
{
    duet_rms_norm_args a = *(const duet_rms_norm_args *)p;
    a.x = at(b[0]);
    a.weight = at(b[1]);
    a.out = at(b[2]);
    a.residual = at(b[2]);
    return duet_dev_rms_norm(d, s, &a);
}

static duet_status rec_swiglu(duet_device *d, duet_stream *s, duet_buffer *const *b,
                              const void *p)
{
    duet_swiglu_args a = *(const duet_swiglu_args *)p;
    a.gate = at(b[0]);
    a.up = at(b[1]);
    a.out = at(b[2]);
    return duet_dev_swiglu(d, s, &a);
}

static duet_status rec_add(duet_device *d, duet_stream *s, duet_buffer *const *b,
                           const void *p)
{
    duet_add_args a = *(const duet_add_args *)p;
    a.a = at(b[0]);
    a.b = at(b[1]);
    return duet_dev_add(d, s, &a);
}

static duet_status rec_gather(duet_device *d, duet_stream *s, duet_buffer *const *b,
                              const void *p)
{
    duet_gather_rows_args a = *(const duet_gather_rows_args *)p;
    a.x = at(b[0]);
    a.rows = at(b[1]);
    a.out = at(b[2]);
    return duet_dev_gather_rows(d, s, &a);
}

static duet_status cases_elementwise(conform_run *r, rng_state *g)
{
    static const int rows[] = {1, 7}, dims[] = {576, 2048};
    duet_status rc = DUET_OK;
    arena ar = {0};
    for (int i = 0; i < 2 && rc == DUET_OK; i++) {
        for (int j = 0; j < 2 && rc == DUET_OK; j++) {
            int n = rows[i], dim = dims[j];
            size_t plane = sizeof(float) * n * dim;
            float *x = rand_f32(&ar, g, (size_t)n * dim, 3.0f);
            float *y = rand_f32(&ar, g, (size_t)n * dim, 3.0f);
            float *w = rand_f32(&ar, g, dim, 1.0f);
            if (alloc_failed(&rc, x && y && w))
                goto out;
            duet_rms_norm_args an = {.n_rows = n, .dim = dim, .eps = 1e-5f};
            conform_case c = {.op = "rms_norm", .type = "F32", .threshold = 1e-7,
                              .record = rec_rms_norm, .params = &an, .n_bufs = 3};
            snprintf(c.shape, sizeof c.shape, "rows=%d dim=%d", n, dim);
            c.bufs[0] = buf_in(x, plane);
            c.bufs[1] = buf_in(w, sizeof(float) * dim);
            c.bufs[2] = buf_out(plane, CONFORM_CMP_F32);
            rc = conform_case_run(r, &c);

            c.type = "F32+res";
            c.record = rec_rms_norm_res;
            snprintf(c.shape, sizeof c.shape, "rows=%d dim=%d out=residual", n, dim);
            c.bufs[0] = (conform_buf){x, plane, CONFORM_INOUT, CONFORM_CMP_F32};
            c.bufs[2] = (conform_buf){y, plane, CONFORM_INOUT, CONFORM_CMP_F32};
            if (rc == DUET_OK)
                rc = conform_case_run(r, &c);

            c.type = "F32";
            duet_swiglu_args as = {.n_rows = n, .dim = dim};
            c.op = "swiglu";
            c.record = rec_swiglu;
            c.params = &as;
            c.bufs[1] = buf_in(y, plane);
            if (rc == DUET_OK)
                rc = conform_case_run(r, &c);

            duet_add_args aa = {.n = (int64_t)n * dim};
            c.op = "add";
            c.record = rec_add;
            c.params = &aa;
            c.n_bufs = 2;
            snprintf(c.shape, sizeof c.shape, "n=%d", n * dim);
            c.bufs[0] = (conform_buf){x, plane, CONFORM_INOUT, CONFORM_CMP_F32};
            c.bufs[1] = buf_in(y, plane);
            if (rc == DUET_OK)
                rc = conform_case_run(r, &c);

            duet_gather_rows_args ag = {.n_in = n, .n_out = n + 2, .dim = dim};
            int32_t *sel = arena_alloc(&ar, sizeof(int32_t) * ag.n_out);
            if (alloc_failed(&rc, sel != NULL))
                goto out;
            for (int k = 0; k < ag.n_out; k++)
                sel[k] = (int32_t)(rng_u32(g) % (uint32_t)n);
            c = (conform_case){.op = "gather_rows", .type = "F32", .threshold = 1e-7,
                               .record = rec_gather, .params = &ag, .n_bufs = 3};
            snprintf(c.shape, sizeof c.shape, "in=%d out=%d dim=%d", n, ag.n_out, dim);
            c.bufs[0] = buf_in(x, plane);
            c.bufs[1] = buf_in(sel, sizeof(int32_t) * ag.n_out);
            c.bufs[2] = buf_out(sizeof(float) * ag.n_out * dim, CONFORM_CMP_F32);
            if (rc == DUET_OK)
                rc = conform_case_run(r, &c);
            arena_free(&ar);
        }
    }
out:
    arena_free(&ar);
    return rc;
}

/* ---- matmul ------------------------------------------------------------------ */
static duet_status rec_matmul(duet_device *d, duet_stream *s, duet_buffer *const *b,
                              const void *p)
{
    duet_matmul_args a = *(const duet_matmul_args *)p;
    a.x = at(b[0]);
    a.w = at(b[1]);
    a.out = at(b[2]);
    a.bias = (duet_addr){b[3], 0}; /* NULL buffer = no bias */
    return duet_dev_matmul(d, s, &a);
}

/* The gated form: b[3] is w_up. */
static duet_status rec_matmul_glu(duet_device *d, duet_stream *s, duet_buffer *const *b,
                                  const void *p)
{
    duet_matmul_args a = *(const duet_matmul_args *)p;
    a.x = at(b[0]);
    a.w = at(b[1]);
    a.out = at(b[2]);
    a.w_up = at(b[3]);
    return duet_dev_matmul(d, s, &a);
}

static duet_status cases_matmul(conform_run *r, rng_state *g)
{
    static const int rows[] = {1, 7, 33};
    duet_status rc = DUET_OK;
    arena ar = {0};
    for (int t = 0; t < N_WEIGHT_TYPES && rc == DUET_OK; t++) {
        for (int bias = 0; bias < 2 && rc == DUET_OK; bias++) {
            for (int i = 0; i < 3 && rc == DUET_OK; i++) {
                duet_matmul_args a = {.w_type = weight_types[t], .n_rows = rows[i], .k = 512,
                                      .n = 96};
                float *x = rand_f32(&ar, g, (size_t)a.n_rows * a.k, 1.0f);
                void *w = rand_weights(&ar, g, a.w_type, a.n, a.k);
                float *bv = rand_f32(&ar, g, a.n, 1.0f);
                if (alloc_failed(&rc, x && w && bv))
                    goto out;
                conform_case c = {.op = "matmul", .type = duet_dtype_get(a.w_type)->name,
                                  .threshold = 5e-4, .record = rec_matmul, .params = &a,
                                  .n_bufs = bias ? 4 : 3};
                snprintf(c.shape, sizeof c.shape, "rows=%d k=%d n=%d%s", a.n_rows, a.k, a.n,
                         bias ? " bias" : "");
                c.bufs[0] = buf_in(x, sizeof(float) * a.n_rows * a.k);
                c.bufs[1] = buf_in(w, duet_dtype_row_bytes(a.w_type, a.k) * a.n);
                c.bufs[2] = buf_out(sizeof(float) * a.n_rows * a.n, CONFORM_CMP_F32);
                c.bufs[3] = buf_in(bv, sizeof(float) * a.n);
                rc = conform_case_run(r, &c);
                arena_free(&ar);
            }
        }
        /* The gated form (w_up): silu(x.W^T) * (x.W_up^T). */
        for (int i = 0; i < 3 && rc == DUET_OK; i += 2) {
            duet_matmul_args a = {.w_type = weight_types[t], .n_rows = rows[i], .k = 512,
                                  .n = 96};
            float *x = rand_f32(&ar, g, (size_t)a.n_rows * a.k, 1.0f);
            void *w = rand_weights(&ar, g, a.w_type, a.n, a.k);
            void *wu = rand_weights(&ar, g, a.w_type, a.n, a.k);
            if (alloc_failed(&rc, x && w && wu))
                goto out;
            char type[16];
            snprintf(type, sizeof type, "%s+glu", duet_dtype_get(a.w_type)->name);
            conform_case c = {.op = "matmul", .type = type, .threshold = 5e-4,
                              .record = rec_matmul_glu, .params = &a, .n_bufs = 4};
            snprintf(c.shape, sizeof c.shape, "rows=%d k=%d n=%d w_up", a.n_rows, a.k, a.n);
            size_t wbytes = duet_dtype_row_bytes(a.w_type, a.k) * a.n;
            c.bufs[0] = buf_in(x, sizeof(float) * a.n_rows * a.k);
            c.bufs[1] = buf_in(w, wbytes);
            c.bufs[2] = buf_out(sizeof(float) * a.n_rows * a.n, CONFORM_CMP_F32);
            c.bufs[3] = buf_in(wu, wbytes);
            rc = conform_case_run(r, &c);
            arena_free(&ar);
        }
    }
out:
    arena_free(&ar);
    return rc;
}

/* ---- rope and kv_write --------------------------------------------------------- */
/* A rope case with n_kv_heads 0 rotates q only: its buffers are q,
 * positions and freq_factors; otherwise q, k, positions, freq_factors. */
static duet_status rec_rope(duet_device *d, duet_stream *s, duet_buffer *const *b,
                            const void *p)
{
    duet_rope_args a = *(const duet_rope_args *)p;
    int has_k = a.n_kv_heads > 0;
    a.q = at(b[0]);
    a.k = (duet_addr){has_k ? b[1] : NULL, 0};
    a.rope.positions = at(b[1 + has_k]);
    a.rope.freq_factors = (duet_addr){b[2 + has_k], 0};
    return duet_dev_rope(d, s, &a);
}

/* Random positions (the first 0) and llama3-like frequency factors in
 * [1, 8]. */
static void rand_rope_inputs(rng_state *g, int32_t *pos, int n_tokens, float *f, int n_f)
{
    for (int i = 0; i < n_tokens; i++)
        pos[i] = i == 0 ? 0 : (int32_t)(rng_u32(g) % 4000);
    for (int i = 0; i < n_f; i++)
        f[i] = 1.0f + 7.0f * (rng_f(g) + 1.0f) / 2.0f;
}

static duet_status cases_rope(conform_run *r, rng_state *g)
{
    duet_status rc = DUET_OK;
    arena ar = {0};
    /* mode x freq_factors, then q only (no k) with freq_factors per mode */
    for (int v = 0; v < 6 && rc == DUET_OK; v++) {
        int mode = v % 2, ff = v >= 2, has_k = v < 4;
        duet_rope_args a = {.n_tokens = 6, .n_heads = 8, .n_kv_heads = has_k ? 2 : 0,
                            .head_dim = 64,
                            .rope = {.rot_dim = ff ? 64 : 32, .mode = (duet_rope_mode)mode,
                                     .theta_base = 10000.0f}};
        int half = a.rope.rot_dim / 2;
        size_t nq = (size_t)a.n_tokens * a.n_heads * a.head_dim;
        size_t nk = (size_t)a.n_tokens * a.n_kv_heads * a.head_dim;
        float *q = rand_f32(&ar, g, nq, 2.0f), *k = has_k ? rand_f32(&ar, g, nk, 2.0f) : NULL;
        int32_t *pos = arena_alloc(&ar, sizeof(int32_t) * a.n_tokens);
        float *f = arena_alloc(&ar, sizeof(float) * half);
        if (alloc_failed(&rc, q && (k || !has_k) && pos && f))
            goto out;
        rand_rope_inputs(g, pos, a.n_tokens, f, half);
        conform_case c = {.op = "rope", .type = "F32", .threshold = 1e-7,
                          .record = rec_rope, .params = &a, .n_bufs = 2 + has_k + ff};
        snprintf(c.shape, sizeof c.shape, "%s tokens=%d heads=%d/%d rot=%d/%d%s",
                 mode ? "neox" : "normal", a.n_tokens, a.n_heads, a.n_kv_heads, a.rope.rot_dim,
                 a.head_dim, ff ? " freq_factors" : "");
        int i = 0;
        c.bufs[i++] = (conform_buf){q, nq * sizeof(float), CONFORM_INOUT, CONFORM_CMP_F32};
        if (has_k)
            c.bufs[i++] = (conform_buf){k, nk * sizeof(float), CONFORM_INOUT, CONFORM_CMP_F32};
        c.bufs[i++] = buf_in(pos, sizeof(int32_t) * a.n_tokens);
        c.bufs[i++] = buf_in(f, sizeof(float) * half);
        rc = conform_case_run(r, &c);
        arena_free(&ar);
    }
out:
    arena_free(&ar);
    return rc;
}

/* A kv_write case with rope.rot_dim > 0 rotates k: buffers 5 and 6 are
 * positions and (when there are 7) freq_factors. */
static duet_status rec_kv_write(duet_device *d, duet_stream *s, duet_buffer *const *b,
                                const void *p)
{
    duet_kv_write_args a = *(const duet_kv_write_args *)p;
    a.k = at(b[0]);
    a.v = at(b[1]);
    a.slot_mapping = at(b[2]);
    a.k_cache = at(b[3]);
    a.v_cache = at(b[4]);
    a.rope.positions = (duet_addr){a.rope.rot_dim ? b[5] : NULL, 0};
    a.rope.freq_factors = (duet_addr){a.rope.rot_dim ? b[6] : NULL, 0};
    return duet_dev_kv_write(d, s, &a);
}

static duet_status cases_kv_write(conform_run *r, rng_state *g)
{
    duet_status rc = DUET_OK;
    arena ar = {0};
    /* F32 and F16 caches x no rotation, normal rope (rot 32 of 64),
     * neox rope with freq_factors (rot 48 of 64) */
    for (int v = 0; v < 6 && rc == DUET_OK; v++) {
        int f16 = v / 3, rope = v % 3;
        duet_kv_write_args a = {.cache_type = f16 ? DUET_F16 : DUET_F32, .n_tokens = 9,
                                .n_kv_heads = 2, .head_dim = 64, .num_blocks = 6,
                                .block_size = 16};
        if (rope)
            a.rope = (duet_rope_spec){.rot_dim = rope == 1 ? 32 : 48,
                                      .mode = rope == 1 ? DUET_ROPE_NORMAL : DUET_ROPE_NEOX,
                                      .theta_base = 500000.0f};
        int half = a.rope.rot_dim / 2;
        size_t n = (size_t)a.n_tokens * a.n_kv_heads * a.head_dim;
        size_t cache = (size_t)a.num_blocks * a.block_size * a.n_kv_heads * a.head_dim *
                       (f16 ? 2 : 4);
        float *k = rand_f32(&ar, g, n, 2.0f), *v_ = rand_f32(&ar, g, n, 2.0f);
        int32_t *slots = arena_alloc(&ar, sizeof(int32_t) * a.n_tokens);
        int32_t *pos = arena_alloc(&ar, sizeof(int32_t) * a.n_tokens);
        float *f = arena_alloc(&ar, sizeof(float) * half);
        if (alloc_failed(&rc, k && v_ && slots && pos && f))
            goto out;
        for (int i = 0; i < a.n_tokens; i++) /* distinct slots, one skipped token */
            slots[i] = i == 3 ? -1 : (i * 37 + 5) % (a.num_blocks * a.block_size);
        rand_rope_inputs(g, pos, a.n_tokens, f, half);
        conform_cmp cmp = f16 ? CONFORM_CMP_F16 : CONFORM_CMP_F32;
        conform_case c = {.op = "kv_write", .type = f16 ? "F16" : "F32", .threshold = 1e-7,
                          .record = rec_kv_write, .params = &a,
                          .n_bufs = rope == 0 ? 5 : rope == 1 ? 6 : 7};
        snprintf(c.shape, sizeof c.shape, "tokens=%d kv_heads=%d head_dim=%d blocks=%dx%d%s",
                 a.n_tokens, a.n_kv_heads, a.head_dim, a.num_blocks, a.block_size,
                 rope == 1 ? " rope=normal/32" : rope == 2 ? " rope=neox/48+ff" : "");
        c.bufs[0] = buf_in(k, n * sizeof(float));
        c.bufs[1] = buf_in(v_, n * sizeof(float));
        c.bufs[2] = buf_in(slots, sizeof(int32_t) * a.n_tokens);
        /* Poisoned caches: the slots not written must stay NaN on both. */
        c.bufs[3] = (conform_buf){NULL, cache, CONFORM_INOUT, cmp};
        c.bufs[4] = (conform_buf){NULL, cache, CONFORM_INOUT, cmp};
        c.bufs[5] = buf_in(pos, sizeof(int32_t) * a.n_tokens);
        c.bufs[6] = buf_in(f, sizeof(float) * half);
        rc = conform_case_run(r, &c);
        arena_free(&ar);
    }
out:
    arena_free(&ar);
    return rc;
}

/* ---- attention ------------------------------------------------------------------- */
static duet_status rec_attention(duet_device *d, duet_stream *s, duet_buffer *const *b,
                                 const void *p)
{
    duet_attention_args a = *(const duet_attention_args *)p;
    a.q = at(b[0]);
    a.k_cache = at(b[1]);
    a.v_cache = at(b[2]);
    a.block_tables = at(b[3]);
    a.seq_lens = at(b[4]);
    a.query_start_loc = at(b[5]);
    a.out = at(b[6]);
    return duet_dev_attention(d, s, &a);
}

/* A cache of n random values in [-1, 1), as F32 or F16. */
static void *rand_cache(arena *ar, rng_state *g, size_t n, int f16)
{
    void *c = arena_alloc(ar, n * (f16 ? 2 : 4));
    for (size_t i = 0; c && i < n; i++) {
        float v = rng_f(g);
        if (f16)
            ((uint16_t *)c)[i] = duet_f32_to_f16(v);
        else
            ((float *)c)[i] = v;
    }
    return c;
}

/* Mixed batches: a chunked prefill after context, decodes (one of them the
 * first token of a sequence), a fresh prefill; GQA (8 query heads on 2 or
 * 1 KV heads); pages scattered over the cache. The 1-KV-head cases pass the
 * batch's longest context as max_seq_len (as the runner does), the others
 * no bound. */
static duet_status cases_attention(conform_run *r, rng_state *g)
{
    static const int q_lens[] = {5, 1, 1, 9}, seq_lens[] = {21, 70, 1, 9};
    static const int kv_heads[] = {2, 1};
    enum { N_SEQS = 4, BLOCK = 16, NUM_BLOCKS = 12, MAX_BLOCKS = 5 };
    duet_status rc = DUET_OK;
    arena ar = {0};
    for (int f16 = 0; f16 < 2 && rc == DUET_OK; f16++) {
        for (int h = 0; h < 2 && rc == DUET_OK; h++) {
            duet_attention_args a = {.cache_type = f16 ? DUET_F16 : DUET_F32,
                                     .n_seqs = N_SEQS, .n_heads = 8, .n_kv_heads = kv_heads[h],
                                     .head_dim = 64, .num_blocks = NUM_BLOCKS,
                                     .block_size = BLOCK, .max_blocks_per_seq = MAX_BLOCKS,
                                     .scale = 0.125f};
            int32_t *qsl = arena_alloc(&ar, sizeof(int32_t) * (N_SEQS + 1));
            int32_t *lens = arena_alloc(&ar, sizeof(int32_t) * N_SEQS);
            int32_t *tables = arena_alloc(&ar, sizeof(int32_t) * N_SEQS * MAX_BLOCKS);
            if (alloc_failed(&rc, qsl && lens && tables))
                goto out;
            int32_t perm[NUM_BLOCKS];
            for (int i = 0; i < NUM_BLOCKS; i++)
                perm[i] = i;
            for (int i = NUM_BLOCKS - 1; i > 0; i--) {
                int j = (int)(rng_u32(g) % (uint32_t)(i + 1));
                int32_t tmp = perm[i];
                perm[i] = perm[j];
                perm[j] = tmp;
            }
            int next = 0;
            for (int s = 0; s < N_SEQS; s++) {
                qsl[s + 1] = qsl[s] + q_lens[s];
                lens[s] = seq_lens[s];
                if (h == 1 && seq_lens[s] > a.max_seq_len)
                    a.max_seq_len = seq_lens[s];
                int need = (seq_lens[s] + BLOCK - 1) / BLOCK;
                for (int b = 0; b < MAX_BLOCKS; b++)
                    tables[s * MAX_BLOCKS + b] = b < need ? perm[next++] : -1;
            }
            a.n_tokens = qsl[N_SEQS];
            size_t n_cache = (size_t)NUM_BLOCKS * BLOCK * a.n_kv_heads * a.head_dim;
            size_t qn = (size_t)a.n_tokens * a.n_heads * a.head_dim;
            void *kc = rand_cache(&ar, g, n_cache, f16), *vc = rand_cache(&ar, g, n_cache, f16);
            float *q = rand_f32(&ar, g, qn, 2.0f);
            if (alloc_failed(&rc, kc && vc && q))
                goto out;
            conform_case c = {.op = "attention", .type = f16 ? "F16" : "F32",
                              .threshold = 5e-4, .record = rec_attention, .params = &a,
                              .n_bufs = 7};
            snprintf(c.shape, sizeof c.shape, "seqs=%d tokens=%d heads=%d/%d head_dim=%d",
                     N_SEQS, a.n_tokens, a.n_heads, a.n_kv_heads, a.head_dim);
            if (a.max_seq_len)
                snprintf(c.shape + strlen(c.shape), sizeof c.shape - strlen(c.shape),
                         " bound=%d", a.max_seq_len);
            c.bufs[0] = buf_in(q, qn * sizeof(float));
            c.bufs[1] = buf_in(kc, n_cache * (f16 ? 2 : 4));
            c.bufs[2] = buf_in(vc, n_cache * (f16 ? 2 : 4));
            c.bufs[3] = buf_in(tables, sizeof(int32_t) * N_SEQS * MAX_BLOCKS);
            c.bufs[4] = buf_in(lens, sizeof(int32_t) * N_SEQS);
            c.bufs[5] = buf_in(qsl, sizeof(int32_t) * (N_SEQS + 1));
            c.bufs[6] = buf_out(qn * sizeof(float), CONFORM_CMP_F32);
            rc = conform_case_run(r, &c);
            arena_free(&ar);
        }
    }
out:
    arena_free(&ar);
    return rc;
}

/* ---- sample ---------------------------------------------------------------------- */
static duet_status rec_sample(duet_device *d, duet_stream *s, duet_buffer *const *b,
                              const void *p)
{
    duet_sample_args a = *(const duet_sample_args *)p;
    a.logits = at(b[0]);
    a.rows = at(b[1]);
    a.edits = at(b[2]);
    a.work = at(b[3]);
    a.results = at(b[4]);
    a.tokens_out = at(b[5]);
    return duet_dev_sample(d, s, &a);
}

/* One row per sampling feature: greedy (argmax), temperature with top-k,
 * top-p with min-p, penalties and a mask through edits, a forced token
 * with logprobs. Exact comparison: every backend does the same rounded
 * operations (docs/SAMPLING.md). */
static duet_status cases_sample(conform_run *r, rng_state *g)
{
    enum { N_ROWS = 5, N_EDITS = 3 };
    static const int vocabs[] = {1000, 32000};
    duet_status rc = DUET_OK;
    arena ar = {0};
    for (int v = 0; v < 2 && rc == DUET_OK; v++) {
        duet_sample_args a = {.n_rows = N_ROWS, .vocab = vocabs[v], .n_edits = N_EDITS};
        size_t plane = sizeof(float) * N_ROWS * a.vocab;
        float *logits = rand_f32(&ar, g, (size_t)N_ROWS * a.vocab, 6.0f);
        duet_sample_row *rows = arena_alloc(&ar, sizeof *rows * N_ROWS);
        duet_sample_edit *edits = arena_alloc(&ar, sizeof *edits * N_EDITS);
        if (alloc_failed(&rc, logits && rows && edits))
            goto out;
        for (int i = 0; i < N_ROWS; i++) {
            duet_request_params p = {.max_tokens = 1};
            int forced = -1, n_logprobs = -1;
            switch (i) {
            case 0: break; /* greedy */
            case 1: p.temperature = 0.8f; p.top_k = 40; n_logprobs = 3; break;
            case 2: p.temperature = 1.0f; p.top_p = 0.9f; p.min_p = 0.05f; break;
            case 3:
                p.temperature = 0.7f;
                p.repetition_penalty = 1.3f;
                p.presence_penalty = 0.5f;
                p.frequency_penalty = 0.25f;
                break;
            default: forced = a.vocab / 3; n_logprobs = 5; break;
            }
            duet_sample_row_init(&rows[i], &p, a.vocab, 1234 + (uint64_t)i, (uint32_t)i, 0,
                                 forced, n_logprobs);
        }
        /* Row 3 edits: the greedy winner banned, a prompt token, a
         * repeated generated token with a bias. */
        int32_t best = 0;
        for (int j = 1; j < a.vocab; j++)
            if (logits[3 * a.vocab + j] > logits[3 * a.vocab + best])
                best = j;
        edits[0] = (duet_sample_edit){best, DUET_SAMPLE_EDIT_MASK, 0, 0.0f};
        edits[1] = (duet_sample_edit){(best + 7) % a.vocab, DUET_SAMPLE_EDIT_PROMPT, 0, 0.0f};
        edits[2] = (duet_sample_edit){(best + 11) % a.vocab, 0, 2, 1.5f};
        rows[3].edit_begin = 0;
        rows[3].edit_end = N_EDITS;
        conform_case c = {.op = "sample", .type = "-", .threshold = 0,
                          .record = rec_sample, .params = &a, .n_bufs = 6};
        snprintf(c.shape, sizeof c.shape, "rows=%d vocab=%d edits=%d", N_ROWS, a.vocab,
                 N_EDITS);
        c.bufs[0] = buf_in(logits, plane);
        c.bufs[1] = buf_in(rows, sizeof *rows * N_ROWS);
        c.bufs[2] = buf_in(edits, sizeof *edits * N_EDITS);
        c.bufs[3] = buf_in(NULL, plane); /* scratch, left poisoned */
        c.bufs[4] = buf_out(sizeof(duet_sample_result) * N_ROWS, CONFORM_CMP_SAMPLE);
        c.bufs[5] = buf_out(sizeof(int32_t) * N_ROWS, CONFORM_CMP_I32);
        rc = conform_case_run(r, &c);
        arena_free(&ar);
    }
out:
    arena_free(&ar);
    return rc;
}

duet_status conform_ops_run_all(conform_run *r, unsigned seed)
{
    rng_state g = {0x9e3779b97f4a7c15ull ^ ((uint64_t)seed * 0x100000001b3ull)};
    duet_status (*const groups[])(conform_run *, rng_state *) = {
        cases_embed, cases_elementwise, cases_matmul, cases_rope,
        cases_kv_write, cases_attention, cases_sample};
    duet_status rc = DUET_OK;
    for (size_t i = 0; i < sizeof groups / sizeof groups[0] && rc == DUET_OK; i++)
        rc = groups[i](r, &g);
    return rc;
}
