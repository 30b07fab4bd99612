/* The paged KV manager: block pool, block tables, prefix cache.
 *
 * Expected values come from the scenario (which blocks a sequence wrote,
 * what was freed when) or from an independent shadow model, never from the
 * code under test. The hash layout is checked against XXH3 computed here
 * over the bytes the header documents. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <xxhash.h>

#include "kv_cache.h"

static duet_kv_cache *make_kv(int num_blocks, int block_size, int prefix)
{
    duet_kv_cache_options o = {num_blocks, block_size, prefix};
    duet_kv_cache *kv = NULL;
    assert_int_equal(duet_kv_cache_create(&o, &kv), DUET_OK);
    assert_non_null(kv);
    return kv;
}

static void assert_ok(const duet_kv_cache *kv)
{
    const char *msg = duet_kv_cache_check(kv);
    if (msg)
        fail_msg("invariant broken: %s", msg);
}

static duet_kv_stats stats_of(const duet_kv_cache *kv)
{
    duet_kv_stats st;
    memset(&st, 0xff, sizeof st); /* poison: every field must be written */
    duet_kv_cache_stats(kv, &st);
    return st;
}

/* Tokens base, base+1, ...: distinct content per base. */
static void fill_tokens(int32_t *t, int n, int32_t base)
{
    for (int i = 0; i < n; i++)
        t[i] = base + i;
}

/* lookup + can_allocate + allocate for a whole prompt; returns the hit
 * tokens. */
static int admit(duet_kv_cache *kv, duet_kv_seq *seq, const int32_t *t, int n)
{
    int hit = duet_kv_cache_lookup(kv, seq, t, n);
    assert_true(hit >= 0);
    assert_true(duet_kv_cache_can_allocate(kv, seq, n));
    duet_kv_cache_allocate(kv, seq, n, n);
    assert_int_equal(seq->n_blocks, duet_kv_cache_blocks_for(kv, n));
    assert_ok(kv);
    return hit;
}

/* admit, then the "device" computes everything and the blocks commit. */
static int run_prompt(duet_kv_cache *kv, duet_kv_seq *seq, const int32_t *t, int n)
{
    int hit = admit(kv, seq, t, n);
    assert_int_equal(duet_kv_cache_commit(kv, seq, t, n), DUET_OK);
    assert_ok(kv);
    return hit;
}

/* Cached tokens for a prompt, through a throwaway seq. */
static int probe(const duet_kv_cache *kv, const int32_t *t, int n, duet_block_hash extra)
{
    duet_kv_seq s;
    duet_kv_seq_init(&s);
    duet_kv_seq_set_extra(&s, extra);
    int hit = duet_kv_cache_lookup(kv, &s, t, n);
    duet_kv_seq_destroy(&s);
    return hit;
}

static const duet_block_hash NO_SALT = {0, 0};

static void test_create_bad_args(void **state)
{
    (void)state;
    duet_kv_cache *kv = (duet_kv_cache *)1;
    duet_kv_cache_options o = {1, 16, 1};
    assert_int_equal(duet_kv_cache_create(&o, &kv), DUET_ERR_INVALID_ARG);
    assert_null(kv);
    assert_non_null(strstr(duet_last_error(), "block 0 is reserved"));
    o = (duet_kv_cache_options){8, 0, 1};
    kv = (duet_kv_cache *)1;
    assert_int_equal(duet_kv_cache_create(&o, &kv), DUET_ERR_INVALID_ARG);
    assert_null(kv);
    duet_kv_cache_free(NULL);
    duet_kv_seq_destroy(NULL);
}

static void test_fresh_pool(void **state)
{
    (void)state;
    duet_kv_cache *kv = make_kv(8, 16, 1);
    duet_kv_stats st = stats_of(kv);
    assert_int_equal(st.num_blocks, 7);
    assert_int_equal(st.free_blocks, 7);
    assert_int_equal(st.used_blocks, 0);
    assert_int_equal(st.cached_blocks, 0);
    assert_int_equal(st.prefix_queries, 0);
    assert_int_equal(st.prefix_hits, 0);
    assert_int_equal(duet_kv_cache_block_size(kv), 16);
    assert_int_equal(duet_kv_cache_blocks_for(kv, 0), 0);
    assert_int_equal(duet_kv_cache_blocks_for(kv, 1), 1);
    assert_int_equal(duet_kv_cache_blocks_for(kv, 16), 1);
    assert_int_equal(duet_kv_cache_blocks_for(kv, 17), 2);
    /* The whole pool, and never the null block. */
    duet_kv_seq s;
    duet_kv_seq_init(&s);
    assert_false(duet_kv_cache_can_allocate(kv, &s, 7 * 16 + 1));
    assert_true(duet_kv_cache_can_allocate(kv, &s, 7 * 16));
    duet_kv_cache_allocate(kv, &s, 7 * 16, 0);
    int seen[8] = {0};
    for (int i = 0; i < 7; i++) {
        assert_true(s.blocks[i] >= 1 && s.blocks[i] < 8);
        assert_int_equal(seen[s.blocks[i]]++, 0);
        assert_int_equal(duet_kv_cache_ref_count(kv, s.blocks[i]), 1);
    }
    assert_int_equal(duet_kv_cache_ref_count(kv, 0), 0);
    assert_int_equal(stats_of(kv).free_blocks, 0);
    assert_false(duet_kv_cache_can_allocate(kv, &s, 7 * 16 + 1));
    assert_true(duet_kv_cache_can_allocate(kv, &s, 7 * 16)); /* already held */
    assert_ok(kv);
    duet_kv_cache_free_seq(kv, &s);
    assert_int_equal(s.n_blocks, 0);
    assert_int_equal(stats_of(kv).free_blocks, 7);
    assert_ok(kv);
    duet_kv_seq_destroy(&s);
    duet_kv_cache_free(kv);
}

