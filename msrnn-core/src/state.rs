//! The multi-state: per layer, a fixed buffer of key/value slots updated in place.
//!
//! This is what makes a transformer an RNN: the state has a fixed size (the capacity C plus room for
//! the chunk being processed), new tokens are written into free slots, and eviction frees slots. No
//! step concatenates or gathers the cache, so once the state is full every step costs the same.
//! Slot order is irrelevant to attention because each key was rotated at its true absolute position
//! before it was written; `positions` keeps that position for the policies and the causal mask.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::policy::Policy;

/// How many tokens a layer may keep: the C of a finite MSRNN, or unbounded (the plain transformer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Capacity {
    Bounded(usize),
    Unbounded,
}

impl Capacity {
    /// A bounded capacity; zero is refused because a layer must at least keep the token it just saw.
    pub fn bounded(c: usize) -> Result<Self> {
        if c == 0 {
            return Err(Error::InvalidCapacity("capacity must be at least 1 token".into()));
        }
        Ok(Capacity::Bounded(c))
    }

    /// The budget handed to policies (`usize::MAX` when unbounded).
    pub fn budget(self) -> usize {
        match self {
            Capacity::Bounded(c) => c,
            Capacity::Unbounded => usize::MAX,
        }
    }

    pub fn get(self) -> Option<usize> {
        match self {
            Capacity::Bounded(c) => Some(c),
            Capacity::Unbounded => None,
        }
    }
}

impl std::fmt::Display for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Capacity::Bounded(c) => write!(f, "{c}"),
            Capacity::Unbounded => write!(f, "unbounded"),
        }
    }
}

/// The shape of a model's state: what an adapter tells the core so it can allocate.
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub dtype: DType,
    pub device: Device,
    pub capacity: Capacity,
    /// A model-imposed sliding window per layer (Gemma 3's local layers), `None` for global layers.
    pub windows: Vec<Option<usize>>,
    /// Largest chunk the caller expects to feed at once; slots for it are preallocated.
    pub max_chunk: usize,
}

/// One layer's slot buffer.
pub struct LayerState {
    /// `[num_kv_heads, slots, head_dim]`, contiguous; only live slots mean anything.
    pub(crate) k: Tensor,
    pub(crate) v: Tensor,
    pub(crate) positions: Vec<u64>,
    pub(crate) live: Vec<bool>,
    /// Free slots, kept sorted descending so `pop` hands out the lowest index (keeps slots compact).
    free: Vec<usize>,
    /// One past the highest live slot: attention only looks at `[0, high)`.
    pub(crate) high: usize,
    pub(crate) n_live: usize,
    pub(crate) capacity: Capacity,
    pub(crate) window: Option<usize>,
    /// Layer index, for observations and error messages.
    pub(crate) index: usize,
}

const UNBOUNDED_INITIAL_SLOTS: usize = 256;

impl LayerState {
    pub fn new(
        num_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
        capacity: Capacity,
        window: Option<usize>,
        max_chunk: usize,
    ) -> Result<Self> {
        if window == Some(0) {
            return Err(Error::InvalidCapacity("a model window must be at least 1 token".into()));
        }
        let slots = match capacity {
            Capacity::Bounded(c) => c + max_chunk.max(1),
            Capacity::Unbounded => UNBOUNDED_INITIAL_SLOTS.max(max_chunk),
        };
        let k = Tensor::zeros((num_kv_heads, slots, head_dim), dtype, device)?;
        let v = Tensor::zeros((num_kv_heads, slots, head_dim), dtype, device)?;
        Ok(Self {
            k,
            v,
            positions: vec![0; slots],
            live: vec![false; slots],
            free: (0..slots).rev().collect(),
            high: 0,
            n_live: 0,
            capacity,
            window,
            index: 0,
        })
    }

