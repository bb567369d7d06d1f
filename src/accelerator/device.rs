//! A device sliced into virtual accelerators: its capacity (configured, or measured by a short
//! calibration: the median of several rounds), the tiers it offers, and admission — attaching or
//! resizing beyond capacity (per precision the tier offers, the sum of attached tier rates; the
//! sum of their memory) is refused; overcommit lifts the compute check, never the memory one.
//!
//! The device also holds what must outlive one accelerator: each owner's meter debt (an
//! accelerator detached in debt passes it to the owner's next one, so detaching never forgives
//! it) and the fair queue that shares the device between contending accelerators in proportion
//! to their tiers' rates ([`super::fair`]). Accelerator ids are random and never 0, so they
//! cannot be guessed and a restarted server does not hand out the ids it handed out before.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::fair::FairQueue;
use super::meter::DEFAULT_BURST;
use super::{Accelerator, Tier, Tiers};
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::{bytes, Error, Result};
use crate::ops::Gemm;
use crate::sync::lock;
use crate::tensor::HostTensor;

/// What a device can deliver: compute per precision and memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    /// FP32 TFLOPS.
    pub fp32_tflops: f64,
    /// FP16 (FP32-accumulate) TFLOPS.
    pub fp16_tflops: f64,
    /// Bytes of memory.
    pub memory: u64,
}

/// Rounds of the capacity calibration; the capacity is their median.
pub const CALIBRATION_ROUNDS: usize = 5;

impl std::fmt::Display for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} FP32 TFLOPS, {:.3} FP16 TFLOPS, ",
            self.fp32_tflops, self.fp16_tflops
        )?;
        match self.memory {
            u64::MAX => write!(f, "memory unlimited"),
            m => write!(f, "{}", bytes(m)),
        }
    }
}

impl Capacity {
    /// Measures a backend: per dtype, the median over [`CALIBRATION_ROUNDS`] rounds of each
    /// round's best 512³ GEMM rate (about 20 ms a round), so one round slowed by other work on
    /// the machine does not move it; and the memory the backend reports (unlimited where it
    /// reports none).
    pub fn measure<B: Backend>(backend: &B) -> Result<Capacity> {
        const N: usize = 512;
        let mut tflops = [0.0; 2];
        for (slot, dtype) in tflops.iter_mut().zip(DType::ALL) {
            let x = backend.upload(&HostTensor::full(dtype, &[N, N], 0.5)?)?;
            let mut y = backend.alloc(x.desc())?;
            let op = Gemm::default();
            backend.gemm_into(&op, &x, &x, None, &mut y)?; // warm-up
            backend.synchronize()?;
            let mut rounds = Vec::with_capacity(CALIBRATION_ROUNDS);
            for _ in 0..CALIBRATION_ROUNDS {
                let started = Instant::now();
                let mut best = Duration::MAX;
                while started.elapsed() < Duration::from_millis(20) {
                    let t = Instant::now();
                    backend.gemm_into(&op, &x, &x, None, &mut y)?;
                    backend.synchronize()?;
                    best = best.min(t.elapsed());
                }
                rounds.push(2.0 * (N * N * N) as f64 / best.as_secs_f64().max(1e-9) / 1e12);
            }
            rounds.sort_by(f64::total_cmp);
            *slot = rounds[CALIBRATION_ROUNDS / 2];
        }
        Ok(Capacity {
            fp32_tflops: tflops[0],
            fp16_tflops: tflops[1],
            memory: backend.total_memory().unwrap_or(u64::MAX),
        })
    }

    /// A configured capacity: TFLOPS per dtype (positive, finite) and the backend's memory.
    pub fn configured<B: Backend>(
        backend: &B,
        fp32_tflops: f64,
        fp16_tflops: f64,
    ) -> Result<Capacity> {
        for (what, rate) in [("FP32", fp32_tflops), ("FP16", fp16_tflops)] {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(Error::Config {
                    source_name: "capacity".into(),
                    msg: format!("{what} TFLOPS must be a positive number, got {rate}"),
                });
            }
        }
        Ok(Capacity {
            fp32_tflops,
            fp16_tflops,
            memory: backend.total_memory().unwrap_or(u64::MAX),
        })
    }

    /// TFLOPS of `dtype`.
    pub fn tflops(&self, dtype: DType) -> f64 {
        match dtype {
            DType::F32 => self.fp32_tflops,
            DType::F16 => self.fp16_tflops,
        }
    }
}

