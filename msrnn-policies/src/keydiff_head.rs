//! `keydiff-head` is KeyDiff as its paper states it, per KV head (Park et al. 2025, "KeyDiff: Key
//! Similarity-Based KV Cache Eviction for Long-Context LLM Inference in Resource-Constrained
//! Environments"): each KV head's anchor is the mean of its own live keys normalised to unit
//! length, and each head evicts its entries whose keys are most similar (cosine) to its anchor,
//! keeping C (per-head slots, as `tova-head`). Query-agnostic: no attention is needed, only the
//! keys as stored (rotated at their positions in `absolute` mode). Ties evict the older entry.

use msrnn_policy_api::{Context, Decision, Declare, Needs, Observation, Policy, Result};

use crate::keydiff::anchor_cosines;
use crate::tova_head::{per_head_lowest, run_capacity};

/// `keydiff-head`: per KV head, evict the keys most similar to that head's mean key direction.
#[derive(Debug)]
pub struct KeyDiffHead {
    capacity: usize,
}

impl Declare for KeyDiffHead {
    const NAME: &'static str = "keydiff-head";
    const DESCRIPTION: &'static str =
        "KeyDiff per KV head: each head evicts the keys most similar to its own mean key direction.";

    type Params = ();

    fn create(_: (), ctx: &Context) -> Result<Self> {
        Ok(KeyDiffHead { capacity: run_capacity(Self::NAME, ctx)? })
    }
}

/// Per entry of a per-head observation, the cosine similarity of its key to its own head's anchor
/// (the mean unit key of the head's live entries); 0 for a zero key or a zero anchor.
pub fn head_anchor_similarity(obs: &Observation<'_>) -> Vec<f64> {
    let (n, d) = (obs.num_slots, obs.head_dim);
    let mut sim = vec![0f64; obs.live.len()];
    if obs.keys.len() < obs.num_kv_heads * n * d || d == 0 {
        return sim;
    }
    for h in 0..obs.num_kv_heads {
        let mine = obs.head_entries(h);
        if let Some(cos) = anchor_cosines(mine.iter().map(|&e| obs.key(h, e - h * n)), d) {
            for (&e, c) in mine.iter().zip(cos) {
                sim[e] = c;
            }
        }
    }
    sim
}

impl Policy for KeyDiffHead {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn needs(&self) -> Needs {
        Needs { keys: true, ..Needs::default() }
    }
    fn head_capacity(&self) -> Option<usize> {
        Some(self.capacity)
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        let score: Vec<f64> = head_anchor_similarity(obs).into_iter().map(|x| -x).collect();
        Ok(Decision::Evict(per_head_lowest(obs, &score, budget)))
    }
}

msrnn_core::builtin_policy!(KeyDiffHead);
