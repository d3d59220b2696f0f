//! Blocks that many decoders share, loaded by GGUF name: the projections of grouped-query
//! attention around [`MsrnnState::attend`](msrnn_core::MsrnnState::attend), and the gated MLP.
//! What a family adds (norms on queries and keys, where the residuals go) stays in the family.

use candle_core::Tensor;
use candle_nn::Activation;

use crate::config::AttentionShape;
use crate::error::Result;
use crate::linear::Linear;
use crate::weights::{blk, Weights};

/// The four matrices of grouped-query self-attention (`attn_q`, `attn_k`, `attn_v`, `attn_output`
/// of a block) and the head layout the state's `attend` takes and returns. Query head `h` reads
/// KV head `h / (num_heads / num_kv_heads)`.
#[derive(Debug, Clone)]
pub struct AttentionProjections {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    shape: AttentionShape,
}

impl AttentionProjections {
    pub fn load(w: &Weights, layer: usize, shape: AttentionShape) -> Result<Self> {
        let AttentionShape { hidden_size: hid, num_heads: h, num_kv_heads: kvh, head_dim: d } = shape;
        Ok(Self {
            q: w.linear(&blk(layer, "attn_q"), h * d, hid)?,
            k: w.linear(&blk(layer, "attn_k"), kvh * d, hid)?,
            v: w.linear(&blk(layer, "attn_v"), kvh * d, hid)?,
            o: w.linear(&blk(layer, "attn_output"), hid, h * d)?,
            shape,
        })
    }

    pub fn shape(&self) -> AttentionShape {
        self.shape
    }

    /// How the matrices are held (the query's stands for all four).
    pub fn kind(&self) -> String {
        self.q.kind()
    }

    /// `x` `[t, hidden]` -> queries `[num_heads, t, head_dim]`, keys and values
    /// `[num_kv_heads, t, head_dim]`, not yet rotated.
    pub fn project(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (t, d) = (x.dim(0)?, self.shape.head_dim);
        let heads = |y: Tensor, n: usize| y.reshape((t, n, d))?.transpose(0, 1)?.contiguous();
        let q = heads(self.q.forward(x)?, self.shape.num_heads)?;
        let k = heads(self.k.forward(x)?, self.shape.num_kv_heads)?;
        let v = heads(self.v.forward(x)?, self.shape.num_kv_heads)?;
        Ok((q, k, v))
    }

    /// The attention result `[num_heads, t, head_dim]` -> `[t, hidden]`.
    pub fn output(&self, y: &Tensor) -> candle_core::Result<Tensor> {
        let t = y.dim(1)?;
        let y = y.transpose(0, 1)?.reshape((t, self.shape.num_heads * self.shape.head_dim))?;
        self.o.forward(&y)
    }
}

/// Gated feed-forward, `down(act(gate(x)) * up(x))` (`ffn_gate`, `ffn_up`, `ffn_down` of a
/// block): SwiGLU with [`Activation::Silu`] (LLaMA), GeGLU with [`Activation::GeluPytorchTanh`]
/// (Gemma).
#[derive(Debug, Clone)]
pub struct GatedMlp {
    gate: Linear,
    up: Linear,
    down: Linear,
    act: Activation,
}

impl GatedMlp {
    pub fn load(w: &Weights, layer: usize, hidden: usize, ffn: usize, act: Activation) -> Result<Self> {
        Ok(Self {
            gate: w.linear(&blk(layer, "ffn_gate"), ffn, hidden)?,
            up: w.linear(&blk(layer, "ffn_up"), ffn, hidden)?,
            down: w.linear(&blk(layer, "ffn_down"), hidden, ffn)?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let g = self.gate.forward(x)?.apply(&self.act)?;
        self.down.forward(&(g * self.up.forward(x)?)?)
    }
}
