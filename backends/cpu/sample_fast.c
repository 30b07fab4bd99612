/*
 * sample_fast.c — the sample op's fast kernel: the same bits as
 * sample_ref.c without sorting the vocabulary and without allocating.
 *
 * The kept set K is a prefix of the order O (d descending, id ascending),
 * so it is fixed by its last member. That member is found by radix
 * selection on the bits of d: a histogram of counts and weights over a
 * coarse key, then finer histograms inside the one bucket that holds the
 * cut, then a walk over ids among tokens with exactly that d. Only tokens
 * that can hold the cut are histogrammed (the top-p head, the first top_k;
 * docs/SAMPLING.md section 7 gives the bounds). The Gumbel race then
 * visits K in id order and skips tokens whose best possible score, d +
 * GMAX or d + the noise bound of their Philox word's slice, is already
 * beaten. Rows run in parallel on the pool; a row is computed the same way
 * on whichever thread it lands.
 */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "cpu_sample.h"
#include "sample_fast.h"
#include "sample_math.h"

enum {
    SEL_BUCKETS = DUET_SAMPLE_BUCKETS,
    /* Candidates of the bucket being narrowed are listed once and revisited
     * from the list; a bucket with more falls back to scanning the row. */
    SEL_LIST_CAP = 2048,
};

/* ---- per-row state ------------------------------------------------------ */

typedef struct row_ctx {
    duet_sample_view v;
    const duet_sample_fast_isa *isa;
    int32_t *list; /* [SEL_LIST_CAP] scratch */
} row_ctx;

/* d of token i, or NaN when it is not a candidate. */
static inline float cand_d(const duet_sample_view *v, int i)
{
    float d = v->l[i] * v->inv_t - v->m;
    return (d > -INFINITY && d >= v->log_min_p) ? d : NAN;
}

static inline uint32_t key_of(float d) { return duet_sm_bits(d) & 0x7fffffffu; }

/* The keys of level-1 bucket b: [*lo, *hi]. */
static void l1_range(uint32_t b, uint32_t *lo, uint32_t *hi)
{
    *lo = b == 0 ? 0 : (b + DUET_SAMPLE_L1_BASE) << DUET_SAMPLE_L1_SHIFT;
    *hi = b == SEL_BUCKETS - 1 ? 0x7fffffffu
                               : ((b + DUET_SAMPLE_L1_BASE + 1) << DUET_SAMPLE_L1_SHIFT) - 1;
}

/* A prefix of O stops before the first token whose predecessors number
 * max_count or weigh max_mass. */
typedef struct sel_limit {
    uint64_t max_count, max_mass;
} sel_limit;

static inline int sel_stop(const sel_limit *s, uint64_t count, uint64_t mass)
{
    return count >= s->max_count || mass >= s->max_mass;
}

/* The longest prefix of O's heavy candidates within the limit: its last
 * token (key, id) and its count and weight. */
typedef struct sel_cut {
    uint32_t key;
    int32_t id;
    uint64_t count, mass;
} sel_cut;

typedef struct sel_hist {
    uint32_t count[SEL_BUCKETS];
    uint64_t mass[SEL_BUCKETS];
} sel_hist;

/* Walk hist's buckets in key order from (count, mass) of the tokens
 * before them; the last non-empty bucket whose first token is inside the
 * limit holds the cut. Returns that bucket and sets *count / *mass to what
 * precedes it. */
static uint32_t sel_walk(const sel_hist *h, uint32_t n_buckets, const sel_limit *lim,
                         uint64_t *count, uint64_t *mass)
{
    uint32_t chosen = 0;
    uint64_t c = *count, s = *mass;
    for (uint32_t b = 0; b < n_buckets; b++) {
        if (!h->count[b])
            continue;
        if (sel_stop(lim, c, s))
            break;
        chosen = b;
        *count = c;
        *mass = s;
        c += h->count[b];
        s += h->mass[b];
    }
    return chosen;
}

/* The tokens to revisit while narrowing [lo, hi]: the list when it holds
 * them all, else every token of the row. */
typedef struct sel_scan {
    const int32_t *ids;
    uint32_t n;
} sel_scan;

