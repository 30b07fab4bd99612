#version 450
// matmul: out[m][j] = sum_k x[m][k] * W[j][k] (+ bias[j]) for any weight
// type. A workgroup of 64 invocations takes 4 weight rows (16 invocations
// each) and up to MT activation rows: the 16 invocations of a row share
// its 32-element units (each unit dequantized once, used for MT rows),
// then a fixed-order tree sums their partials, so a row's result depends
// neither on the rest of the batch nor on how the rows are split.
//
// VARIANT 1 (CPU-type devices such as lavapipe, where shared memory and
// barriers are expensive): one invocation per weight row and MT activation
// rows, the units summed in order. Results differ from variant 0 only in
// rounding; each is batch invariant.
//
// VARIANT bit 1 (GATED, either kernel): out = silu(x.W^T) * (x.W_up^T),
// W_up bound at 4. Row j of W_up is summed exactly as row j of W (the
// same units, order and tree), so both products have the plain kernel's
// bits, and silu_mul is the swiglu shader's expression. Without the bit
// the gated code is dead once specialized.
#include "common.glsl"
#include "swiglu.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint WTYPE = 0u;
layout(constant_id = 1) const uint VARIANT = 0u;
const bool PER_OUTPUT = (VARIANT & 1u) != 0u;
const bool GATED = (VARIANT & 2u) != 0u;
BUF_RO(0, x)
BUF_RO(1, wq)
BUF_RO(2, bias)
BUF_WO(3, outb)
BUF_RO(4, wu)
layout(push_constant) uniform PC {
    uint m, k, n, x_off, w_off, b_off, o_off, o_stride, row_bytes, has_bias, units, wu_off;
} pc;
#define DEQ_TWO_WEIGHTS
#include "dequant.glsl"

const uint MT = 8u;   // activation rows per workgroup
const uint RPW = 4u;  // weight rows per workgroup
const uint TPR = 16u; // invocations per weight row
const uint NRED = GATED ? 2u : 1u; // red[0]: the x.W partials, red[NRED-1]: x.W_up's
shared float red[NRED][MT][64];

void main_per_output()
{
    uint id = (gl_WorkGroupID.x + gl_WorkGroupID.z * gl_NumWorkGroups.x) * 64u +
              gl_LocalInvocationID.x;
    uint j = id % pc.n, m0 = (id / pc.n) * MT;
    if (m0 >= pc.m)
        return;
    uint row = pc.w_off + j * pc.row_bytes, row_up = pc.wu_off + j * pc.row_bytes;
    float acc[MT], acc_up[MT];
    [[unroll]] for (uint r = 0u; r < MT; r++) {
        acc[r] = 0.0;
        acc_up[r] = 0.0;
    }
    for (uint u = 0u; u < pc.units; u++) {
        uint cnt = min(32u, pc.k - 32u * u);
        float w[32];
        deq32(row, u, cnt, w);
        [[unroll]] for (uint r = 0u; r < MT; r++) {
            if (m0 + r < pc.m) {
                uint xb = pc.x_off + (m0 + r) * pc.k + 32u * u;
                float s = 0.0;
                [[unroll]] for (uint e = 0u; e < 32u; e++)
                    if (e < cnt)
                        s += w[e] * uintBitsToFloat(x[xb + e]);
                acc[r] += s;
            }
        }
        if (GATED) {
            deq_sel = 1u;
            deq32(row_up, u, cnt, w);
            deq_sel = 0u;
            [[unroll]] for (uint r = 0u; r < MT; r++) {
                if (m0 + r < pc.m) {
                    uint xb = pc.x_off + (m0 + r) * pc.k + 32u * u;
                    float s = 0.0;
                    [[unroll]] for (uint e = 0u; e < 32u; e++)
                        if (e < cnt)
                            s += w[e] * uintBitsToFloat(x[xb + e]);
                    acc_up[r] += s;
                }
            }
        }
    }
    [[unroll]] for (uint r = 0u; r < MT; r++) {
        if (m0 + r < pc.m) {
            float v = acc[r];
            if (GATED)
                v = silu_mul(v, acc_up[r]);
            else if (pc.has_bias != 0u)
                v += uintBitsToFloat(bias[pc.b_off + j]);
            outb[pc.o_off + (m0 + r) * pc.o_stride + j] = floatBitsToUint(v);
        }
    }
}

void main()
{
    if (PER_OUTPUT) {
        main_per_output();
        return;
    }
    uint lid = gl_LocalInvocationID.x;
    uint sub = lid / TPR, t = lid % TPR;
    // x = groups of MT activation rows (fastest: the workgroups reading one
    // weight tile run together, so it comes from memory once and from L2
    // after), y and z = the tile of RPW weight rows, folded.
    uint j = (gl_WorkGroupID.y + gl_WorkGroupID.z * gl_NumWorkGroups.y) * RPW + sub;
    uint m0 = gl_WorkGroupID.x * MT;
    float acc[MT], acc_up[MT];
    [[unroll]] for (uint r = 0u; r < MT; r++) {
        acc[r] = 0.0;
        acc_up[r] = 0.0;
    }
    if (j < pc.n) {
        uint row = pc.w_off + j * pc.row_bytes, row_up = pc.wu_off + j * pc.row_bytes;
        for (uint u = t; u < pc.units; u += TPR) {
            uint cnt = min(32u, pc.k - 32u * u);
            float w[32];
            deq32(row, u, cnt, w);
            [[unroll]] for (uint r = 0u; r < MT; r++) {
                if (m0 + r < pc.m) {
                    uint xb = pc.x_off + (m0 + r) * pc.k + 32u * u;
                    float s = 0.0;
                    [[unroll]] for (uint e = 0u; e < 32u; e++)
                        if (e < cnt)
                            s += w[e] * uintBitsToFloat(x[xb + e]);
                    acc[r] += s;
                }
            }
            if (GATED) {
                deq_sel = 1u;
                deq32(row_up, u, cnt, w);
                deq_sel = 0u;
                [[unroll]] for (uint r = 0u; r < MT; r++) {
                    if (m0 + r < pc.m) {
                        uint xb = pc.x_off + (m0 + r) * pc.k + 32u * u;
                        float s = 0.0;
                        [[unroll]] for (uint e = 0u; e < 32u; e++)
                            if (e < cnt)
                                s += w[e] * uintBitsToFloat(x[xb + e]);
                        acc_up[r] += s;
                    }
                }
            }
        }
    }
    [[unroll]] for (uint r = 0u; r < MT; r++) {
        red[0][r][lid] = acc[r];
        if (GATED)
            red[NRED - 1u][r][lid] = acc_up[r];
    }
    barrier();
    for (uint st = TPR / 2u; st > 0u; st >>= 1) {
        if (t < st)
            [[unroll]] for (uint r = 0u; r < MT; r++) {
                red[0][r][lid] += red[0][r][lid + st];
                if (GATED)
                    red[NRED - 1u][r][lid] += red[NRED - 1u][r][lid + st];
            }
        barrier();
    }
    if (j < pc.n && t < MT && m0 + t < pc.m) {
        float v = red[0][t][sub * TPR];
        if (GATED)
            v = silu_mul(v, red[NRED - 1u][t][sub * TPR]);
        else if (pc.has_bias != 0u)
            v += uintBitsToFloat(bias[pc.b_off + j]);
        outb[pc.o_off + (m0 + t) * pc.o_stride + j] = floatBitsToUint(v);
    }
}
