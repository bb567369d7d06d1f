//! The Capacity RPC, both sides: what a server reports of its devices' load, which tiers the
//! caller could attach now and where they would land, and whether it is ready
//! ([`report`]); and the client's view of that answer ([`ServerCapacity`]).
//!
//! It is authenticated like `Tiers` (a valid token when the server has tokens): it reveals the
//! server's load — counts, rates and bytes per device — and never an accelerator id, an owner
//! or a token. Tier admissibility is the caller's own: a tier its token may not attach, or one
//! past its accelerator limit, is not admissible for it.

use super::auth::Principal;
use super::proto;
use crate::accelerator::{Capacity, Load, Pool, Tier};
use crate::backend::Backend;
use crate::dtype::DType;

/// The server's answer, built under no lock of a tenant: each device's load is read under its
/// own admission lock, one device at a time.
pub fn report<B: Backend + Clone + 'static>(
    pool: &Pool<B>,
    draining: bool,
    overcommit: bool,
    who: &Principal,
    held: usize,
) -> proto::CapacityResponse {
    let loads = pool.loads();
    let fits: Vec<Vec<&Tier>> = loads
        .iter()
        .map(|l| {
            pool.tiers()
                .iter()
                .filter(|t| pool.fits(l.index, t))
                .collect()
        })
        .collect();
    let devices = loads
        .iter()
        .zip(&fits)
        .map(|(l, admits)| device(l, admits))
        .collect();
    let tiers = pool
        .tiers()
        .iter()
        .map(|t| {
            let allowed = !draining && who.may_attach(t.name()) && held < who.max_accelerators;
            let device = pool
                .placement_order(t)
                .into_iter()
                .find(|&i| fits[i].iter().any(|f| f.name() == t.name()));
            proto::TierAdmission {
                tier: t.name().to_string(),
                admissible: allowed && device.is_some(),
                device: device.filter(|_| allowed).map(|i| i as u32),
            }
        })
        .collect();
    proto::CapacityResponse {
        devices,
        ready: !draining,
        draining,
        overcommit,
        tiers,
    }
}

/// The backend kind of a backend name (`cuda:0 (…)` → `cuda`).
fn backend_kind(model: &str) -> &str {
    model
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or(model)
}

fn device(l: &Load, admits: &[&Tier]) -> proto::DeviceCapacity {
    proto::DeviceCapacity {
        index: l.index as u32,
        backend: backend_kind(&l.model).to_string(),
        model: l.model.clone(),
        capacity_fp32_tflops: l.capacity.fp32_tflops,
        capacity_fp16_tflops: l.capacity.fp16_tflops,
        admitted_fp32_tflops: l.admitted_tflops[0],
        admitted_fp16_tflops: l.admitted_tflops[1],
        free_fp32_tflops: l.free_tflops(DType::F32),
        free_fp16_tflops: l.free_tflops(DType::F16),
        memory_total_bytes: l.capacity.memory,
        memory_admitted_bytes: l.admitted_memory,
        memory_used_bytes: l.used_memory,
        memory_free_bytes: l.free_memory(),
        accelerators: l.accelerators.min(u32::MAX as usize) as u32,
        admits: admits.iter().map(|t| t.name().to_string()).collect(),
    }
}

/// One device as a client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReport {
    /// `cpu` or `cuda`.
    pub backend: String,
    /// Index, model, capacity, what is admitted and held, accelerators attached (free rates
    /// and memory: [`Load::free_tflops`], [`Load::free_memory`]).
    pub load: Load,
    /// The server's tiers that fit on this device now.
    pub admits: Vec<String>,
}

/// Whether a tier could be attached now by the caller, and where it would land.
#[derive(Debug, Clone, PartialEq)]
pub struct TierAdmission {
    pub tier: String,
    pub admissible: bool,
    /// The device index an attach would land on.
    pub device: Option<usize>,
}

/// A server's capacity report ([`super::Connection::capacity`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerCapacity {
    pub devices: Vec<DeviceReport>,
    /// Accepts attaches (false while draining).
    pub ready: bool,
    /// Shutting down: attach elsewhere.
    pub draining: bool,
    /// Compute admission is off on this server (memory is still checked).
    pub overcommit: bool,
    /// Every tier of the server, in its order.
    pub tiers: Vec<TierAdmission>,
}

impl ServerCapacity {
    /// Whether an attach of `tier` (canonical name) would be admitted now.
    pub fn admits(&self, tier: &str) -> bool {
        self.tiers.iter().any(|t| t.tier == tier && t.admissible)
    }
}

impl From<proto::CapacityResponse> for ServerCapacity {
    fn from(r: proto::CapacityResponse) -> Self {
        ServerCapacity {
            devices: r
                .devices
                .into_iter()
                .map(|d| DeviceReport {
                    backend: d.backend,
                    load: Load {
                        index: d.index as usize,
                        model: d.model,
                        capacity: Capacity {
                            fp32_tflops: d.capacity_fp32_tflops,
                            fp16_tflops: d.capacity_fp16_tflops,
                            memory: d.memory_total_bytes,
                        },
                        admitted_tflops: [d.admitted_fp32_tflops, d.admitted_fp16_tflops],
                        admitted_memory: d.memory_admitted_bytes,
                        used_memory: d.memory_used_bytes,
                        accelerators: d.accelerators as usize,
                    },
                    admits: d.admits,
                })
                .collect(),
            ready: r.ready,
            draining: r.draining,
            overcommit: r.overcommit,
            tiers: r
                .tiers
                .into_iter()
                .map(|t| TierAdmission {
                    tier: t.tier,
                    admissible: t.admissible,
                    device: t.device.map(|i| i as usize),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_kind_is_the_name_prefix() {
        assert_eq!(backend_kind("cpu"), "cpu");
        assert_eq!(backend_kind("cuda:1 (NVIDIA H200, sm_90)"), "cuda");
        assert_eq!(backend_kind("emu (sm_80)"), "emu");
    }
}
