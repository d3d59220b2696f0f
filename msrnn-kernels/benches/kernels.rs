//! The kernels beside the matrix product, one thread, per instruction-set variant: the attention step of one
//! SmolLM2-135M layer (9 query heads over 3 KV heads of 64, 1,024 slots; a decode row and a chunk of 64 rows) in
//! each KV format and with keys rotated in registers; activation quantization (`act::QActs`) of 1 and 64 rows of
//! 1,536; the block angles of 1,024 slots (`rope::block_angles`, head size 64).
//!
//! `decode-batch/...`: a batched decode step's attention over 256 sequences' own caches, the memory roofline.
//!
//! `cargo bench -p msrnn-kernels --bench kernels [-- FILTER]`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use msrnn_kernels::act::QActs;
use msrnn_kernels::attention::{self as attn, attention_with, KeyAngles, Sink, Step, KEY_BLOCK};
use msrnn_kernels::rope::{block_angles, RopeStyle};
use msrnn_kernels::{Isa, KvBuf, KvFormat};
use msrnn_tests::Rng;
use std::hint::black_box;
use std::time::Duration;

const HEADS: usize = 9;
const KV: usize = 3;
const D: usize = 64;
const SLOTS: usize = 1024;

fn config<'a>(c: &'a mut Criterion, name: &str) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    g
}

/// Keys and values of `slots` slots per KV head, the first `filled` of them random.
fn random_cache(rng: &mut Rng, format: KvFormat, slots: usize, filled: usize) -> (KvBuf, KvBuf) {
    let mut k = KvBuf::zeros(format, KV, slots, D).expect("keys");
    let mut v = KvBuf::zeros(format, KV, slots, D).expect("values");
    for h in 0..KV {
        for s in 0..filled {
            k.write_key(slots, h, s, &rng.vec(D, -2.0, 2.0));
            v.write_value(slots, h, s, &rng.vec(D, -2.0, 2.0));
        }
    }
    (k, v)
}

/// One SmolLM2-135M layer's step (9 query heads over 3 KV heads of 64, no model window) over slots `[0, hi)`.
#[allow(clippy::too_many_arguments)]
fn smollm_step<'a>(
    q: &'a [f32],
    q_pos: &'a [u64],
    (k, v): &'a (KvBuf, KvBuf),
    slots: usize,
    hi: usize,
    slot_pos: &'a [u64],
    live: &'a [bool],
    key_angles: Option<KeyAngles<'a>>,
) -> Step<'a> {
    Step {
        q,
        q_stride: HEADS * D,
        q_pos,
        k: k.view(),
        v: v.view(),
        slots,
        hi,
        slot_pos,
        live,
        window: None,
        num_heads: HEADS,
        num_kv_heads: KV,
        head_dim: D,
        scale: 0.125,
        key_angles,
    }
}

fn attention(c: &mut Criterion) {
    let mut rng = Rng::new(7);
    let slot_pos: Vec<u64> = (0..SLOTS as u64).collect();
    let live = vec![true; SLOTS];
    let (cos, sin): (Vec<f32>, Vec<f32>) =
        (0..SLOTS * D / 2).map(|i| ((i as f32 * 0.01).cos(), (i as f32 * 0.01).sin())).unzip();
    let rows: Vec<u32> = (0..SLOTS as u32).collect();
    let (mut ct, mut st) = (Vec::new(), Vec::new());
    block_angles(Isa::Scalar, &rows, SLOTS, D / 2, &cos, &sin, &mut ct, &mut st);
    let mut g = config(c, "attention");
    for format in KvFormat::ALL {
        let cache = random_cache(&mut rng, format, SLOTS, SLOTS);
        for t in [1, 64] {
            let q = rng.vec(t * HEADS * D, -1.0, 1.0);
            let q_pos: Vec<u64> = (SLOTS as u64 - t as u64..SLOTS as u64).collect();
            let mut out = vec![0f32; t * HEADS * D];
            let mut probs = vec![0f32; HEADS * SLOTS];
            for rotate in [false, true] {
                if rotate && format != KvFormat::F32 {
                    continue;
                }
                let angles = rotate.then_some(KeyAngles { cos: &ct, sin: &st, style: RopeStyle::HalfSplit });
                let step = smollm_step(&q, &q_pos, &cache, SLOTS, SLOTS, &slot_pos, &live, angles);
                for isa in Isa::supported() {
                    let name = format!("{}{}/{isa}", format.name(), if rotate { "-rot" } else { "" });
                    g.bench_function(BenchmarkId::new(name, t), |b| {
                        b.iter(|| {
                            let sink = Sink { out: &mut out, out_stride: HEADS * D, probs: &mut probs, prob_rows: 1 };
                            attention_with(isa, &step, sink, &|n, f| (0..n).for_each(f)).expect("step");
                            black_box(&out);
                        })
                    });
                }
            }
        }
    }
    g.finish();
}

