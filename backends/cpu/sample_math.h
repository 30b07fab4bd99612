/*
 * sample_math.h — the sampling specification's exp and log (docs/SAMPLING.md
 * section "dexp and dlog"), scalar.
 *
 * Why not expf/logf: libm, CUDA and GLSL each round differently, and the
 * sampler must pick the same token on every backend. These use only
 * correctly rounded float +, -, * (no fma, no division) and integer bit
 * operations, in a fixed order, so a GLSL shader (`precise`) or a CUDA
 * kernel (__fadd_rn, __fmul_rn) reproduces them bit for bit. Files that
 * include this header must be compiled without floating-point contraction
 * (-ffp-contract=off; the default in ISO C mode, which CMake's
 * C_EXTENSIONS OFF selects).
 *
 * Accuracy: relative error below 2e-7 over the ranges the sampler uses.
 */
#ifndef DUET_SAMPLE_MATH_H
#define DUET_SAMPLE_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "philox.h"

/* Cody-Waite split of ln 2: LN2_HI has 15 significant bits, so k * LN2_HI
 * is exact for |k| <= 256. */
#define DUET_SM_LOG2E 1.44269502f       /* 0x3fb8aa3b */
#define DUET_SM_LN2_HI 0.693145752f     /* 0x3f317200 */
#define DUET_SM_LN2_LO 1.42860677e-06f  /* 0x35bfbe8e */
/* 1.5 * 2^23: adding and subtracting it rounds |t| < 2^22 to the nearest
 * integer (ties to even) with float additions only. */
#define DUET_SM_ROUND_MAGIC 12582912.0f /* 0x4b400000 */
/* Below this dexp returns 0: every result above it is a normal float, so
 * GPUs that flush subnormals agree. */
#define DUET_SM_EXP_MIN -87.0f          /* 0xc2ae0000 */

/* e^r = 1 + (r + r^2 * (C2 + r*(C3 + r*(C4 + r*(C5 + r*C6))))), |r| <= ln2/2 */
#define DUET_SM_EXP_C2 0.49999994f      /* 0x3efffffe */
#define DUET_SM_EXP_C3 0.166665211f     /* 0x3e2aaa49 */
#define DUET_SM_EXP_C4 0.041668389f     /* 0x3d2aac79 */
#define DUET_SM_EXP_C5 0.00836871006f   /* 0x3c091cea */
#define DUET_SM_EXP_C6 0.00138146104f   /* 0x3ab51224 */

/* log(1+f) = f + f^2 * (Q0 + f*(Q1 + ... + f*Q8)), f in [sqrt(1/2)-1, sqrt(2)-1) */
#define DUET_SM_LOG_Q0 -0.499999881f    /* 0xbefffffc */
#define DUET_SM_LOG_Q1 0.333333254f     /* 0x3eaaaaa8 */
#define DUET_SM_LOG_Q2 -0.250015855f    /* 0xbe800214 */
#define DUET_SM_LOG_Q3 0.200019851f     /* 0x3e4cd201 */
#define DUET_SM_LOG_Q4 -0.166090563f    /* 0xbe2a13a5 */
#define DUET_SM_LOG_Q5 0.141816348f     /* 0x3e11384e */
#define DUET_SM_LOG_Q6 -0.132429808f    /* 0xbe079bae */
#define DUET_SM_LOG_Q7 0.129055023f     /* 0x3e042700 */
#define DUET_SM_LOG_Q8 -0.0762306079f   /* 0xbd9c1ecb */
/* Mantissa bits of sqrt(2) (0x3fb504f3): above them m is halved. */
#define DUET_SM_SQRT2_MANT 0x3504f3u

/* 2^-40 and 2^40: token weights are fixed-point with 40 fraction bits. */
#define DUET_SM_TWO40 1099511627776.0f  /* 0x53800000 */
#define DUET_SM_TWO_M40 9.09494702e-13f /* 0x2b800000 */
/* 2^-23: u = ((word >> 9) + 0.5) * 2^-23 */
#define DUET_SM_TWO_M23 1.1920929e-07f  /* 0x34000000 */

/* The largest and the smallest value duet_sm_gumbel takes over all 2^23
 * uniforms (at the largest and the smallest u; the tests enumerate them).
 * A token with d + GMAX below the best score so far cannot win. */
#define DUET_SM_GMAX 16.6355324f /* 0x41851592 */
#define DUET_SM_GMIN -2.81154084f /* 0xc033f049 */

