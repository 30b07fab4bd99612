/*
 * dummy.c — a GGUF image of any Llama-family shape with seeded random
 * weights (see dummy.h).
 *
 * Presets are HF config.json texts, so they go through the same parser as
 * a user's file and cannot drift from what a real config would give.
 */
#include "dummy.h"
#include "tokenizer_impl.h"

#include <assert.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "gguf_write.h"
#include "model.h"
#include "threadpool.h"

/* Published shapes (the models' config.json on the Hugging Face Hub),
 * reduced to the fields duet reads. */
typedef struct preset {
    const char *name;
    const char *json;
} preset;

static const preset presets[] = {
    {"smollm2-135m",
     "{\"model_type\":\"llama\",\"hidden_size\":576,\"intermediate_size\":1536,"
     "\"num_hidden_layers\":30,\"num_attention_heads\":9,\"num_key_value_heads\":3,"
     "\"vocab_size\":49152,\"max_position_embeddings\":8192,\"rms_norm_eps\":1e-5,"
     "\"rope_theta\":100000,\"tie_word_embeddings\":true}"},
    {"smollm2-360m",
     "{\"model_type\":\"llama\",\"hidden_size\":960,\"intermediate_size\":2560,"
     "\"num_hidden_layers\":32,\"num_attention_heads\":15,\"num_key_value_heads\":5,"
     "\"vocab_size\":49152,\"max_position_embeddings\":8192,\"rms_norm_eps\":1e-5,"
     "\"rope_theta\":100000,\"tie_word_embeddings\":true}"},
    {"smollm2-1.7b",
     "{\"model_type\":\"llama\",\"hidden_size\":2048,\"intermediate_size\":8192,"
     "\"num_hidden_layers\":24,\"num_attention_heads\":32,\"num_key_value_heads\":32,"
     "\"vocab_size\":49152,\"max_position_embeddings\":8192,\"rms_norm_eps\":1e-5,"
     "\"rope_theta\":130000,\"tie_word_embeddings\":true}"},
    {"llama-3.2-1b",
     "{\"model_type\":\"llama\",\"hidden_size\":2048,\"intermediate_size\":8192,"
     "\"num_hidden_layers\":16,\"num_attention_heads\":32,\"num_key_value_heads\":8,"
     "\"head_dim\":64,\"vocab_size\":128256,\"max_position_embeddings\":131072,"
     "\"rms_norm_eps\":1e-5,\"rope_theta\":500000,\"tie_word_embeddings\":true,"
     "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":32.0,\"low_freq_factor\":1.0,"
     "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}}"},
    {"llama-3.2-3b",
     "{\"model_type\":\"llama\",\"hidden_size\":3072,\"intermediate_size\":8192,"
     "\"num_hidden_layers\":28,\"num_attention_heads\":24,\"num_key_value_heads\":8,"
     "\"head_dim\":128,\"vocab_size\":128256,\"max_position_embeddings\":131072,"
     "\"rms_norm_eps\":1e-5,\"rope_theta\":500000,\"tie_word_embeddings\":true,"
     "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":32.0,\"low_freq_factor\":1.0,"
     "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}}"},
    {"llama-3.1-8b",
     "{\"model_type\":\"llama\",\"hidden_size\":4096,\"intermediate_size\":14336,"
     "\"num_hidden_layers\":32,\"num_attention_heads\":32,\"num_key_value_heads\":8,"
     "\"vocab_size\":128256,\"max_position_embeddings\":131072,\"rms_norm_eps\":1e-5,"
     "\"rope_theta\":500000,\"tie_word_embeddings\":false,"
     "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,"
     "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}}"},
    {"mistral-7b",
     "{\"model_type\":\"mistral\",\"hidden_size\":4096,\"intermediate_size\":14336,"
     "\"num_hidden_layers\":32,\"num_attention_heads\":32,\"num_key_value_heads\":8,"
     "\"vocab_size\":32000,\"max_position_embeddings\":32768,\"rms_norm_eps\":1e-5,"
     "\"rope_theta\":10000.0,\"tie_word_embeddings\":false}"},
    {"qwen2.5-0.5b",
     "{\"model_type\":\"qwen2\",\"hidden_size\":896,\"intermediate_size\":4864,"
     "\"num_hidden_layers\":24,\"num_attention_heads\":14,\"num_key_value_heads\":2,"
     "\"vocab_size\":151936,\"max_position_embeddings\":32768,\"rms_norm_eps\":1e-6,"
     "\"rope_theta\":1000000.0,\"tie_word_embeddings\":true}"},
    {"qwen2.5-7b",
     "{\"model_type\":\"qwen2\",\"hidden_size\":3584,\"intermediate_size\":18944,"
     "\"num_hidden_layers\":28,\"num_attention_heads\":28,\"num_key_value_heads\":4,"
     "\"vocab_size\":152064,\"max_position_embeddings\":32768,\"rms_norm_eps\":1e-6,"
     "\"rope_theta\":1000000.0,\"tie_word_embeddings\":false}"},
};

