/*
 * gguf.h — a bounds-checked reader of GGUF files (versions 2 and 3).
 *
 * The file is mmapped read-only; keys, strings and tensor data are returned
 * as pointers into the mapping and stay valid until duet_gguf_close().
 * Every read during parsing is checked against the file size: a truncated
 * or malicious file fails with DUET_ERR_FORMAT and one message naming the
 * field and its byte offset ("GGUF: tensor info 12 ('blk.0.attn_q.weight'):
 * n_dims 9 at offset 1234 exceeds 4"), never a crash or an out-of-bounds
 * read. Tensor data ranges are checked against the file as well.
 *
 * Strings in GGUF are length-prefixed, not NUL-terminated; duet_gguf_str
 * carries the length. Keys are compared byte for byte.
 */
#ifndef DUET_GGUF_H
#define DUET_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "duet.h"
#include "dtype.h"

typedef struct duet_gguf duet_gguf;

typedef enum duet_gguf_type {
    DUET_GGUF_UINT8 = 0,
    DUET_GGUF_INT8 = 1,
    DUET_GGUF_UINT16 = 2,
    DUET_GGUF_INT16 = 3,
    DUET_GGUF_UINT32 = 4,
    DUET_GGUF_INT32 = 5,
    DUET_GGUF_FLOAT32 = 6,
    DUET_GGUF_BOOL = 7,
    DUET_GGUF_STRING = 8,
    DUET_GGUF_ARRAY = 9,
    DUET_GGUF_UINT64 = 10,
    DUET_GGUF_INT64 = 11,
    DUET_GGUF_FLOAT64 = 12,
} duet_gguf_type;

typedef struct duet_gguf_str {
    const char *ptr; /* into the mapping; not NUL-terminated */
    size_t len;
} duet_gguf_str;

typedef struct duet_gguf_kv {
    duet_gguf_str key;
    duet_gguf_type type;      /* of the value; ARRAY for arrays */
    duet_gguf_type elem_type; /* arrays only: type of the elements */
    uint64_t n_elems;         /* arrays only */
    const void *data;         /* scalars and numeric arrays: the raw
                                 little-endian value(s) in the mapping */
    const duet_gguf_str *strs; /* STRING value: strs[0]; string arrays:
                                  strs[0..n_elems) (owned by the reader) */
    uint64_t offset;          /* byte offset of the value in the file */
} duet_gguf_kv;

#define DUET_GGUF_MAX_DIMS 4

typedef struct duet_gguf_tensor {
    duet_gguf_str name;
    int n_dims;
    int64_t ne[DUET_GGUF_MAX_DIMS]; /* ne[0] is the contiguous dimension
                                       (a row); unused dims are 1 */
    duet_dtype type;
    uint64_t offset;  /* from the start of the data section */
    const void *data; /* into the mapping */
    size_t nbytes;
} duet_gguf_tensor;

/* Open and parse a file. On failure *out is NULL. */
duet_status duet_gguf_open(const char *path, duet_gguf **out);

/* Parse a GGUF image already in memory (tests, fuzzing). The memory must
 * outlive the reader; it is not copied. name is used in messages. */
duet_status duet_gguf_open_memory(const void *data, size_t size, const char *name,
                                  duet_gguf **out);

void duet_gguf_close(duet_gguf *g);

uint32_t duet_gguf_version(const duet_gguf *g);
uint32_t duet_gguf_alignment(const duet_gguf *g);
size_t duet_gguf_file_size(const duet_gguf *g);
/* Base of the mapping and of the tensor data section, for wrapping the
 * weights as one device buffer without copying. */
const void *duet_gguf_base(const duet_gguf *g);
uint64_t duet_gguf_data_offset(const duet_gguf *g);

int64_t duet_gguf_n_kv(const duet_gguf *g);
const duet_gguf_kv *duet_gguf_kv_at(const duet_gguf *g, int64_t i);
/* NULL when the key is absent. */
const duet_gguf_kv *duet_gguf_find(const duet_gguf *g, const char *key);

/* Typed getters. Integers of any width convert when the value fits;
 * FLOAT32/FLOAT64 convert to float. Missing key, wrong type or a value
 * out of range: DUET_ERR_FORMAT naming the key. The *_or variants return
 * def when the key is absent (but still fail on a wrong type). */
duet_status duet_gguf_get_u32(const duet_gguf *g, const char *key, uint32_t *out);
duet_status duet_gguf_get_u32_or(const duet_gguf *g, const char *key, uint32_t def, uint32_t *out);
duet_status duet_gguf_get_f32(const duet_gguf *g, const char *key, float *out);
duet_status duet_gguf_get_f32_or(const duet_gguf *g, const char *key, float def, float *out);
duet_status duet_gguf_get_bool_or(const duet_gguf *g, const char *key, int def, int *out);
duet_status duet_gguf_get_str(const duet_gguf *g, const char *key, duet_gguf_str *out);
/* An array of elem_type (checked); its length is (*out)->n_elems. */
duet_status duet_gguf_get_arr(const duet_gguf *g, const char *key, duet_gguf_type elem_type,
                              const duet_gguf_kv **out);

/* Read element i of a numeric array kv as int64 / double (any width). */
int64_t duet_gguf_arr_int(const duet_gguf_kv *kv, uint64_t i);
double duet_gguf_arr_float(const duet_gguf_kv *kv, uint64_t i);

int64_t duet_gguf_n_tensors(const duet_gguf *g);
const duet_gguf_tensor *duet_gguf_tensor_at(const duet_gguf *g, int64_t i);
/* NULL when absent. */
const duet_gguf_tensor *duet_gguf_find_tensor(const duet_gguf *g, const char *name);

/* Name of a value type ("uint32", "array"), for messages. */
const char *duet_gguf_type_name(uint32_t type);

/* Compare a GGUF string with a C string. */
int duet_gguf_str_eq(duet_gguf_str s, const char *c);

#endif
