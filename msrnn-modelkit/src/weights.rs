//! Where weights come from (a GGUF file or a Hugging Face directory of safetensors) and in which
//! form they are kept ([`WeightFormat`]).
//!
//! Families ask for tensors by their GGUF names (`token_embd.weight`, `blk.3.attn_q.weight`: see
//! [`blk`]), whatever the file: a safetensors source translates them through the family's
//! [`NameMap`]. Shapes are checked, and every 2-D matrix becomes a [`Linear`].

use std::cell::RefCell;
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::linear::Linear;

/// How the attention and MLP matrices (and the output head) are kept in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// The fast choice: on the CPU each matrix as stored when msrnn's kernels read its blocks (GGUF
    /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K), other block formats re-quantized to Q8_0 at load, dense ones kept f32; on
    /// other devices as stored. Safetensors, which are never quantized, stay f32.
    #[default]
    Auto,
    /// As stored, always (block formats the CPU kernels lack run on candle's kernels); safetensors
    /// are widened to f32.
    Native,
    /// Re-quantized to Q8_0 at load (the file's Q8_0 matrices are kept as they are).
    Q8_0,
    /// Dequantized to f16; activations are cast to f16 for each matmul.
    F16,
    /// Dequantized to f32: the reference for exactness tests.
    F32,
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightFormat::Auto => "auto",
            WeightFormat::Native => "native",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::F16 => "f16",
            WeightFormat::F32 => "f32",
        })
    }
}

impl FromStr for WeightFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(WeightFormat::Auto),
            "native" => Ok(WeightFormat::Native),
            "q8_0" | "q8-0" | "q80" => Ok(WeightFormat::Q8_0),
            "f16" => Ok(WeightFormat::F16),
            "f32" => Ok(WeightFormat::F32),
            _ => Err(Error::UnknownWeightFormat(s.to_string())),
        }
    }
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub weights: WeightFormat,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { weights: WeightFormat::Auto, device: Device::Cpu }
    }
}

/// The GGUF name of a tensor of block `layer`: `blk(3, "attn_q")` is `blk.3.attn_q.weight`.
pub fn blk(layer: usize, name: &str) -> String {
    format!("blk.{layer}.{name}.weight")
}

/// How a family's Hugging Face checkpoints name the tensors it asks for by GGUF name: pairs of
/// (GGUF stem, safetensors stem), where a stem is the name without its last component (`.weight`,
/// `.bias`, which is kept) and `#` stands for the layer number, e.g.
/// `("blk.#.attn_q", "model.layers.#.self_attn.q_proj")`. Names no pair matches are looked up as
/// they are.
pub type NameMap = &'static [(&'static str, &'static str)];

/// `name`'s name in a checkpoint named by `map`.
fn translate(map: NameMap, name: &str) -> String {
    let Some((stem, last)) = name.rsplit_once('.') else { return name.to_string() };
    for &(gguf, hf) in map {
        let layer = match gguf.split_once('#') {
            None if gguf == stem => None,
            None => continue,
            Some((pre, post)) => match stem.strip_prefix(pre).and_then(|s| s.strip_suffix(post)) {
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Some(n),
                _ => continue,
            },
        };
        let hf = match layer {
            Some(n) => hf.replace('#', n),
            None => hf.to_string(),
        };
        return format!("{hf}.{last}");
    }
    name.to_string()
}

