//! `eia serve`: the gRPC service over the virtual accelerators of a host's devices (a
//! [`Pool`]: an attach lands on the device with the most headroom for its tier and stays there
//! for life; the Capacity RPC reports each device's load, [`super::capacity`]).
//!
//! Each attached accelerator belongs to the token that attached it and keeps its tensors in a
//! handle table. Handles are random 64-bit ids (never 0): a tensor is named by its
//! accelerator's and its own id, 128 random bits that cannot be guessed and that a restarted
//! server does not hand out again; an id that is not the caller's — never issued, freed,
//! detached, or another token's — is NOT_FOUND, whoever asks, so no token learns which ids
//! exist.
//!
//! Ops and transfers run on blocking threads (the meter sleeps, the CPU backend computes), at
//! most [`CALLS_PER_ACCELERATOR`] at once per accelerator, so the async runtime and the
//! blocking pool keep serving other tenants. A program's ops are handed to the device
//! backend's pool in runs, each op there only while it need not wait
//! ([`Accelerator::apply_into_now`]); one that must wait waits on the blocking thread. A
//! program its client marks scratch (a model's inference) writes each output into storage of
//! its own that it is done with, as a local model does (`backend::reuse`), and gives every
//! tensor its storage back before it returns; its intermediates may stay in the device
//! backend's own layout where only its ops read them (`Backend::blocked_outputs`). The
//! locks the async threads take — the accelerator map, a handle table, an accelerator's
//! bookkeeping — are only ever held for bookkeeping; a program holds its own tensors' locks
//! while it waits on the meter and computes, and nothing else of any tenant waits for those.
//! Uploads reserve their quota before their bytes arrive and are cancelled when their
//! accelerator goes. A call that ends before its work (its deadline passed, its client went)
//! keeps its permit until the work ends, and the tensors that work made for it are freed: no
//! one holds their handles. A reaper detaches accelerators whose lease ran out (no call for
//! `lease`), freeing all their memory.
//!
//! Operations: `grpc.health.v1` (tonic-health) reports the service SERVING until a drain
//! starts; a drain ([`ServerHandle::drain`], `eia serve` on SIGTERM or Ctrl-C) refuses new
//! attaches with UNAVAILABLE, lets calls in flight finish up to a timeout, then detaches every
//! accelerator (calls still waiting end with UNAVAILABLE) and stops. Every detach — by the
//! client, by lease expiry, by a drain — logs the accelerator's final usage record (`tracing`)
//! and appends it, as one JSON object per line, to the usage log if one is configured.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{Principal, Tokens};
use super::chunks::{self, Assembly};
use super::convert::{self, invalid, status};
use super::listener::{self, Limits, OpenConnections};
use super::metrics::ServerMetrics;
use super::proto::{self, accelerators_server::Accelerators};
use crate::accelerator::{Accelerator, Buffer, Device, DeviceConfig, Load, Pool};
use crate::backend::{check_output, reuse, Backend, Step};
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::sync::{lock, read, write};
use crate::tensor::{HostTensor, Tensor, TensorDesc};

/// HTTP/2 flow-control window per stream (server and client).
pub const WINDOW_BYTES: u32 = 8 << 20;

/// Calls of one accelerator that may hold a blocking thread at once (ops waiting on the meter
/// or computing, transfers); more wait their turn without holding a thread, so one tenant
/// cannot take the blocking pool from the others.
pub const CALLS_PER_ACCELERATOR: usize = 4;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Every device's tiers, capacity (`None`: each device calibrated at start), overcommit and
    /// meter burst.
    pub device: DeviceConfig,
    /// Accepted tokens; `None` serves anyone (the loopback default).
    pub tokens: Option<Tokens>,
    /// An accelerator with no call for this long is detached (default 30 s).
    pub lease: Duration,
    /// Largest gRPC message either way (default 64 MiB); larger tensors stream in chunks.
    pub max_message_bytes: usize,
    /// Size of the chunks a download streams (default 1 MiB).
    pub chunk_bytes: usize,
    /// PEM certificate chain and private key: serve TLS (rustls) instead of plain TCP.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Where to serve Prometheus metrics (`GET /metrics`, plain HTTP); `None`: nowhere.
    pub metrics: Option<SocketAddr>,
    /// A file every final usage record is appended to, one JSON object per line.
    pub usage_log: Option<PathBuf>,
    /// An upload that sends nothing for this long is ended with DEADLINE_EXCEEDED and its
    /// buffer freed (default 30 s).
    pub stream_idle_timeout: Duration,
    /// Connections open at once and how long a silent one is kept ([`Limits`]).
    pub connections: Limits,
    /// Streams (calls) one connection may have open at once (default 256).
    pub max_streams_per_connection: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            device: DeviceConfig::default(),
            tokens: None,
            lease: Duration::from_secs(30),
            max_message_bytes: 64 << 20,
            chunk_bytes: 1 << 20,
            tls: None,
            metrics: None,
            usage_log: None,
            stream_idle_timeout: Duration::from_secs(30),
            connections: Limits::default(),
            max_streams_per_connection: 256,
        }
    }
}

/// The gRPC service (generic over the device's backend).
pub struct Service<B: Backend> {
    shared: Arc<Shared<B>>,
}

struct Shared<B: Backend> {
    pool: Pool<B>,
    /// Whether a device admits beyond its compute capacity (reported by Capacity).
    overcommit: bool,
    tokens: Option<Tokens>,
    lease: Duration,
    chunk_bytes: usize,
    stream_idle_timeout: Duration,
    accelerators: Mutex<HashMap<u64, Arc<Attached<B>>>>,
    /// Set when a drain starts: attaches are refused and readiness is false.
    draining: AtomicBool,
    health: tonic_health::server::HealthReporter,
    usage_log: Option<Mutex<std::fs::File>>,
    metrics: ServerMetrics,
    /// The gRPC listener's open connections, once it serves.
    connections: std::sync::OnceLock<OpenConnections>,
}

