/*
 * vulkan_fixture.h — the setup the Vulkan op tests share: the Vulkan
 * device (lavapipe allowed, validation layer on unless the environment
 * says otherwise) and the CPU reference device, a stream on each; and the
 * teardown that turns any validation message into a failure.
 * Header-only; tests include it.
 */
#ifndef DUET_TEST_VULKAN_FIXTURE_H
#define DUET_TEST_VULKAN_FIXTURE_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "device.h"
#include "vulkan_backend.h"

typedef struct side {
    duet_device *d;
    duet_stream *s;
} side;

/* 0 when both sides are open, 77 (skip) without a Vulkan device, 1 when
 * setting up failed; messages name the test. */
static inline int vk_fixture_open(const char *test, side *vk, side *cpu)
{
    if (!getenv("DUET_VK_VALIDATION"))
        setenv("DUET_VK_VALIDATION", "1", 1);
    if (duet_vulkan_device_create(-1, NULL, 1, &vk->d)) {
        fprintf(stderr, "%s: skipped: %s\n", test, duet_last_error());
        return 77;
    }
    duet_device_options o = {.n_threads = 1, .force_reference = 1};
    if (duet_cpu_device_create(&o, &cpu->d) || duet_dev_stream_create(cpu->d, &cpu->s) ||
        duet_dev_stream_create(vk->d, &vk->s)) {
        fprintf(stderr, "%s: setup failed: %s\n", test, duet_last_error());
        return 1;
    }
    duet_device_info info;
    duet_dev_info(vk->d, &info);
    fprintf(stderr, "%s: on %s\n", test, info.name);
    /* DUET_TEST_FILTER / DUET_TEST_SKIP=PATTERN (cmocka's * and ?
     * wildcards): run only the tests whose names match, or all but them;
     * for CTest's reruns of a subset under another setting (a subgroup
     * size: LP_NATIVE_VECTOR_WIDTH). */
    const char *only = getenv("DUET_TEST_FILTER"), *skip = getenv("DUET_TEST_SKIP");
    if (only && *only) {
        cmocka_set_test_filter(only);
        fprintf(stderr, "%s: only the tests matching '%s'\n", test, only);
    }
    if (skip && *skip) {
        cmocka_set_skip_filter(skip);
        fprintf(stderr, "%s: not the tests matching '%s'\n", test, skip);
    }
    return 0;
}

/* Close both sides; the exit status: 1 if cmocka failed or the validation
 * layer reported anything, else 0. */
static inline int vk_fixture_close(side *vk, side *cpu, int cmocka_failed)
{
    duet_dev_stream_destroy(vk->d, vk->s);
    duet_dev_stream_destroy(cpu->d, cpu->s);
    int validation = duet_vulkan_validation_errors(vk->d);
    duet_device_close(vk->d);
    duet_device_close(cpu->d);
    return cmocka_failed || validation ? 1 : 0;
}


/* ---- for tests that open devices of their own ---- */

/* A Vulkan device opened with DUET_VK_FAULT=fault and DUET_VK_TIMELINE=
 * timeline for its creation only (NULL: unset); fails the test otherwise. */
static inline duet_device *vk_fixture_device(const char *fault, const char *timeline)
{
    duet_device *d = NULL;
    if (fault)
        setenv("DUET_VK_FAULT", fault, 1);
    if (timeline)
        setenv("DUET_VK_TIMELINE", timeline, 1);
    duet_status rc = duet_vulkan_device_create(-1, NULL, 1, &d);
    unsetenv("DUET_VK_FAULT");
    unsetenv("DUET_VK_TIMELINE");
    if (rc)
        fail_msg("opening the Vulkan device (DUET_VK_FAULT=%s): %s", fault ? fault : "",
                 duet_last_error());
    return d;
}

/* Close d; fail the test if the validation layer reported anything. */
static inline void vk_fixture_device_close(duet_device *d)
{
    int v = duet_vulkan_validation_errors(d);
    duet_device_close(d);
    if (v)
        fail_msg("the Vulkan validation layer reported %d message(s) (see stderr)", v);
}

/* A buffer of n floats, every one value. */
static inline duet_buffer *vk_fixture_filled(duet_device *d, size_t n, float value)
{
    duet_buffer *b = NULL;
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++)
        x[i] = value;
    assert_int_equal(duet_dev_buffer_alloc(d, n * sizeof(float), &b), DUET_OK);
    assert_int_equal(duet_dev_buffer_write(d, (duet_addr){b, 0}, x, n * sizeof(float)), DUET_OK);
    free(x);
    return b;
}

/* A xorshift stream for test data: uniform 32-bit words, floats in [-1, 1). */
static uint64_t vk_fixture_rng = 0x2545f4914f6cdd1dull;
static inline uint32_t vk_rand32(void)
{
    vk_fixture_rng ^= vk_fixture_rng << 13;
    vk_fixture_rng ^= vk_fixture_rng >> 7;
    vk_fixture_rng ^= vk_fixture_rng << 17;
    return (uint32_t)(vk_fixture_rng >> 32);
}
static inline float vk_frand(void)
{
    return (float)(vk_rand32() >> 8) / (float)(1 << 24) * 2.0f - 1.0f;
}

static inline duet_addr vk_at(duet_buffer *b) { return (duet_addr){b, 0}; }

/* A buffer of n bytes on x holding src, or NaN everywhere when src is NULL
 * (so an output element left unwritten shows). */
static inline duet_buffer *vk_buffer(side *x, const void *src, size_t n)
{
    duet_buffer *b = NULL;
    assert_int_equal(duet_dev_buffer_alloc(x->d, n, &b), DUET_OK);
    float *fill = NULL;
    if (!src) {
        fill = malloc(n + 4);
        assert_non_null(fill);
        for (size_t i = 0; i < n / 4 + 1; i++)
            fill[i] = NAN;
        src = fill;
    }
    assert_int_equal(duet_dev_buffer_write(x->d, vk_at(b), src, n), DUET_OK);
    free(fill);
    return b;
}

/* NaN exactly where the reference has NaN, finite where it is finite, and
 * NMSE over the finite elements within limit. */
static inline void vk_assert_match(const char *what, const float *got, const float *want,
                                   size_t n, double limit)
{
    double num = 0.0, den = 0.0, worst = 0.0;
    size_t worst_at = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(want[i]) != isnan(got[i]) || (!isnan(want[i]) && !isfinite(got[i])))
            fail_msg("%s: element %zu of %zu is %g, the CPU has %g", what, i, n, got[i], want[i]);
        if (isnan(want[i]))
            continue;
        double e = (double)got[i] - want[i];
        if (fabs(e) > worst) {
            worst = fabs(e);
            worst_at = i;
        }
        num += e * e;
        den += (double)want[i] * want[i];
    }
    double nmse = den > 0 ? num / den : num;
    if (getenv("DUET_TEST_VERBOSE"))
        fprintf(stderr, "  %-60s NMSE %.3g (limit %.0e)\n", what, nmse, limit);
    if (!(nmse <= limit))
        fail_msg("%s: NMSE %.3g exceeds %.3g over %zu elements (worst: element %zu, %.9g vs "
                 "%.9g)",
                 what, nmse, limit, n, worst_at, got[worst_at], want[worst_at]);
}

#endif
