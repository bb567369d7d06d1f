//! `eia infer MODEL.onnx`: loads a model, runs it on the CPU backend, a metered accelerator of
//! a tier or a remote accelerator (of one server, or placed in a fleet), and prints latency (p50/p99), throughput, achieved TFLOPS
//! against the tier, peak memory and the top-5 of the first output; with `--profile`, where the
//! time goes: each op's median time over the runs, by op kind and the slowest nodes, with FLOPs
//! and GFLOPS (`scripts/profile.py` puts onnxruntime's per-node profile beside it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use eia::accelerator::{Device, DeviceConfig};
use eia::model::{npy, Model, NodeTime, Session};
use eia::rpc::{ClientConfig, Fleet};
use eia::{Backend, CpuBackend, DType, HostTensor, LoadOptions, Tier};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::TierFile;

#[derive(Args)]
pub struct InferArgs {
    /// The ONNX model (`eia zoo` writes eia's own).
    model: PathBuf,
    /// An input as a .npy file: one per model input in graph order, or NAME=FILE. Without
    /// it, seeded random values in [-1, 1).
    #[arg(long = "input", value_name = "FILE")]
    inputs: Vec<String>,
    /// Write the outputs as .npy files: one per model output, in graph order.
    #[arg(long = "output", value_name = "FILE")]
    outputs: Vec<PathBuf>,
    /// The batch size (the model's first input dimension, where it is symbolic).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Compute in FP16 (FP16 weights and activations, FP32 accumulation).
    #[arg(long)]
    fp16: bool,
    /// Run on an accelerator of this tier: local and metered, or remote with --remote.
    #[arg(long)]
    tier: Option<String>,
    /// Run on a remote accelerator of --tier (default eia1.medium) from this server
    /// (http://HOST:PORT), or from the best-placed of several: comma-separated URLs, or a host
    /// name that resolves to many addresses (a Kubernetes headless Service). One round trip per
    /// inference.
    #[arg(long, value_name = "URL[,URL...]")]
    remote: Option<String>,
    /// Admit a local tier even if this machine measures below its rates.
    #[arg(long)]
    overcommit: bool,
    /// Timed inferences (after one warm-up).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// After the timed runs, profile `--runs` more inferences op by op (each op timed up to a
    /// synchronize, inside one sequence on the CPU pool; on --remote each op is a round trip)
    /// and print each op kind's and the slowest nodes' median time, FLOPs and GFLOPS.
    #[arg(long)]
    profile: bool,
    /// With --profile, also write every node's median time as JSON to FILE.
    #[arg(long, value_name = "FILE", requires = "profile")]
    profile_json: Option<PathBuf>,
    /// The seed of the random input.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    tiers: TierFile,
}

pub fn run(args: InferArgs) -> eia::Result<()> {
    let options = LoadOptions {
        batch: args.batch,
        fp16: args.fp16,
    };
    let start = Instant::now();
    let model = Model::load(&args.model, options)?;
    let load = start.elapsed();
    let inputs = inputs(&model, &args)?;
    let dtype = if args.fp16 { DType::F16 } else { DType::F32 };
    out!(
        "eia infer: {} ({}, opset {}), batch {}, {dtype}: {} ops, {:.3} GFLOP per inference, {} of weights, loaded in {:.0} ms",
        args.model.display(),
        if model.name.is_empty() { "unnamed" } else { &model.name },
        model.opset,
        args.batch,
        model.ops().count(),
        model.flops() as f64 / 1e9,
        eia::error::bytes(model.weight_bytes()),
        load.as_secs_f64() * 1e3
    );
    let tiers = args.tiers.load()?;
    let outputs = if let Some(url) = &args.remote {
        let tier = args.tier.as_deref().unwrap_or("eia1.medium");
        let accel = Fleet::connect(url, ClientConfig::default())?.attach(tier)?;
        out!("on {}", accel.name());
        let tier = accel.tier();
        let r = time(&model, &accel, &inputs, &args, Some(&tier))?;
        out!("{}", accel.detach()?);
        r
    } else if let Some(tier) = &args.tier {
        let config = DeviceConfig {
            tiers,
            overcommit: args.overcommit,
            ..DeviceConfig::default()
        };
        let device = Device::new(CpuBackend::new(), config)?;
        let tier = device.tiers().get(tier)?.clone();
        let accel = device.attach_tier(tier.clone())?;
        out!("on {}", accel.name());
        let r = time(&model, &accel, &inputs, &args, Some(&tier))?;
        out!("{}", accel.detach()?);
        r
    } else {
        let cpu = CpuBackend::new();
        out!("on {}", cpu.name());
        time(&model, &cpu, &inputs, &args, None)?
    };
    for (port, out) in model.outputs().iter().zip(&outputs) {
        out!(
            "output {} {:?}: top-5 of item 0: {}",
            port.name,
            out.shape(),
            top5(out)
        );
    }
    if args.outputs.len() > outputs.len() {
        return Err(eia::Error::Model(format!(
            "{} --output files for {} model outputs",
            args.outputs.len(),
            outputs.len()
        )));
    }
    for (path, out) in args.outputs.iter().zip(&outputs) {
        npy::write(path, out)?;
        out!("wrote {}", path.display());
    }
    Ok(())
}

