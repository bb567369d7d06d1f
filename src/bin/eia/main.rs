//! The `eia` command, one file per larger subcommand: `eia demo` (`demo.rs`: ResNet-50 on an
//! embedded server), `eia infer` (`infer.rs`: any ONNX model on the CPU, a metered tier or a
//! remote accelerator), `eia recommend` (`recommend.rs`: the smallest tier meeting a latency),
//! and here `eia run` (the op workloads and their throughput), `eia serve`,
//! `eia zoo` (eia's own models as ONNX files), `eia tiers`, `eia workloads` (JSON for the peer
//! comparison script) and `eia info`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use eia::accelerator::{Device, DeviceConfig, Tiers};
use eia::workload::Workload;
use eia::{Backend, CpuBackend, DType};

mod demo;
mod infer;
mod recommend;

#[derive(Parser)]
#[command(name = "eia", version, about = "Open elastic inference accelerators")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the inference workloads (GEMM, conv, batchnorm, softmax, pool) and print GFLOPS / GB/s.
    Run {
        /// Element types to run: fp32, fp16 (repeatable; default both).
        #[arg(long = "dtype", value_parser = parse_dtype)]
        dtypes: Vec<DType>,
        /// Only workloads whose id contains this text (e.g. `gemm/`, `res4`, `n8`).
        #[arg(long)]
        filter: Option<String>,
        /// CPU threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Seconds to spend timing each workload (after one warm-up run).
        #[arg(long, default_value_t = 0.3)]
        seconds: f64,
        /// Print one JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Run on a virtual accelerator of this tier (metered at its rates) and print its usage.
        #[arg(long)]
        tier: Option<String>,
        /// Admit the tier even if the device's measured capacity is below its rates.
        #[arg(long, requires = "tier")]
        overcommit: bool,
        #[command(flatten)]
        tiers: TierFile,
    },
    /// The whole product on loopback, on ResNet-50: an embedded server, a client attaching an
    /// accelerator, one round trip per inference; prints latency beside the metered floor,
    /// TFLOPS against the tier, usage.
    Demo(demo::DemoArgs),
    /// Serve this host's virtual accelerators over gRPC (CPU backend where there is no GPU).
    Serve {
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
        #[command(flatten)]
        tiers: TierFile,
    },
    /// Print the SHA-256 of a token secret, for a token file.
    TokenHash { secret: String },
    /// Print the tiers: FP32 and FP16 TFLOPS and memory (built-in, plus `--tiers FILE`).
    Tiers {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tiers: TierFile,
    },
    /// List the workloads (`--json`: shapes and attributes, one object per line).
    Workloads {
        #[arg(long)]
        json: bool,
    },
    /// Describe the backends: CPU threads and features, and the CUDA device (or why there is none).
    Info,
    /// Run an ONNX model: latency p50/p99, throughput, TFLOPS against the tier, peak memory,
    /// the top-5 of the output.
    Infer(infer::InferArgs),
    /// Per tier and precision: the model's FLOPs, the metered floor, the latency measured on
    /// this device, and the smallest tier that meets a latency target.
    Recommend(recommend::RecommendArgs),
    /// Write one of eia's own models (seeded random weights) as an ONNX file: resnet50,
    /// resnet101, resnet152, mobilenetv2.
    Zoo {
        name: String,
        /// Where to write it.
        #[arg(long, short)]
        output: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// Where custom tiers come from.
#[derive(Args)]
struct TierFile {
    /// A TOML file of custom tiers (`[[tier]]` tables: name, fp32_tflops, fp16_tflops,
    /// memory_mib), added to the built-in ones.
    #[arg(long = "tiers", value_name = "FILE")]
    path: Option<PathBuf>,
}

impl TierFile {
    fn load(&self) -> eia::Result<Tiers> {
        match &self.path {
            Some(path) => Tiers::load(path),
            None => Ok(Tiers::builtin()),
        }
    }
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    s.parse().map_err(|e: eia::Error| e.to_string())
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

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eia: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> eia::Result<()> {
    match cli.command {
        Command::Run {
            dtypes,
            filter,
            threads,
            seconds,
            json,
            tier,
            overcommit,
            tiers,
        } => {
            let backend = match threads {
                Some(t) => CpuBackend::with_threads(t)?,
                None => CpuBackend::new(),
            };
            let tiers = tiers.load()?;
            let dtypes = if dtypes.is_empty() {
                DType::ALL.to_vec()
            } else {
                dtypes
            };
            let workloads: Vec<Workload> = Workload::all()
                .into_iter()
                .filter(|w| filter.as_ref().is_none_or(|f| w.id().contains(f.as_str())))
                .collect();
            if workloads.is_empty() {
                return Err(eia::Error::Backend {
                    backend: "cpu",
                    msg: format!(
                        "no workload id contains {:?}; `eia workloads` lists them",
                        filter.unwrap_or_default()
                    ),
                });
            }
            let header = format!(
                "{} workloads × {} dtypes on the cpu backend ({} threads, {} kernels), {seconds} s each",
                workloads.len(),
                dtypes.len(),
                backend.threads(),
                backend.simd()
            );
            let Some(tier) = tier else {
                let plan = RunPlan {
                    workloads,
                    dtypes,
                    seconds,
                    json,
                    tier: None,
                    header,
                    threads: backend.threads(),
                };
                return run_workloads(&backend, &plan);
            };
            let threads = backend.threads();
            let config = DeviceConfig {
                tiers,
                overcommit,
                ..DeviceConfig::default()
            };
            let device = Device::new(backend, config)?;
            let cap = device.capacity();
            let tier = device.tiers().get(&tier)?.clone();
            let accel = device.attach_tier(tier.clone())?;
            let header = format!(
                "{header}\nmetered as {tier} on a device measured at {:.3} FP32 / {:.3} FP16 TFLOPS{}",
                cap.fp32_tflops,
                cap.fp16_tflops,
                if overcommit { " (overcommitted)" } else { "" }
            );
            let plan = RunPlan {
                workloads,
                dtypes,
                seconds,
                json,
                tier: Some(tier),
                header,
                threads,
            };
            run_workloads(&accel, &plan)?;
            let usage = accel.detach()?;
            if !json {
                println!("{usage}");
            }
            Ok(())
        }
        Command::Demo(args) => demo::run(args),
        Command::Serve {
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
            tiers,
        } => {
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
                ..eia::rpc::ServerConfig::default()
            };
            let auth = if config.tokens.is_some() {
                "bearer tokens"
            } else {
                "no authentication"
            };
            let (server, device) = match (backend.as_str(), eia::CudaBackend::new(0)) {
                ("cpu", _) => (
                    eia::rpc::spawn(listen, CpuBackend::new(), config)?,
                    "cpu".into(),
                ),
                (_, Ok(gpu)) => {
                    let name = gpu.name();
                    (eia::rpc::spawn(listen, gpu, config)?, name)
                }
                ("cuda", Err(e)) => return Err(e),
                (_, Err(e)) => {
                    println!("no GPU, serving the CPU backend: {e}");
                    (
                        eia::rpc::spawn(listen, CpuBackend::new(), config)?,
                        "cpu".into(),
                    )
                }
            };
            println!(
                "eia serve: {device} accelerators, listening on {} ({auth}); SIGTERM or Ctrl-C drains and stops",
                server.url(tls.is_some())
            );
            if let Some(at) = server.metrics_addr() {
                println!("metrics: http://{at}/metrics");
            }
            tracing::info!(
                %device,
                addr = %server.addr(),
                auth,
                tls = tls.is_some(),
                metrics = ?server.metrics_addr(),
                lease_s = lease,
                drain_timeout_s = drain_timeout.as_secs_f64(),
                "serving"
            );
            let signal = wait_for_stop_signal()?;
            tracing::info!(signal, "stop signal: draining");
            server.drain(drain_timeout)?;
            tracing::info!("stopped");
            Ok(())
        }
        Command::TokenHash { secret } => {
            println!("{}", eia::rpc::auth::hash(&secret));
            Ok(())
        }
        Command::Tiers { json, tiers } => {
            let tiers = tiers.load()?;
            if !json {
                println!(
                    "{:<16} {:>11} {:>11} {:>12}",
                    "tier", "FP32 TFLOPS", "FP16 TFLOPS", "memory"
                );
            }
            for t in tiers.iter() {
                let (f32r, f16r) = (t.tflops(DType::F32), t.tflops(DType::F16));
                if json {
                    println!(
                        "{{\"tier\":\"{}\",\"fp32_tflops\":{f32r},\"fp16_tflops\":{f16r},\"memory_bytes\":{}}}",
                        t.name(),
                        t.memory()
                    );
                } else {
                    let mib = t.memory() as f64 / (1u64 << 20) as f64;
                    let memory = if mib >= 1024.0 {
                        format!("{:.0} GiB", mib / 1024.0)
                    } else {
                        format!("{mib:.0} MiB")
                    };
                    println!("{:<16} {f32r:>11} {f16r:>11} {memory:>12}", t.name());
                }
            }
            if !json {
                println!(
                    "(SageMaker's ml.<tier> spelling is accepted; --tiers FILE adds custom tiers)"
                );
            }
            Ok(())
        }
        Command::Workloads { json } => {
            for w in Workload::all() {
                if json {
                    println!("{}", workload_json(&w));
                } else {
                    println!("{}", w.id());
                }
            }
            Ok(())
        }
        Command::Infer(args) => infer::run(args),
        Command::Recommend(args) => recommend::run(args),
        Command::Zoo { name, output, seed } => {
            let bytes = match name.as_str() {
                "resnet50" => eia::model::zoo::resnet([3, 4, 6, 3], seed),
                "resnet101" => eia::model::zoo::resnet([3, 4, 23, 3], seed),
                "resnet152" => eia::model::zoo::resnet([3, 8, 36, 3], seed),
                "mobilenetv2" => eia::model::zoo::mobilenet_v2(seed),
                other => {
                    return Err(eia::Error::Model(format!(
                        "no zoo model {other:?}: resnet50, resnet101, resnet152 or mobilenetv2"
                    )))
                }
            };
            std::fs::write(&output, &bytes).map_err(|e| eia::Error::Config {
                source_name: output.display().to_string(),
                msg: format!("cannot write: {e}"),
            })?;
            println!(
                "wrote {} ({})",
                output.display(),
                eia::error::bytes(bytes.len() as u64)
            );
            Ok(())
        }
        Command::Info => {
            let backend = CpuBackend::new();
            println!(
                "backend: {} ({} threads, {} kernels; EIA_CPU_SIMD=avx2|baseline caps them)",
                backend.name(),
                backend.threads(),
                backend.simd()
            );
            #[cfg(target_arch = "x86_64")]
            {
                let f = |name, on: bool| if on { name } else { "" };
                println!(
                    "cpu features: {} {} {} {}",
                    f("avx2", std::is_x86_feature_detected!("avx2")),
                    f("fma", std::is_x86_feature_detected!("fma")),
                    f("f16c", std::is_x86_feature_detected!("f16c")),
                    f("avx512f", std::is_x86_feature_detected!("avx512f"))
                );
            }
            match eia::CudaBackend::new(0) {
                Ok(gpu) => println!(
                    "cuda: {}, {:.1} GiB",
                    gpu.name(),
                    gpu.total_memory().unwrap_or(0) as f64 / (1u64 << 30) as f64
                ),
                Err(e) => println!("cuda: unavailable ({e})"),
            }
            Ok(())
        }
    }
}

/// What `eia run` runs and how it prints.
struct RunPlan {
    workloads: Vec<Workload>,
    dtypes: Vec<DType>,
    seconds: f64,
    json: bool,
    /// The tier the backend is metered at, if any (adds a "% of tier" column).
    tier: Option<eia::Tier>,
    header: String,
    threads: usize,
}

/// Measures every workload × dtype of `plan` on `backend` and prints one line each.
fn run_workloads<B: Backend>(backend: &B, plan: &RunPlan) -> eia::Result<()> {
    if !plan.json {
        println!("eia run: {}", plan.header);
        println!(
            "{:<34} {:>5} {:>10} {:>10} {:>9} {:>9} {:>14}{}",
            "workload",
            "dtype",
            "GFLOP",
            "median ms",
            "GFLOPS",
            "GB/s",
            "checksum",
            if plan.tier.is_some() {
                "  % of tier"
            } else {
                ""
            }
        );
    }
    let mut total = Duration::ZERO;
    for dtype in &plan.dtypes {
        for w in &plan.workloads {
            let r = measure(backend, w, *dtype, plan.seconds)?;
            total += r.median * r.runs as u32;
            let s = r.median.as_secs_f64();
            let gflops = r.flops as f64 / s / 1e9;
            if plan.json {
                println!(
                    "{{\"id\":\"{}\",\"family\":\"{}\",\"dtype\":\"{}\",\"flops\":{},\"bytes\":{},\"median_s\":{:.9},\"runs\":{},\"threads\":{}{}}}",
                    w.id(), w.family(), dtype, r.flops, r.bytes, s, r.runs, plan.threads,
                    plan.tier.as_ref().map(|t| format!(",\"tier\":\"{}\"", t.name())).unwrap_or_default()
                );
            } else {
                let of_tier = plan
                    .tier
                    .as_ref()
                    .map(|t| {
                        format!(
                            "  {:>8.1}%",
                            100.0 * gflops * 1e9 / t.flops_per_second(*dtype)
                        )
                    })
                    .unwrap_or_default();
                println!(
                    "{:<34} {:>5} {:>10.3} {:>10.3} {:>9.1} {:>9.2} {:>14.6e}{of_tier}",
                    w.id(),
                    dtype,
                    r.flops as f64 / 1e9,
                    s * 1e3,
                    gflops,
                    r.bytes as f64 / s / 1e9,
                    r.checksum
                );
            }
        }
    }
    if !plan.json {
        println!(
            "done: {} results, {:.1} s of op time",
            plan.workloads.len() * plan.dtypes.len(),
            total.as_secs_f64()
        );
    }
    Ok(())
}

/// One workload's timing.
struct Measured {
    flops: u64,
    bytes: u64,
    median: Duration,
    runs: usize,
    checksum: f64,
}

/// Runs `w` once to warm up, then repeatedly for about `seconds` (at least 3 runs); median time.
fn measure<B: Backend>(
    backend: &B,
    w: &Workload,
    dtype: DType,
    seconds: f64,
) -> eia::Result<Measured> {
    let (flops, _) = w.plan(dtype)?;
    let bytes = w.bytes(dtype)?;
    let mut prepared = w.prepare(backend, dtype)?;
    // Back to back, as an inference loop issues them (see `Backend::run_ops`).
    let mut times = backend.run_ops(|| {
        prepared.run(backend)?;
        let mut times = Vec::new();
        let start = Instant::now();
        while times.len() < 3 || start.elapsed().as_secs_f64() < seconds {
            let t = Instant::now();
            prepared.run(backend)?;
            backend.synchronize()?;
            times.push(t.elapsed());
        }
        eia::Result::Ok(times)
    })?;
    times.sort();
    let checksum = backend
        .download(prepared.output())?
        .data()
        .to_f64_vec()
        .iter()
        .sum();
    Ok(Measured {
        flops,
        bytes,
        median: times[times.len() / 2],
        runs: times.len(),
        checksum,
    })
}

/// A workload's shapes and attributes as one JSON object (read by `benches/peers.py`).
fn workload_json(w: &Workload) -> String {
    let head = format!("\"id\":\"{}\",\"family\":\"{}\"", w.id(), w.family());
    match w {
        Workload::Gemm { m, n, k } => format!("{{{head},\"m\":{m},\"n\":{n},\"k\":{k}}}"),
        Workload::Conv { x, w: wt, conv, .. } => format!(
            "{{{head},\"x\":{x:?},\"w\":{wt:?},\"strides\":{:?},\"pads\":{:?},\"dilations\":{:?},\"group\":{}}}",
            conv.strides, conv.pads, conv.dilations, conv.group
        ),
        Workload::BatchNorm { shape } => format!("{{{head},\"shape\":{shape:?}}}"),
        Workload::Softmax { rows, len } => format!("{{{head},\"shape\":[{rows},{len}]}}"),
        Workload::Unary { op, shape } => {
            // Clip's bounds and LeakyRelu's alpha; unset Clip bounds are left out.
            let attrs = match op {
                eia::ops::Op::Clip(c) => {
                    let b = |name, v: Option<f32>| v.map(|v| format!(",\"{name}\":{v}"));
                    [b("min", c.min), b("max", c.max)].into_iter().flatten().collect()
                }
                eia::ops::Op::LeakyRelu(l) => format!(",\"alpha\":{}", l.alpha),
                _ => String::new(),
            };
            format!(
                "{{{head},\"op\":\"{}\",\"shape\":{shape:?}{attrs}}}",
                op.name()
            )
        }
        Workload::Binary { op, a, b } => format!(
            "{{{head},\"op\":\"{}\",\"relu\":{},\"a\":{a:?},\"b\":{b:?}}}",
            op.name(),
            matches!(op, eia::ops::Op::Add(eia::ops::Add { relu: true }))
        ),
        Workload::Pool { x, op, .. } => {
            let attrs = match op {
                eia::ops::Op::MaxPool(m) => format!(
                    ",\"kernel_shape\":{:?},\"strides\":{:?},\"pads\":{:?}",
                    m.kernel_shape, m.strides, m.pads
                ),
                eia::ops::Op::AveragePool(a) => format!(
                    ",\"kernel_shape\":{:?},\"strides\":{:?},\"pads\":{:?}",
                    a.kernel_shape, a.strides, a.pads
                ),
                _ => String::new(),
            };
            format!("{{{head},\"op\":\"{}\",\"shape\":{x:?}{attrs}}}", op.name())
        }
        Workload::Transpose { shape, perm } => {
            format!("{{{head},\"shape\":{shape:?},\"perm\":{perm:?}}}")
        }
        Workload::Concat { shape, inputs } => {
            format!("{{{head},\"shape\":{shape:?},\"inputs\":{inputs}}}")
        }
    }
}
