/*
 * test_tokenizer.c — the tokenizer against HF tokenizers' ids.
 *
 * Reference data comes from tests/reference/make_tokenizer_fixtures.py:
 * SmolLM2's ids for the corpus (the real model GGUF is loaded here), the
 * pre-tokenizer splits of llama-bpe / qwen2 / gpt-2 / smollm, and a tiny
 * SentencePiece model trained by the sentencepiece package. A second
 * SentencePiece vocabulary is built by hand below, with ids worked out on
 * paper. Tokenizer-only GGUF images are written in memory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <jansson.h>

#include "../default_model.h"
#include "error.h"
#include "gguf.h"
#include "tokenizer.h"
#include "tokenizer_impl.h"

#define FIXTURES DUET_SOURCE_DIR "/tests/reference/fixtures/"

/* Bytes SmolLM2's vocabulary has no token for (checked with the gguf
 * Python package): HF's BPE, which has no unk token, drops them. */
static const unsigned char SMOLLM2_MISSING_BYTES[] = {
    0x04, 0x06, 0x13, 0x14, 0x16, 0x1d, 0xc0, 0xc1, 0xf1, 0xf2,
    0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff,
};

/* ---- helpers ----------------------------------------------------------- */

static duet_gguf *g_model;
static duet_tokenizer *g_tok;

static int setup_model(void **state)
{
    (void)state;
    char path[4096];
    duet_test_model_path(path, sizeof path);
    if (duet_gguf_open(path, &g_model) != DUET_OK) {
        fprintf(stderr,
                "test_tokenizer: cannot open the model GGUF '%s': %s\n"
                "  fetch it with scripts/fetch-model.sh (into ~/.cache/duet/models), "
                "or set DUET_MODEL to its path\n",
                path, duet_last_error());
        return -1;
    }
    if (duet_tokenizer_load(g_model, &g_tok) != DUET_OK) {
        fprintf(stderr, "test_tokenizer: tokenizer load failed: %s\n", duet_last_error());
        return -1;
    }
    return 0;
}

static int teardown_model(void **state)
{
    (void)state;
    duet_tokenizer_free(g_tok);
    duet_gguf_close(g_model);
    return 0;
}

static json_t *load_fixture(const char *name)
{
    json_error_t err;
    char path[4096];
    snprintf(path, sizeof path, FIXTURES "%s", name);
    json_t *j = json_load_file(path, JSON_ALLOW_NUL, &err);
    if (!j)
        fail_msg("cannot read %s: %s (line %d); run tests/reference/make_tokenizer_fixtures.py",
                 path, err.text, err.line);
    return j;
}

static void print_text(const char *s, size_t n)
{
    fputc('"', stderr);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            fputs("\\n", stderr);
        else if (c < 0x20 || c == 0x7f)
            fprintf(stderr, "\\x%02x", c);
        else
            fputc(c, stderr);
    }
    fputc('"', stderr);
}

static void print_ids(const char *label, const int32_t *ids, size_t n)
{
    fprintf(stderr, "  %s (%zu):", label, n);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, " %d", ids[i]);
    fputc('\n', stderr);
}

/* Compare the ids of text with a JSON array; on a mismatch print both. */
static int ids_equal(const duet_tokenizer *t, const char *text, size_t len, int add_bos,
                     int parse_special, json_t *want, const char *what)
{
    int32_t *ids;
    size_t n;
    assert_int_equal(duet_tokenizer_encode(t, text, len, add_bos, parse_special, &ids, &n), DUET_OK);
    assert_non_null(ids);
    int ok = n == json_array_size(want);
    for (size_t i = 0; ok && i < n; i++)
        ok = ids[i] == json_integer_value(json_array_get(want, i));
    if (!ok) {
        fprintf(stderr, "MISMATCH (%s) for ", what);
        print_text(text, len);
        fputc('\n', stderr);
        int32_t *w = malloc((json_array_size(want) + 1) * sizeof *w);
        for (size_t i = 0; i < json_array_size(want); i++)
            w[i] = (int32_t)json_integer_value(json_array_get(want, i));
        print_ids("expected", w, json_array_size(want));
        print_ids("got     ", ids, n);
        free(w);
    }
    free(ids);
    return ok;
}

/* Concatenated token bytes of ids into a malloc'd buffer. */
static char *decode_ids(const duet_tokenizer *t, const int32_t *ids, size_t n, size_t *len)
{
    size_t cap = 16, w = 0;
    char *out = malloc(cap);
    for (size_t i = 0; i < n; i++) {
        size_t tl;
        const char *tb = duet_tokenizer_token_bytes(t, ids[i], &tl);
        assert_non_null(tb);
        while (w + tl > cap)
            out = realloc(out, cap *= 2);
        memcpy(out + w, tb, tl);
        w += tl;
    }
    *len = w;
    return out;
}

/* ---- a GGUF image in memory (tokenizer metadata only) ------------------ */

typedef struct gbuf {
    unsigned char *p;
    size_t n, cap;
    uint64_t n_kv;
} gbuf;

