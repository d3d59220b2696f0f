//! # msrnn-llama
//!
//! LLaMA-family decoders (SmolLM2, Llama 2, TinyLlama, ...) as multi-state RNNs: the model's
//! attention runs through [`msrnn_core::MsrnnState::attend`], so any compression policy bounds its
//! key/value cache.
//!
//! - Weights from a GGUF file (quantized matmuls through candle's `QMatMul`, optionally
//!   re-quantized to Q8_0 or dequantized: [`WeightFormat`]) or from a Hugging Face directory
//!   (`config.json` + `*.safetensors` + `tokenizer.json`).
//! - RoPE at absolute positions, interleaved for GGUF (whose converter permuted the Q/K rows) and
//!   half-split for safetensors; RMSNorm; SwiGLU; grouped-query attention; tied embeddings.
//! - The tokenizer from `tokenizer.json` or rebuilt from GGUF metadata (byte-level BPE), chat
//!   prompts, and [`TokenStream`] for streaming text.
//!
//! ```no_run
//! use msrnn_core::{generate, new_state, Capacity, CausalLm, GenerateOptions, PolicySpec};
//! use msrnn_llama::{Llama, LoadOptions};
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

//! Other family adapters (msrnn-gemma) build on the shared pieces here: [`gguf`] (opening a file,
//! typed metadata), [`GgufWeights`] and [`Linear`] (tensors in any [`WeightFormat`]), [`Tokenizer`]
//! (built from a `tokenizers` model with [`Tokenizer::new`]), [`Error`] and [`RmsNorm`].

mod config;
mod error;
pub mod gguf;
mod loader;
mod model;
mod tokenizer;
mod weights;

pub use config::{LlamaConfig, RopeStyle};
pub use error::{Error, Result};
/// The `general.architecture` of a GGUF file (the CLI picks a model family with it).
pub use gguf::architecture as gguf_architecture;
pub use model::{check_input, Attention, Block, Llama, Mlp, RmsNorm};
pub use tokenizer::{ChatFormat, TokenStream, Tokenizer};
pub use weights::{GgufWeights, Linear, LoadOptions, WeightFormat};
