/*
 * The model layer on tiny synthetic GGUF models with seeded random F32
 * weights, checked against a naive forward pass written here from the
 * papers (contiguous KV, double accumulation): Llama (GQA, normal RoPE,
 * linear RoPE scaling, tied and untied LM heads) and Qwen2 (QKV biases,
 * NEOX RoPE). Also: configuration errors, and fault injection through
 * session creation and the forward pass.
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

#include "duet_internal.h"
#include "gguf_builder.h"

enum { L = 2, E = 64, H = 4, HKV = 2, D = 16, F = 96, V = 300, CTX = 256 };

typedef struct tiny_spec {
    const char *arch;
    int qwen2;        /* biases + NEOX rope */
    int tied;         /* no output.weight */
    float rope_scale; /* linear scaling when > 1 */
} tiny_spec;

/* All weights of the tiny model, as the test's own reference holds them. */
typedef struct tiny_weights {
    float embd[V][E], out[V][E], out_norm[E];
    struct {
        float attn_norm[E], wq[H * D][E], wk[HKV * D][E], wv[HKV * D][E];
        float bq[H * D], bk[HKV * D], bv[HKV * D], wo[E][H * D];
        float ffn_norm[E], gate[F][E], up[F][E], down[E][F];
    } l[L];
} tiny_weights;

static float frand(unsigned *seed, float scale)
{
    return scale * ((float)rand_r(seed) / RAND_MAX * 2.0f - 1.0f);
}

static void fill(float *p, size_t n, unsigned *seed, float scale, float offset)
{
    for (size_t i = 0; i < n; i++)
        p[i] = offset + frand(seed, scale);
}

static void make_weights(tiny_weights *w, unsigned seed)
{
    fill(&w->embd[0][0], (size_t)V * E, &seed, 1.0f, 0);
    fill(&w->out[0][0], (size_t)V * E, &seed, 0.2f, 0);
    fill(w->out_norm, E, &seed, 0.2f, 1.0f);
    for (int l = 0; l < L; l++) {
        fill(w->l[l].attn_norm, E, &seed, 0.2f, 1.0f);
        fill(&w->l[l].wq[0][0], (size_t)H * D * E, &seed, 0.25f, 0);
        fill(&w->l[l].wk[0][0], (size_t)HKV * D * E, &seed, 0.25f, 0);
        fill(&w->l[l].wv[0][0], (size_t)HKV * D * E, &seed, 0.25f, 0);
        fill(w->l[l].bq, H * D, &seed, 0.5f, 0);
        fill(w->l[l].bk, HKV * D, &seed, 0.5f, 0);
        fill(w->l[l].bv, HKV * D, &seed, 0.5f, 0);
        fill(&w->l[l].wo[0][0], (size_t)E * H * D, &seed, 0.15f, 0);
        fill(w->l[l].ffn_norm, E, &seed, 0.2f, 1.0f);
        fill(&w->l[l].gate[0][0], (size_t)F * E, &seed, 0.25f, 0);
        fill(&w->l[l].up[0][0], (size_t)F * E, &seed, 0.25f, 0);
        fill(&w->l[l].down[0][0], (size_t)E * F, &seed, 0.15f, 0);
    }
}

/* ---- writing the GGUF ------------------------------------------------------ */

/* GPT-2's byte-to-unicode alphabet: printable bytes stand for themselves,
 * the rest are moved to U+0100 upwards. Returns the UTF-8 length. */
static int byte_token(int b, char *out)
{
    int cp;
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
        cp = b;
    } else {
        int n = 0;
        for (int x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255)))
                n++;
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

typedef struct pending_tensor {
    char name[64];
    const float *data;
    int64_t ne0, ne1;
} pending_tensor;

