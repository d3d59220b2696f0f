//! The fused CPU attention step over one layer's slot buffers: grouped-query attention without
//! repeating K/V, the causal mask and a model window from slot positions, softmax, the weighted sum
//! of values, and the probability rows a policy asked for, written straight into its buffer.
//!
//! Keys are stored slot-interleaved in blocks of [`KEY_BLOCK`] slots (`[kv_heads][blocks][head_dim]
//! [KEY_BLOCK]`), so one vector multiply-add per head dimension scores sixteen slots at once with no
//! horizontal sums; values stay `[kv_heads][slots][head_dim]`, read one row per slot.
//!
//! The arithmetic is written once (`kernel.rs`), generic over the crate's 16-lane vector
//! ([`crate::simd::Simd`]), whose implementations perform the same IEEE operations in the same order,
//! so AVX2 and AVX-512 agree bit for bit; the portable fallback matches them too where its baseline
//! has FMA (aarch64). Stored key/value elements (f32, f16, `q8_0` codes) are `elem.rs`'s `Elem`. The
//! tests (`tests.rs`) hold every variant to an f64 reference and the SIMD variants to each other
//! exactly.

use std::ops::Range;

use half::f16;

use crate::kv::KvSlice;
use crate::rope::RopeStyle;
use crate::simd::{exp_lane, Lanes, L};
use elem::Elem;
use kernel::rows_kv_head;

mod elem;
mod kernel;
#[cfg(test)]
mod tests;

/// Slots per key block (the buffers' slot count must be a multiple of it).
pub const KEY_BLOCK: usize = L;

/// Index of element `i` of the key of KV head `g`, slot `s`, in a blocked key buffer of `slots`
/// slots per head.
#[inline]
pub fn key_index(slots: usize, head_dim: usize, g: usize, s: usize, i: usize) -> usize {
    ((g * (slots / KEY_BLOCK) + s / KEY_BLOCK) * head_dim + i) * KEY_BLOCK + s % KEY_BLOCK
}

/// Writes one key (`head_dim` values) into a blocked key buffer.
pub fn write_key(buf: &mut [f32], slots: usize, g: usize, s: usize, key: &[f32]) {
    let d = key.len();
    let base = key_index(slots, d, g, s, 0);
    for (i, &x) in key.iter().enumerate() {
        buf[base + i * KEY_BLOCK] = x;
    }
}

/// Reads one key back out of a blocked key buffer.
pub fn read_key(buf: &[f32], slots: usize, g: usize, s: usize, key: &mut [f32]) {
    let d = key.len();
    let base = key_index(slots, d, g, s, 0);
    for (i, x) in key.iter_mut().enumerate() {
        *x = buf[base + i * KEY_BLOCK];
    }
}

pub use crate::isa::Isa;

/// One layer's attention step for `t = q_pos.len()` query rows.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// Queries (already rotated): row `r`, head `h` at `q[r * q_stride + h * head_dim..][..head_dim]`.
    pub q: &'a [f32],
    pub q_stride: usize,
    /// Absolute position of each query row, for the causal mask and the window.
    pub q_pos: &'a [u64],
    /// Keys, blocked (see [`key_index`]); values `[num_kv_heads, slots, head_dim]`; both in one
    /// format ([`crate::kv`]), read as stored and converted in registers. Only slots `[0, hi)` count.
    pub k: KvSlice<'a>,
    pub v: KvSlice<'a>,
    /// Slots per KV head in both buffers, a multiple of [`KEY_BLOCK`].
    pub slots: usize,
    pub hi: usize,
    /// Absolute position and liveness of each slot (`[0, hi)` at least).
    pub slot_pos: &'a [u64],
    pub live: &'a [bool],
    /// A model window: a query at `p` sees keys at `p'` with `p - p' < window`.
    pub window: Option<u64>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Keys stored unrotated (cache mode): each key block is rotated by these angles right before
    /// it is scored, in registers, instead of rotating the whole buffer into a copy first.
    pub key_angles: Option<KeyAngles<'a>>,
}

