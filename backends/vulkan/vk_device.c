/*
 * vk_device.c — instance, device enumeration and capability probing, the
 * selection policy (one function), device creation and teardown, and the
 * backend's duet_device_ops table.
 *
 * DUET_VK_VALIDATION=1 enables VK_LAYER_KHRONOS_validation with a
 * debug-utils messenger that prints every message and counts it, so a
 * test can fail on any (duet_vulkan_validation_errors); =sync adds the
 * layer's synchronization validation (hazards between commands).
 *
 * DUET_VK_FAULT (tests only, read at device creation) makes the device
 * fail on purpose: device_lost_after:N, oom[:N], pipeline[:shader].
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "vk_internal.h"

static const char *VALIDATION_LAYER = "VK_LAYER_KHRONOS_validation";

/* 0: off, 1: DUET_VK_VALIDATION=1, 2: =sync (with synchronization validation). */
static int validation_requested(void)
{
    const char *env = getenv("DUET_VK_VALIDATION");
    if (env && strcmp(env, "sync") == 0)
        return 2;
    return env && strcmp(env, "1") == 0;
}

static VKAPI_ATTR VkBool32 VKAPI_CALL on_validation(
    VkDebugUtilsMessageSeverityFlagBitsEXT severity, VkDebugUtilsMessageTypeFlagsEXT types,
    const VkDebugUtilsMessengerCallbackDataEXT *data, void *user)
{
    (void)types;
    atomic_int *count = user;
    if (severity & (VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT |
                    VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT)) {
        atomic_fetch_add(count, 1);
        fprintf(stderr, "duet: Vulkan validation: %s\n",
                data && data->pMessage ? data->pMessage : "(no message)");
    }
    return VK_FALSE;
}

static int layer_present(const duet_vk_loader *l, const char *name)
{
    uint32_t n = 0;
    if (l->vkEnumerateInstanceLayerProperties(&n, NULL) != VK_SUCCESS || n == 0)
        return 0;
    VkLayerProperties *p = calloc(n, sizeof *p);
    int found = 0;
    if (p && l->vkEnumerateInstanceLayerProperties(&n, p) == VK_SUCCESS)
        for (uint32_t i = 0; i < n && !found; i++)
            found = strcmp(p[i].layerName, name) == 0;
    free(p);
    return found;
}

/* Loader, instance, instance table and (when validating) the messenger.
 * count receives validation messages; may be NULL when not validating. */
static duet_status instance_open(duet_vk_loader *l, VkInstance *inst, duet_vk_instance_fns *fi,
                                 VkDebugUtilsMessengerEXT *messenger, atomic_int *count)
{
    duet_status rc = duet_vk_loader_open(l);
    if (rc)
        return rc;
    int validate = count ? validation_requested() : 0;
    if (validate && !layer_present(l, VALIDATION_LAYER)) {
        rc = duet_error(DUET_ERR_UNSUPPORTED,
                        "Vulkan: DUET_VK_VALIDATION=%s but %s is not installed "
                        "(apt-get install vulkan-validationlayers)",
                        validate == 2 ? "sync" : "1", VALIDATION_LAYER);
        goto out_close;
    }
    /* The layer checks hazards between submissions (the order device.h
     * promises) only with this setting, which its 1.3.239 version takes
     * from the environment alone; a debug mode, so set it unless the user
     * chose otherwise. */
    if (validate == 2)
        setenv("VK_LAYER_ENABLES",
               "VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT:"
               "VALIDATION_CHECK_ENABLE_SYNCHRONIZATION_VALIDATION_QUEUE_SUBMIT",
               0);
    VkApplicationInfo app = {
        .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
        .pApplicationName = "duet",
        .pEngineName = "duet",
        .apiVersion = VK_API_VERSION_1_2,
    };
    const char *exts[2] = {VK_EXT_DEBUG_UTILS_EXTENSION_NAME,
                           VK_EXT_VALIDATION_FEATURES_EXTENSION_NAME};
    VkValidationFeatureEnableEXT sync_enable =
        VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT;
    VkValidationFeaturesEXT features = {
        .sType = VK_STRUCTURE_TYPE_VALIDATION_FEATURES_EXT,
        .enabledValidationFeatureCount = 1,
        .pEnabledValidationFeatures = &sync_enable,
    };
    VkDebugUtilsMessengerCreateInfoEXT mci = {
        .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
        .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT |
                           VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT,
        .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
        .pfnUserCallback = on_validation,
        .pUserData = count,
    };
    features.pNext = &mci;
    VkInstanceCreateInfo ici = {
        .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
        /* the messenger also covers instance creation itself */
        .pNext = validate == 2 ? (const void *)&features : validate ? (const void *)&mci : NULL,
        .pApplicationInfo = &app,
        .enabledLayerCount = validate ? 1 : 0,
        .ppEnabledLayerNames = validate ? &VALIDATION_LAYER : NULL,
        .enabledExtensionCount = (uint32_t)validate, /* debug utils (+ features for sync) */
        .ppEnabledExtensionNames = validate ? exts : NULL,
    };
    VkResult vr = l->vkCreateInstance(&ici, NULL, inst);
    if (vr != VK_SUCCESS) {
        rc = duet_error(DUET_ERR_UNSUPPORTED, "Vulkan: not available (vkCreateInstance: %s)",
                        duet_vk_result_name(vr));
        goto out_close;
    }
    if ((rc = duet_vk_instance_fns_load(l, *inst, fi)))
        goto out_destroy;
    *messenger = VK_NULL_HANDLE;
    if (validate) {
        if (!fi->vkCreateDebugUtilsMessengerEXT) {
            rc = duet_error(DUET_ERR_UNSUPPORTED, "Vulkan: validation without VK_EXT_debug_utils");
            goto out_destroy;
        }
        vr = fi->vkCreateDebugUtilsMessengerEXT(*inst, &mci, NULL, messenger);
        if (vr != VK_SUCCESS) {
            rc = duet_error(duet_vk_status(vr), "Vulkan: creating the validation messenger: %s",
                            duet_vk_result_name(vr));
            goto out_destroy;
        }
    }
    return DUET_OK;

out_destroy:
    if (fi->vkDestroyInstance)
        fi->vkDestroyInstance(*inst, NULL);
    *inst = VK_NULL_HANDLE;
out_close:
    duet_vk_loader_close(l);
    return rc;
}

