//! The tile kernels, written once over [`Dot`]: a tile's 16 outputs as `16 / W` vectors of `W` lanes, weights
//! unpacked once per block (nibbles, then the high-bit planes) and reused for [`R`] activation rows at a time; the
//! float steps per format are the sequence in `matmul/mod.rs`.

use super::{code_bytes, high_planes, prefetch_block, sc_at, scale_bytes, sub_bytes, Tile, TILE};
use crate::act::QActs;
use crate::format::{Format, BLOCK};
use crate::simd::Dot;

/// Activation rows computed together against one unpacked block of weights.
const R: usize = 4;

/// See [`super::tile_rows`].
#[inline(always)]
pub(super) unsafe fn tile_rows<V: Dot>(format: Format, tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    let mut chunks = out.chunks_exact_mut(R);
    let mut r = r0;
    for o in &mut chunks {
        rows::<V, R>(format, tile, acts, r, o);
        r += R;
    }
    for o in chunks.into_remainder().chunks_exact_mut(1) {
        rows::<V, 1>(format, tile, acts, r, o);
        r += 1;
    }
}

/// `format` is a constant at each call, so each format gets its own code.
#[inline(always)]
unsafe fn rows<V: Dot, const N: usize>(format: Format, tile: Tile, acts: &QActs, r: usize, o: &mut [[f32; TILE]]) {
    match format {
        Format::Q8_0 => q8_0::<V, N>(tile, acts, r, o),
        Format::Q4_1 => q4_1::<V, N>(tile, acts, r, o),
        Format::Q4_0 => nib::<V, N>(Format::Q4_0, tile, acts, r, o),
        Format::Q5_0 => nib::<V, N>(Format::Q5_0, tile, acts, r, o),
        Format::Q5_1 => nib::<V, N>(Format::Q5_1, tile, acts, r, o),
        Format::Q4K => nib::<V, N>(Format::Q4K, tile, acts, r, o),
        Format::Q5K => nib::<V, N>(Format::Q5K, tile, acts, r, o),
        Format::Q6K => nib::<V, N>(Format::Q6K, tile, acts, r, o),
    }
}

/// The accumulators of `N` rows, `TILE / W` vectors each (at most 2), written out.
#[inline(always)]
unsafe fn store<V: Dot, const N: usize>(acc: &[[V::F; 2]; N], out: &mut [[f32; TILE]]) {
    for r in 0..N {
        for h in 0..TILE / V::W {
            V::fstore(acc[r][h], out[r].as_mut_ptr().add(h * V::W));
        }
    }
}

#[inline(always)]
unsafe fn q8_0<V: Dot, const N: usize>(tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    let nb = tile.nb;
    let (sb, cb) = (scale_bytes(Format::Q8_0), code_bytes(Format::Q8_0));
    let xs: [*const u8; N] = std::array::from_fn(|r| acts.group_ptr(r0 + r));
    let d = acts.d.as_ptr().add(r0 * nb);
    let bias = acts.bias.as_ptr().add(r0 * nb);
    let mut acc = [[V::fzero(); 2]; N];
    for b in 0..nb {
        prefetch_block::<V>(tile, Format::Q8_0, b);
        for h in 0..TILE / V::W {
            let dw = V::scales(tile.scales.add(b * sb + 2 * V::W * h));
            let c = tile.codes.add(b * cb + 4 * V::W * h);
            let w: [V::I; 8] = std::array::from_fn(|g| V::q8_codes(V::codes(c.add(g * 64))));
            for r in 0..N {
                let isum = V::dot_q8(&w, xs[r].add(b * BLOCK), *bias.add(r * nb + b));
                let scale = V::fmul(dw, V::fsplat(*d.add(r * nb + b)));
                acc[r][h] = V::fmadd(V::to_f32(isum), scale, acc[r][h]);
            }
        }
    }
    store::<V, N>(&acc, out);
}

#[inline(always)]
unsafe fn q4_1<V: Dot, const N: usize>(tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    let nb = tile.nb;
    let (sb, cb) = (scale_bytes(Format::Q4_1), code_bytes(Format::Q4_1));
    let xs: [*const u8; N] = std::array::from_fn(|r| acts.group_ptr(r0 + r));
    let d = acts.d.as_ptr().add(r0 * nb);
    let s = acts.s.as_ptr().add(r0 * nb);
    let mut acc = [[V::fzero(); 2]; N];
    for b in 0..nb {
        prefetch_block::<V>(tile, Format::Q4_1, b);
        for h in 0..TILE / V::W {
            let sc = tile.scales.add(b * sb + 2 * V::W * h);
            let dw = V::scales(sc);
            let mw = V::scales(sc.add(2 * TILE));
            let c = tile.codes.add(b * cb + 4 * V::W * h);
            let v: [V::I; 4] = std::array::from_fn(|k| V::codes(c.add(k * 64)));
            let lo: [V::I; 4] = std::array::from_fn(|k| V::low_nibbles(v[k]));
            let hi: [V::I; 4] = std::array::from_fn(|k| V::high_nibbles(v[k]));
            for r in 0..N {
                let isum = V::to_f32(V::dot32_4bit(&lo, &hi, xs[r].add(b * BLOCK)));
                let i = r * nb + b;
                acc[r][h] = V::fmadd(isum, V::fmul(dw, V::fsplat(*d.add(i))), acc[r][h]);
                acc[r][h] = V::fmadd(mw, V::fsplat(*s.add(i)), acc[r][h]);
            }
        }
    }
    store::<V, N>(&acc, out);
}

