#version 450
// sample: docs/SAMPLING.md, bit for bit. One workgroup of 256 invocations
// per row; invocation t visits tokens t, t + 256, ... (ascending, so its
// own ties already go to the lowest id), and the workgroup combines the
// per-invocation results in shared memory: float max, argmax with the
// lowest-id tie rule, and 64-bit integer sums (order independent).
//
// The top-k and top-p cuts are radix selections on the order O (key
// bits(d) & 0x7fffffff ascending, then id ascending): passes over the row
// build a 256-bucket histogram of counts and weights for the next 8 bits
// of the key, and then of the id among tokens with exactly the cut's key
// (skipped when one token has it). Each pass narrows the bucket where the
// running count (top-k) or weight (top-p) reaches its target, so the cut
// costs at most 7 passes, usually 4. With top-p, when the "heavy" tokens
// (the only ones the top-p cut can reach) are at most 1024, the candidate
// pass lists them in shared memory and the cuts and the race read the list
// instead of the row. Only the edits are applied serially (by one
// invocation, in order).
//
// Variant 1 (specialization constant 1) is a test hook: each row's
// logits are inputs and work gets dexp, dlog, gumbel and Philox of them.
#include "common.glsl"
#include "sample_math.glsl"
layout(local_size_x = 256) in;
layout(constant_id = 1) const uint VARIANT = 0;
BUF_RO(0, logits)
BUF_RO(1, rows)
BUF_RO(2, edits)
// work is written by one invocation and read by the others (edits).
layout(std430, set = 0, binding = 3) coherent buffer Buf3 { uint work[]; };
BUF_WO(4, results)
BUF_WO(5, tokens_out)
layout(push_constant) uniform PC {
    uint n_rows, vocab, n_edits, has_tokens;
    uint x_off, r_off, e_off, w_off, res_off, t_off;
} pc;

const uint WG = 256u;
const uint MAX_TOP = 20u;   // DUET_SAMPLE_MAX_LOGPROBS
const uint ROW_WORDS = 16u; // sizeof(duet_sample_row) / 4
const uint RES_WORDS = 44u; // sizeof(duet_sample_result) / 4
const uint NO_ID = 0xffffffffu;

shared float red_f[WG];
shared uint red_u[WG];
shared uvec2 red_w[WG];
shared uint hist_n[256], hist_lo[256], hist_hi[256];
shared uint s_digit, s_count;
shared uvec2 s_acc_w;
shared uint s_acc_n;
shared uint top_ids[MAX_TOP];
shared float top_x[MAX_TOP];
// The heavy candidates (bits(d), id) when top-p is on and they fit: the
// cuts and the race then read these instead of the row. 8 KiB, so the
// shader stays within the 16 KiB of shared memory every device has.
const uint HEAVY_CAP = 1024u;
shared uvec2 heavy[HEAVY_CAP];
shared uint s_n_heavy;

uint lid;
uint V, xb, wb;

// ---- workgroup reductions (every invocation gets the result) ------------------------

float wg_max(float v) // v is never NaN
{
    red_f[lid] = v;
    barrier();
    for (uint st = WG / 2u; st > 0u; st >>= 1) {
        if (lid < st && red_f[lid + st] > red_f[lid])
            red_f[lid] = red_f[lid + st];
        barrier();
    }
    float r = red_f[0];
    barrier();
    return r;
}

// The larger value, on equal values the lower id; v is never NaN.
void wg_best(inout float v, inout uint id)
{
    red_f[lid] = v;
    red_u[lid] = id;
    barrier();
    for (uint st = WG / 2u; st > 0u; st >>= 1) {
        if (lid < st) {
            float ov = red_f[lid + st];
            uint oid = red_u[lid + st];
            if (ov > red_f[lid] || (ov == red_f[lid] && oid < red_u[lid])) {
                red_f[lid] = ov;
                red_u[lid] = oid;
            }
        }
        barrier();
    }
    v = red_f[0];
    id = red_u[0];
    barrier();
}

uvec2 wg_sum64(uvec2 v)
{
    red_w[lid] = v;
    barrier();
    for (uint st = WG / 2u; st > 0u; st >>= 1) {
        if (lid < st)
            red_w[lid] = u64_add(red_w[lid], red_w[lid + st]);
        barrier();
    }
    uvec2 r = red_w[0];
    barrier();
    return r;
}

uint wg_sum(uint v)
{
    red_u[lid] = v;
    barrier();
    for (uint st = WG / 2u; st > 0u; st >>= 1) {
        if (lid < st)
            red_u[lid] += red_u[lid + st];
        barrier();
    }
    uint r = red_u[0];
    barrier();
    return r;
}

