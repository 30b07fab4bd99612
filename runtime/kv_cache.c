/*
 * kv_cache.c — block pool, block tables and prefix cache (see kv_cache.h).
 *
 * Three structures over block ids, all O(1) per block:
 *   - ref[b]: how many sequences hold block b;
 *   - an intrusive doubly-linked free list (prev/next) of the ref-0 blocks,
 *     oldest-freed at the head, so eviction takes the least recently used;
 *   - an open-addressing hash map (linear probing, backward-shift deletion)
 *     from a full block's chained hash to the one block registered for it.
 * A block carries a hash (has_hash) exactly when the map points at it, so
 * evicting a block is "remove its map entry, clear its hash".
 */
#include "kv_cache.h"

#include <assert.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* For XXH3_state_t on the stack (no allocation per hash). */
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "error.h"

#define NIL (-1)

/* The first block's parent hash. Any fixed value works; a non-zero one
 * keeps "no parent" distinct from a parent whose hash happens to be zero. */
static const duet_block_hash ROOT_PARENT = {0x9e3779b97f4a7c15ull, 0xd1b54a32d192ed03ull};

typedef struct map_slot {
    duet_block_hash key;
    int32_t block; /* NIL = empty */
} map_slot;

struct duet_kv_cache {
    /* config */
    int num_blocks, block_size, prefix_caching;

    /* per block, indexed by block id */
    int32_t *ref;          /* [num_blocks] sequences holding the block */
    int32_t *prev, *next;  /* [num_blocks] free-list links, NIL at the ends
                              and for blocks not on the list */
    duet_block_hash *hash; /* [num_blocks] valid where has_hash */
    unsigned char *has_hash; /* [num_blocks] 1 = registered in the map */

    int32_t free_head, free_tail;
    int n_free;
    int n_cached; /* blocks with has_hash = map entries */

    map_slot *map; /* [map_mask + 1], load <= 1/2 */
    uint32_t map_mask;

    uint64_t prefix_queries, prefix_hits;
    char check_msg[160];
};

/* ---- hashing ---------------------------------------------------------- */

