//! The one SIMD layer of the crate, two traits implemented by one type per instruction set: the portable
//! [`Lanes`] (`scalar.rs`), on x86-64 `Avx2` (`avx2.rs`) and `Avx512` (`avx512.rs`), on aarch64 `Neon`
//! (`neon.rs`).
//! - [`Simd`]: a vector of sixteen f32 lanes (attention, activation quantization, rotary angles);
//! - [`Dot`]: the matrix product's vectors, `W` output lanes of exact integer dot products of 8-bit codes and of f32
//!   accumulators (AVX2 and NEON: 8, the others 16).
//!
//! Kernels are written once, generic over `V: Simd`; each instruction set gets a thin `#[target_feature]` entry
//! point that instantiates the generic body with its type (Rust inlines the trait's methods only into a function
//! compiled with their features). Every implementation performs the same IEEE operations in the same order (fused
//! multiply-adds, one fixed reduction tree, one `exp` polynomial), so all return the same bits; the portable one
//! matches them where its baseline has FMA (aarch64) and rounds multiply and add separately where it has not
//! (x86-64 without AVX2).

use half::f16;

mod scalar;
pub(crate) use scalar::{exp_lane, Lanes};
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::Avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "aarch64")]
pub(crate) use neon::Neon;

/// Lanes of a vector: one AVX-512 register of f32, two AVX2 ones.
pub(crate) const L: usize = 16;

/// Sixteen f32 lanes. Methods are `unsafe`: an implementation may only run where the CPU has its instruction set.
pub(crate) trait Simd: Copy {
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
    /// `|x|` per lane (the sign bit cleared).
    unsafe fn abs(self) -> Self;
    /// A hint to fetch the cache line at `p` (never faults; the portable code has none).
    #[inline(always)]
    unsafe fn prefetch(_p: *const u8) {}
    /// Each lane rounded to the nearest integer, ties to even (the default rounding mode), a NaN lane to 0, stored
    /// as sixteen signed bytes at `p`; returns their sum. Lanes must lie in `[-128.5, 127.5)` or be NaN.
    unsafe fn store_i8(self, p: *mut i8) -> i32;
    /// [`Simd::store_i8`] of `a` then `b` (thirty-two bytes at `p`); returns the sum of `a`'s codes and of all.
    #[inline(always)]
    unsafe fn store_i8_pair(a: Self, b: Self, p: *mut i8) -> (i32, i32) {
        let lo = a.store_i8(p);
        (lo, lo + b.store_i8(p.add(L)))
    }
    /// Transposes sixteen vectors as a 16 x 16 matrix: lane `l` of `r[i]` becomes lane `i` of `r[l]`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the AVX-512 block angles' only
    unsafe fn transpose(r: &mut [Self; L]) {
        let mut m = [[0f32; L]; L];
        for (i, v) in r.iter().enumerate() {
            v.store(m[i].as_mut_ptr());
        }
        for (l, v) in r.iter_mut().enumerate() {
            *v = Self::load(std::array::from_fn::<f32, L, _>(|i| m[i][l]).as_ptr());
        }
    }

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

// Cephes' `expf` constants, shared by every implementation.
pub(crate) const EXP_HI: f32 = 88.376_26;
pub(crate) const EXP_LO: f32 = -87.336_55;
const LOG2E: f32 = std::f32::consts::LOG2_E;
pub(crate) const EXP_C1: f32 = 0.693_359_4;
pub(crate) const EXP_C2: f32 = -2.121_944_4e-4;
pub(crate) const EXP_P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

/// The matrix product's vectors: `W` output lanes (a tile's 16 outputs are `16 / W` of them, at most 2) of 32-bit
/// integer sums (`I`; also `4 W` code bytes) and of f32 accumulators (`F`). The integer dot products are exact, so
/// every implementation returns the same sums however it forms them (`vpdpbusd`, `vpmaddubsw` pairs, plain loops);
/// the float methods are single IEEE operations. Associated functions, not methods: the implementing type is only a
/// marker for the instruction set.
pub(crate) trait Dot: Simd {
    /// Output lanes per vector.
    const W: usize;
    type I: Copy;
    type F: Copy;

