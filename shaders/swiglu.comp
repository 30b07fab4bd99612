#version 450
// swiglu: out[i] = silu(gate[i]) * up[i]; out may alias gate.
#include "common.glsl"
#include "swiglu.glsl"
layout(local_size_x = 256) in;
BUF_RO(0, gate)
BUF_RO(1, up)
BUF_WO(2, outb)
layout(push_constant) uniform PC { uint n, g_off, u_off, o_off; } pc;

void main()
{
    uint i = group_linear() * 256u + gl_LocalInvocationID.x;
    if (i >= pc.n)
        return;
    float g = uintBitsToFloat(gate[pc.g_off + i]);
    float u = uintBitsToFloat(up[pc.u_off + i]);
    outb[pc.o_off + i] = floatBitsToUint(silu_mul(g, u));
}
