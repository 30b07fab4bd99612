/*
 * dtype.h — element and weight types shared by the runtime and every backend.
 *
 * The numeric values are GGUF's (ggml_type) so a tensor's type in a GGUF file
 * maps to duet_dtype without a table. Quantized types are stored in blocks:
 * a row of K elements is K / block_elems blocks of block_bytes bytes.
 *
 * Block layouts (little-endian, as GGUF stores them; d, m are IEEE halves):
 *   Q4_0 (32 elems, 18 B): d; qs[16]        x = d * (q - 8), q = 4-bit
 *   Q4_1 (32 elems, 20 B): d, m; qs[16]     x = d * q + m
 *   Q8_0 (32 elems, 34 B): d; qs[32] int8   x = d * q
 *   Q4_K (256, 144 B), Q5_K (256, 176 B), Q6_K (256, 210 B): the K-quants,
 *   super-blocks with 6-bit (Q4_K/Q5_K) or 8-bit (Q6_K) sub-block scales.
 *   In Q4_0/Q4_1, byte j of qs holds element j (low nibble) and j+16 (high).
 */
#ifndef DUET_DTYPE_H
#define DUET_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum duet_dtype {
    DUET_F32 = 0,
    DUET_F16 = 1,
    DUET_Q4_0 = 2,
    DUET_Q4_1 = 3,
    DUET_Q8_0 = 8,
    DUET_Q4_K = 12,
    DUET_Q5_K = 13,
    DUET_Q6_K = 14,
    DUET_I32 = 26,
    DUET_BF16 = 30,
} duet_dtype;

typedef struct duet_dtype_info {
    const char *name;   /* "Q4_1" */
    int block_elems;    /* elements per block (1 for plain types) */
    int block_bytes;    /* bytes per block */
    int is_weight_type; /* usable as a matmul/embedding weight */
} duet_dtype_info;

/* Facts about a type, or NULL when the value is not one duet knows (so a
 * GGUF tensor of an unknown type can be reported by its number). */
const duet_dtype_info *duet_dtype_get(uint32_t type);

/* Bytes of one row of n elements; 0 if n is not a whole number of blocks
 * or the type is unknown. */
size_t duet_dtype_row_bytes(duet_dtype type, int64_t n);

/* Comma-separated names of the weight types, for error messages. */
const char *duet_dtype_weight_names(void);

/* IEEE half / bfloat16 conversions (round to nearest even), plain C. */
float duet_f16_to_f32(uint16_t h);
uint16_t duet_f32_to_f16(float f);
float duet_bf16_to_f32(uint16_t h);
uint16_t duet_f32_to_bf16(float f);

#endif
