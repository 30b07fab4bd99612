#version 450
// kv_write: copy token rows of k and v into the paged cache at
// slot_mapping[t] (slots outside [0, n_slots), -1 included, are skipped).
// F16 caches: one invocation per pair of halves (rows are even), rounded
// to nearest even as the CPU does.
#include "common.glsl"
layout(local_size_x = 256) in;
layout(constant_id = 0) const uint CTYPE = 0u; // 0 = F32, 1 = F16
BUF_RO(0, kb)
BUF_RO(1, vb)
BUF_RO(2, slots)
BUF_WO(3, kc)
BUF_WO(4, vc)
layout(push_constant) uniform PC {
    uint n_tokens, row, n_slots, k_off, v_off, s_off, kc_off, vc_off;
} pc;

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
        kc[dst] = f2h(uintBitsToFloat(kb[pc.k_off + src])) |
                  (f2h(uintBitsToFloat(kb[pc.k_off + src + 1u])) << 16);
        vc[pc.vc_off + uint(slot) * per_tok + e] =
            f2h(uintBitsToFloat(vb[pc.v_off + src])) |
            (f2h(uintBitsToFloat(vb[pc.v_off + src + 1u])) << 16);
    } else {
        kc[pc.kc_off + uint(slot) * pc.row + e] = kb[pc.k_off + t * pc.row + e];
        vc[pc.vc_off + uint(slot) * pc.row + e] = vb[pc.v_off + t * pc.row + e];
    }
}
