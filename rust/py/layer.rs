//! Bindings for `snapshot` and `layer`: stat snapshots, layer blobs, safe unpacking.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::layer::{self, EntrySpec, LayerError, LayerInfo, Limits, ListedKind, WriteOptions};
use crate::py::hash::io_error;
use crate::snapshot as snap;

create_exception!(
    memobuild._core,
    LayerSecurityError,
    PyValueError,
    "A layer entry was refused because applying it could reach outside the root or grant \
     privileges; args are (entry, reason)."
);

create_exception!(
    memobuild._core,
    LayerFormatError,
    PyValueError,
    "A layer is malformed, or a root filesystem path cannot be put in a layer; args are \
     (entry, reason)."
);

/// (digest, diff_id, size, entries)
type InfoTuple = (String, String, u64, u64);

fn layer_error(e: LayerError) -> PyErr {
    match e {
        LayerError::Io { path, source } => io_error(path, source),
        LayerError::Refused { entry, reason } => {
            LayerSecurityError::new_err((OsString::from_vec(entry), reason))
        }
        LayerError::Invalid { entry, reason } => {
            LayerFormatError::new_err((OsString::from_vec(entry), reason))
        }
        LayerError::Usage(msg) => PyValueError::new_err(msg),
    }
}

fn info_tuple(i: LayerInfo) -> InfoTuple {
    (i.digest, i.diff_id, i.size, i.entries)
}

fn write_options(source_date_epoch: Option<i64>) -> PyResult<WriteOptions> {
    if let Some(e) = source_date_epoch {
        if e < 0 {
            return Err(PyValueError::new_err(format!(
                "source_date_epoch must not be negative, got {e}"
            )));
        }
    }
    Ok(WriteOptions { source_date_epoch })
}

/// The stat records of a root filesystem, taken before a step; opaque to Python.
#[pyclass(name = "Snapshot", module = "memobuild._core", frozen)]
struct PySnapshot {
    inner: snap::Snapshot,
}

#[pymethods]
impl PySnapshot {
    /// The canonical path of the directory the snapshot was taken of.
    #[getter]
    fn root(&self) -> PathBuf {
        self.inner.root().to_path_buf()
    }

    /// Paths recorded below the root.
    #[getter]
    fn entries(&self) -> u64 {
        self.inner.entries()
    }

    fn __len__(&self) -> usize {
        self.inner.entries() as usize
    }

    fn __repr__(&self) -> String {
        format!(
            "<Snapshot of {} ({} entries)>",
            self.inner.root().display(),
            self.inner.entries()
        )
    }
}

#[pyfunction]
fn snapshot(py: Python<'_>, root: PathBuf) -> PyResult<PySnapshot> {
    let inner = py
        .detach(|| snap::snapshot(&root))
        .map_err(|e| layer_error(e.into()))?;
    Ok(PySnapshot { inner })
}

