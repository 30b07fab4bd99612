/*
 * bench_serve_dataset.c — the prompts of `duet bench serve`.
 *
 * random: like vLLM's random dataset, a prompt is random non-special token
 * ids turned into text; because text does not always tokenize back to the
 * same ids (merges across token boundaries), the text is re-tokenized and
 * the ids trimmed or topped up until the text is exactly the wanted number
 * of tokens, so "128 in" means 128 tokens to the server too.
 * FILE: JSON lines {"prompt": "...", "output_len": N}, cycled.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_serve.h"
#include "error.h"

/* Re-tokenize rounds before accepting a prompt that is a token off. */
#define FIT_ROUNDS 16

uint64_t bench_serve_rng_next(bench_serve_rng *r)
{
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double bench_serve_rng_uniform(bench_serve_rng *r)
{
    return (double)(bench_serve_rng_next(r) >> 11) * 0x1.0p-53;
}

void bench_serve_dataset_free(bench_serve_prompt *p, long n)
{
    if (!p)
        return;
    for (long i = 0; i < n; i++)
        free(p[i].text);
    free(p);
}

/* Length of the valid UTF-8 sequence at s (0 if invalid; NUL is invalid
 * here because prompts travel as C strings). */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    if (s[0] >= 0x01 && s[0] < 0x80)
        return 1;
    size_t len = s[0] >= 0xc2 && s[0] <= 0xdf ? 2 : s[0] >= 0xe0 && s[0] <= 0xef ? 3
               : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : 0;
    if (!len || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    /* Overlong 3/4-byte forms, surrogates, code points past U+10FFFF. */
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0) ||
        (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90))
        return 0;
    return len;
}

/* The text of ids, with invalid UTF-8 replaced by U+FFFD as a detokenizer
 * does. Returns a malloc'ed string, NULL when out of memory. */
static char *ids_to_text(const duet_model *m, const int32_t *ids, long n)
{
    size_t total = 0, len;
    for (long i = 0; i < n; i++)
        if (duet_token_bytes(m, ids[i], &len))
            total += len;
    unsigned char *raw = malloc(total + 1);
    char *text = malloc(total * 3 + 1);
    if (!raw || !text) {
        free(raw);
        free(text);
        return NULL;
    }
    size_t at = 0, out = 0;
    for (long i = 0; i < n; i++) {
        const char *b = duet_token_bytes(m, ids[i], &len);
        if (b) {
            memcpy(raw + at, b, len);
            at += len;
        }
    }
    for (size_t i = 0; i < at;) {
        size_t k = utf8_seq_len(raw + i, at - i);
        if (k) {
            memcpy(text + out, raw + i, k);
            out += k;
            i += k;
        } else {
            memcpy(text + out, "\xef\xbf\xbd", 3);
            out += 3;
            i++;
        }
    }
    text[out] = '\0';
    free(raw);
    return text;
}

/* Ids a random prompt may use: not BOS/EOS, not empty, and not a special
 * token (text such as "<|im_end|>" that the server would parse back into
 * a control token). Only "<..>" and "[..]" texts can be special in the
 * vocabularies duet reads, so only those are tokenized to check. */
static duet_status allowed_ids(const duet_model *m, int32_t **out, long *n_out)
{
    int vocab = duet_model_vocab_size(m);
    int32_t *ids = malloc(sizeof *ids * (size_t)vocab);
    if (!ids)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "no memory for %d token ids", vocab);
    long n = 0;
    for (int32_t id = 0; id < vocab; id++) {
        size_t len, got;
        int32_t one[4];
        const char *b = duet_token_bytes(m, id, &len);
        if (!b || !len || id == duet_model_bos(m) || id == duet_model_eos(m))
            continue;
        if (len >= 3 && (b[0] == '<' || b[0] == '[') &&
            duet_tokenize(m, b, len, 0, 1, one, 4, &got) == DUET_OK && got == 1 && one[0] == id &&
            !(duet_tokenize(m, b, len, 0, 0, one, 4, &got) == DUET_OK && got == 1 && one[0] == id))
            continue;
        ids[n++] = id;
    }
    duet_error_clear();
    if (n == 0) {
        free(ids);
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "the model's vocabulary has no ordinary tokens to build "
                          "random prompts from");
    }
    *out = ids;
    *n_out = n;
    return DUET_OK;
}

