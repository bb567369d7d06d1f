//! The remote client: a [`Connection`] to an `eia serve` server and [`RemoteAccelerator`]s
//! attached through it, with the same [`Backend`] API as a local accelerator — every op
//! validates locally first (same typed errors), then runs on the server. A [`Program`] runs a
//! sequence of ops (say, a whole CNN forward pass) in one round trip.
//!
//! The client is blocking: it drives its own small tokio runtime, so call it from ordinary
//! threads (inside an async runtime, use `spawn_blocking`). A background task renews each
//! accelerator's lease while it is attached; dropping a [`RemoteBuffer`] queues its tensor to be
//! freed with the next call (a call that fails keeps them for the one after); dropping a
//! [`RemoteAccelerator`] detaches it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Request, Status};

use super::chunks::{self, Assembly};
use super::convert::{self, data_loss, error};
use super::proto::{self, accelerators_client::AcceleratorsClient};
use crate::accelerator::{Tier, Usage};
use crate::backend::{check_output, check_write, Backend, Step};
use crate::error::{Error, Result};
use crate::ops::{BatchNorm, Conv, Gemm, Op, Plan, Softmax};
use crate::sync::lock;
use crate::tensor::{HostTensor, Tensor, TensorDesc};

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The bearer token, if the server needs one.
    pub token: Option<String>,
    /// PEM of the CA that signed the server's certificate (for `https://` URLs).
    pub ca_pem: Option<Vec<u8>>,
    /// The name the server's certificate is for (default: the URL's host).
    pub tls_domain: Option<String>,
    /// Size of upload chunks (default 1 MiB).
    pub chunk_bytes: usize,
    /// Largest gRPC message either way (default 64 MiB).
    pub max_message_bytes: usize,
    /// How long to wait for the connection (default 10 s).
    pub connect_timeout: Duration,
    /// Each call's deadline (default 600 s), also sent to the server (`grpc-timeout`), which
    /// stops waiting on a call past it; a call that misses it is an [`Error::Network`].
    pub timeout: Duration,
    /// Renew each accelerator's lease in the background (default true; without it the server
    /// detaches an accelerator left idle for its lease).
    pub heartbeat: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            token: None,
            ca_pem: None,
            tls_domain: None,
            chunk_bytes: 1 << 20,
            max_message_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(600),
            heartbeat: true,
        }
    }
}

/// A connection to a server. Cheap to share (`Arc`).
pub struct Connection {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    client: AcceleratorsClient<Channel>,
    token: Option<MetadataValue<Ascii>>,
    url: String,
    chunk_bytes: usize,
    heartbeat: bool,
}

/// Upload chunks copied ahead of the one being sent.
const UPLOAD_QUEUE: usize = 4;

fn network(e: impl std::fmt::Display) -> Error {
    Error::Network(e.to_string())
}