static inline int scan_id(const sel_scan *sc, uint32_t j) { return sc->ids ? sc->ids[j] : (int)j; }

/* The cut of O under lim, given l1, the level-1 histogram of the
 * candidates with dexp(d) * 2^40 >= vmin: a prefix of O that the caller
 * knows holds the cut (docs/SAMPLING.md, "fast kernels"). */
static sel_cut select_cut(const row_ctx *c, const sel_hist *l1, float vmin, const sel_limit *lim,
                          sel_hist *h)
{
    const duet_sample_view *v = &c->v;
    uint64_t count = 0, mass = 0;
    uint32_t lo, hi;
    l1_range(sel_walk(l1, SEL_BUCKETS, lim, &count, &mass), &lo, &hi);
    uint32_t n_in = c->isa->collect(v, lo, hi, c->list, SEL_LIST_CAP);
    sel_scan sc = {c->list, n_in};
    if (n_in > SEL_LIST_CAP)
        sc = (sel_scan){NULL, (uint32_t)v->n};
    /* Narrow [lo, hi] by histograms of up to 11 key bits at a time. */
    while (lo < hi) {
        int width = 32 - __builtin_clz(hi - lo);
        int shift = width > 11 ? width - 11 : 0;
        uint32_t n_buckets = ((hi - lo) >> shift) + 1;
        memset(h->count, 0, sizeof h->count[0] * n_buckets);
        memset(h->mass, 0, sizeof h->mass[0] * n_buckets);
        for (uint32_t j = 0; j < sc.n; j++) {
            int i = scan_id(&sc, j);
            float d = cand_d(v, i);
            uint32_t u = key_of(d);
            if (isnan(d) || u < lo || u > hi)
                continue;
            float sv = duet_sm_dexp(d) * DUET_SM_TWO40;
            if (!(sv >= vmin))
                continue;
            uint64_t w = (uint64_t)(int64_t)sv;
            uint32_t b = (u - lo) >> shift;
            h->count[b]++;
            h->mass[b] += w;
        }
        uint32_t b = sel_walk(h, n_buckets, lim, &count, &mass);
        uint32_t nlo = lo + (b << shift);
        uint32_t nhi = nlo + ((1u << shift) - 1);
        lo = nlo;
        hi = nhi < hi ? nhi : hi;
    }
    /* Heavy tokens with exactly this key: ids ascending. */
    sel_cut cut = {.key = lo, .id = -1};
    for (uint32_t j = 0; j < sc.n; j++) {
        int i = scan_id(&sc, j);
        float d = cand_d(v, i);
        if (isnan(d) || key_of(d) != lo)
            continue;
        float sv = duet_sm_dexp(d) * DUET_SM_TWO40;
        if (!(sv >= vmin))
            continue;
        uint64_t w = (uint64_t)(int64_t)sv;
        if (sel_stop(lim, count, mass))
            break;
        cut.id = i;
        count++;
        mass += w;
    }
    cut.count = count;
    cut.mass = mass;
    return cut;
}

/* ---- the race ----------------------------------------------------------- */

/* Philox words of one block of 4 tokens, cached across a row's tokens. */
typedef struct race_rng {
    uint32_t key[2], ctr1, ctr2;
    uint32_t block;
    uint32_t r[4];
} race_rng;

static inline uint32_t race_word(race_rng *g, uint32_t i)
{
    if (i / 4u != g->block) {
        g->block = i / 4u;
        uint32_t ctr[4] = {g->block, g->ctr1, g->ctr2, 0};
        duet_sm_philox4x32(ctr, g->key, g->r);
    }
    return g->r[i % 4u];
}

/* gumbel() is non-decreasing in the word, so bound[w >> 24], the noise at
 * the top of w's 1/256 slice, bounds it: a token whose d + bound is below
 * the best score needs no logarithms. */
static float gumbel_bound[256];
static pthread_once_t gumbel_bound_once = PTHREAD_ONCE_INIT;

static void gumbel_bound_init(void)
{
    for (uint32_t k = 0; k < 256; k++)
        gumbel_bound[k] = duet_sm_gumbel((k << 24) | 0xffffffu);
}

