// sample_math.glsl — docs/SAMPLING.md's building blocks for shaders: dexp,
// dlog, the token weight, Philox4x32-10, the Gumbel noise, and 64-bit
// unsigned integers as uvec2 (x = low word, y = high word), so the sampler
// needs no optional feature (shaderInt64).
//
// Bit for bit the same as backends/cpu/sample_math.h: every float
// intermediate is `precise` (no contraction into fma, no reassociation),
// the constants are the specification's hex values, and NaN is tested on
// the bits, never through a comparison a compiler could rewrite.

#define SM_NEG_INF uintBitsToFloat(0xff800000u)
#define SM_FLT_MIN uintBitsToFloat(0x00800000u)
#define SM_EXP_MIN uintBitsToFloat(0xc2ae0000u)
#define SM_LOG2E uintBitsToFloat(0x3fb8aa3bu)
#define SM_MAGIC uintBitsToFloat(0x4b400000u)
#define SM_LN2_HI uintBitsToFloat(0x3f317200u)
#define SM_LN2_LO uintBitsToFloat(0x35bfbe8eu)
#define SM_C2 uintBitsToFloat(0x3efffffeu)
#define SM_C3 uintBitsToFloat(0x3e2aaa49u)
#define SM_C4 uintBitsToFloat(0x3d2aac79u)
#define SM_C5 uintBitsToFloat(0x3c091ceau)
#define SM_C6 uintBitsToFloat(0x3ab51224u)
#define SM_Q0 uintBitsToFloat(0xbefffffcu)
#define SM_Q1 uintBitsToFloat(0x3eaaaaa8u)
#define SM_Q2 uintBitsToFloat(0xbe800214u)
#define SM_Q3 uintBitsToFloat(0x3e4cd201u)
#define SM_Q4 uintBitsToFloat(0xbe2a13a5u)
#define SM_Q5 uintBitsToFloat(0x3e11384eu)
#define SM_Q6 uintBitsToFloat(0xbe079baeu)
#define SM_Q7 uintBitsToFloat(0x3e042700u)
#define SM_Q8 uintBitsToFloat(0xbd9c1ecbu)
#define SM_SQRT2_MANT 0x3504f3u
#define SM_TWO40 uintBitsToFloat(0x53800000u)
#define SM_TWO_M40 uintBitsToFloat(0x2b800000u)
#define SM_TWO_M23 uintBitsToFloat(0x34000000u)
#define SM_GMAX uintBitsToFloat(0x41851592u)
#define SM_GMIN uintBitsToFloat(0xc033f049u)

bool sm_isnan(float x) { return (floatBitsToUint(x) & 0x7fffffffu) > 0x7f800000u; }

// ---- uint64 as uvec2 ----------------------------------------------------------

uvec2 u64_add(uvec2 a, uvec2 b)
{
    uint carry;
    uint lo = uaddCarry(a.x, b.x, carry);
    return uvec2(lo, a.y + b.y + carry);
}

bool u64_ge(uvec2 a, uvec2 b) { return a.y > b.y || (a.y == b.y && a.x >= b.x); }

uvec2 u64_shr(uvec2 a, uint s) // s < 64
{
    if (s == 0u)
        return a;
    if (s >= 32u)
        return uvec2(a.y >> (s - 32u), 0u);
    return uvec2((a.x >> s) | (a.y << (32u - s)), a.y >> s);
}

uvec2 u64_shl(uvec2 a, uint s) // s < 64
{
    if (s == 0u)
        return a;
    if (s >= 32u)
        return uvec2(0u, a.x << (s - 32u));
    return uvec2(a.x << s, (a.y << s) | (a.x >> (32u - s)));
}

// The nearest float, ties to even (SAMPLING.md section 7).
float u64_to_float(uvec2 v)
{
    if (v.y == 0u && v.x < 0x1000000u)
        return float(v.x); // exact
    uint n = v.y != 0u ? 33u + uint(findMSB(v.y)) : 1u + uint(findMSB(v.x)); // > 24
    uint sh = n - 24u;                                                         // 1..40
    uint mant = u64_shr(v, sh).x;                                              // < 2^24
    // The dropped bits against half a unit of the kept ones.
    uvec2 lowmask = sh >= 32u ? uvec2(0xffffffffu, (1u << (sh - 32u)) - 1u)
                              : uvec2((1u << sh) - 1u, 0u);
    uvec2 rem = v & lowmask, half_unit = u64_shl(uvec2(1u, 0u), sh - 1u);
    bool above = rem.y > half_unit.y || (rem.y == half_unit.y && rem.x > half_unit.x);
    bool tie = rem == half_unit;
    if (above || (tie && (mant & 1u) != 0u))
        mant += 1u;
    if (mant == 0x1000000u) { // the carry reached 2^24: one more bit
        mant = 0x800000u;
        n += 1u;
    }
    return uintBitsToFloat(((n - 1u + 127u) << 23) | (mant & 0x7fffffu));
}

