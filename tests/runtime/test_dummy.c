/*
 * Dummy weights (--load-format dummy): presets against the published
 * shapes, config.json parsing and its errors, the weights against the
 * generator specified in dummy.h (reimplemented here) within each type's
 * rounding error, determinism, the byte-level tokenizer, a real forward
 * pass on the smollm2-135m preset; and the GGUF writer underneath.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "dummy.h"
#include "duet_internal.h"
#include "gguf_write.h"
#include "quant.h"

/* ---- helpers ------------------------------------------------------------------ */

static const char *temp_path(const char *tag)
{
    static char buf[256];
    snprintf(buf, sizeof buf, "/tmp/duet_test_dummy_%d_%s", (int)getpid(), tag);
    return buf;
}

static const char *write_config(const char *tag, const char *json)
{
    const char *path = temp_path(tag);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(json, f);
    fclose(f);
    return path;
}

typedef struct built {
    void *image;
    size_t size;
    duet_gguf *g;
} built;

static void build(const char *config, duet_dtype wt, uint64_t seed, int threads, built *b)
{
    duet_dummy_options o = {config, wt, seed, threads, NULL, NULL};
    duet_status rc = duet_dummy_gguf(&o, &b->image, &b->size);
    if (rc)
        fail_msg("duet_dummy_gguf(%s): %s", config, duet_last_error());
    rc = duet_gguf_open_memory(b->image, b->size, config, &b->g);
    if (rc)
        fail_msg("duet_gguf_open_memory(%s): %s", config, duet_last_error());
}

static void unbuild(built *b)
{
    duet_gguf_close(b->g);
    free(b->image);
}

static const duet_gguf_tensor *tensor(const built *b, const char *name)
{
    const duet_gguf_tensor *t = duet_gguf_find_tensor(b->g, name);
    if (!t)
        fail_msg("tensor '%s' missing", name);
    return t;
}

static void assert_shape(const built *b, const char *name, int64_t row_len, int64_t rows,
                         duet_dtype type)
{
    const duet_gguf_tensor *t = tensor(b, name);
    if (t->ne[0] != row_len || t->ne[1] != rows || t->type != type)
        fail_msg("%s: [%lld][%lld] type %d; expected [%lld][%lld] type %d", name,
                 (long long)t->ne[1], (long long)t->ne[0], (int)t->type, (long long)rows,
                 (long long)row_len, (int)type);
}

/* ---- the generator, written again from dummy.h's specification ------------------ */

