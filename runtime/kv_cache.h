/*
 * kv_cache.h — the paged KV manager: a pool of fixed-size blocks with
 * reference counts, per-sequence block tables, and the prefix cache.
 *
 * Pure bookkeeping: no device calls. The device memory the block ids index
 * belongs to the model runner; this module only decides which ids.
 *
 * Blocks. Block 0 is the null block: never handed out, so an unused block
 * table entry (0) is harmless. Every other block is either in use (ref
 * count > 0) or on the free list (ref count 0). The free list is an
 * intrusive doubly-linked list over block ids, so a block can leave it
 * from the middle in O(1) (a prefix-cache hit on a freed block).
 *
 * Prefix cache (when enable_prefix_caching is set). Only full blocks are
 * cached. A full block's hash is XXH3-128 (seed 0) over the bytes: the
 * parent block's hash (lo then hi, each little-endian 64-bit), the block's
 * token ids (little-endian int32), the sequence's extra key such as a
 * cache_salt (lo then hi); the first block's parent is the fixed value
 * {lo 0x9e3779b97f4a7c15, hi 0xd1b54a32d192ed03}. A hash -> block map
 * finds cached blocks; it holds one block per hash. A freed block keeps
 * its hash while it sits on the free list, so a later request can revive
 * it; it loses the hash only when it is taken for new content (eviction).
 * Freeing a sequence appends its blocks to the free list tail in reverse
 * order, so eviction (from the head) takes the least recently used blocks
 * first and, within a sequence, its last blocks first — keeping the
 * longest shareable prefixes alive longest.
 *
 * Check/commit: duet_kv_cache_can_allocate() is pure; after it says yes,
 * duet_kv_cache_allocate() cannot fail.
 */
#ifndef DUET_KV_CACHE_H
#define DUET_KV_CACHE_H

#include <stdint.h>

#include "duet.h"

typedef struct duet_kv_cache duet_kv_cache;

typedef struct duet_block_hash {
    uint64_t lo, hi;
} duet_block_hash;

typedef struct duet_kv_cache_options {
    int num_blocks;            /* >= 2, including the null block */
    int block_size;            /* tokens per block, > 0 (16 by default) */
    int enable_prefix_caching; /* 1 = on */
} duet_kv_cache_options;

/* A sequence's hold on the cache. Embedded in the caller's request and
 * owned by it; zero-initialise (or duet_kv_seq_init), and always end with
 * duet_kv_cache_free_seq() then duet_kv_seq_destroy(). */
typedef struct duet_kv_seq {
    int32_t *blocks;          /* [n_blocks] the block table */
    int n_blocks, cap_blocks;
    duet_block_hash *hashes;  /* [n_hashes] chained hashes of the full
                                 blocks known so far (from lookup/commit) */
    int n_hashes, cap_hashes;
    int n_committed;          /* leading blocks registered in the cache */
    duet_block_hash extra;    /* extra key (cache_salt); all-zero = none */
    int n_hit_blocks;         /* blocks found by the last lookup */
} duet_kv_seq;

typedef struct duet_kv_stats {
    int num_blocks;    /* usable blocks (excluding the null block) */
    int used_blocks;   /* ref count > 0 */
    int free_blocks;   /* on the free list (some may hold cached content) */
    int cached_blocks; /* blocks with a registered hash, used or free */
    uint64_t prefix_queries; /* prompt tokens looked up, counted at allocation */
    uint64_t prefix_hits;    /* of which found in the cache */
} duet_kv_stats;

/* On failure *out is NULL. */
duet_status duet_kv_cache_create(const duet_kv_cache_options *o, duet_kv_cache **out);
void duet_kv_cache_free(duet_kv_cache *kv);

int duet_kv_cache_block_size(const duet_kv_cache *kv);
/* Blocks needed to hold n_tokens tokens. */
int duet_kv_cache_blocks_for(const duet_kv_cache *kv, int n_tokens);
void duet_kv_cache_stats(const duet_kv_cache *kv, duet_kv_stats *out);
/* How many sequences hold block (0 <= block < num_blocks). */
int duet_kv_cache_ref_count(const duet_kv_cache *kv, int32_t block);

void duet_kv_seq_init(duet_kv_seq *seq);
/* Set the extra key that isolates this sequence's cache entries (e.g. a
 * hash of cache_salt); call before lookup. A different key drops the
 * hashes computed under the old one. */
