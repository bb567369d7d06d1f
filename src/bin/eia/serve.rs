//! `eia serve`: this host's virtual accelerators over gRPC until SIGTERM or Ctrl-C, then a drain.
//!
//! It serves every device of the host, one [`Device`] each: all visible GPUs (or those
//! `--devices` names), else the CPU — as one device, or split by `--cpu-devices N` into N
//! devices that each get a share of the threads and 1/N of the CPU's capacity (compute and
//! memory). Attaches are placed on the device with the most headroom for their tier
//! ([`eia::accelerator::pool`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use eia::accelerator::{Capacity, Device, DeviceConfig, Pool};
use eia::{CpuBackend, CudaBackend, PerDType};

use crate::TierFile;

#[derive(Args)]
pub struct ServeArgs {
    /// What to slice: `auto` (every CUDA GPU, else the CPU), `cuda` or `cpu`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cuda", "cpu"])]
    backend: String,
    /// The GPUs to serve, by CUDA index (e.g. `0,2`; default: all). A GPU that is not there
    /// is a startup error.
    #[arg(
        long,
        value_name = "INDICES",
        value_delimiter = ',',
        conflicts_with = "cpu_devices"
    )]
    devices: Option<Vec<usize>>,
    /// Serve the CPU (implies `--backend cpu`) as N devices: device i gets an equal share of
    /// the threads (one each at least) and 1/N of the CPU's capacity — the calibrated (or
    /// --capacity-*) TFLOPS and the host's memory. The devices still share the cores, so this
    /// divides admission (and lets placement be tried without GPUs), not the hardware.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    cpu_devices: Option<u32>,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8470")]
    listen: std::net::SocketAddr,
    /// Token file (TOML, hashed secrets); without it anyone who can connect may attach.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Seconds without a call after which an accelerator is detached (more than 0; clients
    /// renew it by themselves while attached).
    #[arg(long, default_value_t = 30.0)]
    lease: f64,
    /// On SIGTERM or Ctrl-C: seconds calls in flight get to finish before the remaining
    /// accelerators are detached (attaches are refused from the signal on).
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// Append every final usage record (detach, lease expiry, drain) to FILE, one JSON
    /// object per line.
    #[arg(long, value_name = "FILE")]
    usage_log: Option<PathBuf>,
    /// Log format on stderr (filter with RUST_LOG, e.g. `RUST_LOG=eia=debug`).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// PEM certificate chain: serve TLS (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Admit accelerators beyond the device's compute capacity (the device is then shared
    /// in proportion to tier rates; memory is never overcommitted).
    #[arg(long)]
    overcommit: bool,
    /// The most tensors one accelerator may hold at once.
    #[arg(long, default_value_t = 65_536)]
    max_tensors: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Largest gRPC message in MiB (tensors beyond it stream in chunks).
    #[arg(long, default_value_t = 64)]
    max_message_mib: usize,
    /// Connections open at once; more wait (unaccepted) until one closes. Keep it below the
    /// file-descriptor limit (`ulimit -n`).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Seconds a connection may send nothing (not even a keepalive answer) before it is closed.
    #[arg(long, default_value_t = 120.0)]
    connection_idle_timeout: f64,
    /// Each GPU's FP32 TFLOPS (the whole CPU's with --cpu-devices, divided among them), instead
    /// of calibrating at start (needs --capacity-fp16).
    #[arg(long, value_name = "TFLOPS", requires = "capacity_fp16")]
    capacity_fp32: Option<f64>,
    /// Each GPU's FP16 TFLOPS (the whole CPU's with --cpu-devices, divided among them), instead
    /// of calibrating at start (needs --capacity-fp32).
    #[arg(long, value_name = "TFLOPS", requires = "capacity_fp32")]
    capacity_fp16: Option<f64>,
    /// Calls one connection may have open at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_streams: u32,
    #[command(flatten)]
    tiers: TierFile,
}

