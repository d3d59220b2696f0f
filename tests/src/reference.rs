//! The naive f64 pieces the tiny models' reference forwards are written with: no state, no
//! batching, no candle, plain loops over positions. Every family's adapter is checked against a
//! reference assembled from these.

use crate::weights::W;

/// RMS normalisation of `v`, times the weight `w`.
pub fn rms(v: &[f64], w: &W, eps: f64) -> Vec<f64> {
    let ms = v.iter().map(|a| a * a).sum::<f64>() / v.len() as f64;
    let s = 1.0 / (ms + eps).sqrt();
    v.iter().zip(&w.data).map(|(a, &g)| a * s * g as f64).collect()
}

/// `w v` for a `[rows, cols]` matrix.
pub fn matvec(w: &W, v: &[f64]) -> Vec<f64> {
    (0..w.shape[0]).map(|r| w.row(r).iter().zip(v).map(|(&a, b)| a as f64 * b).sum()).collect()
}

/// `x += y`.
pub fn add(x: &mut [f64], y: &[f64]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

pub fn silu(a: f64) -> f64 {
    a / (1.0 + (-a).exp())
}

/// GELU, tanh approximation.
pub fn gelu_tanh(a: f64) -> f64 {
    0.5 * a * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (a + 0.044715 * a * a * a)).tanh())
}

/// A gated feed-forward: `down(act(gate x) * up x)`.
pub fn gated_mlp(gate: &W, up: &W, down: &W, x: &[f64], act: fn(f64) -> f64) -> Vec<f64> {
    let h: Vec<f64> = matvec(gate, x).into_iter().zip(matvec(up, x)).map(|(g, u)| act(g) * u).collect();
    matvec(down, &h)
}

/// Rotates one head at `pos`, half-split layout (Hugging Face): dims i and i + d/2 turn together.
pub fn rope(v: &mut [f64], pos: usize, theta: f64) {
    let d = v.len();
    for i in 0..d / 2 {
        let a = pos as f64 / theta.powf(2.0 * i as f64 / d as f64);
        let (x1, x2) = (v[i], v[i + d / 2]);
        v[i] = x1 * a.cos() - x2 * a.sin();
        v[i + d / 2] = x2 * a.cos() + x1 * a.sin();
    }
}

/// Softmax attention of one query position (all `heads`, `[heads * d]`) over the given keys and
/// values (`[kv_heads * d]` each), query head `h` reading KV head `h / group` (repeat_kv), scores
/// scaled by `1/sqrt(d)`.
pub fn attention(q: &[f64], ks: &[Vec<f64>], vs: &[Vec<f64>], heads: usize, group: usize, d: usize) -> Vec<f64> {
    let mut att = vec![0f64; heads * d];
    for hh in 0..heads {
        let kv = hh / group;
        let q = &q[hh * d..(hh + 1) * d];
        let scores: Vec<f64> = ks
            .iter()
            .map(|k| q.iter().zip(&k[kv * d..(kv + 1) * d]).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt())
            .collect();
        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for (j, w) in e.iter().enumerate() {
            for k in 0..d {
                att[hh * d + k] += w / z * vs[j][kv * d + k];
            }
        }
    }
    att
}

/// One causal self-attention layer over a whole sequence: projections, optional per-head RMS norms
/// of queries and keys (Gemma), half-split RoPE at positions 0.., attention over every earlier
/// position (or the last `window`), output projection.
pub struct SelfAttention<'a> {
    pub q: &'a W,
    pub k: &'a W,
    pub v: &'a W,
    pub o: &'a W,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub theta: f64,
    /// Keys a query sees, itself included (`None`: all).
    pub window: Option<usize>,
    /// Per-head norms of queries and keys, and their epsilon.
    pub qk_norms: Option<(&'a W, &'a W, f64)>,
}

impl SelfAttention<'_> {
    /// Inputs (already normed) per position -> outputs per position.
    pub fn forward(&self, hs: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let d = self.head_dim;
        let heads = |w: &W, n: usize, norm: Option<&W>| -> Vec<Vec<f64>> {
            hs.iter()
                .enumerate()
                .map(|(p, h)| {
                    let mut y = matvec(w, h);
                    for head in y.chunks_mut(d).take(n) {
                        if let (Some(g), Some((_, _, eps))) = (norm, self.qk_norms) {
                            let normed = rms(head, g, eps);
                            head.copy_from_slice(&normed);
                        }
                        rope(head, p, self.theta);
                    }
                    y
                })
                .collect()
        };
        let qs = heads(self.q, self.heads, self.qk_norms.map(|n| n.0));
        let ks = heads(self.k, self.kv_heads, self.qk_norms.map(|n| n.1));
        let vs: Vec<Vec<f64>> = hs.iter().map(|h| matvec(self.v, h)).collect();
        let group = self.heads / self.kv_heads;
        (0..hs.len())
            .map(|p| {
                let first = self.window.map_or(0, |w| (p + 1).saturating_sub(w));
                let att = attention(&qs[p], &ks[first..=p], &vs[first..=p], self.heads, group, d);
                matvec(self.o, &att)
            })
            .collect()
    }
}

/// Logits in f32, as the adapters return them.
pub fn to_f32(rows: Vec<Vec<f64>>) -> Vec<Vec<f32>> {
    rows.into_iter().map(|r| r.into_iter().map(|x| x as f32).collect()).collect()
}
