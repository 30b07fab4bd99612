/*
 * vk_spirv.h — the SPIR-V modules embedded at build time
 * (shaders/embed_spirv.cmake generates their definitions).
 */
#ifndef DUET_VK_SPIRV_H
#define DUET_VK_SPIRV_H

#include <stddef.h>
#include <stdint.h>

typedef struct duet_vk_spirv {
    const char *name;      /* the .comp file's stem: "matmul" */
    const uint32_t *words;
    size_t n_words;
} duet_vk_spirv;

extern const duet_vk_spirv duet_vk_spirv_table[];
extern const size_t duet_vk_spirv_count;

#endif
