//! `attend` against a naive reference: keep the cache as a plain list, concatenate, repeat K/V for
//! every query head, softmax with an explicit causal mask, and apply the same evictions by position.

use candle_core::{DType, Device, Tensor};
use msrnn_core::policy::Result;
use msrnn_core::{
    attend, Capacity, Decision, LayerState, Needs, Observation, Policy, Positions, RopeSpec, RopeStyle, Rows,
};

/// Deterministic pseudo-random numbers so failures reproduce.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// Evicts pseudo-random live slots and records the evicted positions, so the reference can
/// replay them. Also records every probability row it saw.
struct Recorder {
    rng: u64,
    evicted: Vec<Vec<u64>>,
    last_rows: Vec<(Vec<u64>, Vec<f32>)>,
}

impl Policy for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn needs(&self) -> Needs {
        Needs { rows: Rows::Last, every_step: true, ..Needs::default() }
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        let mut live: Vec<usize> = obs.live_slots().collect();
        // probabilities over live slots, by position
        let mut by_pos: Vec<(u64, usize)> = live.iter().map(|&s| (obs.positions[s], s)).collect();
        by_pos.sort();
        let n = obs.num_slots;
        let mut rows = Vec::new();
        for h in 0..obs.num_heads {
            for &(_, s) in &by_pos {
                rows.push(obs.probs[h * n + s]);
            }
        }
        self.last_rows.push((by_pos.iter().map(|x| x.0).collect(), rows));
        let k = live.len().saturating_sub(budget);
        let mut out = Vec::new();
        for _ in 0..k {
            self.rng = self.rng.wrapping_mul(6364136223846793005).wrapping_add(1);
            let i = (self.rng >> 33) as usize % live.len();
            out.push(live.swap_remove(i));
        }
        self.evicted.push(out.iter().map(|&s| obs.positions[s]).collect());
        Ok(if out.is_empty() { Decision::Keep } else { Decision::Evict(out) })
    }
}

struct Entry {
    pos: u64,
    k: Vec<f32>, // [kv_heads * hd]
    v: Vec<f32>,
}

/// Naive attention for one chunk: returns `[n_heads, t, hd]` flattened, and the last row's
/// probabilities per head over the entries sorted by position.
/// Rotates `x` (one head of `x.len()` values) by `at` positions, in f64 (the reference RoPE).
fn rotate(x: &[f32], at: u64, theta: f64, style: RopeStyle) -> Vec<f32> {
    let d = x.len();
    let mut y = x.to_vec();
    for i in 0..d / 2 {
        let a = at as f64 * theta.powf(-(2.0 * i as f64) / d as f64);
        let (c, s) = (a.cos(), a.sin());
        let (ia, ib) = match style {
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            RopeStyle::HalfSplit => (i, i + d / 2),
        };
        let (x0, x1) = (x[ia] as f64, x[ib] as f64);
        y[ia] = (x0 * c - x1 * s) as f32;
        y[ib] = (x0 * s + x1 * c) as f32;
    }
    y
}

const THETA: f64 = 500.0;

