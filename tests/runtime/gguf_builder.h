/*
 * gguf_builder.h — writes GGUF images into memory for tests.
 *
 * Deliberately dumb: it writes exactly the bytes it is told to (any count,
 * type or length, valid or not), so tests can forge malformed files. Every
 * writer returns the byte offset it wrote at, so a test can patch a field
 * later. Allocation failure aborts the test (this is test code).
 */
#ifndef DUET_TESTS_GGUF_BUILDER_H
#define DUET_TESTS_GGUF_BUILDER_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct gguf_builder {
    uint8_t *p;
    size_t n, cap;
} gguf_builder;

static inline size_t gb_bytes(gguf_builder *b, const void *data, size_t n)
{
    size_t at = b->n;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            fprintf(stderr, "gguf_builder: out of memory\n");
            abort();
        }
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, data, n);
    b->n += n;
    return at;
}

/* Little-endian integers of n bytes. */
static inline size_t gb_le(gguf_builder *b, uint64_t v, int n)
{
    uint8_t t[8];
    for (int i = 0; i < n; i++)
        t[i] = (uint8_t)(v >> (8 * i));
    return gb_bytes(b, t, (size_t)n);
}

static inline size_t gb_u8(gguf_builder *b, uint8_t v) { return gb_le(b, v, 1); }
static inline size_t gb_u16(gguf_builder *b, uint16_t v) { return gb_le(b, v, 2); }
static inline size_t gb_u32(gguf_builder *b, uint32_t v) { return gb_le(b, v, 4); }
static inline size_t gb_u64(gguf_builder *b, uint64_t v) { return gb_le(b, v, 8); }

static inline size_t gb_f32(gguf_builder *b, float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return gb_u32(b, bits);
}

static inline size_t gb_f64(gguf_builder *b, double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    return gb_u64(b, bits);
}

/* A GGUF string of n bytes (may contain NULs); returns the offset of its
 * length field. */
static inline size_t gb_strn(gguf_builder *b, const char *s, size_t n)
{
    size_t at = gb_u64(b, n);
    gb_bytes(b, s, n);
    return at;
}

static inline size_t gb_str(gguf_builder *b, const char *s) { return gb_strn(b, s, strlen(s)); }

static inline size_t gb_header(gguf_builder *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    size_t at = gb_bytes(b, "GGUF", 4);
    gb_u32(b, version);
    gb_u64(b, n_tensors);
    gb_u64(b, n_kv);
    return at;
}

/* Key and value type; the caller writes the value. Returns the offset of
 * the value type field. */
static inline size_t gb_key(gguf_builder *b, const char *key, uint32_t type)
{
    gb_str(b, key);
    return gb_u32(b, type);
}

/* Array header (after gb_key(..., ARRAY)); returns the offset of the
 * element type field. */
static inline size_t gb_arr(gguf_builder *b, uint32_t elem_type, uint64_t n)
{
    size_t at = gb_u32(b, elem_type);
    gb_u64(b, n);
    return at;
}

/* Returns the offset of the name's length field. */
static inline size_t gb_tensor_info(gguf_builder *b, const char *name, uint32_t n_dims,
                             const int64_t *ne, uint32_t type, uint64_t offset)
{
    size_t at = gb_str(b, name);
    gb_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++)
        gb_u64(b, (uint64_t)ne[d]);
    gb_u32(b, type);
    gb_u64(b, offset);
    return at;
}

static inline void gb_pad(gguf_builder *b, size_t align)
{
    while (b->n % align)
        gb_u8(b, 0);
}

static inline void gb_put_le(gguf_builder *b, size_t at, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        b->p[at + (size_t)i] = (uint8_t)(v >> (8 * i));
}

static inline void gb_free(gguf_builder *b)
{
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

#endif
