/*
 * request_params.c — validation of duet_request_params: every bad value is
 * rejected with a message naming the field, the value and the limit
 * (vLLM's ranges).
 */
#include <math.h>
#include <stddef.h>

#include "duet.h"
#include "error.h"

enum { MAX_N = 128, MAX_STOPS = 64, MAX_LOGIT_BIAS = 1024 };

#define BAD(...) return duet_error(DUET_ERR_INVALID_ARG, __VA_ARGS__)

duet_status duet_request_params_validate(const duet_request_params *p, int vocab)
{
    if (p->max_tokens < 1)
        BAD("max_tokens is %d; it must be >= 1", p->max_tokens);
    if (p->min_tokens < 0 || p->min_tokens > p->max_tokens)
        BAD("min_tokens is %d; it must be in [0, max_tokens = %d]", p->min_tokens,
            p->max_tokens);
    if (!(p->temperature >= 0.0f) || isinf(p->temperature))
        BAD("temperature is %g; it must be >= 0 and finite", p->temperature);
    if (!(p->top_p >= 0.0f && p->top_p <= 1.0f))
        BAD("top_p is %g; it must be in (0, 1]", p->top_p);
    if (p->top_k < -1)
        BAD("top_k is %d; it must be -1 or 0 (off) or >= 1", p->top_k);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        BAD("min_p is %g; it must be in [0, 1]", p->min_p);
    if (!(p->repetition_penalty >= 0.0f) || isinf(p->repetition_penalty))
        BAD("repetition_penalty is %g; it must be > 0 and finite", p->repetition_penalty);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        BAD("presence_penalty is %g; it must be in [-2, 2]", p->presence_penalty);
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        BAD("frequency_penalty is %g; it must be in [-2, 2]", p->frequency_penalty);
    if (p->n < 0 || p->n > MAX_N)
        BAD("n is %d; it must be in [1, %d]", p->n, MAX_N);
    if (p->want_logprobs && (p->logprobs < 0 || p->logprobs > DUET_MAX_LOGPROBS))
        BAD("logprobs is %d; it must be in [0, %d]", p->logprobs, DUET_MAX_LOGPROBS);
    if (p->want_prompt_logprobs &&
        (p->prompt_logprobs < 0 || p->prompt_logprobs > DUET_MAX_LOGPROBS))
        BAD("prompt_logprobs is %d; it must be in [0, %d]", p->prompt_logprobs,
            DUET_MAX_LOGPROBS);
    if (p->n_logit_bias < 0 || p->n_logit_bias > MAX_LOGIT_BIAS ||
        (p->n_logit_bias > 0 && !p->logit_bias))
        BAD("logit_bias has %d entries; at most %d are allowed", p->n_logit_bias,
            MAX_LOGIT_BIAS);
    for (int i = 0; i < p->n_logit_bias; i++) {
        const duet_logit_bias *b = &p->logit_bias[i];
        if (b->token < 0 || b->token >= vocab)
            BAD("logit_bias token %d is outside the vocabulary [0, %d)", b->token, vocab);
        if (!(b->bias >= -100.0f && b->bias <= 100.0f))
            BAD("logit_bias for token %d is %g; it must be in [-100, 100]", b->token, b->bias);
    }
    if (p->n_stop < 0 || p->n_stop > MAX_STOPS || (p->n_stop > 0 && !p->stop))
        BAD("stop has %d strings; at most %d are allowed", p->n_stop, MAX_STOPS);
    for (int i = 0; i < p->n_stop; i++)
        if (!p->stop[i] || !*p->stop[i])
            BAD("stop[%d] is empty; stop strings must have at least one character", i);
    if (p->n_stop_token_ids < 0 || (p->n_stop_token_ids > 0 && !p->stop_token_ids))
        BAD("stop_token_ids has %d entries", p->n_stop_token_ids);
    for (int i = 0; i < p->n_stop_token_ids; i++)
        if (p->stop_token_ids[i] < 0 || p->stop_token_ids[i] >= vocab)
            BAD("stop_token_ids[%d] is %d; it must be in [0, %d)", i, p->stop_token_ids[i],
                vocab);
    return DUET_OK;
}
