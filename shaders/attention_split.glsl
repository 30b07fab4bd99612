// attention_split.glsl — the body of attention_split.comp (reductions in
// shared memory) and attention_split_sg.comp (subgroup reductions; only
// built into a pipeline on devices that report subgroup arithmetic in
// compute shaders). Decode-oriented paged attention (flash-decoding):
//
// One workgroup of 64 per (token, kv head, up to GM query heads of its
// GQA group, partition). A partition is PART consecutive keys (64, 128 or
// 256: PART / 64 tiles) — a specialization constant the device fixes once
// (DUET_VK_ATTN_PART), so how a row's keys are cut depends on its own
// position and the device only, never on the batch. Keys go in tiles of
// 64, one per invocation: the invocation loads the K row (16-byte loads
// where aligned) once and dots it with every query head of the group; a
// per-head tile max and sum (fixed reduction order), an online softmax
// across tiles; then each invocation accumulates up to 4 output dims of
// every head, reading each V row once for the whole group (consecutive
// invocations, consecutive dims). A row whose keys fit one partition
// writes its output directly; otherwise each partition writes (max, sum,
// acc[head_dim]) per head to the scratch buffer and attention_combine.comp
// merges them in partition order. Bad metadata gives NaN rows exactly
// where the CPU reference does (backends/cpu/cpu_ops.h): a bad block id
// poisons the partition's sum.
#include "common.glsl"
layout(local_size_x = 64) in;
// Bit 0: F16 cache; bit 1: K rows read 16 bytes at a time (the host sets
// it when the cache binding and head_dim allow).
layout(constant_id = 0) const uint MODE = 0u;
// log2 of the tiles per partition: PART = 64, 128 or 256 keys (vk_ops.c
// passes the device's choice; the combine gets the same value).
layout(constant_id = 1) const uint PART_SHIFT = 0u;
BUF_RO(0, qb)
BUF_RO(1, kc)
layout(std430, set = 0, binding = 1) readonly buffer Buf1v { uvec4 kc4[]; };
BUF_RO(2, vc)
BUF_RO(3, tables)
BUF_RO(4, seq_lens)
BUF_RO(5, qsl)
BUF_WO(6, outb)
BUF_WO(7, part)
layout(push_constant) uniform PC {
    uint n_tokens, n_seqs, n_heads, n_kv_heads, head_dim;
    uint num_blocks, block_size, max_blocks;
    float scale;
    uint q_off, k_off, v_off, bt_off, sl_off, qsl_off, o_off;
    uint max_len; // max_seq_len: 0 = none; a longer seq_len is bad metadata
    uint t0, n_parts, p_off;
} pc;

const uint GM = 8u;     // query heads per workgroup (larger groups: several workgroups)
const uint PART = 64u << PART_SHIFT; // keys per partition (vk_ctx.attn_part_log2 = PART_SHIFT)
const bool F16 = (MODE & 1u) != 0u;
const bool VEC = (MODE & 2u) != 0u;

shared float q_s[GM * 256u];
shared float p_s[GM * 64u];
shared float red[GM * 64u];
shared int slot_s[64];
shared uint bad_s;

float cache_v(uint i)
{
    if (F16) {
        uint w = vc[pc.v_off + (i >> 1)];
        return h2f((i & 1u) != 0u ? w >> 16 : w & 0xffffu);
    }
    return uintBitsToFloat(vc[pc.v_off + i]);
}

