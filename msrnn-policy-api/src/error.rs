//! What can go wrong inside a policy. The host knows which policy and layer it asked, so these carry
//! only the reason; msrnn-core adds the rest (`msrnn_core::Error::from_policy`).

use std::fmt;

/// A policy's failure. The variant says which promise broke; the text says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A parameter is unknown, malformed or out of range: no instance was created.
    Param(String),
    /// The step could not decide; the host evicts nothing.
    Failed(String),
    /// The decision broke the contract ([`crate::validate`]); the host evicts nothing.
    Decision(String),
    /// Saved bookkeeping could not be restored.
    State(String),
}

impl Error {
    /// The reason, without the kind.
    pub fn reason(&self) -> &str {
        match self {
            Error::Param(r) | Error::Failed(r) | Error::Decision(r) | Error::State(r) => r,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