/* A length uniform in [base*(1-ratio), base*(1+ratio)], at least 1. */
static long ranged_len(bench_serve_rng *rng, long base, double ratio)
{
    long lo = (long)floor(base * (1.0 - ratio)), hi = (long)ceil(base * (1.0 + ratio));
    if (lo < 1)
        lo = 1;
    if (hi < lo)
        hi = lo;
    return lo + (long)(bench_serve_rng_next(rng) % (uint64_t)(hi - lo + 1));
}

/* One random prompt of `want` tokens: p->text and p->prompt_len (the
 * token count of the final text, == want unless FIT_ROUNDS ran out). */
static duet_status random_prompt(const duet_model *m, const int32_t *allowed, long n_allowed,
                                 bench_serve_rng *rng, long want, bench_serve_prompt *p)
{
    duet_status st = DUET_OK;
    size_t cap = (size_t)want * 2 + 64, got = 0;
    int32_t *ids = malloc(sizeof *ids * cap), *tok = NULL;
    char *text = NULL;
    if (!ids)
        goto out_oom;
    for (long i = 0; i < want; i++)
        ids[i] = allowed[bench_serve_rng_next(rng) % (uint64_t)n_allowed];
    long n = want;
    for (int round = 0; round < FIT_ROUNDS; round++) {
        free(text);
        text = ids_to_text(m, ids, n);
        size_t tl = text ? strlen(text) : 0;
        int32_t *t2 = text ? realloc(tok, sizeof *tok * (tl + 16)) : NULL;
        if (!t2)
            goto out_oom;
        tok = t2;
        st = duet_tokenize(m, text, tl, 0, 0, tok, tl + 16, &got);
        if (st)
            goto out;
        if ((long)got == want)
            break;
        /* Keep the ids the text really is, then trim or top up. */
        n = (long)got < want ? (long)got : want;
        memcpy(ids, tok, sizeof *ids * (size_t)n);
        for (; n < want; n++)
            ids[n] = allowed[bench_serve_rng_next(rng) % (uint64_t)n_allowed];
    }
    p->text = text;
    p->prompt_len = (long)got;
    text = NULL;
    goto out;
out_oom:
    st = duet_error(DUET_ERR_OUT_OF_MEMORY, "no memory for a %ld-token prompt", want);
out:
    free(text);
    free(tok);
    free(ids);
    return st;
}

static duet_status build_random(const bench_serve_opts *o, const duet_model *m,
                                bench_serve_prompt *p)
{
    int32_t *allowed = NULL;
    long n_allowed = 0;
    bench_serve_rng rng = {o->seed};
    duet_status st = allowed_ids(m, &allowed, &n_allowed);
    for (long i = 0; st == DUET_OK && i < o->num_prompts; i++) {
        long in = ranged_len(&rng, o->input_len, o->range_ratio);
        p[i].output_len = ranged_len(&rng, o->output_len, o->range_ratio);
        st = random_prompt(m, allowed, n_allowed, &rng, in, &p[i]);
    }
    free(allowed);
    return st;
}