static uint64_t ref_mix(uint64_t z)
{
    /* splitmix64's finalizer (Steele, Lea, Flood 2014) */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float ref_value(uint64_t seed, const char *name, uint64_t i, int norm)
{
    uint64_t fnv = 14695981039346656037ull;
    for (size_t k = 0; name[k]; k++)
        fnv = (fnv ^ (unsigned char)name[k]) * 1099511628211ull;
    uint64_t key = ref_mix(seed ^ ref_mix(fnv));
    uint64_t h = ref_mix(key + (i / 2 + 1) * 0x9E3779B97F4A7C15ull);
    uint32_t bits = (uint32_t)(i & 1 ? h >> 32 : h & 0xffffffffu) >> 8;
    float u = ((float)bits + 0.5f) / 8388608.0f - 1.0f;
    return norm ? 1.0f + 0.1f * u : 0.034641016f * u;
}

/* ---- presets --------------------------------------------------------------------- */

typedef struct published {
    const char *name;
    int layers, dim, heads, kv_heads, head_dim, ffn, vocab, ctx;
    float theta;
    int tied, qwen2;
    float rope_factor; /* llama3 scaling; 0 = none */
} published;

/* From the models' config.json files on the Hugging Face Hub. */
static const published shapes[] = {
    {"smollm2-135m", 30, 576, 9, 3, 64, 1536, 49152, 8192, 100000, 1, 0, 0},
    {"smollm2-360m", 32, 960, 15, 5, 64, 2560, 49152, 8192, 100000, 1, 0, 0},
    {"smollm2-1.7b", 24, 2048, 32, 32, 64, 8192, 49152, 8192, 130000, 1, 0, 0},
    {"llama-3.2-1b", 16, 2048, 32, 8, 64, 8192, 128256, 131072, 500000, 1, 0, 32},
    {"llama-3.2-3b", 28, 3072, 24, 8, 128, 8192, 128256, 131072, 500000, 1, 0, 32},
    {"llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, 131072, 500000, 0, 0, 8},
    {"mistral-7b", 32, 4096, 32, 8, 128, 14336, 32000, 32768, 10000, 0, 0, 0},
    {"qwen2.5-0.5b", 24, 896, 14, 2, 64, 4864, 151936, 32768, 1000000, 1, 1, 0},
    {"qwen2.5-7b", 28, 3584, 28, 4, 128, 18944, 152064, 32768, 1000000, 0, 1, 0},
};

/* Bytes of the weights of a published shape in weight type wt. */
static uint64_t weight_bytes(const published *p, duet_dtype wt)
{
    uint64_t e = p->dim, qd = (uint64_t)p->heads * p->head_dim;
    uint64_t kvd = (uint64_t)p->kv_heads * p->head_dim;
    uint64_t per_layer = e * qd + 2 * e * kvd + qd * e + 3 * e * p->ffn;
    uint64_t params = (uint64_t)p->layers * per_layer + (p->tied ? 1 : 2) * e * p->vocab;
    const duet_dtype_info *info = duet_dtype_get(wt);
    return params / info->block_elems * info->block_bytes;
}

static void test_presets_sizes(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        assert_non_null(strstr(duet_dummy_presets(), shapes[i].name));
        const duet_dtype types[] = {DUET_F32, DUET_BF16, DUET_Q8_0, DUET_Q4_1};
        for (size_t k = 0; k < 4; k++) {
            duet_dummy_options o = {shapes[i].name, types[k], 1, 1, NULL, NULL};
            uint64_t size = 0, want = weight_bytes(&shapes[i], types[k]);
            if (duet_dummy_image_size(&o, &size))
                fail_msg("%s: %s", shapes[i].name, duet_last_error());
            /* Norms, biases, rope factors, padding and the vocabulary add
             * at most a few MB. */
            if (size < want || size > want + 16u * 1024 * 1024)
                fail_msg("%s %s: image %llu bytes, weights alone %llu", shapes[i].name,
                         duet_dtype_get(types[k])->name, (unsigned long long)size,
                         (unsigned long long)want);
        }
    }
}

/* Build the smaller presets and read them back as the model loader does. */
static void test_presets_config(void **state)
{
    (void)state;
    const published *want[] = {&shapes[0], &shapes[7]};
    for (int i = 0; i < 2; i++) {
        const published *p = want[i];
        built b;
        build(p->name, DUET_Q4_1, 7, 0, &b);
        duet_model_config c;
        if (duet_model_config_read(b.g, &c))
            fail_msg("%s: %s", p->name, duet_last_error());
        assert_string_equal(c.arch, p->qwen2 ? "qwen2" : "llama");
        assert_int_equal(c.n_layers, p->layers);
        assert_int_equal(c.dim, p->dim);
        assert_int_equal(c.n_heads, p->heads);
        assert_int_equal(c.n_kv_heads, p->kv_heads);
        assert_int_equal(c.head_dim, p->head_dim);
        assert_int_equal(c.ffn_dim, p->ffn);
        assert_int_equal(c.vocab, p->vocab);
        assert_int_equal(c.context_length, p->ctx);
        assert_true(c.rope_theta == p->theta);
        assert_int_equal(c.tied_embeddings, p->tied);
        assert_int_equal(c.has_qkv_bias, p->qwen2);
        assert_int_equal(c.rope_scaling, DUET_ROPE_SCALING_NONE);
        assert_shape(&b, "token_embd.weight", p->dim, p->vocab, DUET_Q4_1);
        assert_null(duet_gguf_find_tensor(b.g, "output.weight"));
        assert_int_equal(duet_gguf_n_tensors(b.g), 2 + p->layers * (p->qwen2 ? 12 : 9));

        duet_tokenizer *tok;
        if (duet_tokenizer_load(b.g, &tok))
            fail_msg("%s tokenizer: %s", p->name, duet_last_error());
        assert_int_equal(duet_tokenizer_vocab_size(tok), p->vocab);
        assert_int_equal(duet_tokenizer_bos(tok), 256);
        assert_int_equal(duet_tokenizer_eos(tok), 257);
        assert_true(duet_tokenizer_is_eog(tok, 257));
        /* No merges: every byte is its own token, whose id is the byte. */
        const char text[] = "Hi \xc3\xa9\n<|bos|>";
        int32_t *ids;
        size_t n;
        assert_int_equal(duet_tokenizer_encode(tok, text, strlen(text), 0, 1, &ids, &n), DUET_OK);
        assert_int_equal(n, 7);
        for (size_t k = 0; k < 6; k++)
            assert_int_equal(ids[k], (unsigned char)text[k]);
        assert_int_equal(ids[6], 256);
        free(ids);
        for (int byte = 0; byte < 256; byte++) {
            size_t len;
            const char *s = duet_tokenizer_token_bytes(tok, byte, &len);
            if (!s || len != 1 || (unsigned char)s[0] != byte)
                fail_msg("%s: token %d decodes to %zu bytes, not byte %d", p->name, byte,
                         s ? len : 0, byte);
        }
        duet_tokenizer_free(tok);
        unbuild(&b);
    }
}

/* The whole path: file -> duet_model_load -> a forward pass with finite,
 * non-constant logits. */
static void test_preset_forward(void **state)
{
    (void)state;
    built b;
    build("smollm2-135m", DUET_Q8_0, 42, 0, &b);
    const char *path = temp_path("smollm2.gguf");
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b.image, 1, b.size, f), b.size);
    fclose(f);
    unbuild(&b);

    duet_model_options mo = {.device = "cpu", .n_threads = 2};
    duet_model *m;
    if (duet_model_load(path, &mo, &m))
        fail_msg("load: %s", duet_last_error());
    duet_session_options so = {32};
    duet_session *s;
    assert_int_equal(duet_session_create(m, &so, &s), DUET_OK);
    enum { N = 6, V = 49152 };
    const int32_t ids[N] = {256, 'H', 'e', 'l', 'l', 'o'};
    float *logits = malloc(sizeof(float) * N * V);
    for (size_t i = 0; i < (size_t)N * V; i++)
        logits[i] = NAN;
    if (duet_eval_logits(s, ids, N, logits))
        fail_msg("forward: %s", duet_last_error());
    double sum = 0, sq = 0;
    for (size_t i = 0; i < (size_t)N * V; i++) {
        if (!isfinite(logits[i]))
            fail_msg("logit %zu is %g", i, logits[i]);
        sum += logits[i];
        sq += (double)logits[i] * logits[i];
    }
    double var = sq / (N * V) - (sum / (N * V)) * (sum / (N * V));
    assert_true(var > 1e-4);
    free(logits);
    duet_session_free(s);
    duet_model_free(m);
    unlink(path);
}

