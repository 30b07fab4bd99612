/*
 * gguf_write.c — a GGUF v3 writer into memory (see gguf_write.h).
 *
 * Metadata bytes accumulate in a growable buffer as they are added; tensor
 * infos are kept as records, because their offsets are only final once all
 * of them are known. finish() then copies everything into one allocation
 * of the exact image size.
 */
#include "gguf_write.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

#define GGUF_VERSION 3
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_KEY 65535 /* keys are length-prefixed; llama.cpp caps them at 64 KiB */

typedef struct tensor_rec {
    char *name;
    int n_dims;
    int64_t ne[DUET_GGUF_MAX_DIMS];
    duet_dtype type;
    uint64_t bytes;
    uint64_t rel_offset; /* from the start of the data section */
} tensor_rec;

struct duet_gguf_writer {
    duet_status err;     /* sticky: the first failure */
    uint32_t alignment;
    int finished;

    unsigned char *kv;   /* the key/value section as it grows */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    char **keys;         /* for the duplicate check */
    size_t keys_cap;

    duet_gguf_type arr_type; /* the array being filled, if any */
    uint64_t arr_left;
    const char *arr_key;

    tensor_rec *tensors;
    int64_t n_tensors, tensors_cap;
    uint64_t data_bytes;    /* data section size so far (aligned) */
    uint64_t data_offset;   /* of the data section in the image, after finish */
};

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

static duet_status fail(duet_gguf_writer *w, duet_status st)
{
    if (w->err == DUET_OK)
        w->err = st;
    return st;
}

static duet_status put(duet_gguf_writer *w, const void *p, size_t n)
{
    if (w->kv_len + n > w->kv_cap) {
        size_t cap = w->kv_cap ? w->kv_cap : 4096;
        while (cap < w->kv_len + n)
            cap *= 2;
        unsigned char *q = realloc(w->kv, cap);
        if (!q)
            return fail(w, duet_error(DUET_ERR_OUT_OF_MEMORY,
                                      "GGUF writer: out of memory for %zu bytes of metadata",
                                      cap));
        w->kv = q;
        w->kv_cap = cap;
    }
    memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return DUET_OK;
}

static duet_status put_u32(duet_gguf_writer *w, uint32_t v) { return put(w, &v, 4); }
static duet_status put_u64(duet_gguf_writer *w, uint64_t v) { return put(w, &v, 8); }

static duet_status put_string(duet_gguf_writer *w, const char *s, size_t len)
{
    duet_status st = put_u64(w, (uint64_t)len);
    return st ? st : put(w, s, len);
}

/* The state every call checks first: a previous failure, an unfinished
 * array, or a finished image. */
static duet_status ready(duet_gguf_writer *w, const char *what)
{
    if (w->err)
        return w->err;
    if (w->finished)
        return fail(w, duet_error(DUET_ERR_INVALID_ARG,
                                  "GGUF writer: %s after the image was finished", what));
    if (w->arr_left)
        return fail(w, duet_error(DUET_ERR_INVALID_ARG,
                                  "GGUF writer: %s while array '%s' still lacks %llu elements",
                                  what, w->arr_key, (unsigned long long)w->arr_left));
    return DUET_OK;
}

/* Start a key/value pair: the key and the value's type. */
static duet_status begin_kv(duet_gguf_writer *w, const char *key, duet_gguf_type type)
{
    duet_status st = ready(w, "a key");
    if (st)
        return st;
    size_t len = strlen(key);
    if (len == 0 || len > GGUF_MAX_KEY)
        return fail(w, duet_error(DUET_ERR_INVALID_ARG,
                                  "GGUF writer: key of %zu bytes (1..%d allowed)", len,
                                  GGUF_MAX_KEY));
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return fail(w, duet_error(DUET_ERR_INVALID_ARG, "GGUF writer: duplicate key '%s'",
                                      key));
    if (w->n_kv == w->keys_cap) {
        size_t cap = w->keys_cap ? 2 * w->keys_cap : 32;
        char **k = realloc(w->keys, cap * sizeof *k);
        if (!k)
            return fail(w, duet_error(DUET_ERR_OUT_OF_MEMORY, "GGUF writer: out of memory"));
        w->keys = k;
        w->keys_cap = cap;
    }
    if (!(w->keys[w->n_kv] = strdup(key)))
        return fail(w, duet_error(DUET_ERR_OUT_OF_MEMORY, "GGUF writer: out of memory"));
    w->n_kv++;
    if ((st = put_string(w, key, len)))
        return st;
    return put_u32(w, (uint32_t)type);
}

duet_status duet_gguf_writer_create(uint32_t alignment, duet_gguf_writer **out)
{
    *out = NULL;
    if (alignment == 0)
        alignment = GGUF_DEFAULT_ALIGNMENT;
    if (alignment & (alignment - 1))
        return duet_error(DUET_ERR_INVALID_ARG, "GGUF writer: alignment %u is not a power of two",
                          alignment);
    duet_gguf_writer *w = calloc(1, sizeof *w);
    if (!w)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "GGUF writer: out of memory");
    w->alignment = alignment;
    if (alignment != GGUF_DEFAULT_ALIGNMENT) {
        duet_status st = duet_gguf_writer_u32(w, "general.alignment", alignment);
        if (st) {
            duet_gguf_writer_free(w);
            return st;
        }
    }
    *out = w;
    return DUET_OK;
}

