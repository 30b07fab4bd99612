#version 450
// rms_norm_add: x += res (written back), then y = rms_norm(x) per row, with
// the bits of add followed by rms_norm (see rms_norm.glsl).
#define RESIDUAL 1
#include "rms_norm.glsl"
