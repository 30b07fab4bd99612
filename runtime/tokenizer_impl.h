/*
 * tokenizer_impl.h — what the tokenizer's source files share, and the
 * internals its tests reach (pre-tokenizer splits, strict UTF-8 decoding).
 * Not part of the public API.
 */
#ifndef DUET_TOKENIZER_IMPL_H
#define DUET_TOKENIZER_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

/* GGUF tokenizer.ggml.token_type values (llama.cpp's numbering). */
enum {
    DUET_TOKEN_NORMAL = 1,
    DUET_TOKEN_UNKNOWN = 2,
    DUET_TOKEN_CONTROL = 3,
    DUET_TOKEN_USER_DEFINED = 4,
    DUET_TOKEN_UNUSED = 5,
    DUET_TOKEN_BYTE = 6,
};

typedef enum duet_tok_kind { DUET_TOK_BPE, DUET_TOK_SPM } duet_tok_kind;

/* ---- UTF-8 (utf8.c) ------------------------------------------------------ */

/* Decode one character from s[0..n). Returns its length (> 0) and sets *cp
 * when s starts with a well-formed character. Otherwise returns -k, where
 * k >= 1 is the length of the maximal ill-formed subpart (Unicode's "U+FFFD
 * substitution of maximal subparts", which Python's errors='replace' also
 * follows), and sets *truncated when that subpart is the valid beginning of
 * a character cut short by the end of the buffer. n must be > 0. */
int duet_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp, int *truncated);
/* Write cp as UTF-8 (1..4 bytes) to out; returns the length. */
int duet_utf8_encode(uint32_t cp, char *out);
/* 1 when s[0..n) is well-formed UTF-8. */
int duet_utf8_valid(const char *s, size_t n);

/* ---- growable id array ----------------------------------------------------- */

typedef struct duet_ids {
    int32_t *v;
    size_t n, cap;
} duet_ids;

duet_status duet_ids_push(duet_ids *a, int32_t id);

/* ---- pre-tokenizer (pretokenize.c) ------------------------------------------- */

typedef struct duet_pretok duet_pretok;

/* Build the pre-tokenizer named by tokenizer.ggml.pre. Unknown name:
 * DUET_ERR_UNSUPPORTED listing the supported names. */
duet_status duet_pretok_create(const char *name, size_t name_len, duet_pretok **out);
void duet_pretok_free(duet_pretok *p);
/* Whether the HF BPE model of this family has ignore_merges set (a
 * pre-token that is itself in the vocabulary is emitted whole). */
int duet_pretok_ignore_merges(const duet_pretok *p);

/* Called with each piece [start, end) (byte offsets into the text given to
 * duet_pretok_split); a non-OK return stops the split and is returned. */
typedef duet_status (*duet_piece_fn)(void *user, size_t start, size_t end);

/* Split text[0..len) into pre-tokens, in order, covering every byte.
 * Ill-formed UTF-8 is matched as if each maximal ill-formed subpart were
 * U+FFFD, but the pieces are reported in the original bytes, so no input
 * byte is lost. Fails only for out of memory (or what fn returns). */
duet_status duet_pretok_split(const duet_pretok *p, const char *text, size_t len,
                              duet_piece_fn fn, void *user);

/* ---- the tokenizer ---------------------------------------------------------- */

/* Open-addressing map from token text to id. */
typedef struct duet_vocab_map {
    int32_t *slots; /* id, or -1 for empty */
    size_t mask;
} duet_vocab_map;

/* Open-addressing map from a pair of BPE symbols to its merge. */
typedef struct duet_merge_map {
    uint64_t *keys;   /* (left << 32 | right) + 1; 0 = empty */
    int32_t *rank;    /* lower merges first */
    int32_t *merged;  /* id of left+right */
    size_t mask;
} duet_merge_map;

struct duet_tokenizer {
    duet_tok_kind kind;
    int32_t n_vocab;

    /* token texts as the GGUF spells them (byte-level alphabet for BPE,
     * "▁" for spaces in SentencePiece) */
    char *text;            /* arena */
    uint32_t *text_off;    /* [n_vocab] */
    uint32_t *text_len;    /* [n_vocab] */
    /* the raw bytes each token stands for (decode) */
    char *bytes;           /* arena */
    uint32_t *bytes_off;   /* [n_vocab] */
    uint32_t *bytes_len;   /* [n_vocab] */
    uint8_t *type;         /* [n_vocab] DUET_TOKEN_* */
    float *score;          /* [n_vocab] SentencePiece only, else NULL */
    uint8_t *eog;          /* [n_vocab] 1 = ends generation */

    duet_vocab_map vocab;
    duet_merge_map merges; /* BPE only */
    int32_t byte_id[256];  /* BPE: the byte's one-character token; SPM:
                              its <0xNN> token; -1 when the vocab has none */

    /* control and user-defined tokens matched whole with parse_special,
     * ordered longest first so the first hit is the longest */
    int32_t *special;
    int n_special;
    int n_user_defined;
    uint8_t special_first[256]; /* 1 = some special token starts with it */

    int32_t bos, eos, unk, pad, eot, eom; /* -1 = none */
    int add_bos;
    int add_space_prefix;  /* SentencePiece dummy prefix */
    int ignore_merges;     /* BPE: whole-word vocab hit skips the merges */
    duet_pretok *pretok;   /* BPE only */
};

static inline const char *duet_tok_text(const duet_tokenizer *t, int32_t id, size_t *len)
{
    *len = t->text_len[id];
    return t->text + t->text_off[id];
}

/* Map lookups; -1 when absent. */
int32_t duet_vocab_lookup(const duet_tokenizer *t, const char *s, size_t len);

/* tokenizer_bpe.c: build the merge map from tokenizer.ggml.merges strings
 * and the byte table; encode one pre-token. */
duet_status duet_bpe_init(duet_tokenizer *t, const duet_gguf_kv *merges);
void duet_bpe_free(duet_tokenizer *t);
duet_status duet_bpe_encode_segment(const duet_tokenizer *t, const char *s, size_t len,
                                    duet_ids *out);

/* tokenizer_spm.c: byte table; encode one stretch of text between special
 * tokens (prefix: add the dummy-prefix space first). */
duet_status duet_spm_init(duet_tokenizer *t);
duet_status duet_spm_encode_segment(const duet_tokenizer *t, const char *s, size_t len,
                                    int prefix, duet_ids *out);

/* GPT-2's byte-level alphabet: byte -> code point, and back (-1 for code
 * points outside the alphabet). */
uint32_t duet_byte_to_cp(uint8_t b);
int duet_cp_to_byte(uint32_t cp);


/* A candidate merge of the symbol at pos with its right neighbour, kept in
 * a binary heap by the BPE and the SentencePiece merge loops: lowest key
 * first, then leftmost. BPE's key is the merge rank, SentencePiece's the
 * negated piece score (best score first). a, b, c describe the pair when it
 * was pushed, so a stale entry is recognised when it is popped. */
typedef struct duet_merge_cand {
    double key;
    int32_t pos;
    int32_t a, b, c;
} duet_merge_cand;

typedef struct duet_merge_heap {
    duet_merge_cand *v; /* capacity is the caller's business */
    size_t n;
} duet_merge_heap;

void duet_merge_heap_push(duet_merge_heap *h, duet_merge_cand c);
duet_merge_cand duet_merge_heap_pop(duet_merge_heap *h); /* h->n > 0 */

#endif
