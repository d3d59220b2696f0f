//! `random` evicts uniformly random live entries (the newest included) from a generator seeded by
//! `seed` and the layer index: the floor any real policy must beat; the same seed gives the same
//! evictions.

use msrnn_core::generate::SplitMix64;
use msrnn_policy_api::{params, Context, Decision, Declare, Error, Needs, Observation, Policy, Result};

/// `random`: seeded random evictions.
#[derive(Debug)]
pub struct Random {
    rng: SplitMix64,
    seed: u64,
}

impl Random {
    pub fn new(seed: u64, layer: usize) -> Self {
        let seed = seed ^ (layer as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        Self { rng: SplitMix64::new(seed), seed }
    }
}

params! {
    /// `random`'s parameters.
    pub struct RandomParams {
        seed: u64 = 0, "generator seed (mixed with the layer index)";
    }
}

impl Declare for Random {
    const NAME: &'static str = "random";
    const DESCRIPTION: &'static str = "Evicts random tokens (seeded): the floor any real policy must beat.";
    type Params = RandomParams;

    fn create(p: RandomParams, ctx: &Context) -> Result<Self> {
        Ok(Random::new(p.seed, ctx.layer))
    }
}

impl Policy for Random {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        let k = obs.excess(budget);
        // Candidates in position order, so the draw does not depend on where slots happen to sit.
        let mut c: Vec<usize> = obs.live_slots().collect();
        c.sort_by_key(|&s| obs.positions[s]);
        for i in 0..k {
            let j = i + (self.rng.next_u64() % (c.len() - i) as u64) as usize;
            c.swap(i, j);
        }
        c.truncate(k);
        Ok(Decision::Evict(c))
    }
    fn reset(&mut self) {
        self.rng = SplitMix64::new(self.seed);
    }
    fn save_state(&self) -> Vec<f64> {
        // Two exact 32-bit halves: f64 holds integers below 2^53 exactly.
        let s = self.rng.state();
        vec![(s >> 32) as f64, (s & 0xFFFF_FFFF) as f64]
    }
    fn load_state(&mut self, data: &[f64]) -> Result<()> {
        match data {
            [hi, lo] => {
                self.rng = SplitMix64::new(((*hi as u64) << 32) | (*lo as u64));
                Ok(())
            }
            _ => Err(Error::State(format!("expected 2 values, got {}", data.len()))),
        }
    }
}

msrnn_core::builtin_policy!(Random);
