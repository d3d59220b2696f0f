use msrnn_core::generate::SplitMix64;
use msrnn_core::{BuiltinPolicy, Decision, Needs, Observation, ParamInfo, Policy, PolicyContext, PolicySpec, Result};

/// `random`: evicts uniformly random live entries (the newest included), from a generator seeded by
/// `seed` and the layer index — the floor any real policy must beat; the same seed gives the same
/// evictions.
#[derive(Debug)]
pub struct RandomPolicy {
    rng: SplitMix64,
    seed: u64,
}

impl RandomPolicy {
    pub fn new(seed: u64, layer: usize) -> Self {
        let seed = seed ^ (layer as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        Self { rng: SplitMix64::new(seed), seed }
    }
}

impl Policy for RandomPolicy {
    fn name(&self) -> &str {
        "random"
    }
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        let k = crate::excess(obs, budget);
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
            _ => Err(msrnn_core::Error::StateFile(format!("random: expected 2 values, got {}", data.len()))),
        }
    }
}

fn create(spec: &PolicySpec, ctx: &PolicyContext) -> Result<Box<dyn Policy>> {
    Ok(Box::new(RandomPolicy::new(spec.get_u64("seed", 0)?, ctx.layer)))
}

msrnn_core::inventory::submit! {
    BuiltinPolicy {
        name: "random",
        aliases: &[],
        description: "Evicts random tokens (seeded): the floor any real policy must beat.",
        params: &[ParamInfo { name: "seed", default: "0", help: "generator seed (mixed with the layer index)" }],
        create,
    }
}
