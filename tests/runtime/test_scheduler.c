/* The continuous-batching scheduler, driven by a fake engine over a real
 * KV manager.
 *
 * The fake engine plays the device: it writes each scheduled token into a
 * shadow of the block pool (through the request's block table) and, when
 * an entry samples, checks that the whole context reads back from the pool
 * in order before appending the "sampled" token seq_no * 1000 + length.
 * So expected outputs come from the request alone, and a wrong block
 * table, a lost prefix hit or a skipped chunk shows up as a wrong read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "scheduler.h"

#define MAX_REQS 512

typedef struct sim {
    duet_kv_cache *kv;
    duet_scheduler *s;
    duet_scheduler_options o;
    int bs, num_blocks, prefix;
    int32_t *pool;                 /* [num_blocks * bs] shadow of the device KV */
    duet_request *reqs[MAX_REQS];  /* every request added, by seq_no */
    int n_reqs;
    int steps, max_step_tokens;
    duet_sched_entry last[MAX_REQS]; /* copy of the last step's entries */
    int n_last, last_preempted;
} sim;

static void assert_kv_ok(const duet_kv_cache *kv)
{
    const char *msg = duet_kv_cache_check(kv);
    if (msg)
        fail_msg("KV invariant broken: %s", msg);
}

static sim *sim_new(duet_scheduler_options o, int num_blocks, int bs, int prefix)
{
    sim *m = calloc(1, sizeof *m);
    assert_non_null(m);
    m->o = o;
    m->bs = bs;
    m->num_blocks = num_blocks;
    m->prefix = prefix;
    duet_kv_cache_options ko = {num_blocks, bs, prefix};
    assert_int_equal(duet_kv_cache_create(&ko, &m->kv), DUET_OK);
    assert_int_equal(duet_scheduler_create(&o, m->kv, &m->s), DUET_OK);
    m->pool = malloc((size_t)num_blocks * bs * sizeof *m->pool);
    assert_non_null(m->pool);
    for (int i = 0; i < num_blocks * bs; i++)
        m->pool[i] = -1; /* poison: never a token */
    return m;
}

static void sim_free(sim *m)
{
    for (int i = 0; i < m->n_reqs; i++) {
        duet_kv_cache_free_seq(m->kv, &m->reqs[i]->kv); /* a test may stop mid-run */
        duet_kv_seq_destroy(&m->reqs[i]->kv);
        free(m->reqs[i]->tokens);
        free(m->reqs[i]);
    }
    duet_scheduler_free(m->s);
    duet_kv_cache_free(m->kv);
    free(m->pool);
    free(m);
}

static int32_t prompt_token(uint64_t seq_no, int i) { return (int32_t)(seq_no * 7919u + (unsigned)i * 31u) % 40000; }
static int32_t output_token(uint64_t seq_no, int len) { return (int32_t)(seq_no * 1000u + (unsigned)len); }

/* A request whose prompt is `shared` tokens of a common prefix, then its own. */
static duet_request *sim_add_full(sim *m, uint64_t seq_no, int n_prompt, int max_tokens,
                                  int priority, int shared)
{
    assert_true(m->n_reqs < MAX_REQS);
    duet_request *r = calloc(1, sizeof *r);
    assert_non_null(r);
    r->seq_no = seq_no;
    r->priority = priority;
    r->cap_tokens = n_prompt + max_tokens;
    r->tokens = malloc((size_t)r->cap_tokens * sizeof *r->tokens);
    assert_non_null(r->tokens);
    for (int i = 0; i < n_prompt; i++)
        r->tokens[i] = i < shared ? 50000 + i : prompt_token(r->seq_no, i);
    r->n_prompt = r->n_tokens = n_prompt;
    r->max_tokens = max_tokens;
    duet_kv_seq_init(&r->kv);
    r->state = DUET_REQ_FINISHED; /* add must set it */
    r->n_computed = 77;           /* add must reset it */
    assert_int_equal(duet_scheduler_add(m->s, r), DUET_OK);
    assert_int_equal(r->state, DUET_REQ_WAITING);
    assert_int_equal(r->n_computed, 0);
    m->reqs[m->n_reqs++] = r;
    return r;
}

static duet_request *sim_add_shared(sim *m, int n_prompt, int max_tokens, int priority, int shared)
{
    return sim_add_full(m, (uint64_t)m->n_reqs, n_prompt, max_tokens, priority, shared);
}

