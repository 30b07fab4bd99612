/*
 * vk_stream.c — streams: one command buffer per recording, host-visible
 * staging for uploads (copied at record time, so the caller may reuse its
 * memory at once) and downloads (copied out when wait returns), descriptor
 * sets from per-stream pools reset at begin.
 *
 * Ordering inside a recording: every command declares the byte ranges it
 * reads and writes (descriptor ranges; which bindings a shader writes comes
 * from its SPIR-V). A barrier is recorded before a command only when it
 * reads a range written since the last barrier, or writes a range read or
 * written since — independent commands run back to back. Each barrier is a
 * full compute + transfer memory barrier, so everything before it is
 * ordered before everything after it and the tracked set starts empty.
 *
 * Ordering across recordings (device.h: streams run in submission order,
 * step N+1 sees step N's writes): with timeline semaphores every submission
 * waits for the previous submission's value on the device's timeline and
 * signals the next, and stream_wait waits for the stream's value. Without
 * them, the first command of a recording gets a barrier (its first scope
 * includes earlier submissions) and a fence per stream tells completion.
 *
 * Profiling (vk_profile.c): when enabled at begin, a timestamp after the
 * begin and after each command; read and added up at wait.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "vk_internal.h"

/* Block until the stream's last submission is done. */
/* Make *arr (of elem-byte items, capacity *cap) hold at least need items,
 * doubling from 16. */
static duet_status grow(void **arr, int *cap, int need, size_t elem, const char *what)
{
    if (need <= *cap)
        return DUET_OK;
    int c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *grown = realloc(*arr, (size_t)c * elem);
    if (!grown)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "Vulkan: out of memory %s (%d items)", what, c);
    *arr = grown;
    *cap = c;
    return DUET_OK;
}

static VkResult wait_done(vk_ctx *c, duet_stream *s)
{
    if (!c->timeline)
        return c->fd.vkWaitForFences(c->dev, 1, &s->fence, VK_TRUE, UINT64_MAX);
    VkSemaphoreWaitInfo wi = {
        .sType = VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO,
        .semaphoreCount = 1,
        .pSemaphores = &c->timeline,
        .pValues = &s->value,
    };
    return c->fs.vkWaitSemaphores(c->dev, &wi, UINT64_MAX);
}

duet_status duet_vk_stream_create(void *ctx, duet_stream **out)
{
    vk_ctx *c = ctx;
    duet_status rc;
    *out = NULL;
    duet_stream *s = calloc(1, sizeof *s);
    if (!s)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "Vulkan: out of memory for a stream");
    VkCommandPoolCreateInfo pci = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
        .flags = VK_COMMAND_POOL_CREATE_TRANSIENT_BIT,
        .queueFamilyIndex = c->caps.queue_family,
    };
    if ((rc = duet_vk_check(c, c->fd.vkCreateCommandPool(c->dev, &pci, NULL, &s->pool),
                            "creating a command pool")))
        goto out_free;
    VkCommandBufferAllocateInfo cai = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
        .commandPool = s->pool,
        .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
        .commandBufferCount = 1,
    };
    if ((rc = duet_vk_check(c, c->fd.vkAllocateCommandBuffers(c->dev, &cai, &s->cb),
                            "allocating a command buffer")))
        goto out_free;
    VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    if (!c->timeline &&
        (rc = duet_vk_check(c, c->fd.vkCreateFence(c->dev, &fci, NULL, &s->fence),
                            "creating a fence")))
        goto out_free;
    *out = s;
    return DUET_OK;

out_free:
    duet_vk_stream_destroy(c, s);
    return rc;
}

void duet_vk_stream_destroy(void *ctx, duet_stream *s)
{
    vk_ctx *c = ctx;
    if (!s)
        return;
    if (s->state == VK_STREAM_SUBMITTED)
        wait_done(c, s); /* returns at once on a lost device */
    for (int i = 0; i < s->n_staging; i++)
        duet_vk_raw_buffer_free(c, s->staging[i].buf, s->staging[i].mem);
    for (int i = 0; i < s->n_dpools; i++)
        c->fd.vkDestroyDescriptorPool(c->dev, s->dpools[i], NULL);
    if (s->fence)
        c->fd.vkDestroyFence(c->dev, s->fence, NULL);
    if (s->pool)
        c->fd.vkDestroyCommandPool(c->dev, s->pool, NULL); /* frees cb */
    duet_vk_profile_stream_free(c, s);
    free(s->staging);
    free(s->dpools);
    free(s->downloads);
    free(s->pending);
    free(s);
}

