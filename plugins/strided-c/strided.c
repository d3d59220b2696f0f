/*
 * strided — an msrnn compression policy written in C against docs/msrnn_plugin.h.
 *
 * The rule: it keeps the attention sinks (the first `sinks` tokens), the newest `recent` tokens, and a
 * strided sample of the past (tokens whose absolute position is a multiple of `stride`). Exactly:
 * when live > budget, every live entry gets a class —
 *     2: a sink (position < sinks) or recent (position >= tokens_seen - recent),
 *     1: on the grid (position % stride == 0),
 *     0: anything else —
 * and the live - budget entries of the lowest class go, oldest (lowest position) first within a class.
 * With a full cache this converges to sinks + the newest grid points + the newest token(s).
 * Parameters: sinks (default 4), stride (default 8, at least 1), recent (default 1). Needs nothing.
 *
 * Build: cc -shared -fPIC -O2 -I docs -o libstrided.so plugins/strided-c/strided.c
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msrnn_plugin.h"

typedef struct {
    uint64_t sinks, stride, recent;
    /* scratch: (class, position, slot) of the live entries, grown as needed */
    uint64_t *keys;
    uint64_t cap;
} strided;

static int parse_u64(const char *v, size_t len, uint64_t *out) {
    char buf[32];
    char *end;
    if (len == 0 || len >= sizeof buf || v[0] == '-' || v[0] == '+') return 0;
    memcpy(buf, v, len);
    buf[len] = 0;
    errno = 0;
    unsigned long long x = strtoull(buf, &end, 10);
    if (errno || *end) return 0;
    *out = (uint64_t)x;
    return 1;
}

static void *create(const char *params, const msrnn_context *ctx, msrnn_needs *needs, char *err,
                    uint64_t err_cap) {
    (void)ctx;
    uint64_t sinks = 4, stride = 8, recent = 1;
    const char *p = params ? params : "";
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        if (n > 0) {
            if (!eq) {
                snprintf(err, err_cap, "`%.*s` is not key=value", (int)n, p);
                return NULL;
            }
            size_t kn = (size_t)(eq - p), vn = n - kn - 1;
            uint64_t *dst = NULL;
            if (kn == 5 && !strncmp(p, "sinks", 5)) dst = &sinks;
            else if (kn == 6 && !strncmp(p, "stride", 6)) dst = &stride;
            else if (kn == 6 && !strncmp(p, "recent", 6)) dst = &recent;
            if (!dst) {
                snprintf(err, err_cap, "unknown parameter `%.*s` (known: sinks, stride, recent)", (int)kn, p);
                return NULL;
            }
            if (!parse_u64(eq + 1, vn, dst)) {
                snprintf(err, err_cap, "`%.*s` must be a non-negative integer, got `%.*s`", (int)kn, p, (int)vn,
                         eq + 1);
                return NULL;
            }
        }
        p += n;
        if (*p == ',') p++;
    }
    if (stride == 0) {
        snprintf(err, err_cap, "`stride` must be at least 1");
        return NULL;
    }
    strided *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, err_cap, "out of memory");
        return NULL;
    }
    s->sinks = sinks;
    s->stride = stride;
    s->recent = recent;
    needs->rows = MSRNN_ROWS_NONE; /* needs arrive zeroed; spelled out here for the reader */
    needs->key_norms = 0;
    needs->keys = 0;
    needs->every_step = 0;
    needs->capacity = 0; /* the run's C */
    return s;
}

static int by_class_then_position(const void *a, const void *b) {
    const uint64_t *x = a, *y = b;
    if (x[0] != y[0]) return x[0] < y[0] ? -1 : 1;
    if (x[1] != y[1]) return x[1] < y[1] ? -1 : 1;
    return 0;
}

static int32_t compress(void *instance, const msrnn_observation *obs, uint64_t budget, uint64_t *evict,
                        uint64_t evict_cap, uint64_t *evict_len, char *err, uint64_t err_cap) {
    strided *s = instance;
    uint64_t live = 0;
    *evict_len = 0;
    for (uint64_t i = 0; i < obs->num_slots; i++) live += obs->live[i] != 0;
    if (live <= budget) return MSRNN_OK;
    if (live > s->cap) {
        uint64_t *k = realloc(s->keys, live * 3 * sizeof *k);
        if (!k) {
            snprintf(err, err_cap, "out of memory for %llu entries", (unsigned long long)live);
            return MSRNN_FAILED;
        }
        s->keys = k;
        s->cap = live;
    }
    uint64_t n = 0;
    for (uint64_t i = 0; i < obs->num_slots; i++) {
        if (!obs->live[i]) continue;
        uint64_t pos = obs->positions[i], cls;
        if (pos < s->sinks || pos + s->recent >= obs->tokens_seen) cls = 2;
        else if (pos % s->stride == 0) cls = 1;
        else cls = 0;
        s->keys[3 * n] = cls;
        s->keys[3 * n + 1] = pos;
        s->keys[3 * n + 2] = i;
        n++;
    }
    qsort(s->keys, n, 3 * sizeof *s->keys, by_class_then_position);
    uint64_t want = live - budget;
    if (want > evict_cap) {
        snprintf(err, err_cap, "buffer too small");
        return MSRNN_BAD_CALL;
    }
    for (uint64_t j = 0; j < want; j++) evict[j] = s->keys[3 * j + 2];
    *evict_len = want;
    return MSRNN_OK;
}

static void destroy(void *instance) {
    strided *s = instance;
    if (s) free(s->keys);
    free(s);
}

static const msrnn_param PARAMS[] = {
    {"sinks", "4", "the first tokens, always kept"},
    {"stride", "8", "keep tokens whose position is a multiple of this (at least 1)"},
    {"recent", "1", "the newest tokens, always kept"},
};

static const msrnn_policy_descriptor DESCRIPTOR = {
    .abi_version = MSRNN_PLUGIN_ABI_VERSION,
    .name = "strided",
    .description = "keep sinks, the newest tokens and a strided sample of the past (a plugin written in C)",
    .aliases = NULL,
    .num_aliases = 0,
    .params = PARAMS,
    .num_params = sizeof PARAMS / sizeof PARAMS[0],
    .create = create,
    .compress = compress,
    .reset = NULL, /* no bookkeeping */
    .destroy = destroy,
    .save_state = NULL, /* nothing to save */
    .load_state = NULL,
};

MSRNN_PLUGIN_EXPORT const msrnn_policy_descriptor *msrnn_policy_plugin(void) { return &DESCRIPTOR; }
