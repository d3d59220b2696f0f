//! `msrnn.State`: one sequence's bounded multi-state, fed by hand.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use msrnn_core::{MsrnnState, PolicySpec};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use serde_json::json;

use crate::errors;
use crate::model::Shared;
use crate::values;

/// A sequence's state: its policy, capacity C per layer, and the keys and values it keeps.
#[pyclass(module = "msrnn._msrnn", frozen)]
pub struct State {
    model: Arc<Shared>,
    inner: Mutex<MsrnnState>,
    spec: PolicySpec,
    chunk: usize,
}

impl State {
    pub fn new(model: Arc<Shared>, state: MsrnnState, spec: PolicySpec, chunk: usize) -> Self {
        State { model, inner: Mutex::new(state), spec, chunk }
    }
}

fn rows(t: Tensor) -> PyResult<(Vec<f32>, usize)> {
    let n = t.dim(0).map_err(errors::candle)?;
    Ok((t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(errors::candle)?, n))
}

#[pymethods]
impl State {
    /// Feeds token ids (in steps of at most `chunk` tokens; the policy brings every layer back to
    /// C after each) and returns the logits of the last one, float32 `[vocab]`, or with
    /// `all_logits=True` those of every token, `[len(ids), vocab]`. If a policy fails, the
    /// exception names it and the layer, and the failed step is undone on every layer (the state is
    /// as it was before the step; earlier steps of a long feed stay fed).
    #[pyo3(signature = (ids, all_logits = false))]
    fn feed<'py>(&self, py: Python<'py>, ids: &Bound<'py, PyAny>, all_logits: bool) -> PyResult<Bound<'py, PyAny>> {
        let vocab = self.model.vocab();
        let ids = values::token_ids(ids, vocab, "ids")?;
        if ids.is_empty() {
            return Err(pyo3::exceptions::PyValueError::new_err("ids is empty: feed at least one token"));
        }
        let lm: &dyn msrnn_modelkit::Model = self.model.lm.as_ref();
        let (logits, n) = py.detach(|| -> PyResult<(Vec<f32>, usize)> {
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let state: &mut MsrnnState = &mut guard;
            let mut out = Vec::new();
            let mut n = 0;
            let pieces: Vec<&[u32]> = ids.chunks(self.chunk).collect();
            let last = pieces.len() - 1;
            for (i, piece) in pieces.into_iter().enumerate() {
                // A step that fails on a later layer is undone on the earlier ones too.
                let before = state.checkpoint();
                let t = match lm.forward(piece, state, all_logits) {
                    Ok(t) => t,
                    Err(e) => {
                        state.rollback(before).map_err(errors::core)?;
                        return Err(errors::core(e));
                    }
                };
                if all_logits || i == last {
                    let (v, r) = rows(t)?;
                    out.extend(v);
                    n += r;
                }
                if i != last {
                    errors::check_signals()?;
                }
            }
            Ok((out, n))
        })?;
        let a = PyArray1::from_vec(py, logits);
        if all_logits {
            Ok(a.reshape([n, vocab])?.into_any())
        } else {
            Ok(a.into_any())
        }
    }

    /// tokens_seen, live (per layer), max_live, capacity (None: unbounded), policy, positions,
    /// live_kv_bytes, allocated_kv_bytes.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let live: Vec<usize> = (0..s.num_layers()).map(|i| s.layer(i).live_count()).collect();
        let v = json!({
            "tokens_seen": s.tokens_seen(),
            "live": live,
            "max_live": s.max_live(),
            "capacity": s.capacity().get(),
            "policy": self.spec.to_string(),
            "positions": s.positions_mode().to_string(),
            "live_kv_bytes": s.live_kv_bytes(),
            "allocated_kv_bytes": s.allocated_kv_bytes(),
        });
        values::json_to_py(py, &v)
    }

    /// The positions of the tokens layer `layer` keeps, oldest first.
    fn kept_positions(&self, layer: usize) -> PyResult<Vec<u64>> {
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if layer >= s.num_layers() {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "layer {layer}: the model has {} layers",
                s.num_layers()
            )));
        }
        let mut p = s.layer(layer).live_positions();
        p.sort_unstable();
        Ok(p)
    }

    /// Writes the state to `path` (a safetensors file with the model id, policy, capacity and
    /// positions in its header): `Model.load_state` and the CLI's `--resume` read it.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| {
            let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            s.save(&path, &self.model.id, &self.spec)
        })
        .map_err(errors::core)
    }

    /// The policy spec, as text.
    #[getter]
    fn policy(&self) -> String {
        self.spec.to_string()
    }

    #[getter]
    fn tokens_seen(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).tokens_seen()
    }

    fn __repr__(&self) -> String {
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        format!("State(policy={}, capacity={}, tokens_seen={})", self.spec, s.capacity(), s.tokens_seen())
    }
}
