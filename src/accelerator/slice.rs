//! One virtual accelerator: a slice of a device with its own tier, meter, memory and backend
//! queue. It is a [`Backend`] itself, so every op runs on it unchanged; each launch follows the
//! product's flow — validate (the op's plan), check the tensors are live and its own, charge the
//! meter and wait, launch on the device, record usage.
//!
//! Tensors on an accelerator are [`Buffer`] handles: the accelerator holds their storage, so
//! detaching frees everything at once, and a handle used after detach (or on another
//! accelerator) is a typed error rather than a dangling pointer. Dropping a handle frees its
//! storage and its share of the quota.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::meter::Meter;
use super::{Device, Tier, Usage};
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::Plan;
use crate::tensor::{HostTensor, Tensor, TensorDesc};

/// A virtual accelerator attached to a [`Device`]. Share it between threads by reference or
/// `Arc`; dropping it detaches it.
pub struct Accelerator<B: Backend> {
    inner: Arc<Inner<B>>,
}

/// A tensor's storage on an accelerator: a handle that frees the storage when dropped.
pub struct Buffer {
    id: u64,
    accelerator: u64,
    bytes: u64,
    owner: Weak<dyn Release>,
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Buffer {} of accelerator {} ({} bytes)",
            self.id, self.accelerator, self.bytes
        )
    }
}

impl Buffer {
    /// The accelerator that holds this buffer.
    pub fn accelerator(&self) -> u64 {
        self.accelerator
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.upgrade() {
            owner.release(self.id);
        }
    }
}

/// Frees one buffer's storage (implemented by the accelerator that holds it).
trait Release: Send + Sync {
    fn release(&self, buffer: u64);
}

struct Inner<B: Backend> {
    id: u64,
    device: Device<B>,
    backend: B,
    meter: Meter,
    attached_at: Instant,
    state: Mutex<State<B::Storage>>,
}

struct State<S> {
    tier: Tier,
    /// How long it was attached, once detached.
    detached: Option<Duration>,
    buffers: HashMap<u64, Tensor<S>>,
    next_buffer: u64,
    used: u64,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    ops: u64,
    flops: [u64; 2],
    charged: f64,
    meter_wait: Duration,
    busy: Duration,
    uploaded: u64,
    downloaded: u64,
    op_bytes: u64,
    high_water: u64,
}

impl<S> State<S> {
    fn live(&self, accelerator: u64) -> Result<()> {
        match self.detached {
            Some(_) => Err(Error::Detached(accelerator)),
            None => Ok(()),
        }
    }
}

