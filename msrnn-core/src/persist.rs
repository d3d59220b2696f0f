//! Saving and resuming a state. Possible only because the state is finite: a conversation's whole
//! memory is C tokens per layer, a file of a few megabytes.
//!
//! Format: one safetensors file. Tensors `layer.{i}.k` / `layer.{i}.v` (the slot buffers as they
//! are, so slot order — and with it every float summation order — is identical after resuming; in
//! the state's KV format: f32 or f16 `[kv_heads, slots, head_dim]`, or for q8_0 the codes as u8
//! with `layer.{i}.k_scales` / `layer.{i}.v_scales` f16 `[kv_heads, slots, blocks]`),
//! `layer.{i}.positions` (i64), `layer.{i}.live` (u8), `layer.{i}.policy` (f64, the policy's
//! bookkeeping). Header metadata: format version, model id, policy spec, capacity, tokens seen,
//! position mode, KV format.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::positions::Positions;
use crate::spec::PolicySpec;
use crate::state::{Capacity, KvBuf, KvFormat, MsrnnState};

/// Version 2 added the position mode, version 3 the KV format; older files (absolute, f32) still
/// load.
const FORMAT: u32 = 3;

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
    /// How keys and values are stored (f32 before version 3).
    #[serde(default)]
    pub kv: KvFormat,
}

impl MsrnnState {
    /// Writes the state to `path` (the bytes of [`MsrnnState::save_bytes`]).
    pub fn save(&self, path: &Path, model: &str, policy: &PolicySpec) -> Result<()> {
        let bytes = self.save_bytes(model, policy, &[])?;
        std::fs::write(path, bytes).map_err(|e| Error::StateFile(format!("{}: {e}", path.display())))
    }