#define N_PRESETS (sizeof presets / sizeof presets[0])

const char *duet_dummy_presets(void)
{
    return "smollm2-135m, smollm2-360m, smollm2-1.7b, llama-3.2-1b, llama-3.2-3b, "
           "llama-3.1-8b, mistral-7b, qwen2.5-0.5b, qwen2.5-7b";
}

/* Byte tokens and the two specials come first, so the vocabulary can be no
 * smaller than this. */
#define N_BYTE_TOKENS 256
#define BOS_ID 256
#define EOS_ID 257
#define MIN_VOCAB 258

/* The shape, as read from a config. */
typedef struct dummy_shape {
    const char *arch; /* "llama" or "qwen2" */
    int n_layers, dim, ffn, n_heads, n_kv_heads, head_dim, vocab, ctx;
    double eps, theta;
    int tied;
    int llama3; /* llama3 RoPE scaling, with the four numbers below */
    double rope_factor, low_freq, high_freq;
    int orig_ctx;
} dummy_shape;

/* ---- reading config.json ---------------------------------------------------- */

/* A positive integer field; absent: def, or an error when def < 0. */
static duet_status get_int(json_t *root, const char *src, const char *field, long long def,
                           long long max, int *out)
{
    json_t *v = json_object_get(root, field);
    if (!v && def >= 0) {
        *out = (int)def;
        return DUET_OK;
    }
    if (!v)
        return duet_error(DUET_ERR_FORMAT, "model config %s: field '%s' is missing", src, field);
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > max)
        return duet_error(DUET_ERR_FORMAT,
                          "model config %s: field '%s' must be an integer in 1..%lld", src,
                          field, max);
    *out = (int)json_integer_value(v);
    return DUET_OK;
}

static duet_status get_num(json_t *obj, const char *src, const char *field, double def,
                           double *out)
{
    json_t *v = json_object_get(obj, field);
    if (!v || json_is_null(v)) {
        *out = def;
        return DUET_OK;
    }
    if (!json_is_number(v) || !(json_number_value(v) > 0) || !isfinite(json_number_value(v)))
        return duet_error(DUET_ERR_FORMAT, "model config %s: field '%s' must be a number > 0",
                          src, field);
    *out = json_number_value(v);
    return DUET_OK;
}

/* model_type, else the first of architectures. */
static duet_status read_arch(json_t *root, const char *src, dummy_shape *s)
{
    static const struct { const char *hf, *arch; } names[] = {
        {"llama", "llama"},           {"mistral", "llama"},
        {"qwen2", "qwen2"},           {"LlamaForCausalLM", "llama"},
        {"MistralForCausalLM", "llama"}, {"Qwen2ForCausalLM", "qwen2"},
    };
    const char *field = "model_type";
    json_t *v = json_object_get(root, "model_type");
    if (!v) {
        field = "architectures";
        v = json_array_get(json_object_get(root, "architectures"), 0);
    }
    if (!v)
        return duet_error(DUET_ERR_FORMAT,
                          "model config %s: field 'model_type' (or 'architectures') is missing",
                          src);
    const char *name = json_string_value(v);
    for (size_t i = 0; name && i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i].hf) == 0) {
            s->arch = names[i].arch;
            return DUET_OK;
        }
    return duet_error(DUET_ERR_UNSUPPORTED,
                      "model config %s: %s '%s' is not supported (llama, mistral, qwen2)", src,
                      field, name ? name : "(not a string)");
}

