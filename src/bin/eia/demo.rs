//! `eia demo`: the whole product in one command, on a real model. Builds ResNet-50 (seeded
//! random weights, no download), starts an embedded server on loopback, attaches an
//! accelerator of a tier from a client, uploads the weights once, and runs inferences — each
//! one program, one round trip — printing latency beside the metered floor (the model's FLOPs
//! over the tier's rate), achieved TFLOPS against the tier, and the accelerator's usage.

use std::time::{Duration, Instant};

use clap::Args;
use eia::accelerator::DeviceConfig;
use eia::model::zoo;
use eia::rpc::{self, ClientConfig, Connection, ServerConfig};
use eia::{CpuBackend, DType, HostTensor, LoadOptions, Model};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::{parse_dtype, TierFile};

/// The launch post's reference point: ResNet-152 served from an m5.large with an
/// eia1.medium, 52 ms per inference.
const LAUNCH_RESNET152_MS: f64 = 52.0;

#[derive(Args)]
pub struct DemoArgs {
    /// The tier to attach.
    #[arg(long, default_value = "eia1.medium")]
    tier: String,
    /// fp16 (FP16 storage, FP32 accumulation: the tier's higher rate) or fp32.
    #[arg(long, default_value = "fp16", value_parser = parse_dtype)]
    dtype: DType,
    /// How many inferences to time (after one warm-up).
    #[arg(long, default_value_t = 20)]
    inferences: usize,
    #[command(flatten)]
    tiers: TierFile,
}

pub fn run(args: DemoArgs) -> eia::Result<()> {
    let started = Instant::now();
    let bytes = zoo::resnet50(1);
    let options = LoadOptions {
        batch: 1,
        fp16: args.dtype == DType::F16,
    };
    let model = Model::from_bytes(&bytes, options)?;
    out!(
        "eia demo: ResNet-50 (seeded random weights, {} ONNX file built in {:.0} ms): {} ops after folding, {:.2} GFLOP per inference, {} of {} weights",
        eia::error::bytes(bytes.len() as u64),
        started.elapsed().as_secs_f64() * 1e3,
        model.ops().count(),
        model.flops() as f64 / 1e9,
        eia::error::bytes(model.weight_bytes()),
        args.dtype
    );
    let config = ServerConfig {
        device: DeviceConfig {
            tiers: args.tiers.load()?,
            // The CPU device measures below most tiers' rates: admit the tier anyway (the
            // device is then shared in proportion to tier rates).
            overcommit: true,
            ..DeviceConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = rpc::spawn(
        "127.0.0.1:0".parse().expect("a socket address"),
        CpuBackend::new(),
        config,
    )?;
    let conn = Connection::connect(&server.url(false), ClientConfig::default())?;
    let acc = conn.attach(&args.tier)?;
    let tier = acc.tier();
    out!(
        "embedded server at {} (CPU backend); attached accelerator {} as {tier}",
        server.url(false),
        acc.id()
    );
    let t = Instant::now();
    let session = model.session(&acc)?;
    out!(
        "weights and buffers on the accelerator in {:.0} ms; it holds {} (peak memory)",
        t.elapsed().as_secs_f64() * 1e3,
        eia::error::bytes(model.peak_bytes())
    );
    let mut rng = StdRng::seed_from_u64(7);
    let mut input = || -> eia::Result<HostTensor> {
        let values: Vec<f32> = (0..3 * 224 * 224)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        HostTensor::new(&[1, 3, 224, 224], values)
    };
    session.run(&[input()?])?; // warm-up
    let n = args.inferences.max(1);
    out!("running {n} inferences of [1, 3, 224, 224], one round trip each ...");
    let mut latencies = Vec::with_capacity(n);
    let mut top1 = 0;
    let wall = Instant::now();
    for _ in 0..n {
        let x = input()?;
        let t = Instant::now();
        let out = session.run(&[x])?;
        latencies.push(t.elapsed());
        let logits = out[0].data().to_f32_vec();
        top1 = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap_or(0);
    }
    let wall = wall.elapsed();
    latencies.sort();
    let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let dtype = args.dtype;
    let floor = model.flops() as f64 / tier.flops_per_second(dtype);
    let achieved = model.flops() as f64 * n as f64 / wall.as_secs_f64() / 1e12;
    out!(
        "latency per inference: p50 {:.1} ms, p99 {:.1} ms ({:.1} inferences/s); metered floor on {} {dtype}: {:.1} ms",
        ms(pct(0.5)),
        ms(pct(0.99)),
        n as f64 / wall.as_secs_f64(),
        tier.name(),
        floor * 1e3
    );
    out!(
        "achieved {achieved:.3} {dtype} TFLOPS = {:.1}% of {}'s {} {dtype} TFLOPS (this CPU device, not a GPU)",
        100.0 * achieved / tier.tflops(dtype),
        tier.name(),
        tier.tflops(dtype)
    );
    out!(
        "for reference, Elastic Inference's launch post: ResNet-152 at {LAUNCH_RESNET152_MS:.0} ms on m5.large + eia1.medium; last input's top-1 class: {top1}"
    );
    out!("{}", acc.detach()?);
    server.shutdown()
}
