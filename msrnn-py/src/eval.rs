//! The evaluation tasks of `msrnn-eval` for Python: keyword arguments to the task's config, the run
//! with the GIL released and Ctrl-C as its cancellation, the document's results as a list of dicts
//! (the fields of the CLI's JSON). No task logic lives here.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use msrnn_core::PolicyRegistry;
use msrnn_eval::{EvalModel, Feed, GridConfig, Observer};
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;
use serde::Serialize;

use crate::errors;
use crate::model::{parse_kv, parse_positions, string_list, Shared};
use crate::registry;
use crate::values;

/// Python's signal handlers run at most this often while a task runs (each run takes the GIL).
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// The observer of a run from Python: cancelled once a signal handler raised (Ctrl-C), keeping
/// the exception to re-raise.
struct Interrupt {
    raised: Mutex<Option<PyErr>>,
    last: Mutex<Instant>,
}

impl Interrupt {
    fn new() -> Self {
        Interrupt { raised: Mutex::new(None), last: Mutex::new(Instant::now()) }
    }

    fn take(&self) -> Option<PyErr> {
        self.raised.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Observer for &Interrupt {
    fn cancelled(&self) -> bool {
        let mut raised = self.raised.lock().unwrap_or_else(|p| p.into_inner());
        if raised.is_some() {
            return true;
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() < SIGNAL_CHECK {
            return false;
        }
        *last = Instant::now();
        match errors::check_signals() {
            Ok(()) => false,
            Err(e) => {
                *raised = Some(e);
                true
            }
        }
    }
}

/// Settings are named as keywords (`tokens`, `capacities`).
fn keyword(name: &str) -> String {
    name.to_string()
}

/// A task's error as a Python exception: Ctrl-C re-raised, a policy's failure a `PolicyError`,
/// the rest `ValueError` with the library's message.
fn error(e: msrnn_eval::Error, interrupt: &Interrupt) -> PyErr {
    use msrnn_eval::Error as E;
    match e {
        E::Cancelled => interrupt.take().unwrap_or_else(|| PyKeyboardInterrupt::new_err("cancelled")),
        E::Core { ref cause, .. } => match cause.downcast_ref::<msrnn_core::Error>() {
            Some(c) => errors::core_as(c, e.to_string()),
            None => PyValueError::new_err(e.to_string()),
        },
        other => PyValueError::new_err(other.render(&keyword)),
    }
}

/// Runs a task with the GIL released; its results as a list of dicts.
fn run<'py, S: Send, R: Serialize + Send>(
    py: Python<'py>,
    task: impl FnOnce(&mut dyn Observer) -> msrnn_eval::Result<msrnn_eval::Document<S, R>> + Send,
) -> PyResult<Bound<'py, PyList>> {
    let interrupt = Interrupt::new();
    let doc = py.detach(|| {
        let mut obs = &interrupt;
        task(&mut obs)
    });
    let doc = doc.map_err(|e| error(e, &interrupt))?;
    let out = PyList::empty(py);
    for r in &doc.results {
        let v = serde_json::to_value(r).map_err(|e| PyValueError::new_err(format!("result: {e}")))?;
        out.append(values::json_to_py(py, &v)?)?;
    }
    Ok(out)
}

fn model(m: &Shared) -> EvalModel {
    EvalModel { lm: m.lm.clone(), id: m.id.clone(), name: m.short_name() }
}

/// `decode`, or `chunked` with `chunk` tokens per step.
fn feed(mode: &str, chunk: usize) -> PyResult<Feed> {
    match mode {
        "decode" => Ok(Feed::Decode),
        "chunked" => Ok(Feed::Chunked(chunk)),
        other => Err(PyValueError::new_err(format!("mode `{other}`: expected decode or chunked"))),
    }
}

/// The keywords every task takes, as its config's grid: `policies` a spec or a list of them
/// (None: the task's `default`), `capacities` (None: the CLI's, unless `ratios` replace them),
/// `mode` and `chunk`, `positions`, `kv`, `batch`; the whole grid (no shard).
#[allow(clippy::too_many_arguments)]
pub fn grid(
    r: &PolicyRegistry,
    policies: Option<&Bound<'_, PyAny>>,
    default: &str,
    capacities: Option<Vec<usize>>,
    ratios: Option<Vec<f64>>,
    (mode, chunk): (&str, usize),
    positions: &str,
    kv: &str,
    batch: Option<usize>,
) -> PyResult<GridConfig> {
    let (capacities, ratios) = match (capacities, ratios) {
        (None, Some(r)) => (Vec::new(), r),
        (c, r) => (c.unwrap_or_else(|| msrnn_eval::DEFAULT_CAPACITIES.to_vec()), r.unwrap_or_default()),
    };
    Ok(GridConfig {
        policies: registry::parse_spec_list(r, string_list(policies, default, "policies")?)?,
        capacities,
        ratios,
        feed: feed(mode, chunk)?,
        positions: parse_positions(positions)?,
        kv: parse_kv(kv)?,
        shard: None,
        batch,
    })
}

/// `Model.perplexity`: the ppl grid over `ids` (already cut to `cfg.tokens`).
pub fn perplexity<'py>(
    py: Python<'py>,
    m: &Shared,
    r: &PolicyRegistry,
    ids: Vec<u32>,
    cfg: msrnn_eval::ppl::PplConfig,
) -> PyResult<Bound<'py, PyList>> {
    let text = msrnn_eval::ppl::Text::from_tokens("text", ids, m.tokenizer().wants_bos());
    let em = model(m);
    run(py, |obs| msrnn_eval::ppl::run(&em, r, &text, &cfg, obs))
}