void duet_kv_seq_set_extra(duet_kv_seq *seq, duet_block_hash extra);
/* Free the seq's own arrays (after duet_kv_cache_free_seq). NULL-safe. */
void duet_kv_seq_destroy(duet_kv_seq *seq);

/* Prefix lookup for a sequence that holds no blocks yet: hash the full
 * blocks of tokens[0..n_tokens) into seq->hashes and count how many
 * leading blocks are cached, capped so that at least the last token is
 * computed (a hit never covers token n_tokens - 1). Records the count in
 * seq->n_hit_blocks and returns the cached token count (a multiple of the
 * block size). Changes nothing in kv. With prefix caching off, returns 0.
 * Also reserves the block table for n_tokens (see duet_kv_cache_reserve).
 * The result holds until the next allocate (of any seq) or reset_prefix:
 * follow it with can_allocate/allocate for this seq before those (if a
 * hit was evicted in between, can_allocate says no; look up again).
 * Hashes already in seq->hashes are reused: they must be of these tokens
 * (free_seq and a new extra key clear them, so a reused seq is safe).
 * Fails only for out of memory (returns -1). */
int duet_kv_cache_lookup(const duet_kv_cache *kv, duet_kv_seq *seq, const int32_t *tokens,
                         int n_tokens);

/* Pure: can seq grow to hold n_tokens tokens? Counts the blocks still to
 * allocate and, on the first allocation after a lookup, the hit blocks
 * that sit on the free list (reviving them takes them off it). */
int duet_kv_cache_can_allocate(const duet_kv_cache *kv, const duet_kv_seq *seq, int n_tokens);

/* Commit: make seq hold blocks for n_tokens tokens. On the first call
 * after a lookup, the hit blocks are taken first (reference counts
 * incremented, revived from the free list if free) and the query/hit
 * counters advance by n_query_tokens / the hit tokens. New blocks come
 * from the free list head (evicting their cached hash). Cannot fail after
 * can_allocate said yes (asserted). */
void duet_kv_cache_allocate(duet_kv_cache *kv, duet_kv_seq *seq, int n_tokens, int n_query_tokens);

/* After the device computed tokens[0..n_computed) of seq, register the
 * newly full blocks in the prefix cache (hash chain continued from
 * seq->hashes). If an identical block is already cached (computed twice
 * by sequences scheduled together), seq keeps its own copy and the map
 * keeps the first. No-op with prefix caching off. Fails only for out of
 * memory. */
duet_status duet_kv_cache_commit(duet_kv_cache *kv, duet_kv_seq *seq, const int32_t *tokens,
                                 int n_computed);

/* Make room in seq's block table for n_tokens tokens, so a later
 * allocate up to that size needs no host memory (allocate grows the table
 * itself otherwise, and cannot report a host out-of-memory there).
 * Fails only for out of memory. */
duet_status duet_kv_cache_reserve(const duet_kv_cache *kv, duet_kv_seq *seq, int n_tokens);

/* Drop seq's references: blocks reaching zero go to the free list tail,
 * last block first. seq is left empty (no blocks, no hashes; arrays kept
 * for reuse, e.g. after preemption). */
void duet_kv_cache_free_seq(duet_kv_cache *kv, duet_kv_seq *seq);

/* Forget every cached hash (e.g. after weights change). Blocks in use are
 * unaffected. */
void duet_kv_cache_reset_prefix(duet_kv_cache *kv);

/* Test support: check every invariant (ref counts >= 0, the free list
 * holds exactly the ref-0 blocks, each once, map entries point at blocks
 * that carry that hash, block 0 never handed out). Returns NULL when all
 * hold, else a description of the first violation (owned by kv, valid
 * until the next call). */
const char *duet_kv_cache_check(const duet_kv_cache *kv);

#ifdef DUET_TESTING
/* Test-only: break one invariant on purpose, so a test can show that
 * duet_kv_cache_check() notices. */
typedef enum duet_kv_corruption {
    DUET_KV_CORRUPT_REF_INC,    /* ref[block]++ */
    DUET_KV_CORRUPT_REF_DEC,    /* ref[block]-- */
    DUET_KV_CORRUPT_FREE_CYCLE, /* block's free-list next points at itself */
    DUET_KV_CORRUPT_HASH_BIT,   /* flip a bit of block's stored hash */
} duet_kv_corruption;
void duet_kv_cache_test_corrupt(duet_kv_cache *kv, duet_kv_corruption what, int32_t block);
#endif

#endif
