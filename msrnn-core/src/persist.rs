//! Saving and resuming a state. Possible only because the state is finite: a conversation's whole
//! memory is C tokens per layer, a file of a few megabytes.
//!
//! Format: one safetensors file. Tensors `layer.{i}.k` / `layer.{i}.v` (the slot buffers as they
//! are, so slot order — and with it every float summation order — is identical after resuming),
//! `layer.{i}.positions` (i64), `layer.{i}.live` (u8), `layer.{i}.policy` (f64, the policy's
//! bookkeeping). Header metadata: format version, model id, policy spec, capacity, tokens seen.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::positions::Positions;
use crate::spec::PolicySpec;
use crate::state::{Capacity, MsrnnState};

/// Version 2 added the position mode; version 1 files (always absolute) still load.
const FORMAT: u32 = 2;

/// What a state file says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateHeader {
    pub format: u32,
    /// Identifies the model (the adapter's choice: file name plus a digest of its metadata).
    pub model: String,
    pub policy: PolicySpec,
    pub capacity: Capacity,
    pub tokens_seen: u64,
    pub num_layers: usize,
    /// How keys were placed: rotated at their stream position, or stored unrotated (cache mode).
    #[serde(default)]
    pub positions: Positions,
}

impl MsrnnState {
    /// Writes the state to `path`.
    pub fn save(&self, path: &Path, model: &str, policy: &PolicySpec) -> Result<()> {
        let header = StateHeader {
            format: FORMAT,
            model: model.to_string(),
            policy: policy.clone(),
            capacity: self.capacity(),
            tokens_seen: self.tokens_seen(),
            num_layers: self.num_layers(),
            positions: self.positions_mode(),
        };
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (i, (l, p)) in self.layers.iter().zip(&self.policies).enumerate() {
            let n = l.num_slots();
            let dev = &Device::Cpu;
            let (k, v) = l.kv()?;
            tensors.push((format!("layer.{i}.k"), k));
            tensors.push((format!("layer.{i}.v"), v));
            let pos: Vec<i64> = l.positions.iter().map(|&x| x as i64).collect();
            tensors.push((format!("layer.{i}.positions"), Tensor::from_vec(pos, n, dev)?));
            let live: Vec<u8> = l.live.iter().map(|&x| x as u8).collect();
            tensors.push((format!("layer.{i}.live"), Tensor::from_vec(live, n, dev)?));
            let ps = p.save_state();
            let len = ps.len();
            tensors.push((format!("layer.{i}.policy"), Tensor::from_vec(ps, len, dev)?));
        }
        let meta = HashMap::from([("msrnn".to_string(), serde_json::to_string(&header).expect("serialisable"))]);
        let views: Vec<(String, Tensor)> =
            tensors.into_iter().map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?))).collect::<Result<_>>()?;
        safetensors::tensor::serialize_to_file(views.iter().map(|(n, t)| (n.as_str(), t)), Some(meta), path)
            .map_err(|e| Error::StateFile(format!("{}: {e}", path.display())))
    }

    /// Reads only the header of a state file.
    pub fn read_header(path: &Path) -> Result<StateHeader> {
        let bytes = std::fs::read(path).map_err(|e| Error::StateFile(format!("{}: {e}", path.display())))?;
        header_of(&bytes, path)
    }

    /// Replaces this (freshly created) state with the one saved at `path`, refusing a file from
    /// another model, policy or capacity.
    pub fn load(&mut self, path: &Path, model: &str, policy: &PolicySpec) -> Result<StateHeader> {
        let bytes = std::fs::read(path).map_err(|e| Error::StateFile(format!("{}: {e}", path.display())))?;
        let h = header_of(&bytes, path)?;
        let refuse = |what: &str, saved: String, now: String| {
            Err(Error::StateFile(format!(
                "{} was saved with {what} `{saved}`, but this run uses `{now}`",
                path.display()
            )))
        };
        if !(1..=FORMAT).contains(&h.format) {
            return refuse("format version", h.format.to_string(), FORMAT.to_string());
        }
        if h.positions != self.positions_mode() {
            return refuse("positions", h.positions.to_string(), self.positions_mode().to_string());
        }
        if h.model != model {
            return refuse("model", h.model, model.to_string());
        }
        if &h.policy != policy {
            return refuse("policy", h.policy.to_string(), policy.to_string());
        }
        if h.capacity != self.capacity() {
            return refuse("capacity", h.capacity.to_string(), self.capacity().to_string());
        }
        if h.num_layers != self.num_layers() {
            return refuse("layer count", h.num_layers.to_string(), self.num_layers().to_string());
        }
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::StateFile(format!("{}: {e}", path.display())))?;
        let get = |name: String| -> Result<Tensor> {
            let view = st.tensor(&name).map_err(|e| Error::StateFile(format!("{}: {name}: {e}", path.display())))?;
            Ok(candle_core::safetensors::Load::load(&view, &Device::Cpu)?)
        };
        for i in 0..self.num_layers() {
            let dtype = self.layers[i].dtype();
            let k = get(format!("layer.{i}.k"))?;
            if k.dtype() != dtype {
                return refuse("key dtype", k.dtype().as_str().into(), dtype.as_str().into());
            }
            let (kh, _, kd) = k.dims3()?;
            let (sh, sd) = (self.layers[i].num_kv_heads(), self.layers[i].head_dim());
            if (kh, kd) != (sh, sd) {
                return refuse("KV shape", format!("{kh}x{kd}"), format!("{sh}x{sd}"));
            }
            let v = get(format!("layer.{i}.v"))?;
            let pos: Vec<u64> =
                get(format!("layer.{i}.positions"))?.to_vec1::<i64>()?.into_iter().map(|x| x as u64).collect();
            let live: Vec<bool> =
                get(format!("layer.{i}.live"))?.to_vec1::<u8>()?.into_iter().map(|x| x != 0).collect();
            let pol = get(format!("layer.{i}.policy"))?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            self.layers[i].restore(k, v, pos, live)?;
            let p = &mut self.policies[i];
            p.load_state(&pol).map_err(|e| Error::from_policy(e, p.name(), i))?;
        }
        self.set_tokens_seen(h.tokens_seen);
        Ok(h)
    }
}

fn header_of(bytes: &[u8], path: &Path) -> Result<StateHeader> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::StateFile(format!("{} is not a state file: {e}", path.display())))?;
    let json =
        meta.metadata().as_ref().and_then(|m| m.get("msrnn")).ok_or_else(|| {
            Error::StateFile(format!("{} is a safetensors file but not an msrnn state", path.display()))
        })?;
    serde_json::from_str(json).map_err(|e| Error::StateFile(format!("{}: bad header: {e}", path.display())))
}
