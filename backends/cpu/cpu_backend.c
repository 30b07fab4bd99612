/*
 * cpu_backend.c — the CPU device: host buffers, recorded streams, and the
 * duet_device_ops table that routes each op to the reference or the fast
 * kernels (cpu_ops.h).
 *
 * A stream records commands (an op's argument struct, or a copy) into a
 * growable list; upload sources are copied into stream-owned storage at
 * record time, so the caller may reuse its memory at once. Submit hands the
 * list to the stream's executor thread and returns: the engine can prepare
 * its next step while this one runs. Wait blocks until the list is done.
 * Streams of one device take turns on the device's thread pool (exec_lock),
 * since the pool runs one job at a time, in submission order (a ticket
 * taken at submit), as device.h promises.
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "cpu_ops.h"
#include "cpu_sample.h"
#include "device.h"
#include "error.h"
#include "quant.h"

/* Large enough for any SIMD load; also keeps rows cache-line aligned. */
enum { CPU_ALIGN = 64 };

struct duet_buffer {
    void *host;
    size_t size;
    int owned; /* 0 = wrapped caller memory, not ours to free */
};

typedef struct cpu_device {
    duet_threadpool *pool;
    int n_threads;
    int reference; /* 1 = every op through the reference kernels */
    duet_cpu_features features;
    duet_cpu_isa isa;    /* matmul kernel family, chosen once at creation */
    duet_mm_act mm_act;  /* activation path of the quantized matmuls */
    pthread_mutex_t exec_lock;
    pthread_cond_t turn;          /* serving advanced */
    uint64_t next_ticket, serving; /* submission order, under exec_lock */
} cpu_device;

typedef enum cmd_kind {
    CMD_UPLOAD, CMD_DOWNLOAD, CMD_EMBED, CMD_RMS_NORM, CMD_MATMUL, CMD_ROPE, CMD_KV_WRITE,
    CMD_ATTENTION, CMD_SWIGLU, CMD_ADD, CMD_GATHER_ROWS, CMD_SAMPLE,
} cmd_kind;

typedef struct cmd {
    cmd_kind kind;
    union {
        struct {
            duet_addr dst;
            size_t data; /* offset into the stream's upload storage */
            size_t n;
        } upload;
        struct {
            duet_addr src;
            void *dst;
            size_t n;
        } download;
        duet_embed_args embed;
        duet_rms_norm_args rms_norm;
        duet_matmul_args matmul;
        duet_rope_args rope;
        duet_kv_write_args kv_write;
        duet_attention_args attention;
        duet_swiglu_args swiglu;
        duet_add_args add;
        duet_gather_rows_args gather_rows;
        duet_sample_args sample;
    } u;
} cmd;

typedef enum stream_state { STREAM_RECORDING, STREAM_SUBMITTED, STREAM_DONE } stream_state;

struct duet_stream {
    cpu_device *dev;
    cmd *cmds;
    size_t n_cmds, cap_cmds;
    unsigned char *data; /* upload sources, copied at record time */
    size_t n_data, cap_data;
    float *up;     /* the gated matmul's up product, sized at record time for
                      the largest one recorded (the stream's own, so streams
                      running one after another never share it) */
    size_t cap_up; /* floats */

    /* The executor thread and its hand-off. */
    pthread_t thread;
    pthread_mutex_t mutex;
    pthread_cond_t changed;
    stream_state state;
    int quit;
    int recording; /* begin..submit; touched only by the caller's thread */
    uint64_t ticket; /* place in the device's submission order */
};

/* ---- buffers ------------------------------------------------------------------ */

static void *cpu_ptr(duet_addr a) { return a.buf ? (char *)a.buf->host + a.offset : NULL; }

static cpu_rope_spec cpu_rope_spec_of(const duet_rope_spec *r)
{
    return (cpu_rope_spec){cpu_ptr(r->positions), cpu_ptr(r->freq_factors), r->rot_dim,
                           r->mode == DUET_ROPE_NEOX, r->theta_base};
}