    /// The state file's bytes, for a session kept in a database rather than a file. `extra` adds
    /// entries to the header's metadata (a conversation, say; read back with
    /// [`MsrnnState::metadata_of_bytes`]); the key `msrnn` is the core's own.
    pub fn save_bytes(&self, model: &str, policy: &PolicySpec, extra: &[(String, String)]) -> Result<Vec<u8>> {
        if extra.iter().any(|(k, _)| k == META_KEY) {
            return Err(Error::Input(format!("the metadata key `{META_KEY}` is the state header's own")));
        }
        let header = StateHeader {
            format: FORMAT,
            model: model.to_string(),
            policy: policy.clone(),
            capacity: self.capacity(),
            tokens_seen: self.tokens_seen(),
            num_layers: self.num_layers(),
            positions: self.positions_mode(),
            kv: self.kv_format(),
        };
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (i, (l, p)) in self.layers.iter().zip(&self.policies).enumerate() {
            let n = l.num_slots();
            let dev = &Device::Cpu;
            let (k, v) = l.kv_rows()?;
            let shape = (l.num_kv_heads(), n, l.head_dim());
            for (name, rows) in [("k", k), ("v", v)] {
                let t = match rows {
                    KvBuf::F32(x) => Tensor::from_vec(x, shape, dev)?,
                    KvBuf::F16(x) => Tensor::from_vec(x, shape, dev)?,
                    KvBuf::Q8_0 { q, d } => {
                        let blocks = d.len() / (shape.0 * n);
                        let scales = Tensor::from_vec(d, (shape.0, n, blocks), dev)?;
                        tensors.push((format!("layer.{i}.{name}_scales"), scales));
                        Tensor::from_vec(q.into_iter().map(|c| c as u8).collect::<Vec<u8>>(), shape, dev)?
                    }
                };
                tensors.push((format!("layer.{i}.{name}"), t));
            }
            let (pos, live) = l.slot_table();
            let entries = pos.len();
            let pos: Vec<i64> = pos.into_iter().map(|x| x as i64).collect();
            tensors.push((format!("layer.{i}.positions"), Tensor::from_vec(pos, entries, dev)?));
            let live: Vec<u8> = live.into_iter().map(|x| x as u8).collect();
            tensors.push((format!("layer.{i}.live"), Tensor::from_vec(live, entries, dev)?));
            let ps = p.save_state();
            let len = ps.len();
            tensors.push((format!("layer.{i}.policy"), Tensor::from_vec(ps, len, dev)?));
        }
        let mut meta = HashMap::from([(META_KEY.to_string(), serde_json::to_string(&header).expect("serialisable"))]);
        meta.extend(extra.iter().cloned());
        let views: Vec<(String, Tensor)> =
            tensors.into_iter().map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?))).collect::<Result<_>>()?;
        safetensors::tensor::serialize(views.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
            .map_err(|e| Error::StateFile(format!("cannot serialise the state: {e}")))
    }

    /// The header and the metadata entries of a state held in memory (the core's `msrnn` entry
    /// excluded).
    pub fn metadata_of_bytes(bytes: &[u8]) -> Result<(StateHeader, HashMap<String, String>)> {
        let what = Path::new(BYTES_NAME);
        let h = header_of(bytes, what)?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::StateFile(format!("{BYTES_NAME} is not a state file: {e}")))?;
        let mut m = meta.metadata().clone().unwrap_or_default();
        m.remove(META_KEY);
        Ok((h, m))
    }

    /// Reads only the header of a state file (its first bytes, however large the file).
    pub fn read_header(path: &Path) -> Result<StateHeader> {
        let fail = |e: String| Error::StateFile(format!("{}: {e}", path.display()));
        let mut f = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        let len = f.metadata().map_err(|e| fail(e.to_string()))?.len();
        let mut n = [0u8; 8];
        let n = match f.read_exact(&mut n) {
            Ok(()) => u64::from_le_bytes(n),
            Err(_) => return Err(not_a_state(path, "it is shorter than a safetensors header")),
        };
        if n > MAX_HEADER.min(len - 8) {
            return Err(not_a_state(path, &format!("its header claims {n} bytes, but the file has {len}")));
        }
        let mut json = vec![0u8; n as usize];
        f.read_exact(&mut json).map_err(|e| fail(e.to_string()))?;
        header_json(&json, path)
    }

    /// Reads a whole state file: its header and its tensors, checked against each other and
    /// against this state's shape. Nothing of this state changes.
    fn read_bytes(
        &self,
        bytes: &[u8],
        path: &Path,
        model: &str,
        policy: &PolicySpec,
    ) -> Result<(StateHeader, Vec<SavedLayer>)> {
        let h = header_of(bytes, path)?;
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
        if h.kv != self.kv_format() {
            return refuse("KV format", h.kv.to_string(), self.kv_format().to_string());
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
        // safetensors checks that every tensor's bytes lie inside the file and match its shape.
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| Error::StateFile(format!("{}: {e}", path.display())))?;
        let corrupt = |i: usize, reason: String| Error::StateFile(format!("{}: layer {i}: {reason}", path.display()));
        let get = |name: String| -> Result<Tensor> {
            let view = st.tensor(&name).map_err(|e| Error::StateFile(format!("{}: {name}: {e}", path.display())))?;
            candle_core::safetensors::Load::load(&view, &Device::Cpu)
                .map_err(|e| Error::StateFile(format!("{}: {name}: {e}", path.display())))
        };
        let mut layers = Vec::with_capacity(self.num_layers());
        for i in 0..self.num_layers() {
            let l = &self.layers[i];
            let dtype = match h.kv {
                KvFormat::F32 => l.dtype(),
                KvFormat::F16 => DType::F16,
                KvFormat::Q8_0 => DType::U8,
            };
            let k = get(format!("layer.{i}.k"))?;
            // f32 states save f32 rows; a device state's own dtype (older files) is read too.
            if k.dtype() != dtype && !(h.kv == KvFormat::F32 && k.dtype() == DType::F32) {
                return refuse("key dtype", k.dtype().as_str().into(), dtype.as_str().into());
            }
            let (kh, slots, kd) = k.dims3().map_err(|e| corrupt(i, format!("keys: {e}")))?;
            let (sh, sd) = (l.num_kv_heads(), l.head_dim());
            if (kh, kd) != (sh, sd) {
                return refuse("KV shape", format!("{kh}x{kd}"), format!("{sh}x{sd}"));
            }
            let v = get(format!("layer.{i}.v"))?;
            if v.dims() != k.dims() || v.dtype() != k.dtype() {
                return Err(corrupt(
                    i,
                    format!("values {:?} {:?} beside keys {:?} {:?}", v.dims(), v.dtype(), k.dims(), k.dtype()),
                ));
            }
            // A per-head layer keeps positions and liveness per KV head, heads end to end.
            let tables = if l.is_per_head() { sh } else { 1 };
            let entries = tables * slots;
            let vec1 = |name: &str, dt: DType| -> Result<Tensor> {
                let t = get(format!("layer.{i}.{name}"))?;
                if t.dtype() != dt || t.dims() != [entries] {
                    return Err(corrupt(
                        i,
                        format!("{name} is {:?} {:?}, expected {dt:?} [{entries}]", t.dtype(), t.dims()),
                    ));
                }
                Ok(t)
            };
            let pos: Vec<u64> =
                vec1("positions", DType::I64)?.to_vec1::<i64>()?.into_iter().map(|x| x as u64).collect();
            let live: Vec<bool> = vec1("live", DType::U8)?.to_vec1::<u8>()?.into_iter().map(|x| x != 0).collect();
            // What the header promises: no layer holds more than its capacity or the tokens seen,
            // and every kept token was seen (its position is below the count), once.
            // A per-head layer: no head above its head capacity, the heads together within C each.
            let cap = l.capacity().get().map_or(u64::MAX, |c| c as u64);
            let head_cap = l.head_capacity().map_or(cap, |c| c as u64);
            for (t, table) in live.chunks(slots.max(1)).enumerate() {
                let n_live = table.iter().filter(|&&x| x).count() as u64;
                if n_live > head_cap.min(h.tokens_seen) {
                    let head = if tables > 1 { format!(" in KV head {t}") } else { String::new() };
                    return Err(corrupt(
                        i,
                        format!(
                            "{n_live} live entries{head}, more than its capacity {head_cap} or the {} tokens seen",
                            h.tokens_seen
                        ),
                    ));
                }
            }
            let n_live = live.iter().filter(|&&x| x).count() as u64;
            if n_live > cap.saturating_mul(tables as u64) {
                return Err(corrupt(i, format!("{n_live} live entries over {tables} KV heads of capacity {cap}")));
            }
            if let Some(p) = pos.iter().zip(&live).find(|(&p, &l)| l && p >= h.tokens_seen).map(|(p, _)| p) {
                return Err(corrupt(
                    i,
                    format!("a live entry at position {p}, but only {} tokens were seen", h.tokens_seen),
                ));
            }
            for (p, l) in pos.chunks(slots.max(1)).zip(live.chunks(slots.max(1))) {
                let mut kept: Vec<u64> = p.iter().zip(l).filter(|(_, &l)| l).map(|(&p, _)| p).collect();
                kept.sort_unstable();
                if let Some(w) = kept.windows(2).find(|w| w[0] == w[1]) {
                    return Err(corrupt(i, format!("two live entries hold position {}", w[0])));
                }
            }
            let pol = get(format!("layer.{i}.policy"))?;
            if pol.rank() != 1 {
                return Err(corrupt(
                    i,
                    format!("the policy's bookkeeping has shape {:?}, expected one vector", pol.dims()),
                ));
            }
            let pol = pol.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            let rows = |name: &str, t: Tensor| -> Result<KvBuf> {
                let t = t.flatten_all()?;
                Ok(match h.kv {
                    KvFormat::F32 => KvBuf::F32(t.to_dtype(DType::F32)?.to_vec1::<f32>()?),
                    KvFormat::F16 => KvBuf::F16(t.to_vec1::<half::f16>()?),
                    KvFormat::Q8_0 => {
                        let blocks = kd.div_ceil(msrnn_kernels::kv::QBLOCK);
                        let d = get(format!("layer.{i}.{name}_scales"))?;
                        if d.dtype() != DType::F16 || d.dims() != [kh, slots, blocks] {
                            return Err(corrupt(
                                i,
                                format!(
                                    "{name}_scales is {:?} {:?}, expected F16 {:?}",
                                    d.dtype(),
                                    d.dims(),
                                    [kh, slots, blocks]
                                ),
                            ));
                        }
                        let q = t.to_vec1::<u8>()?.into_iter().map(|c| c as i8).collect();
                        KvBuf::Q8_0 { q, d: d.flatten_all()?.to_vec1::<half::f16>()? }
                    }
                })
            };
            let (k, v) = (rows("k", k)?, rows("v", v)?);
            layers.push(SavedLayer { k, v, pos, live, pol });
        }
        Ok((h, layers))
    }

    /// Replaces this (freshly created) state with the one saved at `path`, refusing a file from
    /// another model, policy or capacity, and a file whose tensors disagree with its header or with
    /// this state's shape. The whole file is checked before anything changes; if a policy then
    /// refuses its saved bookkeeping, the state is left empty (as created).
    pub fn load(&mut self, path: &Path, model: &str, policy: &PolicySpec) -> Result<StateHeader> {
        let bytes = std::fs::read(path).map_err(|e| Error::StateFile(format!("{}: {e}", path.display())))?;
        self.load_from(&bytes, path, model, policy)
    }

    /// [`MsrnnState::load`] from the bytes of [`MsrnnState::save_bytes`] (errors name them "the
    /// saved state").
    pub fn load_bytes(&mut self, bytes: &[u8], model: &str, policy: &PolicySpec) -> Result<StateHeader> {
        self.load_from(bytes, Path::new(BYTES_NAME), model, policy)
    }

    fn load_from(&mut self, bytes: &[u8], path: &Path, model: &str, policy: &PolicySpec) -> Result<StateHeader> {
        let (h, layers) = self.read_bytes(bytes, path, model, policy)?;
        let restored = (|| {
            for (i, s) in layers.into_iter().enumerate() {
                self.layers[i].restore(s.k, s.v, s.pos, s.live)?;
                let p = &mut self.policies[i];
                p.load_state(&s.pol).map_err(|e| Error::from_policy(e, p.name(), i))?;
            }
            Ok(())
        })();
        if let Err(e) = restored {
            self.reset();
            return Err(e);
        }
        self.set_tokens_seen(h.tokens_seen);
        Ok(h)
    }
}

