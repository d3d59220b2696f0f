//! The fused CPU attention step over one layer's slot buffers: grouped-query attention without
//! repeating K/V, the causal mask and a model window from slot positions, softmax, the weighted sum
//! of values, and the probability rows a policy asked for, written straight into its buffer.
//!
//! Keys are stored slot-interleaved in blocks of [`KEY_BLOCK`] slots (`[kv_heads][blocks][head_dim]
//! [KEY_BLOCK]`), so one vector multiply-add per head dimension scores sixteen slots at once with no
//! horizontal sums; values stay `[kv_heads][slots][head_dim]`, read one row per slot.
//!
//! The arithmetic is written once, generic over a 16-lane vector (`Simd`) whose variants perform
//! the same IEEE operations in the same order (fused multiply-adds, one reduction tree), so AVX2 and
//! AVX-512 agree bit for bit; the portable fallback matches them too where its baseline has FMA
//! (aarch64) and rounds multiply and add separately where it has not (x86-64 without AVX2). The
//! tests hold every variant to an f64 reference and the SIMD variants to each other exactly.

use std::ops::Range;

use half::f16;

use crate::kv::{KvSlice, QBLOCK};
use crate::rope::{pair, RopeStyle};

/// Lanes of the vector code: one AVX-512 register of f32, two AVX2 ones.
const L: usize = 16;

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

