/*
 * quant.c — the reference path for weight types: dequantization, the dot
 * product and the matmul built on them, plus CPU feature detection.
 *
 * Everything here is plain C written for obviousness, not speed: it is the
 * oracle the SIMD kernels (and other backends) are checked against.
 */
#include "quant.h"

#include <assert.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

/* ---- block layouts (GGUF / ggml) ---------------------------------------- */

static float half_at(const uint8_t *p)
{
    return duet_f16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
}

/* Q4_0, 18 bytes: d; qs[16]. Byte j holds element j (low) and j+16 (high). */
static void dequant_q4_0(const uint8_t *b, float *y)
{
    float d = half_at(b);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((b[2 + j] & 0x0f) - 8);
        y[j + 16] = d * (float)((b[2 + j] >> 4) - 8);
    }
}

/* Q4_1, 20 bytes: d, m; qs[16]. */
static void dequant_q4_1(const uint8_t *b, float *y)
{
    float d = half_at(b), m = half_at(b + 2);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)(b[4 + j] & 0x0f) + m;
        y[j + 16] = d * (float)(b[4 + j] >> 4) + m;
    }
}

/* Q8_0, 34 bytes: d; qs[32] int8. */
static void dequant_q8_0(const uint8_t *b, float *y)
{
    float d = half_at(b);
    for (int j = 0; j < 32; j++)
        y[j] = d * (float)(int8_t)b[2 + j];
}

/* The 12 scale bytes of Q4_K/Q5_K pack eight 6-bit (scale, min) pairs: pairs
 * 0-3 sit in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); pairs 4-7
 * keep their low 4 bits in the nibbles of bytes 8-11 and borrow the top two
 * bits of bytes 0-7 for their high bits. */
static void k_scale_min(const uint8_t *s, int j, int *sc, int *mn)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q4_K, 144 bytes: d, dmin; scales[12]; qs[128]. Four 64-element groups;
 * group g uses qs[32g..32g+31]: low nibbles are sub-block 2g, high nibbles
 * sub-block 2g+1. x = d*sc*q - dmin*mn. */
static void dequant_q4_k(const uint8_t *b, float *y)
{
    float d = half_at(b), dmin = half_at(b + 2);
    const uint8_t *scales = b + 4, *qs = b + 16;
    for (int g = 0; g < 4; g++) {
        int sc0, mn0, sc1, mn1;
        k_scale_min(scales, 2 * g, &sc0, &mn0);
        k_scale_min(scales, 2 * g + 1, &sc1, &mn1);
        float d0 = d * (float)sc0, m0 = dmin * (float)mn0;
        float d1 = d * (float)sc1, m1 = dmin * (float)mn1;
        for (int l = 0; l < 32; l++) {
            y[64 * g + l] = d0 * (float)(qs[32 * g + l] & 0x0f) - m0;
            y[64 * g + 32 + l] = d1 * (float)(qs[32 * g + l] >> 4) - m1;
        }
    }
}

/* Q5_K, 176 bytes: d, dmin; scales[12]; qh[32]; qs[128]. As Q4_K, plus a
 * fifth bit: bit s of qh[l] belongs to element l of sub-block s. */
