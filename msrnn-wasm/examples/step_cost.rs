//! What a WebAssembly plugin costs per step against the same policy as a native plugin: the
//! keynorm crate built both ways, stepped on the same observations (SmolLM2's 3 KV heads, every
//! slot live, a budget one below: the decode case, one eviction per step), in alternating blocks so
//! both see the same machine. Prints the median time per step of each and their ratio.
//!
//! ```sh
//! cargo build --release -p msrnn-plugin-keynorm
//! cargo build --release -p msrnn-plugin-keynorm --target wasm32-unknown-unknown
//! cargo run --release -p msrnn-wasm --example step_cost
//! # or: ... --example step_cost -- NATIVE.so PLUGIN.wasm
//! ```

use std::time::Instant;

use msrnn_core::{Context, Observation, Params, Plugin, PluginKind, Policy};
use msrnn_wasm::WasmPlugin;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let native = args.first().cloned().unwrap_or_else(|| "target/release/libmsrnn_keynorm.so".into());
    let wasm =
        args.get(1).cloned().unwrap_or_else(|| "target/wasm32-unknown-unknown/release/msrnn_keynorm.wasm".into());
    let n = Plugin::open(&native).unwrap_or_else(|e| panic!("{e}\n(build it: see this example's doc comment)"));
    let w = WasmPlugin::open(&wasm).unwrap_or_else(|e| panic!("{e}\n(build it: see this example's doc comment)"));
    let kv = 3;
    println!("keynorm per step (median of 15 blocks), {kv} KV heads, all slots live, budget = slots - 1");
    println!("{:>6}  {:>12}  {:>12}  {:>6}", "slots", "native µs", "wasm µs", "ratio");
    for slots in [64usize, 256, 1024, 4096] {
        let ctx =
            Context { layer: 0, num_layers: 1, num_heads: 9, num_kv_heads: kv, head_dim: 64, capacity: Some(slots) };
        let mut pn = n.instantiate(&Params::default(), &ctx).unwrap();
        let mut pw = w.instantiate(&Params::default(), &ctx).unwrap();
        let positions: Vec<u64> = (0..slots as u64).collect();
        let live = vec![true; slots];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let norms: Vec<f32> = (0..kv * slots)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect();
        let obs = Observation {
            layer: 0,
            tokens_seen: slots as u64,
            num_slots: slots,
            positions: &positions,
            live: &live,
            new_slots: &[slots - 1],
            num_heads: 9,
            num_kv_heads: kv,
            head_dim: 64,
            rows: 0,
            probs: &[],
            key_norms: &norms,
            keys: &[],
            head_capacity: 0,
        };
        let budget = slots - 1;
        assert_eq!(pn.step(&obs, budget).unwrap(), pw.step(&obs, budget).unwrap());
        let iters = (200_000 / slots).max(20);
        let block = |p: &mut Box<dyn Policy>| {
            let t = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(p.step(&obs, budget).unwrap());
            }
            t.elapsed().as_secs_f64() * 1e6 / iters as f64
        };
        let (mut tn, mut tw) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            tn.push(block(&mut pn));
            tw.push(block(&mut pw));
        }
        let (a, b) = (median(tn), median(tw));
        println!("{slots:>6}  {a:>12.2}  {b:>12.2}  {:>6.2}", b / a);
    }
}
