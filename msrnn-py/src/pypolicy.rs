//! Policies written in Python. `register_policy(cls)` adds a registry entry whose factory creates
//! one `cls(ctx, params)` per layer; the instance is wrapped as a [`Policy`] whose `step` takes the
//! GIL, hands Python an [`Observation`] of NumPy arrays and turns the answer into a [`Decision`].
//! The core validates that decision exactly as it does a plugin's, and a Python exception becomes
//! the core's "policy failed on layer N" error, the state left untouched.

use std::sync::Arc;

use msrnn_core::{Context, Decision, Entry, Needs, Observation as CoreObs, Param, Params, Policy, Rows, Source};
use msrnn_policy_api::{valid_name, Error as PolicyErr};
use numpy::{PyArray1, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString, PyType};

use crate::errors;
use crate::registry;

/// The type a declared parameter converts to: the type of its default.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Int,
    Float,
    Bool,
    Str,
}

/// One layer's view of its state, as a Python policy's `step` receives it: NumPy arrays copied from
/// the core's observation (so they stay valid after `step` returns).
#[pyclass(module = "msrnn._msrnn", frozen)]
pub struct Observation {
    /// The layer this instance serves.
    #[pyo3(get)]
    layer: usize,
    /// Tokens the state has seen, the new ones included.
    #[pyo3(get)]
    tokens_seen: u64,
    /// Slots in the layer's buffer (live or free; per KV head in a per-head layer); every per-slot
    /// array has this length (`[num_kv_heads, num_slots]` in a per-head layer).
    #[pyo3(get)]
    num_slots: usize,
    /// 0 for a layer whose KV heads keep the same tokens; else the layer is per-head (the policy
    /// asked for `per_head`), slots are named by entry `head * num_slots + slot`, and no head may
    /// keep more than this many.
    #[pyo3(get)]
    head_capacity: usize,
    #[pyo3(get)]
    num_heads: usize,
    #[pyo3(get)]
    num_kv_heads: usize,
    #[pyo3(get)]
    head_dim: usize,
    /// Query rows in `probs`: 0, 1 (`last_row`) or the chunk length (`all_rows`).
    #[pyo3(get)]
    rows: usize,
    /// Absolute position of each slot's token (uint64, `[num_slots]`, or `[num_kv_heads,
    /// num_slots]` per head).
    #[pyo3(get)]
    positions: Py<PyAny>,
    /// Whether each slot holds a token (bool, shaped as `positions`).
    #[pyo3(get)]
    live: Py<PyAny>,
    /// Slots (entries, per head) written in this step, oldest first (int64).
    #[pyo3(get)]
    new_slots: Py<PyAny>,
    /// Attention probabilities (float32, `[rows, num_heads, num_slots]`; 0 at free slots).
    #[pyo3(get)]
    probs: Py<PyAny>,
    /// Key L2 norms (float32, `[num_kv_heads, num_slots]`; empty unless `key_norms` was asked for).
    #[pyo3(get)]
    key_norms: Py<PyAny>,
    /// Keys as stored (float32, `[num_kv_heads, num_slots, head_dim]`; empty unless `keys` was asked for).
    #[pyo3(get)]
    keys: Py<PyAny>,
    live_count: usize,
    /// Live entries per KV head (per-head layers).
    head_live: Vec<usize>,
}

fn shaped<'py, T: numpy::Element>(py: Python<'py>, v: &[T], shape: &[usize]) -> PyResult<Py<PyAny>> {
    let a = PyArray1::from_slice(py, v);
    let a = if shape.len() == 1 { a.into_any() } else { a.reshape(shape.to_vec())?.into_any() };
    Ok(a.unbind())
}

impl Observation {
    fn new(py: Python<'_>, o: &CoreObs<'_>) -> PyResult<Self> {
        let n = o.num_slots;
        let new_slots: Vec<i64> = o.new_slots.iter().map(|&s| s as i64).collect();
        let keys_shape: &[usize] =
            if o.keys.is_empty() { &[0, n, o.head_dim] } else { &[o.num_kv_heads, n, o.head_dim] };
        let norms_shape: &[usize] = if o.key_norms.is_empty() { &[0, n] } else { &[o.num_kv_heads, n] };
        let table: Vec<usize> = if o.per_head() { vec![o.num_kv_heads, n] } else { vec![n] };
        Ok(Observation {
            layer: o.layer,
            tokens_seen: o.tokens_seen,
            num_slots: n,
            head_capacity: o.head_capacity,
            num_heads: o.num_heads,
            num_kv_heads: o.num_kv_heads,
            head_dim: o.head_dim,
            rows: o.rows,
            positions: shaped(py, o.positions, &table)?,
            live: shaped(py, o.live, &table)?,
            new_slots: shaped(py, &new_slots, &[new_slots.len()])?,
            probs: shaped(py, o.probs, &[o.rows, o.num_heads, n])?,
            key_norms: shaped(py, o.key_norms, norms_shape)?,
            keys: shaped(py, o.keys, keys_shape)?,
            live_count: o.live_count(),
            head_live: if o.per_head() {
                (0..o.num_kv_heads).map(|h| o.head_live_count(h)).collect()
            } else {
                Vec::new()
            },
        })
    }
}

