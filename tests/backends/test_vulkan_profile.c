/*
 * test_vulkan_profile.c — the Vulkan backend's GPU timestamp profile:
 * counts per kind exactly the commands recorded (shader name per dispatch,
 * "upload" per copy in), totals finite, not negative and within the span,
 * one recording counted per submission; reset forgets; a device without
 * profiling (or a recording begun before enabling) counts nothing; a
 * recording longer than the first query pool; DUET_VK_PROFILE parsed at
 * creation; the errors (not a Vulkan device, no timestamps).
 *
 * Runs with the Khronos validation layer (DUET_VK_VALIDATION=1 unless the
 * environment says otherwise) and fails on any message. Exits 77 (skipped)
 * without a Vulkan device, or when its compute queue reports no
 * timestamps (timestampValidBits 0).
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
#include "vk_internal.h" /* the caps: timestamp bits and period */
#include "vulkan_backend.h"
#include "vulkan_fixture.h"

enum { N = 1024, K = 64, MM_N = 32, MAX_KINDS = 32 };

typedef struct profile {
    duet_vulkan_profile_entry e[MAX_KINDS];
    int n;
    duet_vulkan_profile_totals t;
} profile;

static profile read_profile(duet_device *d)
{
    profile p;
    memset(&p, 0, sizeof p);
    assert_int_equal(duet_vulkan_profile_read(d, p.e, MAX_KINDS, &p.n, &p.t), DUET_OK);
    assert_true(p.n <= MAX_KINDS);
    return p;
}

/* Commands of kind in p (0 when absent). */
static uint64_t count_of(const profile *p, const char *kind)
{
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->e[i].kind, kind) == 0)
            return p->e[i].count;
    return 0;
}

/* Every total finite and >= 0, sorted by total descending, at least one
 * > 0, and their sum within the span (the stamps' differences add up to
 * it; 1e-6 relative for the float sums). */
static void assert_sane(const profile *p)
{
    double sum = 0;
    for (int i = 0; i < p->n; i++) {
        double t = p->e[i].total_us;
        if (!isfinite(t) || t < 0)
            fail_msg("kind %s: total %g us", p->e[i].kind, t);
        if (i && t > p->e[i - 1].total_us)
            fail_msg("kind %s (%g us) after %s (%g us): not sorted", p->e[i].kind, t,
                     p->e[i - 1].kind, p->e[i - 1].total_us);
        sum += t;
    }
    assert_true(p->n > 0 && p->e[0].total_us > 0);
    assert_true(isfinite(p->t.span_us));
    if (!(sum <= p->t.span_us * (1 + 1e-6) + 1e-3))
        fail_msg("the kinds sum to %.3f us, more than the span %.3f us", sum, p->t.span_us);
}

static duet_addr at(duet_buffer *b) { return (duet_addr){b, 0}; }

/* One recording: `adds` adds, `matmuls` F32 matmuls and, with upload, one
 * upload first; submitted and waited for. The results are checked, so
 * the commands really ran. */
