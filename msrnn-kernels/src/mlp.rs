//! The gated MLP's elementwise step, `act(gate) * up`, where a tensor library makes two passes and two tensors, and
//! spends one libm call per value.
//!
//! GELU's tanh form (Gemma's `gelu_pytorch_tanh`) is `0.5 x (1 + tanh(u))` with `u = sqrt(2/pi) (x + 0.044715 x^3)`.
//! Since `1 + tanh(u) = 2 / (1 + e^(-2u))`, it equals `x / (1 + e^(-2u))`: one [`Simd::exp`] and one division per
//! value, and no cancellation for negative `x` (where `1 + tanh(u)` loses digits). Every variant computes the same
//! bits (no fused multiply-adds: the portable fallback would round them twice).
//!
//! SiLU (LLaMA's SwiGLU) keeps candle's own expression, `x / (1 + e^-x)` with libm's `expf`, so its results are the
//! bits candle's `silu(g) * u` gives: the models' outputs do not move; what changes is one pass instead of two, and
//! large inputs spread over the thread pool.

use crate::isa::Isa;
use crate::simd::{Lanes, Simd, L};

/// `sqrt(2 / pi)`, GELU's tanh-approximation constant, times -2 (the exponent's factor).
const MINUS_TWO_SQRT_2_OVER_PI: f32 = -1.595_769;
const CUBIC: f32 = 0.044_715;
/// Inputs below this are raised to it: `gelu(-10)` is -1.2e-37, and below it `e^(-2u)` passes `exp`'s largest
/// input, which would clamp it and leave `x / e^88` (-2 for `f32::MIN`) instead of about 0.
const LOW: f32 = -10.0;

/// `out[i] = gelu_tanh(gate[i]) * up[i]` with the active variant ([`crate::isa::active`]).
pub fn gelu_tanh_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    gelu_tanh_mul_with(crate::isa::active(), gate, up, out)
}

/// [`gelu_tanh_mul`] with a chosen variant (the tests compare them). Panics when the lengths differ.
pub fn gelu_tanh_mul_with(isa: Isa, gate: &[f32], up: &[f32], out: &mut [f32]) {
    chunked(gate, up, out, &|g, u, o| gelu_piece(isa, g, u, o))
}

/// One piece of [`gelu_tanh_mul_with`]: the lengths are equal.
fn gelu_piece(isa: Isa, gate: &[f32], up: &[f32], out: &mut [f32]) {
    match isa {
        // SAFETY: each variant runs only where the CPU supports it; `chunked` checked the lengths.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_supported() => unsafe { gelu_avx512(gate, up, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 if Isa::Avx2.is_supported() => unsafe { gelu_avx2(gate, up, out) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if isa.is_supported() => unsafe { gelu_neon(gate, up, out) },
        // SAFETY: the portable code runs anywhere.
        _ => unsafe { gelu_body::<Lanes>(gate, up, out) },
    }
}

/// Values per pool task: large steps (a prefill chunk, a batch) are split across the threads, a single decode row
/// (a few thousand values) stays on the calling thread.
const CHUNK: usize = 2048;

/// One piece of a gated step: `(gate, up, out)`.
type Piece<'a> = &'a (dyn Fn(&[f32], &[f32], &mut [f32]) + Sync);

/// `f(gate, up, out)` over the three slices, in [`CHUNK`]-value pieces on the pool when there are several.
fn chunked(gate: &[f32], up: &[f32], out: &mut [f32], f: Piece<'_>) {
    assert!(gate.len() == up.len() && up.len() == out.len(), "gated MLP step: lengths differ");
    let n = out.len();
    if n <= CHUNK {
        return f(gate, up, out);
    }
    let mut pieces: Vec<&mut [f32]> = out.chunks_mut(CHUNK).collect();
    crate::pool::for_each_mut(&mut pieces, &|i, o| {
        let at = i * CHUNK;
        f(&gate[at..at + o.len()], &up[at..at + o.len()], o)
    });
}

/// `out[i] = silu(gate[i]) * up[i]`, with `silu(x) = x / (1 + e^-x)` as candle computes it (the same bits).
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    chunked(gate, up, out, &|g, u, o| {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    })
}

/// The rule on one vector: `x / (1 + e^(-2u))`.
#[inline(always)]
unsafe fn gelu_vec<V: Simd>(x: V) -> V {
    let x = x.max(V::splat(LOW));
    let inner = x.mul(x).mul(x).mul(V::splat(CUBIC)).add(x);
    let e = inner.mul(V::splat(MINUS_TWO_SQRT_2_OVER_PI)).exp();
    x.div(V::splat(1.0).add(e))
}