/// The inputs in graph order: from files (positional or NAME=FILE), else seeded random.
fn inputs(model: &Model, args: &InferArgs) -> eia::Result<Vec<HostTensor>> {
    let ports = model.inputs();
    let mut given: Vec<Option<HostTensor>> = vec![None; ports.len()];
    for (i, arg) in args.inputs.iter().enumerate() {
        let (slot, file) = match arg.split_once('=') {
            Some((name, file)) => (
                ports.iter().position(|p| p.name == name).ok_or_else(|| {
                    eia::Error::Model(format!(
                        "--input {name}=…: the model has no input {name} (it has {})",
                        ports
                            .iter()
                            .map(|p| p.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?,
                file,
            ),
            None if i < ports.len() => (i, arg.as_str()),
            None => {
                return Err(eia::Error::Model(format!(
                    "{} --input files for {} model inputs",
                    args.inputs.len(),
                    ports.len()
                )))
            }
        };
        given[slot] = Some(npy::read(file)?);
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    Ok(given
        .into_iter()
        .zip(ports)
        .map(|(g, port)| {
            g.unwrap_or_else(|| {
                let values: Vec<f32> = (0..port.desc.len())
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                HostTensor::new(port.desc.shape(), values).expect("the shape holds its values")
            })
        })
        .collect())
}

/// Uploads the weights, runs one warm-up and `--runs` timed inferences, prints the timing
/// (and the profile, with `--profile`).
fn time<B: Backend>(
    model: &Model,
    backend: &B,
    inputs: &[HostTensor],
    args: &InferArgs,
    tier: Option<&Tier>,
) -> eia::Result<Vec<HostTensor>> {
    let runs = args.runs;
    let start = Instant::now();
    let session: Session<B> = model.session(backend)?;
    let upload = start.elapsed();
    let mut outputs = session.run(inputs)?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        outputs = session.run(inputs)?;
        times.push(t.elapsed());
    }
    times.sort();
    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let (p50, p99) = (pick(0.5), pick(0.99));
    let batch = inputs
        .first()
        .map(|t| t.shape().first().copied().unwrap_or(1))
        .unwrap_or(1);
    let tflops = model.flops() as f64 / p50.as_secs_f64() / 1e12;
    let dtype = model
        .inputs()
        .first()
        .map(|p| p.desc.dtype())
        .unwrap_or(DType::F32);
    let of_tier = tier
        .map(|t| {
            let floor = model.flops() as f64 / t.flops_per_second(dtype);
            format!(
                " = {:.0}% of {} {dtype} ({} TFLOPS; metered floor {:.2} ms)",
                100.0 * tflops * 1e12 / t.flops_per_second(dtype),
                t.name(),
                t.tflops(dtype),
                floor * 1e3
            )
        })
        .unwrap_or_default();
    out!(
        "weights uploaded in {:.0} ms; peak memory {}",
        upload.as_secs_f64() * 1e3,
        eia::error::bytes(model.peak_bytes())
    );
    out!(
        "{} inferences: p50 {:.3} ms, p99 {:.3} ms, {:.1} inferences/s, {:.3} TFLOPS{of_tier}",
        times.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        batch as f64 / p50.as_secs_f64(),
        tflops
    );
    if args.profile {
        profile(&session, inputs, runs, p50, args.profile_json.as_deref())?;
    }
    Ok(outputs)
}

/// Profiles `runs` inferences op by op and prints each op kind's and the 10 slowest nodes'
/// median time, their sum beside an op-by-op run's p50 and `p50` (the whole program's), with
/// their FLOPs and GFLOPS; writes every node to `json` if given.
fn profile<B: Backend>(
    session: &Session<B>,
    inputs: &[HostTensor],
    runs: usize,
    p50: Duration,
    json: Option<&Path>,
) -> eia::Result<()> {
    let mut profiles = Vec::with_capacity(runs.max(1));
    let mut walls = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        profiles.push(session.profile(inputs)?.1);
        walls.push(started.elapsed());
    }
    walls.sort();
    // Each node's median over the runs.
    let nodes: Vec<NodeTime> = (0..profiles[0].len())
        .map(|i| {
            let mut times: Vec<Duration> = profiles.iter().map(|p| p[i].time).collect();
            times.sort();
            NodeTime {
                time: times[times.len() / 2],
                ..profiles[0][i].clone()
            }
        })
        .collect();
    let total: Duration = nodes.iter().map(|n| n.time).sum();
    let ms = |t: Duration| t.as_secs_f64() * 1e3;
    let gflops = |flops: u64, t: Duration| flops as f64 / t.as_secs_f64().max(1e-12) / 1e9;
    out!(
        "profile: median of {} op-by-op runs; ops sum to {:.2} ms (an op-by-op run's p50: {:.2} ms; the whole program's: {:.2} ms)",
        profiles.len(),
        ms(total),
        ms(walls[walls.len() / 2]),
        ms(p50)
    );
    let mut kinds: Vec<(String, usize, Duration, u64)> = Vec::new();
    for n in &nodes {
        match kinds.iter_mut().find(|k| k.0 == n.kind) {
            Some(k) => {
                k.1 += 1;
                k.2 += n.time;
                k.3 += n.flops;
            }
            None => kinds.push((n.kind.clone(), 1, n.time, n.flops)),
        }
    }
    kinds.sort_by_key(|k| std::cmp::Reverse(k.2));
    out!(
        "  {:<26} {:>5} {:>10} {:>6} {:>9} {:>8}",
        "op",
        "count",
        "ms",
        "%",
        "GFLOP",
        "GFLOPS"
    );
    for (kind, count, time, flops) in &kinds {
        out!(
            "  {kind:<26} {count:>5} {:>10.2} {:>5.1}% {:>9.3} {:>8.1}",
            ms(*time),
            100.0 * time.as_secs_f64() / total.as_secs_f64().max(1e-12),
            *flops as f64 / 1e9,
            gflops(*flops, *time)
        );
    }
    let mut slowest: Vec<&NodeTime> = nodes.iter().collect();
    slowest.sort_by_key(|n| std::cmp::Reverse(n.time));
    out!("  slowest nodes:");
    for n in slowest.iter().take(10) {
        out!(
            "  {:<26} {:>5} {:>10.2} {:>5.1}% {:>9.3} {:>8.1}  {}",
            n.kind,
            "",
            ms(n.time),
            100.0 * n.time.as_secs_f64() / total.as_secs_f64().max(1e-12),
            n.flops as f64 / 1e9,
            gflops(n.flops, n.time),
            n.node
        );
    }
    if let Some(path) = json {
        let nodes: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "nodes": n.node.split('+').map(|s| s.trim_matches('\'')).collect::<Vec<_>>(),
                    "kind": n.kind,
                    "flops": n.flops,
                    "ms": ms(n.time),
                })
            })
            .collect();
        let doc = serde_json::json!({ "p50_ms": ms(p50), "nodes": nodes });
        std::fs::write(path, doc.to_string())
            .map_err(|e| eia::Error::Model(format!("cannot write {}: {e}", path.display())))?;
        out!("wrote {}", path.display());
    }
    Ok(())
}

