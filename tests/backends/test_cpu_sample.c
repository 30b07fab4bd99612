/*
 * test_cpu_sample.c — the sample op (docs/SAMPLING.md): the specification's
 * exp/log, the reference and fast kernels bit for bit (every instruction-set
 * table, with and without threads), hand-computed penalties, greedy, masks, top-k/top-p edges, logprobs
 * against a double-precision log-softmax, reproducibility, batch
 * independence, and the op through the CPU device. The chi-square tests
 * are in test_cpu_sample_stats.c.
 *
 * Expected values are computed here from the definitions (hand arithmetic
 * or naive double-precision code), never taken from the kernels.
 */
#include <float.h>
#include <stdio.h>

#include "sample_fixture.h"

/* ---- dexp and dlog ------------------------------------------------------------------- */

static void test_dexp_exact_points_and_flush(void **state)
{
    (void)state;
    assert_true(duet_sm_dexp(0.0f) == 1.0f);
    assert_true(duet_sm_dexp(-0.0f) == 1.0f);
    assert_true(duet_sm_dexp(-87.0f) > 0.0f);
    assert_true(duet_sm_dexp(-87.0f) >= FLT_MIN); /* never subnormal */
    assert_true(duet_sm_dexp(nextafterf(-87.0f, -INFINITY)) == 0.0f);
    assert_true(duet_sm_dexp(-INFINITY) == 0.0f);
    assert_true(duet_sm_dexp(NAN) == 0.0f);
    assert_true(duet_sm_weight(0.0f) == (1ull << 40));
}

/* Relative error against libm's double exp, and non-decreasing over a dense
 * sweep of [-87, 0]: every 16th float, plus every float within 2^12 steps of
 * each point where the range reduction switches k (x = (k + 1/2) ln 2). */
static void test_dexp_accuracy_and_monotone(void **state)
{
    (void)state;
    double worst = 0.0;
    float prev_x = -87.0f, prev = duet_sm_dexp(-87.0f);
    for (uint32_t b = duet_sm_bits(-87.0f); b > 0x80000000u; b -= 16) {
        float x = duet_sm_float(b), y = duet_sm_dexp(x);
        if (y < prev)
            fail_msg("dexp(%a) = %a < dexp(%a) = %a", x, y, prev_x, prev);
        double e = fabs(y - exp((double)x)) / exp((double)x);
        worst = e > worst ? e : worst;
        prev = y;
        prev_x = x;
    }
    if (!(worst < 2e-7))
        fail_msg("dexp relative error %.3g exceeds 2e-7", worst);
    for (int k = -126; k <= 0; k++) {
        float c = (float)((k - 0.5) * M_LN2);
        if (c < -87.0f)
            continue;
        uint32_t cb = duet_sm_bits(c);
        float p = duet_sm_dexp(duet_sm_float(cb + 4096));
        for (uint32_t b = cb + 4095; b > cb - 4096; b--) {
            float y = duet_sm_dexp(duet_sm_float(b));
            if (y < p)
                fail_msg("dexp not monotone near k = %d at %a", k, duet_sm_float(b));
            p = y;
        }
    }
}

static void test_dlog_accuracy_and_monotone(void **state)
{
    (void)state;
    assert_true(duet_sm_dlog(1.0f) == 0.0f);
    assert_true(duet_sm_dlog(0.0f) == -INFINITY);
    assert_true(duet_sm_dlog(-1.0f) == -INFINITY);
    double worst = 0.0;
    float prev = -INFINITY;
    /* [2^-26, 2^20]: the arguments the sampler uses (u, -log u, S0). */
    for (uint32_t b = duet_sm_bits(0x1p-26f); b <= duet_sm_bits(0x1p20f); b += 7) {
        float x = duet_sm_float(b), y = duet_sm_dlog(x);
        if (y < prev)
            fail_msg("dlog not monotone at %a", x);
        prev = y;
        double t = log((double)x);
        if (fabs(t) > 1e-3) {
            double e = fabs(y - t) / fabs(t);
            worst = e > worst ? e : worst;
        } else if (fabs(y - t) > 1e-10) {
            fail_msg("dlog(%a) = %a, want %a", x, y, t);
        }
    }
    if (!(worst < 2e-7))
        fail_msg("dlog relative error %.3g exceeds 2e-7", worst);
}

/* GMAX and GMIN are the extremes over every uniform the race can draw, and
 * the noise never decreases as the word grows. */
