/*
 * tokenizer.c — loading a GGUF's tokenizer, special tokens, and the public
 * encode/decode entry points; the models themselves live in
 * tokenizer_bpe.c and tokenizer_spm.c, the regex splits in pretokenize.c.
 *
 * Encoding follows HF tokenizers: special tokens are cut out of the text
 * first (leftmost, then longest), and each stretch between them is
 * pre-tokenized and encoded on its own.
 */
#include "tokenizer_impl.h"

#include "error.h"

#include <stdlib.h>
#include <string.h>

/* Texts that end a turn in the chat formats we know; matched only on
 * control tokens, so a normal token spelled the same cannot stop
 * generation. */
static const char *const EOG_TEXTS[] = {
    "<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end|>", "</s>",
    "<|end_of_text|>", "<end_of_turn>", "<|eom_id|>",
};

duet_status duet_ids_push(duet_ids *a, int32_t id)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 64;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v)
            return duet_error(DUET_ERR_OUT_OF_MEMORY, "tokenizer: out of memory for %zu ids", cap);
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return DUET_OK;
}

/* ---- vocabulary map ---------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    return h ^ (h >> 29);
}

int32_t duet_vocab_lookup(const duet_tokenizer *t, const char *s, size_t len)
{
    const duet_vocab_map *m = &t->vocab;
    for (size_t i = hash_bytes(s, len) & m->mask;; i = (i + 1) & m->mask) {
        int32_t id = m->slots[i];
        if (id < 0)
            return -1;
        if (t->text_len[id] == len && memcmp(t->text + t->text_off[id], s, len) == 0)
            return id;
    }
}

static duet_status build_vocab_map(duet_tokenizer *t)
{
    size_t cap = 16;
    while (cap < 2 * (size_t)t->n_vocab)
        cap *= 2;
    t->vocab.mask = cap - 1;
    t->vocab.slots = malloc(cap * sizeof *t->vocab.slots);
    if (!t->vocab.slots)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "tokenizer: out of memory for the vocabulary map");
    memset(t->vocab.slots, 0xFF, cap * sizeof *t->vocab.slots);
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t len;
        const char *s = duet_tok_text(t, id, &len);
        size_t i = hash_bytes(s, len) & t->vocab.mask;
        while (t->vocab.slots[i] >= 0) {
            int32_t o = t->vocab.slots[i];
            if (t->text_len[o] == len && memcmp(t->text + t->text_off[o], s, len) == 0)
                break; /* a duplicate text: the later id wins, as in HF's vocab dict */
            i = (i + 1) & t->vocab.mask;
        }
        t->vocab.slots[i] = id;
    }
    return DUET_OK;
}

/* ---- decoding tables --------------------------------------------------- */

/* Bytes a byte-level token stands for: each character unmapped through the
 * GPT-2 alphabet. A token using other characters (user-defined tokens
 * added as plain text) stands for its text as is. */
static size_t bpe_token_bytes(const char *s, size_t len, char *out)
{
    size_t w = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int truncated;
        int k = duet_utf8_decode((const unsigned char *)s + i, len - i, &cp, &truncated);
        int b = k > 0 ? duet_cp_to_byte(cp) : -1;
        if (b < 0) {
            memcpy(out, s, len);
            return len;
        }
        out[w++] = (char)b;
        i += (size_t)k;
    }
    return w;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* SentencePiece: "▁" is a space and <0xNN> is byte NN. */
static size_t spm_token_bytes(const char *s, size_t len, int type, char *out)
{
    if (type == DUET_TOKEN_BYTE && len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' &&
        hex_digit(s[3]) >= 0 && hex_digit(s[4]) >= 0) {
        out[0] = (char)(hex_digit(s[3]) * 16 + hex_digit(s[4]));
        return 1;
    }
    size_t w = 0;
    for (size_t i = 0; i < len;) {
        if (i + 3 <= len && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
            out[w++] = ' ';
            i += 3;
        } else {
            out[w++] = s[i++];
        }
    }
    return w;
}

