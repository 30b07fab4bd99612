#version 450
// matmul_vec: out[m][j] = sum_k x[m][k] * W[j][k] (+ bias[j]) for F32,
// F16 and BF16 weights on GPUs: the decode kernel, where reading the
// weights once at full memory bandwidth is the whole cost. A workgroup of
// 128 invocations takes one weight row and up to MT activation rows
// (matmul_vec.glsl); each invocation reads 16 bytes (8 16-bit weights or 4
// floats) per load, consecutive invocations consecutive 16-byte pieces, so
// a subgroup's loads are one contiguous span; each weight is used for all
// MT rows; the activations are read 16 bytes at a time too (x_run4). The
// partials are reduced in a fixed order (vec_finish).
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

// acc[r] += the piece's weights times row r's activations, in order.
void piece_acc(float wv[8], uint nr, uint m0, uint p, inout float acc[MT])
{
    [[unroll]] for (uint r = 0u; r < MT; r++) {
        if (r < nr) {
            uint xb = pc.x_off + (m0 + r) * pc.k + EPP * p;
            vec4 xa = x_run4(xb), xc = EPP == 8u ? x_run4(xb + 4u) : vec4(0.0);
            float s = acc[r];
            [[unroll]] for (uint e = 0u; e < 4u; e++)
                s += wv[e] * xa[e];
            [[unroll]] for (uint e = 0u; e < 4u; e++)
                if (EPP == 8u)
                    s += wv[e + 4u] * xc[e];
            acc[r] = s;
        }
    }
}

void main()
{
    uint j = vec_row();
    uint m0 = vec_m0();
    uint t = gl_LocalInvocationID.x;
    if (j >= pc.n) // uniform over the workgroup: no barrier is skipped unevenly
        return;
    uint nr = min(MT, pc.m - m0);
    float acc[MT], acc_up[MT];
    [[unroll]] for (uint r = 0u; r < MT; r++) {
        acc[r] = 0.0;
        acc_up[r] = 0.0;
    }
    uint base = (pc.w_off + j * pc.row_bytes) >> 4; // in 16-byte pieces
    uint base_up = (pc.wu_off + j * pc.row_bytes) >> 4;
    uint pieces = pc.k / EPP;
    for (uint p = t; p < pieces; p += 128u) {
        float wv[8];
        piece_weights(w4[base + p], wv);
        piece_acc(wv, nr, m0, p, acc);
        if (GATED) {
            piece_weights(wu4[base_up + p], wv);
            piece_acc(wv, nr, m0, p, acc_up);
        }
    }
    vec_finish(acc, acc_up, nr, m0, j);
}
