/*
 * vk_profile.c — GPU timestamps per command, to show where a step's time
 * goes (matmuls, attention, norms, transfers). Enabled by DUET_VK_PROFILE=1
 * at device creation or duet_vulkan_profile_enable; off, a recording writes
 * nothing and has no query pool.
 *
 * A profiled recording writes a timestamp (vkCmdWriteTimestamp, bottom of
 * pipe: when every earlier command has finished) at its start and after
 * each command it records. Each stream owns its query pools: pool i holds
 * VK_PROF_POOL << i queries, created the first time a recording needs it
 * and reset by vkCmdResetQueryPool in the command buffer before its first
 * write (no hostQueryReset needed), so a recording of any length fits and
 * a short one touches only pool 0. When the submission has completed, the
 * stream reads the stamps (64-bit, masked to timestampValidBits) and adds
 * each stamp minus the one before to the kind of the command it follows.
 * Commands without a barrier between them can run at the same time: a
 * stamp then includes the overlap, charged to the later command, so the
 * split is approximate (exact where a barrier separates the commands),
 * and the sum of the kinds is the span from the first stamp to the last.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "vk_internal.h"

/* Stamp 0 of a recording: its start, charged to no kind. */
enum { KIND_START = VK_PROF_KINDS };
_Static_assert(KIND_START <= 255, "profile kinds are stored as uint8_t");

static const char *kind_name(int kind)
{
    if (kind == VK_PROF_UPLOAD)
        return "upload";
    if (kind == VK_PROF_DOWNLOAD)
        return "download";
    return duet_vk_shader_name((vk_shader)kind);
}

/* Turn profiling on or off for recordings begun from now on. */
static duet_status profile_set(vk_ctx *c, int on)
{
    if (on && (c->caps.timestamp_bits == 0 || !(c->caps.timestamp_period > 0.0f)))
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "Vulkan: profiling needs GPU timestamps; %s reports "
                          "timestampValidBits %u on its compute queue (family %u) and "
                          "timestampPeriod %g",
                          c->caps.name, c->caps.timestamp_bits, c->caps.queue_family,
                          (double)c->caps.timestamp_period);
    if (on && (!c->prof.vkCreateQueryPool || !c->prof.vkDestroyQueryPool ||
               !c->prof.vkCmdResetQueryPool || !c->prof.vkCmdWriteTimestamp ||
               !c->prof.vkGetQueryPoolResults))
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "Vulkan: profiling: %s lacks the query pool entry points", c->caps.name);
    atomic_store(&c->prof.on, on != 0);
    return DUET_OK;
}

duet_status duet_vk_profile_init(vk_ctx *c, const char *env)
{
    int on = 0;
    if (env && strcmp(env, "1") == 0)
        on = 1;
    else if (env && strcmp(env, "0") != 0)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "DUET_VK_PROFILE='%s': expected 0 (off, the default) or 1 (GPU "
                          "timestamps per command, totals printed when the device closes)",
                          env);
#define LOAD(name) c->prof.name = (PFN_##name)c->fi.vkGetDeviceProcAddr(c->dev, #name)
    LOAD(vkCreateQueryPool);
    LOAD(vkDestroyQueryPool);
    LOAD(vkCmdResetQueryPool);
    LOAD(vkCmdWriteTimestamp);
    LOAD(vkGetQueryPoolResults);
#undef LOAD
    c->prof.env = on;
    return on ? profile_set(c, 1) : DUET_OK;
}

duet_status duet_vk_profile_begin(vk_ctx *c, duet_stream *s)
{
    s->prof.n_stamps = 0;
    s->prof.on = atomic_load(&c->prof.on);
    return duet_vk_profile_stamp(c, s, KIND_START);
}

