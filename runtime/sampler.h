/*
 * sampler.h — the host side of sampling: Philox4x32-10, greedy argmax, and
 * duet_sample_row_init, which turns a request's parameters into the sample
 * op's row (backends/device.h; docs/SAMPLING.md is the specification the
 * device kernels follow).
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

#include "device.h"
#include "duet.h"
#include "philox.h"

/* duet_philox4x32 (Philox4x32-10) lives in backends/philox.h. */

/* Index of the largest logit; the lowest index wins ties. NaN never wins. */
int32_t duet_sample_argmax(const float *logits, int n);

/* Fill row from p for a vocabulary of vocab tokens. Every division and
 * transcendental the kernels need is done here, once:
 *   inv_temperature = 1/T, 0 (greedy) when T < 1e-5;
 *   log_min_p = logf(min_p), -INFINITY when min_p <= 0;
 *   top_k = p->top_k, 0 (off) when <= 0 or >= vocab;
 *   top_p_q24 = round(top_p * 2^24) clamped to [1, 2^24] (2^24 = off;
 *   top_p 0 means 1);
 *   repetition_penalty 0 means 1, inv_repetition_penalty = 1/that.
 * seed gives the Philox key (low word first); position is the output index
 * (counter word 1), sample_index the parallel sample (counter word 2).
 * forced_token >= 0 reports that token instead of sampling (prompt
 * logprobs); -1 samples. n_logprobs: top-N to report (clamped to 20), -1
 * for no logprobs. The row has no edits (edit_begin = edit_end = 0); the
 * caller sets its range. Cannot fail. */
void duet_sample_row_init(duet_sample_row *row, const duet_request_params *p, int vocab,
                          uint64_t seed, uint32_t position, uint32_t sample_index,
                          int32_t forced_token, int n_logprobs);


#endif
