//! The one SIMD layer of the crate: [`Simd`], a vector of sixteen f32 lanes, with a portable implementation
//! ([`Lanes`]) and, on x86-64, AVX2 ([`Avx2`]: two 256-bit registers) and AVX-512 ([`Avx512`]: one register).
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
    /// Each lane rounded to the nearest integer, ties to even (the default rounding mode), a NaN lane to 0, stored
    /// as sixteen signed bytes at `p`; returns their sum. Lanes must lie in `[-128.5, 127.5)` or be NaN.
    unsafe fn store_i8(self, p: *mut i8) -> i32;
    /// Transposes sixteen vectors as a 16 x 16 matrix: lane `l` of `r[i]` becomes lane `i` of `r[l]`.
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
