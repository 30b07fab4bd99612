/*
 * vk_internal.h — the Vulkan backend's shared structs (internal to
 * backends/vulkan; the runtime sees only device.h and vulkan_backend.h).
 *
 * Memory model. A duet_buffer is one or more chunks, each a VkBuffer with
 * its own VkDeviceMemory no larger than maxMemoryAllocationSize. A buffer
 * that fits one allocation is one chunk. A larger one (the mmap of a big
 * GGUF file) is cut into chunks that overlap by `halo` bytes (at least
 * maxStorageBufferRange), so any range an op can bind lies whole inside
 * one chunk: the chunk chosen by the range's start (vk_bind_range). Host
 * writes (buffer_write, upload) go to every copy; reads and shader writes
 * use the chosen chunk, so a shader-written range must always be bound
 * from the same start (true for the KV cache: per layer).
 *
 * Binding. Every op binds each operand as one storage-buffer descriptor of
 * at most maxStorageBufferRange bytes (128 MiB on lavapipe), starting at
 * an offset aligned down to minStorageBufferOffsetAlignment; the rest of
 * the offset reaches the shader as a push constant. Ops whose operands
 * can be larger (matmul and embed weights, elementwise ops) split into
 * several dispatches on the host.
 */
#ifndef DUET_VK_INTERNAL_H
#define DUET_VK_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "device.h"
#include "vk_loader.h"
#include "vulkan_backend.h"

enum {
    VK_MAX_BINDINGS = 8,     /* storage buffers per dispatch */
    VK_PUSH_BYTES = 128,     /* the push-constant size every device has */
    VK_SETS_PER_POOL = 256,  /* descriptor sets per stream pool */
    VK_STAGING_BLOCK = 16 << 20,
    VK_PROF_POOL = 256,      /* timestamps in a stream's first query pool (doubling) */
    VK_PROF_MAX_POOLS = 16,
};

/* Shaders, one per .comp file (names in vk_pipeline.c). */
typedef enum vk_shader {
    VK_SH_ADD,
    VK_SH_SWIGLU,
    VK_SH_RMS_NORM,
    VK_SH_RMS_NORM_ADD,
    VK_SH_GATHER_ROWS,
    VK_SH_EMBED,
    VK_SH_MATMUL,
    VK_SH_ROPE,
    VK_SH_KV_WRITE,
    VK_SH_ATTENTION,
    VK_SH_SAMPLE,
    VK_SH_MATMUL_VEC,
    VK_SH_MATMUL_QVEC,
    VK_SH_ATTENTION_SPLIT,
    VK_SH_ATTENTION_SPLIT_SG,
    VK_SH_ATTENTION_COMBINE,
    VK_SH_COUNT
} vk_shader;
/* Profile kinds (vk_profile.c): a dispatch's kind is its shader; then the
 * stream's transfer commands. */
enum { VK_PROF_UPLOAD = VK_SH_COUNT, VK_PROF_DOWNLOAD, VK_PROF_KINDS };
/* Pipeline variants per shader: spec % 32 is a type (constant 0), spec / 32
 * a kernel variant (constant 1; the matmuls: bit 0 per-output, bit 1
 * gated, bits 2-3 log2 of the weight rows per workgroup of matmul_vec /
 * matmul_qvec; split-K attention: log2 of the 64-key tiles per partition). */
enum { VK_SPEC_VALUES = 512 };

