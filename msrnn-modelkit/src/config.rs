//! The hyper-parameters every decoder here has, whatever its family: a family's config holds a
//! [`DecoderConfig`] and adds what is its own (RoPE bases, windows, ...).

use std::path::Path;

use candle_core::DType;
use msrnn_core::ModelInfo;

use crate::error::{Error, Result};
use crate::gguf::Metadata;
use crate::tokenizer::Tokenizer;

/// The shape of grouped-query attention: what [`crate::AttentionProjections`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub hidden_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// A decoder's common hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// A human-readable name (from the file's metadata or path).
    pub name: String,
    pub hidden_size: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Context length the model was trained for.
    pub max_context: usize,
    pub rms_norm_eps: f64,
}

impl DecoderConfig {
    /// From the `{arch}.*` keys every GGUF decoder stores (llama.cpp's names): attention shape,
    /// `block_count`, `feed_forward_length`, `vocab_size` (else the rows of
    /// `token_embd.weight`), and `context_length` and `attention.layer_norm_rms_epsilon`, for which
    /// the family says what a file that leaves them out means. Validated.
    pub fn from_gguf(md: &Metadata<'_>, arch: &str, default_context: usize, default_eps: f64) -> Result<Self> {
        let key = |k: &str| format!("{arch}.{k}");
        let AttentionShape { hidden_size, num_heads, num_kv_heads, head_dim } = md.attention_shape(arch)?;
        let vocab_size = match md.opt_usize(&key("vocab_size"))? {
            Some(v) => v,
            None => match md.ct.tensor_infos.get("token_embd.weight") {
                Some(ti) if ti.shape.rank() == 2 => ti.shape.dims()[0],
                Some(ti) => {
                    let reason =
                        format!("`token_embd.weight` has shape {:?}, expected [vocab, {hidden_size}]", ti.shape.dims());
                    return Err(Error::Config { path: md.path.into(), reason });
                }
                None => return Err(Error::MissingTensor { path: md.path.into(), tensor: "token_embd.weight".into() }),
            },
        };
        let cfg = Self {
            name: md.model_name(arch),
            hidden_size,
            intermediate_size: md.usize(&key("feed_forward_length"))?,
            num_layers: md.usize(&key("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            max_context: md.opt_usize(&key("context_length"))?.unwrap_or(default_context),
            rms_norm_eps: md.opt_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(default_eps),
        };
        cfg.validate(md.path)?;
        Ok(cfg)
    }

    /// The checks every decoder needs, whatever its file format, before a model is built: no size
    /// of 0, query heads that share KV heads evenly, RoPE pairs, a usable norm epsilon. `path`
    /// names the file in the error.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Err(Error::Config { path: path.to_path_buf(), reason });
        let sizes = [
            ("hidden size", self.hidden_size),
            ("feed-forward size", self.intermediate_size),
            ("layer count", self.num_layers),
            ("head count", self.num_heads),
            ("KV head count", self.num_kv_heads),
            ("head dim", self.head_dim),
            ("vocabulary size", self.vocab_size),
            ("context length", self.max_context),
        ];
        for (name, v) in sizes {
            if v == 0 {
                return bad(format!("{name} is 0"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!("{} query heads cannot share {} KV heads", self.num_heads, self.num_kv_heads));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dim {} is odd; rotary embeddings need pairs", self.head_dim));
        }
        let eps = self.rms_norm_eps;
        if !(eps >= 0.0 && eps.is_finite()) {
            return bad(format!("RMS norm epsilon {eps} is not a non-negative number"));
        }
        Ok(())
    }

    pub fn attention(&self) -> AttentionShape {
        AttentionShape {
            hidden_size: self.hidden_size,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// `1/sqrt(head_dim)`, the usual attention score scale.
    pub fn attn_scale(&self) -> f64 {
        1.0 / (self.head_dim as f64).sqrt()
    }

    /// What the core needs to know about a model of this shape: its family, BOS/EOS from the
    /// tokenizer, the model's own window per layer (`None`: the whole context), f32 keys and values.
    pub fn model_info(
        &self,
        family: &str,
        tokenizer: &Tokenizer,
        layer_windows: Vec<Option<usize>>,
        layer_rope: Vec<Option<msrnn_core::RopeSpec>>,
    ) -> ModelInfo {
        ModelInfo {
            family: family.into(),
            name: self.name.clone(),
            num_layers: self.num_layers,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            vocab_size: self.vocab_size,
            max_context: self.max_context,
            bos_token: tokenizer.bos_token(),
            eos_tokens: tokenizer.eos_tokens().to_vec(),
            layer_windows,
            layer_rope,
            // Keys/values stay f32 whatever the weights: the state is what the policies compare.
            kv_dtype: DType::F32,
        }
    }
}