impl<B> Accelerator<B>
where
    B: Backend + Clone + 'static,
{
    pub(super) fn new(device: Device<B>, id: u64, tier: Tier) -> Result<Self> {
        let backend = device.backend().fork()?;
        let meter = Meter::new(device.inner.config.burst);
        Ok(Accelerator {
            inner: Arc::new(Inner {
                id,
                device,
                backend,
                meter,
                attached_at: Instant::now(),
                state: Mutex::new(State {
                    tier,
                    detached: None,
                    buffers: HashMap::new(),
                    next_buffer: 0,
                    used: 0,
                    counters: Counters::default(),
                }),
            }),
        })
    }

    /// This accelerator's id on its device.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The tier it is attached as.
    pub fn tier(&self) -> Tier {
        self.inner.lock().tier.clone()
    }

    /// Its usage so far (the final record once detached).
    pub fn usage(&self) -> Usage {
        self.inner.usage(&self.inner.lock())
    }

    /// Moves it to the tier called `tier`, keeping its tensors and meter balance. Refused, with
    /// nothing changed, if it holds more memory than the new tier allows or the device cannot
    /// admit the new tier.
    pub fn resize(&self, tier: &str) -> Result<()> {
        let tier = self.inner.device.tiers().get(tier)?.clone();
        self.resize_tier(tier)
    }

    /// Moves it to `tier` (see [`Accelerator::resize`]).
    pub fn resize_tier(&self, tier: Tier) -> Result<()> {
        let device = &self.inner.device.inner;
        let mut attached = device.lock_attached();
        let mut state = self.inner.lock();
        state.live(self.inner.id)?;
        if state.used > tier.memory() {
            return Err(Error::ResizeBelowUsage {
                accelerator: self.inner.id,
                tier: tier.name().to_string(),
                used: state.used,
                quota: tier.memory(),
            });
        }
        device.admit(&attached, Some(self.inner.id), &tier)?;
        attached.insert(self.inner.id, tier.clone());
        state.tier = tier;
        Ok(())
    }

    /// Checks that `bytes` more would fit in its quota now (a later allocation checks again):
    /// lets a caller refuse early, e.g. before receiving a large upload.
    pub fn check_room(&self, bytes: u64) -> Result<()> {
        self.inner.check_room(&self.inner.lock(), bytes)
    }

    /// Detaches it: frees every tensor it holds, releases its share of the device and returns
    /// the final usage. Its tensor handles and any further call fail with
    /// [`Error::Detached`].
    pub fn detach(&self) -> Result<Usage> {
        self.inner.detach()
    }

    /// Runs one op: checks the tensors, charges `flops` at the tier's rate for `dtype`, waits on
    /// the meter, then launches with the storages of `inputs` and `output`.
    fn run_op(
        &self,
        flops: u64,
        dtype: DType,
        inputs: &[&Buffer],
        output: &mut Buffer,
        launch: impl FnOnce(&B, &[&B::Storage], &mut B::Storage) -> Result<()>,
    ) -> Result<()> {
        let inner = &*self.inner;
        let cost = {
            let state = inner.lock();
            state.live(inner.id)?;
            for b in inputs.iter().copied().chain([&*output]) {
                inner.own(b)?;
            }
            state.tier.cost(flops, dtype)
        };
        let waited = inner.meter.wait(cost);
        let mut state = inner.lock();
        state.live(inner.id)?;
        let mut y = state
            .buffers
            .remove(&output.id)
            .ok_or_else(|| inner.missing())?;
        let started = Instant::now();
        let result = {
            let storages: Option<Vec<&B::Storage>> = inputs
                .iter()
                .map(|b| state.buffers.get(&b.id).map(Tensor::storage))
                .collect();
            match storages {
                Some(storages) => launch(&inner.backend, &storages, y.storage_mut()),
                None => Err(inner.missing()),
            }
        };
        let busy = started.elapsed();
        state.buffers.insert(output.id, y);
        let c = &mut state.counters;
        c.ops += 1;
        c.flops[dtype_index(dtype)] += flops;
        c.charged += cost;
        c.meter_wait += waited;
        c.busy += busy;
        c.op_bytes += inputs.iter().map(|b| b.bytes).sum::<u64>() + output.bytes;
        result
    }

    /// Stores a tensor made by `make` after checking the quota.
    fn store(
        &self,
        desc: &TensorDesc,
        make: impl FnOnce(&B) -> Result<Tensor<B::Storage>>,
    ) -> Result<Tensor<Buffer>> {
        let inner = &*self.inner;
        let bytes = desc.bytes() as u64;
        let mut state = inner.lock();
        inner.check_room(&state, bytes)?;
        let tensor = make(&inner.backend)?;
        let id = state.next_buffer;
        state.next_buffer += 1;
        state.buffers.insert(id, tensor);
        state.used += bytes;
        state.counters.high_water = state.counters.high_water.max(state.used);
        inner
            .device
            .inner
            .memory_in_use
            .fetch_add(bytes, Ordering::Relaxed);
        let owner: Weak<dyn Release> = Arc::downgrade(&self.inner) as Weak<dyn Release>;
        Ok(Tensor::from_parts(
            desc.clone(),
            Buffer {
                id,
                accelerator: inner.id,
                bytes,
                owner,
            },
        ))
    }
}

fn dtype_index(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
    }
}

impl<B: Backend> Inner<B> {
    fn lock(&self) -> MutexGuard<'_, State<B::Storage>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The quota check every allocation makes: live, and `bytes` more fit in the tier's memory.
    fn check_room(&self, state: &State<B::Storage>, bytes: u64) -> Result<()> {
        state.live(self.id)?;
        if state.used.saturating_add(bytes) > state.tier.memory() {
            return Err(Error::MemoryQuota {
                accelerator: self.id,
                tier: state.tier.name().to_string(),
                requested: bytes,
                used: state.used,
                quota: state.tier.memory(),
            });
        }
        Ok(())
    }

    fn own(&self, buffer: &Buffer) -> Result<()> {
        if buffer.accelerator != self.id {
            return Err(Error::ForeignTensor {
                accelerator: self.id,
                owner: buffer.accelerator,
            });
        }
        Ok(())
    }

    fn missing(&self) -> Error {
        Error::Backend {
            backend: "accelerator",
            msg: format!(
                "accelerator {}: a tensor's storage is missing (an earlier launch panicked)",
                self.id
            ),
        }
    }

