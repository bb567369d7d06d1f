//! Devices, connections, accelerators and tensors. One [`Kind`] enum covers the accelerators
//! the crate has — local over the CPU or CUDA backend, or remote over gRPC — and one
//! [`Storage`] enum their tensors, so each Python method is written once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use eia::accelerator::Buffer;
use eia::ops::Op;
use eia::rpc::client::{ClientConfig, RemoteAccelerator, RemoteBuffer};
use eia::sync::lock;
use eia::{Backend, CpuBackend, CudaBackend, DType, DeviceConfig, TensorDesc};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::arrays;
use crate::errors::{to_py, Error as PyEiaError};
use crate::info::{Tier, Usage};
use crate::ops;
use crate::program::Program;

/// An accelerator of any backend.
pub enum Kind {
    Cpu(eia::Accelerator<CpuBackend>),
    Cuda(eia::Accelerator<CudaBackend>),
    Remote(RemoteAccelerator),
}

/// A tensor's storage on its accelerator.
pub enum Storage {
    Local(eia::Tensor<Buffer>),
    Remote(eia::Tensor<RemoteBuffer>),
}

/// Runs `$body` with `$a` bound to the local accelerator (either backend) or `$r` to the
/// remote one.
macro_rules! on_kind {
    ($kind:expr, $a:ident => $local:expr, $r:ident => $remote:expr) => {
        match $kind {
            Kind::Cpu($a) => $local,
            Kind::Cuda($a) => $local,
            Kind::Remote($r) => $remote,
        }
    };
}

/// What an accelerator's Python objects share: the accelerator, and its final usage once
/// detached.
pub struct Shared {
    pub kind: Kind,
    detached: Mutex<Option<eia::Usage>>,
}

impl Shared {
    fn new(kind: Kind) -> Arc<Shared> {
        Arc::new(Shared {
            kind,
            detached: Mutex::new(None),
        })
    }

    pub fn id(&self) -> u64 {
        on_kind!(&self.kind, a => a.id(), r => r.id())
    }

    fn tier(&self) -> eia::Tier {
        on_kind!(&self.kind, a => a.tier(), r => r.tier())
    }

    /// Its usage now, or its final usage once detached.
    fn usage(&self) -> eia::Result<eia::Usage> {
        if let Some(u) = lock(&self.detached).as_ref() {
            return Ok(u.clone());
        }
        on_kind!(&self.kind, a => Ok(a.usage()), r => r.usage())
    }

    fn detach(&self) -> eia::Result<eia::Usage> {
        let usage = on_kind!(&self.kind, a => a.detach(), r => r.detach())?;
        *lock(&self.detached) = Some(usage.clone());
        Ok(usage)
    }

    fn upload(&self, host: eia::HostTensor) -> eia::Result<Storage> {
        Ok(match &self.kind {
            Kind::Cpu(a) => Storage::Local(a.upload_owned(host)?),
            Kind::Cuda(a) => Storage::Local(a.upload_owned(host)?),
            Kind::Remote(r) => Storage::Remote(r.upload_owned(host)?),
        })
    }

    pub fn download(&self, t: &Storage) -> eia::Result<eia::HostTensor> {
        match (&self.kind, t) {
            (Kind::Cpu(a), Storage::Local(t)) => a.download(t),
            (Kind::Cuda(a), Storage::Local(t)) => a.download(t),
            (Kind::Remote(r), Storage::Remote(t)) => r.download(t),
            _ => Err(self.foreign(0)),
        }
    }

    /// Runs `op` on `inputs` (storages of this accelerator) into a new tensor.
    pub fn apply(&self, op: &Op, inputs: &[&Storage]) -> eia::Result<Storage> {
        Ok(match &self.kind {
            Kind::Cpu(a) => Storage::Local(a.apply(op, &self.locals(inputs)?)?),
            Kind::Cuda(a) => Storage::Local(a.apply(op, &self.locals(inputs)?)?),
            Kind::Remote(r) => Storage::Remote(r.apply(op, &self.remotes(inputs)?)?),
        })
    }

    pub fn foreign(&self, owner: u64) -> eia::Error {
        eia::Error::ForeignTensor {
            accelerator: self.id(),
            owner,
        }
    }