static duet_request *sim_add(sim *m, int n_prompt, int max_tokens, int priority)
{
    return sim_add_shared(m, n_prompt, max_tokens, priority, 0);
}

/* Invariants that hold between steps, checked against the test's own view
 * of every request. */
static void sim_check_queues(sim *m)
{
    assert_kv_ok(m->kv);
    duet_scheduler_stats st;
    memset(&st, 0xff, sizeof st);
    duet_scheduler_get_stats(m->s, &st);
    int running = 0, waiting = 0, held = 0;
    uint64_t preempts = 0;
    for (int i = 0; i < m->n_reqs; i++) {
        duet_request *r = m->reqs[i];
        preempts += (uint64_t)r->n_preemptions;
        if (r->state == DUET_REQ_RUNNING) {
            running++;
            held += r->kv.n_blocks;
            assert_true(r->kv.n_blocks >= duet_kv_cache_blocks_for(m->kv, r->n_computed));
            assert_true(r->n_computed <= r->n_tokens);
        } else {
            assert_int_equal(r->kv.n_blocks, 0);
            if (r->state == DUET_REQ_WAITING) {
                waiting++;
                assert_int_equal(r->n_computed, 0);
            }
        }
    }
    assert_int_equal(st.n_running, running);
    assert_int_equal(st.n_waiting, waiting);
    assert_true(running <= m->o.max_num_seqs);
    assert_true(st.n_preemptions == preempts);
    assert_int_equal(duet_scheduler_has_work(m->s), running + waiting > 0);
    duet_kv_stats ks;
    duet_kv_cache_stats(m->kv, &ks);
    if (!m->prefix)
        assert_int_equal(ks.used_blocks, held); /* nothing shared */
    else
        assert_true(ks.used_blocks <= held);
}

/* The device: store the entry's tokens in the shadow pool. */
static void sim_compute(sim *m, const duet_sched_entry *e)
{
    const duet_request *r = e->req;
    for (int p = e->start; p < e->start + e->n_tokens; p++) {
        assert_true(p / m->bs < r->kv.n_blocks);
        int32_t b = r->kv.blocks[p / m->bs];
        assert_true(b > 0 && b < m->num_blocks);
        int32_t *slot = &m->pool[b * m->bs + p % m->bs];
        /* A shared block is never written with different content. */
        if (duet_kv_cache_ref_count(m->kv, b) > 1)
            assert_int_equal(*slot, r->tokens[p]);
        *slot = r->tokens[p];
    }
}

/* Attention reads the whole context back from the pool. */
static void sim_check_context(const sim *m, const duet_request *r)
{
    for (int p = 0; p < r->n_tokens; p++) {
        int32_t b = r->kv.blocks[p / m->bs];
        if (m->pool[b * m->bs + p % m->bs] != r->tokens[p])
            fail_msg("request %d position %d reads %d, expected %d", (int)r->seq_no, p,
                     m->pool[b * m->bs + p % m->bs], r->tokens[p]);
    }
}

/* One engine step: schedule, check the plan, run it, update, sample. */
static void sim_step(sim *m)
{
    duet_sched_output out;
    memset(&out, 0xff, sizeof out);
    assert_int_equal(duet_scheduler_schedule(m->s, &out), DUET_OK);
    m->steps++;
    assert_true(out.n_entries >= 0 && out.n_entries <= m->o.max_num_seqs);
    assert_true(out.n_preempted >= 0);
    int sum = 0;
    for (int i = 0; i < out.n_entries; i++) {
        const duet_sched_entry *e = &out.entries[i];
        const duet_request *r = e->req;
        assert_int_equal(r->state, DUET_REQ_RUNNING);
        for (int j = 0; j < i; j++)
            assert_ptr_not_equal(out.entries[j].req, r);
        assert_int_equal(e->start, r->n_computed);
        assert_true(e->n_tokens >= 1);
        assert_true(e->start + e->n_tokens <= r->n_tokens);
        assert_int_equal(e->sample, e->start + e->n_tokens == r->n_tokens);
        assert_true(r->kv.n_blocks >= duet_kv_cache_blocks_for(m->kv, e->start + e->n_tokens));
        if (!m->o.enable_chunked_prefill)
            assert_true(e->sample); /* whole prompts only */
        else if (m->o.long_prefill_token_threshold > 0)
            assert_true(e->n_tokens <= m->o.long_prefill_token_threshold);
        sum += e->n_tokens;
    }
    assert_int_equal(out.n_tokens, sum);
    assert_true(sum <= m->o.max_num_batched_tokens);
    if (sum > m->max_step_tokens)
        m->max_step_tokens = sum;
    memcpy(m->last, out.entries, (size_t)out.n_entries * sizeof *out.entries);
    m->n_last = out.n_entries;
    m->last_preempted = out.n_preempted;
    assert_kv_ok(m->kv);

    for (int i = 0; i < out.n_entries; i++)
        sim_compute(m, &out.entries[i]);
    assert_int_equal(duet_scheduler_update(m->s, &out), DUET_OK);
    assert_kv_ok(m->kv);
    for (int i = 0; i < out.n_entries; i++) {
        const duet_sched_entry *e = &out.entries[i];
        duet_request *r = e->req;
        assert_int_equal(r->n_computed, e->start + e->n_tokens);
        if (!e->sample)
            continue;
        sim_check_context(m, r);
        assert_true(r->n_tokens < r->cap_tokens);
        r->tokens[r->n_tokens] = output_token(r->seq_no, r->n_tokens);
        r->n_tokens++;
        if (r->n_tokens - r->n_prompt == r->max_tokens)
            duet_scheduler_finish(m->s, r, DUET_FINISH_LENGTH);
    }
    sim_check_queues(m);
}

