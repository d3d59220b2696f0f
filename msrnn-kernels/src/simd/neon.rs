//! aarch64 NEON (Advanced SIMD, on every aarch64 CPU): sixteen f32 lanes as four 128-bit registers; the matrix
//! product on eight output lanes (two registers, a tile as two halves). Comparisons and selects stand in for x86's
//! `min`/`max` (which return their second operand when either is NaN) so that every variant keeps the same rules;
//! f16 values are converted with integer operations (exact: the f16 bits moved into an f32 and scaled by 2^112),
//! as the f16 vector types are not stable Rust; int8 dot products without the optional `sdot` instruction, in
//! 16-bit products summed exactly (the bounds at each method).

use super::*;
use std::arch::aarch64::*;

/// Lanes 0-3, 4-7, 8-11 and 12-15 in four registers.
#[derive(Clone, Copy)]
pub(crate) struct Neon([float32x4_t; 4]);

#[inline(always)]
unsafe fn map(a: Neon, f: impl Fn(float32x4_t) -> float32x4_t) -> Neon {
    Neon([f(a.0[0]), f(a.0[1]), f(a.0[2]), f(a.0[3])])
}

#[inline(always)]
unsafe fn map2(a: Neon, b: Neon, f: impl Fn(float32x4_t, float32x4_t) -> float32x4_t) -> Neon {
    Neon([f(a.0[0], b.0[0]), f(a.0[1], b.0[1]), f(a.0[2], b.0[2]), f(a.0[3], b.0[3])])
}

/// `if b > a { b } else { a }` per lane (x86's `max_ps(b, a)`).
#[inline(always)]
unsafe fn max4(a: float32x4_t, b: float32x4_t) -> float32x4_t {
    vbslq_f32(vcgtq_f32(b, a), b, a)
}

/// Four f16 values (as `u16`) to f32, exactly, F16C's results for every non-NaN input.
#[inline(always)]
unsafe fn f16x4(h: uint16x4_t) -> float32x4_t {
    let h = vmovl_u16(h);
    let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
    let em = vandq_u32(h, vdupq_n_u32(0x7fff));
    let shifted = vshlq_n_u32::<13>(em);
    // Normal and subnormal values: the bits as an f32 are the value times 2^-112, exactly.
    let finite = vmulq_f32(vreinterpretq_f32_u32(shifted), vdupq_n_f32(f32::from_bits(0x7780_0000)));
    let special = vreinterpretq_f32_u32(vorrq_u32(shifted, vdupq_n_u32(0x7f80_0000)));
    let v = vbslq_f32(vcgeq_u32(em, vdupq_n_u32(0x7c00)), special, finite);
    vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(v), sign))
}

#[inline(always)]
unsafe fn exp4(x: float32x4_t) -> float32x4_t {
    let below = vcltq_f32(x, vdupq_n_f32(EXP_LO));
    // x86's `min_ps(x, hi)` and `max_ps(v, lo)`.
    let hi = vdupq_n_f32(EXP_HI);
    let v = vbslq_f32(vcltq_f32(x, hi), x, hi);
    let lo = vdupq_n_f32(EXP_LO);
    let v = vbslq_f32(vcgtq_f32(v, lo), v, lo);
    let f = vaddq_f32(vmulq_f32(v, vdupq_n_f32(LOG2E)), vdupq_n_f32(0.5));
    let nf = vrndmq_f32(f);
    let r = vsubq_f32(vsubq_f32(v, vmulq_f32(nf, vdupq_n_f32(EXP_C1))), vmulq_f32(nf, vdupq_n_f32(EXP_C2)));
    let mut p = vdupq_n_f32(EXP_P[0]);
    for &c in &EXP_P[1..] {
        p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(c));
    }
    let e = vaddq_f32(vaddq_f32(vmulq_f32(p, vmulq_f32(r, r)), r), vdupq_n_f32(1.0));
    let n = vcvtq_s32_f32(nf);
    let pow = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n, vdupq_n_s32(127))));
    let y = vreinterpretq_u32_f32(vmulq_f32(e, pow));
    vreinterpretq_f32_u32(vbicq_u32(y, below))
}

