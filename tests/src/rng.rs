//! One seeded generator for every test that needs random data, so runs repeat on every platform.

use msrnn_policy_api::SplitMix64;

/// The workspace's SplitMix64 (the sampler's, the `random` policy's and the tasks' generator) with the draws tests
/// need: one generator in the workspace.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0.next_f64()
    }

    /// Uniform in [-1, 1).
    pub fn sym(&mut self) -> f32 {
        (self.unit() * 2.0 - 1.0) as f32
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit() as f32
    }

    /// `n` values uniform in [lo, hi).
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// Uniform in [0, n); `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A seeded Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranges_and_repeatability() {
        let (mut a, mut b) = (super::Rng::new(7), super::Rng::new(7));
        for _ in 0..1000 {
            let x = a.sym();
            assert!((-1.0..1.0).contains(&x));
            assert_eq!(x, b.sym());
            assert!(a.below(5) < 5 && b.below(5) < 5);
        }
        assert_ne!(super::Rng::new(1).next_u64(), super::Rng::new(2).next_u64());
    }
}
