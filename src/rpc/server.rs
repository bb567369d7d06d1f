//! `eia serve`: the gRPC service over a device's virtual accelerators.
//!
//! Each attached accelerator belongs to the token that attached it and keeps its tensors in a
//! handle table; ops and transfers run on blocking threads (the meter sleeps, the CPU backend
//! computes) so the async runtime keeps serving other tenants. A reaper detaches accelerators
//! whose lease ran out (no call for `lease`), freeing all their memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{Principal, Tokens};
use super::chunks::{self, Assembly};
use super::convert::{self, invalid, status};
use super::proto::{self, accelerators_server::Accelerators};
use crate::accelerator::{Accelerator, Buffer, Device, DeviceConfig};
use crate::backend::{check_output, Backend};
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::{HostTensor, Tensor, TensorDesc};

/// HTTP/2 flow-control window per stream (server and client).
pub const WINDOW_BYTES: u32 = 8 << 20;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The device's tiers, capacity, overcommit and meter burst.
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
        }
    }
}

/// The gRPC service (generic over the device's backend).
pub struct Service<B: Backend> {
    shared: Arc<Shared<B>>,
}

struct Shared<B: Backend> {
    device: Device<B>,
    tokens: Option<Tokens>,
    lease: Duration,
    chunk_bytes: usize,
    accelerators: Mutex<HashMap<u64, Arc<Attached<B>>>>,
}

/// One attached accelerator and its tensors.
struct Attached<B: Backend> {
    accel: Accelerator<B>,
    owner: String,
    tensors: Mutex<HashMap<u64, Tensor<Buffer>>>,
    next_tensor: AtomicU64,
    last_seen: Mutex<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<B: Backend + Clone + 'static> Attached<B> {
    fn insert(&self, t: Tensor<Buffer>) -> u64 {
        let id = self.new_id();
        lock(&self.tensors).insert(id, t);
        id
    }

    /// A handle for a new tensor.
    fn new_id(&self) -> u64 {
        self.next_tensor.fetch_add(1, Ordering::Relaxed)
    }
}

fn not_found(accelerator: u64, tensor: u64) -> Status {
    Status::not_found(format!(
        "accelerator {accelerator} has no tensor {tensor} (never allocated, or freed)"
    ))
}

impl<B: Backend + Clone + 'static> Service<B> {
    /// A service over a new device on `backend`, with its lease reaper running on the current
    /// tokio runtime.
    pub fn new(backend: B, config: &ServerConfig) -> Result<Self> {
        let shared = Arc::new(Shared {
            device: Device::new(backend, config.device.clone())?,
            tokens: config.tokens.clone(),
            lease: config.lease,
            chunk_bytes: config.chunk_bytes.max(1),
            accelerators: Mutex::new(HashMap::new()),
        });
        tokio::spawn(reap(Arc::downgrade(&shared)));
        Ok(Service { shared })
    }

    /// The device the service slices.
    pub fn device(&self) -> &Device<B> {
        &self.shared.device
    }

    /// The Prometheus exposition text for the accelerators attached now.
    pub fn metrics(&self) -> Result<String> {
        let attached: Vec<Arc<Attached<B>>> =
            lock(&self.shared.accelerators).values().cloned().collect();
        let samples: Vec<super::metrics::Sample> = attached
            .iter()
            .map(|a| super::metrics::Sample {
                owner: a.owner.clone(),
                usage: a.accel.usage(),
            })
            .collect();
        super::metrics::render(&samples, self.shared.device.memory_in_use())
    }

    fn principal<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        match &self.shared.tokens {
            None => Ok(Principal::anonymous()),
            Some(tokens) => tokens.authenticate(req.metadata()),
        }
    }

    /// The tier called `name`, if it exists and the caller may use it.
    fn tier_for(&self, who: &Principal, name: &str) -> Result<crate::accelerator::Tier, Status> {
        let tier = self
            .shared
            .device
            .tiers()
            .get(name)
            .map_err(status)?
            .clone();
        if !who.may_attach(tier.name()) {
            return Err(Status::permission_denied(format!(
                "token {:?} may not use tier {}",
                who.name,
                tier.name()
            )));
        }
        Ok(tier)
    }

    /// The caller's accelerator `id` (renewing its lease).
    fn get(&self, who: &Principal, id: u64) -> Result<Arc<Attached<B>>, Status> {
        let attached = lock(&self.shared.accelerators)
            .get(&id)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no accelerator {id} (never attached, detached, or its lease expired)"
                ))
            })?;
        if attached.owner != who.name {
            return Err(Status::permission_denied(format!(
                "accelerator {id} belongs to another token"
            )));
        }
        *lock(&attached.last_seen) = Instant::now();
        Ok(attached)
    }
}