static duet_status read_rope_scaling(json_t *root, const char *src, dummy_shape *s)
{
    json_t *rs = json_object_get(root, "rope_scaling");
    if (!rs || json_is_null(rs))
        return DUET_OK;
    json_t *type = json_object_get(rs, "rope_type");
    if (!type)
        type = json_object_get(rs, "type");
    const char *t = json_string_value(type);
    if (!json_is_object(rs) || !t)
        return duet_error(DUET_ERR_FORMAT,
                          "model config %s: field 'rope_scaling' must be an object with a "
                          "'rope_type'",
                          src);
    if (strcmp(t, "default") == 0)
        return DUET_OK;
    if (strcmp(t, "llama3") != 0)
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "model config %s: rope_scaling.rope_type '%s' is not supported "
                          "(default, llama3)",
                          src, t);
    duet_status rc;
    double orig;
    s->llama3 = 1;
    if ((rc = get_num(rs, src, "factor", -1, &s->rope_factor)) ||
        (rc = get_num(rs, src, "low_freq_factor", 1.0, &s->low_freq)) ||
        (rc = get_num(rs, src, "high_freq_factor", 4.0, &s->high_freq)) ||
        (rc = get_num(rs, src, "original_max_position_embeddings", 8192, &orig)))
        return rc;
    if (s->rope_factor < 1.0 || s->high_freq <= s->low_freq)
        return duet_error(DUET_ERR_FORMAT,
                          "model config %s: rope_scaling needs factor >= 1 (has %g) and "
                          "high_freq_factor > low_freq_factor (has %g, %g)",
                          src, s->rope_factor, s->high_freq, s->low_freq);
    s->orig_ctx = (int)orig;
    return DUET_OK;
}

static duet_status parse_config(json_t *root, const char *src, duet_dtype wt, dummy_shape *s)
{
    duet_status rc;
    memset(s, 0, sizeof *s);
    if (!json_is_object(root))
        return duet_error(DUET_ERR_FORMAT, "model config %s: not a JSON object", src);
    if ((rc = read_arch(root, src, s)) ||
        (rc = get_int(root, src, "hidden_size", -1, 1 << 20, &s->dim)) ||
        (rc = get_int(root, src, "intermediate_size", -1, 1 << 22, &s->ffn)) ||
        (rc = get_int(root, src, "num_hidden_layers", -1, 1024, &s->n_layers)) ||
        (rc = get_int(root, src, "num_attention_heads", -1, 1 << 16, &s->n_heads)) ||
        (rc = get_int(root, src, "num_key_value_heads", s->n_heads, 1 << 16, &s->n_kv_heads)) ||
        (rc = get_int(root, src, "vocab_size", -1, 1 << 24, &s->vocab)) ||
        (rc = get_int(root, src, "max_position_embeddings", -1, 1 << 30, &s->ctx)) ||
        (rc = get_num(root, src, "rms_norm_eps", 1e-6, &s->eps)) ||
        (rc = get_num(root, src, "rope_theta", 10000.0, &s->theta)))
        return rc;
    /* The model reads head_count and embedding_length as dividing evenly. */
    if (s->dim % s->n_heads)
        return duet_error(DUET_ERR_FORMAT,
                          "model config %s: num_attention_heads %d does not divide "
                          "hidden_size %d",
                          src, s->n_heads, s->dim);
    if (s->n_heads % s->n_kv_heads)
        return duet_error(DUET_ERR_FORMAT,
                          "model config %s: num_key_value_heads %d does not divide "
                          "num_attention_heads %d",
                          src, s->n_kv_heads, s->n_heads);
    if ((rc = get_int(root, src, "head_dim", s->dim / s->n_heads, 1024, &s->head_dim)))
        return rc;
    if (s->head_dim % 2)
        return duet_error(DUET_ERR_FORMAT, "model config %s: head_dim %d must be even", src,
                          s->head_dim);
    if (s->vocab < MIN_VOCAB)
        return duet_error(DUET_ERR_FORMAT,
                          "model config %s: vocab_size %d is below %d (256 byte tokens, BOS, "
                          "EOS)",
                          src, s->vocab, MIN_VOCAB);
    json_t *tied = json_object_get(root, "tie_word_embeddings");
    if (tied && !json_is_boolean(tied))
        return duet_error(DUET_ERR_FORMAT,
                          "model config %s: field 'tie_word_embeddings' must be true or false",
                          src);
    s->tied = json_is_true(tied);
    if ((rc = read_rope_scaling(root, src, s)))
        return rc;

    /* Every matrix row must be whole blocks of the weight type. */
    int blk = duet_dtype_get(wt)->block_elems;
    const struct { const char *field; int n; } rows[] = {
        {"hidden_size", s->dim},
        {"intermediate_size", s->ffn},
        {"num_attention_heads * head_dim", s->n_heads * s->head_dim},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        if (rows[i].n % blk)
            return duet_error(DUET_ERR_FORMAT,
                              "model config %s: %s %d is not a multiple of %d, the %s block "
                              "size",
                              src, rows[i].field, rows[i].n, blk, duet_dtype_get(wt)->name);
    return DUET_OK;
}

/* The shape named by o->model_config: a preset, else a file. */
static duet_status read_shape(const duet_dummy_options *o, dummy_shape *s)
{
    const duet_dtype_info *info = duet_dtype_get(o->weight_type);
    if (!info || !(o->weight_type == DUET_F32 || o->weight_type == DUET_F16 ||
                   o->weight_type == DUET_BF16 || o->weight_type == DUET_Q4_0 ||
                   o->weight_type == DUET_Q4_1 || o->weight_type == DUET_Q8_0))
        return duet_error(DUET_ERR_INVALID_ARG,
                          "dummy weights: type %s is not supported (F32, F16, BF16, Q4_0, Q4_1, "
                          "Q8_0)",
                          info ? info->name : "(unknown)");
    if (!o->model_config || !*o->model_config)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "dummy weights need a model config: a config.json or one of %s",
                          duet_dummy_presets());
    json_error_t jerr;
    json_t *root = NULL;
    for (size_t i = 0; i < N_PRESETS; i++)
        if (strcmp(o->model_config, presets[i].name) == 0)
            root = json_loads(presets[i].json, 0, &jerr);
    if (!root) {
        /* Not a preset: a file, unless it does not exist and looks like a
         * preset name (no path separator, no .json). */
        if (access(o->model_config, F_OK) != 0 && !strchr(o->model_config, '/') &&
            !strstr(o->model_config, ".json"))
            return duet_error(DUET_ERR_INVALID_ARG,
                              "model config '%s' is neither a preset (%s) nor a file",
                              o->model_config, duet_dummy_presets());
        root = json_load_file(o->model_config, 0, &jerr);
        if (!root)
            return duet_error(access(o->model_config, R_OK) ? DUET_ERR_IO : DUET_ERR_FORMAT,
                              "model config %s: %s (line %d, column %d)", o->model_config,
                              jerr.text, jerr.line, jerr.column);
    }
    duet_status rc = parse_config(root, o->model_config, o->weight_type, s);
    json_decref(root);
    return rc;
}

