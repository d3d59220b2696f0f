//! # msrnn-llama
//!
//! LLaMA-family decoders (SmolLM2, Llama 2, TinyLlama, ...) as multi-state RNNs: the model's
//! attention runs through [`msrnn_core::MsrnnState::attend`], so any compression policy bounds its
//! key/value cache. This crate holds the config, the model and the loader; the shared pieces
//! (weights in every format, the tokenizer, norms, errors) are msrnn-modelkit's.
//!
//! - Weights from a GGUF file (`general.architecture = llama`) or a Hugging Face directory
//!   (`config.json` + `*.safetensors` + `tokenizer.json`, `model_type = llama`), in any
//!   [`WeightFormat`](msrnn_modelkit::WeightFormat).
//! - RoPE at absolute positions, interleaved for GGUF (whose converter permuted the Q/K rows) and
//!   half-split for safetensors; RMSNorm; SwiGLU; grouped-query attention; tied embeddings.
//! - The byte-level BPE tokenizer, from GGUF metadata or `tokenizer.json`.
//! - Registered as the `llama` family ([`msrnn_modelkit::load_model`] finds it), with candle's own
//!   `quantized_llama` as the baseline `msrnn bench` compares with.
//!
//! ```no_run
//! use msrnn_core::{generate, new_state, Capacity, GenerateOptions, PolicySpec};
//! use msrnn_llama::Llama;
//! use msrnn_modelkit::{LoadOptions, Model};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = Llama::load("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &LoadOptions::default())?;
//! let registry = msrnn_policies::registry();
//! let mut state = new_state(&model, &registry, &"window".parse::<PolicySpec>()?, Capacity::bounded(256)?, 64)?;
//! let tok = model.tokenizer();
//! let prompt = tok.encode(&tok.chat_prompt("What is the capital of France?"), false)?;
//! let opts = GenerateOptions { stop_tokens: tok.eos_tokens().to_vec(), ..Default::default() };
//! let out = generate(&model, &mut state, &prompt, &opts, &mut |_| true)?;
//! println!("{}", tok.decode(&out.tokens)?);
//! # Ok(()) }
//! ```

#[cfg(feature = "candle-baseline")]
mod baseline;
mod config;
mod loader;
mod model;

#[cfg(feature = "candle-baseline")]
pub use baseline::CandleLlama;
pub use config::LlamaConfig;
pub use loader::{FAMILY, HF_NAMES};
pub use model::{Attention, Block, Llama};
