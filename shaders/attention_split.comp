#version 450
// attention_split: split-K decode attention, reductions in shared memory
// (see attention_split.glsl).
#include "attention_split.glsl"
