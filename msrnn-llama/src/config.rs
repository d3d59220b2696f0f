//! The model's hyper-parameters, read from GGUF metadata (`llama.*` keys) or from a Hugging Face
//! `config.json` (`LlamaConfig` fields).

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::gguf::{check_config, AttentionShape, Metadata};

/// How rotary position embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i+1)` (`candle_nn::rotary_emb::rope_i`): GGUF files, whose Q/K rows the
    /// converter permuted to this layout.
    Interleaved,
    /// Pairs `(i, i + d/2)` (`candle_nn::rotary_emb::rope`): Hugging Face safetensors.
    HalfSplit,
}

impl LlamaConfig {
    /// Every layer's rotary embedding, for the state (which applies it).
    pub fn rope_spec(&self) -> msrnn_core::RopeSpec {
        let style = match self.rope_style {
            RopeStyle::Interleaved => msrnn_core::RopeStyle::Interleaved,
            RopeStyle::HalfSplit => msrnn_core::RopeStyle::HalfSplit,
        };
        msrnn_core::RopeSpec { theta: self.rope_theta, style }
    }
}

/// Hyper-parameters of a LLaMA-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub name: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Context length the model was trained for.
    pub max_context: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub rope_style: RopeStyle,
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// Sanity checks shared by both formats.
    pub(crate) fn validate(&self, path: &Path) -> Result<()> {
        let sizes = [
            ("hidden size", self.hidden_size),
            ("intermediate size", self.intermediate_size),
            ("layer count", self.num_layers),
            ("head count", self.num_heads),
            ("KV head count", self.num_kv_heads),
            ("head dim", self.head_dim),
            ("vocabulary size", self.vocab_size),
            ("context length", self.max_context),
        ];
        check_config(path, &sizes, self.num_heads, self.num_kv_heads, self.head_dim, self.rms_norm_eps)?;
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(Error::Config {
                path: path.into(),
                reason: format!("rope theta {} is not a positive number", self.rope_theta),
            });
        }
        Ok(())
    }

    /// From the `llama.*` keys of a GGUF file whose architecture was already checked.
    pub(crate) fn from_gguf(path: &Path, ct: &Content) -> Result<Self> {
        let md = Metadata { path, ct };
        let AttentionShape { hidden_size, num_heads, num_kv_heads, head_dim } = md.attention_shape("llama")?;
        if let Some(n) = md.opt_usize("llama.expert_count")? {
            if n > 1 {
                return Err(Error::Unsupported {
                    path: path.into(),
                    what: format!("mixture of experts ({n} experts)"),
                });
            }
        }
        if let Some(Value::String(s)) = ct.metadata.get("llama.rope.scaling.type") {
            if s != "none" {
                return Err(Error::Unsupported { path: path.into(), what: format!("rope scaling `{s}`") });
            }
        }
        if ct.tensor_infos.contains_key("rope_freqs.weight") {
            return Err(Error::Unsupported {
                path: path.into(),
                what: "per-frequency rope factors (`rope_freqs.weight`, Llama 3.1 style)".into(),
            });
        }
        let vocab_size = match md.opt_usize("llama.vocab_size")? {
            Some(v) => v,
            None => match ct.tensor_infos.get("token_embd.weight") {
                Some(ti) => ti.shape.dims()[0],
                None => return Err(Error::MissingTensor { path: path.into(), tensor: "token_embd.weight".into() }),
            },
        };
        let cfg = Self {
            name: md.model_name("llama"),
            hidden_size,
            intermediate_size: md.usize("llama.feed_forward_length")?,
            num_layers: md.usize("llama.block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            max_context: md.opt_usize("llama.context_length")?.unwrap_or(2048),
            rope_theta: md.opt_f64("llama.rope.freq_base")?.unwrap_or(10_000.0),
            rms_norm_eps: md.opt_f64("llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
            rope_style: RopeStyle::Interleaved,
            tie_word_embeddings: !ct.tensor_infos.contains_key("output.weight"),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// From a Hugging Face `config.json` (`path` is that file, for messages).
    pub(crate) fn from_hf_json(path: &Path, json: &str) -> Result<(Self, HfExtras)> {
        let c: HfConfig =
            serde_json::from_str(json).map_err(|e| Error::Config { path: path.into(), reason: e.to_string() })?;
        let is_llama = c.model_type.as_deref() == Some("llama")
            || (c.model_type.is_none() && c.architectures.iter().any(|a| a == "LlamaForCausalLM"));
        if !is_llama {
            let arch =
                c.model_type.clone().or_else(|| c.architectures.first().cloned()).unwrap_or_else(|| "unknown".into());
            return Err(Error::UnsupportedArchitecture { path: path.into(), arch, expected: "llama".into() });
        }
        if let Some(s) = &c.rope_scaling {
            if !s.is_null() {
                return Err(Error::Unsupported { path: path.into(), what: format!("rope_scaling {s}") });
            }
        }
        if c.attention_bias || c.mlp_bias {
            return Err(Error::Unsupported { path: path.into(), what: "attention or MLP biases".into() });
        }
        if let Some(act) = &c.hidden_act {
            if act != "silu" {
                return Err(Error::Unsupported { path: path.into(), what: format!("activation `{act}`") });
            }
        }
        let num_kv_heads = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
        let head_dim = c.head_dim.unwrap_or(c.hidden_size.checked_div(c.num_attention_heads).unwrap_or(0));
        let cfg = Self {
            name: c
                .name_or_path
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| path.parent().map(file_stem).unwrap_or_else(|| "llama".into())),
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_hidden_layers,
            num_heads: c.num_attention_heads,
            num_kv_heads,
            head_dim,
            vocab_size: c.vocab_size,
            max_context: c.max_position_embeddings.unwrap_or(2048),
            rope_theta: c.rope_theta.unwrap_or(10_000.0),
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
            rope_style: RopeStyle::HalfSplit,
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
        };
        cfg.validate(path)?;
        let extras = HfExtras {
            bos_token_id: c.bos_token_id,
            eos_token_ids: c.eos_token_id.map(|e| e.into_vec()).unwrap_or_default(),
        };
        Ok((cfg, extras))
    }
}

/// Token ids `config.json` declares (the tokenizer files may declare more).
#[derive(Debug, Clone, Default)]
pub(crate) struct HfExtras {
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default, rename = "_name_or_path")]
    name_or_path: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    pub(crate) fn into_vec(self) -> Vec<u32> {
        match self {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(v) => v,
        }
    }
}

fn file_stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "llama".into())
}