static void write_model(const char *path, const tiny_spec *spec, const tiny_weights *w)
{
    pending_tensor t[64];
    int nt = 0;
#define ADD(nm, ptr, a, b)                                                                 \
    do {                                                                                   \
        snprintf(t[nt].name, sizeof t[nt].name, "%s", nm);                                 \
        t[nt].data = (const float *)(ptr);                                                 \
        t[nt].ne0 = a;                                                                     \
        t[nt].ne1 = b;                                                                     \
        nt++;                                                                              \
    } while (0)
    ADD("token_embd.weight", w->embd, E, V);
    ADD("output_norm.weight", w->out_norm, E, 1);
    if (!spec->tied)
        ADD("output.weight", w->out, E, V);
    for (int l = 0; l < L; l++) {
        char nm[64];
#define ADDL(suffix, ptr, a, b)                                                            \
        do {                                                                               \
            snprintf(nm, sizeof nm, "blk.%d.%s", l, suffix);                               \
            ADD(nm, ptr, a, b);                                                            \
        } while (0)
        ADDL("attn_norm.weight", w->l[l].attn_norm, E, 1);
        ADDL("attn_q.weight", w->l[l].wq, E, H * D);
        ADDL("attn_k.weight", w->l[l].wk, E, HKV * D);
        ADDL("attn_v.weight", w->l[l].wv, E, HKV * D);
        if (spec->qwen2) {
            ADDL("attn_q.bias", w->l[l].bq, H * D, 1);
            ADDL("attn_k.bias", w->l[l].bk, HKV * D, 1);
            ADDL("attn_v.bias", w->l[l].bv, HKV * D, 1);
        }
        ADDL("attn_output.weight", w->l[l].wo, H * D, E);
        ADDL("ffn_norm.weight", w->l[l].ffn_norm, E, 1);
        ADDL("ffn_gate.weight", w->l[l].gate, E, F);
        ADDL("ffn_up.weight", w->l[l].up, E, F);
        ADDL("ffn_down.weight", w->l[l].down, F, E);
#undef ADDL
    }
#undef ADD

    gguf_builder b = {0};
    char key[96];
    int n_kv = 16 + (spec->rope_scale > 1.0f ? 2 : 0);
    gb_header(&b, 3, (uint64_t)nt, (uint64_t)n_kv);
    gb_key(&b, "general.architecture", 8);
    gb_str(&b, spec->arch);
#define KEY_U32(suffix, v)                                                                 \
    snprintf(key, sizeof key, "%s.%s", spec->arch, suffix);                                \
    gb_key(&b, key, 4);                                                                    \
    gb_u32(&b, v)
#define KEY_F32(suffix, v)                                                                 \
    snprintf(key, sizeof key, "%s.%s", spec->arch, suffix);                                \
    gb_key(&b, key, 6);                                                                    \
    gb_f32(&b, v)
    KEY_U32("block_count", L);
    KEY_U32("embedding_length", E);
    KEY_U32("feed_forward_length", F);
    KEY_U32("attention.head_count", H);
    KEY_U32("attention.head_count_kv", HKV);
    KEY_U32("context_length", CTX);
    KEY_F32("rope.freq_base", 10000.0f);
    KEY_F32("attention.layer_norm_rms_epsilon", 1e-5f);
    if (spec->rope_scale > 1.0f) {
        snprintf(key, sizeof key, "%s.rope.scaling.type", spec->arch);
        gb_key(&b, key, 8);
        gb_str(&b, "linear");
        KEY_F32("rope.scaling.factor", spec->rope_scale);
    }
#undef KEY_U32
#undef KEY_F32
    gb_key(&b, "tokenizer.ggml.model", 8);
    gb_str(&b, "gpt2");
    gb_key(&b, "tokenizer.ggml.pre", 8);
    gb_str(&b, "gpt-2");
    gb_key(&b, "tokenizer.ggml.tokens", 9);
    gb_arr(&b, 8, V);
    for (int i = 0; i < V; i++) {
        char s[16];
        if (i < 256) {
            gb_strn(&b, s, (size_t)byte_token(i, s));
        } else {
            snprintf(s, sizeof s, "<|extra_%d|>", i);
            gb_str(&b, s);
        }
    }
    gb_key(&b, "tokenizer.ggml.token_type", 9);
    gb_arr(&b, 5, V);
    for (int i = 0; i < V; i++)
        gb_u32(&b, i < 256 ? 1 : 3);
    gb_key(&b, "tokenizer.ggml.merges", 9);
    gb_arr(&b, 8, 0);
    gb_key(&b, "tokenizer.ggml.bos_token_id", 4);
    gb_u32(&b, 256);
    gb_key(&b, "tokenizer.ggml.eos_token_id", 4);
    gb_u32(&b, 257);

    uint64_t off = 0;
    for (int i = 0; i < nt; i++) {
        int64_t ne[2] = {t[i].ne0, t[i].ne1};
        gb_tensor_info(&b, t[i].name, t[i].ne1 == 1 ? 1 : 2, ne, 0, off);
        off += ((uint64_t)(t[i].ne0 * t[i].ne1 * 4) + 31) & ~(uint64_t)31;
    }
    gb_pad(&b, 32);
    for (int i = 0; i < nt; i++) {
        gb_bytes(&b, t[i].data, (size_t)(t[i].ne0 * t[i].ne1 * 4));
        gb_pad(&b, 32);
    }
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b.p, 1, b.n, f), b.n);
    fclose(f);
    gb_free(&b);
}