static void sim_run(sim *m, int max_steps)
{
    while (duet_scheduler_has_work(m->s)) {
        assert_true(m->steps < max_steps); /* no livelock */
        sim_step(m);
    }
}

/* Every request that was not aborted produced exactly its outputs, and the
 * pool is empty. */
static void sim_check_done(const sim *m)
{
    for (int i = 0; i < m->n_reqs; i++) {
        const duet_request *r = m->reqs[i];
        assert_int_equal(r->state, DUET_REQ_FINISHED);
        if (r->finish == DUET_FINISH_ABORT)
            continue;
        assert_int_equal(r->finish, DUET_FINISH_LENGTH);
        assert_int_equal(r->n_tokens, r->n_prompt + r->max_tokens);
        for (int k = 0; k < r->max_tokens; k++)
            assert_int_equal(r->tokens[r->n_prompt + k], output_token(r->seq_no, r->n_prompt + k));
    }
    duet_kv_stats ks;
    duet_kv_cache_stats(m->kv, &ks);
    assert_int_equal(ks.used_blocks, 0);
    assert_int_equal(ks.free_blocks, ks.num_blocks);
}

static duet_scheduler_options opts(int seqs, int budget, int chunked, int threshold,
                                   duet_sched_policy policy)
{
    duet_scheduler_options o = {seqs, budget, chunked, threshold, policy, 0};
    return o;
}

static int entry_of(const sim *m, const duet_request *r)
{
    for (int i = 0; i < m->n_last; i++)
        if (m->last[i].req == r)
            return i;
    return -1;
}

/* ---- tests ---- */

static void test_create_bad_args(void **state)
{
    (void)state;
    duet_kv_cache_options ko = {8, 16, 0};
    duet_kv_cache *kv = NULL;
    assert_int_equal(duet_kv_cache_create(&ko, &kv), DUET_OK);
    duet_scheduler *s = (duet_scheduler *)&ko;
    duet_scheduler_options o = opts(0, 16, 1, 0, DUET_SCHED_FCFS);
    assert_int_equal(duet_scheduler_create(&o, kv, &s), DUET_ERR_INVALID_ARG);
    assert_null(s);
    o = opts(4, 0, 1, 0, DUET_SCHED_FCFS);
    assert_int_equal(duet_scheduler_create(&o, kv, &s), DUET_ERR_INVALID_ARG);
    o = opts(4, 16, 1, -1, DUET_SCHED_FCFS);
    assert_int_equal(duet_scheduler_create(&o, kv, &s), DUET_ERR_INVALID_ARG);
    o = opts(4, 16, 1, 0, (duet_sched_policy)7);
    assert_int_equal(duet_scheduler_create(&o, kv, &s), DUET_ERR_INVALID_ARG);
    duet_scheduler_free(NULL);
    /* An empty scheduler has nothing to do. */
    o = opts(4, 16, 1, 0, DUET_SCHED_FCFS);
    assert_int_equal(duet_scheduler_create(&o, kv, &s), DUET_OK);
    assert_int_equal(duet_scheduler_has_work(s), 0);
    duet_sched_output out;
    assert_int_equal(duet_scheduler_schedule(s, &out), DUET_OK);
    assert_int_equal(out.n_entries, 0);
    assert_int_equal(out.n_tokens, 0);
    duet_scheduler_free(s);
    duet_kv_cache_free(kv);
}