/// The rotation of every key block: `cos`/`sin` as [`crate::rope::block_angles`] lays them out
/// (`[blocks][d/2][16]`), and how the head's dimensions pair up.
#[derive(Debug, Clone, Copy)]
pub struct KeyAngles<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub style: RopeStyle,
}

impl Step<'_> {
    fn rows(&self) -> usize {
        self.q_pos.len()
    }

    /// Whether the shapes and slices agree; the kernels index without further checks.
    pub fn check(&self, out_len: usize, out_stride: usize, probs_len: usize, prob_rows: usize) -> Result<(), String> {
        let (t, h, g, d) = (self.rows(), self.num_heads, self.num_kv_heads, self.head_dim);
        let fail = |what: String| Err(format!("attention step: {what}"));
        if g == 0 || h % g != 0 || d == 0 {
            return fail(format!("{h} query heads cannot share {g} KV heads of size {d}"));
        }
        if t == 0 || self.q_stride < h * d || self.q.len() < (t - 1) * self.q_stride + h * d {
            return fail(format!("{} query values for {t} rows of stride {}", self.q.len(), self.q_stride));
        }
        let rows = g * self.slots;
        if !self.slots.is_multiple_of(KEY_BLOCK)
            || self.hi > self.slots
            || !self.k.holds(rows, d)
            || !self.v.holds(rows, d)
        {
            return fail(format!(
                "hi {} over {} slots: keys or values shorter than {rows} rows of {d}",
                self.hi, self.slots
            ));
        }
        if self.k.format() != self.v.format() {
            return fail(format!("keys in {} but values in {}", self.k.format(), self.v.format()));
        }
        if self.slot_pos.len() < self.hi || self.live.len() < self.hi {
            return fail("slot positions or liveness shorter than hi".into());
        }
        if out_stride < h * d || out_len < (t - 1) * out_stride + h * d {
            return fail(format!("{out_len} output values for {t} rows of stride {out_stride}"));
        }
        if prob_rows > t || probs_len < prob_rows * h * self.hi {
            return fail(format!("{probs_len} probability values for {prob_rows} rows of {h} x {}", self.hi));
        }
        if let Some(a) = self.key_angles {
            let want = self.hi.div_ceil(KEY_BLOCK) * (d / 2) * KEY_BLOCK;
            if d % 2 != 0 || a.cos.len() < want || a.sin.len() < want {
                return fail(format!(
                    "key angles for head size {d}: {} and {} of {want} values",
                    a.cos.len(),
                    a.sin.len()
                ));
            }
        }
        Ok(())
    }
}

/// Where the results go: `out` rows of `out_stride`, and the probabilities of the last `prob_rows`
/// query rows as `[prob_rows, num_heads, hi]` (0 for slots the row cannot see).
pub struct Sink<'a> {
    pub out: &'a mut [f32],
    pub out_stride: usize,
    pub probs: &'a mut [f32],
    pub prob_rows: usize,
}

/// Runs the whole step on the calling thread with the active variant ([`crate::isa::active`]).
pub fn attention(step: &Step<'_>, sink: Sink<'_>) -> Result<(), String> {
    attention_with(crate::isa::active(), step, sink, &|n, f| (0..n).for_each(f))
}

/// Query rows handled together: each key and value row is read once per block, not once per row.
const ROW_BLOCK: usize = 8;

/// Runs `f(i)` once for every `i < n`, on any threads (a thread pool's `for_each`).
pub type Parallel<'a> = &'a (dyn Fn(usize, &(dyn Fn(usize) + Sync)) + Sync);

/// Key slots per task when a step has a single block of query rows (a decode step). One task per
/// KV head would leave too few tasks for the threads (SmolLM2's three KV heads split 2:1 over two
/// threads); splitting the slots fixes that, and a fixed size keeps the results independent of the
/// thread count.
const SPLIT: usize = 512;

