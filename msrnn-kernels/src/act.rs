//! Activations quantized to 8 bits in blocks of 32 values, once per matmul call.
//!
//! Per block of 32 inputs: `d = max|x| / 127`, `q = round_ties_even(x / d)` computed as `x * (1 / d)`, so
//! `|q| <= 127`. Kept beside the codes: `d`, `s = d * Σq` (the Q4_1 offset term) and `-128 * Σq` (the correction for
//! weights stored with a +128 offset for `vpdpbusd`). The same Rust code runs in every instruction-set variant
//! (compiled with that variant's features), so the codes are bit-identical across variants.

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
        // Large calls (prefill chunks) quantize row chunks on the pool's threads; a row's codes do not depend on it.
        const CHUNK: usize = 16;
        if rows >= 2 * CHUNK && crate::pool::threads() > 1 {
            let mut parts: Vec<(&[f32], Out<'_>)> = x
                .chunks(CHUNK * in_dim)
                .zip(self.qs.chunks_mut(CHUNK * in_dim))
                .zip(self.d.chunks_mut(CHUNK * nb).zip(self.s.chunks_mut(CHUNK * nb)))
                .zip(self.bias.chunks_mut(CHUNK * nb))
                .map(|(((x, qs), (d, s)), bias)| (x, Out { qs, d, s, bias }))
                .collect();
            crate::pool::for_each_mut(&mut parts, &|_, (x, out)| quantize_with(isa, x, out));
        } else {
            let mut out = Out { qs: &mut self.qs, d: &mut self.d, s: &mut self.s, bias: &mut self.bias };
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
}

#[inline(always)]
fn quantize_blocks(x: &[f32], out: &mut Out<'_>) {
    let blocks = x.chunks_exact(BLOCK).zip(out.qs.chunks_exact_mut(BLOCK));
    for (((xb, qb), d), (s, bias)) in blocks.zip(out.d.iter_mut()).zip(out.s.iter_mut().zip(out.bias.iter_mut())) {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in qb.iter_mut().zip(xb) {
            let c = (v * id).round_ties_even() as i32;
            *q = c as i8;
            sum += c;
        }
        *d = scale;
        *s = scale * sum as f32;
        *bias = -128 * sum;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_avx2(x: &[f32], out: &mut Out<'_>) {
    quantize_blocks(x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn quantize_avx512(x: &[f32], out: &mut Out<'_>) {
    quantize_blocks(x, out)
}
