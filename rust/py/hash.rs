//! Bindings for `hash::hash_tree`.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use pyo3::exceptions::{
    PyFileNotFoundError, PyNotADirectoryError, PyOSError, PyPermissionError, PyValueError,
};
use pyo3::prelude::*;

use crate::hash::{self, Filter, HashError, Options};
use crate::ignore::DockerIgnore;

/// (path, kind, digest hex, executable, size, link target)
type EntryTuple = (OsString, &'static str, String, bool, u64, Option<OsString>);
type TreeTuple = (
    String,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    Option<Vec<EntryTuple>>,
);

pub(crate) fn hash_error(e: HashError) -> PyErr {
    match e {
        HashError::RootNotFound(p) => {
            PyFileNotFoundError::new_err((2, "no such directory", p.into_os_string()))
        }
        HashError::RootNotDirectory(p) => {
            PyNotADirectoryError::new_err((20, "not a directory", p.into_os_string()))
        }
        HashError::Io { path, source } => io_error(path, source),
    }
}

pub(crate) fn io_error(path: PathBuf, e: std::io::Error) -> PyErr {
    let errno = e.raw_os_error().unwrap_or(0);
    // Python's strerror has no "(os error N)" suffix; neither should ours.
    let msg = e.to_string();
    let msg = match msg.rfind(" (os error ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    let args = (errno, msg, path.into_os_string());
    match e.kind() {
        ErrorKind::NotFound => PyFileNotFoundError::new_err(args),
        ErrorKind::PermissionDenied => PyPermissionError::new_err(args),
        _ => PyOSError::new_err(args),
    }
}

#[pyfunction]
#[pyo3(signature = (root, dockerignore=None, gitignore=false, stat_cache=None, include_entries=false))]
fn hash_tree(
    py: Python<'_>,
    root: PathBuf,
    dockerignore: Option<Vec<String>>,
    gitignore: bool,
    stat_cache: Option<PathBuf>,
    include_entries: bool,
) -> PyResult<TreeTuple> {
    let filter = match (dockerignore, gitignore) {
        (Some(_), true) => {
            return Err(PyValueError::new_err(
                "choose either dockerignore patterns or gitignore, not both",
            ))
        }
        (Some(p), false) => Filter::Docker(
            DockerIgnore::new(&p)
                .map_err(|e| PyValueError::new_err((e.pattern.clone(), e.reason.clone())))?,
        ),
        (None, true) => Filter::Git,
        (None, false) => Filter::All,
    };
    let opts = Options {
        filter,
        stat_cache,
        include_entries,
    };
    let t = py
        .detach(|| hash::hash_tree(&root, &opts))
        .map_err(hash_error)?;
    let entries = t.entries.map(|es| {
        es.into_iter()
            .map(|e| {
                (
                    OsString::from_vec(e.path),
                    e.kind.name(),
                    hex::encode(e.digest),
                    e.executable,
                    e.size,
                    e.link_target.map(OsString::from_vec),
                )
            })
            .collect()
    });
    Ok((
        format!("blake3:{}", hex::encode(t.digest)),
        t.files,
        t.dirs,
        t.symlinks,
        t.bytes,
        t.hashed_files,
        t.cache_hits,
        entries,
    ))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(hash_tree, m)?)
}
