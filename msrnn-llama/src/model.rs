//! The LLaMA forward pass with attention delegated to the multi-state (`msrnn_core::batch::attend_batch`).
//!
//! candle-transformers' own LLaMA models keep their KV caches and layers private and return
//! last-position logits only, so the forward is written here, one plain struct per block.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use msrnn_core::{CausalLm, ModelInfo, MsrnnState, SeqStep};

use crate::config::{LlamaConfig, RopeStyle};
use crate::error::Result;
use crate::tokenizer::Tokenizer;
use crate::weights::{Linear, Tn, WeightFormat, WeightSource};

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

    pub(crate) fn load(w: &WeightSource, tn: Tn, layer: Option<usize>, size: usize, eps: f64) -> Result<Self> {
        Ok(Self::new(w.dense(tn, layer, &[size])?, eps))
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }
}

/// Grouped-query self-attention; the keys/values live in the state, not here.
#[derive(Debug, Clone)]
pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    scale: f64,
}

impl Attention {
    pub(crate) fn load(w: &WeightSource, layer: usize, cfg: &LlamaConfig) -> Result<Self> {
        let (h, kvh, d, hid) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size);
        Ok(Self {
            q: w.linear(Tn::AttnQ, Some(layer), h * d, hid)?,
            k: w.linear(Tn::AttnK, Some(layer), kvh * d, hid)?,
            v: w.linear(Tn::AttnV, Some(layer), kvh * d, hid)?,
            o: w.linear(Tn::AttnO, Some(layer), hid, h * d)?,
            scale: 1.0 / (d as f64).sqrt(),
        })
    }

    /// `x`: `[rows, hidden]` (every sequence of the step stacked) -> `[rows, hidden]`; each
    /// sequence's rows attend through layer `layer` of its own state, which rotates the queries
    /// and keys.
    pub fn forward(&self, x: &Tensor, layer: usize, batch: &mut [SeqStep<'_>]) -> msrnn_core::Result<Tensor> {
        let (q, k, v) = (self.q.forward(x)?, self.k.forward(x)?, self.v.forward(x)?);
        let y = msrnn_core::batch::attend_batch(layer, &q, &k, &v, batch, self.scale)?;
        Ok(self.o.forward(&y)?)
    }
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    pub(crate) fn load(w: &WeightSource, layer: usize, cfg: &LlamaConfig) -> Result<Self> {
        let (hid, ffn) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate: w.linear(Tn::FfnGate, Some(layer), ffn, hid)?,
            up: w.linear(Tn::FfnUp, Some(layer), ffn, hid)?,
            down: w.linear(Tn::FfnDown, Some(layer), hid, ffn)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let g = candle_nn::ops::silu(&self.gate.forward(x)?)?;
        self.down.forward(&(g * self.up.forward(x)?)?)
    }
}

/// One transformer block: pre-norm attention and pre-norm MLP, each with a residual.
#[derive(Debug, Clone)]
pub struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    ffn_norm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    pub(crate) fn load(w: &WeightSource, layer: usize, cfg: &LlamaConfig) -> Result<Self> {
        Ok(Self {
            attn_norm: RmsNorm::load(w, Tn::AttnNorm, Some(layer), cfg.hidden_size, cfg.rms_norm_eps)?,
            attn: Attention::load(w, layer, cfg)?,
            ffn_norm: RmsNorm::load(w, Tn::FfnNorm, Some(layer), cfg.hidden_size, cfg.rms_norm_eps)?,
            mlp: Mlp::load(w, layer, cfg)?,
        })
    }

    pub fn forward(&self, x: &Tensor, layer: usize, batch: &mut [SeqStep<'_>]) -> msrnn_core::Result<Tensor> {
        let h = self.attn.forward(&self.attn_norm.forward(x)?, layer, batch)?;
        let x = (x + h)?;
        let h = self.mlp.forward(&self.ffn_norm.forward(&x)?)?;
        Ok((x + h)?)
    }
}

