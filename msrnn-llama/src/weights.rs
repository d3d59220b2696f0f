//! Where weights come from (a GGUF file or safetensors files) and in which form they are kept
//! ([`WeightFormat`]). Blocks ask for tensors by their role ([`Tn`]); this module maps roles to the
//! file's names, checks shapes, and turns every 2-D matrix into a [`Linear`].

use std::cell::RefCell;
use std::fmt;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::error::{Error, Result};

/// How the attention and MLP matrices (and the output head) are kept in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As stored: a GGUF file keeps its quantized blocks (e.g. Q4_1); safetensors, which are never
    /// quantized, are widened to f32.
    #[default]
    Native,
    /// Re-quantized to Q8_0 at load (fast SIMD kernels on CPU, close to the original weights).
    Q8_0,
    /// Dequantized to f16; activations are cast to f16 for each matmul.
    F16,
    /// Dequantized to f32: the reference for exactness tests.
    F32,
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
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
        Self { weights: WeightFormat::Native, device: Device::Cpu }
    }
}

/// A matrix applied as `x W^T`: quantized blocks or a dense f32/f16 tensor (candle's [`QMatMul`]).
#[derive(Debug, Clone)]
pub struct Linear {
    inner: QMatMul,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.inner.forward(x)
    }

    /// Describes how the weight is held (`Q4_1`, `Q8_0`, `f32`, `f16`).
    pub fn kind(&self) -> String {
        match &self.inner {
            QMatMul::QTensor(q) => format!("{:?}", q.dtype()),
            QMatMul::Tensor(t) => t.dtype().as_str().to_string(),
            QMatMul::TensorF16(_) => "f16".into(),
        }
    }

    /// From a quantized tensor, converted to `format`.
    fn from_qtensor(q: Arc<QTensor>, format: WeightFormat, name: &str) -> candle_core::Result<Self> {
        let dev = q.device();
        let inner = match format {
            WeightFormat::Native => QMatMul::from_arc(q)?,
            WeightFormat::F32 => QMatMul::Tensor(q.dequantize(&dev)?),
            WeightFormat::F16 => QMatMul::TensorF16(q.dequantize_f16(&dev)?),
            WeightFormat::Q8_0 => {
                if q.dtype() == GgmlDType::Q8_0 {
                    QMatMul::QTensor(q)
                } else {
                    return Self::from_dense(&q.dequantize(&dev)?, format, name);
                }
            }
        };
        Ok(Self { inner })
    }

    /// From a dense `[out, in]` tensor, converted to `format` (`Native` keeps f32).
    fn from_dense(w: &Tensor, format: WeightFormat, name: &str) -> candle_core::Result<Self> {
        let inner = match format {
            WeightFormat::Native | WeightFormat::F32 => QMatMul::Tensor(w.to_dtype(DType::F32)?),
            WeightFormat::F16 => QMatMul::TensorF16(w.to_dtype(DType::F16)?),
            WeightFormat::Q8_0 => {
                let cols = w.dim(1)?;
                if !cols.is_multiple_of(GgmlDType::Q8_0.block_size()) {
                    tracing::warn!(tensor = name, cols, "rows not a multiple of the Q8_0 block; kept in f32");
                    QMatMul::Tensor(w.to_dtype(DType::F32)?)
                } else {
                    QMatMul::QTensor(Arc::new(QTensor::quantize(&w.to_dtype(DType::F32)?, GgmlDType::Q8_0)?))
                }
            }
        };
        Ok(Self { inner })
    }
}

/// The role of a tensor, independent of the file's naming scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tn {
    TokEmbd,
    OutputNorm,
    Output,
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    AttnO,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnDown,
}

