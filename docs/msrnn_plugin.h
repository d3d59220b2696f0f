/*
 * msrnn_plugin.h — the C ABI of msrnn compression-policy plugins, version 3.
 *
 * A plugin is a shared library exporting one symbol:
 *
 *     const msrnn_policy_descriptor *msrnn_policy_plugin(void);
 *
 * returning a pointer to a descriptor that lives as long as the library. msrnn reads `abi_version`
 * first and refuses any value outside MSRNN_PLUGIN_MIN_ABI_VERSION..MSRNN_PLUGIN_ABI_VERSION. See docs/plugins.md for the guide
 * and the contract; the Rust side of the same layouts is the module `abi` of the crate msrnn-policy-api.
 *
 * Version 2 (from 1): msrnn_needs gained `keys` and `capacity`, msrnn_context and msrnn_observation
 * gained `head_dim`, msrnn_observation gained `keys`, the descriptor gained `aliases`/`num_aliases`.
 * Version 3 (from 2): msrnn_needs and msrnn_observation gained `head_capacity` (per-KV-head layers),
 * appended: a version 2 plugin, which never asks for it and never reads it, still loads.
 *
 * The contract in one paragraph: a layer's state is a buffer of slots, some live. `compress` is called
 * after attention whenever more than `budget` slots are live (or at every step if the instance asked
 * for `every_step`). When live > budget it must write exactly live - budget distinct live slots into
 * `evict` and their number into `*evict_len`; otherwise it writes none. msrnn checks every decision
 * and turns a bad one (out of range, dead, duplicated, too few, too many) into an error naming the
 * plugin, leaving the state untouched. Slots are reused after eviction: per-slot bookkeeping must
 * restart for the slots listed in `new_slots`. An instance is never used from two threads at once,
 * but different instances (layers) may be. Never let a C++ exception or a longjmp cross these calls.
 */
#ifndef MSRNN_PLUGIN_H
#define MSRNN_PLUGIN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MSRNN_PLUGIN_ABI_VERSION 3u
#define MSRNN_PLUGIN_MIN_ABI_VERSION 2u

/* compress return codes */
#define MSRNN_OK 0         /* decision in evict[0 .. *evict_len) */
#define MSRNN_FAILED 1     /* the policy failed; err says why */
#define MSRNN_PANICKED 2   /* (Rust glue) the policy panicked; err has the message */
#define MSRNN_BAD_CALL 3   /* NULL argument, or the decision did not fit the buffer */

/* msrnn_needs.rows */
#define MSRNN_ROWS_NONE 0u /* no attention probabilities */
#define MSRNN_ROWS_LAST 1u /* the newest query's row */
#define MSRNN_ROWS_ALL 2u  /* every query row of the chunk, oldest first */

/* What an instance asks for; written by create (it arrives zeroed). Booleans are 0 or 1. */
typedef struct msrnn_needs {
    uint32_t rows;
    uint32_t key_norms;  /* L2 norm of every live key, per KV head */
    uint32_t keys;       /* the keys themselves, as stored */
    uint32_t every_step; /* call compress at every step, not only when over budget */
    uint64_t capacity;   /* the capacity this instance wants for its layer; 0 takes ctx->capacity. The
                            layers' capacities together may not exceed num_layers x ctx->capacity. */
    uint64_t head_capacity; /* v3: > 0 makes the layer per-head: each KV head keeps its own tokens, at most
                               head_capacity (C .. C x num_kv_heads), the layer C x num_kv_heads in all.
                               0 (what a v2 plugin leaves): every KV head keeps the same tokens. */
} msrnn_needs;

/* One parameter of the schema (NUL-terminated UTF-8). */
typedef struct msrnn_param {
    const char *name;
    const char *default_value;
    const char *help;
} msrnn_param;

/* Where an instance lives. */
typedef struct msrnn_context {
    uint64_t layer;
    uint64_t num_layers;
    uint64_t num_heads;
    uint64_t num_kv_heads;
    uint64_t head_dim;
    uint64_t capacity; /* the run's C per layer, or UINT64_MAX when unbounded */
} msrnn_context;