static duet_status cpu_buffer_alloc(void *ctx, size_t size, duet_buffer **out)
{
    (void)ctx;
    *out = NULL;
    duet_buffer *b = malloc(sizeof *b);
    if (!b)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "cpu: out of memory for a buffer header");
    size_t rounded = (size + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
    if (rounded < size || !(b->host = aligned_alloc(CPU_ALIGN, rounded ? rounded : CPU_ALIGN))) {
        free(b);
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "cpu: cannot allocate a buffer of %zu bytes",
                          size);
    }
    b->size = size;
    b->owned = 1;
    *out = b;
    return DUET_OK;
}

static duet_status cpu_buffer_wrap_host(void *ctx, void *host, size_t size, duet_buffer **out)
{
    (void)ctx;
    *out = NULL;
    duet_buffer *b = malloc(sizeof *b);
    if (!b)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "cpu: out of memory for a buffer header");
    b->host = host;
    b->size = size;
    b->owned = 0;
    *out = b;
    return DUET_OK;
}

static void cpu_buffer_free(void *ctx, duet_buffer *b)
{
    (void)ctx;
    if (!b)
        return;
    if (b->owned)
        free(b->host);
    free(b);
}

static size_t cpu_buffer_size(void *ctx, const duet_buffer *b)
{
    (void)ctx;
    return b->size;
}

static duet_status cpu_buffer_write(void *ctx, duet_addr dst, const void *src, size_t n)
{
    (void)ctx;
    memcpy(cpu_ptr(dst), src, n);
    return DUET_OK;
}

static duet_status cpu_buffer_read(void *ctx, duet_addr src, void *dst, size_t n)
{
    (void)ctx;
    memcpy(dst, cpu_ptr(src), n);
    return DUET_OK;
}

/* ---- execution ------------------------------------------------------------------ */

/* out = x . w^T (+ bias) with a's shapes, on the reference or the fast
 * kernels. */
static void matmul_run(cpu_device *d, const void *w, float *out, const duet_matmul_args *a)
{
    if (d->reference)
        duet_matmul_ref(cpu_ptr(a->x), w, a->w_type, cpu_ptr(a->bias), out, a->n_rows, a->k,
                        a->n);
    else
        duet_matmul_isa_act(d->pool, d->isa, d->mm_act, cpu_ptr(a->x), w, a->w_type,
                            cpu_ptr(a->bias), out, a->n_rows, a->k, a->n);
}

/* Run one recorded command, resolving {buffer, offset} operands now (the
 * buffers may have been written since recording). */
