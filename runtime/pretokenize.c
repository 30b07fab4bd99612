/*
 * pretokenize.c — the regex splits byte-level BPE models apply before
 * merging, chosen by tokenizer.ggml.pre.
 *
 * Each family replicates its HF tokenizer.json pre_tokenizer: a sequence of
 * at most two "isolated" splits (every match is a piece and so is every gap
 * between matches), the second run on each piece of the first separately,
 * so its lookaheads cannot see past a piece. PCRE2 runs them with UTF and
 * UCP, so \p{L}, \p{N} and \s are Unicode classes as in Oniguruma, which
 * HF tokenizers uses. Checked code point by code point against HF: the
 * only differences left are characters newer than the PCRE2's Unicode
 * tables (Debian 12's 10.42 knows Unicode 14; HF's engines know 16), about
 * 9,400 code points of recently added scripts, which PCRE2 sees as
 * unassigned.
 */
#include "tokenizer_impl.h"

#include "error.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STAGES 2

/* \s spelled out as Unicode's White_Space property, which is what
 * Oniguruma's \s means; PCRE2's \s also takes U+180E (MONGOLIAN VOWEL
 * SEPARATOR, no longer a space since Unicode 6.3), which would split
 * differently from HF. */
#define WS "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define SPACE "[" WS "]"
#define NOT_SPACE "[^" WS "]"

/* HF ByteLevel(use_regex=true)'s own pattern (GPT-2's). */
#define RE_GPT2                                                                  \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|" SPACE \
    "+(?!" NOT_SPACE ")|" SPACE "+"
/* Llama 3 and Qwen2 differ only in how many digits make one piece. */
#define RE_CL100K(digits)                                                         \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}" digits   \
    "| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|" SPACE "*[\\r\\n]+|" SPACE "+(?!" NOT_SPACE \
    ")|" SPACE "+"

typedef struct pretok_family {
    const char *names[4];  /* tokenizer.ggml.pre values */
    const char *stages[MAX_STAGES];
    int ignore_merges;
} pretok_family;

static const pretok_family FAMILIES[] = {
    /* GPT2Tokenizer: ByteLevel(use_regex=true) alone */
    {{"gpt-2", "default"}, {RE_GPT2}, 0},
    /* SmolLM/StarCoder: Sequence[Digits(individual_digits=true), ByteLevel]:
     * every digit is its own piece before the GPT-2 split */
    {{"smollm", "starcoder"}, {"\\p{N}", RE_GPT2}, 0},
    /* Llama 3: Split(regex, isolated) + ByteLevel(use_regex=false), and
     * its BPE model sets ignore_merges */
    {{"llama-bpe", "llama3", "llama-v3"}, {RE_CL100K("{1,3}")}, 1},
    {{"qwen2", "deepseek-r1-qwen"}, {RE_CL100K("")}, 0},
};

struct duet_pretok {
    pcre2_code *re[MAX_STAGES];
    int n_stages;
    int ignore_merges;
};

static const pretok_family *find_family(const char *name, size_t len)
{
    for (size_t f = 0; f < sizeof FAMILIES / sizeof FAMILIES[0]; f++)
        for (int i = 0; i < 4 && FAMILIES[f].names[i]; i++)
            if (strlen(FAMILIES[f].names[i]) == len && memcmp(FAMILIES[f].names[i], name, len) == 0)
                return &FAMILIES[f];
    return NULL;
}

static void supported_names(char *buf, size_t cap)
{
    size_t w = 0;
    buf[0] = '\0';
    for (size_t f = 0; f < sizeof FAMILIES / sizeof FAMILIES[0]; f++)
        for (int i = 0; i < 4 && FAMILIES[f].names[i]; i++) {
            int k = snprintf(buf + w, cap - w, "%s\"%s\"", w ? ", " : "", FAMILIES[f].names[i]);
            if (k < 0 || (size_t)k >= cap - w)
                return;
            w += (size_t)k;
        }
}

duet_status duet_pretok_create(const char *name, size_t name_len, duet_pretok **out)
{
    duet_status rc = DUET_OK;
    *out = NULL;
    const pretok_family *fam = find_family(name, name_len);
    if (!fam) {
        char names[256];
        supported_names(names, sizeof names);
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "tokenizer.ggml.pre '%.*s' is not supported; supported: %s",
                          (int)(name_len > 64 ? 64 : name_len), name, names);
    }
    duet_pretok *p = calloc(1, sizeof *p);
    if (!p)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "pre-tokenizer: out of memory");
    p->ignore_merges = fam->ignore_merges;
    for (int s = 0; s < MAX_STAGES && fam->stages[s]; s++) {
        int err;
        PCRE2_SIZE at;
        p->re[s] = pcre2_compile((PCRE2_SPTR)fam->stages[s], PCRE2_ZERO_TERMINATED,
                                 PCRE2_UTF | PCRE2_UCP, &err, &at, NULL);
        if (!p->re[s]) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(err, msg, sizeof msg);
            rc = duet_error(DUET_ERR_INTERNAL, "pre-tokenizer '%s': regex %d at offset %zu: %s",
                            fam->names[0], s, (size_t)at, (const char *)msg);
            goto out_free_pretok;
        }
        /* JIT is an optimisation only: without it the interpreter runs */
        (void)pcre2_jit_compile(p->re[s], PCRE2_JIT_COMPLETE);
        p->n_stages = s + 1;
    }
    *out = p;
    return DUET_OK;