/* ---- config.json --------------------------------------------------------------- */

static const char *qwen2_json =
    "{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":96,"
    "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
    "\"vocab_size\":300,\"max_position_embeddings\":512,\"rms_norm_eps\":1e-6,"
    "\"rope_theta\":1000000.0,\"tie_word_embeddings\":false}";

static void test_config_qwen2(void **state)
{
    (void)state;
    built b;
    build(write_config("qwen2.json", qwen2_json), DUET_F16, 3, 0, &b);
    duet_model_config c;
    assert_int_equal(duet_model_config_read(b.g, &c), DUET_OK);
    assert_string_equal(c.arch, "qwen2");
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.tied_embeddings, 0);
    assert_true(c.norm_eps == 1e-6f);
    assert_shape(&b, "token_embd.weight", 64, 300, DUET_F16);
    assert_shape(&b, "output.weight", 64, 300, DUET_F16);
    assert_shape(&b, "output_norm.weight", 64, 1, DUET_F32);
    for (int l = 0; l < 2; l++) {
        char n[64];
#define SHAPE(suffix, r, rows, t)                                                          \
    (snprintf(n, sizeof n, "blk.%d.%s", l, suffix), assert_shape(&b, n, r, rows, t))
        SHAPE("attn_norm.weight", 64, 1, DUET_F32);
        SHAPE("attn_q.weight", 64, 64, DUET_F16);
        SHAPE("attn_k.weight", 64, 32, DUET_F16);
        SHAPE("attn_v.weight", 64, 32, DUET_F16);
        SHAPE("attn_q.bias", 64, 1, DUET_F32);
        SHAPE("attn_k.bias", 32, 1, DUET_F32);
        SHAPE("attn_v.bias", 32, 1, DUET_F32);
        SHAPE("attn_output.weight", 64, 64, DUET_F16);
        SHAPE("ffn_norm.weight", 64, 1, DUET_F32);
        SHAPE("ffn_gate.weight", 64, 96, DUET_F16);
        SHAPE("ffn_up.weight", 64, 96, DUET_F16);
        SHAPE("ffn_down.weight", 96, 64, DUET_F16);
#undef SHAPE
    }
    assert_int_equal(duet_gguf_n_tensors(b.g), 3 + 2 * 12);
    /* Biases are drawn like matrices. */
    const duet_gguf_tensor *bias = tensor(&b, "blk.1.attn_k.bias");
    for (int i = 0; i < 32; i++)
        assert_true(((const float *)bias->data)[i] == ref_value(3, "blk.1.attn_k.bias", i, 0));
    unbuild(&b);
}

