//! Devices, connections and accelerators across the C ABI: slice this host's device or connect
//! to a server, attach an accelerator of a tier, read its usage, resize and detach it.

use std::ffi::c_char;
use std::sync::Arc;

use super::error::{dispose, eia_error, guard, Outcome};
use super::{optional_string, owned_string, required, string};
use crate::accelerator::{
    usage_table, Accelerator, Device, DeviceConfig, Tier, Tiers, Usage, Wire,
};
use crate::backend::CpuBackend;
use crate::error::Result;
use crate::rpc::{ClientConfig, Connection, RemoteAccelerator};

/// This host's device, sliced into accelerators. Thread-safe.
pub struct eia_device {
    device: Device<CpuBackend>,
}

/// A connection to an eia server (`eia serve`). Thread-safe.
pub struct eia_connection {
    connection: Arc<Connection>,
}

/// A virtual accelerator, local or remote. Thread-safe: ops may run on it from many threads.
pub struct eia_accelerator {
    pub(crate) accel: Arc<Accel>,
}

/// Where an accelerator lives.
pub(crate) enum Accel {
    Local(Accelerator<CpuBackend>),
    Remote(RemoteAccelerator),
}

impl Accel {
    pub(crate) fn id(&self) -> u64 {
        match self {
            Accel::Local(a) => a.id(),
            Accel::Remote(a) => a.id(),
        }
    }

    fn tier(&self) -> Tier {
        match self {
            Accel::Local(a) => a.tier(),
            Accel::Remote(a) => a.tier(),
        }
    }

    fn usage(&self) -> Result<Usage> {
        match self {
            Accel::Local(a) => Ok(a.usage()),
            Accel::Remote(a) => a.usage(),
        }
    }

    fn resize(&self, tier: &str) -> Result<()> {
        match self {
            Accel::Local(a) => a.resize(tier),
            Accel::Remote(a) => a.resize(tier),
        }
    }

    fn detach(&self) -> Result<Usage> {
        match self {
            Accel::Local(a) => a.detach(),
            Accel::Remote(a) => a.detach(),
        }
    }
}

/// Attaches the tier named by the C string `tier` with `attach` and hands the new accelerator to
/// `out`.
///
/// # Safety
/// `tier` is NULL or a NUL-terminated string.
unsafe fn attach(
    tier: *const c_char,
    out: Option<&mut *mut eia_accelerator>,
    attach: impl FnOnce(&str) -> Result<Accel>,
) -> Outcome {
    let out = required(out, "out")?;
    // SAFETY: the caller's contract.
    let tier = unsafe { string(tier, "tier") }?;
    let accel = Arc::new(attach(tier)?);
    *out = Box::into_raw(Box::new(eia_accelerator { accel }));
    Ok(())
}

/// One accelerator's usage (see `eia_accelerator_usage`). Durations are in seconds.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct eia_usage {
    /// The accelerator's id on its device.
    pub accelerator: u64,
    /// Time since attach (until detach, for the final record).
    pub attached_seconds: f64,
    /// Ops launched.
    pub ops: u64,
    /// FLOPs charged for FP32 ops.
    pub flops_f32: u64,
    /// FLOPs charged for FP16 ops.
    pub flops_f16: u64,
    /// Accelerator-seconds charged: FLOPs / the tier's rate, summed per op.
    pub charged_seconds: f64,
    /// Time ops waited on the meter before launching.
    pub meter_wait_seconds: f64,
    /// Time spent in the backend's launches.
    pub busy_seconds: f64,
    /// Bytes copied onto the accelerator.
    pub bytes_uploaded: u64,
    /// Bytes copied back to the host.
    pub bytes_downloaded: u64,
    /// Bytes ops read and wrote.
    pub op_bytes: u64,
    /// Bytes held now.
    pub memory_used: u64,
    /// Most bytes ever held at once.
    pub memory_high_water: u64,
    /// The tier's memory quota in bytes.
    pub memory_quota: u64,
    /// The meter's balance in accelerator-seconds (negative: debt).
    pub meter_balance_seconds: f64,
}