/* ---- the image's metadata ------------------------------------------------ */

/* GPT-2's byte-to-unicode alphabet: printable bytes stand for themselves,
 * the others take code points from U+0100 in byte order. */
static size_t byte_token(int b, char out[4])
{
    /* The same byte-to-unicode alphabet the tokenizer decodes. */
    return (size_t)duet_utf8_encode(duet_byte_to_cp((uint8_t)b), out);
}

static void write_tokenizer(duet_gguf_writer *w, const dummy_shape *s)
{
    char buf[32];
    duet_gguf_writer_str(w, "tokenizer.ggml.model", "gpt2");
    duet_gguf_writer_str(w, "tokenizer.ggml.pre", "gpt-2");
    duet_gguf_writer_arr(w, "tokenizer.ggml.tokens", DUET_GGUF_STRING, (uint64_t)s->vocab);
    for (int i = 0; i < s->vocab; i++) {
        if (i < N_BYTE_TOKENS) {
            duet_gguf_writer_arr_str(w, buf, byte_token(i, buf));
        } else {
            const char *t = i == BOS_ID ? "<|bos|>" : i == EOS_ID ? "<|eos|>" : NULL;
            if (!t)
                snprintf(buf, sizeof buf, "<|dummy_%d|>", i - MIN_VOCAB);
            duet_gguf_writer_arr_str(w, t ? t : buf, strlen(t ? t : buf));
        }
    }
    /* Fillers are UNUSED, not CONTROL: the tokenizer scans control tokens
     * linearly, and 150k of them would slow every '<' in a prompt. */
    duet_gguf_writer_arr(w, "tokenizer.ggml.token_type", DUET_GGUF_INT32, (uint64_t)s->vocab);
    for (int i = 0; i < s->vocab; i++)
        duet_gguf_writer_arr_i32(w, i < N_BYTE_TOKENS ? 1 : i < MIN_VOCAB ? 3 : 5);
    duet_gguf_writer_arr(w, "tokenizer.ggml.merges", DUET_GGUF_STRING, 0);
    duet_gguf_writer_u32(w, "tokenizer.ggml.bos_token_id", BOS_ID);
    duet_gguf_writer_u32(w, "tokenizer.ggml.eos_token_id", EOS_ID);
    duet_gguf_writer_bool(w, "tokenizer.ggml.add_bos_token", 0);
}

