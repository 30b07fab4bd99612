// rms_norm.glsl — the body of rms_norm.comp and of rms_norm_add.comp
// (RESIDUAL defined: the fused residual add). One workgroup per row;
// y = x / sqrt(mean(x^2) + eps) * w. The sum of squares has a fixed order
// (strided partial sums, then a tree), so a row's result does not depend
// on the other rows.
//
// With RESIDUAL, x[i] = x[i] + res[i] first (add.comp's float sum) and is
// written back. Each invocation touches the same indices i in both passes,
// so its res[i] is read before its y[i] is written: y may be res (the
// model norms into the residual's buffer). The plain shader keeps x
// readonly: the host's hazard tracking reads that from the SPIR-V, and a
// writable x would cost barriers.
//
// ss is precise (no contraction of v * v into an fma), so both shaders
// round the sum of squares the same way whatever the driver decides.
#include "common.glsl"
layout(local_size_x = 256) in;
#ifdef RESIDUAL
BUF_RW(0, x)
#else
BUF_RO(0, x)
#endif
BUF_RO(1, w)
BUF_WO(2, y)
#ifdef RESIDUAL
BUF_RO(3, res)
#endif
layout(push_constant) uniform PC {
    uint n_rows, dim;
    float eps;
    uint x_off, w_off, y_off, r_off;
} pc;
shared float red[256];

void main()
{
    uint row = group_linear();
    if (row >= pc.n_rows)
        return;
    uint lid = gl_LocalInvocationID.x;
    uint xb = pc.x_off + row * pc.dim, yb = pc.y_off + row * pc.dim;
    precise float ss = 0.0;
    for (uint i = lid; i < pc.dim; i += 256u) {
#ifdef RESIDUAL
        float v = uintBitsToFloat(x[xb + i]) + uintBitsToFloat(res[pc.r_off + row * pc.dim + i]);
        x[xb + i] = floatBitsToUint(v);
#else
        float v = uintBitsToFloat(x[xb + i]);
#endif
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