static int has_extension(const VkExtensionProperties *e, uint32_t n, const char *name)
{
    for (uint32_t i = 0; i < n; i++)
        if (strcmp(e[i].extensionName, name) == 0)
            return 1;
    return 0;
}

/* Everything duet needs to know about pd, from what it reports. */
static void probe(const duet_vk_instance_fns *fi, VkPhysicalDevice pd, vk_caps *c)
{
    memset(c, 0, sizeof *c);
    VkPhysicalDeviceProperties p;
    fi->vkGetPhysicalDeviceProperties(pd, &p);
    snprintf(c->name, sizeof c->name, "%s", p.deviceName);
    c->type = p.deviceType;
    c->api_version = p.apiVersion;
    c->vendor_id = p.vendorID;
    c->device_id = p.deviceID;
    c->driver_version = p.driverVersion;
    memcpy(c->cache_uuid, p.pipelineCacheUUID, VK_UUID_SIZE);
    c->max_storage_range = p.limits.maxStorageBufferRange;
    c->min_storage_align = p.limits.minStorageBufferOffsetAlignment;
    c->max_shared = p.limits.maxComputeSharedMemorySize;
    c->max_push = p.limits.maxPushConstantsSize;
    c->max_storage_per_stage = p.limits.maxPerStageDescriptorStorageBuffers;
    for (int i = 0; i < 3; i++)
        c->max_groups[i] = p.limits.maxComputeWorkGroupCount[i];
    c->timestamp_period = p.limits.timestampPeriod;

    uint32_t nq = 0;
    fi->vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, NULL);
    VkQueueFamilyProperties *q = calloc(nq ? nq : 1, sizeof *q);
    int have_queue = 0;
    if (q) {
        fi->vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, q);
        for (uint32_t i = 0; i < nq && !have_queue; i++)
            if (q[i].queueFlags & VK_QUEUE_COMPUTE_BIT) {
                c->queue_family = i;
                c->timestamp_bits = q[i].timestampValidBits; /* profiling */
                have_queue = 1;
            }
        free(q);
    }
    VkPhysicalDeviceMemoryProperties mp;
    fi->vkGetPhysicalDeviceMemoryProperties(pd, &mp);
    for (uint32_t i = 0; i < mp.memoryHeapCount; i++)
        if (mp.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)
            c->device_local_bytes += mp.memoryHeaps[i].size;

    c->usable = have_queue && VK_API_VERSION_MINOR(p.apiVersion) >= 2;
    /* llvmpipe-like devices run workgroup barriers as coroutine switches:
     * the per-output matmul is ~50x faster there. GPUs with subgroup
     * arithmetic take matmul_vec/matmul_qvec (decided below, once
     * the subgroup properties are read). DUET_VK_MATMUL=tiled, =per-output
     * or =vec overrides (tests cover each). */
    c->per_output_matmul = p.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;
    const char *mm = getenv("DUET_VK_MATMUL");
    if (mm && (strcmp(mm, "tiled") == 0 || strcmp(mm, "vec") == 0))
        c->per_output_matmul = 0;
    if (mm && strcmp(mm, "per-output") == 0)
        c->per_output_matmul = 1;
    if (VK_API_VERSION_MAJOR(p.apiVersion) < 1 || !c->usable)
        return; /* the 1.1/1.2 structs below need a 1.2 device */

    uint32_t ne = 0;
    fi->vkEnumerateDeviceExtensionProperties(pd, NULL, &ne, NULL);
    VkExtensionProperties *ext = calloc(ne ? ne : 1, sizeof *ext);
    if (ext && fi->vkEnumerateDeviceExtensionProperties(pd, NULL, &ne, ext) != VK_SUCCESS)
        ne = 0;
    int ext_dot = ext && has_extension(ext, ne, "VK_KHR_shader_integer_dot_product");
    c->coop_matrix = ext && has_extension(ext, ne, "VK_KHR_cooperative_matrix");
    free(ext);

    VkPhysicalDeviceVulkan11Properties p11 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_PROPERTIES};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                      .pNext = &p11};
    fi->vkGetPhysicalDeviceProperties2(pd, &p2);
    c->max_alloc = p11.maxMemoryAllocationSize;
    c->subgroup_size = p11.subgroupSize;
    c->subgroup_ops = p11.subgroupSupportedOperations;
    c->subgroup_in_compute = (p11.subgroupSupportedStages & VK_SHADER_STAGE_COMPUTE_BIT) != 0;
    int sg_arith = c->subgroup_in_compute && (c->subgroup_ops & VK_SUBGROUP_FEATURE_BASIC_BIT) &&
                   (c->subgroup_ops & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT);
    c->vec_matmul = sg_arith && !c->per_output_matmul && !(mm && strcmp(mm, "tiled") == 0);
    /* Split-K attention (flash-decoding) on GPUs with subgroup arithmetic;
     * CPU-type devices keep attention.comp. DUET_VK_ATTENTION=basic, =split
     * (subgroup reductions where reported) or =split-shared overrides. */
    const char *at = getenv("DUET_VK_ATTENTION");
    c->split_attention = sg_arith && p.deviceType != VK_PHYSICAL_DEVICE_TYPE_CPU ? 2 : 0;
    if (at && strcmp(at, "basic") == 0)
        c->split_attention = 0;
    if (at && strcmp(at, "split") == 0)
        c->split_attention = sg_arith ? 2 : 1;
    if (at && strcmp(at, "split-shared") == 0)
        c->split_attention = 1;

    VkPhysicalDeviceShaderIntegerDotProductFeatures fdot = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES};
    VkPhysicalDeviceVulkan12Features f12 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
        .pNext = ext_dot ? &fdot : NULL};
    VkPhysicalDeviceVulkan11Features f11 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES, .pNext = &f12};
    VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2,
                                    .pNext = &f11};
    fi->vkGetPhysicalDeviceFeatures2(pd, &f2);
    c->float64 = f2.features.shaderFloat64;
    c->storage16 = f11.storageBuffer16BitAccess;
    c->fp16 = f12.shaderFloat16;
    c->int8 = f12.shaderInt8;
    c->storage8 = f12.storageBuffer8BitAccess;
    c->int_dot = ext_dot && fdot.shaderIntegerDotProduct;
    c->timeline = f12.timelineSemaphore;
}