impl<B: Backend + Clone + 'static> Shared<B> {
    /// Logs a detached accelerator's final usage and appends it to the usage log.
    fn record(&self, owner: &str, device: usize, why: &str, usage: &crate::accelerator::Usage) {
        self.metrics.detached(why);
        tracing::info!(
            accelerator = usage.accelerator,
            owner,
            device,
            tier = %usage.tier,
            why,
            attached_s = usage.attached.as_secs_f64(),
            ops = usage.ops,
            flops_fp32 = usage.flops[crate::DType::F32],
            flops_fp16 = usage.flops[crate::DType::F16],
            charged_s = usage.charged,
            meter_wait_s = usage.meter_wait.as_secs_f64(),
            memory_high_water = usage.memory_high_water,
            "detached"
        );
        if let Some(file) = &self.usage_log {
            let line = serde_json::json!({
                "accelerator": usage.accelerator,
                "owner": owner,
                "device": device,
                "tier": usage.tier,
                "why": why,
                "attached_seconds": usage.attached.as_secs_f64(),
                "ops": usage.ops,
                "flops_fp32": usage.flops[crate::DType::F32],
                "flops_fp16": usage.flops[crate::DType::F16],
                "charged_seconds": usage.charged,
                "meter_wait_seconds": usage.meter_wait.as_secs_f64(),
                "busy_seconds": usage.busy.as_secs_f64(),
                "bytes_uploaded": usage.bytes_uploaded,
                "bytes_downloaded": usage.bytes_downloaded,
                "memory_high_water": usage.memory_high_water,
                "memory_quota": usage.memory_quota,
            });
            if let Err(e) = writeln!(lock(file), "{line}") {
                tracing::error!(error = %e, "cannot append to the usage log");
            }
        }
    }

    /// Detaches accelerator `a` (already out of the map) and records why.
    fn retire(&self, a: &Attached<B>, why: &str) -> Result<crate::accelerator::Usage, Status> {
        let usage = a.detach()?;
        self.record(&a.owner, a.device, why, &usage);
        Ok(usage)
    }

    /// Starts a drain and waits (up to `timeout`) for calls in flight, then detaches every
    /// accelerator.
    async fn drain(&self, timeout: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        self.health
            .set_not_serving::<proto::accelerators_server::AcceleratorsServer<Service<B>>>()
            .await;
        let started = Instant::now();
        tracing::info!(
            timeout_s = timeout.as_secs_f64(),
            "draining: attaches refused"
        );
        let busy = || {
            lock(&self.accelerators)
                .values()
                .filter(|a| a.calls.available_permits() < CALLS_PER_ACCELERATOR)
                .count()
        };
        while busy() > 0 && started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = busy();
        let all: Vec<Arc<Attached<B>>> = lock(&self.accelerators).drain().map(|(_, a)| a).collect();
        for a in &all {
            a.drained.store(true, Ordering::SeqCst);
            let _ = self.retire(a, "drain");
        }
        tracing::info!(
            accelerators = all.len(),
            cut_short = left,
            seconds = started.elapsed().as_secs_f64(),
            "drained"
        );
    }
}

/// One tensor of an attached accelerator, locked by the program or transfer using it.
type Held = Arc<RwLock<Tensor<Buffer>>>;

/// One attached accelerator and its tensors.
struct Attached<B: Backend> {
    accel: Accelerator<B>,
    owner: String,
    /// The index of the device it runs on, for life.
    device: usize,
    tensors: Mutex<HashMap<u64, Held>>,
    last_seen: Mutex<Instant>,
    /// Permits for calls that hold a blocking thread ([`CALLS_PER_ACCELERATOR`]).
    calls: tokio::sync::Semaphore,
    /// Becomes true when it is detached (by its client or the lease reaper): uploads still
    /// arriving stop and free their buffers.
    gone: tokio::sync::watch::Sender<bool>,
    /// Set when a drain detaches it: calls still waiting end with UNAVAILABLE.
    drained: AtomicBool,
}

impl<B: Backend + Clone + 'static> Attached<B> {
    /// Adds a tensor under a new random id.
    fn insert(&self, t: Tensor<Buffer>) -> u64 {
        let mut tensors = lock(&self.tensors);
        let id = loop {
            let id: u64 = rand::random();
            if id != 0 && !tensors.contains_key(&id) {
                break id;
            }
        };
        tensors.insert(id, Arc::new(RwLock::new(t)));
        id
    }

    /// The tensor called `id`.
    fn tensor(&self, id: u64) -> Result<Held, Status> {
        lock(&self.tensors)
            .get(&id)
            .cloned()
            .ok_or_else(|| not_found(self.accel.id(), id))
    }

    /// Runs `f` on a blocking thread once one of this accelerator's call permits is free. The
    /// permit is held until `f` returns, even if the call ends first (its deadline passed, its
    /// client went); what `f` made for a call that ended is answered to no one, so the tensors
    /// `made` names in it are freed, not held unseen until the accelerator is detached.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Self) -> Result<T, Status> + Send + 'static,
        made: fn(&T) -> Vec<u64>,
    ) -> Result<T, Status> {
        self.calls
            .acquire()
            .await
            .map_err(|_| Status::internal("the accelerator's call queue closed"))?
            .forget();
        let me = Arc::clone(self);
        let (answer, result) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let permit = Permit(&me.calls);
            let result = f(&me);
            drop(permit);
            if let Err(Ok(unanswered)) = answer.send(result) {
                let _ = free(&me, &made(&unanswered));
            }
        });
        result
            .await
            .map_err(|_| Status::internal("worker failed"))?
            .map_err(|s| self.unless_drained(s))
    }

    /// `s`, or UNAVAILABLE if a drain detached the accelerator under the call.
    fn unless_drained(&self, s: Status) -> Status {
        if self.drained.load(Ordering::SeqCst) {
            Status::unavailable(format!(
                "the server drained (shut down) before this call finished: {}",
                s.message()
            ))
        } else {
            s
        }
    }

    /// Detaches it: its uploads stop, its tensors are freed, and the final usage is returned.
    fn detach(&self) -> Result<crate::accelerator::Usage, Status> {
        self.gone.send_replace(true);
        let tensors = std::mem::take(&mut *lock(&self.tensors));
        drop(tensors);
        self.accel.detach().map_err(status)
    }
}

/// A call permit taken from an accelerator's `calls` (and forgotten there), given back when
/// dropped — also if the call's work panics.
struct Permit<'a>(&'a tokio::sync::Semaphore);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

fn not_found(accelerator: u64, tensor: u64) -> Status {
    Status::not_found(format!(
        "accelerator {accelerator} has no tensor {tensor} (never allocated, or freed)"
    ))
}

