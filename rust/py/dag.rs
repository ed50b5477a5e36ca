//! Bindings for `dag`: edge-list conversion, GIL release, error mapping.
//!
//! Edges arrive either as a sequence of `(source, target)` pairs (a list of tuples is the common
//! case and has its own fast path) or as `bytes` of little-endian int64 pairs (how the Python
//! face passes numpy arrays, without a Python object per id).

use std::fmt;

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyList, PySequence, PyTuple};

use crate::dag::{self, DagError};

create_exception!(
    memobuild._core,
    CycleError,
    PyValueError,
    "The graph has a cycle; args[0] lists the nodes on one cycle, in edge order."
);

/// How many edges of a list to prefetch at a time.
const LIST_CHUNK: usize = 16;

/// Where an id came from, for error messages.
#[derive(Clone, Copy)]
enum Site {
    Edge(usize),
    Changed(usize),
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Edge(i) => write!(f, "edge {i}"),
            Site::Changed(i) => write!(f, "changed[{i}]"),
        }
    }
}

fn dag_error(e: DagError) -> PyErr {
    match e {
        DagError::Cycle(nodes) => CycleError::new_err((nodes,)),
        other => PyValueError::new_err(other.to_string()),
    }
}

fn negative(site: Site, id: impl fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{site}: node id {id} is negative"))
}

/// Same wording as `DagError::NodeOutOfRange`, for ids too large for the core to even hold.
fn out_of_range(site: Site, id: impl fmt::Display, n: usize) -> PyErr {
    PyValueError::new_err(format!(
        "{site}: node {id} is out of range for a graph of {n} nodes"
    ))
}

/// A non-negative id as a `u32`; the check against `n` itself is the core's.
fn id_from_i64(id: i64, site: Site, n: usize) -> PyResult<u32> {
    if id < 0 {
        return Err(negative(site, id));
    }
    u32::try_from(id).map_err(|_| out_of_range(site, id, n))
}

fn id_from_object(obj: &Bound<'_, PyAny>, site: Site, n: usize) -> PyResult<u32> {
    match obj.extract::<i64>() {
        Ok(id) => id_from_i64(id, site, n),
        Err(_) if obj.is_instance_of::<PyInt>() => {
            // An int beyond int64: too large or too negative, either way not a node.
            if obj.lt(0)? {
                Err(negative(site, obj))
            } else {
                Err(out_of_range(site, obj, n))
            }
        }
        Err(_) => Err(PyValueError::new_err(format!(
            "{site}: node ids must be ints, got {}",
            type_name(obj)
        ))),
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |name| name.to_string())
}

fn not_a_pair(item: &Bound<'_, PyAny>, site: Site) -> PyErr {
    let what = match item.len() {
        Ok(len) => format!("{} of length {len}", type_name(item)),
        Err(_) => type_name(item),
    };
    PyValueError::new_err(format!(
        "{site}: expected a (source, target) pair, got {what}"
    ))
}

fn pair(item: &Bound<'_, PyAny>, i: usize, n: usize) -> PyResult<(u32, u32)> {
    let site = Site::Edge(i);
    if let Ok(tuple) = item.cast::<PyTuple>() {
        if tuple.len() != 2 {
            return Err(not_a_pair(item, site));
        }
        let a = id_from_object(&*tuple.get_borrowed_item(0)?, site, n)?;
        let b = id_from_object(&*tuple.get_borrowed_item(1)?, site, n)?;
        return Ok((a, b));
    }
    let seq = item
        .cast::<PySequence>()
        .map_err(|_| not_a_pair(item, site))?;
    if seq.len()? != 2 {
        return Err(not_a_pair(item, site));
    }
    let a = id_from_object(&seq.get_item(0)?, site, n)?;
    let b = id_from_object(&seq.get_item(1)?, site, n)?;
    Ok((a, b))
}

