//! `eia demo`: the whole product in one command. Starts an embedded server on loopback, attaches
//! an accelerator from a client, uploads a small CNN's weights once, runs inferences — each one
//! program, one round trip — and prints latency, achieved TFLOPS against the tier, and usage.
//!
//! The network: conv 3→32 (3×3) → BN → conv 32→64 (3×3, stride 2) + ReLU → BN → conv 64→128
//! (3×3, stride 2) + ReLU → dense 128·16·16→10 (a full-window conv, i.e. a GEMM) → softmax.
//! Weights are random (fixed seed); the input is 1×3×64×64.

use std::time::{Duration, Instant};

use crate::accelerator::{DeviceConfig, Tiers};
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::{BatchNorm, Conv, Softmax};
use crate::rpc::{
    self, ClientConfig, Connection, Program, RemoteAccelerator, RemoteBuffer, ServerConfig,
};
use crate::tensor::{HostTensor, Tensor, TensorDesc};
use crate::CpuBackend;

/// What `eia demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub tier: String,
    pub dtype: DType,
    pub inferences: usize,
    pub tiers: Tiers,
}

/// Deterministic values in `[lo, hi)`.
fn values(seed: &mut u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| crate::workload::uniform(seed, lo, hi))
        .collect()
}

struct Layer {
    conv: Conv,
    w: Tensor<RemoteBuffer>,
    bias: Tensor<RemoteBuffer>,
    y: Tensor<RemoteBuffer>,
    /// BN parameters and output, after this conv.
    bn: Option<([Tensor<RemoteBuffer>; 4], Tensor<RemoteBuffer>)>,
}

fn upload(
    acc: &RemoteAccelerator,
    dtype: DType,
    shape: &[usize],
    seed: &mut u64,
    lo: f32,
    hi: f32,
) -> Result<Tensor<RemoteBuffer>> {
    let n = shape.iter().product();
    acc.upload(&HostTensor::from_f32(
        dtype,
        shape,
        &values(seed, n, lo, hi),
    )?)
}