unsafe fn run(isa: Isa, step: &Step<'_>, head: usize, rows: Range<usize>, slots: Range<usize>, dst: &Dst) {
    match (step.k, step.v) {
        (KvSlice::F32(k), KvSlice::F32(v)) => run_f32(isa, step, head, rows, slots, dst, Src::plain(k), Src::plain(v)),
        (KvSlice::F16(k), KvSlice::F16(v)) => run_in(isa, step, head, rows, slots, dst, Src::plain(k), Src::plain(v)),
        (KvSlice::Q8_0 { q: kq, d: kd }, KvSlice::Q8_0 { q: vq, d: vd }) => {
            let (k, v) = (Src { q: kq.as_ptr(), d: kd.as_ptr() }, Src { q: vq.as_ptr(), d: vd.as_ptr() });
            run_in(isa, step, head, rows, slots, dst, k, v)
        }
        _ => unreachable!("Step::check refuses keys and values in different formats"),
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn run_in<E: Elem>(
    isa: Isa,
    step: &Step<'_>,
    head: usize,
    rows: Range<usize>,
    slots: Range<usize>,
    dst: &Dst,
    k: Src<E>,
    v: Src<E>,
) {
    match isa {
        Isa::Scalar => rows_kv_head::<Lanes, E>(step, head, rows, slots, dst, k, v),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => rows_avx2(step, head, rows, slots, dst, k, v),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => rows_avx512(step, head, rows, slots, dst, k, v),
        #[cfg(not(target_arch = "x86_64"))]
        _ => rows_kv_head::<Lanes, E>(step, head, rows, slots, dst, k, v),
    }
}

/// f32 keys and values through wrappers without F16C: the f32 kernel keeps the target features
/// it had before the other formats (the f16 and q8_0 branches are compiled out of it).
#[allow(clippy::too_many_arguments)]
unsafe fn run_f32(
    isa: Isa,
    step: &Step<'_>,
    head: usize,
    rows: Range<usize>,
    slots: Range<usize>,
    dst: &Dst,
    k: Src<f32>,
    v: Src<f32>,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => rows_avx2_f32(step, head, rows, slots, dst, k, v),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => rows_avx512_f32(step, head, rows, slots, dst, k, v),
        _ => run_in(isa, step, head, rows, slots, dst, k, v),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2_f32(s: &Step<'_>, g: usize, r: Range<usize>, k: Range<usize>, d: &Dst, ks: Src<f32>, vs: Src<f32>) {
    rows_kv_head::<x86::Avx2, f32>(s, g, r, k, d, ks, vs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn rows_avx512_f32(
    s: &Step<'_>,
    g: usize,
    r: Range<usize>,
    k: Range<usize>,
    d: &Dst,
    ks: Src<f32>,
    vs: Src<f32>,
) {
    rows_kv_head::<x86::Avx512, f32>(s, g, r, k, d, ks, vs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2<E: Elem>(
    s: &Step<'_>,
    g: usize,
    r: Range<usize>,
    k: Range<usize>,
    d: &Dst,
    ks: Src<E>,
    vs: Src<E>,
) {
    rows_kv_head::<x86::Avx2, E>(s, g, r, k, d, ks, vs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn rows_avx512<E: Elem>(
    s: &Step<'_>,
    g: usize,
    r: Range<usize>,
    k: Range<usize>,
    d: &Dst,
    ks: Src<E>,
    vs: Src<E>,
) {
    rows_kv_head::<x86::Avx512, E>(s, g, r, k, d, ks, vs)
}

/// The query heads of KV head `g` for query rows `rows` over the key slots `slots` (a range of
/// whole key blocks inside `[0, hi)` rounded up), in blocks of [`ROW_BLOCK`] rows: scores (`-inf`
/// where a row cannot see the slot), softmax, then the values weighted by the non-zero
/// probabilities. With `dst.part` the softmax is left unnormalized and the outputs, maxima and sums
/// go to the split's part entries for [`merge`].
#[inline(always)]
unsafe fn rows_kv_head<V: Simd, E: Elem>(
    s: &Step<'_>,
    g: usize,
    rows: Range<usize>,
    slots: Range<usize>,
    dst: &Dst,
    k: Src<E>,
    v: Src<E>,
) {
    let (d, hi) = (s.head_dim, s.hi);
    let nb = d.div_ceil(QBLOCK);
    let group = s.num_heads / s.num_kv_heads;
    let t = s.rows();
    let k0 = slots.start;
    let width = slots.len();
    let nblk = width / L;
    // Slots of this range that hold values (the last block may run past hi).
    let live_n = hi.min(slots.end).saturating_sub(k0);
    let keys = k.q.add(g * s.slots * d + k0 * d);
    let key_scales = k.d.wrapping_add((g * s.slots + k0) * nb);
    let vals = v.q.add((g * s.slots + k0) * d);
    // The values' scales (q8_0) as f32, converted once for every row block of the task.
    let val_scales =
        if E::SCALED { f16_to_f32::<V>(v.d.add((g * s.slots + k0) * nb), live_n * nb) } else { Vec::new() };
    let vs = val_scales.as_ptr();
    let scores = vec![0f32; rows.len().min(ROW_BLOCK) * group * width];
    // One rotated key block at a time (cache mode), read back from L1 by every query of the task.
    let rotated = vec![0f32; if s.key_angles.is_some() { d * L } else { 0 }];
    let part_len = s.num_heads * (d + 2);
    let split = k0 / SPLIT;
    let mut start = rows.start;
    while start < rows.end {
        let block = start..(start + ROW_BLOCK).min(rows.end);
        let nq = block.len() * group;
        let row_ptr = |x: usize| scores.as_ptr().add(x * width) as *mut f32;
        let rows_at = scores.as_ptr() as *mut f32;
        match s.key_angles {
            None => score_rows::<V, E>(s, g, block.start, nq, rows_at, width, keys, key_scales, nblk),
            Some(a) => {
                let half = d / 2;
                for b in 0..nblk {
                    let at = (k0 / L + b) * half * L;
                    let (c, sn) = (a.cos.as_ptr().add(at), a.sin.as_ptr().add(at));
                    let (kb, ksb) = (keys.add(b * d * L), key_scales.wrapping_add(b * nb * L));
                    rotate_block::<V, E>(kb, ksb, rotated.as_ptr() as *mut f32, c, sn, d, a.style);
                    let r = rotated.as_ptr();
                    score_rows::<V, f32>(s, g, block.start, nq, rows_at.add(b * L), width, r, std::ptr::null(), 1);
                }
            }
        }
        for (b, r) in block.clone().enumerate() {
            let p = s.q_pos[r];
            // A decode step over a hole-free state sees every slot: only the block tail is masked.
            let first = if dst.dense && p >= dst.unmasked_from && s.window.is_none() { live_n } else { 0 };
            for slot in first..width {
                let at = k0 + slot;
                let seen = at < hi && s.live[at] && {
                    let sp = s.slot_pos[at];
                    sp <= p && s.window.is_none_or(|w| p - sp < w)
                };
                if !seen {
                    for j in 0..group {
                        *row_ptr(b * group + j).add(slot) = f32::NEG_INFINITY;
                    }
                }
            }
        }
        // Where the outputs of query x (row b, head j of the group) go: the step's output, or the
        // split's part entry after its max and sum.
        let part_at = |x: usize| {
            let (b, j) = (x / group, x % group);
            let r = block.start + b;
            dst.part.map(|p| p.0.add((split * t + r) * part_len + (g * group + j) * (d + 2)))
        };
        for x in 0..nq {
            let row = std::slice::from_raw_parts_mut(row_ptr(x), width);
            match part_at(x) {
                None => softmax::<V>(row),
                Some(e) => {
                    let (m, z) = exp_shifted::<V>(row);
                    (*e, *e.add(1)) = (m, z);
                }
            }
        }
        for (b, r) in block.clone().enumerate() {
            // The row's query heads share each value row they read.
            let o = |j: usize| match part_at(b * group + j) {
                Some(e) => e.add(2),
                None => dst.out.0.add(r * dst.out_stride + (g * group + j) * d),
            };
            let p = |j: usize| row_ptr(b * group + j) as *const f32;
            let mut j = 0;
            while j < group {
                let n = (group - j).min(4);
                if d % (4 * L) == 0 {
                    let ps = |i: usize| p(j + i.min(n - 1));
                    let os = |i: usize| o(j + i.min(n - 1));
                    match n {
                        4 => pv4::<V, E, 4>(
                            [ps(0), ps(1), ps(2), ps(3)],
                            live_n,
                            vals,
                            vs,
                            d,
                            [os(0), os(1), os(2), os(3)],
                        ),
                        3 => pv4::<V, E, 3>([ps(0), ps(1), ps(2)], live_n, vals, vs, d, [os(0), os(1), os(2)]),
                        2 => pv4::<V, E, 2>([ps(0), ps(1)], live_n, vals, vs, d, [os(0), os(1)]),
                        _ => pv4::<V, E, 1>([ps(0)], live_n, vals, vs, d, [os(0)]),
                    }
                } else {
                    for i in 0..n {
                        pv::<V, E>(std::slice::from_raw_parts(p(j + i), live_n), vals, vs, d, o(j + i));
                    }
                }
                j += n;
            }
        }
        for x in 0..nq {
            let (b, j) = (x / group, x % group);
            let r = block.start + b;
            if r + dst.prob_rows >= t {
                let at = ((r + dst.prob_rows - t) * s.num_heads + g * group + j) * hi + k0;
                std::ptr::copy_nonoverlapping(row_ptr(x), dst.probs.0.add(at), live_n);
            }
        }
        start = block.end;
    }
}

/// Scores of the `nq` queries of KV head `g` from row `first_row` on (query `x` is row
/// `first_row + x / group`, head `g * group + x % group`) against `nblk` key blocks at `keys`, into
/// score rows of `width` starting at `scores`. A function, not a closure: a closure would not
/// inherit the caller's target features, and its vector intrinsics would become calls.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn score_rows<V: Simd, E: Elem>(
    s: &Step<'_>,
    g: usize,
    first_row: usize,
    nq: usize,
    scores: *mut f32,
    width: usize,
    keys: *const E,
    key_scales: *const f16,
    nblk: usize,
) {
    let (d, group) = (s.head_dim, s.num_heads / s.num_kv_heads);
    let q_ptr = |x: usize| s.q.as_ptr().add((first_row + x / group) * s.q_stride + (g * group + x % group) * d);
    let row_ptr = |x: usize| scores.add(x * width);
    let mut x = 0;
    while x < nq {
        let n = (nq - x).min(4);
        let qs = |i: usize| q_ptr(x + i.min(n - 1));
        let ds = |i: usize| row_ptr(x + i.min(n - 1));
        let k = Src { q: keys, d: key_scales };
        match n {
            4 => qk::<V, E, 4>([qs(0), qs(1), qs(2), qs(3)], k, nblk, d, s.scale, [ds(0), ds(1), ds(2), ds(3)]),
            3 => qk::<V, E, 3>([qs(0), qs(1), qs(2)], k, nblk, d, s.scale, [ds(0), ds(1), ds(2)]),
            2 => qk::<V, E, 2>([qs(0), qs(1)], k, nblk, d, s.scale, [ds(0), ds(1)]),
            _ => qk::<V, E, 1>([qs(0)], k, nblk, d, s.scale, [ds(0)]),
        }
        x += n;
    }
}

/// Rotates one key block (`d` rows of sixteen slots) by its slots' angles (`cos`/`sin`: `d/2` rows of
/// sixteen) into `dst`: `x_a c - x_b s` and `x_a s + x_b c` per pair, rounded per operation as
/// [`crate::rope::rotate_keys_blocked`] does, so the scores equal those of keys rotated beforehand.
#[inline(always)]
unsafe fn rotate_block<V: Simd, E: Elem>(
    src: *const E,
    scales: *const f16,
    dst: *mut f32,
    cos: *const f32,
    sin: *const f32,
    d: usize,
    style: RopeStyle,
) {
    for i in 0..d / 2 {
        let (a, b) = pair(style, d, i);
        let (xa, xb) = (key_row::<V, E>(src, scales, a), key_row::<V, E>(src, scales, b));
        let (c, s) = (V::load(cos.add(i * L)), V::load(sin.add(i * L)));
        xa.mul(c).sub(xb.mul(s)).store(dst.add(a * L));
        xa.mul(s).add(xb.mul(c)).store(dst.add(b * L));
    }
}

/// Dimension `i` of a key block's sixteen slots, dequantized (`q8_0`: the code times its slot's
/// scale of block `i / QBLOCK`; exact, as the dequantized value is).
#[inline(always)]
unsafe fn key_row<V: Simd, E: Elem>(kb: *const E, scales: *const f16, i: usize) -> V {
    let x = E::load::<V>(kb.add(i * L));
    if E::SCALED {
        x.mul(V::load_f16(scales.add(i / QBLOCK * L)))
    } else {
        x
    }
}

/// Scores of `N` queries against every key block: per head dimension, one vector of sixteen slots'
/// key values times each query's broadcast value, accumulated with fused multiply-adds. The key
/// values are what [`key_row`] reads, with each block's scales loaded once per [`QBLOCK`] dimensions.
#[inline(always)]
unsafe fn qk<V: Simd, E: Elem, const N: usize>(
    q: [*const f32; N],
    keys: Src<E>,
    nblk: usize,
    d: usize,
    scale: f32,
    dst: [*mut f32; N],
) {
    let sv = V::splat(scale);
    let nb = d.div_ceil(QBLOCK);
    for b in 0..nblk {
        let kb = keys.q.add(b * d * L);
        let mut acc = [V::splat(0.0); N];
        if E::SCALED {
            let sb = keys.d.add(b * nb * L);
            for j in 0..nb {
                let ks = V::load_f16(sb.add(j * L));
                for i in j * QBLOCK..((j + 1) * QBLOCK).min(d) {
                    let kv = E::load::<V>(kb.add(i * L)).mul(ks);
                    for x in 0..N {
                        acc[x] = V::splat(*q[x].add(i)).fma(kv, acc[x]);
                    }
                }
            }
        } else {
            for i in 0..d {
                let kv = E::load::<V>(kb.add(i * L));
                for x in 0..N {
                    acc[x] = V::splat(*q[x].add(i)).fma(kv, acc[x]);
                }
            }
        }
        for x in 0..N {
            acc[x].mul(sv).store(dst[x].add(b * L));
        }
    }
}

/// `o = Σ_s p[s] · v[s]` over the slots with non-zero probability, sixty-four dimensions at a time
/// in registers.
#[inline(always)]
unsafe fn pv<V: Simd, E: Elem>(p: &[f32], vals: *const E, vs: *const f32, d: usize, o: *mut f32) {
    let mut c = 0;
    while c < d {
        let w = (d - c).min(4 * L);
        match (w / L, w % L) {
            (4, 0) => pv_chunk::<V, E, 4>(p, vals, vs, d, c, o),
            (3, 0) => pv_chunk::<V, E, 3>(p, vals, vs, d, c, o),
            (2, 0) => pv_chunk::<V, E, 2>(p, vals, vs, d, c, o),
            (1, 0) => pv_chunk::<V, E, 1>(p, vals, vs, d, c, o),
            _ => pv_ragged::<V, E>(p, vals, vs, d, c, w, o),
        }
        c += w;
    }
}

/// Sixteen values of slot `slot`'s row from dimension `c` on (`n < L`: the first `n`, the rest 0),
/// dequantized with the slot's f32 scales (`vs`: [`QBLOCK`]-dimension blocks per row). A vector
/// starts at a multiple of 16 dimensions, so it lies inside one block.
#[inline(always)]
unsafe fn val_row<V: Simd, E: Elem>(vals: *const E, vs: *const f32, d: usize, slot: usize, c: usize, n: usize) -> V {
    let p = vals.add(slot * d + c);
    let x = if n == L { E::load::<V>(p) } else { E::load_part::<V>(p, n) };
    if E::SCALED {
        x.mul(V::splat(*vs.add(slot * d.div_ceil(QBLOCK) + c / QBLOCK)))
    } else {
        x
    }
}

/// [`pv`] for `N` queries at once over head sizes that are whole multiples of 64: each value row
/// is loaded once for all of them; the arithmetic per query is the same as [`pv_chunk`]'s.
#[inline(always)]
unsafe fn pv4<V: Simd, E: Elem, const N: usize>(
    p: [*const f32; N],
    hi: usize,
    vals: *const E,
    vs: *const f32,
    d: usize,
    o: [*mut f32; N],
) {
    let mut c = 0;
    while c < d {
        let mut acc = [[V::splat(0.0); 4]; N];
        for slot in 0..hi {
            let w: [f32; N] = std::array::from_fn(|x| *p[x].add(slot));
            if w.iter().all(|&w| w == 0.0) {
                continue;
            }
            let row: [V; 4] = std::array::from_fn(|v| val_row::<V, E>(vals, vs, d, slot, c + v * L, L));
            for x in 0..N {
                if w[x] != 0.0 {
                    let wv = V::splat(w[x]);
                    for v in 0..4 {
                        acc[x][v] = wv.fma(row[v], acc[x][v]);
                    }
                }
            }
        }
        for (acc, o) in acc.iter().zip(o) {
            for (v, a) in acc.iter().enumerate() {
                a.store(o.add(c + v * L));
            }
        }
        c += 4 * L;
    }
}

#[inline(always)]
unsafe fn pv_chunk<V: Simd, E: Elem, const NV: usize>(
    p: &[f32],
    vals: *const E,
    vs: *const f32,
    d: usize,
    c: usize,
    o: *mut f32,
) {
    let mut acc = [V::splat(0.0); NV];
    for (slot, &w) in p.iter().enumerate() {
        if w == 0.0 {
            continue;
        }
        let wv = V::splat(w);
        for (v, acc) in acc.iter_mut().enumerate() {
            *acc = wv.fma(val_row::<V, E>(vals, vs, d, slot, c + v * L, L), *acc);
        }
    }
    for (v, acc) in acc.iter().enumerate() {
        acc.store(o.add(c + v * L));
    }
}

/// [`pv_chunk`] for a width that is not whole vectors (head sizes like 12 or 17): same arithmetic,
/// partial loads and stores.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn pv_ragged<V: Simd, E: Elem>(
    p: &[f32],
    vals: *const E,
    vs: *const f32,
    d: usize,
    c: usize,
    w: usize,
    o: *mut f32,
) {
    let nv = w.div_ceil(L);
    let mut acc = [V::splat(0.0); 4];
    for (slot, &pw) in p.iter().enumerate() {
        if pw == 0.0 {
            continue;
        }
        let wv = V::splat(pw);
        for (v, acc) in acc.iter_mut().enumerate().take(nv) {
            let n = (w - v * L).min(L);
            *acc = wv.fma(val_row::<V, E>(vals, vs, d, slot, c + v * L, n), *acc);
        }
    }
    for (v, acc) in acc.iter().enumerate().take(nv) {
        acc.store_part(o.add(c + v * L), (w - v * L).min(L));
    }
}

/// In-place softmax of a row with at least one finite entry; `-inf` entries become exactly 0.
#[inline(always)]
unsafe fn softmax<V: Simd>(x: &mut [f32]) {
    let (_, z) = exp_shifted::<V>(x);
    let n = x.len();
    let p = x.as_mut_ptr();
    let sum = V::splat(z);
    let mut i = 0;
    while i + L <= n {
        V::load(p.add(i)).div(sum).store(p.add(i));
        i += L;
    }
    if i < n {
        V::load_part(p.add(i), n - i).div(sum).store_part(p.add(i), n - i);
    }
}

/// The unnormalized half of [`softmax`] for one split range: `x <- exp(x - max)` in place, returning
/// `(max, sum)`; a row with no finite entry becomes zeros with max `-inf` and sum 0.
#[inline(always)]
unsafe fn exp_shifted<V: Simd>(x: &mut [f32]) -> (f32, f32) {
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut m = V::splat(f32::NEG_INFINITY);
    let mut i = 0;
    while i + L <= n {
        m = m.max(V::load(p.add(i)));
        i += L;
    }
    if i < n {
        m = m.max(V::load_part_with(p.add(i), n - i, f32::NEG_INFINITY));
    }
    let top = m.max_lane();
    if top == f32::NEG_INFINITY {
        x.fill(0.0);
        return (top, 0.0);
    }
    let max = V::splat(top);
    let mut acc = V::splat(0.0);
    i = 0;
    while i + L <= n {
        let e = V::load(p.add(i)).sub(max).exp();
        e.store(p.add(i));
        acc = acc.add(e);
        i += L;
    }
    if i < n {
        let e = V::load_part_with(p.add(i), n - i, f32::NEG_INFINITY).sub(max).exp();
        e.store_part(p.add(i), n - i);
        acc = acc.add(e);
    }
    (top, acc.sum())
}

/// `n` f16 values from `p` as f32, through the vector's conversion (the values' scales of a task).
#[inline(always)]
unsafe fn f16_to_f32<V: Simd>(p: *const f16, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    let o = out.as_mut_ptr();
    let mut i = 0;
    while i + L <= n {
        V::load_f16(p.add(i)).store(o.add(i));
        i += L;
    }
    if i < n {
        f16::load_part::<V>(p.add(i), n - i).store_part(o.add(i), n - i);
    }
    out
}

/// A stored key/value element: f32, f16, or a `q8_0` code (`SCALED`: times its block's scale).
trait Elem: Copy {
    const SCALED: bool;
    const ZERO: Self;
    /// Sixteen consecutive elements as f32 (exact conversions).
    unsafe fn load<V: Simd>(p: *const Self) -> V;
    /// The first `n` of sixteen, the rest 0.
    unsafe fn load_part<V: Simd>(p: *const Self, n: usize) -> V {
        let mut a = [Self::ZERO; L];
        std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), n);
        Self::load(a.as_ptr())
    }
}

impl Elem for f32 {
    const SCALED: bool = false;
    const ZERO: Self = 0.0;
    #[inline(always)]
    unsafe fn load<V: Simd>(p: *const Self) -> V {
        V::load(p)
    }
    #[inline(always)]
    unsafe fn load_part<V: Simd>(p: *const Self, n: usize) -> V {
        V::load_part(p, n)
    }
}

impl Elem for f16 {
    const SCALED: bool = false;
    const ZERO: Self = f16::ZERO;
    #[inline(always)]
    unsafe fn load<V: Simd>(p: *const Self) -> V {
        V::load_f16(p)
    }
}

impl Elem for i8 {
    const SCALED: bool = true;
    const ZERO: Self = 0;
    #[inline(always)]
    unsafe fn load<V: Simd>(p: *const Self) -> V {
        V::load_i8(p)
    }
}

trait Simd: Copy {
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    /// Sixteen f16 values, converted exactly.
    unsafe fn load_f16(p: *const f16) -> Self;
    /// Sixteen signed bytes, converted exactly.
    unsafe fn load_i8(p: *const i8) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    /// `self * a + b` with one rounding (a fused multiply-add on every variant).
    unsafe fn fma(self, a: Self, b: Self) -> Self;
    unsafe fn div(self, o: Self) -> Self;
    /// Lane-wise `if o > self { o } else { self }`.
    unsafe fn max(self, o: Self) -> Self;
    unsafe fn sum(self) -> f32;
    unsafe fn max_lane(self) -> f32;
    /// `exp` per lane (Cephes' `expf`: Cody-Waite reduction by ln 2, a degree-6 polynomial, the
    /// exponent added to the bits; about 2 ulp); inputs below ln(2^-126) give exactly 0.
    unsafe fn exp(self) -> Self;

    unsafe fn to_array(self) -> [f32; L] {
        let mut a = [0f32; L];
        self.store(a.as_mut_ptr());
        a
    }
    unsafe fn load_part_with(p: *const f32, n: usize, fill: f32) -> Self {
        let mut a = [fill; L];
        std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), n);
        Self::load(a.as_ptr())
    }
    unsafe fn load_part(p: *const f32, n: usize) -> Self {
        Self::load_part_with(p, n, 0.0)
    }
    unsafe fn store_part(self, p: *mut f32, n: usize) {
        let a = self.to_array();
        std::ptr::copy_nonoverlapping(a.as_ptr(), p, n);
    }
}

const EXP_HI: f32 = 88.376_26;
const EXP_LO: f32 = -87.336_55;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const EXP_C1: f32 = 0.693_359_4;
const EXP_C2: f32 = -2.121_944_4e-4;
const EXP_P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

/// The portable lanes: plain arrays (the compiler vectorizes what the baseline allows).
#[allow(clippy::needless_range_loop)] // lane loops read best indexed
#[derive(Clone, Copy)]
struct Lanes([f32; L]);

#[allow(clippy::needless_range_loop)] // lane loops read best indexed
impl Lanes {
    #[inline(always)]
    fn map2(self, o: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        let mut r = [0f32; L];
        for l in 0..L {
            r[l] = f(self.0[l], o.0[l]);
        }
        Lanes(r)
    }
}

fn exp_lane(v: f32) -> f32 {
    let below = v < EXP_LO;
    let v = if v > EXP_HI {
        EXP_HI
    } else if below {
        EXP_LO
    } else {
        v
    };
    let f = v * LOG2E + 0.5;
    // floor without a libm call: truncate, then step down for negatives.
    let mut n = f as i32;
    if (n as f32) > f {
        n -= 1;
    }
    let nf = n as f32;
    let r = v - nf * EXP_C1 - nf * EXP_C2;
    let mut p = EXP_P[0];
    for &c in &EXP_P[1..] {
        p = p * r + c;
    }
    let e = p * (r * r) + r + 1.0;
    let scaled = e * f32::from_bits(((n + 127) as u32) << 23);
    if below {
        0.0
    } else {
        scaled
    }
}

#[allow(clippy::needless_range_loop)] // lane loops read best indexed
impl Simd for Lanes {
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Lanes([x; L])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Lanes(std::ptr::read_unaligned(p as *const [f32; L]))
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> Self {
        Lanes(std::ptr::read_unaligned(p as *const [f16; L]).map(f16::to_f32))
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> Self {
        Lanes(std::ptr::read_unaligned(p as *const [i8; L]).map(|c| c as f32))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; L], self.0)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        self.map2(o, |a, b| a + b)
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        self.map2(o, |a, b| a - b)
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        self.map2(o, |a, b| a * b)
    }
    #[inline(always)]
    unsafe fn fma(self, a: Self, b: Self) -> Self {
        let mut r = [0f32; L];
        for l in 0..L {
            // Fused where the baseline has FMA (aarch64), like the SIMD variants; on x86-64's
            // baseline a software fma would be ~50x slower, so the fallback rounds twice there.
            r[l] = if cfg!(target_feature = "fma") {
                self.0[l].mul_add(a.0[l], b.0[l])
            } else {
                self.0[l] * a.0[l] + b.0[l]
            };
        }
        Lanes(r)
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        self.map2(o, |a, b| a / b)
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        self.map2(o, |a, b| if b > a { b } else { a })
    }
    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        let mut a = self.0;
        let mut w = L / 2;
        while w > 0 {
            for l in 0..w {
                a[l] += a[l + w];
            }
            w /= 2;
        }
        a[0]
    }
    #[inline(always)]
    unsafe fn max_lane(self) -> f32 {
        let mut a = self.0;
        let mut w = L / 2;
        while w > 0 {
            for l in 0..w {
                a[l] = if a[l + w] > a[l] { a[l + w] } else { a[l] };
            }
            w /= 2;
        }
        a[0]
    }
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        let mut r = [0f32; L];
        for l in 0..L {
            r[l] = exp_lane(self.0[l]);
        }
        Lanes(r)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Lanes 0-7 and 8-15 in two AVX2 registers.
    #[derive(Clone, Copy)]
    pub(super) struct Avx2(__m256, __m256);

    #[inline(always)]
    unsafe fn sum8(x: __m256) -> f32 {
        // lanes l + l+4, then l + l+2, then l + l+1: the tree's last three levels.
        let s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[inline(always)]
    unsafe fn max8(x: __m256) -> f32 {
        // `max(a, b)` as `b > a ? b : a`: _mm_max_ps(b, a) returns a unless b > a... it returns
        // the second operand when either is NaN or they are equal, so put `a` second.
        let s = _mm_max_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        let s = _mm_max_ps(_mm_movehl_ps(s, s), s);
        let s = _mm_max_ss(_mm_shuffle_ps(s, s, 1), s);
        _mm_cvtss_f32(s)
    }

    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        let below = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_LO), _CMP_LT_OQ);
        let v = _mm256_min_ps(x, _mm256_set1_ps(EXP_HI));
        let v = _mm256_max_ps(v, _mm256_set1_ps(EXP_LO));
        let f = _mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(LOG2E)), _mm256_set1_ps(0.5));
        let nf = _mm256_floor_ps(f);
        let r = _mm256_sub_ps(
            _mm256_sub_ps(v, _mm256_mul_ps(nf, _mm256_set1_ps(EXP_C1))),
            _mm256_mul_ps(nf, _mm256_set1_ps(EXP_C2)),
        );
        let mut p = _mm256_set1_ps(EXP_P[0]);
        for &c in &EXP_P[1..] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c));
        }
        let e = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r), _mm256_set1_ps(1.0));
        let n = _mm256_cvtps_epi32(nf);
        let pow = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
        _mm256_andnot_ps(below, _mm256_mul_ps(e, pow))
    }

    impl Simd for Avx2 {
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Avx2(_mm256_set1_ps(x), _mm256_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx2(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const f16) -> Self {
            let (lo, hi) = (_mm_loadu_si128(p as *const __m128i), _mm_loadu_si128(p.add(8) as *const __m128i));
            Avx2(_mm256_cvtph_ps(lo), _mm256_cvtph_ps(hi))
        }
        #[inline(always)]
        unsafe fn load_i8(p: *const i8) -> Self {
            let x = _mm_loadu_si128(p as *const __m128i);
            Avx2(
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(x)),
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(x, 8))),
            )
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0);
            _mm256_storeu_ps(p.add(8), self.1);
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Avx2(_mm256_add_ps(self.0, o.0), _mm256_add_ps(self.1, o.1))
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            Avx2(_mm256_sub_ps(self.0, o.0), _mm256_sub_ps(self.1, o.1))
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            Avx2(_mm256_mul_ps(self.0, o.0), _mm256_mul_ps(self.1, o.1))
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            Avx2(_mm256_fmadd_ps(self.0, a.0, b.0), _mm256_fmadd_ps(self.1, a.1, b.1))
        }
        #[inline(always)]
        unsafe fn div(self, o: Self) -> Self {
            Avx2(_mm256_div_ps(self.0, o.0), _mm256_div_ps(self.1, o.1))
        }
        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            Avx2(_mm256_max_ps(o.0, self.0), _mm256_max_ps(o.1, self.1))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            sum8(_mm256_add_ps(self.0, self.1))
        }
        #[inline(always)]
        unsafe fn max_lane(self) -> f32 {
            max8(_mm256_max_ps(self.1, self.0))
        }
        #[inline(always)]
        unsafe fn exp(self) -> Self {
            Avx2(exp8(self.0), exp8(self.1))
        }
    }

    /// All sixteen lanes in one AVX-512 register.
    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512);

    impl Simd for Avx512 {
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Avx512(_mm512_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const f16) -> Self {
            Avx512(_mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)))
        }
        #[inline(always)]
        unsafe fn load_i8(p: *const i8) -> Self {
            Avx512(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i))))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn load_part_with(p: *const f32, n: usize, fill: f32) -> Self {
            let m = ((1u32 << n) - 1) as __mmask16;
            Avx512(_mm512_mask_loadu_ps(_mm512_set1_ps(fill), m, p))
        }
        #[inline(always)]
        unsafe fn store_part(self, p: *mut f32, n: usize) {
            _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, self.0)
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Avx512(_mm512_add_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            Avx512(_mm512_sub_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            Avx512(_mm512_mul_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            Avx512(_mm512_fmadd_ps(self.0, a.0, b.0))
        }
        #[inline(always)]
        unsafe fn div(self, o: Self) -> Self {
            Avx512(_mm512_div_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            Avx512(_mm512_max_ps(o.0, self.0))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            let lo = _mm512_castps512_ps256(self.0);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(self.0), 1));
            sum8(_mm256_add_ps(lo, hi))
        }
        #[inline(always)]
        unsafe fn max_lane(self) -> f32 {
            let lo = _mm512_castps512_ps256(self.0);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(self.0), 1));
            max8(_mm256_max_ps(hi, lo))
        }
        #[inline(always)]
        unsafe fn exp(self) -> Self {
            let x = self.0;
            let below = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_LO), _CMP_LT_OQ);
            let v = _mm512_min_ps(x, _mm512_set1_ps(EXP_HI));
            let v = _mm512_max_ps(v, _mm512_set1_ps(EXP_LO));
            let f = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(LOG2E)), _mm512_set1_ps(0.5));
            let nf = _mm512_roundscale_ps(f, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
            let r = _mm512_sub_ps(
                _mm512_sub_ps(v, _mm512_mul_ps(nf, _mm512_set1_ps(EXP_C1))),
                _mm512_mul_ps(nf, _mm512_set1_ps(EXP_C2)),
            );
            let mut p = _mm512_set1_ps(EXP_P[0]);
            for &c in &EXP_P[1..] {
                p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
            }
            let e = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p, _mm512_mul_ps(r, r)), r), _mm512_set1_ps(1.0));
            let n = _mm512_cvtps_epi32(nf);
            let pow = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), 23));
            Avx512(_mm512_maskz_mul_ps(!below, e, pow))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn sym(&mut self) -> f32 {
            ((self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn exp_matches_libm_over_the_softmax_range() {
        let mut worst = 0f64;
        let mut x = -90.0f32;
        while x <= 0.0 {
            let got = exp_lane(x) as f64;
            let want = (x as f64).exp();
            if x < -87.336_55 {
                assert_eq!(got, 0.0, "exp({x})");
            } else if want > 1e-30 {
                worst = worst.max((got - want).abs() / want);
            }
            x += 0.001_37;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_lane(0.0), 1.0);
    }

    /// A case: shapes, a slot layout with dead slots and shuffled positions, a chunk of queries.
    struct Case {
        heads: usize,
        kv: usize,
        d: usize,
        slots: usize,
        hi: usize,
        q: Vec<f32>,
        k: Vec<f32>,
        kb: Vec<f32>,
        v: Vec<f32>,
        slot_pos: Vec<u64>,
        live: Vec<bool>,
        q_pos: Vec<u64>,
        window: Option<u64>,
    }

    fn case(rng: &mut Rng, heads: usize, kv: usize, d: usize, hi: usize, t: usize, window: Option<u64>) -> Case {
        let slots = (hi + 3).next_multiple_of(KEY_BLOCK);
        // Positions: a shuffled run ending with the chunk's own tokens (which are live).
        let base = 100 + rng.below(50);
        let mut slot_pos: Vec<u64> = (0..hi as u64).map(|i| base + i).collect();
        for i in (1..hi).rev() {
            slot_pos.swap(i, rng.below(i as u64 + 1) as usize);
        }
        slot_pos.resize(slots, 0);
        let top = base + hi as u64 - 1;
        let q_pos: Vec<u64> = (0..t as u64).map(|i| top - (t as u64 - 1) + i).collect();
        let holes = hi % 2 == 1;
        let mut live: Vec<bool> = (0..slots).map(|s| s < hi && (!holes || rng.below(5) != 0)).collect();
        for (s, &p) in slot_pos.iter().enumerate().take(hi) {
            if q_pos.contains(&p) {
                live[s] = true;
            }
        }
        let n = |rng: &mut Rng, len: usize| (0..len).map(|_| rng.sym() * 2.0).collect::<Vec<f32>>();
        let k = n(rng, kv * slots * d);
        let mut kb = vec![f32::NAN; k.len()];
        for g in 0..kv {
            for s in 0..slots {
                write_key(&mut kb, slots, g, s, &k[(g * slots + s) * d..][..d]);
            }
        }
        let mut back = vec![0f32; d];
        read_key(&kb, slots, kv - 1, slots - 1, &mut back);
        assert_eq!(back, k[((kv - 1) * slots + slots - 1) * d..][..d]);
        Case {
            heads,
            kv,
            d,
            slots,
            hi,
            q: n(rng, t * heads * d + 5),
            k,
            kb,
            v: n(rng, kv * slots * d),
            slot_pos,
            live,
            q_pos,
            window,
        }
    }

    fn step(c: &Case) -> Step<'_> {
        Step {
            q: &c.q[5..],
            q_stride: c.heads * c.d,
            q_pos: &c.q_pos,
            k: KvSlice::F32(&c.kb),
            v: KvSlice::F32(&c.v),
            slots: c.slots,
            hi: c.hi,
            slot_pos: &c.slot_pos,
            live: &c.live,
            window: c.window,
            num_heads: c.heads,
            num_kv_heads: c.kv,
            head_dim: c.d,
            scale: 1.0 / (c.d as f32).sqrt(),
            key_angles: None,
        }
    }

    /// Naive f64 attention: per row and head, softmax over the visible slots, weighted values.
    fn reference(c: &Case) -> (Vec<f64>, Vec<f64>) {
        let (t, h, d) = (c.q_pos.len(), c.heads, c.d);
        let group = h / c.kv;
        let mut out = vec![0f64; t * h * d];
        let mut probs = vec![0f64; t * h * c.hi];
        let q = &c.q[5..];
        for r in 0..t {
            for head in 0..h {
                let g = head / group;
                let vis: Vec<usize> = (0..c.hi)
                    .filter(|&s| {
                        let sp = c.slot_pos[s];
                        c.live[s] && sp <= c.q_pos[r] && c.window.is_none_or(|w| c.q_pos[r] - sp < w)
                    })
                    .collect();
                let sc: Vec<f64> = vis
                    .iter()
                    .map(|&s| {
                        let dot: f64 = (0..d)
                            .map(|i| q[r * h * d + head * d + i] as f64 * c.k[(g * c.slots + s) * d + i] as f64)
                            .sum();
                        dot / (d as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (&s, &w) in vis.iter().zip(&e) {
                    let p = w / z;
                    probs[(r * h + head) * c.hi + s] = p;
                    for i in 0..d {
                        out[(r * h + head) * d + i] += p * c.v[(g * c.slots + s) * d + i] as f64;
                    }
                }
            }
        }
        (out, probs)
    }

    fn run_case(isa: Isa, c: &Case, prob_rows: usize, threads: bool) -> (Vec<f32>, Vec<f32>) {
        let t = c.q_pos.len();
        let stride = c.heads * c.d + 3;
        let mut out = vec![f32::NAN; t * stride];
        let mut probs = vec![f32::NAN; prob_rows * c.heads * c.hi];
        let s = step(c);
        let sink = Sink { out: &mut out, out_stride: stride, probs: &mut probs, prob_rows };
        if threads {
            let par = |n: usize, f: &(dyn Fn(usize) + Sync)| {
                std::thread::scope(|sc| {
                    for i in (0..n).rev() {
                        sc.spawn(move || f(i));
                    }
                })
            };
            attention_with(isa, &s, sink, &par).unwrap();
        } else {
            attention_with(isa, &s, sink, &|n, f| (0..n).for_each(f)).unwrap();
        }
        let out: Vec<f32> = out.chunks(stride).flat_map(|r| r[..c.heads * c.d].to_vec()).collect();
        (out, probs)
    }

    #[test]
    fn every_variant_matches_the_reference_and_the_portable_code_exactly() {
        let mut rng = Rng(42);
        let shapes = [
            // heads, kv, d, hi, t, window
            (9, 3, 64, 37, 1, None),
            (9, 3, 64, 37, 7, None),
            (4, 1, 256, 19, 3, Some(8)),
            (2, 2, 4, 5, 1, None),
            (6, 2, 12, 33, 13, Some(5)),
            (1, 1, 17, 1, 1, None),
            (8, 4, 8, 70, 16, None),
            // even hi: no dead slots, so decode rows take the unmasked path
            (9, 3, 64, 48, 1, None),
            (9, 3, 64, 130, 1, None),
            (4, 1, 256, 34, 2, None),
            (3, 3, 128, 64, 9, Some(40)),
            // one block of rows over more than SPLIT slots: split ranges, merged
            (9, 3, 64, 600, 1, None),
            (9, 3, 64, 777, 3, None),
            (9, 3, 64, 1024, 1, None),
            // a window so narrow that whole ranges see nothing
            (4, 1, 17, 530, 2, Some(5)),
            (6, 2, 12, 513, 8, Some(300)),
        ];
        for (i, &(h, g, d, hi, t, w)) in shapes.iter().enumerate() {
            let c = case(&mut rng, h, g, d, hi, t, w);
            let (want_out, want_probs) = reference(&c);
            let prob_rows = [0, 1, t][i % 3];
            let simd = Isa::supported().into_iter().filter(|&i| i != Isa::Scalar).collect::<Vec<_>>();
            let base = *simd.first().unwrap_or(&Isa::Scalar);
            let (base_out, base_probs) = run_case(base, &c, prob_rows, false);
            for isa in Isa::supported() {
                let (out, probs) = run_case(isa, &c, prob_rows, false);
                for (a, b) in out.iter().zip(&want_out) {
                    assert!((*a as f64 - b).abs() < 1e-5 * (1.0 + b.abs()), "{isa:?} shape {i}: {a} vs {b}");
                }
                let first = (t - prob_rows) * h * hi;
                for (a, b) in probs.iter().zip(&want_probs[first..]) {
                    assert!((*a as f64 - b).abs() < 1e-6, "{isa:?} shape {i}: prob {a} vs {b}");
                }
            }
            for &isa in &simd {
                for threads in [false, true] {
                    let (out, probs) = run_case(isa, &c, prob_rows, threads);
                    assert_eq!(out, base_out, "{isa:?} shape {i}: output differs from {base:?}");
                    assert_eq!(probs, base_probs, "{isa:?} shape {i}: probabilities differ");
                }
            }
            for (a, b) in base_out.iter().zip(&want_out) {
                assert!((*a as f64 - b).abs() < 1e-5 * (1.0 + b.abs()), "shape {i}: {a} vs {b}");
            }
            let first = (t - prob_rows) * h * hi;
            for (a, b) in base_probs.iter().zip(&want_probs[first..]) {
                assert!((*a as f64 - b).abs() < 1e-6, "shape {i}: prob {a} vs {b}");
            }
        }
    }

    #[test]
    fn keys_rotated_per_block_score_as_keys_rotated_beforehand() {
        use crate::rope::{block_angles, rotate_keys_blocked, RopeStyle};
        let mut rng = Rng(7);
        // heads, kv, d, hi, t: decode and chunks, a ragged last block, split slot ranges
        let shapes = [(9, 3, 64, 37, 1), (4, 2, 12, 70, 9), (6, 3, 8, 600, 1), (2, 1, 34, 530, 3)];
        for (i, &(h, g, d, hi, t)) in shapes.iter().enumerate() {
            let c = case(&mut rng, h, g, d, hi, t, None);
            let half = d / 2;
            let rows = hi + 5;
            let cos: Vec<f32> = (0..rows * half).map(|x| (x as f32 * 0.37).cos()).collect();
            let sin: Vec<f32> = (0..rows * half).map(|x| (x as f32 * 0.37).sin()).collect();
            let angle_row: Vec<u32> = (0..hi as u32).map(|s| (s * 13) % rows as u32).collect();
            for style in [RopeStyle::Interleaved, RopeStyle::HalfSplit] {
                let mut pre = c.kb.clone();
                rotate_keys_blocked(&c.kb, &mut pre, c.slots, hi, g, d, &angle_row, &cos, &sin, style);
                let (mut ct, mut st) = (Vec::new(), Vec::new());
                block_angles(Isa::Scalar, &angle_row, hi, half, &cos, &sin, &mut ct, &mut st);
                for isa in Isa::supported() {
                    let run = |keys: &[f32], angles: Option<KeyAngles<'_>>| {
                        let mut out = vec![0f32; t * h * d];
                        let mut probs = vec![0f32; h * hi];
                        let s = Step { k: KvSlice::F32(keys), key_angles: angles, ..step(&c) };
                        let sink = Sink { out: &mut out, out_stride: h * d, probs: &mut probs, prob_rows: 1 };
                        attention_with(isa, &s, sink, &|n, f| (0..n).for_each(f)).unwrap();
                        (out, probs)
                    };
                    let want = run(&pre, None);
                    let got = run(&c.kb, Some(KeyAngles { cos: &ct, sin: &st, style }));
                    assert!(got == want, "{isa:?} {style:?} shape {i}: differs from keys rotated beforehand");
                }
            }
        }
    }

    /// `c`'s keys and values stored in `format`, and the same values dequantized into f32 buffers.
    fn stored(c: &Case, format: crate::KvFormat) -> [crate::KvBuf; 4] {
        use crate::KvBuf;
        let (g, n, d) = (c.kv, c.slots, c.d);
        let (mut k, mut v) = (KvBuf::zeros(format, g, n, d).unwrap(), KvBuf::zeros(format, g, n, d).unwrap());
        let (mut kf, mut vf) = (vec![0f32; g * n * d], vec![0f32; g * n * d]);
        let mut row = vec![0f32; d];
        for h in 0..g {
            for s in 0..n {
                let at = (h * n + s) * d;
                k.write_key(n, h, s, &c.k[at..][..d]);
                v.write_value(n, h, s, &c.v[at..][..d]);
                k.read_key(n, h, s, &mut row);
                write_key(&mut kf, n, h, s, &row);
                v.read_value(n, h, s, &mut vf[at..][..d]);
            }
        }
        [k, v, KvBuf::F32(kf), KvBuf::F32(vf)]
    }

    #[test]
    fn every_kv_format_scores_exactly_as_its_values_dequantized_to_f32() {
        use crate::kv::KvFormat;
        let mut rng = Rng(11);
        // heads, kv, d, hi, t, window: decode and chunks, head sizes off the 16/32 grid (q8_0's last
        // block ragged), SmolLM2's 64 and Gemma's 256, split slot ranges, a model window.
        let shapes = [
            (9, 3, 64, 37, 1, None),
            (9, 3, 64, 48, 1, None),
            (4, 1, 256, 19, 3, Some(8)),
            (6, 2, 12, 33, 13, Some(5)),
            (1, 1, 17, 1, 1, None),
            (2, 2, 40, 70, 9, None),
            (8, 4, 96, 21, 2, None),
            (9, 3, 64, 600, 1, None),
            (4, 2, 48, 530, 3, Some(300)),
        ];
        for (i, &(h, g, d, hi, t, w)) in shapes.iter().enumerate() {
            let mut c = case(&mut rng, h, g, d, hi, t, w);
            // Awkward blocks: all zero (scale 0), one spike, tiny values.
            c.k[..d.min(32)].fill(0.0);
            c.v[d..2 * d].iter_mut().for_each(|x| *x *= 1e-4);
            c.k[2 * d + 3] = 8.0;
            for format in [KvFormat::F16, KvFormat::Q8_0] {
                let [k, v, kf, vf] = stored(&c, format);
                let prob_rows = [1, t, 0][i % 3];
                let run = |isa: Isa, k: &crate::KvBuf, v: &crate::KvBuf, angles: Option<KeyAngles<'_>>| {
                    let mut out = vec![0f32; t * h * d];
                    let mut probs = vec![0f32; prob_rows * h * hi];
                    let s = Step { k: k.view(), v: v.view(), key_angles: angles, ..step(&c) };
                    let sink = Sink { out: &mut out, out_stride: h * d, probs: &mut probs, prob_rows };
                    attention_with(isa, &s, sink, &|n, f| (0..n).for_each(f)).unwrap();
                    (out, probs)
                };
                // Cache mode: keys rotated block by block as they are read.
                let half = d / 2;
                let cos: Vec<f32> = (0..(hi + 1) * half).map(|x| (x as f32 * 0.31).cos()).collect();
                let sin: Vec<f32> = (0..(hi + 1) * half).map(|x| (x as f32 * 0.31).sin()).collect();
                let rank: Vec<u32> = (0..hi as u32).rev().collect();
                let (mut ct, mut st) = (Vec::new(), Vec::new());
                crate::rope::block_angles(Isa::Scalar, &rank, hi, half, &cos, &sin, &mut ct, &mut st);
                let angles = (d % 2 == 0).then_some(KeyAngles { cos: &ct, sin: &st, style: RopeStyle::HalfSplit });
                let mut simd = Vec::new();
                for isa in Isa::supported() {
                    for a in [None, angles] {
                        let got = run(isa, &k, &v, a);
                        assert!(got == run(isa, &kf, &vf, a), "{isa:?} {format} shape {i}: differs from f32");
                        if isa != Isa::Scalar {
                            simd.push(got);
                        }
                    }
                }
                for pair in simd.chunks(2).collect::<Vec<_>>().windows(2) {
                    assert!(pair[0] == pair[1], "{format} shape {i}: SIMD variants differ");
                }
                // And the stored values are the format's rounding of the originals.
                let (want, _) = reference(&c);
                let (got, _) = run(Isa::Scalar, &k, &v, None);
                let tol = if format == KvFormat::F16 { 2e-2 } else { 0.1 };
                for (a, b) in got.iter().zip(&want) {
                    assert!((*a as f64 - b).abs() < tol * (1.0 + b.abs()), "{format} shape {i}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn keys_and_values_in_different_formats_are_refused() {
        let mut rng = Rng(3);
        let c = case(&mut rng, 2, 1, 32, 5, 1, None);
        let [k, ..] = stored(&c, crate::KvFormat::F16);
        let s = Step { k: k.view(), ..step(&c) };
        let mut out = vec![0f32; 64];
        let e = attention(&s, Sink { out: &mut out, out_stride: 64, probs: &mut [], prob_rows: 0 }).unwrap_err();
        assert!(e.contains("keys in f16 but values in f32"), "{e}");
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut rng = Rng(1);
        let c = case(&mut rng, 9, 3, 64, 10, 2, None);
        let mut s = step(&c);
        s.num_kv_heads = 4;
        let mut out = vec![0f32; 2 * 576];
        let e = attention(&s, Sink { out: &mut out, out_stride: 576, probs: &mut [], prob_rows: 0 });
        assert!(e.unwrap_err().contains("cannot share"));
        let s = step(&c);
        let e = attention(&s, Sink { out: &mut out[..10], out_stride: 576, probs: &mut [], prob_rows: 0 });
        assert!(e.unwrap_err().contains("output"));
        let e = attention(&s, Sink { out: &mut out, out_stride: 576, probs: &mut [], prob_rows: 1 });
        assert!(e.unwrap_err().contains("probability"));
    }
}
