//! The weight formats: GGUF's own block layouts, read and written byte for byte.
//!
//! - `Q8_0`: 34-byte blocks of 32 weights, `{ d: f16, qs: [i8; 32] }`, `w = d * q`.
//! - `Q4_1`: 20-byte blocks of 32 weights, `{ d: f16, m: f16, qs: [u8; 16] }`, `w = d * q + m`, where byte `j` holds
//!   weight `j` in its low nibble and weight `j + 16` in its high nibble.
//!
//! The functions here are the plain reference for these layouts; [`crate::QMatrix`] repacks the blocks for its kernels.

use crate::error::{KernelError, Result};
use half::f16;

/// Weights per block, for every format here (and activations are quantized in blocks of the same size).
pub const BLOCK: usize = 32;

/// A quantized block format, as GGUF stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Q4_1,
    Q8_0,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Q4_1, Format::Q8_0];

    /// ggml's type id (`ggml_type`), as written in GGUF tensor infos.
    pub fn ggml_id(self) -> u32 {
        match self {
            Format::Q4_1 => 3,
            Format::Q8_0 => 8,
        }
    }

    pub fn from_ggml_id(id: u32) -> Result<Self> {
        Self::ALL.into_iter().find(|f| f.ggml_id() == id).ok_or(KernelError::UnsupportedGgmlType(id))
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Q4_1 => "Q4_1",
            Format::Q8_0 => "Q8_0",
        }
    }

    /// Bytes of one GGUF block of [`BLOCK`] weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4_1 => 20,
            Format::Q8_0 => 34,
        }
    }

    /// Bytes of a GGUF matrix of this shape; errors when `in_dim` is not a whole number of blocks.
    pub fn matrix_bytes(self, out_dim: usize, in_dim: usize) -> Result<usize> {
        if !in_dim.is_multiple_of(BLOCK) {
            return Err(KernelError::InDimNotBlockMultiple { format: self.name(), in_dim, block: BLOCK });
        }
        Ok(out_dim * (in_dim / BLOCK) * self.block_bytes())
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| KernelError::UnknownFormat(s.into()))
    }
}

/// Reads a little-endian f16 as f32 (exact).
#[inline]
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// Dequantizes one GGUF block into 32 values.
pub fn dequantize_block(format: Format, block: &[u8], out: &mut [f32]) {
    match format {
        Format::Q8_0 => {
            let d = f16_at(block, 0);
            for (o, &q) in out[..BLOCK].iter_mut().zip(&block[2..34]) {
                *o = d * q as i8 as f32;
            }
        }
        Format::Q4_1 => {
            let (d, m) = (f16_at(block, 0), f16_at(block, 2));
            for j in 0..16 {
                let q = block[4 + j];
                out[j] = d * (q & 15) as f32 + m;
                out[j + 16] = d * (q >> 4) as f32 + m;
            }
        }
    }
}

/// Quantizes 32 values into one GGUF block, as llama.cpp's reference quantizers do
/// (`quantize_row_q8_0_ref`, `quantize_row_q4_1_ref`).
pub fn quantize_block(format: Format, x: &[f32], block: &mut [u8]) {
    let x = &x[..BLOCK];
    match format {
        Format::Q8_0 => {
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            block[0..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
            for (b, v) in block[2..34].iter_mut().zip(x) {
                *b = (v * id).round() as i8 as u8;
            }
        }
        Format::Q4_1 => {
            let min = x.iter().fold(f32::INFINITY, |a, &v| a.min(v));
            let max = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            block[0..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
            block[2..4].copy_from_slice(&f16::from_f32(min).to_bits().to_le_bytes());
            for j in 0..16 {
                let lo = (((x[j] - min) * id + 0.5) as u8).min(15);
                let hi = (((x[j + 16] - min) * id + 0.5) as u8).min(15);
                block[4 + j] = lo | (hi << 4);
            }
        }
    }
}

/// Quantizes a row-major `[out_dim, in_dim]` f32 matrix into GGUF blocks.
pub fn quantize_matrix(format: Format, w: &[f32], out_dim: usize, in_dim: usize) -> Result<Vec<u8>> {
    let bytes = format.matrix_bytes(out_dim, in_dim)?;
    if w.len() != out_dim * in_dim {
        return Err(KernelError::ValueCount { out_dim, in_dim, expected: out_dim * in_dim, got: w.len() });
    }
    let mut out = vec![0u8; bytes];
    for (x, block) in w.chunks_exact(BLOCK).zip(out.chunks_exact_mut(format.block_bytes())) {
        quantize_block(format, x, block);
    }
    Ok(out)
}

/// Dequantizes GGUF blocks (a whole number of them) into f32.
pub fn dequantize_blocks(format: Format, bytes: &[u8], out: &mut [f32]) {
    for (block, o) in bytes.chunks_exact(format.block_bytes()).zip(out.chunks_exact_mut(BLOCK)) {
        dequantize_block(format, block, o);
    }
}