#[pymethods]
impl Observation {
    /// Number of live slots.
    fn live_count(&self) -> usize {
        self.live_count
    }

    /// How many slots must be evicted: `live - budget` (0 within budget); in a per-head layer
    /// `live - budget x num_kv_heads`, or more when a head holds more than `head_capacity`.
    fn excess(&self, budget: usize) -> usize {
        if self.head_capacity == 0 {
            return self.live_count.saturating_sub(budget);
        }
        let over: usize = self.head_live.iter().map(|n| n.saturating_sub(self.head_capacity)).sum();
        self.live_count.saturating_sub(budget.saturating_mul(self.num_kv_heads)).max(over)
    }

    /// Live entries of KV head `head` (a per-head layer; the whole layer's live count otherwise).
    fn head_live_count(&self, head: usize) -> usize {
        if self.head_capacity == 0 {
            self.live_count
        } else {
            self.head_live.get(head).copied().unwrap_or(0)
        }
    }

    /// The attention of query row `row` averaged over each KV head's own query heads, float64
    /// `[num_kv_heads, num_slots]` (in a per-head layer, entry `h * num_slots + s` is `[h, s]`).
    #[pyo3(signature = (row = -1))]
    fn kv_head_mean<'py>(&self, py: Python<'py>, row: isize) -> PyResult<Bound<'py, PyAny>> {
        let r = self.row(row)?;
        let probs = self.probs.bind(py).cast::<numpy::PyArray3<f32>>()?.readonly();
        let p = probs.as_slice()?;
        let (h, n, kv) = (self.num_heads, self.num_slots, self.num_kv_heads.max(1));
        let group = (h / kv).max(1);
        let inv = 1.0 / group as f64;
        let mut acc = vec![0f64; kv * n];
        let base = r * h * n;
        for head in 0..h {
            let out = &mut acc[(head / group).min(kv - 1) * n..][..n];
            for (a, &x) in out.iter_mut().zip(&p[base + head * n..base + (head + 1) * n]) {
                *a += x as f64 * inv;
            }
        }
        Ok(PyArray1::from_vec(py, acc).reshape(vec![kv, n])?.into_any())
    }

    /// The attention of query row `row` (negative counts from the end) averaged over the query
    /// heads per slot, float64, summed in the order the built-in policies sum it.
    #[pyo3(signature = (row = -1))]
    fn head_mean<'py>(&self, py: Python<'py>, row: isize) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let r = self.row(row)?;
        let probs = self.probs.bind(py).cast::<numpy::PyArray3<f32>>()?.readonly();
        let p = probs.as_slice()?;
        let (h, n) = (self.num_heads, self.num_slots);
        let inv = 1.0 / h as f64;
        let mut acc = vec![0f64; n];
        let base = r * h * n;
        for head in 0..h {
            for (a, &x) in acc.iter_mut().zip(&p[base + head * n..base + (head + 1) * n]) {
                *a += x as f64 * inv;
            }
        }
        Ok(PyArray1::from_vec(py, acc))
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let shape = self.probs.bind(py).cast::<numpy::PyUntypedArray>().map(|a| a.shape().to_vec()).unwrap_or_default();
        format!(
            "Observation(layer={}, tokens_seen={}, live={}/{} slots, probs{:?})",
            self.layer, self.tokens_seen, self.live_count, self.num_slots, shape
        )
    }
}

impl Observation {
    /// Row `row` of `probs` (negative counts from the end), or why not.
    fn row(&self, row: isize) -> PyResult<usize> {
        let r = if row < 0 { self.rows as isize + row } else { row };
        if r < 0 || r as usize >= self.rows {
            return Err(PyValueError::new_err(format!("row {row} is outside the {} probability rows", self.rows)));
        }
        Ok(r as usize)
    }
}

/// A Python policy instance for one layer.
struct PyPolicy {
    obj: Py<PyAny>,
    name: String,
    needs: Needs,
    /// `per_head` in its needs: the run's C.
    head_capacity: Option<usize>,
}

/// A Python exception inside a policy call: kept as the cause of the error that reaches Python.
fn failed(e: PyErr) -> PolicyErr {
    let msg = e.to_string();
    errors::stash_policy_exception(e);
    PolicyErr::Failed(msg)
}

impl Policy for PyPolicy {
    fn name(&self) -> &str {
        &self.name
    }