/* Gumbel-max over the candidates with key < cut.key, or == cut.key and id
 * <= cut.id (all candidates when cut is NULL). The argmax of l has d == 0;
 * racing it first, when it is in K, makes the skip effective at once. */
static int32_t race(const row_ctx *c, const duet_sample_row *row, const sel_cut *cut,
                    int32_t argmax)
{
    const duet_sample_view *v = &c->v;
    race_rng g = {{row->seed_lo, row->seed_hi}, row->position, row->sample_index, UINT32_MAX,
                  {0}};
    int32_t best = -1;
    float best_score = -INFINITY;
    int first_in = !cut || cut->key > 0 || argmax <= cut->id;
    if (first_in) {
        best = argmax;
        best_score = 0.0f + duet_sm_gumbel(race_word(&g, (uint32_t)argmax));
    }
    uint32_t max_key = cut ? cut->key : 0x7fffffffu, bits;
    for (int base = c->isa->contenders(v, 0, best_score, max_key, &bits); base < v->n;
         base = c->isa->contenders(v, base + 8, best_score, max_key, &bits)) {
        while (bits) {
            int i = base + __builtin_ctz(bits);
            bits &= bits - 1;
            /* The mask used an older, lower best: check again. */
            float d = cand_d(v, i);
            if (d + DUET_SM_GMAX < best_score || (first_in && i == argmax) ||
                (cut && key_of(d) == cut->key && i > cut->id))
                continue;
            uint32_t word = race_word(&g, (uint32_t)i);
            if (d + gumbel_bound[word >> 24] < best_score)
                continue;
            float score = d + duet_sm_gumbel(word);
            if (score > best_score || (score == best_score && i < best)) {
                best = i;
                best_score = score;
            }
        }
    }
    return best;
}

/* ---- one row -------------------------------------------------------------- */

/* Apply the row's edits to l; returns the argmax of the result given a0,
 * the argmax before them: an untouched a0 still beats every untouched
 * token, so only the edited ones can take its place. */
static int32_t apply_edits(const duet_sample_fast_isa *isa, const cpu_sample *a,
                           const duet_sample_row *row, float *l, int32_t a0)
{
    int32_t begin = row->edit_begin, end = row->edit_end;
    if (begin < 0 || end > a->n_edits || begin > end)
        return a0;
    int a0_edited = 0;
    for (int32_t j = begin; j < end; j++) {
        const duet_sample_edit *e = &a->edits[j];
        if (e->token < 0 || e->token >= a->vocab)
            continue;
        a0_edited |= e->token == a0;
        if (e->flags & DUET_SAMPLE_EDIT_MASK) {
            l[e->token] = -INFINITY;
            continue;
        }
        int32_t count = e->count > 0 ? e->count : 0;
        float v = l[e->token] + e->bias;
        if (((e->flags & DUET_SAMPLE_EDIT_PROMPT) || count > 0) && row->repetition_penalty != 1.0f)
            v = v > 0.0f ? v * row->inv_repetition_penalty : v * row->repetition_penalty;
        v = v - (float)count * row->frequency_penalty;
        if (count > 0)
            v = v - row->presence_penalty;
        l[e->token] = v;
    }
    if (a0_edited)
        return isa->argmax(l, a->vocab);
    int32_t best = a0;
    for (int32_t j = begin; j < end; j++) {
        int32_t t = a->edits[j].token;
        if (t >= 0 && t < a->vocab && (l[t] > l[best] || (l[t] == l[best] && t < best)))
            best = t;
    }
    return best;
}

/* The head of a top-p row: tokens of weight above W = floor(2^16 (2^24 - q)
 * / vocab). The lighter ones weigh at most vocab * W <= S (1 - q/2^24) in
 * all, as S >= 2^40, so the first of them has S - that >= L tokens' weight
 * before it and is cut. Returned as the smallest scaled dexp of the head,
 * a float <= W + 1 (rounded down). */
static float head_vmin(uint32_t q, int vocab)
{
    uint64_t w = ((uint64_t)((1u << 24) - q) << 16) / (uint64_t)vocab + 1;
    float f = (float)w;
    if ((uint64_t)f > w)
        f = nextafterf(f, 0.0f);
    return f;
}