/* What a physical device reports (probed once; never enable more). */
typedef struct vk_caps {
    char name[VK_MAX_PHYSICAL_DEVICE_NAME_SIZE];
    VkPhysicalDeviceType type;
    uint32_t api_version, vendor_id, device_id, driver_version;
    uint8_t cache_uuid[VK_UUID_SIZE]; /* pipelineCacheUUID */
    uint64_t device_local_bytes;
    uint64_t max_storage_range;   /* maxStorageBufferRange */
    uint64_t max_alloc;           /* maxMemoryAllocationSize */
    uint64_t min_storage_align;   /* minStorageBufferOffsetAlignment */
    uint32_t max_shared;          /* maxComputeSharedMemorySize */
    uint32_t max_push;
    uint32_t max_groups[3];
    uint32_t max_storage_per_stage;
    uint32_t subgroup_size, subgroup_ops; /* VkSubgroupFeatureFlags */
    int subgroup_in_compute;
    int fp16, int8, storage16, storage8, float64;
    int int_dot, coop_matrix;     /* extensions/features reported */
    int per_output_matmul;        /* CPU-type: matmul variant 1 (no shared memory) */
    int vec_matmul;               /* GPUs with subgroup arithmetic: matmul_vec /
                                     matmul_qvec for every weight type */
    int split_attention;          /* attention path: 0 attention.comp, 1 split-K with
                                     shared-memory reductions, 2 split-K with subgroup
                                     reductions (docs/VULKAN.md) */
    int timeline;                 /* timelineSemaphore (Vulkan 1.2 feature) reported */
    uint32_t timestamp_bits;      /* the compute family's timestampValidBits (0: none) */
    float timestamp_period;       /* limits.timestampPeriod: ns per tick */
    uint32_t queue_family;        /* first family with compute */
    int usable;                   /* Vulkan >= 1.2 and a compute queue */
} vk_caps;

typedef struct vk_chunk {
    VkBuffer buf;
    VkDeviceMemory mem;
    uint64_t start, size; /* bytes of the duet_buffer this chunk holds */
    void *map;            /* persistently mapped when host-visible+coherent */
} vk_chunk;

struct duet_buffer {
    size_t size;
    uint32_t n_chunks;
    vk_chunk chunk[];
};

/* Host-visible memory a stream copies uploads into and downloads out of. */
typedef struct vk_staging {
    VkBuffer buf;
    VkDeviceMemory mem;
    unsigned char *map;
    size_t size, used;
} vk_staging;

typedef struct vk_download {
    void *dst;
    const unsigned char *src; /* into a staging map */
    size_t n;
} vk_download;

/* A byte range of one VkBuffer a recorded command reads or writes. */
typedef struct vk_access {
    VkBuffer buf;
    VkDeviceSize lo, hi;
    int write;
} vk_access;

typedef enum vk_stream_state {
    VK_STREAM_IDLE = 0,
    VK_STREAM_RECORDING,
    VK_STREAM_SUBMITTED,
} vk_stream_state;

struct duet_stream {
    VkCommandPool pool;
    VkCommandBuffer cb;
    VkFence fence;           /* only without timeline semaphores */
    uint64_t value;          /* timeline value the last submission signals */
    vk_stream_state state;
    /* Hazard tracking (vk_stream.c): what the commands recorded since the
     * last barrier access; the next command gets a barrier only if it
     * conflicts with one of them (or need_barrier is set). */
    vk_access *pending;
    int n_pending, cap_pending;
    int need_barrier;
    int n_commands, n_barriers; /* this recording, for DUET_VK_STATS and tests */
    VkDescriptorPool *dpools;
    int n_dpools, cap_dpools, cur_dpool, sets_in_cur;
    vk_staging *staging;
    int n_staging, cap_staging;
    vk_download *downloads;
    int n_downloads, cap_downloads;
    /* GPU timestamps while profiling (vk_profile.c): pool i holds
     * VK_PROF_POOL << i queries, created on first use; stamp j follows the
     * command of kind kinds[j] (stamp 0: the recording's start). */
    struct {
        int on;                   /* this recording writes timestamps */
        VkQueryPool pools[VK_PROF_MAX_POOLS];
        uint8_t *kinds;
        int n_stamps, cap_stamps;
    } prof;
};

/* Test-only faults (DUET_VK_FAULT, read at device creation; docs/VULKAN.md). */
typedef enum vk_fault_kind {
    VK_FAULT_NONE = 0,
    VK_FAULT_DEVICE_LOST, /* submission n + 1 and everything after: device lost */
    VK_FAULT_OOM,         /* device-memory allocations after the first n fail */
    VK_FAULT_PIPELINE,    /* creating a pipeline (of shader `shader`, or any) fails */
} vk_fault_kind;

typedef struct vk_fault {
    vk_fault_kind kind;
    long n;
    char shader[32]; /* VK_FAULT_PIPELINE: "" = every shader */
} vk_fault;

