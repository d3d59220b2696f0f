//! [`Linear`]: a weight matrix applied as `x W^T`, in whatever form [`WeightFormat`] chose.
//!
//! On the CPU, matrices in block formats msrnn-kernels reads (GGUF Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//! Q4_K, Q5_K, Q6_K) run on its kernels: the file's own blocks or blocks re-quantized at load, activations quantized in blocks of
//! 32 once per call, each row's result independent of the batch it is in. Everything else (dense
//! f32/f16 matrices, other block formats kept as stored, other devices) runs on candle.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use msrnn_kernels::{Format, QMatrix};

use crate::weights::WeightFormat;

/// A matrix applied as `x W^T` to every row of `x` (the stacked tokens of a batch step).
#[derive(Debug, Clone)]
pub struct Linear {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    /// msrnn-kernels on the CPU.
    Kernel(Arc<QMatrix>),
    /// candle's matmul: dense f32/f16, block formats the kernels lack, other devices.
    Candle(QMatMul),
}

/// The kernels' format for a GGUF block type, if they read it.
fn kernel_format(dtype: GgmlDType) -> Option<Format> {
    match dtype {
        GgmlDType::Q4_0 => Some(Format::Q4_0),
        GgmlDType::Q4_1 => Some(Format::Q4_1),
        GgmlDType::Q5_0 => Some(Format::Q5_0),
        GgmlDType::Q5_1 => Some(Format::Q5_1),
        GgmlDType::Q8_0 => Some(Format::Q8_0),
        GgmlDType::Q4K => Some(Format::Q4K),
        GgmlDType::Q5K => Some(Format::Q5K),
        GgmlDType::Q6K => Some(Format::Q6K),
        _ => None,
    }
}