static void write_hparams(duet_gguf_writer *w, const dummy_shape *s, const char *name)
{
    char key[96];
#define ARCH_KEY(suffix) (snprintf(key, sizeof key, "%s.%s", s->arch, suffix), key)
    duet_gguf_writer_str(w, "general.architecture", s->arch);
    snprintf(key, sizeof key, "dummy %s", name);
    duet_gguf_writer_str(w, "general.name", key);
    duet_gguf_writer_u32(w, ARCH_KEY("block_count"), (uint32_t)s->n_layers);
    duet_gguf_writer_u32(w, ARCH_KEY("context_length"), (uint32_t)s->ctx);
    duet_gguf_writer_u32(w, ARCH_KEY("embedding_length"), (uint32_t)s->dim);
    duet_gguf_writer_u32(w, ARCH_KEY("feed_forward_length"), (uint32_t)s->ffn);
    duet_gguf_writer_u32(w, ARCH_KEY("attention.head_count"), (uint32_t)s->n_heads);
    duet_gguf_writer_u32(w, ARCH_KEY("attention.head_count_kv"), (uint32_t)s->n_kv_heads);
    duet_gguf_writer_u32(w, ARCH_KEY("attention.key_length"), (uint32_t)s->head_dim);
    duet_gguf_writer_u32(w, ARCH_KEY("attention.value_length"), (uint32_t)s->head_dim);
    duet_gguf_writer_f32(w, ARCH_KEY("attention.layer_norm_rms_epsilon"), (float)s->eps);
    duet_gguf_writer_f32(w, ARCH_KEY("rope.freq_base"), (float)s->theta);
    duet_gguf_writer_u32(w, ARCH_KEY("rope.dimension_count"), (uint32_t)s->head_dim);
    duet_gguf_writer_u32(w, ARCH_KEY("vocab_size"), (uint32_t)s->vocab);
    if (s->llama3) {
        duet_gguf_writer_str(w, ARCH_KEY("rope.scaling.type"), "llama3");
        duet_gguf_writer_f32(w, ARCH_KEY("rope.scaling.factor"), (float)s->rope_factor);
        duet_gguf_writer_u32(w, ARCH_KEY("rope.scaling.original_context_length"),
                             (uint32_t)s->orig_ctx);
    }
#undef ARCH_KEY
}

/* ---- tensors -------------------------------------------------------------- */

typedef enum tensor_kind { KIND_MATRIX, KIND_NORM, KIND_BIAS, KIND_ROPE_FREQS } tensor_kind;

typedef struct tensor_spec {
    char name[48];
    int64_t row_len, rows;
    duet_dtype type;
    tensor_kind kind;
} tensor_spec;

/* The tensors model.c binds, in declaration order; *n gets their count.
 * specs must hold 4 + 12 * n_layers entries. */
static int64_t list_tensors(const dummy_shape *s, duet_dtype wt, tensor_spec *specs)
{
    int64_t n = 0, e = s->dim, qd = (int64_t)s->n_heads * s->head_dim;
    int64_t kvd = (int64_t)s->n_kv_heads * s->head_dim, f = s->ffn;
#define ADD(row_len_, rows_, type_, kind_, ...)                                            \
    do {                                                                                   \
        snprintf(specs[n].name, sizeof specs[n].name, __VA_ARGS__);                        \
        specs[n].row_len = row_len_;                                                       \
        specs[n].rows = rows_;                                                             \
        specs[n].type = type_;                                                             \
        specs[n].kind = kind_;                                                             \
        n++;                                                                               \
    } while (0)
    ADD(e, s->vocab, wt, KIND_MATRIX, "token_embd.weight");
    if (!s->tied)
        ADD(e, s->vocab, wt, KIND_MATRIX, "output.weight");
    ADD(e, 1, DUET_F32, KIND_NORM, "output_norm.weight");
    if (s->llama3)
        ADD(s->head_dim / 2, 1, DUET_F32, KIND_ROPE_FREQS, "rope_freqs.weight");
    for (int l = 0; l < s->n_layers; l++) {
        ADD(e, 1, DUET_F32, KIND_NORM, "blk.%d.attn_norm.weight", l);
        ADD(e, qd, wt, KIND_MATRIX, "blk.%d.attn_q.weight", l);
        ADD(e, kvd, wt, KIND_MATRIX, "blk.%d.attn_k.weight", l);
        ADD(e, kvd, wt, KIND_MATRIX, "blk.%d.attn_v.weight", l);
        if (strcmp(s->arch, "qwen2") == 0) {
            ADD(qd, 1, DUET_F32, KIND_BIAS, "blk.%d.attn_q.bias", l);
            ADD(kvd, 1, DUET_F32, KIND_BIAS, "blk.%d.attn_k.bias", l);
            ADD(kvd, 1, DUET_F32, KIND_BIAS, "blk.%d.attn_v.bias", l);
        }
        ADD(qd, e, wt, KIND_MATRIX, "blk.%d.attn_output.weight", l);
        ADD(e, 1, DUET_F32, KIND_NORM, "blk.%d.ffn_norm.weight", l);
        ADD(e, f, wt, KIND_MATRIX, "blk.%d.ffn_gate.weight", l);
        ADD(e, f, wt, KIND_MATRIX, "blk.%d.ffn_up.weight", l);
        ADD(f, e, wt, KIND_MATRIX, "blk.%d.ffn_down.weight", l);
    }
#undef ADD
    return n;
}

