//! What most policies compute from an observation, written once: head-averaged attention, key
//! norms, "the k lowest scores", "newest first", and the host's check of a decision ([`validate`]).

use crate::error::{Error, Result};
use crate::types::{Decision, Observation};

impl Observation<'_> {
    /// Whether each KV head keeps its own tokens (per-slot slices are per entry, see [`Observation`]).
    pub fn per_head(&self) -> bool {
        self.head_capacity > 0
    }

    /// Number of live slots (entries of all KV heads in a per-head layer).
    pub fn live_count(&self) -> usize {
        self.live.iter().filter(|&&l| l).count()
    }

    /// Live slots (entries), in order.
    pub fn live_slots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.live.len()).filter(|&s| self.live[s])
    }

    /// The KV head an entry of a per-head layer belongs to (0 in a shared layer).
    pub fn head_of(&self, entry: usize) -> usize {
        if self.per_head() && self.num_slots > 0 {
            entry / self.num_slots
        } else {
            0
        }
    }

    /// The live entries of KV head `head` of a per-head layer, in order (every live slot of a
    /// shared layer).
    pub fn head_entries(&self, head: usize) -> Vec<usize> {
        if !self.per_head() {
            return self.live_slots().collect();
        }
        let n = self.num_slots;
        (head * n..((head + 1) * n).min(self.live.len())).filter(|&e| self.live[e]).collect()
    }

    /// Live entries of KV head `head` (a per-head layer; the whole layer otherwise).
    pub fn head_live_count(&self, head: usize) -> usize {
        if !self.per_head() {
            return self.live_count();
        }
        let n = self.num_slots;
        self.live.get(head * n..(head + 1) * n).map_or(0, |l| l.iter().filter(|&&x| x).count())
    }

    /// How many entries must go: `live - budget` (0 within budget); in a per-head layer
    /// `live - budget x kv_heads`, or more when a head holds more than `head_capacity`.
    pub fn excess(&self, budget: usize) -> usize {
        if !self.per_head() {
            return self.live_count().saturating_sub(budget);
        }
        let over: usize =
            (0..self.num_kv_heads).map(|h| self.head_live_count(h).saturating_sub(self.head_capacity)).sum();
        self.live_count().saturating_sub(budget.saturating_mul(self.num_kv_heads)).max(over)
    }

    /// Attention of query row `row` per entry of a per-head layer, averaged over the query heads
    /// that read the entry's KV head, in f64 (`[num_kv_heads, num_slots]`). In a shared layer, the
    /// same per KV head over the shared slots.
    pub fn kv_head_mean(&self, row: usize) -> Vec<f64> {
        let (n, kv) = (self.num_slots, self.num_kv_heads.max(1));
        let group = self.num_heads / kv;
        let mut out = vec![0f64; kv * n];
        if group == 0 {
            return out;
        }
        let inv = 1.0 / group as f64;
        let base = row * self.num_heads * n;
        for h in 0..self.num_heads {
            let acc = &mut out[(h / group) * n..][..n];
            for (a, &p) in acc.iter_mut().zip(&self.probs[base + h * n..base + (h + 1) * n]) {
                *a += p as f64 * inv;
            }
        }
        out
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
    lowest_among(obs, score, obs.live_slots().filter(|&s| !protected(s)).collect(), count)
}

/// [`lowest_scored`] over the candidates `cands` (live slots or entries, e.g. one KV head's).
pub fn lowest_among(obs: &Observation<'_>, score: &[f64], mut cands: Vec<usize>, count: usize) -> Vec<usize> {
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
/// [`Observation::excess`] of them (none within budget); in a per-head layer, no KV head left with
/// more than `head_capacity` entries. Returns the slots (entries) to evict.
pub fn validate(decision: Decision, obs: &Observation<'_>, budget: usize) -> Result<Vec<usize>> {
    let live = obs.live_count();
    let want = obs.excess(budget);
    let slots = match decision {
        Decision::Keep => Vec::new(),
        Decision::Evict(s) => s,
    };
    let what = if obs.per_head() { "entries" } else { "slots" };
    if slots.len() != want {
        let budget = if obs.per_head() {
            format!("a budget of {budget} per KV head and at most {} in one head", obs.head_capacity)
        } else {
            format!("a budget of {budget}")
        };
        return Err(Error::Decision(format!(
            "evicted {} {what}, but {live} are live with {budget}, so exactly {want} must go",
            slots.len()
        )));
    }
    let n = obs.live.len();
    let mut seen = vec![false; n];
    for &s in &slots {
        if s >= n {
            return Err(Error::Decision(format!("slot {s} is out of range (the layer has {n} {what})")));
        }
        if !obs.live[s] {
            return Err(Error::Decision(format!("slot {s} is not live")));
        }
        if std::mem::replace(&mut seen[s], true) {
            return Err(Error::Decision(format!("slot {s} is listed twice")));
        }
    }
    if obs.per_head() {
        for h in 0..obs.num_kv_heads {
            let gone = slots.iter().filter(|&&s| obs.head_of(s) == h).count();
            let left = obs.head_live_count(h) - gone;
            if left > obs.head_capacity {
                return Err(Error::Decision(format!(
                    "KV head {h} would keep {left} entries, more than the {} one head may keep",
                    obs.head_capacity
                )));
            }
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
            head_capacity: 0,
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

    #[test]
    fn per_head_layers_count_entries_per_head() {
        // 2 KV heads x 3 slots, 4 query heads (group of 2), head capacity 2, budget 2 per head.
        let pos = [0u64, 1, 2, 0, 1, 2];
        let live = [true, true, true, true, true, false];
        // query heads 0,1 read KV head 0; 2,3 read KV head 1.
        let probs = [0.2, 0.3, 0.5, 0.4, 0.3, 0.3, 0.6, 0.4, 0.0, 0.2, 0.8, 0.0];
        let o =
            Observation { num_heads: 4, num_kv_heads: 2, head_capacity: 2, num_slots: 3, ..obs(&pos, &live, &probs) };
        assert!(o.per_head());
        assert_eq!((o.head_of(4), o.head_live_count(0), o.head_live_count(1)), (1, 3, 2));
        // 5 live, budget 2 x 2 heads: 1 must go, and head 0 (3 > 2) must lose it.
        assert_eq!(o.excess(2), 1);
        let m = o.kv_head_mean(0);
        let want = [0.3, 0.3, 0.4, 0.4, 0.6, 0.0];
        assert!(m.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-7), "{m:?}");
        assert_eq!(validate(Decision::Evict(vec![1]), &o, 2).unwrap(), vec![1]);
        let e = validate(Decision::Evict(vec![3]), &o, 2).unwrap_err().to_string();
        assert!(e.contains("KV head 0 would keep 3 entries"), "{e}");
        let e = validate(Decision::Evict(vec![5]), &o, 2).unwrap_err().to_string();
        assert!(e.contains("not live"), "{e}");
        let e = validate(Decision::Evict(vec![6]), &o, 2).unwrap_err().to_string();
        assert!(e.contains("out of range (the layer has 6 entries)"), "{e}");
        // An uneven split within budget: head capacity 3 lets head 0 keep all three.
        let wide = Observation { head_capacity: 3, ..o };
        assert_eq!(wide.excess(2), 1);
        assert_eq!(validate(Decision::Evict(vec![3]), &wide, 2).unwrap(), vec![3]);
        assert_eq!(lowest_scored(&wide, &m, |_| false, 1), vec![0], "0.3 at position 0 is the lowest, older first");
    }
}
