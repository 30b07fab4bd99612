/*
 * gguf_write.h — composing a valid GGUF v3 image in memory.
 *
 * Two phases, because a GGUF header states its counts before its contents
 * and the tensor data follows every piece of metadata:
 *   1. add key/value pairs and tensor infos (shape and type only); the
 *      writer keeps the metadata bytes and computes each tensor's aligned
 *      offset;
 *   2. duet_gguf_writer_finish() allocates the whole image, writes the
 *      header, metadata and zeroed padding, and leaves each tensor's data
 *      region for the caller to fill through duet_gguf_writer_tensor_offset().
 *
 * Errors are sticky: after the first failure every call returns the same
 * status without doing anything, so a caller may add many keys and check
 * once, at finish (the message of the first failure is the one kept in
 * duet_last_error()).
 *
 * Unlike tests/runtime/gguf_builder.h, which forges arbitrary bytes, this
 * writer only produces well-formed files: array lengths are checked against
 * the elements added, tensor rows must be whole blocks of their type, and
 * names must be unique.
 */
#ifndef DUET_GGUF_WRITE_H
#define DUET_GGUF_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "duet.h"
#include "dtype.h"
#include "gguf.h"

typedef struct duet_gguf_writer duet_gguf_writer;

/* alignment: of the data section and of every tensor (a power of two;
 * 0 = GGUF's default of 32). It is recorded as general.alignment when it
 * is not the default. On failure *out is NULL. */
duet_status duet_gguf_writer_create(uint32_t alignment, duet_gguf_writer **out);
void duet_gguf_writer_free(duet_gguf_writer *w);

/* Scalar values. The key and string are copied. */
duet_status duet_gguf_writer_u32(duet_gguf_writer *w, const char *key, uint32_t v);
duet_status duet_gguf_writer_f32(duet_gguf_writer *w, const char *key, float v);
duet_status duet_gguf_writer_bool(duet_gguf_writer *w, const char *key, int v);
duet_status duet_gguf_writer_str(duet_gguf_writer *w, const char *key, const char *v);

/* An array of n elements of elem_type (a numeric type or STRING), whose
 * elements follow with the calls below, exactly n of them and of that type
 * (checked when the next key, tensor or finish comes). */
duet_status duet_gguf_writer_arr(duet_gguf_writer *w, const char *key, duet_gguf_type elem_type,
                                 uint64_t n);
duet_status duet_gguf_writer_arr_str(duet_gguf_writer *w, const char *s, size_t len);
duet_status duet_gguf_writer_arr_i32(duet_gguf_writer *w, int32_t v);

/* Declare a tensor: ne[0] is the row length (the contiguous dimension),
 * n_dims in 1..4. Its index (0, 1, ...) is the order of declaration. */
duet_status duet_gguf_writer_tensor(duet_gguf_writer *w, const char *name, int n_dims,
                                    const int64_t *ne, duet_dtype type);

/* The first failure so far, or DUET_OK. */
duet_status duet_gguf_writer_status(const duet_gguf_writer *w);

int64_t duet_gguf_writer_n_tensors(const duet_gguf_writer *w);
/* Bytes of tensor i's data. */
uint64_t duet_gguf_writer_tensor_bytes(const duet_gguf_writer *w, int64_t i);
/* Total bytes the finished image will have (metadata + aligned data). */
uint64_t duet_gguf_writer_size(const duet_gguf_writer *w);

/* Allocate and lay out the image: *image is page-aligned heap memory
 * (the caller releases it with free()),
 * *size its bytes. Tensor data is left uninitialized for the caller to
 * fill; everything else, padding included, is written. On failure *image
 * is NULL. No keys or tensors may be added afterwards. */
duet_status duet_gguf_writer_finish(duet_gguf_writer *w, void **image /* OUT */,
                                    size_t *size /* OUT */);
/* Byte offset of tensor i's data from the start of the image (valid after
 * a successful finish). */
uint64_t duet_gguf_writer_tensor_offset(const duet_gguf_writer *w, int64_t i);

#endif