static void le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* XXH3-128 over the documented byte layout, built here independently. */
static duet_block_hash ref_hash(duet_block_hash parent, const int32_t *t, int n,
                                duet_block_hash extra)
{
    unsigned char buf[16 + 4 * 300 + 16];
    assert_true(n <= 300);
    le64(buf, parent.lo);
    le64(buf + 8, parent.hi);
    for (int i = 0; i < n; i++) {
        uint32_t v = (uint32_t)t[i];
        for (int k = 0; k < 4; k++)
            buf[16 + 4 * i + k] = (unsigned char)(v >> (8 * k));
    }
    le64(buf + 16 + 4 * n, extra.lo);
    le64(buf + 24 + 4 * n, extra.hi);
    XXH128_hash_t h = XXH3_128bits(buf, (size_t)(32 + 4 * n));
    return (duet_block_hash){h.low64, h.high64};
}

static void test_hash_layout(void **state)
{
    (void)state;
    duet_kv_cache *kv = make_kv(16, 16, 1);
    int32_t t[40];
    fill_tokens(t, 40, -5); /* negative ids exercise the int32 encoding */
    t[3] = 0x7fffffff;
    duet_kv_seq s;
    duet_kv_seq_init(&s);
    duet_block_hash salt = {0x0123456789abcdefull, 0xfedcba9876543210ull};
    duet_kv_seq_set_extra(&s, salt);
    assert_int_equal(duet_kv_cache_lookup(kv, &s, t, 40), 0);
    assert_int_equal(s.n_hashes, 2);
    duet_block_hash root = {0x9e3779b97f4a7c15ull, 0xd1b54a32d192ed03ull};
    duet_block_hash h0 = ref_hash(root, t, 16, salt);
    duet_block_hash h1 = ref_hash(h0, t + 16, 16, salt);
    assert_true(s.hashes[0].lo == h0.lo && s.hashes[0].hi == h0.hi);
    assert_true(s.hashes[1].lo == h1.lo && s.hashes[1].hi == h1.hi);
    /* Another key forgets the old hashes and chains under the new one. */
    duet_kv_seq_set_extra(&s, NO_SALT);
    assert_int_equal(s.n_hashes, 0);
    assert_int_equal(duet_kv_cache_lookup(kv, &s, t, 40), 0);
    h0 = ref_hash(root, t, 16, NO_SALT);
    assert_true(s.hashes[0].lo == h0.lo && s.hashes[0].hi == h0.hi);
    duet_kv_cache_free_seq(kv, &s);
    duet_kv_cache_free(kv);

    /* Large blocks (hashed in pieces) give the same bytes' hash. */
    static const int sizes[] = {127, 128, 129, 300};
    static int32_t big[601];
    fill_tokens(big, 601, -300);
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int bs = sizes[k];
        kv = make_kv(8, bs, 1);
        duet_kv_seq_set_extra(&s, salt);
        assert_int_equal(duet_kv_cache_lookup(kv, &s, big, 2 * bs + 1), 0);
        assert_int_equal(s.n_hashes, 2);
        h0 = ref_hash(root, big, bs, salt);
        h1 = ref_hash(h0, big + bs, bs, salt);
        assert_true(s.hashes[0].lo == h0.lo && s.hashes[0].hi == h0.hi);
        assert_true(s.hashes[1].lo == h1.lo && s.hashes[1].hi == h1.hi);
        duet_kv_cache_free_seq(kv, &s);
        duet_kv_cache_free(kv);
    }
    duet_kv_seq_destroy(&s);
}

