/*
 * vk_pipeline.c — one descriptor-set layout and pipeline layout shared by
 * every shader (VK_MAX_BINDINGS storage buffers + VK_PUSH_BYTES of push
 * constants), and compute pipelines created on first use, one per
 * (shader, value of specialization constant 0).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "vk_internal.h"
#include "vk_spirv.h"

static const char *const shader_names[VK_SH_COUNT] = {
    [VK_SH_ADD] = "add",
    [VK_SH_SWIGLU] = "swiglu",
    [VK_SH_RMS_NORM] = "rms_norm",
    [VK_SH_RMS_NORM_ADD] = "rms_norm_add",
    [VK_SH_GATHER_ROWS] = "gather_rows",
    [VK_SH_EMBED] = "embed",
    [VK_SH_MATMUL] = "matmul",
    [VK_SH_ROPE] = "rope",
    [VK_SH_KV_WRITE] = "kv_write",
    [VK_SH_ATTENTION] = "attention",
    [VK_SH_SAMPLE] = "sample",
    [VK_SH_MATMUL_VEC] = "matmul_vec",
    [VK_SH_MATMUL_QVEC] = "matmul_qvec",
    [VK_SH_ATTENTION_SPLIT] = "attention_split",
    [VK_SH_ATTENTION_SPLIT_SG] = "attention_split_sg",
    [VK_SH_ATTENTION_COMBINE] = "attention_combine",
};

const char *duet_vk_shader_name(vk_shader sh)
{
    return (unsigned)sh < VK_SH_COUNT && shader_names[sh] ? shader_names[sh] : "?";
}

/* ---- the on-disk pipeline cache -------------------------------------------- */

/* Where this device's pipeline cache lives: $DUET_CACHE (as the duet
 * program uses it), else $XDG_CACHE_HOME/duet, else ~/.cache/duet, then
 * vulkan/<vendor>-<device>-<cache uuid>.bin. 0 when disabled
 * (DUET_VK_PIPELINE_CACHE=0) or there is no home. dir gets the folder. */
static int cache_path(const vk_ctx *c, char *dir, size_t dcap, char *path, size_t pcap)
{
    const char *off = getenv("DUET_VK_PIPELINE_CACHE");
    if (off && strcmp(off, "0") == 0)
        return 0;
    const char *base = getenv("DUET_CACHE"), *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    int n;
    if (base && *base)
        n = snprintf(dir, dcap, "%s/vulkan", base);
    else if (xdg && *xdg)
        n = snprintf(dir, dcap, "%s/duet/vulkan", xdg);
    else if (home && *home)
        n = snprintf(dir, dcap, "%s/.cache/duet/vulkan", home);
    else
        return 0;
    if (n < 0 || (size_t)n >= dcap)
        return 0;
    char uuid[2 * VK_UUID_SIZE + 1];
    for (unsigned i = 0; i < VK_UUID_SIZE; i++)
        snprintf(uuid + 2 * i, 3, "%02x", c->caps.cache_uuid[i]);
    n = snprintf(path, pcap, "%s/%04x-%04x-%s.bin", dir, c->caps.vendor_id, c->caps.device_id,
                 uuid);
    return n > 0 && (size_t)n < pcap;
}

/* The cache's previous contents, or NULL (a missing or unreadable file just
 * means pipelines are compiled again). */
static void *cache_load(const char *path, size_t *size)
{
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    void *data = NULL;
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) > 0 && len < (64l << 20) &&
        fseek(f, 0, SEEK_SET) == 0 && (data = malloc((size_t)len)) &&
        fread(data, 1, (size_t)len, f) == (size_t)len)
        *size = (size_t)len;
    else {
        free(data);
        data = NULL;
    }
    fclose(f);
    return data;
}

static void mkdir_p(const char *dir)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            mkdir(buf, 0755);
            *p = '/';
        }
    mkdir(buf, 0755);
}

/* Write the cache next to its final name, then rename: a crash never
 * leaves half a file. Failures are not errors (it is only a cache). */