#[allow(clippy::too_many_arguments)]
fn naive(
    cache: &mut Vec<Entry>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos: &[u64],
    nh: usize,
    nkv: usize,
    hd: usize,
    window: Option<usize>,
    rope: Option<(Positions, RopeStyle)>,
) -> (Vec<f32>, Vec<f32>) {
    let t = pos.len();
    for (i, &p) in pos.iter().enumerate() {
        let mut kk = Vec::new();
        let mut vv = Vec::new();
        for h in 0..nkv {
            kk.extend_from_slice(&k[(h * t + i) * hd..(h * t + i + 1) * hd]);
            vv.extend_from_slice(&v[(h * t + i) * hd..(h * t + i + 1) * hd]);
        }
        cache.push(Entry { pos: p, k: kk, v: vv });
    }
    cache.sort_by_key(|e| e.pos);
    // Where each entry and each query sits: its position, or its rank among the live entries.
    let at = |p: u64| match rope {
        Some((Positions::Cache, _)) => cache.iter().position(|e| e.pos == p).unwrap() as u64,
        _ => p,
    };
    let rot = |x: &[f32], p: u64| match rope {
        Some((_, style)) => rotate(x, at(p), THETA, style),
        None => x.to_vec(),
    };
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; nh * t * hd];
    let mut last = Vec::new();
    for h in 0..nh {
        let kvh = h / group; // "repeat_kv": head h reads kv head h / group
        for (i, &p) in pos.iter().enumerate() {
            let qv = &rot(&q[(h * t + i) * hd..(h * t + i + 1) * hd], p)[..];
            let logits: Vec<f32> = cache
                .iter()
                .map(|e| {
                    let vis = e.pos <= p && window.is_none_or(|w| p - e.pos < w as u64);
                    if !vis {
                        return f32::NEG_INFINITY;
                    }
                    qv.iter().zip(&rot(&e.k[kvh * hd..(kvh + 1) * hd], e.pos)).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let ex: Vec<f32> = logits.iter().map(|l| (l - m).exp()).collect();
            let z: f32 = ex.iter().sum();
            let p: Vec<f32> = ex.iter().map(|e| e / z).collect();
            for (e, &w) in cache.iter().zip(&p) {
                for d in 0..hd {
                    out[(h * t + i) * hd + d] += w * e.v[kvh * hd + d];
                }
            }
            if i == t - 1 {
                last.extend(p);
            }
        }
    }
    (out, last)
}

/// How the layer is built: with a rotary embedding in a position mode, and on host buffers (the
/// fused kernel) or candle tensors (the path of other devices).
#[derive(Debug, Clone, Copy)]
struct Variant {
    rope: Option<(Positions, RopeStyle)>,
    tensors: bool,
}

fn variants() -> Vec<Variant> {
    let mut v = Vec::new();
    for tensors in [false, true] {
        v.push(Variant { rope: None, tensors });
        v.push(Variant { rope: Some((Positions::Absolute, RopeStyle::Interleaved)), tensors });
        v.push(Variant { rope: Some((Positions::Cache, RopeStyle::HalfSplit)), tensors });
        v.push(Variant { rope: Some((Positions::Cache, RopeStyle::Interleaved)), tensors });
    }
    v
}

fn run_case(seed: u64, nh: usize, nkv: usize, hd: usize, cap: Capacity, chunks: &[usize], window: Option<usize>) {
    for variant in variants() {
        run_variant(seed, nh, nkv, hd, cap, chunks, window, variant);
    }
}

#[allow(clippy::too_many_arguments)]
fn run_variant(
    seed: u64,
    nh: usize,
    nkv: usize,
    hd: usize,
    cap: Capacity,
    chunks: &[usize],
    window: Option<usize>,
    variant: Variant,
) {
    let dev = Device::Cpu;
    let mut rng = Lcg(seed);
    let mut layer = LayerState::new(nkv, hd, DType::F32, &dev, cap, window, 1).unwrap();
    if let Some((mode, style)) = variant.rope {
        layer = layer.with_rope(RopeSpec { theta: THETA, style }, mode).unwrap();
    }
    if variant.tensors {
        layer = layer.with_tensor_buffers().unwrap();
    }
    let tol = if variant.rope.is_some() { 1e-4 } else { 1e-5 };
    let mut pol = Recorder { rng: seed, evicted: vec![], last_rows: vec![] };
    let mut cache: Vec<Entry> = Vec::new();
    let mut next = 0u64;
    for (step, &t) in chunks.iter().enumerate() {
        let q = rng.vec(nh * t * hd);
        let k = rng.vec(nkv * t * hd);
        let v = rng.vec(nkv * t * hd);
        let pos: Vec<u64> = (next..next + t as u64).collect();
        next += t as u64;
        let qt = Tensor::from_vec(q.clone(), (nh, t, hd), &dev).unwrap();
        let kt = Tensor::from_vec(k.clone(), (nkv, t, hd), &dev).unwrap();
        let vt = Tensor::from_vec(v.clone(), (nkv, t, hd), &dev).unwrap();
        let got = attend(&qt, &kt, &vt, &pos, &mut layer, &mut pol, 1.0 / (hd as f64).sqrt()).unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (want, want_last) = naive(&mut cache, &q, &k, &v, &pos, nh, nkv, hd, window, variant.rope);
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < tol, "{variant:?} seed {seed} step {step}: max abs err {err}");
        // The policy saw exactly the reference's probabilities over the live entries.
        let (seen_pos, seen_rows) = pol.last_rows.last().unwrap();
        // Window-dropped entries are gone before the policy looks; compare over what it saw.
        let ref_pos: Vec<u64> = cache.iter().map(|e| e.pos).collect();
        let n = ref_pos.len();
        for (j, p) in seen_pos.iter().enumerate() {
            let r = ref_pos.iter().position(|x| x == p).expect("policy saw a position the reference lacks");
            for h in 0..nh {
                let d = (seen_rows[h * seen_pos.len() + j] - want_last[h * n + r]).abs();
                assert!(d < tol, "{variant:?} seed {seed} step {step}: prob mismatch {d}");
            }
        }
        // Replay the model window and the evictions on the reference.
        if let Some(w) = window {
            cache.retain(|e| next - e.pos < w as u64);
        }
        let ev = pol.evicted.last().unwrap();
        cache.retain(|e| !ev.contains(&e.pos));
        assert_eq!(layer.live_positions(), cache.iter().map(|e| e.pos).collect::<Vec<_>>());
        if let Some(c) = cap.get() {
            assert!(layer.live_count() <= c);
        }
    }
}

