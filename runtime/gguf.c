#include "gguf.h"

#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_N_TYPES 13

/* The smallest possible encodings. Counts read from the header are checked
 * against them before anything is allocated, so a forged kv_count of 2^60
 * is an error message instead of a huge malloc. */
#define MIN_KV_BYTES 13          /* key length 8 + value type 4 + 1-byte value */
#define MIN_TENSOR_INFO_BYTES 32 /* name length 8 + n_dims 4 + ne 8 + type 4 + offset 8 */
#define MIN_STRING_BYTES 8       /* the length prefix */

/* Open addressing over entry indices (slot = index + 1, 0 = empty). Keys
 * and tensor names are hashed so a forged file with millions of tensors
 * cannot make duplicate detection quadratic. */
typedef struct name_index {
    uint64_t *slots;
    uint64_t mask;
} name_index;

struct duet_gguf {
    const uint8_t *base;
    uint64_t size;
    int mapped;
    char *name; /* path or caller-given name, for messages */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;
    int64_t n_kv; /* parsed so far during parsing; all after */
    duet_gguf_kv *kvs;
    int64_t n_tensors;
    duet_gguf_tensor *tensors;
    name_index kv_index;
    name_index tensor_index;
};

/* Parsing position plus what is being parsed, for messages. */
typedef struct cursor {
    const duet_gguf *g;
    uint64_t pos;
    char where[192]; /* "key 5 ('general.name')" */
} cursor;

/* ---- small helpers ------------------------------------------------------ */

