//! Built-in compression policies, one per file, each registered with `inventory` so that
//! [`registry`] lists them by name.
//!
//! | name | keeps | needs |
//! |---|---|---|
//! | `full` | everything (the plain transformer) | nothing |
//! | `window` | the C newest | positions |
//! | `window+i` / `sinks` | the first `sinks` positions + the newest | positions |
//! | `h2o` | a recent window + the highest accumulated attention | every row, every step |
//! | `tova` | the C highest head-averaged attention of the newest query | the last row |
//! | `random` | a seeded random C | nothing |
//!
//! **Chunks.** When several tokens arrive at once, the core writes them all, runs attention with a
//! causal mask, and calls the policy once: `window`/`window+i`/`random` act on positions alone,
//! `tova` scores by the chunk's *last* query row (as the reference code does after a prefill), and
//! `h2o` adds every row of the chunk to its accumulators (each row is one step's query, so the
//! scores equal those of one-token-at-a-time feeding up to the point where it evicts).

mod full;
mod h2o;
mod random;
mod sinks;
mod tova;
mod window;

pub use full::Full;
pub use h2o::H2o;
pub use random::RandomPolicy;
pub use sinks::WindowSinks;
pub use tova::Tova;
pub use window::Window;

use msrnn_core::PolicyRegistry;

/// A registry holding every built-in policy. Calling it is also what guarantees this crate is
/// linked, so its `inventory` registrations are present.
pub fn registry() -> PolicyRegistry {
    PolicyRegistry::with_builtins()
}

/// `live - budget`, the number of entries that must go.
fn excess(obs: &msrnn_core::Observation<'_>, budget: usize) -> usize {
    obs.live_count().saturating_sub(budget)
}