impl Connection {
    /// Connects to `url` (`http://host:port`, or `https://` with `config.ca_pem`).
    pub fn connect(url: &str, config: ClientConfig) -> Result<Arc<Connection>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("eia-client")
            .enable_all()
            .build()
            .map_err(network)?;
        let mut endpoint = Channel::from_shared(url.to_string())
            .map_err(|e| Error::Network(format!("bad server URL {url:?}: {e}")))?
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            // A server that vanished without closing the connection is noticed.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(Some(super::server::WINDOW_BYTES))
            .initial_connection_window_size(Some(2 * super::server::WINDOW_BYTES))
            .tcp_nodelay(true);
        if let Some(ca) = &config.ca_pem {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            if let Some(domain) = &config.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(tls).map_err(network)?;
        }
        let channel = runtime
            .block_on(endpoint.connect())
            .map_err(|e| Error::Network(format!("cannot connect to {url}: {e:?}")))?;
        let client = AcceleratorsClient::new(channel.clone())
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
        let token = match &config.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| Error::Network("the token must be printable ASCII".into()))?,
            ),
            None => None,
        };
        Ok(Arc::new(Connection {
            runtime,
            channel,
            client,
            token,
            url: url.to_string(),
            chunk_bytes: config.chunk_bytes.max(1),
            heartbeat: config.heartbeat,
        }))
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Spawns `task` on the connection's runtime, given its channel (it ends when the
    /// connection is dropped).
    pub(crate) fn spawn<F>(&self, task: impl FnOnce(Channel) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(task(self.channel.clone()));
    }

    /// Runs one call to completion on the client's runtime; a refusal becomes an [`Error`].
    fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T> {
        self.runtime
            .block_on(call)
            .map(tonic::Response::into_inner)
            .map_err(|s| self.fail(s))
    }

    /// A failed call's error: the server's refusal, or — when the server could not answer
    /// (gone, draining, connection broken, deadline passed) — [`Error::Unavailable`] naming it.
    fn fail(&self, s: Status) -> Error {
        match error(s) {
            Error::Network(msg) => Error::Unavailable {
                host: self.url.clone(),
                msg,
            },
            e => e,
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        if let Some(token) = &self.token {
            req.metadata_mut().insert("authorization", token.clone());
        }
        req
    }

    /// Whether the server is live (Open Inference Protocol health).
    pub fn live(&self) -> Result<bool> {
        let mut c = self.client.clone();
        let r = self.call(c.server_live(proto::ServerLiveRequest {}))?;
        Ok(r.live)
    }

    /// The tiers the server offers.
    pub fn tiers(&self) -> Result<Vec<Tier>> {
        let mut c = self.client.clone();
        let r = self.call(c.tiers(self.request(proto::TiersRequest {})))?;
        r.tiers
            .into_iter()
            .map(|t| convert::tier_from(Some(t)))
            .collect()
    }

    /// The server's devices (capacity, what is admitted and free), which tiers this
    /// connection's token could attach now and where they would land, and its readiness.
    pub fn capacity(&self) -> Result<super::ServerCapacity> {
        self.capacity_within(None)
    }

    /// [`Connection::capacity`], waiting at most `deadline` (else the call deadline).
    pub(crate) fn capacity_within(
        &self,
        deadline: Option<Duration>,
    ) -> Result<super::ServerCapacity> {
        let mut c = self.client.clone();
        let mut req = self.request(proto::CapacityRequest {});
        if let Some(d) = deadline {
            req.set_timeout(d);
        }
        let r = self.call(c.capacity(req))?;
        Ok(r.into())
    }

    /// Attaches an accelerator of the tier called `tier` on the server.
    pub fn attach(self: &Arc<Self>, tier: &str) -> Result<RemoteAccelerator> {
        let mut c = self.client.clone();
        let r = self.call(c.attach(self.request(proto::AttachRequest { tier: tier.into() })))?;
        let id = r.accelerator;
        let lease = Duration::try_from_secs_f64(r.lease_seconds).unwrap_or(Duration::from_secs(30));
        // Renew the lease three times per lease period while attached. A failed heartbeat (a
        // network blip, a busy server) is retried at the next tick; only the server saying the
        // accelerator is gone (NOT_FOUND) ends it.
        let heartbeat = self.heartbeat.then(|| {
            let mut c = self.client.clone();
            let token = self.token.clone();
            self.runtime.spawn(async move {
                let mut tick = tokio::time::interval((lease / 3).max(Duration::from_millis(5)));
                loop {
                    tick.tick().await;
                    let mut req = Request::new(proto::HeartbeatRequest { accelerator: id });
                    if let Some(t) = &token {
                        req.metadata_mut().insert("authorization", t.clone());
                    }
                    if let Err(s) = c.heartbeat(req).await {
                        if s.code() == tonic::Code::NotFound {
                            return;
                        }
                    }
                }
            })
        });
        Ok(RemoteAccelerator {
            conn: Arc::clone(self),
            id,
            tier: Mutex::new(convert::tier_from(r.tier)?),
            frees: Arc::new(Mutex::new(Frees::default())),
            heartbeat,
            detached: AtomicBool::new(false),
        })
    }
}

/// An accelerator on a server, used like a local one.
pub struct RemoteAccelerator {
    conn: Arc<Connection>,
    id: u64,
    tier: Mutex<Tier>,
    /// What it owes the server a free for, freed with the next call.
    frees: Arc<Mutex<Frees>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    detached: AtomicBool,
}

/// The tensors a client has dropped and the server may still hold. Each id is in one place at
/// a time — here or in the one call that carries it — so none is sent twice: the server answers
/// a free of a tensor it no longer holds with NOT_FOUND and refuses the whole call, frees and
/// all (a free is all or none, on its own or in a Run).
#[derive(Default)]
struct Frees {
    /// Dropped handles not yet sent: the server holds every one.
    dropped: Vec<u64>,
    /// Batches a failed call carried (refused before or after its frees, or lost on the way
    /// either way): the server holds all of a batch or none of it, and only a Free of that
    /// batch alone tells which ([`RemoteAccelerator::free_alone`]).
    unsure: Vec<Vec<u64>>,
}

