//! The one seeded generator of the workspace (SplitMix64; Steele, Lea, Flood 2014): tiny,
//! full-period, stable across platforms and crate versions, so a seed reproduces a sampled text,
//! a `random` policy's choices, a generated task or a test's data forever. Here, in the crate with
//! no dependencies, so policies, plugins, the core and the test helpers share it.

#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The internal state; `SplitMix64::new(g.state())` continues exactly where `g` is.
    pub fn state(&self) -> u64 {
        self.0
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::SplitMix64;

    #[test]
    fn the_published_sequence() {
        // SplitMix64 from seed 0 (the reference implementation's first outputs).
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(g.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        let mut h = SplitMix64::new(g.state());
        assert_eq!(h.next_u64(), g.next_u64());
        assert!((0.0..1.0).contains(&g.next_f64()));
    }
}
