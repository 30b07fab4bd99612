#include "stop_strings.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"

duet_status duet_stop_init(duet_stop_matcher *m, const char *const *stops, int n_stops,
                           int include_stop)
{
    memset(m, 0, sizeof *m);
    m->matched = -1;
    m->include_stop = include_stop;
    if (n_stops <= 0)
        return DUET_OK;
    m->stops = calloc((size_t)n_stops, sizeof *m->stops);
    m->stop_lens = calloc((size_t)n_stops, sizeof *m->stop_lens);
    if (!m->stops || !m->stop_lens)
        goto oom;
    for (int i = 0; i < n_stops; i++) {
        if (!stops[i] || !*stops[i]) {
            duet_stop_free(m);
            return duet_error(DUET_ERR_INVALID_ARG, "stop[%d] is an empty string", i);
        }
        m->n_stops = i + 1;
        if (!(m->stops[i] = strdup(stops[i])))
            goto oom;
        m->stop_lens[i] = strlen(stops[i]);
    }
    return DUET_OK;
oom:
    duet_stop_free(m);
    return duet_error(DUET_ERR_OUT_OF_MEMORY, "out of memory copying %d stop strings", n_stops);
}

void duet_stop_free(duet_stop_matcher *m)
{
    for (int i = 0; i < m->n_stops; i++)
        free(m->stops[i]);
    free(m->stops);
    free(m->stop_lens);
    free(m->held);
    free(m->out);
    memset(m, 0, sizeof *m);
    m->matched = -1;
}

/* Grow *buf to hold need bytes; 0 on success. */
static int grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 64;
    while (ncap < need)
        ncap *= 2;
    char *nb = realloc(*buf, ncap);
    if (!nb)
        return -1;
    *buf = nb;
    *cap = ncap;
    return 0;
}

/* Move the first n held bytes to the output and drop them from held. */
static void release(duet_stop_matcher *m, size_t n, size_t out_at)
{
    memcpy(m->out + out_at, m->held, n);
    memmove(m->held, m->held + n, m->n_held - n);
    m->n_held -= n;
}

/* Does the text at held[at..] start some stop string, possibly running
 * past the end of what is held? */
static int may_start_stop(const duet_stop_matcher *m, size_t at)
{
    size_t rest = m->n_held - at;
    for (int i = 0; i < m->n_stops; i++) {
        size_t n = rest < m->stop_lens[i] ? rest : m->stop_lens[i];
        if (memcmp(m->held + at, m->stops[i], n) == 0)
            return 1;
    }
    return 0;
}

int duet_stop_push(duet_stop_matcher *m, const char *text, size_t len, const char **out,
                   size_t *out_len)
{
    *out = "";
    *out_len = 0;
    if (m->matched >= 0)
        return 1;
    /* Without stop strings nothing is held; but the out buffer still owns
     * the text so the contract (valid until the next call) is uniform. */
    if (grow(&m->held, &m->cap_held, m->n_held + len + 1) ||
        grow(&m->out, &m->cap_out, m->n_held + len + 1)) {
        /* Out of memory: pass the text through unchecked rather than lose it. */
        *out = text;
        *out_len = len;
        return 0;
    }
    memcpy(m->held + m->n_held, text, len);
    m->n_held += len;

    /* The earliest full match wins; on a tie, the longest stop string. */
    size_t best_at = (size_t)-1;
    int best = -1;
    for (int i = 0; i < m->n_stops; i++) {
        size_t sl = m->stop_lens[i];
        for (size_t at = 0; at + sl <= m->n_held && at <= best_at; at++) {
            if (memcmp(m->held + at, m->stops[i], sl) == 0) {
                if (at < best_at || sl > m->stop_lens[best]) {
                    best_at = at;
                    best = i;
                }
                break;
            }
        }
    }
    if (best >= 0) {
        size_t keep = best_at + (m->include_stop ? m->stop_lens[best] : 0);
        release(m, keep, 0);
        m->n_held = 0;
        m->matched = best;
        m->out[keep] = 0;
        *out = m->out;
        *out_len = keep;
        return 1;
    }
    /* Release up to the first position that may begin a stop string. */
    size_t cut = 0;
    while (cut < m->n_held && !may_start_stop(m, cut))
        cut++;
    release(m, cut, 0);
    m->out[cut] = 0;
    *out = m->out;
    *out_len = cut;
    return 0;
}

void duet_stop_flush(duet_stop_matcher *m, const char **out, size_t *out_len)
{
    *out = "";
    *out_len = 0;
    if (m->matched >= 0 || m->n_held == 0)
        return;
    if (grow(&m->out, &m->cap_out, m->n_held + 1))
        return;
    size_t n = m->n_held;
    release(m, n, 0);
    m->out[n] = 0;
    *out = m->out;
    *out_len = n;
}

const char *duet_stop_matched(const duet_stop_matcher *m)
{
    return m->matched >= 0 ? m->stops[m->matched] : NULL;
}