/* Two requests with a shared 3-block system prompt (block size 16). */
static void test_prefix_cache_shared_prompt(void **state)
{
    (void)state;
    enum { BS = 16, N = 3 * BS + 5 };
    duet_kv_cache *kv = make_kv(32, BS, 1);
    int32_t pa[N], pb[N];
    fill_tokens(pa, N, 1000);
    memcpy(pb, pa, sizeof pa);
    fill_tokens(pb + 3 * BS, 5, 9000); /* same system prompt, other question */

    duet_kv_seq a, b;
    duet_kv_seq_init(&a);
    duet_kv_seq_init(&b);
    assert_int_equal(run_prompt(kv, &a, pa, N), 0);
    duet_kv_stats st = stats_of(kv);
    assert_int_equal(st.cached_blocks, 3); /* the partial 4th is not cached */
    assert_int_equal(st.used_blocks, 4);
    assert_int_equal(st.prefix_queries, N);
    assert_int_equal(st.prefix_hits, 0);

    assert_int_equal(duet_kv_cache_lookup(kv, &b, pb, N), 48);
    assert_int_equal(b.n_hit_blocks, 3);
    assert_int_equal(stats_of(kv).free_blocks, st.free_blocks); /* lookup is pure */
    assert_true(duet_kv_cache_can_allocate(kv, &b, N));
    duet_kv_cache_allocate(kv, &b, N, N);
    assert_ok(kv);
    assert_int_equal(b.n_blocks, 4);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(b.blocks[i], a.blocks[i]);
        assert_int_equal(duet_kv_cache_ref_count(kv, a.blocks[i]), 2);
    }
    assert_true(b.blocks[3] != a.blocks[3]);
    duet_kv_stats st2 = stats_of(kv);
    assert_int_equal(st2.free_blocks, st.free_blocks - 1); /* only the tail block */
    assert_int_equal(st2.prefix_queries, 2 * N);
    assert_int_equal(st2.prefix_hits, 48);
    assert_int_equal(duet_kv_cache_commit(kv, &b, pb, N), DUET_OK);
    assert_int_equal(stats_of(kv).cached_blocks, 3);

    /* Exactly 3 blocks of prompt: the last token is recomputed, so only 2
     * blocks can hit. */
    assert_int_equal(probe(kv, pa, 48, NO_SALT), 32);
    assert_int_equal(probe(kv, pa, 49, NO_SALT), 48);
    assert_int_equal(probe(kv, pa, 16, NO_SALT), 0);
    assert_int_equal(probe(kv, pa, 17, NO_SALT), 16);
    /* A salt isolates. */
    duet_block_hash salt = {7, 0};
    assert_int_equal(probe(kv, pa, N, salt), 0);
    /* A different first token breaks the whole chain. */
    int32_t pc[N];
    memcpy(pc, pa, sizeof pc);
    pc[0] = -1;
    assert_int_equal(probe(kv, pc, N, NO_SALT), 0);
    pc[0] = pa[0];
    pc[20] = -1; /* second block differs: only the first hits */
    assert_int_equal(probe(kv, pc, N, NO_SALT), 16);

    /* Freed blocks keep their content: a third request revives them. */
    int32_t shared[3];
    memcpy(shared, a.blocks, sizeof shared);
    duet_kv_cache_free_seq(kv, &a);
    duet_kv_cache_free_seq(kv, &b);
    assert_ok(kv);
    st = stats_of(kv);
    assert_int_equal(st.used_blocks, 0);
    assert_int_equal(st.free_blocks, 31);
    assert_int_equal(st.cached_blocks, 3);
    duet_kv_seq c;
    duet_kv_seq_init(&c);
    assert_int_equal(admit(kv, &c, pa, N), 48);
    for (int i = 0; i < 3; i++)
        assert_int_equal(c.blocks[i], shared[i]);
    assert_int_equal(stats_of(kv).free_blocks, 31 - 4);
    assert_int_equal(stats_of(kv).prefix_hits, 96);
    duet_kv_cache_free_seq(kv, &c);
    assert_ok(kv);
    duet_kv_seq_destroy(&a);
    duet_kv_seq_destroy(&b);
    duet_kv_seq_destroy(&c);
    duet_kv_cache_free(kv);
}

/* A then B cached and freed; new blocks evict A's (last block first), then
 * B's. */
static void test_eviction_order(void **state)
{
    (void)state;
    enum { BS = 4 };
    duet_kv_cache *kv = make_kv(1 + 6, BS, 1);
    int32_t ta[13], tb[13];
    fill_tokens(ta, 13, 100);
    fill_tokens(tb, 13, 200);
    duet_kv_seq a, b, f;
    duet_kv_seq_init(&a);
    duet_kv_seq_init(&b);
    duet_kv_seq_init(&f);
    run_prompt(kv, &a, ta, 12);
    run_prompt(kv, &b, tb, 12);
    int32_t ba[3], bb[3];
    memcpy(ba, a.blocks, sizeof ba);
    memcpy(bb, b.blocks, sizeof bb);
    duet_kv_cache_free_seq(kv, &a);
    duet_kv_cache_free_seq(kv, &b);
    assert_int_equal(stats_of(kv).cached_blocks, 6);
    /* The 13th token is uncached, so the probes may hit all 3 blocks. */
    assert_int_equal(probe(kv, ta, 13, NO_SALT), 12);
    assert_int_equal(probe(kv, tb, 13, NO_SALT), 12);
    static const int want_a[7] = {12, 8, 4, 0, 0, 0, 0};
    static const int want_b[7] = {12, 12, 12, 12, 8, 4, 0};
    const int32_t order[6] = {ba[2], ba[1], ba[0], bb[2], bb[1], bb[0]};
    for (int k = 1; k <= 6; k++) {
        assert_true(duet_kv_cache_can_allocate(kv, &f, k * BS));
        duet_kv_cache_allocate(kv, &f, k * BS, 0);
        assert_ok(kv);
        assert_int_equal(f.blocks[k - 1], order[k - 1]);
        assert_int_equal(probe(kv, ta, 13, NO_SALT), want_a[k]);
        assert_int_equal(probe(kv, tb, 13, NO_SALT), want_b[k]);
        assert_int_equal(stats_of(kv).cached_blocks, 6 - k);
    }
    assert_false(duet_kv_cache_can_allocate(kv, &f, 6 * BS + 1));
    duet_kv_cache_free_seq(kv, &f);
    assert_ok(kv);
    duet_kv_seq_destroy(&a);
    duet_kv_seq_destroy(&b);
    duet_kv_seq_destroy(&f);
    duet_kv_cache_free(kv);
}

