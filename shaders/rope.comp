#version 450
// rope: rotate pairs of the leading rot_dim dims of every q and k head by
// pos * inv_freq[i] / freq_factors[i]. The host computes inv_freq in
// double and passes it as float pairs (hi + lo); the angle is formed and
// reduced modulo pi/2 in float-float arithmetic and sin/cos come from
// polynomials, so the result tracks the CPU's double computation to float
// rounding at any position, on any driver (GLSL sin/cos are only
// guaranteed to 2^-11). Exact products use Veltkamp/Dekker splitting with
// `precise` (no contraction): Vulkan rounds add and mul correctly but
// does not promise that fma() is fused.
#include "common.glsl"
layout(local_size_x = 256) in;
BUF_RW(0, qb)
BUF_RW(1, kb)
BUF_RO(2, positions)
BUF_RO(3, factors)
BUF_RO(4, freqs)
layout(push_constant) uniform PC {
    uint n_tokens, n_heads, n_kv_heads, head_dim, rot_dim, neox, has_factors;
    uint q_off, k_off, p_off, f_off, t_off;
} pc;

const float PIO2_HI = 1.57079637050628662109375;       // float(pi/2)
const float PIO2_MID = -4.37113900018624283e-8;         // pi/2 - PIO2_HI
const float PIO2_LO = -1.71512451000592e-15;            // the rest

// a * b = p + e exactly.
void two_prod(float a, float b, out float p, out float e)
{
    precise float ca = 4097.0 * a;
    precise float ah = ca - (ca - a);
    precise float al = a - ah;
    precise float cb = 4097.0 * b;
    precise float bh = cb - (cb - b);
    precise float bl = b - bh;
    precise float pp = a * b;
    precise float ee = ((ah * bh - pp) + ah * bl + al * bh) + al * bl;
    p = pp;
    e = ee;
}

float sin_poly(float r)
{
    float r2 = r * r;
    return r + r * r2 * (-1.0 / 6.0 + r2 * (1.0 / 120.0 + r2 * (-1.0 / 5040.0 + r2 * (1.0 / 362880.0))));
}

float cos_poly(float r)
{
    float r2 = r * r;
    return 1.0 + r2 * (-0.5 + r2 * (1.0 / 24.0 + r2 * (-1.0 / 720.0 + r2 * (1.0 / 40320.0 +
           r2 * (-1.0 / 3628800.0)))));
}

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

    // theta = pos * inv_freq / factor as th + tl (float-float).
    float fp = float(int(positions[pc.p_off + t]));
    float hi = uintBitsToFloat(freqs[pc.t_off + 2u * i]);
    float lo = uintBitsToFloat(freqs[pc.t_off + 2u * i + 1u]);
    float th, tl, e;
    two_prod(fp, hi, th, e);
    precise float tl0 = e + fp * lo;
    tl = tl0;
    if (pc.has_factors != 0u) {
        float f = uintBitsToFloat(factors[pc.f_off + i]);
        precise float q1 = th / f;
        float p1, e1;
        two_prod(q1, f, p1, e1);
        precise float rem = ((th - p1) - e1) + tl;
        precise float q2 = rem / f;
        precise float s1 = q1 + q2;       // renormalize (fast two-sum)
        precise float s2 = q2 - (s1 - q1);
        th = s1;
        tl = s2;
    }
    // r = theta - k * pi/2, |r| <= ~pi/4: th - k*PIO2_HI is exact (Sterbenz).
    precise float kf = round(th * 0.636619772367581343);
    float p2, e2;
    two_prod(kf, PIO2_HI, p2, e2);
    precise float r = (th - p2) - e2;
    r = r + tl;
    r = r - kf * PIO2_MID;
    r = r - kf * PIO2_LO;
    int quadrant = ((int(kf) % 4) + 4) % 4;
    float sr = sin_poly(r), cr = cos_poly(r);
    float s = quadrant == 0 ? sr : quadrant == 1 ? cr : quadrant == 2 ? -sr : -cr;
    float c = quadrant == 0 ? cr : quadrant == 1 ? -sr : quadrant == 2 ? -cr : sr;

    uint i0 = pc.neox != 0u ? i : 2u * i;
    uint i1 = pc.neox != 0u ? i + half_rot : 2u * i + 1u;
    if (h < pc.n_heads) {
        uint b = pc.q_off + (t * pc.n_heads + h) * pc.head_dim;
        float x0 = uintBitsToFloat(qb[b + i0]), x1 = uintBitsToFloat(qb[b + i1]);
        qb[b + i0] = floatBitsToUint(x0 * c - x1 * s);
        qb[b + i1] = floatBitsToUint(x0 * s + x1 * c);
    } else {
        uint b = pc.k_off + (t * pc.n_kv_heads + (h - pc.n_heads)) * pc.head_dim;
        float x0 = uintBitsToFloat(kb[b + i0]), x1 = uintBitsToFloat(kb[b + i1]);
        kb[b + i0] = floatBitsToUint(x0 * c - x1 * s);
        kb[b + i1] = floatBitsToUint(x0 * s + x1 * c);
    }
}
