/*
 * threadpool.h — a fixed pool of worker threads for the CPU backend's ops.
 *
 * One op at a time is split across all threads: duet_threadpool_run(fn)
 * calls fn(arg, ith, nth) once for every ith in [0, nth) — the calling
 * thread runs ith = 0 — and returns when all calls have returned. Each op
 * divides its rows by (ith, nth) statically, so the split (and therefore
 * every result) does not depend on timing.
 */
#ifndef DUET_THREADPOOL_H
#define DUET_THREADPOOL_H

#include "duet.h"

typedef struct duet_threadpool duet_threadpool;

typedef void (*duet_parallel_fn)(void *arg, int ith, int nth);

/* n_threads >= 1 (1 = no worker threads). On failure *out is NULL. */
duet_status duet_threadpool_create(int n_threads, duet_threadpool **out);
void duet_threadpool_free(duet_threadpool *p);
int duet_threadpool_size(const duet_threadpool *p);
/* Not reentrant: fn must not call duet_threadpool_run on the same pool. */
void duet_threadpool_run(duet_threadpool *p, duet_parallel_fn fn, void *arg);

/* Rows [*lo, *hi) of n that thread ith of nth handles (contiguous,
 * balanced, a multiple of align except possibly at the end). */
void duet_split_rows(int64_t n, int ith, int nth, int64_t align, int64_t *lo, int64_t *hi);

#endif
