//! `h2o-ema` is H2O with smoothed TOVA in place of its recent window: every entry keeps both the
//! attention it has accumulated while cached (H2O's sum, head-averaged, its arrival step included)
//! and tova-ema's moving average of it (`s <- d*s + (1-d)*a`, starting at its own attention, default
//! `d = 1 - 8/C`). The `floor(heavy * C)` entries (default C/8) with the largest sums (the heavy hitters) are
//! kept; the rest of the budget goes to the highest moving averages, the newest token a candidate
//! too; ties keep the newer entry. H2O's sum remembers what mattered since the start of the
//! stream, the moving average follows what matters now, which a fixed window of the newest tokens
//! only approximates. With `diverse > 0`, `floor(diverse * C)` of the entries that are not heavy
//! hitters are kept for their keys instead: those least similar to the layer's mean key (keydiff's
//! score), which keeps rare tokens that attention has not needed yet (a number to recall later). Zhang et al. 2023 (H2O) and Oren et al. 2024 (TOVA), combined for msrnn
//! (issue #15; the measurements behind it are in docs/policies.md).
//!
//! In a chunk every query row is one step for both statistics (one decay per token).

use msrnn_policy_api::{lowest_scored, params, Context, Decision, Declare, Error, Needs, Observation, Policy};
use msrnn_policy_api::{Result, Rows};

use crate::keydiff::anchor_similarity;
use crate::tova_ema::{ema_update, TovaEma};

/// `h2o-ema`: heavy hitters by accumulated attention, the rest by smoothed attention.
#[derive(Debug)]
pub struct H2oEma {
    /// Entries kept by accumulated attention.
    heavy: usize,
    /// Entries kept for the most distinct keys.
    diverse: usize,
    decay: f64,
    /// Accumulated attention per slot (H2O's score).
    sums: Vec<f64>,
    /// Moving average per slot (tova-ema's score).
    ema: Vec<f64>,
}

impl H2oEma {
    /// `heavy` entries kept by accumulated attention, the moving average's `decay` in `[0, 1)`.
    pub fn new(heavy: usize, decay: f64) -> Self {
        Self { heavy, diverse: 0, decay, sums: Vec::new(), ema: Vec::new() }
    }

    /// Also keeps `diverse` entries for the keys least similar to the layer's mean key.
    pub fn with_diverse(mut self, diverse: usize) -> Self {
        self.diverse = diverse;
        self
    }
}

params! {
    /// `h2o-ema`'s parameters.
    pub struct H2oEmaParams {
        heavy: f64 = 0.125, range 0.0..=1.0, "fraction of C kept by accumulated attention (rounded down)";
        decay: Option<f64> = None => "1-8/C", range 0.0..1.0,
            "weight of the past in the moving average s <- d*s + (1-d)*a";
        diverse: f64 = 0.0 => "0", range 0.0..=1.0, "fraction of C kept for the keys least similar to the mean key";
    }
}

impl Declare for H2oEma {
    const NAME: &'static str = "h2o-ema";
    const DESCRIPTION: &'static str =
        "Keeps the heaviest accumulated-attention hitters plus the highest moving averages of attention.";
    type Params = H2oEmaParams;

    fn create(p: H2oEmaParams, ctx: &Context) -> Result<Self> {
        let decay = p.decay.unwrap_or_else(|| TovaEma::default_decay(ctx.capacity));
        let share = |f: f64| ctx.capacity.map_or(0, |c| (f * c as f64).floor() as usize);
        Ok(H2oEma::new(share(p.heavy), decay).with_diverse(share(p.diverse)))
    }
}

impl Policy for H2oEma {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn needs(&self) -> Needs {
        Needs { rows: Rows::All, every_step: true, keys: self.diverse > 0, ..Needs::default() }
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        let n = obs.num_slots;
        if self.sums.len() < n {
            self.sums.resize(n, 0.0);
        }
        for &s in obs.new_slots {
            self.sums[s] = 0.0;
        }
        for row in 0..obs.rows {
            obs.add_head_mean(row, &mut self.sums[..n]);
        }
        ema_update(obs, self.decay, &mut self.ema);
        let k = obs.excess(budget);
        if k == 0 {
            return Ok(Decision::Keep);
        }
        // The heavy hitters are the live entries that would survive last by their sums.
        let live = obs.live_count();
        let heavy = self.heavy.min(budget);
        let mut kept = obs.live.to_vec();
        lowest_scored(obs, &self.sums, |_| false, live - heavy).iter().for_each(|&s| kept[s] = false);
        let diverse = self.diverse.min(budget - heavy);
        if diverse > 0 {
            // The most distinct keys among the rest: the lowest similarity to the mean key.
            let sim = anchor_similarity(obs);
            let hitter = kept.clone();
            lowest_scored(obs, &sim, |s| hitter[s], diverse).iter().for_each(|&s| kept[s] = true);
        }
        Ok(Decision::Evict(lowest_scored(obs, &self.ema, |s| kept[s], k)))
    }
    fn reset(&mut self) {
        self.sums.clear();
        self.ema.clear();
    }
    fn save_state(&self) -> Vec<f64> {
        // [sums..., emas...], both as long as the layer's slots when last stepped
        let mut out = self.sums.clone();
        out.extend(&self.ema);
        out
    }
    fn load_state(&mut self, data: &[f64]) -> Result<()> {
        if !data.len().is_multiple_of(2) {
            return Err(Error::State(format!("expected sums and averages of equal length, got {} values", data.len())));
        }
        let (sums, ema) = data.split_at(data.len() / 2);
        (self.sums, self.ema) = (sums.to_vec(), ema.to_vec());
        Ok(())
    }
}

msrnn_core::builtin_policy!(H2oEma);
