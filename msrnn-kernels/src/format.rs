//! The weight formats: GGUF's own block layouts, read and written byte for byte.
//!
//! Blocks of 32 weights (`w = d * (q - offset)` or `w = d * q + m`):
//! - `Q4_0` (18 bytes `{ d: f16, qs: [u8; 16] }`, offset 8), `Q4_1` (20 bytes `{ d, m: f16, qs: [u8; 16] }`): byte
//!   `j` of `qs` holds weight `j` in its low nibble and weight `j + 16` in its high nibble.
//! - `Q5_0` (22 bytes `{ d, qh: u32, qs }`, offset 16), `Q5_1` (24 bytes `{ d, m, qh, qs }`): as Q4, with bit `j` of
//!   `qh` the fifth bit of weight `j`.
//! - `Q8_0`: 34-byte blocks `{ d: f16, qs: [i8; 32] }`, `w = d * q`.
//!
//! K-quants, super-blocks of 256 weights with 6- or 8-bit sub-block scales:
//! - `Q4_K` (144 bytes `{ d, dmin: f16, scales: [u8; 12], qs: [u8; 128] }`): 8 sub-blocks of 32 with a 6-bit scale
//!   and min each, `w = (d * sc) * q - dmin * m`; 64-weight chunk `p` is `qs[32p..32p + 32]`, sub-block `2p` in the
//!   low nibbles, `2p + 1` in the high ones.
//! - `Q5_K` (176 bytes `{ d, dmin, scales, qh: [u8; 32], qs }`): as Q4_K, bit `j` of `qh[i]` the fifth bit of weight
//!   `i` of sub-block `j`.
//! - `Q6_K` (210 bytes `{ ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d }`): 16 sub-blocks of 16 with an 8-bit
//!   signed scale, `w = (d * sc) * (q - 32)`.
//!
//! [`Decoded`] is a block with its codes and scales unpacked (the common form the tile repacking, the references
//! and the tests work from); the functions here are the plain reference for these layouts.

// The block layouts are written by position, as ggml documents them.
#![allow(clippy::needless_range_loop)]

use crate::error::{KernelError, Result};
use half::f16;

/// Activations are quantized in blocks of 32 values; every format's block is 1 or 8 of these.
pub const BLOCK: usize = 32;

/// Weights per K-quant super-block.
pub const QK_K: usize = 256;