static void test_gumbel_bounds(void **state)
{
    (void)state;
    float gmax = -INFINITY, gmin = INFINITY, prev = -INFINITY;
    for (uint32_t k = 0; k < (1u << 23); k++) {
        float u = duet_sm_uniform(k << 9);
        assert_true(u > 0.0f && u < 1.0f);
        float g = duet_sm_gumbel(k << 9);
        if (g < prev) /* the fast kernel bounds g by its value at the slice top */
            fail_msg("gumbel decreases at word %#x", k << 9);
        prev = g;
        gmax = g > gmax ? g : gmax;
        gmin = g < gmin ? g : gmin;
    }
    assert_true(gmax == DUET_SM_GMAX);
    assert_true(gmin == DUET_SM_GMIN);
    /* Low bits of the word do not matter. */
    assert_true(duet_sm_gumbel(0x1ffu) == duet_sm_gumbel(0));
}

static void test_top_p_limit_exact(void **state)
{
    (void)state;
    uint64_t s[] = {1ull << 40, (1ull << 58) - 1, 123456789012345ull, 0xffffffffffull};
    uint32_t q[] = {1, 1u << 23, 15099494, (1u << 24) - 1, 1u << 24};
    for (size_t i = 0; i < 4; i++)
        for (size_t j = 0; j < 5; j++) {
            unsigned __int128 want = ((unsigned __int128)s[i] * q[j]) >> 24;
            assert_true(duet_sm_top_p_limit(s[i], q[j]) == (uint64_t)want);
        }
}

/* The kernels' Philox is backends/philox.h (checked against the published
 * known answers in tests/runtime/test_sampler.c); the alias the kernels use
 * must be that function. */
static void test_philox_copies_agree(void **state)
{
    (void)state;
    for (int i = 0; i < 10000; i++) {
        uint32_t ctr[4] = {rng_u32(), rng_u32(), rng_u32(), rng_u32()}, key[2] = {rng_u32(), rng_u32()};
        uint32_t a[4], b[4];
        duet_philox4x32(ctr, key, a);
        duet_sm_philox4x32(ctr, key, b);
        assert_memory_equal(a, b, sizeof a);
    }
    uint32_t zero[4] = {0}, k0[2] = {0}, out[4];
    duet_sm_philox4x32(zero, k0, out);
    assert_int_equal(out[0], 0x6627e8d5u);
    assert_int_equal(out[3], 0x9b00dbd8u);
}

/* ---- row_init -------------------------------------------------------------------- */

static void test_row_init(void **state)
{
    (void)state;
    duet_request_params p = {.temperature = 0.5f, .top_p = 0.9f, .top_k = 40, .min_p = 0.1f,
                             .repetition_penalty = 1.25f, .presence_penalty = 0.5f,
                             .frequency_penalty = -0.25f};
    duet_sample_row r;
    duet_sample_row_init(&r, &p, 1000, 0x0123456789abcdefull, 7, 2, -1, 5);
    assert_true(r.inv_temperature == 2.0f);
    assert_true(r.log_min_p == logf(0.1f));
    assert_int_equal(r.top_k, 40);
    assert_int_equal(r.top_p_q24, (uint32_t)llround(0.9f * 16777216.0));
    assert_true(r.repetition_penalty == 1.25f && r.inv_repetition_penalty == 0.8f);
    assert_true(r.presence_penalty == 0.5f && r.frequency_penalty == -0.25f);
    assert_int_equal(r.seed_lo, 0x89abcdefu);
    assert_int_equal(r.seed_hi, 0x01234567u);
    assert_int_equal(r.position, 7);
    assert_int_equal(r.sample_index, 2);
    assert_int_equal(r.forced_token, -1);
    assert_int_equal(r.n_logprobs, 5);
    assert_int_equal(r.edit_begin, 0);
    assert_int_equal(r.edit_end, 0);

    /* Defaults and clamps. */
    duet_request_params z = {.top_k = 1000, .top_p = 1e-9f};
    duet_sample_row_init(&r, &z, 1000, 1, 0, 0, 3, 50);
    assert_true(r.inv_temperature == 0.0f);
    assert_true(r.log_min_p == -INFINITY);
    assert_int_equal(r.top_k, 0);
    assert_int_equal(r.top_p_q24, 1);
    assert_true(r.repetition_penalty == 1.0f && r.inv_repetition_penalty == 1.0f);
    assert_int_equal(r.forced_token, 3);
    assert_int_equal(r.n_logprobs, DUET_SAMPLE_MAX_LOGPROBS);
    duet_request_params d = {.temperature = 1e-6f, .top_k = -1};
    duet_sample_row_init(&r, &d, 1000, 1, 0, 0, -5, -3);
    assert_true(r.inv_temperature == 0.0f);
    assert_int_equal(r.top_k, 0);
    assert_int_equal(r.top_p_q24, 1u << 24);
    assert_int_equal(r.forced_token, -1);
    assert_int_equal(r.n_logprobs, -1);
}

/* ---- reference vs fast, bit for bit ------------------------------------------------ */

static uint64_t trng = 0x243f6a8885a308d3ull;
static uint32_t rnd(void)
{
    trng ^= trng << 13;
    trng ^= trng >> 7;
    trng ^= trng << 17;
    return (uint32_t)(trng >> 32);
}