static int hash_eq(duet_block_hash a, duet_block_hash b)
{
    return a.lo == b.lo && a.hi == b.hi;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_le32s(unsigned char *p, const int32_t *t, int n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(p, t, 4 * (size_t)n); /* already the layout */
#else
    for (int i = 0; i < n; i++, p += 4) {
        uint32_t v = (uint32_t)t[i];
        p[0] = (unsigned char)v;
        p[1] = (unsigned char)(v >> 8);
        p[2] = (unsigned char)(v >> 16);
        p[3] = (unsigned char)(v >> 24);
    }
#endif
}

/* Blocks up to this size hash in one shot from a stack buffer (about 4x
 * faster than XXH3's streaming state); larger ones stream, same result. */
enum { ONESHOT_TOKENS = 128 };

/* XXH3-128 over (parent 16 bytes, tokens as little-endian int32, extra 16
 * bytes): the layout kv_cache.h documents. */
static duet_block_hash block_hash(duet_block_hash parent, const int32_t *tokens, int n,
                                  duet_block_hash extra)
{
    unsigned char buf[16 + 4 * ONESHOT_TOKENS + 16];
    XXH128_hash_t h;
    put_le64(buf, parent.lo);
    put_le64(buf + 8, parent.hi);
    if (n <= ONESHOT_TOKENS) {
        put_le32s(buf + 16, tokens, n);
        put_le64(buf + 16 + 4 * n, extra.lo);
        put_le64(buf + 24 + 4 * n, extra.hi);
        h = XXH3_128bits(buf, 32 + 4 * (size_t)n);
    } else {
        XXH3_state_t st;
        XXH3_128bits_reset(&st);
        XXH3_128bits_update(&st, buf, 16);
        for (int i = 0; i < n; i += ONESHOT_TOKENS) {
            int m = n - i < ONESHOT_TOKENS ? n - i : ONESHOT_TOKENS;
            put_le32s(buf, tokens + i, m);
            XXH3_128bits_update(&st, buf, 4 * (size_t)m);
        }
        put_le64(buf, extra.lo);
        put_le64(buf + 8, extra.hi);
        XXH3_128bits_update(&st, buf, 16);
        h = XXH3_128bits_digest(&st);
    }
    return (duet_block_hash){h.low64, h.high64};
}

/* ---- hash map --------------------------------------------------------- */

static uint32_t map_home(const duet_kv_cache *kv, duet_block_hash h)
{
    return (uint32_t)h.lo & kv->map_mask;
}

/* The block registered for h, or NIL. */
static int32_t map_find(const duet_kv_cache *kv, duet_block_hash h)
{
    for (uint32_t i = map_home(kv, h);; i = (i + 1) & kv->map_mask) {
        const map_slot *s = &kv->map[i];
        if (s->block == NIL)
            return NIL;
        if (hash_eq(s->key, h))
            return s->block;
    }
}

static void map_insert(duet_kv_cache *kv, duet_block_hash h, int32_t b)
{
    uint32_t i = map_home(kv, h);
    while (kv->map[i].block != NIL) {
        assert(!hash_eq(kv->map[i].key, h));
        i = (i + 1) & kv->map_mask;
    }
    kv->map[i] = (map_slot){h, b};
}

/* Remove h's entry; later entries of its probe run shift back so that no
 * lookup meets a hole before its key (no tombstones needed). */
static void map_remove(duet_kv_cache *kv, duet_block_hash h)
{
    uint32_t mask = kv->map_mask, i = map_home(kv, h);
    for (;; i = (i + 1) & mask) {
        assert(kv->map[i].block != NIL);
        if (hash_eq(kv->map[i].key, h))
            break;
    }
    uint32_t hole = i;
    for (uint32_t j = (hole + 1) & mask; kv->map[j].block != NIL; j = (j + 1) & mask) {
        uint32_t home = map_home(kv, kv->map[j].key);
        /* j's entry may fill the hole unless its home lies in (hole, j]. */
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            kv->map[hole] = kv->map[j];
            hole = j;
        }
    }
    kv->map[hole].block = NIL;
}

/* ---- free list -------------------------------------------------------- */

static void free_list_append(duet_kv_cache *kv, int32_t b)
{
    kv->prev[b] = kv->free_tail;
    kv->next[b] = NIL;
    if (kv->free_tail != NIL)
        kv->next[kv->free_tail] = b;
    else
        kv->free_head = b;
    kv->free_tail = b;
    kv->n_free++;
}

static void free_list_remove(duet_kv_cache *kv, int32_t b)
{
    if (kv->prev[b] != NIL)
        kv->next[kv->prev[b]] = kv->next[b];
    else
        kv->free_head = kv->next[b];
    if (kv->next[b] != NIL)
        kv->prev[kv->next[b]] = kv->prev[b];
    else
        kv->free_tail = kv->prev[b];
    kv->prev[b] = kv->next[b] = NIL;
    kv->n_free--;
}

static void uncache(duet_kv_cache *kv, int32_t b)
{
    if (!kv->has_hash[b])
        return;
    assert(map_find(kv, kv->hash[b]) == b);
    map_remove(kv, kv->hash[b]);
    kv->has_hash[b] = 0;
    kv->n_cached--;
}

/* ---- lifetime --------------------------------------------------------- */