fn kernel_err(e: msrnn_kernels::KernelError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl Linear {
    /// `x` `[rows, in]` (or `[.., in]`) -> `[rows, out]` (`[.., out]`).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.inner {
            Inner::Candle(m) => m.forward(x),
            Inner::Kernel(m) => {
                let dims = x.dims();
                let Some((&in_dim, lead)) = dims.split_last() else { candle_core::bail!("Linear on a scalar") };
                if in_dim != m.in_dim() {
                    candle_core::bail!("Linear: input width {in_dim}, the matrix takes {}", m.in_dim());
                }
                let rows: usize = lead.iter().product();
                let host = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let mut y = vec![0f32; rows * m.out_dim()];
                m.matmul(&host, rows, &mut y);
                let mut shape = lead.to_vec();
                shape.push(m.out_dim());
                Tensor::from_vec(y, shape, &Device::Cpu)
            }
        }
    }

    /// Describes how the weight is held (`Q4_1`, `Q8_0`, `Q4_K`, `f32`, `f16`, `Q3K`, ...).
    pub fn kind(&self) -> String {
        match &self.inner {
            Inner::Kernel(m) => m.format().name().to_string(),
            Inner::Candle(QMatMul::QTensor(q)) => format!("{:?}", q.dtype()),
            Inner::Candle(QMatMul::Tensor(t)) => t.dtype().as_str().to_string(),
            Inner::Candle(QMatMul::TensorF16(_)) => "f16".into(),
        }
    }

    /// Whether the CPU kernels run this matrix.
    pub fn is_kernel(&self) -> bool {
        matches!(self.inner, Inner::Kernel(_))
    }

    /// Rows of the matrix (token embeddings, for a tied head), as f32 `[ids.len(), in]`. Quantized
    /// matrices are dequantized row by row, so the embedding table is never held twice.
    pub fn rows(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match &self.inner {
            Inner::Candle(m) => m.embedding(ids)?.to_dtype(DType::F32),
            Inner::Kernel(m) => {
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                let d = m.in_dim();
                let mut out = vec![0f32; ids.len() * d];
                for (row, &id) in out.chunks_mut(d).zip(&ids) {
                    if id as usize >= m.out_dim() {
                        candle_core::bail!("row {id} of a matrix with {} rows", m.out_dim());
                    }
                    m.dequantize_row(id as usize, row);
                }
                Tensor::from_vec(out, (ids.len(), d), &Device::Cpu)
            }
        }
    }

    /// The rows of several matrices stacked into one (`q|k|v`, `gate|up`), so that one matmul
    /// computes them all; each row's result is the same as in its own matrix. The parts must be
    /// held the same way (format and input width).
    pub fn concat(parts: &[&Linear]) -> candle_core::Result<Linear> {
        let Some(first) = parts.first() else { candle_core::bail!("Linear::concat of no matrices") };
        if parts.iter().any(|p| p.kind() != first.kind()) {
            let kinds: Vec<String> = parts.iter().map(|p| p.kind()).collect();
            candle_core::bail!("Linear::concat of matrices held differently: {kinds:?}");
        }
        let inner = match &first.inner {
            Inner::Kernel(_) => {
                let ms: Vec<&QMatrix> = parts
                    .iter()
                    .map(|p| match &p.inner {
                        Inner::Kernel(m) => m.as_ref(),
                        Inner::Candle(_) => unreachable!("same kind"),
                    })
                    .collect();
                Inner::Kernel(Arc::new(QMatrix::concat_rows(&ms).map_err(kernel_err)?))
            }
            Inner::Candle(m) => {
                let qs = |f: &dyn Fn(&QMatMul) -> Option<Tensor>| -> candle_core::Result<Tensor> {
                    let ts = parts
                        .iter()
                        .map(|p| match &p.inner {
                            Inner::Candle(m) => f(m).ok_or_else(|| candle_core::Error::Msg("same kind".into())),
                            Inner::Kernel(_) => unreachable!("same kind"),
                        })
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    Tensor::cat(&ts, 0)
                };
                Inner::Candle(match m {
                    QMatMul::Tensor(_) => QMatMul::Tensor(qs(&|m| match m {
                        QMatMul::Tensor(t) => Some(t.clone()),
                        _ => None,
                    })?),
                    QMatMul::TensorF16(_) => QMatMul::TensorF16(qs(&|m| match m {
                        QMatMul::TensorF16(t) => Some(t.clone()),
                        _ => None,
                    })?),
                    QMatMul::QTensor(q) => {
                        // Blocks of other formats: dequantize, stack, re-read as the same format.
                        let dense = qs(&|m| match m {
                            QMatMul::QTensor(q) => q.dequantize(&q.device()).ok(),
                            _ => None,
                        })?;
                        QMatMul::QTensor(Arc::new(QTensor::quantize(&dense, q.dtype())?))
                    }
                })
            }
        };
        Ok(Self { inner })
    }

    pub(crate) fn dense_f32(w: Tensor) -> Self {
        Self { inner: Inner::Candle(QMatMul::Tensor(w)) }
    }

    fn kernel(m: QMatrix) -> Self {
        Self { inner: Inner::Kernel(Arc::new(m)) }
    }

    /// From a quantized tensor read from a file, converted to `format` (see [`WeightFormat`]).
    pub(crate) fn from_qtensor(q: Arc<QTensor>, format: WeightFormat, name: &str) -> candle_core::Result<Self> {
        let dev = q.device();
        let (out_dim, in_dim) = q.shape().dims2()?;
        let stored = kernel_format(q.dtype());
        let on_cpu = dev.is_cpu();
        let dense = matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        match format {
            WeightFormat::Native | WeightFormat::Auto | WeightFormat::Q8_0 if on_cpu => {
                let keep = match format {
                    WeightFormat::Q8_0 => stored == Some(Format::Q8_0),
                    _ => stored.is_some(),
                };
                if keep {
                    let f = stored.expect("checked");
                    return Ok(Self::kernel(QMatrix::from_ggml(f, &q.data()?, out_dim, in_dim).map_err(kernel_err)?));
                }
                match format {
                    // Dense matrices stay exact; block formats the kernels lack become Q8_0.
                    WeightFormat::Auto if dense => Ok(Self::dense_f32(q.dequantize(&dev)?)),
                    WeightFormat::Native => Ok(Self { inner: Inner::Candle(QMatMul::from_arc(q)?) }),
                    _ => Self::from_dense(&q.dequantize(&dev)?, WeightFormat::Q8_0, name),
                }
            }
            WeightFormat::Native | WeightFormat::Auto => Ok(Self { inner: Inner::Candle(QMatMul::from_arc(q)?) }),
            WeightFormat::Q8_0 if q.dtype() == GgmlDType::Q8_0 => {
                Ok(Self { inner: Inner::Candle(QMatMul::QTensor(q)) })
            }
            WeightFormat::Q8_0 => Self::from_dense(&q.dequantize(&dev)?, format, name),
            WeightFormat::F32 => Ok(Self::dense_f32(q.dequantize(&dev)?)),
            WeightFormat::F16 => Ok(Self { inner: Inner::Candle(QMatMul::TensorF16(q.dequantize_f16(&dev)?)) }),
        }
    }

    /// From a dense `[out, in]` tensor, converted to `format` (`Native` and `Auto` keep f32).
    pub(crate) fn from_dense(w: &Tensor, format: WeightFormat, name: &str) -> candle_core::Result<Self> {
        match format {
            WeightFormat::Native | WeightFormat::Auto | WeightFormat::F32 => {
                Ok(Self::dense_f32(w.to_dtype(DType::F32)?))
            }
            WeightFormat::F16 => Ok(Self { inner: Inner::Candle(QMatMul::TensorF16(w.to_dtype(DType::F16)?)) }),
            WeightFormat::Q8_0 => {
                let (out_dim, in_dim) = w.dims2()?;
                if !in_dim.is_multiple_of(GgmlDType::Q8_0.block_size()) {
                    tracing::warn!(tensor = name, cols = in_dim, "rows not a multiple of the Q8_0 block; kept in f32");
                    return Ok(Self::dense_f32(w.to_dtype(DType::F32)?));
                }
                if w.device().is_cpu() {
                    let host = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    return Ok(Self::kernel(
                        QMatrix::quantize(Format::Q8_0, &host, out_dim, in_dim).map_err(kernel_err)?,
                    ));
                }
                let q = QTensor::quantize(&w.to_dtype(DType::F32)?, GgmlDType::Q8_0)?;
                Ok(Self { inner: Inner::Candle(QMatMul::QTensor(Arc::new(q))) })
            }
        }
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
        for format in [WeightFormat::F32, WeightFormat::F16, WeightFormat::Q8_0] {
            let la = Linear::from_dense(&a, format, "a").unwrap();
            let lb = Linear::from_dense(&b, format, "b").unwrap();
            let ab = Linear::concat(&[&la, &lb]).unwrap();
            assert_eq!(ab.kind(), la.kind(), "{format}");
            let want = Tensor::cat(&[la.forward(&x).unwrap(), lb.forward(&x).unwrap()], 1).unwrap();
            let got = ab.forward(&x).unwrap();
            assert_eq!(got.dims(), &[3, 12]);
            let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(d, 0.0, "{format}");
        }
        let f32m = Linear::from_dense(&a, WeightFormat::F32, "a").unwrap();
        let q8 = Linear::from_dense(&b, WeightFormat::Q8_0, "b").unwrap();
        assert!(q8.is_kernel() && !f32m.is_kernel());
        assert!(Linear::concat(&[&f32m, &q8]).is_err());
        let narrow = Linear::from_dense(&matrix(2, 32, 3.0), WeightFormat::Q8_0, "c").unwrap();
        assert!(Linear::concat(&[&q8, &narrow]).is_err());
        assert!(Linear::concat(&[]).is_err());
    }

    /// The kernels' Q8_0 matmul and rows agree with the f32 matrix to within quantization, and
    /// with candle's own Q8_0 matmul closely.
    #[test]
    fn kernel_matrices_agree_with_f32_and_candle() {
        let w = matrix(40, 96, 0.0);
        let x = matrix(5, 96, 7.0);
        let f32m = Linear::from_dense(&w, WeightFormat::F32, "w").unwrap();
        let q8 = Linear::from_dense(&w, WeightFormat::Q8_0, "w").unwrap();
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
        let candle = Linear { inner: Inner::Candle(QMatMul::QTensor(q.clone())) };
        let from_blocks = Linear::from_qtensor(q, WeightFormat::Native, "w").unwrap();
        assert!(from_blocks.is_kernel());
        let (a, b, c) = (f32m.forward(&x).unwrap(), q8.forward(&x).unwrap(), candle.forward(&x).unwrap());
        let diff =
            |u: &Tensor, v: &Tensor| (u - v).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff(&a, &b) < 0.01 * scale, "kernel vs f32: {} (max |y| {scale})", diff(&a, &b));
        assert!(diff(&b, &c) < 0.005 * scale, "kernel vs candle Q8_0: {} (max |y| {scale})", diff(&b, &c));
        assert_eq!(diff(&b, &from_blocks.forward(&x).unwrap()), 0.0, "same blocks, same result");
        let ids = Tensor::new(&[2u32, 0, 39], &Device::Cpu).unwrap();
        let (r, rq) = (f32m.rows(&ids).unwrap(), q8.rows(&ids).unwrap());
        assert_eq!(rq.dims(), &[3, 96]);
        assert!(diff(&r, &rq) < 0.01);
        assert!(q8.rows(&Tensor::new(&[40u32], &Device::Cpu).unwrap()).is_err());
        assert!(q8.forward(&matrix(1, 64, 0.0)).is_err());
    }
}
