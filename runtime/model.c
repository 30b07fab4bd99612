/*
 * model.c — binding a GGUF's weights to a device, the run state, and the
 * Llama forward pass over one flattened batch.
 */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* ---- weights ------------------------------------------------------------ */

/* Find a tensor and check its type and shape [rows][row_len]. */
static duet_status bind_tensor(const duet_gguf *g, const duet_model_weights *w, const char *name,
                               int64_t row_len, int64_t rows, int optional, duet_tensor *out)
{
    const duet_gguf_tensor *t = duet_gguf_find_tensor(g, name);
    memset(out, 0, sizeof *out);
    if (!t) {
        if (optional)
            return DUET_OK;
        return duet_error(DUET_ERR_FORMAT, "tensor '%s' is missing from the model", name);
    }
    const duet_dtype_info *info = duet_dtype_get(t->type);
    if (!info || !info->is_weight_type)
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "tensor '%s' has type %d; duet supports weight types %s", name,
                          (int)t->type, duet_dtype_weight_names());
    int64_t t_rows = t->ne[1] * t->ne[2] * t->ne[3];
    if (t->ne[0] != row_len || t_rows != rows)
        return duet_error(DUET_ERR_FORMAT,
                          "tensor '%s' has shape [%lld][%lld]; the model's configuration "
                          "needs [%lld][%lld]",
                          name, (long long)t_rows, (long long)t->ne[0], (long long)rows,
                          (long long)row_len);
    if (rows == 1 && t->type != DUET_F32)
        return duet_error(DUET_ERR_UNSUPPORTED, "vector tensor '%s' must be F32, not %s", name,
                          info->name);
    uint64_t at = duet_gguf_data_offset(g) + t->offset;
    const duet_weight_piece *pc = NULL;
    for (int i = 0; i < w->n_pieces && !pc; i++)
        if (at >= w->pieces[i].start && at + t->nbytes <= w->pieces[i].start + w->pieces[i].size)
            pc = &w->pieces[i];
    if (!pc) /* place_file puts every tensor in a piece */
        return duet_error(DUET_ERR_INTERNAL, "tensor '%s' is in no weight buffer", name);
    out->addr = (duet_addr){pc->buf, (size_t)(at - pc->start)};
    out->type = t->type;
    out->ne[0] = row_len;
    out->ne[1] = rows;
    return DUET_OK;
}

static duet_status bind_layer(const duet_gguf *g, const duet_model_config *c,
                              const duet_model_weights *w, int l, duet_layer_weights *lw)
{
    char name[96];
    duet_status rc = DUET_OK;
    int64_t e = c->dim, qd = (int64_t)c->n_heads * c->head_dim;
    int64_t kvd = (int64_t)c->n_kv_heads * c->head_dim, f = c->ffn_dim;
    int bias_optional = !c->has_qkv_bias;
#define BIND(field, suffix, row_len, rows, opt)                                            \
    do {                                                                                   \
        snprintf(name, sizeof name, "blk.%d.%s", l, suffix);                               \
        if (rc == DUET_OK)                                                                 \
            rc = bind_tensor(g, w, name, row_len, rows, opt, &lw->field);                  \
    } while (0)
    BIND(attn_norm, "attn_norm.weight", e, 1, 0);
    BIND(wq, "attn_q.weight", e, qd, 0);
    BIND(wk, "attn_k.weight", e, kvd, 0);
    BIND(wv, "attn_v.weight", e, kvd, 0);
    BIND(bq, "attn_q.bias", qd, 1, bias_optional);
    BIND(bk, "attn_k.bias", kvd, 1, bias_optional);
    BIND(bv, "attn_v.bias", kvd, 1, bias_optional);
    BIND(wo, "attn_output.weight", qd, e, 0);
    BIND(ffn_norm, "ffn_norm.weight", e, 1, 0);
    BIND(w_gate, "ffn_gate.weight", e, f, 0);
    BIND(w_up, "ffn_up.weight", e, f, 0);
    BIND(w_down, "ffn_down.weight", f, e, 0);
#undef BIND
    return rc;
}

/* RoPE frequency factors: the file's rope_freqs tensor (llama3 GGUFs carry
 * it), else computed from the scaling metadata, else none. */