void duet_gguf_writer_free(duet_gguf_writer *w)
{
    if (!w)
        return;
    for (uint64_t i = 0; i < w->n_kv; i++)
        free(w->keys[i]);
    free(w->keys);
    for (int64_t i = 0; i < w->n_tensors; i++)
        free(w->tensors[i].name);
    free(w->tensors);
    free(w->kv);
    free(w);
}

duet_status duet_gguf_writer_u32(duet_gguf_writer *w, const char *key, uint32_t v)
{
    duet_status st = begin_kv(w, key, DUET_GGUF_UINT32);
    return st ? st : put_u32(w, v);
}

duet_status duet_gguf_writer_f32(duet_gguf_writer *w, const char *key, float v)
{
    duet_status st = begin_kv(w, key, DUET_GGUF_FLOAT32);
    return st ? st : put(w, &v, 4);
}

duet_status duet_gguf_writer_bool(duet_gguf_writer *w, const char *key, int v)
{
    uint8_t b = v != 0;
    duet_status st = begin_kv(w, key, DUET_GGUF_BOOL);
    return st ? st : put(w, &b, 1);
}

duet_status duet_gguf_writer_str(duet_gguf_writer *w, const char *key, const char *v)
{
    duet_status st = begin_kv(w, key, DUET_GGUF_STRING);
    return st ? st : put_string(w, v, strlen(v));
}

duet_status duet_gguf_writer_arr(duet_gguf_writer *w, const char *key, duet_gguf_type elem_type,
                                 uint64_t n)
{
    if (w->err)
        return w->err;
    if (elem_type != DUET_GGUF_STRING && elem_type != DUET_GGUF_INT32)
        return fail(w, duet_error(DUET_ERR_UNSUPPORTED,
                                  "GGUF writer: array '%s' of %s: only string and int32 arrays "
                                  "are supported",
                                  key, duet_gguf_type_name(elem_type)));
    duet_status st = begin_kv(w, key, DUET_GGUF_ARRAY);
    if (st || (st = put_u32(w, (uint32_t)elem_type)) || (st = put_u64(w, n)))
        return st;
    w->arr_type = elem_type;
    w->arr_left = n;
    w->arr_key = w->keys[w->n_kv - 1];
    return DUET_OK;
}

static duet_status arr_elem(duet_gguf_writer *w, duet_gguf_type type)
{
    if (w->err)
        return w->err;
    if (w->arr_left == 0)
        return fail(w, duet_error(DUET_ERR_INVALID_ARG,
                                  "GGUF writer: array element with no array open (or one too "
                                  "many for '%s')",
                                  w->arr_key ? w->arr_key : "-"));
    if (type != w->arr_type)
        return fail(w, duet_error(DUET_ERR_INVALID_ARG,
                                  "GGUF writer: %s element in array '%s' of %s",
                                  duet_gguf_type_name(type), w->arr_key,
                                  duet_gguf_type_name(w->arr_type)));
    w->arr_left--;
    return DUET_OK;
}

duet_status duet_gguf_writer_arr_str(duet_gguf_writer *w, const char *s, size_t len)
{
    duet_status st = arr_elem(w, DUET_GGUF_STRING);
    return st ? st : put_string(w, s, len);
}

duet_status duet_gguf_writer_arr_i32(duet_gguf_writer *w, int32_t v)
{
    duet_status st = arr_elem(w, DUET_GGUF_INT32);
    return st ? st : put(w, &v, 4);
}

duet_status duet_gguf_writer_tensor(duet_gguf_writer *w, const char *name, int n_dims,
                                    const int64_t *ne, duet_dtype type)
{
    duet_status st = ready(w, "a tensor");
    if (st)
        return st;
    if (n_dims < 1 || n_dims > DUET_GGUF_MAX_DIMS)
        return fail(w, duet_error(DUET_ERR_INVALID_ARG,
                                  "GGUF writer: tensor '%s' has %d dims (1..%d allowed)", name,
                                  n_dims, DUET_GGUF_MAX_DIMS));
    uint64_t rows = 1;
    for (int d = 1; d < n_dims; d++) {
        if (ne[d] <= 0)
            return fail(w, duet_error(DUET_ERR_INVALID_ARG,
                                      "GGUF writer: tensor '%s' dim %d is %lld", name, d,
                                      (long long)ne[d]));
        rows *= (uint64_t)ne[d];
    }
    size_t row_bytes = ne[0] > 0 ? duet_dtype_row_bytes(type, ne[0]) : 0;
    if (row_bytes == 0)
        return fail(w, duet_error(DUET_ERR_INVALID_ARG,
                                  "GGUF writer: tensor '%s': a row of %lld elements is not a "
                                  "whole number of %s blocks",
                                  name, (long long)ne[0],
                                  duet_dtype_get(type) ? duet_dtype_get(type)->name : "?"));
    for (int64_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return fail(w, duet_error(DUET_ERR_INVALID_ARG,
                                      "GGUF writer: duplicate tensor '%s'", name));
    if (w->n_tensors == w->tensors_cap) {
        int64_t cap = w->tensors_cap ? 2 * w->tensors_cap : 64;
        tensor_rec *t = realloc(w->tensors, (size_t)cap * sizeof *t);
        if (!t)
            return fail(w, duet_error(DUET_ERR_OUT_OF_MEMORY, "GGUF writer: out of memory"));
        w->tensors = t;
        w->tensors_cap = cap;
    }
    tensor_rec *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name)))
        return fail(w, duet_error(DUET_ERR_OUT_OF_MEMORY, "GGUF writer: out of memory"));
    t->n_dims = n_dims;
    for (int d = 0; d < DUET_GGUF_MAX_DIMS; d++)
        t->ne[d] = d < n_dims ? ne[d] : 1;
    t->type = type;
    t->bytes = (uint64_t)row_bytes * rows;
    t->rel_offset = w->data_bytes;
    w->data_bytes = align_up(w->data_bytes + t->bytes, w->alignment);
    w->n_tensors++;
    return DUET_OK;
}

