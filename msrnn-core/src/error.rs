//! One error type for the whole core: callers match on what went wrong, not on which module said it.

/// Everything that can go wrong in the core. Every variant names the thing at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("unknown policy `{name}`{}", suggest(.suggestions))]
    UnknownPolicy { name: String, suggestions: Vec<String> },

    #[error("policy `{policy}`: {reason}")]
    InvalidParam { policy: String, reason: String },

    #[error("policy `{policy}` gave an invalid decision on layer {layer}: {reason} (state left untouched)")]
    InvalidDecision { policy: String, layer: usize, reason: String },

    #[error("policy `{policy}` failed on layer {layer}: {reason} (state left untouched)")]
    PolicyFailed { policy: String, layer: usize, reason: String },

    #[error("invalid capacity: {0}")]
    InvalidCapacity(String),

    #[error("invalid policy spec `{spec}`: {reason}")]
    InvalidSpec { spec: String, reason: String },

    #[error("plugin {path}: {reason}")]
    Plugin { path: String, reason: String },

    #[error("shape mismatch in {op}: {reason}")]
    Shape { op: &'static str, reason: String },

    #[error("invalid input: {0}")]
    Input(String),

    #[error("state file: {0}")]
    StateFile(String),
}

fn suggest(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", s.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" or "))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