/* ---- the naive reference forward pass ----------------------------------------- */

static void rms_norm_ref(const double *x, const float *w, double *out)
{
    double ss = 0;
    for (int i = 0; i < E; i++)
        ss += x[i] * x[i];
    double inv = 1.0 / sqrt(ss / E + 1e-5);
    for (int i = 0; i < E; i++)
        out[i] = x[i] * inv * w[i];
}

static void matvec(const float *w, const double *x, int rows, int cols, const float *bias,
                   double *out)
{
    for (int r = 0; r < rows; r++) {
        double s = bias ? bias[r] : 0.0;
        for (int c = 0; c < cols; c++)
            s += (double)w[(size_t)r * cols + c] * x[c];
        out[r] = s;
    }
}

static void rope_ref(double *v, int pos, const tiny_spec *spec)
{
    for (int i = 0; i < D / 2; i++) {
        double freq = pow(10000.0, -2.0 * i / D);
        if (spec->rope_scale > 1.0f)
            freq /= spec->rope_scale;
        double a = pos * freq, c = cos(a), s = sin(a);
        int i0 = spec->qwen2 ? i : 2 * i, i1 = spec->qwen2 ? i + D / 2 : 2 * i + 1;
        double x0 = v[i0], x1 = v[i1];
        v[i0] = x0 * c - x1 * s;
        v[i1] = x0 * s + x1 * c;
    }
}

/* logits[n][V] for tokens ids[0..n), positions 0.. */
static void forward_ref(const tiny_weights *w, const tiny_spec *spec, const int32_t *ids, int n,
                        double *logits)
{
    double(*x)[E] = calloc((size_t)n, sizeof *x);
    double(*kc)[L][HKV * D] = calloc((size_t)n, sizeof *kc);
    double(*vc)[L][HKV * D] = calloc((size_t)n, sizeof *vc);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < E; i++)
            x[t][i] = w->embd[ids[t]][i];
    for (int t = 0; t < n; t++) {
        for (int l = 0; l < L; l++) {
            double xn[E], q[H * D], att[H * D], o[E], g[F], u[F];
            rms_norm_ref(x[t], w->l[l].attn_norm, xn);
            matvec(&w->l[l].wq[0][0], xn, H * D, E, spec->qwen2 ? w->l[l].bq : NULL, q);
            matvec(&w->l[l].wk[0][0], xn, HKV * D, E, spec->qwen2 ? w->l[l].bk : NULL, kc[t][l]);
            matvec(&w->l[l].wv[0][0], xn, HKV * D, E, spec->qwen2 ? w->l[l].bv : NULL, vc[t][l]);
            for (int h = 0; h < H; h++)
                rope_ref(q + h * D, t, spec);
            for (int h = 0; h < HKV; h++)
                rope_ref(kc[t][l] + h * D, t, spec);
            for (int h = 0; h < H; h++) {
                int kh = h / (H / HKV);
                double sc[CTX], mx = -1e300, z = 0;
                for (int p = 0; p <= t; p++) {
                    double s = 0;
                    for (int i = 0; i < D; i++)
                        s += q[h * D + i] * kc[p][l][kh * D + i];
                    sc[p] = s / sqrt((double)D);
                    if (sc[p] > mx)
                        mx = sc[p];
                }
                for (int p = 0; p <= t; p++)
                    z += sc[p] = exp(sc[p] - mx);
                for (int i = 0; i < D; i++) {
                    double acc = 0;
                    for (int p = 0; p <= t; p++)
                        acc += sc[p] / z * vc[p][l][kh * D + i];
                    att[h * D + i] = acc;
                }
            }
            matvec(&w->l[l].wo[0][0], att, E, H * D, NULL, o);
            for (int i = 0; i < E; i++)
                x[t][i] += o[i];
            rms_norm_ref(x[t], w->l[l].ffn_norm, xn);
            matvec(&w->l[l].gate[0][0], xn, F, E, NULL, g);
            matvec(&w->l[l].up[0][0], xn, F, E, NULL, u);
            for (int i = 0; i < F; i++)
                g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
            matvec(&w->l[l].down[0][0], g, E, F, NULL, o);
            for (int i = 0; i < E; i++)
                x[t][i] += o[i];
        }
        double xn[E];
        rms_norm_ref(x[t], w->out_norm, xn);
        matvec(spec->tied ? &w->embd[0][0] : &w->out[0][0], xn, V, E, NULL,
               logits + (size_t)t * V);
    }
    free(x);
    free(kc);
    free(vc);
}

