/*
 * test_vulkan_sync.c — the Vulkan backend's ordering: barriers only where
 * a command conflicts with one recorded since the last barrier (counted
 * per recording), the shaders' write masks as read from their SPIR-V,
 * results right with the barriers it leaves out, and submission order
 * across two alternating streams (step N+1 sees step N's writes, the
 * engine's async pattern) on the timeline-semaphore and the fence paths.
 *
 * Runs with the Khronos validation layer and its synchronization
 * validation (DUET_VK_VALIDATION=sync unless the environment says
 * otherwise, or =1 in sanitized builds: the layer leaks with sync on; it
 * also turns on the layer's checks between submissions) and
 * fails on any message; two cases drop a needed barrier on purpose (in a
 * recording, between submissions), on devices of their own, to show
 * hazards reach the counter.
 * Exits 77 (skipped) when there is no Vulkan device.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "device.h"
#include "vk_internal.h" /* the stream's barrier counter */
#include "vk_spirv.h"
#include "vulkan_backend.h"
#include "vulkan_fixture.h"

enum { N = 4096 };





static duet_addr at(duet_buffer *b) { return (duet_addr){b, 0}; }

static void assert_all(const float *x, float want, const char *what)
{
    for (int i = 0; i < N; i++)
        if (x[i] != want)
            fail_msg("%s: element %d is %g, want %g", what, i, x[i], want);
}

/* The masks the tracking uses, read from the embedded SPIR-V, against what
 * each shader's GLSL declares (readonly or not). */
static void test_spirv_write_masks(void **state)
{
    (void)state;
    static const struct { const char *name; uint8_t used, written; } want[] = {
        {"add", 0x03, 0x01},      {"swiglu", 0x07, 0x04},    {"rms_norm", 0x07, 0x04},
        {"gather_rows", 0x07, 0x04}, {"embed", 0x0f, 0x04},   {"matmul", 0x1f, 0x08},
        {"matmul_vec", 0x1f, 0x08}, {"matmul_qvec", 0x1f, 0x08}, /* 4: the gated form's W_up */
        {"rope", 0x1f, 0x03},     {"kv_write", 0xff, 0x18},  {"attention", 0x7f, 0x40},
        {"rms_norm_add", 0x0f, 0x05},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const duet_vk_spirv *spv = NULL;
        for (size_t j = 0; j < duet_vk_spirv_count; j++)
            if (strcmp(duet_vk_spirv_table[j].name, want[i].name) == 0)
                spv = &duet_vk_spirv_table[j];
        assert_non_null(spv);
        uint8_t used, written;
        assert_true(duet_vk_spirv_bindings(spv->words, spv->n_words, &used, &written));
        if (used != want[i].used || written != want[i].written)
            fail_msg("%s: bindings used 0x%02x written 0x%02x, want 0x%02x 0x%02x",
                     want[i].name, used, written, want[i].used, want[i].written);
    }
    uint32_t junk[8] = {0x07230203, 0x10000, 0, 100, 0, 0xffff0000u, 0, 0};
    uint8_t used, written;
    assert_false(duet_vk_spirv_bindings(junk, 8, &used, &written));
}

/* Independent commands share a barrier-free stretch; a read after write,
 * a write after read and a write after write each get one. */
