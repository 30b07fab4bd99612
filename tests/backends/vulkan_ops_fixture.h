/*
 * vulkan_ops_fixture.h — what the Vulkan op tests (test_vulkan_ops.c,
 * test_vulkan_matmul.c) share: the two sides (the Vulkan device and the CPU
 * reference), stream and buffer helpers, bitwise comparison, the
 * validation check, a device of a test's own created under an environment
 * override, and random weights of every type. Header-only.
 */
#ifndef DUET_TEST_VULKAN_OPS_FIXTURE_H
#define DUET_TEST_VULKAN_OPS_FIXTURE_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "device.h"
#include "dtype.h"
#include "vk_internal.h" /* struct duet_buffer: to check the chunked case is reached */
#include "vulkan_backend.h"
#include "vulkan_fixture.h"

static side cpu, vk;

/* ---- helpers ------------------------------------------------------------------ */


static inline float *frand_array(size_t n, float scale)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = vk_frand() * scale;
    return x;
}

/* A buffer on side x holding src, or n bytes of NaN when src is NULL. */

static inline duet_addr none(void) { return (duet_addr){NULL, 0}; }

static inline void begin(side *x) { assert_int_equal(duet_dev_stream_begin(x->d, x->s), DUET_OK); }

/* Download n bytes of b into dst (poisoned first), submit and wait. */
static inline void finish(side *x, duet_buffer *b, void *dst, size_t n)
{
    memset(dst, 0xff, n);
    assert_int_equal(duet_dev_download(x->d, x->s, vk_at(b), dst, n), DUET_OK);
    assert_int_equal(duet_dev_stream_submit(x->d, x->s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(x->d, x->s), DUET_OK);
}

static inline void free_bufs(side *x, duet_buffer **b, int n)
{
    for (int i = 0; i < n; i++)
        duet_dev_buffer_free(x->d, b[i]);
}

/* Bit-identical, NaNs compared as NaN. */
static inline void assert_same(const char *what, const float *got, const float *want, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (isnan(want[i]) && isnan(got[i]))
            continue;
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0)
            fail_msg("%s: element %zu of %zu is %.9g, the CPU has %.9g", what, i, n, got[i],
                     want[i]);
    }
}

static inline void check_validation(void)
{
    int n = duet_vulkan_validation_errors(vk.d);
    if (n != 0)
        fail_msg("the Vulkan validation layer reported %d message(s) (see stderr)", n);
}

/* Make vk a device of its own created with n1=v1 (and n2=v2 when n2 is not
 * NULL) set; returns the shared one, for restore_device(). */
static inline side device_with_env(const char *n1, const char *v1, const char *n2, const char *v2)
{
    side saved = vk;
    setenv(n1, v1, 1);
    if (n2)
        setenv(n2, v2, 1);
    duet_status rc = duet_vulkan_device_create(-1, NULL, 1, &vk.d);
    unsetenv(n1);
    if (n2)
        unsetenv(n2);
    assert_int_equal(rc, DUET_OK);
    assert_int_equal(duet_dev_stream_create(vk.d, &vk.s), DUET_OK);
    return saved;
}

/* Close device_with_env's device (no validation message allowed) and put
 * the shared one back. */
static inline void restore_device(side saved)
{
    check_validation();
    duet_dev_stream_destroy(vk.d, vk.s);
    duet_device_close(vk.d);
    vk = saved;
}

/* ---- weights ------------------------------------------------------------------ */

static const duet_dtype weight_types[] = {DUET_F32,  DUET_F16,  DUET_BF16, DUET_Q8_0, DUET_Q4_0,
                                          DUET_Q4_1, DUET_Q4_K, DUET_Q5_K, DUET_Q6_K};
enum { N_WEIGHT_TYPES = sizeof weight_types / sizeof weight_types[0] };

static inline void put_half(uint8_t *p, float v)
{
    uint16_t h = duet_f32_to_f16(v);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* rows x k of type t with random contents whose scales are sane halves. */
static inline uint8_t *random_weights(duet_dtype t, int rows, int k, size_t *bytes)
{
    size_t rb = duet_dtype_row_bytes(t, k);
    *bytes = rb * rows;
    uint8_t *w = malloc(*bytes);
    for (size_t i = 0; i < *bytes; i++)
        w[i] = (uint8_t)vk_rand32();
    const duet_dtype_info *info = duet_dtype_get(t);
    size_t n_blocks = *bytes / info->block_bytes;
    for (size_t i = 0; i < n_blocks; i++) {
        uint8_t *b = w + i * info->block_bytes;
        switch (t) {
        case DUET_F32: {
            float v = vk_frand();
            memcpy(b, &v, 4);
            break;
        }
        case DUET_F16: put_half(b, vk_frand()); break;
        case DUET_BF16: {
            uint16_t h = duet_f32_to_bf16(vk_frand());
            b[0] = (uint8_t)h;
            b[1] = (uint8_t)(h >> 8);
            break;
        }
        case DUET_Q4_0:
        case DUET_Q8_0: put_half(b, vk_frand() * 0.05f); break;
        case DUET_Q4_1:
        case DUET_Q4_K:
        case DUET_Q5_K:
            put_half(b, vk_frand() * 0.05f);
            put_half(b + 2, vk_frand() * 0.05f);
            break;
        case DUET_Q6_K: put_half(b + 208, vk_frand() * 0.01f); break;
        default: fail_msg("no generator for type %d", (int)t);
        }
    }
    return w;
}

#endif