/* ---- the generator ----------------------------------------------------------- */

/* splitmix64's finalizer: a bijection that scrambles every input bit. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t tensor_key(uint64_t seed, const char *name)
{
    uint64_t h = 0xCBF29CE484222325ull; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 0x100000001B3ull;
    return mix64(seed ^ mix64(h));
}

/* The top 24 bits of a 32-bit draw as a value in (-1, 1), exact in float. */
static float unit(uint32_t bits)
{
    return ((float)(bits >> 8) + 0.5f) * (1.0f / 8388608.0f) - 1.0f;
}

/* Elements [i0, i0 + n) of a tensor as uniform values in (-1, 1). Element
 * i takes half of draw i / 2 (the low half when i is even), so one 64-bit
 * draw serves two elements. */
static void uniform(uint64_t key, uint64_t i0, float *out, int64_t n)
{
    const uint64_t golden = 0x9E3779B97F4A7C15ull;
    int64_t j = 0;
    if (n > 0 && i0 % 2) /* an odd start: the high half of its pair */
        out[j++] = unit((uint32_t)(mix64(key + (i0 / 2 + 1) * golden) >> 32));
    for (; j + 1 < n; j += 2) {
        uint64_t h = mix64(key + ((i0 + (uint64_t)j) / 2 + 1) * golden);
        out[j] = unit((uint32_t)h);
        out[j + 1] = unit((uint32_t)(h >> 32));
    }
    if (j < n)
        out[j] = unit((uint32_t)mix64(key + ((i0 + (uint64_t)j) / 2 + 1) * golden));
}

/* Uniform on (-a, a) with a = 0.02 * sqrt(3): standard deviation 0.02. */
#define MATRIX_SCALE 0.034641016f
#define NORM_SPREAD 0.1f

static void values(tensor_kind kind, uint64_t key, uint64_t i0, float *out, int64_t n)
{
    uniform(key, i0, out, n);
    for (int64_t j = 0; j < n; j++)
        out[j] = kind == KIND_NORM ? 1.0f + NORM_SPREAD * out[j] : MATRIX_SCALE * out[j];
}

/* ---- quantization (round to nearest, scales rounded to half first so the
 * stored scale is the one the values were rounded against) --------------- */

/* Round to nearest (halves away from zero) and clamp to [lo, hi]; plain
 * arithmetic instead of libm calls, which dominated the run time. */
static int round_clamp(float v, int lo, int hi)
{
    int q = (int)(v + copysignf(0.5f, v)); /* (int) truncates toward zero */
    return q < lo ? lo : q > hi ? hi : q;
}

static float half_round(float x) { return duet_f16_to_f32(duet_f32_to_f16(x)); }

static void put_half(uint8_t *p, float x)
{
    uint16_t h = duet_f32_to_f16(x);
    memcpy(p, &h, 2);
}

static void quant_q8_0(const float *x, uint8_t *b)
{
    float a8[8] = {0};
    for (int i = 0; i < 32; i += 8)
        for (int k = 0; k < 8; k++)
            a8[k] = fabsf(x[i + k]) > a8[k] ? fabsf(x[i + k]) : a8[k];
    float amax = 0;
    for (int k = 0; k < 8; k++)
        amax = a8[k] > amax ? a8[k] : amax;
    float d = half_round(amax / 127.0f), id = d > 0 ? 1.0f / d : 0.0f;
    put_half(b, d);
    for (int i = 0; i < 32; i++)
        b[2 + i] = (uint8_t)(int8_t)round_clamp(x[i] * id, -127, 127);
}