    fn needs(&self) -> Needs {
        self.needs
    }

    fn head_capacity(&self) -> Option<usize> {
        self.head_capacity
    }

    fn step(&mut self, obs: &CoreObs<'_>, budget: usize) -> msrnn_policy_api::Result<Decision> {
        Python::attach(|py| {
            let o = Observation::new(py, obs).map_err(failed)?;
            let answer = self.obj.bind(py).call_method1("step", (o, budget)).map_err(failed)?;
            if answer.is_none() {
                return Ok(Decision::Keep);
            }
            let slots: Vec<i64> = answer.extract().map_err(|_| {
                let t = answer.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
                PolicyErr::Failed(format!("step must return a list of slot indices or None, got {t}"))
            })?;
            let n = obs.live.len();
            let slots = slots
                .into_iter()
                .map(|s| {
                    usize::try_from(s)
                        .map_err(|_| PolicyErr::Decision(format!("slot {s} is out of range (the layer has {n} slots)")))
                })
                .collect::<msrnn_policy_api::Result<Vec<usize>>>()?;
            Ok(Decision::Evict(slots))
        })
    }

    fn reset(&mut self) {
        Python::attach(|py| {
            if let Err(e) = self.obj.bind(py).call_method0("reset") {
                e.print(py);
            }
        })
    }

    fn save_state(&self) -> Vec<f64> {
        Python::attach(|py| match self.obj.bind(py).call_method0("save_state").and_then(|v| v.extract()) {
            Ok(v) => v,
            Err(e) => {
                e.print(py);
                Vec::new()
            }
        })
    }

    fn load_state(&mut self, data: &[f64]) -> msrnn_policy_api::Result<()> {
        Python::attach(|py| {
            self.obj
                .bind(py)
                .call_method1("load_state", (data.to_vec(),))
                .map(|_| ())
                .map_err(|e| PolicyErr::State(e.to_string()))
        })
    }
}

/// `needs` as a Python policy declares it: names among `last_row`, `all_rows`, `key_norms`,
/// `keys`, `every_step`, `per_head` (the last returned apart: it asks for a per-head layer).
fn parse_needs(v: &Bound<'_, PyAny>) -> Result<(Needs, bool), String> {
    let names: Vec<String> = if let Ok(s) = v.cast::<PyString>() {
        vec![s.to_string()]
    } else {
        v.extract().map_err(|_| "`needs` must be a list of names".to_string())?
    };
    let mut n = Needs::default();
    let mut per_head = false;
    for name in &names {
        match name.as_str() {
            "last_row" | "all_rows" if n.rows != Rows::None => {
                return Err("`needs` may name one of last_row and all_rows".into())
            }
            "last_row" => n.rows = Rows::Last,
            "all_rows" => n.rows = Rows::All,
            "key_norms" => n.key_norms = true,
            "keys" => n.keys = true,
            "every_step" => n.every_step = true,
            "per_head" => per_head = true,
            other => {
                return Err(format!(
                    "`needs` names `{other}`; expected some of last_row, all_rows, key_norms, keys, every_step, \
                     per_head"
                ))
            }
        }
    }
    Ok((n, per_head))
}

/// A declared default as the text a spec would give, and the type values convert to.
fn declare(name: &str, default: &Bound<'_, PyAny>) -> PyResult<(String, Kind)> {
    // bool first: a Python bool is an int too.
    if default.is_instance_of::<PyBool>() {
        Ok((default.extract::<bool>()?.to_string(), Kind::Bool))
    } else if default.is_instance_of::<PyInt>() {
        Ok((default.extract::<i64>()?.to_string(), Kind::Int))
    } else if default.is_instance_of::<PyFloat>() {
        Ok((default.str()?.to_string(), Kind::Float))
    } else if default.is_instance_of::<PyString>() {
        Ok((default.extract::<String>()?, Kind::Str))
    } else {
        Err(PyTypeError::new_err(format!(
            "parameter `{name}`: the default must be an int, float, bool or str, got {}",
            default.get_type().name()?
        )))
    }
}

fn class_attr<'py>(cls: &Bound<'py, PyType>, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    match cls.getattr(name) {
        Ok(v) if v.is_none() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(_) => Ok(None),
    }
}