static void assert_same_results(const batch *b, const duet_sample_result *want, kernel k,
                                int round)
{
    for (int r = 0; r < b->n_rows; r++) {
        if (memcmp(&b->res[r], &want[r], sizeof want[r]) != 0)
            fail_msg("round %d row %d (vocab %d): %s gives token %d rank %d logprob %a n_top %d;"
                     " ref gives token %d rank %d logprob %a n_top %d",
                     round, r, b->vocab, kernel_name[k], b->res[r].token, b->res[r].rank,
                     b->res[r].logprob, b->res[r].n_top, want[r].token, want[r].rank,
                     want[r].logprob, want[r].n_top);
    }
    /* work holds the processed logits: the same bits too (NaN-free). */
    (void)round;
}

static void test_ref_vs_fast_random(void **state)
{
    (void)state;
    const int vocabs[] = {1, 2, 3, 7, 31, 100, 1000, 4099, 20000};
    for (int round = 0; round < 120; round++) {
        int vocab = vocabs[round % 9];
        int n_rows = 1 + (int)(rnd() % 12), n_edits = (int)(rnd() % 40);
        batch b = batch_new(n_rows, vocab, n_edits);
        int style = (int)(rnd() % 6), cursor = 0;
        for (int r = 0; r < n_rows; r++) {
            fill_logits(b.logits + (size_t)r * vocab, vocab, style);
            b.rows[r] = random_row(vocab, n_edits, &cursor);
        }
        random_edits(b.edits, n_edits, vocab);
        run_kernel(K_REF, &b);
        duet_sample_result *want = malloc(sizeof *want * (size_t)n_rows);
        float *want_work = malloc(sizeof(float) * (size_t)n_rows * vocab);
        memcpy(want, b.res, sizeof *want * (size_t)n_rows);
        memcpy(want_work, b.work, sizeof(float) * (size_t)n_rows * vocab);
        for (int r = 0; r < n_rows; r++) {
            int32_t t = want[r].token;
            assert_true(t >= 0 && t < vocab);
        }
        for (kernel k = K_FAST_SCALAR; k < K_COUNT; k++) {
            run_kernel(k, &b);
            assert_same_results(&b, want, k, round);
            assert_memory_equal(b.work, want_work, sizeof(float) * (size_t)n_rows * vocab);
        }
        free(want);
        free(want_work);
        batch_free(&b);
    }
}

/* NaN logits count as -inf in every kernel. */
static void test_nan_logits(void **state)
{
    (void)state;
    batch b = batch_new(3, 50, 0);
    for (int r = 0; r < 3; r++) {
        fill_logits(b.logits + r * 50, 50, 0);
        for (int i = 0; i < 50; i += 3)
            b.logits[r * 50 + i] = NAN;
        duet_request_params p = {.temperature = 0.9f, .top_p = 0.8f};
        b.rows[r] = make_row(&p, 50, 11, (uint32_t)r);
        b.rows[r].n_logprobs = 20;
    }
    b.rows[2].forced_token = 3; /* a NaN logit: logprob -inf */
    run_kernel(K_REF, &b);
    duet_sample_result want[3];
    memcpy(want, b.res, sizeof want);
    for (int r = 0; r < 2; r++)
        assert_true(want[r].token % 3 != 0);
    assert_true(want[2].logprob == -INFINITY);
    assert_int_equal(want[2].rank, 50);
    for (kernel k = K_FAST_SCALAR; k < K_COUNT; k++) {
        run_kernel(k, &b);
        assert_same_results(&b, want, k, 0);
    }
    batch_free(&b);
}

/* ---- hand-computed cases ---------------------------------------------------------- */

