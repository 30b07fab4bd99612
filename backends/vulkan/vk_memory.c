/*
 * vk_memory.c — device buffers (chunked, see vk_internal.h), synchronous
 * host <-> device copies, and binding a byte range of a buffer as one
 * storage-buffer descriptor.
 */
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "vk_internal.h"

duet_status duet_vk_raw_buffer(vk_ctx *c, uint64_t size, uint32_t mem_type, VkBuffer *buf,
                               VkDeviceMemory *mem, void **map)
{
    *buf = VK_NULL_HANDLE;
    *mem = VK_NULL_HANDLE;
    if (map)
        *map = NULL;
    VkBufferCreateInfo bci = {
        .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
        .size = (size + 15) & ~(uint64_t)15, /* descriptor ranges round up to words */
        .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                 VK_BUFFER_USAGE_TRANSFER_DST_BIT,
        .sharingMode = VK_SHARING_MODE_EXCLUSIVE,
    };
    VkResult vr = c->fd.vkCreateBuffer(c->dev, &bci, NULL, buf);
    if (vr != VK_SUCCESS) {
        *buf = VK_NULL_HANDLE;
        return duet_error(duet_vk_status(vr), "Vulkan: vkCreateBuffer of %llu bytes: %s",
                          (unsigned long long)size, duet_vk_result_name(vr));
    }
    VkMemoryRequirements req;
    c->fd.vkGetBufferMemoryRequirements(c->dev, *buf, &req);
    if (!(req.memoryTypeBits & (1u << mem_type))) {
        duet_vk_raw_buffer_free(c, *buf, VK_NULL_HANDLE);
        *buf = VK_NULL_HANDLE;
        return duet_error(DUET_ERR_UNSUPPORTED, "Vulkan: memory type %u cannot hold a buffer",
                          mem_type);
    }
    VkMemoryAllocateInfo mai = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
        .allocationSize = req.size,
        .memoryTypeIndex = mem_type,
    };
    /* DUET_VK_FAULT=oom[:N] (tests): allocations after the first N fail. */
    if (c->fault.kind == VK_FAULT_OOM && atomic_fetch_add(&c->n_allocs, 1) >= c->fault.n)
        vr = VK_ERROR_OUT_OF_DEVICE_MEMORY;
    else
        vr = c->fd.vkAllocateMemory(c->dev, &mai, NULL, mem);
    if (vr == VK_SUCCESS)
        vr = c->fd.vkBindBufferMemory(c->dev, *buf, *mem, 0);
    if (vr == VK_SUCCESS && map)
        vr = c->fd.vkMapMemory(c->dev, *mem, 0, VK_WHOLE_SIZE, 0, map);
    if (vr != VK_SUCCESS) {
        duet_vk_raw_buffer_free(c, *buf, *mem);
        *buf = VK_NULL_HANDLE;
        *mem = VK_NULL_HANDLE;
        if (vr == VK_ERROR_DEVICE_LOST)
            atomic_store(&c->lost, 1);
        return duet_error(duet_vk_status(vr),
                          "Vulkan: allocating %llu bytes of %s memory (type %u) on %s: %s",
                          (unsigned long long)req.size,
                          mem_type == c->mem_device ? "device-local" : "host-visible", mem_type,
                          c->caps.name, duet_vk_result_name(vr));
    }
    return DUET_OK;
}

void duet_vk_raw_buffer_free(vk_ctx *c, VkBuffer buf, VkDeviceMemory mem)
{
    if (buf)
        c->fd.vkDestroyBuffer(c->dev, buf, NULL);
    if (mem)
        c->fd.vkFreeMemory(c->dev, mem, NULL); /* implicitly unmaps */
}

duet_status duet_vk_buffer_alloc(void *ctx, size_t size, duet_buffer **out)
{
    vk_ctx *c = ctx;
    *out = NULL;
    duet_status rc = duet_vk_check_lost(c, "allocating a buffer");
    if (rc)
        return rc;
    /* Say so before asking the driver: a buffer larger than the heap fails
     * anyway, often after a long wait or with a less helpful error. */
    if (size > c->device_heap_bytes)
        return duet_error(DUET_ERR_OUT_OF_MEMORY,
                          "Vulkan: a buffer of %zu bytes is larger than the device-local heap "
                          "of %s (%llu bytes)",
                          size, c->caps.name, (unsigned long long)c->device_heap_bytes);
    uint64_t stride = c->chunk_cap - c->halo;
    uint32_t n = 1;
    if (size > c->chunk_cap)
        n = 1 + (uint32_t)((size - c->chunk_cap + stride - 1) / stride);
    duet_buffer *b = calloc(1, sizeof *b + n * sizeof b->chunk[0]);
    if (!b)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "Vulkan: out of memory for a buffer");
    b->size = size;
    b->n_chunks = n;
    for (uint32_t i = 0; i < n; i++) {
        vk_chunk *ch = &b->chunk[i];
        ch->start = (uint64_t)i * stride;
        ch->size = size - ch->start < c->chunk_cap ? size - ch->start : c->chunk_cap;
        rc = duet_vk_raw_buffer(c, ch->size, c->mem_device, &ch->buf, &ch->mem,
                                c->device_mem_mapped ? &ch->map : NULL);
        if (rc) {
            duet_vk_buffer_free(c, b);
            return duet_error_wrap(rc, "Vulkan: buffer of %zu bytes (chunk %u of %u; heap of "
                                   "%llu bytes)",
                                   size, i + 1, n, (unsigned long long)c->device_heap_bytes);
        }
        atomic_fetch_add(&c->buffer_bytes, ch->size);
    }
    *out = b;
    return DUET_OK;
}

