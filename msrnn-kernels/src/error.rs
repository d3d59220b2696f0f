//! The crate's error type.

/// What went wrong building or combining a [`crate::QMatrix`], or choosing an instruction set.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KernelError {
    #[error("{format}: in_dim {in_dim} is not a multiple of the block size {block}")]
    InDimNotBlockMultiple { format: &'static str, in_dim: usize, block: usize },
    #[error("{format} matrix {out_dim}x{in_dim}: expected {expected} bytes, got {got}")]
    ByteLength { format: &'static str, out_dim: usize, in_dim: usize, expected: usize, got: usize },
    #[error("matrix {out_dim}x{in_dim}: expected {expected} values, got {got}")]
    ValueCount { out_dim: usize, in_dim: usize, expected: usize, got: usize },
    #[error("empty matrix ({out_dim}x{in_dim})")]
    Empty { out_dim: usize, in_dim: usize },
    #[error("concat_rows: {0}")]
    Concat(String),
    #[error("unknown ggml type id {0} (supported: Q4_1 = 3, Q8_0 = 8)")]
    UnsupportedGgmlType(u32),
    #[error("unknown weight format {0:?} (supported: q4_1, q8_0)")]
    UnknownFormat(String),
    #[error("unknown instruction set {0:?} (expected scalar, avx2 or avx512)")]
    UnknownIsa(String),
    #[error("instruction set {0} is not supported by this CPU")]
    UnsupportedIsa(&'static str),
}

pub type Result<T> = std::result::Result<T, KernelError>;
