//! # msrnn-server
//!
//! `msrnn serve`: an OpenAI-compatible HTTP server where every conversation is a finite
//! multi-state, stored between turns in a session store (SQLite, or Redis for several processes).

pub mod api;
pub mod error;
pub mod metrics;
pub mod sessions;

pub use api::Limits;
pub use error::ApiError;
pub use sessions::{SessionInfo, SessionStore};
