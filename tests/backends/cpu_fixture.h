/*
 * cpu_fixture.h — what the CPU backend tests share: a device with a stream,
 * buffers made from host data, NaN poisoning, seeded random data and the
 * NMSE check. Header-only, for the tests in this folder.
 */
#ifndef DUET_TEST_CPU_FIXTURE_H
#define DUET_TEST_CPU_FIXTURE_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "device.h"
#include "dtype.h"
#include "threadpool.h"

/* ---- helpers ------------------------------------------------------------------ */

typedef struct fx {
    duet_device *d;
    duet_stream *s;
} fx;

static inline fx fx_open(int n_threads, int reference)
{
    duet_device_options o = {.n_threads = n_threads, .force_reference = reference};
    fx f = {0};
    assert_int_equal(duet_cpu_device_create(&o, &f.d), DUET_OK);
    assert_int_equal(duet_dev_stream_create(f.d, &f.s), DUET_OK);
    return f;
}

static inline void fx_close(fx *f)
{
    duet_dev_stream_destroy(f->d, f->s);
    duet_device_close(f->d);
}

/* A device buffer holding src, or n bytes of NaN (poison) when src is NULL. */
static inline duet_buffer *fx_buf(fx *f, const void *src, size_t n)
{
    duet_buffer *b = NULL;
    assert_int_equal(duet_dev_buffer_alloc(f->d, n, &b), DUET_OK);
    if (src) {
        assert_int_equal(duet_dev_buffer_write(f->d, (duet_addr){b, 0}, src, n), DUET_OK);
    } else {
        float *nan = malloc(n + 4);
        for (size_t i = 0; i < n / 4 + 1; i++)
            nan[i] = NAN;
        assert_int_equal(duet_dev_buffer_write(f->d, (duet_addr){b, 0}, nan, n), DUET_OK);
        free(nan);
    }
    return b;
}

static inline duet_addr at(duet_buffer *b) { return (duet_addr){b, 0}; }

static inline void fx_begin(fx *f) { assert_int_equal(duet_dev_stream_begin(f->d, f->s), DUET_OK); }

/* Download dst, then submit and wait. */
static inline void fx_finish(fx *f, duet_buffer *src, void *dst, size_t n)
{
    memset(dst, 0xff, n); /* NaN pattern: a download that does nothing shows */
    assert_int_equal(duet_dev_download(f->d, f->s, at(src), dst, n), DUET_OK);
    assert_int_equal(duet_dev_stream_submit(f->d, f->s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(f->d, f->s), DUET_OK);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static inline float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static inline float *frand_array(size_t n)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = frand();
    return x;
}

static inline void assert_all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            fail_msg("element %zu of %zu is %g", i, n, x[i]);
}

static inline double nmse(const float *got, const float *want, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)got[i] - want[i];
        num += e * e;
        den += (double)want[i] * want[i];
    }
    return den > 0 ? num / den : num;
}

static inline void assert_nmse(const float *got, const float *want, size_t n, double limit)
{
    assert_all_finite(got, n);
    double e = nmse(got, want, n);
    if (!(e <= limit))
        fail_msg("NMSE %.3g exceeds %.3g over %zu elements", e, limit, n);
}

static inline void assert_close(float got, double want, double tol)
{
    if (!(fabs(got - want) <= tol))
        fail_msg("got %.9g, want %.9g (tolerance %g)", got, want, tol);
}

#endif
