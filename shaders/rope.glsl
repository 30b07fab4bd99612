// rope.glsl — the rotary-embedding math, shared by rope.comp (q and k in
// place) and kv_write.comp (k rotated on its way into the cache), so both
// perform the very same float operations and agree bit for bit.
//
// The angle pos * inv_freq[i] / freq_factors[i]: the host computes inv_freq
// in double and passes it as float pairs (hi + lo); the angle is formed and
// reduced modulo pi/2 in float-float arithmetic and sin/cos come from
// polynomials, so the result tracks the CPU's double computation to float
// rounding at any position, on any driver (GLSL sin/cos are only
// guaranteed to 2^-11). Exact products use Veltkamp/Dekker splitting.
// Every operation is `precise` (no contraction): Vulkan rounds add and mul
// correctly but does not promise that fma() is fused, and a compiler free
// to fuse could fuse differently in the two shaders.

const float PIO2_HI = 1.57079637050628662109375;       // float(pi/2)
const float PIO2_MID = -4.37113900018624283e-8;         // pi/2 - PIO2_HI
const float PIO2_LO = -1.71512451000592e-15;            // the rest

// a * b = p + e exactly.
void rope_two_prod(float a, float b, out float p, out float e)
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

float rope_sin_poly(float r)
{
    precise float r2 = r * r;
    precise float y = r + r * r2 * (-1.0 / 6.0 + r2 * (1.0 / 120.0 + r2 * (-1.0 / 5040.0 +
                      r2 * (1.0 / 362880.0))));
    return y;
}

float rope_cos_poly(float r)
{
    precise float r2 = r * r;
    precise float y = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24.0 + r2 * (-1.0 / 720.0 +
                      r2 * (1.0 / 40320.0 + r2 * (-1.0 / 3628800.0)))));
    return y;
}

// cos and sin of pos * (hi + lo) / factor (factor only when has_factor).
void rope_cos_sin(int pos, float hi, float lo, bool has_factor, float factor, out float c,
                  out float s)
{
    // theta as th + tl (float-float).
    float fp = float(pos);
    float th, tl, e;
    rope_two_prod(fp, hi, th, e);
    precise float tl0 = e + fp * lo;
    tl = tl0;
    if (has_factor) {
        precise float q1 = th / factor;
        float p1, e1;
        rope_two_prod(q1, factor, p1, e1);
        precise float rem = ((th - p1) - e1) + tl;
        precise float q2 = rem / factor;
        precise float s1 = q1 + q2;       // renormalize (fast two-sum)
        precise float s2 = q2 - (s1 - q1);
        th = s1;
        tl = s2;
    }
    // r = theta - k * pi/2, |r| <= ~pi/4: th - k*PIO2_HI is exact (Sterbenz).
    precise float kf = round(th * 0.636619772367581343);
    float p2, e2;
    rope_two_prod(kf, PIO2_HI, p2, e2);
    precise float r = (th - p2) - e2;
    r = r + tl;
    r = r - kf * PIO2_MID;
    r = r - kf * PIO2_LO;
    int quadrant = ((int(kf) % 4) + 4) % 4;
    float sr = rope_sin_poly(r), cr = rope_cos_poly(r);
    s = quadrant == 0 ? sr : quadrant == 1 ? cr : quadrant == 2 ? -sr : -cr;
    c = quadrant == 0 ? cr : quadrant == 1 ? -sr : quadrant == 2 ? -cr : sr;
}

// One element of the rotated pair (x0, x1): the first (x0 * c - x1 * s) or
// the second (x0 * s + x1 * c).
float rope_rotated(float x0, float x1, float c, float s, bool first)
{
    precise float y;
    if (first)
        y = x0 * c - x1 * s;
    else
        y = x0 * s + x1 * c;
    return y;
}
