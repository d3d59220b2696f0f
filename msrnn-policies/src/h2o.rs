//! `h2o` keeps the `floor(recent * C)` newest entries and gives the rest of the budget to the older
//! entries with the most attention accumulated over every step they were cached (Heavy-Hitter
//! Oracle, Zhang et al. 2023); scores are head-averaged, summed in f64, and ties keep the newer.

use msrnn_policy_api::{
    lowest_scored, newest_first, params, Context, Decision, Declare, Needs, Observation, Policy, Result, Rows,
};

/// `h2o` (alias `heavy-hitter`): a recent window plus the heaviest hitters.
#[derive(Debug)]
pub struct H2o {
    recent: usize,
    /// Accumulated attention per slot; reset when a slot is rewritten.
    scores: Vec<f64>,
}

impl H2o {
    /// `recent` is the number of newest entries always kept.
    pub fn new(recent: usize) -> Self {
        Self { recent, scores: Vec::new() }
    }
}

params! {
    /// `h2o`'s parameters.
    pub struct H2oParams {
        recent: f64 = 0.5, range 0.0..=1.0, "fraction of C kept as a recency window (rounded down)";
    }
}

impl Declare for H2o {
    const NAME: &'static str = "h2o";
    const ALIASES: &'static [&'static str] = &["heavy-hitter"];
    const DESCRIPTION: &'static str =
        "Keeps a recent window plus the tokens with the most accumulated attention (H2O).";
    type Params = H2oParams;

    fn create(p: H2oParams, ctx: &Context) -> Result<Self> {
        Ok(H2o::new(ctx.capacity.map_or(0, |c| (p.recent * c as f64).floor() as usize)))
    }
}

impl Policy for H2o {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn needs(&self) -> Needs {
        Needs { rows: Rows::All, every_step: true, ..Needs::default() }
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        if self.scores.len() < obs.num_slots {
            self.scores.resize(obs.num_slots, 0.0);
        }
        for &s in obs.new_slots {
            self.scores[s] = 0.0;
        }
        for row in 0..obs.rows {
            obs.add_head_mean(row, &mut self.scores[..obs.num_slots]);
        }
        let k = obs.excess(budget);
        if k == 0 {
            return Ok(Decision::Keep);
        }
        let recent: Vec<usize> = newest_first(obs).into_iter().take(self.recent).collect();
        Ok(Decision::Evict(lowest_scored(obs, &self.scores, |s| recent.contains(&s), k)))
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

msrnn_core::builtin_policy!(H2o);