impl<B: Backend + Clone + 'static> Service<B> {
    /// A service over `pool`'s devices (`config.device` is not used: each device has its own),
    /// with its lease reaper running on the current tokio runtime.
    pub fn new(pool: Pool<B>, config: &ServerConfig) -> Result<Self> {
        if config.lease.is_zero() {
            return Err(Error::Config {
                source_name: "lease".into(),
                msg: "must be more than 0 s: an accelerator whose client is gone is detached after its lease, and a lease of 0 would detach every accelerator at once".into(),
            });
        }
        let usage_log = match &config.usage_log {
            None => None,
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| Error::Config {
                        source_name: path.display().to_string(),
                        msg: format!("cannot open the usage log: {e}"),
                    })?,
            )),
        };
        let shared = Arc::new(Shared {
            overcommit: pool.overcommit(),
            pool,
            tokens: config.tokens.clone(),
            lease: config.lease,
            chunk_bytes: config.chunk_bytes.max(1),
            stream_idle_timeout: config.stream_idle_timeout,
            accelerators: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            health: tonic_health::server::HealthReporter::new(),
            usage_log,
            metrics: ServerMetrics::new()?,
            connections: std::sync::OnceLock::new(),
        });
        tokio::spawn(reap(Arc::downgrade(&shared)));
        Ok(Service { shared })
    }

    /// The devices the service slices.
    pub fn pool(&self) -> &Pool<B> {
        &self.shared.pool
    }

    /// The Prometheus exposition text for the accelerators attached now.
    pub fn metrics(&self) -> Result<String> {
        let attached: Vec<Arc<Attached<B>>> =
            lock(&self.shared.accelerators).values().cloned().collect();
        let samples: Vec<super::metrics::Sample> = attached
            .iter()
            .map(|a| super::metrics::Sample {
                owner: a.owner.clone(),
                device: a.device,
                usage: a.accel.usage(),
            })
            .collect();
        let connections = self
            .shared
            .connections
            .get()
            .map_or(0, OpenConnections::get);
        self.shared
            .metrics
            .render(&samples, self.shared.pool.memory_in_use(), connections)
    }

    fn principal<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        match &self.shared.tokens {
            None => Ok(Principal::anonymous()),
            Some(tokens) => tokens.authenticate(req.metadata()).inspect_err(|s| {
                tracing::warn!(
                    peer = ?req.remote_addr(),
                    reason = s.message(),
                    "authentication failed"
                )
            }),
        }
    }

    /// The tier called `name`, if it exists and the caller may use it.
    fn tier_for(&self, who: &Principal, name: &str) -> Result<crate::accelerator::Tier, Status> {
        let tier = self.shared.pool.tiers().get(name).map_err(status)?.clone();
        if !who.may_attach(tier.name()) {
            return Err(Status::permission_denied(format!(
                "token {:?} may not use tier {}",
                who.name,
                tier.name()
            )));
        }
        Ok(tier)
    }

    /// The caller's accelerator `id` (renewing its lease). Another token's accelerator is
    /// NOT_FOUND with the same message as one that does not exist.
    fn get(&self, who: &Principal, id: u64) -> Result<Arc<Attached<B>>, Status> {
        let attached = lock(&self.shared.accelerators)
            .get(&id)
            .filter(|a| a.owner == who.name)
            .cloned()
            .ok_or_else(|| {
                // Draining, every accelerator goes: say so (retryable elsewhere), for any id.
                if self.shared.draining.load(Ordering::SeqCst) {
                    return Status::unavailable(format!(
                        "the server is draining (shutting down): no accelerator {id} here; attach on another server"
                    ));
                }
                Status::not_found(format!(
                    "no accelerator {id} for this token (never attached, detached, or its lease expired)"
                ))
            })?;
        *lock(&attached.last_seen) = Instant::now();
        Ok(attached)
    }
}