static uint64_t load_le(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static size_t type_size(uint32_t t)
{
    switch (t) {
    case DUET_GGUF_UINT8:
    case DUET_GGUF_INT8:
    case DUET_GGUF_BOOL: return 1;
    case DUET_GGUF_UINT16:
    case DUET_GGUF_INT16: return 2;
    case DUET_GGUF_UINT32:
    case DUET_GGUF_INT32:
    case DUET_GGUF_FLOAT32: return 4;
    case DUET_GGUF_UINT64:
    case DUET_GGUF_INT64:
    case DUET_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

static int type_is_int(uint32_t t)
{
    return t == DUET_GGUF_UINT8 || t == DUET_GGUF_INT8 || t == DUET_GGUF_UINT16 ||
           t == DUET_GGUF_INT16 || t == DUET_GGUF_UINT32 || t == DUET_GGUF_INT32 ||
           t == DUET_GGUF_UINT64 || t == DUET_GGUF_INT64;
}

static int type_is_signed(uint32_t t)
{
    return t == DUET_GGUF_INT8 || t == DUET_GGUF_INT16 || t == DUET_GGUF_INT32 ||
           t == DUET_GGUF_INT64;
}

const char *duet_gguf_type_name(uint32_t type)
{
    static const char *const names[GGUF_N_TYPES] = {
        "uint8", "int8",   "uint16", "int16", "uint32", "int32",   "float32",
        "bool",  "string", "array",  "uint64", "int64", "float64",
    };
    return type < GGUF_N_TYPES ? names[type] : "unknown";
}

int duet_gguf_str_eq(duet_gguf_str s, const char *c)
{
    size_t n = strlen(c);
    return s.len == n && (n == 0 || memcmp(s.ptr, c, n) == 0);
}

/* A name from the file made safe to print: control bytes become '?' and
 * long names are cut, so a hostile key cannot garble a terminal or fill
 * the whole message. */
static void quote(char *dst, size_t cap, duet_gguf_str s)
{
    size_t limit = cap - 4, n = 0;
    for (size_t i = 0; i < s.len && n < limit; i++) {
        unsigned char ch = (unsigned char)s.ptr[i];
        dst[n++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    if (s.len > limit)
        memcpy(dst + n, "...", 3), n += 3;
    dst[n] = '\0';
}

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    return h;
}

/* ---- name index ---------------------------------------------------------- */

static duet_gguf_str entry_name(const duet_gguf *g, const name_index *ix, uint64_t i)
{
    return ix == &g->kv_index ? g->kvs[i].key : g->tensors[i].name;
}

static duet_status index_init(name_index *ix, uint64_t n)
{
    uint64_t cap = 8;
    while (cap < 2 * n)
        cap *= 2;
    ix->slots = calloc(cap, sizeof *ix->slots);
    if (!ix->slots)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "GGUF: cannot allocate a name index of %" PRIu64
                          " slots", cap);
    ix->mask = cap - 1;
    return DUET_OK;
}

static int64_t index_find(const duet_gguf *g, const name_index *ix, const char *p, size_t n)
{
    if (!ix->slots)
        return -1;
    for (uint64_t h = fnv1a(p, n) & ix->mask;; h = (h + 1) & ix->mask) {
        uint64_t slot = ix->slots[h];
        if (slot == 0)
            return -1;
        duet_gguf_str s = entry_name(g, ix, slot - 1);
        if (s.len == n && (n == 0 || memcmp(s.ptr, p, n) == 0))
            return (int64_t)(slot - 1);
    }
}

/* Adds entry i; returns the index of an earlier entry with the same name,
 * or -1. The table is sized at twice the entry count, so it never fills. */
static int64_t index_insert(duet_gguf *g, name_index *ix, uint64_t i)
{
    duet_gguf_str s = entry_name(g, ix, i);
    int64_t dup = index_find(g, ix, s.ptr, s.len);
    if (dup >= 0)
        return dup;
    uint64_t h = fnv1a(s.ptr, s.len) & ix->mask;
    while (ix->slots[h] != 0)
        h = (h + 1) & ix->mask;
    ix->slots[h] = i + 1;
    return -1;
}

/* ---- bounds-checked reads -------------------------------------------------- */

static duet_status past_end(const cursor *c, const char *field, uint64_t at)
{
    return duet_error(DUET_ERR_FORMAT,
                      "GGUF %s: %s: %s at offset %" PRIu64
                      " runs past the end of the file (size %" PRIu64 ")",
                      c->g->name, c->where, field, at, c->g->size);
}

static uint64_t remaining(const cursor *c) { return c->g->size - c->pos; }

static duet_status read_bytes(cursor *c, uint64_t n, const char *field, const uint8_t **out)
{
    if (n > remaining(c))
        return past_end(c, field, c->pos);
    *out = c->g->base + c->pos;
    c->pos += n;
    return DUET_OK;
}

static duet_status read_uint(cursor *c, size_t n, const char *field, uint64_t *out)
{
    const uint8_t *p = NULL;
    duet_status st = read_bytes(c, n, field, &p);
    if (st == DUET_OK)
        *out = load_le(p, n);
    return st;
}

static duet_status read_u32(cursor *c, const char *field, uint32_t *out)
{
    uint64_t v = 0;
    duet_status st = read_uint(c, 4, field, &v);
    *out = (uint32_t)v;
    return st;
}

/* field/index name the string in messages ("string array element 12"). */
static duet_status read_str(cursor *c, const char *field, int64_t index, duet_gguf_str *out)
{
    char what[96];
    uint64_t at = c->pos, len = 0;
    const uint8_t *p = NULL;
    if (remaining(c) >= 8)
        len = load_le(c->g->base + c->pos, 8);
    if (remaining(c) < 8 || len > remaining(c) - 8) {
        int n = index >= 0 ? snprintf(what, sizeof what, "%s %" PRId64, field, index)
                           : snprintf(what, sizeof what, "%s", field);
        if (remaining(c) < 8)
            snprintf(what + n, sizeof what - (size_t)n, " length");
        else
            snprintf(what + n, sizeof what - (size_t)n, " length %" PRIu64, len);
        return past_end(c, what, at);
    }
    c->pos += 8;
    read_bytes(c, len, field, &p);
    out->ptr = (const char *)p;
    out->len = (size_t)len;
    return DUET_OK;
}

/* ---- metadata ---------------------------------------------------------------- */

static duet_status parse_array(cursor *c, duet_gguf_kv *kv)
{
    uint32_t et;
    uint64_t at = c->pos, n;
    duet_status st = read_u32(c, "array element type", &et);
    if (st != DUET_OK)
        return st;
    if (et == DUET_GGUF_ARRAY)
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "GGUF %s: %s: array of arrays at offset %" PRIu64
                          " (nested arrays are not supported)",
                          c->g->name, c->where, at);
    if (et >= GGUF_N_TYPES)
        return duet_error(DUET_ERR_FORMAT,
                          "GGUF %s: %s: array element type %" PRIu32 " at offset %" PRIu64
                          " is not a GGUF value type (0..%d)",
                          c->g->name, c->where, et, at, GGUF_N_TYPES - 1);
    at = c->pos;
    if ((st = read_uint(c, 8, "array length", &n)) != DUET_OK)
        return st;
    kv->elem_type = (duet_gguf_type)et;
    kv->n_elems = n;
    kv->data = c->g->base + c->pos;
    uint64_t min_size = et == DUET_GGUF_STRING ? MIN_STRING_BYTES : type_size(et);
    if (n > remaining(c) / min_size)
        return duet_error(DUET_ERR_FORMAT,
                          "GGUF %s: %s: array length %" PRIu64 " at offset %" PRIu64
                          " is more than the %" PRIu64 " bytes left could hold (%s elements"
                          " take at least %" PRIu64 " bytes each; file size %" PRIu64 ")",
                          c->g->name, c->where, n, at, remaining(c), duet_gguf_type_name(et),
                          min_size, c->g->size);
    if (et != DUET_GGUF_STRING) {
        c->pos += n * min_size;
        return DUET_OK;
    }
    duet_gguf_str *strs = malloc((n ? n : 1) * sizeof *strs);
    if (!strs)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "GGUF %s: %s: cannot allocate %" PRIu64
                          " string entries", c->g->name, c->where, n);
    kv->strs = strs;
    for (uint64_t i = 0; i < n; i++)
        if ((st = read_str(c, "string array element", (int64_t)i, &strs[i])) != DUET_OK)
            return st;
    return DUET_OK;
}

static duet_status parse_kv(cursor *c, duet_gguf *g, int64_t i)
{
    duet_gguf_kv *kv = &g->kvs[i];
    char name[80];
    uint32_t type;
    uint64_t at;
    duet_status st;

    snprintf(c->where, sizeof c->where, "key %" PRId64, i);
    if ((st = read_str(c, "key", -1, &kv->key)) != DUET_OK)
        return st;
    quote(name, sizeof name, kv->key);
    snprintf(c->where, sizeof c->where, "key %" PRId64 " ('%s')", i, name);
    at = c->pos;
    if ((st = read_u32(c, "value type", &type)) != DUET_OK)
        return st;
    if (type >= GGUF_N_TYPES)
        return duet_error(DUET_ERR_FORMAT,
                          "GGUF %s: %s: value type %" PRIu32 " at offset %" PRIu64
                          " is not a GGUF value type (0..%d)",
                          g->name, c->where, type, at, GGUF_N_TYPES - 1);
    kv->type = (duet_gguf_type)type;
    kv->elem_type = kv->type; /* lets the array readers work on scalars too */
    kv->n_elems = 1;
    kv->offset = c->pos;
    if (type == DUET_GGUF_ARRAY) {
        st = parse_array(c, kv);
    } else if (type == DUET_GGUF_STRING) {
        duet_gguf_str *s = malloc(sizeof *s);
        if (!s)
            return duet_error(DUET_ERR_OUT_OF_MEMORY, "GGUF %s: out of memory", g->name);
        kv->strs = s;
        if ((st = read_str(c, "string value", -1, s)) == DUET_OK)
            kv->data = s->ptr;
    } else {
        const uint8_t *p = NULL;
        if ((st = read_bytes(c, type_size(type), "value", &p)) == DUET_OK)
            kv->data = p;
    }
    if (st != DUET_OK)
        return st;
    int64_t dup = index_insert(g, &g->kv_index, (uint64_t)i);
    if (dup >= 0)
        return duet_error(DUET_ERR_FORMAT, "GGUF %s: %s: duplicate of key %" PRId64, g->name,
                          c->where, dup);
    return DUET_OK;
}

static duet_status read_alignment(duet_gguf *g)
{
    uint32_t a;
    duet_status st = duet_gguf_get_u32_or(g, "general.alignment", GGUF_DEFAULT_ALIGNMENT, &a);
    if (st != DUET_OK)
        return st;
    if (a == 0 || (a & (a - 1)) != 0)
        return duet_error(DUET_ERR_FORMAT,
                          "GGUF %s: general.alignment %" PRIu32 " at offset %" PRIu64
                          " is not a power of two",
                          g->name, a, duet_gguf_find(g, "general.alignment")->offset);
    g->alignment = a;
    return DUET_OK;
}

/* ---- tensor infos ---------------------------------------------------------------- */

static duet_status parse_dims(cursor *c, duet_gguf_tensor *t)
{
    uint32_t n_dims;
    uint64_t at = c->pos;
    duet_status st = read_u32(c, "n_dims", &n_dims);
    if (st != DUET_OK)
        return st;
    if (n_dims < 1 || n_dims > DUET_GGUF_MAX_DIMS)
        return duet_error(DUET_ERR_FORMAT,
                          "GGUF %s: %s: n_dims %" PRIu32 " at offset %" PRIu64
                          " is outside 1..%d",
                          c->g->name, c->where, n_dims, at, DUET_GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    uint64_t n_elems = 1;
    for (int d = 0; d < DUET_GGUF_MAX_DIMS; d++) {
        char field[16];
        uint64_t ne = 1;
        at = c->pos;
        snprintf(field, sizeof field, "ne[%d]", d);
        if (d < t->n_dims && (st = read_uint(c, 8, field, &ne)) != DUET_OK)
            return st;
        if (ne > INT64_MAX)
            return duet_error(DUET_ERR_FORMAT,
                              "GGUF %s: %s: %s %" PRId64 " at offset %" PRIu64 " is negative",
                              c->g->name, c->where, field, (int64_t)ne, at);
        if (ne != 0 && n_elems > INT64_MAX / ne)
            return duet_error(DUET_ERR_FORMAT,
                              "GGUF %s: %s: ne[0..%d] product overflows int64 (%s %" PRIu64
                              " at offset %" PRIu64 ")",
                              c->g->name, c->where, d, field, ne, at);
        n_elems *= ne;
        t->ne[d] = (int64_t)ne;
    }
    return DUET_OK;
}

/* nbytes = row bytes * rows, refusing anything that does not fit in 63
 * bits (no file can hold it, and offset + nbytes must not wrap). */
static duet_status tensor_size(const cursor *c, duet_gguf_tensor *t, const duet_dtype_info *info)
{
    if (t->ne[0] % info->block_elems != 0)
        return duet_error(DUET_ERR_FORMAT,
                          "GGUF %s: %s: ne[0] %" PRId64 " is not a multiple of %s's block size %d",
                          c->g->name, c->where, t->ne[0], info->name, info->block_elems);
    uint64_t n = (uint64_t)(t->ne[0] / info->block_elems);
    uint64_t dims[DUET_GGUF_MAX_DIMS] = {(uint64_t)info->block_bytes, (uint64_t)t->ne[1],
                                         (uint64_t)t->ne[2], (uint64_t)t->ne[3]};
    for (int d = 0; d < DUET_GGUF_MAX_DIMS; d++) {
        if (dims[d] != 0 && n > (uint64_t)INT64_MAX / dims[d])
            return duet_error(DUET_ERR_FORMAT,
                              "GGUF %s: %s: %s tensor of %" PRId64 " x %" PRId64 " x %" PRId64
                              " x %" PRId64 " elements is too large to address",
                              c->g->name, c->where, info->name, t->ne[0], t->ne[1], t->ne[2],
                              t->ne[3]);
        n *= dims[d];
    }
    t->nbytes = (size_t)n;
    return DUET_OK;
}

static duet_status parse_tensor_info(cursor *c, duet_gguf *g, int64_t i)
{
    duet_gguf_tensor *t = &g->tensors[i];
    char name[80];
    uint32_t type;
    uint64_t at;
    duet_status st;

    snprintf(c->where, sizeof c->where, "tensor info %" PRId64, i);
    if ((st = read_str(c, "name", -1, &t->name)) != DUET_OK)
        return st;
    quote(name, sizeof name, t->name);
    snprintf(c->where, sizeof c->where, "tensor info %" PRId64 " ('%s')", i, name);
    if ((st = parse_dims(c, t)) != DUET_OK)
        return st;
    at = c->pos;
    if ((st = read_u32(c, "type", &type)) != DUET_OK)
        return st;
    const duet_dtype_info *info = duet_dtype_get(type);
    if (!info)
        return duet_error(DUET_ERR_UNSUPPORTED,
                          "GGUF %s: tensor '%s' has weight type %" PRIu32 " (at offset %" PRIu64
                          "), which duet does not support; supported: %s",
                          g->name, name, type, at, duet_dtype_weight_names());
    t->type = (duet_dtype)type;
    at = c->pos;
    if ((st = read_uint(c, 8, "offset", &t->offset)) != DUET_OK)
        return st;
    if (t->offset % g->alignment != 0)
        return duet_error(DUET_ERR_FORMAT,
                          "GGUF %s: %s: data offset %" PRIu64 " at offset %" PRIu64
                          " is not a multiple of the alignment %" PRIu32,
                          g->name, c->where, t->offset, at, g->alignment);
    if ((st = tensor_size(c, t, info)) != DUET_OK)
        return st;
    int64_t dup = index_insert(g, &g->tensor_index, (uint64_t)i);
    if (dup >= 0)
        return duet_error(DUET_ERR_FORMAT, "GGUF %s: %s: duplicate of tensor info %" PRId64,
                          g->name, c->where, dup);
    return DUET_OK;
}

/* Every tensor's bytes must lie inside the file, so the loader can hand
 * out pointers without further checks. */
static duet_status check_tensor_data(duet_gguf *g)
{
    uint64_t avail = g->data_offset <= g->size ? g->size - g->data_offset : 0;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        duet_gguf_tensor *t = &g->tensors[i];
        if (g->data_offset > g->size || t->offset > avail || t->nbytes > avail - t->offset) {
            char name[80];
            quote(name, sizeof name, t->name);
            return duet_error(DUET_ERR_FORMAT,
                              "GGUF %s: tensor %" PRId64 " ('%s'): %zu bytes of data at offset %"
                              PRIu64 " in the data section (which starts at %" PRIu64
                              ") run past the end of the file (size %" PRIu64 ")",
                              g->name, i, name, t->nbytes, t->offset, g->data_offset, g->size);
        }
        t->data = g->base + g->data_offset + t->offset;
    }
    return DUET_OK;
}

/* ---- the whole file ------------------------------------------------------------------ */

static duet_status parse_header(cursor *c, duet_gguf *g, uint64_t *n_kv, uint64_t *n_tensors)
{
    const uint8_t *m = g->base;
    duet_status st;
    snprintf(c->where, sizeof c->where, "header");
    if (g->size < 4)
        return duet_error(DUET_ERR_FORMAT,
                          "%s is not a GGUF file (it is %" PRIu64 " bytes long, shorter than "
                          "the 4-byte magic)", g->name, g->size);
    if (memcmp(m, "GGUF", 4) != 0)
        return duet_error(DUET_ERR_FORMAT,
                          "%s is not a GGUF file (magic %02x %02x %02x %02x at offset 0, "
                          "expected 47 47 55 46 'GGUF')", g->name, m[0], m[1], m[2], m[3]);
    c->pos = 4;
    if ((st = read_u32(c, "version", &g->version)) != DUET_OK)
        return st;
    if (g->version < 2 || g->version > 3)
        return duet_error(g->version == 0 ? DUET_ERR_FORMAT : DUET_ERR_UNSUPPORTED,
                          "GGUF %s: version %" PRIu32 " at offset 4 is not supported "
                          "(supported: 2, 3)%s", g->name, g->version,
                          g->version == 0x02000000u || g->version == 0x03000000u
                              ? "; the file looks big-endian" : "");
    if ((st = read_uint(c, 8, "tensor_count", n_tensors)) != DUET_OK ||
        (st = read_uint(c, 8, "kv_count", n_kv)) != DUET_OK)
        return st;
    if (*n_tensors > remaining(c) / MIN_TENSOR_INFO_BYTES)
        return duet_error(DUET_ERR_FORMAT,
                          "GGUF %s: tensor_count %" PRIu64 " at offset 8 is more than the %"
                          PRIu64 " bytes after the header could hold (file size %" PRIu64 ")",
                          g->name, *n_tensors, remaining(c), g->size);
    if (*n_kv > remaining(c) / MIN_KV_BYTES ||
        *n_kv * MIN_KV_BYTES > remaining(c) - *n_tensors * MIN_TENSOR_INFO_BYTES)
        return duet_error(DUET_ERR_FORMAT,
                          "GGUF %s: kv_count %" PRIu64 " at offset 16 (with tensor_count %"
                          PRIu64 ") is more than the %" PRIu64
                          " bytes after the header could hold (file size %" PRIu64 ")",
                          g->name, *n_kv, *n_tensors, remaining(c), g->size);
    return DUET_OK;
}

static duet_status parse(duet_gguf *g)
{
    cursor c = {.g = g, .pos = 0};
    uint64_t n_kv = 0, n_tensors = 0;
    duet_status st = parse_header(&c, g, &n_kv, &n_tensors);
    if (st != DUET_OK)
        return st;
    /* Both counts are bounded by the file size above, so these
     * allocations are proportional to the file. */
    g->kvs = calloc(n_kv ? n_kv : 1, sizeof *g->kvs);
    g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
    if (!g->kvs || !g->tensors)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "GGUF %s: cannot allocate %" PRIu64
                          " keys and %" PRIu64 " tensor infos", g->name, n_kv, n_tensors);
    if ((st = index_init(&g->kv_index, n_kv)) != DUET_OK ||
        (st = index_init(&g->tensor_index, n_tensors)) != DUET_OK)
        return st;
    for (uint64_t i = 0; i < n_kv; i++) {
        /* counted first so close() frees a half-parsed key's strings */
        g->n_kv = (int64_t)i + 1;
        if ((st = parse_kv(&c, g, (int64_t)i)) != DUET_OK)
            return st;
    }
    if ((st = read_alignment(g)) != DUET_OK)
        return st;
    g->n_tensors = (int64_t)n_tensors;
    for (uint64_t i = 0; i < n_tensors; i++)
        if ((st = parse_tensor_info(&c, g, (int64_t)i)) != DUET_OK)
            return st;
    /* c.pos <= size < 2^63 in practice, and alignment <= 2^31: no wrap */
    g->data_offset = (c.pos + g->alignment - 1) / g->alignment * g->alignment;
    if ((st = check_tensor_data(g)) != DUET_OK)
        return st;
    /* A file without tensors may end before its (empty) data section;
     * clamp so base + data_offset .. size is always a valid range. */
    if (g->data_offset > g->size)
        g->data_offset = g->size;
    return DUET_OK;
}