static const char *type_name(VkPhysicalDeviceType t)
{
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return "discrete";
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated";
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return "virtual";
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return "cpu";
    default: return "other";
    }
}

/* The selection policy, in one place: a usable discrete GPU, then an
 * integrated one, then a virtual one, then (if allowed) a CPU-type device
 * such as lavapipe; the first of each kind in enumeration order. */
static int policy_rank(const vk_caps *c, int allow_cpu_type)
{
    if (!c->usable)
        return -1;
    switch (c->type) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return 4;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return 3;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return 2;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return allow_cpu_type ? 1 : -1;
    default: return allow_cpu_type ? 0 : -1;
    }
}

static int pick_device(const vk_caps *caps, int n, int allow_cpu_type)
{
    int best = -1, best_rank = -1;
    for (int i = 0; i < n; i++) {
        int r = policy_rank(&caps[i], allow_cpu_type);
        if (r > best_rank) {
            best = i;
            best_rank = r;
        }
    }
    return best;
}

/* All physical devices of inst, probed. *caps is malloc'ed. */
static duet_status enumerate(const duet_vk_instance_fns *fi, VkInstance inst,
                             VkPhysicalDevice **pds, vk_caps **caps, int *n)
{
    uint32_t count = 0;
    *pds = NULL;
    *caps = NULL;
    *n = 0;
    VkResult vr = fi->vkEnumeratePhysicalDevices(inst, &count, NULL);
    if (vr != VK_SUCCESS)
        return duet_error(DUET_ERR_UNSUPPORTED, "Vulkan: not available "
                          "(vkEnumeratePhysicalDevices: %s)", duet_vk_result_name(vr));
    if (count == 0)
        return duet_error(DUET_ERR_UNSUPPORTED, "Vulkan: not available (no devices)");
    *pds = calloc(count, sizeof **pds);
    *caps = calloc(count, sizeof **caps);
    if (!*pds || !*caps) {
        free(*pds);
        free(*caps);
        *pds = NULL;
        *caps = NULL;
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "Vulkan: out of memory listing devices");
    }
    vr = fi->vkEnumeratePhysicalDevices(inst, &count, *pds);
    if (vr != VK_SUCCESS && vr != VK_INCOMPLETE) {
        free(*pds);
        free(*caps);
        *pds = NULL;
        *caps = NULL;
        return duet_error(DUET_ERR_UNSUPPORTED, "Vulkan: vkEnumeratePhysicalDevices: %s",
                          duet_vk_result_name(vr));
    }
    for (uint32_t i = 0; i < count; i++)
        probe(fi, (*pds)[i], &(*caps)[i]);
    *n = (int)count;
    return DUET_OK;
}

