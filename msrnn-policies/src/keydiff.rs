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

/// The cosine similarity of each of `keys` (`d` values each) to their anchor, the mean of the keys
/// scaled to unit length, in f64; 0 for a zero key, `None` for a zero anchor.
pub fn anchor_cosines<'a>(keys: impl Iterator<Item = &'a [f32]>, d: usize) -> Option<Vec<f64>> {
    let mut anchor = vec![0f64; d];
    let units: Vec<Vec<f64>> = keys
        .map(|k| {
            let norm = k.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            let u: Vec<f64> = k.iter().map(|&x| if norm > 0.0 { x as f64 / norm } else { 0.0 }).collect();
            anchor.iter_mut().zip(&u).for_each(|(a, x)| *a += x);
            u
        })
        .collect();
    let an = anchor.iter().map(|x| x * x).sum::<f64>().sqrt();
    (an != 0.0).then(|| units.iter().map(|u| u.iter().zip(&anchor).map(|(u, a)| u * a).sum::<f64>() / an).collect())
}

/// Per slot, the cosine similarity of its key to the anchor (mean unit key of the live slots),
/// averaged over KV heads; 0 for a zero key or a zero anchor.
pub fn anchor_similarity(obs: &Observation<'_>) -> Vec<f64> {
    let (n, d) = (obs.num_slots, obs.head_dim);
    let mut sim = vec![0f64; n];
    if obs.keys.len() < obs.num_kv_heads * n * d || d == 0 {
        return sim;
    }
    let live: Vec<usize> = obs.live_slots().collect();
    for g in 0..obs.num_kv_heads {
        let Some(cos) = anchor_cosines(live.iter().map(|&s| obs.key(g, s)), d) else { continue };
        for (&s, c) in live.iter().zip(cos) {
            sim[s] += c / obs.num_kv_heads as f64;
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
