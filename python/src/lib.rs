//! `webssl._webssl`: the native half of the `webssl` Python package (python/webssl/ is the other).
//!
//! Thin bindings over the library crates — no logic of its own beyond argument conversion:
//! [`loader::Loader`] over `webssl_data::loader` with `webssl_data::recipe` (the recipes of
//! `webssl shards bench`), `vqa_score` over `webssl_eval::vqa`, `synth` over `webssl_data::synth`,
//! `embed` over `webssl_eval::features::Encoder`. Work that takes time runs with the GIL released.
//!
//! Errors keep the libraries' messages (the text the CLI prints after its context): a bad value
//! (`DataError::Config`) is a `ValueError`, a file that cannot be read an `OSError`, anything else
//! `webssl.WebsslError`.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyModule;

mod buffer;
mod embed;
mod loader;
mod score;

pyo3::create_exception!(
    _webssl,
    WebsslError,
    pyo3::exceptions::PyException,
    "A webssl operation failed (the message is the CLI's)."
);

/// `context: message` as the right Python exception for a data-pipeline error.
pub(crate) fn data_err(context: &str, e: webssl_data::DataError) -> PyErr {
    use webssl_data::DataError;
    let msg = if context.is_empty() {
        e.to_string()
    } else {
        format!("{context}: {e}")
    };
    match e {
        DataError::Config { .. } => PyValueError::new_err(msg),
        DataError::Io { .. } => PyOSError::new_err(msg),
        _ => WebsslError::new_err(msg),
    }
}

/// `context: message` as the right Python exception for an evaluation error.
pub(crate) fn eval_err(context: &str, e: webssl_eval::error::EvalError) -> PyErr {
    use webssl_eval::error::EvalError;
    let msg = format!("{context}: {e}");
    match e {
        EvalError::Io { .. } => PyOSError::new_err(msg),
        _ => WebsslError::new_err(msg),
    }
}

/// A JSON value as Python objects (dicts, lists, numbers, strings) through the `json` module.
pub(crate) fn to_py<'py>(
    py: Python<'py>,
    value: &impl serde::Serialize,
) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| WebsslError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

#[pymodule]
fn _webssl(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("WebsslError", m.py().get_type::<WebsslError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<loader::Loader>()?;
    m.add_function(wrap_pyfunction!(score::vqa_score, m)?)?;
    m.add_function(wrap_pyfunction!(score::synth, m)?)?;
    m.add_function(wrap_pyfunction!(embed::embed, m)?)?;
    Ok(())
}
