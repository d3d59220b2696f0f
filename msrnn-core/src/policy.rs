//! The compression policy: what it sees ([`Observation`]), what it answers ([`Decision`]), and the
//! core's check of every answer ([`validate`]).
//!
//! A policy works in *slot* space: a layer's state is a buffer of slots, some live, each holding one
//! token's key and value at an absolute position. Slots are reused after eviction, so a policy that
//! keeps per-slot bookkeeping (H2O's accumulated scores) must restart it for the slots listed in
//! [`Observation::new_slots`]. Policies never see a tensor type: only plain `f32`/`u64` slices, so the
//! same contract crosses the plugin C ABI unchanged.

use crate::error::{Error, Result};

/// Which query rows' attention probabilities a policy wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rows {
    /// No probabilities (e.g. `window`): the core skips the device-to-host copy.
    #[default]
    None,
    /// Only the newest query's row (TOVA).
    Last,
    /// Every query row of the chunk, oldest first (H2O accumulates each one as a step).
    All,
}

/// What a policy asks the core to compute and hand over; the core computes nothing it is not asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    pub rows: Rows,
    /// L2 norm of every live key, per KV head (key-norm eviction).
    pub key_norms: bool,
    /// Call [`Policy::step`] even when the layer is within budget (H2O accumulates from the first token).
    /// Without it, the core calls the policy only when something must go.
    pub every_step: bool,
}

/// One layer's state as the policy sees it after the new tokens were written and attention ran.
///
/// All per-slot slices have length `num_slots`; entries of dead slots are meaningless
/// (probabilities there are 0).
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub layer: usize,
    /// Tokens seen by the state, the new ones included.
    pub tokens_seen: u64,
    pub num_slots: usize,
    /// Absolute position of the token in each slot.
    pub positions: &'a [u64],
    pub live: &'a [bool],
    /// Slots written in this step, in token order (the newest token's slot is last).
    pub new_slots: &'a [usize],
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Number of query rows in `probs` (0, 1, or the chunk length, per [`Needs::rows`]).
    pub rows: usize,
    /// Attention probabilities, row-major `[rows, num_heads, num_slots]`.
    pub probs: &'a [f32],
    /// Key L2 norms, `[num_kv_heads, num_slots]`; empty unless asked for.
    pub key_norms: &'a [f32],
}

impl Observation<'_> {
    /// Number of live slots.
    pub fn live_count(&self) -> usize {
        self.live.iter().filter(|&&l| l).count()
    }

    /// Live slots, in slot order.
    pub fn live_slots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.num_slots).filter(|&s| self.live[s])
    }

    /// Attention of query row `row` averaged over all query heads, per slot, in f64.
    pub fn head_mean(&self, row: usize) -> Vec<f64> {
        let mut out = vec![0f64; self.num_slots];
        self.add_head_mean(row, &mut out);
        out
    }

    /// Adds the head-averaged attention of `row` into `acc` (length `num_slots`).
    pub fn add_head_mean(&self, row: usize, acc: &mut [f64]) {
        let n = self.num_slots;
        let inv = 1.0 / self.num_heads as f64;
        let base = row * self.num_heads * n;
        for h in 0..self.num_heads {
            let r = &self.probs[base + h * n..base + (h + 1) * n];
            for (a, &p) in acc.iter_mut().zip(r) {
                *a += p as f64 * inv;
            }
        }
    }
}

/// A policy's answer for one layer and one step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Decision {
    /// Evict nothing (only valid when the layer is within budget).
    #[default]
    Keep,
    /// Evict exactly these slots, bringing the live count down to the budget.
    Evict(Vec<usize>),
}

/// A compression policy for one layer. The registry creates one instance per layer, so per-layer
/// bookkeeping lives in the instance.
pub trait Policy: Send {
    /// The registered name (used in errors and saved states).
    fn name(&self) -> &str;
    /// What this policy wants to see; asked once per step.
    fn needs(&self) -> Needs;
    /// Called after attention with `budget` = the layer's capacity. When more than `budget` slots are
    /// live it must evict exactly `live - budget` of them; otherwise it must answer [`Decision::Keep`].
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision>;
    /// Forget all bookkeeping (a new sequence starts).
    fn reset(&mut self) {}
    /// The policy's bookkeeping as numbers, so a saved state resumes exactly (H2O's scores, a
    /// generator's state). Stateless policies keep the default.
    fn save_state(&self) -> Vec<f64> {
        Vec::new()
    }
    /// Restores what [`Policy::save_state`] gave.
    fn load_state(&mut self, data: &[f64]) -> Result<()> {
        if data.is_empty() {
            Ok(())
        } else {
            Err(Error::StateFile(format!(
                "policy `{}` keeps no state but the file has {} values",
                self.name(),
                data.len()
            )))
        }
    }
}

