//! Helpers shared by the workspace's tests (a dev-dependency of the crates that need them).

pub mod rng;

pub use rng::Rng;