duet_status duet_vk_stream_begin(void *ctx, duet_stream *s)
{
    vk_ctx *c = ctx;
    duet_status rc = duet_vk_check_lost(c, "stream_begin");
    if (rc)
        return rc;
    /* A begin while the last submission runs waits for it (as on the CPU). */
    if (s->state == VK_STREAM_SUBMITTED && (rc = duet_vk_stream_wait(c, s)))
        return rc;
    if (s->state == VK_STREAM_RECORDING)
        c->fd.vkEndCommandBuffer(s->cb); /* abandon the unfinished recording */
    s->state = VK_STREAM_IDLE;
    if ((rc = duet_vk_check(c, c->fd.vkResetCommandPool(c->dev, s->pool, 0),
                            "resetting a command pool")))
        return rc;
    for (int i = 0; i < s->n_dpools; i++)
        c->fd.vkResetDescriptorPool(c->dev, s->dpools[i], 0);
    s->cur_dpool = 0;
    s->sets_in_cur = 0;
    for (int i = 0; i < s->n_staging; i++)
        s->staging[i].used = 0;
    s->n_downloads = 0;
    s->n_commands = 0;
    s->n_barriers = 0;
    s->n_pending = 0;
    s->need_barrier = !c->timeline; /* the fence path orders submissions by barrier */
    VkCommandBufferBeginInfo bi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
        .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT,
    };
    if ((rc = duet_vk_check(c, c->fd.vkBeginCommandBuffer(s->cb, &bi),
                            "beginning a command buffer")))
        return rc;
    s->state = VK_STREAM_RECORDING;
    return duet_vk_profile_begin(c, s); /* the start timestamp, when profiling */
}

static duet_status require_recording(vk_ctx *c, const duet_stream *s, const char *what)
{
    duet_status rc = duet_vk_check_lost(c, what);
    if (rc)
        return rc;
    if (s->state != VK_STREAM_RECORDING)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "Vulkan: recording into a stream outside stream_begin..stream_submit");
    return DUET_OK;
}

/* Does [lo, hi) of buf, read (or written), conflict with a command
 * recorded since the last barrier? */
static int conflicts(const duet_stream *s, const vk_access *a)
{
    for (int i = 0; i < s->n_pending; i++) {
        const vk_access *p = &s->pending[i];
        if (p->buf == a->buf && p->lo < a->hi && a->lo < p->hi && (p->write || a->write))
            return 1;
    }
    return 0;
}

/* Called before recording a command that makes accesses acc[0..n): a full
 * barrier if it conflicts with the tracked set (then the set starts over),
 * and its accesses join the set. */
static duet_status order_command(vk_ctx *c, duet_stream *s, const vk_access *acc, int n)
{
    int hazard = s->need_barrier;
    for (int i = 0; i < n && !hazard; i++)
        hazard = conflicts(s, &acc[i]);
    if (hazard) {
        VkMemoryBarrier mb = {
            .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
            .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
            .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                             VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
        };
        VkPipelineStageFlags st =
            VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
        c->fd.vkCmdPipelineBarrier(s->cb, st, st, 0, 1, &mb, 0, NULL, 0, NULL);
        s->n_barriers++;
        s->n_pending = 0;
        s->need_barrier = 0;
    }
    duet_status rc = grow((void **)&s->pending, &s->cap_pending, s->n_pending + n,
                          sizeof *s->pending, "tracking hazards");
    if (rc)
        return rc;
    memcpy(s->pending + s->n_pending, acc, (size_t)n * sizeof *acc);
    s->n_pending += n;
    s->n_commands++;
    return DUET_OK;
}

static vk_access access_of(VkBuffer buf, VkDeviceSize offset, VkDeviceSize range, int write)
{
    VkDeviceSize hi = range == VK_WHOLE_SIZE || offset + range < offset ? UINT64_MAX
                                                                        : offset + range;
    return (vk_access){buf, offset, hi, write};
}

