//! Where tokens sit for rotary position embeddings, and the rotation itself.
//!
//! A finite MSRNN should run forever, but a model knows only the positions it was trained on. Two
//! modes, chosen per state:
//! - [`Positions::Absolute`]: every key is rotated at its position in the stream before it is
//!   cached (what the plain transformer does); past the trained context, positions run out.
//! - [`Positions::Cache`]: keys are cached unrotated and rotated at attention time by their rank
//!   among the live tokens (0 for the oldest kept), each query by its own token's rank, as
//!   StreamingLLM does (Xiao et al. 2024): relative distances stay below the capacity however
//!   long the stream runs.
//!
//! The state owns the rotation because only it knows the ranks; adapters declare each layer's
//! [`RopeSpec`] in `ModelInfo` and hand the state unrotated queries and keys.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use msrnn_kernels::rope::RopeStyle;

/// How queries and keys are placed for rotary embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// At their position in the stream (the plain transformer).
    #[default]
    Absolute,
    /// At their rank among the tokens the layer keeps (StreamingLLM).
    Cache,
}

impl std::fmt::Display for Positions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Positions::Absolute => "absolute",
            Positions::Cache => "cache",
        })
    }
}

impl std::str::FromStr for Positions {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "absolute" | "abs" => Ok(Positions::Absolute),
            "cache" | "rank" => Ok(Positions::Cache),
            other => Err(crate::Error::Input(format!("unknown position mode `{other}` (expected absolute or cache)"))),
        }
    }
}

/// One layer's rotary embedding: base frequency and how head dimensions pair up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RopeSpec {
    pub theta: f64,
    #[serde(with = "style_str")]
    pub style: RopeStyle,
}

mod style_str {
    use super::RopeStyle;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(s: &RopeStyle, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(match s {
            RopeStyle::Interleaved => "interleaved",
            RopeStyle::HalfSplit => "half-split",
        })
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RopeStyle, D::Error> {
        match String::deserialize(d)?.as_str() {
            "interleaved" => Ok(RopeStyle::Interleaved),
            "half-split" => Ok(RopeStyle::HalfSplit),
            other => Err(serde::de::Error::custom(format!("unknown rope style {other}"))),
        }
    }
}

/// Cosines and sines for a head of `head_dim` values.
///
/// Precision follows the reference implementations (Hugging Face, candle): inverse frequencies in
/// f32, the angle `position * inv_freq` rounded once to f32, cosine and sine in f32. Forming the
/// product exactly in f64 and rounding once equals their f32 product for every position below 2^24,
/// so logits match candle's models bit for bit; from 2^24 on, where an f32 angle is off by
/// radians, the angle stays in f64 so very long absolute streams keep meaningful positions.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    style: RopeStyle,
    /// Cache mode's table of ranks, shared with every layer and state of the same frequencies.
    table: Option<Arc<Table>>,
}

/// Rows `0..rows` of cos/sin, `head_dim / 2` each: the angles of cache mode's ranks.
#[derive(Debug)]
struct Table {
    inv_freq: Vec<f32>,
    rows: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// The tables in use, one per set of frequencies: one copy for all layers and sequences, so that a step reads its
/// angles from cache (a table per layer, times every layer and sequence, does not stay there; docs/positions.md).
static TABLES: Mutex<Vec<Arc<Table>>> = Mutex::new(Vec::new());

/// The shared table of these frequencies with at least `rows` rows (grown to the next power of two).
fn shared_table(rope: &Rope, rows: usize) -> Arc<Table> {
    let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    let at = tables.iter().position(|t| t.inv_freq == rope.inv_freq);
    if let Some(t) = at.map(|i| &tables[i]).filter(|t| t.rows >= rows) {
        return t.clone();
    }
    let n = rows.next_power_of_two().max(64);
    let (mut cos, mut sin) = (Vec::with_capacity(n * rope.half()), Vec::with_capacity(n * rope.half()));
    for p in 0..n {
        rope.push_angles(p as u64, &mut cos, &mut sin);
    }
    let t = Arc::new(Table { inv_freq: rope.inv_freq.clone(), rows: n, cos, sin });
    match at {
        Some(i) => tables[i] = t.clone(),
        None => tables.push(t.clone()),
    }
    t
}

impl Rope {
    pub fn new(head_dim: usize, spec: RopeSpec) -> Self {
        let base = spec.theta as f32;
        let inv_freq = (0..head_dim).step_by(2).map(|i| 1f32 / base.powf(i as f32 / head_dim as f32)).collect();
        Self { inv_freq, style: spec.style, table: None }
    }

    pub fn style(&self) -> RopeStyle {
        self.style
    }

    /// `head_dim / 2`.
    pub fn half(&self) -> usize {
        self.inv_freq.len()
    }

