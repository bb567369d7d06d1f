//! The CUDA backend: the kernels of `kernels/*.cu`, shipped as PTX inside the crate
//! ([`ptx`]), loaded lazily per device and launched through `cudarc` on one stream per backend
//! handle (each virtual accelerator forks its own, so accelerators run concurrently).
//!
//! `cudarc` loads the driver dynamically, so this backend always compiles; on a machine without
//! a CUDA driver or device, [`CudaBackend::new`] returns a `Backend` error saying so (never a
//! panic) and the CPU backend serves. Which launches an op needs is decided by [`launch`] (pure
//! Rust, shared with the CPU emulator of the kernels); this module only moves memory and runs
//! those launches. Every `unsafe` of the backend is in this file, each with its `SAFETY:` note.

pub mod launch;
pub mod ptx;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DeviceRepr, DriverError, LaunchConfig, PushKernelArg,
};

use self::launch::{Arch, Family, KernelArgs, Launch, Target};
use super::Backend;
use crate::error::{Error, Result};
use crate::ops::Plan;
use crate::tensor::{HostData, HostTensor, Tensor, TensorDesc};

/// Device memory of one tensor (`None` for a tensor with no elements: CUDA cannot allocate 0
/// bytes).
pub struct CudaStorage(Option<CudaSlice<u8>>);

/// One CUDA device and a stream on it. Cheap to clone (clones share the stream); [`fork`]
/// gives a handle with its own stream.
///
/// [`fork`]: Backend::fork
#[derive(Clone)]
pub struct CudaBackend {
    device: Arc<DeviceState>,
    stream: Arc<CudaStream>,
}

/// What all handles on one device share: the context and the loaded kernels.
struct DeviceState {
    ctx: Arc<CudaContext>,
    arch: Arch,
    name: String,
    modules: Mutex<HashMap<(Family, Target), Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
}

fn cuda_err(what: impl std::fmt::Display, e: DriverError) -> Error {
    Error::Backend {
        backend: "cuda",
        msg: format!("{what}: {e}"),
    }
}

impl CudaBackend {
    /// The CUDA device `ordinal` (0 for the first GPU). Fails with a readable `Backend` error
    /// when there is no CUDA driver, no such device, or a device older than compute
    /// capability 8.0 (the kernels' baseline).
    pub fn new(ordinal: usize) -> Result<Self> {
        let count = Self::device_count()?;
        if ordinal >= count {
            return Err(Error::Backend {
                backend: "cuda",
                msg: if count == 0 {
                    "no CUDA device: the driver is present but reports no GPU".into()
                } else {
                    format!("no CUDA device {ordinal}: the driver reports {count} device(s)")
                },
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| cuda_err("cannot open the device", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| cuda_err("cannot read the compute capability", e))?;
        let arch = Arch {
            major: major as u32,
            minor: minor as u32,
        };
        if arch < Arch::SM80 {
            return Err(Error::Backend {
                backend: "cuda",
                msg: format!(
                    "device {ordinal} is {arch}; eia's kernels need compute capability 8.0 or newer"
                ),
            });
        }
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let stream = ctx
            .new_stream()
            .map_err(|e| cuda_err("cannot create a stream", e))?;
        Ok(CudaBackend {
            device: Arc::new(DeviceState {
                ctx,
                arch,
                name,
                modules: Mutex::default(),
                functions: Mutex::default(),
            }),
            stream,
        })
    }

    /// Number of CUDA devices; an error when no CUDA driver can be loaded.
    pub fn device_count() -> Result<usize> {
        // SAFETY: is_culib_present only tries to dlopen the driver library and reports whether
        // it could; it dereferences nothing.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::Backend {
                backend: "cuda",
                msg: "no CUDA driver: libcuda.so could not be loaded (no NVIDIA driver on this \
                      machine); use the CPU backend"
                    .into(),
            });
        }
        let count = CudaContext::device_count()
            .map_err(|e| cuda_err("cannot initialise the CUDA driver", e))?;
        Ok(count.max(0) as usize)
    }

