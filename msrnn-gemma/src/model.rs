//! The Gemma 3 forward pass over a batch of sequences, attention delegated to each sequence's
//! multi-state (`msrnn_core::batch::attend_batch`).
//!
//! What Gemma adds to a LLaMA block, each in its own struct below: RMS-normalised queries and keys
//! before RoPE, norms after attention and after the MLP (on the branch, before the residual add),
//! embeddings scaled by `sqrt(hidden)`, a GELU-tanh gated MLP, a head tied to the embeddings, and
//! two kinds of layers: local ones (RoPE base 1e4, a sliding window of 512 keys) and global ones
//! (RoPE base 1e6, the whole context). The window is the model's, so it is declared in
//! [`ModelInfo::layer_windows`] and the core's state enforces it; the user's policy and capacity
//! act on top.
//!
//! Norm weights: Gemma's RMSNorm multiplies by `1 + w`; llama.cpp's converter already stores
//! `1 + w` in the GGUF, so the stored weight is used as is (checked on Gemma 3 270M: adding 1 again
//! takes the perplexity of BOS + 256 Hamlet tokens from 13.3 to 3.6e8; as stored it matches
//! llama.cpp's 23.2 on 1024 tokens, which the `real_model` tests check).

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::Activation;
use msrnn_core::{CausalLm, ModelInfo, SeqStep};
use msrnn_modelkit::{
    batch_tokens, blk, finish_batch, AttentionProjections, GatedMlp, Linear, LoadOptions, Model, Result, RmsNorm,
    Tokenizer, WeightFormat, WeightKinds, Weights,
};

use crate::config::GemmaConfig;

/// Grouped-query attention with normalised queries and keys; the keys/values live in the state.
#[derive(Debug, Clone)]
pub struct Attention {
    proj: AttentionProjections,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    scale: f64,
}

impl Attention {
    pub(crate) fn load(w: &Weights, layer: usize, cfg: &GemmaConfig) -> Result<Self> {
        let (d, eps) = (cfg.decoder.head_dim, cfg.decoder.rms_norm_eps);
        Ok(Self {
            proj: AttentionProjections::load(w, layer, cfg.decoder.attention())?,
            q_norm: RmsNorm::load(w, &blk(layer, "attn_q_norm"), d, eps)?,
            k_norm: RmsNorm::load(w, &blk(layer, "attn_k_norm"), d, eps)?,
            scale: cfg.attn_scale,
        })
    }

    /// `x`: `[rows, hidden]` (every sequence of the step stacked) -> `[rows, hidden]`; each
    /// sequence's rows attend through layer `layer` of its own state, which rotates the normalised
    /// queries and keys at this layer's base (local or global).
    pub fn forward(&self, x: &Tensor, layer: usize, batch: &mut [SeqStep<'_>]) -> msrnn_core::Result<Tensor> {
        let (q, k, v) = self.proj.project(x)?;
        let (rows, d) = (x.dim(0)?, self.proj.shape().head_dim);
        // Per-head norms over the last dimension: a free reshape to [rows * heads, d] and back.
        let per_head = |y: &Tensor, norm: &RmsNorm| -> candle_core::Result<Tensor> {
            let w = y.dim(1)?;
            norm.forward(&y.reshape((rows * w / d, d))?)?.reshape((rows, w))
        };
        let (q, k) = (per_head(&q, &self.q_norm)?, per_head(&k, &self.k_norm)?);
        self.proj.attend((&q, &k, &v), layer, batch, self.scale)
    }
}

/// One Gemma block: `x += post_attn_norm(attn(attn_norm(x)))`, then
/// `x += post_ffw_norm(mlp(ffn_norm(x)))`.
#[derive(Debug, Clone)]
pub struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    post_attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    /// GELU (tanh approximation) gated: candle's `gelu` is that form (`gelu_erf` is the exact one).
    mlp: GatedMlp,
    post_ffn_norm: RmsNorm,
    global: bool,
}

