//! # msrnn-engine
//!
//! The library the faces (CLI, server, Python) share: a loaded model with the id state files
//! record ([`LoadedModel`], [`load`]), and the batched scheduler ([`Engine`]) that runs many
//! sequences, each on its own bounded multi-state, through one forward pass per step.
//!
//! The path of one request: policy and capacity -> [`StateRecipe`] -> [`Engine::new_state`] ->
//! [`Engine::add`] (prompt tokens, [`GenConfig`]) -> [`Engine::step`] until [`Event::Finished`]
//! hands the state back. [`Engine::score`] adds a sequence that scores a known text instead
//! (teacher-forced, [`Event::Scored`] NLLs): the evaluations' perplexity.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use msrnn_engine::{Engine, EngineOptions, Event, GenConfig, StateRecipe};
//! let model = Arc::new(msrnn_engine::load("model.gguf".as_ref(), Default::default(), &candle_core::Device::Cpu)?);
//! let registry = Arc::new(msrnn_core::PolicyRegistry::with_builtins());
//! let mut engine = Engine::new(model.clone(), registry.clone(), EngineOptions::default());
//! let recipe = StateRecipe::resolve(&registry, model.info(), "tova".parse()?, Some(256), 512)?;
//! let prompt = model.tokenizer().encode("Hello", false)?;
//! engine.add(engine.new_state(&recipe)?, prompt, GenConfig::default())?;
//! while engine.active() > 0 {
//!     for event in engine.step()? {
//!         if let Event::Token { text, .. } = event {
//!             print!("{text}");
//!         }
//!     }
//! }
//! # Ok(()) }
//! ```

mod engine;
mod error;
mod model;
pub mod session;

pub use engine::{Engine, EngineOptions, Event, Finished, GenConfig, Progress, SeqId, StopReason};
pub use error::{Error, Result};
pub use model::{
    digest_head, find_model, find_up, fnv64, load, model_id, LoadedModel, ModelSearch, DEFAULT_MODEL, FNV_OFFSET,
};
pub use msrnn_core::{Capacity, Positions, Sampling, StateRecipe};
pub use session::{chat_text, next_turn_prompt, Conversation, Message, Role, Turn};