duet_status duet_kv_cache_create(const duet_kv_cache_options *o, duet_kv_cache **out)
{
    *out = NULL;
    if (o->num_blocks < 2 || o->num_blocks > (1 << 29) || o->block_size <= 0)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "KV cache: %d blocks of %d tokens; need 2..%d blocks (block 0 is "
                          "reserved) and a positive block size",
                          o->num_blocks, o->block_size, 1 << 29);
    duet_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "KV cache: out of memory");
    size_t n = (size_t)o->num_blocks;
    uint32_t map_cap = 4;
    while (map_cap < 2 * n)
        map_cap *= 2;
    kv->ref = calloc(n, sizeof *kv->ref);
    kv->prev = malloc(n * sizeof *kv->prev);
    kv->next = malloc(n * sizeof *kv->next);
    kv->hash = calloc(n, sizeof *kv->hash);
    kv->has_hash = calloc(n, 1);
    kv->map = malloc(map_cap * sizeof *kv->map);
    if (!kv->ref || !kv->prev || !kv->next || !kv->hash || !kv->has_hash || !kv->map) {
        duet_kv_cache_free(kv);
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "KV cache: out of memory for %d blocks",
                          o->num_blocks);
    }
    kv->num_blocks = o->num_blocks;
    kv->block_size = o->block_size;
    kv->prefix_caching = o->enable_prefix_caching != 0;
    kv->map_mask = map_cap - 1;
    for (uint32_t i = 0; i < map_cap; i++)
        kv->map[i].block = NIL;
    kv->free_head = kv->free_tail = NIL;
    kv->prev[0] = kv->next[0] = NIL;
    /* Ascending ids, so a fresh pool hands out 1, 2, 3, ... */
    for (int32_t b = 1; b < o->num_blocks; b++)
        free_list_append(kv, b);
    *out = kv;
    return DUET_OK;
}

void duet_kv_cache_free(duet_kv_cache *kv)
{
    if (!kv)
        return;
    free(kv->map);
    free(kv->has_hash);
    free(kv->hash);
    free(kv->next);
    free(kv->prev);
    free(kv->ref);
    free(kv);
}

int duet_kv_cache_block_size(const duet_kv_cache *kv) { return kv->block_size; }

int duet_kv_cache_blocks_for(const duet_kv_cache *kv, int n_tokens)
{
    return n_tokens <= 0 ? 0 : (n_tokens - 1) / kv->block_size + 1;
}

int duet_kv_cache_ref_count(const duet_kv_cache *kv, int32_t block)
{
    assert(block >= 0 && block < kv->num_blocks);
    return kv->ref[block];
}

void duet_kv_cache_stats(const duet_kv_cache *kv, duet_kv_stats *out)
{
    out->num_blocks = kv->num_blocks - 1;
    out->free_blocks = kv->n_free;
    out->used_blocks = kv->num_blocks - 1 - kv->n_free;
    out->cached_blocks = kv->n_cached;
    out->prefix_queries = kv->prefix_queries;
    out->prefix_hits = kv->prefix_hits;
}

/* ---- sequences -------------------------------------------------------- */

void duet_kv_seq_init(duet_kv_seq *seq) { memset(seq, 0, sizeof *seq); }

void duet_kv_seq_set_extra(duet_kv_seq *seq, duet_block_hash extra)
{
    /* Hashes chained under another key describe other cache entries. */
    if (!hash_eq(seq->extra, extra))
        seq->n_hashes = 0;
    seq->extra = extra;
}

void duet_kv_seq_destroy(duet_kv_seq *seq)
{
    if (!seq)
        return;
    assert(seq->n_blocks == 0);
    free(seq->blocks);
    free(seq->hashes);
    duet_kv_seq_init(seq);
}

/* Capacity for at least want elements, doubling from cap. */
static int grown_cap(int cap, int want)
{
    int c = cap > 0 ? cap : 8;
    while (c < want)
        c = c > (1 << 29) ? want : c * 2;
    return c;
}

static int reserve_blocks(duet_kv_seq *seq, int want)
{
    if (want <= seq->cap_blocks)
        return 0;
    int c = grown_cap(seq->cap_blocks, want);
    int32_t *p = realloc(seq->blocks, (size_t)c * sizeof *p);
    if (!p)
        return -1;
    seq->blocks = p;
    seq->cap_blocks = c;
    return 0;
}

static int reserve_hashes(duet_kv_seq *seq, int want)
{
    if (want <= seq->cap_hashes)
        return 0;
    int c = grown_cap(seq->cap_hashes, want);
    duet_block_hash *p = realloc(seq->hashes, (size_t)c * sizeof *p);
    if (!p)
        return -1;
    seq->hashes = p;
    seq->cap_hashes = c;
    return 0;
}

