#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Per-thread like errno: the server's threads must not see each other's
 * messages, and nothing else in duet is mutable and global. */
static _Thread_local char last_error[1024];

const char *duet_status_str(duet_status st)
{
    switch (st) {
    case DUET_OK: return "ok";
    case DUET_ERR_INVALID_ARG: return "invalid argument";
    case DUET_ERR_OUT_OF_MEMORY: return "out of memory";
    case DUET_ERR_IO: return "I/O error";
    case DUET_ERR_FORMAT: return "bad file format";
    case DUET_ERR_UNSUPPORTED: return "unsupported";
    case DUET_ERR_DEVICE: return "device error";
    case DUET_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *duet_last_error(void) { return last_error; }

void duet_error_clear(void) { last_error[0] = '\0'; }

duet_status duet_error(duet_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return st;
}

duet_status duet_error_wrap(duet_status st, const char *fmt, ...)
{
    char prefix[512], old[sizeof last_error];

    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof old);
    /* Truncation is acceptable: the message stays a valid string. */
    size_t n = strlen(prefix);
    memcpy(last_error, prefix, n);
    snprintf(last_error + n, sizeof last_error - n, ": %.*s", (int)(sizeof last_error - n - 3), old);
    return st;
}
