//! Where weights come from (a GGUF file or safetensors files) and in which form they are kept
//! ([`WeightFormat`]). Blocks ask for tensors by their role ([`Tn`]); this module maps roles to the
//! file's names, checks shapes, and turns every 2-D matrix into a [`Linear`].

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::k_quants::QK8_0;
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};

use crate::error::{Error, Result};

/// Whether LLaMA output heads are padded for candle's fast Q8_0 kernels (see [`Linear`]). Off:
/// on SmolLM2 (hidden 576) it saves ~3 of ~25-30 ms per decoded token but moves the decode-mode
/// perplexity by +0.4-0.5% (Hamlet, 716 and 1,348 tokens), where Gemma's moves by 0.0002.
const PAD_HEAD: bool = false;

/// How the attention and MLP matrices (and the output head) are kept in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As stored: a GGUF file keeps its quantized blocks (e.g. Q4_1); safetensors, which are never
    /// quantized, are widened to f32.
    #[default]
    Native,
    /// Re-quantized to Q8_0 at load (fast SIMD kernels on CPU, close to the original weights).
    Q8_0,
    /// Q8_0 with every matrix zero-padded to a multiple of 256 input columns, so that candle's
    /// repacked AVX-512 VNNI kernels run every matmul (see [`Linear`]). Much faster on such CPUs,
    /// at a perplexity cost: those kernels quantize activations in blocks of 256 values, not 32.
    Fast,
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
            WeightFormat::Fast => "fast",
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
            "fast" | "q8_0-fast" => Ok(WeightFormat::Fast),
            "f16" => Ok(WeightFormat::F16),
            "f32" => Ok(WeightFormat::F32),
            _ => Err(Error::UnknownWeightFormat(s.to_string())),
        }
    }
}