static void features_string(const vk_caps *c, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s%s%s%s%s%s%s%s", c->fp16 ? "fp16 " : "", c->int8 ? "int8 " : "",
             c->storage16 ? "storage16 " : "", c->storage8 ? "storage8 " : "",
             (c->subgroup_ops & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT) ? "subgroup-arith " : "",
             c->int_dot ? "int-dot " : "", c->coop_matrix ? "coopmat " : "",
             c->float64 ? "fp64" : "");
    size_t len = strlen(buf);
    if (len && buf[len - 1] == ' ')
        buf[len - 1] = 0;
}

duet_status duet_vulkan_list_devices(duet_vulkan_device_desc *out, int cap, int *n)
{
    duet_vk_loader l;
    VkInstance inst;
    duet_vk_instance_fns fi;
    VkDebugUtilsMessengerEXT messenger;
    *n = 0;
    duet_status rc = instance_open(&l, &inst, &fi, &messenger, NULL);
    if (rc)
        return rc;
    VkPhysicalDevice *pds;
    vk_caps *caps;
    int count;
    rc = enumerate(&fi, inst, &pds, &caps, &count);
    if (rc == DUET_OK) {
        int preferred = pick_device(caps, count, 1);
        for (int i = 0; i < count && i < cap; i++) {
            duet_vulkan_device_desc *d = &out[i];
            memset(d, 0, sizeof *d);
            d->index = i;
            snprintf(d->name, sizeof d->name, "%s", caps[i].name);
            snprintf(d->type, sizeof d->type, "%s", type_name(caps[i].type));
            d->mem_bytes = caps[i].device_local_bytes;
            d->max_storage_range = caps[i].max_storage_range;
            d->max_alloc = caps[i].max_alloc;
            d->max_shared = caps[i].max_shared;
            d->subgroup_size = caps[i].subgroup_size;
            features_string(&caps[i], d->features, sizeof d->features);
            d->usable = caps[i].usable;
            d->preferred = i == preferred;
        }
        *n = count;
        free(pds);
        free(caps);
    }
    fi.vkDestroyInstance(inst, NULL);
    duet_vk_loader_close(&l);
    return rc;
}

/* ---- the device ------------------------------------------------------------- */

static uint32_t find_memory_type(const VkPhysicalDeviceMemoryProperties *mp,
                                 VkMemoryPropertyFlags want, VkMemoryPropertyFlags avoid)
{
    for (uint32_t i = 0; i < mp->memoryTypeCount; i++) {
        VkMemoryPropertyFlags f = mp->memoryTypes[i].propertyFlags;
        if ((f & want) == want && !(f & avoid))
            return i;
    }
    return UINT32_MAX;
}

