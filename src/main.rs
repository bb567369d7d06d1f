//! The `eia` command: `eia run` runs the inference workloads on the CPU backend and prints
//! throughput; `eia workloads` lists them (JSON for the peer comparison script); `eia info`
//! describes the backend.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use eia::workload::Workload;
use eia::{Backend, CpuBackend, DType};

#[derive(Parser)]
#[command(name = "eia", version, about = "Open elastic inference accelerators")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the inference workloads (GEMM, conv, batchnorm, softmax) and print GFLOPS / GB/s.
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
    },
    /// List the workloads (`--json`: shapes and attributes, one object per line).
    Workloads {
        #[arg(long)]
        json: bool,
    },
    /// Describe the backend: threads and CPU features.
    Info,
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    s.parse().map_err(|e: eia::Error| e.to_string())
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
        } => {
            let backend = match threads {
                Some(t) => CpuBackend::with_threads(t)?,
                None => CpuBackend::new(),
            };
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
            if !json {
                println!(
                    "eia run: {} workloads × {} dtypes on the cpu backend ({} threads, {} kernels), {seconds} s each",
                    workloads.len(),
                    dtypes.len(),
                    backend.threads(),
                    backend.simd()
                );
                println!(
                    "{:<34} {:>5} {:>10} {:>10} {:>9} {:>9} {:>14}",
                    "workload", "dtype", "GFLOP", "median ms", "GFLOPS", "GB/s", "checksum"
                );
            }
            let mut total = Duration::ZERO;
            for dtype in &dtypes {
                for w in &workloads {
                    let r = measure(&backend, w, *dtype, seconds)?;
                    total += r.median * r.runs as u32;
                    if json {
                        println!(
                            "{{\"id\":\"{}\",\"family\":\"{}\",\"dtype\":\"{}\",\"flops\":{},\"bytes\":{},\"median_s\":{:.9},\"runs\":{},\"threads\":{}}}",
                            w.id(), w.family(), dtype, r.flops, r.bytes, r.median.as_secs_f64(), r.runs, backend.threads()
                        );
                    } else {
                        let s = r.median.as_secs_f64();
                        println!(
                            "{:<34} {:>5} {:>10.3} {:>10.3} {:>9.1} {:>9.2} {:>14.6e}",
                            w.id(),
                            dtype,
                            r.flops as f64 / 1e9,
                            s * 1e3,
                            r.flops as f64 / s / 1e9,
                            r.bytes as f64 / s / 1e9,
                            r.checksum
                        );
                    }
                }
            }
            if !json {
                println!(
                    "done: {} results, {:.1} s of op time",
                    workloads.len() * dtypes.len(),
                    total.as_secs_f64()
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
            Ok(())
        }
    }
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
fn measure(
    backend: &CpuBackend,
    w: &Workload,
    dtype: DType,
    seconds: f64,
) -> eia::Result<Measured> {
    let (flops, _) = w.plan(dtype)?;
    let bytes = w.bytes(dtype)?;
    let mut prepared = w.prepare(backend, dtype)?;
    prepared.run(backend)?;
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        prepared.run(backend)?;
        backend.synchronize()?;
        times.push(t.elapsed());
    }
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
    }
}
