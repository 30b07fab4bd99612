#version 450
// rms_norm: y = x / sqrt(mean(x^2) + eps) * w per row (see rms_norm.glsl).
#include "rms_norm.glsl"
