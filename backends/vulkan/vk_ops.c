/*
 * vk_ops.c — recording the ops: bind operands, fill push constants, pick
 * the grid, and split an op into several dispatches where an operand is
 * larger than one binding (maxStorageBufferRange): matmul and embed over
 * weight rows, matmul over activation rows, the elementwise ops over
 * elements, rms_norm over rows, split-K attention over tokens (its
 * partials scratch).
 */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "vk_internal.h"

enum { MAX_GROUPS_X = 65535, MATMUL_MT = 8, MATMUL_RPW = 4 };

/* A 1-D count of workgroups folded into x and y (group_linear()). */
void duet_vk_grid_2d(uint64_t groups, uint32_t *gx, uint32_t *gy)
{
    *gx = groups < MAX_GROUPS_X ? (uint32_t)groups : MAX_GROUPS_X;
    *gy = *gx ? (uint32_t)((groups + *gx - 1) / *gx) : 0;
}

static uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

/* Bind a float/int32 operand: bytes [lo, hi) past a.offset; *words is the
 * word offset of a.offset + lo inside the binding. */
duet_status duet_vk_bind_words(vk_ctx *c, const char *op, const char *name, duet_addr a,
                               uint64_t lo, uint64_t hi, vk_binding *b, uint32_t *words)
{
    uint32_t residual;
    if (a.offset % 4)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "%s: operand '%s' is at offset %zu; Vulkan needs a multiple of 4", op,
                          name, a.offset);
    duet_status rc = duet_vk_bind_range(c, op, name, a, lo, hi, b, &residual);
    *words = residual / 4;
    return rc;
}

vk_binding duet_vk_dummy_binding(const vk_ctx *c)
{
    return (vk_binding){c->dummy->chunk[0].buf, 0, VK_WHOLE_SIZE};
}

/* Weight rows: the byte offset must suit the type's 16/32-bit fields. */
static duet_status check_weight_offset(const char *op, const char *name, duet_addr a,
                                       duet_dtype t)
{
    size_t need = t == DUET_F32 ? 4 : 2;
    if (a.offset % need)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "%s: weights '%s' at offset %zu; Vulkan needs a multiple of %zu for "
                          "this type",
                          op, name, a.offset, need);
    return DUET_OK;
}

/* ---- elementwise ---------------------------------------------------------------- */

/* Elements per dispatch of an op whose operands all have one float per
 * element: what one binding holds, in whole workgroups. */
static uint64_t flat_piece(const vk_ctx *c) { return duet_vk_max_bind(c) / 4 / 256 * 256; }

duet_status duet_vk_add(void *ctx, duet_stream *s, const duet_add_args *a)
{
    vk_ctx *c = ctx;
    duet_status rc = DUET_OK;
    uint64_t piece = flat_piece(c);
    for (uint64_t e0 = 0; e0 < (uint64_t)a->n && rc == DUET_OK; e0 += piece) {
        uint64_t cnt = (uint64_t)a->n - e0 < piece ? (uint64_t)a->n - e0 : piece;
        vk_binding b[2];
        struct {
            uint32_t n, a_off, b_off;
        } pc = {(uint32_t)cnt, 0, 0};
        if ((rc = duet_vk_bind_words(c, "add", "a", a->a, 4 * e0, 4 * (e0 + cnt), &b[0],
                                     &pc.a_off)) ||
            (rc =
                 duet_vk_bind_words(c, "add", "b", a->b, 4 * e0, 4 * (e0 + cnt), &b[1], &pc.b_off)))
            break;
        uint32_t gx, gy;
        duet_vk_grid_2d(ceil_div(cnt, 256), &gx, &gy);
        rc = duet_vk_dispatch(c, s, VK_SH_ADD, 0, b, 2, &pc, sizeof pc, gx, gy, 1);
    }
    return rc;
}

duet_status duet_vk_swiglu(void *ctx, duet_stream *s, const duet_swiglu_args *a)
{
    vk_ctx *c = ctx;
    duet_status rc = DUET_OK;
    uint64_t n = (uint64_t)a->n_rows * a->dim, piece = flat_piece(c);
    for (uint64_t e0 = 0; e0 < n && rc == DUET_OK; e0 += piece) {
        uint64_t cnt = n - e0 < piece ? n - e0 : piece;
        uint64_t lo = 4 * e0, hi = 4 * (e0 + cnt);
        vk_binding b[3];
        struct { uint32_t n, g_off, u_off, o_off; } pc = {(uint32_t)cnt, 0, 0, 0};
        if ((rc = duet_vk_bind_words(c, "swiglu", "gate", a->gate, lo, hi, &b[0], &pc.g_off)) ||
            (rc = duet_vk_bind_words(c, "swiglu", "up", a->up, lo, hi, &b[1], &pc.u_off)) ||
            (rc = duet_vk_bind_words(c, "swiglu", "out", a->out, lo, hi, &b[2], &pc.o_off)))
            break;
        uint32_t gx, gy;
        duet_vk_grid_2d(ceil_div(cnt, 256), &gx, &gy);
        rc = duet_vk_dispatch(c, s, VK_SH_SWIGLU, 0, b, 3, &pc, sizeof pc, gx, gy, 1);
    }
    return rc;
}