// ---- values ------------------------------------------------------------------------

// A raw logit; NaN reads as -inf.
float raw_at(uint i)
{
    float v = uintBitsToFloat(logits[xb + i]);
    return sm_isnan(v) ? SM_NEG_INF : v;
}

float l_at(uint i) { return uintBitsToFloat(work[wb + i]); }

// argmax of l: lowest index among the largest values; NaN never wins; 0
// when nothing exceeds -inf.
uint argmax_l()
{
    float bv = SM_NEG_INF;
    uint bi = NO_ID;
    for (uint i = lid; i < V; i += WG) {
        float v = l_at(i);
        if (!sm_isnan(v) && v > bv) {
            bv = v;
            bi = i;
        }
    }
    wg_best(bv, bi);
    return bv > SM_NEG_INF ? bi : 0u;
}

// ---- step 4: sampling ---------------------------------------------------------------

float inv_t, log_min_p, m_z;
uint cut_key = 0x7fffffffu, cut_id = NO_ID; // K (or C) = O up to (cut_key, cut_id)

// d of token i, and whether it is a candidate.
float d_at(uint i, out bool cand)
{
    precise float z = l_at(i) * inv_t;
    precise float d = z - m_z;
    cand = !sm_isnan(d) && d > SM_NEG_INF && d >= log_min_p;
    return d;
}

bool within_cut(uint key, uint i) { return key < cut_key || (key == cut_key && i <= cut_id); }

// The radix digit being histogrammed: pass 0..3 take 8 key bits each, high
// first; passes 4..6 take 8 id bits among tokens with the cut's key.
struct digit_pass {
    bool by_weight, on_key;
    uint shift, skip_key, kmask, kpre, imask, ipre;
};

// Token i (with d, cand) into the histogram of pass p.
void hist_add(digit_pass p, float d, uint i, bool cand)
{
    uint key = floatBitsToUint(d) & 0x7fffffffu;
    if (!cand || key >= p.skip_key || !within_cut(key, i))
        return;
    if (p.on_key ? (key & p.kmask) != p.kpre : (key != p.kpre || (i & p.imask) != p.ipre))
        return;
    uint dig = ((p.on_key ? key : i) >> p.shift) & 0xffu;
    atomicAdd(hist_n[dig], 1u);
    if (p.by_weight) {
        uvec2 w = sm_weight(d);
        uint old = atomicAdd(hist_lo[dig], w.x);
        atomicAdd(hist_hi[dig], w.y + (old + w.x < old ? 1u : 0u));
    }
}

// Move the cut to the first member of O (within the current cut) at which
// the running count (by_weight false) or weight reaches target (which it
// does: target <= the total). Tokens with key >= skip_key are known to lie
// after the new cut and are left out. from_list: the tokens that can hold
// the new cut are all in the heavy list (n_list entries).
void select_cut(bool by_weight, uvec2 target, uint skip_key, bool from_list, uint n_list)
{
    digit_pass p = digit_pass(by_weight, true, 0u, skip_key, 0u, 0u, 0u, 0u);
    uvec2 acc_w = uvec2(0u);
    uint acc_n = 0u;
    bool id_known = false;
    for (uint pass = 0u; pass < 7u; pass++) {
        p.on_key = pass < 4u;
        p.shift = p.on_key ? 24u - 8u * pass : 16u - 8u * (pass - 4u);
        hist_n[lid] = 0u;
        hist_lo[lid] = 0u;
        hist_hi[lid] = 0u;
        barrier();
        if (from_list) {
            for (uint j = lid; j < n_list; j += WG)
                hist_add(p, uintBitsToFloat(heavy[j].x), heavy[j].y, true);
        } else {
            for (uint i = lid; i < V; i += WG) {
                bool cand;
                float d = d_at(i, cand);
                hist_add(p, d, i, cand);
            }
        }
        barrier();
        if (lid == 0u) {
            uint b = 0u;
            for (; b < 255u; b++) {
                uvec2 w = uvec2(hist_lo[b], hist_hi[b]);
                uvec2 q = by_weight ? w : uvec2(hist_n[b], 0u);
                if (u64_ge(u64_add(by_weight ? acc_w : uvec2(acc_n, 0u), q), target))
                    break;
                acc_n += hist_n[b];
                acc_w = u64_add(acc_w, w);
            }
            s_digit = b;
            s_count = hist_n[b];
            s_acc_n = acc_n;
            s_acc_w = acc_w;
        }
        barrier();
        acc_n = s_acc_n;
        acc_w = s_acc_w;
        if (p.on_key) {
            p.kpre |= s_digit << p.shift;
            p.kmask |= 0xffu << p.shift;
        } else {
            p.ipre |= s_digit << p.shift;
            p.imask |= 0xffu << p.shift;
        }
        if (pass == 3u && s_count == 1u) { // one token has the cut's key
            id_known = true;
            break;
        }
    }
    barrier();
    // One token in the set has the new cut's key: every id up to the old
    // cut's (when the key is the same) is in.
    cut_id = id_known ? (p.kpre == cut_key ? cut_id : NO_ID) : p.ipre;
    cut_key = p.kpre;
}

