/*
 * quant_avx512.c — the matmul kernels of quant_avx2.c built for AVX-512VL
 * + VNNI: one source, so the two builds cannot drift apart in their float
 * operations (their results are bitwise identical by construction).
 */
#define DUET_MM_VNNI 1
#include "quant_avx2.c"
