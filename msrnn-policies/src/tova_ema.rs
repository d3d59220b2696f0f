//! `tova-ema` is TOVA with memory: each entry's score is an exponential moving average of the
//! head-averaged attention it receives, `s <- d*s + (1-d)*a` at every step, a new entry starting at
//! the attention it gets at its arrival step (from its own query); the lowest score is evicted, the
//! newest token included, ties keeping the newer. `d = 0` is TOVA (Oren et al. 2024); the default
//! `d = 1 - 8/C` (0 for C <= 8) remembers about the last C/8 steps. Proposed in issue #15 ("smoothed
//! TOVA"), measured there with an independent implementation.
//!
//! In a chunk every query row is one step (one decay per token, not per call), so chunked and
//! one-token-at-a-time feeding give the same scores up to the point where eviction is deferred to
//! the chunk's end.

use msrnn_policy_api::{lowest_scored, params, Context, Decision, Declare, Needs, Observation, Policy, Result, Rows};

/// `tova-ema`: the top-C of an exponential moving average of head-averaged attention.
#[derive(Debug)]
pub struct TovaEma {
    decay: f64,
    /// Smoothed attention per slot; restarts when a slot is rewritten.
    scores: Vec<f64>,
}

impl TovaEma {
    /// `decay` in `[0, 1)`: the weight kept from the previous score at each step.
    pub fn new(decay: f64) -> Self {
        Self { decay, scores: Vec::new() }
    }

    /// The default decay for capacity `c`: `1 - 8/c`, at least 0.
    pub fn default_decay(c: Option<usize>) -> f64 {
        c.map_or(0.99, |c| (1.0 - 8.0 / c as f64).max(0.0))
    }
}

params! {
    /// `tova-ema`'s parameters.
    pub struct TovaEmaParams {
        decay: Option<f64> = None => "1-8/C", range 0.0..1.0, "weight of the past in s <- d*s + (1-d)*a; 0 is TOVA";
    }
}

impl Declare for TovaEma {
    const NAME: &'static str = "tova-ema";
    const DESCRIPTION: &'static str =
        "Keeps the C tokens with the highest moving average of head-averaged attention (smoothed TOVA).";
    type Params = TovaEmaParams;

    fn create(p: TovaEmaParams, ctx: &Context) -> Result<Self> {
        Ok(TovaEma::new(p.decay.unwrap_or_else(|| Self::default_decay(ctx.capacity))))
    }
}

/// Updates `scores` with every query row of `obs`, oldest first: an entry that arrives at row `r`
/// starts at its attention in row `r`, and every row after its arrival decays and adds. The
/// attention is averaged over all query heads, or, in a per-head layer, over each entry's own KV
/// head's query heads (scores per entry).
pub fn ema_update(obs: &Observation<'_>, decay: f64, scores: &mut Vec<f64>) {
    let n = obs.live.len();
    if scores.len() < n {
        scores.resize(n, 0.0);
    }
    // Row r is the query of the token at position `first + r`; a new entry arrives at its own row.
    let first = obs.tokens_seen.saturating_sub(obs.rows as u64);
    let mut arrival: Vec<Option<usize>> = vec![None; n];
    for &s in obs.new_slots {
        scores[s] = 0.0;
        arrival[s] = Some(obs.positions[s].saturating_sub(first) as usize);
    }
    let mut row = vec![0f64; n];
    for r in 0..obs.rows {
        if obs.per_head() {
            row = obs.kv_head_mean(r);
        } else {
            row.iter_mut().for_each(|x| *x = 0.0);
            obs.add_head_mean(r, &mut row);
        }
        for s in obs.live_slots() {
            match arrival[s] {
                Some(a) if a == r => scores[s] = row[s],
                Some(a) if a > r => {}
                _ => scores[s] = decay * scores[s] + (1.0 - decay) * row[s],
            }
        }
    }
}

impl Policy for TovaEma {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn needs(&self) -> Needs {
        Needs { rows: Rows::All, every_step: true, ..Needs::default() }
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        ema_update(obs, self.decay, &mut self.scores);
        let k = obs.excess(budget);
        if k == 0 {
            return Ok(Decision::Keep);
        }
        Ok(Decision::Evict(lowest_scored(obs, &self.scores, |_| false, k)))
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

msrnn_core::builtin_policy!(TovaEma);
