#version 450
// kv_write: copy token rows of k and v into the paged cache at
// slot_mapping[t] (slots outside [0, n_slots), -1 included, are skipped).
// F16 caches: one invocation per pair of halves (rows are even), rounded
// to nearest even as the CPU does. ROPE: each k element is stored rotated
// as rope.comp rotates it (rope.glsl), computed on its own from the
// unrotated pair it belongs to, so a pair of halves may straddle a pair of
// dims or a head.
#include "common.glsl"
#include "rope.glsl"
layout(local_size_x = 256) in;
layout(constant_id = 0) const uint CTYPE = 0u; // 0 = F32, 1 = F16
layout(constant_id = 1) const uint ROPE = 0u;  // 1 = rotate k
BUF_RO(0, kb)
BUF_RO(1, vb)
BUF_RO(2, slots)
BUF_WO(3, kc)
BUF_WO(4, vc)
BUF_RO(5, positions)
BUF_RO(6, factors)
BUF_RO(7, freqs)
layout(push_constant) uniform PC {
    uint n_tokens, row, n_slots, k_off, v_off, s_off, kc_off, vc_off, head_dim;
    uint rot_dim, neox, has_factors, p_off, f_off, t_off;
} pc;

// The bits of k element e of token t as stored: rotated when ROPE and e
// falls in a head's leading rot_dim dims, else as read.
uint k_bits(uint t, uint e)
{
    uint src = pc.k_off + t * pc.row;
    uint j = e % pc.head_dim;
    if (ROPE == 0u || j >= pc.rot_dim)
        return kb[src + e];
    uint half_rot = pc.rot_dim / 2u;
    bool neox = pc.neox != 0u;
    uint i = neox ? j % half_rot : j / 2u;
    bool first = neox ? j < half_rot : (j & 1u) == 0u;
    uint head = src + e - j;
    uint i0 = neox ? i : 2u * i;
    uint i1 = neox ? i + half_rot : 2u * i + 1u;
    bool has_f = pc.has_factors != 0u;
    float factor = 1.0, c, s;
    if (has_f) // the dummy binding otherwise
        factor = uintBitsToFloat(factors[pc.f_off + i]);
    rope_cos_sin(int(positions[pc.p_off + t]), uintBitsToFloat(freqs[pc.t_off + 2u * i]),
                 uintBitsToFloat(freqs[pc.t_off + 2u * i + 1u]), has_f, factor, c, s);
    return floatBitsToUint(rope_rotated(uintBitsToFloat(kb[head + i0]),
                                        uintBitsToFloat(kb[head + i1]), c, s, first));
}

void main()
{
    uint per_tok = CTYPE == 1u ? pc.row / 2u : pc.row;
    uint id = group_linear() * 256u + gl_LocalInvocationID.x;
    if (id >= pc.n_tokens * per_tok)
        return;
    uint t = id / per_tok, e = id % per_tok;
    int slot = int(slots[pc.s_off + t]);
    if (slot < 0 || uint(slot) >= pc.n_slots)
        return;
    if (CTYPE == 1u) {
        uint src = t * pc.row + 2u * e, dst = pc.kc_off + uint(slot) * per_tok + e;
        kc[dst] = f2h(uintBitsToFloat(k_bits(t, 2u * e))) |
                  (f2h(uintBitsToFloat(k_bits(t, 2u * e + 1u))) << 16);
        vc[pc.vc_off + uint(slot) * per_tok + e] =
            f2h(uintBitsToFloat(vb[pc.v_off + src])) |
            (f2h(uintBitsToFloat(vb[pc.v_off + src + 1u])) << 16);
    } else {
        kc[pc.kc_off + uint(slot) * pc.row + e] = k_bits(t, e);
        vc[pc.vc_off + uint(slot) * pc.row + e] = vb[pc.v_off + t * pc.row + e];
    }
}
