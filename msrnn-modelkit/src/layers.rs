//! Blocks that many decoders share, loaded by GGUF name: the projections of grouped-query
//! attention around the state's attention step ([`msrnn_core::batch::attend_batch`]), and the gated
//! MLP. What a family adds (norms on queries and keys, where the residuals go) stays in the family.

use candle_core::Tensor;
use candle_nn::Activation;
use msrnn_core::SeqStep;

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

    /// `x` `[rows, hidden]` (every sequence of a step stacked) -> queries `[rows, num_heads *
    /// head_dim]`, keys and values `[rows, num_kv_heads * head_dim]`: token-major and unrotated, as
    /// the state takes them (it rotates them in its position mode).
    pub fn project(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        Ok((self.q.forward(x)?, self.k.forward(x)?, self.v.forward(x)?))
    }

    /// Each sequence's rows attend through layer `layer` of its own state, then the output
    /// projection: `[rows, hidden]`.
    pub fn attend(
        &self,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        layer: usize,
        batch: &mut [SeqStep<'_>],
        scale: f64,
    ) -> msrnn_core::Result<Tensor> {
        let y = msrnn_core::batch::attend_batch(layer, q, k, v, batch, scale)?;
        Ok(self.o.forward(&y)?)
    }

    /// [`Self::project`] then [`Self::attend`]: `[rows, hidden]` -> `[rows, hidden]`.
    pub fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        batch: &mut [SeqStep<'_>],
        scale: f64,
    ) -> msrnn_core::Result<Tensor> {
        let (q, k, v) = self.project(x)?;
        self.attend((&q, &k, &v), layer, batch, scale)
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
