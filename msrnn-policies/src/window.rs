//! `window` keeps the C newest tokens (by absolute position) and evicts the rest: the sliding-window
//! baseline of Oren et al. (2024), §3.

use msrnn_policy_api::{newest_first, Context, Decision, Declare, Needs, Observation, Policy, Result};

/// `window`: the C newest tokens.
#[derive(Debug, Default)]
pub struct Window;

impl Declare for Window {
    const NAME: &'static str = "window";
    const DESCRIPTION: &'static str = "Keeps the C newest tokens.";

    type Params = ();

    fn create(_: (), _: &Context) -> Result<Self> {
        Ok(Window)
    }
}

impl Policy for Window {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        Ok(Decision::Evict(newest_first(obs).into_iter().skip(budget).collect()))
    }
}

msrnn_core::builtin_policy!(Window);
