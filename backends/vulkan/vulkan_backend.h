/*
 * vulkan_backend.h — what the Vulkan backend offers beyond device.h:
 * listing devices (for `duet devices`), the validation-error count the
 * tests check, the copy bandwidth and the GPU timestamp profile. The constructor, duet_vulkan_device_create, is declared in
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

/* ---- GPU timestamp profile (docs/VULKAN.md "Profiling") ------------------
 * While enabled, every recording of every stream on d writes a GPU timestamp
 * at its start and one after each command (each dispatch; each copy of an
 * upload or download), and when the submission has completed (stream_wait,
 * or the next stream_begin) each command's time is its timestamp minus the
 * previous one, added to its kind: the shader's name ("matmul_vec",
 * "attention_split", ...; one kind per shader, not per variant), "upload"
 * or "download". Commands with no barrier between them may overlap on a
 * GPU; the overlap is charged to the later one, so the split is
 * approximate, exact where a barrier separates the commands. The totals
 * since the last reset are kept per device. Disabled (the default), nothing
 * is written. DUET_VK_PROFILE=1 at device creation enables it for the
 * device's life and prints the totals to stderr when it is closed. */

/* Profile recordings begun from now on (on != 0) or not (on == 0); a
 * recording already begun keeps its state. DUET_ERR_INVALID_ARG if d is not
 * a Vulkan device; DUET_ERR_UNSUPPORTED (naming the device) when its compute
 * queue has no timestamps (timestampValidBits 0). Disabling never fails on a
 * Vulkan device. */
duet_status duet_vulkan_profile_enable(duet_device *d, int on);

/* Forget the totals (kinds, recordings, span). No-op if d is not a Vulkan
 * device. A submission still running adds to the new totals when it
 * completes. */
void duet_vulkan_profile_reset(duet_device *d);

typedef struct duet_vulkan_profile_entry {
    char kind[32];   /* shader name, "upload" or "download" */
    uint64_t count;  /* commands of this kind */
    double total_us; /* their summed times (see above) */
} duet_vulkan_profile_entry;

typedef struct duet_vulkan_profile_totals {
    int enabled;         /* profiling is on now (for recordings begun from now) */
    uint64_t recordings; /* profiled recordings completed */
    uint64_t barriers;   /* the hazard barriers recorded in them (docs/VULKAN.md) */
    double span_us;      /* summed first-to-last timestamp of each (GPU time) */
} duet_vulkan_profile_totals;

/* Fill out[0..cap) with the kinds seen since the last reset, by total_us
 * descending, set *n to how many there are (may exceed cap) and *totals.
 * out may be NULL when cap is 0. DUET_ERR_INVALID_ARG if d is not a Vulkan
 * device (*n = 0 then). */
duet_status duet_vulkan_profile_read(const duet_device *d, duet_vulkan_profile_entry *out,
                                     int cap, int *n /* OUT */,
                                     duet_vulkan_profile_totals *totals /* OUT */);

#endif