    /// The device's compute capability.
    pub fn arch(&self) -> Arch {
        self.device.arch
    }

    /// The device's marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> &str {
        &self.device.name
    }

    /// Loads (once per device) and returns a kernel.
    fn function(&self, launch: &Launch) -> Result<CudaFunction> {
        let dev = &self.device;
        if let Some(f) = crate::sync::lock(&dev.functions).get(&launch.kernel) {
            return Ok(f.clone());
        }
        let file = || {
            format!(
                "kernels/ptx/{}.{}.ptx",
                launch.family.name(),
                launch.target.name()
            )
        };
        let module = {
            let mut modules = crate::sync::lock(&dev.modules);
            match modules.get(&(launch.family, launch.target)) {
                Some(m) => m.clone(),
                None => {
                    let src = ptx::source(launch.family, launch.target).ok_or_else(|| {
                        Error::Backend {
                            backend: "cuda",
                            msg: format!(
                                "kernel {}: {} is not shipped with this build",
                                launch.kernel,
                                file()
                            ),
                        }
                    })?;
                    let m = dev.ctx.load_module(src.into()).map_err(|e| {
                        cuda_err(
                            format!(
                                "kernel {}: the driver cannot load {} on {} ({})",
                                launch.kernel,
                                file(),
                                dev.name,
                                dev.arch
                            ),
                            e,
                        )
                    })?;
                    modules.insert((launch.family, launch.target), m.clone());
                    m
                }
            }
        };
        let f = module.load_function(&launch.kernel).map_err(|e| {
            cuda_err(
                format!("kernel {} is missing from {}", launch.kernel, file()),
                e,
            )
        })?;
        crate::sync::lock(&dev.functions).insert(launch.kernel.clone(), f.clone());
        Ok(f)
    }

    /// Queues launches on this handle's stream.
    fn run(&self, launches: Vec<Launch>) -> Result<()> {
        for l in &launches {
            let f = self.function(l)?;
            let cfg = LaunchConfig {
                grid_dim: (l.grid[0], l.grid[1], l.grid[2]),
                block_dim: (l.block[0], l.block[1], l.block[2]),
                shared_mem_bytes: 0,
            };
            let mut builder = self.stream.launch_builder(&f);
            match &l.args {
                KernelArgs::Gemm(p) => builder.arg(p),
                KernelArgs::Conv(p) => builder.arg(p),
                KernelArgs::BatchNorm(p) => builder.arg(p),
                KernelArgs::Softmax(p) => builder.arg(p),
                KernelArgs::Unary(p) => builder.arg(p),
                KernelArgs::Binary(p) => builder.arg(p),
                KernelArgs::Pool(p) => builder.arg(p),
                KernelArgs::Layout(p) => builder.arg(p),
                KernelArgs::Lrn(p) => builder.arg(p),
            };
            // SAFETY: the kernel takes exactly one parameter, the params struct pushed above,
            // whose #[repr(C)] layout mirrors the C struct of its .cu file (kernels/README.md).
            // Its pointers come from `ptrs` in `launch`: live allocations of this device whose sizes
            // the validated plan matches, kept alive by the caller until the launch is queued
            // (the stream orders later frees after it).
            unsafe { builder.launch(cfg) }
                .map_err(|e| cuda_err(format!("launching {}", l.kernel), e))?;
        }
        Ok(())
    }
}

// SAFETY (all of them): plain #[repr(C)] structs of integers, floats and device addresses, with no
// references or padding-dependent invariants; the driver copies them byte for byte.
unsafe impl DeviceRepr for launch::gemm::GemmParams {}
unsafe impl DeviceRepr for launch::conv::ConvParams {}
unsafe impl DeviceRepr for launch::batchnorm::BatchNormParams {}
unsafe impl DeviceRepr for launch::softmax::SoftmaxParams {}
unsafe impl DeviceRepr for launch::unary::UnaryParams {}
unsafe impl DeviceRepr for launch::binary::BinaryParams {}
unsafe impl DeviceRepr for launch::pool::PoolParams {}
unsafe impl DeviceRepr for launch::layout::LayoutParams {}
unsafe impl DeviceRepr for launch::lrn::LrnParams {}

