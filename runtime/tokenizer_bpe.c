/*
 * tokenizer_bpe.c — byte-level BPE (tokenizer.ggml.model = "gpt2").
 *
 * Each pre-token's bytes start as one symbol per byte (the byte's
 * character in GPT-2's printable alphabet); then the pair of neighbours
 * with the lowest merge rank is merged, leftmost first on ties, until no
 * pair has a merge. A heap of candidate pairs keeps this O(n log n) per
 * pre-token, so a 100 KB run without spaces is not quadratic. Entries made
 * stale by an earlier merge are recognised and dropped when popped, as HF
 * tokenizers' BPE does, which gives the same result as its rank-then-
 * position order.
 */
#include "tokenizer_impl.h"

#include "error.h"

#include <stdlib.h>
#include <string.h>

/* GPT-2 keeps the printable Latin-1 bytes as themselves and moves the 68
 * others (controls, space, DEL, NBSP, soft hyphen) to U+0100.. in byte
 * order, so every byte has a visible, non-space character. */
uint32_t duet_byte_to_cp(uint8_t b)
{
    if (b <= 0x20)
        return 0x100 + b;
    if (b >= 0x7F && b <= 0xA0)
        return 0x100 + 33 + (b - 0x7F);
    if (b == 0xAD)
        return 0x100 + 33 + 34;
    return b;
}

int duet_cp_to_byte(uint32_t cp)
{
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp >= 0x100 && cp < 0x100 + 33)
        return (int)(cp - 0x100);
    if (cp >= 0x100 + 33 && cp < 0x100 + 33 + 34)
        return (int)(cp - 0x100 - 33 + 0x7F);
    if (cp == 0x100 + 33 + 34)
        return 0xAD;
    return -1;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1; }

/* Returns the slot holding key, or the empty slot where it belongs. */
static size_t merge_slot(const duet_merge_map *m, uint64_t key)
{
    size_t i = mix64(key) & m->mask;
    while (m->keys[i] && m->keys[i] != key)
        i = (i + 1) & m->mask;
    return i;
}

static int merge_find(const duet_merge_map *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged)
{
    size_t i = merge_slot(m, pair_key(a, b));
    if (!m->keys[i])
        return 0;
    *rank = m->rank[i];
    *merged = m->merged[i];
    return 1;
}

duet_status duet_bpe_init(duet_tokenizer *t, const duet_gguf_kv *merges)
{
    for (int b = 0; b < 256; b++) {
        char u[4];
        int n = duet_utf8_encode(duet_byte_to_cp((uint8_t)b), u);
        t->byte_id[b] = duet_vocab_lookup(t, u, (size_t)n);
    }
    size_t n_merges = (size_t)merges->n_elems, cap = 16;
    while (cap < 2 * n_merges)
        cap *= 2;
    duet_merge_map *m = &t->merges;
    m->mask = cap - 1;
    m->keys = calloc(cap, sizeof *m->keys);
    m->rank = malloc(cap * sizeof *m->rank);
    m->merged = malloc(cap * sizeof *m->merged);
    if (!m->keys || !m->rank || !m->merged)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "tokenizer: out of memory for %zu merges", n_merges);

    char *joined = NULL;
    size_t joined_cap = 0;
    duet_status rc = DUET_OK;
    for (size_t r = 0; r < n_merges; r++) {
        duet_gguf_str s = merges->strs[r];
        /* "left right": byte-level symbols never contain a real space, but
         * the left one may start with one in odd vocabularies, hence >= 1 */
        const char *sp = s.len > 1 ? memchr(s.ptr + 1, ' ', s.len - 1) : NULL;
        if (!sp) {
            rc = duet_error(DUET_ERR_FORMAT, "tokenizer.ggml.merges[%zu] '%.*s' is not two tokens "
                            "separated by a space", r, (int)(s.len > 64 ? 64 : s.len), s.ptr);
            break;
        }
        size_t ll = (size_t)(sp - s.ptr), rl = s.len - ll - 1;
        int32_t a = duet_vocab_lookup(t, s.ptr, ll), b = duet_vocab_lookup(t, sp + 1, rl);
        if (ll + rl > joined_cap) {
            free(joined);
            joined_cap = 2 * (ll + rl);
            joined = malloc(joined_cap);
            if (!joined) {
                rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
                break;
            }
        }
        memcpy(joined, s.ptr, ll);
        memcpy(joined + ll, sp + 1, rl);
        int32_t ab = duet_vocab_lookup(t, joined, ll + rl);
        if (a < 0 || b < 0 || ab < 0) {
            rc = duet_error(DUET_ERR_FORMAT, "tokenizer.ggml.merges[%zu] '%.*s': %s is not in the "
                            "vocabulary", r, (int)(s.len > 64 ? 64 : s.len), s.ptr,
                            a < 0 ? "the left token" : b < 0 ? "the right token" : "the merged token");
            break;
        }
        /* a repeated pair keeps its last rank, as HF's merge map does */
        size_t i = merge_slot(m, pair_key(a, b));
        m->keys[i] = pair_key(a, b);
        m->rank[i] = (int32_t)r;
        m->merged[i] = ab;
    }
    free(joined);
    return rc;
}