/// A quantized block format, as GGUF stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl Format {
    pub const ALL: [Format; 8] =
        [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q5_1, Format::Q8_0, Format::Q4K, Format::Q5K, Format::Q6K];

    /// ggml's type id (`ggml_type`), as written in GGUF tensor infos.
    pub fn ggml_id(self) -> u32 {
        match self {
            Format::Q4_0 => 2,
            Format::Q4_1 => 3,
            Format::Q5_0 => 6,
            Format::Q5_1 => 7,
            Format::Q8_0 => 8,
            Format::Q4K => 12,
            Format::Q5K => 13,
            Format::Q6K => 14,
        }
    }

    pub fn from_ggml_id(id: u32) -> Result<Self> {
        Self::ALL.into_iter().find(|f| f.ggml_id() == id).ok_or(KernelError::UnsupportedGgmlType(id))
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Q4_0 => "Q4_0",
            Format::Q4_1 => "Q4_1",
            Format::Q5_0 => "Q5_0",
            Format::Q5_1 => "Q5_1",
            Format::Q8_0 => "Q8_0",
            Format::Q4K => "Q4_K",
            Format::Q5K => "Q5_K",
            Format::Q6K => "Q6_K",
        }
    }

    /// Weights per GGUF block: 32, or 256 for the K-quants.
    pub fn block_weights(self) -> usize {
        if self.is_k() {
            QK_K
        } else {
            BLOCK
        }
    }

    /// Whether this is a K-quant (super-blocks of 256).
    pub fn is_k(self) -> bool {
        matches!(self, Format::Q4K | Format::Q5K | Format::Q6K)
    }

    /// Bytes of one GGUF block of [`Format::block_weights`] weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q5_0 => 22,
            Format::Q5_1 => 24,
            Format::Q8_0 => 34,
            Format::Q4K => 144,
            Format::Q5K => 176,
            Format::Q6K => 210,
        }
    }

    /// Bits per code (the codes are unsigned: `offset` is subtracted where the format is symmetric).
    pub fn code_bits(self) -> u32 {
        match self {
            Format::Q4_0 | Format::Q4_1 | Format::Q4K => 4,
            Format::Q5_0 | Format::Q5_1 | Format::Q5K => 5,
            Format::Q6K => 6,
            Format::Q8_0 => 8,
        }
    }

    /// What is subtracted from an unsigned code before scaling (0 where the format has a min instead).
    pub fn offset(self) -> i32 {
        match self {
            Format::Q4_0 => 8,
            Format::Q5_0 => 16,
            Format::Q6K => 32,
            Format::Q8_0 => 128,
            Format::Q4_1 | Format::Q5_1 | Format::Q4K | Format::Q5K => 0,
        }
    }

    /// Whether a block carries a min (`Q4_1`, `Q5_1`) or a super-block min scale (`Q4_K`, `Q5_K`).
    pub fn has_min(self) -> bool {
        matches!(self, Format::Q4_1 | Format::Q5_1 | Format::Q4K | Format::Q5K)
    }

    /// Sub-block scales per block: 8 (`Q4_K`, `Q5_K`), 16 (`Q6_K`) or none.
    pub fn sub_scales(self) -> usize {
        match self {
            Format::Q4K | Format::Q5K => 8,
            Format::Q6K => 16,
            _ => 0,
        }
    }

    /// Bytes of a GGUF matrix of this shape; errors when `in_dim` is not a whole number of blocks.
    pub fn matrix_bytes(self, out_dim: usize, in_dim: usize) -> Result<usize> {
        let block = self.block_weights();
        if !in_dim.is_multiple_of(block) {
            return Err(KernelError::InDimNotBlockMultiple { format: self.name(), in_dim, block });
        }
        Ok(out_dim * (in_dim / block) * self.block_bytes())
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
        let key = |s: &str| s.to_ascii_lowercase().replace(['_', '-'], "");
        Self::ALL.into_iter().find(|f| key(f.name()) == key(s)).ok_or_else(|| KernelError::UnknownFormat(s.into()))
    }
}

/// One GGUF block unpacked: its scales as stored and one unsigned code per weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The block's (or super-block's) scale, f16 bits.
    pub d: u16,
    /// The min (`Q4_1`, `Q5_1`) or the min scale (`dmin`, `Q4_K`, `Q5_K`), f16 bits; 0 elsewhere.
    pub m: u16,
    /// Sub-block scales: 6-bit (`Q4_K`, `Q5_K`, 8 of them) or `i8` bits (`Q6_K`, 16).
    pub sc: [u8; 16],
    /// Sub-block mins, 6-bit (`Q4_K`, `Q5_K`).
    pub mn: [u8; 8],
    /// Unsigned codes, [`Format::block_weights`] of them (the rest 0); `Q8_0` codes are `q + 128`.
    pub q: [u8; QK_K],
}

impl Default for Decoded {
    fn default() -> Self {
        Self { d: 0, m: 0, sc: [0; 16], mn: [0; 8], q: [0; QK_K] }
    }
}

