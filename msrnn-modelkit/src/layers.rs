//! Blocks that many decoders share, loaded by GGUF name: the projections of grouped-query
//! attention around the state's attention step ([`msrnn_core::batch::attend_batch`]), and the gated
//! MLP. What a family adds (norms on queries and keys, where the residuals go) stays in the family.

use candle_core::{DType, Device, Tensor};
use candle_nn::Activation;
use msrnn_core::SeqStep;

use crate::config::AttentionShape;
use crate::error::Result;
use crate::linear::Linear;
use crate::weights::{blk, Weights};

/// The four matrices of grouped-query self-attention (`attn_q`, `attn_k`, `attn_v`, `attn_output`
/// of a block) and the head layout the state's attention takes and returns. Query head `h` reads
/// KV head `h / (num_heads / num_kv_heads)`. Queries, keys and values come out of one matmul when
/// their matrices are held alike (one pass over the input, quantized once).
#[derive(Debug, Clone)]
pub struct AttentionProjections {
    qkv: Projection,
    o: Linear,
    shape: AttentionShape,
}

/// Several matrices applied to the same input: stacked into one when they are held alike, each on
/// its own otherwise (e.g. a file mixing block formats, kept as stored).
#[derive(Debug, Clone)]
enum Projection {
    Fused { m: Linear, widths: Vec<usize> },
    Split(Vec<Linear>),
}

impl Projection {
    fn new(parts: Vec<Linear>, widths: Vec<usize>) -> Self {
        let refs: Vec<&Linear> = parts.iter().collect();
        match Linear::concat(&refs) {
            Ok(m) => Projection::Fused { m, widths },
            Err(_) => Projection::Split(parts),
        }
    }

    fn kind(&self) -> String {
        match self {
            Projection::Fused { m, .. } => m.kind(),
            Projection::Split(ms) => ms[0].kind(),
        }
    }

    fn kinds(&self) -> Vec<String> {
        match self {
            Projection::Fused { m, .. } => vec![m.kind()],
            Projection::Split(ms) => ms.iter().map(Linear::kind).collect(),
        }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        match self {
            Projection::Split(ms) => ms.iter().map(|m| m.forward(x)).collect(),
            Projection::Fused { m, widths } => {
                let y = m.forward(x)?;
                let mut start = 0;
                widths
                    .iter()
                    .map(|&w| {
                        let part = y.narrow(1, start, w);
                        start += w;
                        part
                    })
                    .collect()
            }
        }
    }
}

impl AttentionProjections {
    pub fn load(w: &Weights, layer: usize, shape: AttentionShape) -> Result<Self> {
        let AttentionShape { hidden_size: hid, num_heads: h, num_kv_heads: kvh, head_dim: d } = shape;
        let parts = vec![
            w.linear(&blk(layer, "attn_q"), h * d, hid)?,
            w.linear(&blk(layer, "attn_k"), kvh * d, hid)?,
            w.linear(&blk(layer, "attn_v"), kvh * d, hid)?,
        ];
        Ok(Self {
            qkv: Projection::new(parts, vec![h * d, kvh * d, kvh * d]),
            o: w.linear(&blk(layer, "attn_output"), hid, h * d)?,
            shape,
        })
    }

    pub fn shape(&self) -> AttentionShape {
        self.shape
    }

    /// How the matrices are held (the query's stands for all four).
    pub fn kind(&self) -> String {
        self.qkv.kind()
    }

    /// How each matrix is held (a file may mix block formats: Q4_K_M files hold Q4_K, Q6_K and more).
    pub fn kinds(&self) -> Vec<String> {
        let mut k = self.qkv.kinds();
        k.push(self.o.kind());
        k
    }

    /// `x` `[rows, hidden]` (every sequence of a step stacked) -> queries `[rows, num_heads *
    /// head_dim]`, keys and values `[rows, num_kv_heads * head_dim]`: token-major and unrotated, as
    /// the state takes them (it rotates them in its position mode).
    pub fn project(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let mut parts = self.qkv.forward(x)?.into_iter();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(q), Some(k), Some(v)) => Ok((q, k, v)),
            _ => candle_core::bail!("the attention projection lost a part"),
        }
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
    gate_up: Projection,
    down: Linear,
    act: Activation,
}

impl GatedMlp {
    pub fn load(w: &Weights, layer: usize, hidden: usize, ffn: usize, act: Activation) -> Result<Self> {
        let parts =
            vec![w.linear(&blk(layer, "ffn_gate"), ffn, hidden)?, w.linear(&blk(layer, "ffn_up"), ffn, hidden)?];
        Ok(Self {
            gate_up: Projection::new(parts, vec![ffn, ffn]),
            down: w.linear(&blk(layer, "ffn_down"), hidden, ffn)?,
            act,
        })
    }

    /// How each matrix is held.
    pub fn kinds(&self) -> Vec<String> {
        let mut k = self.gate_up.kinds();
        k.push(self.down.kind());
        k
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut parts = self.gate_up.forward(x)?.into_iter();
        let (Some(g), Some(u)) = (parts.next(), parts.next()) else { candle_core::bail!("the gated MLP lost a part") };
        self.down.forward(&gate(&self.act, &g, &u)?)
    }
}

/// `act(g) * u`. On the CPU, GELU's tanh form and SiLU go through msrnn-kernels in one pass spread over the thread
/// pool: GELU with one vector exp per 16 values (where candle calls libm's `tanhf` per value: a fifth of Gemma's
/// prefill), SiLU with candle's own expression, so the same bits (candle's two passes on one thread were 5% of a
/// batched decode step). Everything else stays candle's.
fn gate(act: &Activation, g: &Tensor, u: &Tensor) -> candle_core::Result<Tensor> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    let kernel: fn(&[f32], &[f32], &mut [f32]) = match act {
        Activation::GeluPytorchTanh => msrnn_kernels::mlp::gelu_tanh_mul,
        Activation::Silu => msrnn_kernels::mlp::silu_mul,
        _ => return g.apply(act)? * u,
    };
    if !f32_cpu(g) || !f32_cpu(u) || g.dims() != u.dims() {
        return g.apply(act)? * u;
    }
    let (gv, uv) = (g.flatten_all()?.to_vec1::<f32>()?, u.flatten_all()?.to_vec1::<f32>()?);
    let mut out = vec![0f32; gv.len()];
    kernel(&gv, &uv, &mut out);
    Tensor::from_vec(out, g.dims(), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels' SiLU step gives candle's bits (the models' outputs must not move), over several pool pieces.
    #[test]
    fn silu_gate_gives_candles_bits() -> candle_core::Result<()> {
        let n: usize = 3 * 9000;
        let gv: Vec<f32> = (0..n).map(|i| ((i * 7919) % 2001) as f32 * 0.01 - 10.0).collect();
        let uv: Vec<f32> = (0..n).map(|i| ((i * 104_729) % 997) as f32 * 0.003 - 1.5).collect();
        let (g, u) = (Tensor::from_vec(gv, (3, 9000), &Device::Cpu)?, Tensor::from_vec(uv, (3, 9000), &Device::Cpu)?);
        let got = gate(&Activation::Silu, &g, &u)?.flatten_all()?.to_vec1::<f32>()?;
        let want = (g.apply(&Activation::Silu)? * &u)?.flatten_all()?.to_vec1::<f32>()?;
        let differ = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{differ} of {n} values differ from candle's silu(g) * u");
        Ok(())
    }
}
