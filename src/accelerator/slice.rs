//! One virtual accelerator: a slice of a device with its own tier, meter, memory and backend
//! queue. It is a [`Backend`] itself, so every op runs on it unchanged; each launch follows the
//! product's flow — validate (the op's plan), check the tensors are live and its own, charge the
//! meter and wait, take the device's fair-queue turn, launch on the device, record usage.
//!
//! Tensors on an accelerator are [`Buffer`] handles: the accelerator holds their storage, so
//! detaching frees everything at once, and a handle used after detach (or on another
//! accelerator) is a typed error rather than a dangling pointer. Dropping a handle frees its
//! storage and its share of the quota.
//!
//! Locking: the accelerator's state (tier, handle table, counters) is locked only for
//! bookkeeping, never while an op waits on the meter, computes or copies. Each tensor's storage
//! has a lock of its own that the op, upload or download using it holds — so usage, metrics,
//! frees and detach never wait for an op, and nothing of one accelerator waits for another's.
//! A panic inside a backend launch is caught: the op fails with a backend error, the output
//! stays allocated and charged like any tensor, and the accelerator stays usable.
//!
//! Memory: every tensor is charged its bytes, at least [`MIN_TENSOR_CHARGE`], against the
//! tier's quota *before* its storage exists ([`Accelerator::reserve`]), and the number of live
//! tensors is limited ([`crate::accelerator::DeviceConfig::max_tensors`]). What the backend
//! derives from a tensor and caches with it (the CPU backend's widened FP16 weights) is charged
//! to the quota as well, before it is built ([`Backend::charge_derived_to`]): it counts in
//! `memory_used`, and a form that does not fit is not cached (the op computes without it). A
//! cache yields to data: an allocation or resize it stands in the way of drops the caches first
//! ([`Backend::drop_derived`]).

use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use super::meter::Meter;
use super::{Device, Tier, Usage};
use crate::backend::{plan_into, storages, Backend, MemoryAccount, Step};
use crate::dtype::PerDType;
use crate::error::{Error, Result};
use crate::ops::{Op, Plan};
use crate::sync::{lock, read, try_read, write};
use crate::tensor::{HostTensor, Tensor, TensorDesc};

/// The least any tensor is charged against its accelerator's quota, whatever its size: the
/// bookkeeping behind a handle is not free, so a client cannot hold millions of empty tensors.
pub const MIN_TENSOR_CHARGE: u64 = 512;

/// What a tensor of `desc` is charged against the quota.
pub fn charge(desc: &TensorDesc) -> u64 {
    (desc.bytes() as u64).max(MIN_TENSOR_CHARGE)
}

/// How an op waits for its meter and the device (see [`Accelerator::apply_into_now`]).
#[derive(Clone, Copy)]
enum Pace {
    /// As long as they make it.
    Wait,
    /// Not at all: the op does not run where either would make it wait.
    OnlyIfFree,
}

/// A virtual accelerator attached to a [`Device`]. Share it between threads by reference or
/// `Arc`; dropping it detaches it.
pub struct Accelerator<B: Backend> {
    inner: Arc<Inner<B>>,
}

/// A tensor's storage on an accelerator: a handle that frees the storage when dropped.
pub struct Buffer {
    id: u64,
    accelerator: u64,
    /// The data's size.
    bytes: u64,
    /// What it is charged against the quota.
    charged: u64,
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
            owner.release(self.id, self.charged);
        }
    }
}

/// Frees one buffer's storage, or a reservation (implemented by the accelerator that holds it).
trait Release: Send + Sync {
    fn release(&self, buffer: u64, charged: u64);
    fn unreserve(&self, bytes: u64);
}

/// Quota held for a tensor that does not exist yet (an upload still arriving): it counts in the
/// accelerator's memory use and tensor count from [`Accelerator::reserve`] until it becomes
/// the tensor or is dropped.
pub struct Reservation {
    accelerator: u64,
    desc: TensorDesc,
    bytes: u64,
    owner: Weak<dyn Release>,
}

impl Reservation {
    /// The tensor it reserves room for.
    pub fn desc(&self) -> &TensorDesc {
        &self.desc
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.upgrade() {
            owner.unreserve(self.bytes);
        }
    }
}