static void cache_save(vk_ctx *c)
{
    char dir[1024], path[1200], tmp[1300];
    size_t size = 0;
    if (!c->pipe_cache || !c->pipe_cache_dirty || !cache_path(c, dir, sizeof dir, path, sizeof path))
        return;
    if (c->fd.vkGetPipelineCacheData(c->dev, c->pipe_cache, &size, NULL) != VK_SUCCESS || !size)
        return;
    void *data = malloc(size);
    if (!data)
        return;
    if (c->fd.vkGetPipelineCacheData(c->dev, c->pipe_cache, &size, data) == VK_SUCCESS) {
        mkdir_p(dir);
        snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
        FILE *f = fopen(tmp, "wb");
        if (f) {
            int ok = fwrite(data, 1, size, f) == size;
            ok &= fclose(f) == 0;
            if (!ok || rename(tmp, path) != 0)
                unlink(tmp);
        }
    }
    free(data);
}

duet_status duet_vk_pipelines_init(vk_ctx *c)
{
    VkDescriptorSetLayoutBinding b[VK_MAX_BINDINGS];
    for (int i = 0; i < VK_MAX_BINDINGS; i++)
        b[i] = (VkDescriptorSetLayoutBinding){
            .binding = (uint32_t)i,
            .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
            .descriptorCount = 1,
            .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT,
        };
    VkDescriptorSetLayoutCreateInfo lci = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
        .bindingCount = VK_MAX_BINDINGS,
        .pBindings = b,
    };
    if (c->caps.max_storage_per_stage < VK_MAX_BINDINGS)
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "Vulkan: %s allows %u storage buffers per shader; duet needs %d",
                          c->caps.name, c->caps.max_storage_per_stage, VK_MAX_BINDINGS);
    VkResult vr = c->fd.vkCreateDescriptorSetLayout(c->dev, &lci, NULL, &c->set_layout);
    if (vr != VK_SUCCESS)
        return duet_error(duet_vk_status(vr), "Vulkan: creating the descriptor set layout: %s",
                          duet_vk_result_name(vr));
    VkPushConstantRange pcr = {VK_SHADER_STAGE_COMPUTE_BIT, 0, VK_PUSH_BYTES};
    VkPipelineLayoutCreateInfo pli = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
        .setLayoutCount = 1,
        .pSetLayouts = &c->set_layout,
        .pushConstantRangeCount = 1,
        .pPushConstantRanges = &pcr,
    };
    vr = c->fd.vkCreatePipelineLayout(c->dev, &pli, NULL, &c->pipe_layout);
    if (vr != VK_SUCCESS)
        return duet_error(duet_vk_status(vr), "Vulkan: creating the pipeline layout: %s",
                          duet_vk_result_name(vr));
    /* The driver checks the data's header (device, driver, UUID) and
     * starts empty when it does not match. */
    char dir[1024], path[1200];
    size_t size = 0;
    void *data = cache_path(c, dir, sizeof dir, path, sizeof path) ? cache_load(path, &size) : NULL;
    VkPipelineCacheCreateInfo pcci = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO,
        .initialDataSize = size,
        .pInitialData = data,
    };
    vr = c->fd.vkCreatePipelineCache(c->dev, &pcci, NULL, &c->pipe_cache);
    if (vr != VK_SUCCESS && data) {
        pcci.initialDataSize = 0;
        pcci.pInitialData = NULL;
        vr = c->fd.vkCreatePipelineCache(c->dev, &pcci, NULL, &c->pipe_cache);
    }
    free(data);
    if (vr != VK_SUCCESS)
        c->pipe_cache = VK_NULL_HANDLE; /* run without one */
    return DUET_OK;
}

void duet_vk_pipelines_free(vk_ctx *c)
{
    cache_save(c);
    if (c->pipe_cache)
        c->fd.vkDestroyPipelineCache(c->dev, c->pipe_cache, NULL);
    for (int sh = 0; sh < VK_SH_COUNT; sh++) {
        for (int v = 0; v < VK_SPEC_VALUES; v++)
            if (c->pipes[sh][v])
                c->fd.vkDestroyPipeline(c->dev, c->pipes[sh][v], NULL);
        if (c->modules[sh])
            c->fd.vkDestroyShaderModule(c->dev, c->modules[sh], NULL);
    }
    if (c->pipe_layout)
        c->fd.vkDestroyPipelineLayout(c->dev, c->pipe_layout, NULL);
    if (c->set_layout)
        c->fd.vkDestroyDescriptorSetLayout(c->dev, c->set_layout, NULL);
}

