//! # msrnn-gemma
//!
//! Gemma 3 text decoders (tested on Gemma 3 270M, GGUF) as multi-state RNNs: every layer's
//! attention runs through [`msrnn_core::MsrnnState::attend`], so any compression policy bounds its
//! key/value cache.
//!
//! Gemma 3 interleaves two kinds of layers. Five of every six are *local*: they attend through a
//! sliding window of 512 keys (RoPE base 1e4). Every sixth is *global* (RoPE base 1e6, the whole
//! context). The window belongs to the model, so the adapter declares it in
//! [`msrnn_core::ModelInfo::layer_windows`] and the core's state enforces it; a user's capacity C
//! then bounds the global layers, and the local ones hold `min(C, 511)` tokens after each step.
//!
//! This crate holds the config, the model, the loader and the tokenizer construction; the shared
//! pieces are msrnn-modelkit's:
//! - weights from a GGUF file through [`Weights`](msrnn_modelkit::Weights), in any
//!   [`WeightFormat`](msrnn_modelkit::WeightFormat) (re-quantizing to Q8_0 is the fast choice on
//!   CPU: the file's Q5_0 blocks have no SIMD kernel in candle);
//! - the tokenizer rebuilt from GGUF metadata (SentencePiece BPE with byte fallback) as a
//!   [`Tokenizer`](msrnn_modelkit::Tokenizer).
//!
//! Registered as the `gemma3` family ([`msrnn_modelkit::load_model`] finds it).
//!
//! ```no_run
//! use msrnn_core::{generate, new_state, Capacity, GenerateOptions, PolicySpec};
//! use msrnn_gemma::Gemma;
//! use msrnn_modelkit::{LoadOptions, Model, WeightFormat};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let opts = LoadOptions { weights: WeightFormat::Q8_0, ..Default::default() };
//! let model = Gemma::load("models/gemma-3-270m-q4_k_m.gguf".as_ref(), &opts)?;
//! let registry = msrnn_policies::registry();
//! let mut state = new_state(&model, &registry, &"tova".parse::<PolicySpec>()?, Capacity::bounded(256)?, 64)?;
//! let tok = model.tokenizer();
//! let prompt = tok.encode("To be, or not to be, that is the", tok.wants_bos())?;
//! let opts = GenerateOptions { stop_tokens: tok.eos_tokens().to_vec(), ..Default::default() };
//! let out = generate(&model, &mut state, &prompt, &opts, &mut |_| true)?;
//! println!("{}", tok.decode(&out.tokens)?);
//! # Ok(()) }
//! ```

mod config;
mod loader;
mod model;
mod tokenizer;

pub use config::{GemmaConfig, ARCH, GLOBAL_EVERY, LOCAL_ROPE_THETA};
pub use model::{Attention, Block, Gemma};
pub use tokenizer::CHAT_FORMAT;