duet_status duet_vk_rms_norm(void *ctx, duet_stream *s, const duet_rms_norm_args *a)
{
    vk_ctx *c = ctx;
    duet_status rc = DUET_OK;
    uint64_t row = 4ull * a->dim;
    uint64_t rows = duet_vk_max_bind(c) / row;
    if (rows == 0)
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "rms_norm: a row of %d floats exceeds this device's binding limit",
                          a->dim);
    for (uint64_t r0 = 0; r0 < (uint64_t)a->n_rows && rc == DUET_OK; r0 += rows) {
        uint64_t cnt = (uint64_t)a->n_rows - r0 < rows ? (uint64_t)a->n_rows - r0 : rows;
        uint64_t lo = r0 * row, hi = (r0 + cnt) * row;
        vk_binding b[4];
        struct { uint32_t n_rows, dim; float eps; uint32_t x_off, w_off, y_off, r_off; } pc = {
            (uint32_t)cnt, (uint32_t)a->dim, a->eps, 0, 0, 0, 0};
        if ((rc = duet_vk_bind_words(c, "rms_norm", "x", a->x, lo, hi, &b[0], &pc.x_off)) ||
            (rc = duet_vk_bind_words(c, "rms_norm", "weight", a->weight, 0, row, &b[1],
                                     &pc.w_off)) ||
            (rc = duet_vk_bind_words(c, "rms_norm", "out", a->out, lo, hi, &b[2], &pc.y_off)) ||
            (a->residual.buf && (rc = duet_vk_bind_words(c, "rms_norm", "residual", a->residual,
                                                         lo, hi, &b[3], &pc.r_off))))
            break;
        /* The fused add has its own shader, so the plain one's x stays
         * readonly (no write hazard on x for the tracking). */
        vk_shader sh = a->residual.buf ? VK_SH_RMS_NORM_ADD : VK_SH_RMS_NORM;
        uint32_t gx, gy;
        duet_vk_grid_2d(cnt, &gx, &gy);
        rc = duet_vk_dispatch(c, s, sh, 0, b, a->residual.buf ? 4 : 3, &pc, sizeof pc, gx, gy, 1);
    }
    return rc;
}

duet_status duet_vk_gather_rows(void *ctx, duet_stream *s, const duet_gather_rows_args *a)
{
    vk_ctx *c = ctx;
    duet_status rc;
    vk_binding b[3];
    struct { uint32_t n_in, n_out, dim, x_off, r_off, o_off; } pc = {
        (uint32_t)a->n_in, (uint32_t)a->n_out, (uint32_t)a->dim, 0, 0, 0};
    if ((rc = duet_vk_bind_words(c, "gather_rows", "x", a->x, 0, 4ull * a->n_in * a->dim, &b[0],
                                 &pc.x_off)) ||
        (rc = duet_vk_bind_words(c, "gather_rows", "rows", a->rows, 0, 4ull * a->n_out, &b[1],
                                 &pc.r_off)) ||
        (rc = duet_vk_bind_words(c, "gather_rows", "out", a->out, 0, 4ull * a->n_out * a->dim,
                                 &b[2], &pc.o_off)))
        return rc;
    uint32_t gx, gy;
    duet_vk_grid_2d(ceil_div((uint64_t)a->n_out * a->dim, 256), &gx, &gy);
    return duet_vk_dispatch(c, s, VK_SH_GATHER_ROWS, 0, b, 3, &pc, sizeof pc, gx, gy, 1);
}

/* ---- weights: embed and matmul ------------------------------------------------------ */

