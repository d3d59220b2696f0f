//! AVX2: a tile's 16 outputs as two 256-bit halves of 8. Q4_1 codes (0..15) go straight into `vpmaddubsw`
//! (8 of its 16-bit pair sums add up without saturating); Q8_0 codes are made signed again and multiplied as
//! `|w| * (x * sign(w))`, exact for every code including -128.

use super::{code_bytes, high_planes, sc_at, scale_bytes, sub_bytes, Tile, TILE};
use crate::act::QActs;
use crate::format::{Format, BLOCK};
use std::arch::x86_64::*;

/// Activation rows computed together against one unpacked block of weights.
const R: usize = 4;

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_rows(format: Format, tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    let mut chunks = out.chunks_exact_mut(R);
    let mut r = r0;
    for o in &mut chunks {
        match format {
            Format::Q8_0 => q8_0::<R>(tile, acts, r, o),
            Format::Q4_1 => q4_1::<R>(tile, acts, r, o),
            Format::Q4_0 => nib::<R>(Format::Q4_0, tile, acts, r, o),
            Format::Q5_0 => nib::<R>(Format::Q5_0, tile, acts, r, o),
            Format::Q5_1 => nib::<R>(Format::Q5_1, tile, acts, r, o),
            Format::Q4K => nib::<R>(Format::Q4K, tile, acts, r, o),
            Format::Q5K => nib::<R>(Format::Q5K, tile, acts, r, o),
            Format::Q6K => nib::<R>(Format::Q6K, tile, acts, r, o),
        }
        r += R;
    }
    for o in chunks.into_remainder().chunks_exact_mut(1) {
        match format {
            Format::Q8_0 => q8_0::<1>(tile, acts, r, o),
            Format::Q4_1 => q4_1::<1>(tile, acts, r, o),
            Format::Q4_0 => nib::<1>(Format::Q4_0, tile, acts, r, o),
            Format::Q5_0 => nib::<1>(Format::Q5_0, tile, acts, r, o),
            Format::Q5_1 => nib::<1>(Format::Q5_1, tile, acts, r, o),
            Format::Q4K => nib::<1>(Format::Q4K, tile, acts, r, o),
            Format::Q5K => nib::<1>(Format::Q5K, tile, acts, r, o),
            Format::Q6K => nib::<1>(Format::Q6K, tile, acts, r, o),
        }
        r += 1;
    }
}

#[inline(always)]
unsafe fn bcst(p: *const u8) -> __m256i {
    _mm256_set1_epi32((p as *const i32).read_unaligned())
}

#[inline(always)]
unsafe fn q8_0<const N: usize>(tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    let nb = tile.nb;
    let (sb, cb) = (scale_bytes(Format::Q8_0), code_bytes(Format::Q8_0));
    let xs: [*const u8; N] = std::array::from_fn(|r| acts.group_ptr(r0 + r));
    let d = acts.d.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let offset = _mm256_set1_epi8(-128);
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for b in 0..nb {
        super::prefetch_block(tile, Format::Q8_0, b);
        for h in 0..2 {
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(tile.scales.add(b * sb + 16 * h) as *const __m128i));
            let c = tile.codes.add(b * cb + 32 * h);
            let w: [__m256i; 8] =
                std::array::from_fn(|g| _mm256_xor_si256(_mm256_loadu_si256(c.add(g * 64) as *const __m256i), offset));
            for r in 0..N {
                let xb = xs[r].add(b * BLOCK);
                let mut isum = _mm256_setzero_si256();
                for (g, wg) in w.iter().enumerate() {
                    let p = _mm256_maddubs_epi16(_mm256_abs_epi8(*wg), _mm256_sign_epi8(bcst(xb.add(4 * g)), *wg));
                    isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, ones));
                }
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*d.add((r0 + r) * nb + b)));
                acc[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[r][h]);
            }
        }
    }
    for r in 0..N {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r][0]);
        _mm256_storeu_ps(out[r].as_mut_ptr().add(8), acc[r][1]);
    }
}