impl Simd for Neon {
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Neon([vdupq_n_f32(x); 4])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Neon([vld1q_f32(p), vld1q_f32(p.add(4)), vld1q_f32(p.add(8)), vld1q_f32(p.add(12))])
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> Self {
        let (a, b) = (vld1q_u16(p as *const u16), vld1q_u16((p as *const u16).add(8)));
        Neon([f16x4(vget_low_u16(a)), f16x4(vget_high_u16(a)), f16x4(vget_low_u16(b)), f16x4(vget_high_u16(b))])
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> Self {
        let x = vld1q_s8(p);
        let (lo, hi) = (vmovl_s8(vget_low_s8(x)), vmovl_s8(vget_high_s8(x)));
        let f = |h: int16x4_t| vcvtq_f32_s32(vmovl_s16(h));
        Neon([f(vget_low_s16(lo)), f(vget_high_s16(lo)), f(vget_low_s16(hi)), f(vget_high_s16(hi))])
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        for (i, v) in self.0.iter().enumerate() {
            vst1q_f32(p.add(4 * i), *v);
        }
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        map2(self, o, |a, b| vaddq_f32(a, b))
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        map2(self, o, |a, b| vsubq_f32(a, b))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        map2(self, o, |a, b| vmulq_f32(a, b))
    }
    #[inline(always)]
    unsafe fn fma(self, a: Self, b: Self) -> Self {
        Neon(std::array::from_fn(|i| vfmaq_f32(b.0[i], self.0[i], a.0[i])))
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        map2(self, o, |a, b| vdivq_f32(a, b))
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        map2(self, o, |a, b| max4(a, b))
    }
    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        // lanes l + l+8, l + l+4, l + l+2, l + l+1: the portable tree.
        let s = vaddq_f32(vaddq_f32(self.0[0], self.0[2]), vaddq_f32(self.0[1], self.0[3]));
        let t = vadd_f32(vget_low_f32(s), vget_high_f32(s));
        vget_lane_f32::<0>(t) + vget_lane_f32::<1>(t)
    }
    #[inline(always)]
    unsafe fn max_lane(self) -> f32 {
        let m = max4(max4(self.0[0], self.0[2]), max4(self.0[1], self.0[3]));
        let (lo, hi) = (vget_low_f32(m), vget_high_f32(m));
        let t = vbsl_f32(vcgt_f32(hi, lo), hi, lo);
        let (a, b) = (vget_lane_f32::<0>(t), vget_lane_f32::<1>(t));
        if b > a {
            b
        } else {
            a
        }
    }
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        map(self, |x| exp4(x))
    }
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        map(self, |x| vabsq_f32(x))
    }
    #[inline(always)]
    unsafe fn store_i8(self, p: *mut i8) -> i32 {
        // `fcvtns`: round to nearest even, NaN to 0; the narrowing saturates, exact for codes that fit a byte.
        let q: [int32x4_t; 4] = std::array::from_fn(|i| vcvtnq_s32_f32(self.0[i]));
        let lo = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
        let hi = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
        vst1q_s8(p, vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi)));
        vaddvq_s32(vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])))
    }
}

/// Eight lanes of 32 bits (32 code bytes) in two registers.
type I8 = [uint32x4_t; 2];

#[inline(always)]
unsafe fn zip(a: I8, b: I8, f: impl Fn(uint32x4_t, uint32x4_t) -> uint32x4_t) -> I8 {
    [f(a[0], b[0]), f(a[1], b[1])]
}

/// The 4 activation codes at `x` repeated over eight 16-bit lanes.
#[inline(always)]
unsafe fn group16(x: *const u8) -> int16x8_t {
    let g = vreinterpret_s8_u32(vdup_n_u32((x as *const u32).read_unaligned()));
    vmovl_s8(g)
}

