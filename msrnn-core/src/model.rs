//! What a model family's adapter provides, and the state built from it.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::positions::{Positions, RopeSpec};
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
    /// Each layer's rotary embedding (`None` for a layer without one). The state applies it, in
    /// the position mode the state was built with.
    #[serde(default)]
    pub layer_rope: Vec<Option<RopeSpec>>,
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

/// Which logits a sequence wants back from a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// The last token's row only (generation; the output head is a large matmul).
    Last,
    /// One row per token fed (perplexity).
    All,
}

/// One sequence's part of a batched step: its tokens (a decode token or a prefill chunk), its own
/// state (own policy, capacity and position), and which logits it wants.
pub struct SeqStep<'a> {
    pub tokens: &'a [u32],
    pub state: &'a mut MsrnnState,
    pub logits: Logits,
}

impl<'a> SeqStep<'a> {
    pub fn new(tokens: &'a [u32], state: &'a mut MsrnnState, logits: Logits) -> Self {
        Self { tokens, state, logits }
    }
}

/// A decoder-only language model whose attention goes through the state
/// ([`crate::batch::attend_batch`]).
pub trait CausalLm {
    fn info(&self) -> &ModelInfo;
    fn device(&self) -> &Device;

    /// One step for a batch of independent sequences: every item's tokens (at positions
    /// `state.tokens_seen()..`) are stacked so that each projection, MLP and the output head run
    /// once on all of them, while attention runs per item on its own state. Returns f32 logits per
    /// item: `[tokens, vocab]` for [`Logits::All`], `[1, vocab]` for [`Logits::Last`]. Each item
    /// gets exactly what it would get alone.
    fn forward_batch(&self, batch: &mut [SeqStep<'_>]) -> Result<Vec<Tensor>>;

    /// The batch of one: feeds `tokens` through the model, updating `state`.
    fn forward(&self, tokens: &[u32], state: &mut MsrnnState, all_logits: bool) -> Result<Tensor> {
        let logits = if all_logits { Logits::All } else { Logits::Last };
        let mut batch = [SeqStep { tokens, state, logits }];
        Ok(self.forward_batch(&mut batch)?.pop().expect("one item in, one out"))
    }

    /// The state layout for this model at the given capacity, positions absolute.
    fn state_config(&self, capacity: Capacity, max_chunk: usize) -> StateConfig {
        let i = self.info();
        let ropes = if i.layer_rope.is_empty() { vec![None; i.num_layers] } else { i.layer_rope.clone() };
        StateConfig {
            num_layers: i.num_layers,
            num_kv_heads: i.num_kv_heads,
            head_dim: i.head_dim,
            dtype: i.kv_dtype,
            device: self.device().clone(),
            capacity,
            windows: i.layer_windows.clone(),
            ropes,
            positions: Positions::Absolute,
            max_chunk,
        }
    }
}

/// A fresh state for `model`, with one `spec` policy instance per layer, positions absolute.
pub fn new_state(
    model: &dyn CausalLm,
    registry: &PolicyRegistry,
    spec: &PolicySpec,
    capacity: Capacity,
    max_chunk: usize,
) -> Result<MsrnnState> {
    new_state_positioned(model, registry, spec, capacity, max_chunk, Positions::Absolute)
}

/// [`new_state`] in the given position mode.
pub fn new_state_positioned(
    model: &dyn CausalLm,
    registry: &PolicyRegistry,
    spec: &PolicySpec,
    capacity: Capacity,
    max_chunk: usize,
    positions: Positions,
) -> Result<MsrnnState> {
    let i = model.info();
    let policies = registry.create_layers(spec, i.num_layers, i.num_heads, i.num_kv_heads, i.head_dim, capacity)?;
    let mut cfg = model.state_config(capacity, max_chunk);
    cfg.positions = positions;
    MsrnnState::new(&cfg, policies)
}
