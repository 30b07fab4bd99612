// dequant.glsl — weight rows of every duet weight type, 32 elements at a
// time (deq32), or 8 of them (deq8, the quantized types), with exactly the
// float operations of backends/cpu/quant.c (so an embedding row is
// bit-identical to the CPU's): the per-element formulas below are the only
// place those operations are written. The including shader declares the
// weight buffer `wq` (words) and the constant WTYPE (a duet_dtype value);
// a shader that defines DEQ_TWO_WEIGHTS also declares `wu` (the gated
// matmul's up weights), read instead of wq while deq_sel is 1. deq_sel is
// only ever set to a constant around a call, so once inlined each load
// reads one buffer, and a shader that never sets it reads only wq.
// Byte offsets are within the binding; 16-bit fields sit at even offsets.

const uint T_F32 = 0u, T_F16 = 1u, T_Q4_0 = 2u, T_Q4_1 = 3u, T_Q8_0 = 8u;
const uint T_Q4_K = 12u, T_Q5_K = 13u, T_Q6_K = 14u, T_BF16 = 30u;

#ifdef DEQ_TWO_WEIGHTS
uint deq_sel = 0u;
uint wq_word(uint i) { return deq_sel != 0u ? wu[i] : wq[i]; }
#else
uint wq_word(uint i) { return wq[i]; }
#endif

uint ld_u8(uint off) { return (wq_word(off >> 2) >> ((off & 3u) * 8u)) & 0xffu; }
uint ld_u16(uint off) { return (wq_word(off >> 2) >> ((off & 2u) * 8u)) & 0xffffu; }
// Four bytes at any offset (touches only words holding those bytes).
uint ld_u32(uint off)
{
    uint sh = (off & 3u) * 8u;
    uint lo = wq_word(off >> 2);
    return sh == 0u ? lo : (lo >> sh) | (wq_word((off >> 2) + 1u) << (32u - sh));
}

int sext8(uint b) { return int(b << 24) >> 24; }

// One element of each quantized type from its quant q (as stored) and its
// block's or sub-block's scales.
float q4_0_val(float d, uint q) { precise float v = d * float(int(q) - 8); return v; }
float q4_1_val(float d, float m, uint q) { precise float v = d * float(q) + m; return v; }
float q8_0_val(float d, uint b) { precise float v = d * float(sext8(b)); return v; }
float qk_val(float d0, float m0, uint q) { precise float v = d0 * float(q) - m0; return v; }
float q6_k_val(float d, uint scb, uint q6)
{
    precise float ds = d * float(sext8(scb));
    precise float v = ds * float(int(q6) - 32);
    return v;
}

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

// The scale and min of sub-block s of the Q4_K/Q5_K super-block at byte b.
void k_sub_scales(uint b, uint s, out float d0, out float m0)
{
    float d = h2f(ld_u16(b)), dmin = h2f(ld_u16(b + 2u));
    uint sc, mn;
    k_scale_min(b + 4u, s, sc, mn);
    precise float ds = d * float(sc);
    precise float dm = dmin * float(mn);
    d0 = ds;
    m0 = dm;
}

// The element of its unit that slot i (< 8) of part p (< 4) of deq8 is:
// Q4_0/Q4_1 bytes hold elements e and e + 16, so a part is 4 bytes of
// quants, elements 4p..4p+3 and 4p+16..4p+19; the other types' parts are
// elements 8p..8p+7.
uint deq8_elem(uint p, uint i)
{
    if (WTYPE == T_Q4_0 || WTYPE == T_Q4_1)
        return i < 4u ? 4u * p + i : 16u + 4u * p + (i - 4u);
    return 8u * p + i;
}