    fn usage(&self, state: &State<B::Storage>) -> Usage {
        let c = &state.counters;
        Usage {
            accelerator: self.id,
            tier: state.tier.name().to_string(),
            attached: state.detached.unwrap_or_else(|| self.attached_at.elapsed()),
            ops: c.ops,
            flops_f32: c.flops[0],
            flops_f16: c.flops[1],
            charged: c.charged,
            meter_wait: c.meter_wait,
            busy: c.busy,
            bytes_uploaded: c.uploaded,
            bytes_downloaded: c.downloaded,
            op_bytes: c.op_bytes,
            memory_used: state.used,
            memory_high_water: c.high_water,
            memory_quota: state.tier.memory(),
            meter_balance: self.meter.balance(),
        }
    }

    fn detach(&self) -> Result<Usage> {
        let device = &self.device.inner;
        let mut attached = device.lock_attached();
        let mut state = self.lock();
        state.live(self.id)?;
        state.detached = Some(self.attached_at.elapsed());
        state.buffers.clear();
        device
            .memory_in_use
            .fetch_sub(state.used, Ordering::Relaxed);
        state.used = 0;
        attached.remove(&self.id);
        Ok(self.usage(&state))
    }
}

impl<B: Backend> Release for Inner<B> {
    fn release(&self, buffer: u64) {
        let mut state = self.lock();
        if let Some(t) = state.buffers.remove(&buffer) {
            let bytes = t.desc().bytes() as u64;
            state.used -= bytes;
            self.device
                .inner
                .memory_in_use
                .fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

impl<B: Backend> Drop for Accelerator<B> {
    fn drop(&mut self) {
        // Detaching twice is an error only when asked for; dropping a detached one is fine.
        let _ = self.inner.detach();
    }
}

impl<B> Backend for Accelerator<B>
where
    B: Backend + Clone + 'static,
{
    type Storage = Buffer;

    fn name(&self) -> String {
        format!(
            "accelerator {} ({}) on {}",
            self.inner.id,
            self.inner.lock().tier.name(),
            self.inner.backend.name()
        )
    }

    fn alloc(&self, desc: &TensorDesc) -> Result<Tensor<Buffer>> {
        self.store(desc, |b| b.alloc(desc))
    }

    fn upload(&self, host: &HostTensor) -> Result<Tensor<Buffer>> {
        let t = self.store(host.desc(), |b| b.upload(host))?;
        self.inner.lock().counters.uploaded += host.desc().bytes() as u64;
        Ok(t)
    }

    /// As [`Backend::upload`], handing `host` to the device backend's owning upload (the CPU
    /// backend keeps it without a copy).
    fn upload_owned(&self, host: HostTensor) -> Result<Tensor<Buffer>> {
        let desc = host.desc().clone();
        let t = self.store(&desc, |b| b.upload_owned(host))?;
        self.inner.lock().counters.uploaded += desc.bytes() as u64;
        Ok(t)
    }

    fn write(&self, t: &mut Tensor<Buffer>, host: &HostTensor) -> Result<()> {
        crate::backend::check_write(t.desc(), host.desc())?;
        let inner = &*self.inner;
        let mut state = inner.lock();
        state.live(inner.id)?;
        inner.own(t.storage())?;
        let stored = state
            .buffers
            .get_mut(&t.storage().id)
            .ok_or_else(|| inner.missing())?;
        inner.backend.write(stored, host)?;
        state.counters.uploaded += host.desc().bytes() as u64;
        Ok(())
    }

    fn download(&self, t: &Tensor<Buffer>) -> Result<HostTensor> {
        let inner = &*self.inner;
        let mut state = inner.lock();
        state.live(inner.id)?;
        inner.own(t.storage())?;
        let stored = state
            .buffers
            .get(&t.storage().id)
            .ok_or_else(|| inner.missing())?;
        let host = inner.backend.download(stored)?;
        state.counters.downloaded += t.desc().bytes() as u64;
        Ok(host)
    }

    fn synchronize(&self) -> Result<()> {
        self.inner.lock().live(self.inner.id)?;
        self.inner.backend.synchronize()
    }

    fn run_ops<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.inner.backend.run_ops(f)
    }

    fn total_memory(&self) -> Option<u64> {
        Some(self.inner.lock().tier.memory())
    }

    fn launch(&self, plan: &Plan, inputs: &[&Buffer], y: &mut Buffer) -> Result<()> {
        self.run_op(
            plan.flops(),
            plan.output().dtype(),
            inputs,
            y,
            |be, s, y| be.launch(plan, s, y),
        )
    }
}