static duet_status bind_rope_freqs(const duet_gguf *g, const duet_model_config *c,
                                   duet_device *dev, duet_model_weights *w)
{
    duet_status rc = bind_tensor(g, w, "rope_freqs.weight", c->rope_dim / 2, 1, 1, &w->rope_freqs);
    if (rc || w->rope_freqs.addr.buf || c->rope_scaling == DUET_ROPE_SCALING_NONE)
        return rc;
    int n = c->rope_dim / 2;
    float *factors = malloc(sizeof(float) * n);
    if (!factors)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "rope factors: out of memory");
    if (c->rope_scaling == DUET_ROPE_SCALING_LLAMA3) {
        duet_rope_llama3_factors(c, factors);
    } else {
        for (int i = 0; i < n; i++)
            factors[i] = c->rope_scale;
    }
    rc = duet_dev_buffer_alloc(dev, sizeof(float) * n, &w->aux_buf);
    if (rc == DUET_OK)
        rc = duet_dev_buffer_write(dev, (duet_addr){w->aux_buf, 0}, factors, sizeof(float) * n);
    free(factors);
    w->rope_freqs = (duet_tensor){{w->aux_buf, 0}, DUET_F32, {n, 1}};
    return rc;
}

typedef struct byte_range {
    uint64_t lo, hi;
} byte_range;

static int by_start(const void *a, const void *b)
{
    const byte_range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Put the file's bytes on the device. One buffer over the whole file when
 * the device has no allocation limit or the file fits it (the CPU backend
 * wraps the mapping without copying, GPU backends upload it). Otherwise
 * runs of whole tensors in file order, each run one buffer within the
 * limit, so that no weight straddles two allocations: a buffer larger than
 * one allocation is chunks that overlap (Vulkan: by up to half of each), so
 * one buffer over an 8B model's 16 GB file would take 32 GB of a GPU with
 * 4 GiB allocations. A tensor larger than the limit is a run of its own. */
static duet_status place_file(const duet_gguf *g, duet_device *dev, duet_model_weights *w)
{
    duet_device_info info;
    duet_dev_info(dev, &info);
    uint64_t file = duet_gguf_file_size(g), cap = info.max_alloc;
    int64_t n = duet_gguf_n_tensors(g);
    byte_range *r = malloc(sizeof *r * (size_t)(n > 0 ? n : 1));
    w->pieces = calloc((size_t)(n > 0 ? n : 1), sizeof *w->pieces);
    if (!r || !w->pieces) {
        free(r);
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "model: out of memory for %lld tensors",
                          (long long)n);
    }
    int64_t m = 0;
    if (!cap || file <= cap || n == 0) {
        r[m++] = (byte_range){0, file};
    } else {
        for (int64_t i = 0; i < n; i++) {
            const duet_gguf_tensor *t = duet_gguf_tensor_at(g, i);
            uint64_t lo = duet_gguf_data_offset(g) + t->offset;
            r[i] = (byte_range){lo, lo + t->nbytes};
        }
        qsort(r, (size_t)n, sizeof *r, by_start);
        for (int64_t i = 0; i < n; m++) { /* merge runs into r[m] */
            byte_range run = r[i++];
            for (; i < n; i++) {
                uint64_t hi = r[i].hi > run.hi ? r[i].hi : run.hi;
                if (hi - run.lo > cap)
                    break;
                run.hi = hi;
            }
            r[m] = run;
        }
    }
    duet_status rc = DUET_OK;
    const char *base = duet_gguf_base(g);
    for (int64_t i = 0; i < m && rc == DUET_OK; i++) {
        duet_weight_piece *p = &w->pieces[w->n_pieces];
        *p = (duet_weight_piece){NULL, r[i].lo, r[i].hi - r[i].lo};
        rc = duet_dev_buffer_from_host(dev, (void *)(base + p->start), p->size, &p->buf);
        if (rc == DUET_OK)
            w->n_pieces++;
        else if (m > 1)
            rc = duet_error_wrap(rc, "weight buffer %lld of %lld (%llu bytes)",
                                 (long long)i + 1, (long long)m,
                                 (unsigned long long)p->size);
    }
    free(r);
    return rc;
}