#[test]
fn decode_steps_match_the_naive_reference_with_gqa() {
    for seed in 0..8 {
        run_case(seed, 6, 2, 8, Capacity::Bounded(5), &[1; 24], None);
    }
}

#[test]
fn chunks_match_the_naive_reference_with_causal_mask() {
    for seed in 0..8 {
        run_case(100 + seed, 4, 1, 4, Capacity::Bounded(6), &[5, 1, 3, 7, 1, 1, 2, 9, 1], None);
        run_case(200 + seed, 3, 3, 4, Capacity::Bounded(3), &[4, 2, 1, 6], None);
    }
}

#[test]
fn unbounded_state_grows_and_matches_the_reference() {
    // 300 tokens force the unbounded buffer (256 slots) to grow once.
    run_case(7, 4, 2, 4, Capacity::Unbounded, &[100, 1, 150, 1, 48], None);
}

#[test]
fn model_window_masks_and_drops_old_keys() {
    for seed in 0..4 {
        run_case(300 + seed, 4, 1, 4, Capacity::Bounded(6), &[1, 1, 5, 1, 1, 8, 1, 1, 1], Some(4));
        run_case(400 + seed, 2, 1, 4, Capacity::Unbounded, &[3, 1, 6, 2, 1, 1], Some(3));
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let dev = Device::Cpu;
    let mut layer = LayerState::new(2, 4, DType::F32, &dev, Capacity::Bounded(4), None, 1).unwrap();
    let mut pol = Recorder { rng: 0, evicted: vec![], last_rows: vec![] };
    let q = Tensor::zeros((3, 1, 4), DType::F32, &dev).unwrap(); // 3 heads cannot share 2 kv heads
    let k = Tensor::zeros((2, 1, 4), DType::F32, &dev).unwrap();
    let e = attend(&q, &k, &k, &[0], &mut layer, &mut pol, 0.5).unwrap_err();
    assert!(e.to_string().contains("cannot share"), "{e}");
    let q = Tensor::zeros((4, 1, 4), DType::F32, &dev).unwrap();
    let e = attend(&q, &k, &k, &[0, 1], &mut layer, &mut pol, 0.5).unwrap_err();
    assert!(e.to_string().contains("positions"), "{e}");
    assert_eq!(layer.live_count(), 0);
}

/// A policy that answers with a bad decision leaves the state's live set as it was after the write.
#[test]
fn invalid_decisions_are_rejected_and_nothing_is_evicted() {
    struct Liar(Decision);
    impl Policy for Liar {
        fn name(&self) -> &str {
            "liar"
        }
        fn needs(&self) -> Needs {
            Needs::default()
        }
        fn step(&mut self, _: &Observation<'_>, _: usize) -> Result<Decision> {
            Ok(self.0.clone())
        }
    }
    let dev = Device::Cpu;
    for (d, needle) in [
        (Decision::Keep, "exactly 1"),
        (Decision::Evict(vec![0, 1]), "exactly 1"),
        (Decision::Evict(vec![17]), "out of range"),
    ] {
        let mut layer = LayerState::new(1, 2, DType::F32, &dev, Capacity::Bounded(2), None, 1).unwrap();
        let mut ok = Liar(Decision::Keep);
        let x = Tensor::ones((1, 2, 2), DType::F32, &dev).unwrap();
        attend(&x, &x, &x, &[0, 1], &mut layer, &mut ok, 1.0).unwrap();
        let x1 = Tensor::ones((1, 1, 2), DType::F32, &dev).unwrap();
        let e = attend(&x1, &x1, &x1, &[2], &mut layer, &mut Liar(d), 1.0).unwrap_err().to_string();
        assert!(e.contains("liar") && e.contains(needle), "{e}");
        assert_eq!(layer.live_positions(), vec![0, 1, 2]);
    }
}
