//! The `eia` command, one file per larger subcommand: `run.rs` (`eia run`: the op workloads and
//! their throughput), `serve.rs` (`eia serve`), `demo.rs` (`eia demo`: ResNet-50 on an embedded
//! server), `infer.rs` (`eia infer`: any ONNX model on the CPU, a metered tier or a remote
//! accelerator), `recommend.rs` (`eia recommend`: the smallest tier meeting a latency); and here
//! `eia zoo` (eia's own models as ONNX files), `eia token-hash`, `eia tiers`, `eia workloads`
//! (JSON for the peer comparison script) and `eia info`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use eia::accelerator::{Capacity, Tiers};
use eia::workload::Workload;
use eia::{Backend, CpuBackend, DType};

/// `println!` for the subcommands' output (see [`print_line`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::print_line(format_args!($($arg)*))
    };
}

mod demo;
mod infer;
mod recommend;
mod run;
mod serve;

#[derive(Parser)]
#[command(name = "eia", version, about = "Open elastic inference accelerators")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the inference workloads (GEMM, conv, batchnorm, softmax, pool) and print GFLOPS / GB/s.
    Run(run::RunArgs),
    /// The whole product on loopback, on ResNet-50: an embedded server, a client attaching an
    /// accelerator, one round trip per inference; prints latency beside the metered floor,
    /// TFLOPS against the tier, usage.
    Demo(demo::DemoArgs),
    /// Serve this host's virtual accelerators over gRPC: every GPU (or `--devices`), else the
    /// CPU (`--cpu-devices N` splits it into N devices).
    Serve(serve::ServeArgs),
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
    /// Describe the backends: CPU threads, features and capacity, and every CUDA GPU (the
    /// devices `eia serve` serves) with its capacity, or why there is none.
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

/// Writes a line of a subcommand's output to stdout. A reader that went away (`eia workloads
/// --json | head -3`) ends the command quietly and successfully, as other command-line tools
/// end, where `println!` would panic with a backtrace; any other write error ends it with that
/// error. (`eia serve` keeps serving instead, see `serve::say`.)
fn print_line(line: std::fmt::Arguments) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("eia: cannot write to stdout: {e}");
        std::process::exit(1);
    }
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
        Command::Run(args) => run::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Serve(args) => serve::run(args),
        Command::TokenHash { secret } => {
            out!("{}", eia::rpc::auth::hash(&secret));
            Ok(())
        }
        Command::Tiers { json, tiers } => {
            let tiers = tiers.load()?;
            if !json {
                out!(
                    "{:<16} {:>11} {:>11} {:>12}",
                    "tier",
                    "FP32 TFLOPS",
                    "FP16 TFLOPS",
                    "memory"
                );
            }
            for t in tiers.iter() {
                let (f32r, f16r) = (t.tflops(DType::F32), t.tflops(DType::F16));
                if json {
                    out!(
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
                    out!("{:<16} {f32r:>11} {f16r:>11} {memory:>12}", t.name());
                }
            }
            if !json {
                out!(
                    "(SageMaker's ml.<tier> spelling is accepted; --tiers FILE adds custom tiers)"
                );
            }
            Ok(())
        }
        Command::Workloads { json } => {
            for w in Workload::all() {
                if json {
                    out!("{}", workload_json(&w));
                } else {
                    out!("{}", w.id());
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
            out!(
                "wrote {} ({})",
                output.display(),
                eia::error::bytes(bytes.len() as u64)
            );
            Ok(())
        }
        Command::Info => {
            let backend = CpuBackend::new();
            out!(
                "backend: {} ({} threads, {} kernels; EIA_CPU_SIMD=avx2|baseline caps them)",
                backend.name(),
                backend.threads(),
                backend.simd()
            );
            #[cfg(target_arch = "x86_64")]
            {
                let f = |name, on: bool| if on { name } else { "" };
                out!(
                    "cpu features: {} {} {} {}",
                    f("avx2", std::is_x86_feature_detected!("avx2")),
                    f("fma", std::is_x86_feature_detected!("fma")),
                    f("f16c", std::is_x86_feature_detected!("f16c")),
                    f("avx512f", std::is_x86_feature_detected!("avx512f"))
                );
            }
            let rounds = eia::accelerator::CALIBRATION_ROUNDS;
            out!(
                "cpu capacity (best of {rounds} rounds, what `eia serve --backend cpu` calibrates; `--cpu-devices N` gives each device 1/N of it): {}",
                Capacity::measure(&backend)?
            );
            // The devices `eia serve` serves by default: every GPU (`--devices` chooses).
            match eia::CudaBackend::device_count() {
                Ok(0) => out!("cuda: no GPU (the driver reports none)"),
                Ok(n) => {
                    out!("cuda: {n} GPU(s), each one device of `eia serve`");
                    for i in 0..n {
                        let gpu = eia::CudaBackend::new(i)?;
                        out!(
                            "device {i}: {}, {:.1} GiB, capacity (best of {rounds} rounds): {}",
                            gpu.name(),
                            gpu.total_memory().unwrap_or(0) as f64 / (1u64 << 30) as f64,
                            Capacity::measure(&gpu)?
                        );
                    }
                }
                Err(e) => out!("cuda: unavailable ({e})"),
            }
            Ok(())
        }
    }
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
        Workload::Lrn { x, .. } => {
            let eia::ops::Op::Lrn(l) = w.op() else {
                unreachable!("an LRN workload runs LRN")
            };
            format!(
                "{{{head},\"shape\":{x:?},\"size\":{},\"alpha\":{},\"beta\":{},\"bias\":{}}}",
                l.size, l.alpha, l.beta, l.bias
            )
        }
    }
}
