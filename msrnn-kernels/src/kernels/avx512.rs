//! AVX-512 VNNI: one 512-bit lane per output, `vpdpbusd` (unsigned weight codes x signed activation codes, 4 at a
//! time, into 32-bit sums) with the activation group broadcast from memory. Weights are unpacked once per block and
//! reused for every activation row of the chunk.

use super::{code_bytes, scale_bytes, Tile, TILE};
use crate::act::QActs;
use crate::format::{Format, BLOCK};
use std::arch::x86_64::*;

/// Activation rows computed together against one unpacked block of weights.
const R: usize = 4;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
unsafe fn bcst(p: *const u8) -> __m512i {
    _mm512_set1_epi32((p as *const i32).read_unaligned())
}

#[inline(always)]
unsafe fn q8_0<const N: usize>(tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    let nb = tile.nb;
    let (sb, cb) = (scale_bytes(Format::Q8_0), code_bytes(Format::Q8_0));
    let xs: [*const u8; N] = std::array::from_fn(|r| acts.group_ptr(r0 + r));
    let d = acts.d.as_ptr().add(r0 * nb);
    let bias = acts.bias.as_ptr().add(r0 * nb);
    let mut acc = [_mm512_setzero_ps(); N];
    for b in 0..nb {
        super::prefetch_block(tile, Format::Q8_0, b);
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(tile.scales.add(b * sb) as *const __m256i));
        let c = tile.codes.add(b * cb);
        let w: [__m512i; 8] = std::array::from_fn(|g| _mm512_loadu_si512(c.add(g * 64) as *const _));
        for r in 0..N {
            let xb = xs[r].add(b * BLOCK);
            let mut s0 = _mm512_set1_epi32(*bias.add(r * nb + b));
            let mut s1 = _mm512_setzero_si512();
            for g in (0..8).step_by(2) {
                s0 = _mm512_dpbusd_epi32(s0, w[g], bcst(xb.add(4 * g)));
                s1 = _mm512_dpbusd_epi32(s1, w[g + 1], bcst(xb.add(4 * g + 4)));
            }
            let isum = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*d.add(r * nb + b)));
            acc[r] = _mm512_fmadd_ps(isum, scale, acc[r]);
        }
    }
    for r in 0..N {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}

#[inline(always)]
unsafe fn q4_1<const N: usize>(tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    let nb = tile.nb;
    let (sb, cb) = (scale_bytes(Format::Q4_1), code_bytes(Format::Q4_1));
    let xs: [*const u8; N] = std::array::from_fn(|r| acts.group_ptr(r0 + r));
    let d = acts.d.as_ptr().add(r0 * nb);
    let s = acts.s.as_ptr().add(r0 * nb);
    let nibble = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); N];
    for b in 0..nb {
        super::prefetch_block(tile, Format::Q4_1, b);
        let sc = tile.scales.add(b * sb);
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(sc as *const __m256i));
        let mw = _mm512_cvtph_ps(_mm256_loadu_si256(sc.add(2 * TILE) as *const __m256i));
        let c = tile.codes.add(b * cb);
        let v: [__m512i; 4] = std::array::from_fn(|k| _mm512_loadu_si512(c.add(k * 64) as *const _));
        let lo: [__m512i; 4] = std::array::from_fn(|k| _mm512_and_si512(v[k], nibble));
        let hi: [__m512i; 4] = std::array::from_fn(|k| _mm512_and_si512(_mm512_srli_epi16::<4>(v[k]), nibble));
        for r in 0..N {
            let xb = xs[r].add(b * BLOCK);
            let mut s0 = _mm512_setzero_si512();
            let mut s1 = _mm512_setzero_si512();
            for k in 0..4 {
                s0 = _mm512_dpbusd_epi32(s0, lo[k], bcst(xb.add(4 * k)));
                s1 = _mm512_dpbusd_epi32(s1, hi[k], bcst(xb.add(16 + 4 * k)));
            }
            let isum = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*d.add(r * nb + b)));
            acc[r] = _mm512_fmadd_ps(isum, scale, acc[r]);
            acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*s.add(r * nb + b)), acc[r]);
        }
    }
    for r in 0..N {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}