/// Runs blocking work (ops, the meter's waits, copies) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
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
            lock(&a.tensors).clear();
            let _ = a.accel.detach();
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
        Ok(Response::new(proto::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<proto::ServerReadyRequest>,
    ) -> Result<Response<proto::ServerReadyResponse>, Status> {
        Ok(Response::new(proto::ServerReadyResponse { ready: true }))
    }

    async fn tiers(
        &self,
        req: Request<proto::TiersRequest>,
    ) -> Result<Response<proto::TiersResponse>, Status> {
        self.principal(&req)?;
        let tiers = self
            .shared
            .device
            .tiers()
            .iter()
            .map(convert::tier)
            .collect();
        Ok(Response::new(proto::TiersResponse { tiers }))
    }

    async fn attach(
        &self,
        req: Request<proto::AttachRequest>,
    ) -> Result<Response<proto::AttachResponse>, Status> {
        let who = self.principal(&req)?;
        let tier = self.tier_for(&who, &req.get_ref().tier)?;
        let mut map = lock(&self.shared.accelerators);
        let held = map.values().filter(|a| a.owner == who.name).count();
        if held >= who.max_accelerators {
            return Err(Status::resource_exhausted(format!(
                "token {:?} already holds {held} accelerators, its limit",
                who.name
            )));
        }
        let accel = self
            .shared
            .device
            .attach_tier(tier.clone())
            .map_err(status)?;
        let id = accel.id();
        map.insert(
            id,
            Arc::new(Attached {
                accel,
                owner: who.name,
                tensors: Mutex::new(HashMap::new()),
                next_tensor: AtomicU64::new(1),
                last_seen: Mutex::new(Instant::now()),
            }),
        );
        Ok(Response::new(proto::AttachResponse {
            accelerator: id,
            tier: Some(convert::tier(&tier)),
            lease_seconds: self.shared.lease.as_secs_f64(),
        }))
    }

    async fn resize(
        &self,
        req: Request<proto::ResizeRequest>,
    ) -> Result<Response<proto::ResizeResponse>, Status> {
        let who = self.principal(&req)?;
        let a = self.get(&who, req.get_ref().accelerator)?;
        let tier = self.tier_for(&who, &req.get_ref().tier)?;
        a.accel.resize_tier(tier.clone()).map_err(status)?;
        Ok(Response::new(proto::ResizeResponse {
            tier: Some(convert::tier(&tier)),
        }))
    }

    async fn detach(
        &self,
        req: Request<proto::DetachRequest>,
    ) -> Result<Response<proto::DetachResponse>, Status> {
        let who = self.principal(&req)?;
        let id = req.get_ref().accelerator;
        let a = self.get(&who, id)?;
        lock(&self.shared.accelerators).remove(&id);
        let usage = blocking(move || {
            lock(&a.tensors).clear();
            a.accel.detach().map_err(status)
        })
        .await?;
        Ok(Response::new(proto::DetachResponse {
            usage: Some(convert::usage(&usage)),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let who = self.principal(&req)?;
        self.get(&who, req.get_ref().accelerator)?;
        Ok(Response::new(proto::HeartbeatResponse {}))
    }

    async fn usage(
        &self,
        req: Request<proto::UsageRequest>,
    ) -> Result<Response<proto::UsageResponse>, Status> {
        let who = self.principal(&req)?;
        let a = self.get(&who, req.get_ref().accelerator)?;
        Ok(Response::new(proto::UsageResponse {
            usage: Some(convert::usage(&a.accel.usage())),
        }))
    }

    async fn alloc(
        &self,
        req: Request<proto::AllocRequest>,
    ) -> Result<Response<proto::AllocResponse>, Status> {
        let who = self.principal(&req)?;
        let a = self.get(&who, req.get_ref().accelerator)?;
        let descs = req
            .get_ref()
            .tensors
            .iter()
            .map(|m| convert::desc(Some(m)))
            .collect::<Result<Vec<_>, _>>()?;
        let tensors = blocking(move || {
            // All or nothing: tensors allocated before a failure are dropped (freed).
            let made = descs
                .iter()
                .map(|d| a.accel.alloc(d))
                .collect::<Result<Vec<_>>>()
                .map_err(status)?;
            Ok(made.into_iter().map(|t| a.insert(t)).collect())
        })
        .await?;
        Ok(Response::new(proto::AllocResponse { tensors }))
    }

    async fn free(
        &self,
        req: Request<proto::FreeRequest>,
    ) -> Result<Response<proto::FreeResponse>, Status> {
        let who = self.principal(&req)?;
        let a = self.get(&who, req.get_ref().accelerator)?;
        free(&a, &req.get_ref().tensors)?;
        Ok(Response::new(proto::FreeResponse {}))
    }

    async fn upload(
        &self,
        req: Request<Streaming<proto::UploadChunk>>,
    ) -> Result<Response<proto::UploadResponse>, Status> {
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
        // Refused before anything more is read when it cannot fit the quota.
        a.accel.check_room(want as u64).map_err(status)?;
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
            match stream.message().await? {
                Some(next) if next.header.is_some() => {
                    return Err(invalid("upload: only the first message carries a header"))
                }
                Some(next) => chunk = next.data,
                None => break,
            }
        }
        let host = data.finish().map_err(status)?;
        let tensor = blocking(move || {
            let t = a.accel.upload_owned(host).map_err(status)?;
            Ok(a.insert(t))
        })
        .await?;
        Ok(Response::new(proto::UploadResponse { tensor }))
    }

    type DownloadStream = DownloadStream;

    async fn download(
        &self,
        req: Request<proto::DownloadRequest>,
    ) -> Result<Response<DownloadStream>, Status> {
        let who = self.principal(&req)?;
        let (id, tensor) = (req.get_ref().accelerator, req.get_ref().tensor);
        let a = self.get(&who, id)?;
        let host = blocking(move || {
            let tensors = lock(&a.tensors);
            let t = tensors.get(&tensor).ok_or_else(|| not_found(id, tensor))?;
            a.accel.download(t).map_err(status)
        })
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
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn run(
        &self,
        req: Request<proto::RunRequest>,
    ) -> Result<Response<proto::RunResponse>, Status> {
        let who = self.principal(&req)?;
        let a = self.get(&who, req.get_ref().accelerator)?;
        let program = req.into_inner();
        let response = blocking(move || run_program(&a, program)).await?;
        Ok(Response::new(response))
    }
}

fn free<B: Backend + Clone + 'static>(a: &Attached<B>, ids: &[u64]) -> Result<(), Status> {
    let mut tensors = lock(&a.tensors);
    if let Some(missing) = ids.iter().find(|id| !tensors.contains_key(id)) {
        return Err(not_found(a.accel.id(), *missing));
    }
    for id in ids {
        tensors.remove(id);
    }
    Ok(())
}

/// A program's op, checked against the tensors it names.
struct Checked {
    op: Op,
    /// The output's handle, or its descriptor where the server allocates it.
    output: Result<u64, TensorDesc>,
}

/// Adds the op's index and name (once decoded) to a refusal.
fn in_op(i: usize, name: Option<&'static str>) -> impl Fn(Status) -> Status {
    move |s: Status| {
        let name = name.map_or(String::new(), |n| format!(" ({n})"));
        Status::new(s.code(), format!("op {i}{name}: {}", s.message()))
    }
}

/// Checks a whole program before anything runs: the frees, every write (handle and byte
/// length), every op (decoded, planned against its inputs' descriptors, its output's checked)
/// and every read. Tensors the program frees cannot be named by the rest of it.
fn check_program(
    accelerator: u64,
    tensors: &HashMap<u64, Tensor<Buffer>>,
    program: &proto::RunRequest,
) -> Result<Vec<Checked>, Status> {
    let desc = |id: u64| match tensors.get(&id) {
        Some(t) if !program.free.contains(&id) => Ok(t.desc()),
        _ => Err(not_found(accelerator, id)),
    };
    for id in &program.free {
        tensors.get(id).ok_or_else(|| not_found(accelerator, *id))?;
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
    let checked = program
        .ops
        .iter()
        .enumerate()
        .map(|(i, wire)| {
            let op = convert::op_from(wire.kind.as_ref()).map_err(in_op(i, None))?;
            let context = in_op(i, Some(op.name()));
            if let Some(y) = wire.output.filter(|y| wire.inputs.contains(y)) {
                return Err(context(invalid(format!(
                    "tensor {y} is both an input and the output"
                ))));
            }
            let inputs = wire
                .inputs
                .iter()
                .map(|&t| desc(t))
                .collect::<Result<Vec<_>, _>>()
                .map_err(&context)?;
            let plan = op.plan(&inputs).map_err(|e| context(status(e)))?;
            let output = match wire.output {
                Some(y) => {
                    let got = desc(y).map_err(&context)?;
                    check_output(op.name(), plan.output(), got).map_err(|e| context(status(e)))?;
                    Ok(y)
                }
                None => Err(plan.output().clone()),
            };
            Ok(Checked { op, output })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    for id in &program.reads {
        desc(*id)?;
    }
    Ok(checked)
}

/// Runs a program: checks it whole ([`check_program`]; a program refused there changes nothing
/// and charges nothing), then frees, allocates the outputs the server is asked for (all or
/// none), writes, runs the ops in order and reads. An error while running names the op that
/// failed; the ops before it have run, and the outputs the server allocated are freed.
fn run_program<B: Backend + Clone + 'static>(
    a: &Attached<B>,
    program: proto::RunRequest,
) -> Result<proto::RunResponse, Status> {
    let accel = &a.accel;
    let id = accel.id();
    let mut tensors = lock(&a.tensors);
    let ops = check_program(id, &tensors, &program)?;
    for t in &program.free {
        tensors.remove(t);
    }
    // The outputs the server allocates, all or none (a failure drops those made so far).
    let (mut handles, mut outputs, mut made) = (Vec::new(), Vec::new(), Vec::new());
    for (i, op) in ops.iter().enumerate() {
        match &op.output {
            Ok(y) => handles.push(*y),
            Err(desc) => {
                made.push(
                    accel
                        .alloc(desc)
                        .map_err(|e| in_op(i, Some(op.op.name()))(status(e)))?,
                );
                let y = a.new_id();
                handles.push(y);
                outputs.push(proto::AllocatedOutput {
                    op: i as u32,
                    tensor: y,
                    meta: Some(convert::meta(desc)),
                });
            }
        }
    }
    for (o, t) in outputs.iter().zip(made) {
        tensors.insert(o.tensor, t);
    }
    let ran = (|| {
        for w in &program.writes {
            let t = tensors
                .get_mut(&w.tensor)
                .ok_or_else(|| not_found(id, w.tensor))?;
            let host = HostTensor::from_bytes(t.dtype(), t.shape(), &w.data).map_err(status)?;
            accel.write(t, &host).map_err(status)?;
        }
        for (i, (op, (wire, &y))) in ops.iter().zip(program.ops.iter().zip(&handles)).enumerate() {
            let context = in_op(i, Some(op.op.name()));
            let mut out = tensors
                .remove(&y)
                .ok_or_else(|| context(not_found(id, y)))?;
            let result = wire
                .inputs
                .iter()
                .map(|t| tensors.get(t).ok_or_else(|| not_found(id, *t)))
                .collect::<Result<Vec<_>, _>>()
                .and_then(|x| accel.apply_into(&op.op, &x, &mut out).map_err(status));
            tensors.insert(y, out);
            result.map_err(context)?;
        }
        program
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
            .collect::<Result<Vec<_>, Status>>()
    })();
    match ran {
        Ok(reads) => {
            let (read_meta, reads) = reads.into_iter().unzip();
            Ok(proto::RunResponse {
                reads,
                read_meta,
                outputs,
            })
        }
        Err(e) => {
            for o in &outputs {
                tensors.remove(&o.tensor);
            }
            Err(e)
        }
    }
}

/// A running server: its address; dropping it (or [`ServerHandle::shutdown`]) stops it.
pub struct ServerHandle {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
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

    /// The URL a client connects to (`http://` or `https://` with TLS).
    pub fn url(&self, tls: bool) -> String {
        format!("{}://{}", if tls { "https" } else { "http" }, self.addr)
    }

    /// Stops the server and waits for it.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
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
        let _ = self.stop_and_join();
    }
}

/// Starts a server on `addr` (e.g. `127.0.0.1:0` for any free port) in a thread with its own
/// runtime and returns once it listens.
pub fn spawn<B: Backend + Clone + 'static>(
    addr: SocketAddr,
    backend: B,
    config: ServerConfig,
) -> Result<ServerHandle> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("eia-server".into())
        .spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("eia-server-rt")
                .build()
                .map_err(|e| Error::Network(format!("cannot start the runtime: {e}")))?;
            runtime.block_on(async move {
                let started = async {
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|e| Error::Network(format!("cannot listen on {addr}: {e}")))?;
                    let local = listener
                        .local_addr()
                        .map_err(|e| Error::Network(e.to_string()))?;
                    let service = Service::new(backend, &config)?;
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
                    Ok::<_, Error>((listener, (local, metrics), service))
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
                serve(listener, service, &config, async {
                    let _ = stop_rx.await;
                })
                .await
            })
        })
        .map_err(|e| Error::Network(format!("cannot start the server thread: {e}")))?;
    let (addr, metrics_addr) = ready_rx
        .recv()
        .map_err(|_| Error::Network("the server thread stopped before listening".into()))??;
    Ok(ServerHandle {
        addr,
        metrics_addr,
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

/// Connections accepted on `listener`, with TCP_NODELAY as tonic sets it when it binds the
/// address itself (with Nagle's algorithm a stream's last small frames, such as the trailers
/// after a tensor, can wait for a delayed ACK: tens of milliseconds).
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves `service` on `listener` until `shutdown` completes.
pub async fn serve<B: Backend + Clone + 'static>(
    listener: tokio::net::TcpListener,
    service: Service<B>,
    config: &ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let grpc = proto::accelerators_server::AcceleratorsServer::new(service)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    // Large HTTP/2 windows: a tensor upload is not held to one 64 KiB window per round trip.
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(WINDOW_BYTES))
        .initial_connection_window_size(Some(2 * WINDOW_BYTES));
    if let Some((cert, key)) = &config.tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| Error::Network(format!("TLS certificate or key: {e}")))?;
    }
    builder
        .add_service(grpc)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .map_err(|e| Error::Network(format!("server: {e}")))
}
