//! # msrnn-core
//!
//! A decoder-only transformer is a multi-state RNN whose state (one key/value pair per token and
//! layer) grows without bound; capping it at C tokens per layer, with a *compression policy* choosing
//! what to drop, makes it a finite RNN (Oren et al., 2024, "Transformers are Multi-State RNNs").
//!
//! This crate knows no model family. It holds:
//! - the state ([`MsrnnState`], [`LayerState`]): fixed slot buffers updated in place;
//! - the step ([`attend`]): update, attention over live slots, compress;
//! - the policy contract ([`Policy`], [`Observation`], [`Decision`]) and its [`PolicyRegistry`];
//! - policies as shared-library plugins ([`plugin`]: [`PolicyRegistry::load_plugin`], `MSRNN_PLUGINS`);
//! - what adapters implement ([`CausalLm`]) and what they get for free ([`perplexity`], [`generate`]);
//! - rotary position embeddings ([`Rope`]), here because the state owns positions.

mod attend;
mod error;
pub mod eval;
pub mod generate;
mod model;
mod persist;
pub mod plugin;
pub mod policy;
mod registry;
mod rope;
mod spec;
mod state;

pub use attend::attend;
pub use error::{Error, Result};
pub use eval::{perplexity, EvalMode, Perplexity};
pub use generate::{generate, GenerateOptions, Generation, Sampler, Sampling, StopReason};
pub use model::{new_state, CausalLm, ModelInfo};
pub use persist::StateHeader;
pub use plugin::{Plugin, PLUGINS_ENV};
pub use policy::{Decision, Needs, Observation, Policy, Rows};
pub use registry::{BuiltinPolicy, Entry, Factory, ParamInfo, PolicyContext, PolicyRegistry, Source};
pub use rope::{Rope, RopeStyle, RopeTables};
pub use spec::{ParamValue, PolicySpec};
pub use state::{Capacity, LayerState, MsrnnState, StateConfig};

/// Re-exported so policy crates can `inventory::submit!` without naming the dependency.
pub use inventory;
