#version 450
// gather_rows: out[r] = x[rows[r]]; a row index outside [0, n_in) gives a
// row of NaN.
#include "common.glsl"
layout(local_size_x = 256) in;
BUF_RO(0, x)
BUF_RO(1, rows)
BUF_WO(2, outb)
layout(push_constant) uniform PC { uint n_in, n_out, dim, x_off, r_off, o_off; } pc;

void main()
{
    uint i = group_linear() * 256u + gl_LocalInvocationID.x;
    if (i >= pc.n_out * pc.dim)
        return;
    uint r = i / pc.dim, e = i % pc.dim;
    int src = int(rows[pc.r_off + r]);
    uint v = floatBitsToUint(NAN_F);
    if (src >= 0 && uint(src) < pc.n_in)
        v = x[pc.x_off + uint(src) * pc.dim + e];
    outb[pc.o_off + i] = v;
}
