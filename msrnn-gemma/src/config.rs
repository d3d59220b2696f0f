//! Gemma 3's hyper-parameters, read from the `gemma3.*` keys of a GGUF file, plus the two facts
//! the file does not carry (which layers are global, and the local layers' RoPE base).

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use msrnn_modelkit::gguf::Metadata;
use msrnn_modelkit::{DecoderConfig, Error, Result};

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
    pub decoder: DecoderConfig,
    /// RoPE base of the global layers.
    pub rope_theta_global: f64,
    /// RoPE base of the local layers.
    pub rope_theta_local: f64,
    /// Keys a local layer's query sees, itself included: a query at `p` sees keys at `p - w + 1 ..= p`.
    pub sliding_window: usize,
    /// Per layer: true for a global layer (whole context), false for a local one (sliding window).
    pub global_layers: Vec<bool>,
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
        (0..self.decoder.num_layers).map(|l| if self.is_global(l) { None } else { Some(self.sliding_window) }).collect()
    }

    /// Each layer's rotary embedding, for the state (which applies it): base 1e4 on local layers,
    /// the file's base on global ones; the GGUF converter does not permute Gemma's Q/K rows, so
    /// dimensions `i` and `i + d/2` pair up.
    pub fn layer_rope(&self) -> Vec<Option<msrnn_core::RopeSpec>> {
        (0..self.decoder.num_layers)
            .map(|l| {
                let theta = if self.is_global(l) { self.rope_theta_global } else { self.rope_theta_local };
                Some(msrnn_core::RopeSpec { theta, style: msrnn_core::RopeStyle::HalfSplit })
            })
            .collect()
    }

    /// Multiplies the token embeddings (`sqrt(hidden)`, in f32 as llama.cpp computes it).
    pub fn embed_scale(&self) -> f64 {
        (self.decoder.hidden_size as f32).sqrt() as f64
    }

    /// Checks what the decoder's own checks leave out.
    fn validate(self, path: &Path) -> Result<Self> {
        self.decoder.validate(path)?;
        let bad = |reason: String| Err(Error::Config { path: path.to_path_buf(), reason });
        if self.sliding_window == 0 {
            return bad("sliding window is 0".into());
        }
        let n = self.decoder.num_layers;
        if self.global_layers.len() != n {
            return bad(format!("a layer pattern of {} layers for {n} layers", self.global_layers.len()));
        }
        for (name, theta) in [("global", self.rope_theta_global), ("local", self.rope_theta_local)] {
            if !(theta > 0.0 && theta.is_finite()) {
                return bad(format!("{name} rope base {theta} is not a positive number"));
            }
        }
        Ok(self)
    }

    /// From the `gemma3.*` keys of a GGUF file whose architecture was already checked.
    pub(crate) fn from_gguf(path: &Path, ct: &Content) -> Result<Self> {
        let md = Metadata { path, ct };
        let key = |k: &str| format!("{ARCH}.{k}");
        let unsupported = |what: String| Err(Error::Unsupported { path: path.into(), what });
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
        let decoder = DecoderConfig::from_gguf(&md, ARCH, 32_768, 1e-6)?;
        let num_layers = decoder.num_layers;
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
        Self {
            rope_theta_global: md.opt_f64(&key("rope.freq_base"))?.unwrap_or(1_000_000.0),
            rope_theta_local: LOCAL_ROPE_THETA,
            sliding_window: md.usize(&key("attention.sliding_window"))?,
            global_layers,
            attn_scale: decoder.attn_scale(),
            decoder,
        }
        .validate(path)
    }
}