duet_status duet_kv_cache_reserve(const duet_kv_cache *kv, duet_kv_seq *seq, int n_tokens)
{
    int want = duet_kv_cache_blocks_for(kv, n_tokens);
    if (reserve_blocks(seq, want))
        return duet_error(DUET_ERR_OUT_OF_MEMORY,
                          "KV cache: out of memory for a block table of %d blocks", want);
    return DUET_OK;
}

/* Extend seq->hashes to the first n_full blocks of tokens. */
static int hash_blocks(const duet_kv_cache *kv, duet_kv_seq *seq, const int32_t *tokens,
                       int n_full)
{
    if (reserve_hashes(seq, n_full))
        return -1;
    for (int i = seq->n_hashes; i < n_full; i++) {
        duet_block_hash parent = i == 0 ? ROOT_PARENT : seq->hashes[i - 1];
        seq->hashes[i] =
            block_hash(parent, tokens + (size_t)i * kv->block_size, kv->block_size, seq->extra);
    }
    if (seq->n_hashes < n_full)
        seq->n_hashes = n_full;
    return 0;
}

int duet_kv_cache_lookup(const duet_kv_cache *kv, duet_kv_seq *seq, const int32_t *tokens,
                         int n_tokens)
{
    assert(seq->n_blocks == 0);
    seq->n_hit_blocks = 0;
    /* The table will need this room anyway; taking it here, where failure
     * can be reported, spares allocate() a realloc. */
    if (duet_kv_cache_reserve(kv, seq, n_tokens))
        return -1;
    if (!kv->prefix_caching || n_tokens <= 0)
        return 0;
    int n_full = n_tokens / kv->block_size;
    if (hash_blocks(kv, seq, tokens, n_full)) {
        duet_error(DUET_ERR_OUT_OF_MEMORY, "KV cache: out of memory hashing %d blocks", n_full);
        return -1;
    }
    /* The last token's logits are needed, so it is always computed. */
    int cap = (n_tokens - 1) / kv->block_size;
    int hits = 0;
    while (hits < cap && map_find(kv, seq->hashes[hits]) != NIL)
        hits++;
    seq->n_hit_blocks = hits;
    return hits * kv->block_size;
}

/* Hit blocks (still to take) that sit on the free list. */
static int free_hits(const duet_kv_cache *kv, const duet_kv_seq *seq)
{
    int n = 0;
    for (int i = 0; i < seq->n_hit_blocks; i++) {
        int32_t b = map_find(kv, seq->hashes[i]);
        /* Evicted since the lookup (another allocation or a reset came in
         * between): the lookup is stale, so refuse until it is redone. */
        if (b == NIL)
            return INT_MAX;
        n += kv->ref[b] == 0;
    }
    return n;
}

static int taking_hits(const duet_kv_seq *seq)
{
    return seq->n_blocks == 0 && seq->n_hit_blocks > 0;
}

int duet_kv_cache_can_allocate(const duet_kv_cache *kv, const duet_kv_seq *seq, int n_tokens)
{
    int need = duet_kv_cache_blocks_for(kv, n_tokens);
    if (!taking_hits(seq))
        return need - seq->n_blocks <= kv->n_free;
    int hits = seq->n_hit_blocks;
    int fresh = need > hits ? need - hits : 0;
    int revived = free_hits(kv, seq);
    return revived != INT_MAX && fresh <= kv->n_free - revived;
}

static void push_block(duet_kv_seq *seq, int32_t b)
{
    /* Without a prior reserve/lookup the table grows here, and a host out
     * of memory on that small realloc cannot be reported. */
    int rc = reserve_blocks(seq, seq->n_blocks + 1);
    assert(rc == 0 && "block table growth failed; call duet_kv_cache_reserve first");
    (void)rc;
    seq->blocks[seq->n_blocks++] = b;
}