/* Many requests of mixed sizes through a small budget. */
static void test_budget_and_completion(void **state)
{
    (void)state;
    sim *m = sim_new(opts(4, 64, 1, 0, DUET_SCHED_FCFS), 256, 16, 0);
    for (int i = 0; i < 20; i++)
        sim_add(m, 5 + (i * 37) % 300, 1 + (i * 7) % 20, 0);
    sim_run(m, 10000);
    sim_check_done(m);
    assert_int_equal(m->max_step_tokens, 64); /* the budget was actually used up */
    sim_free(m);
}

/* A 1,000-token prompt goes in chunks of 256 while another request keeps
 * decoding, ahead of it, in the same steps. */
static void test_chunked_prefill_splits(void **state)
{
    (void)state;
    sim *m = sim_new(opts(8, 257, 1, 0, DUET_SCHED_FCFS), 128, 16, 0);
    duet_request *a = sim_add(m, 8, 40, 0);
    sim_step(m);
    duet_request *b = sim_add(m, 1000, 2, 0);
    const int want[] = {256, 256, 256, 232};
    for (int c = 0; c < 4; c++) {
        sim_step(m);
        assert_int_equal(m->n_last, 2);
        assert_ptr_equal(m->last[0].req, a); /* decode first */
        assert_int_equal(m->last[0].n_tokens, 1);
        assert_ptr_equal(m->last[1].req, b);
        assert_int_equal(m->last[1].start, 256 * c);
        assert_int_equal(m->last[1].n_tokens, want[c]);
        assert_int_equal(m->last[1].sample, c == 3);
        assert_int_equal(b->n_tokens, c == 3 ? 1001 : 1000);
    }
    sim_run(m, 1000);
    sim_check_done(m);
    sim_free(m);
}

/* long_prefill_token_threshold caps one request per step; the rest of the
 * budget admits the next request in the same step. */
static void test_long_prefill_threshold(void **state)
{
    (void)state;
    sim *m = sim_new(opts(8, 1000, 1, 100, DUET_SCHED_FCFS), 128, 16, 0);
    duet_request *a = sim_add(m, 350, 3, 0);
    duet_request *b = sim_add(m, 50, 3, 0);
    sim_step(m);
    assert_int_equal(m->n_last, 2);
    assert_ptr_equal(m->last[0].req, a);
    assert_int_equal(m->last[0].n_tokens, 100);
    assert_ptr_equal(m->last[1].req, b);
    assert_int_equal(m->last[1].n_tokens, 50);
    sim_step(m);
    sim_step(m);
    sim_step(m);
    assert_int_equal(m->last[0].req == a ? m->last[0].n_tokens : -1, 50);
    assert_int_equal(m->last[0].sample, 1);
    sim_run(m, 1000);
    sim_check_done(m);
    sim_free(m);
}

/* Without chunked prefill a prompt longer than the budget left waits,
 * and blocks the requests behind it (FCFS). */
static void test_no_chunked_prefill_waits(void **state)
{
    (void)state;
    sim *m = sim_new(opts(8, 100, 0, 0, DUET_SCHED_FCFS), 128, 16, 0);
    duet_request *a = sim_add(m, 50, 5, 0);
    duet_request *b = sim_add(m, 80, 5, 0);
    duet_request *c = sim_add(m, 30, 5, 0);
    sim_step(m);
    assert_int_equal(m->n_last, 1);
    assert_ptr_equal(m->last[0].req, a);
    assert_int_equal(b->state, DUET_REQ_WAITING);
    assert_int_equal(c->state, DUET_REQ_WAITING); /* would fit, but b is ahead */
    sim_step(m);
    assert_int_equal(m->n_last, 2);
    assert_ptr_equal(m->last[0].req, a);
    assert_ptr_equal(m->last[1].req, b);
    assert_int_equal(m->last[1].start, 0);
    assert_int_equal(m->last[1].n_tokens, 80);
    assert_int_equal(c->state, DUET_REQ_WAITING); /* 100 - 1 - 80 < 30 */
    sim_step(m);
    assert_int_equal(entry_of(m, c), 2);
    assert_int_equal(m->last[2].n_tokens, 30);
    sim_run(m, 1000);
    sim_check_done(m);
    sim_free(m);
}

