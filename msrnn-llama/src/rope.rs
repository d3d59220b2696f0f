//! Rotary position embeddings at absolute positions.
//!
//! The angles are computed per chunk from the chunk's absolute positions, so there is no table to
//! outgrow: a bounded policy can run far past the trained context without a panic, and the cost is
//! `t * head_dim/2` sines and cosines per forward, nothing next to the matmuls.
//!
//! Precision follows the reference implementations (Hugging Face, candle-transformers): inverse
//! frequencies in f32, the angle `position * inv_freq` rounded to f32, cosine and sine in f32. The
//! product is formed exactly in f64 and rounded once, which is bit-identical to their f32 product
//! for every position below 2^24; the logits then match candle's quantized LLaMA bit for bit, which
//! matters because a one-ulp change in an angle can flip the rounding of a quantized activation
//! and move logits visibly. From 2^24 on, where an f32 angle is off by radians, the angle stays in
//! f64 so that very long bounded runs keep meaningful positions.

use candle_core::{Device, Tensor};

use crate::config::RopeStyle;

#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    style: RopeStyle,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64, style: RopeStyle) -> Self {
        let base = theta as f32;
        let inv_freq = (0..head_dim).step_by(2).map(|i| 1f32 / base.powf(i as f32 / head_dim as f32)).collect();
        Self { inv_freq, style }
    }

    pub fn style(&self) -> RopeStyle {
        self.style
    }

    /// `cos`, `sin` of shape `[t, head_dim/2]` (f32) for the given absolute positions.
    pub fn cos_sin(&self, positions: &[u64], device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        const EXACT_F32: u64 = 1 << 24;
        for &p in positions {
            for &f in &self.inv_freq {
                let a = p as f64 * f as f64;
                if p < EXACT_F32 {
                    let a = a as f32;
                    cos.push(a.cos());
                    sin.push(a.sin());
                } else {
                    cos.push(a.cos() as f32);
                    sin.push(a.sin() as f32);
                }
            }
        }
        let t = positions.len();
        Ok((Tensor::from_vec(cos, (t, half), device)?, Tensor::from_vec(sin, (t, half), device)?))
    }

    /// Rotates `x` (`[heads, t, head_dim]`, f32) with the tables from [`Rope::cos_sin`].
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?.unsqueeze(0)?;
        let y = match self.style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin)?,
            RopeStyle::HalfSplit => candle_nn::rotary_emb::rope(&x, cos, sin)?,
        };
        y.squeeze(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotating q and k at positions m and n leaves q.k depending on m - n only.
    #[test]
    fn dot_product_depends_on_relative_position_only() {
        for style in [RopeStyle::Interleaved, RopeStyle::HalfSplit] {
            let rope = Rope::new(8, 10_000.0, style);
            let q = Tensor::new(&[[[0.3f32, -1.0, 0.5, 2.0, 0.1, 0.7, -0.2, 1.1]]], &Device::Cpu).unwrap();
            let k = Tensor::new(&[[[1.0f32, 0.2, -0.4, 0.3, 0.9, -1.2, 0.6, 0.05]]], &Device::Cpu).unwrap();
            let dot = |m: u64, n: u64| {
                let (c, s) = rope.cos_sin(&[m], &Device::Cpu).unwrap();
                let qm = rope.apply(&q, &c, &s).unwrap();
                let (c, s) = rope.cos_sin(&[n], &Device::Cpu).unwrap();
                let kn = rope.apply(&k, &c, &s).unwrap();
                (qm * kn).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
            };
            let a = dot(7, 3);
            // Within the trained range the f32 angles are accurate to ~1e-4 rad ...
            let b = dot(8_004, 8_000);
            assert!((a - b).abs() < 5e-3, "{style:?}: {a} vs {b}");
            // ... and past 2^24 the f64 angles keep positions meaningful (f32 would be off by radians).
            let far = (1u64 << 24) + 123_456_789;
            let c = dot(far + 4, far);
            assert!((a - c).abs() < 1e-3, "{style:?}: {a} vs {c}");
            assert!((dot(3, 3) - dot(0, 0)).abs() < 1e-4);
            assert!((dot(7, 3) - dot(3, 7)).abs() > 1e-3, "rotation must matter");
        }
    }

    /// The two styles agree once the head dims are permuted between the layouts (what the GGUF
    /// converter does to Q and K rows).
    #[test]
    fn styles_agree_up_to_permutation() {
        let d = 8;
        let x: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin()).collect();
        // half-split index i (< d/2) pairs with i + d/2; interleaved index 2i pairs with 2i+1.
        let mut xi = vec![0f32; d];
        for i in 0..d / 2 {
            xi[2 * i] = x[i];
            xi[2 * i + 1] = x[i + d / 2];
        }
        let h = Rope::new(d, 500.0, RopeStyle::HalfSplit);
        let it = Rope::new(d, 500.0, RopeStyle::Interleaved);
        let (c, s) = h.cos_sin(&[11], &Device::Cpu).unwrap();
        let yh = h.apply(&Tensor::from_vec(x, (1, 1, d), &Device::Cpu).unwrap(), &c, &s).unwrap();
        let yi = it.apply(&Tensor::from_vec(xi, (1, 1, d), &Device::Cpu).unwrap(), &c, &s).unwrap();
        let yh = yh.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let yi = yi.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in 0..d / 2 {
            assert!((yh[i] - yi[2 * i]).abs() < 1e-6 && (yh[i + d / 2] - yi[2 * i + 1]).abs() < 1e-6);
        }
    }
}