/// A LLaMA-family decoder (SmolLM2, Llama 2, TinyLlama, ...) as a multi-state RNN.
pub struct Llama {
    cfg: LlamaConfig,
    info: ModelInfo,
    embeddings: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    head: Linear,
    tokenizer: Tokenizer,
    device: Device,
    format: WeightFormat,
}

impl Llama {
    /// Loads every weight through `w`; `tokenizer` comes from the same file or directory.
    pub(crate) fn from_source(w: &WeightSource, cfg: LlamaConfig, tokenizer: Tokenizer) -> Result<Self> {
        let embeddings = w.dense(Tn::TokEmbd, None, &[cfg.vocab_size, cfg.hidden_size])?;
        let blocks = (0..cfg.num_layers).map(|l| Block::load(w, l, &cfg)).collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(w, Tn::OutputNorm, None, cfg.hidden_size, cfg.rms_norm_eps)?;
        let head = if w.contains(Tn::Output, None) {
            w.linear(Tn::Output, None, cfg.vocab_size, cfg.hidden_size)?
        } else if cfg.tie_word_embeddings || w.is_gguf() {
            w.tied_head(&embeddings, cfg.vocab_size, cfg.hidden_size)?
        } else {
            return Err(crate::Error::MissingTensor { path: w.path().into(), tensor: w.name(Tn::Output, None) });
        };
        let info = ModelInfo {
            family: "llama".into(),
            name: cfg.name.clone(),
            num_layers: cfg.num_layers,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            vocab_size: cfg.vocab_size,
            max_context: cfg.max_context,
            bos_token: tokenizer.bos_token(),
            eos_tokens: tokenizer.eos_tokens().to_vec(),
            layer_windows: vec![None; cfg.num_layers],
            layer_rope: vec![Some(cfg.rope_spec()); cfg.num_layers],
            // Keys/values stay f32 whatever the weights: the state is what the policies compare.
            kv_dtype: DType::F32,
        };
        tracing::info!(
            name = %cfg.name, layers = cfg.num_layers, heads = cfg.num_heads, kv_heads = cfg.num_kv_heads,
            format = %w.format, matmul = %blocks.first().map(|b| b.attn.q.kind()).unwrap_or_default(),
            head = %head.kind(), "loaded llama"
        );
        Ok(Self { info, embeddings, blocks, norm, head, tokenizer, device: w.device.clone(), format: w.format, cfg })
    }

    pub fn load(path: &Path, opts: &crate::LoadOptions) -> Result<Llama> {
        crate::loader::load(path, opts)
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn rope_style(&self) -> RopeStyle {
        self.cfg.rope_style
    }

    pub fn weight_format(&self) -> WeightFormat {
        self.format
    }

    /// How the attention/MLP matrices and the output head are held (e.g. `Q4_1`, `Q8_0`).
    pub fn weight_kinds(&self) -> (String, String) {
        (self.blocks.first().map(|b| b.attn.q.kind()).unwrap_or_default(), self.head.kind())
    }
}

impl CausalLm for Llama {
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
        let _span = tracing::trace_span!("llama_forward", rows = ids.len(), seqs = batch.len()).entered();
        let mut x = self.embeddings.index_select(&Tensor::new(ids, &self.device)?, 0)?;
        for (l, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, l, batch)?;
        }
        batch::advance(batch);
        let (rows, counts) = batch::logit_rows(batch);
        let logits = self.head.forward(&self.norm.forward(&batch::select_rows(&x, &rows)?)?)?;
        batch::split_logits(&logits, &counts)
    }
}

/// The input checks every adapter's `forward` starts with: at least one token, ids inside the
/// vocabulary, a state with the model's layer count. Errors, never panics.
pub fn check_input(tokens: &[u32], vocab_size: usize, state: &MsrnnState, num_layers: usize) -> msrnn_core::Result<()> {
    use msrnn_core::Error::Input;
    if tokens.is_empty() {
        return Err(Input("forward needs at least one token".into()));
    }
    if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= vocab_size) {
        return Err(Input(format!("token id {bad} is outside the vocabulary ({vocab_size})")));
    }
    if state.num_layers() != num_layers {
        return Err(Input(format!("the state has {} layers, the model {num_layers}", state.num_layers())));
    }
    Ok(())
}
