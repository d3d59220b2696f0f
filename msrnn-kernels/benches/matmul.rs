//! The matrices of one SmolLM2-135M token, per format, rows per call and thread count; plus the machine's memory
//! bandwidth (the roofline for decode) and the pool under load.
//!
//! One token = the 30 layers' matrices (q|k|v 960x576, o 576x576, gate|up 3072x576, down 576x1536, fused as the
//! model loader fuses them) + the tied head (49152x576). `layers/...` and `head/...` are measured apart because a
//! prefill chunk needs the head for its last row only; criterion's throughput is the weight bytes streamed per call.
//! Each layer has its own weights (96-143 MB in all), so they come from memory, not from cache, as in a real model.
//!
//! `formats/...`: one 2048x2048 matrix per block format (in_dim a whole number of K-quant super-blocks), rows 1 and
//! 64, one thread: the formats side by side.
//!
//! `cargo bench -p msrnn-kernels --bench matmul [-- FILTER]`; `MSRNN_BENCH_ROWS=1,4` and `MSRNN_BENCH_THREADS=1`
//! narrow the grid.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use msrnn_kernels::{pool, Format, QMatrix};
use msrnn_tests::Rng;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LAYERS: usize = 30;
const HIDDEN: usize = 576;
const FFN: usize = 1536;
const QKV: usize = 576 + 2 * 192;
const VOCAB: usize = 49152;

fn random_matrix(rng: &mut Rng, format: Format, out_dim: usize, in_dim: usize) -> QMatrix {
    let blocks = out_dim * in_dim / 32;
    let mut bytes = Vec::with_capacity(blocks * format.block_bytes());
    for _ in 0..blocks {
        bytes.extend_from_slice(&f16::from_f32(rng.uniform(0.001, 0.01)).to_le_bytes());
        if format == Format::Q4_1 {
            bytes.extend_from_slice(&f16::from_f32(rng.uniform(-0.08, 0.0)).to_le_bytes());
        }
        let n = format.block_bytes() - bytes.len() % format.block_bytes();
        let mut word = 0u64;
        for i in 0..n {
            if i % 8 == 0 {
                word = rng.next_u64();
            }
            bytes.push((word >> (8 * (i % 8))) as u8);
        }
    }
    QMatrix::from_ggml(format, &bytes, out_dim, in_dim).expect("bench matrix")
}

struct Layer {
    qkv: QMatrix,
    o: QMatrix,
    gate_up: QMatrix,
    down: QMatrix,
}

struct Model {
    layers: Vec<Layer>,
    head: QMatrix,
}

impl Model {
    /// `layers`: the format of the 30 layers' matrices; the head is Q8_0 in both of SmolLM2's variants.
    fn new(rng: &mut Rng, layers: Format) -> Self {
        let layers = (0..LAYERS)
            .map(|_| Layer {
                qkv: random_matrix(rng, layers, QKV, HIDDEN),
                o: random_matrix(rng, layers, HIDDEN, HIDDEN),
                gate_up: random_matrix(rng, layers, 2 * FFN, HIDDEN),
                down: random_matrix(rng, layers, HIDDEN, FFN),
            })
            .collect();
        Self { layers, head: random_matrix(rng, Format::Q8_0, VOCAB, HIDDEN) }
    }

    fn layer_bytes(&self) -> u64 {
        self.layers.iter().map(|l| (l.qkv.bytes() + l.o.bytes() + l.gate_up.bytes() + l.down.bytes()) as u64).sum()
    }
}

struct Buffers {
    x: Vec<f32>,
    xf: Vec<f32>,
    qkv: Vec<f32>,
    h: Vec<f32>,
    gu: Vec<f32>,
    head: Vec<f32>,
}

impl Buffers {
    fn new(rng: &mut Rng, rows: usize) -> Self {
        Self {
            x: rng.vec(rows * HIDDEN, -1.0, 1.0),
            xf: rng.vec(rows * FFN, -1.0, 1.0),
            qkv: vec![0.0; rows * QKV],
            h: vec![0.0; rows * HIDDEN],
            gu: vec![0.0; rows * 2 * FFN],
            head: vec![0.0; rows * VOCAB],
        }
    }
}

fn run_layers(m: &Model, b: &mut Buffers, rows: usize) {
    for l in &m.layers {
        l.qkv.matmul(&b.x, rows, &mut b.qkv);
        l.o.matmul(&b.x, rows, &mut b.h);
        l.gate_up.matmul(&b.x, rows, &mut b.gu);
        l.down.matmul(&b.xf, rows, &mut b.h);
    }
    black_box(&b.h);
}

