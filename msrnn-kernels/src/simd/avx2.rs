//! AVX2 (+ FMA, F16C): sixteen lanes as two 256-bit registers, lanes 0-7 and 8-15.

use super::*;
use std::arch::x86_64::*;

/// Lanes 0-7 and 8-15 in two AVX2 registers.
#[derive(Clone, Copy)]
pub(crate) struct Avx2(__m256, __m256);

#[inline(always)]
pub(super) unsafe fn sum8(x: __m256) -> f32 {
    // lanes l + l+4, then l + l+2, then l + l+1: the tree's last three levels.
    let s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[inline(always)]
pub(super) unsafe fn max8(x: __m256) -> f32 {
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
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        let m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        Avx2(_mm256_and_ps(self.0, m), _mm256_and_ps(self.1, m))
    }
    #[inline(always)]
    unsafe fn store_i8(self, p: *mut i8) -> i32 {
        // `cvtps_epi32` rounds to nearest even; NaN lanes are zeroed; the saturating packs are exact for codes that
        // fit a byte. `packs_epi32` interleaves the 128-bit halves (a0-3 b0-3 | a4-7 b4-7), the permute undoes it.
        let code = |x: __m256| {
            let ord = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(x, x));
            _mm256_and_si256(_mm256_cvtps_epi32(x), ord)
        };
        let (a, b) = (code(self.0), code(self.1));
        let w = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
        _mm_storeu_si128(
            p as *mut __m128i,
            _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w)),
        );
        let t = _mm256_add_epi32(a, b);
        let t4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256::<1>(t));
        let t2 = _mm_add_epi32(t4, _mm_unpackhi_epi64(t4, t4));
        _mm_cvtsi128_si32(_mm_add_epi32(t2, _mm_shuffle_epi32::<1>(t2)))
    }
}
