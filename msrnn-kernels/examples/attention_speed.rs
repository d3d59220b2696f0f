//! Time of one layer's attention step (SmolLM2's 9 heads over 3 KV heads of 64) per KV format,
//! instruction set and thread count: `cargo run --release -p msrnn-kernels --example attention_speed`.
use msrnn_kernels::attention::*;
use msrnn_kernels::{KvBuf, KvFormat};
use std::time::Instant;
fn main() {
    for &(hi, t) in &[(512usize, 1usize), (1024, 1), (1024, 16), (1024, 512)] {
        let (h, g, d) = (9, 3, 64);
        let slots = hi + 16;
        let q: Vec<f32> = (0..t * h * d).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let k: Vec<f32> = (0..g * slots * d).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
        let slot_pos: Vec<u64> = (0..slots as u64).collect();
        let live = vec![true; slots];
        let q_pos: Vec<u64> = (hi as u64 - t as u64..hi as u64).collect();
        let mut out = vec![0f32; t * h * d];
        let mut probs = vec![0f32; h * hi];
        for format in KvFormat::ALL {
            let (mut kb, mut vb) =
                (KvBuf::zeros(format, g, slots, d).unwrap(), KvBuf::zeros(format, g, slots, d).unwrap());
            for head in 0..g {
                for s in 0..slots {
                    let row = &k[(head * slots + s) * d..][..d];
                    kb.write_key(slots, head, s, row);
                    vb.write_value(slots, head, s, row);
                }
            }
            let s = Step {
                q: &q,
                q_stride: h * d,
                q_pos: &q_pos,
                k: kb.view(),
                v: vb.view(),
                slots,
                hi,
                slot_pos: &slot_pos,
                live: &live,
                window: None,
                num_heads: h,
                num_kv_heads: g,
                head_dim: d,
                scale: 0.125,
                key_angles: None,
            };
            for isa in Isa::supported() {
                let iters = if t > 100 {
                    5
                } else if t > 1 {
                    50
                } else {
                    1000
                };
                let mut dt = f64::MAX;
                for _ in 0..iters {
                    let t0 = Instant::now();
                    attention_with(
                        isa,
                        &s,
                        Sink { out: &mut out, out_stride: h * d, probs: &mut probs, prob_rows: 1 },
                        &|n, f| (0..n).for_each(f),
                    )
                    .unwrap();
                    dt = dt.min(t0.elapsed().as_secs_f64());
                }
                println!(
                    "hi {hi:5} t {t:4} {format:4} {isa:?}: {:.1} us per layer, x30 layers = {:.2} ms",
                    dt * 1e6,
                    dt * 30e3
                );
            }
            // The active variant on the pool, one thread then two (a decode step splits its slots).
            for threads in [1, 2] {
                msrnn_kernels::pool::set_threads(threads);
                let mut dt = f64::MAX;
                for _ in 0..if t > 100 { 5 } else { 1000 } {
                    let t0 = Instant::now();
                    let sink = Sink { out: &mut out, out_stride: h * d, probs: &mut probs, prob_rows: 1 };
                    attention_with(msrnn_kernels::isa::active(), &s, sink, &|n, f| msrnn_kernels::pool::for_each(n, f))
                        .unwrap();
                    dt = dt.min(t0.elapsed().as_secs_f64());
                }
                println!("hi {hi:5} t {t:4} {format:4} pool, {threads} thread(s): {:.1} us per layer", dt * 1e6);
            }
        }
    }
}
