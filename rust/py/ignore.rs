//! Bindings for `ignore`: the `.dockerignore` and `.gitignore` matchers.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::ignore::{self, DockerIgnore, GitIgnore, PatternError};

/// A malformed pattern: `ValueError(pattern, reason)`, which the Python face turns into
/// `memobuild.errors.PatternError`.
fn pattern_error(e: PatternError) -> PyErr {
    PyValueError::new_err((e.pattern, e.reason))
}

/// A path argument (str, bytes or os.PathLike) as the bytes the file system sees: `os.fsencode`,
/// so that names decoded with surrogateescape come back byte for byte.
fn path_bytes(path: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let encoded = path
        .py()
        .import("os")?
        .getattr("fsencode")?
        .call1((path,))?;
    Ok(encoded.cast::<PyBytes>()?.as_bytes().to_vec())
}

/// `.dockerignore` patterns with docker's (moby/patternmatcher) semantics.
#[pyclass(name = "DockerIgnore", module = "memobuild._core", frozen)]
struct PyDockerIgnore {
    inner: DockerIgnore,
}

#[pymethods]
impl PyDockerIgnore {
    #[new]
    fn new(py: Python<'_>, patterns: Vec<String>) -> PyResult<Self> {
        let inner = py
            .detach(|| DockerIgnore::new(&patterns))
            .map_err(pattern_error)?;
        Ok(PyDockerIgnore { inner })
    }

    /// Whether the context-relative path is excluded. The path is cleaned first; the root and
    /// paths that leave it through '..' are never excluded.
    fn matches(&self, path: &Bound<'_, PyAny>) -> PyResult<bool> {
        let raw = path_bytes(path)?;
        Ok(ignore::normalize_rel(&raw).is_some_and(|rel| self.inner.matches(&rel)))
    }

    /// The cleaned patterns, exceptions with their leading '!'.
    #[getter]
    fn patterns(&self) -> Vec<String> {
        self.inner.patterns().to_vec()
    }

    /// Whether some pattern is a `!` exception.
    #[getter]
    fn has_exceptions(&self) -> bool {
        self.inner.has_exceptions()
    }
}

/// The lines of one `.gitignore` at the root of a tree.
#[pyclass(name = "GitIgnore", module = "memobuild._core", frozen)]
struct PyGitIgnore {
    inner: GitIgnore,
}

#[pymethods]
impl PyGitIgnore {
    #[new]
    fn new(py: Python<'_>, lines: Vec<String>) -> PyResult<Self> {
        let inner = py
            .detach(|| GitIgnore::new(&lines))
            .map_err(pattern_error)?;
        Ok(PyGitIgnore { inner })
    }

    /// Whether the root-relative path is ignored (itself, or through an ignored parent
    /// directory). The path is cleaned first, a trailing '/' meaning a directory; the root and
    /// paths that leave it are not ignored.
    #[pyo3(signature = (path, is_dir=false))]
    fn matches(&self, path: &Bound<'_, PyAny>, is_dir: bool) -> PyResult<bool> {
        let raw = path_bytes(path)?;
        let is_dir = is_dir || raw.ends_with(b"/");
        Ok(ignore::normalize_rel(&raw).is_some_and(|rel| self.inner.matches(&rel, is_dir)))
    }
}

/// The patterns of a `.dockerignore` file's text, as docker reads them.
#[pyfunction]
fn read_dockerignore(text: &str) -> Vec<String> {
    ignore::read_dockerignore(text)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDockerIgnore>()?;
    m.add_class::<PyGitIgnore>()?;
    m.add_function(wrap_pyfunction!(read_dockerignore, m)?)?;
    Ok(())
}