/// Checks a decision against the observation: in range, live, no duplicates, exactly `live - budget`
/// slots (or none when within budget). Returns the slots to evict.
pub fn validate(decision: Decision, obs: &Observation<'_>, budget: usize, policy: &str) -> Result<Vec<usize>> {
    let live = obs.live_count();
    let want = live.saturating_sub(budget);
    let bad = |reason: String| Error::InvalidDecision { policy: policy.to_string(), layer: obs.layer, reason };
    let slots = match decision {
        Decision::Keep => Vec::new(),
        Decision::Evict(s) => s,
    };
    if slots.len() != want {
        return Err(bad(format!(
            "evicted {} slots, but {live} are live with a budget of {budget}, so exactly {want} must go",
            slots.len()
        )));
    }
    let mut seen = vec![false; obs.num_slots];
    for &s in &slots {
        if s >= obs.num_slots {
            return Err(bad(format!("slot {s} is out of range (the layer has {} slots)", obs.num_slots)));
        }
        if !obs.live[s] {
            return Err(bad(format!("slot {s} is not live")));
        }
        if std::mem::replace(&mut seen[s], true) {
            return Err(bad(format!("slot {s} is listed twice")));
        }
    }
    Ok(slots)
}

/// The `count` live slots with the lowest `score`, excluding `protected` ones; ties evict the older
/// entry (lower position), so ties keep the newer one. Sorting is total even with NaN scores
/// (NaN counts as lowest, so a broken score cannot shield an entry).
pub fn lowest_scored(
    obs: &Observation<'_>,
    score: &[f64],
    protected: impl Fn(usize) -> bool,
    count: usize,
) -> Vec<usize> {
    let mut cands: Vec<usize> = obs.live_slots().filter(|&s| !protected(s)).collect();
    let key = |s: usize| if score[s].is_nan() { f64::NEG_INFINITY } else { score[s] };
    let order = |a: &usize, b: &usize| key(*a).total_cmp(&key(*b)).then(obs.positions[*a].cmp(&obs.positions[*b]));
    // Decode evicts one entry per step: a linear selection, not a sort of the whole layer.
    if count < cands.len() {
        if count > 0 {
            cands.select_nth_unstable_by(count - 1, order);
        }
        cands.truncate(count);
    }
    cands.sort_by(order);
    cands
}

/// Live slots ordered newest first (by absolute position).
pub fn newest_first(obs: &Observation<'_>) -> Vec<usize> {
    let mut s: Vec<usize> = obs.live_slots().collect();
    s.sort_by(|&a, &b| obs.positions[b].cmp(&obs.positions[a]));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs<'a>(pos: &'a [u64], live: &'a [bool], probs: &'a [f32]) -> Observation<'a> {
        Observation {
            layer: 0,
            tokens_seen: 4,
            num_slots: pos.len(),
            positions: pos,
            live,
            new_slots: &[],
            num_heads: probs.len() / pos.len(),
            num_kv_heads: 1,
            rows: 1,
            probs,
            key_norms: &[],
        }
    }

    #[test]
    fn validate_rejects_each_kind_of_bad_decision() {
        let pos = [0, 1, 2, 3];
        let live = [true, true, false, true];
        let o = obs(&pos, &live, &[0.25; 4]);
        assert_eq!(validate(Decision::Evict(vec![3]), &o, 2, "p").unwrap(), vec![3]);
        for (d, needle) in [
            (Decision::Keep, "exactly 1"),
            (Decision::Evict(vec![0, 1]), "exactly 1"),
            (Decision::Evict(vec![9]), "out of range"),
            (Decision::Evict(vec![2]), "not live"),
        ] {
            let e = validate(d, &o, 2, "p").unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let e = validate(Decision::Evict(vec![1, 1]), &o, 1, "p").unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        assert!(validate(Decision::Keep, &o, 3, "p").unwrap().is_empty());
    }

    #[test]
    fn head_mean_and_ties_keep_newer() {
        // two heads, three slots: means are 0.3, 0.3, 0.4 -> slot 0 (older) evicted first on the tie.
        let pos = [5, 9, 7];
        let live = [true; 3];
        let probs = [0.2, 0.4, 0.4, 0.4, 0.2, 0.4];
        let o = obs(&pos, &live, &probs);
        let m = o.head_mean(0);
        assert!((m[0] - 0.3).abs() < 1e-7 && (m[1] - 0.3).abs() < 1e-7 && (m[2] - 0.4).abs() < 1e-7);
        assert_eq!(lowest_scored(&o, &m, |_| false, 1), vec![0]);
        assert_eq!(lowest_scored(&o, &m, |s| s == 0, 1), vec![1]);
        assert_eq!(newest_first(&o), vec![1, 2, 0]);
    }
}