/* A hit revived from the free list and freed again goes to the tail:
 * eviction is least recently used, not first freed. */
static void test_revived_block_is_recent(void **state)
{
    (void)state;
    enum { BS = 4 };
    duet_kv_cache *kv = make_kv(1 + 4, BS, 1);
    int32_t t[3][5];
    duet_kv_seq s, f;
    duet_kv_seq_init(&s);
    duet_kv_seq_init(&f);
    for (int k = 0; k < 3; k++) { /* A, B, C: one cached block each */
        fill_tokens(t[k], 5, 100 * (k + 1));
        run_prompt(kv, &s, t[k], 4);
        duet_kv_cache_free_seq(kv, &s);
    }
    /* Revive A (its hit plus one fresh block for the last token). */
    assert_int_equal(admit(kv, &s, t[0], 5), 4);
    duet_kv_cache_free_seq(kv, &s);
    assert_ok(kv);
    /* Now B is the oldest, then C, then the fresh block, then A. */
    static const int want[5][3] = {
        {4, 4, 4}, {4, 0, 4}, {4, 0, 0}, {4, 0, 0}, {0, 0, 0},
    };
    for (int k = 0; k <= 4; k++) {
        if (k > 0) {
            assert_true(duet_kv_cache_can_allocate(kv, &f, k * BS));
            duet_kv_cache_allocate(kv, &f, k * BS, 0);
        }
        for (int j = 0; j < 3; j++)
            assert_int_equal(probe(kv, t[j], 5, NO_SALT), want[k][j]);
    }
    duet_kv_cache_free_seq(kv, &f);
    assert_ok(kv);
    duet_kv_seq_destroy(&s);
    duet_kv_seq_destroy(&f);
    duet_kv_cache_free(kv);
}

/* Hits that sit on the free list are not extra room. */
static void test_can_allocate_counts_free_hits(void **state)
{
    (void)state;
    enum { BS = 4 };
    duet_kv_cache *kv = make_kv(1 + 4, BS, 1);
    int32_t t[17];
    fill_tokens(t, 17, 50);
    duet_kv_seq a, b;
    duet_kv_seq_init(&a);
    duet_kv_seq_init(&b);
    run_prompt(kv, &a, t, 12);
    duet_kv_cache_free_seq(kv, &a);
    assert_int_equal(stats_of(kv).free_blocks, 4); /* 3 of them cached */

    /* 17 tokens = 3 hit blocks + 2 new; only 1 free block is not a hit.
     * Counting "5 - 3 hits = 2 <= 4 free" would over-allocate. */
    assert_int_equal(duet_kv_cache_lookup(kv, &b, t, 17), 12);
    assert_false(duet_kv_cache_can_allocate(kv, &b, 17));
    assert_true(duet_kv_cache_can_allocate(kv, &b, 16));
    assert_int_equal(stats_of(kv).free_blocks, 4); /* pure */
    duet_kv_cache_allocate(kv, &b, 16, 16);
    assert_ok(kv);
    assert_int_equal(stats_of(kv).free_blocks, 0); /* exactly exhausted */
    assert_int_equal(b.n_blocks, 4);
    assert_false(duet_kv_cache_can_allocate(kv, &b, 17));
    duet_kv_cache_free_seq(kv, &b);
    duet_kv_seq_destroy(&b);
    duet_kv_seq_init(&b);

    /* Hits still in use cost nothing: 1 + 5 blocks, A holds 3, 2 free. */
    duet_kv_cache_free(kv);
    kv = make_kv(1 + 5, BS, 1);
    run_prompt(kv, &a, t, 12);
    assert_int_equal(duet_kv_cache_lookup(kv, &b, t, 17), 12);
    assert_true(duet_kv_cache_can_allocate(kv, &b, 17));
    assert_false(duet_kv_cache_can_allocate(kv, &b, 21));
    duet_kv_cache_allocate(kv, &b, 17, 17);
    assert_ok(kv);
    assert_int_equal(stats_of(kv).free_blocks, 0);
    assert_int_equal(stats_of(kv).used_blocks, 5);
    duet_kv_cache_free_seq(kv, &a);
    duet_kv_cache_free_seq(kv, &b);
    assert_ok(kv);
    assert_int_equal(stats_of(kv).free_blocks, 5);
    duet_kv_seq_destroy(&a);
    duet_kv_seq_destroy(&b);
    duet_kv_cache_free(kv);
}

