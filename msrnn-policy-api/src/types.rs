//! The plain data a policy works with: what it asks for ([`Needs`]), where it lives ([`Context`]),
//! what it sees ([`Observation`]) and what it answers ([`Decision`]). No tensor type: only slices, so
//! the same contract crosses the plugin C ABI unchanged.

/// Which query rows' attention probabilities a policy wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rows {
    /// No probabilities (e.g. `window`): the host skips the device-to-host copy.
    #[default]
    None,
    /// Only the newest query's row (TOVA).
    Last,
    /// Every query row of the chunk, oldest first (H2O accumulates each one as a step).
    All,
}

/// What a policy asks the host to compute and hand over; the host computes nothing it is not asked
/// for. Fixed for an instance's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    pub rows: Rows,
    /// L2 norm of every live key, per KV head ([`Observation::key_norms`]).
    pub key_norms: bool,
    /// The keys themselves, as stored ([`Observation::keys`]).
    pub keys: bool,
    /// Call the policy at every step, not only when the layer is over budget (H2O accumulates from
    /// the first token).
    pub every_step: bool,
}

/// Where an instance will live: what a factory learns before creating it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub layer: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// The run's capacity C per layer; `None` when unbounded. An instance may ask for another
    /// capacity for its own layer ([`crate::Policy::capacity`]).
    pub capacity: Option<usize>,
}

/// One layer's state as the policy sees it, after the new tokens were written and attention ran.
///
/// A layer is a buffer of *slots*, some live, each holding one token's key and value at an absolute
/// position. Slot order means nothing, and slots are reused after eviction: per-slot bookkeeping
/// must restart for the slots in `new_slots`. Per-slot slices have `num_slots` entries; entries of
/// dead slots are meaningless (probabilities there are 0).
///
/// **Per-head layers** ([`crate::Policy::head_capacity`], `head_capacity > 0`): every KV head keeps
/// its own tokens in its own slots. A slot is then named by its *entry* index `head * num_slots +
/// slot`: `positions`, `live` and `new_slots` are per entry (`[num_kv_heads, num_slots]`, the new
/// tokens head by head), a decision lists entries, and query head `h`'s probabilities
/// (`probs[row, h, s]`) refer to entry `(h / group) * num_slots + s` of its own KV head.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub layer: usize,
    /// Tokens seen by the state, the new ones included.
    pub tokens_seen: u64,
    pub num_slots: usize,
    /// Absolute position of the token in each slot.
    pub positions: &'a [u64],
    pub live: &'a [bool],
    /// Slots written in this step, in token order (the newest token's slot is last).
    pub new_slots: &'a [usize],
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Query rows in `probs`: 0, 1, or the chunk length, as [`Needs::rows`] asked.
    pub rows: usize,
    /// Attention probabilities, row-major `[rows, num_heads, num_slots]`.
    pub probs: &'a [f32],
    /// Key L2 norms, `[num_kv_heads, num_slots]`; empty unless asked for.
    pub key_norms: &'a [f32],
    /// Keys as the state stores them (rotated at their positions), `[num_kv_heads, num_slots,
    /// head_dim]` f32; empty unless asked for.
    pub keys: &'a [f32],
    /// 0 for a layer whose KV heads keep the same tokens; otherwise the per-head layout above, and
    /// the most entries one KV head may keep after the step.
    pub head_capacity: usize,
}

/// A policy's answer for one layer and one step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Decision {
    /// Evict nothing (only valid when the layer is within budget).
    #[default]
    Keep,
    /// Evict exactly these slots (entries of a per-head layer), bringing the live count down to the
    /// budget.
    Evict(Vec<usize>),
}
