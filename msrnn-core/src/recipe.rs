//! How to build one sequence's state, decided and checked in one place: which policy, bounded or
//! not and at which capacity, the position mode, the largest chunk fed at once and how keys and
//! values are stored. Every face (CLI, server, Python) goes flag -> [`StateRecipe`] ->
//! [`PolicyRegistry::build_state`].

use crate::error::{Error, Result};
use crate::model::{CausalLm, ModelInfo};
use crate::positions::Positions;
use crate::registry::PolicyRegistry;
use crate::spec::PolicySpec;
use crate::state::{Capacity, KvFormat, MsrnnState};

/// The prefill chunk a recipe starts with (the CLI's `--prefill-chunk` default).
pub const DEFAULT_MAX_CHUNK: usize = 64;

/// What a sequence's state is built from. Made with [`StateRecipe::new`] (or
/// [`StateRecipe::resolve`]) and the builder setters, never a struct literal, so fields can be
/// added without breaking callers.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StateRecipe {
    pub policy: PolicySpec,
    pub capacity: Capacity,
    pub positions: Positions,
    /// The most tokens fed in one step (prefill chunk); the slot buffers have room for C plus this.
    pub max_chunk: usize,
    /// How keys and values are stored (f32 unless a face asks for f16 or q8_0).
    pub kv: KvFormat,
}

impl StateRecipe {
    /// A recipe with absolute positions, chunks of [`DEFAULT_MAX_CHUNK`] and f32 keys and values;
    /// nothing is checked until [`PolicyRegistry::build_state`].
    pub fn new(policy: PolicySpec, capacity: Capacity) -> Self {
        Self { policy, capacity, positions: Positions::Absolute, max_chunk: DEFAULT_MAX_CHUNK, kv: KvFormat::F32 }
    }

    pub fn positions(mut self, positions: Positions) -> Self {
        self.positions = positions;
        self
    }

    /// The largest chunk fed at once (0 counts as 1).
    pub fn max_chunk(mut self, max_chunk: usize) -> Self {
        self.max_chunk = max_chunk.max(1);
        self
    }

    /// How keys and values are stored: f32 (exact), f16 or q8_0 (smaller states, read as stored
    /// by the attention kernel).
    pub fn kv(mut self, kv: KvFormat) -> Self {
        self.kv = kv;
        self
    }

    /// The recipe for a user's choice: no capacity means unbounded for a policy that declares
    /// itself so (`full`), else `default_c` clamped to the model's context. A capacity given to an
    /// unbounded policy, a capacity of 0 and one above the context are errors (checked here, as
    /// [`PolicyRegistry::build_state`] checks them).
    pub fn resolve(
        registry: &PolicyRegistry,
        info: &ModelInfo,
        policy: PolicySpec,
        capacity: Option<usize>,
        default_c: usize,
    ) -> Result<Self> {
        let entry = registry.check_params(&policy)?;
        let capacity = match capacity {
            Some(c) => Capacity::Bounded(c),
            None if entry.unbounded => Capacity::Unbounded,
            None if info.max_context > 0 => Capacity::Bounded(default_c.min(info.max_context)),
            None => Capacity::Bounded(default_c),
        };
        let recipe = Self::new(policy, capacity);
        registry.check_recipe(info, &recipe)?;
        Ok(recipe)
    }
}

impl PolicyRegistry {
    /// The one capacity check: at least 1 token, none for an unbounded policy, at most the model's
    /// context (with what a larger state would cost). Per-layer budgets are checked when the layers
    /// ask for them ([`MsrnnState::new`]).
    pub fn check_recipe(&self, info: &ModelInfo, recipe: &StateRecipe) -> Result<()> {
        let entry = self.check_params(&recipe.policy)?;
        match recipe.capacity {
            Capacity::Bounded(0) => Err(Error::InvalidCapacity("capacity must be at least 1 token".into())),
            Capacity::Bounded(c) if entry.unbounded => Err(Error::InvalidCapacity(format!(
                "policy `{}` keeps every token, so it takes no capacity (got {c}); use it unbounded",
                entry.name
            ))),
            c => info.check_capacity(c),
        }
    }

    /// A fresh state for `model` as `recipe` says, after [`PolicyRegistry::check_recipe`].
    pub fn build_state(&self, model: &dyn CausalLm, recipe: &StateRecipe) -> Result<MsrnnState> {
        let i = model.info();
        self.check_recipe(i, recipe)?;
        let policies =
            self.create_layers(&recipe.policy, i.num_layers, i.num_heads, i.num_kv_heads, i.head_dim, recipe.capacity)?;
        let mut cfg = model.state_config(recipe.capacity, recipe.max_chunk);
        (cfg.positions, cfg.kv) = (recipe.positions, recipe.kv);
        MsrnnState::new(&cfg, policies)
    }
}
