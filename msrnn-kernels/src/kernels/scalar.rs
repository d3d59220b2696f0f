//! The portable variant: plain loops over the repacked layout, the same float sequence as the SIMD variants.

use super::{code_bytes, scale_bytes, Tile, TILE};
use crate::act::QActs;
use crate::format::{Format, BLOCK};
use half::f16;

#[inline(always)]
unsafe fn f16s(p: *const u8) -> [f32; TILE] {
    std::array::from_fn(|l| f16::from_bits(u16::from_le_bytes([*p.add(2 * l), *p.add(2 * l + 1)])).to_f32())
}

pub(super) unsafe fn tile_rows(format: Format, tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    let (sb, cb) = (scale_bytes(format), code_bytes(format));
    for (i, o) in out.iter_mut().enumerate() {
        let row = r0 + i;
        let x = acts.group_ptr(row) as *const i8;
        let mut acc = [0f32; TILE];
        for b in 0..tile.nb {
            let sc = tile.scales.add(b * sb);
            let codes = tile.codes.add(b * cb);
            let xb = x.add(b * BLOCK);
            let dx = acts.d[row * acts.nb + b];
            let dw = f16s(sc);
            match format {
                Format::Q8_0 => {
                    for l in 0..TILE {
                        let mut isum = 0i32;
                        for g in 0..8 {
                            for k in 0..4 {
                                let w = *codes.add(g * 64 + l * 4 + k) as i32 - 128;
                                isum += w * *xb.add(4 * g + k) as i32;
                            }
                        }
                        acc[l] = (isum as f32).mul_add(dw[l] * dx, acc[l]);
                    }
                }
                Format::Q4_1 => {
                    let mw = f16s(sc.add(2 * TILE));
                    let sx = acts.s[row * acts.nb + b];
                    for l in 0..TILE {
                        let mut isum = 0i32;
                        for c in 0..4 {
                            for k in 0..4 {
                                let byte = *codes.add(c * 64 + l * 4 + k) as i32;
                                isum += (byte & 15) * *xb.add(4 * c + k) as i32;
                                isum += (byte >> 4) * *xb.add(16 + 4 * c + k) as i32;
                            }
                        }
                        acc[l] = (isum as f32).mul_add(dw[l] * dx, acc[l]);
                        acc[l] = mw[l].mul_add(sx, acc[l]);
                    }
                }
            }
        }
        *o = acc;
    }
}
