//! `keydiff` keeps the keys least similar to the rest: per KV head, the anchor is the mean of the
//! live keys normalised to unit length, each entry's score is the cosine similarity of its key to
//! that anchor averaged over the KV heads, and the entries with the highest similarity are evicted
//! (ties evict the older). No attention is needed, so the policy asks for the keys and nothing else.
//! Park et al. 2025, "KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context LLM Inference
//! in Resource-Constrained Environments" (anchor `mean(k_i / |k_i|)`, score `-cos(anchor, k_i)`, keep
//! the top N); the paper evicts per head, msrnn's slots hold one token for all KV heads, hence
//! the average. Keys are compared as the state stores them (rotated at their absolute positions in
//! `absolute` mode, as in the paper's cache; unrotated in `cache` mode).

use msrnn_policy_api::{lowest_scored, Context, Decision, Declare, Needs, Observation, Policy, Result};

/// `keydiff`: evict the keys most similar to the layer's mean direction.
#[derive(Debug, Default)]
pub struct KeyDiff;

impl Declare for KeyDiff {
    const NAME: &'static str = "keydiff";
    const DESCRIPTION: &'static str = "Keeps the keys least similar (cosine) to the mean key direction (KeyDiff).";

    type Params = ();

    fn create(_: (), _: &Context) -> Result<Self> {
        Ok(KeyDiff)
    }
}

/// Per slot, the cosine similarity of its key to the anchor (mean unit key of the live slots),
/// averaged over KV heads; 0 for a zero key or a zero anchor.
pub fn anchor_similarity(obs: &Observation<'_>) -> Vec<f64> {
    let (n, d) = (obs.num_slots, obs.head_dim);
    let mut sim = vec![0f64; n];
    if obs.keys.len() < obs.num_kv_heads * n * d || d == 0 {
        return sim;
    }
    let mut unit = vec![0f64; n * d];
    for g in 0..obs.num_kv_heads {
        let mut anchor = vec![0f64; d];
        for s in obs.live_slots() {
            let k = obs.key(g, s);
            let norm = k.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            let u = &mut unit[s * d..(s + 1) * d];
            for ((u, &x), a) in u.iter_mut().zip(k).zip(anchor.iter_mut()) {
                *u = if norm > 0.0 { x as f64 / norm } else { 0.0 };
                *a += *u;
            }
        }
        let an = anchor.iter().map(|x| x * x).sum::<f64>().sqrt();
        if an == 0.0 {
            continue;
        }
        for s in obs.live_slots() {
            let dot: f64 = unit[s * d..(s + 1) * d].iter().zip(&anchor).map(|(u, a)| u * a).sum();
            sim[s] += dot / an / obs.num_kv_heads as f64;
        }
    }
    sim
}

impl Policy for KeyDiff {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn needs(&self) -> Needs {
        Needs { keys: true, ..Needs::default() }
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        // The lowest score goes: score = -similarity.
        let score: Vec<f64> = anchor_similarity(obs).into_iter().map(|x| -x).collect();
        Ok(Decision::Evict(lowest_scored(obs, &score, |_| false, obs.excess(budget))))
    }
}

msrnn_core::builtin_policy!(KeyDiff);
