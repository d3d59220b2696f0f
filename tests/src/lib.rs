//! Helpers shared by the workspace's tests (a dev-dependency of the crates that need them):
//! one seeded generator, tiny random models that the tests write as GGUF (and safetensors) with
//! the naive f64 reference forwards to check adapters against, and the lookup of the real model
//! files and texts, which tests skip when they are absent, and the build of the plugins.

pub mod files;
pub mod plugins;
pub mod reference;
pub mod rng;
pub mod tiny_gemma;
pub mod tiny_llama;
pub mod weights;

pub use rng::Rng;
pub use weights::{max_abs_diff, write_gguf, Dims, W};