static void quant_q4_0(const float *x, uint8_t *b)
{
    /* The value of largest magnitude maps to -8, the end with one more
     * level, so it is exact. */
    float vmax = 0;
    for (int i = 0; i < 32; i++)
        if (fabsf(x[i]) > fabsf(vmax))
            vmax = x[i];
    float d = half_round(vmax / -8.0f), id = d != 0 ? 1.0f / d : 0.0f;
    put_half(b, d);
    for (int j = 0; j < 16; j++) {
        int lo = round_clamp(x[j] * id, -8, 7) + 8;
        int hi = round_clamp(x[j + 16] * id, -8, 7) + 8;
        b[2 + j] = (uint8_t)(lo | hi << 4);
    }
}

static void quant_q4_1(const float *x, uint8_t *b)
{
    /* Eight running minima and maxima rather than one: a single chain of
     * dependent compares was the generator's bottleneck. */
    float lo8[8], hi8[8];
    for (int k = 0; k < 8; k++)
        lo8[k] = hi8[k] = x[k];
    for (int i = 8; i < 32; i += 8)
        for (int k = 0; k < 8; k++) {
            lo8[k] = x[i + k] < lo8[k] ? x[i + k] : lo8[k];
            hi8[k] = x[i + k] > hi8[k] ? x[i + k] : hi8[k];
        }
    float lo = lo8[0], hi = hi8[0];
    for (int k = 1; k < 8; k++) {
        lo = lo8[k] < lo ? lo8[k] : lo;
        hi = hi8[k] > hi ? hi8[k] : hi;
    }
    float d = half_round((hi - lo) / 15.0f), m = half_round(lo), id = d > 0 ? 1.0f / d : 0.0f;
    put_half(b, d);
    put_half(b + 2, m);
    for (int j = 0; j < 16; j++) {
        int q0 = round_clamp((x[j] - m) * id, 0, 15);
        int q1 = round_clamp((x[j + 16] - m) * id, 0, 15);
        b[4 + j] = (uint8_t)(q0 | q1 << 4);
    }
}

/* Write n elements (whole blocks) of values x as type t at dst. */
static void encode(duet_dtype t, const float *x, int64_t n, uint8_t *dst)
{
    switch (t) {
    case DUET_F32: memcpy(dst, x, (size_t)n * sizeof(float)); break;
    case DUET_F16:
    case DUET_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = t == DUET_F16 ? duet_f32_to_f16(x[i]) : duet_f32_to_bf16(x[i]);
            memcpy(dst + 2 * i, &h, 2);
        }
        break;
    case DUET_Q8_0:
        for (int64_t i = 0; i < n; i += 32, dst += 34)
            quant_q8_0(x + i, dst);
        break;
    case DUET_Q4_0:
        for (int64_t i = 0; i < n; i += 32, dst += 18)
            quant_q4_0(x + i, dst);
        break;
    case DUET_Q4_1:
        for (int64_t i = 0; i < n; i += 32, dst += 20)
            quant_q4_1(x + i, dst);
        break;
    default: assert(!"weight type checked in read_shape");
    }
}

/* ---- filling the image ------------------------------------------------------- */

#define CHUNK 256 /* elements generated at a time: whole blocks of every type */

typedef struct fill_job {
    const tensor_spec *t;
    uint64_t key;
    uint8_t *dst;
} fill_job;

static void fill_rows(void *arg, int ith, int nth)
{
    const fill_job *job = arg;
    const tensor_spec *t = job->t;
    size_t row_bytes = duet_dtype_row_bytes(t->type, t->row_len);
    int64_t lo, hi;
    float x[CHUNK];
    duet_split_rows(t->rows, ith, nth, 1, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        uint8_t *row = job->dst + (size_t)r * row_bytes;
        for (int64_t c = 0; c < t->row_len; c += CHUNK) {
            int64_t n = t->row_len - c < CHUNK ? t->row_len - c : CHUNK;
            values(t->kind, job->key, (uint64_t)(r * t->row_len + c), x, n);
            encode(t->type, x, n, row + duet_dtype_row_bytes(t->type, c));
        }
    }
}