static void test_penalties_and_bias_by_hand(void **state)
{
    (void)state;
    for (kernel k = 0; k < K_COUNT; k++) {
        batch b = batch_new(1, 8, 6);
        float x[8] = {2.0f, -2.0f, 1.0f, 1.0f, 0.5f, 0.25f, 3.0f, -1.0f};
        memcpy(b.logits, x, sizeof x);
        duet_request_params p = {.temperature = 0.0f, .repetition_penalty = 2.0f,
                                 .frequency_penalty = 0.5f, .presence_penalty = 0.25f};
        b.rows[0] = make_row(&p, 8, 1, 0);
        b.rows[0].edit_begin = 0;
        b.rows[0].edit_end = 6;
        /* 0: in the prompt, 2.0 / 2 = 1.0. 1: in the prompt, -2.0 * 2 = -4.0.
         * 2: generated 3 times: 1.0 / 2 - 3 * 0.5 - 0.25 = -1.25.
         * 3: bias +1 only (not seen): 2.0.  4: mask.
         * 7: bias 4 then generated once: (-1 + 4) / 2 - 0.5 - 0.25 = 0.75. */
        duet_sample_edit e[6] = {
            {0, DUET_SAMPLE_EDIT_PROMPT, 0, 0.0f}, {1, DUET_SAMPLE_EDIT_PROMPT, 0, 0.0f},
            {2, 0, 3, 0.0f},                       {3, 0, 0, 1.0f},
            {4, DUET_SAMPLE_EDIT_MASK, 2, 5.0f},   {7, 0, 1, 4.0f},
        };
        memcpy(b.edits, e, sizeof e);
        run_kernel(k, &b);
        float want[8] = {1.0f, -4.0f, -1.25f, 2.0f, -INFINITY, 0.25f, 3.0f, 0.75f};
        for (int i = 0; i < 8; i++)
            if (!(b.work[i] == want[i]))
                fail_msg("%s: token %d processed logit %g, want %g", kernel_name[k], i,
                         b.work[i], want[i]);
        assert_int_equal(b.res[0].token, 6); /* greedy */
        /* Without a repetition penalty the prompt flag does nothing. */
        b.rows[0].repetition_penalty = b.rows[0].inv_repetition_penalty = 1.0f;
        run_kernel(k, &b);
        assert_true(b.work[0] == 2.0f && b.work[1] == -2.0f);
        assert_true(b.work[2] == 1.0f - 1.5f - 0.25f);
        batch_free(&b);
    }
}

static void test_greedy_ties_and_mask(void **state)
{
    (void)state;
    for (kernel k = 0; k < K_COUNT; k++) {
        batch b = batch_new(2, 6, 1);
        float x[6] = {0.5f, 4.0f, 1.0f, 4.0f, 4.0f, -1.0f};
        memcpy(b.logits, x, sizeof x);
        memcpy(b.logits + 6, x, sizeof x);
        duet_request_params p = {0};
        b.rows[0] = make_row(&p, 6, 1, 0);
        b.rows[1] = make_row(&p, 6, 1, 0);
        b.edits[0] = (duet_sample_edit){1, DUET_SAMPLE_EDIT_MASK, 0, 0.0f};
        b.rows[1].edit_begin = 0;
        b.rows[1].edit_end = 1;
        run_kernel(k, &b);
        assert_int_equal(b.res[0].token, 1); /* lowest id among the ties */
        assert_int_equal(b.res[1].token, 3); /* 1 masked */
        batch_free(&b);
    }
}

/* A masked token is never sampled, however likely it was. */
static void test_mask_blocks_sampling(void **state)
{
    (void)state;
    batch b = batch_new(500, 16, 1);
    b.edits[0] = (duet_sample_edit){2, DUET_SAMPLE_EDIT_MASK, 0, 0.0f};
    duet_request_params p = {.temperature = 1.0f};
    for (int r = 0; r < 500; r++) {
        for (int i = 0; i < 16; i++)
            b.logits[r * 16 + i] = i == 2 ? 10.0f : 0.0f;
        b.rows[r] = make_row(&p, 16, 3, (uint32_t)r);
        b.rows[r].edit_end = 1;
    }
    for (kernel k = 0; k < K_COUNT; k++) {
        run_kernel(k, &b);
        for (int r = 0; r < 500; r++)
            assert_int_not_equal(b.res[r].token, 2);
    }
    /* Without the mask it is nearly always chosen: the test can fail. */
    for (int r = 0; r < 500; r++)
        b.rows[r].edit_end = 0;
    run_kernel(K_FAST_BEST, &b);
    int hits = 0;
    for (int r = 0; r < 500; r++)
        hits += b.res[r].token == 2;
    assert_true(hits > 450);
    batch_free(&b);
}

/* top_k = 1 and a tiny top_p both keep only the best token. */
static void test_top_k_one_and_top_p_tiny(void **state)
{
    (void)state;
    enum { V = 300, R = 64 };
    batch b = batch_new(R, V, 0);
    for (int r = 0; r < R; r++)
        fill_logits(b.logits + r * V, V, r % 2 ? 2 : 1); /* flat, or many ties */
    for (int variant = 0; variant < 2; variant++) {
        duet_request_params p = {.temperature = 1.5f};
        if (variant == 0)
            p.top_k = 1;
        else
            p.top_p = 1e-9f;
        for (int r = 0; r < R; r++)
            b.rows[r] = make_row(&p, V, 99, (uint32_t)r);
        for (kernel k = 0; k < K_COUNT; k++) {
            run_kernel(k, &b);
            for (int r = 0; r < R; r++) {
                /* The best processed logit, lowest id on ties, found here. */
                int best = 0;
                for (int i = 1; i < V; i++)
                    if (b.logits[r * V + i] > b.logits[r * V + best])
                        best = i;
                if (b.res[r].token != best)
                    fail_msg("%s variant %d row %d: token %d, want %d", kernel_name[k],
                             variant, r, b.res[r].token, best);
            }
        }
    }
    batch_free(&b);
}

