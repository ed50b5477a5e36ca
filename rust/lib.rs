//! `memobuild._core`: the Rust hot paths of MemoBuild.
//!
//! This file only declares the modules and registers the Python bindings; the logic lives in
//! the plain-Rust modules (`hash`, `ignore`, `verify`, `dag`, `statcache`) and the thin
//! binding code in `py/`.

pub mod dag;
pub mod hash;
pub mod ignore;
pub mod layer;
pub mod select;
pub mod shellmatch;
pub mod snapshot;
pub mod statcache;
pub mod verify;

mod py;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    py::hash::register(m)?;
    py::ignore::register(m)?;
    py::verify::register(m)?;
    py::dag::register(m)?;
    py::select::register(m)?;
    py::layer::register(m)?;
    py::shellmatch::register(m)?;
    Ok(())
}
