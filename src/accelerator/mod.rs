//! Virtual accelerators: one device sliced into accelerators that each behave like an Elastic
//! Inference accelerator of their tier.
//!
//! - [`tier`] — the tiers (the six Elastic Inference ones plus custom ones from TOML).
//! - [`device`] — a backend with a capacity and admission control; [`Device::attach`] hands out
//!   accelerators.
//! - [`pool`] — a host's devices together: each one's [`Load`], and placement (an attach lands
//!   on the device with the most headroom for its tier, and stays there).
//! - [`slice`] — one [`Accelerator`]: its own memory (quota = the tier's memory), meter and
//!   backend queue; a [`crate::Backend`] itself, so every op runs on it.
//! - [`meter`] — the token bucket that paces ops at the tier's rate, per precision.
//! - [`fair`] — the queue that shares a contended device between accelerators by tier rate.
//! - [`usage`] — what an accelerator did, and whether the meter held it back.
//!
//! ```
//! use eia::accelerator::{Capacity, Device, DeviceConfig};
//! use eia::{Backend, CpuBackend, HostTensor, ops::Gemm};
//!
//! let config = DeviceConfig { overcommit: true, ..DeviceConfig::default() };
//! let device = Device::new(CpuBackend::new(), config)?;
//! let accel = device.attach("eia2.medium")?;
//! let a = accel.upload(&HostTensor::new(&[2, 2], vec![1.0f32, 2.0, 3.0, 4.0])?)?;
//! let y = accel.gemm(&Gemm::default(), &a, &a, None)?;
//! assert_eq!(accel.download(&y)?.data().to_f32_vec(), vec![7.0, 10.0, 15.0, 22.0]);
//! let usage = accel.detach()?;
//! assert_eq!((usage.ops, usage.flops_f32), (1, 16));
//! # Ok::<(), eia::Error>(())
//! ```

pub mod device;
pub mod fair;
pub mod meter;
pub mod pool;
pub mod slice;
pub mod tier;
pub mod usage;

pub use device::{Capacity, Device, DeviceConfig, CALIBRATION_ROUNDS, LOCAL_OWNER};
pub use meter::Meter;
pub use pool::{Load, Pool};
pub use slice::{charge, Accelerator, Buffer, Reservation, MIN_TENSOR_CHARGE};
pub use tier::{Tier, Tiers};
pub use usage::Usage;