static duet_status build_decode_table(duet_tokenizer *t, size_t text_bytes)
{
    /* decoding never makes a token longer than its text */
    t->bytes = malloc(text_bytes ? text_bytes : 1);
    t->bytes_off = malloc((size_t)t->n_vocab * sizeof *t->bytes_off);
    t->bytes_len = malloc((size_t)t->n_vocab * sizeof *t->bytes_len);
    if (!t->bytes || !t->bytes_off || !t->bytes_len)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "tokenizer: out of memory for the decode table");
    size_t w = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t len;
        const char *s = duet_tok_text(t, id, &len);
        size_t n;
        if (t->type[id] == DUET_TOKEN_CONTROL || t->type[id] == DUET_TOKEN_USER_DEFINED) {
            memcpy(t->bytes + w, s, len);
            n = len;
        } else if (t->kind == DUET_TOK_BPE) {
            n = bpe_token_bytes(s, len, t->bytes + w);
        } else {
            n = spm_token_bytes(s, len, t->type[id], t->bytes + w);
        }
        t->bytes_off[id] = (uint32_t)w;
        t->bytes_len[id] = (uint32_t)n;
        w += n;
    }
    return DUET_OK;
}

/* ---- special tokens ---------------------------------------------------- */

typedef struct special_key {
    uint32_t len;
    int32_t id;
} special_key;