impl Block {
    pub(crate) fn load(w: &Weights, layer: usize, cfg: &GemmaConfig) -> Result<Self> {
        let d = &cfg.decoder;
        let hid = d.hidden_size;
        let hidden_norm = |s: &str| RmsNorm::load(w, &blk(layer, s), hid, d.rms_norm_eps);
        Ok(Self {
            attn_norm: hidden_norm("attn_norm")?,
            attn: Attention::load(w, layer, cfg)?,
            post_attn_norm: hidden_norm("post_attention_norm")?,
            ffn_norm: hidden_norm("ffn_norm")?,
            mlp: GatedMlp::load(w, layer, hid, d.intermediate_size, Activation::GeluPytorchTanh)?,
            post_ffn_norm: hidden_norm("post_ffw_norm")?,
            global: cfg.is_global(layer),
        })
    }

    /// Whether this block attends over the whole context (else through the model's window).
    pub fn is_global(&self) -> bool {
        self.global
    }

    pub fn forward(&self, x: &Tensor, layer: usize, batch: &mut [SeqStep<'_>]) -> msrnn_core::Result<Tensor> {
        let h = self.attn.forward(&self.attn_norm.forward(x)?, layer, batch)?;
        let x = (x + self.post_attn_norm.forward(&h)?)?;
        let h = self.mlp.forward(&self.ffn_norm.forward(&x)?)?;
        Ok((x + self.post_ffn_norm.forward(&h)?)?)
    }
}

/// A Gemma 3 text decoder as a multi-state RNN.
pub struct Gemma {
    cfg: GemmaConfig,
    info: ModelInfo,
    blocks: Vec<Block>,
    norm: RmsNorm,
    /// Token embeddings, read row by row (quantized rows are dequantized on the fly), and the
    /// output head unless the file has its own.
    embed: Linear,
    /// `None`: tied to `embed` (Gemma 3).
    head: Option<Linear>,
    tokenizer: Tokenizer,
    device: Device,
    format: WeightFormat,
}

impl Gemma {
    pub(crate) fn from_weights(w: &Weights, cfg: GemmaConfig, tokenizer: Tokenizer) -> Result<Self> {
        let d = &cfg.decoder;
        let (vocab, hid) = (d.vocab_size, d.hidden_size);
        // Gemma 3 ties the head to the embeddings; a file with its own head is honoured.
        let (embed, head) = if w.has("output.weight") {
            (w.linear("token_embd.weight", vocab, hid)?, Some(w.linear("output.weight", vocab, hid)?))
        } else {
            (w.linear("token_embd.weight", vocab, hid)?, None)
        };
        let blocks = (0..d.num_layers).map(|l| Block::load(w, l, &cfg)).collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(w, "output_norm.weight", hid, d.rms_norm_eps)?;
        let info = d.model_info(crate::ARCH, &tokenizer, cfg.layer_windows(), cfg.layer_rope());
        Ok(Self { info, blocks, norm, embed, head, tokenizer, device: w.device().clone(), format: w.format(), cfg })
    }

    /// Loads a Gemma 3 GGUF file (`general.architecture = gemma3`).
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Gemma> {
        crate::loader::load(path, opts)
    }

    /// Reads only the tokenizer of a Gemma 3 GGUF file (no weights).
    pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
        crate::loader::load_tokenizer(path)
    }

    /// The output head (the embedding matrix when tied, as in Gemma 3).
    pub fn output_head(&self) -> &Linear {
        self.head.as_ref().unwrap_or(&self.embed)
    }

    pub fn config(&self) -> &GemmaConfig {
        &self.cfg
    }

    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }
}

impl Model for Gemma {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn weight_format(&self) -> WeightFormat {
        self.format
    }

    fn weight_kinds(&self) -> WeightKinds {
        WeightKinds::of(
            self.blocks.iter().flat_map(|b| b.attn.proj.kinds().into_iter().chain(b.mlp.kinds())),
            self.output_head().kind(),
        )
    }
}

impl CausalLm for Gemma {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn forward_batch(&self, batch: &mut [SeqStep<'_>]) -> msrnn_core::Result<Vec<Tensor>> {
        // `batch_tokens` also checks that each state carries the local layers' windows (the model's).
        let ids = batch_tokens(batch, &self.info)?;
        let _span = tracing::trace_span!("gemma_forward", rows = ids.len(), seqs = batch.len()).entered();
        let ids = Tensor::new(ids, &self.device)?;
        let mut x = (self.embed.rows(&ids)? * self.cfg.embed_scale())?;
        for (l, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, l, batch)?;
        }
        finish_batch(&x, batch, &self.norm, self.output_head())
    }
}