/* A hit evicted between lookup and allocation makes the lookup stale:
 * can_allocate refuses rather than handing out a block with other content. */
static void test_stale_lookup_refused(void **state)
{
    (void)state;
    enum { BS = 4 };
    duet_kv_cache *kv = make_kv(1 + 4, BS, 1);
    int32_t t[9];
    fill_tokens(t, 9, 40);
    duet_kv_seq a, b, f;
    duet_kv_seq_init(&a);
    duet_kv_seq_init(&b);
    duet_kv_seq_init(&f);
    run_prompt(kv, &a, t, 8);
    duet_kv_cache_free_seq(kv, &a);
    assert_int_equal(duet_kv_cache_lookup(kv, &b, t, 9), 8);
    duet_kv_cache_allocate(kv, &f, 4 * BS, 0); /* evicts both cached blocks */
    duet_kv_cache_free_seq(kv, &f);
    assert_false(duet_kv_cache_can_allocate(kv, &b, 9));
    assert_int_equal(duet_kv_cache_lookup(kv, &b, t, 9), 0);
    assert_true(duet_kv_cache_can_allocate(kv, &b, 9));
    duet_kv_cache_allocate(kv, &b, 9, 9);
    assert_ok(kv);
    duet_kv_cache_free_seq(kv, &b);
    duet_kv_seq_destroy(&a);
    duet_kv_seq_destroy(&b);
    duet_kv_seq_destroy(&f);
    duet_kv_cache_free(kv);
}

static void test_prefix_caching_disabled(void **state)
{
    (void)state;
    enum { BS = 4, N = 13 };
    duet_kv_cache *kv = make_kv(16, BS, 0);
    int32_t t[N];
    fill_tokens(t, N, 1);
    duet_kv_seq a, b;
    duet_kv_seq_init(&a);
    duet_kv_seq_init(&b);
    assert_int_equal(run_prompt(kv, &a, t, N), 0);
    assert_int_equal(run_prompt(kv, &b, t, N), 0);
    for (int i = 0; i < a.n_blocks; i++)
        for (int j = 0; j < b.n_blocks; j++)
            assert_true(a.blocks[i] != b.blocks[j]);
    duet_kv_cache_free_seq(kv, &a);
    duet_kv_cache_free_seq(kv, &b);
    assert_int_equal(probe(kv, t, N, NO_SALT), 0);
    duet_kv_stats st = stats_of(kv);
    assert_int_equal(st.cached_blocks, 0);
    assert_int_equal(st.prefix_hits, 0);
    assert_int_equal(st.prefix_queries, 2 * N);
    assert_ok(kv);
    duet_kv_seq_destroy(&a);
    duet_kv_seq_destroy(&b);
    duet_kv_cache_free(kv);
}

/* The same prompt scheduled twice before either commits: both compute
 * it, the map keeps the first copy, and both free cleanly. */
static void test_duplicate_content(void **state)
{
    (void)state;
    enum { BS = 4, N = 13 };
    for (int order = 0; order < 2; order++) {
        duet_kv_cache *kv = make_kv(1 + 8, BS, 1);
        int32_t t[N];
        fill_tokens(t, N, 77);
        duet_kv_seq a, b, c;
        duet_kv_seq_init(&a);
        duet_kv_seq_init(&b);
        duet_kv_seq_init(&c);
        assert_int_equal(admit(kv, &a, t, N), 0);
        assert_int_equal(admit(kv, &b, t, N), 0);
        assert_int_equal(duet_kv_cache_commit(kv, &a, t, N), DUET_OK);
        assert_int_equal(duet_kv_cache_commit(kv, &b, t, N), DUET_OK);
        assert_ok(kv);
        assert_int_equal(stats_of(kv).cached_blocks, 3);
        int32_t first[3];
        memcpy(first, a.blocks, sizeof first);
        duet_kv_cache_free_seq(kv, order ? &b : &a);
        assert_ok(kv);
        duet_kv_cache_free_seq(kv, order ? &a : &b);
        assert_ok(kv);
        duet_kv_stats st = stats_of(kv);
        assert_int_equal(st.free_blocks, 8);
        assert_int_equal(st.cached_blocks, 3);
        assert_int_equal(admit(kv, &c, t, N), 12);
        for (int i = 0; i < 3; i++)
            assert_int_equal(c.blocks[i], first[i]);
        duet_kv_cache_free_seq(kv, &c);
        /* Taking the whole pool evicts everything. */
        assert_true(duet_kv_cache_can_allocate(kv, &c, 8 * BS));
        duet_kv_cache_allocate(kv, &c, 8 * BS, 0);
        assert_int_equal(stats_of(kv).cached_blocks, 0);
        assert_ok(kv);
        duet_kv_cache_free_seq(kv, &c);
        assert_int_equal(probe(kv, t, N, NO_SALT), 0);
        duet_kv_seq_destroy(&a);
        duet_kv_seq_destroy(&b);
        duet_kv_seq_destroy(&c);
        duet_kv_cache_free(kv);
    }
}