/// Detaches accelerators whose lease ran out, until the service is gone.
async fn reap<B: Backend + Clone + 'static>(shared: Weak<Shared<B>>) {
    loop {
        let period = match shared.upgrade() {
            Some(s) => (s.lease / 4).max(Duration::from_millis(10)),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(s) = shared.upgrade() else { return };
        let expired: Vec<Arc<Attached<B>>> = {
            let mut map = lock(&s.accelerators);
            let ids: Vec<u64> = map
                .iter()
                .filter(|(_, a)| lock(&a.last_seen).elapsed() > s.lease)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        for a in expired {
            tracing::warn!(
                accelerator = a.accel.id(),
                owner = %a.owner,
                lease_s = s.lease.as_secs_f64(),
                "lease expired: no call within the lease"
            );
            let _ = s.retire(&a, "lease expired");
        }
    }
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<proto::DownloadChunk, Status>> + Send>>;

#[tonic::async_trait]
impl<B: Backend + Clone + 'static> Accelerators for Service<B> {
    async fn server_live(
        &self,
        _: Request<proto::ServerLiveRequest>,
    ) -> Result<Response<proto::ServerLiveResponse>, Status> {
        let timer = self.shared.metrics.time("ServerLive");
        timer.finish(
            async move { Ok(Response::new(proto::ServerLiveResponse { live: true })) }.await,
        )
    }

    async fn server_ready(
        &self,
        _: Request<proto::ServerReadyRequest>,
    ) -> Result<Response<proto::ServerReadyResponse>, Status> {
        let timer = self.shared.metrics.time("ServerReady");
        timer.finish(
            async move {
                Ok(Response::new(proto::ServerReadyResponse {
                    ready: !self.shared.draining.load(Ordering::SeqCst),
                }))
            }
            .await,
        )
    }

    async fn tiers(
        &self,
        req: Request<proto::TiersRequest>,
    ) -> Result<Response<proto::TiersResponse>, Status> {
        let timer = self.shared.metrics.time("Tiers");
        timer.finish(
            async move {
                self.principal(&req)?;
                let tiers = self.shared.pool.tiers().iter().map(convert::tier).collect();
                Ok(Response::new(proto::TiersResponse { tiers }))
            }
            .await,
        )
    }

    async fn capacity(
        &self,
        req: Request<proto::CapacityRequest>,
    ) -> Result<Response<proto::CapacityResponse>, Status> {
        let timer = self.shared.metrics.time("Capacity");
        timer.finish(
            async move {
                let who = self.principal(&req)?;
                let held = lock(&self.shared.accelerators)
                    .values()
                    .filter(|a| a.owner == who.name)
                    .count();
                Ok(Response::new(super::capacity::report(
                    &self.shared.pool,
                    self.shared.draining.load(Ordering::SeqCst),
                    self.shared.overcommit,
                    &who,
                    held,
                )))
            }
            .await,
        )
    }

    async fn attach(
        &self,
        req: Request<proto::AttachRequest>,
    ) -> Result<Response<proto::AttachResponse>, Status> {
        let timer = self.shared.metrics.time("Attach");
        timer.finish(async move {
            let who = self.principal(&req)?;
            let mut map = lock(&self.shared.accelerators);
            // Checked under the map's lock: a drain sets the flag before it takes the map, so
            // an attach either lands in the map the drain empties or sees the flag.
            if self.shared.draining.load(Ordering::SeqCst) {
                return Err(Status::unavailable(
                    "the server is draining (shutting down): attach on another server",
                ));
            }
            let tier = self.tier_for(&who, &req.get_ref().tier)?;
            let held = map.values().filter(|a| a.owner == who.name).count();
            if held >= who.max_accelerators {
                tracing::info!(owner = %who.name, tier = tier.name(), held, "attach refused: token limit");
                return Err(Status::resource_exhausted(format!(
                    "token {:?} already holds {held} accelerators, its limit",
                    who.name
                )));
            }
            let (accel, device) = self
                .shared
                .pool
                .attach_for(&who.name, tier.clone())
                .inspect_err(|e| tracing::info!(owner = %who.name, tier = tier.name(), error = %e, "attach refused"))
                .map_err(status)?;
            let id = accel.id();
            tracing::info!(accelerator = id, owner = %who.name, tier = tier.name(), device, "attached");
            map.insert(
                id,
                Arc::new(Attached {
                    accel,
                    owner: who.name,
                    device,
                    tensors: Mutex::new(HashMap::new()),
                    last_seen: Mutex::new(Instant::now()),
                    calls: tokio::sync::Semaphore::new(CALLS_PER_ACCELERATOR),
                    gone: tokio::sync::watch::Sender::new(false),
                    drained: AtomicBool::new(false),
                }),
            );
            Ok(Response::new(proto::AttachResponse {
                accelerator: id,
                tier: Some(convert::tier(&tier)),
                lease_seconds: self.shared.lease.as_secs_f64(),
            }))
        }.await)
    }

    async fn resize(
        &self,
        req: Request<proto::ResizeRequest>,
    ) -> Result<Response<proto::ResizeResponse>, Status> {
        let timer = self.shared.metrics.time("Resize");
        timer.finish(async move {
            let who = self.principal(&req)?;
            let a = self.get(&who, req.get_ref().accelerator)?;
            let tier = self.tier_for(&who, &req.get_ref().tier)?;
            // On its own device, for life: a tier that does not fit there is refused (nothing
            // changes), never moved to another device.
            a.accel
                .resize_tier(tier.clone())
                .inspect_err(|e| tracing::info!(accelerator = a.accel.id(), owner = %a.owner, tier = tier.name(), device = a.device, error = %e, "resize refused"))
                .map_err(status)?;
            tracing::info!(accelerator = a.accel.id(), owner = %a.owner, tier = tier.name(), device = a.device, "resized");
            Ok(Response::new(proto::ResizeResponse {
                tier: Some(convert::tier(&tier)),
            }))
        }.await)
    }

    async fn detach(
        &self,
        req: Request<proto::DetachRequest>,
    ) -> Result<Response<proto::DetachResponse>, Status> {
        let timer = self.shared.metrics.time("Detach");
        timer.finish(
            async move {
                let who = self.principal(&req)?;
                let id = req.get_ref().accelerator;
                let a = self.get(&who, id)?;
                lock(&self.shared.accelerators).remove(&id);
                let usage = self.shared.retire(&a, "client detached")?;
                Ok(Response::new(proto::DetachResponse {
                    usage: Some(convert::usage(&usage)),
                }))
            }
            .await,
        )
    }

    async fn heartbeat(
        &self,
        req: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let timer = self.shared.metrics.time("Heartbeat");
        timer.finish(
            async move {
                let who = self.principal(&req)?;
                self.get(&who, req.get_ref().accelerator)?;
                Ok(Response::new(proto::HeartbeatResponse {}))
            }
            .await,
        )
    }

    async fn usage(
        &self,
        req: Request<proto::UsageRequest>,
    ) -> Result<Response<proto::UsageResponse>, Status> {
        let timer = self.shared.metrics.time("Usage");
        timer.finish(
            async move {
                let who = self.principal(&req)?;
                let a = self.get(&who, req.get_ref().accelerator)?;
                Ok(Response::new(proto::UsageResponse {
                    usage: Some(convert::usage(&a.accel.usage())),
                }))
            }
            .await,
        )
    }

    async fn alloc(
        &self,
        req: Request<proto::AllocRequest>,
    ) -> Result<Response<proto::AllocResponse>, Status> {
        let timer = self.shared.metrics.time("Alloc");
        timer.finish(
            async move {
                let who = self.principal(&req)?;
                let a = self.get(&who, req.get_ref().accelerator)?;
                let descs = req
                    .get_ref()
                    .tensors
                    .iter()
                    .map(|m| convert::desc(Some(m)))
                    .collect::<Result<Vec<_>, _>>()?;
                let tensors = a
                    .blocking(
                        move |a| {
                            // All or nothing: those made before a failure are dropped (freed).
                            let made = descs
                                .iter()
                                .map(|d| a.accel.alloc(d))
                                .collect::<Result<Vec<_>>>()
                                .map_err(status)?;
                            Ok(made.into_iter().map(|t| a.insert(t)).collect())
                        },
                        Vec::clone,
                    )
                    .await?;
                Ok(Response::new(proto::AllocResponse { tensors }))
            }
            .await,
        )
    }

    async fn free(
        &self,
        req: Request<proto::FreeRequest>,
    ) -> Result<Response<proto::FreeResponse>, Status> {
        let timer = self.shared.metrics.time("Free");
        timer.finish(
            async move {
                let who = self.principal(&req)?;
                let a = self.get(&who, req.get_ref().accelerator)?;
                free(&a, &req.get_ref().tensors)?;
                Ok(Response::new(proto::FreeResponse {}))
            }
            .await,
        )
    }

    async fn upload(
        &self,
        req: Request<Streaming<proto::UploadChunk>>,
    ) -> Result<Response<proto::UploadResponse>, Status> {
        let timer = self.shared.metrics.time("Upload");
        timer.finish(async move {
            let who = self.principal(&req)?;
            let mut stream = req.into_inner();
            let first = stream
                .message()
                .await?
                .ok_or_else(|| invalid("an upload needs at least one message"))?;
            let header = first
                .header
                .ok_or_else(|| invalid("the first upload message must carry the header"))?;
            let a = self.get(&who, header.accelerator)?;
            let desc = convert::desc(header.meta.as_ref())?;
            let want = desc.bytes();
            // The quota is reserved before anything more is read (refused if it cannot fit), and
            // counted as in use until the tensor exists or the upload fails.
            let reservation = a.accel.reserve(&desc).map_err(status)?;
            let mut gone = a.gone.subscribe();
            // Chunks land once, in the tensor's final buffer, which the backend then keeps.
            let mut data = Assembly::new(desc).ok_or_else(|| {
                Status::resource_exhausted(format!("upload: the host cannot hold {want} more bytes"))
            })?;
            let mut chunk = first.data;
            loop {
                if !data.push(&chunk) {
                    return Err(invalid(format!(
                        "upload: more than the {want} bytes a {} {:?} tensor holds",
                        data.desc().dtype(),
                        data.desc().shape()
                    )));
                }
                let idle = self.shared.stream_idle_timeout;
                let next = tokio::select! {
                    next = tokio::time::timeout(idle, stream.message()) => next.map_err(|_| {
                        Status::deadline_exceeded(format!(
                            "upload: no data for {:.0} s; the upload was ended and its memory freed",
                            idle.as_secs_f64()
                        ))
                    })??,
                    _ = gone.wait_for(|gone| *gone) => {
                        return Err(a.unless_drained(Status::not_found(format!(
                            "upload: accelerator {} was detached while the upload arrived",
                            header.accelerator
                        ))))
                    }
                };
                match next {
                    Some(next) if next.header.is_some() => {
                        return Err(invalid("upload: only the first message carries a header"))
                    }
                    Some(next) => chunk = next.data,
                    None => break,
                }
            }
            let host = data.finish().map_err(status)?;
            let tensor = a
                .blocking(move |a| {
                    let t = a.accel.upload_reserved(reservation, host).map_err(status)?;
                    Ok(a.insert(t))
                }, |t| vec![*t])
                .await?;
            Ok(Response::new(proto::UploadResponse { tensor }))
        }.await)
    }

    type DownloadStream = DownloadStream;

    async fn download(
        &self,
        req: Request<proto::DownloadRequest>,
    ) -> Result<Response<DownloadStream>, Status> {
        let timer = self.shared.metrics.time("Download");
        timer.finish(
            async move {
                let who = self.principal(&req)?;
                let (id, tensor) = (req.get_ref().accelerator, req.get_ref().tensor);
                let a = self.get(&who, id)?;
                let t = a.tensor(tensor)?;
                let host = a
                    .blocking(
                        move |a| a.accel.download(&read(&t)).map_err(status),
                        |_| Vec::new(),
                    )
                    .await?;
                // Every chunk is a slice of the downloaded tensor's own buffer (no copy per chunk).
                let mut meta = Some(convert::meta(host.desc()));
                let bytes = chunks::host_bytes(host.into_storage());
                let chunks = chunks::split(bytes, self.shared.chunk_bytes).map(move |data| {
                    Ok(proto::DownloadChunk {
                        meta: meta.take(),
                        data,
                    })
                });
                let stream: DownloadStream = Box::pin(tokio_stream::iter(chunks));
                Ok(Response::new(stream))
            }
            .await,
        )
    }

    async fn run(
        &self,
        req: Request<proto::RunRequest>,
    ) -> Result<Response<proto::RunResponse>, Status> {
        let timer = self.shared.metrics.time("Run");
        timer.finish(
            async move {
                let who = self.principal(&req)?;
                let a = self.get(&who, req.get_ref().accelerator)?;
                let program = req.into_inner();
                let response = a
                    .blocking(
                        move |a| run_program(a, program),
                        |r| r.outputs.iter().map(|o| o.tensor).collect(),
                    )
                    .await?;
                Ok(Response::new(response))
            }
            .await,
        )
    }
}

/// Frees tensors, all or none. Storage a running program still uses is freed when it ends.
fn free<B: Backend + Clone + 'static>(a: &Attached<B>, ids: &[u64]) -> Result<(), Status> {
    let freed: Vec<Held> = {
        let mut tensors = lock(&a.tensors);
        if let Some(missing) = ids.iter().find(|id| !tensors.contains_key(id)) {
            return Err(not_found(a.accel.id(), *missing));
        }
        ids.iter().filter_map(|id| tensors.remove(id)).collect()
    };
    drop(freed);
    Ok(())
}