/* top_p keeps a token only while the weight before it is below
 * L = floor(S * q / 2^24): two equal tokens with top_p 0.5 have L = 2^40 =
 * the first one's weight, so the second is never kept. */
static void test_top_p_boundary_exact(void **state)
{
    (void)state;
    enum { R = 200 };
    batch b = batch_new(R, 4, 0);
    duet_request_params p = {.temperature = 1.0f, .top_p = 0.5f};
    for (int r = 0; r < R; r++) {
        float x[4] = {-INFINITY, 2.0f, 2.0f, -40.0f}; /* -40 weighs 0: S = 2^41 */
        memcpy(b.logits + 4 * r, x, sizeof x);
        b.rows[r] = make_row(&p, 4, 5, (uint32_t)r);
        assert_int_equal(b.rows[r].top_p_q24, 1u << 23);
    }
    for (kernel k = 0; k < K_COUNT; k++) {
        run_kernel(k, &b);
        for (int r = 0; r < R; r++)
            if (b.res[r].token != 1)
                fail_msg("%s row %d: token %d, want 1", kernel_name[k], r, b.res[r].token);
    }
    /* Slightly above one half keeps both. */
    p.top_p = 0.5f + 1.0f / 1024;
    int seen2 = 0;
    for (int r = 0; r < R; r++)
        b.rows[r] = make_row(&p, 4, 5, (uint32_t)r);
    run_kernel(K_REF, &b);
    for (int r = 0; r < R; r++)
        seen2 += b.res[r].token == 2;
    assert_true(seen2 > R / 4 && seen2 < 3 * R / 4);
    batch_free(&b);
}

/* S is exact to the last unit of weight: two equal tokens, one of weight
 * exactly 2 (2^-39) in a vector chunk of its own, one far below (weight
 * 0), top_p 0.5. S = 2^41 + 2, so
 * L = 2^40 + 1 and the second equal token (2^40 before it) is kept; a
 * kernel that loses the 2 or miscounts the far token would drop it. The
 * row is 64 wide so the vector paths see every token. */
static void test_top_p_sum_exact(void **state)
{
    (void)state;
    enum { V = 64, R = 200 };
    float d2 = -26.5f;
    while (duet_sm_weight(d2) != 2)
        d2 = nextafterf(d2, -INFINITY); /* weight falls as d does */
    batch b = batch_new(R, V, 0);
    duet_request_params p = {.temperature = 1.0f, .top_p = 0.5f};
    for (int r = 0; r < R; r++) {
        float *x = b.logits + (size_t)r * V;
        for (int i = 0; i < V; i++)
            x[i] = -INFINITY;
        x[1] = x[2] = 0.0f;
        x[40] = d2; /* alone in its vector chunk */
        x[4] = -100.0f;
        b.rows[r] = make_row(&p, V, 21, (uint32_t)r);
    }
    for (kernel k = 0; k < K_COUNT; k++) {
        run_kernel(k, &b);
        int n2 = 0;
        for (int r = 0; r < R; r++) {
            int t = b.res[r].token;
            if (t != 1 && t != 2)
                fail_msg("%s row %d: token %d, want 1 or 2", kernel_name[k], r, t);
            n2 += t == 2;
        }
        if (!(n2 > R / 4 && n2 < 3 * R / 4))
            fail_msg("%s: token 2 drawn %d times of %d; S must count the weight-2 token",
                     kernel_name[k], n2, R);
    }
    batch_free(&b);
}

/* Equal scores go to the lowest id. Ties need two tokens with the same d
 * and the same 23-bit uniform: search positions of a flat row for them,
 * computing the expected winner here from the definition. */
static void test_score_ties_lowest_id(void **state)
{
    (void)state;
    enum { V = 4096, WANT = 3 };
    uint32_t key[2] = {0x1234, 0};
    int found = 0;
    batch b = batch_new(1, V, 0);
    duet_request_params p = {.temperature = 1.0f};
    for (uint32_t pos = 0; pos < 60000 && found < WANT; pos++) {
        if (top_uniform_ties(key, pos, V) < 2)
            continue;
        /* Expected: the lowest id with the largest g (g from the spec's
         * building blocks; d is 0 for every token). */
        int32_t want = -1;
        float gbest = -INFINITY;
        for (uint32_t blk = 0; blk < V / 4; blk++) {
            uint32_t ctr[4] = {blk, pos, 0, 0}, r[4];
            duet_sm_philox4x32(ctr, key, r);
            for (int j = 0; j < 4; j++) {
                float g = duet_sm_gumbel(r[j]);
                if (g > gbest)
                    gbest = g, want = (int32_t)(blk * 4 + (uint32_t)j);
            }
        }
        b.rows[0] = make_row(&p, V, 0x1234, pos);
        for (kernel k = 0; k < K_COUNT; k++) {
            run_kernel(k, &b);
            if (b.res[0].token != want)
                fail_msg("%s position %u: token %d, want %d (tied score)", kernel_name[k], pos,
                         b.res[0].token, want);
        }
        found++;
    }
    assert_int_equal(found, WANT);
    batch_free(&b);
}