/// A tensor on a remote accelerator (a handle; dropping it frees the tensor).
pub struct RemoteBuffer {
    id: u64,
    accelerator: u64,
    frees: Weak<Mutex<Frees>>,
}

impl std::fmt::Debug for RemoteBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RemoteBuffer {} of accelerator {}",
            self.id, self.accelerator
        )
    }
}

impl Drop for RemoteBuffer {
    fn drop(&mut self) {
        if let Some(frees) = self.frees.upgrade() {
            lock(&frees).dropped.push(self.id);
        }
    }
}

impl RemoteAccelerator {
    /// Its id on the server.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The URL of the server it is on.
    pub fn host(&self) -> &str {
        &self.conn.url
    }

    /// The tier it is attached as.
    pub fn tier(&self) -> Tier {
        lock(&self.tier).clone()
    }

    fn live(&self) -> Result<()> {
        if self.detached.load(Ordering::Acquire) {
            return Err(Error::Detached(self.id));
        }
        Ok(())
    }

    fn client(&self) -> AcceleratorsClient<Channel> {
        self.conn.client.clone()
    }

    /// The dropped handles, for a call to carry (it hands them to [`Self::unsure`] if it fails).
    fn take_frees(&self) -> Vec<u64> {
        std::mem::take(&mut lock(&self.frees).dropped)
    }

    /// Keeps `batch`, which a failed call carried, to settle with the next call.
    fn unsure(&self, batch: Vec<u64>) {
        if !batch.is_empty() {
            lock(&self.frees).unsure.push(batch);
        }
    }

    /// Settles every unsure batch, each in a Free of its own (none in the common case).
    fn settle(&self) -> Result<()> {
        loop {
            let next = lock(&self.frees).unsure.pop();
            match next {
                Some(batch) => self.free_alone(batch)?,
                None => return Ok(()),
            }
        }
    }

    /// Frees `batch` — tensors the server holds all of or none of — in a Free of its own.
    /// NOT_FOUND says it holds none of them (a failed call freed them after all, or the
    /// accelerator is gone): nothing is left to free. Any other failure keeps the batch unsure.
    fn free_alone(&self, batch: Vec<u64>) -> Result<()> {
        let req = self.conn.request(proto::FreeRequest {
            accelerator: self.id,
            tensors: batch.clone(),
        });
        match self.conn.runtime.block_on(self.client().free(req)) {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => {
                self.unsure(batch);
                Err(self.conn.fail(s))
            }
        }
    }

    /// Frees what it owes the server now (before anything that allocates, so the quota is
    /// current): the unsure batches, then the dropped handles in one Free.
    fn flush_frees(&self) -> Result<()> {
        self.settle()?;
        let dropped = self.take_frees();
        if dropped.is_empty() {
            return Ok(());
        }
        self.free_alone(dropped)
    }

    fn handle(&self, desc: &TensorDesc, id: u64) -> Tensor<RemoteBuffer> {
        Tensor::from_parts(desc.clone(), self.handle_id(id))
    }

    /// The handle of the server's tensor `id` (dropping it frees the tensor).
    fn handle_id(&self, id: u64) -> RemoteBuffer {
        RemoteBuffer {
            id,
            accelerator: self.id,
            frees: Arc::downgrade(&self.frees),
        }
    }

    fn own(&self, b: &RemoteBuffer) -> Result<u64> {
        if b.accelerator != self.id {
            return Err(Error::ForeignTensor {
                accelerator: self.id,
                owner: b.accelerator,
            });
        }
        Ok(b.id)
    }

    /// Allocates one tensor per descriptor in one round trip (all or none: the server refuses
    /// the whole call if they do not fit); contents unspecified until written.
    pub fn alloc_all(&self, descs: &[TensorDesc]) -> Result<Vec<Tensor<RemoteBuffer>>> {
        self.live()?;
        self.flush_frees()?;
        let req = self.conn.request(proto::AllocRequest {
            accelerator: self.id,
            tensors: descs.iter().map(convert::meta).collect(),
        });
        let r = self.conn.call(self.client().alloc(req))?;
        // Handles first, so that a short reply still frees what was allocated.
        let handles: Vec<_> = r
            .tensors
            .iter()
            .zip(descs)
            .map(|(&id, desc)| self.handle(desc, id))
            .collect();
        if r.tensors.len() != descs.len() {
            return Err(data_loss(format!(
                "asked for {} tensors, the server allocated {}",
                descs.len(),
                r.tensors.len()
            )));
        }
        Ok(handles)
    }

