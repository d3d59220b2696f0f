//! AVX-512 VNNI: one 512-bit lane per output, `vpdpbusd` (unsigned weight codes x signed activation codes, 4 at a
//! time, into 32-bit sums) with the activation group broadcast from memory. Weights are unpacked once per block and
//! reused for every activation row of the chunk.

use super::{code_bytes, high_planes, sc_at, scale_bytes, sub_bytes, Tile, TILE};
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

/// Every nibble-plane format but Q4_1 (`format` is a constant at each call site, so each gets its own code): the
/// codes of a sub-block are unpacked once (nibbles, then the high-bit planes) and reused for every row; the float
/// step per format is the sequence in `kernels/mod.rs`.
#[inline(always)]
unsafe fn nib<const N: usize>(format: Format, tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    let nb = acts.nb;
    let (sb, cb, sub) = (scale_bytes(format), code_bytes(format), sub_bytes(format));
    let subs = format.block_weights() / BLOCK;
    let xs: [*const u8; N] = std::array::from_fn(|r| acts.group_ptr(r0 + r));
    let d = acts.d.as_ptr().add(r0 * nb);
    let s = acts.s.as_ptr().add(r0 * nb);
    let bias = acts.bias.as_ptr().add(r0 * nb);
    let sum_lo = acts.sum_lo.as_ptr().add(r0 * nb);
    let nibble = _mm512_set1_epi8(0x0F);
    let (bits, low, high) =
        (_mm512_set1_epi32(0x1111_1111), _mm512_set1_epi32(0x0101_0101), _mm512_set1_epi32(0x1010_1010));
    let sign = _mm512_set1_epi32(i32::MIN);
    let off_shift = match format {
        Format::Q4_0 => 4, // -8 Σx = bias / 16
        _ => 3,            // Q5_0: -16 Σx = bias / 8
    };
    let mut acc = [_mm512_setzero_ps(); N];
    for u in 0..tile.nb {
        super::prefetch_block(tile, format, u);
        let sc = tile.scales.add(u * sb);
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(sc as *const __m256i));
        let mw = if format.has_min() {
            _mm512_cvtph_ps(_mm256_loadu_si256(sc.add(2 * TILE) as *const __m256i))
        } else {
            _mm512_setzero_ps()
        };
        let subsc = sc.add(sc_at(format));
        for j in 0..subs {
            let ab = u * subs + j;
            let c = tile.codes.add(u * cb + j * sub);
            let v: [__m512i; 4] = std::array::from_fn(|k| _mm512_loadu_si512(c.add(k * 64) as *const _));
            let mut lo: [__m512i; 4] = std::array::from_fn(|k| _mm512_and_si512(v[k], nibble));
            let mut hi: [__m512i; 4] = std::array::from_fn(|k| _mm512_and_si512(_mm512_srli_epi16::<4>(v[k]), nibble));
            for p in 0..high_planes(format) {
                let h = _mm512_loadu_si512(c.add(256 + 64 * p) as *const _);
                for k in 0..4 {
                    let t = _mm512_and_si512(_mm512_srl_epi32(h, _mm_cvtsi32_si128(k as i32)), bits);
                    let tl = _mm512_sll_epi32(_mm512_and_si512(t, low), _mm_cvtsi32_si128(4 + p as i32));
                    let th = _mm512_sll_epi32(_mm512_and_si512(t, high), _mm_cvtsi32_si128(p as i32));
                    lo[k] = _mm512_or_si512(lo[k], tl);
                    hi[k] = _mm512_or_si512(hi[k], th);
                }
            }
            // Per-sub-block scales: K-quants' `d * sc_j` and `-(dmin * m_j)`, Q6_K's two i8 scales.
            let ld8 = |at: usize| _mm512_cvtepu8_epi32(_mm_loadu_si128(subsc.add(at * TILE) as *const __m128i));
            let (dsc, mneg, sa, sbv) = match format {
                Format::Q4K | Format::Q5K => {
                    let dsc = _mm512_mul_ps(dw, _mm512_cvtepi32_ps(ld8(j)));
                    let m = _mm512_mul_ps(mw, _mm512_cvtepi32_ps(ld8(8 + j)));
                    let mneg = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(m), sign));
                    (dsc, mneg, _mm512_setzero_si512(), _mm512_setzero_si512())
                }
                Format::Q6K => {
                    let l8 = |at: usize| _mm512_cvtepi8_epi32(_mm_loadu_si128(subsc.add(at * TILE) as *const __m128i));
                    (dw, mw, l8(2 * j), l8(2 * j + 1))
                }
                _ => (dw, mw, _mm512_setzero_si512(), _mm512_setzero_si512()),
            };
            for r in 0..N {
                let xb = xs[r].add(ab * BLOCK);
                let i = r * nb + ab;
                let mut s0 = match format {
                    Format::Q4_0 | Format::Q5_0 => _mm512_set1_epi32(*bias.add(i) >> off_shift),
                    _ => _mm512_setzero_si512(),
                };
                let mut s1 = _mm512_setzero_si512();
                for k in 0..4 {
                    s0 = _mm512_dpbusd_epi32(s0, lo[k], bcst(xb.add(4 * k)));
                    s1 = _mm512_dpbusd_epi32(s1, hi[k], bcst(xb.add(16 + 4 * k)));
                }
                let dx = _mm512_set1_ps(*d.add(i));
                acc[r] = match format {
                    Format::Q6K => {
                        let (lo_sum, sumq) = (*sum_lo.add(i), -(*bias.add(i) >> 7));
                        let a = _mm512_sub_epi32(s0, _mm512_set1_epi32(32 * lo_sum));
                        let b = _mm512_sub_epi32(s1, _mm512_set1_epi32(32 * (sumq - lo_sum)));
                        let isum = _mm512_add_epi32(_mm512_mullo_epi32(sa, a), _mm512_mullo_epi32(sbv, b));
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw, dx), acc[r])
                    }
                    Format::Q4K | Format::Q5K => {
                        let isum = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                        let a = _mm512_fmadd_ps(isum, _mm512_mul_ps(dsc, dx), acc[r]);
                        _mm512_fmadd_ps(mneg, _mm512_set1_ps(*s.add(i)), a)
                    }
                    Format::Q5_1 => {
                        let isum = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                        let a = _mm512_fmadd_ps(isum, _mm512_mul_ps(dw, dx), acc[r]);
                        _mm512_fmadd_ps(mw, _mm512_set1_ps(*s.add(i)), a)
                    }
                    _ => {
                        let isum = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                        _mm512_fmadd_ps(isum, _mm512_mul_ps(dsc, dx), acc[r])
                    }
                };
            }
        }
    }
    for r in 0..N {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}
