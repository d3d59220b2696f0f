//! `hybrid`, the screening policy behind `h2o-ema` (registered by this example only, not a
//! built-in): tova-ema's smoothed scores, `s <- d*s + (1-d)*a` with `d = 1 - rate/C`, plus knobs
//! measured in docs/policies.md: a protected recent window (`recent`, a fraction of C), `sinks`
//! first positions, a share `mix` of the newest row's attention added to the score, the maximum
//! over heads of per-head averages (`headmax`) instead of the head average, and `heavy`, a fraction
//! of C kept by accumulated attention (H2O's heavy hitters). `hybrid:heavy=0.125` is `h2o-ema`
//! (up to ties among equal sums).

use msrnn_policy_api::{lowest_scored, newest_first, params, Context, Decision, Declare, Needs, Observation};
use msrnn_policy_api::{Policy, Result, Rows};

use msrnn_policies::ema_update;

/// The screening policy.
#[derive(Debug)]
pub struct Hybrid {
    decay: f64,
    recent: usize,
    sinks: u64,
    mix: f64,
    heavy: usize,
    headmax: bool,
    scores: Vec<f64>,
    /// per head EMA [heads][slots] when headmax
    per_head: Vec<Vec<f64>>,
    sums: Vec<f64>,
}

params! {
    /// `hybrid`'s parameters.
    pub struct HybridParams {
        rate: f64 = 8.0 => "8", "d = 1 - rate/C";
        recent: f64 = 0.0 => "0", range 0.0..=1.0, "fraction of C kept as the newest";
        sinks: u64 = 0, "first positions kept";
        mix: f64 = 0.0 => "0", "weight of the newest row added to the score";
        heavy: f64 = 0.0 => "0", "fraction of C kept by cumulative attention";
        headmax: bool = false, "max over heads of per-head EMAs";
    }
}

impl Declare for Hybrid {
    const NAME: &'static str = "hybrid";
    const DESCRIPTION: &'static str = "Research: smoothed TOVA with a recent window and sinks.";
    type Params = HybridParams;

    fn create(p: HybridParams, ctx: &Context) -> Result<Self> {
        let c = ctx.capacity.unwrap_or(usize::MAX);
        let decay = ctx.capacity.map_or(0.99, |c| (1.0 - p.rate / c as f64).clamp(0.0, 0.999_999));
        let share = |f: f64| ctx.capacity.map_or(0, |c| (f * c as f64).floor() as usize);
        Ok(Hybrid {
            decay,
            recent: share(p.recent).min(c),
            sinks: p.sinks,
            mix: p.mix,
            heavy: share(p.heavy),
            headmax: p.headmax,
            scores: Vec::new(),
            per_head: Vec::new(),
            sums: Vec::new(),
        })
    }
}

impl Policy for Hybrid {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn needs(&self) -> Needs {
        Needs { rows: Rows::All, every_step: true, ..Needs::default() }
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        let n = obs.num_slots;
        if self.heavy > 0 {
            if self.sums.len() < n {
                self.sums.resize(n, 0.0);
            }
            for &s in obs.new_slots {
                self.sums[s] = 0.0;
            }
            for r in 0..obs.rows {
                obs.add_head_mean(r, &mut self.sums[..n]);
            }
        }
        if self.headmax {
            self.per_head.resize(obs.num_heads, Vec::new());
            for h in 0..obs.num_heads {
                let probs: Vec<f32> =
                    (0..obs.rows).flat_map(|r| obs.probs[(r * obs.num_heads + h) * n..][..n].iter().copied()).collect();
                let one = Observation { num_heads: 1, probs: &probs, ..*obs };
                ema_update(&one, self.decay, &mut self.per_head[h]);
            }
        } else {
            ema_update(obs, self.decay, &mut self.scores);
        }
        let k = obs.excess(budget);
        if k == 0 {
            return Ok(Decision::Keep);
        }
        let mut score = if self.headmax {
            (0..n).map(|s| self.per_head.iter().map(|e| e[s]).fold(f64::NEG_INFINITY, f64::max)).collect()
        } else {
            self.scores[..n].to_vec()
        };
        if self.mix != 0.0 && obs.rows > 0 {
            let last = obs.head_mean(obs.rows - 1);
            score.iter_mut().zip(&last).for_each(|(s, a)| *s += self.mix * a);
        }
        let mut protected = vec![false; obs.num_slots];
        let newest = newest_first(obs);
        newest.iter().take(self.recent.min(budget)).for_each(|&s| protected[s] = true);
        if self.heavy > 0 {
            let mut old: Vec<usize> = obs.live_slots().filter(|&s| !protected[s]).collect();
            old.sort_by(|&a, &b| self.sums[b].total_cmp(&self.sums[a]));
            let room = budget - protected.iter().filter(|&&p| p).count();
            old.iter().take(self.heavy.min(room)).for_each(|&s| protected[s] = true);
        }
        let mut sinks = 0;
        for &s in newest.iter().rev() {
            if obs.positions[s] < self.sinks && sinks + self.recent.min(budget) < budget {
                protected[s] = true;
                sinks += 1;
            }
        }
        Ok(Decision::Evict(lowest_scored(obs, &score, |s| protected[s], k)))
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

msrnn_core::builtin_policy!(Hybrid);