duet_status duet_model_weights_load(const duet_gguf *g, const duet_model_config *c,
                                    duet_device *dev, duet_model_weights *w)
{
    duet_status rc;
    memset(w, 0, sizeof *w);
    if ((rc = place_file(g, dev, w))) {
        duet_model_weights_release(dev, w);
        return duet_error_wrap(rc, "placing the model's weights on the device");
    }
    w->layers = calloc((size_t)c->n_layers, sizeof *w->layers);
    if (!w->layers) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "model: out of memory for %d layers",
                        c->n_layers);
        goto out_release;
    }
    if ((rc = bind_tensor(g, w, "token_embd.weight", c->dim, c->vocab, 0, &w->tok_embd)) ||
        (rc = bind_tensor(g, w, "output_norm.weight", c->dim, 1, 0, &w->out_norm)) ||
        (rc = bind_tensor(g, w, "output.weight", c->dim, c->vocab, 1, &w->lm_head)))
        goto out_release;
    if (c->tied_embeddings)
        w->lm_head = w->tok_embd;
    for (int l = 0; l < c->n_layers; l++)
        if ((rc = bind_layer(g, c, w, l, &w->layers[l])))
            goto out_release;
    if ((rc = bind_rope_freqs(g, c, dev, w)))
        goto out_release;
    return DUET_OK;

out_release:
    duet_model_weights_release(dev, w);
    return rc;
}

void duet_model_weights_release(duet_device *dev, duet_model_weights *w)
{
    if (!w)
        return;
    duet_dev_buffer_free(dev, w->aux_buf);
    for (int i = 0; i < w->n_pieces; i++)
        duet_dev_buffer_free(dev, w->pieces[i].buf);
    free(w->pieces);
    free(w->layers);
    memset(w, 0, sizeof *w);
}

/* ---- run state ----------------------------------------------------------- */

struct duet_runner {
    duet_device *dev;
    const duet_model_config *c;
    const duet_model_weights *w;
    duet_runner_options o;
    duet_stream *streams[2]; /* alternate, so step N+1 can be recorded and
                                queued while step N runs */
    duet_stream *stream;     /* the one being recorded */
    int next;                /* the stream the next step records into */
    int inflight[2], n_inflight; /* submitted, not yet waited: oldest first */
    int prev_rows;           /* tokens the last submitted step sampled */
    duet_buffer *scratch;  /* activations, see the offsets below */
    duet_buffer **kv;      /* [n_layers][2]: K and V of each layer, one buffer
                              each (so each fits one allocation on a GPU),
                              [num_blocks][block_size][Hkv][D] */
    size_t kv_layer_bytes; /* one of K or V of one layer */
    /* Offsets into scratch. */
    size_t x, xn, q, k, v, att, gate, up, last, logits;
    size_t tokens, positions, slots, qsl, seq_lens, tables, rows;
    size_t sample_rows, sample_work, sample_results; /* with o.sampling */
    size_t sampled;          /* int32[max_logit_rows]: the last step's tokens */
    duet_buffer *edits;    /* sample edits; grown on demand */
    size_t edits_cap;      /* bytes */
};

uint64_t duet_kv_bytes_per_token(const duet_model_config *c, duet_dtype kv_type)
{
    uint64_t elem = kv_type == DUET_F16 ? 2 : 4;
    return 2ull * c->n_layers * c->n_kv_heads * c->head_dim * elem;
}

const duet_runner_options *duet_runner_opts(const duet_runner *r) { return &r->o; }

/* Lay out the scratch buffer: each region 64-byte aligned. */
static size_t carve(size_t *cursor, size_t bytes)
{
    size_t at = *cursor;
    *cursor += (bytes + 63) & ~(size_t)63;
    return at;
}

/* Assign each activation region its offset in the scratch buffer; returns
 * the buffer's size. */
