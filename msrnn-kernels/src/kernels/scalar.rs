//! The portable variant: plain loops over the repacked layout (each output's block read back with [`super::get`]),
//! the same float sequence as the SIMD variants.

use super::{code_bytes, scale_bytes, Tile, TILE};
use crate::act::QActs;
use crate::format::{Format, BLOCK};

/// One output's contribution of one activation block `ab` of row `row`, added to `acc` in the documented sequence;
/// `j` is the block's sub-block within the unit `x`.
#[inline(always)]
pub(crate) fn block_step(
    format: Format,
    x: &crate::format::Decoded,
    j: usize,
    acts: &QActs,
    row: usize,
    ab: usize,
    acc: f32,
) -> f32 {
    let q = &x.q[j * BLOCK..][..BLOCK];
    let xs = &acts.qs[row * acts.in_dim + ab * BLOCK..][..BLOCK];
    let i = row * acts.nb + ab;
    let (dx, sx) = (acts.d[i], acts.s[i]);
    let sumq = -acts.bias[i] / 128;
    let dot = |r: std::ops::Range<usize>| r.map(|k| q[k] as i32 * xs[k] as i32).sum::<i32>();
    match format {
        Format::Q8_0 | Format::Q4_0 | Format::Q5_0 => {
            let isum = dot(0..32) - format.offset() * sumq;
            (isum as f32).mul_add(x.d() * dx, acc)
        }
        Format::Q4_1 | Format::Q5_1 => {
            let acc = (dot(0..32) as f32).mul_add(x.d() * dx, acc);
            x.m().mul_add(sx, acc)
        }
        Format::Q4K | Format::Q5K => {
            let acc = (dot(0..32) as f32).mul_add((x.d() * x.sc[j] as f32) * dx, acc);
            (-(x.m() * x.mn[j] as f32)).mul_add(sx, acc)
        }
        Format::Q6K => {
            let lo = acts.sum_lo[i];
            let (sa, sb) = (x.sc[2 * j] as i8 as i32, x.sc[2 * j + 1] as i8 as i32);
            let isum = sa * (dot(0..16) - 32 * lo) + sb * (dot(16..32) - 32 * (sumq - lo));
            (isum as f32).mul_add(x.d() * dx, acc)
        }
    }
}

pub(super) unsafe fn tile_rows(format: Format, tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    let (sb, cb) = (scale_bytes(format), code_bytes(format));
    // SAFETY: the caller's tile holds `nb` units of scales and of codes.
    let scales = std::slice::from_raw_parts(tile.scales, tile.nb * sb);
    let codes = std::slice::from_raw_parts(tile.codes, tile.nb * cb);
    let subs = format.block_weights() / BLOCK;
    out.iter_mut().for_each(|o| *o = [0.0; TILE]);
    for b in 0..tile.nb {
        for l in 0..TILE {
            let x = super::get(format, scales, codes, b, l);
            for (i, o) in out.iter_mut().enumerate() {
                for j in 0..subs {
                    o[l] = block_step(format, &x, j, acts, r0 + i, b * subs + j, o[l]);
                }
            }
        }
    }
}
