//! A quantized weight matrix, repacked into 16-output tiles for the kernels.

use super::{code_bytes, scale_bytes, Tile, TILE};
use crate::act::QActs;
use crate::error::{KernelError, Result};
use crate::format::{self, Format};
use crate::isa::{self, Isa};
use crate::pool;
use std::cell::RefCell;

/// Rows of a call computed together (by one task) against one tile.
const ROW_BLOCK: usize = 64;

/// An `out_dim x in_dim` weight matrix in a GGUF block format, repacked into tiles of 16 outputs (see the layout in
/// `matmul/mod.rs`); it can give back the GGUF bytes it was built from, bit for bit.
pub struct QMatrix {
    format: Format,
    out_dim: usize,
    in_dim: usize,
    /// Format blocks per row.
    nb: usize,
    n_tiles: usize,
    /// Scale bytes at the start of each tile, padded to 64.
    scales_len: usize,
    tile_bytes: usize,
    data: AlignedBytes,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({} {}x{})", self.format, self.out_dim, self.in_dim)
    }
}

impl QMatrix {
    /// Builds the matrix from GGUF blocks as stored in the file: `out_dim` rows of `in_dim / 32` blocks each.
    pub fn from_ggml(format: Format, bytes: &[u8], out_dim: usize, in_dim: usize) -> Result<Self> {
        let expected = format.matrix_bytes(out_dim, in_dim)?;
        if out_dim == 0 || in_dim == 0 {
            return Err(KernelError::Empty { out_dim, in_dim });
        }
        if bytes.len() != expected {
            return Err(KernelError::ByteLength { format: format.name(), out_dim, in_dim, expected, got: bytes.len() });
        }
        let nb = in_dim / format.block_weights();
        let n_tiles = out_dim.div_ceil(TILE);
        let scales_len = (nb * scale_bytes(format)).next_multiple_of(64);
        let tile_bytes = scales_len + nb * code_bytes(format);
        let mut data = AlignedBytes::zeroed(n_tiles * tile_bytes);
        let buf = data.as_mut_slice();
        let bb = format.block_bytes();
        // Padding rows: zero scales; Q8_0 codes hold code + 128, so a zero code is 128.
        if format == Format::Q8_0 {
            for t in 0..n_tiles {
                buf[t * tile_bytes + scales_len..(t + 1) * tile_bytes].fill(128);
            }
        }
        for o in 0..out_dim {
            let (t, l) = (o / TILE, o % TILE);
            let tile = &mut buf[t * tile_bytes..(t + 1) * tile_bytes];
            let (scales, codes) = tile.split_at_mut(scales_len);
            for b in 0..nb {
                let x = format::decode_block(format, &bytes[(o * nb + b) * bb..][..bb]);
                super::put(format, scales, codes, b, l, &x);
            }
        }
        Ok(Self { format, out_dim, in_dim, nb, n_tiles, scales_len, tile_bytes, data })
    }

    /// Quantizes a dense row-major `[out_dim, in_dim]` f32 matrix (llama.cpp's reference rounding; `Q8_0` and
    /// `Q4_1` only).
    pub fn quantize(format: Format, w: &[f32], out_dim: usize, in_dim: usize) -> Result<Self> {
        Self::from_ggml(format, &format::quantize_matrix(format, w, out_dim, in_dim)?, out_dim, in_dim)
    }

    /// The GGUF bytes of the matrix, exactly as [`QMatrix::from_ggml`] received them.
    pub fn to_ggml(&self) -> Vec<u8> {
        (0..self.out_dim).flat_map(|o| self.row_ggml(o)).collect()
    }

