// matmul_vec.glsl — what the two decode matmuls (matmul_vec.comp for
// F32/F16/BF16 weights, matmul_qvec.comp for the block-quantized types)
// share: the workgroup shape, the push constants and the reduction.
//
// A workgroup of 128 invocations takes ROWS consecutive weight rows
// j0 .. j0+ROWS-1 (rows >= n skipped, uniformly) and up to MT activation
// rows m0 .. m0+nr-1. Per step an invocation holds its weights of all ROWS
// rows in registers and reads each activation run once for all of them:
// per weight row, the activation traffic is 1/ROWS of one row per
// workgroup. Each invocation accumulates its own partial sum per (weight
// row, activation row) over the weights it read (in increasing k order);
// vec_finish() then adds the partials of each subgroup with subgroupAdd
// and the subgroups' sums in subgroup order, by one invocation per output.
// Nothing in this sequence depends on ROWS, nr or the other rows' values,
// so an output has the same bits whatever it is batched or tiled with.
//
// VARIANT bit 1 (GATED): out = silu(x.W^T) * (x.W_up^T), W_up bound at 4
// (wu_off its byte offset there). The kernels keep a second set of
// partials for the same ROWS rows of W_up, accumulated and reduced exactly
// like the first, so both products have the plain kernel's bits; silu_mul
// is the swiglu shader's expression. Without the bit the gated code is
// dead once specialized. VARIANT bits 2-3: log2(ROWS) (1, 2 or 4).
//
// The host runs these kernels only where the subgroup size is at least 4
// (vec_kernel() in vk_ops.c), so a workgroup has at most NSG = 32
// subgroups; red holds NRED x ROWS x MT x NSG floats (8 KiB at most).
#extension GL_KHR_shader_subgroup_basic : enable
#extension GL_KHR_shader_subgroup_arithmetic : enable
#include "swiglu.glsl"
layout(local_size_x = 128) in;
layout(push_constant) uniform PC {
    uint m, k, n, x_off, w_off, b_off, o_off, o_stride, row_bytes, has_bias, units, wu_off;
} pc;

const bool GATED = (VARIANT & 2u) != 0u;
const uint ROWS = 1u << ((VARIANT >> 2) & 3u); // weight rows per workgroup
const uint MT = 8u; // activation rows per workgroup: each weight is used for all of them
const uint RM = ROWS * MT; // accumulators per invocation (per product): acc[rr * MT + r]
const uint NSG = 32u; // subgroups per workgroup at most (subgroup size >= 4)
const uint NRED = GATED ? 2u : 1u; // red[0]: x.W's subgroup sums, red[NRED-1]: x.W_up's
shared float red[NRED][RM][NSG];

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
// them from memory again); y and z = the group of ROWS weight rows, folded.
uint vec_row0() { return (gl_WorkGroupID.y + gl_WorkGroupID.z * gl_NumWorkGroups.y) * ROWS; }
uint vec_m0() { return gl_WorkGroupID.x * MT; }

// out[m0 + r][j0 + rr] = the workgroup's sum of acc[rr * MT + r]
// (+ bias[j0 + rr]) for r < nr, rr < nj; GATED: silu_mul(that sum, the sum
// of acc_up[rr * MT + r]). Every invocation of the workgroup calls it (it
// holds a barrier).
void vec_finish(float acc[RM], float acc_up[RM], uint nr, uint nj, uint m0, uint j0)
{
    [[unroll]] for (uint i = 0u; i < RM; i++) {
        float v = subgroupAdd(acc[i]);
        if (subgroupElect())
            red[0][i][gl_SubgroupID] = v;
        if (GATED) {
            float vu = subgroupAdd(acc_up[i]);
            if (subgroupElect())
                red[NRED - 1u][i][gl_SubgroupID] = vu;
        }
    }
    barrier();
    uint t = gl_LocalInvocationID.x, rr = t / MT, r = t % MT;
    if (t < RM && r < nr && rr < nj) {
        uint j = j0 + rr;
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
        outb[pc.o_off + (m0 + r) * pc.o_stride + j] = floatBitsToUint(v);
    }
}
