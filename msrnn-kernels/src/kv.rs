//! How a layer's keys and values are stored: f32, f16, or 8-bit blocks with a scale (`q8_0`).
//!
//! The state is the model's memory per token, and with many sequences (a server, a batch) reading it
//! is most of a decode step's cost: halving or quartering its bytes is throughput. The fused
//! attention kernel ([`crate::attention`]) reads every format directly, converting in registers.
//!
//! Layouts (both hold `heads x slots` rows of `head_dim` values, `slots` a multiple of
//! [`KEY_BLOCK`]):
//! - keys are slot-blocked, `[heads][slots/16][head_dim][16]` ([`key_index`]);
//! - values are rows, `[heads][slots][head_dim]`.
//!
//! `q8_0` quantizes each row in blocks of [`QBLOCK`] dimensions (the last one ragged when the head
//! size is not a multiple of 32) as GGUF's `Q8_0` does: an f16 scale `d = max|x| / 127` and codes
//! `round(x / d)`, the value being `d * q`. Scales are laid out like the values they scale, with a
//! block in place of a dimension: keys `[heads][slots/16][blocks][16]`, values `[heads][slots][blocks]`.
//! A code times an f16 scale is exact in f32, so the kernel's `q * d` equals the dequantized value.

use std::collections::TryReserveError;

use half::f16;
use serde::{Deserialize, Serialize};

use crate::attention::{key_index, KEY_BLOCK};

/// Dimensions per `q8_0` scale.
pub const QBLOCK: usize = 32;

/// The storage format of keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum KvFormat {
    /// 4 bytes a value: the exact reference.
    #[default]
    #[serde(rename = "f32")]
    F32,
    /// 2 bytes a value (IEEE half: ~3 significant digits, at most 65504).
    #[serde(rename = "f16")]
    F16,
    /// 1 byte a value plus a 2-byte scale per 32 of them.
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl KvFormat {
    pub const ALL: [KvFormat; 3] = [KvFormat::F32, KvFormat::F16, KvFormat::Q8_0];

    pub fn name(self) -> &'static str {
        match self {
            KvFormat::F32 => "f32",
            KvFormat::F16 => "f16",
            KvFormat::Q8_0 => "q8_0",
        }
    }

    /// Whether this is the default, f32 (documents leave the default out).
    pub fn is_f32(&self) -> bool {
        *self == KvFormat::F32
    }

    /// Bytes of one row (a key or a value of one head) of `head_dim` values.
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            KvFormat::F32 => 4 * head_dim,
            KvFormat::F16 => 2 * head_dim,
            KvFormat::Q8_0 => head_dim + 2 * head_dim.div_ceil(QBLOCK),
        }
    }
}

impl std::fmt::Display for KvFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown KV format name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown KV format {0:?} (expected f32, f16 or q8_0)")]
pub struct UnknownKvFormat(pub String);

impl std::str::FromStr for KvFormat {
    type Err = UnknownKvFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(s.trim())).ok_or_else(|| UnknownKvFormat(s.into()))
    }
}

/// Borrowed keys or values in some format, as the attention kernel reads them.
#[derive(Debug, Clone, Copy)]
pub enum KvSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    /// Codes and their scales (one per [`QBLOCK`] dimensions of a row).
    Q8_0 {
        q: &'a [i8],
        d: &'a [f16],
    },
}

impl<'a> From<&'a [f32]> for KvSlice<'a> {
    fn from(x: &'a [f32]) -> Self {
        KvSlice::F32(x)
    }
}

impl<'a> From<&'a Vec<f32>> for KvSlice<'a> {
    fn from(x: &'a Vec<f32>) -> Self {
        KvSlice::F32(x)
    }
}

impl KvSlice<'_> {
    pub fn format(&self) -> KvFormat {
        match self {
            KvSlice::F32(_) => KvFormat::F32,
            KvSlice::F16(_) => KvFormat::F16,
            KvSlice::Q8_0 { .. } => KvFormat::Q8_0,
        }
    }

    /// Whether it holds `rows` rows of `head_dim` values (and their scales).
    pub fn holds(&self, rows: usize, head_dim: usize) -> bool {
        let n = rows * head_dim;
        match self {
            KvSlice::F32(x) => x.len() >= n,
            KvSlice::F16(x) => x.len() >= n,
            KvSlice::Q8_0 { q, d } => q.len() >= n && d.len() >= rows * head_dim.div_ceil(QBLOCK),
        }
    }
}

