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
    unsafe fn prefetch(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    }
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        let m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        Avx2(_mm256_and_ps(self.0, m), _mm256_and_ps(self.1, m))
    }
    #[inline(always)]
    unsafe fn store_i8(self, p: *mut i8) -> i32 {
        let (q, sum) = codes(self);
        _mm_storeu_si128(p as *mut __m128i, _mm256_castsi256_si128(q));
        sum
    }
    /// Both vectors packed at once: one 32-byte store.
    #[inline(always)]
    unsafe fn store_i8_pair(a: Self, b: Self, p: *mut i8) -> (i32, i32) {
        let (qa, qb) = (rounded(a.0, a.1), rounded(b.0, b.1));
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(qa.0, qa.1), _mm256_packs_epi32(qb.0, qb.1));
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        _mm256_storeu_si256(p as *mut __m256i, _mm256_permutevar8x32_epi32(bytes, order));
        let lo = _mm256_add_epi32(qa.0, qa.1);
        (hsum8(lo), hsum8(_mm256_add_epi32(lo, _mm256_add_epi32(qb.0, qb.1))))
    }
}

/// The lanes rounded to nearest even (`cvtps_epi32`, the default rounding mode), NaN lanes zeroed.
#[inline(always)]
unsafe fn rounded(lo: __m256, hi: __m256) -> (__m256i, __m256i) {
    let code = |x: __m256| {
        let ord = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(x, x));
        _mm256_and_si256(_mm256_cvtps_epi32(x), ord)
    };
    (code(lo), code(hi))
}

/// Sixteen codes as bytes in the low 128 bits (the saturating packs are exact for codes that fit a byte), and
/// their sum.
#[inline(always)]
unsafe fn codes(x: Avx2) -> (__m256i, i32) {
    let (a, b) = rounded(x.0, x.1);
    // `packs_epi32` interleaves the 128-bit halves (a0-3 b0-3 | a4-7 b4-7); the permutes undo it.
    let w = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
    let bytes = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi16(w, w));
    (bytes, hsum8(_mm256_add_epi32(a, b)))
}

#[inline(always)]
unsafe fn hsum8(t: __m256i) -> i32 {
    let t4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256::<1>(t));
    let t2 = _mm_add_epi32(t4, _mm_unpackhi_epi64(t4, t4));
    _mm_cvtsi128_si32(_mm_add_epi32(t2, _mm_shuffle_epi32::<1>(t2)))
}

#[inline(always)]
unsafe fn bcst(p: *const u8) -> __m256i {
    _mm256_set1_epi32((p as *const i32).read_unaligned())
}

/// Eight outputs per register (a tile as two halves). 4-bit codes go straight into `vpmaddubsw` (8 of its 16-bit
/// pair sums add up without saturating); 6-bit pair sums reach 16,002, so two are added in 16 bits before widening;
/// `Q8_0` codes are made signed again and multiplied as `|w| * (x * sign(w))`, exact for every code including -128.
impl Dot for Avx2 {
    const W: usize = 8;
    type I = __m256i;
    type F = __m256;

    #[inline(always)]
    unsafe fn codes(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }
    #[inline(always)]
    unsafe fn izero() -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn isplat(x: i32) -> __m256i {
        _mm256_set1_epi32(x)
    }
    #[inline(always)]
    unsafe fn iadd(a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn isub(a: __m256i, b: __m256i) -> __m256i {
        _mm256_sub_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn imul(a: __m256i, b: __m256i) -> __m256i {
        _mm256_mullo_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn and(a: __m256i, b: __m256i) -> __m256i {
        _mm256_and_si256(a, b)
    }
    #[inline(always)]
    unsafe fn or(a: __m256i, b: __m256i) -> __m256i {
        _mm256_or_si256(a, b)
    }
    #[inline(always)]
    unsafe fn shr(a: __m256i, n: u32) -> __m256i {
        _mm256_srl_epi32(a, _mm_cvtsi32_si128(n as i32))
    }
    #[inline(always)]
    unsafe fn shl(a: __m256i, n: u32) -> __m256i {
        _mm256_sll_epi32(a, _mm_cvtsi32_si128(n as i32))
    }
    #[inline(always)]
    unsafe fn low_nibbles(v: __m256i) -> __m256i {
        _mm256_and_si256(v, _mm256_set1_epi8(0x0F))
    }
    #[inline(always)]
    unsafe fn high_nibbles(v: __m256i) -> __m256i {
        _mm256_and_si256(_mm256_srli_epi16::<4>(v), _mm256_set1_epi8(0x0F))
    }
    #[inline(always)]
    unsafe fn widen_u8(p: *const u8) -> __m256i {
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn widen_i8(p: *const u8) -> __m256i {
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn dot16(acc: __m256i, w: &[__m256i; 4], x: *const u8) -> __m256i {
        let ones = _mm256_set1_epi16(1);
        let pair = |k: usize| {
            let a = _mm256_maddubs_epi16(w[k], bcst(x.add(4 * k)));
            let b = _mm256_maddubs_epi16(w[k + 1], bcst(x.add(4 * k + 4)));
            _mm256_madd_epi16(_mm256_add_epi16(a, b), ones)
        };
        _mm256_add_epi32(acc, _mm256_add_epi32(pair(0), pair(2)))
    }
    #[inline(always)]
    unsafe fn dot32_4bit(lo: &[__m256i; 4], hi: &[__m256i; 4], x: *const u8) -> __m256i {
        let mut s16 = _mm256_setzero_si256();
        for k in 0..4 {
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(lo[k], bcst(x.add(4 * k))));
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(hi[k], bcst(x.add(16 + 4 * k))));
        }
        _mm256_madd_epi16(s16, _mm256_set1_epi16(1))
    }
    #[inline(always)]
    unsafe fn q8_codes(raw: __m256i) -> __m256i {
        _mm256_xor_si256(raw, _mm256_set1_epi8(-128))
    }
    #[inline(always)]
    unsafe fn dot_q8(w: &[__m256i; 8], x: *const u8, _bias: i32) -> __m256i {
        let ones = _mm256_set1_epi16(1);
        let mut isum = _mm256_setzero_si256();
        for (g, wg) in w.iter().enumerate() {
            let p = _mm256_maddubs_epi16(_mm256_abs_epi8(*wg), _mm256_sign_epi8(bcst(x.add(4 * g)), *wg));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, ones));
        }
        isum
    }

    #[inline(always)]
    unsafe fn scales(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn fzero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn fsplat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn fmul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn fneg(a: __m256) -> __m256 {
        _mm256_castsi256_ps(_mm256_xor_si256(_mm256_castps_si256(a), _mm256_set1_epi32(i32::MIN)))
    }
    #[inline(always)]
    unsafe fn to_f32(a: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn fstore(a: __m256, p: *mut f32) {
        _mm256_storeu_ps(p, a)
    }
}
