// attention_row.glsl: which sequence holds token t of a flattened batch,
// and where it sits, for the three attention kernels (attention.comp,
// attention_split.glsl, attention_combine.comp) so that they agree on what
// bad metadata is. Include it after the push constants (pc.n_tokens,
// n_seqs, qsl_off, sl_off, block_size, max_blocks, max_len) and the qsl and
// seq_lens buffers. Every value depends only on t and the metadata, so a
// branch on the result is uniform across a workgroup.

int qsl_at(uint s) { return int(qsl[pc.qsl_off + s]); }

// The sequence of token t (< pc.n_tokens), or -1 when the metadata is
// unsound: query_start_loc not non-decreasing within [0, n_tokens], t in no
// sequence, seq_len shorter than the sequence's query, more blocks than a
// table holds, or seq_len past the call's max_seq_len (0 = no bound). pos
// is then t's position in its sequence (its last key index).
int attention_row(uint t, out uint pos)
{
    pos = 0u;
    bool ok = qsl_at(0u) >= 0 && qsl_at(pc.n_seqs) <= int(pc.n_tokens);
    for (uint s = 0u; s < pc.n_seqs && ok; s++)
        ok = qsl_at(s + 1u) >= qsl_at(s);
    int seq = -1;
    for (uint s = 0u; s < pc.n_seqs && ok && seq < 0; s++)
        if (int(t) >= qsl_at(s) && int(t) < qsl_at(s + 1u))
            seq = int(s);
    if (seq < 0)
        return -1;
    int q_len = qsl_at(uint(seq) + 1u) - qsl_at(uint(seq));
    int seq_len = int(seq_lens[pc.sl_off + uint(seq)]);
    int blocks = (seq_len + int(pc.block_size) - 1) / int(pc.block_size);
    if (seq_len < q_len || blocks > int(pc.max_blocks) ||
        (pc.max_len != 0u && seq_len > int(pc.max_len)))
        return -1;
    pos = uint(seq_len - q_len) + (t - uint(qsl_at(uint(seq))));
    return seq;
}
