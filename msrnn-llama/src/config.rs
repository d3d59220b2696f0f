//! The model's hyper-parameters, read from GGUF metadata (`llama.*` keys) or from a Hugging Face
//! `config.json` (`LlamaConfig` fields).

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use serde::Deserialize;

use crate::error::{Error, Result};

/// How rotary position embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i+1)` (`candle_nn::rotary_emb::rope_i`): GGUF files, whose Q/K rows the
    /// converter permuted to this layout.
    Interleaved,
    /// Pairs `(i, i + d/2)` (`candle_nn::rotary_emb::rope`): Hugging Face safetensors.
    HalfSplit,
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
        let bad = |reason: String| Err(Error::Config { path: path.to_path_buf(), reason });
        for (name, v) in [
            ("hidden size", self.hidden_size),
            ("intermediate size", self.intermediate_size),
            ("layer count", self.num_layers),
            ("head count", self.num_heads),
            ("KV head count", self.num_kv_heads),
            ("head dim", self.head_dim),
            ("vocabulary size", self.vocab_size),
            ("context length", self.max_context),
        ] {
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
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return bad(format!("rope theta {} is not a positive number", self.rope_theta));
        }
        if !(self.rms_norm_eps >= 0.0 && self.rms_norm_eps.is_finite()) {
            return bad(format!("RMS norm epsilon {} is not a non-negative number", self.rms_norm_eps));
        }
        Ok(())
    }

    /// From the `llama.*` keys of a GGUF file whose architecture was already checked.
    pub(crate) fn from_gguf(path: &Path, ct: &Content) -> Result<Self> {
        let md = Metadata { path, ct };
        let hidden_size = md.usize("llama.embedding_length")?;
        let num_heads = md.usize("llama.attention.head_count")?;
        let num_kv_heads = md.opt_usize("llama.attention.head_count_kv")?.unwrap_or(num_heads);
        if num_heads == 0 {
            return Err(Error::BadMetadata {
                path: path.into(),
                key: "llama.attention.head_count".into(),
                reason: "is 0".into(),
            });
        }
        let head_dim = md.opt_usize("llama.attention.key_length")?.unwrap_or(hidden_size / num_heads);
        if let Some(vd) = md.opt_usize("llama.attention.value_length")? {
            if vd != head_dim {
                return Err(Error::Unsupported {
                    path: path.into(),
                    what: format!("value length {vd} != key length {head_dim}"),
                });
            }
        }
        if let Some(rd) = md.opt_usize("llama.rope.dimension_count")? {
            if rd != head_dim {
                return Err(Error::Unsupported {
                    path: path.into(),
                    what: format!("partial rotary embedding ({rd} of {head_dim} dims)"),
                });
            }
        }
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
        let name = match ct.metadata.get("general.name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => file_stem(path),
        };
        let cfg = Self {
            name,
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
            return Err(Error::UnsupportedArchitecture { path: path.into(), arch });
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

/// Typed access to GGUF metadata with errors naming the file and key.
pub(crate) struct Metadata<'a> {
    pub path: &'a Path,
    pub ct: &'a Content,
}

impl Metadata<'_> {
    fn bad(&self, key: &str, reason: String) -> Error {
        Error::BadMetadata { path: self.path.into(), key: key.into(), reason }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.ct.metadata.get(key)
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let n: i128 = match *v {
            Value::U8(x) => x.into(),
            Value::I8(x) => x.into(),
            Value::U16(x) => x.into(),
            Value::I16(x) => x.into(),
            Value::U32(x) => x.into(),
            Value::I32(x) => x.into(),
            Value::U64(x) => x.into(),
            Value::I64(x) => x.into(),
            ref other => return Err(self.bad(key, format!("expected an integer, found {:?}", other.value_type()))),
        };
        usize::try_from(n).map(Some).map_err(|_| self.bad(key, format!("{n} is out of range")))
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| Error::MissingMetadata { path: self.path.into(), key: key.into() })
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        match *v {
            Value::F32(x) => Ok(Some(x as f64)),
            Value::F64(x) => Ok(Some(x)),
            _ => match self.opt_usize(key) {
                Ok(Some(n)) => Ok(Some(n as f64)),
                _ => Err(self.bad(key, format!("expected a number, found {:?}", v.value_type()))),
            },
        }
    }

    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.opt_usize(key)? {
            None => Ok(None),
            Some(n) => u32::try_from(n).map(Some).map_err(|_| self.bad(key, format!("{n} is out of range"))),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.bad(key, format!("expected a bool, found {:?}", v.value_type()))),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.bad(key, format!("expected a string, found {:?}", v.value_type()))),
        }
    }

    /// An array of strings.
    pub fn opt_strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(vs)) => vs
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    v => Err(self.bad(key, format!("expected strings, found {:?}", v.value_type()))),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.bad(key, format!("expected an array, found {:?}", v.value_type()))),
        }
    }

    /// An array of integers.
    pub fn opt_ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(vs)) => vs
                .iter()
                .map(|v| match *v {
                    Value::U8(x) => Ok(x as i64),
                    Value::I8(x) => Ok(x as i64),
                    Value::U16(x) => Ok(x as i64),
                    Value::I16(x) => Ok(x as i64),
                    Value::U32(x) => Ok(x as i64),
                    Value::I32(x) => Ok(x as i64),
                    Value::U64(x) => Ok(x as i64),
                    Value::I64(x) => Ok(x),
                    ref v => Err(self.bad(key, format!("expected integers, found {:?}", v.value_type()))),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.bad(key, format!("expected an array, found {:?}", v.value_type()))),
        }
    }
}