duet_status duet_vk_profile_stamp(vk_ctx *c, duet_stream *s, int kind)
{
    if (!s->prof.on)
        return DUET_OK;
    /* Which pool and query: pool i starts at VK_PROF_POOL * (2^i - 1). */
    uint32_t j = (uint32_t)s->prof.n_stamps, first = 0, size = VK_PROF_POOL;
    int i = 0;
    while (j >= first + size) {
        first += size;
        size *= 2;
        if (++i == VK_PROF_MAX_POOLS)
            return duet_error(DUET_ERR_UNSUPPORTED,
                              "Vulkan: profiling: a recording of more than %u commands", first);
    }
    if (!s->prof.pools[i]) {
        VkQueryPoolCreateInfo qci = {
            .sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
            .queryType = VK_QUERY_TYPE_TIMESTAMP,
            .queryCount = size,
        };
        duet_status rc = duet_vk_check(
            c, c->prof.vkCreateQueryPool(c->dev, &qci, NULL, &s->prof.pools[i]),
            "profiling: creating a timestamp query pool");
        if (rc) {
            s->prof.pools[i] = VK_NULL_HANDLE;
            return rc;
        }
    }
    if (s->prof.n_stamps == s->prof.cap_stamps) {
        int cap = s->prof.cap_stamps ? 2 * s->prof.cap_stamps : VK_PROF_POOL;
        uint8_t *k = realloc(s->prof.kinds, (size_t)cap);
        if (!k)
            return duet_error(DUET_ERR_OUT_OF_MEMORY,
                              "Vulkan: profiling: out of memory for %d timestamps", cap);
        s->prof.kinds = k;
        s->prof.cap_stamps = cap;
    }
    /* Queries must be reset before they are written: the whole pool, in
     * this command buffer, before its first stamp of the recording. */
    if (j == first)
        c->prof.vkCmdResetQueryPool(s->cb, s->prof.pools[i], 0, size);
    c->prof.vkCmdWriteTimestamp(s->cb, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, s->prof.pools[i],
                                j - first);
    s->prof.kinds[s->prof.n_stamps++] = (uint8_t)kind;
    return DUET_OK;
}

duet_status duet_vk_profile_collect(vk_ctx *c, duet_stream *s)
{
    int n = s->prof.n_stamps;
    if (!s->prof.on || n < 2) {
        s->prof.on = 0;
        return DUET_OK;
    }
    s->prof.on = 0; /* once per submission */
    uint64_t *t = malloc(sizeof *t * (size_t)n);
    if (!t)
        return duet_error(DUET_ERR_OUT_OF_MEMORY,
                          "Vulkan: profiling: out of memory for %d timestamps", n);
    duet_status rc = DUET_OK;
    uint32_t first = 0, size = VK_PROF_POOL;
    for (int i = 0; first < (uint32_t)n && !rc; i++, first += size, size *= 2) {
        uint32_t count = (uint32_t)n - first < size ? (uint32_t)n - first : size;
        rc = duet_vk_check(c,
                           c->prof.vkGetQueryPoolResults(
                               c->dev, s->prof.pools[i], 0, count, sizeof *t * count, t + first,
                               sizeof *t, VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT),
                           "profiling: reading timestamps");
    }
    if (!rc) {
        uint32_t bits = c->caps.timestamp_bits;
        uint64_t mask = bits >= 64 ? UINT64_MAX : (UINT64_C(1) << bits) - 1;
        double period = c->caps.timestamp_period;
        /* Differences modulo the counter's width (it may wrap); a stamp
         * earlier than the one before (out of order) counts 0. */
        uint64_t span = (t[n - 1] - t[0]) & mask;
        pthread_mutex_lock(&c->prof.lock);
        for (int j = 1; j < n; j++) {
            uint64_t d = (t[j] - t[j - 1]) & mask;
            if (d > mask / 2)
                d = 0;
            c->prof.count[s->prof.kinds[j]]++;
            c->prof.ns[s->prof.kinds[j]] += (double)d * period;
        }
        c->prof.recordings++;
        c->prof.barriers += (uint64_t)s->n_barriers;
        c->prof.span_ns += (double)span * period;
        pthread_mutex_unlock(&c->prof.lock);
    }
    free(t);
    return rc;
}

void duet_vk_profile_stream_free(vk_ctx *c, duet_stream *s)
{
    for (int i = 0; i < VK_PROF_MAX_POOLS; i++)
        if (s->prof.pools[i])
            c->prof.vkDestroyQueryPool(c->dev, s->prof.pools[i], NULL);
    free(s->prof.kinds);
}

/* ---- the API (vulkan_backend.h) -------------------------------------------- */