/* Entry points beyond the loader's table (core 1.0/1.2, loaded in vk_device.c). */
typedef struct vk_sync_fns {
    PFN_vkCreateSemaphore vkCreateSemaphore;
    PFN_vkDestroySemaphore vkDestroySemaphore;
    PFN_vkWaitSemaphores vkWaitSemaphores;
} vk_sync_fns;

typedef struct vk_ctx {
    duet_vk_loader loader;
    VkInstance instance;
    duet_vk_instance_fns fi;
    VkDebugUtilsMessengerEXT messenger;
    atomic_int validation_errors;

    VkPhysicalDevice phys;
    vk_caps caps;
    int index; /* as duet_vulkan_list_devices numbers it */
    VkDevice dev;
    duet_vk_device_fns fd;
    VkQueue queue;
    pthread_mutex_t queue_lock; /* vkQueueSubmit needs external sync */
    vk_sync_fns fs;
    /* Submission order (device.h): with timeline semaphores every
     * submission waits for the previous one's value and signals the next;
     * without, each recording starts with a barrier and a fence per stream
     * tells completion. */
    VkSemaphore timeline;       /* VK_NULL_HANDLE: the fence path */
    uint64_t submitted;         /* last value signaled by a submission (queue_lock) */
    atomic_int lost;            /* VK_ERROR_DEVICE_LOST seen: every later call fails */
    vk_fault fault;
    atomic_long n_submits, n_allocs; /* counted for the faults */
    atomic_ullong buffer_bytes; /* device memory the live duet_buffers hold */
    int stats;                  /* DUET_VK_STATS=1: print commands/barriers per submit */
    int vec_rows_log2;          /* matmul_vec/qvec: 1 << this weight rows per workgroup
                                   (DUET_VK_VEC_ROWS); -1 = the default, see
                                   duet_vk_vec_rows_log2() */
    int attn_part_log2;         /* split-K attention: 64 << this keys per partition,
                                   64, 128 or 256 (DUET_VK_ATTN_PART; default 64) */
    uint32_t mem_device;        /* memory type indices */
    uint32_t mem_host;
    int device_mem_mapped;      /* device-local type is host-visible+coherent */
    uint64_t device_heap_bytes; /* size of mem_device's heap */

    uint64_t chunk_cap, halo;   /* see the memory model above */

    VkDescriptorSetLayout set_layout;
    VkPipelineLayout pipe_layout;
    VkShaderModule modules[VK_SH_COUNT];
    /* Per shader, from its SPIR-V (vk_pipeline.c): bindings it declares and
     * those not declared readonly (bit i = binding i). */
    uint8_t binds_used[VK_SH_COUNT], binds_written[VK_SH_COUNT];
    VkPipeline pipes[VK_SH_COUNT][VK_SPEC_VALUES];
    VkPipelineCache pipe_cache; /* persisted under the cache directory */
    int pipe_cache_dirty;       /* a pipeline was created: save at destroy */
    pthread_mutex_t pipe_lock;
    duet_buffer *dummy;         /* bound to unused binding slots */
    /* Split-K attention partials (vk_ops.c): one device-local buffer for
     * every stream (submissions run in order, so their uses never
     * overlap), grown on demand; an outgrown one is kept until destroy,
     * since a recording may still hold it. */
    pthread_mutex_t attn_lock;
    duet_buffer *attn_scratch;
    duet_buffer **attn_retired;
    int n_attn_retired;
    duet_stream *sync;          /* for buffer_write/read through staging */
    pthread_mutex_t sync_lock;
    /* GPU timestamp profile (vk_profile.c): totals per kind since the last
     * reset, under lock. */
    struct {
        atomic_int on;          /* recordings begun from now on write timestamps */
        int env;                /* DUET_VK_PROFILE=1: print the totals at destroy */
        PFN_vkCreateQueryPool vkCreateQueryPool;
        PFN_vkDestroyQueryPool vkDestroyQueryPool;
        PFN_vkCmdResetQueryPool vkCmdResetQueryPool;
        PFN_vkCmdWriteTimestamp vkCmdWriteTimestamp;
        PFN_vkGetQueryPoolResults vkGetQueryPoolResults;
        pthread_mutex_t lock;
        uint64_t count[VK_PROF_KINDS], recordings, barriers;
        double ns[VK_PROF_KINDS], span_ns;
    } prof;
} vk_ctx;