duet_status duet_gguf_writer_status(const duet_gguf_writer *w) { return w->err; }

int64_t duet_gguf_writer_n_tensors(const duet_gguf_writer *w) { return w->n_tensors; }

uint64_t duet_gguf_writer_tensor_bytes(const duet_gguf_writer *w, int64_t i)
{
    return i >= 0 && i < w->n_tensors ? w->tensors[i].bytes : 0;
}

/* Bytes of the header and metadata, before the data section's padding. */
static uint64_t meta_bytes(const duet_gguf_writer *w)
{
    uint64_t n = 4 + 4 + 8 + 8 + w->kv_len;
    for (int64_t i = 0; i < w->n_tensors; i++)
        n += 8 + strlen(w->tensors[i].name) + 4 + 8 * (uint64_t)w->tensors[i].n_dims + 4 + 8;
    return n;
}

uint64_t duet_gguf_writer_size(const duet_gguf_writer *w)
{
    return align_up(meta_bytes(w), w->alignment) + w->data_bytes;
}

static unsigned char *emit(unsigned char *p, const void *v, size_t n)
{
    memcpy(p, v, n);
    return p + n;
}

duet_status duet_gguf_writer_finish(duet_gguf_writer *w, void **image, size_t *size)
{
    *image = NULL;
    *size = 0;
    duet_status st = ready(w, "finish");
    if (st)
        return st;
    uint64_t meta = meta_bytes(w), total = duet_gguf_writer_size(w);
    if (total > SIZE_MAX)
        return fail(w, duet_error(DUET_ERR_OUT_OF_MEMORY,
                                  "GGUF writer: image of %llu bytes exceeds the address space",
                                  (unsigned long long)total));
    /* Page-aligned, as a mapped file would be: backends may wrap or
     * register the image as device-visible memory without copying. */
    void *mem = NULL;
    if (posix_memalign(&mem, 4096, (size_t)total ? (size_t)total : 1) != 0)
        mem = NULL;
    unsigned char *img = mem;
    if (!img)
        return fail(w, duet_error(DUET_ERR_OUT_OF_MEMORY,
                                  "GGUF writer: out of memory for an image of %llu bytes",
                                  (unsigned long long)total));
    uint32_t version = GGUF_VERSION;
    uint64_t n_tensors = (uint64_t)w->n_tensors;
    unsigned char *p = emit(img, "GGUF", 4);
    p = emit(p, &version, 4);
    p = emit(p, &n_tensors, 8);
    p = emit(p, &w->n_kv, 8);
    p = emit(p, w->kv, w->kv_len);
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const tensor_rec *t = &w->tensors[i];
        uint64_t len = strlen(t->name);
        uint32_t n_dims = (uint32_t)t->n_dims, type = (uint32_t)t->type;
        p = emit(p, &len, 8);
        p = emit(p, t->name, len);
        p = emit(p, &n_dims, 4);
        p = emit(p, t->ne, 8 * (size_t)t->n_dims);
        p = emit(p, &type, 4);
        p = emit(p, &t->rel_offset, 8);
    }
    assert((uint64_t)(p - img) == meta);
    w->data_offset = align_up(meta, w->alignment);
    memset(p, 0, (size_t)(w->data_offset - meta));
    /* Zero the padding after each tensor so equal inputs give equal bytes. */
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const tensor_rec *t = &w->tensors[i];
        uint64_t end = t->rel_offset + t->bytes;
        uint64_t next = i + 1 < w->n_tensors ? w->tensors[i + 1].rel_offset : w->data_bytes;
        memset(img + w->data_offset + end, 0, (size_t)(next - end));
    }
    w->finished = 1;
    *image = img;
    *size = (size_t)total;
    return DUET_OK;
}

uint64_t duet_gguf_writer_tensor_offset(const duet_gguf_writer *w, int64_t i)
{
    assert(w->finished && i >= 0 && i < w->n_tensors);
    return w->data_offset + w->tensors[i].rel_offset;
}
