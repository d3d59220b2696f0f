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
    #[error("unsupported ggml type id {0} (supported: Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14)")]
    UnsupportedGgmlType(u32),
    #[error("unknown weight format {0:?} (supported: q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k)")]
    UnknownFormat(String),
    #[error("{0}: no quantizer here (only Q8_0 and Q4_1 are made; the other formats are read)")]
    NoQuantizer(&'static str),
    #[error("unknown instruction set {0:?} (expected scalar, avx2, avx512 or neon)")]
    UnknownIsa(String),
    #[error("instruction set {0} is not supported by this CPU")]
    UnsupportedIsa(&'static str),
}

pub type Result<T> = std::result::Result<T, KernelError>;
