//! Gemma 3's hyper-parameters, read from the `gemma3.*` keys of a GGUF file, plus the two facts
//! the file does not carry (which layers are global, and the local layers' RoPE base).

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use msrnn_llama::gguf::{check_config, AttentionShape, Metadata};
use msrnn_llama::{Error, Result};

/// The architecture this crate implements (`general.architecture`).
pub const ARCH: &str = "gemma3";

/// Every sixth layer is global (layers 5, 11, 17 of 18 in Gemma 3 270M); the others are local.
/// Gemma 3's config calls this `sliding_window_pattern`; llama.cpp hard-codes it too, because
/// converted Gemma 3 GGUF files do not store it. A file that has
/// `gemma3.attention.sliding_window_pattern` (one bool per layer, true = sliding window, the form
/// newer converters write for Gemma 3n) overrides it.
pub const GLOBAL_EVERY: usize = 6;

/// RoPE base of the local (sliding-window) layers (`rope_local_base_freq` in the Hugging Face
/// config); GGUF files store only the global base (`gemma3.rope.freq_base`).
pub const LOCAL_ROPE_THETA: f64 = 10_000.0;

/// Hyper-parameters of a Gemma 3 text decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmaConfig {
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
    /// RoPE base of the global layers.
    pub rope_theta_global: f64,
    /// RoPE base of the local layers.
    pub rope_theta_local: f64,
    /// Keys a local layer's query sees, itself included: a query at `p` sees keys at `p - w + 1 ..= p`.
    pub sliding_window: usize,
    /// Per layer: true for a global layer (whole context), false for a local one (sliding window).
    pub global_layers: Vec<bool>,
    pub rms_norm_eps: f64,
    /// Multiplies `q . k` (Gemma: `query_pre_attn_scalar^-1/2`, here `1/sqrt(head_dim)`).
    pub attn_scale: f64,
}

impl GemmaConfig {
    /// Whether layer `l` attends over the whole context (no model window).
    pub fn is_global(&self, layer: usize) -> bool {
        self.global_layers.get(layer).copied().unwrap_or(false)
    }

    /// The model's own window per layer, as [`msrnn_core::ModelInfo::layer_windows`] wants it.
    pub fn layer_windows(&self) -> Vec<Option<usize>> {
        (0..self.num_layers).map(|l| if self.is_global(l) { None } else { Some(self.sliding_window) }).collect()
    }

    /// Multiplies the token embeddings (`sqrt(hidden)`, in f32 as llama.cpp computes it).
    pub fn embed_scale(&self) -> f64 {
        (self.hidden_size as f32).sqrt() as f64
    }

    pub(crate) fn validate(&self, path: &Path) -> Result<()> {
        let sizes = [
            ("hidden size", self.hidden_size),
            ("feed-forward size", self.intermediate_size),
            ("layer count", self.num_layers),
            ("head count", self.num_heads),
            ("KV head count", self.num_kv_heads),
            ("head dim", self.head_dim),
            ("vocabulary size", self.vocab_size),
            ("context length", self.max_context),
            ("sliding window", self.sliding_window),
        ];
        check_config(path, &sizes, self.num_heads, self.num_kv_heads, self.head_dim, self.rms_norm_eps)?;
        let bad = |reason: String| Err(Error::Config { path: path.to_path_buf(), reason });
        if self.global_layers.len() != self.num_layers {
            return bad(format!(
                "a layer pattern of {} layers for {} layers",
                self.global_layers.len(),
                self.num_layers
            ));
        }
        for (name, theta) in [("global", self.rope_theta_global), ("local", self.rope_theta_local)] {
            if !(theta > 0.0 && theta.is_finite()) {
                return bad(format!("{name} rope base {theta} is not a positive number"));
            }
        }
        Ok(())
    }

    /// From the `gemma3.*` keys of a GGUF file whose architecture was already checked.
    pub(crate) fn from_gguf(path: &Path, ct: &Content) -> Result<Self> {
        let md = Metadata { path, ct };
        let key = |k: &str| format!("{ARCH}.{k}");
        let unsupported = |what: String| Err(Error::Unsupported { path: path.into(), what });
        let AttentionShape { hidden_size, num_heads, num_kv_heads, head_dim } = md.attention_shape(ARCH)?;
        // Gemma 3's larger sizes scale the global RoPE (linear, factor 8); the 270M/1B do not. Not
        // implemented rather than silently wrong.
        if let Some(Value::String(s)) = md.get(&key("rope.scaling.type")) {
            if s != "none" {
                return unsupported(format!("rope scaling `{s}`"));
            }
        }
        if let Some(f) = md.opt_f64(&key("rope.scaling.factor"))? {
            if f != 1.0 && f != 0.0 {
                return unsupported(format!("rope scaling factor {f}"));
            }
        }
        // Gemma 2 soft-caps logits; Gemma 3 does not. A file asking for it is not what this adapter computes.
        for cap in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if let Some(c) = md.opt_f64(&key(cap))? {
                if c != 0.0 {
                    return unsupported(format!("logit soft-capping (`{}` = {c})", key(cap)));
                }
            }
        }
        let vocab_size = match ct.tensor_infos.get("token_embd.weight") {
            Some(ti) if ti.shape.rank() == 2 => ti.shape.dims()[0],
            Some(ti) => {
                let reason =
                    format!("`token_embd.weight` has shape {:?}, expected [vocab, {hidden_size}]", ti.shape.dims());
                return Err(Error::Config { path: path.into(), reason });
            }
            None => return Err(Error::MissingTensor { path: path.into(), tensor: "token_embd.weight".into() }),
        };
        let num_layers = md.usize(&key("block_count"))?;
        let pattern_key = key("attention.sliding_window_pattern");
        let global_layers = match md.get(&pattern_key) {
            None => (0..num_layers).map(|l| (l + 1) % GLOBAL_EVERY == 0).collect(),
            Some(Value::Array(vs)) => vs
                .iter()
                .map(|v| match v {
                    Value::Bool(sliding) => Ok(!sliding),
                    v => Err(md.bad(&pattern_key, format!("expected bools, found {:?}", v.value_type()))),
                })
                .collect::<Result<Vec<bool>>>()?,
            Some(v) => {
                return Err(md.bad(&pattern_key, format!("expected an array of bools, found {:?}", v.value_type())))
            }
        };
        let cfg = Self {
            name: md.model_name(ARCH),
            hidden_size,
            intermediate_size: md.usize(&key("feed_forward_length"))?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            max_context: md.opt_usize(&key("context_length"))?.unwrap_or(32_768),
            rope_theta_global: md.opt_f64(&key("rope.freq_base"))?.unwrap_or(1_000_000.0),
            rope_theta_local: LOCAL_ROPE_THETA,
            sliding_window: md.usize(&key("attention.sliding_window"))?,
            global_layers,
            rms_norm_eps: md.opt_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6),
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }
}