static void test_barriers_only_on_hazards(void **state)
{
    (void)state;
    duet_device *d = vk_fixture_device(NULL, NULL);
    duet_stream *s = NULL;
    assert_int_equal(duet_dev_stream_create(d, &s), DUET_OK);
    duet_buffer *a = vk_fixture_filled(d, N, 1), *b = vk_fixture_filled(d, N, 2), *c = vk_fixture_filled(d, N, 3), *e = vk_fixture_filled(d, N, 4);
    float *host = malloc(N * sizeof *host), *got_a = malloc(N * sizeof *got_a);
    float *got_c = malloc(N * sizeof *got_c);
    int first = ((const vk_ctx *)d->ctx)->timeline ? 0 : 1; /* the fence path's first barrier */
    duet_add_args a_b = {at(a), at(b), N}, c_e = {at(c), at(e), N}, a_c = {at(a), at(c), N};
    duet_add_args b_e = {at(b), at(e), N};

    assert_int_equal(duet_dev_stream_begin(d, s), DUET_OK);
    assert_int_equal(duet_dev_add(d, s, &a_b), DUET_OK); /* a = 3 */
    assert_int_equal(duet_dev_add(d, s, &c_e), DUET_OK); /* c = 7: independent */
    assert_int_equal(s->n_barriers, first);
    assert_int_equal(duet_dev_add(d, s, &a_c), DUET_OK); /* a = 10: RAW on c, WAW on a */
    assert_int_equal(s->n_barriers, first + 1);
    assert_int_equal(duet_dev_add(d, s, &b_e), DUET_OK); /* b = 6: b, e read before the */
    assert_int_equal(s->n_barriers, first + 1);          /* barrier only: no hazard */
    for (int i = 0; i < N; i++)
        host[i] = 100;
    assert_int_equal(duet_dev_upload(d, s, at(e), host, N * sizeof(float)), DUET_OK);
    assert_int_equal(s->n_barriers, first + 2); /* WAR: b_e reads e */
    memset(host, 0, N * sizeof *host);          /* the upload copied it already */
    assert_int_equal(duet_dev_add(d, s, &c_e), DUET_OK); /* c = 107: RAW on e */
    assert_int_equal(s->n_barriers, first + 3);
    assert_int_equal(duet_dev_download(d, s, at(a), got_a, N * sizeof(float)), DUET_OK);
    assert_int_equal(s->n_barriers, first + 3); /* a was written before the last barrier */
    assert_int_equal(duet_dev_download(d, s, at(c), got_c, N * sizeof(float)), DUET_OK);
    assert_int_equal(s->n_barriers, first + 4); /* RAW on c */
    assert_int_equal(s->n_commands, 8);
    assert_int_equal(duet_dev_stream_submit(d, s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(d, s), DUET_OK);
    assert_all(got_a, 10, "a");
    assert_all(got_c, 107, "c");
    free(host), free(got_a), free(got_c);
    duet_dev_stream_destroy(d, s);
    duet_buffer *all[] = {a, b, c, e};
    for (int i = 0; i < 4; i++)
        duet_dev_buffer_free(d, all[i]);
    vk_fixture_device_close(d);
}

/* Two streams alternate without waiting in between: each step reads what
 * the step before wrote (x += y, then y += x), so any reordering shows. */
static void alternate(const char *timeline)
{
    enum { STEPS = 24 };
    duet_device *d = vk_fixture_device(NULL, timeline);
    duet_stream *s[2] = {NULL, NULL};
    assert_int_equal(duet_dev_stream_create(d, &s[0]), DUET_OK);
    assert_int_equal(duet_dev_stream_create(d, &s[1]), DUET_OK);
    duet_buffer *x = vk_fixture_filled(d, N, 1), *y = vk_fixture_filled(d, N, 1);
    float *got = malloc(N * sizeof *got);
    double fx = 1, fy = 1;
    for (int step = 0; step < STEPS; step++) {
        duet_stream *cur = s[step % 2];
        assert_int_equal(duet_dev_stream_begin(d, cur), DUET_OK); /* waits step - 2 */
        duet_add_args xy = {at(x), at(y), N}, yx = {at(y), at(x), N};
        assert_int_equal(duet_dev_add(d, cur, step % 2 ? &yx : &xy), DUET_OK);
        if (step % 2)
            fy += fx;
        else
            fx += fy;
        if (step == STEPS - 1)
            assert_int_equal(duet_dev_download(d, cur, at(y), got, N * sizeof(float)), DUET_OK);
        assert_int_equal(duet_dev_stream_submit(d, cur), DUET_OK);
    }
    assert_int_equal(duet_dev_stream_wait(d, s[0]), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(d, s[1]), DUET_OK);
    assert_all(got, (float)fy, timeline ? "y (fences)" : "y (timeline)");
    free(got);
    duet_dev_stream_destroy(d, s[0]);
    duet_dev_stream_destroy(d, s[1]);
    duet_dev_buffer_free(d, x);
    duet_dev_buffer_free(d, y);
    vk_fixture_device_close(d);
}

static void test_submission_order_timeline(void **state)
{
    (void)state;
    alternate(NULL);
}

static void test_submission_order_fences(void **state)
{
    (void)state;
    alternate("0");
}

/* The checker can fail: forget the tracked accesses between a write and a
 * read of the same buffer, so no barrier is recorded; synchronization
 * validation must report the hazard (on a device of its own). */
static void test_missing_barrier_is_reported(void **state)
{
    (void)state;
    const char *env = getenv("DUET_VK_VALIDATION");
    if (!env || strcmp(env, "sync") != 0) {
        fprintf(stderr, "  (synchronization validation is off: not exercised)\n");
        return;
    }
    duet_device *d = vk_fixture_device(NULL, NULL);
    duet_stream *s = NULL;
    assert_int_equal(duet_dev_stream_create(d, &s), DUET_OK);
    duet_buffer *a = vk_fixture_filled(d, N, 1), *b = vk_fixture_filled(d, N, 2);
    duet_add_args a_b = {at(a), at(b), N}, b_a = {at(b), at(a), N};
    assert_int_equal(duet_dev_stream_begin(d, s), DUET_OK);
    assert_int_equal(duet_dev_add(d, s, &a_b), DUET_OK);
    s->n_pending = 0; /* the bug being simulated */
    fprintf(stderr, "  (a synchronization hazard is expected next)\n");
    assert_int_equal(duet_dev_add(d, s, &b_a), DUET_OK);
    assert_int_equal(s->n_barriers, 0);
    assert_int_equal(duet_dev_stream_submit(d, s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(d, s), DUET_OK);
    assert_true(duet_vulkan_validation_errors(d) > 0);
    duet_dev_stream_destroy(d, s);
    duet_dev_buffer_free(d, a);
    duet_dev_buffer_free(d, b);
    duet_device_close(d);
}

/* The same across submissions: without the fence path's first barrier,
 * step N+1 is not ordered after step N and the layer's submit-time check
 * must say so. */
static void test_missing_submission_order_is_reported(void **state)
{
    (void)state;
    const char *env = getenv("DUET_VK_VALIDATION");
    if (!env || strcmp(env, "sync") != 0) {
        fprintf(stderr, "  (synchronization validation is off: not exercised)\n");
        return;
    }
    duet_device *d = vk_fixture_device(NULL, "0");
    duet_stream *s[2] = {NULL, NULL};
    assert_int_equal(duet_dev_stream_create(d, &s[0]), DUET_OK);
    assert_int_equal(duet_dev_stream_create(d, &s[1]), DUET_OK);
    duet_buffer *x = vk_fixture_filled(d, N, 1), *y = vk_fixture_filled(d, N, 1);
    fprintf(stderr, "  (synchronization hazards at vkQueueSubmit are expected next)\n");
    for (int step = 0; step < 2; step++) {
        duet_stream *cur = s[step % 2];
        assert_int_equal(duet_dev_stream_begin(d, cur), DUET_OK);
        cur->need_barrier = 0; /* the bug being simulated */
        duet_add_args xy = {at(x), at(y), N}, yx = {at(y), at(x), N};
        assert_int_equal(duet_dev_add(d, cur, step % 2 ? &yx : &xy), DUET_OK);
        assert_int_equal(duet_dev_stream_submit(d, cur), DUET_OK);
    }
    assert_int_equal(duet_dev_stream_wait(d, s[0]), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(d, s[1]), DUET_OK);
    assert_true(duet_vulkan_validation_errors(d) > 0);
    duet_dev_stream_destroy(d, s[0]);
    duet_dev_stream_destroy(d, s[1]);
    duet_dev_buffer_free(d, x);
    duet_dev_buffer_free(d, y);
    duet_device_close(d);
}

int main(void)
{
    /* The layer's synchronization validation (1.3.239) leaks its own
     * memory, which LeakSanitizer cannot tell from ours once the layer is
     * unloaded: sanitized builds validate without it. */
#if defined(__SANITIZE_ADDRESS__)
    const char *default_validation = "1";
#else
    const char *default_validation = "sync";
#endif
    if (!getenv("DUET_VK_VALIDATION"))
        setenv("DUET_VK_VALIDATION", default_validation, 1);
    duet_device *probe = NULL;
    if (duet_vulkan_device_create(-1, NULL, 1, &probe) != DUET_OK) {
        fprintf(stderr, "test_vulkan_sync: skipped: %s\n", duet_last_error());
        return 77;
    }
    duet_device_close(probe);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spirv_write_masks),
        cmocka_unit_test(test_barriers_only_on_hazards),
        cmocka_unit_test(test_submission_order_timeline),
        cmocka_unit_test(test_submission_order_fences),
        cmocka_unit_test(test_missing_barrier_is_reported),
        cmocka_unit_test(test_missing_submission_order_is_reported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