void duet_kv_cache_allocate(duet_kv_cache *kv, duet_kv_seq *seq, int n_tokens, int n_query_tokens)
{
    assert(duet_kv_cache_can_allocate(kv, seq, n_tokens));
    int need = duet_kv_cache_blocks_for(kv, n_tokens);
    if (seq->n_blocks == 0 && need > 0) {
        /* First allocation: take the lookup's hits, reviving freed ones. */
        for (int i = 0; i < seq->n_hit_blocks; i++) {
            int32_t b = map_find(kv, seq->hashes[i]);
            assert(b > 0);
            if (kv->ref[b]++ == 0)
                free_list_remove(kv, b);
            push_block(seq, b);
        }
        seq->n_committed = seq->n_hit_blocks;
        kv->prefix_queries += (uint64_t)(n_query_tokens > 0 ? n_query_tokens : 0);
        kv->prefix_hits += (uint64_t)seq->n_hit_blocks * (uint64_t)kv->block_size;
    }
    while (seq->n_blocks < need) {
        int32_t b = kv->free_head;
        assert(b > 0);
        free_list_remove(kv, b);
        uncache(kv, b); /* eviction: the block gets new content */
        kv->ref[b] = 1;
        push_block(seq, b);
    }
}

duet_status duet_kv_cache_commit(duet_kv_cache *kv, duet_kv_seq *seq, const int32_t *tokens,
                                 int n_computed)
{
    if (!kv->prefix_caching)
        return DUET_OK;
    int n_full = n_computed / kv->block_size;
    assert(n_full <= seq->n_blocks);
    if (n_full <= seq->n_committed)
        return DUET_OK;
    assert(seq->n_hashes >= seq->n_committed);
    if (hash_blocks(kv, seq, tokens, n_full))
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "KV cache: out of memory hashing %d blocks",
                          n_full);
    for (int i = seq->n_committed; i < n_full; i++) {
        int32_t b = seq->blocks[i];
        duet_block_hash h = seq->hashes[i];
        /* Blocks past the hits were fresh (evicted) when taken. */
        assert(!kv->has_hash[b]);
        if (map_find(kv, h) != NIL)
            continue; /* computed twice: the map keeps the first copy */
        map_insert(kv, h, b);
        kv->hash[b] = h;
        kv->has_hash[b] = 1;
        kv->n_cached++;
    }
    seq->n_committed = n_full;
    return DUET_OK;
}

void duet_kv_cache_free_seq(duet_kv_cache *kv, duet_kv_seq *seq)
{
    for (int i = seq->n_blocks - 1; i >= 0; i--) {
        int32_t b = seq->blocks[i];
        assert(b > 0 && b < kv->num_blocks && kv->ref[b] > 0);
        if (--kv->ref[b] == 0)
            free_list_append(kv, b);
    }
    /* The hashes go too (the array stays): a seq reused for other tokens
     * must never chain from stale hashes, and rehashing a preempted seq's
     * prompt costs far less than the prefill it saves. */
    seq->n_hashes = 0;
    seq->n_blocks = 0;
    seq->n_committed = 0;
    seq->n_hit_blocks = 0;
}

void duet_kv_cache_reset_prefix(duet_kv_cache *kv)
{
    for (uint32_t i = 0; i <= kv->map_mask; i++)
        kv->map[i].block = NIL;
    memset(kv->has_hash, 0, (size_t)kv->num_blocks);
    kv->n_cached = 0;
}

/* ---- invariants --------------------------------------------------------- */

static const char *fail(const duet_kv_cache *kv, const char *fmt, long a, long b)
{
    char *msg = (char *)kv->check_msg; /* scratch owned by kv, see header */
    snprintf(msg, sizeof kv->check_msg, fmt, a, b);
    return msg;
}

