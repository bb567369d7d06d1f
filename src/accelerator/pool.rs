//! A host's devices as one pool (`eia serve` serves every GPU, or the CPU split into shares):
//! each device's load, and placement — where an attach lands.
//!
//! **Placement.** An attach lands on the device with the most *headroom* for its tier: how many
//! more accelerators of that tier the device could still admit, by each resource the tier uses
//! (per precision it offers, free TFLOPS over the tier's rate; free memory over its quota), the
//! least of these. Ties (within a relative 1e-9) go to the lowest index. The devices are tried
//! in that order and the first that admits it wins, so two attaches racing for the last room
//! cannot both land on one device past its capacity ([`Device::attach_for`] admits under the
//! device's lock). Headroom counts compute even with overcommit (where admission does not), so
//! overcommitted attaches still spread by rate.
//!
//! **For life.** An accelerator stays on the device it landed on: a resize re-admits it there
//! (beside that device's other accelerators) and, when the new tier does not fit there, is
//! refused with [`crate::Error::Capacity`] and changes nothing — the accelerator keeps its tier
//! and its tensors; it is never moved to another device.

use super::{Accelerator, Capacity, Device, Tier};
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// What a device has admitted and holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// The device's index in its pool.
    pub index: usize,
    /// The device's backend name (e.g. `cpu`, `cuda:0 (NVIDIA H200, sm_90)`).
    pub model: String,
    /// What the device can deliver.
    pub capacity: Capacity,
    /// The attached accelerators' tier rates together, FP32 and FP16 TFLOPS.
    pub admitted_tflops: [f64; 2],
    /// The attached accelerators' memory quotas together.
    pub admitted_memory: u64,
    /// Bytes the attached accelerators' tensors hold now.
    pub used_memory: u64,
    /// Accelerators attached.
    pub accelerators: usize,
}

impl Load {
    /// Capacity minus admitted TFLOPS of `dtype`, never below 0 (overcommit can exceed it).
    pub fn free_tflops(&self, dtype: DType) -> f64 {
        (self.capacity.tflops(dtype) - self.admitted_tflops[dtype_slot(dtype)]).max(0.0)
    }

    /// Memory not promised to an attached accelerator: the largest quota a new tier may have.
    pub fn free_memory(&self) -> u64 {
        self.capacity.memory.saturating_sub(self.admitted_memory)
    }

    /// How many more accelerators of `tier` fit by each resource it uses, the least of these
    /// (negative when the device is already past its compute capacity under overcommit).
    pub fn headroom(&self, tier: &Tier) -> f64 {
        let compute = DType::ALL.iter().filter(|&&d| tier.offers(d)).map(|&d| {
            (self.capacity.tflops(d) - self.admitted_tflops[dtype_slot(d)]) / tier.tflops(d)
        });
        let memory = match (self.capacity.memory, tier.memory()) {
            (u64::MAX, _) | (_, 0) => f64::INFINITY,
            (total, quota) => (total as f64 - self.admitted_memory as f64) / quota as f64,
        };
        compute.fold(memory, f64::min)
    }
}

impl<B: Backend> Device<B> {
    /// The device's load now, as device `index` of its pool.
    pub fn load(&self, index: usize) -> Load {
        let mut admitted_tflops = [0.0; 2];
        let mut admitted_memory = 0u64;
        let attached = self.inner.lock_attached();
        for tier in attached.values() {
            for d in DType::ALL {
                admitted_tflops[dtype_slot(d)] += tier.tflops(d);
            }
            admitted_memory = admitted_memory.saturating_add(tier.memory());
        }
        Load {
            index,
            model: self.inner.backend.name(),
            capacity: self.inner.capacity,
            admitted_tflops,
            admitted_memory,
            used_memory: self
                .inner
                .memory_in_use
                .load(std::sync::atomic::Ordering::Relaxed),
            accelerators: attached.len(),
        }
    }
}

fn dtype_slot(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
    }
}

/// A host's devices, in index order. Cheap to clone.
pub struct Pool<B: Backend> {
    devices: Vec<Device<B>>,
}

impl<B: Backend> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Pool {
            devices: self.devices.clone(),
        }
    }
}

