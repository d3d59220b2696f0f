//! Decode and prefill speed of a LLaMA model under a policy, and the full-cache perplexity of a
//! text prefix: the numbers the project's notes quote.
//!
//! ```text
//! cargo run --release -p msrnn-llama --example llama_speed -- \
//!     [MODEL] [--weights native|q8_0|f16|f32] [--policy SPEC] [--capacity N] [--tokens N] [--ppl TEXT_FILE BYTES]
//! ```
//! Defaults: `models/SmolLM2-135M-Instruct.Q4_1.gguf`, native weights, `full`, 128 tokens.

use std::time::Instant;

use msrnn_core::{new_state, perplexity, Capacity, CausalLm, EvalMode, PolicySpec};
use msrnn_llama::Llama;
use msrnn_modelkit::{LoadOptions, Model, WeightFormat};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut weights, mut policy, mut capacity, mut n, mut ppl) = (
        "models/SmolLM2-135M-Instruct.Q4_1.gguf".to_string(),
        WeightFormat::Native,
        "full".to_string(),
        None,
        128usize,
        None,
    );
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--weights" => weights = val()?.parse()?,
            "--policy" => policy = val()?,
            "--capacity" => capacity = Some(val()?.parse::<usize>()?),
            "--tokens" => n = val()?.parse()?,
            "--ppl" => {
                let file = val()?;
                let bytes: usize = val()?.parse()?;
                ppl = Some((file, bytes));
            }
            _ => model = a,
        }
    }
    let t = Instant::now();
    let m = Llama::load(model.as_ref(), &LoadOptions { weights, ..Default::default() })?;
    println!("loaded {model} ({weights}, matmuls {}) in {:.2?}", m.weight_kinds(), t.elapsed());
    println!("bytes per cached token: {}", m.info().kv_bytes_per_token());
    let reg = msrnn_policies::registry();
    let spec: PolicySpec = policy.parse()?;
    let cap = match capacity {
        Some(c) => Capacity::bounded(c)?,
        None => Capacity::Unbounded,
    };
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(n / 8 + 2);
    let ids: Vec<u32> = m.tokenizer().encode(&text, false)?.into_iter().take(n).collect();

    let mut st = new_state(&m, &reg, &spec, cap, ids.len())?;
    let t = Instant::now();
    m.forward(&ids, &mut st, false)?;
    let pre = t.elapsed();
    println!(
        "prefill {} tokens in one chunk: {:.2?} ({:.0} tok/s)",
        ids.len(),
        pre,
        ids.len() as f64 / pre.as_secs_f64()
    );

    let mut st = new_state(&m, &reg, &spec, cap, 1)?;
    let t = Instant::now();
    for &id in &ids {
        m.forward(&[id], &mut st, false)?;
    }
    let dec = t.elapsed();
    println!(
        "decode {} tokens one by one ({spec}, C={cap}): {:.2?} ({:.1} ms/token)",
        ids.len(),
        dec,
        dec.as_secs_f64() * 1e3 / ids.len() as f64
    );

    if let Some((file, bytes)) = ppl {
        let raw = std::fs::read(&file)?;
        let text = String::from_utf8_lossy(&raw[..bytes.min(raw.len())]).into_owned();
        let ids = m.tokenizer().encode(&text, false)?;
        for mode in [EvalMode::Decode, EvalMode::Chunked(256)] {
            let mut st = new_state(&m, &reg, &spec, cap, 256)?;
            let t = Instant::now();
            let p = perplexity(&m, &mut st, &ids, mode, &mut |_| {})?;
            println!(
                "perplexity of {file}[..{bytes}] ({} tokens, {mode}, {spec}, C={cap}): {:.4} in {:.1?}",
                ids.len(),
                p.ppl,
                t.elapsed()
            );
        }
    }
    Ok(())
}
