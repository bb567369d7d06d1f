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

use self::launch::{Arch, Family, KernelArgs, Launch, Ptr, Target};
use super::Backend;
use crate::error::{Error, Result};
use crate::ops::{BatchNormPlan, ConvPlan, GemmPlan, SoftmaxPlan};
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
            };
            // SAFETY: the kernel takes exactly one parameter, the params struct pushed above,
            // whose #[repr(C)] layout mirrors the C struct of its .cu file (kernels/README.md).
            // Its pointers come from `ptrs` below: live allocations of this device whose sizes
            // the validated plan matches, kept alive by the caller until the launch is queued
            // (the stream orders later frees after it).
            unsafe { builder.launch(cfg) }
                .map_err(|e| cuda_err(format!("launching {}", l.kernel), e))?;
        }
        Ok(())
    }

    /// Launches `plan`'s kernels with the device addresses of the operands and the output.
    fn launch_with(
        &self,
        inputs: &[Option<&CudaStorage>],
        y: &mut CudaStorage,
        make: impl FnOnce(Arch, &[Option<Ptr>], Ptr) -> Vec<Launch>,
    ) -> Result<()> {
        let Some(out) = y.0.as_mut() else {
            return Ok(()); // nothing to write
        };
        let stream = &self.stream;
        // The guards make the stream wait for earlier writes of each buffer and record this
        // use; they are dropped after the launches are queued.
        let mut guards = Vec::with_capacity(inputs.len());
        let mut ptrs = Vec::with_capacity(inputs.len());
        for s in inputs {
            match s.and_then(|s| s.0.as_ref()) {
                Some(buf) => {
                    let (ptr, guard) = buf.device_ptr(stream);
                    ptrs.push(Some(ptr));
                    guards.push(guard);
                }
                None => ptrs.push(None),
            }
        }
        let (yptr, _yguard) = out.device_ptr_mut(stream);
        self.run(make(self.device.arch, &ptrs, yptr))
    }
}

// SAFETY (all four): plain #[repr(C)] structs of integers, floats and device addresses, with no
// references or padding-dependent invariants; the driver copies them byte for byte.
unsafe impl DeviceRepr for launch::gemm::GemmParams {}
unsafe impl DeviceRepr for launch::conv::ConvParams {}
unsafe impl DeviceRepr for launch::batchnorm::BatchNormParams {}
unsafe impl DeviceRepr for launch::softmax::SoftmaxParams {}

/// The address of a present operand (the plan guarantees the non-empty ones are present).
fn ptr(p: Option<Ptr>) -> Ptr {
    p.unwrap_or(0)
}

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

    fn launch_gemm(
        &self,
        plan: &GemmPlan,
        a: &CudaStorage,
        b: &CudaStorage,
        c: Option<&CudaStorage>,
        y: &mut CudaStorage,
    ) -> Result<()> {
        self.launch_with(&[Some(a), Some(b), c], y, |arch, p, y| {
            launch::gemm::gemm(plan, arch, ptr(p[0]), ptr(p[1]), c.and(p[2]), y)
        })
    }

    fn launch_conv(
        &self,
        plan: &ConvPlan,
        x: &CudaStorage,
        w: &CudaStorage,
        bias: Option<&CudaStorage>,
        y: &mut CudaStorage,
    ) -> Result<()> {
        self.launch_with(&[Some(x), Some(w), bias], y, |arch, p, y| {
            launch::conv::conv(plan, arch, ptr(p[0]), ptr(p[1]), bias.and(p[2]), y)
        })
    }

    fn launch_batch_norm(
        &self,
        plan: &BatchNormPlan,
        x: &CudaStorage,
        params: [&CudaStorage; 4],
        y: &mut CudaStorage,
    ) -> Result<()> {
        let inputs = [
            Some(x),
            Some(params[0]),
            Some(params[1]),
            Some(params[2]),
            Some(params[3]),
        ];
        self.launch_with(&inputs, y, |arch, p, y| {
            let params = [ptr(p[1]), ptr(p[2]), ptr(p[3]), ptr(p[4])];
            launch::batchnorm::batch_norm(plan, arch, ptr(p[0]), params, y)
        })
    }

    fn launch_softmax(
        &self,
        plan: &SoftmaxPlan,
        x: &CudaStorage,
        y: &mut CudaStorage,
    ) -> Result<()> {
        self.launch_with(&[Some(x)], y, |arch, p, y| {
            launch::softmax::softmax(plan, arch, ptr(p[0]), y)
        })
    }
}