static size_t layout_scratch(const duet_model_config *c, const duet_runner_options *o,
                             duet_runner *r)
{
    size_t t = (size_t)o->max_tokens, f4 = sizeof(float), i4 = sizeof(int32_t);
    size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    size_t cur = 0;
    r->x = carve(&cur, t * c->dim * f4);
    r->xn = carve(&cur, t * c->dim * f4);
    r->q = carve(&cur, t * qd * f4);
    r->k = carve(&cur, t * kvd * f4);
    r->v = carve(&cur, t * kvd * f4);
    r->att = carve(&cur, t * qd * f4);
    r->gate = carve(&cur, t * c->ffn_dim * f4);
    r->up = carve(&cur, t * c->ffn_dim * f4);
    r->last = carve(&cur, (size_t)o->max_logit_rows * c->dim * f4);
    r->logits = carve(&cur, (size_t)o->max_logit_rows * c->vocab * f4);
    r->tokens = carve(&cur, t * i4);
    r->positions = carve(&cur, t * i4);
    r->slots = carve(&cur, t * i4);
    r->qsl = carve(&cur, ((size_t)o->max_seqs + 1) * i4);
    r->seq_lens = carve(&cur, (size_t)o->max_seqs * i4);
    r->tables = carve(&cur, (size_t)o->max_seqs * o->max_blocks_per_seq * i4);
    r->rows = carve(&cur, (size_t)o->max_logit_rows * i4);
    if (o->sampling) {
        size_t lr = (size_t)o->max_logit_rows;
        r->sample_rows = carve(&cur, lr * sizeof(duet_sample_row));
        r->sample_work = carve(&cur, lr * c->vocab * f4);
        r->sample_results = carve(&cur, lr * sizeof(duet_sample_result));
        r->sampled = carve(&cur, lr * i4);
    }
    return cur;
}

size_t duet_runner_scratch_bytes(const duet_model_config *c, const duet_runner_options *o)
{
    duet_runner r;
    return layout_scratch(c, o, &r);
}

duet_status duet_runner_create(duet_device *dev, const duet_model_config *c,
                               const duet_model_weights *w, const duet_runner_options *o,
                               duet_runner **out)
{
    duet_status rc;
    *out = NULL;
    if (o->max_tokens <= 0 || o->max_seqs <= 0 || o->max_logit_rows <= 0 ||
        o->num_blocks <= 1 || o->block_size <= 0 || o->max_blocks_per_seq <= 0 ||
        (o->kv_type != DUET_F32 && o->kv_type != DUET_F16))
        return duet_error(DUET_ERR_INVALID_ARG,
                          "runner: bad options (max_tokens %d, max_seqs %d, logit rows %d, "
                          "%d blocks of %d, %d blocks per sequence)",
                          o->max_tokens, o->max_seqs, o->max_logit_rows, o->num_blocks,
                          o->block_size, o->max_blocks_per_seq);
    duet_runner *r = calloc(1, sizeof *r);
    if (!r)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "runner: out of memory");
    r->dev = dev;
    r->c = c;
    r->w = w;
    r->o = *o;

    size_t cur = layout_scratch(c, o, r);
    if ((rc = duet_dev_buffer_alloc(dev, cur, &r->scratch))) {
        duet_error_wrap(rc, "allocating %zu bytes of activation scratch for %d tokens", cur,
                        o->max_tokens);
        goto out_free;
    }
    size_t kvd = (size_t)c->n_kv_heads * c->head_dim;
    r->kv_layer_bytes = (size_t)o->num_blocks * o->block_size * kvd * (o->kv_type == DUET_F16 ? 2 : 4);
    size_t kv_bytes = r->kv_layer_bytes * 2 * c->n_layers;
    if (!(r->kv = calloc(2 * (size_t)c->n_layers, sizeof *r->kv))) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "runner: out of memory");
        goto out_free;
    }
    for (int i = 0; i < 2 * c->n_layers; i++) {
        if ((rc = duet_dev_buffer_alloc(dev, r->kv_layer_bytes, &r->kv[i]))) {
            duet_error_wrap(rc, "allocating the KV cache (%d blocks of %d tokens = %.1f MiB)",
                            o->num_blocks, o->block_size, kv_bytes / 1048576.0);
            goto out_free;
        }
    }
    for (int i = 0; i < 2; i++)
        if ((rc = duet_dev_stream_create(dev, &r->streams[i])))
            goto out_free;
    *out = r;
    return DUET_OK;

out_free:
    duet_runner_free(r);
    return rc;
}

void duet_runner_free(duet_runner *r)
{
    if (!r)
        return;
    for (int i = 0; i < 2; i++)
        duet_dev_stream_destroy(r->dev, r->streams[i]);
    for (int i = 0; r->kv && i < 2 * r->c->n_layers; i++)
        duet_dev_buffer_free(r->dev, r->kv[i]);
    free(r->kv);
    duet_dev_buffer_free(r->dev, r->scratch);
    duet_dev_buffer_free(r->dev, r->edits);
    free(r);
}

/* ---- forward pass ------------------------------------------------------------ */

