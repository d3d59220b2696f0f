//! The multi-state: per layer, a fixed buffer of key/value slots updated in place.
//!
//! This is what makes a transformer an RNN: the state has a fixed size (the capacity C plus room for
//! the chunk being processed), new tokens are written into free slots, and eviction frees slots. No
//! step concatenates or gathers the cache, so once the state is full every step costs the same.
//! Slot order is irrelevant to attention: each slot records its token's absolute position, which
//! drives the causal mask, the policies and, through [`Positions`], the rotary embedding.
//!
//! On the CPU (an f32 model) the buffers are plain host memory read by `msrnn-kernels`' fused
//! attention (keys slot-interleaved in blocks of [`KEY_BLOCK`], values `[kv_heads, slots,
//! head_dim]`), stored in the state's [`KvFormat`] (f32, f16 or q8_0) and read by the kernel as
//! stored; on other devices they are candle tensors `[kv_heads, slots, head_dim]`.

use candle_core::{DType, Device, Tensor};
use msrnn_kernels::attention::KEY_BLOCK;
pub use msrnn_kernels::kv::{KvBuf, KvFormat};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::positions::{Positions, Rope, RopeSpec};

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
    /// Each layer's rotary embedding; `None` when the model rotates nothing (or the caller hands
    /// the state keys it rotated itself).
    pub ropes: Vec<Option<RopeSpec>>,
    pub positions: Positions,
    /// Largest chunk the caller expects to feed at once; slots for it are preallocated.
    pub max_chunk: usize,
    /// How keys and values are stored: f32 (default), f16, or q8_0 (host buffers; other devices
    /// take f32 or f16 tensors).
    pub kv: KvFormat,
}

impl StateConfig {
    /// `num_layers` layers of f32 keys/values on the CPU, no model windows, no rotary embedding,
    /// absolute positions, one token per step: fields are public to change the rest.
    pub fn new(num_layers: usize, num_kv_heads: usize, head_dim: usize, capacity: Capacity) -> Self {
        Self {
            num_layers,
            num_kv_heads,
            head_dim,
            dtype: DType::F32,
            device: Device::Cpu,
            capacity,
            windows: vec![None; num_layers],
            ropes: vec![None; num_layers],
            positions: Positions::Absolute,
            max_chunk: 1,
            kv: KvFormat::F32,
        }
    }
}

/// The slot buffers of one layer.
pub(crate) enum Kv {
    /// CPU, f32 model: keys blocked for the fused kernel (`msrnn_kernels::attention::key_index`),
    /// values `[kv_heads, slots, d]`, both in the state's [`KvFormat`].
    Host { k: KvBuf, v: KvBuf },
    /// Any other device or dtype: candle tensors `[kv_heads, slots, head_dim]`.
    Device { k: Tensor, v: Tensor },
}

/// One layer's slot buffer.
pub struct LayerState {
    pub(crate) kv: Kv,
    pub(crate) num_kv_heads: usize,
    pub(crate) head_dim: usize,
    dtype: DType,
    device: Device,
    pub(crate) positions: Vec<u64>,
    pub(crate) live: Vec<bool>,
    /// Free slots, kept sorted descending so `pop` hands out the lowest index (keeps slots compact).
    pub(crate) free: Vec<usize>,
    /// Live slots in position order: ranks for [`Positions::Cache`].
    pub(crate) order: Vec<usize>,
    /// One past the highest live slot: attention only looks at `[0, high)`.
    pub(crate) high: usize,
    pub(crate) n_live: usize,
    pub(crate) capacity: Capacity,
    pub(crate) window: Option<usize>,
    pub(crate) rope: Option<Rope>,
    pub(crate) mode: Positions,
    /// Layer index, for observations and error messages.
    pub(crate) index: usize,
    /// A per-head layer: one single-head layer per KV head, each with its own slots (the memory
    /// of an evicted entry is its head's to reuse), and this layer's own buffers empty. Empty for
    /// a layer whose KV heads keep the same tokens.
    pub(crate) heads: Vec<LayerState>,
    /// The most entries one KV head of a per-head layer may keep; 0 for a shared layer.
    pub(crate) head_capacity: usize,
}

const UNBOUNDED_INITIAL_SLOTS: usize = 256;

