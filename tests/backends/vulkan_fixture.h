/*
 * vulkan_fixture.h — the setup the Vulkan op tests share: the Vulkan
 * device (lavapipe allowed, validation layer on unless the environment
 * says otherwise) and the CPU reference device, a stream on each; and the
 * teardown that turns any validation message into a failure.
 * Header-only; tests include it.
 */
#ifndef DUET_TEST_VULKAN_FIXTURE_H
#define DUET_TEST_VULKAN_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>

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


/* ---- for tests that open devices of their own (include <cmocka.h> first) ---- */

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

#endif
