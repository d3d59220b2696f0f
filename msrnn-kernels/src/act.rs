//! Activations quantized to 8 bits in blocks of 32 values, once per matmul call.
//!
//! Per block of 32 inputs: `d = max|x| / 127`, `q = round_ties_even(x / d)` computed as `x * (1 / d)`, so
//! `|q| <= 127`. Kept beside the codes: `d`, `s = d * Σq` (the min term of formats with a min), `-128 * Σq` (the
//! correction for weights stored with an offset, e.g. Q8_0's +128 for `vpdpbusd`) and the sum of the first 16 codes
//! (Q6_K's sub-blocks of 16). Every instruction-set variant computes the same bits as the
//! plain reference (`quantize_blocks`), tested on awkward values in `tests/exact.rs`; they are written out because the
//! compiler's own vectorization of the reference gathered across blocks (docs/performance.md).

use crate::format::BLOCK;
use crate::isa::Isa;

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
        _ => quantize_blocks(x, out),
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

/// The reference: `f32::max` skips NaN inputs, and a NaN code (only from an infinite input, whose block then has
/// `id = 0`) converts to 0.
#[inline(always)]
fn quantize_blocks(x: &[f32], out: &mut Out<'_>) {
    for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
        let (scale, id) = block_scale(xb.iter().fold(0f32, |a, v| a.max(v.abs())));
        let (mut sum, mut sum_lo) = (0i32, 0i32);
        for (i, (q, v)) in out.qs[b * BLOCK..][..BLOCK].iter_mut().zip(xb).enumerate() {
            let c = (v * id).round_ties_even() as i32;
            *q = c as i8;
            sum += c;
            if i < 16 {
                sum_lo += c;
            }
        }
        out.set_block(b, scale, sum, sum_lo);
    }
}

/// AVX2: a block is four 8-lane vectors. `max_ps` returns its second operand when either is NaN, so with the running
/// maximum second, NaN inputs are skipped as in the reference; `cvtps_epi32` rounds to nearest even (the default
/// rounding mode) and NaN lanes are zeroed; codes fit in a byte, so the saturating packs are exact.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_avx2(x: &[f32], out: &mut Out<'_>) {
    use std::arch::x86_64::*;
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xb.as_ptr().add(8 * i)));
        let mut m = _mm256_setzero_ps();
        for vi in v {
            m = _mm256_max_ps(_mm256_and_ps(vi, abs), m);
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let (scale, id) = block_scale(amax);
        let idv = _mm256_set1_ps(id);
        let q: [__m256i; 4] = std::array::from_fn(|i| {
            let p = _mm256_mul_ps(v[i], idv);
            let ord = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(p, p));
            _mm256_and_si256(_mm256_cvtps_epi32(p), ord)
        });
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256(
            out.qs.as_mut_ptr().add(b * BLOCK) as *mut __m256i,
            _mm256_permutevar8x32_epi32(bytes, order),
        );
        let hsum = |t: __m256i| {
            let t4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256::<1>(t));
            let t2 = _mm_add_epi32(t4, _mm_unpackhi_epi64(t4, t4));
            _mm_cvtsi128_si32(_mm_add_epi32(t2, _mm_shuffle_epi32::<1>(t2)))
        };
        let (lo, hi) = (_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        out.set_block(b, scale, hsum(_mm256_add_epi32(lo, hi)), hsum(lo));
    }
}

/// AVX-512: a block is two 16-lane vectors; the same rules as the AVX2 variant.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn quantize_avx512(x: &[f32], out: &mut Out<'_>) {
    use std::arch::x86_64::*;
    for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
        let v = [_mm512_loadu_ps(xb.as_ptr()), _mm512_loadu_ps(xb.as_ptr().add(16))];
        let m = _mm512_max_ps(_mm512_abs_ps(v[1]), _mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_setzero_ps()));
        let (scale, id) = block_scale(_mm512_reduce_max_ps(m));
        let idv = _mm512_set1_ps(id);
        let q = v.map(|vi| {
            let p = _mm512_mul_ps(vi, idv);
            _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(p, p), _mm512_cvtps_epi32(p))
        });
        let dst = out.qs.as_mut_ptr().add(b * BLOCK) as *mut __m128i;
        _mm_storeu_si128(dst, _mm512_cvtepi32_epi8(q[0]));
        _mm_storeu_si128(dst.add(1), _mm512_cvtepi32_epi8(q[1]));
        let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q[0], q[1]));
        out.set_block(b, scale, sum, _mm512_reduce_add_epi32(q[0]));
    }
}
