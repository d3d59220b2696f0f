//! Rust errors as Python exceptions, carrying the Rust message (the CLI's words): bad input is a
//! `ValueError`, a missing file a `FileNotFoundError`, a policy that fails or answers wrongly a
//! `msrnn.PolicyError` (its `__cause__` is the exception a Python policy raised, if any).

use std::sync::Mutex;

use pyo3::create_exception;
use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

create_exception!(
    msrnn,
    PolicyError,
    PyRuntimeError,
    "A compression policy failed or gave an invalid decision; the message names the policy and the layer, and the \
     state was left untouched."
);

/// The exception a Python policy's `step` raised, kept until the core's error reaches Python
/// (policies may run on the kernel pool's threads, so not a thread-local).
static POLICY_EXCEPTION: Mutex<Option<PyErr>> = Mutex::new(None);

pub fn stash_policy_exception(e: PyErr) {
    *POLICY_EXCEPTION.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
}

fn take_policy_exception() -> Option<PyErr> {
    POLICY_EXCEPTION.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// A core error as a Python exception.
pub fn core(e: msrnn_core::Error) -> PyErr {
    let msg = e.to_string();
    core_as(&e, msg)
}

/// The exception for a core error, carrying `msg` (the error's own words, or them in context).
pub fn core_as(e: &msrnn_core::Error, msg: String) -> PyErr {
    use msrnn_core::Error as E;
    match e {
        E::PolicyFailed { .. } | E::InvalidDecision { .. } => {
            let err = PolicyError::new_err(msg);
            if let Some(cause) = take_policy_exception() {
                Python::attach(|py| err.set_cause(py, Some(cause)));
            }
            err
        }
        E::Candle(_) | E::Shape { .. } => PyRuntimeError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

/// A model kit error (loading, tokenizing) as a Python exception.
pub fn modelkit(e: msrnn_modelkit::Error) -> PyErr {
    use msrnn_modelkit::Error as E;
    match e {
        E::Core(c) => core(c),
        E::NotFound(_) => PyFileNotFoundError::new_err(e.to_string()),
        E::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        E::Candle(_) => PyRuntimeError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

pub fn candle(e: candle_core::Error) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}

/// An engine error (loading, requests, state files) as a Python exception.
pub fn engine(e: msrnn_engine::Error) -> PyErr {
    use msrnn_engine::Error as E;
    match e {
        E::Core(c) => core(c),
        E::Model(m) => modelkit(m),
        E::Io { ref reason, .. } if reason.contains("No such file") => PyFileNotFoundError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// An error a step reported as text (the engine's failed sequence): a policy's becomes
/// `PolicyError` (with the Python exception a Python policy raised as its cause).
pub fn policy_or_runtime(msg: String) -> PyErr {
    if msg.starts_with("policy `") && msg.contains(" on layer ") {
        let err = PolicyError::new_err(msg);
        if let Some(cause) = take_policy_exception() {
            Python::attach(|py| err.set_cause(py, Some(cause)));
        }
        err
    } else {
        PyRuntimeError::new_err(msg)
    }
}

/// The same exception with its message rewritten (naming the file a state came from).
pub fn reword(e: PyErr, f: impl FnOnce(String) -> String) -> PyErr {
    Python::attach(|py| {
        let msg = f(e.value(py).to_string());
        match e.get_type(py).call1((msg,)) {
            Ok(v) => PyErr::from_value(v),
            Err(_) => e,
        }
    })
}

/// `FileNotFoundError` naming `what` (`state file x.st`) when `path` does not exist.
pub fn require_file(path: &std::path::Path, what: &str) -> PyResult<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(PyFileNotFoundError::new_err(format!("{what} {}: no such file or directory", path.display())))
    }
}

/// Runs Python's signal handlers from inside a long call (the GIL released around it): Ctrl-C
/// becomes `KeyboardInterrupt` between two steps.
pub fn check_signals() -> PyResult<()> {
    Python::attach(|py| py.check_signals())
}
