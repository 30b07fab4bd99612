/*
 * tokenizer_spm.c — SentencePiece BPE (tokenizer.ggml.model = "llama").
 *
 * Spaces become "▁" (and one is prepended when add_space_prefix is set);
 * the text starts as one symbol per character, and the neighbouring pair
 * whose concatenation is the highest-scoring vocabulary piece is merged
 * first (leftmost on ties), as sentencepiece's bpe_model does. Symbols
 * left without a piece fall back to their bytes' <0xNN> tokens.
 */
#include "tokenizer_impl.h"

#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

duet_status duet_spm_init(duet_tokenizer *t)
{
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = duet_vocab_lookup(t, name, 6);
    }
    return DUET_OK;
}

typedef struct spm_sym {
    uint32_t start, len; /* bytes in the escaped text; len 0 = absorbed */
    int32_t prev, next;
} spm_sym;

/* Pieces a merge may produce: sentencepiece keeps control, unknown and
 * byte pieces out of its merge table. */
static int mergeable(const duet_tokenizer *t, int32_t id)
{
    return id >= 0 && (t->type[id] == DUET_TOKEN_NORMAL || t->type[id] == DUET_TOKEN_USER_DEFINED);
}

static void push_pair(const duet_tokenizer *t, duet_merge_heap *h, const spm_sym *sym, const char *text,
                      int32_t pos)
{
    if (pos < 0 || sym[pos].next < 0)
        return;
    const spm_sym *l = &sym[pos], *r = &sym[l->next];
    int32_t id = duet_vocab_lookup(t, text + l->start, l->len + r->len);
    if (mergeable(t, id))
        duet_merge_heap_push(h, (duet_merge_cand){.key = -(double)t->score[id], .pos = pos,
                                                  .a = (int32_t)l->len, .b = (int32_t)r->len});
}

static duet_status emit_symbol(const duet_tokenizer *t, const char *s, size_t len, duet_ids *out)
{
    int32_t id = duet_vocab_lookup(t, s, len);
    if (mergeable(t, id))
        return duet_ids_push(out, id);
    for (size_t i = 0; i < len; i++) {
        int32_t b = t->byte_id[(unsigned char)s[i]];
        if (b < 0)
            b = t->unk;
        if (b < 0)
            continue; /* no byte token and no unk: nothing can stand for it */
        duet_status rc = duet_ids_push(out, b);
        if (rc != DUET_OK)
            return rc;
    }
    return DUET_OK;
}

duet_status duet_spm_encode_segment(const duet_tokenizer *t, const char *s, size_t len,
                                    int prefix, duet_ids *out)
{
    static const char SPACE[3] = {(char)0xE2, (char)0x96, (char)0x81}; /* U+2581 */
    duet_status rc = DUET_OK;
    if (len == 0)
        return DUET_OK;
    /* escaped text: each space is 3 bytes, plus the prefix */
    char *text = malloc(3 * len + 3);
    spm_sym *sym = malloc((len + 1) * sizeof *sym);
    duet_merge_heap h = {.v = malloc(3 * (len + 1) * sizeof *h.v)};
    if (!text || !sym || !h.v) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "tokenizer: out of memory for %zu bytes", len);
        goto out_free;
    }
    size_t w = 0;
    if (prefix) {
        memcpy(text, SPACE, 3);
        w = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] == ' ') {
            memcpy(text + w, SPACE, 3);
            w += 3;
        } else {
            text[w++] = s[i];
        }
    }

    /* one symbol per character; an ill-formed byte is a symbol of its own
     * and ends up as its <0xNN> token */
    int32_t n = 0;
    for (size_t i = 0; i < w;) {
        uint32_t cp;
        int truncated;
        int k = duet_utf8_decode((const unsigned char *)text + i, w - i, &cp, &truncated);
        size_t cl = k > 0 ? (size_t)k : 1;
        sym[n] = (spm_sym){.start = (uint32_t)i, .len = (uint32_t)cl, .prev = n - 1, .next = -1};
        if (n > 0)
            sym[n - 1].next = n;
        n++;
        i += cl;
    }
    for (int32_t i = 0; i + 1 < n; i++)
        push_pair(t, &h, sym, text, i);

    while (h.n > 0) {
        duet_merge_cand c = duet_merge_heap_pop(&h);
        spm_sym *l = &sym[c.pos];
        if (l->len != (uint32_t)c.a || l->next < 0 || sym[l->next].len != (uint32_t)c.b)
            continue; /* stale: one side has changed since the push */
        spm_sym *r = &sym[l->next];
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (l->next >= 0)
            sym[l->next].prev = c.pos;
        push_pair(t, &h, sym, text, l->prev);
        push_pair(t, &h, sym, text, c.pos);
    }

    for (int32_t i = 0; i >= 0 && i < n && rc == DUET_OK; i = sym[i].next)
        rc = emit_symbol(t, text + sym[i].start, sym[i].len, out);

out_free:
    free(text);
    free(sym);
    free(h.v);
    return rc;
}