/// A tensor a program holds for its whole run: written (an op's output, a write) or only read.
enum Use<'a> {
    Read(std::sync::RwLockReadGuard<'a, Tensor<Buffer>>),
    Write(std::sync::RwLockWriteGuard<'a, Tensor<Buffer>>),
}

/// A tensor of a running program, by reference (its [`Use`] guard stays with the caller).
enum View<'a> {
    Read(&'a Tensor<Buffer>),
    Write(&'a mut Tensor<Buffer>),
}

impl View<'_> {
    fn tensor(&self) -> &Tensor<Buffer> {
        match self {
            View::Read(t) => t,
            View::Write(t) => t,
        }
    }
}

impl std::ops::Deref for Use<'_> {
    type Target = Tensor<Buffer>;
    fn deref(&self) -> &Tensor<Buffer> {
        match self {
            Use::Read(t) => t,
            Use::Write(t) => t,
        }
    }
}

/// A tensor a program's op takes or the program reads: one the accelerator holds, or the output
/// the server allocates for an earlier op (by its index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Tensor(u64),
    Output(usize),
}

/// The sources given as `handles` or as `operands` (the fields called `fields`), not both.
fn sources(
    handles: &[u64],
    operands: &[proto::Operand],
    fields: [&str; 2],
) -> Result<Vec<Source>, Status> {
    use proto::operand::Source as Wire;
    if operands.is_empty() {
        return Ok(handles.iter().map(|&t| Source::Tensor(t)).collect());
    }
    if !handles.is_empty() {
        let [h, o] = fields;
        return Err(invalid(format!("both {h} and {o} given: give one of them")));
    }
    operands
        .iter()
        .enumerate()
        .map(|(k, o)| match o.source {
            Some(Wire::Tensor(t)) => Ok(Source::Tensor(t)),
            Some(Wire::Op(j)) => Ok(Source::Output(j as usize)),
            None => Err(invalid(format!(
                "{}[{k}] names neither a tensor nor an op",
                fields[1]
            ))),
        })
        .collect()
}

/// Every tensor handle a program names (frees, writes, inputs, outputs, reads).
fn named(program: &proto::RunRequest) -> Vec<u64> {
    let handles = |operands: &[proto::Operand]| -> Vec<u64> {
        operands
            .iter()
            .filter_map(|o| match o.source {
                Some(proto::operand::Source::Tensor(t)) => Some(t),
                _ => None,
            })
            .collect()
    };
    let mut named: Vec<u64> = program.free.clone();
    named.extend(program.writes.iter().map(|w| w.tensor));
    for op in &program.ops {
        named.extend(&op.inputs);
        named.extend(handles(&op.operands));
        named.extend(op.output);
    }
    named.extend(&program.reads);
    named.extend(handles(&program.read_operands));
    named
}

/// A program's op, checked against the tensors it names.
struct Checked {
    op: Op,
    inputs: Vec<Source>,
    /// The output's handle, or its descriptor where the server allocates it.
    output: Result<u64, TensorDesc>,
}

/// A program checked whole: its ops and what it reads.
struct CheckedProgram {
    ops: Vec<Checked>,
    reads: Vec<Source>,
}

/// Adds the op's index and name (once decoded) to a refusal.
fn in_op(i: usize, name: Option<&'static str>) -> impl Fn(Status) -> Status {
    move |s: Status| {
        let name = name.map_or(String::new(), |n| format!(" ({n})"));
        Status::new(s.code(), format!("op {i}{name}: {}", s.message()))
    }
}

/// The descriptor of the output the server allocates for op `j`, named by `what` (an operand
/// of the op after `earlier`, or a read once `earlier` is every op); a program has `total` ops.
fn earlier_output(
    earlier: &[Checked],
    total: usize,
    j: usize,
    what: &str,
) -> Result<TensorDesc, Status> {
    let refuse = |why: String| Err(invalid(format!("{what} names op {j}{why}")));
    match earlier.get(j).map(|c| &c.output) {
        Some(Err(desc)) => Ok(desc.clone()),
        Some(Ok(t)) => refuse(format!(
            ", whose output is the given tensor {t}, not one the server allocates: name tensor {t}"
        )),
        None if j == earlier.len() && j < total => {
            refuse(", the op itself: an op takes only the outputs of earlier ops".into())
        }
        None if j < total => {
            refuse(", a later op: an op takes only the outputs of earlier ops".into())
        }
        None => refuse(format!(", but the program has {total} ops")),
    }
}

