//! Decode-shaped matrix-vector products over more weights than the last-level cache holds (as a
//! decode step streams the whole model), on one and two threads alternately: how far two threads
//! can go when every weight comes from memory. `cargo run --release -p msrnn-kernels --example dram_probe`
use msrnn_kernels::{pool, Format, QMatrix};
use std::time::Instant;

fn main() {
    // 60 pairs of SmolLM2-135M's FFN shapes (1536x576 and 576x1536), Q4_1: ~106 MB, three times a 32 MB L3.
    let w: Vec<f32> = (0..1536 * 576).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let mats: Vec<QMatrix> = (0..120)
        .map(|i| {
            let (o, n) = if i % 2 == 0 { (1536, 576) } else { (576, 1536) };
            QMatrix::quantize(Format::Q4_1, &w, o, n).unwrap()
        })
        .collect();
    let bytes: usize = mats.iter().map(|m| m.bytes()).sum();
    let x = vec![0.3f32; 1536];
    let mut y = vec![0f32; 1536];
    let pass = |y: &mut [f32]| {
        for m in &mats {
            m.matmul(&x[..m.in_dim()], 1, &mut y[..m.out_dim()]);
        }
    };
    println!("{:.1} MB of Q4_1 weights per pass", bytes as f64 / 1e6);
    for round in 0..4 {
        let mut per = [0f64; 2];
        for t in [1, 2] {
            pool::set_threads(t);
            pass(&mut y);
            let t0 = Instant::now();
            for _ in 0..20 {
                pass(&mut y);
            }
            per[t - 1] = t0.elapsed().as_secs_f64() / 20.0;
        }
        println!(
            "round {round}: one thread {:.2} ms ({:.1} GB/s), two threads {:.2} ms ({:.1} GB/s): {:.2}x",
            per[0] * 1e3,
            bytes as f64 / per[0] / 1e9,
            per[1] * 1e3,
            bytes as f64 / per[1] / 1e9,
            per[0] / per[1]
        );
    }
}