duet_status duet_vk_embed(void *ctx, duet_stream *s, const duet_embed_args *a)
{
    vk_ctx *c = ctx;
    duet_status rc = check_weight_offset("embed", "table", a->table, a->table_type);
    uint64_t row_bytes = duet_dtype_row_bytes(a->table_type, a->dim);
    uint64_t rows = duet_vk_max_bind(c) / row_bytes;
    if (rc)
        return rc;
    if (rows == 0)
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "embed: a table row of %llu bytes exceeds this device's binding limit",
                          (unsigned long long)row_bytes);
    uint32_t units = (uint32_t)ceil_div((uint64_t)a->dim, 32);
    /* Every piece covers all tokens; each writes the tokens whose id it holds. */
    for (uint64_t v0 = 0; v0 < (uint64_t)a->vocab && rc == DUET_OK; v0 += rows) {
        uint64_t v1 = v0 + rows < (uint64_t)a->vocab ? v0 + rows : (uint64_t)a->vocab;
        uint32_t t_res;
        vk_binding b[4];
        struct {
            uint32_t n_tokens, vocab, dim, v0, v1, first, ids_off, t_off, o_off, row_bytes, units;
            uint32_t n_prev, prev_off;
        } pc = {(uint32_t)a->n_tokens, (uint32_t)a->vocab, (uint32_t)a->dim, (uint32_t)v0,
                (uint32_t)v1, v0 == 0, 0, 0, 0, (uint32_t)row_bytes, units,
                a->prev_tokens.buf ? (uint32_t)a->n_prev : 0, 0};
        if ((rc = duet_vk_bind_words(c, "embed", "ids", a->ids, 0, 4ull * a->n_tokens, &b[0],
                                     &pc.ids_off)) ||
            (rc = duet_vk_bind_range(c, "embed", "table", a->table, v0 * row_bytes, v1 * row_bytes,
                                     &b[1], &t_res)) ||
            (rc = duet_vk_bind_words(c, "embed", "out", a->out, 0, 4ull * a->n_tokens * a->dim,
                                     &b[2], &pc.o_off)))
            break;
        pc.t_off = t_res;
        if (pc.n_prev)
            rc = duet_vk_bind_words(c, "embed", "prev_tokens", a->prev_tokens, 0, 4ull * a->n_prev,
                                    &b[3], &pc.prev_off);
        else
            b[3] = duet_vk_dummy_binding(c);
        if (rc)
            break;
        uint32_t gx, gy;
        duet_vk_grid_2d(ceil_div((uint64_t)a->n_tokens * units, 64), &gx, &gy);
        rc = duet_vk_dispatch(c, s, VK_SH_EMBED, (uint32_t)a->table_type, b, 4, &pc, sizeof pc,
                              gx, gy, 1);
    }
    return rc;
}

/* The decode kernel for weights of type t with k per row, starting w_res
 * bytes into their binding, on a device with subgroup arithmetic; else
 * VK_SH_COUNT (the tiled or per-output matmul). matmul_vec reads aligned
 * 16-byte pieces: k a multiple of the 4 (F32) or 8 (F16, BF16) weights of
 * a piece and the rows 16-byte aligned. matmul_qvec reads 32-element
 * units: k a multiple of the block (true of every valid row) and blocks
 * 2-byte aligned (deq8's 16-bit fields; check_weight_offset ensures it).
 * Activations may sit at any word offset (x_run4 reads words when they are
 * not 16-byte aligned). Both size their reduction for subgroups of at
 * least 4 invocations (at most 32 per workgroup of 128). */
static vk_shader vec_kernel(const vk_ctx *c, duet_dtype t, int k, uint32_t w_res)
{
    if (!c->caps.vec_matmul || c->caps.subgroup_size < 4)
        return VK_SH_COUNT;
    switch (t) {
    case DUET_F32:
        return k % 4 == 0 && w_res % 16 == 0 ? VK_SH_MATMUL_VEC : VK_SH_COUNT;
    case DUET_F16:
    case DUET_BF16:
        return k % 8 == 0 && w_res % 16 == 0 ? VK_SH_MATMUL_VEC : VK_SH_COUNT;
    case DUET_Q4_0:
    case DUET_Q4_1:
    case DUET_Q8_0:
    case DUET_Q4_K:
    case DUET_Q5_K:
    case DUET_Q6_K:
        return k % duet_dtype_get(t)->block_elems == 0 && k % 32 == 0 && w_res % 2 == 0
                   ? VK_SH_MATMUL_QVEC
                   : VK_SH_COUNT;
    default:
        return VK_SH_COUNT;
    }
}

/* The gated form (w_up) is the same dispatches with W_up bound at 4,
 * split over the same rows as W, and kernel variant bit 1 set. The decode
 * kernels take 1 << duet_vk_vec_rows_log2() weight rows per workgroup (variant
 * bits 2-3). */
