//! The process's policy registry: the built-ins, the plugins in `MSRNN_PLUGINS`, then whatever
//! `load_plugin` and `register_policy` add. A state takes a snapshot when it is built.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};

use msrnn_core::{Entry, PolicyRegistry, PolicySpec, Source, PLUGINS_ENV};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors;

static REGISTRY: OnceLock<RwLock<Arc<PolicyRegistry>>> = OnceLock::new();

fn cell() -> PyResult<&'static RwLock<Arc<PolicyRegistry>>> {
    if let Some(r) = REGISTRY.get() {
        return Ok(r);
    }
    let mut r = msrnn_policies::registry();
    r.load_plugins_from_env()
        .map_err(|e| PyValueError::new_err(format!("cannot load the plugins listed in {PLUGINS_ENV}: {e}")))?;
    Ok(REGISTRY.get_or_init(|| RwLock::new(Arc::new(r))))
}

/// The registry as it is now.
pub fn current() -> PyResult<Arc<PolicyRegistry>> {
    Ok(cell()?.read().unwrap_or_else(|p| p.into_inner()).clone())
}

/// Changes the registry (copy on write: states already built keep theirs).
pub fn update<T>(f: impl FnOnce(&mut PolicyRegistry) -> msrnn_core::Result<T>) -> PyResult<T> {
    let mut guard = cell()?.write().unwrap_or_else(|p| p.into_inner());
    let mut r = (**guard).clone();
    let out = f(&mut r).map_err(errors::core)?;
    *guard = Arc::new(r);
    Ok(out)
}

/// A spec parsed and checked against `r` (unknown names get the core's "did you mean").
pub fn parse_spec(r: &PolicyRegistry, s: &str) -> PyResult<PolicySpec> {
    let spec: PolicySpec = s.parse().map_err(errors::core)?;
    r.check_params(&spec).map_err(errors::core)?;
    Ok(spec)
}

/// A list of specs: Python strings, or one string of comma-separated specs as the CLI's
/// `--policies` takes them (a piece with `=` but no `:` continues the previous spec's parameters).
pub fn parse_spec_list(r: &PolicyRegistry, items: Vec<String>) -> PyResult<Vec<PolicySpec>> {
    let mut pieces: Vec<String> = Vec::new();
    for item in &items {
        let mut in_params = false;
        for piece in item.split([',', ';']).map(str::trim).filter(|p| !p.is_empty()) {
            if in_params && piece.contains('=') && !piece.contains(':') {
                let last = pieces.last_mut().expect("in_params implies a piece");
                last.push(',');
                last.push_str(piece);
            } else {
                in_params = piece.contains(':');
                pieces.push(piece.to_string());
            }
        }
    }
    if pieces.is_empty() {
        return Err(PyValueError::new_err("policies is empty: name at least one policy (see msrnn.policies())"));
    }
    let specs = pieces.iter().map(|p| parse_spec(r, p)).collect::<PyResult<Vec<_>>>()?;
    for (i, a) in specs.iter().enumerate() {
        if specs[..i].contains(a) {
            return Err(PyValueError::new_err(format!("policies: `{a}` is listed twice")));
        }
    }
    Ok(specs)
}

fn entry_dict<'py>(py: Python<'py>, e: &Entry) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", &e.name)?;
    d.set_item("aliases", &e.aliases)?;
    d.set_item("description", &e.description)?;
    let params = PyList::empty(py);
    for p in &e.params {
        let pd = PyDict::new(py);
        pd.set_item("name", &*p.name)?;
        pd.set_item("default", &*p.default)?;
        pd.set_item("help", &*p.help)?;
        params.append(pd)?;
    }
    d.set_item("params", params)?;
    d.set_item("strict_params", e.strict_params)?;
    let source = match &e.source {
        Source::Builtin => "built-in".to_string(),
        Source::Plugin(p) => p.clone(),
    };
    d.set_item("source", source)?;
    Ok(d)
}

/// Every registered policy (built-ins, plugins, Python policies) as dicts: name, aliases,
/// description, params (name, default, help), strict_params, source.
#[pyfunction]
pub fn policies(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let r = current()?;
    let out = PyList::empty(py);
    for e in r.entries() {
        out.append(entry_dict(py, e)?)?;
    }
    Ok(out)
}

/// Loads a policy plugin (a native shared library, or a `.wasm` module run in a sandbox) so its
/// policy can be named like a built-in; returns the policy's name.
#[pyfunction]
#[pyo3(signature = (path, replace = false))]
pub fn load_plugin(path: PathBuf, replace: bool) -> PyResult<String> {
    errors::require_file(&path, "plugin")?;
    let plugin = update(|r| if replace { r.load_plugin_overriding(&path) } else { r.load_plugin(&path) })?;
    Ok(plugin.info().name.clone())
}