macro_rules! usage_struct {
    ($($name:ident ($($at:tt)+) c $c:ident: $unit:ident $kind:ident $series:literal, $label:expr,
        $help:literal;)*) => {
        impl From<&Usage> for eia_usage {
            fn from(u: &Usage) -> Self {
                eia_usage {
                    accelerator: u.accelerator,
                    $($c: Wire::to_wire(u.$($at)+),)*
                }
            }
        }

        /// A usage from the C struct (which has no tier name).
        #[cfg(test)]
        fn usage_from(c: &eia_usage, tier: &str) -> Usage {
            let mut usage = Usage {
                accelerator: c.accelerator,
                tier: tier.to_string(),
                ..Usage::default()
            };
            $(usage.$($at)+ = Wire::from_wire(c.$c);)*
            usage
        }
    };
}
usage_table!(usage_struct);

/// A tier's rates and memory (see `eia_accelerator_tier`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct eia_tier_info {
    /// FP32 rate in TFLOPS.
    pub fp32_tflops: f64,
    /// FP16 (FP32-accumulate) rate in TFLOPS.
    pub fp16_tflops: f64,
    /// Memory quota in bytes.
    pub memory_bytes: u64,
}

/// Creates this host's device: the CPU backend, its capacity measured now (about 0.2 s).
///
/// `tiers_toml` is NULL for the six built-in tiers, or TOML text adding custom tiers
/// (`[[tier]]` tables with `name`, `fp32_tflops`, `fp16_tflops`, `memory_mib`). With `overcommit`
/// false, attaching beyond the device's measured capacity fails with `EIA_ERR_CAPACITY`; the
/// built-in tiers exceed a CPU's, so on a CPU host pass true (rates are then not guaranteed).
///
/// # Safety
/// `tiers_toml` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn eia_device_new(
    tiers_toml: *const c_char,
    overcommit: bool,
    out: Option<&mut *mut eia_device>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let out = required(out, "out")?;
        // SAFETY: the caller's contract.
        let tiers = match unsafe { optional_string(tiers_toml, "tiers_toml") }? {
            Some(text) => Tiers::with_toml("tiers_toml", text)?,
            None => Tiers::builtin(),
        };
        let config = DeviceConfig {
            tiers,
            overcommit,
            ..DeviceConfig::default()
        };
        let device = Device::new(CpuBackend::new(), config)?;
        *out = Box::into_raw(Box::new(eia_device { device }));
        Ok(())
    })
}

/// Frees a device. Accelerators attached to it stay usable until they are freed. NULL is allowed.
#[no_mangle]
pub extern "C" fn eia_device_free(device: Option<Box<eia_device>>) {
    dispose(device);
}

/// Attaches an accelerator of the tier named `tier` (e.g. "eia2.medium"; case-insensitive, an
/// `ml.` prefix is accepted).
///
/// # Safety
/// `tier` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn eia_device_attach(
    device: Option<&eia_device>,
    tier: *const c_char,
    out: Option<&mut *mut eia_accelerator>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let device = required(device, "device")?;
        // SAFETY: the caller's contract.
        unsafe { attach(tier, out, |t| Ok(Accel::Local(device.device.attach(t)?))) }
    })
}

/// Connects to a server at `url` ("http://127.0.0.1:8470", or "https://..." with `ca_pem`).
///
/// `token` is the bearer token, or NULL if the server needs none; `ca_pem` is the PEM text of the
/// CA that signed the server's certificate, or NULL for plain HTTP.
///
/// # Safety
/// Each string is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn eia_connection_new(
    url: *const c_char,
    token: *const c_char,
    ca_pem: *const c_char,
    out: Option<&mut *mut eia_connection>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let out = required(out, "out")?;
        // SAFETY: the caller's contract, for each string.
        let url = unsafe { string(url, "url") }?;
        let token = unsafe { optional_string(token, "token") }?;
        let ca_pem = unsafe { optional_string(ca_pem, "ca_pem") }?;
        let config = ClientConfig {
            token: token.map(str::to_string),
            ca_pem: ca_pem.map(|p| p.as_bytes().to_vec()),
            ..ClientConfig::default()
        };
        let connection = Connection::connect(url, config)?;
        *out = Box::into_raw(Box::new(eia_connection { connection }));
        Ok(())
    })
}

/// Frees a connection. Accelerators attached through it keep it open until they are freed.
/// NULL is allowed.
#[no_mangle]
pub extern "C" fn eia_connection_free(connection: Option<Box<eia_connection>>) {
    dispose(connection);
}