duet_status duet_vk_matmul(void *ctx, duet_stream *s, const duet_matmul_args *a)
{
    vk_ctx *c = ctx;
    int gated = a->w_up.buf != NULL;
    duet_status rc = check_weight_offset("matmul", "w", a->w, a->w_type);
    if (rc == DUET_OK && gated)
        rc = check_weight_offset("matmul", "w_up", a->w_up, a->w_type);
    uint64_t row_bytes = duet_dtype_row_bytes(a->w_type, a->k);
    uint64_t max_words = duet_vk_max_bind(c) / 4;
    uint64_t n_piece = duet_vk_max_bind(c) / row_bytes;
    if (rc)
        return rc;
    if (n_piece == 0 || (uint64_t)a->k > max_words)
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "matmul: a row of k = %d exceeds this device's binding limit", a->k);
    if (n_piece > (uint64_t)a->n)
        n_piece = (uint64_t)a->n;
    for (uint64_t n0 = 0; n0 < (uint64_t)a->n && rc == DUET_OK; n0 += n_piece) {
        uint64_t nc = (uint64_t)a->n - n0 < n_piece ? (uint64_t)a->n - n0 : n_piece;
        /* Activation rows per dispatch: x and the out block must each fit. */
        uint64_t m_piece = max_words / (uint64_t)a->k;
        uint64_t by_out = (max_words - nc) / (uint64_t)a->n + 1;
        if (by_out < m_piece)
            m_piece = by_out;
        if (m_piece > (uint64_t)MAX_GROUPS_X * MATMUL_MT)
            m_piece = (uint64_t)MAX_GROUPS_X * MATMUL_MT;
        for (uint64_t m0 = 0; m0 < (uint64_t)a->n_rows && rc == DUET_OK; m0 += m_piece) {
            uint64_t mc = (uint64_t)a->n_rows - m0 < m_piece ? (uint64_t)a->n_rows - m0 : m_piece;
            vk_binding b[5];
            uint32_t w_res, wu_res = 0;
            struct {
                uint32_t m, k, n, x_off, w_off, b_off, o_off, o_stride, row_bytes, has_bias, units;
                uint32_t wu_off;
            } pc = {(uint32_t)mc, (uint32_t)a->k, (uint32_t)nc, 0, 0, 0, 0, (uint32_t)a->n,
                    (uint32_t)row_bytes, a->bias.buf != NULL, (uint32_t)ceil_div(a->k, 32), 0};
            uint64_t x_lo = m0 * a->k * 4, x_hi = (m0 + mc) * a->k * 4;
            uint64_t o_lo = (m0 * a->n + n0) * 4, o_hi = ((m0 + mc - 1) * a->n + n0 + nc) * 4;
            if ((rc = duet_vk_bind_words(c, "matmul", "x", a->x, x_lo, x_hi, &b[0], &pc.x_off)) ||
                (rc = duet_vk_bind_range(c, "matmul", "w", a->w, n0 * row_bytes,
                                         (n0 + nc) * row_bytes, &b[1], &w_res)) ||
                (rc = duet_vk_bind_words(c, "matmul", "out", a->out, o_lo, o_hi, &b[3], &pc.o_off)))
                break;
            pc.w_off = w_res;
            if (a->bias.buf)
                rc = duet_vk_bind_words(c, "matmul", "bias", a->bias, n0 * 4, (n0 + nc) * 4, &b[2],
                                &pc.b_off);
            else
                b[2] = duet_vk_dummy_binding(c);
            if (rc == DUET_OK && gated)
                rc = duet_vk_bind_range(c, "matmul", "w_up", a->w_up, n0 * row_bytes,
                                        (n0 + nc) * row_bytes, &b[4], &wu_res);
            else
                b[4] = duet_vk_dummy_binding(c);
            if (rc)
                break;
            pc.wu_off = wu_res;
            int per_output = c->caps.per_output_matmul;
            vk_shader vsh = vec_kernel(c, a->w_type, a->k, w_res);
            if (gated && vec_kernel(c, a->w_type, a->k, wu_res) != vsh)
                vsh = VK_SH_COUNT; /* both weights must suit the decode kernel */
            int vec = vsh != VK_SH_COUNT;
            int rows_log2 = duet_vk_vec_rows_log2(c, gated);
            uint32_t gx, gy, gz;
            if (vec || !per_output) {
                /* x: groups of MATMUL_MT activation rows, the fastest
                 * dimension, so the workgroups that read the same weights
                 * are launched together (one read from memory, the rest
                 * from L2); y, z: groups of 1 << rows_log2 weight
                 * rows (vec) or tiles of MATMUL_RPW (tiled), folded. */
                uint64_t wg = vec ? ceil_div(nc, 1ull << rows_log2)
                                  : ceil_div(nc, MATMUL_RPW);
                gx = (uint32_t)ceil_div(mc, MATMUL_MT);
                gy = wg < MAX_GROUPS_X ? (uint32_t)wg : MAX_GROUPS_X;
                gz = (uint32_t)ceil_div(wg, gy);
            } else { /* per-output: one linear index, folded into x and z */
                uint64_t groups = ceil_div(ceil_div(mc, MATMUL_MT) * nc, 64);
                gx = groups < MAX_GROUPS_X ? (uint32_t)groups : MAX_GROUPS_X;
                gy = 1;
                gz = (uint32_t)ceil_div(groups, gx);
            }
            uint32_t spec = (uint32_t)a->w_type + 64u * (uint32_t)gated;
            if (vec)
                rc = duet_vk_dispatch(c, s, vsh, spec + 128u * (uint32_t)rows_log2, b, 5,
                                      &pc, sizeof pc, gx, gy, gz);
            else
                rc = duet_vk_dispatch(c, s, VK_SH_MATMUL, spec + 32u * per_output, b, 5, &pc,
                                      sizeof pc, gx, gy, gz);
        }
    }
    return rc;
}