pub fn run(args: ServeArgs) -> eia::Result<()> {
    let ServeArgs {
        backend,
        devices,
        cpu_devices,
        listen,
        tokens,
        lease,
        drain_timeout,
        usage_log,
        log_format,
        tls_cert,
        tls_key,
        overcommit,
        max_tensors,
        metrics,
        max_message_mib,
        max_connections,
        connection_idle_timeout,
        max_streams,
        capacity_fp32,
        capacity_fp16,
        tiers,
    } = args;
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| eia::Error::Config {
            source_name: p.display().to_string(),
            msg: format!("cannot read: {e}"),
        })
    };
    let tls = match (&tls_cert, &tls_key) {
        (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
        _ => None,
    };
    init_logs(&log_format);
    let seconds = |flag: &str, v: f64| {
        Duration::try_from_secs_f64(v).map_err(|e| eia::Error::Config {
            source_name: flag.into(),
            msg: e.to_string(),
        })
    };
    let drain_timeout = seconds("--drain-timeout", drain_timeout)?;
    let config = eia::rpc::ServerConfig {
        device: DeviceConfig {
            tiers: tiers.load()?,
            overcommit,
            max_tensors,
            ..DeviceConfig::default()
        },
        tokens: tokens.as_deref().map(eia::rpc::Tokens::load).transpose()?,
        lease: seconds("--lease", lease)?,
        usage_log,
        max_message_bytes: max_message_mib << 20,
        tls: tls.clone(),
        metrics,
        connections: eia::rpc::listener::Limits {
            max_connections: max_connections as usize,
            idle_timeout: seconds("--connection-idle-timeout", connection_idle_timeout)?,
        },
        max_streams_per_connection: max_streams,
        ..eia::rpc::ServerConfig::default()
    };
    let auth = if config.tokens.is_some() {
        "bearer tokens"
    } else {
        "no authentication"
    };
    let configured = capacity_fp32
        .zip(capacity_fp16)
        .map(|(fp32, fp16)| PerDType::new(fp32, fp16));
    let stop = StopSignals::register()?;
    let cpu = |n: u32, config: eia::rpc::ServerConfig| {
        let pool = cpu_pool(n as usize, &config.device, configured)?;
        eia::rpc::spawn_pool(listen, pool, config)
    };
    let server = match (backend.as_str(), cpu_devices, devices) {
        ("cuda", Some(_), _) => {
            return Err(eia::Error::Config {
                source_name: "--cpu-devices".into(),
                msg: "serves the CPU; it cannot be combined with --backend cuda".into(),
            })
        }
        ("cpu", None, Some(_)) => {
            return Err(eia::Error::Config {
                source_name: "--devices".into(),
                msg: "names GPUs; it cannot be combined with --backend cpu (see --cpu-devices)"
                    .into(),
            })
        }
        (_, Some(_), _) | ("cpu", None, None) => cpu(cpu_devices.unwrap_or(1), config)?,
        (_, None, Some(indices)) => {
            let pool = gpu_pool(&indices, &config.device, configured)?;
            eia::rpc::spawn_pool(listen, pool, config)?
        }
        (backend, None, None) => match CudaBackend::device_count() {
            Ok(n) if n > 0 => {
                let pool = gpu_pool(&(0..n).collect::<Vec<_>>(), &config.device, configured)?;
                eia::rpc::spawn_pool(listen, pool, config)?
            }
            Err(e) if backend == "cuda" => return Err(e),
            Ok(_) if backend == "cuda" => {
                return Err(eia::Error::Backend {
                    backend: "cuda",
                    msg: "no CUDA device: the driver is present but reports no GPU".into(),
                })
            }
            found => {
                let why =
                    found.map_or_else(|e| e.to_string(), |_| "the driver reports no GPU".into());
                say(format_args!("no GPU, serving the CPU backend: {why}"));
                cpu(1, config)?
            }
        },
    };
    let how = if capacity_fp32.is_some() {
        "configured"
    } else {
        "calibrated"
    };
    let n = server.devices().len();
    say(format_args!(
        "eia serve: {n} device{}, listening on {} ({auth}); SIGTERM or Ctrl-C drains and stops",
        if n == 1 { "" } else { "s" },
        server.url(tls.is_some())
    ));
    if let Some(at) = server.metrics_addr() {
        say(format_args!("metrics: http://{at}/metrics"));
    }
    for d in server.devices() {
        say(format_args!(
            "device {}: {}, capacity ({how}): {}",
            d.index, d.model, d.capacity
        ));
        tracing::info!(
            device = d.index,
            model = %d.model,
            capacity_fp32_tflops = d.capacity.tflops[eia::DType::F32],
            capacity_fp16_tflops = d.capacity.tflops[eia::DType::F16],
            capacity_memory = d.capacity.memory,
            capacity_source = how,
            "device"
        );
    }
    tracing::info!(
        devices = n,
        addr = %server.addr(),
        auth,
        tls = tls.is_some(),
        metrics = ?server.metrics_addr(),
        lease_s = lease,
        max_connections,
        connection_idle_timeout_s = connection_idle_timeout,
        max_streams,
        drain_timeout_s = drain_timeout.as_secs_f64(),
        "serving"
    );
    let signal = stop.wait();
    tracing::info!(signal, "stop signal: draining");
    server.drain(drain_timeout)?;
    tracing::info!("stopped");
    Ok(())
}

