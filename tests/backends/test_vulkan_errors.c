/*
 * test_vulkan_errors.c — the Vulkan backend's failure paths, reached with
 * the test-only fault injection (DUET_VK_FAULT, read at device creation):
 * out of device memory at allocation, a buffer larger than the heap, a
 * pipeline that fails to build, and a device lost at submission — each
 * checked for its status code, for a message naming what failed, and for
 * the device's later behaviour (a lost device fails every later call at
 * once; nothing hangs or crashes; destroy still works). The lost device is
 * checked on both submission paths (timeline semaphore and fences) and
 * through the model runner on the default model.
 *
 * Runs with the Khronos validation layer (DUET_VK_VALIDATION=1 unless the
 * environment says otherwise) and fails on any validation message.
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

#include "../default_model.h"
#include "device.h"
#include "gguf.h"
#include "model.h"
#include "vk_internal.h" /* the heap size, the timeline handle */
#include "vulkan_backend.h"
#include "vulkan_fixture.h"

enum { N = 1024 };




/* The last message contains every one of the words. */
static void assert_message_names(const char *a, const char *b, const char *c)
{
    const char *msg = duet_last_error();
    if (getenv("DUET_TEST_VERBOSE"))
        fprintf(stderr, "  message: %s\n", msg);
    const char *words[3] = {a, b, c};
    for (int i = 0; i < 3; i++)
        if (words[i] && !strstr(msg, words[i]))
            fail_msg("the message does not name '%s': %s", words[i], msg);
}


static void test_invalid_fault_spec_is_rejected(void **state)
{
    (void)state;
    duet_device *d = NULL;
    setenv("DUET_VK_FAULT", "device_lost_after:x", 1);
    duet_status rc = duet_vulkan_device_create(-1, NULL, 1, &d);
    unsetenv("DUET_VK_FAULT");
    assert_int_equal(rc, DUET_ERR_INVALID_ARG);
    assert_null(d);
    assert_message_names("DUET_VK_FAULT", "device_lost_after:x", NULL);
}

/* Allocation 2 (of device memory) fails: the status says memory, the
 * message names the size and the error; the first buffer still works. */
static void test_out_of_device_memory(void **state)
{
    (void)state;
    duet_device *d = vk_fixture_device("oom:1", NULL);
    duet_buffer *a = vk_fixture_filled(d, N, 1.0f), *b = NULL;
    assert_int_equal(duet_dev_buffer_alloc(d, 3 * 1000 * 1000, &b), DUET_ERR_OUT_OF_MEMORY);
    assert_null(b);
    assert_message_names("3000000 bytes", "VK_ERROR_OUT_OF_DEVICE_MEMORY", "heap");
    float x[4];
    assert_int_equal(duet_dev_buffer_read(d, (duet_addr){a, 0}, x, sizeof x), DUET_OK);
    assert_true(x[3] == 1.0f);
    duet_dev_buffer_free(d, a);
    vk_fixture_device_close(d);
}

static void test_buffer_larger_than_heap(void **state)
{
    (void)state;
    duet_device *d = vk_fixture_device(NULL, NULL);
    const vk_ctx *c = d->ctx;
    size_t size = (size_t)c->device_heap_bytes + 4096;
    char heap[32];
    snprintf(heap, sizeof heap, "%llu bytes", (unsigned long long)c->device_heap_bytes);
    duet_buffer *b = NULL;
    assert_int_equal(duet_dev_buffer_alloc(d, size, &b), DUET_ERR_OUT_OF_MEMORY);
    assert_null(b);
    assert_message_names("larger than the device-local heap", heap, NULL);
    duet_buffer *ok = vk_fixture_filled(d, N, 2.0f); /* the device is fine */
    duet_dev_buffer_free(d, ok);
    vk_fixture_device_close(d);
}

/* The 'add' pipeline fails to build: the op fails naming it; other ops in
 * the same recording still run and give the right answer. */