// s[g] = q_g . K[row] for the group's heads; row = element index of the K row.
void dot_group(uint row, uint D, uint ng, inout float s[GM])
{
    if (VEC) {
        uint w0 = pc.k_off + (F16 ? row >> 1 : row); // a multiple of 4 (host checks)
        uint per = F16 ? 8u : 4u;
        for (uint i = 0u; i < D / per; i++) {
            uvec4 w = kc4[(w0 >> 2) + i];
            float k[8];
            if (F16) {
                [[unroll]] for (uint c = 0u; c < 4u; c++) {
                    k[2u * c] = h2f(w[c] & 0xffffu);
                    k[2u * c + 1u] = h2f(w[c] >> 16);
                }
            } else {
                [[unroll]] for (uint c = 0u; c < 4u; c++)
                    k[c] = uintBitsToFloat(w[c]);
            }
            [[unroll]] for (uint g = 0u; g < GM; g++) {
                if (g < ng) {
                    float acc = s[g];
                    for (uint c = 0u; c < per; c++)
                        acc += q_s[g * 256u + i * per + c] * k[c];
                    s[g] = acc;
                }
            }
        }
        return;
    }
    for (uint d = 0u; d < D; d++) {
        float k;
        if (F16) {
            uint w = kc[pc.k_off + ((row + d) >> 1)];
            k = h2f(((row + d) & 1u) != 0u ? w >> 16 : w & 0xffffu);
        } else {
            k = uintBitsToFloat(kc[pc.k_off + row + d]);
        }
        [[unroll]] for (uint g = 0u; g < GM; g++)
            if (g < ng)
                s[g] += q_s[g * 256u + d] * k;
    }
}

#ifdef SUBGROUP_REDUCE
// Each subgroup reduces, then the subgroups' results fold in order.
void reduce_group(inout float v[GM], bool is_max)
{
    [[unroll]] for (uint g = 0u; g < GM; g++) {
        float x = is_max ? subgroupMax(v[g]) : subgroupAdd(v[g]);
        if (subgroupElect())
            red[g * 64u + gl_SubgroupID] = x;
    }
    barrier();
    [[unroll]] for (uint g = 0u; g < GM; g++) {
        float r = red[g * 64u];
        for (uint i = 1u; i < gl_NumSubgroups; i++)
            r = is_max ? max(r, red[g * 64u + i]) : r + red[g * 64u + i];
        v[g] = r;
    }
    barrier();
}
#else
// A tree over the 64 invocations in shared memory.
void reduce_group(inout float v[GM], bool is_max)
{
    uint lid = gl_LocalInvocationID.x;
    [[unroll]] for (uint g = 0u; g < GM; g++)
        red[g * 64u + lid] = v[g];
    barrier();
    for (uint st = 32u; st > 0u; st >>= 1) {
        if (lid < st) {
            [[unroll]] for (uint g = 0u; g < GM; g++) {
                float a = red[g * 64u + lid], b = red[g * 64u + lid + st];
                red[g * 64u + lid] = is_max ? max(a, b) : a + b;
            }
        }
        barrier();
    }
    [[unroll]] for (uint g = 0u; g < GM; g++)
        v[g] = red[g * 64u];
    barrier();
}
#endif

#include "attention_row.glsl"