/// Runs the step as independent tasks through `parallel`: one per KV head and block of query rows,
/// or, for a single block over more than [`SPLIT`] slots, one per KV head and range of `SPLIT`
/// slots, whose partial softmaxes (max, sum, unnormalized output) are merged afterwards.
pub fn attention_with(isa: Isa, step: &Step<'_>, sink: Sink<'_>, parallel: Parallel<'_>) -> Result<(), String> {
    step.check(sink.out.len(), sink.out_stride, sink.probs.len(), sink.prob_rows)?;
    let t = step.rows();
    let g = step.num_kv_heads;
    let blocks = t.div_ceil(ROW_BLOCK);
    let width = step.hi.div_ceil(L) * L;
    let splits = if blocks == 1 { width.div_ceil(SPLIT) } else { 1 };
    let hi = step.hi;
    let mut dst = Dst {
        // A decode step over a hole-free state sees every slot: computed once, not per task.
        unmasked_from: step.slot_pos[..hi].iter().copied().max().unwrap_or(0),
        dense: !step.live[..hi].contains(&false),
        out: SyncPtr(sink.out.as_mut_ptr()),
        out_stride: sink.out_stride,
        probs: SyncPtr(sink.probs.as_mut_ptr()),
        prob_rows: sink.prob_rows,
        part: None,
    };
    if splits <= 1 {
        let task = |i: usize| {
            let (head, block) = (i % g, i / g);
            let rows = block * ROW_BLOCK..((block + 1) * ROW_BLOCK).min(t);
            // SAFETY: `check` validated the slice lengths; tasks write disjoint regions (their own KV
            // head's query heads in their own rows), and the slices outlive `parallel`.
            unsafe { run(isa, step, head, rows, 0..width, &dst) };
        };
        parallel(g * blocks, &task);
        return Ok(());
    }
    let part_len = step.num_heads * (step.head_dim + 2);
    let mut part = vec![0f32; splits * t * part_len];
    dst.part = Some(SyncPtr(part.as_mut_ptr()));
    let task = |i: usize| {
        let (head, c) = (i % g, i / g);
        // SAFETY: as above; each task writes its own part entries and its own slots' probabilities.
        unsafe { run(isa, step, head, 0..t, c * SPLIT..((c + 1) * SPLIT).min(width), &dst) };
    };
    parallel(g * splits, &task);
    merge(step, &part, splits, sink);
    Ok(())
}