/// Checks a whole program before anything runs: the frees, every write (handle and byte
/// length), every op (decoded, its inputs — tensors, or earlier ops' allocated outputs —
/// resolved, planned against their descriptors, its output's checked) and every read. Tensors
/// the program frees cannot be named by the rest of it. `desc_of` gives the descriptor of each
/// tensor the accelerator holds.
fn check_program(
    accelerator: u64,
    desc_of: impl Fn(u64) -> Option<TensorDesc>,
    program: &proto::RunRequest,
) -> Result<CheckedProgram, Status> {
    let desc = |id: u64| match desc_of(id) {
        Some(d) if !program.free.contains(&id) => Ok(d),
        _ => Err(not_found(accelerator, id)),
    };
    for id in &program.free {
        desc_of(*id).ok_or_else(|| not_found(accelerator, *id))?;
    }
    for w in &program.writes {
        let d = desc(w.tensor)?;
        if w.data.len() != d.bytes() {
            return Err(status(Error::ByteLength {
                dtype: d.dtype(),
                shape: d.shape().to_vec(),
                expected: d.bytes(),
                got: w.data.len(),
            }));
        }
    }
    let total = program.ops.len();
    let mut ops: Vec<Checked> = Vec::with_capacity(total);
    for (i, wire) in program.ops.iter().enumerate() {
        let op = convert::op_from(wire.kind.as_ref()).map_err(in_op(i, None))?;
        let context = in_op(i, Some(op.name()));
        let inputs =
            sources(&wire.inputs, &wire.operands, ["inputs", "operands"]).map_err(&context)?;
        if let Some(y) = wire.output.filter(|y| inputs.contains(&Source::Tensor(*y))) {
            return Err(context(invalid(format!(
                "tensor {y} is both an input and the output"
            ))));
        }
        let descs = inputs
            .iter()
            .enumerate()
            .map(|(k, s)| match *s {
                Source::Tensor(t) => desc(t),
                Source::Output(j) => earlier_output(&ops, total, j, &format!("operand {k}")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(&context)?;
        let plan = op
            .plan(&descs.iter().collect::<Vec<_>>())
            .map_err(|e| context(status(e)))?;
        let output = match wire.output {
            Some(y) => {
                let got = desc(y).map_err(&context)?;
                check_output(op.name(), plan.output(), &got).map_err(|e| context(status(e)))?;
                Ok(y)
            }
            None => Err(plan.output().clone()),
        };
        ops.push(Checked { op, inputs, output });
    }
    let reads = sources(
        &program.reads,
        &program.read_operands,
        ["reads", "read_operands"],
    )?;
    for (k, s) in reads.iter().enumerate() {
        match *s {
            Source::Tensor(t) => {
                desc(t)?;
            }
            Source::Output(j) => {
                earlier_output(&ops, total, j, &format!("read {k}"))?;
            }
        }
    }
    Ok(CheckedProgram { ops, reads })
}

/// A checked program's tensors by handle: each op's inputs and output, and the reads.
struct Resolved {
    inputs: Vec<Vec<u64>>,
    outputs: Vec<u64>,
    reads: Vec<u64>,
}

/// Runs a program: checks it whole ([`check_program`]; a program refused there changes nothing,
/// allocates nothing and charges nothing), then frees, allocates the outputs the server is
/// asked for (all or none, against the memory quota, before any op runs), writes, runs the ops
/// in order and reads. Every output it allocates is returned, read or not: the client holds a
/// handle for each and frees the ones it does not keep with its next call. Every tensor it uses
/// is locked for the whole program, in id order, so concurrent programs of one accelerator
/// cannot deadlock; nothing else waits on those locks but this accelerator's own calls, and the
/// handle table is locked only to look tensors up. An error while running names the op that
/// failed; the ops before it have run, and the outputs the server allocated are freed.
fn run_program<B: Backend + Clone + 'static>(
    a: &Attached<B>,
    program: proto::RunRequest,
) -> Result<proto::RunResponse, Status> {
    let accel = &a.accel;
    let id = accel.id();
    // Every tensor the program names, looked up once.
    let found: HashMap<u64, Held> = {
        let tensors = lock(&a.tensors);
        named(&program)
            .iter()
            .filter_map(|t| tensors.get(t).map(|h| (*t, Arc::clone(h))))
            .collect()
    };
    let checked = check_program(
        id,
        |t| found.get(&t).map(|h| read(h).desc().clone()),
        &program,
    )?;
    drop(found);
    free(a, &program.free)?;
    // The outputs the server allocates, all or none (a failure drops those made so far).
    let mut made = Vec::new();
    for (i, op) in checked.ops.iter().enumerate() {
        if let Err(desc) = &op.output {
            made.push(
                accel
                    .alloc(desc)
                    .map_err(|e| in_op(i, Some(op.op.name()))(status(e)))?,
            );
        }
    }
    let mut made = made.into_iter();
    let (mut handles, mut outputs) = (Vec::new(), Vec::new());
    for (i, op) in checked.ops.iter().enumerate() {
        match &op.output {
            Ok(y) => handles.push(*y),
            Err(desc) => {
                let y = a.insert(made.next().expect("one made per allocated output"));
                handles.push(y);
                outputs.push(proto::AllocatedOutput {
                    op: i as u32,
                    tensor: y,
                    meta: Some(convert::meta(desc)),
                });
            }
        }
    }
    let handle = |s: &Source| match *s {
        Source::Tensor(t) => t,
        Source::Output(j) => handles[j],
    };
    let resolved = Resolved {
        inputs: checked
            .ops
            .iter()
            .map(|op| op.inputs.iter().map(handle).collect())
            .collect(),
        reads: checked.reads.iter().map(handle).collect(),
        outputs: handles,
    };
    match run_checked(a, &program, &checked.ops, &resolved) {
        Ok(reads) => {
            let (read_meta, reads) = reads.into_iter().unzip();
            Ok(proto::RunResponse {
                reads,
                read_meta,
                outputs,
            })
        }
        Err(e) => {
            let mut tensors = lock(&a.tensors);
            for o in &outputs {
                tensors.remove(&o.tensor);
            }
            Err(e)
        }
    }
}

/// The writes, ops and reads of a checked program (its tensors by handle), under its tensors'
/// locks.
fn run_checked<B: Backend + Clone + 'static>(
    a: &Attached<B>,
    program: &proto::RunRequest,
    ops: &[Checked],
    tensors_of: &Resolved,
) -> Result<Vec<(proto::TensorMeta, Bytes)>, Status> {
    let (accel, writes) = (&a.accel, &program.writes);
    let id = accel.id();
    // Which tensors it writes (writes, outputs) and which it only reads, in id order.
    let mut written: BTreeMap<u64, bool> = BTreeMap::new();
    for w in writes {
        written.insert(w.tensor, true);
    }
    for (inputs, &y) in tensors_of.inputs.iter().zip(&tensors_of.outputs) {
        for t in inputs {
            written.entry(*t).or_insert(false);
        }
        written.insert(y, true);
    }
    for t in &tensors_of.reads {
        written.entry(*t).or_insert(false);
    }
    let held: Vec<(u64, Held)> = written
        .keys()
        .map(|&t| Ok((t, a.tensor(t)?)))
        .collect::<Result<_, Status>>()?;
    let mut tensors: BTreeMap<u64, Use> = held
        .iter()
        .map(|(t, h)| {
            let guard = if written[t] {
                Use::Write(write(h))
            } else {
                Use::Read(read(h))
            };
            (*t, guard)
        })
        .collect();
    for w in writes {
        let Some(Use::Write(t)) = tensors.get_mut(&w.tensor) else {
            return Err(not_found(id, w.tensor));
        };
        let host = HostTensor::from_bytes(t.dtype(), t.shape(), &w.data).map_err(status)?;
        accel.write(t, &host).map_err(status)?;
    }
    // The guards stay on this thread; the ops take their tensors by reference.
    let mut views: BTreeMap<u64, View> = tensors
        .iter_mut()
        .map(|(&t, u)| {
            let view = match u {
                Use::Read(g) => View::Read(g),
                Use::Write(g) => View::Write(g),
            };
            (t, view)
        })
        .collect();
    // A scratch program's outputs go into storage the program is done with (`backend::reuse`):
    // `place[i]` is the tensor (by its index in `ids`) whose storage op `i` writes; and they
    // may stay in the device backend's own layout where only its ops read them
    // (`Backend::blocked_outputs`).
    let ids: Vec<u64> = views.keys().copied().collect();
    let table = program
        .scratch
        .then(|| Indexed::of(&ids, writes, ops, tensors_of));
    let (place, mut swaps) = match &table {
        Some(table) if accel.lends_storage() => {
            let home: Vec<_> = ids
                .iter()
                .map(|t| {
                    let desc = views[t].tensor().desc();
                    Some((desc.dtype(), desc.len()))
                })
                .collect();
            let place = reuse::placement(&table.steps, &home, &table.reads, &table.inputs);
            (Some(place), Some(reuse::Swaps::new(&home)))
        }
        _ => (None, None),
    };
    let blocked = table.map_or_else(
        || vec![false; ops.len()],
        |table| {
            let descs: Vec<_> = ids.iter().map(|t| Some(views[t].tensor().desc())).collect();
            accel.blocked_outputs(&table.steps, &descs, &table.reads)
        },
    );
    // Op `i`, at once or not at all (`now`: `Ok(false)` where it would wait), or waiting.
    let step = |i: usize,
                views: &mut BTreeMap<u64, View>,
                swaps: &mut Option<reuse::Swaps>,
                now: bool|
     -> Result<bool, Status> {
        let (op, inputs, y) = (&ops[i], &tensors_of.inputs[i], tensors_of.outputs[i]);
        let context = in_op(i, Some(op.op.name()));
        if let (Some(swaps), Some(place)) = (swaps.as_mut(), place.as_ref()) {
            let (e, s) = (position(&ids, y), place[i]);
            let mut lent = Lent {
                accel,
                ids: &ids,
                views,
            };
            swaps
                .give(&mut lent, e, s)
                .map_err(|e| context(status(e)))?;
        }
        let Some(View::Write(out)) = views.remove(&y) else {
            return Err(context(not_found(id, y)));
        };
        if blocked[i] {
            accel.want_blocked(out.storage_mut());
        }
        let result = inputs
            .iter()
            .map(|t| {
                views
                    .get(t)
                    .map(View::tensor)
                    .ok_or_else(|| not_found(id, *t))
            })
            .collect::<Result<Vec<_>, _>>()
            .and_then(|x| {
                if now {
                    accel.apply_into_now(&op.op, &x, out)
                } else {
                    accel.apply_into(&op.op, &x, out).map(|()| true)
                }
                .map_err(status)
            });
        views.insert(y, View::Write(out));
        result.map_err(context)
    };
    // The ops run on the device backend's pool while the device is free for them, as a local
    // model's do (`Backend::run_ops`: no hand-over to the pool per op, its threads awake between
    // ops). An op that would wait — on the meter, or for another tenant's op — waits here, off
    // the pool, where waiting holds up no one else's work; the ops after it go back to the pool.
    let run = |views: &mut BTreeMap<u64, View>, swaps: &mut Option<reuse::Swaps>| {
        let mut next = 0;
        while next < ops.len() {
            next = accel.run_ops(|| {
                let mut i = next;
                while i < ops.len() && step(i, views, swaps, true)? {
                    i += 1;
                }
                Ok::<_, Status>(i)
            })?;
            if next < ops.len() {
                step(next, views, swaps, false)?;
                next += 1;
            }
        }
        Ok::<_, Status>(())
    };
    let ran = run(&mut views, &mut swaps);
    // Every storage back with its own tensor, whatever happened.
    let restored = swaps.as_mut().map_or(Ok(()), |swaps| {
        swaps.restore(&mut Lent {
            accel,
            ids: &ids,
            views: &mut views,
        })
    });
    ran?;
    restored.map_err(status)?;
    drop(views);
    tensors_of
        .reads
        .iter()
        .map(|t| {
            let tensor = tensors.get(t).ok_or_else(|| not_found(id, *t))?;
            let host = accel.download(tensor).map_err(status)?;
            Ok((
                convert::meta(host.desc()),
                chunks::host_bytes(host.into_storage()),
            ))
        })
        .collect()
}

/// A checked program as [`Step`]s over a table of its tensors (`ids`, sorted), for the
/// decisions a scratch program leaves to the backend ([`reuse::placement`],
/// [`Backend::blocked_outputs`]).
struct Indexed {
    steps: Vec<Step>,
    /// The tensors it reads back: the only ones it must leave as they are.
    reads: Vec<usize>,
    /// The tensors `writes` fills: its inputs.
    inputs: Vec<usize>,
}

impl Indexed {
    fn of(
        ids: &[u64],
        writes: &[proto::TensorWrite],
        ops: &[Checked],
        tensors_of: &Resolved,
    ) -> Self {
        let steps = ops
            .iter()
            .zip(&tensors_of.inputs)
            .zip(&tensors_of.outputs)
            .map(|((op, inputs), &y)| Step {
                op: op.op.clone(),
                inputs: inputs.iter().map(|&t| position(ids, t)).collect(),
                output: position(ids, y),
            })
            .collect();
        Indexed {
            steps,
            reads: tensors_of.reads.iter().map(|&t| position(ids, t)).collect(),
            inputs: writes.iter().map(|w| position(ids, w.tensor)).collect(),
        }
    }
}

/// The index of tensor `t` in the program's sorted tensor ids.
fn position(ids: &[u64], t: u64) -> usize {
    ids.binary_search(&t)
        .expect("every tensor of a program is one of its ids")
}

/// A running program's tensors as a [`reuse::Lend`]: storage moves between the handles it
/// writes, each buffer's length set by the accelerator.
struct Lent<'v, 'a, B: Backend> {
    accel: &'v Accelerator<B>,
    ids: &'v [u64],
    views: &'v mut BTreeMap<u64, View<'a>>,
}

impl<B: Backend + Clone + 'static> Lent<'_, '_, B> {
    fn written(&mut self, e: usize) -> Result<&mut Tensor<Buffer>> {
        match self.views.get_mut(&self.ids[e]) {
            Some(View::Write(t)) => Ok(t),
            _ => Err(Error::Backend {
                backend: "server",
                msg: format!("tensor {} is not written by the program", self.ids[e]),
            }),
        }
    }
}

