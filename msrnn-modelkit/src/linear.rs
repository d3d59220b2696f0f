//! [`Linear`]: a weight matrix applied as `x W^T`, in whatever form [`WeightFormat`] chose.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::k_quants::QK8_0;
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};

use crate::weights::WeightFormat;

/// candle's fast x86 Q8_0 kernels (AVX-512 VNNI, repacked tiles) need the input dimension to be a
/// multiple of this; other widths take a generic, much slower path.
const FAST_K: usize = 256;

/// A matrix applied as `x W^T`: quantized blocks or a dense f32/f16 tensor (candle's [`QMatMul`]).
///
/// A Q8_0 matrix on CPU whose input dimension is no multiple of 256 can be zero-padded at load to
/// the next multiple, its inputs padded to match: whole zero blocks leave the weights unchanged, and
/// candle's fast kernels apply. Those kernels quantize the activations in blocks of 256 instead of
/// 32, which costs perplexity, so a family pads only where it pays (Gemma: its output head; every
/// matrix with [`WeightFormat::Fast`]). docs/performance.md has the measurements.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: QMatMul,
    /// Zero columns appended to the weight (and so to every input).
    pad: usize,
}

impl Linear {
    /// `x` `[.., in]` -> `[.., out]`.
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

    /// The rows of several matrices stacked into one (`q|k|v`, `gate|up`), so that one matmul
    /// computes them all; each row's result is the same as in its own matrix. The parts must be
    /// held the same way (format, input width, padding).
    pub fn concat(parts: &[&Linear]) -> candle_core::Result<Linear> {
        let Some(first) = parts.first() else { candle_core::bail!("Linear::concat of no matrices") };
        if parts.iter().any(|p| p.pad != first.pad || p.kind() != first.kind()) {
            let kinds: Vec<String> = parts.iter().map(|p| format!("{} (pad {})", p.kind(), p.pad)).collect();
            candle_core::bail!("Linear::concat of matrices held differently: {kinds:?}");
        }
        let dense = |f: &dyn Fn(&QMatMul) -> Option<Tensor>| -> candle_core::Result<Tensor> {
            let ts = parts.iter().map(|p| f(&p.inner).expect("same kind")).collect::<Vec<_>>();
            Tensor::cat(&ts, 0)
        };
        let inner = match &first.inner {
            QMatMul::QTensor(q) => {
                let cols = q.shape().dims2()?.1;
                let mut rows = 0;
                let mut bytes = Vec::new();
                for p in parts {
                    let QMatMul::QTensor(p) = &p.inner else { unreachable!("same kind") };
                    let (r, c) = p.shape().dims2()?;
                    if c != cols {
                        candle_core::bail!("Linear::concat: input widths {c} and {cols} differ");
                    }
                    rows += r;
                    bytes.extend_from_slice(&p.data()?);
                }
                let storage = QStorage::from_data(Cow::Owned(bytes), &q.device(), q.dtype())?;
                QMatMul::QTensor(Arc::new(QTensor::new(storage, (rows, cols))?))
            }
            QMatMul::Tensor(_) => QMatMul::Tensor(dense(&|m| match m {
                QMatMul::Tensor(t) => Some(t.clone()),
                _ => None,
            })?),
            QMatMul::TensorF16(_) => QMatMul::TensorF16(dense(&|m| match m {
                QMatMul::TensorF16(t) => Some(t.clone()),
                _ => None,
            })?),
        };
        Ok(Self { inner, pad: first.pad })
    }

    pub(crate) fn new(inner: QMatMul) -> Self {
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
    pub(crate) fn from_qtensor(
        q: Arc<QTensor>,
        format: WeightFormat,
        name: &str,
        pad_k: bool,
    ) -> candle_core::Result<Self> {
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
    pub(crate) fn from_dense(w: &Tensor, format: WeightFormat, name: &str, pad_k: bool) -> candle_core::Result<Self> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, seed: f32) -> Tensor {
        let data: Vec<f32> = (0..rows * cols).map(|i| ((i as f32 + seed) * 0.37).sin()).collect();
        Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap()
    }

    /// Each row of a concatenation gives what it gives in its own matrix, in every format.
    #[test]
    fn concat_stacks_rows_without_changing_them() {
        let x = matrix(3, 64, 0.5);
        let (a, b) = (matrix(5, 64, 1.0), matrix(7, 64, 2.0));
        for format in [WeightFormat::F32, WeightFormat::F16, WeightFormat::Q8_0, WeightFormat::Fast] {
            let la = Linear::from_dense(&a, format, "a", false).unwrap();
            let lb = Linear::from_dense(&b, format, "b", false).unwrap();
            let ab = Linear::concat(&[&la, &lb]).unwrap();
            assert_eq!((ab.kind(), ab.padding()), (la.kind(), la.padding()), "{format}");
            let want = Tensor::cat(&[la.forward(&x).unwrap(), lb.forward(&x).unwrap()], 1).unwrap();
            let got = ab.forward(&x).unwrap();
            assert_eq!(got.dims(), &[3, 12]);
            let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(d, 0.0, "{format}");
        }
        let f32m = Linear::from_dense(&a, WeightFormat::F32, "a", false).unwrap();
        let q8 = Linear::from_dense(&b, WeightFormat::Q8_0, "b", false).unwrap();
        assert!(Linear::concat(&[&f32m, &q8]).is_err());
        let narrow = Linear::from_dense(&matrix(2, 32, 3.0), WeightFormat::Q8_0, "c", false).unwrap();
        assert!(Linear::concat(&[&q8, &narrow]).is_err());
        assert!(Linear::concat(&[]).is_err());
    }

    #[test]
    fn padding_changes_no_row_and_rows_come_back_unpadded() {
        let w = matrix(4, 64, 0.0);
        let plain = Linear::from_dense(&w, WeightFormat::F32, "w", false).unwrap();
        let padded = Linear::from_dense(&w, WeightFormat::Q8_0, "w", true).unwrap();
        assert_eq!((plain.padding(), padded.padding()), (0, 192));
        let ids = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
        let (r, rp) = (plain.rows(&ids).unwrap(), padded.rows(&ids).unwrap());
        assert_eq!(rp.dims(), &[2, 64]);
        let d = (r - rp).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 0.01, "Q8_0 rows are the f32 rows to within quantization: {d}");
    }
}