/* ---- tests ------------------------------------------------------------------- */

static char *temp_path(const char *tag)
{
    static _Thread_local char buf[256];
    snprintf(buf, sizeof buf, "/tmp/duet_test_model_%d_%s.gguf", (int)getpid(), tag);
    return buf;
}

static void check_against_reference(const tiny_spec *spec, const char *device_threads_tag,
                                    int n_threads)
{
    tiny_weights *w = malloc(sizeof *w);
    make_weights(w, 1234);
    const char *path = temp_path(spec->arch);
    write_model(path, spec, w);

    duet_model *m = NULL;
    duet_session *s = NULL;
    duet_model_options mo = {.device = "cpu", .n_threads = n_threads};
    duet_status rc = duet_model_load(path, &mo, &m);
    if (rc)
        fail_msg("load: %s", duet_last_error());
    assert_string_equal(duet_model_arch(m), spec->arch);
    assert_int_equal(m->config.tied_embeddings, spec->tied);
    assert_int_equal(duet_session_create(m, NULL, &s), DUET_OK);

    enum { N = 100 }; /* spans two eval chunks and several KV blocks */
    int32_t ids[N];
    unsigned seed = 99;
    for (int i = 0; i < N; i++)
        ids[i] = rand_r(&seed) % V;
    float *got = malloc(sizeof(float) * N * V);
    double *want = malloc(sizeof(double) * N * V);
    for (int i = 0; i < N * V; i++)
        got[i] = NAN;
    assert_int_equal(duet_eval_logits(s, ids, N, got), DUET_OK);
    forward_ref(w, spec, ids, N, want);
    double num = 0, den = 0;
    int top1 = 0;
    for (int t = 0; t < N; t++) {
        int a = 0, b = 0;
        for (int v = 0; v < V; v++) {
            double g = got[(size_t)t * V + v], r = want[(size_t)t * V + v];
            assert_true(isfinite(g));
            num += (g - r) * (g - r);
            den += r * r;
            if (g > got[(size_t)t * V + a]) a = v;
            if (r > want[(size_t)t * V + b]) b = v;
        }
        top1 += a == b;
    }
    double nmse = num / den;
    print_message("%s (%s): NMSE %.3g, top-1 %d/%d\n", spec->arch, device_threads_tag, nmse, top1, N);
    assert_true(nmse < 1e-8);
    assert_int_equal(top1, N);

    free(got);
    free(want);
    duet_session_free(s);
    duet_model_free(m);
    unlink(path);
    free(w);
}

static void test_llama_tied(void **state)
{
    (void)state;
    tiny_spec spec = {"llama", 0, 1, 1.0f};
    check_against_reference(&spec, "2 threads", 2);
}

static void test_llama_untied_scaled_rope_one_thread(void **state)
{
    (void)state;
    tiny_spec spec = {"llama", 0, 0, 4.0f};
    check_against_reference(&spec, "1 thread", 1);
}

static void test_qwen2_bias_neox(void **state)
{
    (void)state;
    tiny_spec spec = {"qwen2", 1, 0, 1.0f};
    check_against_reference(&spec, "2 threads", 2);
}

static void test_unsupported_arch(void **state)
{
    (void)state;
    tiny_weights *w = malloc(sizeof *w);
    make_weights(w, 1);
    tiny_spec spec = {"mamba", 0, 1, 1.0f};
    const char *path = temp_path("mamba");
    write_model(path, &spec, w);
    duet_model *m = (duet_model *)1;
    assert_int_equal(duet_model_load(path, NULL, &m), DUET_ERR_UNSUPPORTED);
    assert_null(m);
    assert_non_null(strstr(duet_last_error(), "'mamba'"));
    assert_non_null(strstr(duet_last_error(), "llama, mistral, qwen2"));
    unlink(path);
    free(w);
}