static int longer_first(const void *a, const void *b)
{
    const special_key *x = a, *y = b;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static duet_status build_specials(duet_tokenizer *t)
{
    t->eog = calloc((size_t)t->n_vocab, 1);
    t->special = malloc((size_t)t->n_vocab * sizeof *t->special);
    if (!t->eog || !t->special)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    for (int32_t id = 0; id < t->n_vocab; id++) {
        int ty = t->type[id];
        size_t len;
        const char *s = duet_tok_text(t, id, &len);
        if ((ty == DUET_TOKEN_CONTROL || ty == DUET_TOKEN_USER_DEFINED) && len > 0) {
            t->special[t->n_special++] = id;
            t->special_first[(unsigned char)s[0]] = 1;
            t->n_user_defined += ty == DUET_TOKEN_USER_DEFINED;
        }
        if (ty != DUET_TOKEN_CONTROL)
            continue;
        for (size_t e = 0; e < sizeof EOG_TEXTS / sizeof EOG_TEXTS[0]; e++)
            if (strlen(EOG_TEXTS[e]) == len && memcmp(EOG_TEXTS[e], s, len) == 0)
                t->eog[id] = 1;
    }
    if (t->eos >= 0)
        t->eog[t->eos] = 1;
    if (t->eot >= 0)
        t->eog[t->eot] = 1;
    if (t->eom >= 0)
        t->eog[t->eom] = 1;
    special_key *keys = malloc(((size_t)t->n_special + 1) * sizeof *keys);
    if (!keys)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    for (int i = 0; i < t->n_special; i++)
        keys[i] = (special_key){t->text_len[t->special[i]], t->special[i]};
    qsort(keys, (size_t)t->n_special, sizeof *keys, longer_first);
    for (int i = 0; i < t->n_special; i++)
        t->special[i] = keys[i].id;
    free(keys);
    return DUET_OK;
}

/* The longest special token at text[pos..len), or -1. Without
 * parse_special only user-defined tokens count: HF's encode_special_tokens
 * and llama.cpp both still cut those out (e.g. "<think>"), and only the
 * control tokens become plain text. */
static int32_t match_special(const duet_tokenizer *t, const char *text, size_t len, size_t pos,
                             int parse_special)
{
    if (!t->special_first[(unsigned char)text[pos]])
        return -1;
    for (int i = 0; i < t->n_special; i++) {
        int32_t id = t->special[i];
        size_t sl = t->text_len[id];
        if (sl <= len - pos && text[pos] == t->text[t->text_off[id]] &&
            memcmp(text + pos, t->text + t->text_off[id], sl) == 0 &&
            (parse_special || t->type[id] == DUET_TOKEN_USER_DEFINED))
            return id;
    }
    return -1;
}

/* ---- loading ------------------------------------------------------------- */

/* An id out of range fails, except for padding, which duet never uses
 * (llama.cpp loads such files too, ignoring the bad id). eot/eom ids are
 * optional extra end-of-generation tokens. */
static duet_status read_special_id(const duet_gguf *g, const duet_tokenizer *t, const char *key,
                                   int32_t *out)
{
    uint32_t v;
    duet_status rc = duet_gguf_get_u32_or(g, key, UINT32_MAX, &v);
    if (rc != DUET_OK)
        return rc;
    if (v == UINT32_MAX) {
        *out = -1;
        return DUET_OK;
    }
    if (v >= (uint32_t)t->n_vocab && strstr(key, "padding")) {
        *out = -1;
        return DUET_OK;
    }
    if (v >= (uint32_t)t->n_vocab)
        return duet_error(DUET_ERR_FORMAT, "%s is %u but the vocabulary has %d tokens", key, v,
                          t->n_vocab);
    *out = (int32_t)v;
    return DUET_OK;
}

static duet_status load_vocab(const duet_gguf *g, duet_tokenizer *t, size_t *text_bytes)
{
    const duet_gguf_kv *tokens, *types, *scores;
    duet_status rc = duet_gguf_get_arr(g, "tokenizer.ggml.tokens", DUET_GGUF_STRING, &tokens);
    if (rc != DUET_OK)
        return rc;
    if (tokens->n_elems == 0 || tokens->n_elems > INT32_MAX / 2)
        return duet_error(DUET_ERR_FORMAT, "tokenizer.ggml.tokens has %llu entries; expected 1..%d",
                          (unsigned long long)tokens->n_elems, INT32_MAX / 2);
    t->n_vocab = (int32_t)tokens->n_elems;
    size_t total = 0;
    for (int32_t i = 0; i < t->n_vocab; i++)
        total += tokens->strs[i].len;
    if (total > UINT32_MAX)
        return duet_error(DUET_ERR_FORMAT, "tokenizer.ggml.tokens: %zu bytes of text exceeds 4 GiB", total);
    *text_bytes = total;
    t->text = malloc(total ? total : 1);
    t->text_off = malloc((size_t)t->n_vocab * sizeof *t->text_off);
    t->text_len = malloc((size_t)t->n_vocab * sizeof *t->text_len);
    t->type = malloc((size_t)t->n_vocab);
    if (!t->text || !t->text_off || !t->text_len || !t->type)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "tokenizer: out of memory for %d tokens", t->n_vocab);
    size_t w = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        memcpy(t->text + w, tokens->strs[i].ptr, tokens->strs[i].len);
        t->text_off[i] = (uint32_t)w;
        t->text_len[i] = (uint32_t)tokens->strs[i].len;
        w += tokens->strs[i].len;
    }

    types = duet_gguf_find(g, "tokenizer.ggml.token_type");
    if (types && (types->type != DUET_GGUF_ARRAY || types->n_elems != tokens->n_elems ||
                  (types->elem_type != DUET_GGUF_INT32 && types->elem_type != DUET_GGUF_UINT32)))
        return duet_error(DUET_ERR_FORMAT, "tokenizer.ggml.token_type is a %s with %llu entries; "
                          "expected an int32 array with one entry per token (%d)",
                          duet_gguf_type_name(types->type == DUET_GGUF_ARRAY ? types->elem_type
                                                                             : types->type),
                          (unsigned long long)(types->type == DUET_GGUF_ARRAY ? types->n_elems : 1),
                          t->n_vocab);
    for (int32_t i = 0; i < t->n_vocab; i++) {
        int64_t ty = types ? duet_gguf_arr_int(types, (uint64_t)i) : DUET_TOKEN_NORMAL;
        t->type[i] = ty >= DUET_TOKEN_NORMAL && ty <= DUET_TOKEN_BYTE ? (uint8_t)ty : DUET_TOKEN_NORMAL;
    }

    if (t->kind == DUET_TOK_SPM) {
        rc = duet_gguf_get_arr(g, "tokenizer.ggml.scores", DUET_GGUF_FLOAT32, &scores);
        if (rc != DUET_OK)
            return rc;
        if (scores->n_elems != tokens->n_elems)
            return duet_error(DUET_ERR_FORMAT, "tokenizer.ggml.scores has %llu entries; the "
                              "vocabulary has %d", (unsigned long long)scores->n_elems, t->n_vocab);
        t->score = malloc((size_t)t->n_vocab * sizeof *t->score);
        if (!t->score)
            return duet_error(DUET_ERR_OUT_OF_MEMORY, "tokenizer: out of memory for scores");
        for (int32_t i = 0; i < t->n_vocab; i++)
            t->score[i] = (float)duet_gguf_arr_float(scores, (uint64_t)i);
    }
    return build_vocab_map(t);
}