static void exec_cmd(cpu_device *d, duet_stream *s, const cmd *c)
{
    duet_threadpool *pool = d->pool;
    int ref = d->reference;
    switch (c->kind) {
    case CMD_UPLOAD:
        memcpy(cpu_ptr(c->u.upload.dst), s->data + c->u.upload.data, c->u.upload.n);
        break;
    case CMD_DOWNLOAD:
        memcpy(c->u.download.dst, cpu_ptr(c->u.download.src), c->u.download.n);
        break;
    case CMD_EMBED: {
        const duet_embed_args *a = &c->u.embed;
        cpu_embed k = {cpu_ptr(a->ids), cpu_ptr(a->table), cpu_ptr(a->out), a->table_type,
                       a->n_tokens, a->vocab, a->dim, cpu_ptr(a->prev_tokens), a->n_prev};
        ref ? duet_cpu_embed_ref(&k) : duet_cpu_embed_fast(pool, &k);
        break;
    }
    case CMD_RMS_NORM: {
        const duet_rms_norm_args *a = &c->u.rms_norm;
        cpu_rms_norm k = {cpu_ptr(a->x), cpu_ptr(a->weight), cpu_ptr(a->out),
                          cpu_ptr(a->residual), a->n_rows, a->dim, a->eps};
        ref ? duet_cpu_rms_norm_ref(&k) : duet_cpu_rms_norm_fast(pool, &k);
        break;
    }
    case CMD_MATMUL: {
        /* The gated form is the three ops it replaces, run one after the
         * other: gate into out, up into the stream's scratch, then swiglu
         * in place, so its bits are theirs. */
        const duet_matmul_args *a = &c->u.matmul;
        matmul_run(d, cpu_ptr(a->w), cpu_ptr(a->out), a);
        if (a->w_up.buf) {
            matmul_run(d, cpu_ptr(a->w_up), s->up, a);
            cpu_swiglu k = {cpu_ptr(a->out), s->up, cpu_ptr(a->out), a->n_rows, a->n};
            ref ? duet_cpu_swiglu_ref(&k) : duet_cpu_swiglu_fast(pool, &k);
        }
        break;
    }
    case CMD_ROPE: {
        const duet_rope_args *a = &c->u.rope;
        cpu_rope k = {cpu_ptr(a->q), cpu_ptr(a->k), cpu_rope_spec_of(&a->rope), a->n_tokens,
                      a->n_heads, a->n_kv_heads, a->head_dim};
        ref ? duet_cpu_rope_ref(&k) : duet_cpu_rope_fast(pool, &k);
        break;
    }
    case CMD_KV_WRITE: {
        const duet_kv_write_args *a = &c->u.kv_write;
        cpu_kv_write k = {cpu_ptr(a->k), cpu_ptr(a->v), cpu_ptr(a->slot_mapping),
                          cpu_ptr(a->k_cache), cpu_ptr(a->v_cache), cpu_rope_spec_of(&a->rope),
                          a->cache_type, a->n_tokens, a->n_kv_heads, a->head_dim,
                          a->num_blocks, a->block_size};
        ref ? duet_cpu_kv_write_ref(&k) : duet_cpu_kv_write_fast(pool, &k);
        break;
    }
    case CMD_ATTENTION: {
        const duet_attention_args *a = &c->u.attention;
        cpu_attention k = {cpu_ptr(a->q), cpu_ptr(a->k_cache), cpu_ptr(a->v_cache),
                           cpu_ptr(a->block_tables), cpu_ptr(a->seq_lens),
                           cpu_ptr(a->query_start_loc), cpu_ptr(a->out), a->cache_type,
                           a->n_tokens, a->n_seqs, a->n_heads, a->n_kv_heads, a->head_dim,
                           a->num_blocks, a->block_size, a->max_blocks_per_seq, a->scale,
                           a->max_seq_len};
        ref ? duet_cpu_attention_ref(&k) : duet_cpu_attention_fast(pool, &k);
        break;
    }
    case CMD_SWIGLU: {
        const duet_swiglu_args *a = &c->u.swiglu;
        cpu_swiglu k = {cpu_ptr(a->gate), cpu_ptr(a->up), cpu_ptr(a->out), a->n_rows, a->dim};
        ref ? duet_cpu_swiglu_ref(&k) : duet_cpu_swiglu_fast(pool, &k);
        break;
    }
    case CMD_ADD: {
        const duet_add_args *a = &c->u.add;
        cpu_add k = {cpu_ptr(a->a), cpu_ptr(a->b), a->n};
        ref ? duet_cpu_add_ref(&k) : duet_cpu_add_fast(pool, &k);
        break;
    }
    case CMD_GATHER_ROWS: {
        const duet_gather_rows_args *a = &c->u.gather_rows;
        cpu_gather_rows k = {cpu_ptr(a->x), cpu_ptr(a->rows), cpu_ptr(a->out), a->n_in,
                             a->n_out, a->dim};
        ref ? duet_cpu_gather_rows_ref(&k) : duet_cpu_gather_rows_fast(pool, &k);
        break;
    }
    case CMD_SAMPLE: {
        const duet_sample_args *a = &c->u.sample;
        cpu_sample k = {cpu_ptr(a->logits), cpu_ptr(a->rows),   cpu_ptr(a->edits),
                        cpu_ptr(a->work),   cpu_ptr(a->results), a->n_rows,
                        a->vocab,           a->n_edits};
        ref ? duet_cpu_sample_ref(&k) : duet_cpu_sample_fast(pool, &k);
        int32_t *packed = cpu_ptr(a->tokens_out);
        for (int i = 0; packed && i < a->n_rows; i++)
            packed[i] = k.results[i].token;
        break;
    }
    }
}

/* ---- streams -------------------------------------------------------------------- */

