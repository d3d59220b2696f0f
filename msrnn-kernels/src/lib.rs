//! CPU kernels behind msrnn's hot loops, on plain slices (no tensor library): quantized matrix products, the fused
//! attention step over a layer's slot buffers ([`attention`]), rotary embeddings ([`rope`]), and the thread pool they
//! share ([`pool`]).
//!
//! [`QMatrix`] holds a weight matrix (`out_dim x in_dim`) in a GGUF block format ([`Format`]: Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0 and the K-quants Q4_K, Q5_K, Q6_K), repacked at load into
//! tiles of 16 output rows so that one SIMD lane computes one output. [`QMatrix::matmul`] computes
//! `y[rows, out] = x[rows, in] · Wᵀ` for a decode step (`rows = 1`) and for prefill chunks and batches alike.
//!
//! Guarantees:
//! - activations are quantized to 8 bits in blocks of 32 values, once per call;
//! - a row's result depends only on that row's input: not on how many rows are in the call, its place among them or
//!   the thread count (batch invariance; work is split over outputs and rows, never over the reduction);
//! - every instruction-set variant ([`isa::Isa`]) returns the same bits: integer block sums are exact and the float
//!   operations per output follow one fixed sequence (see [`QMatrix::matmul`]).

pub mod act;
pub mod attention;
pub mod error;
pub mod format;
pub mod isa;
pub mod kv;
mod matmul;
pub mod mlp;
pub mod pool;
pub mod rope;
mod simd;

pub use error::KernelError;
pub use format::Format;
pub use isa::Isa;
pub use kv::{KvBuf, KvFormat, KvSlice};
pub use matmul::qmatrix;
pub use qmatrix::QMatrix;