/// How a device is sliced.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The tiers accelerators may attach as (default: the six built-in tiers).
    pub tiers: Tiers,
    /// The device's capacity; `None` measures it when the device is created.
    pub capacity: Option<Capacity>,
    /// Admit accelerators beyond capacity (their tiers' rates are then not guaranteed).
    pub overcommit: bool,
    /// Each accelerator's meter burst (see [`super::meter`]).
    pub burst: Duration,
    /// The most tensors one accelerator may hold at once (each is also charged at least
    /// [`super::slice::MIN_TENSOR_CHARGE`] bytes of its quota).
    pub max_tensors: usize,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            tiers: Tiers::builtin(),
            capacity: None,
            overcommit: false,
            burst: DEFAULT_BURST,
            max_tensors: 65_536,
        }
    }
}

/// A physical device (a backend) shared by virtual accelerators. Cheap to clone.
pub struct Device<B: Backend> {
    pub(super) inner: Arc<DeviceInner<B>>,
}

impl<B: Backend> Clone for Device<B> {
    fn clone(&self) -> Self {
        Device {
            inner: Arc::clone(&self.inner),
        }
    }
}

pub(super) struct DeviceInner<B: Backend> {
    pub(super) backend: B,
    pub(super) config: DeviceConfig,
    pub(super) capacity: Capacity,
    /// The tier of every attached accelerator, by id. Lock order: this, then an accelerator's
    /// state.
    pub(super) attached: Mutex<BTreeMap<u64, Tier>>,
    pub(super) memory_in_use: AtomicU64,
    /// Per owner, when the debt of its detached accelerators is paid (entries in the past are
    /// dropped when read).
    owed: Mutex<HashMap<String, Instant>>,
    pub(super) fair: FairQueue,
}

/// The owner of accelerators attached through the local API ([`Device::attach`]).
pub const LOCAL_OWNER: &str = "local";

impl<B: Backend + Clone + 'static> Device<B> {
    /// Slices `backend` as `config` says (measuring its capacity if none is given).
    pub fn new(backend: B, config: DeviceConfig) -> Result<Self> {
        let capacity = match config.capacity {
            Some(c) => c,
            None => Capacity::measure(&backend)?,
        };
        Ok(Device {
            inner: Arc::new(DeviceInner {
                backend,
                config,
                capacity,
                attached: Mutex::new(BTreeMap::new()),
                memory_in_use: AtomicU64::new(0),
                owed: Mutex::new(HashMap::new()),
                fair: FairQueue::default(),
            }),
        })
    }

    /// Attaches an accelerator of the tier called `tier` (built-in or configured).
    pub fn attach(&self, tier: &str) -> Result<Accelerator<B>> {
        let tier = self.inner.config.tiers.get(tier)?.clone();
        self.attach_tier(tier)
    }

    /// Attaches an accelerator of `tier` (which need not be one of the device's named tiers)
    /// for the local owner.
    pub fn attach_tier(&self, tier: Tier) -> Result<Accelerator<B>> {
        self.attach_for(LOCAL_OWNER, tier)
    }

    /// Attaches an accelerator of `tier` for `owner` (a server passes the token's name): its
    /// meter starts empty, or in the debt `owner`'s detached accelerators left unpaid.
    pub fn attach_for(&self, owner: &str, tier: Tier) -> Result<Accelerator<B>> {
        let mut attached = self.inner.lock_attached();
        self.inner.admit(&attached, None, &tier)?;
        let id = loop {
            let id: u64 = rand::random();
            if id != 0 && !attached.contains_key(&id) {
                break id;
            }
        };
        let meter_empty_at = self.inner.owed_until(owner);
        let accelerator = Accelerator::new(self.clone(), id, owner, tier.clone(), meter_empty_at)?;
        attached.insert(id, tier);
        Ok(accelerator)
    }

    /// The backend the accelerators run on.
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    /// The tiers accelerators may attach as.
    pub fn tiers(&self) -> &Tiers {
        &self.inner.config.tiers
    }

    /// The device's capacity (configured or measured).
    pub fn capacity(&self) -> Capacity {
        self.inner.capacity
    }

    /// The attached accelerators' ids and tiers.
    pub fn attached(&self) -> Vec<(u64, Tier)> {
        let attached = self.inner.lock_attached();
        attached.iter().map(|(id, t)| (*id, t.clone())).collect()
    }

    /// Bytes held by all attached accelerators together.
    pub fn memory_in_use(&self) -> u64 {
        self.inner.memory_in_use.load(Ordering::Relaxed)
    }
}