static void vk_destroy(void *ctx)
{
    vk_ctx *c = ctx;
    if (!c)
        return;
    if (c->dev) {
        c->fd.vkDeviceWaitIdle(c->dev);
        duet_vk_profile_report(c); /* DUET_VK_PROFILE=1: the totals */
        duet_vk_stream_destroy(c, c->sync);
        duet_vk_buffer_free(c, c->dummy);
        duet_vk_buffer_free(c, c->attn_scratch);
        for (int i = 0; i < c->n_attn_retired; i++)
            duet_vk_buffer_free(c, c->attn_retired[i]);
        duet_vk_pipelines_free(c);
        if (c->timeline)
            c->fs.vkDestroySemaphore(c->dev, c->timeline, NULL);
        c->fd.vkDestroyDevice(c->dev, NULL);
    }
    if (c->messenger) {
        int n = atomic_load(&c->validation_errors);
        if (n)
            fprintf(stderr, "duet: Vulkan validation reported %d message(s) on %s\n", n,
                    c->caps.name);
        c->fi.vkDestroyDebugUtilsMessengerEXT(c->instance, c->messenger, NULL);
    }
    if (c->instance)
        c->fi.vkDestroyInstance(c->instance, NULL);
    duet_vk_loader_close(&c->loader);
    pthread_mutex_destroy(&c->queue_lock);
    pthread_mutex_destroy(&c->pipe_lock);
    pthread_mutex_destroy(&c->sync_lock);
    pthread_mutex_destroy(&c->attn_lock);
    pthread_mutex_destroy(&c->prof.lock);
    free(c->attn_retired);
    free(c);
}

static void vk_get_info(void *ctx, duet_device_info *out)
{
    const vk_ctx *c = ctx;
    snprintf(out->name, sizeof out->name, "%.96s (Vulkan %u.%u, %s)", c->caps.name,
             VK_API_VERSION_MAJOR(c->caps.api_version), VK_API_VERSION_MINOR(c->caps.api_version),
             type_name(c->caps.type));
    snprintf(out->backend, sizeof out->backend, "vulkan");
    out->mem_total = c->caps.device_local_bytes;
    /* What this device's buffers do not hold (other processes' use needs
     * VK_EXT_memory_budget: later). */
    unsigned long long held = atomic_load(&c->buffer_bytes);
    out->mem_free = held < c->caps.device_local_bytes ? c->caps.device_local_bytes - held : 0;
    out->n_threads = 0;
    out->max_range = duet_vk_max_bind(c);
    out->max_alloc = c->chunk_cap;
}

/* Sizes of the memory model (vk_internal.h). */
static void memory_model(vk_ctx *c)
{
    uint64_t cap = c->caps.max_alloc ? c->caps.max_alloc : (1ull << 30);
    /* Tests shrink the allocation size to reach the chunked path cheaply;
     * it never grows past what the device reports. */
    const char *env = getenv("DUET_VK_MAX_ALLOC");
    uint64_t forced = env ? strtoull(env, NULL, 0) : 0;
    if (forced && forced < cap)
        cap = forced;
    cap &= ~((uint64_t)(1 << 16) - 1);
    uint64_t halo = c->caps.max_storage_range;
    if (halo > cap / 2)
        halo = cap / 2;
    c->chunk_cap = cap;
    c->halo = halo & ~(uint64_t)255;
}

/* One timeline semaphore per device orders every submission after the
 * previous one (vk_stream.c). */
static duet_status timeline_create(vk_ctx *c)
{
    c->fs.vkCreateSemaphore =
        (PFN_vkCreateSemaphore)c->fi.vkGetDeviceProcAddr(c->dev, "vkCreateSemaphore");
    c->fs.vkDestroySemaphore =
        (PFN_vkDestroySemaphore)c->fi.vkGetDeviceProcAddr(c->dev, "vkDestroySemaphore");
    c->fs.vkWaitSemaphores =
        (PFN_vkWaitSemaphores)c->fi.vkGetDeviceProcAddr(c->dev, "vkWaitSemaphores");
    if (!c->fs.vkCreateSemaphore || !c->fs.vkDestroySemaphore || !c->fs.vkWaitSemaphores)
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "Vulkan: %s reports timelineSemaphore but lacks vkWaitSemaphores",
                          c->caps.name);
    VkSemaphoreTypeCreateInfo tci = {
        .sType = VK_STRUCTURE_TYPE_SEMAPHORE_TYPE_CREATE_INFO,
        .semaphoreType = VK_SEMAPHORE_TYPE_TIMELINE,
        .initialValue = 0,
    };
    VkSemaphoreCreateInfo sci = {.sType = VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO, .pNext = &tci};
    VkResult vr = c->fs.vkCreateSemaphore(c->dev, &sci, NULL, &c->timeline);
    if (vr != VK_SUCCESS) {
        c->timeline = VK_NULL_HANDLE;
        return duet_error(duet_vk_status(vr), "Vulkan: creating a timeline semaphore on %s: %s",
                          c->caps.name, duet_vk_result_name(vr));
    }
    return DUET_OK;
}

