//! Cost of one decode step of one layer at SmolLM2's sizes (9 query heads, 3 KV heads, head size
//! 64) with a full state of C = 512: `attend` end to end per policy, and each policy's `step`
//! alone on a realistic observation. Run: `cargo bench -p msrnn-policies --bench step`.

use candle_core::{DType, Device, Tensor};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use msrnn_core::{attend, Capacity, Context, LayerState, Observation, PolicySpec};

const HEADS: usize = 9;
const KV: usize = 3;
const HD: usize = 64;
const C: usize = 512;

fn policies() -> Vec<&'static str> {
    vec!["window", "window+i", "h2o", "tova", "random"]
}

fn attend_step(c: &mut Criterion) {
    let dev = Device::Cpu;
    let reg = msrnn_policies::registry();
    let mut g = c.benchmark_group("attend_step_c512");
    for name in policies() {
        let ctx =
            Context { layer: 0, num_layers: 1, num_heads: HEADS, num_kv_heads: KV, head_dim: HD, capacity: Some(C) };
        let mut pol = reg.create(&name.parse::<PolicySpec>().unwrap(), &ctx).unwrap();
        let mut layer = LayerState::new(KV, HD, DType::F32, &dev, Capacity::Bounded(C), None, 1).unwrap();
        // Fill the state past C so every measured step evicts.
        let k = Tensor::randn(0f32, 1., (KV, C + 8, HD), &dev).unwrap();
        let q = Tensor::randn(0f32, 1., (HEADS, C + 8, HD), &dev).unwrap();
        let pos: Vec<u64> = (0..(C + 8) as u64).collect();
        attend(&q, &k, &k, &pos, &mut layer, pol.as_mut(), 0.125).unwrap();
        let q1 = Tensor::randn(0f32, 1., (HEADS, 1, HD), &dev).unwrap();
        let k1 = Tensor::randn(0f32, 1., (KV, 1, HD), &dev).unwrap();
        let mut p = (C + 8) as u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                let o = attend(&q1, &k1, &k1, &[p], &mut layer, pol.as_mut(), 0.125).unwrap();
                p += 1;
                black_box(o)
            })
        });
    }
    g.finish();
}

fn compress_only(c: &mut Criterion) {
    let reg = msrnn_policies::registry();
    let n = C + 1;
    let positions: Vec<u64> = (0..n as u64).collect();
    let live = vec![true; n];
    let probs: Vec<f32> = (0..HEADS * n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 / n as f32).collect();
    let new_slots = [n - 1];
    let mut g = c.benchmark_group("compress_c512");
    for name in policies() {
        let ctx =
            Context { layer: 0, num_layers: 1, num_heads: HEADS, num_kv_heads: KV, head_dim: HD, capacity: Some(C) };
        let mut pol = reg.create(&name.parse::<PolicySpec>().unwrap(), &ctx).unwrap();
        let obs = Observation {
            layer: 0,
            tokens_seen: n as u64,
            num_slots: n,
            positions: &positions,
            live: &live,
            new_slots: &new_slots,
            num_heads: HEADS,
            num_kv_heads: KV,
            head_dim: HD,
            rows: 1,
            probs: &probs,
            key_norms: &[],
            keys: &[],
            head_capacity: 0,
        };
        g.bench_function(name, |b| b.iter(|| black_box(pol.step(black_box(&obs), C).unwrap())));
    }
    g.finish();
}

criterion_group!(benches, attend_step, compress_only);
criterion_main!(benches);