impl LayerState {
    /// A layer without rotary embedding (keys arrive as they are to be compared): what tests and
    /// policy benchmarks use. Models build their layers through [`MsrnnState::new`].
    pub fn new(
        num_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
        capacity: Capacity,
        window: Option<usize>,
        max_chunk: usize,
    ) -> Result<Self> {
        let mode = Positions::Absolute;
        Self::build(num_kv_heads, head_dim, dtype, device, capacity, window, max_chunk, None, mode, KvFormat::F32)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        num_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
        capacity: Capacity,
        window: Option<usize>,
        max_chunk: usize,
        rope: Option<RopeSpec>,
        mode: Positions,
        format: KvFormat,
    ) -> Result<Self> {
        if window == Some(0) {
            return Err(Error::InvalidCapacity("a model window must be at least 1 token".into()));
        }
        if num_kv_heads == 0 || head_dim == 0 {
            return Err(Error::Input(format!(
                "a layer needs KV heads and a head size, got {num_kv_heads} x {head_dim}"
            )));
        }
        if rope.is_some() && !head_dim.is_multiple_of(2) {
            return Err(Error::Input(format!("rotary embeddings need an even head size, got {head_dim}")));
        }
        let slots = match capacity {
            Capacity::Bounded(c) => c.checked_add(max_chunk.max(1)),
            Capacity::Unbounded => Some(UNBOUNDED_INITIAL_SLOTS.max(max_chunk)),
        }
        .and_then(|s| s.checked_next_multiple_of(KEY_BLOCK))
        .ok_or_else(|| Error::InvalidCapacity(format!("capacity {capacity} plus a chunk of {max_chunk} overflows")))?;
        let host = device.is_cpu() && dtype == DType::F32;
        num_kv_heads
            .checked_mul(slots)
            .and_then(|x| x.checked_mul(format.row_bytes(head_dim)))
            .ok_or_else(|| Error::InvalidCapacity(format!("{slots} slots of {num_kv_heads} x {head_dim} overflow")))?;
        let (kv, dtype) = if host {
            let zeros = || try_buf(format, num_kv_heads, slots, head_dim);
            (Kv::Host { k: zeros()?, v: zeros()? }, dtype)
        } else {
            let dtype = match format {
                KvFormat::F32 => dtype,
                KvFormat::F16 => DType::F16,
                KvFormat::Q8_0 => {
                    return Err(Error::Input(format!(
                        "q8_0 keys and values need the CPU kernels (an f32 model on the CPU), not {dtype:?} on \
                         {device:?}"
                    )))
                }
            };
            let zeros = || Tensor::zeros((num_kv_heads, slots, head_dim), dtype, device);
            (Kv::Device { k: zeros()?, v: zeros()? }, dtype)
        };
        Ok(Self {
            kv,
            num_kv_heads,
            head_dim,
            dtype,
            device: device.clone(),
            positions: vec![0; slots],
            live: vec![false; slots],
            free: (0..slots).rev().collect(),
            order: Vec::new(),
            high: 0,
            n_live: 0,
            capacity,
            window,
            rope: rope.map(|r| Rope::new(head_dim, r)),
            mode,
            index: 0,
            heads: Vec::new(),
            head_capacity: 0,
        })
    }

    /// A per-head layer without rotary embedding (tests and benchmarks): each of `num_kv_heads`
    /// heads keeps its own tokens, at most `head_capacity` of them, the layer `capacity x
    /// num_kv_heads` entries in all.
    #[allow(clippy::too_many_arguments)]
    pub fn per_head(
        num_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
        capacity: Capacity,
        head_capacity: usize,
        window: Option<usize>,
        max_chunk: usize,
    ) -> Result<Self> {
        let (mode, f32) = (Positions::Absolute, KvFormat::F32);
        let shape = (num_kv_heads, head_dim, dtype, device);
        Self::build_per_head(shape, capacity, head_capacity, window, max_chunk, None, mode, f32)
    }