static void put(gbuf *b, const void *d, size_t n)
{
    while (b->n + n > b->cap) {
        b->cap = b->cap ? 2 * b->cap : 1024;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put_u32(gbuf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(gbuf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(gbuf *b, const char *s, size_t n)
{
    put_u64(b, n);
    put(b, s, n);
}
static void kv_head(gbuf *b, const char *key, uint32_t type)
{
    put_str(b, key, strlen(key));
    put_u32(b, type);
    b->n_kv++;
}
static void kv_str(gbuf *b, const char *key, const char *v)
{
    kv_head(b, key, DUET_GGUF_STRING);
    put_str(b, v, strlen(v));
}
static void kv_u32(gbuf *b, const char *key, uint32_t v)
{
    kv_head(b, key, DUET_GGUF_UINT32);
    put_u32(b, v);
}
static void kv_bool(gbuf *b, const char *key, int v)
{
    kv_head(b, key, DUET_GGUF_BOOL);
    unsigned char c = (unsigned char)v;
    put(b, &c, 1);
}
static void kv_arr_head(gbuf *b, const char *key, uint32_t elem, uint64_t n)
{
    kv_head(b, key, DUET_GGUF_ARRAY);
    put_u32(b, elem);
    put_u64(b, n);
}

/* Header first, then the kvs already in body; no tensors. */
static duet_gguf *gguf_from(gbuf *body, unsigned char **image)
{
    gbuf img = {0};
    put(&img, "GGUF", 4);
    put_u32(&img, 3);
    put_u64(&img, 0);
    put_u64(&img, body->n_kv);
    put(&img, body->p, body->n);
    while (img.n % 32)
        put(&img, "", 1);
    free(body->p);
    duet_gguf *g;
    if (duet_gguf_open_memory(img.p, img.n, "test-tokenizer", &g) != DUET_OK)
        fail_msg("in-memory GGUF rejected: %s", duet_last_error());
    *image = img.p;
    return g;
}

/* ---- SmolLM2 against HF ---------------------------------------------------- */

static void test_smollm2_metadata(void **state)
{
    (void)state;
    size_t n;
    const char *s;
    assert_int_equal(duet_tokenizer_vocab_size(g_tok), 49152);
    /* ids 0..2 are <|endoftext|>, <|im_start|>, <|im_end|>; the GGUF says
     * bos = 1 and eos = 2 (HF's config says the same: bos "<|im_start|>",
     * eos "<|im_end|>"), and add_bos_token = false */
    s = duet_tokenizer_token_bytes(g_tok, 0, &n);
    assert_memory_equal(s, "<|endoftext|>", n);
    s = duet_tokenizer_token_bytes(g_tok, 1, &n);
    assert_memory_equal(s, "<|im_start|>", n);
    s = duet_tokenizer_token_bytes(g_tok, 2, &n);
    assert_memory_equal(s, "<|im_end|>", n);
    assert_int_equal(duet_tokenizer_bos(g_tok), 1);
    assert_int_equal(duet_tokenizer_eos(g_tok), 2);
    assert_int_equal(duet_tokenizer_add_bos(g_tok), 0);
    assert_true(duet_tokenizer_is_eog(g_tok, 0));
    assert_false(duet_tokenizer_is_eog(g_tok, 1));
    assert_true(duet_tokenizer_is_eog(g_tok, 2));
    assert_false(duet_tokenizer_is_eog(g_tok, 3));
    assert_false(duet_tokenizer_is_eog(g_tok, -1));
    assert_false(duet_tokenizer_is_eog(g_tok, 49152));
    assert_true(duet_tokenizer_is_special(g_tok, 16));
    assert_false(duet_tokenizer_is_special(g_tok, 17));
    assert_null(duet_tokenizer_token_bytes(g_tok, 49152, &n));
    assert_null(duet_tokenizer_token_bytes(g_tok, -1, &n));
    assert_int_equal(duet_tokenizer_find(g_tok, "<|im_end|>", 10), 2);
    assert_int_equal(duet_tokenizer_find(g_tok, "\xc4\xa0the", 5), 260); /* "Ġthe" */
    assert_int_equal(duet_tokenizer_find(g_tok, "no such token", 13), -1);
    /* byte-level unmapping: "Ġthe" is " the" */
    s = duet_tokenizer_token_bytes(g_tok, 260, &n);
    assert_int_equal(n, 4);
    assert_memory_equal(s, " the", 4);
}

static void test_smollm2_corpus(void **state)
{
    (void)state;
    json_t *cases = load_fixture("tokenizer_smollm2.json");
    size_t n_cases = json_array_size(cases), ok_special = 0, ok_plain = 0, ok_bos = 0,
           ok_round = 0, n_round = 0;
    for (size_t i = 0; i < n_cases; i++) {
        json_t *c = json_array_get(cases, i);
        const char *text = json_string_value(json_object_get(c, "text"));
        size_t len = json_string_length(json_object_get(c, "text"));
        ok_special += ids_equal(g_tok, text, len, 0, 1, json_object_get(c, "ids"), "parse_special");
        ok_plain += ids_equal(g_tok, text, len, 0, 0, json_object_get(c, "ids_plain"), "plain");
        /* add_bos is a no-op for SmolLM2 (add_bos_token = false) */
        ok_bos += ids_equal(g_tok, text, len, 1, 1, json_object_get(c, "ids"), "add_bos");

        if (!json_is_true(json_object_get(c, "roundtrip")))
            continue;
        n_round++;
        for (int ps = 0; ps < 2; ps++) {
            int32_t *ids;
            size_t n, dl;
            assert_int_equal(duet_tokenizer_encode(g_tok, text, len, 0, ps, &ids, &n), DUET_OK);
            char *dec = decode_ids(g_tok, ids, n, &dl);
            int same = dl == len && memcmp(dec, text, len) == 0;
            if (!same) {
                fprintf(stderr, "ROUNDTRIP (parse_special=%d) failed for ", ps);
                print_text(text, len);
                fprintf(stderr, "\n  decoded: ");
                print_text(dec, dl);
                fputc('\n', stderr);
            }
            ok_round += same && ps == 1;
            free(dec);
            free(ids);
        }
    }
    fprintf(stderr, "SmolLM2 vs HF: %zu/%zu exact (parse_special), %zu/%zu exact (plain), "
            "%zu/%zu decode(encode(text)) == text\n", ok_special, n_cases, ok_plain, n_cases,
            ok_round, n_round);
    assert_true(n_cases >= 200);
    assert_int_equal(ok_special, n_cases);
    assert_int_equal(ok_plain, n_cases);
    assert_int_equal(ok_bos, n_cases);
    assert_int_equal(ok_round, n_round);
    json_decref(cases);
}

static void test_smollm2_special_tokens(void **state)
{
    (void)state;
    const char *chat = "<|im_start|>user\nHi<|im_end|>\n";
    int32_t *ids;
    size_t n;
    assert_int_equal(duet_tokenizer_encode(g_tok, chat, strlen(chat), 0, 1, &ids, &n), DUET_OK);
    assert_true(n >= 4);
    assert_int_equal(ids[0], 1);
    int found_end = 0;
    for (size_t i = 0; i < n; i++)
        found_end |= ids[i] == 2;
    assert_true(found_end);
    free(ids);
    /* without parse_special the markers are text: no control ids at all */
    assert_int_equal(duet_tokenizer_encode(g_tok, chat, strlen(chat), 0, 0, &ids, &n), DUET_OK);
    for (size_t i = 0; i < n; i++)
        assert_false(duet_tokenizer_is_special(g_tok, ids[i]));
    free(ids);
    /* the empty text gives no ids but a pointer that can be freed */
    assert_int_equal(duet_tokenizer_encode(g_tok, "", 0, 1, 1, &ids, &n), DUET_OK);
    assert_int_equal(n, 0);
    free(ids);
}

/* ---- invalid UTF-8 ---------------------------------------------------------- */

static int missing_byte(unsigned char c)
{
    return memchr(SMOLLM2_MISSING_BYTES, c, sizeof SMOLLM2_MISSING_BYTES) != NULL;
}

/* Every byte the vocabulary has must come back from decode, in order. */
static void check_bytes_kept(const char *text, size_t len, int parse_special)
{
    int32_t *ids;
    size_t n, dl, el = 0;
    assert_int_equal(duet_tokenizer_encode(g_tok, text, len, 0, parse_special, &ids, &n), DUET_OK);
    for (size_t i = 0; i < n; i++)
        assert_true(ids[i] >= 0 && ids[i] < 49152);
    char *dec = decode_ids(g_tok, ids, n, &dl);
    char *want = malloc(len + 1);
    for (size_t i = 0; i < len; i++)
        if (!missing_byte((unsigned char)text[i]))
            want[el++] = text[i];
    if (dl != el || memcmp(dec, want, el) != 0) {
        fprintf(stderr, "bytes lost for ");
        print_text(text, len);
        fprintf(stderr, "\n  decoded: ");
        print_text(dec, dl);
        fputc('\n', stderr);
        fail();
    }
    free(want);
    free(dec);
    free(ids);
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "\x80", "abc\xff", "\xe2\x82", "x \xe2\x82 y", "\xed\xa0\x80 surrogate",
        "\xc0\xaf overlong", "\xf4\x90\x80\x80 too big", "\xf0\x9f\x98", "12\x80" "34",
        "<|im_end|>\xe2", "\xe2<|im_end|>", "  \x81  \x82\n", "\xc3\xa9\xc3",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        for (int ps = 0; ps < 2; ps++)
            check_bytes_kept(bad[i], strlen(bad[i]), ps);

    /* seeded random bytes: no crash, ids in range, no byte lost */
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    char buf[256];
    for (int it = 0; it < 3000; it++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t len = x % sizeof buf;
        for (size_t i = 0; i < len; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            /* bias towards text-like bytes so the regexes see mixed input */
            unsigned r = (unsigned)(x >> 24);
            buf[i] = r % 3 == 0 ? "a 1\n'<|>"[r % 8] : (char)r;
        }
        check_bytes_kept(buf, len, it & 1);
    }
}

/* ---- long input ----------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void time_encode(const char *what, const char *text, size_t len)
{
    int32_t *ids;
    size_t n, dl;
    double t0 = now_s();
    assert_int_equal(duet_tokenizer_encode(g_tok, text, len, 0, 1, &ids, &n), DUET_OK);
    double dt = now_s() - t0;
    fprintf(stderr, "encode %s: %zu bytes -> %zu tokens in %.1f ms (%.1f MB/s)\n", what, len, n,
            dt * 1e3, (double)len / dt / 1e6);
    char *dec = decode_ids(g_tok, ids, n, &dl);
    assert_int_equal(dl, len);
    assert_memory_equal(dec, text, len);
    free(dec);
    free(ids);
}

static void test_long_text(void **state)
{
    (void)state;
    json_t *cases = load_fixture("tokenizer_smollm2.json");
    size_t cap = 100 * 1024, len = 0;
    char *text = malloc(cap);
    for (size_t i = 0; len < cap; i = (i + 1) % json_array_size(cases)) {
        json_t *c = json_array_get(cases, i);
        if (!json_is_true(json_object_get(c, "roundtrip")))
            continue;
        size_t tl = json_string_length(json_object_get(c, "text"));
        if (tl > cap - len)
            tl = cap - len;
        memcpy(text + len, json_string_value(json_object_get(c, "text")), tl);
        len += tl;
    }
    /* the cut at 100 KB may split a character: end on a boundary */
    while (len > 0 && (text[len - 1] & 0x80))
        len--;
    time_encode("corpus text", text, len);
    memset(text, 'a', cap);
    time_encode("100 KB of 'a' (one pre-token)", text, cap);
    for (size_t i = 0; i < cap; i++)
        text[i] = "ab"[i % 2];
    time_encode("100 KB of 'abab'", text, cap);
    memset(text, ' ', cap);
    time_encode("100 KB of spaces", text, cap);
    free(text);
    json_decref(cases);
}

/* ---- streaming UTF-8 --------------------------------------------------------------- */

static void test_utf8_stream(void **state)
{
    (void)state;
    duet_utf8_stream st = {0};
    char out[64];
    const char *grin = "\xf0\x9f\x98\x80"; /* U+1F600 */
    for (int i = 0; i < 3; i++)
        assert_int_equal(duet_utf8_stream_push(&st, grin + i, 1, out), 0);
    assert_int_equal(duet_utf8_stream_push(&st, grin + 3, 1, out), 4);
    assert_memory_equal(out, grin, 4);
    assert_int_equal(duet_utf8_stream_flush(&st, out), 0);

    /* split 2 + 2, with text around it */
    size_t w = duet_utf8_stream_push(&st, "a\xf0\x9f", 3, out);
    assert_int_equal(w, 1);
    assert_memory_equal(out, "a", 1);
    w = duet_utf8_stream_push(&st, "\x98\x80z", 3, out);
    assert_int_equal(w, 5);
    assert_memory_equal(out, "\xf0\x9f\x98\x80z", 5);

    /* invalid bytes: one U+FFFD each (maximal subparts) */
    w = duet_utf8_stream_push(&st, "\x80x\xff", 3, out);
    assert_int_equal(w, 7);
    assert_memory_equal(out, "\xef\xbf\xbdx\xef\xbf\xbd", 7);
    /* a cut 3-byte character followed by ASCII is one U+FFFD */
    w = duet_utf8_stream_push(&st, "\xe2\x82", 2, out);
    assert_int_equal(w, 0);
    w = duet_utf8_stream_push(&st, "A", 1, out);
    assert_int_equal(w, 4);
    assert_memory_equal(out, "\xef\xbf\xbd" "A", 4);
    /* overlong and surrogate forms never pass through */
    w = duet_utf8_stream_push(&st, "\xc0\xaf\xed\xa0\x80", 5, out);
    assert_int_equal(w, 5 * 3);
    for (int i = 0; i < 5; i++)
        assert_memory_equal(out + 3 * i, "\xef\xbf\xbd", 3);
    w = duet_utf8_stream_push(&st, "\xf4\x90", 2, out); /* > U+10FFFF */
    assert_int_equal(w, 6);

    /* truncated tail at flush */
    w = duet_utf8_stream_push(&st, "ok\xe2\x82", 4, out);
    assert_int_equal(w, 2);
    assert_int_equal(duet_utf8_stream_flush(&st, out), 3);
    assert_memory_equal(out, "\xef\xbf\xbd", 3);
    assert_int_equal(duet_utf8_stream_flush(&st, out), 0);

    /* worst case fits the documented bound */
    char bad[16], big[DUET_UTF8_STREAM_OUT_MAX(16)];
    memset(bad, 0xff, sizeof bad);
    st.n_pending = 0;
    w = duet_utf8_stream_push(&st, "\xf0\x9f\x98", 3, big);
    w = duet_utf8_stream_push(&st, bad, sizeof bad, big);
    assert_true(w <= DUET_UTF8_STREAM_OUT_MAX(16));
    assert_int_equal(w, 3 * 17);
}

/* Streaming the tokens of the whole corpus gives back the text. */
static void test_utf8_stream_tokens(void **state)
{
    (void)state;
    json_t *cases = load_fixture("tokenizer_smollm2.json");
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        if (!json_is_true(json_object_get(c, "roundtrip")))
            continue;
        const char *text = json_string_value(json_object_get(c, "text"));
        size_t len = json_string_length(json_object_get(c, "text"));
        json_t *ids = json_object_get(c, "ids");
        char *out = malloc(DUET_UTF8_STREAM_OUT_MAX(len) + 64);
        size_t w = 0;
        duet_utf8_stream st = {0};
        for (size_t k = 0; k < json_array_size(ids); k++) {
            size_t tl;
            const char *tb =
                duet_tokenizer_token_bytes(g_tok, (int32_t)json_integer_value(json_array_get(ids, k)), &tl);
            w += duet_utf8_stream_push(&st, tb, tl, out + w);
        }
        w += duet_utf8_stream_flush(&st, out + w);
        assert_int_equal(w, len);
        assert_memory_equal(out, text, len);
        free(out);
    }
    json_decref(cases);
}

/* ---- pre-tokenizers of models we have no GGUF for -------------------------------- */

typedef struct piece_list {
    const char *text;
    size_t starts[4096], ends[4096];
    size_t n;
} piece_list;

static duet_status collect(void *user, size_t start, size_t end)
{
    piece_list *p = user;
    assert_true(p->n < 4096);
    p->starts[p->n] = start;
    p->ends[p->n++] = end;
    return DUET_OK;
}

/* Ill-formed UTF-8 splits as HF splits Python's errors='replace' decoding
 * of it: the same pieces, each ill-formed subpart standing for one U+FFFD. */
static void check_invalid_splits(const duet_pretok *p, const char *name, json_t *fx, piece_list *pl)
{
    char key[64];
    snprintf(key, sizeof key, "%s invalid", name);
    json_t *rows = json_object_get(fx, key);
    assert_non_null(rows);
    size_t ok = 0;
    for (size_t i = 0; i < json_array_size(rows); i++) {
        json_t *row = json_array_get(rows, i), *pieces = json_object_get(row, "pieces");
        const char *hex = json_string_value(json_object_get(row, "hex"));
        char raw[128];
        size_t len = strlen(hex) / 2;
        assert_true(len <= sizeof raw);
        for (size_t k = 0; k < len; k++) {
            unsigned v;
            sscanf(hex + 2 * k, "%2x", &v);
            raw[k] = (char)v;
        }
        pl->n = 0;
        assert_int_equal(duet_pretok_split(p, raw, len, collect, pl), DUET_OK);
        int same = pl->n == json_array_size(pieces);
        for (size_t j = 0; same && j < pl->n; j++) {
            char out[DUET_UTF8_STREAM_OUT_MAX(128)];
            duet_utf8_stream st = {0};
            size_t w = duet_utf8_stream_push(&st, raw + pl->starts[j], pl->ends[j] - pl->starts[j], out);
            w += duet_utf8_stream_flush(&st, out + w);
            json_t *pc = json_array_get(pieces, j);
            same = w == json_string_length(pc) && memcmp(out, json_string_value(pc), w) == 0;
        }
        if (!same) {
            fprintf(stderr, "INVALID-UTF-8 SPLIT MISMATCH (%s) for ", name);
            print_text(raw, len);
            fputc('\n', stderr);
        }
        ok += same;
    }
    fprintf(stderr, "pre-tokenizer %s vs HF on ill-formed UTF-8: %zu/%zu splits exact\n", name, ok,
            json_array_size(rows));
    assert_int_equal(ok, json_array_size(rows));
}

static void test_pretokenizers(void **state)
{
    (void)state;
    json_t *fx = load_fixture("tokenizer_pretok.json");
    static const char *const names[] = {"llama-bpe", "qwen2", "gpt-2", "smollm"};
    piece_list *pl = malloc(sizeof *pl);
    for (size_t k = 0; k < 4; k++) {
        json_t *rows = json_object_get(fx, names[k]);
        assert_non_null(rows);
        duet_pretok *p;
        assert_int_equal(duet_pretok_create(names[k], strlen(names[k]), &p), DUET_OK);
        size_t ok = 0;
        for (size_t i = 0; i < json_array_size(rows); i++) {
            json_t *row = json_array_get(rows, i), *pieces = json_object_get(row, "pieces");
            const char *text = json_string_value(json_object_get(row, "text"));
            size_t len = json_string_length(json_object_get(row, "text"));
            pl->n = 0;
            assert_int_equal(duet_pretok_split(p, text, len, collect, pl), DUET_OK);
            int same = pl->n == json_array_size(pieces);
            for (size_t j = 0; same && j < pl->n; j++) {
                json_t *pc = json_array_get(pieces, j);
                same = pl->ends[j] - pl->starts[j] == json_string_length(pc) &&
                       memcmp(text + pl->starts[j], json_string_value(pc), json_string_length(pc)) == 0;
            }
            if (!same) {
                fprintf(stderr, "SPLIT MISMATCH (%s) for ", names[k]);
                print_text(text, len);
                fprintf(stderr, "\n  expected:");
                for (size_t j = 0; j < json_array_size(pieces); j++) {
                    fputc(' ', stderr);
                    print_text(json_string_value(json_array_get(pieces, j)),
                               json_string_length(json_array_get(pieces, j)));
                }
                fprintf(stderr, "\n  got:     ");
                for (size_t j = 0; j < pl->n; j++) {
                    fputc(' ', stderr);
                    print_text(text + pl->starts[j], pl->ends[j] - pl->starts[j]);
                }
                fputc('\n', stderr);
            }
            ok += same;
        }
        fprintf(stderr, "pre-tokenizer %s vs HF: %zu/%zu splits exact\n", names[k], ok,
                json_array_size(rows));
        assert_int_equal(ok, json_array_size(rows));
        check_invalid_splits(p, names[k], fx, pl);
        duet_pretok_free(p);
    }
    free(pl);
    json_decref(fx);
}

static void test_unsupported(void **state)
{
    (void)state;
    duet_pretok *p = (duet_pretok *)1;
    assert_int_equal(duet_pretok_create("bloom", 5, &p), DUET_ERR_UNSUPPORTED);
    assert_null(p);
    assert_non_null(strstr(duet_last_error(), "bloom"));
    assert_non_null(strstr(duet_last_error(), "\"smollm\""));
    assert_non_null(strstr(duet_last_error(), "\"qwen2\""));

    static const char *const models[][2] = {{"gpt2", "no-such-pre"}, {"bert", "default"}};
    for (int m = 0; m < 2; m++) {
        gbuf b = {0};
        unsigned char *img;
        kv_str(&b, "tokenizer.ggml.model", models[m][0]);
        kv_str(&b, "tokenizer.ggml.pre", models[m][1]);
        kv_arr_head(&b, "tokenizer.ggml.tokens", DUET_GGUF_STRING, 1);
        put_str(&b, "a", 1);
        kv_arr_head(&b, "tokenizer.ggml.merges", DUET_GGUF_STRING, 0);
        duet_gguf *g = gguf_from(&b, &img);
        duet_tokenizer *t = (duet_tokenizer *)1;
        assert_int_equal(duet_tokenizer_load(g, &t), DUET_ERR_UNSUPPORTED);
        assert_null(t);
        fprintf(stderr, "expected failure: %s\n", duet_last_error());
        assert_non_null(strstr(duet_last_error(), models[m][m == 0 ? 1 : 0]));
        duet_gguf_close(g);
        free(img);
    }
}

/* ---- a hand-built byte-level BPE --------------------------------------------------- */

/* GPT-2's alphabet, written out independently of the tokenizer's: printable
 * Latin-1 keeps its code point, the other 68 bytes move to U+0100.. */
static int gpt2_char(int b, char *out)
{
    int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    int cp = b;
    if (!printable) {
        int k = 0;
        for (int x = 0; x < b; x++)
            k += !((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE));
        cp = 0x100 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

/* ids 0..255: the bytes in order; then a few merged and added tokens */
static duet_tokenizer *bpe_tokenizer(const char *pre, unsigned char **img, duet_gguf **g)
{
    static const char *const extra[] = {"ab", "abc", "\xc4\xa0" "a", "<think>", "<|eot|>", "cd", "xyz"};
    static const int32_t extra_type[] = {1, 1, 1, DUET_TOKEN_USER_DEFINED, DUET_TOKEN_CONTROL, 1, 1};
    static const char *const merges[] = {"a b", "ab c", "\xc4\xa0 a", "c d"};
    gbuf b = {0};
    kv_str(&b, "tokenizer.ggml.model", "gpt2");
    kv_str(&b, "tokenizer.ggml.pre", pre);
    kv_arr_head(&b, "tokenizer.ggml.tokens", DUET_GGUF_STRING, 256 + 7);
    for (int i = 0; i < 256; i++) {
        char c[2];
        put_str(&b, c, (size_t)gpt2_char(i, c));
    }
    for (int i = 0; i < 7; i++)
        put_str(&b, extra[i], strlen(extra[i]));
    kv_arr_head(&b, "tokenizer.ggml.token_type", DUET_GGUF_INT32, 256 + 7);
    for (int i = 0; i < 256; i++)
        put_u32(&b, DUET_TOKEN_NORMAL);
    put(&b, extra_type, sizeof extra_type);
    kv_arr_head(&b, "tokenizer.ggml.merges", DUET_GGUF_STRING, 4);
    for (int i = 0; i < 4; i++)
        put_str(&b, merges[i], strlen(merges[i]));
    kv_u32(&b, "tokenizer.ggml.eos_token_id", 260);
    *g = gguf_from(&b, img);
    duet_tokenizer *t;
    if (duet_tokenizer_load(*g, &t) != DUET_OK)
        fail_msg("BPE tokenizer load failed: %s", duet_last_error());
    return t;
}

static void test_bpe_hand_built(void **state)
{
    (void)state;
    struct { const char *pre, *text; int ps; int32_t ids[12]; size_t n; } cases[] = {
        {"gpt-2", "abc", 0, {257}, 1},                /* a+b (rank 0), then ab+c */
        {"gpt-2", " ab", 0, {32, 256}, 2},            /* a+b beats Ġ+a; no Ġ+ab */
        {"gpt-2", " a", 0, {258}, 1},
        {"gpt-2", "abcd", 0, {257, 'd'}, 2},          /* ab+c (1) beats c+d (3) */
        {"gpt-2", "<think>abc", 0, {259, 257}, 2},    /* user-defined: cut out always */
        {"gpt-2", "<think>abc", 1, {259, 257}, 2},
        {"gpt-2", "<|eot|>abc", 1, {260, 257}, 2},
        {"gpt-2", "<|eot|>abc", 0, {'<', '|', 'e', 'o', 't', '|', '>', 257}, 8},
        {"gpt-2", "xyz", 0, {'x', 'y', 'z'}, 3},
        {"llama-bpe", "xyz", 0, {262}, 1},            /* ignore_merges: whole word */
        {"llama-bpe", "xyzabc", 0, {'x', 'y', 'z', 257}, 4},
        {"qwen2", "xyz", 0, {'x', 'y', 'z'}, 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned char *img;
        duet_gguf *g;
        duet_tokenizer *t = bpe_tokenizer(cases[i].pre, &img, &g);
        json_t *want = json_array();
        for (size_t k = 0; k < cases[i].n; k++)
            json_array_append_new(want, json_integer(cases[i].ids[k]));
        assert_true(ids_equal(t, cases[i].text, strlen(cases[i].text), 1, cases[i].ps, want, cases[i].pre));
        json_decref(want);
        assert_int_equal(duet_tokenizer_bos(t), -1);
        assert_int_equal(duet_tokenizer_add_bos(t), 0);
        assert_true(duet_tokenizer_is_eog(t, 260));
        assert_true(duet_tokenizer_is_special(t, 260));
        assert_false(duet_tokenizer_is_special(t, 259));
        duet_tokenizer_free(t);
        duet_gguf_close(g);
        free(img);
    }
}

/* Malformed metadata fails with a message naming the key, never a crash. */
static void test_bad_metadata(void **state)
{
    (void)state;
    for (int c = 0; c < 6; c++) {
        gbuf b = {0};
        unsigned char *img;
        const char *want = NULL;
        if (c != 5)
            kv_str(&b, "tokenizer.ggml.model", c == 4 ? "llama" : "gpt2");
        kv_arr_head(&b, "tokenizer.ggml.tokens", DUET_GGUF_STRING, 2);
        put_str(&b, "a", 1);
        put_str(&b, "b", 1);
        kv_arr_head(&b, "tokenizer.ggml.merges", DUET_GGUF_STRING, 1);
        switch (c) {
        case 0: put_str(&b, "a c", 3); want = "merges[0]"; break;
        case 1: put_str(&b, "ab", 2); want = "merges[0]"; break;
        case 2:
            put_str(&b, "a b", 3);
            kv_u32(&b, "tokenizer.ggml.eos_token_id", 5);
            want = "eos_token_id";
            break;
        case 3:
            put_str(&b, "a b", 3);
            kv_arr_head(&b, "tokenizer.ggml.token_type", DUET_GGUF_INT32, 1);
            put_u32(&b, 1);
            want = "token_type";
            break;
        case 4: put_str(&b, "a b", 3); want = "scores"; break;
        case 5: put_str(&b, "a b", 3); want = "tokenizer.ggml.model"; break;
        }
        duet_gguf *g = gguf_from(&b, &img);
        duet_tokenizer *t = (duet_tokenizer *)1;
        duet_status st = duet_tokenizer_load(g, &t);
        fprintf(stderr, "expected failure %d: %s\n", c, duet_last_error());
        assert_int_equal(st, DUET_ERR_FORMAT);
        assert_null(t);
        assert_non_null(strstr(duet_last_error(), want));
        duet_gguf_close(g);
        free(img);
    }
}

/* ---- SentencePiece ------------------------------------------------------------------ */

typedef struct spm_vocab {
    const char **tokens;
    const float *scores;
    const int32_t *types;
    size_t n;
} spm_vocab;

static duet_tokenizer *spm_tokenizer(const spm_vocab *v, int add_bos, unsigned char **img,
                                     duet_gguf **g)
{
    gbuf b = {0};
    kv_str(&b, "tokenizer.ggml.model", "llama");
    kv_arr_head(&b, "tokenizer.ggml.tokens", DUET_GGUF_STRING, v->n);
    for (size_t i = 0; i < v->n; i++)
        put_str(&b, v->tokens[i], strlen(v->tokens[i]));
    kv_arr_head(&b, "tokenizer.ggml.scores", DUET_GGUF_FLOAT32, v->n);
    put(&b, v->scores, v->n * sizeof(float));
    kv_arr_head(&b, "tokenizer.ggml.token_type", DUET_GGUF_INT32, v->n);
    put(&b, v->types, v->n * sizeof(int32_t));
    kv_u32(&b, "tokenizer.ggml.bos_token_id", 1);
    kv_u32(&b, "tokenizer.ggml.eos_token_id", 2);
    kv_u32(&b, "tokenizer.ggml.unknown_token_id", 0);
    if (add_bos >= 0)
        kv_bool(&b, "tokenizer.ggml.add_bos_token", add_bos);
    *g = gguf_from(&b, img);
    duet_tokenizer *t;
    if (duet_tokenizer_load(*g, &t) != DUET_OK)
        fail_msg("SentencePiece tokenizer load failed: %s", duet_last_error());
    return t;
}

/* <unk> <s> </s>, 256 byte tokens (ids 3..258), then a few pieces. */
static void test_spm_hand_built(void **state)
{
    (void)state;
    enum { N = 259 + 9 };
    const char *tokens[N];
    float scores[N];
    int32_t types[N];
    char names[256][8];
    tokens[0] = "<unk>", types[0] = DUET_TOKEN_UNKNOWN;
    tokens[1] = "<s>", types[1] = DUET_TOKEN_CONTROL;
    tokens[2] = "</s>", types[2] = DUET_TOKEN_CONTROL;
    for (int i = 0; i < 256; i++) {
        snprintf(names[i], sizeof names[i], "<0x%02X>", i);
        tokens[3 + i] = names[i];
        types[3 + i] = DUET_TOKEN_BYTE;
    }
    static const char *const pieces[9] = {"\xe2\x96\x81", "a", "b", "c", "ab", "bc",
                                          "\xe2\x96\x81" "a", "\xe2\x96\x81" "abc", "abc"};
    static const float piece_scores[9] = {-1, -2, -3, -4, -5, -0.5f, -6, -8, -7};
    for (int i = 0; i < 9; i++) {
        tokens[259 + i] = pieces[i];
        scores[259 + i] = piece_scores[i];
        types[259 + i] = DUET_TOKEN_NORMAL;
    }
    for (int i = 0; i < 259; i++)
        scores[i] = 0;
    spm_vocab v = {tokens, scores, types, N};
    unsigned char *img;
    duet_gguf *g;
    duet_tokenizer *t = spm_tokenizer(&v, -1, &img, &g);
    assert_int_equal(duet_tokenizer_add_bos(t), 1); /* SentencePiece default */

    /* worked by hand: "▁abc": bc (-0.5) first, then ▁a (-6), then ▁a+bc */
    struct { const char *text; int ps; int32_t ids[6]; size_t n; } cases[] = {
        {"abc", 0, {266}, 1},
        {"ab", 0, {259, 263}, 2},           /* ab (-5) beats ▁a (-6); no "▁ab" */
        {"d", 0, {259, 3 + 'd'}, 2},        /* byte fallback */
        {"\xc3\xa9", 0, {259, 3 + 0xC3, 3 + 0xA9}, 3},
        {" a", 0, {259, 265}, 2},           /* "▁▁a": ▁▁ is not a piece */
        {"abc abc", 0, {266, 266}, 2},
        {"<s>abc", 1, {1, 267}, 2},         /* no dummy prefix after a special token */
        {"<s>abc", 0, {259, 3 + '<', 3 + 's', 3 + '>', 267}, 5},
        {"", 0, {0}, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *want = json_array();
        for (size_t k = 0; k < cases[i].n; k++)
            json_array_append_new(want, json_integer(cases[i].ids[k]));
        assert_true(ids_equal(t, cases[i].text, strlen(cases[i].text), 0, cases[i].ps, want, "spm hand"));
        json_decref(want);
    }
    /* add_bos: BOS first, once */
    int32_t *ids;
    size_t n;
    assert_int_equal(duet_tokenizer_encode(t, "abc", 3, 1, 0, &ids, &n), DUET_OK);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 266);
    free(ids);
    assert_int_equal(duet_tokenizer_encode(t, "<s>abc", 6, 1, 1, &ids, &n), DUET_OK);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 1);
    free(ids);
    /* decode: ▁ is a space, <0xNN> its byte */
    size_t bl;
    const char *tb = duet_tokenizer_token_bytes(t, 266, &bl);
    assert_int_equal(bl, 4);
    assert_memory_equal(tb, " abc", 4);
    tb = duet_tokenizer_token_bytes(t, 3 + 0xC3, &bl);
    assert_int_equal(bl, 1);
    assert_int_equal((unsigned char)tb[0], 0xC3);
    assert_true(duet_tokenizer_is_eog(t, 2));
    duet_tokenizer_free(t);
    duet_gguf_close(g);
    free(img);
}

static void test_spm_sentencepiece(void **state)
{
    (void)state;
    json_t *fx = load_fixture("tokenizer_spm.json");
    json_t *jt = json_object_get(fx, "tokens"), *js = json_object_get(fx, "scores"),
           *jy = json_object_get(fx, "token_type"), *cases = json_object_get(fx, "cases");
    size_t n = json_array_size(jt);
    const char **tokens = malloc(n * sizeof *tokens);
    float *scores = malloc(n * sizeof *scores);
    int32_t *types = malloc(n * sizeof *types);
    for (size_t i = 0; i < n; i++) {
        tokens[i] = json_string_value(json_array_get(jt, i));
        scores[i] = (float)json_number_value(json_array_get(js, i));
        types[i] = (int32_t)json_integer_value(json_array_get(jy, i));
    }
    spm_vocab v = {tokens, scores, types, n};
    unsigned char *img;
    duet_gguf *g;
    duet_tokenizer *t = spm_tokenizer(&v, 0, &img, &g);
    size_t ok = 0;
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        ok += ids_equal(t, json_string_value(json_object_get(c, "text")),
                        json_string_length(json_object_get(c, "text")), 0, 0,
                        json_object_get(c, "ids"), "sentencepiece");
    }
    fprintf(stderr, "SentencePiece BPE vs sentencepiece: %zu/%zu exact\n", ok, json_array_size(cases));
    assert_int_equal(ok, json_array_size(cases));
    duet_tokenizer_free(t);
    duet_gguf_close(g);
    free(img);
    free(tokens);
    free(scores);
    free(types);
    json_decref(fx);
}

int main(void)
{
    const struct CMUnitTest model_tests[] = {
        cmocka_unit_test(test_smollm2_metadata),
        cmocka_unit_test(test_smollm2_corpus),
        cmocka_unit_test(test_smollm2_special_tokens),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_long_text),
        cmocka_unit_test(test_utf8_stream_tokens),
    };
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_stream),
        cmocka_unit_test(test_pretokenizers),
        cmocka_unit_test(test_unsupported),
        cmocka_unit_test(test_bpe_hand_built),
        cmocka_unit_test(test_bad_metadata),
        cmocka_unit_test(test_spm_hand_built),
        cmocka_unit_test(test_spm_sentencepiece),
    };
    int failed = cmocka_run_group_tests_name("tokenizer", tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("tokenizer (SmolLM2)", model_tests, setup_model,
                                          teardown_model);
    return failed;
}
