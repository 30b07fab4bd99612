/*
 * device.c — the duet_dev_* wrappers: the only way the runtime reaches a
 * backend. They check arguments against the buffers' real sizes (so a bad
 * shape is caught here, with a message, instead of corrupting memory in a
 * kernel), and in test builds fail the Nth call on request so the tests
 * can walk every cleanup path.
 */
#include "device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* ---- fault injection ------------------------------------------------------ */

void duet_dev_fault_inject(duet_device *d, int nth)
{
    d->fault_countdown = nth;
    d->fault_calls = 0;
}

int duet_dev_fault_calls(const duet_device *d) { return d->fault_calls; }

/* Every fallible wrapper starts here. Returns non-zero when this call must
 * fail (test builds only). */
static int fault_now(duet_device *d, const char *what)
{
#ifdef DUET_TESTING
    d->fault_calls++;
    if (d->fault_countdown > 0 && --d->fault_countdown == 0) {
        duet_error(DUET_ERR_OUT_OF_MEMORY, "injected fault in %s", what);
        return 1;
    }
#else
    (void)d;
    (void)what;
#endif
    return 0;
}

/* ---- argument checks ------------------------------------------------------ */

/* [addr.offset, addr.offset + bytes) must lie inside addr.buf. */
static duet_status check_range(duet_device *d, const char *op, const char *name,
                               duet_addr a, uint64_t bytes)
{
    if (!a.buf)
        return duet_error(DUET_ERR_INVALID_ARG, "%s: operand '%s' has no buffer", op, name);
    size_t size = d->ops->buffer_size(d->ctx, a.buf);
    if (a.offset > size || bytes > size - a.offset)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "%s: operand '%s' needs %llu bytes at offset %zu, but its buffer "
                          "holds %zu",
                          op, name, (unsigned long long)bytes, a.offset, size);
    return DUET_OK;
}

static duet_status check_optional(duet_device *d, const char *op, const char *name,
                                  duet_addr a, uint64_t bytes)
{
    return a.buf ? check_range(d, op, name, a, bytes) : DUET_OK;
}

static duet_status check_positive(const char *op, const char *name, int64_t v)
{
    if (v <= 0)
        return duet_error(DUET_ERR_INVALID_ARG, "%s: %s is %lld; it must be > 0", op, name,
                          (long long)v);
    return DUET_OK;
}

static duet_status check_weight_type(const char *op, duet_dtype t, int64_t row)
{
    const duet_dtype_info *info = duet_dtype_get(t);
    if (!info || !info->is_weight_type)
        return duet_error(DUET_ERR_UNSUPPORTED, "%s: weight type %d is not one of %s", op,
                          (int)t, duet_dtype_weight_names());
    if (row % info->block_elems)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "%s: row length %lld is not a multiple of %s's block of %d", op,
                          (long long)row, info->name, info->block_elems);
    return DUET_OK;
}

static duet_status check_cache_type(const char *op, duet_dtype t)
{
    if (t != DUET_F32 && t != DUET_F16)
        return duet_error(DUET_ERR_UNSUPPORTED, "%s: KV cache type %d is not F32 or F16", op,
                          (int)t);
    return DUET_OK;
}

/* Whether a's first an bytes and b's first bn bytes share a byte (never
 * when either is absent). */
static int overlaps(duet_addr a, uint64_t an, duet_addr b, uint64_t bn)
{
    return a.buf && a.buf == b.buf && a.offset < b.offset + bn && b.offset < a.offset + an;
}

static uint64_t cache_elem_bytes(duet_dtype t) { return t == DUET_F16 ? 2 : 4; }

/* Two operands of n bytes each overlap and are not the very same range
 * (which in-place ops allow). */
static int partial_overlap(duet_addr a, duet_addr b, uint64_t n)
{
    return overlaps(a, n, b, n) && a.offset != b.offset;
}

