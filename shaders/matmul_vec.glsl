// matmul_vec.glsl — what the two decode matmuls (matmul_vec.comp for
// F32/F16/BF16 weights, matmul_qvec.comp for the block-quantized types)
// share: the workgroup shape, the push constants and the reduction.
//
// A workgroup of 128 invocations takes one weight row j and up to MT
// activation rows m0 .. m0+nr-1. Each invocation accumulates its own
// partial sum per activation row over the weights it read (in increasing
// k order); vec_finish() then adds the partials of each subgroup with
// subgroupAdd and the subgroups' sums in subgroup order, by one
// invocation per activation row. Nothing in this sequence depends on nr or
// on the other rows' values, so a row's result is the same whatever it is
// batched with.
//
// VARIANT bit 1 (GATED): out = silu(x.W^T) * (x.W_up^T), W_up bound at 4
// (wu_off its byte offset there). The kernels keep a second set of
// partials for row j of W_up, accumulated and reduced exactly like the
// first, so both products have the plain kernel's bits; silu_mul is the
// swiglu shader's expression. Without the bit the gated code is dead once
// specialized.
#extension GL_KHR_shader_subgroup_basic : enable
#extension GL_KHR_shader_subgroup_arithmetic : enable
#include "swiglu.glsl"
layout(local_size_x = 128) in;
layout(push_constant) uniform PC {
    uint m, k, n, x_off, w_off, b_off, o_off, o_stride, row_bytes, has_bias, units, wu_off;
} pc;

const bool GATED = (VARIANT & 2u) != 0u;
const uint MT = 8u; // activation rows per workgroup: each weight is used for all of them
const uint NRED = GATED ? 2u : 1u; // red[0]: x.W's subgroup sums, red[NRED-1]: x.W_up's
shared float red[NRED][MT][128];

// Activations: binding 0 is declared both as words (x) and as 16-byte
// pieces (x4). Elements i .. i+3 (word indices into the binding, i - x_off
// a multiple of 4): one 16-byte load when x_off is 16-byte aligned (the
// runtime's activations are: rows of k floats, k a multiple of 4, in
// 64-byte aligned regions), else four word loads, so no read leaves the
// bound range. Consecutive invocations read consecutive runs, so a
// subgroup's activation loads are contiguous too.
vec4 x_run4(uint i)
{
    if ((pc.x_off & 3u) == 0u)
        return uintBitsToFloat(x4[i >> 2]);
    return uintBitsToFloat(uvec4(x[i], x[i + 1u], x[i + 2u], x[i + 3u]));
}

// The grid: x = groups of MT activation rows, fastest, so the workgroups
// that read one weight row run next to each other and all but the first
// find it in L2 (at batch 64 on an 8B model the FFN weights are larger
// than L2: with weight rows in x, each of the 8 row groups would stream
// them from memory again); y and z = the weight row, folded.
uint vec_row() { return gl_WorkGroupID.y + gl_WorkGroupID.z * gl_NumWorkGroups.y; }
uint vec_m0() { return gl_WorkGroupID.x * MT; }

// out[m0 + r][j] = the workgroup's sum of acc[r] (+ bias[j]) for r < nr;
// GATED: silu_mul(that sum, the sum of acc_up[r]). Every invocation of the
// workgroup calls it (it holds a barrier).
void vec_finish(float acc[MT], float acc_up[MT], uint nr, uint m0, uint j)
{
    [[unroll]] for (uint r = 0u; r < MT; r++) {
        float v = subgroupAdd(acc[r]);
        if (subgroupElect())
            red[0][r][gl_SubgroupID] = v;
        if (GATED) {
            float vu = subgroupAdd(acc_up[r]);
            if (subgroupElect())
                red[NRED - 1u][r][gl_SubgroupID] = vu;
        }
    }
    barrier();
    uint t = gl_LocalInvocationID.x;
    if (t < nr) {
        float v = 0.0;
        for (uint g = 0u; g < gl_NumSubgroups; g++)
            v += red[0][t][g];
        if (GATED) {
            float u = 0.0;
            for (uint g = 0u; g < gl_NumSubgroups; g++)
                u += red[NRED - 1u][t][g];
            v = silu_mul(v, u);
        } else if (pc.has_bias != 0u) {
            v += uintBitsToFloat(bias[pc.b_off + j]);
        }
        outb[pc.o_off + (m0 + t) * pc.o_stride + j] = floatBitsToUint(v);
    }
}
