/*
 * test_vulkan_model.c — the Vulkan backend end to end on a real model
 * against the CPU backend: the same flattened batches through
 * duet_model_forward on both devices. Several prompts prefill together in
 * two chunks (teacher forcing: logits NMSE <= 2e-3 and top-1 agreement
 * >= 99.5% over every prompt position), then decode greedily together,
 * each device from its own argmax; the tokens must be identical.
 *
 * Model: $DUET_MODEL, else the default SmolLM2-135M Q4_1 in
 * ~/.cache/duet/models. Skips (77) without a model or a Vulkan device.
 * Fails on any validation message (DUET_VK_VALIDATION=1 unless set).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "../default_model.h"
#include "device.h"
#include "gguf.h"
#include "model.h"
#include "tokenizer.h"
#include "vk_internal.h" /* struct duet_buffer: the weights' chunks */
#include "vulkan_backend.h"

enum { MAX_PROMPTS = 4, BLOCK = 16, BLOCKS_PER_SEQ = 8, N_GENERATE = 16 };

static const char *const prompts[MAX_PROMPTS] = {
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea, there lived",
    "Water boils at 100 degrees Celsius. At the top of a high mountain it boils",
};

typedef struct side {
    duet_device *d;
    duet_model_weights w;
    duet_runner *r;
} side;

static struct {
    duet_gguf *g;
    duet_model_config cfg;
    duet_tokenizer *tok;
    side cpu, vk;
    int32_t *ids[MAX_PROMPTS];
    size_t n_ids[MAX_PROMPTS];
} st;

/* The run state over s's loaded weights. */
static duet_status side_runner(side *s)
{
    duet_runner_options o = {
        .max_tokens = 256, .max_seqs = MAX_PROMPTS, .max_logit_rows = 256,
        .num_blocks = 1 + MAX_PROMPTS * BLOCKS_PER_SEQ, .block_size = BLOCK,
        .max_blocks_per_seq = BLOCKS_PER_SEQ, .kv_type = DUET_F16, .sampling = 0,
    };
    return duet_runner_create(s->d, &st.cfg, &s->w, &o, &s->r);
}

static duet_status side_open(side *s, duet_device *d)
{
    s->d = d;
    duet_status rc = duet_model_weights_load(st.g, &st.cfg, d, &s->w);
    return rc ? rc : side_runner(s);
}

static void side_close(side *s)
{
    duet_runner_free(s->r);
    if (s->d)
        duet_model_weights_release(s->d, &s->w);
    duet_device_close(s->d);
}

/* A batch of the prompts' tokens [from[p], to[p]) (sequence p owns blocks
 * 1 + p*BLOCKS_PER_SEQ ...), logits for every token. */
typedef struct batch_buf {
    int32_t tokens[256], positions[256], slots[256], qsl[MAX_PROMPTS + 1];
    int32_t seq_lens[MAX_PROMPTS], tables[MAX_PROMPTS * BLOCKS_PER_SEQ], rows[256];
    duet_batch b;
} batch_buf;