#[inline(always)]
unsafe fn gelu_body<V: Simd>(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = gate.len();
    let (g, u, o) = (gate.as_ptr(), up.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + L <= n {
        gelu_vec(V::load(g.add(i))).mul(V::load(u.add(i))).store(o.add(i));
        i += L;
    }
    if i < n {
        let k = n - i;
        gelu_vec(V::load_part(g.add(i), k)).mul(V::load_part(u.add(i), k)).store_part(o.add(i), k);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gelu_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    gelu_body::<crate::simd::Avx2>(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn gelu_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
    gelu_body::<crate::simd::Avx512>(gate, up, out)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn gelu_neon(gate: &[f32], up: &[f32], out: &mut [f32]) {
    gelu_body::<crate::simd::Neon>(gate, up, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GELU's tanh form in f64, written as the sigmoid it equals (the tanh form itself rounds to 0 below -9).
    fn reference(x: f64) -> f64 {
        x / (1.0 + (-2.0 * (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).exp())
    }

    fn inputs() -> Vec<f32> {
        let mut x: Vec<f32> = (0..4001).map(|i| -20.0 + i as f32 * 0.01).collect();
        x.extend([0.0, -0.0, 1e-30, -1e-30, 1e-6, -1e-6, 50.0, -50.0, 100.0, -100.0, 1e4, -1e4, f32::MAX, f32::MIN]);
        x
    }

    #[test]
    fn gelu_matches_the_f64_tanh_form() {
        let x = inputs();
        let up = vec![1.0f32; x.len()];
        let mut out = vec![0f32; x.len()];
        gelu_tanh_mul_with(Isa::Scalar, &x, &up, &mut out);
        for (&x, &y) in x.iter().zip(&out) {
            let want = reference(x as f64);
            let err = (y as f64 - want).abs();
            // Below -3 the function is ill-conditioned (its relative slope reaches ~200 at -9.4, so the f32 rounding
            // of the exponent's argument alone moves the result by ~1e-5 relative); the outputs there are < 0.004.
            let rel = if x < -3.0 { 5e-5 } else { 2e-6 };
            assert!(err <= rel * want.abs() + 2e-37, "gelu_tanh({x}) = {y}, want {want} (error {err:e})");
        }
        // By hand: gelu(1) = 0.5 (1 + tanh(0.7978846 * 1.044715)) = 0.8411920, gelu(-1) = gelu(1) - 1, and
        // gelu(2) = 1 + tanh(0.7978846 * 2.35772) = 1.9545977.
        gelu_tanh_mul_with(Isa::Scalar, &[1.0, -1.0, 2.0], &[1.0, 1.0, 3.0], &mut out[..3]);
        assert!((out[0] - 0.841_192).abs() < 1e-6 && (out[1] + 0.158_808).abs() < 1e-6, "{:?}", &out[..2]);
        assert!((out[2] - 3.0 * 1.954_597_7).abs() < 3e-6, "3 gelu(2) = {}", out[2]);
    }

    #[test]
    fn silu_mul_is_candles_expression_at_every_length() {
        let x = inputs();
        let up: Vec<f32> = (0..x.len()).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        // By hand: silu(1) = 1 / (1 + e^-1) = 0.7310586, silu(-1) = silu(1) - 1 = -0.2689414, silu(0) = 0.
        let mut out = [0f32; 3];
        silu_mul(&[1.0, -1.0, 0.0], &[1.0, 2.0, 5.0], &mut out);
        assert!((out[0] - 0.731_058_6).abs() < 1e-6 && (out[1] + 2.0 * 0.268_941_4).abs() < 1e-6, "{out:?}");
        assert_eq!(out[2], 0.0);
        // Lengths around the pool's pieces: every value is computed as the one-value expression.
        let long: Vec<f32> = (0..3 * CHUNK + 5).map(|i| x[i % x.len()]).collect();
        let long_up: Vec<f32> = (0..long.len()).map(|i| up[i % up.len()]).collect();
        for n in [0, 1, 17, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3, long.len()] {
            let mut got = vec![1f32; n];
            silu_mul(&long[..n], &long_up[..n], &mut got);
            for i in 0..n {
                let (g, u) = (long[i], long_up[i]);
                let want = g / (1.0 + (-g).exp()) * u;
                assert_eq!(got[i].to_bits(), want.to_bits(), "silu({g}) * {u} at {i} of {n}");
            }
        }
    }

    #[test]
    fn every_variant_gives_the_same_bits_at_every_length() {
        let x = inputs();
        let up: Vec<f32> = (0..x.len()).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        let x: Vec<f32> = (0..2 * CHUNK + 40).map(|i| x[i % x.len()]).collect();
        let up: Vec<f32> = (0..x.len()).map(|i| up[i % up.len()]).collect();
        for n in [0, 1, 15, 16, 17, 33, 640, 2048, CHUNK + 1, x.len()] {
            let mut want = vec![0f32; n];
            gelu_tanh_mul_with(Isa::Scalar, &x[..n], &up[..n], &mut want);
            for isa in Isa::supported() {
                let mut got = vec![1f32; n];
                gelu_tanh_mul_with(isa, &x[..n], &up[..n], &mut got);
                let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{isa} differs from the portable code at length {n}");
            }
        }
    }
}
