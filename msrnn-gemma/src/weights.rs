//! Reading a GGUF file's tensors by name, with shape checks, and turning matrices into [`Linear`]s
//! in the requested [`WeightFormat`] (msrnn-llama's option, so every family loads the same way).

use std::borrow::Cow;
use std::cell::RefCell;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::k_quants::QK8_0;
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};
use msrnn_llama::{LoadOptions, WeightFormat};

use crate::error::{Error, Result};

/// candle's fast x86 Q8_0 kernels (AVX-512 VNNI, repacked tiles) need the input dimension to be a
/// multiple of this; other widths take a generic path 5-10x slower.
const FAST_K: usize = 256;

/// A matrix applied as `x W^T`: quantized blocks or a dense f32/f16 tensor (candle's [`QMatMul`]).
///
/// The output head, when held as Q8_0 with an input dimension that is not a multiple of 256
/// (Gemma 3 270M's hidden size is 640), is zero-padded to the next multiple at load and its inputs
/// padded to match. The padding adds whole zero blocks, so the weights are unchanged, and candle's
/// fast kernels apply: the 262,144 x 640 head, most of a decode step, goes from ~31 to ~17 ms.
/// Those kernels quantize the activations in blocks of 256 values instead of 32, which is why only
/// the head is padded: measured on BOS + 1024 Hamlet tokens (decode), padding the head moves the
/// perplexity by 0.0002; padding every Q8_0 matrix moves it by up to 1% (23.26 -> 23.39).
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

    /// How the weight is held (`Q5_0`, `Q8_0`, `f32`, `f16`).
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

    fn from_qtensor(q: Arc<QTensor>, format: WeightFormat, name: &str, pad_k: bool) -> candle_core::Result<Self> {
        let dev = q.device();
        let inner = match format {
            WeightFormat::Native | WeightFormat::Q8_0 if q.dtype() == GgmlDType::Q8_0 => return Self::q8_0(q, pad_k),
            WeightFormat::Native => QMatMul::from_arc(q)?,
            WeightFormat::F32 => QMatMul::Tensor(q.dequantize(&dev)?),
            WeightFormat::F16 => QMatMul::TensorF16(q.dequantize_f16(&dev)?),
            WeightFormat::Q8_0 => return Self::from_dense(&q.dequantize(&dev)?, format, name, pad_k),
        };
        Ok(Self::new(inner))
    }

    fn from_dense(w: &Tensor, format: WeightFormat, name: &str, pad_k: bool) -> candle_core::Result<Self> {
        let inner = match format {
            WeightFormat::Native | WeightFormat::F32 => QMatMul::Tensor(w.to_dtype(DType::F32)?),
            WeightFormat::F16 => QMatMul::TensorF16(w.to_dtype(DType::F16)?),
            WeightFormat::Q8_0 => {
                let cols = w.dim(1)?;
                if cols % GgmlDType::Q8_0.block_size() != 0 {
                    tracing::warn!(tensor = name, cols, "rows not a multiple of the Q8_0 block; kept in f32");
                    QMatMul::Tensor(w.to_dtype(DType::F32)?)
                } else {
                    return Self::q8_0(Arc::new(QTensor::quantize(&w.to_dtype(DType::F32)?, GgmlDType::Q8_0)?), pad_k);
                }
            }
        };
        Ok(Self::new(inner))
    }
}

/// The tensors of one GGUF file, read on demand.
pub(crate) struct GgufWeights {
    path: PathBuf,
    content: gguf_file::Content,
    reader: RefCell<BufReader<File>>,
    pub format: WeightFormat,
    pub device: Device,
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

    pub fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
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
            .map_err(|e| Error::TensorRead { path: self.path.clone(), tensor: name.into(), source: Box::new(e) })?;
        Ok(Arc::new(q))
    }

    /// A dense f32 tensor (norm weights), dequantized if stored quantized.
    pub fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let q = self.qtensor(name, shape)?;
        q.dequantize(&self.device).map_err(|e| Error::TensorRead {
            path: self.path.clone(),
            tensor: name.into(),
            source: Box::new(e),
        })
    }

    /// A `[out, in]` matrix as a [`Linear`] in the requested format.
    pub fn linear(&self, name: &str, out_dim: usize, in_dim: usize) -> Result<Linear> {
        self.matrix(name, out_dim, in_dim, false)
    }

    /// The output head (possibly tied to the embeddings): like [`GgufWeights::linear`], padded for
    /// candle's fast kernels when it is Q8_0 (see [`Linear`]).
    pub fn head(&self, name: &str, out_dim: usize, in_dim: usize) -> Result<Linear> {
        self.matrix(name, out_dim, in_dim, true)
    }

    fn matrix(&self, name: &str, out_dim: usize, in_dim: usize, pad_k: bool) -> Result<Linear> {
        let q = self.qtensor(name, &[out_dim, in_dim])?;
        Linear::from_qtensor(q, self.format, name, pad_k).map_err(|e| Error::TensorRead {
            path: self.path.clone(),
            tensor: name.into(),
            source: Box::new(e),
        })
    }
}