duet_status duet_vk_stream_submit(void *ctx, duet_stream *s)
{
    vk_ctx *c = ctx;
    duet_status rc = duet_vk_check_lost(c, "stream_submit");
    if (rc)
        return rc;
    if (s->state != VK_STREAM_RECORDING)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "Vulkan: stream_submit without a stream_begin since the last submit");
    /* Make every device write visible to the host reading staging. */
    VkMemoryBarrier mb = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_HOST_READ_BIT,
    };
    c->fd.vkCmdPipelineBarrier(s->cb,
                               VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                               VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
    s->state = VK_STREAM_IDLE;
    if ((rc = duet_vk_check(c, c->fd.vkEndCommandBuffer(s->cb),
                            "ending a command buffer")))
        return rc;
    if (c->stats)
        fprintf(stderr, "duet: Vulkan stream: %d commands, %d barriers\n", s->n_commands,
                s->n_barriers);
    if (!c->timeline &&
        (rc = duet_vk_check(c, c->fd.vkResetFences(c->dev, 1, &s->fence),
                            "resetting a fence")))
        return rc;
    VkPipelineStageFlags wait_stages =
        VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
    VkTimelineSemaphoreSubmitInfo tsi = {
        .sType = VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO,
        .waitSemaphoreValueCount = 1,
        .signalSemaphoreValueCount = 1,
    };
    VkSubmitInfo si = {
        .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
        .commandBufferCount = 1,
        .pCommandBuffers = &s->cb,
    };
    if (c->timeline) {
        si.pNext = &tsi;
        si.waitSemaphoreCount = 1;
        si.pWaitSemaphores = &c->timeline;
        si.pWaitDstStageMask = &wait_stages;
        si.signalSemaphoreCount = 1;
        si.pSignalSemaphores = &c->timeline;
    }
    pthread_mutex_lock(&c->queue_lock);
    /* Wait for the previous submission (a full memory dependency into
     * compute and transfer) and signal the next value: the order device.h
     * promises, without a barrier at the start of each recording. */
    uint64_t prev = c->submitted, value = c->submitted + 1;
    tsi.pWaitSemaphoreValues = &prev;
    tsi.pSignalSemaphoreValues = &value;
    VkResult vr;
    /* DUET_VK_FAULT=device_lost_after:N (tests): submission N + 1 finds the
     * device lost; nothing reaches the driver, so nothing waits forever. */
    if (c->fault.kind == VK_FAULT_DEVICE_LOST &&
        atomic_fetch_add(&c->n_submits, 1) >= c->fault.n)
        vr = VK_ERROR_DEVICE_LOST;
    else
        vr = c->fd.vkQueueSubmit(c->queue, 1, &si, c->timeline ? VK_NULL_HANDLE : s->fence);
    if (vr == VK_SUCCESS)
        c->submitted = value;
    pthread_mutex_unlock(&c->queue_lock);
    if ((rc = duet_vk_check(c, vr, "submitting a stream")))
        return rc;
    s->value = value;
    s->state = VK_STREAM_SUBMITTED;
    return DUET_OK;
}

duet_status duet_vk_stream_wait(void *ctx, duet_stream *s)
{
    vk_ctx *c = ctx;
    if (s->state != VK_STREAM_SUBMITTED)
        return duet_vk_check_lost(c, "stream_wait");
    VkResult vr = wait_done(c, s);
    s->state = VK_STREAM_IDLE;
    duet_status rc = duet_vk_check(c, vr, "waiting for a stream");
    /* A device lost since the submission (found by another call): the
     * results cannot be trusted. */
    if (rc || (rc = duet_vk_check_lost(c, "stream_wait")))
        return rc;
    for (int i = 0; i < s->n_downloads; i++)
        memcpy(s->downloads[i].dst, s->downloads[i].src, s->downloads[i].n);
    s->n_downloads = 0;
    return duet_vk_profile_collect(c, s);
}