    /// Its usage so far, as the server records it (tensors dropped before the call are freed
    /// first, so `memory_used` counts only live ones).
    pub fn usage(&self) -> Result<Usage> {
        self.live()?;
        self.flush_frees()?;
        let req = self.conn.request(proto::UsageRequest {
            accelerator: self.id,
        });
        let r = self.conn.call(self.client().usage(req))?;
        convert::usage_from(r.usage)
    }

    /// Moves it to another tier, keeping its tensors.
    pub fn resize(&self, tier: &str) -> Result<()> {
        self.live()?;
        self.flush_frees()?;
        let req = self.conn.request(proto::ResizeRequest {
            accelerator: self.id,
            tier: tier.into(),
        });
        let r = self.conn.call(self.client().resize(req))?;
        *lock(&self.tier) = convert::tier_from(r.tier)?;
        Ok(())
    }

    /// Detaches it, freeing everything it holds on the server; returns the final usage.
    pub fn detach(&self) -> Result<Usage> {
        self.detach_within(None)
    }

    /// Detaches it, waiting for the server at most `deadline` (else the connection's call
    /// deadline). Whatever the answer, the client lets it go: its lease stops being renewed, so
    /// a server that missed the detach (dead, unreachable) frees it when the lease runs out.
    pub fn detach_within(&self, deadline: Option<Duration>) -> Result<Usage> {
        if self.detached.swap(true, Ordering::AcqRel) {
            return Err(Error::Detached(self.id));
        }
        if let Some(h) = &self.heartbeat {
            h.abort();
        }
        let mut req = self.conn.request(proto::DetachRequest {
            accelerator: self.id,
        });
        if let Some(d) = deadline {
            req.set_timeout(d);
        }
        let r = self.conn.call(self.client().detach(req))?;
        convert::usage_from(r.usage)
    }

    /// Runs a program in one round trip; returns the tensors it reads, in order (the outputs
    /// the server allocated, if any, are freed: see [`RemoteAccelerator::run_all`]).
    pub fn run(&self, program: &Program) -> Result<Vec<HostTensor>> {
        Ok(self.run_all(program)?.reads)
    }

    /// Runs a program in one round trip; returns the tensors it reads and the outputs the
    /// server allocated for it ([`Program::apply_new`]).
    pub fn run_all(&self, program: &Program) -> Result<Ran> {
        self.live()?;
        if program.accelerator.is_some_and(|a| a != self.id) {
            return Err(Error::ForeignTensor {
                accelerator: self.id,
                owner: program.accelerator.unwrap_or_default(),
            });
        }
        // The dropped handles ride along; a batch an earlier call left unsure goes alone first.
        self.settle()?;
        let (reads, read_operands) = wire(program.reads.iter().map(|(x, _)| *x).collect());
        let free = self.take_frees();
        let req = self.conn.request(proto::RunRequest {
            accelerator: self.id,
            free: free.clone(),
            writes: program.writes.clone(),
            ops: program.ops.clone(),
            reads,
            read_operands,
            scratch: program.scratch,
        });
        let r = match self.conn.call(self.client().run(req)) {
            Ok(r) => r,
            Err(e) => {
                self.unsure(free);
                return Err(e);
            }
        };
        let new = program.ops.iter().filter(|op| op.output.is_none()).count();
        if r.reads.len() != program.reads.len() || r.outputs.len() != new {
            return Err(data_loss(format!(
                "asked for {} tensors and {new} new outputs, got {} and {}",
                program.reads.len(),
                r.reads.len(),
                r.outputs.len()
            )));
        }
        // Handles first, so that whatever fails below frees them.
        let allocated = r
            .outputs
            .iter()
            .map(|o| (self.handle_id(o.tensor), convert::desc(o.meta.as_ref())))
            .collect::<Vec<_>>();
        let reads = r
            .reads
            .iter()
            .zip(&program.reads)
            .enumerate()
            .map(|(i, (bytes, (_, desc)))| {
                let meta = convert::desc(r.read_meta.get(i)).map_err(error)?;
                if &meta != desc {
                    return Err(data_loss(format!(
                        "read {i}: expected {} {:?}, the server sent {} {:?}",
                        desc.dtype(),
                        desc.shape(),
                        meta.dtype(),
                        meta.shape()
                    )));
                }
                HostTensor::from_bytes(desc.dtype(), desc.shape(), bytes)
            })
            .collect::<Result<_>>()?;
        let allocated = allocated
            .into_iter()
            .map(|(buffer, desc)| Ok(Tensor::from_parts(desc.map_err(error)?, buffer)))
            .collect::<Result<_>>()?;
        Ok(Ran { reads, allocated })
    }