    /// Allocated slots (live or free).
    pub fn num_slots(&self) -> usize {
        self.live.len()
    }
    /// Tokens currently kept.
    pub fn live_count(&self) -> usize {
        self.n_live
    }
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }
    pub fn window(&self) -> Option<usize> {
        self.window
    }
    /// Absolute positions of the kept tokens, ascending.
    pub fn live_positions(&self) -> Vec<u64> {
        let mut p: Vec<u64> = (0..self.high).filter(|&s| self.live[s]).map(|s| self.positions[s]).collect();
        p.sort_unstable();
        p
    }
    /// Key/value buffers, `[num_kv_heads, slots, head_dim]` (dead slots hold stale data).
    pub fn kv(&self) -> (&Tensor, &Tensor) {
        (&self.k, &self.v)
    }
    pub fn slot_positions(&self) -> &[u64] {
        &self.positions
    }
    pub fn slot_live(&self) -> &[bool] {
        &self.live
    }
    /// Bytes of key/value data held by live tokens.
    pub fn live_kv_bytes(&self) -> usize {
        let (h, _, d) = self.k.dims3().unwrap_or((0, 0, 0));
        2 * self.n_live * h * d * self.k.dtype().size_in_bytes()
    }
    /// Bytes allocated for the slot buffers (live + free slots).
    pub fn allocated_kv_bytes(&self) -> usize {
        2 * self.k.elem_count() * self.k.dtype().size_in_bytes()
    }

    /// Drops every token (a new sequence starts); keeps the allocation.
    pub fn clear(&mut self) {
        self.live.iter_mut().for_each(|l| *l = false);
        self.free = (0..self.live.len()).rev().collect();
        self.high = 0;
        self.n_live = 0;
    }

    /// Frees the given slots (already validated).
    pub(crate) fn evict(&mut self, slots: &[usize]) {
        for &s in slots {
            debug_assert!(self.live[s]);
            self.live[s] = false;
            self.free.push(s);
        }
        self.n_live -= slots.len();
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        while self.high > 0 && !self.live[self.high - 1] {
            self.high -= 1;
        }
    }

    /// Drops tokens no future query can see through the model's own sliding window: a query at
    /// `next_pos` sees keys at `p` with `next_pos - p < window`.
    pub(crate) fn drop_outside_window(&mut self, next_pos: u64) {
        let Some(w) = self.window else { return };
        let w = w as u64;
        let old: Vec<usize> = (0..self.high).filter(|&s| self.live[s] && next_pos - self.positions[s] >= w).collect();
        if !old.is_empty() {
            self.evict(&old);
        }
    }

    /// Grows the buffers so that at least `need` slots are free (amortised doubling).
    fn reserve(&mut self, need: usize) -> Result<()> {
        if self.free.len() >= need {
            return Ok(());
        }
        let old = self.num_slots();
        let new = (old * 2).max(old + need - self.free.len());
        let (h, _, d) = self.k.dims3()?;
        for buf in [&mut self.k, &mut self.v] {
            let bigger = Tensor::zeros((h, new, d), buf.dtype(), buf.device())?;
            bigger.slice_set(buf, 1, 0)?;
            *buf = bigger;
        }
        self.positions.resize(new, 0);
        self.live.resize(new, false);
        self.free.extend(old..new);
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        tracing::debug!(old, new, "grew layer state");
        Ok(())
    }

    /// Writes `t` new tokens (`k`, `v`: `[num_kv_heads, t, head_dim]`) into free slots in place and
    /// returns their slots in token order.
    pub(crate) fn write(&mut self, k: &Tensor, v: &Tensor, positions: &[u64]) -> Result<Vec<usize>> {
        let t = positions.len();
        self.reserve(t)?;
        let slots: Vec<usize> = (0..t).map(|_| self.free.pop().expect("reserved")).collect();
        // Slots come out ascending, so tokens land in runs of consecutive slots: one copy per run.
        let mut i = 0;
        while i < t {
            let mut j = i + 1;
            while j < t && slots[j] == slots[j - 1] + 1 {
                j += 1;
            }
            let (ks, vs) = if i == 0 && j == t {
                (k.contiguous()?, v.contiguous()?)
            } else {
                (k.narrow(1, i, j - i)?.contiguous()?, v.narrow(1, i, j - i)?.contiguous()?)
            };
            self.k.slice_set(&ks, 1, slots[i])?;
            self.v.slice_set(&vs, 1, slots[i])?;
            i = j;
        }
        for (&s, &p) in slots.iter().zip(positions) {
            self.positions[s] = p;
            self.live[s] = true;
            self.high = self.high.max(s + 1);
        }
        self.n_live += t;
        Ok(slots)
    }

    /// Restores a layer from saved tensors; used by state files.
    pub(crate) fn restore(&mut self, k: Tensor, v: Tensor, positions: Vec<u64>, live: Vec<bool>) -> Result<()> {
        let (_, slots, _) = k.dims3()?;
        if v.dims() != k.dims() || positions.len() != slots || live.len() != slots {
            return Err(Error::StateFile("layer tensors and slot metadata disagree in size".into()));
        }
        self.k = k.contiguous()?;
        self.v = v.contiguous()?;
        self.positions = positions;
        self.live = live;
        self.n_live = self.live.iter().filter(|&&l| l).count();
        self.free = (0..slots).rev().filter(|&s| !self.live[s]).collect();
        self.high = (0..slots).rev().find(|&s| self.live[s]).map_or(0, |s| s + 1);
        Ok(())
    }
}

/// All layers' states plus their policies: the whole hidden state of the finite MSRNN.
pub struct MsrnnState {
    pub(crate) layers: Vec<LayerState>,
    pub(crate) policies: Vec<Box<dyn Policy>>,
    tokens_seen: u64,
    capacity: Capacity,
}

