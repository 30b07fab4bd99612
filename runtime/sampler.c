#include "sampler.h"

#include <math.h>

void duet_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
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

int32_t duet_sample_argmax(const float *logits, int n)
{
    int32_t best = 0;
    float best_v = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (logits[i] > best_v) { /* strict: the lowest index wins ties */
            best_v = logits[i];
            best = i;
        }
    }
    return best;
}

int32_t duet_sample_temperature(const float *logits, int n, float temperature, uint64_t seed,
                                uint32_t position)
{
    if (!(temperature >= 1e-5f))
        return duet_sample_argmax(logits, n);
    float max_v = logits[duet_sample_argmax(logits, n)];
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    int32_t best = 0;
    double best_score = -1.0;
    for (int base = 0; base < n; base += 4) {
        uint32_t ctr[4] = {(uint32_t)(base / 4), position, 0, 0}, r[4];
        duet_philox4x32(ctr, key, r);
        for (int j = 0; j < 4 && base + j < n; j++) {
            int i = base + j;
            /* u in (0, 1): 24 random bits, offset by half a step. */
            double u = ((r[j] >> 8) + 0.5) * (1.0 / 16777216.0);
            double q = -log(u);
            double p = exp(((double)logits[i] - max_v) / temperature);
            double score = p / q;
            if (score > best_score) {
                best_score = score;
                best = i;
            }
        }
    }
    return best;
}