/// The five largest values of item 0 of `t` (its first dimension's first slice), with their
/// indices: largest first, equal values by index. Selected, not sorted whole: a map-shaped
/// output (a 64×112×112 feature map, 0.8 M values) would otherwise take longer to summarise
/// than to compute.
fn top5(t: &HostTensor) -> String {
    let values = t.data().to_f32_vec();
    let per_item = values.len() / t.shape().first().copied().unwrap_or(1).max(1);
    largest(&values[..per_item], 5)
        .iter()
        .map(|(i, v)| format!("{i}: {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `k` largest of `values` with their indices, largest first, equal values by index
/// (`total_cmp`'s order: NaN above +∞).
fn largest(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    let order = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut indexed: Vec<(usize, f32)> = values.iter().copied().enumerate().collect();
    let k = k.min(indexed.len());
    if k < indexed.len() && k > 0 {
        indexed.select_nth_unstable_by(k - 1, order);
    }
    indexed.truncate(k);
    indexed.sort_by(order);
    indexed
}

#[cfg(test)]
mod tests {
    use super::largest;

    #[test]
    fn largest_values_come_first_and_ties_go_by_index() {
        let values = [0.5, 3.0, -1.0, 3.0, 7.0, 0.5, 2.0, 7.0];
        assert_eq!(
            largest(&values, 5),
            vec![(4, 7.0), (7, 7.0), (1, 3.0), (3, 3.0), (6, 2.0)]
        );
        assert_eq!(largest(&values, 0), vec![]);
        assert_eq!(largest(&values[..2], 5), vec![(1, 3.0), (0, 0.5)]);
        // Against a full sort, on values with many ties.
        let many: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 13) as f32).collect();
        let mut sorted: Vec<(usize, f32)> = many.iter().copied().enumerate().collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(largest(&many, 5), sorted[..5].to_vec());
    }
}
