//! The portable implementation: plain arrays, which the compiler vectorizes as far as the baseline allows.

use super::*;

#[allow(clippy::needless_range_loop)] // lane loops read best indexed
#[derive(Clone, Copy)]
pub(crate) struct Lanes([f32; L]);

#[allow(clippy::needless_range_loop)] // lane loops read best indexed
impl Lanes {
    #[inline(always)]
    fn map2(self, o: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        let mut r = [0f32; L];
        for l in 0..L {
            r[l] = f(self.0[l], o.0[l]);
        }
        Lanes(r)
    }
}

/// One lane of [`Simd::exp`], the same steps as the SIMD implementations.
pub(crate) fn exp_lane(v: f32) -> f32 {
    let below = v < EXP_LO;
    let v = if v > EXP_HI {
        EXP_HI
    } else if below {
        EXP_LO
    } else {
        v
    };
    let f = v * LOG2E + 0.5;
    // floor without a libm call: truncate, then step down for negatives.
    let mut n = f as i32;
    if (n as f32) > f {
        n -= 1;
    }
    let nf = n as f32;
    let r = v - nf * EXP_C1 - nf * EXP_C2;
    let mut p = EXP_P[0];
    for &c in &EXP_P[1..] {
        p = p * r + c;
    }
    let e = p * (r * r) + r + 1.0;
    let scaled = e * f32::from_bits(((n + 127) as u32) << 23);
    if below {
        0.0
    } else {
        scaled
    }
}

#[allow(clippy::needless_range_loop)] // lane loops read best indexed
impl Simd for Lanes {
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Lanes([x; L])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Lanes(std::ptr::read_unaligned(p as *const [f32; L]))
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> Self {
        Lanes(std::ptr::read_unaligned(p as *const [f16; L]).map(f16::to_f32))
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> Self {
        Lanes(std::ptr::read_unaligned(p as *const [i8; L]).map(|c| c as f32))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; L], self.0)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        self.map2(o, |a, b| a + b)
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        self.map2(o, |a, b| a - b)
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        self.map2(o, |a, b| a * b)
    }
    #[inline(always)]
    unsafe fn fma(self, a: Self, b: Self) -> Self {
        let mut r = [0f32; L];
        for l in 0..L {
            // Fused where the baseline has FMA (aarch64), like the SIMD variants; on x86-64's
            // baseline a software fma would be ~50x slower, so the fallback rounds twice there.
            r[l] = if cfg!(target_feature = "fma") {
                self.0[l].mul_add(a.0[l], b.0[l])
            } else {
                self.0[l] * a.0[l] + b.0[l]
            };
        }
        Lanes(r)
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        self.map2(o, |a, b| a / b)
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        self.map2(o, |a, b| if b > a { b } else { a })
    }
    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        let mut a = self.0;
        let mut w = L / 2;
        while w > 0 {
            for l in 0..w {
                a[l] += a[l + w];
            }
            w /= 2;
        }
        a[0]
    }
    #[inline(always)]
    unsafe fn max_lane(self) -> f32 {
        let mut a = self.0;
        let mut w = L / 2;
        while w > 0 {
            for l in 0..w {
                a[l] = if a[l + w] > a[l] { a[l + w] } else { a[l] };
            }
            w /= 2;
        }
        a[0]
    }
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        let mut r = [0f32; L];
        for l in 0..L {
            r[l] = exp_lane(self.0[l]);
        }
        Lanes(r)
    }
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        Lanes(self.0.map(f32::abs))
    }
    #[inline(always)]
    unsafe fn store_i8(self, p: *mut i8) -> i32 {
        let mut sum = 0;
        for l in 0..L {
            // `as` saturates and maps NaN to 0.
            let c = self.0[l].round_ties_even() as i32;
            *p.add(l) = c as i8;
            sum += c;
        }
        sum
    }
}

/// The portable integer lanes of [`Dot`].
type I16 = [i32; L];

#[allow(clippy::needless_range_loop)] // lane loops read best indexed
#[inline(always)]
fn zip(a: I16, b: I16, f: impl Fn(i32, i32) -> i32) -> I16 {
    std::array::from_fn(|l| f(a[l], b[l]))
}

/// Plain loops over sixteen lanes; `fmadd` is `f32::mul_add`, a fused multiply-add on every target (a library call
/// where the baseline has no FMA instruction), so the portable matrix product returns the SIMD variants' bits.
impl Dot for Lanes {
    const W: usize = L;
    type I = I16;
    type F = [f32; L];

