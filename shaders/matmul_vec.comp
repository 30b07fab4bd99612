#version 450
// matmul_vec: out[m][j] = sum_k x[m][k] * W[j][k] (+ bias[j]) for F32,
// F16 and BF16 weights on GPUs: the decode kernel, where reading the
// weights once at full memory bandwidth is the whole cost. A workgroup of
// 128 invocations takes ROWS weight rows and up to MT activation rows
// (matmul_vec.glsl); each invocation reads 16 bytes (8 16-bit weights or 4
// floats) per load, consecutive invocations consecutive 16-byte pieces, so
// a subgroup's loads are one contiguous span; each weight is used for all
// MT rows and each activation run, read 16 bytes at a time too (x_run4),
// for all ROWS rows. The partials are reduced in a fixed order
// (vec_finish).
//
// The host picks it for these types when k is a multiple of the weights
// per piece, the weights start 16-byte aligned and the device has
// subgroup arithmetic in compute shaders (docs/VULKAN.md).
#include "common.glsl"
layout(constant_id = 0) const uint WTYPE = 1u;
layout(constant_id = 1) const uint VARIANT = 0u;
BUF_RO(0, x)
layout(std430, set = 0, binding = 0) readonly buffer Buf0v { uvec4 x4[]; };
layout(std430, set = 0, binding = 1) readonly buffer Buf1 { uvec4 w4[]; };
BUF_RO(2, bias)
BUF_WO(3, outb)
layout(std430, set = 0, binding = 4) readonly buffer Buf4 { uvec4 wu4[]; };
#include "matmul_vec.glsl"

const uint T_F32 = 0u, T_F16 = 1u;
const uint EPP = WTYPE == T_F32 ? 4u : 8u; // weights per 16-byte piece

float w16(uint h) { return WTYPE == T_F16 ? h2f(h) : uintBitsToFloat(h << 16); }

// The 8 weights (F16/BF16) or 4 (F32, then 4 zeros) of one 16-byte piece.
void piece_weights(uvec4 q, out float wv[8])
{
    [[unroll]] for (uint i = 0u; i < 4u; i++) {
        if (WTYPE == T_F32) {
            wv[i] = uintBitsToFloat(q[i]);
            wv[i + 4u] = 0.0;
        } else {
            wv[2u * i] = w16(q[i] & 0xffffu);
            wv[2u * i + 1u] = w16(q[i] >> 16);
        }
    }
}

// acc[rr * MT + r] += weight row rr's piece (wv[rr]) times activation row
// r's run, in order, for every rr < nj; each run is read once for all of
// them. GATED: acc_up likewise with W_up's pieces (wu).
void piece_acc(float wv[ROWS][8], float wu[ROWS][8], uint nr, uint nj, uint m0, uint p,
               inout float acc[RM], inout float acc_up[RM])
{
    [[unroll]] for (uint r = 0u; r < MT; r++) {
        if (r < nr) {
            uint xb = pc.x_off + (m0 + r) * pc.k + EPP * p;
            vec4 xa = x_run4(xb), xc = EPP == 8u ? x_run4(xb + 4u) : vec4(0.0);
            [[unroll]] for (uint rr = 0u; rr < ROWS; rr++) {
                if (rr < nj) {
                    float s = acc[rr * MT + r];
                    [[unroll]] for (uint e = 0u; e < 4u; e++)
                        s += wv[rr][e] * xa[e];
                    [[unroll]] for (uint e = 0u; e < 4u; e++)
                        if (EPP == 8u)
                            s += wv[rr][e + 4u] * xc[e];
                    acc[rr * MT + r] = s;
                    if (GATED) {
                        float su = acc_up[rr * MT + r];
                        [[unroll]] for (uint e = 0u; e < 4u; e++)
                            su += wu[rr][e] * xa[e];
                        [[unroll]] for (uint e = 0u; e < 4u; e++)
                            if (EPP == 8u)
                                su += wu[rr][e + 4u] * xc[e];
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
    uint stride = pc.row_bytes >> 4; // a row, in 16-byte pieces
    uint base = (pc.w_off + j0 * pc.row_bytes) >> 4;
    uint base_up = (pc.wu_off + j0 * pc.row_bytes) >> 4;
    uint pieces = pc.k / EPP;
    for (uint p = t; p < pieces; p += 128u) {
        float wv[ROWS][8], wu[ROWS][8];
        [[unroll]] for (uint rr = 0u; rr < ROWS; rr++) {
            if (rr < nj) {
                piece_weights(w4[base + rr * stride + p], wv[rr]);
                if (GATED)
                    piece_weights(wu4[base_up + rr * stride + p], wu[rr]);
            }
        }
        piece_acc(wv, wu, nr, nj, m0, p, acc, acc_up);
    }
    vec_finish(acc, acc_up, nr, nj, m0, j0);
}