/* The fast kernel looks for the top-p cut only among tokens above a weight
 * bound; here the cut lies just above it: one strong token and many weak
 * ones at 1.5 times the bound, which together pass the top-p mass. */
static void test_top_p_cut_among_weak_tokens(void **state)
{
    (void)state;
    enum { V = 1000, R = 300 };
    float top_p = 0.9f;
    uint32_t q = (uint32_t)llround(top_p * 16777216.0);
    double bound = ldexp((double)((1u << 24) - q), 16) / V; /* weight units of 2^-40 */
    float weak = (float)log(1.5 * bound / ldexp(1.0, 40));
    batch b = batch_new(R, V, 0);
    duet_request_params p = {.temperature = 1.0f, .top_p = top_p};
    for (int r = 0; r < R; r++) {
        b.logits[(size_t)r * V] = 0.0f;
        for (int i = 1; i < V; i++)
            b.logits[(size_t)r * V + i] = weak - 1e-4f * (float)(i % 50);
        b.rows[r] = make_row(&p, V, 8, (uint32_t)r);
    }
    run_kernel(K_REF, &b);
    duet_sample_result *want = malloc(sizeof *want * R);
    memcpy(want, b.res, sizeof *want * R);
    int weak_chosen = 0;
    for (int r = 0; r < R; r++)
        weak_chosen += want[r].token != 0;
    assert_true(weak_chosen > R / 50); /* the weak tokens are really kept */
    for (kernel k = K_FAST_SCALAR; k < K_COUNT; k++) {
        run_kernel(k, &b);
        assert_same_results(&b, want, k, 0);
    }
    free(want);
    batch_free(&b);
}

/* forced_token reports that token; out of range samples. */
static void test_forced_token(void **state)
{
    (void)state;
    batch b = batch_new(2, 10, 0);
    for (int i = 0; i < 20; i++)
        b.logits[i] = (float)(i % 10);
    duet_request_params p = {.temperature = 0.0f};
    b.rows[0] = make_row(&p, 10, 1, 0);
    b.rows[0].forced_token = 4;
    b.rows[0].n_logprobs = 2;
    b.rows[1] = make_row(&p, 10, 1, 0);
    b.rows[1].forced_token = 10; /* >= vocab: samples (greedy here) */
    for (kernel k = 0; k < K_COUNT; k++) {
        run_kernel(k, &b);
        assert_int_equal(b.res[0].token, 4);
        assert_int_equal(b.res[0].rank, 6); /* 4..9 score >= 4 */
        double lse = 0;
        for (int i = 0; i < 10; i++)
            lse += exp(i);
        assert_close(b.res[0].logprob, 4.0 - log(lse), 1e-5);
        assert_int_equal(b.res[0].n_top, 2);
        assert_int_equal(b.res[0].top_ids[0], 9);
        assert_int_equal(b.res[0].top_ids[1], 8);
        assert_int_equal(b.res[1].token, 9);
        assert_int_equal(b.res[1].n_top, 0);
        assert_true(b.res[1].logprob == 0.0f);
        assert_int_equal(b.res[1].rank, 0);
    }
    batch_free(&b);
}

/* ---- logprobs ---------------------------------------------------------------------- */

static void test_logprobs_match_log_softmax(void **state)
{
    (void)state;
    enum { V = 3000, R = 6 };
    batch b = batch_new(R, V, 2);
    b.edits[0] = (duet_sample_edit){5, DUET_SAMPLE_EDIT_MASK, 0, 0.0f};
    b.edits[1] = (duet_sample_edit){6, 0, 0, 50.0f};
    for (int r = 0; r < R; r++) {
        fill_logits(b.logits + r * V, V, r % 3 == 1 ? 1 : 0);
        duet_request_params p = {.temperature = r % 2 ? 0.8f : 0.0f, .top_p = 0.9f};
        duet_sample_row_init(&b.rows[r], &p, V, 5, (uint32_t)r, 0, -1, r == 5 ? 0 : 20);
        b.rows[r].edit_end = 2; /* edits must not change the raw logprobs */
    }
    for (kernel k = 0; k < K_COUNT; k++) {
        run_kernel(k, &b);
        for (int r = 0; r < R; r++) {
            const float *x = b.logits + r * V;
            const duet_sample_result *res = &b.res[r];
            double m = -INFINITY, s = 0;
            for (int i = 0; i < V; i++)
                m = x[i] > m ? x[i] : m;
            for (int i = 0; i < V; i++)
                s += exp((double)x[i] - m);
            double lse = m + log(s);
            assert_int_equal(res->token, 6); /* the bias wins */
            assert_close(res->logprob, x[6] - lse, 1e-5);
            int rank = 0;
            for (int i = 0; i < V; i++)
                rank += x[i] >= x[6];
            assert_int_equal(res->rank, rank);
            int n = r == 5 ? 0 : 20;
            assert_int_equal(res->n_top, n);
            /* Top-n by selection here: value desc, id asc. */
            char *used = calloc(V, 1);
            for (int j = 0; j < n; j++) {
                int best = -1;
                for (int i = 0; i < V; i++)
                    if (!used[i] && (best < 0 || x[i] > x[best]))
                        best = i;
                used[best] = 1;
                assert_int_equal(res->top_ids[j], best);
                assert_close(res->top_logprobs[j], x[best] - lse, 1e-5);
            }
            for (int j = n; j < DUET_SAMPLE_MAX_LOGPROBS; j++)
                assert_true(res->top_ids[j] == 0 && res->top_logprobs[j] == 0.0f);
            free(used);
        }
    }
    batch_free(&b);
}