/* Counts of candidates at d >= LADDER[j]. Only d >= -20 can win (a lower
 * d has d + GMAX < GMIN, below the d = 0 token's score); no heavy token
 * has d < -27.75 (dexp(-27.75) < 2^-40). */
static const float LADDER[] = {-2.0f, -4.0f, -6.0f, -9.0f, -12.0f, -16.0f, -20.0f, -27.75f};
enum { LADDER_N = sizeof LADDER / sizeof LADDER[0], LADDER_WIN = 6, LADDER_HEAVY = 7 };

/* A histogram threshold (scaled dexp) whose tokens include the first k of
 * O: dexp(t) * 2^40 for the highest rung t with at least k candidates at
 * d >= t (dexp is monotone), else 1 (every heavy token). */
static float ladder_vmin(const uint64_t *counts, uint64_t k)
{
    for (int j = 0; j < LADDER_N; j++)
        if (counts[j] >= k)
            return duet_sm_dexp(LADDER[j]) * DUET_SM_TWO40;
    return 1.0f;
}

static int32_t sample_row_token(const duet_sample_fast_isa *isa, const duet_sample_row *row,
                                const float *l, int vocab, int32_t argmax, sel_hist *h,
                                int32_t *list)
{
    row_ctx c = {{l, vocab, row->inv_temperature, l[argmax] * row->inv_temperature,
                  row->log_min_p},
                 isa, list};
    /* No candidate at all (the argmax is one whenever any token is). */
    if (isnan(cand_d(&c.v, argmax)))
        return argmax;
    uint64_t top_k = row->top_k > 0 ? (uint64_t)row->top_k : UINT64_MAX;
    int top_p = row->top_p_q24 < (1u << 24);
    if (!top_p && top_k == UINT64_MAX)
        return race(&c, row, NULL, argmax);

    sel_hist l1;
    uint64_t n_hist = 0, n_heavy = 0, total = 0, counts[LADDER_N];
    memset(&l1, 0, sizeof l1);
    if (top_k != UINT64_MAX)
        isa->count_at(&c.v, LADDER, LADDER_N, counts);
    if (!top_p) {
        if (top_k >= counts[LADDER_WIN]) /* keeps every possible winner */
            return race(&c, row, NULL, argmax);
        float vmin = ladder_vmin(counts, top_k);
        isa->hist_l1(&c.v, vmin, l1.count, l1.mass, &n_hist, &n_heavy, &total);
        sel_limit lim = {top_k, UINT64_MAX};
        sel_cut ck = select_cut(&c, &l1, vmin, &lim, h);
        return race(&c, row, &ck, argmax);
    }
    /* The top-p cut lies among the tokens of weight above W (the head);
     * with top_k, the histogram must also hold the first top_k tokens. */
    int k_cuts = top_k != UINT64_MAX && top_k < counts[LADDER_HEAVY];
    float vmin = head_vmin(row->top_p_q24, vocab);
    if (k_cuts) {
        float vk = ladder_vmin(counts, top_k);
        vmin = vk < vmin ? vk : vmin;
    }
    isa->hist_l1(&c.v, vmin, l1.count, l1.mass, &n_hist, &n_heavy, &total);
    uint64_t s = total;
    if (k_cuts && top_k < n_heavy) {
        sel_limit lim = {top_k, UINT64_MAX};
        s = select_cut(&c, &l1, vmin, &lim, h).mass;
    }
    sel_limit lim = {top_k, duet_sm_top_p_limit(s, row->top_p_q24)};
    sel_cut cp = select_cut(&c, &l1, vmin, &lim, h);
    return race(&c, row, &cp, argmax);
}