static duet_status check_batch(const duet_runner *r, const duet_batch *b)
{
    const duet_runner_options *o = &r->o;
    if (b->n_tokens <= 0 || b->n_tokens > o->max_tokens)
        return duet_error(DUET_ERR_INVALID_ARG, "batch has %d tokens; this runner takes 1..%d",
                          b->n_tokens, o->max_tokens);
    if (b->n_seqs <= 0 || b->n_seqs > o->max_seqs)
        return duet_error(DUET_ERR_INVALID_ARG, "batch has %d sequences; limit 1..%d",
                          b->n_seqs, o->max_seqs);
    if (b->n_logit_rows < 0 || b->n_logit_rows > o->max_logit_rows)
        return duet_error(DUET_ERR_INVALID_ARG, "batch asks for %d logit rows; limit %d",
                          b->n_logit_rows, o->max_logit_rows);
    if (b->query_start_loc[0] != 0 || b->query_start_loc[b->n_seqs] != b->n_tokens)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "query_start_loc must run from 0 to n_tokens %d (got %d..%d)",
                          b->n_tokens, b->query_start_loc[0], b->query_start_loc[b->n_seqs]);
    for (int s = 0; s < b->n_seqs; s++) {
        int q_len = b->query_start_loc[s + 1] - b->query_start_loc[s];
        if (q_len <= 0 || b->seq_lens[s] < q_len ||
            b->seq_lens[s] > o->max_blocks_per_seq * o->block_size)
            return duet_error(DUET_ERR_INVALID_ARG,
                              "sequence %d: %d query tokens with context %d (limit %d)", s,
                              q_len, b->seq_lens[s], o->max_blocks_per_seq * o->block_size);
        for (int i = 0; i < (b->seq_lens[s] + o->block_size - 1) / o->block_size; i++) {
            int blk = b->block_tables[(size_t)s * o->max_blocks_per_seq + i];
            if (blk < 0 || blk >= o->num_blocks)
                return duet_error(DUET_ERR_INVALID_ARG,
                                  "sequence %d: block table entry %d is %d; blocks are 0..%d",
                                  s, i, blk, o->num_blocks - 1);
        }
    }
    for (int t = 0; t < b->n_tokens; t++) {
        int32_t id = b->tokens[t];
        int placeholder = id < 0 && -(int64_t)id - 1 < r->prev_rows;
        if (!placeholder && (id < 0 || id >= r->c->vocab))
            return duet_error(DUET_ERR_INVALID_ARG,
                              "token %d at row %d is outside the vocabulary (0..%d) and is not "
                              "a placeholder for one of the %d tokens the last step sampled",
                              id, t, r->c->vocab - 1, r->prev_rows);
        if (b->slot_mapping[t] < -1 || b->slot_mapping[t] >= o->num_blocks * o->block_size)
            return duet_error(DUET_ERR_INVALID_ARG, "slot %d at row %d is outside the KV pool",
                              b->slot_mapping[t], t);
    }
    for (int i = 0; i < b->n_logit_rows; i++)
        if (b->logit_rows[i] < 0 || b->logit_rows[i] >= b->n_tokens)
            return duet_error(DUET_ERR_INVALID_ARG, "logit row %d is outside 0..%d",
                              b->logit_rows[i], b->n_tokens - 1);
    return DUET_OK;
}

/* Scratch address helper. */
static duet_addr S(const duet_runner *r, size_t off) { return (duet_addr){r->scratch, off}; }

static duet_status matmul(duet_runner *r, size_t x, const duet_tensor *w, const duet_tensor *bias,
                          size_t out, int n_rows)
{
    duet_matmul_args a = {
        .x = S(r, x), .w = w->addr, .bias = bias ? bias->addr : (duet_addr){0},
        .out = S(r, out), .w_type = w->type, .n_rows = n_rows,
        .k = (int)w->ne[0], .n = (int)w->ne[1],
    };
    return duet_dev_matmul(r->dev, r->stream, &a);
}

/* out = norm(x); with a residual (buf NULL = none), x += residual first. */
static duet_status rms_norm(duet_runner *r, size_t x, duet_addr residual, const duet_tensor *w,
                            size_t out, int n_rows)
{
    duet_rms_norm_args a = {.x = S(r, x), .weight = w->addr, .out = S(r, out),
                            .residual = residual, .n_rows = n_rows, .dim = r->c->dim,
                            .eps = r->c->norm_eps};
    return duet_dev_rms_norm(r->dev, r->stream, &a);
}