/* rope_freqs.weight: llama3's per-frequency divisors, computed by the
 * model's own formula, so a config whose low/high frequency factors differ
 * from the defaults model_config.c assumes is still honoured. */
static void fill_rope_freqs(const dummy_shape *s, float *out)
{
    duet_model_config c;
    memset(&c, 0, sizeof c);
    c.rope_dim = s->head_dim;
    c.rope_theta = (float)s->theta;
    c.rope_scale = (float)s->rope_factor;
    c.rope_low_freq_factor = (float)s->low_freq;
    c.rope_high_freq_factor = (float)s->high_freq;
    c.rope_orig_context = s->orig_ctx;
    duet_rope_llama3_factors(&c, out);
}

/* Metadata and tensor infos of the image for o; *specs (malloc'd) and *n
 * describe the tensors in order. */
static duet_status plan(const duet_dummy_options *o, dummy_shape *s, duet_gguf_writer **w,
                        tensor_spec **specs, int64_t *n)
{
    duet_status rc;
    *w = NULL;
    *specs = NULL;
    if ((rc = read_shape(o, s)))
        return rc;
    *specs = malloc((4 + 12 * (size_t)s->n_layers) * sizeof **specs);
    if (!*specs)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "dummy weights: out of memory");
    *n = list_tensors(s, o->weight_type, *specs);
    if ((rc = duet_gguf_writer_create(0, w)))
        goto out_free_specs;
    write_hparams(*w, s, o->model_config);
    write_tokenizer(*w, s);
    for (int64_t i = 0; i < *n; i++) {
        const tensor_spec *t = &(*specs)[i];
        int64_t ne[2] = {t->row_len, t->rows};
        duet_gguf_writer_tensor(*w, t->name, t->rows == 1 ? 1 : 2, ne, t->type);
    }
    duet_gguf_writer_u32(*w, "general.quantization_version", 2);
    if ((rc = duet_gguf_writer_status(*w)))
        goto out_free_writer;
    return DUET_OK;

out_free_writer:
    duet_gguf_writer_free(*w);
    *w = NULL;
out_free_specs:
    free(*specs);
    *specs = NULL;
    return rc;
}

duet_status duet_dummy_image_size(const duet_dummy_options *o, uint64_t *size)
{
    dummy_shape s;
    duet_gguf_writer *w;
    tensor_spec *specs;
    int64_t n;
    *size = 0;
    duet_status rc = plan(o, &s, &w, &specs, &n);
    if (rc)
        return rc;
    *size = duet_gguf_writer_size(w);
    duet_gguf_writer_free(w);
    free(specs);
    return DUET_OK;
}

duet_status duet_dummy_gguf(const duet_dummy_options *o, void **image, size_t *size)
{
    dummy_shape s;
    duet_gguf_writer *w;
    tensor_spec *specs;
    duet_threadpool *pool = NULL;
    int64_t n;
    *image = NULL;
    *size = 0;
    duet_status rc = plan(o, &s, &w, &specs, &n);
    if (rc)
        return rc;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int threads = o->n_threads > 0 ? o->n_threads : cpus > 0 ? (int)cpus : 1;
    if ((rc = duet_threadpool_create(threads, &pool)))
        goto out_free_plan;
    void *img;
    size_t img_size;
    if ((rc = duet_gguf_writer_finish(w, &img, &img_size))) {
        rc = duet_error_wrap(rc, "dummy weights for %s", o->model_config);
        goto out_free_pool;
    }
    uint64_t done = 0, total = 0;
    for (int64_t i = 0; i < n; i++)
        total += duet_gguf_writer_tensor_bytes(w, i);
    for (int64_t i = 0; i < n; i++) {
        uint8_t *dst = (uint8_t *)img + duet_gguf_writer_tensor_offset(w, i);
        if (specs[i].kind == KIND_ROPE_FREQS) {
            float f[512]; /* head_dim <= 1024 */
            fill_rope_freqs(&s, f);
            memcpy(dst, f, (size_t)specs[i].row_len * sizeof(float));
        } else {
            fill_job job = {&specs[i], tensor_key(o->seed, specs[i].name), dst};
            duet_threadpool_run(pool, fill_rows, &job);
        }
        done += duet_gguf_writer_tensor_bytes(w, i);
        if (o->progress)
            o->progress(o->progress_user, done, total);
    }
    *image = img;
    *size = img_size;

out_free_pool:
    duet_threadpool_free(pool);
out_free_plan:
    duet_gguf_writer_free(w);
    free(specs);
    return rc;
}