/// Every nibble-plane format but Q4_1: the codes of a sub-block are unpacked once (nibbles, then the high-bit
/// planes) and reused for every row.
#[inline(always)]
unsafe fn nib<V: Dot, const N: usize>(format: Format, tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    let nb = acts.nb;
    let (sb, cb, sub) = (scale_bytes(format), code_bytes(format), sub_bytes(format));
    let subs = format.block_weights() / BLOCK;
    let xs: [*const u8; N] = std::array::from_fn(|r| acts.group_ptr(r0 + r));
    let d = acts.d.as_ptr().add(r0 * nb);
    let s = acts.s.as_ptr().add(r0 * nb);
    let bias = acts.bias.as_ptr().add(r0 * nb);
    let sum_lo = acts.sum_lo.as_ptr().add(r0 * nb);
    let (bits, low, high) = (V::isplat(0x1111_1111), V::isplat(0x0101_0101), V::isplat(0x1010_1010));
    let off_shift = match format {
        Format::Q4_0 => 4, // -8 Σx = bias / 16
        _ => 3,            // Q5_0: -16 Σx = bias / 8
    };
    let mut acc = [[V::fzero(); 2]; N];
    for u in 0..tile.nb {
        prefetch_block::<V>(tile, format, u);
        for h in 0..TILE / V::W {
            let sc = tile.scales.add(u * sb + 2 * V::W * h);
            let dw = V::scales(sc);
            let mw = if format.has_min() { V::scales(sc.add(2 * TILE)) } else { V::fzero() };
            // This vector's sub-block scales: `W` bytes at `sc_at + at * 16 + W h`.
            let subsc = tile.scales.add(u * sb + sc_at(format) + V::W * h);
            for j in 0..subs {
                let ab = u * subs + j;
                let c = tile.codes.add(u * cb + j * sub + 4 * V::W * h);
                let v: [V::I; 4] = std::array::from_fn(|k| V::codes(c.add(k * 64)));
                let mut lo: [V::I; 4] = std::array::from_fn(|k| V::low_nibbles(v[k]));
                let mut hi: [V::I; 4] = std::array::from_fn(|k| V::high_nibbles(v[k]));
                for p in 0..high_planes(format) {
                    let hp = V::codes(c.add(256 + 64 * p));
                    for k in 0..4 {
                        let t = V::and(V::shr(hp, k as u32), bits);
                        lo[k] = V::or(lo[k], V::shl(V::and(t, low), 4 + p as u32));
                        hi[k] = V::or(hi[k], V::shl(V::and(t, high), p as u32));
                    }
                }
                // Per-sub-block scales: K-quants' `d * sc_j` and `-(dmin * m_j)`, Q6_K's two i8 scales.
                let (dsc, mneg, sa, sbv) = match format {
                    Format::Q4K | Format::Q5K => {
                        let dsc = V::fmul(dw, V::to_f32(V::widen_u8(subsc.add(j * TILE))));
                        let m = V::fmul(mw, V::to_f32(V::widen_u8(subsc.add((8 + j) * TILE))));
                        (dsc, V::fneg(m), V::izero(), V::izero())
                    }
                    Format::Q6K => {
                        (dw, mw, V::widen_i8(subsc.add(2 * j * TILE)), V::widen_i8(subsc.add((2 * j + 1) * TILE)))
                    }
                    _ => (dw, mw, V::izero(), V::izero()),
                };
                for r in 0..N {
                    let xb = xs[r].add(ab * BLOCK);
                    let i = r * nb + ab;
                    let init = match format {
                        Format::Q4_0 | Format::Q5_0 => V::isplat(*bias.add(i) >> off_shift),
                        _ => V::izero(),
                    };
                    let s0 = V::dot16(init, &lo, xb);
                    let s1 = V::dot16(V::izero(), &hi, xb.add(16));
                    let dx = V::fsplat(*d.add(i));
                    acc[r][h] = match format {
                        Format::Q6K => {
                            let (lo_sum, sumq) = (*sum_lo.add(i), -(*bias.add(i) >> 7));
                            let a = V::isub(s0, V::isplat(32 * lo_sum));
                            let b = V::isub(s1, V::isplat(32 * (sumq - lo_sum)));
                            let isum = V::iadd(V::imul(sa, a), V::imul(sbv, b));
                            V::fmadd(V::to_f32(isum), V::fmul(dw, dx), acc[r][h])
                        }
                        Format::Q4K | Format::Q5K => {
                            let isum = V::to_f32(V::iadd(s0, s1));
                            let a = V::fmadd(isum, V::fmul(dsc, dx), acc[r][h]);
                            V::fmadd(mneg, V::fsplat(*s.add(i)), a)
                        }
                        Format::Q5_1 => {
                            let isum = V::to_f32(V::iadd(s0, s1));
                            let a = V::fmadd(isum, V::fmul(dw, dx), acc[r][h]);
                            V::fmadd(mw, V::fsplat(*s.add(i)), a)
                        }
                        _ => {
                            let isum = V::to_f32(V::iadd(s0, s1));
                            V::fmadd(isum, V::fmul(dsc, dx), acc[r][h])
                        }
                    };
                }
            }
        }
    }
    store::<V, N>(&acc, out);
}
