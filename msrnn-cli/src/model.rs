//! Finding the model; loading and naming it is the engine's ([`msrnn_engine::load`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
pub use msrnn_engine::LoadedModel;
use msrnn_modelkit::WeightFormat;

use crate::Global;

const FETCH_HINT: &str = "fetch the reference model (SmolLM2-135M-Instruct, 98 MB) with ./scripts/fetch-model.sh, \
     or pass --model PATH (a .gguf file or a Hugging Face model directory)";

/// The model path: `--model` (or MSRNN_MODEL), else the one in models/ ([`msrnn_engine::find_model`]).
pub fn resolve(global: &Global) -> Result<(PathBuf, bool)> {
    if let Some(p) = &global.model {
        return Ok((p.clone(), true));
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let search = msrnn_engine::find_model(&cwd)?;
    if let Some(p) = search.found {
        if search.candidates > 1 {
            tracing::info!(chosen = %p.display(), candidates = search.candidates, "several models in models/; pass --model to pick another");
        }
        return Ok((p, false));
    }
    let where_ = if search.looked.is_empty() {
        format!("no models/ directory in {} or any parent", cwd.display())
    } else {
        let looked: Vec<String> = search.looked.iter().map(|p| p.display().to_string()).collect();
        format!("{} holds no .gguf file or model directory", looked.join(", "))
    };
    bail!("no model found ({where_}); {FETCH_HINT}")
}

/// Loads the model `global` names (or the default one).
pub fn load(global: &Global) -> Result<LoadedModel> {
    let device = crate::device(&global.device)?;
    let (path, explicit) = resolve(global)?;
    let what = if explicit { "--model".to_string() } else { format!("the default model {}", path.display()) };
    load_path(&path, global.weights, &device).with_context(|| format!("cannot load {what}"))
}

pub fn load_path(path: &Path, weights: WeightFormat, device: &candle_core::Device) -> Result<LoadedModel> {
    Ok(msrnn_engine::load(path, weights, device)?)
}
