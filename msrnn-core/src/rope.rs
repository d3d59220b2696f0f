//! Rotary position embeddings at absolute positions, in both layouts families use, with one
//! precision rule.
//!
//! The angles are computed per chunk from the chunk's absolute positions, so there is no table to
//! outgrow: a bounded policy can run far past the trained context without a panic, and the cost is
//! `t * head_dim/2` sines and cosines per forward, nothing next to the matmuls. It lives in the core
//! because the state owns positions.
//!
//! Precision follows the reference implementations (Hugging Face, candle-transformers, llama.cpp):
//! inverse frequencies in f32, the angle `position * inv_freq` rounded to f32, cosine and sine in
//! f32. The product is formed exactly in f64 and rounded once, which is bit-identical to their f32
//! product for every position below 2^24; LLaMA's logits then match candle's quantized LLaMA bit for
//! bit, which matters because a one-ulp change in an angle can flip the rounding of a quantized
//! activation and move logits visibly. From 2^24 on, where an f32 angle is off by radians, the angle
//! stays in f64 so that very long bounded runs keep meaningful positions.

use candle_core::{Device, Tensor};

/// How rotary position embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i+1)` (`candle_nn::rotary_emb::rope_i`): LLaMA GGUF files, whose Q/K rows the
    /// converter permuted to this layout.
    Interleaved,
    /// Pairs `(i, i + d/2)` (`candle_nn::rotary_emb::rope`, "NeoX"): Hugging Face checkpoints, and
    /// GGUF files whose converter does not permute (Gemma).
    HalfSplit,
}

/// The rotation of one kind of layer: head size, base and layout.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    style: RopeStyle,
}

/// Positions below this have exact f32 angles (see the module docs).
const EXACT_F32: u64 = 1 << 24;

impl Rope {
    pub fn new(head_dim: usize, theta: f64, style: RopeStyle) -> Self {
        let base = theta as f32;
        let inv_freq = (0..head_dim).step_by(2).map(|i| 1f32 / base.powf(i as f32 / head_dim as f32)).collect();
        Self { inv_freq, style }
    }

    pub fn style(&self) -> RopeStyle {
        self.style
    }

    /// The cosines and sines for one chunk's absolute positions.
    pub fn tables(&self, positions: &[u64], device: &Device) -> candle_core::Result<RopeTables> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
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
        Ok(RopeTables {
            cos: Tensor::from_vec(cos, (t, half), device)?,
            sin: Tensor::from_vec(sin, (t, half), device)?,
            style: self.style,
        })
    }
}

/// `cos` and `sin` of shape `[t, head_dim/2]` (f32) for one chunk, from [`Rope::tables`].
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
}

impl RopeTables {
    /// Rotates `x` (`[heads, t, head_dim]`, f32), token `i` by the angles of the `i`-th position.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?.unsqueeze(0)?;
        let y = match self.style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, &self.cos, &self.sin)?,
            RopeStyle::HalfSplit => candle_nn::rotary_emb::rope(&x, &self.cos, &self.sin)?,
        };
        y.squeeze(0)
    }

    pub fn cos(&self) -> &Tensor {
        &self.cos
    }

    pub fn sin(&self) -> &Tensor {
        &self.sin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotate(rope: &Rope, x: &Tensor, p: u64) -> Tensor {
        rope.tables(&[p], &Device::Cpu).unwrap().apply(x).unwrap()
    }

    /// Rotating q and k at positions m and n leaves q.k depending on m - n only.
    #[test]
    fn dot_product_depends_on_relative_position_only() {
        for style in [RopeStyle::Interleaved, RopeStyle::HalfSplit] {
            let rope = Rope::new(8, 10_000.0, style);
            let q = Tensor::new(&[[[0.3f32, -1.0, 0.5, 2.0, 0.1, 0.7, -0.2, 1.1]]], &Device::Cpu).unwrap();
            let k = Tensor::new(&[[[1.0f32, 0.2, -0.4, 0.3, 0.9, -1.2, 0.6, 0.05]]], &Device::Cpu).unwrap();
            let dot = |m: u64, n: u64| {
                let (qm, kn) = (rotate(&rope, &q, m), rotate(&rope, &k, n));
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

    /// Half-split: dims i and i + d/2 form the rotated pairs; at position 1 the first pair turns by
    /// exactly 1 radian.
    #[test]
    fn half_split_pairs_dims_half_a_head_apart() {
        let rope = Rope::new(8, 10_000.0, RopeStyle::HalfSplit);
        let q = Tensor::new(&[[[0.3f32, -1.0, 0.5, 2.0, 0.1, 0.7, -0.2, 1.1]]], &Device::Cpu).unwrap();
        let y = rotate(&rope, &q, 1).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (c, s) = (1f32.cos(), 1f32.sin());
        assert!((y[0] - (0.3 * c - 0.1 * s)).abs() < 1e-6 && (y[4] - (0.1 * c + 0.3 * s)).abs() < 1e-6, "{y:?}");
    }

    /// The two styles agree once the head dims are permuted between the layouts (what the LLaMA
    /// GGUF converter does to Q and K rows).
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
        let yh = rotate(&h, &Tensor::from_vec(x, (1, 1, d), &Device::Cpu).unwrap(), 11);
        let yi = rotate(&it, &Tensor::from_vec(xi, (1, 1, d), &Device::Cpu).unwrap(), 11);
        let yh = yh.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let yi = yi.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in 0..d / 2 {
            assert!((yh[i] - yi[2 * i]).abs() < 1e-6 && (yh[i + d / 2] - yi[2 * i + 1]).abs() < 1e-6);
        }
    }
}