#[pyfunction]
#[pyo3(signature = (root, before, out_path, source_date_epoch=None, exclude=Vec::new()))]
fn write_diff_layer(
    py: Python<'_>,
    root: PathBuf,
    before: &Bound<'_, PySnapshot>,
    out_path: PathBuf,
    source_date_epoch: Option<i64>,
    exclude: Vec<PathBuf>,
) -> PyResult<InfoTuple> {
    let opts = write_options(source_date_epoch)?;
    let exclude = exclude
        .iter()
        .map(|p| {
            snap::normalize_rel(p.as_os_str().as_bytes()).map_err(|reason| {
                PyValueError::new_err((p.clone().into_os_string(), format!("exclude {reason}")))
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let before = &before.get().inner;
    py.detach(|| layer::write_diff_layer(&root, before, &out_path, &opts, &exclude))
        .map(info_tuple)
        .map_err(layer_error)
}

#[pyfunction]
#[pyo3(signature = (root, out_path, source_date_epoch=None))]
fn write_tree_layer(
    py: Python<'_>,
    root: PathBuf,
    out_path: PathBuf,
    source_date_epoch: Option<i64>,
) -> PyResult<InfoTuple> {
    let opts = write_options(source_date_epoch)?;
    py.detach(|| layer::write_tree_layer(&root, &out_path, &opts))
        .map(info_tuple)
        .map_err(layer_error)
}

/// One row of `write_entries_layer`: (name, kind, source, link, blake3, mode, uid, gid,
/// mtime_ns); see `layer::EntrySpec`.
type EntryRow = (
    Vec<u8>,
    String,
    Option<PathBuf>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    u32,
    u64,
    u64,
    Option<i64>,
);

fn entry_spec(row: EntryRow) -> PyResult<EntrySpec> {
    let (name, kind, source, link, digest, mode, uid, gid, mtime_ns) = row;
    let kind = match kind.as_str() {
        "file" => snap::Kind::File,
        "dir" => snap::Kind::Dir,
        "symlink" => snap::Kind::Symlink,
        other => {
            return Err(PyValueError::new_err(format!(
                "entry kind must be 'file', 'dir' or 'symlink', not {other:?}"
            )))
        }
    };
    let blake3 = match digest {
        None => None,
        Some(d) => Some(
            <[u8; 32]>::try_from(d.as_slice())
                .map_err(|_| PyValueError::new_err("a BLAKE3 digest is 32 bytes"))?,
        ),
    };
    Ok(EntrySpec {
        name,
        kind,
        source,
        link: link.unwrap_or_default(),
        blake3,
        mode,
        uid,
        gid,
        mtime_ns,
    })
}

#[pyfunction]
#[pyo3(signature = (entries, out_path, source_date_epoch=None))]
fn write_entries_layer(
    py: Python<'_>,
    entries: Vec<EntryRow>,
    out_path: PathBuf,
    source_date_epoch: Option<i64>,
) -> PyResult<InfoTuple> {
    let opts = write_options(source_date_epoch)?;
    let specs = entries
        .into_iter()
        .map(entry_spec)
        .collect::<PyResult<Vec<_>>>()?;
    py.detach(|| layer::write_entries_layer(&specs, &out_path, &opts))
        .map(info_tuple)
        .map_err(layer_error)
}

/// Returns [(name, kind)] in archive order; kind is "dir", "file", "symlink", "hardlink" or
/// "other".
#[pyfunction]
#[pyo3(signature = (path, max_bytes=layer::DEFAULT_MAX_BYTES, max_entries=layer::DEFAULT_MAX_ENTRIES))]
fn list_layer<'py>(
    py: Python<'py>,
    path: PathBuf,
    max_bytes: u64,
    max_entries: u64,
) -> PyResult<Vec<(Bound<'py, PyBytes>, &'static str)>> {
    let limits = Limits {
        max_bytes,
        max_entries,
    };
    let listed = py
        .detach(|| layer::list_layer(&path, limits))
        .map_err(layer_error)?;
    Ok(listed
        .iter()
        .map(|(name, kind)| {
            let kind = match kind {
                ListedKind::Dir => "dir",
                ListedKind::File => "file",
                ListedKind::Symlink => "symlink",
                ListedKind::HardLink => "hardlink",
                ListedKind::Other => "other",
            };
            (PyBytes::new(py, name), kind)
        })
        .collect())
}

/// Returns (entries, expanded bytes, diff_id: "sha256:<hex>" of the uncompressed tar).
#[pyfunction]
#[pyo3(signature = (path, root, max_bytes=layer::DEFAULT_MAX_BYTES, max_entries=layer::DEFAULT_MAX_ENTRIES))]
fn unpack_layer(
    py: Python<'_>,
    path: PathBuf,
    root: PathBuf,
    max_bytes: u64,
    max_entries: u64,
) -> PyResult<(u64, u64, String)> {
    let limits = Limits {
        max_bytes,
        max_entries,
    };
    py.detach(|| layer::unpack_layer(&path, &root, limits))
        .map(|s| {
            (
                s.entries,
                s.bytes,
                format!("sha256:{}", hex::encode(s.diff_id)),
            )
        })
        .map_err(layer_error)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add(
        "LayerSecurityError",
        m.py().get_type::<LayerSecurityError>(),
    )?;
    m.add("LayerFormatError", m.py().get_type::<LayerFormatError>())?;
    m.add("DEFAULT_MAX_LAYER_BYTES", layer::DEFAULT_MAX_BYTES)?;
    m.add("DEFAULT_MAX_LAYER_ENTRIES", layer::DEFAULT_MAX_ENTRIES)?;
    m.add_class::<PySnapshot>()?;
    m.add_function(wrap_pyfunction!(snapshot, m)?)?;
    m.add_function(wrap_pyfunction!(write_diff_layer, m)?)?;
    m.add_function(wrap_pyfunction!(write_tree_layer, m)?)?;
    m.add_function(wrap_pyfunction!(write_entries_layer, m)?)?;
    m.add_function(wrap_pyfunction!(list_layer, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_layer, m)?)
}
