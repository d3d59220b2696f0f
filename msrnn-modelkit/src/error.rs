//! What can go wrong while loading a model or tokenizing text, for every family adapter. Every
//! variant names the file, key or tensor at fault, so a user can act on the message alone.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: no such file or directory", .0.display())]
    NotFound(PathBuf),

    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: not a GGUF model file ({reason}); expected a .gguf file (or a Hugging Face directory with config.json and *.safetensors)", .path.display())]
    NotGguf { path: PathBuf, reason: String },

    #[error("{}: the file is truncated: tensor `{tensor}` needs bytes up to offset {needed} but the file has {available}", .path.display())]
    Truncated { path: PathBuf, tensor: String, needed: u64, available: u64 },

    #[error("{}: architecture `{arch}` is not supported here (expected `{expected}`)", .path.display())]
    UnsupportedArchitecture { path: PathBuf, arch: String, expected: String },

    /// No registered family reads this file: `what` is `GGUF architecture` or `model_type`.
    #[error("{}: {what} `{found}` is not supported (supported: {supported})", .path.display())]
    UnknownFamily { path: PathBuf, what: &'static str, found: String, supported: String },

    #[error("{}: missing metadata key `{key}`", .path.display())]
    MissingMetadata { path: PathBuf, key: String },

    #[error("{}: metadata `{key}`: {reason}", .path.display())]
    BadMetadata { path: PathBuf, key: String, reason: String },

    #[error("{}: missing tensor `{tensor}`", .path.display())]
    MissingTensor { path: PathBuf, tensor: String },

    #[error("{}: tensor `{tensor}` has shape {got:?}, expected {expected:?}", .path.display())]
    TensorShape { path: PathBuf, tensor: String, expected: Vec<usize>, got: Vec<usize> },

    #[error("{}: cannot read tensor `{tensor}`: {source}", .path.display())]
    TensorRead {
        path: PathBuf,
        tensor: String,
        #[source]
        source: Box<candle_core::Error>,
    },

    #[error("{}: invalid model config: {reason}", .path.display())]
    Config { path: PathBuf, reason: String },

    #[error("{}: {what} is not supported", .path.display())]
    Unsupported { path: PathBuf, what: String },

    #[error("{}: no tokenizer: {reason}", .path.display())]
    MissingTokenizer { path: PathBuf, reason: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("unknown weight format `{0}` (expected one of: auto, native, q8_0, f16, f32)")]
    UnknownWeightFormat(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Core(#[from] msrnn_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`; a missing file is [`Error::NotFound`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(path)
        } else {
            Error::Io { path, source }
        }
    }
}