impl<B: Backend> DeviceInner<B> {
    pub(super) fn lock_attached(&self) -> MutexGuard<'_, BTreeMap<u64, Tier>> {
        lock(&self.attached)
    }

    /// When `owner`'s unpaid meter debt is paid: now if it owes nothing.
    fn owed_until(&self, owner: &str) -> Instant {
        let now = Instant::now();
        let mut owed = lock(&self.owed);
        owed.retain(|_, until| *until > now);
        owed.get(owner).copied().unwrap_or(now).max(now)
    }

    /// Records what a detaching accelerator of `owner` leaves: its meter empties at
    /// `meter_empty_at`, which the owner's next accelerator inherits while it is in the future.
    pub(super) fn settle(&self, id: u64, owner: &str, meter_empty_at: Instant) {
        self.fair.forget(id);
        if meter_empty_at > Instant::now() {
            let mut owed = lock(&self.owed);
            let until = owed.entry(owner.to_string()).or_insert(meter_empty_at);
            *until = (*until).max(meter_empty_at);
        }
    }

    /// Checks that `tier` fits beside the attached accelerators (other than `replacing`).
    pub(super) fn admit(
        &self,
        attached: &BTreeMap<u64, Tier>,
        replacing: Option<u64>,
        tier: &Tier,
    ) -> Result<()> {
        let others = attached
            .iter()
            .filter(|(id, _)| Some(**id) != replacing)
            .map(|(_, t)| t);
        let cap = &self.capacity;
        let mut over = Vec::new();
        // Overcommit shares compute (the fair queue divides it by tier rate); memory is never
        // overcommitted.
        let compute = if self.config.overcommit {
            &[][..]
        } else {
            &DType::ALL[..]
        };
        // A precision the tier does not offer (rate 0) asks nothing of that capacity.
        for &dtype in compute.iter().filter(|&&d| tier.offers(d)) {
            let used = others.clone().fold(0.0, |sum, t| sum + t.tflops(dtype));
            if used + tier.tflops(dtype) > cap.tflops(dtype) * (1.0 + 1e-9) {
                over.push(format!(
                    "{dtype}: {} TFLOPS needed, {used:.3} of {:.3} TFLOPS already attached",
                    tier.tflops(dtype),
                    cap.tflops(dtype)
                ));
            }
        }
        let used: u64 = others.map(|t| t.memory()).sum();
        if used.saturating_add(tier.memory()) > cap.memory {
            over.push(format!(
                "memory: {} needed, {} of {} already attached",
                bytes(tier.memory()),
                bytes(used),
                bytes(cap.memory)
            ));
        }
        if over.is_empty() {
            return Ok(());
        }
        Err(Error::Capacity(format!(
            "{} ({} attached) does not fit on {}: {}; detach an accelerator, choose a smaller tier, or (for compute only) configure overcommit (`eia run --overcommit`)",
            tier.name(),
            attached.len(),
            self.backend.name(),
            over.join("; ")
        )))
    }
}