    pub fn locals<'a>(&self, xs: &[&'a Storage]) -> eia::Result<Vec<&'a eia::Tensor<Buffer>>> {
        xs.iter()
            .map(|s| match s {
                Storage::Local(t) => Ok(t),
                Storage::Remote(_) => Err(self.foreign(0)),
            })
            .collect()
    }

    pub fn remotes<'a>(
        &self,
        xs: &[&'a Storage],
    ) -> eia::Result<Vec<&'a eia::Tensor<RemoteBuffer>>> {
        xs.iter()
            .map(|s| match s {
                Storage::Remote(t) => Ok(t),
                Storage::Local(_) => Err(self.foreign(0)),
            })
            .collect()
    }
}

/// A tensor on an accelerator (float32 or float16). `numpy()` copies it back to the host.
/// A program's output has no storage until the program runs.
#[pyclass(frozen, module = "eia")]
pub struct Tensor {
    pub acc: Arc<Shared>,
    pub desc: TensorDesc,
    pub slot: OnceLock<Storage>,
}

impl Tensor {
    pub fn new(acc: Arc<Shared>, desc: TensorDesc, storage: Option<Storage>) -> Tensor {
        let slot = OnceLock::new();
        if let Some(s) = storage {
            let _ = slot.set(s);
        }
        Tensor { acc, desc, slot }
    }

    /// Its storage on `acc`: a typed error for another accelerator's tensor, and for a
    /// program's output before the program ran.
    pub fn storage(&self, acc: &Arc<Shared>) -> PyResult<&Storage> {
        if !Arc::ptr_eq(&self.acc, acc) {
            return Err(to_py(acc.foreign(self.acc.id())));
        }
        self.slot.get().ok_or_else(|| {
            PyEiaError::new_err("this tensor is the output of a program that has not run yet")
        })
    }
}

#[pymethods]
impl Tensor {
    /// The shape, as a tuple.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.desc.shape())
    }

    /// The numpy dtype (float32 or float16).
    #[getter]
    fn dtype<'py>(&self, py: Python<'py>) -> Bound<'py, numpy::PyArrayDescr> {
        match self.desc.dtype() {
            DType::F32 => numpy::dtype::<f32>(py),
            DType::F16 => numpy::dtype::<eia::f16>(py),
        }
    }

    /// Copies the tensor to a new numpy array (the GIL is released while it is copied).
    fn numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = self.storage(&self.acc)?;
        let host = py.detach(|| self.acc.download(s)).map_err(to_py)?;
        arrays::array(py, host)
    }

    fn __repr__(&self) -> String {
        format!(
            "Tensor({}, shape={:?}, accelerator={}{})",
            self.desc.dtype(),
            self.desc.shape(),
            self.acc.id(),
            if self.slot.get().is_some() {
                ""
            } else {
                ", pending"
            }
        )
    }
}

/// An accelerator (the Python class `eia.Accelerator` wraps it and adds one method per op).
#[pyclass(frozen, module = "eia._eia")]
pub struct Accelerator {
    pub shared: Arc<Shared>,
}

#[pymethods]
impl Accelerator {
    /// Copies a float32 or float16 numpy array onto the accelerator.
    fn upload(&self, py: Python<'_>, array: &Bound<'_, PyAny>) -> PyResult<Tensor> {
        let host = arrays::host(array)?;
        let desc = host.desc().clone();
        let s = py.detach(|| self.shared.upload(host)).map_err(to_py)?;
        Ok(Tensor::new(self.shared.clone(), desc, Some(s)))
    }

