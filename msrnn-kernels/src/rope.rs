//! Rotary position embeddings on host slices: rows of queries or keys rotated at given positions,
//! and a layer's blocked keys rotated by each slot's rank (positions inside the cache).
//!
//! Two layouts pair a head's dimensions: `Interleaved` rotates `(2i, 2i+1)` (GGUF files, whose
//! converter permuted the Q/K rows), `HalfSplit` rotates `(i, i + d/2)` (Hugging Face weights).
//! The arithmetic is candle's (`rope_i` / `rope`): `x0 c - x1 s` and `x0 s + x1 c`, rounded per
//! operation, so a row rotated here equals one rotated by candle bit for bit.

use crate::attention::{key_index, KEY_BLOCK};

/// How a head's dimensions are paired for rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i + 1)`.
    Interleaved,
    /// Pairs `(i, i + d/2)`.
    HalfSplit,
}

/// The pair `(a, b)` of dimension pair `i` in a head of `d` values.
#[inline(always)]
pub(crate) fn pair(style: RopeStyle, d: usize, i: usize) -> (usize, usize) {
    match style {
        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
        RopeStyle::HalfSplit => (i, i + d / 2),
    }
}

/// Rotates every head of one row in place: `row` holds `heads` heads of `d` values, `cos`/`sin`
/// hold the `d/2` angles' cosines and sines for this row's position.
pub fn rotate_row(row: &mut [f32], heads: usize, d: usize, cos: &[f32], sin: &[f32], style: RopeStyle) {
    for h in 0..heads {
        let x = &mut row[h * d..(h + 1) * d];
        for i in 0..d / 2 {
            let (a, b) = pair(style, d, i);
            let (x0, x1, c, s) = (x[a], x[b], cos[i], sin[i]);
            x[a] = x0 * c - x1 * s;
            x[b] = x0 * s + x1 * c;
        }
    }
}

/// Rotates the keys of slots `[0, hi)` of a blocked buffer (`[kv_heads][slots/16][d][16]`, see
/// [`key_index`]) from `src` into `dst`, slot `s` at the angles of row `angle_row[s]` of the
/// tables (`cos`/`sin`: `d/2` values per row). Slots past `hi` in the last block are left alone.
/// Cache mode does not call it: the attention kernel rotates each block as it scores it
/// (`attention::Step::key_angles`); this whole-buffer form is its reference, hence plain code.
#[allow(clippy::too_many_arguments)]
pub fn rotate_keys_blocked(
    src: &[f32],
    dst: &mut [f32],
    slots: usize,
    hi: usize,
    kv_heads: usize,
    d: usize,
    angle_row: &[u32],
    cos: &[f32],
    sin: &[f32],
    style: RopeStyle,
) {
    const B: usize = KEY_BLOCK;
    let half = d / 2;
    let (mut cos_t, mut sin_t) = (Vec::new(), Vec::new());
    block_angles(crate::Isa::Scalar, angle_row, hi, half, cos, sin, &mut cos_t, &mut sin_t);
    for b in 0..hi.div_ceil(B) {
        let lanes = (hi - b * B).min(B);
        let (ct, st) = (&cos_t[b * half * B..][..half * B], &sin_t[b * half * B..][..half * B]);
        for g in 0..kv_heads {
            let base = key_index(slots, d, g, b * B, 0);
            for i in 0..half {
                let (a, bb) = pair(style, d, i);
                let (ra, rb) = (base + a * B, base + bb * B);
                for l in 0..lanes {
                    let (x0, x1, c, s) = (src[ra + l], src[rb + l], ct[i * B + l], st[i * B + l]);
                    dst[ra + l] = x0 * c - x1 * s;
                    dst[rb + l] = x0 * s + x1 * c;
                }
            }
        }
    }
}

/// The angles of slots `[0, hi)` for a lane-wise rotation of blocked keys: per block of sixteen
/// slots, `d/2` rows of sixteen lanes (`[blocks][d/2][16]`, slot `s` at the tables' row
/// `angle_row[s]`), lanes past `hi` zero. Written into `ct`/`st` (resized; reused across steps).
/// Every instruction-set variant writes the same values. The AVX-512 one transposes sixteen table rows at a time in
/// registers instead of storing each row's values sixteen lanes apart; it needs `half` to be a multiple of 16, and
/// other sizes take the plain code.
#[allow(clippy::too_many_arguments)]
pub fn block_angles(
    isa: crate::Isa,
    angle_row: &[u32],
    hi: usize,
    half: usize,
    cos: &[f32],
    sin: &[f32],
    ct: &mut Vec<f32>,
    st: &mut Vec<f32>,
) {
    const B: usize = KEY_BLOCK;
    let rows = &angle_row[..hi];
    let top = rows.iter().map(|&r| (r as usize + 1) * half).max().unwrap_or(0);
    assert!(top <= cos.len() && top <= sin.len(), "block_angles: an angle row past the tables");
    let n = hi.div_ceil(B) * half * B;
    // Every value of [0, n) is written below, so old contents need no clearing.
    ct.resize(n, 0.0);
    st.resize(n, 0.0);
    #[cfg(target_arch = "x86_64")]
    if isa == crate::Isa::Avx512 && isa.is_supported() && half.is_multiple_of(16) {
        // SAFETY: the CPU supports AVX-512; every row read lies in the tables (checked above) and every block written
        // lies in `[0, n)`.
        unsafe {
            for (b, lanes) in rows.chunks(B).enumerate() {
                transpose_rows_avx512(cos, lanes, half, ct[b * half * B..].as_mut_ptr());
                transpose_rows_avx512(sin, lanes, half, st[b * half * B..].as_mut_ptr());
            }
        }
        return;
    }
    let _ = isa;
    for (b, (cb, sb)) in ct[..n].chunks_exact_mut(half * B).zip(st[..n].chunks_exact_mut(half * B)).enumerate() {
        for l in 0..B {
            let row = rows.get(b * B + l).map(|&r| r as usize * half);
            for i in 0..half {
                (cb[i * B + l], sb[i * B + l]) = row.map_or((0.0, 0.0), |r| (cos[r + i], sin[r + i]));
            }
        }
    }
}