/* ---- rope, KV cache, attention ------------------------------------------------------ */

/* The push constants of a rope spec (rope.glsl's callers), words. */
typedef struct vk_rope_pc {
    uint32_t rot_dim, neox, has_factors, p_off, f_off, t_off;
} vk_rope_pc;

/* Bind a rope spec's operands at b[0] (positions), b[1] (freq_factors or
 * the dummy) and b[2] (the inverse frequencies in double, as the CPU
 * computes them, split into float pairs hi + lo, in stream scratch); rope
 * and kv_write both take their rotation from here. */
static duet_status bind_rope_spec(vk_ctx *c, duet_stream *s, const char *op,
                                  const duet_rope_spec *r, uint64_t n_tokens, vk_binding *b,
                                  vk_rope_pc *pc)
{
    int half = r->rot_dim / 2;
    void *host;
    *pc = (vk_rope_pc){(uint32_t)r->rot_dim, r->mode == DUET_ROPE_NEOX,
                       r->freq_factors.buf != NULL, 0, 0, 0};
    duet_status rc = duet_vk_bind_words(c, op, "positions", r->positions, 0, 4 * n_tokens, &b[0],
                                        &pc->p_off);
    if (rc)
        return rc;
    if (r->freq_factors.buf)
        rc = duet_vk_bind_words(c, op, "freq_factors", r->freq_factors, 0, 4ull * half, &b[1],
                                &pc->f_off);
    else
        b[1] = duet_vk_dummy_binding(c);
    if (rc || (rc = duet_vk_stream_scratch(c, s, 8ull * half, &b[2], &host)))
        return rc;
    float *tab = host;
    for (int i = 0; i < half; i++) {
        double f = pow(r->theta_base, -2.0 * i / r->rot_dim);
        tab[2 * i] = (float)f;
        tab[2 * i + 1] = (float)(f - (double)tab[2 * i]);
    }
    return DUET_OK;
}

duet_status duet_vk_rope(void *ctx, duet_stream *s, const duet_rope_args *a)
{
    vk_ctx *c = ctx;
    duet_status rc;
    int half = a->rope.rot_dim / 2;
    int n_kv = a->k.buf ? a->n_kv_heads : 0;
    vk_binding b[5];
    struct {
        uint32_t n_tokens, n_heads, n_kv_heads, head_dim, q_off, k_off;
        vk_rope_pc r;
    } pc = {(uint32_t)a->n_tokens, (uint32_t)a->n_heads, (uint32_t)n_kv, (uint32_t)a->head_dim,
            0, 0, {0}};
    uint64_t t = (uint64_t)a->n_tokens;
    if ((rc = duet_vk_bind_words(c, "rope", "q", a->q, 0, 4 * t * a->n_heads * a->head_dim, &b[0],
                                 &pc.q_off)))
        return rc;
    /* Without k the k binding repeats q's (never read or written through it:
     * n_kv_heads is 0), so the dispatch declares no write beyond q — the
     * dummy would look written, and kv_write reads the dummy. */
    if (a->k.buf)
        rc = duet_vk_bind_words(c, "rope", "k", a->k, 0, 4 * t * n_kv * a->head_dim, &b[1],
                                &pc.k_off);
    else
        b[1] = b[0];
    if (rc || (rc = bind_rope_spec(c, s, "rope", &a->rope, t, &b[2], &pc.r)))
        return rc;
    uint32_t gx, gy;
    duet_vk_grid_2d(ceil_div(t * (a->n_heads + n_kv) * half, 256), &gx, &gy);
    return duet_vk_dispatch(c, s, VK_SH_ROPE, 0, b, 5, &pc, sizeof pc, gx, gy, 1);
}