static void record(duet_device *d, int upload, int adds, int matmuls)
{
    duet_stream *s = NULL;
    assert_int_equal(duet_dev_stream_create(d, &s), DUET_OK);
    duet_buffer *a = vk_fixture_filled(d, N, 0), *b = vk_fixture_filled(d, N, 1);
    duet_buffer *x = vk_fixture_filled(d, K, 1), *w = vk_fixture_filled(d, MM_N * K, 0.5f);
    duet_buffer *y = vk_fixture_filled(d, MM_N * matmuls + 1, -1);
    float *host = malloc(N * sizeof *host);
    assert_non_null(host);
    for (int i = 0; i < N; i++)
        host[i] = 2;
    assert_int_equal(duet_dev_stream_begin(d, s), DUET_OK);
    if (upload)
        assert_int_equal(duet_dev_upload(d, s, at(b), host, N * sizeof(float)), DUET_OK);
    duet_add_args ab = {at(a), at(b), N};
    for (int i = 0; i < adds; i++)
        assert_int_equal(duet_dev_add(d, s, &ab), DUET_OK);
    for (int i = 0; i < matmuls; i++) {
        duet_matmul_args m = {.x = at(x), .w = at(w), .w_type = DUET_F32, .n_rows = 1, .k = K,
                              .n = MM_N,
                              .out = {y, (size_t)i * MM_N * sizeof(float)}};
        assert_int_equal(duet_dev_matmul(d, s, &m), DUET_OK);
    }
    assert_int_equal(duet_dev_stream_submit(d, s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(d, s), DUET_OK);
    assert_int_equal(duet_dev_buffer_read(d, at(a), host, N * sizeof(float)), DUET_OK);
    float want = (float)adds * (upload ? 2.0f : 1.0f);
    for (int i = 0; i < N; i++)
        if (host[i] != want)
            fail_msg("a[%d] is %g after %d adds, want %g", i, host[i], adds, want);
    if (matmuls) {
        assert_int_equal(duet_dev_buffer_read(d, at(y), host, sizeof(float)), DUET_OK);
        assert_true(host[0] == 0.5f * K);
    }
    free(host);
    duet_buffer *all[] = {a, b, x, w, y};
    for (int i = 0; i < 5; i++)
        duet_dev_buffer_free(d, all[i]);
    duet_dev_stream_destroy(d, s);
}

/* Enabled at run time: one recording of an upload, 3 adds and 2 matmuls
 * counts exactly those; reset forgets everything. */
static void test_counts_per_kind(void **state)
{
    (void)state;
    duet_device *d = vk_fixture_device(NULL, NULL);
    const char *matmul = duet_vk_shader_name(VK_SH_MATMUL); /* lavapipe's kernel */
    if (((const vk_ctx *)d->ctx)->caps.vec_matmul)
        matmul = duet_vk_shader_name(VK_SH_MATMUL_VEC);
    assert_int_equal(duet_vulkan_profile_enable(d, 1), DUET_OK);
    record(d, 1, 3, 2);
    profile p = read_profile(d);
    for (int i = 0; i < p.n; i++)
        fprintf(stderr, "  %-12s %3llu commands %10.1f us\n", p.e[i].kind,
                (unsigned long long)p.e[i].count, p.e[i].total_us);
    fprintf(stderr, "  span %.1f us, %llu recording(s)\n", p.t.span_us,
            (unsigned long long)p.t.recordings);
    assert_int_equal(p.n, 3);
    assert_int_equal(count_of(&p, "upload"), 1);
    assert_int_equal(count_of(&p, "add"), 3);
    assert_int_equal(count_of(&p, matmul), 2);
    assert_int_equal(p.t.recordings, 1);
    /* RAW on b after the upload, then on a before each later add (plus the
     * first command's barrier on the fence path) */
    assert_int_equal(p.t.barriers, 3 + (((const vk_ctx *)d->ctx)->timeline ? 0 : 1));
    assert_sane(&p);

    duet_vulkan_profile_reset(d);
    p = read_profile(d);
    assert_int_equal(p.n, 0);
    assert_int_equal(p.t.recordings, 0);
    assert_int_equal(p.t.barriers, 0);
    assert_true(p.t.span_us == 0);
    /* cap 0: only the number of kinds */
    record(d, 0, 2, 0);
    int n = -1;
    assert_int_equal(duet_vulkan_profile_read(d, NULL, 0, &n, NULL), DUET_OK);
    assert_int_equal(n, 1);
    vk_fixture_device_close(d);
}

/* Off by default; enabling takes effect at the next stream_begin, and
 * disabling likewise. */
static void test_disabled_counts_nothing(void **state)
{
    (void)state;
    duet_device *d = vk_fixture_device(NULL, NULL);
    record(d, 1, 3, 1);
    profile p = read_profile(d);
    assert_int_equal(p.n, 0);
    assert_int_equal(p.t.recordings, 0);
    assert_false(p.t.enabled);

    /* Enabled in the middle of a recording: that one is not profiled. */
    duet_stream *s = NULL;
    assert_int_equal(duet_dev_stream_create(d, &s), DUET_OK);
    duet_buffer *a = vk_fixture_filled(d, N, 0), *b = vk_fixture_filled(d, N, 1);
    duet_add_args ab = {at(a), at(b), N};
    assert_int_equal(duet_dev_stream_begin(d, s), DUET_OK);
    assert_int_equal(duet_vulkan_profile_enable(d, 1), DUET_OK);
    assert_int_equal(duet_dev_add(d, s, &ab), DUET_OK);
    assert_int_equal(duet_dev_stream_submit(d, s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(d, s), DUET_OK);
    p = read_profile(d);
    assert_int_equal(p.n, 0);
    assert_true(p.t.enabled);
    /* The next one is; disabled while it records, it still counts. */
    assert_int_equal(duet_dev_stream_begin(d, s), DUET_OK);
    assert_int_equal(duet_dev_add(d, s, &ab), DUET_OK);
    assert_int_equal(duet_vulkan_profile_enable(d, 0), DUET_OK);
    assert_int_equal(duet_dev_add(d, s, &ab), DUET_OK);
    assert_int_equal(duet_dev_stream_submit(d, s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(d, s), DUET_OK);
    p = read_profile(d);
    assert_int_equal(p.n, 1);
    assert_int_equal(count_of(&p, "add"), 2);
    assert_int_equal(p.t.recordings, 1);
    /* And then nothing more. */
    assert_int_equal(duet_dev_stream_begin(d, s), DUET_OK);
    assert_int_equal(duet_dev_add(d, s, &ab), DUET_OK);
    assert_int_equal(duet_dev_stream_submit(d, s), DUET_OK);
    assert_int_equal(duet_dev_stream_wait(d, s), DUET_OK);
    p = read_profile(d);
    assert_int_equal(count_of(&p, "add"), 2);
    assert_int_equal(p.t.recordings, 1);
    duet_dev_stream_destroy(d, s);
    duet_dev_buffer_free(d, a);
    duet_dev_buffer_free(d, b);
    vk_fixture_device_close(d);
}

/* 300 adds: more stamps than the first query pool holds (VK_PROF_POOL);
 * then a short recording on the same stream's pools again. Profiling
 * from DUET_VK_PROFILE=1, with no call. */
static void test_long_recording_from_env(void **state)
{
    (void)state;
    enum { ADDS = 300 };
    assert_true(ADDS + 1 > VK_PROF_POOL);
    setenv("DUET_VK_PROFILE", "1", 1);
    duet_device *d = vk_fixture_device(NULL, NULL);
    unsetenv("DUET_VK_PROFILE");
    record(d, 0, ADDS, 0);
    profile p = read_profile(d);
    assert_true(p.t.enabled);
    assert_int_equal(p.n, 1);
    assert_int_equal(count_of(&p, "add"), ADDS);
    assert_int_equal(p.t.recordings, 1);
    assert_sane(&p);
    record(d, 1, 1, 1);
    p = read_profile(d);
    assert_int_equal(count_of(&p, "add"), ADDS + 1);
    assert_int_equal(count_of(&p, "upload"), 1);
    assert_int_equal(p.t.recordings, 2);
    assert_sane(&p);
    fprintf(stderr, "  (the totals table is expected next, at close)\n");
    vk_fixture_device_close(d);
}

/* DUET_VK_PROFILE other than 0/1; the API on a CPU device; a device whose
 * queue has no timestamps (its caps forced to 0). */
static void test_errors(void **state)
{
    (void)state;
    duet_device *d = NULL;
    setenv("DUET_VK_PROFILE", "yes", 1);
    duet_status rc = duet_vulkan_device_create(-1, NULL, 1, &d);
    unsetenv("DUET_VK_PROFILE");
    assert_int_equal(rc, DUET_ERR_INVALID_ARG);
    assert_null(d);
    const char *msg = duet_last_error();
    if (!strstr(msg, "DUET_VK_PROFILE") || !strstr(msg, "'yes'") || !strstr(msg, "0") ||
        !strstr(msg, "1"))
        fail_msg("message: %s", msg);
    setenv("DUET_VK_PROFILE", "0", 1);
    d = vk_fixture_device(NULL, NULL);
    unsetenv("DUET_VK_PROFILE");

    duet_device *cpu = NULL;
    duet_device_options o = {.n_threads = 1};
    assert_int_equal(duet_cpu_device_create(&o, &cpu), DUET_OK);
    assert_int_equal(duet_vulkan_profile_enable(cpu, 1), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "not a Vulkan device"));
    duet_vulkan_profile_reset(cpu);
    int n = -1;
    duet_vulkan_profile_totals t = {.recordings = 9};
    assert_int_equal(duet_vulkan_profile_read(cpu, NULL, 0, &n, &t), DUET_ERR_INVALID_ARG);
    assert_int_equal(n, 0);
    assert_int_equal(t.recordings, 0);
    duet_device_close(cpu);

    vk_ctx *c = d->ctx;
    uint32_t bits = c->caps.timestamp_bits;
    c->caps.timestamp_bits = 0;
    assert_int_equal(duet_vulkan_profile_enable(d, 1), DUET_ERR_UNSUPPORTED);
    msg = duet_last_error();
    if (!strstr(msg, c->caps.name) || !strstr(msg, "timestampValidBits 0"))
        fail_msg("message: %s", msg);
    assert_int_equal(duet_vulkan_profile_enable(d, 0), DUET_OK);
    c->caps.timestamp_bits = bits;
    record(d, 0, 1, 0);
    assert_int_equal(read_profile(d).n, 0);
    vk_fixture_device_close(d);
}

int main(void)
{
    if (!getenv("DUET_VK_VALIDATION"))
        setenv("DUET_VK_VALIDATION", "1", 1);
    unsetenv("DUET_VK_PROFILE");
    duet_device *probe = NULL;
    if (duet_vulkan_device_create(-1, NULL, 1, &probe) != DUET_OK) {
        fprintf(stderr, "test_vulkan_profile: skipped: %s\n", duet_last_error());
        return 77;
    }
    const vk_caps *caps = &((const vk_ctx *)probe->ctx)->caps;
    fprintf(stderr, "test_vulkan_profile: %s: timestampValidBits %u (queue family %u), "
                    "timestampPeriod %g ns\n",
            caps->name, caps->timestamp_bits, caps->queue_family, (double)caps->timestamp_period);
    int no_timestamps = caps->timestamp_bits == 0;
    duet_device_close(probe);
    if (no_timestamps) {
        fprintf(stderr, "test_vulkan_profile: skipped: the device's compute queue has no "
                        "timestamps\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_per_kind),
        cmocka_unit_test(test_disabled_counts_nothing),
        cmocka_unit_test(test_long_recording_from_env),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