    fn upload_header(&self, desc: &TensorDesc) -> proto::UploadHeader {
        proto::UploadHeader {
            accelerator: self.id,
            meta: Some(convert::meta(desc)),
        }
    }

    /// Uploads a tensor's bytes in chunks that slice `bytes` (no copy per chunk).
    fn upload_bytes(&self, desc: &TensorDesc, bytes: Bytes) -> Result<Tensor<RemoteBuffer>> {
        self.flush_frees()?;
        let mut header = Some(self.upload_header(desc));
        let chunks =
            chunks::split(bytes, self.conn.chunk_bytes).map(move |data| proto::UploadChunk {
                header: header.take(),
                data,
            });
        let req = self.conn.request(tokio_stream::iter(chunks));
        let r = self.conn.call(self.client().upload(req))?;
        Ok(self.handle(desc, r.tensor))
    }
}

impl Drop for RemoteAccelerator {
    fn drop(&mut self) {
        if !self.detached.load(Ordering::Acquire) {
            let _ = self.detach();
        }
    }
}

impl Backend for RemoteAccelerator {
    type Storage = RemoteBuffer;

    fn name(&self) -> String {
        format!(
            "remote accelerator {} ({}) at {}",
            self.id,
            lock(&self.tier).name(),
            self.conn.url
        )
    }

    /// Against the tier's memory quota, as the server counts it now (one round trip); the
    /// server checks its limit on live tensors at each allocation.
    fn check_room(&self, bytes: u64, _tensors: usize) -> Result<()> {
        let usage = self.usage()?;
        if usage.memory_used.saturating_add(bytes) > usage.memory_quota {
            return Err(Error::MemoryQuota {
                accelerator: self.id,
                tier: self.tier().name().to_string(),
                requested: bytes,
                used: usage.memory_used,
                quota: usage.memory_quota,
            });
        }
        Ok(())
    }

    /// The whole sequence as one [`Program`]: one round trip, validated whole by the server
    /// before anything runs.
    fn run_steps(
        &self,
        tensors: &mut [Option<Tensor<RemoteBuffer>>],
        writes: &[(usize, &HostTensor)],
        steps: &[Step],
        reads: &[usize],
    ) -> Result<Vec<HostTensor>> {
        self.run(&program_of(tensors, writes, steps, reads)?)
    }

    /// One round trip, the program marked scratch ([`Program::set_scratch`]: the server may
    /// write outputs into its intermediates' and inputs' storage); observed, step by step.
    fn run_program(
        &self,
        tensors: &mut [Option<Tensor<RemoteBuffer>>],
        writes: &[(usize, &HostTensor)],
        steps: &[Step],
        reads: &[usize],
        observe: Option<&mut (dyn FnMut() -> Result<()> + Send)>,
    ) -> Result<Vec<HostTensor>> {
        if observe.is_some() {
            return crate::backend::run_program_here(self, tensors, writes, steps, reads, observe);
        }
        let mut program = program_of(tensors, writes, steps, reads)?;
        program.set_scratch(true);
        self.run(&program)
    }

    fn alloc(&self, desc: &TensorDesc) -> Result<Tensor<RemoteBuffer>> {
        let mut one = self.alloc_all(std::slice::from_ref(desc))?;
        one.pop()
            .ok_or_else(|| data_loss("the server allocated nothing"))
    }

