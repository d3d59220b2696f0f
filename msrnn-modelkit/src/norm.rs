//! RMS normalisation, the norm every family here uses.

use candle_core::Tensor;

use crate::error::Result;
use crate::weights::Weights;

/// RMS normalisation over the last dimension, times a learned scale (the weight as stored).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps: eps as f32 }
    }

    /// The norm whose weight is the tensor `name` (GGUF name) of `size` values.
    pub fn load(w: &Weights, name: &str, size: usize, eps: f64) -> Result<Self> {
        Ok(Self::new(w.dense(name, &[size])?, eps))
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }
}
