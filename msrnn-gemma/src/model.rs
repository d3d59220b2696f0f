//! The Gemma 3 forward pass with attention delegated to the multi-state ([`MsrnnState::attend`]).
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

use candle_core::{DType, Device, Tensor};
use msrnn_core::{CausalLm, ModelInfo, RopeSpec, RopeStyle, SeqStep};
use msrnn_llama::{GgufWeights, Linear, Result, RmsNorm, Tokenizer, WeightFormat};

use crate::config::GemmaConfig;

/// RMS norm `name`, its weight as stored (see above: the `1 +` is already in it).
fn norm(w: &GgufWeights, name: &str, size: usize, eps: f64) -> Result<RmsNorm> {
    Ok(RmsNorm::new(w.dense(name, &[size])?, eps))
}

/// Grouped-query attention with normalised queries and keys; the keys/values live in the state.
#[derive(Debug, Clone)]
pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    pub(crate) fn load(w: &GgufWeights, layer: usize, cfg: &GemmaConfig) -> Result<Self> {
        let (h, kvh, d, hid) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size);
        let n = |s: &str| format!("blk.{layer}.{s}.weight");
        Ok(Self {
            q: w.linear(&n("attn_q"), h * d, hid)?,
            k: w.linear(&n("attn_k"), kvh * d, hid)?,
            v: w.linear(&n("attn_v"), kvh * d, hid)?,
            o: w.linear(&n("attn_output"), hid, h * d)?,
            q_norm: norm(w, &n("attn_q_norm"), d, cfg.rms_norm_eps)?,
            k_norm: norm(w, &n("attn_k_norm"), d, cfg.rms_norm_eps)?,
            num_heads: h,
            num_kv_heads: kvh,
            head_dim: d,
            scale: cfg.attn_scale,
        })
    }

    /// `x`: `[rows, hidden]` (every sequence of the step stacked) -> `[rows, hidden]`; each
    /// sequence's rows attend through layer `layer` of its own state, which rotates the normalised
    /// queries and keys at this layer's base (local or global).
    pub fn forward(&self, x: &Tensor, layer: usize, batch: &mut [SeqStep<'_>]) -> msrnn_core::Result<Tensor> {
        let rows = x.dim(0)?;
        let (h, kv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // Per-head norms over the last dimension: a free reshape to [rows * heads, d] and back.
        let norm = |y: Tensor, n: &RmsNorm, heads: usize| -> candle_core::Result<Tensor> {
            n.forward(&y.reshape((rows * heads, d))?)?.reshape((rows, heads * d))
        };
        let q = norm(self.q.forward(x)?, &self.q_norm, h)?;
        let k = norm(self.k.forward(x)?, &self.k_norm, kv)?;
        let v = self.v.forward(x)?;
        let y = msrnn_core::batch::attend_batch(layer, &q, &k, &v, batch, self.scale)?;
        Ok(self.o.forward(&y)?)
    }
}

/// Gated feed-forward with GELU (tanh approximation): `down(gelu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    pub(crate) fn load(w: &GgufWeights, layer: usize, cfg: &GemmaConfig) -> Result<Self> {
        let (hid, ffn) = (cfg.hidden_size, cfg.intermediate_size);
        let n = |s: &str| format!("blk.{layer}.{s}.weight");
        Ok(Self {
            gate: w.linear(&n("ffn_gate"), ffn, hid)?,
            up: w.linear(&n("ffn_up"), ffn, hid)?,
            down: w.linear(&n("ffn_down"), hid, ffn)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // candle's `gelu` is the tanh approximation (`gelu_erf` is the exact one).
        let g = self.gate.forward(x)?.gelu()?;
        self.down.forward(&(g * self.up.forward(x)?)?)
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
    mlp: Mlp,
    post_ffn_norm: RmsNorm,
    global: bool,
}

impl Block {
    pub(crate) fn load(w: &GgufWeights, layer: usize, cfg: &GemmaConfig) -> Result<Self> {
        let n = |s: &str| format!("blk.{layer}.{s}.weight");
        let hidden_norm = |s: &str| norm(w, &n(s), cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            attn_norm: hidden_norm("attn_norm")?,
            attn: Attention::load(w, layer, cfg)?,
            post_attn_norm: hidden_norm("post_attention_norm")?,
            ffn_norm: hidden_norm("ffn_norm")?,
            mlp: Mlp::load(w, layer, cfg)?,
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
    pub(crate) fn from_weights(w: &GgufWeights, cfg: GemmaConfig, tokenizer: Tokenizer) -> Result<Self> {
        let (vocab, hid) = (cfg.vocab_size, cfg.hidden_size);
        // Gemma 3 ties the head to the embeddings; a file with its own head is honoured.
        let (embed, head) = if w.has("output.weight") {
            (w.linear("token_embd.weight", vocab, hid)?, Some(w.head("output.weight", vocab, hid, true)?))
        } else {
            (w.head("token_embd.weight", vocab, hid, true)?, None)
        };
        let blocks = (0..cfg.num_layers).map(|l| Block::load(w, l, &cfg)).collect::<Result<Vec<_>>>()?;
        let norm = norm(w, "output_norm.weight", hid, cfg.rms_norm_eps)?;
        let info = ModelInfo {
            family: crate::config::ARCH.into(),
            name: cfg.name.clone(),
            num_layers: cfg.num_layers,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            vocab_size: vocab,
            max_context: cfg.max_context,
            bos_token: tokenizer.bos_token(),
            eos_tokens: tokenizer.eos_tokens().to_vec(),
            layer_windows: cfg.layer_windows(),
            layer_rope: (0..cfg.num_layers)
                .map(|l| {
                    let theta = if cfg.is_global(l) { cfg.rope_theta_global } else { cfg.rope_theta_local };
                    // Gemma's converter keeps the Hugging Face layout: dims i and i + d/2 pair up.
                    Some(RopeSpec { theta, style: RopeStyle::HalfSplit })
                })
                .collect(),
            // Keys/values stay f32 whatever the weights: the state is what the policies compare.
            kv_dtype: DType::F32,
        };
        tracing::info!(
            name = %cfg.name, layers = cfg.num_layers, heads = cfg.num_heads, kv_heads = cfg.num_kv_heads,
            window = cfg.sliding_window, format = %w.format(),
            matmul = %blocks.first().map(|b| b.attn.q.kind()).unwrap_or_default(),
            head = %head.as_ref().unwrap_or(&embed).kind(), "loaded gemma3"
        );
        Ok(Self { info, blocks, norm, embed, head, tokenizer, device: w.device().clone(), format: w.format(), cfg })
    }

    /// Loads a Gemma 3 GGUF file (`general.architecture = gemma3`).
    pub fn load(path: &Path, opts: &msrnn_llama::LoadOptions) -> Result<Gemma> {
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

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn config(&self) -> &GemmaConfig {
        &self.cfg
    }

    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    pub fn weight_format(&self) -> WeightFormat {
        self.format
    }

    /// How the attention/MLP matrices and the output head are held (e.g. `Q8_0`).
    pub fn weight_kinds(&self) -> (String, String) {
        (self.blocks.first().map(|b| b.attn.q.kind()).unwrap_or_default(), self.output_head().kind())
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
        use msrnn_core::batch;
        batch::check_batch(batch, &self.info)?;
        let ids = batch::stacked_tokens(batch);
        let _span = tracing::trace_span!("gemma_forward", rows = ids.len(), seqs = batch.len()).entered();
        let ids = Tensor::new(ids, &self.device)?;
        let mut x = (self.embed.rows(&ids)? * self.cfg.embed_scale())?;
        for (l, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, l, batch)?;
        }
        batch::advance(batch);
        let (rows, counts) = batch::logit_rows(batch);
        let logits = self.output_head().forward(&self.norm.forward(&batch::select_rows(&x, &rows)?)?)?;
        batch::split_logits(&logits, &counts)
    }
}
