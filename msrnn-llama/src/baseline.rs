//! The family's baseline for `msrnn bench`: candle-transformers' own quantized LLaMA on the same
//! GGUF file, with its full cache (concatenated every step) and its position limit.

use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};
use msrnn_modelkit::{Baseline, BaselineModel, Error, Result, WeightFormat};

/// candle's `quantized_llama`.
pub struct CandleLlama;

impl Baseline for CandleLlama {
    fn name(&self) -> &'static str {
        "candle quantized_llama"
    }

    fn description(&self) -> &'static str {
        "candle's own LLaMA on the same file, with a full cache that is concatenated (copied) every step"
    }

    fn formats(&self) -> &'static [WeightFormat] {
        &[WeightFormat::Native, WeightFormat::Q8_0, WeightFormat::F32]
    }

    fn max_positions(&self) -> usize {
        MAX_SEQ_LEN
    }

    /// GGUF files only (`ModelWeights` has no safetensors loader).
    fn runs(&self, path: &Path) -> bool {
        path.is_file() && msrnn_modelkit::hf_dir(path).is_ok_and(|d| d.is_none())
    }

    /// `native` keeps the file's blocks; `q8_0` / `f32` convert every 2-D matrix in memory
    /// (through a GGUF written to a buffer, since `ModelWeights` loads only from a GGUF).
    fn load(&self, path: &Path, weights: WeightFormat, device: &Device) -> Result<Box<dyn BaselineModel>> {
        let bad = |e: candle_core::Error| Error::TensorRead {
            path: path.into(),
            tensor: "(candle quantized_llama)".into(),
            source: Box::new(e),
        };
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let ct = gguf_file::Content::read(&mut f).map_err(bad)?;
        let target = match weights {
            WeightFormat::Q8_0 => GgmlDType::Q8_0,
            WeightFormat::F32 => GgmlDType::F32,
            _ => {
                let kind = ct
                    .tensor_infos
                    .get("blk.0.attn_q.weight")
                    .map_or("native".into(), |t| format!("{:?}", t.ggml_dtype));
                let model = ModelWeights::from_gguf(ct, &mut f, device).map_err(bad)?;
                return Ok(Box::new(Run { model, kind, device: device.clone() }));
            }
        };
        let cpu = Device::Cpu;
        let mut tensors: Vec<(String, QTensor)> = Vec::new();
        let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let t = ct.tensor(&mut f, name, &cpu).map_err(bad)?;
            let dims = t.shape().dims().to_vec();
            let t = if dims.len() == 2 && dims[1] % 32 == 0 && t.dtype() != target {
                QTensor::quantize(&t.dequantize(&cpu)?, target)?
            } else {
                t
            };
            tensors.push((name.clone(), t));
        }
        let mut buf = Cursor::new(Vec::new());
        let md: Vec<(&str, &gguf_file::Value)> = ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        gguf_file::write(&mut buf, &md, &ts).map_err(bad)?;
        drop(tensors);
        buf.set_position(0);
        let ct = gguf_file::Content::read(&mut buf).map_err(bad)?;
        let model = ModelWeights::from_gguf(ct, &mut buf, device).map_err(bad)?;
        Ok(Box::new(Run { model, kind: format!("{target:?}"), device: device.clone() }))
    }
}

struct Run {
    model: ModelWeights,
    kind: String,
    device: Device,
}

impl BaselineModel for Run {
    fn kind(&self) -> String {
        self.kind.clone()
    }

    fn clear(&mut self) {
        self.model.clear_kv_cache();
    }

    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor> {
        let x = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        Ok(self.model.forward(&x, pos)?)
    }
}
