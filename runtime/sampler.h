/*
 * sampler.h — choosing the next token from logits (first version: greedy
 * and temperature; the full vLLM parameter set comes with the sampler
 * issue).
 *
 * Random numbers come from Philox4x32-10, a counter-based generator keyed
 * by the request's seed and indexed by (output position, vocabulary
 * index), so no sequential RNG state exists: the same seed gives the same
 * tokens whatever else is batched with the request and on any backend
 * that implements the same arithmetic.
 */
#ifndef DUET_SAMPLER_H
#define DUET_SAMPLER_H

#include <stdint.h>

/* Philox4x32-10: encrypt counter ctr with key; out gets 4 words. */
void duet_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* Index of the largest logit; the lowest index wins ties. NaN never wins. */
int32_t duet_sample_argmax(const float *logits, int n);

/* Sample from softmax(logits / temperature) by the exponential race:
 * argmax_i p_i / q_i with q_i ~ Exp(1) drawn from Philox(seed, position, i).
 * temperature < 1e-5 is greedy. */
int32_t duet_sample_temperature(const float *logits, int n, float temperature, uint64_t seed,
                                uint32_t position);

#endif
