//! `eia recommend MODEL.onnx --latency-ms L`: per tier and precision, the model's FLOPs, the
//! metered floor (FLOPs / the tier's rate), the latency measured on this device, the latency
//! to expect on the tier (the slower of the two: a tier paces the device, it cannot speed it
//! up), whether the model's memory fits, and the smallest tier that meets the target.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use eia::{Backend, CpuBackend, DType, HostTensor, LoadOptions, Model};

use crate::TierFile;

#[derive(Args)]
pub struct RecommendArgs {
    /// The ONNX model.
    model: PathBuf,
    /// The latency target per inference, in milliseconds.
    #[arg(long)]
    latency_ms: f64,
    /// The batch size.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed inferences per precision on this device (after one warm-up).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[command(flatten)]
    tiers: TierFile,
}

/// One precision's model and its latency on this device.
struct Measured {
    dtype: DType,
    flops: u64,
    peak: u64,
    device_ms: f64,
}

pub fn run(args: RecommendArgs) -> eia::Result<()> {
    if args.latency_ms.is_nan() || args.latency_ms <= 0.0 {
        return Err(eia::Error::Model(format!(
            "--latency-ms must be a positive number of milliseconds, got {}",
            args.latency_ms
        )));
    }
    let cpu = CpuBackend::new();
    let mut measured = Vec::new();
    for dtype in DType::ALL {
        let options = LoadOptions {
            batch: args.batch,
            fp16: dtype == DType::F16,
        };
        let model = Model::load(&args.model, options)?;
        let session = model.session(&cpu)?;
        let inputs: Vec<HostTensor> = model
            .inputs()
            .iter()
            .map(|p| HostTensor::full(p.desc.dtype(), p.desc.shape(), 0.5))
            .collect::<eia::Result<_>>()?;
        session.run(&inputs)?;
        let mut times: Vec<f64> = (0..args.runs.max(1))
            .map(|_| {
                let t = Instant::now();
                session
                    .run(&inputs)
                    .map(|_| t.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<eia::Result<_>>()?;
        times.sort_by(f64::total_cmp);
        measured.push(Measured {
            dtype,
            flops: model.flops(),
            peak: model.peak_bytes(),
            device_ms: times[times.len() / 2],
        });
    }
    out!(
        "eia recommend: {} at batch {}, target {} ms per inference; measured on {} ({} threads)",
        args.model.display(),
        args.batch,
        args.latency_ms,
        cpu.name(),
        cpu.threads()
    );
    out!(
        "{:<14} {:>5} {:>9} {:>10} {:>11} {:>11} {:>12} {:>5}",
        "tier",
        "dtype",
        "GFLOP",
        "floor ms",
        "device ms",
        "expect ms",
        "memory",
        "meets"
    );
    // Smallest first: by FP32 rate, then FP16 rate, then memory.
    let tiers = args.tiers.load()?;
    let mut tiers: Vec<_> = tiers.iter().collect();
    tiers.sort_by(|a, b| {
        let key = |t: &eia::Tier| {
            (
                t.tflops(DType::F32),
                t.tflops(DType::F16),
                t.memory() as f64,
            )
        };
        key(a)
            .partial_cmp(&key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut best: Option<(String, DType, f64)> = None;
    for tier in &tiers {
        // A precision the tier does not offer (rate 0) is not a choice.
        for m in measured.iter().filter(|m| tier.offers(m.dtype)) {
            let floor = m.flops as f64 / tier.flops_per_second(m.dtype) * 1e3;
            let expect = floor.max(m.device_ms);
            let fits = m.peak <= tier.memory();
            let meets = fits && expect <= args.latency_ms;
            out!(
                "{:<14} {:>5} {:>9.3} {:>10.2} {:>11.2} {:>11.2} {:>12} {:>5}",
                tier.name(),
                m.dtype.to_string(),
                m.flops as f64 / 1e9,
                floor,
                m.device_ms,
                expect,
                if fits { "fits" } else { "too large" },
                if meets { "yes" } else { "no" }
            );
            if meets && best.is_none() {
                best = Some((tier.name().to_string(), m.dtype, expect));
            }
        }
    }
    match best {
        Some((tier, dtype, ms)) => out!(
            "recommended: {tier} in {dtype} (expect {ms:.2} ms; the smallest tier that meets {} ms)",
            args.latency_ms
        ),
        None => out!(
            "no tier meets {} ms on this device: its own latency is the limit (a faster device, a smaller batch or FP16 would help)",
            args.latency_ms
        ),
    }
    Ok(())
}
