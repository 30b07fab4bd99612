/*
 * vk_bench.c — the device's own copy bandwidth, the ceiling that decode
 * benchmarks are measured against: a memory-bound step can at best read
 * its bytes at the rate the copy engine or shaders move device-local
 * memory. Timed on the host from submit to fence over many large copies in
 * one command buffer, so the submission latency (tens of µs) is small next
 * to the copies (milliseconds).
 */
#include <time.h>

#include "error.h"
#include "vk_internal.h"

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Record `copies` copies alternating a -> b and b -> a, each ordered after
 * the last by a barrier (the first after earlier submissions): dependent
 * passes over memory, as a step's layers are. */
static duet_status record_copies(vk_ctx *c, duet_stream *s, VkBuffer a, VkBuffer b,
                                 uint64_t bytes, int copies)
{
    duet_status rc = duet_vk_stream_begin(c, s);
    if (rc)
        return rc;
    VkBufferCopy region = {.srcOffset = 0, .dstOffset = 0, .size = bytes};
    VkMemoryBarrier mb = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
    };
    for (int i = 0; i < copies; i++) {
        c->fd.vkCmdPipelineBarrier(s->cb, VK_PIPELINE_STAGE_TRANSFER_BIT,
                                   VK_PIPELINE_STAGE_TRANSFER_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
        c->fd.vkCmdCopyBuffer(s->cb, i % 2 ? b : a, i % 2 ? a : b, 1, &region);
    }
    return DUET_OK;
}

duet_status duet_vulkan_copy_bandwidth(duet_device *d, uint64_t bytes, int copies, int repeat,
                                       uint64_t *bytes_used, double *gbps)
{
    if (!d || d->ops != &duet_vk_ops)
        return duet_error(DUET_ERR_INVALID_ARG, "bandwidth: the device is not a Vulkan device");
    if (copies < 1 || repeat < 1 || bytes < 4096)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "bandwidth: copies %d and repeat %d must be >= 1, bytes %llu >= 4096",
                          copies, repeat, (unsigned long long)bytes);
    vk_ctx *c = d->ctx;
    if (bytes > c->chunk_cap)
        bytes = c->chunk_cap; /* one VkBuffer each, no chunking */
    bytes &= ~(uint64_t)4095;
    *bytes_used = bytes;
    duet_buffer *a = NULL, *b = NULL;
    duet_stream *s = NULL;
    duet_status rc;
    if ((rc = duet_vk_buffer_alloc(c, bytes, &a)) || (rc = duet_vk_buffer_alloc(c, bytes, &b)))
        goto out_free;
    if ((rc = duet_vk_stream_create(c, &s)))
        goto out_free;
    /* Fill the source with a pattern (not zeros: a driver may compress or
     * skip cleared pages), then one untimed copy to wake the clocks. */
    rc = duet_vk_stream_begin(c, s);
    if (rc == DUET_OK) {
        c->fd.vkCmdFillBuffer(s->cb, a->chunk[0].buf, 0, bytes, 0x5a3cc3a5u);
        rc = duet_vk_stream_submit(c, s);
    }
    if (rc == DUET_OK)
        rc = duet_vk_stream_wait(c, s);
    if (rc == DUET_OK && !(rc = record_copies(c, s, a->chunk[0].buf, b->chunk[0].buf, bytes, 1)))
        if (!(rc = duet_vk_stream_submit(c, s)))
            rc = duet_vk_stream_wait(c, s);
    for (int r = 0; r < repeat && rc == DUET_OK; r++) {
        if ((rc = record_copies(c, s, a->chunk[0].buf, b->chunk[0].buf, bytes, copies)))
            break;
        double t0 = now_s();
        if ((rc = duet_vk_stream_submit(c, s)) || (rc = duet_vk_stream_wait(c, s)))
            break;
        double dt = now_s() - t0;
        gbps[r] = 2.0 * (double)bytes * copies / (dt > 1e-9 ? dt : 1e-9) / 1e9;
    }
out_free:
    duet_vk_stream_destroy(c, s);
    duet_vk_buffer_free(c, b);
    duet_vk_buffer_free(c, a);
    return rc;
}