/* One JSONL line into p (text and output_len). */
static duet_status parse_line(const bench_serve_opts *o, const char *line, long line_no,
                              bench_serve_prompt *p)
{
    json_error_t jerr;
    duet_status st = DUET_OK;
    json_t *obj = json_loads(line, 0, &jerr);
    json_t *prompt = obj ? json_object_get(obj, "prompt") : NULL;
    json_t *olen = obj ? json_object_get(obj, "output_len") : NULL;
    if (!obj) {
        st = duet_error(DUET_ERR_FORMAT, "%s line %ld: %s", o->dataset, line_no,
                        jerr.text);
    } else if (!json_is_string(prompt)) {
        st = duet_error(DUET_ERR_FORMAT,
                        "%s line %ld: no \"prompt\" string (each line must be "
                        "{\"prompt\": \"...\", \"output_len\": N})",
                        o->dataset, line_no);
    } else if (olen && (!json_is_integer(olen) || json_integer_value(olen) < 1 ||
                        json_integer_value(olen) > (1 << 20))) {
        st = duet_error(DUET_ERR_FORMAT,
                        "%s line %ld: \"output_len\" must be an integer in [1, %d]",
                        o->dataset, line_no, 1 << 20);
    } else {
        p->text = strdup(json_string_value(prompt));
        p->output_len = olen ? (long)json_integer_value(olen) : o->output_len;
        if (!p->text)
            st = duet_error(DUET_ERR_OUT_OF_MEMORY, "no memory for a prompt");
    }
    json_decref(obj);
    return st;
}

static duet_status build_file(const bench_serve_opts *o, const duet_model *m,
                              bench_serve_prompt *p)
{
    duet_status st = DUET_OK;
    bench_serve_prompt *lines = NULL;
    long n_lines = 0, cap = 0, line_no = 0;
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t len;
    FILE *f = fopen(o->dataset, "r");
    if (!f)
        return duet_error(DUET_ERR_IO, "cannot open dataset '%s': %s", o->dataset,
                          strerror(errno));
    while (st == DUET_OK && (len = getline(&line, &line_cap, f)) >= 0) {
        line_no++;
        if (strspn(line, " \t\r\n") == (size_t)len)
            continue;
        if (n_lines == cap) {
            long nc = cap ? cap * 2 : 64;
            bench_serve_prompt *nl = realloc(lines, sizeof *nl * (size_t)nc);
            if (!nl) {
                st = duet_error(DUET_ERR_OUT_OF_MEMORY, "no memory for %ld prompts",
                                nc);
                break;
            }
            lines = nl;
            cap = nc;
        }
        lines[n_lines] = (bench_serve_prompt){0};
        st = parse_line(o, line, line_no, &lines[n_lines]);
        if (st == DUET_OK)
            n_lines++;
    }
    free(line);
    fclose(f);
    if (st == DUET_OK && n_lines == 0)
        st = duet_error(DUET_ERR_FORMAT, "dataset '%s' has no prompts", o->dataset);
    for (long i = 0; st == DUET_OK && i < o->num_prompts; i++) {
        const bench_serve_prompt *src = &lines[i % n_lines];
        p[i].text = strdup(src->text);
        p[i].output_len = src->output_len;
        if (!p[i].text) {
            st = duet_error(DUET_ERR_OUT_OF_MEMORY, "no memory for a prompt");
            break;
        }
        if (m) {
            size_t tl = strlen(src->text), got = 0;
            int32_t *tok = malloc(sizeof *tok * (tl + 16));
            if (!tok)
                st = duet_error(DUET_ERR_OUT_OF_MEMORY, "no memory for a prompt");
            else
                st = duet_tokenize(m, src->text, tl, 1, 0, tok, tl + 16, &got);
            p[i].prompt_len = (long)got;
            free(tok);
        }
    }
    bench_serve_dataset_free(lines, n_lines);
    return st;
}

duet_status bench_serve_dataset_build(const bench_serve_opts *o, const duet_model *m,
                                      bench_serve_prompt **out)
{
    *out = NULL;
    bench_serve_prompt *p = calloc((size_t)o->num_prompts, sizeof *p);
    if (!p)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "no memory for %ld prompts",
                          o->num_prompts);
    duet_status st = strcmp(o->dataset, "random") == 0 ? build_random(o, m, p)
                                                       : build_file(o, m, p);
    if (st) {
        bench_serve_dataset_free(p, o->num_prompts);
        return st;
    }
    *out = p;
    return DUET_OK;
}
