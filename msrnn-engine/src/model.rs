//! A loaded model and its id: what state files record so a state is never resumed on other
//! weights. The family comes from the model kit's registry (each family crate linked into the
//! binary registers itself): nothing here names one.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use msrnn_core::{CausalLm, ModelInfo};
use msrnn_modelkit::{Family, LoadOptions, Model, Tokenizer, WeightFormat};
use serde_json::json;

use crate::error::{Error, Result};

/// The reference model `scripts/fetch-model.sh` fetches; preferred when `models/` holds several.
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `rel` (a file or folder) in the current directory or the nearest parent that has it: how the
/// faces find the fetched texts (`data/...`) without being told where.
pub fn find_up(rel: &str) -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors().map(|d| d.join(rel)).find(|p| p.exists())
}

/// Where [`find_model`] looked and what it found.
#[derive(Debug, Clone, Default)]
pub struct ModelSearch {
    /// The model every face loads when none is named.
    pub found: Option<PathBuf>,
    /// Models in the folder it was found in (more than one: say which was chosen).
    pub candidates: usize,
    /// The `models/` folders looked at (for the error when nothing was found).
    pub looked: Vec<PathBuf>,
}

/// The default model, the same for every face: in the nearest `models/` folder of `dir` or a
/// parent that holds one, the reference model if present, else the first `.gguf` file or Hugging
/// Face directory (`config.json`) by name.
pub fn find_model(dir: &Path) -> Result<ModelSearch> {
    let mut search = ModelSearch::default();
    for d in dir.ancestors() {
        let models = d.join("models");
        if !models.is_dir() {
            continue;
        }
        let list = std::fs::read_dir(&models).map_err(|e| io_err(&models, e))?;
        search.looked.push(models);
        let mut found: Vec<PathBuf> = list
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                (p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")))
                    || (p.is_dir() && p.join("config.json").is_file())
            })
            .collect();
        found.sort();
        if let Some(p) = found.iter().find(|p| p.file_name().is_some_and(|n| n == DEFAULT_MODEL)).or(found.first()) {
            search.found = Some(p.clone());
            search.candidates = found.len();
            return Ok(search);
        }
    }
    Ok(search)
}

/// A loaded model with everything the faces report about it.
pub struct LoadedModel {
    /// Shared so a server's engine thread and its request handlers (tokenizing) hold the same one.
    pub lm: Arc<dyn Model>,
    pub path: PathBuf,
    /// Identifies the weights for state files: file name, size, a digest of its first bytes, and
    /// the weight format (the cached keys/values depend on it).
    pub id: String,
    pub weights: WeightFormat,
    pub load_time: Duration,
}

impl LoadedModel {
    pub fn model(&self) -> &dyn CausalLm {
        &*self.lm
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        self.lm.tokenizer()
    }
    pub fn info(&self) -> &ModelInfo {
        self.lm.info()
    }
    /// The registry entry of the model's family (its baseline, for `bench`).
    pub fn family(&self) -> Option<&'static Family> {
        msrnn_modelkit::family(&self.info().family)
    }
    /// The file name without `.gguf` (or the directory name): what the user knows the model by.
    pub fn short_name(&self) -> String {
        let p = if self.path.is_file() && self.path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            self.path.file_stem()
        } else {
            self.path.file_name()
        };
        p.map_or_else(|| self.info().name.clone(), |n| n.to_string_lossy().into_owned())
    }
    /// A short description for headings: `SmolLM2-135M-Instruct.Q4_1 (llama, Q8_0)`.
    pub fn describe(&self) -> String {
        format!("{} ({}, {})", self.short_name(), self.info().family, self.lm.weight_kinds())
    }
    /// Everything about the model a result file needs to be reproduced.
    pub fn to_json(&self) -> serde_json::Value {
        let i = self.info();
        json!({
            "path": self.path.display().to_string(),
            "id": self.id,
            "name": i.name,
            "family": i.family,
            "weights": self.weights.to_string(),
            "matmul": self.lm.weight_kinds().to_string(),
            "layers": i.num_layers,
            "heads": i.num_heads,
            "kv_heads": i.num_kv_heads,
            "head_dim": i.head_dim,
            "vocab": i.vocab_size,
            "max_context": i.max_context,
            "kv_bytes_per_token": i.kv_bytes_per_token(),
        })
    }
}

/// Loads the model at `path` (a `.gguf` file or a Hugging Face directory) with its family's
/// adapter, and names it ([`model_id`]).
pub fn load(path: &Path, weights: WeightFormat, device: &Device) -> Result<LoadedModel> {
    let _span = tracing::info_span!("load", path = %path.display()).entered();
    let t0 = Instant::now();
    let lm = msrnn_modelkit::load_model(path, &LoadOptions { weights, device: device.clone() })?;
    let id = model_id(path, weights)?;
    let load_time = t0.elapsed();
    tracing::info!(%id, secs = load_time.as_secs_f64(), "model loaded");
    Ok(LoadedModel { lm: Arc::from(lm), path: path.to_path_buf(), id, weights, load_time })
}

pub use msrnn_core::util::{fnv64, FNV_OFFSET};

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io { path: path.display().to_string(), reason: format!("cannot read it: {e}") }
}

/// FNV-1a of the first `limit` bytes of a file.
pub fn digest_head(path: &Path, limit: u64, h: u64) -> Result<u64> {
    let mut buf = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut buf)).map_err(|e| io_err(path, e))?;
    Ok(fnv64(&buf, h))
}

/// `name [size bytes, head fnv64 digest, weights format]`: the digest covers the first 4 MiB (the
/// GGUF header and metadata, and the first tensors), which is cheap and tells files apart.
pub fn model_id(path: &Path, weights: WeightFormat) -> Result<String> {
    const HEAD: u64 = 4 << 20;
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let (size, digest) = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| io_err(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors" || e == "json"))
            .collect();
        files.sort();
        let mut size = 0;
        let mut h = FNV_OFFSET;
        for f in &files {
            size += std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            h = digest_head(f, HEAD, h)?;
        }
        (size, h)
    } else {
        let size = std::fs::metadata(path).map_err(|e| io_err(path, e))?.len();
        (size, digest_head(path, HEAD, FNV_OFFSET)?)
    };
    Ok(format!("{name} [{size} bytes, head fnv64 {digest:016x}, weights {weights}]"))
}
