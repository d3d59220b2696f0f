//! `full` never evicts: the unbounded multi-state RNN, i.e. the plain transformer's KV cache, so it
//! refuses a bounded capacity.

use msrnn_policy_api::{Context, Decision, Declare, Error, Needs, Observation, Params, Policy, Result};

/// `full` (alias `none`): keeps every token.
#[derive(Debug, Default)]
pub struct Full;

impl Declare for Full {
    const NAME: &'static str = "full";
    const ALIASES: &'static [&'static str] = &["none"];
    const DESCRIPTION: &'static str = "Never evicts: the unbounded cache of the plain transformer.";
    const UNBOUNDED: bool = true;

    fn create(_: &Params, ctx: &Context) -> Result<Self> {
        match ctx.capacity {
            Some(c) => {
                Err(Error::Param(format!("keeps every token, so it takes no capacity (got {c}); use it unbounded")))
            }
            None => Ok(Full),
        }
    }
}

impl Policy for Full {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        if obs.live_count() > budget {
            return Err(Error::Failed(format!(
                "never evicts, but the layer holds {} tokens with a budget of {budget}",
                obs.live_count()
            )));
        }
        Ok(Decision::Keep)
    }
}

msrnn_core::builtin_policy!(Full);