/// Edges given as Python objects: a list (fast path) or any other sequence of pairs.
fn pairs_from_objects(edges: &Bound<'_, PyAny>, n: usize) -> PyResult<Vec<(u32, u32)>> {
    if let Ok(list) = edges.cast::<PyList>() {
        dag::check_size(n, list.len()).map_err(dag_error)?;
        let mut out = Vec::with_capacity(list.len());
        // The ints of a big edge list are scattered over the heap, and reading them one after
        // the other waits for one cache miss at a time. So take the edges in chunks, first
        // asking for the memory of every id in the chunk, then reading them.
        let mut items = list.iter();
        let mut chunk = Vec::with_capacity(LIST_CHUNK);
        loop {
            chunk.clear();
            chunk.extend(items.by_ref().take(LIST_CHUNK));
            if chunk.is_empty() {
                return Ok(out);
            }
            for item in &chunk {
                if let Ok(tuple) = item.cast::<PyTuple>() {
                    for id in tuple.iter_borrowed() {
                        dag::prefetch(id.as_ptr());
                    }
                }
            }
            for item in &chunk {
                out.push(pair(item, out.len(), n)?);
            }
        }
    }
    let seq = edges.cast::<PySequence>().map_err(|_| {
        PyValueError::new_err(format!(
            "edges must be a sequence of (source, target) pairs or bytes of int64 pairs, got {}",
            type_name(edges)
        ))
    })?;
    let len = seq.len()?;
    dag::check_size(n, len).map_err(dag_error)?;
    let mut out = Vec::with_capacity(len);
    for i in 0..len {
        out.push(pair(&seq.get_item(i)?, i, n)?);
    }
    Ok(out)
}

/// Edges packed as little-endian int64 pairs, 16 bytes an edge.
fn pairs_from_packed(data: &[u8], n: usize) -> PyResult<Vec<(u32, u32)>> {
    if data.len() % 16 != 0 {
        return Err(PyValueError::new_err(format!(
            "packed edges must be little-endian int64 pairs (16 bytes each), got {} bytes",
            data.len()
        )));
    }
    dag::check_size(n, data.len() / 16).map_err(dag_error)?;
    data.chunks_exact(16)
        .enumerate()
        .map(|(i, chunk)| {
            let (a, b) = chunk.split_at(8);
            let id = |half: &[u8]| {
                let bytes = <[u8; 8]>::try_from(half).unwrap_or_default();
                id_from_i64(i64::from_le_bytes(bytes), Site::Edge(i), n)
            };
            Ok((id(a)?, id(b)?))
        })
        .collect()
}

/// Converts `edges` and runs `work` on them with the GIL released.
fn with_edges<T: Send>(
    py: Python<'_>,
    n: usize,
    edges: &Bound<'_, PyAny>,
    work: impl FnOnce(&[(u32, u32)]) -> Result<T, DagError> + Send,
) -> PyResult<T> {
    if let Ok(bytes) = edges.cast::<PyBytes>() {
        let data = bytes.as_bytes();
        return py.detach(|| work(&pairs_from_packed(data, n)?).map_err(dag_error));
    }
    let pairs = pairs_from_objects(edges, n)?;
    py.detach(|| work(&pairs).map_err(dag_error))
}

fn node_count(n: i64) -> PyResult<usize> {
    usize::try_from(n)
        .map_err(|_| PyValueError::new_err(format!("n must be a non-negative int, got {n}")))
}

/// The nodes `0..n` grouped into levels: each level depends only on earlier ones.
#[pyfunction]
fn dag_levels(py: Python<'_>, n: i64, edges: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<u32>>> {
    let n = node_count(n)?;
    with_edges(py, n, edges, |pairs| dag::levels(n, pairs))
}

/// The `changed` nodes and everything downstream of them, ascending.
#[pyfunction]
fn dag_affected(
    py: Python<'_>,
    n: i64,
    edges: &Bound<'_, PyAny>,
    changed: &Bound<'_, PyAny>,
) -> PyResult<Vec<u32>> {
    let n = node_count(n)?;
    let changed = changed
        .try_iter()
        .map_err(|_| {
            PyValueError::new_err(format!(
                "changed must be an iterable of node ids, got {}",
                type_name(changed)
            ))
        })?
        .enumerate()
        .map(|(i, item)| id_from_object(&item?, Site::Changed(i), n))
        .collect::<PyResult<Vec<u32>>>()?;
    with_edges(py, n, edges, |pairs| dag::affected(n, pairs, &changed))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CycleError", m.py().get_type::<CycleError>())?;
    m.add_function(wrap_pyfunction!(dag_levels, m)?)?;
    m.add_function(wrap_pyfunction!(dag_affected, m)?)?;
    Ok(())
}
