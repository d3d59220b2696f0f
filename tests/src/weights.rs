//! Random weights for tiny test models, and writing them as a GGUF file.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::rng::Rng;

/// A weight: row-major data and its `[rows, cols]` (or `[n]`) shape.
#[derive(Debug, Clone)]
pub struct W {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

impl W {
    /// A `[rows, cols]` matrix uniform in `[-scale, scale)`.
    pub fn random(rng: &mut Rng, rows: usize, cols: usize, scale: f32) -> Self {
        Self { data: (0..rows * cols).map(|_| rng.sym() * scale).collect(), shape: vec![rows, cols] }
    }

    /// A norm weight of `n` values uniform in `centre ± spread`.
    pub fn norm(rng: &mut Rng, n: usize, centre: f32, spread: f32) -> Self {
        Self { data: (0..n).map(|_| centre + spread * rng.sym()).collect(), shape: vec![n] }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        let c = self.shape[1];
        &self.data[r * c..(r + 1) * c]
    }

    pub fn tensor(&self) -> Tensor {
        Tensor::from_vec(self.data.clone(), self.shape.clone(), &Device::Cpu).unwrap()
    }

    /// As GGUF stores it: matrices in `dtype`, vectors (norms) in f32 as llama.cpp writes them.
    pub fn quantize(&self, dtype: GgmlDType) -> QTensor {
        let dtype = if self.shape.len() == 1 { GgmlDType::F32 } else { dtype };
        QTensor::quantize(&self.tensor(), dtype).unwrap()
    }

    /// Q/K rows from the Hugging Face layout to GGUF's interleaved one (what llama.cpp's LLaMA
    /// converter does): within each head, row 2i takes row i and row 2i+1 takes row i + d/2.
    pub fn permute_rows(&self, heads: usize, d: usize) -> W {
        let cols = self.shape[1];
        let mut data = vec![0f32; self.data.len()];
        for h in 0..heads {
            for i in 0..d / 2 {
                for (dst, src) in [(2 * i, i), (2 * i + 1, i + d / 2)] {
                    let (dr, sr) = (h * d + dst, h * d + src);
                    data[dr * cols..(dr + 1) * cols].copy_from_slice(&self.data[sr * cols..(sr + 1) * cols]);
                }
            }
        }
        W { data, shape: self.shape.clone() }
    }
}

/// The sizes of a tiny decoder, as every family's GGUF metadata states them (llama.cpp's
/// `{arch}.*` keys, which `msrnn_modelkit::DecoderConfig::from_gguf` reads).
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub context: usize,
    pub eps: f64,
    pub theta: f64,
}

/// The matrices of a LLaMA-like block by GGUF name, in the order [`Dims::random_block`] draws them.
pub const BLOCK_MATRICES: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

impl Dims {
    /// The `{arch}.*` hyper-parameters.
    pub fn gguf_metadata(&self, arch: &str) -> Vec<(String, Value)> {
        let u = |n: usize| Value::U32(n as u32);
        [
            ("block_count", u(self.layers)),
            ("context_length", u(self.context)),
            ("embedding_length", u(self.hidden)),
            ("feed_forward_length", u(self.ffn)),
            ("attention.head_count", u(self.heads)),
            ("attention.head_count_kv", u(self.kv_heads)),
            ("attention.key_length", u(self.head_dim)),
            ("attention.value_length", u(self.head_dim)),
            ("attention.layer_norm_rms_epsilon", Value::F32(self.eps as f32)),
            ("rope.freq_base", Value::F32(self.theta as f32)),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{arch}.{k}"), v))
        .collect()
    }

    /// One block's [`BLOCK_MATRICES`], in `[out, in]` layout, uniform in `±scales[i]`.
    pub fn random_block(&self, rng: &mut Rng, scales: [f32; 7]) -> Vec<(&'static str, W)> {
        let (h, f, q, kv) = (self.hidden, self.ffn, self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let shapes = [(q, h), (kv, h), (kv, h), (h, q), (f, h), (f, h), (h, f)];
        BLOCK_MATRICES.iter().zip(shapes).zip(scales).map(|((&n, (r, c)), s)| (n, W::random(rng, r, c, s))).collect()
    }
}

/// Writes a GGUF file with candle's writer.
pub fn write_gguf(path: &Path, metadata: &[(String, Value)], tensors: &[(String, QTensor)]) {
    let mut f = std::fs::File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md, &ts).unwrap();
}

/// `(key, value)` metadata entries, from string keys.
pub fn metadata<const N: usize>(entries: [(&str, Value); N]) -> Vec<(String, Value)> {
    entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Sets `key` in `md` (which must have it).
pub fn set(md: &mut [(String, Value)], key: &str, v: Value) {
    md.iter_mut().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no metadata key {key}")).1 = v;
}

/// Largest |a - b| over two logit matrices of the same shape.
pub fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0f32, f32::max)
}