enum Source {
    Gguf { content: gguf_file::Content, reader: RefCell<BufReader<std::fs::File>>, file_len: u64 },
    Safetensors { vb: candle_nn::VarBuilder<'static> },
}

/// Reads the tensors of one model file (or directory) by role.
pub(crate) struct WeightSource {
    path: PathBuf,
    source: Source,
    pub format: WeightFormat,
    pub device: Device,
}

impl WeightSource {
    pub fn gguf(
        path: &Path,
        content: gguf_file::Content,
        file: std::fs::File,
        opts: &crate::LoadOptions,
    ) -> Result<Self> {
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        // A truncated file is reported up front, naming the first tensor that does not fit.
        let mut infos: Vec<(&String, &gguf_file::TensorInfo)> = content.tensor_infos.iter().collect();
        infos.sort_by_key(|(_, ti)| ti.offset);
        for (name, ti) in infos {
            let elems = ti.shape.elem_count();
            let block = ti.ggml_dtype.block_size();
            let size = (elems / block * ti.ggml_dtype.type_size()) as u64;
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
            source: Source::Gguf { content, reader: RefCell::new(BufReader::new(file)), file_len },
            format: opts.weights,
            device: opts.device.clone(),
        })
    }

    pub fn safetensors(dir: &Path, files: &[PathBuf], opts: &crate::LoadOptions) -> Result<Self> {
        // SAFETY: the files are memory-mapped read-only; like every mmap-based loader we rely on no
        // one truncating them while the model is loading (tensors are copied out at load).
        let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(files, DType::F32, &opts.device) }.map_err(
            |e| Error::TensorRead { path: dir.into(), tensor: "(safetensors header)".into(), source: Box::new(e) },
        )?;
        Ok(Self {
            path: dir.into(),
            source: Source::Safetensors { vb },
            format: opts.weights,
            device: opts.device.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_gguf(&self) -> bool {
        matches!(self.source, Source::Gguf { .. })
    }

    /// The file's name for a role.
    pub fn name(&self, tn: Tn, layer: Option<usize>) -> String {
        let l = layer.unwrap_or(0);
        match self.source {
            Source::Gguf { .. } => match tn {
                Tn::TokEmbd => "token_embd.weight".into(),
                Tn::OutputNorm => "output_norm.weight".into(),
                Tn::Output => "output.weight".into(),
                Tn::AttnNorm => format!("blk.{l}.attn_norm.weight"),
                Tn::AttnQ => format!("blk.{l}.attn_q.weight"),
                Tn::AttnK => format!("blk.{l}.attn_k.weight"),
                Tn::AttnV => format!("blk.{l}.attn_v.weight"),
                Tn::AttnO => format!("blk.{l}.attn_output.weight"),
                Tn::FfnNorm => format!("blk.{l}.ffn_norm.weight"),
                Tn::FfnGate => format!("blk.{l}.ffn_gate.weight"),
                Tn::FfnUp => format!("blk.{l}.ffn_up.weight"),
                Tn::FfnDown => format!("blk.{l}.ffn_down.weight"),
            },
            Source::Safetensors { .. } => match tn {
                Tn::TokEmbd => "model.embed_tokens.weight".into(),
                Tn::OutputNorm => "model.norm.weight".into(),
                Tn::Output => "lm_head.weight".into(),
                Tn::AttnNorm => format!("model.layers.{l}.input_layernorm.weight"),
                Tn::AttnQ => format!("model.layers.{l}.self_attn.q_proj.weight"),
                Tn::AttnK => format!("model.layers.{l}.self_attn.k_proj.weight"),
                Tn::AttnV => format!("model.layers.{l}.self_attn.v_proj.weight"),
                Tn::AttnO => format!("model.layers.{l}.self_attn.o_proj.weight"),
                Tn::FfnNorm => format!("model.layers.{l}.post_attention_layernorm.weight"),
                Tn::FfnGate => format!("model.layers.{l}.mlp.gate_proj.weight"),
                Tn::FfnUp => format!("model.layers.{l}.mlp.up_proj.weight"),
                Tn::FfnDown => format!("model.layers.{l}.mlp.down_proj.weight"),
            },
        }
    }

    pub fn contains(&self, tn: Tn, layer: Option<usize>) -> bool {
        let name = self.name(tn, layer);
        match &self.source {
            Source::Gguf { content, .. } => content.tensor_infos.contains_key(&name),
            Source::Safetensors { vb } => vb.contains_tensor(&name),
        }
    }

    fn missing(&self, name: &str) -> Error {
        Error::MissingTensor { path: self.path.clone(), tensor: name.into() }
    }

    fn check_shape(&self, name: &str, got: &[usize], expected: &[usize]) -> Result<()> {
        if got != expected {
            return Err(Error::TensorShape {
                path: self.path.clone(),
                tensor: name.into(),
                expected: expected.to_vec(),
                got: got.to_vec(),
            });
        }
        Ok(())
    }

    /// A GGUF tensor's quantized blocks, shape-checked.
    fn qtensor(&self, name: &str, shape: &[usize]) -> Result<Arc<QTensor>> {
        let Source::Gguf { content, reader, .. } = &self.source else { unreachable!("qtensor on safetensors") };
        let Some(ti) = content.tensor_infos.get(name) else { return Err(self.missing(name)) };
        self.check_shape(name, ti.shape.dims(), shape)?;
        let q = ti
            .read(&mut *reader.borrow_mut(), content.tensor_data_offset, &self.device)
            .map_err(|e| Error::TensorRead { path: self.path.clone(), tensor: name.into(), source: Box::new(e) })?;
        Ok(Arc::new(q))
    }

    /// A dense f32 tensor of the given shape (dequantized if the file is quantized).
    pub fn dense(&self, tn: Tn, layer: Option<usize>, shape: &[usize]) -> Result<Tensor> {
        let name = self.name(tn, layer);
        match &self.source {
            Source::Gguf { .. } => {
                let q = self.qtensor(&name, shape)?;
                Ok(q.dequantize(&self.device)?)
            }
            Source::Safetensors { vb } => {
                if !vb.contains_tensor(&name) {
                    return Err(self.missing(&name));
                }
                let t = vb.get_unchecked_dtype(&name, DType::F32).map_err(|e| Error::TensorRead {
                    path: self.path.clone(),
                    tensor: name.clone(),
                    source: Box::new(e),
                })?;
                self.check_shape(&name, t.dims(), shape)?;
                Ok(t)
            }
        }
    }

    /// A `[out, in]` matrix as a [`Linear`] in the requested format.
    pub fn linear(&self, tn: Tn, layer: Option<usize>, out_dim: usize, in_dim: usize) -> Result<Linear> {
        let name = self.name(tn, layer);
        let lin = match &self.source {
            Source::Gguf { .. } => {
                let q = self.qtensor(&name, &[out_dim, in_dim])?;
                Linear::from_qtensor(q, self.format, &name)
            }
            Source::Safetensors { .. } => {
                let w = self.dense(tn, layer, &[out_dim, in_dim])?;
                Linear::from_dense(&w, self.format, &name)
            }
        };
        lin.map_err(|e| Error::TensorRead { path: self.path.clone(), tensor: name, source: Box::new(e) })
    }

    /// The output head tied to the embeddings: GGUF keeps the embedding's own blocks (Q8_0 in
    /// SmolLM2) for `Native`/`Q8_0`; other cases reuse the dense embedding matrix.
    pub fn tied_head(&self, embeddings: &Tensor, vocab: usize, hidden: usize) -> Result<Linear> {
        let name = self.name(Tn::TokEmbd, None);
        let lin = match (&self.source, self.format) {
            (Source::Gguf { .. }, WeightFormat::Native | WeightFormat::Q8_0) => {
                let q = self.qtensor(&name, &[vocab, hidden])?;
                Linear::from_qtensor(q, self.format, &name)
            }
            (_, WeightFormat::F32 | WeightFormat::Native) => Ok(Linear { inner: QMatMul::Tensor(embeddings.clone()) }),
            _ => Linear::from_dense(embeddings, self.format, &name),
        };
        lin.map_err(|e| Error::TensorRead { path: self.path.clone(), tensor: name, source: Box::new(e) })
    }

    #[allow(dead_code)]
    pub fn file_len(&self) -> Option<u64> {
        match &self.source {
            Source::Gguf { file_len, .. } => Some(*file_len),
            Source::Safetensors { .. } => None,
        }
    }
}