/* Llama 3 scaling with non-default frequency factors and a head_dim that
 * is not hidden_size / heads. */
static void test_config_llama3(void **state)
{
    (void)state;
    const char *json =
        "{\"model_type\":\"llama\",\"hidden_size\":128,\"intermediate_size\":64,"
        "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"head_dim\":48,"
        "\"vocab_size\":258,\"max_position_embeddings\":4096,\"rms_norm_eps\":1e-5,"
        "\"rope_theta\":500000,\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":16.0,"
        "\"low_freq_factor\":2.0,\"high_freq_factor\":8.0,"
        "\"original_max_position_embeddings\":1024}}";
    built b;
    build(write_config("llama3.json", json), DUET_F32, 5, 0, &b);
    duet_model_config c;
    if (duet_model_config_read(b.g, &c))
        fail_msg("%s", duet_last_error());
    assert_int_equal(c.n_kv_heads, 4); /* defaults to the head count */
    assert_int_equal(c.head_dim, 48);
    assert_int_equal(c.rope_dim, 48);
    assert_int_equal(c.tied_embeddings, 0); /* HF's default for llama */
    assert_int_equal(c.rope_scaling, DUET_ROPE_SCALING_LLAMA3);
    assert_true(c.rope_scale == 16.0f);
    assert_int_equal(c.rope_orig_context, 1024);
    assert_shape(&b, "blk.0.attn_q.weight", 128, 192, DUET_F32);
    assert_shape(&b, "blk.0.attn_output.weight", 192, 128, DUET_F32);
    assert_shape(&b, "output.weight", 128, 258, DUET_F32);
    assert_shape(&b, "rope_freqs.weight", 24, 1, DUET_F32);
    /* Llama 3.1's rule, from Meta's published apply_scaling. */
    const float *f = tensor(&b, "rope_freqs.weight")->data;
    for (int i = 0; i < 24; i++) {
        double freq = pow(500000.0, -2.0 * i / 48), wl = 2 * M_PI / freq, want;
        if (wl < 1024 / 8.0)
            want = 1.0;
        else if (wl > 1024 / 2.0)
            want = 16.0;
        else {
            double smooth = (1024 / wl - 2.0) / (8.0 - 2.0);
            want = freq / ((1 - smooth) * freq / 16.0 + smooth * freq);
        }
        if (fabs(f[i] - want) > 1e-4 * want)
            fail_msg("rope_freqs[%d] = %g, want %g", i, f[i], want);
    }
    unbuild(&b);
}

static void expect_failure(const char *config, duet_dtype wt, duet_status want,
                           const char *needle1, const char *needle2)
{
    duet_dummy_options o = {config, wt, 1, 1, NULL, NULL};
    void *image = (void *)1;
    size_t size = 1;
    duet_status rc = duet_dummy_gguf(&o, &image, &size);
    if (rc != want || !strstr(duet_last_error(), needle1) ||
        (needle2 && !strstr(duet_last_error(), needle2)))
        fail_msg("config %s: status %d (want %d), message \"%s\" (want '%s', '%s')", config,
                 (int)rc, (int)want, duet_last_error(), needle1, needle2 ? needle2 : "");
    assert_null(image);
    assert_int_equal(size, 0);
    uint64_t isize;
    assert_int_equal(duet_dummy_image_size(&o, &isize), want);
}