/// One tensor's storage, locked by whoever uses it (see the module doc).
type Slot<S> = Arc<RwLock<Tensor<S>>>;

struct Inner<B: Backend> {
    id: u64,
    owner: String,
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
    buffers: HashMap<u64, Slot<S>>,
    next_buffer: u64,
    /// Bytes charged: live tensors, reservations and derived forms.
    used: u64,
    /// Bytes of `used` charged for forms the backend derived from tensors.
    derived: u64,
    /// Reservations not yet turned into tensors.
    reserved: usize,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    ops: u64,
    flops: PerDType<u64>,
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
    pub(super) fn new(
        device: Device<B>,
        id: u64,
        owner: &str,
        tier: Tier,
        meter_empty_at: Instant,
    ) -> Result<Self> {
        let mut backend = device.backend().fork()?;
        let meter = Meter::new(device.inner.config.burst, meter_empty_at);
        Ok(Accelerator {
            inner: Arc::new_cyclic(|inner| {
                backend.charge_derived_to(Arc::new(Quota(inner.clone())));
                Inner {
                    id,
                    owner: owner.to_string(),
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
                        derived: 0,
                        reserved: 0,
                        counters: Counters::default(),
                    }),
                }
            }),
        })
    }

    /// This accelerator's id on its device (random, never 0).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Who attached it ([`super::device::LOCAL_OWNER`] through the local API, a token's name
    /// on a server): meter debt left at detach passes to the owner's next accelerator.
    pub fn owner(&self) -> &str {
        &self.inner.owner
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
        self.inner.evict_derived(|state| state.used > tier.memory());
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

    /// Reserves quota (and a tensor slot) for a tensor of `desc` before its data exists — e.g.
    /// before receiving an upload — so concurrent transfers cannot together exceed the quota.
    /// The room is held until the reservation becomes a tensor
    /// ([`Accelerator::upload_reserved`]) or is dropped.
    pub fn reserve(&self, desc: &TensorDesc) -> Result<Reservation> {
        let inner = &*self.inner;
        let bytes = charge(desc);
        inner.evict_derived(|state| inner.check_room(state, bytes, 1).is_err());
        let mut state = inner.lock();
        inner.check_room(&state, bytes, 1)?;
        inner.charge(&mut state, bytes);
        state.reserved += 1;
        Ok(Reservation {
            accelerator: inner.id,
            desc: desc.clone(),
            bytes,
            owner: Arc::downgrade(&self.inner) as Weak<dyn Release>,
        })
    }

    /// Stores `host` in the room `reservation` holds (as [`Backend::upload_owned`]).
    pub fn upload_reserved(
        &self,
        reservation: Reservation,
        host: HostTensor,
    ) -> Result<Tensor<Buffer>> {
        if reservation.accelerator != self.inner.id {
            return Err(Error::ForeignTensor {
                accelerator: self.inner.id,
                owner: reservation.accelerator,
            });
        }
        crate::backend::check_write(reservation.desc(), host.desc())?;
        let bytes = host.desc().bytes() as u64;
        let t = self.store(reservation, |b| b.upload_owned(host))?;
        self.inner.lock().counters.uploaded += bytes;
        Ok(t)
    }

    /// Detaches it: frees every tensor it holds, releases its share of the device and returns
    /// the final usage. Its tensor handles and any further call fail with
    /// [`Error::Detached`]. Meter debt is not forgiven: the owner's next accelerator inherits it.
    pub fn detach(&self) -> Result<Usage> {
        self.inner.detach()
    }

    /// Runs `op` on `inputs` into `y` as [`Backend::apply_into`] does, if it can start now:
    /// `Ok(false)` — nothing run, charged or counted — where the meter or the device's fair
    /// queue would make it wait (the meter in debt, or the device held or waited for by another
    /// op). It never waits, so it may run on a thread of the CPU backend's pool: a caller runs
    /// ops there this way while the device is free and waits for the others off the pool
    /// (the server's programs, see `rpc::server`). Errors are `apply_into`'s. (One case costs
    /// something: another call of this accelerator charging its meter between this op's two
    /// looks at it; the device's queue then counts the unused turn against this accelerator.)
    pub fn apply_into_now(
        &self,
        op: &Op,
        inputs: &[&Tensor<Buffer>],
        y: &mut Tensor<Buffer>,
    ) -> Result<bool> {
        let plan = plan_into(op, inputs, y.desc())?;
        self.run_op(&plan, &storages(inputs), y.storage_mut(), Pace::OnlyIfFree)
    }

    /// Runs one op: checks the tensors, charges the plan's FLOPs at the tier's rate, waits on
    /// the meter and for the device's fair-queue turn (or, at [`Pace::OnlyIfFree`], returns
    /// `Ok(false)` where either would wait), then launches with the storages of `inputs` and
    /// `output`, each under its own lock. `Ok(true)` when it ran.
    fn run_op(
        &self,
        plan: &Plan,
        inputs: &[&Buffer],
        output: &mut Buffer,
        pace: Pace,
    ) -> Result<bool> {
        let inner = &*self.inner;
        let (flops, dtype) = (plan.flops(), plan.output().dtype());
        let (cost, input_slots, output_slot) = {
            let state = inner.lock();
            state.live(inner.id)?;
            state.tier.check_offers(dtype)?;
            let slots = inputs
                .iter()
                .map(|b| inner.slot(&state, b))
                .collect::<Result<Vec<_>>>()?;
            let y = inner.slot(&state, output)?;
            (state.tier.cost(flops, dtype), slots, y)
        };
        let fair = &inner.device.inner.fair;
        let (turn, waited) = match pace {
            Pace::Wait => (None, inner.meter.wait(cost)),
            Pace::OnlyIfFree => {
                // The meter first: a tenant in debt does not take the device only to give it
                // back. Charged only if it still need not wait (another call of this
                // accelerator may have charged it since): never a sleep here, on the pool.
                if inner.meter.would_wait(cost) {
                    return Ok(false);
                }
                let Some(turn) = fair.try_turn(inner.id, cost) else {
                    return Ok(false);
                };
                if !inner.meter.try_charge(cost) {
                    return Ok(false);
                }
                (Some(turn), Duration::ZERO)
            }
        };
        inner.lock().live(inner.id)?;
        let started = Instant::now();
        let result = {
            let _turn = turn.unwrap_or_else(|| fair.turn(inner.id, cost));
            // A handle is either this op's output (`&mut`) or read by it, never both (the
            // borrow rules), so these locks never wait on another op's.
            let guards: Vec<_> = input_slots.iter().map(|s| read(s)).collect();
            let mut y = write(&output_slot);
            let storages: Vec<&B::Storage> = guards.iter().map(|t| t.storage()).collect();
            catch_unwind(AssertUnwindSafe(|| {
                inner.backend.launch(plan, &storages, y.storage_mut())
            }))
            .unwrap_or_else(|panic| Err(inner.panicked(panic)))
        };
        let busy = started.elapsed();
        let mut state = inner.lock();
        let c = &mut state.counters;
        c.ops += 1;
        c.flops[dtype] += flops;
        c.charged += cost;
        c.meter_wait += waited;
        c.busy += busy;
        c.op_bytes += inputs.iter().map(|b| b.bytes).sum::<u64>() + output.bytes;
        result.map(|()| true)
    }

    /// Stores a tensor made by `make` in the room `reservation` holds.
    fn store(
        &self,
        mut reservation: Reservation,
        make: impl FnOnce(&B) -> Result<Tensor<B::Storage>>,
    ) -> Result<Tensor<Buffer>> {
        let inner = &*self.inner;
        let tensor = make(&inner.backend)?;
        let desc = reservation.desc.clone();
        let mut state = inner.lock();
        state.live(inner.id)?;
        let id = state.next_buffer;
        state.next_buffer += 1;
        state.buffers.insert(id, Arc::new(RwLock::new(tensor)));
        state.reserved -= 1;
        let charged = reservation.bytes;
        // The reservation's room now belongs to the tensor: disarm its release.
        reservation.owner = Weak::<Inner<B>>::new();
        let owner: Weak<dyn Release> = Arc::downgrade(&self.inner) as Weak<dyn Release>;
        Ok(Tensor::from_parts(
            desc.clone(),
            Buffer {
                id,
                accelerator: inner.id,
                bytes: desc.bytes() as u64,
                charged,
                owner,
            },
        ))
    }
}