enum Source {
    Gguf(GgufTensors),
    Safetensors { vb: candle_nn::VarBuilder<'static>, names: NameMap },
}

/// An open GGUF file's tensor table and a reader for their data.
struct GgufTensors {
    content: gguf_file::Content,
    reader: RefCell<BufReader<File>>,
}

impl GgufTensors {
    /// A tensor's quantized blocks, shape-checked (`shape` in candle's order: `[out, in]`).
    fn read(&self, path: &Path, device: &Device, name: &str, shape: &[usize]) -> Result<Arc<QTensor>> {
        let Some(ti) = self.content.tensor_infos.get(name) else {
            return Err(Error::MissingTensor { path: path.into(), tensor: name.into() });
        };
        check_shape(path, name, ti.shape.dims(), shape)?;
        let q = ti
            .read(&mut *self.reader.borrow_mut(), self.content.tensor_data_offset, device)
            .map_err(|e| read_err(path, name, e))?;
        Ok(Arc::new(q))
    }
}

fn read_err(path: &Path, name: &str, e: candle_core::Error) -> Error {
    Error::TensorRead { path: path.into(), tensor: name.into(), source: Box::new(e) }
}

fn check_shape(path: &Path, name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got == want {
        return Ok(());
    }
    Err(Error::TensorShape { path: path.into(), tensor: name.into(), expected: want.into(), got: got.into() })
}

/// The tensors of one model, read on demand by GGUF name, shape-checked, and turned into
/// [`Linear`]s in the requested [`WeightFormat`]: what every family loads its weights with.
pub struct Weights {
    path: PathBuf,
    source: Source,
    format: WeightFormat,
    device: Device,
}

impl Weights {
    /// The tensors of an open GGUF file. Checks up front that every tensor fits in the file, so a
    /// truncated download is reported naming the first tensor that does not fit.
    pub fn gguf(path: &Path, content: gguf_file::Content, file: File, opts: &LoadOptions) -> Result<Self> {
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut infos: Vec<(&String, &gguf_file::TensorInfo)> = content.tensor_infos.iter().collect();
        infos.sort_by_key(|(_, ti)| ti.offset);
        for (name, ti) in infos {
            // A header from anywhere but `gguf::open` may hold a shape that overflows.
            let size = crate::gguf::tensor_bytes(ti).unwrap_or(u64::MAX);
            let end = content.tensor_data_offset.saturating_add(ti.offset).saturating_add(size);
            if end > file_len {
                return Err(Error::Truncated {
                    path: path.into(),
                    tensor: name.clone(),
                    needed: end,
                    available: file_len,
                });
            }
        }
        Ok(Self {
            path: path.into(),
            source: Source::Gguf(GgufTensors { content, reader: RefCell::new(BufReader::new(file)) }),
            format: opts.weights,
            device: opts.device.clone(),
        })
    }