/* Running requests come first; decodes can use up the whole budget. */
static void test_decode_before_prefill(void **state)
{
    (void)state;
    sim *m = sim_new(opts(8, 4, 1, 0, DUET_SCHED_FCFS), 128, 16, 0);
    duet_request *r[4];
    for (int i = 0; i < 4; i++)
        r[i] = sim_add(m, 1, 10, 0);
    sim_step(m);
    assert_int_equal(m->n_last, 4);
    duet_request *late = sim_add(m, 3, 2, 0);
    for (int s = 0; s < 5; s++) {
        sim_step(m);
        assert_int_equal(m->n_last, 4);
        for (int i = 0; i < 4; i++)
            assert_ptr_equal(m->last[i].req, r[i]);
        assert_int_equal(late->state, DUET_REQ_WAITING);
    }
    /* With room in the budget, the new prompt follows the decodes. */
    sim_free(m);
    m = sim_new(opts(8, 6, 1, 0, DUET_SCHED_FCFS), 128, 16, 0);
    for (int i = 0; i < 4; i++)
        r[i] = sim_add(m, 1, 10, 0);
    sim_step(m);
    late = sim_add(m, 3, 2, 0);
    sim_step(m);
    assert_int_equal(m->n_last, 5);
    for (int i = 0; i < 4; i++)
        assert_ptr_equal(m->last[i].req, r[i]);
    assert_ptr_equal(m->last[4].req, late);
    assert_int_equal(m->last[4].n_tokens, 2); /* chunked: what is left of 6 */
    sim_run(m, 1000);
    sim_check_done(m);
    sim_free(m);
}

/* max_num_seqs bounds the running set even with budget to spare. */
static void test_max_num_seqs(void **state)
{
    (void)state;
    sim *m = sim_new(opts(3, 1000, 1, 0, DUET_SCHED_FCFS), 128, 16, 0);
    for (int i = 0; i < 10; i++)
        sim_add(m, 10, 4, 0);
    sim_step(m);
    assert_int_equal(m->n_last, 3);
    sim_run(m, 1000);
    sim_check_done(m);
    sim_free(m);
}

/* 8 requests that cannot all fit: preemption lets every one finish with
 * the same outputs as with a pool that holds them all. */
static void run_pool(int num_blocks, int prefix, duet_sched_policy policy, int32_t *outputs,
                     uint64_t *preemptions)
{
    sim *m = sim_new(opts(8, 128, 1, 0, policy), num_blocks, 4, prefix);
    for (int i = 0; i < 8; i++)
        sim_add(m, 10 + 3 * i, 20 + i, i % 3);
    sim_run(m, 20000);
    sim_check_done(m);
    duet_scheduler_stats st;
    duet_scheduler_get_stats(m->s, &st);
    *preemptions = st.n_preemptions;
    int k = 0;
    for (int i = 0; i < m->n_reqs; i++) {
        const duet_request *r = m->reqs[i];
        memcpy(&outputs[k], r->tokens, (size_t)r->n_tokens * sizeof *outputs);
        k += r->n_tokens;
    }
    sim_free(m);
}

static void test_preemption_small_pool(void **state)
{
    (void)state;
    enum { TOTAL = 8 * 10 + 3 * 28 + 8 * 20 + 28 };
    int32_t big[TOTAL], small[TOTAL];
    uint64_t n_big = 0, n_small = 0;
    run_pool(256, 0, DUET_SCHED_FCFS, big, &n_big);
    assert_true(n_big == 0);
    /* The longest context is 31 + 27 = 58 tokens = 15 blocks of 4. */
    const duet_sched_policy pol[2] = {DUET_SCHED_FCFS, DUET_SCHED_PRIORITY};
    for (int p = 0; p < 2; p++) {
        for (int prefix = 0; prefix < 2; prefix++) {
            memset(small, 0, sizeof small);
            run_pool(1 + 16, prefix, pol[p], small, &n_small);
            assert_true(n_small > 0);
            assert_memory_equal(big, small, sizeof big);
        }
    }
}

/* FCFS preempts the newest running request; priority preempts the worst
 * priority even when it is not the newest. Blocks of 16, 3 usable: a
 * (prompt 15) and b (prompt 1) fill two, c (prompt 1) the third; then a's
 * 17th token needs a fourth. */
