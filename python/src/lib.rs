//! `eia._eia`, the extension module behind the Python package `eia` (python/eia/): numpy arrays
//! in and out of virtual accelerators, local or remote, with typed exceptions.
//!
//! - [`errors`] — `eia.Error` and one subclass per [`eia::Error`] kind.
//! - [`accel`] — devices, connections, accelerators and their tensors (one enum over the local
//!   CPU/CUDA and the remote backend).
//! - [`ops`] — the op table (every [`eia::ops::Op`], its inputs and default attributes) and
//!   keyword attributes into an `Op`.
//! - [`program`] — ops batched into one round trip on a remote accelerator.
//! - [`arrays`] — numpy arrays to host tensors and back.
//! - [`info`] — tiers and usage records as Python objects.
//! - [`model`] — ONNX models and their sessions.
//!
//! Every call that computes, moves data or talks to a server releases the GIL; every object is
//! `Send + Sync`, so Python threads can share an accelerator.

use pyo3::prelude::*;

mod accel;
mod arrays;
mod errors;
mod info;
mod model;
mod ops;
mod program;

#[pymodule]
fn _eia(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<accel::Device>()?;
    m.add_class::<accel::Connection>()?;
    m.add_class::<accel::Accelerator>()?;
    m.add_class::<accel::Tensor>()?;
    m.add_class::<program::Program>()?;
    m.add_class::<info::Usage>()?;
    m.add_class::<info::Tier>()?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::Session>()?;
    m.add_function(wrap_pyfunction!(accel::connect, m)?)?;
    m.add_function(wrap_pyfunction!(info::tiers, m)?)?;
    m.add_function(wrap_pyfunction!(ops::op_table, m)?)?;
    Ok(())
}
