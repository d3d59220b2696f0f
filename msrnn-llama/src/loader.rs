//! Opening a model: a `.gguf` file, or a directory (or one of its `.safetensors` files) with
//! `config.json`, `*.safetensors` and `tokenizer.json`.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::gguf::{self, Metadata};
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use crate::weights::{GgufWeights, WeightSource};
use crate::LoadOptions;

pub(crate) fn load(path: &Path, opts: &LoadOptions) -> Result<Llama> {
    let _span = tracing::info_span!("load", path = %path.display(), weights = %opts.weights).entered();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return load_safetensors(path, opts);
    }
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let not_gguf = gguf::check_magic(path, &mut file)?.is_err();
    if not_gguf && path.extension().is_some_and(|e| e == "safetensors") {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return load_safetensors(dir, opts);
    }
    let (file, content) = gguf::open(path, Some("llama"))?;
    let cfg = LlamaConfig::from_gguf(path, &content)?;
    let tokenizer = Tokenizer::from_gguf(&Metadata { path, ct: &content })?;
    let source = WeightSource::gguf(GgufWeights::new(path, content, file, opts)?);
    Llama::from_source(&source, cfg, tokenizer)
}

fn load_safetensors(dir: &Path, opts: &LoadOptions) -> Result<Llama> {
    let config_path = dir.join("config.json");
    let json = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let (cfg, extras) = LlamaConfig::from_hf_json(&config_path, &json)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Config { path: dir.into(), reason: "the directory has no *.safetensors files".into() });
    }
    let tokenizer = Tokenizer::from_dir(dir, &extras)?;
    let source = WeightSource::safetensors(dir, &files, opts)?;
    Llama::from_source(&source, cfg, tokenizer)
}