void duet_vk_buffer_free(void *ctx, duet_buffer *b)
{
    vk_ctx *c = ctx;
    if (!b)
        return;
    for (uint32_t i = 0; i < b->n_chunks; i++) {
        if (b->chunk[i].mem)
            atomic_fetch_sub(&c->buffer_bytes, b->chunk[i].size);
        duet_vk_raw_buffer_free(c, b->chunk[i].buf, b->chunk[i].mem);
    }
    free(b);
}

size_t duet_vk_buffer_size(void *ctx, const duet_buffer *b)
{
    (void)ctx;
    return b->size;
}

/* The chunk whose primary region holds byte `at` of b. */
static uint32_t primary_chunk(const vk_ctx *c, const duet_buffer *b, uint64_t at)
{
    uint64_t i = at / (c->chunk_cap - c->halo);
    return i < b->n_chunks ? (uint32_t)i : b->n_chunks - 1;
}

/* A synchronous copy through the sync stream's staging, a piece at a time,
 * between device memory at dev and the host: from `from` when it is not
 * NULL (a write), else into `to` (a read). */
static duet_status staged_copy(vk_ctx *c, duet_addr dev, const char *from, char *to, size_t n)
{
    duet_status rc = DUET_OK;
    pthread_mutex_lock(&c->sync_lock);
    for (size_t done = 0; done < n && rc == DUET_OK;) {
        size_t piece = n - done < VK_STAGING_BLOCK ? n - done : VK_STAGING_BLOCK;
        duet_addr at = {dev.buf, dev.offset + done};
        rc = duet_vk_stream_begin(c, c->sync);
        if (rc == DUET_OK)
            rc = from ? duet_vk_upload(c, c->sync, at, from + done, piece)
                      : duet_vk_download(c, c->sync, at, to + done, piece);
        if (rc == DUET_OK)
            rc = duet_vk_stream_submit(c, c->sync);
        if (rc == DUET_OK)
            rc = duet_vk_stream_wait(c, c->sync);
        done += piece;
    }
    pthread_mutex_unlock(&c->sync_lock);
    return rc;
}

duet_status duet_vk_buffer_write(void *ctx, duet_addr dst, const void *src, size_t n)
{
    vk_ctx *c = ctx;
    duet_status rc = duet_vk_check_lost(c, "buffer_write");
    if (rc)
        return rc;
    if (c->device_mem_mapped) {
        /* Every copy of every byte (chunks overlap). */
        const duet_buffer *b = dst.buf;
        uint64_t lo = dst.offset, hi = dst.offset + n;
        for (uint32_t i = 0; i < b->n_chunks; i++) {
            const vk_chunk *ch = &b->chunk[i];
            uint64_t a = lo > ch->start ? lo : ch->start;
            uint64_t e = hi < ch->start + ch->size ? hi : ch->start + ch->size;
            if (a < e)
                memcpy((char *)ch->map + (a - ch->start), (const char *)src + (a - lo), e - a);
        }
        return DUET_OK;
    }
    return staged_copy(c, dst, src, NULL, n);
}

duet_status duet_vk_buffer_read(void *ctx, duet_addr src, void *dst, size_t n)
{
    vk_ctx *c = ctx;
    duet_status rc = duet_vk_check_lost(c, "buffer_read");
    if (rc)
        return rc;
    if (c->device_mem_mapped) {
        const duet_buffer *b = src.buf;
        for (size_t done = 0; done < n;) {
            uint64_t at = src.offset + done;
            const vk_chunk *ch = &b->chunk[primary_chunk(c, b, at)];
            uint64_t end = ch->start + ch->size;
            size_t piece = n - done < end - at ? n - done : (size_t)(end - at);
            memcpy((char *)dst + done, (const char *)ch->map + (at - ch->start), piece);
            done += piece;
        }
        return DUET_OK;
    }
    return staged_copy(c, src, NULL, dst, n);
}

uint64_t duet_vk_max_bind(const vk_ctx *c)
{
    uint64_t slack = c->caps.min_storage_align > 16 ? c->caps.min_storage_align : 16;
    return c->halo - slack;
}

duet_status duet_vk_bind_range(vk_ctx *c, const char *op, const char *name, duet_addr a,
                               uint64_t lo, uint64_t hi, vk_binding *out, uint32_t *residual)
{
    const duet_buffer *b = a.buf;
    uint64_t start = a.offset + lo, end = a.offset + hi;
    if (end <= start)
        end = start + 4; /* an empty operand still needs a valid descriptor */
    const vk_chunk *ch = &b->chunk[primary_chunk(c, b, start)];
    uint64_t align = c->caps.min_storage_align ? c->caps.min_storage_align : 1;
    uint64_t off = (start - ch->start) / align * align;
    uint64_t range = (end - ch->start - off + 3) & ~(uint64_t)3;
    uint64_t room = ((ch->size + 15) & ~(uint64_t)15) - off;
    if (range > room)
        range = room;
    if (end > ch->start + ch->size || range > c->caps.max_storage_range)
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "%s: operand '%s' spans %llu bytes; this device binds at most %llu "
                          "(maxStorageBufferRange of %s)",
                          op, name, (unsigned long long)(end - start),
                          (unsigned long long)duet_vk_max_bind(c), c->caps.name);
    out->buf = ch->buf;
    out->offset = off;
    out->range = range;
    *residual = (uint32_t)(start - ch->start - off);
    return DUET_OK;
}