static void test_pipeline_failure(void **state)
{
    (void)state;
    duet_device *d = vk_fixture_device("pipeline:add", NULL);
    duet_stream *s = NULL;
    assert_int_equal(duet_dev_stream_create(d, &s), DUET_OK);
    duet_buffer *a = vk_fixture_filled(d, N, 1.0f), *b = vk_fixture_filled(d, N, 2.0f);
    duet_buffer *g = vk_fixture_filled(d, N, 0.0f), *out = vk_fixture_filled(d, N, -1.0f);
    assert_int_equal(duet_dev_stream_begin(d, s), DUET_OK);
    duet_add_args add = {{a, 0}, {b, 0}, N};
    assert_int_equal(duet_dev_add(d, s, &add), DUET_ERR_DEVICE);
    assert_message_names("pipeline", "'add'", "VK_ERROR_INITIALIZATION_FAILED");
    /* swiglu(0, up) = 0 everywhere */
    duet_swiglu_args sw = {{g, 0}, {b, 0}, {out, 0}, 1, N};
    assert_int_equal(duet_dev_swiglu(d, s, &sw), DUET_OK);
    float *got = malloc(N * sizeof *got);
    assert_int_equal(duet_dev_download(d, s, (duet_addr){out, 0}, got, N * sizeof(float)),
                     DUET_OK);
    assert_int_equal(duet_dev_stream_submit(d, s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(d, s), DUET_OK);
    for (int i = 0; i < N; i++)
        assert_true(got[i] == 0.0f);
    /* And again: the failure is reported each time, not cached as success. */
    assert_int_equal(duet_dev_stream_begin(d, s), DUET_OK);
    assert_int_equal(duet_dev_add(d, s, &add), DUET_ERR_DEVICE);
    free(got);
    duet_dev_stream_destroy(d, s);
    duet_buffer *all[] = {a, b, g, out};
    for (int i = 0; i < 4; i++)
        duet_dev_buffer_free(d, all[i]);
    vk_fixture_device_close(d);
}

/* Submission 2 finds the device lost. Stream 1 (submitted before) reports
 * it at wait; every later call fails at once with DUET_ERR_DEVICE naming
 * the loss; destroying everything still works. */
static void device_lost_case(const char *timeline)
{
    duet_device *d = vk_fixture_device("device_lost_after:1", timeline);
    const vk_ctx *c = d->ctx;
    if (timeline)
        assert_true(c->timeline == VK_NULL_HANDLE);
    else if (c->caps.timeline)
        assert_true(c->timeline != VK_NULL_HANDLE);
    duet_stream *s1 = NULL, *s2 = NULL;
    assert_int_equal(duet_dev_stream_create(d, &s1), DUET_OK);
    assert_int_equal(duet_dev_stream_create(d, &s2), DUET_OK);
    duet_buffer *a = vk_fixture_filled(d, N, 1.0f), *b = vk_fixture_filled(d, N, 2.0f);
    duet_add_args add = {{a, 0}, {b, 0}, N};
    float x[4];

    assert_int_equal(duet_dev_stream_begin(d, s1), DUET_OK);
    assert_int_equal(duet_dev_add(d, s1, &add), DUET_OK);
    assert_int_equal(duet_dev_download(d, s1, (duet_addr){a, 0}, x, sizeof x), DUET_OK);
    assert_int_equal(duet_dev_stream_submit(d, s1), DUET_OK);

    assert_int_equal(duet_dev_stream_begin(d, s2), DUET_OK);
    assert_int_equal(duet_dev_add(d, s2, &add), DUET_OK);
    assert_int_equal(duet_dev_stream_submit(d, s2), DUET_ERR_DEVICE);
    assert_message_names("submitting a stream", "VK_ERROR_DEVICE_LOST", NULL);

    assert_int_equal(duet_dev_stream_wait(d, s1), DUET_ERR_DEVICE);
    assert_message_names("stream_wait", "lost", NULL);
    assert_int_equal(duet_dev_stream_wait(d, s2), DUET_ERR_DEVICE);
    assert_int_equal(duet_dev_stream_begin(d, s1), DUET_ERR_DEVICE);
    assert_message_names("stream_begin", "lost", NULL);
    assert_int_equal(duet_dev_add(d, s1, &add), DUET_ERR_DEVICE);
    assert_int_equal(duet_dev_upload(d, s1, (duet_addr){a, 0}, x, sizeof x), DUET_ERR_DEVICE);
    assert_int_equal(duet_dev_stream_submit(d, s1), DUET_ERR_DEVICE);
    duet_buffer *more = NULL;
    assert_int_equal(duet_dev_buffer_alloc(d, 256, &more), DUET_ERR_DEVICE);
    assert_message_names("allocating a buffer", "lost", NULL);
    assert_int_equal(duet_dev_buffer_write(d, (duet_addr){a, 0}, x, sizeof x), DUET_ERR_DEVICE);
    assert_int_equal(duet_dev_buffer_read(d, (duet_addr){a, 0}, x, sizeof x), DUET_ERR_DEVICE);

    duet_dev_stream_destroy(d, s1);
    duet_dev_stream_destroy(d, s2);
    duet_dev_buffer_free(d, a);
    duet_dev_buffer_free(d, b);
    vk_fixture_device_close(d);
}

static void test_device_lost_timeline(void **state)
{
    (void)state;
    device_lost_case(NULL);
}

static void test_device_lost_fences(void **state)
{
    (void)state;
    device_lost_case("0");
}

/* The runner on the default model: a step on a lost device is an error,
 * and so is the next one; then everything is released. */
static void test_device_lost_model_forward(void **state)
{
    (void)state;
    char path[1024];
    duet_test_model_path(path, sizeof path);
    duet_gguf *g = NULL;
    if (duet_gguf_open(path, &g) != DUET_OK) {
        fprintf(stderr, "  (no model at %s: the runner case is not exercised)\n", path);
        return;
    }
    duet_model_config cfg;
    assert_int_equal(duet_model_config_read(g, &cfg), DUET_OK);
    duet_device *d = vk_fixture_device("device_lost_after:0", NULL);
    duet_model_weights w;
    duet_runner *r = NULL;
    duet_status rc = duet_model_weights_load(g, &cfg, d, &w);
    if (rc) {
        /* Device memory the host cannot map is written by submissions, so
         * the loss shows while loading: also a clean failure. */
        assert_int_equal(rc, DUET_ERR_DEVICE);
        assert_message_names("lost", NULL, NULL);
        vk_fixture_device_close(d);
        duet_gguf_close(g);
        return;
    }
    duet_runner_options o = {
        .max_tokens = 16, .max_seqs = 1, .max_logit_rows = 16, .num_blocks = 4,
        .block_size = 16, .max_blocks_per_seq = 2, .kv_type = DUET_F16, .sampling = 0,
    };
    assert_int_equal(duet_runner_create(d, &cfg, &w, &o, &r), DUET_OK);
    int32_t tokens[3] = {1, 2, 3}, positions[3] = {0, 1, 2}, slots[3] = {16, 17, 18};
    int32_t qsl[2] = {0, 3}, lens[1] = {3}, table[2] = {1, 2}, rows[1] = {2};
    duet_batch b = {.n_tokens = 3, .n_seqs = 1, .tokens = tokens, .positions = positions,
                    .slot_mapping = slots, .query_start_loc = qsl, .seq_lens = lens,
                    .block_tables = table, .logit_rows = rows, .n_logit_rows = 1};
    float *logits = malloc((size_t)cfg.vocab * sizeof *logits);
    assert_int_equal(duet_model_forward(r, &b, logits, NULL), DUET_ERR_DEVICE);
    assert_message_names("VK_ERROR_DEVICE_LOST", NULL, NULL);
    assert_int_equal(duet_model_forward(r, &b, logits, NULL), DUET_ERR_DEVICE);
    assert_message_names("lost", NULL, NULL);
    free(logits);
    duet_runner_free(r);
    duet_model_weights_release(d, &w);
    vk_fixture_device_close(d);
    duet_gguf_close(g);
}

int main(void)
{
    if (!getenv("DUET_VK_VALIDATION"))
        setenv("DUET_VK_VALIDATION", "1", 1);
    duet_device *probe = NULL;
    if (duet_vulkan_device_create(-1, NULL, 1, &probe) != DUET_OK) {
        fprintf(stderr, "test_vulkan_errors: skipped: %s\n", duet_last_error());
        return 77;
    }
    duet_device_close(probe);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invalid_fault_spec_is_rejected),
        cmocka_unit_test(test_out_of_device_memory),
        cmocka_unit_test(test_buffer_larger_than_heap),
        cmocka_unit_test(test_pipeline_failure),
        cmocka_unit_test(test_device_lost_timeline),
        cmocka_unit_test(test_device_lost_fences),
        cmocka_unit_test(test_device_lost_model_forward),
    };
    return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
