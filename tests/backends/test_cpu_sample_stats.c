/*
 * test_cpu_sample_stats.c — the sample op's sampled frequencies against
 * the exact target distribution: for each parameter combination, 100,000
 * draws from fixed logits pass a chi-square test at p = 0.001 (critical
 * values by Wilson–Hilferty), and deliberately wrong samplers (top_p
 * ignored, temperature applied twice, penalties left out) fail the same
 * check. The target is computed here in double from the definitions.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>

#include "sample_fixture.h"

/* ---- chi-square against the exact distribution -------------------------------------- */

enum { CHI_VOCAB = 40, CHI_SAMPLES = 100000, CHI_ROWS = 1000 };

typedef struct chi_case {
    const char *name;
    duet_request_params p;
    int with_edits;
} chi_case;

static const duet_sample_edit chi_edits[] = {
    {.token = 0, .flags = DUET_SAMPLE_EDIT_PROMPT, .count = 0, .bias = 0.0f},
    {.token = 3, .flags = 0, .count = 2, .bias = 0.0f},
    {.token = 5, .flags = DUET_SAMPLE_EDIT_MASK, .count = 0, .bias = 0.0f},
    {.token = 7, .flags = 0, .count = 0, .bias = 1.5f},
    {.token = 9, .flags = DUET_SAMPLE_EDIT_PROMPT, .count = 1, .bias = -0.5f},
    {.token = 20, .flags = 0, .count = 0, .bias = 2.0f},
};
enum { CHI_N_EDITS = sizeof chi_edits / sizeof chi_edits[0] };

static float chi_logit(int i) { return (float)(2.5 * sin(1.7 * i + 0.3) - 0.04 * i); }

/* The target distribution from the definitions, in double. */
static void chi_target(const chi_case *c, double *prob)
{
    double l[CHI_VOCAB];
    const duet_request_params *p = &c->p;
    double rp = p->repetition_penalty ? p->repetition_penalty : 1.0;
    for (int i = 0; i < CHI_VOCAB; i++)
        l[i] = chi_logit(i);
    for (int j = 0; c->with_edits && j < CHI_N_EDITS; j++) {
        const duet_sample_edit *e = &chi_edits[j];
        if (e->flags & DUET_SAMPLE_EDIT_MASK) {
            l[e->token] = -INFINITY;
            continue;
        }
        double v = l[e->token] + e->bias;
        if ((e->flags & DUET_SAMPLE_EDIT_PROMPT) || e->count > 0)
            v = v > 0 ? v / rp : v * rp;
        v -= e->count * p->frequency_penalty;
        if (e->count > 0)
            v -= p->presence_penalty;
        l[e->token] = v;
    }
    double z[CHI_VOCAB], m = -INFINITY;
    for (int i = 0; i < CHI_VOCAB; i++) {
        z[i] = l[i] / p->temperature;
        m = z[i] > m ? z[i] : m;
    }
    /* Order by z descending (distinct here), candidates by min_p and top_k. */
    int order[CHI_VOCAB], n = 0;
    for (int i = 0; i < CHI_VOCAB; i++)
        if (z[i] > -INFINITY && (p->min_p <= 0 || z[i] - m >= log(p->min_p)))
            order[n++] = i;
    for (int a = 0; a < n; a++)
        for (int b = a + 1; b < n; b++)
            if (z[order[b]] > z[order[a]]) {
                int t = order[a];
                order[a] = order[b];
                order[b] = t;
            }
    if (p->top_k > 0 && p->top_k < n)
        n = p->top_k;
    double sum = 0;
    for (int a = 0; a < n; a++)
        sum += exp(z[order[a]] - m);
    if (p->top_p > 0 && p->top_p < 1) {
        double above = 0;
        int kept = 0;
        while (kept < n && above < p->top_p * sum) {
            /* Stay away from the boundary, where the kernel's fixed point
             * could legitimately decide the other way. */
            double gap = fabs(above - p->top_p * sum) / sum;
            assert_true(gap > 1e-4);
            above += exp(z[order[kept]] - m);
            kept++;
        }
        n = kept;
        sum = above;
    }
    memset(prob, 0, sizeof(double) * CHI_VOCAB);
    for (int a = 0; a < n; a++)
        prob[order[a]] = exp(z[order[a]] - m) / sum;
}

/* Sample CHI_SAMPLES times (positions 0..CHI_SAMPLES-1, seed fixed) with
 * row p, which may differ from the case's (negative controls). */
static void chi_sample(const chi_case *c, const duet_request_params *p, long *counts)
{
    batch b = batch_new(CHI_ROWS, CHI_VOCAB, CHI_N_EDITS);
    memcpy(b.edits, chi_edits, sizeof chi_edits);
    for (int r = 0; r < CHI_ROWS; r++)
        for (int i = 0; i < CHI_VOCAB; i++)
            b.logits[r * CHI_VOCAB + i] = chi_logit(i);
    memset(counts, 0, sizeof(long) * CHI_VOCAB);
    for (int base = 0; base < CHI_SAMPLES; base += CHI_ROWS) {
        for (int r = 0; r < CHI_ROWS; r++) {
            b.rows[r] = make_row(p, CHI_VOCAB, 0x5eed, (uint32_t)(base + r));
            b.rows[r].edit_begin = 0;
            b.rows[r].edit_end = c->with_edits ? CHI_N_EDITS : 0;
        }
        run_kernel(K_FAST_BEST_POOL, &b);
        for (int r = 0; r < CHI_ROWS; r++)
            counts[b.res[r].token]++;
    }
    batch_free(&b);
}

