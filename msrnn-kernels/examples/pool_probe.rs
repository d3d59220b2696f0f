//! Alternates one and two threads on small calls and prints the time per call of each, side by side.
use msrnn_kernels::{pool, Format, QMatrix};
use std::time::Instant;

fn main() {
    let w: Vec<f32> = (0..3072 * 576).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let m = QMatrix::quantize(Format::Q4_1, &w[..576 * 576], 576, 576).unwrap();
    let g = QMatrix::quantize(Format::Q4_1, &w, 3072, 576).unwrap();
    let x = vec![0.3f32; 576];
    let mut y = vec![0f32; 3072];
    for round in 0..6 {
        for t in [1, 2] {
            pool::set_threads(t);
            let s0 = pool::stats();
            let t0 = Instant::now();
            for _ in 0..2000 {
                pool::for_each(16, &|_| {
                    std::hint::black_box(0);
                });
            }
            let empty = t0.elapsed().as_secs_f64() / 2000.0 * 1e6;
            let t0 = Instant::now();
            for _ in 0..2000 {
                m.matmul(&x, 1, &mut y[..576]);
            }
            let small = t0.elapsed().as_secs_f64() / 2000.0 * 1e6;
            let t0 = Instant::now();
            for _ in 0..500 {
                g.matmul(&x, 1, &mut y);
            }
            let big = t0.elapsed().as_secs_f64() / 500.0 * 1e6;
            let s1 = pool::stats();
            println!(
                "round {round} t{t}: empty call {empty:.2} us, 576x576 {small:.2} us, 3072x576 {big:.2} us; stalls {} serial {} worker tasks/call {:.2}",
                s1.stalls - s0.stalls,
                s1.serial_calls - s0.serial_calls,
                (s1.worker_tasks - s0.worker_tasks) as f64 / 4500.0
            );
        }
    }
}
