/*
 * model_config.c — the Llama family's hyper-parameters from GGUF metadata.
 *
 * GGUF keys are prefixed by the architecture name ("llama.block_count").
 * Llama 2/3, SmolLM2 and Mistral files say "llama" (Mistral sometimes
 * "mistral"); Qwen2 says "qwen2" and differs by QKV biases and NEOX-style
 * RoPE (its GGUF keeps HF's unpermuted Q/K weights).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "model.h"

typedef struct arch_traits {
    const char *name;
    duet_rope_mode rope_mode;
    int has_qkv_bias;
} arch_traits;

static const arch_traits supported_archs[] = {
    {"llama", DUET_ROPE_NORMAL, 0},
    {"mistral", DUET_ROPE_NORMAL, 0},
    {"qwen2", DUET_ROPE_NEOX, 1},
};

const char *duet_model_supported_archs(void) { return "llama, mistral, qwen2"; }

/* "%s.<suffix>" for the file's architecture. */
static const char *arch_key(char *buf, size_t cap, const char *arch, const char *suffix)
{
    snprintf(buf, cap, "%s.%s", arch, suffix);
    return buf;
}

static duet_status read_scaling(const duet_gguf *g, const char *arch, duet_model_config *c)
{
    char key[128];
    duet_status rc;
    duet_gguf_str type = {"", 0};
    const duet_gguf_kv *kv = duet_gguf_find(g, arch_key(key, sizeof key, arch, "rope.scaling.type"));
    c->rope_scaling = DUET_ROPE_SCALING_NONE;
    c->rope_scale = 1.0f;
    c->rope_low_freq_factor = 1.0f;
    c->rope_high_freq_factor = 4.0f;
    if (kv && (rc = duet_gguf_get_str(g, key, &type)))
        return rc;
    if ((rc = duet_gguf_get_f32_or(g, arch_key(key, sizeof key, arch, "rope.scaling.factor"),
                                   1.0f, &c->rope_scale)))
        return rc;
    uint32_t orig = (uint32_t)c->context_length;
    if ((rc = duet_gguf_get_u32_or(
             g, arch_key(key, sizeof key, arch, "rope.scaling.original_context_length"), orig,
             &orig)))
        return rc;
    c->rope_orig_context = (int)orig;
    if (!kv || duet_gguf_str_eq(type, "none"))
        return DUET_OK;
    if (duet_gguf_str_eq(type, "linear")) {
        c->rope_scaling = DUET_ROPE_SCALING_LINEAR;
    } else if (duet_gguf_str_eq(type, "llama3")) {
        c->rope_scaling = DUET_ROPE_SCALING_LLAMA3;
    } else {
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "%s.rope.scaling.type '%.*s' is not supported (none, linear, llama3)",
                          arch, (int)type.len, type.ptr);
    }
    if (!(c->rope_scale >= 1.0f) || c->rope_scale > 1024.0f)
        return duet_error(DUET_ERR_FORMAT, "%s.rope.scaling.factor %g is outside [1, 1024]", arch,
                          c->rope_scale);
    return DUET_OK;
}

duet_status duet_model_config_read(const duet_gguf *g, duet_model_config *c)
{
    duet_status rc;
    duet_gguf_str arch;
    char key[128];
    uint32_t u;
    const arch_traits *traits = NULL;

    memset(c, 0, sizeof *c);
    if ((rc = duet_gguf_get_str(g, "general.architecture", &arch)))
        return rc;
    for (size_t i = 0; i < sizeof supported_archs / sizeof supported_archs[0]; i++)
        if (duet_gguf_str_eq(arch, supported_archs[i].name))
            traits = &supported_archs[i];
    if (!traits)
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "architecture '%.*s' is not supported; supported: %s",
                          (int)(arch.len > 64 ? 64 : arch.len), arch.ptr,
                          duet_model_supported_archs());
    snprintf(c->arch, sizeof c->arch, "%s", traits->name);
    c->rope_mode = traits->rope_mode;
    c->has_qkv_bias = traits->has_qkv_bias;

#define GET_U32(field, suffix)                                                             \
    do {                                                                                   \
        if ((rc = duet_gguf_get_u32(g, arch_key(key, sizeof key, c->arch, suffix), &u)))   \
            return rc;                                                                     \
        c->field = (int)u;                                                                 \
    } while (0)
    GET_U32(n_layers, "block_count");
    GET_U32(dim, "embedding_length");
    GET_U32(ffn_dim, "feed_forward_length");
    GET_U32(n_heads, "attention.head_count");
    GET_U32(context_length, "context_length");