static int preempt_scene(duet_sched_policy policy, int c_priority)
{
    sim *m = sim_new(opts(8, 64, 1, 0, policy), 1 + 3, 16, 0);
    duet_request *a = sim_add(m, 15, 5, 0);
    duet_request *b = sim_add(m, 1, 5, 9);
    sim_step(m);
    duet_request *c = sim_add(m, 1, 5, c_priority);
    sim_step(m);
    assert_int_equal(m->n_last, 3);
    assert_ptr_equal(m->last[2].req, c);
    assert_int_equal(m->last_preempted, 0);
    sim_step(m);
    assert_int_equal(m->last_preempted, 1);
    duet_request *victim = b->state == DUET_REQ_WAITING ? b : c;
    duet_request *spared = victim == b ? c : b;
    assert_int_equal(victim->n_preemptions, 1);
    assert_int_equal(spared->state, DUET_REQ_RUNNING);
    assert_int_equal(m->n_last, 2);
    assert_ptr_equal(m->last[0].req, a);
    assert_int_equal(m->last[0].start, 16);
    assert_ptr_equal(m->last[1].req, spared);
    sim_run(m, 1000);
    sim_check_done(m);
    int victim_seq = (int)victim->seq_no;
    sim_free(m);
    return victim_seq;
}

static void test_preemption_victim(void **state)
{
    (void)state;
    assert_int_equal(preempt_scene(DUET_SCHED_FCFS, 3), 2);     /* c, the newest */
    assert_int_equal(preempt_scene(DUET_SCHED_PRIORITY, 3), 1); /* b, priority 9 */
    assert_int_equal(preempt_scene(DUET_SCHED_PRIORITY, 9), 2); /* tie: the newest */
}

/* A preempted request goes back to the front of the FCFS queue, even
 * ahead of a request with a smaller seq_no that arrived later. Blocks of
 * 4, 4 usable: a (1 block) and c (3 blocks) fill the pool; a's 5th token
 * preempts c. */
static void test_preempted_goes_front(void **state)
{
    (void)state;
    sim *m = sim_new(opts(8, 64, 1, 0, DUET_SCHED_FCFS), 1 + 4, 4, 0);
    sim_add_full(m, 0, 4, 8, 0, 0);
    duet_request *c = sim_add_full(m, 20, 12, 4, 0, 0);
    sim_step(m);
    duet_request *d = sim_add_full(m, 1, 1, 2, 0, 0); /* later, numbered before c */
    sim_step(m);
    assert_int_equal(m->last_preempted, 1);
    assert_int_equal(c->state, DUET_REQ_WAITING);
    sim_step(m); /* 2 blocks free: enough for d, not for c at the front */
    assert_int_equal(m->n_last, 1);
    assert_int_equal(d->state, DUET_REQ_WAITING);
    sim_run(m, 1000);
    sim_check_done(m);
    sim_free(m);
}

/* Nothing is admitted in a step that preempted, even when the request at
 * the head of the queue would fit: with priorities, the victim (c) goes
 * behind d, which the freed blocks could hold. */
static void test_no_admission_after_preemption(void **state)
{
    (void)state;
    sim *m = sim_new(opts(8, 64, 1, 0, DUET_SCHED_PRIORITY), 1 + 4, 4, 0);
    duet_request *a = sim_add(m, 4, 8, 0);
    duet_request *c = sim_add(m, 12, 4, 5);
    sim_step(m);
    duet_request *d = sim_add(m, 1, 2, 1);
    sim_step(m);
    assert_int_equal(m->last_preempted, 1);
    assert_int_equal(c->state, DUET_REQ_WAITING);
    assert_int_equal(m->n_last, 1);
    assert_ptr_equal(m->last[0].req, a);
    assert_int_equal(d->state, DUET_REQ_WAITING);
    sim_step(m);
    assert_int_equal(m->last_preempted, 0);
    assert_int_equal(entry_of(m, d), 1);
    sim_run(m, 1000);
    sim_check_done(m);
    sim_free(m);
}

