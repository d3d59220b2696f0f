//! What a model family's adapter provides, and the state built from it.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::registry::PolicyRegistry;
use crate::spec::PolicySpec;
use crate::state::{Capacity, MsrnnState, StateConfig};

/// The facts about a model that the core and the tools need; nothing family-specific.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Family (`llama`, `gemma3`, ...).
    pub family: String,
    /// A human-readable name (from the file's metadata or path).
    pub name: String,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Context length the model was trained for; the full cache is not trusted beyond it.
    pub max_context: usize,
    pub bos_token: Option<u32>,
    pub eos_tokens: Vec<u32>,
    /// A model-imposed sliding window per layer (`None` for layers that see the whole context).
    pub layer_windows: Vec<Option<usize>>,
    /// Dtype of the cached keys/values.
    #[serde(with = "dtype_str")]
    pub kv_dtype: DType,
}

impl ModelInfo {
    /// Bytes one cached token costs across all layers (keys and values).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.num_layers * 2 * self.num_kv_heads * self.head_dim * self.kv_dtype.size_in_bytes()
    }
}

mod dtype_str {
    use candle_core::DType;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.as_str())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DType, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| serde::de::Error::custom(format!("unknown dtype {s}")))
    }
}

/// A decoder-only language model whose attention goes through [`MsrnnState::attend`].
pub trait CausalLm {
    fn info(&self) -> &ModelInfo;
    fn device(&self) -> &Device;

    /// Feeds `tokens` (at positions `state.tokens_seen()..`) through the model, updating `state`.
    /// Returns f32 logits `[tokens.len(), vocab]` when `all_logits`, else `[1, vocab]` for the last
    /// token only (generation needs only that, and the output head is a large matmul).
    fn forward(&self, tokens: &[u32], state: &mut MsrnnState, all_logits: bool) -> Result<Tensor>;

    /// The state layout for this model at the given capacity.
    fn state_config(&self, capacity: Capacity, max_chunk: usize) -> StateConfig {
        let i = self.info();
        StateConfig {
            num_layers: i.num_layers,
            num_kv_heads: i.num_kv_heads,
            head_dim: i.head_dim,
            dtype: i.kv_dtype,
            device: self.device().clone(),
            capacity,
            windows: i.layer_windows.clone(),
            max_chunk,
        }
    }
}

/// A fresh state for `model`, with one `spec` policy instance per layer.
pub fn new_state(
    model: &dyn CausalLm,
    registry: &PolicyRegistry,
    spec: &PolicySpec,
    capacity: Capacity,
    max_chunk: usize,
) -> Result<MsrnnState> {
    let i = model.info();
    let policies = registry.create_layers(spec, i.num_layers, i.num_heads, i.num_kv_heads, i.head_dim, capacity)?;
    MsrnnState::new(&model.state_config(capacity, max_chunk), policies)
}
