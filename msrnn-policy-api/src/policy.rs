//! The two traits every policy implements, built in or plugin alike: [`Policy`] (what an instance
//! does) and [`Declare`] (how it is named, described, parameterised and created).

use crate::error::{Error, Result};
use crate::params::{Param, Params};
use crate::types::{Context, Decision, Needs, Observation};

/// A compression policy for one layer. The host creates one instance per layer, so per-layer
/// bookkeeping lives in the instance. Instances may move between threads but are never used by two
/// at once.
pub trait Policy: Send {
    /// The registered name (errors and saved states use it).
    fn name(&self) -> &str;

    /// What this instance wants to observe. Fixed for its life.
    fn needs(&self) -> Needs;

    /// The capacity this instance wants for its own layer; `None` (the default) takes the run's C.
    /// Asked once, when the state is built; the host refuses a total above `layers x C`.
    fn capacity(&self) -> Option<usize> {
        None
    }

    /// Called after attention with `budget` = the layer's capacity. When more than `budget` slots are
    /// live it must evict exactly `live - budget` of them; otherwise it must answer [`Decision::Keep`].
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision>;

    /// Forget all bookkeeping (a new sequence starts).
    fn reset(&mut self) {}

    /// The bookkeeping as numbers, so a saved state resumes exactly (H2O's scores, a generator's
    /// state). Stateless policies keep the default.
    fn save_state(&self) -> Vec<f64> {
        Vec::new()
    }

    /// Restores what [`Policy::save_state`] gave.
    fn load_state(&mut self, data: &[f64]) -> Result<()> {
        if data.is_empty() {
            Ok(())
        } else {
            Err(Error::State(format!("keeps no state, but {} values were given", data.len())))
        }
    }
}

/// A policy's declaration: name, aliases, description and parameters, written once, and its
/// constructor. `msrnn_core::builtin_policy!(T)` registers it as a built-in, `export_policy!(T)`
/// exports it from a plugin library; moving a policy between the two is that one line.
pub trait Declare: Policy + Sized + 'static {
    /// Registered name: 1 to 64 of `[A-Za-z0-9_+.-]`.
    const NAME: &'static str;
    /// Other names it answers to.
    const ALIASES: &'static [&'static str] = &[];
    /// One line for listings.
    const DESCRIPTION: &'static str;
    /// The parameters accepted, with their defaults; any other key is refused before
    /// [`Declare::create`] runs, and [`Params::get`] falls back to these defaults.
    const PARAMS: &'static [Param] = &[];
    /// Whether the policy never evicts and so runs without a capacity (`full`). The registry builds
    /// states from this declaration, never from the name. Plugins are always bounded.
    const UNBOUNDED: bool = false;
    /// One instance for the layer `ctx` describes.
    fn create(params: &Params, ctx: &Context) -> Result<Self>;
}
