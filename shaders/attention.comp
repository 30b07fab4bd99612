#version 450
// attention: paged, causal, GQA, mixed prefill + decode. One workgroup
// per (query head, token); keys in tiles of 64 (one per invocation), an
// online softmax across tiles, each invocation accumulating up to 4 output
// dims. Bad metadata gives NaN rows exactly where the CPU reference does
// (backends/cpu/cpu_ops.h).
#include "common.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint CTYPE = 0u; // 0 = F32, 1 = F16
BUF_RO(0, qb)
BUF_RO(1, kc)
BUF_RO(2, vc)
BUF_RO(3, tables)
BUF_RO(4, seq_lens)
BUF_RO(5, qsl)
BUF_WO(6, outb)
layout(push_constant) uniform PC {
    uint n_tokens, n_seqs, n_heads, n_kv_heads, head_dim;
    uint num_blocks, block_size, max_blocks;
    float scale;
    uint q_off, k_off, v_off, bt_off, sl_off, qsl_off, o_off;
    uint max_len; // max_seq_len: 0 = none; a longer seq_len is bad metadata
} pc;

shared float q_s[256];
shared float red[64];
shared float p_s[64];
shared int slot_s[64];
shared uint bad_s;

float cache_k(uint i)
{
    if (CTYPE == 1u) {
        uint w = kc[pc.k_off + (i >> 1)];
        return h2f((i & 1u) != 0u ? w >> 16 : w & 0xffffu);
    }
    return uintBitsToFloat(kc[pc.k_off + i]);
}

float cache_v(uint i)
{
    if (CTYPE == 1u) {
        uint w = vc[pc.v_off + (i >> 1)];
        return h2f((i & 1u) != 0u ? w >> 16 : w & 0xffffu);
    }
    return uintBitsToFloat(vc[pc.v_off + i]);
}

#include "attention_row.glsl"

void main()
{
    uint h = gl_WorkGroupID.x;
    uint t = gl_WorkGroupID.y + gl_WorkGroupID.z * gl_NumWorkGroups.y;
    if (t >= pc.n_tokens)
        return;
    uint lid = gl_LocalInvocationID.x;
    uint D = pc.head_dim;
    uint ob = pc.o_off + (t * pc.n_heads + h) * D;

    // Which sequence holds token t, and is its metadata sound? (Uniform
    // across the workgroup.)
    uint pos;
    int seq = attention_row(t, pos);
    if (seq < 0) {
        for (uint d = lid; d < D; d += 64u)
            outb[ob + d] = floatBitsToUint(NAN_F);
        return;
    }
    uint kvh = h / (pc.n_heads / pc.n_kv_heads);
    uint table = pc.bt_off + uint(seq) * pc.max_blocks;
    uint qbase = pc.q_off + (t * pc.n_heads + h) * D;
    for (uint d = lid; d < D; d += 64u)
        q_s[d] = uintBitsToFloat(qb[qbase + d]);
    if (lid == 0u)
        bad_s = 0u;
    barrier();

    float m = -1.0 / 0.0, l = 0.0;
    float acc[4] = float[4](0.0, 0.0, 0.0, 0.0);
    for (uint j0 = 0u; j0 <= pos; j0 += 64u) {
        uint j = j0 + lid;
        float sc = -1.0 / 0.0;
        int slot = -1;
        if (j <= pos) {
            int blk = int(tables[table + j / pc.block_size]);
            if (blk < 0 || uint(blk) >= pc.num_blocks) {
                bad_s = 1u;
            } else {
                slot = blk * int(pc.block_size) + int(j % pc.block_size);
                uint kb = (uint(slot) * pc.n_kv_heads + kvh) * D;
                float dot = 0.0;
                for (uint d = 0u; d < D; d++)
                    dot += q_s[d] * cache_k(kb + d);
                sc = dot * pc.scale;
            }
        }
        red[lid] = sc;
        barrier();
        for (uint st = 32u; st > 0u; st >>= 1) {
            if (lid < st)
                red[lid] = max(red[lid], red[lid + st]);
            barrier();
        }
        float m_new = max(m, red[0]);
        barrier();
        float p = slot >= 0 ? exp(sc - m_new) : 0.0;
        p_s[lid] = p;
        slot_s[lid] = slot;
        red[lid] = p;
        barrier();
        for (uint st = 32u; st > 0u; st >>= 1) {
            if (lid < st)
                red[lid] += red[lid + st];
            barrier();
        }
        float corr = m == m_new ? 1.0 : exp(m - m_new);
        l = l * corr + red[0];
        uint tile = min(64u, pos + 1u - j0);
        [[unroll]] for (uint a = 0u; a < 4u; a++) {
            uint d = lid + 64u * a;
            if (d < D) {
                float v = acc[a] * corr;
                for (uint jj = 0u; jj < tile; jj++)
                    if (slot_s[jj] >= 0)
                        v += p_s[jj] * cache_v((uint(slot_s[jj]) * pc.n_kv_heads + kvh) * D + d);
                acc[a] = v;
            }
        }
        m = m_new;
        barrier();
    }
    bool bad = bad_s != 0u;
    [[unroll]] for (uint a = 0u; a < 4u; a++) {
        uint d = lid + 64u * a;
        if (d < D)
            outb[ob + d] = floatBitsToUint(bad ? NAN_F : acc[a] / l);
    }
}