impl MsrnnState {
    /// One policy per layer (the registry's `create_layers` makes them).
    pub fn new(cfg: &StateConfig, policies: Vec<Box<dyn Policy>>) -> Result<Self> {
        if policies.len() != cfg.num_layers {
            return Err(Error::Input(format!("{} policies for {} layers", policies.len(), cfg.num_layers)));
        }
        if cfg.windows.len() != cfg.num_layers {
            return Err(Error::Input(format!("{} layer windows for {} layers", cfg.windows.len(), cfg.num_layers)));
        }
        if let Capacity::Bounded(0) = cfg.capacity {
            return Err(Error::InvalidCapacity("capacity must be at least 1 token".into()));
        }
        let capacities = layer_capacities(cfg.capacity, &policies)?;
        let layers = cfg
            .windows
            .iter()
            .zip(capacities)
            .enumerate()
            .map(|(i, (&w, capacity))| {
                let mut l = LayerState::new(
                    cfg.num_kv_heads,
                    cfg.head_dim,
                    cfg.dtype,
                    &cfg.device,
                    capacity,
                    w,
                    cfg.max_chunk,
                )?;
                l.index = i;
                Ok(l)
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers, policies, tokens_seen: 0, capacity: cfg.capacity })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }
    /// Tokens fed so far; the next token's absolute position.
    pub fn tokens_seen(&self) -> u64 {
        self.tokens_seen
    }
    pub fn layer(&self, i: usize) -> &LayerState {
        &self.layers[i]
    }
    pub fn policy_name(&self) -> &str {
        self.policies.first().map_or("none", |p| p.name())
    }

    /// Absolute positions for the next `t` tokens.
    pub fn next_positions(&self, t: usize) -> Vec<u64> {
        (self.tokens_seen..self.tokens_seen + t as u64).collect()
    }

    /// Marks `t` tokens as consumed; the adapter calls it once every layer has attended.
    pub fn advance(&mut self, t: usize) {
        self.tokens_seen += t as u64;
    }

    /// Runs [`crate::attend`] on layer `i` with that layer's policy.
    pub fn attend(
        &mut self,
        i: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        positions: &[u64],
        scale: f64,
    ) -> Result<Tensor> {
        let policy = self.policies[i].as_mut();
        crate::attend::attend(q, k, v, positions, &mut self.layers[i], policy, scale)
    }

    /// Largest live count over layers.
    pub fn max_live(&self) -> usize {
        self.layers.iter().map(|l| l.n_live).max().unwrap_or(0)
    }
    /// Key/value bytes held by live tokens, all layers.
    pub fn live_kv_bytes(&self) -> usize {
        self.layers.iter().map(LayerState::live_kv_bytes).sum()
    }
    /// Key/value bytes allocated, all layers.
    pub fn allocated_kv_bytes(&self) -> usize {
        self.layers.iter().map(LayerState::allocated_kv_bytes).sum()
    }

    /// Empties the state and resets the policies, keeping allocations (a new sequence).
    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(LayerState::clear);
        self.policies.iter_mut().for_each(|p| p.reset());
        self.tokens_seen = 0;
    }

    pub(crate) fn set_tokens_seen(&mut self, n: u64) {
        self.tokens_seen = n;
    }
}

/// Each layer's capacity: the run's C, unless the layer's policy asks for its own (per-layer
/// budgets); what they ask for together may not exceed `layers x C`, so the state never holds more
/// than the run allows.
fn layer_capacities(run: Capacity, policies: &[Box<dyn Policy>]) -> Result<Vec<Capacity>> {
    let asked: Vec<Option<usize>> = policies.iter().map(|p| p.capacity()).collect();
    let Some(first) = asked.iter().position(Option::is_some) else {
        return Ok(vec![run; policies.len()]);
    };
    let name = policies[first].name();
    let Capacity::Bounded(c) = run else {
        return Err(Error::InvalidCapacity(format!(
            "policy `{name}` asks for {} tokens on layer {first}, but the run is unbounded: per-layer capacities \
             share a bounded total of layers x C",
            asked[first].unwrap_or_default()
        )));
    };
    if let Some(layer) = asked.iter().position(|a| *a == Some(0)) {
        return Err(Error::InvalidCapacity(format!(
            "policy `{name}` asks for 0 tokens on layer {layer}; a layer keeps at least 1"
        )));
    }
    let caps: Vec<usize> = asked.iter().map(|a| a.unwrap_or(c)).collect();
    let total = caps.iter().fold(0usize, |t, &x| t.saturating_add(x));
    let allowed = c.saturating_mul(caps.len());
    if total > allowed {
        return Err(Error::InvalidCapacity(format!(
            "policy `{name}` asks for {total} tokens over {} layers ({caps:?}), more than layers x C = {} x {c} = \
             {allowed}",
            caps.len(),
            caps.len()
        )));
    }
    Ok(caps.into_iter().map(Capacity::Bounded).collect())
}