static void test_config_errors(void **state)
{
    (void)state;
    expect_failure("llama-9b", DUET_Q4_1, DUET_ERR_INVALID_ARG, "llama-9b", "smollm2-135m");
    expect_failure("smollm2-135m", DUET_Q4_K, DUET_ERR_INVALID_ARG, "Q4_K", "Q8_0");
    expect_failure("/nonexistent/config.json", DUET_F32, DUET_ERR_IO, "/nonexistent", NULL);
    expect_failure(write_config("bad.json", "{\"hidden_size\": 64,"), DUET_F32, DUET_ERR_FORMAT,
                   "bad.json", NULL);
    const struct { const char *json, *n1, *n2; duet_status st; } cases[] = {
        {"{\"model_type\":\"llama\",\"intermediate_size\":96,\"num_hidden_layers\":2,"
         "\"num_attention_heads\":4,\"vocab_size\":300,\"max_position_embeddings\":64}",
         "'hidden_size'", "missing", DUET_ERR_FORMAT},
        {"{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":96,"
         "\"num_hidden_layers\":2,\"num_attention_heads\":5,\"vocab_size\":300,"
         "\"max_position_embeddings\":64}",
         "num_attention_heads 5", "hidden_size 64", DUET_ERR_FORMAT},
        {"{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":96,"
         "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":3,"
         "\"vocab_size\":300,\"max_position_embeddings\":64}",
         "num_key_value_heads 3", NULL, DUET_ERR_FORMAT},
        {"{\"model_type\":\"llama\",\"hidden_size\":\"64\",\"intermediate_size\":96}",
         "'hidden_size'", "integer", DUET_ERR_FORMAT},
        {"{\"model_type\":\"gpt_neox\",\"hidden_size\":64}", "gpt_neox", NULL,
         DUET_ERR_UNSUPPORTED},
        {"{\"hidden_size\":64}", "model_type", NULL, DUET_ERR_FORMAT},
        {"{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":96,"
         "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100,"
         "\"max_position_embeddings\":64}",
         "vocab_size 100", NULL, DUET_ERR_FORMAT},
        {"{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":96,"
         "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":300,"
         "\"max_position_embeddings\":64,\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4}}",
         "yarn", NULL, DUET_ERR_UNSUPPORTED},
        /* 96 is not whole Q8_0 blocks of 32?  It is; 80 is not. */
        {"{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":80,"
         "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":300,"
         "\"max_position_embeddings\":64}",
         "intermediate_size 80", "Q8_0", DUET_ERR_FORMAT},
    };
    expect_failure(write_config("err_hd.json",
                                "{\"model_type\":\"llama\",\"hidden_size\":64,"
                                "\"intermediate_size\":96,\"num_hidden_layers\":2,"
                                "\"num_attention_heads\":4,\"head_dim\":15,\"vocab_size\":300,"
                                "\"max_position_embeddings\":64}"),
                   DUET_F32, DUET_ERR_FORMAT, "head_dim 15", NULL);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char tag[32];
        snprintf(tag, sizeof tag, "err%zu.json", i);
        expect_failure(write_config(tag, cases[i].json), DUET_Q8_0, cases[i].st, cases[i].n1,
                       cases[i].n2);
    }
}

/* ---- weights ------------------------------------------------------------------- */

static void test_determinism(void **state)
{
    (void)state;
    const char *cfg = write_config("det.json", qwen2_json);
    built a, b, c;
    build(cfg, DUET_Q4_1, 11, 1, &a);
    build(cfg, DUET_Q4_1, 11, 3, &b); /* another thread count */
    build(cfg, DUET_Q4_1, 12, 2, &c);
    assert_int_equal(a.size, b.size);
    assert_memory_equal(a.image, b.image, a.size);
    assert_int_equal(a.size, c.size);
    assert_int_equal(duet_gguf_data_offset(a.g), duet_gguf_data_offset(c.g));
    /* Same metadata, different weights in every tensor. */
    assert_memory_equal(a.image, c.image, duet_gguf_data_offset(a.g));
    for (int64_t i = 0; i < duet_gguf_n_tensors(a.g); i++) {
        const duet_gguf_tensor *ta = duet_gguf_tensor_at(a.g, i), *tc = duet_gguf_tensor_at(c.g, i);
        assert_int_equal(ta->nbytes, tc->nbytes);
        assert_memory_not_equal(ta->data, tc->data, ta->nbytes);
    }
    unbuild(&a);
    unbuild(&b);
    unbuild(&c);
}

