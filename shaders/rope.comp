#version 450
// rope: rotate pairs of the leading rot_dim dims of every q head, and of
// every k head when there is k (n_kv_heads 0 = q only), by
// pos * inv_freq[i] / freq_factors[i]. The math is rope.glsl's, shared with
// kv_write.comp's fused rotation.
#include "common.glsl"
#include "rope.glsl"
layout(local_size_x = 256) in;
BUF_RW(0, qb)
BUF_RW(1, kb)
BUF_RO(2, positions)
BUF_RO(3, factors)
BUF_RO(4, freqs)
layout(push_constant) uniform PC {
    uint n_tokens, n_heads, n_kv_heads, head_dim, q_off, k_off;
    uint rot_dim, neox, has_factors, p_off, f_off, t_off;
} pc;

void main()
{
    uint half_rot = pc.rot_dim / 2u;
    uint heads = pc.n_heads + pc.n_kv_heads;
    uint id = group_linear() * 256u + gl_LocalInvocationID.x;
    if (id >= pc.n_tokens * heads * half_rot)
        return;
    uint i = id % half_rot;
    uint h = (id / half_rot) % heads;
    uint t = id / (half_rot * heads);

    bool has_f = pc.has_factors != 0u;
    float factor = 1.0, c, s;
    if (has_f) // the dummy binding otherwise
        factor = uintBitsToFloat(factors[pc.f_off + i]);
    rope_cos_sin(int(positions[pc.p_off + t]), uintBitsToFloat(freqs[pc.t_off + 2u * i]),
                 uintBitsToFloat(freqs[pc.t_off + 2u * i + 1u]), has_f, factor, c, s);

    uint i0 = pc.neox != 0u ? i : 2u * i;
    uint i1 = pc.neox != 0u ? i + half_rot : 2u * i + 1u;
    if (h < pc.n_heads) {
        uint b = pc.q_off + (t * pc.n_heads + h) * pc.head_dim;
        float x0 = uintBitsToFloat(qb[b + i0]), x1 = uintBitsToFloat(qb[b + i1]);
        qb[b + i0] = floatBitsToUint(rope_rotated(x0, x1, c, s, true));
        qb[b + i1] = floatBitsToUint(rope_rotated(x0, x1, c, s, false));
    } else {
        uint b = pc.k_off + (t * pc.n_kv_heads + (h - pc.n_heads)) * pc.head_dim;
        float x0 = uintBitsToFloat(kb[b + i0]), x1 = uintBitsToFloat(kb[b + i1]);
        kb[b + i0] = floatBitsToUint(rope_rotated(x0, x1, c, s, true));
        kb[b + i1] = floatBitsToUint(rope_rotated(x0, x1, c, s, false));
    }
}