static uint64_t cache_bytes(duet_dtype t, int num_blocks, int block_size, int n_kv, int hd)
{
    return (t == DUET_F16 ? 2ull : 4ull) * num_blocks * block_size * n_kv * hd;
}

duet_status duet_vk_kv_write(void *ctx, duet_stream *s, const duet_kv_write_args *a)
{
    vk_ctx *c = ctx;
    duet_status rc;
    uint64_t row = (uint64_t)a->n_kv_heads * a->head_dim;
    int f16 = a->cache_type == DUET_F16, rope = a->rope.positions.buf != NULL;
    if (f16 && row % 2)
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "kv_write: an F16 cache row of n_kv_heads %d x head_dim %d is odd; "
                          "Vulkan stores halves in pairs",
                          a->n_kv_heads, a->head_dim);
    uint64_t cache = cache_bytes(a->cache_type, a->num_blocks, a->block_size, a->n_kv_heads,
                                 a->head_dim);
    vk_binding b[8];
    struct {
        uint32_t n_tokens, row, n_slots, k_off, v_off, s_off, kc_off, vc_off, head_dim;
        vk_rope_pc r;
    } pc = {(uint32_t)a->n_tokens, (uint32_t)row, (uint32_t)(a->num_blocks * a->block_size),
            0, 0, 0, 0, 0, (uint32_t)a->head_dim, {0}};
    uint64_t t = (uint64_t)a->n_tokens;
    if ((rc = duet_vk_bind_words(c, "kv_write", "k", a->k, 0, 4 * t * row, &b[0], &pc.k_off)) ||
        (rc = duet_vk_bind_words(c, "kv_write", "v", a->v, 0, 4 * t * row, &b[1], &pc.v_off)) ||
        (rc = duet_vk_bind_words(c, "kv_write", "slot_mapping", a->slot_mapping, 0, 4 * t, &b[2],
                                 &pc.s_off)) ||
        (rc = duet_vk_bind_words(c, "kv_write", "k_cache", a->k_cache, 0, cache, &b[3],
                                 &pc.kc_off)) ||
        (rc =
             duet_vk_bind_words(c, "kv_write", "v_cache", a->v_cache, 0, cache, &b[4], &pc.vc_off)))
        return rc;
    if (rope)
        rc = bind_rope_spec(c, s, "kv_write", &a->rope, t, &b[5], &pc.r);
    else
        b[5] = b[6] = b[7] = duet_vk_dummy_binding(c);
    if (rc)
        return rc;
    uint32_t gx, gy;
    duet_vk_grid_2d(ceil_div(t * (f16 ? row / 2 : row), 256), &gx, &gy);
    /* Specialization: constant 0 the cache type, constant 1 the rotation. */
    return duet_vk_dispatch(c, s, VK_SH_KV_WRITE, (uint32_t)f16 + 32u * (uint32_t)rope, b, 8,
                            &pc, sizeof pc, gx, gy, 1);
}

/* Split-K attention (attention_split*.comp + attention_combine.comp): query
 * heads per workgroup (GM), and the partials one dispatch pair may use at
 * 256 keys per partition; tokens beyond it go in further pairs over the
 * same memory (one token's partials may exceed it: the buffer grows). The
 * keys per partition (the shaders' PART) are the device's choice,
 * 64 << vk_ctx.attn_part_log2. */
enum { ATTN_GROUP = 8, ATTN_SCRATCH = 8 << 20 };

/* The partials budget of one pair, scaled by 256 / PART (32 MiB at 64): the
 * partials per token grow as the partitions shrink, and a smaller budget
 * would cut a prefill chunk into more split + combine pairs, each a barrier.
 * The device's buffer starts this size. */
static uint64_t attn_budget(const vk_ctx *c)
{
    return (uint64_t)ATTN_SCRATCH * 4 >> c->attn_part_log2;
}

typedef struct attn_pc {
    uint32_t n_tokens, n_seqs, n_heads, n_kv_heads, head_dim;
    uint32_t num_blocks, block_size, max_blocks;
    float scale;
    uint32_t q_off, k_off, v_off, bt_off, sl_off, qsl_off, o_off;
    uint32_t max_len;            /* max_seq_len: 0 = none */
    uint32_t t0, n_parts, p_off; /* split-K only */
} attn_pc;