/// Prints a line for the operator on stdout. A stdout that went away (the reader closed the
/// pipe, a full disk) is logged and otherwise ignored: `println!` would panic on it and the
/// panic would drain a server that was serving.
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        tracing::warn!(error = %e, %line, "cannot write to stdout; serving on");
    }
}

/// The GPUs `indices` (each opened, or a clear error naming the missing one), each sliced as
/// `config` says with `capacity` (TFLOPS per dtype) or, without it, calibrated at start (the
/// best of several rounds).
fn gpu_pool(
    indices: &[usize],
    config: &DeviceConfig,
    capacity: Option<PerDType<f64>>,
) -> eia::Result<Pool<CudaBackend>> {
    let mut devices = Vec::with_capacity(indices.len());
    for (at, &i) in indices.iter().enumerate() {
        if indices[..at].contains(&i) {
            return Err(eia::Error::Config {
                source_name: "--devices".into(),
                msg: format!("GPU {i} is named twice"),
            });
        }
        let gpu = CudaBackend::new(i).map_err(|e| eia::Error::Config {
            source_name: "--devices".into(),
            msg: format!("cannot serve GPU {i}: {e}"),
        })?;
        let capacity = capacity
            .map(|tflops| Capacity::configured(&gpu, tflops))
            .transpose()?;
        devices.push(Device::new(
            gpu,
            DeviceConfig {
                capacity,
                ..config.clone()
            },
        )?);
    }
    Pool::new(devices)
}

/// The CPU as `n` devices: device i has `threads / n` threads (one more for the first
/// `threads % n`; at least one) and 1/n of the CPU's capacity — `capacity` (TFLOPS per dtype)
/// or the whole CPU calibrated once — and of the host's memory. One device is the CPU as it is
/// (rayon's global pool).
fn cpu_pool(
    n: usize,
    config: &DeviceConfig,
    capacity: Option<PerDType<f64>>,
) -> eia::Result<Pool<CpuBackend>> {
    let whole = CpuBackend::new();
    let total = match capacity {
        Some(tflops) => Capacity::configured(&whole, tflops)?,
        None => Capacity::measure(&whole)?,
    };
    let share = Capacity {
        tflops: total.tflops.map(|t| t / n as f64),
        memory: match total.memory {
            u64::MAX => u64::MAX,
            m => m / n as u64,
        },
    };
    let threads = whole.threads();
    let devices = (0..n)
        .map(|i| {
            let backend = if n == 1 {
                whole.clone()
            } else {
                CpuBackend::with_threads((threads / n + usize::from(i < threads % n)).max(1))?
            };
            let config = DeviceConfig {
                capacity: Some(share),
                ..config.clone()
            };
            Device::new(backend, config)
        })
        .collect::<eia::Result<Vec<_>>>()?;
    Pool::new(devices)
}

/// Logs to stderr as text or JSON, filtered by RUST_LOG (default: info). Secrets are never
/// logged: tokens appear by name only.
fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
}

/// SIGTERM and SIGINT (Ctrl-C), registered before the server listens: registering takes file
/// descriptors (a runtime's, the signal driver's), and registered after, a flood of
/// connections at start could take them all first, so that `eia serve` exited at a low
/// `ulimit -n` (seen once in `tests/operations.rs`'s fd-limit test on a loaded machine). A
/// signal that arrives before [`wait`](Self::wait) is kept for it.
struct StopSignals {
    runtime: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn register() -> eia::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| eia::Error::Network(format!("cannot wait for signals: {e}")))?;
        let _entered = runtime.enter();
        let register = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| eia::Error::Network(format!("cannot handle {name}: {e}")))
        };
        let term = register(SignalKind::terminate(), "SIGTERM")?;
        let int = register(SignalKind::interrupt(), "SIGINT")?;
        Ok(StopSignals { runtime, term, int })
    }

    /// Blocks until SIGTERM or SIGINT and says which.
    fn wait(mut self) -> &'static str {
        self.runtime.block_on(async {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        })
    }
}