static void make_batch(batch_buf *bb, int n_seqs, int32_t *const *ids, const int *from,
                       const int *to)
{
    int t = 0;
    bb->qsl[0] = 0;
    for (int s = 0; s < n_seqs; s++) {
        for (int i = 0; i < BLOCKS_PER_SEQ; i++)
            bb->tables[s * BLOCKS_PER_SEQ + i] = 1 + s * BLOCKS_PER_SEQ + i;
        for (int p = from[s]; p < to[s]; p++, t++) {
            assert_true(t < 256 && p < BLOCK * BLOCKS_PER_SEQ);
            bb->tokens[t] = ids[s][p];
            bb->positions[t] = p;
            bb->slots[t] = bb->tables[s * BLOCKS_PER_SEQ + p / BLOCK] * BLOCK + p % BLOCK;
            bb->rows[t] = t;
        }
        bb->qsl[s + 1] = t;
        bb->seq_lens[s] = to[s];
    }
    bb->b = (duet_batch){.n_tokens = t, .n_seqs = n_seqs, .tokens = bb->tokens,
                         .positions = bb->positions, .slot_mapping = bb->slots,
                         .query_start_loc = bb->qsl, .seq_lens = bb->seq_lens,
                         .block_tables = bb->tables, .logit_rows = bb->rows, .n_logit_rows = t};
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double time_cpu, time_vk; /* seconds in duet_model_forward */

static void forward_both(const duet_batch *bc, float *lc, const duet_batch *bv, float *lv)
{
    double t0 = now_s();
    assert_int_equal(duet_model_forward(st.cpu.r, bc, lc, NULL), DUET_OK);
    double t1 = now_s();
    assert_int_equal(duet_model_forward(st.vk.r, bv, lv, NULL), DUET_OK);
    double t2 = now_s();
    time_cpu += t1 - t0;
    time_vk += t2 - t1;
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static void test_model_vulkan_vs_cpu(void **state)
{
    (void)state;
    int V = st.cfg.vocab, n = MAX_PROMPTS;
    int32_t *seqs[MAX_PROMPTS], *seqs_vk[MAX_PROMPTS];
    int len[MAX_PROMPTS], from[MAX_PROMPTS], to[MAX_PROMPTS];
    for (int s = 0; s < n; s++) {
        len[s] = (int)st.n_ids[s];
        seqs[s] = calloc(BLOCK * BLOCKS_PER_SEQ, sizeof(int32_t));
        seqs_vk[s] = calloc(BLOCK * BLOCKS_PER_SEQ, sizeof(int32_t));
        memcpy(seqs[s], st.ids[s], 4 * st.n_ids[s]);
        memcpy(seqs_vk[s], st.ids[s], 4 * st.n_ids[s]);
    }
    float *lc = malloc(sizeof(float) * 256 * V), *lv = malloc(sizeof(float) * 256 * V);
    batch_buf bc, bv;

    /* Teacher forcing: the prompts in two prefill chunks. */
    double num = 0, den = 0;
    int agree = 0, positions = 0;
    for (int chunk = 0; chunk < 2; chunk++) {
        for (int s = 0; s < n; s++) {
            from[s] = chunk ? len[s] / 2 : 0;
            to[s] = chunk ? len[s] : len[s] / 2;
        }
        make_batch(&bc, n, seqs, from, to);
        for (size_t i = 0; i < 256ull * V; i++)
            lv[i] = NAN;
        forward_both(&bc.b, lc, &bc.b, lv);
        for (int t = 0; t < bc.b.n_tokens; t++) {
            const float *a = lc + (size_t)t * V, *b = lv + (size_t)t * V;
            for (int i = 0; i < V; i++) {
                if (!isfinite(b[i]))
                    fail_msg("Vulkan logit %d of row %d is %g", i, t, b[i]);
                double e = (double)b[i] - a[i];
                num += e * e;
                den += (double)a[i] * a[i];
            }
            agree += argmax(a, V) == argmax(b, V);
            positions++;
        }
    }
    double nmse = num / den;
    fprintf(stderr, "  teacher-forced: %d positions, top-1 agreement %.2f%%, logits NMSE %.3g "
            "(prefill: CPU %.2f s, Vulkan %.2f s)\n",
            positions, 100.0 * agree / positions, nmse, time_cpu, time_vk);
    time_cpu = time_vk = 0;
    assert_true(nmse <= 2e-3);
    assert_true(agree * 1000 >= positions * 995);

    /* Greedy decoding, all prompts in each step, each device on its own. */
    int first_diff = -1;
    for (int step = 0; step < N_GENERATE; step++) {
        for (int s = 0; s < n; s++) {
            from[s] = len[s] - 1;
            to[s] = len[s];
        }
        make_batch(&bc, n, seqs, from, to);
        make_batch(&bv, n, seqs_vk, from, to);
        forward_both(&bc.b, lc, &bv.b, lv);
        for (int s = 0; s < n; s++) {
            seqs[s][len[s]] = argmax(lc + (size_t)s * V, V);
            seqs_vk[s][len[s]] = argmax(lv + (size_t)s * V, V);
            if (first_diff < 0 && seqs[s][len[s]] != seqs_vk[s][len[s]])
                first_diff = step;
            len[s]++;
        }
    }
    fprintf(stderr, "  greedy: %d prompts x %d tokens, %s (decode: CPU %.2f s, Vulkan %.2f s)\n",
            n, N_GENERATE, first_diff < 0 ? "identical" : "DIFFERENT", time_cpu, time_vk);
    if (first_diff >= 0)
        fail_msg("greedy tokens differ from the CPU's at step %d", first_diff);
    for (int s = 0; s < n; s++)
        free(seqs[s]), free(seqs_vk[s]);
    free(lc), free(lv);
    int v = duet_vulkan_validation_errors(st.vk.d);
    if (v)
        fail_msg("the Vulkan validation layer reported %d message(s)", v);
}

static uint64_t held(duet_device *d)
{
    duet_device_info info;
    duet_dev_info(d, &info);
    return info.mem_total - info.mem_free;
}

/* On a device whose allocations are smaller than the file (forced to
 * 32 MiB here; about 4 GiB on desktop GPUs, where models are larger), the
 * weights are runs of whole tensors, each one allocation: device memory
 * about the file's size, where one buffer over the file would be
 * overlapping chunks of nearly twice it; the logits bitwise those of the
 * weights in one buffer. */
static void test_weights_within_max_alloc(void **state)
{
    (void)state;
    uint64_t cap = 32ull << 20, file = duet_gguf_file_size(st.g);
    char v[32];
    snprintf(v, sizeof v, "%llu", (unsigned long long)cap);
    setenv("DUET_VK_MAX_ALLOC", v, 1);
    side small = {0};
    duet_status rc = duet_vulkan_device_create(-1, NULL, 1, &small.d);
    unsetenv("DUET_VK_MAX_ALLOC");
    assert_int_equal(rc, DUET_OK);
    assert_true(file > cap);

    uint64_t before = held(small.d);
    duet_buffer *whole = NULL;
    assert_int_equal(duet_dev_buffer_alloc(small.d, file, &whole), DUET_OK);
    uint64_t one_buffer = held(small.d) - before;
    duet_dev_buffer_free(small.d, whole);
    assert_int_equal(held(small.d), before);

    if (duet_model_weights_load(st.g, &st.cfg, small.d, &small.w))
        fail_msg("loading on a device with 32 MiB allocations: %s", duet_last_error());
    uint64_t pieces = held(small.d) - before, sum = 0;
    assert_true(small.w.n_pieces > 1);
    for (int i = 0; i < small.w.n_pieces; i++) {
        assert_int_equal(small.w.pieces[i].buf->n_chunks, 1);
        assert_true(small.w.pieces[i].size <= cap);
        sum += small.w.pieces[i].size;
    }
    fprintf(stderr, "  weights with 32 MiB allocations: %d buffers, %.1f MiB of device memory "
            "(one buffer over the %.1f MiB file: %.1f MiB)\n",
            small.w.n_pieces, sum / 1048576.0, file / 1048576.0, one_buffer / 1048576.0);
    assert_true(pieces <= file);
    assert_true(one_buffer > file + file / 2);
    if (side_runner(&small))
        fail_msg("runner: %s", duet_last_error());

    /* The first half of every prompt, on both Vulkan devices. */
    int V = st.cfg.vocab, from[MAX_PROMPTS] = {0}, to[MAX_PROMPTS];
    for (int s = 0; s < MAX_PROMPTS; s++)
        to[s] = (int)st.n_ids[s] / 2;
    batch_buf b;
    make_batch(&b, MAX_PROMPTS, st.ids, from, to);
    float *one = malloc(sizeof(float) * 256 * V), *split = malloc(sizeof(float) * 256 * V);
    assert_int_equal(duet_model_forward(st.vk.r, &b.b, one, NULL), DUET_OK);
    assert_int_equal(duet_model_forward(small.r, &b.b, split, NULL), DUET_OK);
    assert_memory_equal(one, split, sizeof(float) * (size_t)b.b.n_tokens * V);
    free(one), free(split);
    int errors = duet_vulkan_validation_errors(small.d);
    side_close(&small);
    if (errors)
        fail_msg("the Vulkan validation layer reported %d message(s)", errors);
}

int main(void)
{
    if (!getenv("DUET_VK_VALIDATION"))
        setenv("DUET_VK_VALIDATION", "1", 1);
    char path[1024];
    duet_test_model_path(path, sizeof path);
    if (duet_gguf_open(path, &st.g) != DUET_OK) {
        fprintf(stderr, "test_vulkan_model: skipped: %s\n", duet_last_error());
        return 77;
    }
    duet_device *vkd = NULL, *cpud = NULL;
    if (duet_vulkan_device_create(-1, NULL, 1, &vkd) != DUET_OK) {
        fprintf(stderr, "test_vulkan_model: skipped: %s\n", duet_last_error());
        duet_gguf_close(st.g);
        return 77;
    }
    duet_device_options o = {0};
    int rc = 1;
    if (duet_model_config_read(st.g, &st.cfg) || duet_tokenizer_load(st.g, &st.tok) ||
        duet_cpu_device_create(&o, &cpud)) {
        fprintf(stderr, "test_vulkan_model: setup: %s\n", duet_last_error());
        duet_device_close(vkd);
        duet_device_close(cpud);
        goto out_tok;
    }
    st.cpu.d = cpud;
    st.vk.d = vkd;
    if (side_open(&st.cpu, cpud) || side_open(&st.vk, vkd)) {
        fprintf(stderr, "test_vulkan_model: setup: %s\n", duet_last_error());
        goto out;
    }
    for (int i = 0; i < MAX_PROMPTS; i++) {
        if (duet_tokenizer_encode(st.tok, prompts[i], strlen(prompts[i]),
                                  duet_tokenizer_add_bos(st.tok), 0, &st.ids[i], &st.n_ids[i])) {
            fprintf(stderr, "test_vulkan_model: encode: %s\n", duet_last_error());
            goto out;
        }
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_model_vulkan_vs_cpu),
                                       cmocka_unit_test(test_weights_within_max_alloc)};
    rc = cmocka_run_group_tests(tests, NULL, NULL);
out:
    for (int i = 0; i < MAX_PROMPTS; i++)
        free(st.ids[i]);
    side_close(&st.vk);
    side_close(&st.cpu);
out_tok:
    duet_tokenizer_free(st.tok);
    duet_gguf_close(st.g);
    return rc ? 1 : 0;
}
