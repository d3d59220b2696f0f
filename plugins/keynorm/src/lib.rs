//! `keynorm`: key-norm eviction as an msrnn policy plugin (a `cdylib` loaded at run time).
//!
//! After Devoto et al. 2024, "A Simple and Effective L2 Norm-Based Strategy for KV Cache
//! Compression": keys with a *low* L2 norm draw *high* attention, so the cache keeps the entries whose
//! keys have the smallest norm.
//!
//! The rule, exactly: whenever more than `budget` slots are live, evict the `live - budget` live
//! entries whose key L2 norm, averaged over the KV heads (the paper scores each head; msrnn decides per
//! token, so the heads' norms are averaged), is the **largest**. Ties evict the older entry (lower
//! absolute position), so ties keep the newer one; a NaN norm counts as the largest. Nothing is
//! protected: the token just written competes like any other, as in the paper (and as in TOVA), and
//! no layer is exempt (the paper leaves the first layers uncompressed, which a per-layer capacity C
//! does not allow). Needs: key norms only; called only when over budget.
//!
//! `per_head=true` applies the paper's rule as the paper states it, per KV head: the layer becomes
//! per-head (each KV head keeps its own C entries, [`Policy::head_capacity`]) and each head evicts
//! its own entries whose key norm in that head is the largest (ties to the newer, NaN first).
//!
//! Build: `cargo build --release -p msrnn-plugin-keynorm` -> `target/release/libmsrnn_keynorm.so`;
//! use: `msrnn ppl --plugin target/release/libmsrnn_keynorm.so --policies keynorm ...`.

use msrnn_policy_api::{
    export_policy, lowest_scored, params, Context, Decision, Declare, Error, Needs, Observation, Policy, Result,
};

pub struct KeyNorm {
    /// Per-head: the head capacity (the run's C); `None` decides for all KV heads at once.
    per_head: Option<usize>,
}

params! {
    /// `keynorm`'s parameters.
    pub struct KeyNormParams {
        per_head: bool = false, "decide per KV head (each head keeps its own C tokens), as the paper scores";
    }
}

impl Declare for KeyNorm {
    const NAME: &'static str = "keynorm";
    const DESCRIPTION: &'static str =
        "keep the entries whose keys have the smallest L2 norm, averaged over KV heads (Devoto et al. 2024)";

    type Params = KeyNormParams;

    fn create(KeyNormParams { per_head }: KeyNormParams, ctx: &Context) -> Result<Self> {
        let per_head = match (per_head, ctx.capacity) {
            (false, _) => None,
            (true, Some(c)) => Some(c),
            (true, None) => return Err(Error::Param("per_head=true needs a capacity".into())),
        };
        Ok(KeyNorm { per_head })
    }
}

impl Policy for KeyNorm {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn needs(&self) -> Needs {
        Needs { key_norms: true, ..Needs::default() }
    }

    fn head_capacity(&self) -> Option<usize> {
        self.per_head
    }

    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        if obs.per_head() {
            return per_head(obs, budget);
        }
        let live = obs.live_count();
        if live <= budget {
            return Ok(Decision::Keep);
        }
        let norms = obs.mean_key_norms();
        if norms.is_empty() {
            return Err(Error::Failed(format!(
                "the observation has no key norms ({} values for {} KV heads x {} slots)",
                obs.key_norms.len(),
                obs.num_kv_heads,
                obs.num_slots
            )));
        }
        // Lowest score goes first: score = -norm, so the largest norm goes first; NaN stays NaN,
        // which `lowest_scored` evicts first; ties evict the lower position.
        let score: Vec<f64> = norms.iter().map(|n| -n).collect();
        Ok(Decision::Evict(lowest_scored(obs, &score, |_| false, live - budget)))
    }
}

/// Per KV head: the head's `live - budget` entries of largest norm (entries `head * n + slot`,
/// whose norm is `key_norms[head * n + slot]`).
fn per_head(obs: &Observation<'_>, budget: usize) -> Result<Decision> {
    if obs.key_norms.len() != obs.live.len() {
        return Err(Error::Failed(format!(
            "the observation has {} key norms for {} entries",
            obs.key_norms.len(),
            obs.live.len()
        )));
    }
    let score: Vec<f64> = obs.key_norms.iter().map(|&n| -(n as f64)).collect();
    let mut out = Vec::new();
    for h in 0..obs.num_kv_heads {
        let excess = obs.head_live_count(h).saturating_sub(budget);
        out.extend(lowest_scored(obs, &score, |e| obs.head_of(e) != h, excess));
    }
    Ok(Decision::Evict(out))
}

export_policy!(KeyNorm);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_largest_mean_norm_ties_keep_newer() {
        // 2 KV heads, 6 slots; slot 5 is dead (its huge norm must not matter).
        // means: [2, 3, 2, 3, 4, 100]; positions make slot 3 older than slot 1.
        let norms = [1.0f32, 5.0, 2.0, 5.0, 3.0, 100.0, 3.0, 1.0, 2.0, 1.0, 5.0, 100.0];
        let positions = [0u64, 7, 2, 4, 5, 6];
        let live = [true, true, true, true, true, false];
        let o = Observation {
            layer: 0,
            tokens_seen: 8,
            num_slots: 6,
            positions: &positions,
            live: &live,
            new_slots: &[1],
            num_heads: 2,
            num_kv_heads: 2,
            head_dim: 0,
            rows: 0,
            probs: &[],
            key_norms: &norms,
            keys: &[],
            head_capacity: 0,
        };
        let mut p = KeyNorm { per_head: None };
        // over by 2: slot 4 (mean 4) then the tie at 3 between slot 1 (pos 7) and slot 3 (pos 4): the
        // older, slot 3, goes.
        assert_eq!(p.step(&o, 3).unwrap(), Decision::Evict(vec![4, 3]));
        assert_eq!(p.step(&o, 5).unwrap(), Decision::Keep);
        let bare = Observation { key_norms: &[], ..o };
        assert!(p.step(&bare, 3).unwrap_err().to_string().contains("no key norms"));
    }

    #[test]
    fn per_head_evicts_each_heads_largest_norms() {
        // 2 KV heads x 3 slots, positions 0..3 in both; norms [1, 5, 2 | 3, 1, 5].
        let norms = [1.0f32, 5.0, 2.0, 3.0, 1.0, 5.0];
        let positions = [0u64, 1, 2, 0, 1, 2];
        let live = [true; 6];
        let ctx = Context { layer: 0, num_layers: 1, num_heads: 2, num_kv_heads: 2, head_dim: 0, capacity: Some(2) };
        let mut p = KeyNorm::create(KeyNormParams { per_head: true }, &ctx).unwrap();
        assert_eq!(p.head_capacity(), Some(2));
        let o = Observation {
            layer: 0,
            tokens_seen: 3,
            num_slots: 3,
            positions: &positions,
            live: &live,
            new_slots: &[2, 5],
            num_heads: 2,
            num_kv_heads: 2,
            head_dim: 0,
            rows: 0,
            probs: &[],
            key_norms: &norms,
            keys: &[],
            head_capacity: 2,
        };
        assert_eq!(p.step(&o, 2).unwrap(), Decision::Evict(vec![1, 5]));
        assert_eq!(p.step(&o, 1).unwrap(), Decision::Evict(vec![1, 2, 5, 3]));
        let unbounded = Context { capacity: None, ..ctx };
        assert!(KeyNorm::create(KeyNormParams { per_head: true }, &unbounded).is_err());
    }
}