/* ---- which bindings a shader reads and writes --------------------------------- */

enum {
    SPV_MAGIC = 0x07230203,
    OP_TYPE_POINTER = 32,
    OP_VARIABLE = 59,
    OP_DECORATE = 71,
    OP_MEMBER_DECORATE = 72,
    DEC_NON_WRITABLE = 24,
    DEC_BINDING = 33,
    SC_UNIFORM = 2,
    SC_STORAGE_BUFFER = 12,
};

/* A storage buffer is read-only when its variable or every member of its
 * block is NonWritable (glslang puts `readonly` on the members). The
 * validation layer's synchronization checks read the same decorations, so
 * the hazard tracking and the checker agree on what a dispatch writes. */
int duet_vk_spirv_bindings(const uint32_t *w, size_t n, uint8_t *used, uint8_t *written)
{
    *used = *written = 0;
    if (n < 5 || w[0] != SPV_MAGIC || w[3] == 0 || w[3] > (1u << 20))
        return 0;
    uint32_t bound = w[3];
    /* Per id: binding + 1 (0 = none), pointee, NonWritable, members seen
     * and members NonWritable (for block types). */
    uint32_t *binding = calloc(bound, sizeof *binding), *pointee = calloc(bound, sizeof *pointee);
    uint32_t *members = calloc(bound, sizeof *members);
    uint32_t *ro_members = calloc(bound, sizeof *ro_members);
    uint8_t *ro = calloc(bound, 1);
    int ok = binding && pointee && members && ro_members && ro;
    for (size_t i = 5; ok && i < n;) {
        uint32_t len = w[i] >> 16, op = w[i] & 0xffff;
        if (len == 0 || i + len > n) {
            ok = 0;
            break;
        }
        const uint32_t *a = &w[i + 1];
        if (op == OP_DECORATE && len >= 3 && a[0] < bound) {
            if (a[1] == DEC_BINDING && len >= 4)
                binding[a[0]] = a[2] + 1;
            if (a[1] == DEC_NON_WRITABLE)
                ro[a[0]] = 1;
        } else if (op == OP_MEMBER_DECORATE && len >= 4 && a[0] < bound) {
            if (a[1] + 1 > members[a[0]])
                members[a[0]] = a[1] + 1;
            if (a[2] == DEC_NON_WRITABLE)
                ro_members[a[0]]++;
        } else if (op == OP_TYPE_POINTER && len >= 4 && a[0] < bound) {
            pointee[a[0]] = a[2];
        }
        i += len;
    }
    /* Variables come after the decorations and types they refer to. */
    for (size_t i = 5; ok && i < n; i += w[i] >> 16) {
        uint32_t len = w[i] >> 16, op = w[i] & 0xffff;
        const uint32_t *a = &w[i + 1];
        if (op != OP_VARIABLE || len < 4 || a[0] >= bound || a[1] >= bound)
            continue;
        if ((a[2] != SC_STORAGE_BUFFER && a[2] != SC_UNIFORM) || !binding[a[1]])
            continue;
        uint32_t b = binding[a[1]] - 1, type = pointee[a[0]];
        if (b >= 8 || type >= bound)
            continue;
        int readonly = ro[a[1]] || ro[type] ||
                       (members[type] > 0 && ro_members[type] >= members[type]);
        *used |= (uint8_t)(1u << b);
        if (!readonly)
            *written |= (uint8_t)(1u << b);
    }
    free(binding), free(pointee), free(members), free(ro_members), free(ro);
    if (!ok)
        *used = *written = 0;
    return ok;
}