/* A chain of checks: the first failure wins and keeps its message. */
#define CHECK(expr)                                                                        \
    do {                                                                                   \
        if (rc == DUET_OK)                                                                 \
            rc = (expr);                                                                   \
    } while (0)

/* ---- objects --------------------------------------------------------------- */

void duet_dev_info(duet_device *d, duet_device_info *out)
{
    memset(out, 0, sizeof *out);
    d->ops->get_info(d->ctx, out);
}

duet_status duet_dev_buffer_alloc(duet_device *d, size_t size, duet_buffer **out)
{
    *out = NULL;
    if (size == 0)
        return duet_error(DUET_ERR_INVALID_ARG, "buffer_alloc: size 0");
    if (fault_now(d, "buffer_alloc"))
        return DUET_ERR_OUT_OF_MEMORY;
    return d->ops->buffer_alloc(d->ctx, size, out);
}

void duet_dev_buffer_free(duet_device *d, duet_buffer *buf)
{
    if (d && buf)
        d->ops->buffer_free(d->ctx, buf);
}

size_t duet_dev_buffer_size(duet_device *d, const duet_buffer *buf)
{
    return d->ops->buffer_size(d->ctx, buf);
}

duet_status duet_dev_buffer_write(duet_device *d, duet_addr dst, const void *src, size_t n)
{
    duet_status rc = check_range(d, "buffer_write", "dst", dst, n);
    if (rc == DUET_OK && fault_now(d, "buffer_write"))
        rc = DUET_ERR_OUT_OF_MEMORY;
    return rc ? rc : d->ops->buffer_write(d->ctx, dst, src, n);
}

duet_status duet_dev_buffer_read(duet_device *d, duet_addr src, void *dst, size_t n)
{
    duet_status rc = check_range(d, "buffer_read", "src", src, n);
    if (rc == DUET_OK && fault_now(d, "buffer_read"))
        rc = DUET_ERR_OUT_OF_MEMORY;
    return rc ? rc : d->ops->buffer_read(d->ctx, src, dst, n);
}

duet_status duet_dev_buffer_from_host(duet_device *d, void *host, size_t size,
                                      duet_buffer **out)
{
    *out = NULL;
    if (fault_now(d, "buffer_from_host"))
        return DUET_ERR_OUT_OF_MEMORY;
    if (d->ops->buffer_wrap_host)
        return d->ops->buffer_wrap_host(d->ctx, host, size, out);
    duet_buffer *buf = NULL;
    duet_status rc = d->ops->buffer_alloc(d->ctx, size, &buf);
    if (rc)
        return rc;
    rc = d->ops->buffer_write(d->ctx, (duet_addr){buf, 0}, host, size);
    if (rc) {
        d->ops->buffer_free(d->ctx, buf);
        return rc;
    }
    *out = buf;
    return DUET_OK;
}

duet_status duet_dev_stream_create(duet_device *d, duet_stream **out)
{
    *out = NULL;
    if (fault_now(d, "stream_create"))
        return DUET_ERR_OUT_OF_MEMORY;
    return d->ops->stream_create(d->ctx, out);
}

void duet_dev_stream_destroy(duet_device *d, duet_stream *s)
{
    if (d && s)
        d->ops->stream_destroy(d->ctx, s);
}

duet_status duet_dev_stream_begin(duet_device *d, duet_stream *s)
{
    if (fault_now(d, "stream_begin"))
        return DUET_ERR_OUT_OF_MEMORY;
    return d->ops->stream_begin(d->ctx, s);
}

duet_status duet_dev_stream_submit(duet_device *d, duet_stream *s)
{
    if (fault_now(d, "stream_submit"))
        return DUET_ERR_OUT_OF_MEMORY;
    return d->ops->stream_submit(d->ctx, s);
}

duet_status duet_dev_stream_wait(duet_device *d, duet_stream *s)
{
    return d->ops->stream_wait(d->ctx, s);
}