/// Per 32-bit lane `l` of `v`: the sum of its 4 bytes times `x`'s 4 codes, as 16-bit products added to `acc` (the
/// first 8 bytes of `v` in `acc[0]`, the last 8 in `acc[1]`); `signed`: the bytes are `i8`.
#[inline(always)]
unsafe fn mul_acc(acc: &mut [int16x8_t; 2], v: uint32x4_t, x: int16x8_t, signed: bool) {
    let b = vreinterpretq_u8_u32(v);
    let (lo, hi) = if signed {
        let s = vreinterpretq_s8_u8(b);
        (vmovl_s8(vget_low_s8(s)), vmovl_s8(vget_high_s8(s)))
    } else {
        (vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(b))), vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(b))))
    };
    acc[0] = vmlaq_s16(acc[0], lo, x);
    acc[1] = vmlaq_s16(acc[1], hi, x);
}

/// The 16-bit sums of [`mul_acc`] (bytes 0-3 of a lane, twice two) to one 32-bit sum per lane.
#[inline(always)]
unsafe fn widen(acc: [int16x8_t; 2]) -> int32x4_t {
    vpaddq_s32(vpaddlq_s16(acc[0]), vpaddlq_s16(acc[1]))
}

impl Dot for Neon {
    const W: usize = 8;
    type I = I8;
    type F = [float32x4_t; 2];

    #[inline(always)]
    unsafe fn codes(p: *const u8) -> I8 {
        [vreinterpretq_u32_u8(vld1q_u8(p)), vreinterpretq_u32_u8(vld1q_u8(p.add(16)))]
    }
    #[inline(always)]
    unsafe fn izero() -> I8 {
        [vdupq_n_u32(0); 2]
    }
    #[inline(always)]
    unsafe fn isplat(x: i32) -> I8 {
        [vdupq_n_u32(x as u32); 2]
    }
    #[inline(always)]
    unsafe fn iadd(a: I8, b: I8) -> I8 {
        zip(a, b, |x, y| vaddq_u32(x, y))
    }
    #[inline(always)]
    unsafe fn isub(a: I8, b: I8) -> I8 {
        zip(a, b, |x, y| vsubq_u32(x, y))
    }
    #[inline(always)]
    unsafe fn imul(a: I8, b: I8) -> I8 {
        zip(a, b, |x, y| vmulq_u32(x, y))
    }
    #[inline(always)]
    unsafe fn and(a: I8, b: I8) -> I8 {
        zip(a, b, |x, y| vandq_u32(x, y))
    }
    #[inline(always)]
    unsafe fn or(a: I8, b: I8) -> I8 {
        zip(a, b, |x, y| vorrq_u32(x, y))
    }
    #[inline(always)]
    unsafe fn shr(a: I8, n: u32) -> I8 {
        let s = vdupq_n_s32(-(n as i32));
        [vshlq_u32(a[0], s), vshlq_u32(a[1], s)]
    }
    #[inline(always)]
    unsafe fn shl(a: I8, n: u32) -> I8 {
        let s = vdupq_n_s32(n as i32);
        [vshlq_u32(a[0], s), vshlq_u32(a[1], s)]
    }
    #[inline(always)]
    unsafe fn low_nibbles(v: I8) -> I8 {
        let m = vdupq_n_u8(0x0F);
        v.map(|x| vreinterpretq_u32_u8(vandq_u8(vreinterpretq_u8_u32(x), m)))
    }
    #[inline(always)]
    unsafe fn high_nibbles(v: I8) -> I8 {
        v.map(|x| vreinterpretq_u32_u8(vshrq_n_u8::<4>(vreinterpretq_u8_u32(x))))
    }
    #[inline(always)]
    unsafe fn widen_u8(p: *const u8) -> I8 {
        let w = vmovl_u8(vld1_u8(p));
        [vmovl_u16(vget_low_u16(w)), vmovl_u16(vget_high_u16(w))]
    }
    #[inline(always)]
    unsafe fn widen_i8(p: *const u8) -> I8 {
        let w = vmovl_s8(vld1_s8(p as *const i8));
        [vreinterpretq_u32_s32(vmovl_s16(vget_low_s16(w))), vreinterpretq_u32_s32(vmovl_s16(vget_high_s16(w)))]
    }
    /// Codes below 64 times `|x| <= 127`: four products per 16-bit lane stay below 32,004.
    #[inline(always)]
    unsafe fn dot16(acc: I8, w: &[I8; 4], x: *const u8) -> I8 {
        let xs: [int16x8_t; 4] = std::array::from_fn(|k| group16(x.add(4 * k)));
        std::array::from_fn(|h| {
            let mut s = [vdupq_n_s16(0); 2];
            for k in 0..4 {
                mul_acc(&mut s, w[k][h], xs[k], false);
            }
            vaddq_u32(acc[h], vreinterpretq_u32_s32(widen(s)))
        })
    }
    #[inline(always)]
    unsafe fn q8_codes(raw: I8) -> I8 {
        let m = vdupq_n_u8(0x80);
        raw.map(|x| vreinterpretq_u32_u8(veorq_u8(vreinterpretq_u8_u32(x), m)))
    }
    /// Signed codes times `|x| <= 127`: two products per 16-bit lane stay below 32,768, so each pair of groups is
    /// widened before the next.
    #[inline(always)]
    unsafe fn dot_q8(w: &[I8; 8], x: *const u8, _bias: i32) -> I8 {
        std::array::from_fn(|h| {
            let mut sum = vdupq_n_s32(0);
            for g in (0..8).step_by(2) {
                let mut s = [vdupq_n_s16(0); 2];
                mul_acc(&mut s, w[g][h], group16(x.add(4 * g)), true);
                mul_acc(&mut s, w[g + 1][h], group16(x.add(4 * g + 4)), true);
                sum = vaddq_s32(sum, widen(s));
            }
            vreinterpretq_u32_s32(sum)
        })
    }

