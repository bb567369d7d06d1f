//! ONNX models ([`eia::Model`]) and sessions: a session holds the weights on one accelerator
//! and runs one inference per call (one round trip on a remote accelerator).

use std::path::PathBuf;
use std::sync::Arc;

use eia::accelerator::Accelerator as Local;
use eia::rpc::client::RemoteAccelerator;
use eia::{CpuBackend, CudaBackend, LoadOptions};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::accel::{shared_of, Kind, Shared};
use crate::arrays;
use crate::errors::to_py;

/// A session over any accelerator, borrowing its model and accelerator.
enum AnySession<'a> {
    Cpu(eia::model::Session<'a, Local<CpuBackend>>),
    Cuda(eia::model::Session<'a, Local<CudaBackend>>),
    Remote(eia::model::Session<'a, RemoteAccelerator>),
}

/// What a session borrows, owned beside it.
struct Owners {
    model: Arc<eia::Model>,
    acc: Arc<Shared>,
}

self_cell::self_cell!(
    struct SessionCell {
        owner: Owners,
        #[not_covariant]
        dependent: AnySession,
    }
);

/// A loaded ONNX model (weights on the host).
#[pyclass(frozen, module = "eia")]
pub struct Model {
    model: Arc<eia::Model>,
}

/// The model's inputs or outputs as `(name, shape, dtype name)` tuples.
fn ports<'py>(py: Python<'py>, ports: &[eia::model::Port]) -> PyResult<Bound<'py, PyList>> {
    let items = ports
        .iter()
        .map(|p| {
            PyTuple::new(
                py,
                [
                    p.name.clone().into_pyobject(py)?.into_any(),
                    PyTuple::new(py, p.desc.shape())?.into_any(),
                    p.desc.dtype().to_string().into_pyobject(py)?.into_any(),
                ],
            )
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

/// One inference on `session` with numpy `inputs`; the outputs as numpy arrays.
fn infer<'py>(
    py: Python<'py>,
    session: &AnySession<'_>,
    inputs: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyList>> {
    let hosts = inputs
        .iter()
        .map(|a| arrays::host(&a))
        .collect::<PyResult<Vec<_>>>()?;
    let outs = py
        .detach(|| match session {
            AnySession::Cpu(s) => s.run(&hosts),
            AnySession::Cuda(s) => s.run(&hosts),
            AnySession::Remote(s) => s.run(&hosts),
        })
        .map_err(to_py)?;
    let arrays = outs
        .into_iter()
        .map(|h| arrays::array(py, h))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, arrays)
}

/// Uploads the weights: a session of `model` on `acc`.
fn open(py: Python<'_>, model: &Arc<eia::Model>, acc: &Arc<Shared>) -> PyResult<SessionCell> {
    let owners = Owners {
        model: model.clone(),
        acc: acc.clone(),
    };
    py.detach(|| {
        SessionCell::try_new(owners, |o| {
            Ok(match &o.acc.kind {
                Kind::Cpu(a) => AnySession::Cpu(o.model.session(a)?),
                Kind::Cuda(a) => AnySession::Cuda(o.model.session(a)?),
                Kind::Remote(r) => AnySession::Remote(o.model.session(r)?),
            })
        })
    })
    .map_err(to_py)
}

#[pymethods]
impl Model {
    /// Loads an ONNX model for batch size `batch` (a symbolic first dimension), computing in
    /// FP16 when `fp16`. Every unsupported node is listed in one `ModelError`.
    #[staticmethod]
    #[pyo3(signature = (path, batch = 1, fp16 = false))]
    fn load(py: Python<'_>, path: PathBuf, batch: usize, fp16: bool) -> PyResult<Model> {
        let model = py
            .detach(|| eia::Model::load(&path, LoadOptions { batch, fp16 }))
            .map_err(to_py)?;
        Ok(Model {
            model: Arc::new(model),
        })
    }

    /// Uploads the weights to `acc` once: a session runs one inference per call.
    fn session(&self, py: Python<'_>, acc: &Bound<'_, PyAny>) -> PyResult<Session> {
        Ok(Session {
            cell: open(py, &self.model, &shared_of(acc)?)?,
        })
    }

    /// One inference on `acc` (uploads the weights for this call alone; a session keeps them).
    #[pyo3(signature = (acc, *inputs))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        acc: &Bound<'py, PyAny>,
        inputs: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyList>> {
        let cell = open(py, &self.model, &shared_of(acc)?)?;
        cell.with_dependent(|_, s| infer(py, s, inputs))
    }

    /// The runtime inputs: `(name, shape, dtype)` tuples.
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        ports(py, self.model.inputs())
    }

    /// The outputs: `(name, shape, dtype)` tuples.
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        ports(py, self.model.outputs())
    }

    /// FLOPs per inference.
    #[getter]
    fn flops(&self) -> u64 {
        self.model.flops()
    }

    /// The most bytes a session holds at once (weights and live activations).
    #[getter]
    fn peak_bytes(&self) -> u64 {
        self.model.peak_bytes()
    }
}

/// A model's weights on one accelerator.
#[pyclass(frozen, module = "eia")]
pub struct Session {
    cell: SessionCell,
}

#[pymethods]
impl Session {
    /// One inference: numpy inputs in graph order; the outputs as numpy arrays.
    #[pyo3(signature = (*inputs))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyList>> {
        self.cell.with_dependent(|_, s| infer(py, s, inputs))
    }
}
