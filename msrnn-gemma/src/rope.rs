//! Rotary position embeddings at absolute positions, NeoX (half-split) layout: Gemma's GGUF
//! converter does not permute the Q/K rows, so dims `i` and `i + d/2` rotate together.
//!
//! Angles are computed per chunk from the absolute positions (f64, then cast): no table to outgrow,
//! so a bounded policy can run past the trained context without a panic.

use candle_core::{Device, Tensor};

#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f64>,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let inv_freq = (0..head_dim / 2).map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)).collect();
        Self { inv_freq }
    }

    /// `cos`, `sin` of shape `[t, head_dim/2]` (f32) for the given absolute positions.
    pub fn cos_sin(&self, positions: &[u64], device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let t = positions.len();
        Ok((Tensor::from_vec(cos, (t, half), device)?, Tensor::from_vec(sin, (t, half), device)?))
    }

    /// Rotates `x` (`[heads, t, head_dim]`, f32) with tables from [`Rope::cos_sin`].
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::rotary_emb::rope(&x.contiguous()?.unsqueeze(0)?, cos, sin)?.squeeze(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotating q and k at positions m and n leaves q.k depending on m - n only, and dims i and
    /// i + d/2 form the rotated pairs.
    #[test]
    fn half_split_rotation_is_relative() {
        let rope = Rope::new(8, 10_000.0);
        let q = Tensor::new(&[[[0.3f32, -1.0, 0.5, 2.0, 0.1, 0.7, -0.2, 1.1]]], &Device::Cpu).unwrap();
        let k = Tensor::new(&[[[1.0f32, 0.2, -0.4, 0.3, 0.9, -1.2, 0.6, 0.05]]], &Device::Cpu).unwrap();
        let rot = |x: &Tensor, p: u64| {
            let (c, s) = rope.cos_sin(&[p], &Device::Cpu).unwrap();
            Rope::apply(x, &c, &s).unwrap()
        };
        let dot = |m: u64, n: u64| (rot(&q, m) * rot(&k, n)).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((dot(7, 3) - dot(1_000_004, 1_000_000)).abs() < 1e-3);
        assert!((dot(7, 3) - dot(3, 7)).abs() > 1e-3, "rotation must matter");
        // Position 1, first pair (dims 0 and 4) rotates by exactly 1 radian.
        let y = rot(&q, 1).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (c, s) = (1f32.cos(), 1f32.sin());
        assert!((y[0] - (0.3 * c - 0.1 * s)).abs() < 1e-6 && (y[4] - (0.1 * c + 0.3 * s)).abs() < 1e-6, "{y:?}");
    }
}
