//! Built-in compression policies, one per file whose doc comment states its rule. Each declares its
//! name, aliases, description and typed parameters once ([`msrnn_policy_api::Declare`],
//! [`msrnn_policy_api::params!`]) and registers
//! with `msrnn_core::builtin_policy!`, so that [`registry`] lists it by name; the same declaration
//! with `export_policy!` instead makes it a plugin.
//!
//! | name | keeps | needs |
//! |---|---|---|
//! | `full` | everything (the plain transformer) | nothing |
//! | `window` | the C newest | positions |
//! | `window+i` / `sinks` | the first `sinks` positions + the newest | positions |
//! | `h2o` | a recent window + the highest accumulated attention | every row, every step |
//! | `tova` | the C highest head-averaged attention of the newest query | the last row |
//! | `random` | a seeded random C | nothing |
//! | `tova-ema` | the C highest moving averages of head-averaged attention | every row, every step |
//! | `h2o-ema` | C/8 heavy hitters (accumulated attention) + the highest moving averages (+ optionally the most distinct keys) | every row, every step (+ the keys with `diverse`) |
//! | `keydiff` | the keys least similar to the mean key direction | the keys |
//! | `snapkv` | a recent window + the highest pooled attention of its queries | every row, every step |
//! | `pyramid` | per-layer capacities (more below, fewer above) around any `base` | what the base needs |
//! | `tova-head` | per KV head, the C highest attention of the newest query over the head's query group (per-head slots) | the last row |
//! | `adakv` | the layer's C x kv_heads highest of those scores, shared unevenly between heads (floor and cap per head) | the last row |
//! | `tova-ema-head` | per KV head, the C highest moving averages of the head group's attention (per-head slots) | every row, every step |
//! | `keydiff-head` | per KV head, the keys least similar to the head's mean key direction (per-head slots) | the keys |
//!
//! **Chunks.** When several tokens arrive at once, the core writes them all, runs attention with a
//! causal mask, and calls the policy once: `window`/`window+i`/`random` act on positions alone,
//! `tova` scores by the chunk's *last* query row (as the reference code does after a prefill), and
//! `h2o`, `tova-ema`, `h2o-ema` and `snapkv` take every row of the chunk as one step's query (so
//! their statistics equal those of one-token-at-a-time feeding up to the point where they evict).

mod adakv;
mod full;
mod h2o;
mod h2o_ema;
mod keydiff;
mod keydiff_head;
mod pyramid;
mod random;
mod snapkv;
mod tova;
mod tova_ema;
mod tova_ema_head;
mod tova_head;
mod window;
mod window_sinks;

pub use adakv::{share_budget, AdaKv, AdaKvParams};
pub use full::Full;
pub use h2o::{H2o, H2oParams};
pub use h2o_ema::{H2oEma, H2oEmaParams};
pub use keydiff::{anchor_cosines, anchor_similarity, KeyDiff};
pub use keydiff_head::{head_anchor_similarity, KeyDiffHead};
pub use pyramid::{pyramid_capacities, Pyramid, PyramidParams};
pub use random::{Random, RandomParams};
pub use snapkv::{SnapKv, SnapKvParams};
pub use tova::Tova;
pub use tova_ema::{ema_update, TovaEma, TovaEmaParams};
pub use tova_ema_head::TovaEmaHead;
pub use tova_head::{per_head_lowest, TovaHead};
pub use window::Window;
pub use window_sinks::{WindowSinks, WindowSinksParams};

use msrnn_core::PolicyRegistry;

/// A registry holding every built-in policy. Calling it is also what guarantees this crate is
/// linked, so its `inventory` registrations are present.
pub fn registry() -> PolicyRegistry {
    PolicyRegistry::with_builtins()
}