#undef GET_U32
    if ((rc = duet_gguf_get_u32_or(g, arch_key(key, sizeof key, c->arch, "attention.head_count_kv"),
                                   (uint32_t)c->n_heads, &u)))
        return rc;
    c->n_kv_heads = (int)u;
    if (c->n_heads <= 0 || c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads)
        return duet_error(DUET_ERR_FORMAT,
                          "%s: attention.head_count %d must be a positive multiple of "
                          "head_count_kv %d",
                          c->arch, c->n_heads, c->n_kv_heads);
    if (c->dim <= 0 || c->dim % c->n_heads)
        return duet_error(DUET_ERR_FORMAT,
                          "%s: embedding_length %d is not a multiple of head_count %d", c->arch,
                          c->dim, c->n_heads);
    if ((rc = duet_gguf_get_u32_or(g, arch_key(key, sizeof key, c->arch, "attention.key_length"),
                                   (uint32_t)(c->dim / c->n_heads), &u)))
        return rc;
    c->head_dim = (int)u;
    if ((rc = duet_gguf_get_u32_or(g, arch_key(key, sizeof key, c->arch, "rope.dimension_count"),
                                   (uint32_t)c->head_dim, &u)))
        return rc;
    c->rope_dim = (int)u;
    if ((rc = duet_gguf_get_f32_or(g, arch_key(key, sizeof key, c->arch, "rope.freq_base"),
                                   10000.0f, &c->rope_theta)))
        return rc;
    if ((rc = duet_gguf_get_f32(g, arch_key(key, sizeof key, c->arch,
                                            "attention.layer_norm_rms_epsilon"),
                                &c->norm_eps)))
        return rc;

    /* The vocabulary size: the metadata key if present, else the token list. */
    const duet_gguf_kv *tokens = duet_gguf_find(g, "tokenizer.ggml.tokens");
    uint32_t n_vocab = tokens && tokens->type == DUET_GGUF_ARRAY ? (uint32_t)tokens->n_elems : 0;
    if ((rc = duet_gguf_get_u32_or(g, arch_key(key, sizeof key, c->arch, "vocab_size"), n_vocab,
                                   &u)))
        return rc;
    c->vocab = (int)u;
    c->tied_embeddings = duet_gguf_find_tensor(g, "output.weight") == NULL;

    if (c->n_layers <= 0 || c->n_layers > 1024 || c->ffn_dim <= 0 || c->vocab <= 0 ||
        c->head_dim <= 0 || c->head_dim > 1024 || c->context_length <= 0)
        return duet_error(DUET_ERR_FORMAT,
                          "%s: implausible shape: %d layers, ffn %d, vocab %d, head_dim %d, "
                          "context %d",
                          c->arch, c->n_layers, c->ffn_dim, c->vocab, c->head_dim,
                          c->context_length);
    if (c->rope_dim <= 0 || c->rope_dim > c->head_dim || c->rope_dim % 2)
        return duet_error(DUET_ERR_FORMAT,
                          "%s.rope.dimension_count %d must be even and <= head_dim %d", c->arch,
                          c->rope_dim, c->head_dim);
    if (!(c->norm_eps > 0.0f) || !(c->rope_theta > 0.0f))
        return duet_error(DUET_ERR_FORMAT, "%s: rms epsilon %g and rope base %g must be > 0",
                          c->arch, c->norm_eps, c->rope_theta);
    return read_scaling(g, c->arch, c);
}

void duet_rope_llama3_factors(const duet_model_config *c, float *out)
{
    /* Llama 3.1: wavelengths longer than orig_ctx / low_freq_factor are
     * scaled by the full factor, those shorter than orig_ctx /
     * high_freq_factor are kept, and those between are blended. */
    double low_wavelen = c->rope_orig_context / c->rope_low_freq_factor;
    double high_wavelen = c->rope_orig_context / c->rope_high_freq_factor;
    for (int i = 0; i < c->rope_dim / 2; i++) {
        double freq = pow(c->rope_theta, -2.0 * i / c->rope_dim);
        double wavelen = 2.0 * M_PI / freq;
        double factor;
        if (wavelen < high_wavelen) {
            factor = 1.0;
        } else if (wavelen > low_wavelen) {
            factor = c->rope_scale;
        } else {
            double smooth = (c->rope_orig_context / wavelen - c->rope_low_freq_factor) /
                            (c->rope_high_freq_factor - c->rope_low_freq_factor);
            /* new_freq = (1 - smooth) * freq / scale + smooth * freq */
            factor = 1.0 / ((1.0 - smooth) / c->rope_scale + smooth);
        }
        out[i] = (float)factor;
    }
}
