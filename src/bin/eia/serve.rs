//! `eia serve`: this host's virtual accelerators over gRPC until SIGTERM or Ctrl-C, then a drain.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use eia::accelerator::{Capacity, DeviceConfig};
use eia::{Backend, CpuBackend, DType, PerDType};

use crate::TierFile;

#[derive(Args)]
pub struct ServeArgs {
    /// The device to slice: `auto` (the first CUDA GPU, else the CPU), `cuda` or `cpu`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cuda", "cpu"])]
    backend: String,
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
    /// The device's FP32 TFLOPS, instead of calibrating at start (needs --capacity-fp16).
    #[arg(long, value_name = "TFLOPS", requires = "capacity_fp16")]
    capacity_fp32: Option<f64>,
    /// The device's FP16 TFLOPS, instead of calibrating at start (needs --capacity-fp32).
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
    let spawn = |backend, config| spawn_on(listen, backend, config, configured);
    let spawn_gpu = |backend, config| spawn_on(listen, backend, config, configured);
    let (server, device) = match (backend.as_str(), eia::CudaBackend::new(0)) {
        ("cpu", _) => (spawn(CpuBackend::new(), config)?, "cpu".into()),
        (_, Ok(gpu)) => {
            let name = gpu.name();
            (spawn_gpu(gpu, config)?, name)
        }
        ("cuda", Err(e)) => return Err(e),
        (_, Err(e)) => {
            say(format_args!("no GPU, serving the CPU backend: {e}"));
            (spawn(CpuBackend::new(), config)?, "cpu".into())
        }
    };
    let capacity = server.capacity();
    let how = if capacity_fp32.is_some() {
        "configured"
    } else {
        "calibrated"
    };
    say(format_args!(
        "eia serve: {device} accelerators, listening on {} ({auth}); SIGTERM or Ctrl-C drains and stops",
        server.url(tls.is_some())
    ));
    if let Some(at) = server.metrics_addr() {
        say(format_args!("metrics: http://{at}/metrics"));
    }
    say(format_args!("capacity ({how}): {capacity}"));
    tracing::info!(
        %device,
        addr = %server.addr(),
        auth,
        tls = tls.is_some(),
        metrics = ?server.metrics_addr(),
        capacity_fp32_tflops = capacity.tflops[DType::F32],
        capacity_fp16_tflops = capacity.tflops[DType::F16],
        capacity_memory = capacity.memory,
        capacity_source = how,
        lease_s = lease,
        max_connections,
        connection_idle_timeout_s = connection_idle_timeout,
        max_streams,
        drain_timeout_s = drain_timeout.as_secs_f64(),
        "serving"
    );
    let signal = wait_for_stop_signal()?;
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

/// Serves `backend` on `listen`; with `capacity` (TFLOPS per dtype) instead of calibrating
/// the device at start (the best of several rounds).
fn spawn_on<B: Backend + Clone + 'static>(
    listen: std::net::SocketAddr,
    backend: B,
    mut config: eia::rpc::ServerConfig,
    capacity: Option<PerDType<f64>>,
) -> eia::Result<eia::rpc::ServerHandle> {
    if let Some(tflops) = capacity {
        config.device.capacity = Some(Capacity::configured(&backend, tflops)?);
    }
    eia::rpc::spawn(listen, backend, config)
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

/// Blocks until SIGTERM or SIGINT (Ctrl-C) and says which.
fn wait_for_stop_signal() -> eia::Result<&'static str> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| eia::Error::Network(format!("cannot wait for signals: {e}")))?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| eia::Error::Network(format!("cannot handle SIGTERM: {e}")))?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            r = tokio::signal::ctrl_c() => r
                .map(|_| "SIGINT")
                .map_err(|e| eia::Error::Network(format!("cannot handle Ctrl-C: {e}"))),
        }
    })
}