static duet_status add(duet_runner *r, size_t a_off, size_t b_off, int64_t n)
{
    duet_add_args a = {.a = S(r, a_off), .b = S(r, b_off), .n = n};
    return duet_dev_add(r->dev, r->stream, &a);
}

/* One transformer block on the T tokens of the batch, residual stream x;
 * longest: the batch's longest seq_len (attention's bound). */
static duet_status layer(duet_runner *r, const duet_batch *b, int l, int longest)
{
    const duet_model_config *c = r->c;
    const duet_layer_weights *lw = &r->w->layers[l];
    duet_device *d = r->dev;
    int t = b->n_tokens;
    duet_status rc = DUET_OK;
    duet_addr k_cache = {r->kv[2 * l], 0};
    duet_addr v_cache = {r->kv[2 * l + 1], 0};
    const duet_tensor *bq = c->has_qkv_bias ? &lw->bq : NULL;
    const duet_tensor *bk = c->has_qkv_bias ? &lw->bk : NULL;
    const duet_tensor *bv = c->has_qkv_bias ? &lw->bv : NULL;

    /* Attention: x += the previous layer's FFN output (pending in xn, added
     * by the norm); xn = norm(x); q, k, v = xn W (+ b); rotate q and k by
     * position (k on its way into the paged cache, so the two ops do not
     * depend on each other); attend over each sequence's cached context;
     * xn = att Wo, pending. */
    duet_addr pending = l > 0 ? S(r, r->xn) : (duet_addr){0};
    if (!rc) rc = rms_norm(r, r->x, pending, &lw->attn_norm, r->xn, t);
    if (!rc) rc = matmul(r, r->xn, &lw->wq, bq, r->q, t);
    if (!rc) rc = matmul(r, r->xn, &lw->wk, bk, r->k, t);
    if (!rc) rc = matmul(r, r->xn, &lw->wv, bv, r->v, t);
    duet_rope_spec rope = {
        .positions = S(r, r->positions), .freq_factors = r->w->rope_freqs.addr,
        .rot_dim = c->rope_dim, .mode = c->rope_mode, .theta_base = c->rope_theta,
    };
    if (!rc) {
        duet_rope_args a = {.q = S(r, r->q), .rope = rope, .n_tokens = t,
                            .n_heads = c->n_heads, .head_dim = c->head_dim};
        rc = duet_dev_rope(d, r->stream, &a);
    }
    if (!rc) {
        duet_kv_write_args a = {
            .k = S(r, r->k), .v = S(r, r->v), .slot_mapping = S(r, r->slots),
            .k_cache = k_cache, .v_cache = v_cache, .rope = rope, .cache_type = r->o.kv_type,
            .n_tokens = t, .n_kv_heads = c->n_kv_heads, .head_dim = c->head_dim,
            .num_blocks = r->o.num_blocks, .block_size = r->o.block_size,
        };
        rc = duet_dev_kv_write(d, r->stream, &a);
    }
    if (!rc) {
        duet_attention_args a = {
            .q = S(r, r->q), .k_cache = k_cache, .v_cache = v_cache,
            .block_tables = S(r, r->tables), .seq_lens = S(r, r->seq_lens),
            .query_start_loc = S(r, r->qsl), .out = S(r, r->att), .cache_type = r->o.kv_type,
            .n_tokens = t, .n_seqs = b->n_seqs, .n_heads = c->n_heads,
            .n_kv_heads = c->n_kv_heads, .head_dim = c->head_dim,
            .num_blocks = r->o.num_blocks, .block_size = r->o.block_size,
            .max_blocks_per_seq = r->o.max_blocks_per_seq,
            .scale = 1.0f / sqrtf((float)c->head_dim), .max_seq_len = longest,
        };
        rc = duet_dev_attention(d, r->stream, &a);
    }
    if (!rc) rc = matmul(r, r->att, &lw->wo, NULL, r->xn, t);

    /* Feed-forward: x += xn and xn = norm(x) in one op; xn = (silu(xn Wg)
     * * (xn Wu)) Wd, pending (the next norm, or the forward, adds it). */
    if (!rc) rc = rms_norm(r, r->x, S(r, r->xn), &lw->ffn_norm, r->xn, t);
    if (!rc && lw->w_up.type == lw->w_gate.type) {
        /* One gated matmul: the bits of the three ops below, one dispatch. */
        duet_matmul_args a = {
            .x = S(r, r->xn), .w = lw->w_gate.addr, .w_up = lw->w_up.addr,
            .out = S(r, r->gate), .w_type = lw->w_gate.type, .n_rows = t,
            .k = (int)lw->w_gate.ne[0], .n = (int)lw->w_gate.ne[1],
        };
        rc = duet_dev_matmul(d, r->stream, &a);
    } else {
        if (!rc) rc = matmul(r, r->xn, &lw->w_gate, NULL, r->gate, t);
        if (!rc) rc = matmul(r, r->xn, &lw->w_up, NULL, r->up, t);
        if (!rc) {
            duet_swiglu_args a = {.gate = S(r, r->gate), .up = S(r, r->up),
                                  .out = S(r, r->gate), .n_rows = t, .dim = c->ffn_dim};
            rc = duet_dev_swiglu(d, r->stream, &a);
        }
    }
    if (!rc) rc = matmul(r, r->gate, &lw->w_down, NULL, r->xn, t);
    return rc;
}

