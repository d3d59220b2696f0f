//! What a model family's adapter provides, and the state built from it.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::positions::{Positions, RopeSpec};
use crate::recipe::StateRecipe;
use crate::registry::PolicyRegistry;
use crate::spec::PolicySpec;
use crate::state::{Capacity, KvFormat, MsrnnState, StateConfig};

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

    /// Refuses a bounded capacity above the model's context, saying what such a state would cost:
    /// a bounded state never needs to hold more tokens than the model was trained to attend to, and
    /// a huge C would otherwise be an allocation the machine cannot make. Unbounded (`full`) grows
    /// with the tokens fed and is always accepted here.
    pub fn check_capacity(&self, capacity: Capacity) -> Result<()> {
        let Capacity::Bounded(c) = capacity else { return Ok(()) };
        if self.max_context == 0 || c <= self.max_context {
            return Ok(());
        }
        let per_token = self.kv_bytes_per_token() as u128;
        let cost = per_token * c as u128;
        let human = u64::try_from(cost).map_or_else(|_| format!("{cost} bytes"), crate::util::human_bytes);
        Err(Error::InvalidCapacity(format!(
            "capacity {c} is more than the model's context of {ctx} tokens: a state that size would take {human} \
             ({c} tokens x {per_token} bytes of keys and values per token over {layers} layers), and a bounded \
             state never needs to hold more than the context; use a capacity of at most {ctx} (or the `full` policy)",
            ctx = self.max_context,
            layers = self.num_layers,
        )))
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
            kv: KvFormat::F32,
        }
    }
}

/// A fresh state for `model`, with one `spec` policy instance per layer, positions absolute (a
/// caller of [`PolicyRegistry::build_state`]).
pub fn new_state(
    model: &dyn CausalLm,
    registry: &PolicyRegistry,
    spec: &PolicySpec,
    capacity: Capacity,
    max_chunk: usize,
) -> Result<MsrnnState> {
    new_state_positioned(model, registry, spec, capacity, max_chunk, Positions::Absolute)
}

/// [`new_state`] in the given position mode (a caller of [`PolicyRegistry::build_state`]).
pub fn new_state_positioned(
    model: &dyn CausalLm,
    registry: &PolicyRegistry,
    spec: &PolicySpec,
    capacity: Capacity,
    max_chunk: usize,
    positions: Positions,
) -> Result<MsrnnState> {
    let recipe = StateRecipe::new(spec.clone(), capacity).positions(positions).max_chunk(max_chunk);
    registry.build_state(model, &recipe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2_shape() -> ModelInfo {
        ModelInfo {
            family: "llama".into(),
            name: "t".into(),
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            vocab_size: 49152,
            max_context: 8192,
            bos_token: None,
            eos_tokens: Vec::new(),
            layer_windows: vec![None; 30],
            layer_rope: Vec::new(),
            kv_dtype: DType::F32,
        }
    }

    #[test]
    fn a_capacity_above_the_context_is_refused_with_its_cost() {
        let i = smollm2_shape();
        assert!(i.check_capacity(Capacity::Bounded(8192)).is_ok());
        assert!(i.check_capacity(Capacity::Unbounded).is_ok());
        let e = i.check_capacity(Capacity::Bounded(1_000_000_000_000)).unwrap_err().to_string();
        // 30 layers x 2 x 3 KV heads x 64 dims x 4 bytes = 46,080 bytes per token.
        assert!(e.contains("capacity 1000000000000 is more than the model's context of 8192 tokens"), "{e}");
        assert!(e.contains("40.9 PiB") && e.contains("46080 bytes of keys and values per token over 30 layers"), "{e}");
        assert!(e.contains("at most 8192"), "{e}");
        let e = i.check_capacity(Capacity::Bounded(usize::MAX)).unwrap_err().to_string();
        assert!(e.contains("bytes (18446744073709551615 tokens"), "{e}");
    }
}