    /// `4 W` code bytes (the 4 bytes of lane `l` at `4 l`).
    unsafe fn codes(p: *const u8) -> Self::I;
    unsafe fn izero() -> Self::I;
    unsafe fn isplat(x: i32) -> Self::I;
    unsafe fn iadd(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn isub(a: Self::I, b: Self::I) -> Self::I;
    /// The low 32 bits of the product.
    unsafe fn imul(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn and(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn or(a: Self::I, b: Self::I) -> Self::I;
    /// Logical shifts of each 32-bit lane.
    unsafe fn shr(a: Self::I, n: u32) -> Self::I;
    unsafe fn shl(a: Self::I, n: u32) -> Self::I;
    /// The low and the high nibble of every byte.
    unsafe fn low_nibbles(v: Self::I) -> Self::I;
    unsafe fn high_nibbles(v: Self::I) -> Self::I;
    /// `W` bytes, unsigned or signed, one per lane.
    unsafe fn widen_u8(p: *const u8) -> Self::I;
    unsafe fn widen_i8(p: *const u8) -> Self::I;
    /// `acc + Σ_k Σ_i w[k].byte(4 l + i) * x[4 k + i]` per lane `l`: 16 inputs, unsigned codes below 64 times
    /// signed activation codes (`|x| <= 127`).
    unsafe fn dot16(acc: Self::I, w: &[Self::I; 4], x: *const u8) -> Self::I;
    /// A block of 32 inputs of 4-bit codes: `lo` holds inputs 0-15, `hi` 16-31.
    #[inline(always)]
    unsafe fn dot32_4bit(lo: &[Self::I; 4], hi: &[Self::I; 4], x: *const u8) -> Self::I {
        Self::iadd(Self::dot16(Self::izero(), lo, x), Self::dot16(Self::izero(), hi, x.add(16)))
    }
    /// `Q8_0` codes as loaded (code + 128) made ready for [`Dot::dot_q8`].
    unsafe fn q8_codes(raw: Self::I) -> Self::I;
    /// The signed codes' dot product with a block of 32 activation codes: `bias` is the block's `-128 Σx`, for
    /// implementations that multiply the stored code + 128.
    unsafe fn dot_q8(w: &[Self::I; 8], x: *const u8, bias: i32) -> Self::I;

    /// `W` f16 values (little-endian bytes), converted exactly.
    unsafe fn scales(p: *const u8) -> Self::F;
    unsafe fn fzero() -> Self::F;
    unsafe fn fsplat(x: f32) -> Self::F;
    unsafe fn fmul(a: Self::F, b: Self::F) -> Self::F;
    /// `a * b + c`, one rounding.
    unsafe fn fmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// The sign flipped (exact).
    unsafe fn fneg(a: Self::F) -> Self::F;
    /// Rounded to nearest (exact below 2^24).
    unsafe fn to_f32(a: Self::I) -> Self::F;
    unsafe fn fstore(a: Self::F, p: *mut f32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::Isa;

    #[inline(always)]
    unsafe fn transposed<V: Simd>(m: &[[f32; L]; L]) -> [[f32; L]; L] {
        let mut r: [V; L] = std::array::from_fn(|i| V::load(m[i].as_ptr()));
        V::transpose(&mut r);
        let mut out = [[0f32; L]; L];
        for (o, v) in out.iter_mut().zip(&r) {
            v.store(o.as_mut_ptr());
        }
        out
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn transposed_avx2(m: &[[f32; L]; L]) -> [[f32; L]; L] {
        transposed::<Avx2>(m)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn transposed_avx512(m: &[[f32; L]; L]) -> [[f32; L]; L] {
        transposed::<Avx512>(m)
    }

    #[cfg(target_arch = "aarch64")]
    #[target_feature(enable = "neon")]
    unsafe fn transposed_neon(m: &[[f32; L]; L]) -> [[f32; L]; L] {
        transposed::<Neon>(m)
    }

    #[test]
    fn transpose_swaps_lanes_and_vectors_in_every_variant() {
        let m: [[f32; L]; L] = std::array::from_fn(|i| std::array::from_fn(|l| (i * 100 + l) as f32));
        let want: [[f32; L]; L] = std::array::from_fn(|l| std::array::from_fn(|i| m[i][l]));
        for isa in Isa::supported() {
            // SAFETY: each variant runs only where the CPU supports it.
            let got = unsafe {
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => transposed_avx2(&m),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => transposed_avx512(&m),
                    #[cfg(target_arch = "aarch64")]
                    Isa::Neon => transposed_neon(&m),
                    _ => transposed::<Lanes>(&m),
                }
            };
            assert_eq!(got, want, "{isa}");
        }
    }
}
