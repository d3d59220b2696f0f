//! What most policies compute from an observation, written once: head-averaged attention, key
//! norms, "the k lowest scores", "newest first", and the host's check of a decision ([`validate`]).

use crate::error::{Error, Result};
use crate::types::{Decision, Observation};

impl Observation<'_> {
    /// Number of live slots.
    pub fn live_count(&self) -> usize {
        self.live.iter().filter(|&&l| l).count()
    }

    /// Live slots, in slot order.
    pub fn live_slots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.num_slots).filter(|&s| self.live[s])
    }

    /// `live - budget`: how many entries must go (0 within budget).
    pub fn excess(&self, budget: usize) -> usize {
        self.live_count().saturating_sub(budget)
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
            for (a, &p) in acc.iter_mut().zip(&self.probs[base + h * n..base + (h + 1) * n]) {
                *a += p as f64 * inv;
            }
        }
    }

    /// Key L2 norm of every slot averaged over KV heads, in f64 (empty when key norms were not
    /// asked for).
    pub fn mean_key_norms(&self) -> Vec<f64> {
        let n = self.num_slots;
        if self.num_kv_heads == 0 || self.key_norms.len() != n * self.num_kv_heads {
            return Vec::new();
        }
        let mut out = vec![0f64; n];
        for h in 0..self.num_kv_heads {
            for (a, &x) in out.iter_mut().zip(&self.key_norms[h * n..(h + 1) * n]) {
                *a += x as f64;
            }
        }
        out.iter_mut().for_each(|a| *a /= self.num_kv_heads as f64);
        out
    }

    /// The key of `slot` in KV head `kv_head` (`head_dim` values; empty when keys were not asked for).
    pub fn key(&self, kv_head: usize, slot: usize) -> &[f32] {
        let (n, d) = (self.num_slots, self.head_dim);
        let start = (kv_head * n + slot) * d;
        self.keys.get(start..start + d).unwrap_or(&[])
    }
}

/// The `count` live slots with the lowest `score`, excluding `protected` ones, lowest first; ties
/// evict the older entry (lower position), so ties keep the newer one. NaN counts as lowest, so a
/// broken score cannot shield an entry.
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

/// The host's check of a decision: every slot in range, live and listed once, and exactly
/// `live - budget` of them (none within budget). Returns the slots to evict.
pub fn validate(decision: Decision, obs: &Observation<'_>, budget: usize) -> Result<Vec<usize>> {
    let live = obs.live_count();
    let want = live.saturating_sub(budget);
    let slots = match decision {
        Decision::Keep => Vec::new(),
        Decision::Evict(s) => s,
    };
    if slots.len() != want {
        return Err(Error::Decision(format!(
            "evicted {} slots, but {live} are live with a budget of {budget}, so exactly {want} must go",
            slots.len()
        )));
    }
    let mut seen = vec![false; obs.num_slots];
    for &s in &slots {
        if s >= obs.num_slots {
            return Err(Error::Decision(format!("slot {s} is out of range (the layer has {} slots)", obs.num_slots)));
        }
        if !obs.live[s] {
            return Err(Error::Decision(format!("slot {s} is not live")));
        }
        if std::mem::replace(&mut seen[s], true) {
            return Err(Error::Decision(format!("slot {s} is listed twice")));
        }
    }
    Ok(slots)
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
            head_dim: 0,
            rows: 1,
            probs,
            key_norms: &[],
            keys: &[],
        }
    }

    #[test]
    fn validate_rejects_each_kind_of_bad_decision() {
        let pos = [0, 1, 2, 3];
        let live = [true, true, false, true];
        let o = obs(&pos, &live, &[0.25; 4]);
        assert_eq!(validate(Decision::Evict(vec![3]), &o, 2).unwrap(), vec![3]);
        for (d, needle) in [
            (Decision::Keep, "exactly 1"),
            (Decision::Evict(vec![0, 1]), "exactly 1"),
            (Decision::Evict(vec![9]), "out of range"),
            (Decision::Evict(vec![2]), "not live"),
        ] {
            let e = validate(d, &o, 2).unwrap_err();
            assert!(matches!(e, Error::Decision(_)) && e.to_string().contains(needle), "{e}");
        }
        let e = validate(Decision::Evict(vec![1, 1]), &o, 1).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        assert!(validate(Decision::Keep, &o, 3).unwrap().is_empty());
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
        assert_eq!(o.excess(2), 1);
        assert_eq!(o.excess(5), 0);
    }

    #[test]
    fn lowest_scored_is_ordered_lowest_first_and_nan_goes_first() {
        let pos = [0, 1, 2, 3, 4, 5];
        let live = [true, true, true, false, true, true];
        let o = obs(&pos, &live, &[0.0; 6]);
        let score = [3.0, f64::NAN, 1.0, -9.0, 1.0, 0.5];
        // slot 3 is dead; NaN first, then 0.5, then the tie at 1.0 in position order.
        assert_eq!(lowest_scored(&o, &score, |_| false, 4), vec![1, 5, 2, 4]);
        assert_eq!(lowest_scored(&o, &score, |_| false, 0), Vec::<usize>::new());
        assert_eq!(lowest_scored(&o, &score, |_| false, 99), vec![1, 5, 2, 4, 0]);
    }

    #[test]
    fn key_norms_and_keys_are_read_per_head_and_slot() {
        let pos = [3u64, 1, 2];
        let live = [true, false, true];
        let norms = [1.0f32, 9.0, 3.0, 3.0, 9.0, 5.0];
        // 2 KV heads x 3 slots x head_dim 2
        let keys: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let o =
            Observation { num_kv_heads: 2, head_dim: 2, key_norms: &norms, keys: &keys, ..obs(&pos, &live, &[0.0; 3]) };
        assert_eq!(o.mean_key_norms(), vec![2.0, 9.0, 4.0]);
        assert_eq!(o.key(0, 0), &[0.0, 1.0]);
        assert_eq!(o.key(1, 2), &[10.0, 11.0]);
        assert!(o.key(2, 0).is_empty());
        let bare = Observation { key_norms: &[], keys: &[], ..o };
        assert!(bare.mean_key_norms().is_empty() && bare.key(0, 0).is_empty());
    }
}
