//! The model's hyper-parameters, read from GGUF metadata (`llama.*` keys) or from a Hugging Face
//! `config.json` (`LlamaConfig` fields).

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use serde::Deserialize;

use msrnn_core::RopeStyle;
use msrnn_modelkit::gguf::Metadata;
use msrnn_modelkit::{DecoderConfig, Error, Result};

impl LlamaConfig {
    /// Every layer's rotary embedding, for the state (which applies it).
    pub fn rope_spec(&self) -> msrnn_core::RopeSpec {
        msrnn_core::RopeSpec { theta: self.rope_theta, style: self.rope_style }
    }
}

/// Hyper-parameters of a LLaMA-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub decoder: DecoderConfig,
    pub rope_theta: f64,
    pub rope_style: RopeStyle,
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// Checks what the decoder's own checks leave out.
    fn validate(self, path: &Path) -> Result<Self> {
        self.decoder.validate(path)?;
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(Error::Config {
                path: path.into(),
                reason: format!("rope theta {} is not a positive number", self.rope_theta),
            });
        }
        Ok(self)
    }

    /// From the `llama.*` keys of a GGUF file whose architecture was already checked.
    pub(crate) fn from_gguf(path: &Path, ct: &Content) -> Result<Self> {
        let md = Metadata { path, ct };
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
        Self {
            decoder: DecoderConfig::from_gguf(&md, "llama", 2048, 1e-5)?,
            rope_theta: md.opt_f64("llama.rope.freq_base")?.unwrap_or(10_000.0),
            rope_style: RopeStyle::Interleaved,
            tie_word_embeddings: !ct.tensor_infos.contains_key("output.weight"),
        }
        .validate(path)
    }

    /// From a Hugging Face `config.json` (`path` is that file, for messages).
    pub(crate) fn from_hf_json(path: &Path, json: &str) -> Result<Self> {
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
        let decoder = DecoderConfig {
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
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
        };
        Self {
            decoder,
            rope_theta: c.rope_theta.unwrap_or(10_000.0),
            rope_style: RopeStyle::HalfSplit,
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
        }
        .validate(path)
    }
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
}

fn file_stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "llama".into())
}