/* One layer after the new tokens were written and attention ran.
 * Every per-slot array has num_slots entries; entries of dead slots are meaningless.
 * Per-head layers (head_capacity > 0): positions, live and new_slots are per *entry*
 * head * num_slots + slot ([num_kv_heads][num_slots]), evict lists entries, probs[r][h][s] is query
 * head h's attention to entry (h / (num_heads / num_kv_heads)) * num_slots + s; exactly
 * max(live - budget x num_kv_heads, sum over heads of max(0, head live - head_capacity)) entries go,
 * and no head may keep more than head_capacity. */
typedef struct msrnn_observation {
    uint64_t layer;
    uint64_t tokens_seen;       /* the new tokens included */
    uint64_t num_slots;
    const uint64_t *positions;  /* [num_slots] absolute position of each slot's token */
    const uint8_t *live;        /* [num_slots] 1 live, 0 free */
    const uint64_t *new_slots;  /* [num_new] slots written this step, in token order (newest last) */
    uint64_t num_new;
    uint64_t num_heads;
    uint64_t num_kv_heads;
    uint64_t head_dim;
    uint64_t rows;              /* rows of probs: 0, 1 or the chunk length */
    const float *probs;         /* [rows][num_heads][num_slots]; NULL when rows == 0 */
    const float *key_norms;     /* [num_kv_heads][num_slots]; NULL unless asked for */
    const float *keys;          /* [num_kv_heads][num_slots][head_dim] as stored; NULL unless asked for */
    uint64_t head_capacity;     /* v3: 0 for a shared layer, else per-head as above */
} msrnn_observation;

/* params: "key=value,key=value" (empty string when none). On success: an instance, *needs_out filled
 * (it arrives zeroed). On failure: NULL and a NUL-terminated message in err (room for err_cap bytes). */
typedef void *(*msrnn_create_fn)(const char *params, const msrnn_context *ctx, msrnn_needs *needs_out,
                                 char *err, uint64_t err_cap);

/* evict has room for evict_cap = number of live slots. Returns MSRNN_OK or an error code with a
 * message in err. */
typedef int32_t (*msrnn_compress_fn)(void *instance, const msrnn_observation *obs, uint64_t budget,
                                     uint64_t *evict, uint64_t evict_cap, uint64_t *evict_len,
                                     char *err, uint64_t err_cap);

typedef void (*msrnn_reset_fn)(void *instance);   /* forget all bookkeeping; may be NULL */
typedef void (*msrnn_destroy_fn)(void *instance); /* free the instance */

/* The instance's bookkeeping as numbers, so a saved msrnn state resumes exactly: write at most cap
 * values into out and the full count into *len (the host calls again with more room if *len > cap).
 * Both may be NULL: the policy keeps no state worth saving. Return MSRNN_OK or an error code. */
typedef int32_t (*msrnn_save_state_fn)(void *instance, double *out, uint64_t cap, uint64_t *len, char *err,
                                       uint64_t err_cap);
typedef int32_t (*msrnn_load_state_fn)(void *instance, const double *data, uint64_t len, char *err,
                                       uint64_t err_cap);

typedef struct msrnn_policy_descriptor {
    uint32_t abi_version;        /* MSRNN_PLUGIN_ABI_VERSION */
    const char *name;            /* 1 to 64 of [A-Za-z0-9_+.-] */
    const char *description;     /* one line */
    const char *const *aliases;  /* [num_aliases] other names it answers to; NULL when none */
    uint64_t num_aliases;
    const msrnn_param *params;   /* [num_params] the schema, exactly: other keys are refused before
                                    create (num_params may be 0: takes none). NULL: no schema, any
                                    keys reach create, which checks them itself. */
    uint64_t num_params;
    msrnn_create_fn create;
    msrnn_compress_fn compress;
    msrnn_reset_fn reset;        /* may be NULL */
    msrnn_destroy_fn destroy;
    msrnn_save_state_fn save_state; /* may be NULL */
    msrnn_load_state_fn load_state; /* may be NULL */
} msrnn_policy_descriptor;

/* The one symbol a plugin exports. */
#define MSRNN_PLUGIN_ENTRY msrnn_policy_plugin

#if defined(_WIN32)
#define MSRNN_PLUGIN_EXPORT __declspec(dllexport)
#else
#define MSRNN_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
}
#endif

#endif /* MSRNN_PLUGIN_H */