static duet_status upload_batch(duet_runner *r, const duet_batch *b)
{
    duet_device *d = r->dev;
    duet_stream *s = r->stream;
    size_t t4 = (size_t)b->n_tokens * 4, s4 = (size_t)b->n_seqs * 4;
    duet_status rc = DUET_OK;
    if (!rc) rc = duet_dev_upload(d, s, S(r, r->tokens), b->tokens, t4);
    if (!rc) rc = duet_dev_upload(d, s, S(r, r->positions), b->positions, t4);
    if (!rc) rc = duet_dev_upload(d, s, S(r, r->slots), b->slot_mapping, t4);
    if (!rc) rc = duet_dev_upload(d, s, S(r, r->qsl), b->query_start_loc, s4 + 4);
    if (!rc) rc = duet_dev_upload(d, s, S(r, r->seq_lens), b->seq_lens, s4);
    if (!rc) rc = duet_dev_upload(d, s, S(r, r->tables), b->block_tables,
                                  s4 * r->o.max_blocks_per_seq);
    if (!rc && b->n_logit_rows > 0)
        rc = duet_dev_upload(d, s, S(r, r->rows), b->logit_rows, (size_t)b->n_logit_rows * 4);
    return rc;
}

/* Make the edits buffer hold n edits (outside any recording). */
static duet_status ensure_edits(duet_runner *r, int n)
{
    size_t need = (size_t)n * sizeof(duet_sample_edit);
    if (need <= r->edits_cap)
        return DUET_OK;
    size_t cap = r->edits_cap ? r->edits_cap : 4096;
    while (cap < need)
        cap *= 2;
    duet_dev_buffer_free(r->dev, r->edits);
    r->edits = NULL;
    r->edits_cap = 0;
    duet_status rc = duet_dev_buffer_alloc(r->dev, cap, &r->edits);
    if (rc)
        return duet_error_wrap(rc, "allocating %zu bytes for %d sampling edits", cap, n);
    r->edits_cap = cap;
    return DUET_OK;
}

/* Record the sample op over the step's logit rows. */
static duet_status record_sampling(duet_runner *r, const duet_batch *b, int n_rows)
{
    duet_device *d = r->dev;
    duet_status rc = duet_dev_upload(d, r->stream, S(r, r->sample_rows), b->sample_rows,
                                     (size_t)n_rows * sizeof(duet_sample_row));
    if (!rc && b->n_sample_edits > 0)
        rc = duet_dev_upload(d, r->stream, (duet_addr){r->edits, 0}, b->sample_edits,
                             (size_t)b->n_sample_edits * sizeof(duet_sample_edit));
    if (!rc) {
        duet_sample_args a = {.logits = S(r, r->logits), .rows = S(r, r->sample_rows),
                              .edits = {b->n_sample_edits > 0 ? r->edits : NULL, 0},
                              .work = S(r, r->sample_work),
                              .results = S(r, r->sample_results),
                              .tokens_out = S(r, r->sampled),
                              .n_rows = n_rows, .vocab = r->c->vocab,
                              .n_edits = b->n_sample_edits};
        rc = duet_dev_sample(d, r->stream, &a);
    }
    return rc;
}