static duet_status gguf_new(const char *name, duet_gguf **out)
{
    duet_gguf *g = calloc(1, sizeof *g);
    if (!g)
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "GGUF %s: out of memory", name);
    g->name = strdup(name);
    if (!g->name) {
        free(g);
        return duet_error(DUET_ERR_OUT_OF_MEMORY, "GGUF %s: out of memory", name);
    }
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    *out = g;
    return DUET_OK;
}

duet_status duet_gguf_open_memory(const void *data, size_t size, const char *name,
                                  duet_gguf **out)
{
    duet_gguf *g;
    duet_status st;
    if (!out)
        return duet_error(DUET_ERR_INVALID_ARG, "duet_gguf_open_memory: out is NULL");
    *out = NULL;
    if (!name)
        name = "<memory>";
    if (!data && size > 0)
        return duet_error(DUET_ERR_INVALID_ARG, "GGUF %s: data is NULL but size is %zu", name,
                          size);
    if ((st = gguf_new(name, &g)) != DUET_OK)
        return st;
    g->base = data;
    g->size = size;
    if ((st = parse(g)) != DUET_OK) {
        duet_gguf_close(g);
        return st;
    }
    *out = g;
    return DUET_OK;
}

duet_status duet_gguf_open(const char *path, duet_gguf **out)
{
    duet_gguf *g = NULL;
    struct stat sb;
    void *map;
    duet_status st;
    if (!out || !path)
        return duet_error(DUET_ERR_INVALID_ARG, "duet_gguf_open: path or out is NULL");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return duet_error(DUET_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    if (fstat(fd, &sb) != 0) {
        st = duet_error(DUET_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
        goto out_close_fd;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = duet_error(DUET_ERR_IO, "cannot read %s: not a regular file", path);
        goto out_close_fd;
    }
    if (sb.st_size == 0) {
        st = duet_error(DUET_ERR_FORMAT, "%s is not a GGUF file (it is empty)", path);
        goto out_close_fd;
    }
    map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        st = duet_error(DUET_ERR_IO, "cannot mmap %s (%lld bytes): %s", path,
                        (long long)sb.st_size, strerror(errno));
        goto out_close_fd;
    }
    if ((st = gguf_new(path, &g)) != DUET_OK) {
        munmap(map, (size_t)sb.st_size);
        goto out_close_fd;
    }
    g->base = map;
    g->size = (uint64_t)sb.st_size;
    g->mapped = 1;
    if ((st = parse(g)) != DUET_OK)
        goto out_close_gguf;
    *out = g;
    close(fd);
    return DUET_OK;

out_close_gguf:
    duet_gguf_close(g);
out_close_fd:
    close(fd);
    return st;
}

void duet_gguf_close(duet_gguf *g)
{
    if (!g)
        return;
    for (int64_t i = 0; i < g->n_kv; i++)
        free((void *)g->kvs[i].strs);
    free(g->kvs);
    free(g->tensors);
    free(g->kv_index.slots);
    free(g->tensor_index.slots);
    if (g->mapped)
        munmap((void *)g->base, (size_t)g->size);
    free(g->name);
    free(g);
}

/* ---- accessors ------------------------------------------------------------------------- */

uint32_t duet_gguf_version(const duet_gguf *g) { return g->version; }
uint32_t duet_gguf_alignment(const duet_gguf *g) { return g->alignment; }
size_t duet_gguf_file_size(const duet_gguf *g) { return (size_t)g->size; }
const void *duet_gguf_base(const duet_gguf *g) { return g->base; }
uint64_t duet_gguf_data_offset(const duet_gguf *g) { return g->data_offset; }
int64_t duet_gguf_n_kv(const duet_gguf *g) { return g->n_kv; }
int64_t duet_gguf_n_tensors(const duet_gguf *g) { return g->n_tensors; }

const duet_gguf_kv *duet_gguf_kv_at(const duet_gguf *g, int64_t i)
{
    return i >= 0 && i < g->n_kv ? &g->kvs[i] : NULL;
}

const duet_gguf_tensor *duet_gguf_tensor_at(const duet_gguf *g, int64_t i)
{
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const duet_gguf_kv *duet_gguf_find(const duet_gguf *g, const char *key)
{
    int64_t i = index_find(g, &g->kv_index, key, strlen(key));
    return i >= 0 ? &g->kvs[i] : NULL;
}

const duet_gguf_tensor *duet_gguf_find_tensor(const duet_gguf *g, const char *name)
{
    int64_t i = index_find(g, &g->tensor_index, name, strlen(name));
    return i >= 0 ? &g->tensors[i] : NULL;
}

/* Integers of any width; unsigned 64-bit values above INT64_MAX saturate
 * (callers that need them read kv->data). Non-integers read as 0. */
int64_t duet_gguf_arr_int(const duet_gguf_kv *kv, uint64_t i)
{
    uint32_t t = kv->elem_type;
    size_t n = type_size(t);
    if (!(type_is_int(t) || t == DUET_GGUF_BOOL) || i >= kv->n_elems)
        return 0;
    uint64_t v = load_le((const uint8_t *)kv->data + i * n, n);
    if (type_is_signed(t) && n < 8 && (v >> (8 * n - 1)) & 1)
        v |= ~(uint64_t)0 << (8 * n); /* sign-extend */
    if (!type_is_signed(t) && v > INT64_MAX)
        return INT64_MAX;
    return (int64_t)v;
}

double duet_gguf_arr_float(const duet_gguf_kv *kv, uint64_t i)
{
    if (!type_size(kv->elem_type) || i >= kv->n_elems)
        return 0.0;
    const uint8_t *p = (const uint8_t *)kv->data + i * type_size(kv->elem_type);
    if (kv->elem_type == DUET_GGUF_FLOAT32) {
        uint32_t bits = (uint32_t)load_le(p, 4);
        float f;
        memcpy(&f, &bits, sizeof f);
        return f;
    }
    if (kv->elem_type == DUET_GGUF_FLOAT64) {
        uint64_t bits = load_le(p, 8);
        double d;
        memcpy(&d, &bits, sizeof d);
        return d;
    }
    if (kv->elem_type == DUET_GGUF_UINT64)
        return (double)load_le(p, 8);
    return (double)duet_gguf_arr_int(kv, i);
}

/* ---- typed getters --------------------------------------------------------------------- */

static duet_status missing(const duet_gguf *g, const char *key)
{
    return duet_error(DUET_ERR_FORMAT, "GGUF %s: key '%s' is missing", g->name, key);
}

static duet_status wrong_type(const duet_gguf *g, const char *key, const char *expected,
                              const duet_gguf_kv *kv)
{
    if (kv->type == DUET_GGUF_ARRAY)
        return duet_error(DUET_ERR_FORMAT,
                          "GGUF %s: key '%s' (at offset %" PRIu64 ") is an array of %s, "
                          "expected %s", g->name, key, kv->offset,
                          duet_gguf_type_name(kv->elem_type), expected);
    return duet_error(DUET_ERR_FORMAT,
                      "GGUF %s: key '%s' (at offset %" PRIu64 ") has type %s, expected %s",
                      g->name, key, kv->offset, duet_gguf_type_name(kv->type), expected);
}

static duet_status u32_of(const duet_gguf *g, const char *key, const duet_gguf_kv *kv,
                          uint32_t *out)
{
    if (!type_is_int(kv->type))
        return wrong_type(g, key, "an integer (read as uint32)", kv);
    uint64_t v = load_le(kv->data, type_size(kv->type));
    int64_t sv = duet_gguf_arr_int(kv, 0);
    if (type_is_signed(kv->type) && sv < 0)
        return duet_error(DUET_ERR_FORMAT,
                          "GGUF %s: key '%s' (%s at offset %" PRIu64 ") value %" PRId64
                          " is outside uint32's range 0..4294967295",
                          g->name, key, duet_gguf_type_name(kv->type), kv->offset, sv);
    if (v > UINT32_MAX)
        return duet_error(DUET_ERR_FORMAT,
                          "GGUF %s: key '%s' (%s at offset %" PRIu64 ") value %" PRIu64
                          " is outside uint32's range 0..4294967295",
                          g->name, key, duet_gguf_type_name(kv->type), kv->offset, v);
    *out = (uint32_t)v;
    return DUET_OK;
}

duet_status duet_gguf_get_u32(const duet_gguf *g, const char *key, uint32_t *out)
{
    const duet_gguf_kv *kv = duet_gguf_find(g, key);
    return kv ? u32_of(g, key, kv, out) : missing(g, key);
}

duet_status duet_gguf_get_u32_or(const duet_gguf *g, const char *key, uint32_t def, uint32_t *out)
{
    const duet_gguf_kv *kv = duet_gguf_find(g, key);
    if (!kv) {
        *out = def;
        return DUET_OK;
    }
    return u32_of(g, key, kv, out);
}

static duet_status f32_of(const duet_gguf *g, const char *key, const duet_gguf_kv *kv, float *out)
{
    if (kv->type != DUET_GGUF_FLOAT32 && kv->type != DUET_GGUF_FLOAT64)
        return wrong_type(g, key, "float32 or float64", kv);
    *out = (float)duet_gguf_arr_float(kv, 0);
    return DUET_OK;
}

duet_status duet_gguf_get_f32(const duet_gguf *g, const char *key, float *out)
{
    const duet_gguf_kv *kv = duet_gguf_find(g, key);
    return kv ? f32_of(g, key, kv, out) : missing(g, key);
}

duet_status duet_gguf_get_f32_or(const duet_gguf *g, const char *key, float def, float *out)
{
    const duet_gguf_kv *kv = duet_gguf_find(g, key);
    if (!kv) {
        *out = def;
        return DUET_OK;
    }
    return f32_of(g, key, kv, out);
}

duet_status duet_gguf_get_bool_or(const duet_gguf *g, const char *key, int def, int *out)
{
    const duet_gguf_kv *kv = duet_gguf_find(g, key);
    if (!kv) {
        *out = def;
        return DUET_OK;
    }
    if (kv->type != DUET_GGUF_BOOL)
        return wrong_type(g, key, "bool", kv);
    *out = *(const uint8_t *)kv->data != 0;
    return DUET_OK;
}

duet_status duet_gguf_get_str(const duet_gguf *g, const char *key, duet_gguf_str *out)
{
    const duet_gguf_kv *kv = duet_gguf_find(g, key);
    if (!kv)
        return missing(g, key);
    if (kv->type != DUET_GGUF_STRING)
        return wrong_type(g, key, "string", kv);
    *out = kv->strs[0];
    return DUET_OK;
}

duet_status duet_gguf_get_arr(const duet_gguf *g, const char *key, duet_gguf_type elem_type,
                              const duet_gguf_kv **out)
{
    char expected[32];
    const duet_gguf_kv *kv = duet_gguf_find(g, key);
    if (!kv)
        return missing(g, key);
    snprintf(expected, sizeof expected, "an array of %s", duet_gguf_type_name(elem_type));
    if (kv->type != DUET_GGUF_ARRAY || kv->elem_type != elem_type)
        return wrong_type(g, key, expected, kv);
    *out = kv;
    return DUET_OK;
}