    /// Stacks matrices of one format and input width along the output dimension (e.g. q|k|v, gate|up).
    pub fn concat_rows(parts: &[&QMatrix]) -> Result<Self> {
        let first = parts.first().ok_or_else(|| KernelError::Concat("no matrices".into()))?;
        let mut bytes = Vec::new();
        let mut out_dim = 0;
        for p in parts {
            if p.format != first.format || p.in_dim != first.in_dim {
                return Err(KernelError::Concat(format!(
                    "{} {}x{} does not stack under {} {}x{}",
                    p.format, p.out_dim, p.in_dim, first.format, first.out_dim, first.in_dim
                )));
            }
            bytes.extend_from_slice(&p.to_ggml());
            out_dim += p.out_dim;
        }
        Self::from_ggml(first.format, &bytes, out_dim, first.in_dim)
    }

    /// Dequantizes output row `r` (`out.len() == in_dim`) from the stored blocks.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.out_dim, "row {r} of a matrix with {} rows", self.out_dim);
        assert_eq!(out.len(), self.in_dim, "dequantize_row: output length");
        let (scales, codes) = self.tile_bytes_of(r / TILE);
        for (b, o) in out.chunks_exact_mut(self.format.block_weights()).enumerate() {
            let x = super::get(self.format, scales, codes, b, r % TILE);
            o.iter_mut().enumerate().for_each(|(i, v)| *v = x.value(self.format, i));
        }
    }

    /// The whole matrix as dense row-major f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.out_dim * self.in_dim];
        for (r, row) in out.chunks_exact_mut(self.in_dim).enumerate() {
            self.dequantize_row(r, row);
        }
        out
    }

    /// Row `r`'s GGUF blocks.
    fn row_ggml(&self, r: usize) -> Vec<u8> {
        let bb = self.format.block_bytes();
        let (scales, codes) = self.tile_bytes_of(r / TILE);
        let mut out = vec![0u8; self.nb * bb];
        for (b, dst) in out.chunks_exact_mut(bb).enumerate() {
            format::encode_block(self.format, &super::get(self.format, scales, codes, b, r % TILE), dst);
        }
        out
    }

    fn tile_bytes_of(&self, t: usize) -> (&[u8], &[u8]) {
        self.data.as_slice()[t * self.tile_bytes..(t + 1) * self.tile_bytes].split_at(self.scales_len)
    }

    fn tile(&self, t: usize) -> Tile {
        let (scales, codes) = self.tile_bytes_of(t);
        Tile { scales: scales.as_ptr(), codes: codes.as_ptr(), nb: self.nb }
    }

    pub fn format(&self) -> Format {
        self.format
    }
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }
    /// Bytes of weights held (the same as the GGUF blocks, plus the padding of the last tile).
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// `y[rows, out_dim] = x[rows, in_dim] · Wᵀ` with the active instruction set ([`isa::active`]).
    ///
    /// Activations are quantized in blocks of 32 (see [`crate::act`]); output `o` of row `r` is
    /// `Σ_b fma(isum_b, dw_b * dx_b, ·)` over the activation blocks in order (each format's exact sequence, min terms
    /// and sub-block scales included, is in `matmul/mod.rs`), which does not depend on `rows`, on the row's place or
    /// on the thread count.
    ///
    /// # Panics
    /// When `x.len() != rows * in_dim` or `y.len() != rows * out_dim`.
    pub fn matmul(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        self.matmul_with(isa::active(), x, rows, y)
    }

    /// [`QMatrix::matmul`] with a given instruction set (one this CPU lacks falls back to the scalar code).
    pub fn matmul_with(&self, isa: Isa, x: &[f32], rows: usize, y: &mut [f32]) {
        assert_eq!(x.len(), rows * self.in_dim, "matmul: x has {} values, expected {rows} x {}", x.len(), self.in_dim);
        assert_eq!(
            y.len(),
            rows * self.out_dim,
            "matmul: y has {} values, expected {rows} x {}",
            y.len(),
            self.out_dim
        );
        if rows == 0 {
            return;
        }
        let isa = if isa.is_supported() { isa } else { Isa::Scalar };
        thread_local! {
            static ACTS: RefCell<QActs> = RefCell::new(QActs::default());
        }
        ACTS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut acts) => {
                acts.quantize_into(isa, x, rows, self.in_dim);
                self.matmul_acts(isa, &acts, y);
            }
            // A task of this very call re-entered matmul on this thread: use a buffer of its own.
            Err(_) => self.matmul_acts(isa, &QActs::quantize(isa, x, rows, self.in_dim), y),
        });
    }

    /// The product on activations already quantized (e.g. shared by several matrices with the same input).
    pub fn matmul_acts(&self, isa: Isa, acts: &QActs, y: &mut [f32]) {
        assert_eq!(
            acts.in_dim, self.in_dim,
            "matmul: activations are {} wide, the matrix {}",
            acts.in_dim, self.in_dim
        );
        assert_eq!(y.len(), acts.rows * self.out_dim, "matmul: output length");
        let isa = if isa.is_supported() { isa } else { Isa::Scalar };
        let rows = acts.rows;
        let row_blocks = rows.div_ceil(ROW_BLOCK);
        // Enough tasks for dynamic claiming to balance the threads (several per thread), none smaller than a tile.
        let threads = pool::threads();
        let tiles_per_task = if threads == 1 {
            self.n_tiles
        } else {
            let want = (threads * 8).div_ceil(row_blocks);
            self.n_tiles.div_ceil(want).max(1)
        };
        let tile_groups = self.n_tiles.div_ceil(tiles_per_task);
        let y_ptr = SyncPtr(y.as_mut_ptr());
        let task = |t: usize| {
            let (rb, tg) = (t / tile_groups, t % tile_groups);
            let (r0, r1) = (rb * ROW_BLOCK, ((rb + 1) * ROW_BLOCK).min(rows));
            let mut out = [[0f32; TILE]; ROW_BLOCK];
            for ti in tg * tiles_per_task..((tg + 1) * tiles_per_task).min(self.n_tiles) {
                let out = &mut out[..r1 - r0];
                // SAFETY: the tile is in bounds, rows r0..r1 exist in `acts`, `isa` is supported.
                unsafe { super::tile_rows(isa, self.format, self.tile(ti), acts, r0, out) };
                let (c0, c1) = (ti * TILE, ((ti + 1) * TILE).min(self.out_dim));
                for (i, o) in out.iter().enumerate() {
                    // SAFETY: each task writes its own rows x outputs, disjoint from every other task's.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(y_ptr.get().add((r0 + i) * self.out_dim + c0), c1 - c0)
                    };
                    dst.copy_from_slice(&o[..c1 - c0]);
                }
            }
        };
        pool::for_each(row_blocks * tile_groups, &task);
    }
}