impl<B: Backend + Clone + 'static> reuse::Lend for Lent<'_, '_, B> {
    fn swap(&mut self, a: usize, b: usize) -> Result<()> {
        let (lo, hi) = (self.ids[a.min(b)], self.ids[a.max(b)]);
        let mut range = self.views.range_mut(lo..=hi);
        match (range.next(), range.next_back()) {
            (Some((_, View::Write(x))), Some((_, View::Write(y)))) => {
                std::mem::swap(x.storage_mut(), y.storage_mut());
                Ok(())
            }
            _ => Err(Error::Backend {
                backend: "server",
                msg: format!("tensors {lo} and {hi} are not both written by the program"),
            }),
        }
    }

    fn want(&self, e: usize) -> usize {
        self.views[&self.ids[e]].tensor().desc().len()
    }

    fn set_len(&mut self, e: usize, len: usize, home: usize) -> Result<()> {
        let accel = self.accel;
        accel.set_len(self.written(e)?.storage_mut(), home, len)
    }
}

/// A running server: its address; dropping it (or [`ServerHandle::shutdown`]) stops it.
pub struct ServerHandle {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    devices: Vec<Load>,
    /// Starts the drain (with its timeout) that ends the server.
    stop: Option<tokio::sync::oneshot::Sender<Duration>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl ServerHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the metrics endpoint, if one was configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Each device's index, model and capacity (configured or calibrated at start), as it
    /// was when the server started.
    pub fn devices(&self) -> &[Load] {
        &self.devices
    }

