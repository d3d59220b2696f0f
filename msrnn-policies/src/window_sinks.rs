//! `window+i` keeps the tokens at positions `0..sinks` forever plus the newest `C - sinks`: attention
//! sinks, after Xiao et al. (2024), "Efficient Streaming Language Models with Attention Sinks"
//! (StreamingLLM), without its position re-indexing.

use msrnn_policy_api::{newest_first, params, Context, Decision, Declare, Error, Needs, Observation, Policy, Result};

/// `window+i` (alias `sinks`): the first `sinks` tokens plus the newest.
#[derive(Debug)]
pub struct WindowSinks {
    sinks: u64,
}

impl WindowSinks {
    pub fn new(sinks: usize) -> Self {
        Self { sinks: sinks as u64 }
    }
}

params! {
    /// `window+i`'s parameters.
    pub struct WindowSinksParams {
        sinks: usize = 4, "number of initial positions never evicted";
    }
}

impl Declare for WindowSinks {
    const NAME: &'static str = "window+i";
    const ALIASES: &'static [&'static str] = &["sinks"];
    const DESCRIPTION: &'static str = "Keeps the first `sinks` tokens forever plus the newest (attention sinks).";
    type Params = WindowSinksParams;

    fn create(WindowSinksParams { sinks }: WindowSinksParams, ctx: &Context) -> Result<Self> {
        if let Some(c) = ctx.capacity.filter(|&c| c <= sinks) {
            return Err(Error::Param(format!(
                "capacity {c} must exceed sinks={sinks}, leaving room for at least one recent token"
            )));
        }
        Ok(WindowSinks::new(sinks))
    }
}

impl Policy for WindowSinks {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        // Oldest non-sink entries go first.
        let mut order: Vec<usize> = newest_first(obs).into_iter().filter(|&s| obs.positions[s] >= self.sinks).collect();
        order.reverse();
        order.truncate(obs.excess(budget));
        Ok(Decision::Evict(order))
    }
}

msrnn_core::builtin_policy!(WindowSinks);
