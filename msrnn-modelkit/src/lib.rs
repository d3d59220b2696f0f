//! # msrnn-modelkit
//!
//! Everything a model family's adapter shares, and nothing any one family owns. A family crate
//! (msrnn-llama, msrnn-gemma, ...) holds its config, its model and its loader; from here it takes:
//!
//! - [`gguf`]: opening a GGUF file (magic, header, architecture) and typed metadata with errors
//!   naming the file and key;
//! - [`DecoderConfig`]: the hyper-parameters every decoder has, read from GGUF and validated, and
//!   the [`msrnn_core::ModelInfo`] they make;
//! - [`Weights`]: tensors from a GGUF file or a Hugging Face safetensors directory, asked for by
//!   their GGUF names (a [`NameMap`] translates for safetensors), shape-checked, as [`Linear`]s in
//!   any [`WeightFormat`];
//! - [`Tokenizer`] (byte-level BPE built from GGUF metadata, `tokenizer.json`, or any `tokenizers`
//!   model a family builds), [`ChatFormat`], [`TokenStream`];
//! - blocks many decoders share: [`AttentionProjections`] around the state's `attend`, [`GatedMlp`];
//! - [`RmsNorm`], [`RopeSpec`] (applied by msrnn-core's state, which owns positions),
//!   [`batch_tokens`] and [`finish_batch`], which every `forward_batch` starts and ends with;
//! - [`Error`], the one error type of loading and tokenizing;
//! - the face the CLI uses: [`Model`] (a [`msrnn_core::CausalLm`] with its tokenizer and weight
//!   kinds), the family registry ([`Family`], filled with `inventory`) and [`load_model`], and
//!   [`Baseline`] for a family's reference implementation in `msrnn bench`.
//!
//! ```no_run
//! use msrnn_core::{generate, new_state, Capacity, GenerateOptions, PolicySpec};
//! use msrnn_modelkit::{load_model, LoadOptions};
//! # use msrnn_gemma as _;
//! # use msrnn_llama as _;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Any file a linked family reads (the family crates must be linked: `use msrnn_llama as _;`).
//! let model = load_model("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &LoadOptions::default())?;
//! let registry = msrnn_policies::registry();
//! let mut state = new_state(&*model, &registry, &"tova".parse::<PolicySpec>()?, Capacity::bounded(256)?, 64)?;
//! let tok = model.tokenizer();
//! let prompt = tok.encode(&tok.chat_prompt("What is the capital of France?"), tok.wants_bos())?;
//! let opts = GenerateOptions { stop_tokens: tok.eos_tokens().to_vec(), ..Default::default() };
//! let out = generate(&*model, &mut state, &prompt, &opts, &mut |_| true)?;
//! println!("{}", tok.decode(&out.tokens)?);
//! # Ok(()) }
//! ```

mod config;
mod error;
mod family;
pub mod gguf;
mod layers;
mod linear;
mod model;
mod norm;
mod stream;
mod tokenizer;
mod weights;

pub use config::{AttentionShape, DecoderConfig};
pub use error::{Error, Result};
pub use family::{families, family, family_of, hf_dir, load_model, Baseline, BaselineModel, Family};
pub use layers::{AttentionProjections, GatedMlp};
pub use linear::Linear;
pub use model::{batch_tokens, finish_batch, Model, WeightKinds};
pub use msrnn_core::{Positions, Rope, RopeSpec, RopeStyle};
pub use norm::RmsNorm;
pub use stream::{Detokenizer, TokenStream};
pub use tokenizer::{ChatFormat, TextPrefix, Tokenizer, PREFIX_MARGIN};
pub use weights::{blk, LoadOptions, NameMap, WeightFormat, Weights};

/// Re-exported so family crates can `inventory::submit!` a [`Family`] without naming the
/// dependency.
pub use inventory;
