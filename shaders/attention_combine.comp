#version 450
// attention_combine: merges the partitions attention_split wrote for rows
// longer than one partition, one workgroup per (head, token of the chunk),
// partitions in order 0, 1, ...: M = max m_i, L = sum l_i e^(m_i - M),
// out = sum acc_i e^(m_i - M) / L. Rows of one partition (written by the
// split kernel directly) and rows with bad metadata are left alone. A NaN
// sum (a bad block id in that partition) makes the row NaN.
#include "common.glsl"
layout(local_size_x = 64) in;
BUF_RO(0, part)
BUF_RO(1, seq_lens)
BUF_RO(2, qsl)
BUF_WO(3, outb)
layout(push_constant) uniform PC {
    uint n_tokens, n_seqs, n_heads, head_dim, block_size, max_blocks;
    uint sl_off, qsl_off, o_off, t0, n_parts, p_off;
    uint max_len; // max_seq_len: 0 = none
} pc;

// log2 of the tiles per partition, as in attention_split.glsl: PART = 64,
// 128 or 256 keys (the device's choice, vk_ctx.attn_part_log2 = PART_SHIFT).
layout(constant_id = 1) const uint PART_SHIFT = 0u;
const uint PART = 64u << PART_SHIFT;

#include "attention_row.glsl"

void main()
{
    uint h = gl_WorkGroupID.x, tl = gl_WorkGroupID.y, t = pc.t0 + tl;
    uint lid = gl_LocalInvocationID.x, D = pc.head_dim;
    if (t >= pc.n_tokens)
        return;
    uint pos;
    if (attention_row(t, pos) < 0)
        return;
    uint np = pos / PART + 1u;
    if (np == 1u)
        return;
    uint base = pc.p_off + (tl * pc.n_heads + h) * pc.n_parts * (D + 2u);
    float M = -1.0 / 0.0;
    for (uint i = 0u; i < np; i++)
        M = max(M, uintBitsToFloat(part[base + i * (D + 2u)]));
    float L = 0.0;
    for (uint i = 0u; i < np; i++) {
        uint pb = base + i * (D + 2u);
        L += uintBitsToFloat(part[pb + 1u]) * exp(uintBitsToFloat(part[pb]) - M);
    }
    for (uint d = lid; d < D; d += 64u) {
        float acc = 0.0;
        for (uint i = 0u; i < np; i++) {
            uint pb = base + i * (D + 2u);
            acc += uintBitsToFloat(part[pb + 2u + d]) * exp(uintBitsToFloat(part[pb]) - M);
        }
        outb[pc.o_off + (t * pc.n_heads + h) * D + d] = floatBitsToUint(acc / L);
    }
}