static void *stream_main(void *arg)
{
    duet_stream *s = arg;
    pthread_mutex_lock(&s->mutex);
    for (;;) {
        while (s->state != STREAM_SUBMITTED && !s->quit)
            pthread_cond_wait(&s->changed, &s->mutex);
        if (s->quit)
            break;
        pthread_mutex_unlock(&s->mutex);
        cpu_device *dev = s->dev;
        pthread_mutex_lock(&dev->exec_lock);
        while (dev->serving != s->ticket)
            pthread_cond_wait(&dev->turn, &dev->exec_lock);
        for (size_t i = 0; i < s->n_cmds; i++)
            exec_cmd(dev, s, &s->cmds[i]);
        dev->serving++;
        pthread_cond_broadcast(&dev->turn);
        pthread_mutex_unlock(&dev->exec_lock);
        pthread_mutex_lock(&s->mutex);
        s->state = STREAM_DONE;
        pthread_cond_broadcast(&s->changed);
    }
    pthread_mutex_unlock(&s->mutex);
    return NULL;
}

static duet_status cpu_stream_create(void *ctx, duet_stream **out)
{
    duet_status rc = DUET_OK;
    *out = NULL;
    duet_stream *s = calloc(1, sizeof *s);
    if (!s)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "cpu: out of memory for a stream");
    s->dev = ctx;
    s->state = STREAM_RECORDING;
    if (pthread_mutex_init(&s->mutex, NULL)) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "cpu: cannot create a stream mutex");
        goto out_free_stream;
    }
    if (pthread_cond_init(&s->changed, NULL)) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "cpu: cannot create a stream condition");
        goto out_destroy_mutex;
    }
    if (pthread_create(&s->thread, NULL, stream_main, s)) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "cpu: cannot start a stream executor thread");
        goto out_destroy_cond;
    }
    *out = s;
    return DUET_OK;

out_destroy_cond:
    pthread_cond_destroy(&s->changed);
out_destroy_mutex:
    pthread_mutex_destroy(&s->mutex);
out_free_stream:
    free(s);
    return rc;
}

/* Block until no submission of s is running. */
static void stream_drain(duet_stream *s)
{
    pthread_mutex_lock(&s->mutex);
    while (s->state == STREAM_SUBMITTED)
        pthread_cond_wait(&s->changed, &s->mutex);
    pthread_mutex_unlock(&s->mutex);
}

static void cpu_stream_destroy(void *ctx, duet_stream *s)
{
    (void)ctx;
    if (!s)
        return;
    stream_drain(s);
    pthread_mutex_lock(&s->mutex);
    s->quit = 1;
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->mutex);
    pthread_join(s->thread, NULL);
    pthread_cond_destroy(&s->changed);
    pthread_mutex_destroy(&s->mutex);
    free(s->cmds);
    free(s->data);
    free(s->up);
    free(s);
}

static duet_status cpu_stream_begin(void *ctx, duet_stream *s)
{
    (void)ctx;
    /* A begin while the last submission runs waits for it rather than
     * pulling its command list out from under the executor. */
    pthread_mutex_lock(&s->mutex);
    while (s->state == STREAM_SUBMITTED)
        pthread_cond_wait(&s->changed, &s->mutex);
    s->state = STREAM_RECORDING;
    pthread_mutex_unlock(&s->mutex);
    s->n_cmds = 0;
    s->n_data = 0;
    s->recording = 1;
    return DUET_OK;
}

static duet_status cpu_stream_submit(void *ctx, duet_stream *s)
{
    (void)ctx;
    if (!s->recording)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "cpu: stream_submit without a stream_begin since the last submit");
    s->recording = 0;
    pthread_mutex_lock(&s->dev->exec_lock);
    s->ticket = s->dev->next_ticket++;
    pthread_mutex_unlock(&s->dev->exec_lock);
    pthread_mutex_lock(&s->mutex);
    s->state = STREAM_SUBMITTED;
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->mutex);
    return DUET_OK;
}

static duet_status cpu_stream_wait(void *ctx, duet_stream *s)
{
    (void)ctx;
    stream_drain(s);
    return DUET_OK;
}

/* Append a command; fails if s is not recording or memory runs out. */
static duet_status push_cmd(duet_stream *s, const cmd *c)
{
    if (!s->recording)
        return duet_error(DUET_ERR_INVALID_ARG,
                          "cpu: recording into a stream outside stream_begin..stream_submit");
    if (s->n_cmds == s->cap_cmds) {
        size_t cap = s->cap_cmds ? 2 * s->cap_cmds : 64;
        cmd *grown = realloc(s->cmds, cap * sizeof *grown);
        if (!grown)
            return duet_error(DUET_ERR_OUT_OF_MEMORY,
                              "cpu: out of memory growing a stream to %zu commands", cap);
        s->cmds = grown;
        s->cap_cmds = cap;
    }
    s->cmds[s->n_cmds++] = *c;
    return DUET_OK;
}