static void dequant_q5_k(const uint8_t *b, float *y)
{
    float d = half_at(b), dmin = half_at(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + 48;
    for (int g = 0; g < 4; g++) {
        int sc0, mn0, sc1, mn1;
        k_scale_min(scales, 2 * g, &sc0, &mn0);
        k_scale_min(scales, 2 * g + 1, &sc1, &mn1);
        float d0 = d * (float)sc0, m0 = dmin * (float)mn0;
        float d1 = d * (float)sc1, m1 = dmin * (float)mn1;
        for (int l = 0; l < 32; l++) {
            int lo = (qs[32 * g + l] & 0x0f) | (((qh[l] >> (2 * g)) & 1) << 4);
            int hi = (qs[32 * g + l] >> 4) | (((qh[l] >> (2 * g + 1)) & 1) << 4);
            y[64 * g + l] = d0 * (float)lo - m0;
            y[64 * g + 32 + l] = d1 * (float)hi - m1;
        }
    }
}

/* Q6_K, 210 bytes: ql[128]; qh[64]; scales[16] int8; d. Two 128-element
 * halves; in half h, element 32i+l (i = 0..3) takes its low 4 bits from
 * ql[64h + l + 32*(i&1)] (low nibble for i < 2, high for i >= 2) and its
 * top 2 bits from bits 2i..2i+1 of qh[32h + l]; q is offset by 32 and each
 * 16 elements share one int8 scale. x = d * sc * (q - 32). */
static void dequant_q6_k(const uint8_t *b, float *y)
{
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = half_at(b + 208);
    for (int h = 0; h < 2; h++) {
        for (int i = 0; i < 4; i++) {
            for (int l = 0; l < 32; l++) {
                uint8_t lowbyte = ql[64 * h + l + 32 * (i & 1)];
                int lo4 = i < 2 ? (lowbyte & 0x0f) : (lowbyte >> 4);
                int hi2 = (qh[32 * h + l] >> (2 * i)) & 3;
                int q = (lo4 | (hi2 << 4)) - 32;
                int e = 128 * h + 32 * i + l;
                y[e] = d * (float)sc[e / 16] * (float)q;
            }
        }
    }
}

/* Dequantize one block (block_elems elements, at most 256) of a quant type. */
static void dequant_block(duet_dtype t, const uint8_t *b, float *y)
{
    switch (t) {
    case DUET_Q4_0: dequant_q4_0(b, y); break;
    case DUET_Q4_1: dequant_q4_1(b, y); break;
    case DUET_Q8_0: dequant_q8_0(b, y); break;
    case DUET_Q4_K: dequant_q4_k(b, y); break;
    case DUET_Q5_K: dequant_q5_k(b, y); break;
    case DUET_Q6_K: dequant_q6_k(b, y); break;
    default: assert(!"not a block-quantized weight type");
    }
}

void duet_dequant_row(duet_dtype t, const void *src, float *dst, int64_t n)
{
    const uint8_t *p = src;
    switch (t) {
    case DUET_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    case DUET_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = duet_f16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        return;
    case DUET_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = duet_bf16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        return;
    default:
        break;
    }
    const duet_dtype_info *info = duet_dtype_get(t);
    assert(info && info->is_weight_type && n % info->block_elems == 0);
    for (int64_t i = 0; i < n / info->block_elems; i++)
        dequant_block(t, p + i * info->block_bytes, dst + i * info->block_elems);
}

float duet_vec_dot_ref(duet_dtype t, const void *w, const float *x, int64_t n)
{
    const duet_dtype_info *info = duet_dtype_get(t);
    assert(info && info->is_weight_type);
    /* Plain types go through the same 256-element chunks as the K-quants
     * so no row ever needs a heap buffer. */
    int64_t chunk = info->block_elems > 1 ? info->block_elems : 256;
    size_t chunk_bytes = duet_dtype_row_bytes(t, chunk);
    const uint8_t *p = w;
    float buf[256];
    double acc = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += chunk) {
        int64_t len = n - i0 < chunk ? n - i0 : chunk;
        duet_dequant_row(t, p + (size_t)(i0 / chunk) * chunk_bytes, buf, len);
        for (int64_t i = 0; i < len; i++)
            acc += (double)buf[i] * (double)x[i0 + i];
    }
    return (float)acc;
}

void duet_matmul_ref(const float *x, const void *w, duet_dtype wt, const float *bias,
                     float *y, int64_t m, int64_t k, int64_t n)
{
    size_t row_bytes = duet_dtype_row_bytes(wt, k);
    assert(row_bytes > 0);
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            float v = duet_vec_dot_ref(wt, (const uint8_t *)w + (size_t)j * row_bytes,
                                       x + i * k, k);
            y[i * n + j] = bias ? v + bias[j] : v;
        }
    }
}

/* ---- CPU features ---------------------------------------------------------- */

void duet_cpu_features_get(duet_cpu_features *out)
{
    memset(out, 0, sizeof *out);
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return;
    int osxsave = (c >> 27) & 1, has_avx = (c >> 28) & 1;
    int fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !has_avx)
        return;
    /* The CPU having AVX is not enough: the OS must save the wider
     * registers on context switch, which XCR0 says. */
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    int os_avx = (xlo & 0x6) == 0x6;              /* XMM + YMM state */
    int os_avx512 = os_avx && (xlo & 0xe0) == 0xe0; /* opmask + ZMM state */
    if (!os_avx)
        return;
    out->fma = fma;
    out->f16c = f16c;
    if (__get_cpuid_max(0, NULL) < 7)
        return;
    __cpuid_count(7, 0, a, b, c, d);
    out->avx2 = (b >> 5) & 1;
    if (os_avx512) {
        out->avx512f = (b >> 16) & 1;
        out->avx512dq = (b >> 17) & 1;
        out->avx512bw = (b >> 30) & 1;
        out->avx512vl = (b >> 31) & 1;
        out->avx512vnni = (c >> 11) & 1;
    }
    __cpuid_count(7, 1, a, b, c, d);
    out->avxvnni = (a >> 4) & 1;
#endif
}
