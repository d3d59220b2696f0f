//! `msrnn._msrnn`: the Python face of msrnn. Only conversion lives here: Python values to the Rust
//! libraries' types and back, the GIL released while the model runs, Ctrl-C checked between steps.
//! The package around it (`msrnn-py/python/msrnn`) adds `Policy`, `to_pandas` and the type stubs.

use pyo3::prelude::*;

// The model families and the WebAssembly plugin kind register themselves when linked.
use msrnn_gemma as _;
use msrnn_llama as _;
use msrnn_wasm as _;

mod errors;
mod eval;
mod generation;
mod model;
mod pypolicy;
mod registry;
mod state;
mod values;

#[pymodule]
fn _msrnn(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("PolicyError", py.get_type::<errors::PolicyError>())?;
    m.add_class::<model::Model>()?;
    m.add_class::<generation::TextStream>()?;
    m.add_class::<state::State>()?;
    m.add_class::<pypolicy::Observation>()?;
    m.add_function(wrap_pyfunction!(registry::policies, m)?)?;
    m.add_function(wrap_pyfunction!(eval::ruler_tasks, m)?)?;
    m.add_function(wrap_pyfunction!(registry::load_plugin, m)?)?;
    m.add_function(wrap_pyfunction!(pypolicy::register_policy, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
