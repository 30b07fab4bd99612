/*
 * vk_sample.c — recording the sample op (docs/SAMPLING.md; the shader is
 * shaders/sample.comp): one workgroup per row. A row's logits and work
 * must each fit one binding; a batch whose planes do not is split over
 * rows. The edits are bound whole, because rows index them globally.
 */
#include "error.h"
#include "vk_internal.h"

_Static_assert(sizeof(duet_sample_row) == 16 * 4, "sample.comp reads a row as 16 words");
_Static_assert(sizeof(duet_sample_edit) == 4 * 4, "sample.comp reads an edit as 4 words");
_Static_assert(sizeof(duet_sample_result) == 44 * 4, "sample.comp writes a result as 44 words");


/* Rows per dispatch: the logits and work of every row in a piece must fit
 * one binding, and so must the piece's results. */
static uint64_t rows_per_piece(const vk_ctx *c, int vocab)
{
    uint64_t max_bind = duet_vk_max_bind(c);
    uint64_t by_plane = max_bind / (4ull * (uint64_t)vocab);
    uint64_t by_results = max_bind / sizeof(duet_sample_result);
    return by_plane < by_results ? by_plane : by_results;
}

duet_status duet_vk_sample(void *ctx, duet_stream *s, const duet_sample_args *a)
{
    vk_ctx *c = ctx;
    duet_status rc = DUET_OK;
    uint64_t row_bytes = 4ull * (uint64_t)a->vocab;
    uint64_t piece = rows_per_piece(c, a->vocab);
    if (piece == 0)
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "sample: a row of %d logits (%llu bytes) exceeds this device's "
                          "binding limit of %llu bytes",
                          a->vocab, (unsigned long long)row_bytes,
                          (unsigned long long)duet_vk_max_bind(c));
    for (uint64_t r0 = 0; r0 < (uint64_t)a->n_rows && rc == DUET_OK; r0 += piece) {
        uint64_t cnt = (uint64_t)a->n_rows - r0 < piece ? (uint64_t)a->n_rows - r0 : piece;
        vk_binding b[6];
        struct {
            uint32_t n_rows, vocab, n_edits, has_tokens;
            uint32_t x_off, r_off, e_off, w_off, res_off, t_off;
        } pc = {(uint32_t)cnt, (uint32_t)a->vocab, (uint32_t)a->n_edits,
                a->tokens_out.buf != NULL, 0, 0, 0, 0, 0, 0};
        uint64_t res_bytes = sizeof(duet_sample_result), row_param = sizeof(duet_sample_row);
        if ((rc = duet_vk_bind_words(c, "sample", "logits", a->logits, r0 * row_bytes,
                                     (r0 + cnt) * row_bytes, &b[0], &pc.x_off)) ||
            (rc = duet_vk_bind_words(c, "sample", "rows", a->rows, r0 * row_param,
                                     (r0 + cnt) * row_param, &b[1], &pc.r_off)) ||
            (rc = duet_vk_bind_words(c, "sample", "work", a->work, r0 * row_bytes,
                                     (r0 + cnt) * row_bytes, &b[3], &pc.w_off)) ||
            (rc = duet_vk_bind_words(c, "sample", "results", a->results, r0 * res_bytes,
                                     (r0 + cnt) * res_bytes, &b[4], &pc.res_off)))
            break;
        if (a->n_edits > 0)
            rc = duet_vk_bind_words(c, "sample", "edits", a->edits, 0,
                                    sizeof(duet_sample_edit) * a->n_edits, &b[2], &pc.e_off);
        else
            b[2] = duet_vk_dummy_binding(c);
        if (rc == DUET_OK && a->tokens_out.buf)
            rc = duet_vk_bind_words(c, "sample", "tokens_out", a->tokens_out, 4 * r0,
                                    4 * (r0 + cnt), &b[5], &pc.t_off);
        else
            b[5] = duet_vk_dummy_binding(c);
        if (rc)
            break;
        uint32_t gx, gy;
        duet_vk_grid_2d(cnt, &gx, &gy);
        rc = duet_vk_dispatch(c, s, VK_SH_SAMPLE, 0, b, 6, &pc, sizeof pc, gx, gy, 1);
    }
    return rc;
}

duet_status duet_vk_sample_math_check(duet_device *d, duet_stream *s, duet_addr in,
                                      duet_addr out, int n_rows, int n)
{
    vk_ctx *c = d->ctx;
    duet_status rc;
    vk_binding b[6];
    struct {
        uint32_t n_rows, vocab, n_edits, has_tokens;
        uint32_t x_off, r_off, e_off, w_off, res_off, t_off;
    } pc = {(uint32_t)n_rows, (uint32_t)n, 0, 0, 0, 0, 0, 0, 0, 0};
    uint64_t bytes = 4ull * (uint64_t)n_rows * (uint64_t)n;
    if ((rc = duet_vk_bind_words(c, "sample", "logits", in, 0, bytes, &b[0], &pc.x_off)) ||
        (rc = duet_vk_bind_words(c, "sample", "work", out, 0, bytes, &b[3], &pc.w_off)))
        return rc;
    b[1] = b[2] = b[4] = b[5] = duet_vk_dummy_binding(c);
    return duet_vk_dispatch(c, s, VK_SH_SAMPLE, 32, b, 6, &pc, sizeof pc, (uint32_t)n_rows, 1,
                            1);
}
