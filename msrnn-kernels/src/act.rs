//! Activations quantized to 8 bits in blocks of 32 values, once per matmul call.
//!
//! Per block of 32 inputs: `d = max|x| / 127`, `q = round_ties_even(x / d)` computed as `x * (1 / d)`, so
//! `|q| <= 127`. Kept beside the codes: `d`, `s = d * Σq` (the min term of formats with a min), `-128 * Σq` (the
//! correction for weights stored with an offset, e.g. Q8_0's +128 for `vpdpbusd`) and the sum of the first 16 codes
//! (Q6_K's sub-blocks of 16). One body over the crate's vectors ([`crate::simd`]) serves every variant, so all
//! compute the same bits (tested on awkward values in `tests/exact.rs`); it is written with vectors because the
//! compiler's own vectorization of a plain loop gathered across blocks (docs/performance.md).

use crate::format::BLOCK;
use crate::isa::Isa;
use crate::simd::{Lanes, Simd, L};

/// A row-major `[rows, in_dim]` activation matrix quantized in blocks of [`BLOCK`] values.
#[derive(Debug, Clone, Default)]
pub struct QActs {
    pub rows: usize,
    pub in_dim: usize,
    /// Blocks per row.
    pub nb: usize,
    /// `rows * in_dim` codes.
    pub qs: Vec<i8>,
    /// `rows * nb` scales.
    pub d: Vec<f32>,
    /// `rows * nb` values `d * Σq`.
    pub s: Vec<f32>,
    /// `rows * nb` values `-128 * Σq`.
    pub bias: Vec<i32>,
    /// `rows * nb` sums of each block's first 16 codes (`Q6_K`'s sub-blocks are 16 wide).
    pub sum_lo: Vec<i32>,
}

impl QActs {
    /// Quantizes `x` (`rows * in_dim` values, `in_dim` a multiple of 32) with the given variant's code.
    pub fn quantize(isa: Isa, x: &[f32], rows: usize, in_dim: usize) -> Self {
        let mut q = QActs::default();
        q.quantize_into(isa, x, rows, in_dim);
        q
    }

    /// As [`QActs::quantize`], reusing this value's buffers.
    pub fn quantize_into(&mut self, isa: Isa, x: &[f32], rows: usize, in_dim: usize) {
        assert!(in_dim.is_multiple_of(BLOCK), "in_dim {in_dim} is not a multiple of {BLOCK}");
        assert_eq!(x.len(), rows * in_dim, "activation length");
        let nb = in_dim / BLOCK;
        self.rows = rows;
        self.in_dim = in_dim;
        self.nb = nb;
        // Every element is written below; resize only grows or shrinks the buffers.
        self.qs.resize(rows * in_dim, 0);
        self.d.resize(rows * nb, 0.0);
        self.s.resize(rows * nb, 0.0);
        self.bias.resize(rows * nb, 0);
        self.sum_lo.resize(rows * nb, 0);
        // Large calls (prefill chunks) quantize row chunks on the pool's threads; a row's codes do not depend on it.
        const CHUNK: usize = 16;
        if rows >= 2 * CHUNK && crate::pool::threads() > 1 {
            let mut parts: Vec<(&[f32], Out<'_>)> = x
                .chunks(CHUNK * in_dim)
                .zip(self.qs.chunks_mut(CHUNK * in_dim))
                .zip(self.d.chunks_mut(CHUNK * nb).zip(self.s.chunks_mut(CHUNK * nb)))
                .zip(self.bias.chunks_mut(CHUNK * nb).zip(self.sum_lo.chunks_mut(CHUNK * nb)))
                .map(|(((x, qs), (d, s)), (bias, sum_lo))| (x, Out { qs, d, s, bias, sum_lo }))
                .collect();
            crate::pool::for_each_mut(&mut parts, &|_, (x, out)| quantize_with(isa, x, out));
        } else {
            let mut out = Out {
                qs: &mut self.qs,
                d: &mut self.d,
                s: &mut self.s,
                bias: &mut self.bias,
                sum_lo: &mut self.sum_lo,
            };
            quantize_with(isa, x, &mut out);
        }
    }

    /// The codes of `row`; the kernels read them 4 at a time as one `i32`.
    #[inline(always)]
    pub(crate) fn group_ptr(&self, row: usize) -> *const u8 {
        self.qs[row * self.in_dim..].as_ptr() as *const u8
    }
}

fn quantize_with(isa: Isa, x: &[f32], out: &mut Out<'_>) {
    match isa {
        // SAFETY: each variant runs only where the CPU supports it.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_supported() => unsafe { quantize_avx512(x, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 if Isa::Avx2.is_supported() => unsafe { quantize_avx2(x, out) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if isa.is_supported() => unsafe { quantize_neon(x, out) },
        // SAFETY: the portable code runs anywhere.
        _ => unsafe { quantize_blocks::<Lanes>(x, out) },
    }
}

struct Out<'a> {
    qs: &'a mut [i8],
    d: &'a mut [f32],
    s: &'a mut [f32],
    bias: &'a mut [i32],
    sum_lo: &'a mut [i32],
}

impl Out<'_> {
    /// Block `b`'s scale and the two terms derived from its code sum, written the same way by every variant.
    #[inline(always)]
    fn set_block(&mut self, b: usize, scale: f32, sum: i32, sum_lo: i32) {
        self.d[b] = scale;
        self.s[b] = scale * sum as f32;
        self.bias[b] = -128 * sum;
        self.sum_lo[b] = sum_lo;
    }
}

/// The block's scale `d = amax / 127` and its inverse, `0` where `d` is 0 or so small that `1 / d` overflows (every
/// code is then 0). Shared by every variant, so all compute the same bits.
#[inline(always)]
fn block_scale(amax: f32) -> (f32, f32) {
    let scale = amax / 127.0;
    let id = 1.0 / scale;
    (scale, if id.is_finite() { id } else { 0.0 })
}

/// One body for every variant, over [`Simd`]: a block is two vectors of 16. The running maximum is `max(m, |x|)`,
/// which keeps `m` where `|x|` is NaN, so NaN inputs do not set the scale (and, as every other code, come out 0);
/// codes round to nearest even, and the two halves' sums give `Σq` and the first 16 codes' sum exactly.
#[inline(always)]
unsafe fn quantize_blocks<V: Simd>(x: &[f32], out: &mut Out<'_>) {
    for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
        let v = [V::load(xb.as_ptr()), V::load(xb.as_ptr().add(L))];
        let (scale, id) = block_scale(V::splat(0.0).max(v[0].abs()).max(v[1].abs()).max_lane());
        let idv = V::splat(id);
        let (lo, sum) = V::store_i8_pair(v[0].mul(idv), v[1].mul(idv), out.qs.as_mut_ptr().add(b * BLOCK));
        out.set_block(b, scale, sum, lo);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_avx2(x: &[f32], out: &mut Out<'_>) {
    quantize_blocks::<crate::simd::Avx2>(x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn quantize_avx512(x: &[f32], out: &mut Out<'_>) {
    quantize_blocks::<crate::simd::Avx512>(x, out)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn quantize_neon(x: &[f32], out: &mut Out<'_>) {
    quantize_blocks::<crate::simd::Neon>(x, out)
}
