#version 450
// matmul_qvec: out[m][j] = sum_k x[m][k] * W[j][k] (+ bias[j]) for the
// block-quantized weight types (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) on
// GPUs: the decode kernel of quantized models, one pass over the weights.
// A workgroup of 128 invocations takes ROWS weight rows and up to MT
// activation rows (matmul_vec.glsl). The row is read in 32-element units
// (a whole Q4_0/Q4_1/Q8_0 block, or one of the 8 sub-blocks of a K-quant
// super-block), each split into 4 parts of 8 elements (deq8): invocation t
// takes part t % 4 of unit t / 4, then the same 128 positions further on,
// so a subgroup of 32 reads 8 consecutive units — one contiguous span of
// the row (8 blocks of Q4_0 = 144 bytes, one Q4_K super-block), each
// invocation its own 4-8 bytes of quants plus the unit's scales — with
// 32-bit word loads (the blocks are not 16-byte multiples). The
// activations a part needs are two runs of 4 (x_run4), also consecutive
// across the subgroup. Each weight is dequantized once by deq8
// (dequant.glsl: the CPU's float operations, so the weights are exactly
// the reference's) and used for all MT rows, each activation run for all
// ROWS rows; the partials are reduced in a fixed order (vec_finish).
//
// The host picks it for these types when k is a multiple of the block and
// the device has subgroup arithmetic in compute shaders (docs/VULKAN.md).
#include "common.glsl"
layout(constant_id = 0) const uint WTYPE = 2u;
layout(constant_id = 1) const uint VARIANT = 0u;
BUF_RO(0, x)
layout(std430, set = 0, binding = 0) readonly buffer Buf0v { uvec4 x4[]; };
BUF_RO(1, wq)
BUF_RO(2, bias)
BUF_WO(3, outb)
BUF_RO(4, wu)
#include "matmul_vec.glsl"
#define DEQ_TWO_WEIGHTS
#include "dequant.glsl"

// acc[rr * MT + r] += part p of unit u of weight row rr (w[rr]) times
// activation row r's runs, in order, for every rr < nj; each run is read
// once for all of them. GATED: acc_up likewise with W_up's parts (wu).
void part_acc(float w[ROWS][8], float wu8[ROWS][8], uint nr, uint nj, uint m0, uint u, uint p,
              inout float acc[RM], inout float acc_up[RM])
{
    // x offsets of slots 0-3 and 4-7 within the unit
    uint e0 = deq8_elem(p, 0u), e1 = deq8_elem(p, 4u);
    [[unroll]] for (uint r = 0u; r < MT; r++) {
        if (r < nr) {
            uint xb = pc.x_off + (m0 + r) * pc.k + 32u * u;
            vec4 xa = x_run4(xb + e0), xc = x_run4(xb + e1);
            [[unroll]] for (uint rr = 0u; rr < ROWS; rr++) {
                if (rr < nj) {
                    float s = acc[rr * MT + r];
                    [[unroll]] for (uint i = 0u; i < 4u; i++)
                        s += w[rr][i] * xa[i];
                    [[unroll]] for (uint i = 0u; i < 4u; i++)
                        s += w[rr][i + 4u] * xc[i];
                    acc[rr * MT + r] = s;
                    if (GATED) {
                        float su = acc_up[rr * MT + r];
                        [[unroll]] for (uint i = 0u; i < 4u; i++)
                            su += wu8[rr][i] * xa[i];
                        [[unroll]] for (uint i = 0u; i < 4u; i++)
                            su += wu8[rr][i + 4u] * xc[i];
                        acc_up[rr * MT + r] = su;
                    }
                }
            }
        }
    }
}

void main()
{
    uint j0 = vec_row0();
    uint m0 = vec_m0();
    uint t = gl_LocalInvocationID.x;
    if (j0 >= pc.n) // uniform over the workgroup: no barrier is skipped unevenly
        return;
    uint nr = min(MT, pc.m - m0), nj = min(ROWS, pc.n - j0);
    float acc[RM], acc_up[RM];
    [[unroll]] for (uint i = 0u; i < RM; i++) {
        acc[i] = 0.0;
        acc_up[i] = 0.0;
    }
    uint row = pc.w_off + j0 * pc.row_bytes, row_up = pc.wu_off + j0 * pc.row_bytes;
    for (uint v = t; v < 4u * pc.units; v += 128u) {
        uint u = v >> 2, p = v & 3u;
        float w[ROWS][8], wu8[ROWS][8];
        [[unroll]] for (uint rr = 0u; rr < ROWS; rr++) {
            if (rr < nj) {
                deq8(row + rr * pc.row_bytes, u, p, w[rr]);
                if (GATED) {
                    deq_sel = 1u;
                    deq8(row_up + rr * pc.row_bytes, u, p, wu8[rr]);
                    deq_sel = 0u;
                }
            }
        }
        part_acc(w, wu8, nr, nj, m0, u, p, acc, acc_up);
    }
    vec_finish(acc, acc_up, nr, nj, m0, j0);
}
