//! The attention kernel, written once over [`Simd`]: scores of a block of query rows against the key
//! blocks (keys rotated in registers where the step stores them unrotated), softmax, and the
//! probability-weighted sum of the values.

use half::f16;

use super::elem::Elem;
use super::{Src, Step, Task, ROW_BLOCK, SPLIT};
use crate::kv::QBLOCK;
use crate::rope::{pair, RopeStyle};
use crate::simd::{Simd, L};

/// The task's query heads of KV head `g` for query rows `rows` over the key slots `slots` (a range
/// of whole key blocks inside `[0, hi)` rounded up), in blocks of [`ROW_BLOCK`] rows: scores (`-inf`
/// where a row cannot see the slot), softmax, then the values weighted by the non-zero
/// probabilities. With `dst.part` the softmax is left unnormalized and the outputs, maxima and sums
/// go to the split's part entries for [`super::merge`].
#[inline(always)]
pub(super) unsafe fn rows_kv_head<V: Simd, E: Elem>(task: &Task<'_, E>) {
    let Task { step: s, g, dst, k, v, .. } = *task;
    let (rows, slots) = (task.rows.clone(), task.slots.clone());
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

/// How far ahead of the keys and values being read the kernel asks for their cache lines. A decode
/// step streams each sequence's keys and values once from memory in short runs (one KV head's keys,
/// then its values); the hardware prefetchers alone left the batched step at about 70% of one core's
/// read bandwidth (docs/performance.md). Two key blocks of f32.
const AHEAD: usize = 8192;

/// Prefetches the cache lines of `bytes` bytes at `p`, [`AHEAD`] bytes on (a hint: past the end of a
/// buffer it costs a wasted fetch, never a fault).
#[inline(always)]
unsafe fn prefetch_ahead<V: Simd>(p: *const u8, bytes: usize) {
    let p = p.wrapping_add(AHEAD);
    let mut off = 0;
    while off < bytes {
        V::prefetch(p.wrapping_add(off));
        off += 64;
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
    prefetch_ahead::<V>(src as *const u8, d * L * size_of::<E>());
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
                prefetch_ahead::<V>(kb.add(j * QBLOCK * L) as *const u8, QBLOCK * L * size_of::<E>());
                for i in j * QBLOCK..((j + 1) * QBLOCK).min(d) {
                    let kv = E::load::<V>(kb.add(i * L)).mul(ks);
                    for x in 0..N {
                        acc[x] = V::splat(*q[x].add(i)).fma(kv, acc[x]);
                    }
                }
            }
        } else {
            for i in 0..d {
                if (i * L * size_of::<E>()).is_multiple_of(64) {
                    prefetch_ahead::<V>(kb.add(i * L) as *const u8, 64);
                }
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
            prefetch_ahead::<V>(vals.add(slot * d + c) as *const u8, 4 * L * size_of::<E>());
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
