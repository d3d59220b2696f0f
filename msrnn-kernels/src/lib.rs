//! # msrnn-kernels
//!
//! CPU kernels behind msrnn's hot loops, on plain slices (no tensor library): the fused attention
//! step over a layer's slot buffers ([`attention`]) and rotary position embeddings ([`rope`]).
//! Each kernel picks its instruction set at run time and is tested against a scalar reference.

pub mod attention;
pub mod rope;