    /// Streams the caller's tensor: each chunk is copied out of it as the previous ones go
    /// (on this thread, while the client's runtime encodes and sends), so the copies land in
    /// recycled chunk-sized buffers rather than a second tensor-sized one; `upload_owned`
    /// copies nothing.
    fn upload(&self, host: &HostTensor) -> Result<Tensor<RemoteBuffer>> {
        self.live()?;
        self.flush_frees()?;
        let (tx, rx) = tokio::sync::mpsc::channel(UPLOAD_QUEUE);
        let req = self
            .conn
            .request(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut client = self.client();
        let mut header = Some(self.upload_header(host.desc()));
        let chunk = self.conn.chunk_bytes;
        let bytes = host.as_bytes();
        let r = self.conn.runtime.block_on(async move {
            let mut call = tokio::spawn(async move { client.upload(req).await });
            for i in 0..bytes.len().div_ceil(chunk).max(1) {
                let piece =
                    &bytes[(i * chunk).min(bytes.len())..((i + 1) * chunk).min(bytes.len())];
                let message = proto::UploadChunk {
                    header: header.take(),
                    data: Bytes::copy_from_slice(piece),
                };
                tokio::select! {
                    // Refused before the end (quota, bad header): stop copying, take its status.
                    done = &mut call => return done,
                    sent = tx.send(message) => if sent.is_err() { break },
                }
            }
            drop(tx);
            call.await
        });
        let r = r
            .map_err(|e| Error::Network(format!("the upload task failed: {e}")))?
            .map_err(|s| self.conn.fail(s))?
            .into_inner();
        Ok(self.handle(host.desc(), r.tensor))
    }

    /// Sends the caller's tensor without copying it: the chunks are slices of its own buffer.
    fn upload_owned(&self, host: HostTensor) -> Result<Tensor<RemoteBuffer>> {
        self.live()?;
        let desc = host.desc().clone();
        self.upload_bytes(&desc, chunks::host_bytes(host.into_storage()))
    }

    fn write(&self, t: &mut Tensor<RemoteBuffer>, host: &HostTensor) -> Result<()> {
        let mut program = Program::new();
        program.write(t, host)?;
        self.run(&program).map(|_| ())
    }

    fn download(&self, t: &Tensor<RemoteBuffer>) -> Result<HostTensor> {
        self.live()?;
        let tensor = self.own(t.storage())?;
        let req = self.conn.request(proto::DownloadRequest {
            accelerator: self.id,
            tensor,
        });
        let client = self.client();
        let received = self.conn.runtime.block_on(async move {
            let mut client = client;
            let mut stream = client.download(req).await?.into_inner();
            // Chunks land once, in the tensor's final buffer.
            let mut data = Assembly::new(t.desc().clone()).ok_or_else(|| {
                tonic::Status::resource_exhausted(format!(
                    "download: the client cannot hold {} bytes",
                    t.desc().bytes()
                ))
            })?;
            while let Some(chunk) = stream.message().await? {
                data.push(&chunk.data);
            }
            Ok::<_, tonic::Status>(data)
        });
        received.map_err(|s| self.conn.fail(s))?.finish()
    }

    /// Runs the plan's op on the server (a program of one op).
    fn launch(&self, plan: &Plan, inputs: &[&RemoteBuffer], y: &mut RemoteBuffer) -> Result<()> {
        let mut program = Program::new();
        let x = inputs.iter().map(|x| tensor_operand(x.id)).collect();
        let accelerators = inputs.iter().map(|x| x.accelerator).chain([self.id]);
        program.push(accelerators, &plan.op, x, Some(y), None)?;
        self.run(&program).map(|_| ())
    }
}

/// What [`RemoteAccelerator::run_all`] returns.
#[derive(Debug)]
pub struct Ran {
    /// The tensors the program read, in order.
    pub reads: Vec<HostTensor>,
    /// The outputs the server allocated, in op order.
    pub allocated: Vec<Tensor<RemoteBuffer>>,
}

/// An input of an op of a [`Program`], or a tensor it reads: a tensor of the accelerator, or
/// the output the server allocates for an earlier op of the same program.
#[derive(Debug, Clone, Copy)]
pub enum Operand<'a> {
    Tensor(&'a Tensor<RemoteBuffer>),
    Output(Output),
}

impl<'a> From<&'a Tensor<RemoteBuffer>> for Operand<'a> {
    fn from(t: &'a Tensor<RemoteBuffer>) -> Self {
        Operand::Tensor(t)
    }
}

impl From<Output> for Operand<'_> {
    fn from(y: Output) -> Self {
        Operand::Output(y)
    }
}

/// The output the server allocates for an op of a [`Program`] ([`Program::apply_new`]): later
/// ops of the program take it ([`Operand::Output`]) and the program may read it, all in its one
/// round trip; [`RemoteAccelerator::run_all`] returns its tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    program: u64,
    op: usize,
}

impl Output {
    /// The index of the op whose output it is.
    pub fn op(self) -> usize {
        self.op
    }
}

/// A table's writes, steps and reads (see [`Backend::run_steps`]) as one [`Program`].
fn program_of(
    tensors: &[Option<Tensor<RemoteBuffer>>],
    writes: &[(usize, &HostTensor)],
    steps: &[Step],
    reads: &[usize],
) -> Result<Program> {
    let get = |i: usize| {
        tensors[i].as_ref().ok_or_else(|| Error::Backend {
            backend: "run_steps",
            msg: "a step names an empty table entry".into(),
        })
    };
    let mut program = Program::new();
    for &(i, host) in writes {
        program.write(get(i)?, host)?;
    }
    for step in steps {
        let x = step
            .inputs
            .iter()
            .map(|&i| get(i))
            .collect::<Result<Vec<_>>>()?;
        program.apply(&step.op, &x, get(step.output)?)?;
    }
    for &i in reads {
        program.read(get(i)?)?;
    }
    Ok(program)
}