duet_status duet_model_forward_submit(duet_runner *r, const duet_batch *b, float *logits,
                                      duet_sample_result *results)
{
    const duet_model_config *c = r->c;
    duet_device *d = r->dev;
    duet_status rc = check_batch(r, b);
    if (rc)
        return rc;
    int n_rows = b->n_logit_rows;
    int sampling = b->sample_rows && n_rows > 0;
    if (sampling && !r->o.sampling)
        return duet_error(DUET_ERR_INVALID_ARG, "this runner was created without sampling");
    if (sampling && b->n_sample_edits > 0 && (rc = ensure_edits(r, b->n_sample_edits)))
        return rc;
    if (r->n_inflight == 2)
        return duet_error(DUET_ERR_INTERNAL, "runner: two steps already in flight");
    r->stream = r->streams[r->next];
    if ((rc = duet_dev_stream_begin(d, r->stream)))
        return rc;

    /* The batch's metadata travels with the step's recording. */
    rc = upload_batch(r, b);

    /* x = embedding rows of the tokens. */
    if (!rc) {
        duet_embed_args a = {.ids = S(r, r->tokens), .table = r->w->tok_embd.addr,
                             .out = S(r, r->x), .table_type = r->w->tok_embd.type,
                             .n_tokens = b->n_tokens, .vocab = c->vocab, .dim = c->dim};
        if (r->o.sampling) { /* placeholders name the last step's samples */
            a.prev_tokens = S(r, r->sampled);
            a.n_prev = r->o.max_logit_rows;
        }
        rc = duet_dev_embed(d, r->stream, &a);
    }
    /* The batch's longest context bounds attention's work (the Vulkan
     * split-K grid and partials), not the table width (max_model_len). */
    int longest = 0;
    for (int i = 0; i < b->n_seqs; i++)
        longest = b->seq_lens[i] > longest ? b->seq_lens[i] : longest;
    for (int l = 0; l < c->n_layers && !rc; l++)
        rc = layer(r, b, l, longest);

    /* Only the rows that will be sampled reach the final norm and the LM
     * head, which is the largest matmul of a small model. The last
     * layer's FFN output is still pending in xn: added here, only when
     * rows go on (nothing else reads x). */
    if (!rc && n_rows > 0) {
        rc = add(r, r->x, r->xn, (int64_t)b->n_tokens * c->dim);
        duet_gather_rows_args a = {.x = S(r, r->x), .rows = S(r, r->rows), .out = S(r, r->last),
                                   .n_in = b->n_tokens, .n_out = n_rows, .dim = c->dim};
        if (!rc) rc = duet_dev_gather_rows(d, r->stream, &a);
        if (!rc) rc = rms_norm(r, r->last, (duet_addr){0}, &r->w->out_norm, r->last, n_rows);
        if (!rc) rc = matmul(r, r->last, &r->w->lm_head, NULL, r->logits, n_rows);
        if (!rc && logits)
            rc = duet_dev_download(d, r->stream, S(r, r->logits), logits,
                                   (size_t)n_rows * c->vocab * sizeof(float));
        if (!rc && sampling) {
            rc = record_sampling(r, b, n_rows);
            if (!rc)
                rc = duet_dev_download(d, r->stream, S(r, r->sample_results), results,
                                       (size_t)n_rows * sizeof(duet_sample_result));
        }
    }
    if (!rc) rc = duet_dev_stream_submit(d, r->stream);
    if (!rc) {
        r->inflight[r->n_inflight++] = r->next;
        r->next ^= 1;
        r->prev_rows = sampling ? n_rows : 0;
    }
    return rc;
}

duet_status duet_model_forward_wait(duet_runner *r)
{
    if (r->n_inflight == 0)
        return duet_error(DUET_ERR_INTERNAL, "runner: no step in flight to wait for");
    duet_stream *s = r->streams[r->inflight[0]];
    r->inflight[0] = r->inflight[1];
    r->n_inflight--;
    return duet_dev_stream_wait(r->dev, s);
}

duet_status duet_model_forward(duet_runner *r, const duet_batch *b, float *logits,
                               duet_sample_result *results)
{
    duet_status rc = duet_model_forward_submit(r, b, logits, results);
    if (!rc)
        rc = duet_model_forward_wait(r);
    return rc;
}