static void test_reset_prefix(void **state)
{
    (void)state;
    enum { BS = 4, N = 9 };
    duet_kv_cache *kv = make_kv(8, BS, 1);
    int32_t t[N];
    fill_tokens(t, N, 3);
    duet_kv_seq a;
    duet_kv_seq_init(&a);
    run_prompt(kv, &a, t, N);
    assert_int_equal(probe(kv, t, N, NO_SALT), 8);
    duet_kv_cache_reset_prefix(kv);
    assert_ok(kv);
    assert_int_equal(probe(kv, t, N, NO_SALT), 0);
    duet_kv_stats st = stats_of(kv);
    assert_int_equal(st.cached_blocks, 0);
    assert_int_equal(st.used_blocks, 3); /* blocks in use are unaffected */
    duet_kv_cache_free_seq(kv, &a);
    assert_ok(kv);
    duet_kv_seq_destroy(&a);
    duet_kv_cache_free(kv);
}

/* Negative control: the test-only hook breaks one invariant at a time and
 * the check must name it. */
static void test_check_catches_corruption(void **state)
{
    (void)state;
    enum { BS = 4 };
    static const struct {
        duet_kv_corruption what;
        int which; /* 0 = a free cached block, 1 = a block in use, 2 = null */
        const char *says;
    } cases[] = {
        {DUET_KV_CORRUPT_REF_INC, 0, "linked into the free list"},
        {DUET_KV_CORRUPT_REF_DEC, 0, "ref count -1"},
        {DUET_KV_CORRUPT_REF_DEC, 1, "ref 0 but the free count"},
        {DUET_KV_CORRUPT_REF_INC, 2, "null block"},
        {DUET_KV_CORRUPT_FREE_CYCLE, 0, "free list"},
        {DUET_KV_CORRUPT_HASH_BIT, 0, "does not carry its hash"},
        {DUET_KV_CORRUPT_HASH_BIT, 1, "does not carry its hash"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        duet_kv_cache *kv = make_kv(8, BS, 1);
        int32_t t[9];
        fill_tokens(t, 9, 10);
        duet_kv_seq a, b;
        duet_kv_seq_init(&a);
        duet_kv_seq_init(&b);
        run_prompt(kv, &a, t, 8);
        int32_t freed = a.blocks[0];
        duet_kv_cache_free_seq(kv, &a);
        fill_tokens(t, 9, 500);
        run_prompt(kv, &b, t, 8);
        int32_t used = b.blocks[0];
        assert_int_equal(duet_kv_cache_ref_count(kv, freed), 0);
        assert_int_equal(duet_kv_cache_ref_count(kv, used), 1);
        assert_ok(kv);
        int32_t blk = cases[k].which == 0 ? freed : cases[k].which == 1 ? used : 0;
        duet_kv_cache_test_corrupt(kv, cases[k].what, blk);
        const char *msg = duet_kv_cache_check(kv);
        assert_non_null(msg);
        if (!strstr(msg, cases[k].says))
            fail_msg("case %zu: \"%s\" does not mention \"%s\"", k, msg, cases[k].says);
        /* Undo, so that the teardown sees a sound pool again. */
        if (cases[k].what == DUET_KV_CORRUPT_REF_INC)
            duet_kv_cache_test_corrupt(kv, DUET_KV_CORRUPT_REF_DEC, blk);
        else if (cases[k].what == DUET_KV_CORRUPT_REF_DEC)
            duet_kv_cache_test_corrupt(kv, DUET_KV_CORRUPT_REF_INC, blk);
        else if (cases[k].what == DUET_KV_CORRUPT_HASH_BIT)
            duet_kv_cache_test_corrupt(kv, DUET_KV_CORRUPT_HASH_BIT, blk);
        if (cases[k].what != DUET_KV_CORRUPT_FREE_CYCLE) {
            assert_ok(kv);
            duet_kv_cache_free_seq(kv, &b);
            assert_ok(kv);
        }
        /* (a cycled free list is not repaired: the pool is just dropped) */
        b.n_blocks = 0;
        duet_kv_seq_destroy(&a);
        duet_kv_seq_destroy(&b);
        duet_kv_cache_free(kv);
    }
}

/* ---- property test: random operations against a shadow model --------- */

enum { R_BLOCKS = 64, R_BS = 4, R_SEQS = 8, R_MAXT = 64, R_OPS = 20000 };

typedef enum { R_IDLE, R_WAITING, R_RUNNING } r_state;

typedef struct r_seq {
    duet_kv_seq seq;
    r_state state;
    int32_t tokens[R_MAXT];
    int n_tokens;   /* tokens the request has */
    int n_alloc;    /* tokens its blocks were allocated for */
    int n_computed; /* tokens the "device" has written */
    uint64_t salt;
} r_seq;

typedef struct r_world {
    duet_kv_cache *kv;
    r_seq s[R_SEQS];
    /* Shadow: what a block holds, as the test's own FNV hash of (salt,
     * the token prefix through the block's end); 0 = not full yet. */
    uint64_t content[R_BLOCKS];
    uint64_t queries, hits;
    unsigned rng;
    int32_t prefixes[4][16];
    int n_hit_admits, n_preempts, n_reset;
} r_world;

static unsigned r_next(r_world *w, unsigned n)
{
    w->rng = w->rng * 1103515245u + 12345u;
    return (w->rng >> 16) % n;
}

static uint64_t fnv(uint64_t salt, const int32_t *t, int n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < 8; i++)
        h = (h ^ ((salt >> (8 * i)) & 0xff)) * 0x100000001b3ull;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 4; k++)
            h = (h ^ (((uint32_t)t[i] >> (8 * k)) & 0xff)) * 0x100000001b3ull;
    return h ? h : 1;
}

