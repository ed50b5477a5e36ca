//! Bindings for `shellmatch`: the matches of a `${VAR#pattern}`-family expression.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::shellmatch::{self, Mode};

/// The `(start, end)` character offsets of the matches of `source` in `text`: the first one
/// (`mode="first"`) or the ones Go's `ReplaceAllString` replaces (`mode="all"`). A pattern
/// that does not compile, or compiles too large, is `ValueError(message)`.
#[pyfunction]
fn shell_pattern_spans(
    py: Python<'_>,
    source: &str,
    text: &str,
    mode: &str,
) -> PyResult<Vec<(usize, usize)>> {
    let mode = match mode {
        "first" => Mode::First,
        "all" => Mode::All,
        other => {
            return Err(PyValueError::new_err(format!(
                "mode must be 'first' or 'all', not {other:?}"
            )))
        }
    };
    py.detach(|| -> Result<Vec<(usize, usize)>, String> {
        let re = shellmatch::compile(source)?;
        Ok(shellmatch::spans(&re, text, mode))
    })
    .map_err(PyValueError::new_err)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(shell_pattern_spans, m)?)?;
    Ok(())
}