    /// Runs the op `name` on `inputs` (tensors in ONNX order; trailing `None`s leave optional
    /// inputs out) with keyword attributes `attrs`; the GIL is released while it runs.
    #[pyo3(signature = (name, inputs, attrs=None))]
    fn apply(
        &self,
        py: Python<'_>,
        name: &str,
        inputs: &Bound<'_, PyTuple>,
        attrs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Tensor> {
        let y = self.with_op(py, name, inputs, attrs, |op, x| self.shared.apply(op, x))?;
        Ok(Tensor::new(self.shared.clone(), desc_of(&y), Some(y)))
    }

    /// Seconds per call of the op `name` on `inputs`, called `n` times from Rust with no
    /// Python in the loop: the baseline `python/bench/overhead.py` compares a method call with.
    #[pyo3(signature = (name, inputs, n, attrs=None))]
    fn rust_seconds_per_op(
        &self,
        py: Python<'_>,
        name: &str,
        inputs: &Bound<'_, PyTuple>,
        n: u32,
        attrs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<f64> {
        self.with_op(py, name, inputs, attrs, |op, x| {
            let start = std::time::Instant::now();
            for _ in 0..n {
                self.shared.apply(op, x)?;
            }
            Ok(start.elapsed().as_secs_f64() / f64::from(n.max(1)))
        })
    }

    /// A program: ops recorded now, run together by `run()` (one round trip when remote).
    fn program(&self) -> Program {
        Program::new(self.shared.clone())
    }

    /// Its usage so far (the final record once detached).
    fn usage(&self, py: Python<'_>) -> PyResult<Usage> {
        py.detach(|| self.shared.usage())
            .map(Usage::from)
            .map_err(to_py)
    }

    /// Moves it to another tier, keeping its tensors.
    fn resize(&self, py: Python<'_>, tier: &str) -> PyResult<()> {
        py.detach(|| on_kind!(&self.shared.kind, a => a.resize(tier), r => r.resize(tier)))
            .map_err(to_py)
    }

    /// Detaches it, freeing everything it holds; returns the final usage.
    fn detach(&self, py: Python<'_>) -> PyResult<Usage> {
        py.detach(|| self.shared.detach())
            .map(Usage::from)
            .map_err(to_py)
    }

    /// Whether it was detached.
    #[getter]
    fn detached(&self) -> bool {
        lock(&self.shared.detached).is_some()
    }

    /// Its id on its device or server.
    #[getter]
    fn id(&self) -> u64 {
        self.shared.id()
    }

    /// The tier it is attached as.
    #[getter]
    fn tier(&self) -> Tier {
        self.shared.tier().into()
    }

    /// Where it runs ("cpu", "cuda:0", or the remote accelerator and its server).
    #[getter]
    fn backend(&self) -> String {
        on_kind!(&self.shared.kind, a => a.name(), r => r.name())
    }
}

impl Accelerator {
    /// Parses the op `name` with `attrs`, checks `inputs` are this accelerator's tensors with
    /// storage, then runs `f` on them with the GIL released.
    fn with_op<R: Send>(
        &self,
        py: Python<'_>,
        name: &str,
        inputs: &Bound<'_, PyTuple>,
        attrs: Option<&Bound<'_, PyDict>>,
        f: impl FnOnce(&Op, &[&Storage]) -> eia::Result<R> + Send,
    ) -> PyResult<R> {
        let op = ops::parse(py, name, attrs)?;
        let xs = tensors(inputs)?;
        let storages = xs
            .iter()
            .map(|t| t.get().storage(&self.shared))
            .collect::<PyResult<Vec<_>>>()?;
        py.detach(|| f(&op, &storages)).map_err(to_py)
    }
}

/// The accelerator behind `acc`: a native accelerator, or the Python `eia.Accelerator`
/// wrapping one.
pub fn shared_of(acc: &Bound<'_, PyAny>) -> PyResult<Arc<Shared>> {
    let native = match acc.cast::<Accelerator>() {
        Ok(a) => a.clone(),
        Err(_) => acc
            .getattr("_native")
            .and_then(|n| Ok(n.cast_into::<Accelerator>()?))
            .map_err(|_| pyo3::exceptions::PyTypeError::new_err("expected an eia.Accelerator"))?,
    };
    Ok(native.get().shared.clone())
}

/// The descriptor of a storage.
pub fn desc_of(s: &Storage) -> TensorDesc {
    match s {
        Storage::Local(t) => t.desc().clone(),
        Storage::Remote(t) => t.desc().clone(),
    }
}

/// The tensors of an op's inputs: trailing `None`s dropped (optional inputs left out).
pub fn tensors<'py>(inputs: &Bound<'py, PyTuple>) -> PyResult<Vec<Bound<'py, Tensor>>> {
    let mut items: Vec<Bound<'py, PyAny>> = inputs.iter().collect();
    while items.last().is_some_and(|x| x.is_none()) {
        items.pop();
    }
    items
        .into_iter()
        .map(|x| {
            x.cast_into::<Tensor>().map_err(|e| {
                pyo3::exceptions::PyTypeError::new_err(format!(
                    "op inputs are eia.Tensor (upload arrays first; only trailing optional inputs may be None): {e}"
                ))
            })
        })
        .collect()
}

