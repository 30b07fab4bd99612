#version 450
// rms_norm: one workgroup per row; y = x / sqrt(mean(x^2) + eps) * w.
// The sum of squares has a fixed order (strided partial sums, then a
// tree), so a row's result does not depend on the other rows.
#include "common.glsl"
layout(local_size_x = 256) in;
BUF_RO(0, x)
BUF_RO(1, w)
BUF_WO(2, y)
layout(push_constant) uniform PC { uint n_rows, dim; float eps; uint x_off, w_off, y_off; } pc;
shared float red[256];

void main()
{
    uint row = group_linear();
    if (row >= pc.n_rows)
        return;
    uint lid = gl_LocalInvocationID.x;
    uint xb = pc.x_off + row * pc.dim, yb = pc.y_off + row * pc.dim;
    float ss = 0.0;
    for (uint i = lid; i < pc.dim; i += 256u) {
        float v = uintBitsToFloat(x[xb + i]);
        ss += v * v;
    }
    red[lid] = ss;
    barrier();
    for (uint st = 128u; st > 0u; st >>= 1) {
        if (lid < st)
            red[lid] += red[lid + st];
        barrier();
    }
    float scale = 1.0 / sqrt(red[0] / float(pc.dim) + pc.eps);
    for (uint i = lid; i < pc.dim; i += 256u) {
        float v = uintBitsToFloat(x[xb + i]);
        y[yb + i] = floatBitsToUint(v * scale * uintBitsToFloat(w[pc.w_off + i]));
    }
}