duet_status duet_vk_stream_scratch(vk_ctx *c, duet_stream *s, size_t n, vk_binding *binding,
                                   void **host)
{
    size_t align = c->caps.min_storage_align > 16 ? c->caps.min_storage_align : 16;
    vk_staging *st = NULL;
    size_t at = 0;
    for (int i = 0; i < s->n_staging && !st; i++) {
        at = (s->staging[i].used + align - 1) / align * align;
        if (at + n <= s->staging[i].size)
            st = &s->staging[i];
    }
    if (!st) {
        duet_status grc = grow((void **)&s->staging, &s->cap_staging, s->n_staging + 1,
                               sizeof *s->staging, "for staging");
        if (grc)
            return grc;
        st = &s->staging[s->n_staging];
        memset(st, 0, sizeof *st);
        st->size = n > VK_STAGING_BLOCK ? (n + align - 1) / align * align : VK_STAGING_BLOCK;
        void *map;
        duet_status rc = duet_vk_raw_buffer(c, st->size, c->mem_host, &st->buf, &st->mem, &map);
        if (rc)
            return duet_error_wrap(rc, "Vulkan: staging for %zu bytes", n);
        st->map = map;
        s->n_staging++;
        at = 0;
    }
    st->used = at + n;
    binding->buf = st->buf;
    binding->offset = at;
    binding->range = (n + 3) & ~(size_t)3;
    *host = st->map + at;
    return DUET_OK;
}

/* Copy src into staging, then into every chunk copy of [dst, dst + n). */
duet_status duet_vk_upload(void *ctx, duet_stream *s, duet_addr dst, const void *src, size_t n)
{
    vk_ctx *c = ctx;
    duet_status rc = require_recording(c, s, "upload");
    vk_binding st;
    void *host;
    if (rc || (rc = duet_vk_stream_scratch(c, s, n, &st, &host)))
        return rc;
    memcpy(host, src, n);
    const duet_buffer *b = dst.buf;
    uint64_t lo = dst.offset, hi = dst.offset + n;
    /* One copy per chunk holding part of the range (chunks overlap). */
    for (uint32_t i = 0; i < b->n_chunks; i++) {
        const vk_chunk *ch = &b->chunk[i];
        uint64_t a = lo > ch->start ? lo : ch->start;
        uint64_t e = hi < ch->start + ch->size ? hi : ch->start + ch->size;
        if (a >= e)
            continue;
        VkBufferCopy r = {.srcOffset = st.offset + (a - lo), .dstOffset = a - ch->start,
                          .size = e - a};
        vk_access acc[2] = {access_of(st.buf, r.srcOffset, r.size, 0),
                            access_of(ch->buf, r.dstOffset, r.size, 1)};
        if ((rc = order_command(c, s, acc, 2)))
            return rc;
        c->fd.vkCmdCopyBuffer(s->cb, st.buf, ch->buf, 1, &r);
        if ((rc = duet_vk_profile_stamp(c, s, VK_PROF_UPLOAD)))
            return rc;
    }
    return DUET_OK;
}

duet_status duet_vk_download(void *ctx, duet_stream *s, duet_addr src, void *dst, size_t n)
{
    vk_ctx *c = ctx;
    duet_status rc = require_recording(c, s, "download");
    vk_binding st;
    void *host;
    if (rc || (rc = duet_vk_stream_scratch(c, s, n, &st, &host)))
        return rc;
    if ((rc = grow((void **)&s->downloads, &s->cap_downloads, s->n_downloads + 1,
                   sizeof *s->downloads, "for downloads")))
        return rc;
    const duet_buffer *b = src.buf;
    uint64_t stride = c->chunk_cap - c->halo;
    for (size_t done = 0; done < n;) {
        uint64_t at = src.offset + done;
        uint64_t i = at / stride;
        const vk_chunk *ch = &b->chunk[i < b->n_chunks ? i : b->n_chunks - 1];
        uint64_t end = ch->start + ch->size;
        size_t piece = n - done < end - at ? n - done : (size_t)(end - at);
        VkBufferCopy r = {.srcOffset = at - ch->start, .dstOffset = st.offset + done,
                          .size = piece};
        vk_access acc[2] = {access_of(ch->buf, r.srcOffset, piece, 0),
                            access_of(st.buf, r.dstOffset, piece, 1)};
        if ((rc = order_command(c, s, acc, 2)))
            return rc;
        c->fd.vkCmdCopyBuffer(s->cb, ch->buf, st.buf, 1, &r);
        if ((rc = duet_vk_profile_stamp(c, s, VK_PROF_DOWNLOAD)))
            return rc;
        done += piece;
    }
    s->downloads[s->n_downloads++] = (vk_download){dst, host, n};
    return DUET_OK;
}

