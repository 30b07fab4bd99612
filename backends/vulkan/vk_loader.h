/*
 * vk_loader.h — the Vulkan loader of duet's own: dlopen("libvulkan.so.1")
 * and function tables for one instance and one device. No global function
 * pointers and no -lvulkan, so a binary without a Vulkan driver still
 * starts and `--device auto` moves on (the driver stub problem).
 */
#ifndef DUET_VK_LOADER_H
#define DUET_VK_LOADER_H

#ifndef VK_NO_PROTOTYPES
#define VK_NO_PROTOTYPES
#endif
#include <vulkan/vulkan.h>

#include "duet.h"

/* Global-level entry points (no instance yet). */
#define DUET_VK_GLOBAL_FNS(X)                                                              \
    X(vkCreateInstance)                                                                    \
    X(vkEnumerateInstanceLayerProperties)                                                  \
    X(vkEnumerateInstanceExtensionProperties)                                              \
    X(vkEnumerateInstanceVersion)

/* Instance-level entry points; the last (debug utils) may be NULL. */
#define DUET_VK_INSTANCE_FNS(X)                                                            \
    X(vkDestroyInstance)                                                                   \
    X(vkEnumeratePhysicalDevices)                                                          \
    X(vkGetPhysicalDeviceProperties)                                                       \
    X(vkGetPhysicalDeviceProperties2)                                                      \
    X(vkGetPhysicalDeviceFeatures2)                                                        \
    X(vkGetPhysicalDeviceMemoryProperties)                                                 \
    X(vkGetPhysicalDeviceQueueFamilyProperties)                                            \
    X(vkEnumerateDeviceExtensionProperties)                                                \
    X(vkCreateDevice)                                                                      \
    X(vkGetDeviceProcAddr)
#define DUET_VK_INSTANCE_OPTIONAL_FNS(X)                                                   \
    X(vkCreateDebugUtilsMessengerEXT)                                                      \
    X(vkDestroyDebugUtilsMessengerEXT)

/* Device-level entry points. */
#define DUET_VK_DEVICE_FNS(X)                                                              \
    X(vkDestroyDevice)                                                                     \
    X(vkGetDeviceQueue)                                                                    \
    X(vkDeviceWaitIdle)                                                                    \
    X(vkCreateBuffer)                                                                      \
    X(vkDestroyBuffer)                                                                     \
    X(vkGetBufferMemoryRequirements)                                                       \
    X(vkAllocateMemory)                                                                    \
    X(vkFreeMemory)                                                                        \
    X(vkBindBufferMemory)                                                                  \
    X(vkMapMemory)                                                                         \
    X(vkUnmapMemory)                                                                       \
    X(vkCreateShaderModule)                                                                \
    X(vkDestroyShaderModule)                                                               \
    X(vkCreateDescriptorSetLayout)                                                         \
    X(vkDestroyDescriptorSetLayout)                                                        \
    X(vkCreatePipelineLayout)                                                              \
    X(vkDestroyPipelineLayout)                                                             \
    X(vkCreateComputePipelines)                                                            \
    X(vkCreatePipelineCache)                                                               \
    X(vkDestroyPipelineCache)                                                              \
    X(vkGetPipelineCacheData)                                                              \
    X(vkDestroyPipeline)                                                                   \
    X(vkCreateDescriptorPool)                                                              \
    X(vkDestroyDescriptorPool)                                                             \
    X(vkResetDescriptorPool)                                                               \
    X(vkAllocateDescriptorSets)                                                            \
    X(vkUpdateDescriptorSets)                                                              \
    X(vkCreateCommandPool)                                                                 \
    X(vkDestroyCommandPool)                                                                \
    X(vkResetCommandPool)                                                                  \
    X(vkAllocateCommandBuffers)                                                            \
    X(vkBeginCommandBuffer)                                                                \
    X(vkEndCommandBuffer)                                                                  \
    X(vkCmdBindPipeline)                                                                   \
    X(vkCmdBindDescriptorSets)                                                             \
    X(vkCmdPushConstants)                                                                  \
    X(vkCmdDispatch)                                                                       \
    X(vkCmdCopyBuffer)                                                                     \
    X(vkCmdFillBuffer)                                                                     \
    X(vkCmdPipelineBarrier)                                                                \
    X(vkQueueSubmit)                                                                       \
    X(vkCreateFence)                                                                       \
    X(vkDestroyFence)                                                                      \
    X(vkResetFences)                                                                       \
    X(vkWaitForFences)                                                                     \
    X(vkGetFenceStatus)

#define DUET_VK_DECLARE(name) PFN_##name name;

typedef struct duet_vk_loader {
    void *lib; /* dlopen handle */
    PFN_vkGetInstanceProcAddr vkGetInstanceProcAddr;
    DUET_VK_GLOBAL_FNS(DUET_VK_DECLARE)
} duet_vk_loader;

typedef struct duet_vk_instance_fns {
    DUET_VK_INSTANCE_FNS(DUET_VK_DECLARE)
    DUET_VK_INSTANCE_OPTIONAL_FNS(DUET_VK_DECLARE)
} duet_vk_instance_fns;

typedef struct duet_vk_device_fns {
    DUET_VK_DEVICE_FNS(DUET_VK_DECLARE)
} duet_vk_device_fns;

/* Open the system's Vulkan loader. DUET_ERR_UNSUPPORTED "Vulkan: not
 * available (...)" when there is none; on failure *l is zeroed. */
duet_status duet_vk_loader_open(duet_vk_loader *l);
/* NULL-safe; closes the library (after every instance is destroyed). */
void duet_vk_loader_close(duet_vk_loader *l);

/* Fill the instance table; DUET_ERR_UNSUPPORTED naming the first missing
 * required entry point. */
duet_status duet_vk_instance_fns_load(const duet_vk_loader *l, VkInstance inst,
                                      duet_vk_instance_fns *out);
/* Fill the device table through vkGetDeviceProcAddr. */
duet_status duet_vk_device_fns_load(const duet_vk_instance_fns *fi, VkDevice dev,
                                    duet_vk_device_fns *out);

/* "VK_ERROR_OUT_OF_DEVICE_MEMORY" etc. for messages. */
const char *duet_vk_result_name(VkResult r);

/* The duet_status a VkResult maps to (device memory -> OUT_OF_MEMORY,
 * device lost -> DEVICE, the rest -> DEVICE). */
duet_status duet_vk_status(VkResult r);

#endif