/* A later request with a better priority is admitted first. */
static void test_priority_admission(void **state)
{
    (void)state;
    sim *m = sim_new(opts(1, 64, 1, 0, DUET_SCHED_PRIORITY), 64, 16, 0);
    duet_request *a = sim_add(m, 4, 2, 5);
    duet_request *b = sim_add(m, 4, 2, 1);
    duet_request *c = sim_add(m, 4, 2, 5);
    duet_request *d = sim_add(m, 4, 2, 0);
    duet_request *order[4] = {d, b, a, c};
    int k = 0;
    while (duet_scheduler_has_work(m->s)) {
        sim_step(m);
        assert_int_equal(m->n_last, 1);
        if (m->last[0].start == 0)
            assert_ptr_equal(m->last[0].req, order[k++]);
    }
    assert_int_equal(k, 4);
    sim_check_done(m);
    sim_free(m);

    /* The same requests under FCFS go in arrival order. */
    m = sim_new(opts(1, 64, 1, 0, DUET_SCHED_FCFS), 64, 16, 0);
    for (int i = 0; i < 4; i++)
        order[i] = sim_add(m, 4, 2, 5 - i);
    k = 0;
    while (duet_scheduler_has_work(m->s)) {
        sim_step(m);
        if (m->last[0].start == 0)
            assert_ptr_equal(m->last[0].req, order[k++]);
    }
    assert_int_equal(k, 4);
    sim_check_done(m);
    sim_free(m);
}

/* A second request sharing a 3-block prefix skips it once the first
 * request's prefill is committed. */
static void test_prefix_cache_hit(void **state)
{
    (void)state;
    sim *m = sim_new(opts(8, 256, 1, 0, DUET_SCHED_FCFS), 64, 16, 1);
    duet_request *a = sim_add_shared(m, 58, 4, 0, 48);
    sim_step(m);
    assert_int_equal(a->n_cached_prompt, 0);
    duet_request *b = sim_add_shared(m, 55, 4, 0, 48);
    sim_step(m);
    int i = entry_of(m, b);
    assert_int_equal(i, 1);
    assert_int_equal(m->last[i].start, 48);
    assert_int_equal(m->last[i].n_tokens, 7);
    assert_int_equal(b->n_cached_prompt, 48);
    for (int k = 0; k < 3; k++)
        assert_int_equal(b->kv.blocks[k], a->kv.blocks[k]);
    assert_int_not_equal(b->kv.blocks[3], a->kv.blocks[3]);
    duet_kv_stats ks;
    duet_kv_cache_stats(m->kv, &ks);
    assert_true(ks.prefix_hits == 48);
    assert_true(ks.prefix_queries == 58 + 55);
    sim_run(m, 1000);
    sim_check_done(m);
    sim_free(m);
}

static void test_abort(void **state)
{
    (void)state;
    sim *m = sim_new(opts(8, 64, 1, 0, DUET_SCHED_FCFS), 64, 16, 0);
    duet_request *a = sim_add(m, 300, 4, 0); /* chunked over 5 steps */
    sim_step(m);
    sim_step(m);
    assert_int_equal(a->n_computed, 128);
    assert_int_equal(a->kv.n_blocks, 8);
    assert_int_equal(duet_scheduler_abort(m->s, a), 0);
    assert_int_equal(a->state, DUET_REQ_FINISHED);
    assert_int_equal(a->finish, DUET_FINISH_ABORT);
    assert_int_equal(a->kv.n_blocks, 0);
    assert_int_equal(duet_scheduler_abort(m->s, a), -1);
    sim_check_queues(m);
    duet_kv_stats ks;
    duet_kv_cache_stats(m->kv, &ks);
    assert_int_equal(ks.used_blocks, 0);

    duet_request *b = sim_add(m, 20, 50, 0);
    duet_request *c = sim_add(m, 20, 50, 0);
    duet_request *w = sim_add(m, 20, 2, 0);
    for (int s = 0; s < 4; s++)
        sim_step(m);
    assert_int_equal(b->n_tokens, 24); /* decoding */
    assert_int_equal(duet_scheduler_abort(m->s, b), 0);
    assert_int_equal(b->kv.n_blocks, 0);
    sim_check_queues(m);
    sim_step(m);
    assert_int_equal(entry_of(m, b), -1);
    sim_run(m, 1000);
    assert_int_equal(duet_scheduler_abort(m->s, w), -1); /* finished */
    assert_int_equal(w->finish, DUET_FINISH_LENGTH);
    assert_int_equal(c->finish, DUET_FINISH_LENGTH);
    sim_check_done(m);

    /* A request that never ran, and one aborted between schedule and update. */
    duet_request *x = sim_add(m, 10, 2, 0);
    assert_int_equal(duet_scheduler_abort(m->s, x), 0);
    assert_int_equal(duet_scheduler_has_work(m->s), 0);
    duet_request *y = sim_add(m, 10, 2, 0);
    duet_sched_output out;
    assert_int_equal(duet_scheduler_schedule(m->s, &out), DUET_OK);
    assert_int_equal(out.n_entries, 1);
    assert_int_equal(duet_scheduler_abort(m->s, y), 0);
    assert_int_equal(duet_scheduler_update(m->s, &out), DUET_OK);
    assert_int_equal(y->n_computed, 0);
    sim_check_queues(m);
    sim_check_done(m);
    sim_free(m);
}

