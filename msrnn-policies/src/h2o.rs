use msrnn_core::policy::{lowest_scored, newest_first};
use msrnn_core::{
    BuiltinPolicy, Capacity, Decision, Error, Needs, Observation, ParamInfo, Policy, PolicyContext, PolicySpec, Result,
    Rows,
};

/// `h2o` (Heavy-Hitter Oracle, Zhang et al. 2023): every entry accumulates, in f64, the
/// head-averaged attention it receives at every step while cached (the step it arrives included);
/// the `floor(recent * C)` newest entries are always kept and the rest of the budget goes to the
/// older entries with the highest accumulated score (ties keep the newer).
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

impl Policy for H2o {
    fn name(&self) -> &str {
        "h2o"
    }
    fn needs(&self) -> Needs {
        Needs { rows: Rows::All, key_norms: false, every_step: true }
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
        let k = crate::excess(obs, budget);
        if k == 0 {
            return Ok(Decision::Keep);
        }
        let recent: Vec<usize> = newest_first(obs).into_iter().take(self.recent).collect();
        let evict = lowest_scored(obs, &self.scores, |s| recent.contains(&s), k);
        Ok(Decision::Evict(evict))
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

fn create(spec: &PolicySpec, ctx: &PolicyContext) -> Result<Box<dyn Policy>> {
    let frac = spec.get_f64("recent", 0.5)?;
    if !(0.0..=1.0).contains(&frac) {
        return Err(Error::InvalidParam {
            policy: "h2o".into(),
            reason: format!("`recent` is a fraction of the capacity in [0, 1], got {frac}"),
        });
    }
    let recent = match ctx.capacity {
        Capacity::Bounded(c) => (frac * c as f64).floor() as usize,
        Capacity::Unbounded => 0,
    };
    Ok(Box::new(H2o::new(recent)))
}

msrnn_core::inventory::submit! {
    BuiltinPolicy {
        name: "h2o",
        aliases: &["heavy-hitter"],
        description: "Keeps a recent window plus the tokens with the most accumulated attention (H2O).",
        params: &[ParamInfo { name: "recent", default: "0.5", help: "fraction of C kept as a recency window (rounded down)" }],
        create,
    }
}