static inline uint32_t duet_sm_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float duet_sm_float(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* e^x for x <= 0 (also correct up to 88). x < -87 and NaN give +0;
 * dexp(0) == 1 exactly; non-decreasing in x. */
static inline float duet_sm_dexp(float x)
{
    if (!(x >= DUET_SM_EXP_MIN))
        return 0.0f;
    float t = x * DUET_SM_LOG2E;
    float k = (t + DUET_SM_ROUND_MAGIC) - DUET_SM_ROUND_MAGIC; /* round(t) */
    float r = x - k * DUET_SM_LN2_HI;
    r = r - k * DUET_SM_LN2_LO;
    float p = DUET_SM_EXP_C6;
    p = p * r + DUET_SM_EXP_C5;
    p = p * r + DUET_SM_EXP_C4;
    p = p * r + DUET_SM_EXP_C3;
    p = p * r + DUET_SM_EXP_C2;
    /* 1 + (r + r^2 p): r is exact and the small term's rounding noise is
     * below one step of r, which keeps the result non-decreasing. */
    float w = r + (r * r) * p;
    return (1.0f + w) * duet_sm_float((uint32_t)((int32_t)k + 127) << 23); /* exact: 2^k */
}

/* Natural log for positive normal x. x below FLT_MIN (0, subnormals,
 * negatives) gives -INFINITY; +inf and NaN are not defined by the spec
 * (this returns a large finite value). */
static inline float duet_sm_dlog(float x)
{
    if (!(x >= 1.17549435e-38f)) /* FLT_MIN */
        return -INFINITY;
    uint32_t b = duet_sm_bits(x);
    int32_t e = (int32_t)((b >> 23) & 0xffu) - 127;
    uint32_t mant = b & 0x7fffffu;
    float m;
    if (mant > DUET_SM_SQRT2_MANT) { /* m in (sqrt(1/2), 1) */
        m = duet_sm_float(mant | 0x3f000000u);
        e += 1;
    } else { /* m in [1, sqrt(2)] */
        m = duet_sm_float(mant | 0x3f800000u);
    }
    float f = m - 1.0f; /* exact (Sterbenz) */
    float q = DUET_SM_LOG_Q8;
    q = q * f + DUET_SM_LOG_Q7;
    q = q * f + DUET_SM_LOG_Q6;
    q = q * f + DUET_SM_LOG_Q5;
    q = q * f + DUET_SM_LOG_Q4;
    q = q * f + DUET_SM_LOG_Q3;
    q = q * f + DUET_SM_LOG_Q2;
    q = q * f + DUET_SM_LOG_Q1;
    q = q * f + DUET_SM_LOG_Q0;
    float res = f + (f * f) * q;
    float fe = (float)e;
    return fe * DUET_SM_LN2_HI + (res + fe * DUET_SM_LN2_LO);
}

/* Philox4x32-10 is backends/philox.h (one definition for all). */
#define duet_sm_philox4x32 duet_philox4x32

/* Index of the largest value, lowest index on ties; NaN never wins; 0 when
 * nothing exceeds -inf. */
static inline int32_t duet_sm_argmax(const float *x, int n)
{
    int32_t best = 0;
    float best_v = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (x[i] > best_v) {
            best_v = x[i];
            best = i;
        }
    }
    return best;
}

/* The uniform in (0, 1) drawn from one Philox word: 23 bits plus half a
 * step, so it is never 0 or 1 and every step is exact in float. */
static inline float duet_sm_uniform(uint32_t word)
{
    return ((float)(word >> 9) + 0.5f) * DUET_SM_TWO_M23;
}

/* Gumbel noise -log(-log(u)) of one Philox word. */
static inline float duet_sm_gumbel(uint32_t word)
{
    float a = duet_sm_dlog(duet_sm_uniform(word)); /* < 0 */
    return -duet_sm_dlog(-a);
}

/* A token's weight in 2^-40 units: trunc(dexp(d) * 2^40). */
static inline uint64_t duet_sm_weight(float d)
{
    /* The product is at most 2^40: the signed conversion is exact and
     * cheaper than the unsigned one. */
    return (uint64_t)(int64_t)(duet_sm_dexp(d) * DUET_SM_TWO40);
}

/* floor(s * q / 2^24) exactly, for q <= 2^24 and s < 2^64 (every row of
 * at most 2^24 tokens), without a 128-bit product. */
static inline uint64_t duet_sm_top_p_limit(uint64_t s, uint32_t q)
{
    uint64_t hi = s >> 32, lo = s & 0xffffffffu;
    return ((hi * q) << 8) + ((lo * q) >> 24);
}

#endif