/* Every matrix element against the specified generator, within the
 * rounding error of the type; norms exact. */
static void check_weights(duet_dtype wt)
{
    const char *cfg = write_config("vals.json", qwen2_json);
    const uint64_t seed = 0x1234567887654321ull;
    built b;
    build(cfg, wt, seed, 2, &b);
    double sum = 0, sq = 0;
    int64_t count = 0;
    for (int64_t ti = 0; ti < duet_gguf_n_tensors(b.g); ti++) {
        const duet_gguf_tensor *t = duet_gguf_tensor_at(b.g, ti);
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        int norm = strstr(name, "norm") != NULL, bias = strstr(name, "bias") != NULL;
        assert_int_equal(t->type, norm || bias ? DUET_F32 : wt);
        int64_t n = t->ne[0], rows = t->ne[1];
        size_t row_bytes = duet_dtype_row_bytes(t->type, n);
        float *got = malloc(sizeof(float) * n);
        for (int64_t r = 0; r < rows; r++) {
            const uint8_t *row = (const uint8_t *)t->data + r * row_bytes;
            for (int64_t k = 0; k < n; k++)
                got[k] = NAN;
            duet_dequant_row(t->type, row, got, n);
            for (int64_t k = 0; k < n; k++) {
                float want = ref_value(seed, name, (uint64_t)(r * n + k), norm);
                int quant = t->type == DUET_Q8_0 || t->type == DUET_Q4_0 || t->type == DUET_Q4_1;
                float d = 0, m = 0, d_signed = 0;
                if (quant) {
                    const duet_dtype_info *info = duet_dtype_get(t->type);
                    const uint8_t *blk = row + (k / 32) * info->block_bytes;
                    d_signed = duet_f16_to_f32((uint16_t)(blk[0] | blk[1] << 8));
                    d = fabsf(d_signed);
                    if (t->type == DUET_Q4_1)
                        m = duet_f16_to_f32((uint16_t)(blk[2] | blk[3] << 8));
                }
                double tol;
                switch (t->type) {
                case DUET_F32: tol = 0; break;
                case DUET_F16: tol = fabsf(want) * 0x1p-11 + 0x1p-25; break;
                case DUET_BF16: tol = fabsf(want) * 0x1p-8; break;
                case DUET_Q8_0: tol = d / 2 * 1.01; break;
                /* Q4_0 levels are d * (-8..7): only values beyond 7.5 d
                 * lack a level within d / 2. */
                case DUET_Q4_0: tol = (want / d_signed > 7.5f ? d : d / 2) * 1.01; break;
                case DUET_Q4_1: tol = d / 2 + 15 * d * 0x1p-10 + fabsf(m) * 0x1p-10; break;
                default: tol = -1;
                }
                if (!(fabs(got[k] - want) <= tol))
                    fail_msg("%s %s[%lld][%lld] = %.9g, want %.9g (tolerance %g)",
                             duet_dtype_get(wt)->name, name, (long long)r, (long long)k,
                             got[k], want, tol);
                if (!norm) {
                    sum += got[k];
                    sq += (double)got[k] * got[k];
                    count++;
                } else {
                    assert_true(got[k] >= 0.9f && got[k] <= 1.1f);
                }
            }
        }
        free(got);
    }
    double mean = sum / count, sd = sqrt(sq / count - mean * mean);
    if (fabs(mean) > 1e-3 || sd < 0.018 || sd > 0.022)
        fail_msg("%s: weights have mean %g, sd %g; want ~0, 0.02", duet_dtype_get(wt)->name, mean,
                 sd);
    unbuild(&b);
}

static void test_weights_f32(void **state) { (void)state; check_weights(DUET_F32); }
static void test_weights_f16(void **state) { (void)state; check_weights(DUET_F16); }
static void test_weights_bf16(void **state) { (void)state; check_weights(DUET_BF16); }
static void test_weights_q8_0(void **state) { (void)state; check_weights(DUET_Q8_0); }
static void test_weights_q4_0(void **state) { (void)state; check_weights(DUET_Q4_0); }
static void test_weights_q4_1(void **state) { (void)state; check_weights(DUET_Q4_1); }

