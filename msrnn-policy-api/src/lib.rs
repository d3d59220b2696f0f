//! # msrnn-policy-api
//!
//! The contract between msrnn and a KV-cache compression policy, defined once and used by the core,
//! the built-in policies and plugins alike. No dependencies, so a plugin crate that depends on this
//! one alone builds in seconds and does not link candle.
//!
//! - [`types`]: what a policy asks for ([`Needs`]), where it lives ([`Context`]), what it sees
//!   ([`Observation`]) and what it answers ([`Decision`]);
//! - [`params`]: typed parameters declared once ([`params!`], [`ParamSet`]), their schema ([`Param`])
//!   and their text form in specs and at the C ABI ([`Params`]);
//! - [`helpers`]: head-averaged attention, key norms, [`lowest_scored`], [`newest_first`], and
//!   [`validate`], the host's check of every decision;
//! - [`Policy`] (one instance per layer) and [`Declare`] (name, aliases, description, parameters,
//!   constructor), implemented the same way by a built-in and a plugin;
//! - [`abi`]: the C layout of a plugin (`docs/msrnn_plugin.h`), and [`export_policy!`], which turns a
//!   [`Declare`] policy into one.
//!
//! The guide, with a complete plugin in Rust and in C, is `docs/plugins.md`.

pub mod abi;
mod error;
#[doc(hidden)]
pub mod export;
pub mod helpers;
pub mod params;
mod policy;
pub mod rng;
pub mod types;

pub use error::{Error, Result};
pub use helpers::{lowest_among, lowest_scored, newest_first, validate};
pub use params::{parse_pairs, valid_name, Bounds, FromParam, Param, ParamSet, ParamType, Params};
pub use policy::{Declare, Policy};
pub use rng::SplitMix64;
pub use types::{Context, Decision, Needs, Observation, Rows};