out_free_pretok:
    duet_pretok_free(p);
    return rc;
}

void duet_pretok_free(duet_pretok *p)
{
    if (!p)
        return;
    for (int s = 0; s < MAX_STAGES; s++)
        pcre2_code_free(p->re[s]);
    free(p);
}

int duet_pretok_ignore_merges(const duet_pretok *p) { return p->ignore_merges; }

typedef struct split_run {
    const duet_pretok *p;
    const char *subject;   /* valid UTF-8 */
    pcre2_match_data *md;
    duet_piece_fn fn;
    void *user;
    /* Ill-formed input only: the original text, and a cursor pairing a
     * subject offset with the input offset it came from. Pieces arrive in
     * order, so the cursor only moves forward. */
    const char *input;
    size_t input_len, at_subject, at_input;
} split_run;

/* Input offset of subject offset off (a character boundary, not before
 * the cursor). */
static size_t input_offset(split_run *r, size_t off)
{
    while (r->at_subject < off) {
        uint32_t cp;
        int truncated;
        int k = duet_utf8_decode((const unsigned char *)r->input + r->at_input,
                                 r->input_len - r->at_input, &cp, &truncated);
        r->at_input += (size_t)(k > 0 ? k : -k);
        r->at_subject += k > 0 ? (size_t)k : 3; /* U+FFFD is 3 bytes */
    }
    return r->at_input;
}

static duet_status run_stage(split_run *r, int stage, size_t start, size_t end);

static duet_status emit(split_run *r, int stage, size_t start, size_t end)
{
    if (start == end)
        return DUET_OK;
    if (stage + 1 < r->p->n_stages)
        return run_stage(r, stage + 1, start, end);
    if (r->input) {
        size_t s = input_offset(r, start);
        return r->fn(r->user, s, input_offset(r, end));
    }
    return r->fn(r->user, start, end);
}

static duet_status run_stage(split_run *r, int stage, size_t start, size_t end)
{
    duet_status rc;
    /* The piece is the whole subject, so anchors and lookarounds stop at
     * its edges, as they do in HF where each piece is its own string. */
    PCRE2_SPTR sub = (PCRE2_SPTR)(r->subject + start);
    size_t n = end - start, pos = 0, gap = 0;
    while (pos < n) {
        int m = pcre2_match(r->p->re[stage], sub, n, pos, PCRE2_NO_UTF_CHECK, r->md, NULL);
        if (m < 0 && m != PCRE2_ERROR_NOMATCH) /* e.g. the JIT stack ran out */
            m = pcre2_match(r->p->re[stage], sub, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                            r->md, NULL);
        if (m < 0)
            break; /* no more matches; an interpreter error (its heap limit)
                      also ends here and leaves the rest as one piece */
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(r->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) { /* an empty match: step over one character */
            pos = ms + 1;
            while (pos < n && (sub[pos] & 0xC0) == 0x80)
                pos++;
            continue;
        }
        if ((rc = emit(r, stage, start + gap, start + ms)) != DUET_OK)
            return rc;
        if ((rc = emit(r, stage, start + ms, start + me)) != DUET_OK)
            return rc;
        gap = pos = me;
    }
    return emit(r, stage, start + gap, end);
}

/* Replace each maximal ill-formed subpart by U+FFFD so the regexes see a
 * valid string. */
static char *sanitize(const char *text, size_t len, size_t *sub_len)
{
    char *s = malloc(3 * len + 1);
    if (!s)
        return NULL;
    size_t i = 0, w = 0;
    while (i < len) {
        uint32_t cp;
        int truncated;
        int k = duet_utf8_decode((const unsigned char *)text + i, len - i, &cp, &truncated);
        if (k > 0) {
            memcpy(s + w, text + i, (size_t)k);
            w += (size_t)k;
            i += (size_t)k;
        } else {
            w += (size_t)duet_utf8_encode(0xFFFD, s + w);
            i += (size_t)-k;
        }
    }
    *sub_len = w;
    return s;
}

duet_status duet_pretok_split(const duet_pretok *p, const char *text, size_t len,
                              duet_piece_fn fn, void *user)
{
    duet_status rc;
    if (len == 0)
        return DUET_OK;
    split_run r = {.p = p, .subject = text, .fn = fn, .user = user};
    char *sub = NULL;
    size_t sub_len = len;
    if (!duet_utf8_valid(text, len)) {
        sub = sanitize(text, len, &sub_len);
        if (!sub)
            return duet_error(DUET_ERR_OUT_OF_MEMORY, "pre-tokenizer: out of memory for %zu bytes", len);
        r.subject = sub;
        r.input = text;
        r.input_len = len;
    }
    r.md = pcre2_match_data_create(1, NULL);
    if (!r.md) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "pre-tokenizer: out of memory");
        goto out_free_sanitized;
    }
    rc = run_stage(&r, 0, 0, sub_len);
    pcre2_match_data_free(r.md);
out_free_sanitized:
    free(sub);
    return rc;
}