// Part p (< 4) of unit u of the row at byte `row` of a quantized type:
// w[i] = element deq8_elem(p, i) of the unit (deq32 is its four parts).
// A unit's four parts read disjoint quant bytes, so four invocations can
// share a unit, each reading only its own 4-8 bytes of quants.
void deq8(uint row, uint u, uint p, out float w[8])
{
    [[unroll]] for (uint i = 0u; i < 8u; i++)
        w[i] = 0.0;
    if (WTYPE == T_Q4_0 || WTYPE == T_Q4_1) {
        uint bb = WTYPE == T_Q4_0 ? 18u : 20u, qo = WTYPE == T_Q4_0 ? 2u : 4u;
        uint b = row + bb * u;
        float d = h2f(ld_u16(b)), m = WTYPE == T_Q4_1 ? h2f(ld_u16(b + 2u)) : 0.0;
        uint q4 = ld_u32(b + qo + 4u * p);
        [[unroll]] for (uint i = 0u; i < 4u; i++) {
            uint q = (q4 >> (8u * i)) & 0xffu;
            w[i] = WTYPE == T_Q4_0 ? q4_0_val(d, q & 15u) : q4_1_val(d, m, q & 15u);
            w[i + 4u] = WTYPE == T_Q4_0 ? q4_0_val(d, q >> 4) : q4_1_val(d, m, q >> 4);
        }
    } else if (WTYPE == T_Q8_0) {
        uint b = row + 34u * u;
        float d = h2f(ld_u16(b));
        [[unroll]] for (uint j4 = 0u; j4 < 2u; j4++) {
            uint q4 = ld_u32(b + 2u + 8u * p + 4u * j4);
            [[unroll]] for (uint i = 0u; i < 4u; i++)
                w[4u * j4 + i] = q8_0_val(d, (q4 >> (8u * i)) & 0xffu);
        }
    } else if (WTYPE == T_Q4_K || WTYPE == T_Q5_K) {
        uint bytes = WTYPE == T_Q4_K ? 144u : 176u;
        uint b = row + bytes * (u >> 3);
        uint s = u & 7u, g = s >> 1;
        float d0, m0;
        k_sub_scales(b, s, d0, m0);
        uint qs = b + (WTYPE == T_Q4_K ? 16u : 48u) + 32u * g;
        [[unroll]] for (uint j4 = 0u; j4 < 2u; j4++) {
            uint l4 = 2u * p + j4;
            uint q4 = ld_u32(qs + 4u * l4);
            uint h4 = WTYPE == T_Q5_K ? ld_u32(b + 16u + 4u * l4) : 0u;
            [[unroll]] for (uint i = 0u; i < 4u; i++) {
                uint q = (q4 >> (8u * i)) & 0xffu;
                q = (s & 1u) != 0u ? q >> 4 : q & 15u;
                if (WTYPE == T_Q5_K)
                    q |= ((h4 >> (8u * i + s)) & 1u) << 4;
                w[4u * j4 + i] = qk_val(d0, m0, q);
            }
        }
    } else if (WTYPE == T_Q6_K) {
        uint b = row + 210u * (u >> 3);
        uint v8 = u & 7u, h = v8 >> 2, i = v8 & 3u;
        float d = h2f(ld_u16(b + 208u));
        uint scb = ld_u8(b + 192u + 8u * h + 2u * i + (p >> 1)); // elements 8p.. share l >> 4
        [[unroll]] for (uint j4 = 0u; j4 < 2u; j4++) {
            uint l4 = 2u * p + j4;
            uint ql4 = ld_u32(b + 64u * h + 4u * l4 + 32u * (i & 1u));
            uint qh4 = ld_u32(b + 128u + 32u * h + 4u * l4);
            [[unroll]] for (uint k = 0u; k < 4u; k++) {
                uint lowbyte = (ql4 >> (8u * k)) & 0xffu;
                uint lo4 = i < 2u ? (lowbyte & 15u) : (lowbyte >> 4);
                uint hi2 = (((qh4 >> (8u * k)) & 0xffu) >> (2u * i)) & 3u;
                w[4u * j4 + k] = q6_k_val(d, scb, lo4 | (hi2 << 4));
            }
        }
    }
}

// Elements 32u .. 32u+cnt-1 of the row starting at byte `row` into w
// (cnt < 32 only for the plain types' last unit). A quantized type's unit
// is deq8's four parts. Every loop over w has constant bounds and is
// unrolled, so w stays in registers (a dynamically indexed array goes to
// scratch memory, which lavapipe makes ~100x slower).
void deq32(uint row, uint u, uint cnt, out float w[32])
{
    [[unroll]] for (uint e = 0u; e < 32u; e++)
        w[e] = 0.0;
    if (WTYPE == T_F32) {
        uint b = (row >> 2) + 32u * u;
        [[unroll]] for (uint e = 0u; e < 32u; e++)
            if (e < cnt)
                w[e] = uintBitsToFloat(wq_word(b + e));
    } else if (WTYPE == T_F16 || WTYPE == T_BF16) {
        uint b = row + 64u * u;
        [[unroll]] for (uint e = 0u; e < 32u; e++) {
            if (e < cnt) {
                uint h = ld_u16(b + 2u * e);
                w[e] = WTYPE == T_F16 ? h2f(h) : uintBitsToFloat(h << 16);
            }
        }
    } else {
        [[unroll]] for (uint p = 0u; p < 4u; p++) {
            float w8[8];
            deq8(row, u, p, w8);
            [[unroll]] for (uint i = 0u; i < 8u; i++)
                w[deq8_elem(p, i)] = w8[i];
        }
    }
}