static void test_missing_file(void **state)
{
    (void)state;
    duet_model *m = (duet_model *)1;
    assert_int_not_equal(duet_model_load("/nonexistent/dir/model.gguf", NULL, &m), DUET_OK);
    assert_null(m);
    assert_non_null(strstr(duet_last_error(), "/nonexistent/dir/model.gguf"));
}

/* Fail each fallible device call of session creation and of a forward
 * pass in turn: every failure must come back as a status, leak nothing
 * (ASan build) and leave the model usable. */
static void test_fault_injection(void **state)
{
    (void)state;
    tiny_weights *w = malloc(sizeof *w);
    make_weights(w, 5);
    tiny_spec spec = {"llama", 0, 1, 1.0f};
    const char *path = temp_path("faults");
    write_model(path, &spec, w);
    duet_model *m = NULL;
    assert_int_equal(duet_model_load(path, NULL, &m), DUET_OK);
    int32_t ids[20];
    for (int i = 0; i < 20; i++)
        ids[i] = i * 7 % V;
    float *logits = malloc(sizeof(float) * 20 * V);

    /* Count the calls of one clean run. */
    duet_session *s = NULL;
    duet_dev_fault_inject(m->dev, 0);
    assert_int_equal(duet_session_create(m, NULL, &s), DUET_OK);
    assert_int_equal(duet_eval_logits(s, ids, 20, logits), DUET_OK);
    duet_session_free(s);
    int calls = duet_dev_fault_calls(m->dev);
    assert_true(calls > 10);

    int failures = 0;
    for (int nth = 1; nth <= calls; nth++) {
        s = NULL;
        duet_dev_fault_inject(m->dev, nth);
        duet_status rc = duet_session_create(m, NULL, &s);
        if (rc == DUET_OK)
            rc = duet_eval_logits(s, ids, 20, logits);
        if (rc != DUET_OK) {
            failures++;
            assert_int_equal(rc, DUET_ERR_OUT_OF_MEMORY);
            assert_non_null(strstr(duet_last_error(), "injected fault"));
        }
        duet_session_free(s);
    }
    assert_int_equal(failures, calls);
    duet_dev_fault_inject(m->dev, 0);

    /* Still works after all that. */
    assert_int_equal(duet_session_create(m, NULL, &s), DUET_OK);
    assert_int_equal(duet_eval_logits(s, ids, 20, logits), DUET_OK);
    duet_session_free(s);
    free(logits);
    duet_model_free(m);
    unlink(path);
    free(w);
}

static void test_generate_bad_params(void **state)
{
    (void)state;
    tiny_weights *w = malloc(sizeof *w);
    make_weights(w, 7);
    tiny_spec spec = {"llama", 0, 1, 1.0f};
    const char *path = temp_path("params");
    write_model(path, &spec, w);
    duet_model *m = NULL;
    duet_session *s = NULL;
    assert_int_equal(duet_model_load(path, NULL, &m), DUET_OK);
    duet_session_options so = {.max_context = 32};
    assert_int_equal(duet_session_create(m, &so, &s), DUET_OK);
    int32_t ids[40] = {0};
    duet_generate_params p = {.max_tokens = 0};
    assert_int_equal(duet_generate(s, ids, 4, &p, NULL, NULL, NULL), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "max_tokens is 0"));
    p.max_tokens = 10;
    assert_int_equal(duet_generate(s, ids, 30, &p, NULL, NULL, NULL), DUET_ERR_INVALID_ARG);
    assert_non_null(strstr(duet_last_error(), "context of 32"));
    ids[2] = V + 5;
    assert_int_equal(duet_generate(s, ids, 4, &p, NULL, NULL, NULL), DUET_ERR_INVALID_ARG);
    ids[2] = 0;
    duet_generate_stats st;
    p.ignore_eos = 1;
    assert_int_equal(duet_generate(s, ids, 4, &p, NULL, NULL, &st), DUET_OK);
    assert_int_equal(st.n_generated, 10);
    assert_int_equal(st.n_prompt, 4);
    duet_session_free(s);
    duet_model_free(m);
    unlink(path);
    free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_tied),
        cmocka_unit_test(test_llama_untied_scaled_rope_one_thread),
        cmocka_unit_test(test_qwen2_bias_neox),
        cmocka_unit_test(test_unsupported_arch),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_fault_injection),
        cmocka_unit_test(test_generate_bad_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
