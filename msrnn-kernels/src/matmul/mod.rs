//! The quantized matrix product: [`qmatrix::QMatrix`] (repacking at load, the call that splits work over
//! threads), this file's tile layout, and the tile kernels (`kernel.rs`), written once over [`crate::simd::Dot`] and
//! instantiated per instruction set by the thin `#[target_feature]` entry points below.
//!
//! A tile holds 16 consecutive output rows of the weight matrix (one SIMD lane per output; the last tile of a matrix
//! is padded with zero rows). Its bytes: first the scales of every format block ("unit": 32 weights, 256 for the
//! K-quants), padded to 64 bytes, then the codes of every unit, so that code loads are 64-byte aligned.
//!
//! Scales of a unit: `d: [16] f16`; then `m: [16] f16` where the format has a min (`Q4_1`, `Q5_1`; `dmin` of
//! `Q4_K`, `Q5_K`); then sub-block scales `[8 or 16][16] u8` (`Q4_K`, `Q5_K`: 6-bit; `Q6_K`: `i8`); then sub-block
//! mins `[8][16] u8` (`Q4_K`, `Q5_K`).
//!
//! Codes of a unit, per sub-block of 32 inputs (one activation block), all unsigned:
//! - `Q8_0`: `[8 groups][16 outputs][4] u8`, the code plus 128 (for `vpdpbusd`, which multiplies unsigned by signed
//!   bytes); group `g` holds inputs `4g..4g+4`.
//! - the others: a nibble plane `[4 chunks][16 outputs][4] u8`, byte `i` of chunk `k` holding the low 4 bits of input
//!   `4k + i` in its low nibble and of input `16 + 4k + i` in its high nibble (GGUF's own nibble order); then for
//!   each further bit `4 + p` (5-bit codes: one, `Q6_K`: two) a plane `[16 outputs] u32` where bit `8i + k` is that
//!   bit of input `4k + i` and bit `8i + 4 + k` that of input `16 + 4k + i`, so chunk `k` gets its high bits with
//!   one shift by `k` and two masks.
//!
//! Per output lane and activation row, every variant computes the same sequence, so all return the same bits. Over
//! the activation blocks `b = 0, 1, ...`, with `isum_b` the exact integer dot product of the unsigned codes with the
//! activation codes and `Σx_b` the activation codes' sum (`Σx_lo` of their first 16):
//! - `Q8_0`, `Q4_0`, `Q5_0`: `acc = fma((isum_b - offset * Σx_b) as f32, dw * dx_b, acc)`;
//! - `Q4_1`, `Q5_1`: `acc = fma(isum_b as f32, dw * dx_b, acc)`, then `acc = fma(mw, sx_b, acc)`;
//! - `Q4_K`, `Q5_K` (sub-block `j`): `acc = fma(isum_b as f32, (d * sc_j) * dx_b, acc)`, then
//!   `acc = fma(-(dmin * m_j), sx_b, acc)`;
//! - `Q6_K` (sub-blocks `2j`, `2j + 1` of 16): `i = sc_2j * (isum_lo - 32 Σx_lo) + sc_2j+1 * (isum_hi - 32 Σx_hi)`
//!   in `i32`, then `acc = fma(i as f32, d * dx_b, acc)`.

use crate::act::QActs;
use crate::format::{Decoded, Format, BLOCK};
use crate::isa::Isa;
use crate::simd::{Dot, Lanes};

// The kernels index registers and lanes by position; iterator chains would hide the layout.
#[allow(clippy::needless_range_loop)]
mod kernel;
pub mod qmatrix;

/// Output rows per tile (lanes of a 512-bit vector of f32).
pub(crate) const TILE: usize = 16;

/// Byte offset of the sub-block scales in a unit's scales (after `d` and, where the format has one, `m`).
pub(crate) fn sc_at(format: Format) -> usize {
    if format.has_min() {
        4 * TILE
    } else {
        2 * TILE
    }
}

/// Scale bytes per unit of a tile.
pub(crate) fn scale_bytes(format: Format) -> usize {
    let mins = if format.is_k() && format.has_min() { 8 } else { 0 };
    sc_at(format) + (format.sub_scales() + mins) * TILE
}

/// Extra bit planes per sub-block (codes of 5 or 6 bits).
pub(crate) fn high_planes(format: Format) -> usize {
    match format.code_bits() {
        5 => 1,
        6 => 2,
        _ => 0,
    }
}

/// Code bytes per sub-block of 32 inputs of a tile.
pub(crate) fn sub_bytes(format: Format) -> usize {
    match format {
        Format::Q8_0 => 32 * TILE,
        _ => 16 * TILE + high_planes(format) * 4 * TILE,
    }
}

/// Code bytes per unit of a tile.
pub(crate) fn code_bytes(format: Format) -> usize {
    sub_bytes(format) * format.block_weights() / BLOCK
}

