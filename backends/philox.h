/*
 * philox.h — Philox4x32-10 (Salmon et al., SC'11), the counter-based
 * generator behind sampling: 10 rounds of two 32x32->64 multiplies with a
 * Weyl key schedule. Backend-neutral and header-only, so the runtime and
 * every backend's host code use this one definition (GPU backends write it
 * again in their shading language; docs/SAMPLING.md).
 */
#ifndef DUET_PHILOX_H
#define DUET_PHILOX_H

#include <stdint.h>

/* Encrypt counter ctr with key; out gets 4 words. */
static inline void duet_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c0 = n0;
        c1 = (uint32_t)p1;
        c2 = n2;
        c3 = (uint32_t)p0;
        k0 += 0x9E3779B9u; /* Weyl sequence key schedule */
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

#endif