/* ---- reproducibility and batch independence -------------------------------------- */

static void test_reproducible_and_seeded(void **state)
{
    (void)state;
    enum { V = 64, R = 400 };
    batch b = batch_new(R, V, 0);
    for (int r = 0; r < R; r++)
        for (int i = 0; i < V; i++)
            b.logits[r * V + i] = 0.05f * (float)(i % 7);
    duet_request_params p = {.temperature = 1.0f};
    int32_t first[R];
    for (int r = 0; r < R; r++)
        b.rows[r] = make_row(&p, V, 1234, (uint32_t)r);
    run_kernel(K_FAST_BEST_POOL, &b);
    for (int r = 0; r < R; r++)
        first[r] = b.res[r].token;
    run_kernel(K_REF, &b);
    for (int r = 0; r < R; r++)
        assert_int_equal(b.res[r].token, first[r]);
    /* Another seed: mostly other tokens; positions differ among themselves. */
    for (int r = 0; r < R; r++)
        b.rows[r] = make_row(&p, V, 1235, (uint32_t)r);
    run_kernel(K_FAST_BEST_POOL, &b);
    int same = 0, distinct = 0;
    char seen[V] = {0};
    for (int r = 0; r < R; r++) {
        same += b.res[r].token == first[r];
        distinct += !seen[first[r]];
        seen[first[r]] = 1;
    }
    assert_true(same < R / 8);
    assert_true(distinct > V / 2);
    /* sample_index is part of the counter too. */
    for (int r = 0; r < R; r++) {
        b.rows[r] = make_row(&p, V, 1234, (uint32_t)r);
        b.rows[r].sample_index = 1;
    }
    run_kernel(K_FAST_BEST_POOL, &b);
    same = 0;
    for (int r = 0; r < R; r++)
        same += b.res[r].token == first[r];
    assert_true(same < R / 8);
    batch_free(&b);
}

/* A row's result depends on nothing else in the call. */
static void test_batch_independence(void **state)
{
    (void)state;
    enum { V = 5000, R = 32 };
    batch big = batch_new(R, V, 8 * R), one = batch_new(1, V, 8);
    int cursor = 0;
    for (int r = 0; r < R; r++) {
        fill_logits(big.logits + (size_t)r * V, V, r % 5);
        big.rows[r] = random_row(V, 8 * R, &cursor);
    }
    random_edits(big.edits, 8 * R, V);
    /* Row 17: temperature, top-p, penalties and logprobs. */
    duet_request_params p = {.temperature = 0.9f, .top_p = 0.9f, .top_k = 100,
                             .repetition_penalty = 1.1f, .presence_penalty = 0.2f};
    duet_sample_row_init(&big.rows[17], &p, V, 77, 12, 0, -1, 5);
    big.rows[17].edit_begin = 100;
    big.rows[17].edit_end = 108;
    one.rows[0] = big.rows[17];
    one.rows[0].edit_begin = 0;
    one.rows[0].edit_end = 8;
    memcpy(one.edits, big.edits + 100, 8 * sizeof *one.edits);
    memcpy(one.logits, big.logits + 17 * V, V * sizeof(float));
    for (kernel k = 0; k < K_COUNT; k++) {
        run_kernel(k, &big);
        run_kernel(k, &one);
        assert_memory_equal(&big.res[17], &one.res[0], sizeof one.res[0]);
        assert_memory_equal(big.work + 17 * V, one.work, V * sizeof(float));
    }
    batch_free(&big);
    batch_free(&one);
}

/* ---- through the device --------------------------------------------------------- */