/// Registers a `msrnn.Policy` subclass under its `name` (and `aliases`), so that `"name:k=v"` works
/// wherever a policy name does. `params` maps each parameter to its default (an int, float, bool or
/// str, which fixes the type values convert to) or to `(default, help)`. Returns the name.
#[pyfunction]
#[pyo3(signature = (cls, replace = false))]
pub fn register_policy(cls: &Bound<'_, PyType>, replace: bool) -> PyResult<String> {
    let py = cls.py();
    let base = py.import("msrnn")?.getattr("Policy")?;
    if !cls.is_subclass(&base)? {
        return Err(PyTypeError::new_err(format!("{} is not a subclass of msrnn.Policy", cls.name()?)));
    }
    let name: String = match class_attr(cls, "name")? {
        Some(n) => n.extract().map_err(|_| PyTypeError::new_err("the class attribute `name` must be a str"))?,
        None => String::new(),
    };
    if name.is_empty() {
        return Err(PyValueError::new_err(format!("{} needs a class attribute `name`", cls.name()?)));
    }
    if !valid_name(&name) {
        return Err(PyValueError::new_err(format!(
            "policy name `{name}` is not 1 to 64 of [A-Za-z0-9_+.-] (no `:`, `,`, `=` or spaces)"
        )));
    }
    let mut schema = Vec::new();
    let mut kinds = Vec::new();
    if let Some(params) = class_attr(cls, "params")? {
        let params = params.cast::<PyDict>().map_err(|_| {
            PyTypeError::new_err(
                "the class attribute `params` must be a dict: name -> default, or name -> (default, help)",
            )
        })?;
        for (k, v) in params.iter() {
            let pname: String = k.extract().map_err(|_| PyTypeError::new_err("parameter names must be str"))?;
            if !valid_name(&pname) {
                return Err(PyValueError::new_err(format!(
                    "parameter name `{pname}` is not 1 to 64 of [A-Za-z0-9_+.-]"
                )));
            }
            let (default, help) = match v.extract::<(Bound<'_, PyAny>, String)>() {
                Ok((d, h)) => (d, h),
                Err(_) => (v, String::new()),
            };
            let (text, kind) = declare(&pname, &default)?;
            schema.push(Param::owned(pname.clone(), text, help));
            kinds.push((pname, kind));
        }
    }
    let description = match class_attr(cls, "description")? {
        Some(d) => d.extract::<String>()?,
        None => match class_attr(cls, "__doc__")? {
            Some(d) => d.extract::<String>()?.trim().lines().next().unwrap_or("").to_string(),
            None => String::new(),
        },
    };
    let aliases: Vec<String> = match class_attr(cls, "aliases")? {
        Some(a) => a.extract()?,
        None => Vec::new(),
    };
    let source = format!("python {}.{}", cls.module()?, cls.qualname()?);
    let class: Py<PyType> = cls.clone().unbind();
    let policy_name = name.clone();
    let factory: msrnn_core::Factory =
        Arc::new(move |params: &Params, ctx: &Context, _: &msrnn_core::PolicyRegistry| {
            let fail = |e: PolicyErr| msrnn_core::Error::from_policy(e, &policy_name, ctx.layer);
            Python::attach(|py| {
                let values = PyDict::new(py);
                for (k, kind) in &kinds {
                    let set = match kind {
                        Kind::Int => params.get::<i64>(k).map(|v| values.set_item(k, v)),
                        Kind::Float => params.get::<f64>(k).map(|v| values.set_item(k, v)),
                        Kind::Bool => params.get::<bool>(k).map(|v| values.set_item(k, v)),
                        Kind::Str => params.get::<String>(k).map(|v| values.set_item(k, v)),
                    };
                    set.map_err(fail)?.map_err(|e| fail(PolicyErr::Param(e.to_string())))?;
                }
                let c = PyDict::new(py);
                let set = || -> PyResult<()> {
                    c.set_item("layer", ctx.layer)?;
                    c.set_item("num_layers", ctx.num_layers)?;
                    c.set_item("num_heads", ctx.num_heads)?;
                    c.set_item("num_kv_heads", ctx.num_kv_heads)?;
                    c.set_item("head_dim", ctx.head_dim)?;
                    c.set_item("capacity", ctx.capacity)?;
                    Ok(())
                };
                set().map_err(|e| fail(PolicyErr::Param(e.to_string())))?;
                let obj = class.bind(py).call1((c, values)).map_err(|e| fail(PolicyErr::Param(e.to_string())))?;
                let needs = obj.getattr("needs").map_err(|e| fail(PolicyErr::Param(e.to_string())))?;
                let (needs, per_head) = parse_needs(&needs).map_err(|e| fail(PolicyErr::Param(e)))?;
                let head_capacity = match (per_head, ctx.capacity) {
                    (false, _) => None,
                    (true, Some(c)) => Some(c),
                    (true, None) => {
                        return Err(fail(PolicyErr::Param("`per_head` needs a capacity (the run is unbounded)".into())))
                    }
                };
                let obj = obj.unbind();
                Ok(Box::new(PyPolicy { obj, name: policy_name.clone(), needs, head_capacity }) as Box<dyn Policy>)
            })
        });
    let entry = Entry::new(&name, &description, Some(schema), Source::Plugin(source), factory).with_aliases(aliases);
    registry::update(|r| r.insert(entry, replace))?;
    Ok(name)
}