/// A sequence of writes, ops and reads over one remote accelerator's tensors, run in one round
/// trip by [`RemoteAccelerator::run`]. Each op is validated as it is added (the same typed
/// errors as a local call) and writes into an existing output tensor ([`Program::apply`] and
/// the typed forms) or one the server allocates ([`Program::apply_new`]), which later ops and
/// reads of the program may name: a program of fresh outputs needs no allocation call first.
/// A clone keeps the ops recorded so far, and the [`Output`]s of those name the same ops in it.
#[derive(Debug, Clone)]
pub struct Program {
    /// Tells its [`Output`]s from another program's.
    id: u64,
    accelerator: Option<u64>,
    writes: Vec<proto::TensorWrite>,
    ops: Vec<proto::Op>,
    /// Each op's output descriptor where the server allocates it.
    allocated: Vec<Option<TensorDesc>>,
    reads: Vec<(proto::Operand, TensorDesc)>,
    /// See [`Program::set_scratch`].
    scratch: bool,
}

impl Default for Program {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Program {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            accelerator: None,
            writes: Vec::new(),
            ops: Vec::new(),
            allocated: Vec::new(),
            reads: Vec::new(),
            scratch: false,
        }
    }
}

type T = Tensor<RemoteBuffer>;

fn tensor_operand(id: u64) -> proto::Operand {
    proto::Operand {
        source: Some(proto::operand::Source::Tensor(id)),
    }
}

/// `operands` on the wire: as plain handles where every one is a tensor (what servers before
/// [`proto::Operand`] read), else as operands.
fn wire(operands: Vec<proto::Operand>) -> (Vec<u64>, Vec<proto::Operand>) {
    let handles: Option<Vec<u64>> = operands
        .iter()
        .map(|o| match o.source {
            Some(proto::operand::Source::Tensor(t)) => Some(t),
            _ => None,
        })
        .collect();
    match handles {
        Some(handles) => (handles, Vec::new()),
        None => (Vec::new(), operands),
    }
}

impl Program {
    pub fn new() -> Program {
        Program::default()
    }

    /// Marks the program scratch (or not; not by default): its caller needs back nothing but
    /// its reads from the tensors its ops write and those its writes fill, as a model's
    /// intermediates and inputs. The server may then write an op's output into the storage of
    /// one of those that the program no longer needs, so that the output lands in memory still
    /// in cache (where its device can: the CPU backend). After the program those tensors'
    /// contents are unspecified: a false claim spoils only the caller's own tensors.
    pub fn set_scratch(&mut self, scratch: bool) {
        self.scratch = scratch;
    }

    fn same_accelerator(&mut self, accelerator: u64) -> Result<()> {
        match self.accelerator {
            Some(a) if a != accelerator => Err(Error::ForeignTensor {
                accelerator: a,
                owner: accelerator,
            }),
            _ => {
                self.accelerator = Some(accelerator);
                Ok(())
            }
        }
    }

    /// The wire form and descriptor of `x`, and its accelerator if it is a tensor.
    fn operand(&self, x: Operand) -> Result<(proto::Operand, TensorDesc, Option<u64>)> {
        match x {
            Operand::Tensor(t) => Ok((
                tensor_operand(t.storage().id),
                t.desc().clone(),
                Some(t.storage().accelerator),
            )),
            Operand::Output(y) => {
                let desc = self
                    .allocated
                    .get(y.op)
                    .cloned()
                    .flatten()
                    .filter(|_| y.program == self.id)
                    .ok_or_else(|| Error::Backend {
                        backend: "remote program",
                        msg: format!(
                            "the output of op {} is another program's: an op takes only the outputs of its own program's earlier ops",
                            y.op
                        ),
                    })?;
                let source = proto::operand::Source::Op(y.op as u32);
                Ok((
                    proto::Operand {
                        source: Some(source),
                    },
                    desc,
                    None,
                ))
            }
        }
    }

    /// Adds `op` (its inputs on the wire; output `y`, or where `allocated` says, one the server
    /// allocates), checking that its tensors — and `accelerators` — are the program's
    /// accelerator's.
    fn push(
        &mut self,
        accelerators: impl IntoIterator<Item = u64>,
        op: &Op,
        inputs: Vec<proto::Operand>,
        y: Option<&RemoteBuffer>,
        allocated: Option<TensorDesc>,
    ) -> Result<()> {
        for a in accelerators.into_iter().chain(y.map(|y| y.accelerator)) {
            self.same_accelerator(a)?;
        }
        let (inputs, operands) = wire(inputs);
        self.ops.push(proto::Op {
            kind: Some(convert::op_kind(op)),
            inputs,
            output: y.map(|y| y.id),
            operands,
        });
        self.allocated.push(allocated);
        Ok(())
    }