static duet_status load_model(const duet_gguf *g, duet_tokenizer *t)
{
    duet_gguf_str model, pre = {"default", 7};
    duet_status rc = duet_gguf_get_str(g, "tokenizer.ggml.model", &model);
    if (rc != DUET_OK)
        return rc;
    if (duet_gguf_str_eq(model, "gpt2"))
        t->kind = DUET_TOK_BPE;
    else if (duet_gguf_str_eq(model, "llama"))
        t->kind = DUET_TOK_SPM;
    else
        return duet_error(DUET_ERR_UNSUPPORTED, "tokenizer.ggml.model '%.*s' is not supported; "
                          "supported: \"gpt2\" (byte-level BPE), \"llama\" (SentencePiece BPE)",
                          (int)(model.len > 64 ? 64 : model.len), model.ptr);
    if (t->kind == DUET_TOK_BPE) {
        if (duet_gguf_find(g, "tokenizer.ggml.pre") &&
            (rc = duet_gguf_get_str(g, "tokenizer.ggml.pre", &pre)) != DUET_OK)
            return rc;
        if ((rc = duet_pretok_create(pre.ptr, pre.len, &t->pretok)) != DUET_OK)
            return rc;
        t->ignore_merges = duet_pretok_ignore_merges(t->pretok);
    }

    size_t text_bytes = 0;
    if ((rc = load_vocab(g, t, &text_bytes)) != DUET_OK)
        return rc;
    if ((rc = read_special_id(g, t, "tokenizer.ggml.bos_token_id", &t->bos)) != DUET_OK ||
        (rc = read_special_id(g, t, "tokenizer.ggml.eos_token_id", &t->eos)) != DUET_OK ||
        (rc = read_special_id(g, t, "tokenizer.ggml.unknown_token_id", &t->unk)) != DUET_OK ||
        (rc = read_special_id(g, t, "tokenizer.ggml.padding_token_id", &t->pad)) != DUET_OK ||
        (rc = read_special_id(g, t, "tokenizer.ggml.eot_token_id", &t->eot)) != DUET_OK ||
        (rc = read_special_id(g, t, "tokenizer.ggml.eom_token_id", &t->eom)) != DUET_OK)
        return rc;
    /* llama.cpp's defaults: SentencePiece models add BOS and a dummy prefix
     * unless the file says otherwise; byte-level ones do neither */
    int spm = t->kind == DUET_TOK_SPM;
    if ((rc = duet_gguf_get_bool_or(g, "tokenizer.ggml.add_bos_token", spm, &t->add_bos)) != DUET_OK ||
        (rc = duet_gguf_get_bool_or(g, "tokenizer.ggml.add_space_prefix", spm,
                                    &t->add_space_prefix)) != DUET_OK)
        return rc;

    if (t->kind == DUET_TOK_BPE) {
        const duet_gguf_kv *merges;
        if ((rc = duet_gguf_get_arr(g, "tokenizer.ggml.merges", DUET_GGUF_STRING, &merges)) != DUET_OK)
            return rc;
        rc = duet_bpe_init(t, merges);
    } else {
        rc = duet_spm_init(t);
    }
    if (rc != DUET_OK)
        return rc;
    if ((rc = build_decode_table(t, text_bytes)) != DUET_OK)
        return rc;
    return build_specials(t);
}

duet_status duet_tokenizer_load(const duet_gguf *g, duet_tokenizer **out)
{
    *out = NULL;
    duet_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    t->bos = t->eos = t->unk = t->pad = t->eot = t->eom = -1;
    duet_status rc = load_model(g, t);
    if (rc != DUET_OK) {
        duet_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return DUET_OK;
}

void duet_tokenizer_free(duet_tokenizer *t)
{
    if (!t)
        return;
    duet_pretok_free(t->pretok);
    duet_bpe_free(t);
    free(t->vocab.slots);
    free(t->special);
    free(t->eog);
    free(t->score);
    free(t->type);
    free(t->bytes_len);
    free(t->bytes_off);
    free(t->bytes);
    free(t->text_len);
    free(t->text_off);
    free(t->text);
    free(t);
}

/* ---- queries --------------------------------------------------------------- */

int duet_tokenizer_vocab_size(const duet_tokenizer *t) { return t->n_vocab; }
int32_t duet_tokenizer_bos(const duet_tokenizer *t) { return t->bos; }
int32_t duet_tokenizer_eos(const duet_tokenizer *t) { return t->eos; }
int duet_tokenizer_add_bos(const duet_tokenizer *t) { return t->add_bos; }

int duet_tokenizer_is_eog(const duet_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && t->eog[id];
}

int duet_tokenizer_is_special(const duet_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && t->type[id] == DUET_TOKEN_CONTROL;
}

int32_t duet_tokenizer_find(const duet_tokenizer *t, const char *text, size_t len)
{
    return duet_vocab_lookup(t, text, len);
}

const char *duet_tokenizer_token_bytes(const duet_tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->n_vocab) {
        *len = 0;
        return NULL;
    }
    *len = t->bytes_len[id];
    return t->bytes + t->bytes_off[id];
}

