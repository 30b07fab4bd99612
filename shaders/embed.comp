#version 450
// embed: out[t] = dequantized table row ids[t]. One invocation per 32
// elements of an output row. The table may be bound in pieces: this
// dispatch sees table rows [v0, v1) and writes only tokens whose id falls
// there; the dispatch with `first` set writes NaN rows for ids outside
// [0, vocab). An id -1-i with i < n_prev stands for prev[i] (a token an
// earlier step sampled on the device: async scheduling's placeholder).
#include "common.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint WTYPE = 0u;
BUF_RO(0, ids)
BUF_RO(1, wq)
BUF_WO(2, outb)
BUF_RO(3, prev)
layout(push_constant) uniform PC {
    uint n_tokens, vocab, dim, v0, v1, first;
    uint ids_off, t_off, o_off, row_bytes, units;
    uint n_prev, prev_off;
} pc;
#include "dequant.glsl"

void main()
{
    uint i = group_linear() * 64u + gl_LocalInvocationID.x;
    if (i >= pc.n_tokens * pc.units)
        return;
    uint t = i / pc.units, u = i % pc.units;
    int id = int(ids[pc.ids_off + t]);
    if (id < 0 && uint(-(id + 1)) < pc.n_prev)
        id = int(prev[pc.prev_off + uint(-(id + 1))]);
    uint ob = pc.o_off + t * pc.dim + 32u * u;
    uint cnt = min(32u, pc.dim - 32u * u);
    if (id < 0 || uint(id) >= pc.vocab) {
        if (pc.first != 0u)
            for (uint e = 0u; e < cnt; e++)
                outb[ob + e] = floatBitsToUint(NAN_F);
        return;
    }
    if (uint(id) < pc.v0 || uint(id) >= pc.v1)
        return;
    float w[32];
    deq32(pc.t_off + (uint(id) - pc.v0) * pc.row_bytes, u, cnt, w);
    [[unroll]] for (uint e = 0u; e < 32u; e++)
        if (e < cnt)
            outb[ob + e] = floatBitsToUint(w[e]);
}
