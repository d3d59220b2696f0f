//! AVX2: a tile's 16 outputs as two 256-bit halves of 8. Q4_1 codes (0..15) go straight into `vpmaddubsw`
//! (8 of its 16-bit pair sums add up without saturating); Q8_0 codes are made signed again and multiplied as
//! `|w| * (x * sign(w))`, exact for every code including -128.

use super::{code_bytes, scale_bytes, Tile, TILE};
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
        }
        r += R;
    }
    for o in chunks.into_remainder().chunks_exact_mut(1) {
        match format {
            Format::Q8_0 => q8_0::<1>(tile, acts, r, o),
            Format::Q4_1 => q4_1::<1>(tile, acts, r, o),
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