impl<B: Backend + Clone + 'static> Pool<B> {
    /// A pool of `devices` (at least one; all must offer the same tiers).
    pub fn new(devices: Vec<Device<B>>) -> Result<Self> {
        let Some(first) = devices.first() else {
            return Err(Error::Config {
                source_name: "devices".into(),
                msg: "a server needs at least one device".into(),
            });
        };
        if devices.iter().any(|d| d.tiers() != first.tiers()) {
            return Err(Error::Config {
                source_name: "devices".into(),
                msg: "every device of a pool must offer the same tiers".into(),
            });
        }
        Ok(Pool { devices })
    }

    /// The devices, in index order.
    pub fn devices(&self) -> &[Device<B>] {
        &self.devices
    }

    /// Device `index` (panics past the end: indices come from this pool).
    pub fn device(&self, index: usize) -> &Device<B> {
        &self.devices[index]
    }

    /// Whether any device admits beyond its compute capacity.
    pub fn overcommit(&self) -> bool {
        self.devices.iter().any(|d| d.inner.config.overcommit)
    }

    /// The tiers every device offers.
    pub fn tiers(&self) -> &super::Tiers {
        self.devices[0].tiers()
    }

    /// Every device's load now.
    pub fn loads(&self) -> Vec<Load> {
        self.devices
            .iter()
            .enumerate()
            .map(|(index, d)| d.load(index))
            .collect()
    }

    /// Bytes held by the accelerators of every device together.
    pub fn memory_in_use(&self) -> u64 {
        self.devices.iter().map(Device::memory_in_use).sum()
    }

    /// The device indices in placement order for `tier`: most headroom first, ties by index.
    pub fn placement_order(&self, tier: &Tier) -> Vec<usize> {
        let headroom: Vec<f64> = self.loads().iter().map(|l| l.headroom(tier)).collect();
        let mut order: Vec<usize> = (0..self.devices.len()).collect();
        // A stable sort on values rounded to 1e-9 relative keeps near-ties in index order.
        let key = |i: usize| {
            let h = headroom[i];
            if h.is_finite() {
                (h * 1e9).round()
            } else {
                h
            }
        };
        order.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
        order
    }

    /// Whether `tier` fits on device `index` now (beside its attached accelerators).
    pub fn fits(&self, index: usize, tier: &Tier) -> bool {
        let inner = &self.devices[index].inner;
        inner.admit(&inner.lock_attached(), None, tier).is_ok()
    }

    /// Attaches an accelerator of `tier` for `owner` on the device with the most headroom that
    /// admits it; returns it and its device's index. When none admits it, the error names
    /// every device's shortfall.
    pub fn attach_for(&self, owner: &str, tier: Tier) -> Result<(Accelerator<B>, usize)> {
        let mut refused = Vec::new();
        for index in self.placement_order(&tier) {
            match self.devices[index].attach_for(owner, tier.clone()) {
                Ok(a) => return Ok((a, index)),
                Err(Error::Capacity(why)) => refused.push((index, why)),
                Err(e) => return Err(e),
            }
        }
        if let [(_, why)] = &refused[..] {
            return Err(Error::Capacity(why.clone()));
        }
        refused.sort_by_key(|(i, _)| *i);
        let each: Vec<String> = refused
            .iter()
            .map(|(i, why)| format!("device {i}: {why}"))
            .collect();
        Err(Error::Capacity(format!(
            "{} fits on none of the {} devices — {}",
            tier.name(),
            self.devices.len(),
            each.join(" | ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accelerator::{DeviceConfig, Tiers};
    use crate::CpuBackend;

    const GIB: u64 = 1 << 30;

    fn pool(n: usize, fp32: f64, memory: u64, overcommit: bool) -> Pool<CpuBackend> {
        let config = DeviceConfig {
            capacity: Some(Capacity {
                fp32_tflops: fp32,
                fp16_tflops: 8.0 * fp32,
                memory,
            }),
            overcommit,
            ..DeviceConfig::default()
        };
        let devices = (0..n)
            .map(|_| Device::new(CpuBackend::new(), config.clone()).unwrap())
            .collect();
        Pool::new(devices).unwrap()
    }

    /// Attaches `n` eia2.medium accelerators: them, and the device each landed on.
    fn attach(p: &Pool<CpuBackend>, n: usize) -> (Vec<Accelerator<CpuBackend>>, Vec<usize>) {
        (0..n).map(|_| p.attach_for("t", medium()).unwrap()).unzip()
    }

    fn medium() -> Tier {
        Tiers::builtin().get("eia2.medium").unwrap().clone()
    }

    #[test]
    fn attaches_spread_by_headroom_then_lowest_index() {
        let p = pool(3, 2.0, 64 * GIB, false);
        let (_held, landed) = attach(&p, 6);
        assert_eq!(landed, vec![0, 1, 2, 0, 1, 2]);
        // Every device is full: the error names each device.
        let e = p.attach_for("t", medium()).err().unwrap();
        let msg = e.to_string();
        assert!(matches!(e, Error::Capacity(_)), "{e:?}");
        assert!(
            msg.contains("device 0") && msg.contains("device 2"),
            "{msg}"
        );
        for l in p.loads() {
            assert_eq!((l.accelerators, l.admitted_tflops), (2, [2.0, 16.0]));
            assert_eq!(
                (l.free_tflops(DType::F32), l.free_memory()),
                (0.0, 60 * GIB)
            );
        }
    }

    #[test]
    fn a_larger_tier_goes_where_it_has_most_room() {
        let p = pool(2, 4.0, 64 * GIB, false);
        let large = Tiers::builtin().get("eia2.large").unwrap().clone();
        let (_a, i) = p.attach_for("t", large.clone()).unwrap();
        assert_eq!(i, 0);
        let (_b, i) = p.attach_for("t", medium()).unwrap();
        assert_eq!(i, 1, "device 1 has 4 TFLOPS free, device 0 only 2");
        let (_c, i) = p.attach_for("t", large.clone()).unwrap();
        assert_eq!(i, 1, "3 TFLOPS free on device 1, 2 on device 0");
        assert_eq!(p.placement_order(&medium()), vec![0, 1]);
        assert!(p.fits(0, &large) && !p.fits(1, &large));
    }

    #[test]
    fn memory_bounds_headroom_and_overcommit_still_spreads() {
        let p = pool(2, 1.0, 5 * GIB, true);
        let (_held, landed) = attach(&p, 4);
        assert_eq!(
            landed,
            vec![0, 1, 0, 1],
            "overcommitted compute still spreads"
        );
        assert!(p.loads()[0].headroom(&medium()) < 0.0);
        let e = p.attach_for("t", medium()).err().unwrap().to_string();
        assert!(
            e.contains("memory: 2 GiB needed"),
            "memory is never overcommitted: {e}"
        );
    }

    #[test]
    fn an_empty_pool_is_refused() {
        assert!(matches!(
            Pool::<CpuBackend>::new(vec![]),
            Err(Error::Config { .. })
        ));
    }
}