/* An override variable whose value must be base, 2 base or 4 base:
 * *log2 = which (0, 1, 2), or a message naming the variable and the value. */
static duet_status pow2_choice(const char *var, const char *env, int base, int *log2)
{
    for (int l = 0; l < 3; l++) {
        char v[16];
        snprintf(v, sizeof v, "%d", base << l);
        if (strcmp(env, v) == 0) {
            *log2 = l;
            return DUET_OK;
        }
    }
    return duet_error(DUET_ERR_INVALID_ARG, "%s='%s': expected %d, %d or %d", var, env, base,
                      2 * base, 4 * base);
}

/* DUET_VK_VEC_ROWS=1|2|4: the weight rows per workgroup of the decode
 * matmuls (docs/VULKAN.md); unset: 4. */
static duet_status vec_rows_parse(const char *env, int *log2_rows)
{
    *log2_rows = -1; /* the default: duet_vk_vec_rows_log2() */
    return env ? pow2_choice("DUET_VK_VEC_ROWS", env, 1, log2_rows) : DUET_OK;
}

/* DUET_VK_ATTN_PART=64|128|256: keys per split-K attention partition
 * (docs/VULKAN.md); unset: 64, the most workgroups for short contexts. */
static duet_status attn_part_parse(const char *env, int *log2_part)
{
    *log2_part = 0;
    return env ? pow2_choice("DUET_VK_ATTN_PART", env, 64, log2_part) : DUET_OK;
}

/* DUET_VK_FAULT=device_lost_after:N | oom[:N] | pipeline[:shader] (tests). */
static duet_status fault_parse(const char *env, vk_fault *f)
{
    memset(f, 0, sizeof *f);
    if (!env || !*env)
        return DUET_OK;
    const char *arg = strchr(env, ':');
    size_t kind_len = arg ? (size_t)(arg - env) : strlen(env);
    char *end = NULL;
    if (arg)
        arg++;
    if (kind_len == 17 && strncmp(env, "device_lost_after", kind_len) == 0 && arg) {
        f->kind = VK_FAULT_DEVICE_LOST;
        f->n = strtol(arg, &end, 10);
    } else if (kind_len == 3 && strncmp(env, "oom", kind_len) == 0) {
        f->kind = VK_FAULT_OOM;
        f->n = arg ? strtol(arg, &end, 10) : 0;
    } else if (kind_len == 8 && strncmp(env, "pipeline", kind_len) == 0) {
        f->kind = VK_FAULT_PIPELINE;
        snprintf(f->shader, sizeof f->shader, "%s", arg ? arg : "");
        return DUET_OK;
    }
    if (f->kind == VK_FAULT_NONE || (end && (*end || end == arg)) || f->n < 0)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "DUET_VK_FAULT='%s': expected device_lost_after:N, oom[:N] or "
                          "pipeline[:shader]",
                          env);
    return DUET_OK;
}

duet_status duet_vk_check_lost(vk_ctx *c, const char *what)
{
    if (!atomic_load(&c->lost))
        return DUET_OK;
    return duet_error(DUET_ERR_DEVICE,
                      "Vulkan: %s: the device %s was lost (VK_ERROR_DEVICE_LOST) earlier; "
                      "close it and open a new one",
                      what, c->caps.name);
}

duet_status duet_vk_check(vk_ctx *c, VkResult vr, const char *what)
{
    if (vr == VK_SUCCESS)
        return DUET_OK;
    if (vr == VK_ERROR_DEVICE_LOST) {
        atomic_store(&c->lost, 1);
        return duet_error(DUET_ERR_DEVICE,
                          "Vulkan: %s: device %s lost (VK_ERROR_DEVICE_LOST); every later call "
                          "on it fails",
                          what, c->caps.name);
    }
    return duet_error(duet_vk_status(vr), "Vulkan: %s on %s: %s", what, c->caps.name,
                      duet_vk_result_name(vr));
}