/// Writes output `l`'s decoded block into unit `b` of a tile (`scales`, `codes`: the tile's two regions).
pub(crate) fn put(format: Format, scales: &mut [u8], codes: &mut [u8], b: usize, l: usize, x: &Decoded) {
    let s = &mut scales[b * scale_bytes(format)..][..scale_bytes(format)];
    s[2 * l..2 * l + 2].copy_from_slice(&x.d.to_le_bytes());
    if format.has_min() {
        s[2 * TILE + 2 * l..2 * TILE + 2 * l + 2].copy_from_slice(&x.m.to_le_bytes());
    }
    let at = sc_at(format);
    for j in 0..format.sub_scales() {
        s[at + j * TILE + l] = x.sc[j];
    }
    if format.is_k() && format.has_min() {
        (0..8).for_each(|j| s[at + (8 + j) * TILE + l] = x.mn[j]);
    }
    let sb = sub_bytes(format);
    for (j, q) in x.q[..format.block_weights()].chunks_exact(BLOCK).enumerate() {
        let c = &mut codes[(b * format.block_weights() / BLOCK + j) * sb..][..sb];
        if format == Format::Q8_0 {
            (0..32).for_each(|i| c[(i / 4) * 64 + l * 4 + i % 4] = q[i]);
            continue;
        }
        for k in 0..4 {
            for i in 0..4 {
                c[k * 64 + l * 4 + i] = (q[4 * k + i] & 15) | ((q[16 + 4 * k + i] & 15) << 4);
            }
        }
        for p in 0..high_planes(format) {
            let mut word = 0u32;
            for k in 0..4 {
                for i in 0..4 {
                    word |= (((q[4 * k + i] >> (4 + p)) & 1) as u32) << (8 * i + k);
                    word |= (((q[16 + 4 * k + i] >> (4 + p)) & 1) as u32) << (8 * i + 4 + k);
                }
            }
            c[256 + 64 * p + 4 * l..][..4].copy_from_slice(&word.to_le_bytes());
        }
    }
}

/// Reads output `l`'s block back from unit `b` of a tile: the inverse of [`put`].
pub(crate) fn get(format: Format, scales: &[u8], codes: &[u8], b: usize, l: usize) -> Decoded {
    let mut x = Decoded::default();
    let s = &scales[b * scale_bytes(format)..][..scale_bytes(format)];
    x.d = u16::from_le_bytes([s[2 * l], s[2 * l + 1]]);
    if format.has_min() {
        x.m = u16::from_le_bytes([s[2 * TILE + 2 * l], s[2 * TILE + 2 * l + 1]]);
    }
    let at = sc_at(format);
    for j in 0..format.sub_scales() {
        x.sc[j] = s[at + j * TILE + l];
    }
    if format.is_k() && format.has_min() {
        (0..8).for_each(|j| x.mn[j] = s[at + (8 + j) * TILE + l]);
    }
    let sb = sub_bytes(format);
    for (j, q) in x.q[..format.block_weights()].chunks_exact_mut(BLOCK).enumerate() {
        let c = &codes[(b * format.block_weights() / BLOCK + j) * sb..][..sb];
        if format == Format::Q8_0 {
            (0..32).for_each(|i| q[i] = c[(i / 4) * 64 + l * 4 + i % 4]);
            continue;
        }
        for k in 0..4 {
            for i in 0..4 {
                let byte = c[k * 64 + l * 4 + i];
                q[4 * k + i] = byte & 15;
                q[16 + 4 * k + i] = byte >> 4;
            }
        }
        for p in 0..high_planes(format) {
            let word = u32::from_le_bytes(c[256 + 64 * p + 4 * l..][..4].try_into().expect("4 bytes"));
            for k in 0..4 {
                for i in 0..4 {
                    q[4 * k + i] |= (((word >> (8 * i + k)) & 1) as u8) << (4 + p);
                    q[16 + 4 * k + i] |= (((word >> (8 * i + 4 + k)) & 1) as u8) << (4 + p);
                }
            }
        }
    }
    x
}

/// One tile of a repacked matrix.
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    pub scales: *const u8,
    pub codes: *const u8,
    pub nb: usize,
}

/// Prefetches block `b`'s bytes in the next tile: one whole tile ahead (the matrix is one contiguous run of tiles).
/// A tile is read once per group of activation rows; with a short fixed distance (1 KiB before) the first pass over
/// each tile waited on memory and the later passes, running from cache, had nothing in flight. A tile ahead keeps
/// the next tile coming during all of them, and is a longer, better distance for a single row's stream too
/// (docs/performance.md has the measurements).
#[inline(always)]
unsafe fn prefetch_block<V: Dot>(tile: Tile, format: Format, b: usize) {
    let per_block = scale_bytes(format) + code_bytes(format);
    let tile_bytes = tile.codes as usize - tile.scales as usize + tile.nb * code_bytes(format);
    let p = tile.scales.wrapping_add(b * per_block + tile_bytes);
    let mut off = 0;
    while off < per_block {
        V::prefetch(p.wrapping_add(off));
        off += 64;
    }
}

/// Computes `out[i][lane]` = output `lane` of the tile for activation row `r0 + i`, `i < out.len()`.
///
/// # Safety
/// `tile` must point into a live matrix of `acts.nb` blocks in `format`, `r0 + out.len() <= acts.rows`, and `isa`
/// must be supported by this CPU.
pub(crate) unsafe fn tile_rows(isa: Isa, format: Format, tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    debug_assert_eq!(tile.nb * format.block_weights() / crate::format::BLOCK, acts.nb);
    debug_assert!(r0 + out.len() <= acts.rows);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => tile_rows_avx512(format, tile, acts, r0, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => tile_rows_avx2(format, tile, acts, r0, out),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => tile_rows_neon(format, tile, acts, r0, out),
        _ => kernel::tile_rows::<Lanes>(format, tile, acts, r0, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_rows_avx2(format: Format, tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    kernel::tile_rows::<crate::simd::Avx2>(format, tile, acts, r0, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_rows_avx512(format: Format, tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    kernel::tile_rows::<crate::simd::Avx512>(format, tile, acts, r0, out)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn tile_rows_neon(format: Format, tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    kernel::tile_rows::<crate::simd::Neon>(format, tile, acts, r0, out)
}