    /// Appends the angles of `position` to `cos` and `sin`.
    pub fn push_angles(&self, position: u64, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
        const EXACT_F32: u64 = 1 << 24;
        for &f in &self.inv_freq {
            let a = position as f64 * f as f64;
            if position < EXACT_F32 {
                let a = a as f32;
                cos.push(a.cos());
                sin.push(a.sin());
            } else {
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
    }

    /// `cos`, `sin` of the given positions, `[positions.len(), head_dim / 2]` row-major.
    pub fn angles(&self, positions: &[u64]) -> (Vec<f32>, Vec<f32>) {
        let n = positions.len() * self.half();
        let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for &p in positions {
            self.push_angles(p, &mut cos, &mut sin);
        }
        (cos, sin)
    }

    /// The table of positions `0..rows` at least (cache mode's ranks), grown on demand.
    pub(crate) fn table(&mut self, rows: usize) -> (&[f32], &[f32]) {
        if self.table.as_ref().is_none_or(|t| t.rows < rows) {
            self.table = Some(shared_table(self, rows));
        }
        let t = self.table.as_ref().expect("set above");
        (&t.cos, &t.sin)
    }

    /// Rotates every head of each row of `x` (`rows` rows of `stride` values, `heads` heads of
    /// `head_dim` at the start of each) at the matching angles.
    pub fn rotate_rows(&self, x: &mut [f32], stride: usize, heads: usize, cos: &[f32], sin: &[f32]) {
        let (half, d) = (self.half(), 2 * self.half());
        for (r, row) in x.chunks_mut(stride).enumerate() {
            let (c, s) = (&cos[r * half..][..half], &sin[r * half..][..half]);
            msrnn_kernels::rope::rotate_row(&mut row[..heads * d], heads, d, c, s, self.style);
        }
    }

    /// Rotates `x` (`[heads, t, head_dim]` f32 tensor) at `t` angle rows, with candle's kernels
    /// (the path for devices other than the CPU).
    pub fn rotate_tensor(
        &self,
        x: &candle_core::Tensor,
        cos: &[f32],
        sin: &[f32],
    ) -> candle_core::Result<candle_core::Tensor> {
        let rows = cos.len() / self.half();
        let dev = x.device();
        let cos = candle_core::Tensor::from_vec(cos.to_vec(), (rows, self.half()), dev)?;
        let sin = candle_core::Tensor::from_vec(sin.to_vec(), (rows, self.half()), dev)?;
        let x = x.contiguous()?.unsqueeze(0)?;
        let y = match self.style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?,
            RopeStyle::HalfSplit => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
        };
        y.squeeze(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn host_rotation_equals_candles_bit_for_bit() {
        for style in [RopeStyle::Interleaved, RopeStyle::HalfSplit] {
            let rope = Rope::new(8, RopeSpec { theta: 10_000.0, style });
            let x: Vec<f32> = (0..3 * 2 * 8).map(|i| (i as f32 * 0.37).sin()).collect();
            let pos = [5u64, 900, 70_000];
            let (cos, sin) = rope.angles(&pos);
            let mut host = x.clone();
            rope.rotate_rows(&mut host, 16, 2, &cos, &sin);
            // candle wants [heads, t, d]
            let t = Tensor::from_vec(x, (3, 2, 8), &Device::Cpu).unwrap().transpose(0, 1).unwrap();
            let y = rope.rotate_tensor(&t, &cos, &sin).unwrap();
            let y = y.transpose(0, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(host, y, "{style:?}");
        }
    }

    #[test]
    fn rotation_is_relative_and_long_positions_stay_meaningful() {
        let rope = Rope::new(8, RopeSpec { theta: 10_000.0, style: RopeStyle::Interleaved });
        let q = [0.3f32, -1.0, 0.5, 2.0, 0.1, 0.7, -0.2, 1.1];
        let k = [1.0f32, 0.2, -0.4, 0.3, 0.9, -1.2, 0.6, 0.05];
        let dot = |m: u64, n: u64| {
            let (c, s) = rope.angles(&[m, n]);
            let (mut a, mut b) = (q.to_vec(), k.to_vec());
            rope.rotate_rows(&mut a, 8, 1, &c[..4], &s[..4]);
            rope.rotate_rows(&mut b, 8, 1, &c[4..], &s[4..]);
            a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        };
        assert!((dot(7, 3) - dot(8_004, 8_000)).abs() < 5e-3);
        let far = (1u64 << 24) + 123_456_789;
        assert!((dot(7, 3) - dot(far + 4, far)).abs() < 1e-3);
        assert!((dot(7, 3) - dot(3, 7)).abs() > 1e-3, "rotation must matter");
    }

    #[test]
    fn table_rows_are_positions() {
        let mut rope = Rope::new(4, RopeSpec { theta: 100.0, style: RopeStyle::HalfSplit });
        let (c, s) = rope.angles(&[3]);
        let (tc, ts) = rope.table(5);
        assert_eq!((&tc[6..8], &ts[6..8]), (&c[..], &s[..]));
        // Shared by every rope of the same frequencies; grown, with the same rows.
        let mut other = Rope::new(4, RopeSpec { theta: 100.0, style: RopeStyle::Interleaved });
        other.table(3);
        assert!(Arc::ptr_eq(rope.table.as_ref().unwrap(), other.table.as_ref().unwrap()));
        let (gc, gs) = other.table(1000);
        assert!(gc.len() >= 2000);
        assert_eq!((&gc[6..8], &gs[6..8]), (&c[..], &s[..]));
        let far = rope.angles(&[999]);
        assert_eq!((&gc[1998..2000], &gs[1998..2000]), (&far.0[..], &far.1[..]));
        let mut third = Rope::new(4, RopeSpec { theta: 1e6, style: RopeStyle::HalfSplit });
        third.table(3);
        assert!(!Arc::ptr_eq(third.table.as_ref().unwrap(), other.table.as_ref().unwrap()), "other frequencies");
        assert_eq!("cache".parse::<Positions>().unwrap(), Positions::Cache);
        assert!("sideways".parse::<Positions>().is_err());
    }
}
