/*
 * vk_loader.c — dlopen the Vulkan loader and fill function tables.
 */
#include "vk_loader.h"

#include <dlfcn.h>
#include <string.h>

#include "error.h"

duet_status duet_vk_loader_open(duet_vk_loader *l)
{
    memset(l, 0, sizeof *l);
    l->lib = dlopen("libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!l->lib)
        return duet_error(DUET_ERR_UNSUPPORTED, "Vulkan: not available (%s)", dlerror());
    /* dlsym returns void *; converting it to a function pointer is what
     * POSIX requires to work. */
    void *sym = dlsym(l->lib, "vkGetInstanceProcAddr");
    memcpy(&l->vkGetInstanceProcAddr, &sym, sizeof sym);
    if (!l->vkGetInstanceProcAddr) {
        duet_vk_loader_close(l);
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "Vulkan: not available (libvulkan.so.1 has no vkGetInstanceProcAddr)");
    }
#define LOAD_GLOBAL(name) l->name = (PFN_##name)l->vkGetInstanceProcAddr(NULL, #name);
    DUET_VK_GLOBAL_FNS(LOAD_GLOBAL)
#undef LOAD_GLOBAL
    if (!l->vkCreateInstance || !l->vkEnumerateInstanceLayerProperties ||
        !l->vkEnumerateInstanceExtensionProperties) {
        duet_vk_loader_close(l);
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "Vulkan: not available (the loader lacks vkCreateInstance)");
    }
    return DUET_OK;
}

void duet_vk_loader_close(duet_vk_loader *l)
{
    if (l && l->lib)
        dlclose(l->lib);
    if (l)
        memset(l, 0, sizeof *l);
}

duet_status duet_vk_instance_fns_load(const duet_vk_loader *l, VkInstance inst,
                                      duet_vk_instance_fns *out)
{
    memset(out, 0, sizeof *out);
#define LOAD_INST(name)                                                                    \
    out->name = (PFN_##name)l->vkGetInstanceProcAddr(inst, #name);                         \
    if (!out->name)                                                                        \
        return duet_error(DUET_ERR_UNSUPPORTED, "Vulkan: the driver lacks %s", #name);
    DUET_VK_INSTANCE_FNS(LOAD_INST)
#undef LOAD_INST
#define LOAD_OPT(name) out->name = (PFN_##name)l->vkGetInstanceProcAddr(inst, #name);
    DUET_VK_INSTANCE_OPTIONAL_FNS(LOAD_OPT)
#undef LOAD_OPT
    return DUET_OK;
}

duet_status duet_vk_device_fns_load(const duet_vk_instance_fns *fi, VkDevice dev,
                                    duet_vk_device_fns *out)
{
    memset(out, 0, sizeof *out);
#define LOAD_DEV(name)                                                                     \
    out->name = (PFN_##name)fi->vkGetDeviceProcAddr(dev, #name);                           \
    if (!out->name)                                                                        \
        return duet_error(DUET_ERR_UNSUPPORTED, "Vulkan: the device lacks %s", #name);
    DUET_VK_DEVICE_FNS(LOAD_DEV)
#undef LOAD_DEV
    return DUET_OK;
}

const char *duet_vk_result_name(VkResult r)
{
    switch (r) {
    case VK_SUCCESS: return "VK_SUCCESS";
    case VK_NOT_READY: return "VK_NOT_READY";
    case VK_TIMEOUT: return "VK_TIMEOUT";
    case VK_INCOMPLETE: return "VK_INCOMPLETE";
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED: return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST: return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_MEMORY_MAP_FAILED: return "VK_ERROR_MEMORY_MAP_FAILED";
    case VK_ERROR_LAYER_NOT_PRESENT: return "VK_ERROR_LAYER_NOT_PRESENT";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "VK_ERROR_EXTENSION_NOT_PRESENT";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "VK_ERROR_INCOMPATIBLE_DRIVER";
    case VK_ERROR_TOO_MANY_OBJECTS: return "VK_ERROR_TOO_MANY_OBJECTS";
    case VK_ERROR_FRAGMENTED_POOL: return "VK_ERROR_FRAGMENTED_POOL";
    case VK_ERROR_OUT_OF_POOL_MEMORY: return "VK_ERROR_OUT_OF_POOL_MEMORY";
    default: return "VkResult error";
    }
}

duet_status duet_vk_status(VkResult r)
{
    switch (r) {
    case VK_SUCCESS: return DUET_OK;
    case VK_ERROR_OUT_OF_HOST_MEMORY:
    case VK_ERROR_OUT_OF_DEVICE_MEMORY:
    case VK_ERROR_OUT_OF_POOL_MEMORY:
    case VK_ERROR_TOO_MANY_OBJECTS: return DUET_ERR_OUT_OF_MEMORY;
    case VK_ERROR_INCOMPATIBLE_DRIVER:
    case VK_ERROR_LAYER_NOT_PRESENT:
    case VK_ERROR_EXTENSION_NOT_PRESENT:
    case VK_ERROR_FEATURE_NOT_PRESENT: return DUET_ERR_UNSUPPORTED;
    default: return DUET_ERR_DEVICE;
    }
}