    /// A per-head layer: the checks of [`Self::build`], then one single-head layer of
    /// `head_capacity` per KV head, and this layer's own buffers empty.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build_per_head(
        (num_kv_heads, head_dim, dtype, device): (usize, usize, DType, &Device),
        capacity: Capacity,
        head_capacity: usize,
        window: Option<usize>,
        max_chunk: usize,
        rope: Option<RopeSpec>,
        mode: Positions,
        format: KvFormat,
    ) -> Result<Self> {
        let Capacity::Bounded(c) = capacity else {
            return Err(Error::InvalidCapacity("a per-head layer needs a bounded capacity".into()));
        };
        if head_capacity < c || head_capacity > c.saturating_mul(num_kv_heads) {
            return Err(Error::InvalidCapacity(format!(
                "a KV head may keep {head_capacity} entries, outside {c}..={} (C .. C x {num_kv_heads} KV heads)",
                c.saturating_mul(num_kv_heads)
            )));
        }
        if !(device.is_cpu() && dtype == DType::F32) {
            return Err(Error::Input(format!(
                "per-head layers run on the CPU kernels (an f32 model on the CPU), not {dtype:?} on {device:?}"
            )));
        }
        let one = Capacity::Bounded(head_capacity);
        let heads = (0..num_kv_heads)
            .map(|_| Self::build(1, head_dim, dtype, device, one, window, max_chunk, rope, mode, format))
            .collect::<Result<Vec<_>>>()?;
        let mut layer =
            Self::build(num_kv_heads, head_dim, dtype, device, Capacity::Bounded(1), window, 1, rope, mode, format)?;
        layer.kv =
            Kv::Host { k: try_buf(format, num_kv_heads, 0, head_dim)?, v: try_buf(format, num_kv_heads, 0, head_dim)? };
        (layer.positions, layer.live, layer.free) = (Vec::new(), Vec::new(), Vec::new());
        layer.capacity = capacity;
        layer.heads = heads;
        layer.head_capacity = head_capacity;
        Ok(layer)
    }

    /// Whether the layer would hold more than its policy may keep after `extra` more tokens: more
    /// than C (a shared layer), or more than C x kv_heads entries or a head above its head capacity
    /// (a per-head layer). When it is, the policy must decide.
    pub(crate) fn over_budget(&self, extra: usize) -> bool {
        let c = self.capacity.budget();
        if !self.is_per_head() {
            return self.n_live.saturating_add(extra) > c;
        }
        let entries = self.heads.iter().map(|h| h.n_live + extra).sum::<usize>();
        entries > c.saturating_mul(self.heads.len()) || self.heads.iter().any(|h| h.n_live + extra > self.head_capacity)
    }

    /// Whether each KV head keeps its own tokens.
    pub fn is_per_head(&self) -> bool {
        !self.heads.is_empty()
    }
    /// The most entries one KV head may keep (per-head layers), `None` for a shared layer.
    pub fn head_capacity(&self) -> Option<usize> {
        self.is_per_head().then_some(self.head_capacity)
    }
    /// Tokens kept by each KV head (all equal in a shared layer).
    pub fn head_live_counts(&self) -> Vec<usize> {
        if self.is_per_head() {
            self.heads.iter().map(|h| h.n_live).collect()
        } else {
            vec![self.n_live; self.num_kv_heads]
        }
    }
    /// Every slot's position and liveness, per KV head end to end in a per-head layer (each head's
    /// table padded to the largest head's slots): what state files store.
    pub(crate) fn slot_table(&self) -> (Vec<u64>, Vec<bool>) {
        if !self.is_per_head() {
            return (self.positions.clone(), self.live.clone());
        }
        let n = self.num_slots();
        let (mut pos, mut live) = (Vec::with_capacity(n * self.heads.len()), Vec::with_capacity(n * self.heads.len()));
        for h in &self.heads {
            pos.extend(h.positions.iter().copied().chain(std::iter::repeat(0)).take(n));
            live.extend(h.live.iter().copied().chain(std::iter::repeat(false)).take(n));
        }
        (pos, live)
    }
    /// Absolute positions kept by KV head `head`, ascending.
    pub fn head_live_positions(&self, head: usize) -> Vec<u64> {
        match self.heads.get(head) {
            Some(h) => h.live_positions(),
            None if head < self.num_kv_heads => self.live_positions(),
            None => Vec::new(),
        }
    }

    fn try_clone(&self) -> Result<Self> {
        let kv = match &self.kv {
            Kv::Host { k, v } => {
                // The layer's own slots (none in a per-head layer, whose heads copy theirs).
                let (h, n, d) = (self.num_kv_heads, self.live.len(), self.head_dim);
                let copy = |b: &KvBuf| b.grown(h, n, n, d).map_err(|_| self.alloc_error(n));
                Kv::Host { k: copy(k)?, v: copy(v)? }
            }
            Kv::Device { k, v } => Kv::Device { k: k.copy()?, v: v.copy()? },
        };
        Ok(Self {
            kv,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            dtype: self.dtype,
            device: self.device.clone(),
            positions: self.positions.clone(),
            live: self.live.clone(),
            free: self.free.clone(),
            order: self.order.clone(),
            high: self.high,
            n_live: self.n_live,
            capacity: self.capacity,
            window: self.window,
            rope: self.rope.clone(),
            mode: self.mode,
            index: self.index,
            heads: self.heads.iter().map(Self::try_clone).collect::<Result<_>>()?,
            head_capacity: self.head_capacity,
        })
    }

    /// Gives the layer a rotary embedding applied in `mode` (for layers built with [`Self::new`]).
    pub fn with_rope(mut self, spec: RopeSpec, mode: Positions) -> Result<Self> {
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::Input(format!("rotary embeddings need an even head size, got {}", self.head_dim)));
        }
        self.rope = Some(Rope::new(self.head_dim, spec));
        self.mode = mode;
        Ok(self)
    }

    /// Keeps the buffers as candle tensors even on the CPU, so tests run the path other devices
    /// take.
    #[doc(hidden)]
    pub fn with_tensor_buffers(mut self) -> Result<Self> {
        if self.is_host() {
            if self.kv_format() != KvFormat::F32 {
                return Err(Error::Input(format!("tensor buffers hold f32 keys, not {}", self.kv_format())));
            }
            let (k, v) = self.kv()?;
            self.kv = Kv::Device { k, v };
        }
        Ok(self)
    }

    /// Allocated slots (live or free); per KV head in a per-head layer (the largest head's).
    pub fn num_slots(&self) -> usize {
        self.heads.iter().map(LayerState::num_slots).max().unwrap_or(self.live.len())
    }
    /// Tokens currently kept; in a per-head layer, the entries of all heads over the number of
    /// heads, rounded up (the per-head budget's measure).
    pub fn live_count(&self) -> usize {
        if self.is_per_head() {
            self.heads.iter().map(|h| h.n_live).sum::<usize>().div_ceil(self.heads.len())
        } else {
            self.n_live
        }
    }
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }
    pub fn window(&self) -> Option<usize> {
        self.window
    }
    pub fn positions_mode(&self) -> Positions {
        self.mode
    }
    pub fn num_kv_heads(&self) -> usize {
        self.num_kv_heads
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Whether the buffers are host memory read by the fused CPU kernels.
    pub fn is_host(&self) -> bool {
        matches!(self.kv, Kv::Host { .. })
    }
    /// How keys and values are stored (device tensors: f32 for any float dtype but f16).
    pub fn kv_format(&self) -> KvFormat {
        match &self.kv {
            Kv::Host { k, .. } => k.format(),
            Kv::Device { .. } if self.dtype == DType::F16 => KvFormat::F16,
            Kv::Device { .. } => KvFormat::F32,
        }
    }
    /// Absolute positions of the kept tokens, ascending (kept by any head in a per-head layer).
    pub fn live_positions(&self) -> Vec<u64> {
        if self.is_per_head() {
            let mut all: Vec<u64> = self.heads.iter().flat_map(LayerState::live_positions).collect();
            all.sort_unstable();
            all.dedup();
            return all;
        }
        self.order.iter().map(|&s| self.positions[s]).collect()
    }
    pub fn slot_positions(&self) -> &[u64] {
        &self.positions
    }
    pub fn slot_live(&self) -> &[bool] {
        &self.live
    }
    /// Keys and values as stored (rotated in absolute mode, unrotated in cache mode), as tensors
    /// `[kv_heads, slots, head_dim]` on the state's device (dead slots hold stale data). A copy for
    /// host buffers.
    pub fn kv(&self) -> Result<(Tensor, Tensor)> {
        if self.is_per_head() {
            let n = self.num_slots();
            let (mut ks, mut vs) = (Vec::new(), Vec::new());
            for h in &self.heads {
                let (k, v) = h.kv()?;
                let pad = |t: Tensor| t.pad_with_zeros(1, 0, n - h.num_slots());
                ks.push(pad(k)?);
                vs.push(pad(v)?);
            }
            return Ok((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?));
        }
        match &self.kv {
            Kv::Device { k, v } => Ok((k.clone(), v.clone())),
            Kv::Host { v, .. } => {
                let shape = (self.num_kv_heads, self.num_slots(), self.head_dim);
                Ok((
                    Tensor::from_vec(self.keys_host(), shape, &Device::Cpu)?,
                    Tensor::from_vec(v.to_f32(self.head_dim), shape, &Device::Cpu)?,
                ))
            }
        }
    }
    /// Keys as stored (dequantized to f32), `[kv_heads, slots, head_dim]` row-major on the host
    /// (host buffers only).
    pub(crate) fn keys_host(&self) -> Vec<f32> {
        let Kv::Host { k, .. } = &self.kv else { return Vec::new() };
        let (slots, d) = (self.num_slots(), self.head_dim);
        let mut out = vec![0f32; self.num_kv_heads * slots * d];
        for g in 0..self.num_kv_heads {
            for s in 0..slots {
                k.read_key(slots, g, s, &mut out[(g * slots + s) * d..][..d]);
            }
        }
        out
    }
    /// Keys and values exactly as stored, as rows `[kv_heads, slots, head_dim]` in the state's
    /// format (what state files hold); device tensors come back as f32 or f16 rows.
    pub(crate) fn kv_rows(&self) -> Result<(KvBuf, KvBuf)> {
        if self.is_per_head() {
            // Every head's rows padded to the largest head's slots, heads end to end.
            let (n, d) = (self.num_slots(), self.head_dim);
            let (mut ks, mut vs) = (Vec::new(), Vec::new());
            for h in &self.heads {
                let (k, v) = h.kv_rows()?;
                let grow = |b: KvBuf| b.grown(1, h.num_slots(), n, d).map_err(|_| self.alloc_error(n));
                ks.push(grow(k)?);
                vs.push(grow(v)?);
            }
            let join = |parts: &[KvBuf]| KvBuf::concat(parts).ok_or_else(|| self.alloc_error(n));
            return Ok((join(&ks)?, join(&vs)?));
        }
        match &self.kv {
            Kv::Host { k, v } => {
                let (h, n, d) = (self.num_kv_heads, self.num_slots(), self.head_dim);
                let k = k.keys_to_rows(h, n, d).map_err(|_| self.alloc_error(n))?;
                Ok((k, v.grown(h, n, n, d).map_err(|_| self.alloc_error(n))?))
            }
            Kv::Device { k, v } => {
                let rows = |t: &Tensor| -> Result<KvBuf> {
                    let t = t.flatten_all()?;
                    Ok(match self.kv_format() {
                        KvFormat::F16 => KvBuf::F16(t.to_vec1::<half::f16>()?),
                        _ => KvBuf::F32(t.to_dtype(DType::F32)?.to_vec1::<f32>()?),
                    })
                };
                Ok((rows(k)?, rows(v)?))
            }
        }
    }
    /// Bytes of one token's keys and values in this layer.
    fn token_bytes(&self) -> usize {
        let row = match &self.kv {
            Kv::Host { k, .. } => k.format().row_bytes(self.head_dim),
            Kv::Device { .. } => self.head_dim * self.dtype.size_in_bytes(),
        };
        2 * self.num_kv_heads * row
    }
    /// Bytes of key/value data held by live tokens (in the storage format: f16 halves f32).
    pub fn live_kv_bytes(&self) -> usize {
        self.n_live * self.token_bytes() + self.heads.iter().map(LayerState::live_kv_bytes).sum::<usize>()
    }
    /// Bytes allocated for the slot buffers (live + free slots).
    pub fn allocated_kv_bytes(&self) -> usize {
        self.live.len() * self.token_bytes() + self.heads.iter().map(LayerState::allocated_kv_bytes).sum::<usize>()
    }
    fn alloc_error(&self, slots: usize) -> Error {
        let bytes = (slots * self.token_bytes()) as u64;
        Error::InvalidCapacity(format!("cannot allocate {} of key/value slots", crate::util::human_bytes(bytes)))
    }

    /// Drops every token (a new sequence starts); keeps the allocation.
    pub fn clear(&mut self) {
        self.heads.iter_mut().for_each(LayerState::clear);
        self.live.iter_mut().for_each(|l| *l = false);
        self.free = (0..self.live.len()).rev().collect();
        self.order.clear();
        self.high = 0;
        self.n_live = 0;
    }

    /// Frees the given slots (already validated).
    pub(crate) fn evict(&mut self, slots: &[usize]) {
        if slots.is_empty() {
            return;
        }
        for &s in slots {
            debug_assert!(self.live[s]);
            self.live[s] = false;
            self.free.push(s);
        }
        self.n_live -= slots.len();
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        self.order.retain(|&s| self.live[s]);
        while self.high > 0 && !self.live[self.high - 1] {
            self.high -= 1;
        }
    }

    /// Drops tokens no future query can see through the model's own sliding window: a query at
    /// `next_pos` sees keys at `p` with `next_pos - p < window`.
    pub(crate) fn drop_outside_window(&mut self, next_pos: u64) {
        self.heads.iter_mut().for_each(|h| h.drop_outside_window(next_pos));
        let Some(w) = self.window else { return };
        let w = w as u64;
        let old: Vec<usize> =
            (0..self.high).filter(|&s| self.live[s] && next_pos.saturating_sub(self.positions[s]) >= w).collect();
        self.evict(&old);
    }

    /// Grows the buffers so that at least `need` slots are free (amortised doubling, whole blocks).
    fn reserve(&mut self, need: usize) -> Result<()> {
        if self.free.len() >= need {
            return Ok(());
        }
        let old = self.num_slots();
        let new = (old * 2).max(old + need - self.free.len()).next_multiple_of(KEY_BLOCK);
        let (h, d) = (self.num_kv_heads, self.head_dim);
        match &mut self.kv {
            Kv::Host { k, v } => {
                // Blocks of one head are contiguous, so a head moves in one copy.
                let bytes = 2 * new * h * k.format().row_bytes(d);
                let fail = |_| {
                    let size = crate::util::human_bytes(bytes as u64);
                    Error::InvalidCapacity(format!("cannot allocate {size} of key/value slots"))
                };
                let (k2, v2) = (k.grown(h, old, new, d).map_err(fail)?, v.grown(h, old, new, d).map_err(fail)?);
                (*k, *v) = (k2, v2);
            }
            Kv::Device { k, v } => {
                for buf in [k, v] {
                    let bigger = Tensor::zeros((h, new, d), buf.dtype(), buf.device())?;
                    bigger.slice_set(buf, 1, 0)?;
                    *buf = bigger;
                }
            }
        }
        self.positions.resize(new, 0);
        self.live.resize(new, false);
        self.free.extend(old..new);
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        tracing::debug!(old, new, "grew layer state");
        Ok(())
    }

    /// Takes `t` free slots for tokens at `positions` (marked live) and returns them in token order.
    pub(crate) fn alloc(&mut self, positions: &[u64]) -> Result<Vec<usize>> {
        let t = positions.len();
        self.reserve(t)?;
        let slots: Vec<usize> = (0..t).map(|_| self.free.pop().expect("reserved")).collect();
        for (&s, &p) in slots.iter().zip(positions) {
            self.positions[s] = p;
            self.live[s] = true;
            self.high = self.high.max(s + 1);
            // Positions only grow in a stream, so this is a push; a caller feeding older
            // positions still gets a sorted order.
            let at = self.order.partition_point(|&o| self.positions[o] < p);
            self.order.insert(at, s);
        }
        self.n_live += t;
        Ok(slots)
    }

    /// Writes one token's key and value rows (`[kv_heads * head_dim]` each) into a host slot.
    pub(crate) fn write_host(&mut self, slot: usize, key: &[f32], value: &[f32]) {
        let (slots, d) = (self.num_slots(), self.head_dim);
        let Kv::Host { k, v } = &mut self.kv else { unreachable!("host write on a device state") };
        for g in 0..self.num_kv_heads {
            k.write_key(slots, g, slot, &key[g * d..][..d]);
            v.write_value(slots, g, slot, &value[g * d..][..d]);
        }
    }

    /// Writes `[kv_heads, t, head_dim]` keys and values into device slots, one copy per run of
    /// consecutive slots.
    pub(crate) fn write_device(&mut self, slots: &[usize], kt: &Tensor, vt: &Tensor) -> Result<()> {
        let Kv::Device { k, v } = &mut self.kv else { unreachable!("device write on a host state") };
        let (kt, vt) = (kt.to_dtype(k.dtype())?, vt.to_dtype(k.dtype())?);
        let t = slots.len();
        let mut i = 0;
        while i < t {
            let mut j = i + 1;
            while j < t && slots[j] == slots[j - 1] + 1 {
                j += 1;
            }
            k.slice_set(&kt.narrow(1, i, j - i)?.contiguous()?, 1, slots[i])?;
            v.slice_set(&vt.narrow(1, i, j - i)?.contiguous()?, 1, slots[i])?;
            i = j;
        }
        Ok(())
    }

    /// Restores a layer from saved keys/values: rows `[kv_heads, slots, head_dim]` of `slots`
    /// slots per head in the layer's format (keys as stored); used by state files.
    pub(crate) fn restore(&mut self, k: KvBuf, v: KvBuf, positions: Vec<u64>, live: Vec<bool>) -> Result<()> {
        if self.is_per_head() {
            // Heads end to end, each padded to the same slots (what `kv_rows` wrote).
            let n = self.heads.len();
            let (ks, vs) = match (k.split(n), v.split(n)) {
                (Some(k), Some(v)) if positions.len().is_multiple_of(n) && live.len() == positions.len() => (k, v),
                _ => return Err(Error::StateFile(format!("per-head layer data does not split over {n} KV heads"))),
            };
            let per = positions.len() / n;
            for (h, (head, (k, v))) in self.heads.iter_mut().zip(ks.into_iter().zip(vs)).enumerate() {
                let (p, l) = (positions[h * per..][..per].to_vec(), live[h * per..][..per].to_vec());
                head.restore(k, v, p, l)?;
            }
            return Ok(());
        }
        let (h, d) = (self.num_kv_heads, self.head_dim);
        let slots = positions.len();
        let fits = |b: &KvBuf| {
            b.format() == self.kv_format()
                && b.view().holds(h * slots, d)
                && b.bytes() == h * slots * b.format().row_bytes(d)
        };
        if live.len() != slots || !fits(&k) || !fits(&v) {
            return Err(Error::StateFile("layer tensors and slot metadata disagree in size".into()));
        }
        match &mut self.kv {
            Kv::Device { k: sk, v: sv } => {
                let tensor = |b: &KvBuf| -> Result<Tensor> {
                    let t = match b {
                        KvBuf::F32(x) => Tensor::from_slice(x, (h, slots, d), &Device::Cpu)?,
                        KvBuf::F16(x) => Tensor::from_slice(x, (h, slots, d), &Device::Cpu)?,
                        KvBuf::Q8_0 { .. } => unreachable!("device states hold no q8_0"),
                    };
                    Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?.contiguous()?)
                };
                (*sk, *sv) = (tensor(&k)?, tensor(&v)?);
            }
            Kv::Host { k: sk, v: sv } => {
                // Host buffers come in whole key blocks; pad the saved slots with free ones.
                let padded = slots.next_multiple_of(KEY_BLOCK);
                let fail = |_| Error::InvalidCapacity(format!("cannot allocate {padded} key/value slots"));
                let kb = k.rows_to_keys(h, slots, padded, d).map_err(fail)?;
                let vb = v.grown(h, slots, padded, d).map_err(fail)?;
                (*sk, *sv) = (kb, vb);
            }
        }
        let total = match &self.kv {
            Kv::Host { .. } => slots.next_multiple_of(KEY_BLOCK),
            Kv::Device { .. } => slots,
        };
        self.positions = positions;
        self.live = live;
        self.positions.resize(total, 0);
        self.live.resize(total, false);
        self.n_live = self.live.iter().filter(|&&l| l).count();
        self.free = (0..total).rev().filter(|&s| !self.live[s]).collect();
        self.high = (0..total).rev().find(|&s| self.live[s]).map_or(0, |s| s + 1);
        self.order = (0..total).filter(|&s| self.live[s]).collect();
        self.order.sort_by_key(|&s| self.positions[s]);
        if self.order.windows(2).any(|w| self.positions[w[0]] == self.positions[w[1]]) {
            return Err(Error::StateFile("two live slots hold the same position".into()));
        }
        Ok(())
    }
}