/// Writes `[half][16]` lanes at `out`: lane `l` of row `i` is `table[lanes[l] * half + i]`, zero for lanes past
/// `lanes.len()` (at most 16); sixteen table rows at a time, transposed in registers
/// ([`crate::simd::Simd::transpose`]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose_rows<V: crate::simd::Simd>(table: &[f32], lanes: &[u32], half: usize, out: *mut f32) {
    use crate::simd::L;
    for c in (0..half).step_by(L) {
        let mut r = [V::splat(0.0); L];
        for (l, &row) in lanes.iter().enumerate() {
            r[l] = V::load(table.as_ptr().add(row as usize * half + c));
        }
        V::transpose(&mut r);
        for (i, v) in r.iter().enumerate() {
            v.store(out.add((c + i) * L));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_rows_avx512(table: &[f32], lanes: &[u32], half: usize, out: *mut f32) {
    transpose_rows::<crate::simd::Avx512>(table, lanes, half, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{read_key, write_key};

    #[test]
    fn blocked_keys_rotate_like_rows() {
        let (kv, d, slots, hi) = (2, 8, 32, 21);
        let half = d / 2;
        let rows = 40;
        let cos: Vec<f32> = (0..rows * half).map(|i| (i as f32 * 0.37).cos()).collect();
        let sin: Vec<f32> = (0..rows * half).map(|i| (i as f32 * 0.37).sin()).collect();
        let keys: Vec<f32> = (0..kv * slots * d).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
        let angle_row: Vec<u32> = (0..hi as u32).map(|s| (s * 13) % rows as u32).collect();
        for style in [RopeStyle::Interleaved, RopeStyle::HalfSplit] {
            let mut src = vec![0f32; keys.len()];
            for g in 0..kv {
                for s in 0..slots {
                    write_key(&mut src, slots, g, s, &keys[(g * slots + s) * d..][..d]);
                }
            }
            let mut dst = vec![f32::NAN; src.len()];
            rotate_keys_blocked(&src, &mut dst, slots, hi, kv, d, &angle_row, &cos, &sin, style);
            for g in 0..kv {
                for s in 0..hi {
                    let mut want = keys[(g * slots + s) * d..][..d].to_vec();
                    let r = angle_row[s] as usize * half;
                    rotate_row(&mut want, 1, d, &cos[r..r + half], &sin[r..r + half], style);
                    let mut got = vec![0f32; d];
                    read_key(&dst, slots, g, s, &mut got);
                    assert_eq!(got, want, "{style:?} head {g} slot {s}");
                }
            }
        }
    }

    #[test]
    fn block_angles_are_the_same_in_every_variant_on_awkward_sizes() {
        let rows = 700;
        for half in [4, 16, 32, 48, 128] {
            let cos: Vec<f32> = (0..rows * half).map(|i| (i as f32 * 0.37).cos()).collect();
            let sin: Vec<f32> = (0..rows * half).map(|i| (i as f32 * 0.37).sin()).collect();
            for hi in [0, 1, 15, 16, 17, 33, 100, 513] {
                let angle_row: Vec<u32> = (0..hi as u32).map(|s| (s * 131 + 7) % rows as u32).collect();
                let (mut ct0, mut st0) = (Vec::new(), Vec::new());
                block_angles(crate::Isa::Scalar, &angle_row, hi, half, &cos, &sin, &mut ct0, &mut st0);
                // The plain code against its definition, lanes past hi zero.
                for (k, (&c, &s)) in ct0.iter().zip(&st0).enumerate() {
                    let (b, i, l) = (k / (half * KEY_BLOCK), k / KEY_BLOCK % half, k % KEY_BLOCK);
                    let want = angle_row.get(b * KEY_BLOCK + l).map_or((0.0, 0.0), |&r| {
                        let at = r as usize * half + i;
                        (cos[at], sin[at])
                    });
                    assert_eq!((c, s), want, "half {half} hi {hi} at {k}");
                }
                for isa in crate::Isa::supported() {
                    // Reused buffers holding garbage, longer and shorter than needed.
                    for len in [0, ct0.len() + 40] {
                        let (mut ct, mut st) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                        block_angles(isa, &angle_row, hi, half, &cos, &sin, &mut ct, &mut st);
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&ct), bits(&ct0), "{isa} half {half} hi {hi}");
                        assert_eq!(bits(&st), bits(&st0), "{isa} half {half} hi {hi}");
                    }
                }
            }
        }
    }

    #[test]
    fn pairs_follow_the_layouts() {
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        let (c, s) = ([0.0f32, 1.0], [1.0f32, 0.0]);
        rotate_row(&mut x, 1, 4, &c, &s, RopeStyle::Interleaved);
        // pair (0,1) by 90 degrees, pair (2,3) unchanged
        assert_eq!(x, [-2.0, 1.0, 3.0, 4.0]);
        let mut y = [1.0f32, 2.0, 3.0, 4.0];
        rotate_row(&mut y, 1, 4, &c, &s, RopeStyle::HalfSplit);
        // pair (0,2) by 90 degrees, pair (1,3) unchanged
        assert_eq!(y, [-3.0, 2.0, 1.0, 4.0]);
    }
}