static duet_status module_get(vk_ctx *c, vk_shader sh, VkShaderModule *out)
{
    if (c->modules[sh]) {
        *out = c->modules[sh];
        return DUET_OK;
    }
    const duet_vk_spirv *spv = NULL;
    for (size_t i = 0; i < duet_vk_spirv_count && !spv; i++)
        if (strcmp(duet_vk_spirv_table[i].name, shader_names[sh]) == 0)
            spv = &duet_vk_spirv_table[i];
    if (!spv)
        return duet_error(DUET_ERR_INTERNAL, "Vulkan: no embedded SPIR-V for shader '%s'",
                          shader_names[sh]);
    /* Unreadable SPIR-V: assume every binding is read and written. */
    if (!duet_vk_spirv_bindings(spv->words, spv->n_words, &c->binds_used[sh],
                                &c->binds_written[sh]))
        c->binds_used[sh] = c->binds_written[sh] = 0xff;
    VkShaderModuleCreateInfo smci = {
        .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
        .codeSize = spv->n_words * 4,
        .pCode = spv->words,
    };
    VkResult vr = c->fd.vkCreateShaderModule(c->dev, &smci, NULL, &c->modules[sh]);
    if (vr != VK_SUCCESS) {
        c->modules[sh] = VK_NULL_HANDLE;
        return duet_error(duet_vk_status(vr),
                          "Vulkan: creating the shader module for op '%s' on %s: %s",
                          shader_names[sh], c->caps.name, duet_vk_result_name(vr));
    }
    *out = c->modules[sh];
    return DUET_OK;
}

duet_status duet_vk_pipeline_get(vk_ctx *c, vk_shader sh, uint32_t spec, VkPipeline *out)
{
    duet_status rc = DUET_OK;
    if (spec >= VK_SPEC_VALUES)
        return duet_error(DUET_ERR_INTERNAL, "Vulkan: specialization %u of '%s' out of range",
                          spec, shader_names[sh]);
    pthread_mutex_lock(&c->pipe_lock);
    if (c->pipes[sh][spec])
        goto out_unlock;
    VkShaderModule module = VK_NULL_HANDLE;
    if ((rc = module_get(c, sh, &module)))
        goto out_unlock;
    /* Constant 0: a type (low 5 bits); constant 1: the kernel variant. */
    uint32_t values[2] = {spec % 32, spec / 32};
    VkSpecializationMapEntry entries[2] = {{0, 0, sizeof(uint32_t)},
                                           {1, sizeof(uint32_t), sizeof(uint32_t)}};
    VkSpecializationInfo si = {2, entries, sizeof values, values};
    VkComputePipelineCreateInfo cpci = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {
            .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
            .stage = VK_SHADER_STAGE_COMPUTE_BIT,
            .module = module,
            .pName = "main",
            .pSpecializationInfo = &si,
        },
        .layout = c->pipe_layout,
    };
    VkResult vr;
    /* The fault names an op: its shader and the shaders of its other paths
     * ("attention" also hits attention_split, attention_combine). */
    size_t fl = strlen(c->fault.shader);
    if (c->fault.kind == VK_FAULT_PIPELINE &&
        (!fl || (strncmp(c->fault.shader, shader_names[sh], fl) == 0 &&
                 (shader_names[sh][fl] == 0 || shader_names[sh][fl] == '_'))))
        vr = VK_ERROR_INITIALIZATION_FAILED; /* DUET_VK_FAULT=pipeline (tests) */
    else
        vr = c->fd.vkCreateComputePipelines(c->dev, c->pipe_cache, 1, &cpci, NULL,
                                            &c->pipes[sh][spec]);
    c->pipe_cache_dirty = 1;
    if (vr != VK_SUCCESS) {
        c->pipes[sh][spec] = VK_NULL_HANDLE;
        rc = duet_error(duet_vk_status(vr),
                        "Vulkan: creating the compute pipeline for op '%s' (variant %u) on %s: "
                        "%s",
                        shader_names[sh], spec, c->caps.name, duet_vk_result_name(vr));
    }
out_unlock:
    *out = c->pipes[sh][spec];
    pthread_mutex_unlock(&c->pipe_lock);
    return rc;
}
