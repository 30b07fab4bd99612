/*
 * stop_strings.h — stop strings over streamed text. Text that might be the
 * start of a stop string is held back until it is known not to be one, so
 * a client never sees text that a later token turns into a stop.
 *
 * When several stop strings occur, the one that starts first wins (on a
 * tie, the longer one). The matched stop string is cut from the text
 * unless include_stop is set.
 */
#ifndef DUET_STOP_STRINGS_H
#define DUET_STOP_STRINGS_H

#include <stddef.h>

#include "duet.h"

typedef struct duet_stop_matcher {
    char **stops;        /* owned copies */
    size_t *stop_lens;
    int n_stops;
    int include_stop;
    char *held;          /* text received but not released */
    size_t n_held, cap_held;
    char *out;           /* the text released by the last call */
    size_t cap_out;
    int matched;         /* index of the stop string that matched, or -1 */
} duet_stop_matcher;

/* Copies the stop strings (empty ones are rejected: DUET_ERR_INVALID_ARG). */
duet_status duet_stop_init(duet_stop_matcher *m, const char *const *stops, int n_stops,
                           int include_stop);
void duet_stop_free(duet_stop_matcher *m);

/* Feed newly decoded text. *out / *out_len get the text that may be
 * released now (valid until the next call). Returns 1 when a stop string
 * matched: the released text then ends before it (or after it, with
 * include_stop) and the rest is dropped; later calls release nothing. */
int duet_stop_push(duet_stop_matcher *m, const char *text, size_t len, const char **out,
                   size_t *out_len);
/* The request ended for another reason: release whatever is held. */
void duet_stop_flush(duet_stop_matcher *m, const char **out, size_t *out_len);
/* The matched stop string, or NULL. */
const char *duet_stop_matched(const duet_stop_matcher *m);

#endif
