//! The family registry. Each family crate submits one [`Family`] with `inventory` (as built-in
//! policies do), naming the GGUF `general.architecture` values and Hugging Face `model_type`s it
//! reads; [`load_model`] opens a file with the family that claims it. Nothing here names a family.

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::gguf;
use crate::model::Model;
use crate::weights::{LoadOptions, WeightFormat};

/// A model family, registered with `inventory::submit!` by its crate (here msrnn-llama's):
///
/// ```ignore
/// msrnn_modelkit::inventory::submit! {
///     msrnn_modelkit::Family {
///         name: "llama",
///         architectures: &["llama"],
///         model_types: &["llama"],
///         load: load_boxed, // fn(&Path, &LoadOptions) -> Result<Box<dyn Model>>
///         baseline: Some(&crate::baseline::CandleLlama),
///     }
/// }
/// ```
///
/// A binary sees the families it links: it must name each family crate somewhere (`use
/// msrnn_llama as _;`), or the linker may leave the crate, and its registration, out.
pub struct Family {
    /// The family's name; its models must report it as [`msrnn_core::ModelInfo::family`] (that is
    /// how [`family`] finds the entry of a loaded model).
    pub name: &'static str,
    /// The GGUF `general.architecture` values it reads.
    pub architectures: &'static [&'static str],
    /// The `model_type` values of a Hugging Face `config.json` it reads (safetensors directories).
    pub model_types: &'static [&'static str],
    /// Loads a file (or directory) of this family.
    pub load: fn(&Path, &LoadOptions) -> Result<Box<dyn Model>>,
    /// Another implementation of the family that `msrnn bench` compares with, if there is one.
    pub baseline: Option<&'static dyn Baseline>,
}

inventory::collect!(Family);

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family")
            .field("name", &self.name)
            .field("architectures", &self.architectures)
            .field("model_types", &self.model_types)
            .field("baseline", &self.baseline.map(|b| b.name()))
            .finish()
    }
}

/// Every registered family, by name.
pub fn families() -> Vec<&'static Family> {
    let mut all: Vec<&'static Family> = inventory::iter::<Family>.into_iter().collect();
    all.sort_by_key(|f| f.name);
    all
}

/// The registered family called `name`.
pub fn family(name: &str) -> Option<&'static Family> {
    families().into_iter().find(|f| f.name == name)
}

/// The Hugging Face directory `path` names: the directory itself, or the one holding a
/// `.safetensors` file; `None` for anything else (a GGUF file, or a file that is neither, which
/// the GGUF reader then refuses with the reason).
pub fn hf_dir(path: &Path) -> Result<Option<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Ok(Some(path.into()));
    }
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let not_gguf = gguf::check_magic(path, &mut file)?.is_err();
    if not_gguf && path.extension().is_some_and(|e| e == "safetensors") {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return Ok(Some(dir.into()));
    }
    Ok(None)
}

/// The family that reads `path`: by the `model_type` of a Hugging Face directory's `config.json`,
/// else by the GGUF file's `general.architecture`. The error for a file no family claims lists
/// what the registered families read.
pub fn family_of(path: &Path) -> Result<&'static Family> {
    let all = families();
    let unknown = |path: PathBuf, what, found: &str, names: &dyn Fn(&Family) -> &[&str]| {
        let mut supported: Vec<&str> = all.iter().flat_map(|f| names(f).iter().copied()).collect();
        supported.sort_unstable();
        let supported = if supported.is_empty() { "no family is registered".into() } else { supported.join(", ") };
        Error::UnknownFamily { path, what, found: found.into(), supported }
    };
    if let Some(dir) = hf_dir(path)? {
        let config = dir.join("config.json");
        let text = std::fs::read_to_string(&config).map_err(|e| Error::io(&config, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Config { path: config.clone(), reason: format!("not valid JSON: {e}") })?;
        let Some(found) = json.get("model_type").and_then(|v| v.as_str()) else {
            return Err(Error::MissingMetadata { path: config, key: "model_type".into() });
        };
        return all
            .iter()
            .find(|f| f.model_types.contains(&found))
            .copied()
            .ok_or_else(|| unknown(config, "model_type", found, &|f| f.model_types));
    }
    let arch = gguf::architecture(path)?;
    all.iter()
        .find(|f| f.architectures.contains(&arch.as_str()))
        .copied()
        .ok_or_else(|| unknown(path.into(), "GGUF architecture", &arch, &|f| f.architectures))
}

/// Loads the model at `path` (a GGUF file, or a Hugging Face directory or one of its
/// `.safetensors` files) with the registered family that reads it.
pub fn load_model(path: &Path, opts: &LoadOptions) -> Result<Box<dyn Model>> {
    let family = family_of(path)?;
    let model = (family.load)(path, opts)?;
    let i = model.info();
    debug_assert_eq!(i.family, family.name, "a family's models report its registry name");
    tracing::info!(
        path = %path.display(), family = family.name, name = %i.name, layers = i.num_layers, heads = i.num_heads,
        kv_heads = i.num_kv_heads, format = %model.weight_format(), matmuls = %model.weight_kinds(), "loaded"
    );
    Ok(model)
}

/// Another implementation of a family run on the same file, for `msrnn bench` to compare with
/// (e.g. candle-transformers' own model of the family). It keeps its own cache.
pub trait Baseline: Sync {
    /// What its rows are called (`candle quantized_llama`).
    fn name(&self) -> &'static str;
    /// What it is and how it caches, for the notes under the bench table.
    fn description(&self) -> &'static str;
    /// The weight formats it can hold its matrices in.
    fn formats(&self) -> &'static [WeightFormat];
    /// How many positions it can run (its cache stops there).
    fn max_positions(&self) -> usize;
    /// Whether it can run the model at `path` (e.g. GGUF files only).
    fn runs(&self, path: &Path) -> bool;
    /// Loads the model at `path` with its matrices held in `weights`.
    fn load(&self, path: &Path, weights: WeightFormat, device: &Device) -> Result<Box<dyn BaselineModel>>;
}

/// A loaded [`Baseline`].
pub trait BaselineModel {
    /// How its matrices are held (`Q4_1`, `Q8_0`, ...).
    fn kind(&self) -> String;
    /// Forgets every token fed so far.
    fn clear(&mut self);
    /// Feeds `tokens` at positions `pos..` and returns the last one's logits.
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor>;
}
