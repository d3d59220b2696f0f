//! `msrnn.State`: one sequence's bounded multi-state, fed by hand.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::Tensor;
use msrnn_core::{MsrnnState, PolicySpec};
use msrnn_engine::Conversation;
use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use serde_json::json;

use crate::errors;
use crate::model::{vocab, Shared};
use crate::values;

/// The multi-state (lent to a generation while one runs) and the conversation it holds.
struct Slot {
    state: Option<MsrnnState>,
    conv: Option<Conversation>,
}

/// A sequence's state: its policy, capacity C per layer, the keys and values it keeps, and the
/// conversation `generate(state=...)` had in it.
#[pyclass(module = "msrnn._msrnn", frozen)]
pub struct State {
    model: Arc<Shared>,
    inner: Mutex<Slot>,
    spec: PolicySpec,
    chunk: usize,
}

const IN_USE: &str =
    "this state is lent to a generation that is still running (or was lost when one failed); finish or close it";

impl State {
    pub fn new(
        model: Arc<Shared>,
        state: MsrnnState,
        spec: PolicySpec,
        chunk: usize,
        conv: Option<Conversation>,
    ) -> Self {
        State { model, inner: Mutex::new(Slot { state: Some(state), conv }), spec, chunk }
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Lends the multi-state to a generation, with its conversation.
    pub fn take(&self) -> PyResult<(MsrnnState, Option<Conversation>)> {
        let mut s = self.slot();
        let state = s.state.take().ok_or_else(|| PyRuntimeError::new_err(IN_USE))?;
        Ok((state, s.conv.clone()))
    }

    /// Gives back a state unchanged (the generation did not start).
    pub fn restore(&self, state: MsrnnState, conv: Option<Conversation>) {
        *self.slot() = Slot { state: Some(state), conv };
    }

    /// Gives back the state a generation finished with, and the conversation after it.
    pub fn put_back(&self, state: MsrnnState, conv: Conversation) {
        self.restore(state, Some(conv));
    }

    /// Runs `f` on the multi-state (an error if it is lent out).
    fn with<T>(&self, f: impl FnOnce(&mut MsrnnState, &mut Option<Conversation>) -> PyResult<T>) -> PyResult<T> {
        let mut s = self.slot();
        let Slot { state, conv } = &mut *s;
        match state {
            Some(st) => f(st, conv),
            None => Err(PyRuntimeError::new_err(IN_USE)),
        }
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
        let vocab = vocab(&self.model);
        let ids = values::token_ids(ids, vocab, "ids")?;
        if ids.is_empty() {
            return Err(PyValueError::new_err("ids is empty: feed at least one token"));
        }
        let lm: &dyn msrnn_modelkit::Model = self.model.lm.as_ref();
        let (logits, n) = py.detach(|| -> PyResult<(Vec<f32>, usize)> {
            self.with(|state, conv| {
                // Tokens fed by hand are not the conversation's: the sampled token it kept is dropped.
                if let Some(c) = conv.as_mut() {
                    c.pending = None;
                }
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
            })
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
        let v = self.with(|s, conv| {
            let live: Vec<usize> = (0..s.num_layers()).map(|i| s.layer(i).live_count()).collect();
            Ok(json!({
                "tokens_seen": s.tokens_seen(),
                "live": live,
                "max_live": s.max_live(),
                "capacity": s.capacity().get(),
                "policy": self.spec.to_string(),
                "positions": s.positions_mode().to_string(),
                "live_kv_bytes": s.live_kv_bytes(),
                "allocated_kv_bytes": s.allocated_kv_bytes(),
                "conversation": conv,
            }))
        })?;
        values::json_to_py(py, &v)
    }

    /// The positions of the tokens layer `layer` keeps, oldest first.
    fn kept_positions(&self, layer: usize) -> PyResult<Vec<u64>> {
        self.with(|s, _| {
            if layer >= s.num_layers() {
                return Err(PyValueError::new_err(format!("layer {layer}: the model has {} layers", s.num_layers())));
            }
            let mut p = s.layer(layer).live_positions();
            p.sort_unstable();
            Ok(p)
        })
    }

    /// Writes the state to `path` (a safetensors file with the model id, policy, capacity,
    /// positions and the conversation in its header): `Model.load_state` and the CLI's
    /// `generate --resume` read it.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| {
            self.with(|s, conv| match conv {
                Some(c) => msrnn_engine::session::save(&path, s, &self.model.id, &self.spec, c).map_err(errors::engine),
                None => s.save(&path, &self.model.id, &self.spec).map_err(errors::core),
            })
        })
    }

    /// The policy spec, as text.
    #[getter]
    fn policy(&self) -> String {
        self.spec.to_string()
    }

    #[getter]
    fn tokens_seen(&self) -> PyResult<u64> {
        self.with(|s, _| Ok(s.tokens_seen()))
    }

    fn __repr__(&self) -> String {
        self.with(|s, _| {
            Ok(format!("State(policy={}, capacity={}, tokens_seen={})", self.spec, s.capacity(), s.tokens_seen()))
        })
        .unwrap_or_else(|_| format!("State(policy={}, lent to a generation)", self.spec))
    }
}
