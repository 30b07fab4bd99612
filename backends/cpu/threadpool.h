/*
 * threadpool.h — a fixed pool of worker threads for the CPU backend's ops.
 *
 * One op at a time is split across all threads: duet_threadpool_run(fn)
 * calls fn(arg, ith, nth) once for every ith in [0, nth) — the calling
 * thread runs ith = 0 — and returns when all calls have returned.
 *
 * An op divides its rows either statically by (ith, nth) (duet_split_rows)
 * or dynamically: threads claim pieces from a shared counter (duet_claims)
 * until none are left, so a thread slowed by anything else on its core
 * (the server's HTTP thread, another process) takes fewer pieces instead
 * of holding the others at the end of the op. Either way a row's result
 * must not depend on which thread computes it or on which rows share its
 * piece: that, not a fixed split, is what keeps results independent of
 * timing and of the thread count.
 */
#ifndef DUET_THREADPOOL_H
#define DUET_THREADPOOL_H

#include <stdatomic.h>
#include <stdint.h>

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

/* Pieces of work handed out in order: each duet_claim returns the next
 * index (0, 1, 2, ...), whoever asks. Initialize before the pool run; a
 * cache line of its own keeps the claims off the job's data. */
typedef struct duet_claims {
    _Alignas(64) atomic_llong next;
    char pad[64 - sizeof(atomic_llong)];
} duet_claims;

static inline void duet_claims_init(duet_claims *c) { atomic_init(&c->next, 0); }

static inline int64_t duet_claim(duet_claims *c)
{
    return (int64_t)atomic_fetch_add_explicit(&c->next, 1, memory_order_relaxed);
}

#endif