static duet_status cpu_upload(void *ctx, duet_stream *s, duet_addr dst, const void *src, size_t n)
{
    (void)ctx;
    size_t at = (s->n_data + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
    if (at + n > s->cap_data) {
        size_t cap = s->cap_data ? s->cap_data : 4096;
        while (cap < at + n)
            cap *= 2;
        unsigned char *grown = realloc(s->data, cap);
        if (!grown)
            return duet_error(DUET_ERR_OUT_OF_MEMORY,
                              "cpu: out of memory for %zu bytes of stream uploads", cap);
        s->data = grown;
        s->cap_data = cap;
    }
    cmd c = {.kind = CMD_UPLOAD, .u.upload = {dst, at, n}};
    duet_status rc = push_cmd(s, &c);
    if (rc == DUET_OK) {
        memcpy(s->data + at, src, n);
        s->n_data = at + n;
    }
    return rc;
}

static duet_status cpu_download(void *ctx, duet_stream *s, duet_addr src, void *dst, size_t n)
{
    (void)ctx;
    cmd c = {.kind = CMD_DOWNLOAD, .u.download = {src, dst, n}};
    return push_cmd(s, &c);
}

/* One recorder per op: copy the argument struct into the list. */
#define RECORDER(name, KIND, type)                                                          \
    static duet_status rec_##name(void *ctx, duet_stream *s, const type *a)                 \
    {                                                                                       \
        (void)ctx;                                                                          \
        cmd c = {.kind = KIND, .u.name = *a};                                               \
        return push_cmd(s, &c);                                                             \
    }

RECORDER(embed, CMD_EMBED, duet_embed_args)
RECORDER(rms_norm, CMD_RMS_NORM, duet_rms_norm_args)
RECORDER(rope, CMD_ROPE, duet_rope_args)
RECORDER(kv_write, CMD_KV_WRITE, duet_kv_write_args)
RECORDER(attention, CMD_ATTENTION, duet_attention_args)
RECORDER(swiglu, CMD_SWIGLU, duet_swiglu_args)
RECORDER(add, CMD_ADD, duet_add_args)
RECORDER(gather_rows, CMD_GATHER_ROWS, duet_gather_rows_args)
RECORDER(sample, CMD_SAMPLE, duet_sample_args)

/* The gated form needs room for its up product; it is allocated here, at
 * record time, where running out of memory can still be reported. */
static duet_status rec_matmul(void *ctx, duet_stream *s, const duet_matmul_args *a)
{
    (void)ctx;
    size_t need = (size_t)a->n_rows * (size_t)a->n;
    if (a->w_up.buf && need > s->cap_up) {
        if (!s->recording)
            return duet_error(DUET_ERR_INVALID_ARG,
                              "cpu: recording into a stream outside stream_begin..stream_submit");
        size_t bytes = (need * sizeof(float) + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
        float *up = aligned_alloc(CPU_ALIGN, bytes);
        if (!up)
            return duet_error(DUET_ERR_OUT_OF_MEMORY,
                              "cpu: out of memory for a gated matmul's %zu-float up product",
                              need);
        free(s->up);
        s->up = up;
        s->cap_up = need;
    }
    cmd c = {.kind = CMD_MATMUL, .u.matmul = *a};
    return push_cmd(s, &c);
}

/* ---- the device --------------------------------------------------------------------- */

static void cpu_destroy(void *ctx)
{
    cpu_device *d = ctx;
    if (!d)
        return;
    duet_threadpool_free(d->pool);
    pthread_cond_destroy(&d->turn);
    pthread_mutex_destroy(&d->exec_lock);
    free(d);
}

/* "AVX-512 VNNI", "AVX2+FMA", ...: the widest path the CPU offers. */
static const char *features_name(const duet_cpu_features *f)
{
    if (f->avx512f && f->avx512vnni)
        return "AVX-512 VNNI";
    if (f->avx512f)
        return "AVX-512";
    if (f->avx2 && f->fma && f->avxvnni)
        return "AVX2+FMA+AVX-VNNI";
    if (f->avx2 && f->fma)
        return "AVX2+FMA";
    return "no AVX2: reference kernels";
}

static void cpu_get_info(void *ctx, duet_device_info *out)
{
    cpu_device *d = ctx;
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "CPU (%d thread%s, %s%s)", d->n_threads,
             d->n_threads == 1 ? "" : "s", features_name(&d->features),
             d->reference ? ", reference kernels" : "");
    snprintf(out->backend, sizeof out->backend, "cpu");
    struct sysinfo si;
    if (sysinfo(&si) == 0) {
        out->mem_total = (uint64_t)si.totalram * si.mem_unit;
        out->mem_free = ((uint64_t)si.freeram + si.bufferram) * si.mem_unit;
    }
    out->n_threads = d->n_threads;
}

static const duet_device_ops cpu_ops = {
    .version = DUET_DEVICE_OPS_VERSION,
    .destroy = cpu_destroy,
    .get_info = cpu_get_info,
    .buffer_alloc = cpu_buffer_alloc,
    .buffer_free = cpu_buffer_free,
    .buffer_size = cpu_buffer_size,
    .buffer_write = cpu_buffer_write,
    .buffer_read = cpu_buffer_read,
    .buffer_wrap_host = cpu_buffer_wrap_host,
    .stream_create = cpu_stream_create,
    .stream_destroy = cpu_stream_destroy,
    .stream_begin = cpu_stream_begin,
    .stream_submit = cpu_stream_submit,
    .stream_wait = cpu_stream_wait,
    .upload = cpu_upload,
    .download = cpu_download,
    .embed = rec_embed,
    .rms_norm = rec_rms_norm,
    .matmul = rec_matmul,
    .rope = rec_rope,
    .kv_write = rec_kv_write,
    .attention = rec_attention,
    .swiglu = rec_swiglu,
    .add = rec_add,
    .gather_rows = rec_gather_rows,
    .sample = rec_sample,
};

/* Cores this process may run on (affinity, not just the machine's). */
static int default_threads(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Thread counts above this are almost certainly a mistake (and each
 * thread reserves a stack). */
enum { CPU_MAX_THREADS = 1024 };

duet_status duet_cpu_device_create(const duet_device_options *opts, duet_device **out)
{
    duet_status rc = DUET_OK;
    duet_device_options defaults = {0};
    *out = NULL;
    if (!opts)
        opts = &defaults;
    if (opts->n_threads < 0 || opts->n_threads > CPU_MAX_THREADS)
        return duet_error(DUET_ERR_INVALID_ARG, "cpu: n_threads %d must be in [0, %d]",
                          opts->n_threads, CPU_MAX_THREADS);
    cpu_device *d = calloc(1, sizeof *d);
    if (!d)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "cpu: out of memory for the device");
    d->n_threads = opts->n_threads ? opts->n_threads : default_threads();
    duet_cpu_features_get(&d->features);
    const char *env = getenv("DUET_CPU_REFERENCE");
    int simd = d->features.avx2 && d->features.fma && d->features.f16c;
    d->reference = opts->force_reference || (env && strcmp(env, "1") == 0) || !simd;
    /* Decided here, once: the environment is not read on the hot path. */
    d->isa = duet_cpu_isa_select(&d->features, d->reference);
    d->mm_act = duet_mm_act_detect();
    if (pthread_mutex_init(&d->exec_lock, NULL)) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "cpu: cannot create the device lock");
        goto out_free_device;
    }
    if (pthread_cond_init(&d->turn, NULL)) {
        pthread_mutex_destroy(&d->exec_lock);
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "cpu: cannot create the device condition");
        goto out_free_device;
    }
    rc = duet_threadpool_create(d->n_threads, &d->pool);
    if (rc)
        goto out_destroy_lock;
    duet_device *dev = calloc(1, sizeof *dev);
    if (!dev) {
        rc = duet_error(DUET_ERR_OUT_OF_MEMORY, "cpu: out of memory for the device");
        goto out_free_pool;
    }
    dev->ops = &cpu_ops;
    dev->ctx = d;
    *out = dev;
    return DUET_OK;

out_free_pool:
    duet_threadpool_free(d->pool);
out_destroy_lock:
    pthread_cond_destroy(&d->turn);
    pthread_mutex_destroy(&d->exec_lock);
out_free_device:
    free(d);
    return rc;
}
