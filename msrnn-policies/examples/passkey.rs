//! Passkey retrieval (Mohtashami & Jaggi 2023): a five-digit key hidden at some depth in filler
//! text, then "What is the pass key? The pass key is"; a policy passes a prompt when the greedy
//! answer (raw text, no chat template) contains the key. Every policy x capacity x prompt runs as
//! ONE batch (`generate_batch`), the prompts fed in chunks (`--chunk`, default 64) as `msrnn
//! generate` feeds them.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p msrnn-policies --example passkey -- \
//!     --policies 'tova;h2o;tova-ema;h2o-ema' --capacities 128,256,512 --filler 40
//! ```
//!
//! Options: `--model FILE`, `--policies SPEC;SPEC`, `--capacities C,...`, `--filler N` (filler
//! sentences of about 25 tokens each), `--chunk N`, `--weights f32|q8_0|native|auto` (default f32).

use msrnn_core::{generate_batch, new_state, Capacity, GenItem, GenerateOptions, MsrnnState, PolicySpec, Sampling};
use msrnn_llama::Llama;
use msrnn_modelkit::{LoadOptions, Model as _, WeightFormat};

const KEYS: [u32; 3] = [71432, 50981, 23867];
const DEPTHS: [f64; 2] = [0.25, 0.6];

fn prompt(key: u32, depth: f64, filler: usize) -> String {
    let noise = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
    let at = (depth * filler as f64).round() as usize;
    let mut p = String::from(
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. \
         I will quiz you about the important information there.\n",
    );
    for i in 0..filler {
        if i == at {
            p.push_str(&format!("The pass key is {key}. Remember it. {key} is the pass key. "));
        }
        p.push_str(noise);
    }
    p.push_str("\nWhat is the pass key? The pass key is");
    p
}

fn main() {
    if let Err(e) = run() {
        eprintln!("passkey: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut model_path = "models/SmolLM2-135M-Instruct.Q4_1.gguf".to_string();
    let mut policies: Vec<PolicySpec> = Vec::new();
    let mut caps = vec![128, 256, 512];
    let (mut filler, mut chunk, mut weights) = (40usize, 64usize, WeightFormat::F32);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--model" => model_path = v,
            "--policies" => {
                policies = v
                    .split(';')
                    .map(|s| s.parse().map_err(|e: msrnn_core::Error| e.to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--capacities" => caps = v.split(',').map(num).collect::<Result<_, _>>()?,
            "--filler" => filler = num(&v)?,
            "--chunk" => chunk = num(&v)?,
            "--weights" => {
                weights = match v.as_str() {
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
    if policies.is_empty() {
        policies = ["tova", "h2o"].iter().map(|s| s.parse().unwrap()).collect();
    }
    let model = Llama::load(model_path.as_ref(), &LoadOptions { weights, device: candle_core::Device::Cpu })
        .map_err(|e| format!("{model_path}: {e}"))?;
    let tok = model.tokenizer();
    let reg = msrnn_policies::registry();
    let mut prompts = Vec::new();
    for &key in &KEYS {
        for &depth in &DEPTHS {
            let ids = tok.encode(&prompt(key, depth, filler), tok.wants_bos()).map_err(|e| e.to_string())?;
            prompts.push((key, depth, ids));
        }
    }
    eprintln!("passkey: {} prompts of {} tokens", prompts.len(), prompts.iter().map(|p| p.2.len()).max().unwrap_or(0));
    let mut cells = Vec::new();
    let mut states: Vec<MsrnnState> = Vec::new();
    for spec in &policies {
        for &c in &caps {
            for (i, _) in prompts.iter().enumerate() {
                let cap = Capacity::bounded(c).map_err(|e| e.to_string())?;
                states.push(new_state(&model, &reg, spec, cap, chunk).map_err(|e| format!("{spec} C={c}: {e}"))?);
                cells.push((spec.clone(), c, i));
            }
        }
    }
    let mut items: Vec<GenItem<'_>> =
        states.iter_mut().zip(&cells).map(|(state, &(_, _, i))| GenItem { state, prompt: &prompts[i].2 }).collect();
    let opts = GenerateOptions { max_tokens: 8, sampling: Sampling::Greedy, stop_tokens: vec![], prefill_chunk: chunk };
    let gens = generate_batch(&model, &mut items, &opts, &mut |_, _| true).map_err(|e| e.to_string())?;
    let mut out = format!(
        "| policy | {} |\n|---|{}\n",
        caps.iter().map(|c| format!("C={c}")).collect::<Vec<_>>().join(" | "),
        "---:|".repeat(caps.len())
    );
    for spec in &policies {
        out.push_str(&format!("| {spec} |"));
        for &c in &caps {
            let mut ok = 0;
            for ((s, cc, i), g) in cells.iter().zip(&gens) {
                if s == spec && *cc == c {
                    let text = tok.decode(&g.tokens).map_err(|e| e.to_string())?;
                    let hit = text.contains(&prompts[*i].0.to_string());
                    ok += usize::from(hit);
                    eprintln!("{spec} C={c} key {} depth {}: {hit} {text:?}", prompts[*i].0, prompts[*i].1);
                }
            }
            out.push_str(&format!(" {ok}/{} |", prompts.len()));
        }
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}
