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

    /// The caller asked a long run to stop (Ctrl-C, a client gone).
    #[error("cancelled")]
    Cancelled,

    /// A policy's error where the caller did not say which policy and layer (see [`Error::from_policy`]).
    #[error("policy: {0}")]
    Policy(#[from] msrnn_policy_api::Error),
}

impl Error {
    /// A policy's error with the policy and layer it came from: a bad parameter, a failed step, an
    /// invalid decision, or state that could not be restored.
    pub fn from_policy(e: msrnn_policy_api::Error, policy: &str, layer: usize) -> Self {
        use msrnn_policy_api::Error as P;
        let policy = policy.to_string();
        match e {
            P::Param(reason) => Error::InvalidParam { policy, reason },
            P::Failed(reason) => Error::PolicyFailed { policy, layer, reason },
            P::Decision(reason) => Error::InvalidDecision { policy, layer, reason },
            P::State(reason) => Error::StateFile(format!("policy `{policy}` (layer {layer}): {reason}")),
        }
    }
}

fn suggest(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", s.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" or "))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