/// Joins the split tasks' partial softmaxes: with `m_c`, `l_c`, `o_c` the max, sum of exponentials
/// and unnormalized output of range `c`, the row's result is `Σ_c w_c o_c / Σ_c w_c l_c` with
/// `w_c = exp(m_c - max_c m_c)`, and range `c`'s probabilities scale by `w_c / Σ_c w_c l_c`.
fn merge(step: &Step<'_>, part: &[f32], splits: usize, sink: Sink<'_>) {
    let (t, h, d, hi) = (step.rows(), step.num_heads, step.head_dim, step.hi);
    let part_len = h * (d + 2);
    for r in 0..t {
        for head in 0..h {
            let at = |c: usize| &part[(c * t + r) * part_len + head * (d + 2)..][..d + 2];
            let m = (0..splits).map(|c| at(c)[0]).fold(f32::NEG_INFINITY, f32::max);
            let w = |c: usize| if at(c)[0] == f32::NEG_INFINITY { 0.0 } else { exp_lane(at(c)[0] - m) };
            let z: f32 = (0..splits).map(|c| w(c) * at(c)[1]).sum();
            let o = &mut sink.out[r * sink.out_stride + head * d..][..d];
            o.fill(0.0);
            for c in 0..splits {
                let scale = w(c) / z;
                if scale == 0.0 {
                    continue;
                }
                for (o, &x) in o.iter_mut().zip(&at(c)[2..]) {
                    *o += scale * x;
                }
                if r + sink.prob_rows >= t {
                    let row = &mut sink.probs[((r + sink.prob_rows - t) * h + head) * hi..][..hi];
                    let range = c * SPLIT..((c + 1) * SPLIT).min(hi);
                    row[range].iter_mut().for_each(|p| *p *= scale);
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

/// Where a task writes: the step's outputs and probability rows, and with split slots the partial
/// softmaxes (`[split][row][head][max, sum, d outputs]`) in place of the outputs.
struct Dst {
    /// Every slot of `[0, hi)` is live, and a query at or past `unmasked_from` (the newest slot's
    /// position) sees them all when there is no window.
    dense: bool,
    unmasked_from: u64,
    out: SyncPtr,
    out_stride: usize,
    probs: SyncPtr,
    prob_rows: usize,
    part: Option<SyncPtr>,
}

/// Where a format's rows start: the codes (or values) and, for `q8_0`, their f16 scales.
#[derive(Clone, Copy)]
struct Src<E> {
    q: *const E,
    d: *const f16,
}

impl<E> Src<E> {
    fn plain(x: &[E]) -> Self {
        Src { q: x.as_ptr(), d: std::ptr::null() }
    }
}

/// One task: the query heads of KV head `g` for query rows `rows` over the key slots `slots`, reading keys and
/// values from `k`, `v` and writing to `dst`.
struct Task<'a, E> {
    step: &'a Step<'a>,
    g: usize,
    rows: Range<usize>,
    slots: Range<usize>,
    dst: &'a Dst,
    k: Src<E>,
    v: Src<E>,
}

unsafe fn run(isa: Isa, step: &Step<'_>, g: usize, rows: Range<usize>, slots: Range<usize>, dst: &Dst) {
    match (step.k, step.v) {
        (KvSlice::F32(k), KvSlice::F32(v)) => {
            run_f32(isa, &Task { step, g, rows, slots, dst, k: Src::plain(k), v: Src::plain(v) })
        }
        (KvSlice::F16(k), KvSlice::F16(v)) => {
            run_in(isa, &Task { step, g, rows, slots, dst, k: Src::plain(k), v: Src::plain(v) })
        }
        (KvSlice::Q8_0 { q: kq, d: kd }, KvSlice::Q8_0 { q: vq, d: vd }) => {
            let (k, v) = (Src { q: kq.as_ptr(), d: kd.as_ptr() }, Src { q: vq.as_ptr(), d: vd.as_ptr() });
            run_in(isa, &Task { step, g, rows, slots, dst, k, v })
        }
        _ => unreachable!("Step::check refuses keys and values in different formats"),
    }
}

unsafe fn run_in<E: Elem>(isa: Isa, task: &Task<'_, E>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => rows_avx2(task),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => rows_avx512(task),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => rows_neon(task),
        _ => rows_kv_head::<Lanes, E>(task),
    }
}

/// f32 keys and values through entry points without F16C: the f32 kernel keeps the target features
/// it had before the other formats (the f16 and q8_0 branches are compiled out of it).
unsafe fn run_f32(isa: Isa, task: &Task<'_, f32>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => rows_avx2_f32(task),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => rows_avx512_f32(task),
        _ => run_in(isa, task),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2_f32(task: &Task<'_, f32>) {
    rows_kv_head::<crate::simd::Avx2, f32>(task)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn rows_avx512_f32(task: &Task<'_, f32>) {
    rows_kv_head::<crate::simd::Avx512, f32>(task)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2<E: Elem>(task: &Task<'_, E>) {
    rows_kv_head::<crate::simd::Avx2, E>(task)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn rows_avx512<E: Elem>(task: &Task<'_, E>) {
    rows_kv_head::<crate::simd::Avx512, E>(task)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn rows_neon<E: Elem>(task: &Task<'_, E>) {
    rows_kv_head::<crate::simd::Neon, E>(task)
}
