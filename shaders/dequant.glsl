// dequant.glsl — weight rows of every duet weight type, 32 elements at a
// time, with exactly the float operations of backends/cpu/quant.c (so an
// embedding row is bit-identical to the CPU's). The including shader
// declares the weight buffer `wq` (words) and the constant WTYPE (a
// duet_dtype value). Byte offsets are within the binding; 16-bit fields
// sit at even offsets.

const uint T_F32 = 0u, T_F16 = 1u, T_Q4_0 = 2u, T_Q4_1 = 3u, T_Q8_0 = 8u;
const uint T_Q4_K = 12u, T_Q5_K = 13u, T_Q6_K = 14u, T_BF16 = 30u;

uint ld_u8(uint off) { return (wq[off >> 2] >> ((off & 3u) * 8u)) & 0xffu; }
uint ld_u16(uint off) { return (wq[off >> 2] >> ((off & 2u) * 8u)) & 0xffffu; }
// Four bytes at any offset (touches only words holding those bytes).
uint ld_u32(uint off)
{
    uint sh = (off & 3u) * 8u;
    uint lo = wq[off >> 2];
    return sh == 0u ? lo : (lo >> sh) | (wq[(off >> 2) + 1u] << (32u - sh));
}

int sext8(uint b) { return int(b << 24) >> 24; }

// Pair j of the 6-bit (scale, min) pairs of Q4_K/Q5_K at byte s.
void k_scale_min(uint s, uint j, out uint sc, out uint mn)
{
    if (j < 4u) {
        sc = ld_u8(s + j) & 63u;
        mn = ld_u8(s + j + 4u) & 63u;
    } else {
        sc = (ld_u8(s + j + 4u) & 15u) | ((ld_u8(s + j - 4u) >> 6) << 4);
        mn = (ld_u8(s + j + 4u) >> 4) | ((ld_u8(s + j) >> 6) << 4);
    }
}

// Elements 32u .. 32u+cnt-1 of the row starting at byte `row` into w
// (cnt < 32 only for the plain types' last unit). Every loop over w has
// constant bounds and is unrolled, so w stays in registers (a dynamically
// indexed array goes to scratch memory, which lavapipe makes ~100x slower).
void deq32(uint row, uint u, uint cnt, out float w[32])
{
    [[unroll]] for (uint e = 0u; e < 32u; e++)
        w[e] = 0.0;
    if (WTYPE == T_F32) {
        uint b = (row >> 2) + 32u * u;
        [[unroll]] for (uint e = 0u; e < 32u; e++)
            if (e < cnt)
                w[e] = uintBitsToFloat(wq[b + e]);
    } else if (WTYPE == T_F16 || WTYPE == T_BF16) {
        uint b = row + 64u * u;
        [[unroll]] for (uint e = 0u; e < 32u; e++) {
            if (e < cnt) {
                uint h = ld_u16(b + 2u * e);
                w[e] = WTYPE == T_F16 ? h2f(h) : uintBitsToFloat(h << 16);
            }
        }
    } else if (WTYPE == T_Q4_0) {
        uint b = row + 18u * u;
        float d = h2f(ld_u16(b));
        [[unroll]] for (uint j4 = 0u; j4 < 4u; j4++) {
            uint q4 = ld_u32(b + 2u + 4u * j4);
            [[unroll]] for (uint i = 0u; i < 4u; i++) {
                uint q = (q4 >> (8u * i)) & 0xffu;
                precise float lo = d * float(int(q & 15u) - 8);
                precise float hi = d * float(int(q >> 4) - 8);
                w[4u * j4 + i] = lo;
                w[4u * j4 + i + 16u] = hi;
            }
        }
    } else if (WTYPE == T_Q4_1) {
        uint b = row + 20u * u;
        float d = h2f(ld_u16(b)), m = h2f(ld_u16(b + 2u));
        [[unroll]] for (uint j4 = 0u; j4 < 4u; j4++) {
            uint q4 = ld_u32(b + 4u + 4u * j4);
            [[unroll]] for (uint i = 0u; i < 4u; i++) {
                uint q = (q4 >> (8u * i)) & 0xffu;
                precise float lo = d * float(q & 15u) + m;
                precise float hi = d * float(q >> 4) + m;
                w[4u * j4 + i] = lo;
                w[4u * j4 + i + 16u] = hi;
            }
        }
    } else if (WTYPE == T_Q8_0) {
        uint b = row + 34u * u;
        float d = h2f(ld_u16(b));
        [[unroll]] for (uint j4 = 0u; j4 < 8u; j4++) {
            uint q4 = ld_u32(b + 2u + 4u * j4);
            [[unroll]] for (uint i = 0u; i < 4u; i++) {
                precise float v = d * float(sext8((q4 >> (8u * i)) & 0xffu));
                w[4u * j4 + i] = v;
            }
        }
    } else if (WTYPE == T_Q4_K || WTYPE == T_Q5_K) {
        uint bytes = WTYPE == T_Q4_K ? 144u : 176u;
        uint b = row + bytes * (u >> 3);
        uint s = u & 7u, g = s >> 1;
        float d = h2f(ld_u16(b)), dmin = h2f(ld_u16(b + 2u));
        uint sc, mn;
        k_scale_min(b + 4u, s, sc, mn);
        precise float d0 = d * float(sc);
        precise float m0 = dmin * float(mn);
        uint qs = b + (WTYPE == T_Q4_K ? 16u : 48u) + 32u * g;
        [[unroll]] for (uint l4 = 0u; l4 < 8u; l4++) {
            uint q4 = ld_u32(qs + 4u * l4);
            uint h4 = WTYPE == T_Q5_K ? ld_u32(b + 16u + 4u * l4) : 0u;
            [[unroll]] for (uint i = 0u; i < 4u; i++) {
                uint q = (q4 >> (8u * i)) & 0xffu;
                q = (s & 1u) != 0u ? q >> 4 : q & 15u;
                if (WTYPE == T_Q5_K)
                    q |= ((h4 >> (8u * i + s)) & 1u) << 4;
                precise float v = d0 * float(q) - m0;
                w[4u * l4 + i] = v;
            }
        }
    } else if (WTYPE == T_Q6_K) {
        uint b = row + 210u * (u >> 3);
        uint v8 = u & 7u, h = v8 >> 2, i = v8 & 3u;
        float d = h2f(ld_u16(b + 208u));
        [[unroll]] for (uint l4 = 0u; l4 < 8u; l4++) {
            uint ql4 = ld_u32(b + 64u * h + 4u * l4 + 32u * (i & 1u));
            uint qh4 = ld_u32(b + 128u + 32u * h + 4u * l4);
            [[unroll]] for (uint k = 0u; k < 4u; k++) {
                uint l = 4u * l4 + k;
                uint lowbyte = (ql4 >> (8u * k)) & 0xffu;
                uint lo4 = i < 2u ? (lowbyte & 15u) : (lowbyte >> 4);
                uint hi2 = (((qh4 >> (8u * k)) & 0xffu) >> (2u * i)) & 3u;
                int q = int(lo4 | (hi2 << 4)) - 32;
                float sc = float(sext8(ld_u8(b + 192u + 8u * h + 2u * i + (l >> 4))));
                precise float ds = d * sc;
                precise float v = ds * float(q);
                w[l] = v;
            }
        }
    }
}