/// One layer as read from a file, checked, not yet restored.
struct SavedLayer {
    k: KvBuf,
    v: KvBuf,
    pos: Vec<u64>,
    live: Vec<bool>,
    pol: Vec<f64>,
}

/// The core's metadata entry.
const META_KEY: &str = "msrnn";
/// How errors name a state read from memory.
const BYTES_NAME: &str = "the saved state";

/// safetensors' own limit on a header.
const MAX_HEADER: u64 = 100_000_000;

fn not_a_state(path: &Path, why: &str) -> Error {
    Error::StateFile(format!("{} is not a state file: {why}", path.display()))
}

/// The msrnn header inside a safetensors header's JSON (`__metadata__.msrnn`).
fn header_json(json: &[u8], path: &Path) -> Result<StateHeader> {
    #[derive(Deserialize)]
    struct Outer {
        #[serde(rename = "__metadata__")]
        metadata: Option<HashMap<String, String>>,
    }
    let outer: Outer = serde_json::from_slice(json).map_err(|e| not_a_state(path, &e.to_string()))?;
    let json =
        outer.metadata.as_ref().and_then(|m| m.get("msrnn")).ok_or_else(|| {
            Error::StateFile(format!("{} is a safetensors file but not an msrnn state", path.display()))
        })?;
    serde_json::from_str(json).map_err(|e| Error::StateFile(format!("{}: bad header: {e}", path.display())))
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