    /// The URL a client connects to (`http://` or `https://` with TLS).
    pub fn url(&self, tls: bool) -> String {
        format!("{}://{}", if tls { "https" } else { "http" }, self.addr)
    }

    /// Stops the server at once (a drain with no wait: calls in flight end with UNAVAILABLE)
    /// and waits for it.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_and_join(Duration::ZERO)
    }

    /// Drains the server — attaches refused, readiness false, calls in flight given up to
    /// `timeout` to finish, then every accelerator detached and its usage recorded — and
    /// waits for it to stop.
    pub fn drain(mut self, timeout: Duration) -> Result<()> {
        self.stop_and_join(timeout)
    }

    fn stop_and_join(&mut self, drain: Duration) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(drain);
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| Error::Network("the server thread panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop_and_join(Duration::ZERO);
    }
}

/// Starts a server of one device (`backend` sliced as `config.device` says, its capacity
/// calibrated first if none is configured) on `addr` (e.g. `127.0.0.1:0` for any free port) in
/// a thread with its own runtime and returns once it listens.
pub fn spawn<B: Backend + Clone + 'static>(
    addr: SocketAddr,
    backend: B,
    config: ServerConfig,
) -> Result<ServerHandle> {
    let device = Device::new(backend, config.device.clone())?;
    spawn_pool(addr, Pool::new(vec![device])?, config)
}

/// Starts a server of several devices (attaches are placed as [`crate::accelerator::pool`]
/// says; `config.device` is not used, each device has its own), like [`spawn`].
pub fn spawn_pool<B: Backend + Clone + 'static>(
    addr: SocketAddr,
    pool: Pool<B>,
    config: ServerConfig,
) -> Result<ServerHandle> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Duration>();
    let thread = std::thread::Builder::new()
        .name("eia-server".into())
        .spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("eia-server-rt")
                .build()
                .map_err(|e| Error::Network(format!("cannot start the runtime: {e}")))?;
            let served = runtime.block_on(async move {
                let started = async {
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|e| Error::Network(format!("cannot listen on {addr}: {e}")))?;
                    let local = listener
                        .local_addr()
                        .map_err(|e| Error::Network(e.to_string()))?;
                    let service = Service::new(pool, &config)?;
                    let metrics = match config.metrics {
                        Some(at) => Some(
                            serve_metrics(
                                at,
                                Service {
                                    shared: Arc::clone(&service.shared),
                                },
                            )
                            .await?,
                        ),
                        None => None,
                    };
                    let devices = service.pool().loads();
                    Ok::<_, Error>((listener, (local, metrics, devices), service))
                }
                .await;
                let (listener, local, service) = match started {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let _ = ready_tx.send(Ok(local));
                let shared = Arc::clone(&service.shared);
                serve(listener, service, &config, async move {
                    let drain = stop_rx.await.unwrap_or(Duration::ZERO);
                    shared.drain(drain).await;
                })
                .await
            });
            // Blocking threads still sleeping on a meter hold nothing: do not wait for them.
            runtime.shutdown_timeout(Duration::from_millis(100));
            served
        })
        .map_err(|e| Error::Network(format!("cannot start the server thread: {e}")))?;
    let (addr, metrics_addr, devices) = ready_rx
        .recv()
        .map_err(|_| Error::Network("the server thread stopped before listening".into()))??;
    Ok(ServerHandle {
        addr,
        metrics_addr,
        devices,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Serves `GET /metrics` for `service` on `at` (in the background); returns the bound address.
async fn serve_metrics<B: Backend + Clone + 'static>(
    at: SocketAddr,
    service: Service<B>,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .map_err(|e| Error::Network(format!("cannot listen for metrics on {at}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Network(e.to_string()))?;
    let service = Arc::new(service);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let service = Arc::clone(&service);
            async move {
                match service.metrics() {
                    Ok(text) => (axum::http::StatusCode::OK, text),
                    Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(local)
}

/// Serves `service` on `listener` until `shutdown` completes.
pub async fn serve<B: Backend + Clone + 'static>(
    listener: tokio::net::TcpListener,
    service: Service<B>,
    config: &ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let health = service.shared.health.clone();
    let incoming = listener::incoming(listener, config.connections);
    let _ = service.shared.connections.set(incoming.open());
    let grpc = proto::accelerators_server::AcceleratorsServer::new(service)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    // Large HTTP/2 windows: a tensor upload is not held to one 64 KiB window per round trip.
    health
        .set_serving::<proto::accelerators_server::AcceleratorsServer<Service<B>>>()
        .await;
    let health = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(health),
    );
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(WINDOW_BYTES))
        .initial_connection_window_size(Some(2 * WINDOW_BYTES))
        // Dead peers are noticed (HTTP/2 pings; TCP keepalive is set by the listener), and the
        // pings keep live ones from looking idle; one connection cannot open unbounded
        // streams. Calls honour the client's `grpc-timeout`.
        .http2_keepalive_interval(Some(config.connections.keepalive_interval()))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(config.max_streams_per_connection));
    if let Some((cert, key)) = &config.tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| Error::Network(format!("TLS certificate or key: {e}")))?;
    }
    // Once `shutdown` (the drain) is over, the graceful close waits for the streams still open
    // — but a client's `grpc.health.v1` Watch never ends by itself, and would hold the server
    // (and `eia serve`'s exit) open for as long as that client likes. Streams left
    // `AFTER_DRAIN` after the drain are cut.
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        shutdown.await;
        let _ = drained_tx.send(());
    };
    let serving = builder
        .add_service(grpc)
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, shutdown);
    let to_error = |e: tonic::transport::Error| Error::Network(format!("server: {e}"));
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => return served.map_err(to_error),
        Ok(()) = drained_rx => {}
    }
    match tokio::time::timeout(AFTER_DRAIN, &mut serving).await {
        Ok(served) => served.map_err(to_error),
        Err(_) => {
            tracing::info!("streams still open after the drain (health watches) cut");
            Ok(())
        }
    }
}

/// How long streams still open after a drain (a client's health Watch) are given to close.
const AFTER_DRAIN: Duration = Duration::from_secs(1);