void main()
{
    uint G = pc.n_heads / pc.n_kv_heads;
    uint n_hc = (G + GM - 1u) / GM;
    uint kvh = gl_WorkGroupID.x / n_hc, hc = gl_WorkGroupID.x % n_hc;
    uint h0 = kvh * G + hc * GM, ng = min(GM, G - hc * GM);
    uint p = gl_WorkGroupID.y, tl = gl_WorkGroupID.z, t = pc.t0 + tl;
    uint lid = gl_LocalInvocationID.x;
    uint D = pc.head_dim;
    // Every branch up to the key loop is uniform across the workgroup.
    if (t >= pc.n_tokens)
        return;

    // Which sequence holds token t, and is its metadata sound?
    uint pos;
    int seq = attention_row(t, pos);
    if (seq < 0) {
        if (p == 0u)
            for (uint g = 0u; g < ng; g++)
                for (uint d = lid; d < D; d += 64u)
                    outb[pc.o_off + (t * pc.n_heads + h0 + g) * D + d] = floatBitsToUint(NAN_F);
        return;
    }
    uint j_lo = p * PART;
    if (j_lo > pos)
        return;
    uint j_hi = min(pos + 1u, j_lo + PART);
    uint table = pc.bt_off + uint(seq) * pc.max_blocks;
    for (uint g = 0u; g < ng; g++)
        for (uint d = lid; d < D; d += 64u)
            q_s[g * 256u + d] = uintBitsToFloat(qb[pc.q_off + (t * pc.n_heads + h0 + g) * D + d]);
    if (lid == 0u)
        bad_s = 0u;
    barrier();

    float m[GM], l[GM], acc[GM][4];
    [[unroll]] for (uint g = 0u; g < GM; g++) {
        m[g] = -1.0 / 0.0;
        l[g] = 0.0;
        [[unroll]] for (uint a = 0u; a < 4u; a++)
            acc[g][a] = 0.0;
    }
    for (uint j0 = j_lo; j0 < j_hi; j0 += 64u) {
        uint j = j0 + lid;
        float s[GM];
        [[unroll]] for (uint g = 0u; g < GM; g++)
            s[g] = 0.0;
        int slot = -1;
        if (j < j_hi) {
            int blk = int(tables[table + j / pc.block_size]);
            if (blk < 0 || uint(blk) >= pc.num_blocks)
                bad_s = 1u;
            else
                slot = blk * int(pc.block_size) + int(j % pc.block_size);
        }
        if (slot >= 0)
            dot_group((uint(slot) * pc.n_kv_heads + kvh) * D, D, ng, s);
        [[unroll]] for (uint g = 0u; g < GM; g++)
            s[g] = slot >= 0 ? s[g] * pc.scale : -1.0 / 0.0;
        float mx[GM] = s;
        reduce_group(mx, true);
        float pr[GM];
        [[unroll]] for (uint g = 0u; g < GM; g++) {
            mx[g] = max(m[g], mx[g]);
            pr[g] = slot >= 0 ? exp(s[g] - mx[g]) : 0.0;
            p_s[g * 64u + lid] = pr[g];
        }
        slot_s[lid] = slot;
        reduce_group(pr, false); // its barriers also publish p_s and slot_s
        float corr[GM];
        [[unroll]] for (uint g = 0u; g < GM; g++) {
            corr[g] = m[g] == mx[g] ? 1.0 : exp(m[g] - mx[g]);
            l[g] = l[g] * corr[g] + pr[g];
            m[g] = mx[g];
        }
        uint tile = min(64u, j_hi - j0);
        [[unroll]] for (uint a = 0u; a < 4u; a++) {
            uint d = lid + 64u * a;
            if (d < D) {
                float v[GM];
                [[unroll]] for (uint g = 0u; g < GM; g++)
                    v[g] = acc[g][a] * corr[g];
                for (uint jj = 0u; jj < tile; jj++) {
                    if (slot_s[jj] >= 0) {
                        float x = cache_v((uint(slot_s[jj]) * pc.n_kv_heads + kvh) * D + d);
                        [[unroll]] for (uint g = 0u; g < GM; g++)
                            v[g] += p_s[g * 64u + jj] * x;
                    }
                }
                [[unroll]] for (uint g = 0u; g < GM; g++)
                    acc[g][a] = v[g];
            }
        }
        barrier();
    }
    bool bad = bad_s != 0u;
    if (pos < PART) { // the row's only partition: the output directly
        [[unroll]] for (uint g = 0u; g < GM; g++) {
            if (g < ng) {
                uint ob = pc.o_off + (t * pc.n_heads + h0 + g) * D;
                [[unroll]] for (uint a = 0u; a < 4u; a++) {
                    uint d = lid + 64u * a;
                    if (d < D)
                        outb[ob + d] = floatBitsToUint(bad ? NAN_F : acc[g][a] / l[g]);
                }
            }
        }
        return;
    }
    // Partial: [max, sum, acc[D]] per (token in chunk, head, partition).
    [[unroll]] for (uint g = 0u; g < GM; g++) {
        if (g < ng) {
            uint pb = pc.p_off + ((tl * pc.n_heads + h0 + g) * pc.n_parts + p) * (D + 2u);
            if (lid == 0u) {
                part[pb] = floatBitsToUint(m[g]);
                part[pb + 1u] = floatBitsToUint(bad ? NAN_F : l[g]);
            }
            [[unroll]] for (uint a = 0u; a < 4u; a++) {
                uint d = lid + 64u * a;
                if (d < D)
                    part[pb + 2u + d] = floatBitsToUint(acc[g][a]);
            }
        }
    }
}