static duet_status device_open(vk_ctx *c)
{
    float prio = 1.0f;
    VkDeviceQueueCreateInfo qci = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
        .queueFamilyIndex = c->caps.queue_family,
        .queueCount = 1,
        .pQueuePriorities = &prio,
    };
    /* The shaders use only core 32-bit features. The one optional feature
     * enabled is timelineSemaphore (submission order), and only when the
     * driver reports it. DUET_VK_TIMELINE=0 forces the fence path (tests). */
    const char *tl = getenv("DUET_VK_TIMELINE");
    int timeline = c->caps.timeline && !(tl && strcmp(tl, "0") == 0);
    VkPhysicalDeviceVulkan12Features f12 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
        .timelineSemaphore = VK_TRUE,
    };
    VkDeviceCreateInfo dci = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
        .pNext = timeline ? &f12 : NULL,
        .queueCreateInfoCount = 1,
        .pQueueCreateInfos = &qci,
    };
    VkResult vr = c->fi.vkCreateDevice(c->phys, &dci, NULL, &c->dev);
    if (vr != VK_SUCCESS) {
        c->dev = VK_NULL_HANDLE;
        return duet_error(duet_vk_status(vr), "Vulkan: vkCreateDevice on %s: %s", c->caps.name,
                          duet_vk_result_name(vr));
    }
    duet_status rc = duet_vk_device_fns_load(&c->fi, c->dev, &c->fd);
    if (rc) {
        /* The table is incomplete: destroy the device by hand so that
         * vk_destroy does not call through it. */
        PFN_vkDestroyDevice destroy =
            (PFN_vkDestroyDevice)c->fi.vkGetDeviceProcAddr(c->dev, "vkDestroyDevice");
        if (destroy)
            destroy(c->dev, NULL);
        c->dev = VK_NULL_HANDLE;
        return rc;
    }
    c->fd.vkGetDeviceQueue(c->dev, c->caps.queue_family, 0, &c->queue);
    if (timeline && (rc = timeline_create(c)))
        return rc;

    VkPhysicalDeviceMemoryProperties mp;
    c->fi.vkGetPhysicalDeviceMemoryProperties(c->phys, &mp);
    c->mem_device = find_memory_type(&mp, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, 0);
    c->mem_host = find_memory_type(&mp, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                        VK_MEMORY_PROPERTY_HOST_COHERENT_BIT |
                                        VK_MEMORY_PROPERTY_HOST_CACHED_BIT, 0);
    if (c->mem_host == UINT32_MAX)
        c->mem_host = find_memory_type(&mp, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                            VK_MEMORY_PROPERTY_HOST_COHERENT_BIT, 0);
    if (c->mem_device == UINT32_MAX)
        c->mem_device = c->mem_host;
    if (c->mem_device == UINT32_MAX || c->mem_host == UINT32_MAX)
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "Vulkan: %s has no host-visible coherent memory type", c->caps.name);
    c->device_heap_bytes = mp.memoryHeaps[mp.memoryTypes[c->mem_device].heapIndex].size;
    VkMemoryPropertyFlags df = mp.memoryTypes[c->mem_device].propertyFlags;
    /* DUET_VK_STAGED=1 (tests): reach device memory only through staging
     * copies, as on a discrete GPU whose device-local memory the host cannot
     * map, even where it can (lavapipe). */
    const char *staged = getenv("DUET_VK_STAGED");
    c->device_mem_mapped = (df & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT) &&
                           (df & VK_MEMORY_PROPERTY_HOST_COHERENT_BIT) &&
                           !(staged && strcmp(staged, "1") == 0);
    memory_model(c);
    if ((rc = duet_vk_pipelines_init(c)))
        return rc;
    if ((rc = duet_vk_buffer_alloc(c, 256, &c->dummy)))
        return rc;
    return duet_vk_stream_create(c, &c->sync);
}

