#version 450
// add: a[i] += b[i] over n floats.
#include "common.glsl"
layout(local_size_x = 256) in;
BUF_RW(0, a)
BUF_RO(1, b)
layout(push_constant) uniform PC { uint n, a_off, b_off; } pc;

void main()
{
    uint i = group_linear() * 256u + gl_LocalInvocationID.x;
    if (i >= pc.n)
        return;
    a[pc.a_off + i] = floatBitsToUint(uintBitsToFloat(a[pc.a_off + i]) +
                                      uintBitsToFloat(b[pc.b_off + i]));
}