/// `Model.passkey`: the passkey grid; `plays` the directory of the plays for `haystack="plays"`.
pub fn passkey<'py>(
    py: Python<'py>,
    m: &Shared,
    r: &PolicyRegistry,
    mut cfg: msrnn_eval::passkey::PasskeyConfig,
    haystack: &str,
    plays: Option<PathBuf>,
) -> PyResult<Bound<'py, PyList>> {
    cfg.haystack = match (haystack, plays) {
        ("filler", None) => msrnn_eval::passkey::Haystack::Filler,
        ("filler", Some(_)) => return Err(PyValueError::new_err("plays= is for haystack=\"plays\"")),
        ("plays", Some(dir)) => {
            errors::require_file(&dir, "plays directory")?;
            msrnn_eval::passkey::Haystack::Plays(dir)
        }
        ("plays", None) => {
            return Err(PyValueError::new_err(
                "haystack=\"plays\" needs plays= (the directory of the plays, e.g. data/shakespeare)",
            ))
        }
        (other, _) => {
            return Err(PyValueError::new_err(format!("haystack `{other}`: expected filler or plays")));
        }
    };
    let em = model(m);
    run(py, |obs| msrnn_eval::passkey::run(&em, r, &cfg, obs))
}

/// `Model.ruler`: the task suite; the real-text haystacks default to data/prose found upward from
/// the current directory (as the CLI finds it) when a chosen task needs them.
pub fn ruler<'py>(
    py: Python<'py>,
    m: &Shared,
    r: &PolicyRegistry,
    mut cfg: msrnn_eval::ruler::RulerConfig,
) -> PyResult<Bound<'py, PyList>> {
    let interrupt = Interrupt::new();
    let axes = cfg.validate(r).map_err(|e| error(e, &interrupt))?;
    if cfg.text.is_empty() && axes.needs_text() {
        match msrnn_engine::find_up(msrnn_eval::ruler::DEFAULT_TEXT) {
            Some(p) => cfg.text = vec![p],
            None => {
                return Err(PyValueError::new_err(
                    "text: data/prose not found (the needle tasks hide needles in real text); fetch the texts with \
                     ./scripts/fetch-data.sh or pass text=[PATH]",
                ))
            }
        }
    }
    let em = model(m);
    run(py, |obs| msrnn_eval::ruler::run(&em, r, &cfg, obs))
}

/// The suite's tasks: name, family, haystack.
#[pyfunction]
pub fn ruler_tasks<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for t in msrnn_eval::ruler::TASKS {
        let v = serde_json::json!({"name": t.name, "family": t.family, "haystack": t.haystack});
        out.append(values::json_to_py(py, &v)?)?;
    }
    Ok(out)
}