static vk_ctx *vk_of(const duet_device *d)
{
    return d && d->ops == &duet_vk_ops ? d->ctx : NULL;
}

duet_status duet_vulkan_profile_enable(duet_device *d, int on)
{
    vk_ctx *c = vk_of(d);
    if (!c)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "duet_vulkan_profile_enable: the device is not a Vulkan device");
    return profile_set(c, on);
}

void duet_vulkan_profile_reset(duet_device *d)
{
    vk_ctx *c = vk_of(d);
    if (!c)
        return;
    pthread_mutex_lock(&c->prof.lock);
    memset(c->prof.count, 0, sizeof c->prof.count);
    memset(c->prof.ns, 0, sizeof c->prof.ns);
    c->prof.recordings = 0;
    c->prof.barriers = 0;
    c->prof.span_ns = 0;
    pthread_mutex_unlock(&c->prof.lock);
}

static int by_total_desc(const void *a, const void *b)
{
    const duet_vulkan_profile_entry *x = a, *y = b;
    if (x->total_us != y->total_us)
        return x->total_us < y->total_us ? 1 : -1;
    return strcmp(x->kind, y->kind);
}

/* The totals, by total descending; *n = the kinds seen. */
static void profile_read(vk_ctx *c, duet_vulkan_profile_entry *out, int cap, int *n,
                         duet_vulkan_profile_totals *totals)
{
    duet_vulkan_profile_entry all[VK_PROF_KINDS];
    int k = 0;
    pthread_mutex_lock(&c->prof.lock);
    for (int i = 0; i < VK_PROF_KINDS; i++)
        if (c->prof.count[i]) {
            snprintf(all[k].kind, sizeof all[k].kind, "%s", kind_name(i));
            all[k].count = c->prof.count[i];
            all[k].total_us = c->prof.ns[i] / 1e3;
            k++;
        }
    if (totals) {
        totals->enabled = atomic_load(&c->prof.on);
        totals->recordings = c->prof.recordings;
        totals->barriers = c->prof.barriers;
        totals->span_us = c->prof.span_ns / 1e3;
    }
    pthread_mutex_unlock(&c->prof.lock);
    qsort(all, (size_t)k, sizeof *all, by_total_desc);
    for (int i = 0; i < k && i < cap; i++)
        out[i] = all[i];
    *n = k;
}

duet_status duet_vulkan_profile_read(const duet_device *d, duet_vulkan_profile_entry *out,
                                     int cap, int *n, duet_vulkan_profile_totals *totals)
{
    vk_ctx *c = vk_of(d);
    *n = 0;
    if (totals)
        memset(totals, 0, sizeof *totals);
    if (!c)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "duet_vulkan_profile_read: the device is not a Vulkan device");
    profile_read(c, out, cap, n, totals);
    return DUET_OK;
}

void duet_vk_profile_report(vk_ctx *c)
{
    duet_vulkan_profile_entry e[VK_PROF_KINDS];
    duet_vulkan_profile_totals t;
    int n = 0;
    if (!c->prof.env)
        return;
    profile_read(c, e, VK_PROF_KINDS, &n, &t);
    if (t.recordings == 0)
        return;
    fprintf(stderr,
            "duet: Vulkan profile (DUET_VK_PROFILE=1) on %s: %llu recordings, %llu "
            "barriers, GPU span %.3f ms\n"
            "duet:   %-20s %10s %12s %8s %12s\n",
            c->caps.name, (unsigned long long)t.recordings, (unsigned long long)t.barriers,
            t.span_us / 1e3, "kind", "commands", "total ms", "share", "us/command");
    for (int i = 0; i < n; i++)
        fprintf(stderr, "duet:   %-20s %10llu %12.3f %7.1f%% %12.2f\n", e[i].kind,
                (unsigned long long)e[i].count, e[i].total_us / 1e3,
                t.span_us > 0 ? 100.0 * e[i].total_us / t.span_us : 0.0,
                e[i].total_us / (double)e[i].count);
    fprintf(stderr, "duet:   (a command's time: its end timestamp minus the previous one's; "
                    "approximate where commands overlap, exact where a barrier separates "
                    "them)\n");
}
