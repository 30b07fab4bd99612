#version 450
// attention_split_sg: split-K decode attention with subgroup reductions
// (see attention_split.glsl); the host picks it only on devices that
// report subgroup arithmetic in compute shaders.
#extension GL_KHR_shader_subgroup_basic : enable
#extension GL_KHR_shader_subgroup_arithmetic : enable
#define SUBGROUP_REDUCE 1
#include "attention_split.glsl"