static int shadow_ref(const r_world *w, int32_t b)
{
    int n = 0;
    for (int i = 0; i < R_SEQS; i++)
        for (int j = 0; j < w->s[i].seq.n_blocks; j++)
            n += w->s[i].seq.blocks[j] == b;
    return n;
}

static void r_verify(r_world *w)
{
    assert_ok(w->kv);
    int free_count = 0;
    for (int i = 0; i < R_SEQS; i++) {
        const r_seq *s = &w->s[i];
        int want = s->state == R_RUNNING ? duet_kv_cache_blocks_for(w->kv, s->n_alloc) : 0;
        assert_int_equal(s->seq.n_blocks, want);
        for (int j = 0; j < s->seq.n_blocks; j++) {
            assert_true(s->seq.blocks[j] >= 1 && s->seq.blocks[j] < R_BLOCKS);
            for (int k = 0; k < j; k++)
                assert_true(s->seq.blocks[k] != s->seq.blocks[j]);
        }
    }
    for (int32_t b = 0; b < R_BLOCKS; b++) {
        int ref = shadow_ref(w, b);
        assert_int_equal(duet_kv_cache_ref_count(w->kv, b), ref);
        free_count += b > 0 && ref == 0;
    }
    duet_kv_stats st = stats_of(w->kv);
    assert_int_equal(st.free_blocks, free_count);
    assert_int_equal(st.used_blocks, R_BLOCKS - 1 - free_count);
    assert_true(st.cached_blocks >= 0 && st.cached_blocks <= R_BLOCKS - 1);
    assert_true(st.prefix_queries == w->queries);
    assert_true(st.prefix_hits == w->hits);
}

static void r_admit(r_world *w, r_seq *s)
{
    int hit = duet_kv_cache_lookup(w->kv, &s->seq, s->tokens, s->n_tokens);
    assert_true(hit >= 0 && hit % R_BS == 0 && hit < s->n_tokens);
    int hits = hit / R_BS;
    assert_int_equal(s->seq.n_hit_blocks, hits);
    int need = duet_kv_cache_blocks_for(w->kv, s->n_tokens);
    int fresh = need - hits;
    int free_before = stats_of(w->kv).free_blocks;
    int ok = duet_kv_cache_can_allocate(w->kv, &s->seq, s->n_tokens);
    /* Bounds that hold whichever hits sit on the free list. */
    if (free_before < fresh)
        assert_false(ok);
    if (free_before >= fresh + hits)
        assert_true(ok);
    if (!ok) {
        s->state = R_WAITING;
        return;
    }
    int was_free[R_BLOCKS];
    for (int32_t b = 0; b < R_BLOCKS; b++)
        was_free[b] = b > 0 && shadow_ref(w, b) == 0;
    duet_kv_cache_allocate(w->kv, &s->seq, s->n_tokens, s->n_tokens);
    s->state = R_RUNNING;
    s->n_alloc = s->n_tokens;
    s->n_computed = hit;
    w->queries += (uint64_t)s->n_tokens;
    w->hits += (uint64_t)hit;
    w->n_hit_admits += hits > 0;
    int revived = 0;
    for (int i = 0; i < s->seq.n_blocks; i++) {
        int32_t b = s->seq.blocks[i];
        if (i < hits) {
            /* The heart of it: a hit holds exactly this prefix. */
            assert_true(w->content[b] == fnv(s->salt, s->tokens, (i + 1) * R_BS));
            revived += was_free[b];
        } else {
            assert_true(was_free[b]); /* new blocks come from the free list */
            w->content[b] = 0;
        }
    }
    assert_int_equal(stats_of(w->kv).free_blocks, free_before - fresh - revived);
}

static void r_start(r_world *w, r_seq *s)
{
    duet_kv_seq_destroy(&s->seq);
    duet_kv_seq_init(&s->seq);
    /* Shared prefixes over a 3-token alphabet: hits and duplicate blocks
     * both happen. */
    const int32_t *p = w->prefixes[r_next(w, 4)];
    int n = (int)r_next(w, 17);
    memcpy(s->tokens, p, sizeof(int32_t) * (size_t)n);
    int tail = 1 + (int)r_next(w, 8);
    for (int i = 0; i < tail; i++)
        s->tokens[n++] = (int32_t)r_next(w, 3);
    s->n_tokens = n;
    s->salt = r_next(w, 8) == 0 ? 1 + r_next(w, 2) : 0;
    duet_kv_seq_set_extra(&s->seq, (duet_block_hash){s->salt, 0});
    s->n_alloc = s->n_computed = 0;
    r_admit(w, s);
}