duet_status duet_dev_upload(duet_device *d, duet_stream *s, duet_addr dst, const void *src,
                            size_t n)
{
    duet_status rc = check_range(d, "upload", "dst", dst, n);
    if (rc == DUET_OK && fault_now(d, "upload"))
        rc = DUET_ERR_OUT_OF_MEMORY;
    return rc ? rc : d->ops->upload(d->ctx, s, dst, src, n);
}

duet_status duet_dev_download(duet_device *d, duet_stream *s, duet_addr src, void *dst,
                              size_t n)
{
    duet_status rc = check_range(d, "download", "src", src, n);
    if (rc == DUET_OK && fault_now(d, "download"))
        rc = DUET_ERR_OUT_OF_MEMORY;
    return rc ? rc : d->ops->download(d->ctx, s, src, dst, n);
}

/* ---- ops --------------------------------------------------------------------- */

/* Each op wrapper: validate shapes and operand ranges, maybe inject a
 * fault, then record through the table. */
#define RECORD(slot)                                                                       \
    do {                                                                                   \
        if (rc == DUET_OK && !d->ops->slot)                                                \
            rc = duet_error(DUET_ERR_UNSUPPORTED, "this device has no '%s' op yet", #slot);  \
        if (rc == DUET_OK && fault_now(d, #slot))                                          \
            rc = DUET_ERR_OUT_OF_MEMORY;                                                   \
        return rc ? rc : d->ops->slot(d->ctx, s, a);                                       \
    } while (0)

duet_status duet_dev_embed(duet_device *d, duet_stream *s, const duet_embed_args *a)
{
    duet_status rc = DUET_OK;
    CHECK(check_positive("embed", "n_tokens", a->n_tokens));
    CHECK(check_positive("embed", "vocab", a->vocab));
    CHECK(check_positive("embed", "dim", a->dim));
    CHECK(check_weight_type("embed", a->table_type, a->dim));
    if (rc == DUET_OK) {
        uint64_t row = duet_dtype_row_bytes(a->table_type, a->dim);
        CHECK(check_range(d, "embed", "ids", a->ids, 4ull * a->n_tokens));
        CHECK(check_range(d, "embed", "table", a->table, row * a->vocab));
        CHECK(check_range(d, "embed", "out", a->out, 4ull * a->n_tokens * a->dim));
        if (a->n_prev < 0)
            rc = duet_error(DUET_ERR_INVALID_ARG, "embed: n_prev is %d; it must be >= 0",
                            a->n_prev);
        CHECK(check_optional(d, "embed", "prev_tokens", a->prev_tokens, 4ull * a->n_prev));
    }
    RECORD(embed);
}

duet_status duet_dev_rms_norm(duet_device *d, duet_stream *s, const duet_rms_norm_args *a)
{
    duet_status rc = DUET_OK;
    CHECK(check_positive("rms_norm", "n_rows", a->n_rows));
    CHECK(check_positive("rms_norm", "dim", a->dim));
    if (rc == DUET_OK && !(a->eps > 0.0f))
        rc = duet_error(DUET_ERR_INVALID_ARG, "rms_norm: eps %g must be > 0", a->eps);
    CHECK(check_range(d, "rms_norm", "x", a->x, 4ull * a->n_rows * a->dim));
    CHECK(check_range(d, "rms_norm", "weight", a->weight, 4ull * a->dim));
    CHECK(check_range(d, "rms_norm", "out", a->out, 4ull * a->n_rows * a->dim));
    CHECK(check_optional(d, "rms_norm", "residual", a->residual, 4ull * a->n_rows * a->dim));
    if (rc == DUET_OK) {
        /* Each of these operands spans the same number of bytes. */
        uint64_t n = 4ull * a->n_rows * a->dim;
        if (partial_overlap(a->out, a->x, n))
            rc = duet_error(DUET_ERR_INVALID_ARG,
                            "rms_norm: out (offset %zu) overlaps x (offset %zu) without being "
                            "equal to it", a->out.offset, a->x.offset);
        else if (overlaps(a->residual, n, a->x, n))
            rc = duet_error(DUET_ERR_INVALID_ARG,
                            "rms_norm: residual (offset %zu) overlaps x (offset %zu, %llu "
                            "bytes), which the residual add writes",
                            a->residual.offset, a->x.offset, (unsigned long long)n);
        else if (a->residual.buf && partial_overlap(a->out, a->residual, n))
            rc = duet_error(DUET_ERR_INVALID_ARG,
                            "rms_norm: out (offset %zu) overlaps residual (offset %zu) without "
                            "being equal to it", a->out.offset, a->residual.offset);
    }
    RECORD(rms_norm);
}

duet_status duet_dev_matmul(duet_device *d, duet_stream *s, const duet_matmul_args *a)
{
    duet_status rc = DUET_OK;
    CHECK(check_positive("matmul", "n_rows", a->n_rows));
    CHECK(check_positive("matmul", "k", a->k));
    CHECK(check_positive("matmul", "n", a->n));
    CHECK(check_weight_type("matmul", a->w_type, a->k));
    if (rc == DUET_OK) {
        uint64_t row = duet_dtype_row_bytes(a->w_type, a->k);
        CHECK(check_range(d, "matmul", "x", a->x, 4ull * a->n_rows * a->k));
        CHECK(check_range(d, "matmul", "w", a->w, row * a->n));
        CHECK(check_optional(d, "matmul", "bias", a->bias, 4ull * a->n));
        CHECK(check_range(d, "matmul", "out", a->out, 4ull * a->n_rows * a->n));
        CHECK(check_optional(d, "matmul", "w_up", a->w_up, row * a->n));
        if (rc == DUET_OK && a->w_up.buf && a->bias.buf)
            rc = duet_error(DUET_ERR_INVALID_ARG,
                            "matmul: bias is given with w_up; the gated form takes no bias");
        /* The gated form may write its gate product before it reads w_up. */
        if (rc == DUET_OK && overlaps(a->out, 4ull * a->n_rows * a->n, a->w_up, row * a->n))
            rc = duet_error(DUET_ERR_INVALID_ARG, "matmul: out overlaps w_up");
    }
    if (rc == DUET_OK && overlaps(a->x, 4ull * a->n_rows * a->k, a->out, 4ull * a->n_rows * a->n))
        rc = duet_error(DUET_ERR_INVALID_ARG, "matmul: out overlaps x");
    RECORD(matmul);
}

/* A rope spec's parameters and operands (positions for n_tokens, the
 * optional freq_factors); op and the field prefix name it in messages. */
static duet_status check_rope_spec(duet_device *d, const char *op, const char *prefix,
                                   const duet_rope_spec *r, int n_tokens, int head_dim)
{
    char name[48];
    if (r->rot_dim <= 0 || r->rot_dim > head_dim || r->rot_dim % 2)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "%s: %srot_dim %d must be even and in (0, head_dim %d]", op, prefix,
                          r->rot_dim, head_dim);
    if (r->mode != DUET_ROPE_NORMAL && r->mode != DUET_ROPE_NEOX)
        return duet_error(DUET_ERR_INVALID_ARG, "%s: %smode %d is not NORMAL (0) or NEOX (1)",
                          op, prefix, (int)r->mode);
    if (!(r->theta_base > 0.0f))
        return duet_error(DUET_ERR_INVALID_ARG, "%s: %stheta_base %g must be > 0", op, prefix,
                          r->theta_base);
    snprintf(name, sizeof name, "%spositions", prefix);
    duet_status rc = check_range(d, op, name, r->positions, 4ull * n_tokens);
    snprintf(name, sizeof name, "%sfreq_factors", prefix);
    CHECK(check_optional(d, op, name, r->freq_factors, 4ull * (r->rot_dim / 2)));
    return rc;
}

duet_status duet_dev_rope(duet_device *d, duet_stream *s, const duet_rope_args *a)
{
    duet_status rc = DUET_OK;
    int has_k = a->k.buf != NULL;
    CHECK(check_positive("rope", "n_tokens", a->n_tokens));
    CHECK(check_positive("rope", "n_heads", a->n_heads));
    if (has_k)
        CHECK(check_positive("rope", "n_kv_heads", a->n_kv_heads));
    CHECK(check_positive("rope", "head_dim", a->head_dim));
    CHECK(check_rope_spec(d, "rope", "", &a->rope, a->n_tokens, a->head_dim));
    uint64_t t = (uint64_t)a->n_tokens;
    uint64_t qn = 4 * t * a->n_heads * a->head_dim, kn = 4 * t * a->n_kv_heads * a->head_dim;
    CHECK(check_range(d, "rope", "q", a->q, qn));
    if (has_k)
        CHECK(check_range(d, "rope", "k", a->k, kn));
    if (rc == DUET_OK && has_k && overlaps(a->q, qn, a->k, kn))
        rc = duet_error(DUET_ERR_INVALID_ARG, "rope: k (offset %zu) overlaps q (offset %zu)",
                        a->k.offset, a->q.offset);
    RECORD(rope);
}

duet_status duet_dev_kv_write(duet_device *d, duet_stream *s, const duet_kv_write_args *a)
{
    duet_status rc = DUET_OK;
    CHECK(check_positive("kv_write", "n_tokens", a->n_tokens));
    CHECK(check_positive("kv_write", "n_kv_heads", a->n_kv_heads));
    CHECK(check_positive("kv_write", "head_dim", a->head_dim));
    CHECK(check_positive("kv_write", "num_blocks", a->num_blocks));
    CHECK(check_positive("kv_write", "block_size", a->block_size));
    CHECK(check_cache_type("kv_write", a->cache_type));
    uint64_t row = 4ull * a->n_kv_heads * a->head_dim;
    uint64_t cache = cache_elem_bytes(a->cache_type) * a->num_blocks * a->block_size *
                     a->n_kv_heads * a->head_dim;
    CHECK(check_range(d, "kv_write", "k", a->k, row * a->n_tokens));
    CHECK(check_range(d, "kv_write", "v", a->v, row * a->n_tokens));
    CHECK(check_range(d, "kv_write", "slot_mapping", a->slot_mapping, 4ull * a->n_tokens));
    CHECK(check_range(d, "kv_write", "k_cache", a->k_cache, cache));
    CHECK(check_range(d, "kv_write", "v_cache", a->v_cache, cache));
    if (a->rope.positions.buf) {
        const duet_rope_spec *r = &a->rope;
        CHECK(check_rope_spec(d, "kv_write", "rope.", r, a->n_tokens, a->head_dim));
        /* The rotation reads these while the caches are written. */
        uint64_t pn = 4ull * a->n_tokens, fn = 4ull * (r->rot_dim / 2);
        const char *hit = NULL;
        if (overlaps(r->positions, pn, a->k_cache, cache) ||
            overlaps(r->positions, pn, a->v_cache, cache))
            hit = "positions";
        else if (overlaps(r->freq_factors, fn, a->k_cache, cache) ||
                 overlaps(r->freq_factors, fn, a->v_cache, cache))
            hit = "freq_factors";
        if (rc == DUET_OK && hit)
            rc = duet_error(DUET_ERR_INVALID_ARG, "kv_write: rope.%s overlaps a KV cache", hit);
    }
    RECORD(kv_write);
}

duet_status duet_dev_attention(duet_device *d, duet_stream *s, const duet_attention_args *a)
{
    duet_status rc = DUET_OK;
    CHECK(check_positive("attention", "n_tokens", a->n_tokens));
    CHECK(check_positive("attention", "n_seqs", a->n_seqs));
    CHECK(check_positive("attention", "n_heads", a->n_heads));
    CHECK(check_positive("attention", "n_kv_heads", a->n_kv_heads));
    CHECK(check_positive("attention", "head_dim", a->head_dim));
    CHECK(check_positive("attention", "num_blocks", a->num_blocks));
    CHECK(check_positive("attention", "block_size", a->block_size));
    CHECK(check_positive("attention", "max_blocks_per_seq", a->max_blocks_per_seq));
    CHECK(check_cache_type("attention", a->cache_type));
    if (rc == DUET_OK && a->n_heads % a->n_kv_heads)
        rc = duet_error(DUET_ERR_INVALID_ARG,
                        "attention: n_heads %d is not a multiple of n_kv_heads %d", a->n_heads,
                        a->n_kv_heads);
    if (rc == DUET_OK && a->max_seq_len < 0)
        rc = duet_error(DUET_ERR_INVALID_ARG,
                        "attention: max_seq_len is %d; it must be >= 0 (0 = no bound)",
                        a->max_seq_len);
    uint64_t qrow = 4ull * a->n_heads * a->head_dim;
    uint64_t cache = cache_elem_bytes(a->cache_type) * a->num_blocks * a->block_size *
                     a->n_kv_heads * a->head_dim;
    CHECK(check_range(d, "attention", "q", a->q, qrow * a->n_tokens));
    CHECK(check_range(d, "attention", "k_cache", a->k_cache, cache));
    CHECK(check_range(d, "attention", "v_cache", a->v_cache, cache));
    CHECK(check_range(d, "attention", "block_tables", a->block_tables,
                      4ull * a->n_seqs * a->max_blocks_per_seq));
    CHECK(check_range(d, "attention", "seq_lens", a->seq_lens, 4ull * a->n_seqs));
    CHECK(check_range(d, "attention", "query_start_loc", a->query_start_loc,
                      4ull * (a->n_seqs + 1)));
    CHECK(check_range(d, "attention", "out", a->out, qrow * a->n_tokens));
    RECORD(attention);
}

duet_status duet_dev_swiglu(duet_device *d, duet_stream *s, const duet_swiglu_args *a)
{
    duet_status rc = DUET_OK;
    CHECK(check_positive("swiglu", "n_rows", a->n_rows));
    CHECK(check_positive("swiglu", "dim", a->dim));
    uint64_t n = 4ull * a->n_rows * a->dim;
    CHECK(check_range(d, "swiglu", "gate", a->gate, n));
    CHECK(check_range(d, "swiglu", "up", a->up, n));
    CHECK(check_range(d, "swiglu", "out", a->out, n));
    RECORD(swiglu);
}

duet_status duet_dev_add(duet_device *d, duet_stream *s, const duet_add_args *a)
{
    duet_status rc = DUET_OK;
    CHECK(check_positive("add", "n", a->n));
    CHECK(check_range(d, "add", "a", a->a, 4ull * a->n));
    CHECK(check_range(d, "add", "b", a->b, 4ull * a->n));
    RECORD(add);
}

duet_status duet_dev_gather_rows(duet_device *d, duet_stream *s,
                                 const duet_gather_rows_args *a)
{
    duet_status rc = DUET_OK;
    CHECK(check_positive("gather_rows", "n_in", a->n_in));
    CHECK(check_positive("gather_rows", "n_out", a->n_out));
    CHECK(check_positive("gather_rows", "dim", a->dim));
    CHECK(check_range(d, "gather_rows", "x", a->x, 4ull * a->n_in * a->dim));
    CHECK(check_range(d, "gather_rows", "rows", a->rows, 4ull * a->n_out));
    CHECK(check_range(d, "gather_rows", "out", a->out, 4ull * a->n_out * a->dim));
    RECORD(gather_rows);
}

duet_status duet_dev_sample(duet_device *d, duet_stream *s, const duet_sample_args *a)
{
    duet_status rc = DUET_OK;
    CHECK(check_positive("sample", "n_rows", a->n_rows));
    CHECK(check_positive("sample", "vocab", a->vocab));
    if (a->vocab > (1 << 24)) /* keeps the sampler's 64-bit mass sums exact */
        return duet_error(DUET_ERR_INVALID_ARG,
                          "sample: vocab is %d; the sampler supports at most 16777216 tokens",
                          a->vocab);
    if (a->n_edits < 0)
        return duet_error(DUET_ERR_INVALID_ARG, "sample: n_edits is %d; it must be >= 0",
                          a->n_edits);
    uint64_t plane = 4ull * a->n_rows * a->vocab;
    CHECK(check_range(d, "sample", "logits", a->logits, plane));
    CHECK(check_range(d, "sample", "rows", a->rows, sizeof(duet_sample_row) * (uint64_t)a->n_rows));
    if (a->n_edits > 0)
        CHECK(check_range(d, "sample", "edits", a->edits,
                          sizeof(duet_sample_edit) * (uint64_t)a->n_edits));
    CHECK(check_range(d, "sample", "work", a->work, plane));
    CHECK(check_range(d, "sample", "results", a->results,
                      sizeof(duet_sample_result) * (uint64_t)a->n_rows));
    CHECK(check_optional(d, "sample", "tokens_out", a->tokens_out, 4ull * a->n_rows));
    RECORD(sample);
}

/* ---- opening a device ------------------------------------------------------ */

duet_status duet_device_open(const char *spec, const duet_device_options *opts,
                             duet_device **out)
{
    duet_device_options defaults = {0};
    *out = NULL;
    if (!opts)
        opts = &defaults;
    if (!spec || !*spec)
        spec = "auto";
    /* Policy lives here, in one place: auto prefers CUDA, then a non-CPU
     * Vulkan device, then the CPU. */
    if (strcmp(spec, "cpu") == 0)
        return duet_cpu_device_create(opts, out);
    if (strcmp(spec, "auto") == 0) {
#ifdef DUET_HAVE_VULKAN
        /* Only a real GPU beats the CPU backend (lavapipe, a CPU-type
         * device, never does), and only a backend with every op the
         * engine needs; any failure moves on. */
        if (duet_vulkan_device_create(-1, opts, 0, out) == DUET_OK) {
            if ((*out)->ops->sample)
                return DUET_OK;
            duet_device_close(*out);
            *out = NULL;
        }
#endif
        return duet_cpu_device_create(opts, out);
    }
    if (strncmp(spec, "vulkan", 6) == 0 && (spec[6] == 0 || spec[6] == ':')) {
        int index = -1;
        if (spec[6] == ':') {
            char *end;
            long v = strtol(spec + 7, &end, 10);
            if (end == spec + 7 || *end || v < 0 || v > 255)
                return duet_error(DUET_ERR_INVALID_ARG,
                                  "device '%s': the index after 'vulkan:' must be 0..255", spec);
            index = (int)v;
        }
#ifdef DUET_HAVE_VULKAN
        return duet_vulkan_device_create(index, opts, 1, out);
#else
        (void)index;
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "device '%s': this build of duet has no Vulkan backend (glslc was not "
                          "found at build time); available: auto, cpu",
                          spec);
#endif
    }
    if (strncmp(spec, "cuda", 4) == 0)
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "device '%s': this build of duet has no CUDA backend; available: "
                          "auto, cpu%s",
                          spec,
#ifdef DUET_HAVE_VULKAN
                          ", vulkan[:N]"
#else
                          ""
#endif
        );
    return duet_error(DUET_ERR_INVALID_ARG,
                      "device '%s' is not one of auto, cpu, vulkan[:N], cuda[:N]", spec);
}

void duet_device_close(duet_device *dev)
{
    if (!dev)
        return;
    dev->ops->destroy(dev->ctx);
    free(dev);
}