/* The device's partials buffer, at least bytes long (vk_ctx.attn_scratch). */
static duet_status attn_scratch(vk_ctx *c, uint64_t bytes, duet_buffer **out)
{
    duet_status rc = DUET_OK;
    pthread_mutex_lock(&c->attn_lock);
    if (!c->attn_scratch || c->attn_scratch->size < bytes) {
        duet_buffer *b = NULL;
        duet_buffer **r = realloc(c->attn_retired, sizeof *r * (c->n_attn_retired + 1));
        if (!r) {
            rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "attention: out of host memory");
            goto out_unlock;
        }
        c->attn_retired = r;
        uint64_t size = bytes > attn_budget(c) ? bytes : attn_budget(c);
        if ((rc = duet_vk_buffer_alloc(c, size, &b))) {
            rc = duet_error_wrap(rc, "attention: the split-K partials buffer");
            goto out_unlock;
        }
        if (c->attn_scratch)
            c->attn_retired[c->n_attn_retired++] = c->attn_scratch;
        c->attn_scratch = b;
    }
out_unlock:
    *out = c->attn_scratch;
    pthread_mutex_unlock(&c->attn_lock);
    return rc;
}

/* The split path over bindings b[0..7) (q, k, v, tables, seq_lens,
 * query_start_loc, out): per chunk of tokens, attention_split over
 * (kv head x head chunk, partition, token), then attention_combine over
 * (head, token) when some row can span several partitions. */
static duet_status attention_split(vk_ctx *c, duet_stream *s, const duet_attention_args *a,
                                   attn_pc pc, vk_binding *b)
{
    duet_status rc = DUET_OK;
    uint64_t D = (uint64_t)a->head_dim;
    /* The longest row the call can hold: the table width, or the caller's
     * bound when it is smaller (a longer row is NaN at partition 0). */
    uint64_t keys = (uint64_t)a->max_blocks_per_seq * a->block_size;
    if (a->max_seq_len > 0 && (uint64_t)a->max_seq_len < keys)
        keys = (uint64_t)a->max_seq_len;
    uint64_t part = 64ull << c->attn_part_log2;
    uint64_t n_parts = keys > part ? ceil_div(keys, part) : 1;
    /* Both shaders' constant 1: log2 of the 64-key tiles per partition. */
    uint32_t part_spec = 32u * (uint32_t)c->attn_part_log2;
    uint64_t group = (uint64_t)(a->n_heads / a->n_kv_heads);
    uint64_t gx = (uint64_t)a->n_kv_heads * ceil_div(group, ATTN_GROUP);
    uint64_t per_token = 4ull * a->n_heads * n_parts * (D + 2);
    uint64_t chunk = (uint64_t)MAX_GROUPS_X;
    if (a->n_tokens <= 0)
        return DUET_OK;
    if (n_parts > MAX_GROUPS_X || (n_parts > 1 && per_token > duet_vk_max_bind(c)))
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "attention: %llu keys per sequence need %llu bytes of partials per "
                          "token; this device binds at most %llu",
                          (unsigned long long)keys, (unsigned long long)per_token,
                          (unsigned long long)duet_vk_max_bind(c));
    uint64_t fit = attn_budget(c) / per_token; /* tokens whose partials fit */
    if (n_parts > 1 && fit < chunk)
        chunk = fit ? fit : 1;
    if (chunk > (uint64_t)a->n_tokens)
        chunk = (uint64_t)a->n_tokens;
    b[7] = duet_vk_dummy_binding(c);
    pc.p_off = 0;
    if (n_parts > 1) {
        duet_buffer *scratch;
        if ((rc = attn_scratch(c, per_token * chunk, &scratch)) ||
            (rc = duet_vk_bind_words(c, "attention", "partials", (duet_addr){scratch, 0}, 0,
                                     per_token * chunk, &b[7], &pc.p_off)))
            return rc;
    }
    /* K rows as 16-byte loads: the cache binding's start and every row
     * 16-byte aligned. */
    int f16 = a->cache_type == DUET_F16;
    int vec = pc.k_off % 4 == 0 && D % (f16 ? 8 : 4) == 0;
    vk_shader sh = c->caps.split_attention == 2 ? VK_SH_ATTENTION_SPLIT_SG : VK_SH_ATTENTION_SPLIT;
    pc.n_parts = (uint32_t)n_parts;
    for (uint64_t t0 = 0; t0 < (uint64_t)a->n_tokens && rc == DUET_OK; t0 += chunk) {
        uint64_t cnt = (uint64_t)a->n_tokens - t0 < chunk ? (uint64_t)a->n_tokens - t0 : chunk;
        pc.t0 = (uint32_t)t0;
        rc = duet_vk_dispatch(c, s, sh, (uint32_t)(f16 + 2 * vec) + part_spec, b, 8, &pc,
                              sizeof pc, (uint32_t)gx, (uint32_t)n_parts, (uint32_t)cnt);
        if (rc || n_parts == 1)
            continue;
        vk_binding cb[4] = {b[7], b[4], b[5], b[6]};
        struct {
            uint32_t n_tokens, n_seqs, n_heads, head_dim, block_size, max_blocks;
            uint32_t sl_off, qsl_off, o_off, t0, n_parts, p_off, max_len;
        } cpc = {pc.n_tokens, pc.n_seqs, pc.n_heads, pc.head_dim, pc.block_size, pc.max_blocks,
                 pc.sl_off, pc.qsl_off, pc.o_off, pc.t0, pc.n_parts, pc.p_off, pc.max_len};
        rc = duet_vk_dispatch(c, s, VK_SH_ATTENTION_COMBINE, part_spec, cb, 4, &cpc, sizeof cpc,
                              (uint32_t)a->n_heads, (uint32_t)cnt, 1);
    }
    return rc;
}