/* The device writes everything allocated; full blocks commit. */
static void r_compute(r_world *w, r_seq *s)
{
    for (int i = s->n_computed / R_BS; i < s->n_alloc / R_BS; i++)
        w->content[s->seq.blocks[i]] = fnv(s->salt, s->tokens, (i + 1) * R_BS);
    s->n_computed = s->n_alloc;
    assert_int_equal(duet_kv_cache_commit(w->kv, &s->seq, s->tokens, s->n_computed), DUET_OK);
    assert_int_equal(s->seq.n_committed, s->n_computed / R_BS);
}

static void r_finish(r_world *w, r_seq *s)
{
    duet_kv_cache_free_seq(w->kv, &s->seq);
    assert_int_equal(s->seq.n_blocks, 0);
    duet_kv_seq_destroy(&s->seq);
    s->state = R_IDLE;
}

static void r_step(r_world *w, r_seq *s)
{
    r_compute(w, s);
    int grow = 1 + (int)r_next(w, 3);
    if (s->n_tokens + grow > R_MAXT) {
        r_finish(w, s);
        return;
    }
    for (int i = 0; i < grow; i++)
        s->tokens[s->n_tokens++] = (int32_t)r_next(w, 3);
    if (duet_kv_cache_can_allocate(w->kv, &s->seq, s->n_tokens)) {
        int free_before = stats_of(w->kv).free_blocks;
        int more = duet_kv_cache_blocks_for(w->kv, s->n_tokens) - s->seq.n_blocks;
        duet_kv_cache_allocate(w->kv, &s->seq, s->n_tokens, 0);
        for (int i = s->seq.n_blocks - more; i < s->seq.n_blocks; i++)
            w->content[s->seq.blocks[i]] = 0;
        s->n_alloc = s->n_tokens;
        assert_int_equal(stats_of(w->kv).free_blocks, free_before - more);
    } else {
        /* Recompute preemption: drop the blocks, keep the tokens. */
        assert_true(duet_kv_cache_blocks_for(w->kv, s->n_tokens) - s->seq.n_blocks >
                    stats_of(w->kv).free_blocks);
        duet_kv_cache_free_seq(w->kv, &s->seq);
        s->state = R_WAITING;
        s->n_alloc = s->n_computed = 0;
        w->n_preempts++;
    }
}

static void test_random_ops(void **state)
{
    (void)state;
    r_world *w = calloc(1, sizeof *w);
    assert_non_null(w);
    w->kv = make_kv(R_BLOCKS, R_BS, 1);
    w->rng = 20261128;
    for (int p = 0; p < 4; p++)
        for (int i = 0; i < 16; i++)
            w->prefixes[p][i] = (int32_t)r_next(w, 3);
    for (int op = 0; op < R_OPS; op++) {
        r_seq *s = &w->s[r_next(w, R_SEQS)];
        unsigned r = r_next(w, 2000);
        if (r < 600) {
            if (s->state == R_IDLE)
                r_start(w, s);
            else if (s->state == R_WAITING)
                r_admit(w, s);
            else
                r_step(w, s);
        } else if (r < 1900) {
            if (s->state == R_RUNNING)
                r_step(w, s);
            else if (s->state == R_WAITING)
                r_admit(w, s);
        } else if (r < 1998) {
            if (s->state != R_IDLE)
                r_finish(w, s);
        } else {
            duet_kv_cache_reset_prefix(w->kv);
            w->n_reset++;
        }
        r_verify(w);
    }
    for (int i = 0; i < R_SEQS; i++)
        if (w->s[i].state != R_IDLE)
            r_finish(w, &w->s[i]);
    r_verify(w);
    duet_kv_stats st = stats_of(w->kv);
    assert_int_equal(st.used_blocks, 0);
    assert_int_equal(st.free_blocks, R_BLOCKS - 1);
    print_message("random ops: %d, admissions with hits %d, preemptions %d, resets %d, "
                  "hit tokens %llu of %llu\n",
                  R_OPS, w->n_hit_admits, w->n_preempts, w->n_reset,
                  (unsigned long long)w->hits, (unsigned long long)w->queries);
    /* The walk must have exercised what it is for. */
    assert_true(w->n_hit_admits > 100);
    assert_true(w->n_preempts > 10);
    duet_kv_cache_free(w->kv);
    free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_bad_args),
        cmocka_unit_test(test_fresh_pool),
        cmocka_unit_test(test_hash_layout),
        cmocka_unit_test(test_prefix_cache_shared_prompt),
        cmocka_unit_test(test_eviction_order),
        cmocka_unit_test(test_revived_block_is_recent),
        cmocka_unit_test(test_can_allocate_counts_free_hits),
        cmocka_unit_test(test_stale_lookup_refused),
        cmocka_unit_test(test_prefix_caching_disabled),
        cmocka_unit_test(test_duplicate_content),
        cmocka_unit_test(test_reset_prefix),
        cmocka_unit_test(test_check_catches_corruption),
        cmocka_unit_test(test_random_ops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