duet_status duet_vulkan_device_create(int index, const duet_device_options *opts,
                                      int allow_cpu_type, duet_device **out)
{
    (void)opts;
    *out = NULL;
    vk_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "Vulkan: out of memory for the device");
    pthread_mutex_init(&c->queue_lock, NULL);
    pthread_mutex_init(&c->pipe_lock, NULL);
    pthread_mutex_init(&c->sync_lock, NULL);
    pthread_mutex_init(&c->attn_lock, NULL);
    pthread_mutex_init(&c->prof.lock, NULL);
    atomic_init(&c->prof.on, 0);
    atomic_init(&c->validation_errors, 0);
    atomic_init(&c->lost, 0);
    atomic_init(&c->n_submits, 0);
    atomic_init(&c->n_allocs, 0);
    VkPhysicalDevice *pds = NULL;
    vk_caps *caps = NULL;
    int n = 0;
    duet_status rc = instance_open(&c->loader, &c->instance, &c->fi, &c->messenger,
                                   &c->validation_errors);
    if (rc)
        goto out_destroy;
    if ((rc = enumerate(&c->fi, c->instance, &pds, &caps, &n)))
        goto out_destroy;
    if (index >= n) {
        rc = duet_error(DUET_ERR_INVALID_ARG, "device 'vulkan:%d': there are %d Vulkan devices "
                        "(vulkan:0..vulkan:%d)", index, n, n - 1);
        goto out_destroy;
    }
    if (index < 0) {
        index = pick_device(caps, n, allow_cpu_type);
        if (index < 0) {
            rc = duet_error(DUET_ERR_UNSUPPORTED,
                            "Vulkan: not available (no %sdevice with Vulkan 1.2 and a compute "
                            "queue among %d; first: %s, %s)",
                            allow_cpu_type ? "" : "non-CPU ", n, caps[0].name,
                            type_name(caps[0].type));
            goto out_destroy;
        }
    } else if (!caps[index].usable) {
        rc = duet_error(DUET_ERR_UNSUPPORTED,
                        "device 'vulkan:%d' (%s) lacks Vulkan 1.2 or a compute queue", index,
                        caps[index].name);
        goto out_destroy;
    }
    const char *stats = getenv("DUET_VK_STATS");
    c->stats = stats && strcmp(stats, "1") == 0;
    c->index = index;
    c->phys = pds[index];
    c->caps = caps[index];
    /* Faults count from here: device creation itself never fails by them. */
    if ((rc = vec_rows_parse(getenv("DUET_VK_VEC_ROWS"), &c->vec_rows_log2)) ||
        (rc = attn_part_parse(getenv("DUET_VK_ATTN_PART"), &c->attn_part_log2)) ||
        (rc = device_open(c)) || (rc = fault_parse(getenv("DUET_VK_FAULT"), &c->fault)) ||
        (rc = duet_vk_profile_init(c, getenv("DUET_VK_PROFILE"))))
        goto out_destroy;
    duet_device *dev = calloc(1, sizeof *dev);
    if (!dev) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "Vulkan: out of memory for the device");
        goto out_destroy;
    }
    dev->ops = &duet_vk_ops;
    dev->ctx = c;
    *out = dev;
    free(pds);
    free(caps);
    return DUET_OK;

out_destroy:
    free(pds);
    free(caps);
    vk_destroy(c);
    return rc;
}

int duet_vulkan_validation_errors(const duet_device *d)
{
    if (!d || d->ops != &duet_vk_ops)
        return -1;
    const vk_ctx *c = d->ctx;
    return atomic_load(&((vk_ctx *)c)->validation_errors);
}

const duet_device_ops duet_vk_ops = {
    .version = DUET_DEVICE_OPS_VERSION,
    .destroy = vk_destroy,
    .get_info = vk_get_info,
    .buffer_alloc = duet_vk_buffer_alloc,
    .buffer_free = duet_vk_buffer_free,
    .buffer_size = duet_vk_buffer_size,
    .buffer_write = duet_vk_buffer_write,
    .buffer_read = duet_vk_buffer_read,
    .buffer_wrap_host = NULL, /* device memory is not the host's: copy */
    .stream_create = duet_vk_stream_create,
    .stream_destroy = duet_vk_stream_destroy,
    .stream_begin = duet_vk_stream_begin,
    .stream_submit = duet_vk_stream_submit,
    .stream_wait = duet_vk_stream_wait,
    .upload = duet_vk_upload,
    .download = duet_vk_download,
    .embed = duet_vk_embed,
    .rms_norm = duet_vk_rms_norm,
    .matmul = duet_vk_matmul,
    .rope = duet_vk_rope,
    .kv_write = duet_vk_kv_write,
    .attention = duet_vk_attention,
    .swiglu = duet_vk_swiglu,
    .add = duet_vk_add,
    .gather_rows = duet_vk_gather_rows,
    .sample = duet_vk_sample,
};