impl Backend for CudaBackend {
    type Storage = CudaStorage;

    fn name(&self) -> String {
        format!(
            "cuda:{} ({}, {})",
            self.device.ctx.ordinal(),
            self.device.name,
            self.device.arch
        )
    }

    fn alloc(&self, desc: &TensorDesc) -> Result<Tensor<CudaStorage>> {
        let buf = match desc.bytes() {
            0 => None,
            bytes => Some(
                // SAFETY: the contents are unspecified until written, as Backend::alloc says;
                // u8 has no invalid bit patterns.
                unsafe { self.stream.alloc::<u8>(bytes) }.map_err(|e| {
                    cuda_err(
                        format!("cannot allocate {bytes} bytes for {:?}", desc.shape()),
                        e,
                    )
                })?,
            ),
        };
        Ok(Tensor::from_parts(desc.clone(), CudaStorage(buf)))
    }

    fn upload(&self, host: &HostTensor) -> Result<Tensor<CudaStorage>> {
        let bytes = host.data().as_bytes();
        let buf = match bytes.len() {
            0 => None,
            n => Some(
                self.stream
                    .clone_htod(bytes)
                    .map_err(|e| cuda_err(format!("cannot upload {n} bytes"), e))?,
            ),
        };
        Ok(Tensor::from_parts(host.desc().clone(), CudaStorage(buf)))
    }

    fn write(&self, t: &mut Tensor<CudaStorage>, host: &HostTensor) -> Result<()> {
        super::check_write(t.desc(), host.desc())?;
        if let Some(buf) = t.storage_mut().0.as_mut() {
            self.stream
                .memcpy_htod(host.data().as_bytes(), buf)
                .map_err(|e| cuda_err("cannot write tensor data", e))?;
        }
        Ok(())
    }

    fn download(&self, t: &Tensor<CudaStorage>) -> Result<HostTensor> {
        let bytes = match &t.storage().0 {
            Some(buf) => self
                .stream
                .clone_dtoh(buf)
                .map_err(|e| cuda_err("cannot download tensor data", e))?,
            None => Vec::new(),
        };
        Ok(Tensor::from_parts(
            t.desc().clone(),
            HostData::from_bytes(t.desc().dtype(), &bytes),
        ))
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| cuda_err("synchronising the stream", e))
    }

    fn total_memory(&self) -> Option<u64> {
        self.device.ctx.total_mem().ok().map(|b| b as u64)
    }

    fn fork(&self) -> Result<Self> {
        let stream = self
            .device
            .ctx
            .new_stream()
            .map_err(|e| cuda_err("cannot create a stream", e))?;
        Ok(CudaBackend {
            device: self.device.clone(),
            stream,
        })
    }

    /// Launches `plan`'s kernels with the device addresses of the operands and the output.
    fn launch(&self, plan: &Plan, inputs: &[&CudaStorage], y: &mut CudaStorage) -> Result<()> {
        let Some(out) = y.0.as_mut() else {
            return Ok(()); // nothing to write
        };
        let stream = &self.stream;
        // The guards make the stream wait for earlier writes of each buffer and record this
        // use; they are dropped after the launches are queued. An empty operand has address 0.
        let mut guards = Vec::with_capacity(inputs.len());
        let mut ptrs = Vec::with_capacity(inputs.len());
        for s in inputs {
            match &s.0 {
                Some(buf) => {
                    let (ptr, guard) = buf.device_ptr(stream);
                    ptrs.push(ptr);
                    guards.push(guard);
                }
                None => ptrs.push(0),
            }
        }
        let (yptr, _yguard) = out.device_ptr_mut(stream);
        self.run(launch::launches(plan, self.device.arch, &ptrs, yptr)?)
    }
}
