#version 450
// matmul_vec: out[m][j] = sum_k x[m][k] * W[j][k] (+ bias[j]) for 16-bit
// weights (F16, BF16) on GPUs: the decode kernel, where reading the
// weights once at full memory bandwidth is the whole cost. A workgroup of
// 128 invocations takes one weight row and up to MT activation rows; each
// invocation reads 16 bytes (8 weights) per load, consecutive invocations
// consecutive 16-byte pieces, so a subgroup's loads are one contiguous
// span; each weight is used for all MT rows. Partial sums: an invocation's
// pieces in order, then subgroupAdd, then the subgroups' sums in order by
// one invocation — the same sequence for every batch size, so a row's
// result does not depend on the rest of the batch.
//
// The host picks it for F16/BF16 weights when k is a multiple of 8, the
// weights start 16-byte aligned and the device has subgroup arithmetic in
// compute shaders (docs/VULKAN.md).
#include "common.glsl"
#extension GL_KHR_shader_subgroup_basic : enable
#extension GL_KHR_shader_subgroup_arithmetic : enable
layout(local_size_x = 128) in;
layout(constant_id = 0) const uint WTYPE = 1u;
layout(constant_id = 1) const uint VARIANT = 0u;
BUF_RO(0, x)
layout(std430, set = 0, binding = 1) readonly buffer Buf1 { uvec4 w4[]; };
BUF_RO(2, bias)
BUF_WO(3, outb)
layout(push_constant) uniform PC {
    uint m, k, n, x_off, w_off, b_off, o_off, o_stride, row_bytes, has_bias, units;
} pc;

const uint T_F16 = 1u;
const uint MT = 8u; // activation rows per workgroup
shared float red[MT][128];

float w16(uint h) { return WTYPE == T_F16 ? h2f(h) : uintBitsToFloat(h << 16); }

void main()
{
    uint j = gl_WorkGroupID.x + gl_WorkGroupID.z * gl_NumWorkGroups.x;
    uint m0 = gl_WorkGroupID.y * MT;
    uint t = gl_LocalInvocationID.x;
    if (j >= pc.n) // uniform over the workgroup: no barrier is skipped unevenly
        return;
    uint nr = min(MT, pc.m - m0);
    float acc[MT];
    [[unroll]] for (uint r = 0u; r < MT; r++)
        acc[r] = 0.0;
    uint base = (pc.w_off + j * pc.row_bytes) >> 4; // in 16-byte pieces
    uint pieces = pc.k >> 3;
    for (uint p = t; p < pieces; p += 128u) {
        uvec4 q = w4[base + p];
        float wv[8];
        [[unroll]] for (uint i = 0u; i < 4u; i++) {
            wv[2u * i] = w16(q[i] & 0xffffu);
            wv[2u * i + 1u] = w16(q[i] >> 16);
        }
        [[unroll]] for (uint r = 0u; r < MT; r++) {
            if (r < nr) {
                uint xb = pc.x_off + (m0 + r) * pc.k + 8u * p;
                float s = acc[r];
                [[unroll]] for (uint e = 0u; e < 8u; e++)
                    s += wv[e] * uintBitsToFloat(x[xb + e]);
                acc[r] = s;
            }
        }
    }
    [[unroll]] for (uint r = 0u; r < MT; r++) {
        float v = subgroupAdd(acc[r]);
        if (subgroupElect())
            red[r][gl_SubgroupID] = v;
    }
    barrier();
    if (t < nr) {
        float v = 0.0;
        for (uint g = 0u; g < gl_NumSubgroups; g++)
            v += red[t][g];
        if (pc.has_bias != 0u)
            v += uintBitsToFloat(bias[pc.b_off + j]);
        outb[pc.o_off + (m0 + t) * pc.o_stride + j] = floatBitsToUint(v);
    }
}
