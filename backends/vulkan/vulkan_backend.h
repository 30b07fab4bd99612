/*
 * vulkan_backend.h — what the Vulkan backend offers beyond device.h:
 * listing devices (for `duet devices`) and the validation-error count the
 * tests check. The constructor, duet_vulkan_device_create, is declared in
 * backends/device.h.
 */
#ifndef DUET_VULKAN_BACKEND_H
#define DUET_VULKAN_BACKEND_H

#include <stdint.h>

#include "device.h"

typedef struct duet_vulkan_device_desc {
    int index;             /* the N of --device vulkan:N */
    char name[256];
    char type[16];         /* "discrete", "integrated", "virtual", "cpu", "other" */
    uint64_t mem_bytes;    /* device-local heap(s) */
    uint64_t max_storage_range, max_alloc;
    uint32_t max_shared, subgroup_size;
    char features[160];    /* "fp16 int8 storage16 storage8 subgroup-arith int-dot coopmat" */
    int usable;            /* 0: no Vulkan 1.2 or no compute queue */
    int preferred;         /* 1 for the device `--device vulkan` picks */
} duet_vulkan_device_desc;

/* Fill out[0..cap) with the Vulkan devices and set *n to how many exist
 * (may exceed cap). DUET_ERR_UNSUPPORTED "Vulkan: not available (...)"
 * when there is no loader or driver; *n = 0 then. */
duet_status duet_vulkan_list_devices(duet_vulkan_device_desc *out, int cap, int *n);

/* Validation messages (errors and warnings) the Khronos validation layer
 * reported on d since it was opened; d must be a Vulkan device opened with
 * DUET_VK_VALIDATION=1 in the environment (else always 0). -1 if d is not
 * a Vulkan device. */
int duet_vulkan_validation_errors(const duet_device *d);

/* Device-local copy bandwidth (vk_bench.c, for `duet bench bandwidth`):
 * `copies` vkCmdCopyBuffer of `bytes` between two device-local buffers in
 * one submission, timed from submit to fence, `repeat` times after one
 * warm-up. gbps[i] = 2 * bytes * copies / seconds / 1e9 (bytes read plus
 * written, like a device-to-device copy in CUDA tools); gbps has repeat
 * entries. bytes is clamped to one allocation (*bytes_used gets the size
 * used). DUET_ERR_INVALID_ARG if d is not a Vulkan device. */
duet_status duet_vulkan_copy_bandwidth(duet_device *d, uint64_t bytes, int copies, int repeat,
                                       uint64_t *bytes_used /* OUT */, double *gbps /* OUT */);

#endif