    #[inline(always)]
    unsafe fn scales(p: *const u8) -> [float32x4_t; 2] {
        let h = vld1q_u16(p as *const u16);
        [f16x4(vget_low_u16(h)), f16x4(vget_high_u16(h))]
    }
    #[inline(always)]
    unsafe fn fzero() -> [float32x4_t; 2] {
        [vdupq_n_f32(0.0); 2]
    }
    #[inline(always)]
    unsafe fn fsplat(x: f32) -> [float32x4_t; 2] {
        [vdupq_n_f32(x); 2]
    }
    #[inline(always)]
    unsafe fn fmul(a: [float32x4_t; 2], b: [float32x4_t; 2]) -> [float32x4_t; 2] {
        [vmulq_f32(a[0], b[0]), vmulq_f32(a[1], b[1])]
    }
    #[inline(always)]
    unsafe fn fmadd(a: [float32x4_t; 2], b: [float32x4_t; 2], c: [float32x4_t; 2]) -> [float32x4_t; 2] {
        [vfmaq_f32(c[0], a[0], b[0]), vfmaq_f32(c[1], a[1], b[1])]
    }
    #[inline(always)]
    unsafe fn fneg(a: [float32x4_t; 2]) -> [float32x4_t; 2] {
        [vnegq_f32(a[0]), vnegq_f32(a[1])]
    }
    #[inline(always)]
    unsafe fn to_f32(a: I8) -> [float32x4_t; 2] {
        [vcvtq_f32_s32(vreinterpretq_s32_u32(a[0])), vcvtq_f32_s32(vreinterpretq_s32_u32(a[1]))]
    }
    #[inline(always)]
    unsafe fn fstore(a: [float32x4_t; 2], p: *mut f32) {
        vst1q_f32(p, a[0]);
        vst1q_f32(p.add(4), a[1]);
    }
}