/// A zeroed host buffer, or an error naming its size when memory runs out (never an abort).
fn try_buf(format: KvFormat, heads: usize, slots: usize, d: usize) -> Result<KvBuf> {
    KvBuf::zeros(format, heads, slots, d).map_err(|_| {
        let bytes = (heads * slots * format.row_bytes(d)) as u64;
        Error::InvalidCapacity(format!("cannot allocate {} of key/value slots", crate::util::human_bytes(bytes)))
    })
}

/// All layers' states plus their policies: the whole hidden state of the finite MSRNN.
pub struct MsrnnState {
    pub(crate) layers: Vec<LayerState>,
    pub(crate) policies: Vec<Box<dyn Policy>>,
    tokens_seen: u64,
    capacity: Capacity,
    positions: Positions,
    kv: KvFormat,
}

impl MsrnnState {
    /// One policy per layer (the registry's `create_layers` makes them).
    pub fn new(cfg: &StateConfig, policies: Vec<Box<dyn Policy>>) -> Result<Self> {
        let n = cfg.num_layers;
        if policies.len() != n {
            return Err(Error::Input(format!("{} policies for {n} layers", policies.len())));
        }
        if cfg.windows.len() != n || cfg.ropes.len() != n {
            return Err(Error::Input(format!(
                "{} layer windows and {} rotary specs for {n} layers",
                cfg.windows.len(),
                cfg.ropes.len()
            )));
        }
        if let Capacity::Bounded(0) = cfg.capacity {
            return Err(Error::InvalidCapacity("capacity must be at least 1 token".into()));
        }
        let capacities = layer_capacities(cfg.capacity, &policies)?;
        let layers = (0..n)
            .zip(capacities)
            .map(|(i, capacity)| {
                if let Some(hc) = policies[i].head_capacity() {
                    let shape = (cfg.num_kv_heads, cfg.head_dim, cfg.dtype, &cfg.device);
                    let (w, chunk, rope) = (cfg.windows[i], cfg.max_chunk, cfg.ropes[i]);
                    let mut l = LayerState::build_per_head(shape, capacity, hc, w, chunk, rope, cfg.positions, cfg.kv)
                        .map_err(|e| {
                            let named = |m| format!("policy `{}` on layer {i}: {m}", policies[i].name());
                            match e {
                                Error::InvalidCapacity(m) => Error::InvalidCapacity(named(m)),
                                Error::Input(m) => Error::Input(named(m)),
                                e => e,
                            }
                        })?;
                    l.index = i;
                    return Ok(l);
                }
                let mut l = LayerState::build(
                    cfg.num_kv_heads,
                    cfg.head_dim,
                    cfg.dtype,
                    &cfg.device,
                    capacity,
                    cfg.windows[i],
                    cfg.max_chunk,
                    cfg.ropes[i],
                    cfg.positions,
                    cfg.kv,
                )?;
                l.index = i;
                Ok(l)
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers, policies, tokens_seen: 0, capacity: cfg.capacity, positions: cfg.positions, kv: cfg.kv })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }
    pub fn positions_mode(&self) -> Positions {
        self.positions
    }
    /// How keys and values are stored.
    pub fn kv_format(&self) -> KvFormat {
        self.kv
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
    /// Whether every layer keeps host buffers for the fused CPU kernels.
    pub fn is_host(&self) -> bool {
        self.layers.iter().all(LayerState::is_host)
    }

    /// Absolute positions for the next `t` tokens.
    pub fn next_positions(&self, t: usize) -> Vec<u64> {
        (self.tokens_seen..self.tokens_seen + t as u64).collect()
    }

    /// Marks `t` tokens as consumed; the adapter calls it once every layer has attended.
    pub fn advance(&mut self, t: usize) {
        self.tokens_seen += t as u64;
    }

    /// Runs [`crate::attend`] on layer `i` with that layer's policy (head-major tensors, keys and
    /// queries unrotated when the layer has a rotary embedding).
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

    pub(crate) fn layer_and_policy(&mut self, i: usize) -> (&mut LayerState, &mut dyn Policy) {
        (&mut self.layers[i], self.policies[i].as_mut())
    }

    /// Largest live count over layers.
    pub fn max_live(&self) -> usize {
        self.layers.iter().map(LayerState::live_count).max().unwrap_or(0)
    }
    /// Key/value bytes held by live tokens, all layers.
    pub fn live_kv_bytes(&self) -> usize {
        self.layers.iter().map(LayerState::live_kv_bytes).sum()
    }
    /// Key/value bytes allocated, all layers.
    pub fn allocated_kv_bytes(&self) -> usize {
        self.layers.iter().map(LayerState::allocated_kv_bytes).sum()
    }

    /// An exact copy of this state with `policies` (fresh instances of the same policy, e.g. from
    /// the registry's `create_layers`) carrying this state's policy bookkeeping: what a batch of
    /// sequences forked from one prefilled prompt starts from.
    pub fn clone_with(&self, mut policies: Vec<Box<dyn Policy>>) -> Result<Self> {
        if policies.len() != self.policies.len() {
            return Err(Error::Input(format!("{} policies for {} layers", policies.len(), self.policies.len())));
        }
        for (new, old) in policies.iter_mut().zip(&self.policies) {
            if new.name() != old.name() {
                return Err(Error::Input(format!(
                    "cannot clone a `{}` state with `{}` policies",
                    old.name(),
                    new.name()
                )));
            }
            new.load_state(&old.save_state())?;
        }
        let layers = self.layers.iter().map(LayerState::try_clone).collect::<Result<_>>()?;
        Ok(Self {
            layers,
            policies,
            tokens_seen: self.tokens_seen,
            capacity: self.capacity,
            positions: self.positions,
            kv: self.kv,
        })
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
