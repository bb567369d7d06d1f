//! `eia run`: the op workloads on the CPU backend (or a metered accelerator of a tier), their
//! median time, GFLOPS and GB/s; a memory-bound workload's GB/s also as a percentage of a plain
//! copy of the same bytes timed right after it on the same backend ([`Workload::prepare_copy`]).

use std::time::{Duration, Instant};

use clap::Args;
use eia::accelerator::{Device, DeviceConfig};
use eia::workload::{Prepared, Workload};
use eia::{Backend, CpuBackend, DType};

use crate::{parse_dtype, TierFile};

#[derive(Args)]
pub struct RunArgs {
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
}

pub fn run(args: RunArgs) -> eia::Result<()> {
    let RunArgs {
        dtypes,
        filter,
        threads,
        seconds,
        json,
        tier,
        overcommit,
        tiers,
    } = args;
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
        "{header}\nmetered as {tier} on a device measured at {cap}{}",
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
        out!("{usage}");
    }
    Ok(())
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
        out!("eia run: {}", plan.header);
        out!(
            "{:<34} {:>5} {:>10} {:>10} {:>9} {:>9} {:>9} {:>14}{}",
            "workload",
            "dtype",
            "GFLOP",
            "median ms",
            "GFLOPS",
            "GB/s",
            "% of copy",
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
            if let Some(c) = &r.copy {
                total += c.median * c.runs as u32;
            }
            let s = r.median.as_secs_f64();
            let gflops = r.flops as f64 / s / 1e9;
            let gbps = r.bytes as f64 / s / 1e9;
            if plan.json {
                out!(
                    "{{\"id\":\"{}\",\"family\":\"{}\",\"dtype\":\"{}\",\"flops\":{},\"bytes\":{},\"median_s\":{:.9},\"runs\":{},\"threads\":{}{}{}}}",
                    w.id(), w.family(), dtype, r.flops, r.bytes, s, r.runs, plan.threads,
                    r.copy.as_ref().map(|c| format!(",\"copy_bytes\":{},\"copy_median_s\":{:.9},\"copy_runs\":{}", c.bytes, c.median.as_secs_f64(), c.runs)).unwrap_or_default(),
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
                let of_copy = r.copy.as_ref().map_or("-".to_string(), |c| {
                    let copy_gbps = c.bytes as f64 / c.median.as_secs_f64() / 1e9;
                    format!("{:.0}%", 100.0 * gbps / copy_gbps)
                });
                out!(
                    "{:<34} {:>5} {:>10.3} {:>10.3} {:>9.1} {:>9.2} {:>9} {:>14.6e}{of_tier}",
                    w.id(),
                    dtype,
                    r.flops as f64 / 1e9,
                    s * 1e3,
                    gflops,
                    gbps,
                    of_copy,
                    r.checksum
                );
            }
        }
    }
    if !plan.json {
        out!(
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
    /// For a memory-bound workload, the copy of the same bytes timed right after it.
    copy: Option<CopyTimed>,
}

/// A plain copy's timing ([`Workload::prepare_copy`]).
struct CopyTimed {
    /// What it reads and writes.
    bytes: u64,
    median: Duration,
    runs: usize,
}

/// Times `w` (and, if it is memory-bound, then a copy of as many bytes) with [`time`].
fn measure<B: Backend>(
    backend: &B,
    w: &Workload,
    dtype: DType,
    seconds: f64,
) -> eia::Result<Measured> {
    let (flops, _) = w.plan(dtype)?;
    let bytes = w.bytes(dtype)?;
    let mut prepared = w.prepare(backend, dtype)?;
    let (median, runs) = time(backend, &mut prepared, seconds)?;
    let checksum = backend
        .download(prepared.output())?
        .data()
        .to_f64_vec()
        .iter()
        .sum();
    drop(prepared);
    let copy = if w.memory_bound() {
        let (bytes, mut copy) = w.prepare_copy(backend, dtype)?;
        let (median, runs) = time(backend, &mut copy, seconds)?;
        Some(CopyTimed {
            bytes,
            median,
            runs,
        })
    } else {
        None
    };
    Ok(Measured {
        flops,
        bytes,
        median,
        runs,
        checksum,
        copy,
    })
}

/// Runs `prepared` once to warm up, then repeatedly for about `seconds` (at least 3 runs);
/// the median time and the number of timed runs.
fn time<B: Backend>(
    backend: &B,
    prepared: &mut Prepared<B>,
    seconds: f64,
) -> eia::Result<(Duration, usize)> {
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
    Ok((times[times.len() / 2], times.len()))
}