    /// Validates `op` on `inputs` (in the op's ONNX order) and output `y` (`None`: one the
    /// server allocates) now — the same typed errors as a local call — and adds it.
    fn record<'a, I: Into<Operand<'a>> + Copy>(
        &mut self,
        op: &Op,
        inputs: &[I],
        y: Option<&T>,
    ) -> Result<()> {
        let mut operands = Vec::with_capacity(inputs.len());
        let mut descs = Vec::with_capacity(inputs.len());
        let mut accelerators = Vec::new();
        for &x in inputs {
            let (w, desc, accelerator) = self.operand(x.into())?;
            operands.push(w);
            descs.push(desc);
            accelerators.extend(accelerator);
        }
        let plan = op.plan(&descs.iter().collect::<Vec<_>>())?;
        if let Some(y) = y {
            check_output(op.name(), plan.output(), y.desc())?;
        }
        let allocated = y.is_none().then(|| plan.output().clone());
        self.push(
            accelerators,
            op,
            operands,
            y.map(|y| y.storage()),
            allocated,
        )
    }

    /// Writes host data into `t` before the first op.
    pub fn write(&mut self, t: &T, host: &HostTensor) -> Result<&mut Self> {
        check_write(t.desc(), host.desc())?;
        self.same_accelerator(t.storage().accelerator)?;
        self.writes.push(proto::TensorWrite {
            tensor: t.storage().id,
            data: Bytes::copy_from_slice(host.as_bytes()),
        });
        Ok(self)
    }

    /// Reads `x` — a tensor, or an op's allocated output — after the last op.
    pub fn read<'a>(&mut self, x: impl Into<Operand<'a>>) -> Result<&mut Self> {
        let (w, desc, accelerator) = self.operand(x.into())?;
        if let Some(a) = accelerator {
            self.same_accelerator(a)?;
        }
        self.reads.push((w, desc));
        Ok(self)
    }

    /// Runs `op` on `inputs` (in the op's ONNX order: tensors, or earlier ops' [`Output`]s) into
    /// `y`.
    pub fn apply<'a, I: Into<Operand<'a>> + Copy>(
        &mut self,
        op: &Op,
        inputs: &[I],
        y: &T,
    ) -> Result<&mut Self> {
        self.record(op, inputs, Some(y))?;
        Ok(self)
    }

    /// Runs `op` on `inputs` (tensors, or earlier ops' [`Output`]s) into an output the server
    /// allocates, which later ops and reads of this program may name by the returned
    /// [`Output`]; [`RemoteAccelerator::run_all`] returns its tensor.
    pub fn apply_new<'a, I: Into<Operand<'a>> + Copy>(
        &mut self,
        op: &Op,
        inputs: &[I],
    ) -> Result<Output> {
        self.record(op, inputs, None)?;
        Ok(Output {
            program: self.id,
            op: self.ops.len() - 1,
        })
    }

    pub fn gemm(&mut self, op: &Gemm, a: &T, b: &T, c: Option<&T>, y: &T) -> Result<&mut Self> {
        let inputs: Vec<&T> = [a, b].into_iter().chain(c).collect();
        self.apply(&Op::Gemm(*op), &inputs, y)
    }

    pub fn matmul(&mut self, a: &T, b: &T, y: &T) -> Result<&mut Self> {
        self.apply(&Op::MatMul, &[a, b], y)
    }

    pub fn conv(&mut self, op: &Conv, x: &T, w: &T, bias: Option<&T>, y: &T) -> Result<&mut Self> {
        let inputs: Vec<&T> = [x, w].into_iter().chain(bias).collect();
        self.apply(&Op::Conv(op.clone()), &inputs, y)
    }

    pub fn batch_norm(
        &mut self,
        op: &BatchNorm,
        x: &T,
        params: [&T; 4],
        y: &T,
    ) -> Result<&mut Self> {
        let [s, b, m, v] = params;
        self.apply(&Op::BatchNorm(*op), &[x, s, b, m, v], y)
    }

    pub fn softmax(&mut self, op: &Softmax, x: &T, y: &T) -> Result<&mut Self> {
        self.apply(&Op::Softmax(*op), &[x], y)
    }

    /// Number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}
