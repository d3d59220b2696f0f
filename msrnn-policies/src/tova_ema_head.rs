//! `tova-ema-head` is `tova-ema` per KV head: each entry's score is an exponential moving average,
//! `s <- d*s + (1-d)*a`, of the attention `a` its own KV head's query heads give it (averaged over
//! that group), a new entry starting at the attention it gets at its arrival step; each KV head
//! keeps its C highest (per-head slots, as `tova-head`), the newest token a candidate, ties
//! keeping the newer. `d = 0` is `tova-head`; the default `d = 1 - 8/C` (0 for C <= 8) as
//! `tova-ema`'s. Combines the smoothing that won perplexity per token (issue #15) with a budget per
//! head.

use msrnn_policy_api::{Context, Decision, Declare, Needs, Observation, Policy, Result, Rows};

use crate::tova_ema::{ema_update, TovaEma, TovaEmaParams};
use crate::tova_head::{per_head_lowest, run_capacity};

/// `tova-ema-head`: per KV head, the top-C of a moving average of the head group's attention.
#[derive(Debug)]
pub struct TovaEmaHead {
    capacity: usize,
    decay: f64,
    /// Smoothed attention per entry; restarts when an entry's slot is rewritten.
    scores: Vec<f64>,
}

impl Declare for TovaEmaHead {
    const NAME: &'static str = "tova-ema-head";
    const DESCRIPTION: &'static str =
        "tova-ema per KV head: each head keeps the C tokens with the highest moving average of its own attention.";
    type Params = TovaEmaParams;

    fn create(p: TovaEmaParams, ctx: &Context) -> Result<Self> {
        let capacity = run_capacity(Self::NAME, ctx)?;
        let decay = p.decay.unwrap_or_else(|| TovaEma::default_decay(ctx.capacity));
        Ok(TovaEmaHead { capacity, decay, scores: Vec::new() })
    }
}

impl Policy for TovaEmaHead {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn needs(&self) -> Needs {
        Needs { rows: Rows::All, every_step: true, ..Needs::default() }
    }
    fn head_capacity(&self) -> Option<usize> {
        Some(self.capacity)
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        ema_update(obs, self.decay, &mut self.scores);
        if obs.excess(budget) == 0 {
            return Ok(Decision::Keep);
        }
        Ok(Decision::Evict(per_head_lowest(obs, &self.scores, budget)))
    }
    fn reset(&mut self) {
        self.scores.clear();
    }
    fn save_state(&self) -> Vec<f64> {
        self.scores.clone()
    }
    fn load_state(&mut self, data: &[f64]) -> Result<()> {
        self.scores = data.to_vec();
        Ok(())
    }
}

msrnn_core::builtin_policy!(TovaEmaHead);