/* Random arrivals, aborts and lengths under several configurations;
 * invariants after every step, then every survivor must finish. */
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void random_run(duet_scheduler_options o, int num_blocks, int bs, int prefix,
                       uint64_t seed, uint64_t *preempts)
{
    sim *m = sim_new(o, num_blocks, bs, prefix);
    uint64_t rs = seed;
    int max_ctx = (num_blocks - 1) * bs; /* must fit the empty pool */
    if (!o.enable_chunked_prefill && max_ctx > o.max_num_batched_tokens)
        max_ctx = o.max_num_batched_tokens; /* recomputed whole after preemption */
    int aborts = 0;
    for (int step = 0; step < 300; step++) {
        if (rng_next(&rs) % 3 == 0 && m->n_reqs < MAX_REQS) {
            int n_prompt = 1 + (int)(rng_next(&rs) % (uint64_t)(max_ctx * 3 / 4));
            int max_tokens = 1 + (int)(rng_next(&rs) % 30);
            if (n_prompt + max_tokens > max_ctx)
                max_tokens = max_ctx - n_prompt; /* >= max_ctx / 4 */
            int shared = prefix && rng_next(&rs) % 2 ? n_prompt / 2 : 0;
            sim_add_shared(m, n_prompt, max_tokens, (int)(rng_next(&rs) % 4), shared);
        }
        if (m->n_reqs > 0 && rng_next(&rs) % 10 == 0) {
            duet_request *r = m->reqs[rng_next(&rs) % (uint64_t)m->n_reqs];
            int queued = r->state != DUET_REQ_FINISHED;
            assert_int_equal(duet_scheduler_abort(m->s, r), queued ? 0 : -1);
            aborts += queued;
            sim_check_queues(m);
        }
        sim_step(m);
    }
    sim_run(m, 100000);
    sim_check_done(m);
    duet_scheduler_stats st;
    duet_scheduler_get_stats(m->s, &st);
    *preempts += st.n_preemptions;
    print_message("seed %llu: %d requests, %d aborted, %d steps, %llu preemptions\n",
                  (unsigned long long)seed, m->n_reqs, aborts, m->steps,
                  (unsigned long long)st.n_preemptions);
    sim_free(m);
}

static void test_random_property(void **state)
{
    (void)state;
    uint64_t preempts = 0;
    const duet_sched_policy pol[2] = {DUET_SCHED_FCFS, DUET_SCHED_PRIORITY};
    for (int p = 0; p < 2; p++) {
        for (int prefix = 0; prefix < 2; prefix++) {
            random_run(opts(6, 48, 1, 0, pol[p]), 1 + 24, 8, prefix, 0x1234567ull + p, &preempts);
            random_run(opts(16, 96, 1, 20, pol[p]), 1 + 40, 4, prefix, 0xabcdefull + p, &preempts);
            random_run(opts(4, 64, 0, 0, pol[p]), 1 + 20, 4, prefix, 0x777ull + p, &preempts);
        }
    }
    assert_true(preempts > 20); /* the pools were small enough to matter */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_bad_args),
        cmocka_unit_test(test_budget_and_completion),
        cmocka_unit_test(test_chunked_prefill_splits),
        cmocka_unit_test(test_long_prefill_threshold),
        cmocka_unit_test(test_no_chunked_prefill_waits),
        cmocka_unit_test(test_decode_before_prefill),
        cmocka_unit_test(test_max_num_seqs),
        cmocka_unit_test(test_preemption_small_pool),
        cmocka_unit_test(test_preemption_victim),
        cmocka_unit_test(test_preempted_goes_front),
        cmocka_unit_test(test_no_admission_after_preemption),
        cmocka_unit_test(test_priority_admission),
        cmocka_unit_test(test_prefix_cache_hit),
        cmocka_unit_test(test_abort),
        cmocka_unit_test(test_random_property),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