/* A descriptor set from the stream's pools (a new pool when all are full). */
static duet_status alloc_set(vk_ctx *c, duet_stream *s, VkDescriptorSet *set)
{
    if (s->cur_dpool < s->n_dpools && s->sets_in_cur == VK_SETS_PER_POOL) {
        s->cur_dpool++;
        s->sets_in_cur = 0;
    }
    if (s->cur_dpool == s->n_dpools) {
        duet_status grc = grow((void **)&s->dpools, &s->cap_dpools, s->n_dpools + 1,
                               sizeof *s->dpools, "for pools");
        if (grc)
            return grc;
        VkDescriptorPoolSize size = {VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                     VK_SETS_PER_POOL * VK_MAX_BINDINGS};
        VkDescriptorPoolCreateInfo dpci = {
            .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
            .maxSets = VK_SETS_PER_POOL,
            .poolSizeCount = 1,
            .pPoolSizes = &size,
        };
        duet_status rc = duet_vk_check(
            c, c->fd.vkCreateDescriptorPool(c->dev, &dpci, NULL, &s->dpools[s->n_dpools]),
            "creating a descriptor pool");
        if (rc)
            return rc;
        s->n_dpools++;
        s->sets_in_cur = 0;
    }
    VkDescriptorSetAllocateInfo dsai = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
        .descriptorPool = s->dpools[s->cur_dpool],
        .descriptorSetCount = 1,
        .pSetLayouts = &c->set_layout,
    };
    s->sets_in_cur++;
    return duet_vk_check(c, c->fd.vkAllocateDescriptorSets(c->dev, &dsai, set),
                    "allocating a descriptor set");
}

duet_status duet_vk_dispatch(vk_ctx *c, duet_stream *s, vk_shader sh, uint32_t spec,
                             const vk_binding *b, int nb, const void *pc, uint32_t pc_size,
                             uint32_t gx, uint32_t gy, uint32_t gz)
{
    duet_status rc = require_recording(c, s, "recording an op");
    VkPipeline pipe;
    VkDescriptorSet set;
    if (rc || (rc = duet_vk_pipeline_get(c, sh, spec, &pipe)) || (rc = alloc_set(c, s, &set)))
        return rc;
    VkDescriptorBufferInfo info[VK_MAX_BINDINGS];
    VkWriteDescriptorSet w[VK_MAX_BINDINGS];
    for (int i = 0; i < VK_MAX_BINDINGS; i++) {
        if (i < nb)
            info[i] = (VkDescriptorBufferInfo){b[i].buf, b[i].offset, b[i].range};
        else
            info[i] = (VkDescriptorBufferInfo){c->dummy->chunk[0].buf, 0, VK_WHOLE_SIZE};
        w[i] = (VkWriteDescriptorSet){
            .sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
            .dstSet = set,
            .dstBinding = (uint32_t)i,
            .descriptorCount = 1,
            .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
            .pBufferInfo = &info[i],
        };
    }
    c->fd.vkUpdateDescriptorSets(c->dev, VK_MAX_BINDINGS, w, 0, NULL);
    /* What the shader declares, as bound (unused slots hold the dummy). */
    vk_access acc[VK_MAX_BINDINGS];
    int na = 0;
    for (int i = 0; i < VK_MAX_BINDINGS; i++)
        if (c->binds_used[sh] & (1u << i))
            acc[na++] = access_of(info[i].buffer, info[i].offset, info[i].range,
                                  (c->binds_written[sh] >> i) & 1);
    if ((rc = order_command(c, s, acc, na)))
        return rc;
    c->fd.vkCmdBindPipeline(s->cb, VK_PIPELINE_BIND_POINT_COMPUTE, pipe);
    c->fd.vkCmdBindDescriptorSets(s->cb, VK_PIPELINE_BIND_POINT_COMPUTE, c->pipe_layout, 0, 1,
                                  &set, 0, NULL);
    if (pc_size)
        c->fd.vkCmdPushConstants(s->cb, c->pipe_layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, pc_size,
                                 pc);
    c->fd.vkCmdDispatch(s->cb, gx, gy, gz);
    return duet_vk_profile_stamp(c, s, (int)sh);
}