static void count_progress(void *user, uint64_t done, uint64_t total)
{
    uint64_t *last = user;
    assert_true(done > last[0] && done <= total);
    last[0] = done;
    last[1] = total;
}

static void test_progress(void **state)
{
    (void)state;
    uint64_t seen[2] = {0, 0};
    duet_dummy_options o = {write_config("prog.json", qwen2_json), DUET_F32, 1, 1,
                            count_progress, seen};
    void *image;
    size_t size;
    assert_int_equal(duet_dummy_gguf(&o, &image, &size), DUET_OK);
    assert_true(seen[1] > 0 && seen[0] == seen[1]);
    free(image);
}

/* ---- the writer ------------------------------------------------------------------ */

static void test_writer_roundtrip(void **state)
{
    (void)state;
    duet_gguf_writer *w;
    assert_int_equal(duet_gguf_writer_create(64, &w), DUET_OK);
    duet_gguf_writer_u32(w, "a.u32", 0xdeadbeef);
    duet_gguf_writer_f32(w, "a.f32", -2.5f);
    duet_gguf_writer_bool(w, "a.bool", 1);
    duet_gguf_writer_str(w, "a.str", "hello");
    duet_gguf_writer_arr(w, "a.strs", DUET_GGUF_STRING, 2);
    duet_gguf_writer_arr_str(w, "x", 1);
    duet_gguf_writer_arr_str(w, "yz", 2);
    duet_gguf_writer_arr(w, "a.ints", DUET_GGUF_INT32, 3);
    for (int i = 0; i < 3; i++)
        duet_gguf_writer_arr_i32(w, -i);
    int64_t ne1[1] = {5}, ne2[2] = {64, 3};
    duet_gguf_writer_tensor(w, "t.vec", 1, ne1, DUET_F32);
    assert_int_equal(duet_gguf_writer_tensor(w, "t.q", 2, ne2, DUET_Q8_0), DUET_OK);
    assert_int_equal(duet_gguf_writer_n_tensors(w), 2);
    assert_int_equal(duet_gguf_writer_tensor_bytes(w, 1), 3 * 2 * 34);
    void *image;
    size_t size;
    assert_int_equal(duet_gguf_writer_finish(w, &image, &size), DUET_OK);
    assert_int_equal(size, duet_gguf_writer_size(w));
    memset((char *)image + duet_gguf_writer_tensor_offset(w, 0), 0x11, 20);
    memset((char *)image + duet_gguf_writer_tensor_offset(w, 1), 0x22, 204);
    /* No more keys after the image is laid out. */
    assert_int_equal(duet_gguf_writer_u32(w, "late", 1), DUET_ERR_INVALID_ARG);
    duet_gguf_writer_free(w);

    duet_gguf *g;
    if (duet_gguf_open_memory(image, size, "roundtrip", &g))
        fail_msg("%s", duet_last_error());
    assert_int_equal(duet_gguf_version(g), 3);
    assert_int_equal(duet_gguf_alignment(g), 64);
    assert_int_equal(duet_gguf_data_offset(g) % 64, 0);
    uint32_t u;
    float f;
    int bl;
    duet_gguf_str s;
    const duet_gguf_kv *kv;
    assert_int_equal(duet_gguf_get_u32(g, "a.u32", &u), DUET_OK);
    assert_int_equal(u, 0xdeadbeef);
    assert_int_equal(duet_gguf_get_f32(g, "a.f32", &f), DUET_OK);
    assert_true(f == -2.5f);
    assert_int_equal(duet_gguf_get_bool_or(g, "a.bool", 0, &bl), DUET_OK);
    assert_int_equal(bl, 1);
    assert_int_equal(duet_gguf_get_str(g, "a.str", &s), DUET_OK);
    assert_true(duet_gguf_str_eq(s, "hello"));
    assert_int_equal(duet_gguf_get_arr(g, "a.strs", DUET_GGUF_STRING, &kv), DUET_OK);
    assert_int_equal(kv->n_elems, 2);
    assert_true(duet_gguf_str_eq(kv->strs[1], "yz"));
    assert_int_equal(duet_gguf_get_arr(g, "a.ints", DUET_GGUF_INT32, &kv), DUET_OK);
    assert_int_equal(duet_gguf_arr_int(kv, 2), -2);
    const duet_gguf_tensor *t = duet_gguf_find_tensor(g, "t.q");
    assert_non_null(t);
    assert_int_equal(t->ne[0], 64);
    assert_int_equal(t->ne[1], 3);
    assert_int_equal(t->type, DUET_Q8_0);
    assert_int_equal(t->offset % 64, 0);
    assert_int_equal(((const uint8_t *)t->data)[203], 0x22);
    t = duet_gguf_find_tensor(g, "t.vec");
    assert_int_equal(t->n_dims, 1);
    assert_int_equal(((const uint8_t *)t->data)[19], 0x11);
    /* Padding after a tensor is zero. */
    assert_int_equal(((const uint8_t *)t->data)[20], 0);
    duet_gguf_close(g);
    free(image);
}