/// Owned keys or values of one layer in some format (see the module's layouts).
#[derive(Debug, Clone, PartialEq)]
pub enum KvBuf {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Q8_0 { q: Vec<i8>, d: Vec<f16> },
}

/// A zeroed vector, or the allocator's refusal (never an abort).
fn try_zeroed<T: Copy>(n: usize, zero: T) -> Result<Vec<T>, TryReserveError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)?;
    v.resize(n, zero);
    Ok(v)
}

impl KvBuf {
    /// `heads x slots` zero rows of `head_dim` values.
    pub fn zeros(format: KvFormat, heads: usize, slots: usize, head_dim: usize) -> Result<Self, TryReserveError> {
        let n = heads * slots * head_dim;
        Ok(match format {
            KvFormat::F32 => KvBuf::F32(try_zeroed(n, 0.0)?),
            KvFormat::F16 => KvBuf::F16(try_zeroed(n, f16::ZERO)?),
            KvFormat::Q8_0 => KvBuf::Q8_0 {
                q: try_zeroed(n, 0)?,
                d: try_zeroed(heads * slots * head_dim.div_ceil(QBLOCK), f16::ZERO)?,
            },
        })
    }

    pub fn format(&self) -> KvFormat {
        self.view().format()
    }

    pub fn view(&self) -> KvSlice<'_> {
        match self {
            KvBuf::F32(x) => KvSlice::F32(x),
            KvBuf::F16(x) => KvSlice::F16(x),
            KvBuf::Q8_0 { q, d } => KvSlice::Q8_0 { q, d },
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            KvBuf::F32(x) => 4 * x.len(),
            KvBuf::F16(x) => 2 * x.len(),
            KvBuf::Q8_0 { q, d } => q.len() + 2 * d.len(),
        }
    }

    /// Stores the key of head `g`, slot `s` (`key.len()` = head size) in a blocked key buffer of
    /// `slots` slots per head, rounded (f16) or quantized (q8_0) as the format does.
    pub fn write_key(&mut self, slots: usize, g: usize, s: usize, key: &[f32]) {
        let d = key.len();
        match self {
            KvBuf::F32(buf) => crate::attention::write_key(buf, slots, g, s, key),
            KvBuf::F16(buf) => {
                let base = key_index(slots, d, g, s, 0);
                for (i, &x) in key.iter().enumerate() {
                    buf[base + i * KEY_BLOCK] = f16::from_f32(x);
                }
            }
            KvBuf::Q8_0 { q, d: scales } => {
                let (base, nb) = (key_index(slots, d, g, s, 0), d.div_ceil(QBLOCK));
                let mut codes = [0i8; QBLOCK];
                for j in 0..nb {
                    let x = &key[j * QBLOCK..((j + 1) * QBLOCK).min(d)];
                    scales[key_index(slots, nb, g, s, j)] = quantize_q8_0(x, &mut codes);
                    for (i, &c) in codes[..x.len()].iter().enumerate() {
                        q[base + (j * QBLOCK + i) * KEY_BLOCK] = c;
                    }
                }
            }
        }
    }

    /// Reads back (dequantized) the key of head `g`, slot `s` from a blocked key buffer.
    pub fn read_key(&self, slots: usize, g: usize, s: usize, key: &mut [f32]) {
        let d = key.len();
        match self {
            KvBuf::F32(buf) => crate::attention::read_key(buf, slots, g, s, key),
            KvBuf::F16(buf) => {
                let base = key_index(slots, d, g, s, 0);
                for (i, x) in key.iter_mut().enumerate() {
                    *x = buf[base + i * KEY_BLOCK].to_f32();
                }
            }
            KvBuf::Q8_0 { q, d: scales } => {
                let (base, nb) = (key_index(slots, d, g, s, 0), d.div_ceil(QBLOCK));
                for (i, x) in key.iter_mut().enumerate() {
                    let scale = scales[key_index(slots, nb, g, s, i / QBLOCK)].to_f32();
                    *x = q[base + i * KEY_BLOCK] as f32 * scale;
                }
            }
        }
    }

    /// Stores the value of head `g`, slot `s` in a value buffer (rows) of `slots` slots per head.
    pub fn write_value(&mut self, slots: usize, g: usize, s: usize, value: &[f32]) {
        let d = value.len();
        let row = g * slots + s;
        match self {
            KvBuf::F32(buf) => buf[row * d..][..d].copy_from_slice(value),
            KvBuf::F16(buf) => buf[row * d..][..d].iter_mut().zip(value).for_each(|(o, &x)| *o = f16::from_f32(x)),
            KvBuf::Q8_0 { q, d: scales } => {
                let nb = d.div_ceil(QBLOCK);
                let codes = &mut q[row * d..][..d];
                for (j, (x, c)) in value.chunks(QBLOCK).zip(codes.chunks_mut(QBLOCK)).enumerate() {
                    scales[row * nb + j] = quantize_q8_0(x, c);
                }
            }
        }
    }

    /// Reads back (dequantized) the value of head `g`, slot `s`.
    pub fn read_value(&self, slots: usize, g: usize, s: usize, value: &mut [f32]) {
        let d = value.len();
        let row = g * slots + s;
        match self {
            KvBuf::F32(buf) => value.copy_from_slice(&buf[row * d..][..d]),
            KvBuf::F16(buf) => value.iter_mut().zip(&buf[row * d..][..d]).for_each(|(o, x)| *o = x.to_f32()),
            KvBuf::Q8_0 { q, d: scales } => {
                let nb = d.div_ceil(QBLOCK);
                for (i, x) in value.iter_mut().enumerate() {
                    *x = q[row * d + i] as f32 * scales[row * nb + i / QBLOCK].to_f32();
                }
            }
        }
    }

    /// The same rows with `new >= old` slots per head (the added ones zero). Both layouts keep a
    /// head's rows (and scales) contiguous, so each head moves in one copy per part.
    pub fn grown(&self, heads: usize, old: usize, new: usize, head_dim: usize) -> Result<Self, TryReserveError> {
        let nb = head_dim.div_ceil(QBLOCK);
        Ok(match self {
            KvBuf::F32(x) => KvBuf::F32(grow(x, heads, old, new, head_dim, 0.0)?),
            KvBuf::F16(x) => KvBuf::F16(grow(x, heads, old, new, head_dim, f16::ZERO)?),
            KvBuf::Q8_0 { q, d } => {
                KvBuf::Q8_0 { q: grow(q, heads, old, new, head_dim, 0)?, d: grow(d, heads, old, new, nb, f16::ZERO)? }
            }
        })
    }

    /// Row buffers of one format laid end to end (heads after heads): what per-head layers' one-head
    /// buffers become in a state file. `None` for no parts or mixed formats.
    pub fn concat(parts: &[KvBuf]) -> Option<Self> {
        let mut out = match parts.first()? {
            KvBuf::F32(_) => KvBuf::F32(Vec::new()),
            KvBuf::F16(_) => KvBuf::F16(Vec::new()),
            KvBuf::Q8_0 { .. } => KvBuf::Q8_0 { q: Vec::new(), d: Vec::new() },
        };
        for p in parts {
            match (&mut out, p) {
                (KvBuf::F32(o), KvBuf::F32(x)) => o.extend_from_slice(x),
                (KvBuf::F16(o), KvBuf::F16(x)) => o.extend_from_slice(x),
                (KvBuf::Q8_0 { q: oq, d: od }, KvBuf::Q8_0 { q, d }) => {
                    oq.extend_from_slice(q);
                    od.extend_from_slice(d);
                }
                _ => return None,
            }
        }
        Some(out)
    }

    /// Row buffers of `heads` heads cut into one buffer per head: the inverse of [`Self::concat`]
    /// for equal parts. `None` when the buffer does not divide evenly.
    pub fn split(&self, heads: usize) -> Option<Vec<Self>> {
        fn cut<T: Copy>(x: &[T], heads: usize) -> Option<Vec<Vec<T>>> {
            (heads > 0 && x.len().is_multiple_of(heads))
                .then(|| x.chunks(x.len() / heads.max(1)).map(<[T]>::to_vec).collect())
        }
        if heads > 0 && self.bytes() == 0 {
            return Some(vec![self.clone(); heads]);
        }
        Some(match self {
            KvBuf::F32(x) => cut(x, heads)?.into_iter().map(KvBuf::F32).collect(),
            KvBuf::F16(x) => cut(x, heads)?.into_iter().map(KvBuf::F16).collect(),
            KvBuf::Q8_0 { q, d } => {
                cut(q, heads)?.into_iter().zip(cut(d, heads)?).map(|(q, d)| KvBuf::Q8_0 { q, d }).collect()
            }
        })
    }

    /// A blocked key buffer of `slots` slots per head as rows (the values' layout), same format.
    pub fn keys_to_rows(&self, heads: usize, slots: usize, head_dim: usize) -> Result<Self, TryReserveError> {
        let nb = head_dim.div_ceil(QBLOCK);
        Ok(match self {
            KvBuf::F32(x) => KvBuf::F32(unblock(x, heads, slots, head_dim, 0.0)?),
            KvBuf::F16(x) => KvBuf::F16(unblock(x, heads, slots, head_dim, f16::ZERO)?),
            KvBuf::Q8_0 { q, d } => {
                KvBuf::Q8_0 { q: unblock(q, heads, slots, head_dim, 0)?, d: unblock(d, heads, slots, nb, f16::ZERO)? }
            }
        })
    }

    /// Keys as rows of `old` slots per head into a blocked key buffer of `new` (a multiple of
    /// [`KEY_BLOCK`], at least `old`) slots per head, same format: the inverse of
    /// [`Self::keys_to_rows`].
    pub fn rows_to_keys(&self, heads: usize, old: usize, new: usize, head_dim: usize) -> Result<Self, TryReserveError> {
        let nb = head_dim.div_ceil(QBLOCK);
        Ok(match self {
            KvBuf::F32(x) => KvBuf::F32(block(x, heads, old, new, head_dim, 0.0)?),
            KvBuf::F16(x) => KvBuf::F16(block(x, heads, old, new, head_dim, f16::ZERO)?),
            KvBuf::Q8_0 { q, d } => {
                KvBuf::Q8_0 { q: block(q, heads, old, new, head_dim, 0)?, d: block(d, heads, old, new, nb, f16::ZERO)? }
            }
        })
    }

    /// Every value as f32 (dequantized), in the buffer's own order.
    pub fn to_f32(&self, head_dim: usize) -> Vec<f32> {
        match self {
            KvBuf::F32(x) => x.clone(),
            KvBuf::F16(x) => x.iter().map(|v| v.to_f32()).collect(),
            // Row layout: value i of a row uses scale i / QBLOCK of that row.
            KvBuf::Q8_0 { q, d } => {
                let nb = head_dim.div_ceil(QBLOCK);
                q.iter()
                    .enumerate()
                    .map(|(i, &c)| c as f32 * d[i / head_dim * nb + i % head_dim / QBLOCK].to_f32())
                    .collect()
            }
        }
    }
}