// ---- dexp, dlog, weight -------------------------------------------------------

// e^x for x <= 0; x < -87 and NaN give +0.
float sm_dexp(float x)
{
    if (sm_isnan(x) || x < SM_EXP_MIN)
        return 0.0;
    precise float t = x * SM_LOG2E;
    precise float k = (t + SM_MAGIC) - SM_MAGIC;
    precise float r = x - k * SM_LN2_HI;
    r = r - k * SM_LN2_LO;
    precise float p = SM_C6;
    p = p * r + SM_C5;
    p = p * r + SM_C4;
    p = p * r + SM_C3;
    p = p * r + SM_C2;
    precise float w = r + (r * r) * p;
    float s = uintBitsToFloat(uint(int(k) + 127) << 23); // 2^k, exact
    precise float res = (1.0 + w) * s;
    return res;
}

// Natural log of a positive normal float; below FLT_MIN (and NaN): -inf.
float sm_dlog(float x)
{
    if (sm_isnan(x) || x < SM_FLT_MIN)
        return SM_NEG_INF;
    uint b = floatBitsToUint(x);
    int e = int((b >> 23) & 0xffu) - 127;
    uint mant = b & 0x7fffffu;
    float m;
    if (mant > SM_SQRT2_MANT) {
        m = uintBitsToFloat(mant | 0x3f000000u);
        e += 1;
    } else {
        m = uintBitsToFloat(mant | 0x3f800000u);
    }
    precise float f = m - 1.0;
    precise float q = SM_Q8;
    q = q * f + SM_Q7;
    q = q * f + SM_Q6;
    q = q * f + SM_Q5;
    q = q * f + SM_Q4;
    q = q * f + SM_Q3;
    q = q * f + SM_Q2;
    q = q * f + SM_Q1;
    q = q * f + SM_Q0;
    precise float res = f + (f * f) * q;
    precise float fe = float(e);
    precise float out_v = fe * SM_LN2_HI + (res + fe * SM_LN2_LO);
    return out_v;
}

// trunc(dexp(d) * 2^40) as a 64-bit integer (at most 2^40), from the
// product's bits: it is exact, so no float-to-integer rounding is involved.
uvec2 sm_weight(float d)
{
    precise float f = sm_dexp(d) * SM_TWO40;
    uint b = floatBitsToUint(f);
    uint e = b >> 23; // f >= 0
    if (e < 127u)
        return uvec2(0u); // below 1
    uint mant = (b & 0x7fffffu) | 0x800000u;
    uint ex = e - 127u; // 0..40
    if (ex <= 23u)
        return uvec2(mant >> (23u - ex), 0u);
    return u64_shl(uvec2(mant, 0u), ex - 23u);
}

// floor(s * q / 2^24) for q <= 2^24, without a 128-bit product.
uvec2 sm_top_p_limit(uvec2 s, uint q)
{
    uint h1, l1, h2, l2;
    umulExtended(s.y, q, h1, l1); // (s >> 32) * q < 2^56
    umulExtended(s.x, q, h2, l2);
    return u64_add(u64_shl(uvec2(l1, h1), 8u), u64_shr(uvec2(l2, h2), 24u));
}

// ---- Philox4x32-10 and the noise ------------------------------------------------

uvec4 sm_philox(uvec4 c, uvec2 k)
{
    [[unroll]] for (int round = 0; round < 10; round++) {
        uint h0, l0, h1, l1;
        umulExtended(0xD2511F53u, c.x, h0, l0);
        umulExtended(0xCD9E8D57u, c.z, h1, l1);
        c = uvec4(h1 ^ c.y ^ k.x, l1, h0 ^ c.w ^ k.y, l0);
        k += uvec2(0x9E3779B9u, 0xBB67AE85u);
    }
    return c;
}

// -log(-log(u)), u = ((word >> 9) + 0.5) * 2^-23.
float sm_gumbel(uint word)
{
    precise float u = (float(word >> 9) + 0.5) * SM_TWO_M23;
    precise float a = sm_dlog(u);
    precise float g = -sm_dlog(-a);
    return g;
}