fn activations(c: &mut Criterion) {
    let mut rng = Rng::new(8);
    let n = 1536;
    let mut g = config(c, "act");
    for rows in [1, 64] {
        let x = rng.vec(rows * n, -3.0, 3.0);
        let mut q = QActs::default();
        for isa in Isa::supported() {
            g.bench_function(BenchmarkId::new(isa.name(), rows), |b| {
                b.iter(|| q.quantize_into(isa, black_box(&x), rows, n))
            });
        }
    }
    g.finish();
}

fn angles(c: &mut Criterion) {
    let half = D / 2;
    let rows: Vec<u32> = (0..SLOTS as u32).map(|s| (s * 131 + 7) % 4096).collect();
    let (cos, sin): (Vec<f32>, Vec<f32>) =
        (0..4096 * half).map(|i| ((i as f32 * 0.37).cos(), (i as f32 * 0.37).sin())).unzip();
    let (mut ct, mut st) = (Vec::new(), Vec::new());
    let mut g = config(c, "block-angles");
    for isa in Isa::supported() {
        g.bench_function(isa.name(), |b| {
            b.iter(|| block_angles(isa, black_box(&rows), SLOTS, half, &cos, &sin, &mut ct, &mut st))
        });
    }
    g.finish();
}

/// A batched decode step's attention: one query row for each of 256 sequences, each over its own 513 slots (TOVA with
/// C = 512 after the new token), per KV format, with the active variant. 256 caches (200 MB in f32) do not fit the
/// cache, so criterion's throughput (key and value bytes read per call) is the memory roofline of batched decoding.
fn decode_batch(c: &mut Criterion) {
    const SEQS: usize = 256;
    let hi: usize = 513;
    let slots = hi.next_multiple_of(KEY_BLOCK);
    let mut g = config(c, "decode-batch");
    for format in KvFormat::ALL {
        let mut rng = Rng::new(11);
        let caches: Vec<(KvBuf, KvBuf)> = (0..SEQS).map(|_| random_cache(&mut rng, format, slots, hi)).collect();
        let q = rng.vec(HEADS * D, -1.0, 1.0);
        let slot_pos: Vec<u64> = (0..slots as u64).collect();
        let live: Vec<bool> = (0..slots).map(|s| s < hi).collect();
        let q_pos = [hi as u64 - 1];
        let bytes: usize = caches.iter().map(|(k, v)| (k.bytes() + v.bytes()) * hi / slots).sum();
        g.throughput(Throughput::Bytes(bytes as u64));
        let (mut out, mut probs) = (vec![0f32; HEADS * D], vec![0f32; HEADS * hi]);
        g.bench_function(BenchmarkId::new(format.to_string(), SEQS), |b| {
            b.iter(|| {
                for cache in &caches {
                    let step = smollm_step(&q, &q_pos, cache, slots, hi, &slot_pos, &live, None);
                    let sink = Sink { out: &mut out, out_stride: HEADS * D, probs: &mut probs, prob_rows: 1 };
                    attn::attention(&step, sink).expect("a valid step");
                }
                black_box(&out);
            })
        });
    }
}

criterion_group!(benches, attention, activations, angles, decode_batch);
criterion_main!(benches);