/* A bound range: what one descriptor points at. */
typedef struct vk_binding {
    VkBuffer buf;
    VkDeviceSize offset, range;
} vk_binding;

/* vk_device.c */
extern const duet_device_ops duet_vk_ops;

/* vk_device.c: DUET_ERR_DEVICE "Vulkan: <what>: device lost" once the
 * device was lost (every call after a VK_ERROR_DEVICE_LOST), else DUET_OK. */
duet_status duet_vk_check_lost(vk_ctx *c, const char *what);
/* vr as a duet_status with a message naming what; VK_ERROR_DEVICE_LOST
 * marks the device lost. */
duet_status duet_vk_check(vk_ctx *c, VkResult vr, const char *what);

/* vk_memory.c */
duet_status duet_vk_buffer_alloc(void *ctx, size_t size, duet_buffer **out);
void duet_vk_buffer_free(void *ctx, duet_buffer *buf);
size_t duet_vk_buffer_size(void *ctx, const duet_buffer *buf);
duet_status duet_vk_buffer_write(void *ctx, duet_addr dst, const void *src, size_t n);
duet_status duet_vk_buffer_read(void *ctx, duet_addr src, void *dst, size_t n);
/* Create a VkBuffer + memory of memory type mem_type (host-visible types
 * are mapped into *map). */
duet_status duet_vk_raw_buffer(vk_ctx *c, uint64_t size, uint32_t mem_type, VkBuffer *buf,
                               VkDeviceMemory *mem, void **map);
void duet_vk_raw_buffer_free(vk_ctx *c, VkBuffer buf, VkDeviceMemory mem);
/* Bind bytes [lo, hi) past a.offset: the descriptor in *out, and in
 * *residual the bytes between the descriptor's start and a.offset + lo.
 * DUET_ERR_UNSUPPORTED when the range cannot be one binding. */
duet_status duet_vk_bind_range(vk_ctx *c, const char *op, const char *name, duet_addr a,
                               uint64_t lo, uint64_t hi, vk_binding *out, uint32_t *residual);
/* Largest byte count an op may bind as one operand (room for alignment). */
uint64_t duet_vk_max_bind(const vk_ctx *c);
/* vk_ops.c's recording helpers, shared by the other recorders: bind a
 * float/int32 operand's bytes [lo, hi) past a.offset (*words = the word
 * offset of a.offset + lo inside the binding); a placeholder binding for an
 * absent operand; a 1-D count of workgroups folded into x and y. */
duet_status duet_vk_bind_words(vk_ctx *c, const char *op, const char *name, duet_addr a,
                               uint64_t lo, uint64_t hi, vk_binding *b, uint32_t *words);
vk_binding duet_vk_dummy_binding(const vk_ctx *c);
void duet_vk_grid_2d(uint64_t groups, uint32_t *gx, uint32_t *gy);

/* vk_stream.c */
duet_status duet_vk_stream_create(void *ctx, duet_stream **out);
void duet_vk_stream_destroy(void *ctx, duet_stream *s);
duet_status duet_vk_stream_begin(void *ctx, duet_stream *s);
duet_status duet_vk_stream_submit(void *ctx, duet_stream *s);
duet_status duet_vk_stream_wait(void *ctx, duet_stream *s);
duet_status duet_vk_upload(void *ctx, duet_stream *s, duet_addr dst, const void *src, size_t n);
duet_status duet_vk_download(void *ctx, duet_stream *s, duet_addr src, void *dst, size_t n);
/* Host-visible stream memory for n bytes (aligned for binding), valid
 * until the next begin: *binding covers it, *host is where to write. */
duet_status duet_vk_stream_scratch(vk_ctx *c, duet_stream *s, size_t n, vk_binding *binding,
                                   void **host);
/* Record one dispatch of shader sh (specialized with spec) with bindings
 * b[0..nb) and push constants pc; a barrier orders it after the commands
 * recorded before whose ranges it conflicts with (read after write, write
 * after read or write; which bindings a shader writes comes from its
 * SPIR-V). Groups beyond the device's limits are the caller's problem. */
