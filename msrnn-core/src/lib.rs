//! # msrnn-core
//!
//! A decoder-only transformer is a multi-state RNN whose state (one key/value pair per token and
//! layer) grows without bound; capping it at C tokens per layer, with a *compression policy* choosing
//! what to drop, makes it a finite RNN (Oren et al., 2024, "Transformers are Multi-State RNNs").
//!
//! This crate knows no model family. It holds:
//! - the state ([`MsrnnState`], [`LayerState`]): fixed slot buffers updated in place;
//! - the step ([`attend`]): update, attention over live slots, compress;
//! - the policy contract, re-exported from msrnn-policy-api ([`Policy`], [`Observation`], [`Decision`],
//!   [`Declare`]), and its [`PolicyRegistry`] ([`builtin_policy!`] registers a built-in);
//! - policies as shared-library plugins ([`plugin`]: [`PolicyRegistry::load_plugin`], `MSRNN_PLUGINS`);
//! - what adapters implement ([`CausalLm`]) and what they get for free ([`perplexity`], [`generate`]);

mod attend;
pub mod batch;
mod checkpoint;
mod error;
pub mod eval;
pub mod generate;
mod model;
mod persist;
pub mod plugin;
pub mod policy;
pub mod positions;
mod recipe;
mod registry;
mod spec;
mod state;
pub mod util;

pub use attend::attend;
pub use checkpoint::Checkpoint;
pub use error::{Error, Result};
pub use eval::{perplexity, perplexity_batch, perplexity_batch_with, EvalMode, Perplexity};
pub use generate::{generate, generate_batch, GenItem, GenerateOptions, Generation, Sampler, Sampling, StopReason};
pub use model::{new_state, new_state_positioned, CausalLm, Logits, ModelInfo, SeqStep};
pub use persist::StateHeader;
pub use plugin::{Plugin, PluginKind, PLUGINS_ENV};
pub use policy::{Context, Decision, Declare, Needs, Observation, Param, Params, Policy, Rows};
pub use positions::{Positions, Rope, RopeSpec, RopeStyle};
pub use recipe::{StateRecipe, DEFAULT_MAX_CHUNK};
pub use registry::{BuiltinPolicy, Entry, Factory, PolicyRegistry, Source};
pub use spec::{ParamValue, PolicySpec};
pub use state::{Capacity, KvFormat, LayerState, MsrnnState, StateConfig};

/// Re-exported so policy crates can `inventory::submit!` without naming the dependency.
pub use inventory;