struct SyncPtr(*mut f32);
// SAFETY: used only to write disjoint parts of one output slice from the pool's threads.
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// A zeroed byte buffer aligned to 64 bytes (a cache line, and a 512-bit load). Buffers of 2 MiB and more are aligned
/// to 2 MiB and, on Linux, offered transparent huge pages: decode streams every weight once per token, and 4 KiB pages
/// would cost a TLB miss every few blocks.
struct AlignedBytes {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    layout: std::alloc::Layout,
}

// SAFETY: a plain owned byte buffer.
unsafe impl Send for AlignedBytes {}
unsafe impl Sync for AlignedBytes {}

const HUGE_PAGE: usize = 2 << 20;

impl AlignedBytes {
    fn zeroed(len: usize) -> Self {
        let align = if len >= HUGE_PAGE { HUGE_PAGE } else { 64 };
        let size = len.max(1).next_multiple_of(align);
        let layout = std::alloc::Layout::from_size_align(size, align).expect("a valid buffer layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        #[cfg(target_os = "linux")]
        if align == HUGE_PAGE {
            extern "C" {
                fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
            }
            const MADV_HUGEPAGE: i32 = 14;
            // SAFETY: the range is the allocation just made; the advice is only a hint (its result is ignored).
            unsafe { madvise(raw as *mut std::ffi::c_void, size, MADV_HUGEPAGE) };
        }
        Self { ptr, len, layout }
    }
    fn len(&self) -> usize {
        self.len
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialized (zeroed) bytes owned by this value.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBytes {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