/// Quantizes up to [`QBLOCK`] values as GGUF's `quantize_row_q8_0_ref` does (codes from the f32
/// scale, the scale stored as f16), returning the scale.
pub fn quantize_q8_0(x: &[f32], codes: &mut [i8]) -> f16 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (c, v) in codes.iter_mut().zip(x) {
        *c = (v * id).round() as i8;
    }
    f16::from_f32(d)
}

fn grow<T: Copy>(x: &[T], heads: usize, old: usize, new: usize, w: usize, zero: T) -> Result<Vec<T>, TryReserveError> {
    let mut out = try_zeroed(heads * new * w, zero)?;
    for g in 0..heads {
        out[g * new * w..][..old * w].copy_from_slice(&x[g * old * w..][..old * w]);
    }
    Ok(out)
}

fn unblock<T: Copy>(x: &[T], heads: usize, slots: usize, w: usize, zero: T) -> Result<Vec<T>, TryReserveError> {
    let mut out = try_zeroed(heads * slots * w, zero)?;
    for g in 0..heads {
        for s in 0..slots {
            for i in 0..w {
                out[(g * slots + s) * w + i] = x[key_index(slots, w, g, s, i)];
            }
        }
    }
    Ok(out)
}

fn block<T: Copy>(x: &[T], heads: usize, old: usize, new: usize, w: usize, zero: T) -> Result<Vec<T>, TryReserveError> {
    let mut out = try_zeroed(heads * new * w, zero)?;
    for g in 0..heads {
        for s in 0..old {
            for i in 0..w {
                out[key_index(new, w, g, s, i)] = x[(g * old + s) * w + i];
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        for f in KvFormat::ALL {
            assert_eq!(f.to_string().parse::<KvFormat>().unwrap(), f);
            assert_eq!(serde_json::to_string(&f).unwrap(), format!("\"{f}\""));
        }
        assert_eq!("Q8_0".parse::<KvFormat>().unwrap(), KvFormat::Q8_0);
        let e = "q4".parse::<KvFormat>().unwrap_err().to_string();
        assert!(e.contains("\"q4\"") && e.contains("f32, f16 or q8_0"), "{e}");
        // SmolLM2's head size: 256, 128 and 68 bytes a row.
        assert_eq!([KvFormat::F32, KvFormat::F16, KvFormat::Q8_0].map(|f| f.row_bytes(64)), [256, 128, 68]);
        assert_eq!(KvFormat::Q8_0.row_bytes(17), 19);
    }

    #[test]
    fn q8_0_matches_ggufs_block_quantizer() {
        let x: Vec<f32> = (0..32).map(|i| ((i * 37 % 19) as f32 - 9.3) * 0.071).collect();
        let mut codes = [0i8; 32];
        let d = quantize_q8_0(&x, &mut codes);
        let mut block = [0u8; 34];
        crate::format::quantize_block(crate::Format::Q8_0, &x, &mut block).unwrap();
        assert_eq!(d.to_bits().to_le_bytes(), [block[0], block[1]]);
        assert_eq!(codes.map(|c| c as u8), block[2..34]);
        assert_eq!(quantize_q8_0(&[0.0; 5], &mut codes[..5]), f16::ZERO);
    }

    #[test]
    fn keys_and_values_round_trip_through_every_layout() {
        let (heads, slots, d) = (3, 32, 40);
        let row = |g: usize, s: usize| -> Vec<f32> {
            (0..d).map(|i| ((g * 131 + s * 17 + i * 7) % 23) as f32 * 0.37 - 4.0).collect()
        };
        for f in KvFormat::ALL {
            let mut k = KvBuf::zeros(f, heads, slots, d).unwrap();
            let mut v = KvBuf::zeros(f, heads, slots, d).unwrap();
            assert_eq!(k.bytes(), heads * slots * f.row_bytes(d));
            for g in 0..heads {
                for s in [0, 5, 16, 31] {
                    k.write_key(slots, g, s, &row(g, s));
                    v.write_value(slots, g, s, &row(g, s));
                }
            }
            let rows = k.keys_to_rows(heads, slots, d).unwrap();
            let grown_k = rows.rows_to_keys(heads, slots, 48, d).unwrap();
            let grown_v = v.grown(heads, slots, 48, d).unwrap();
            assert_eq!(rows.to_f32(d), {
                let mut all = vec![0f32; heads * slots * d];
                for g in 0..heads {
                    for s in 0..slots {
                        k.read_key(slots, g, s, &mut all[(g * slots + s) * d..][..d]);
                    }
                }
                all
            });
            let (mut a, mut b) = (vec![0f32; d], vec![0f32; d]);
            for g in 0..heads {
                for s in [0, 5, 16, 31] {
                    let want = row(g, s);
                    k.read_key(slots, g, s, &mut a);
                    grown_k.read_key(48, g, s, &mut b);
                    assert_eq!(a, b);
                    v.read_value(slots, g, s, &mut a);
                    grown_v.read_value(48, g, s, &mut b);
                    assert_eq!(a, b);
                    let tol = match f {
                        KvFormat::F32 => 0.0,
                        KvFormat::F16 => 4.0 / 2048.0,
                        KvFormat::Q8_0 => 4.0 / 127.0,
                    };
                    for (x, y) in a.iter().zip(&want) {
                        assert!((x - y).abs() <= tol, "{f}: {x} vs {y}");
                    }
                }
                grown_k.read_key(48, g, 40, &mut b);
                assert!(b.iter().all(|&x| x == 0.0));
            }
        }
    }

    #[test]
    fn concat_and_split_are_inverse() {
        let d = 40; // two q8_0 blocks, the second ragged
        for format in [KvFormat::F32, KvFormat::F16, KvFormat::Q8_0] {
            let parts: Vec<KvBuf> = (0..3)
                .map(|h| {
                    let mut b = KvBuf::zeros(format, 1, 4, d).unwrap();
                    for s in 0..4 {
                        let row: Vec<f32> = (0..d).map(|i| (h * 100 + s * 10 + i) as f32 * 0.01).collect();
                        b.write_value(4, 0, s, &row);
                    }
                    b
                })
                .collect();
            let all = KvBuf::concat(&parts).unwrap();
            assert_eq!(all.bytes(), 3 * parts[0].bytes());
            let mut row = vec![0f32; d];
            all.read_value(4, 2, 3, &mut row);
            let mut want = vec![0f32; d];
            parts[2].read_value(4, 0, 3, &mut want);
            assert_eq!(row, want, "{format}: head 2's rows follow heads 0 and 1");
            assert_eq!(all.split(3).unwrap(), parts, "{format}");
            assert!(all.split(7).is_none(), "{format}: 480 values do not split over 7 heads");
        }
        assert!(KvBuf::concat(&[]).is_none());
        assert!(KvBuf::concat(&[KvBuf::F32(vec![1.0]), KvBuf::F16(vec![f16::ONE])]).is_none());
    }
}