static const char *check_free_list(const duet_kv_cache *kv)
{
    int n_zero = 0;
    for (int32_t b = 1; b < kv->num_blocks; b++) {
        if (kv->ref[b] < 0)
            return fail(kv, "block %ld has ref count %ld", b, kv->ref[b]);
        if (kv->ref[b] == 0)
            n_zero++;
        else if (kv->prev[b] != NIL || kv->next[b] != NIL)
            return fail(kv, "block %ld is in use (ref %ld) but linked into the free list", b,
                        kv->ref[b]);
    }
    if (n_zero != kv->n_free)
        return fail(kv, "%ld blocks have ref 0 but the free count is %ld", n_zero, kv->n_free);
    /* A walk that ends after exactly n_free steps cannot have revisited a
     * block (a revisit would cycle forever), so it lists each ref-0 block
     * once when every block it meets has ref 0. */
    int32_t prev = NIL, b = kv->free_head;
    for (int steps = 0; b != NIL; steps++, prev = b, b = kv->next[b]) {
        if (steps >= kv->n_free)
            return fail(kv, "free list longer than the free count %ld (cycle at block %ld?)",
                        kv->n_free, b);
        if (b <= 0 || b >= kv->num_blocks)
            return fail(kv, "free list holds block id %ld (pool of %ld)", b, kv->num_blocks);
        if (kv->ref[b] != 0)
            return fail(kv, "free list holds block %ld with ref count %ld", b, kv->ref[b]);
        if (kv->prev[b] != prev)
            return fail(kv, "free list: block %ld's prev link is %ld", b, kv->prev[b]);
    }
    if (prev != kv->free_tail)
        return fail(kv, "free list ends at block %ld but its tail is %ld", prev, kv->free_tail);
    if (kv->n_free > 0 && prev == NIL)
        return fail(kv, "free list is empty but the free count is %ld", kv->n_free, 0);
    return NULL;
}

static const char *check_map(const duet_kv_cache *kv)
{
    int entries = 0, hashed = 0;
    for (uint32_t i = 0; i <= kv->map_mask; i++) {
        const map_slot *s = &kv->map[i];
        if (s->block == NIL)
            continue;
        entries++;
        if (s->block <= 0 || s->block >= kv->num_blocks)
            return fail(kv, "map slot %ld points at block id %ld", (long)i, s->block);
        if (!kv->has_hash[s->block] || !hash_eq(kv->hash[s->block], s->key))
            return fail(kv, "map slot %ld points at block %ld, which does not carry its hash",
                        (long)i, s->block);
        /* Reachable: no empty slot between the key's home and here. */
        for (uint32_t j = map_home(kv, s->key); j != i; j = (j + 1) & kv->map_mask)
            if (kv->map[j].block == NIL)
                return fail(kv, "map entry for block %ld at slot %ld is unreachable", s->block,
                            (long)i);
    }
    for (int32_t b = 0; b < kv->num_blocks; b++) {
        if (!kv->has_hash[b])
            continue;
        hashed++;
        if (map_find(kv, kv->hash[b]) != b)
            return fail(kv, "block %ld carries a hash the map does not give back (%ld)", b,
                        map_find(kv, kv->hash[b]));
    }
    if (entries != hashed || entries != kv->n_cached)
        return fail(kv, "map has %ld entries but %ld blocks carry a hash", entries, hashed);
    if (!kv->prefix_caching && entries)
        return fail(kv, "prefix caching is off but %ld blocks are cached", entries, 0);
    return NULL;
}

const char *duet_kv_cache_check(const duet_kv_cache *kv)
{
    if (kv->ref[0] != 0 || kv->has_hash[0])
        return fail(kv, "null block has ref count %ld, hash flag %ld", kv->ref[0],
                    kv->has_hash[0]);
    if (kv->free_head == 0 || kv->free_tail == 0 || kv->prev[0] != NIL || kv->next[0] != NIL)
        return fail(kv, "null block is linked into the free list (head %ld, tail %ld)",
                    kv->free_head, kv->free_tail);
    const char *msg = check_free_list(kv);
    return msg ? msg : check_map(kv);
}

#ifdef DUET_TESTING
void duet_kv_cache_test_corrupt(duet_kv_cache *kv, duet_kv_corruption what, int32_t block)
{
    assert(block >= 0 && block < kv->num_blocks);
    switch (what) {
    case DUET_KV_CORRUPT_REF_INC: kv->ref[block]++; break;
    case DUET_KV_CORRUPT_REF_DEC: kv->ref[block]--; break;
    case DUET_KV_CORRUPT_FREE_CYCLE: kv->next[block] = block; break;
    case DUET_KV_CORRUPT_HASH_BIT: kv->hash[block].hi ^= 1; break;
    }
}
#endif
