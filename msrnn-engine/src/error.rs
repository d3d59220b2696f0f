//! The engine's errors: the core's and the model kit's, plus bad requests and unreadable files.

/// What can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] msrnn_core::Error),

    #[error(transparent)]
    Model(#[from] msrnn_modelkit::Error),

    /// A request the engine refuses (empty prompt, token outside the vocabulary, bad sampling).
    #[error("invalid request: {0}")]
    Request(String),

    /// A file that cannot be read or written.
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },

    /// A state or conversation that cannot be restored.
    #[error("state: {0}")]
    State(String),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Core(e.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
