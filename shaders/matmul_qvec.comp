#version 450
// matmul_qvec: out[m][j] = sum_k x[m][k] * W[j][k] (+ bias[j]) for the
// block-quantized weight types (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) on
// GPUs: the decode kernel of quantized models, one pass over the weights.
// A workgroup of 128 invocations takes one weight row and up to MT
// activation rows (matmul_vec.glsl). The row is read in 32-element units
// (a whole Q4_0/Q4_1/Q8_0 block, or one of the 8 sub-blocks of a K-quant
// super-block); invocation t takes units t, t+128, ..., so the invocations
// of a subgroup read consecutive units: one contiguous span of the row per
// step (e.g. 32 x 18 = 576 bytes of Q4_0, or 4 whole Q4_K super-blocks),
// with 32-bit word loads (the blocks are not 16-byte multiples). Each unit
// is dequantized once by deq32 (dequant.glsl: the CPU's float operations,
// so the weights are exactly the reference's) and used for all MT rows;
// the partials are reduced in a fixed order (vec_finish).
//
// The host picks it for these types when k is a multiple of the block and
// the device has subgroup arithmetic in compute shaders (docs/VULKAN.md).
#include "common.glsl"
layout(constant_id = 0) const uint WTYPE = 2u;
layout(constant_id = 1) const uint VARIANT = 0u;
BUF_RO(0, x)
BUF_RO(1, wq)
BUF_RO(2, bias)
BUF_WO(3, outb)
#include "matmul_vec.glsl"
#include "dequant.glsl"

void main()
{
    uint j = vec_row();
    uint m0 = gl_WorkGroupID.y * MT;
    uint t = gl_LocalInvocationID.x;
    if (j >= pc.n) // uniform over the workgroup: no barrier is skipped unevenly
        return;
    uint nr = min(MT, pc.m - m0);
    float acc[MT];
    [[unroll]] for (uint r = 0u; r < MT; r++)
        acc[r] = 0.0;
    uint row = pc.w_off + j * pc.row_bytes;
    for (uint u = t; u < pc.units; u += 128u) {
        float w[32];
        deq32(row, u, 32u, w);
        [[unroll]] for (uint r = 0u; r < MT; r++) {
            if (r < nr) {
                uint xb = pc.x_off + (m0 + r) * pc.k + 32u * u;
                float s = acc[r];
                [[unroll]] for (uint e = 0u; e < 32u; e++)
                    s += w[e] * uintBitsToFloat(x[xb + e]);
                acc[r] = s;
            }
        }
    }
    vec_finish(acc, nr, m0, j);
}
