// common.glsl — what every duet compute shader shares.
//
// Every operand is a storage buffer of 32-bit words, bound from an offset
// aligned to minStorageBufferOffsetAlignment; the push constants carry the
// rest of the operand's offset (in words, or in bytes for weights). Floats
// and halves are decoded with integer operations so results are exact and
// the same on every driver.
#extension GL_EXT_control_flow_attributes : enable

#define BUF_RO(i, name) layout(std430, set = 0, binding = i) readonly buffer Buf##i { uint name[]; };
#define BUF_WO(i, name) layout(std430, set = 0, binding = i) writeonly buffer Buf##i { uint name[]; };
#define BUF_RW(i, name) layout(std430, set = 0, binding = i) buffer Buf##i { uint name[]; };

#define NAN_F uintBitsToFloat(0x7fc00000u)

// The workgroup's index in a grid folded into x and y (x <= 65535).
uint group_linear()
{
    return gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
}

// IEEE half -> float, exact (subnormals included).
float h2f(uint h)
{
    uint s = (h & 0x8000u) << 16;
    uint e = (h >> 10) & 0x1fu;
    uint m = h & 0x3ffu;
    if (e == 0u) {
        float v = float(m) * (1.0 / 16777216.0);
        return s != 0u ? -v : v;
    }
    if (e == 31u)
        return uintBitsToFloat(s | 0x7f800000u | (m << 13));
    return uintBitsToFloat(s | ((e + 112u) << 23) | (m << 13));
}

// float -> IEEE half, round to nearest even (as backends/dtype.c does).
uint f2h(float f)
{
    uint x = floatBitsToUint(f);
    uint sign = (x >> 16) & 0x8000u;
    uint exp = (x >> 23) & 0xffu;
    uint mant = x & 0x7fffffu;
    if (exp == 0xffu)
        return sign | 0x7c00u | (mant != 0u ? (0x200u | (mant >> 13)) : 0u);
    int e = int(exp) - 127 + 15;
    if (e >= 31)
        return sign | 0x7c00u;
    if (e <= 0) {
        if (e < -10)
            return sign;
        mant |= 0x800000u;
        uint shift = uint(14 - e);
        uint half_v = mant >> shift;
        uint rem = mant & ((1u << shift) - 1u);
        uint mid = 1u << (shift - 1u);
        if (rem > mid || (rem == mid && (half_v & 1u) != 0u))
            half_v++;
        return sign | half_v;
    }
    uint h = sign | (uint(e) << 10) | (mant >> 13);
    uint rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) != 0u))
        h++;
    return h;
}