void duet_bpe_free(duet_tokenizer *t)
{
    free(t->merges.keys);
    free(t->merges.rank);
    free(t->merges.merged);
}

typedef struct bpe_sym {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
} bpe_sym;

static void push_pair(const duet_tokenizer *t, duet_merge_heap *h, const bpe_sym *sym, int32_t pos)
{
    if (pos < 0 || sym[pos].next < 0)
        return;
    int32_t rank, merged, left = sym[pos].id, right = sym[sym[pos].next].id;
    if (merge_find(&t->merges, left, right, &rank, &merged))
        duet_merge_heap_push(h, (duet_merge_cand){.key = rank, .pos = pos, .a = left, .b = right,
                                                  .c = merged});
}

/* Small pre-tokens (nearly all of them) work on the stack. */
#define BPE_STACK_SYMS 64

duet_status duet_bpe_encode_segment(const duet_tokenizer *t, const char *s, size_t len,
                                    duet_ids *out)
{
    const unsigned char *u = (const unsigned char *)s;
    if (t->ignore_merges) {
        /* the whole pre-token spelled in the byte alphabet */
        char stack_buf[4 * BPE_STACK_SYMS] = {0};
        char *buf = len <= BPE_STACK_SYMS ? stack_buf : malloc(2 * len);
        if (!buf)
            return duet_error(DUET_ERR_OUT_OF_MEMORY, "tokenizer: out of memory for a %zu-byte word", len);
        size_t w = 0;
        for (size_t i = 0; i < len; i++)
            w += (size_t)duet_utf8_encode(duet_byte_to_cp(u[i]), buf + w);
        int32_t id = duet_vocab_lookup(t, buf, w);
        if (buf != stack_buf)
            free(buf);
        if (id >= 0)
            return duet_ids_push(out, id);
    }

    bpe_sym stack_sym[BPE_STACK_SYMS];
    duet_merge_cand stack_cand[3 * BPE_STACK_SYMS];
    bpe_sym *sym = stack_sym;
    duet_merge_heap h = {.v = stack_cand};
    if (len > BPE_STACK_SYMS) {
        sym = malloc(len * sizeof *sym);
        /* at most len-1 initial pairs plus two per merge */
        h.v = malloc(3 * len * sizeof *h.v);
        if (!sym || !h.v) {
            if (sym != stack_sym)
                free(sym);
            if (h.v != stack_cand)
                free(h.v);
            return duet_error(DUET_ERR_OUT_OF_MEMORY, "tokenizer: out of memory for a %zu-byte word", len);
        }
    }

    /* Bytes the vocabulary lacks are dropped, as HF's BPE does when it has
     * no unk token (SmolLM2 lacks 0x04, 0xF5..0xFF and a few others). */
    int32_t n = 0, first = -1;
    for (size_t i = 0; i < len; i++) {
        int32_t id = t->byte_id[u[i]];
        if (id < 0)
            continue;
        sym[n] = (bpe_sym){.id = id, .prev = n - 1, .next = -1};
        if (n > 0)
            sym[n - 1].next = n;
        else
            first = 0;
        n++;
    }
    for (int32_t i = 0; i + 1 < n; i++)
        push_pair(t, &h, sym, i);

    while (h.n > 0) {
        duet_merge_cand c = duet_merge_heap_pop(&h);
        bpe_sym *l = &sym[c.pos];
        /* stale: the left symbol was absorbed (id -1) or either side has
         * changed since the candidate was pushed */
        if (l->id != c.a || l->next < 0 || sym[l->next].id != c.b)
            continue;
        int32_t r = l->next;
        l->id = c.c;
        l->next = sym[r].next;
        if (l->next >= 0)
            sym[l->next].prev = c.pos;
        sym[r].id = -1;
        push_pair(t, &h, sym, l->prev);
        push_pair(t, &h, sym, c.pos);
    }

    duet_status rc = DUET_OK;
    for (int32_t i = first; i >= 0 && rc == DUET_OK; i = sym[i].next)
        rc = duet_ids_push(out, sym[i].id);
    if (sym != stack_sym)
        free(sym);
    if (h.v != stack_cand)
        free(h.v);
    return rc;
}