fn f16_bits(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Unpacks one GGUF block (`block.len() == format.block_bytes()`).
pub fn decode_block(format: Format, b: &[u8]) -> Decoded {
    let mut x = Decoded::default();
    let nibbles = |x: &mut Decoded, qs: &[u8]| {
        for j in 0..16 {
            x.q[j] = qs[j] & 15;
            x.q[j + 16] = qs[j] >> 4;
        }
    };
    let fifth = |x: &mut Decoded, qh: u32| (0..32).for_each(|j| x.q[j] |= (((qh >> j) & 1) << 4) as u8);
    match format {
        Format::Q8_0 => {
            x.d = f16_bits(b, 0);
            (0..32).for_each(|j| x.q[j] = b[2 + j] ^ 0x80);
        }
        Format::Q4_0 => {
            x.d = f16_bits(b, 0);
            nibbles(&mut x, &b[2..18]);
        }
        Format::Q4_1 => {
            (x.d, x.m) = (f16_bits(b, 0), f16_bits(b, 2));
            nibbles(&mut x, &b[4..20]);
        }
        Format::Q5_0 => {
            x.d = f16_bits(b, 0);
            nibbles(&mut x, &b[6..22]);
            fifth(&mut x, u32::from_le_bytes([b[2], b[3], b[4], b[5]]));
        }
        Format::Q5_1 => {
            (x.d, x.m) = (f16_bits(b, 0), f16_bits(b, 2));
            nibbles(&mut x, &b[8..24]);
            fifth(&mut x, u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
        }
        Format::Q4K | Format::Q5K => {
            (x.d, x.m) = (f16_bits(b, 0), f16_bits(b, 2));
            let s = &b[4..16];
            for j in 0..8 {
                (x.sc[j], x.mn[j]) = if j < 4 {
                    (s[j] & 63, s[j + 4] & 63)
                } else {
                    ((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
                };
            }
            let (qh, qs) = if format == Format::Q5K { (&b[16..48], &b[48..176]) } else { (&b[16..16], &b[16..144]) };
            for p in 0..4 {
                for i in 0..32 {
                    let byte = qs[32 * p + i];
                    x.q[64 * p + i] = byte & 15;
                    x.q[64 * p + 32 + i] = byte >> 4;
                }
            }
            if format == Format::Q5K {
                for j in 0..8 {
                    (0..32).for_each(|i| x.q[32 * j + i] |= ((qh[i] >> j) & 1) << 4);
                }
            }
        }
        Format::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            x.d = f16_bits(b, 208);
            x.sc.copy_from_slice(sc);
            for n in 0..2 {
                let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
                let y = &mut x.q[128 * n..];
                for l in 0..32 {
                    y[l] = (ql[l] & 15) | ((qh[l] & 3) << 4);
                    y[l + 32] = (ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4);
                    y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
        }
    }
    x
}

/// Packs a decoded block back into GGUF bytes: the inverse of [`decode_block`] (codes and scales must fit their
/// bits).
pub fn encode_block(format: Format, x: &Decoded, b: &mut [u8]) {
    let nibbles = |qs: &mut [u8]| (0..16).for_each(|j| qs[j] = (x.q[j] & 15) | (x.q[j + 16] << 4));
    let fifth = || (0..32).fold(0u32, |h, j| h | ((((x.q[j] >> 4) & 1) as u32) << j)).to_le_bytes();
    let (d, m) = (x.d.to_le_bytes(), x.m.to_le_bytes());
    match format {
        Format::Q8_0 => {
            b[0..2].copy_from_slice(&d);
            (0..32).for_each(|j| b[2 + j] = x.q[j] ^ 0x80);
        }
        Format::Q4_0 => {
            b[0..2].copy_from_slice(&d);
            nibbles(&mut b[2..18]);
        }
        Format::Q4_1 => {
            b[0..2].copy_from_slice(&d);
            b[2..4].copy_from_slice(&m);
            nibbles(&mut b[4..20]);
        }
        Format::Q5_0 => {
            b[0..2].copy_from_slice(&d);
            b[2..6].copy_from_slice(&fifth());
            nibbles(&mut b[6..22]);
        }
        Format::Q5_1 => {
            b[0..2].copy_from_slice(&d);
            b[2..4].copy_from_slice(&m);
            b[4..8].copy_from_slice(&fifth());
            nibbles(&mut b[8..24]);
        }
        Format::Q4K | Format::Q5K => {
            b[0..2].copy_from_slice(&d);
            b[2..4].copy_from_slice(&m);
            let s = &mut b[4..16];
            for j in 0..4 {
                s[j] = (x.sc[j] & 63) | ((x.sc[j + 4] >> 4) << 6);
                s[j + 4] = (x.mn[j] & 63) | ((x.mn[j + 4] >> 4) << 6);
                s[j + 8] = (x.sc[j + 4] & 15) | ((x.mn[j + 4] & 15) << 4);
            }
            let qs_at = if format == Format::Q5K { 48 } else { 16 };
            for p in 0..4 {
                for i in 0..32 {
                    b[qs_at + 32 * p + i] = (x.q[64 * p + i] & 15) | ((x.q[64 * p + 32 + i] & 15) << 4);
                }
            }
            if format == Format::Q5K {
                for i in 0..32 {
                    b[16 + i] = (0..8).fold(0u8, |h, j| h | (((x.q[32 * j + i] >> 4) & 1) << j));
                }
            }
        }
        Format::Q6K => {
            for n in 0..2 {
                let y = &x.q[128 * n..];
                for l in 0..32 {
                    b[64 * n + l] = (y[l] & 15) | ((y[l + 64] & 15) << 4);
                    b[64 * n + l + 32] = (y[l + 32] & 15) | ((y[l + 96] & 15) << 4);
                    b[128 + 32 * n + l] =
                        (y[l] >> 4) | ((y[l + 32] >> 4) << 2) | ((y[l + 64] >> 4) << 4) | ((y[l + 96] >> 4) << 6);
                }
            }
            b[192..208].copy_from_slice(&x.sc);
            b[208..210].copy_from_slice(&d);
        }
    }
}

impl Decoded {
    /// The block's scale as f32.
    pub fn d(&self) -> f32 {
        f16::from_bits(self.d).to_f32()
    }
    /// The min or min scale as f32.
    pub fn m(&self) -> f32 {
        f16::from_bits(self.m).to_f32()
    }

    /// Weight `i`'s value, computed as ggml dequantizes it.
    pub fn value(&self, format: Format, i: usize) -> f32 {
        let q = self.q[i] as i32;
        match format {
            Format::Q4_1 | Format::Q5_1 => self.d() * q as f32 + self.m(),
            Format::Q4_0 | Format::Q5_0 | Format::Q8_0 => (q - format.offset()) as f32 * self.d(),
            Format::Q4K | Format::Q5K => {
                let j = i / 32;
                (self.d() * self.sc[j] as f32) * q as f32 - self.m() * self.mn[j] as f32
            }
            Format::Q6K => (self.d() * self.sc[i / 16] as i8 as f32) * (q - 32) as f32,
        }
    }
}

/// Dequantizes one GGUF block into [`Format::block_weights`] values.
pub fn dequantize_block(format: Format, block: &[u8], out: &mut [f32]) {
    let x = decode_block(format, block);
    for (i, o) in out[..format.block_weights()].iter_mut().enumerate() {
        *o = x.value(format, i);
    }
}

/// Quantizes 32 values into one GGUF block, as llama.cpp's reference quantizers do
/// (`quantize_row_q8_0_ref`, `quantize_row_q4_1_ref`). Only these two formats are made here (re-quantizing at load
/// targets Q8_0); the others are only read.
pub fn quantize_block(format: Format, x: &[f32], block: &mut [u8]) -> Result<()> {
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
        _ => return Err(KernelError::NoQuantizer(format.name())),
    }
    Ok(())
}

/// Quantizes a row-major `[out_dim, in_dim]` f32 matrix into GGUF blocks (`Q8_0` or `Q4_1`).
pub fn quantize_matrix(format: Format, w: &[f32], out_dim: usize, in_dim: usize) -> Result<Vec<u8>> {
    let bytes = format.matrix_bytes(out_dim, in_dim)?;
    if w.len() != out_dim * in_dim {
        return Err(KernelError::ValueCount { out_dim, in_dim, expected: out_dim * in_dim, got: w.len() });
    }
    let mut out = vec![0u8; bytes];
    for (x, block) in w.chunks_exact(BLOCK).zip(out.chunks_exact_mut(format.block_bytes())) {
        quantize_block(format, x, block)?;
    }
    Ok(out)
}

/// Dequantizes GGUF blocks (a whole number of them) into f32.
pub fn dequantize_blocks(format: Format, bytes: &[u8], out: &mut [f32]) {
    for (block, o) in bytes.chunks_exact(format.block_bytes()).zip(out.chunks_exact_mut(format.block_weights())) {
        dequantize_block(format, block, o);
    }
}