    #[inline(always)]
    unsafe fn codes(p: *const u8) -> I16 {
        std::array::from_fn(|l| i32::from_le_bytes(std::ptr::read_unaligned(p.add(4 * l) as *const [u8; 4])))
    }
    #[inline(always)]
    unsafe fn izero() -> I16 {
        [0; L]
    }
    #[inline(always)]
    unsafe fn isplat(x: i32) -> I16 {
        [x; L]
    }
    #[inline(always)]
    unsafe fn iadd(a: I16, b: I16) -> I16 {
        zip(a, b, i32::wrapping_add)
    }
    #[inline(always)]
    unsafe fn isub(a: I16, b: I16) -> I16 {
        zip(a, b, i32::wrapping_sub)
    }
    #[inline(always)]
    unsafe fn imul(a: I16, b: I16) -> I16 {
        zip(a, b, i32::wrapping_mul)
    }
    #[inline(always)]
    unsafe fn and(a: I16, b: I16) -> I16 {
        zip(a, b, |x, y| x & y)
    }
    #[inline(always)]
    unsafe fn or(a: I16, b: I16) -> I16 {
        zip(a, b, |x, y| x | y)
    }
    #[inline(always)]
    unsafe fn shr(a: I16, n: u32) -> I16 {
        a.map(|x| ((x as u32) >> n) as i32)
    }
    #[inline(always)]
    unsafe fn shl(a: I16, n: u32) -> I16 {
        a.map(|x| ((x as u32) << n) as i32)
    }
    #[inline(always)]
    unsafe fn low_nibbles(v: I16) -> I16 {
        v.map(|x| x & 0x0F0F_0F0F)
    }
    #[inline(always)]
    unsafe fn high_nibbles(v: I16) -> I16 {
        v.map(|x| ((x as u32 >> 4) & 0x0F0F_0F0F) as i32)
    }
    #[inline(always)]
    unsafe fn widen_u8(p: *const u8) -> I16 {
        std::array::from_fn(|l| *p.add(l) as i32)
    }
    #[inline(always)]
    unsafe fn widen_i8(p: *const u8) -> I16 {
        std::array::from_fn(|l| *p.add(l) as i8 as i32)
    }
    #[inline(always)]
    unsafe fn dot16(acc: I16, w: &[I16; 4], x: *const u8) -> I16 {
        let x = std::ptr::read_unaligned(x as *const [i8; 16]);
        std::array::from_fn(|l| {
            let mut s = acc[l];
            for (k, wk) in w.iter().enumerate() {
                for (i, &c) in wk[l].to_le_bytes().iter().enumerate() {
                    s += c as i32 * x[4 * k + i] as i32;
                }
            }
            s
        })
    }
    #[inline(always)]
    unsafe fn q8_codes(raw: I16) -> I16 {
        raw
    }
    #[inline(always)]
    unsafe fn dot_q8(w: &[I16; 8], x: *const u8, bias: i32) -> I16 {
        let x = std::ptr::read_unaligned(x as *const [i8; 32]);
        std::array::from_fn(|l| {
            let mut s = bias;
            for (g, wg) in w.iter().enumerate() {
                for (i, &c) in wg[l].to_le_bytes().iter().enumerate() {
                    s += c as i32 * x[4 * g + i] as i32;
                }
            }
            s
        })
    }

    #[inline(always)]
    unsafe fn scales(p: *const u8) -> [f32; L] {
        std::array::from_fn(|l| f16::from_bits(u16::from_le_bytes([*p.add(2 * l), *p.add(2 * l + 1)])).to_f32())
    }
    #[inline(always)]
    unsafe fn fzero() -> [f32; L] {
        [0.0; L]
    }
    #[inline(always)]
    unsafe fn fsplat(x: f32) -> [f32; L] {
        [x; L]
    }
    #[inline(always)]
    unsafe fn fmul(a: [f32; L], b: [f32; L]) -> [f32; L] {
        std::array::from_fn(|l| a[l] * b[l])
    }
    #[inline(always)]
    unsafe fn fmadd(a: [f32; L], b: [f32; L], c: [f32; L]) -> [f32; L] {
        std::array::from_fn(|l| a[l].mul_add(b[l], c[l]))
    }
    #[inline(always)]
    unsafe fn fneg(a: [f32; L]) -> [f32; L] {
        a.map(|x| -x)
    }
    #[inline(always)]
    unsafe fn to_f32(a: I16) -> [f32; L] {
        a.map(|x| x as f32)
    }
    #[inline(always)]
    unsafe fn fstore(a: [f32; L], p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; L], a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_over_the_softmax_range() {
        let mut worst = 0f64;
        let mut x = -90.0f32;
        while x <= 0.0 {
            let got = exp_lane(x) as f64;
            let want = (x as f64).exp();
            if x < -87.336_55 {
                assert_eq!(got, 0.0, "exp({x})");
            } else if want > 1e-30 {
                worst = worst.max((got - want).abs() / want);
            }
            x += 0.001_37;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_lane(0.0), 1.0);
    }
}
