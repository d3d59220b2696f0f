//! The LLaMA forward pass over a batch of sequences, attention delegated to each sequence's
//! multi-state (`msrnn_core::batch::attend_batch`).
//!
//! candle-transformers' own LLaMA models keep their KV caches and layers private and return
//! last-position logits only, so the forward is written here, one plain struct per block.

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::Activation;
use msrnn_core::{CausalLm, ModelInfo, RopeStyle, SeqStep};
use msrnn_modelkit::{
    batch_tokens, blk, finish_batch, AttentionProjections, GatedMlp, Linear, LoadOptions, Model, Result, RmsNorm,
    Tokenizer, WeightFormat, WeightKinds, Weights,
};

use crate::config::LlamaConfig;

/// Grouped-query self-attention; the keys/values live in the state, not here.
#[derive(Debug, Clone)]
pub struct Attention {
    proj: AttentionProjections,
    scale: f64,
}

impl Attention {
    pub(crate) fn load(w: &Weights, layer: usize, cfg: &LlamaConfig) -> Result<Self> {
        let d = &cfg.decoder;
        Ok(Self { proj: AttentionProjections::load(w, layer, d.attention())?, scale: d.attn_scale() })
    }

    /// `x`: `[rows, hidden]` (every sequence of the step stacked) -> `[rows, hidden]`; each
    /// sequence's rows attend through layer `layer` of its own state, which rotates queries and keys.
    pub fn forward(&self, x: &Tensor, layer: usize, batch: &mut [SeqStep<'_>]) -> msrnn_core::Result<Tensor> {
        self.proj.forward(x, layer, batch, self.scale)
    }
}

/// One transformer block: pre-norm attention and pre-norm SwiGLU MLP, each with a residual.
#[derive(Debug, Clone)]
pub struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    ffn_norm: RmsNorm,
    mlp: GatedMlp,
}

impl Block {
    pub(crate) fn load(w: &Weights, layer: usize, cfg: &LlamaConfig) -> Result<Self> {
        let d = &cfg.decoder;
        let (hid, eps) = (d.hidden_size, d.rms_norm_eps);
        Ok(Self {
            attn_norm: RmsNorm::load(w, &blk(layer, "attn_norm"), hid, eps)?,
            attn: Attention::load(w, layer, cfg)?,
            ffn_norm: RmsNorm::load(w, &blk(layer, "ffn_norm"), hid, eps)?,
            mlp: GatedMlp::load(w, layer, hid, d.intermediate_size, Activation::Silu)?,
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
    pub(crate) fn from_weights(w: &Weights, cfg: LlamaConfig, tokenizer: Tokenizer) -> Result<Self> {
        let d = &cfg.decoder;
        let (vocab, hid) = (d.vocab_size, d.hidden_size);
        let embeddings = w.dense("token_embd.weight", &[vocab, hid])?;
        let blocks = (0..d.num_layers).map(|l| Block::load(w, l, &cfg)).collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(w, "output_norm.weight", hid, d.rms_norm_eps)?;
        // The head is never padded for candle's fast kernels: on SmolLM2 that moves the perplexity
        // more than it saves (docs/performance.md). GGUF converters drop a tied head.
        let head = if w.has("output.weight") {
            w.linear("output.weight", vocab, hid)?
        } else if cfg.tie_word_embeddings || w.is_gguf() {
            w.tied_head("token_embd.weight", &embeddings)?
        } else {
            return Err(msrnn_modelkit::Error::MissingTensor {
                path: w.path().into(),
                tensor: w.file_name("output.weight"),
            });
        };
        let info = d.model_info(
            crate::FAMILY,
            &tokenizer,
            vec![None; d.num_layers],
            vec![Some(cfg.rope_spec()); d.num_layers],
        );
        Ok(Self {
            info,
            embeddings,
            blocks,
            norm,
            head,
            tokenizer,
            device: w.device().clone(),
            format: w.format(),
            cfg,
        })
    }

    /// Loads a GGUF file (`general.architecture = llama`), or a Hugging Face directory (or one of
    /// its `.safetensors` files) with `config.json`, `*.safetensors` and `tokenizer.json`.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Llama> {
        crate::loader::load(path, opts)
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn rope_style(&self) -> RopeStyle {
        self.cfg.rope_style
    }
}

impl Model for Llama {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn weight_format(&self) -> WeightFormat {
        self.format
    }

    fn weight_kinds(&self) -> WeightKinds {
        WeightKinds::of(
            self.blocks.iter().flat_map(|b| b.attn.proj.kinds().into_iter().chain(b.mlp.kinds())),
            self.head.kind(),
        )
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
        let ids = batch_tokens(batch, &self.info)?;
        let _span = tracing::trace_span!("llama_forward", rows = ids.len(), seqs = batch.len()).entered();
        let mut x = self.embeddings.index_select(&Tensor::new(ids, &self.device)?, 0)?;
        for (l, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, l, batch)?;
        }
        finish_batch(&x, batch, &self.norm, &self.head)
    }
}
