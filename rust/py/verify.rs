//! Bindings for `verify`: digests of bytes and files, verification, a streaming hasher.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::py::hash::io_error;
use crate::verify::{self, Algorithm, Digest, DigestError, StreamHasher};

fn digest_error(e: DigestError) -> PyErr {
    PyValueError::new_err((e.digest, e.reason))
}

fn algorithm(name: &str) -> PyResult<Algorithm> {
    Algorithm::parse(name).map_err(digest_error)
}

#[pyfunction]
#[pyo3(signature = (data, algorithm="sha256"))]
fn digest_bytes(py: Python<'_>, data: &[u8], algorithm: &str) -> PyResult<String> {
    let algo = self::algorithm(algorithm)?;
    Ok(py.detach(|| verify::digest_bytes(data, algo)).to_string())
}

#[pyfunction]
#[pyo3(signature = (path, algorithm="sha256"))]
fn digest_file(py: Python<'_>, path: PathBuf, algorithm: &str) -> PyResult<(String, u64)> {
    let algo = self::algorithm(algorithm)?;
    let (d, size) = py
        .detach(|| verify::digest_file(&path, algo))
        .map_err(|e| io_error(path.clone(), e))?;
    Ok((d.to_string(), size))
}

/// Validate `algorithm:hex` and split it.
#[pyfunction]
fn parse_digest(digest: &str) -> PyResult<(&'static str, String)> {
    let d = Digest::parse(digest).map_err(digest_error)?;
    Ok((d.algorithm.name(), hex::encode(d.bytes)))
}

#[pyfunction]
fn verify_bytes(py: Python<'_>, data: &[u8], expected: &str) -> PyResult<(bool, String, u64)> {
    let expected = Digest::parse(expected).map_err(digest_error)?;
    let v = py.detach(|| verify::verify_bytes(data, &expected));
    Ok((v.ok, v.actual.to_string(), v.size))
}

#[pyfunction]
fn verify_file(py: Python<'_>, path: PathBuf, expected: &str) -> PyResult<(bool, String, u64)> {
    let expected = Digest::parse(expected).map_err(digest_error)?;
    let v = py
        .detach(|| verify::verify_file(&path, &expected))
        .map_err(|e| io_error(path.clone(), e))?;
    Ok((v.ok, v.actual.to_string(), v.size))
}

/// A streaming hasher: feed chunks with `update`, read `digest()` at any point.
#[pyclass(module = "memobuild._core")]
struct Hasher {
    inner: StreamHasher,
}

#[pymethods]
impl Hasher {
    #[new]
    #[pyo3(signature = (algorithm="sha256"))]
    fn new(algorithm: &str) -> PyResult<Self> {
        Ok(Hasher {
            inner: StreamHasher::new(self::algorithm(algorithm)?),
        })
    }

    fn update(&mut self, py: Python<'_>, data: &[u8]) {
        let inner = &mut self.inner;
        if data.len() >= 64 * 1024 {
            py.detach(|| inner.update(data));
        } else {
            inner.update(data);
        }
    }

    fn digest(&self) -> String {
        self.inner.finish().to_string()
    }

    #[getter]
    fn size(&self) -> u64 {
        self.inner.size()
    }

    #[getter]
    fn algorithm(&self) -> &'static str {
        self.inner.algorithm().name()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(digest_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(digest_file, m)?)?;
    m.add_function(wrap_pyfunction!(parse_digest, m)?)?;
    m.add_function(wrap_pyfunction!(verify_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(verify_file, m)?)?;
    m.add_class::<Hasher>()
}