/* Chi-square statistic of counts against prob, bins with expected < 5
 * pooled; the critical value at p = 0.001 for its degrees of freedom by
 * the Wilson-Hilferty approximation. Returns 1 when the sample is
 * consistent with prob. A token of probability 0 drawn even once fails. */
static int chi_square_ok(const long *counts, const double *prob, double *stat_out,
                         double *crit_out)
{
    double stat = 0.0, pooled_e = 0.0, pooled_o = 0.0;
    int bins = 0;
    for (int i = 0; i < CHI_VOCAB; i++) {
        double e = prob[i] * CHI_SAMPLES;
        if (prob[i] == 0.0 && counts[i] > 0) {
            *stat_out = INFINITY;
            *crit_out = 0;
            return 0;
        }
        if (e < 5.0) {
            pooled_e += e;
            pooled_o += (double)counts[i];
            continue;
        }
        stat += (counts[i] - e) * (counts[i] - e) / e;
        bins++;
    }
    if (pooled_e >= 5.0) {
        stat += (pooled_o - pooled_e) * (pooled_o - pooled_e) / pooled_e;
        bins++;
    } else if (pooled_o > 5.0 + 10.0 * pooled_e) {
        stat = INFINITY; /* many draws where almost none were expected */
    }
    double df = bins - 1 > 0 ? bins - 1 : 1;
    const double z = 3.090232306; /* upper 0.001 quantile of the standard normal */
    double h = 2.0 / (9.0 * df);
    double crit = df * pow(1.0 - h + z * sqrt(h), 3.0);
    *stat_out = stat;
    *crit_out = crit;
    return stat <= crit;
}

static const chi_case chi_cases[] = {
    {"temperature", {.temperature = 0.7f}, 0},
    {"temperature+top_k", {.temperature = 1.3f, .top_k = 7}, 0},
    {"temperature+top_p", {.temperature = 0.9f, .top_p = 0.8f}, 0},
    {"temperature+min_p", {.temperature = 1.1f, .min_p = 0.05f}, 0},
    {"temperature+penalties+bias",
     {.temperature = 0.8f, .repetition_penalty = 1.3f, .presence_penalty = 0.4f,
      .frequency_penalty = 0.3f},
     1},
    {"all together",
     {.temperature = 1.2f, .top_k = 12, .top_p = 0.85f, .min_p = 0.02f,
      .repetition_penalty = 1.2f, .presence_penalty = 0.5f, .frequency_penalty = 0.2f},
     1},
};

static void test_chi_square(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof chi_cases / sizeof chi_cases[0]; c++) {
        const chi_case *cc = &chi_cases[c];
        double prob[CHI_VOCAB], stat, crit;
        long counts[CHI_VOCAB];
        chi_target(cc, prob);
        chi_sample(cc, &cc->p, counts);
        int ok = chi_square_ok(counts, prob, &stat, &crit);
        printf("chi-square %-28s %8.2f (critical %.2f at p = 0.001)\n", cc->name, stat, crit);
        if (!ok)
            fail_msg("%s: chi-square %.2f exceeds the critical value %.2f", cc->name, stat, crit);
    }
}

/* Deliberately wrong samplers must fail the same check. */
static void test_chi_square_negative_controls(void **state)
{
    (void)state;
    double prob[CHI_VOCAB], stat, crit;
    long counts[CHI_VOCAB];

    /* Ignoring top_p. */
    const chi_case *tp = &chi_cases[2];
    chi_target(tp, prob);
    duet_request_params wrong = tp->p;
    wrong.top_p = 0.0f;
    chi_sample(tp, &wrong, counts);
    assert_false(chi_square_ok(counts, prob, &stat, &crit));
    printf("negative control (top_p ignored): %.2f > %.2f\n", stat, crit);

    /* Temperature applied twice. */
    const chi_case *t = &chi_cases[0];
    chi_target(t, prob);
    wrong = t->p;
    wrong.temperature = t->p.temperature * t->p.temperature;
    chi_sample(t, &wrong, counts);
    assert_false(chi_square_ok(counts, prob, &stat, &crit));
    printf("negative control (temperature twice): %.2f > %.2f\n", stat, crit);

    /* Penalties left out. */
    const chi_case *pen = &chi_cases[4];
    chi_target(pen, prob);
    chi_case no_edits = *pen;
    no_edits.with_edits = 0;
    chi_sample(&no_edits, &pen->p, counts);
    assert_false(chi_square_ok(counts, prob, &stat, &crit));
    printf("negative control (no penalties): %.2f > %.2f\n", stat, crit);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chi_square),
        cmocka_unit_test(test_chi_square_negative_controls),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    duet_threadpool_free(test_pool());
    return rc;
}