/// Runs the demo, printing as it goes.
pub fn run(options: &DemoOptions) -> Result<()> {
    let dtype = options.dtype;
    println!("eia demo: embedded server on loopback, measuring the CPU device ...");
    let config = ServerConfig {
        device: DeviceConfig {
            tiers: options.tiers.clone(),
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
    let acc = conn.attach(&options.tier)?;
    let tier = acc.tier();
    println!(
        "server at {}; attached accelerator {} as {tier}",
        server.url(false),
        acc.id()
    );

    // Weights go up once; intermediates are allocated once.
    let mut seed = 0x5EED_1234_ABCD_0001u64;
    let x = acc.alloc(&TensorDesc::new(dtype, &[1, 3, 64, 64])?)?;
    let specs = [
        (3, 32, 1, true, false),
        (32, 64, 2, true, true),
        (64, 128, 2, false, true),
    ];
    let mut layers = Vec::new();
    let mut shape = vec![1, 3, 64, 64];
    let mut upload_bytes = 0;
    for (c, k, stride, bn, relu) in specs {
        let scale = (2.0 / (9.0 * c as f32)).sqrt();
        let w = upload(&acc, dtype, &[k, c, 3, 3], &mut seed, -scale, scale)?;
        let bias = upload(&acc, dtype, &[k], &mut seed, -0.1, 0.1)?;
        let conv = Conv {
            strides: [stride, stride],
            pads: [1; 4],
            relu,
            ..Conv::default()
        };
        let out = conv
            .plan(
                &TensorDesc::new(dtype, &shape)?,
                w.desc(),
                Some(bias.desc()),
            )?
            .output;
        shape = out.shape().to_vec();
        let y = acc.alloc(&out)?;
        let bn = if bn {
            let params = [
                upload(&acc, dtype, &[k], &mut seed, 0.5, 1.5)?,
                upload(&acc, dtype, &[k], &mut seed, -0.2, 0.2)?,
                upload(&acc, dtype, &[k], &mut seed, -0.2, 0.2)?,
                upload(&acc, dtype, &[k], &mut seed, 0.5, 1.5)?,
            ];
            Some((params, acc.alloc(&out)?))
        } else {
            None
        };
        upload_bytes += w.desc().bytes()
            + bias.desc().bytes()
            + bn.as_ref().map_or(0, |_| 4 * k * dtype.size());
        layers.push(Layer {
            conv,
            w,
            bias,
            y,
            bn,
        });
    }
    let (k, h, w) = (shape[1], shape[2], shape[3]);
    let dense_w = upload(&acc, dtype, &[10, k, h, w], &mut seed, -0.02, 0.02)?;
    let dense_b = upload(&acc, dtype, &[10], &mut seed, -0.1, 0.1)?;
    upload_bytes += dense_w.desc().bytes() + dense_b.desc().bytes();
    let logits = acc.alloc(&TensorDesc::new(dtype, &[1, 10, 1, 1])?)?;
    let probs = acc.alloc(logits.desc())?;
    println!(
        "uploaded {:.2} MB of {dtype} weights once",
        upload_bytes as f64 / 1e6
    );

    // One program per inference: write the input, run every op, read the probabilities.
    let program_for = |input: &HostTensor| -> Result<Program> {
        let mut p = Program::new();
        p.write(&x, input)?;
        let mut prev = &x;
        for layer in &layers {
            p.conv(&layer.conv, prev, &layer.w, Some(&layer.bias), &layer.y)?;
            prev = &layer.y;
            if let Some((params, out)) = &layer.bn {
                let [s, b, m, v] = params;
                p.batch_norm(&BatchNorm::default(), prev, [s, b, m, v], out)?;
                prev = out;
            }
        }
        p.conv(&Conv::default(), prev, &dense_w, Some(&dense_b), &logits)?;
        p.softmax(&Softmax { axis: 1 }, &logits, &probs)?;
        p.read(&probs)?;
        Ok(p)
    };
    let flops_per_inference = {
        let before = acc.usage()?;
        let input = HostTensor::from_f32(
            dtype,
            &[1, 3, 64, 64],
            &values(&mut seed, 3 * 64 * 64, -1.0, 1.0),
        )?;
        acc.run(&program_for(&input)?)?; // warm-up
        acc.usage()?.flops(dtype) - before.flops(dtype)
    };
    let ops = program_for(&HostTensor::full(dtype, &[1, 3, 64, 64], 0.0)?)?.len();
    println!(
        "network: {ops} ops, {:.1} MFLOP per inference; running {} inferences, one round trip each",
        flops_per_inference as f64 / 1e6,
        options.inferences
    );
    let mut latencies = Vec::with_capacity(options.inferences);
    let mut top = Vec::new();
    let started = Instant::now();
    for _ in 0..options.inferences {
        let input = HostTensor::from_f32(
            dtype,
            &[1, 3, 64, 64],
            &values(&mut seed, 3 * 64 * 64, -1.0, 1.0),
        )?;
        let program = program_for(&input)?;
        let t = Instant::now();
        let out = acc.run(&program)?;
        latencies.push(t.elapsed());
        let p = out[0].data().to_f32_vec();
        let best = (0..p.len())
            .max_by(|&a, &b| p[a].total_cmp(&p[b]))
            .unwrap_or(0);
        top.push((best, p[best]));
    }
    let wall = started.elapsed();
    latencies.sort();
    let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let achieved =
        flops_per_inference as f64 * options.inferences as f64 / wall.as_secs_f64() / 1e12;
    println!(
        "latency per inference: p50 {:.2} ms, p99 {:.2} ms, min {:.2} ms ({:.1} inferences/s)",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(latencies[0]),
        options.inferences as f64 / wall.as_secs_f64()
    );
    println!(
        "achieved {achieved:.4} {dtype} TFLOPS = {:.2}% of {}'s {} {dtype} TFLOPS",
        100.0 * achieved / tier.tflops(dtype),
        tier.name(),
        tier.tflops(dtype)
    );
    if let Some((class, p)) = top.last() {
        println!("last input: class {class} with probability {p:.3}");
    }
    let usage = acc.detach()?;
    println!("{usage}");
    server.shutdown()
}