#[inline(always)]
unsafe fn q4_1<const N: usize>(tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    let nb = tile.nb;
    let (sb, cb) = (scale_bytes(Format::Q4_1), code_bytes(Format::Q4_1));
    let xs: [*const u8; N] = std::array::from_fn(|r| acts.group_ptr(r0 + r));
    let (d, s) = (acts.d.as_ptr(), acts.s.as_ptr());
    let ones = _mm256_set1_epi16(1);
    let nibble = _mm256_set1_epi8(0x0F);
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for b in 0..nb {
        super::prefetch_block(tile, Format::Q4_1, b);
        for h in 0..2 {
            let sc = tile.scales.add(b * sb + 16 * h);
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(sc as *const __m128i));
            let mw = _mm256_cvtph_ps(_mm_loadu_si128(sc.add(2 * TILE) as *const __m128i));
            let c = tile.codes.add(b * cb + 32 * h);
            let v: [__m256i; 4] = std::array::from_fn(|k| _mm256_loadu_si256(c.add(k * 64) as *const __m256i));
            let lo: [__m256i; 4] = std::array::from_fn(|k| _mm256_and_si256(v[k], nibble));
            let hi: [__m256i; 4] = std::array::from_fn(|k| _mm256_and_si256(_mm256_srli_epi16::<4>(v[k]), nibble));
            for r in 0..N {
                let xb = xs[r].add(b * BLOCK);
                let mut s16 = _mm256_setzero_si256();
                for k in 0..4 {
                    s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(lo[k], bcst(xb.add(4 * k))));
                    s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(hi[k], bcst(xb.add(16 + 4 * k))));
                }
                let isum = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones));
                let i = (r0 + r) * nb + b;
                acc[r][h] = _mm256_fmadd_ps(isum, _mm256_mul_ps(dw, _mm256_set1_ps(*d.add(i))), acc[r][h]);
                acc[r][h] = _mm256_fmadd_ps(mw, _mm256_set1_ps(*s.add(i)), acc[r][h]);
            }
        }
    }
    for r in 0..N {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r][0]);
        _mm256_storeu_ps(out[r].as_mut_ptr().add(8), acc[r][1]);
    }
}