// The top-p head (SAMPLING.md section 7): tokens of weight w with
// w * V <= 2^16 * (2^24 - q) weigh at most S * (1 - q / 2^24) together, so
// they all lie after the top-p cut. They are the keys >= the key returned
// (weight is non-increasing in the key: a binary search, the same in every
// invocation).
bool is_light(uint key, uint q)
{
    uvec2 w = sm_weight(-uintBitsToFloat(key));
    if (w.y >= 0x100u)
        return false; // 2^40: the best token
    uint h1, l1, h2, l2;
    umulExtended(w.x, V, h1, l1);
    umulExtended(w.y, V, h2, l2); // w.y * V < 2^32
    uvec2 wv = uvec2(l1, h1 + l2);
    uint hi, lo;
    umulExtended(0x1000000u - q, 0x10000u, hi, lo);
    return !(wv.y > hi || (wv.y == hi && wv.x > lo));
}

uint light_key(uint q)
{
    uint lo = 0u, hi = 0x7f800000u; // the key of -inf is light
    while (lo < hi) {
        uint mid = lo + (hi - lo) / 2u;
        if (is_light(mid, q))
            hi = mid;
        else
            lo = mid + 1u;
    }
    return lo;
}

// This invocation's best (score, id) in the race so far.
float race_best;
uint race_id;

void race_visit(float d, uint i, bool cand, uvec2 key, uint position, uint sample_index)
{
    if (!cand || !within_cut(floatBitsToUint(d) & 0x7fffffffu, i))
        return;
    precise float reach = d + SM_GMAX;
    if (reach < SM_GMIN || reach < race_best)
        return;
    uvec4 r = sm_philox(uvec4(i / 4u, position, sample_index, 0u), key);
    precise float score = d + sm_gumbel(r[i % 4u]);
    if (score > race_best || (score == race_best && i < race_id)) { // the list is not in id order
        race_best = score;
        race_id = i;
    }
}

