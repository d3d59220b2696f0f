//! The two traits every policy implements, built in or plugin alike: [`Policy`] (what an instance
//! does) and [`Declare`] (how it is named, described, parameterised and created).

use crate::error::{Error, Result};
use crate::params::ParamSet;
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

    /// `Some(h)` makes the layer *per-head*: each KV head keeps its own tokens (its own slots, freed
    /// when evicted), at most `h` of them, and the layer `C x kv_heads` entries in all; the
    /// observation and the decision then speak of entries (see [`Observation`]). `h = C` splits the
    /// budget evenly (per-head TOVA); a larger `h` lets heads share it unevenly (AdaKV), and
    /// every head's slots are sized for `h`. `None` (the default): every KV head keeps the same
    /// tokens. Asked once, when the state is built; the host refuses `h` outside `C..=C x kv_heads`.
    fn head_capacity(&self) -> Option<usize> {
        None
    }

    /// Called after attention with `budget` = the layer's capacity. When more than `budget` slots are
    /// live it must evict exactly `live - budget` of them; otherwise it must answer [`Decision::Keep`].
    /// A per-head layer's budget is per head: exactly [`Observation::excess`] entries go, and no
    /// head keeps more than `head_capacity`.
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

/// A policy's declaration: name, aliases, description and typed parameters, written once, and its
/// constructor. `msrnn_core::builtin_policy!(T)` registers it as a built-in, `export_policy!(T)`
/// exports it from a plugin library; moving a policy between the two is that one line.
pub trait Declare: Policy + Sized + 'static {
    /// Registered name: 1 to 64 of `[A-Za-z0-9_+.-]`.
    const NAME: &'static str;
    /// Other names it answers to.
    const ALIASES: &'static [&'static str] = &[];
    /// One line for listings.
    const DESCRIPTION: &'static str;
    /// The parameters, typed, declared with [`crate::params!`] (`()` for none). Their schema is
    /// what the registry checks a spec against (unknown keys, types, ranges) before any instance
    /// exists; a parameter not given takes its declared default.
    type Params: ParamSet;
    /// Whether the policy never evicts and so runs without a capacity (`full`). The registry builds
    /// states from this declaration, never from the name. Plugins are always bounded.
    const UNBOUNDED: bool = false;
    /// One instance for the layer `ctx` describes.
    fn create(params: Self::Params, ctx: &Context) -> Result<Self>;
}