/* Step 1: raw logprobs, rank and top-N. */
/* Step 1: raw logprobs, rank and top-N. a0: the argmax of the cleaned x. */
static void row_logprobs(const duet_sample_fast_isa *isa, const float *x, int vocab, int32_t a0,
                         int n_logprobs, duet_sample_result *res)
{
    float m0 = isnan(x[a0]) ? -INFINITY : x[a0];
    uint64_t s0 = isa->raw_mass(x, vocab, m0);
    float lz = duet_sm_dlog((float)s0 * DUET_SM_TWO_M40);

    float xt = isnan(x[res->token]) ? -INFINITY : x[res->token];
    /* NaN compares false, as -inf does unless xt is -inf itself. */
    res->rank = xt == -INFINITY ? vocab : isa->count_ge(x, vocab, xt);
    res->logprob = s0 ? (xt - m0) - lz : -INFINITY;

    int n_top = n_logprobs < DUET_SAMPLE_MAX_LOGPROBS ? n_logprobs : DUET_SAMPLE_MAX_LOGPROBS;
    if (n_top > vocab)
        n_top = vocab;
    /* Insertion into a sorted list of n_top: (value desc, id asc). Ids come
     * ascending, so a newcomer must be strictly greater to move ahead; once
     * the list is full only values above its last one are visited. */
    int n = 0;
    float *tv = res->top_logprobs; /* holds raw values until the end */
    for (int i = 0; i < vocab && n_top > 0; i++) {
        if (n == n_top) {
            i = isa->next_above(x, i, vocab, tv[n - 1]);
            if (i >= vocab)
                break;
        }
        float v = isnan(x[i]) ? -INFINITY : x[i];
        int j = n < n_top ? n++ : n - 1;
        while (j > 0 && v > tv[j - 1]) {
            tv[j] = tv[j - 1];
            res->top_ids[j] = res->top_ids[j - 1];
            j--;
        }
        tv[j] = v;
        res->top_ids[j] = i;
    }
    res->n_top = n_top;
    for (int j = 0; j < n_top; j++)
        tv[j] = s0 ? (tv[j] - m0) - lz : -INFINITY;
}

static void fast_row(const duet_sample_fast_isa *isa, const cpu_sample *a, int r, sel_hist *h,
                     int32_t *list)
{
    const duet_sample_row *row = &a->rows[r];
    const float *x = a->logits + (size_t)r * (size_t)a->vocab;
    float *l = a->work + (size_t)r * (size_t)a->vocab;
    duet_sample_result *res = &a->results[r];

    int32_t a0 = isa->copy_clean(x, l, a->vocab);
    int32_t argmax = apply_edits(isa, a, row, l, a0);
    int32_t token;
    if (row->forced_token >= 0 && row->forced_token < a->vocab)
        token = row->forced_token;
    else if (row->inv_temperature == 0.0f)
        token = argmax;
    else
        token = sample_row_token(isa, row, l, a->vocab, argmax, h, list);

    memset(res, 0, sizeof *res);
    res->token = token;
    if (row->n_logprobs >= 0)
        row_logprobs(isa, x, a->vocab, a0, row->n_logprobs, res);
}

/* ---- portable building blocks ------------------------------------------- */

static int32_t scalar_copy_clean(const float *x, float *l, int n)
{
    for (int i = 0; i < n; i++)
        l[i] = isnan(x[i]) ? -INFINITY : x[i];
    return duet_sm_argmax(l, n);
}

static int32_t scalar_argmax(const float *l, int n) { return duet_sm_argmax(l, n); }

static void scalar_hist_l1(const duet_sample_view *v, float vmin, uint32_t *count,
                           uint64_t *mass, uint64_t *n_hist, uint64_t *n_heavy, uint64_t *total)
{
    uint64_t nc = 0, nh = 0, s = 0;
    for (int i = 0; i < v->n; i++) {
        float d = cand_d(v, i);
        if (isnan(d))
            continue;
        float sv = duet_sm_dexp(d) * DUET_SM_TWO40;
        uint64_t w = (uint64_t)(int64_t)sv;
        nh += w != 0;
        s += w;
        if (!(sv >= vmin))
            continue;
        uint32_t b = duet_sample_l1_bucket(key_of(d));
        count[b]++;
        mass[b] += w;
        nc++;
    }
    *n_hist = nc;
    *n_heavy = nh;
    *total = s;
}