impl<B: Backend> Inner<B> {
    fn lock(&self) -> MutexGuard<'_, State<B::Storage>> {
        lock(&self.state)
    }

    /// The check every allocation makes: live, `tensors` more stay within the tensor limit,
    /// and `bytes` more fit in the tier's memory.
    fn check_room(&self, state: &State<B::Storage>, bytes: u64, tensors: usize) -> Result<()> {
        state.live(self.id)?;
        let limit = self.device.inner.config.max_tensors;
        if state.buffers.len() + state.reserved + tensors > limit {
            return Err(Error::TensorLimit {
                accelerator: self.id,
                limit,
            });
        }
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

    /// Drops the forms the backend derived from this accelerator's tensors if `in_the_way` says
    /// they stand in the way of something (an allocation, a resize): caches yield to data.
    /// Tensors an op is writing are skipped; nothing is waited for.
    fn evict_derived(&self, in_the_way: impl FnOnce(&State<B::Storage>) -> bool) {
        let slots: Vec<Slot<B::Storage>> = {
            let state = self.lock();
            if state.derived == 0 || !in_the_way(&state) {
                return;
            }
            state.buffers.values().cloned().collect()
        };
        for slot in slots {
            if let Some(t) = try_read(&slot) {
                self.backend.drop_derived(t.storage());
            }
        }
    }

    /// The storage slot of one of this accelerator's buffers.
    fn slot(&self, state: &State<B::Storage>, buffer: &Buffer) -> Result<Slot<B::Storage>> {
        if buffer.accelerator != self.id {
            return Err(Error::ForeignTensor {
                accelerator: self.id,
                owner: buffer.accelerator,
            });
        }
        state.live(self.id)?;
        state
            .buffers
            .get(&buffer.id)
            .cloned()
            .ok_or(Error::Detached(self.id))
    }

    /// The error an op gets when its backend launch panicked.
    fn panicked(&self, panic: Box<dyn std::any::Any + Send>) -> Error {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Error::Backend {
            backend: "accelerator",
            msg: format!(
                "accelerator {}: the launch failed inside the backend ({what}); this is a bug in eia, please report it — the output's contents are unspecified, the accelerator and its other tensors are unaffected",
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
            flops: c.flops,
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
        // Storage an op is still using is freed when that op ends.
        let buffers = std::mem::take(&mut state.buffers);
        device
            .memory_in_use
            .fetch_sub(state.used, Ordering::Relaxed);
        state.used = 0;
        state.derived = 0;
        state.reserved = 0;
        attached.remove(&self.id);
        device.settle(self.id, &self.owner, self.meter.empty_at());
        let usage = self.usage(&state);
        drop((state, attached));
        drop(buffers);
        Ok(usage)
    }

    /// Takes `bytes` off the accelerator's and the device's memory use (unless detach already
    /// zeroed them).
    /// Charges `bytes` to the quota (checked by the caller) and to the device's memory in use.
    fn charge(&self, state: &mut State<B::Storage>, bytes: u64) {
        state.used += bytes;
        state.counters.high_water = state.counters.high_water.max(state.used);
        self.device
            .inner
            .memory_in_use
            .fetch_add(bytes, Ordering::Relaxed);
    }

    fn uncharge(&self, state: &mut State<B::Storage>, bytes: u64) {
        if state.detached.is_none() {
            state.used -= bytes;
            self.device
                .inner
                .memory_in_use
                .fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

impl<B: Backend> Release for Inner<B> {
    fn release(&self, buffer: u64, charged: u64) {
        let mut state = self.lock();
        if let Some(slot) = state.buffers.remove(&buffer) {
            self.uncharge(&mut state, charged);
            drop(state);
            drop(slot);
        }
    }

    fn unreserve(&self, bytes: u64) {
        let mut state = self.lock();
        if state.detached.is_none() {
            state.reserved -= 1;
        }
        self.uncharge(&mut state, bytes);
    }
}

/// An accelerator's memory quota as its backend's [`MemoryAccount`]: derived forms are charged
/// like tensors (no tensor slot, no minimum charge) while it is attached.
struct Quota<B: Backend>(Weak<Inner<B>>);

impl<B: Backend> MemoryAccount for Quota<B> {
    fn try_charge(&self, bytes: u64) -> bool {
        let Some(inner) = self.0.upgrade() else {
            return false;
        };
        let mut state = inner.lock();
        if inner.check_room(&state, bytes, 0).is_err() {
            return false;
        }
        inner.charge(&mut state, bytes);
        state.derived += bytes;
        true
    }

    fn release(&self, bytes: u64) {
        if let Some(inner) = self.0.upgrade() {
            let mut state = inner.lock();
            if state.detached.is_none() {
                state.derived -= bytes;
            }
            inner.uncharge(&mut state, bytes);
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
        self.store(self.reserve(desc)?, |b| b.alloc(desc))
    }

    /// Against the tier's memory quota and the device's limit on live tensors, now (dropping
    /// cached derived forms if they stand in the way).
    fn check_room(&self, bytes: u64, tensors: usize) -> Result<()> {
        let inner = &*self.inner;
        inner.evict_derived(|state| inner.check_room(state, bytes, tensors).is_err());
        inner.check_room(&inner.lock(), bytes, tensors)
    }

    fn upload(&self, host: &HostTensor) -> Result<Tensor<Buffer>> {
        let t = self.store(self.reserve(host.desc())?, |b| b.upload(host))?;
        self.inner.lock().counters.uploaded += host.desc().bytes() as u64;
        Ok(t)
    }

    /// As [`Backend::upload`], handing `host` to the device backend's owning upload (the CPU
    /// backend keeps it without a copy).
    fn upload_owned(&self, host: HostTensor) -> Result<Tensor<Buffer>> {
        let reservation = self.reserve(host.desc())?;
        self.upload_reserved(reservation, host)
    }

    fn write(&self, t: &mut Tensor<Buffer>, host: &HostTensor) -> Result<()> {
        crate::backend::check_write(t.desc(), host.desc())?;
        let inner = &*self.inner;
        let slot = inner.slot(&inner.lock(), t.storage())?;
        inner.backend.write(&mut write(&slot), host)?;
        inner.lock().counters.uploaded += host.desc().bytes() as u64;
        Ok(())
    }

    fn download(&self, t: &Tensor<Buffer>) -> Result<HostTensor> {
        let inner = &*self.inner;
        let slot = inner.slot(&inner.lock(), t.storage())?;
        let host = inner.backend.download(&read(&slot))?;
        inner.lock().counters.downloaded += t.desc().bytes() as u64;
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

    /// As the device backend decides (the layouts are its own; the tensors' sizes, and so their
    /// charges against the quota, are the same in either).
    fn blocked_outputs(
        &self,
        steps: &[Step],
        descs: &[Option<&TensorDesc>],
        reads: &[usize],
    ) -> Vec<bool> {
        self.inner.backend.blocked_outputs(steps, descs, reads)
    }

    /// Asks the device backend, for `y`'s storage (nothing where `y` is not this accelerator's
    /// live buffer: the op writing it then fails on it).
    fn want_blocked(&self, y: &mut Buffer) {
        let inner = &*self.inner;
        let slot = inner.slot(&inner.lock(), y);
        if let Ok(slot) = slot {
            inner.backend.want_blocked(write(&slot).storage_mut());
        }
    }

    /// Where the device backend does: a buffer's storage then changes length within its own
    /// allocation, never its charge against the quota.
    fn lends_storage(&self) -> bool {
        self.inner.backend.lends_storage()
    }

    /// Sets the length of `buffer`'s storage, which is allocated for its own descriptor
    /// (`home` must be that descriptor's length).
    fn set_len(&self, buffer: &mut Buffer, home: usize, len: usize) -> Result<()> {
        let inner = &*self.inner;
        let slot = inner.slot(&inner.lock(), buffer)?;
        let mut t = write(&slot);
        let own = t.desc().len();
        if home != own {
            return Err(Error::Backend {
                backend: "accelerator",
                msg: format!("buffer {} holds {own} elements, not {home}", buffer.id),
            });
        }
        inner.backend.set_len(t.storage_mut(), own, len)
    }

    fn launch(&self, plan: &Plan, inputs: &[&Buffer], y: &mut Buffer) -> Result<()> {
        self.run_op(plan, inputs, y, Pace::Wait).map(|_| ())
    }
}