static void run_device(int reference, batch *b, duet_sample_result *out)
{
    fx f = fx_open(2, reference);
    size_t plane = sizeof(float) * (size_t)b->n_rows * b->vocab;
    duet_buffer *bl = fx_buf(&f, b->logits, plane);
    duet_buffer *br = fx_buf(&f, b->rows, sizeof *b->rows * b->n_rows);
    duet_buffer *be = fx_buf(&f, b->edits, sizeof *b->edits * b->n_edits);
    duet_buffer *bw = fx_buf(&f, NULL, plane);
    duet_buffer *bo = fx_buf(&f, NULL, sizeof *out * b->n_rows);
    duet_buffer *bt = fx_buf(&f, NULL, sizeof(int32_t) * b->n_rows);
    fx_begin(&f);
    duet_sample_args a = {.logits = at(bl), .rows = at(br), .edits = at(be), .work = at(bw),
                          .results = at(bo), .tokens_out = at(bt), .n_rows = b->n_rows,
                          .vocab = b->vocab, .n_edits = b->n_edits};
    assert_int_equal(duet_dev_sample(f.d, f.s, &a), DUET_OK);
    int32_t *packed = malloc(sizeof(int32_t) * b->n_rows);
    assert_int_equal(duet_dev_download(f.d, f.s, at(bt), packed, sizeof(int32_t) * b->n_rows),
                     DUET_OK);
    fx_finish(&f, bo, out, sizeof *out * b->n_rows);
    for (int r = 0; r < b->n_rows; r++)
        assert_int_equal(packed[r], out[r].token);
    free(packed);

    /* Bad shapes are refused with a message naming the field. */
    fx_begin(&f);
    duet_sample_args bad = a;
    bad.n_rows = 0;
    assert_int_equal(duet_dev_sample(f.d, f.s, &bad), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "n_rows"));
    bad = a;
    bad.vocab = b->vocab + 1; /* logits buffer too small */
    assert_int_equal(duet_dev_sample(f.d, f.s, &bad), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "logits"));
    bad = a;
    bad.n_edits = -1;
    assert_int_equal(duet_dev_sample(f.d, f.s, &bad), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "n_edits"));
    bad = a;
    bad.n_edits = b->n_edits + 1;
    assert_int_equal(duet_dev_sample(f.d, f.s, &bad), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "edits"));
    bad = a;
    bad.results.offset = sizeof *out;
    assert_int_equal(duet_dev_sample(f.d, f.s, &bad), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "results"));
    bad = a;
    bad.tokens_out.offset = sizeof(int32_t);
    assert_int_equal(duet_dev_sample(f.d, f.s, &bad), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "tokens_out"));
    duet_dev_stream_submit(f.d, f.s);
    duet_dev_stream_wait(f.d, f.s);

    duet_dev_buffer_free(f.d, bl);
    duet_dev_buffer_free(f.d, br);
    duet_dev_buffer_free(f.d, be);
    duet_dev_buffer_free(f.d, bw);
    duet_dev_buffer_free(f.d, bo);
    duet_dev_buffer_free(f.d, bt);
    fx_close(&f);
}

static void test_through_device(void **state)
{
    (void)state;
    enum { V = 2048, R = 9 };
    batch b = batch_new(R, V, 20);
    int cursor = 0;
    for (int r = 0; r < R; r++) {
        fill_logits(b.logits + r * V, V, r % 5);
        b.rows[r] = random_row(V, 20, &cursor);
    }
    random_edits(b.edits, 20, V);
    duet_sample_result got[R];
    for (int reference = 0; reference < 2; reference++) {
        run_device(reference, &b, got);
        run_kernel(reference ? K_REF : K_FAST_BEST_POOL, &b);
        assert_memory_equal(got, b.res, sizeof got);
    }
    batch_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dexp_exact_points_and_flush),
        cmocka_unit_test(test_dexp_accuracy_and_monotone),
        cmocka_unit_test(test_dlog_accuracy_and_monotone),
        cmocka_unit_test(test_gumbel_bounds),
        cmocka_unit_test(test_top_p_limit_exact),
        cmocka_unit_test(test_philox_copies_agree),
        cmocka_unit_test(test_row_init),
        cmocka_unit_test(test_ref_vs_fast_random),
        cmocka_unit_test(test_nan_logits),
        cmocka_unit_test(test_penalties_and_bias_by_hand),
        cmocka_unit_test(test_greedy_ties_and_mask),
        cmocka_unit_test(test_mask_blocks_sampling),
        cmocka_unit_test(test_top_k_one_and_top_p_tiny),
        cmocka_unit_test(test_top_p_boundary_exact),
        cmocka_unit_test(test_top_p_sum_exact),
        cmocka_unit_test(test_score_ties_lowest_id),
        cmocka_unit_test(test_top_p_cut_among_weak_tokens),
        cmocka_unit_test(test_forced_token),
        cmocka_unit_test(test_logprobs_match_log_softmax),
        cmocka_unit_test(test_reproducible_and_seeded),
        cmocka_unit_test(test_batch_independence),
        cmocka_unit_test(test_through_device),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    duet_threadpool_free(test_pool());
    return rc;
}
