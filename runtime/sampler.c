#include "sampler.h"

#include <math.h>
#include <string.h>


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

void duet_sample_row_init(duet_sample_row *row, const duet_request_params *p, int vocab,
                          uint64_t seed, uint32_t position, uint32_t sample_index,
                          int32_t forced_token, int n_logprobs)
{
    memset(row, 0, sizeof *row);
    row->inv_temperature = p->temperature >= 1e-5f ? 1.0f / p->temperature : 0.0f;
    row->log_min_p = p->min_p > 0.0f ? logf(p->min_p) : -INFINITY;
    row->top_k = p->top_k > 0 && p->top_k < vocab ? p->top_k : 0;
    double q = p->top_p > 0.0f ? round((double)p->top_p * 16777216.0) : 16777216.0;
    row->top_p_q24 = q < 1.0 ? 1u : q > 16777216.0 ? 1u << 24 : (uint32_t)q;
    float rp = p->repetition_penalty != 0.0f ? p->repetition_penalty : 1.0f;
    row->repetition_penalty = rp;
    row->inv_repetition_penalty = 1.0f / rp;
    row->presence_penalty = p->presence_penalty;
    row->frequency_penalty = p->frequency_penalty;
    row->seed_lo = (uint32_t)seed;
    row->seed_hi = (uint32_t)(seed >> 32);
    row->position = position;
    row->sample_index = sample_index;
    row->forced_token = forced_token < 0 ? -1 : forced_token;
    row->n_logprobs = n_logprobs < 0                            ? -1
                      : n_logprobs > DUET_SAMPLE_MAX_LOGPROBS ? DUET_SAMPLE_MAX_LOGPROBS
                                                              : n_logprobs;
}