duet_status duet_vk_attention(void *ctx, duet_stream *s, const duet_attention_args *a)
{
    vk_ctx *c = ctx;
    duet_status rc;
    if (a->head_dim > 256)
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "attention: head_dim %d; the Vulkan kernel handles at most 256",
                          a->head_dim);
    if (a->n_heads > MAX_GROUPS_X)
        return duet_error(DUET_ERR_UNSUPPORTED, "attention: n_heads %d exceeds %d", a->n_heads,
                          MAX_GROUPS_X);
    uint64_t cache = cache_bytes(a->cache_type, a->num_blocks, a->block_size, a->n_kv_heads,
                                 a->head_dim);
    uint64_t qbytes = 4ull * a->n_tokens * a->n_heads * a->head_dim;
    vk_binding b[8];
    attn_pc pc = {(uint32_t)a->n_tokens, (uint32_t)a->n_seqs, (uint32_t)a->n_heads,
                  (uint32_t)a->n_kv_heads, (uint32_t)a->head_dim, (uint32_t)a->num_blocks,
                  (uint32_t)a->block_size, (uint32_t)a->max_blocks_per_seq, a->scale,
                  0, 0, 0, 0, 0, 0, 0, (uint32_t)a->max_seq_len, 0, 0, 0};
    if ((rc = duet_vk_bind_words(c, "attention", "q", a->q, 0, qbytes, &b[0], &pc.q_off)) ||
        (rc = duet_vk_bind_words(c, "attention", "k_cache", a->k_cache, 0, cache, &b[1],
                                 &pc.k_off)) ||
        (rc = duet_vk_bind_words(c, "attention", "v_cache", a->v_cache, 0, cache, &b[2],
                                 &pc.v_off)) ||
        (rc = duet_vk_bind_words(c, "attention", "block_tables", a->block_tables, 0,
                                 4ull * a->n_seqs * a->max_blocks_per_seq, &b[3], &pc.bt_off)) ||
        (rc = duet_vk_bind_words(c, "attention", "seq_lens", a->seq_lens, 0, 4ull * a->n_seqs,
                                 &b[4], &pc.sl_off)) ||
        (rc = duet_vk_bind_words(c, "attention", "query_start_loc", a->query_start_loc, 0,
                                 4ull * (a->n_seqs + 1), &b[5], &pc.qsl_off)) ||
        (rc = duet_vk_bind_words(c, "attention", "out", a->out, 0, qbytes, &b[6], &pc.o_off)))
        return rc;
    /* One path per device for every row (a row's bits must not depend on
     * its batch): split-K where caps.split_attention says so. */
    if (c->caps.split_attention)
        return attention_split(c, s, a, pc, b);
    uint32_t gy = a->n_tokens < MAX_GROUPS_X ? (uint32_t)a->n_tokens : MAX_GROUPS_X;
    uint32_t gz = (uint32_t)ceil_div((uint64_t)a->n_tokens, gy);
    return duet_vk_dispatch(c, s, VK_SH_ATTENTION, a->cache_type == DUET_F16, b, 7, &pc,
                            offsetof(attn_pc, t0), (uint32_t)a->n_heads, gy, gz);
}