static int scalar_contenders(const duet_sample_view *v, int start, float best, uint32_t max_key,
                             uint32_t *bits)
{
    for (int base = start; base < v->n; base += 8) {
        uint32_t m = 0;
        for (int j = 0; j < 8 && base + j < v->n; j++) {
            float d = cand_d(v, base + j);
            if (!isnan(d) && !(d + DUET_SM_GMAX < best) && key_of(d) <= max_key)
                m |= 1u << j;
        }
        if (m) {
            *bits = m;
            return base;
        }
    }
    *bits = 0;
    return v->n;
}

static void scalar_count_at(const duet_sample_view *v, const float *t, int nt, uint64_t *counts)
{
    for (int j = 0; j < nt; j++)
        counts[j] = 0;
    for (int i = 0; i < v->n; i++) {
        float d = cand_d(v, i);
        for (int j = 0; j < nt; j++)
            counts[j] += d >= t[j]; /* false for NaN: not a candidate */
    }
}

static uint32_t scalar_collect(const duet_sample_view *v, uint32_t lo, uint32_t hi,
                               int32_t *ids, uint32_t cap)
{
    uint32_t n = 0;
    for (int i = 0; i < v->n; i++) {
        float d = cand_d(v, i);
        uint32_t u = key_of(d);
        if (isnan(d) || u < lo || u > hi)
            continue;
        if (n < cap)
            ids[n] = i;
        n++;
    }
    return n;
}

static uint64_t scalar_raw_mass(const float *x, int n, float m0)
{
    uint64_t s = 0;
    for (int i = 0; i < n; i++)
        s += duet_sm_weight(x[i] - m0); /* NaN - m0 is NaN: weight 0 */
    return s;
}

static int scalar_count_ge(const float *x, int n, float t)
{
    int c = 0;
    for (int i = 0; i < n; i++)
        c += x[i] >= t;
    return c;
}

static int scalar_next_above(const float *x, int start, int n, float t)
{
    for (int i = start; i < n; i++)
        if (x[i] > t)
            return i;
    return n;
}

const duet_sample_fast_isa duet_sample_scalar_isa = {
    .copy_clean = scalar_copy_clean,
    .argmax = scalar_argmax,
    .hist_l1 = scalar_hist_l1,
    .count_at = scalar_count_at,
    .collect = scalar_collect,
    .contenders = scalar_contenders,
    .raw_mass = scalar_raw_mass,
    .count_ge = scalar_count_ge,
    .next_above = scalar_next_above,
};

/* ---- entry ------------------------------------------------------------------ */

typedef struct fast_job {
    const cpu_sample *a;
    const duet_sample_fast_isa *isa;
} fast_job;

static void fast_worker(void *arg, int ith, int nth)
{
    const fast_job *j = arg;
    int64_t lo, hi;
    duet_split_rows(j->a->n_rows, ith, nth, 1, &lo, &hi);
    sel_hist h; /* 24 KiB of stack per thread, and 8 KiB of list */
    int32_t list[SEL_LIST_CAP];
    for (int64_t r = lo; r < hi; r++)
        fast_row(j->isa, j->a, (int)r, &h, list);
}

void duet_cpu_sample_fast_isa(duet_threadpool *pool, const duet_sample_fast_isa *isa,
                              const cpu_sample *a)
{
    pthread_once(&gumbel_bound_once, gumbel_bound_init);
    fast_job j = {a, isa};
    if (!pool || a->n_rows == 1)
        fast_worker(&j, 0, 1);
    else
        duet_threadpool_run(pool, fast_worker, &j);
}

#ifdef __x86_64__
static duet_sample_fast_isa avx512_isa;
static pthread_once_t avx512_isa_once = PTHREAD_ONCE_INIT;

static void avx512_isa_init(void)
{
    avx512_isa = duet_sample_avx2_isa;
    duet_sample_avx512_patch(&avx512_isa);
}
#endif

const duet_sample_fast_isa *duet_sample_best_isa(void)
{
#ifdef __x86_64__
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) {
            pthread_once(&avx512_isa_once, avx512_isa_init);
            return &avx512_isa;
        }
        return &duet_sample_avx2_isa;
    }
#endif
    return &duet_sample_scalar_isa;
}

void duet_cpu_sample_fast(duet_threadpool *pool, const cpu_sample *a)
{
    duet_cpu_sample_fast_isa(pool, duet_sample_best_isa(), a);
}