static void test_writer_misuse(void **state)
{
    (void)state;
    duet_gguf_writer *w;
    void *image = NULL;
    size_t size;
    int64_t ne[2] = {33, 2};

    assert_int_equal(duet_gguf_writer_create(48, &w), DUET_ERR_INVALID_ARG);
    assert_null(w);

    /* An array one element short: the next key fails, and stays failed. */
    assert_int_equal(duet_gguf_writer_create(0, &w), DUET_OK);
    duet_gguf_writer_arr(w, "arr", DUET_GGUF_INT32, 2);
    duet_gguf_writer_arr_i32(w, 1);
    assert_int_equal(duet_gguf_writer_u32(w, "next", 1), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "arr"));
    assert_int_equal(duet_gguf_writer_finish(w, &image, &size), DUET_ERR_INVALID_ARG);
    assert_null(image);
    duet_gguf_writer_free(w);

    assert_int_equal(duet_gguf_writer_create(0, &w), DUET_OK);
    duet_gguf_writer_str(w, "k", "v");
    assert_int_equal(duet_gguf_writer_str(w, "k", "v"), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "duplicate key 'k'"));
    duet_gguf_writer_free(w);

    assert_int_equal(duet_gguf_writer_create(0, &w), DUET_OK);
    assert_int_equal(duet_gguf_writer_tensor(w, "odd", 2, ne, DUET_Q4_1), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "Q4_1"));
    assert_int_equal(duet_gguf_writer_status(w), DUET_ERR_INVALID_ARG);
    duet_gguf_writer_free(w);

    assert_int_equal(duet_gguf_writer_create(0, &w), DUET_OK);
    duet_gguf_writer_arr(w, "a", DUET_GGUF_STRING, 1);
    assert_int_equal(duet_gguf_writer_arr_i32(w, 1), DUET_ERR_INVALID_ARG);
    duet_gguf_writer_free(w);

    assert_int_equal(duet_gguf_writer_create(0, &w), DUET_OK);
    ne[0] = 32;
    duet_gguf_writer_tensor(w, "t", 2, ne, DUET_F32);
    assert_int_equal(duet_gguf_writer_tensor(w, "t", 2, ne, DUET_F32), DUET_ERR_INVALID_ARG);
    duet_gguf_writer_free(w);
    duet_gguf_writer_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_writer_roundtrip),
        cmocka_unit_test(test_writer_misuse),
        cmocka_unit_test(test_presets_sizes),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_config_qwen2),
        cmocka_unit_test(test_config_llama3),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_weights_f32),
        cmocka_unit_test(test_weights_f16),
        cmocka_unit_test(test_weights_bf16),
        cmocka_unit_test(test_weights_q8_0),
        cmocka_unit_test(test_weights_q4_0),
        cmocka_unit_test(test_weights_q4_1),
        cmocka_unit_test(test_progress),
        cmocka_unit_test(test_presets_config),
        cmocka_unit_test(test_preset_forward),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    const char *tags[] = {"qwen2.json", "llama3.json", "bad.json", "det.json", "vals.json",
                          "prog.json", "err_hd.json"};
    for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++)
        unlink(temp_path(tags[i]));
    for (int i = 0; i < 9; i++) {
        char tag[32];
        snprintf(tag, sizeof tag, "err%d.json", i);
        unlink(temp_path(tag));
    }
    return failed;
}
