/*
 * error.h — setting the per-thread failure message behind duet_last_error().
 *
 * Every layer (backends and runtime) reports failures the same way:
 *   return duet_error(DUET_ERR_FORMAT, "%s: tensor '%s' at offset %zu ...", ...);
 * which records the message for this thread and returns the status, so one
 * line both explains and propagates the failure.
 */
#ifndef DUET_ERROR_H
#define DUET_ERROR_H

#include "duet.h"

#if defined(__GNUC__)
#define DUET_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define DUET_PRINTF(a, b)
#endif

/* Record a formatted message for this thread and return st. */
duet_status duet_error(duet_status st, const char *fmt, ...) DUET_PRINTF(2, 3);

/* Prefix the current message with "context: " (keeps the status). */
duet_status duet_error_wrap(duet_status st, const char *fmt, ...) DUET_PRINTF(2, 3);

/* Forget the message (after a failure was handled). */
void duet_error_clear(void);

#endif
