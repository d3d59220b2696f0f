//! Finding the model; loading and naming it is the engine's ([`msrnn_engine::load`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
pub use msrnn_engine::LoadedModel;
use msrnn_modelkit::WeightFormat;

use crate::Global;

/// The reference model fetched by `scripts/fetch-model.sh`; preferred when models/ holds several.
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const FETCH_HINT: &str = "fetch the reference model (SmolLM2-135M-Instruct, 98 MB) with ./scripts/fetch-model.sh, \
     or pass --model PATH (a .gguf file or a Hugging Face model directory)";

/// The model path: `--model` (or MSRNN_MODEL), else the one in models/.
pub fn resolve(global: &Global) -> Result<(PathBuf, bool)> {
    if let Some(p) = &global.model {
        return Ok((p.clone(), true));
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let mut looked = Vec::new();
    for dir in cwd.ancestors() {
        let models = dir.join("models");
        if !models.is_dir() {
            continue;
        }
        looked.push(models.display().to_string());
        let mut found: Vec<PathBuf> = std::fs::read_dir(&models)
            .with_context(|| format!("cannot list {}", models.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                (p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")))
                    || (p.is_dir() && p.join("config.json").is_file())
            })
            .collect();
        found.sort();
        if let Some(p) = found.iter().find(|p| p.file_name().is_some_and(|n| n == DEFAULT_MODEL)).or(found.first()) {
            if found.len() > 1 {
                tracing::info!(chosen = %p.display(), candidates = found.len(), "several models in models/; pass --model to pick another");
            }
            return Ok((p.clone(), false));
        }
    }
    let where_ = if looked.is_empty() {
        format!("no models/ directory in {} or any parent", cwd.display())
    } else {
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
