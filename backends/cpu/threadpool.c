/*
 * threadpool.c — n_threads - 1 workers plus the caller, one job at a time.
 *
 * A decode step runs a few hundred small ops in a few milliseconds, so a
 * dispatch must cost microseconds, not the tens of microseconds of a
 * condition-variable wake-up. Workers therefore spin on the job generation
 * for a while after each job and only then block; while a step is running
 * they never sleep. The caller waits for completion by spinning too (the
 * jobs are balanced, so the wait is short).
 *
 * Lost wake-ups are impossible by a Dekker-style handshake on two seq_cst
 * atomics: a worker announces itself in `sleepers` before re-reading
 * `generation` under the mutex; the dispatcher bumps `generation` before
 * reading `sleepers`. At least one of them sees the other's write.
 */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* Spin iterations (each a pause, ~40-140 cycles) before a worker blocks:
 * roughly 50-200 us, longer than the gap between ops inside a step but
 * short enough not to burn a core while the engine is idle. */
enum { SPIN_BEFORE_SLEEP = 4096 };

typedef struct worker {
    duet_threadpool *pool;
    pthread_t thread;
    int ith;
} worker;

struct duet_threadpool {
    int n_threads;
    worker *workers; /* [n_threads - 1] */
    int n_started;   /* workers whose thread was created */

    /* The current job, published by the generation bump. */
    duet_parallel_fn fn;
    void *arg;
    atomic_uint generation;
    atomic_int pending; /* workers still running the current job */
    atomic_int stop;

    pthread_mutex_t mutex;
    pthread_cond_t wake;
    atomic_int sleepers;
};

static void *worker_main(void *p)
{
    worker *w = p;
    duet_threadpool *pool = w->pool;
    /* Not a load of generation: a worker that starts late must still see
     * the first job as new. The pool publishes nothing before every worker
     * thread exists, so generation 0 is the one each worker starts from. */
    unsigned seen = 0;
    for (;;) {
        unsigned gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen &&
               spins < SPIN_BEFORE_SLEEP) {
            cpu_relax();
            spins++;
        }
        if (gen == seen) {
            pthread_mutex_lock(&pool->mutex);
            atomic_fetch_add(&pool->sleepers, 1);
            while ((gen = atomic_load(&pool->generation)) == seen)
                pthread_cond_wait(&pool->wake, &pool->mutex);
            atomic_fetch_sub(&pool->sleepers, 1);
            pthread_mutex_unlock(&pool->mutex);
        }
        seen = gen;
        if (atomic_load(&pool->stop))
            break;
        pool->fn(pool->arg, w->ith, pool->n_threads);
        atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_release);
    }
    return NULL;
}

/* Publish a new generation and wake any blocked worker. */
static void publish(duet_threadpool *p)
{
    atomic_fetch_add(&p->generation, 1);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mutex);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mutex);
    }
}

static void stop_workers(duet_threadpool *p)
{
    atomic_store(&p->stop, 1);
    publish(p);
    for (int i = 0; i < p->n_started; i++)
        pthread_join(p->workers[i].thread, NULL);
}

duet_status duet_threadpool_create(int n_threads, duet_threadpool **out)
{
    duet_status rc = DUET_OK;
    *out = NULL;
    if (n_threads < 1)
        return duet_error(DUET_ERR_INVALID_ARG, "threadpool: n_threads %d must be >= 1",
                          n_threads);
    duet_threadpool *p = calloc(1, sizeof *p);
    if (!p)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "threadpool: out of memory");
    p->n_threads = n_threads;
    atomic_init(&p->generation, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->sleepers, 0);
    if (pthread_mutex_init(&p->mutex, NULL)) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "threadpool: cannot create a mutex");
        goto out_free_pool;
    }
    if (pthread_cond_init(&p->wake, NULL)) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "threadpool: cannot create a condition variable");
        goto out_destroy_mutex;
    }
    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (!p->workers) {
            rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "threadpool: out of memory for %d workers",
                            n_threads - 1);
            goto out_destroy_cond;
        }
    }
    for (int i = 0; i < n_threads - 1; i++) {
        p->workers[i].pool = p;
        p->workers[i].ith = i + 1;
        if (pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i])) {
            rc = duet_error(DUET_ERR_OUT_OF_MEMORY,
                            "threadpool: cannot start worker thread %d of %d", i + 1,
                            n_threads - 1);
            goto out_stop_workers;
        }
        p->n_started++;
    }
    *out = p;
    return DUET_OK;

out_stop_workers:
    stop_workers(p);
    free(p->workers);
out_destroy_cond:
    pthread_cond_destroy(&p->wake);
out_destroy_mutex:
    pthread_mutex_destroy(&p->mutex);
out_free_pool:
    free(p);
    return rc;
}

void duet_threadpool_free(duet_threadpool *p)
{
    if (!p)
        return;
    stop_workers(p);
    free(p->workers);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->mutex);
    free(p);
}

int duet_threadpool_size(const duet_threadpool *p) { return p ? p->n_threads : 1; }

void duet_threadpool_run(duet_threadpool *p, duet_parallel_fn fn, void *arg)
{
    if (!p || p->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->pending, p->n_threads - 1, memory_order_relaxed);
    publish(p);
    fn(arg, 0, p->n_threads);
    /* Yield now and then so an oversubscribed machine (more threads than
     * free cores) still lets the late worker run. */
    int spins = 0;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) {
        cpu_relax();
        if (++spins % 1024 == 0)
            sched_yield();
    }
}

void duet_split_rows(int64_t n, int ith, int nth, int64_t align, int64_t *lo, int64_t *hi)
{
    if (align < 1)
        align = 1;
    int64_t units = (n + align - 1) / align;
    int64_t per = units / nth, extra = units % nth;
    int64_t start = (int64_t)ith * per + (ith < extra ? ith : extra);
    int64_t count = per + (ith < extra ? 1 : 0);
    int64_t a = start * align, b = (start + count) * align;
    *lo = a < n ? a : n;
    *hi = b < n ? b : n;
}