/// Attaches an accelerator of the tier named `tier` on the server. While attached, a background
/// heartbeat renews its lease.
///
/// # Safety
/// `tier` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn eia_connection_attach(
    connection: Option<&eia_connection>,
    tier: *const c_char,
    out: Option<&mut *mut eia_accelerator>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let connection = required(connection, "connection")?;
        // SAFETY: the caller's contract.
        unsafe {
            attach(tier, out, |t| {
                Ok(Accel::Remote(connection.connection.attach(t)?))
            })
        }
    })
}

/// The accelerator's id on its device (or server).
#[no_mangle]
pub extern "C" fn eia_accelerator_id(
    accelerator: Option<&eia_accelerator>,
    out: Option<&mut u64>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        *required(out, "out")? = accelerator.accel.id();
        Ok(())
    })
}

/// The rates and memory of the tier the accelerator is attached as now.
#[no_mangle]
pub extern "C" fn eia_accelerator_tier(
    accelerator: Option<&eia_accelerator>,
    out: Option<&mut eia_tier_info>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let out = required(out, "out")?;
        let tier = accelerator.accel.tier();
        *out = eia_tier_info {
            fp32_tflops: tier.tflops(crate::DType::F32),
            fp16_tflops: tier.tflops(crate::DType::F16),
            memory_bytes: tier.memory(),
        };
        Ok(())
    })
}

/// The name of the tier the accelerator is attached as now; free it with `eia_string_free`.
#[no_mangle]
pub extern "C" fn eia_accelerator_tier_name(
    accelerator: Option<&eia_accelerator>,
    out: Option<&mut *mut c_char>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let out = required(out, "out")?;
        *out = owned_string(accelerator.accel.tier().name().to_string());
        Ok(())
    })
}

/// The accelerator's usage so far.
#[no_mangle]
pub extern "C" fn eia_accelerator_usage(
    accelerator: Option<&eia_accelerator>,
    out: Option<&mut eia_usage>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let out = required(out, "out")?;
        *out = eia_usage::from(&accelerator.accel.usage()?);
        Ok(())
    })
}

/// The accelerator's usage as text for people, ending with whether its work is meter-bound or
/// device-bound; free it with `eia_string_free`.
#[no_mangle]
pub extern "C" fn eia_accelerator_summary(
    accelerator: Option<&eia_accelerator>,
    out: Option<&mut *mut c_char>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let out = required(out, "out")?;
        *out = owned_string(accelerator.accel.usage()?.to_string());
        Ok(())
    })
}

/// Moves the accelerator to another tier, keeping its tensors and meter balance. Fails with
/// `EIA_ERR_MEMORY_QUOTA` if it holds more than the new tier's memory.
///
/// # Safety
/// `tier` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn eia_accelerator_resize(
    accelerator: Option<&eia_accelerator>,
    tier: *const c_char,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        // SAFETY: the caller's contract.
        let tier = unsafe { string(tier, "tier") }?;
        accelerator.accel.resize(tier)?;
        Ok(())
    })
}

/// Detaches the accelerator: its memory is freed at once and later calls on it or its tensors
/// fail with `EIA_ERR_DETACHED` (the handles must still be freed). Writes the final usage to
/// `final_usage` unless it is NULL.
#[no_mangle]
pub extern "C" fn eia_accelerator_detach(
    accelerator: Option<&eia_accelerator>,
    final_usage: Option<&mut eia_usage>,
) -> Option<Box<eia_error>> {
    guard(|| {
        let accelerator = required(accelerator, "accelerator")?;
        let usage = accelerator.accel.detach()?;
        if let Some(out) = final_usage {
            *out = eia_usage::from(&usage);
        }
        Ok(())
    })
}

/// Frees an accelerator handle, detaching it first if it is still attached. Its tensors' handles
/// stay valid to free (and fail with `EIA_ERR_DETACHED` if used). NULL is allowed.
#[no_mangle]
pub extern "C" fn eia_accelerator_free(accelerator: Option<Box<eia_accelerator>>) {
    drop(guard(move || {
        if let Some(a) = accelerator {
            // Already detached is fine; a remote detach that fails is left to the server's lease.
            let _ = a.accel.detach();
        }
        Ok(())
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_survives_the_c_struct_and_the_proto_message() {
        let usage = crate::accelerator::usage::tests::fresh();
        let c = eia_usage::from(&usage);
        assert_eq!(usage_from(&c, &usage.tier), usage);
        let wire = crate::rpc::convert::usage(&usage);
        assert_eq!(crate::rpc::convert::usage_from(Some(wire)).unwrap(), usage);
    }
}