uint sample_row(uint top_k, uint top_p_q24, uvec2 key, uint position, uint sample_index)
{
    // m = max z (NaN never wins)
    float mz = SM_NEG_INF;
    for (uint i = lid; i < V; i += WG) {
        precise float z = l_at(i) * inv_t;
        if (!sm_isnan(z) && z > mz)
            mz = z;
    }
    if (lid == 0u)
        s_n_heavy = 0u;
    m_z = wg_max(mz); // (its barriers publish s_n_heavy too)

    // Candidates: how many, how many can win the race (d >= -20; SAMPLING.md
    // section 7), and their weight; with top-p, the heavy ones listed.
    bool top_p_on = top_p_q24 < 0x1000000u;
    uint lkey = top_p_on ? light_key(top_p_q24) : 0u;
    uint n = 0u, n_strong = 0u;
    uvec2 s = uvec2(0u);
    bool full = false; // this invocation saw the list overflow: no more atomics
    for (uint i = lid; i < V; i += WG) {
        bool cand;
        float d = d_at(i, cand);
        if (cand) {
            n++;
            n_strong += d >= -20.0 ? 1u : 0u;
            if (top_p_on) {
                s = u64_add(s, sm_weight(d));
                if ((floatBitsToUint(d) & 0x7fffffffu) < lkey && !full) {
                    uint at = atomicAdd(s_n_heavy, 1u);
                    if (at < HEAVY_CAP)
                        heavy[at] = uvec2(floatBitsToUint(d), i);
                    full = at >= HEAVY_CAP;
                }
            }
        }
    }
    uint n_cand = wg_sum(n);
    n_strong = wg_sum(n_strong);
    s = wg_sum64(s);
    uint n_heavy = s_n_heavy; // exact when <= HEAVY_CAP, else above it
    if (n_cand == 0u)
        return argmax_l();
    // The heavy tokens come first in O, and K is among them (its last
    // member is heavy), so with the list complete K can be found and raced
    // over from it.
    bool listed = top_p_on && n_heavy <= HEAVY_CAP;

    // C: needed for top-p's sum, or when it leaves out a token that could win.
    if (top_k > 0u && top_k < n_cand && (top_p_on || top_k < n_strong)) {
        bool c_listed = listed && top_k <= n_heavy; // C is heavy tokens only
        select_cut(false, uvec2(top_k, 0u), 0xffffffffu, c_listed, n_heavy);
        if (top_p_on) { // C's weight
            uvec2 sc = uvec2(0u);
            if (c_listed) {
                for (uint j = lid; j < n_heavy; j += WG) {
                    float d = uintBitsToFloat(heavy[j].x);
                    if (within_cut(heavy[j].x & 0x7fffffffu, heavy[j].y))
                        sc = u64_add(sc, sm_weight(d));
                }
            } else {
                for (uint i = lid; i < V; i += WG) {
                    bool cand;
                    float d = d_at(i, cand);
                    if (cand && within_cut(floatBitsToUint(d) & 0x7fffffffu, i))
                        sc = u64_add(sc, sm_weight(d));
                }
            }
            s = wg_sum64(sc);
        }
    }
    if (top_p_on) // K
        select_cut(true, sm_top_p_limit(s, top_p_q24), lkey, listed, n_heavy);

    // The race over K: d + Gumbel noise, the largest score, lowest id on
    // ties. A token whose d + GMAX is below what it must beat cannot win
    // and draws no noise: below GMIN (the least score of the d = 0 token,
    // which is in K) or below this invocation's best so far.
    race_best = SM_NEG_INF;
    race_id = NO_ID;
    if (listed) {
        for (uint j = lid; j < n_heavy; j += WG)
            race_visit(uintBitsToFloat(heavy[j].x), heavy[j].y, true, key, position,
                       sample_index);
    } else {
        for (uint i = lid; i < V; i += WG) {
            bool cand;
            float d = d_at(i, cand);
            race_visit(d, i, cand, key, position, sample_index);
        }
    }
    float best = race_best;
    uint best_id = race_id;
    wg_best(best, best_id);
    return best_id;
}

// ---- the test hook ---------------------------------------------------------------------

void math_check(uint row)
{
    for (uint i = lid; i < V; i += WG) {
        uint u = logits[xb + i];
        float x = uintBitsToFloat(u);
        uint o;
        switch (row % 4u) {
        case 0u: o = floatBitsToUint(sm_dexp(x)); break;
        case 1u: o = floatBitsToUint(sm_dlog(x)); break;
        case 2u: o = floatBitsToUint(sm_gumbel(u)); break;
        default: o = sm_philox(uvec4(u, i, row, u ^ i), uvec2(~u, i))[u % 4u]; break;
        }
        work[wb + i] = o;
    }
}

// ---- main -------------------------------------------------------------------------------