duet_status duet_vk_dispatch(vk_ctx *c, duet_stream *s, vk_shader sh, uint32_t spec,
                             const vk_binding *b, int nb, const void *pc, uint32_t pc_size,
                             uint32_t gx, uint32_t gy, uint32_t gz);

/* vk_profile.c: DUET_VK_PROFILE (NULL, "0" or "1") and the entry points,
 * at device creation (DUET_ERR_INVALID_ARG for another value,
 * DUET_ERR_UNSUPPORTED for "1" without timestamps); at destroy, the totals
 * table on stderr when DUET_VK_PROFILE=1 and anything was profiled. The
 * stream's part: begin starts (or not) a profiled recording, a stamp
 * follows each command, and a completed submission adds its stamps to the
 * totals (wait). duet_vk_profile_stream_free frees a stream's pools. */
duet_status duet_vk_profile_init(vk_ctx *c, const char *env);
void duet_vk_profile_report(vk_ctx *c);
duet_status duet_vk_profile_begin(vk_ctx *c, duet_stream *s);
duet_status duet_vk_profile_stamp(vk_ctx *c, duet_stream *s, int kind);
duet_status duet_vk_profile_collect(vk_ctx *c, duet_stream *s);
void duet_vk_profile_stream_free(vk_ctx *c, duet_stream *s);

/* vk_pipeline.c */
/* "add", "matmul_vec", ...: the shader's file name. */
const char *duet_vk_shader_name(vk_shader sh);
duet_status duet_vk_pipelines_init(vk_ctx *c);
void duet_vk_pipelines_free(vk_ctx *c);
/* The pipeline, created on first use; also fills binds_used/written[sh].
 * DUET_ERR_DEVICE naming the shader and variant when creation fails. */
duet_status duet_vk_pipeline_get(vk_ctx *c, vk_shader sh, uint32_t spec, VkPipeline *out);
/* Bit i set when the SPIR-V declares storage buffer binding i (used) and
 * does not declare it readonly (written). 0 on malformed SPIR-V. Exposed
 * for tests. */
int duet_vk_spirv_bindings(const uint32_t *words, size_t n_words, uint8_t *used,
                           uint8_t *written);

/* vk_ops.c: the op recorders */
duet_status duet_vk_embed(void *ctx, duet_stream *s, const duet_embed_args *a);
duet_status duet_vk_rms_norm(void *ctx, duet_stream *s, const duet_rms_norm_args *a);
duet_status duet_vk_matmul(void *ctx, duet_stream *s, const duet_matmul_args *a);
duet_status duet_vk_rope(void *ctx, duet_stream *s, const duet_rope_args *a);
duet_status duet_vk_kv_write(void *ctx, duet_stream *s, const duet_kv_write_args *a);
duet_status duet_vk_attention(void *ctx, duet_stream *s, const duet_attention_args *a);
duet_status duet_vk_swiglu(void *ctx, duet_stream *s, const duet_swiglu_args *a);
duet_status duet_vk_add(void *ctx, duet_stream *s, const duet_add_args *a);
duet_status duet_vk_gather_rows(void *ctx, duet_stream *s, const duet_gather_rows_args *a);

/* vk_sample.c: the sample op, and a test hook that records sample.comp's
 * variant 1: out[r][i] = dexp, dlog, gumbel or a Philox word (r % 4) of
 * in[r][i] (f32[n_rows][n]). */
duet_status duet_vk_sample(void *ctx, duet_stream *s, const duet_sample_args *a);
duet_status duet_vk_sample_math_check(duet_device *d, duet_stream *s, duet_addr in,
                                      duet_addr out, int n_rows, int n);

/* log2 of the weight rows per workgroup of matmul_vec/qvec: DUET_VK_VEC_ROWS
 * when set, else 4 rows plain and 2 gated (a gated workgroup holds W and
 * W_up rows: 2 gated rows keep the registers of 4 plain ones). */
static inline int duet_vk_vec_rows_log2(const vk_ctx *c, int gated)
{
    return c->vec_rows_log2 >= 0 ? c->vec_rows_log2 : gated ? 1 : 2;
}

#endif
