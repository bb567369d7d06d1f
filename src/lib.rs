//! # eia — open elastic inference accelerators
//!
//! ONNX-exact inference ops (GEMM/MatMul, Conv, BatchNormalization, Softmax) in FP32 and in FP16
//! with FP32 accumulation, on a fast multi-threaded CPU backend and a CUDA backend, behind one
//! backend contract that metered virtual accelerators and the remote client implement too.
//!
//! ```
//! use eia::{Backend, CpuBackend, HostTensor, ops::Gemm};
//!
//! let cpu = CpuBackend::new();
//! let a = cpu.upload(&HostTensor::new(&[2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])?)?;
//! let b = cpu.upload(&HostTensor::new(&[3, 1], vec![1.0f32, 0.5, 0.25])?)?;
//! let y = cpu.download(&cpu.gemm(&Gemm::default(), &a, &b, None)?)?;
//! assert_eq!(y.data().to_f32_vec(), vec![2.75, 8.0]);
//! # Ok::<(), eia::Error>(())
//! ```
//!
//! # Layout
//!
//! The modules follow the flow of one op call:
//! - [`ops`] — what a computation means: one [`ops::Op`] enum (attributes, arity, plan) every
//!   front end turns its input into; validation, shape inference, FLOPs.
//! - [`accelerator`] — how much one virtual accelerator may use: tiers, the FLOP meter, memory
//!   quotas, admission, usage; an [`Accelerator`] is a [`Backend`] wrapping a device's backend.
//! - [`backend`] — how a device computes it: the [`Backend`] contract (one `launch` of a plan;
//!   any op through `apply` / `apply_into`), the [`CpuBackend`], and
//!   the [`CudaBackend`] (PTX kernels from `kernels/`, launched through `cudarc`).
//! - [`rpc`] — how a remote host reaches it: the gRPC server (`eia serve`), the
//!   `RemoteAccelerator` client with the same [`Backend`] API, tokens, leases, metrics.
//! - [`model`] — whole ONNX models: load, check, infer shapes, fold constants, run in one
//!   session per backend.
//! - [`ffi`] — the C ABI (`include/eia.h`): the same product for C, Python and other runtimes.
//! - [`tensor`], [`dtype`] — tensors, descriptors, host data, element types.
//! - [`error`] — the one typed [`Error`]; [`sync`] — poison-tolerant locks.
//! - [`workload`] — named inference shapes shared by `eia run`, the benches and the peer script.

pub mod accelerator;
pub mod backend;
pub mod dtype;
pub mod error;
pub mod ffi;
pub mod model;
pub mod ops;
pub mod rpc;
pub mod sync;
pub mod tensor;
pub mod workload;

pub use accelerator::{Accelerator, Device, DeviceConfig, Tier, Tiers, Usage};
pub use backend::{Backend, CpuBackend, CudaBackend};
pub use dtype::{DType, Element, PerDType};
pub use error::{Error, Result};
pub use half::f16;
pub use model::{LoadOptions, Model};
pub use tensor::{HostData, HostTensor, Tensor, TensorDesc};