fn list(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn matrices(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    let rows_list = list("MSRNN_BENCH_ROWS", &[1, 4, 16, 64, 512]);
    let threads_list = list("MSRNN_BENCH_THREADS", &[1, 2]);
    for format in [Format::Q4_1, Format::Q8_0] {
        let model = Model::new(&mut rng, format);
        let name = format.name().to_lowercase();
        let mut g = c.benchmark_group(format!("layers/{name}"));
        g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
        g.throughput(Throughput::Bytes(model.layer_bytes()));
        for &rows in &rows_list {
            let mut b = Buffers::new(&mut rng, rows);
            for &t in &threads_list {
                pool::set_threads(t);
                g.bench_function(BenchmarkId::new(format!("t{t}"), rows), |bench| {
                    bench.iter(|| run_layers(&model, &mut b, rows))
                });
            }
        }
        g.finish();
        if format == Format::Q4_1 {
            // The head is Q8_0 in both variants: measure it once.
            let mut g = c.benchmark_group("head/q8_0");
            g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
            g.throughput(Throughput::Bytes(model.head.bytes() as u64));
            for &rows in &rows_list {
                let mut b = Buffers::new(&mut rng, rows);
                for &t in &threads_list {
                    pool::set_threads(t);
                    g.bench_function(BenchmarkId::new(format!("t{t}"), rows), |bench| {
                        bench.iter(|| model.head.matmul(&b.x, rows, black_box(&mut b.head)))
                    });
                }
            }
            g.finish();
        }
    }
}

/// Random blocks of any format with sane f16 scales (the other bytes, codes and sub-block scales, are random).
fn random_blocks(rng: &mut Rng, format: Format, out_dim: usize, in_dim: usize) -> QMatrix {
    let n = out_dim * in_dim / format.block_weights();
    let mut bytes = Vec::with_capacity(n * format.block_bytes());
    for _ in 0..n {
        let start = bytes.len();
        bytes.extend((0..format.block_bytes()).map(|_| rng.below(256) as u8));
        let b = &mut bytes[start..];
        let at = if format == Format::Q6K { 208 } else { 0 };
        b[at..at + 2].copy_from_slice(&f16::from_f32(rng.uniform(0.0005, 0.005)).to_le_bytes());
        if format.has_min() {
            b[2..4].copy_from_slice(&f16::from_f32(rng.uniform(0.0, 0.005)).to_le_bytes());
        }
    }
    QMatrix::from_ggml(format, &bytes, out_dim, in_dim).expect("bench matrix")
}

/// Every format on one 2048x2048 matrix, one thread.
fn formats(c: &mut Criterion) {
    let mut rng = Rng::new(3);
    let n = 2048;
    pool::set_threads(1);
    let mut g = c.benchmark_group("formats");
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for format in Format::ALL {
        let m = random_blocks(&mut rng, format, n, n);
        g.throughput(Throughput::Bytes(m.bytes() as u64));
        for rows in list("MSRNN_BENCH_ROWS", &[1, 64]) {
            let x = rng.vec(rows * n, -1.0, 1.0);
            let mut y = vec![0f32; rows * n];
            g.bench_function(BenchmarkId::new(format.name(), rows), |bench| {
                bench.iter(|| m.matmul(&x, rows, black_box(&mut y)))
            });
        }
    }
    g.finish();
}

/// Reading a buffer far larger than the caches: the bound on streaming weights, on one thread and on two.
fn bandwidth(c: &mut Criterion) {
    let words = 64 << 20; // 512 MiB
    let buf: Vec<u64> = (0..words as u64).collect();
    let mut g = c.benchmark_group("memory-read");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes((words * 8) as u64));
    for t in [1, 2] {
        pool::set_threads(t);
        g.bench_function(BenchmarkId::new("threads", t), |bench| {
            bench.iter(|| {
                let parts = 64;
                let chunk = words / parts;
                let total = std::sync::atomic::AtomicU64::new(0);
                pool::for_each(parts, &|p| {
                    let s = &buf[p * chunk..(p + 1) * chunk];
                    let mut acc = [0u64; 8];
                    for w in s.chunks_exact(8) {
                        for i in 0..8 {
                            acc[i] = acc[i].wrapping_add(w[i]);
                        }
                    }
                    total.fetch_add(acc.iter().fold(0, |a, b| a.wrapping_add(*b)), Ordering::Relaxed);
                });
                black_box(total.load(Ordering::Relaxed))
            })
        });
    }
    g.finish();
}

/// One decode token (Q4_1 layers + Q8_0 head, rows = 1) with 1 and 2 threads, on an idle machine and with a busy
/// loop competing for a core; prints the pool's counters for each.
fn under_load(c: &mut Criterion) {
    let mut rng = Rng::new(2);
    let model = Model::new(&mut rng, Format::Q4_1);
    let mut b = Buffers::new(&mut rng, 1);
    let mut g = c.benchmark_group("decode-token");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(4));
    for busy in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let spinner = busy.then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        });
        for t in [1, 2] {
            pool::set_threads(t);
            let before = pool::stats();
            g.bench_function(BenchmarkId::new(if busy { "busy-core" } else { "idle" }, format!("t{t}")), |bench| {
                bench.iter(|| {
                    run_layers(&model, &mut b, 1);
                    model.head.matmul(&b.x, 1, &mut b.head);
                })
            });
            let after = pool::stats();
            eprintln!(
                "pool, {} t{t}: parallel calls {}, serial (after a stall) {}, stalls {}, worker tasks {}",
                if busy { "busy core" } else { "idle" },
                after.parallel_calls - before.parallel_calls,
                after.serial_calls - before.serial_calls,
                after.stalls - before.stalls,
                after.worker_tasks - before.worker_tasks
            );
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(s) = spinner {
            s.join().expect("busy loop");
        }
    }
    g.finish();
}

criterion_group!(benches, bandwidth, matrices, formats, under_load);
criterion_main!(benches);