/// Every nibble-plane format but Q4_1, as in the AVX-512 variant on two halves of 8 outputs. `vpmaddubsw` pair sums
/// of 6-bit codes reach 16,002, so two of them are added in 16 bits before widening.
#[inline(always)]
unsafe fn nib<const N: usize>(format: Format, tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    let nb = acts.nb;
    let (sb, cb, sub) = (scale_bytes(format), code_bytes(format), sub_bytes(format));
    let subs = format.block_weights() / BLOCK;
    let xs: [*const u8; N] = std::array::from_fn(|r| acts.group_ptr(r0 + r));
    let (d, s, bias, sum_lo) = (acts.d.as_ptr(), acts.s.as_ptr(), acts.bias.as_ptr(), acts.sum_lo.as_ptr());
    let ones = _mm256_set1_epi16(1);
    let nibble = _mm256_set1_epi8(0x0F);
    let (bits, low, high) =
        (_mm256_set1_epi32(0x1111_1111), _mm256_set1_epi32(0x0101_0101), _mm256_set1_epi32(0x1010_1010));
    let sign = _mm256_set1_epi32(i32::MIN);
    let off_shift = match format {
        Format::Q4_0 => 4,
        _ => 3,
    };
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for u in 0..tile.nb {
        super::prefetch_block(tile, format, u);
        for h in 0..2 {
            let sc = tile.scales.add(u * sb + 16 * h);
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(sc as *const __m128i));
            let mw = if format.has_min() {
                _mm256_cvtph_ps(_mm_loadu_si128(sc.add(2 * TILE) as *const __m128i))
            } else {
                _mm256_setzero_ps()
            };
            // Sub-block scales of this half: 8 bytes at `sc_at + at * 16 + 8h`.
            let subsc = tile.scales.add(u * sb + sc_at(format) + 8 * h);
            for j in 0..subs {
                let ab = u * subs + j;
                let c = tile.codes.add(u * cb + j * sub + 32 * h);
                let v: [__m256i; 4] = std::array::from_fn(|k| _mm256_loadu_si256(c.add(k * 64) as *const __m256i));
                let mut lo: [__m256i; 4] = std::array::from_fn(|k| _mm256_and_si256(v[k], nibble));
                let mut hi: [__m256i; 4] =
                    std::array::from_fn(|k| _mm256_and_si256(_mm256_srli_epi16::<4>(v[k]), nibble));
                for p in 0..high_planes(format) {
                    let hp = _mm256_loadu_si256(tile.codes.add(u * cb + j * sub + 256 + 64 * p + 32 * h) as *const _);
                    for k in 0..4 {
                        let t = _mm256_and_si256(_mm256_srl_epi32(hp, _mm_cvtsi32_si128(k as i32)), bits);
                        let tl = _mm256_sll_epi32(_mm256_and_si256(t, low), _mm_cvtsi32_si128(4 + p as i32));
                        let th = _mm256_sll_epi32(_mm256_and_si256(t, high), _mm_cvtsi32_si128(p as i32));
                        lo[k] = _mm256_or_si256(lo[k], tl);
                        hi[k] = _mm256_or_si256(hi[k], th);
                    }
                }
                let ld8 = |at: usize| _mm256_cvtepu8_epi32(_mm_loadl_epi64(subsc.add(at * TILE) as *const __m128i));
                let (dsc, mneg, sa, sbv) = match format {
                    Format::Q4K | Format::Q5K => {
                        let dsc = _mm256_mul_ps(dw, _mm256_cvtepi32_ps(ld8(j)));
                        let m = _mm256_mul_ps(mw, _mm256_cvtepi32_ps(ld8(8 + j)));
                        let mneg = _mm256_castsi256_ps(_mm256_xor_si256(_mm256_castps_si256(m), sign));
                        (dsc, mneg, _mm256_setzero_si256(), _mm256_setzero_si256())
                    }
                    Format::Q6K => {
                        let l8 =
                            |at: usize| _mm256_cvtepi8_epi32(_mm_loadl_epi64(subsc.add(at * TILE) as *const __m128i));
                        (dw, mw, l8(2 * j), l8(2 * j + 1))
                    }
                    _ => (dw, mw, _mm256_setzero_si256(), _mm256_setzero_si256()),
                };
                for r in 0..N {
                    let xb = xs[r].add(ab * BLOCK);
                    let i = (r0 + r) * nb + ab;
                    let pair = |w: &[__m256i; 4], at: usize, k: usize| {
                        let a = _mm256_maddubs_epi16(w[k], bcst(xb.add(at + 4 * k)));
                        let b = _mm256_maddubs_epi16(w[k + 1], bcst(xb.add(at + 4 * k + 4)));
                        _mm256_madd_epi16(_mm256_add_epi16(a, b), ones)
                    };
                    let s0 = _mm256_add_epi32(pair(&lo, 0, 0), pair(&lo, 0, 2));
                    let s1 = _mm256_add_epi32(pair(&hi, 16, 0), pair(&hi, 16, 2));
                    let dx = _mm256_set1_ps(*d.add(i));
                    acc[r][h] = match format {
                        Format::Q6K => {
                            let (lo_sum, sumq) = (*sum_lo.add(i), -(*bias.add(i) >> 7));
                            let a = _mm256_sub_epi32(s0, _mm256_set1_epi32(32 * lo_sum));
                            let b = _mm256_sub_epi32(s1, _mm256_set1_epi32(32 * (sumq - lo_sum)));
                            let isum = _mm256_add_epi32(_mm256_mullo_epi32(sa, a), _mm256_mullo_epi32(sbv, b));
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, dx), acc[r][h])
                        }
                        Format::Q4K | Format::Q5K => {
                            let isum = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
                            let a = _mm256_fmadd_ps(isum, _mm256_mul_ps(dsc, dx), acc[r][h]);
                            _mm256_fmadd_ps(mneg, _mm256_set1_ps(*s.add(i)), a)
                        }
                        Format::Q5_1 => {
                            let isum = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
                            let a = _mm256_fmadd_ps(isum, _mm256_mul_ps(dw, dx), acc[r][h]);
                            _mm256_fmadd_ps(mw, _mm256_set1_ps(*s.add(i)), a)
                        }
                        _ => {
                            let off = _mm256_set1_epi32(*bias.add(i) >> off_shift);
                            let isum = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_add_epi32(s0, s1), off));
                            _mm256_fmadd_ps(isum, _mm256_mul_ps(dsc, dx), acc[r][h])
                        }
                    };
                }
            }
        }
    }
    for r in 0..N {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r][0]);
        _mm256_storeu_ps(out[r].as_mut_ptr().add(8), acc[r][1]);
    }
}
