#include "dtype.h"

#include <math.h>
#include <string.h>

static const struct {
    uint32_t type;
    duet_dtype_info info;
} dtype_table[] = {
    {DUET_F32, {"F32", 1, 4, 1}},
    {DUET_F16, {"F16", 1, 2, 1}},
    {DUET_BF16, {"BF16", 1, 2, 1}},
    {DUET_Q4_0, {"Q4_0", 32, 18, 1}},
    {DUET_Q4_1, {"Q4_1", 32, 20, 1}},
    {DUET_Q8_0, {"Q8_0", 32, 34, 1}},
    {DUET_Q4_K, {"Q4_K", 256, 144, 1}},
    {DUET_Q5_K, {"Q5_K", 256, 176, 1}},
    {DUET_Q6_K, {"Q6_K", 256, 210, 1}},
    {DUET_I32, {"I32", 1, 4, 0}},
};

const duet_dtype_info *duet_dtype_get(uint32_t type)
{
    for (size_t i = 0; i < sizeof dtype_table / sizeof dtype_table[0]; i++)
        if (dtype_table[i].type == type)
            return &dtype_table[i].info;
    return NULL;
}

size_t duet_dtype_row_bytes(duet_dtype type, int64_t n)
{
    const duet_dtype_info *t = duet_dtype_get(type);
    if (!t || n < 0 || n % t->block_elems != 0)
        return 0;
    return (size_t)(n / t->block_elems) * (size_t)t->block_bytes;
}

const char *duet_dtype_weight_names(void)
{
    return "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K";
}

float duet_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while (!(mant & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t duet_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t exp = (x >> 23) & 0xff;
    uint32_t mant = x & 0x7fffff;
    if (exp == 0xff) /* Inf / NaN (keep NaN quiet) */
        return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 | (mant >> 13) : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00);
    if (e <= 0) { /* subnormal or zero in half */
        if (e < -10)
            return (uint16_t)sign;
        mant |= 0x800000;
        int shift = 14 - e;
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)e << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1)))
        half++; /* may carry into the exponent, which is still correct */
    return (uint16_t)half;
}

float duet_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t duet_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffff) > 0x7f800000) /* NaN: keep it a quiet NaN */
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}