    /// The `*.safetensors` files of a Hugging Face directory, their tensors named by `names`.
    pub fn safetensors(dir: &Path, names: NameMap, opts: &LoadOptions) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors") && p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Config { path: dir.into(), reason: "the directory has no *.safetensors files".into() });
        }
        // SAFETY: the files are memory-mapped read-only; like every mmap-based loader we rely on no
        // one truncating them while the model is loading (tensors are copied out at load).
        let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&files, DType::F32, &opts.device) }.map_err(
            |e| Error::TensorRead { path: dir.into(), tensor: "(safetensors header)".into(), source: Box::new(e) },
        )?;
        Ok(Self {
            path: dir.into(),
            source: Source::Safetensors { vb, names },
            format: opts.weights,
            device: opts.device.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn is_gguf(&self) -> bool {
        matches!(self.source, Source::Gguf(_))
    }

    /// The name the file gives the tensor a family calls `name` (its GGUF name).
    pub fn file_name(&self, name: &str) -> String {
        match &self.source {
            Source::Gguf(_) => name.to_string(),
            Source::Safetensors { names, .. } => translate(names, name),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        match &self.source {
            Source::Gguf(g) => g.content.tensor_infos.contains_key(name),
            Source::Safetensors { vb, names } => vb.contains_tensor(&translate(names, name)),
        }
    }

    fn read_err(&self, name: &str, e: candle_core::Error) -> Error {
        read_err(&self.path, name, e)
    }

    /// A dense f32 tensor (norm weights, embeddings), dequantized if stored quantized.
    pub fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match &self.source {
            Source::Gguf(g) => {
                let q = g.read(&self.path, &self.device, name, shape)?;
                q.dequantize(&self.device).map_err(|e| self.read_err(name, e))
            }
            Source::Safetensors { vb, names } => {
                let name = translate(names, name);
                if !vb.contains_tensor(&name) {
                    return Err(Error::MissingTensor { path: self.path.clone(), tensor: name });
                }
                let t = vb.get_unchecked_dtype(&name, DType::F32).map_err(|e| self.read_err(&name, e))?;
                check_shape(&self.path, &name, t.dims(), shape)?;
                Ok(t)
            }
        }
    }

    /// A `[out, in]` matrix as a [`Linear`] in the requested format.
    pub fn linear(&self, name: &str, out_dim: usize, in_dim: usize) -> Result<Linear> {
        match &self.source {
            Source::Gguf(g) => {
                let q = g.read(&self.path, &self.device, name, &[out_dim, in_dim])?;
                Linear::from_qtensor(q, self.format, name).map_err(|e| self.read_err(name, e))
            }
            Source::Safetensors { names, .. } => {
                let w = self.dense(name, &[out_dim, in_dim])?;
                let name = translate(names, name);
                Linear::from_dense(&w, self.format, &name).map_err(|e| self.read_err(&name, e))
            }
        }
    }

    /// An output head tied to the embedding matrix `name`, already read as `embeddings` (dense
    /// f32): a GGUF file's quantized blocks are read as a [`Linear`] of their own unless the format
    /// is dense, in which case the dense matrix is reused (or converted), never read twice.
    pub fn tied_head(&self, name: &str, embeddings: &Tensor) -> Result<Linear> {
        let (vocab, hidden) = embeddings.dims2().map_err(|e| self.read_err(name, e))?;
        match (self.is_gguf(), self.format) {
            (true, WeightFormat::Auto | WeightFormat::Native | WeightFormat::Q8_0) => self.linear(name, vocab, hidden),
            (_, WeightFormat::F32 | WeightFormat::Native | WeightFormat::Auto) => {
                Ok(Linear::dense_f32(embeddings.clone()))
            }
            _ => Linear::from_dense(embeddings, self.format, name).map_err(|e| self.read_err(name, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: NameMap = &[
        ("token_embd", "model.embed_tokens"),
        ("output", "lm_head"),
        ("blk.#.attn_q", "model.layers.#.self_attn.q_proj"),
        ("blk.#.ffn_norm", "model.layers.#.post_attention_layernorm"),
    ];

    #[test]
    fn gguf_names_translate_through_the_map() {
        assert_eq!(translate(MAP, "token_embd.weight"), "model.embed_tokens.weight");
        assert_eq!(translate(MAP, "output.weight"), "lm_head.weight");
        // `output` does not match `output_norm`: stems match whole.
        assert_eq!(translate(MAP, "output_norm.weight"), "output_norm.weight");
        assert_eq!(translate(MAP, &blk(0, "attn_q")), "model.layers.0.self_attn.q_proj.weight");
        assert_eq!(translate(MAP, "blk.17.attn_q.bias"), "model.layers.17.self_attn.q_proj.bias");
        assert_eq!(translate(MAP, &blk(12, "ffn_norm")), "model.layers.12.post_attention_layernorm.weight");
        // The layer must be a number, and the rest must match exactly.
        assert_eq!(translate(MAP, "blk.x.attn_q.weight"), "blk.x.attn_q.weight");
        assert_eq!(translate(MAP, "blk.1.attn_q_norm.weight"), "blk.1.attn_q_norm.weight");
        assert_eq!(translate(MAP, "plain"), "plain");
    }

    #[test]
    fn weight_format_parses_and_displays() {
        for f in [WeightFormat::Auto, WeightFormat::Native, WeightFormat::Q8_0, WeightFormat::F16, WeightFormat::F32] {
            assert_eq!(f.to_string().parse::<WeightFormat>().unwrap(), f);
        }
        assert_eq!("Q8_0".parse::<WeightFormat>().unwrap(), WeightFormat::Q8_0);
        let e = "q4".parse::<WeightFormat>().unwrap_err();
        assert!(matches!(e, Error::UnknownWeightFormat(_)) && e.to_string().contains("q8_0"), "{e}");
        let d = LoadOptions::default();
        assert_eq!(d.weights, WeightFormat::Auto);
        assert!(d.device.is_cpu());
    }
}
