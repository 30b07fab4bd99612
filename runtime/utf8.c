/*
 * utf8.c — strict UTF-8 decoding and the streaming assembler used when
 * generated tokens end in the middle of a character.
 *
 * "Strict" means what Unicode calls well-formed: no overlong forms, no
 * surrogates (U+D800..U+DFFF), nothing above U+10FFFF. Ill-formed input is
 * replaced per maximal subpart, so a cut-off 3-byte character becomes one
 * U+FFFD, not three; Python's errors='replace' and browsers do the same.
 */
#include "tokenizer_impl.h"

#include <string.h>

static const char REPLACEMENT[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

/* The range the second byte must lie in, given the lead byte; the later
 * continuation bytes are always 0x80..0xBF. This is where overlongs (E0,
 * F0), surrogates (ED) and values past U+10FFFF (F4) are excluded. */
static void second_byte_range(unsigned char lead, unsigned char *lo, unsigned char *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (lead == 0xE0)
        *lo = 0xA0;
    else if (lead == 0xED)
        *hi = 0x9F;
    else if (lead == 0xF0)
        *lo = 0x90;
    else if (lead == 0xF4)
        *hi = 0x8F;
}

int duet_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp, int *truncated)
{
    *truncated = 0;
    unsigned char b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    int need;
    uint32_t v;
    if (b >= 0xC2 && b <= 0xDF) {
        need = 2;
        v = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
        need = 3;
        v = b & 0x0F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 4;
        v = b & 0x07;
    } else {
        return -1; /* a stray continuation byte, C0, C1 or F5..FF */
    }
    unsigned char lo, hi;
    second_byte_range(b, &lo, &hi);
    for (int i = 1; i < need; i++) {
        if ((size_t)i >= n) {
            *truncated = 1;
            return -i;
        }
        unsigned char c = s[i];
        if (c < lo || c > hi)
            return -i;
        v = (v << 6) | (c & 0x3F);
        lo = 0x80;
        hi = 0xBF;
    }
    *cp = v;
    return need;
}

int duet_utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

int duet_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) { /* ASCII runs are the common case */
            i++;
            continue;
        }
        uint32_t cp;
        int truncated;
        int k = duet_utf8_decode(p + i, n - i, &cp, &truncated);
        if (k < 0)
            return 0;
        i += (size_t)k;
    }
    return 1;
}

/* Emit the complete characters of buf[0..n); an incomplete character at
 * the very end goes back into st->pending (when allowed) for the next push. */
static size_t assemble(duet_utf8_stream *st, const unsigned char *buf, size_t n, char *out,
                       int keep_tail)
{
    size_t i = 0, w = 0;
    while (i < n) {
        uint32_t cp;
        int truncated;
        int k = duet_utf8_decode(buf + i, n - i, &cp, &truncated);
        if (k > 0) {
            memcpy(out + w, buf + i, (size_t)k);
            w += (size_t)k;
            i += (size_t)k;
            continue;
        }
        if (truncated && keep_tail) {
            st->n_pending = (int)(n - i);
            memcpy(st->pending, buf + i, n - i);
            return w;
        }
        memcpy(out + w, REPLACEMENT, sizeof REPLACEMENT);
        w += sizeof REPLACEMENT;
        i += (size_t)-k;
    }
    return w;
}

size_t duet_utf8_stream_push(duet_utf8_stream *st, const char *bytes, size_t n, char *out)
{
    size_t w = 0;
    /* Finish the pending character with as many new bytes as it needs; the
     * rest is assembled straight from the caller's buffer. */
    while (st->n_pending > 0 && n > 0) {
        unsigned char tmp[4];
        int np = st->n_pending;
        memcpy(tmp, st->pending, (size_t)np);
        tmp[np] = (unsigned char)bytes[0];
        uint32_t cp;
        int truncated;
        int k = duet_utf8_decode(tmp, (size_t)np + 1, &cp, &truncated);
        if (k < 0 && truncated) { /* still incomplete: keep the byte */
            st->pending[np] = tmp[np];
            st->n_pending = np + 1;
            bytes++;
            n--;
            continue;
        }
        st->n_pending = 0;
        if (k > 0) {
            memcpy(out + w, tmp, (size_t)k);
            w += (size_t)k;
            bytes++;
            n--;
        } else {
            /* the pending bytes were a maximal ill-formed subpart; the new
             * byte starts afresh */
            memcpy(out + w, REPLACEMENT, sizeof REPLACEMENT);
            w += sizeof REPLACEMENT;
        }
    }
    if (n > 0)
        w += assemble(st, (const unsigned char *)bytes, n, out + w, 1);
    return w;
}

size_t duet_utf8_stream_flush(duet_utf8_stream *st, char *out)
{
    if (st->n_pending == 0)
        return 0;
    st->n_pending = 0;
    memcpy(out, REPLACEMENT, sizeof REPLACEMENT);
    return sizeof REPLACEMENT;
}