impl WeightFormat {
    /// `Fast` is Q8_0 with every matrix padded; other formats pad only where asked.
    fn padded(self, pad_k: bool) -> (WeightFormat, bool) {
        match self {
            WeightFormat::Fast => (WeightFormat::Q8_0, true),
            f => (f, pad_k),
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

/// candle's fast x86 Q8_0 kernels (AVX-512 VNNI, repacked tiles) need the input dimension to be a
/// multiple of this; other widths take a generic path 5-10x slower.
const FAST_K: usize = 256;

/// A matrix applied as `x W^T`: quantized blocks or a dense f32/f16 tensor (candle's [`QMatMul`]).
///
/// An output head held as Q8_0 on CPU, with an input dimension that is no multiple of 256 (Gemma 3
/// 270M: 640), can be zero-padded at load to the next multiple, its inputs padded to match
/// ([`GgufWeights::head`]). Whole zero blocks leave the weights unchanged, and candle's fast kernels
/// apply: Gemma's 262,144 x 640 head goes from ~31 to ~17 ms per token. Those kernels quantize the
/// activations in blocks of 256 instead of 32, which is why only heads are padded (Gemma: the
/// perplexity moves by 0.0002 with the head padded, by up to 1% with every Q8_0 matrix padded).
#[derive(Debug, Clone)]
pub struct Linear {
    inner: QMatMul,
    /// Zero columns appended to the weight (and so to every input).
    pad: usize,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.pad == 0 {
            return self.inner.forward(x);
        }
        self.inner.forward(&x.pad_with_zeros(D::Minus1, 0, self.pad)?)
    }

    /// Describes how the weight is held (`Q4_1`, `Q8_0`, `f32`, `f16`).
    pub fn kind(&self) -> String {
        match &self.inner {
            QMatMul::QTensor(q) => format!("{:?}", q.dtype()),
            QMatMul::Tensor(t) => t.dtype().as_str().to_string(),
            QMatMul::TensorF16(_) => "f16".into(),
        }
    }

    /// Rows of the matrix (token embeddings, for a tied head), as f32 `[ids.len(), in]`. Quantized
    /// matrices are dequantized row by row, so the embedding table is never held twice.
    pub fn rows(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let r = self.inner.embedding(ids)?.to_dtype(DType::F32)?;
        if self.pad == 0 {
            return Ok(r);
        }
        let cols = r.dim(D::Minus1)? - self.pad;
        r.narrow(D::Minus1, 0, cols)?.contiguous()
    }

    /// Zero columns added to the stored weight for candle's fast kernels (0 when none).
    pub fn padding(&self) -> usize {
        self.pad
    }

    fn new(inner: QMatMul) -> Self {
        Self { inner, pad: 0 }
    }

    /// A Q8_0 matrix; with `pad_k`, padded with zero blocks to a multiple of [`FAST_K`] columns
    /// (on CPU).
    fn q8_0(q: Arc<QTensor>, pad_k: bool) -> candle_core::Result<Self> {
        let (rows, cols) = q.shape().dims2()?;
        let pad = if pad_k { cols.next_multiple_of(FAST_K) - cols } else { 0 };
        if pad == 0 || !q.device().is_cpu() {
            return Ok(Self::new(QMatMul::QTensor(q)));
        }
        let block = GgmlDType::Q8_0.type_size();
        let (row_bytes, pad_bytes) = (cols / QK8_0 * block, pad / QK8_0 * block);
        let data = q.data()?;
        let mut out = Vec::with_capacity(rows * (row_bytes + pad_bytes));
        for row in data.chunks_exact(row_bytes) {
            out.extend_from_slice(row);
            // A zero block: scale 0 and 32 zero quants.
            out.resize(out.len() + pad_bytes, 0);
        }
        // candle reinterprets the bytes as blocks (2-byte alignment); the system allocator
        // returns 16-byte-aligned buffers.
        let storage = QStorage::from_data(Cow::Owned(out), &Device::Cpu, GgmlDType::Q8_0)?;
        let padded = QTensor::new(storage, (rows, cols + pad))?;
        Ok(Self { inner: QMatMul::QTensor(Arc::new(padded)), pad })
    }

    /// From a quantized tensor, converted to `format`; `pad_k` as in [`Linear::q8_0`].
    fn from_qtensor(q: Arc<QTensor>, format: WeightFormat, name: &str, pad_k: bool) -> candle_core::Result<Self> {
        let (format, pad_k) = format.padded(pad_k);
        let dev = q.device();
        let inner = match format {
            WeightFormat::Native | WeightFormat::Q8_0 if q.dtype() == GgmlDType::Q8_0 && pad_k => {
                return Self::q8_0(q, pad_k)
            }
            WeightFormat::Native => QMatMul::from_arc(q)?,
            WeightFormat::F32 => QMatMul::Tensor(q.dequantize(&dev)?),
            WeightFormat::F16 => QMatMul::TensorF16(q.dequantize_f16(&dev)?),
            WeightFormat::Q8_0 if q.dtype() == GgmlDType::Q8_0 => QMatMul::QTensor(q),
            WeightFormat::Q8_0 => return Self::from_dense(&q.dequantize(&dev)?, format, name, pad_k),
            WeightFormat::Fast => unreachable!("normalised to padded Q8_0 above"),
        };
        Ok(Self::new(inner))
    }

    /// From a dense `[out, in]` tensor, converted to `format` (`Native` keeps f32).
    fn from_dense(w: &Tensor, format: WeightFormat, name: &str, pad_k: bool) -> candle_core::Result<Self> {
        let (format, pad_k) = format.padded(pad_k);
        let inner = match format {
            WeightFormat::Native | WeightFormat::F32 => QMatMul::Tensor(w.to_dtype(DType::F32)?),
            WeightFormat::Fast => unreachable!("normalised to padded Q8_0 above"),
            WeightFormat::F16 => QMatMul::TensorF16(w.to_dtype(DType::F16)?),
            WeightFormat::Q8_0 => {
                let cols = w.dim(1)?;
                if !cols.is_multiple_of(GgmlDType::Q8_0.block_size()) {
                    tracing::warn!(tensor = name, cols, "rows not a multiple of the Q8_0 block; kept in f32");
                    QMatMul::Tensor(w.to_dtype(DType::F32)?)
                } else {
                    let q = QTensor::quantize(&w.to_dtype(DType::F32)?, GgmlDType::Q8_0)?;
                    return Self::q8_0(Arc::new(q), pad_k);
                }
            }
        };
        Ok(Self::new(inner))
    }
}

/// The tensors of one GGUF file, read on demand by name, shape-checked, and turned into
/// [`Linear`]s in the requested [`WeightFormat`]: what every family adapter loads weights with.
pub struct GgufWeights {
    path: PathBuf,
    content: gguf_file::Content,
    reader: RefCell<BufReader<File>>,
    format: WeightFormat,
    device: Device,
}

impl GgufWeights {
    /// Checks up front that every tensor fits in the file, so a truncated download is reported
    /// naming the first tensor that does not fit.
    pub fn new(path: &Path, content: gguf_file::Content, file: File, opts: &LoadOptions) -> Result<Self> {
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut infos: Vec<(&String, &gguf_file::TensorInfo)> = content.tensor_infos.iter().collect();
        infos.sort_by_key(|(_, ti)| ti.offset);
        for (name, ti) in infos {
            let size = (ti.shape.elem_count() / ti.ggml_dtype.block_size() * ti.ggml_dtype.type_size()) as u64;
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
            content,
            reader: RefCell::new(BufReader::new(file)),
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

    pub fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn read_err(&self, name: &str, e: candle_core::Error) -> Error {
        Error::TensorRead { path: self.path.clone(), tensor: name.into(), source: Box::new(e) }
    }

    /// A tensor's quantized blocks, shape-checked (`shape` in candle's order: `[out, in]`).
    pub fn qtensor(&self, name: &str, shape: &[usize]) -> Result<Arc<QTensor>> {
        let Some(ti) = self.content.tensor_infos.get(name) else {
            return Err(Error::MissingTensor { path: self.path.clone(), tensor: name.into() });
        };
        if ti.shape.dims() != shape {
            return Err(Error::TensorShape {
                path: self.path.clone(),
                tensor: name.into(),
                expected: shape.to_vec(),
                got: ti.shape.dims().to_vec(),
            });
        }
        let q = ti
            .read(&mut *self.reader.borrow_mut(), self.content.tensor_data_offset, &self.device)
            .map_err(|e| self.read_err(name, e))?;
        Ok(Arc::new(q))
    }

    /// A dense f32 tensor (norm weights, embeddings), dequantized if stored quantized.
    pub fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.qtensor(name, shape)?.dequantize(&self.device).map_err(|e| self.read_err(name, e))
    }

    /// A `[out, in]` matrix as a [`Linear`] in the requested format.
    pub fn linear(&self, name: &str, out_dim: usize, in_dim: usize) -> Result<Linear> {
        self.matrix(name, out_dim, in_dim, false)
    }

    /// An output head (possibly tied to the embeddings): like [`GgufWeights::linear`], with `pad`
    /// zero-padded for candle's fast kernels when it is Q8_0 on CPU (see [`Linear`]).
    pub fn head(&self, name: &str, out_dim: usize, in_dim: usize, pad: bool) -> Result<Linear> {
        self.matrix(name, out_dim, in_dim, pad)
    }

    fn matrix(&self, name: &str, out_dim: usize, in_dim: usize, pad_k: bool) -> Result<Linear> {
        let q = self.qtensor(name, &[out_dim, in_dim])?;
        Linear::from_qtensor(q, self.format, name, pad_k).map_err(|e| self.read_err(name, e))
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
    Gguf(GgufWeights),
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
    pub fn gguf(weights: GgufWeights) -> Self {
        Self {
            path: weights.path().into(),
            format: weights.format(),
            device: weights.device().clone(),
            source: Source::Gguf(weights),
        }
    }

    pub fn safetensors(dir: &Path, files: &[PathBuf], opts: &LoadOptions) -> Result<Self> {
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
        matches!(self.source, Source::Gguf(_))
    }

    /// The file's name for a role.
    pub fn name(&self, tn: Tn, layer: Option<usize>) -> String {
        let l = layer.unwrap_or(0);
        match self.source {
            Source::Gguf(_) => match tn {
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
            Source::Gguf(g) => g.has(&name),
            Source::Safetensors { vb } => vb.contains_tensor(&name),
        }
    }

    fn read_err(&self, name: String, e: candle_core::Error) -> Error {
        Error::TensorRead { path: self.path.clone(), tensor: name, source: Box::new(e) }
    }

    /// A dense f32 tensor of the given shape (dequantized if the file is quantized).
    pub fn dense(&self, tn: Tn, layer: Option<usize>, shape: &[usize]) -> Result<Tensor> {
        let name = self.name(tn, layer);
        let vb = match &self.source {
            Source::Gguf(g) => return g.dense(&name, shape),
            Source::Safetensors { vb } => vb,
        };
        if !vb.contains_tensor(&name) {
            return Err(Error::MissingTensor { path: self.path.clone(), tensor: name });
        }
        let t = vb.get_unchecked_dtype(&name, DType::F32).map_err(|e| self.read_err(name.clone(), e))?;
        if t.dims() != shape {
            return Err(Error::TensorShape {
                path: self.path.clone(),
                tensor: name,
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        Ok(t)
    }

    /// A `[out, in]` matrix as a [`Linear`] in the requested format.
    pub fn linear(&self, tn: Tn, layer: Option<usize>, out_dim: usize, in_dim: usize) -> Result<Linear> {
        let name = self.name(tn, layer);
        match &self.source {
            Source::Gguf(g) if tn == Tn::Output => g.head(&name, out_dim, in_dim, PAD_HEAD),
            Source::Gguf(g) => g.linear(&name, out_dim, in_dim),
            Source::Safetensors { .. } => {
                let w = self.dense(tn, layer, &[out_dim, in_dim])?;
                let pad = tn == Tn::Output && PAD_HEAD;
                Linear::from_dense(&w, self.format, &name, pad).map_err(|e| self.read_err(name, e))
            }
        }
    }

    /// The output head tied to the embeddings: GGUF keeps the embedding's own blocks (Q8_0 in
    /// SmolLM2) for `Native`/`Q8_0`; other cases reuse the dense embedding matrix.
    pub fn tied_head(&self, embeddings: &Tensor, vocab: usize, hidden: usize) -> Result<Linear> {
        let name = self.name(Tn::TokEmbd, None);
        match (&self.source, self.format) {
            (Source::Gguf(g), WeightFormat::Native | WeightFormat::Q8_0 | WeightFormat::Fast) => {
                g.head(&name, vocab, hidden, PAD_HEAD)
            }
            (_, WeightFormat::F32 | WeightFormat::Native) => Ok(Linear::new(QMatMul::Tensor(embeddings.clone()))),
            _ => Linear::from_dense(embeddings, self.format, &name, PAD_HEAD).map_err(|e| self.read_err(name, e)),
        }
    }
}