/* ---- encoding ---------------------------------------------------------------- */

typedef struct encode_run {
    const duet_tokenizer *t;
    const char *text;
    duet_ids *out;
} encode_run;

static duet_status encode_piece(void *user, size_t start, size_t end)
{
    const encode_run *r = user;
    return duet_bpe_encode_segment(r->t, r->text + start, end - start, r->out);
}

/* One stretch of text between special tokens; at_start: it begins the
 * input (SentencePiece's dummy prefix goes only there, as with HF's
 * Metaspace prepend_scheme "first"). */
static duet_status encode_text(const duet_tokenizer *t, const char *s, size_t len, int at_start,
                               duet_ids *out)
{
    if (t->kind == DUET_TOK_SPM)
        return duet_spm_encode_segment(t, s, len, at_start && t->add_space_prefix, out);
    encode_run r = {.t = t, .text = s, .out = out};
    return duet_pretok_split(t->pretok, s, len, encode_piece, &r);
}

duet_status duet_tokenizer_encode(const duet_tokenizer *t, const char *text, size_t len,
                                  int add_bos, int parse_special, int32_t **ids, size_t *n)
{
    duet_status rc = DUET_OK;
    duet_ids out = {0};
    *ids = NULL;
    *n = 0;
    /* symbol positions are int32 and SentencePiece triples spaces */
    if (len > DUET_TOKENIZER_MAX_TEXT)
        return duet_error(DUET_ERR_INVALID_ARG, "tokenizer: text of %zu bytes exceeds the limit "
                          "of %d bytes", len, DUET_TOKENIZER_MAX_TEXT);
    size_t seg = 0;
    if (parse_special ? t->n_special > 0 : t->n_user_defined > 0) {
        for (size_t pos = 0; pos < len;) {
            int32_t id = match_special(t, text, len, pos, parse_special);
            if (id < 0) {
                pos++;
                continue;
            }
            if (pos > seg && (rc = encode_text(t, text + seg, pos - seg, seg == 0, &out)) != DUET_OK)
                goto out_free_ids;
            if ((rc = duet_ids_push(&out, id)) != DUET_OK)
                goto out_free_ids;
            pos += t->text_len[id];
            seg = pos;
        }
    }
    if (len > seg && (rc = encode_text(t, text + seg, len - seg, seg == 0, &out)) != DUET_OK)
        goto out_free_ids;

    if (add_bos && t->add_bos && t->bos >= 0 && (out.n == 0 || out.v[0] != t->bos)) {
        if ((rc = duet_ids_push(&out, t->bos)) != DUET_OK)
            goto out_free_ids;
        memmove(out.v + 1, out.v, (out.n - 1) * sizeof *out.v);
        out.v[0] = t->bos;
    }
    if (!out.v && (rc = duet_ids_push(&out, 0)) == DUET_OK)
        out.n = 0; /* a valid pointer even for no ids, so callers can free it */
    if (rc != DUET_OK)
        goto out_free_ids;
    *ids = out.v;
    *n = out.n;
    return DUET_OK;

out_free_ids:
    free(out.v);
    return rc;
}

static int merge_before(const duet_merge_cand *x, const duet_merge_cand *y)
{
    return x->key < y->key || (x->key == y->key && x->pos < y->pos);
}

void duet_merge_heap_push(duet_merge_heap *h, duet_merge_cand c)
{
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!merge_before(&c, &h->v[parent]))
            break;
        h->v[i] = h->v[parent];
        i = parent;
    }
    h->v[i] = c;
}

duet_merge_cand duet_merge_heap_pop(duet_merge_heap *h)
{
    duet_merge_cand top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && merge_before(&h->v[c + 1], &h->v[c]))
            c++;
        if (!merge_before(&h->v[c], &last))
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n > 0)
        h->v[i] = last;
    return top;
}
