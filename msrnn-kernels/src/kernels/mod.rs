//! The tile kernels, one module per instruction-set variant, all on one repacked layout.
//!
//! A tile holds 16 consecutive output rows of the weight matrix (one SIMD lane per output; the last tile of a matrix
//! is padded with zero rows). Its bytes: first the scales of every block (padded to 64 bytes), then the codes of
//! every block, so that code loads are 64-byte aligned:
//! - `Q8_0`: scales `[nb][16] f16`; codes `[nb][8 groups][16 outputs][4] u8`, the code plus 128 (for `vpdpbusd`,
//!   which multiplies unsigned by signed bytes); group `g` holds inputs `4g..4g+4` of the block.
//! - `Q4_1`: scales `[nb] { d: [16] f16, m: [16] f16 }`; codes `[nb][4 chunks][16 outputs][4] u8`, byte `i` of chunk
//!   `c` holds input `4c + i` in its low nibble and input `16 + 4c + i` in its high nibble (GGUF's own nibble order).
//!
//! Per output lane and activation row, every variant computes the same sequence, so all return the same bits:
//! `isum_b` = the exact integer dot product of block `b`, then
//! `acc = fma(isum_b as f32, dw_b * dx_b, acc)` (and for Q4_1 `acc = fma(mw_b, sx_b, acc)`) for `b = 0, 1, ...`.

use crate::act::QActs;
use crate::format::Format;
use crate::isa::Isa;

// Kernels index registers and lanes by position; iterator chains would hide the layout.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)]
mod avx2;
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)]
mod avx512;
#[allow(clippy::needless_range_loop)]
mod scalar;

/// Output rows per tile (lanes of a 512-bit vector of f32).
pub(crate) const TILE: usize = 16;

/// Scale bytes per block of a tile.
pub(crate) fn scale_bytes(format: Format) -> usize {
    match format {
        Format::Q8_0 => 2 * TILE,
        Format::Q4_1 => 4 * TILE,
    }
}

/// Code bytes per block of a tile.
pub(crate) fn code_bytes(format: Format) -> usize {
    match format {
        Format::Q8_0 => 32 * TILE,
        Format::Q4_1 => 16 * TILE,
    }
}

/// One tile of a repacked matrix.
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    pub scales: *const u8,
    pub codes: *const u8,
    pub nb: usize,
}

/// How far ahead of the block being computed the SIMD kernels prefetch weights, in bytes. The hardware prefetchers
/// alone leave a decode step well short of the memory bandwidth (docs/performance.md has the measurements).
pub(crate) const PREFETCH: usize = 1024;

/// Prefetches the bytes `dist` ahead of block `b`'s place in the tile's linear order (the matrix is one contiguous
/// run of tiles, so this runs on into the next tile).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn prefetch_block(tile: Tile, format: Format, b: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let per_block = scale_bytes(format) + code_bytes(format);
    let p = tile.scales.wrapping_add(b * per_block + PREFETCH);
    let mut off = 0;
    while off < per_block {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off) as *const i8);
        off += 64;
    }
}

/// Computes `out[i][lane]` = output `lane` of the tile for activation row `r0 + i`, `i < out.len()`.
///
/// # Safety
/// `tile` must point into a live matrix of `acts.nb` blocks in `format`, `r0 + out.len() <= acts.rows`, and `isa`
/// must be supported by this CPU.
pub(crate) unsafe fn tile_rows(isa: Isa, format: Format, tile: Tile, acts: &QActs, r0: usize, out: &mut [[f32; TILE]]) {
    debug_assert_eq!(tile.nb, acts.nb);
    debug_assert!(r0 + out.len() <= acts.rows);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::tile_rows(format, tile, acts, r0, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::tile_rows(format, tile, acts, r0, out),
        _ => scalar::tile_rows(format, tile, acts, r0, out),
    }
}
