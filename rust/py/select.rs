//! Bindings for `select`: a hashed build context that COPY/ADD sources are resolved against.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::ignore::DockerIgnore;
use crate::py::hash::hash_error;
use crate::select::{Context, SelectError, SelectOptions};

/// (digest, [(matched path, type)], regular files covered)
type SelectTuple = (String, Vec<(OsString, &'static str)>, u64);

/// ELOOP on Linux.
const ELOOP: i32 = 40;

fn select_error(e: SelectError) -> PyErr {
    match e {
        SelectError::NotFound(p) => {
            PyFileNotFoundError::new_err((2, "not found in build context", OsString::from_vec(p)))
        }
        SelectError::Loop(p) => PyOSError::new_err((
            ELOOP,
            "too many levels of symbolic links",
            OsString::from_vec(p),
        )),
        SelectError::BadPattern(p) => PyValueError::new_err((p, "syntax error in pattern")),
        SelectError::Exclude(e) => PyValueError::new_err((e.pattern, e.reason)),
    }
}

fn options(wildcards: bool, exclude: &[String]) -> PyResult<SelectOptions> {
    SelectOptions::new(wildcards, exclude).map_err(select_error)
}

/// A build context after `.dockerignore`, hashed once, that sources are selected from.
#[pyclass(name = "ContextIndex", module = "memobuild._core", frozen)]
struct PyContextIndex {
    inner: Context,
}

#[pymethods]
impl PyContextIndex {
    /// Hash the directory `root` (one walk, the stat cache at `stat_cache` if given).
    #[staticmethod]
    #[pyo3(signature = (root, dockerignore=None, stat_cache=None))]
    fn hash(
        py: Python<'_>,
        root: PathBuf,
        dockerignore: Option<Vec<String>>,
        stat_cache: Option<PathBuf>,
    ) -> PyResult<Self> {
        let ignore = match dockerignore {
            Some(p) => Some(
                DockerIgnore::new(&p)
                    .map_err(|e| PyValueError::new_err((e.pattern.clone(), e.reason.clone())))?,
            ),
            None => None,
        };
        let inner = py
            .detach(|| Context::hash(&root, ignore, stat_cache))
            .map_err(hash_error)?;
        Ok(PyContextIndex { inner })
    }

    /// Read back a listing written by `listing()`.
    #[staticmethod]
    fn from_listing(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let inner = py
            .detach(|| Context::from_listing(data))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyContextIndex { inner })
    }

    /// Every entry as compact bytes, to keep with a recorded build.
    fn listing<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let data = py.detach(|| self.inner.listing());
        PyBytes::new(py, &data)
    }

    /// Resolve one source: (digest, [(matched path, type)], regular files covered).
    #[pyo3(signature = (source, exclude=Vec::new(), wildcards=true))]
    fn select(
        &self,
        py: Python<'_>,
        source: &str,
        exclude: Vec<String>,
        wildcards: bool,
    ) -> PyResult<SelectTuple> {
        let opts = options(wildcards, &exclude)?;
        let s = py
            .detach(|| self.inner.select(source, &opts))
            .map_err(select_error)?;
        let matches = s
            .matches
            .into_iter()
            .map(|m| (OsString::from_vec(m.path), m.kind.name()))
            .collect();
        Ok((
            format!("blake3:{}", hex::encode(s.digest)),
            matches,
            s.files,
        ))
    }

    /// How what `source` covers changed from this (earlier) context to `new`:
    /// ([(path, "added" | "removed" | "modified")] up to `limit`, total changes).
    #[pyo3(signature = (new, source, exclude=Vec::new(), wildcards=true, limit=20))]
    fn diff(
        &self,
        py: Python<'_>,
        new: PyRef<'_, PyContextIndex>,
        source: &str,
        exclude: Vec<String>,
        wildcards: bool,
        limit: usize,
    ) -> PyResult<(Vec<(OsString, &'static str)>, u64)> {
        let opts = options(wildcards, &exclude)?;
        let other = &new.inner;
        let (changes, total) = py
            .detach(|| self.inner.diff(other, source, &opts, limit))
            .map_err(select_error)?;
        let changes = changes
            .into_iter()
            .map(|(p, c)| (OsString::from_vec(p), c.name()))
            .collect();
        Ok((changes, total))
    }

    /// The Merkle digest of the whole context, `blake3:<hex>`.
    #[getter]
    fn digest(&self) -> String {
        format!("blake3:{}", hex::encode(self.inner.digest))
    }

    #[getter]
    fn files(&self) -> u64 {
        self.inner.stats.files
    }

    #[getter]
    fn dirs(&self) -> u64 {
        self.inner.stats.dirs
    }

    #[getter]
    fn symlinks(&self) -> u64 {
        self.inner.stats.symlinks
    }

    #[getter]
    fn bytes(&self) -> u64 {
        self.inner.stats.bytes
    }

    /// Files whose content was read by the walk (0 for a context read from a listing).
    #[getter]
    fn hashed_files(&self) -> u64 {
        self.inner.stats.hashed_files
    }

    /// Files whose digest came from the stat cache.
    #[getter]
    fn cache_hits(&self) -> u64 {
        self.inner.stats.cache_hits
    }

    fn __len__(&self) -> usize {
        self.inner.entries.len()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyContextIndex>()
}