void main()
{
    uint row = group_linear();
    if (row >= pc.n_rows)
        return;
    lid = gl_LocalInvocationID.x;
    V = pc.vocab;
    xb = pc.x_off + row * V;
    wb = pc.w_off + row * V;
    if (VARIANT == 1u) {
        math_check(row);
        return;
    }
    uint rb = pc.r_off + row * ROW_WORDS;
    int edit_begin = int(rows[rb + 0u]), edit_end = int(rows[rb + 1u]);
    inv_t = uintBitsToFloat(rows[rb + 2u]);
    log_min_p = uintBitsToFloat(rows[rb + 3u]);
    int top_k = int(rows[rb + 4u]);
    uint top_p_q24 = rows[rb + 5u];
    float rep = uintBitsToFloat(rows[rb + 6u]), inv_rep = uintBitsToFloat(rows[rb + 7u]);
    float presence = uintBitsToFloat(rows[rb + 8u]), frequency = uintBitsToFloat(rows[rb + 9u]);
    uvec2 seed = uvec2(rows[rb + 10u], rows[rb + 11u]);
    uint position = rows[rb + 12u], sample_index = rows[rb + 13u];
    int forced = int(rows[rb + 14u]), n_logprobs = int(rows[rb + 15u]);
    uint n_top = n_logprobs < 0 ? 0u : min(min(uint(n_logprobs), MAX_TOP), V);
    uint resb = pc.res_off + row * RES_WORDS;

    // Step 2 begins: l = x in work. Step 1 in the same pass: max of x and
    // this invocation's best n_top tokens (x descending, id ascending).
    float mx = SM_NEG_INF;
    float tx[MAX_TOP];
    uint ti[MAX_TOP];
    uint tn = 0u;
    for (uint i = lid; i < V; i += WG) {
        float v = raw_at(i);
        work[wb + i] = floatBitsToUint(v);
        mx = max(mx, v);
        if (n_top > 0u && (tn < n_top || v > tx[n_top - 1u])) {
            uint j = tn < n_top ? tn : n_top - 1u;
            if (tn < n_top)
                tn++;
            for (; j > 0u && tx[j - 1u] < v; j--) {
                tx[j] = tx[j - 1u];
                ti[j] = ti[j - 1u];
            }
            tx[j] = v;
            ti[j] = i;
        }
    }

    // Step 1: m0, S0, lz and the top-N (merged: n_top rounds of the best head).
    float m0 = SM_NEG_INF, lz = 0.0;
    bool s0_zero = true;
    if (n_logprobs >= 0) {
        m0 = wg_max(mx);
        uvec2 s = uvec2(0u);
        for (uint i = lid; i < V; i += WG) {
            precise float dd = raw_at(i) - m0;
            s = u64_add(s, sm_weight(dd));
        }
        uvec2 s0 = wg_sum64(s);
        s0_zero = s0 == uvec2(0u);
        precise float scaled = u64_to_float(s0) * SM_TWO_M40;
        lz = sm_dlog(scaled);
        uint head = 0u;
        for (uint j = 0u; j < n_top; j++) {
            float hv = head < tn ? tx[head] : SM_NEG_INF;
            uint hi = head < tn ? ti[head] : NO_ID;
            wg_best(hv, hi);
            if (head < tn && ti[head] == hi)
                head++;
            if (lid == 0u) {
                top_ids[j] = hi;
                top_x[j] = hv;
            }
        }
    }

    // Step 2: the edits, in order, by one invocation.
    memoryBarrierBuffer();
    barrier();
    if (lid == 0u && !(edit_begin < 0 || edit_end > int(pc.n_edits) || edit_begin > edit_end)) {
        for (int j = edit_begin; j < edit_end; j++) {
            uint eb = pc.e_off + uint(j) * 4u;
            int t = int(edits[eb]), flags = int(edits[eb + 1u]), count = int(edits[eb + 2u]);
            float bias = uintBitsToFloat(edits[eb + 3u]);
            if (t < 0 || t >= int(V))
                continue;
            if ((flags & 1) != 0) { // DUET_SAMPLE_EDIT_MASK
                work[wb + uint(t)] = floatBitsToUint(SM_NEG_INF);
                continue;
            }
            int c = max(count, 0);
            precise float v = l_at(uint(t)) + bias;
            if (((flags & 2) != 0 || c > 0) && rep != 1.0) // DUET_SAMPLE_EDIT_PROMPT
                v = v > 0.0 ? v * inv_rep : v * rep;
            v = v - float(c) * frequency;
            if (c > 0)
                v = v - presence;
            work[wb + uint(t)] = floatBitsToUint(v);
        }
    }
    memoryBarrierBuffer();
    barrier();

    // Steps 3 and 4: the token.
    uint token;
    if (forced >= 0 && forced < int(V))
        token = uint(forced);
    else if (inv_t == 0.0)
        token = argmax_l();
    else {
        token = sample_row(top_k > 0 ? uint(top_k) : 0u, top_p_q24, seed, position,
                           sample_index);
    }

    // Step 1's rank and logprob of the token.
    uint rank = 0u;
    float logprob = 0.0;
    if (n_logprobs >= 0) {
        float xt = raw_at(token);
        uint n = 0u;
        for (uint i = lid; i < V; i += WG)
            n += raw_at(i) >= xt ? 1u : 0u;
        rank = wg_sum(n);
        precise float lp = (xt - m0) - lz;
        logprob = s0_zero ? SM_NEG_INF : lp;
    }

    // Results: entries past n_top are 0.
    if (lid < MAX_TOP) {
        uint id = 0u, lp_bits = 0u;
        if (lid < n_top) {
            precise float lp = (top_x[lid] - m0) - lz;
            id = top_ids[lid];
            lp_bits = floatBitsToUint(s0_zero ? SM_NEG_INF : lp);
        }
        results[resb + 4u + lid] = id;
        results[resb + 4u + MAX_TOP + lid] = lp_bits;
    }
    if (lid == 0u) {
        results[resb + 0u] = token;
        results[resb + 1u] = rank;
        results[resb + 2u] = floatBitsToUint(logprob);
        results[resb + 3u] = n_top;
        if (pc.has_tokens != 0u)
            tokens_out[pc.t_off + row] = token;
    }
}