enum DeviceKind {
    Cpu(eia::Device<CpuBackend>),
    Cuda(eia::Device<CudaBackend>),
}

/// A local device sliced into accelerators.
#[pyclass(frozen, module = "eia._eia")]
pub struct Device {
    kind: DeviceKind,
}

#[pymethods]
impl Device {
    /// `backend`: "auto" (CUDA device 0 where there is one, else the CPU), "cpu" or "cuda";
    /// `overcommit`: admit accelerators beyond the device's measured capacity.
    #[new]
    #[pyo3(signature = (backend = "auto", overcommit = false))]
    fn new(py: Python<'_>, backend: &str, overcommit: bool) -> PyResult<Device> {
        let config = DeviceConfig {
            overcommit,
            ..DeviceConfig::default()
        };
        let cpu = |config| eia::Device::new(CpuBackend::new(), config).map(DeviceKind::Cpu);
        let cuda = |config| {
            CudaBackend::new(0)
                .and_then(|b| eia::Device::new(b, config))
                .map(DeviceKind::Cuda)
        };
        let kind = py.detach(|| match backend {
            "cpu" => Ok(cpu(config)),
            "cuda" => Ok(cuda(config)),
            "auto" => Ok(cuda(config.clone()).or_else(|_| cpu(config))),
            other => Err(other.to_string()),
        });
        let kind = kind.map_err(|other| {
            PyValueError::new_err(format!(
                "backend {other:?}: expected \"auto\", \"cpu\" or \"cuda\""
            ))
        })?;
        Ok(Device {
            kind: kind.map_err(to_py)?,
        })
    }

    /// Attaches an accelerator of the tier called `tier` ("eia2.medium", …).
    fn attach(&self, py: Python<'_>, tier: &str) -> PyResult<Accelerator> {
        let kind = py
            .detach(|| match &self.kind {
                DeviceKind::Cpu(d) => d.attach(tier).map(Kind::Cpu),
                DeviceKind::Cuda(d) => d.attach(tier).map(Kind::Cuda),
            })
            .map_err(to_py)?;
        Ok(Accelerator {
            shared: Shared::new(kind),
        })
    }

    /// The backend's name ("cpu", "cuda:0", …).
    #[getter]
    fn backend(&self) -> String {
        match &self.kind {
            DeviceKind::Cpu(d) => d.backend().name(),
            DeviceKind::Cuda(d) => d.backend().name(),
        }
    }
}

/// A connection to an `eia serve` server.
#[pyclass(frozen, module = "eia._eia")]
pub struct Connection {
    conn: Arc<eia::rpc::client::Connection>,
}

#[pymethods]
impl Connection {
    /// Attaches an accelerator of the tier called `tier` on the server.
    fn attach(&self, py: Python<'_>, tier: &str) -> PyResult<Accelerator> {
        let r = py.detach(|| self.conn.attach(tier)).map_err(to_py)?;
        Ok(Accelerator {
            shared: Shared::new(Kind::Remote(r)),
        })
    }

    /// The tiers the server offers.
    fn tiers(&self, py: Python<'_>) -> PyResult<Vec<Tier>> {
        let tiers = py.detach(|| self.conn.tiers()).map_err(to_py)?;
        Ok(tiers.into_iter().map(Tier::from).collect())
    }
}

/// Connects to an `eia serve` server at `url` (`http://host:port`, or `https://` with `ca`, the
/// path of the PEM certificate of the CA that signed the server's), with a bearer `token` if the
/// server needs one.
#[pyfunction]
#[pyo3(signature = (url, token = None, ca = None))]
pub fn connect(
    py: Python<'_>,
    url: &str,
    token: Option<String>,
    ca: Option<PathBuf>,
) -> PyResult<Connection> {
    let ca_pem = ca.map(std::fs::read).transpose()?;
    let config = ClientConfig {
        token,
        ca_pem,
        ..ClientConfig::default()
    };
    let conn = py
        .detach(|| eia::rpc::client::Connection::connect(url, config))
        .map_err(to_py)?;
    Ok(Connection { conn })
}
