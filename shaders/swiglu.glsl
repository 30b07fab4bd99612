// swiglu.glsl — silu(g) * u, written once: swiglu.comp applies it to
// stored values and the gated matmuls to their two products, so the gated
// form has exactly the bits of matmul, matmul, swiglu.
float silu_mul(float g, float u)
{
    return g / (1.0 + exp(-g)) * u;
}
