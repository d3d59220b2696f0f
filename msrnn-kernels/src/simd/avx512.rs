//! AVX-512 F: sixteen lanes in one 512-bit register; the reductions end in the AVX2 variant's tree, so both sum
//! and take maxima in the same order.

use super::avx2::{max8, sum8};
use super::*;
use std::arch::x86_64::*;
/// All sixteen lanes in one AVX-512 register.
#[derive(Clone, Copy)]
pub(crate) struct Avx512(__m512);

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
    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    }
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        Avx512(_mm512_abs_ps(self.0))
    }
    #[inline(always)]
    unsafe fn store_i8(self, p: *mut i8) -> i32 {
        let ord = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(self.0, self.0);
        let q = _mm512_maskz_mov_epi32(ord, _mm512_cvtps_epi32(self.0));
        _mm_storeu_si128(p as *mut __m128i, _mm512_cvtepi32_epi8(q));
        _mm512_reduce_add_epi32(q)
    }
    /// 32-bit, then 64-bit interleaves, then two rounds of 128-bit lane shuffles.
    #[inline(always)]
    unsafe fn transpose(r: &mut [Self; L]) {
        let mut t = [_mm512_setzero_ps(); 16];
        for k in 0..8 {
            t[2 * k] = _mm512_unpacklo_ps(r[2 * k].0, r[2 * k + 1].0);
            t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k].0, r[2 * k + 1].0);
        }
        let (lo, hi) = (
            |a: __m512, b: __m512| _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))),
            |a: __m512, b: __m512| _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))),
        );
        let mut u = [_mm512_setzero_ps(); 16];
        for k in 0..4 {
            let q = 4 * k;
            u[q] = lo(t[q], t[q + 2]);
            u[q + 1] = hi(t[q], t[q + 2]);
            u[q + 2] = lo(t[q + 1], t[q + 3]);
            u[q + 3] = hi(t[q + 1], t[q + 3]);
        }
        for h in 0..2 {
            let q = 8 * h;
            for j in 0..4 {
                t[q + j] = _mm512_shuffle_f32x4::<0x88>(u[q + j], u[q + j + 4]);
                t[q + j + 4] = _mm512_shuffle_f32x4::<0xdd>(u[q + j], u[q + j + 4]);
            }
        }
        for j in 0..8 {
            r[j] = Avx512(_mm512_shuffle_f32x4::<0x88>(t[j], t[j + 8]));
            r[j + 8] = Avx512(_mm512_shuffle_f32x4::<0xdd>(t[j], t[j + 8]));
        }
    }
}

#[inline(always)]
unsafe fn bcst(p: *const u8) -> __m512i {
    _mm512_set1_epi32((p as *const i32).read_unaligned())
}

/// AVX-512 VNNI: one register for a tile's sixteen outputs, `vpdpbusd` (unsigned weight codes x signed activation
/// codes, 4 at a time, into 32-bit sums) with the activation group broadcast from memory.
impl Dot for Avx512 {
    const W: usize = L;
    type I = __m512i;
    type F = __m512;

    #[inline(always)]
    unsafe fn codes(p: *const u8) -> __m512i {
        _mm512_loadu_si512(p as *const _)
    }
    #[inline(always)]
    unsafe fn izero() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn isplat(x: i32) -> __m512i {
        _mm512_set1_epi32(x)
    }
    #[inline(always)]
    unsafe fn iadd(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn isub(a: __m512i, b: __m512i) -> __m512i {
        _mm512_sub_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn imul(a: __m512i, b: __m512i) -> __m512i {
        _mm512_mullo_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn and(a: __m512i, b: __m512i) -> __m512i {
        _mm512_and_si512(a, b)
    }
    #[inline(always)]
    unsafe fn or(a: __m512i, b: __m512i) -> __m512i {
        _mm512_or_si512(a, b)
    }
    #[inline(always)]
    unsafe fn shr(a: __m512i, n: u32) -> __m512i {
        _mm512_srl_epi32(a, _mm_cvtsi32_si128(n as i32))
    }
    #[inline(always)]
    unsafe fn shl(a: __m512i, n: u32) -> __m512i {
        _mm512_sll_epi32(a, _mm_cvtsi32_si128(n as i32))
    }
    #[inline(always)]
    unsafe fn low_nibbles(v: __m512i) -> __m512i {
        _mm512_and_si512(v, _mm512_set1_epi8(0x0F))
    }
    #[inline(always)]
    unsafe fn high_nibbles(v: __m512i) -> __m512i {
        _mm512_and_si512(_mm512_srli_epi16::<4>(v), _mm512_set1_epi8(0x0F))
    }
    #[inline(always)]
    unsafe fn widen_u8(p: *const u8) -> __m512i {
        _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn widen_i8(p: *const u8) -> __m512i {
        _mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn dot16(acc: __m512i, w: &[__m512i; 4], x: *const u8) -> __m512i {
        let mut s = acc;
        for (k, wk) in w.iter().enumerate() {
            s = _mm512_dpbusd_epi32(s, *wk, bcst(x.add(4 * k)));
        }
        s
    }
    #[inline(always)]
    unsafe fn q8_codes(raw: __m512i) -> __m512i {
        raw
    }
    #[inline(always)]
    unsafe fn dot_q8(w: &[__m512i; 8], x: *const u8, bias: i32) -> __m512i {
        // Two chains: the stored code + 128 times x, corrected by the bias `-128 Σx`.
        let mut s0 = _mm512_set1_epi32(bias);
        let mut s1 = _mm512_setzero_si512();
        for g in (0..8).step_by(2) {
            s0 = _mm512_dpbusd_epi32(s0, w[g], bcst(x.add(4 * g)));
            s1 = _mm512_dpbusd_epi32(s1, w[g + 1], bcst(x.add(4 * g + 4)));
        }
        _mm512_add_epi32(s0, s1)
    }

    #[inline(always)]
    unsafe fn scales(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn fzero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn fsplat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn fmul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn fneg(a: __m512) -> __m512 {
        _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_set1_epi32(i32::MIN)))
    }
    #[inline(always)]
    unsafe fn to_f32(a: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn fstore(a: __m512, p: *mut f32) {
        _mm512_storeu_ps(p, a)
    }
}
